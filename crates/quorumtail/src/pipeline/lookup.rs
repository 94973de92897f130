//! Full documents for updates (`[sink] full_document = "lookup" | "required"`): the stage
//! between a shard's emitter and the sink that reads the current version of each updated
//! document and puts it into the update's record.
//!
//! MongoDB's change streams do the same for `fullDocument: "updateLookup"`: the update
//! event's `documentKey` is looked up with a majority read concern whose
//! `afterClusterTime` is the event's cluster time; a document deleted since gives
//! `fullDocument: null` (`src/mongo/db/pipeline/document_source_lookup_change_post_image.cpp`),
//! and with `fullDocument: "required"` the stream fails with `NoMatchingDocument` instead
//! (`document_source_change_stream_add_post_image.cpp`). The document is the one current at
//! the time of the read, no older than the update, not the post-image of that very update:
//! later changes may show.
//!
//! # Where the reads go
//!
//! * When `[discovery] uri` names a mongos (its hello says `msg: "isdbgrid"`), through it:
//!   mongos routes each read to the shard that owns the document now and filters orphans,
//!   so a document moved to another shard since the update is still found.
//! * Otherwise to the shard's own replica set (its members, primary preferred). After a
//!   chunk migration such a read can miss a document that now lives on another shard
//!   (`null` / `notFound`), or, before the donor's range deletion ran, see the donor's stale
//!   orphan copy. Use a mongos discovery URI for sharded collections whose chunks move.
//!
//! Either way the read is `find {_id: {$in: [...]}}` per namespace with `readConcern
//! {level: "majority", afterClusterTime}` (a causally consistent session whose operation
//! time is the newest update of the batch), so it sees majority-committed data no older
//! than any update it completes. A document matches its update when every field of the
//! update's `documentKey` (the `_id` and, for sharded collections, the shard key) holds the
//! same value.
//!
//! # Order, progress and memory
//!
//! The emitter stays pure: it writes update records whole except for the full document,
//! and lists the ones waiting ([`Lookup`]). The shard task hands each step's output to
//! this stage as one [`Chunk`] over a bounded channel ([`CHUNKS_IN_FLIGHT`]) and goes on
//! merging; the stage looks up the chunk's documents ([`BATCH`] per round trip, a few round
//! trips at once), fills them in ([`fill`]) and sends the chunk's records and markers to
//! the sink in their order. A checkpoint rides on a record or marker after the ones before
//! it, so it never passes a record still waiting for its document. Transient errors
//! (network, failover, timeouts) are retried with backoff; a definite one, or with
//! `required` a document that is gone, stops the shard.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document, RawDocument, RawDocumentBuf};
use futures::{StreamExt, TryStreamExt};
use quorumtail_oplog::extjson::{write_document, Mode};
use quorumtail_oplog::{EntryId, Timestamp};
use quorumtail_sink::{FullDocument, SinkInput, SinkSender};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::stats::ShardStats;
use super::ShardError;

/// Most documents one `find` looks up.
pub const BATCH: usize = 500;
/// Round trips of one chunk in flight at once.
const PARALLEL: usize = 4;
/// Chunks handed to the stage and not yet sent to the sink.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// The marker field saying what the lookup found: `"found"`, or `"notFound"` (deleted since;
/// the full document is then `null`). Records of updates made without a lookup lack it.
pub const MARKER: &str = "fullDocumentLookup";

/// How the full document goes into a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Splice {
    /// `"fullDocument": <Extended JSON in this mode, or null>` and the marker, appended as
    /// the record's last fields (`oplog` and `change-event` formats; `[sink] json`).
    Append(Mode),
    /// Debezium: `after` (the `null` at [`quorumtail_events::AFTER_AT`]) becomes the
    /// document as the connector writes it; the marker is appended.
    DebeziumAfter,
}

/// An update record waiting for its document.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// The record's place in its chunk.
    pub index: usize,
    /// `db.coll`.
    pub ns: String,
    /// The update's `documentKey` (`o2`): `_id`, and the shard key of a sharded collection.
    pub key: Document,
    /// The update's entry (the commit's, for an operation of a transaction): its `ts` is the
    /// read's `afterClusterTime`.
    pub entry: EntryId,
    /// How the document goes in.
    pub splice: Splice,
}

/// One step's output: records and markers in order, and the records among them that wait
/// for their document.
#[derive(Debug, Default)]
pub struct Chunk {
    /// For the sink, in order.
    pub inputs: Vec<SinkInput>,
    /// Indexes into `inputs`.
    pub lookups: Vec<Lookup>,
}

/// Whether the `o` of an update entry changes fields (`$v: 2` diff or modifiers) rather
/// than replacing the document: only those lack the full document. Mirrors
/// [`quorumtail_events::decode`]: `$v: 2` is a diff; otherwise `$`-prefixed fields are
/// modifiers, and a document without them is a replacement.
pub fn is_field_update(o: &RawDocument) -> bool {
    let mut version = None;
    let mut modifiers = false;
    let mut has_id = false;
    for (k, v) in o.iter().flatten() {
        match k.as_str() {
            "$v" => {
                version = Some(match v {
                    bson::RawBsonRef::Int32(n) => i64::from(n),
                    bson::RawBsonRef::Int64(n) => n,
                    bson::RawBsonRef::Double(f) => f as i64,
                    _ => -1,
                })
            }
            "_id" => has_id = true,
            k if k.starts_with('$') => modifiers = true,
            _ => {}
        }
    }
    match version {
        Some(2) => true,
        _ if modifiers => true,
        None => false,
        Some(1) => !has_id,
        // An unknown version: not a replacement (the formats that decode it refuse it).
        Some(_) => true,
    }
}

/// The record `value` with `doc` (or `null` and the `notFound` marker) filled in.
///
/// # Errors
/// When `value` does not have the shape `splice` expects, or `doc` is not valid BSON.
pub fn fill(value: &[u8], splice: Splice, doc: Option<&RawDocument>) -> Result<Vec<u8>, String> {
    let end = value
        .len()
        .checked_sub(1)
        .filter(|&e| value[e] == b'}')
        .ok_or("the record does not end with '}'")?;
    let marker = if doc.is_some() { "found" } else { "notFound" };
    let mut out = Vec::with_capacity(value.len() + doc.map_or(0, |d| d.as_bytes().len() * 2) + 48);
    match splice {
        Splice::Append(mode) => {
            out.extend_from_slice(&value[..end]);
            out.extend_from_slice(b",\"fullDocument\":");
            match doc {
                Some(d) => write_document(d, mode, &mut out).map_err(|e| e.to_string())?,
                None => out.extend_from_slice(b"null"),
            }
        }
        Splice::DebeziumAfter => {
            let at = quorumtail_events::AFTER_AT;
            if value.get(at..at + 4) != Some(&b"null"[..]) {
                return Err("the Debezium record has no null after to fill".into());
            }
            out.extend_from_slice(&value[..at]);
            match doc {
                Some(d) => {
                    let d = Document::try_from(d).map_err(|e| e.to_string())?;
                    let mut s = String::new();
                    quorumtail_events::write_after(&d, &mut s);
                    out.extend_from_slice(s.as_bytes());
                }
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(&value[at + 4..end]);
        }
    }
    out.extend_from_slice(b",\"");
    out.extend_from_slice(MARKER.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(marker.as_bytes());
    out.extend_from_slice(b"\"}");
    Ok(out)
}

/// Whether `doc` is the document `key` names: each field of the key (a dotted path for a
/// nested shard key field) holds an equal value (numbers compare by value, as MongoDB's
/// index keys do).
pub fn matches_key(doc: &Document, key: &Document) -> bool {
    key.iter().all(|(path, want)| {
        let mut cur: Option<&Bson> = None;
        let mut d = Some(doc);
        for part in path.split('.') {
            cur = d.and_then(|d| d.get(part));
            d = cur.and_then(Bson::as_document);
        }
        cur.is_some_and(|got| same_value(got, want))
    })
}

fn same_value(a: &Bson, b: &Bson) -> bool {
    let num = |v: &Bson| match v {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(f) => Some(*f),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A lookup key for `_id` values: numbers by value, the rest as canonical Extended JSON.
fn id_key(id: &Bson) -> String {
    match id {
        Bson::Int32(n) => format!("n:{}", f64::from(*n)),
        Bson::Int64(n) => format!("n:{}", *n as f64),
        Bson::Double(f) => format!("n:{f}"),
        other => other.clone().into_canonical_extjson().to_string(),
    }
}

/// Where the stage reads.
#[derive(Clone, Debug)]
pub enum Route {
    /// A mongos (the discovery URI's client): routed reads, no orphans.
    Router(mongodb::Client),
    /// The shard's replica set, read directly.
    Members {
        /// `host:port` of its members.
        members: Vec<String>,
        /// Its replica set name, when known.
        replica_set: Option<String>,
        /// Credentials, TLS and options.
        access: quorumtail_tailer::MongoAccess,
    },
}

/// The stage's settings.
#[derive(Debug)]
pub struct StageConfig {
    /// The shard.
    pub shard: Arc<str>,
    /// `lookup` or `required`.
    pub mode: FullDocument,
    /// Where reads go.
    pub route: Route,
    /// The sink.
    pub sink: SinkSender,
    /// Counters.
    pub stats: Arc<ShardStats>,
}

/// The running stage: its input and its task.
#[derive(Debug)]
pub struct Stage {
    /// Chunks in order.
    pub tx: mpsc::Sender<Chunk>,
    /// Ends with the stage's definite error, or `Ok` when its input closed.
    pub handle: tokio::task::JoinHandle<Result<(), ShardError>>,
}

impl Stage {
    /// Starts the stage; it stops at `stop` or when `tx` is dropped (after sending what it
    /// holds).
    pub fn start(cfg: StageConfig, stop: CancellationToken) -> Stage {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let handle = tokio::spawn(run(cfg, rx, stop));
        Stage { tx, handle }
    }
}

async fn run(
    cfg: StageConfig,
    mut rx: mpsc::Receiver<Chunk>,
    stop: CancellationToken,
) -> Result<(), ShardError> {
    let mut reader: Option<(mongodb::Client, bool)> = None;
    let result = async {
        while let Some(mut chunk) = rx.recv().await {
            // Chunks that queued up while the previous ones were looked up go together:
            // fewer, fuller round trips when updates come faster than single reads.
            while chunk.lookups.len() < BATCH * PARALLEL {
                let Ok(next) = rx.try_recv() else { break };
                let offset = chunk.inputs.len();
                chunk.inputs.extend(next.inputs);
                chunk.lookups.extend(next.lookups.into_iter().map(|mut l| {
                    l.index += offset;
                    l
                }));
            }
            let mut missing = None;
            if !chunk.lookups.is_empty() {
                if reader.is_none() {
                    reader = Some(connect(&cfg).await?);
                }
                let client =
                    reader
                        .as_ref()
                        .map(|r| r.0.clone())
                        .ok_or_else(|| ShardError::Lookup {
                            shard: cfg.shard.clone(),
                            detail: "no client".into(),
                        })?;
                let found = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    r = look_up(&cfg, &client, &chunk.lookups, &stop) => r?,
                };
                for (l, doc) in chunk.lookups.iter().zip(&found) {
                    cfg.stats.lookups.fetch_add(1, Relaxed);
                    if doc.is_none() {
                        cfg.stats.lookups_not_found.fetch_add(1, Relaxed);
                        if cfg.mode == FullDocument::Required {
                            missing = Some((
                                l.index,
                                ShardError::FullDocumentMissing {
                                    shard: cfg.shard.clone(),
                                    ns: l.ns.clone(),
                                    key: Bson::Document(l.key.clone())
                                        .into_relaxed_extjson()
                                        .to_string(),
                                    entry: l.entry,
                                },
                            ));
                            break;
                        }
                    }
                    let bad = |detail: String| ShardError::Lookup {
                        shard: cfg.shard.clone(),
                        detail: format!("the record of the entry at {}: {detail}", l.entry),
                    };
                    let Some(SinkInput::Record(r)) = chunk.inputs.get_mut(l.index) else {
                        return Err(bad("not a record".into()));
                    };
                    let value = r.value.as_deref().ok_or_else(|| bad("no value".into()))?;
                    r.value = Some(fill(value, l.splice, doc.as_deref()).map_err(bad)?);
                }
            }
            // With `required` and a document gone: what precedes its update is delivered,
            // then the shard stops.
            let limit = missing.as_ref().map_or(chunk.inputs.len(), |(i, _)| *i);
            for input in chunk.inputs.into_iter().take(limit) {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    r = cfg.sink.send(input) => r.map_err(|e| ShardError::Sink {
                        shard: cfg.shard.clone(),
                        detail: e.to_string(),
                    })?,
                }
            }
            if let Some((_, e)) = missing {
                return Err(e);
            }
        }
        Ok(())
    }
    .await;
    if let Some((client, false)) = reader {
        quorumtail_tailer::close(client).await;
    }
    result
}

/// The client reads go through; `true` when it is the shared mongos client.
async fn connect(cfg: &StageConfig) -> Result<(mongodb::Client, bool), ShardError> {
    match &cfg.route {
        Route::Router(c) => Ok((c.clone(), true)),
        Route::Members {
            members,
            replica_set,
            access,
        } => {
            let mut uri = format!(
                "mongodb://{}/?readPreference=primaryPreferred",
                members.join(",")
            );
            if let Some(set) = replica_set {
                uri.push_str("&replicaSet=");
                uri.push_str(set);
            }
            let bad = |e: mongodb::error::Error| ShardError::Lookup {
                shard: cfg.shard.clone(),
                detail: format!("cannot open a client to the shard's members: {e}"),
            };
            let mut opts = access.client_options(&uri).await.map_err(bad)?;
            opts.app_name = Some("quorumtail-lookup".into());
            let client = mongodb::Client::with_options(opts).map_err(bad)?;
            Ok((client, false))
        }
    }
}

/// The distinct `_id`s one namespace looks up, and the newest update among them.
#[derive(Default)]
struct Ids {
    ids: Vec<Bson>,
    seen: std::collections::HashSet<String>,
    at: Timestamp,
}

/// The document of each lookup (`None`: not found), in the lookups' order.
async fn look_up(
    cfg: &StageConfig,
    client: &mongodb::Client,
    lookups: &[Lookup],
    stop: &CancellationToken,
) -> Result<Vec<Option<RawDocumentBuf>>, ShardError> {
    // Distinct ids per namespace, in batches, each read after the newest of its updates.
    let mut by_ns: HashMap<&str, Ids> = HashMap::new();
    for l in lookups {
        let Some(id) = l.key.get("_id") else {
            return Err(ShardError::Lookup {
                shard: cfg.shard.clone(),
                detail: format!(
                    "the update at {} on {} has a document key without _id: {}",
                    l.entry, l.ns, l.key
                ),
            });
        };
        let e = by_ns.entry(&l.ns).or_default();
        if e.seen.insert(id_key(id)) {
            e.ids.push(id.clone());
        }
        e.at = e.at.max(l.entry.ts);
    }
    let mut batches = Vec::new();
    for (ns, Ids { ids, at, .. }) in by_ns {
        for part in ids.chunks(BATCH) {
            batches.push(find_with_retries(
                cfg.shard.clone(),
                client.clone(),
                ns.to_owned(),
                part.to_vec(),
                at,
                stop.clone(),
            ));
        }
    }
    let results: Vec<(String, Vec<RawDocumentBuf>)> = futures::stream::iter(batches)
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    // (ns, id) -> documents with that _id (several only when the shard key is not _id).
    let mut docs: HashMap<(&str, String), Vec<(Document, RawDocumentBuf)>> = HashMap::new();
    for (ns, found) in &results {
        let ns = ns.as_str();
        for raw in found {
            let raw = raw.clone();
            let d = Document::try_from(raw.as_ref()).map_err(|e| ShardError::Lookup {
                shard: cfg.shard.clone(),
                detail: format!("an unreadable document of {ns}: {e}"),
            })?;
            let Some(id) = d.get("_id") else { continue };
            docs.entry((ns, id_key(id))).or_default().push((d, raw));
        }
    }
    Ok(lookups
        .iter()
        .map(|l| {
            let id = l.key.get("_id").map(id_key).unwrap_or_default();
            docs.get(&(l.ns.as_str(), id)).and_then(|found| {
                found
                    .iter()
                    .find(|(d, _)| matches_key(d, &l.key))
                    .map(|(_, raw)| raw.clone())
            })
        })
        .collect())
}

async fn find_with_retries(
    shard: Arc<str>,
    client: mongodb::Client,
    ns: String,
    ids: Vec<Bson>,
    at: Timestamp,
    stop: CancellationToken,
) -> Result<(String, Vec<RawDocumentBuf>), ShardError> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0_u32;
    loop {
        attempt += 1;
        match find(&client, &ns, &ids, at).await {
            Ok(docs) => return Ok((ns, docs)),
            Err(e) if is_transient(&e) => {
                warn!(shard = %shard, %ns, attempt, error = %e, retry_in = ?delay, "full document lookup failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Err(ShardError::Lookup {
                        shard: shard.clone(),
                        detail: "stopped while retrying".into(),
                    }),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(ShardError::Lookup {
                    shard,
                    detail: format!(
                        "reading the full documents of {} update(s) on {ns} failed: {e}",
                        ids.len()
                    ),
                })
            }
        }
    }
}

/// One `find {_id: {$in: ids}}` on `ns` with `readConcern {level: "majority",
/// afterClusterTime: at}`: a causally consistent session whose operation time is `at` makes
/// the driver send exactly that.
async fn find(
    client: &mongodb::Client,
    ns: &str,
    ids: &[Bson],
    at: Timestamp,
) -> mongodb::error::Result<Vec<RawDocumentBuf>> {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let coll = client.database(db).collection::<RawDocumentBuf>(coll);
    let mut session = client.start_session().causal_consistency(true).await?;
    session.advance_operation_time(bson::Timestamp {
        time: at.time,
        increment: at.increment,
    });
    let mut cursor = coll
        .find(bson::doc! {"_id": {"$in": ids}})
        .read_concern(mongodb::options::ReadConcern::majority())
        .batch_size(u32::try_from(ids.len().max(1)).unwrap_or(u32::MAX))
        .session(&mut session)
        .await?;
    let mut out = Vec::with_capacity(ids.len());
    while let Some(d) = cursor.next(&mut session).await {
        out.push(d?);
    }
    Ok(out)
}

/// Errors a later attempt may not meet: the network, server selection, failovers, time
/// limits, routing tables being refreshed.
pub fn is_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    if e.contains_label("RetryableReadError") || e.contains_label("TransientTransactionError") {
        return true;
    }
    match &*e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => true,
        ErrorKind::Command(c) => matches!(
            c.code,
            6 | 7
                | 9
                | 50
                | 63
                | 89
                | 91
                | 133
                | 150
                | 189
                | 234
                | 262
                | 9001
                | 10107
                | 11600
                | 11602
                | 13388
                | 13435
                | 13436
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, rawdoc};

    #[test]
    fn field_updates_and_replacements() {
        assert!(is_field_update(&rawdoc! {"$v": 2, "diff": {"u": {"x": 1}}}));
        assert!(is_field_update(&rawdoc! {"$set": {"x": 1}}));
        assert!(is_field_update(&rawdoc! {"$v": 1, "$set": {"x": 1}}));
        assert!(!is_field_update(&rawdoc! {"_id": 1, "x": 1}));
        assert!(!is_field_update(&rawdoc! {"x": 1}));
        assert!(!is_field_update(&rawdoc! {"$v": 1, "_id": 1, "x": 1}));
    }

    #[test]
    fn appended_documents_and_markers() {
        let v = br#"{"operationType":"update","documentKey":{"_id":1}}"#;
        let got = fill(
            v,
            Splice::Append(Mode::Relaxed),
            Some(&rawdoc! {"_id": 1, "x": 2_i64}),
        )
        .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(j["fullDocument"], serde_json::json!({"_id": 1, "x": 2}));
        assert_eq!(j[MARKER], "found");
        assert_eq!(j["operationType"], "update");
        let got = fill(v, Splice::Append(Mode::Relaxed), None).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert!(j["fullDocument"].is_null() && j.get("fullDocument").is_some());
        assert_eq!(j[MARKER], "notFound");
    }

    #[test]
    fn debezium_after_is_replaced() {
        let r = quorumtail_events::debezium_record(
            &doc! {"op": "u", "ns": "a.b", "o": {"$set": {"x": 2}}, "o2": {"_id": 1}},
            &quorumtail_events::DebeziumSource {
                server_name: "s",
                version: "v",
                ts: bson::Timestamp {
                    time: 1,
                    increment: 1,
                },
                wall: None,
                txn: None,
            },
            0,
        )
        .unwrap()
        .unwrap();
        let got = fill(
            r.value.as_bytes(),
            Splice::DebeziumAfter,
            Some(&rawdoc! {"_id": 1, "x": 2}),
        )
        .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(j["after"], r#"{"_id": 1,"x": 2}"#);
        assert_eq!(j[MARKER], "found");
        assert!(j["updateDescription"].is_object());
        let got = fill(r.value.as_bytes(), Splice::DebeziumAfter, None).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert!(j["after"].is_null());
        assert_eq!(j[MARKER], "notFound");
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        assert!(fill(b"", Splice::Append(Mode::Relaxed), None).is_err());
        assert!(fill(b"{\"a\":1", Splice::Append(Mode::Relaxed), None).is_err());
        assert!(fill(
            b"{\"before\":null,\"after\":\"x\"}",
            Splice::DebeziumAfter,
            None
        )
        .is_err());
        assert!(fill(b"{}", Splice::DebeziumAfter, None).is_err());
    }

    #[test]
    fn documents_match_their_whole_key() {
        let d = doc! {"_id": 1_i64, "region": {"code": "eu"}, "sk": 5};
        assert!(matches_key(&d, &doc! {"_id": 1}));
        assert!(matches_key(&d, &doc! {"sk": 5.0, "_id": 1}));
        assert!(matches_key(&d, &doc! {"region.code": "eu", "_id": 1}));
        assert!(!matches_key(&d, &doc! {"sk": 6, "_id": 1}));
        assert!(!matches_key(&d, &doc! {"missing": 1, "_id": 1}));
        assert_eq!(id_key(&Bson::Int32(1)), id_key(&Bson::Double(1.0)));
        assert_ne!(id_key(&Bson::Int32(1)), id_key(&Bson::String("1".into())));
    }
}

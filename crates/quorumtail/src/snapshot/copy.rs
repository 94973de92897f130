//! One shard's copy: list its collections, read each at the snapshot's time in `_id`
//! order, emit what the shard owns (see the module docs of [`crate::snapshot`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use futures::TryStreamExt;
use quorumtail_oplog::{Filter, OpKind};
use quorumtail_sink::{SinkInput, SinkSender};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::floor::{LaterRead, SnapshotFloor};
use super::ownership::{compare, Owner};
use super::progress::{Stop, Tracker};
use super::reread;
use super::{read_client, SnapshotPlan};
use crate::pipeline::emit::Emitter;
use crate::pipeline::stats::ShardStats;
use crate::pipeline::{ShardError, ShardSpec};

/// Where a copy's records go: the sink, or, on a running shard with full documents on, the
/// lookup stage in front of it, so that they keep their place among the stream's records.
pub(crate) enum Output<'a> {
    /// Straight to the sink.
    Sink(&'a SinkSender),
    /// Through the shard's lookup stage.
    Stage(&'a tokio::sync::mpsc::Sender<crate::pipeline::lookup::Chunk>),
}

impl Output<'_> {
    async fn send(&self, shard: &Arc<str>, inputs: &mut Vec<SinkInput>) -> Result<(), ShardError> {
        match self {
            Output::Sink(sink) => {
                for input in inputs.drain(..) {
                    sink.send(input).await.map_err(|e| ShardError::Sink {
                        shard: shard.clone(),
                        detail: e.to_string(),
                    })?;
                }
                Ok(())
            }
            Output::Stage(tx) => {
                if inputs.is_empty() {
                    return Ok(());
                }
                let chunk = crate::pipeline::lookup::Chunk {
                    inputs: std::mem::take(inputs),
                    lookups: Vec::new(),
                };
                tx.send(chunk).await.map_err(|_| ShardError::LookupStopped {
                    shard: shard.clone(),
                })
            }
        }
    }
}

/// Why a collection's copy stopped.
#[derive(Debug)]
pub(crate) enum CopyStop {
    /// The read's time is older than the member's history (`SnapshotTooOld`): the rest may
    /// be read at a later time (see [`super::reread`]).
    TooOld(String),
    /// Anything else: the shard stops.
    Failed(ShardError),
}

impl From<ShardError> for CopyStop {
    fn from(e: ShardError) -> Self {
        CopyStop::Failed(e)
    }
}

/// The fix a `SnapshotTooOld` that cannot be worked around names.
pub(crate) const TOO_OLD_FIX: &str = "Fix: raise the server parameter minSnapshotHistoryWindowInSeconds above the snapshot's duration (a restart continues at the same time); or, to take the snapshot again at a new time, stop quorumtail, remove the entries of every shard still under snapshot from the checkpoint store, and start it";

/// How many times a collection's read is retried after transient failures.
const RETRIES: u32 = 10;

/// Copies shard `spec` at the plan's time through `emitter` into `sink`, and returns where
/// its stream starts (`P - stream_margin`, or the member's oldest oplog entry if later) and
/// what the snapshot holds (parts may have been read later, see [`super::reread`]).
///
/// # Errors
/// [`ShardError::Snapshot`] when the snapshot cannot be taken (the cause and the fix in
/// its text), [`ShardError::Sink`] when the sink stops.
pub async fn copy_shard(
    spec: &ShardSpec,
    plan: &SnapshotPlan,
    filter: &Filter,
    emitter: &mut Emitter,
    sink: &SinkSender,
    stats: &Arc<ShardStats>,
    shutdown: &CancellationToken,
) -> Result<Option<(Timestamp, SnapshotFloor)>, ShardError> {
    let shard = spec.name.clone();
    let fail = |detail: String| ShardError::Snapshot {
        shard: shard.clone(),
        detail,
    };
    let client = read_client(spec, &plan.access).await.map_err(fail)?;
    let earlier = plan.resume.get(&shard).cloned();
    if let Some(p) = earlier.as_ref().filter(|p| p.complete) {
        // Copied and delivered by an earlier run: only the stream remains.
        quorumtail_tailer::close(client).await;
        info!(shard = %shard, at = %ts_text(plan.at), documents = p.documents, "snapshot: copied by an earlier run; streaming from its time on");
        let floor = reread::floor_of(p).map_err(fail)?;
        return Ok(Some((p.stream_from.into(), floor)));
    }
    stats.snapshotting.store(1, Relaxed);
    let result = async {
        let mut floor = match &earlier {
            Some(p) => reread::floor_of(p).map_err(&fail)?,
            None => SnapshotFloor::at(plan.at.into()),
        };
        let (start, mut tracker) = match earlier {
            Some(p) => {
                info!(shard = %shard, at = %ts_text(plan.at), done = p.done.len(), current = ?p.current.as_ref().map(|c| (&c.ns, &c.after_id)), documents = p.documents, "snapshot: continuing where an earlier run's delivered records end (documents emitted after that point are emitted again)");
                stats.snapshot_documents.fetch_add(p.documents, Relaxed);
                stats.snapshot_collections.fetch_add(p.done.len() as u64, Relaxed);
                (p.stream_from.into(), Tracker::new(shard.clone(), plan.progress.clone(), p))
            }
            None => {
                let start = stream_start(&client, plan).await.map_err(&fail)?;
                let fresh = quorumtail_sink::SnapshotProgress {
                    at: plan.at.into(),
                    stream_from: start.into(),
                    done: Vec::new(),
                    current: None,
                    complete: false,
                    documents: 0,
                    later: Vec::new(),
                };
                (start, Tracker::new(shard.clone(), plan.progress.clone(), fresh))
            }
        };
        tracker.read_before(
            stats.snapshot_documents.load(Relaxed) + stats.snapshot_orphans.load(Relaxed),
        );
        let namespaces = namespaces(&client, filter).await.map_err(&fail)?;
        let todo: Vec<String> = namespaces
            .iter()
            .filter(|ns| !tracker.done(ns))
            .cloned()
            .collect();
        let estimate = estimate(&client, &todo).await;
        stats.snapshot_estimated_documents.store(estimate, Relaxed);
        info!(shard = %shard, at = %ts_text(plan.at), collections = namespaces.len(), estimated_documents = estimate, "snapshot: copying");
        let stopped = |s: Stop| match s {
            Stop::SinkFailed => Some(ShardError::Sink {
                shard: shard.clone(),
                detail: "the sink failed this shard during its snapshot".into(),
            }),
            Stop::Shutdown => None,
        };
        // The time and ownership reads use: the snapshot's, or a later one's (see
        // `reread`).
        let mut read = match floor.later.last() {
            Some(l) => reread::read_at(plan, l.at.into()).await.map_err(&fail)?,
            None => plan.clone(),
        };
        for (i, ns) in namespaces.iter().enumerate() {
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            if tracker.done(ns) {
                continue;
            }
            loop {
                let copied = copy_collection(
                    &client,
                    spec,
                    &read,
                    ns,
                    emitter,
                    &Output::Sink(sink),
                    stats,
                    &mut tracker,
                    shutdown,
                )
                .await;
                match copied {
                    Ok(()) => break,
                    Err(CopyStop::Failed(e)) => return Err(e),
                    Err(CopyStop::TooOld(why)) => {
                        let rest: Vec<String> = namespaces[i..]
                            .iter()
                            .filter(|n| !tracker.done(n))
                            .cloned()
                            .collect();
                        let later = reread::later(spec, plan, &read, &rest)
                            .await
                            .map_err(|e| fail(format!("{ns}: {why}; {e}. {TOO_OLD_FIX}")))?;
                        let after = tracker.after_id(ns).map_err(&fail)?;
                        warn!(shard = %shard, ns, %why, after_id = ?after, at = %ts_text(later.at), "snapshot: the rest is read at a later time (no chunk of these collections changed shards meanwhile)");
                        floor.later.push(LaterRead {
                            ns: ns.clone(),
                            after_id: after,
                            at: later.at.into(),
                        });
                        for n in &rest[1..] {
                            floor.later.push(LaterRead {
                                ns: n.clone(),
                                after_id: None,
                                at: later.at.into(),
                            });
                        }
                        tracker.read_later(&floor);
                        stats.snapshot_later_reads.fetch_add(1, Relaxed);
                        read = later;
                    }
                }
            }
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            tracker.finished(emitter.seq(), ns);
            if let Err(s) = tracker.maybe_store().await {
                return stopped(s).map_or(Ok(None), Err);
            }
            stats.snapshot_collections.fetch_add(1, Relaxed);
        }
        if let Err(s) = tracker.complete(emitter.seq(), shutdown).await {
            return stopped(s).map_or(Ok(None), Err);
        }
        Ok(Some((start, floor)))
    }
    .await;
    stats.snapshotting.store(0, Relaxed);
    quorumtail_tailer::close(client).await;
    if let Ok(Some(_)) = &result {
        info!(
            shard = %shard,
            documents = stats.snapshot_documents.load(Relaxed),
            bytes = stats.snapshot_bytes.load(Relaxed),
            orphans_skipped = stats.snapshot_orphans.load(Relaxed),
            "snapshot: done; streaming from its time on"
        );
    }
    result
}

fn ts_text(t: Timestamp) -> String {
    format!("{}:{}", t.time, t.increment)
}

/// `P - margin`, or the member's oldest entry if later (nothing older can be read).
async fn stream_start(client: &mongodb::Client, plan: &SnapshotPlan) -> Result<Timestamp, String> {
    let oldest = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": 1})
        .await
        .map_err(|e| format!("reading the oldest oplog entry: {e}"))?
        .and_then(|d| d.get_timestamp("ts").ok());
    let margin = u32::try_from(plan.stream_margin.as_secs()).unwrap_or(u32::MAX);
    let back = Timestamp {
        time: plan.at.time.saturating_sub(margin),
        increment: 0,
    };
    Ok(match oldest {
        Some(o) if (o.time, o.increment) > (back.time, back.increment) => o,
        _ => back,
    })
}

/// The members' estimate of how many documents `namespaces` hold (`count`, what
/// `estimatedDocumentCount` sends; orphans included); a collection that cannot be counted
/// adds nothing.
pub(crate) async fn estimate(client: &mongodb::Client, namespaces: &[String]) -> u64 {
    let mut total = 0;
    for ns in namespaces {
        let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
        match client
            .database(db)
            .collection::<Document>(coll)
            .estimated_document_count()
            .await
        {
            Ok(n) => total += n,
            Err(e) => {
                tracing::debug!(ns, error = %e, "snapshot: no estimate of the collection's size")
            }
        }
    }
    total
}

/// Every collection the filter keeps, as `db.coll`, in name order.
pub(crate) async fn namespaces(
    client: &mongodb::Client,
    filter: &Filter,
) -> Result<Vec<String>, String> {
    let dbs = client
        .list_database_names()
        .await
        .map_err(|e| format!("listDatabases: {e}"))?;
    let mut out = Vec::new();
    for db in dbs {
        if matches!(db.as_str(), "admin" | "config" | "local") {
            continue;
        }
        let specs: Vec<mongodb::results::CollectionSpecification> = client
            .database(&db)
            .list_collections()
            .await
            .map_err(|e| format!("listCollections on {db}: {e}"))?
            .try_collect()
            .await
            .map_err(|e| format!("listCollections on {db}: {e}"))?;
        for s in specs {
            if s.collection_type != mongodb::results::CollectionType::Collection {
                continue;
            }
            let ns = format!("{db}.{}", s.name);
            if filter.check(OpKind::Insert, &ns, false).is_ok() {
                out.push(ns);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a driver error is worth retrying (the connection, an election), as opposed to
/// the server refusing the read.
fn transient(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => matches!(
            c.code,
            // NotWritablePrimary and friends, InterruptedDueToReplStateChange, shutdown,
            // host unreachable / network timeouts reported by the server.
            6 | 7 | 89 | 91 | 189 | 10107 | 11600 | 11602 | 13435 | 13436
        ),
        _ => true,
    }
}

/// Reads `ns` at the plan's time and emits what this shard owns.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn copy_collection(
    client: &mongodb::Client,
    spec: &ShardSpec,
    plan: &SnapshotPlan,
    ns: &str,
    emitter: &mut Emitter,
    sink: &Output<'_>,
    stats: &Arc<ShardStats>,
    tracker: &mut Tracker,
    shutdown: &CancellationToken,
) -> Result<(), CopyStop> {
    let shard = spec.name.clone();
    let fail = |detail: String| ShardError::Snapshot {
        shard: shard.clone(),
        detail: format!("{ns}: {detail}"),
    };
    let (db_name, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let db = client.database(db_name);
    // The last `_id` emitted: after a transient failure (or a restart, from the stored
    // progress) the read starts again and skips up to it (the snapshot's order is fixed;
    // `$gt` would miss `_id`s of other types).
    let mut last: Option<Bson> = tracker.after_id(ns).map_err(&fail)?;
    let mut attempts = 0;
    let (mut emitted, mut orphans) = (0u64, 0u64);
    'read: loop {
        let mut out: Vec<SinkInput> = Vec::new();
        let first = tracker
            .meanwhile(db.run_command(doc! {
                "find": coll, "filter": {}, "sort": {"_id": 1},
                "batchSize": i64::from(plan.batch_size),
                "readConcern": {"level": "snapshot", "atClusterTime": plan.at},
            }))
            .await;
        let mut reply = match first {
            Ok(r) => r,
            Err(e) => {
                retry(&e, &mut attempts, &fail, shutdown).await?;
                continue 'read;
            }
        };
        loop {
            let cursor = reply
                .get_document("cursor")
                .map_err(|_| fail(format!("a find reply without cursor: {reply}")))?;
            let batch = cursor
                .get_array("firstBatch")
                .or_else(|_| cursor.get_array("nextBatch"))
                .map_err(|_| fail("a cursor without a batch".into()))?;
            let (mut batch_bytes, mut batch_orphans) = (0u64, 0u64);
            for d in batch {
                let Bson::Document(d) = d else {
                    return Err(fail("a batch element that is not a document".into()).into());
                };
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                if last
                    .as_ref()
                    .is_some_and(|l| compare(&id, l) != std::cmp::Ordering::Greater)
                {
                    continue;
                }
                let mine = match &plan.ownership {
                    None => true,
                    Some(own) => match own.owner(ns, d).map_err(|e| fail(e.to_string()))? {
                        Owner::Shard(owner) => owner == &*spec.name,
                        Owner::Unknown => {
                            return Err(fail(format!(
                                "the database has no primary shard in config.databases, so the owner of its unsharded collection is unknown (document {id})"
                            ))
                            .into())
                        }
                    },
                };
                if mine {
                    let raw = RawDocumentBuf::try_from(d).map_err(|e| fail(e.to_string()))?;
                    let size = raw.as_bytes().len() as u64;
                    batch_bytes += size;
                    stats.snapshot_bytes.fetch_add(size, Relaxed);
                    emitter
                        .snapshot_document(ns, &raw, plan.at.into(), &mut out)
                        .map_err(|e| fail(e.to_string()))?;
                    emitted += 1;
                } else {
                    orphans += 1;
                    batch_orphans += 1;
                    stats.snapshot_orphans.fetch_add(1, Relaxed);
                }
                last = Some(id);
            }
            let in_batch = out.len() as u64;
            sink.send(&spec.name, &mut out).await?;
            stats.copied(ns, in_batch, batch_bytes, batch_orphans, false);
            if let Some(l) = &last {
                tracker.emitted(emitter.seq(), ns, l, in_batch);
            }
            tracker.progress_line(ns, stats);
            if let Err(Stop::SinkFailed) = tracker.maybe_store().await {
                return Err(ShardError::Sink {
                    shard: shard.clone(),
                    detail: "the sink failed this shard during its snapshot".into(),
                }
                .into());
            }
            let id = cursor.get_i64("id").unwrap_or(0);
            if id == 0 {
                break 'read;
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match tracker
                .meanwhile(db.run_command(
                    doc! {"getMore": id, "collection": coll, "batchSize": i64::from(plan.batch_size)},
                ))
                .await
            {
                Ok(r) => reply = r,
                Err(e) => {
                    retry(&e, &mut attempts, &fail, shutdown).await?;
                    continue 'read;
                }
            }
        }
    }
    stats.copied(ns, 0, 0, 0, true);
    info!(shard = %spec.name, ns, documents = emitted, orphans_skipped = orphans, "snapshot: collection copied");
    Ok(())
}

/// Waits before another attempt, or fails: `SnapshotTooOld` and other refusals are
/// definite, and so are transient failures past [`RETRIES`].
async fn retry(
    e: &mongodb::error::Error,
    attempts: &mut u32,
    fail: &impl Fn(String) -> ShardError,
    shutdown: &CancellationToken,
) -> Result<(), CopyStop> {
    if let mongodb::error::ErrorKind::Command(c) = e.kind.as_ref() {
        if c.code == 239 {
            return Err(CopyStop::TooOld(format!(
                "the read's time is older than the member's history ({}: {})",
                c.code_name, c.message
            )));
        }
    }
    if !transient(e) || *attempts >= RETRIES {
        return Err(fail(format!("reading failed: {e}")).into());
    }
    *attempts += 1;
    let wait = Duration::from_millis(200 * u64::from(*attempts));
    warn!(error = %e, attempt = *attempts, "snapshot: read failed; retrying");
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
    Ok(())
}

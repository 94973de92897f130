//! From committed oplog entries to sink inputs: transactions unpacked, filters applied,
//! records encoded, sequence numbers and safe checkpoints attached.
//!
//! A checkpoint is attached only where resuming is safe: never while a transaction is
//! open (its earlier entries would not be re-read), so entries released meanwhile carry
//! no checkpoint, and the first entry after the transaction closes carries one again.

use std::sync::Arc;

use quorumtail_oplog::entry::split_ns;
use quorumtail_oplog::extjson::{write_document, Mode};
use quorumtail_oplog::filter::command_target_ns;
use quorumtail_oplog::record::{document_key, encode_entry, encode_txn_op, TxnInfo};
use quorumtail_oplog::txn::{Step, TxnAssembler, TxnConfig};
use quorumtail_oplog::{EntryId, Filter, OpKind, OplogEntry, Timestamp};
use quorumtail_sink::{FullDocument, Marker, OutRecord, RecordFormat, SinkInput};

use crate::config::KeyKind;
use crate::pipeline::lookup::{is_field_update, Lookup, Splice};
use crate::pipeline::stats::ShardStats;

/// Turns one shard's committed entries into sink inputs.
#[derive(Debug)]
pub struct Emitter {
    shard: Arc<str>,
    filter: Filter,
    key: KeyKind,
    format: RecordFormat,
    tombstones: bool,
    full_document: FullDocument,
    /// Update records of the output that wait for their full document, by index into
    /// the output (see [`Emitter::take_lookups`]).
    lookups: Vec<Lookup>,
    seq: u64,
    txn: TxnAssembler,
    /// The last checkpoint attached to an input: later inputs carry one only when it moved.
    last_checkpoint: Option<EntryId>,
    stats: Arc<ShardStats>,
}

/// A committed entry that cannot be turned into records: the shard must stop.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard}: cannot emit the committed entry at {id}: {detail}")]
pub struct EmitError {
    shard: Arc<str>,
    id: EntryId,
    detail: String,
}

impl Emitter {
    /// An emitter for one shard. `skip_orphans_before`: a user-given start position
    /// (never a checkpoint) may fall inside a transaction, whose start is then skipped.
    pub fn new(
        shard: Arc<str>,
        filter: Filter,
        key: KeyKind,
        stats: Arc<ShardStats>,
        skip_orphans_before: Option<Timestamp>,
    ) -> Self {
        let txn = TxnAssembler::new(TxnConfig {
            skip_orphans_before,
            ..TxnConfig::default()
        });
        Emitter {
            shard,
            filter,
            key,
            format: RecordFormat::Oplog,
            tombstones: false,
            full_document: FullDocument::Off,
            lookups: Vec::new(),
            seq: 0,
            txn,
            last_checkpoint: None,
            stats,
        }
    }

    /// Records in `format` (`[sink] format`).
    pub fn with_format(mut self, format: RecordFormat) -> Self {
        self.format = format;
        self
    }

    /// Follows each delete with a tombstone (`[sink] tombstones`).
    pub fn with_tombstones(mut self, tombstones: bool) -> Self {
        self.tombstones = tombstones;
        self
    }

    /// Marks update records for a full document lookup (`[sink] full_document`).
    pub fn with_full_document(mut self, mode: FullDocument) -> Self {
        self.full_document = mode;
        self
    }

    /// The records waiting for their full document among those appended to the output
    /// since the last call, each by its index in that output: take them whenever the
    /// output is taken (the lookup stage fills them in before they reach the sink).
    pub fn take_lookups(&mut self) -> Vec<Lookup> {
        std::mem::take(&mut self.lookups)
    }

    /// Carries over the lookups of an emitter this one replaces (their records are in the
    /// same output).
    pub fn adopt_lookups(&mut self, lookups: Vec<Lookup>) {
        self.lookups.extend(lookups);
    }

    /// Registers the record about to be appended at `index` for a lookup, when it is an
    /// update of fields (not a replacement) and lookups are on.
    fn want_lookup(
        &mut self,
        index: usize,
        op: OpKind,
        ns: &str,
        o: Option<&bson::RawDocument>,
        o2: Option<&bson::RawDocument>,
        entry: EntryId,
    ) -> Result<(), String> {
        if !self.full_document.enabled() || op != OpKind::Update || !o.is_some_and(is_field_update)
        {
            return Ok(());
        }
        let key = o2.ok_or("an update without o2 (the document key) cannot be looked up")?;
        let key = bson::Document::try_from(key).map_err(|e| format!("o2: {e}"))?;
        let splice = match self.format {
            RecordFormat::Debezium { .. } => Splice::DebeziumAfter,
            _ => Splice::Append,
        };
        self.lookups.push(Lookup {
            index,
            ns: ns.to_owned(),
            key,
            entry,
            splice,
        });
        Ok(())
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The checkpoint to attach to the next input, if it moved.
    fn checkpoint(&mut self) -> Option<EntryId> {
        let safe = self.txn.safe_position();
        if let Some(id) = safe.filter(|_| safe != self.last_checkpoint) {
            self.last_checkpoint = safe;
            self.stats.set_handed(id);
            safe
        } else {
            None
        }
    }

    fn marker(&mut self, out: &mut Vec<SinkInput>) {
        if let Some(checkpoint) = self.checkpoint() {
            let seq = self.next_seq();
            out.push(SinkInput::Marker(Marker {
                shard: self.shard.clone(),
                seq,
                checkpoint,
            }));
        }
    }

    /// Appends the sink inputs for one committed entry to `out`.
    ///
    /// # Errors
    /// [`EmitError`] when the entry's bytes cannot be encoded, or the transaction chain is
    /// broken (see the assembler's checkpoint contract).
    pub fn committed(
        &mut self,
        entry: &OplogEntry<'_>,
        out: &mut Vec<SinkInput>,
    ) -> Result<(), EmitError> {
        let id = entry.id();
        let shard = self.shard.clone();
        let err = |detail: String| EmitError {
            shard: shard.clone(),
            id,
            detail,
        };
        match self.txn.push(entry).map_err(|e| err(e.to_string()))? {
            Step::Entry => {
                let ns = target_ns(entry.op, entry.ns, entry.o, entry.command_name());
                match self.filter.check(entry.op, &ns, entry.from_migrate) {
                    Err(reason) => {
                        self.stats.dropped(reason);
                        self.marker(out);
                    }
                    Ok(()) => {
                        let mut value = Vec::with_capacity(entry.raw().as_bytes().len() * 2 + 128);
                        match self.format {
                            RecordFormat::Oplog => encode_entry(&self.shard, entry, &mut value)
                                .map_err(|e| err(e.to_string()))?,
                            RecordFormat::ChangeEvent => {
                                let src = quorumtail_events::Source {
                                    shard: &self.shard,
                                    ts: bson_ts(id.ts),
                                    term: id.term,
                                    hash: id.hash,
                                    wall: entry.wall,
                                    txn: None,
                                };
                                if !change_event_json(entry.raw(), &src, &mut value).map_err(err)? {
                                    self.no_event(out);
                                    return Ok(());
                                }
                            }
                            RecordFormat::Debezium { server_name } => {
                                let src = quorumtail_events::DebeziumSource {
                                    server_name,
                                    version: DEBEZIUM_SOURCE_VERSION,
                                    ts: bson_ts(id.ts),
                                    wall: entry.wall,
                                    txn: None,
                                };
                                let Some(rec) = debezium_json(entry.raw(), &src).map_err(err)?
                                else {
                                    self.no_event(out);
                                    return Ok(());
                                };
                                let key = self.debezium_key(rec.key, &ns);
                                self.want_lookup(
                                    out.len(),
                                    entry.op,
                                    entry.ns,
                                    entry.o,
                                    entry.o2,
                                    id,
                                )
                                .map_err(err)?;
                                self.record(
                                    id,
                                    entry.op,
                                    entry.ns,
                                    key,
                                    rec.value.into_bytes(),
                                    out,
                                );
                                return Ok(());
                            }
                        }
                        let key = self
                            .key_for(entry.ns, &ns, entry.document_id())
                            .map_err(|e| err(e.to_string()))?;
                        self.want_lookup(out.len(), entry.op, entry.ns, entry.o, entry.o2, id)
                            .map_err(err)?;
                        self.record(id, entry.op, entry.ns, key, value, out);
                    }
                }
            }
            Step::Emit(txn) => {
                let mut any = false;
                // The records this part of the transaction yields, so that a consumer can
                // tell when it has all of them (`txn.count`).
                let passing = txn
                    .ops
                    .iter()
                    .filter(|op| {
                        let ns = target_ns(op.op, &op.ns, op.o(), op.command_name());
                        self.filter.check(op.op, &ns, op.from_migrate).is_ok()
                    })
                    .count();
                // Debezium's transaction orders: among the transaction's records, overall
                // and per collection, from 1.
                let mut total_order = 0_u64;
                let mut per_collection: std::collections::HashMap<&str, u64> =
                    std::collections::HashMap::new();
                let lsid = match self.format {
                    RecordFormat::Debezium { .. } => txn
                        .lsid
                        .as_deref()
                        .map(bson::Document::try_from)
                        .transpose()
                        .map_err(|e| err(format!("lsid: {e}")))?,
                    _ => None,
                };
                for op in &txn.ops {
                    let ns = target_ns(op.op, &op.ns, op.o(), op.command_name());
                    if let Err(reason) = self.filter.check(op.op, &ns, op.from_migrate) {
                        self.stats.dropped(reason);
                        continue;
                    }
                    let mut value = Vec::with_capacity(op.doc.as_bytes().len() * 2 + 160);
                    match self.format {
                        RecordFormat::Oplog => encode_txn_op(
                            &self.shard,
                            txn.commit,
                            op.op.as_str(),
                            &op.ns,
                            TxnInfo {
                                count: u32::try_from(passing).unwrap_or(u32::MAX),
                                ..txn.info(op)
                            },
                            &op.doc,
                            &mut value,
                        )
                        .map_err(|e| err(e.to_string()))?,
                        RecordFormat::ChangeEvent => {
                            let lsid = txn
                                .lsid
                                .as_deref()
                                .map(bson::Document::try_from)
                                .transpose()
                                .map_err(|e| err(format!("lsid: {e}")))?;
                            let src = quorumtail_events::Source {
                                shard: &self.shard,
                                ts: bson_ts(txn.commit.ts),
                                term: txn.commit.term,
                                hash: txn.commit.hash,
                                wall: entry.wall,
                                txn: Some(quorumtail_events::TxnSource {
                                    index: op.index,
                                    lsid: lsid.as_ref(),
                                    txn_number: txn.txn_number,
                                }),
                            };
                            if !change_event_json(&op.doc, &src, &mut value).map_err(err)? {
                                self.stats
                                    .dropped_no_change_event
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                continue;
                            }
                        }
                        RecordFormat::Debezium { .. } => {}
                    }
                    let key = match self.format {
                        RecordFormat::Debezium { server_name } => {
                            let order = per_collection.entry(op.ns.as_str()).or_insert(0);
                            let src = quorumtail_events::DebeziumSource {
                                server_name,
                                version: DEBEZIUM_SOURCE_VERSION,
                                ts: bson_ts(txn.commit.ts),
                                wall: entry.wall,
                                txn: Some(quorumtail_events::DebeziumTxn {
                                    lsid: lsid.as_ref(),
                                    txn_number: txn.txn_number,
                                    total_order: total_order + 1,
                                    data_collection_order: *order + 1,
                                }),
                            };
                            let Some(rec) = debezium_json(&op.doc, &src).map_err(err)? else {
                                self.stats
                                    .dropped_no_change_event
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                continue;
                            };
                            total_order += 1;
                            *order += 1;
                            value = rec.value.into_bytes();
                            self.debezium_key(rec.key, &ns)
                        }
                        _ => self
                            .key_for(&op.ns, &ns, op.document_id())
                            .map_err(|e| err(e.to_string()))?,
                    };
                    self.want_lookup(out.len(), op.op, &op.ns, op.o(), op.o2(), txn.commit)
                        .map_err(err)?;
                    // Checkpoints attach after the last operation only.
                    let seq = self.next_seq();
                    let (db, coll) = split_ns(&op.ns);
                    self.stats.emitted();
                    let tombstone = (self.tombstones && op.op == OpKind::Delete)
                        .then(|| key.clone())
                        .flatten();
                    out.push(SinkInput::Record(OutRecord {
                        shard: self.shard.clone(),
                        seq,
                        checkpoint: None,
                        ts: txn.commit.ts,
                        op: op.op.as_str(),
                        db: db.to_owned(),
                        coll: coll.to_owned(),
                        key,
                        value: Some(value),
                    }));
                    if let Some(key) = tombstone {
                        let seq = self.next_seq();
                        out.push(SinkInput::Record(OutRecord {
                            shard: self.shard.clone(),
                            seq,
                            checkpoint: None,
                            ts: txn.commit.ts,
                            op: OpKind::Delete.as_str(),
                            db: db.to_owned(),
                            coll: coll.to_owned(),
                            key: Some(key),
                            value: None,
                        }));
                    }
                    any = true;
                }
                self.stats
                    .transactions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = any;
                self.marker(out);
            }
            Step::Buffered => {}
            Step::Aborted(a) => {
                self.stats
                    .aborted_ops
                    .fetch_add(a.dropped_ops as u64, std::sync::atomic::Ordering::Relaxed);
                self.marker(out);
            }
            Step::SkippedOrphan(_) => self.marker(out),
        }
        Ok(())
    }

    /// An operation change events do not show: counted, and the position moves on.
    fn no_event(&mut self, out: &mut Vec<SinkInput>) {
        self.stats
            .dropped_no_change_event
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.marker(out);
    }

    fn record(
        &mut self,
        id: EntryId,
        op: OpKind,
        ns: &str,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        out: &mut Vec<SinkInput>,
    ) {
        let checkpoint = self.checkpoint();
        let seq = self.next_seq();
        let (db, coll) = split_ns(ns);
        self.stats.emitted();
        // A tombstone follows the delete and carries the checkpoint: a resume never
        // starts between the two.
        let tombstone = (self.tombstones && op == OpKind::Delete)
            .then(|| key.clone())
            .flatten();
        out.push(SinkInput::Record(OutRecord {
            shard: self.shard.clone(),
            seq,
            checkpoint: if tombstone.is_some() {
                None
            } else {
                checkpoint
            },
            ts: id.ts,
            op: op.as_str(),
            db: db.to_owned(),
            coll: coll.to_owned(),
            key,
            value: Some(value),
        }));
        if let Some(key) = tombstone {
            let seq = self.next_seq();
            out.push(SinkInput::Record(OutRecord {
                shard: self.shard.clone(),
                seq,
                checkpoint,
                ts: id.ts,
                op: op.as_str(),
                db: db.to_owned(),
                coll: coll.to_owned(),
                key: Some(key),
                value: None,
            }));
        }
    }

    /// A Debezium record's key: the record's own (`{"id": ...}`) for document keys, else
    /// as `[sink] key` says.
    fn debezium_key(&self, key: String, target: &str) -> Option<Vec<u8>> {
        Some(match self.key {
            KeyKind::Document => key.into_bytes(),
            KeyKind::Shard => self.shard.as_bytes().to_vec(),
            KeyKind::Namespace => target.as_bytes().to_vec(),
        })
    }

    fn key_for(
        &self,
        ns: &str,
        target: &str,
        doc_id: Option<bson::RawBsonRef<'_>>,
    ) -> Result<Option<Vec<u8>>, bson::error::Error> {
        Ok(Some(match self.key {
            KeyKind::Shard => self.shard.as_bytes().to_vec(),
            KeyKind::Namespace => target.as_bytes().to_vec(),
            KeyKind::Document => match doc_id {
                Some(id) => {
                    let mut k = Vec::with_capacity(64);
                    document_key(ns, id, &mut k)?;
                    k
                }
                None => target.as_bytes().to_vec(),
            },
        }))
    }
}

/// The namespace an operation changes, for filters and keys (commands: their target).
fn bson_ts(ts: Timestamp) -> bson::Timestamp {
    bson::Timestamp {
        time: ts.time,
        increment: ts.increment,
    }
}

/// `source.version` of Debezium records: quorumtail's own version, not a Debezium release.
const DEBEZIUM_SOURCE_VERSION: &str = concat!("quorumtail-", env!("CARGO_PKG_VERSION"));

/// The Debezium record of `op`, made now; `None` when the connector writes none for it.
fn debezium_json(
    op: &bson::RawDocument,
    src: &quorumtail_events::DebeziumSource<'_>,
) -> Result<Option<quorumtail_events::DebeziumRecord>, String> {
    let doc = bson::Document::try_from(op).map_err(|e| format!("unreadable entry: {e}"))?;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    quorumtail_events::debezium_record(&doc, src, now_ns).map_err(|e| e.to_string())
}

/// Writes the change event of `op` as relaxed Extended JSON; `false` when it has none.
fn change_event_json(
    op: &bson::RawDocument,
    src: &quorumtail_events::Source<'_>,
    out: &mut Vec<u8>,
) -> Result<bool, String> {
    let doc = bson::Document::try_from(op).map_err(|e| format!("unreadable entry: {e}"))?;
    let Some(event) = quorumtail_events::change_event(&doc, src).map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    let raw = bson::RawDocumentBuf::try_from(&event).map_err(|e| e.to_string())?;
    write_document(&raw, Mode::Relaxed, out).map_err(|e| e.to_string())?;
    Ok(true)
}

fn target_ns(op: OpKind, ns: &str, o: Option<&bson::RawDocument>, command: Option<&str>) -> String {
    if op == OpKind::Command {
        let name = command.unwrap_or("");
        let first = o
            .and_then(|o| o.get(name).ok().flatten())
            .and_then(|v| v.as_str());
        command_target_ns(ns, name, first)
    } else {
        ns.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{rawdoc, spec::BinarySubtype, Binary, RawDocumentBuf};

    fn ts(i: u32) -> bson::Timestamp {
        bson::Timestamp {
            time: 1_700_000_000,
            increment: i,
        }
    }

    fn lsid() -> RawDocumentBuf {
        rawdoc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1; 16] }, "uid": Binary { subtype: BinarySubtype::Generic, bytes: vec![2; 32] } }
    }

    fn emitter() -> Emitter {
        Emitter::new(
            "s".into(),
            Filter::default(),
            KeyKind::Document,
            Arc::default(),
            None,
        )
    }

    fn run(e: &mut Emitter, docs: &[RawDocumentBuf]) -> Vec<SinkInput> {
        let mut out = Vec::new();
        for d in docs {
            e.committed(&OplogEntry::parse(d).unwrap(), &mut out)
                .unwrap();
        }
        out
    }

    fn checkpoints(out: &[SinkInput]) -> Vec<Option<u32>> {
        out.iter()
            .map(|i| match i {
                SinkInput::Record(r) => r.checkpoint.map(|c| c.ts.increment),
                SinkInput::Marker(m) => Some(m.checkpoint.ts.increment),
            })
            .collect()
    }

    /// A large transaction (two entries) with a plain insert released in between: the
    /// operations come out together at the commit, with their transaction details, and
    /// no checkpoint lands between the transaction's first entry and its commit.
    #[test]
    fn transactions_are_emitted_whole_and_checkpoints_skip_them() {
        let mut e = emitter();
        let first = rawdoc! {
            "lsid": lsid(), "txnNumber": 7_i64, "op": "c", "ns": "admin.$cmd",
            "o": { "applyOps": [ { "op": "i", "ns": "shop.orders", "o": { "_id": 1 } } ], "partialTxn": true },
            "ts": ts(2), "t": 1_i64, "prevOpTime": { "ts": bson::Timestamp { time: 0, increment: 0 }, "t": -1_i64 },
        };
        let plain =
            rawdoc! { "op": "i", "ns": "shop.users", "o": { "_id": "u" }, "ts": ts(3), "t": 1_i64 };
        let last = rawdoc! {
            "lsid": lsid(), "txnNumber": 7_i64, "op": "c", "ns": "admin.$cmd",
            "o": { "applyOps": [ { "op": "u", "ns": "shop.orders", "o": { "$set": { "x": 1 } }, "o2": { "_id": 1 } }, { "op": "i", "ns": "config.x", "o": { "_id": 9 } } ], "count": 3_i64 },
            "ts": ts(4), "t": 1_i64, "prevOpTime": { "ts": ts(2), "t": 1_i64 },
        };
        let before =
            rawdoc! { "op": "i", "ns": "shop.users", "o": { "_id": "a" }, "ts": ts(1), "t": 1_i64 };
        let out = run(&mut e, &[before, first, plain, last]);
        let records: Vec<serde_json::Value> = out
            .iter()
            .filter_map(|i| match i {
                SinkInput::Record(r) => {
                    Some(serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
                }
                _ => None,
            })
            .collect();
        // before, plain, then the transaction's two shop.orders operations (config.x is internal).
        assert_eq!(records.len(), 4, "{records:#?}");
        assert_eq!(records[1]["entry"]["o"]["_id"], "u");
        assert_eq!(records[2]["txn"]["txnNumber"], 7);
        assert_eq!(records[2]["txn"]["index"], 0);
        assert_eq!(records[3]["txn"]["index"], 1);
        assert_eq!(records[3]["op"], "u");
        assert_eq!(
            records[2]["ts"]["i"], 4,
            "transaction records carry the commit's ts"
        );
        // Checkpoint after `before` (1); none while the transaction is open (the plain
        // insert at 3 carries none); after the commit, 4.
        assert_eq!(checkpoints(&out), vec![Some(1), None, None, None, Some(4)]);
    }

    /// Filtered entries still move the checkpoint, through markers.
    #[test]
    fn dropped_entries_advance_through_markers() {
        let mut e = emitter();
        let noop = rawdoc! { "op": "n", "ns": "", "o": { "msg": "periodic noop" }, "ts": ts(1), "t": 1_i64 };
        let migrated = rawdoc! { "op": "d", "ns": "shop.orders", "o": { "_id": 1 }, "fromMigrate": true, "ts": ts(2), "t": 1_i64 };
        let out = run(&mut e, &[noop, migrated]);
        assert!(out.iter().all(|i| matches!(i, SinkInput::Marker(_))));
        assert_eq!(checkpoints(&out), vec![Some(1), Some(2)]);
        assert_eq!(
            e.stats
                .dropped_from_migrate
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn document_keys_are_canonical() {
        let mut e = emitter();
        let ins = rawdoc! { "op": "i", "ns": "shop.orders", "o": { "_id": 1.0 }, "ts": ts(1), "t": 1_i64 };
        let out = run(&mut e, &[ins]);
        let SinkInput::Record(r) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            r.key.as_deref(),
            Some(&br#"{"ns":"shop.orders","_id":{"$numberDouble":"1.0"}}"#[..])
        );
        assert_eq!(
            (r.db.as_str(), r.coll.as_str(), r.op),
            ("shop", "orders", "i")
        );
    }

    /// `[sink] tombstones`: each delete is followed by a null value under the same key,
    /// and the checkpoint rides on the tombstone, so a resume never falls between them.
    #[test]
    fn deletes_are_followed_by_tombstones_carrying_the_checkpoint() {
        let mut e = emitter().with_tombstones(true);
        let docs = [
            rawdoc! { "op": "i", "ns": "shop.users", "o": { "_id": 5 }, "ts": ts(1), "t": 1_i64 },
            rawdoc! { "op": "d", "ns": "shop.users", "o": { "_id": 5 }, "ts": ts(2), "t": 1_i64 },
        ];
        let out = run(&mut e, &docs);
        let records: Vec<&OutRecord> = out
            .iter()
            .filter_map(|i| match i {
                SinkInput::Record(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(records.len(), 3, "{records:#?}");
        let (delete, tombstone) = (records[1], records[2]);
        assert_eq!(delete.op, "d");
        assert!(delete.value.is_some());
        assert_eq!(delete.checkpoint, None);
        assert_eq!(tombstone.value, None);
        assert_eq!(tombstone.key, delete.key);
        assert_eq!(
            tombstone.checkpoint.map(|c| c.ts),
            Some(Timestamp::new(1_700_000_000, 2))
        );
        assert!(tombstone.seq > delete.seq);
        // Without the setting, no tombstone.
        let mut e = emitter();
        assert_eq!(
            run(&mut e, &docs)
                .iter()
                .filter(|i| matches!(i, SinkInput::Record(_)))
                .count(),
            2
        );
    }

    fn record_values(out: &[SinkInput]) -> Vec<(&OutRecord, Option<serde_json::Value>)> {
        out.iter()
            .filter_map(|i| match i {
                SinkInput::Record(r) => Some((
                    r,
                    r.value
                        .as_deref()
                        .map(|v| serde_json::from_slice(v).unwrap()),
                )),
                _ => None,
            })
            .collect()
    }

    /// `[sink] format = "debezium"`: the key is the record's `{"id": ...}` (tombstones
    /// too), a transaction's operations carry their session and the transaction's orders
    /// (overall and per collection), and commands give no record but move the position.
    #[test]
    fn debezium_records_keys_transactions_and_tombstones() {
        let mut e = emitter()
            .with_format(RecordFormat::Debezium {
                server_name: "inventory",
            })
            .with_tombstones(true);
        let txn = rawdoc! {
            "lsid": lsid(), "txnNumber": 7_i64, "op": "c", "ns": "admin.$cmd",
            "o": { "applyOps": [
                { "op": "i", "ns": "shop.orders", "o": { "_id": 1, "x": 1 } },
                { "op": "i", "ns": "shop.users", "o": { "_id": "u" } },
                { "op": "d", "ns": "shop.orders", "o": { "_id": 1 } },
            ] },
            "ts": ts(2), "t": 1_i64, "wall": bson::DateTime::from_millis(5_000),
        };
        let drop = rawdoc! { "op": "c", "ns": "shop.$cmd", "o": { "drop": "users" }, "ts": ts(3), "t": 1_i64 };
        let out = run(&mut e, &[txn, drop]);
        let recs = record_values(&out);
        assert_eq!(recs.len(), 4, "{recs:#?}");
        let (ins, v) = &recs[0];
        let v = v.as_ref().unwrap();
        assert_eq!(ins.key.as_deref(), Some(&br#"{"id":"1"}"#[..]));
        assert_eq!(v["op"], "c");
        assert_eq!(v["after"], r#"{"_id": 1,"x": 1}"#);
        assert_eq!(v["source"]["name"], "inventory");
        assert_eq!(v["source"]["connector"], "mongodb");
        assert_eq!(v["source"]["txnNumber"], 7);
        assert_eq!(v["source"]["wallTime"], 5_000);
        assert_eq!(v["transaction"]["total_order"], 1);
        assert_eq!(v["transaction"]["data_collection_order"], 1);
        let lsid = v["source"]["lsid"].as_str().unwrap();
        assert_eq!(v["transaction"]["id"], format!("{lsid}:7"));
        let v = recs[1].1.as_ref().unwrap();
        assert_eq!(recs[1].0.key.as_deref(), Some(&br#"{"id":"\"u\""}"#[..]));
        assert_eq!(v["transaction"]["total_order"], 2);
        assert_eq!(v["transaction"]["data_collection_order"], 1);
        let v = recs[2].1.as_ref().unwrap();
        assert_eq!(v["op"], "d");
        assert_eq!(v["transaction"]["total_order"], 3);
        assert_eq!(v["transaction"]["data_collection_order"], 2);
        let (tombstone, none) = &recs[3];
        assert!(none.is_none());
        assert_eq!(tombstone.key, recs[2].0.key);
        // The drop: no record, the position moves (a marker with its ts).
        assert!(matches!(out.last(), Some(SinkInput::Marker(m)) if m.checkpoint.ts.increment == 3));
    }

    /// `[sink] full_document`: updates of fields (top-level and in a transaction) are
    /// listed for a lookup by their index in the output, with the document key and the
    /// entry (the commit's in a transaction); replacements, inserts and deletes are not, nor
    /// anything when lookups are off.
    #[test]
    fn field_updates_are_marked_for_a_lookup() {
        let docs = [
            rawdoc! { "op": "i", "ns": "shop.users", "o": { "_id": 5 }, "ts": ts(1), "t": 1_i64 },
            rawdoc! { "op": "u", "ns": "shop.users", "o": { "$v": 2, "diff": { "u": { "x": 1 } } }, "o2": { "_id": 5 }, "ts": ts(2), "t": 1_i64 },
            rawdoc! { "op": "u", "ns": "shop.users", "o": { "_id": 5, "y": 1 }, "o2": { "_id": 5 }, "ts": ts(3), "t": 1_i64 },
            rawdoc! { "op": "n", "ns": "", "o": { "msg": "periodic noop" }, "ts": ts(4), "t": 1_i64 },
            rawdoc! {
                "lsid": lsid(), "txnNumber": 7_i64, "op": "c", "ns": "admin.$cmd",
                "o": { "applyOps": [
                    { "op": "i", "ns": "shop.orders", "o": { "_id": 1 } },
                    { "op": "u", "ns": "shop.orders", "o": { "$set": { "x": 1 } }, "o2": { "sk": 3, "_id": 1 } },
                ] },
                "ts": ts(5), "t": 1_i64,
            },
        ];
        for format in [
            RecordFormat::Oplog,
            RecordFormat::ChangeEvent,
            RecordFormat::Debezium { server_name: "x" },
        ] {
            let mut e = emitter()
                .with_format(format)
                .with_full_document(FullDocument::Lookup);
            let out = run(&mut e, &docs);
            let lookups = e.take_lookups();
            assert_eq!(lookups.len(), 2, "{format:?}: {lookups:#?}");
            for l in &lookups {
                let SinkInput::Record(r) = &out[l.index] else {
                    panic!("{format:?}: not a record at {}", l.index)
                };
                assert_eq!(r.op, "u");
                assert_eq!(r.checkpoint.is_some(), l.entry.ts.increment == 2);
                let filled = crate::pipeline::lookup::fill(
                    r.value.as_deref().unwrap(),
                    l.splice,
                    Some(&rawdoc! { "_id": 1 }),
                )
                .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&filled).unwrap();
                assert_eq!(v["fullDocumentLookup"], "found", "{format:?}");
            }
            assert_eq!(lookups[0].ns, "shop.users");
            assert_eq!(lookups[0].key, bson::doc! { "_id": 5 });
            assert_eq!(lookups[0].entry.ts.increment, 2);
            assert_eq!(lookups[1].ns, "shop.orders");
            assert_eq!(lookups[1].key, bson::doc! { "sk": 3, "_id": 1 });
            assert_eq!(lookups[1].entry.ts.increment, 5, "the commit's entry");
            assert!(e.take_lookups().is_empty(), "taken once");
            let mut off = emitter().with_format(format);
            run(&mut off, &docs);
            assert!(off.take_lookups().is_empty());
        }
    }
}

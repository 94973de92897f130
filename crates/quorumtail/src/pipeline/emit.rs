//! From committed oplog entries to sink inputs: transactions unpacked, filters applied,
//! records encoded, sequence numbers and safe checkpoints attached.
//!
//! A checkpoint is attached only where resuming is safe: never while a transaction is
//! open (its earlier entries would not be re-read), so entries released meanwhile carry
//! no checkpoint, and the first entry after the transaction closes carries one again.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use quorumtail_oplog::entry::split_ns;
use quorumtail_oplog::extjson::{write_document, Mode};
use quorumtail_oplog::filter::command_target_ns;
use quorumtail_oplog::record::{
    document_key, encode_entry_as, encode_placement, encode_snapshot_document_as, encode_txn_op_as,
    TxnInfo,
};
use quorumtail_oplog::txn::{Step, TxnAssembler, TxnConfig};
use quorumtail_oplog::{EntryId, Filter, OpKind, OplogEntry, Timestamp};
use quorumtail_sink::{FullDocument, Marker, OutRecord, RecordFormat, SinkInput, Undecodable};

use crate::config::KeyKind;
use crate::pipeline::lookup::{is_field_update, Lookup, Splice};
use crate::pipeline::stats::ShardStats;
use crate::snapshot::floor::{changed_id, SnapshotFloor};
use raw::{change_event_json, debezium_json};

/// Turns one shard's committed entries into sink inputs.
#[derive(Debug)]
pub struct Emitter {
    shard: Arc<str>,
    filter: Filter,
    key: KeyKind,
    format: RecordFormat,
    tombstones: bool,
    full_document: FullDocument,
    /// What becomes of an operation the format cannot describe (`[sink] undecodable`).
    undecodable: Undecodable,
    /// `[sink] json`: the Extended JSON mode of BSON values in oplog and change-event
    /// records.
    json: Mode,
    /// Update records of the output that wait for their full document, by index into
    /// the output (see [`Emitter::take_lookups`]).
    lookups: Vec<Lookup>,
    seq: u64,
    txn: TxnAssembler,
    /// The last checkpoint attached to an input: later inputs carry one only when it moved.
    last_checkpoint: Option<EntryId>,
    stats: Arc<ShardStats>,
    /// After a snapshot: what it holds is not emitted again, and no checkpoint is attached
    /// at or before the latest time it read at.
    floor: Option<SnapshotFloor>,
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
            undecodable: Undecodable::Stop,
            json: Mode::Relaxed,
            lookups: Vec::new(),
            seq: 0,
            txn,
            last_checkpoint: None,
            stats,
            floor: None,
        }
    }

    /// Continues after a snapshot (`floor` says what it holds) whose records took the
    /// sequence numbers up to `seq` (see [`crate::snapshot`]): what it holds is not emitted
    /// again, and a transaction that began before the stream's start and commits after the
    /// snapshot's time is an error rather than half emitted.
    pub fn after_snapshot(mut self, floor: Option<SnapshotFloor>, seq: u64) -> Self {
        self.floor = floor;
        self.seq = seq;
        self
    }

    /// The last sequence number handed out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether a position at `at` is at or before the latest time the snapshot read at
    /// (no checkpoint may land there).
    fn in_snapshot(&self, at: Timestamp) -> bool {
        self.floor.as_ref().is_some_and(|f| at <= f.latest())
    }

    /// Whether a change of document `id` of `ns` committed at `at` is in the snapshot.
    fn covered(&self, ns: &str, id: Option<&bson::Bson>, at: Timestamp) -> bool {
        self.floor.as_ref().is_some_and(|f| f.covers(ns, id, at))
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
            _ => Splice::Append(self.json),
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

    /// The checkpoint to attach to the next input, if it moved. Never at or before a
    /// snapshot's time: a resume from there would emit what the snapshot holds again.
    fn checkpoint(&mut self) -> Option<EntryId> {
        let safe = self
            .txn
            .safe_position()
            .filter(|id| !self.in_snapshot(id.ts));
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
        let mut step = self.txn.push(entry).map_err(|e| err(e.to_string()))?;
        if self.floor.is_some() {
            match &mut step {
                Step::Entry
                    if self.in_snapshot(id.ts)
                        && self.covered(
                            entry.ns,
                            changed_id(entry.op, entry.o, entry.o2).as_ref(),
                            id.ts,
                        ) =>
                {
                    self.stats.in_snapshot.fetch_add(1, Relaxed);
                    return Ok(());
                }
                Step::Emit(txn)
                    if self.in_snapshot(txn.commit_timestamp.unwrap_or(txn.commit.ts)) =>
                {
                    // Each operation by its document: parts of the snapshot may have been
                    // read at different times.
                    let at = txn.commit_timestamp.unwrap_or(txn.commit.ts);
                    let before = txn.ops.len();
                    let floor = self.floor.as_ref();
                    txn.ops.retain(|op| {
                        let id = changed_id(op.op, op.o(), op.o2());
                        !floor.is_some_and(|f| f.covers(&op.ns, id.as_ref(), at))
                    });
                    let covered = before - txn.ops.len();
                    self.stats.in_snapshot.fetch_add(covered as u64, Relaxed);
                    if txn.ops.is_empty() && covered > 0 {
                        return Ok(());
                    }
                }
                Step::SkippedOrphan(name) => {
                    // The commit of a transaction prepared before the stream's start.
                    let commit_timestamp = entry
                        .o
                        .filter(|o| matches!(o.get("commitTransaction"), Ok(Some(_))))
                        .map(|o| match o.get("commitTimestamp") {
                            Ok(Some(bson::RawBsonRef::Timestamp(t))) => Timestamp::from(t),
                            _ => id.ts,
                        });
                    let base = self.floor.as_ref().map(|f| f.base);
                    if let Some(at) = commit_timestamp.filter(|at| base.is_some_and(|b| *at > b)) {
                        return Err(err(format!(
                            "transaction {name} was prepared before the stream after the snapshot starts and committed at {at}, after the snapshot's time: its operations cannot be emitted whole. Fix: raise [snapshot] stream_margin and take the snapshot again"
                        )));
                    }
                }
                _ => {}
            }
        }
        match step {
            Step::Entry => {
                // A resharding cut-over or movePrimary: a placement marker (oplog format
                // only; the other formats have no such event).
                if let Some(p) = self.filter.placement(entry, &self.shard) {
                    if !matches!(self.format, RecordFormat::Oplog) {
                        self.no_event(out);
                        return Ok(());
                    }
                    let mut value = Vec::with_capacity(entry.raw().as_bytes().len() * 2 + 128);
                    encode_placement(&self.shard, entry, &p, &mut value)
                        .map_err(|e| err(e.to_string()))?;
                    let key = self
                        .key_for(p.ns(), p.ns(), None)
                        .map_err(|e| err(e.to_string()))?;
                    self.record(id, entry.op, p.ns(), key, value, out);
                    return Ok(());
                }
                let ns = target_ns(entry.op, entry.ns, entry.o, entry.command_name());
                match self.filter.check_entry(entry, &ns, &self.shard).map(|_| ()) {
                    Err(reason) => {
                        self.stats.dropped(reason);
                        self.marker(out);
                    }
                    Ok(()) => {
                        let mut value = Vec::with_capacity(entry.raw().as_bytes().len() * 2 + 128);
                        match self.format {
                            RecordFormat::Oplog => {
                                encode_entry_as(self.json, &self.shard, entry, &mut value)
                                    .map_err(|e| err(e.to_string()))?
                            }
                            RecordFormat::ChangeEvent => {
                                let src = quorumtail_events::Source {
                                    shard: &self.shard,
                                    ts: bson_ts(id.ts),
                                    term: id.term,
                                    hash: id.hash,
                                    wall: entry.wall,
                                    txn: None,
                                };
                                match change_event_json(self.json, entry.raw(), &src, &mut value) {
                                    Ok(true) => {}
                                    Ok(false) => {
                                        self.no_event(out);
                                        return Ok(());
                                    }
                                    Err(failure) => {
                                        let value =
                                            self.undecodable_value(failure, &src).map_err(err)?;
                                        let key = self
                                            .key_for(entry.ns, &ns, entry.document_id())
                                            .map_err(|e| err(e.to_string()))?;
                                        self.record(id, entry.op, entry.ns, key, value, out);
                                        return Ok(());
                                    }
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
                                let rec = match debezium_json(entry.raw(), &src) {
                                    Ok(Some(rec)) => rec,
                                    Ok(None) => {
                                        self.no_event(out);
                                        return Ok(());
                                    }
                                    Err(failure) => {
                                        let src = quorumtail_events::Source {
                                            shard: &self.shard,
                                            ts: bson_ts(id.ts),
                                            term: id.term,
                                            hash: id.hash,
                                            wall: entry.wall,
                                            txn: None,
                                        };
                                        let doc_id = failure.doc_id();
                                        let value =
                                            self.undecodable_value(failure, &src).map_err(err)?;
                                        let key = self.debezium_raw_key(doc_id, &ns);
                                        self.record(id, entry.op, entry.ns, key, value, out);
                                        return Ok(());
                                    }
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
                    // A raw record of an operation the format cannot describe: no lookup.
                    let mut raw = false;
                    match self.format {
                        RecordFormat::Oplog => encode_txn_op_as(
                            self.json,
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
                            match change_event_json(self.json, &op.doc, &src, &mut value) {
                                Ok(true) => {}
                                Ok(false) => {
                                    self.stats
                                        .dropped_no_change_event
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    continue;
                                }
                                Err(failure) => {
                                    value = self.undecodable_value(failure, &src).map_err(err)?;
                                    raw = true;
                                }
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
                            match debezium_json(&op.doc, &src) {
                                Ok(Some(rec)) => {
                                    total_order += 1;
                                    *order += 1;
                                    value = rec.value.into_bytes();
                                    self.debezium_key(rec.key, &ns)
                                }
                                Ok(None) => {
                                    self.stats
                                        .dropped_no_change_event
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    continue;
                                }
                                Err(failure) => {
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
                                    let doc_id = failure.doc_id();
                                    value = self.undecodable_value(failure, &src).map_err(err)?;
                                    raw = true;
                                    self.debezium_raw_key(doc_id, &ns)
                                }
                            }
                        }
                        _ => self
                            .key_for(&op.ns, &ns, op.document_id())
                            .map_err(|e| err(e.to_string()))?,
                    };
                    if !raw {
                        self.want_lookup(out.len(), op.op, &op.ns, op.o(), op.o2(), txn.commit)
                            .map_err(err)?;
                    }
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

    /// Appends the record of one document a snapshot read at `at` (see
    /// [`crate::snapshot`]): op `r`, no checkpoint (the stream after the snapshot brings
    /// the first), the document key as for an insert. Per format: `oplog` writes
    /// `{"shard", "ts": at, "op": "r", "ns", "snapshot": true, "entry": {"op": "r", "ns",
    /// "o": <document>}}` (no `id`: there is no oplog entry); `change-event` an insert
    /// event with `"snapshot": true`; `debezium` a read event (`op: "r"`,
    /// `source.snapshot: "true"`).
    ///
    /// # Errors
    /// A document that cannot be encoded.
    pub fn snapshot_document(
        &mut self,
        ns: &str,
        doc: &bson::RawDocument,
        at: Timestamp,
        out: &mut Vec<SinkInput>,
    ) -> Result<(), EmitError> {
        let shard = self.shard.clone();
        let err = |detail: String| EmitError {
            shard: shard.clone(),
            id: EntryId::at(at),
            detail: format!("snapshot of {ns}: {detail}"),
        };
        let doc_id = doc.get("_id").ok().flatten();
        let mut value = Vec::with_capacity(doc.as_bytes().len() * 2 + 128);
        let key = match self.format {
            RecordFormat::Oplog => {
                encode_snapshot_document_as(self.json, &self.shard, at, ns, doc, &mut value)
                    .map_err(|e| err(e.to_string()))?;
                self.key_for(ns, ns, doc_id)
                    .map_err(|e| err(e.to_string()))?
            }
            RecordFormat::ChangeEvent => {
                let insert = snapshot_insert(ns, doc, at).map_err(err)?;
                let src = quorumtail_events::Source {
                    shard: &self.shard,
                    ts: bson_ts(at),
                    term: None,
                    hash: None,
                    wall: None,
                    txn: None,
                };
                let mut event = quorumtail_events::change_event(&insert, &src)
                    .map_err(|e| err(e.to_string()))?
                    .ok_or_else(|| err("no change event for an insert".into()))?;
                event.insert("snapshot", true);
                let raw = bson::RawDocumentBuf::try_from(&event).map_err(|e| err(e.to_string()))?;
                write_document(&raw, self.json, &mut value).map_err(|e| err(e.to_string()))?;
                self.key_for(ns, ns, doc_id)
                    .map_err(|e| err(e.to_string()))?
            }
            RecordFormat::Debezium { server_name } => {
                let mut read = snapshot_insert(ns, doc, at).map_err(err)?;
                read.insert("op", "r");
                let src = quorumtail_events::DebeziumSource {
                    server_name,
                    version: DEBEZIUM_SOURCE_VERSION,
                    ts: bson_ts(at),
                    wall: None,
                    txn: None,
                };
                let now_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i128);
                let rec = quorumtail_events::debezium_record(&read, &src, now_ns)
                    .map_err(|e| err(e.to_string()))?
                    .ok_or_else(|| err("no Debezium record for a read".into()))?;
                value = rec.value.into_bytes();
                self.debezium_key(rec.key, ns)
            }
        };
        let seq = self.next_seq();
        let (db, coll) = split_ns(ns);
        self.stats.snapshot_documents.fetch_add(1, Relaxed);
        out.push(SinkInput::Record(OutRecord {
            shard: self.shard.clone(),
            seq,
            checkpoint: None,
            ts: at,
            op: "r",
            db: db.to_owned(),
            coll: coll.to_owned(),
            key,
            value: Some(value),
        }));
        Ok(())
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

/// A snapshot's document as the insert entry that would have created it.
fn snapshot_insert(
    ns: &str,
    doc: &bson::RawDocument,
    at: Timestamp,
) -> Result<bson::Document, String> {
    let o = bson::Document::try_from(doc).map_err(|e| format!("unreadable document: {e}"))?;
    let mut entry = bson::doc! {"op": "i", "ns": ns, "ts": bson_ts(at)};
    if let Some(id) = o.get("_id") {
        entry.insert("o2", bson::doc! {"_id": id.clone()});
    }
    entry.insert("o", o);
    Ok(entry)
}

mod raw;
#[cfg(test)]
mod tests;

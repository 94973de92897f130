//! Counters one shard pipeline keeps for status, metrics and the demo summary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use quorumtail_oplog::{DropReason, EntryId, Timestamp};

/// How far a snapshot copied one collection on one shard, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CollectionCopy {
    /// Documents emitted.
    pub documents: u64,
    /// Their BSON bytes.
    pub bytes: u64,
    /// Documents read that another shard owned (not emitted).
    pub orphans: u64,
    /// The copy of the collection finished.
    pub done: bool,
}

/// What a shard pipeline knows about one member, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStats {
    /// `connecting`, `tailing`, `down: <reason>`, `refused: <reason>`, `lacks the resume point`.
    pub state: String,
    /// The newest entry this member reported.
    pub last_ts: Option<Timestamp>,
    /// The oldest entry of its oplog when its tailer last connected.
    pub oldest_ts: Option<Timestamp>,
    /// Tailer (re)starts.
    pub starts: u64,
    /// Interruptions (connection lost, cursor killed, rollback, ...).
    pub interruptions: u64,
    /// When it last answered (a batch or an empty getMore), Unix milliseconds.
    pub last_seen_unix_ms: u64,
    /// What its stream holds: `whole entries` or `identities` (key-only members).
    pub reading: String,
    /// Bytes of oplog replies received from it.
    pub bytes_read: u64,
    /// Whether its reports count towards the quorum (`votes: 1`; true until the replica
    /// set's configuration says otherwise).
    pub voter: bool,
    /// Hidden in the replica set configuration (absent from hello and `config.shards`).
    pub hidden: bool,
    /// What the member calls itself (hello `me`), once it answered.
    pub me: Option<String>,
    /// Its view of the commit point, confirmed against its stream.
    pub commit_point_ts: Option<Timestamp>,
}

/// Per-shard counters (relaxed atomics: read for reporting only).
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Entries committed by the merge.
    pub committed: AtomicU64,
    /// Entries discarded by the merge (never reached a quorum).
    pub discarded: AtomicU64,
    /// Records handed to the sink.
    pub records: AtomicU64,
    /// Committed operations dropped as chunk-migration writes.
    pub dropped_from_migrate: AtomicU64,
    /// Committed no-ops dropped.
    pub dropped_noops: AtomicU64,
    /// Committed operations on internal namespaces dropped.
    pub dropped_internal: AtomicU64,
    /// Committed operations dropped by include/exclude patterns.
    pub dropped_by_pattern: AtomicU64,
    /// DDL entries dropped because another shard (the database's primary) logs the same
    /// operation.
    pub dropped_ddl_other_shard: AtomicU64,
    /// `startIndexBuild` entries dropped (the build's commit or abort is the record).
    pub dropped_index_build_start: AtomicU64,
    /// Resharding's own entries dropped (its temporary collection, its no-ops).
    pub dropped_resharding: AtomicU64,
    /// Committed operations without a change event (`[sink] format = "change-event"`:
    /// no-op-like commands such as `applyOps` wrappers or `convertToCapped`; `"debezium"`:
    /// every command, as Debezium writes data changes only).
    pub dropped_no_change_event: AtomicU64,
    /// Operations written raw, flagged undecodable (`[sink] undecodable = "raw"`).
    pub undecodable: AtomicU64,
    /// Updates whose full document was looked up (`[sink] full_document`).
    pub lookups: AtomicU64,
    /// Lookups that found no document (deleted since the update).
    pub lookups_not_found: AtomicU64,
    /// Tailer (re)starts.
    pub tailer_starts: AtomicU64,
    /// Transactions emitted.
    pub transactions: AtomicU64,
    /// Operations of aborted transactions (never emitted).
    pub aborted_ops: AtomicU64,
    /// Entries the merge holds that no quorum confirmed yet (a gauge).
    pub pending: AtomicU64,
    /// Whether the shard stopped with a definite error (0 or 1).
    pub failed: AtomicU64,
    /// Whether the shard's pipeline stopped cleanly (shutdown, or drained after removal).
    pub stopped: AtomicU64,
    /// Whether at least a quorum of members is being tailed (1) or not (0).
    pub quorum_reachable: AtomicU64,
    /// The merge watermark (the last committed entry's ts, `Timestamp::as_u64`; 0 = none).
    pub watermark: AtomicU64,
    /// The quorum in force.
    pub quorum: AtomicU64,
    /// Changes of the member read whole (key-only mode).
    pub whole_switches: AtomicU64,
    /// Times the release waited for MongoDB's commit point after a quorum held an entry.
    pub commit_waits: AtomicU64,
    /// Total time of those waits, microseconds.
    pub commit_wait_micros: AtomicU64,
    /// Whether an entry a quorum holds waits for the commit point now (0 or 1).
    pub awaiting_commit_point: AtomicU64,
    /// Where the quorum comes from: `static`, `replica set config v<version> term <term>`,
    /// `replica set status (no replSetGetConfig privilege)`.
    pub quorum_source: Mutex<String>,
    /// Arbiters in the replica set configuration.
    pub arbiters: AtomicU64,
    /// Per member, by address.
    pub nodes: Mutex<BTreeMap<String, NodeStats>>,
    /// The snapshot's progress per collection (`db.coll`), latest copy.
    pub collection_copies: Mutex<BTreeMap<String, CollectionCopy>>,
    /// The last checkpoint handed to the sink with a record or marker: once the sink
    /// confirms it, everything the pipeline emitted is delivered.
    pub handed_checkpoint: Mutex<Option<EntryId>>,
    /// Whether the shard is taking its initial snapshot (0 or 1).
    pub snapshotting: AtomicU64,
    /// Documents the snapshot emitted.
    pub snapshot_documents: AtomicU64,
    /// Bytes (BSON) of those documents.
    pub snapshot_bytes: AtomicU64,
    /// Documents the snapshot read but another shard owns (orphans), not emitted.
    pub snapshot_orphans: AtomicU64,
    /// Collections the snapshot finished.
    pub snapshot_collections: AtomicU64,
    /// Snapshots on request that failed (see the log; request them again).
    pub snapshot_requests_failed: AtomicU64,
    /// Times the rest of the snapshot was read at a later time (`SnapshotTooOld`).
    pub snapshot_later_reads: AtomicU64,
    /// How many documents the latest copy (initial snapshot, or one on request) reads, as
    /// the members estimated them when it started (`count`; orphans included).
    pub snapshot_estimated_documents: AtomicU64,
    /// Operations the stream after the snapshot did not emit because the snapshot holds
    /// them (committed at or before its time).
    pub in_snapshot: AtomicU64,
}

impl ShardStats {
    pub(crate) fn dropped(&self, r: DropReason) {
        match r {
            DropReason::FromMigrate => &self.dropped_from_migrate,
            DropReason::Noop => &self.dropped_noops,
            DropReason::InternalNamespace => &self.dropped_internal,
            DropReason::Excluded | DropReason::NotIncluded => &self.dropped_by_pattern,
            DropReason::DdlOnOtherShard => &self.dropped_ddl_other_shard,
            DropReason::IndexBuildStart => &self.dropped_index_build_start,
            DropReason::Resharding => &self.dropped_resharding,
        }
        .fetch_add(1, Relaxed);
    }

    pub(crate) fn emitted(&self) {
        self.records.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_handed(&self, checkpoint: EntryId) {
        if let Ok(mut h) = self.handed_checkpoint.lock() {
            *h = Some(checkpoint);
        }
    }

    /// The last checkpoint handed to the sink (see [`ShardStats::handed_checkpoint`]).
    pub fn last_handed(&self) -> Option<EntryId> {
        self.handed_checkpoint.lock().ok().and_then(|h| *h)
    }

    /// The members, by address.
    pub fn nodes(&self) -> BTreeMap<String, NodeStats> {
        self.nodes.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The snapshot's progress per collection.
    pub fn collection_copies(&self) -> BTreeMap<String, CollectionCopy> {
        self.collection_copies
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Adds a batch to collection `ns`'s copy (`done` once it finished).
    pub(crate) fn copied(&self, ns: &str, documents: u64, bytes: u64, orphans: u64, done: bool) {
        if let Ok(mut m) = self.collection_copies.lock() {
            let c = m.entry(ns.to_owned()).or_default();
            c.documents += documents;
            c.bytes += bytes;
            c.orphans += orphans;
            c.done |= done;
        }
    }

    pub(crate) fn set_node(&self, addr: &str, node: NodeStats) {
        if let Ok(mut m) = self.nodes.lock() {
            m.insert(addr.to_owned(), node);
        }
    }

    pub(crate) fn remove_node(&self, addr: &str) {
        if let Ok(mut m) = self.nodes.lock() {
            m.remove(addr);
        }
    }

    /// Where the quorum comes from (see [`ShardStats::quorum_source`]).
    pub fn quorum_source(&self) -> String {
        self.quorum_source
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub(crate) fn set_quorum_source(&self, source: String) {
        if let Ok(mut s) = self.quorum_source.lock() {
            *s = source;
        }
    }

    /// The merge watermark's timestamp, if anything was committed.
    pub fn watermark(&self) -> Option<Timestamp> {
        match self.watermark.load(Relaxed) {
            0 => None,
            v => Some(Timestamp::from_u64(v)),
        }
    }

    /// A plain snapshot.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            committed: self.committed.load(Relaxed),
            discarded: self.discarded.load(Relaxed),
            records: self.records.load(Relaxed),
            dropped_from_migrate: self.dropped_from_migrate.load(Relaxed),
            dropped_noops: self.dropped_noops.load(Relaxed),
            dropped_internal: self.dropped_internal.load(Relaxed),
            dropped_by_pattern: self.dropped_by_pattern.load(Relaxed),
            dropped_ddl_other_shard: self.dropped_ddl_other_shard.load(Relaxed),
            dropped_index_build_start: self.dropped_index_build_start.load(Relaxed),
            dropped_resharding: self.dropped_resharding.load(Relaxed),
            dropped_no_change_event: self.dropped_no_change_event.load(Relaxed),
            undecodable: self.undecodable.load(Relaxed),
            lookups: self.lookups.load(Relaxed),
            lookups_not_found: self.lookups_not_found.load(Relaxed),
            tailer_starts: self.tailer_starts.load(Relaxed),
            transactions: self.transactions.load(Relaxed),
            aborted_ops: self.aborted_ops.load(Relaxed),
            pending: self.pending.load(Relaxed),
            failed: self.failed.load(Relaxed) != 0,
            stopped: self.stopped.load(Relaxed) != 0,
            quorum_reachable: self.quorum_reachable.load(Relaxed) != 0,
            quorum: self.quorum.load(Relaxed),
            watermark_seconds: self.watermark.load(Relaxed) >> 32,
            whole_switches: self.whole_switches.load(Relaxed),
            commit_waits: self.commit_waits.load(Relaxed),
            commit_wait_micros: self.commit_wait_micros.load(Relaxed),
            awaiting_commit_point: self.awaiting_commit_point.load(Relaxed) != 0,
            arbiters: self.arbiters.load(Relaxed),
            snapshotting: self.snapshotting.load(Relaxed) != 0,
            snapshot_documents: self.snapshot_documents.load(Relaxed),
            snapshot_bytes: self.snapshot_bytes.load(Relaxed),
            snapshot_orphans: self.snapshot_orphans.load(Relaxed),
            snapshot_collections: self.snapshot_collections.load(Relaxed),
            snapshot_requests_failed: self.snapshot_requests_failed.load(Relaxed),
            snapshot_later_reads: self.snapshot_later_reads.load(Relaxed),
            snapshot_estimated_documents: self.snapshot_estimated_documents.load(Relaxed),
            in_snapshot: self.in_snapshot.load(Relaxed),
        }
    }
}

/// A copy of [`ShardStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub committed: u64,
    pub discarded: u64,
    pub records: u64,
    pub dropped_from_migrate: u64,
    pub dropped_noops: u64,
    pub dropped_internal: u64,
    pub dropped_by_pattern: u64,
    pub dropped_ddl_other_shard: u64,
    pub dropped_index_build_start: u64,
    pub dropped_resharding: u64,
    pub dropped_no_change_event: u64,
    /// Operations written raw, flagged undecodable (`[sink] undecodable = "raw"`).
    pub undecodable: u64,
    /// Updates whose full document was looked up (`[sink] full_document`).
    pub lookups: u64,
    /// Lookups that found no document (deleted since the update).
    pub lookups_not_found: u64,
    pub tailer_starts: u64,
    pub transactions: u64,
    pub aborted_ops: u64,
    pub pending: u64,
    pub failed: bool,
    pub stopped: bool,
    pub quorum_reachable: bool,
    pub quorum: u64,
    pub watermark_seconds: u64,
    pub whole_switches: u64,
    pub commit_waits: u64,
    pub commit_wait_micros: u64,
    pub awaiting_commit_point: bool,
    pub arbiters: u64,
    pub snapshotting: bool,
    pub snapshot_documents: u64,
    pub snapshot_bytes: u64,
    pub snapshot_orphans: u64,
    pub snapshot_collections: u64,
    pub snapshot_requests_failed: u64,
    pub snapshot_later_reads: u64,
    pub snapshot_estimated_documents: u64,
    pub in_snapshot: u64,
}

//! Checkpoint stores: where the confirmed per-shard positions survive a restart, together
//! with each shard's membership and whether a removed shard was drained.
//!
//! ```text
//!  Sink::checkpoints() ──► ConfirmedCheckpoints ──► CheckpointStore::store
//!  (only the sink can make one: a checkpoint is only ever written with confirmed positions)
//!  coordinator ──► CheckpointStore::remember(shard, membership)   (written with the next store)
//!  coordinator ──► CheckpointStore::mark_drained(shard, confirmed) (a removed shard is done)
//!
//!  startup: CheckpointStore::load_shards ──► {shard: StoredShard} ──► tailers resume after it;
//!           a shard no longer in the topology is drained with its remembered members
//! ```
//!
//! What is kept per shard ([`StoredShard`]): the checkpoint; the shard's membership
//! ([`ShardMembership`]: replica set name, data-bearing members `host:port`, arbiters,
//! explicit quorum), so that a shard removed from the cluster while quorumtail was stopped
//! can still be read to its end; and `drained`, set once such a shard was read to its end
//! and everything was delivered, so that later starts neither drain it again nor report it.
//!
//! * [`FileCheckpointStore`]: one JSON file, replaced atomically (temp file in the same
//!   directory, fsync, rename, fsync of the directory). A file that does not parse is an
//!   error naming the path and the fix, never ignored: ignoring it would restart every
//!   shard from scratch or from "now" and lose or duplicate data silently. Format version 2:
//!
//!   ```json
//!   {"version": 2, "shards": {"shard01": {
//!       "checkpoint": {"ts": {"t": 1700000000, "i": 3}, "t": 1},
//!       "membership": {"replica_set": "shard01", "members": ["a:27018", "b:27018", "c:27018"]},
//!       "drained": true}}}
//!   ```
//!
//!   `membership` is absent for a shard whose membership was never known; `arbiters` and
//!   `quorum` appear inside it when set; `drained` appears only when true. Version 1 files
//!   (`{"version": 1, "shards": {"shard01": {"ts": .., "t": ..}}}`, positions only) are still
//!   read, as shards without a known membership, and are rewritten as version 2 by the first
//!   store that changes anything. A quorumtail that only knows version 1 refuses a version 2 file.
//! * [`KafkaCheckpointStore`]: a compacted topic keyed by shard name whose values are JSON
//!   `{"shard": .., "id": <checkpoint>, "membership": {..}, "drained": true}`: a
//!   [`ShardPosition`](quorumtail_oplog::ShardPosition) with the two optional fields added,
//!   so records written before they existed are still read (as shards without a known
//!   membership), and older readers ignore them. Loading reads the topic to its end
//!   (end-of-partition events, not the high watermark); a store writes only the shards
//!   whose record changed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use quorumtail_oplog::EntryId;
use serde::{Deserialize, Serialize};

use crate::config::{CheckpointConfig, CheckpointKind, SinkConfig};
use crate::progress::ProgressView;
pub use crate::tracker::ConfirmedCheckpoints;

mod kafka_store;
pub use kafka_store::KafkaCheckpointStore;

/// Errors of the checkpoint stores.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the checkpoint file failed.
    #[error(
        "checkpoint file {path}: cannot {op}: {source}; check the path, free space and permissions"
    )]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint file exists but is not a valid checkpoint.
    #[error(
        "checkpoint file {path} is corrupt ({cause}); quorumtail will not guess where to resume: \
         restore the file from a backup, fix it by hand (format: {{\"version\":2,\"shards\":\
         {{\"<shard>\":{{\"checkpoint\":{{\"ts\":{{\"t\":<secs>,\"i\":<inc>}},\"t\":<term>}},\
         \"membership\":{{\"replica_set\":\"<name>\",\"members\":[\"<host:port>\"]}}}}}}}}), \
         or move it away to start from the configured start position"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        cause: String,
    },
    /// A record of the checkpoint topic is not a valid position.
    #[error(
        "checkpoint topic {topic:?} partition {partition} offset {offset} is not a valid position \
         ({cause}); delete that key with a tombstone or write a valid position for it \
         ({{\"shard\":\"<shard>\",\"id\":{{\"ts\":{{\"t\":<secs>,\"i\":<inc>}},\"t\":<term>}}}}), then restart"
    )]
    CorruptRecord {
        /// The topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// The parse error.
        cause: String,
    },
    /// A Kafka operation of the checkpoint store failed.
    #[error("checkpoint topic {topic:?}: {op} failed: {cause}; fix: {fix}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What we were doing.
        op: &'static str,
        /// The error.
        cause: String,
        /// What to do.
        fix: &'static str,
    },
}

/// A shard's membership as the coordinator last knew it: enough to read the shard again
/// after the cluster forgot it (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMembership {
    /// The replica set name its members report, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_set: Option<String>,
    /// Data-bearing members, `host:port`.
    pub members: Vec<String>,
    /// Arbiters (they vote, so they raise the majority).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub arbiters: usize,
    /// An explicit quorum, if one was configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<usize>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What a store holds for one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredShard {
    /// The confirmed position: the shard resumes after this entry.
    pub checkpoint: EntryId,
    /// Its membership, when known (stores written before memberships were kept have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<ShardMembership>,
    /// The shard was removed from the cluster and read to its end; everything up to
    /// `checkpoint` is delivered and nothing follows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// The shard's initial snapshot is under way: how far its delivered records go. While
    /// this is set, `checkpoint` is where the stream after the snapshot starts (no entry
    /// has been delivered yet), not a position to resume after. The shard's first
    /// confirmed checkpoint clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotProgress>,
}

impl StoredShard {
    /// A position without a known membership.
    pub fn at(checkpoint: EntryId) -> Self {
        StoredShard {
            checkpoint,
            membership: None,
            drained: false,
            snapshot: None,
        }
    }

    /// The position to resume after, if the shard has streamed (not while its snapshot
    /// is under way).
    pub fn resume_after(&self) -> Option<EntryId> {
        self.snapshot.is_none().then_some(self.checkpoint)
    }
}

/// How far a shard's initial snapshot got, as far as the sink confirmed its records: a
/// restart continues from here with the same snapshot time. Namespaces are copied in
/// name order, each in `_id` order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotProgress {
    /// The snapshot's time `P` (every shard's snapshot of one run shares it).
    pub at: quorumtail_oplog::Timestamp,
    /// Where the stream after the snapshot starts (`P - [snapshot] stream_margin`, or the
    /// oldest entry a member held).
    pub stream_from: quorumtail_oplog::Timestamp,
    /// Namespaces copied and delivered completely.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<String>,
    /// The namespace being copied, and the last `_id` of it delivered (canonical Extended
    /// JSON); the copy continues after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<SnapshotCursor>,
    /// Every namespace is copied and delivered: only the stream remains.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub complete: bool,
    /// Documents delivered so far (all namespaces).
    #[serde(default)]
    pub documents: u64,
    /// Parts read later than `at` (the server's history no longer held `at`), in order:
    /// the rest of the copy reads at the last one's time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later: Vec<SnapshotLaterRead>,
}

/// A part of a snapshot read later than its time: a namespace, or its documents after an
/// `_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLaterRead {
    /// `db.coll`.
    pub ns: String,
    /// Only documents after this `_id` (canonical Extended JSON); absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_id: Option<serde_json::Value>,
    /// When they were read.
    pub at: quorumtail_oplog::Timestamp,
}

/// Where a namespace's copy stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCursor {
    /// `db.coll`.
    pub ns: String,
    /// The last `_id` delivered, as canonical Extended JSON.
    pub after_id: serde_json::Value,
}

/// What a store holds, by shard.
pub type StoredShards = BTreeMap<Arc<str>, StoredShard>;

/// Where confirmed checkpoints are kept. Object-safe, so the coordinator can pick a store
/// from its config.
///
/// A store remembers what it last read or wrote; [`store`](Self::store) and
/// [`mark_drained`](Self::mark_drained) merge into that (a store that never loaded reads
/// first), write only when something changed, and are serialized with each other.
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Everything stored, per shard (empty on a first run).
    ///
    /// # Errors
    /// [`CheckpointError`] when the store cannot be read or holds something that is not a
    /// valid checkpoint.
    fn load_shards(&self) -> BoxFuture<'_, Result<StoredShards, CheckpointError>>;

    /// The stored position of every shard, drained or not, except shards whose snapshot is
    /// under way (empty on a first run).
    ///
    /// # Errors
    /// As [`load_shards`](Self::load_shards).
    fn load(&self) -> BoxFuture<'_, Result<HashMap<Arc<str>, EntryId>, CheckpointError>> {
        Box::pin(async move {
            Ok(self
                .load_shards()
                .await?
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.resume_after()?)))
                .collect())
        })
    }

    /// Stores the given positions, each with its shard's membership as last
    /// [`remember`](Self::remember)ed; shards absent from `checkpoints` keep what is stored.
    /// Durable when the future completes.
    ///
    /// # Errors
    /// [`CheckpointError`] when the write did not complete (the previous checkpoint is
    /// still intact then).
    fn store<'a>(
        &'a self,
        checkpoints: &'a ConfirmedCheckpoints,
    ) -> BoxFuture<'a, Result<(), CheckpointError>>;

    /// The shard runs with this membership: it is written with the shard's next store, and
    /// the shard is no longer drained (it came back). Nothing is written by this call.
    fn remember(&self, shard: &Arc<str>, membership: ShardMembership);

    /// Stores how far shard `shard`'s snapshot got (its records up to there are delivered).
    /// Ignored for a shard that has streamed (it has a checkpoint of its own). Durable
    /// when the future completes.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    fn store_snapshot<'a>(
        &'a self,
        shard: &'a Arc<str>,
        progress: SnapshotProgress,
    ) -> BoxFuture<'a, Result<(), CheckpointError>>;

    /// The removed shard was read to its end: stores the given positions as
    /// [`store`](Self::store) does, with `shard` marked drained at its confirmed position
    /// (in `checkpoints`, else the stored one). Nothing is written for a shard that has no
    /// position at all. Durable when the future completes.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    fn mark_drained<'a>(
        &'a self,
        shard: &'a str,
        checkpoints: &'a ConfirmedCheckpoints,
    ) -> BoxFuture<'a, Result<(), CheckpointError>>;
}

/// What the coordinator told a store (the same for every backend); [`merged`] combines it
/// with what the store holds and new positions.
#[derive(Debug, Default)]
struct Ledger {
    /// Memberships from [`CheckpointStore::remember`] (written with every store).
    members: HashMap<Arc<str>, ShardMembership>,
    /// Shards remembered since the last write: their `drained` flag is cleared once.
    revived: std::collections::HashSet<Arc<str>>,
    /// Snapshot progress given since the last write.
    snapshots: HashMap<Arc<str>, SnapshotProgress>,
}

/// The shards as they should be stored after merging `checkpoints` and the ledger into
/// `held`, with `drained` marked (at its confirmed or stored position).
fn merged(
    held: &StoredShards,
    ledger: &Ledger,
    checkpoints: &ConfirmedCheckpoints,
    drained: Option<&str>,
) -> StoredShards {
    let mut next = held.clone();
    // Snapshot progress, for shards that have not streamed yet (a shard with a checkpoint
    // of its own is past its snapshot: late progress must not send it back).
    for (shard, p) in &ledger.snapshots {
        let placeholder = EntryId {
            ts: p.stream_from,
            term: None,
            hash: None,
        };
        match next.get_mut(shard) {
            Some(s) if s.snapshot.is_none() => {}
            Some(s) => {
                s.checkpoint = placeholder;
                s.snapshot = Some(p.clone());
            }
            None => {
                next.insert(
                    shard.clone(),
                    StoredShard {
                        snapshot: Some(p.clone()),
                        ..StoredShard::at(placeholder)
                    },
                );
            }
        }
    }
    for (shard, id) in checkpoints.iter() {
        next.entry(shard.clone())
            .and_modify(|s| {
                s.checkpoint = *id;
                s.snapshot = None;
            })
            .or_insert_with(|| StoredShard::at(*id));
    }
    for (shard, m) in &ledger.members {
        if let Some(s) = next.get_mut(shard) {
            s.membership = Some(m.clone());
        }
    }
    for shard in &ledger.revived {
        if let Some(s) = next.get_mut(shard) {
            s.drained = false;
        }
    }
    if let Some(s) = drained.and_then(|d| next.get_mut(d)) {
        s.drained = true;
    }
    next
}

/// The shards whose stored value differs between `held` and `next`.
fn changed<'a>(
    held: &StoredShards,
    next: &'a StoredShards,
) -> Vec<(&'a Arc<str>, &'a StoredShard)> {
    next.iter()
        .filter(|(k, v)| held.get(*k) != Some(*v))
        .collect()
}

impl Ledger {
    fn remember(&mut self, shard: &Arc<str>, membership: ShardMembership) {
        self.members.insert(shard.clone(), membership);
        self.revived.insert(shard.clone());
    }

    /// After a successful write that applied `revived` and `snapshots`: those are done
    /// (progress given meanwhile stays for the next write).
    fn written(
        &mut self,
        revived: &std::collections::HashSet<Arc<str>>,
        snapshots: &HashMap<Arc<str>, SnapshotProgress>,
    ) {
        for r in revived {
            self.revived.remove(r);
        }
        for (shard, p) in snapshots {
            if self.snapshots.get(shard) == Some(p) {
                self.snapshots.remove(shard);
            }
        }
    }
}

/// Stores the sink's confirmed checkpoints every `interval` when they changed, until
/// `shutdown` is cancelled. A failed store is logged and retried at the next tick (the
/// previous checkpoint stays intact, so nothing is lost; a restart would only resend more).
///
/// The last store is the caller's: after [`Sink::flush`](crate::Sink::flush), store
/// [`FlushReport::checkpoints`](crate::FlushReport::checkpoints).
pub async fn run_checkpointer(
    view: ProgressView,
    store: Arc<dyn CheckpointStore>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut stored = ConfirmedCheckpoints::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Every tick: a membership may have changed without a position moving (the store
        // writes nothing when nothing changed).
        let now = view.checkpoints();
        match store.store(&now).await {
            Ok(()) => {
                if now != stored {
                    tracing::debug!(shards = now.len(), "checkpoints stored");
                    stored = now;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint store failed; retrying at the next tick")
            }
        }
    }
}

/// The file as read: the version decides how `shards` is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpointFile {
    version: u32,
    shards: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct CheckpointFile<'a> {
    version: u32,
    shards: &'a StoredShards,
}

/// Positions only, no memberships; still read.
const FILE_VERSION_1: u32 = 1;
const FILE_VERSION: u32 = 2;

/// The store's state: what the file holds (once read) and the ledger.
#[derive(Debug, Default)]
struct FileState {
    held: Option<StoredShards>,
}

/// A checkpoint file, replaced atomically. See the [module docs](self).
#[derive(Debug)]
pub struct FileCheckpointStore {
    path: PathBuf,
    /// What the file holds, once read; writes merge into it. Held across a write, so
    /// writes are serialized.
    state: tokio::sync::Mutex<FileState>,
    ledger: Mutex<Ledger>,
}

impl FileCheckpointStore {
    /// A store at `path` (the file need not exist yet; its directory must).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileCheckpointStore {
            path: path.into(),
            state: Default::default(),
            ledger: Default::default(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parses a checkpoint file of any known version.
    fn parse(path: &Path, bytes: &[u8]) -> Result<StoredShards, CheckpointError> {
        let corrupt = |cause: String| CheckpointError::Corrupt {
            path: path.to_owned(),
            cause,
        };
        let f: RawCheckpointFile =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        match f.version {
            FILE_VERSION_1 => {
                let m: BTreeMap<String, EntryId> = serde_json::from_value(f.shards)
                    .map_err(|e| corrupt(format!("version 1 shards: {e}")))?;
                Ok(m.into_iter()
                    .map(|(k, v)| (k.into(), StoredShard::at(v)))
                    .collect())
            }
            FILE_VERSION => {
                let m: BTreeMap<String, StoredShard> = serde_json::from_value(f.shards)
                    .map_err(|e| corrupt(format!("version 2 shards: {e}")))?;
                Ok(m.into_iter().map(|(k, v)| (k.into(), v)).collect())
            }
            v => Err(corrupt(format!(
                "version {v} is not {FILE_VERSION_1} or {FILE_VERSION}, the versions this quorumtail knows"
            ))),
        }
    }

    fn read(path: &Path) -> Result<StoredShards, CheckpointError> {
        match fs::read(path) {
            Ok(b) => Self::parse(path, &b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(CheckpointError::Io {
                op: "read",
                path: path.to_owned(),
                source,
            }),
        }
    }

    async fn read_blocking(&self) -> Result<StoredShards, CheckpointError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || Self::read(&path))
            .await
            .expect("reading the checkpoint file does not panic")
    }

    fn write_atomic(path: &Path, content: &[u8]) -> Result<(), CheckpointError> {
        let io = |op: &'static str, p: &Path| {
            let p = p.to_owned();
            move |source| CheckpointError::Io {
                op,
                path: p,
                source,
            }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoints".into());
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(content).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
            drop(f);
            fs::rename(&tmp, path).map_err(io("rename into place", path))?;
            // Make the rename itself durable.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync the directory of", &dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl FileCheckpointStore {
    /// Merges and writes (when something changed), serialized with other writes.
    async fn write(
        &self,
        checkpoints: &ConfirmedCheckpoints,
        drained: Option<&str>,
    ) -> Result<(), CheckpointError> {
        let mut state = self.state.lock().await;
        // Never overwrite a file we could not read: a corrupt file stays for the operator
        // to look at.
        let held = match state.held.take() {
            Some(h) => h,
            None => self.read_blocking().await?,
        };
        let (next, revived, snapshots) = {
            let ledger = self.ledger();
            (
                merged(&held, &ledger, checkpoints, drained),
                ledger.revived.clone(),
                ledger.snapshots.clone(),
            )
        };
        if next == held {
            state.held = Some(held);
            self.ledger().written(&revived, &snapshots);
            return Ok(());
        }
        let file = CheckpointFile {
            version: FILE_VERSION,
            shards: &next,
        };
        let mut json = serde_json::to_vec_pretty(&file).expect("checkpoints serialize");
        json.push(b'\n');
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || Self::write_atomic(&path, &json))
            .await
            .expect("writing the checkpoint file does not panic");
        match written {
            Ok(()) => {
                state.held = Some(next);
                self.ledger().written(&revived, &snapshots);
                Ok(())
            }
            Err(e) => {
                state.held = Some(held);
                Err(e)
            }
        }
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn load_shards(&self) -> BoxFuture<'_, Result<StoredShards, CheckpointError>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            let m = self.read_blocking().await?;
            state.held = Some(m.clone());
            Ok(m)
        })
    }

    fn store<'a>(
        &'a self,
        checkpoints: &'a ConfirmedCheckpoints,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(self.write(checkpoints, None))
    }

    fn remember(&self, shard: &Arc<str>, membership: ShardMembership) {
        self.ledger().remember(shard, membership);
    }

    fn store_snapshot<'a>(
        &'a self,
        shard: &'a Arc<str>,
        progress: SnapshotProgress,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        self.ledger().snapshots.insert(shard.clone(), progress);
        Box::pin(async move { self.write(&ConfirmedCheckpoints::default(), None).await })
    }

    fn mark_drained<'a>(
        &'a self,
        shard: &'a str,
        checkpoints: &'a ConfirmedCheckpoints,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(self.write(checkpoints, Some(shard)))
    }
}

impl CheckpointConfig {
    /// Opens the configured store (creating the Kafka topic if needed); `sink` is the
    /// sink's config, whose brokers and librdkafka properties the Kafka store uses.
    ///
    /// # Errors
    /// As [`KafkaCheckpointStore::open`]; the file store opens lazily and cannot fail here.
    pub async fn open(
        &self,
        sink: &SinkConfig,
    ) -> Result<Arc<dyn CheckpointStore>, CheckpointError> {
        Ok(match self.kind {
            CheckpointKind::File => Arc::new(FileCheckpointStore::new(&self.path)),
            CheckpointKind::Kafka => Arc::new(KafkaCheckpointStore::open(self, sink).await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumtail_oplog::Timestamp;

    fn id(n: u32) -> EntryId {
        EntryId::new(Timestamp::new(1_700_000_000, n), 1)
    }

    fn confirmed(v: &[(&str, u32)]) -> ConfirmedCheckpoints {
        ConfirmedCheckpoints::assume_confirmed(
            v.iter().map(|(s, n)| (Arc::from(*s), id(*n))).collect(),
        )
    }

    fn members(n: usize) -> ShardMembership {
        ShardMembership {
            replica_set: Some("rs".into()),
            members: (0..n).map(|i| format!("h{i}:27017")).collect(),
            arbiters: 0,
            quorum: None,
        }
    }

    #[test]
    fn merge_applies_positions_memberships_revivals_and_drains() {
        let rs: Arc<str> = "rs".into();
        let mut ledger = Ledger::default();
        // Nothing known and nothing new: nothing to write.
        let held = merged(&BTreeMap::new(), &ledger, &confirmed(&[]), Some("rs"));
        assert!(held.is_empty());
        // A membership is written with the shard's first position.
        ledger.remember(&rs, members(3));
        let held = merged(&held, &ledger, &confirmed(&[("rs", 1)]), None);
        assert_eq!(
            held[&rs],
            StoredShard {
                checkpoint: id(1),
                membership: Some(members(3)),
                drained: false,
                snapshot: None,
            }
        );
        let revived = ledger.revived.clone();
        ledger.written(&revived, &HashMap::new());
        // Drained at the confirmed position; the same position later keeps the flag.
        let held = merged(&held, &ledger, &confirmed(&[("rs", 2)]), Some("rs"));
        assert!(held[&rs].drained && held[&rs].checkpoint == id(2));
        let same = merged(&held, &ledger, &confirmed(&[("rs", 2)]), None);
        assert_eq!(same, held);
        assert!(changed(&held, &same).is_empty());
        // Back (remembered again): no longer drained, with its new members; a drain
        // marked in the same write wins (the revival came first).
        ledger.remember(&rs, members(4));
        let back = merged(&held, &ledger, &confirmed(&[]), None);
        assert!(!back[&rs].drained);
        assert_eq!(back[&rs].membership, Some(members(4)));
        assert_eq!(changed(&held, &back).len(), 1);
        assert!(merged(&held, &ledger, &confirmed(&[]), Some("rs"))[&rs].drained);
    }
}

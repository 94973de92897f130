//! The initial snapshot: the documents that exist, then the changes, with no gap and no
//! duplicate (`[start] position = "snapshot"`, for shards without a checkpoint).
//!
//! # How
//!
//! 1. **One time `P` for the whole cluster** ([`plan`]): the oldest of the shards' majority
//!    commit points (each shard's primary `hello` `lastWrite.majorityOpTime`). Every shard
//!    has committed up to `P`, so a read at `P` sees nothing that can be rolled back.
//!    Cluster timestamps are causally ordered across shards (gossiped cluster time), so
//!    one `P` is one consistent cut: a document a migration moved is on its new owner at
//!    `P` exactly when the chunk's history says so.
//! 2. **Ownership at `P`** ([`ownership`]): `config.collections`, `config.chunks` (with
//!    their history) and `config.databases`, read through the discovery URI. A shard
//!    emits a document only if it owned the document's shard-key range at `P` (unsharded
//!    collections: only the database's primary shard), so migration leftovers (orphans)
//!    are never copied twice.
//! 3. **Copy per shard**, before its stream starts (the other shards' snapshots and
//!    streams run meanwhile): every collection the filter keeps is read from a member
//!    with `readConcern: {level: "snapshot", atClusterTime: P}`, in `_id` order, in
//!    batches; each document becomes a record with op `r` (see
//!    [`crate::pipeline::emit::Emitter::snapshot_document`]). A transient failure
//!    continues after the last `_id` read.
//! 4. **Then the stream**, from `P - [snapshot] stream_margin` (or the member's oldest
//!    entry, if later): what committed at or before `P` is in the snapshot and is not
//!    emitted again; what committed after it is. Starting before `P` lets a distributed
//!    transaction prepared before `P` and committed after it be read whole; one prepared
//!    even earlier stops the shard with an error naming the margin (never half emitted).
//!    The first checkpoint is after `P`.
//!
//! # Limits
//!
//! Progress survives a restart (module `progress`): once the sink confirmed a shard's records
//! up to a point, that point (collections done, the collection being copied and its last
//! `_id`, `P`, the stream's start) is stored in the checkpoint store, and the next start
//! continues there at the same `P`; the shard's first checkpoint replaces it. No shard
//! streams before every shard's copy ended ([`CopyBarrier`]). A read older than the
//! server's history window (`SnapshotTooOld`) reads the rest at a later time when no chunk
//! of it changed shards meanwhile, else stops the shard (module `reread`, [`floor`]).
//! Hashed shard keys are refused (see [`ownership`]). Collections are listed on the member
//! read; time-series collections are copied as their
//! buckets (the filter's rule for `*.system.buckets.*`).

mod again;
mod copy;
pub mod floor;
pub mod ownership;
mod progress;
mod reread;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Document, Timestamp};
use futures::TryStreamExt;
use quorumtail_sink::{CheckpointStore, ProgressView, SnapshotProgress};

use crate::discovery::MemberAccess;
use crate::pipeline::ShardSpec;
pub(crate) use again::copy_again;
pub use again::{Catalog, Request};
pub use copy::copy_shard;
pub(crate) use copy::Output;
pub use ownership::{Ownership, OwnershipError};

/// What every shard's snapshot shares.
#[derive(Debug, Clone)]
pub struct SnapshotPlan {
    /// `P`, the time every shard is read at.
    pub at: Timestamp,
    /// Who owns what at `P`; `None` for a single replica set (it owns everything).
    pub ownership: Option<Ownership>,
    /// `[snapshot] batch_size`.
    pub batch_size: u32,
    /// `[snapshot] stream_margin`.
    pub stream_margin: Duration,
    /// How members are reached.
    pub access: MemberAccess,
    /// Where each shard's progress is kept, so a restart continues the snapshot instead of
    /// taking it again; `None` keeps no progress (tests of the copy alone).
    pub progress: Option<ProgressStore>,
    /// Shards continuing a snapshot an earlier run started, with how far it got.
    pub resume: HashMap<Arc<str>, SnapshotProgress>,
    /// Where the sharding catalog is read again when a read falls out of the server's
    /// history and the rest is read later; `None` for a replica set.
    pub catalog: Option<Arc<crate::discovery::Discovery>>,
    /// No shard streams before every shard's copy ended (see [`CopyBarrier`]).
    pub barrier: CopyBarrier,
}

/// Every shard's copy ends before any shard's stream starts.
///
/// A document a migration moves after `P` is read by its owner at `P` (the donor) while
/// its later changes are logged by the recipient. If the recipient streamed while the
/// donor was still copying, a consumer could get the document's change before its read,
/// and the read (older) would undo the change. With the copies all handed to the sink
/// first, and one sink keeping the order it is given, every read precedes every change
/// after `P`. The cost: a shard that finished copying waits for the slowest copy (its
/// members' oplogs must hold `P - stream_margin` until then, as they must anyway).
#[derive(Debug, Clone)]
pub struct CopyBarrier {
    left: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for CopyBarrier {
    fn default() -> Self {
        CopyBarrier::new(0)
    }
}

impl CopyBarrier {
    /// A barrier for `shards` copies.
    pub fn new(shards: usize) -> Self {
        CopyBarrier {
            left: Arc::new(tokio::sync::watch::channel(shards).0),
        }
    }

    /// One copy ended (done, failed or stopped); it counts once through its guard.
    pub fn arrive(&self) -> ArriveGuard {
        ArriveGuard {
            barrier: self.clone(),
        }
    }

    /// Waits until every copy ended; `false` on shutdown.
    pub async fn wait(&self, shutdown: &tokio_util::sync::CancellationToken) -> bool {
        let mut rx = self.left.subscribe();
        tokio::select! {
            r = rx.wait_for(|n| *n == 0) => r.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }

    /// Copies not ended yet.
    pub fn left(&self) -> usize {
        *self.left.borrow()
    }
}

/// Counts a copy as ended when dropped.
#[derive(Debug)]
pub struct ArriveGuard {
    barrier: CopyBarrier,
}

impl Drop for ArriveGuard {
    fn drop(&mut self) {
        self.barrier.left.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The checkpoint store and the sink's delivery view: progress is stored once the sink
/// confirmed the records up to it (delivery before progress, as for checkpoints).
#[derive(Debug, Clone)]
pub struct ProgressStore {
    /// The checkpoint store.
    pub store: Arc<dyn CheckpointStore>,
    /// The sink's delivery.
    pub view: ProgressView,
    /// How often progress is stored at most (`[checkpoint] interval`).
    pub interval: Duration,
}

/// Why the snapshot could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A shard's commit point could not be read.
    #[error("snapshot: shard {shard}: cannot read its majority commit point ({detail}); every shard must answer to choose the snapshot's time")]
    CommitPoint {
        /// Shard.
        shard: String,
        /// What failed.
        detail: String,
    },
    /// The sharding catalog could not be read.
    #[error("snapshot: cannot read the sharding catalog through [discovery] uri ({0}); it says which shard owns each document")]
    Catalog(String),
    /// The catalog is unusable.
    #[error("snapshot: {0}")]
    Ownership(#[from] OwnershipError),
}

/// What [`plan`] needs besides the shards and the catalog.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// How members are reached.
    pub access: MemberAccess,
    /// `[snapshot] batch_size`.
    pub batch_size: u32,
    /// `[snapshot] stream_margin`.
    pub stream_margin: Duration,
    /// Where progress is kept.
    pub progress: Option<ProgressStore>,
    /// Shards continuing an earlier run's snapshot: its time is kept (one time for the
    /// whole cluster, so the shards' copies stay one consistent cut).
    pub resume: HashMap<Arc<str>, SnapshotProgress>,
}

/// Plans the snapshot of `shards`: `P` and the ownership at `P` (from `catalog`, the
/// discovery client's view of the config database; `None` for a replica set). A snapshot
/// an earlier run started keeps its `P`.
///
/// # Errors
/// [`PlanError`] when a shard or the catalog cannot be read.
pub async fn plan(
    shards: &[ShardSpec],
    catalog: Option<Arc<crate::discovery::Discovery>>,
    input: PlanInput,
) -> Result<SnapshotPlan, PlanError> {
    let PlanInput {
        access,
        batch_size,
        stream_margin,
        progress,
        resume,
    } = input;
    let resumed: Option<Timestamp> = resume
        .values()
        .map(|p| Timestamp::from(p.at))
        .min_by_key(|t| (t.time, t.increment));
    let mut at = resumed;
    let fresh: &[ShardSpec] = if resumed.is_some() { &[] } else { shards };
    for s in fresh {
        let t = majority_point(s, &access)
            .await
            .map_err(|detail| PlanError::CommitPoint {
                shard: s.name.to_string(),
                detail,
            })?;
        at = Some(match at {
            Some(a) if (a.time, a.increment) <= (t.time, t.increment) => a,
            _ => t,
        });
    }
    let at = at.unwrap_or(Timestamp {
        time: 0,
        increment: 0,
    });
    let ownership = match &catalog {
        Some(d) => {
            let (collections, chunks, databases) = d.catalog().await.map_err(PlanError::Catalog)?;
            Some(Ownership::from_catalog(
                &collections,
                &chunks,
                &databases,
                at,
            )?)
        }
        None => None,
    };
    if resume.is_empty() {
        tracing::info!(at = %format!("{}:{}", at.time, at.increment), shards = shards.len(), "snapshot planned: every shard is read as of this time");
    } else {
        tracing::info!(at = %format!("{}:{}", at.time, at.increment), continuing = ?resume.keys().collect::<Vec<_>>(), "continuing the snapshot an earlier run started, at its time");
    }
    Ok(SnapshotPlan {
        at,
        ownership,
        batch_size,
        stream_margin,
        access,
        progress,
        resume,
        catalog,
        barrier: CopyBarrier::default(),
    })
}

/// The replica set URI of a shard, for the snapshot's reads.
pub(crate) fn shard_uri(spec: &ShardSpec, extra: &str) -> String {
    match &spec.replica_set {
        Some(set) => format!(
            "mongodb://{}/?replicaSet={set}&serverSelectionTimeoutMS=10000{extra}",
            spec.members.join(",")
        ),
        None => format!(
            "mongodb://{}/?directConnection=true&serverSelectionTimeoutMS=10000{extra}",
            spec.members.first().map_or("", String::as_str)
        ),
    }
}

/// A client for a shard's snapshot reads (the primary when it answers, else a secondary).
pub(crate) async fn read_client(
    spec: &ShardSpec,
    access: &MemberAccess,
) -> Result<mongodb::Client, String> {
    let opts = access
        .client_options(&shard_uri(
            spec,
            "&readPreference=primaryPreferred&appName=quorumtail-snapshot",
        ))
        .await
        .map_err(|e| e.to_string())?;
    mongodb::Client::with_options(opts).map_err(|e| e.to_string())
}

/// A shard's majority commit point, from its primary's `hello`.
pub(super) async fn majority_point(
    spec: &ShardSpec,
    access: &MemberAccess,
) -> Result<Timestamp, String> {
    let opts = access
        .client_options(&shard_uri(spec, "&appName=quorumtail-snapshot"))
        .await
        .map_err(|e| e.to_string())?;
    let client = mongodb::Client::with_options(opts).map_err(|e| e.to_string())?;
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await;
    quorumtail_tailer::close(client).await;
    let hello = hello.map_err(|e| e.to_string())?;
    hello
        .get_document("lastWrite")
        .and_then(|w| w.get_document("majorityOpTime"))
        .and_then(|o| o.get_timestamp("ts"))
        .map_err(|_| format!("hello has no lastWrite.majorityOpTime: {hello}"))
}

impl crate::discovery::Discovery {
    /// The sharding catalog: `config.collections`, `config.chunks` and `config.databases`
    /// (majority reads through mongos or a config server).
    ///
    /// # Errors
    /// When one of them cannot be read.
    pub async fn catalog(&self) -> Result<(Vec<Document>, Vec<Document>, Vec<Document>), String> {
        let read = |coll: &'static str| async move {
            let c = self
                .config_db()
                .collection::<Document>(coll)
                .find(doc! {})
                .await
                .map_err(|e| format!("config.{coll}: {e}"))?;
            c.try_collect::<Vec<_>>()
                .await
                .map_err(|e| format!("config.{coll}: {e}"))
        };
        Ok((
            read("collections").await?,
            read("chunks").await?,
            read("databases").await?,
        ))
    }
}

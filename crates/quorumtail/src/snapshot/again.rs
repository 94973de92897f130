//! Copying collections again on a running shard (`quorumtail snapshot`, `POST /snapshot`).
//!
//! The shard stops taking entries from its members while it copies (their channels fill
//! and the tailers wait), reads each collection at the time of the last entry it released,
//! `T`, and then goes on. Its output is so in order for every document: the changes up to
//! `T`, the document as of `T` (an `r` record), the changes after `T`. Other shards go on
//! streaming meanwhile. The request is not stored: a restart during the copy forgets it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bson::{Document, Timestamp};
use quorumtail_oplog::{Filter, OpKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::copy::{copy_collection, estimate, namespaces, CopyStop, Output};
use super::progress::Tracker;
use super::{read_client, Ownership, SnapshotPlan};
use crate::discovery::MemberAccess;
use crate::pipeline::emit::Emitter;
use crate::pipeline::stats::ShardStats;
use crate::pipeline::{ShardError, ShardSpec};

/// The sharding catalog as read through the discovery URI: `config.collections`,
/// `config.chunks` and `config.databases`.
pub type Catalog = (Vec<Document>, Vec<Document>, Vec<Document>);

/// What to copy again.
#[derive(Debug, Clone)]
pub struct Request {
    /// Namespaces (`db.coll`); empty: every collection the filter keeps.
    pub namespaces: Vec<String>,
    /// The catalog, read after the request (its chunk history says who owned what at the
    /// shard's `T`); `None` for a replica set.
    pub catalog: Option<Arc<Catalog>>,
    /// `[snapshot] batch_size`.
    pub batch_size: u32,
    /// How members are reached.
    pub access: MemberAccess,
    /// Where the catalog is read again after the copy (a chunk that changed shards
    /// meanwhile makes the copy unreliable, see [`copy_again`]); `None` for a replica set.
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
}

/// Copies the requested collections of shard `spec` as of `at` through `emitter` into
/// `out`. Returns how many documents were emitted.
///
/// The other shards stream meanwhile. A document that a migration moves from this shard
/// after `at` has its later changes logged (and emitted) by the recipient, possibly before
/// this copy emits the document as of `at`, which would then undo them for a consumer. So
/// the catalog is read again after the copy: if a chunk of a copied collection changed
/// shards since `at`, the copy is reported as failed (request it again with the balancer
/// stopped).
///
/// # Errors
/// [`ShardError::Snapshot`] when a collection cannot be read (the cause and the fix in
/// its text), [`ShardError::Sink`] / [`ShardError::LookupStopped`] when the output stops.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn copy_again(
    spec: &ShardSpec,
    at: Timestamp,
    req: &Request,
    filter: &Filter,
    emitter: &mut Emitter,
    out: &Output<'_>,
    stats: &Arc<ShardStats>,
    shutdown: &CancellationToken,
) -> Result<u64, ShardError> {
    let shard = spec.name.clone();
    let fail = |detail: String| ShardError::Snapshot {
        shard: shard.clone(),
        detail,
    };
    let ownership = match &req.catalog {
        Some(c) => {
            Some(Ownership::from_catalog(&c.0, &c.1, &c.2, at).map_err(|e| fail(e.to_string()))?)
        }
        None => None,
    };
    let plan = SnapshotPlan {
        at,
        ownership,
        batch_size: req.batch_size,
        stream_margin: std::time::Duration::ZERO,
        access: req.access.clone(),
        progress: None,
        resume: Default::default(),
        catalog: None,
        barrier: Default::default(),
    };
    let client = read_client(spec, &req.access).await.map_err(fail)?;
    let before = stats.snapshot_documents.load(Relaxed);
    stats.snapshotting.store(1, Relaxed);
    let result = async {
        let wanted = if req.namespaces.is_empty() {
            namespaces(&client, filter).await.map_err(&fail)?
        } else {
            let mut kept = Vec::new();
            for ns in &req.namespaces {
                if filter.check(OpKind::Insert, ns, false).is_ok() {
                    kept.push(ns.clone());
                } else {
                    warn!(shard = %shard, ns, "snapshot request: the [filter] does not keep this collection; not copied");
                }
            }
            kept
        };
        let estimate = estimate(&client, &wanted).await;
        stats.snapshot_estimated_documents.store(estimate, Relaxed);
        info!(shard = %shard, at = %format!("{}:{}", at.time, at.increment), collections = ?wanted, estimated_documents = estimate, "snapshot on request: copying as of the last entry released; this shard's stream waits meanwhile");
        let mut tracker = Tracker::new(
            shard.clone(),
            None,
            quorumtail_sink::SnapshotProgress {
                at: at.into(),
                stream_from: at.into(),
                done: Vec::new(),
                current: None,
                complete: false,
                documents: 0,
                later: Vec::new(),
            },
        );
        tracker.read_before(
            stats.snapshot_documents.load(Relaxed) + stats.snapshot_orphans.load(Relaxed),
        );
        for ns in &wanted {
            if shutdown.is_cancelled() {
                break;
            }
            copy_collection(
                &client,
                spec,
                &plan,
                ns,
                emitter,
                out,
                stats,
                &mut tracker,
                shutdown,
            )
            .await
            .map_err(|e| match e {
                CopyStop::Failed(e) => e,
                CopyStop::TooOld(why) => fail(format!("{ns}: {why}")),
            })?;
            stats.snapshot_collections.fetch_add(1, Relaxed);
        }
        moved_since(req, at, &wanted).await.map_err(&fail)
    }
    .await;
    stats.snapshotting.store(0, Relaxed);
    quorumtail_tailer::close(client).await;
    result.map(|()| stats.snapshot_documents.load(Relaxed) - before)
}

/// Fails when a chunk of one of `namespaces` changed shards since `at` (read from the
/// catalog now).
async fn moved_since(req: &Request, at: Timestamp, namespaces: &[String]) -> Result<(), String> {
    let Some(d) = &req.discovery else {
        return Ok(());
    };
    let (collections, chunks, databases) = d.catalog().await.map_err(|e| {
        format!("the catalog cannot be read after the copy to check for migrations ({e}); request the copy again")
    })?;
    let then = Ownership::from_catalog(&collections, &chunks, &databases, at)
        .map_err(|e| e.to_string())?;
    let now = Ownership::from_catalog(
        &collections,
        &chunks,
        &databases,
        Timestamp {
            time: u32::MAX,
            increment: u32::MAX,
        },
    )
    .map_err(|e| e.to_string())?;
    match namespaces.iter().find(|ns| then.differs_for(&now, ns)) {
        Some(ns) => Err(format!(
            "{ns} changed owners (a chunk migration) during the copy: a moved document's later changes may have been emitted before its copy. Request the copy again with the balancer stopped (sh.stopBalancer())"
        )),
        None => Ok(()),
    }
}

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

use super::copy::{copy_collection, estimate, namespaces, Output};
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
}

/// Copies the requested collections of shard `spec` as of `at` through `emitter` into
/// `out`. Returns how many documents were emitted.
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
            },
        );
        tracker.read_before(
            stats.snapshot_documents.load(Relaxed) + stats.snapshot_orphans.load(Relaxed),
        );
        for ns in wanted {
            if shutdown.is_cancelled() {
                break;
            }
            copy_collection(
                &client,
                spec,
                &plan,
                &ns,
                emitter,
                out,
                stats,
                &mut tracker,
                shutdown,
            )
            .await?;
            stats.snapshot_collections.fetch_add(1, Relaxed);
        }
        Ok(())
    }
    .await;
    stats.snapshotting.store(0, Relaxed);
    quorumtail_tailer::close(client).await;
    result.map(|()| stats.snapshot_documents.load(Relaxed) - before)
}

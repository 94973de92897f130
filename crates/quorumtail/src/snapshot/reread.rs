//! Reading the rest of a shard's snapshot at a later time, when the server's history no
//! longer holds the snapshot's time (`SnapshotTooOld`: a copy that outlasted
//! `minSnapshotHistoryWindowInSeconds`, or a retry after a failover).
//!
//! Correct only while every document of what is left keeps its owner between the two
//! times: the snapshot emits a document from the shard that owned it at the time it was
//! read, so a chunk that changed shards in between could be read on both shards or on
//! neither, and its changes applied out of order. So the sharding catalog is read again
//! and the ownership of every collection still to read compared at both times; if a
//! chunk moved, the key changed, or an unsharded collection's primary shard moved, the
//! shard stops with the error and its fix instead.
//!
//! What the later read holds is recorded as a [`LaterRead`](super::floor::LaterRead): the
//! stream skips its documents' changes up to the later time, and the others' only up to
//! the snapshot's time (see [`super::floor`]).

use bson::{Bson, Timestamp};
use quorumtail_sink::SnapshotProgress;

use super::floor::{LaterRead, SnapshotFloor};
use super::{majority_point, Ownership, SnapshotPlan};
use crate::pipeline::ShardSpec;

/// What a stored progress says the snapshot holds.
///
/// # Errors
/// When a stored `_id` is not valid Extended JSON.
pub(super) fn floor_of(p: &SnapshotProgress) -> Result<SnapshotFloor, String> {
    let mut floor = SnapshotFloor::at(p.at);
    for l in &p.later {
        let after_id = match &l.after_id {
            Some(v) => Some(Bson::try_from(v.clone()).map_err(|e| {
                format!(
                    "the stored snapshot progress of {} has an unreadable _id {v}: {e}",
                    l.ns
                )
            })?),
            None => None,
        };
        floor.later.push(LaterRead {
            ns: l.ns.clone(),
            after_id,
            at: l.at,
        });
    }
    Ok(floor)
}

/// The plan with reads at `at` and the ownership then (the catalog read again).
///
/// # Errors
/// When the catalog cannot be read or understood.
pub(super) async fn read_at(plan: &SnapshotPlan, at: Timestamp) -> Result<SnapshotPlan, String> {
    let mut out = plan.clone();
    out.at = at;
    if let Some(d) = &plan.catalog {
        let (collections, chunks, databases) = d.catalog().await?;
        out.ownership = Some(
            Ownership::from_catalog(&collections, &chunks, &databases, at)
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

/// A later time to read the rest of shard `spec`'s snapshot at (its commit point now),
/// with the ownership then, if no collection in `rest` changed owners since `current`'s
/// time.
///
/// # Errors
/// Why not (the caller adds the fix).
pub(super) async fn later(
    spec: &ShardSpec,
    plan: &SnapshotPlan,
    current: &SnapshotPlan,
    rest: &[String],
) -> Result<SnapshotPlan, String> {
    let now = majority_point(spec, &plan.access)
        .await
        .map_err(|e| format!("the shard's commit point cannot be read for a later read ({e})"))?;
    if (now.time, now.increment) <= (current.at.time, current.at.increment) {
        return Err(format!(
            "the shard's commit point {}:{} is not after the read's time",
            now.time, now.increment
        ));
    }
    let Some(d) = &plan.catalog else {
        // A replica set owns all its documents at any time.
        let mut out = current.clone();
        out.at = now;
        return Ok(out);
    };
    let (collections, chunks, databases) = d
        .catalog()
        .await
        .map_err(|e| format!("the sharding catalog cannot be read again ({e})"))?;
    let then = Ownership::from_catalog(&collections, &chunks, &databases, current.at)
        .map_err(|e| e.to_string())?;
    let later = Ownership::from_catalog(&collections, &chunks, &databases, now)
        .map_err(|e| e.to_string())?;
    if let Some(ns) = rest.iter().find(|ns| then.differs_for(&later, ns)) {
        return Err(format!(
            "{ns} changed owners (a chunk migration, a resharding or a primary shard move) between {}:{} and {}:{}, so it cannot be read at the later time without emitting documents twice or not at all",
            current.at.time, current.at.increment, now.time, now.increment
        ));
    }
    let mut out = current.clone();
    out.at = now;
    out.ownership = Some(later);
    Ok(out)
}

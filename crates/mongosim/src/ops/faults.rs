//! The operations behind the fault API, shared by [`Cluster`](crate::Cluster)'s methods and the
//! `mongosimControl` command ([`crate::control`]): member status, killing and restarting
//! processes, partitions, step-downs, lag, oplog truncation, chunk moves, adding and
//! removing shards, sync sources, replication blocks and held step-ups.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::Bson;

use crate::error::CmdError;
use crate::error::SimError;
use crate::runtime::{bind, bind_many, Shared};
use crate::world::{Proc, SetRole, ShardEntry, ShardState, World};

/// A node's view, for status and tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    /// Address.
    pub addr: String,
    /// Set name.
    pub set: String,
    /// Process is up.
    pub alive: bool,
    /// Cut from its set.
    pub partitioned: bool,
    /// "PRIMARY" or "SECONDARY".
    pub state: String,
    /// Term as the node sees it.
    pub term: i64,
    /// Entries held.
    pub oplog_len: usize,
    /// Newest entry's ts as (seconds, increment).
    pub last_ts: (u32, u32),
    /// Replication lag in milliseconds.
    pub lag_ms: u64,
    /// Member kind in the config: voter, passive, hidden, nonvoter, arbiter, delayed:SECS
    /// ("removed" when a reconfig dropped it).
    pub member: String,
    /// The member's view of the commit point, as (seconds, increment).
    pub commit_point: Option<(u32, u32)>,
    /// The member it replicates from.
    pub sync_source: Option<String>,
}

/// Every member's [`NodeStatus`].
pub(crate) fn status(w: &World) -> Vec<NodeStatus> {
    let mut out = Vec::new();
    for set in &w.sets {
        for n in &set.nodes {
            let (ts, _) = n.last_optime();
            out.push(NodeStatus {
                addr: n.addr.to_string(),
                set: set.name.clone(),
                alive: n.alive,
                partitioned: n.partitioned,
                state: if n.removed {
                    "REMOVED".into()
                } else {
                    n.state.name().into()
                },
                term: n.term,
                oplog_len: n.oplog.len(),
                last_ts: (ts.time, ts.increment),
                lag_ms: n.lag.as_millis() as u64,
                member: if n.removed {
                    "removed".into()
                } else {
                    n.member.to_string()
                },
                commit_point: n
                    .commit_point
                    .as_ref()
                    .map(|c| (c.id.ts.time, c.id.ts.increment)),
                sync_source: n.sync_source.map(|j| set.nodes[j].addr.to_string()),
            });
        }
    }
    out
}

pub(crate) fn locate_node(w: &World, addr: SocketAddr) -> Result<(usize, usize), SimError> {
    match w.locate(addr) {
        Some(Proc::Node { set, node }) => Ok((set, node)),
        _ => Err(SimError::UnknownNode(addr)),
    }
}

pub(crate) async fn kill_node(shared: &Arc<Shared>, addr: SocketAddr) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        match w.locate(addr) {
            Some(Proc::Node { set, node }) => w.kill(set, node, Instant::now()),
            Some(Proc::Mongos) => {
                if let Some(sh) = w.sharding.as_mut() {
                    sh.mongos_alive = false;
                    sh.cursors.clear();
                }
            }
            None => return Err(SimError::UnknownNode(addr)),
        }
    }
    tracing::info!(%addr, "kill node");
    shared.stop_listener(addr).await;
    shared.notify();
    Ok(())
}

pub(crate) async fn restart_node(shared: &Arc<Shared>, addr: SocketAddr) -> Result<(), SimError> {
    let proc = shared
        .world()
        .locate(addr)
        .ok_or(SimError::UnknownNode(addr))?;
    if shared
        .procs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&addr)
    {
        return Ok(()); // already running
    }
    let (listener, _) = bind(addr.port()).await?;
    {
        let mut w = shared.world();
        match proc {
            Proc::Node { set, node } => w.restart(set, node, Instant::now()),
            Proc::Mongos => {
                if let Some(sh) = w.sharding.as_mut() {
                    sh.mongos_alive = true;
                }
            }
        }
    }
    shared.spawn_listener(listener, addr);
    tracing::info!(%addr, "restart node");
    shared.notify();
    Ok(())
}

pub(crate) fn set_partition(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    partitioned: bool,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let (s, n) = locate_node(&w, addr)?;
        let node = &mut w.sets[s].nodes[n];
        node.partitioned = partitioned;
        node.partitioned_at = partitioned.then(Instant::now);
        tracing::info!(%addr, partitioned, "partition change");
    }
    shared.notify();
    Ok(())
}

pub(crate) fn step_down(shared: &Arc<Shared>, shard: &str) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let s = w
            .set_index(shard)
            .ok_or_else(|| SimError::UnknownShard(shard.into()))?;
        w.step_down(s, Instant::now())?;
    }
    shared.notify();
    Ok(())
}

pub(crate) fn set_lag(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    lag: Duration,
) -> Result<(), SimError> {
    let mut w = shared.world();
    let (s, n) = locate_node(&w, addr)?;
    w.sets[s].nodes[n].lag = lag;
    Ok(())
}

pub(crate) fn truncate_oplog(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    count: usize,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let (s, n) = locate_node(&w, addr)?;
        for _ in 0..count {
            if w.sets[s].nodes[n].oplog.pop_front().is_none() {
                break;
            }
        }
    }
    shared.notify();
    Ok(())
}

pub(crate) fn move_chunk(
    shared: &Arc<Shared>,
    ns: &str,
    key: Bson,
    to: &str,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        if w.sharding.is_none() {
            return Err(SimError::NotSharded("move_chunk"));
        }
        w.move_chunk(ns, &key, to, Instant::now())?;
    }
    shared.notify();
    Ok(())
}

pub(crate) async fn add_shard(
    shared: &Arc<Shared>,
    nodes: usize,
    base_port: u16,
) -> Result<String, SimError> {
    let (name, next_port) = {
        let w = shared.world();
        let sh = w
            .sharding
            .as_ref()
            .ok_or(SimError::NotSharded("add_shard"))?;
        let max_port = w
            .sets
            .iter()
            .flat_map(|s| s.nodes.iter().map(|n| n.addr.port()))
            .chain([sh.mongos.port()])
            .max()
            .unwrap_or(0);
        let next = if base_port == 0 {
            0
        } else {
            max_port.saturating_add(1)
        };
        (format!("shard{:02}", sh.shards.len() + 1), next)
    };
    let listeners = bind_many(next_port, 0, nodes.max(1)).await?;
    let addrs: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
    {
        let mut w = shared.world();
        let s = w.add_set(&name, SetRole::Shard, &addrs, Instant::now());
        if let Some(sh) = w.sharding.as_mut() {
            sh.shards.push(ShardEntry {
                name: name.clone(),
                set: s,
                state: ShardState::Active,
            });
        }
    }
    for (l, a) in listeners {
        shared.spawn_listener(l, a);
    }
    shared.notify();
    tracing::info!(shard = %name, "added shard");
    Ok(name)
}

/// Marks a shard draining and moves its chunks away. Returns whether it was already draining.
pub(crate) fn begin_remove_shard(shared: &Arc<Shared>, shard: &str) -> Result<bool, SimError> {
    let was_draining = {
        let mut w = shared.world();
        let sh = w
            .sharding
            .as_mut()
            .ok_or(SimError::NotSharded("remove_shard"))?;
        let entry = sh
            .shards
            .iter_mut()
            .find(|s| s.name == shard && s.state != ShardState::Removed)
            .ok_or_else(|| SimError::UnknownShard(shard.into()))?;
        let was = entry.state == ShardState::Draining;
        entry.state = ShardState::Draining;
        let others: Vec<String> = sh
            .shards
            .iter()
            .filter(|s| s.state == ShardState::Active)
            .map(|s| s.name.clone())
            .collect();
        if others.is_empty() {
            return Err(SimError::Command(CmdError::new(
                20,
                "IllegalOperation",
                "Operation not allowed because it would remove the last shard",
            )));
        }
        let moves: Vec<(String, Bson)> = sh
            .collections
            .iter()
            .flat_map(|(ns, chunks)| {
                chunks
                    .iter()
                    .filter(|c| c.shard == shard)
                    .map(|c| (ns.clone(), c.min.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let now = Instant::now();
        for (i, (ns, min)) in moves.into_iter().enumerate() {
            let to = others[i % others.len()].clone();
            w.move_chunk(&ns, &min, &to, now)?;
        }
        was
    };
    shared.notify();
    Ok(was_draining)
}

pub(crate) fn finish_remove_shard(shared: &Arc<Shared>, shard: &str) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let sh = w
            .sharding
            .as_mut()
            .ok_or(SimError::NotSharded("remove_shard"))?;
        let entry = sh
            .shards
            .iter_mut()
            .find(|s| s.name == shard && s.state != ShardState::Removed)
            .ok_or_else(|| SimError::UnknownShard(shard.into()))?;
        entry.state = ShardState::Removed;
        // Its databases move to another shard (an implicit movePrimary).
        let dbs: Vec<String> = sh
            .databases
            .iter()
            .filter(|(_, d)| d.primary == shard)
            .map(|(db, _)| db.clone())
            .collect();
        for db in dbs {
            w.db_primary(&db);
        }
    }
    shared.notify();
    Ok(())
}

pub(crate) fn set_sync_source(
    shared: &Arc<Shared>,
    node: SocketAddr,
    source: Option<SocketAddr>,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let (s, n) = locate_node(&w, node)?;
        let src = match source {
            None => None,
            Some(a) => {
                let (s2, j) = locate_node(&w, a)?;
                if s2 != s || j == n {
                    return Err(SimError::Spec(format!(
                        "{a} cannot be the sync source of {node}: pick another member of its replica set"
                    )));
                }
                if w.sets[s].nodes[j].member.arbiter_only {
                    return Err(SimError::Spec(format!(
                        "{a} is an arbiter and has no oplog to sync from"
                    )));
                }
                Some(j)
            }
        };
        w.sets[s].nodes[n].sync_from = src;
        tracing::info!(%node, source = ?source, "sync source set");
    }
    shared.notify();
    Ok(())
}

pub(crate) fn block_replication(
    shared: &Arc<Shared>,
    node: SocketAddr,
    blocked: bool,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let (s, n) = locate_node(&w, node)?;
        w.sets[s].nodes[n].replication_blocked = blocked;
        tracing::info!(%node, blocked, "replication block");
    }
    shared.notify();
    Ok(())
}

pub(crate) fn hold_step_up(shared: &Arc<Shared>, set: &str, hold: bool) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let s = w
            .set_index(set)
            .ok_or_else(|| SimError::UnknownShard(set.into()))?;
        w.sets[s].hold_step_up = hold;
        tracing::info!(set, hold, "step-up hold");
    }
    shared.notify();
    Ok(())
}

/// Holds (or releases) every transaction coordinator between prepare and decision.
pub(crate) fn hold_txn_decisions(shared: &Arc<Shared>, hold: bool) {
    shared.world().hold_txn_decisions = hold;
    tracing::info!(hold, "transaction decisions hold");
    shared.notify();
}

/// Holds (or releases) every resharding operation between its clone and its cut-over.
pub(crate) fn hold_resharding(shared: &Arc<Shared>, hold: bool) {
    shared.world().hold_resharding = hold;
    tracing::info!(hold, "resharding hold");
    shared.notify();
}

/// Makes the next `prepareTransaction` on `set` vote to abort.
pub(crate) fn fail_next_prepare(shared: &Arc<Shared>, set: &str) -> Result<(), SimError> {
    let mut w = shared.world();
    let s = w
        .set_index(set)
        .ok_or_else(|| SimError::UnknownShard(set.into()))?;
    w.fail_next_prepare.insert(s);
    Ok(())
}

/// Defers migrations' range deletions (orphans stay on donors), or runs the deferred ones
/// and stops deferring.
pub(crate) fn defer_range_deletion(shared: &Arc<Shared>, on: bool) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        w.defer_range_deletion = on;
        if !on {
            w.run_range_deletions(std::time::Instant::now())?;
        }
    }
    shared.notify();
    Ok(())
}

//! Process-level operations on a running simulation, shared by the in-process API
//! ([`crate::cluster`]), the `mongosimControl` admin command ([`crate::control`]) and the
//! commands that change processes (`replSetReconfig`; a `killNode` aimed at the answering
//! process is carried out by the wire loop after its reply):
//!
//! - `ops/faults.rs`: member status ([`NodeStatus`]), killing and restarting processes,
//!   partitions, step-downs, lag, oplog truncation, chunk moves, adding and removing
//!   shards, sync sources, replication blocks and held step-ups;
//! - `ops/reconfig.rs`: replica set reconfiguration (validation, starting added members).
//!
//! They work on [`Shared`](crate::runtime::Shared) alone: starting or stopping a process
//! goes through the process table in [`crate::runtime`], so this layer depends on neither
//! the command handlers nor the wire loop, and both can call it.

mod faults;
mod reconfig;

pub use faults::NodeStatus;
pub(crate) use faults::{
    add_shard, begin_remove_shard, block_replication, defer_range_deletion, fail_next_prepare,
    finish_remove_shard, hold_resharding, hold_step_up, hold_txn_decisions, kill_node, locate_node,
    move_chunk, restart_node, set_lag, set_partition, set_sync_source, status, step_down,
    truncate_oplog,
};
pub(crate) use reconfig::{reconfigure, repl_set_reconfig_cmd};

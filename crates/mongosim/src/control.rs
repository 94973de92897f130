//! `mongosimControl`: the fault API as an admin command, for tests in other processes.
//!
//! ```text
//! {mongosimControl: "killNode",      node: "127.0.0.1:27019"}
//! {mongosimControl: "restartNode",   node: "127.0.0.1:27019"}
//! {mongosimControl: "partition",     node: "127.0.0.1:27019"}
//! {mongosimControl: "heal",          node: "127.0.0.1:27019"}
//! {mongosimControl: "stepDown",      shard: "shard01"}
//! {mongosimControl: "setLag",        node: "127.0.0.1:27019", lagMS: 500}
//! {mongosimControl: "truncateOplog", node: "127.0.0.1:27019", count: 10}
//! {mongosimControl: "moveChunk",     ns: "test.c", key: 5, to: "shard02"}
//! {mongosimControl: "addShard",      nodes: 3}                 -> {shard: "shard03"}
//! {mongosimControl: "removeShard",   shard: "shard02"}         (drains and removes)
//! {mongosimControl: "status"}                                   -> {layout, nodes, truth}
//! {mongosimControl: "groundTruth",   shard: "shard01"}          -> {committed, rolledBack, commitPoint}
//! {mongosimControl: "reconfig",      shard: "rs", members: "voter,voter,hidden,arbiter", force?}
//! {mongosimControl: "reconfig",      shard: "rs", members: [{host?, _id?, votes, priority, hidden,
//!                                     arbiterOnly, secondaryDelaySecs}, ...], force?} -> {members}
//! {mongosimControl: "setSyncSource", node: "127.0.0.1:27019", source: "127.0.0.1:27018"}  ("" = primary)
//! {mongosimControl: "blockReplication", node: "127.0.0.1:27019", blocked: true}
//! {mongosimControl: "holdStepUp",    shard: "shard01", hold: true}
//! {mongosimControl: "setCommitPointDelay", ms: 200}
//! {mongosimControl: "refuseCommands", node: "127.0.0.1:27019", commands: ["replSetGetConfig"]}
//! {mongosimControl: "misreportCommitPoint", node: "127.0.0.1:27019", on: true}
//! {mongosimControl: "holdTransactionDecisions", hold: true}   (coordinators wait after prepare)
//! {mongosimControl: "holdResharding", hold: true}   (resharding waits before its cut-over)
//! {mongosimControl: "failNextPrepare", shard: "shard02"}      (its next prepare votes abort)
//! {mongosimControl: "deferRangeDeletion", on: true}           (migrations leave orphans; false runs them)
//! ```
//!
//! `reconfig` with a string of kinds applies them by position to the current members (extra
//! kinds add members on new ports, fewer remove the trailing members); with documents,
//! members with a `host` of the set keep their process and those without one are added.
//!
//! A process asked to kill itself answers first and dies right after; every other operation
//! has completed when the reply arrives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};

use crate::error::CmdError;
use crate::error::SimError;
use crate::membership::{parse_member_list, MemberSpec};
use crate::ops;
use crate::runtime::{ConnCtx, Shared};
use crate::world::ShardState;

fn to_cmd_error(e: SimError) -> CmdError {
    match e {
        SimError::Command(c) => c,
        other => CmdError::new(2, "BadValue", other.to_string()),
    }
}

fn arg_str<'a>(cmd: &'a Document, key: &str) -> Result<&'a str, CmdError> {
    cmd.get_str(key).map_err(|_| {
        CmdError::new(
            2,
            "BadValue",
            format!("mongosimControl needs a string '{key}'"),
        )
    })
}

fn arg_addr(cmd: &Document) -> Result<SocketAddr, CmdError> {
    let s = arg_str(cmd, "node")?;
    s.parse()
        .map_err(|_| CmdError::new(2, "BadValue", format!("node {s:?} is not host:port")))
}

fn arg_i64(cmd: &Document, key: &str) -> Option<i64> {
    match cmd.get(key)? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

fn ok(mut d: Document) -> Document {
    d.insert("ok", 1.0);
    d
}

/// Runs one control operation.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    me: SocketAddr,
    ctx: &ConnCtx,
    cmd: &Document,
) -> Result<Document, CmdError> {
    let op = arg_str(cmd, "mongosimControl")?;
    match op {
        "killNode" => {
            let addr = arg_addr(cmd)?;
            if addr == me {
                // Killing the process that answers: reply first, die right after.
                if shared.world().locate(addr).is_none() {
                    return Err(to_cmd_error(SimError::UnknownNode(addr)));
                }
                *ctx.kill_after_reply
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(addr);
            } else {
                ops::kill_node(shared, addr).await.map_err(to_cmd_error)?;
            }
            Ok(ok(Document::new()))
        }
        "restartNode" => {
            ops::restart_node(shared, arg_addr(cmd)?)
                .await
                .map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "partition" | "heal" => {
            ops::set_partition(shared, arg_addr(cmd)?, op == "partition").map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "stepDown" => {
            ops::step_down(shared, arg_str(cmd, "shard")?).map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "setLag" => {
            let ms = arg_i64(cmd, "lagMS").unwrap_or(0).max(0) as u64;
            ops::set_lag(shared, arg_addr(cmd)?, Duration::from_millis(ms))
                .map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "truncateOplog" => {
            let count = arg_i64(cmd, "count").unwrap_or(1).max(0) as usize;
            ops::truncate_oplog(shared, arg_addr(cmd)?, count).map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "moveChunk" => {
            let key = cmd.get("key").cloned().unwrap_or(Bson::MinKey);
            ops::move_chunk(shared, arg_str(cmd, "ns")?, key, arg_str(cmd, "to")?)
                .map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "addShard" => {
            let nodes = arg_i64(cmd, "nodes").unwrap_or(3).max(1) as usize;
            let base = {
                let w = shared.world();
                // Keep mlaunch-style consecutive ports unless the cluster uses ephemeral ones.
                w.sharding.as_ref().map(|s| s.mongos.port()).unwrap_or(0)
            };
            let ephemeral = base == 0 || cmd.get_bool("ephemeral").unwrap_or(false);
            let name = ops::add_shard(shared, nodes, if ephemeral { 0 } else { base })
                .await
                .map_err(to_cmd_error)?;
            Ok(ok(doc! {"shard": name}))
        }
        "removeShard" => {
            let shard = arg_str(cmd, "shard")?;
            ops::begin_remove_shard(shared, shard).map_err(to_cmd_error)?;
            ops::finish_remove_shard(shared, shard).map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "status" => {
            let w = shared.world();
            let nodes = bson::serialize_to_bson(&ops::status(&w)).unwrap_or(Bson::Null);
            Ok(ok(doc! {"nodes": nodes}))
        }
        "groundTruth" => {
            let w = shared.world();
            let shard = arg_str(cmd, "shard")?;
            let s = w.set_index(shard).ok_or_else(|| {
                CmdError::new(70, "ShardNotFound", format!("no set named {shard}"))
            })?;
            let committed: Vec<Bson> = w.sets[s]
                .committed
                .iter()
                .map(|e| Bson::Document(e.doc.clone()))
                .collect();
            let rolled: Vec<Bson> = w.sets[s]
                .rolled_back
                .iter()
                .map(|e| Bson::Document(e.doc.clone()))
                .collect();
            let commit = w.sets[s]
                .commit_point
                .as_ref()
                .map(|c| Bson::Document(crate::world::optime_doc(c.id.ts, c.id.t.unwrap_or(-1))))
                .unwrap_or(Bson::Null);
            Ok(ok(
                doc! {"committed": committed, "rolledBack": rolled, "commitPoint": commit},
            ))
        }
        "reconfig" => {
            let shard = arg_str(cmd, "shard")?;
            let s = shared.world().set_index(shard).ok_or_else(|| {
                CmdError::new(70, "ShardNotFound", format!("no set named {shard}"))
            })?;
            let force = cmd.get_bool("force").unwrap_or(false);
            let members = match cmd.get("members") {
                Some(Bson::String(kinds)) => {
                    let kinds = parse_member_list(kinds)
                        .map_err(|e| CmdError::new(2, "BadValue", e))?;
                    let current: Vec<MemberSpec> = {
                        let w = shared.world();
                        w.sets[s].config_members().map(|(_, n)| n.member.clone()).collect()
                    };
                    kinds
                        .into_iter()
                        .enumerate()
                        .map(|(i, mut k)| {
                            if let Some(old) = current.get(i) {
                                k.host = old.host;
                                k.id = old.id;
                            }
                            k
                        })
                        .collect()
                }
                Some(Bson::Array(docs)) => {
                    let mut out = Vec::new();
                    for d in docs {
                        let Bson::Document(d) = d else {
                            return Err(CmdError::new(
                                14,
                                "TypeMismatch",
                                "members must be a string of kinds or an array of objects",
                            ));
                        };
                        out.push(MemberSpec::from_config_doc(d, false)?);
                    }
                    out
                }
                _ => {
                    return Err(CmdError::new(
                        2,
                        "BadValue",
                        "mongosimControl reconfig needs 'members': \"voter,hidden,...\" or an array of member documents",
                    ))
                }
            };
            let addrs = ops::reconfigure(shared, s, members, None, force, None)
                .await
                .map_err(to_cmd_error)?;
            let addrs: Vec<Bson> = addrs.iter().map(|a| Bson::String(a.to_string())).collect();
            Ok(ok(doc! {"members": addrs}))
        }
        "setSyncSource" => {
            let node = arg_addr(cmd)?;
            let source = match cmd.get_str("source").unwrap_or("") {
                "" => None,
                s => Some(s.parse().map_err(|_| {
                    CmdError::new(2, "BadValue", format!("source {s:?} is not host:port"))
                })?),
            };
            ops::set_sync_source(shared, node, source).map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "blockReplication" => {
            let blocked = cmd.get_bool("blocked").unwrap_or(true);
            ops::block_replication(shared, arg_addr(cmd)?, blocked).map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "holdStepUp" => {
            let hold = cmd.get_bool("hold").unwrap_or(true);
            ops::hold_step_up(shared, arg_str(cmd, "shard")?, hold).map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "refuseCommands" => {
            let names: Vec<String> = cmd
                .get_array("commands")
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let mut w = shared.world();
            let (s, n) = ops::locate_node(&w, arg_addr(cmd)?).map_err(to_cmd_error)?;
            w.sets[s].nodes[n].refused_commands = names.into_iter().collect();
            Ok(ok(Document::new()))
        }
        "misreportCommitPoint" => {
            let on = cmd.get_bool("on").unwrap_or(true);
            let mut w = shared.world();
            let (s, n) = ops::locate_node(&w, arg_addr(cmd)?).map_err(to_cmd_error)?;
            w.sets[s].nodes[n].misreport_commit_point = on;
            Ok(ok(Document::new()))
        }
        "holdResharding" => {
            ops::hold_resharding(shared, cmd.get_bool("hold").unwrap_or(true));
            Ok(ok(Document::new()))
        }
        "holdTransactionDecisions" => {
            ops::hold_txn_decisions(shared, cmd.get_bool("hold").unwrap_or(true));
            Ok(ok(Document::new()))
        }
        "deferRangeDeletion" => {
            ops::defer_range_deletion(shared, cmd.get_bool("on").unwrap_or(true))
                .map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "failNextPrepare" => {
            ops::fail_next_prepare(shared, arg_str(cmd, "shard")?).map_err(to_cmd_error)?;
            Ok(ok(Document::new()))
        }
        "setCommitPointDelay" => {
            let ms = arg_i64(cmd, "ms").unwrap_or(0).max(0) as u64;
            shared.world().cfg.commit_point_delay = Duration::from_millis(ms);
            Ok(ok(Document::new()))
        }
        other => Err(CmdError::new(
            2,
            "BadValue",
            format!("unknown mongosimControl operation {other:?}"),
        )),
    }
}

/// The real `removeShard` admin command on mongos: the first call starts draining (and, the
/// simulation being synchronous, migrates every chunk away), the next call completes.
pub(crate) async fn remove_shard_step(
    shared: &Arc<Shared>,
    shard: &str,
) -> Result<Document, CmdError> {
    let state = {
        let w = shared.world();
        let Some(sh) = w.sharding.as_ref() else {
            return Err(CmdError::new(
                20,
                "IllegalOperation",
                "not a sharded cluster",
            ));
        };
        sh.shards
            .iter()
            .find(|s| s.name == shard && s.state != ShardState::Removed)
            .map(|s| s.state)
            .ok_or_else(|| CmdError::new(70, "ShardNotFound", format!("Shard {shard} not found")))?
    };
    if state == ShardState::Active {
        ops::begin_remove_shard(shared, shard).map_err(to_cmd_error)?;
        Ok(ok(doc! {
            "msg": "draining started successfully",
            "state": "started",
            "shard": shard,
            "note": "you need to call removeShard again to complete the removal (mongosim migrates chunks synchronously)",
            "dbsToMove": [],
        }))
    } else {
        ops::finish_remove_shard(shared, shard).map_err(to_cmd_error)?;
        Ok(ok(doc! {
            "msg": "removeshard completed successfully",
            "state": "completed",
            "shard": shard,
        }))
    }
}

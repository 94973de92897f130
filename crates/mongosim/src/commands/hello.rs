//! The handshake and replica-set commands: hello / isMaster (as mongod and mongos answer
//! it), buildInfo, serverStatus, replSetGetStatus, replSetGetConfig and replSetStepDown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, DateTime, Document, Timestamp};

use super::{get_bool, ok, CmdResult};
use crate::codec::{MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_SIZE};
use crate::error::CmdError;
use crate::runtime::{ConnCtx, Shared};
use crate::world::{optime_doc, MemberState, Proc, SetRole, SetState, World};

pub(super) fn build_info(w: &World) -> Document {
    let v = w.version;
    let arr: Vec<Bson> = v.version_array().iter().map(|x| Bson::Int32(*x)).collect();
    ok(doc! {
        "version": v.version_string(),
        "gitVersion": "0000000000000000000000000000000000000000",
        "modules": [],
        "allocator": "system",
        "javascriptEngine": "none",
        "sysInfo": "deprecated",
        "versionArray": arr,
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE as i32,
        "storageEngines": ["wiredTiger"],
        "mongosim": true,
    })
}

pub(super) fn server_status(w: &World, me: SocketAddr) -> Document {
    let process = if w.locate(me) == Some(Proc::Mongos) {
        "mongos"
    } else {
        "mongod"
    };
    ok(doc! {
        "host": me.to_string(),
        "version": w.version.version_string(),
        "process": process,
        "localTime": DateTime::now(),
    })
}

/// The hello / isMaster reply of the process at `me`.
pub(crate) fn hello(
    shared: &Arc<Shared>,
    me: SocketAddr,
    ctx: &ConnCtx,
    cmd: &Document,
    legacy: bool,
) -> Document {
    let w = shared.world();
    let primary_field = if legacy {
        "ismaster"
    } else {
        "isWritablePrimary"
    };
    let mut d = Document::new();
    if get_bool(cmd, "helloOk") {
        d.insert("helloOk", true);
    }
    // saslSupportedMechs comes before the common fields in mongod's reply; clients read it
    // by name. speculativeAuthenticate is not answered: drivers then run saslStart.
    let mechs = cmd
        .get_str("saslSupportedMechs")
        .ok()
        .and_then(|u| shared.auth.supported_mechs(u));
    match w.locate(me) {
        Some(Proc::Mongos) | None => {
            d.insert(primary_field, true);
            d.insert("msg", "isdbgrid");
        }
        Some(Proc::Node { set, node }) => {
            let s = &w.sets[set];
            let n = &s.nodes[node];
            if n.removed {
                // A member removed by reconfig has no config (HelloResponse::markAsNoConfig).
                d.insert("setName", s.name.clone());
                d.insert(primary_field, false);
                d.insert("secondary", false);
                d.insert("info", "Does not have a valid replica set config");
                d.insert("isreplicaset", true);
            } else {
                hello_for_member(&mut d, s, node, primary_field);
            }
            if s.role == SetRole::ConfigServer {
                d.insert("configsvr", 2);
            }
        }
    }
    d.insert("maxBsonObjectSize", MAX_BSON_OBJECT_SIZE as i32);
    d.insert("maxMessageSizeBytes", MAX_MESSAGE_SIZE as i32);
    d.insert("maxWriteBatchSize", 100_000);
    d.insert("localTime", DateTime::now());
    d.insert("logicalSessionTimeoutMinutes", 30);
    d.insert("connectionId", ctx.connection_id);
    d.insert("minWireVersion", 0);
    d.insert("maxWireVersion", w.version.max_wire_version());
    d.insert("readOnly", false);
    if let Some(m) = mechs {
        d.insert("saslSupportedMechs", m);
    }
    ok(d)
}

/// A `Date` from an OpTime's seconds, as `appendTimeT` writes lastWriteDate.
fn date_of_secs(ts: Timestamp) -> DateTime {
    DateTime::from_millis(i64::from(ts.time) * 1000)
}

/// The replica-set part of hello, in `HelloResponse::addToBSON` order, filled as
/// `TopologyCoordinator::fillHelloForReplSet` does: hidden and delayed members are in no
/// list; electable members (priority > 0) are `hosts`, arbiters `arbiters`, other
/// data-bearing members `passives`; each list only when non-empty.
fn hello_for_member(d: &mut Document, s: &SetState, node: usize, primary_field: &str) {
    let n = &s.nodes[node];
    let (mut hosts, mut passives, mut arbiters) = (Vec::new(), Vec::new(), Vec::new());
    for (_, m) in s.config_members() {
        if !m.member.listed_in_hello() {
            continue;
        }
        let host = Bson::String(m.addr.to_string());
        if m.member.is_electable() {
            hosts.push(host);
        } else if m.member.arbiter_only {
            arbiters.push(host);
        } else {
            passives.push(host);
        }
    }
    if !hosts.is_empty() {
        d.insert("hosts", hosts);
    }
    if !passives.is_empty() {
        d.insert("passives", passives);
    }
    if !arbiters.is_empty() {
        d.insert("arbiters", arbiters);
    }
    d.insert("setName", s.name.clone());
    d.insert("setVersion", s.set_version);
    // A primary in drain mode reports itself secondary until it can take writes.
    let is_primary = n.state == MemberState::Primary;
    d.insert(primary_field, n.writable_primary());
    d.insert(
        "secondary",
        n.state == MemberState::Secondary || (is_primary && n.draining),
    );
    let seen_primary = (0..s.nodes.len())
        .filter(|i| {
            s.sees(node, *i)
                && s.nodes[*i].alive
                && !s.nodes[*i].removed
                && s.nodes[*i].state == MemberState::Primary
        })
        .max_by_key(|i| s.nodes[*i].term);
    if let Some(p) = seen_primary {
        d.insert("primary", s.nodes[p].addr.to_string());
    }
    if n.member.arbiter_only {
        d.insert("arbiterOnly", true);
    } else if n.member.priority == 0.0 {
        d.insert("passive", true);
    }
    if n.member.hidden {
        d.insert("hidden", true);
    }
    if n.member.secondary_delay_secs > 0 {
        // appendNumber(long long): an int when it fits.
        match i32::try_from(n.member.secondary_delay_secs) {
            Ok(v) => d.insert("secondaryDelaySecs", v),
            Err(_) => d.insert(
                "secondaryDelaySecs",
                i64::try_from(n.member.secondary_delay_secs).unwrap_or(i64::MAX),
            ),
        };
    }
    d.insert("me", n.addr.to_string());
    if is_primary {
        d.insert("electionId", crate::world::election_id_for_term(n.term));
    }
    // lastWrite: the member's last applied optime and its committed snapshot (the commit
    // point as this member knows it, capped at what it applied), dates from the seconds.
    let (ts, t) = n.last_optime();
    let mut last_write = doc! {"opTime": optime_doc(ts, t), "lastWriteDate": date_of_secs(ts)};
    if n.misreport_commit_point {
        // Fault injection: a commit point beyond the member's own newest entry.
        let ahead = bson::Timestamp {
            time: ts.time + 1,
            increment: 1,
        };
        last_write.insert("majorityOpTime", optime_doc(ahead, t));
        last_write.insert("majorityWriteDate", date_of_secs(ahead));
    } else if let Some(c) = n.committed_snapshot() {
        last_write.insert("majorityOpTime", optime_doc(c.id.ts, c.id.t.unwrap_or(-1)));
        last_write.insert("majorityWriteDate", date_of_secs(c.id.ts));
    }
    d.insert("lastWrite", last_write);
}

fn node_of(proc: Proc) -> Result<(usize, usize), CmdError> {
    match proc {
        Proc::Node { set, node } => Ok((set, node)),
        Proc::Mongos => Err(CmdError::new(
            59,
            "CommandNotFound",
            "no such command on mongos (mongosim)",
        )),
    }
}

fn null_optime() -> Document {
    optime_doc(
        Timestamp {
            time: 0,
            increment: 0,
        },
        -1,
    )
}

pub(super) fn node_or_not_found(proc: Proc, cmd: &str) -> Result<(usize, usize), CmdError> {
    match proc {
        Proc::Node { set, node } => Ok((set, node)),
        Proc::Mongos => Err(CmdError::new(
            59,
            "CommandNotFound",
            format!("no such command: '{cmd}'"),
        )),
    }
}

/// replSetGetStatus as `TopologyCoordinator::prepareStatusResponse` shapes it (the fields
/// mongosim has a value for): the member's own view of the commit point in `optimes`, the
/// majorities of the config, and per member state, optime and sync source.
pub(super) fn repl_set_get_status(w: &World, proc: Proc) -> CmdResult {
    let (s, me) = node_or_not_found(proc, "replSetGetStatus")?;
    let set = &w.sets[s];
    let node = &set.nodes[me];
    if node.removed {
        return Err(CmdError::new(
            94,
            "NotYetInitialized",
            "Our replica set config is invalid or we are not a member of it",
        ));
    }
    let (ts, t) = node.last_optime();
    let commit = node
        .commit_point
        .as_ref()
        .map(|c| optime_doc(c.id.ts, c.id.t.unwrap_or(-1)))
        .unwrap_or_else(null_optime);
    let snapshot = node
        .committed_snapshot()
        .map(|c| optime_doc(c.id.ts, c.id.t.unwrap_or(-1)))
        .unwrap_or_else(null_optime);
    let sync_of = |i: usize| -> (String, i32) {
        match set.nodes[i].sync_source {
            Some(j) if set.nodes[i].state == MemberState::Secondary => (
                set.nodes[j].addr.to_string(),
                set.nodes[j].member.id.unwrap_or(j as i32),
            ),
            _ => (String::new(), -1),
        }
    };
    let mut members = Vec::new();
    for (i, m) in set.config_members() {
        let visible = set.sees(me, i) && m.alive;
        let (mts, mt) = m.last_optime();
        let mut md = doc! {"_id": m.member.id.unwrap_or(i as i32), "name": m.addr.to_string()};
        if visible {
            md.insert("health", 1.0);
            md.insert("state", m.state.code());
            md.insert("stateStr", m.state.name());
            md.insert("uptime", 1);
            md.insert("optime", optime_doc(mts, mt));
            md.insert("optimeDate", date_of_secs(mts));
            let (host, id) = sync_of(i);
            md.insert("syncSourceHost", host);
            md.insert("syncSourceId", id);
        } else {
            md.insert("health", 0.0);
            md.insert("state", 8);
            md.insert("stateStr", "(not reachable/healthy)");
            md.insert("uptime", 0);
            md.insert("optime", null_optime());
            md.insert("optimeDate", DateTime::from_millis(0));
        }
        md.insert("configVersion", set.set_version);
        md.insert("configTerm", set.config_term);
        if i == me {
            md.insert("self", true);
        }
        members.push(Bson::Document(md));
    }
    let maj = set.majorities();
    let (sync_host, sync_id) = sync_of(me);
    let mut d = doc! {
        "set": set.name.clone(),
        "date": DateTime::now(),
        "myState": node.state.code(),
        "term": node.term,
        "syncSourceHost": sync_host,
        "syncSourceId": sync_id,
    };
    if set.role == SetRole::ConfigServer {
        d.insert("configsvr", true);
    }
    d.insert("heartbeatIntervalMillis", 2000i64);
    d.insert("majorityVoteCount", maj.majority_vote_count as i32);
    d.insert("writeMajorityCount", maj.write_majority as i32);
    d.insert("votingMembersCount", maj.voters as i32);
    d.insert(
        "writableVotingMembersCount",
        maj.writable_voting_members as i32,
    );
    d.insert(
        "optimes",
        doc! {
            "lastCommittedOpTime": commit,
            "readConcernMajorityOpTime": snapshot,
            "appliedOpTime": optime_doc(ts, t),
            "durableOpTime": optime_doc(ts, t),
        },
    );
    d.insert("members", members);
    Ok(ok(d))
}

/// replSetGetConfig: `{config: {_id, version, term, members, protocolVersion,
/// writeConcernMajorityJournalDefault, settings}}`, members as `MemberConfig::toBSON`.
pub(super) fn repl_set_get_config(w: &World, proc: Proc) -> CmdResult {
    let (s, me) = node_or_not_found(proc, "replSetGetConfig")?;
    let set = &w.sets[s];
    if set.nodes[me].removed {
        return Err(CmdError::new(
            94,
            "NotYetInitialized",
            "Our replica set config is invalid or we are not a member of it",
        ));
    }
    Ok(ok(doc! {"config": config_doc(set, w.cfg.election_timeout)}))
}

/// The current config document of a set.
pub(crate) fn config_doc(set: &SetState, election_timeout: Duration) -> Document {
    let members: Vec<Bson> = set
        .config_members()
        .map(|(i, n)| {
            Bson::Document(
                n.member
                    .to_config_doc(n.member.id.unwrap_or(i as i32), n.addr),
            )
        })
        .collect();
    let mut cfg = doc! {
        "_id": set.name.clone(),
        "version": set.set_version,
        "term": set.config_term,
        "members": members,
        "protocolVersion": 1i64,
        "writeConcernMajorityJournalDefault": true,
    };
    if set.role == SetRole::ConfigServer {
        cfg.insert("configsvr", true);
    }
    cfg.insert(
        "settings",
        doc! {
            "chainingAllowed": true,
            "heartbeatIntervalMillis": 2000,
            "heartbeatTimeoutSecs": 10,
            "electionTimeoutMillis": i64::try_from(election_timeout.as_millis()).unwrap_or(i64::MAX),
            "catchUpTimeoutMillis": -1,
            "catchUpTakeoverDelayMillis": 30000,
            "getLastErrorModes": {},
            "getLastErrorDefaults": {"w": 1, "wtimeout": 0},
            "replicaSetId": set.replica_set_id,
        },
    );
    cfg
}

pub(super) fn step_down_cmd(shared: &Arc<Shared>, proc: Proc) -> CmdResult {
    let (s, n) = node_of(proc)?;
    {
        let mut w = shared.world();
        if w.sets[s].nodes[n].state != MemberState::Primary {
            return Err(CmdError::not_primary());
        }
        w.step_down(s, Instant::now())?;
    }
    shared.notify();
    Ok(ok(Document::new()))
}

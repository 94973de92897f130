//! Command handlers: one function per command, dispatched on the first field name.
//!
//! Replies follow mongod's shapes (looked up in mongodb/mongo: `repl/hello_response.cpp` for
//! field order, `query/cursor_response.cpp` for cursors, `s/commands/cluster_list_shards_cmd.cpp`
//! for listShards, error codes from `base/error_codes.yml`). Errors are
//! `{ok: 0, errmsg, code, codeName}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, DateTime, Document, Timestamp};

use crate::codec::{MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_SIZE};
use crate::control;
use crate::matcher;
use crate::oplog::ts_key;
use crate::server::{ConnCtx, Shared};
use crate::world::{
    bad_value, op_key, optime_doc, CmdError, Cursor, CursorKind, MemberState, Proc, SessionCtx,
    SetRole, SetState, ShardState, World,
};

const DEFAULT_FIRST_BATCH: i64 = 101;
/// Budget for documents in one reply (mongod keeps batches under 16 MB).
const BATCH_BYTES: usize = MAX_BSON_OBJECT_SIZE - 64 * 1024;
/// awaitData getMore without maxTimeMS waits one second, as mongod does.
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);

type CmdResult = Result<Document, CmdError>;

fn ok(mut d: Document) -> Document {
    d.insert("ok", 1.0);
    d
}

/// Renders an error reply.
pub(crate) fn error_doc(e: &CmdError) -> Document {
    doc! {"ok": 0.0, "errmsg": e.errmsg.clone(), "code": e.code, "codeName": e.code_name}
}

fn get_i64(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

fn get_bool(d: &Document, key: &str) -> bool {
    match d.get(key) {
        Some(Bson::Boolean(b)) => *b,
        Some(other) => get_i64(&doc! {"x": other.clone()}, "x").is_some_and(|v| v != 0),
        None => false,
    }
}

fn get_doc(d: &Document, key: &str) -> Document {
    d.get_document(key).cloned().unwrap_or_default()
}

fn type_error(field: &str, expected: &str) -> CmdError {
    CmdError::new(
        14,
        "TypeMismatch",
        format!("BSON field '{field}' is the wrong type, expected type '{expected}'"),
    )
}

/// Entry point: runs one command and renders the reply.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    me: SocketAddr,
    ctx: &ConnCtx,
    cmd: Document,
) -> Document {
    let name = cmd.keys().next().cloned().unwrap_or_default();
    let db = cmd.get_str("$db").unwrap_or("admin").to_owned();
    tracing::debug!(%me, peer = %ctx.peer, command = %name, %db, "command");
    let result = dispatch(shared, me, ctx, &name, &db, &cmd).await;
    match result {
        Ok(d) => d,
        Err(e) => error_doc(&e),
    }
}

/// Runs a command without a connection (the Rust API's `Cluster::command`).
pub(crate) async fn run_in_process(
    shared: &Arc<Shared>,
    me: SocketAddr,
    cmd: Document,
) -> Document {
    let ctx = ConnCtx {
        connection_id: 0,
        peer: me,
        kill_after_reply: Default::default(),
        auth: Default::default(),
    };
    ctx.auth.lock().unwrap_or_else(|p| p.into_inner()).trusted = true;
    let reply = handle(shared, me, &ctx, cmd).await;
    let kill = ctx
        .kill_after_reply
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(target) = kill {
        let _ = crate::cluster::kill_node(shared, target).await;
    }
    reply
}

async fn dispatch(
    shared: &Arc<Shared>,
    me: SocketAddr,
    ctx: &ConnCtx,
    name: &str,
    db: &str,
    cmd: &Document,
) -> CmdResult {
    let proc = shared
        .world()
        .locate(me)
        .ok_or_else(|| CmdError::new(91, "ShutdownInProgress", "process is shutting down"))?;
    // mongos refuses every command on the local database (s/commands/strategy.cpp).
    if proc == Proc::Mongos && db == "local" {
        return Err(CmdError::new(
            20,
            "IllegalOperation",
            "Can't use 'local' database through mongos",
        ));
    }
    {
        let mut conn = ctx.auth.lock().unwrap_or_else(|p| p.into_inner());
        match name {
            "saslStart" if shared.auth.enabled() => {
                return shared.auth.sasl_start(&mut conn, db, cmd)
            }
            "saslContinue" if shared.auth.enabled() => {
                return shared.auth.sasl_continue(&mut conn, cmd)
            }
            _ => shared.auth.authorize(&conn, name, db, cmd)?,
        }
    }
    if let Proc::Node { set, node } = proc {
        let w = shared.world();
        if w.sets[set].nodes[node].refused_commands.contains(name) {
            return Err(CmdError::new(
                13,
                "Unauthorized",
                format!("not authorized on {db} to execute command {{ {name}: 1 }} (mongosim fault injection)"),
            ));
        }
    }
    match name {
        "hello" | "isMaster" | "ismaster" => Ok(hello(shared, me, ctx, cmd, name != "hello")),
        "ping" => Ok(ok(Document::new())),
        "buildInfo" | "buildinfo" => Ok(build_info(&shared.world())),
        "endSessions" | "killAllSessions" | "refreshSessions" | "startSession" => {
            Ok(ok(Document::new()))
        }
        "getParameter" => Ok(ok(
            doc! {"featureCompatibilityVersion": {"version": shared.world().version.to_string()}},
        )),
        "serverStatus" => Ok(server_status(&shared.world(), me)),
        "replSetGetStatus" => repl_set_get_status(&shared.world(), proc),
        "replSetGetConfig" => repl_set_get_config(&shared.world(), proc),
        "replSetReconfig" => {
            let (s, n) = node_or_not_found(proc, "replSetReconfig")?;
            crate::cluster::repl_set_reconfig_cmd(shared, s, n, cmd).await
        }
        "replSetStepDown" => step_down_cmd(shared, proc),
        "find" => find(shared, proc, db, cmd),
        "getMore" => get_more(shared, proc, db, cmd).await,
        "killCursors" => kill_cursors(shared, proc, cmd),
        "insert" | "update" | "delete" => {
            let mut reply = match name {
                "insert" => insert(shared, proc, db, cmd)?,
                "update" => update(shared, proc, db, cmd)?,
                _ => delete(shared, proc, db, cmd)?,
            };
            // Through mongos, the write concern waits on the members that took the write,
            // not on whichever member is primary by the time the wait starts.
            let written = take_written(&mut reply);
            finish_write(shared, proc, cmd, reply, written.as_deref()).await
        }
        "findAndModify" | "findandmodify" => {
            let mut reply = find_and_modify(shared, proc, db, name, cmd)?;
            let written = take_written(&mut reply);
            finish_write(shared, proc, cmd, reply, written.as_deref()).await
        }
        "create" => create(shared, proc, db, cmd),
        "commitTransaction" => {
            let (reply, committed) = end_transaction(shared, proc, cmd, true)?;
            finish_write(shared, proc, cmd, reply, Some(&committed)).await
        }
        "abortTransaction" => end_transaction(shared, proc, cmd, false).map(|(r, _)| r),
        "listDatabases" => list_databases(&shared.world(), proc),
        "listCollections" => list_collections(&shared.world(), proc, db),
        "listShards" if proc == Proc::Mongos => list_shards(&shared.world()),
        "moveChunk" | "movechunk" if proc == Proc::Mongos => move_chunk_cmd(shared, cmd),
        "removeShard" | "removeshard" if proc == Proc::Mongos => {
            control::remove_shard_step(shared, cmd_str(cmd, name)?).await
        }
        "mongosimControl" => control::handle(shared, me, ctx, cmd).await,
        other => Err(CmdError::new(
            59,
            "CommandNotFound",
            format!("no such command: '{other}'"),
        )),
    }
}

fn cmd_str<'a>(cmd: &'a Document, key: &str) -> Result<&'a str, CmdError> {
    cmd.get_str(key).map_err(|_| type_error(key, "string"))
}

fn build_info(w: &World) -> Document {
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

fn server_status(w: &World, me: SocketAddr) -> Document {
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

fn node_or_not_found(proc: Proc, cmd: &str) -> Result<(usize, usize), CmdError> {
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
fn repl_set_get_status(w: &World, proc: Proc) -> CmdResult {
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
fn repl_set_get_config(w: &World, proc: Proc) -> CmdResult {
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

fn step_down_cmd(shared: &Arc<Shared>, proc: Proc) -> CmdResult {
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

/// `$readPreference` other than primary lets a secondary serve reads (OP_MSG secondaryOk).
fn secondary_ok(cmd: &Document) -> bool {
    cmd.get_document("$readPreference")
        .ok()
        .and_then(|rp| rp.get_str("mode").ok())
        .is_some_and(|m| m != "primary")
}

fn check_readable(w: &World, s: usize, n: usize, cmd: &Document) -> Result<(), CmdError> {
    if w.sets[s].nodes[n].state == MemberState::Primary || secondary_ok(cmd) {
        Ok(())
    } else {
        Err(CmdError::new(
            13435,
            "NotPrimaryNoSecondaryOk",
            "not primary and secondaryOk=false",
        ))
    }
}

struct FindArgs {
    ns: String,
    filter: Document,
    projection: Option<Document>,
    sort: Option<Document>,
    skip: usize,
    limit: Option<i64>,
    batch_size: Option<i64>,
    single_batch: bool,
    tailable: bool,
    await_data: bool,
}

/// Arguments every command accepts (mongodb/mongo `src/mongo/idl/generic_argument.idl`);
/// `$`-prefixed fields are accepted too.
const GENERIC_ARGS: &[&str] = &[
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "maxTimeMS",
    "readConcern",
    "writeConcern",
    "lsid",
    "clientOperationKey",
    "txnNumber",
    "txnRetryCounter",
    "autocommit",
    "startTransaction",
    "stmtId",
    "comment",
    "allowImplicitCollectionCreation",
    "databaseVersion",
    "shardVersion",
    "help",
    "maxTimeMSOpOnly",
    "mayBypassWriteBlocking",
    "tracking_info",
    "coordinator",
    "usesDefaultMaxTimeMS",
    "readOnly",
];

const FIND_ARGS: &[&str] = &[
    "find",
    "filter",
    "sort",
    "projection",
    "hint",
    "skip",
    "limit",
    "batchSize",
    "singleBatch",
    "max",
    "min",
    "returnKey",
    "showRecordId",
    "tailable",
    "oplogReplay",
    "noCursorTimeout",
    "awaitData",
    "allowPartialResults",
    "collation",
    "allowDiskUse",
    "let",
    "readOnce",
    "allowSpeculativeMajorityRead",
    "requestResumeToken",
    "resumeAfter",
    "startAt",
    "term",
    "includeQueryStatsMetrics",
    "rawData",
];

const GET_MORE_ARGS: &[&str] = &[
    "getMore",
    "collection",
    "batchSize",
    "term",
    "lastKnownCommittedOpTime",
    "includeQueryStatsMetrics",
    "rawData",
];

/// Rejects fields a command's IDL does not declare, as mongod 4.4+ does (code 40415).
fn check_fields(cmd: &Document, name: &str, allowed: &[&str]) -> Result<(), CmdError> {
    for key in cmd.keys() {
        if key.starts_with('$')
            || allowed.contains(&key.as_str())
            || GENERIC_ARGS.contains(&key.as_str())
        {
            continue;
        }
        return Err(CmdError::new(
            40415,
            "Location40415",
            format!("BSON field '{name}.{key}' is an unknown field."),
        ));
    }
    Ok(())
}

fn parse_find(db: &str, cmd: &Document) -> Result<FindArgs, CmdError> {
    check_fields(cmd, "FindCommandRequest", FIND_ARGS)?;
    let coll = cmd_str(cmd, "find")?;
    let mut limit = get_i64(cmd, "limit").filter(|l| *l != 0);
    let mut single_batch = get_bool(cmd, "singleBatch");
    if let Some(l) = limit {
        if l < 0 {
            limit = Some(-l);
            single_batch = true;
        }
    }
    let batch_size = get_i64(cmd, "batchSize");
    if batch_size.is_some_and(|b| b < 0) {
        return Err(CmdError::new(
            2,
            "BadValue",
            "BatchSize value must be non-negative",
        ));
    }
    let tailable = get_bool(cmd, "tailable");
    let await_data = get_bool(cmd, "awaitData");
    if await_data && !tailable {
        return Err(CmdError::new(
            2,
            "BadValue",
            "Cannot set 'awaitData' without also setting 'tailable'",
        ));
    }
    Ok(FindArgs {
        ns: format!("{db}.{coll}"),
        filter: get_doc(cmd, "filter"),
        projection: cmd
            .get_document("projection")
            .ok()
            .cloned()
            .filter(|p| !p.is_empty()),
        sort: cmd
            .get_document("sort")
            .ok()
            .cloned()
            .filter(|p| !p.is_empty()),
        skip: get_i64(cmd, "skip").unwrap_or(0).max(0) as usize,
        limit,
        batch_size,
        single_batch,
        tailable,
        await_data,
    })
}

fn cursor_reply(id: i64, ns: &str, batch: Vec<Document>, first: bool) -> Document {
    let key = if first { "firstBatch" } else { "nextBatch" };
    let batch: Vec<Bson> = batch.into_iter().map(Bson::Document).collect();
    ok(doc! {"cursor": {key: batch, "id": id, "ns": ns}})
}

/// Takes up to `n` documents (and at most [`BATCH_BYTES`]) from a buffer.
fn take_batch(buf: &mut std::collections::VecDeque<Document>, n: Option<i64>) -> Vec<Document> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(d) = buf.front() {
        if n.is_some_and(|n| out.len() as i64 >= n) {
            break;
        }
        let size = d.to_vec().map(|v| v.len()).unwrap_or(0);
        if !out.is_empty() && bytes + size > BATCH_BYTES {
            break;
        }
        bytes += size;
        if let Some(d) = buf.pop_front() {
            out.push(d);
        }
    }
    out
}

fn config_docs(w: &World, coll: &str) -> Vec<Document> {
    let Some(sh) = &w.sharding else {
        return Vec::new();
    };
    match coll {
        "shards" => shard_docs(w),
        "chunks" => {
            let mut out = Vec::new();
            for (ns, chunks) in &sh.collections {
                for c in chunks {
                    let uuid = w
                        .shard_set(&c.shard)
                        .and_then(|s| w.sets[s].uuids.get(ns).copied());
                    let mut d = doc! {
                        "_id": format!("{ns}-_id_{}", c.min),
                        "ns": ns.clone(),
                    };
                    if let Some(u) = uuid {
                        d.insert("uuid", u);
                    }
                    d.insert("min", doc! {"_id": c.min.clone()});
                    d.insert("max", doc! {"_id": c.max.clone()});
                    d.insert("shard", c.shard.clone());
                    out.push(d);
                }
            }
            out
        }
        "collections" => sh
            .collections
            .keys()
            .map(|ns| doc! {"_id": ns.clone(), "key": {"_id": 1}, "unique": false})
            .collect(),
        _ => Vec::new(),
    }
}

/// config.shards documents (also the listShards payload).
pub(crate) fn shard_docs(w: &World) -> Vec<Document> {
    let Some(sh) = &w.sharding else {
        return Vec::new();
    };
    sh.shards
        .iter()
        .filter(|x| x.state != ShardState::Removed)
        .map(|x| {
            let mut d =
                doc! {"_id": x.name.clone(), "host": w.sets[x.set].host_string(), "state": 1};
            if x.state == ShardState::Draining {
                d.insert("draining", true);
            }
            d
        })
        .collect()
}

fn filter_sort_project(mut docs: Vec<Document>, a: &FindArgs) -> Result<Vec<Document>, CmdError> {
    let mut kept = Vec::new();
    for d in docs.drain(..) {
        if matcher::matches(&d, &a.filter).map_err(bad_value)? {
            kept.push(d);
        }
    }
    if let Some(s) = &a.sort {
        matcher::sort(&mut kept, s);
    }
    let mut kept: Vec<Document> = kept.into_iter().skip(a.skip).collect();
    if let Some(l) = a.limit {
        kept.truncate(l as usize);
    }
    if let Some(p) = &a.projection {
        kept = kept.iter().map(|d| matcher::project(d, p)).collect();
    }
    Ok(kept)
}

fn find(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    let a = parse_find(db, cmd)?;
    let mut w = shared.world();
    let first_n = a.batch_size.or(Some(DEFAULT_FIRST_BATCH));
    let docs = match proc {
        Proc::Mongos => {
            if a.tailable {
                return Err(CmdError::new(
                    2,
                    "BadValue",
                    "tailable cursors are not supported through mongos by mongosim",
                ));
            }
            if db == "config" {
                config_docs(&w, cmd_str(cmd, "find")?)
            } else {
                let sh = w.sharding()?;
                let sets: Vec<usize> = sh
                    .shards
                    .iter()
                    .filter(|x| x.state != ShardState::Removed)
                    .map(|x| x.set)
                    .collect();
                let mut all = Vec::new();
                for s in sets {
                    let p = w.sets[s].sync_source().ok_or_else(|| {
                        CmdError::new(133, "FailedToSatisfyReadPreference", format!("Could not find host matching read preference {{ mode: \"primary\" }} for set {}", w.sets[s].name))
                    })?;
                    if let Some(c) = w.sets[s].nodes[p].data.get(&a.ns) {
                        // mongos filters orphans: only documents owned by this shard's chunks.
                        let shard_name = w.sets[s].name.clone();
                        let chunks = w
                            .sharding
                            .as_ref()
                            .and_then(|sh| sh.collections.get(&a.ns))
                            .cloned();
                        all.extend(
                            c.iter()
                                .filter(|d| match &chunks {
                                    Some(chunks) => d
                                        .get("_id")
                                        .and_then(|id| chunks.iter().find(|c| c.contains(id)))
                                        .is_some_and(|c| c.shard == shard_name),
                                    None => true,
                                })
                                .cloned(),
                        );
                    }
                }
                all
            }
        }
        Proc::Node { set: s, node: n } => {
            check_readable(&w, s, n, cmd)?;
            if a.ns == "local.oplog.rs" {
                return find_oplog(&mut w, s, n, &a, first_n);
            }
            if a.tailable {
                return Err(CmdError::new(
                    2,
                    "BadValue",
                    format!("error processing query: ns={} tailable cursor requested on non capped collection", a.ns),
                ));
            }
            if db == "config" && w.sets[s].role == SetRole::ConfigServer {
                config_docs(&w, cmd_str(cmd, "find")?)
            } else {
                w.sets[s].nodes[n]
                    .data
                    .get(&a.ns)
                    .map(|c| c.iter().cloned().collect())
                    .unwrap_or_default()
            }
        }
    };
    let mut buf: std::collections::VecDeque<Document> = filter_sort_project(docs, &a)?.into();
    let batch = take_batch(&mut buf, first_n);
    let id = if buf.is_empty() || a.single_batch {
        0
    } else {
        let id = w.new_cursor_id();
        let cursor = Cursor {
            ns: a.ns.clone(),
            kind: CursorKind::Buffered(buf),
            limit_remaining: None,
        };
        match proc {
            Proc::Mongos => {
                if let Some(sh) = w.sharding.as_mut() {
                    sh.cursors.insert(id, cursor);
                }
            }
            Proc::Node { set, node } => {
                w.sets[set].nodes[node].cursors.insert(id, cursor);
            }
        }
        id
    };
    Ok(cursor_reply(id, &a.ns, batch, true))
}

/// Lower bound for the scan from a `ts: {$gt|$gte: X}` filter (an optimization only: every
/// entry is still checked against the full filter).
fn scan_start(w: &World, s: usize, n: usize, filter: &Document) -> usize {
    let log = &w.sets[s].nodes[n].oplog;
    match filter.get("ts") {
        Some(Bson::Document(ops)) => {
            if let Some(Bson::Timestamp(ts)) = ops.get("$gt") {
                log.index_after(*ts)
            } else if let Some(Bson::Timestamp(ts)) = ops.get("$gte") {
                log.index_at_or_after(*ts)
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// Scans the oplog from `start`; returns the batch and the ts of the last examined entry.
fn scan_oplog(
    w: &World,
    s: usize,
    n: usize,
    start: usize,
    filter: &Document,
    projection: Option<&Document>,
    max: Option<i64>,
) -> Result<(Vec<Document>, Option<Timestamp>), CmdError> {
    let log = &w.sets[s].nodes[n].oplog;
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    for e in log.iter().skip(start) {
        if max.is_some_and(|m| out.len() as i64 >= m)
            || (!out.is_empty() && bytes + e.size > BATCH_BYTES)
        {
            break;
        }
        last = Some(e.id.ts);
        if matcher::matches(&e.doc, filter).map_err(bad_value)? {
            bytes += e.size;
            out.push(match projection {
                Some(p) => matcher::project(&e.doc, p),
                None => e.doc.clone(),
            });
        }
    }
    Ok((out, last))
}

fn find_oplog(w: &mut World, s: usize, n: usize, a: &FindArgs, first_n: Option<i64>) -> CmdResult {
    let reverse = a
        .sort
        .as_ref()
        .and_then(|s| get_i64(s, "$natural"))
        .is_some_and(|d| d < 0);
    if a.sort.as_ref().is_some_and(|s| !s.contains_key("$natural")) || reverse {
        if a.tailable {
            return Err(CmdError::new(
                2,
                "BadValue",
                "cannot use tailable option with a sort other than {$natural: 1}",
            ));
        }
        let natural_only = a.sort.as_ref().is_some_and(|s| s.len() == 1);
        let kept = if reverse && natural_only {
            // A reverse scan from the newest entry, stopping at the limit (as mongod's
            // collection scan does): "the newest entry" costs one entry, not the oplog.
            let want = a.limit.map(|l| a.skip + l.max(0) as usize);
            let mut out = Vec::new();
            for e in w.sets[s].nodes[n].oplog.iter().rev() {
                if want.is_some_and(|want| out.len() >= want) {
                    break;
                }
                if matcher::matches(&e.doc, &a.filter).map_err(bad_value)? {
                    out.push(e.doc.clone());
                }
            }
            out.into_iter()
                .skip(a.skip)
                .map(|d| match &a.projection {
                    Some(p) => matcher::project(&d, p),
                    None => d,
                })
                .collect()
        } else {
            let docs: Vec<Document> = w.sets[s].nodes[n]
                .oplog
                .iter()
                .map(|e| e.doc.clone())
                .collect();
            filter_sort_project(docs, a)?
        };
        let mut buf: std::collections::VecDeque<Document> = kept.into();
        let batch = take_batch(&mut buf, first_n);
        let id = if buf.is_empty() || a.single_batch {
            0
        } else {
            let id = w.new_cursor_id();
            w.sets[s].nodes[n].cursors.insert(
                id,
                Cursor {
                    ns: a.ns.clone(),
                    kind: CursorKind::Buffered(buf),
                    limit_remaining: None,
                },
            );
            id
        };
        return Ok(cursor_reply(id, &a.ns, batch, true));
    }
    if a.tailable && w.sets[s].nodes[n].oplog.is_empty() {
        // A tailable find on an empty capped collection returns cursor id 0.
        return Ok(cursor_reply(0, &a.ns, Vec::new(), true));
    }
    let start = scan_start(w, s, n, &a.filter) + a.skip;
    let max = match (first_n, a.limit) {
        (Some(b), Some(l)) => Some(b.min(l)),
        (b, l) => b.or(l),
    };
    let (batch, last) = scan_oplog(w, s, n, start, &a.filter, a.projection.as_ref(), max)?;
    let last_ts = last.or_else(|| {
        // Nothing examined: position at the entry before the scan start (or the newest).
        let log = &w.sets[s].nodes[n].oplog;
        start
            .checked_sub(1)
            .and_then(|i| log.get(i))
            .map(|e| e.id.ts)
    });
    let limit_remaining = a.limit.map(|l| l - batch.len() as i64);
    let exhausted_limit = limit_remaining.is_some_and(|r| r <= 0);
    if a.tailable {
        if exhausted_limit || a.single_batch {
            return Ok(cursor_reply(0, &a.ns, batch, true));
        }
        let id = w.new_cursor_id();
        w.sets[s].nodes[n].cursors.insert(
            id,
            Cursor {
                ns: a.ns.clone(),
                kind: CursorKind::Tail {
                    filter: a.filter.clone(),
                    projection: a.projection.clone(),
                    last_ts,
                    await_data: a.await_data,
                },
                limit_remaining,
            },
        );
        return Ok(cursor_reply(id, &a.ns, batch, true));
    }
    // Non-tailable oplog scan: materialize the rest.
    let log = &w.sets[s].nodes[n].oplog;
    let resume = match last_ts {
        Some(ts) => log.index_after(ts),
        None => log.len(),
    };
    let rest_args = FindArgs {
        ns: a.ns.clone(),
        filter: a.filter.clone(),
        projection: a.projection.clone(),
        sort: None,
        skip: 0,
        limit: limit_remaining,
        batch_size: None,
        single_batch: false,
        tailable: false,
        await_data: false,
    };
    let rest = if exhausted_limit {
        // The limit is reached (a `limit: 1` probe): nothing more to copy.
        Vec::new()
    } else {
        let rest_docs: Vec<Document> = log.iter().skip(resume).map(|e| e.doc.clone()).collect();
        filter_sort_project(rest_docs, &rest_args)?
    };
    if rest.is_empty() || a.single_batch {
        return Ok(cursor_reply(0, &a.ns, batch, true));
    }
    let id = w.new_cursor_id();
    w.sets[s].nodes[n].cursors.insert(
        id,
        Cursor {
            ns: a.ns.clone(),
            kind: CursorKind::Buffered(rest.into()),
            limit_remaining: None,
        },
    );
    Ok(cursor_reply(id, &a.ns, batch, true))
}

enum Step {
    Reply(Document),
    Wait {
        deadline: tokio::time::Instant,
        epoch: u64,
    },
}

async fn get_more(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    let id = match cmd.get("getMore") {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        _ => return Err(type_error("getMore", "long")),
    };
    check_fields(cmd, "getMore", GET_MORE_ARGS)?;
    let coll = cmd_str(cmd, "collection")?;
    let ns = format!("{db}.{coll}");
    let batch_size = get_i64(cmd, "batchSize").filter(|b| *b > 0);
    let max_time = get_i64(cmd, "maxTimeMS").map(|ms| Duration::from_millis(ms.max(0) as u64));
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut start_epoch: Option<u64> = None;
    loop {
        let mut rx = shared.changes.subscribe();
        let step = {
            let mut w = shared.world();
            get_more_step(
                &mut w,
                proc,
                id,
                &ns,
                batch_size,
                max_time,
                &mut deadline,
                &mut start_epoch,
            )?
        };
        match step {
            Step::Reply(d) => return Ok(d),
            Step::Wait { deadline, epoch } => {
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                if let Proc::Node { set, node } = proc {
                    let mut w = shared.world();
                    if w.sets[set].nodes[node].epoch != epoch {
                        w.sets[set].nodes[node].cursors.remove(&id);
                        w.sets[set].nodes[node].dead_cursors.remove(&id);
                        return Err(CmdError::new(
                            11602,
                            "InterruptedDueToReplStateChange",
                            "operation was interrupted because of a replication state change (rollback)",
                        ));
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn get_more_step(
    w: &mut World,
    proc: Proc,
    id: i64,
    ns: &str,
    batch_size: Option<i64>,
    max_time: Option<Duration>,
    deadline: &mut Option<tokio::time::Instant>,
    start_epoch: &mut Option<u64>,
) -> Result<Step, CmdError> {
    let not_found = || CmdError::new(43, "CursorNotFound", format!("cursor id {id} not found"));
    let (s, n) = match proc {
        Proc::Mongos => {
            let sh = w.sharding.as_mut().ok_or_else(not_found)?;
            let cursor = sh.cursors.get_mut(&id).ok_or_else(not_found)?;
            let CursorKind::Buffered(buf) = &mut cursor.kind else {
                return Err(not_found());
            };
            let batch = take_batch(buf, batch_size);
            let done = buf.is_empty();
            if done {
                sh.cursors.remove(&id);
            }
            return Ok(Step::Reply(cursor_reply(
                if done { 0 } else { id },
                ns,
                batch,
                false,
            )));
        }
        Proc::Node { set, node } => (set, node),
    };
    if let Some(e) = w.sets[s].nodes[n].dead_cursors.remove(&id) {
        return Err(e);
    }
    let epoch = w.sets[s].nodes[n].epoch;
    start_epoch.get_or_insert(epoch);
    let cursor = w.sets[s].nodes[n]
        .cursors
        .get(&id)
        .cloned()
        .ok_or_else(not_found)?;
    if cursor.ns != ns {
        return Err(CmdError::new(
            13,
            "Unauthorized",
            format!("Requested getMore on namespace '{ns}', but cursor belongs to a different namespace {}", cursor.ns),
        ));
    }
    match cursor.kind {
        CursorKind::Buffered(mut buf) => {
            let batch = take_batch(&mut buf, batch_size);
            let node = &mut w.sets[s].nodes[n];
            let done = buf.is_empty();
            if done {
                node.cursors.remove(&id);
            } else if let Some(c) = node.cursors.get_mut(&id) {
                c.kind = CursorKind::Buffered(buf);
            }
            Ok(Step::Reply(cursor_reply(
                if done { 0 } else { id },
                ns,
                batch,
                false,
            )))
        }
        CursorKind::Tail {
            filter,
            projection,
            last_ts,
            await_data,
        } => {
            let log = &w.sets[s].nodes[n].oplog;
            let lost = match (log.first(), last_ts) {
                (_, None) => false,
                (Some(first), Some(lt)) => ts_key(first.id.ts) > ts_key(lt),
                (None, Some(_)) => true,
            };
            if let (true, Some(last_ts)) = (lost, last_ts) {
                w.sets[s].nodes[n].cursors.remove(&id);
                let record_id = (i64::from(last_ts.time) << 32) | i64::from(last_ts.increment);
                return Err(CmdError::new(
                    136,
                    "CappedPositionLost",
                    format!("Executor error during getMore :: caused by :: CollectionScan died due to position in capped collection being deleted. Last seen record id: RecordId({record_id})"),
                ));
            }
            let start = match last_ts {
                Some(lt) => log.index_after(lt),
                None => scan_start(w, s, n, &filter),
            };
            let max = match (batch_size, cursor.limit_remaining) {
                (Some(b), Some(l)) => Some(b.min(l)),
                (b, l) => b.or(l),
            };
            let (batch, last) = scan_oplog(w, s, n, start, &filter, projection.as_ref(), max)?;
            let limit_remaining = cursor.limit_remaining.map(|l| l - batch.len() as i64);
            let node = &mut w.sets[s].nodes[n];
            if let Some(c) = node.cursors.get_mut(&id) {
                if let CursorKind::Tail { last_ts: lt, .. } = &mut c.kind {
                    if last.is_some() {
                        *lt = last;
                    }
                }
                c.limit_remaining = limit_remaining;
            }
            if limit_remaining.is_some_and(|r| r <= 0) {
                node.cursors.remove(&id);
                return Ok(Step::Reply(cursor_reply(0, ns, batch, false)));
            }
            if !batch.is_empty() || !await_data {
                return Ok(Step::Reply(cursor_reply(id, ns, batch, false)));
            }
            let now = tokio::time::Instant::now();
            let dl = *deadline.get_or_insert(now + max_time.unwrap_or(DEFAULT_AWAIT));
            if now >= dl {
                return Ok(Step::Reply(cursor_reply(id, ns, batch, false)));
            }
            Ok(Step::Wait {
                deadline: dl,
                epoch: start_epoch.unwrap_or(epoch),
            })
        }
    }
}

fn kill_cursors(shared: &Arc<Shared>, proc: Proc, cmd: &Document) -> CmdResult {
    let ids: Vec<i64> = cmd
        .get_array("cursors")
        .map_err(|_| type_error("cursors", "array"))?
        .iter()
        .filter_map(|b| match b {
            Bson::Int64(v) => Some(*v),
            Bson::Int32(v) => Some(i64::from(*v)),
            _ => None,
        })
        .collect();
    let mut w = shared.world();
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    for id in ids {
        let removed = match proc {
            Proc::Mongos => w
                .sharding
                .as_mut()
                .and_then(|sh| sh.cursors.remove(&id))
                .is_some(),
            Proc::Node { set, node } => {
                let nd = &mut w.sets[set].nodes[node];
                nd.cursors.remove(&id).is_some() || nd.dead_cursors.remove(&id).is_some()
            }
        };
        if removed {
            killed.push(Bson::Int64(id));
        } else {
            not_found.push(Bson::Int64(id));
        }
    }
    Ok(ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
    }))
}

fn documents(cmd: &Document, key: &str) -> Result<Vec<Document>, CmdError> {
    cmd.get_array(key)
        .map_err(|_| type_error(key, "array"))?
        .iter()
        .map(|b| match b {
            Bson::Document(d) => Ok(d.clone()),
            _ => Err(type_error(key, "object")),
        })
        .collect()
}

fn write_error(index: usize, e: &CmdError) -> Bson {
    Bson::Document(doc! {"index": index as i32, "code": e.code, "errmsg": e.errmsg.clone()})
}

/// Which set/node a write goes to: the node itself, or (mongos) the owning shard's primary.
fn route(w: &mut World, ns: &str, id: Option<&Bson>) -> Result<Vec<(usize, usize)>, CmdError> {
    let chunks = w.chunks_for(ns);
    let shards: Vec<String> = match id {
        Some(id) => chunks
            .iter()
            .find(|c| c.contains(id))
            .map(|c| vec![c.shard.clone()])
            .unwrap_or_default(),
        None => {
            let mut v: Vec<String> = chunks.iter().map(|c| c.shard.clone()).collect();
            v.sort();
            v.dedup();
            v
        }
    };
    let mut out = Vec::new();
    for shard in shards {
        let s = w.shard_set(&shard).ok_or_else(|| {
            CmdError::new(70, "ShardNotFound", format!("Shard {shard} not found"))
        })?;
        let p = w.sets[s].sync_source().ok_or_else(CmdError::not_primary)?;
        out.push((s, p));
    }
    Ok(out)
}

/// Where a write through mongos was applied, carried from the write handlers to the write
/// concern wait under a field no client sees.
const WRITTEN: &str = "$mongosimWritten";

fn note_written(reply: &mut Document, written: &[(usize, usize)]) {
    if !written.is_empty() {
        let list: Vec<Bson> = written
            .iter()
            .map(|(s, n)| Bson::Array(vec![Bson::Int64(*s as i64), Bson::Int64(*n as i64)]))
            .collect();
        reply.insert(WRITTEN, list);
    }
}

fn take_written(reply: &mut Document) -> Option<Vec<(usize, usize)>> {
    let Some(Bson::Array(list)) = reply.remove(WRITTEN) else {
        return None;
    };
    let mut out: Vec<(usize, usize)> = list
        .iter()
        .filter_map(|v| match v {
            Bson::Array(p) => match (p.first(), p.get(1)) {
                (Some(Bson::Int64(s)), Some(Bson::Int64(n))) => Some((*s as usize, *n as usize)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    Some(out)
}

fn check_user_ns(db: &str, proc: Proc) -> Result<(), CmdError> {
    if db == "local" && proc != Proc::Mongos {
        return Err(CmdError::new(
            20,
            "IllegalOperation",
            "mongosim does not accept writes to the local database",
        ));
    }
    Ok(())
}

fn insert(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    check_user_ns(db, proc)?;
    let ns = format!("{db}.{}", cmd_str(cmd, "insert")?);
    let docs = documents(cmd, "documents")?;
    let ordered = cmd.get_bool("ordered").unwrap_or(true);
    let now = Instant::now();
    let session = SessionCtx::from_command(cmd);
    let txn = txn_key_of(cmd);
    let mut w = shared.world();
    let mut n_ok = 0;
    let mut errors = Vec::new();
    let mut written: Vec<(usize, usize)> = Vec::new();
    // A time-series collection: measurements go to buckets on the set that holds it.
    let ts_target = match proc {
        Proc::Node { set, node } => w.timeseries_options(set, &ns).map(|_| (set, node)),
        Proc::Mongos => match (0..w.sets.len()).find(|&s| w.timeseries_options(s, &ns).is_some()) {
            Some(s) => Some((
                s,
                w.sets[s].sync_source().ok_or_else(CmdError::not_primary)?,
            )),
            None => None,
        },
    };
    if let Some((s, p)) = ts_target {
        enter_statement(&mut w, &session, &txn, 0);
        if txn.is_some() {
            w.capture = None;
            w.session = None;
            return Err(CmdError::new(
                263,
                "OperationNotSupportedInTransaction",
                format!("Cannot insert into a time-series collection in a multi-document transaction: {ns}"),
            ));
        }
        if proc == Proc::Mongos {
            written.push((s, p));
        }
        match w.insert_timeseries(s, p, &ns, docs, now) {
            Ok(c) => n_ok += c,
            Err((c, e)) => {
                n_ok += c;
                errors.push(write_error(c, &e));
            }
        }
    } else {
        match proc {
            Proc::Node { set, node } => {
                w.check_writable(set, node)?;
                for (i, d) in docs.into_iter().enumerate() {
                    enter_statement(&mut w, &session, &txn, i);
                    match w.insert(set, node, &ns, vec![d], false, now) {
                        Ok(c) => n_ok += c,
                        Err((_, e)) => {
                            errors.push(write_error(i, &e));
                            if ordered {
                                break;
                            }
                        }
                    }
                }
            }
            Proc::Mongos => {
                for (i, mut d) in docs.into_iter().enumerate() {
                    enter_statement(&mut w, &session, &txn, i);
                    if !d.contains_key("_id") {
                        let mut with_id = doc! {"_id": bson::oid::ObjectId::new()};
                        with_id.extend(d);
                        d = with_id;
                    }
                    let id = d.get("_id").cloned();
                    let r = route(&mut w, &ns, id.as_ref()).and_then(|targets| {
                        let (s, p) = targets.first().copied().ok_or_else(|| {
                            CmdError::new(70, "ShardNotFound", "no shard owns the key")
                        })?;
                        written.push((s, p));
                        w.insert(s, p, &ns, vec![d], false, now).map_err(|(_, e)| e)
                    });
                    match r {
                        Ok(c) => n_ok += c,
                        Err(e) => {
                            errors.push(write_error(i, &e));
                            if ordered {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    flush_capture(&mut w);
    w.session = None;
    drop(w);
    shared.notify();
    let mut reply = doc! {"n": n_ok as i32};
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    let mut reply = ok(reply);
    note_written(&mut reply, &written);
    Ok(reply)
}

/// Honours `writeConcern: {w: "majority" | N, wtimeout}` by waiting until the newest entry
/// of every written set is held by enough members; on timeout the reply carries a
/// `writeConcernError` (64 WriteConcernFailed) as mongod's does. `w: 1` (the default)
/// returns at once.
/// Waits for the command's write concern. `at`: the nodes that wrote the command's
/// entries (a commitTransaction through mongos logs on the nodes holding the transaction,
/// which need not be the shard's current primary): their newest entries are waited for,
/// and the wait fails when one of them steps down or loses its entry, as on mongod.
async fn finish_write(
    shared: &Arc<Shared>,
    proc: Proc,
    cmd: &Document,
    mut reply: Document,
    at: Option<&[(usize, usize)]>,
) -> CmdResult {
    let wc = cmd.get_document("writeConcern").ok();
    let needed = match wc.and_then(|d| d.get("w")) {
        Some(Bson::String(m)) if m == "majority" => Some(0usize),
        Some(Bson::Int32(n)) if *n > 1 => Some(*n as usize),
        Some(Bson::Int64(n)) if *n > 1 => Some(*n as usize),
        Some(Bson::Double(n)) if *n > 1.0 => Some(*n as usize),
        _ => None,
    };
    let Some(needed) = needed else {
        return Ok(reply);
    };
    let timeout = wc.and_then(|d| get_i64(d, "wtimeout")).filter(|t| *t > 0);
    let deadline = tokio::time::Instant::now()
        + timeout.map_or(Duration::from_secs(365 * 24 * 3600), |ms| {
            Duration::from_millis(ms as u64)
        });
    // (set, node that wrote it, entry).
    let targets: Vec<(usize, usize, crate::oplog::EntryId)> = {
        let w = shared.world();
        match proc {
            _ if at.is_some() => at
                .unwrap_or_default()
                .iter()
                .filter_map(|(s, n)| w.sets[*s].nodes[*n].oplog.last().map(|e| (*s, *n, e.id)))
                .collect(),
            Proc::Node { set, node } => w.sets[set].nodes[node]
                .oplog
                .last()
                .map(|e| vec![(set, node, e.id)])
                .unwrap_or_default(),
            Proc::Mongos => w
                .sharding
                .iter()
                .flat_map(|sh| {
                    sh.shards
                        .iter()
                        .filter(|x| x.state != ShardState::Removed)
                        .map(|x| x.set)
                })
                .filter_map(|s| {
                    let p = w.sets[s].sync_source()?;
                    w.sets[s].nodes[p].oplog.last().map(|e| (s, p, e.id))
                })
                .collect(),
        }
    };
    loop {
        let mut rx = shared.changes.subscribe();
        let done = {
            let w = shared.world();
            targets.iter().all(|(s, n, id)| {
                let set = &w.sets[*s];
                if needed == 0 {
                    // w: "majority" waits for the writer's commit point to pass the entry
                    // (on its branch: the writer still holds it), and for the entry to be
                    // in the set's committed history, so that an acknowledged write is
                    // never one the ground truth later reports rolled back.
                    let writer = &set.nodes[*n];
                    writer.oplog.contains(id)
                        && writer
                            .commit_point
                            .as_ref()
                            .is_some_and(|c| op_key(&c.id) >= op_key(id))
                        && set
                            .committed
                            .iter()
                            .rev()
                            .take_while(|e| e.id.ts >= id.ts)
                            .any(|e| e.id == *id)
                } else {
                    // w: N counts data-bearing members that hold it, voting or not.
                    set.config_members()
                        .filter(|(_, m)| m.oplog.contains(id))
                        .count()
                        >= needed
                }
            })
        };
        if done {
            return Ok(reply);
        }
        let interrupted = {
            let w = shared.world();
            match proc {
                _ if at.is_some() => at.unwrap_or_default().iter().any(|(s, n)| {
                    let n = &w.sets[*s].nodes[*n];
                    n.state != MemberState::Primary
                        || targets
                            .iter()
                            .any(|(ts, _, id)| ts == s && !n.oplog.contains(id))
                }),
                Proc::Node { set, node } => {
                    let n = &w.sets[set].nodes[node];
                    n.state != MemberState::Primary
                        || targets.iter().any(|(_, _, id)| !n.oplog.contains(id))
                }
                // Through mongos: the shard primary that wrote it stepped down or lost it.
                Proc::Mongos => targets.iter().any(|(s, n, id)| {
                    let n = &w.sets[*s].nodes[*n];
                    n.state != MemberState::Primary || !n.oplog.contains(id)
                }),
            }
        };
        if interrupted {
            reply.insert(
                "writeConcernError",
                doc! {
                    "code": 11602,
                    "codeName": "InterruptedDueToReplStateChange",
                    "errmsg": "operation was interrupted because the node stepped down while waiting for replication",
                },
            );
            return Ok(reply);
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                reply.insert("writeConcernError", doc! {
                    "code": 64,
                    "codeName": "WriteConcernFailed",
                    "errmsg": "waiting for replication timed out",
                    "errInfo": {"wtimeout": true},
                });
                return Ok(reply);
            }
        }
    }
}

/// The transaction a write belongs to (`autocommit: false` with lsid and txnNumber).
fn txn_key_of(cmd: &Document) -> Option<String> {
    if cmd.get_bool("autocommit").ok() != Some(false) {
        return None;
    }
    let (lsid, txn) = SessionCtx::lsid_and_txn(cmd)?;
    Some(crate::world::txn_key(lsid.get("id")?, txn))
}

/// Moves operations captured inside a transaction to the nodes' transaction buffers.
fn flush_capture(w: &mut World) {
    let captured = w.capture.take();
    let key = w.txn_key.take();
    if let (Some(ops), Some(key)) = (captured, key) {
        for (s, n, op) in ops {
            w.sets[s].nodes[n]
                .txns
                .entry(key.clone())
                .or_default()
                .push(op);
        }
    }
}

/// commitTransaction / abortTransaction: log (or drop) the buffered operations on every
/// node that holds some for this transaction (through mongos: every shard touched; a
/// multi-shard commit is logged per shard without two-phase commit). Also returns the
/// nodes that logged a commit (their entries are what the write concern waits for).
fn end_transaction(
    shared: &Arc<Shared>,
    proc: Proc,
    cmd: &Document,
    commit: bool,
) -> Result<(Document, Vec<(usize, usize)>), CmdError> {
    let (lsid, txn) = SessionCtx::lsid_and_txn(cmd).ok_or_else(|| {
        CmdError::new(
            50768,
            "Location50768",
            "Given transaction number does not match any in-progress transactions.",
        )
    })?;
    let key = crate::world::txn_key(lsid.get("id").unwrap_or(&Bson::Null), txn);
    let now = Instant::now();
    let mut committed = Vec::new();
    {
        let mut w = shared.world();
        let nodes: Vec<(usize, usize)> = match proc {
            Proc::Node { set, node } => {
                w.check_writable(set, node)?;
                vec![(set, node)]
            }
            Proc::Mongos => (0..w.sets.len())
                .flat_map(|s| (0..w.sets[s].nodes.len()).map(move |n| (s, n)))
                .collect(),
        };
        for (s, n) in nodes {
            if !w.sets[s].nodes[n].txns.contains_key(&key) {
                continue;
            }
            if commit {
                if w.sets[s].nodes[n].state != MemberState::Primary {
                    return Err(CmdError::not_primary());
                }
                w.commit_transaction(s, n, &key, &lsid, txn, now);
                committed.push((s, n));
            } else {
                w.sets[s].nodes[n].txns.remove(&key);
            }
        }
    }
    shared.notify();
    Ok((ok(Document::new()), committed))
}

/// Marks the statement being executed for retryable-write oplog fields.
fn enter_statement(
    w: &mut World,
    session: &Option<SessionCtx>,
    txn: &Option<String>,
    index: usize,
) {
    // Set only here, inside the statement loop, so that an early error return can never
    // leave a capture behind for the next command.
    if w.capture.is_none() && txn.is_some() {
        w.capture = Some(Vec::new());
        w.txn_key = txn.clone();
    }
    if let Some(sess) = session {
        let prev = w.session.take().map(|s| s.prev).unwrap_or_default();
        w.session = Some(SessionCtx {
            stmt_id: index as i32,
            prev,
            ..sess.clone()
        });
    }
}

fn id_of_filter(q: &Document) -> Option<&Bson> {
    match q.get("_id") {
        Some(Bson::Document(d)) if d.keys().any(|k| k.starts_with('$')) => d.get("$eq"),
        other => other,
    }
}

fn update(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    check_user_ns(db, proc)?;
    let ns = format!("{db}.{}", cmd_str(cmd, "update")?);
    let updates = documents(cmd, "updates")?;
    let now = Instant::now();
    let session = SessionCtx::from_command(cmd);
    let txn = txn_key_of(cmd);
    let mut w = shared.world();
    let mut written: Vec<(usize, usize)> = Vec::new();
    if let Proc::Node { set, node } = proc {
        w.check_writable(set, node)?;
    }
    let (mut n, mut n_modified) = (0usize, 0usize);
    let mut upserted = Vec::new();
    let mut errors = Vec::new();
    for (i, st) in updates.iter().enumerate() {
        enter_statement(&mut w, &session, &txn, i);
        let q = get_doc(st, "q");
        let u = match st.get("u") {
            Some(Bson::Document(u)) => u.clone(),
            _ => {
                errors.push(write_error(
                    i,
                    &CmdError::new(
                        9,
                        "FailedToParse",
                        "mongosim supports only document updates, not pipelines",
                    ),
                ));
                break;
            }
        };
        let multi = get_bool(st, "multi");
        let upsert = get_bool(st, "upsert");
        let targets = match proc {
            Proc::Node { set, node } => Ok(vec![(set, node)]),
            Proc::Mongos => {
                let id = id_of_filter(&q).cloned().or_else(|| {
                    if upsert {
                        u.get("_id").cloned()
                    } else {
                        None
                    }
                });
                route(&mut w, &ns, id.as_ref())
            }
        };
        let r = targets.and_then(|targets| {
            let mut acc = (0, 0, None);
            for (s, p) in targets {
                if proc == Proc::Mongos {
                    written.push((s, p));
                }
                let (m, md, up) = w.update(s, p, &ns, &q, &u, multi, upsert, now)?;
                acc.0 += m;
                acc.1 += md;
                acc.2 = acc.2.or(up);
            }
            Ok(acc)
        });
        match r {
            Ok((m, md, up)) => {
                n += m;
                n_modified += md;
                if let Some(id) = up {
                    n += 1;
                    upserted.push(Bson::Document(doc! {"index": i as i32, "_id": id}));
                }
            }
            Err(e) => {
                errors.push(write_error(i, &e));
                break;
            }
        }
    }
    flush_capture(&mut w);
    w.session = None;
    drop(w);
    shared.notify();
    let mut reply = doc! {"n": n as i32, "nModified": n_modified as i32};
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    let mut reply = ok(reply);
    note_written(&mut reply, &written);
    Ok(reply)
}

fn delete(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    check_user_ns(db, proc)?;
    let ns = format!("{db}.{}", cmd_str(cmd, "delete")?);
    let deletes = documents(cmd, "deletes")?;
    let now = Instant::now();
    let session = SessionCtx::from_command(cmd);
    let txn = txn_key_of(cmd);
    let mut w = shared.world();
    let mut written: Vec<(usize, usize)> = Vec::new();
    if let Proc::Node { set, node } = proc {
        w.check_writable(set, node)?;
    }
    let mut n = 0;
    let mut errors = Vec::new();
    for (i, st) in deletes.iter().enumerate() {
        enter_statement(&mut w, &session, &txn, i);
        let q = get_doc(st, "q");
        let limit_one = get_i64(st, "limit").unwrap_or(0) == 1;
        let targets = match proc {
            Proc::Node { set, node } => Ok(vec![(set, node)]),
            Proc::Mongos => route(&mut w, &ns, id_of_filter(&q)),
        };
        let r = targets.and_then(|targets| {
            let mut count = 0;
            for (s, p) in targets {
                if proc == Proc::Mongos {
                    written.push((s, p));
                }
                count += w.delete(s, p, &ns, &q, limit_one, false, now)?;
                if limit_one && count > 0 {
                    break;
                }
            }
            Ok(count)
        });
        match r {
            Ok(c) => n += c,
            Err(e) => {
                errors.push(write_error(i, &e));
                break;
            }
        }
    }
    flush_capture(&mut w);
    w.session = None;
    drop(w);
    shared.notify();
    let mut reply = doc! {"n": n as i32};
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    let mut reply = ok(reply);
    note_written(&mut reply, &written);
    Ok(reply)
}

/// findAndModify: `query`, `update` (a document) or `remove: true`, `new`, `upsert`.
/// `sort`, `fields`, `arrayFilters` and pipeline updates are refused by name.
fn find_and_modify(
    shared: &Arc<Shared>,
    proc: Proc,
    db: &str,
    name: &str,
    cmd: &Document,
) -> CmdResult {
    check_user_ns(db, proc)?;
    let ns = format!("{db}.{}", cmd_str(cmd, name)?);
    for unsupported in ["sort", "fields", "arrayFilters"] {
        if cmd.get_document(unsupported).is_ok_and(|d| !d.is_empty())
            || cmd.get_array(unsupported).is_ok_and(|a| !a.is_empty())
        {
            return Err(CmdError::new(
                9,
                "FailedToParse",
                format!("mongosim's findAndModify does not support '{unsupported}'"),
            ));
        }
    }
    let q = get_doc(cmd, "query");
    let remove = get_bool(cmd, "remove");
    let update = match cmd.get("update") {
        Some(Bson::Document(u)) => Some(u.clone()),
        Some(_) => {
            return Err(CmdError::new(
                9,
                "FailedToParse",
                "mongosim's findAndModify supports only document updates, not pipelines",
            ))
        }
        None => None,
    };
    if remove == update.is_some() {
        return Err(CmdError::new(
            9,
            "FailedToParse",
            "Either an update or remove=true must be specified",
        ));
    }
    let return_new = get_bool(cmd, "new");
    let upsert = get_bool(cmd, "upsert");
    let now = Instant::now();
    let session = SessionCtx::from_command(cmd);
    let txn = txn_key_of(cmd);
    let mut w = shared.world();
    enter_statement(&mut w, &session, &txn, 0);
    let targets = match proc {
        Proc::Node { set, node } => Ok(vec![(set, node)]),
        Proc::Mongos => {
            let id = id_of_filter(&q).cloned();
            route(&mut w, &ns, id.as_ref())
        }
    };
    let mut written = Vec::new();
    let r = targets.and_then(|targets| {
        let mut last = (None, 0, false, None);
        for (s, p) in targets {
            written.push((s, p));
            last = w.find_and_modify(s, p, &ns, &q, update.as_ref(), return_new, upsert, now)?;
            if last.1 > 0 {
                break;
            }
        }
        Ok(last)
    });
    flush_capture(&mut w);
    w.session = None;
    w.retry_image = crate::world::RetryImage::default();
    drop(w);
    shared.notify();
    let (value, n, updated_existing, upserted) = r?;
    let mut last_error = doc! {"n": n as i32};
    if update.is_some() {
        last_error.insert("updatedExisting", updated_existing);
    }
    if let Some(id) = upserted {
        last_error.insert("upserted", id);
    }
    let mut reply = ok(doc! {
        "lastErrorObject": last_error,
        "value": value.map(Bson::Document).unwrap_or(Bson::Null),
    });
    if proc == Proc::Mongos {
        note_written(&mut reply, &written);
    }
    Ok(reply)
}

fn create(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    check_user_ns(db, proc)?;
    let ns = format!("{db}.{}", cmd_str(cmd, "create")?);
    let now = Instant::now();
    let mut w = shared.world();
    if let Some(ts) = cmd.get("timeseries") {
        let Bson::Document(ts) = ts else {
            return Err(type_error("timeseries", "object"));
        };
        let opts = crate::timeseries::TsOptions::parse(ts)?;
        // An unsharded time-series collection lives on one shard: the first that owns
        // chunks of the buckets namespace (mongosim's stand-in for the primary shard).
        let (s, n) = match proc {
            Proc::Node { set, node } => (set, node),
            Proc::Mongos => route(&mut w, &crate::timeseries::buckets_ns(&ns), None)?
                .first()
                .copied()
                .ok_or_else(|| CmdError::new(70, "ShardNotFound", "no shard to create on"))?,
        };
        w.create_timeseries(s, n, &ns, opts, now)?;
        drop(w);
        shared.notify();
        return Ok(ok(Document::new()));
    }
    match proc {
        Proc::Node { set, node } => {
            w.check_writable(set, node)?;
            w.ensure_collection(set, node, &ns, false, now);
        }
        Proc::Mongos => {
            for (s, p) in route(&mut w, &ns, None)? {
                w.ensure_collection(s, p, &ns, false, now);
            }
        }
    }
    drop(w);
    shared.notify();
    Ok(ok(Document::new()))
}

fn list_databases(w: &World, proc: Proc) -> CmdResult {
    let mut names: Vec<String> = match proc {
        Proc::Node { set, node } => {
            let mut v: Vec<String> = w.sets[set].nodes[node]
                .data
                .keys()
                .filter_map(|ns| ns.split('.').next().map(str::to_owned))
                .collect();
            v.push("local".into());
            v
        }
        Proc::Mongos => w
            .sets
            .iter()
            .filter(|s| s.role == SetRole::Shard && !s.removed)
            .filter_map(|s| s.sync_source().map(|p| &s.nodes[p]))
            .flat_map(|n| {
                n.data
                    .keys()
                    .filter_map(|ns| ns.split('.').next().map(str::to_owned))
            })
            .chain(["config".to_owned()])
            .collect(),
    };
    names.push("admin".into());
    names.sort();
    names.dedup();
    let dbs: Vec<Bson> = names
        .into_iter()
        .map(|n| Bson::Document(doc! {"name": n, "sizeOnDisk": 8192i64, "empty": false}))
        .collect();
    Ok(ok(doc! {"databases": dbs, "totalSize": 8192i64}))
}

fn list_collections(w: &World, proc: Proc, db: &str) -> CmdResult {
    let mut names: Vec<(String, bool)> = Vec::new();
    match proc {
        Proc::Node { set, node } => {
            for ns in w.sets[set].nodes[node].data.keys() {
                if let Some((d, c)) = ns.split_once('.') {
                    if d == db {
                        names.push((c.to_owned(), false));
                    }
                }
            }
            if db == "local" {
                names.push(("oplog.rs".to_owned(), true));
            }
        }
        Proc::Mongos => {
            for s in w
                .sets
                .iter()
                .filter(|s| s.role == SetRole::Shard && !s.removed)
            {
                if let Some(p) = s.sync_source() {
                    for ns in s.nodes[p].data.keys() {
                        if let Some((d, c)) = ns.split_once('.') {
                            if d == db {
                                names.push((c.to_owned(), false));
                            }
                        }
                    }
                }
            }
        }
    }
    names.sort();
    names.dedup();
    let batch: Vec<Bson> = names
        .into_iter()
        .map(|(n, capped)| {
            let options = if capped { doc! {"capped": true} } else { Document::new() };
            Bson::Document(doc! {"name": n, "type": "collection", "options": options, "info": {"readOnly": false}})
        })
        .collect();
    Ok(ok(
        doc! {"cursor": {"id": 0i64, "ns": format!("{db}.$cmd.listCollections"), "firstBatch": batch}},
    ))
}

fn list_shards(w: &World) -> CmdResult {
    let shards: Vec<Bson> = shard_docs(w).into_iter().map(Bson::Document).collect();
    Ok(ok(doc! {"shards": shards}))
}

fn move_chunk_cmd(shared: &Arc<Shared>, cmd: &Document) -> CmdResult {
    let ns = cmd
        .get_str("moveChunk")
        .or_else(|_| cmd.get_str("movechunk"))
        .map_err(|_| type_error("moveChunk", "string"))?
        .to_owned();
    let to = cmd_str(cmd, "to")?.to_owned();
    let key = match cmd.get_document("find") {
        Ok(f) => f.get("_id").cloned().unwrap_or(Bson::MinKey),
        Err(_) => match cmd.get_array("bounds") {
            Ok(b) => b
                .first()
                .and_then(|b| b.as_document())
                .and_then(|d| d.get("_id").cloned())
                .unwrap_or(Bson::MinKey),
            Err(_) => {
                return Err(CmdError::new(
                    9,
                    "FailedToParse",
                    "need either find or bounds",
                ))
            }
        },
    };
    {
        let mut w = shared.world();
        w.move_chunk(&ns, &key, &to, Instant::now())?;
    }
    shared.notify();
    Ok(ok(doc! {"millis": 0}))
}

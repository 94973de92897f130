//! Command handlers: one function per command, dispatched on the first field name.
//!
//! Replies follow mongod's shapes (looked up in mongodb/mongo: `repl/hello_response.cpp` for
//! field order, `query/cursor_response.cpp` for cursors, `s/commands/cluster_list_shards_cmd.cpp`
//! for listShards, error codes from `base/error_codes.yml`). Errors are
//! `{ok: 0, errmsg, code, codeName}`.
//!
//! This file holds the entry points, the dispatcher (with the authentication and
//! fault-injection checks every command passes first) and small argument helpers; the
//! handlers are grouped in submodules:
//!
//! - `commands/hello.rs`: hello / isMaster, buildInfo, serverStatus, replSetGetStatus,
//!   replSetGetConfig, replSetStepDown;
//! - `commands/find.rs`: find on collections, the config catalog and through mongos;
//! - `commands/tail.rs`: finds on the oplog, getMore (awaitData), killCursors;
//! - `commands/writes.rs`: insert, update, delete, findAndModify and the write concern wait;
//! - `commands/txn.rs`: transactions and retryable-write statements;
//! - `commands/catalog.rs`: create, listDatabases, listCollections, listShards, moveChunk;
//! - `commands/ddl.rs`: drop, dropDatabase, renameCollection, createIndexes, dropIndexes,
//!   collMod, shardCollection, enableSharding;
//! - `commands/resharding.rs`: reshardCollection, moveCollection, unshardCollection,
//!   movePrimary.
//!
//! `mongosimControl` is handled by [`crate::control`], SASL by [`crate::auth`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};

use crate::codec::MAX_BSON_OBJECT_SIZE;
use crate::control;
use crate::error::CmdError;
use crate::runtime::{ConnCtx, Shared};
use crate::world::Proc;

mod catalog;
mod ddl;
mod find;
mod hello;
mod resharding;
mod tail;
mod two_phase;
mod txn;
mod vectored;
mod writes;

use catalog::{create, list_collections, list_databases, list_shards, move_chunk_cmd};
use find::find;
pub(crate) use hello::hello;
use hello::{
    build_info, node_or_not_found, repl_set_get_config, repl_set_get_status, server_status,
    step_down_cmd,
};
use tail::{get_more, kill_cursors};
use txn::end_transaction;
use writes::{delete, find_and_modify, finish_write, insert, take_written, update};

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
        let _ = crate::ops::kill_node(shared, target).await;
    }
    reply
}

/// Waits while reads of the command's namespace are held (`Cluster::hold_reads`, like
/// mongod's `waitInFindBeforeMakingBatch` fail point with an `nss`), or until shutdown.
async fn wait_while_held(shared: &Arc<Shared>, name: &str, db: &str, cmd: &Document) {
    let coll = match name {
        "find" => cmd.get_str("find").ok(),
        _ => cmd.get_str("collection").ok(),
    };
    let Some(coll) = coll else { return };
    let ns = format!("{db}.{coll}");
    let mut rx = shared.read_hold.subscribe();
    tokio::select! {
        _ = rx.wait_for(|h| {
            !h.as_ref()
                .is_some_and(|(held, get_more_only)| *held == ns && (name == "getMore" || !get_more_only))
        }) => {}
        _ = shared.shutdown.cancelled() => {}
    }
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
    if matches!(proc, Proc::Node { .. }) && matches!(name, "find" | "getMore") {
        wait_while_held(shared, name, db, cmd).await;
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
            crate::ops::repl_set_reconfig_cmd(shared, s, n, cmd).await
        }
        "replSetStepDown" => step_down_cmd(shared, proc),
        "find" => {
            find::wait_for_read_concern(shared, proc, cmd).await?;
            find(shared, proc, db, cmd)
        }
        "getMore" => get_more(shared, proc, db, cmd).await,
        "count" => find::count(&shared.world(), proc, db, cmd),
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
        "create" | "drop" | "dropDatabase" | "renameCollection" | "createIndexes"
        | "dropIndexes" | "deleteIndexes" | "collMod" => {
            // DDL honours its write concern like a write: on the members that logged it.
            let before = writes::heads(&shared.world());
            let reply = match name {
                "create" => create(shared, proc, db, cmd)?,
                "drop" => ddl::drop(shared, proc, db, cmd)?,
                "dropDatabase" => ddl::drop_database(shared, proc, db, cmd)?,
                "renameCollection" => ddl::rename_collection(shared, proc, db, cmd)?,
                "createIndexes" => ddl::create_indexes(shared, proc, db, cmd)?,
                "collMod" => ddl::coll_mod(shared, proc, db, cmd)?,
                _ => ddl::drop_indexes(shared, proc, db, name, cmd)?,
            };
            let written = writes::written_since(&shared.world(), &before);
            finish_write(shared, proc, cmd, reply, Some(&written)).await
        }
        "shardCollection" | "shardcollection" if proc == Proc::Mongos => {
            ddl::shard_collection(shared, db, cmd)
        }
        "enableSharding" | "enablesharding" if proc == Proc::Mongos => {
            ddl::enable_sharding(shared, db, cmd)
        }
        "reshardCollection" if proc == Proc::Mongos => {
            resharding::reshard_collection(shared, db, cmd).await
        }
        "moveCollection" if proc == Proc::Mongos => {
            resharding::move_collection(shared, db, cmd).await
        }
        "unshardCollection" if proc == Proc::Mongos => {
            resharding::unshard_collection(shared, db, cmd).await
        }
        "movePrimary" | "moveprimary" if proc == Proc::Mongos => {
            resharding::move_primary(shared, db, cmd)
        }
        "commitTransaction" => txn::commit(shared, proc, cmd).await,
        "abortTransaction" => end_transaction(shared, proc, cmd, false).map(|(r, _)| r),
        "setParameter" => set_parameter(shared, db, cmd),
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

/// `setParameter` (admin): only `minSnapshotHistoryWindowInSeconds` is simulated; the
/// answers follow mongod's `src/mongo/db/commands/parameters.cpp` (`was` = the previous
/// value; 72 InvalidOptions for a parameter it does not register or no parameter at all).
fn set_parameter(shared: &Arc<Shared>, db: &str, cmd: &Document) -> CmdResult {
    if db != "admin" {
        return Err(CmdError::new(
            13,
            "Unauthorized",
            "setParameter may only be run against the admin database.",
        ));
    }
    let mut reply = Document::new();
    let mut found = false;
    for (name, value) in cmd {
        if name == "setParameter"
            || name.starts_with('$')
            || find::GENERIC_ARGS.contains(&name.as_str())
        {
            continue;
        }
        found = true;
        if name != "minSnapshotHistoryWindowInSeconds" {
            return Err(CmdError::new(
                72,
                "InvalidOptions",
                format!("attempted to set unrecognized parameter [{name}], use help:true to see options "),
            ));
        }
        let secs = match value {
            Bson::Int32(v) if *v >= 0 => *v as u32,
            Bson::Int64(v) if *v >= 0 => u32::try_from(*v).unwrap_or(u32::MAX),
            Bson::Double(v) if *v >= 0.0 => *v as u32,
            _ => {
                return Err(CmdError::new(
                    2,
                    "BadValue",
                    format!("Invalid value for minSnapshotHistoryWindowInSeconds: {value}"),
                ))
            }
        };
        let mut w = shared.world();
        reply.insert("was", w.snapshot_window_secs as i32);
        w.snapshot_window_secs = secs;
    }
    if !found {
        return Err(CmdError::new(
            72,
            "InvalidOptions",
            "no option found to set, use help:true to see options ",
        ));
    }
    Ok(ok(reply))
}

//! `reshardCollection` (5.0+), `moveCollection` and `unshardCollection` (8.0) and
//! `movePrimary` on mongos (admin). The entries each shard logs are built in
//! `world/resharding.rs`; this layer parses the commands, checks the version, and runs
//! the two halves of a resharding operation with the world's lock released between them,
//! so that writes through mongos land on the donors while the collection is copied
//! (`World::hold_resharding` keeps it open until a test has written).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};

use super::{ok, type_error, CmdResult};
use crate::error::CmdError;
use crate::runtime::Shared;
use crate::version::ServerVersion;
use crate::world::{ReshardProvenance, World};

fn admin_only(db: &str, name: &str) -> Result<(), CmdError> {
    if db == "admin" {
        Ok(())
    } else {
        Err(CmdError::new(
            13,
            "Unauthorized",
            format!("{name} may only be run against the admin database."),
        ))
    }
}

fn not_found(name: &str) -> CmdError {
    CmdError::new(59, "CommandNotFound", format!("no such command: '{name}'"))
}

/// A user collection's namespace from the command's first field.
fn user_ns(cmd: &Document, name: &str) -> Result<String, CmdError> {
    let ns = cmd.get_str(name).map_err(|_| type_error(name, "string"))?;
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    if coll.is_empty() || coll.starts_with("system.") {
        return Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("Invalid namespace specified '{ns}'"),
        ));
    }
    if matches!(db, "admin" | "config" | "local") {
        return Err(CmdError::new(
            20,
            "IllegalOperation",
            format!("mongosim reshards collections of application databases only, not {ns}"),
        ));
    }
    Ok(ns.to_owned())
}

/// A shard key pattern: a non-empty document whose values are 1 or "hashed".
fn shard_key(cmd: &Document) -> Result<Document, CmdError> {
    let key = cmd
        .get_document("key")
        .map_err(|_| type_error("key", "object"))?
        .clone();
    let valid = |v: &Bson| match v {
        Bson::Int32(1) | Bson::Int64(1) => true,
        Bson::Double(d) => *d == 1.0,
        Bson::String(s) => s == "hashed",
        _ => false,
    };
    if key.is_empty() || !key.values().all(valid) {
        return Err(CmdError::new(
            2,
            "BadValue",
            format!("Unsupported shard key pattern {key}: each field must be 1 or \"hashed\""),
        ));
    }
    Ok(key)
}

fn opt_str(cmd: &Document, field: &str) -> Result<Option<String>, CmdError> {
    match cmd.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(type_error(field, "string")),
    }
}

/// Waits until `ready` holds, on the world's change notifications.
async fn wait_until(shared: &Arc<Shared>, ready: impl Fn(&World) -> bool) {
    loop {
        let mut rx = shared.changes.subscribe();
        if ready(&shared.world()) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
}

/// Runs one resharding operation: begin (clone), the hold, then the cut-over.
async fn reshard(
    shared: &Arc<Shared>,
    ns: &str,
    provenance: ReshardProvenance,
    key: Document,
    to_shard: Option<String>,
    num_initial_chunks: Option<i64>,
) -> CmdResult {
    {
        let mut w = shared.world();
        w.reshard_begin(
            ns,
            provenance,
            key,
            to_shard.as_deref(),
            num_initial_chunks,
            Instant::now(),
        )?;
    }
    shared.notify();
    wait_until(shared, |w| !w.hold_resharding).await;
    let result = shared.world().reshard_commit(ns, Instant::now());
    shared.notify();
    result.map(|()| ok(Document::new()))
}

/// `{reshardCollection: ns, key, unique?, numInitialChunks?, ...}` (5.0+).
pub(super) async fn reshard_collection(
    shared: &Arc<Shared>,
    db: &str,
    cmd: &Document,
) -> CmdResult {
    if shared.world().version < ServerVersion::V5_0 {
        return Err(not_found("reshardCollection"));
    }
    admin_only(db, "reshardCollection")?;
    let ns = user_ns(cmd, "reshardCollection")?;
    let key = shard_key(cmd)?;
    if super::get_bool(cmd, "unique") {
        return Err(CmdError::new(
            72,
            "InvalidOptions",
            "mongosim reshards onto non-unique shard keys only",
        ));
    }
    let chunks = match cmd.get("numInitialChunks") {
        None | Some(Bson::Null) => None,
        Some(_) => Some(
            super::get_i64(cmd, "numInitialChunks")
                .ok_or_else(|| type_error("numInitialChunks", "long"))?,
        ),
    };
    reshard(
        shared,
        &ns,
        ReshardProvenance::ReshardCollection,
        key,
        None,
        chunks,
    )
    .await
}

/// `{moveCollection: ns, toShard}` (8.0).
pub(super) async fn move_collection(shared: &Arc<Shared>, db: &str, cmd: &Document) -> CmdResult {
    if shared.world().version < ServerVersion::V8_0 {
        return Err(not_found("moveCollection"));
    }
    admin_only(db, "moveCollection")?;
    let ns = user_ns(cmd, "moveCollection")?;
    let to = opt_str(cmd, "toShard")?.ok_or_else(|| {
        CmdError::new(
            40414,
            "IDLFailedToParse",
            "BSON field 'moveCollection.toShard' is missing but a required field",
        )
    })?;
    reshard(
        shared,
        &ns,
        ReshardProvenance::MoveCollection,
        doc! {"_id": 1},
        Some(to),
        Some(1),
    )
    .await
}

/// `{unshardCollection: ns, toShard?}` (8.0). Without `toShard` mongosim moves the
/// collection to its database's primary shard.
pub(super) async fn unshard_collection(
    shared: &Arc<Shared>,
    db: &str,
    cmd: &Document,
) -> CmdResult {
    if shared.world().version < ServerVersion::V8_0 {
        return Err(not_found("unshardCollection"));
    }
    admin_only(db, "unshardCollection")?;
    let ns = user_ns(cmd, "unshardCollection")?;
    let to = match opt_str(cmd, "toShard")? {
        Some(t) => t,
        None => {
            let sdb = ns.split('.').next().unwrap_or_default().to_owned();
            shared
                .world()
                .db_primary(&sdb)
                .ok_or_else(|| CmdError::new(70, "ShardNotFound", "no active shard"))?
        }
    };
    reshard(
        shared,
        &ns,
        ReshardProvenance::UnshardCollection,
        doc! {"_id": 1},
        Some(to),
        Some(1),
    )
    .await
}

/// `{movePrimary: db, to: shard}`.
pub(super) fn move_primary(shared: &Arc<Shared>, db: &str, cmd: &Document) -> CmdResult {
    admin_only(db, "movePrimary")?;
    let target = cmd
        .get_str("movePrimary")
        .or_else(|_| cmd.get_str("moveprimary"))
        .map_err(|_| type_error("movePrimary", "string"))?
        .to_owned();
    if target.is_empty()
        || target.contains('.')
        || matches!(target.as_str(), "admin" | "config" | "local")
    {
        return Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("invalid db name specified: {target}"),
        ));
    }
    let to = opt_str(cmd, "to")?.ok_or_else(|| {
        CmdError::new(
            40414,
            "IDLFailedToParse",
            "BSON field 'movePrimary.to' is missing but a required field",
        )
    })?;
    let result = shared.world().move_primary(&target, &to, Instant::now());
    shared.notify();
    result?;
    Ok(ok(Document::new()))
}

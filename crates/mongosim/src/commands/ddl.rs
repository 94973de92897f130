//! DDL commands: drop, dropDatabase, renameCollection, createIndexes, dropIndexes, collMod,
//! and mongos' shardCollection and enableSharding. On a replica set member each logs what
//! mongod logs (`world/ddl.rs`); through mongos each runs on the shards MongoDB's router or
//! DDL coordinator sends it to, per simulated version (the crate documentation lists the
//! shapes and where each was looked up):
//!
//! | command | shards | `fromMigrate` |
//! |---|---|---|
//! | drop | every shard holding the collection, the primary shard last (5.0+) | on non-primary shards from 6.0 |
//! | renameCollection | every shard (5.0+; 4.4 refuses sharded collections) | on non-primary shards from 7.0 |
//! | dropDatabase | each collection dropped as above, then the primary shard, then the others that held it (5.0+; 4.4: the primary only) | none |
//! | createIndexes, dropIndexes, collMod | shards owning chunks | none |
//! | create | the primary shard | none |
//! | shardCollection | the primary shard (`create` if needed; 6.0+ a `shardCollection` no-op) | none |

use std::sync::Arc;
use std::time::Instant;

use bson::{doc, Bson, Document};

use super::find::GENERIC_ARGS;
use super::writes::route;
use super::{cmd_str, ok, type_error, CmdResult};
use crate::error::CmdError;
use crate::runtime::Shared;
use crate::version::ServerVersion;
use crate::world::{Proc, ShardState, World};

/// The command's own fields: neither its name, nor generic arguments, nor `$`-fields.
pub(super) fn own_fields(cmd: &Document, name: &str) -> Document {
    cmd.iter()
        .filter(|(k, _)| {
            k.as_str() != name && !k.starts_with('$') && !GENERIC_ARGS.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn coll_arg<'a>(cmd: &'a Document, name: &str) -> Result<&'a str, CmdError> {
    let coll = cmd_str(cmd, name)?;
    if coll.is_empty() {
        return Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("Invalid namespace specified for {name}"),
        ));
    }
    Ok(coll)
}

fn user_db(db: &str) -> Result<(), CmdError> {
    if matches!(db, "admin" | "config" | "local") {
        return Err(CmdError::new(
            20,
            "IllegalOperation",
            format!("mongosim simulates DDL on application databases only, not on {db}"),
        ));
    }
    Ok(())
}

/// `(shard name, set, primary node)` of every active shard, in catalog order.
fn shard_primaries(w: &World) -> Result<Vec<(String, usize, usize)>, CmdError> {
    let sh = w.sharding()?;
    let mut out = Vec::new();
    for x in sh.shards.iter().filter(|x| x.state != ShardState::Removed) {
        let p = w.sets[x.set]
            .sync_source()
            .ok_or_else(CmdError::not_primary)?;
        out.push((x.name.clone(), x.set, p));
    }
    Ok(out)
}

/// The database's primary shard: `(name, set, primary node)`.
fn primary_shard(w: &mut World, db: &str) -> Result<(String, usize, usize), CmdError> {
    let name = w
        .db_primary(db)
        .ok_or_else(|| CmdError::new(70, "ShardNotFound", "no active shard"))?;
    let s = w
        .shard_set(&name)
        .ok_or_else(|| CmdError::new(70, "ShardNotFound", format!("Shard {name} not found")))?;
    let p = w.sets[s].sync_source().ok_or_else(CmdError::not_primary)?;
    Ok((name, s, p))
}

/// The drop participants of a sharded collection: every shard but the primary, then the
/// primary (which must drop last); `fromMigrate` on the others from 6.0.
fn drop_everywhere(w: &mut World, ns: &str, now: Instant) -> Result<bool, CmdError> {
    let db = ns.split('.').next().unwrap_or(ns);
    let (primary, ps, pp) = primary_shard(w, db)?;
    let others: Vec<(String, usize, usize)> = shard_primaries(w)?
        .into_iter()
        .filter(|(name, _, _)| *name != primary)
        .collect();
    let mark = w.version >= ServerVersion::V6_0;
    let mut any = false;
    for (_, s, p) in others {
        any |= w.drop_collection(s, p, ns, mark, now);
    }
    any |= w.drop_collection(ps, pp, ns, false, now);
    if let Some(sh) = w.sharding.as_mut() {
        sh.collections.remove(ns);
        sh.keys.remove(ns);
        sh.unsplittable.remove(ns);
    }
    Ok(any)
}

pub(super) fn drop(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    user_db(db)?;
    let ns = format!("{db}.{}", coll_arg(cmd, "drop")?);
    let now = Instant::now();
    let mut w = shared.world();
    let reply = match proc {
        Proc::Node { set, node } => {
            w.check_writable(set, node)?;
            let indexes = w.sets[set]
                .catalog
                .get(&ns)
                .map_or(0, |m| m.indexes.len() as i32);
            if !w.drop_collection(set, node, &ns, false, now) {
                return Err(CmdError::new(26, "NamespaceNotFound", "ns not found"));
            }
            doc! {"nIndexesWas": indexes + 1, "ns": ns}
        }
        Proc::Mongos => {
            drop_everywhere(&mut w, &ns, now)?;
            Document::new()
        }
    };
    drop_guard(w, shared);
    Ok(ok(reply))
}

fn drop_guard(w: std::sync::MutexGuard<'_, World>, shared: &Arc<Shared>) {
    std::mem::drop(w);
    shared.notify();
}

pub(super) fn drop_database(
    shared: &Arc<Shared>,
    proc: Proc,
    db: &str,
    _cmd: &Document,
) -> CmdResult {
    user_db(db)?;
    let now = Instant::now();
    let mut w = shared.world();
    match proc {
        Proc::Node { set, node } => {
            w.check_writable(set, node)?;
            let held = !w.collections_of(set, node, db).is_empty();
            w.drop_database_local(set, node, db, held, now);
        }
        Proc::Mongos => {
            let shards = shard_primaries(&w)?;
            let mut held: Vec<bool> = Vec::new();
            let mut colls: Vec<String> = Vec::new();
            for (_, s, p) in &shards {
                let c = w.collections_of(*s, *p, db);
                held.push(!c.is_empty());
                colls.extend(c);
            }
            colls.sort();
            colls.dedup();
            let (primary, ps, pp) = primary_shard(&mut w, db)?;
            for ns in &colls {
                drop_everywhere(&mut w, ns, now)?;
            }
            let primary_held = shards
                .iter()
                .zip(&held)
                .any(|((name, _, _), h)| *name == primary && *h);
            w.drop_database_local(ps, pp, db, primary_held, now);
            if w.version >= ServerVersion::V5_0 {
                for ((name, s, p), h) in shards.iter().zip(&held) {
                    if *name != primary {
                        w.drop_database_local(*s, *p, db, *h, now);
                    }
                }
            }
            if let Some(sh) = w.sharding.as_mut() {
                sh.databases.remove(db);
                let prefix = format!("{db}.");
                sh.collections.retain(|ns, _| !ns.starts_with(&prefix));
                sh.keys.retain(|ns, _| !ns.starts_with(&prefix));
                sh.unsplittable.retain(|ns| !ns.starts_with(&prefix));
            }
        }
    }
    drop_guard(w, shared);
    Ok(ok(doc! {"dropped": db}))
}

pub(super) fn rename_collection(
    shared: &Arc<Shared>,
    proc: Proc,
    db: &str,
    cmd: &Document,
) -> CmdResult {
    if db != "admin" {
        return Err(CmdError::new(
            13,
            "Unauthorized",
            "renameCollection may only be run against the admin database.",
        ));
    }
    let from = cmd_str(cmd, "renameCollection")?.to_owned();
    let to = cmd_str(cmd, "to")?.to_owned();
    let (from_db, from_coll) = from.split_once('.').unwrap_or((&from, ""));
    let (to_db, to_coll) = to.split_once('.').unwrap_or((&to, ""));
    if from_coll.is_empty() || to_coll.is_empty() {
        return Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("Invalid namespace specified '{from}' or '{to}'"),
        ));
    }
    user_db(from_db)?;
    if from_db != to_db {
        return Err(CmdError::new(
            20,
            "IllegalOperation",
            "mongosim renames collections within one database only",
        ));
    }
    let drop_target = super::get_bool(cmd, "dropTarget");
    let now = Instant::now();
    let mut w = shared.world();
    match proc {
        Proc::Node { set, node } => {
            w.rename_collection(set, node, &from, &to, drop_target, false, false, now)?;
        }
        Proc::Mongos => {
            let sharded = w
                .sharding
                .as_ref()
                .is_some_and(|sh| sh.collections.contains_key(&from));
            if sharded && w.version < ServerVersion::V5_0 {
                return Err(CmdError::new(
                    20,
                    "IllegalOperation",
                    format!("cannot rename sharded collection '{from}'"),
                ));
            }
            let shards = shard_primaries(&w)?;
            if !shards
                .iter()
                .any(|(_, s, p)| w.has_collection(*s, *p, &from))
            {
                return Err(CmdError::new(
                    26,
                    "NamespaceNotFound",
                    format!("Source collection {from} does not exist"),
                ));
            }
            if !drop_target && shards.iter().any(|(_, s, p)| w.has_collection(*s, *p, &to)) {
                return Err(CmdError::new(
                    48,
                    "NamespaceExists",
                    "target namespace exists",
                ));
            }
            let (primary, _, _) = primary_shard(&mut w, from_db)?;
            let mark = w.version >= ServerVersion::V7_0;
            for (name, s, p) in &shards {
                w.rename_collection(
                    *s,
                    *p,
                    &from,
                    &to,
                    true,
                    true,
                    mark && *name != primary,
                    now,
                )?;
            }
            if let Some(sh) = w.sharding.as_mut() {
                sh.collections.remove(&to);
                sh.keys.remove(&to);
                sh.unsplittable.remove(&to);
                if let Some(chunks) = sh.collections.remove(&from) {
                    sh.collections.insert(to.clone(), chunks);
                }
                if let Some(key) = sh.keys.remove(&from) {
                    sh.keys.insert(to.clone(), key);
                }
                if sh.unsplittable.remove(&from) {
                    sh.unsplittable.insert(to.clone());
                }
            }
        }
    }
    drop_guard(w, shared);
    Ok(ok(Document::new()))
}

/// Where an index or collMod command goes through mongos: the shards owning chunks of
/// the collection (`scatterGatherVersionedTargetByRoutingTable` with an empty query).
fn chunk_owners(w: &mut World, ns: &str) -> Result<Vec<(usize, usize)>, CmdError> {
    route(w, ns, None)
}

fn raw_key(w: &World, s: usize) -> String {
    w.sets[s].host_string()
}

pub(super) fn create_indexes(
    shared: &Arc<Shared>,
    proc: Proc,
    db: &str,
    cmd: &Document,
) -> CmdResult {
    user_db(db)?;
    let ns = format!("{db}.{}", coll_arg(cmd, "createIndexes")?);
    let specs: Vec<Document> = match cmd.get("indexes") {
        Some(Bson::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| match v {
                Bson::Document(d) => Ok(d.clone()),
                _ => Err(type_error("indexes", "object")),
            })
            .collect::<Result<_, _>>()?,
        Some(Bson::Array(_)) => {
            return Err(CmdError::new(
                2,
                "BadValue",
                "Must specify at least one index to create",
            ))
        }
        _ => return Err(type_error("indexes", "array")),
    };
    let now = Instant::now();
    let mut w = shared.world();
    let reply_of = |(created, before, after): (bool, i32, i32)| {
        let mut r = doc! {
            "createdCollectionAutomatically": created,
            "numIndexesBefore": before,
            "numIndexesAfter": after,
        };
        if before == after {
            r.insert("note", "all indexes already exist");
        }
        r
    };
    let reply = match proc {
        Proc::Node { set, node } => reply_of(w.create_indexes(set, node, &ns, &specs, now)?),
        Proc::Mongos => {
            let mut raw = Document::new();
            for (s, p) in chunk_owners(&mut w, &ns)? {
                let r = reply_of(w.create_indexes(s, p, &ns, &specs, now)?);
                raw.insert(raw_key(&w, s), r);
            }
            doc! {"raw": raw}
        }
    };
    drop_guard(w, shared);
    Ok(ok(reply))
}

pub(super) fn drop_indexes(
    shared: &Arc<Shared>,
    proc: Proc,
    db: &str,
    name: &str,
    cmd: &Document,
) -> CmdResult {
    user_db(db)?;
    let ns = format!("{db}.{}", coll_arg(cmd, name)?);
    let index = cmd.get("index").cloned().ok_or_else(|| {
        CmdError::new(
            40414,
            "Location40414",
            "BSON field 'dropIndexes.index' is missing but a required field",
        )
    })?;
    let now = Instant::now();
    let mut w = shared.world();
    let reply = match proc {
        Proc::Node { set, node } => {
            doc! {"nIndexesWas": w.drop_indexes(set, node, &ns, &index, now)?}
        }
        Proc::Mongos => {
            let targets: Vec<(usize, usize)> = chunk_owners(&mut w, &ns)?
                .into_iter()
                .filter(|(s, p)| w.has_collection(*s, *p, &ns))
                .collect();
            if targets.is_empty() {
                return Err(CmdError::new(
                    26,
                    "NamespaceNotFound",
                    format!("ns not found {ns}"),
                ));
            }
            let mut raw = Document::new();
            for (s, p) in targets {
                let was = w.drop_indexes(s, p, &ns, &index, now)?;
                raw.insert(raw_key(&w, s), doc! {"nIndexesWas": was, "ok": 1.0});
            }
            doc! {"raw": raw}
        }
    };
    drop_guard(w, shared);
    Ok(ok(reply))
}

pub(super) fn coll_mod(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    user_db(db)?;
    let ns = format!("{db}.{}", coll_arg(cmd, "collMod")?);
    let fields = own_fields(cmd, "collMod");
    let now = Instant::now();
    let mut w = shared.world();
    match proc {
        Proc::Node { set, node } => w.coll_mod(set, node, &ns, &fields, now)?,
        Proc::Mongos => {
            let targets: Vec<(usize, usize)> = chunk_owners(&mut w, &ns)?
                .into_iter()
                .filter(|(s, p)| w.has_collection(*s, *p, &ns))
                .collect();
            if targets.is_empty() {
                return Err(CmdError::new(
                    26,
                    "NamespaceNotFound",
                    format!("ns does not exist: {ns}"),
                ));
            }
            for (s, p) in targets {
                w.coll_mod(s, p, &ns, &fields, now)?;
            }
        }
    }
    drop_guard(w, shared);
    Ok(ok(Document::new()))
}

/// `create` with options (time-series collections are handled by the caller): on a
/// member, or through mongos on the database's primary shard.
pub(super) fn create_plain(
    shared: &Arc<Shared>,
    proc: Proc,
    ns: &str,
    cmd: &Document,
) -> CmdResult {
    let options = own_fields(cmd, "create");
    let now = Instant::now();
    let mut w = shared.world();
    let (s, n) = match proc {
        Proc::Node { set, node } => (set, node),
        Proc::Mongos => {
            let db = ns.split('.').next().unwrap_or(ns);
            let (_, s, p) = primary_shard(&mut w, db)?;
            (s, p)
        }
    };
    w.create_with_options(s, n, ns, options, now)?;
    drop_guard(w, shared);
    Ok(ok(Document::new()))
}

/// `enableSharding` (mongos, admin): registers a database, optionally on a chosen primary
/// shard (`primaryShard`).
pub(super) fn enable_sharding(shared: &Arc<Shared>, db: &str, cmd: &Document) -> CmdResult {
    if db != "admin" {
        return Err(CmdError::new(
            13,
            "Unauthorized",
            "enableSharding may only be run against the admin database.",
        ));
    }
    let name = cmd
        .get_str("enableSharding")
        .or_else(|_| cmd.get_str("enablesharding"))
        .map_err(|_| type_error("enableSharding", "string"))?
        .to_owned();
    user_db(&name)?;
    let primary = match cmd.get("primaryShard") {
        None => None,
        Some(Bson::String(p)) => Some(p.clone()),
        Some(_) => return Err(type_error("primaryShard", "string")),
    };
    let mut w = shared.world();
    w.register_database(&name, primary.as_deref())?;
    drop_guard(w, shared);
    Ok(ok(Document::new()))
}

/// `shardCollection` (mongos, admin) on `{_id: 1}`: the primary shard creates the
/// collection if needed, the chunks are laid out, and from 6.0 the primary shard logs the
/// `shardCollection` notification. Sharding an already sharded collection again is a
/// no-op.
pub(super) fn shard_collection(shared: &Arc<Shared>, db: &str, cmd: &Document) -> CmdResult {
    if db != "admin" {
        return Err(CmdError::new(
            13,
            "Unauthorized",
            "shardCollection may only be run against the admin database.",
        ));
    }
    let ns = cmd
        .get_str("shardCollection")
        .or_else(|_| cmd.get_str("shardcollection"))
        .map_err(|_| type_error("shardCollection", "string"))?
        .to_owned();
    let (sdb, coll) = ns.split_once('.').unwrap_or((&ns, ""));
    if coll.is_empty() {
        return Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("Invalid namespace specified '{ns}'"),
        ));
    }
    user_db(sdb)?;
    let key = cmd
        .get_document("key")
        .map_err(|_| type_error("key", "object"))?
        .clone();
    let ranged_id = key.len() == 1
        && matches!(
            key.get("_id"),
            Some(Bson::Int32(1) | Bson::Int64(1)) | Some(Bson::Double(_))
        );
    if !ranged_id {
        return Err(CmdError::new(
            72,
            "InvalidOptions",
            format!("mongosim shards collections on {{_id: 1}} only, not on {key}"),
        ));
    }
    let unique = super::get_bool(cmd, "unique");
    let now = Instant::now();
    let mut w = shared.world();
    if w.sharding()?.collections.contains_key(&ns) {
        drop_guard(w, shared);
        return Ok(ok(doc! {"collectionsharded": ns}));
    }
    let (_, s, p) = primary_shard(&mut w, sdb)?;
    w.ensure_collection(s, p, &ns, false, now);
    w.chunks_for(&ns);
    if w.version >= ServerVersion::V6_0 {
        let request = doc! {
            "shardKey": key,
            "unique": unique,
            "numInitialChunks": 0i64,
            "presplitHashedZones": false,
        };
        w.log_shard_collection(s, p, &ns, request, now);
    }
    drop_guard(w, shared);
    Ok(ok(doc! {"collectionsharded": ns}))
}

//! Write commands: insert, update, delete and findAndModify on a member or routed by
//! mongos, and the write concern wait that follows them (`finish_write`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};

use super::txn::{enter_statement, flush_capture, txn_key_of};
use super::{cmd_str, get_bool, get_doc, get_i64, ok, type_error, CmdResult};
use crate::error::CmdError;
use crate::runtime::Shared;
use crate::world::{op_key, MemberState, Proc, SessionCtx, ShardState, World};

pub(super) fn documents(cmd: &Document, key: &str) -> Result<Vec<Document>, CmdError> {
    cmd.get_array(key)
        .map_err(|_| type_error(key, "array"))?
        .iter()
        .map(|b| match b {
            Bson::Document(d) => Ok(d.clone()),
            _ => Err(type_error(key, "object")),
        })
        .collect()
}

pub(super) fn write_error(index: usize, e: &CmdError) -> Bson {
    Bson::Document(doc! {"index": index as i32, "code": e.code, "errmsg": e.errmsg.clone()})
}

/// Which set/node a write goes to: the node itself, or (mongos) the owning shard's primary.
pub(super) fn route(
    w: &mut World,
    ns: &str,
    id: Option<&Bson>,
) -> Result<Vec<(usize, usize)>, CmdError> {
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

pub(super) fn take_written(reply: &mut Document) -> Option<Vec<(usize, usize)>> {
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

pub(super) fn check_user_ns(db: &str, proc: Proc) -> Result<(), CmdError> {
    if db == "local" && proc != Proc::Mongos {
        return Err(CmdError::new(
            20,
            "IllegalOperation",
            "mongosim does not accept writes to the local database",
        ));
    }
    Ok(())
}

pub(super) fn insert(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
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
    } else if w.version.vectored_inserts() && txn.is_none() {
        if let Proc::Node { set, node } = proc {
            w.check_writable(set, node)?;
        }
        if proc == Proc::Mongos {
            create_on_primary_shard(&mut w, &ns, now);
        }
        let out = super::vectored::insert(&mut w, proc, &ns, &session, docs, ordered, now);
        n_ok += out.n;
        errors.extend(out.errors);
        written.extend(out.written);
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
                // The database's primary shard holds every collection of the database (an
                // unsharded one lives there, shardCollection creates a sharded one there
                // first): a new collection is created there before documents land on
                // other shards. Not inside a transaction, whose participants are the
                // shards it writes, nor for a collection the catalog already tracks
                // (resharding may have moved all of it off the primary shard).
                if txn.is_none() {
                    create_on_primary_shard(&mut w, &ns, now);
                }
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

/// An insert through mongos into a collection the catalog does not track yet creates it
/// on the database's primary shard first.
fn create_on_primary_shard(w: &mut World, ns: &str, now: Instant) {
    let tracked = w
        .sharding
        .as_ref()
        .is_some_and(|sh| sh.collections.contains_key(ns));
    if tracked {
        return;
    }
    let db = ns.split('.').next().unwrap_or("").to_owned();
    if let Some(s) = w.db_primary(&db).and_then(|p| w.shard_set(&p)) {
        if let Some(p) = w.sets[s].sync_source() {
            w.ensure_collection(s, p, ns, false, now);
        }
    }
}

/// Honours `writeConcern: {w: "majority" | N, wtimeout}` by waiting until the newest entry
/// of every written set is held by enough members; on timeout the reply carries a
/// `writeConcernError` (64 WriteConcernFailed) as mongod's does. `w: 1` (the default)
/// returns at once.
/// Waits for the command's write concern. `at`: the nodes that wrote the command's
/// entries (a commitTransaction through mongos logs on the nodes holding the transaction,
/// which need not be the shard's current primary): their newest entries are waited for,
/// and the wait fails when one of them steps down or loses its entry, as on mongod.
pub(super) async fn finish_write(
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

/// The newest entry of every member of every set and whether it is primary: taken
/// before a command, compared by [`written_since`] after it.
pub(super) type Heads = Vec<Vec<(Option<crate::oplog::EntryId>, bool)>>;

/// See [`Heads`].
pub(super) fn heads(w: &World) -> Heads {
    w.sets
        .iter()
        .map(|set| {
            set.nodes
                .iter()
                .map(|n| {
                    (
                        n.oplog.last().map(|e| e.id),
                        n.state == MemberState::Primary,
                    )
                })
                .collect()
        })
        .collect()
}

/// The members a command wrote to: those primary before or after it whose newest entry
/// changed meanwhile (secondaries only replicate). Another client's write on the same
/// primary meanwhile only makes the write concern wait for a later entry of it.
pub(super) fn written_since(w: &World, before: &Heads) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (s, set) in w.sets.iter().enumerate() {
        for (n, node) in set.nodes.iter().enumerate() {
            let head = node.oplog.last().map(|e| e.id);
            let (was, was_primary) = before
                .get(s)
                .and_then(|b| b.get(n))
                .copied()
                .unwrap_or((None, false));
            let primary = was_primary || node.state == MemberState::Primary;
            if primary && head.is_some() && head != was {
                out.push((s, n));
            }
        }
    }
    out
}

fn id_of_filter(q: &Document) -> Option<&Bson> {
    match q.get("_id") {
        Some(Bson::Document(d)) if d.keys().any(|k| k.starts_with('$')) => d.get("$eq"),
        other => other,
    }
}

pub(super) fn update(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
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

pub(super) fn delete(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
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
pub(super) fn find_and_modify(
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

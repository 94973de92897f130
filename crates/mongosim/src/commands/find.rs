//! Reads: argument checking, read preference on secondaries, and find on user
//! collections, the config servers' catalog and (through mongos) the shards, with the
//! buffered cursors it opens. Finds on `local.oplog.rs` continue in `tail.rs`.

use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document, Timestamp};

use super::tail::find_oplog;
use super::{cmd_str, get_bool, get_doc, get_i64, ok, CmdResult, BATCH_BYTES, DEFAULT_FIRST_BATCH};
use crate::error::CmdError;
use crate::matcher;
use crate::runtime::Shared;
use crate::world::history::{collection_at, docs_at};
use crate::world::{bad_value, Cursor, CursorKind, MemberState, Proc, SetRole, ShardState, World};

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

pub(super) struct FindArgs {
    pub(super) ns: String,
    pub(super) filter: Document,
    pub(super) projection: Option<Document>,
    pub(super) sort: Option<Document>,
    pub(super) skip: usize,
    pub(super) limit: Option<i64>,
    pub(super) batch_size: Option<i64>,
    pub(super) single_batch: bool,
    pub(super) tailable: bool,
    pub(super) await_data: bool,
}

/// Arguments every command accepts (mongodb/mongo `src/mongo/idl/generic_argument.idl`);
/// `$`-prefixed fields are accepted too.
pub(super) const GENERIC_ARGS: &[&str] = &[
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

pub(super) const GET_MORE_ARGS: &[&str] = &[
    "getMore",
    "collection",
    "batchSize",
    "term",
    "lastKnownCommittedOpTime",
    "includeQueryStatsMetrics",
    "rawData",
];

/// Rejects fields a command's IDL does not declare, as mongod 4.4+ does (code 40415).
pub(super) fn check_fields(cmd: &Document, name: &str, allowed: &[&str]) -> Result<(), CmdError> {
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

pub(super) fn cursor_reply(id: i64, ns: &str, batch: Vec<Document>, first: bool) -> Document {
    let key = if first { "firstBatch" } else { "nextBatch" };
    let batch: Vec<Bson> = batch.into_iter().map(Bson::Document).collect();
    ok(doc! {"cursor": {key: batch, "id": id, "ns": ns}})
}

/// Takes up to `n` documents (and at most [`BATCH_BYTES`]) from a buffer.
pub(super) fn take_batch(
    buf: &mut std::collections::VecDeque<Document>,
    n: Option<i64>,
) -> Vec<Document> {
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
                    // A resharded collection's one chunk spans its key's whole range.
                    match sh.keys.get(ns) {
                        Some(key) => {
                            let bound = |b: &Bson| -> Document {
                                key.keys().map(|k| (k.clone(), b.clone())).collect()
                            };
                            d.insert("min", bound(&c.min));
                            d.insert("max", bound(&c.max));
                        }
                        None => {
                            d.insert("min", doc! {"_id": c.min.clone()});
                            d.insert("max", doc! {"_id": c.max.clone()});
                        }
                    }
                    d.insert("shard", c.shard.clone());
                    if w.version >= crate::ServerVersion::V7_0 {
                        if let Some((since, _)) = c.history.first() {
                            d.insert("onCurrentShardSince", *since);
                        }
                    }
                    let history: Vec<Bson> = c
                        .history
                        .iter()
                        .map(|(t, s)| Bson::Document(doc! {"validAfter": *t, "shard": s.clone()}))
                        .collect();
                    d.insert("history", history);
                    out.push(d);
                }
            }
            out
        }
        // `{_id, primary, partitioned (up to 5.0), version: {uuid, timestamp (5.0+),
        // lastMod}}`, as `database_type.idl` describes a `config.databases` document.
        "databases" => sh
            .databases
            .iter()
            .map(|(name, d)| {
                let mut out = doc! {"_id": name.clone(), "primary": d.primary.clone()};
                if w.version <= crate::ServerVersion::V5_0 {
                    out.insert("partitioned", true);
                }
                let mut version = doc! {"uuid": d.uuid};
                if w.version >= crate::ServerVersion::V5_0 {
                    version.insert(
                        "timestamp",
                        bson::Timestamp {
                            time: 1,
                            increment: 1,
                        },
                    );
                }
                version.insert("lastMod", 1);
                out.insert("version", version);
                out
            })
            .collect(),
        "collections" => sh
            .collections
            .keys()
            .map(|ns| {
                let key = sh.keys.get(ns).cloned().unwrap_or(doc! {"_id": 1});
                let mut d = doc! {"_id": ns.clone(), "key": key, "unique": false};
                if sh.unsplittable.contains(ns) {
                    d.insert("unsplittable", true);
                }
                d
            })
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

pub(super) fn filter_sort_project(
    mut docs: Vec<Document>,
    a: &FindArgs,
) -> Result<Vec<Document>, CmdError> {
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

/// `count` on a member: `{count: <coll>, query?: <filter>, skip?, limit?}` answers
/// `{n}` from the member's current data (count_cmd.cpp; `n` appended with
/// `appendNumber`, so an int32 below 2^30). Without a query it is the collection's size,
/// what `estimatedDocumentCount` reads. On mongos it is refused: quorumtail only counts
/// on members, and mongos' count (cluster_count_cmd.h, shard results summed) is not
/// simulated.
pub(crate) fn count(w: &World, proc: Proc, db: &str, cmd: &Document) -> Result<Document, CmdError> {
    let Proc::Node { set: s, node: n } = proc else {
        return Err(CmdError::new(
            115,
            "CommandNotSupported",
            "count through mongos is not simulated",
        ));
    };
    check_readable(w, s, n, cmd)?;
    let coll = cmd_str(cmd, "count")?;
    let filter = cmd.get_document("query").cloned().unwrap_or_default();
    let num = |k: &str| -> u64 {
        cmd.get(k)
            .and_then(|v| match v {
                Bson::Int32(i) => u64::try_from(*i).ok(),
                Bson::Int64(i) => u64::try_from(*i).ok(),
                Bson::Double(f) if *f >= 0.0 => Some(*f as u64),
                _ => None,
            })
            .unwrap_or(0)
    };
    let mut total: u64 = 0;
    if let Some(c) = w.sets[s].nodes[n].data.get(&format!("{db}.{coll}")) {
        for d in c.iter() {
            if matcher::matches(d, &filter).map_err(bad_value)? {
                total += 1;
            }
        }
    }
    let mut total = total.saturating_sub(num("skip"));
    if num("limit") > 0 {
        total = total.min(num("limit"));
    }
    let n_field = if total < (1 << 30) {
        Bson::Int32(total as i32)
    } else {
        Bson::Int64(total as i64)
    };
    Ok(doc! {"n": n_field, "ok": 1.0})
}

/// The `_id`s a filter reads by, when it is `{_id: <value>}` or `{_id: {$in: [...]}}`
/// alone: such reads touch only those documents (mongod answers them from the `_id` index).
fn id_filter(filter: &Document) -> Option<Vec<Bson>> {
    if filter.len() != 1 {
        return None;
    }
    match filter.get("_id")? {
        Bson::Document(d) => match (d.len(), d.get("$in")) {
            (1, Some(Bson::Array(ids))) => Some(ids.clone()),
            _ if d.keys().any(|k| k.starts_with('$')) => None,
            _ => Some(vec![Bson::Document(d.clone())]),
        },
        Bson::RegularExpression(_) | Bson::Array(_) => None,
        v => Some(vec![v.clone()]),
    }
}

/// The read concern of a command: `(level, atClusterTime, afterClusterTime)`.
fn read_concern(cmd: &Document) -> (Option<String>, Option<Timestamp>, Option<Timestamp>) {
    let rc = cmd.get_document("readConcern").ok();
    (
        rc.and_then(|r| r.get_str("level").ok()).map(str::to_owned),
        rc.and_then(|r| r.get_timestamp("atClusterTime").ok()),
        rc.and_then(|r| r.get_timestamp("afterClusterTime").ok()),
    )
}

fn later(a: Timestamp, b: Timestamp) -> bool {
    (a.time, a.increment) > (b.time, b.increment)
}

/// Waits, as mongod does before a read, until node's majority committed snapshot reaches
/// the read concern's `atClusterTime` / `afterClusterTime` (level `snapshot` or
/// `majority`), bounded by `maxTimeMS` (else 60 s): MaxTimeMSExpired (50) when it does not.
/// Times beyond the node's cluster time are refused by [`find`], not waited for.
///
/// Through mongos (majority only), each shard's primary waits the same way: mongos passes
/// the read concern on to the shards it targets (`src/mongo/s/query/cluster_find.cpp`), and
/// each waits for its majority snapshot (`src/mongo/db/read_concern_mongod.cpp`; a shard
/// whose oplog has not reached the time writes a no-op to get there, which the simulator
/// stands in for by not waiting, as it does for a member's own time).
pub(super) async fn wait_for_read_concern(
    shared: &Arc<Shared>,
    proc: Proc,
    cmd: &Document,
) -> Result<(), CmdError> {
    let targets: Vec<(usize, usize)> = match proc {
        Proc::Node { set, node } => vec![(set, node)],
        Proc::Mongos => {
            if read_concern(cmd).0.as_deref() != Some("majority") {
                return Ok(());
            }
            let w = shared.world();
            let Some(sh) = w.sharding.as_ref() else {
                return Ok(());
            };
            sh.shards
                .iter()
                .filter(|x| x.state != ShardState::Removed)
                .filter_map(|x| w.sets[x.set].sync_source().map(|p| (x.set, p)))
                .collect()
        }
    };
    for (s, n) in targets {
        wait_on_node(shared, s, n, cmd).await?;
    }
    Ok(())
}

async fn wait_on_node(
    shared: &Arc<Shared>,
    s: usize,
    n: usize,
    cmd: &Document,
) -> Result<(), CmdError> {
    let (level, at, after) = read_concern(cmd);
    if !matches!(level.as_deref(), Some("snapshot" | "majority")) {
        return Ok(());
    }
    let Some(target) = at.or(after) else {
        return Ok(());
    };
    let budget = get_i64(cmd, "maxTimeMS")
        .filter(|ms| *ms > 0)
        .map_or(Duration::from_secs(60), |ms| {
            Duration::from_millis(ms as u64)
        });
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        let mut rx = shared.changes.subscribe();
        {
            let w = shared.world();
            let node = &w.sets[s].nodes[n];
            let committed = node.commit_point.as_ref().map(|c| c.id.ts);
            if later(target, node.last_ts) || committed.is_some_and(|c| !later(target, c)) {
                return Ok(());
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return Err(CmdError::new(
                50,
                "MaxTimeMSExpired",
                "operation exceeded time limit",
            ));
        }
    }
}

/// The time a read on node (`s`, `n`) sees the data at, from its read concern: `None` for
/// the current data (`local`, `available`, none); `Some((T, true))` for a snapshot read,
/// whose cursor reply names `atClusterTime`. See `world/history.rs` for mongod's rules.
fn read_time(
    w: &World,
    s: usize,
    n: usize,
    cmd: &Document,
) -> Result<Option<(Timestamp, bool)>, CmdError> {
    let (level, at, after) = read_concern(cmd);
    let node = &w.sets[s].nodes[n];
    let cluster_time = node.last_ts;
    for (name, t) in [("atClusterTime", at), ("afterClusterTime", after)] {
        if let Some(t) = t.filter(|t| later(*t, cluster_time)) {
            return Err(CmdError::new(
                72,
                "InvalidOptions",
                format!(
                    "readConcern {name} value must not be greater than the current clusterTime. Requested clusterTime: {}; current clusterTime: {}",
                    ts_string(t),
                    ts_string(cluster_time)
                ),
            ));
        }
    }
    let committed = node.commit_point.as_ref().map_or(
        Timestamp {
            time: 0,
            increment: 0,
        },
        |c| c.id.ts,
    );
    match level.as_deref() {
        Some("snapshot") => {
            let t = at.unwrap_or(committed);
            if later(w.oldest_readable(s, n), t) {
                return Err(CmdError::new(
                    239,
                    "SnapshotTooOld",
                    format!(
                        "Read timestamp {} is older than the oldest available timestamp.",
                        ts_string(t)
                    ),
                ));
            }
            Ok(Some((t, true)))
        }
        Some("majority") => Ok(Some((committed, false))),
        _ => Ok(None),
    }
}

fn ts_string(t: Timestamp) -> String {
    format!("Timestamp({}, {})", t.time, t.increment)
}

pub(super) fn find(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    let a = parse_find(db, cmd)?;
    let mut w = shared.world();
    let mut at_cluster_time = None;
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
                // readConcern majority: each shard answers from its majority committed
                // snapshot, as a member does (see `wait_for_read_concern`).
                let majority = read_concern(cmd).0.as_deref() == Some("majority");
                for s in sets {
                    let p = w.sets[s].sync_source().ok_or_else(|| {
                        CmdError::new(133, "FailedToSatisfyReadPreference", format!("Could not find host matching read preference {{ mode: \"primary\" }} for set {}", w.sets[s].name))
                    })?;
                    let node = &w.sets[s].nodes[p];
                    let committed = node.commit_point.as_ref().map_or(
                        Timestamp {
                            time: 0,
                            increment: 0,
                        },
                        |c| c.id.ts,
                    );
                    // The shard's documents this read sees: by `_id` (only those), or
                    // the whole collection, at the majority snapshot or current.
                    let docs: Vec<Document> = match id_filter(&a.filter) {
                        Some(ids) if majority => {
                            docs_at(&node.data, &node.undo, &a.ns, committed, &ids)
                        }
                        Some(ids) => {
                            docs_at(&node.data, &Default::default(), &a.ns, committed, &ids)
                        }
                        None if majority => collection_at(&node.data, &node.undo, &a.ns, committed)
                            .map(|c| c.iter().cloned().collect())
                            .unwrap_or_default(),
                        None => node
                            .data
                            .get(&a.ns)
                            .map(|c| c.iter().cloned().collect())
                            .unwrap_or_default(),
                    };
                    // mongos filters orphans: only documents owned by this shard's chunks.
                    let shard_name = w.sets[s].name.clone();
                    let chunks = w.sharding.as_ref().and_then(|sh| sh.collections.get(&a.ns));
                    all.extend(docs.into_iter().filter(|d| {
                        match chunks {
                            Some(chunks) => d
                                .get("_id")
                                .and_then(|id| chunks.iter().find(|c| c.contains(id)))
                                .is_some_and(|c| c.shard == shard_name),
                            None => true,
                        }
                    }));
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
                let node = &w.sets[s].nodes[n];
                match read_time(&w, s, n, cmd)? {
                    None => node
                        .data
                        .get(&a.ns)
                        .map(|c| c.iter().cloned().collect())
                        .unwrap_or_default(),
                    Some((t, snapshot)) => {
                        if snapshot {
                            at_cluster_time = Some(t);
                        }
                        match id_filter(&a.filter) {
                            Some(ids) => docs_at(&node.data, &node.undo, &a.ns, t, &ids),
                            None => collection_at(&node.data, &node.undo, &a.ns, t)
                                .map(|c| c.iter().cloned().collect())
                                .unwrap_or_default(),
                        }
                    }
                }
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
    let mut reply = cursor_reply(id, &a.ns, batch, true);
    if let (Some(t), Ok(c)) = (at_cluster_time, reply.get_document_mut("cursor")) {
        c.insert("atClusterTime", t);
    }
    Ok(reply)
}

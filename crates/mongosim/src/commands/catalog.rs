//! Catalog commands: create (including time-series collections; other DDL is in
//! `commands/ddl.rs`),
//! listDatabases, listCollections, and mongos' listShards and moveChunk.

use std::sync::Arc;
use std::time::Instant;

use bson::{doc, Bson, Document};

use super::find::shard_docs;
use super::writes::{check_user_ns, route};
use super::{cmd_str, ok, type_error, CmdResult};
use crate::error::CmdError;
use crate::runtime::Shared;
use crate::world::{Proc, SetRole, World};

pub(super) fn create(shared: &Arc<Shared>, proc: Proc, db: &str, cmd: &Document) -> CmdResult {
    check_user_ns(db, proc)?;
    let ns = format!("{db}.{}", cmd_str(cmd, "create")?);
    let now = Instant::now();
    let mut w = shared.world();
    if let Some(ts) = cmd.get("timeseries") {
        let Bson::Document(ts) = ts else {
            return Err(type_error("timeseries", "object"));
        };
        let opts = crate::timeseries::TsOptions::parse(ts)?;
        // An unsharded time-series collection lives on the database's primary shard,
        // which owns the first chunk of the buckets namespace.
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
    drop(w);
    super::ddl::create_plain(shared, proc, &ns, cmd)
}

pub(super) fn list_databases(w: &World, proc: Proc) -> CmdResult {
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

pub(super) fn list_collections(w: &World, proc: Proc, db: &str) -> CmdResult {
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

pub(super) fn list_shards(w: &World) -> CmdResult {
    let shards: Vec<Bson> = shard_docs(w).into_iter().map(Bson::Document).collect();
    Ok(ok(doc! {"shards": shards}))
}

pub(super) fn move_chunk_cmd(shared: &Arc<Shared>, cmd: &Document) -> CmdResult {
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

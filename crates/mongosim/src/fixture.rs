//! Fixtures: preloaded oplogs from `DIR/fixture.toml` plus JSON-lines files of canonical
//! Extended JSON v2, one entry per line, inserted byte-faithfully (field order and types).
//!
//! ```toml
//! description = "..."
//! server_version = "legacy"          # or "4.4" .. "8.0"
//! [[shards]]
//! name = "shard01"
//! nodes = 3
//! oplog = "shard01.oplog.jsonl"      # every member holds this oplog
//! # node_oplogs = ["n0.jsonl", "n1.jsonl", "n2.jsonl"]   # or one per member
//! # primary = 0
//! # partitioned = [2]               # mongosim extension: members cut off at start
//!
//! # mongosim extension: chunk layout of a sharded collection (on _id)
//! # [[collections]]
//! # ns = "test.mycollection"
//! # split_points = [6]
//! # shards = ["shard02", "shard01"]   # owner of [MinKey, 6) and [6, MaxKey)
//! ```
//!
//! Members whose newest entry the primary lacks (the deposed primary of a rollback
//! snapshot) also start partitioned, so their extra entries can be tailed; `heal_node`
//! then triggers the rollback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bson::{Bson, Document};
use serde::Deserialize;

use crate::error::SimError;
use crate::oplog::{Entry, Oplog};
use crate::version::ServerVersion;
use crate::world::{MemberState, World};

/// `fixture.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureToml {
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Where the data came from (free text).
    #[serde(default)]
    pub source: Option<String>,
    /// "legacy" or "4.4".."8.0": the shape of new writes after loading.
    pub server_version: String,
    /// One table per replica set.
    pub shards: Vec<FixtureShardToml>,
    /// mongosim extension: chunk layouts of sharded collections, so writes through mongos
    /// after loading land where the recorded cluster would put them.
    #[serde(default)]
    pub collections: Vec<FixtureCollectionToml>,
}

/// One `[[collections]]` table: `ns`, `split_points` (`_id` values) and the owning shard of
/// each of the `split_points.len() + 1` chunks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureCollectionToml {
    /// `db.coll`.
    pub ns: String,
    /// Chunk boundaries on `_id` (integers, floats or strings).
    #[serde(default)]
    pub split_points: Vec<toml::Value>,
    /// Owner of each chunk, lowest first.
    pub shards: Vec<String>,
}

/// One `[[shards]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureShardToml {
    /// Set name (shard01...).
    pub name: String,
    /// Number of members.
    pub nodes: usize,
    /// Oplog held by every member.
    #[serde(default)]
    pub oplog: Option<String>,
    /// One oplog per member instead.
    #[serde(default)]
    pub node_oplogs: Option<Vec<String>>,
    /// Index of the primary (default 0).
    #[serde(default)]
    pub primary: Option<usize>,
    /// mongosim extension: members that start partitioned from the set (e.g. the old
    /// primary of a rollback snapshot, so a test can tail its extra entries before healing
    /// it with `heal_node`, which then triggers the rollback).
    #[serde(default)]
    pub partitioned: Vec<usize>,
}

/// A parsed fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Where it came from.
    pub dir: PathBuf,
    /// Version for new writes.
    pub version: ServerVersion,
    /// Sets.
    pub shards: Vec<FixtureShard>,
    /// Chunk layouts: namespace to `[min, max)` chunks and owners.
    pub collections: Vec<(String, Vec<crate::world::Chunk>)>,
}

/// A parsed set.
#[derive(Debug, Clone)]
pub struct FixtureShard {
    /// Set name.
    pub name: String,
    /// Per member: its oplog entries in order.
    pub nodes: Vec<Vec<Document>>,
    /// Primary index.
    pub primary: usize,
    /// Members that start partitioned.
    pub partitioned: Vec<usize>,
}

fn err(dir: &Path, message: impl Into<String>) -> SimError {
    SimError::Fixture {
        dir: dir.display().to_string(),
        message: message.into(),
    }
}

/// Parses a JSON-lines oplog (blank lines and `#` comments ignored).
///
/// # Errors
/// A message naming the line that is not an Extended JSON document.
pub fn parse_jsonl(text: &str) -> Result<Vec<Document>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
        match Bson::try_from(value) {
            Ok(Bson::Document(d)) => {
                if !matches!(d.get("ts"), Some(Bson::Timestamp(_))) {
                    return Err(format!("line {}: entry has no Timestamp ts", i + 1));
                }
                out.push(d);
            }
            Ok(other) => return Err(format!("line {}: expected a document, got {other}", i + 1)),
            Err(e) => return Err(format!("line {}: not Extended JSON: {e}", i + 1)),
        }
    }
    Ok(out)
}

/// Reads and validates a fixture directory.
///
/// # Errors
/// [`SimError::Fixture`] naming the file and line at fault.
pub fn read(dir: &Path) -> Result<Fixture, SimError> {
    let toml_path = dir.join("fixture.toml");
    let text = std::fs::read_to_string(&toml_path)
        .map_err(|e| err(dir, format!("cannot read {}: {e}", toml_path.display())))?;
    let spec: FixtureToml =
        toml::from_str(&text).map_err(|e| err(dir, format!("fixture.toml: {e}")))?;
    let version: ServerVersion = spec
        .server_version
        .parse()
        .map_err(|e| err(dir, format!("fixture.toml server_version: {e}")))?;
    let load = |file: &str| -> Result<Vec<Document>, SimError> {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(dir, format!("cannot read {}: {e}", path.display())))?;
        parse_jsonl(&text).map_err(|e| err(dir, format!("{file}: {e}")))
    };
    let mut shards = Vec::new();
    for s in &spec.shards {
        if s.nodes == 0 {
            return Err(err(
                dir,
                format!("shard {}: nodes must be at least 1", s.name),
            ));
        }
        let nodes = match (&s.oplog, &s.node_oplogs) {
            (Some(file), None) => {
                let entries = load(file)?;
                vec![entries; s.nodes]
            }
            (None, Some(files)) => {
                if files.len() != s.nodes {
                    return Err(err(
                        dir,
                        format!(
                            "shard {}: node_oplogs has {} files for {} nodes",
                            s.name,
                            files.len(),
                            s.nodes
                        ),
                    ));
                }
                files.iter().map(|f| load(f)).collect::<Result<_, _>>()?
            }
            _ => {
                return Err(err(
                    dir,
                    format!(
                        "shard {}: give exactly one of oplog and node_oplogs",
                        s.name
                    ),
                ))
            }
        };
        let primary = s.primary.unwrap_or(0);
        if primary >= s.nodes {
            return Err(err(
                dir,
                format!("shard {}: primary {primary} out of range", s.name),
            ));
        }
        if let Some(bad) = s.partitioned.iter().find(|i| **i >= s.nodes) {
            return Err(err(
                dir,
                format!("shard {}: partitioned member {bad} out of range", s.name),
            ));
        }
        shards.push(FixtureShard {
            name: s.name.clone(),
            nodes,
            primary,
            partitioned: s.partitioned.clone(),
        });
    }
    let mut collections = Vec::new();
    for c in &spec.collections {
        let mut bounds = vec![Bson::MinKey];
        for v in &c.split_points {
            bounds.push(match v {
                toml::Value::Integer(i) => match i32::try_from(*i) {
                    Ok(small) => Bson::Int32(small),
                    Err(_) => Bson::Int64(*i),
                },
                toml::Value::Float(f) => Bson::Double(*f),
                toml::Value::String(s) => Bson::String(s.clone()),
                other => {
                    return Err(err(
                        dir,
                        format!("collection {}: unsupported split point {other}", c.ns),
                    ))
                }
            });
        }
        bounds.push(Bson::MaxKey);
        if c.shards.len() != bounds.len() - 1 {
            return Err(err(
                dir,
                format!(
                    "collection {}: {} split points need {} shards, got {}",
                    c.ns,
                    c.split_points.len(),
                    bounds.len() - 1,
                    c.shards.len()
                ),
            ));
        }
        if let Some(bad) = c
            .shards
            .iter()
            .find(|n| !spec.shards.iter().any(|s| &s.name == *n))
        {
            return Err(err(
                dir,
                format!("collection {}: unknown shard {bad}", c.ns),
            ));
        }
        let chunks = bounds
            .windows(2)
            .zip(&c.shards)
            .map(|(w, shard)| crate::world::Chunk {
                min: w[0].clone(),
                max: w[1].clone(),
                shard: shard.clone(),
                // A fixture's chunks have always been where it says.
                history: vec![(
                    bson::Timestamp {
                        time: 0,
                        increment: 0,
                    },
                    shard.clone(),
                )],
            })
            .collect();
        collections.push((c.ns.clone(), chunks));
    }
    Ok(Fixture {
        dir: dir.to_path_buf(),
        version,
        shards,
        collections,
    })
}

/// Installs a fixture's oplogs into the world's sets (by name; a single set takes a single
/// fixture shard whatever its name).
///
/// # Errors
/// [`SimError::Fixture`] when a set is missing or sized differently.
pub fn apply(w: &mut World, fx: &Fixture, now: Instant) -> Result<(), SimError> {
    let single = w.sharding.is_none() && w.sets.len() == 1 && fx.shards.len() == 1;
    if let Some(sh) = w.sharding.as_mut() {
        for (ns, chunks) in &fx.collections {
            sh.collections.insert(ns.clone(), chunks.clone());
        }
    }
    for shard in &fx.shards {
        let s = match w.set_index(&shard.name) {
            Some(s) => s,
            None if single => 0,
            None => {
                return Err(err(
                    &fx.dir,
                    format!("the cluster has no set named {}", shard.name),
                ))
            }
        };
        if w.sets[s].nodes.len() != shard.nodes.len() {
            return Err(err(
                &fx.dir,
                format!(
                    "set {} has {} members but the fixture gives {}",
                    shard.name,
                    w.sets[s].nodes.len(),
                    shard.nodes.len()
                ),
            ));
        }
        let (max_entries, max_bytes) = (w.cfg.oplog_max_entries, w.cfg.oplog_max_bytes);
        let mut max_term = 1;
        {
            let set = &mut w.sets[s];
            set.committed.clear();
            set.rolled_back.clear();
            set.commit_point = None;
            set.uuids.clear();
            set.no_primary_since = None;
        }
        for (n, entries) in shard.nodes.iter().enumerate() {
            {
                let node = &mut w.sets[s].nodes[n];
                node.oplog = Oplog::new(max_entries, max_bytes);
                node.data.clear();
                node.undo.clear();
                node.cursors.clear();
                node.dead_cursors.clear();
                node.epoch += 1;
                node.last_ts = bson::Timestamp {
                    time: 0,
                    increment: 0,
                };
                node.last_write_at = now;
            }
            for d in entries {
                let entry = Entry::from_doc(d.clone(), now).map_err(|e| err(&fx.dir, e))?;
                if let Some(t) = entry.id.t {
                    max_term = max_term.max(t);
                }
                if let (Ok(ns), Some(Bson::Binary(b))) = (d.get_str("ns"), d.get("ui")) {
                    if let Ok(bytes) = <[u8; 16]>::try_from(b.bytes.as_slice()) {
                        let u = bson::Uuid::from_bytes(bytes);
                        let target = match d.get_str("op") {
                            Ok("c") => d
                                .get_document("o")
                                .ok()
                                .and_then(|o| o.get_str("create").ok())
                                .map(|c| format!("{}.{c}", ns.split('.').next().unwrap_or(""))),
                            _ => Some(ns.to_owned()),
                        };
                        if let Some(t) = target {
                            w.sets[s].uuids.insert(t, u);
                        }
                    }
                }
                w.push_entry(s, n, Arc::new(entry));
            }
        }
        // A member whose newest entry the primary lacks has diverged (the deposed primary
        // of a rollback snapshot): it starts partitioned so its extra entries stay visible
        // until `heal_node`, which triggers the rollback.
        let diverged: Vec<usize> = {
            let set = &w.sets[s];
            let primary = &set.nodes[shard.primary];
            (0..set.nodes.len())
                .filter(|n| {
                    *n != shard.primary
                        && set.nodes[*n]
                            .oplog
                            .last()
                            .is_some_and(|e| !primary.oplog.contains(&e.id))
                })
                .collect()
        };
        let set = &mut w.sets[s];
        // The primary may commit from the first entry of its (newest) term on.
        let floor = set.nodes.get(shard.primary).and_then(|p| {
            let t = p.oplog.last()?.id.t;
            p.oplog
                .iter()
                .find(|e| e.id.t == t)
                .map(|e| crate::world::op_key(&e.id))
        });
        for (n, node) in set.nodes.iter_mut().enumerate() {
            node.commit_point = None;
            node.commit_history.clear();
            node.draining = false;
            node.first_optime_of_term = if n == shard.primary { floor } else { None };
            node.term = max_term;
            node.state = if n == shard.primary {
                MemberState::Primary
            } else {
                MemberState::Secondary
            };
            node.partitioned = shard.partitioned.contains(&n) || diverged.contains(&n);
            if diverged.contains(&n) {
                tracing::info!(set = %shard.name, node = %node.addr, "fixture member diverged from the primary: starts partitioned");
            }
            node.partitioned_at = node.partitioned.then_some(now);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunk_layouts_and_rejects_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let line = r#"{"ts":{"$timestamp":{"t":1,"i":1}},"h":{"$numberLong":"0"},"v":{"$numberInt":"2"},"op":"n","ns":"","o":{"msg":"initiating set"}}"#;
        std::fs::write(dir.path().join("a.jsonl"), line).unwrap();
        let base = "server_version = \"legacy\"\nsource = \"test\"\n[[shards]]\nname = \"shard01\"\nnodes = 1\noplog = \"a.jsonl\"\n[[shards]]\nname = \"shard02\"\nnodes = 1\noplog = \"a.jsonl\"\n";
        let good = format!("{base}[[collections]]\nns = \"test.c\"\nsplit_points = [6]\nshards = [\"shard02\", \"shard01\"]\n");
        std::fs::write(dir.path().join("fixture.toml"), good).unwrap();
        let fx = read(dir.path()).unwrap();
        let (ns, chunks) = &fx.collections[0];
        assert_eq!(ns, "test.c");
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].shard, "shard02");
        assert!(chunks[0].contains(&Bson::Double(5.0)));
        assert!(chunks[1].contains(&Bson::Int32(6)));
        let bad = format!(
            "{base}[[collections]]\nns = \"test.c\"\nsplit_points = [6]\nshards = [\"shard02\"]\n"
        );
        std::fs::write(dir.path().join("fixture.toml"), bad).unwrap();
        assert!(read(dir.path())
            .unwrap_err()
            .to_string()
            .contains("need 2 shards"));
        let unknown = format!("{base}bogus = 1\n");
        std::fs::write(dir.path().join("fixture.toml"), unknown).unwrap();
        assert!(read(dir.path()).unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn parses_canonical_extended_json_faithfully() {
        let line = r#"{"ts":{"$timestamp":{"t":1422998574,"i":1}},"h":{"$numberLong":"-6781014703318499311"},"v":{"$numberInt":"2"},"op":"i","ns":"test.mycollection","o":{"_id":{"$numberInt":"1"},"data":"hello"}}"#;
        let docs = parse_jsonl(&format!("# comment\n\n{line}\n")).unwrap();
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        let keys: Vec<_> = d.keys().cloned().collect();
        assert_eq!(keys, ["ts", "h", "v", "op", "ns", "o"]);
        assert_eq!(d.get("v"), Some(&Bson::Int32(2)));
        assert_eq!(d.get("h"), Some(&Bson::Int64(-6781014703318499311)));
        assert!(parse_jsonl("{\"op\": \"n\"}").is_err());
        assert!(parse_jsonl("not json").unwrap_err().contains("line 1"));
    }
}

//! The checker: every record of every run against the simulator's ground truth.
//!
//! Identities are per shard (a replica set's `(ts, t)`), so every comparison is within one
//! shard. Reported:
//!
//! - **lost**: a committed application entry never emitted;
//! - **phantom**: emitted but rolled back (whether or not a majority of voters had held
//!   it), never committed, fromMigrate, or otherwise filtered;
//! - **duplicates**, each inside or outside a restart window (after a `kill -9` or an exit
//!   on its own, a run may repeat what the ended run emitted after the checkpoint it had
//!   stored; nothing else may repeat);
//! - **per-shard order**: within a run and a partition (a lane) a shard's records strictly
//!   increase (entry identity, then index within a transaction); a run resumes after the
//!   checkpoint its predecessor left;
//! - **per-document order**: the versions of one `_id` in the order of its partition (a
//!   document's records share a key, hence a partition); an inversion
//!   between records of two shards is the known limit of per-shard ordering (a chunk moved
//!   and the shards' streams interleave freely) and is only counted.
//!
//! The ground truth is the simulator's: `committed_entries` follows MongoDB's commit point
//! (an entry commits when a primary's commit point passes it: held by a write majority of
//! data-bearing voters and followed by an entry of that primary's term), so an entry a
//! majority of voters held but no primary committed is not in it and ends in
//! `rolled_back_entries`. The expected records are the committed entries the default
//! filter keeps, plus, for every committed transaction (an `applyOps` entry, or a chain of
//! `partialTxn` entries ending in one without), each operation the filter keeps, as a record
//! with the identity of the transaction's last entry and the operation's index in the
//! whole transaction. This is derived here from the oplog entries, independently of
//! quorumtail's transaction assembly.

use std::collections::{BTreeMap, HashMap, HashSet};

use bson::Document;
use quorumtail_oplog::{EntryId, OpKind, OplogEntry};
use serde_json::Value;

/// One run's records, `(lane, record)`: the lane is the Kafka partition, records of one
/// lane in offset order.
#[derive(Debug, Clone, Default)]
pub struct Segment {
    pub records: Vec<(i32, Value)>,
    /// Ended without a graceful stop (`kill -9`, or an exit on its own): its successor may
    /// repeat what it emitted after `checkpoints`.
    pub crashed: bool,
    /// The checkpoints stored when it ended.
    pub checkpoints: BTreeMap<String, EntryId>,
}

/// The ground truth of one shard.
#[derive(Debug, Clone, Default)]
pub struct ShardTruth {
    /// The records expected: committed entries the default filter keeps (index
    /// -1) and the kept operations of committed transactions (their index), in oplog
    /// order.
    pub committed_app: Vec<(EntryId, i64)>,
    /// Committed transactions.
    pub txns: usize,
    /// Every committed entry (passed by a primary's commit point).
    pub committed_all: HashSet<EntryId>,
    /// Entries removed from some member by a rollback.
    pub rolled_back: HashSet<EntryId>,
    /// Entries the nemesis saw held by a write majority of voters while not committed
    /// (the simulator keeps no history of holders: observed, so a lower bound).
    pub majority_held: HashSet<EntryId>,
    /// Chunk-migration entries (committed or not).
    pub from_migrate: HashSet<EntryId>,
}

impl ShardTruth {
    /// Reads a shard's ground truth from the simulator.
    pub fn read(cluster: &mongosim::Cluster, shard: &str) -> ShardTruth {
        let rolled_back = cluster.rolled_back_entries(shard);
        let primaries = cluster.database_primaries();
        ShardTruth::from_entries(
            &cluster.committed_entries(shard),
            &rolled_back,
            Some((shard, &primaries)),
        )
    }

    /// The ground truth from the committed and the rolled-back entries.
    /// `ddl`: the shard and the databases' primary shards, when quorumtail knows them
    /// (`[discovery]`): a DDL entry is then expected from its database's primary shard
    /// only.
    pub fn from_entries(
        committed: &[bson::RawDocumentBuf],
        rolled_back: &[bson::RawDocumentBuf],
        ddl: Option<(&str, &BTreeMap<String, String>)>,
    ) -> ShardTruth {
        let emitted = quorumtail_testkit::emitted_by_default;
        let mut t = ShardTruth::default();
        let mut committed_ops: HashMap<EntryId, Vec<Document>> = HashMap::new();
        for (commit, ops) in committed_transactions(committed) {
            committed_ops.insert(commit, ops);
        }
        for raw in committed {
            let e = OplogEntry::parse(raw).expect("committed entry parses");
            t.committed_all.insert(e.id());
            if e.from_migrate {
                t.from_migrate.insert(e.id());
            }
            let doc = Document::try_from(raw.as_ref()).expect("committed entry is BSON");
            if let Some(all) = committed_ops.get(&e.id()) {
                t.txns += 1;
                for (i, op) in all.iter().enumerate() {
                    let kind = op.get_str("op").ok().and_then(OpKind::from_code);
                    let ns = op.get_str("ns").unwrap_or_default();
                    let fm = op.get_bool("fromMigrate").unwrap_or(false);
                    if kind.is_some_and(|k| emitted(k.as_str(), ns, fm)) {
                        t.committed_app.push((e.id(), i as i64));
                    }
                }
            } else if apply_ops(&doc).is_some() || is_txn_decision(&doc) {
                // A link of a chain (partialTxn, prepare) or an abort: nothing of its own.
            } else if expected_entry(&e, &doc, ddl) {
                t.committed_app.push((e.id(), -1));
            }
        }
        for raw in rolled_back {
            let e = OplogEntry::parse(raw).expect("rolled-back entry parses");
            if e.from_migrate {
                t.from_migrate.insert(e.id());
            }
            t.rolled_back.insert(e.id());
        }
        t
    }
}

/// Whether a committed top-level entry (not a transaction's) is expected as a record, as
/// the testkit states the rules (DDL once, from its database's primary shard).
fn expected_entry(
    e: &OplogEntry<'_>,
    doc: &Document,
    ddl: Option<(&str, &BTreeMap<String, String>)>,
) -> bool {
    use quorumtail_testkit::truth::changed_ns;
    use quorumtail_testkit::{command_emitted, ddl_database, ddl_emitted_from, emitted_by_default};
    let op = e.op.as_str();
    // A command counts by the namespace it changes (`{create: "system.views"}` on
    // `shop.$cmd` is the system collection's).
    let ns = changed_ns(e);
    let notification = doc
        .get_document("o2")
        .ok()
        .and_then(|o2| o2.keys().next().map(String::as_str));
    match ddl_database(op, e.ns, e.command_name(), notification) {
        None => emitted_by_default(op, &ns, e.from_migrate),
        Some(db) => {
            !e.from_migrate
                && (op == "n" || emitted_by_default(op, &ns, false))
                && e.command_name().is_none_or(command_emitted)
                && ddl.is_none_or(|(shard, primaries)| {
                    ddl_emitted_from(shard, primaries.get(db).map(String::as_str))
                })
        }
    }
}

/// `commitTransaction` / `abortTransaction` of a prepared transaction.
fn is_txn_decision(doc: &Document) -> bool {
    doc.get_str("op").ok() == Some("c")
        && doc.get_document("o").is_ok_and(|o| {
            o.contains_key("commitTransaction") || o.contains_key("abortTransaction")
        })
}

/// Every transaction a shard's committed history commits, as MongoDB's oplog says
/// (`src/mongo/db/repl/oplog_entry.cpp` classifies the same way): the identity of the
/// entry that commits it and its operations. A `partialTxn` or `prepare` entry waits for
/// the rest of its chain (by `lsid` + `txnNumber`); the last `applyOps` of an unprepared
/// chain commits it, `commitTransaction` commits a prepared one, `abortTransaction` drops
/// it. A standalone `applyOps` (a batched write) commits its own operations.
pub fn committed_transactions(committed: &[bson::RawDocumentBuf]) -> Vec<(EntryId, Vec<Document>)> {
    let mut out = Vec::new();
    let mut open: HashMap<String, Vec<Document>> = HashMap::new();
    for raw in committed {
        let Ok(doc) = Document::try_from(raw.as_ref()) else {
            continue;
        };
        let key = format!(
            "{:?}/{:?}",
            doc.get_document("lsid").ok().and_then(|l| l.get("id")),
            doc.get("txnNumber")
        );
        let id = || OplogEntry::parse(raw).expect("committed entry parses").id();
        if let Some((ops, partial)) = apply_ops(&doc) {
            let mut all = open.remove(&key).unwrap_or_default();
            all.extend(ops);
            let prepare = doc
                .get_document("o")
                .is_ok_and(|o| o.get_bool("prepare").unwrap_or(false));
            if partial || prepare {
                open.insert(key, all);
            } else {
                out.push((id(), all));
            }
        } else if is_txn_decision(&doc) {
            let all = open.remove(&key).unwrap_or_default();
            if doc
                .get_document("o")
                .is_ok_and(|o| o.contains_key("commitTransaction"))
            {
                out.push((id(), all));
            }
        }
    }
    out
}

/// The operations of an `applyOps` entry and whether it is a `partialTxn` one.
pub fn apply_ops(doc: &Document) -> Option<(Vec<Document>, bool)> {
    if doc.get_str("op").ok()? != "c" {
        return None;
    }
    let o = doc.get_document("o").ok()?;
    let ops = o
        .get_array("applyOps")
        .ok()?
        .iter()
        .filter_map(|b| b.as_document().cloned())
        .collect();
    Some((ops, o.get_bool("partialTxn").unwrap_or(false)))
}

/// `(op, _id, tag)` of a workload transaction's operation (the `t` it inserted or set;
/// deletes have none).
pub fn txn_op_key(op: &Value) -> Option<(String, String, Option<i64>)> {
    let kind = op["op"].as_str()?.to_owned();
    let o = &op["o"];
    let (id, tag) = match kind.as_str() {
        "i" => (&o["_id"], o["t"].as_i64()),
        "u" => (
            &op["o2"]["_id"],
            o["diff"]["u"]["t"]
                .as_i64()
                .or_else(|| o["diff"]["i"]["t"].as_i64())
                .or_else(|| o["$set"]["t"].as_i64()),
        ),
        "d" => (&o["_id"], None),
        _ => return None,
    };
    Some((kind, id.to_string(), tag))
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub records: usize,
    pub distinct: usize,
    pub committed_app: usize,
    pub lost: Vec<String>,
    pub phantom: Vec<String>,
    pub dup_in_window: usize,
    pub dup_outside: Vec<String>,
    pub shard_order: Vec<String>,
    pub doc_order_same_shard: Vec<String>,
    pub doc_order_cross_shard: usize,
    /// Ground truth that contradicts itself (a simulator bug, not quorumtail's).
    pub sim_anomalies: Vec<String>,
    pub rolled_back: usize,
    /// Rolled-back entries a write majority of voters had held (observed).
    pub rolled_back_majority_held: usize,
    /// Entries observed held by a write majority while uncommitted that committed later.
    pub majority_held_committed: usize,
    pub from_migrate: usize,
    /// Committed transactions in the ground truth.
    pub txns: usize,
}

impl Verdict {
    /// One line per failure class, with up to 5 examples each.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut class = |name: &str, v: &[String]| {
            if !v.is_empty() {
                let ex: Vec<&str> = v.iter().take(5).map(String::as_str).collect();
                out.push(format!("{} {name}: {}", v.len(), ex.join("; ")));
            }
        };
        class("lost", &self.lost);
        class("phantom", &self.phantom);
        class("duplicates outside a restart window", &self.dup_outside);
        class("per-shard order violations", &self.shard_order);
        class(
            "per-document order violations within a shard",
            &self.doc_order_same_shard,
        );
        class("ground-truth anomalies (mongosim)", &self.sim_anomalies);
        out
    }
}

/// The identity of a record: shard, entry identity, and its index within a transaction.
fn key(r: &Value) -> (String, EntryId, i64) {
    let id: EntryId = serde_json::from_value(r["id"].clone()).expect("record id");
    (
        r["shard"].as_str().unwrap_or_default().to_owned(),
        id,
        r["txn"]["index"].as_i64().unwrap_or(-1),
    )
}

/// `(ns, _id, version)` of an application record of the workload: inserts have version
/// `v` (0), updates the `v` they set, deletes come last.
pub fn doc_version(entry: &Value) -> Option<(String, String, i64)> {
    let ns = entry["ns"].as_str()?.to_owned();
    let (id, v) = match entry["op"].as_str()? {
        "i" => (&entry["o"]["_id"], entry["o"]["v"].as_i64()?),
        "u" => {
            let o = &entry["o"];
            let v = o["diff"]["u"]["v"]
                .as_i64()
                .or_else(|| o["diff"]["i"]["v"].as_i64())
                .or_else(|| o["$set"]["v"].as_i64())
                .or_else(|| o["v"].as_i64())?;
            (&entry["o2"]["_id"], v)
        }
        "d" => (&entry["o"]["_id"], i64::MAX),
        _ => return None,
    };
    Some((ns, id.to_string(), v))
}

/// Checks every record of every run.
pub fn check(segments: &[Segment], truth: &BTreeMap<String, ShardTruth>) -> Verdict {
    let mut v = Verdict::default();
    // First occurrence of each record: (segment).
    let mut first: HashMap<(String, EntryId, i64), usize> = HashMap::new();
    // Per document: (version, shard, where) of the last first-occurrence record.
    let mut docs: HashMap<(String, String), (i64, String, String)> = HashMap::new();
    let apps: HashMap<&String, HashSet<(EntryId, i64)>> = truth
        .iter()
        .map(|(s, t)| (s, t.committed_app.iter().copied().collect()))
        .collect();
    let mut emitted: HashMap<String, HashSet<(EntryId, i64)>> = HashMap::new();
    for (k, seg) in segments.iter().enumerate() {
        let mut last: HashMap<(String, i32), (EntryId, i64)> = HashMap::new();
        let resumed_after = if k > 0 { Some(&segments[k - 1]) } else { None };
        for (line, (lane, r)) in seg.records.iter().enumerate() {
            v.records += 1;
            let (shard, id, idx) = key(r);
            let at = format!("run {} record {} (partition {lane})", k + 1, line + 1);
            // Per-shard order within the run and the lane.
            if let Some((prev, pidx)) = last.get(&(shard.clone(), *lane)) {
                if !(id > *prev || (id == *prev && idx > *pidx)) {
                    v.shard_order
                        .push(format!("{shard}: {id} after {prev} ({at})"));
                }
            } else if let Some(cp) = resumed_after.and_then(|p| p.checkpoints.get(&shard)) {
                if id <= *cp {
                    v.shard_order.push(format!(
                        "{shard}: run {} restarted at {id}, at or before the checkpoint {cp} its predecessor stored",
                        k + 1
                    ));
                }
            }
            last.insert((shard.clone(), *lane), (id, idx));
            // Duplicates: `first` keeps the run of the latest occurrence.
            let rk = (shard.clone(), id, idx);
            match first.insert(rk, k) {
                None => {}
                Some(m) => {
                    // Inside the window of a kill -9: the previous occurrence was in a run
                    // killed before its checkpoint covered the record, and no run since
                    // stored a checkpoint covering it.
                    let uncovered =
                        |seg: &Segment| seg.checkpoints.get(&shard).is_none_or(|cp| id > *cp);
                    let in_window =
                        m < k && segments[m].crashed && segments[m..k].iter().all(uncovered);
                    if in_window {
                        v.dup_in_window += 1;
                    } else {
                        v.dup_outside.push(format!(
                            "{shard}: {id} emitted in run {}, again in {at}",
                            m + 1
                        ));
                    }
                    continue;
                }
            }
            emitted.entry(shard.clone()).or_default().insert((id, idx));
            // Phantoms.
            let t = truth.get(&shard);
            let from_migrate = r["entry"]["fromMigrate"].as_bool() == Some(true)
                || t.is_some_and(|t| t.from_migrate.contains(&id));
            let committed = t.is_some_and(|t| t.committed_all.contains(&id));
            let app = apps.get(&shard).is_some_and(|a| a.contains(&(id, idx)));
            if from_migrate {
                v.phantom
                    .push(format!("{shard}: {id} is a fromMigrate entry ({at})"));
            } else if !committed {
                let why = match t {
                    Some(t) if t.rolled_back.contains(&id) && t.majority_held.contains(&id) => {
                        "was rolled back although a majority of voters had held it"
                    }
                    Some(t) if t.rolled_back.contains(&id) => "was rolled back",
                    _ => "was never committed",
                };
                v.phantom.push(format!(
                    "{shard}: {id} {why} ({at}, {} {})",
                    r["op"], r["entry"]["o"]
                ));
            } else if !app {
                let why = if idx >= 0 {
                    "is not an operation of a transaction committed there"
                } else {
                    "should have been filtered"
                };
                v.phantom.push(format!(
                    "{shard}: {id} [{idx}] {why} ({at}, {})",
                    r["entry"]
                ));
            }
            // Per-document order.
            if let Some((ns, doc, ver)) = doc_version(&r["entry"]) {
                let dk = (ns, doc);
                if let Some((pv, pshard, pat)) = docs.get(&dk) {
                    if ver <= *pv {
                        if *pshard == shard {
                            v.doc_order_same_shard.push(format!(
                                "{} _id {}: version {ver} on {shard} ({at}) after version {pv} ({pat})",
                                dk.0, dk.1
                            ));
                        } else {
                            v.doc_order_cross_shard += 1;
                        }
                    }
                }
                if docs.get(&dk).is_none_or(|(pv, _, _)| ver > *pv) {
                    docs.insert(dk, (ver, shard.clone(), at));
                }
            }
        }
    }
    v.distinct = first.len();
    for (shard, t) in truth {
        v.txns += t.txns;
        v.committed_app += t.committed_app.len();
        v.rolled_back += t.rolled_back.len();
        v.rolled_back_majority_held += t.rolled_back.intersection(&t.majority_held).count();
        v.majority_held_committed += t.majority_held.intersection(&t.committed_all).count();
        v.from_migrate += t.from_migrate.len();
        let seen = emitted.get(shard);
        for (id, idx) in &t.committed_app {
            if !seen.is_some_and(|s| s.contains(&(*id, *idx))) {
                if *idx >= 0 {
                    v.lost
                        .push(format!("{shard}: {id} (operation {idx} of a transaction)"));
                } else {
                    v.lost.push(format!("{shard}: {id}"));
                }
            }
        }
        let mut both: Vec<&EntryId> = t.rolled_back.intersection(&t.committed_all).collect();
        both.sort();
        for id in both {
            v.sim_anomalies
                .push(format!("{shard}: {id} is both committed and rolled back"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumtail_oplog::Timestamp;

    fn id(i: u32) -> EntryId {
        EntryId::new(
            Timestamp {
                time: 100,
                increment: i,
            },
            1,
        )
    }

    fn rec(shard: &str, i: u32, doc: i32, v: i64) -> (i32, Value) {
        (
            0,
            serde_json::json!({
                "shard": shard,
                "id": id(i),
                "op": "u",
                "ns": "shop.orders",
                "entry": {"op": "u", "ns": "shop.orders", "o": {"$v": 2, "diff": {"u": {"v": v}}}, "o2": {"_id": doc}},
            }),
        )
    }

    fn truth(ids: &[u32]) -> ShardTruth {
        ShardTruth {
            committed_app: ids.iter().map(|i| (id(*i), -1)).collect(),
            committed_all: ids.iter().map(|i| id(*i)).collect(),
            ..Default::default()
        }
    }

    fn one(shard: &str, t: ShardTruth) -> BTreeMap<String, ShardTruth> {
        BTreeMap::from([(shard.to_owned(), t)])
    }

    #[test]
    fn clean_output_passes() {
        let seg = Segment {
            records: vec![rec("a", 1, 1, 1), rec("a", 2, 1, 2)],
            ..Default::default()
        };
        let v = check(&[seg], &one("a", truth(&[1, 2])));
        assert!(v.failures().is_empty(), "{:?}", v.failures());
        assert_eq!(v.distinct, 2);
    }

    #[test]
    fn lost_and_phantom_are_reported() {
        let mut t = truth(&[1, 2]);
        t.rolled_back.insert(id(3));
        let seg = Segment {
            records: vec![rec("a", 1, 1, 1), rec("a", 3, 2, 1)],
            ..Default::default()
        };
        let v = check(&[seg], &one("a", t));
        assert_eq!(v.lost, vec![format!("a: {}", id(2))]);
        assert_eq!(v.phantom.len(), 1);
        assert!(v.phantom[0].contains("rolled back"), "{:?}", v.phantom);
    }

    #[test]
    fn an_entry_a_majority_held_but_never_committed_is_a_phantom() {
        // Figure 8: entry 3 was held by a write majority of voters, never committed, and
        // rolled back; entry 4 was held the same way and committed later.
        let mut t = truth(&[1, 2, 4]);
        t.rolled_back.insert(id(3));
        t.majority_held.extend([id(3), id(4)]);
        let seg = Segment {
            records: vec![
                rec("a", 1, 1, 1),
                rec("a", 2, 1, 2),
                rec("a", 3, 2, 1),
                rec("a", 4, 1, 3),
            ],
            ..Default::default()
        };
        let v = check(&[seg], &one("a", t));
        assert_eq!(v.phantom.len(), 1, "{v:?}");
        assert!(
            v.phantom[0].contains("although a majority of voters had held it"),
            "{:?}",
            v.phantom
        );
        assert_eq!(v.rolled_back_majority_held, 1);
        assert_eq!(v.majority_held_committed, 1);
        assert!(v.lost.is_empty(), "{v:?}");
    }

    #[test]
    fn repeats_after_a_kill_are_inside_the_window_only_after_the_checkpoint() {
        let killed = Segment {
            records: vec![rec("a", 1, 1, 1), rec("a", 2, 1, 2), rec("a", 3, 1, 3)],
            crashed: true,
            checkpoints: BTreeMap::from([("a".to_owned(), id(1))]),
        };
        let next = Segment {
            records: vec![rec("a", 2, 1, 2), rec("a", 3, 1, 3), rec("a", 4, 1, 4)],
            ..Default::default()
        };
        let v = check(&[killed.clone(), next], &one("a", truth(&[1, 2, 3, 4])));
        assert!(v.failures().is_empty(), "{:?}", v.failures());
        assert_eq!(v.dup_in_window, 2);

        // Repeating the checkpoint itself is outside the window, and an order violation.
        let bad = Segment {
            records: vec![rec("a", 1, 1, 1), rec("a", 4, 1, 4)],
            ..Default::default()
        };
        let v = check(&[killed.clone(), bad], &one("a", truth(&[1, 2, 3, 4])));
        assert_eq!(v.dup_outside.len(), 1, "{v:?}");
        assert_eq!(v.shard_order.len(), 1, "{v:?}");

        // After a graceful stop nothing may repeat.
        let stopped = Segment {
            crashed: false,
            ..killed
        };
        let again = Segment {
            records: vec![rec("a", 3, 1, 3), rec("a", 4, 1, 4)],
            ..Default::default()
        };
        let v = check(&[stopped, again], &one("a", truth(&[1, 2, 3, 4])));
        assert_eq!(v.dup_outside.len(), 1, "{v:?}");
    }

    #[test]
    fn a_window_stays_open_across_a_graceful_run_that_did_not_reach_the_record() {
        let killed = Segment {
            records: vec![rec("a", 1, 1, 1), rec("a", 2, 1, 2)],
            crashed: true,
            checkpoints: BTreeMap::from([("a".to_owned(), id(1))]),
        };
        // Stopped gracefully before it re-read id 2: its final checkpoint is still 1.
        let short = Segment {
            records: vec![],
            crashed: false,
            checkpoints: BTreeMap::from([("a".to_owned(), id(1))]),
        };
        let next = Segment {
            records: vec![rec("a", 2, 1, 2), rec("a", 3, 1, 3)],
            ..Default::default()
        };
        let v = check(&[killed, short, next], &one("a", truth(&[1, 2, 3])));
        assert!(v.failures().is_empty(), "{:?}", v.failures());
        assert_eq!(v.dup_in_window, 1);
    }

    #[test]
    fn order_within_a_shard_and_across_shards() {
        let seg = Segment {
            records: vec![rec("a", 2, 1, 2), rec("a", 1, 1, 1), rec("b", 1, 1, 1)],
            ..Default::default()
        };
        let t = BTreeMap::from([
            ("a".to_owned(), truth(&[1, 2])),
            ("b".to_owned(), truth(&[1])),
        ]);
        let v = check(&[seg], &t);
        assert_eq!(v.shard_order.len(), 1, "{v:?}");
        assert_eq!(v.doc_order_same_shard.len(), 1, "{v:?}");
        // Version 1 on shard b after version 2 on shard a: the known cross-shard limit.
        assert_eq!(v.doc_order_cross_shard, 1, "{v:?}");
    }

    #[test]
    fn from_migrate_records_are_phantoms() {
        let mut r = rec("a", 1, 1, 1);
        r.1["entry"]["fromMigrate"] = Value::Bool(true);
        let seg = Segment {
            records: vec![r],
            ..Default::default()
        };
        let v = check(&[seg], &one("a", truth(&[1])));
        assert_eq!(v.phantom.len(), 1);
    }

    #[test]
    fn order_is_per_lane() {
        // Two partitions interleaved: each in order, so no violation.
        let mut a = rec("a", 2, 1, 1);
        a.0 = 1;
        let seg = Segment {
            records: vec![rec("a", 1, 2, 1), rec("a", 3, 3, 1), a],
            ..Default::default()
        };
        let v = check(&[seg], &one("a", truth(&[1, 2, 3])));
        assert!(v.failures().is_empty(), "{:?}", v.failures());
    }

    fn entry(i: u32, op: &str, o: bson::Document) -> bson::RawDocumentBuf {
        let mut d = bson::doc! {
            "ts": bson::Timestamp { time: 100, increment: i },
            "t": 1_i64,
            "v": 2,
            "op": op,
            "ns": if op == "c" { "admin.$cmd" } else { "shop.orders" },
            "o": o,
            "wall": bson::DateTime::from_millis(0),
        };
        if op == "c" {
            d.insert("lsid", bson::doc! {"id": 7});
            d.insert("txnNumber", 3_i64);
        }
        bson::RawDocumentBuf::try_from(&d).unwrap()
    }

    fn txn_rec(i: u32, index: i64, op: Value) -> (i32, Value) {
        (
            0,
            serde_json::json!({
                "shard": "a", "id": id(i), "op": op["op"], "ns": "shop.orders",
                "txn": {"index": index}, "entry": op,
            }),
        )
    }

    #[test]
    fn transactions_are_expected_whole_from_a_chain_and_checked() {
        let ins = |k: i32| bson::doc! {"op": "i", "ns": "shop.orders", "o": {"_id": k, "v": 0, "t": 9_i64}};
        let committed = vec![
            entry(1, "i", bson::doc! {"_id": 1, "v": 0}),
            // A two-entry chain: three operations, one of them internal (filtered).
            entry(
                2,
                "c",
                bson::doc! {"applyOps": [ins(10), ins(11)], "partialTxn": true},
            ),
            entry(
                3,
                "c",
                bson::doc! {"applyOps": [{"op": "i", "ns": "config.x", "o": {"_id": 1}}], "count": 3_i64},
            ),
        ];
        let t = ShardTruth::from_entries(&committed, &[], None);
        assert_eq!(t.txns, 1);
        assert_eq!(
            t.committed_app,
            vec![(id(1), -1), (id(3), 0), (id(3), 1)],
            "the chain's operations carry the identity of its last entry"
        );
        let op = |k: i32| serde_json::json!({"op": "i", "ns": "shop.orders", "o": {"_id": k, "v": 0, "t": 9}});
        assert_eq!(
            txn_op_key(&op(10)),
            Some(("i".into(), "10".into(), Some(9)))
        );
        let plain = (
            0,
            serde_json::json!({"shard": "a", "id": id(1), "op": "i", "entry": {"op": "i", "ns": "shop.orders", "o": {"_id": 1, "v": 0}}}),
        );
        let whole = Segment {
            records: vec![plain.clone(), txn_rec(3, 0, op(10)), txn_rec(3, 1, op(11))],
            ..Default::default()
        };
        let v = check(&[whole], &one("a", t.clone()));
        assert!(v.failures().is_empty(), "{:?}", v.failures());

        // One operation missing: lost. An index the transaction does not have: phantom.
        let partial = Segment {
            records: vec![plain, txn_rec(3, 0, op(10)), txn_rec(3, 2, op(12))],
            ..Default::default()
        };
        let v = check(&[partial], &one("a", t));
        assert_eq!(v.lost.len(), 1, "{v:?}");
        assert!(v.lost[0].contains("operation 1"), "{v:?}");
        assert_eq!(v.phantom.len(), 1, "{v:?}");
        assert!(v.phantom[0].contains("not an operation"), "{v:?}");
    }
}

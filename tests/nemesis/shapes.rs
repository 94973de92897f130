//! The workload's other write shapes, beside single writes and transactions: what a user
//! does that MongoDB logs differently, each checked against quorumtail's records from
//! what the workload did.
//!
//! - **deleteMany**: a group of fresh documents inserted with one unordered `insertMany`
//!   (mongos sends each shard its documents in one batch: on 8.0 a vectored insert, one
//!   retryable `applyOps` with `multiOpType: 1` per shard holding two or more), then
//!   removed with `deleteMany({g: <group>})`. The group spans chunks, so every shard
//!   deletes a few: on 7.0+ a shard with two or more logs them as session-less `applyOps`
//!   batches (one plain `d` for a single document), earlier versions one `d` each.
//! - **Time-series inserts**: measurements into `shop.readings` (`timeField: "ts"`,
//!   `metaField: "sensor"`), 1 to 3 per `insertMany`, each with a unique `m`. MongoDB logs
//!   bucket inserts and `$v: 2` diff updates on `shop.system.buckets.readings`.
//! - **DDL**: side collections `shop.side<k>`, each created, given one document, indexed
//!   (`createIndexes` on a non-empty collection: a two-phase build) and dropped; DDL
//!   through mongos waits for `w: "majority"`.
//!
//! The checks ([`check`]) derive the expected records from these operations and the
//! ground truth's committed history (which operation of an indeterminate one committed),
//! not from quorumtail's filter: every document of an acknowledged `insertMany` and
//! `deleteMany` has its `i` and `d` record, every acknowledged measurement is in exactly one
//! bucket record, and every acknowledged DDL operation is exactly one record (none for one
//! that did not commit).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::checker::{committed_transactions, Segment};
use crate::workload::{doc_id, Outcome};

/// Sequence numbers from here on (their `doc_id`s) are the deleteMany groups' documents;
/// plain clients stay below `TXN_SEQ_BASE`, transactions between the two.
pub const GROUP_SEQ_BASE: u64 = 3 << 22;
/// The time-series collection (in `shop`).
pub const READINGS: &str = "readings";
/// How long one operation may take before it counts as timed out (indeterminate).
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// What an operation of this client did.
#[derive(Debug, Clone)]
pub enum Shape {
    /// `insertMany` of a group's documents (`{_id, v: 0, g}`).
    InsertGroup { group: i64, ids: Vec<i32> },
    /// `deleteMany({g: group})`.
    DeleteGroup { group: i64, ids: Vec<i32> },
    /// `insertMany` of measurements, by their `m`.
    Measurements { ms: Vec<i64> },
    /// A DDL command on `shop`: its name (`create`, `createIndexes`, `drop`) and the
    /// collection.
    Ddl { command: &'static str, coll: String },
}

/// One operation and how it ended.
#[derive(Debug, Clone)]
pub struct ShapeOp {
    pub shape: Shape,
    pub outcome: Outcome,
    pub at: Duration,
}

/// What the client needs.
#[derive(Debug, Clone)]
pub struct ShapesClient {
    pub seed: u64,
    /// Time between two steps (`None`: as fast as it can).
    pub period: Option<Duration>,
    pub client: mongodb::Client,
    pub ops: Arc<Mutex<Vec<ShapeOp>>>,
    pub stop: Arc<AtomicBool>,
    pub t0: Instant,
}

/// Creates the time-series collection (before the faults begin), acknowledged by a
/// majority.
///
/// # Errors
/// The command's error.
pub async fn create_readings(client: &mongodb::Client) -> Result<(), String> {
    client
        .database("shop")
        .run_command(doc! {
            "create": READINGS,
            "timeseries": {"timeField": "ts", "metaField": "sensor"},
            "writeConcern": {"w": "majority"},
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Runs `op` within [`OP_TIMEOUT`]; `n` reads how many documents it wrote, or refuses
/// the reply (a command's `writeConcernError`).
async fn timed<T>(
    op: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    n: impl FnOnce(T) -> Result<u64, String>,
) -> Outcome {
    match tokio::time::timeout(OP_TIMEOUT, op.into_future()).await {
        Ok(Ok(t)) => match n(t) {
            Ok(n) => Outcome::Ok { n },
            Err(e) => Outcome::Failed(e),
        },
        Ok(Err(e)) => Outcome::Failed(e.to_string().chars().take(400).collect()),
        Err(_) => Outcome::TimedOut,
    }
}

/// A DDL reply: acknowledged unless it carries a `writeConcernError`.
fn ddl_reply(reply: Document) -> Result<u64, String> {
    match reply.get_document("writeConcernError") {
        Ok(e) => Err(format!("writeConcernError {e}")),
        Err(_) => Ok(1),
    }
}

/// Runs until `stop`: a time-series insert every step, a deleteMany group every third
/// step, the next DDL step of a side collection every fifth.
pub async fn client(c: ShapesClient) {
    let mut rng = StdRng::seed_from_u64(c.seed ^ 0x5348_4150_4553);
    let shop = c.client.database("shop");
    let orders = shop.collection::<Document>("orders");
    let readings = shop.collection::<Document>(READINGS);
    let mut tick = c.period.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let (mut seq, mut m, mut group, mut side, mut ddl_step) = (GROUP_SEQ_BASE, 0i64, 0i64, 0, 0);
    let base_ms = 1_700_000_000_000i64;
    let mut step: u64 = 0;
    while !c.stop.load(Ordering::SeqCst) {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        step += 1;
        let record = |shape: Shape, outcome: Outcome, at: Duration| {
            c.ops.lock().unwrap().push(ShapeOp { shape, outcome, at });
        };

        // Time-series: 1 to 3 measurements of one or two sensors, a second apart.
        let docs: Vec<Document> = (0..rng.gen_range(1..=3))
            .map(|_| {
                m += 1;
                doc! {
                    "ts": bson::DateTime::from_millis(base_ms + m * 1000),
                    "sensor": if rng.gen_bool(0.5) { "a" } else { "b" },
                    "m": m,
                    "temp": rng.gen_range(-10..40),
                }
            })
            .collect();
        let ms = docs.iter().map(|d| d.get_i64("m").unwrap()).collect();
        let at = c.t0.elapsed();
        let outcome = timed(readings.insert_many(docs), |r| {
            Ok(r.inserted_ids.len() as u64)
        })
        .await;
        record(Shape::Measurements { ms }, outcome, at);

        // deleteMany of a fresh group spread over the chunks.
        if step.is_multiple_of(3) {
            group += 1;
            let ids: Vec<i32> = (0..rng.gen_range(3..=8))
                .map(|_| {
                    seq += 1;
                    doc_id(seq)
                })
                .collect();
            let at = c.t0.elapsed();
            let docs = ids.iter().map(|id| doc! {"_id": *id, "v": 0, "g": group});
            let outcome = timed(orders.insert_many(docs).ordered(false), |r| {
                Ok(r.inserted_ids.len() as u64)
            })
            .await;
            record(
                Shape::InsertGroup {
                    group,
                    ids: ids.clone(),
                },
                outcome,
                at,
            );
            // An insert that failed may have written part of the group: delete anyway.
            let at = c.t0.elapsed();
            let outcome = timed(orders.delete_many(doc! {"g": group}), |r| {
                Ok(r.deleted_count)
            })
            .await;
            record(Shape::DeleteGroup { group, ids }, outcome, at);
        }

        // DDL: create, insert, createIndexes, drop, on side<k>.
        if step.is_multiple_of(5) {
            let coll = format!("side{side}");
            let cmd = match ddl_step {
                0 => Some((
                    "create",
                    doc! {"create": &coll, "writeConcern": {"w": "majority"}},
                )),
                1 => None,
                2 => Some((
                    "createIndexes",
                    doc! {
                        "createIndexes": &coll,
                        "indexes": [{"key": {"x": 1}, "name": "x_1"}],
                        "writeConcern": {"w": "majority"},
                    },
                )),
                _ => Some((
                    "drop",
                    doc! {"drop": &coll, "writeConcern": {"w": "majority"}},
                )),
            };
            let at = c.t0.elapsed();
            match cmd {
                Some((command, cmd)) => {
                    // run_command hands back a reply with a writeConcernError as it is.
                    let outcome = timed(shop.run_command(cmd), ddl_reply).await;
                    record(Shape::Ddl { command, coll }, outcome, at);
                }
                None => {
                    // One document, so that the index build is a two-phase one. Its record
                    // is a plain insert, checked with the ground truth's other entries.
                    let _ = timed(
                        shop.collection::<Document>(&coll)
                            .insert_one(doc! {"_id": 1, "x": side}),
                        |_| Ok(1),
                    )
                    .await;
                }
            }
            ddl_step += 1;
            if ddl_step == 4 {
                ddl_step = 0;
                side += 1;
            }
        }
    }
}

/// What the ground truth committed of these shapes, over every shard: `(op, _id)` of the
/// group documents' inserts and deletes (top-level entries and operations of `applyOps`
/// batches), the measurements' `m` in committed bucket writes, and the DDL operations
/// `(command, collection)` logged.
#[derive(Debug, Default)]
pub struct ShapeTruth {
    pub ops: HashSet<(String, i32)>,
    pub measurements: HashSet<i64>,
    pub ddl: HashSet<(String, String)>,
}

impl ShapeTruth {
    /// Adds one shard's committed history.
    pub fn add(&mut self, committed: &[bson::RawDocumentBuf]) {
        let mut all: Vec<Document> = committed
            .iter()
            .filter_map(|raw| Document::try_from(raw.as_ref()).ok())
            .collect();
        all.extend(
            committed_transactions(committed)
                .into_iter()
                .flat_map(|(_, ops)| ops),
        );
        for d in all {
            let json = Bson::Document(d).into_relaxed_extjson();
            if let Some((op, id)) = group_op(&json) {
                self.ops.insert((op, id));
            }
            self.measurements.extend(measurements(&json));
            if let Some(k) = ddl_op(&json) {
                self.ddl.insert(k);
            }
        }
    }
}

/// `(op, _id)` of an insert or delete on `shop.orders` (an entry or an operation of an
/// `applyOps`).
fn group_op(entry: &Value) -> Option<(String, i32)> {
    if entry["ns"] != "shop.orders" || entry["fromMigrate"] == true {
        return None;
    }
    let op = entry["op"].as_str()?;
    matches!(op, "i" | "d").then_some(())?;
    let id = entry["o"]["_id"].as_i64()?;
    Some((op.to_owned(), i32::try_from(id).ok()?))
}

/// The `m` of every measurement a bucket write on `shop.system.buckets.readings` adds: an
/// insert's `data.m` column, an update's `sdata.sm.i` (or a new column, `sdata.i.m`).
pub fn measurements(entry: &Value) -> Vec<i64> {
    if entry["ns"] != "shop.system.buckets.readings" || entry["fromMigrate"] == true {
        return Vec::new();
    }
    let column = match entry["op"].as_str() {
        Some("i") => &entry["o"]["data"]["m"],
        Some("u") => {
            let sdata = &entry["o"]["diff"]["sdata"];
            if sdata["sm"]["i"].is_object() {
                &sdata["sm"]["i"]
            } else {
                &sdata["i"]["m"]
            }
        }
        _ => return Vec::new(),
    };
    column
        .as_object()
        .map(|o| o.values().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// `(command, collection)` of a DDL entry on a side collection or the readings.
fn ddl_op(entry: &Value) -> Option<(String, String)> {
    if entry["op"] != "c" || entry["ns"] != "shop.$cmd" {
        return None;
    }
    let o = entry["o"].as_object()?;
    let (name, coll) = o.iter().next()?;
    let coll = coll.as_str()?;
    let command = match name.as_str() {
        "create" | "drop" => name.as_str(),
        "createIndexes" | "commitIndexBuild" => "createIndexes",
        _ => return None,
    };
    let coll = coll.strip_prefix("system.buckets.").unwrap_or(coll);
    (coll.starts_with("side") || coll == READINGS).then(|| (command.to_owned(), coll.to_owned()))
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct ShapeVerdict {
    pub groups: usize,
    pub group_docs_deleted: usize,
    /// Of those, deletes emitted from an `applyOps` batch (a record with `txn.index`).
    pub batched_deletes: usize,
    /// Group documents whose insert record came from a vectored insert (8.0: an operation
    /// of an `applyOps` carrying the retryable write's `lsid`).
    pub vectored_inserts: usize,
    pub measurements: usize,
    pub ddl: usize,
    pub indeterminate: usize,
    pub failures: Vec<String>,
}

/// Checks the records against the shapes the workload wrote (see the module docs).
/// `ops` includes the time-series collection's `create`.
pub fn check(ops: &[ShapeOp], truth: &ShapeTruth, segments: &[Segment]) -> ShapeVerdict {
    let mut v = ShapeVerdict::default();
    // Distinct records: (shard, id, index) -> record.
    let mut distinct: BTreeMap<(String, String, i64), &Value> = BTreeMap::new();
    for seg in segments {
        for (_, r) in &seg.records {
            let k = (
                r["shard"].as_str().unwrap_or_default().to_owned(),
                r["id"].to_string(),
                r["txn"]["index"].as_i64().unwrap_or(-1),
            );
            distinct.entry(k).or_insert(r);
        }
    }
    let mut out_ops: HashMap<(String, i32), usize> = HashMap::new();
    let mut out_ms: HashMap<i64, usize> = HashMap::new();
    let mut out_ddl: HashMap<(String, String), usize> = HashMap::new();
    let mut batched: HashSet<i32> = HashSet::new();
    let mut vectored: HashSet<i32> = HashSet::new();
    for r in distinct.values() {
        let e = &r["entry"];
        if let Some(k) = group_op(e) {
            // A batched delete's record: an operation of a session-less applyOps.
            if k.0 == "d" && r["txn"].is_object() && r["txn"]["lsid"].is_null() {
                batched.insert(k.1);
            }
            if k.0 == "i" && r["txn"]["lsid"].is_object() {
                vectored.insert(k.1);
            }
            *out_ops.entry(k).or_default() += 1;
        }
        for m in measurements(e) {
            *out_ms.entry(m).or_default() += 1;
        }
        if let Some(k) = ddl_op(e) {
            *out_ddl.entry(k).or_default() += 1;
        }
    }
    let (mut missing, mut twice, mut anomalies) = (Vec::new(), Vec::new(), Vec::new());
    let mut expect = |what: String, acked: bool, committed: bool, emitted: usize| {
        if acked && !committed {
            anomalies.push(format!(
                "{what}: acknowledged, not in the committed history"
            ));
        }
        let want = usize::from(acked || committed);
        if emitted < want {
            missing.push(what);
        } else if emitted > want {
            twice.push(format!("{what}: {emitted} records"));
        }
    };
    let mut inserted_groups: HashMap<i64, bool> = HashMap::new();
    for op in ops {
        let acked = matches!(op.outcome, Outcome::Ok { .. });
        v.indeterminate += usize::from(!acked);
        let when = format!("written at {:.2}s", op.at.as_secs_f64());
        match &op.shape {
            Shape::InsertGroup { group, ids } => {
                inserted_groups.insert(*group, acked);
                for id in ids {
                    v.vectored_inserts += usize::from(vectored.contains(id));
                    let k = ("i".to_owned(), *id);
                    let n = out_ops.get(&k).copied().unwrap_or(0);
                    expect(
                        format!("insert of _id {id} (group {group}, {when})"),
                        acked,
                        truth.ops.contains(&k),
                        n,
                    );
                }
            }
            Shape::DeleteGroup { group, ids } => {
                v.groups += 1;
                for id in ids {
                    // Deleted if it was inserted (acknowledged, or committed).
                    let inserted = inserted_groups.get(group).copied().unwrap_or(false)
                        || truth.ops.contains(&("i".to_owned(), *id));
                    let k = ("d".to_owned(), *id);
                    let n = out_ops.get(&k).copied().unwrap_or(0);
                    v.group_docs_deleted += usize::from(n > 0);
                    v.batched_deletes += usize::from(batched.contains(id));
                    expect(
                        format!("delete of _id {id} (deleteMany of group {group}, {when})"),
                        acked && inserted,
                        truth.ops.contains(&k),
                        n,
                    );
                }
            }
            Shape::Measurements { ms } => {
                for m in ms {
                    v.measurements += 1;
                    expect(
                        format!("measurement m={m} ({when})"),
                        acked,
                        truth.measurements.contains(m),
                        out_ms.get(m).copied().unwrap_or(0),
                    );
                }
            }
            Shape::Ddl { command, coll } => {
                v.ddl += 1;
                let k = ((*command).to_owned(), coll.clone());
                expect(
                    format!("{command} {coll} ({when})"),
                    acked,
                    truth.ddl.contains(&k),
                    out_ddl.get(&k).copied().unwrap_or(0),
                );
            }
        }
    }
    let mut class = |name: &str, list: Vec<String>| {
        if !list.is_empty() {
            let ex: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
            v.failures
                .push(format!("{} {name}: {}", list.len(), ex.join("; ")));
        }
    };
    class(
        "writes (deleteMany, time-series, DDL) without their record",
        missing,
    );
    class(
        "writes (deleteMany, time-series, DDL) with more than one record",
        twice,
    );
    class(
        "acknowledged writes (deleteMany, time-series, DDL) missing from the committed history (mongosim)",
        anomalies,
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(i: u32, index: Option<i64>, entry: Value) -> (i32, Value) {
        let mut r = json!({"shard": "a", "id": {"ts": {"t": 1, "i": i}, "t": 1}, "entry": entry});
        if let Some(index) = index {
            r["txn"] = json!({"index": index});
        }
        (0, r)
    }

    fn ok() -> Outcome {
        Outcome::Ok { n: 1 }
    }

    fn op(shape: Shape, outcome: Outcome) -> ShapeOp {
        ShapeOp {
            shape,
            outcome,
            at: Duration::ZERO,
        }
    }

    #[test]
    fn a_delete_many_needs_every_delete_of_its_batch() {
        let ops = vec![
            op(
                Shape::InsertGroup {
                    group: 1,
                    ids: vec![5, 6],
                },
                ok(),
            ),
            op(
                Shape::DeleteGroup {
                    group: 1,
                    ids: vec![5, 6],
                },
                ok(),
            ),
        ];
        let ins = |i, id| {
            rec(
                i,
                None,
                json!({"op": "i", "ns": "shop.orders", "o": {"_id": id}}),
            )
        };
        let del = |id| json!({"op": "d", "ns": "shop.orders", "o": {"_id": id}});
        let mut truth = ShapeTruth::default();
        for k in [("i", 5), ("i", 6), ("d", 5), ("d", 6)] {
            truth.ops.insert((k.0.to_owned(), k.1));
        }
        let whole = Segment {
            records: vec![
                ins(1, 5),
                ins(2, 6),
                rec(3, Some(0), del(5)),
                rec(3, Some(1), del(6)),
            ],
            ..Default::default()
        };
        let v = check(&ops, &truth, &[whole]);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert_eq!(v.group_docs_deleted, 2);

        let half = Segment {
            records: vec![ins(1, 5), ins(2, 6), rec(3, Some(0), del(5))],
            ..Default::default()
        };
        let v = check(&ops, &truth, &[half]);
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        assert!(
            v.failures[0].contains("delete of _id 6"),
            "{:?}",
            v.failures
        );
    }

    #[test]
    fn measurements_are_read_from_bucket_inserts_and_diffs_once_each() {
        let ops = vec![
            op(Shape::Measurements { ms: vec![1, 2] }, ok()),
            op(Shape::Measurements { ms: vec![3] }, ok()),
            op(Shape::Measurements { ms: vec![4] }, Outcome::TimedOut),
        ];
        let ns = "shop.system.buckets.readings";
        let insert = json!({"op": "i", "ns": ns, "o": {"data": {"m": {"0": 1, "1": 2}}}});
        let update = json!({"op": "u", "ns": ns, "o": {"$v": 2, "diff": {"sdata": {"sm": {"i": {"2": 3}}}}}});
        let truth = ShapeTruth {
            measurements: HashSet::from([1, 2, 3]),
            ..Default::default()
        };
        let seg = Segment {
            records: vec![rec(1, None, insert.clone()), rec(2, None, update.clone())],
            ..Default::default()
        };
        let v = check(&ops, &truth, &[seg]);
        assert!(v.failures.is_empty(), "{:?}", v.failures);

        // The same measurement in two bucket writes: reported.
        let again = json!({"op": "i", "ns": ns, "o": {"data": {"m": {"0": 3}}}});
        let seg = Segment {
            records: vec![
                rec(1, None, insert),
                rec(2, None, update),
                rec(3, None, again),
            ],
            ..Default::default()
        };
        let v = check(&ops, &truth, &[seg]);
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        assert!(v.failures[0].contains("2 records"), "{:?}", v.failures);
    }

    #[test]
    fn a_ddl_operation_is_one_record_and_a_failed_one_none_unless_committed() {
        let ddl = |command, coll: &str| Shape::Ddl {
            command,
            coll: coll.to_owned(),
        };
        let ops = vec![
            op(ddl("create", "side0"), ok()),
            op(ddl("createIndexes", "side0"), ok()),
            op(ddl("drop", "side0"), Outcome::Failed("not primary".into())),
        ];
        let truth = ShapeTruth {
            ddl: HashSet::from([
                ("create".to_owned(), "side0".to_owned()),
                ("createIndexes".to_owned(), "side0".to_owned()),
            ]),
            ..Default::default()
        };
        let create = json!({"op": "c", "ns": "shop.$cmd", "o": {"create": "side0"}});
        let build = json!({"op": "c", "ns": "shop.$cmd", "o": {"commitIndexBuild": "side0"}});
        let seg = Segment {
            records: vec![rec(1, None, create.clone()), rec(2, None, build)],
            ..Default::default()
        };
        let v = check(&ops, &truth, &[seg]);
        assert!(v.failures.is_empty(), "{:?}", v.failures);

        // The create from two shards: two records for one operation. The index build
        // missing.
        let mut other = rec(1, None, create.clone());
        other.1["shard"] = json!("b");
        let seg = Segment {
            records: vec![rec(1, None, create), other],
            ..Default::default()
        };
        let v = check(&ops, &truth, &[seg]);
        assert_eq!(v.failures.len(), 2, "{:?}", v.failures);
    }
}

//! ETL round trips through Kafka: a random workload written through mongos by the Rust
//! driver (inserts; updates with `$set` on nested paths, `$unset`, `$inc`, whole arrays
//! set longer or shorter, the only array changes the simulator makes; replacements;
//! deletes; a transaction across both shards), read by quorumtail from a two-shard
//! cluster into a Kafka-protocol broker, consumed with rdkafka, and applied to an empty
//! collection of a second, independent replica set the way an off-the-shelf consumer
//! applies them. The result must equal the source collection, read back from the source
//! cluster (never from quorumtail's own decoding).
//!
//! * `format = "change-event"`: applied as the MongoDB Kafka sink connector's
//!   `com.mongodb.kafka.connect.sink.cdc.mongodb.ChangeStreamHandler` does (repository
//!   `mongodb/mongo-kafka`, `sink/cdc/mongodb/ChangeStreamHandler.java` and
//!   `operations/{Replace,Update,Delete,OperationHelper}.java`): `insert` and `replace`
//!   are `replaceOne(documentKey, fullDocument, upsert)`; `update` with a `fullDocument`
//!   is `replaceOne(documentKey, fullDocument)`, without one `updateOne(documentKey,
//!   {$push: {<field>: {$each: [], $slice: newSize}}})` per truncated array, then
//!   `updateOne(documentKey, {$set: updatedFields, $unset: {<removed>: ""}})` (`$unset`
//!   only when fields were removed); `delete` is `deleteOne(documentKey)`; every other
//!   `operationType` is skipped.
//! * `format = "debezium"` with `key = "document"` and `tombstones = true`: applied by key
//!   as the same connector's Debezium MongoDB handler
//!   (`sink/cdc/debezium/mongodb/ChangeStreamHandler.java`, `MongoDbInsert`,
//!   `MongoDbUpdate` in its change-stream event format, `MongoDbDelete`): the filter is
//!   `{_id: <key.id parsed as Extended JSON>}`; `c` and `r` replace with `after`
//!   (upsert); `u` replaces with `after` when it is set, else applies
//!   `updateDescription` (`updatedFields` is a JSON string) as `$set`/`$unset`; `d`
//!   deletes; a tombstone deletes too (idempotent). Then log compaction: the last message
//!   per key is a tombstone exactly for the documents the source no longer holds, and,
//!   with `full_document = "lookup"`, the last value per key is the source document.
//!
//! The workload's seed is printed; `QUORUMTAIL_ETL_SEED` replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bson::{doc, Bson, Document};
use mongodb::{Client, Collection};
use mongosim::{Cluster, ClusterSpec, ReplicaSet, ReplicaSetSpec, ServerVersion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::broker::{read_all, Broker, Consumed};
use crate::support::{shards_toml, start_text, Running};

/// The workload's seed: `QUORUMTAIL_ETL_SEED`, or a fresh one (printed either way).
fn seed() -> u64 {
    let seed = std::env::var("QUORUMTAIL_ETL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("etl workload seed {seed} (QUORUMTAIL_ETL_SEED={seed} replays it)");
    seed
}

async fn source(version: ServerVersion) -> (Cluster, Client) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version,
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!(
        "mongodb://{}/?serverSelectionTimeoutMS=5000",
        cluster.mongos_addr()
    ))
    .await
    .unwrap();
    (cluster, client)
}

/// The second, independent replica set the records are applied to.
async fn target() -> (ReplicaSet, Collection<Document>) {
    let rs = ReplicaSet::start(ReplicaSetSpec {
        nodes: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=5000",
        rs.replica_set_uri(&rs.name())
    ))
    .await
    .unwrap();
    let coll = client.database("copy").collection::<Document>("people");
    (rs, coll)
}

/// A random document with `_id` `id`.
fn random_doc(rng: &mut StdRng, id: i32) -> Document {
    let mut d = doc! {"_id": id, "name": format!("p{}", rng.gen_range(0..1000))};
    if rng.gen_bool(0.7) {
        d.insert("n", rng.gen_range(-5_i64..50));
    }
    if rng.gen_bool(0.8) {
        let tags: Vec<Bson> = (0..rng.gen_range(0..4))
            .map(|i| Bson::String(format!("t{i}")))
            .collect();
        d.insert("sub", doc! {"x": rng.gen_range(0..10), "tags": tags});
    }
    if rng.gen_bool(0.3) {
        d.insert("score", rng.gen_range(0.0..100.0_f64));
    }
    d
}

/// A random operator update: `$set` of top-level and nested fields (some new), `$unset`,
/// `$inc` (creating the field when absent), whole arrays set longer or shorter.
fn random_update(rng: &mut StdRng) -> Document {
    match rng.gen_range(0..7) {
        0 => {
            doc! {"$set": {"name": format!("r{}", rng.gen_range(0..1000)), "sub.x": rng.gen_range(0..10)}}
        }
        1 => doc! {"$unset": {["n", "sub.x", "score", "sub", "extra"][rng.gen_range(0..5)]: ""}},
        2 => doc! {"$inc": {"n": rng.gen_range(1_i64..5)}},
        3 => {
            let tags: Vec<Bson> = (0..rng.gen_range(0..5))
                .map(|i| Bson::String(format!("u{i}")))
                .collect();
            doc! {"$set": {"sub.tags": tags}}
        }
        4 => doc! {"$set": {"sub.deep.k": rng.gen_range(0..3), "extra": {"list": [1, 2]}}},
        5 => doc! {"$unset": {"sub.tags": ""}, "$set": {"score": rng.gen_range(0.0..1.0_f64)}},
        _ => {
            doc! {"$inc": {"sub.y": 1}, "$set": {"at": bson::DateTime::from_millis(1_700_000_000_000 + rng.gen_range(0..1000))}}
        }
    }
}

/// Writes a random workload on `shop.people` (ids below 1000 on shard01, from 1000 on
/// shard02), with one transaction across both shards in the middle.
async fn workload(client: &Client, rng: &mut StdRng) {
    let coll = client.database("shop").collection::<Document>("people");
    let ids: Vec<i32> = (0..12).chain(1000..1012).collect();
    let mut live: BTreeSet<i32> = BTreeSet::new();
    for step in 0..160 {
        if step == 80 {
            transaction(client, &coll, &mut live).await;
        }
        let id = ids[rng.gen_range(0..ids.len())];
        if !live.contains(&id) {
            coll.insert_one(random_doc(rng, id)).await.unwrap();
            live.insert(id);
            continue;
        }
        match rng.gen_range(0..10) {
            0 => {
                coll.replace_one(doc! {"_id": id}, random_doc(rng, id))
                    .await
                    .unwrap();
            }
            1 => {
                coll.delete_one(doc! {"_id": id}).await.unwrap();
                live.remove(&id);
            }
            _ => {
                let u = random_update(rng);
                coll.update_one(doc! {"_id": id}, u.clone())
                    .await
                    .unwrap_or_else(|e| panic!("update {id} with {u}: {e}"));
            }
        }
    }
}

/// One transaction on both shards: an insert on each, an update and a delete of
/// documents that existed before.
async fn transaction(client: &Client, coll: &Collection<Document>, live: &mut BTreeSet<i32>) {
    for id in [500, 1500] {
        if !live.contains(&id) {
            coll.insert_one(doc! {"_id": id, "name": "before"})
                .await
                .unwrap();
            live.insert(id);
        }
    }
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 501, "name": "in txn", "n": 7_i64})
        .session(&mut session)
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 1501, "name": "in txn"})
        .session(&mut session)
        .await
        .unwrap();
    coll.update_one(
        doc! {"_id": 500},
        doc! {"$set": {"paid": true, "sub.x": 3}, "$unset": {"name": ""}},
    )
    .session(&mut session)
    .await
    .unwrap();
    coll.delete_one(doc! {"_id": 1500})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    live.insert(501);
    live.insert(1501);
    live.remove(&1500);
}

/// Every document of `coll`, by `_id`.
async fn documents(coll: &Collection<Document>) -> BTreeMap<String, Document> {
    let mut out = BTreeMap::new();
    let mut cursor = coll.find(doc! {}).await.unwrap();
    while cursor.advance().await.unwrap() {
        let d: Document = cursor.deserialize_current().unwrap();
        out.insert(id_text(d.get("_id").unwrap()), d);
    }
    out
}

/// `doc` as a consumer parsing relaxed Extended JSON sees it: an int64 that fits in 32
/// bits is written as a plain number and parsed back as an int32 (relaxed mode is lossy
/// for that type by definition; see README, "Change events"). Everything else is compared
/// exactly.
fn as_relaxed_reads_it(doc: &Document) -> Document {
    fn value(v: &Bson) -> Bson {
        match v {
            Bson::Int64(n) => i32::try_from(*n).map_or(Bson::Int64(*n), Bson::Int32),
            Bson::Document(d) => Bson::Document(as_relaxed_reads_it(d)),
            Bson::Array(a) => Bson::Array(a.iter().map(value).collect()),
            other => other.clone(),
        }
    }
    doc.iter().map(|(k, v)| (k.clone(), value(v))).collect()
}

fn id_text(id: &Bson) -> String {
    id.clone().into_relaxed_extjson().to_string()
}

/// Extended JSON (relaxed, or the strict strings Debezium writes) to a document.
fn parse_doc(v: &Value) -> Document {
    match Bson::try_from(v.clone()) {
        Ok(Bson::Document(d)) => d,
        other => panic!("not a document: {other:?} from {v}"),
    }
}

fn parse_doc_text(text: &str) -> Document {
    parse_doc(&serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// The messages of `topic` in each partition's order.
async fn consume(broker: &Broker, topic: &str) -> Vec<Consumed> {
    let mut got = read_all(&broker.bootstrap, &[topic]).await;
    got.sort_by_key(|m| (m.partition, m.offset));
    got
}

/// quorumtail with the Kafka sink, `sink` lines added to `[sink]`.
fn run(
    cluster: &Cluster,
    broker: &Broker,
    dir: &std::path::Path,
    name: &str,
    sink: &str,
) -> Running {
    start_text(&format!(
        "{}\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"kafka\"\nbrokers = {:?}\n{sink}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"earliest\"\n",
        shards_toml(cluster),
        broker.bootstrap,
        dir.join(format!("{name}.cp.json")).display().to_string()
    ))
}

/// The last writes, one per shard: once both are in the topic, each shard has handed
/// every earlier record to the sink, and a graceful stop delivers them all.
const MARKERS: [i32; 2] = [999, 9999];

async fn write_markers(coll: &Collection<Document>) {
    for id in MARKERS {
        coll.insert_one(doc! {"_id": id, "name": "last"})
            .await
            .unwrap();
    }
}

/// Waits until the topic holds the records of both markers (`marker_id` reads a
/// record's `_id`).
async fn wait_for_markers(
    broker: &Broker,
    topic: &str,
    marker_id: impl Fn(&Consumed) -> Option<i64>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got = consume(broker, topic).await;
        let seen: BTreeSet<i64> = got.iter().filter_map(&marker_id).collect();
        if MARKERS.iter().all(|m| seen.contains(&i64::from(*m))) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last writes did not reach {topic} within 90 s ({} messages, markers {seen:?})",
            got.len()
        );
        // The polling interval of a bounded wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies one change event as the MongoDB Kafka sink connector's `ChangeStreamHandler`
/// does (see the module docs).
async fn apply_change_event(coll: &Collection<Document>, ev: &Document) -> &'static str {
    let kind = ev.get_str("operationType").unwrap_or("");
    let key = || ev.get_document("documentKey").unwrap().clone();
    match kind {
        "insert" | "replace" => {
            coll.replace_one(key(), ev.get_document("fullDocument").unwrap().clone())
                .upsert(true)
                .await
                .unwrap();
            "replaceOne(upsert)"
        }
        "update" => {
            if let Ok(full) = ev.get_document("fullDocument") {
                coll.replace_one(key(), full.clone()).await.unwrap();
                return "replaceOne";
            }
            let desc = ev.get_document("updateDescription").unwrap();
            let truncated = desc
                .get_array("truncatedArrays")
                .cloned()
                .unwrap_or_default();
            if !truncated.is_empty() {
                let mut push = Document::new();
                for t in truncated {
                    let t = t.as_document().unwrap();
                    push.insert(
                        t.get_str("field").unwrap(),
                        doc! {"$each": [], "$slice": t.get("newSize").unwrap().clone()},
                    );
                }
                coll.update_one(key(), doc! {"$push": push}).await.unwrap();
            }
            let mut u = doc! {"$set": desc.get_document("updatedFields").unwrap().clone()};
            let removed: Document = desc
                .get_array("removedFields")
                .unwrap()
                .iter()
                .map(|p| (p.as_str().unwrap().to_owned(), Bson::String(String::new())))
                .collect();
            if !removed.is_empty() {
                u.insert("$unset", removed);
            }
            coll.update_one(key(), u.clone())
                .await
                .unwrap_or_else(|e| panic!("updateOne {u}: {e}"));
            "updateOne"
        }
        "delete" => {
            coll.delete_one(key()).await.unwrap();
            "deleteOne"
        }
        _ => "skipped",
    }
}

/// `format = "change-event"`, applied as the MongoDB sink connector's change-stream
/// handler applies change events, gives the source collection; on 7.0 (`$v: 2` deltas).
/// Relaxed Extended JSON (the default) reads small int64 values back as int32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_applied_like_the_mongodb_sink_connector_give_the_source() {
    change_events_round_trip(false).await;
}

/// As above with `[sink] json = "canonical"`: every value keeps its BSON type, so the copy
/// equals the source exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_change_events_give_the_source_with_its_types() {
    change_events_round_trip(true).await;
}

async fn change_events_round_trip(canonical: bool) {
    let mut rng = StdRng::seed_from_u64(seed());
    let broker = Broker::start();
    // One topic per database: `{coll}` would render `<db>.$cmd` for the collection's
    // implicit `create`, which Kafka refuses as a topic name.
    let topic = format!(
        "etlce{}{}.shop",
        std::process::id(),
        if canonical { "c" } else { "r" }
    );
    broker.create_topics(&[(topic.as_str(), 3)]).await;
    let (cluster, client) = source(ServerVersion::V7_0).await;
    let (rs, copy) = target().await;
    let tmp = tempfile::tempdir().unwrap();
    let q = run(
        &cluster,
        &broker,
        tmp.path(),
        "ce",
        &format!(
            "format = \"change-event\"\ntopic = \"{}.{{db}}\"{}",
            topic.trim_end_matches(".shop"),
            if canonical {
                "\njson = \"canonical\""
            } else {
                ""
            }
        ),
    );
    workload(&client, &mut rng).await;
    let source_coll = client.database("shop").collection::<Document>("people");
    write_markers(&source_coll).await;
    // Relaxed or canonical Extended JSON alike: read the values as BSON.
    wait_for_markers(&broker, &topic, |m| {
        let ev = Bson::try_from(m.value.clone()).ok()?;
        let ev = ev.as_document()?;
        let last = ev
            .get_document("fullDocument")
            .is_ok_and(|d| d.get_str("name").is_ok_and(|n| n == "last"));
        last.then(|| match ev.get_document("documentKey").ok()?.get("_id")? {
            Bson::Int32(i) => Some(i64::from(*i)),
            Bson::Int64(i) => Some(*i),
            _ => None,
        })
        .flatten()
    })
    .await;
    assert!(q.stop().await.ok(), "a graceful stop delivers every record");
    let got = consume(&broker, &topic).await;
    let mut applied: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &got {
        let ev = parse_doc(&m.value);
        *applied
            .entry(apply_change_event(&copy, &ev).await)
            .or_default() += 1;
    }
    let want = documents(&source_coll).await;
    let have = documents(&copy).await;
    assert_eq!(
        have.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same documents"
    );
    for (id, d) in &want {
        if canonical {
            assert_eq!(&have[id], d, "document {id}");
        } else {
            assert_eq!(have[id], as_relaxed_reads_it(d), "document {id}");
        }
    }
    // Every kind of write went through the applier.
    for kind in ["replaceOne(upsert)", "updateOne", "deleteOne"] {
        assert!(applied.contains_key(kind), "{kind} applied: {applied:?}");
    }
    let txn = got
        .iter()
        .filter(|m| m.value.get("txnNumber").is_some())
        .count();
    assert_eq!(
        txn, 4,
        "the transaction's four operations carry its txnNumber"
    );
    rs.shutdown().await;
    cluster.shutdown().await;
}

/// `_id` filter from a Debezium key, `{"id": <the _id as Extended JSON, a string>}`.
fn debezium_filter(key: &[u8]) -> Document {
    let key: Value = serde_json::from_slice(key).expect("a JSON key");
    let id: Value = serde_json::from_str(key["id"].as_str().expect("key.id is a string")).unwrap();
    doc! {"_id": Bson::try_from(id).unwrap()}
}

/// Applies one Debezium message by key as the MongoDB Kafka sink connector's Debezium
/// MongoDB handler does (see the module docs); a tombstone deletes.
async fn apply_debezium(coll: &Collection<Document>, m: &Consumed) -> &'static str {
    let filter = debezium_filter(m.key.as_deref().expect("every message has a key"));
    let v = &m.value;
    if v.is_null() {
        coll.delete_one(filter).await.unwrap();
        return "tombstone";
    }
    match (v["op"].as_str().unwrap_or(""), v["after"].as_str()) {
        ("c" | "r" | "u", Some(after)) => {
            coll.replace_one(filter, parse_doc_text(after))
                .upsert(true)
                .await
                .unwrap();
            "replaceOne(upsert)"
        }
        ("u", None) => {
            let desc = &v["updateDescription"];
            if let Some(truncated) = desc["truncatedArrays"].as_array() {
                let mut push = Document::new();
                for t in truncated {
                    push.insert(
                        t["field"].as_str().unwrap(),
                        doc! {"$each": [], "$slice": t["size"].as_i64().unwrap()},
                    );
                }
                if !push.is_empty() {
                    coll.update_one(filter.clone(), doc! {"$push": push})
                        .await
                        .unwrap();
                }
            }
            let mut u =
                doc! {"$set": parse_doc_text(desc["updatedFields"].as_str().unwrap_or("{}"))};
            let removed: Document = desc["removedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| (p.as_str().unwrap().to_owned(), Bson::String(String::new())))
                .collect();
            if !removed.is_empty() {
                u.insert("$unset", removed);
            }
            coll.update_one(filter, u.clone())
                .await
                .unwrap_or_else(|e| panic!("updateOne {u}: {e}"));
            "updateOne"
        }
        ("d", _) => {
            coll.delete_one(filter).await.unwrap();
            "deleteOne"
        }
        (op, _) => panic!("unexpected Debezium op {op:?}: {v}"),
    }
}

/// The last message per key, as log compaction keeps it: `None` for a tombstone.
fn compacted(got: &[Consumed]) -> BTreeMap<String, Option<Value>> {
    let mut last = BTreeMap::new();
    for m in got {
        let filter = debezium_filter(m.key.as_deref().unwrap());
        let id = id_text(filter.get("_id").unwrap());
        last.insert(id, (!m.value.is_null()).then(|| m.value.clone()));
    }
    last
}

/// `format = "debezium"` with document keys and tombstones, on 4.4 (`$set`/`$unset`
/// updates): applied in order by key as the MongoDB sink connector's Debezium handler
/// applies them, the records give the source collection; compacted (last message per
/// key), the tombstones are exactly the deleted documents; and with `full_document =
/// "lookup"` (a second quorumtail on the same cluster), the last value per key is the
/// source document itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_records_applied_by_key_and_compacted_give_the_source() {
    let mut rng = StdRng::seed_from_u64(seed());
    let broker = Broker::start();
    let plain = format!("etldbz{}", std::process::id());
    let looked_up = format!("etldbzl{}", std::process::id());
    let (plain_topic, lookup_topic) = (format!("{plain}.shop"), format!("{looked_up}.shop"));
    broker
        .create_topics(&[(plain_topic.as_str(), 3), (lookup_topic.as_str(), 3)])
        .await;
    let (cluster, client) = source(ServerVersion::V4_4).await;
    let (rs, copy) = target().await;
    let tmp = tempfile::tempdir().unwrap();
    let sink = |prefix: &str, extra: &str| {
        format!("format = \"debezium\"\ndebezium_server_name = {prefix:?}\ntopic = \"{prefix}.{{db}}\"\nkey = \"document\"\ntombstones = true\n{extra}")
    };
    let q = run(&cluster, &broker, tmp.path(), "dbz", &sink(&plain, ""));
    let ql = run(
        &cluster,
        &broker,
        tmp.path(),
        "dbzl",
        &sink(&looked_up, "full_document = \"lookup\""),
    );
    workload(&client, &mut rng).await;
    let source_coll = client.database("shop").collection::<Document>("people");
    write_markers(&source_coll).await;
    let marker_id = |m: &Consumed| {
        let after = parse_doc_text(m.value["after"].as_str()?);
        (after.get_str("name").ok() == Some("last"))
            .then(|| after.get_i32("_id").ok().map(i64::from))
            .flatten()
    };
    wait_for_markers(&broker, &plain_topic, marker_id).await;
    wait_for_markers(&broker, &lookup_topic, marker_id).await;
    assert!(q.stop().await.ok(), "a graceful stop delivers every record");
    assert!(
        ql.stop().await.ok(),
        "a graceful stop delivers every record"
    );
    let got = consume(&broker, &plain_topic).await;
    let got_lookup = consume(&broker, &lookup_topic).await;
    let want = documents(&source_coll).await;

    // In order, by key.
    let mut applied: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &got {
        *applied.entry(apply_debezium(&copy, m).await).or_default() += 1;
    }
    let have = documents(&copy).await;
    assert_eq!(
        have.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same documents"
    );
    for (id, d) in &want {
        // `after` is strict JSON (types kept); `updatedFields` relaxed, as the connector
        // writes it.
        assert_eq!(
            as_relaxed_reads_it(&have[id]),
            as_relaxed_reads_it(d),
            "document {id}"
        );
    }
    for kind in ["replaceOne(upsert)", "updateOne", "deleteOne", "tombstone"] {
        assert!(applied.contains_key(kind), "{kind} applied: {applied:?}");
    }
    assert_eq!(
        applied["deleteOne"], applied["tombstone"],
        "a tombstone per delete"
    );

    // Compacted: a tombstone last exactly for the deleted documents.
    for (topic, got) in [(&plain_topic, &got), (&lookup_topic, &got_lookup)] {
        let last = compacted(got);
        let alive: BTreeSet<&String> = last
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            alive,
            want.keys().collect::<BTreeSet<_>>(),
            "{topic}: keys whose last message is not a tombstone"
        );
        assert!(
            last.len() > want.len(),
            "{topic}: some documents were deleted, so some keys end in a tombstone"
        );
    }
    // With lookups every update carries the document: the last value is the document.
    for (id, v) in compacted(&got_lookup) {
        let Some(v) = v else { continue };
        let after = v["after"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: the last value has no document: {v}"));
        assert_eq!(&parse_doc_text(after), &want[&id], "last value of {id}");
    }
    rs.shutdown().await;
    cluster.shutdown().await;
}

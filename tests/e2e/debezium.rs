//! `[sink] format = "debezium"` end to end: documents inserted, updated (operators on
//! nested paths), replaced and deleted through mongos by the Rust driver come out as the
//! records Debezium's MongoDB connector writes (see `quorumtail_events::debezium`). A
//! consumer that replays them the way Debezium consumers do (the key names the document;
//! `after` is the whole document; an update without `after` applies `updateDescription`;
//! `d` removes) ends with exactly the documents the cluster holds, on a version that logs
//! `$v: 2` deltas and on one that logs `$set`/`$unset`. Through Kafka: the key of every
//! message is `{"id": ...}`, and deletes are followed by tombstones under it. Transactions:
//! `source.lsid`/`txnNumber` and the transaction block.

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Bson, Document};
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use serde_json::Value;

use crate::broker::{read_all, Broker};
use crate::support::{records, shards_toml, start_text, wait_until};

/// Extended JSON (the connector's strict strings, or relaxed) to BSON.
fn parse_json(text: &str) -> Result<Bson, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))?;
    Bson::try_from(v).map_err(|e| format!("{e}: {text}"))
}

fn parse_doc(text: &str) -> Result<Document, String> {
    match parse_json(text)? {
        Bson::Document(d) => Ok(d),
        other => Err(format!("not a document: {other}")),
    }
}

/// Replays (key, value) records into documents keyed by (namespace, `_id` as JSON).
fn replay(recs: &[(Value, Value)]) -> Result<BTreeMap<(String, String), Document>, String> {
    let mut docs = BTreeMap::new();
    for (key, v) in recs {
        if v.is_null() {
            continue; // a tombstone
        }
        let ns = format!(
            "{}.{}",
            v["source"]["db"].as_str().unwrap_or(""),
            v["source"]["collection"].as_str().unwrap_or("")
        );
        let id = parse_json(key["id"].as_str().ok_or("a key without id")?)?;
        let k = (ns, id.clone().into_relaxed_extjson().to_string());
        match (v["op"].as_str().unwrap_or(""), v["after"].as_str()) {
            ("c" | "u", Some(after)) => {
                let d = parse_doc(after)?;
                if d.get("_id") != Some(&id) {
                    return Err(format!("key {key} for the document {d}"));
                }
                docs.insert(k, d);
            }
            ("u", None) => {
                let u = &v["updateDescription"];
                let pre = docs
                    .get(&k)
                    .ok_or_else(|| format!("update of an unknown document {k:?}"))?;
                let list = |f: &str| -> Vec<Value> { u[f].as_array().cloned().unwrap_or_default() };
                let desc = quorumtail_events::UpdateDescription {
                    updated_fields: parse_doc(
                        u["updatedFields"]
                            .as_str()
                            .ok_or("updatedFields is not a string")?,
                    )?
                    .into_iter()
                    .collect(),
                    removed_fields: list("removedFields")
                        .iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect(),
                    truncated_arrays: list("truncatedArrays")
                        .iter()
                        .map(|t| {
                            (
                                t["field"].as_str().unwrap_or("").to_owned(),
                                t["size"].as_u64().unwrap_or(0) as u32,
                            )
                        })
                        .collect(),
                    disambiguated_paths: Vec::new(),
                };
                let post = quorumtail_events::apply(pre, &desc)?;
                docs.insert(k, post);
            }
            ("d", _) => {
                docs.remove(&k);
            }
            (op, _) => return Err(format!("unexpected op {op:?} in {v}")),
        }
    }
    Ok(docs)
}

/// The documents of `shop.people`, as `replay` keys them.
async fn collection(coll: &mongodb::Collection<Document>) -> BTreeMap<(String, String), Value> {
    let mut want = BTreeMap::new();
    let mut cursor = coll.find(doc! {}).await.unwrap();
    while cursor.advance().await.unwrap() {
        let d: Document = cursor.deserialize_current().unwrap();
        let id = d.get("_id").unwrap().clone().into_relaxed_extjson();
        want.insert(
            ("shop.people".to_owned(), id.to_string()),
            Bson::Document(d).into_relaxed_extjson(),
        );
    }
    want
}

/// Inserts, updates with operators on nested paths, replaces and deletes, on both shards.
async fn workload(coll: &mongodb::Collection<Document>) {
    // Ids on both shards (the simulator splits at 1000).
    let ids: Vec<i32> = (0..8).chain(1000..1008).collect();
    for &i in &ids {
        coll.insert_one(doc! {"_id": i, "name": format!("p{i}"), "n": 1_i64, "sub": {"x": 0, "tags": ["a", "b", "c"]}})
            .await
            .unwrap();
    }
    let updates = [
        doc! {"$set": {"name": "renamed", "sub.x": 5}},
        doc! {"$unset": {"n": ""}},
        doc! {"$inc": {"n": 2}},
        doc! {"$set": {"extra": {"deep": [1, 2]}, "sub.tags": ["z"]}},
        doc! {"$set": {"sub.deep.er": 1.5, "sub.x": 7}, "$inc": {"sub.y": 1}},
        doc! {"$unset": {"sub.x": ""}, "$set": {"sub.deep.more": {"k": [1, 2]}}},
    ];
    for (k, &i) in ids.iter().enumerate() {
        for u in updates.iter().skip(k % 3).step_by(1 + k % 2) {
            coll.update_one(doc! {"_id": i}, u.clone()).await.unwrap();
        }
        match k % 4 {
            0 => {
                coll.replace_one(doc! {"_id": i}, doc! {"_id": i, "whole": k as i32})
                    .await
                    .unwrap();
            }
            1 => {
                coll.delete_one(doc! {"_id": i}).await.unwrap();
            }
            _ => {}
        }
    }
}

async fn file_run(version: ServerVersion) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version,
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("debezium.jsonl");
    let q = start_text(&format!(
        "{}\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\nformat = \"debezium\"\ndebezium_server_name = \"fulfillment\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"earliest\"\n",
        shards_toml(&cluster),
        out.display().to_string(),
        tmp.path().join("cp.json").display().to_string()
    ));
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client.database("shop").collection::<Document>("people");
    workload(&coll).await;
    let want = collection(&coll).await;
    let lines = |out: &std::path::Path| -> Vec<(Value, Value)> {
        records(out)
            .into_iter()
            .map(|l| (l["key"].clone(), l["value"].clone()))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let recs = lines(&out);
        let got = replay(&recs).map(|docs| {
            docs.into_iter()
                .map(|(k, d)| (k, Bson::Document(d).into_relaxed_extjson()))
                .collect::<BTreeMap<_, _>>()
        });
        if got.as_ref().is_ok_and(|g| *g == want) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replaying {} records gives {got:#?}\nthe collection holds {want:#?}",
            recs.len()
        );
        // The polling interval of a bounded wait, not a race cover.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recs = lines(&out);
    let ops: std::collections::BTreeSet<&str> =
        recs.iter().filter_map(|(_, v)| v["op"].as_str()).collect();
    assert_eq!(
        ops,
        ["c", "d", "u"].into_iter().collect(),
        "data changes only (the collection's creation has no record)"
    );
    // Replacements are updates with `after` and no description; operator updates the
    // other way round.
    assert!(recs.iter().any(|(_, v)| v["op"] == "u"
        && v["after"].is_string()
        && v["updateDescription"].is_null()));
    assert!(recs.iter().any(|(_, v)| v["op"] == "u"
        && v["after"].is_null()
        && v["updateDescription"]["updatedFields"].is_string()));
    // Nested paths are described as such; an int64 is written in strict mode.
    let updated = |path: &str| {
        recs.iter().any(|(_, v)| {
            v["updateDescription"]["updatedFields"]
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .is_some_and(|u| u.get(path).is_some())
        })
    };
    assert!(updated("sub.x"), "sub.x updated");
    assert!(recs
        .iter()
        .any(|(_, v)| v["updateDescription"]["removedFields"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == "sub.x"))));
    assert!(recs.iter().any(|(_, v)| v["after"]
        .as_str()
        .is_some_and(|a| a.contains(r#""n": {"$numberLong": "1"}"#))));
    for (key, v) in &recs {
        assert!(key["id"].is_string(), "{key}");
        assert!(v["before"].is_null(), "no pre-images: {v}");
        assert!(v.get("patch").is_none() && v.get("filter").is_none(), "{v}");
        let s = &v["source"];
        assert_eq!(s["connector"], "mongodb", "{v}");
        assert_eq!(s["name"], "fulfillment", "{v}");
        assert_eq!(s["snapshot"], "false", "{v}");
        assert_eq!(
            (&s["db"], &s["collection"]),
            (&"shop".into(), &"people".into())
        );
        let ts_ms = s["ts_ms"].as_i64().unwrap();
        assert!(ts_ms > 1_600_000_000_000 && ts_ms % 1000 == 0, "{v}");
        assert_eq!(s["ts_us"].as_i64(), Some(ts_ms * 1000), "{v}");
        assert!(s["ord"].as_i64().is_some() && s["wallTime"].is_i64(), "{v}");
        assert!(s["lsid"].is_null() && s["txnNumber"].is_null() && v["transaction"].is_null());
        assert!(v["ts_ms"].as_i64().unwrap() >= ts_ms, "{v}");
    }
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_records_replay_to_the_collection_on_7_0_deltas() {
    file_run(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_records_replay_to_the_collection_on_4_4_modifiers() {
    file_run(ServerVersion::V4_4).await;
}

/// Through Kafka, with Debezium's topic naming (`<name>.<db>.<collection>`) and
/// tombstones: every message key is `{"id": ...}`, the same for all records of one
/// document; each delete is followed, in its partition, by a tombstone under its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_keys_and_tombstones_in_kafka() {
    let broker = Broker::start();
    let prefix = format!("dbz{}", std::process::id());
    let topic = format!("{prefix}.shop.people");
    broker.create_topics(&[(topic.as_str(), 3)]).await;
    let cluster = Cluster::start(ClusterSpec {
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let q = start_text(&format!(
        "{}\n[sink]\nkind = \"kafka\"\nbrokers = {:?}\nformat = \"debezium\"\ndebezium_server_name = {prefix:?}\ntopic = \"{prefix}.{{db}}.{{coll}}\"\ntombstones = true\n\n[checkpoint]\nkind = \"kafka\"\ntopic = \"{prefix}.checkpoints\"\ninterval = \"100ms\"\n\n[mongo]\nmax_await = \"100ms\"\n\n[start]\nposition = \"earliest\"\n",
        shards_toml(&cluster),
        broker.bootstrap
    ));
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client.database("shop").collection::<Document>("people");
    workload(&coll).await;
    let want = collection(&coll).await;
    let topics = [topic.as_str()];
    let mut got = Vec::new();
    wait_until(60, "the records replay to the collection", || {
        got = futures::executor::block_on(read_all(&broker.bootstrap, &topics));
        got.sort_by_key(|m| (m.partition, m.offset));
        // Per document, the order is its partition's order.
        let recs: Vec<(Value, Value)> = got
            .iter()
            .map(|m| {
                let key = m
                    .key
                    .as_deref()
                    .and_then(|k| serde_json::from_slice(k).ok())
                    .unwrap_or(Value::Null);
                (key, m.value.clone())
            })
            .collect();
        replay(&recs).is_ok_and(|docs| {
            docs.into_iter()
                .map(|(k, d)| (k, Bson::Document(d).into_relaxed_extjson()))
                .collect::<BTreeMap<_, _>>()
                == want
        })
    })
    .await;
    let mut deletes = 0;
    for m in &got {
        let key: Value = serde_json::from_slice(m.key.as_deref().unwrap()).unwrap();
        assert_eq!(key.as_object().map(|o| o.len()), Some(1), "{key}");
        assert!(key["id"].is_string(), "{key}");
        if let Some(after) = m.value["after"].as_str() {
            let id = parse_doc(after).unwrap().get("_id").cloned().unwrap();
            assert_eq!(
                key["id"],
                id.into_relaxed_extjson().to_string(),
                "the key is the _id in relaxed JSON"
            );
        }
        if m.value["op"] == "d" {
            deletes += 1;
            let tombstone = got
                .iter()
                .find(|t| t.partition == m.partition && t.offset == m.offset + 1)
                .expect("a tombstone after the delete");
            assert!(tombstone.value.is_null(), "{tombstone:?}");
            assert_eq!(tombstone.key, m.key);
        }
        if !m.value.is_null() {
            assert_eq!(m.value["source"]["name"], prefix.as_str());
        }
    }
    assert_eq!(deletes, 4, "{got:#?}");
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

/// A transaction's operations: each one record, with the session in `source.lsid` (strict
/// JSON) and `source.txnNumber`, and the transaction block (`id` = `<lsid>:<txnNumber>`,
/// orders overall and per collection); aborted transactions give nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_transactions() {
    let rs = mongosim::ReplicaSet::start(mongosim::ReplicaSetSpec {
        nodes: 1,
        noop_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .unwrap();
    let name = rs.name();
    let members: Vec<String> = rs.members().iter().map(|a| format!("\"{a}\"")).collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("debezium.jsonl");
    let q = start_text(&format!(
        "[[shards]]\nname = \"{name}\"\nmembers = [{}]\n[mongo]\nmax_await = \"100ms\"\n[sink]\nformat = \"debezium\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"earliest\"\n",
        members.join(", "),
        out.display().to_string(),
        tmp.path().join("cp.json").display().to_string()
    ));
    let client = mongodb::Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=5000",
        rs.replica_set_uri(&name)
    ))
    .await
    .unwrap();
    let db = client.database("shop");
    let orders = db.collection::<Document>("orders");
    let items = db.collection::<Document>("items");
    orders.insert_one(doc! {"_id": 0}).await.unwrap();
    items.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    orders
        .insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    items
        .insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    orders
        .update_one(doc! {"_id": 0}, doc! {"$set": {"paid": true}})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    session.start_transaction().await.unwrap();
    orders
        .insert_one(doc! {"_id": 99})
        .session(&mut session)
        .await
        .unwrap();
    session.abort_transaction().await.unwrap();
    orders.insert_one(doc! {"_id": 100}).await.unwrap();
    wait_until(30, "the write after the transactions", || {
        records(&out)
            .iter()
            .any(|r| r["value"]["after"] == r#"{"_id": 100}"#)
    })
    .await;
    assert!(q.stop().await.ok());
    let recs = records(&out);
    let txn: Vec<&Value> = recs
        .iter()
        .map(|r| &r["value"])
        .filter(|v| !v["transaction"].is_null())
        .collect();
    assert_eq!(txn.len(), 3, "{recs:#?}");
    let lsid = txn[0]["source"]["lsid"].as_str().unwrap();
    assert!(lsid.starts_with(r#"{"id": {"$binary": ""#), "{lsid}");
    let number = txn[0]["source"]["txnNumber"].as_i64().unwrap();
    let orders: Vec<(i64, i64)> = txn
        .iter()
        .map(|v| {
            assert_eq!(v["transaction"]["id"], format!("{lsid}:{number}"));
            assert_eq!(v["source"]["lsid"], lsid);
            (
                v["transaction"]["total_order"].as_i64().unwrap(),
                v["transaction"]["data_collection_order"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(orders, [(1, 1), (2, 1), (3, 2)]);
    // The commit's time for all three.
    assert!(txn
        .iter()
        .all(|v| v["source"]["ts_ms"] == txn[0]["source"]["ts_ms"]));
    assert!(!recs.iter().any(|r| r["value"]["after"] == r#"{"_id": 99}"#));
    rs.shutdown().await;
}

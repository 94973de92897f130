//! Resharding, moveCollection and movePrimary end to end: writes through mongos (Rust
//! driver) before, during and after the operation must each reach the output exactly
//! once, from the shard that held the document when it was written; nothing of the
//! temporary `system.resharding.*` collection and no drop or rename from the cut-over may
//! appear; each shard that took part says so with one placement marker. The expected
//! records come from what the writes did and where the catalog placed the documents, not
//! from quorumtail's filter.

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::Client;
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use serde_json::Value;

use crate::support::{records, start, wait_until, Running};

async fn cluster(version: ServerVersion) -> (Cluster, Client) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version,
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    (cluster, client)
}

fn quorumtail(cluster: &Cluster, dir: &std::path::Path) -> Running {
    let discovery = format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"200ms\"\n",
        cluster.mongos_addr()
    );
    start(dir, &discovery, "[start]\nposition = \"earliest\"\n")
}

/// The shard owning each chunk of `ns` (config.chunks through mongos).
async fn owners(client: &Client, ns: &str) -> Vec<String> {
    let chunks: Vec<Document> = client
        .database("config")
        .collection::<Document>("chunks")
        .find(doc! {"ns": ns})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks
        .iter()
        .map(|c| c.get_str("shard").unwrap().to_owned())
        .collect()
}

/// Writes `shop.done` on both shards (its chunks follow the default split) and waits for
/// both records: each shard's output is in oplog order, so every earlier record of that
/// shard is out too.
async fn finish(client: &Client, q: &Running) {
    client
        .database("shop")
        .collection::<Document>("done")
        .insert_many([doc! {"_id": 1}, doc! {"_id": 1500}])
        .await
        .unwrap();
    wait_until(30, "the last record of each shard", || {
        records(&q.out)
            .iter()
            .filter(|r| r["ns"] == "shop.done" && r["op"] == "i")
            .count()
            == 2
    })
    .await;
}

/// `"<op> <_id>"` of a document write (`u`: the `_id` of `o2`).
fn write_of(r: &Value) -> Option<String> {
    let e = &r["entry"];
    let id = match r["op"].as_str()? {
        "i" | "d" => &e["o"]["_id"],
        "u" => &e["o2"]["_id"],
        _ => return None,
    };
    Some(format!("{} {id}", r["op"].as_str()?))
}

/// The document writes on `ns` each shard emitted, in output order.
fn writes(recs: &[Value], ns: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r["ns"] == ns) {
        if let Some(w) = write_of(r) {
            out.entry(r["shard"].as_str().unwrap().to_owned())
                .or_default()
                .push(w);
        }
    }
    out
}

/// Nothing of MongoDB's resharding bookkeeping, and no drop or rename of `coll` (a
/// placement marker carries the cut-over entry it stands for, under its own `op`).
fn assert_no_internal(recs: &[Value], coll: &str) {
    for r in recs.iter().filter(|r| r["op"] != "placement") {
        let text = r.to_string();
        assert!(!text.contains("system.resharding."), "internal record: {r}");
        if r["op"] == "c" {
            let o = &r["entry"]["o"];
            assert!(
                o["drop"] != coll && o["renameCollection"].is_null(),
                "a cut-over surfaced as DDL: {r}"
            );
        }
    }
}

/// The placement markers, by shard.
fn markers(recs: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r["op"] == "placement") {
        out.entry(r["shard"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.clone());
    }
    out
}

/// The position of a shard's marker among its records of `ns` and the marker itself.
fn shard_sequence(recs: &[Value], shard: &str, ns: &str) -> Vec<String> {
    recs.iter()
        .filter(|r| r["shard"] == shard && r["ns"] == ns)
        .filter_map(|r| {
            if r["op"] == "placement" {
                Some("placement".to_owned())
            } else {
                write_of(r)
            }
        })
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

async fn reshard(version: ServerVersion) {
    let (cluster, client) = cluster(version).await;
    let tmp = tempfile::tempdir().unwrap();
    let q = quorumtail(&cluster, tmp.path());
    let items = client.database("shop").collection::<Document>("items");

    // Before: _id 1 on shard01 (the primary shard), 1500 on shard02.
    items
        .insert_many([doc! {"_id": 1, "k": 1}, doc! {"_id": 1500, "k": 2}])
        .await
        .unwrap();
    items
        .update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}})
        .await
        .unwrap();
    assert_eq!(owners(&client, "shop.items").await, ["shard01", "shard02"]);

    // During: the writes go to the donors under the old chunks.
    cluster.hold_resharding(true);
    let admin = client.database("admin");
    let task = tokio::spawn(async move {
        admin
            .run_command(doc! {"reshardCollection": "shop.items", "key": {"k": 1}})
            .await
    });
    let ok = cluster
        .wait_for(Duration::from_secs(10), |c| {
            !c.resharding_in_progress().is_empty()
        })
        .await;
    assert!(ok, "the resharding never started");
    items.insert_one(doc! {"_id": 2, "k": 3}).await.unwrap();
    items.insert_one(doc! {"_id": 1600, "k": 4}).await.unwrap();
    items
        .update_one(doc! {"_id": 1500}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    items.delete_one(doc! {"_id": 1}).await.unwrap();
    cluster.hold_resharding(false);
    task.await.unwrap().unwrap();

    // After: one chunk of the new key, on the recipient.
    let after = owners(&client, "shop.items").await;
    assert_eq!(after.len(), 1);
    let recipient = after[0].clone();
    let donor_only = if recipient == "shard01" {
        "shard02"
    } else {
        "shard01"
    };
    items.insert_one(doc! {"_id": 3, "k": 5}).await.unwrap();
    items.insert_one(doc! {"_id": 1700, "k": 6}).await.unwrap();
    items
        .update_one(doc! {"_id": 2}, doc! {"$set": {"v": 3}})
        .await
        .unwrap();
    finish(&client, &q).await;
    let report = q.stop().await;
    let recs = records(&tmp.path().join("out.jsonl"));

    // Every write once, from the shard that held the document when it was written.
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    want.entry("shard01".into())
        .or_default()
        .extend(strings(&["i 1", "u 1", "i 2", "d 1"]));
    want.entry("shard02".into())
        .or_default()
        .extend(strings(&["i 1500", "i 1600", "u 1500"]));
    want.entry(recipient.clone())
        .or_default()
        .extend(strings(&["i 3", "i 1700", "u 2"]));
    assert_eq!(writes(&recs, "shop.items"), want, "{version}");
    assert_no_internal(&recs, "items");

    // One marker per shard: the recipient's after its last write as a donor and before
    // its first as the new placement; the donor's after its last write.
    let m = markers(&recs);
    assert_eq!(m.len(), 2, "{version}: {m:#?}");
    let role = |s: &str| m[s][0]["placement"]["role"].as_str().unwrap().to_owned();
    assert_eq!(m[&recipient].len(), 1);
    assert_eq!(m[donor_only].len(), 1);
    assert_eq!(role(&recipient), "recipient");
    assert_eq!(role(donor_only), "donor");
    for s in [recipient.as_str(), donor_only] {
        let p = &m[s][0]["placement"];
        assert_eq!(m[s][0]["ns"], "shop.items");
        assert_eq!(p["operation"], "reshardCollection");
    }
    assert_eq!(
        m[&recipient][0]["placement"]["uuid"], m[donor_only][0]["placement"]["uuid"],
        "both markers name the collection's new UUID"
    );
    assert_eq!(
        shard_sequence(&recs, &recipient, "shop.items"),
        strings(&[
            "i 1500",
            "i 1600",
            "u 1500",
            "placement",
            "i 3",
            "i 1700",
            "u 2"
        ]),
        "{version}"
    );
    assert_eq!(
        shard_sequence(&recs, donor_only, "shop.items"),
        strings(&["i 1", "u 1", "i 2", "d 1", "placement"]),
        "{version}"
    );

    // 6.0+: the primary shard's notification, once, with the new key.
    let notes: Vec<&Value> = recs
        .iter()
        .filter(|r| !r["entry"]["o2"]["reshardCollection"].is_null())
        .collect();
    if version >= ServerVersion::V6_0 {
        assert_eq!(notes.len(), 1, "{version}");
        assert_eq!(notes[0]["shard"], "shard01");
        assert_eq!(
            notes[0]["entry"]["o2"]["shardKey"],
            serde_json::json!({"k": 1})
        );
        let provenance = &notes[0]["entry"]["o2"]["provenance"];
        if version >= ServerVersion::V8_0 {
            assert_eq!(provenance, "reshardCollection");
        } else {
            assert!(provenance.is_null());
        }
    } else {
        assert!(notes.is_empty());
    }
    let dropped: u64 = report.shards.values().map(|s| s.dropped_resharding).sum();
    assert!(dropped > 0, "the bookkeeping is counted as dropped");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_collection_emits_each_write_once_5_0() {
    reshard(ServerVersion::V5_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_collection_emits_each_write_once_7_0() {
    reshard(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_collection_emits_each_write_once_8_0() {
    reshard(ServerVersion::V8_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_collection_emits_each_write_once_8_0() {
    let (cluster, client) = cluster(ServerVersion::V8_0).await;
    let tmp = tempfile::tempdir().unwrap();
    let q = quorumtail(&cluster, tmp.path());
    let items = client.database("shop").collection::<Document>("items");
    items
        .insert_many([doc! {"_id": 1}, doc! {"_id": 1500}])
        .await
        .unwrap();
    cluster.hold_resharding(true);
    let admin = client.database("admin");
    let task = tokio::spawn(async move {
        admin
            .run_command(doc! {"moveCollection": "shop.items", "toShard": "shard01"})
            .await
    });
    let ok = cluster
        .wait_for(Duration::from_secs(10), |c| {
            !c.resharding_in_progress().is_empty()
        })
        .await;
    assert!(ok, "the moveCollection never started");
    items.insert_one(doc! {"_id": 1600}).await.unwrap();
    cluster.hold_resharding(false);
    task.await.unwrap().unwrap();
    assert_eq!(owners(&client, "shop.items").await, ["shard01"]);
    items.insert_one(doc! {"_id": 1700}).await.unwrap();
    finish(&client, &q).await;
    q.stop().await;
    let recs = records(&tmp.path().join("out.jsonl"));
    assert_eq!(
        shard_sequence(&recs, "shard01", "shop.items"),
        strings(&["i 1", "placement", "i 1700"])
    );
    assert_eq!(
        shard_sequence(&recs, "shard02", "shop.items"),
        strings(&["i 1500", "i 1600", "placement"])
    );
    let m = markers(&recs);
    assert_eq!(m["shard01"][0]["placement"]["role"], "recipient");
    assert_eq!(m["shard02"][0]["placement"]["role"], "donor");
    assert_no_internal(&recs, "items");
    let notes: Vec<&Value> = recs
        .iter()
        .filter(|r| !r["entry"]["o2"]["reshardCollection"].is_null())
        .collect();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["entry"]["o2"]["provenance"], "moveCollection");
    cluster.shutdown().await;
}

async fn move_primary(version: ServerVersion) {
    let (cluster, client) = cluster(version).await;
    let tmp = tempfile::tempdir().unwrap();
    let q = quorumtail(&cluster, tmp.path());
    let shop = client.database("shop");
    // An unsharded collection on the primary shard (shard01), written on the shard.
    shop.run_command(doc! {"create": "settings"}).await.unwrap();
    let insert = |id: i32| doc! {"insert": "settings", "documents": [{"_id": id}], "$db": "shop"};
    let p1 = cluster.primary_of("shard01").unwrap();
    for id in [1, 2] {
        let reply = cluster.command(p1, insert(id)).await;
        assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
    }
    // quorumtail has read shop's primary shard before it moves.
    wait_until(30, "the settings records", || {
        records(&q.out)
            .iter()
            .filter(|r| r["ns"] == "shop.settings")
            .count()
            == 2
    })
    .await;
    client
        .database("admin")
        .run_command(doc! {"movePrimary": "shop", "to": "shard02"})
        .await
        .unwrap();
    assert_eq!(cluster.database_primaries()["shop"], "shard02");
    // After: the collection lives on the new primary.
    let p2 = cluster.primary_of("shard02").unwrap();
    let reply = cluster.command(p2, insert(3)).await;
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
    finish(&client, &q).await;
    q.stop().await;
    let recs = records(&tmp.path().join("out.jsonl"));
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    want.insert("shard01".into(), strings(&["i 1", "i 2"]));
    want.insert("shard02".into(), strings(&["i 3"]));
    assert_eq!(writes(&recs, "shop.settings"), want, "{version}");
    // One create (the user's), no drop of the moved collection.
    let ddl: Vec<String> = recs
        .iter()
        .filter(|r| r["op"] == "c" && r["ns"] == "shop.$cmd")
        .map(|r| format!("{} {}", r["shard"], r["entry"]["o"]))
        .filter(|s| s.contains("settings"))
        .collect();
    assert_eq!(ddl.len(), 1, "{version}: {ddl:#?}");
    assert!(ddl[0].starts_with("\"shard01\"") && ddl[0].contains("create"));
    let m = markers(&recs);
    assert_eq!(m.len(), 1, "{version}: {m:#?}");
    let marker = &m["shard01"][0];
    assert_eq!(marker["ns"], "shop");
    assert_eq!(
        marker["placement"],
        serde_json::json!({"operation": "movePrimary", "from": "shard01", "to": "shard02"})
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_primary_moves_writes_without_duplicates_7_0() {
    move_primary(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_primary_moves_writes_without_duplicates_8_0() {
    move_primary(ServerVersion::V8_0).await;
}

/// The same through a Kafka-protocol broker (7.0): every write once, one marker per
/// shard, keyed by the collection and with the collection in its `ns` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_collection_through_kafka_7_0() {
    use crate::broker::{read_all, Broker};
    let broker = Broker::start();
    let prefix = format!("reshard{}", std::process::id());
    let (cluster, client) = cluster(ServerVersion::V7_0).await;
    let topics: Vec<String> = cluster
        .shard_names()
        .iter()
        .map(|s| format!("{prefix}.{s}"))
        .collect();
    let topic_refs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 1)).collect();
    broker.create_topics(&topic_refs).await;
    let q = crate::support::start_text(&format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"200ms\"\n\n[sink]\nkind = \"kafka\"\nbrokers = {:?}\ntopic = \"{prefix}.{{shard}}\"\nkey = \"document\"\n\n[checkpoint]\nkind = \"kafka\"\ntopic = \"{prefix}.checkpoints\"\ninterval = \"100ms\"\n\n[mongo]\nmax_await = \"100ms\"\n\n[start]\nposition = \"earliest\"\n",
        cluster.mongos_addr(),
        broker.bootstrap
    ));
    let items = client.database("shop").collection::<Document>("items");
    items
        .insert_many([doc! {"_id": 1, "k": 1}, doc! {"_id": 1500, "k": 2}])
        .await
        .unwrap();
    cluster.hold_resharding(true);
    let admin = client.database("admin");
    let task = tokio::spawn(async move {
        admin
            .run_command(doc! {"reshardCollection": "shop.items", "key": {"k": 1}})
            .await
    });
    let ok = cluster
        .wait_for(Duration::from_secs(10), |c| {
            !c.resharding_in_progress().is_empty()
        })
        .await;
    assert!(ok, "the resharding never started");
    items.insert_one(doc! {"_id": 2, "k": 3}).await.unwrap();
    items.insert_one(doc! {"_id": 1600, "k": 4}).await.unwrap();
    cluster.hold_resharding(false);
    task.await.unwrap().unwrap();
    items.insert_one(doc! {"_id": 3, "k": 5}).await.unwrap();
    client
        .database("shop")
        .collection::<Document>("done")
        .insert_many([doc! {"_id": 1}, doc! {"_id": 1500}])
        .await
        .unwrap();
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut got = Vec::new();
    wait_until(60, "the last record of each shard", || {
        got = futures::executor::block_on(read_all(&broker.bootstrap, &topic_names));
        got.iter()
            .filter(|m| m.value["ns"] == "shop.done" && m.value["op"] == "i")
            .count()
            == 2
    })
    .await;
    assert!(q.stop().await.ok());
    let recs: Vec<Value> = got.iter().map(|m| m.value.clone()).collect();
    let mut all: Vec<String> = writes(&recs, "shop.items")
        .into_values()
        .flatten()
        .collect();
    all.sort();
    assert_eq!(all, strings(&["i 1", "i 1500", "i 1600", "i 2", "i 3"]));
    assert_no_internal(&recs, "items");
    let placed: Vec<_> = got
        .iter()
        .filter(|m| m.value["op"] == "placement")
        .collect();
    assert_eq!(placed.len(), 2, "{placed:#?}");
    for m in placed {
        assert_eq!(m.key.as_deref(), Some(b"shop.items".as_slice()));
        assert_eq!(m.header("ns"), Some("shop.items"));
        assert_eq!(m.topic, format!("{prefix}.{}", m.shard()));
    }
    cluster.shutdown().await;
}

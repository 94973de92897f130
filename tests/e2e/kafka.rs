//! The whole path to a real Kafka-protocol broker (tansu on loopback, or an external broker
//! from `KAFKA_BOOTSTRAP`), read back with a real consumer.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bson::doc;
use mongosim::{Cluster, ClusterSpec};
use quorumtail_oplog::{EntryId, OplogEntry};

use crate::broker::{read_all, Broker};
use crate::support::{committed_app_entries, record_id, shards_toml, start_text, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_safe_records_reach_kafka_in_order_and_resume_from_a_kafka_checkpoint() {
    let broker = Broker::start();
    let prefix = format!("e2e{}", std::process::id());
    let cluster = Cluster::start(ClusterSpec {
        noop_interval: Duration::from_millis(200),
        election_timeout: Duration::from_millis(500),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let names = cluster.shard_names();
    let topics: Vec<String> = names.iter().map(|s| format!("{prefix}.{s}")).collect();
    let topic_refs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 3)).collect();
    broker.create_topics(&topic_refs).await;

    let extra = "[start]\nposition = \"earliest\"\n[http]\nlisten = \"127.0.0.1:0\"\n";
    let shards = shards_toml(&cluster);
    let kafka = format!(
        "{shards}\n[sink]\nkind = \"kafka\"\nbrokers = {:?}\ntopic = \"{prefix}.{{shard}}\"\nkey = \"document\"\n\n[checkpoint]\nkind = \"kafka\"\ntopic = \"{prefix}.checkpoints\"\ninterval = \"100ms\"\n\n[mongo]\nmax_await = \"100ms\"\n\n{extra}",
        broker.bootstrap
    );
    let q = start_text(&kafka);

    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client
        .database("shop")
        .collection::<bson::Document>("orders");
    for i in 1..=15 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
        coll.insert_one(doc! { "_id": 1000 + i }).await.unwrap();
    }
    coll.update_one(doc! { "_id": 1 }, doc! { "$set": { "x": 1 } })
        .await
        .unwrap();
    cluster
        .move_chunk("shop.orders", bson::Bson::Int32(1), &names[1])
        .await
        .unwrap();
    let old = cluster.primary_of(&names[0]).unwrap();
    cluster.partition_node(old).await.unwrap();
    let direct = mongodb::Client::with_uri_str(format!("mongodb://{old}/?directConnection=true"))
        .await
        .unwrap();
    direct
        .database("shop")
        .collection::<bson::Document>("orders")
        .insert_one(doc! { "_id": 8888 })
        .await
        .unwrap();
    wait_until(30, "a new primary", || {
        cluster.primary_of(&names[0]).is_some_and(|p| p != old)
    })
    .await;
    cluster.heal_node(old).await.unwrap();
    wait_until(30, "the rollback", || {
        !cluster.rolled_back_entries(&names[0]).is_empty()
    })
    .await;
    coll.insert_one(doc! { "_id": 500 }).await.unwrap();
    coll.insert_one(doc! { "_id": 1500 }).await.unwrap();

    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let expect = |cluster: &Cluster| -> BTreeMap<String, Vec<EntryId>> {
        names
            .iter()
            .map(|s| (s.clone(), committed_app_entries(cluster, s)))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let consumed = loop {
        let got = read_all(&broker.bootstrap, &topic_names).await;
        let want = expect(&cluster);
        let complete = want.iter().all(|(s, ids)| {
            let have: HashSet<EntryId> = got
                .iter()
                .filter(|c| c.shard() == s)
                .map(|c| record_id(&c.value))
                .collect();
            !ids.is_empty() && ids.iter().all(|i| have.contains(i))
        });
        if complete {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records did not all reach Kafka"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The delivery metrics saw every acknowledged record.
    let addr = q.status.http_addr().unwrap();
    let (_, metrics) =
        tokio::task::spawn_blocking(move || crate::support::http_get(addr, "/metrics"))
            .await
            .unwrap();
    let delivered: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quorumtail_sink_delivery_seconds_count "))
        .expect("delivery histogram")
        .parse()
        .unwrap();
    assert!(
        delivered >= consumed.len() as f64,
        "{delivered} acknowledged < {} consumed",
        consumed.len()
    );
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");

    let rolled_back: HashSet<EntryId> = cluster
        .rolled_back_entries(&names[0])
        .iter()
        .map(|r| OplogEntry::parse(r).unwrap().id())
        .collect();
    let want = expect(&cluster);
    let mut per_partition: BTreeMap<(String, i32), Vec<EntryId>> = BTreeMap::new();
    for c in &consumed {
        let id = record_id(&c.value);
        let shard = c.shard().to_owned();
        assert_eq!(c.topic, format!("{prefix}.{shard}"));
        assert_eq!(c.header("shard"), Some(shard.as_str()));
        assert_eq!(
            c.header("ts"),
            Some(format!("{}:{}", id.ts.time, id.ts.increment).as_str())
        );
        assert_eq!(c.header("op"), c.value["op"].as_str());
        assert_eq!(c.header("ns"), c.value["ns"].as_str());
        if c.value["op"] == "i" {
            let key: serde_json::Value = serde_json::from_slice(c.key.as_deref().unwrap()).unwrap();
            assert_eq!(key["ns"], c.value["ns"]);
            assert_eq!(
                key["_id"]["$numberInt"],
                c.value["entry"]["o"]["_id"].to_string()
            );
        }
        if shard == names[0] {
            assert!(
                !rolled_back.contains(&id),
                "a rolled-back entry reached Kafka: {}",
                c.value
            );
        }
        assert!(c.value["entry"]["fromMigrate"].is_null());
        per_partition
            .entry((c.topic.clone(), c.partition))
            .or_default()
            .push(id);
    }
    for ((topic, p), ids) in &per_partition {
        assert!(
            ids.windows(2).all(|w| w[0].ts < w[1].ts),
            "{topic}[{p}] out of order: {ids:?}"
        );
    }
    for (shard, ids) in &want {
        let mut have: Vec<EntryId> = consumed
            .iter()
            .filter(|c| c.shard() == shard)
            .map(|c| record_id(&c.value))
            .collect();
        have.sort();
        let mut want_sorted = ids.clone();
        want_sorted.sort();
        assert_eq!(
            have, want_sorted,
            "{shard}: exactly the committed application history, no duplicates"
        );
    }

    // Restart: the checkpoints come back from the compacted topic, and only new writes follow.
    let before = consumed.len();
    let q = start_text(&kafka);
    coll.insert_one(doc! { "_id": 501 }).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        let got = read_all(&broker.bootstrap, &topic_names).await;
        if got.iter().any(|c| c.value["entry"]["o"]["_id"] == 501) {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write after the restart did not reach Kafka"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(q.stop().await.ok());
    assert_eq!(
        after.len(),
        before + 1,
        "the restart repeated records instead of resuming from the stored checkpoints"
    );
    cluster.shutdown().await;
}

/// `[sink] tombstones = true` with document keys: every delete reaches Kafka followed by a
/// null value under the same key (what log compaction needs to forget the document), in
/// the same partition, and nothing else gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_followed_by_tombstones_under_the_document_key() {
    let broker = Broker::start();
    let prefix = format!("tomb{}", std::process::id());
    let cluster = Cluster::start(ClusterSpec {
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let names = cluster.shard_names();
    let topics: Vec<String> = names.iter().map(|s| format!("{prefix}.{s}")).collect();
    let topic_refs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 2)).collect();
    broker.create_topics(&topic_refs).await;
    let q = start_text(&format!(
        "{}\n[sink]\nkind = \"kafka\"\nbrokers = {:?}\ntopic = \"{prefix}.{{shard}}\"\nkey = \"document\"\ntombstones = true\n\n[checkpoint]\nkind = \"kafka\"\ntopic = \"{prefix}.checkpoints\"\ninterval = \"100ms\"\n\n[mongo]\nmax_await = \"100ms\"\n\n[start]\nposition = \"earliest\"\n",
        shards_toml(&cluster),
        broker.bootstrap
    ));
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client
        .database("shop")
        .collection::<bson::Document>("orders");
    for i in [1, 2, 3, 1001, 1002] {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
    }
    for i in [2, 1001] {
        coll.delete_one(doc! { "_id": i }).await.unwrap();
    }
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut got = Vec::new();
    // Commands (the collection's creation on each shard) aside.
    let data = |all: Vec<crate::broker::Consumed>| -> Vec<crate::broker::Consumed> {
        all.into_iter()
            .filter(|m| m.value.is_null() || m.value["op"] != "c")
            .collect()
    };
    wait_until(60, "five inserts, two deletes and two tombstones", || {
        got = data(futures::executor::block_on(read_all(
            &broker.bootstrap,
            &topic_names,
        )));
        got.len() >= 9
    })
    .await;
    assert_eq!(got.len(), 9, "{got:#?}");
    let tombstones: Vec<_> = got.iter().filter(|m| m.value.is_null()).collect();
    assert_eq!(tombstones.len(), 2, "{got:#?}");
    for t in tombstones {
        assert_eq!(t.header("op"), Some("d"));
        // The delete record with this key comes right before it in the same partition.
        let delete = got
            .iter()
            .find(|m| m.partition == t.partition && m.topic == t.topic && m.offset == t.offset - 1)
            .expect("a record before the tombstone");
        assert_eq!(delete.key, t.key);
        assert_eq!(delete.value["op"], "d", "{delete:?}");
    }
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

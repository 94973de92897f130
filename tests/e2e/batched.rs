//! insertMany and deleteMany end to end on every version whose shape differs: one `d` per
//! document up to 6.0, batched multi-deletes (session-less `applyOps` of up to 100
//! deletes) from 7.0; one `i` per document up to 7.0, vectored inserts (a retryable
//! `applyOps` with `multiOpType: 1` per shard batch) on 8.0. Written through mongos with
//! the Rust driver on two shards; the output must hold each inserted and each deleted
//! document exactly once, in order, the operations of one batch at the batch entry's
//! position.

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Document};
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use serde_json::Value;

use crate::support::{records, shards_toml, start, wait_until};

/// `(ts seconds, ts increment, index within the entry)` of a record: its position.
fn position(r: &Value) -> (u64, u64, u64) {
    (
        r["ts"]["t"].as_u64().unwrap(),
        r["ts"]["i"].as_u64().unwrap(),
        r["txn"]["index"].as_u64().unwrap_or(0),
    )
}

async fn run(version: ServerVersion) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version,
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n",
    );
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let items = client.database("shop").collection::<Document>("items");
    let n = 600;
    items
        .insert_many((0..n).map(|i| doc! {"_id": i, "keep": i >= 500}))
        .await
        .unwrap();
    let deleted = items
        .delete_many(doc! {"keep": false})
        .await
        .unwrap()
        .deleted_count;
    assert_eq!(deleted, 500);
    // Written last: once it is out, every earlier write of its shard is too.
    client
        .database("shop")
        .collection::<Document>("done")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let shards = cluster.shard_names();
    wait_until(30, "every delete in the output", || {
        records(&q.out)
            .iter()
            .filter(|r| r["op"] == "d" && r["ns"] == "shop.items")
            .count()
            >= 500
    })
    .await;
    q.stop().await;

    let recs = records(&tmp.path().join("out.jsonl"));
    let items_recs: Vec<&Value> = recs.iter().filter(|r| r["ns"] == "shop.items").collect();
    let ids_of = |op: &str| -> Vec<i64> {
        let mut v: Vec<i64> = items_recs
            .iter()
            .filter(|r| r["op"] == op)
            .map(|r| r["entry"]["o"]["_id"].as_i64().unwrap())
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(
        ids_of("i"),
        (0..n as i64).collect::<Vec<_>>(),
        "{version}: inserts once each"
    );
    assert_eq!(
        ids_of("d"),
        (0..500).collect::<Vec<_>>(),
        "{version}: deletes once each"
    );
    if version >= ServerVersion::V8_0 {
        let vectored = items_recs
            .iter()
            .filter(|r| r["op"] == "i" && r["txn"]["lsid"].is_object())
            .count();
        assert_eq!(
            vectored, n as usize,
            "{version}: every insert from a vectored insert"
        );
    }
    for shard in &shards {
        let of_shard: Vec<&&Value> = items_recs.iter().filter(|r| r["shard"] == *shard).collect();
        // In order: positions strictly increase through the shard's records.
        for w in of_shard.windows(2) {
            assert!(
                position(w[0]) < position(w[1]),
                "{version}: {} then {}",
                w[0],
                w[1]
            );
        }
        // A document is deleted after it was inserted.
        let mut inserted_at = BTreeMap::new();
        for r in &of_shard {
            let id = r["entry"]["o"]["_id"].as_i64().unwrap();
            match r["op"].as_str().unwrap() {
                "i" => {
                    inserted_at.insert(id, position(r));
                }
                "d" => assert!(inserted_at.get(&id).is_some_and(|p| *p < position(r))),
                other => panic!("unexpected {other}"),
            }
        }
        // The shape of the deletes per version: batches of up to 100 at one position.
        let mut batches: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        for r in of_shard.iter().filter(|r| r["op"] == "d") {
            let (t, i, _) = position(r);
            *batches.entry((t, i)).or_default() += 1;
        }
        let sizes: Vec<usize> = batches.values().copied().collect();
        let deletes: usize = sizes.iter().sum();
        // Inserts: on 8.0 the insertMany is a vectored insert, one applyOps entry per
        // shard batch (at most 500 documents), each document its own record at the batch
        // entry's position, carrying the retryable write's session; before, one entry each.
        let mut insert_batches: BTreeMap<(u64, u64), Vec<&Value>> = BTreeMap::new();
        for r in of_shard.iter().filter(|r| r["op"] == "i") {
            let (t, i, _) = position(r);
            insert_batches.entry((t, i)).or_default().push(r);
        }
        let inserts: usize = insert_batches.values().map(Vec::len).sum();
        if version >= ServerVersion::V8_0 && inserts > 1 {
            assert!(
                insert_batches.len() < inserts,
                "{version}: no vectored insert among {inserts} inserts"
            );
            for batch in insert_batches.values().filter(|b| b.len() > 1) {
                assert!(batch.len() <= 500, "{version}: {}", batch.len());
                for (k, r) in batch.iter().enumerate() {
                    assert_eq!(r["txn"]["index"], k as u64, "{version}: {r}");
                    assert_eq!(r["txn"]["count"], batch.len() as u64, "{version}: {r}");
                    assert!(r["txn"]["lsid"].is_object(), "{version}: {r}");
                    assert!(r["entry"]["stmtId"].as_u64().is_some(), "{r}");
                }
            }
        } else if version < ServerVersion::V8_0 {
            assert_eq!(insert_batches.len(), inserts, "{version}");
        }
        if version >= ServerVersion::V7_0 {
            assert!(sizes.iter().all(|s| *s <= 100), "{version}: {sizes:?}");
            assert_eq!(sizes.len(), deletes.div_ceil(100), "{version}: {sizes:?}");
        } else {
            assert!(sizes.iter().all(|s| *s == 1), "{version}: {sizes:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_many_reaches_the_output_once_per_document_6_0() {
    run(ServerVersion::V6_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_many_reaches_the_output_once_per_document_7_0() {
    run(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_many_and_delete_many_reach_the_output_once_per_document_8_0() {
    run(ServerVersion::V8_0).await;
}

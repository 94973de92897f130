//! 8.0 vectored inserts through mongos with the Rust driver: an insertMany whose batch
//! for a shard holds several documents is one `applyOps` entry (the shape and its sources
//! are in the crate docs and `world/vectored.rs`); 7.0 logs one `i` per document.

use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::Client;
use mongosim::{Cluster, ClusterSpec, ServerVersion};

async fn one_shard(version: ServerVersion) -> Cluster {
    Cluster::start(ClusterSpec {
        shards: 1,
        nodes_per_shard: 1,
        version,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn entries_after(cluster: &Cluster, before: usize) -> Vec<Document> {
    let shard = cluster.shard_names()[0].clone();
    let primary = cluster.primary_of(&shard).unwrap();
    cluster.oplog_snapshot(primary)[before..]
        .iter()
        .map(|r: &RawDocumentBuf| Document::try_from(r.as_ref()).unwrap())
        .filter(|e| e.get_str("ns").unwrap_or("") != "shop.$cmd")
        .collect()
}

fn oplog_len(cluster: &Cluster) -> usize {
    let shard = cluster.shard_names()[0].clone();
    cluster
        .oplog_snapshot(cluster.primary_of(&shard).unwrap())
        .len()
}

fn inner(e: &Document) -> Vec<Document> {
    e.get_document("o")
        .unwrap()
        .get_array("applyOps")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect()
}

#[tokio::test]
async fn insert_many_is_one_apply_ops_per_batch_on_8_0() {
    let cluster = one_shard(ServerVersion::V8_0).await;
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client.database("shop").collection::<Document>("items");
    coll.insert_one(doc! {"_id": -1}).await.unwrap();
    let before = oplog_len(&cluster);
    // Retryable (the driver's default): 501 documents are two batches, 500 and 1.
    coll.insert_many((0..501).map(|i| doc! {"_id": i, "x": i}))
        .await
        .unwrap();
    let entries = entries_after(&cluster, before);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let batch = &entries[0];
    assert_eq!(batch.get_str("op").unwrap(), "c");
    assert_eq!(batch.get_str("ns").unwrap(), "admin.$cmd");
    assert!(batch.get_document("lsid").unwrap().contains_key("uid"));
    assert!(batch.get_i64("txnNumber").is_ok());
    assert!(!batch.contains_key("stmtId"), "{batch}");
    assert_eq!(batch.get_i32("multiOpType").unwrap(), 1);
    let prev = batch.get_document("prevOpTime").unwrap();
    assert_eq!(prev.get_timestamp("ts").unwrap().time, 0);
    assert_eq!(prev.get_i64("t").unwrap(), -1);
    let keys: Vec<&str> = batch.keys().map(String::as_str).collect();
    let at = |k: &str| keys.iter().position(|x| *x == k).unwrap();
    assert_eq!(at("multiOpType"), at("prevOpTime") + 1, "{keys:?}");
    let ops = inner(batch);
    assert_eq!(ops.len(), 500);
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op.get_str("op").unwrap(), "i");
        assert_eq!(op.get_str("ns").unwrap(), "shop.items");
        assert!(op.contains_key("ui"));
        assert_eq!(
            op.get_document("o").unwrap(),
            &doc! {"_id": i as i32, "x": i as i32}
        );
        assert_eq!(op.get_document("o2").unwrap(), &doc! {"_id": i as i32});
        assert_eq!(op.get_i32("stmtId").unwrap(), i as i32);
    }
    // The second batch of one document is a plain insert, linked to the first entry.
    let last = &entries[1];
    assert_eq!(last.get_str("op").unwrap(), "i");
    assert_eq!(last.get_i32("stmtId").unwrap(), 500);
    assert_eq!(
        last.get_document("prevOpTime")
            .unwrap()
            .get_timestamp("ts")
            .unwrap(),
        batch.get_timestamp("ts").unwrap()
    );
    let all: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 502);

    // Not retryable: no session fields, no multiOpType, no stmtId inside.
    let plain = Client::with_uri_str(format!(
        "mongodb://{}/?retryWrites=false",
        cluster.mongos_addr()
    ))
    .await
    .unwrap();
    let before = oplog_len(&cluster);
    plain
        .database("shop")
        .collection::<Document>("items")
        .insert_many((1000..1003).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let entries = entries_after(&cluster, before);
    assert_eq!(entries.len(), 1, "{entries:?}");
    for field in ["lsid", "txnNumber", "prevOpTime", "stmtId", "multiOpType"] {
        assert!(!entries[0].contains_key(field), "{field} in {}", entries[0]);
    }
    assert!(inner(&entries[0])
        .iter()
        .all(|op| !op.contains_key("stmtId")));

    // A duplicate key: the batch is inserted one document at a time, up to the error.
    let before = oplog_len(&cluster);
    let err = coll
        .insert_many([
            doc! {"_id": 2000},
            doc! {"_id": 2001},
            doc! {"_id": 0},
            doc! {"_id": 2002},
        ])
        .await;
    assert!(err.is_err());
    let entries = entries_after(&cluster, before);
    let ops: Vec<&str> = entries.iter().map(|e| e.get_str("op").unwrap()).collect();
    assert_eq!(ops, ["i", "i"], "{entries:?}");

    // Only the documents before the duplicate were inserted.
    let ids: Vec<Bson> = coll
        .find(doc! {"_id": {"$gte": 2000}})
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.get("_id").unwrap().clone())
        .collect();
    assert_eq!(ids, [Bson::Int32(2000), Bson::Int32(2001)]);
    cluster.shutdown().await;
}

#[tokio::test]
async fn insert_many_is_one_insert_per_document_before_8_0() {
    let cluster = one_shard(ServerVersion::V7_0).await;
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client.database("shop").collection::<Document>("items");
    coll.insert_one(doc! {"_id": -1}).await.unwrap();
    let before = oplog_len(&cluster);
    coll.insert_many((0..3).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let entries = entries_after(&cluster, before);
    let ops: Vec<&str> = entries.iter().map(|e| e.get_str("op").unwrap()).collect();
    assert_eq!(ops, ["i", "i", "i"]);
    cluster.shutdown().await;
}

/// Through mongos an ordered insertMany is cut where the target shard changes, an
/// unordered one is grouped per shard.
#[tokio::test]
async fn mongos_batches_per_shard_as_ordered_says() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        nodes_per_shard: 1,
        version: ServerVersion::V8_0,
        noop_interval: Duration::from_secs(3600),
        split_points: Some(vec![Bson::Int32(100)]),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client.database("shop").collection::<Document>("items");
    coll.insert_one(doc! {"_id": -1}).await.unwrap();
    let shards = cluster.shard_names();
    let len = |s: &str| cluster.oplog_snapshot(cluster.primary_of(s).unwrap()).len();
    let before: Vec<usize> = shards.iter().map(|s| len(s)).collect();
    let shape = |before: &[usize]| -> Vec<Vec<usize>> {
        shards
            .iter()
            .zip(before)
            .map(|(s, b)| {
                cluster.oplog_snapshot(cluster.primary_of(s).unwrap())[*b..]
                    .iter()
                    .map(|r| Document::try_from(r.as_ref()).unwrap())
                    .filter(|e| {
                        e.get_str("op").unwrap() != "n" && e.get_str("ns").unwrap() != "shop.$cmd"
                    })
                    .map(
                        |e| match e.get_document("o").unwrap().get_array("applyOps") {
                            Ok(ops) => ops.len(),
                            Err(_) => 1,
                        },
                    )
                    .collect()
            })
            .collect()
    };
    // Ordered: [0, 1] | [200, 201] | [2, 3]: three child batches.
    let docs = [0, 1, 200, 201, 2, 3].map(|i| doc! {"_id": i});
    coll.insert_many(docs.clone()).await.unwrap();
    let ordered = shape(&before);
    let before: Vec<usize> = shards.iter().map(|s| len(s)).collect();
    let docs = [10, 11, 210, 211, 12, 13].map(|i| doc! {"_id": i});
    coll.insert_many(docs).ordered(false).await.unwrap();
    let unordered = shape(&before);
    // shard01 owns [MinKey, 100), shard02 [100, MaxKey).
    assert_eq!(ordered, [vec![2, 2], vec![2]], "ordered");
    assert_eq!(unordered, [vec![4], vec![2]], "unordered");
    cluster.shutdown().await;
}

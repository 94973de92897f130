//! Retryable findAndModify end to end: its images (up to 5.0 no-op entries on the user
//! namespace linked by `preImageOpTime`/`postImageOpTime`; from 5.1 `needsRetryImage`
//! and `config.image_collection`) are MongoDB's bookkeeping for retries and never become
//! records, while the update or delete the command made does, once.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::options::ReturnDocument;
use mongosim::{Cluster, ClusterSpec, ServerVersion};

use crate::support::{records, shards_toml, start, wait_until};

async fn run(version: ServerVersion) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 1,
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
    // Retryable writes are the driver's default: every findAndModify below carries a
    // txnNumber, so the server logs its image.
    let client = mongodb::Client::with_uri_str(format!(
        "mongodb://{}/?retryWrites=true",
        cluster.mongos_addr()
    ))
    .await
    .unwrap();
    let stock = client.database("shop").collection::<Document>("stock");
    stock
        .insert_many([doc! {"_id": 1, "x": 1}, doc! {"_id": 2, "x": 5}])
        .await
        .unwrap();
    stock
        .find_one_and_update(doc! {"_id": 1}, doc! {"$inc": {"x": 1}})
        .await
        .unwrap();
    stock
        .find_one_and_update(doc! {"_id": 2}, doc! {"$set": {"x": 7}})
        .return_document(ReturnDocument::After)
        .await
        .unwrap();
    stock.find_one_and_delete(doc! {"_id": 1}).await.unwrap();
    wait_until(30, "the findAndModify delete in the output", || {
        records(&q.out)
            .iter()
            .any(|r| r["op"] == "d" && r["ns"] == "shop.stock")
    })
    .await;
    q.stop().await;

    let recs = records(&tmp.path().join("out.jsonl"));
    // What the writes did, in order: two inserts, two updates, one delete.
    let got: Vec<(String, i64)> = recs
        .iter()
        .filter(|r| r["ns"] == "shop.stock")
        .map(|r| {
            let id = match r["op"].as_str().unwrap() {
                "u" => r["entry"]["o2"]["_id"].as_i64(),
                _ => r["entry"]["o"]["_id"].as_i64(),
            };
            (r["op"].as_str().unwrap().to_owned(), id.unwrap())
        })
        .collect();
    let want: Vec<(String, i64)> = [("i", 1), ("i", 2), ("u", 1), ("u", 2), ("d", 1)]
        .iter()
        .map(|(op, id)| ((*op).to_owned(), *id))
        .collect();
    assert_eq!(got, want, "{version}");
    // No image, under any name.
    for r in &recs {
        assert_ne!(r["op"], "n", "{version}: image emitted: {r}");
        assert_ne!(r["ns"], "config.image_collection", "{version}: {r}");
    }
    // The shape was the version's: the images were really in the oplog (5.0) or marked on
    // the write (7.0), so the test above could have failed.
    let u = recs.iter().find(|r| r["op"] == "u").unwrap();
    if version >= ServerVersion::V6_0 {
        assert_eq!(u["entry"]["needsRetryImage"], "preImage", "{version}");
    } else {
        assert!(u["entry"]["preImageOpTime"].is_object(), "{version}: {u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_and_modify_images_never_become_records_5_0() {
    run(ServerVersion::V5_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_and_modify_images_never_become_records_7_0() {
    run(ServerVersion::V7_0).await;
}

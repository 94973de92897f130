//! The initial snapshot under faults: while the shards copy (their reads held after the
//! first batch), a chunk migrates, the primary one shard reads from is killed and another
//! is elected, and writes go on. The copy continues on the new primary at the same time,
//! after the last `_id` it emitted; the migration after the snapshot's time changes
//! nothing about who emits what; the consumer ends with exactly the cluster's documents,
//! each read once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Document};
use mongodb::Client;
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use serde_json::Value;

use crate::events::replay;
use crate::support::{records, start_text, wait_until};

/// Runs `op` until it succeeds (an election makes writes fail for a while); a duplicate
/// key means an earlier attempt took effect.
async fn retried<F, Fut>(mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = mongodb::error::Result<()>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(()) => return,
            Err(e) if e.to_string().contains("E11000") => return,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "write failed: {e}");
                // Back-off between attempts while a new primary is elected.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_survives_a_migration_and_a_failover_during_its_copy() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version: ServerVersion::V7_0,
        noop_interval: Duration::from_millis(200),
        election_timeout: Duration::from_millis(400),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let db = client.database("shop");
    let items = db.collection::<Document>("items");
    items
        .insert_many((0..400).chain(1000..1400).map(|i| doc! {"_id": i, "n": 0}))
        .await
        .unwrap();
    // Both commit points pass the inserts (see snapshot_restart.rs).
    db.collection_with_options::<Document>(
        "marks",
        mongodb::options::CollectionOptions::builder()
            .write_concern(mongodb::options::WriteConcern::majority())
            .build(),
    )
    .insert_many([doc! {"_id": 1}, doc! {"_id": 1001}])
    .await
    .unwrap();

    cluster.hold_get_mores(Some("shop.items"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("events.jsonl");
    let q = start_text(&format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"1s\"\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\nformat = \"change-event\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"snapshot\"\n[snapshot]\nbatch_size = 50\n",
        cluster.mongos_addr(),
        out.display().to_string(),
        tmp.path().join("cp.json").display().to_string()
    ));
    wait_until(60, "the first batch of items on both shards", || {
        ["shard01", "shard02"].iter().all(|s| {
            q.status
                .shard(s)
                .is_some_and(|s| s.snapshotting && s.snapshot_documents >= 50)
        })
    })
    .await;

    // Writes from now on, through the faults.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let items = items.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i: i32 = 0;
            while !stop.load(Ordering::SeqCst) && i < 150 {
                let (a, b) = ((i * 7) % 400, 1000 + (i * 13) % 400);
                retried(|| {
                    let items = items.clone();
                    async move {
                        items
                            .update_one(doc! {"_id": a}, doc! {"$set": {"n": i}})
                            .await
                            .map(|_| ())
                    }
                })
                .await;
                retried(|| {
                    let items = items.clone();
                    async move {
                        items
                            .update_one(doc! {"_id": b}, doc! {"$set": {"n": i}})
                            .await
                            .map(|_| ())
                    }
                })
                .await;
                if i % 5 == 0 {
                    retried(|| {
                        let items = items.clone();
                        async move {
                            items
                                .insert_one(doc! {"_id": 3000 + i, "n": i})
                                .await
                                .map(|_| ())
                        }
                    })
                    .await;
                    retried(|| {
                        let items = items.clone();
                        async move { items.delete_one(doc! {"_id": 1399 - i}).await.map(|_| ()) }
                    })
                    .await;
                }
                i += 1;
            }
        })
    };
    // A chunk moves after the snapshot's time (the donor keeps its copies for now), and
    // the primary of shard01, which serves its copy, dies.
    cluster.defer_range_deletion(true).unwrap();
    cluster
        .move_chunk("shop.items", 5, "shard02")
        .await
        .unwrap();
    let old = cluster.primary_of("shard01").unwrap();
    cluster.kill_node(old).await.unwrap();
    wait_until(30, "a new primary on shard01", || {
        cluster.primary_of("shard01").is_some_and(|p| p != old)
    })
    .await;
    cluster.hold_get_mores(None);
    wait_until(60, "both copies", || {
        ["shard01", "shard02"].iter().all(|s| {
            q.status
                .shard(s)
                .is_some_and(|s| !s.snapshotting && s.snapshot_collections == 2)
        })
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let want = crate::snapshot::source(&client, &["items", "marks"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = records(&out);
        let got = replay(&events).map(|docs| {
            docs.into_iter()
                .map(|(k, d)| (k, bson::Bson::Document(d).into_relaxed_extjson()))
                .collect::<std::collections::BTreeMap<_, _>>()
        });
        if got.as_ref().is_ok_and(|g| *g == want) {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replaying {} events gives {:?} documents, the cluster holds {}",
            events.len(),
            got.map(|g| g.len()),
            want.len()
        );
        // The polling interval of a bounded wait, not a race cover.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reads: Vec<&Value> = events.iter().filter(|e| e["snapshot"] == true).collect();
    let keys: BTreeSet<String> = reads
        .iter()
        .map(|e| format!("{}/{}", e["ns"]["coll"], e["documentKey"]["_id"]))
        .collect();
    assert_eq!(keys.len(), reads.len(), "a document read twice");
    // Owned by shard01 at the snapshot's time: read there, not on shard02 (which received
    // them after that time).
    assert!(reads
        .iter()
        .filter(|e| e["ns"]["coll"] == "items"
            && e["documentKey"]["_id"].as_i64().is_some_and(|i| i < 1000))
        .all(|e| e["shard"] == "shard01"));
    assert_eq!(
        reads.iter().filter(|e| e["ns"]["coll"] == "items").count(),
        800
    );
    q.stop().await;
    cluster.shutdown().await;
}

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
use mongosim::Cluster;
use serde_json::Value;

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
    let (cluster, client) = crate::snapshot::two_shards(Some(Duration::from_millis(400))).await;
    let db = client.database("shop");
    let items = db.collection::<Document>("items");
    items
        .insert_many((0..400).chain(1000..1400).map(|i| doc! {"_id": i, "n": 0}))
        .await
        .unwrap();
    crate::snapshot::mark(&client).await;

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
    // Progress per collection, on /status and /metrics.
    let status = quorumtail::http::status_json(&q.status);
    for s in ["shard01", "shard02"] {
        let items = &status["shards"][s]["snapshot_progress"]["shop.items"];
        assert_eq!(items["documents"], 400, "{s}: {items}");
        assert_eq!(items["done"], true, "{s}: {items}");
    }
    let metrics = quorumtail::http::metrics(&q.status);
    assert!(
        metrics.contains(
            "quorumtail_snapshot_collection_documents_total{shard=\"shard01\",ns=\"shop.items\"} 400"
        ),
        "{metrics}"
    );

    let events = crate::snapshot::converges(&client, &out, &["items", "marks"]).await;
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

/// A cluster whose copy of `shop.orders` (read last, in name order) is held until the
/// server's history (1 s here) no longer holds the snapshot's time.
struct TooOld {
    cluster: Cluster,
    client: Client,
    q: crate::support::Running,
    out: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

async fn held_past_the_history_window() -> TooOld {
    let (cluster, client) = crate::snapshot::two_shards(None).await;
    let db = client.database("shop");
    db.collection::<Document>("items")
        .insert_many((0..100).chain(1000..1100).map(|i| doc! {"_id": i, "n": 0}))
        .await
        .unwrap();
    db.collection::<Document>("orders")
        .insert_many((0..60).chain(1000..1060).map(|i| doc! {"_id": i, "n": 0}))
        .await
        .unwrap();
    crate::snapshot::mark(&client).await;
    // The simulated servers keep 1 s of history behind their commit point.
    let member = cluster.primary_of("shard01").unwrap();
    Client::with_uri_str(format!("mongodb://{member}/?directConnection=true"))
        .await
        .unwrap()
        .database("admin")
        .run_command(doc! {"setParameter": 1, "minSnapshotHistoryWindowInSeconds": 1})
        .await
        .unwrap();
    cluster.hold_reads(Some("shop.orders"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("events.jsonl");
    let q = start_text(&format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"1s\"\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\nformat = \"change-event\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"snapshot\"\n[snapshot]\nbatch_size = 25\n",
        cluster.mongos_addr(),
        out.display().to_string(),
        tmp.path().join("cp.json").display().to_string()
    ));
    wait_until(60, "items and marks copied on both shards", || {
        ["shard01", "shard02"].iter().all(|s| {
            q.status
                .shard(s)
                .is_some_and(|s| s.snapshotting && s.snapshot_collections == 2)
        })
    })
    .await;
    TooOld {
        cluster,
        client,
        q,
        out,
        _tmp: tmp,
    }
}

/// Waits until every member's commit point is more than the history window past the
/// snapshot's time (`at`, seconds).
async fn past_the_window(cluster: &Cluster, at: u32) {
    let members: Vec<std::net::SocketAddr> = ["shard01", "shard02"]
        .iter()
        .flat_map(|s| cluster.shard_members(s))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !members.iter().all(|m| {
        cluster
            .member_commit_point(*m)
            .is_some_and(|(ts, _)| ts.time > at + 2)
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "commit points stuck"
        );
        // The polling interval of a bounded wait for time to pass, not a race cover.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The time the snapshot reads at, from the reads already emitted.
fn snapshot_time(out: &std::path::Path) -> u32 {
    let reads = records(out);
    let t = &reads
        .iter()
        .find(|e| e["snapshot"] == true)
        .expect("a read")["clusterTime"]["$timestamp"]["t"];
    t.as_u64().expect("clusterTime") as u32
}

/// The copy of the last collection starts after the history dropped the snapshot's time:
/// no chunk moved, so its documents are read at a later time, and the stream skips their
/// changes up to that time while emitting the other collections' changes since the
/// snapshot's time. The consumer ends with exactly the cluster's documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_older_than_the_history_continues_at_a_later_time() {
    let t = held_past_the_history_window().await;
    let db = t.client.database("shop");
    // Changes between the two times, to both a collection read early and the one read late.
    let items = db.collection::<Document>("items");
    let orders = db.collection::<Document>("orders");
    for i in 0..10 {
        items
            .update_one(doc! {"_id": i}, doc! {"$set": {"n": 1}})
            .await
            .unwrap();
        orders
            .update_one(doc! {"_id": 1000 + i}, doc! {"$set": {"n": 1}})
            .await
            .unwrap();
    }
    orders.insert_one(doc! {"_id": 500, "n": 5}).await.unwrap();
    orders.delete_one(doc! {"_id": 1059}).await.unwrap();
    past_the_window(&t.cluster, snapshot_time(&t.out)).await;
    t.cluster.hold_reads(None);
    wait_until(60, "both copies", || {
        ["shard01", "shard02"].iter().all(|s| {
            t.q.status
                .shard(s)
                .is_some_and(|s| !s.snapshotting && s.snapshot_collections == 3)
        })
    })
    .await;
    // Changes after the later time.
    orders
        .update_one(doc! {"_id": 1001}, doc! {"$set": {"n": 2}})
        .await
        .unwrap();
    items
        .update_one(doc! {"_id": 1}, doc! {"$set": {"n": 2}})
        .await
        .unwrap();
    let events = crate::snapshot::converges(&t.client, &t.out, &["items", "marks", "orders"]).await;
    for s in ["shard01", "shard02"] {
        assert_eq!(t.q.status.shard(s).unwrap().snapshot_later_reads, 1, "{s}");
    }
    // The orders' changes before the later time are in its reads, not emitted again; the
    // items' changes since the snapshot's time are emitted.
    let streamed = |coll: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["snapshot"] != true && e["ns"]["coll"] == coll)
            .collect()
    };
    assert_eq!(streamed("orders").len(), 1, "{:#?}", streamed("orders"));
    assert_eq!(streamed("items").len(), 11);
    let reads: Vec<&Value> = events.iter().filter(|e| e["snapshot"] == true).collect();
    let keys: BTreeSet<String> = reads
        .iter()
        .map(|e| format!("{}/{}", e["ns"]["coll"], e["documentKey"]["_id"]))
        .collect();
    assert_eq!(keys.len(), reads.len(), "a document read twice");
    t.q.stop().await;
    t.cluster.shutdown().await;
}

/// As above, but a chunk of the collection still to read moved in between: reading it at
/// a later time could emit documents twice or not at all, so the shards stop with the
/// error and its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_older_than_the_history_stops_when_a_chunk_moved_meanwhile() {
    let t = held_past_the_history_window().await;
    t.cluster.defer_range_deletion(true).unwrap();
    t.cluster
        .move_chunk("shop.orders", 5, "shard02")
        .await
        .unwrap();
    past_the_window(&t.cluster, snapshot_time(&t.out)).await;
    t.cluster.hold_reads(None);
    wait_until(60, "the shards to stop", || {
        ["shard01", "shard02"]
            .iter()
            .all(|s| t.q.status.shard(s).is_some_and(|s| s.failed))
    })
    .await;
    let report = t.q.stop().await;
    let err = report.failed.join("\n");
    assert!(err.contains("shop.orders changed owners"), "{err}");
    assert!(err.contains("minSnapshotHistoryWindowInSeconds"), "{err}");
    t.cluster.shutdown().await;
}

//! An initial snapshot survives `kill -9`: the restarted process continues after the
//! last progress the checkpoint store holds (records the sink confirmed), at the same
//! snapshot time, instead of copying everything again; what it repeats is what the first
//! run emitted after that point, and the consumer still ends with exactly the cluster's
//! documents, including the writes made while quorumtail was down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bson::{doc, Document};
use serde_json::Value;

use crate::support::{records, wait_until};

fn spawn(cfg: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_quorumtail"))
        .args(["--log-format", "compact", "run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start quorumtail")
}

/// The stored snapshot progress of each shard (empty once every shard streams).
fn stored_progress(cp: &Path) -> BTreeMap<String, Value> {
    let Ok(text) = std::fs::read_to_string(cp) else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_str(&text).unwrap();
    v["shards"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, s)| !s["snapshot"].is_null())
                .map(|(k, s)| (k.clone(), s["snapshot"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn key(e: &Value) -> String {
    format!("{}/{}", e["ns"]["coll"], e["documentKey"]["_id"])
}

/// Killed between collections: the second run starts with the next collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_between_collections_continues_with_the_next() {
    killed_midway(false).await;
}

/// Killed inside a collection: the second run continues after the last `_id` delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_inside_a_collection_continues_after_its_last_delivered_id() {
    killed_midway(true).await;
}

async fn killed_midway(inside: bool) {
    let (cluster, client) = crate::snapshot::two_shards(None).await;
    let db = client.database("shop");
    // The simulator splits at 1000: both collections on both shards.
    db.collection::<Document>("items")
        .insert_many((0..300).chain(1000..1300).map(|i| doc! {"_id": i, "n": 0}))
        .await
        .unwrap();
    db.collection::<Document>("orders")
        .insert_many(
            (0..40)
                .chain(1000..1040)
                .map(|i| doc! {"_id": i, "total": i}),
        )
        .await
        .unwrap();
    crate::snapshot::mark(&client).await;

    let tmp = tempfile::tempdir().unwrap();
    let (out, cp, log) = (
        tmp.path().join("events.jsonl"),
        tmp.path().join("cp.json"),
        tmp.path().join("qt.log"),
    );
    let cfg = tmp.path().join("quorumtail.toml");
    std::fs::write(
        &cfg,
        format!(
            "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"1s\"\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\nformat = \"change-event\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"snapshot\"\n[snapshot]\nbatch_size = 20\n",
            cluster.mongos_addr(),
            out.display().to_string(),
            cp.display().to_string()
        ),
    )
    .unwrap();

    // The copy of shop.orders (after shop.items and shop.marks, in name order) waits on
    // both shards, as if the read were slow: the first run cannot finish its snapshot.
    // Inside: the first batch of shop.orders is read, the cursor's next ones wait.
    if inside {
        cluster.hold_get_mores(Some("shop.orders"));
    } else {
        cluster.hold_reads(Some("shop.orders"));
    }
    let mut first = spawn(&cfg, &log);
    wait_until(
        60,
        "both shards' delivered reads stored as progress",
        || {
            let p = stored_progress(&cp);
            ["shard01", "shard02"].iter().all(|s| {
                p.get(*s).is_some_and(|p| {
                    if inside {
                        p["current"]["ns"] == "shop.orders"
                    } else {
                        p["done"]
                            .as_array()
                            .is_some_and(|d| d.iter().any(|n| n == "shop.marks"))
                    }
                })
            })
        },
    )
    .await;
    first.kill().unwrap(); // SIGKILL: no flush, no final store
    first.wait().unwrap();
    let stored = stored_progress(&cp);
    let first_run = records(&out);
    let delivered: u64 = stored
        .values()
        .map(|p| p["documents"].as_u64().unwrap())
        .sum();
    // The first run emitted reads only (its stream never started), each delivered and
    // recorded as progress before the kill: every item, and what of the marks is in the
    // snapshot.
    assert!(first_run.iter().all(|e| e["snapshot"] == true));
    let first_orders = first_run
        .iter()
        .filter(|e| e["ns"]["coll"] == "orders")
        .count();
    // A batch is 20 documents: the first of each shard's cursor, or none.
    assert_eq!(first_orders, if inside { 40 } else { 0 });
    if inside {
        assert_eq!(
            stored["shard01"]["current"]["after_id"],
            serde_json::json!({"$numberInt": "19"})
        );
        assert_eq!(
            stored["shard02"]["current"]["after_id"],
            serde_json::json!({"$numberInt": "1019"})
        );
    }
    assert_eq!(
        delivered,
        first_run.len() as u64,
        "every read delivered is recorded: {stored:?}"
    );
    assert!(delivered >= 600 + first_orders as u64, "{stored:?}");
    let at = stored["shard01"]["at"].clone();
    assert_eq!(
        stored["shard02"]["at"], at,
        "one snapshot time for the cluster"
    );

    // Writes while quorumtail is down (after the snapshot's time: they come from the stream).
    cluster.hold_reads(None);
    let orders = db.collection::<Document>("orders");
    orders
        .insert_many([
            doc! {"_id": 500, "total": 1},
            doc! {"_id": 1500, "total": 2},
        ])
        .await
        .unwrap();
    orders
        .update_one(doc! {"_id": 3}, doc! {"$set": {"total": -3}})
        .await
        .unwrap();
    db.collection::<Document>("items")
        .delete_one(doc! {"_id": 1001})
        .await
        .unwrap();

    let mut second = spawn(&cfg, &log);
    let events =
        crate::snapshot::converges_when(&client, &out, &["items", "marks", "orders"], || {
            stored_progress(&cp).is_empty()
        })
        .await;
    second.kill().unwrap();
    second.wait().unwrap();

    let second_run = &events[first_run.len()..];
    let reads2: Vec<&Value> = second_run
        .iter()
        .filter(|e| e["snapshot"] == true)
        .collect();
    // The second run read only what the stored progress did not cover: the orders, all
    // written before the snapshot's time.
    assert!(
        reads2.iter().all(|e| e["ns"]["coll"] == "orders"),
        "documents read again: {:?}",
        reads2.iter().map(|e| key(e)).collect::<Vec<_>>()
    );
    assert_eq!(reads2.len(), 80 - first_orders);
    // Every document of the snapshot read exactly once over both runs.
    let reads: Vec<String> = first_run
        .iter()
        .chain(second_run)
        .filter(|e| e["snapshot"] == true)
        .map(key)
        .collect();
    let distinct: BTreeSet<&String> = reads.iter().collect();
    assert_eq!(distinct.len(), reads.len(), "a document read twice");
    // Both runs read at the same snapshot time.
    let times: BTreeSet<String> = first_run
        .iter()
        .chain(second_run)
        .filter(|e| e["snapshot"] == true)
        .map(|e| e["clusterTime"].to_string())
        .collect();
    assert_eq!(times.len(), 1, "{times:?}");
    cluster.shutdown().await;
}

/// Re-snapshotting one shard (the fix a lost resume point names): with its entry removed
/// from the checkpoint store and `[start] position = "snapshot"`, the next start reads that
/// shard's documents again and streams after; the other shard resumes from its checkpoint
/// without reading anything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shard_is_snapshotted_again_when_its_checkpoint_is_removed() {
    let (cluster, client) = crate::snapshot::two_shards(None).await;
    let db = client.database("shop");
    let items = db.collection::<Document>("items");
    items
        .insert_many((0..50).chain(1000..1050).map(|i| doc! {"_id": i, "n": 0}))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (out, cp) = (tmp.path().join("events.jsonl"), tmp.path().join("cp.json"));
    let text = format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"1s\"\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\nformat = \"change-event\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"snapshot\"\n",
        cluster.mongos_addr(),
        out.display().to_string(),
        cp.display().to_string()
    );
    let streaming = |cp: &Path| {
        let Ok(t) = std::fs::read_to_string(cp) else {
            return false;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        ["shard01", "shard02"].iter().all(|s| {
            let e = &v["shards"][*s];
            !e.is_null() && e["snapshot"].is_null()
        })
    };
    let q = crate::support::start_text(&text);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !streaming(&cp) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint after the snapshot"
        );
        // The polling interval of a bounded wait, not a race cover.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    q.stop().await;
    let first_run = records(&out).len();

    // shard01's entry is removed (as after a lost resume point); writes meanwhile.
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    v["shards"].as_object_mut().unwrap().remove("shard01");
    std::fs::write(&cp, serde_json::to_vec(&v).unwrap()).unwrap();
    items
        .insert_many([doc! {"_id": 60, "n": 1}, doc! {"_id": 1060, "n": 1}])
        .await
        .unwrap();
    items
        .update_one(doc! {"_id": 1001}, doc! {"$set": {"n": 5}})
        .await
        .unwrap();

    let q = crate::support::start_text(&text);
    crate::snapshot::converges_when(&client, &out, &["items", "marks", "orders"], || {
        streaming(&cp)
    })
    .await;
    q.stop().await;
    let events = records(&out);
    let second: Vec<&Value> = events[first_run..].iter().collect();
    let reads: Vec<&&Value> = second.iter().filter(|e| e["snapshot"] == true).collect();
    // shard01's documents (ids below 1000), each once, and nothing of shard02.
    assert!(reads.iter().all(|e| e["shard"] == "shard01"), "{reads:#?}");
    let ids: BTreeSet<i64> = reads
        .iter()
        .map(|e| e["documentKey"]["_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), reads.len(), "a document read twice");
    assert!((0..50).all(|i| ids.contains(&i)), "{ids:?}");
    // shard02 resumed: its writes after the first run come from its stream.
    assert!(second
        .iter()
        .any(|e| e["shard"] == "shard02" && e["documentKey"]["_id"] == 1060));
    cluster.shutdown().await;
}

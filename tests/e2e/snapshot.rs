//! `[start] position = "snapshot"` end to end: a cluster that already holds documents,
//! some of them orphans a migration left behind (its range deletion deferred, as mongod's
//! range deleter runs later), writes going on while quorumtail copies and streams. A
//! consumer that applies the change events (snapshot reads as inserts) must end with
//! exactly the documents the cluster holds; each document is read once (no orphan twice).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use mongodb::Client;
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use serde_json::Value;

use crate::events::replay;
use crate::support::{records, start_text};

fn config(cluster: &Cluster, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"1s\"\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\nformat = \"change-event\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"snapshot\"\n[snapshot]\nbatch_size = 7\n{extra}",
        cluster.mongos_addr(),
        dir.join("events.jsonl").display().to_string(),
        dir.join("cp.json").display().to_string()
    )
}

/// A 7.0 cluster of two shards (no-ops every 200 ms; `election_timeout` when given) and a
/// client through its mongos.
pub(crate) async fn two_shards(election_timeout: Option<Duration>) -> (Cluster, Client) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version: ServerVersion::V7_0,
        noop_interval: Duration::from_millis(200),
        election_timeout: election_timeout.unwrap_or(ClusterSpec::default().election_timeout),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    (cluster, client)
}

/// A majority write on each shard after the others (`shop.marks` 1 and 1001): both commit
/// points pass every earlier write, so a snapshot's time (the older commit point) holds
/// them all (the marks themselves may fall on either side of it).
pub(crate) async fn mark(client: &Client) {
    client
        .database("shop")
        .collection_with_options::<Document>(
            "marks",
            mongodb::options::CollectionOptions::builder()
                .write_concern(mongodb::options::WriteConcern::majority())
                .build(),
        )
        .insert_many([doc! {"_id": 1}, doc! {"_id": 1001}])
        .await
        .unwrap();
}

/// The cluster's documents, keyed as [`replay`] keys them.
pub(crate) async fn source(client: &Client, colls: &[&str]) -> BTreeMap<(String, String), Value> {
    let mut want = BTreeMap::new();
    for c in colls {
        let coll = client.database("shop").collection::<Document>(c);
        let mut cursor = coll.find(doc! {}).await.unwrap();
        while cursor.advance().await.unwrap() {
            let d: Document = cursor.deserialize_current().unwrap();
            let id = d.get("_id").cloned().unwrap().into_relaxed_extjson();
            want.insert(
                (format!("shop.{c}"), id.to_string()),
                Bson::Document(d).into_relaxed_extjson(),
            );
        }
    }
    want
}

/// Waits until replaying the output gives the cluster's documents.
pub(crate) async fn converges(
    client: &Client,
    out: &std::path::Path,
    colls: &[&str],
) -> Vec<Value> {
    converges_when(client, out, colls, || true).await
}

/// As [`converges`], once `also` holds too.
pub(crate) async fn converges_when(
    client: &Client,
    out: &std::path::Path,
    colls: &[&str],
    also: impl Fn() -> bool,
) -> Vec<Value> {
    let want = source(client, colls).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = records(out);
        let got = replay(&events).map(|docs| {
            docs.into_iter()
                .map(|(k, d)| (k, Bson::Document(d).into_relaxed_extjson()))
                .collect::<BTreeMap<_, _>>()
        });
        if got.as_ref().is_ok_and(|g| *g == want) && also() {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replaying {} events gives {:?} documents; the cluster holds {}",
            events.len(),
            got.map(|g| g.len()),
            want.len()
        );
        // The polling interval of a bounded wait, not a race cover.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_rebuilds_the_collections_with_orphans_left_out() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version: ServerVersion::V7_0,
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let items = client.database("shop").collection::<Document>("items");
    let orders = client.database("shop").collection::<Document>("orders");
    // The simulator splits at 1000: ids on both shards.
    items
        .insert_many(
            (0..120)
                .chain(1000..1120)
                .map(|i| doc! {"_id": i, "n": 0, "name": format!("i{i}")}),
        )
        .await
        .unwrap();
    orders
        .insert_many((0..30).map(|i| doc! {"_id": format!("o{i}"), "total": i}))
        .await
        .unwrap();
    items
        .update_many(doc! {"_id": {"$lt": 50}}, doc! {"$inc": {"n": 1}})
        .await
        .unwrap();
    items
        .delete_many(doc! {"_id": {"$gte": 1100}})
        .await
        .unwrap();
    // The chunk of the low ids moves to shard02; shard01 keeps its copies (orphans).
    cluster.defer_range_deletion(true).unwrap();
    cluster
        .move_chunk("shop.items", 5, "shard02")
        .await
        .unwrap();
    // Majority-committed writes on both shards after the migration's commit: the snapshot's
    // time (the oldest of the shards' commit points) falls after it, so shard02 owns the
    // moved range then and shard01's copies are orphans.
    client
        .database("shop")
        .collection_with_options::<Document>(
            "marks",
            mongodb::options::CollectionOptions::builder()
                .write_concern(mongodb::options::WriteConcern::majority())
                .build(),
        )
        .insert_many([doc! {"_id": 1}, doc! {"_id": 1001}])
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("events.jsonl");
    let q = start_text(&config(&cluster, tmp.path(), ""));
    // Writes while the snapshot and the stream run.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let items = items.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 200 {
                let id = if i % 2 == 0 { 2000 + i } else { 200 + i };
                items.insert_one(doc! {"_id": id, "n": 0}).await.unwrap();
                items
                    .update_one(doc! {"_id": (i * 7) % 120}, doc! {"$inc": {"n": 10}})
                    .await
                    .unwrap();
                if i % 5 == 0 {
                    items
                        .delete_one(doc! {"_id": 1000 + (i % 100)})
                        .await
                        .unwrap();
                }
                i += 1;
            }
        })
    };
    // The snapshot is taken and streaming follows: a write after it reaches the output.
    crate::support::wait_until(60, "the snapshot", || {
        q.status
            .shard("shard01")
            .zip(q.status.shard("shard02"))
            .is_some_and(|(a, b)| {
                a.snapshot_collections > 0
                    && b.snapshot_collections > 0
                    && !a.snapshotting
                    && !b.snapshotting
            })
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let events = converges(&client, &out, &["items", "orders", "marks"]).await;

    // Every snapshot read once; the orphans were read on shard01 and left out.
    let reads: Vec<&Value> = events.iter().filter(|e| e["snapshot"] == true).collect();
    let keys: BTreeSet<String> = reads
        .iter()
        .map(|e| format!("{}/{}", e["ns"]["coll"], e["documentKey"]["_id"]))
        .collect();
    assert_eq!(keys.len(), reads.len(), "a document read twice");
    // What committed before the snapshot's time is in the snapshot, not in the stream: no
    // document both read by the snapshot and inserted by the stream.
    let streamed_too: Vec<&Value> = events
        .iter()
        .filter(|e| e["snapshot"] != true && e["operationType"] == "insert")
        .filter(|e| keys.contains(&format!("{}/{}", e["ns"]["coll"], e["documentKey"]["_id"])))
        .collect();
    assert!(streamed_too.is_empty(), "emitted twice: {streamed_too:#?}");
    let s1 = q.status.shard("shard01").unwrap();
    let s2 = q.status.shard("shard02").unwrap();
    assert!(
        s1.snapshot_orphans >= 100,
        "orphans left out on shard01: {s1:?}"
    );
    assert_eq!(s2.snapshot_orphans, 0);
    assert_eq!(
        s1.snapshot_documents + s2.snapshot_documents,
        reads.len() as u64
    );
    // The moved chunk's documents are read from their owner at the snapshot's time.
    assert!(reads
        .iter()
        .filter(|e| {
            e["ns"]["coll"] == "items" && e["documentKey"]["_id"].as_i64().is_some_and(|i| i < 120)
        })
        .all(|e| e["shard"] == "shard02"));
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_prepared_before_the_snapshot_and_committed_after_is_emitted_whole() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version: ServerVersion::V7_0,
        noop_interval: Duration::from_millis(200),
        election_timeout: Duration::from_millis(300),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let items = client.database("shop").collection::<Document>("items");
    items
        .insert_many((0..10).chain(1000..1010).map(|i| doc! {"_id": i, "n": 0}))
        .await
        .unwrap();
    cluster.hold_txn_decisions(true);
    let pending = {
        let client = client.clone();
        tokio::spawn(async move {
            let items = client.database("shop").collection::<Document>("items");
            let mut s = client.start_session().await.unwrap();
            s.start_transaction().await.unwrap();
            items
                .insert_one(doc! {"_id": 50, "n": 1})
                .session(&mut s)
                .await
                .unwrap();
            items
                .update_one(doc! {"_id": 1005}, doc! {"$set": {"n": 9}})
                .session(&mut s)
                .await
                .unwrap();
            s.commit_transaction().await
        })
    };
    let prepared = |shard: &str| {
        let p = cluster.primary_of(shard).unwrap();
        cluster.oplog_snapshot(p).iter().any(|raw| {
            Document::try_from(raw.as_ref())
                .ok()
                .and_then(|d| d.get_document("o").ok().cloned())
                .is_some_and(|o| o.get_bool("prepare").unwrap_or(false))
        })
    };
    crate::support::wait_until(20, "both prepare entries", || {
        prepared("shard01") && prepared("shard02")
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("events.jsonl");
    let q = start_text(&config(&cluster, tmp.path(), ""));
    crate::support::wait_until(60, "the snapshot", || {
        q.status
            .shard("shard01")
            .zip(q.status.shard("shard02"))
            .is_some_and(|(a, b)| {
                a.snapshot_collections > 0
                    && b.snapshot_collections > 0
                    && !a.snapshotting
                    && !b.snapshotting
            })
    })
    .await;
    cluster.hold_txn_decisions(false);
    pending.await.unwrap().unwrap();
    let events = converges(&client, &out, &["items"]).await;
    // Prepared, not committed, at the snapshot's time: not in the snapshot; emitted once
    // by the stream, whole.
    let of_txn: Vec<&Value> = events.iter().filter(|e| e["txnNumber"].is_i64()).collect();
    assert_eq!(of_txn.len(), 2, "{of_txn:#?}");
    assert!(!events
        .iter()
        .any(|e| e["snapshot"] == true && e["documentKey"]["_id"] == 50));
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

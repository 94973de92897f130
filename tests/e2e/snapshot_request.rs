//! `quorumtail snapshot` on a running pipeline: a pipeline started at `latest` (it never
//! saw the documents that existed before it), writes going on; the command makes each
//! shard copy a collection as of the last entry it released and stream on. Replaying the
//! output must give exactly the cluster's documents: the copy fills in what existed, and
//! no change is lost or applied out of order around it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use serde_json::Value;

use crate::events::replay;
use crate::support::{records, start_text, wait_until};

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quorumtail"))
        .args(args)
        .output()
        .expect("run quorumtail");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_copied_on_request_fills_in_what_existed_while_streaming_goes_on() {
    let (cluster, client) = crate::snapshot::two_shards(None).await;
    let items = client.database("shop").collection::<Document>("items");
    items
        .insert_many((0..150).chain(1000..1150).map(|i| doc! {"_id": i, "n": 0}))
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("events.jsonl");
    let text = format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"1s\"\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\nformat = \"change-event\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[snapshot]\nbatch_size = 16\n[http]\nlisten = \"127.0.0.1:0\"\ncontrol = true\n",
        cluster.mongos_addr(),
        out.display().to_string(),
        tmp.path().join("cp.json").display().to_string()
    );
    let q = start_text(&text);
    wait_until(30, "both shards streaming", || {
        ["shard01", "shard02"]
            .iter()
            .all(|s| q.status.shard(s).is_some_and(|s| s.committed > 0))
    })
    .await;
    let url = format!("http://{}", q.status.http_addr().unwrap());

    // Writes before, during and after the copy.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let items = items.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 300 {
                items
                    .update_one(doc! {"_id": (i * 7) % 150}, doc! {"$inc": {"n": 1}})
                    .await
                    .unwrap();
                items
                    .update_one(doc! {"_id": 1000 + (i * 11) % 150}, doc! {"$inc": {"n": 1}})
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    items
                        .delete_one(doc! {"_id": 1000 + (i % 150)})
                        .await
                        .unwrap();
                    items
                        .insert_one(doc! {"_id": 5000 + i, "n": 0})
                        .await
                        .unwrap();
                }
                i += 1;
            }
        })
    };

    // Refused requests say why.
    let (ok, said) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || cli(&["snapshot", "--url", &url, "--shard", "shard09"])
    })
    .await
    .unwrap();
    assert!(!ok && said.contains("no running shard shard09"), "{said}");
    let (ok, said) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || cli(&["snapshot", "--url", &url, "--collection", "items"])
    })
    .await
    .unwrap();
    assert!(!ok && said.contains("expected db.coll"), "{said}");

    let (ok, said) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || cli(&["snapshot", "--url", &url, "--collection", "shop.items"])
    })
    .await
    .unwrap();
    assert!(ok, "{said}");
    assert!(
        said.contains("shard01") && said.contains("shard02"),
        "{said}"
    );
    wait_until(60, "both copies", || {
        ["shard01", "shard02"].iter().all(|s| {
            q.status
                .shard(s)
                .is_some_and(|s| s.snapshot_collections == 1 && !s.snapshotting)
        })
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let want = crate::snapshot::source(&client, &["items"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = records(&out);
        // Updates of documents the stream never saw inserted are applied once their
        // snapshot read arrives; `replay` rejects an update of an unknown document, so
        // apply the events from the first read of each document on.
        let got = replay_from_reads(&events);
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
        .map(|e| e["documentKey"]["_id"].to_string())
        .collect();
    assert_eq!(keys.len(), reads.len(), "a document read twice");
    assert_eq!(
        q.status.shard("shard01").unwrap().snapshot_requests_failed,
        0
    );
    q.stop().await;
    cluster.shutdown().await;
}

/// Replays change events, skipping each document's events before its first snapshot read
/// unless the stream inserted it (the pipeline started at `latest`: what existed before
/// reaches the output only through the copy, and the changes before the copy are already
/// in the document it reads).
fn replay_from_reads(events: &[Value]) -> Result<BTreeMap<(String, String), Value>, String> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let kept: Vec<Value> = events
        .iter()
        .filter(|e| {
            let k = e["documentKey"]["_id"].to_string();
            if e["snapshot"] == true || e["operationType"] == "insert" {
                seen.insert(k);
                true
            } else {
                seen.contains(&k)
            }
        })
        .cloned()
        .collect();
    replay(&kept).map(|docs| {
        docs.into_iter()
            .map(|(k, d)| (k, Bson::Document(d).into_relaxed_extjson()))
            .collect()
    })
}

/// A chunk that migrates while a shard copies on request makes the copy unreliable (the
/// recipient may emit a moved document's changes before the donor's copy of it): the
/// request is reported as failed, loudly, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_during_a_copy_on_request_fails_the_request() {
    let (cluster, client) = crate::snapshot::two_shards(None).await;
    let items = client.database("shop").collection::<Document>("items");
    items
        .insert_many((0..100).chain(1000..1100).map(|i| doc! {"_id": i, "n": 0}))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = start_text(&format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"1s\"\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\nformat = \"change-event\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[snapshot]\nbatch_size = 16\n[http]\nlisten = \"127.0.0.1:0\"\ncontrol = true\n",
        cluster.mongos_addr(),
        tmp.path().join("events.jsonl").display().to_string(),
        tmp.path().join("cp.json").display().to_string()
    ));
    wait_until(30, "both shards streaming", || {
        ["shard01", "shard02"]
            .iter()
            .all(|s| q.status.shard(s).is_some_and(|s| s.committed > 0))
    })
    .await;
    cluster.hold_get_mores(Some("shop.items"));
    let url = format!("http://{}", q.status.http_addr().unwrap());
    let (ok, said) = tokio::task::spawn_blocking(move || {
        cli(&[
            "snapshot",
            "--url",
            &url,
            "--shard",
            "shard01",
            "--collection",
            "shop.items",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{said}");
    wait_until(30, "the copy to start", || {
        q.status
            .shard("shard01")
            .is_some_and(|s| s.snapshotting && s.snapshot_documents >= 16)
    })
    .await;
    cluster.defer_range_deletion(true).unwrap();
    cluster
        .move_chunk("shop.items", 5, "shard02")
        .await
        .unwrap();
    cluster.hold_get_mores(None);
    wait_until(30, "the request to fail", || {
        q.status
            .shard("shard01")
            .is_some_and(|s| !s.snapshotting && s.snapshot_requests_failed == 1)
    })
    .await;
    // The shard streams on.
    let before = q.status.shard("shard01").unwrap().committed;
    items
        .update_one(doc! {"_id": 1050}, doc! {"$set": {"n": 1}})
        .await
        .unwrap();
    items.insert_one(doc! {"_id": 7000, "n": 1}).await.unwrap();
    wait_until(30, "shard01 streaming", || {
        q.status
            .shard("shard01")
            .is_some_and(|s| !s.failed && s.committed > before)
    })
    .await;
    q.stop().await;
    cluster.shutdown().await;
}

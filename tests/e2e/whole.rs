//! Whole entries from one member, identities from the others (`[pipeline] whole_entries`):
//! the member read whole fails, another takes over, and the output is still exactly the
//! committed history; the other members cost a fraction of the bytes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bson::doc;
use mongosim::{Cluster, ClusterSpec};

use crate::support::{
    committed_app_entries, records, shard_ids, shards_toml, start, wait_until, Running,
};

fn spec() -> ClusterSpec {
    ClusterSpec {
        shards: 1,
        noop_interval: Duration::from_millis(200),
        election_timeout: Duration::from_millis(400),
        ..ClusterSpec::default()
    }
}

/// The member of `shard` whose stream holds whole entries, once exactly one does.
fn whole_member(q: &Running, shard: &str) -> Option<String> {
    let whole: Vec<String> = q
        .status
        .nodes(shard)
        .into_iter()
        .filter(|(_, n)| n.reading == "whole entries" && n.state == "tailing")
        .map(|(a, _)| a)
        .collect();
    (whole.len() == 1).then(|| whole[0].clone())
}

/// Inserts each id with `w: "majority"`, retrying through elections; returns the ids whose
/// insert was acknowledged. An id whose retry met a duplicate key is not among them: the
/// duplicate may be an unreplicated earlier attempt that is rolled back later, so only the
/// ground truth decides about it.
async fn insert_range(mongos: SocketAddr, ids: std::ops::Range<i32>) -> Vec<i32> {
    let mut acked = Vec::new();
    let client = mongodb::Client::with_uri_str(format!("mongodb://{mongos}/?retryWrites=true"))
        .await
        .unwrap();
    let coll = client
        .database("shop")
        .collection::<bson::Document>("orders");
    for i in ids {
        // Elections make writes fail for a moment: retry until the write is acknowledged
        // by a majority (the ground truth decides about any attempt that failed).
        let mut tries = 0;
        loop {
            let r = coll
                .insert_one(doc! { "_id": i, "pad": "x".repeat(300) })
                .with_options(
                    mongodb::options::InsertOneOptions::builder()
                        .write_concern(mongodb::options::WriteConcern::majority())
                        .build(),
                )
                .await;
            match r {
                Ok(_) => {
                    acked.push(i);
                    break;
                }
                Err(e) if e.to_string().contains("E11000") => break,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 400, "insert {i} kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    }
    acked
}

/// The output holds the shard's committed application history exactly once, in order.
async fn wait_exact(cluster: &Cluster, out: &std::path::Path, shard: &str) {
    wait_until(
        60,
        "every committed application write in the output",
        || shard_ids(&records(out), shard) == committed_app_entries(cluster, shard),
    )
    .await;
}

/// Kill the member read whole (the primary) while writes go on; as soon as another member
/// reads whole entries, kill that one too and bring the first back. Nothing committed is
/// missing, nothing repeats, nothing rolled back appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_read_whole_fails_twice_in_a_row_and_nothing_is_lost_or_repeated() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let shard = cluster.shard_names()[0].clone();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n",
    );
    let mongos = cluster.mongos_addr();
    let mut acked = insert_range(mongos, 0..200).await;
    wait_exact(&cluster, &q.out, &shard).await;
    let primary = cluster.primary_of(&shard).unwrap();
    wait_until(30, "the primary to be read whole", || {
        whole_member(&q, &shard) == Some(primary.to_string())
    })
    .await;
    let identities: Vec<_> = q
        .status
        .nodes(&shard)
        .into_iter()
        .filter(|(a, _)| *a != primary.to_string())
        .collect();
    assert!(
        identities.iter().all(|(_, n)| n.reading == "identities"),
        "{identities:?}"
    );

    // Writes keep going through the failovers below.
    let writer = tokio::spawn(insert_range(mongos, 200..1200));
    wait_until(30, "writes in flight", || records(&q.out).len() > 300).await;
    cluster.kill_node(primary).await.unwrap();
    let first: SocketAddr = primary;
    let mut second: Option<SocketAddr> = None;
    wait_until(30, "another member to be read whole", || {
        second = q
            .status
            .nodes(&shard)
            .into_iter()
            .find(|(a, n)| *a != first.to_string() && n.reading == "whole entries")
            .and_then(|(a, _)| a.parse().ok());
        second.is_some()
    })
    .await;
    // The failover of the failover: the new member read whole dies at once.
    let second = second.unwrap();
    cluster.kill_node(second).await.unwrap();
    cluster.restart_node(first).await.unwrap();
    acked.extend(writer.await.unwrap());
    cluster.restart_node(second).await.unwrap();
    acked.extend(insert_range(mongos, 1200..1210).await);
    wait_exact(&cluster, &q.out, &shard).await;

    let snap = q.status.shard(&shard).unwrap();
    assert!(
        snap.whole_switches >= 3,
        "the member read whole changed at start and twice after: {snap:?}"
    );
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");
    let recs = records(&tmp.path().join("out.jsonl"));
    let ids = shard_ids(&recs, &shard);
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a record repeats");
    let inserted: HashSet<i64> = recs
        .iter()
        .filter(|r| r["op"] == "i")
        .filter_map(|r| r["entry"]["o"]["_id"].as_i64())
        .collect();
    let missing: Vec<&i32> = acked
        .iter()
        .filter(|i| !inserted.contains(&i64::from(**i)))
        .collect();
    if !missing.is_empty() {
        let find = |docs: Vec<bson::RawDocumentBuf>| -> Vec<String> {
            docs.iter()
                .filter_map(|d| bson::Document::try_from(d.as_ref()).ok())
                .filter(|d| {
                    d.get_document("o")
                        .ok()
                        .and_then(|o| o.get("_id"))
                        .is_some_and(|v| missing.iter().any(|m| v.as_i32() == Some(**m)))
                })
                .map(|d| format!("{d}"))
                .collect()
        };
        panic!(
            "acknowledged (w: majority) inserts are missing: {missing:?}\ncommitted: {:?}\nrolled back: {:?}",
            find(cluster.committed_entries(&shard)),
            find(cluster.rolled_back_entries(&shard))
        );
    }
    assert!(
        acked.len() > 1000,
        "most inserts were acknowledged: {}",
        acked.len()
    );
    cluster.shutdown().await;
}

/// With `whole_entries = "one"` the other members send identities: they cost a small
/// fraction of the bytes of the member read whole, and the bytes read per emitted byte
/// stay close to one. With `"all"` every member sends whole entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_for_identities_cost_a_fraction_of_the_bytes() {
    for mode in ["one", "all"] {
        let cluster = Cluster::start(spec()).await.unwrap();
        let shard = cluster.shard_names()[0].clone();
        let tmp = tempfile::tempdir().unwrap();
        let q = start(
            tmp.path(),
            &shards_toml(&cluster),
            &format!(
                "[start]\nposition = \"earliest\"\n\n[pipeline]\nwhole_entries = \"{mode}\"\n"
            ),
        );
        // The member read whole settles on the primary before the load.
        let primary = cluster.primary_of(&shard).unwrap().to_string();
        if mode == "one" {
            wait_until(30, "the primary to be read whole", || {
                whole_member(&q, &shard) == Some(primary.clone())
            })
            .await;
        }
        let before: u64 = q.status.nodes(&shard).values().map(|n| n.bytes_read).sum();
        // Bulk writes, as a loaded primary sees them: the members' replies carry many
        // entries each, so what is measured is the entries, not the reply envelopes.
        let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
            .await
            .unwrap();
        let coll = client
            .database("shop")
            .collection::<bson::Document>("orders");
        for chunk in 0..4 {
            let docs: Vec<bson::Document> = (chunk * 250..(chunk + 1) * 250)
                .map(|i| doc! { "_id": i, "pad": "x".repeat(300) })
                .collect();
            coll.insert_many(docs).await.unwrap();
        }
        wait_exact(&cluster, &q.out, &shard).await;
        let nodes = q.status.nodes(&shard);
        let entry_bytes: u64 = cluster
            .committed_entries(&shard)
            .iter()
            .map(|e| e.as_bytes().len() as u64)
            .sum();
        let read: u64 = nodes.values().map(|n| n.bytes_read).sum::<u64>() - before;
        let per_entry_byte = read as f64 / entry_bytes as f64;
        eprintln!("whole_entries = {mode:?}: {read} bytes read from the members for {entry_bytes} bytes of committed entries ({per_entry_byte:.2}x)");
        match mode {
            "one" => {
                let whole = nodes[&primary].bytes_read;
                for (a, n) in &nodes {
                    if *a != primary {
                        assert_eq!(n.reading, "identities", "{a}");
                        assert!(
                            n.bytes_read * 5 < whole,
                            "{a} read {} bytes, the member read whole {whole}",
                            n.bytes_read
                        );
                    }
                }
                assert!(
                    per_entry_byte < 1.3,
                    "{read} bytes read for {entry_bytes} bytes of entries"
                );
            }
            _ => {
                assert!(nodes.values().all(|n| n.reading == "whole entries"));
                assert!(per_entry_byte > 2.5, "{per_entry_byte}");
            }
        }
        assert!(q.stop().await.ok());
        cluster.shutdown().await;
    }
}

/// The member read whole stops being primary and then lags an hour behind: the release
/// does not wait for it; another member is read whole within seconds and everything
/// committed is emitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_read_whole_that_falls_behind_is_replaced() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let shard = cluster.shard_names()[0].clone();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n",
    );
    let mongos = cluster.mongos_addr();
    insert_range(mongos, 0..50).await;
    let old = cluster.primary_of(&shard).unwrap();
    wait_until(30, "the primary to be read whole", || {
        whole_member(&q, &shard) == Some(old.to_string())
    })
    .await;
    cluster.step_down(&shard).await.unwrap();
    wait_until(30, "a new primary", || {
        cluster.primary_of(&shard).is_some_and(|p| p != old)
    })
    .await;
    cluster.set_lag(old, Duration::from_secs(3600)).unwrap();
    insert_range(mongos, 50..100).await;
    wait_exact(&cluster, &q.out, &shard).await;
    let now_whole = whole_member(&q, &shard);
    assert!(
        now_whole.is_some() && now_whole != Some(old.to_string()),
        "still reading whole entries from the lagging member: {:?}",
        q.status.nodes(&shard)
    );
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

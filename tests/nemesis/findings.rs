//! Problems the nemesis found, pinned as reproductions. Fixed ones run with the suite as
//! regression tests; open ones are `#[ignore]`d until fixed (run them with
//! `cargo test -p quorumtail --test nemesis -- --ignored`).

use std::time::Duration;

use bson::doc;
use mongosim::{ReplicaSet, ReplicaSetSpec};
use quorumtail_oplog::OplogEntry;

use crate::nemesis::wait_for;

/// Regression (fixed in mongosim's elections): a stale member was elected while the
/// up-to-date one was in its step-down window, and a majority-committed entry was then
/// rolled back. In MongoDB the up-to-date member
/// still votes during those 60 s and refuses a candidate whose log is behind its own, so
/// no primary would be elected until the old primary returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_committed_entry_is_never_rolled_back_after_a_step_down() {
    let rs = ReplicaSet::start(ReplicaSetSpec {
        election_timeout: Duration::from_millis(300),
        noop_interval: Duration::ZERO,
        ..Default::default()
    })
    .await
    .unwrap();
    let name = rs.name();
    let [a, _b, c] = rs.members()[..] else {
        panic!("3 members")
    };
    assert_eq!(rs.primary(), Some(a));
    rs.step_down(&name).await.unwrap(); // a is not electable for 60 s
    let b = rs.primary().unwrap();
    rs.set_lag(c, Duration::from_secs(30)).unwrap();
    rs.insert("shop.orders", vec![doc! {"_id": 1}])
        .await
        .unwrap();
    let committed = |n: usize| {
        rs.committed_entries(&name)
            .iter()
            .filter(|e| OplogEntry::parse(e).unwrap().op.as_str() == "i")
            .count()
            >= n
    };
    wait_for(10, "the insert to be majority-committed (a and b)", || {
        committed(1)
    })
    .await
    .unwrap();
    rs.kill_node(b).await.unwrap();
    // a (up to date, in its step-down window) and c (30 s behind) remain.
    let _ = wait_for(5, "an election", || rs.primary().is_some_and(|p| p != b)).await;
    let _ = wait_for(2, "a rollback", || {
        !rs.rolled_back_entries(&name).is_empty()
    })
    .await;
    let committed_ids: Vec<_> = rs
        .committed_entries(&name)
        .iter()
        .map(|e| OplogEntry::parse(e).unwrap().id())
        .collect();
    let lost: Vec<_> = rs
        .rolled_back_entries(&name)
        .iter()
        .map(|e| OplogEntry::parse(e).unwrap().id())
        .filter(|id| committed_ids.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "majority-committed entries rolled back after {c} was elected: {lost:?}"
    );
    rs.shutdown().await;
}

/// Regression (fixed in quorumtail's coordinator): a shard removed while quorumtail is down
/// is not listed by mongos when it starts again, so its pipeline never started and what the
/// shard committed after the stored checkpoint was never emitted. Each shard's members are
/// now stored next to its checkpoint, and a shard with a checkpoint that is not in the
/// topology is drained with them, then marked drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_removed_while_quorumtail_is_down_loses_nothing() {
    let cluster = mongosim::Cluster::start(mongosim::ClusterSpec {
        election_timeout: Duration::from_millis(400),
        noop_interval: Duration::from_millis(500),
        ..Default::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let kafka = std::sync::Arc::new(crate::kafka::Kafka::start(tmp.path()).await);
    let mut qt = crate::qt::Quorumtail::new(tmp.path(), cluster.mongos_addr(), kafka.clone());
    qt.spawn();
    cluster
        .insert("shop.orders", vec![doc! {"_id": 1}])
        .await
        .unwrap();
    let added = cluster.add_shard(3).await.unwrap();
    cluster
        .move_chunk("shop.orders", bson::Bson::Int32(1), &added)
        .await
        .unwrap();
    cluster
        .insert("shop.orders", vec![doc! {"_id": 2}])
        .await
        .unwrap();
    let tail = kafka.tail.clone();
    let all_out = || {
        let want = quorumtail_testkit::truth::committed_app_entries(&cluster, &added);
        !want.is_empty() && tail.missing(&added, &want) == 0
    };
    wait_for(60, "the added shard's writes in Kafka", all_out)
        .await
        .unwrap();
    // The scenario: the shard has a stored checkpoint (with its members) when quorumtail dies.
    wait_for(
        10,
        "the added shard's checkpoint and members stored",
        || {
            crate::qt::read_stored(&qt.checkpoint)
                .get(&added)
                .is_some_and(|s| s.membership.is_some())
        },
    )
    .await
    .unwrap();
    qt.kill9().await.unwrap();
    // Written on the added shard while quorumtail is down, then the shard is removed.
    let before = quorumtail_testkit::truth::committed_app_entries(&cluster, &added).len();
    cluster
        .insert("shop.orders", vec![doc! {"_id": 3}])
        .await
        .unwrap();
    wait_for(10, "the insert to commit", || {
        quorumtail_testkit::truth::committed_app_entries(&cluster, &added).len() > before
    })
    .await
    .unwrap();
    cluster.remove_shard(&added).await.unwrap();
    qt.spawn();
    let emitted = wait_for(20, "the write made while quorumtail was down", all_out).await;
    qt.terminate().await.unwrap();
    cluster.shutdown().await;
    assert!(
        emitted.is_ok(),
        "{added}'s insert of _id 3, committed while quorumtail was down, was never emitted"
    );
}

/// The broker, not quorumtail: tansu (`s3://` storage) killed with SIGKILL and restarted
/// on the same storage loses records it had acknowledged to an idempotent `acks=all`
/// producer, and hands out their offsets again (deliveries report offsets `-1, 0, 1, ...`
/// of a partition that already held hundreds). See docs/nemesis.md, "Broker restarts".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu: a broker killed with SIGKILL loses acknowledged records (s3 storage)"]
async fn acknowledged_records_survive_a_broker_crash() {
    acknowledged_records_survive_restarts(false).await;
}

/// Produces 6000 records through the nemesis proxy to tansu (`s3://` storage on moto)
/// with an idempotent `acks=all` producer (200 in flight), restarts tansu three times
/// while requests are in flight (each time a quarter more was acknowledged), and reads
/// every partition back: every acknowledged record must be there.
async fn acknowledged_records_survive_restarts(graceful: bool) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let kafka = std::sync::Arc::new(crate::kafka::Kafka::start(tmp.path()).await);
    assert!(
        kafka.storage.persistent,
        "needs the s3 storage: NEMESIS_BROKER_STORAGE=s3 and moto_server on PATH"
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("client.id", "quorumtail")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let acked_n = std::sync::Arc::new(AtomicUsize::new(0));
    let total = 6000u32;
    let sender = {
        let acked_n = acked_n.clone();
        tokio::spawn(async move {
            let mut sends = tokio::task::JoinSet::new();
            let mut out = Vec::new();
            for i in 0..total {
                while sends.len() >= 200 {
                    out.push(sends.join_next().await.unwrap().unwrap());
                }
                let p = producer.clone();
                let acked_n = acked_n.clone();
                sends.spawn(async move {
                    let payload =
                        serde_json::json!({"shard": "x", "id": {"ts": {"t": 1, "i": i}}, "n": i})
                            .to_string();
                    let key = format!("k{}", i % 97);
                    let r = p
                        .send(
                            FutureRecord::to(crate::kafka::TOPIC)
                                .key(&key)
                                .payload(&payload),
                            Duration::from_secs(120),
                        )
                        .await;
                    if r.is_ok() {
                        acked_n.fetch_add(1, Ordering::SeqCst);
                    }
                    (
                        i,
                        r.map(|d| (d.partition, d.offset))
                            .map_err(|(e, _)| e.to_string()),
                    )
                });
            }
            while let Some(r) = sends.join_next().await {
                out.push(r.unwrap());
            }
            out
        })
    };
    for k in 1..=3 {
        let want = total as usize * k / 4;
        wait_for(120, "acknowledgements", || {
            acked_n.load(Ordering::SeqCst) >= want
        })
        .await
        .unwrap();
        kafka.restart_broker(graceful);
    }
    let results = sender.await.unwrap();
    let mut acked = std::collections::BTreeMap::new();
    let mut failed = 0;
    for r in results {
        match r {
            (i, Ok(at)) => {
                acked.insert(i, at);
            }
            (_, Err(_)) => failed += 1,
        }
    }
    let markers = kafka.mark().await.unwrap();
    kafka.read_past(&markers, 120).await.unwrap();
    let (runs, _) = kafka.runs(&[markers]);
    let mut seen = std::collections::HashMap::new();
    for (_, v) in &runs[0] {
        if let Some(n) = v["n"].as_u64() {
            *seen.entry(n).or_insert(0usize) += 1;
        }
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|(i, _)| !seen.contains_key(&u64::from(**i)))
        .collect();
    let dups = seen.values().filter(|c| **c > 1).count();
    kafka.stop();
    eprintln!(
        "{} acknowledged, {failed} failed, {} lost, {dups} duplicated, proxy connections closed with requests unanswered: {}",
        acked.len(),
        lost.len(),
        kafka.proxy.abandoned()
    );
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records are missing after broker restarts ({failed} failed); (n, (partition, offset)) e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

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
    let mut qt = crate::qt::Quorumtail::new(tmp.path(), cluster.mongos_addr());
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
    let mut tail = crate::qt::OutputTail::new(&qt.out);
    let all_out = |tail: &mut crate::qt::OutputTail| {
        tail.poll();
        let want = crate::support::committed_app_entries(&cluster, &added);
        !want.is_empty() && tail.missing(&added, &want) == 0
    };
    wait_for(60, "the added shard's writes in the output", || {
        all_out(&mut tail)
    })
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
    qt.kill9();
    // Written on the added shard while quorumtail is down, then the shard is removed.
    let before = crate::support::committed_app_entries(&cluster, &added).len();
    cluster
        .insert("shop.orders", vec![doc! {"_id": 3}])
        .await
        .unwrap();
    wait_for(10, "the insert to commit", || {
        crate::support::committed_app_entries(&cluster, &added).len() > before
    })
    .await
    .unwrap();
    cluster.remove_shard(&added).await.unwrap();
    qt.spawn();
    let emitted = wait_for(20, "the write made while quorumtail was down", || {
        all_out(&mut tail)
    })
    .await;
    qt.terminate().await.unwrap();
    cluster.shutdown().await;
    assert!(
        emitted.is_ok(),
        "{added}'s insert of _id 3, committed while quorumtail was down, was never emitted"
    );
}

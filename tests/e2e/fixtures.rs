//! The mlaunch fixtures replay to exactly their expected records.

use std::collections::BTreeMap;
use std::time::Duration;

use mongosim::{Cluster, ClusterSpec};

use crate::support::{records, repo, shards_toml, start, wait_until};

async fn replay(name: &str, sharded: bool) {
    let dir = repo().join("mlaunch-fixtures").join(name);
    let spec = ClusterSpec {
        shards: usize::from(sharded),
        noop_interval: Duration::ZERO,
        election_timeout: Duration::from_secs(3600),
        ..ClusterSpec::default()
    };
    let cluster = Cluster::start_with_fixture(spec, &dir)
        .await
        .expect("fixture loads");
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("expected.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n",
    );
    let out = q.out.clone();
    wait_until(30, "the expected number of records", || {
        records(&out).len() >= expected.len()
    })
    .await;
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");
    let got = records(&out);

    // Per shard, in order; shards interleave arbitrarily in the output.
    let by_shard = |v: &[serde_json::Value]| {
        let mut m: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for r in v {
            m.entry(r["shard"].as_str().unwrap().to_owned())
                .or_default()
                .push(r.clone());
        }
        m
    };
    let (want, have) = (by_shard(&expected), by_shard(&got));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        have.keys().collect::<Vec<_>>()
    );
    for (shard, want) in &want {
        let have = &have[shard];
        assert_eq!(have.len(), want.len(), "{shard}: {have:#?}");
        for (w, h) in want.iter().zip(have) {
            assert_eq!(h["ts"], w["ts"], "{shard}");
            assert_eq!(h["op"], w["op"]);
            assert_eq!(h["ns"], w["ns"]);
            assert_eq!(h["entry"]["o"], w["o"], "{shard} at {}", w["ts"]);
            if let Some(t) = w.get("t") {
                assert_eq!(
                    &h["id"]["t"], t,
                    "the term distinguishes entries that share a ts"
                );
            }
        }
    }
    cluster.shutdown().await;
}

/// The mlaunch transcript: 11 application inserts; the migration's fromMigrate entries
/// (including the cloned index on test.system.indexes) and the no-ops are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlaunch_sharded_migration_replays_to_its_expected_records() {
    replay("sharded-migration", true).await;
}

/// The rollback pitfall: D and E exist on the isolated old primary only and share a
/// timestamp with the new branch; A, B, C, F, G are emitted and D, E never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_rollback_snapshot_emits_only_the_majority_branch() {
    replay("failover-rollback", false).await;
}

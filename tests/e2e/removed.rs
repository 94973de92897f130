//! Shards removed while quorumtail is stopped: drained at the next start with the members
//! stored next to their checkpoint, marked drained, and left alone by later starts.

use std::time::Duration;

use bson::doc;
use mongosim::{Cluster, ClusterSpec};
use quorumtail::coordinator::DrainState;
use quorumtail_sink::{CheckpointStore, FileCheckpointStore, StoredShard};

use crate::support::{
    committed_app_entries_discovered as committed_app_entries, http_get, records, shard_ids, start,
    wait_until,
};

fn spec() -> ClusterSpec {
    ClusterSpec {
        noop_interval: Duration::from_millis(200),
        election_timeout: Duration::from_millis(500),
        ..ClusterSpec::default()
    }
}

const EXTRA: &str = "[start]\nposition = \"earliest\"\n[http]\nlisten = \"127.0.0.1:0\"\n";

fn discovery(cluster: &Cluster) -> String {
    format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"200ms\"\n",
        cluster.mongos_addr()
    )
}

async fn client(cluster: &Cluster) -> mongodb::Client {
    mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap()
}

async fn stored(dir: &std::path::Path, shard: &str) -> Option<StoredShard> {
    FileCheckpointStore::new(dir.join("checkpoints.json"))
        .load_shards()
        .await
        .unwrap()
        .get(shard)
        .cloned()
}

/// Waits until every committed application write of `shard` is in the output.
async fn emitted_all(cluster: &Cluster, shard: &str, out: &std::path::Path) {
    wait_until(
        60,
        &format!("every committed write of {shard} emitted"),
        || {
            let want = committed_app_entries(cluster, shard);
            !want.is_empty() && shard_ids(&records(out), shard) == want
        },
    )
    .await;
}

/// `removeShard` through mongos, as an operator runs it: the first call starts draining
/// the shard's chunks, later calls report progress until the removal completes.
async fn remove_shard_through_mongos(cluster: &Cluster, shard: &str) {
    let admin = client(cluster).await.database("admin");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = admin
            .run_command(doc! { "removeShard": shard })
            .await
            .unwrap();
        if reply.get_str("state").is_ok_and(|s| s == "completed") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "removeShard did not complete: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds a shard, moves `_id: 1..` to it, writes there and waits until those writes are
/// emitted and its checkpoint (with its members) is stored. Returns the shard's name.
async fn added_shard_with_a_checkpoint(
    cluster: &Cluster,
    q: &crate::support::Running,
    dir: &std::path::Path,
) -> String {
    let coll = client(cluster)
        .await
        .database("shop")
        .collection::<bson::Document>("orders");
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();
    let added = cluster.add_shard(3).await.unwrap();
    cluster
        .move_chunk("shop.orders", bson::Bson::Int32(1), &added)
        .await
        .unwrap();
    for i in 2..=5 {
        coll.insert_one(doc! { "_id": i, "on": "the added shard" })
            .await
            .unwrap();
    }
    let status = q.status.clone();
    wait_until(30, "a pipeline for the added shard", || {
        status.shard(&added).is_some()
    })
    .await;
    emitted_all(cluster, &added, &q.out).await;
    let last = *committed_app_entries(cluster, &added).last().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = stored(dir, &added).await;
        if s.as_ref()
            .is_some_and(|s| s.checkpoint >= last && s.membership.is_some())
        {
            let m = s.unwrap().membership.unwrap();
            let want: Vec<String> = cluster
                .shard_members(&added)
                .iter()
                .map(|a| a.to_string())
                .collect();
            assert_eq!(m.members, want);
            assert_eq!(m.replica_set.as_deref(), Some(added.as_str()));
            return added;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the added shard's checkpoint was not stored: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// quorumtail is stopped, the shard takes writes, then is removed through mongos. The next
/// start drains it with its remembered members (the writes made after its checkpoint are
/// emitted, nothing twice), marks it drained, and the start after that leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_removed_while_stopped_is_drained_at_the_next_start_and_only_once() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(tmp.path(), &discovery(&cluster), EXTRA);
    let added = added_shard_with_a_checkpoint(&cluster, &q, tmp.path()).await;
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");
    let checkpoint = stored(tmp.path(), &added).await.unwrap().checkpoint;

    // While quorumtail is stopped: writes on the shard, then its removal.
    let coll = client(&cluster)
        .await
        .database("shop")
        .collection::<bson::Document>("orders");
    for i in 6..=9 {
        coll.insert_one(doc! { "_id": i, "on": "the added shard, quorumtail stopped" })
            .await
            .unwrap();
    }
    let after_checkpoint = || -> Vec<quorumtail_oplog::EntryId> {
        committed_app_entries(&cluster, &added)
            .into_iter()
            .filter(|id| *id > checkpoint)
            .collect()
    };
    wait_until(30, "the writes after the checkpoint to commit", || {
        after_checkpoint().len() == 4
    })
    .await;
    let after = after_checkpoint();
    remove_shard_through_mongos(&cluster, &added).await;
    let listed = client(&cluster)
        .await
        .database("admin")
        .run_command(doc! { "listShards": 1 })
        .await
        .unwrap();
    assert!(
        !listed.to_string().contains(&format!("\"{added}\"")),
        "{listed}"
    );

    // The next start drains it.
    let q = start(tmp.path(), &discovery(&cluster), EXTRA);
    let status = q.status.clone();
    wait_until(60, "the removed shard drained and marked", || {
        status
            .draining()
            .get(&added)
            .is_some_and(|d| d.state == DrainState::Drained)
    })
    .await;
    let d = status.draining()[&added].clone();
    assert_eq!(
        (d.reason, d.from),
        ("removed while quorumtail was stopped", Some(checkpoint))
    );
    let recs = records(&q.out);
    assert_eq!(
        shard_ids(&recs, &added),
        committed_app_entries(&cluster, &added),
        "every write of the removed shard exactly once, in order"
    );
    let s = stored(tmp.path(), &added).await.unwrap();
    assert!(s.drained, "{s:?}");
    // Past its last write: the deletes of its chunks' migration away and no-ops follow it.
    assert!(s.checkpoint >= *after.last().unwrap(), "{s:?}");
    assert!(status.orphaned_checkpoints().is_empty());
    wait_until(30, "the HTTP endpoints", || status.http_addr().is_some()).await;
    let addr = status.http_addr().unwrap();
    let (code, json) = tokio::task::spawn_blocking(move || http_get(addr, "/status"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["shards"][&added]["draining"]["state"], "drained",
        "{json}"
    );
    assert_eq!(
        v["shards"][&added]["draining"]["reason"],
        "removed while quorumtail was stopped"
    );
    let (_, metrics) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("quorumtail_shard_draining{{shard=\"{added}\"}} 0")),
        "{metrics}"
    );
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.drained, vec![added.clone()]);

    // The start after that neither drains it nor reports it.
    let q = start(tmp.path(), &discovery(&cluster), EXTRA);
    coll.insert_one(doc! { "_id": 1000, "on": "a remaining shard" })
        .await
        .unwrap();
    let status = q.status.clone();
    wait_until(30, "the HTTP endpoints", || status.http_addr().is_some()).await;
    let addr = status.http_addr().unwrap();
    let remaining = cluster.shard_names();
    assert!(!remaining.contains(&added));
    for s in &remaining {
        emitted_all(&cluster, s, &q.out).await;
    }
    wait_until(30, "ready", || http_get(addr, "/readyz").0 == 200).await;
    assert!(status.shard(&added).is_none(), "a pipeline for {added}");
    assert!(status.draining().is_empty());
    assert!(status.orphaned_checkpoints().is_empty());
    let report = q.stop().await;
    assert!(report.ok() && report.drained.is_empty(), "{report:?}");
    assert_eq!(
        shard_ids(&records(&tmp.path().join("out.jsonl")), &added),
        committed_app_entries(&cluster, &added),
        "nothing of the drained shard emitted again"
    );
    assert!(stored(tmp.path(), &added).await.unwrap().drained);
    cluster.shutdown().await;
}

/// The removed shard's members are down when quorumtail starts: it says so (the shard is
/// draining but unreachable, `/readyz` is not ready), keeps retrying and keeps the
/// checkpoint; once the members are back, the shard is drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_shard_whose_members_are_down_keeps_its_checkpoint_and_is_drained_when_they_return(
) {
    let cluster = Cluster::start(spec()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(tmp.path(), &discovery(&cluster), EXTRA);
    let added = added_shard_with_a_checkpoint(&cluster, &q, tmp.path()).await;
    assert!(q.stop().await.ok());
    let coll = client(&cluster)
        .await
        .database("shop")
        .collection::<bson::Document>("orders");
    let before = committed_app_entries(&cluster, &added).len();
    coll.insert_one(doc! { "_id": 6, "on": "the added shard, quorumtail stopped" })
        .await
        .unwrap();
    wait_until(30, "the write to commit", || {
        committed_app_entries(&cluster, &added).len() == before + 1
    })
    .await;
    let want = committed_app_entries(&cluster, &added);
    remove_shard_through_mongos(&cluster, &added).await;
    let members = cluster.shard_members(&added);
    for m in &members {
        cluster.kill_node(*m).await.unwrap();
    }

    let q = start(tmp.path(), &discovery(&cluster), EXTRA);
    let status = q.status.clone();
    wait_until(60, "the drain reported unreachable", || {
        status
            .draining()
            .get(&added)
            .is_some_and(|d| d.state == DrainState::Unreachable)
    })
    .await;
    let addr = status.http_addr().unwrap();
    let (code, body) = tokio::task::spawn_blocking(move || http_get(addr, "/readyz"))
        .await
        .unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains(&format!("shard {added}: removed")) && body.contains("being drained"),
        "{body}"
    );
    let (_, metrics) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "quorumtail_shard_drain_blocked{{shard=\"{added}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(!stored(tmp.path(), &added).await.unwrap().drained);

    for m in &members {
        cluster.restart_node(*m).await.unwrap();
    }
    wait_until(
        60,
        "the removed shard drained once its members are back",
        || {
            status
                .draining()
                .get(&added)
                .is_some_and(|d| d.state == DrainState::Drained)
        },
    )
    .await;
    assert_eq!(shard_ids(&records(&q.out), &added), want);
    assert!(stored(tmp.path(), &added).await.unwrap().drained);
    wait_until(30, "ready", || http_get(addr, "/readyz").0 == 200).await;
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

/// A checkpoint written before memberships were stored (file format version 1) of a shard
/// that is not in the topology cannot be drained: a loud error and not ready, as before,
/// with the fix; the other shards run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_format_checkpoint_of_a_shard_missing_from_the_topology_is_reported() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("checkpoints.json"),
        r#"{"version":1,"shards":{"gone":{"ts":{"t":1700000000,"i":1},"t":1}}}"#,
    )
    .unwrap();
    let q = start(tmp.path(), &crate::support::shards_toml(&cluster), EXTRA);
    let status = q.status.clone();
    wait_until(30, "the HTTP endpoints", || status.http_addr().is_some()).await;
    let addr = status.http_addr().unwrap();
    wait_until(30, "the orphaned checkpoint reported", || {
        status.orphaned_checkpoints() == vec!["gone".to_owned()]
    })
    .await;
    let (code, body) = tokio::task::spawn_blocking(move || http_get(addr, "/readyz"))
        .await
        .unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains("shard gone:") && body.contains("[[shards]]"),
        "{body}"
    );
    assert!(status.shard("gone").is_none() && status.draining().is_empty());
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");
    // The checkpoint is kept as it was.
    let s = stored(tmp.path(), "gone").await.unwrap();
    assert!(s.membership.is_none() && !s.drained);
    cluster.shutdown().await;
}

/// A restart during a mongos outage: discovery fails, but the shards remembered next to
/// their checkpoints are tailed (a supervisor restarting quorumtail gets no restart loop);
/// writes made directly on a shard's primary meanwhile are emitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_while_mongos_is_down_tails_the_remembered_shards() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let names = cluster.shard_names();
    let coll = client(&cluster)
        .await
        .database("shop")
        .collection::<bson::Document>("orders");
    // One write on each shard.
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();
    coll.insert_one(doc! { "_id": 1001 }).await.unwrap();
    let q = start(tmp.path(), &discovery(&cluster), EXTRA);
    for s in &names {
        emitted_all(&cluster, s, &q.out).await;
    }
    let dir = tmp.path().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for s in &names {
        while stored(&dir, s).await.is_none_or(|s| s.membership.is_none()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no membership stored for {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(q.stop().await.ok());
    std::fs::rename(tmp.path().join("out.jsonl"), tmp.path().join("first.jsonl")).unwrap();

    cluster.kill_node(cluster.mongos_addr()).await.unwrap();
    let primary = cluster.primary_of(&names[0]).unwrap();
    let direct =
        mongodb::Client::with_uri_str(format!("mongodb://{primary}/?directConnection=true"))
            .await
            .unwrap();
    direct
        .database("shop")
        .collection::<bson::Document>("orders")
        .insert_one(doc! { "_id": 424242, "while": "mongos down" })
        .await
        .unwrap();
    let q = start(tmp.path(), &discovery(&cluster), EXTRA);
    let out = q.out.clone();
    wait_until(60, "the write made while mongos was down", || {
        records(&out)
            .iter()
            .any(|r| r["entry"]["o"]["_id"] == 424242)
    })
    .await;
    assert!(!q.handle.is_finished(), "quorumtail stopped");
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

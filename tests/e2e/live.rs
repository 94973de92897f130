//! Live clusters: writes, migrations, failovers, restarts, lost resume points, quorum
//! loss, shards added and removed.

use std::collections::HashSet;
use std::time::Duration;

use bson::doc;
use mongosim::{Cluster, ClusterSpec};
use quorumtail_oplog::{EntryId, OplogEntry};

use crate::support::{
    committed_app_entries, committed_app_entries_discovered, http_get, records, shard_ids,
    shards_toml, start, wait_until,
};

fn spec() -> ClusterSpec {
    ClusterSpec {
        noop_interval: Duration::from_millis(200),
        election_timeout: Duration::from_millis(500),
        ..ClusterSpec::default()
    }
}

async fn mongos(cluster: &Cluster) -> mongodb::Collection<bson::Document> {
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    client.database("shop").collection("orders")
}

/// Waits until every write made so far is majority-committed (per the simulator) and
/// every shard's committed application history is in the output.
async fn wait_caught_up(cluster: &Cluster, out: &std::path::Path) {
    wait_caught_up_as(cluster, out, committed_app_entries).await
}

/// As [`wait_caught_up`], with the expected records of a shard from `expected`.
async fn wait_caught_up_as(
    cluster: &Cluster,
    out: &std::path::Path,
    expected: fn(&Cluster, &str) -> Vec<quorumtail_oplog::EntryId>,
) {
    for s in cluster.shard_names() {
        let members = cluster.shard_members(&s);
        wait_until(60, "the writes to commit", || {
            let newest = members
                .iter()
                .filter_map(|m| {
                    cluster
                        .oplog_snapshot(*m)
                        .last()
                        .map(|e| OplogEntry::parse(e).unwrap().id())
                })
                .max();
            let commit = cluster.commit_point(&s);
            match (newest, commit) {
                (Some(n), Some((ts, _))) => quorumtail_oplog::Timestamp::from(ts) >= n.ts,
                _ => true,
            }
        })
        .await;
    }
    wait_until(
        60,
        "every committed application write in the output",
        || {
            let recs = records(out);
            cluster
                .shard_names()
                .iter()
                .all(|s| shard_ids(&recs, s) == expected(cluster, s))
        },
    )
    .await;
}

/// Writes on both shards, a chunk migration, an isolated primary whose writes are rolled
/// back: the output is exactly the majority-committed application history of each shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_migration_and_failover_match_the_committed_history() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n",
    );
    let coll = mongos(&cluster).await;
    for i in 1..=20 {
        coll.insert_one(doc! { "_id": i, "v": i }).await.unwrap();
        coll.insert_one(doc! { "_id": 1000 + i, "v": i })
            .await
            .unwrap();
    }
    coll.update_many(doc! {}, doc! { "$inc": { "v": 1 } })
        .await
        .unwrap();
    coll.delete_one(doc! { "_id": 3 }).await.unwrap();
    let names = cluster.shard_names();
    cluster
        .move_chunk("shop.orders", bson::Bson::Int32(1), &names[1])
        .await
        .unwrap();

    let old = cluster.primary_of(&names[0]).unwrap();
    cluster.partition_node(old).await.unwrap();
    let direct = mongodb::Client::with_uri_str(format!("mongodb://{old}/?directConnection=true"))
        .await
        .unwrap();
    let doomed = direct
        .database("shop")
        .collection::<bson::Document>("orders");
    doomed
        .insert_one(doc! { "_id": 7777, "phantom": true })
        .await
        .unwrap();
    wait_until(30, "a new primary", || {
        cluster.primary_of(&names[0]).is_some_and(|p| p != old)
    })
    .await;
    cluster.heal_node(old).await.unwrap();
    wait_until(30, "the rollback", || {
        !cluster.rolled_back_entries(&names[0]).is_empty()
    })
    .await;
    for i in 21..=25 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
    }
    wait_caught_up(&cluster, &q.out).await;
    let status = q.status.clone();
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");

    let recs = records(&tmp.path().join("out.jsonl"));
    let rolled_back: HashSet<EntryId> = cluster
        .rolled_back_entries(&names[0])
        .iter()
        .map(|r| OplogEntry::parse(r).unwrap().id())
        .collect();
    assert!(!rolled_back.is_empty());
    for r in &recs {
        let id = crate::support::record_id(r);
        // Identities are per replica set: compare within shard01 only.
        if r["shard"] == names[0].as_str() {
            assert!(
                !rolled_back.contains(&id),
                "a rolled-back entry was emitted: {r}"
            );
        }
        assert!(
            r["entry"]["fromMigrate"].is_null(),
            "a migration write was emitted: {r}"
        );
        assert_ne!(
            r["entry"]["o"]["_id"], 7777,
            "the isolated primary's write was emitted"
        );
    }
    for s in &names {
        assert_eq!(
            shard_ids(&recs, s),
            committed_app_entries(&cluster, s),
            "{s}"
        );
    }
    let s0 = status.shard(&names[0]).unwrap();
    assert!(s0.discarded >= 1, "{s0:?}");
    let s1 = status.shard(&names[1]).unwrap();
    assert!(
        s1.dropped_from_migrate + s0.dropped_from_migrate >= 1,
        "{s0:?} {s1:?}"
    );
    cluster.shutdown().await;
}

/// Stop, write while stopped, start again: the second run emits exactly the new writes
/// (a graceful stop stores the final checkpoint, so nothing is repeated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_checkpoint_without_loss_or_repeats() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let shards = shards_toml(&cluster);
    let coll = mongos(&cluster).await;
    let q = start(tmp.path(), &shards, "[start]\nposition = \"earliest\"\n");
    for i in 1..=10 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
    }
    wait_caught_up(&cluster, &q.out).await;
    let first = q.stop().await;
    assert!(first.ok());
    assert_eq!(first.checkpoints.len(), 2, "{:?}", first.checkpoints);
    let first_out = records(&tmp.path().join("out.jsonl"));
    std::fs::rename(tmp.path().join("out.jsonl"), tmp.path().join("first.jsonl")).unwrap();

    for i in 11..=20 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
        coll.insert_one(doc! { "_id": 1000 + i }).await.unwrap();
    }
    // `latest` must not matter: the checkpoint decides.
    let q = start(tmp.path(), &shards, "[start]\nposition = \"latest\"\n");
    let out = q.out.clone();
    wait_until(60, "the writes made while stopped", || {
        let recs = records(&out);
        let mut all = first_out.clone();
        all.extend(recs);
        cluster
            .shard_names()
            .iter()
            .all(|s| shard_ids(&all, s) == committed_app_entries(&cluster, s))
    })
    .await;
    assert!(q.stop().await.ok());
    let second = records(&out);
    assert_eq!(
        second.iter().filter(|r| r["op"] == "i").count(),
        20,
        "exactly the 20 new inserts: {second:#?}"
    );
    cluster.shutdown().await;
}

/// The checkpoint fell off every member's oplog while quorumtail was stopped: the shard
/// stops with a definite error naming it, the members and the fix; nothing is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_point_off_the_oplog_stops_the_shard_loudly() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let shards = shards_toml(&cluster);
    let coll = mongos(&cluster).await;
    let q = start(tmp.path(), &shards, "[start]\nposition = \"earliest\"\n");
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();
    coll.insert_one(doc! { "_id": 1001 }).await.unwrap();
    wait_caught_up(&cluster, &q.out).await;
    assert!(q.stop().await.ok());
    std::fs::rename(tmp.path().join("out.jsonl"), tmp.path().join("first.jsonl")).unwrap();

    let names = cluster.shard_names();
    for i in 2..=30 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
    }
    // shard01's oplogs roll over past the checkpoint on every member.
    let members = cluster.shard_members(&names[0]);
    wait_until(30, "replication", || {
        members
            .iter()
            .all(|m| cluster.oplog_snapshot(*m).len() == cluster.oplog_snapshot(members[0]).len())
    })
    .await;
    let keep = 5;
    for m in &members {
        let n = cluster.oplog_snapshot(*m).len();
        cluster.truncate_oplog(*m, n - keep).unwrap();
    }
    let q = start(tmp.path(), &shards, "");
    let status = q.status.clone();
    wait_until(60, "shard01 to stop", || {
        status.shard(&names[0]).is_some_and(|s| s.failed)
    })
    .await;
    // The other shard keeps running.
    coll.insert_one(doc! { "_id": 1002 }).await.unwrap();
    let out = q.out.clone();
    wait_until(30, "shard02 to keep emitting", || {
        records(&out).iter().any(|r| r["entry"]["o"]["_id"] == 1002)
    })
    .await;
    let report = q.stop().await;
    assert!(!report.ok());
    let err = report.failed.join("\n");
    assert!(err.contains(&format!("shard {}", names[0])), "{err}");
    assert!(err.contains("is no longer in the oplog of"), "{err}");
    // The quorum is 2 of 3: two members lacking it are enough to know it is gone.
    assert!(
        members
            .iter()
            .filter(|m| err.contains(&m.to_string()))
            .count()
            >= 2,
        "{err}"
    );
    assert!(err.contains("take a new snapshot of this shard"), "{err}");
    assert!(err.contains("[start] position = \"snapshot\""), "{err}");
    // Nothing of shard01 after the checkpoint was emitted.
    assert!(records(&out)
        .iter()
        .all(|r| r["shard"] != names[0].as_str()));
    cluster.shutdown().await;
}

/// One member down: the majority still commits. Two members down: nothing the primary
/// alone holds is emitted, and it all arrives once the members return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_lost_and_regained() {
    let spec = ClusterSpec {
        election_timeout: Duration::from_secs(3600),
        ..spec()
    };
    let cluster = Cluster::start(spec).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let coll = mongos(&cluster).await;
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n",
    );
    let names = cluster.shard_names();
    let primary = cluster.primary_of(&names[0]).unwrap();
    let secondaries: Vec<_> = cluster
        .shard_members(&names[0])
        .into_iter()
        .filter(|m| *m != primary)
        .collect();
    let emitted =
        |out: &std::path::Path, id: i32| records(out).iter().any(|r| r["entry"]["o"]["_id"] == id);
    coll.insert_one(doc! { "_id": 0, "phase": "all up" })
        .await
        .unwrap();
    let out = q.out.clone();
    wait_until(30, "the first write", || emitted(&out, 0)).await;

    cluster.kill_node(secondaries[0]).await.unwrap();
    coll.insert_one(doc! { "_id": 1, "phase": "one member down" })
        .await
        .unwrap();
    wait_until(30, "a write with one member down", || emitted(&out, 1)).await;

    cluster.kill_node(secondaries[1]).await.unwrap();
    coll.insert_one(doc! { "_id": 2, "phase": "primary alone" })
        .await
        .unwrap();
    let status = q.status.clone();
    // quorumtail has read the entry from the primary but holds it back.
    wait_until(30, "the primary's entry to be pending in the merge", || {
        status.shard(&names[0]).is_some_and(|s| s.pending >= 1)
    })
    .await;
    wait_until(30, "the shard to report its quorum unreachable", || {
        status.shard(&names[0]).is_some_and(|s| !s.quorum_reachable)
    })
    .await;
    assert!(
        records(&q.out).iter().all(|r| r["entry"]["o"]["_id"] != 2),
        "emitted an entry only the primary holds"
    );

    cluster.restart_node(secondaries[0]).await.unwrap();
    cluster.restart_node(secondaries[1]).await.unwrap();
    wait_until(60, "the entry once a majority holds it", || {
        emitted(&out, 2)
    })
    .await;
    assert!(status.shard(&names[0]).unwrap().quorum_reachable);
    wait_caught_up(&cluster, &q.out).await;
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

/// Discovery through mongos: a shard added at runtime is tailed from the beginning of its
/// oplog; a removed shard is drained (its migrations out are dropped as fromMigrate) and
/// its pipeline stops cleanly; nothing any shard committed is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_added_and_removed_at_runtime_are_followed() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let discovery = format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"200ms\"\n",
        cluster.mongos_addr()
    );
    let q = start(tmp.path(), &discovery, "[start]\nposition = \"earliest\"\n");
    let coll = mongos(&cluster).await;
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();
    coll.insert_one(doc! { "_id": 1001 }).await.unwrap();
    wait_caught_up_as(&cluster, &q.out, committed_app_entries_discovered).await;

    let added = cluster.add_shard(3).await.unwrap();
    cluster
        .move_chunk("shop.orders", bson::Bson::Int32(1), &added)
        .await
        .unwrap();
    for i in 2..=10 {
        coll.insert_one(doc! { "_id": i, "on": "the new shard" })
            .await
            .unwrap();
    }
    let status = q.status.clone();
    wait_until(30, "a pipeline for the new shard", || {
        status.shard(&added).is_some()
    })
    .await;
    wait_caught_up_as(&cluster, &q.out, committed_app_entries_discovered).await;
    let recs = records(&q.out);
    assert!(
        shard_ids(&recs, &added).len() >= 9,
        "writes on the added shard: {recs:#?}"
    );

    cluster.remove_shard(&added).await.unwrap();
    for i in 11..=15 {
        coll.insert_one(doc! { "_id": i, "on": "after removal" })
            .await
            .unwrap();
    }
    wait_until(60, "the removed shard's pipeline to drain and stop", || {
        status.shard(&added).is_some_and(|s| s.stopped)
    })
    .await;
    wait_caught_up_as(&cluster, &q.out, committed_app_entries_discovered).await;
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");
    // Marked drained in the checkpoint store: a later start leaves it alone.
    assert_eq!(report.drained, vec![added.clone()]);
    let recs = records(&tmp.path().join("out.jsonl"));
    for s in cluster.shard_names().iter().chain([&added]) {
        assert_eq!(
            shard_ids(&recs, s),
            committed_app_entries_discovered(&cluster, s),
            "{s}"
        );
    }
    assert!(recs.iter().all(|r| r["entry"]["fromMigrate"].is_null()));
    cluster.shutdown().await;
}

/// A transaction large enough to span several oplog entries (partialTxn chain) comes out
/// as one record per operation, together, with its session details and the commit's ts;
/// an aborted transaction emits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_emitted_whole_and_aborted_ones_not_at_all() {
    let rs = mongosim::ReplicaSet::start(mongosim::ReplicaSetSpec {
        max_txn_ops_per_entry: Some(2),
        noop_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .unwrap();
    let name = rs.name();
    let members: Vec<String> = rs.members().iter().map(|a| format!("\"{a}\"")).collect();
    let shards = format!(
        "[[shards]]\nname = \"{name}\"\nmembers = [{}]\n",
        members.join(", ")
    );
    let tmp = tempfile::tempdir().unwrap();
    let q = start(tmp.path(), &shards, "[start]\nposition = \"earliest\"\n");

    let client = mongodb::Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=5000",
        rs.replica_set_uri(&name)
    ))
    .await
    .unwrap();
    let coll = client
        .database("shop")
        .collection::<bson::Document>("orders");
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    for i in 1..=5 {
        coll.insert_one(doc! { "_id": i })
            .session(&mut session)
            .await
            .unwrap();
    }
    coll.update_one(doc! { "_id": 0 }, doc! { "$set": { "paid": true } })
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": 99 })
        .session(&mut session)
        .await
        .unwrap();
    session.abort_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": 100, "after": true })
        .await
        .unwrap();

    let out = q.out.clone();
    wait_until(30, "the write after the transactions", || {
        records(&out).iter().any(|r| r["entry"]["o"]["_id"] == 100)
    })
    .await;
    assert!(q.stop().await.ok());
    let recs = records(&tmp.path().join("out.jsonl"));
    let txn: Vec<&serde_json::Value> = recs.iter().filter(|r| !r["txn"].is_null()).collect();
    assert_eq!(txn.len(), 6, "{recs:#?}");
    for (i, r) in txn.iter().enumerate() {
        assert_eq!(r["txn"]["index"], i, "{r}");
        assert_eq!(
            r["ts"], txn[0]["ts"],
            "every operation carries the commit's ts"
        );
        assert!(r["txn"]["lsid"].is_object() && r["txn"]["txnNumber"].is_number());
    }
    assert_eq!(txn[5]["op"], "u");
    assert!(
        recs.iter().all(|r| r["entry"]["o"]["_id"] != 99),
        "the aborted transaction was emitted"
    );
    rs.shutdown().await;
}

/// The operator endpoints: metrics per member and shard, readiness that follows the
/// quorum, a JSON status and the human page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_report_members_shards_and_readiness() {
    let spec = ClusterSpec {
        election_timeout: Duration::from_secs(3600),
        ..spec()
    };
    let cluster = Cluster::start(spec).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
    );
    let coll = mongos(&cluster).await;
    for i in 1..=5 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
    }
    let status = q.status.clone();
    wait_until(30, "the HTTP endpoints", || status.http_addr().is_some()).await;
    let addr = status.http_addr().unwrap();
    let names = cluster.shard_names();
    let get = move |p: &'static str| tokio::task::spawn_blocking(move || http_get(addr, p));

    assert_eq!(get("/healthz").await.unwrap(), (200, "ok\n".into()));
    wait_until(30, "every member tailing and the writes emitted", || {
        let recs = records(&q.out);
        let s = status.shard(&names[0]).unwrap_or_default();
        recs.iter().filter(|r| r["op"] == "i").count() >= 5
            && s.quorum_reachable
            && status
                .nodes(&names[0])
                .values()
                .all(|n| n.state == "tailing")
    })
    .await;
    let (code, metrics) = get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    for m in cluster.shard_members(&names[0]) {
        let line = format!(
            "quorumtail_node_up{{shard=\"{}\",node=\"{m}\"}} 1",
            names[0]
        );
        assert!(metrics.contains(&line), "{line} missing in\n{metrics}");
    }
    // OpenMetrics names a counter's family without `_total` (its samples have it).
    for (family, kind) in [
        ("quorumtail_shard_records", "counter"),
        ("quorumtail_shard_committed_timestamp_seconds", "gauge"),
        ("quorumtail_node_lag_seconds", "gauge"),
        ("quorumtail_shard_dropped_operations", "counter"),
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} missing"
        );
    }
    assert_eq!(get("/readyz").await.unwrap().0, 200);
    let (code, json) = get("/status").await.unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(
        v["shards"][&names[0]]["nodes"].as_object().unwrap().len(),
        3
    );
    let (code, page) = get("/").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains(&names[0]) && page.contains("quorum available"),
        "{page}"
    );

    // Two members of shard01 go down: not ready, and the page says why.
    let primary = cluster.primary_of(&names[0]).unwrap();
    for m in cluster
        .shard_members(&names[0])
        .into_iter()
        .filter(|m| *m != primary)
    {
        cluster.kill_node(m).await.unwrap();
    }
    wait_until(30, "the shard to lose its quorum", || {
        status.shard(&names[0]).is_some_and(|s| !s.quorum_reachable)
    })
    .await;
    let (code, body) = get("/readyz").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains(&format!("shard {}", names[0])), "{body}");
    assert!(get("/").await.unwrap().1.contains("quorum unavailable"));
    assert_eq!(get("/nope").await.unwrap().0, 404);
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

/// A listed member that belongs to another replica set is refused (its oplog is another
/// history): it never counts towards the quorum, the shard keeps emitting exactly its own
/// committed history, and the member's state says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_another_replica_set_is_refused() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let names = cluster.shard_names();
    let mut members = cluster.shard_members(&names[0]);
    members.truncate(2);
    let stranger = cluster.shard_members(&names[1])[0];
    members.push(stranger);
    let list: Vec<String> = members.iter().map(|a| format!("\"{a}\"")).collect();
    let shards = format!(
        "[[shards]]\nname = \"{}\"\nmembers = [{}]\n",
        names[0],
        list.join(", ")
    );
    let tmp = tempfile::tempdir().unwrap();
    let q = start(tmp.path(), &shards, "[start]\nposition = \"earliest\"\n");
    let coll = mongos(&cluster).await;
    for i in 1..=5 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
        coll.insert_one(doc! { "_id": 1000 + i }).await.unwrap();
    }
    let status = q.status.clone();
    let out = q.out.clone();
    wait_until(30, "shard01's writes", || {
        records(&out).iter().filter(|r| r["op"] == "i").count() >= 5
    })
    .await;
    wait_until(30, "the stranger to be refused", || {
        status
            .nodes(&names[0])
            .get(&stranger.to_string())
            .is_some_and(|n| {
                n.state
                    .contains(&format!("belongs to replica set \"{}\"", names[1]))
            })
    })
    .await;
    wait_caught_up_one(&cluster, &names[0], &out).await;
    assert!(q.stop().await.ok());
    let recs = records(&tmp.path().join("out.jsonl"));
    assert_eq!(
        shard_ids(&recs, &names[0]),
        committed_app_entries(&cluster, &names[0])
    );
    assert!(
        recs.iter()
            .all(|r| r["entry"]["o"]["_id"].as_i64().is_none_or(|id| id < 1000)),
        "an entry of the other replica set was emitted"
    );
    cluster.shutdown().await;
}

async fn wait_caught_up_one(cluster: &Cluster, shard: &str, out: &std::path::Path) {
    wait_until(60, "the shard's committed history in the output", || {
        shard_ids(&records(out), shard) == committed_app_entries(cluster, shard)
    })
    .await;
}

/// Members that answer with garbage or with an oversized frame are treated as down (with
/// the reason), never crash anything, and the healthy members keep the shard going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_sending_garbage_or_oversized_messages_are_treated_as_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn fake(reply: Vec<u8>) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }
    let garbage = fake(b"HTTP/1.1 200 OK\r\n\r\nthis is not MongoDB".to_vec()).await;
    // A header announcing a 2 GiB OP_MSG reply.
    let mut huge = Vec::new();
    huge.extend_from_slice(&i32::MAX.to_le_bytes());
    huge.extend_from_slice(&1i32.to_le_bytes());
    huge.extend_from_slice(&1i32.to_le_bytes());
    huge.extend_from_slice(&2013i32.to_le_bytes());
    let oversized = fake(huge).await;

    let cluster = Cluster::start(spec()).await.unwrap();
    let names = cluster.shard_names();
    let mut list: Vec<String> = cluster
        .shard_members(&names[0])
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    list.push(format!("\"{garbage}\""));
    list.push(format!("\"{oversized}\""));
    let shards = format!(
        "[[shards]]\nname = \"{}\"\nmembers = [{}]\nquorum = 2\n",
        names[0],
        list.join(", ")
    );
    let tmp = tempfile::tempdir().unwrap();
    let q = start(tmp.path(), &shards, "[start]\nposition = \"earliest\"\n");
    let coll = mongos(&cluster).await;
    for i in 1..=5 {
        coll.insert_one(doc! { "_id": i }).await.unwrap();
    }
    let status = q.status.clone();
    let out = q.out.clone();
    wait_caught_up_one(&cluster, &names[0], &out).await;
    wait_until(60, "both fake members reported down", || {
        let nodes = status.nodes(&names[0]);
        [garbage, oversized].iter().all(|a| {
            nodes
                .get(&a.to_string())
                .is_some_and(|n| n.state.starts_with("down") && n.interruptions >= 1)
        })
    })
    .await;
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

/// A restart far behind, with a backlog much larger than `max_pending`: the backlog is
/// released as the members' streams read it (each batch read after the member reported a
/// commit point covering it), so the shard neither stalls nor holds the backlog in memory
/// waiting for the streams to reach the members' newest entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_max_pending_is_released_as_it_is_read() {
    let cluster = Cluster::start(spec()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let shards = shards_toml(&cluster);
    let extra = "[start]\nposition = \"earliest\"\n[pipeline]\nmax_pending = 200\n";
    let mongo = "batch_size = 50\n";
    let q = crate::support::start_with_mongo(tmp.path(), &shards, mongo, extra);
    let coll = mongos(&cluster).await;
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    wait_caught_up(&cluster, &q.out).await;
    assert!(q.stop().await.ok());
    std::fs::rename(tmp.path().join("out.jsonl"), tmp.path().join("first.jsonl")).unwrap();

    // 5,000 inserts on shard01's chunk (ids below the first split point) while stopped.
    for chunk in (1..=5000).collect::<Vec<i32>>().chunks(500) {
        cluster
            .insert(
                "shop.orders",
                chunk
                    .iter()
                    .map(|i| doc! {"_id": f64::from(*i) / 10.0})
                    .collect(),
            )
            .await
            .unwrap();
    }
    let want: usize = committed_app_entries(&cluster, "shard01").len();
    assert!(want > 5000, "the backlog is on shard01: {want}");
    let q = crate::support::start_with_mongo(tmp.path(), &shards, mongo, extra);
    let mut most_pending = 0;
    let first = records(&tmp.path().join("first.jsonl"));
    wait_until(120, "the backlog emitted", || {
        if let Some(s) = q.status.all().get("shard01") {
            most_pending = most_pending.max(s.pending);
        }
        let mut all = first.clone();
        all.extend(records(&q.out));
        shard_ids(&all, "shard01") == committed_app_entries(&cluster, "shard01")
    })
    .await;
    assert!(q.stop().await.ok());
    // Sampled, so a lower bound of the true peak; the backlog is over 5,000 entries.
    assert!(
        most_pending <= 600,
        "at most {most_pending} entries waited at once (max_pending 200, batches of 50)"
    );
    cluster.shutdown().await;
}

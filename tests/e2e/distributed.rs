//! Distributed (cross-shard) transactions end to end: written through mongos with the Rust
//! driver, committed by the simulator's two-phase commit (prepare on every participant,
//! `commitTransaction` with the coordinator's `commitTimestamp`), read by quorumtail from
//! every member. What a consumer depends on, from MongoDB's documented behaviour:
//!
//! * each shard's part of a committed transaction is emitted once, when its commit entry is
//!   released, every operation with the transaction's `lsid` and `txnNumber` and the one
//!   `commitTimestamp` all parts share, so the parts can be joined;
//! * nothing of an aborted transaction, including the participant that had prepared;
//! * nothing of the coordinator's bookkeeping (`config.transaction_coordinators`);
//! * a transaction still prepared when quorumtail stops is emitted once after it restarts
//!   (its checkpoint never passes an open transaction's first entry);
//! * a decision logged by a new primary, in a later term, after a failover, is followed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bson::{doc, Document};
use mongodb::Client;
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use serde_json::Value;

use crate::support::{records, shards_toml, start, wait_until};

async fn cluster(version: ServerVersion) -> (Cluster, Client) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version,
        noop_interval: Duration::from_millis(200),
        election_timeout: Duration::from_millis(300),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!(
        "mongodb://{}/?serverSelectionTimeoutMS=5000",
        cluster.mongos_addr()
    ))
    .await
    .unwrap();
    (cluster, client)
}

/// The account every transaction updates, on shard02.
const ACCOUNT: i32 = 1999;

/// One transaction writing `_id` = `i` on shard01 and `1000 + i` on shard02 (the
/// simulator's chunks split at 1000), plus an update of [`ACCOUNT`] (the simulator does
/// not let a transaction read its own uncommitted writes, so the update is of a document
/// that existed before).
async fn transfer(client: &Client, i: i32) -> mongodb::error::Result<()> {
    let coll = client.database("bank").collection::<Document>("ledger");
    if coll.find_one(doc! {"_id": ACCOUNT}).await?.is_none() {
        coll.insert_one(doc! {"_id": ACCOUNT, "n": 0}).await?;
    }
    let mut session = client.start_session().await?;
    session.start_transaction().await?;
    coll.insert_one(doc! {"_id": i, "side": "debit"})
        .session(&mut session)
        .await?;
    coll.insert_one(doc! {"_id": 1000 + i, "side": "credit"})
        .session(&mut session)
        .await?;
    coll.update_one(doc! {"_id": ACCOUNT}, doc! {"$inc": {"n": 1}})
        .session(&mut session)
        .await?;
    session.commit_transaction().await
}

/// Marks both shards with a plain insert each, written after everything before it.
async fn mark(client: &Client, n: i32) {
    client
        .database("bank")
        .collection::<Document>("marks")
        .insert_many([doc! {"_id": n}, doc! {"_id": 1000 + n}])
        .await
        .unwrap();
}

fn mark_seen(recs: &[Value], n: i64) -> bool {
    let seen: BTreeSet<i64> = recs
        .iter()
        .filter(|r| r["ns"] == "bank.marks")
        .filter_map(|r| r["entry"]["o"]["_id"].as_i64())
        .collect();
    seen.contains(&n) && seen.contains(&(1000 + n))
}

/// The `_id` a ledger record is about.
fn doc_id(r: &Value) -> i64 {
    r["entry"]["o"]["_id"]
        .as_i64()
        .or_else(|| r["entry"]["o2"]["_id"].as_i64())
        .unwrap()
}

/// `(lsid id, txnNumber)` of a transaction record.
fn txn_of(r: &Value) -> (String, i64) {
    (
        r["txn"]["lsid"]["id"].to_string(),
        r["txn"]["txnNumber"].as_i64().expect("txnNumber"),
    )
}

fn ledger(recs: &[Value]) -> Vec<&Value> {
    recs.iter().filter(|r| r["ns"] == "bank.ledger").collect()
}

/// Checks the output's ledger records against the committed transactions `committed`:
/// every operation once, each shard's part whole and joinable with the other's.
fn check_parts(recs: &[Value], committed: &[i32]) {
    let ledger: Vec<&Value> = ledger(recs)
        .into_iter()
        .filter(|r| r["txn"].is_object())
        .collect();
    let mut ops: BTreeMap<(i64, &str), usize> = BTreeMap::new();
    for r in &ledger {
        *ops.entry((doc_id(r), r["op"].as_str().unwrap()))
            .or_default() += 1;
    }
    let mut want = BTreeMap::new();
    for i in committed {
        let i = i64::from(*i);
        want.insert((i, "i"), 1);
        want.insert((1000 + i, "i"), 1);
        *want.entry((i64::from(ACCOUNT), "u")).or_default() += 1;
    }
    assert_eq!(
        ops, want,
        "every committed operation exactly once, nothing else"
    );

    // Group by transaction (every record of it, whatever its namespace: the first write to
    // a collection inside a transaction also logs its creation): two parts, one per shard,
    // one commitTimestamp.
    let mut parts: BTreeMap<(String, i64), Vec<&Value>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r["txn"]["txnNumber"].is_i64()) {
        parts.entry(txn_of(r)).or_default().push(r);
    }
    assert_eq!(parts.len(), committed.len());
    for (txn, recs) in parts {
        let shards: BTreeSet<&str> = recs.iter().map(|r| r["shard"].as_str().unwrap()).collect();
        assert_eq!(shards.len(), 2, "{txn:?}: a part on each shard");
        let at: BTreeSet<String> = recs
            .iter()
            .map(|r| r["txn"]["commitTimestamp"].to_string())
            .collect();
        assert_eq!(at.len(), 1, "{txn:?}: one commitTimestamp: {at:?}");
        assert!(recs[0]["txn"]["commitTimestamp"]["t"].as_u64().is_some());
        for shard in shards {
            let part: Vec<&&Value> = recs.iter().filter(|r| r["shard"] == shard).collect();
            let count = part[0]["txn"]["count"].as_u64().unwrap() as usize;
            assert_eq!(
                part.len(),
                count,
                "{txn:?} on {shard}: the whole part: {part:#?}"
            );
            let index: Vec<u64> = part
                .iter()
                .map(|r| r["txn"]["index"].as_u64().unwrap())
                .collect();
            assert!(index.windows(2).all(|w| w[0] < w[1]), "{index:?}: in order");
            // One position: the shard's commit entry.
            let ids: BTreeSet<String> = part.iter().map(|r| r["id"].to_string()).collect();
            assert_eq!(ids.len(), 1);
        }
    }
}

async fn committed_and_aborted(version: ServerVersion) {
    let (cluster, client) = cluster(version).await;
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n",
    );
    let mut committed = Vec::new();
    for i in 0..12 {
        if i % 4 == 3 {
            // shard02 votes to abort after shard01 prepared.
            cluster.fail_next_prepare("shard02").unwrap();
            let err = transfer(&client, i).await.unwrap_err();
            assert!(
                matches!(err.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 251),
                "{err}"
            );
        } else {
            transfer(&client, i).await.unwrap();
            committed.push(i);
        }
    }
    mark(&client, 1).await;
    wait_until(30, "the closing marks", || mark_seen(&records(&q.out), 1)).await;
    q.stop().await;

    let recs = records(&tmp.path().join("out.jsonl"));
    check_parts(&recs, &committed);
    assert!(
        !recs
            .iter()
            .any(|r| r["ns"].as_str().unwrap_or("").starts_with("config.")),
        "{version}: the coordinator's documents are internal"
    );
    // The aborted transactions did prepare on shard01: the oplog has their prepare and
    // abort entries, yet nothing of them came out (checked by check_parts).
    let p1 = cluster.primary_of("shard01").unwrap();
    let aborts = cluster
        .oplog_snapshot(p1)
        .iter()
        .filter(|raw| {
            Document::try_from(raw.as_ref())
                .ok()
                .and_then(|d| d.get_document("o").ok().cloned())
                .is_some_and(|o| o.contains_key("abortTransaction"))
        })
        .count();
    assert_eq!(aborts, 3, "{version}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_transactions_are_emitted_once_per_shard_and_aborted_ones_never_7_0() {
    committed_and_aborted(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_transactions_are_emitted_once_per_shard_and_aborted_ones_never_4_4() {
    committed_and_aborted(ServerVersion::V4_4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_prepared_at_shutdown_is_emitted_once_after_restart() {
    let (cluster, client) = cluster(ServerVersion::V7_0).await;
    let tmp = tempfile::tempdir().unwrap();
    let shards = shards_toml(&cluster);
    let extra = "[start]\nposition = \"earliest\"\n";
    let q = start(tmp.path(), &shards, extra);
    transfer(&client, 1).await.unwrap();

    cluster.hold_txn_decisions(true);
    let c = client.clone();
    let pending = tokio::spawn(async move { transfer(&c, 2).await });
    // Both participants prepared (the coordinator holds its decision)...
    let prepared = |shard: &str| {
        let p = cluster.primary_of(shard).unwrap();
        cluster.oplog_snapshot(p).iter().any(|raw| {
            Document::try_from(raw.as_ref())
                .ok()
                .and_then(|d| d.get_document("o").ok().cloned())
                .is_some_and(|o| {
                    o.get_bool("prepare").unwrap_or(false)
                        && o.get_array("applyOps").is_ok_and(|a| !a.is_empty())
                })
        })
    };
    wait_until(20, "both prepare entries", || {
        prepared("shard01") && prepared("shard02")
    })
    .await;
    // ...and quorumtail released entries written after the prepares, on both shards.
    mark(&client, 1).await;
    wait_until(30, "the marks after the prepares", || {
        mark_seen(&records(&q.out), 1)
    })
    .await;
    q.stop().await;
    let before = records(&tmp.path().join("out.jsonl"));
    check_parts(&before, &[1]);

    cluster.hold_txn_decisions(false);
    pending.await.unwrap().unwrap();
    mark(&client, 2).await;

    let q = start(tmp.path(), &shards, extra);
    wait_until(30, "the marks after the restart", || {
        mark_seen(&records(&q.out), 2)
    })
    .await;
    q.stop().await;
    let all = records(&tmp.path().join("out.jsonl"));
    check_parts(&all, &[1, 2]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_logged_by_a_new_primary_after_failover_is_followed() {
    let (cluster, client) = cluster(ServerVersion::V7_0).await;
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n",
    );
    cluster.hold_txn_decisions(true);
    let c = client.clone();
    let pending = tokio::spawn(async move { transfer(&c, 5).await });
    let old = cluster.primary_of("shard02").unwrap();
    wait_until(20, "shard02's prepare entry", || {
        cluster.oplog_snapshot(old).iter().any(|raw| {
            Document::try_from(raw.as_ref())
                .ok()
                .and_then(|d| d.get_document("o").ok().cloned())
                .is_some_and(|o| o.get_bool("prepare").unwrap_or(false))
        })
    })
    .await;
    cluster.step_down("shard02").await.unwrap();
    wait_until(20, "a new shard02 primary", || {
        cluster.primary_of("shard02").is_some_and(|p| p != old)
    })
    .await;
    cluster.hold_txn_decisions(false);
    pending.await.unwrap().unwrap();
    mark(&client, 1).await;
    wait_until(30, "the marks", || mark_seen(&records(&q.out), 1)).await;
    q.stop().await;

    let recs = records(&tmp.path().join("out.jsonl"));
    check_parts(&recs, &[5]);
    let part = ledger(&recs)
        .into_iter()
        .find(|r| r["shard"] == "shard02" && r["txn"].is_object())
        .unwrap();
    let prepare_term = cluster
        .oplog_snapshot(old)
        .iter()
        .filter_map(|raw| Document::try_from(raw.as_ref()).ok())
        .find(|d| {
            d.get_document("o")
                .is_ok_and(|o| o.get_bool("prepare").unwrap_or(false))
        })
        .unwrap()
        .get_i64("t")
        .unwrap();
    assert!(
        part["id"]["t"].as_i64().unwrap() > prepare_term,
        "the part is emitted at the commit entry of the new term: {part}"
    );
    cluster.shutdown().await;
}

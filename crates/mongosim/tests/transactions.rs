//! Distributed transactions through mongos, driven by the official Rust `mongodb` driver:
//! the two-phase commit's oplog entries on every participant and on the coordinator, as
//! mongod writes them (see `world/prepared.rs` and `commands/two_phase.rs` for the server
//! source each shape comes from). Every wait is on a condition with a bounded deadline.

use std::net::SocketAddr;
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use futures::StreamExt;
use mongodb::error::ErrorKind;
use mongodb::Client;
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

async fn cluster(version: ServerVersion) -> (Cluster, Client) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        nodes_per_shard: 3,
        version,
        noop_interval: Duration::from_secs(3600),
        election_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let mongos = Client::with_uri_str(format!("{}?serverSelectionTimeoutMS=5000", cluster.uri()))
        .await
        .unwrap();
    (cluster, mongos)
}

fn entries(cluster: &Cluster, addr: SocketAddr) -> Vec<Document> {
    cluster
        .oplog_snapshot(addr)
        .iter()
        .map(|r: &RawDocumentBuf| Document::try_from(r.as_ref()).unwrap())
        .collect()
}

fn o(e: &Document) -> Document {
    e.get_document("o").cloned().unwrap_or_default()
}

fn is_prepare(e: &Document) -> bool {
    o(e).get_bool("prepare").unwrap_or(false)
}

fn is_commit(e: &Document) -> bool {
    o(e).contains_key("commitTransaction")
}

fn is_abort(e: &Document) -> bool {
    o(e).contains_key("abortTransaction")
}

fn on_coordinators(e: &Document) -> bool {
    e.get_str("ns").ok() == Some("config.transaction_coordinators")
}

fn prev_ts(e: &Document) -> Timestamp {
    e.get_document("prevOpTime")
        .unwrap()
        .get_timestamp("ts")
        .unwrap()
}

fn inner_ids(e: &Document) -> Vec<Bson> {
    o(e).get_array("applyOps")
        .unwrap()
        .iter()
        .map(|op| {
            let op = op.as_document().unwrap();
            op.get_document("o")
                .ok()
                .and_then(|d| d.get("_id").cloned())
                .or_else(|| {
                    op.get_document("o2")
                        .ok()
                        .and_then(|d| d.get("_id").cloned())
                })
                .unwrap()
        })
        .collect()
}

async fn ids_visible(mongos: &Client) -> Vec<i32> {
    let mut ids: Vec<i32> = mongos
        .database("test")
        .collection::<Document>("c")
        .find(doc! {})
        .await
        .unwrap()
        .map(|d| d.unwrap().get_i32("_id").unwrap())
        .collect()
        .await;
    ids.sort_unstable();
    ids
}

/// Waits until `cond` holds on the oplog of `addr`.
async fn wait_oplog(
    cluster: &Cluster,
    addr: SocketAddr,
    what: &str,
    cond: impl Fn(&[Document]) -> bool,
) {
    let start = Instant::now();
    loop {
        if cond(&entries(cluster, addr)) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what} on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_transaction_on_two_shards_commits_with_two_phase_commit() {
    for version in [ServerVersion::V4_4, ServerVersion::V7_0] {
        let (cluster, mongos) = cluster(version).await;
        let coll = mongos.database("test").collection::<Document>("c");
        // _id < 1000 lives on shard01, the rest on shard02.
        coll.insert_many([doc! {"_id": 5, "n": 0}, doc! {"_id": 1005, "n": 0}])
            .await
            .unwrap();
        let mut session = mongos.start_session().await.unwrap();
        session.start_transaction().await.unwrap();
        coll.insert_one(doc! {"_id": 1, "n": 1})
            .session(&mut session)
            .await
            .unwrap();
        coll.insert_one(doc! {"_id": 1001, "n": 1})
            .session(&mut session)
            .await
            .unwrap();
        coll.update_one(doc! {"_id": 1005}, doc! {"$set": {"n": 2}})
            .session(&mut session)
            .await
            .unwrap();
        assert_eq!(
            ids_visible(&mongos).await,
            vec![5, 1005],
            "uncommitted writes are invisible"
        );
        session.commit_transaction().await.unwrap();
        assert_eq!(ids_visible(&mongos).await, vec![1, 5, 1001, 1005]);

        let p1 = cluster.primary_of("shard01").unwrap();
        let p2 = cluster.primary_of("shard02").unwrap();
        let (e1, e2) = (entries(&cluster, p1), entries(&cluster, p2));

        // The coordinator (shard01, written first): participant list, decision, delete.
        let coord: Vec<&Document> = e1.iter().filter(|e| on_coordinators(e)).collect();
        let ops: Vec<&str> = coord.iter().map(|e| e.get_str("op").unwrap()).collect();
        assert_eq!(ops, ["i", "u", "d"], "{version}: {coord:#?}");
        let list = o(coord[0]);
        assert_eq!(
            list.get_array("participants").unwrap(),
            &vec![Bson::from("shard01"), Bson::from("shard02")]
        );
        let id = list.get_document("_id").unwrap();
        assert!(id.get_document("lsid").unwrap().contains_key("id"));
        assert!(id.get_i64("txnNumber").is_ok());
        let decision = o(coord[1]);
        let decision = decision.get_document("decision").unwrap();
        assert_eq!(decision.get_str("decision").unwrap(), "commit");
        let commit_ts = decision.get_timestamp("commitTimestamp").unwrap();

        // Each participant: a prepare entry, then the commit pointing at it, with the one
        // commit timestamp: the largest prepare timestamp.
        let mut prepare_ts = Vec::new();
        for (shard, log, want) in [
            ("shard01", &e1, vec![Bson::Int32(1)]),
            ("shard02", &e2, vec![Bson::Int32(1001), Bson::Int32(1005)]),
        ] {
            let prepares: Vec<&Document> = log.iter().filter(|e| is_prepare(e)).collect();
            let commits: Vec<&Document> = log.iter().filter(|e| is_commit(e)).collect();
            assert_eq!((prepares.len(), commits.len()), (1, 1), "{version} {shard}");
            let (prepare, commit) = (prepares[0], commits[0]);
            assert_eq!(prepare.get_str("ns").unwrap(), "admin.$cmd");
            assert_eq!(inner_ids(prepare), want, "{version} {shard}");
            assert!(prepare.get_document("lsid").is_ok());
            assert_eq!(
                o(commit).get_timestamp("commitTimestamp").unwrap(),
                commit_ts,
                "{version} {shard}"
            );
            assert_eq!(prev_ts(commit), prepare.get_timestamp("ts").unwrap());
            assert_eq!(
                commit.get_i64("txnNumber").unwrap(),
                prepare.get_i64("txnNumber").unwrap()
            );
            prepare_ts.push(prepare.get_timestamp("ts").unwrap());
        }
        assert_eq!(
            commit_ts,
            *prepare_ts
                .iter()
                .max_by_key(|t| (t.time, t.increment))
                .unwrap()
        );
        // Order on the coordinator: list < prepare < decision < commit < delete.
        let pos = |f: &dyn Fn(&Document) -> bool| e1.iter().position(f).unwrap();
        let (list_at, prep_at, commit_at) = (
            pos(&|e| on_coordinators(e)),
            pos(&is_prepare),
            pos(&is_commit),
        );
        let decision_at = pos(&|e| on_coordinators(e) && e.get_str("op").ok() == Some("u"));
        let delete_at = pos(&|e| on_coordinators(e) && e.get_str("op").ok() == Some("d"));
        assert!(
            list_at < prep_at
                && prep_at < decision_at
                && decision_at < commit_at
                && commit_at < delete_at
        );
        cluster.shutdown().await;
    }
}

#[tokio::test]
async fn a_prepared_transaction_commits_after_a_failover_in_a_later_term() {
    let (cluster, mongos) = cluster(ServerVersion::V7_0).await;
    cluster.hold_txn_decisions(true);
    let coll = mongos.database("test").collection::<Document>("c");
    let mut session = mongos.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 2})
        .session(&mut session)
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 1002})
        .session(&mut session)
        .await
        .unwrap();
    let commit = tokio::spawn(async move { session.commit_transaction().await });

    let old = cluster.primary_of("shard02").unwrap();
    wait_oplog(&cluster, old, "the prepare entry", |log| {
        log.iter().any(is_prepare)
    })
    .await;
    let prepare = entries(&cluster, old).into_iter().find(is_prepare).unwrap();
    // Prepared, undecided: invisible.
    assert_eq!(ids_visible(&mongos).await, Vec::<i32>::new());

    cluster.step_down("shard02").await.unwrap();
    let start = Instant::now();
    let new = loop {
        match cluster.primary_of("shard02") {
            Some(p) if p != old => break p,
            _ => {
                assert!(start.elapsed() < DEADLINE, "no new primary");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    cluster.hold_txn_decisions(false);
    commit.await.unwrap().unwrap();

    let log = entries(&cluster, new);
    let commit = log
        .iter()
        .find(|e| is_commit(e))
        .expect("commit on the new primary");
    assert!(
        commit.get_i64("t").unwrap() > prepare.get_i64("t").unwrap(),
        "the decision is logged in the new primary's term"
    );
    assert_eq!(prev_ts(commit), prepare.get_timestamp("ts").unwrap());
    assert_eq!(ids_visible(&mongos).await, vec![2, 1002]);
    cluster.shutdown().await;
}

#[tokio::test]
async fn an_abort_vote_aborts_the_prepared_participants() {
    let (cluster, mongos) = cluster(ServerVersion::V7_0).await;
    cluster.fail_next_prepare("shard02").unwrap();
    let coll = mongos.database("test").collection::<Document>("c");
    let mut session = mongos.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 3})
        .session(&mut session)
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 1003})
        .session(&mut session)
        .await
        .unwrap();
    let err = session.commit_transaction().await.unwrap_err();
    match err.kind.as_ref() {
        ErrorKind::Command(c) => assert_eq!(c.code, 251, "{c:?}"),
        other => panic!("expected NoSuchTransaction, got {other:?}"),
    }
    assert_eq!(ids_visible(&mongos).await, Vec::<i32>::new());

    let e1 = entries(&cluster, cluster.primary_of("shard01").unwrap());
    let e2 = entries(&cluster, cluster.primary_of("shard02").unwrap());
    let prepare = e1.iter().find(|e| is_prepare(e)).expect("shard01 prepared");
    let abort = e1.iter().find(|e| is_abort(e)).expect("shard01 aborted");
    assert_eq!(prev_ts(abort), prepare.get_timestamp("ts").unwrap());
    assert!(!e1.iter().any(is_commit));
    assert!(
        !e2.iter()
            .any(|e| e.get_str("ns").ok() == Some("admin.$cmd")),
        "the participant that voted abort logs nothing"
    );
    let decision = e1
        .iter()
        .find(|e| on_coordinators(e) && e.get_str("op").ok() == Some("u"))
        .unwrap();
    let decision = o(decision);
    let decision = decision.get_document("decision").unwrap();
    assert_eq!(decision.get_str("decision").unwrap(), "abort");
    assert_eq!(
        decision
            .get_document("abortStatus")
            .unwrap()
            .get_i32("code")
            .unwrap(),
        251
    );
    // Every member converges on the same data: nothing of the transaction.
    for m in cluster.shard_members("shard01") {
        let direct = Client::with_uri_str(format!(
            "mongodb://{m}/?directConnection=true&serverSelectionTimeoutMS=5000"
        ))
        .await
        .unwrap();
        let n = direct
            .database("test")
            .collection::<Document>("c")
            .find(doc! {"_id": 3})
            .await
            .unwrap()
            .count()
            .await;
        assert_eq!(n, 0, "{m}");
    }
    cluster.shutdown().await;
}

//! Point-in-time reads checked with the official Rust `mongodb` driver: `readConcern`
//! `snapshot` with and without `atClusterTime`, `majority`, the driver's snapshot sessions
//! (which reuse the `atClusterTime` the first reply names), `SnapshotTooOld` once the
//! history window has passed, and `setParameter minSnapshotHistoryWindowInSeconds`.
//! Expected answers are mongod's (see `world/history.rs` for the sources).

use std::net::SocketAddr;
use std::time::Duration;

use bson::{doc, Bson, Document, Timestamp};
use futures::StreamExt;
use mongodb::error::ErrorKind;
use mongodb::options::WriteConcern;
use mongodb::Client;
use mongosim::{Cluster, ClusterSpec, ReplicaSet, ReplicaSetSpec, ServerVersion};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

async fn direct(addr: SocketAddr) -> Client {
    Client::with_uri_str(format!(
        "mongodb://{addr}/?directConnection=true&serverSelectionTimeoutMS=5000"
    ))
    .await
    .unwrap()
}

fn code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

fn newest_ts(rs: &ReplicaSet, addr: SocketAddr) -> Timestamp {
    let log = rs.oplog_snapshot(addr);
    Document::try_from(log.last().unwrap().as_ref())
        .unwrap()
        .get_timestamp("ts")
        .unwrap()
}

/// `find` on `test.c` with a read concern, every batch drained: (`_id`, `v`) pairs sorted
/// by `_id`, and the reply's `cursor.atClusterTime`.
async fn read(
    client: &Client,
    read_concern: Document,
    batch_size: i32,
) -> mongodb::error::Result<(Vec<(i32, i32)>, Option<Timestamp>)> {
    let db = client.database("test");
    let reply = db
        .run_command(doc! {
            "find": "c", "batchSize": batch_size, "readConcern": read_concern,
            "$readPreference": {"mode": "primaryPreferred"},
        })
        .await?;
    let cursor = reply.get_document("cursor").unwrap();
    let at = cursor.get_timestamp("atClusterTime").ok();
    let mut docs: Vec<Document> = cursor
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().clone())
        .collect();
    let mut id = cursor.get_i64("id").unwrap();
    while id != 0 {
        let more = db
            .run_command(
                doc! {"getMore": id, "collection": "c", "batchSize": batch_size,
                "$readPreference": {"mode": "primaryPreferred"}},
            )
            .await?;
        let c = more.get_document("cursor").unwrap();
        docs.extend(
            c.get_array("nextBatch")
                .unwrap()
                .iter()
                .map(|d| d.as_document().unwrap().clone()),
        );
        id = c.get_i64("id").unwrap();
    }
    let mut out: Vec<(i32, i32)> = docs
        .iter()
        .map(|d| (d.get_i32("_id").unwrap(), d.get_i32("v").unwrap()))
        .collect();
    out.sort_unstable();
    Ok((out, at))
}

#[tokio::test]
async fn snapshot_and_majority_reads_see_the_data_as_of_their_time() {
    let rs = ReplicaSet::start(ReplicaSetSpec {
        nodes: 3,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=5000",
        rs.replica_set_uri("replset")
    ))
    .await
    .unwrap();
    let coll = client.database("test").collection_with_options::<Document>(
        "c",
        mongodb::options::CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build(),
    );
    coll.insert_many([doc! {"_id": 1, "v": 1}, doc! {"_id": 2, "v": 1}])
        .await
        .unwrap();
    let primary = rs.primary().unwrap();
    let t1 = newest_ts(&rs, primary);
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 2}).await.unwrap();
    coll.insert_one(doc! {"_id": 3, "v": 1}).await.unwrap();

    let at_t1 = doc! {"level": "snapshot", "atClusterTime": t1};
    let before = vec![(1, 1), (2, 1)];
    let now = vec![(1, 2), (3, 1)];
    // On the primary and on a secondary, in batches of one: the cursor keeps its time.
    let secondary = rs.members().into_iter().find(|a| *a != primary).unwrap();
    for addr in [primary, secondary] {
        let c = direct(addr).await;
        let (docs, at) = read(&c, at_t1.clone(), 1).await.unwrap();
        assert_eq!(docs, before, "{addr}");
        assert_eq!(at, Some(t1), "{addr}: the reply names the read time");
    }
    let (docs, at) = read(&client, doc! {"level": "majority"}, 10).await.unwrap();
    assert_eq!(docs, now);
    assert_eq!(at, None, "only snapshot reads name atClusterTime");
    let (docs, at) = read(&client, doc! {"level": "snapshot"}, 10).await.unwrap();
    assert_eq!(docs, now);
    assert!(at.is_some_and(|t| (t.time, t.increment) >= (t1.time, t1.increment)));

    // A time the node has not reached: InvalidOptions.
    let future = Timestamp {
        time: t1.time + 3600,
        increment: 1,
    };
    let err = read(
        &client,
        doc! {"level": "snapshot", "atClusterTime": future},
        10,
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(72), "{err}");

    // The driver's snapshot session: the first read picks the time, later reads reuse it.
    let mut session = client.start_session().snapshot(true).await.unwrap();
    let first: Vec<Document> = coll
        .find(doc! {})
        .session(&mut session)
        .await
        .unwrap()
        .stream(&mut session)
        .map(|d| d.unwrap())
        .collect()
        .await;
    assert_eq!(first.len(), 2);
    assert!(
        session.snapshot_time().is_some(),
        "the driver read atClusterTime"
    );
    coll.insert_one(doc! {"_id": 4, "v": 1}).await.unwrap();
    let again: Vec<Document> = coll
        .find(doc! {})
        .session(&mut session)
        .await
        .unwrap()
        .stream(&mut session)
        .map(|d| d.unwrap())
        .collect()
        .await;
    assert_eq!(again, first, "a snapshot session reads at one time");

    // History older than the window is gone: SnapshotTooOld.
    let was = client
        .database("admin")
        .run_command(doc! {"setParameter": 1, "minSnapshotHistoryWindowInSeconds": 0})
        .await
        .unwrap();
    assert_eq!(was.get_i32("was").unwrap(), 300);
    let start = Instant::now();
    loop {
        // Writes in a later second move the commit point, and the window with it, past t1.
        coll.insert_one(doc! {"v": 0}).await.unwrap();
        match read(&client, at_t1.clone(), 10).await {
            Err(e) if code(&e) == Some(239) => break,
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => {
                assert!(
                    start.elapsed() < DEADLINE,
                    "t1 never fell out of the window"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let err = client
        .database("admin")
        .run_command(doc! {"setParameter": 1, "noSuchParameter": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(72));
    rs.shutdown().await;
}

#[tokio::test]
async fn a_distributed_transaction_is_visible_from_its_commit_timestamp() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        nodes_per_shard: 3,
        version: ServerVersion::V7_0,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let mongos = Client::with_uri_str(format!("{}?serverSelectionTimeoutMS=5000", cluster.uri()))
        .await
        .unwrap();
    let coll = mongos.database("test").collection::<Document>("c");
    let mut session = mongos.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 7, "v": 1})
        .session(&mut session)
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 1007, "v": 1})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    let p1 = cluster.primary_of("shard01").unwrap();
    let entries: Vec<Document> = cluster
        .oplog_snapshot(p1)
        .iter()
        .map(|r| Document::try_from(r.as_ref()).unwrap())
        .collect();
    let commit_ts = entries
        .iter()
        .find_map(|e| {
            e.get_document("o")
                .ok()
                .and_then(|o| o.get_timestamp("commitTimestamp").ok())
        })
        .unwrap();
    let prepare_ts = entries
        .iter()
        .find(|e| {
            e.get_document("o")
                .is_ok_and(|o| o.get_bool("prepare").unwrap_or(false))
        })
        .unwrap()
        .get_timestamp("ts")
        .unwrap();
    let shard = direct(p1).await;
    let just_before = Timestamp {
        time: prepare_ts.time,
        increment: prepare_ts.increment - 1,
    };
    for (at, want) in [(just_before, vec![]), (commit_ts, vec![(7, 1)])] {
        let (docs, _) = read(&shard, doc! {"level": "snapshot", "atClusterTime": at}, 10)
            .await
            .unwrap();
        assert_eq!(docs, want, "at {at:?}");
    }
    assert!(matches!(
        coll.find_one(doc! {"_id": 7})
            .await
            .unwrap()
            .and_then(|d| d.get("v").cloned()),
        Some(Bson::Int32(1))
    ));
    cluster.shutdown().await;
}

#[tokio::test]
async fn migrations_keep_chunk_history_and_deferred_range_deletion_leaves_orphans() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        nodes_per_shard: 3,
        version: ServerVersion::V7_0,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let mongos = Client::with_uri_str(format!("{}?serverSelectionTimeoutMS=5000", cluster.uri()))
        .await
        .unwrap();
    let coll = mongos.database("test").collection::<Document>("c");
    coll.insert_many((1..=5).map(|i| doc! {"_id": i, "v": 1}))
        .await
        .unwrap();
    let chunk_of_1 = |chunks: &[Document]| -> Document {
        chunks
            .iter()
            .find(|c| {
                c.get_str("ns").ok() == Some("test.c")
                    && c.get_document("min").unwrap().get("_id") == Some(&Bson::MinKey)
            })
            .unwrap()
            .clone()
    };
    let read_chunks = || async {
        mongos
            .database("config")
            .collection::<Document>("chunks")
            .find(doc! {})
            .await
            .unwrap()
            .map(|d| d.unwrap())
            .collect::<Vec<_>>()
            .await
    };
    let before = chunk_of_1(&read_chunks().await);
    let history = before.get_array("history").unwrap();
    assert_eq!(history.len(), 1);
    let first = history[0].as_document().unwrap();
    assert_eq!(first.get_str("shard").unwrap(), "shard01");
    assert_eq!(
        before.get_timestamp("onCurrentShardSince").unwrap(),
        first.get_timestamp("validAfter").unwrap()
    );

    cluster.defer_range_deletion(true).unwrap();
    cluster.move_chunk("test.c", 1, "shard02").await.unwrap();
    let after = chunk_of_1(&read_chunks().await);
    let history = after.get_array("history").unwrap();
    assert_eq!(history.len(), 2, "{after}");
    let moved = history[0].as_document().unwrap();
    assert_eq!(moved.get_str("shard").unwrap(), "shard02");
    let valid_after = moved.get_timestamp("validAfter").unwrap();
    // Causality: every cloned write on the recipient comes before the commit.
    let p2 = cluster.primary_of("shard02").unwrap();
    let clones: Vec<Timestamp> = cluster
        .oplog_snapshot(p2)
        .iter()
        .map(|r| Document::try_from(r.as_ref()).unwrap())
        .filter(|e| e.get_bool("fromMigrate").unwrap_or(false) && e.get_str("op").ok() == Some("i"))
        .map(|e| e.get_timestamp("ts").unwrap())
        .collect();
    assert_eq!(clones.len(), 5);
    assert!(clones
        .iter()
        .all(|t| (t.time, t.increment) < (valid_after.time, valid_after.increment)));

    // The donor keeps its copies (orphans) until the range deleter runs; mongos filters them.
    let p1 = cluster.primary_of("shard01").unwrap();
    let donor = direct(p1).await;
    let orphans = donor
        .database("test")
        .collection::<Document>("c")
        .find(doc! {})
        .await
        .unwrap()
        .count()
        .await;
    assert_eq!(orphans, 5);
    let routed = coll.find(doc! {}).await.unwrap().count().await;
    assert_eq!(routed, 5, "each document once through mongos");

    cluster.defer_range_deletion(false).unwrap();
    let deletes: Vec<Timestamp> = cluster
        .oplog_snapshot(p1)
        .iter()
        .map(|r| Document::try_from(r.as_ref()).unwrap())
        .filter(|e| e.get_bool("fromMigrate").unwrap_or(false) && e.get_str("op").ok() == Some("d"))
        .map(|e| e.get_timestamp("ts").unwrap())
        .collect();
    assert_eq!(deletes.len(), 5);
    assert!(deletes
        .iter()
        .all(|t| (t.time, t.increment) > (valid_after.time, valid_after.increment)));
    let left = donor
        .database("test")
        .collection::<Document>("c")
        .find(doc! {})
        .await
        .unwrap()
        .count()
        .await;
    assert_eq!(left, 0);
    cluster.shutdown().await;
}

/// Through mongos, `readConcern majority` reads each shard's majority committed snapshot,
/// and `afterClusterTime` (a causally consistent session's read, as a change stream's
/// update lookup makes it) waits until the shard's snapshot reaches that time: mongos
/// passes the read concern to the shards it targets, which wait as a member does.
#[tokio::test]
async fn majority_reads_through_mongos_see_and_wait_for_the_shards_snapshot() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!(
        "mongodb://{}/?serverSelectionTimeoutMS=5000",
        cluster.mongos_addr()
    ))
    .await
    .unwrap();
    let coll = client.database("test").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "v": 1})
        .write_concern(WriteConcern::majority())
        .await
        .unwrap();
    // The shard holding _id 1 (the simulator splits at 1000) stops replicating.
    let shard = cluster.shard_names()[0].clone();
    let primary = cluster.primary_of(&shard).unwrap();
    let secondaries: Vec<SocketAddr> = cluster
        .shard_members(&shard)
        .into_iter()
        .filter(|a| *a != primary)
        .collect();
    for s in &secondaries {
        cluster.block_replication(*s, true).unwrap();
    }
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .write_concern(WriteConcern::nodes(1))
        .await
        .unwrap();
    let log = cluster.oplog_snapshot(primary);
    let update_ts = Document::try_from(log.last().unwrap().as_ref())
        .unwrap()
        .get_timestamp("ts")
        .unwrap();
    let v = |d: Option<Document>| d.and_then(|d| d.get_i32("v").ok());
    let majority = mongodb::options::ReadConcern::majority();
    assert_eq!(
        v(coll
            .find_one(doc! {"_id": 1})
            .read_concern(majority.clone())
            .await
            .unwrap()),
        Some(1),
        "the update is not majority committed"
    );
    assert_eq!(
        v(coll.find_one(doc! {"_id": 1}).await.unwrap()),
        Some(2),
        "a local read sees it"
    );
    let after = |client: Client, coll: mongodb::Collection<Document>, ms: u64| async move {
        let mut session = client.start_session().causal_consistency(true).await?;
        session.advance_operation_time(update_ts);
        coll.find_one(doc! {"_id": 1})
            .read_concern(mongodb::options::ReadConcern::majority())
            .max_time(Duration::from_millis(ms))
            .session(&mut session)
            .await
    };
    let e = after(client.clone(), coll.clone(), 300).await.unwrap_err();
    assert_eq!(code(&e), Some(50), "waits for the snapshot: {e}");
    let waiting = tokio::spawn(after(client.clone(), coll.clone(), 20_000));
    for s in &secondaries {
        cluster.block_replication(*s, false).unwrap();
    }
    let d = tokio::time::timeout(DEADLINE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(v(d), Some(2));
    cluster.shutdown().await;
}

/// A point-in-time read by `_id` (`{_id: {$in: [...]}}`, or one value) sees exactly what a
/// read of the whole collection at that time sees for those documents, each once.
#[tokio::test]
async fn reads_by_id_see_the_same_history() {
    let rs = ReplicaSet::start(ReplicaSetSpec {
        nodes: 3,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=5000",
        rs.replica_set_uri("replset")
    ))
    .await
    .unwrap();
    let coll = client.database("test").collection::<Document>("c");
    coll.insert_many([doc! {"_id": 1, "v": 1}, doc! {"_id": 2, "v": 1}])
        .write_concern(WriteConcern::majority())
        .await
        .unwrap();
    let t1 = newest_ts(&rs, rs.primary().unwrap());
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .write_concern(WriteConcern::majority())
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 2})
        .write_concern(WriteConcern::majority())
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 3, "v": 1})
        .write_concern(WriteConcern::majority())
        .await
        .unwrap();
    let read = |filter: Document, rc: Document| {
        let db = client.database("test");
        async move {
            let reply = db
                .run_command(doc! {"find": "c", "filter": filter, "readConcern": rc})
                .await
                .unwrap();
            let mut got: Vec<(i32, i32)> = reply
                .get_document("cursor")
                .unwrap()
                .get_array("firstBatch")
                .unwrap()
                .iter()
                .map(|d| {
                    let d = d.as_document().unwrap();
                    (d.get_i32("_id").unwrap(), d.get_i32("v").unwrap())
                })
                .collect();
            got.sort_unstable();
            got
        }
    };
    let ids = doc! {"_id": {"$in": [1, 2, 3, 1.0]}};
    let at_t1 = doc! {"level": "snapshot", "atClusterTime": t1};
    assert_eq!(read(ids.clone(), at_t1.clone()).await, vec![(1, 1), (2, 1)]);
    assert_eq!(read(doc! {"_id": 2}, at_t1).await, vec![(2, 1)]);
    assert_eq!(
        read(ids.clone(), doc! {"level": "majority"}).await,
        vec![(1, 2), (3, 1)]
    );
    assert_eq!(
        read(ids, doc! {"level": "local"}).await,
        vec![(1, 2), (3, 1)]
    );
}

/// `count` on a member (what `estimatedDocumentCount` sends): the collection's size, with
/// a query the matching documents, skip and limit applied; refused through mongos.
#[tokio::test]
async fn count_on_a_member_answers_the_collection_size() {
    let rs = ReplicaSet::start(ReplicaSetSpec {
        nodes: 1,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = direct(rs.members()[0]).await;
    let coll = client.database("test").collection::<Document>("c");
    coll.insert_many((0..25).map(|i| doc! {"_id": i, "even": i % 2 == 0}))
        .await
        .unwrap();
    assert_eq!(coll.estimated_document_count().await.unwrap(), 25);
    let n = |cmd: Document| {
        let db = client.database("test");
        async move { db.run_command(cmd).await.unwrap().get("n").cloned() }
    };
    assert_eq!(
        n(doc! {"count": "c", "query": {"even": true}}).await,
        Some(Bson::Int32(13))
    );
    assert_eq!(
        n(doc! {"count": "c", "skip": 20_i64, "limit": 3}).await,
        Some(Bson::Int32(3))
    );
    assert_eq!(n(doc! {"count": "nothing"}).await, Some(Bson::Int32(0)));
    rs.shutdown().await;
}

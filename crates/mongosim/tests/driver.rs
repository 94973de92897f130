//! mongosim checked against a client nobody here wrote: the official Rust `mongodb` driver.
//! Every wait is on a condition with a bounded deadline; nothing sleeps to hide a race.

use std::net::SocketAddr;
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use futures::StreamExt;
use mongodb::error::ErrorKind;
use mongodb::options::CursorType;
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

fn quiet_rs(nodes: usize) -> ReplicaSetSpec {
    ReplicaSetSpec {
        nodes,
        noop_interval: Duration::from_secs(3600),
        election_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

fn raw_to_doc(r: &RawDocumentBuf) -> Document {
    Document::try_from(r.as_ref()).unwrap()
}

#[tokio::test]
async fn hello_on_each_member_reports_me_and_roles() {
    let rs = ReplicaSet::start(quiet_rs(3)).await.unwrap();
    let members = rs.members();
    for (i, addr) in members.iter().enumerate() {
        let c = direct(*addr).await;
        let hello = c
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .unwrap();
        assert_eq!(hello.get_str("me").unwrap(), addr.to_string());
        assert_eq!(hello.get_str("setName").unwrap(), "replset");
        assert_eq!(hello.get_bool("isWritablePrimary").unwrap(), i == 0);
        assert_eq!(hello.get_bool("secondary").unwrap(), i != 0);
        assert_eq!(hello.get_i32("maxWireVersion").unwrap(), 21);
        assert!(hello.get("topologyVersion").is_none());
        assert_eq!(hello.contains_key("electionId"), i == 0);
        let legacy = c
            .database("admin")
            .run_command(doc! {"isMaster": 1})
            .await
            .unwrap();
        assert_eq!(legacy.get_bool("ismaster").unwrap(), i == 0);
    }
    let status = direct(members[1])
        .await
        .database("admin")
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    assert_eq!(status.get_i32("myState").unwrap(), 2);
    assert_eq!(status.get_array("members").unwrap().len(), 3);
    let err = direct(members[0])
        .await
        .database("admin")
        .run_command(doc! {"frobnicate": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(59));
    rs.shutdown().await;
}

#[tokio::test]
async fn tailable_await_raw_batches_on_a_secondary() {
    let rs = ReplicaSet::start(quiet_rs(3)).await.unwrap();
    let members = rs.members();
    let primary = direct(members[0]).await;
    let secondary = direct(members[2]).await;
    let oplog = secondary
        .database("local")
        .collection::<Document>("oplog.rs");
    let mut cursor = oplog
        .find(doc! {"fromMigrate": {"$exists": false}})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(100))
        .batch()
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut empty_batches = 0;
    let coll = primary.database("test").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "x": "a"}).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !seen
        .iter()
        .any(|d: &Document| d.get_str("op").ok() == Some("i"))
        || empty_batches == 0
    {
        assert!(Instant::now() < deadline, "no insert seen: {seen:?}");
        let batch = cursor.next().await.unwrap().unwrap();
        let docs = batch.doc_slices().unwrap();
        let mut n = 0;
        for d in docs {
            let d = d.unwrap();
            let d = d.as_document().unwrap();
            seen.push(Document::try_from(d).unwrap());
            n += 1;
        }
        if n == 0 {
            empty_batches += 1;
        }
    }
    let first = &seen[0];
    assert_eq!(
        first.get_document("o").unwrap().get_str("msg").unwrap(),
        "initiating set"
    );
    let insert = seen
        .iter()
        .find(|d| d.get_str("op").ok() == Some("i"))
        .unwrap();
    let keys: Vec<&str> = insert.keys().map(String::as_str).collect();
    // The driver's insert is a retryable write: mongod logs the session fields around the
    // operation (OperationSessionInfo first, stmtId after o2, prevOpTime after wall).
    assert_eq!(
        keys,
        [
            "lsid",
            "txnNumber",
            "op",
            "ns",
            "ui",
            "o",
            "o2",
            "stmtId",
            "ts",
            "t",
            "v",
            "wall",
            "prevOpTime"
        ]
    );
    assert_eq!(insert.get_document("o2").unwrap(), &doc! {"_id": 1});
    let lsid = insert.get_document("lsid").unwrap();
    assert!(
        matches!(lsid.get("id"), Some(Bson::Binary(b)) if b.subtype == bson::spec::BinarySubtype::Uuid)
    );
    assert!(matches!(lsid.get("uid"), Some(Bson::Binary(b)) if b.bytes.len() == 32));
    assert!(matches!(insert.get("txnNumber"), Some(Bson::Int64(_))));
    assert_eq!(insert.get_i32("stmtId").unwrap(), 0);
    assert_eq!(
        insert.get_document("prevOpTime").unwrap(),
        &doc! {"ts": Timestamp { time: 0, increment: 0 }, "t": -1i64}
    );
    assert_eq!(insert.get_str("ns").unwrap(), "test.c");
    assert!(matches!(insert.get("t"), Some(Bson::Int64(1))));
    assert!(matches!(insert.get("v"), Some(Bson::Int64(2))));
    assert!(
        matches!(insert.get("ui"), Some(Bson::Binary(b)) if b.subtype == bson::spec::BinarySubtype::Uuid)
    );
    rs.shutdown().await;
}

#[tokio::test]
async fn normal_tailable_cursor_and_secondary_refuses_writes() {
    let rs = ReplicaSet::start(quiet_rs(3)).await.unwrap();
    let members = rs.members();
    let primary = direct(members[0]).await;
    let oplog = primary.database("local").collection::<Document>("oplog.rs");
    let start = Timestamp {
        time: 0,
        increment: 0,
    };
    let mut cursor = oplog
        .find(doc! {"ts": {"$gt": start}, "op": {"$in": ["i", "u", "d"]}})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap();
    let coll = primary.database("test").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 7}).await.unwrap();
    coll.update_one(doc! {"_id": 7}, doc! {"$set": {"y": 1}})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 7}).await.unwrap();
    let mut ops = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while ops.len() < 3 {
        let next = tokio::time::timeout_at(deadline, cursor.next())
            .await
            .expect("deadline");
        let d = next.unwrap().unwrap();
        ops.push(d.get_str("op").unwrap().to_owned());
        if d.get_str("op").ok() == Some("u") {
            assert_eq!(
                d.get_document("o").unwrap(),
                &doc! {"$v": 2, "diff": {"i": {"y": 1}}}
            );
            assert_eq!(d.get_document("o2").unwrap(), &doc! {"_id": 7});
        }
    }
    assert_eq!(ops, ["i", "u", "d"]);
    let err = direct(members[1])
        .await
        .database("test")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 8})
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(10107), "{err}");
    rs.shutdown().await;
}

#[tokio::test]
async fn replica_set_client_follows_an_election() {
    let rs = ReplicaSet::start(quiet_rs(3)).await.unwrap();
    let client = Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=10000",
        rs.replica_set_uri("replset")
    ))
    .await
    .unwrap();
    let coll = client.database("test").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let old = rs.primary().unwrap();
    rs.kill_node(old).await.unwrap();
    assert!(
        rs.wait_for(DEADLINE, |c| c
            .primary_of("replset")
            .is_some_and(|p| p != old))
            .await,
        "no new primary"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        match coll.insert_one(doc! {"_id": 2}).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "write never succeeded: {e}"),
        }
    }
    let new = rs.primary().unwrap();
    assert_ne!(new, old);
    let hello = direct(new)
        .await
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_str("primary").unwrap(), new.to_string());
    rs.restart_node(old).await.unwrap();
    assert!(
        rs.wait_for(DEADLINE, |c| c.oplog_snapshot(old).len()
            == c.oplog_snapshot(new).len())
            .await,
        "restarted node did not catch up"
    );
    let hello = direct(old)
        .await
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert!(hello.get_bool("secondary").unwrap());
    // The new term opened with a "new primary" no-op with a higher t.
    let last_noop = rs
        .oplog_snapshot(new)
        .iter()
        .map(raw_to_doc)
        .rfind(|d| {
            d.get_document("o").ok().and_then(|o| o.get_str("msg").ok()) == Some("new primary")
        })
        .unwrap();
    assert_eq!(last_noop.get_i64("t").unwrap(), 2);
    rs.shutdown().await;
}

#[tokio::test]
async fn rollback_kills_the_cursor_on_the_old_primary() {
    let rs = ReplicaSet::start(quiet_rs(3)).await.unwrap();
    let old = rs.primary().unwrap();
    let client = direct(old).await;
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let mut cursor = oplog
        .find(doc! {})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(100))
        .batch()
        .await
        .unwrap();
    rs.partition_node(old).await.unwrap();
    client
        .database("test")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": "lost"})
        .await
        .unwrap();
    assert!(
        rs.wait_for(DEADLINE, |c| c
            .primary_of("replset")
            .is_some_and(|p| p != old))
            .await,
        "no election"
    );
    rs.heal_node(old).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut saw_lost = false;
    let err = loop {
        assert!(Instant::now() < deadline, "cursor never failed");
        match cursor.next().await {
            Some(Ok(batch)) => {
                for d in batch.doc_slices().unwrap() {
                    let d = Document::try_from(d.unwrap().as_document().unwrap()).unwrap();
                    if d.get_document("o").ok().and_then(|o| o.get_str("_id").ok()) == Some("lost")
                    {
                        saw_lost = true;
                    }
                }
            }
            Some(Err(e)) => break e,
            None => panic!("cursor ended without an error"),
        }
    };
    assert!(
        saw_lost,
        "the un-replicated insert was visible on the old primary first"
    );
    assert!(matches!(code(&err), Some(11602) | Some(175)), "{err}");
    let rolled: Vec<Document> = rs
        .rolled_back_entries("replset")
        .iter()
        .map(raw_to_doc)
        .collect();
    assert!(rolled
        .iter()
        .any(|d| d.get_document("o").ok().and_then(|o| o.get_str("_id").ok()) == Some("lost")));
    let committed: Vec<Document> = rs
        .committed_entries("replset")
        .iter()
        .map(raw_to_doc)
        .collect();
    assert!(!committed.iter().any(|d| d
        .get_document("o")
        .ok()
        .and_then(|o| o.get_str("_id").ok())
        == Some("lost")));
    rs.shutdown().await;
}

#[tokio::test]
async fn capped_position_lost_and_fresh_find_from_oldest() {
    let mut spec = quiet_rs(1);
    spec.oplog_max_entries = Some(5);
    let rs = ReplicaSet::start(spec).await.unwrap();
    let addr = rs.members()[0];
    let client = direct(addr).await;
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let mut cursor = oplog
        .find(doc! {})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(50))
        .batch()
        .await
        .unwrap();
    let first = cursor.next().await.unwrap().unwrap();
    let first: Vec<Document> = first
        .doc_slices()
        .unwrap()
        .into_iter()
        .map(|d| Document::try_from(d.unwrap().as_document().unwrap()).unwrap())
        .collect();
    let oldest_ts = first[0].get_timestamp("ts").unwrap();
    let coll = client.database("test").collection::<Document>("c");
    for i in 0..10 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let err = loop {
        match cursor.next().await.unwrap() {
            Ok(b) => assert!(
                b.doc_slices().unwrap().into_iter().next().is_none(),
                "got data after rollover"
            ),
            Err(e) => break e,
        }
    };
    assert_eq!(code(&err), Some(136), "{err}");
    let fresh: Vec<Document> = oplog
        .find(doc! {"ts": {"$gte": oldest_ts}})
        .await
        .unwrap()
        .map(|d| d.unwrap())
        .collect()
        .await;
    assert_eq!(fresh.len(), 5);
    assert_ne!(fresh[0].get_timestamp("ts").unwrap(), oldest_ts);
    rs.shutdown().await;
}

#[tokio::test]
async fn sharded_writes_list_shards_and_migrations() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        nodes_per_shard: 3,
        version: ServerVersion::V6_0,
        noop_interval: Duration::from_secs(3600),
        election_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let mongos = Client::with_uri_str(format!("{}?serverSelectionTimeoutMS=5000", cluster.uri()))
        .await
        .unwrap();
    let hello = mongos
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_str("msg").unwrap(), "isdbgrid");
    let coll = mongos.database("test").collection::<Document>("c");
    let docs: Vec<Document> = [1, 3, 5, 1001, 1003]
        .iter()
        .map(|i| doc! {"_id": *i, "v": "x"})
        .collect();
    coll.insert_many(docs).await.unwrap();
    let all: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .map(|d| d.unwrap())
        .collect()
        .await;
    assert_eq!(all.len(), 5);
    let shards = mongos
        .database("admin")
        .run_command(doc! {"listShards": 1})
        .await
        .unwrap();
    let shards = shards.get_array("shards").unwrap();
    assert_eq!(shards.len(), 2);
    let s1 = shards[0].as_document().unwrap();
    assert_eq!(s1.get_str("_id").unwrap(), "shard01");
    let members: Vec<String> = cluster
        .shard_members("shard01")
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        s1.get_str("host").unwrap(),
        format!("shard01/{}", members.join(","))
    );
    let err = mongos
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(20));
    let cfg = direct(cluster.config_members()[0]).await;
    let hello = cfg
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_i32("configsvr").unwrap(), 2);
    let config_shards: Vec<Document> = cfg
        .database("config")
        .collection::<Document>("shards")
        .find(doc! {})
        .await
        .unwrap()
        .map(|d| d.unwrap())
        .collect()
        .await;
    assert_eq!(config_shards.len(), 2);

    let ops_of = |addr: SocketAddr| -> Vec<Document> {
        cluster
            .oplog_snapshot(addr)
            .iter()
            .map(raw_to_doc)
            .filter(|d| d.get_str("ns").ok() == Some("test.c"))
            .collect()
    };
    let p1 = cluster.primary_of("shard01").unwrap();
    let p2 = cluster.primary_of("shard02").unwrap();
    assert_eq!(ops_of(p1).len(), 3);
    assert_eq!(ops_of(p2).len(), 2);
    cluster.move_chunk("test.c", 1, "shard02").await.unwrap();
    let donor: Vec<Document> = ops_of(p1)
        .into_iter()
        .filter(|d| d.get_str("op").ok() == Some("d"))
        .collect();
    let recipient: Vec<Document> = ops_of(p2)
        .into_iter()
        .filter(|d| {
            d.get_str("op").ok() == Some("i") && d.get_bool("fromMigrate").ok() == Some(true)
        })
        .collect();
    assert_eq!(donor.len(), 3);
    assert!(donor
        .iter()
        .all(|d| d.get_bool("fromMigrate").ok() == Some(true)));
    assert_eq!(recipient.len(), 3);
    let all: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .map(|d| d.unwrap())
        .collect()
        .await;
    assert_eq!(all.len(), 5);

    let added = cluster.add_shard(3).await.unwrap();
    assert_eq!(added, "shard03");
    cluster.begin_remove_shard("shard02").await.unwrap();
    let shards = mongos
        .database("admin")
        .run_command(doc! {"listShards": 1})
        .await
        .unwrap();
    let draining = shards
        .get_array("shards")
        .unwrap()
        .iter()
        .find(|s| s.as_document().unwrap().get_str("_id").ok() == Some("shard02"))
        .unwrap()
        .as_document()
        .unwrap()
        .clone();
    assert!(draining.get_bool("draining").unwrap());
    cluster.remove_shard("shard02").await.unwrap();
    assert_eq!(cluster.shard_names(), ["shard01", "shard03"]);
    let all: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .map(|d| d.unwrap())
        .collect()
        .await;
    assert_eq!(all.len(), 5);
    cluster.shutdown().await;
}

#[tokio::test]
async fn fixture_entries_are_loaded_byte_faithfully() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"ts":{"$timestamp":{"t":1422998530,"i":1}},"h":{"$numberLong":"0"},"v":{"$numberInt":"2"},"op":"n","ns":"","o":{"msg":"initiating set"}}"#,
        r#"{"ts":{"$timestamp":{"t":1422998574,"i":1}},"h":{"$numberLong":"-6781014703318499311"},"v":{"$numberInt":"2"},"op":"i","ns":"test.mycollection","o":{"_id":{"$numberInt":"1"},"data":"hello"}}"#,
        r#"{"ts":{"$timestamp":{"t":1422998892,"i":1}},"h":{"$numberLong":"3056127588031004421"},"v":{"$numberInt":"2"},"op":"d","ns":"test.mycollection","fromMigrate":true,"o":{"_id":{"$numberInt":"1"}}}"#,
    ];
    std::fs::write(dir.path().join("shard01.oplog.jsonl"), lines.join("\n")).unwrap();
    std::fs::write(
        dir.path().join("fixture.toml"),
        "description = \"transcript\"\nserver_version = \"legacy\"\n[[shards]]\nname = \"shard01\"\nnodes = 3\noplog = \"shard01.oplog.jsonl\"\n",
    )
    .unwrap();
    let rs = Cluster::start_with_fixture(
        ClusterSpec {
            shards: 0,
            noop_interval: Duration::from_secs(3600),
            ..Default::default()
        },
        dir.path(),
    )
    .await
    .unwrap();
    let members = rs.shard_members("shard01");
    assert_eq!(members.len(), 3);
    for m in &members {
        let snapshot = rs.oplog_snapshot(*m);
        assert_eq!(snapshot.len(), 3);
        for (raw, line) in snapshot.iter().zip(lines) {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            let expected = bson::Document::try_from(json.as_object().unwrap().clone()).unwrap();
            assert_eq!(raw.as_bytes(), expected.to_vec().unwrap().as_slice());
        }
    }
    // Reading it back through the driver yields the same bytes.
    let client = direct(members[1]).await;
    let mut cursor = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {})
        .batch()
        .await
        .unwrap();
    let batch = cursor.next().await.unwrap().unwrap();
    let got: Vec<Vec<u8>> = batch
        .doc_slices()
        .unwrap()
        .into_iter()
        .map(|d| d.unwrap().as_document().unwrap().as_bytes().to_vec())
        .collect();
    let want: Vec<Vec<u8>> = rs
        .oplog_snapshot(members[1])
        .iter()
        .map(|r| r.as_bytes().to_vec())
        .collect();
    assert_eq!(got, want);
    // New writes continue after the last ts in the legacy shape.
    let primary = direct(members[0]).await;
    primary
        .database("test")
        .collection::<Document>("mycollection")
        .insert_one(doc! {"_id": 2})
        .await
        .unwrap();
    let last = raw_to_doc(rs.oplog_snapshot(members[0]).last().unwrap());
    assert!(last.get_i64("h").is_ok());
    assert!(last.get("t").is_none());
    assert!(last.get_timestamp("ts").unwrap().time > 1422998892);
    rs.shutdown().await;
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rs = ReplicaSet::start(quiet_rs(1)).await.unwrap();
    let addr = rs.members()[0];
    for garbage in [
        vec![0xffu8; 64],
        (49_000_000i32)
            .to_le_bytes()
            .iter()
            .chain([0u8; 12].iter())
            .copied()
            .collect(),
        vec![
            30, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xdd, 7, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9,
            9, 9,
        ],
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&garbage).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "connection should be closed without a reply");
    }
    let hello = direct(addr)
        .await
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_f64("ok").unwrap(), 1.0);
    rs.shutdown().await;
}

/// Every fixture in the repository's mlaunch-fixtures/ loads, and each member serves its
/// file's entries byte for byte; a diverged member stays partitioned until healed.
#[tokio::test]
async fn repository_fixtures_load_byte_faithfully() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mlaunch-fixtures");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return;
    };
    for dir in dirs.flatten() {
        let dir = dir.path();
        if !dir.join("fixture.toml").exists() {
            continue;
        }
        let fx = mongosim::fixture::read(&dir).unwrap();
        let cluster = Cluster::start_with_fixture(
            ClusterSpec {
                noop_interval: Duration::ZERO,
                ..Default::default()
            },
            &dir,
        )
        .await
        .unwrap();
        for shard in &fx.shards {
            let members = cluster.shard_members(&shard.name);
            assert_eq!(members.len(), shard.nodes.len(), "{}", dir.display());
            for (addr, entries) in members.iter().zip(&shard.nodes) {
                let got: Vec<Vec<u8>> = cluster
                    .oplog_snapshot(*addr)
                    .iter()
                    .map(|r| r.as_bytes().to_vec())
                    .collect();
                let want: Vec<Vec<u8>> = entries.iter().map(|d| d.to_vec().unwrap()).collect();
                assert_eq!(got, want, "{} {}", dir.display(), addr);
            }
        }
        // Heal everything: diverged members roll back to the primary's history.
        for shard in &fx.shards {
            for addr in cluster.shard_members(&shard.name) {
                cluster.heal_node(addr).await.unwrap();
            }
            let primary = cluster.shard_members(&shard.name)[shard.primary];
            let name = shard.name.clone();
            assert!(
                cluster
                    .wait_for(DEADLINE, |c| {
                        let want = c.oplog_snapshot(primary);
                        c.shard_members(&name)
                            .iter()
                            .all(|m| c.oplog_snapshot(*m) == want)
                    })
                    .await,
                "{} did not converge",
                dir.display()
            );
        }
        cluster.shutdown().await;
    }
}

#[tokio::test]
async fn write_concern_majority_waits_for_lagging_secondaries() {
    let mut spec = quiet_rs(3);
    spec.election_timeout = Duration::from_secs(3600);
    let rs = ReplicaSet::start(spec).await.unwrap();
    let members = rs.members();
    rs.set_lag(members[1], Duration::from_millis(200)).unwrap();
    rs.set_lag(members[2], Duration::from_millis(200)).unwrap();
    let client = direct(members[0]).await;
    let majority = mongodb::options::WriteConcern::majority();
    let coll = client.database("test").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1})
        .write_concern(majority)
        .await
        .unwrap();
    let last = raw_to_doc(rs.oplog_snapshot(members[0]).last().unwrap());
    let (commit_ts, _) = rs.commit_point("replset").unwrap();
    assert_eq!(
        commit_ts,
        last.get_timestamp("ts").unwrap(),
        "acknowledged before majority commit"
    );
    rs.partition_node(members[1]).await.unwrap();
    rs.partition_node(members[2]).await.unwrap();
    let wc = mongodb::options::WriteConcern::builder()
        .w(mongodb::options::Acknowledgment::Majority)
        .w_timeout(Duration::from_millis(200))
        .build();
    let err = coll
        .insert_one(doc! {"_id": 2})
        .write_concern(wc)
        .await
        .unwrap_err();
    match err.kind.as_ref() {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(wce)) => {
            assert_eq!(wce.code, 64)
        }
        other => panic!("expected a write concern error, got {other:?}"),
    }
    rs.shutdown().await;
}

#[tokio::test]
async fn control_command_kills_its_own_process_after_replying() {
    let rs = ReplicaSet::start(quiet_rs(3)).await.unwrap();
    let victim = rs.members()[2];
    let client = direct(victim).await;
    client
        .database("admin")
        .run_command(doc! {"mongosimControl": "killNode", "node": victim.to_string()})
        .await
        .unwrap();
    assert!(
        rs.wait_for(DEADLINE, |c| c
            .status()
            .iter()
            .any(|n| n.addr == victim.to_string() && !n.alive))
            .await
    );
    let other = direct(rs.members()[0]).await;
    other
        .database("admin")
        .run_command(doc! {"mongosimControl": "restartNode", "node": victim.to_string()})
        .await
        .unwrap();
    let status = other
        .database("admin")
        .run_command(doc! {"mongosimControl": "status"})
        .await
        .unwrap();
    let nodes = status.get_array("nodes").unwrap();
    assert!(nodes
        .iter()
        .all(|n| n.as_document().unwrap().get_bool("alive").unwrap()));
    rs.shutdown().await;
}

async fn read_frame(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let n = i32::from_le_bytes(len) as usize;
    let mut frame = len.to_vec();
    frame.resize(n, 0);
    s.read_exact(&mut frame[4..]).await.unwrap();
    frame
}

#[tokio::test]
async fn legacy_op_query_handshake_and_more_to_come() {
    use mongosim::codec;
    use tokio::io::AsyncWriteExt;
    let rs = ReplicaSet::start(quiet_rs(1)).await.unwrap();
    let addr = rs.members()[0];
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // OP_QUERY {isMaster: 1} on admin.$cmd, as pre-OP_MSG clients open a connection.
    let query = doc! {"isMaster": 1}.to_vec().unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&41i32.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&codec::OP_QUERY.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(b"admin.$cmd\0");
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&(-1i32).to_le_bytes());
    msg.extend_from_slice(&query);
    let len = msg.len() as i32;
    msg[..4].copy_from_slice(&len.to_le_bytes());
    s.write_all(&msg).await.unwrap();
    let reply = read_frame(&mut s).await;
    assert_eq!(
        i32::from_le_bytes(reply[8..12].try_into().unwrap()),
        41,
        "responseTo"
    );
    assert_eq!(
        i32::from_le_bytes(reply[12..16].try_into().unwrap()),
        codec::OP_REPLY
    );
    let doc = Document::from_reader(&reply[36..]).unwrap();
    assert!(doc.get_bool("ismaster").unwrap());
    assert_eq!(doc.get_str("me").unwrap(), addr.to_string());

    // An insert with moreToCome gets no reply; the next command's reply answers it alone.
    let insert = doc! {"insert": "c", "documents": [{"_id": 1}], "$db": "test"};
    s.write_all(&codec::encode_msg_request(
        50,
        codec::FLAG_MORE_TO_COME,
        &insert,
    ))
    .await
    .unwrap();
    let find = doc! {"find": "c", "filter": {}, "$db": "test"};
    s.write_all(&codec::encode_msg_request(
        51,
        codec::FLAG_CHECKSUM_PRESENT,
        &find,
    ))
    .await
    .unwrap();
    let reply = read_frame(&mut s).await;
    assert_eq!(i32::from_le_bytes(reply[8..12].try_into().unwrap()), 51);
    assert_eq!(
        u32::from_le_bytes(reply[16..20].try_into().unwrap()),
        0,
        "reply flags"
    );
    let doc = Document::from_reader(&reply[21..]).unwrap();
    let batch = doc
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert!(matches!(
        doc.get_document("cursor").unwrap().get("id"),
        Some(Bson::Int64(0))
    ));
    rs.shutdown().await;
}

#[tokio::test]
async fn in_process_commands_and_load() {
    let cluster = Cluster::start(ClusterSpec {
        noop_interval: Duration::ZERO,
        ..Default::default()
    })
    .await
    .unwrap();
    cluster
        .insert("test.c", vec![doc! {"_id": 1}, doc! {"_id": 2500}])
        .await
        .unwrap();
    // Without a session the entry has the plain shape.
    let p1 = cluster.primary_of("shard01").unwrap();
    let plain = cluster
        .oplog_snapshot(p1)
        .iter()
        .map(raw_to_doc)
        .find(|d| d.get_str("op").ok() == Some("i"))
        .unwrap();
    let keys: Vec<&str> = plain.keys().map(String::as_str).collect();
    assert_eq!(keys, ["op", "ns", "ui", "o", "o2", "ts", "t", "v", "wall"]);
    let dup = cluster
        .insert("test.c", vec![doc! {"_id": 1}])
        .await
        .unwrap_err();
    assert!(dup.to_string().contains("11000"), "{dup}");
    let reply = cluster
        .command(
            cluster.mongos_addr(),
            doc! {"find": "c", "filter": {}, "$db": "test"},
        )
        .await;
    let batch = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(batch.len(), 2);
    // A retried retryable write (same lsid, txnNumber) is not executed twice.
    let lsid = doc! {"id": bson::Uuid::new()};
    let retryable = doc! {
        "insert": "c", "documents": [{"_id": 3}], "lsid": lsid, "txnNumber": 5i64, "$db": "test",
    };
    for _ in 0..2 {
        let reply = cluster
            .command(cluster.mongos_addr(), retryable.clone())
            .await;
        assert_eq!(reply.get_i32("n").unwrap(), 1, "{reply}");
        assert!(reply.get("writeErrors").is_none(), "{reply}");
    }
    let inserts_of_3 = cluster
        .oplog_snapshot(p1)
        .iter()
        .map(raw_to_doc)
        .filter(|d| d.get_document("o").ok().and_then(|o| o.get_i32("_id").ok()) == Some(3))
        .count();
    assert_eq!(inserts_of_3, 1);
    let secondary = cluster.shard_members("shard02")[1];
    let refused = cluster
        .command(secondary, doc! {"find": "c", "$db": "test"})
        .await;
    assert_eq!(refused.get_i32("code").unwrap(), 13435);
    cluster.shutdown().await;
}

#[tokio::test]
async fn transactions_are_logged_as_apply_ops() {
    let mut spec = quiet_rs(3);
    spec.max_txn_ops_per_entry = Some(2);
    let rs = ReplicaSet::start(spec).await.unwrap();
    let client = Client::with_uri_str(format!(
        "{}&serverSelectionTimeoutMS=5000",
        rs.replica_set_uri("replset")
    ))
    .await
    .unwrap();
    let coll = client.database("test").collection::<Document>("t");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 2})
        .session(&mut session)
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 0}, doc! {"$set": {"x": 1}})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 99})
        .session(&mut session)
        .await
        .unwrap();
    session.abort_transaction().await.unwrap();

    let primary = rs.primary().unwrap();
    let txn_entries: Vec<Document> = rs
        .oplog_snapshot(primary)
        .iter()
        .map(raw_to_doc)
        .filter(|d| d.get_str("ns").ok() == Some("admin.$cmd"))
        .collect();
    assert_eq!(txn_entries.len(), 2, "{txn_entries:#?}");
    let (first, last) = (&txn_entries[0], &txn_entries[1]);
    assert_eq!(first.get_str("op").unwrap(), "c");
    assert!(first.get_document("lsid").is_ok());
    assert!(first
        .get_document("o")
        .unwrap()
        .get_bool("partialTxn")
        .unwrap());
    assert_eq!(
        first
            .get_document("o")
            .unwrap()
            .get_array("applyOps")
            .unwrap()
            .len(),
        2
    );
    assert_eq!(last.get_document("o").unwrap().get_i64("count").unwrap(), 3);
    assert_eq!(
        last.get_document("prevOpTime")
            .unwrap()
            .get_timestamp("ts")
            .unwrap(),
        first.get_timestamp("ts").unwrap()
    );
    let inner = last
        .get_document("o")
        .unwrap()
        .get_array("applyOps")
        .unwrap();
    assert_eq!(inner[0].as_document().unwrap().get_str("op").unwrap(), "u");
    // Committed data is visible; the aborted insert is not.
    let ids: Vec<Bson> = coll
        .find(doc! {})
        .await
        .unwrap()
        .map(|d| d.unwrap().get("_id").cloned().unwrap())
        .collect()
        .await;
    assert_eq!(ids, [Bson::Int32(0), Bson::Int32(1), Bson::Int32(2)]);
    rs.shutdown().await;
}

/// What tailers probe with: the newest entries by a reverse natural scan (with a filter,
/// a limit and an identity projection), and the oldest by a forward one.
#[tokio::test]
async fn reverse_natural_scan_returns_the_newest_entries_first() {
    let rs = ReplicaSet::start(quiet_rs(1)).await.unwrap();
    let client = direct(rs.members()[0]).await;
    let coll = client.database("test").collection::<Document>("c");
    for i in 0..5 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let all: Vec<Document> = oplog
        .find(doc! {})
        .sort(doc! {"$natural": 1})
        .await
        .unwrap()
        .map(|d| d.unwrap())
        .collect()
        .await;
    let newest: Vec<Document> = oplog
        .find(doc! {"op": "i"})
        .sort(doc! {"$natural": -1})
        .limit(2)
        .projection(doc! {"ts": 1, "t": 1, "h": 1})
        .await
        .unwrap()
        .map(|d| d.unwrap())
        .collect()
        .await;
    let inserts: Vec<&Document> = all
        .iter()
        .filter(|d| d.get_str("op").ok() == Some("i"))
        .collect();
    assert_eq!(newest.len(), 2);
    for (got, want) in newest.iter().zip(inserts.iter().rev()) {
        assert_eq!(got.get("ts"), want.get("ts"));
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["ts", "t"], "{got}");
    }
    let oldest = oplog
        .find(doc! {})
        .sort(doc! {"$natural": 1})
        .limit(1)
        .await
        .unwrap()
        .map(|d| d.unwrap())
        .collect::<Vec<_>>()
        .await;
    assert_eq!(oldest.first(), all.first());
}

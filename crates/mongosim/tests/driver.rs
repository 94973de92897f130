//! mongosim checked against a client nobody here wrote: the official Rust `mongodb` driver.
//! Every wait is on a condition with a bounded deadline; nothing sleeps to hide a race.

use std::net::SocketAddr;
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use futures::StreamExt;
use mongodb::error::ErrorKind;
use mongodb::options::CursorType;
use mongodb::Client;
use mongosim::{Cluster, ClusterSpec, ReplicaSet, ReplicaSetSpec, ServerVersion, SimRole, SimUser};
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
    // The old primary's own cursor sees the un-replicated insert while it is isolated
    // (read before the heal: the rollback after the heal would kill the cursor first).
    let deadline = Instant::now() + DEADLINE;
    let mut saw_lost = false;
    while !saw_lost {
        assert!(
            Instant::now() < deadline,
            "the un-replicated insert never reached the old primary's cursor"
        );
        let batch = cursor
            .next()
            .await
            .expect("cursor open")
            .expect("no error while isolated");
        for d in batch.doc_slices().unwrap() {
            let d = Document::try_from(d.unwrap().as_document().unwrap()).unwrap();
            if d.get_document("o").ok().and_then(|o| o.get_str("_id").ok()) == Some("lost") {
                saw_lost = true;
            }
        }
    }
    assert!(
        rs.wait_for(DEADLINE, |c| c
            .primary_of("replset")
            .is_some_and(|p| p != old))
            .await,
        "no election"
    );
    rs.heal_node(old).await.unwrap();
    let err = loop {
        assert!(Instant::now() < deadline, "cursor never failed");
        match cursor.next().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("cursor ended without an error"),
        }
    };
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

// ---------------------------------------------------------------------------------------
// Membership: hidden members, non-voters, arbiters, delayed members, reconfig, the commit
// rule and Raft's "figure 8".
// ---------------------------------------------------------------------------------------

use mongosim::membership::MemberSpec;

type OpKey = (i64, (u32, u32));

fn key_of(d: &Document) -> OpKey {
    let ts = d.get_timestamp("ts").unwrap();
    (d.get_i64("t").unwrap_or(-1), (ts.time, ts.increment))
}

fn entry_key(raw: &RawDocumentBuf) -> OpKey {
    key_of(&raw_to_doc(raw))
}

fn holds(rs: &Cluster, node: SocketAddr, key: OpKey) -> bool {
    rs.oplog_snapshot(node).iter().any(|e| entry_key(e) == key)
}

fn committed_keys(rs: &Cluster, set: &str) -> Vec<OpKey> {
    rs.committed_entries(set).iter().map(entry_key).collect()
}

fn rolled_back_keys(rs: &Cluster, set: &str) -> Vec<OpKey> {
    rs.rolled_back_entries(set).iter().map(entry_key).collect()
}

fn member_rs(members: Vec<MemberSpec>) -> ReplicaSetSpec {
    ReplicaSetSpec {
        members: Some(members),
        noop_interval: Duration::from_secs(3600),
        election_timeout: Duration::from_millis(300),
        commit_point_delay: Duration::ZERO,
        ..Default::default()
    }
}

async fn admin(addr: SocketAddr, cmd: Document) -> Document {
    direct(addr)
        .await
        .database("admin")
        .run_command(cmd)
        .await
        .unwrap()
}

/// Inserts one document on `primary` (w: 1) and returns the key of its oplog entry.
async fn insert_on(rs: &Cluster, primary: SocketAddr, id: &str) -> OpKey {
    direct(primary)
        .await
        .database("test")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": id})
        .await
        .unwrap();
    let entry = rs
        .oplog_snapshot(primary)
        .into_iter()
        .map(|r| raw_to_doc(&r))
        .find(|d| {
            d.get_str("op").ok() == Some("i")
                && d.get_document("o").unwrap().get_str("_id").ok() == Some(id)
        })
        .expect("the insert is in the primary's oplog");
    key_of(&entry)
}

async fn wait_primary(rs: &Cluster, set: &str, want: SocketAddr) {
    assert!(
        rs.wait_for(DEADLINE, |c| c.primary_of(set) == Some(want)
            && c.status()
                .iter()
                .any(|n| n.addr == want.to_string() && n.state == "PRIMARY"))
            .await,
        "{want} did not become primary: {:?}",
        rs.status()
    );
}

async fn wait_committed(rs: &Cluster, set: &str, key: OpKey) {
    assert!(
        rs.wait_for(DEADLINE, |c| committed_keys(c, set).contains(&key))
            .await,
        "{key:?} never committed"
    );
}

fn majority_op_time(hello: &Document) -> Option<OpKey> {
    hello
        .get_document("lastWrite")
        .ok()?
        .get_document("majorityOpTime")
        .ok()
        .map(key_of)
}

/// Raft's figure 8 (Ongaro's thesis, fig. 3.7) on five voters A..E. A (term 1) writes X,
/// which reaches B only. A and B die; C wins term 2 with D and E and writes Y alone. C dies;
/// A and B return and A wins term 3, but its step-up is held (drain mode): before it
/// commits anything of term 3, D copies X from it, so X is held by A, B, D — a majority of
/// voters. A dies before finishing its step-up; C (newest term in its log) wins again and X
/// is rolled back everywhere. X must never be committed, and no member's
/// `lastWrite.majorityOpTime` (read with the Rust driver throughout) may reach X on X's
/// branch.
#[tokio::test]
async fn figure_eight_entry_held_by_a_majority_is_rolled_back() {
    let rs = ReplicaSet::start(member_rs(vec![MemberSpec::voter(); 5]))
        .await
        .unwrap();
    let set = rs.name();
    let m = rs.members();
    let (a, b, c, d, e) = (m[0], m[1], m[2], m[3], m[4]);
    wait_primary(&rs, &set, a).await;
    assert!(
        rs.wait_for(DEADLINE, |x| x.commit_point(&set).is_some())
            .await
    );

    // Every member's majorityOpTime, read through hello with the Rust driver, all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let members = m.clone();
        tokio::spawn(async move {
            let mut clients = Vec::new();
            for addr in &members {
                clients.push(
                    Client::with_uri_str(format!(
                        "mongodb://{addr}/?directConnection=true&serverSelectionTimeoutMS=300&connectTimeoutMS=300"
                    ))
                    .await
                    .unwrap(),
                );
            }
            let mut seen: Vec<(SocketAddr, OpKey)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for (addr, c) in members.iter().zip(&clients) {
                    let hello = tokio::time::timeout(
                        Duration::from_millis(400),
                        c.database("admin").run_command(doc! {"hello": 1}),
                    )
                    .await;
                    if let Ok(Ok(h)) = hello {
                        if let Some(k) = majority_op_time(&h) {
                            seen.push((*addr, k));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };

    // Term 1: X reaches B only.
    for n in [c, d, e] {
        rs.block_replication(n, true).unwrap();
    }
    let x = insert_on(&rs, a, "X").await;
    assert_eq!(x.0, 1);
    assert!(rs.wait_for(DEADLINE, |r| holds(r, b, x)).await);
    rs.kill_node(a).await.unwrap();
    rs.kill_node(b).await.unwrap();

    // Term 2: C is elected by C, D, E and writes Y on its own.
    wait_primary(&rs, &set, c).await;
    let y = insert_on(&rs, c, "Y").await;
    assert_eq!(y.0, 2);
    assert!(!holds(&rs, d, y) && !holds(&rs, e, y));
    rs.kill_node(c).await.unwrap();

    // Term 3: A wins (it holds X) but stays in drain mode; D copies X from it.
    rs.hold_step_up(&set, true).unwrap();
    rs.restart_node(a).await.unwrap();
    rs.restart_node(b).await.unwrap();
    wait_primary(&rs, &set, a).await;
    let hello_a = admin(a, doc! {"hello": 1}).await;
    assert!(
        !hello_a.get_bool("isWritablePrimary").unwrap(),
        "drain mode: {hello_a}"
    );
    rs.block_replication(d, false).unwrap();
    assert!(rs.wait_for(DEADLINE, |r| holds(r, d, x)).await);
    let holders = [a, b, c, d, e]
        .iter()
        .filter(|n| holds(&rs, **n, x))
        .count();
    assert_eq!(holders, 3, "X is held by a majority of the five voters");
    // Give the simulation time to (wrongly) commit it.
    assert!(
        !rs.wait_for(Duration::from_millis(300), |r| committed_keys(r, &set)
            .contains(&x))
            .await,
        "X held by a majority but no term-3 entry: it must not commit"
    );
    assert!(rs
        .member_commit_point(a)
        .is_none_or(|(ts, t)| (t.unwrap_or(-1), (ts.time, ts.increment)) < x));

    // A dies before writing anything of term 3; C returns (without syncing) and wins.
    rs.block_replication(c, true).unwrap();
    rs.restart_node(c).await.unwrap();
    rs.kill_node(a).await.unwrap();
    wait_primary(&rs, &set, c).await;
    rs.hold_step_up(&set, false).unwrap();
    rs.block_replication(e, false).unwrap();
    rs.block_replication(c, false).unwrap();
    assert!(
        rs.wait_for(DEADLINE, |r| rolled_back_keys(r, &set).contains(&x)
            && !holds(r, b, x)
            && !holds(r, d, x))
            .await,
        "X was not rolled back: {:?}",
        rs.status()
    );
    // C's new term commits, carrying Y (term 2) with it.
    wait_committed(&rs, &set, y).await;
    let c_term = rs
        .status()
        .iter()
        .find(|n| n.addr == c.to_string())
        .unwrap()
        .term;
    rs.restart_node(a).await.unwrap();
    assert!(rs.wait_for(DEADLINE, |r| !holds(r, a, x)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = poller.await.unwrap();

    assert!(!committed_keys(&rs, &set).contains(&x), "X never committed");
    assert!(rolled_back_keys(&rs, &set).contains(&x));
    assert!(!seen.is_empty());
    for (addr, k) in &seen {
        assert!(
            *k < x || k.0 >= c_term,
            "{addr} reported majorityOpTime {k:?}, which reaches X {x:?} on X's branch"
        );
    }
    assert!(
        seen.iter().any(|(_, k)| k.0 >= c_term),
        "members learned the new term's commit point"
    );
    rs.shutdown().await;
}

/// 3 visible + 2 hidden voters: hello lists 3 hosts, the config 5 members, a write needs 3
/// of the 5 voters, hidden ones included.
#[tokio::test]
async fn hidden_voters_count_for_the_write_majority() {
    let rs = ReplicaSet::start(member_rs(vec![
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::hidden(),
        MemberSpec::hidden(),
    ]))
    .await
    .unwrap();
    let set = rs.name();
    let m = rs.members();
    wait_primary(&rs, &set, m[0]).await;
    let hello = admin(m[1], doc! {"hello": 1}).await;
    let hosts = hello.get_array("hosts").unwrap();
    assert_eq!(hosts.len(), 3, "{hello}");
    assert!(!hello.contains_key("passives"));
    for h in &m[3..] {
        assert!(!hosts.contains(&Bson::String(h.to_string())));
    }
    let hidden = admin(m[3], doc! {"hello": 1}).await;
    assert_eq!(hidden.get_bool("hidden").ok(), Some(true));
    assert_eq!(hidden.get_bool("passive").ok(), Some(true));
    assert_eq!(hidden.get_bool("secondary").ok(), Some(true));
    let cfg = admin(m[0], doc! {"replSetGetConfig": 1}).await;
    let members = cfg
        .get_document("config")
        .unwrap()
        .get_array("members")
        .unwrap();
    assert_eq!(members.len(), 5);
    let h = members[3].as_document().unwrap();
    assert_eq!(h.get_bool("hidden").ok(), Some(true));
    assert_eq!(h.get_f64("priority").ok(), Some(0.0));
    assert_eq!(h.get_i32("votes").ok(), Some(1));
    let status = admin(m[0], doc! {"replSetGetStatus": 1}).await;
    assert_eq!(status.get_i32("writeMajorityCount").ok(), Some(3));
    assert_eq!(status.get_i32("majorityVoteCount").ok(), Some(3));
    assert_eq!(status.get_i32("votingMembersCount").ok(), Some(5));
    assert_eq!(status.get_i32("writableVotingMembersCount").ok(), Some(5));

    // Held by two visible members only: not committed.
    for n in [m[2], m[3], m[4]] {
        rs.block_replication(n, true).unwrap();
    }
    let z = insert_on(&rs, m[0], "Z").await;
    assert!(rs.wait_for(DEADLINE, |r| holds(r, m[1], z)).await);
    assert!(
        !rs.wait_for(Duration::from_millis(300), |r| committed_keys(r, &set)
            .contains(&z))
            .await
    );
    let hello = admin(m[0], doc! {"hello": 1}).await;
    assert!(majority_op_time(&hello).unwrap() < z);
    // A hidden voter's copy makes it durable.
    rs.block_replication(m[3], false).unwrap();
    wait_committed(&rs, &set, z).await;
    assert!(
        rs.wait_for(DEADLINE, |r| r.member_commit_point(m[1]).is_some_and(
            |(ts, t)| (t.unwrap_or(-1), (ts.time, ts.increment)) >= z
        ))
        .await
    );
    rs.shutdown().await;
}

/// Non-voters' copies never count: an entry on the primary and two non-voters (three of
/// five members) is not committed, and rolls back when the voters elect another primary.
#[tokio::test]
async fn entry_held_by_non_voters_is_not_committed_and_rolls_back() {
    let rs = ReplicaSet::start(member_rs(vec![
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::non_voter(),
        MemberSpec::non_voter(),
    ]))
    .await
    .unwrap();
    let set = rs.name();
    let m = rs.members();
    wait_primary(&rs, &set, m[0]).await;
    let hello = admin(m[3], doc! {"hello": 1}).await;
    assert_eq!(hello.get_array("passives").unwrap().len(), 2, "{hello}");
    assert_eq!(hello.get_array("hosts").unwrap().len(), 3);
    let status = admin(m[0], doc! {"replSetGetStatus": 1}).await;
    assert_eq!(status.get_i32("votingMembersCount").ok(), Some(3));
    assert_eq!(status.get_i32("writeMajorityCount").ok(), Some(2));

    rs.block_replication(m[1], true).unwrap();
    rs.block_replication(m[2], true).unwrap();
    let z = insert_on(&rs, m[0], "Z").await;
    assert!(
        rs.wait_for(DEADLINE, |r| holds(r, m[3], z) && holds(r, m[4], z))
            .await
    );
    assert!(
        !rs.wait_for(Duration::from_millis(300), |r| committed_keys(r, &set)
            .contains(&z))
            .await,
        "three of five members but one voter: not committed"
    );
    rs.kill_node(m[0]).await.unwrap();
    rs.block_replication(m[1], false).unwrap();
    rs.block_replication(m[2], false).unwrap();
    assert!(
        rs.wait_for(
            DEADLINE,
            |r| matches!(r.primary_of(&set), Some(p) if p == m[1] || p == m[2])
        )
        .await
    );
    assert!(
        rs.wait_for(DEADLINE, |r| rolled_back_keys(r, &set).contains(&z)
            && !holds(r, m[3], z)
            && !holds(r, m[4], z))
            .await
    );
    rs.restart_node(m[0]).await.unwrap();
    assert!(rs.wait_for(DEADLINE, |r| !holds(r, m[0], z)).await);
    assert!(!committed_keys(&rs, &set).contains(&z));
    rs.shutdown().await;
}

/// One arbiter (P-S-A): listed in `arbiters`, answers hello as an arbiter, votes (the
/// primary survives losing the secondary) but holds no data, so majority writes stall.
#[tokio::test]
async fn arbiter_votes_but_does_not_make_writes_durable() {
    let rs = ReplicaSet::start(member_rs(vec![
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::arbiter(),
    ]))
    .await
    .unwrap();
    let set = rs.name();
    let m = rs.members();
    wait_primary(&rs, &set, m[0]).await;
    let hello = admin(m[0], doc! {"hello": 1}).await;
    assert_eq!(
        hello.get_array("arbiters").unwrap(),
        &vec![Bson::String(m[2].to_string())]
    );
    assert_eq!(hello.get_array("hosts").unwrap().len(), 2);
    let arb = admin(m[2], doc! {"hello": 1}).await;
    assert_eq!(arb.get_bool("arbiterOnly").ok(), Some(true));
    assert_eq!(arb.get_bool("isWritablePrimary").ok(), Some(false));
    assert_eq!(arb.get_bool("secondary").ok(), Some(false));
    assert!(majority_op_time(&arb).is_none());
    let status = admin(m[2], doc! {"replSetGetStatus": 1}).await;
    assert_eq!(status.get_i32("myState").ok(), Some(7));
    assert_eq!(status.get_i32("majorityVoteCount").ok(), Some(2));
    assert_eq!(status.get_i32("writeMajorityCount").ok(), Some(2));
    assert_eq!(status.get_i32("writableVotingMembersCount").ok(), Some(2));
    assert!(rs.oplog_snapshot(m[2]).is_empty(), "arbiters hold no oplog");

    rs.kill_node(m[1]).await.unwrap();
    let coll = direct(m[0])
        .await
        .database("test")
        .collection::<Document>("c");
    let res = coll
        .insert_one(doc! {"_id": "w"})
        .with_options(
            mongodb::options::InsertOneOptions::builder()
                .write_concern(
                    mongodb::options::WriteConcern::builder()
                        .w(mongodb::options::Acknowledgment::Majority)
                        .w_timeout(Duration::from_millis(400))
                        .build(),
                )
                .build(),
        )
        .await;
    assert!(
        res.is_err(),
        "w: majority cannot be satisfied by the arbiter: {res:?}"
    );
    assert_eq!(
        rs.primary_of(&set),
        Some(m[0]),
        "the arbiter's vote keeps the primary"
    );
    rs.shutdown().await;

    // 4.4 allows two arbiters: majorityVoteCount 2 but one data-bearing voter.
    let mut spec = member_rs(vec![
        MemberSpec::voter(),
        MemberSpec::arbiter(),
        MemberSpec::arbiter(),
    ]);
    spec.version = ServerVersion::V4_4;
    let paa = ReplicaSet::start(spec).await.unwrap();
    let status = admin(paa.members()[0], doc! {"replSetGetStatus": 1}).await;
    assert_eq!(status.get_i32("majorityVoteCount").ok(), Some(2));
    assert_eq!(status.get_i32("writeMajorityCount").ok(), Some(1));
    paa.shutdown().await;
    let mut spec = member_rs(vec![
        MemberSpec::voter(),
        MemberSpec::arbiter(),
        MemberSpec::arbiter(),
    ]);
    spec.version = ServerVersion::V7_0;
    assert!(
        ReplicaSet::start(spec).await.is_err(),
        "7.0 refuses a second arbiter"
    );
}

/// A delayed member applies entries `secondaryDelaySecs` late and says so in hello.
#[tokio::test]
async fn delayed_member_applies_late() {
    let rs = ReplicaSet::start(member_rs(vec![
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::delayed(1),
    ]))
    .await
    .unwrap();
    let set = rs.name();
    let m = rs.members();
    wait_primary(&rs, &set, m[0]).await;
    let hello = admin(m[2], doc! {"hello": 1}).await;
    assert_eq!(hello.get_i32("secondaryDelaySecs").ok(), Some(1));
    assert_eq!(hello.get_bool("hidden").ok(), Some(true));
    assert_eq!(hello.get_array("hosts").unwrap().len(), 2);
    let z = insert_on(&rs, m[0], "Z").await;
    let at = Instant::now();
    assert!(rs.wait_for(DEADLINE, |r| holds(r, m[1], z)).await);
    wait_committed(&rs, &set, z).await;
    assert!(!holds(&rs, m[2], z), "not yet on the delayed member");
    assert!(rs.wait_for(DEADLINE, |r| holds(r, m[2], z)).await);
    assert!(at.elapsed() >= Duration::from_millis(900));
    rs.shutdown().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// replSetReconfig while writes flow: a hidden member is added (it initial-syncs and
/// replicates), setVersion bumps in every member's hello, the config reflects it, invalid
/// configs are refused with mongod's errors, and a removed member answers without config.
#[tokio::test]
async fn reconfig_mid_stream() {
    let rs = ReplicaSet::start(quiet_rs(3)).await.unwrap();
    let set = rs.name();
    let m = rs.members();
    wait_primary(&rs, &set, m[0]).await;
    let before = insert_on(&rs, m[0], "before").await;
    let cfg = admin(m[0], doc! {"replSetGetConfig": 1}).await;
    let mut cfg = cfg.get_document("config").unwrap().clone();
    assert_eq!(cfg.get_i32("version").ok(), Some(1));
    let new_host = format!("127.0.0.1:{}", free_port());
    let mut members = cfg.get_array("members").unwrap().clone();
    members.push(Bson::Document(
        doc! {"_id": 3, "host": new_host.clone(), "hidden": true, "priority": 0, "votes": 1},
    ));
    cfg.insert("members", members.clone());
    cfg.insert("version", 2);
    let primary = direct(m[0]).await;
    primary
        .database("admin")
        .run_command(doc! {"replSetReconfig": cfg.clone()})
        .await
        .unwrap();
    let added: SocketAddr = new_host.parse().unwrap();
    for addr in m.iter().chain([&added]) {
        let hello = admin(*addr, doc! {"hello": 1}).await;
        assert_eq!(hello.get_i32("setVersion").ok(), Some(2), "{addr}: {hello}");
    }
    assert!(holds(&rs, added, before), "initial sync copied the oplog");
    let after = insert_on(&rs, m[0], "after").await;
    assert!(rs.wait_for(DEADLINE, |r| holds(r, added, after)).await);
    let got = admin(added, doc! {"replSetGetConfig": 1}).await;
    let got = got.get_document("config").unwrap();
    assert_eq!(got.get_array("members").unwrap().len(), 4);
    let status = admin(m[0], doc! {"replSetGetStatus": 1}).await;
    assert_eq!(status.get_i32("votingMembersCount").ok(), Some(4));
    assert_eq!(status.get_i32("writeMajorityCount").ok(), Some(3));

    // Same version again: refused.
    let err = primary
        .database("admin")
        .run_command(doc! {"replSetReconfig": cfg.clone()})
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(103));
    // Two voters at once: refused without force.
    let mut two = cfg.clone();
    let mut ms = members.clone();
    ms.push(Bson::Document(
        doc! {"_id": 4, "host": format!("127.0.0.1:{}", free_port())},
    ));
    ms.push(Bson::Document(
        doc! {"_id": 5, "host": format!("127.0.0.1:{}", free_port())},
    ));
    two.insert("members", ms);
    two.insert("version", 3);
    let err = primary
        .database("admin")
        .run_command(doc! {"replSetReconfig": two})
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(93));
    // votes: 0 with priority 1: refused.
    let mut bad = cfg.clone();
    let mut ms = members.clone();
    ms[2] = Bson::Document(doc! {"_id": 2, "host": m[2].to_string(), "votes": 0});
    bad.insert("members", ms);
    bad.insert("version", 3);
    let err = primary
        .database("admin")
        .run_command(doc! {"replSetReconfig": bad})
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(2), "{err}");

    // Remove the added member through the Cluster API.
    let specs: Vec<MemberSpec> = rs
        .member_specs(&set)
        .unwrap()
        .into_iter()
        .filter(|s| s.host != Some(added))
        .collect();
    let now = rs.reconfigure(&set, specs, false).await.unwrap();
    assert_eq!(now, m);
    let hello = admin(added, doc! {"hello": 1}).await;
    assert_eq!(hello.get_bool("isreplicaset").ok(), Some(true), "{hello}");
    let hello = admin(m[1], doc! {"hello": 1}).await;
    assert_eq!(hello.get_i32("setVersion").ok(), Some(3));
    // And the control API: the third member becomes a non-voter.
    let reply = admin(
        m[0],
        doc! {"mongosimControl": "reconfig", "shard": set.clone(), "members": "voter,voter,nonvoter"},
    )
    .await;
    assert_eq!(reply.get_array("members").unwrap().len(), 3);
    let status = admin(m[0], doc! {"replSetGetStatus": 1}).await;
    assert_eq!(status.get_i32("votingMembersCount").ok(), Some(2));
    assert_eq!(status.get_i32("writeMajorityCount").ok(), Some(2));
    rs.shutdown().await;
}

/// Chained replication and commit-point propagation: C syncs from B (replSetGetStatus says
/// so), and with a slow commit-point propagation an entry is committed on the primary
/// before the secondaries' majorityOpTime reaches it.
#[tokio::test]
async fn chained_sync_and_lagging_commit_point() {
    let rs = ReplicaSet::start(quiet_rs(3)).await.unwrap();
    let set = rs.name();
    let m = rs.members();
    wait_primary(&rs, &set, m[0]).await;
    rs.set_sync_source(m[2], Some(m[1])).unwrap();
    rs.set_commit_point_delay(Duration::from_millis(700));
    let z = insert_on(&rs, m[0], "Z").await;
    assert!(rs.wait_for(DEADLINE, |r| holds(r, m[2], z)).await);
    let status = admin(m[2], doc! {"replSetGetStatus": 1}).await;
    assert_eq!(
        status.get_str("syncSourceHost").ok(),
        Some(m[1].to_string().as_str())
    );
    wait_committed(&rs, &set, z).await;
    let on_primary = majority_op_time(&admin(m[0], doc! {"hello": 1}).await).unwrap();
    assert!(on_primary >= z);
    let on_secondary = majority_op_time(&admin(m[2], doc! {"hello": 1}).await);
    assert!(
        on_secondary.is_none_or(|k| k < z),
        "held by a majority and committed on the primary, not yet on C"
    );
    assert!(
        rs.wait_for(DEADLINE, |r| r.member_commit_point(m[2]).is_some_and(
            |(ts, t)| (t.unwrap_or(-1), (ts.time, ts.increment)) >= z
        ))
        .await
    );
    let on_secondary = majority_op_time(&admin(m[2], doc! {"hello": 1}).await).unwrap();
    assert!(on_secondary >= z);
    rs.shutdown().await;
}

fn auth_rs() -> ReplicaSetSpec {
    ReplicaSetSpec {
        users: vec![
            SimUser::new(
                "tail",
                "s3cret",
                vec![SimRole::Read("local".into()), SimRole::ClusterMonitor],
            ),
            SimUser::new("writer", "w", vec![SimRole::ReadWrite("app".into())]),
        ],
        ..quiet_rs(1)
    }
}

async fn as_user(addr: SocketAddr, user: &str, pwd: &str, mechanism: Option<&str>) -> Client {
    let mech = mechanism
        .map(|m| format!("&authMechanism={m}"))
        .unwrap_or_default();
    Client::with_uri_str(format!(
        "mongodb://{user}:{pwd}@{addr}/?directConnection=true&serverSelectionTimeoutMS=5000&authSource=admin{mech}"
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn scram_sha256_and_sha1_authenticate_and_roles_apply() {
    let rs = ReplicaSet::start(auth_rs()).await.unwrap();
    let addr = rs.members()[0];
    // None: the driver negotiates through hello's saslSupportedMechs (SCRAM-SHA-256).
    for mech in [Some("SCRAM-SHA-256"), Some("SCRAM-SHA-1"), None] {
        let c = as_user(addr, "tail", "s3cret", mech).await;
        let first = c
            .database("local")
            .collection::<Document>("oplog.rs")
            .find_one(doc! {})
            .await
            .unwrap_or_else(|e| panic!("{mech:?}: {e}"));
        assert!(
            first.is_some(),
            "{mech:?}: the oplog has the initiating entry"
        );
        c.database("admin")
            .run_command(doc! {"replSetGetStatus": 1})
            .await
            .unwrap();
        let e = c
            .database("app")
            .collection::<Document>("x")
            .insert_one(doc! {"_id": 1})
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(13), "{mech:?}: {e}");
        assert!(
            e.to_string()
                .contains("not authorized on app to execute command { insert: "),
            "{e}"
        );
    }
    // readWrite on app, but no read on local and no clusterMonitor.
    let w = as_user(addr, "writer", "w", Some("SCRAM-SHA-256")).await;
    w.database("app")
        .collection::<Document>("x")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let e = w
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(13), "{e}");
    assert!(e.to_string().contains("not authorized on local"), "{e}");
    let e = w
        .database("admin")
        .run_command(doc! {"replSetGetConfig": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(13), "{e}");
    rs.shutdown().await;
}

#[tokio::test]
async fn wrong_password_and_no_credentials_are_refused() {
    let rs = ReplicaSet::start(auth_rs()).await.unwrap();
    let addr = rs.members()[0];
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-1"] {
        let before = rs.auth_failures();
        let c = as_user(addr, "tail", "wrong", Some(mech)).await;
        let e = c
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .unwrap_err();
        // The driver reports a failed handshake as an authentication error carrying the
        // server's code 18 message.
        assert!(
            matches!(e.kind.as_ref(), ErrorKind::Authentication { .. }),
            "{mech}: {e:?}"
        );
        assert!(e.to_string().contains("Authentication failed"), "{e}");
        assert!(
            rs.auth_failures() > before,
            "{mech}: the server saw the failure"
        );
    }
    // An unknown user fails the same way (mongod does not tell users and passwords apart).
    let c = as_user(addr, "nobody", "x", Some("SCRAM-SHA-256")).await;
    let e = c.list_database_names().await.unwrap_err();
    assert!(
        matches!(e.kind.as_ref(), ErrorKind::Authentication { .. }),
        "{e:?}"
    );
    // Without credentials only the handshake commands run.
    let anon = direct(addr).await;
    anon.database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    let e = anon
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(13), "{e}");
    assert!(
        e.to_string()
            .contains("command find requires authentication"),
        "{e}"
    );
    // Without users nothing is asked: today's behaviour.
    let open = ReplicaSet::start(quiet_rs(1)).await.unwrap();
    let e = direct(open.members()[0])
        .await
        .database("admin")
        .run_command(doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": ""})
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(59), "{e}");
    open.shutdown().await;
    rs.shutdown().await;
}

/// Equal field for field, in the same order (`Document`'s `==` ignores order).
fn same(got: &Document, want: &Document) {
    assert_eq!(got.to_string(), want.to_string());
}

/// A time-series collection created and written through mongos is logged as mongod logs
/// it (shapes from the server source, cited in the crate docs): the view as an insert on
/// `system.views`, the buckets collection's `create`, a new bucket as an insert holding
/// every measurement of the command, a measurement added to an open bucket as a `$v: 2`
/// diff of `control.min`/`control.max` and `data.<field>.<index>`.
#[tokio::test]
async fn timeseries_collection_writes_buckets() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 1,
        nodes_per_shard: 1,
        version: ServerVersion::V7_0,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let db = client.database("farm");
    db.run_command(
        doc! {"create": "weather", "timeseries": {"timeField": "ts", "metaField": "sensor"}},
    )
    .await
    .unwrap();
    let t0 = 1_700_000_010_000i64; // 30 s past a minute: control.min.ts rounds down to it
    let at = |s: i64| bson::DateTime::from_millis(t0 + s * 1000);
    let weather = db.collection::<Document>("weather");
    weather
        .insert_many([
            doc! {"_id": 1, "ts": at(0), "sensor": "a", "temp": 10},
            doc! {"_id": 2, "ts": at(1), "sensor": "a", "temp": 12},
            doc! {"_id": 3, "ts": at(2), "sensor": "a", "temp": 9},
        ])
        .await
        .unwrap();
    weather
        .insert_one(doc! {"_id": 4, "ts": at(3), "sensor": "a", "temp": 15, "wind": 3})
        .await
        .unwrap();
    weather
        .insert_one(doc! {"_id": 5, "ts": at(4), "sensor": "b", "temp": 20})
        .await
        .unwrap();
    // Missing time field: BadValue, nothing logged.
    let e = weather
        .insert_one(doc! {"_id": 6, "temp": 1})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("'ts' must be present"), "{e}");

    let shard = cluster.shard_names()[0].clone();
    let primary = cluster.primary_of(&shard).unwrap();
    let entries: Vec<Document> = cluster
        .oplog_snapshot(primary)
        .iter()
        .map(raw_to_doc)
        .filter(|e| e.get_str("ns").is_ok_and(|ns| ns.starts_with("farm.")))
        .collect();
    let ops: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.get_str("op").unwrap(), e.get_str("ns").unwrap()))
        .collect();
    assert_eq!(
        ops,
        [
            ("c", "farm.$cmd"),
            ("c", "farm.$cmd"),
            ("i", "farm.system.views"),
            ("i", "farm.system.buckets.weather"),
            ("u", "farm.system.buckets.weather"),
            ("i", "farm.system.buckets.weather"),
        ],
        "{entries:#?}"
    );
    assert_eq!(
        entries[0].get_document("o").unwrap().get_str("create").ok(),
        Some("system.views")
    );
    same(
        entries[1].get_document("o").unwrap(),
        &doc! {"create": "system.buckets.weather", "clusteredIndex": true,
        "timeseries": {"timeField": "ts", "metaField": "sensor", "granularity": "seconds",
        "bucketMaxSpanSeconds": 3600, "bucketRoundingSeconds": 60}},
    );
    same(
        entries[2].get_document("o").unwrap(),
        &doc! {"_id": "farm.weather", "viewOn": "system.buckets.weather",
        "pipeline": [{"$_internalUnpackBucket": {"timeField": "ts", "metaField": "sensor",
        "bucketMaxSpanSeconds": 3600}}]},
    );
    let bucket = entries[3].get_document("o").unwrap();
    let id = bucket.get_object_id("_id").unwrap();
    let minute = bson::DateTime::from_millis(t0 - 30_000);
    assert_eq!(id.timestamp(), minute);
    same(
        bucket,
        &doc! {"_id": id,
        "control": {"version": 1,
            "min": {"_id": 1, "ts": minute, "temp": 9},
            "max": {"_id": 3, "ts": at(2), "temp": 12}},
        "meta": "a",
        "data": {"_id": {"0": 1, "1": 2, "2": 3},
                 "ts": {"0": at(0), "1": at(1), "2": at(2)},
                 "temp": {"0": 10, "1": 12, "2": 9}}},
    );
    assert_eq!(entries[3].get_document("o2").unwrap(), &doc! {"_id": id});
    // A retryable write: the bucket insert logs the three statements it holds.
    assert_eq!(
        entries[3].get_array("stmtId").unwrap(),
        &vec![Bson::Int32(0), Bson::Int32(1), Bson::Int32(2)]
    );
    same(
        entries[4].get_document("o").unwrap(),
        &doc! {"$v": 2, "diff": {
        "scontrol": {"smin": {"u": {"wind": 3}},
                     "smax": {"u": {"_id": 4, "ts": at(3), "temp": 15, "wind": 3}}},
        "sdata": {"i": {"wind": {"3": 3}},
                  "s_id": {"i": {"3": 4}}, "sts": {"i": {"3": at(3)}},
                  "stemp": {"i": {"3": 15}}}}},
    );
    assert_eq!(entries[4].get_document("o2").unwrap(), &doc! {"_id": id});
    assert_eq!(
        entries[5].get_document("o").unwrap().get_str("meta").ok(),
        Some("b")
    );
}

/// deleteMany on 7.0 is a batched multi-delete: session-less applyOps entries on
/// `admin.$cmd` of at most 100 deletes each (`batchedDeletesTargetBatchDocs`), a batch of
/// one document a plain `d` (`jstests/noPassthrough/batched_multi_deletes_oplog.js`,
/// "batch deletes resulting with single operations create regular delete oplog entries");
/// on 6.0 one `d` per document.
#[tokio::test]
async fn delete_many_is_batched_from_7_0() {
    for version in [
        ServerVersion::V6_0,
        ServerVersion::V7_0,
        ServerVersion::V8_0,
    ] {
        let cluster = Cluster::start(ClusterSpec {
            shards: 1,
            nodes_per_shard: 1,
            version,
            noop_interval: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();
        let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
            .await
            .unwrap();
        let coll = client.database("shop").collection::<Document>("items");
        coll.insert_many((0..301).map(|i| doc! {"_id": i, "even": i % 2 == 0}))
            .await
            .unwrap();
        let shard = cluster.shard_names()[0].clone();
        let primary = cluster.primary_of(&shard).unwrap();
        let before = cluster.oplog_snapshot(primary).len();
        // 201 deletes: 100 + 100 + 1.
        let r = coll.delete_many(doc! {"_id": {"$lt": 201}}).await.unwrap();
        assert_eq!(r.deleted_count, 201);
        // One document matched: a plain delete whatever the version.
        coll.delete_many(doc! {"_id": 250}).await.unwrap();
        let entries: Vec<Document> = cluster.oplog_snapshot(primary)[before..]
            .iter()
            .map(raw_to_doc)
            .collect();
        let shape: Vec<(String, usize)> = entries
            .iter()
            .map(
                |e| match e.get_document("o").unwrap().get_array("applyOps") {
                    Ok(ops) => ("applyOps".to_owned(), ops.len()),
                    Err(_) => (e.get_str("op").unwrap().to_owned(), 1),
                },
            )
            .collect();
        if version >= ServerVersion::V7_0 {
            assert_eq!(
                shape,
                [
                    ("applyOps".into(), 100),
                    ("applyOps".into(), 100),
                    ("d".into(), 1),
                    ("d".into(), 1)
                ],
                "{version}"
            );
            let first = &entries[0];
            assert_eq!(first.get_str("ns").unwrap(), "admin.$cmd");
            for field in ["lsid", "txnNumber", "prevOpTime", "stmtId", "multiOpType"] {
                assert!(!first.contains_key(field), "{version}: {field} in {first}");
            }
            let ops = first
                .get_document("o")
                .unwrap()
                .get_array("applyOps")
                .unwrap();
            let op0 = ops[0].as_document().unwrap();
            assert_eq!(op0.get_str("op").unwrap(), "d");
            assert_eq!(op0.get_str("ns").unwrap(), "shop.items");
            assert!(op0.contains_key("ui"));
            assert_eq!(op0.get_document("o").unwrap(), &doc! {"_id": 0});
        } else {
            assert_eq!(shape.len(), 202, "{version}");
            assert!(shape.iter().all(|(op, _)| op == "d"), "{version}");
        }
        // The data is gone either way.
        let left: Vec<_> = coll.find(doc! {}).await.unwrap().collect().await;
        assert_eq!(left.len(), 99, "{version}");
    }
}

/// A retryable findAndModify logs its image as the version does (mongodb/mongo
/// `src/mongo/db/repl/README.md`; `op_observer_impl.cpp` `replLogUpdate`/`replLogDelete`):
/// up to 5.0 a no-op entry on the namespace holding the image, with the session fields,
/// linked from the update/delete by `preImageOpTime`/`postImageOpTime`; from 5.1
/// `needsRetryImage` on the update/delete and nothing else in the oplog.
#[tokio::test]
async fn retryable_find_and_modify_logs_images_per_version() {
    use mongodb::options::ReturnDocument;
    for version in [
        ServerVersion::V4_4,
        ServerVersion::V5_0,
        ServerVersion::V6_0,
        ServerVersion::V8_0,
    ] {
        let cluster = Cluster::start(ClusterSpec {
            shards: 1,
            nodes_per_shard: 1,
            version,
            noop_interval: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();
        let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
            .await
            .unwrap();
        let coll = client.database("shop").collection::<Document>("stock");
        coll.insert_many([doc! {"_id": 1, "x": 1}, doc! {"_id": 2, "x": 5}])
            .await
            .unwrap();
        let shard = cluster.shard_names()[0].clone();
        let primary = cluster.primary_of(&shard).unwrap();
        let before = cluster.oplog_snapshot(primary).len();
        let old = coll
            .find_one_and_update(doc! {"_id": 1}, doc! {"$inc": {"x": 1}})
            .await
            .unwrap();
        assert_eq!(old, Some(doc! {"_id": 1, "x": 1}));
        let new = coll
            .find_one_and_update(doc! {"_id": 2}, doc! {"$set": {"x": 7}})
            .return_document(ReturnDocument::After)
            .await
            .unwrap();
        assert_eq!(new, Some(doc! {"_id": 2, "x": 7}));
        let gone = coll.find_one_and_delete(doc! {"_id": 1}).await.unwrap();
        assert_eq!(gone, Some(doc! {"_id": 1, "x": 2}));
        let entries: Vec<Document> = cluster.oplog_snapshot(primary)[before..]
            .iter()
            .map(raw_to_doc)
            .collect();
        let ops: Vec<&str> = entries.iter().map(|e| e.get_str("op").unwrap()).collect();
        let optime = |e: &Document| doc! {"ts": e.get_timestamp("ts").unwrap(), "t": e.get_i64("t").unwrap()};
        if version.retry_images_in_side_collection() {
            assert_eq!(ops, ["u", "u", "d"], "{version}");
            let kinds: Vec<&str> = entries
                .iter()
                .map(|e| e.get_str("needsRetryImage").unwrap())
                .collect();
            assert_eq!(kinds, ["preImage", "postImage", "preImage"], "{version}");
            for e in &entries {
                assert!(e.contains_key("lsid") && e.contains_key("txnNumber"), "{e}");
                assert!(!e.contains_key("preImageOpTime") && !e.contains_key("postImageOpTime"));
            }
        } else {
            assert_eq!(ops, ["n", "u", "n", "u", "n", "d"], "{version}");
            let images: Vec<&Document> = entries
                .iter()
                .filter(|e| e.get_str("op").ok() == Some("n"))
                .map(|e| e.get_document("o").unwrap())
                .collect();
            assert_eq!(
                images,
                [
                    &doc! {"_id": 1, "x": 1},
                    &doc! {"_id": 2, "x": 7},
                    &doc! {"_id": 1, "x": 2}
                ],
                "{version}"
            );
            for pair in entries.chunks(2) {
                let (image, write) = (&pair[0], &pair[1]);
                assert_eq!(image.get_str("ns").unwrap(), "shop.stock");
                for field in ["lsid", "txnNumber", "stmtId", "prevOpTime"] {
                    assert_eq!(image.get(field), write.get(field), "{version}: {field}");
                }
                let link = if write.contains_key("postImageOpTime") {
                    "postImageOpTime"
                } else {
                    "preImageOpTime"
                };
                assert_eq!(
                    write.get_document(link).unwrap(),
                    &optime(image),
                    "{version}"
                );
                assert!(!write.contains_key("needsRetryImage"));
            }
            assert!(entries[3].contains_key("postImageOpTime"));
        }
    }
}

/// Update paths through a value that is not a document are refused as mongod refuses them
/// (PathNotViable 28), and `$inc` on a non-number (TypeMismatch 14); the document is left
/// as it was and nothing is logged.
#[tokio::test]
async fn impossible_update_paths_are_refused() {
    let rs = ReplicaSet::start(quiet_rs(1)).await.unwrap();
    let c = direct(rs.members()[0]).await;
    let coll = c.database("app").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "a": 5, "s": "x"})
        .await
        .unwrap();
    let e = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"a.b": 1}})
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("Cannot create field 'b' in element {a: 5}"),
        "{msg}"
    );
    let e = coll
        .update_one(doc! {"_id": 1}, doc! {"$inc": {"s": 1}})
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("Cannot apply $inc to a value of non-numeric type"),
        "{e}"
    );
    assert_eq!(
        coll.find_one(doc! {"_id": 1}).await.unwrap().unwrap(),
        doc! {"_id": 1, "a": 5, "s": "x"}
    );
    let updates = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {"op": "u"})
        .await
        .unwrap();
    assert_eq!(updates, None);
    rs.shutdown().await;
}

//! The checkpoint stores.

use std::collections::HashMap;
use std::sync::Arc;

use quorumtail_oplog::EntryId;
use quorumtail_sink::{
    CheckpointConfig, CheckpointError, CheckpointStore, ConfirmedCheckpoints, FileCheckpointStore,
    KafkaCheckpointStore, ShardMembership, SinkConfig, SnapshotCursor, SnapshotProgress,
    StoredShard, StoredShards,
};

use crate::broker::{partitions, Broker};
use crate::cp;

fn confirmed(v: &[(&str, EntryId)]) -> ConfirmedCheckpoints {
    ConfirmedCheckpoints::assume_confirmed(v.iter().map(|(s, e)| (Arc::from(*s), *e)).collect())
}

fn map(v: &[(&str, EntryId)]) -> HashMap<Arc<str>, EntryId> {
    v.iter().map(|(s, e)| (Arc::from(*s), *e)).collect()
}

#[tokio::test]
async fn file_store_round_trips_merges_and_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    let store = FileCheckpointStore::new(&path);
    assert!(store.load().await.unwrap().is_empty(), "first run");
    store
        .store(&confirmed(&[("rs0", cp(1)), ("rs1", cp(2))]))
        .await
        .unwrap();
    store.store(&confirmed(&[("rs0", cp(3))])).await.unwrap();

    // A new process (a new store) sees the merged state.
    let again = FileCheckpointStore::new(&path);
    assert_eq!(
        again.load().await.unwrap(),
        map(&[("rs0", cp(3)), ("rs1", cp(2))])
    );
    // A store that never loaded merges with the file too.
    FileCheckpointStore::new(&path)
        .store(&confirmed(&[("rs2", cp(9))]))
        .await
        .unwrap();
    assert_eq!(
        again.load().await.unwrap(),
        map(&[("rs0", cp(3)), ("rs1", cp(2)), ("rs2", cp(9))])
    );
    // Only the file remains: the temp files were renamed into place.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["cp.json".to_owned()]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"version\": 2") && text.contains("\"rs2\""),
        "{text}"
    );
}

#[tokio::test]
async fn file_store_refuses_a_corrupt_file_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    for bad in [
        "{\"version\":1,\"shards\":{\"rs0\":{\"ts\":{\"t\":1}}}}",
        "{\"version\":3,\"shards\":{}}",
        "{\"version\":2,\"shards\":{\"rs0\":{\"ts\":{\"t\":1,\"i\":1}}}}",
        "{\"version\":2,\"shards\":{\"rs0\":{\"checkpoint\":{\"ts\":{\"t\":1,\"i\":1}},\"members\":[]}}}",
        "not json",
        "",
        "{\"version\":1,\"shards\":{},\"extra\":1}",
    ] {
        std::fs::write(&path, bad).unwrap();
        let store = FileCheckpointStore::new(&path);
        let e = store.load().await.unwrap_err();
        assert!(
            matches!(e, CheckpointError::Corrupt { .. }),
            "{bad:?}: {e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("corrupt")
                && msg.contains("restore the file"),
            "{msg}"
        );
        // Storing over it is refused too: the operator must look at it first.
        let e = FileCheckpointStore::new(&path)
            .store(&confirmed(&[("rs0", cp(1))]))
            .await
            .unwrap_err();
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
    }
}

#[tokio::test]
async fn file_store_in_a_missing_directory_names_the_path() {
    let store = FileCheckpointStore::new("/nonexistent-dir/cp.json");
    let e = store
        .store(&confirmed(&[("rs0", cp(1))]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent-dir"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_store_creates_a_compacted_topic_and_reads_to_the_end() {
    let broker = Broker::start();
    let sink = SinkConfig::kafka(broker.bootstrap.clone());
    let topic = crate::unique("it.checkpoints");
    let mut cfg = CheckpointConfig::kafka(topic.clone());
    cfg.replication_factor = 1;
    let store = KafkaCheckpointStore::open(&cfg, &sink).await.unwrap();
    assert_eq!(partitions(&broker.bootstrap, &topic).len(), 1);
    assert_eq!(
        topic_config(&broker.bootstrap, &topic, "cleanup.policy").await,
        Some("compact".to_owned())
    );
    assert!(store.load().await.unwrap().is_empty());
    store
        .store(&confirmed(&[("rs0", cp(1)), ("rs1", cp(2))]))
        .await
        .unwrap();
    store.store(&confirmed(&[("rs0", cp(5))])).await.unwrap();
    store.store(&confirmed(&[("rs0", cp(6))])).await.unwrap();

    // Opening again finds the topic; loading reads every record to the end.
    let again = KafkaCheckpointStore::open(&cfg, &sink).await.unwrap();
    assert_eq!(
        again.load().await.unwrap(),
        map(&[("rs0", cp(6)), ("rs1", cp(2))])
    );
}

/// A topic's config value, as the broker describes it.
async fn topic_config(bootstrap: &str, topic: &str, key: &str) -> Option<String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let res = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let r = res.into_iter().next()?.ok()?;
    r.get(key).and_then(|e| e.value.clone())
}

/// The checkpointer stores only what the sink confirmed, and the flush report's checkpoints
/// complete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointer_stores_confirmed_positions_from_a_file_sink() {
    use quorumtail_sink::{run_checkpointer, Sink};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::file(&SinkConfig::file(dir.path().join("out.jsonl"))).unwrap();
    let store: Arc<dyn CheckpointStore> =
        Arc::new(FileCheckpointStore::new(dir.path().join("cp.json")));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(run_checkpointer(
        sink.view(),
        store.clone(),
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    let tx = sink.sender();
    let mut rs0 = sink.progress("rs0");
    for seq in 1..=50 {
        tx.send(crate::record("rs0", seq, seq != 50, None))
            .await
            .unwrap();
    }
    crate::wait_progress(&mut rs0, Duration::from_secs(10), "confirmed", |p| {
        crate::confirmed_seq(p) == Some(49)
    })
    .await;
    // Wait (bounded) until the checkpointer has written it.
    let reader = FileCheckpointStore::new(dir.path().join("cp.json"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if reader.load().await.unwrap().get("rs0") == Some(&cp(49)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoint not stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap();
    let report = sink
        .flush(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    store.store(&report.checkpoints).await.unwrap();
    assert_eq!(reader.load().await.unwrap(), map(&[("rs0", cp(49))]));
}

#[tokio::test]
async fn checkpoint_config_selects_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::json!({"kind": "file", "path": dir.path().join("cp.json")});
    let c: CheckpointConfig = serde_json::from_value(json).unwrap();
    let store = c.open(&SinkConfig::default()).await.unwrap();
    store.store(&confirmed(&[("rs0", cp(4))])).await.unwrap();
    assert_eq!(store.load().await.unwrap(), map(&[("rs0", cp(4))]));
    let e =
        serde_json::from_str::<CheckpointConfig>(r#"{"kind":"file","path":"x","brokers":"b:1"}"#)
            .unwrap_err()
            .to_string();
    assert!(e.contains("brokers"), "{e}");
    let k: CheckpointConfig = serde_json::from_str(r#"{"kind":"kafka","timeout":"5s"}"#).unwrap();
    assert_eq!(k.kind, quorumtail_sink::CheckpointKind::Kafka);
    assert_eq!(k.topic, "quorumtail.checkpoints");
    assert_eq!(k.timeout, std::time::Duration::from_secs(5));
}

fn membership(set: &str, n: u16) -> ShardMembership {
    ShardMembership {
        replica_set: Some(set.to_owned()),
        members: (0..n).map(|i| format!("{set}-{i}.example:27018")).collect(),
        arbiters: 1,
        quorum: Some(2),
    }
}

fn stored(checkpoint: EntryId, m: Option<ShardMembership>, drained: bool) -> StoredShard {
    StoredShard {
        checkpoint,
        membership: m,
        drained,
        snapshot: None,
    }
}

fn progress(ns: &str, after: i64, documents: u64) -> SnapshotProgress {
    SnapshotProgress {
        at: cp(20).ts,
        stream_from: cp(10).ts,
        done: vec!["a.first".into()],
        current: Some(SnapshotCursor {
            ns: ns.into(),
            after_id: serde_json::json!({"$numberLong": after.to_string()}),
        }),
        complete: false,
        documents,
        later: Vec::new(),
    }
}

/// A shard's snapshot progress: kept across processes while the snapshot is under way
/// (the shard then has no position to resume after), replaced by the shard's first
/// confirmed checkpoint, and never brought back by progress that arrives late.
async fn snapshot_progress_round_trips(
    store: &dyn CheckpointStore,
    reopen: impl AsyncFn() -> Box<dyn CheckpointStore>,
) {
    let rs2: Arc<str> = "rs2".into();
    store
        .store_snapshot(&rs2, progress("a.second", 7, 100))
        .await
        .unwrap();
    store
        .store_snapshot(&rs2, progress("a.second", 9, 150))
        .await
        .unwrap();
    let loaded = reopen().await.load_shards().await.unwrap();
    assert_eq!(loaded[&rs2].snapshot, Some(progress("a.second", 9, 150)));
    assert_eq!(loaded[&rs2].resume_after(), None);
    assert!(
        !reopen().await.load().await.unwrap().contains_key(&rs2),
        "a shard under snapshot has no position to resume after"
    );
    // A later process continues it, then streams: its first checkpoint ends the snapshot.
    let again = reopen().await;
    again.load_shards().await.unwrap();
    again
        .store_snapshot(&rs2, progress("a.third", 1, 200))
        .await
        .unwrap();
    again.store(&confirmed(&[("rs2", cp(30))])).await.unwrap();
    again
        .store_snapshot(&rs2, progress("a.third", 2, 201))
        .await
        .unwrap();
    let loaded = reopen().await.load_shards().await.unwrap();
    assert_eq!(loaded[&rs2], StoredShard::at(cp(30)));
    assert_eq!(reopen().await.load().await.unwrap()[&rs2], cp(30));
}

#[tokio::test]
async fn file_store_keeps_snapshot_progress_until_the_first_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    let store = FileCheckpointStore::new(&path);
    let p = path.clone();
    snapshot_progress_round_trips(&store, async || {
        Box::new(FileCheckpointStore::new(&p)) as Box<dyn CheckpointStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_store_keeps_snapshot_progress_until_the_first_checkpoint() {
    let broker = Broker::start();
    let sink = SinkConfig::kafka(broker.bootstrap.clone());
    let mut cfg = CheckpointConfig::kafka(crate::unique("it.checkpoints.snapshot"));
    cfg.replication_factor = 1;
    let store = KafkaCheckpointStore::open(&cfg, &sink).await.unwrap();
    let (c, s) = (cfg.clone(), sink.clone());
    snapshot_progress_round_trips(&store, async || {
        Box::new(KafkaCheckpointStore::open(&c, &s).await.unwrap()) as Box<dyn CheckpointStore>
    })
    .await;
}

/// The lifecycle every store goes through: memberships written with positions, a removed
/// shard marked drained at its confirmed position, a drained shard that comes back
/// un-drained. `reopen` gives a fresh store on the same storage (a new process).
async fn memberships_and_drained_flags_round_trip(
    store: &dyn CheckpointStore,
    reopen: impl AsyncFn() -> Box<dyn CheckpointStore>,
) {
    let rs0: Arc<str> = "rs0".into();
    let rs1: Arc<str> = "rs1".into();
    store.remember(&rs0, membership("rs0", 3));
    // Remembered before it has a position: written with its first one.
    store.remember(&rs1, membership("rs1", 2));
    store.store(&confirmed(&[("rs0", cp(1))])).await.unwrap();
    let want: StoredShards = [(
        rs0.clone(),
        stored(cp(1), Some(membership("rs0", 3)), false),
    )]
    .into_iter()
    .collect();
    assert_eq!(reopen().await.load_shards().await.unwrap(), want);

    store
        .store(&confirmed(&[("rs0", cp(4)), ("rs1", cp(2))]))
        .await
        .unwrap();
    // rs1 was removed and read to its end: drained at its confirmed position.
    store
        .mark_drained("rs1", &confirmed(&[("rs0", cp(5)), ("rs1", cp(3))]))
        .await
        .unwrap();
    let want: StoredShards = [
        (
            rs0.clone(),
            stored(cp(5), Some(membership("rs0", 3)), false),
        ),
        (rs1.clone(), stored(cp(3), Some(membership("rs1", 2)), true)),
    ]
    .into_iter()
    .collect();
    assert_eq!(reopen().await.load_shards().await.unwrap(), want);
    // Later stores keep the flag (the sink keeps reporting the drained shard's position).
    store
        .store(&confirmed(&[("rs0", cp(6)), ("rs1", cp(3))]))
        .await
        .unwrap();
    assert!(reopen().await.load_shards().await.unwrap()[&rs1].drained);
    // A store in a new process that marks a shard without a confirmed position this run
    // uses the stored one; a shard it has never seen is not written at all.
    let again = reopen().await;
    again
        .mark_drained("rs0", &ConfirmedCheckpoints::default())
        .await
        .unwrap();
    again
        .mark_drained("never-seen", &ConfirmedCheckpoints::default())
        .await
        .unwrap();
    let loaded = reopen().await.load_shards().await.unwrap();
    assert_eq!(
        loaded[&rs0],
        stored(cp(6), Some(membership("rs0", 3)), true)
    );
    assert!(!loaded.contains_key("never-seen"));

    // rs1 comes back (re-added) with new members: no longer drained.
    again.remember(&rs1, membership("rs1", 4));
    again.store(&confirmed(&[("rs1", cp(8))])).await.unwrap();
    let loaded = reopen().await.load_shards().await.unwrap();
    assert_eq!(
        loaded[&rs1],
        stored(cp(8), Some(membership("rs1", 4)), false)
    );
    // The positions-only view covers every shard, drained or not.
    assert_eq!(
        reopen().await.load().await.unwrap(),
        map(&[("rs0", cp(6)), ("rs1", cp(8))])
    );
}

#[tokio::test]
async fn file_store_keeps_memberships_and_drained_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    let store = FileCheckpointStore::new(&path);
    let p = path.clone();
    memberships_and_drained_flags_round_trip(&store, async || {
        Box::new(FileCheckpointStore::new(&p)) as Box<dyn CheckpointStore>
    })
    .await;
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 2, "{text}");
    assert_eq!(v["shards"]["rs0"]["drained"], true, "{text}");
    assert_eq!(
        v["shards"]["rs1"]["membership"]["replica_set"], "rs1",
        "{text}"
    );
    // `drained: false` is left out.
    assert!(v["shards"]["rs1"].get("drained").is_none(), "{text}");
}

/// A version 1 file (positions only, as written before memberships were kept) is read as
/// shards without a membership and rewritten as version 2 by the next store.
#[tokio::test]
async fn file_store_reads_the_version_1_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    std::fs::write(
        &path,
        r#"{"version":1,"shards":{"rs0":{"ts":{"t":1700000000,"i":2},"t":7},"rs1":{"ts":{"t":1700000001,"i":1}}}}"#,
    )
    .unwrap();
    let store = FileCheckpointStore::new(&path);
    let rs0_id = EntryId::new(quorumtail_oplog::Timestamp::new(1_700_000_000, 2), 7);
    let rs1_id = EntryId::at(quorumtail_oplog::Timestamp::new(1_700_000_001, 1));
    let want: StoredShards = [
        (Arc::from("rs0"), StoredShard::at(rs0_id)),
        (Arc::from("rs1"), StoredShard::at(rs1_id)),
    ]
    .into_iter()
    .collect();
    assert_eq!(store.load_shards().await.unwrap(), want);
    assert_eq!(
        store.load().await.unwrap(),
        map(&[("rs0", rs0_id), ("rs1", rs1_id)])
    );
    // Nothing changed: the file is left as it is.
    store.store(&ConfirmedCheckpoints::default()).await.unwrap();
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("\"version\":1"));
    store.remember(&Arc::from("rs0"), membership("rs0", 3));
    store.store(&confirmed(&[("rs0", cp(9))])).await.unwrap();
    let loaded = FileCheckpointStore::new(&path).load_shards().await.unwrap();
    assert_eq!(
        loaded[&Arc::from("rs0")],
        stored(cp(9), Some(membership("rs0", 3)), false)
    );
    assert_eq!(loaded[&Arc::from("rs1")], StoredShard::at(rs1_id));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"version\": 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_store_keeps_memberships_and_drained_flags_and_reads_old_records() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = Broker::start();
    let sink = SinkConfig::kafka(broker.bootstrap.clone());
    let mut cfg = CheckpointConfig::kafka(crate::unique("it.checkpoints.members"));
    cfg.replication_factor = 1;
    let store = KafkaCheckpointStore::open(&cfg, &sink).await.unwrap();
    assert!(store.load_shards().await.unwrap().is_empty());
    let (c, s) = (cfg.clone(), sink.clone());
    memberships_and_drained_flags_round_trip(&store, async || {
        Box::new(KafkaCheckpointStore::open(&c, &s).await.unwrap()) as Box<dyn CheckpointStore>
    })
    .await;

    // A record as written before memberships were kept: a bare position.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let old = serde_json::json!({"shard": "rs9", "id": cp(2)}).to_string();
    producer
        .send(
            FutureRecord::to(&cfg.topic).key("rs9").payload(&old),
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
    let loaded = KafkaCheckpointStore::open(&cfg, &sink)
        .await
        .unwrap()
        .load_shards()
        .await
        .unwrap();
    assert_eq!(loaded[&Arc::from("rs9")], StoredShard::at(cp(2)));
    assert!(loaded[&Arc::from("rs0")].drained);
}

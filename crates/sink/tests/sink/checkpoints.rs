//! The checkpoint stores.

use std::collections::HashMap;
use std::sync::Arc;

use quorumtail_oplog::EntryId;
use quorumtail_sink::{
    CheckpointError, CheckpointStore, ConfirmedCheckpoints, FileCheckpointStore,
    KafkaCheckpointConfig, KafkaCheckpointStore,
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
        text.contains("\"version\": 1") && text.contains("\"rs2\""),
        "{text}"
    );
}

#[tokio::test]
async fn file_store_refuses_a_corrupt_file_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    for bad in [
        "{\"version\":1,\"shards\":{\"rs0\":{\"ts\":{\"t\":1}}}}",
        "{\"version\":2,\"shards\":{}}",
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
    let mut cfg = KafkaCheckpointConfig::new(broker.bootstrap.clone());
    let topic = crate::unique("it.checkpoints");
    cfg.topic = topic.clone();
    cfg.replication_factor = 1;
    let store = KafkaCheckpointStore::open(cfg.clone()).await.unwrap();
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
    let again = KafkaCheckpointStore::open(cfg).await.unwrap();
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
    use quorumtail_sink::{run_checkpointer, FileSinkConfig, Sink};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::file(&FileSinkConfig::new(dir.path().join("out.jsonl"))).unwrap();
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
    use quorumtail_sink::CheckpointConfig;
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::json!({"kind": "file", "path": dir.path().join("cp.json")});
    let c: CheckpointConfig = serde_json::from_value(json).unwrap();
    let store = c.open().await.unwrap();
    store.store(&confirmed(&[("rs0", cp(4))])).await.unwrap();
    assert_eq!(store.load().await.unwrap(), map(&[("rs0", cp(4))]));
    let e = serde_json::from_str::<CheckpointConfig>(r#"{"kind":"file","path":"x","topic":"t"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("topic"), "{e}");
    let k: CheckpointConfig =
        serde_json::from_str(r#"{"kind":"kafka","brokers":"b:1","timeout":"5s"}"#).unwrap();
    assert!(
        matches!(k, CheckpointConfig::Kafka(k) if k.topic == "quorumtail.checkpoints"
            && k.timeout == std::time::Duration::from_secs(5))
    );
}

//! Integration tests of quorumtail-sink: the Kafka sink and the Kafka checkpoint store
//! against a real Kafka-protocol broker (tansu on loopback, or `KAFKA_BOOTSTRAP`), the file
//! sink and the file checkpoint store against a temp dir. Tests that pause, kill or restart
//! the broker start a tansu of their own even when `KAFKA_BOOTSTRAP` is set.

mod checkpoints;
mod file;
mod kafka;

use std::sync::Arc;
use std::time::Duration;

use quorumtail_oplog::{EntryId, Timestamp};
use quorumtail_sink::{Marker, OutRecord, ShardProgress};
use quorumtail_testkit::broker;
use tokio::sync::watch;

/// A topic name unique to this test run, so that the suite can run again against the same
/// external broker (`KAFKA_BOOTSTRAP`) without reading an earlier run's records.
pub fn unique(base: &str) -> String {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| format!("{:08x}", rand::random::<u32>()));
    format!("{base}-{run}")
}

/// The checkpoint a test gives seq `n`.
pub fn cp(n: u64) -> EntryId {
    EntryId::new(ts(n), 7)
}

pub fn ts(n: u64) -> Timestamp {
    Timestamp::new(1_700_000_000 + (n / 3) as u32, (n % 3) as u32 + 1)
}

/// A record whose value names its shard and seq.
pub fn record(shard: &str, seq: u64, checkpoint: bool, key: Option<&str>) -> OutRecord {
    OutRecord {
        shard: Arc::from(shard),
        seq,
        checkpoint: checkpoint.then(|| cp(seq)),
        ts: ts(seq),
        op: "i",
        db: "app".into(),
        coll: "users".into(),
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(serde_json::to_vec(&serde_json::json!({"shard": shard, "seq": seq})).unwrap()),
    }
}

pub fn marker(shard: &str, seq: u64) -> Marker {
    Marker {
        shard: Arc::from(shard),
        seq,
        checkpoint: cp(seq),
    }
}

/// Waits (bounded) until the shard's progress satisfies `f`.
pub async fn wait_progress(
    rx: &mut watch::Receiver<ShardProgress>,
    within: Duration,
    what: &str,
    f: impl FnMut(&ShardProgress) -> bool,
) {
    let r = tokio::time::timeout(within, rx.wait_for(f))
        .await
        .map(|r| r.is_ok());
    match r {
        Ok(true) => {}
        Ok(false) => panic!("{what}: the sink went away"),
        Err(_) => panic!(
            "{what}: not reached within {within:?}; progress: {:?}",
            *rx.borrow()
        ),
    }
}

pub fn confirmed_seq(p: &ShardProgress) -> Option<u64> {
    p.confirmed.map(|c| c.seq)
}

//! Measures the Kafka sink's throughput against a running broker.
//!
//! ```text
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo run --release -p quorumtail-sink --example throughput -- 200000
//! ```
//! The topic `quorumtail.throughput` must exist (several partitions make the acks arrive
//! out of order, which is the interesting case for the trackers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumtail_oplog::{EntryId, Timestamp};
use quorumtail_sink::{OutRecord, Sink, SinkConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let mut config = SinkConfig::kafka(bootstrap);
    config.topic = Some("quorumtail.throughput".parse()?);
    let shards: Vec<Arc<str>> = vec!["rs0".into(), "rs1".into()];
    let sink = Sink::kafka(&config, &shards).await?;
    let value = vec![b'x'; 300];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for shard in shards.clone() {
        let tx = sink.sender();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 1..=n / 2 {
                let ts = Timestamp::new(1_700_000_000 + (seq / 1000) as u32, (seq % 1000) as u32);
                tx.send(OutRecord {
                    shard: shard.clone(),
                    seq,
                    checkpoint: Some(EntryId::new(ts, 1)),
                    ts,
                    op: "i",
                    db: "bench".into(),
                    coll: "docs".into(),
                    key: Some(format!("doc-{}", seq % 10_000).into_bytes()),
                    value: Some(value.clone()),
                })
                .await
                .expect("sink open");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let report = sink
        .flush(tokio::time::Instant::now() + Duration::from_secs(120))
        .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{n} records in {secs:.2} s: {:.0} records/s, complete: {}, checkpoints: {:?}",
        n as f64 / secs,
        report.is_complete(),
        report.checkpoints
    );
    Ok(())
}

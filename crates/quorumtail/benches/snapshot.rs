//! Initial snapshot throughput: a simulated 2-shard x 3-member cluster holding N documents
//! of about 1 KB -> quorumtail in this process (`[start] position = "snapshot"`, discovery
//! through the simulated mongos) -> the file sink. Prints documents/s, MB/s of BSON and the
//! time per GB. The simulator runs in the same process and on the same two cores, so the
//! figure is a lower bound for quorumtail against real servers.
//!
//! `cargo bench -p quorumtail --bench snapshot` (SNAPSHOT_DOCS=n, default 200000).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::doc;
use mongosim::{Cluster, ClusterSpec};
use quorumtail::config::Config;
use quorumtail::coordinator::{run_observed, Status};
use tokio_util::sync::CancellationToken;

fn main() {
    let n: i64 = std::env::var("SNAPSHOT_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n));
}

async fn run(n: i64) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        nodes_per_shard: 3,
        noop_interval: Duration::from_secs(1),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    // The simulator splits at 1000: half of the documents on each shard.
    let pad = "x".repeat(960);
    let load = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<bson::Document> = (i..(i + 1000).min(n))
            .map(|k| {
                let id = if k % 2 == 0 {
                    k / 2
                } else {
                    1_000_000_000 + k / 2
                };
                doc! {"_id": id, "n": k, "pad": &pad}
            })
            .collect();
        cluster.insert("bench.docs", batch).await.unwrap();
        i += 1000;
    }
    eprintln!(
        "loaded {n} documents in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    // The snapshot reads at the shards' commit points: wait until they cover the load.
    let loaded = |shard: &str| {
        let newest = cluster
            .primary_of(shard)
            .and_then(|p| cluster.oplog_snapshot(p).last().cloned())
            .and_then(|raw| bson::Document::try_from(raw.as_ref()).ok())
            .and_then(|d| d.get_timestamp("ts").ok());
        let committed = cluster.commit_point(shard).map(|c| c.0);
        matches!((newest, committed), (Some(a), Some(b)) if (b.time, b.increment) >= (a.time, a.increment))
    };
    while !cluster.shard_names().iter().all(|s| loaded(s)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[discovery]\nuri = \"mongodb://{}/\"\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\npath = {:?}\nfsync_every = 100000\n[checkpoint]\npath = {:?}\n[start]\nposition = \"snapshot\"\n",
        cluster.mongos_addr(),
        dir.path().join("out.jsonl").display().to_string(),
        dir.path().join("cp.json").display().to_string(),
    );
    let resolved = Config::parse(&text, Path::new("bench.toml")).unwrap();
    let token = CancellationToken::new();
    let status = Arc::new(Status::default());
    let start = Instant::now();
    let handle = tokio::spawn(run_observed(resolved, token.clone(), status.clone()));
    let (docs, bytes) = loop {
        let shards = status.all();
        let done = shards.len() == 2
            && shards
                .values()
                .all(|s| s.snapshot_collections > 0 && !s.snapshotting);
        if done {
            break shards.values().fold((0, 0), |(d, b), s| {
                (d + s.snapshot_documents, b + s.snapshot_bytes)
            });
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the snapshot did not finish: {shards:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = start.elapsed().as_secs_f64();
    token.cancel();
    let _ = handle.await;
    cluster.shutdown().await;
    assert_eq!(docs, n as u64, "every document once");
    let mb = bytes as f64 / 1e6;
    println!(
        "snapshot of {docs} documents ({mb:.1} MB of BSON) on 2 shards: {secs:.2} s, {:.0} documents/s, {:.1} MB/s, {:.0} s per GB",
        docs as f64 / secs,
        mb / secs,
        1000.0 / (mb / secs)
    );
}

//! `quorumtail demo`: the whole product on a simulated cluster, in one command.
//!
//! 1. starts an in-process mongosim sharded cluster (2 shards x 3 members, mongos,
//!    config server) on free loopback ports;
//! 2. runs quorumtail against it (every member of both shards, majority merge);
//! 3. writes through mongos with the official driver: inserts on both shards, updates,
//!    deletes; migrates a chunk (fromMigrate copies and deletes); then isolates shard01's
//!    primary, writes to it directly (it still accepts writes), lets the majority elect a
//!    new primary and heals the old one, whose writes are rolled back;
//! 4. prints every record as it is emitted, then a summary checked against the
//!    simulator's ground truth: every majority-committed application write emitted once,
//!    in order; no rolled-back or fromMigrate entry emitted.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::doc;
use mongosim::{Cluster, ClusterSpec};
use quorumtail_oplog::{EntryId, Filter, OplogEntry};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Resolved, ResolvedShard, SinkKind, StartPosition};

/// Options of the demo command.
#[derive(Debug)]
pub struct DemoOptions {
    /// Kafka bootstrap servers instead of stdout.
    pub brokers: Option<String>,
    /// Topic template for Kafka.
    pub topic: String,
    /// Writes before the failover.
    pub writes: usize,
}

type Seen = Arc<Mutex<BTreeMap<String, Vec<(EntryId, String)>>>>;

/// Runs the demo; the exit code says whether the ground-truth check passed.
pub async fn demo(opts: DemoOptions) -> ExitCode {
    match run(opts).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let spec = ClusterSpec {
        noop_interval: Duration::from_millis(500),
        election_timeout: Duration::from_millis(800),
        // Chunks (-inf, 500) and [1000, inf) on shard01, [500, 1000) on shard02.
        split_points: Some(vec![bson::Bson::Int32(500), bson::Bson::Int32(1000)]),
        ..ClusterSpec::default()
    };
    let cluster = Cluster::start(spec).await?;
    eprintln!(
        "demo: simulated cluster up: mongos {}",
        cluster.mongos_addr()
    );
    for s in cluster.shard_names() {
        eprintln!(
            "demo:   {s}: {}",
            cluster
                .shard_members(&s)
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let dir = tempfile::tempdir()?;
    let out_path = dir.path().join("records.jsonl");
    std::fs::write(&out_path, b"")?;
    let resolved = demo_config(
        &cluster,
        &opts,
        &out_path,
        &dir.path().join("checkpoints.json"),
    )?;
    let token = CancellationToken::new();
    // Whatever happens below, the pipeline and the record copier stop with the demo.
    let _stop_on_exit = token.clone().drop_guard();
    let status = std::sync::Arc::new(crate::status::Status::default());
    let runner = tokio::spawn(crate::coordinator::run_observed(
        resolved,
        token.clone(),
        status.clone(),
    ));

    // Copy records to stdout as they land, remembering what was emitted.
    let seen: Seen = Arc::default();
    let copier = (opts.brokers.is_none())
        .then(|| spawn_copier(out_path.clone(), seen.clone(), token.clone()));

    let client = mongodb::Client::with_uri_str(format!(
        "mongodb://{}/?appName=quorumtail-demo",
        cluster.mongos_addr()
    ))
    .await?;
    let orders = client
        .database("shop")
        .collection::<bson::Document>("orders");
    let third = opts.writes.div_ceil(3).max(1) as i32;
    for i in 1..=third {
        orders
            .insert_one(doc! { "_id": i, "item": "tea", "qty": 1 })
            .await?;
        orders
            .insert_one(doc! { "_id": 500 + i, "item": "cake", "qty": 1 })
            .await?;
        orders
            .insert_one(doc! { "_id": 1000 + i, "item": "coffee", "qty": 2 })
            .await?;
    }
    orders
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "qty": 5 } })
        .await?;
    orders
        .update_one(doc! { "_id": 1001 }, doc! { "$inc": { "qty": 1 } })
        .await?;
    orders.delete_one(doc! { "_id": 2 }).await?;
    eprintln!(
        "demo: {} inserts, 2 updates, 1 delete written through mongos",
        3 * third
    );

    // A chunk migration: the documents move with fromMigrate inserts and deletes.
    let names = cluster.shard_names();
    let (s1, s2) = (names[0].clone(), names[1].clone());
    cluster
        .move_chunk("shop.orders", bson::Bson::Int32(1), &s2)
        .await?;
    eprintln!("demo: chunk of _id 1 moved from {s1} to {s2} (fromMigrate entries on both shards)");
    // Let the migration's deletes on the donor reach a majority before the failover.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cluster
        .committed_entries(&s1)
        .iter()
        .any(|raw| OplogEntry::parse(raw).is_ok_and(|e| e.from_migrate))
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the migration did not commit on {s1}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Failover: isolate shard01's primary, which still accepts writes that no one else gets.
    let old = cluster
        .primary_of(&s1)
        .ok_or_else(|| anyhow::anyhow!("{s1} has no primary"))?;
    cluster.partition_node(old).await?;
    let direct = mongodb::Client::with_uri_str(format!(
        "mongodb://{old}/?directConnection=true&appName=quorumtail-demo"
    ))
    .await?;
    let doomed = direct
        .database("shop")
        .collection::<bson::Document>("orders");
    let mut doomed_writes = 0;
    for id in [9001, 9002] {
        if doomed
            .insert_one(
                doc! { "_id": id, "item": "phantom", "note": "written to an isolated primary" },
            )
            .await
            .is_ok()
        {
            doomed_writes += 1;
        }
    }
    eprintln!(
        "demo: {s1} primary {old} isolated; it accepted {doomed_writes} write(s) nobody else has"
    );
    let new = wait_for_new_primary(&cluster, &s1, old).await?;
    eprintln!("demo: {new} elected; healing {old}, which rolls back its writes");
    cluster.heal_node(old).await?;

    for i in 0..3 {
        orders
            .insert_one(doc! { "_id": 600 + i, "item": "after failover" })
            .await?;
        orders
            .insert_one(doc! { "_id": 1100 + i, "item": "after failover" })
            .await?;
    }
    // A sentinel per shard: once both are emitted, everything before them is.
    orders
        .insert_one(doc! { "_id": 999, "item": "sentinel" })
        .await?;
    orders
        .insert_one(doc! { "_id": 999_999, "item": "sentinel" })
        .await?;
    wait_until_rolled_back(&cluster, &s1).await;
    drop((orders, doomed));
    quorumtail_tailer::close(client).await;
    quorumtail_tailer::close(direct).await;

    // Done when each shard's confirmed checkpoint (delivered to Kafka, or fsynced) has
    // reached its sentinel's entry: every record before it is out.
    let sentinel_of = |s: &str| {
        cluster
            .committed_entries(s)
            .iter()
            .filter_map(|raw| {
                OplogEntry::parse(raw)
                    .ok()
                    .filter(|e| e.o.and_then(|o| o.get_str("item").ok()) == Some("sentinel"))
                    .map(|e| e.id())
            })
            .next()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let sentinels: Vec<(String, EntryId)> = loop {
        let found: Vec<(String, EntryId)> = names
            .iter()
            .filter_map(|s| sentinel_of(s).map(|id| (s.clone(), id)))
            .collect();
        if found.len() == names.len() {
            break found;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the sentinel writes did not commit on every shard within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !sentinels
        .iter()
        .all(|(s, id)| status.confirmed(s).is_some_and(|c| c.ts >= id.ts))
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "records were not all delivered within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    let report = runner.await??;
    if let Some(c) = copier {
        let _ = c.await;
    }

    // Summary, checked against the simulator's ground truth.
    let filter = Filter::default();
    let mut ok = report.ok();
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    eprintln!();
    eprintln!("demo summary");
    for name in &names {
        let stats = report.shards.get(name).copied().unwrap_or_default();
        let truth: Vec<EntryId> = cluster
            .committed_entries(name)
            .iter()
            .filter_map(|raw| OplogEntry::parse(raw).ok())
            .filter(|e| filter.check(e.op, e.ns, e.from_migrate).is_ok())
            .map(|e| e.id())
            .collect();
        let rolled_back: HashSet<EntryId> = cluster
            .rolled_back_entries(name)
            .iter()
            .filter_map(|raw| OplogEntry::parse(raw).ok())
            .map(|e| e.id())
            .collect();
        let emitted: Vec<EntryId> = seen
            .get(name)
            .map(|v| v.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default();
        let phantoms = emitted.iter().filter(|id| rolled_back.contains(id)).count();
        eprintln!(
            "  {name}: {} records emitted, {} fromMigrate entries dropped, {} no-ops dropped, {} rolled-back entries discarded ({} rolled back in the cluster, {} emitted)",
            stats.records, stats.dropped_from_migrate, stats.dropped_noops, stats.discarded, rolled_back.len(), phantoms
        );
        if opts.brokers.is_none() {
            if emitted != truth {
                ok = false;
                eprintln!(
                    "  {name}: MISMATCH: emitted {} records, the majority-committed history has {}",
                    emitted.len(),
                    truth.len()
                );
            }
            if phantoms > 0 {
                ok = false;
            }
        }
    }
    if opts.brokers.is_none() {
        if ok {
            eprintln!("  verified: every majority-committed application write was emitted exactly once and in order; no rolled-back or fromMigrate entry was emitted");
        } else {
            eprintln!("  VERIFICATION FAILED (see above)");
        }
    }
    for f in report.failed.iter().chain(&report.sink_failures) {
        eprintln!("  error: {f}");
    }
    cluster.shutdown().await;
    Ok(ok)
}

fn demo_config(
    cluster: &Cluster,
    opts: &DemoOptions,
    out: &std::path::Path,
    checkpoints: &std::path::Path,
) -> anyhow::Result<Resolved> {
    let mut text = String::new();
    for s in cluster.shard_names() {
        let members: Vec<String> = cluster
            .shard_members(&s)
            .iter()
            .map(|a: &SocketAddr| format!("\"{a}\""))
            .collect();
        text.push_str(&format!(
            "[[shards]]\nname = \"{s}\"\nmembers = [{}]\n\n",
            members.join(", ")
        ));
    }
    text.push_str("[start]\nposition = \"earliest\"\n\n[mongo]\nmax_await = \"200ms\"\n\n");
    match &opts.brokers {
        None => text.push_str(&format!(
            "[sink]\nkind = \"file\"\npath = {:?}\n\n",
            out.display().to_string()
        )),
        Some(b) => text.push_str(&format!(
            "[sink]\nkind = \"kafka\"\nbrokers = {b:?}\ntopic = {:?}\n\n",
            opts.topic
        )),
    }
    text.push_str(&format!(
        "[checkpoint]\npath = {:?}\ninterval = \"200ms\"\n",
        checkpoints.display().to_string()
    ));
    let resolved = Config::parse(&text, std::path::Path::new("demo.toml"))?;
    debug_assert!(matches!(resolved.start, StartPosition::Earliest));
    debug_assert!(resolved
        .shards
        .iter()
        .all(|s: &ResolvedShard| s.quorum.quorum == 2));
    debug_assert!(opts.brokers.is_some() || resolved.config.sink.kind == SinkKind::File);
    Ok(resolved)
}

async fn wait_for_new_primary(
    cluster: &Cluster,
    shard: &str,
    old: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = cluster.primary_of(shard) {
            if p != old {
                return Ok(p);
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no new primary was elected in {shard} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until_rolled_back(cluster: &Cluster, shard: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while cluster.rolled_back_entries(shard).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Follows the record file, copying lines to stdout and remembering each record's
/// identity, until `stop` and the file is drained.
fn spawn_copier(
    path: std::path::PathBuf,
    seen: Seen,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let Ok(file) = std::fs::File::open(&path) else {
            return;
        };
        let mut reader = std::io::BufReader::new(file);
        let stdout = std::io::stdout();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    if stop.is_cancelled() {
                        // One last pass happens on the next loop if data arrived meanwhile.
                        if reader.read_line(&mut line).map(|n| n == 0).unwrap_or(true) {
                            return;
                        }
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
                Ok(_) => {}
            }
            if !line.ends_with('\n') {
                // A partial line: wait for the rest.
                let mut rest = String::new();
                while !rest.ends_with('\n') {
                    match reader.read_line(&mut rest) {
                        Ok(0) => std::thread::sleep(Duration::from_millis(10)),
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
                line.push_str(&rest);
            }
            let _ = stdout.lock().write_all(line.as_bytes());
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let shard = v["shard"].as_str().unwrap_or_default().to_owned();
                if let Ok(id) = serde_json::from_value::<EntryId>(v["id"].clone()) {
                    let item = v["entry"]["o"]["item"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if let Ok(mut s) = seen.lock() {
                        s.entry(shard).or_default().push((id, item));
                    }
                }
            }
        }
    })
}

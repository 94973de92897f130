//! Nemesis: quorumtail proven the way Jepsen proves databases. A workload writes through
//! mongos, a nemesis injects faults into the simulated cluster and into quorumtail itself
//! (the real binary, killed with SIGKILL and stopped with SIGTERM), and a checker compares
//! every record of every run with the simulator's ground truth, which follows MongoDB's
//! commit point. The shards' member layout (hidden voters, non-voters, a delayed member, an
//! arbiter, five voters) is drawn from the seed.
//!
//! ```text
//!  clients ──writes, transactions──► mongos ─► shard01 / shard02 / (added shard)
//!     │                              │ every member tailed       ◄── nemesis: kill,
//!     ▼ history                      ▼                               partition, lag, step
//!  (acked / aborted /          quorumtail (subprocess, restarted)    down, figure 8,
//!   indeterminate)                   │ produces                      reconfig, lagging
//!                                    ▼                               commit point, chained
//!                     proxy ──► tansu (Kafka protocol)               sync, move chunks,
//!                                    │ consumer, run markers         add/remove shards,
//!                                    ▼                               kill mongos / config
//!                                 checker ◄── ground truth           members, kill -9 /
//!                                             (committed, rolled     SIGTERM quorumtail,
//!                                             back, fromMigrate)     broker outage / pause
//! ```
//!
//! Settings (environment): `NEMESIS_SEED` (a number, or `random`; default 1),
//! `NEMESIS_LAYOUT` (instead of the seed's layout), `NEMESIS_WRITES` (default 2000),
//! `NEMESIS_SECONDS` (schedule length, default 40), `NEMESIS_CLIENTS` (default 8),
//! `NEMESIS_TXN_CLIENTS` (default 2), `NEMESIS_RATE` (writes/s; default writes/seconds, 0
//! for as fast as possible), `NEMESIS_BROKER_STORAGE` (`s3` or `memory`),
//! `NEMESIS_RELEASE` (quorumtail's release rule, for the control run), `NEMESIS_SHAPES`
//! (`0`: no deleteMany / time-series / DDL client), `NEMESIS_VERSION` (the simulated
//! server version, default 7.0). See docs/nemesis.md.

use quorumtail_testkit::broker;
mod checker;
mod findings;
mod kafka;
mod nemesis;
mod proxy;
mod qt;
mod shapes;
mod topology;
mod workload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongosim::{Cluster, ClusterSpec};
use quorumtail_oplog::OplogEntry;

use checker::{check, committed_transactions, txn_op_key, Segment, ShardTruth};
use kafka::Kafka;
use nemesis::{schedule, Fault, Nemesis};
use qt::{Ended, Quorumtail, Stopped};
use topology::Layout;
use workload::{History, Outcome, TxnOutcome, WriteKind};

/// Chunks of `shop.orders`.
const CHUNKS: i32 = 32;

/// `(op, _id, tag)` of a transaction's operation (see [`txn_op_key`]).
type OpKey = (String, String, Option<i64>);

/// `(op, _id, tag)` of every operation of the transactions the ground truth committed.
fn committed_txn_ops(entries: &[bson::RawDocumentBuf]) -> HashSet<OpKey> {
    committed_transactions(entries)
        .into_iter()
        .flat_map(|(_, ops)| ops)
        .filter_map(|op| txn_op_key(&bson::Bson::Document(op).into_relaxed_extjson()))
        .collect()
}

/// The key of a workload transaction's operation, as [`txn_op_key`] reads it.
fn txn_key(tag: i64, op: &(WriteKind, i32, i32)) -> OpKey {
    let id = serde_json::json!(op.1).to_string();
    match op.0 {
        WriteKind::Insert => ("i".into(), id, Some(tag)),
        WriteKind::Update => ("u".into(), id, Some(tag)),
        WriteKind::Delete => ("d".into(), id, None),
    }
}

/// What the transactions show against the ground truth and the output.
#[derive(Debug, Default)]
struct TxnVerdict {
    committed: usize,
    aborted: usize,
    failed: usize,
    failed_committed: usize,
    ops_checked: usize,
    failures: Vec<String>,
}

fn check_txns(txns: &[workload::Txn], truth: &HashSet<OpKey>, segments: &[Segment]) -> TxnVerdict {
    let mut v = TxnVerdict::default();
    // Emitted transaction operations: key -> commit identities of the records.
    let mut out: HashMap<OpKey, HashSet<(String, String)>> = HashMap::new();
    let mut out_tags: HashSet<i64> = HashSet::new();
    for seg in segments {
        for (_, r) in &seg.records {
            if let Some(k) = txn_op_key(&r["entry"]) {
                if let Some(t) = k.2 {
                    out_tags.insert(t);
                }
                if r["txn"].is_object() {
                    out.entry(k).or_default().insert((
                        r["shard"].as_str().unwrap_or_default().to_owned(),
                        r["id"].to_string(),
                    ));
                }
            }
        }
    }
    let truth_tags: HashSet<i64> = truth.iter().filter_map(|k| k.2).collect();
    let (mut missing_truth, mut missing_out, mut split, mut aborted_seen) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut partial = Vec::new();
    for t in txns {
        let keys: Vec<_> = t.ops.iter().map(|op| txn_key(t.tag, op)).collect();
        match &t.outcome {
            TxnOutcome::Committed => {
                v.committed += 1;
                // (shard, commit identity): one per shard. A transaction that wrote on two
                // shards (the workload writes a second chunk in a third of them, and chunks
                // move) commits with two-phase commit: each shard logs its part and emits it
                // at its own commitTransaction entry.
                let mut ids: HashSet<(String, String)> = HashSet::new();
                for k in &keys {
                    v.ops_checked += 1;
                    if !truth.contains(k) {
                        missing_truth.push(format!("tag {} {k:?}", t.tag));
                    }
                    match out.get(k) {
                        None => missing_out.push(format!("tag {} {k:?}", t.tag)),
                        Some(c) => ids.extend(c.iter().cloned()),
                    }
                }
                let shards: HashSet<&String> = ids.iter().map(|(s, _)| s).collect();
                if ids.len() > shards.len() {
                    split.push(format!("tag {}: commit identities {ids:?}", t.tag));
                }
            }
            TxnOutcome::Aborted => {
                v.aborted += 1;
                if truth_tags.contains(&t.tag) {
                    missing_truth.push(format!("aborted tag {} is in the committed oplog", t.tag));
                }
                if out_tags.contains(&t.tag) {
                    aborted_seen.push(format!(
                        "tag {} at {:.2}s ({:?})",
                        t.tag,
                        t.at.as_secs_f64(),
                        t.ops
                    ));
                }
            }
            TxnOutcome::Failed(_) => {
                v.failed += 1;
                let tagged: Vec<_> = keys.iter().filter(|k| k.2.is_some()).collect();
                let n = tagged.iter().filter(|k| truth.contains(k)).count();
                if n > 0 {
                    v.failed_committed += 1;
                }
                if n > 0 && n < tagged.len() {
                    partial.push(format!("tag {}: {n} of {} operations", t.tag, tagged.len()));
                }
            }
        }
    }
    let mut class = |name: &str, list: Vec<String>| {
        if !list.is_empty() {
            let ex: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
            v.failures
                .push(format!("{} {name}: {}", list.len(), ex.join("; ")));
        }
    };
    class(
        "operations of acknowledged transactions missing from the committed oplog (mongosim)",
        missing_truth,
    );
    class("transactions committed only in part (mongosim)", partial);
    class(
        "operations of committed transactions never emitted",
        missing_out,
    );
    class(
        "committed transactions emitted under more than one commit identity on one shard",
        split,
    );
    class("aborted transactions emitted", aborted_seen);
    v
}

#[derive(Debug, Clone)]
struct Settings {
    seed: u64,
    writes: usize,
    seconds: u64,
    clients: usize,
    txn_clients: usize,
    rate: f64,
    /// The shards' member layout: the seed's, or `NEMESIS_LAYOUT`.
    layout: Layout,
    /// Whether the deleteMany / time-series / DDL client runs (`NEMESIS_SHAPES=0`: not).
    shapes: bool,
    /// The simulated server version (`NEMESIS_VERSION`, default 7.0): the oplog shapes
    /// of batched deletes (7.0+) and vectored inserts (8.0) depend on it.
    version: mongosim::ServerVersion,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let seed = match std::env::var("NEMESIS_SEED").as_deref() {
            Ok("random") => rand::random::<u32>() as u64,
            Ok(s) => s
                .parse()
                .unwrap_or_else(|_| panic!("NEMESIS_SEED={s:?} is not a number")),
            Err(_) => 1,
        };
        let writes = env_num("NEMESIS_WRITES", 2000usize);
        let seconds = env_num("NEMESIS_SECONDS", 40u64).max(10);
        Settings {
            seed,
            writes,
            seconds,
            clients: env_num("NEMESIS_CLIENTS", 8usize).max(1),
            txn_clients: env_num("NEMESIS_TXN_CLIENTS", 2usize),
            rate: env_num("NEMESIS_RATE", writes as f64 / seconds as f64),
            layout: Layout::from_env(seed),
            shapes: env_num("NEMESIS_SHAPES", 1u8) != 0,
            version: match std::env::var("NEMESIS_VERSION") {
                Ok(v) => v.parse().unwrap_or_else(|e| panic!("NEMESIS_VERSION: {e}")),
                Err(_) => mongosim::ServerVersion::V7_0,
            },
        }
    }

    fn command(&self) -> String {
        let layout = if self.layout == Layout::from_seed(self.seed) {
            String::new()
        } else {
            format!("NEMESIS_LAYOUT={} ", self.layout.name())
        };
        let mut extra = String::new();
        if self.version != mongosim::ServerVersion::V7_0 {
            extra.push_str(&format!("NEMESIS_VERSION={} ", self.version));
        }
        if !self.shapes {
            extra.push_str("NEMESIS_SHAPES=0 ");
        }
        format!(
            "NEMESIS_SEED={} {layout}{extra}NEMESIS_WRITES={} NEMESIS_SECONDS={} NEMESIS_CLIENTS={} NEMESIS_TXN_CLIENTS={} NEMESIS_RATE={} cargo test --release -p quorumtail --test nemesis -- --nocapture",
            self.seed, self.writes, self.seconds, self.clients, self.txn_clients, self.rate
        )
    }
}

/// `(op, _id, version)` of every committed application entry, to resolve the writes.
fn committed_writes(truth_entries: &[bson::RawDocumentBuf]) -> HashSet<(String, String, i64)> {
    truth_entries
        .iter()
        .filter_map(|raw| {
            let e = OplogEntry::parse(raw).ok()?;
            quorumtail_testkit::emitted_by_default(e.op.as_str(), e.ns, e.from_migrate)
                .then_some(())?;
            let doc = bson::Document::try_from(raw.as_ref()).ok()?;
            let json = bson::Bson::Document(doc).into_relaxed_extjson();
            let (_, id, v) = checker::doc_version(&json)?;
            Some((json["op"].as_str()?.to_owned(), id, v))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_faults_lose_nothing_and_emit_no_phantoms() {
    quorumtail_testkit::truth::init_logs();
    let s = Settings::from_env();
    eprintln!(
        "nemesis seed {} ({s:?})\nshard layout: {}\nreproduce: {}",
        s.seed,
        s.layout.describe(),
        s.command()
    );
    let tmp = tempfile::tempdir().unwrap();
    let kafka = Arc::new(Kafka::start(tmp.path()).await);
    let broker_restart = kafka::broker_restart_wanted();
    assert!(
        !broker_restart || kafka.storage.persistent,
        "NEMESIS_BROKER_RESTART=1 needs a storage that survives a restart: NEMESIS_BROKER_STORAGE=s3"
    );
    eprintln!(
        "broker: tansu behind a proxy at {}, storage {}{}",
        kafka.bootstrap(),
        kafka.storage.engine,
        if broker_restart {
            ""
        } else {
            " (BrokerRestart not scheduled: NEMESIS_BROKER_RESTART=1; see docs/nemesis.md)"
        }
    );
    let episodes = schedule(s.seed, s.seconds, broker_restart);
    let scheduled: BTreeMap<Fault, usize> = episodes.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.fault).or_default() += 1;
        m
    });
    eprintln!(
        "schedule: {:?}",
        episodes.iter().map(|e| e.fault).collect::<Vec<_>>()
    );

    let cluster = Cluster::start(ClusterSpec {
        version: s.version,
        election_timeout: Duration::from_millis(400),
        noop_interval: Duration::from_millis(500),
        split_points: Some(workload::split_points(CHUNKS)),
        // Transactions of more than 2 operations are logged as partialTxn chains.
        max_txn_ops_per_entry: Some(2),
        // A config server replica set of 3: killing its primary elects another.
        config_servers: 3,
        // Every shard (but one added during the run) has the layout the seed drew.
        members: Some(s.layout.members()),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let mut qt = Quorumtail::new(tmp.path(), cluster.mongos_addr(), kafka.clone());
    qt.spawn();

    let t0 = Instant::now();
    let history = Arc::new(History::default());
    let shape_ops = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = mongodb::Client::with_uri_str(format!(
        "mongodb://{}/?w=majority&wtimeoutMS=3000&serverSelectionTimeoutMS=5000",
        cluster.mongos_addr()
    ))
    .await
    .unwrap();
    let coll = client
        .database("shop")
        .collection::<bson::Document>("orders");
    let readings_created = t0.elapsed();
    if s.shapes {
        shapes::create_readings(&client)
            .await
            .expect("the time-series collection is created before the faults begin");
        shape_ops.lock().unwrap().push(shapes::ShapeOp {
            shape: shapes::Shape::Ddl {
                command: "create",
                coll: shapes::READINGS.to_owned(),
            },
            outcome: Outcome::Ok { n: 1 },
            at: readings_created,
        });
    }
    let period = (s.rate > 0.0).then(|| Duration::from_secs_f64(s.clients as f64 / s.rate));
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..s.clients {
        clients.spawn(workload::client(workload::Client {
            index,
            clients: s.clients,
            seed: s.seed,
            period,
            coll: coll.clone(),
            history: history.clone(),
            stop: stop.clone(),
            t0,
        }));
    }

    for index in 0..s.txn_clients {
        clients.spawn(workload::txn_client(workload::TxnClient {
            index,
            clients: s.txn_clients,
            seed: s.seed,
            period: period.map(|p| p * 2),
            chunks: CHUNKS,
            client: client.clone(),
            coll: coll.clone(),
            history: history.clone(),
            stop: stop.clone(),
            t0,
        }));
    }

    // deleteMany, time-series inserts and DDL (see `shapes`), one client beside the
    // others at a transaction client's pace.
    if s.shapes {
        clients.spawn(shapes::client(shapes::ShapesClient {
            seed: s.seed,
            period: period.map(|p| p * 2),
            client: client.clone(),
            ops: shape_ops.clone(),
            stop: stop.clone(),
            t0,
        }));
    }

    let mut errors: Vec<String> = Vec::new();
    let mut n = Nemesis::new(&cluster, &mut qt, history.clone(), t0);
    n.remove_while_down = std::env::var("NEMESIS_REMOVE_WHILE_DOWN").is_ok_and(|v| v == "1");
    n.note(None, format!("workload started: {} clients", s.clients));
    for ep in &episodes {
        if let Err(e) = n.run(ep).await {
            errors.push(format!("nemesis, {:?}: {e}", ep.fault));
            break;
        }
    }
    // The workload runs until the schedule is done and the writes are all made.
    let budget = Duration::from_secs_f64(s.writes as f64 / s.rate.max(1.0) * 3.0 + 300.0);
    if errors.is_empty() {
        if let Err(e) = nemesis::wait_for(budget.as_secs(), "the workload's writes", || {
            history.attempts.load(Ordering::SeqCst) >= s.writes
        })
        .await
        {
            errors.push(e);
        }
    }
    stop.store(true, Ordering::SeqCst);
    while clients.join_next().await.is_some() {}
    n.note(
        None,
        format!(
            "workload stopped: {} writes",
            history.attempts.load(Ordering::SeqCst)
        ),
    );
    if errors.is_empty() {
        if let Err(e) = n.converge().await {
            errors.push(e);
        }
    }
    if errors.is_empty() || n.remove_while_down {
        if let Err(e) = n.drained(120).await {
            errors.push(e);
        }
    }
    let all_shards = n.all.clone();
    let done = n.done.clone();
    let doomed_acked = n.doomed_acked;
    let majority_held = std::mem::take(&mut n.majority_held);
    let figure_eights = n.figure_eights;
    let mut exits = std::mem::take(&mut n.exits);
    let log = std::mem::take(&mut n.log);
    drop(n);
    match qt.terminate().await {
        Ok(Stopped::Graceful(_)) => {}
        Ok(Stopped::Failed(what)) => {
            errors.push(format!("final stop: quorumtail had {what}"));
            exits.push(what);
        }
        Err(e) => errors.push(format!("final stop: {e}")),
    }

    // The checker reads every record back: each run's records lie between its
    // predecessor's markers and its own.
    let boundaries: Vec<BTreeMap<i32, i64>> = qt.runs.iter().map(|r| r.boundary.clone()).collect();
    if let Some(last) = boundaries.last() {
        if let Err(e) = kafka.read_past(last, 120).await {
            errors.push(e);
        }
    }
    let (run_records, boundary_problems) = kafka.runs(&boundaries);
    let segments: Vec<Segment> = qt
        .runs
        .iter()
        .zip(run_records)
        .map(|(r, records)| Segment {
            records,
            crashed: r.ended.crashed(),
            checkpoints: r.checkpoints.clone(),
        })
        .collect();
    let truth: BTreeMap<String, ShardTruth> = all_shards
        .iter()
        .map(|sh| {
            let mut t = ShardTruth::read(&cluster, sh);
            t.majority_held = majority_held.get(sh).cloned().unwrap_or_default();
            (sh.clone(), t)
        })
        .collect();
    let verdict = check(&segments, &truth);
    let mut truth_txn_ops = HashSet::new();
    for sh in &all_shards {
        truth_txn_ops.extend(committed_txn_ops(&cluster.committed_entries(sh)));
    }
    let txns = history.txns.lock().unwrap().clone();
    let tv = check_txns(&txns, &truth_txn_ops, &segments);
    let mut shape_truth = shapes::ShapeTruth::default();
    for sh in &all_shards {
        shape_truth.add(&cluster.committed_entries(sh));
    }
    let sv = shapes::check(&shape_ops.lock().unwrap(), &shape_truth, &segments);

    // The writes against the ground truth.
    let mut committed = HashSet::new();
    for sh in &all_shards {
        committed.extend(committed_writes(&cluster.committed_entries(sh)));
    }
    let writes = history.writes.lock().unwrap().clone();
    let key = |w: &workload::Write| {
        let op = match w.kind {
            WriteKind::Insert => "i",
            WriteKind::Update => "u",
            WriteKind::Delete => "d",
        };
        let v = if w.kind == WriteKind::Delete {
            i64::MAX
        } else {
            w.version as i64
        };
        (op.to_owned(), w.id.to_string(), v)
    };
    let (mut acked, mut acked_noop, mut indeterminate, mut indet_committed) = (0, 0, 0, 0);
    let mut causes: BTreeMap<String, usize> = BTreeMap::new();
    let mut acked_missing = Vec::new();
    let mut doomed_committed = Vec::new();
    for w in &writes {
        let in_truth = committed.contains(&key(w));
        if w.direct {
            if in_truth {
                doomed_committed.push(format!("{w:?}"));
            }
            continue;
        }
        match &w.outcome {
            Outcome::Ok { n: 0 } => acked_noop += 1,
            Outcome::Ok { .. } => {
                acked += 1;
                if !in_truth {
                    acked_missing.push(format!("{w:?}"));
                }
            }
            Outcome::Failed(e) => {
                indeterminate += 1;
                indet_committed += usize::from(in_truth);
                *causes.entry(workload::cause(e)).or_default() += 1;
            }
            Outcome::TimedOut => {
                indeterminate += 1;
                *causes.entry("client timeout".into()).or_default() += 1;
                indet_committed += usize::from(in_truth);
            }
        }
    }

    // The report.
    let mut by_kind: BTreeMap<Fault, usize> = BTreeMap::new();
    for l in &log {
        if let Some(f) = l.fault {
            *by_kind.entry(f).or_default() += 1;
        }
    }
    let kills = qt.runs.iter().filter(|r| r.ended == Ended::Killed).count();
    let exited = qt
        .runs
        .iter()
        .filter(|r| matches!(r.ended, Ended::Exited(..)))
        .count();
    println!("\n=== nemesis report (seed {}) ===", s.seed);
    println!("reproduce: {}", s.command());
    println!("fault log:");
    for l in &log {
        println!("  {:>8.2}s  {}", l.at.as_secs_f64(), l.what);
    }
    println!("faults injected by kind:");
    for (k, v) in &by_kind {
        println!("  {k:?}: {v}");
    }
    println!(
        "writes: {} attempted through mongos, {} acknowledged ({} matched nothing), {} indeterminate ({} of them committed); {} direct writes that must roll back (to isolated primaries, figure 8's X; {} acknowledged)",
        writes.iter().filter(|w| !w.direct).count(),
        acked + acked_noop,
        acked_noop,
        indeterminate,
        indet_committed,
        writes.iter().filter(|w| w.direct).count(),
        doomed_acked,
    );
    let span = writes.iter().map(|w| w.at).max().unwrap_or_default();
    println!(
        "writes spanned {:.1} s; indeterminate by cause: {causes:?}",
        span.as_secs_f64()
    );
    println!(
        "ground truth (MongoDB's commit point): {} expected records (committed application entries and operations of committed transactions), {} rolled back, {} fromMigrate, over {} shards ({}); shard layout {}",
        verdict.committed_app,
        verdict.rolled_back,
        verdict.from_migrate,
        all_shards.len(),
        all_shards.join(", "),
        s.layout.describe()
    );
    println!(
        "held by a write majority of voters while not committed (seen at the peak of {} figure-8 double failovers): {} entries, {} of them rolled back, {} committed later",
        figure_eights,
        majority_held.values().map(HashSet::len).sum::<usize>(),
        verdict.rolled_back_majority_held,
        verdict.majority_held_committed
    );
    println!(
        "transactions: {} committed ({} operations checked), {} aborted, {} indeterminate ({} of them committed); {} committed transactions in the ground truth",
        tv.committed, tv.ops_checked, tv.aborted, tv.failed, tv.failed_committed, verdict.txns
    );
    println!(
        "deleteMany / time-series / DDL: {} deleteMany groups ({} documents' deletes in Kafka, {} of them from applyOps batches; {} inserts from vectored inserts), {} measurements, {} DDL operations; {} of these operations indeterminate",
        sv.groups, sv.group_docs_deleted, sv.batched_deletes, sv.vectored_inserts, sv.measurements, sv.ddl, sv.indeterminate
    );
    println!(
        "quorumtail: {} runs ({} ended by kill -9, {} exited on its own and were restarted), {} records ({} read from Kafka), {} distinct",
        qt.runs.len(),
        kills,
        exited,
        verdict.records,
        kafka.tail.records(),
        verdict.distinct
    );
    for e in &exits {
        println!("  quorumtail {e}");
    }
    println!(
        "broker: {} restarts; proxy connections closed with requests unanswered: {}",
        kafka.restarts.load(Ordering::SeqCst),
        kafka.proxy.abandoned()
    );
    println!(
        "checker: lost {}, phantom {}, duplicates {} ({} inside restart windows, {} outside), per-shard order violations {}, per-document order violations {} within a shard, {} across shards (known limit of per-shard order)",
        verdict.lost.len(),
        verdict.phantom.len(),
        verdict.dup_in_window + verdict.dup_outside.len(),
        verdict.dup_in_window,
        verdict.dup_outside.len(),
        verdict.shard_order.len(),
        verdict.doc_order_same_shard.len(),
        verdict.doc_order_cross_shard
    );

    let mut failures = errors;
    failures.extend(verdict.failures());
    failures.extend(tv.failures.iter().cloned());
    failures.extend(sv.failures.iter().cloned());
    for (what, list) in [
        ("records outside every run", boundary_problems),
        ("unreadable values or gaps in the topic", kafka.bad()),
    ] {
        if !list.is_empty() {
            failures.push(format!(
                "{} {what}: {}",
                list.len(),
                list.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
    }
    if !acked_missing.is_empty() {
        failures.push(format!(
            "{} acknowledged (w: majority) writes are missing from the committed history (mongosim): {}",
            acked_missing.len(),
            acked_missing.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    if !doomed_committed.is_empty() {
        failures.push(format!(
            "writes that must roll back (to an isolated primary, or figure 8's X) were committed: {}",
            doomed_committed.join("; ")
        ));
    }
    for (k, want) in &scheduled {
        let got = done.get(k).copied().unwrap_or(0);
        if failures.is_empty() && got < *want {
            failures.push(format!("{k:?}: {got} of {want} scheduled episodes ran"));
        }
    }
    if failures.is_empty() {
        // A nemesis that injected nothing proves nothing.
        if scheduled.contains_key(&Fault::PartitionPrimary) && verdict.rolled_back == 0 {
            failures.push("no entry was rolled back".into());
        }
        if figure_eights > 0 && verdict.rolled_back_majority_held == 0 {
            failures.push(
                "figure 8 ran but no entry a write majority of voters held was rolled back".into(),
            );
        }
        if scheduled.contains_key(&Fault::MoveChunk) && verdict.from_migrate == 0 {
            failures.push("no fromMigrate entry was written".into());
        }
        if scheduled.contains_key(&Fault::QuorumtailKill9) && kills == 0 {
            failures.push("quorumtail was never killed".into());
        }
        if s.txn_clients > 0 && (tv.committed == 0 || tv.aborted == 0) {
            failures.push(format!(
                "transactions: {} committed, {} aborted; the run needs both",
                tv.committed, tv.aborted
            ));
        }
        if s.shapes && (sv.group_docs_deleted == 0 || sv.measurements == 0 || sv.ddl < 2) {
            failures.push(format!(
                "deleteMany / time-series / DDL: {} deletes, {} measurements, {} DDL operations; the run needs each",
                sv.group_docs_deleted, sv.measurements, sv.ddl
            ));
        }
        if indeterminate == 0 {
            eprintln!("note: no write was indeterminate");
        }
    }
    if !failures.is_empty() {
        println!("quorumtail log (last lines):\n{}", qt.log_tail(40));
    }
    if !failures.is_empty() {
        println!(
            "tansu log (last lines):\n{}",
            kafka.broker.lock().unwrap().log_tail(20)
        );
    }
    kafka.stop();
    cluster.shutdown().await;
    assert!(
        failures.is_empty(),
        "nemesis seed {} failed:\n  {}\nreproduce: {}",
        s.seed,
        failures.join("\n  "),
        s.command()
    );
    println!("verdict: PASS (seed {})", s.seed);
}

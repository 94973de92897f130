//! The coordinator: from a validated configuration to running shard pipelines, a sink,
//! checkpoints, topology discovery and a graceful shutdown.
//!
//! ```text
//!   config ─► checkpoint store ─load─► per-shard resume points
//!      │
//!      ├─► sink (file | kafka) ◄──────────────────── records + markers ─┐
//!      │     └─ confirmed checkpoints ─► checkpointer ─► store (every `interval`)
//!      │                                                                 │
//!      └─► topology (static + discovery) ─► one shard pipeline each ─────┘
//!
//!   shutdown (SIGINT/SIGTERM or caller): stop tailers ─► pipelines return ─►
//!   sink.flush(deadline) ─► final checkpoint ─► exit code
//! ```
//!
//! A shard that stops with a definite error stays stopped while the others run; the run
//! then ends with a non-zero status. A definite sink error (authorization, message too
//! large) stops everything: no shard could make progress past it.
//!
//! Removed shards. A shard that leaves the topology while quorumtail runs is drained: its
//! pipeline keeps reading until a quorum of its members has nothing newer and nothing is
//! pending, then stops. Each shard's membership is stored next to its checkpoint, so a shard
//! that was removed while quorumtail was stopped (it has a checkpoint but is not in the
//! topology at startup or after a discovery) is drained the same way, with its remembered
//! members. Once everything a drained shard emitted is confirmed by the sink, the shard is
//! marked drained in the checkpoint store: later starts neither drain nor report it. A shard
//! whose members cannot be reached stays draining, loudly (an error every minute, `/readyz`
//! not ready), and its checkpoint is never forgotten.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use quorumtail_oplog::EntryId;
use quorumtail_sink::{CheckpointStore, ShardMembership, Sink, SinkError, StoredShards};
use quorumtail_tailer::TailerConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Resolved, SinkKind};
pub use crate::discovery::{Discovery, MemberAccess};
use crate::pipeline::stats::StatsSnapshot;
use crate::pipeline::{ShardSpec, Shared};
pub use crate::status::{DrainState, Draining, Status};

mod running;
use running::Running;

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Counters per shard.
    pub shards: BTreeMap<String, StatsSnapshot>,
    /// Shards that stopped with a definite error.
    pub failed: Vec<String>,
    /// The sink's definite errors.
    pub sink_failures: Vec<String>,
    /// Records not confirmed when the shutdown deadline passed (re-read after a restart).
    pub unconfirmed: usize,
    /// The final checkpoints stored.
    pub checkpoints: BTreeMap<String, EntryId>,
    /// Removed shards read to their end and marked drained in the checkpoint store.
    pub drained: Vec<String>,
}

impl RunReport {
    /// Whether the run ended cleanly.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.sink_failures.is_empty()
    }
}

/// Errors that prevent a run from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The sink could not start.
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    /// The checkpoint store could not be read.
    #[error("checkpoint store: {0}")]
    Checkpoint(#[from] quorumtail_sink::CheckpointError),
    /// Discovery failed at startup with no static shards to fall back on.
    #[error("discovery: {0}")]
    Discovery(String),
    /// `[checkpoint] require_existing = true` and the store holds no checkpoint.
    #[error("checkpoint.require_existing: the checkpoint store ({store}) holds no checkpoint, so the state of the previous run is missing (a container recreated without its volume? a changed path or topic?). Restore it there, or, if this is the first start, set require_existing = false for that start (every shard then starts from [start] position)")]
    MissingState {
        /// The file or topic.
        store: String,
    },
    /// The initial snapshot could not be planned.
    #[error("{0}")]
    Snapshot(#[from] crate::snapshot::PlanError),
    /// The HTTP endpoints could not listen.
    #[error("http.listen {addr}: {source}; choose a free address or remove [http]")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the pipeline until `shutdown` is cancelled (or every shard stopped).
///
/// # Errors
/// [`RunError`] when the sink, the checkpoint store or the initial discovery fail.
pub async fn run(cfg: Resolved, shutdown: CancellationToken) -> Result<RunReport, RunError> {
    run_observed(cfg, shutdown, Arc::default()).await
}

/// [`run`], publishing live counters into `status`.
///
/// # Errors
/// As [`run`].
pub async fn run_observed(
    cfg: Resolved,
    shutdown: CancellationToken,
    status: Arc<Status>,
) -> Result<RunReport, RunError> {
    let (_tx, rx) = mpsc::channel(1);
    run_controlled(cfg, shutdown, status, rx).await
}

/// Requests to a running coordinator (the binary sends them on signals).
#[derive(Debug)]
pub enum Command {
    /// Store the confirmed checkpoints now (SIGUSR1).
    ForceCheckpoint,
    /// Apply the topology of a re-read, already validated configuration (SIGHUP). Other
    /// settings take effect at the next start.
    Reload(Box<Resolved>),
    /// Copy collections again on running shards (`quorumtail snapshot`, `POST /snapshot`).
    Snapshot(SnapshotCommand),
}

/// A snapshot on request: which shards (empty: every running one) and which collections
/// (`db.coll`; empty: every one the filter keeps). The reply names the shards that took
/// the request, or says why none did.
#[derive(Debug)]
pub struct SnapshotCommand {
    /// Shard names; empty: every running shard.
    pub shards: Vec<String>,
    /// Namespaces; empty: every collection the filter keeps.
    pub namespaces: Vec<String>,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<String>, String>>,
}

/// Where a shard (re)started now resumes: its latest confirmed checkpoint, else the one
/// loaded at startup.
fn positions(stored: &HashMap<Arc<str>, EntryId>, sink: &Sink) -> HashMap<Arc<str>, EntryId> {
    let mut all = stored.clone();
    for (k, v) in sink.checkpoints().iter() {
        all.insert(k.clone(), *v);
    }
    all
}

/// The static `[[shards]]` of a configuration.
fn static_shards(cfg: &Resolved) -> Vec<ShardSpec> {
    cfg.shards
        .iter()
        .map(|s| ShardSpec {
            name: s.name.as_str().into(),
            replica_set: Some(s.name.clone()),
            members: s.members.clone(),
            listed: true,
            arbiters: s.arbiters,
            quorum: cfg
                .config
                .shards
                .iter()
                .find(|x| x.name == s.name)
                .and_then(|x| x.quorum),
        })
        .collect()
}

/// What the checkpoint store remembers of a shard's membership.
fn membership_of(spec: &ShardSpec) -> ShardMembership {
    ShardMembership {
        replica_set: spec.replica_set.clone(),
        members: spec.members.clone(),
        arbiters: spec.arbiters,
        quorum: spec.quorum,
    }
}

/// A shard from its remembered membership.
fn spec_from(name: &Arc<str>, m: &ShardMembership) -> ShardSpec {
    ShardSpec {
        name: name.clone(),
        replica_set: m.replica_set.clone(),
        members: m.members.clone(),
        arbiters: m.arbiters,
        quorum: m.quorum,
        listed: false,
    }
}

/// The whole topology: static shards, then discovered ones not defined statically (a static
/// definition wins, e.g. to list hidden members or set a quorum).
fn topology(static_shards: &[ShardSpec], discovered: Vec<ShardSpec>) -> Vec<ShardSpec> {
    let mut all = static_shards.to_vec();
    for s in discovered {
        if !all.iter().any(|x| x.name == s.name) {
            all.push(s);
        }
    }
    all
}

/// [`run_observed`], also taking [`Command`]s.
///
/// # Errors
/// As [`run`].
pub async fn run_controlled(
    cfg: Resolved,
    shutdown: CancellationToken,
    status: Arc<Status>,
    mut commands: mpsc::Receiver<Command>,
) -> Result<RunReport, RunError> {
    let c = &cfg.config;
    let store: Arc<dyn CheckpointStore> = c.checkpoint.open(&c.sink).await?;
    let remembered: StoredShards = store.load_shards().await?;
    if remembered.is_empty() {
        let where_ = c.checkpoint.location();
        if c.checkpoint.require_existing {
            return Err(RunError::MissingState { store: where_ });
        }
        warn!(store = %where_, start = %c.start.position, "no checkpoint stored: every shard starts from [start] position. If a previous run stored checkpoints, its state is missing: stop now and restore it (set [checkpoint] require_existing = true to refuse such a start)");
    }
    // Shards whose snapshot is under way have no position to resume after: their snapshot
    // continues (below).
    let stored: HashMap<Arc<str>, EntryId> = remembered
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.resume_after()?)))
        .collect();
    let snapshots_under_way: HashMap<Arc<str>, quorumtail_sink::SnapshotProgress> = remembered
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.snapshot.clone()?)))
        .collect();
    // Commands from the HTTP listener (`[http] control`), beside the caller's.
    let (http_commands_tx, mut http_commands) = mpsc::channel::<Command>(8);
    let http_stop = CancellationToken::new();
    let _http_stop_guard = http_stop.clone().drop_guard();
    if let Some(h) = &c.http {
        let listener = tokio::net::TcpListener::bind(&h.listen)
            .await
            .map_err(|source| RunError::Http {
                addr: h.listen.clone(),
                source,
            })?;
        if let Ok(a) = listener.local_addr() {
            let _ = status.http.set(a);
        }
        tokio::spawn(crate::http::serve(
            listener,
            status.clone(),
            h.control.then(|| http_commands_tx.clone()),
            http_stop.clone(),
        ));
    }
    for (shard, s) in &remembered {
        info!(%shard, checkpoint = %s.checkpoint, members = ?s.membership.as_ref().map(|m| &m.members), drained = s.drained, "checkpoint loaded");
    }

    let mut static_topology = static_shards(&cfg);
    let mut shards = static_topology.clone();
    let discovery = match &c.discovery {
        Some(d) => Some(Arc::new(
            Discovery::connect(&d.uri, c.mongo.access())
                .await
                .map_err(RunError::Discovery)?,
        )),
        None => None,
    };
    // Whether the topology is known to be complete: a shard with a checkpoint that is not in
    // it was removed. Not when discovery failed: its shards are then only unknown.
    let mut authoritative = true;
    if let Some(d) = &discovery {
        match d.shards().await {
            Ok(found) => shards = topology(&static_topology, found),
            // A mongos outage must not turn a restart into a restart loop: with static
            // shards or remembered members there is something to tail until discovery
            // answers again (it is retried every interval).
            Err(e)
                if !shards.is_empty()
                    || remembered
                        .values()
                        .any(|s| !s.drained && s.membership.is_some()) =>
            {
                authoritative = false;
                warn!(error = %e, "discovery failed at startup; using the static shards, and the remembered members of other shards with a checkpoint")
            }
            Err(e) => {
                d.close().await;
                return Err(RunError::Discovery(e));
            }
        }
    }

    let mut names: Vec<Arc<str>> = shards.iter().map(|s| s.name.clone()).collect();
    for (name, s) in &remembered {
        if !s.drained && s.membership.is_some() && !names.contains(name) {
            names.push(name.clone());
        }
    }
    let status_for_sink = status.clone();
    let sink = Sink::start(&c.sink, &names).await;
    let sink = match sink {
        Ok(s) => s,
        Err(e) => {
            if let Some(d) = &discovery {
                d.close().await;
            }
            return Err(e.into());
        }
    };

    let _ = status_for_sink
        .kafka_sink
        .set(c.sink.kind == SinkKind::Kafka);
    let _ = status_for_sink.sink.set(sink.view());
    let mut tailer = TailerConfig::new("".into(), "");
    tailer.access = c.mongo.access();
    tailer.batch_size = c.mongo.batch_size;
    tailer.max_await = cfg.max_await;
    // One record per DDL operation: each database's DDL is emitted by its primary shard,
    // known from config.databases through the discovery URI.
    let mut filter = cfg.filter.clone();
    let primaries = discovery.as_ref().map(|d| d.primary_shards());
    if let (Some(d), Some(p)) = (&discovery, &primaries) {
        match d.database_primaries().await {
            Ok(found) => p.update(found),
            Err(e) => {
                warn!(error = %e, "the databases' primary shards cannot be read yet: each database is looked up when its first DDL entry is emitted")
            }
        }
    } else if names.len() > 1 {
        warn!("no [discovery] uri: the databases' primary shards (config.databases) are unknown, so a DDL operation that MongoDB logs on several shards (a drop or rename up to 6.0, index builds and collMod on every version, dropDatabase) is emitted once per shard that logs it");
    }
    filter.ddl_primaries = primaries.clone();
    // Full document lookups go through the discovery URI when it is a mongos (routed, no
    // orphans), else to each shard's members.
    let mut lookup_router = None;
    if c.sink.full_document.enabled() {
        if let Some(d) = &discovery {
            match d.router().await {
                Ok(Some(client)) => lookup_router = Some(client),
                Ok(None) => warn!("[sink] full_document: the discovery URI is not a mongos; updated documents are read from each shard's members, where a document moved to another shard since is not found"),
                Err(e) => warn!(error = %e, "[sink] full_document: cannot tell whether the discovery URI is a mongos; updated documents are read from each shard's members"),
            }
        }
    }
    let mut shared = Shared {
        tailer,
        filter,
        key: c.sink.key,
        format: c.sink.format,
        tombstones: c.sink.tombstones(),
        full_document: c.sink.full_document,
        undecodable: c.sink.undecodable,
        json: c.sink.json,
        lookup_router,
        sink: sink.sender(),
        max_pending: c.pipeline.max_pending,
        channel_batches: c.pipeline.channel_batches,
        start: cfg.start,
        whole_entries: c.pipeline.whole_entries,
        release: c.pipeline.release,
        snapshot: None,
    };

    let pipelines_stop = CancellationToken::new();
    let mut running = Running::new(
        status,
        store.clone(),
        sink.view(),
        remembered,
        cfg.checkpoint_interval,
    );
    // `[start] position = "snapshot"`: one snapshot time and ownership for every shard that
    // has no checkpoint yet (shards that appear later start from their oplog's beginning).
    // A snapshot an earlier run started continues at its time, whatever the setting now.
    let resume: HashMap<Arc<str>, quorumtail_sink::SnapshotProgress> = snapshots_under_way
        .into_iter()
        .filter(|(k, _)| shards.iter().any(|s| s.name == *k))
        .collect();
    if !resume.is_empty()
        || (cfg.start == crate::config::StartPosition::Snapshot
            && shards.iter().any(|s| {
                running.resume_point(s, &stored).is_none() && !stored.contains_key(&s.name)
            }))
    {
        let planned = crate::snapshot::plan(
            &shards,
            discovery.clone(),
            crate::snapshot::PlanInput {
                access: c.mongo.access(),
                batch_size: c.snapshot.batch_size,
                stream_margin: cfg.stream_margin,
                progress: Some(crate::snapshot::ProgressStore {
                    store: store.clone(),
                    view: sink.view(),
                    interval: cfg.checkpoint_interval,
                }),
                resume,
            },
        )
        .await;
        match planned {
            Ok(mut p) => {
                // The shards that copy: those started below without a position.
                let copying = shards
                    .iter()
                    .filter(|s| {
                        running.resume_point(s, &stored).is_none() && !stored.contains_key(&s.name)
                    })
                    .count();
                p.barrier = crate::snapshot::CopyBarrier::new(copying);
                shared.snapshot = Some(Arc::new(p));
            }
            Err(e) => {
                if let Some(d) = &discovery {
                    d.close().await;
                }
                let _ = sink.flush(tokio::time::Instant::now()).await;
                return Err(e.into());
            }
        }
    }
    for s in shards {
        let mut shared = shared.clone();
        let cp = running.resume_point(&s, &stored);
        if cp.is_none() && stored.contains_key(&s.name) {
            // It came back as another replica set: a new shard.
            shared.start = crate::config::StartPosition::Earliest;
            shared.snapshot = None;
        }
        running.start(s, cp, &shared, &pipelines_stop);
    }
    shared.snapshot = None;
    // Shards with a checkpoint that are not in the topology: removed while quorumtail was
    // stopped. What they committed after their checkpoint is read before they stop.
    running.adopt_removed(authoritative, &shared, &pipelines_stop);

    // Confirmed progress is stored periodically by its own task; the final store follows
    // the sink's flush below.
    let checkpointer_stop = CancellationToken::new();
    let checkpointer = tokio::spawn(quorumtail_sink::run_checkpointer(
        sink.view(),
        store.clone(),
        cfg.checkpoint_interval,
        checkpointer_stop.clone(),
    ));
    let mut drain_watch = tokio::time::interval(Duration::from_secs(1));
    drain_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut discovery_tick = tokio::time::interval(cfg.discovery_interval);
    discovery_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sink_failure = sink.failure();
    let mut sink_failures = Vec::new();

    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = sink_failure.changed() => {
                if r.is_ok() {
                    if let Some(e) = sink_failure.borrow_and_update().clone() {
                        error!(error = %e, "the sink stopped with a definite error; stopping");
                        sink_failures.push(e.to_string());
                        break;
                    }
                }
            }
            Some(done) = running.tasks.join_next(), if !running.tasks.is_empty() => {
                running.finished(done);
                if running.idle() && discovery.is_none() {
                    warn!("every shard pipeline has stopped");
                    break;
                }
            }
            Some(done) = running.finishing.join_next(), if !running.finishing.is_empty() => {
                running.drain_finished(done);
                if running.idle() && discovery.is_none() {
                    warn!("every shard pipeline has stopped");
                    break;
                }
            }
            _ = drain_watch.tick() => running.watch_drains(),
            Some(cmd) = async {
                tokio::select! {
                    Some(c) = commands.recv() => Some(c),
                    Some(c) = http_commands.recv() => Some(c),
                    else => None,
                }
            } => match cmd {
                Command::Snapshot(req) => {
                    let catalog = match &discovery {
                        Some(d) => match d.catalog().await {
                            Ok(c) => Some(Arc::new(c)),
                            Err(e) => {
                                let _ = req.reply.send(Err(format!("cannot read the sharding catalog through [discovery] uri ({e}); it says which shard owns each document")));
                                continue;
                            }
                        },
                        None => None,
                    };
                    let request = crate::snapshot::Request {
                        namespaces: req.namespaces,
                        catalog,
                        batch_size: c.snapshot.batch_size,
                        access: c.mongo.access(),
                        discovery: discovery.clone(),
                    };
                    let _ = req.reply.send(running.request_snapshot(&req.shards, request));
                }
                Command::ForceCheckpoint => {
                    let now = sink.checkpoints();
                    match store.store(&now).await {
                        Ok(()) => info!(checkpoints = ?now.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(), "checkpoints stored on request"),
                        Err(e) => warn!(error = %e, "checkpoint store failed"),
                    }
                }
                Command::Reload(new) => {
                    static_topology = static_shards(&new);
                    let (discovered, complete) = match &discovery {
                        Some(d) => match d.shards().await {
                            Ok(found) => (found, true),
                            Err(e) => {
                                warn!(error = %e, "discovery failed during reload; using the static shards only");
                                (Vec::new(), false)
                            }
                        },
                        None => (Vec::new(), true),
                    };
                    info!("configuration reloaded: applying its topology (other settings take effect at the next start)");
                    running.reconcile(topology(&static_topology, discovered), &positions(&stored, &sink), &shared, &pipelines_stop, new.start);
                    running.adopt_removed(complete, &shared, &pipelines_stop);
                }
            },
            _ = discovery_tick.tick(), if discovery.is_some() => {
                if let Some(d) = &discovery {
                    if let Some(p) = &primaries {
                        match d.database_primaries().await {
                            Ok(found) => p.update(found),
                            Err(e) => debug!(error = %e, "config.databases not read this time; keeping the known primary shards"),
                        }
                    }
                    match d.shards().await {
                        // A shard that appears in the cluster is new: its oplog is short, read it all.
                        Ok(found) => {
                            running.reconcile(topology(&static_topology, found), &positions(&stored, &sink), &shared, &pipelines_stop, crate::config::StartPosition::Earliest);
                            running.adopt_removed(true, &shared, &pipelines_stop);
                        }
                        Err(e) => warn!(error = %e, "discovery failed; keeping the current topology"),
                    }
                }
            }
        }
    }

    // Graceful stop: tailers and pipelines first, then the sink drains.
    info!("stopping: shard pipelines first, then the sink drains");
    pipelines_stop.cancel();
    while let Some(done) = running.tasks.join_next().await {
        running.finished(done);
    }
    if let Some(d) = &discovery {
        d.close().await;
    }
    // Drained shards still waiting for delivery are marked after the flush below.
    running.finishing.abort_all();
    while running.finishing.join_next().await.is_some() {}
    drop(shared);
    checkpointer_stop.cancel();
    let _ = checkpointer.await;
    let report = sink
        .flush(tokio::time::Instant::now() + cfg.shutdown_timeout)
        .await;
    for f in &report.failures {
        if !sink_failures.contains(&f.to_string()) {
            sink_failures.push(f.to_string());
        }
    }
    if let Err(e) = store.store(&report.checkpoints).await {
        error!(error = %e, "could not store the final checkpoints; the next run re-reads from the previous ones");
    }
    running.mark_delivered_drains(&report.checkpoints).await;
    let checkpoints = report
        .checkpoints
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    if report.unconfirmed > 0 {
        warn!(
            unconfirmed = report.unconfirmed,
            "records not confirmed before the shutdown deadline; they are re-read after a restart"
        );
    }
    Ok(RunReport {
        shards: running.status.all(),
        failed: running.failed,
        sink_failures,
        unconfirmed: report.unconfirmed,
        checkpoints,
        drained: running.drained,
    })
}

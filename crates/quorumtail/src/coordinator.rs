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

use bson::doc;
use quorumtail_oplog::EntryId;
use quorumtail_sink::{
    CheckpointStore, ProgressView, ShardMembership, Sink, SinkError, StoredShards,
};
use quorumtail_tailer::TailerConfig;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{redact_uri, Resolved, SinkKind};
use crate::pipeline::stats::{ShardStats, StatsSnapshot};
use crate::pipeline::{run_shard, Control, ShardError, ShardSpec, Shared};

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
    /// The HTTP endpoints could not listen.
    #[error("http.listen {addr}: {source}; choose a free address or remove [http]")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Live view of the running shards, shared with observers (status endpoints, tests).
#[derive(Debug, Default)]
pub struct Status {
    shards: std::sync::Mutex<BTreeMap<Arc<str>, Arc<ShardStats>>>,
    sink: std::sync::OnceLock<quorumtail_sink::ProgressView>,
    /// Whether the sink is Kafka (the delivery histogram exists only then).
    kafka_sink: std::sync::OnceLock<bool>,
    http: std::sync::OnceLock<std::net::SocketAddr>,
    /// Shards with a stored checkpoint that are not in the topology and cannot be drained
    /// (no membership stored with the checkpoint).
    orphans: std::sync::Mutex<Vec<String>>,
    /// Removed shards being drained.
    draining: std::sync::Mutex<BTreeMap<String, Draining>>,
}

/// A removed shard being drained (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Draining {
    /// `removed from the topology` (while running) or `removed while quorumtail was stopped`.
    pub reason: &'static str,
    /// The members it is read from.
    pub members: Vec<String>,
    /// The checkpoint it was draining from when the drain began.
    pub from: Option<EntryId>,
    /// How far the drain got.
    pub state: DrainState,
}

/// How far a drain got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Reading what a quorum of its members holds after the checkpoint.
    Reading,
    /// Fewer members than the quorum answer: nothing can be confirmed (retrying).
    Unreachable,
    /// Read to its end; waiting for the sink to confirm the last records, then marking it
    /// drained in the checkpoint store.
    Delivering,
    /// Done: marked drained in the checkpoint store.
    Drained,
}

impl DrainState {
    /// `reading`, `unreachable`, `delivering`, `drained`.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Reading => "reading",
            DrainState::Unreachable => "unreachable",
            DrainState::Delivering => "delivering",
            DrainState::Drained => "drained",
        }
    }
}

impl Status {
    /// The shard's checkpoint as confirmed by the sink now (delivered and acknowledged, or
    /// fsynced): everything up to it is safely out.
    pub fn confirmed(&self, shard: &str) -> Option<EntryId> {
        self.sink.get()?.checkpoints().get(shard)
    }

    /// Shards with a stored checkpoint that are not in the topology and cannot be drained
    /// (their checkpoint was stored without their membership): their later changes are not
    /// being read.
    pub fn orphaned_checkpoints(&self) -> Vec<String> {
        self.orphans.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Removed shards being drained (and those drained in this run), by name.
    pub fn draining(&self) -> BTreeMap<String, Draining> {
        self.draining.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn set_draining(&self, shard: &str, d: Draining) {
        if let Ok(mut m) = self.draining.lock() {
            m.insert(shard.to_owned(), d);
        }
    }

    fn drain_state(&self, shard: &str, state: DrainState) {
        if let Ok(mut m) = self.draining.lock() {
            if let Some(d) = m.get_mut(shard) {
                d.state = state;
            }
        }
    }

    fn not_draining(&self, shard: &str) {
        if let Ok(mut m) = self.draining.lock() {
            m.remove(shard);
        }
    }

    /// Where the HTTP endpoints listen, once they do.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.get().copied()
    }

    /// Records accepted by the sink and not yet confirmed.
    pub fn sink_in_flight(&self) -> Option<usize> {
        Some(self.sink.get()?.unconfirmed())
    }

    /// The Kafka sink's progress, whose delivery latency and errors `/metrics` shows
    /// (none for the file sink).
    pub fn sink_delivery(&self) -> Option<quorumtail_sink::ProgressView> {
        if !self.kafka_sink.get().copied().unwrap_or(false) {
            return None;
        }
        self.sink.get().cloned()
    }

    /// The sink's definite error, if it stopped.
    pub fn sink_failure(&self) -> Option<String> {
        let f = self.sink.get()?.failure();
        let f = f.borrow();
        f.as_ref().map(|e| e.to_string())
    }

    /// A shard's members.
    pub fn nodes(&self, shard: &str) -> BTreeMap<String, crate::pipeline::stats::NodeStats> {
        self.shards
            .lock()
            .ok()
            .and_then(|m| m.get(shard).map(|s| s.nodes()))
            .unwrap_or_default()
    }

    /// Where a shard's quorum comes from (static list, or the replica set configuration).
    pub fn quorum_source(&self, shard: &str) -> String {
        self.shards
            .lock()
            .ok()
            .and_then(|m| m.get(shard).map(|s| s.quorum_source()))
            .unwrap_or_default()
    }

    /// Whether a running shard is starting: fewer members than its quorum answered yet,
    /// and some were never reached (connecting for the first time). A shard that is
    /// starting is neither ready nor reported unreachable.
    pub fn starting(&self, shard: &str) -> bool {
        let Some(s) = self.shard(shard) else {
            return false;
        };
        let nodes = self.nodes(shard);
        !s.quorum_reachable
            && !s.stopped
            && !s.failed
            && (nodes.is_empty() || nodes.values().any(|n| n.state == "connecting"))
    }

    /// The counters of one shard, if it ever ran.
    pub fn shard(&self, name: &str) -> Option<StatsSnapshot> {
        self.shards.lock().ok()?.get(name).map(|s| s.snapshot())
    }

    /// Counters of every shard that ever ran.
    pub fn all(&self) -> BTreeMap<String, StatsSnapshot> {
        self.shards
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.snapshot()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn register(&self, name: &Arc<str>) -> Arc<ShardStats> {
        match self.shards.lock() {
            Ok(mut m) => m.entry(name.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }
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
    let stored: HashMap<Arc<str>, EntryId> = remembered
        .iter()
        .map(|(k, v)| (k.clone(), v.checkpoint))
        .collect();
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
            http_stop.clone(),
        ));
    }
    for (shard, s) in &remembered {
        info!(%shard, checkpoint = %s.checkpoint, members = ?s.membership.as_ref().map(|m| &m.members), drained = s.drained, "checkpoint loaded");
    }

    let mut static_topology = static_shards(&cfg);
    let mut shards = static_topology.clone();
    let discovery = match &c.discovery {
        Some(d) => Some(
            Discovery::connect(
                &d.uri,
                MemberAccess {
                    uri_options: c.mongo.uri_options.clone(),
                    username: c.mongo.username.clone(),
                    password: c.mongo.password.clone(),
                },
            )
            .await
            .map_err(RunError::Discovery)?,
        ),
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
    tailer.uri_options = c.mongo.uri_options.clone();
    tailer.username = c.mongo.username.clone();
    tailer.password = c.mongo.password.clone();
    tailer.batch_size = c.mongo.batch_size;
    tailer.max_await = cfg.max_await;
    let shared = Shared {
        tailer,
        filter: cfg.filter.clone(),
        key: c.sink.key,
        sink: sink.sender(),
        max_pending: c.pipeline.max_pending,
        channel_batches: c.pipeline.channel_batches,
        start: cfg.start,
        whole_entries: c.pipeline.whole_entries,
        release: c.pipeline.release,
    };

    let pipelines_stop = CancellationToken::new();
    let mut running = Running {
        tasks: JoinSet::new(),
        shards: HashMap::new(),
        status,
        failed: Vec::new(),
        failed_shards: Default::default(),
        store: store.clone(),
        view: sink.view(),
        remembered,
        finishing: JoinSet::new(),
        finishing_names: Default::default(),
        orphans_reported: Default::default(),
        unreachable_since: HashMap::new(),
        drained: Vec::new(),
        retry: cfg.checkpoint_interval,
    };
    for s in shards {
        let mut shared = shared.clone();
        let cp = running.resume_point(&s, &stored);
        if cp.is_none() && stored.contains_key(&s.name) {
            // It came back as another replica set: a new shard.
            shared.start = crate::config::StartPosition::Earliest;
        }
        running.start(s, cp, &shared, &pipelines_stop);
    }
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
            Some(cmd) = commands.recv() => match cmd {
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

struct ShardRun {
    spec: ShardSpec,
    control: mpsc::Sender<Control>,
    draining: bool,
}

/// A shard pipeline's end: its name, its result, and whether it ended by itself (a drained
/// shard) rather than by the shutdown.
type PipelineEnd = (Arc<str>, Result<(), ShardError>, bool);

/// A drained shard's delivery and marking: its name and the position it was marked
/// drained at (`None`: it never had one), or why it was not marked.
type DrainEnd = (Arc<str>, Result<Option<EntryId>, String>);

struct Running {
    tasks: JoinSet<PipelineEnd>,
    shards: HashMap<Arc<str>, ShardRun>,
    status: Arc<Status>,
    failed: Vec<String>,
    failed_shards: std::collections::HashSet<Arc<str>>,
    store: Arc<dyn CheckpointStore>,
    view: ProgressView,
    /// What the checkpoint store holds (as loaded, then updated as shards start and drain).
    remembered: StoredShards,
    /// Drained shards waiting for the sink to confirm their last records.
    finishing: JoinSet<DrainEnd>,
    finishing_names: std::collections::HashSet<Arc<str>>,
    orphans_reported: std::collections::HashSet<Arc<str>>,
    /// Draining shards whose quorum is unreachable: since when, and when it was last logged.
    unreachable_since: HashMap<Arc<str>, (std::time::Instant, std::time::Instant)>,
    /// Shards marked drained in this run.
    drained: Vec<String>,
    /// Between attempts to mark a shard drained.
    retry: Duration,
}

/// How often a removed shard that cannot be drained is logged again.
const UNREACHABLE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Waits until the sink confirmed the last checkpoint the drained shard's pipeline handed
/// it (delivery before progress), then marks the shard drained in the store, retrying
/// until that succeeds.
async fn finish_drain(
    shard: Arc<str>,
    handed: Option<EntryId>,
    view: ProgressView,
    store: Arc<dyn CheckpointStore>,
    retry: Duration,
) -> DrainEnd {
    if let Some(last) = handed {
        let mut progress = view.progress(&shard);
        loop {
            {
                let p = progress.borrow_and_update();
                if let Some(f) = &p.failure {
                    return (
                        shard.clone(),
                        Err(format!("the sink stopped delivering its records: {f}")),
                    );
                }
                if p.confirmed.is_some_and(|c| c.checkpoint >= last) {
                    break;
                }
            }
            if progress.changed().await.is_err() {
                return (shard.clone(), Err("the sink stopped".into()));
            }
        }
    }
    loop {
        let confirmed = view.checkpoints();
        match store.mark_drained(&shard, &confirmed).await {
            Ok(()) => return (shard.clone(), Ok(confirmed.get(&shard))),
            Err(e) => {
                warn!(%shard, error = %e, "could not mark the drained shard in the checkpoint store; retrying");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

impl Running {
    fn start(
        &mut self,
        spec: ShardSpec,
        checkpoint: Option<EntryId>,
        shared: &Shared,
        stop: &CancellationToken,
    ) {
        let stats = self.status.register(&spec.name);
        let (tx, rx) = mpsc::channel(8);
        let token = stop.child_token();
        let name = spec.name.clone();
        // Stored with the shard's next checkpoint; a drained shard that starts again is no
        // longer drained.
        let membership = membership_of(&spec);
        self.store.remember(&name, membership.clone());
        if let Some(r) = self.remembered.get_mut(&name) {
            r.membership = Some(membership);
            r.drained = false;
        }
        self.status.not_draining(&name);
        // An orphaned checkpoint listed under [[shards]] (SIGHUP) is read again.
        if self.orphans_reported.remove(&name) {
            self.status
                .orphans
                .lock()
                .map(|mut o| o.retain(|x| **x != *name))
                .ok();
        }
        let fut = run_shard(
            spec.clone(),
            shared.clone(),
            checkpoint,
            stats,
            rx,
            token.clone(),
        );
        // Ok without the shutdown: the pipeline stopped because the shard was drained.
        self.tasks.spawn(async move {
            let r = fut.await;
            let by_itself = r.is_ok() && !token.is_cancelled();
            (name, r, by_itself)
        });
        self.shards.insert(
            spec.name.clone(),
            ShardRun {
                spec,
                control: tx,
                draining: false,
            },
        );
    }

    /// Starts a shard that is no longer in the topology, draining from the start.
    fn start_draining(
        &mut self,
        spec: ShardSpec,
        checkpoint: EntryId,
        shared: &Shared,
        stop: &CancellationToken,
    ) {
        let name = spec.name.clone();
        let members = spec.members.clone();
        warn!(shard = %name, ?members, %checkpoint, "a shard with a checkpoint is not in the topology (removed while quorumtail was stopped): draining it with its remembered members; what a quorum of them holds after the checkpoint is emitted, then it stops");
        self.start(spec, Some(checkpoint), shared, stop);
        if let Some(run) = self.shards.get_mut(&name) {
            run.draining = true;
            // A fresh channel of 8: the first message always fits.
            let _ = run.control.try_send(Control::Drain);
        }
        self.status.set_draining(
            &name,
            Draining {
                reason: "removed while quorumtail was stopped",
                members,
                from: Some(checkpoint),
                state: DrainState::Reading,
            },
        );
    }

    /// No pipeline runs and no drained shard waits for delivery.
    fn idle(&self) -> bool {
        self.tasks.is_empty() && self.finishing.is_empty()
    }

    /// Where a shard of the topology resumes: its checkpoint, unless it was drained as
    /// another replica set than the one it is now (a new shard that reuses the name).
    fn resume_point(
        &self,
        spec: &ShardSpec,
        positions: &HashMap<Arc<str>, EntryId>,
    ) -> Option<EntryId> {
        let cp = positions.get(&spec.name).copied()?;
        let Some(r) = self.remembered.get(&spec.name) else {
            return Some(cp);
        };
        let was = r.membership.as_ref().and_then(|m| m.replica_set.as_deref());
        if r.drained
            && was.is_some()
            && spec.replica_set.is_some()
            && was != spec.replica_set.as_deref()
        {
            info!(shard = %spec.name, was = ?was, now = ?spec.replica_set, drained_at = %cp, "a drained shard is back as another replica set: reading it as a new shard from the beginning of its oplog");
            return None;
        }
        if r.drained {
            info!(shard = %spec.name, checkpoint = %cp, "a drained shard is back: resuming from its checkpoint");
        }
        Some(cp)
    }

    /// Shards with a checkpoint that are neither in the topology nor running: drained with
    /// their remembered members when `complete` (the topology is known to be whole), run
    /// normally otherwise (discovery did not answer; the next successful one decides).
    /// Without a remembered membership, an error says so and `/readyz` reports it.
    fn adopt_removed(&mut self, complete: bool, shared: &Shared, stop: &CancellationToken) {
        let candidates: Vec<(Arc<str>, quorumtail_sink::StoredShard)> = self
            .remembered
            .iter()
            .filter(|(name, s)| {
                !s.drained
                    && !self.shards.contains_key(*name)
                    && !self.finishing_names.contains(*name)
                    && !self.failed_shards.contains(*name)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, s) in candidates {
            let Some(m) = &s.membership else {
                if self.orphans_reported.insert(name.clone()) {
                    error!(
                        shard = %name,
                        checkpoint = %s.checkpoint,
                        "a checkpoint exists for a shard that is not in the topology, and it was stored without the shard's members (by an older quorumtail), so it cannot be drained: changes the shard committed after the checkpoint are NOT emitted. If the shard was removed while quorumtail was stopped, add it under [[shards]] with its members until it is drained (its members are then stored with its checkpoint, and a later removal drains it by itself); if it is gone for good, remove its checkpoint"
                    );
                    self.status
                        .orphans
                        .lock()
                        .map(|mut o| o.push(name.to_string()))
                        .ok();
                }
                continue;
            };
            let spec = spec_from(&name, m);
            if complete {
                self.start_draining(spec, s.checkpoint, shared, stop);
            } else {
                warn!(shard = %name, members = ?m.members, checkpoint = %s.checkpoint, "discovery did not answer: running a shard with a checkpoint from its remembered members until discovery says whether it is still in the cluster");
                self.start(spec, Some(s.checkpoint), shared, stop);
            }
        }
    }

    /// Says, loudly and again every minute, which draining shards cannot be read.
    fn watch_drains(&mut self) {
        let now = std::time::Instant::now();
        let draining: Vec<(Arc<str>, Vec<String>)> = self
            .shards
            .iter()
            .filter(|(_, r)| r.draining)
            .map(|(k, r)| (k.clone(), r.spec.members.clone()))
            .collect();
        self.unreachable_since
            .retain(|k, _| draining.iter().any(|(d, _)| d == k));
        for (name, members) in draining {
            // A shard still starting is not known to be unreachable yet.
            let reachable = self.status.starting(&name)
                || self.status.shard(&name).is_none_or(|s| s.quorum_reachable);
            if reachable {
                if self.unreachable_since.remove(&name).is_some() {
                    info!(shard = %name, "the removed shard's members answer again: draining resumes");
                }
                self.status.drain_state(&name, DrainState::Reading);
                continue;
            }
            self.status.drain_state(&name, DrainState::Unreachable);
            let (since, logged) = self
                .unreachable_since
                .entry(name.clone())
                .or_insert((now, now));
            if *logged != now && now.duration_since(*logged) < UNREACHABLE_LOG_EVERY {
                continue;
            }
            *logged = now;
            let checkpoint = self
                .status
                .confirmed(&name)
                .or_else(|| self.remembered.get(&name).map(|r| r.checkpoint));
            let states: Vec<String> = self
                .status
                .nodes(&name)
                .into_iter()
                .map(|(addr, n)| format!("{addr} ({})", n.state))
                .collect();
            error!(
                shard = %name,
                ?members,
                member_states = ?states,
                checkpoint = ?checkpoint.map(|c| c.to_string()),
                unreachable_for = ?now.duration_since(*since),
                "a removed shard cannot be drained: fewer of its members than its quorum answer, so what it committed after its checkpoint cannot be read. quorumtail keeps retrying, stays not ready, and keeps the checkpoint. Choices: make a quorum of these members reachable again (restart them, or fix the network) until the shard is drained; or, if the shard's changes after the checkpoint are not needed (it held no data then, or they were copied elsewhere), stop quorumtail and remove the shard's checkpoint entry, accepting that they are never emitted"
            );
        }
    }

    /// A drained shard's delivery ended.
    fn drain_finished(&mut self, done: Result<DrainEnd, tokio::task::JoinError>) {
        let Ok((name, r)) = done else {
            return; // aborted at shutdown: marked after the flush if delivered
        };
        self.finishing_names.remove(&name);
        match r {
            Ok(at) => {
                info!(shard = %name, checkpoint = ?at.map(|c| c.to_string()), "removed shard drained and delivered: marked drained in the checkpoint store (later starts neither drain nor report it)");
                if let Some(r) = self.remembered.get_mut(&name) {
                    r.drained = true;
                    if let Some(at) = at {
                        r.checkpoint = at;
                    }
                }
                self.status.drain_state(&name, DrainState::Drained);
                self.drained.push(name.to_string());
            }
            Err(e) => {
                error!(shard = %name, error = %e, "the removed shard was read to its end but its records were not all delivered: it is not marked drained, and the next start drains it again");
                self.failed_shards.insert(name.clone());
                self.failed.push(format!("shard {name}: drained, but {e}"));
            }
        }
    }

    /// At shutdown, after the sink's flush: drained shards whose delivery is now confirmed
    /// are marked (the others are drained again at the next start).
    async fn mark_delivered_drains(&mut self, confirmed: &quorumtail_sink::ConfirmedCheckpoints) {
        let names: Vec<Arc<str>> = self.finishing_names.drain().collect();
        for name in names {
            let handed = self.status.register(&name).last_handed();
            let delivered = match handed {
                None => true,
                Some(last) => confirmed.get(&name).is_some_and(|c| c >= last),
            };
            if !delivered {
                warn!(shard = %name, "the removed shard was read to its end but not all its records were confirmed before the shutdown deadline: the next start drains it again");
                continue;
            }
            match self.store.mark_drained(&name, confirmed).await {
                Ok(()) => {
                    info!(shard = %name, "removed shard drained and delivered: marked drained in the checkpoint store");
                    self.status.drain_state(&name, DrainState::Drained);
                    self.drained.push(name.to_string());
                }
                Err(e) => {
                    error!(shard = %name, error = %e, "could not mark the drained shard in the checkpoint store: the next start drains it again")
                }
            }
        }
    }

    fn finished(&mut self, done: Result<PipelineEnd, tokio::task::JoinError>) {
        match done {
            Ok((name, Ok(()), by_itself)) => {
                let run = self.shards.remove(&name);
                if by_itself && run.is_some_and(|r| r.draining) {
                    let handed = self.status.register(&name).last_handed();
                    self.status.drain_state(&name, DrainState::Delivering);
                    self.finishing_names.insert(name.clone());
                    self.finishing.spawn(finish_drain(
                        name,
                        handed,
                        self.view.clone(),
                        self.store.clone(),
                        self.retry,
                    ));
                }
            }
            Ok((name, Err(e), _)) => {
                error!(shard = %name, error = %e, "shard stopped with a definite error; the other shards keep running");
                self.failed.push(e.to_string());
                self.failed_shards.insert(name.clone());
                self.shards.remove(&name);
            }
            Err(e) => {
                error!(error = %e, "a shard pipeline task panicked");
                self.failed.push(format!("a shard pipeline panicked: {e}"));
            }
        }
    }

    /// Applies a discovered topology: new shards start (from their checkpoint, or from the
    /// beginning of their oplog: a new shard's oplog is short), shards gone from the list
    /// stop once drained, member changes go to the running pipeline.
    fn reconcile(
        &mut self,
        found: Vec<ShardSpec>,
        stored: &HashMap<Arc<str>, EntryId>,
        shared: &Shared,
        stop: &CancellationToken,
        new_shard_start: crate::config::StartPosition,
    ) {
        let before: Vec<String> = self.shards.keys().map(|k| k.to_string()).collect();
        let mut changed = false;
        for s in &found {
            match self.shards.get_mut(&s.name) {
                None => {
                    if self.failed_shards.contains(&s.name) {
                        // Stopped by a definite error: it stays stopped until restart.
                        continue;
                    }
                    if self.finishing_names.contains(&s.name) {
                        // Drained and back: it starts again once marked (next discovery).
                        continue;
                    }
                    info!(shard = %s.name, members = ?s.members, start = ?new_shard_start, "shard added: starting its pipeline");
                    let mut shared = shared.clone();
                    let cp = self.resume_point(s, stored);
                    if cp.is_none() {
                        shared.start = new_shard_start;
                    }
                    self.start(s.clone(), cp, &shared, stop);
                    changed = true;
                }
                Some(run) if run.spec.members != s.members || run.spec.arbiters != s.arbiters => {
                    let _ = run.control.try_send(Control::Members(s.clone()));
                    run.spec = s.clone();
                    self.store.remember(&s.name, membership_of(s));
                    if let Some(r) = self.remembered.get_mut(&s.name) {
                        r.membership = Some(membership_of(s));
                    }
                    changed = true;
                }
                Some(_) => {}
            }
        }
        let gone: Vec<Arc<str>> = self
            .shards
            .keys()
            .filter(|k| !found.iter().any(|s| &s.name == *k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(run) = self.shards.get_mut(&name) {
                if !run.draining {
                    run.draining = true;
                    let _ = run.control.try_send(Control::Drain);
                    self.status.set_draining(
                        &name,
                        Draining {
                            reason: "removed from the topology",
                            members: run.spec.members.clone(),
                            from: self.status.confirmed(&name),
                            state: DrainState::Reading,
                        },
                    );
                    changed = true;
                }
            }
        }
        if changed {
            let after: Vec<String> = found.iter().map(|s| s.name.to_string()).collect();
            info!(?before, ?after, "topology changed");
        }
    }
}

/// Reads the shard list through mongos (`listShards`) or from a config server
/// (`config.shards`), then each shard's current membership from its replica set's own
/// `hello` (`hosts` and `passives` are the data-bearing members, `arbiters` vote only).
/// Hidden members do not appear in `hello`; list them in a static `[[shards]]` entry.
pub struct Discovery {
    client: mongodb::Client,
    uri: String,
    member: MemberAccess,
    sets: tokio::sync::Mutex<HashMap<String, mongodb::Client>>,
}

/// How discovery reaches shard members (the same options and credentials as the tailers).
#[derive(Clone, Debug, Default)]
pub struct MemberAccess {
    /// `[mongo] uri_options`.
    pub uri_options: String,
    /// `[mongo] username`.
    pub username: Option<String>,
    /// `[mongo] password`.
    pub password: Option<String>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("uri", &redact_uri(&self.uri))
            .finish()
    }
}

impl Discovery {
    /// Connects (lazily; errors surface on the first read).
    ///
    /// # Errors
    /// An unparsable URI.
    pub async fn connect(uri: &str, member: MemberAccess) -> Result<Self, String> {
        let mut opts = mongodb::options::ClientOptions::parse(uri)
            .await
            .map_err(|e| format!("{}: {e}", redact_uri(uri)))?;
        opts.app_name = Some("quorumtail-discovery".into());
        opts.server_selection_timeout = Some(Duration::from_secs(5));
        let client = mongodb::Client::with_options(opts).map_err(|e| e.to_string())?;
        Ok(Discovery {
            client,
            uri: uri.to_owned(),
            member,
            sets: Default::default(),
        })
    }

    /// Shuts its driver clients down (before the runtime goes away; see
    /// [`quorumtail_tailer::close`]).
    pub async fn close(&self) {
        let sets: Vec<mongodb::Client> = self.sets.lock().await.values().cloned().collect();
        futures::future::join_all(
            std::iter::once(self.client.clone())
                .chain(sets)
                .map(quorumtail_tailer::close),
        )
        .await;
    }

    /// The current shards.
    ///
    /// # Errors
    /// When neither `listShards` nor `config.shards` can be read.
    pub async fn shards(&self) -> Result<Vec<ShardSpec>, String> {
        let docs: Vec<bson::Document> = match self
            .client
            .database("admin")
            .run_command(doc! { "listShards": 1 })
            .await
        {
            Ok(reply) => reply
                .get_array("shards")
                .map_err(|e| format!("listShards reply: {e}"))?
                .iter()
                .filter_map(|b| b.as_document().cloned())
                .collect(),
            Err(e) => {
                // Not a mongos: a config server holds config.shards.
                use futures::TryStreamExt;
                let coll = self
                    .client
                    .database("config")
                    .collection::<bson::Document>("shards");
                let cursor = coll.find(doc! {}).await.map_err(|e2| {
                    format!("listShards failed ({e}) and config.shards cannot be read ({e2})")
                })?;
                cursor.try_collect().await.map_err(|e| e.to_string())?
            }
        };
        let mut out = Vec::new();
        for d in docs {
            let mut spec = shard_from_document(&d)?;
            if let Some(set) = spec.replica_set.clone() {
                match self.membership(&set, &spec.members).await {
                    Ok((members, arbiters)) if !members.is_empty() => {
                        spec.members = members;
                        spec.arbiters = arbiters;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(shard = %spec.name, error = %e, "hello of the shard's replica set failed; using config.shards")
                    }
                }
            }
            out.push(spec);
        }
        Ok(out)
    }

    async fn membership(
        &self,
        set: &str,
        seeds: &[String],
    ) -> Result<(Vec<String>, usize), String> {
        let key = format!("{set}/{}", seeds.join(","));
        let client = {
            let mut sets = self.sets.lock().await;
            match sets.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let mut uri = format!(
                        "mongodb://{}/?replicaSet={set}&appName=quorumtail-discovery&serverSelectionTimeoutMS=3000",
                        seeds.join(",")
                    );
                    if !self.member.uri_options.is_empty() {
                        uri.push('&');
                        uri.push_str(&self.member.uri_options);
                    }
                    let mut opts = mongodb::options::ClientOptions::parse(uri)
                        .await
                        .map_err(|e| e.to_string())?;
                    if let Some(user) = &self.member.username {
                        opts.credential = Some(
                            mongodb::options::Credential::builder()
                                .username(user.clone())
                                .password(self.member.password.clone())
                                .build(),
                        );
                    }
                    let c = mongodb::Client::with_options(opts).map_err(|e| e.to_string())?;
                    sets.insert(key, c.clone());
                    c
                }
            }
        };
        let hello = client
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| e.to_string())?;
        Ok(members_from_hello(&hello))
    }
}

/// A `config.shards` / `listShards` document: `{_id, host: "set/h1:p,h2:p"}`.
fn shard_from_document(d: &bson::Document) -> Result<ShardSpec, String> {
    let name = d
        .get_str("_id")
        .map_err(|_| "a shard without _id in config.shards".to_owned())?;
    let host = d
        .get_str("host")
        .map_err(|_| format!("shard {name} has no host in config.shards"))?;
    let (set, members) = match host.split_once('/') {
        Some((set, hosts)) => (
            Some(set.to_owned()),
            hosts.split(',').map(str::to_owned).collect(),
        ),
        None => (None, vec![host.to_owned()]),
    };
    Ok(ShardSpec {
        name: name.into(),
        replica_set: set,
        members,
        arbiters: 0,
        quorum: None,
        listed: false,
    })
}

/// Data-bearing members (`hosts` + `passives`) and the arbiter count from a `hello` reply.
fn members_from_hello(hello: &bson::Document) -> (Vec<String>, usize) {
    let list = |k: &str| -> Vec<String> {
        hello
            .get_array(k)
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut members = list("hosts");
    members.extend(list("passives"));
    (members, list("arbiters").len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_and_members_from_server_documents() {
        let s = shard_from_document(
            &doc! { "_id": "shard01", "host": "shard01/a:1,b:2,c:3", "state": 1 },
        )
        .unwrap();
        assert_eq!(
            (s.replica_set.as_deref(), s.members.len()),
            (Some("shard01"), 3)
        );
        assert!(shard_from_document(&doc! { "_id": "x" })
            .unwrap_err()
            .contains("no host"));
        let hello = doc! { "hosts": ["a:1", "b:2"], "passives": ["c:3"], "arbiters": ["d:4"], "setName": "shard01" };
        assert_eq!(
            members_from_hello(&hello),
            (vec!["a:1".to_owned(), "b:2".into(), "c:3".into()], 1)
        );
    }
}

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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bson::doc;
use quorumtail_oplog::EntryId;
use quorumtail_sink::{
    CheckpointStore, FileCheckpointStore, FileSinkConfig, KafkaCheckpointConfig,
    KafkaCheckpointStore, KafkaSinkConfig, Sink, SinkError,
};
use quorumtail_tailer::TailerConfig;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{redact_uri, CheckpointKind, Resolved, SinkKind};
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
    http: std::sync::OnceLock<std::net::SocketAddr>,
    /// Shards with a stored checkpoint that are not in the topology.
    orphans: std::sync::Mutex<Vec<String>>,
}

impl Status {
    /// The shard's checkpoint as confirmed by the sink now (delivered and acknowledged, or
    /// fsynced): everything up to it is safely out.
    pub fn confirmed(&self, shard: &str) -> Option<EntryId> {
        self.sink.get()?.checkpoints().get(shard)
    }

    /// Shards with a stored checkpoint that are not in the topology (their later changes are
    /// not being read).
    pub fn orphaned_checkpoints(&self) -> Vec<String> {
        self.orphans.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Where the HTTP endpoints listen, once they do.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.get().copied()
    }

    /// Records accepted by the sink and not yet confirmed.
    pub fn sink_in_flight(&self) -> Option<usize> {
        Some(self.sink.get()?.unconfirmed())
    }

    /// Delivery latency and errors (Kafka sink).
    pub fn sink_delivery(&self) -> Option<quorumtail_sink::metrics::DeliveryStats> {
        Some(self.sink.get()?.delivery())
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

    fn register(&self, name: &Arc<str>) -> Arc<ShardStats> {
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
    let store: Arc<dyn CheckpointStore> = match c.checkpoint.kind {
        CheckpointKind::File => Arc::new(FileCheckpointStore::new(&c.checkpoint.path)),
        CheckpointKind::Kafka => {
            let mut k = KafkaCheckpointConfig::new(c.sink.brokers.clone().unwrap_or_default());
            k.topic = c.checkpoint.topic.clone();
            k.librdkafka = c.sink.librdkafka.clone();
            Arc::new(KafkaCheckpointStore::open(k).await?)
        }
    };
    let stored: HashMap<Arc<str>, EntryId> = store.load().await?;
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
    for (shard, pos) in &stored {
        info!(%shard, checkpoint = %pos, "checkpoint loaded");
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
    if let Some(d) = &discovery {
        match d.shards().await {
            Ok(found) => shards = topology(&static_topology, found),
            Err(e) if !shards.is_empty() => {
                warn!(error = %e, "discovery failed at startup; using the static shards")
            }
            Err(e) => return Err(RunError::Discovery(e)),
        }
    }

    // A checkpoint of a shard that is not in the topology: the shard was removed (or
    // renamed) while quorumtail was stopped, and what it committed after the checkpoint is
    // not read. Say so loudly; the fix is to list it under [[shards]] until it is drained.
    for (shard, cp) in &stored {
        if !shards.iter().any(|s| &s.name == shard) {
            error!(
                %shard,
                checkpoint = %cp,
                "a checkpoint exists for a shard that is not in the topology: changes it committed after the checkpoint are NOT emitted. If the shard was removed while quorumtail was stopped, add it under [[shards]] with its members until it is drained; if it is gone for good, remove its checkpoint"
            );
            status
                .orphans
                .lock()
                .map(|mut o| o.push(shard.to_string()))
                .ok();
        }
    }
    let names: Vec<Arc<str>> = shards.iter().map(|s| s.name.clone()).collect();
    let status_for_sink = status.clone();
    let sink = match c.sink.kind {
        SinkKind::File => Sink::file(&FileSinkConfig::new(
            c.sink.path.clone().unwrap_or_else(|| "-".into()),
        ))?,
        SinkKind::Kafka => {
            let mut k = KafkaSinkConfig::new(c.sink.brokers.clone().unwrap_or_default());
            if let Some(t) = &c.sink.topic {
                k.topic = t.parse().map_err(|e: SinkError| e)?;
            }
            k.librdkafka = c.sink.librdkafka.clone();
            Sink::kafka(&k, &names).await?
        }
    };

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
    };

    let pipelines_stop = CancellationToken::new();
    let mut running = Running {
        tasks: JoinSet::new(),
        shards: HashMap::new(),
        status,
        failed: Vec::new(),
        failed_shards: Default::default(),
    };
    for s in shards {
        let cp = stored.get(&s.name).copied();
        running.start(s, cp, &shared, &pipelines_stop);
    }

    // Confirmed progress is stored periodically by its own task; the final store follows
    // the sink's flush below.
    let checkpointer_stop = CancellationToken::new();
    let checkpointer = tokio::spawn(quorumtail_sink::run_checkpointer(
        sink.view(),
        store.clone(),
        cfg.checkpoint_interval,
        checkpointer_stop.clone(),
    ));
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
                if running.tasks.is_empty() && discovery.is_none() {
                    warn!("every shard pipeline has stopped");
                    break;
                }
            }
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
                    let discovered = match &discovery {
                        Some(d) => d.shards().await.unwrap_or_else(|e| {
                            warn!(error = %e, "discovery failed during reload; using the static shards only");
                            Vec::new()
                        }),
                        None => Vec::new(),
                    };
                    info!("configuration reloaded: applying its topology (other settings take effect at the next start)");
                    running.reconcile(topology(&static_topology, discovered), &positions(&stored, &sink), &shared, &pipelines_stop, new.start);
                }
            },
            _ = discovery_tick.tick(), if discovery.is_some() => {
                if let Some(d) = &discovery {
                    match d.shards().await {
                        // A shard that appears in the cluster is new: its oplog is short, read it all.
                        Ok(found) => running.reconcile(topology(&static_topology, found), &positions(&stored, &sink), &shared, &pipelines_stop, crate::config::StartPosition::Earliest),
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
    })
}

struct ShardRun {
    spec: ShardSpec,
    control: mpsc::Sender<Control>,
    draining: bool,
}

struct Running {
    tasks: JoinSet<(Arc<str>, Result<(), ShardError>)>,
    shards: HashMap<Arc<str>, ShardRun>,
    status: Arc<Status>,
    failed: Vec<String>,
    failed_shards: std::collections::HashSet<Arc<str>>,
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
        let fut = run_shard(spec.clone(), shared.clone(), checkpoint, stats, rx, token);
        self.tasks.spawn(async move { (name, fut.await) });
        self.shards.insert(
            spec.name.clone(),
            ShardRun {
                spec,
                control: tx,
                draining: false,
            },
        );
    }

    fn finished(
        &mut self,
        done: Result<(Arc<str>, Result<(), ShardError>), tokio::task::JoinError>,
    ) {
        match done {
            Ok((name, Ok(()))) => {
                self.shards.remove(&name);
            }
            Ok((name, Err(e))) => {
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
                    info!(shard = %s.name, members = ?s.members, start = ?new_shard_start, "shard added: starting its pipeline");
                    let mut shared = shared.clone();
                    if !stored.contains_key(&s.name) {
                        shared.start = new_shard_start;
                    }
                    self.start(s.clone(), stored.get(&s.name).copied(), &shared, stop);
                    changed = true;
                }
                Some(run) if run.spec.members != s.members || run.spec.arbiters != s.arbiters => {
                    let _ = run.control.try_send(Control::Members(s.clone()));
                    run.spec = s.clone();
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

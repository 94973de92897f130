//! The public, in-process API: start a cluster or a replica set, inject faults, read the
//! ground truth. Every method here is also reachable from another process through the
//! `mongosimControl` admin command (see [`crate::control`]).

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{Bson, RawDocumentBuf, Timestamp};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::fixture;
use crate::server::Shared;
use crate::version::ServerVersion;
use crate::world::{
    CmdError, MemberState, Proc, SetRole, ShardEntry, ShardState, Sharding, SimConfig, World,
};

/// Errors of the control API.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding a port failed (in use, or no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No simulated process has this address.
    #[error("no simulated process listens on {0}")]
    UnknownNode(SocketAddr),
    /// No shard or replica set has this name.
    #[error("no shard or replica set named {0:?}")]
    UnknownShard(String),
    /// The operation needs a sharded cluster.
    #[error("this simulation is a single replica set; {0} needs a sharded cluster")]
    NotSharded(&'static str),
    /// The simulated server refused, as mongod would.
    #[error("{} ({}): {}", .0.code_name, .0.code, .0.errmsg)]
    Command(CmdError),
    /// A fixture could not be loaded.
    #[error("fixture {dir}: {message}")]
    Fixture {
        /// The fixture directory.
        dir: String,
        /// What is wrong and where.
        message: String,
    },
    /// A bad spec.
    #[error("invalid cluster spec: {0}")]
    Spec(String),
}

impl From<CmdError> for SimError {
    fn from(e: CmdError) -> Self {
        SimError::Command(e)
    }
}

/// How to build a simulation.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of shards; 0 starts a single replica set without mongos.
    pub shards: usize,
    /// Members per shard replica set.
    pub nodes_per_shard: usize,
    /// Members of the config server replica set (mlaunch default: 1).
    pub config_servers: usize,
    /// First port (mongos, then shard members, then config servers, as mlaunch lays them
    /// out); 0 picks free ephemeral ports for every process.
    pub base_port: u16,
    /// Simulated release.
    pub version: ServerVersion,
    /// Interval of the primary's "periodic noop" when idle (mongod: 10 s); zero disables.
    pub noop_interval: Duration,
    /// Election timeout (mongod: 10 s): how long a set without a reachable primary waits
    /// before electing, and how long an isolated primary keeps accepting writes.
    pub election_timeout: Duration,
    /// Cap each node's oplog at this many entries.
    pub oplog_max_entries: Option<usize>,
    /// Cap each node's oplog at this many bytes.
    pub oplog_max_bytes: Option<usize>,
    /// Split points of collections sharded through mongos (on `_id`); chunks are assigned
    /// to shards round-robin. `None`: 1000, 2000, ... (one chunk per shard).
    pub split_points: Option<Vec<Bson>>,
    /// Name of the replica set when `shards == 0` (mlaunch: "replset").
    pub replica_set_name: String,
    /// Shard names; empty (the default) names them shard01, shard02, ... as mlaunch does.
    pub shard_names: Vec<String>,
    /// How often the simulation advances (replication, elections, no-ops).
    pub tick_interval: Duration,
    /// Operations per applyOps oplog entry before a committed transaction is logged as a
    /// `partialTxn` chain (mongod splits at 16 MB; set small to exercise chains).
    pub max_txn_ops_per_entry: Option<usize>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            shards: 2,
            nodes_per_shard: 3,
            config_servers: 1,
            base_port: 0,
            version: ServerVersion::V7_0,
            noop_interval: Duration::from_secs(10),
            election_timeout: Duration::from_secs(10),
            oplog_max_entries: None,
            oplog_max_bytes: None,
            split_points: None,
            replica_set_name: "replset".to_owned(),
            shard_names: Vec::new(),
            tick_interval: Duration::from_millis(5),
            max_txn_ops_per_entry: None,
        }
    }
}

/// One process of the layout.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProcessInfo {
    /// "mongos", "shard", "config" or "replset".
    pub role: String,
    /// Replica set name (empty for mongos).
    pub set: String,
    /// `127.0.0.1:port`.
    pub addr: String,
}

/// The processes of a simulation, for printing and for `--layout-json`.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    /// The mongos, if sharded.
    pub mongos: Option<String>,
    /// Shard (or the single replica set) names with their members.
    pub shards: Vec<SetLayout>,
    /// The config server replica set, if sharded.
    pub config: Option<SetLayout>,
    /// Every process, one per line when printed.
    pub processes: Vec<ProcessInfo>,
}

/// A replica set in the layout.
#[derive(Debug, Clone, Serialize)]
pub struct SetLayout {
    /// Set name.
    pub name: String,
    /// Member addresses.
    pub members: Vec<String>,
    /// `mongodb://...?replicaSet=name`.
    pub uri: String,
}

/// A node's view, for status and tests.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Address.
    pub addr: String,
    /// Set name.
    pub set: String,
    /// Process is up.
    pub alive: bool,
    /// Cut from its set.
    pub partitioned: bool,
    /// "PRIMARY" or "SECONDARY".
    pub state: String,
    /// Term as the node sees it.
    pub term: i64,
    /// Entries held.
    pub oplog_len: usize,
    /// Newest entry's ts as (seconds, increment).
    pub last_ts: (u32, u32),
    /// Replication lag in milliseconds.
    pub lag_ms: u64,
}

/// A running simulation: a sharded cluster, or a single replica set (`shards == 0`).
#[derive(Debug)]
pub struct Cluster {
    shared: Arc<Shared>,
    spec: ClusterSpec,
    ticker: JoinHandle<()>,
}

async fn bind(port: u16) -> Result<(TcpListener, SocketAddr), SimError> {
    let sock = SocketAddr::from(([127, 0, 0, 1], port));
    let addr = sock.to_string();
    // A just-killed listener may take a moment to release the port: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(sock).await {
            Ok(l) => {
                let a = l.local_addr().map_err(|source| SimError::Bind {
                    addr: addr.clone(),
                    source,
                })?;
                return Ok((l, a));
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && port != 0
                    && Instant::now() < deadline =>
            {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => return Err(SimError::Bind { addr, source }),
        }
    }
}

async fn bind_many(
    base: u16,
    offset: usize,
    count: usize,
) -> Result<Vec<(TcpListener, SocketAddr)>, SimError> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let port = if base == 0 {
            0
        } else {
            u16::try_from(usize::from(base) + offset + i)
                .map_err(|_| SimError::Spec(format!("port {base}+{} overflows", offset + i)))?
        };
        out.push(bind(port).await?);
    }
    Ok(out)
}

impl Cluster {
    /// Starts every process and returns once all listeners accept connections.
    ///
    /// # Errors
    /// [`SimError::Bind`] when a port is taken, [`SimError::Spec`] for an empty topology.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, SimError> {
        if spec.nodes_per_shard == 0 {
            return Err(SimError::Spec("nodes_per_shard must be at least 1".into()));
        }
        let cfg = SimConfig {
            noop_interval: spec.noop_interval,
            election_timeout: spec.election_timeout,
            oplog_max_entries: spec.oplog_max_entries,
            oplog_max_bytes: spec.oplog_max_bytes,
        };
        let mut world = World::new(spec.version, cfg);
        if let Some(max) = spec.max_txn_ops_per_entry {
            world.max_txn_ops_per_entry = max.max(1);
        }
        let now = Instant::now();
        let mut listeners = Vec::new();
        if spec.shards == 0 {
            let nodes = bind_many(spec.base_port, 0, spec.nodes_per_shard).await?;
            let addrs: Vec<SocketAddr> = nodes.iter().map(|(_, a)| *a).collect();
            world.add_set(&spec.replica_set_name, SetRole::Plain, &addrs, now);
            listeners.extend(nodes);
        } else {
            let (mongos_l, mongos) = bind_many(spec.base_port, 0, 1)
                .await?
                .pop()
                .ok_or_else(|| SimError::Spec("no mongos port".into()))?;
            let mut shards = Vec::new();
            for k in 0..spec.shards {
                let nodes = bind_many(
                    spec.base_port,
                    1 + k * spec.nodes_per_shard,
                    spec.nodes_per_shard,
                )
                .await?;
                let addrs: Vec<SocketAddr> = nodes.iter().map(|(_, a)| *a).collect();
                let name = spec
                    .shard_names
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| format!("shard{:02}", k + 1));
                let s = world.add_set(&name, SetRole::Shard, &addrs, now);
                shards.push(ShardEntry {
                    name,
                    set: s,
                    state: ShardState::Active,
                });
                listeners.extend(nodes);
            }
            let cfg_nodes = bind_many(
                spec.base_port,
                1 + spec.shards * spec.nodes_per_shard,
                spec.config_servers.max(1),
            )
            .await?;
            let addrs: Vec<SocketAddr> = cfg_nodes.iter().map(|(_, a)| *a).collect();
            let config_set = world.add_set("configRepl", SetRole::ConfigServer, &addrs, now);
            listeners.extend(cfg_nodes);
            let split_points = spec.split_points.clone().unwrap_or_else(|| {
                (1..spec.shards)
                    .map(|i| Bson::Int32(i as i32 * 1000))
                    .collect()
            });
            world.sharding = Some(Sharding {
                config_set,
                shards,
                collections: Default::default(),
                split_points,
                mongos,
                cursors: Default::default(),
                mongos_alive: true,
            });
            listeners.push((mongos_l, mongos));
        }
        world.tick(now);
        let shared = Shared::new(world);
        for (l, a) in listeners {
            shared.spawn_listener(l, a);
        }
        let ticker = spawn_ticker(shared.clone(), spec.tick_interval);
        Ok(Cluster {
            shared,
            spec,
            ticker,
        })
    }

    /// Starts the topology a fixture describes and loads its oplogs. The fixture's
    /// `server_version` replaces `spec.version`; shard count and sizes come from the fixture.
    ///
    /// # Errors
    /// [`SimError::Fixture`] for unreadable fixtures, plus those of [`Cluster::start`].
    pub async fn start_with_fixture(
        mut spec: ClusterSpec,
        dir: &Path,
    ) -> Result<Cluster, SimError> {
        let fx = fixture::read(dir)?;
        spec.version = fx.version;
        spec.nodes_per_shard = fx.shards.iter().map(|s| s.nodes.len()).max().unwrap_or(1);
        if spec.shards == 0 && fx.shards.len() == 1 {
            spec.replica_set_name = fx.shards[0].name.clone();
        } else {
            spec.shards = fx.shards.len();
            spec.shard_names = fx.shards.iter().map(|s| s.name.clone()).collect();
        }
        let cluster = Cluster::start(spec).await?;
        cluster.apply_fixture(fx)?;
        Ok(cluster)
    }

    /// Replaces the oplogs (and data) of the named sets with a fixture's.
    ///
    /// # Errors
    /// [`SimError::Fixture`] when the fixture is unreadable or names a set this cluster
    /// lacks or sizes it differently.
    pub fn load_fixture(&self, dir: &Path) -> Result<(), SimError> {
        let fx = fixture::read(dir)?;
        self.apply_fixture(fx)
    }

    fn apply_fixture(&self, fx: fixture::Fixture) -> Result<(), SimError> {
        {
            let mut w = self.shared.world();
            fixture::apply(&mut w, &fx, Instant::now())?;
        }
        self.shared.notify();
        Ok(())
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.shared.world()
    }

    /// The spec the cluster was started with.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The mongos address.
    ///
    /// # Panics
    /// For a single replica set (use [`Cluster::try_mongos_addr`]).
    pub fn mongos_addr(&self) -> SocketAddr {
        self.try_mongos_addr()
            .expect("mongos_addr() on a replica-set-only simulation")
    }

    /// The mongos address, if sharded.
    pub fn try_mongos_addr(&self) -> Option<SocketAddr> {
        self.world().sharding.as_ref().map(|s| s.mongos)
    }

    /// `mongodb://127.0.0.1:<mongos port>/` (sharded) or the replica set URI.
    pub fn uri(&self) -> String {
        match self.try_mongos_addr() {
            Some(a) => format!("mongodb://{a}/"),
            None => self
                .shard_names()
                .first()
                .map(|n| self.replica_set_uri(n))
                .unwrap_or_default(),
        }
    }

    /// Names of the shards (not removed), or the single replica set's name.
    pub fn shard_names(&self) -> Vec<String> {
        let w = self.world();
        match &w.sharding {
            Some(sh) => sh
                .shards
                .iter()
                .filter(|s| s.state != ShardState::Removed)
                .map(|s| s.name.clone())
                .collect(),
            None => w.sets.iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// Members of a shard / replica set (the config set is "configRepl").
    pub fn shard_members(&self, name: &str) -> Vec<SocketAddr> {
        let w = self.world();
        w.set_index(name)
            .map(|s| w.sets[s].nodes.iter().map(|n| n.addr).collect())
            .unwrap_or_default()
    }

    /// Config server members (empty for a single replica set).
    pub fn config_members(&self) -> Vec<SocketAddr> {
        self.shard_members("configRepl")
    }

    /// `mongodb://h1,h2,h3/?replicaSet=name`.
    pub fn replica_set_uri(&self, name: &str) -> String {
        let hosts: Vec<String> = self
            .shard_members(name)
            .iter()
            .map(|a| a.to_string())
            .collect();
        format!("mongodb://{}/?replicaSet={name}", hosts.join(","))
    }

    /// The current primary of a set (the reachable one with the highest term; an isolated
    /// primary that has not stepped down yet is reported only if no other exists).
    pub fn primary_of(&self, name: &str) -> Option<SocketAddr> {
        let w = self.world();
        let s = w.set_index(name)?;
        w.sets[s].primary_index().map(|p| w.sets[s].nodes[p].addr)
    }

    /// Every process, for printing.
    pub fn layout(&self) -> Layout {
        let w = self.world();
        let mut processes = Vec::new();
        let mongos = w.sharding.as_ref().map(|s| s.mongos.to_string());
        if let Some(m) = &mongos {
            processes.push(ProcessInfo {
                role: "mongos".into(),
                set: String::new(),
                addr: m.clone(),
            });
        }
        let mut shards = Vec::new();
        let mut config = None;
        for set in &w.sets {
            let members: Vec<String> = set.nodes.iter().map(|n| n.addr.to_string()).collect();
            let role = match set.role {
                SetRole::Plain => "replset",
                SetRole::Shard => "shard",
                SetRole::ConfigServer => "config",
            };
            for m in &members {
                processes.push(ProcessInfo {
                    role: role.into(),
                    set: set.name.clone(),
                    addr: m.clone(),
                });
            }
            let sl = SetLayout {
                name: set.name.clone(),
                uri: format!("mongodb://{}/?replicaSet={}", members.join(","), set.name),
                members,
            };
            if set.role == SetRole::ConfigServer {
                config = Some(sl);
            } else {
                shards.push(sl);
            }
        }
        Layout {
            mongos,
            shards,
            config,
            processes,
        }
    }

    /// Per-node status.
    pub fn status(&self) -> Vec<NodeStatus> {
        status(&self.world())
    }

    /// Kills a process: its listener closes, its connections drop, its cursors are lost.
    ///
    /// # Errors
    /// [`SimError::UnknownNode`].
    pub async fn kill_node(&self, addr: SocketAddr) -> Result<(), SimError> {
        kill_node(&self.shared, addr).await
    }

    /// Restarts a killed process on the same port with its data and oplog; it rejoins as a
    /// secondary (and rolls back entries the set does not have).
    ///
    /// # Errors
    /// [`SimError::UnknownNode`], [`SimError::Bind`].
    pub async fn restart_node(&self, addr: SocketAddr) -> Result<(), SimError> {
        restart_node(&self.shared, addr).await
    }

    /// Cuts a node from its set: clients still reach it, but it neither replicates nor
    /// votes. A partitioned primary keeps accepting writes for one election timeout.
    ///
    /// # Errors
    /// [`SimError::UnknownNode`].
    pub async fn partition_node(&self, addr: SocketAddr) -> Result<(), SimError> {
        set_partition(&self.shared, addr, true)
    }

    /// Reconnects a partitioned node.
    ///
    /// # Errors
    /// [`SimError::UnknownNode`].
    pub async fn heal_node(&self, addr: SocketAddr) -> Result<(), SimError> {
        set_partition(&self.shared, addr, false)
    }

    /// `replSetStepDown` on the set's primary; the most up-to-date secondary takes over.
    ///
    /// # Errors
    /// [`SimError::UnknownShard`], or [`SimError::Command`] when no primary / no electable
    /// secondary exists.
    pub async fn step_down(&self, shard: &str) -> Result<(), SimError> {
        step_down(&self.shared, shard)
    }

    /// Sets how long entries take to reach `addr`.
    ///
    /// # Errors
    /// [`SimError::UnknownNode`].
    pub fn set_lag(&self, addr: SocketAddr, lag: Duration) -> Result<(), SimError> {
        set_lag(&self.shared, addr, lag)
    }

    /// Drops the `count` oldest entries of a node's oplog (as if the capped oplog rolled
    /// over): live cursors positioned there fail with CappedPositionLost.
    ///
    /// # Errors
    /// [`SimError::UnknownNode`].
    pub fn truncate_oplog(&self, addr: SocketAddr, count: usize) -> Result<(), SimError> {
        truncate_oplog(&self.shared, addr, count)
    }

    /// Moves the chunk of `ns` containing `key` (an `_id`) to shard `to`.
    ///
    /// # Errors
    /// [`SimError::NotSharded`], [`SimError::Command`] (unknown shard, no primary).
    pub async fn move_chunk(
        &self,
        ns: &str,
        key: impl Into<Bson>,
        to: &str,
    ) -> Result<(), SimError> {
        move_chunk(&self.shared, ns, key.into(), to)
    }

    /// Adds a new shard replica set with `nodes` members; returns its name.
    ///
    /// # Errors
    /// [`SimError::NotSharded`], [`SimError::Bind`].
    pub async fn add_shard(&self, nodes: usize) -> Result<String, SimError> {
        add_shard(&self.shared, nodes, self.spec.base_port).await
    }

    /// removeShard, first call: the shard is marked `draining: true` and its chunks are
    /// migrated to the other shards.
    ///
    /// # Errors
    /// [`SimError::UnknownShard`], [`SimError::Command`].
    pub async fn begin_remove_shard(&self, shard: &str) -> Result<(), SimError> {
        begin_remove_shard(&self.shared, shard).map(|_| ())
    }

    /// removeShard to completion: drains (if not yet) and removes it from config.shards.
    /// Its mongods keep running, as real ones do after removal.
    ///
    /// # Errors
    /// [`SimError::UnknownShard`], [`SimError::Command`].
    pub async fn remove_shard(&self, shard: &str) -> Result<(), SimError> {
        begin_remove_shard(&self.shared, shard)?;
        finish_remove_shard(&self.shared, shard)
    }

    /// Ground truth: a node's oplog, oldest first, as raw BSON.
    pub fn oplog_snapshot(&self, addr: SocketAddr) -> Vec<RawDocumentBuf> {
        let w = self.world();
        match w.locate(addr) {
            Some(Proc::Node { set, node }) => w.sets[set].nodes[node]
                .oplog
                .iter()
                .map(|e| e.to_raw())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Ground truth: every entry of the set that reached a majority, in oplog order
    /// (entries that fell off every oplog before committing are missing).
    pub fn committed_entries(&self, shard: &str) -> Vec<RawDocumentBuf> {
        let w = self.world();
        w.set_index(shard)
            .map(|s| w.sets[s].committed.iter().map(|e| e.to_raw()).collect())
            .unwrap_or_default()
    }

    /// Ground truth: entries removed from some member by rollback (never committed).
    pub fn rolled_back_entries(&self, shard: &str) -> Vec<RawDocumentBuf> {
        let w = self.world();
        w.set_index(shard)
            .map(|s| w.sets[s].rolled_back.iter().map(|e| e.to_raw()).collect())
            .unwrap_or_default()
    }

    /// The newest majority-committed `(ts, t)` of a set.
    pub fn commit_point(&self, shard: &str) -> Option<(Timestamp, Option<i64>)> {
        let w = self.world();
        let s = w.set_index(shard)?;
        w.sets[s].commit_point.as_ref().map(|c| (c.id.ts, c.id.t))
    }

    /// Runs a command in-process as if a client sent it to `addr` (a mongos or a member),
    /// without a socket. `cmd` must carry `$db`. Returns the reply document, errors included.
    pub async fn command(&self, addr: SocketAddr, cmd: bson::Document) -> bson::Document {
        crate::commands::run_in_process(&self.shared, addr, cmd).await
    }

    /// Inserts documents into `db.coll` through the mongos (or the replica set's primary),
    /// as a load generator for demos and tests.
    ///
    /// # Errors
    /// [`SimError::Command`] with the server's error (no primary, duplicate key...).
    pub async fn insert(&self, ns: &str, docs: Vec<bson::Document>) -> Result<(), SimError> {
        let (db, coll) = ns
            .split_once('.')
            .ok_or_else(|| SimError::Spec(format!("namespace {ns:?} is not db.collection")))?;
        let target = match self.try_mongos_addr() {
            Some(m) => m,
            None => {
                let name = self.shard_names().first().cloned().unwrap_or_default();
                self.primary_of(&name)
                    .ok_or_else(|| SimError::Command(CmdError::not_primary()))?
            }
        };
        let docs: Vec<Bson> = docs.into_iter().map(Bson::Document).collect();
        let reply = self
            .command(
                target,
                bson::doc! {"insert": coll, "documents": docs, "$db": db},
            )
            .await;
        reply_to_result(&reply)
    }

    /// Waits until `check` holds or `timeout` passes; returns whether it held. Re-checks on
    /// every simulation change (no fixed sleeps).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Cluster) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut rx = self.shared.changes.subscribe();
            if check(self) {
                return true;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return check(self),
                // Conditions that depend on time alone (lag) are re-checked each tick.
                _ = tokio::time::sleep(self.spec.tick_interval * 4) => {}
            }
        }
    }

    /// Stops every process.
    pub async fn shutdown(self) {
        self.ticker.abort();
        self.shared.stop_all().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.ticker.abort();
        self.shared.shutdown.cancel();
    }
}

fn reply_to_result(reply: &bson::Document) -> Result<(), SimError> {
    let err_of = |d: &bson::Document| {
        CmdError::new(
            d.get_i32("code").unwrap_or(1),
            "CommandFailed",
            d.get_str("errmsg").unwrap_or("command failed").to_owned(),
        )
    };
    if reply.get_f64("ok").unwrap_or(0.0) != 1.0 {
        return Err(SimError::Command(err_of(reply)));
    }
    if let Some(Bson::Document(first)) = reply.get_array("writeErrors").ok().and_then(|a| a.first())
    {
        return Err(SimError::Command(err_of(first)));
    }
    Ok(())
}

fn spawn_ticker(shared: Arc<Shared>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = interval.tick() => {
                    let changed = shared.world().tick(Instant::now());
                    if changed {
                        shared.notify();
                    }
                }
            }
        }
    })
}

pub(crate) fn status(w: &World) -> Vec<NodeStatus> {
    let mut out = Vec::new();
    for set in &w.sets {
        for n in &set.nodes {
            let (ts, _) = n.last_optime();
            out.push(NodeStatus {
                addr: n.addr.to_string(),
                set: set.name.clone(),
                alive: n.alive,
                partitioned: n.partitioned,
                state: match n.state {
                    MemberState::Primary => "PRIMARY".into(),
                    MemberState::Secondary => "SECONDARY".into(),
                },
                term: n.term,
                oplog_len: n.oplog.len(),
                last_ts: (ts.time, ts.increment),
                lag_ms: n.lag.as_millis() as u64,
            });
        }
    }
    out
}

fn locate_node(w: &World, addr: SocketAddr) -> Result<(usize, usize), SimError> {
    match w.locate(addr) {
        Some(Proc::Node { set, node }) => Ok((set, node)),
        _ => Err(SimError::UnknownNode(addr)),
    }
}

pub(crate) async fn kill_node(shared: &Arc<Shared>, addr: SocketAddr) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        match w.locate(addr) {
            Some(Proc::Node { set, node }) => w.kill(set, node, Instant::now()),
            Some(Proc::Mongos) => {
                if let Some(sh) = w.sharding.as_mut() {
                    sh.mongos_alive = false;
                    sh.cursors.clear();
                }
            }
            None => return Err(SimError::UnknownNode(addr)),
        }
    }
    tracing::info!(%addr, "kill node");
    shared.stop_listener(addr).await;
    shared.notify();
    Ok(())
}

pub(crate) async fn restart_node(shared: &Arc<Shared>, addr: SocketAddr) -> Result<(), SimError> {
    let proc = shared
        .world()
        .locate(addr)
        .ok_or(SimError::UnknownNode(addr))?;
    if shared
        .procs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&addr)
    {
        return Ok(()); // already running
    }
    let (listener, _) = bind(addr.port()).await?;
    {
        let mut w = shared.world();
        match proc {
            Proc::Node { set, node } => w.restart(set, node, Instant::now()),
            Proc::Mongos => {
                if let Some(sh) = w.sharding.as_mut() {
                    sh.mongos_alive = true;
                }
            }
        }
    }
    shared.spawn_listener(listener, addr);
    tracing::info!(%addr, "restart node");
    shared.notify();
    Ok(())
}

pub(crate) fn set_partition(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    partitioned: bool,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let (s, n) = locate_node(&w, addr)?;
        let node = &mut w.sets[s].nodes[n];
        node.partitioned = partitioned;
        node.partitioned_at = partitioned.then(Instant::now);
        tracing::info!(%addr, partitioned, "partition change");
    }
    shared.notify();
    Ok(())
}

pub(crate) fn step_down(shared: &Arc<Shared>, shard: &str) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let s = w
            .set_index(shard)
            .ok_or_else(|| SimError::UnknownShard(shard.into()))?;
        w.step_down(s, Instant::now())?;
    }
    shared.notify();
    Ok(())
}

pub(crate) fn set_lag(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    lag: Duration,
) -> Result<(), SimError> {
    let mut w = shared.world();
    let (s, n) = locate_node(&w, addr)?;
    w.sets[s].nodes[n].lag = lag;
    Ok(())
}

pub(crate) fn truncate_oplog(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    count: usize,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let (s, n) = locate_node(&w, addr)?;
        for _ in 0..count {
            if w.sets[s].nodes[n].oplog.pop_front().is_none() {
                break;
            }
        }
    }
    shared.notify();
    Ok(())
}

pub(crate) fn move_chunk(
    shared: &Arc<Shared>,
    ns: &str,
    key: Bson,
    to: &str,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        if w.sharding.is_none() {
            return Err(SimError::NotSharded("move_chunk"));
        }
        w.move_chunk(ns, &key, to, Instant::now())?;
    }
    shared.notify();
    Ok(())
}

pub(crate) async fn add_shard(
    shared: &Arc<Shared>,
    nodes: usize,
    base_port: u16,
) -> Result<String, SimError> {
    let (name, next_port) = {
        let w = shared.world();
        let sh = w
            .sharding
            .as_ref()
            .ok_or(SimError::NotSharded("add_shard"))?;
        let max_port = w
            .sets
            .iter()
            .flat_map(|s| s.nodes.iter().map(|n| n.addr.port()))
            .chain([sh.mongos.port()])
            .max()
            .unwrap_or(0);
        let next = if base_port == 0 {
            0
        } else {
            max_port.saturating_add(1)
        };
        (format!("shard{:02}", sh.shards.len() + 1), next)
    };
    let listeners = bind_many(next_port, 0, nodes.max(1)).await?;
    let addrs: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
    {
        let mut w = shared.world();
        let s = w.add_set(&name, SetRole::Shard, &addrs, Instant::now());
        if let Some(sh) = w.sharding.as_mut() {
            sh.shards.push(ShardEntry {
                name: name.clone(),
                set: s,
                state: ShardState::Active,
            });
        }
    }
    for (l, a) in listeners {
        shared.spawn_listener(l, a);
    }
    shared.notify();
    tracing::info!(shard = %name, "added shard");
    Ok(name)
}

/// Marks a shard draining and moves its chunks away. Returns whether it was already draining.
pub(crate) fn begin_remove_shard(shared: &Arc<Shared>, shard: &str) -> Result<bool, SimError> {
    let was_draining = {
        let mut w = shared.world();
        let sh = w
            .sharding
            .as_mut()
            .ok_or(SimError::NotSharded("remove_shard"))?;
        let entry = sh
            .shards
            .iter_mut()
            .find(|s| s.name == shard && s.state != ShardState::Removed)
            .ok_or_else(|| SimError::UnknownShard(shard.into()))?;
        let was = entry.state == ShardState::Draining;
        entry.state = ShardState::Draining;
        let others: Vec<String> = sh
            .shards
            .iter()
            .filter(|s| s.state == ShardState::Active)
            .map(|s| s.name.clone())
            .collect();
        if others.is_empty() {
            return Err(SimError::Command(CmdError::new(
                20,
                "IllegalOperation",
                "Operation not allowed because it would remove the last shard",
            )));
        }
        let moves: Vec<(String, Bson)> = sh
            .collections
            .iter()
            .flat_map(|(ns, chunks)| {
                chunks
                    .iter()
                    .filter(|c| c.shard == shard)
                    .map(|c| (ns.clone(), c.min.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let now = Instant::now();
        for (i, (ns, min)) in moves.into_iter().enumerate() {
            let to = others[i % others.len()].clone();
            w.move_chunk(&ns, &min, &to, now)?;
        }
        was
    };
    shared.notify();
    Ok(was_draining)
}

pub(crate) fn finish_remove_shard(shared: &Arc<Shared>, shard: &str) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let sh = w
            .sharding
            .as_mut()
            .ok_or(SimError::NotSharded("remove_shard"))?;
        let entry = sh
            .shards
            .iter_mut()
            .find(|s| s.name == shard && s.state != ShardState::Removed)
            .ok_or_else(|| SimError::UnknownShard(shard.into()))?;
        entry.state = ShardState::Removed;
    }
    shared.notify();
    Ok(())
}

/// A single replica set (no mongos, no config servers). Dereferences to [`Cluster`] for the
/// fault and ground-truth API.
#[derive(Debug)]
pub struct ReplicaSet(Cluster);

/// How to build a [`ReplicaSet`].
#[derive(Debug, Clone)]
pub struct ReplicaSetSpec {
    /// Replica set name (mlaunch: "replset").
    pub name: String,
    /// Members.
    pub nodes: usize,
    /// First port, 0 for ephemeral ports.
    pub base_port: u16,
    /// Simulated release.
    pub version: ServerVersion,
    /// See [`ClusterSpec::noop_interval`].
    pub noop_interval: Duration,
    /// See [`ClusterSpec::election_timeout`].
    pub election_timeout: Duration,
    /// See [`ClusterSpec::oplog_max_entries`].
    pub oplog_max_entries: Option<usize>,
    /// See [`ClusterSpec::oplog_max_bytes`].
    pub oplog_max_bytes: Option<usize>,
    /// See [`ClusterSpec::max_txn_ops_per_entry`].
    pub max_txn_ops_per_entry: Option<usize>,
}

impl Default for ReplicaSetSpec {
    fn default() -> Self {
        let c = ClusterSpec::default();
        ReplicaSetSpec {
            name: c.replica_set_name,
            nodes: 3,
            base_port: 0,
            version: c.version,
            noop_interval: c.noop_interval,
            election_timeout: c.election_timeout,
            oplog_max_entries: None,
            oplog_max_bytes: None,
            max_txn_ops_per_entry: None,
        }
    }
}

impl ReplicaSet {
    /// Starts the set; member 0 is the first primary.
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub async fn start(spec: ReplicaSetSpec) -> Result<ReplicaSet, SimError> {
        let cluster = Cluster::start(ClusterSpec {
            shards: 0,
            nodes_per_shard: spec.nodes,
            base_port: spec.base_port,
            version: spec.version,
            noop_interval: spec.noop_interval,
            election_timeout: spec.election_timeout,
            oplog_max_entries: spec.oplog_max_entries,
            oplog_max_bytes: spec.oplog_max_bytes,
            max_txn_ops_per_entry: spec.max_txn_ops_per_entry,
            replica_set_name: spec.name,
            ..ClusterSpec::default()
        })
        .await?;
        Ok(ReplicaSet(cluster))
    }

    /// The set's name.
    pub fn name(&self) -> String {
        self.0.spec.replica_set_name.clone()
    }

    /// Member addresses.
    pub fn members(&self) -> Vec<SocketAddr> {
        self.0.shard_members(&self.name())
    }

    /// Current primary.
    pub fn primary(&self) -> Option<SocketAddr> {
        self.0.primary_of(&self.name())
    }

    /// Stops every process.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

impl Deref for ReplicaSet {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.0
    }
}

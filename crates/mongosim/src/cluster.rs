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

use crate::auth::{Auth, SimUser};
use crate::fixture;
use crate::membership::{self, MemberSpec};
use crate::server::Shared;
use crate::tls::TlsSpec;
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
    /// Member configuration of every shard replica set (and of the single replica set):
    /// votes, priority, hidden, arbiters, delayed members. `None` (the default):
    /// `nodes_per_shard` plain voters. When set, its length replaces `nodes_per_shard`.
    /// Validated as mongod validates a config (at most 7 voters, votes 0 implies priority
    /// 0, ...). The config server set always has plain voters.
    pub members: Option<Vec<MemberSpec>>,
    /// How long secondaries take to learn the commit point from their sync source or the
    /// primary's heartbeats (so their `lastWrite.majorityOpTime` trails the primary's).
    /// Default: 5 ms, about one tick.
    pub commit_point_delay: Duration,
    /// Users of every process (shards, config servers, mongos), stored on `admin`. Empty
    /// (the default): no authentication, every connection may run every command.
    pub users: Vec<SimUser>,
    /// TLS on every process (`requireTLS`); `None` (the default): plain TCP.
    pub tls: Option<TlsSpec>,
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
            members: None,
            commit_point_delay: Duration::from_millis(5),
            users: Vec::new(),
            tls: None,
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
    /// Member kind in the config: voter, passive, hidden, nonvoter, arbiter, delayed:SECS
    /// ("removed" when a reconfig dropped it).
    pub member: String,
    /// The member's view of the commit point, as (seconds, increment).
    pub commit_point: Option<(u32, u32)>,
    /// The member it replicates from.
    pub sync_source: Option<String>,
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
    /// `saslStart` commands received by every process so far (how hard clients retry a
    /// failing authentication).
    pub fn sasl_starts(&self) -> u64 {
        self.shared.auth.sasl_starts()
    }

    /// Authentications that failed so far, on every process.
    pub fn auth_failures(&self) -> u64 {
        self.shared.auth.failures()
    }

    /// Starts every process and returns once all listeners accept connections.
    ///
    /// # Errors
    /// [`SimError::Bind`] when a port is taken, [`SimError::Spec`] for an empty topology or
    /// unusable TLS files.
    pub async fn start(mut spec: ClusterSpec) -> Result<Cluster, SimError> {
        if let Some(members) = &spec.members {
            membership::validate_set(members, spec.version, false)
                .map_err(|e| SimError::Spec(format!("members: {}", e.errmsg)))?;
            spec.nodes_per_shard = members.len();
        }
        if spec.nodes_per_shard == 0 {
            return Err(SimError::Spec("nodes_per_shard must be at least 1".into()));
        }
        let tls = spec.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let members = spec
            .members
            .clone()
            .unwrap_or_else(|| vec![MemberSpec::voter(); spec.nodes_per_shard]);
        let cfg = SimConfig {
            noop_interval: spec.noop_interval,
            election_timeout: spec.election_timeout,
            oplog_max_entries: spec.oplog_max_entries,
            oplog_max_bytes: spec.oplog_max_bytes,
            commit_point_delay: spec.commit_point_delay,
        };
        let mut world = World::new(spec.version, cfg);
        if let Some(max) = spec.max_txn_ops_per_entry {
            world.max_txn_ops_per_entry = max.max(1);
        }
        world.base_port = spec.base_port;
        let now = Instant::now();
        let mut listeners = Vec::new();
        if spec.shards == 0 {
            let nodes = bind_many(spec.base_port, 0, spec.nodes_per_shard).await?;
            let addrs: Vec<SocketAddr> = nodes.iter().map(|(_, a)| *a).collect();
            world.add_set_with_members(
                &spec.replica_set_name,
                SetRole::Plain,
                &addrs,
                &members,
                now,
            );
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
                let s = world.add_set_with_members(&name, SetRole::Shard, &addrs, &members, now);
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
        let shared = Shared::new(world, Auth::new(&spec.users), tls);
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

    /// The current config of a set: every member with its `host` and `_id`, in config order.
    /// Edit it and hand it to [`Cluster::reconfigure`].
    ///
    /// # Errors
    /// [`SimError::UnknownShard`].
    pub fn member_specs(&self, set: &str) -> Result<Vec<MemberSpec>, SimError> {
        let w = self.world();
        let s = w
            .set_index(set)
            .ok_or_else(|| SimError::UnknownShard(set.into()))?;
        Ok(w.sets[s]
            .config_members()
            .map(|(_, n)| n.member.clone())
            .collect())
    }

    /// `replSetReconfig` with these members: members with a `host` of the set keep their
    /// process (their votes, priority, hidden... change), members without one are started
    /// on a new port and initial-sync (an instant copy of the primary's oplog and data),
    /// members left out are removed (their process keeps running without a config).
    /// `setVersion` goes up by one (a forced reconfig adds mongod's random 10,000+). Without
    /// `force`, at most one voting member may be added or removed, as mongod requires.
    /// Returns the members' addresses in config order.
    ///
    /// # Errors
    /// [`SimError::UnknownShard`], [`SimError::Command`] with mongod's error for an invalid
    /// config, [`SimError::Bind`].
    pub async fn reconfigure(
        &self,
        set: &str,
        members: Vec<MemberSpec>,
        force: bool,
    ) -> Result<Vec<SocketAddr>, SimError> {
        let s = self
            .world()
            .set_index(set)
            .ok_or_else(|| SimError::UnknownShard(set.into()))?;
        reconfigure(&self.shared, s, members, None, force, None).await
    }

    /// Chained replication: `node` syncs from `source` (another member of its set) instead
    /// of the primary while `source` is reachable; `None` goes back to the primary.
    ///
    /// # Errors
    /// [`SimError::UnknownNode`], or [`SimError::Spec`] when they are not in the same set.
    pub fn set_sync_source(
        &self,
        node: SocketAddr,
        source: Option<SocketAddr>,
    ) -> Result<(), SimError> {
        set_sync_source(&self.shared, node, source)
    }

    /// Stops (or resumes) replication to `node`: it receives no entries but keeps voting
    /// and learning the commit point by heartbeat. For scripting who holds which entry.
    ///
    /// # Errors
    /// [`SimError::UnknownNode`].
    pub fn block_replication(&self, node: SocketAddr, blocked: bool) -> Result<(), SimError> {
        block_replication(&self.shared, node, blocked)
    }

    /// Fault injection: `node` answers `commands` with Unauthorized (13), as mongod does
    /// for a user whose roles lack the privilege (an empty list lifts it).
    ///
    /// # Errors
    /// [`SimError::UnknownNode`] and the like when `node` is not a replica-set member.
    pub fn refuse_commands(&self, node: SocketAddr, commands: &[&str]) -> Result<(), SimError> {
        let mut w = self.world();
        let (s, n) = locate_node(&w, node)?;
        w.sets[s].nodes[n].refused_commands = commands.iter().map(|c| (*c).to_owned()).collect();
        Ok(())
    }

    /// Fault injection: `node`'s hello reports a commit point one second beyond its own
    /// newest entry (no real mongod does; a reader must not trust it past that entry).
    ///
    /// # Errors
    /// As [`Cluster::refuse_commands`].
    pub fn misreport_commit_point(&self, node: SocketAddr, on: bool) -> Result<(), SimError> {
        let mut w = self.world();
        let (s, n) = locate_node(&w, node)?;
        w.sets[s].nodes[n].misreport_commit_point = on;
        Ok(())
    }

    /// While held, a member elected in `set` stays in drain mode: it does not write its "new
    /// primary" no-op, takes no writes and commits nothing, but secondaries replicate from
    /// it. Releasing lets it finish stepping up at the next tick.
    ///
    /// # Errors
    /// [`SimError::UnknownShard`].
    pub fn hold_step_up(&self, set: &str, hold: bool) -> Result<(), SimError> {
        hold_step_up(&self.shared, set, hold)
    }

    /// How long secondaries take to learn the commit point (see
    /// [`ClusterSpec::commit_point_delay`]).
    pub fn set_commit_point_delay(&self, delay: Duration) {
        self.world().cfg.commit_point_delay = delay;
    }

    /// A member's own view of the commit point (`lastCommittedOpTime`).
    pub fn member_commit_point(&self, node: SocketAddr) -> Option<(Timestamp, Option<i64>)> {
        let w = self.world();
        let (s, n) = locate_node(&w, node).ok()?;
        w.sets[s].nodes[n]
            .commit_point
            .as_ref()
            .map(|c| (c.id.ts, c.id.t))
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

    /// Ground truth: every committed entry of the set, in oplog order: an entry enters when
    /// a primary's commit point passes it (held by `writeMajorityCount` data-bearing voters,
    /// and followed by an entry of that primary's term). Entries that fell off every oplog
    /// before committing are missing.
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

    /// The newest committed `(ts, t)` of a set (the highest commit point any primary
    /// reached).
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
                state: if n.removed {
                    "REMOVED".into()
                } else {
                    n.state.name().into()
                },
                term: n.term,
                oplog_len: n.oplog.len(),
                last_ts: (ts.time, ts.increment),
                lag_ms: n.lag.as_millis() as u64,
                member: if n.removed {
                    "removed".into()
                } else {
                    n.member.to_string()
                },
                commit_point: n
                    .commit_point
                    .as_ref()
                    .map(|c| (c.id.ts.time, c.id.ts.increment)),
                sync_source: n.sync_source.map(|j| set.nodes[j].addr.to_string()),
            });
        }
    }
    out
}

pub(crate) fn locate_node(w: &World, addr: SocketAddr) -> Result<(usize, usize), SimError> {
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
    /// See [`ClusterSpec::members`]; when set it replaces `nodes`.
    pub members: Option<Vec<MemberSpec>>,
    /// See [`ClusterSpec::commit_point_delay`].
    pub commit_point_delay: Duration,
    /// See [`ClusterSpec::users`].
    pub users: Vec<SimUser>,
    /// See [`ClusterSpec::tls`].
    pub tls: Option<TlsSpec>,
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
            members: None,
            commit_point_delay: c.commit_point_delay,
            users: Vec::new(),
            tls: None,
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
            members: spec.members,
            commit_point_delay: spec.commit_point_delay,
            users: spec.users,
            tls: spec.tls,
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

pub(crate) fn set_sync_source(
    shared: &Arc<Shared>,
    node: SocketAddr,
    source: Option<SocketAddr>,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let (s, n) = locate_node(&w, node)?;
        let src = match source {
            None => None,
            Some(a) => {
                let (s2, j) = locate_node(&w, a)?;
                if s2 != s || j == n {
                    return Err(SimError::Spec(format!(
                        "{a} cannot be the sync source of {node}: pick another member of its replica set"
                    )));
                }
                if w.sets[s].nodes[j].member.arbiter_only {
                    return Err(SimError::Spec(format!(
                        "{a} is an arbiter and has no oplog to sync from"
                    )));
                }
                Some(j)
            }
        };
        w.sets[s].nodes[n].sync_from = src;
        tracing::info!(%node, source = ?source, "sync source set");
    }
    shared.notify();
    Ok(())
}

pub(crate) fn block_replication(
    shared: &Arc<Shared>,
    node: SocketAddr,
    blocked: bool,
) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let (s, n) = locate_node(&w, node)?;
        w.sets[s].nodes[n].replication_blocked = blocked;
        tracing::info!(%node, blocked, "replication block");
    }
    shared.notify();
    Ok(())
}

pub(crate) fn hold_step_up(shared: &Arc<Shared>, set: &str, hold: bool) -> Result<(), SimError> {
    {
        let mut w = shared.world();
        let s = w
            .set_index(set)
            .ok_or_else(|| SimError::UnknownShard(set.into()))?;
        w.sets[s].hold_step_up = hold;
        tracing::info!(set, hold, "step-up hold");
    }
    shared.notify();
    Ok(())
}

fn reconfig_error(code: i32, name: &'static str, msg: impl Into<String>) -> SimError {
    SimError::Command(CmdError::new(code, name, msg))
}

/// A validated reconfig, ready to apply.
struct ReconfigPlan {
    /// Per new-config member: its existing node index, or the port to start it on
    /// (0 = ephemeral).
    slots: Vec<(MemberSpec, Result<usize, u16>)>,
    version: i32,
}

fn plan_reconfig(
    w: &World,
    s: usize,
    mut members: Vec<MemberSpec>,
    version: Option<i64>,
    force: bool,
    executing: Option<usize>,
) -> Result<ReconfigPlan, SimError> {
    let set = &w.sets[s];
    let current: Vec<&MemberSpec> = set.config_members().map(|(_, n)| &n.member).collect();
    let mut next_id = set
        .nodes
        .iter()
        .filter_map(|n| n.member.id)
        .max()
        .unwrap_or(-1)
        + 1;
    let mut next_port = {
        let max = w
            .sets
            .iter()
            .flat_map(|x| x.nodes.iter().map(|n| n.addr.port()))
            .chain(w.sharding.as_ref().map(|sh| sh.mongos.port()))
            .max()
            .unwrap_or(0);
        if w.base_port == 0 {
            0
        } else {
            max.saturating_add(1)
        }
    };
    let mut slots = Vec::with_capacity(members.len());
    for m in &mut members {
        let slot = match m.host {
            Some(h) => match w.locate(h) {
                Some(Proc::Node { set: s2, node }) if s2 == s => Ok(node),
                Some(_) => {
                    return Err(reconfig_error(
                        103,
                        "NewReplicaSetConfigurationIncompatible",
                        format!(
                            "host {h} is another process of this simulation, not a member of {}",
                            set.name
                        ),
                    ))
                }
                None => Err(h.port()),
            },
            None => {
                let port = next_port;
                if next_port != 0 {
                    next_port = next_port.saturating_add(1);
                }
                Err(port)
            }
        };
        if let Ok(node) = slot {
            let old = &set.nodes[node];
            if !old.removed {
                if let Some(id) = m.id.filter(|id| Some(*id) != old.member.id) {
                    return Err(reconfig_error(
                        103,
                        "NewReplicaSetConfigurationIncompatible",
                        format!(
                            "New and old configurations both have members with host of {} but in the new configuration the _id field is {id} and in the old configuration it is {} for replica set {}",
                            old.addr,
                            old.member.id.unwrap_or_default(),
                            set.name
                        ),
                    ));
                }
                if old.member.arbiter_only != m.arbiter_only {
                    return Err(reconfig_error(
                        103,
                        "NewReplicaSetConfigurationIncompatible",
                        format!(
                            "New and old configurations differ in the setting of the arbiterOnly field for member {}; to make this change, remove then re-add the member",
                            old.addr
                        ),
                    ));
                }
            }
            if m.id.is_none() {
                m.id = old.member.id;
            }
        }
        if m.id.is_none() {
            m.id = Some(next_id);
            next_id += 1;
        }
        slots.push((m.clone(), slot));
    }
    // Fill hosts for validation of uniqueness (new hostless members get distinct ports).
    let for_validation: Vec<MemberSpec> = slots
        .iter()
        .map(|(m, slot)| {
            let mut m = m.clone();
            if let Ok(node) = slot {
                m.host = Some(set.nodes[*node].addr);
            }
            m
        })
        .collect();
    membership::validate_set(
        &for_validation,
        w.version,
        set.role == SetRole::ConfigServer,
    )
    .map_err(SimError::Command)?;
    let version = if force {
        let given = version.unwrap_or(i64::from(set.set_version));
        given + 10_000 + i64::from(rand::random::<u32>() % 100_000)
    } else {
        let v = version.unwrap_or(i64::from(set.set_version) + 1);
        if v <= i64::from(set.set_version) {
            return Err(reconfig_error(
                103,
                "NewReplicaSetConfigurationIncompatible",
                format!(
                    "New replica set configuration version and term must be greater than old, but {{ version: {v}, term: {} }} is not greater than {{ version: {}, term: {} }} for replica set {}",
                    set.config_term, set.set_version, set.config_term, set.name
                ),
            ));
        }
        // validateSingleNodeChange: at most one voter added or removed.
        let old_voters: std::collections::BTreeSet<i32> = current
            .iter()
            .filter(|m| m.is_voter())
            .filter_map(|m| m.id)
            .collect();
        let new_voters: std::collections::BTreeSet<i32> = slots
            .iter()
            .filter(|(m, _)| m.is_voter())
            .filter_map(|(m, _)| m.id)
            .collect();
        if old_voters.symmetric_difference(&new_voters).count() > 1 {
            return Err(reconfig_error(
                93,
                "InvalidReplicaSetConfig",
                "Non force replica set reconfig can only add or remove at most 1 voting member.",
            ));
        }
        if let Some(me) = executing {
            let stays_electable = slots
                .iter()
                .any(|(m, slot)| *slot == Ok(me) && m.is_electable());
            if !stays_electable {
                return Err(reconfig_error(
                    103,
                    "NewReplicaSetConfigurationIncompatible",
                    format!(
                        "This node, {}, with _id {} is not electable under the new configuration with version {v} for replica set {}",
                        set.nodes[me].addr,
                        set.nodes[me].member.id.unwrap_or_default(),
                        set.name
                    ),
                ));
            }
        }
        v
    };
    let version = i32::try_from(version)
        .map_err(|_| reconfig_error(2, "BadValue", format!("version {version} is out of range")))?;
    Ok(ReconfigPlan { slots, version })
}

/// Validates, starts the processes of new members, and installs the config.
pub(crate) async fn reconfigure(
    shared: &Arc<Shared>,
    s: usize,
    members: Vec<MemberSpec>,
    version: Option<i64>,
    force: bool,
    executing: Option<usize>,
) -> Result<Vec<SocketAddr>, SimError> {
    let plan = {
        let w = shared.world();
        plan_reconfig(&w, s, members, version, force, executing)?
    };
    let mut listeners = Vec::new();
    let mut slots = Vec::with_capacity(plan.slots.len());
    for (m, slot) in plan.slots {
        match slot {
            Ok(node) => slots.push((m, Ok(node))),
            Err(port) => {
                let (l, addr) = bind(port).await?;
                listeners.push((l, addr));
                slots.push((m, Err(addr)));
            }
        }
    }
    let addrs = {
        let mut w = shared.world();
        let now = Instant::now();
        let cfg = w.cfg.clone();
        let mut keep = Vec::new();
        let mut addrs = Vec::new();
        for (mut m, slot) in slots {
            let n = match slot {
                Ok(node) => {
                    let addr = w.sets[s].nodes[node].addr;
                    m.host = Some(addr);
                    let was_removed = w.sets[s].nodes[node].removed;
                    let node_state = &mut w.sets[s].nodes[node];
                    node_state.member = m;
                    node_state.removed = false;
                    if node_state.member.arbiter_only {
                        node_state.state = MemberState::Arbiter;
                    }
                    if was_removed {
                        tracing::info!(%addr, "member re-added");
                    }
                    node
                }
                Err(addr) => {
                    m.host = Some(addr);
                    w.sets[s]
                        .nodes
                        .push(crate::world::NodeState::new(addr, m, &cfg, now));
                    let node = w.sets[s].nodes.len() - 1;
                    w.initial_sync(s, node);
                    tracing::info!(%addr, "member added; initial sync copied its sync source");
                    node
                }
            };
            keep.push(n);
            addrs.push(w.sets[s].nodes[n].addr);
        }
        for n in 0..w.sets[s].nodes.len() {
            if keep.contains(&n) || w.sets[s].nodes[n].removed {
                continue;
            }
            w.sets[s].nodes[n].removed = true;
            if w.sets[s].nodes[n].state == MemberState::Primary {
                w.step_down_node(s, n, now);
            }
            tracing::info!(addr = %w.sets[s].nodes[n].addr, "member removed from the config");
        }
        for n in 0..w.sets[s].nodes.len() {
            let stale = w.sets[s].nodes[n]
                .sync_from
                .is_some_and(|j| !keep.contains(&j));
            if stale {
                w.sets[s].nodes[n].sync_from = None;
            }
            let node = &w.sets[s].nodes[n];
            if node.state == MemberState::Primary && !node.member.is_electable() {
                // "Could not remain primary because no longer electable".
                w.step_down_node(s, n, now);
            }
        }
        let term = w.sets[s]
            .primary_index()
            .map(|p| w.sets[s].nodes[p].term)
            .unwrap_or(w.sets[s].config_term);
        let set = &mut w.sets[s];
        set.set_version = plan.version;
        set.config_term = if force { -1 } else { term };
        tracing::info!(set = %set.name, version = plan.version, force, "reconfig installed");
        addrs
    };
    for (l, a) in listeners {
        shared.spawn_listener(l, a);
    }
    shared.notify();
    Ok(addrs)
}

/// The `replSetReconfig` command run on member `n` of set `s`.
pub(crate) async fn repl_set_reconfig_cmd(
    shared: &Arc<Shared>,
    s: usize,
    n: usize,
    cmd: &bson::Document,
) -> Result<bson::Document, CmdError> {
    let cfg = cmd.get_document("replSetReconfig").map_err(|_| {
        CmdError::new(
            14,
            "TypeMismatch",
            "BSON field 'replSetReconfig' is the wrong type, expected type 'object'",
        )
    })?;
    let force = matches!(cmd.get("force"), Some(Bson::Boolean(true)));
    {
        let w = shared.world();
        let set = &w.sets[s];
        let node = &set.nodes[n];
        if !force && !node.writable_primary() {
            return Err(CmdError::new(
                10107,
                "NotWritablePrimary",
                format!(
                    "replSetReconfig should only be run on a writable PRIMARY. Current state {};",
                    node.state.name()
                ),
            ));
        }
        let name = cfg.get_str("_id").unwrap_or_default();
        if name != set.name {
            return Err(CmdError::new(
                103,
                "NewReplicaSetConfigurationIncompatible",
                format!(
                    "New and old configurations differ in replica set name; old was {}, and new is {name}",
                    set.name
                ),
            ));
        }
    }
    let version = match cfg.get("version") {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) if v.fract() == 0.0 => *v as i64,
        _ => {
            return Err(CmdError::new(
                40414,
                "Location40414",
                "BSON field 'ReplSetConfig.version' is missing but a required field",
            ))
        }
    };
    let docs = cfg.get_array("members").map_err(|_| {
        CmdError::new(
            40414,
            "Location40414",
            "BSON field 'ReplSetConfig.members' is missing but a required field",
        )
    })?;
    let mut members = Vec::with_capacity(docs.len());
    for d in docs {
        let Bson::Document(d) = d else {
            return Err(CmdError::new(
                14,
                "TypeMismatch",
                "members must be an array of objects",
            ));
        };
        let m = MemberSpec::from_config_doc(d, true)?;
        if m.id.is_none() {
            return Err(CmdError::new(
                40414,
                "Location40414",
                "BSON field 'MemberConfig._id' is missing but a required field",
            ));
        }
        members.push(m);
    }
    reconfigure(shared, s, members, Some(version), force, Some(n))
        .await
        .map_err(|e| match e {
            SimError::Command(c) => c,
            other => CmdError::new(2, "BadValue", other.to_string()),
        })?;
    Ok(bson::doc! {"ok": 1.0})
}

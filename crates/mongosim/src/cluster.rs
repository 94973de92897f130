//! The public, in-process API: start a cluster or a replica set, inject faults, read the
//! ground truth. Every method here is also reachable from another process through the
//! `mongosimControl` admin command (see [`crate::control`]).
//!
//! [`Cluster`] is the facade; the rest is split out:
//!
//! - [`SimError`] is defined in [`crate::error`] and re-exported here;
//! - `cluster/spec.rs`: [`ClusterSpec`], [`Layout`], [`SetLayout`], [`ProcessInfo`];
//! - `cluster/replica_set.rs`: [`ReplicaSet`] and [`ReplicaSetSpec`];
//! - the fault, status and reconfiguration operations (and [`NodeStatus`]) live in the
//!   internal `ops` module, shared with `mongosimControl` and the commands, which cannot
//!   depend on this facade (it starts the wire loop that runs them).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{Bson, Document, RawDocumentBuf, Timestamp};
use tokio::task::JoinHandle;

use crate::auth::Auth;
use crate::error::CmdError;
use crate::fixture;
use crate::membership::{self, MemberSpec};
use crate::runtime::{bind_many, Shared};
use crate::world::{Proc, SetRole, ShardEntry, ShardState, Sharding, SimConfig, World};

mod replica_set;
mod spec;

pub use crate::error::SimError;
pub use crate::ops::NodeStatus;
use crate::ops::{
    add_shard, begin_remove_shard, block_replication, defer_range_deletion, fail_next_prepare,
    finish_remove_shard, hold_resharding, hold_step_up, hold_txn_decisions, kill_node, locate_node,
    move_chunk, reconfigure, restart_node, set_lag, set_partition, set_sync_source, status,
    step_down, truncate_oplog,
};
pub use replica_set::{ReplicaSet, ReplicaSetSpec};
pub use spec::{ClusterSpec, Layout, ProcessInfo, SetLayout};

/// A running simulation: a sharded cluster, or a single replica set (`shards == 0`).
#[derive(Debug)]
pub struct Cluster {
    shared: Arc<Shared>,
    spec: ClusterSpec,
    ticker: JoinHandle<()>,
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
                databases: Default::default(),
                config_set,
                shards,
                collections: Default::default(),
                split_points,
                mongos,
                cursors: Default::default(),
                mongos_alive: true,
                keys: Default::default(),
                unsplittable: Default::default(),
            });
            listeners.push((mongos_l, mongos));
        }
        world.tick(now);
        let shared = Shared::new(world, Auth::new(&spec.users), tls, crate::server::serve);
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

    /// Each database's primary shard (`config.databases`), by database name.
    pub fn database_primaries(&self) -> std::collections::BTreeMap<String, String> {
        self.shared
            .world()
            .sharding
            .as_ref()
            .map(|sh| {
                sh.databases
                    .iter()
                    .map(|(db, d)| (db.clone(), d.primary.clone()))
                    .collect()
            })
            .unwrap_or_default()
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

    /// Holds every distributed transaction's coordinator after all participants prepared,
    /// before it decides (mongod's `hangBeforeWritingDecision` fail point), or releases
    /// them: prepared transactions stay open meanwhile.
    pub fn hold_txn_decisions(&self, hold: bool) {
        hold_txn_decisions(&self.shared, hold)
    }

    /// Holds (`Some(ns)`) or releases (`None`) every `find` and `getMore` of namespace `ns`
    /// on the shards' members: they wait before answering until released (mongod's
    /// `waitInFindBeforeMakingBatch` fail point with `nss`). Reads through mongos wait on
    /// the member they reach.
    pub fn hold_reads(&self, ns: Option<&str>) {
        self.shared
            .read_hold
            .send_replace(ns.map(|n| (n.to_owned(), false)));
    }

    /// As [`Cluster::hold_reads`] for `getMore`s only: a `find` answers its first batch,
    /// the cursor's next batches wait (mongod's
    /// `waitAfterPinningCursorBeforeGetMoreBatch` fail point).
    pub fn hold_get_mores(&self, ns: Option<&str>) {
        self.shared
            .read_hold
            .send_replace(ns.map(|n| (n.to_owned(), true)));
    }

    /// Holds every resharding operation (reshardCollection, moveCollection,
    /// unshardCollection) after its clone, before its cut-over, or releases them: writes
    /// meanwhile go to the donors and reach the new placement through oplog application.
    pub fn hold_resharding(&self, hold: bool) {
        hold_resharding(&self.shared, hold)
    }

    /// The namespaces being resharded (between clone and cut-over).
    pub fn resharding_in_progress(&self) -> Vec<String> {
        self.shared.world().resharding.keys().cloned().collect()
    }

    /// The shard key of each sharded collection that is not `{_id: 1}` (after
    /// reshardCollection), by namespace.
    pub fn shard_keys(&self) -> std::collections::BTreeMap<String, Document> {
        self.shared
            .world()
            .sharding
            .as_ref()
            .map(|sh| sh.keys.clone())
            .unwrap_or_default()
    }

    /// Defers migrations' range deletions, leaving the donors' copies as orphans (`true`),
    /// or runs the deferred deletions and stops deferring (`false`).
    ///
    /// # Errors
    /// When a donor has no primary to run its deletions.
    pub fn defer_range_deletion(&self, on: bool) -> Result<(), SimError> {
        defer_range_deletion(&self.shared, on)
    }

    /// Makes the next `prepareTransaction` on `set` (a shard or replica set name) vote to
    /// abort, so the distributed transaction aborts after others prepared.
    pub fn fail_next_prepare(&self, set: &str) -> Result<(), SimError> {
        fail_next_prepare(&self.shared, set)
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

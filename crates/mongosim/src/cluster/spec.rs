//! How to build a simulation ([`ClusterSpec`]) and what it reports back: the layout of
//! its processes and the status of each member.

use std::time::Duration;

use bson::Bson;
use serde::Serialize;

use crate::auth::SimUser;
use crate::membership::MemberSpec;
use crate::tls::TlsSpec;
use crate::version::ServerVersion;

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

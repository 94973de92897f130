//! [`ReplicaSet`]: a single replica set, a [`Cluster`] without mongos or config servers.

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use super::{Cluster, ClusterSpec, SimError};
use crate::auth::SimUser;
use crate::membership::MemberSpec;
use crate::tls::TlsSpec;
use crate::version::ServerVersion;

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

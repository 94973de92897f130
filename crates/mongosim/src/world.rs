//! The simulated state: replica sets, their nodes, oplogs, data, cursors, and the sharding
//! catalog. Everything here is synchronous and runs under one lock; time is passed in.
//!
//! ```text
//!   write on primary --append--> primary oplog --tick: replicate after lag (+delay)--> secondaries
//!                                     |            (from the primary or a chained source)  |
//!                                     +-- tick: primary commit point: newest entry held <---+
//!                                     |   by writeMajorityCount data-bearing voters, not
//!                                     |   before its own term's first entry
//!                                     +-- secondaries / arbiters learn it commit_point_delay later
//!   tick: step down isolated primaries, elect the most up-to-date electable member with
//!         a majority of votes, roll back a rejoining node to the common point, write
//!         periodic no-ops
//! ```
//!
//! The state types live here; the operations on [`World`] are split by concern:
//!
//! - `world/data.rs`: collections and documents on a node, update modifiers, applying an entry;
//! - `world/writes.rs`: logging entries on a primary and the insert, update, delete and
//!   findAndModify operations;
//! - `world/sessions.rs`: retryable-write sessions, retry images and transactions;
//! - `world/replication.rs`: replication, elections, rollback and the commit point ([`World::tick`]);
//! - `world/sharding.rs`: the sharding catalog, databases' primary shards, chunks and
//!   migrations;
//! - `world/ddl.rs`: DDL on one set (create with options, drop, rename, dropDatabase,
//!   indexes, collMod).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId, DateTime, Document, Timestamp};

pub use crate::error::CmdError;
use crate::membership::{Majorities, MemberSpec};
use crate::oplog::{self, ts_key, Entry, EntryId, OpSpec, Oplog};
use crate::version::ServerVersion;

mod data;
mod ddl;
pub mod history;
mod modifier_args;
mod modifiers;
mod prepared;
mod replication;
mod resharding;
mod sessions;
mod sharding;
mod vectored;
mod writes;

#[cfg(test)]
mod commit_rule_tests;
#[cfg(test)]
mod tests;

pub use data::{apply_entry, bad_value, Collection};
pub use ddl::CollMeta;
pub use modifiers::{apply_modifiers, apply_update};
pub use prepared::{coordinator_id, no_such_transaction, Decision, COORDINATORS_NS};
pub use resharding::{ReshardProvenance, Resharding};
pub use sessions::{txn_key, RetryImage, SessionCtx};
pub use sharding::{Chunk, DatabaseEntry, ShardEntry, ShardState, Sharding};
pub use vectored::{VectoredFallback, VECTORED_INSERT_MAX_DOCS};
pub use writes::BATCHED_DELETE_DOCS;

/// Tunables shared by every set of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Idle interval after which a primary writes a "periodic noop" (mongod: 10 s).
    pub noop_interval: Duration,
    /// How long a set waits without a primary before electing one, and how long an isolated
    /// primary keeps accepting writes before it steps down (mongod: electionTimeoutMillis 10 s).
    pub election_timeout: Duration,
    /// Cap on entries per node oplog.
    pub oplog_max_entries: Option<usize>,
    /// Cap on bytes per node oplog.
    pub oplog_max_bytes: Option<usize>,
    /// How long a secondary takes to learn its sync source's (or the primary's) commit
    /// point: mongod carries it in oplog fetcher metadata and heartbeats, so a secondary's
    /// `majorityOpTime` trails the primary's.
    pub commit_point_delay: Duration,
}

/// A member's replication state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Accepts writes.
    Primary,
    /// Replicates from the primary (or another secondary).
    Secondary,
    /// An arbiter: votes, holds no data.
    Arbiter,
}

impl MemberState {
    /// Numeric state as in replSetGetStatus.
    pub fn code(self) -> i32 {
        match self {
            MemberState::Primary => 1,
            MemberState::Secondary => 2,
            MemberState::Arbiter => 7,
        }
    }

    /// `stateStr` as in replSetGetStatus.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Primary => "PRIMARY",
            MemberState::Secondary => "SECONDARY",
            MemberState::Arbiter => "ARBITER",
        }
    }
}

/// An open cursor.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// `db.coll` of the cursor.
    pub ns: String,
    /// What the cursor reads.
    pub kind: CursorKind,
    /// Documents still allowed by `limit`.
    pub limit_remaining: Option<i64>,
}

/// How a cursor produces documents.
#[derive(Debug, Clone)]
pub enum CursorKind {
    /// A materialized result.
    Buffered(VecDeque<Document>),
    /// A tailable cursor on the oplog, positioned after `last_ts`.
    Tail {
        /// The find filter.
        filter: Document,
        /// The find projection.
        projection: Option<Document>,
        /// Timestamp of the last examined entry (`None`: nothing examined yet).
        last_ts: Option<Timestamp>,
        /// Whether getMore may block.
        await_data: bool,
    },
}

/// One mongod.
#[derive(Debug)]
pub struct NodeState {
    /// `127.0.0.1:port`.
    pub addr: SocketAddr,
    /// False after kill, until restart.
    pub alive: bool,
    /// Cut from the other members (still reachable by clients).
    pub partitioned: bool,
    /// When the partition started.
    pub partitioned_at: Option<Instant>,
    /// When this primary lost sight of a majority while not partitioned.
    pub minority_since: Option<Instant>,
    /// Replication delay.
    pub lag: Duration,
    /// Primary or secondary.
    pub state: MemberState,
    /// The node's view of the election term.
    pub term: i64,
    /// Not electable before this instant (after an explicit step-down).
    pub stepdown_until: Option<Instant>,
    /// The node's oplog.
    pub oplog: Oplog,
    /// Timestamp of the newest entry ever appended (survives oplog truncation).
    pub last_ts: Timestamp,
    /// Last time this node appended an entry as primary.
    pub last_write_at: Instant,
    /// User data, by namespace.
    pub data: BTreeMap<String, Collection>,
    /// Undo records of the changes applied to `data`, oldest first, for point-in-time
    /// reads (`world/history.rs`).
    pub undo: VecDeque<history::UndoRec>,
    /// Open cursors.
    pub cursors: HashMap<i64, Cursor>,
    /// Cursors invalidated by a rollback: getMore answers QueryPlanKilled.
    pub dead_cursors: HashMap<i64, CmdError>,
    /// Bumped on rollback and kill: in-flight awaitData getMores abort when it changes.
    pub epoch: u64,
    /// Fell behind the primary's capped oplog (logged once; replication stops).
    pub too_stale_logged: bool,
    /// Open multi-document transactions: operations buffered until commitTransaction,
    /// keyed by [`txn_key`].
    pub txns: HashMap<String, Vec<OpSpec>>,
    /// The member's configuration (`_id` is always set).
    pub member: MemberSpec,
    /// Not in the current config any more (replSetReconfig removed it): the process runs on
    /// and answers hello without a config, as a removed mongod does.
    pub removed: bool,
    /// Receives no entries (a fault for scripting commit stories); still votes and
    /// exchanges heartbeats.
    pub replication_blocked: bool,
    /// Fault injection: commands this member answers with Unauthorized (13), as for a
    /// user without the privilege.
    pub refused_commands: std::collections::BTreeSet<String>,
    /// Fault injection: hello reports a `majorityOpTime` beyond the member's own newest
    /// entry (a misbehaving or misreporting member).
    pub misreport_commit_point: bool,
    /// Sync source forced by `set_sync_source` (chained replication), if any.
    pub sync_from: Option<usize>,
    /// The member it replicated from at the last tick (replSetGetStatus `syncSourceHost`).
    pub sync_source: Option<usize>,
    /// Elected but not yet writable: the "new primary" no-op is not written while the set's
    /// step-up is held (mongod's drain mode; hello reports it secondary).
    pub draining: bool,
    /// As primary: the optime of the first entry of its term. The commit point never moves
    /// to an earlier optime (TopologyCoordinator's `_firstOpTimeOfMyTerm`); `None` while
    /// draining or not primary.
    pub first_optime_of_term: Option<OpKey>,
    /// This member's view of the commit point (`lastCommittedOpTime`).
    pub commit_point: Option<Arc<Entry>>,
    /// When its commit point moved, so that others learn it `commit_point_delay` later.
    pub commit_history: VecDeque<(Instant, Arc<Entry>)>,
}

/// An OpTime ordered as mongod orders them: term first, then timestamp.
pub type OpKey = (i64, (u32, u32));

/// The OpTime of an entry (legacy entries without `t` sort with term -1).
pub fn op_key(id: &EntryId) -> OpKey {
    (id.t.unwrap_or(-1), ts_key(id.ts))
}

impl NodeState {
    pub(crate) fn new(
        addr: SocketAddr,
        member: MemberSpec,
        cfg: &SimConfig,
        now: Instant,
    ) -> NodeState {
        let arbiter = member.arbiter_only;
        NodeState {
            addr,
            member,
            removed: false,
            replication_blocked: false,
            refused_commands: Default::default(),
            misreport_commit_point: false,
            sync_from: None,
            sync_source: None,
            draining: false,
            first_optime_of_term: None,
            commit_point: None,
            commit_history: VecDeque::new(),
            alive: true,
            partitioned: false,
            partitioned_at: None,
            minority_since: None,
            lag: Duration::ZERO,
            state: if arbiter {
                MemberState::Arbiter
            } else {
                MemberState::Secondary
            },
            term: 0,
            stepdown_until: None,
            oplog: Oplog::new(cfg.oplog_max_entries, cfg.oplog_max_bytes),
            last_ts: Timestamp {
                time: 0,
                increment: 0,
            },
            last_write_at: now,
            data: BTreeMap::new(),
            undo: VecDeque::new(),
            cursors: HashMap::new(),
            dead_cursors: HashMap::new(),
            epoch: 0,
            too_stale_logged: false,
            txns: HashMap::new(),
        }
    }

    fn reachable(&self) -> bool {
        self.alive && !self.partitioned && !self.removed
    }

    /// OpTime of the newest entry `{ts, t}` (an arbiter's is null: `Timestamp(0, 0)`, -1).
    pub fn last_optime(&self) -> (Timestamp, i64) {
        match self.oplog.last() {
            Some(e) => (e.id.ts, e.id.t.unwrap_or(-1)),
            None if self.member.arbiter_only => (
                Timestamp {
                    time: 0,
                    increment: 0,
                },
                -1,
            ),
            None => (self.last_ts, self.term),
        }
    }

    /// [`NodeState::last_optime`] as an ordered key.
    pub fn last_key(&self) -> OpKey {
        let (ts, t) = self.last_optime();
        (t, ts_key(ts))
    }

    /// The committed snapshot hello reports as `lastWrite.majorityOpTime`: the commit point
    /// capped at what this member has applied (mongod's stable optime is at most
    /// min(commit point, lastApplied)). `None` before it learned any commit point, and for
    /// arbiters (no storage, no snapshot).
    pub fn committed_snapshot(&self) -> Option<&Arc<Entry>> {
        if self.member.arbiter_only {
            return None;
        }
        let c = self.commit_point.as_ref()?;
        match self.oplog.last() {
            Some(last) if op_key(&last.id) < op_key(&c.id) => Some(last),
            Some(_) => Some(c),
            None => None,
        }
    }

    /// Whether it is primary and accepts writes (elected and out of drain mode).
    pub fn writable_primary(&self) -> bool {
        self.state == MemberState::Primary && !self.draining
    }
}

/// What a set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetRole {
    /// A stand-alone replica set.
    Plain,
    /// A shard of a sharded cluster.
    Shard,
    /// The config server replica set.
    ConfigServer,
}

/// One replica set.
#[derive(Debug)]
pub struct SetState {
    /// Replica set name.
    pub name: String,
    /// What the set is for.
    pub role: SetRole,
    /// Members, in config order.
    pub nodes: Vec<NodeState>,
    /// `setVersion`.
    pub set_version: i32,
    /// Collection UUIDs, shared by all members.
    pub uuids: HashMap<String, bson::Uuid>,
    /// Ground truth: entries that reached a majority, in oplog order.
    pub committed: Vec<Arc<Entry>>,
    /// Ground truth: entries removed by rollback.
    pub rolled_back: Vec<Arc<Entry>>,
    /// Newest majority-committed entry.
    pub commit_point: Option<Arc<Entry>>,
    /// Since when the reachable majority has had no primary.
    pub no_primary_since: Option<Instant>,
    /// Elect at the next tick without waiting for the election timeout.
    pub elect_now: bool,
    /// Removed from the cluster (removeShard completed): no longer ticks.
    pub removed: bool,
    /// Config `term` (the primary's term when the config was installed; -1 after a force
    /// reconfig).
    pub config_term: i64,
    /// `settings.replicaSetId`.
    pub replica_set_id: ObjectId,
    /// While set, a newly elected primary stays in drain mode (no "new primary" no-op, no
    /// writes, no commit point): the lever that lets a test carry an old-term entry to a
    /// majority before the new term commits anything (Raft's "figure 8").
    pub hold_step_up: bool,
    /// Retryable-write statements executed on this set: (lsid id, txnNumber, stmtId) to
    /// the entry that logged it (a retry is answered from here if the entry survives).
    pub session_history: HashMap<(Vec<u8>, i64, i32), EntryId>,
    /// Time-series collections (view namespace to options), shared by all members.
    pub timeseries: BTreeMap<String, crate::timeseries::TsOptions>,
    /// The primary's bucket catalog: buckets still taking measurements. A new primary
    /// starts with an empty one.
    pub ts_buckets: Vec<crate::timeseries::OpenBucket>,
    /// Collection options and secondary indexes (DDL), shared by all members.
    pub catalog: BTreeMap<String, CollMeta>,
}

impl SetState {
    /// Votes an election needs (`majorityVoteCount`).
    pub fn majority(&self) -> usize {
        self.majorities().majority_vote_count
    }

    /// The majorities of the current config.
    pub fn majorities(&self) -> Majorities {
        Majorities::of(self.config_members().map(|(_, n)| &n.member))
    }

    /// Members of the current config, in config order, with their index.
    pub fn config_members(&self) -> impl Iterator<Item = (usize, &NodeState)> {
        self.nodes.iter().enumerate().filter(|(_, n)| !n.removed)
    }

    /// How many data-bearing voters hold this entry (what a write majority counts).
    pub fn voting_holders(&self, id: &EntryId) -> usize {
        self.config_members()
            .filter(|(_, n)| {
                n.member.is_voter() && n.member.is_data_bearing() && n.oplog.contains(id)
            })
            .count()
    }

    /// Voting data-bearing members holding `id` whose acknowledgement a primary of `term`
    /// accepts: a member that has seen a newer term answers with it instead, and the primary
    /// learns it must step down rather than count it (Raft's rule; replication progress,
    /// `replSetUpdatePosition`, carries the member's term). Without this a stale primary
    /// could commit with copies held by members that already follow a newer primary.
    pub fn voting_holders_in_term(&self, id: &EntryId, term: i64) -> usize {
        self.config_members()
            .filter(|(_, n)| {
                n.member.is_voter()
                    && n.member.is_data_bearing()
                    && n.term <= term
                    && n.oplog.contains(id)
            })
            .count()
    }

    /// The reachable primary with the highest term, if any.
    pub fn sync_source(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.reachable() && n.state == MemberState::Primary)
            .max_by_key(|(_, n)| n.term)
            .map(|(i, _)| i)
    }

    /// Any alive node that believes it is primary (the partitioned one included).
    pub fn primary_index(&self) -> Option<usize> {
        self.sync_source().or_else(|| {
            self.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.alive && n.state == MemberState::Primary)
                .max_by_key(|(_, n)| n.term)
                .map(|(i, _)| i)
        })
    }

    /// The `host` string of config.shards: `name/h1,h2,h3` with the members that are
    /// neither hidden nor arbiters (`ReplSetConfig::_initializeConnectionString`).
    pub fn host_string(&self) -> String {
        let hosts: Vec<String> = self
            .config_members()
            .filter(|(_, n)| !n.member.hidden && !n.member.arbiter_only)
            .map(|(_, n)| n.addr.to_string())
            .collect();
        format!("{}/{}", self.name, hosts.join(","))
    }

    /// Whether `viewer` can currently see `other`.
    pub fn sees(&self, viewer: usize, other: usize) -> bool {
        let (a, b) = (&self.nodes[viewer], &self.nodes[other]);
        viewer == other || (a.reachable() && b.reachable())
    }
}

/// What listens on an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// Member `node` of set `set`.
    Node {
        /// Set index.
        set: usize,
        /// Member index.
        node: usize,
    },
    /// The mongos.
    Mongos,
}

/// The whole simulation.
#[derive(Debug)]
pub struct World {
    /// Shape of new oplog entries and wire version.
    pub version: ServerVersion,
    /// Tunables.
    pub cfg: SimConfig,
    /// All replica sets (shards, config servers, or one plain set).
    pub sets: Vec<SetState>,
    /// Present for sharded clusters.
    pub sharding: Option<Sharding>,
    next_cursor: i64,
    /// Next connectionId for hello.
    pub next_connection_id: i64,
    /// Set by a write command that carries `lsid` + `txnNumber` (a retryable write): its
    /// entries get the session fields.
    pub session: Option<SessionCtx>,
    /// Retry-image fields of the findAndModify being logged (see [`RetryImage`]).
    pub retry_image: RetryImage,
    /// Set while a write command runs inside a transaction: operations are captured as
    /// `(set, node, op)` instead of being logged, and logged at commit.
    pub capture: Option<Vec<(usize, usize, OpSpec)>>,
    /// The transaction of the write command being executed, if any.
    pub txn_key: Option<String>,
    /// First port of a cluster laid out on consecutive ports (0: ephemeral ports); members
    /// added by reconfig without a host take the next free one.
    pub base_port: u16,
    /// Operations per applyOps entry before a transaction is split into a `partialTxn`
    /// chain (mongod: maxNumberOfTransactionOperationsInSingleOplogEntry, and 16 MB).
    pub max_txn_ops_per_entry: usize,
    /// Open transactions through mongos: the sets they wrote to, in the order of their
    /// first write (the first is the two-phase commit's coordinator, as mongos makes the
    /// first participant it contacted the coordinator).
    pub txn_participants: HashMap<String, Vec<usize>>,
    /// Fault lever: coordinators wait after every participant prepared, before deciding,
    /// until it is cleared (mongod's `hangBeforeWritingDecision` fail point).
    pub hold_txn_decisions: bool,
    /// Fault lever: the next prepare on these sets votes to abort (as a participant does
    /// that lost the transaction in a failover).
    pub fail_next_prepare: std::collections::HashSet<usize>,
    /// `minSnapshotHistoryWindowInSeconds` (mongod default 300): how far behind the
    /// majority commit point point-in-time reads may go.
    pub snapshot_window_secs: u32,
    /// The cluster's logical clock: the newest timestamp any process has used. Every new
    /// entry is stamped after it, as mongod's hybrid logical clock does once cluster time
    /// is gossiped (every message carries `$clusterTime`), so timestamps of different
    /// shards are causally ordered (a migration's cloned writes come before its commit).
    pub cluster_time: Timestamp,
    /// Fault lever: migrations leave the donor's copies in place (orphans) until
    /// [`World::run_range_deletions`], as mongod's range deleter runs after the commit
    /// (`orphanCleanupDelaySecs`).
    pub defer_range_deletion: bool,
    /// Deletions deferred by `defer_range_deletion`: (donor set, namespace, `_id`s).
    pub pending_range_deletions: Vec<(usize, String, Vec<bson::Bson>)>,
    /// Resharding operations (reshardCollection, moveCollection, unshardCollection) between
    /// their clone and their cut-over, by namespace.
    pub resharding: std::collections::BTreeMap<String, Resharding>,
    /// Fault lever: resharding operations wait after cloning, before the cut-over, until it
    /// is cleared (so that a test can write while the collection is being resharded).
    pub hold_resharding: bool,
}

fn now_secs() -> u32 {
    let ms = DateTime::now().timestamp_millis();
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// pv1 election ids: `OID::fromTerm` puts 0x7fffffff in the timestamp bytes and the term in
/// the last eight bytes (mongodb/mongo src/mongo/bson/oid.cpp).
pub fn election_id_for_term(term: i64) -> ObjectId {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    b[4..].copy_from_slice(&term.to_be_bytes());
    ObjectId::from_bytes(b)
}

impl World {
    /// An empty world.
    pub fn new(version: ServerVersion, cfg: SimConfig) -> World {
        World {
            version,
            cfg,
            sets: Vec::new(),
            sharding: None,
            next_cursor: 1 + i64::from(rand::random::<u32>()),
            next_connection_id: 1,
            session: None,
            retry_image: RetryImage::default(),
            capture: None,
            txn_key: None,
            base_port: 0,
            max_txn_ops_per_entry: usize::MAX,
            txn_participants: HashMap::new(),
            hold_txn_decisions: false,
            fail_next_prepare: Default::default(),
            snapshot_window_secs: 300,
            cluster_time: Timestamp {
                time: 0,
                increment: 0,
            },
            defer_range_deletion: false,
            pending_range_deletions: Vec::new(),
            resharding: Default::default(),
            hold_resharding: false,
        }
    }

    /// Adds a replica set whose first member is primary, with the "initiating set" and
    /// "new primary" no-ops every member has after `rs.initiate()`.
    pub fn add_set(
        &mut self,
        name: &str,
        role: SetRole,
        addrs: &[SocketAddr],
        now: Instant,
    ) -> usize {
        let members = vec![MemberSpec::voter(); addrs.len()];
        self.add_set_with_members(name, role, addrs, &members, now)
    }

    /// Adds a replica set with these member configurations (validate them first with
    /// [`crate::membership::validate_set`]); the first electable member is the first
    /// primary. Arbiters get no oplog entries.
    pub fn add_set_with_members(
        &mut self,
        name: &str,
        role: SetRole,
        addrs: &[SocketAddr],
        members: &[MemberSpec],
        now: Instant,
    ) -> usize {
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut m = members.get(i).cloned().unwrap_or_default();
                m.host = Some(*a);
                m.id = Some(m.id.unwrap_or(i as i32));
                NodeState::new(*a, m, &self.cfg, now)
            })
            .collect();
        self.sets.push(SetState {
            name: name.to_owned(),
            role,
            nodes,
            set_version: 1,
            config_term: 1,
            replica_set_id: ObjectId::new(),
            hold_step_up: false,
            uuids: HashMap::new(),
            committed: Vec::new(),
            rolled_back: Vec::new(),
            commit_point: None,
            no_primary_since: None,
            elect_now: false,
            removed: false,
            session_history: HashMap::new(),
            timeseries: BTreeMap::new(),
            ts_buckets: Vec::new(),
            catalog: BTreeMap::new(),
        });
        let s = self.sets.len() - 1;
        // "initiating set" is written before any term exists (t: -1, h: 0 in legacy).
        let ts = self.next_ts(s, 0);
        let doc = oplog::build_entry_doc(
            self.version,
            &OpSpec::noop("initiating set"),
            ts,
            -1,
            DateTime::now(),
        );
        if let Ok(entry) = Entry::from_doc(doc, now) {
            let entry = Arc::new(entry);
            for n in 0..self.sets[s].nodes.len() {
                if self.sets[s].nodes[n].member.is_data_bearing() {
                    self.push_entry(s, n, entry.clone());
                }
            }
        }
        let first = self.sets[s]
            .nodes
            .iter()
            .position(|n| n.member.is_electable())
            .unwrap_or(0);
        self.elect(s, first, 1, now);
        s
    }

    /// Initial sync of a member added by reconfig: it copies the oplog and data of the
    /// primary (or of the most up-to-date reachable data-bearing member) in one step.
    pub fn initial_sync(&mut self, s: usize, n: usize) {
        if !self.sets[s].nodes[n].member.is_data_bearing() {
            return;
        }
        let source = self.sets[s].sync_source().filter(|p| *p != n).or_else(|| {
            self.sets[s]
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, m)| *i != n && m.reachable() && m.member.is_data_bearing())
                .max_by_key(|(_, m)| m.last_key())
                .map(|(i, _)| i)
        });
        let Some(src) = source else { return };
        let (entries, data, term, last_ts) = {
            let src = &self.sets[s].nodes[src];
            let entries: Vec<Arc<Entry>> = src.oplog.iter().cloned().collect();
            (
                entries,
                (src.data.clone(), src.undo.clone()),
                src.term,
                src.last_ts,
            )
        };
        let node = &mut self.sets[s].nodes[n];
        node.oplog = Oplog::new(self.cfg.oplog_max_entries, self.cfg.oplog_max_bytes);
        for e in entries {
            node.oplog.push(e);
        }
        (node.data, node.undo) = data;
        node.term = node.term.max(term);
        node.last_ts = last_ts;
        node.too_stale_logged = false;
    }

    /// Finds the process listening on `addr`.
    pub fn locate(&self, addr: SocketAddr) -> Option<Proc> {
        if let Some(sh) = &self.sharding {
            if sh.mongos == addr {
                return Some(Proc::Mongos);
            }
        }
        for (s, set) in self.sets.iter().enumerate() {
            if let Some(n) = set.nodes.iter().position(|n| n.addr == addr) {
                return Some(Proc::Node { set: s, node: n });
            }
        }
        None
    }

    /// Index of a set by name.
    pub fn set_index(&self, name: &str) -> Option<usize> {
        self.sets.iter().position(|s| s.name == name)
    }

    /// A fresh positive cursor id.
    pub fn new_cursor_id(&mut self) -> i64 {
        self.next_cursor += 1 + i64::from(rand::random::<u16>());
        self.next_cursor
    }
}

/// Parses an `OpTime` document for hello / replSetGetStatus.
pub fn optime_doc(ts: Timestamp, t: i64) -> Document {
    doc! {"ts": ts, "t": t}
}

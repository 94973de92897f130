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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId, Bson, DateTime, Document, Timestamp};

use crate::matcher;
use crate::membership::{Majorities, MemberSpec};
use crate::oplog::{self, ts_key, Entry, EntryId, OpSpec, Oplog};
use crate::version::ServerVersion;

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

/// A user collection on one node: documents in natural (insertion) order with an `_id`
/// index, so lookups stay O(1) as collections grow.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    slots: Vec<Option<Document>>,
    index: HashMap<Vec<u8>, usize>,
    live: usize,
}

/// The `_id` index key: numbers by value (1 and 1.0 are the same key, as in mongod's
/// index), anything else by its BSON bytes.
fn id_key(id: &Bson) -> Vec<u8> {
    let number = match id {
        Bson::Int32(v) => Some(f64::from(*v)),
        Bson::Int64(v) => Some(*v as f64),
        Bson::Double(v) => Some(*v),
        _ => None,
    };
    match number {
        Some(n) => {
            let mut k = b"n:".to_vec();
            k.extend_from_slice(&(if n == 0.0 { 0.0f64 } else { n }).to_bits().to_le_bytes());
            k
        }
        None => doc! {"k": id.clone()}.to_vec().unwrap_or_default(),
    }
}

impl Collection {
    /// Documents in natural order.
    pub fn iter(&self) -> impl Iterator<Item = &Document> {
        self.slots.iter().flatten()
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the collection is empty.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether a document with this `_id` exists.
    pub fn contains(&self, id: &Bson) -> bool {
        self.index.contains_key(&id_key(id))
    }

    /// The document with this `_id`.
    pub fn get_mut(&mut self, id: &Bson) -> Option<&mut Document> {
        let i = *self.index.get(&id_key(id))?;
        self.slots.get_mut(i)?.as_mut()
    }

    /// The most recently inserted document.
    pub fn last(&self) -> Option<&Document> {
        self.slots.iter().rev().flatten().next()
    }

    /// Inserts, or replaces in place when the `_id` exists.
    pub fn upsert(&mut self, doc: Document) {
        let key = id_key(doc.get("_id").unwrap_or(&Bson::Null));
        match self.index.get(&key) {
            Some(i) => self.slots[*i] = Some(doc),
            None => {
                self.index.insert(key, self.slots.len());
                self.slots.push(Some(doc));
                self.live += 1;
            }
        }
    }

    /// Removes the document with this `_id`.
    pub fn remove(&mut self, id: &Bson) -> Option<Document> {
        let i = self.index.remove(&id_key(id))?;
        let doc = self.slots.get_mut(i)?.take();
        self.live -= 1;
        if self.slots.len() > 64 && self.live < self.slots.len() / 2 {
            self.compact();
        }
        doc
    }

    fn compact(&mut self) {
        let docs: Vec<Document> = self.slots.drain(..).flatten().collect();
        self.index.clear();
        self.live = 0;
        for d in docs {
            self.upsert(d);
        }
    }
}

/// An error a command returns: `{ok: 0, errmsg, code, codeName}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError {
    /// Numeric error code.
    pub code: i32,
    /// Symbolic name.
    pub code_name: &'static str,
    /// Human message.
    pub errmsg: String,
}

impl CmdError {
    /// Builds an error.
    pub fn new(code: i32, code_name: &'static str, errmsg: impl Into<String>) -> CmdError {
        CmdError {
            code,
            code_name,
            errmsg: errmsg.into(),
        }
    }

    /// NotWritablePrimary (10107).
    pub fn not_primary() -> CmdError {
        CmdError::new(10107, "NotWritablePrimary", "not primary")
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

/// Lifecycle of a shard in config.shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    /// Normal member.
    Active,
    /// removeShard started.
    Draining,
    /// removeShard completed.
    Removed,
}

/// A shard registered in the config servers.
#[derive(Debug, Clone)]
pub struct ShardEntry {
    /// `shard01`...
    pub name: String,
    /// Index of its replica set.
    pub set: usize,
    /// Draining or not.
    pub state: ShardState,
}

/// A chunk `[min, max)` of a collection sharded on `_id`.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Inclusive lower bound (MinKey for the first chunk).
    pub min: Bson,
    /// Exclusive upper bound (MaxKey for the last chunk).
    pub max: Bson,
    /// Owning shard.
    pub shard: String,
}

impl Chunk {
    /// Whether `id` falls in this chunk.
    pub fn contains(&self, id: &Bson) -> bool {
        matcher::compare(&self.min, id).is_le() && matcher::compare(id, &self.max).is_lt()
    }
}

/// The sharding catalog.
#[derive(Debug, Clone)]
pub struct Sharding {
    /// Index of the config server set.
    pub config_set: usize,
    /// Registered shards.
    pub shards: Vec<ShardEntry>,
    /// Chunks by namespace, ordered by `min`.
    pub collections: BTreeMap<String, Vec<Chunk>>,
    /// Split points for newly sharded collections.
    pub split_points: Vec<Bson>,
    /// The mongos address.
    pub mongos: SocketAddr,
    /// Open mongos cursors.
    pub cursors: HashMap<i64, Cursor>,
    /// Whether the mongos process is up.
    pub mongos_alive: bool,
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
}

/// How a retryable findAndModify's image is being logged: up to 5.0 as a no-op entry
/// carrying the session (`noop`), whose optime the update/delete then links (`link`);
/// from 5.1 by `needsRetryImage` on the update/delete (`needs`). Taken by the next write.
#[derive(Debug, Clone, Default)]
pub struct RetryImage {
    /// The next `n` entry is an image and carries the session fields.
    pub noop: bool,
    /// `("preImageOpTime" | "postImageOpTime", ts, t)` for the next update/delete.
    pub link: Option<(&'static str, Timestamp, i64)>,
    /// `"preImage" | "postImage"` for the next update/delete.
    pub needs: Option<&'static str>,
}

/// The retryable-write context of the command being executed.
#[derive(Debug, Clone)]
pub struct SessionCtx {
    /// `{id, uid}`.
    pub lsid: Document,
    /// The command's txnNumber.
    pub txn_number: i64,
    /// The statement being executed.
    pub stmt_id: i32,
    /// Several statements logged by one entry (time-series bucket writes): logged as
    /// `stmtId: [..]`; empty otherwise.
    pub stmt_ids: Vec<i32>,
    /// Last optime written for this command, per set (for `prevOpTime`).
    pub prev: HashMap<usize, (Timestamp, i64)>,
}

/// SHA-256 of the empty string: the `uid` mongod derives for sessions without an
/// authenticated user.
const EMPTY_USER_UID: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

impl SessionCtx {
    /// The context of a retryable write command (`lsid` and `txnNumber`, not in a
    /// transaction), or `None`.
    pub fn from_command(cmd: &Document) -> Option<SessionCtx> {
        if cmd.contains_key("autocommit") || cmd.contains_key("startTransaction") {
            return None;
        }
        let (lsid, txn_number) = SessionCtx::lsid_and_txn(cmd)?;
        Some(SessionCtx {
            lsid,
            txn_number,
            stmt_id: 0,
            stmt_ids: Vec::new(),
            prev: HashMap::new(),
        })
    }

    /// The server-side `lsid` (`{id, uid}`) and `txnNumber` of a command, if it has both.
    pub fn lsid_and_txn(cmd: &Document) -> Option<(Document, i64)> {
        let txn_number = match cmd.get("txnNumber")? {
            Bson::Int64(v) => *v,
            Bson::Int32(v) => i64::from(*v),
            _ => return None,
        };
        let id = cmd.get_document("lsid").ok()?.get("id")?.clone();
        let uid = bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: EMPTY_USER_UID.to_vec(),
        };
        Some((doc! {"id": id, "uid": uid}, txn_number))
    }
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
            (entries, src.data.clone(), src.term, src.last_ts)
        };
        let node = &mut self.sets[s].nodes[n];
        node.oplog = Oplog::new(self.cfg.oplog_max_entries, self.cfg.oplog_max_bytes);
        for e in entries {
            node.oplog.push(e);
        }
        node.data = data;
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

    fn next_ts(&self, s: usize, n: usize) -> Timestamp {
        let last = self.sets[s].nodes[n].last_ts;
        let now = now_secs();
        if now > last.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: last.time,
                increment: last.increment + 1,
            }
        }
    }

    /// Appends an entry to a node's oplog and applies it to the node's data.
    pub fn push_entry(&mut self, s: usize, n: usize, entry: Arc<Entry>) {
        let node = &mut self.sets[s].nodes[n];
        if ts_key(entry.id.ts) > ts_key(node.last_ts) {
            node.last_ts = entry.id.ts;
        }
        apply_entry(&mut node.data, &entry.doc);
        node.oplog.push(entry);
    }

    /// Writes an entry on node `n` (which must be primary) and returns it.
    pub fn write(&mut self, s: usize, n: usize, spec: &OpSpec, now: Instant) -> Option<Arc<Entry>> {
        if let Some(capture) = self.capture.as_mut() {
            if spec.op != "n" {
                capture.push((s, n, spec.clone()));
                return None;
            }
        }
        Some(self.write_logged(s, n, spec, now))
    }

    fn write_logged(&mut self, s: usize, n: usize, spec: &OpSpec, now: Instant) -> Arc<Entry> {
        let ts = self.next_ts(s, n);
        let term = self.sets[s].nodes[n].term;
        let image_noop = spec.op == "n" && self.retry_image.noop;
        let session = match &self.session {
            Some(sess)
                if (matches!(spec.op, "i" | "u" | "d") || image_noop) && !spec.from_migrate =>
            {
                Some(oplog::SessionFields {
                    lsid: sess.lsid.clone(),
                    txn_number: sess.txn_number,
                    stmt_id: sess.stmt_id,
                    stmt_ids: sess.stmt_ids.clone(),
                    image_op_time: None,
                    needs_retry_image: None,
                    prev_op_time: sess.prev.get(&s).copied().unwrap_or((
                        Timestamp {
                            time: 0,
                            increment: 0,
                        },
                        -1,
                    )),
                })
            }
            _ => None,
        };
        let mut session = session;
        if let Some(sess) = session.as_mut().filter(|_| matches!(spec.op, "u" | "d")) {
            sess.image_op_time = self.retry_image.link.take();
            sess.needs_retry_image = self.retry_image.needs.take();
        }
        // An image no-op shares the write's prevOpTime: it is not a write of the session.
        if session.is_some() && !image_noop {
            if let Some(sess) = self.session.as_mut() {
                sess.prev.insert(s, (ts, term));
            }
        }
        let doc = oplog::build_entry_doc_with_session(
            self.version,
            spec,
            ts,
            term,
            DateTime::now(),
            session.as_ref(),
        );
        let entry = Arc::new(Entry {
            id: EntryId {
                ts,
                t: doc.get_i64("t").ok(),
                h: doc.get_i64("h").ok(),
            },
            size: doc.to_vec().map(|v| v.len()).unwrap_or(0),
            doc,
            written_at: now,
        });
        if let Some(sess) = &session {
            let lsid = id_key(sess.lsid.get("id").unwrap_or(&Bson::Null));
            let mut stmts = sess.stmt_ids.clone();
            if stmts.is_empty() {
                stmts.push(sess.stmt_id);
            }
            for stmt in stmts {
                self.sets[s]
                    .session_history
                    .insert((lsid.clone(), sess.txn_number, stmt), entry.id);
            }
        }
        self.push_entry(s, n, entry.clone());
        self.sets[s].nodes[n].last_write_at = now;
        entry
    }

    /// Whether the current retryable-write statement (lsid, txnNumber, stmtId) already has
    /// an entry on node `n`: a retry after failover then reports success without executing
    /// again, as mongod does from its session history.
    pub fn statement_executed(&self, s: usize, n: usize) -> bool {
        let Some(sess) = &self.session else {
            return false;
        };
        let key = (
            id_key(sess.lsid.get("id").unwrap_or(&Bson::Null)),
            sess.txn_number,
            sess.stmt_id,
        );
        self.sets[s]
            .session_history
            .get(&key)
            .is_some_and(|entry| self.sets[s].nodes[n].oplog.contains(entry))
    }

    /// Logs a committed transaction's operations on node `n` as applyOps entries: one
    /// `{applyOps: [...]}` entry, or a chain of `{applyOps, partialTxn: true}` entries linked
    /// by `prevOpTime` ending with `{applyOps, count}` when it exceeds
    /// `max_txn_ops_per_entry`. Returns how many entries were written.
    pub fn commit_transaction(
        &mut self,
        s: usize,
        n: usize,
        key: &str,
        lsid: &Document,
        txn_number: i64,
        now: Instant,
    ) -> usize {
        let Some(ops) = self.sets[s].nodes[n].txns.remove(key) else {
            return 0;
        };
        if ops.is_empty() {
            return 0;
        }
        let total = ops.len();
        let per = self.max_txn_ops_per_entry.max(1);
        let chunks: Vec<Vec<OpSpec>> = ops.chunks(per).map(|c| c.to_vec()).collect();
        let last = chunks.len() - 1;
        let mut prev = (
            Timestamp {
                time: 0,
                increment: 0,
            },
            -1i64,
        );
        for (i, chunk) in chunks.into_iter().enumerate() {
            let inner: Vec<Bson> = chunk
                .iter()
                .map(|op| Bson::Document(oplog::inner_op_doc(op)))
                .collect();
            let mut o = doc! {"applyOps": inner};
            if i < last {
                o.insert("partialTxn", true);
            } else if last > 0 {
                o.insert("count", total as i64);
            }
            let spec = OpSpec {
                op: "c",
                ns: "admin.$cmd".to_owned(),
                ui: None,
                o,
                o2: None,
                from_migrate: false,
            };
            let ts = self.next_ts(s, n);
            let term = self.sets[s].nodes[n].term;
            let session = oplog::SessionFields {
                lsid: lsid.clone(),
                txn_number,
                stmt_id: -1,
                stmt_ids: Vec::new(),
                prev_op_time: prev,
                image_op_time: None,
                needs_retry_image: None,
            };
            let doc = oplog::build_entry_doc_with_session(
                self.version,
                &spec,
                ts,
                term,
                DateTime::now(),
                Some(&session),
            );
            let entry = Arc::new(Entry {
                id: EntryId {
                    ts,
                    t: doc.get_i64("t").ok(),
                    h: doc.get_i64("h").ok(),
                },
                size: doc.to_vec().map(|v| v.len()).unwrap_or(0),
                doc,
                written_at: now,
            });
            self.push_entry(s, n, entry);
            self.sets[s].nodes[n].last_write_at = now;
            prev = (ts, term);
        }
        last + 1
    }

    /// The UUID of a collection, created on first use.
    pub fn collection_uuid(&mut self, s: usize, ns: &str) -> bson::Uuid {
        *self.sets[s].uuids.entry(ns.to_owned()).or_default()
    }

    /// Checks that node `n` may take writes.
    ///
    /// # Errors
    /// NotWritablePrimary when the node is not primary.
    pub fn check_writable(&self, s: usize, n: usize) -> Result<(), CmdError> {
        if self.sets[s].nodes[n].writable_primary() {
            Ok(())
        } else {
            Err(CmdError::not_primary())
        }
    }

    /// Makes sure `ns` exists on the primary, logging the implicit `create` as mongod does.
    pub fn ensure_collection(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        from_migrate: bool,
        now: Instant,
    ) {
        if self.sets[s].nodes[n].data.contains_key(ns) {
            return;
        }
        let Some((db, coll)) = ns.split_once('.') else {
            return;
        };
        let cmd_ns = format!("{db}.$cmd");
        let pending =
            |o: &OpSpec| o.op == "c" && o.ns == cmd_ns && o.o.get_str("create").ok() == Some(coll);
        let captured = self.capture.as_ref().is_some_and(|c| {
            c.iter()
                .any(|(cs, cn, o)| *cs == s && *cn == n && pending(o))
        });
        let buffered = self.sets[s].nodes[n].txns.values().flatten().any(pending);
        if captured || buffered {
            return;
        }
        if self.version.has_terms() {
            let ui = self.collection_uuid(s, ns);
            let spec = OpSpec {
                op: "c",
                ns: format!("{db}.$cmd"),
                ui: Some(ui),
                o: doc! {"create": coll, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}},
                o2: None,
                from_migrate,
            };
            self.write(s, n, &spec, now);
        } else {
            self.sets[s].nodes[n]
                .data
                .insert(ns.to_owned(), Collection::default());
        }
    }

    /// Inserts documents on the primary.
    ///
    /// # Errors
    /// NotWritablePrimary, or DuplicateKey (11000) for an existing `_id`.
    pub fn insert(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        docs: Vec<Document>,
        from_migrate: bool,
        now: Instant,
    ) -> Result<usize, (usize, CmdError)> {
        self.check_writable(s, n).map_err(|e| (0, e))?;
        if self.statement_executed(s, n) {
            return Ok(docs.len());
        }
        self.ensure_collection(s, n, ns, from_migrate, now);
        let ui = self
            .version
            .has_terms()
            .then(|| self.collection_uuid(s, ns));
        let mut count = 0;
        for mut d in docs {
            if !d.contains_key("_id") {
                let mut with_id = doc! {"_id": ObjectId::new()};
                with_id.extend(d);
                d = with_id;
            }
            let id = d.get("_id").cloned().unwrap_or(Bson::Null);
            let exists = self.sets[s].nodes[n]
                .data
                .get(ns)
                .is_some_and(|c| c.contains(&id));
            if exists {
                return Err((
                    count,
                    CmdError::new(
                        11000,
                        "DuplicateKey",
                        format!("E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {id} }}"),
                    ),
                ));
            }
            let o2 = self
                .version
                .insert_document_key()
                .then(|| doc! {"_id": id.clone()});
            let spec = OpSpec {
                op: "i",
                ns: ns.to_owned(),
                ui,
                o: d,
                o2,
                from_migrate,
            };
            self.write(s, n, &spec, now);
            count += 1;
        }
        Ok(count)
    }

    /// Applies one update statement on the primary; returns (matched, modified, upserted id).
    ///
    /// # Errors
    /// NotWritablePrimary or a bad filter.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        q: &Document,
        u: &Document,
        multi: bool,
        upsert: bool,
        now: Instant,
    ) -> Result<(usize, usize, Option<Bson>), CmdError> {
        self.check_writable(s, n)?;
        if self.statement_executed(s, n) {
            return Ok((1, 1, None));
        }
        let targets: Vec<Document> = {
            let coll = self.sets[s].nodes[n].data.get(ns);
            let mut out = Vec::new();
            if let Some(c) = coll {
                for d in c.iter() {
                    if matcher::matches(d, q).map_err(bad_value)? {
                        out.push(d.clone());
                        if !multi {
                            break;
                        }
                    }
                }
            }
            out
        };
        let ui = self
            .version
            .has_terms()
            .then(|| self.collection_uuid(s, ns));
        let is_modifier = u.keys().any(|k| k.starts_with('$'));
        if targets.is_empty() {
            if !upsert {
                return Ok((0, 0, None));
            }
            let mut base = Document::new();
            for (k, v) in q {
                if !k.starts_with('$')
                    && !matches!(v, Bson::Document(d) if d.keys().any(|k| k.starts_with('$')))
                {
                    base.insert(k.clone(), v.clone());
                }
            }
            let new_doc = if is_modifier {
                apply_modifiers(&base, u)?
            } else {
                let mut d = u.clone();
                if let Some(id) = base.get("_id") {
                    d.insert("_id", id.clone());
                }
                d
            };
            let id = new_doc.get("_id").cloned();
            self.insert(s, n, ns, vec![new_doc], false, now)
                .map_err(|(_, e)| e)?;
            let id = id.or_else(|| {
                self.sets[s].nodes[n]
                    .data
                    .get(ns)
                    .and_then(|c| c.last())
                    .and_then(|d| d.get("_id").cloned())
            });
            return Ok((0, 0, id));
        }
        let mut modified = 0;
        for before in &targets {
            let id = before.get("_id").cloned().unwrap_or(Bson::Null);
            let (after, o) = if is_modifier {
                let after = apply_modifiers(before, u)?;
                let o = oplog::update_entry_o(self.version, before, &after);
                (after, o)
            } else {
                let mut after = doc! {"_id": id.clone()};
                for (k, v) in u {
                    if k != "_id" {
                        after.insert(k.clone(), v.clone());
                    }
                }
                (after.clone(), after)
            };
            if &after == before {
                continue;
            }
            let spec = OpSpec {
                op: "u",
                ns: ns.to_owned(),
                ui,
                o,
                o2: Some(doc! {"_id": id}),
                from_migrate: false,
            };
            self.write(s, n, &spec, now);
            modified += 1;
        }
        Ok((targets.len(), modified, None))
    }

    /// Deletes matching documents on the primary; returns how many.
    ///
    /// # Errors
    /// NotWritablePrimary or a bad filter.
    #[allow(clippy::too_many_arguments)]
    pub fn delete(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        q: &Document,
        limit_one: bool,
        from_migrate: bool,
        now: Instant,
    ) -> Result<usize, CmdError> {
        self.check_writable(s, n)?;
        if self.statement_executed(s, n) {
            return Ok(1);
        }
        let ids: Vec<Bson> = {
            let mut out = Vec::new();
            if let Some(c) = self.sets[s].nodes[n].data.get(ns) {
                for d in c.iter() {
                    if matcher::matches(d, q).map_err(bad_value)? {
                        out.push(d.get("_id").cloned().unwrap_or(Bson::Null));
                        if limit_one {
                            break;
                        }
                    }
                }
            }
            out
        };
        let ui = self
            .version
            .has_terms()
            .then(|| self.collection_uuid(s, ns));
        let specs: Vec<OpSpec> = ids
            .iter()
            .map(|id| OpSpec {
                op: "d",
                ns: ns.to_owned(),
                ui,
                o: doc! {"_id": id.clone()},
                o2: None,
                from_migrate,
            })
            .collect();
        // Batched multi-deletes (7.0+): a multi-delete that is neither retryable nor in a
        // transaction nor a migration's is logged as one session-less applyOps per batch of
        // `BATCHED_DELETE_DOCS`; a batch of one document stays a plain `d`.
        let batched = self.version.batched_deletes()
            && !limit_one
            && !from_migrate
            && self.session.is_none()
            && self.capture.is_none();
        if batched {
            for batch in specs.chunks(BATCHED_DELETE_DOCS) {
                if let [single] = batch {
                    self.write(s, n, single, now);
                    continue;
                }
                let inner: Vec<Bson> = batch
                    .iter()
                    .map(|op| Bson::Document(oplog::inner_op_doc(op)))
                    .collect();
                let spec = OpSpec {
                    op: "c",
                    ns: "admin.$cmd".to_owned(),
                    ui: None,
                    o: doc! {"applyOps": inner},
                    o2: None,
                    from_migrate: false,
                };
                self.write(s, n, &spec, now);
            }
        } else {
            for spec in &specs {
                self.write(s, n, spec, now);
            }
        }
        Ok(ids.len())
    }

    /// findAndModify on the primary: the first document matching `q` is removed
    /// (`update: None`) or updated; returns `(value, n, updatedExisting, upserted id)`
    /// where `value` is the document before, or after when `return_new`.
    ///
    /// A retryable one (a session with a txnNumber) logs the returned image as mongod
    /// does: up to 5.0 as a no-op entry on the namespace (`o` = the image, with the
    /// session fields) that the update/delete links by `preImageOpTime` /
    /// `postImageOpTime`; from 5.1 by `needsRetryImage` on the update/delete alone (the
    /// image goes to `config.image_collection`, which is not logged).
    ///
    /// # Errors
    /// NotWritablePrimary or a bad filter / update.
    #[allow(clippy::too_many_arguments)]
    pub fn find_and_modify(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        q: &Document,
        update: Option<&Document>,
        return_new: bool,
        upsert: bool,
        now: Instant,
    ) -> Result<(Option<Document>, usize, bool, Option<Bson>), CmdError> {
        self.check_writable(s, n)?;
        if self.statement_executed(s, n) {
            return Ok((None, 1, update.is_some(), None));
        }
        let found = match self.sets[s].nodes[n].data.get(ns) {
            Some(c) => {
                let mut hit = None;
                for d in c.iter() {
                    if matcher::matches(d, q).map_err(bad_value)? {
                        hit = Some(d.clone());
                        break;
                    }
                }
                hit
            }
            None => None,
        };
        let ui = self
            .version
            .has_terms()
            .then(|| self.collection_uuid(s, ns));
        let Some(before) = found else {
            let Some(u) = update.filter(|_| upsert) else {
                return Ok((None, 0, false, None));
            };
            let (_, _, id) = self.update(s, n, ns, q, u, false, true, now)?;
            let value = match (&id, return_new) {
                (Some(id), true) => self.sets[s].nodes[n]
                    .data
                    .get(ns)
                    .and_then(|c| c.iter().find(|d| d.get("_id") == Some(id)).cloned()),
                _ => None,
            };
            return Ok((value, 1, false, id));
        };
        let id = before.get("_id").cloned().unwrap_or(Bson::Null);
        let (spec, after) = match update {
            None => (
                OpSpec {
                    op: "d",
                    ns: ns.to_owned(),
                    ui,
                    o: doc! {"_id": id.clone()},
                    o2: None,
                    from_migrate: false,
                },
                None,
            ),
            Some(u) => {
                let (after, o) = if u.keys().any(|k| k.starts_with('$')) {
                    let after = apply_modifiers(&before, u)?;
                    let o = oplog::update_entry_o(self.version, &before, &after);
                    (after, o)
                } else {
                    let mut after = doc! {"_id": id.clone()};
                    for (k, v) in u {
                        if k != "_id" {
                            after.insert(k.clone(), v.clone());
                        }
                    }
                    (after.clone(), after)
                };
                (
                    OpSpec {
                        op: "u",
                        ns: ns.to_owned(),
                        ui,
                        o,
                        o2: Some(doc! {"_id": id.clone()}),
                        from_migrate: false,
                    },
                    Some(after),
                )
            }
        };
        let value = match (&after, return_new) {
            (Some(after), true) => after.clone(),
            _ => before.clone(),
        };
        if after.as_ref() == Some(&before) {
            return Ok((Some(value), 1, true, None));
        }
        let retryable =
            self.session.is_some() && self.capture.is_none() && self.version.has_terms();
        if retryable {
            let post = return_new && after.is_some();
            if self.version.retry_images_in_side_collection() {
                self.retry_image.needs = Some(if post { "postImage" } else { "preImage" });
            } else {
                self.retry_image.noop = true;
                let image = OpSpec {
                    op: "n",
                    ns: ns.to_owned(),
                    ui,
                    o: value.clone(),
                    o2: None,
                    from_migrate: false,
                };
                let entry = self.write(s, n, &image, now);
                self.retry_image.noop = false;
                if let Some(e) = entry {
                    let field = if post {
                        "postImageOpTime"
                    } else {
                        "preImageOpTime"
                    };
                    self.retry_image.link = Some((field, e.id.ts, e.id.t.unwrap_or(-1)));
                }
            }
        }
        self.write(s, n, &spec, now);
        self.retry_image = RetryImage::default();
        Ok((Some(value), 1, update.is_some(), None))
    }

    /// Makes node `n` primary with `term` and logs the "new primary" no-op.
    pub fn elect(&mut self, s: usize, n: usize, term: i64, now: Instant) {
        let set = &mut self.sets[s];
        for (i, node) in set.nodes.iter_mut().enumerate() {
            if node.reachable() || i == n {
                node.term = node.term.max(term);
            }
            if i == n {
                node.term = term;
                node.state = MemberState::Primary;
                node.minority_since = None;
                node.sync_source = None;
                node.draining = true;
                node.first_optime_of_term = None;
            }
        }
        set.no_primary_since = None;
        set.elect_now = false;
        // The bucket catalog is the primary's memory: a new primary opens new buckets.
        set.ts_buckets.clear();
        tracing::info!(set = %self.sets[s].name, node = %self.sets[s].nodes[n].addr, term, "elected primary");
        if !self.sets[s].hold_step_up {
            self.complete_step_up(s, n, now);
        }
    }

    /// Ends drain mode: logs the "new primary" no-op, whose optime becomes the floor of what
    /// this primary may commit (TopologyCoordinator::completeTransitionToPrimary).
    fn complete_step_up(&mut self, s: usize, n: usize, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        if node.state != MemberState::Primary || !node.draining {
            return;
        }
        node.draining = false;
        if let Some(e) = self.write(s, n, &OpSpec::noop("new primary"), now) {
            self.sets[s].nodes[n].first_optime_of_term = Some(op_key(&e.id));
        }
    }

    /// Steps a primary down to secondary.
    pub fn step_down_node(&mut self, s: usize, n: usize, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        if node.state == MemberState::Primary {
            node.state = MemberState::Secondary;
            node.minority_since = None;
            node.draining = false;
            node.first_optime_of_term = None;
            tracing::info!(node = %node.addr, "stepped down");
        }
        if self.sets[s].no_primary_since.is_none() {
            self.sets[s].no_primary_since = Some(now);
        }
    }

    /// Explicit `replSetStepDown`: the most up-to-date reachable secondary catches up with
    /// the primary (mongod waits for a caught-up secondary before stepping down) and is
    /// elected at once; the old primary is not electable for 60 s.
    ///
    /// # Errors
    /// NotWritablePrimary when the set has no primary; ExceededTimeLimit (262) when no
    /// electable secondary is reachable.
    pub fn step_down(&mut self, s: usize, now: Instant) -> Result<(), CmdError> {
        let p = self.sets[s]
            .sync_source()
            .ok_or_else(CmdError::not_primary)?;
        let candidate = self.sets[s]
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, node)| *i != p && node.reachable() && node.member.is_electable())
            .max_by_key(|(i, node)| (node.last_key(), std::cmp::Reverse(*i)))
            .map(|(i, _)| i);
        let Some(c) = candidate else {
            return Err(CmdError::new(
                262,
                "ExceededTimeLimit",
                "No electable secondaries caught up as of the step down deadline",
            ));
        };
        self.catch_up(s, c, p);
        self.step_down_node(s, p, now);
        self.sets[s].nodes[p].stepdown_until = Some(now + Duration::from_secs(60));
        let term = self.max_term(s) + 1;
        self.elect(s, c, term, now);
        Ok(())
    }

    fn max_term(&self, s: usize) -> i64 {
        self.sets[s].nodes.iter().map(|n| n.term).max().unwrap_or(0)
    }

    /// Copies every entry node `to` misses from node `from`, ignoring lag.
    fn catch_up(&mut self, s: usize, to: usize, from: usize) {
        let start = match self.sets[s].nodes[to].oplog.last() {
            Some(e) => match self.sets[s].nodes[from].oplog.position_of(&e.id) {
                Some(i) => i + 1,
                None => return,
            },
            None => 0,
        };
        let missing: Vec<_> = self.sets[s].nodes[from]
            .oplog
            .iter()
            .skip(start)
            .cloned()
            .collect();
        for e in missing {
            self.push_entry(s, to, e);
        }
    }

    /// Advances time: elections, replication, commit point, periodic no-ops.
    /// Returns whether anything observable changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for s in 0..self.sets.len() {
            if self.sets[s].removed {
                continue;
            }
            changed |= self.run_elections(s, now);
            changed |= self.finish_drains(s, now);
            changed |= self.replicate(s, now);
            changed |= self.write_noops(s, now);
            changed |= self.replicate(s, now);
            changed |= self.advance_commit(s, now);
        }
        changed
    }

    /// Completes drain mode of primaries elected while the step-up was held.
    fn finish_drains(&mut self, s: usize, now: Instant) -> bool {
        if self.sets[s].hold_step_up {
            return false;
        }
        let draining: Vec<usize> = (0..self.sets[s].nodes.len())
            .filter(|i| {
                let n = &self.sets[s].nodes[*i];
                n.alive && n.state == MemberState::Primary && n.draining
            })
            .collect();
        for n in &draining {
            self.complete_step_up(s, *n, now);
        }
        !draining.is_empty()
    }

    fn run_elections(&mut self, s: usize, now: Instant) -> bool {
        let timeout = self.cfg.election_timeout;
        let majority = self.sets[s].majority();
        let reachable: Vec<usize> = (0..self.sets[s].nodes.len())
            .filter(|i| self.sets[s].nodes[*i].reachable())
            .collect();
        // Only voters count towards an election or towards a primary seeing a majority.
        let voters: Vec<usize> = reachable
            .iter()
            .copied()
            .filter(|i| self.sets[s].nodes[*i].member.is_voter())
            .collect();
        let max_reachable_term = reachable
            .iter()
            .map(|i| self.sets[s].nodes[*i].term)
            .max()
            .unwrap_or(0);
        let mut changed = false;
        for i in 0..self.sets[s].nodes.len() {
            let node = &mut self.sets[s].nodes[i];
            if node.state != MemberState::Primary {
                continue;
            }
            let step = if !node.alive || node.removed || !node.member.is_electable() {
                true
            } else if node.partitioned {
                node.partitioned_at
                    .is_some_and(|at| now.duration_since(at) >= timeout)
            } else if voters.len() < majority {
                let since = *node.minority_since.get_or_insert(now);
                now.duration_since(since) >= timeout
            } else {
                node.minority_since = None;
                max_reachable_term > node.term
            };
            if step {
                if node.reachable() {
                    node.term = node.term.max(max_reachable_term);
                }
                self.step_down_node(s, i, now);
                changed = true;
            }
        }
        let has_primary = reachable
            .iter()
            .any(|i| self.sets[s].nodes[*i].state == MemberState::Primary);
        if has_primary {
            self.sets[s].no_primary_since = None;
            return changed;
        }
        if voters.len() < majority {
            return changed;
        }
        let since = *self.sets[s].no_primary_since.get_or_insert(now);
        if !self.sets[s].elect_now && now.duration_since(since) < timeout {
            return changed;
        }
        // Candidates: electable members (not arbiters, priority > 0: hidden, delayed and
        // non-voting members never stand) that are not frozen by a step-down.
        let candidate = reachable
            .iter()
            .copied()
            .filter(|i| {
                let n = &self.sets[s].nodes[*i];
                n.member.is_electable() && n.stepdown_until.is_none_or(|until| until <= now)
            })
            .max_by(|a, b| {
                let (na, nb) = (&self.sets[s].nodes[*a], &self.sets[s].nodes[*b]);
                na.last_key()
                    .cmp(&nb.last_key())
                    .then(na.member.priority.total_cmp(&nb.member.priority))
                    .then(b.cmp(a))
            });
        // A candidate needs the votes of a majority of voters (majorityVoteCount), and a
        // voter grants its vote only to a candidate whose oplog is at least as up to date as
        // its own (an arbiter's is empty, so it always does): otherwise a lagging member
        // could win and roll back majority-committed entries.
        if let Some(c) = candidate.filter(|c| {
            let ck = self.sets[s].nodes[*c].last_key();
            voters
                .iter()
                .filter(|v| self.sets[s].nodes[**v].last_key() <= ck)
                .count()
                >= majority
        }) {
            let term = max_reachable_term + 1;
            self.elect(s, c, term, now);
            changed = true;
        }
        changed
    }

    /// Where member `i` replicates from: its forced sync source when that one is usable,
    /// else the primary.
    fn pick_sync_source(&self, s: usize, i: usize) -> Option<usize> {
        let set = &self.sets[s];
        if let Some(j) = set.nodes[i].sync_from {
            let src = &set.nodes[j];
            if j != i && src.reachable() && src.member.is_data_bearing() {
                return Some(j);
            }
        }
        set.sync_source().filter(|p| *p != i)
    }

    fn replicate(&mut self, s: usize, now: Instant) -> bool {
        let mut changed = false;
        for i in 0..self.sets[s].nodes.len() {
            {
                let node = &self.sets[s].nodes[i];
                if !node.reachable()
                    || !node.member.is_data_bearing()
                    || node.state == MemberState::Primary
                {
                    continue;
                }
            }
            let Some(p) = self.pick_sync_source(s, i) else {
                self.sets[s].nodes[i].sync_source = None;
                continue;
            };
            self.sets[s].nodes[i].sync_source = Some(p);
            if self.sets[s].nodes[i].replication_blocked {
                continue;
            }
            let start = {
                let set = &self.sets[s];
                let (src, dst) = (&set.nodes[p], &set.nodes[i]);
                match dst.oplog.last() {
                    // Emptied by truncate_oplog: continue after what it last had.
                    None => Some(src.oplog.index_after(dst.last_ts)),
                    Some(e) => match src.oplog.position_of(&e.id) {
                        Some(x) => Some(x + 1),
                        // Its newest entry already fell off the source's oplog: "too stale",
                        // mongod stops replicating and needs a resync. So does the sim.
                        None if src
                            .oplog
                            .first()
                            .is_some_and(|f| ts_key(f.id.ts) > ts_key(e.id.ts)) =>
                        {
                            if !dst.too_stale_logged {
                                tracing::warn!(node = %dst.addr, source = %src.addr, "too stale to sync from its source");
                            }
                            None.or(Some(usize::MAX))
                        }
                        // Its newest entry is not on the source's branch yet: a secondary
                        // source that lags behind it waits; a primary means rollback.
                        None if src.state != MemberState::Primary
                            && src.last_key() < dst.last_key() =>
                        {
                            continue
                        }
                        None => None,
                    },
                }
            };
            if start == Some(usize::MAX) {
                self.sets[s].nodes[i].too_stale_logged = true;
                continue;
            }
            let start = match start {
                Some(x) => x,
                None => {
                    self.rollback(s, i, p);
                    changed = true;
                    match self.sets[s].nodes[i].oplog.last() {
                        None => 0,
                        Some(e) => match self.sets[s].nodes[p].oplog.position_of(&e.id) {
                            Some(x) => x + 1,
                            None => continue,
                        },
                    }
                }
            };
            let node = &self.sets[s].nodes[i];
            // A delayed member applies entries secondaryDelaySecs after they were written.
            let lag = node.lag + Duration::from_secs(node.member.secondary_delay_secs);
            let ready: Vec<Arc<Entry>> = self.sets[s].nodes[p]
                .oplog
                .iter()
                .skip(start)
                .take_while(|e| e.written_at + lag <= now)
                .cloned()
                .collect();
            for e in ready {
                self.push_entry(s, i, e);
                changed = true;
            }
        }
        changed
    }

    /// Rolls node `n` back to its common point with `src`, as a rejoining old primary does.
    fn rollback(&mut self, s: usize, n: usize, src: usize) {
        let common = {
            let set = &self.sets[s];
            let (node, source) = (&set.nodes[n], &set.nodes[src]);
            (0..node.oplog.len()).rev().find(|i| {
                node.oplog
                    .get(*i)
                    .is_some_and(|e| source.oplog.contains(&e.id))
            })
        };
        let source_data = self.sets[s].nodes[src].data.clone();
        let set = &mut self.sets[s];
        let removed = match common {
            Some(c) => set.nodes[n].oplog.truncate_after(c + 1),
            None => {
                // No common point (oplog capped past it): resync from the source.
                let removed = set.nodes[n].oplog.truncate_after(0);
                let copy: Vec<_> = set.nodes[src].oplog.iter().cloned().collect();
                for e in copy {
                    set.nodes[n].oplog.push(e);
                }
                removed
            }
        };
        let node = &mut set.nodes[n];
        node.data = source_data;
        node.last_ts = node.oplog.last().map(|e| e.id.ts).unwrap_or(node.last_ts);
        node.epoch += 1;
        let killed: Vec<i64> = node.cursors.keys().copied().collect();
        node.cursors.clear();
        for id in killed {
            node.dead_cursors.insert(
                id,
                CmdError::new(
                    175,
                    "QueryPlanKilled",
                    format!("cursor id {id} was killed because the node rolled back (mongosim)"),
                ),
            );
        }
        tracing::warn!(set = %set.name, node = %node.addr, entries = removed.len(), "rollback");
        let committed_key = set.commit_point.as_ref().map(|c| op_key(&c.id));
        for e in removed {
            if committed_key.is_some_and(|k| op_key(&e.id) <= k)
                && set.committed.iter().rev().any(|c| c.id == e.id)
            {
                tracing::error!(set = %set.name, node = %node.addr, ts = ?e.id.ts, "a committed entry was rolled back (simulator bug)");
            }
            if !set.rolled_back.iter().any(|r| r.id == e.id) {
                set.rolled_back.push(e);
            }
        }
    }

    fn write_noops(&mut self, s: usize, now: Instant) -> bool {
        let mut changed = false;
        for n in 0..self.sets[s].nodes.len() {
            let node = &self.sets[s].nodes[n];
            if node.alive
                && node.writable_primary()
                && !self.cfg.noop_interval.is_zero()
                && now.duration_since(node.last_write_at) >= self.cfg.noop_interval
            {
                self.write(s, n, &OpSpec::noop("periodic noop"), now);
                changed = true;
            }
        }
        changed
    }

    /// The commit rule of protocol version 1, per member.
    ///
    /// A primary (out of drain mode) moves its commit point to the newest entry that
    /// `writeMajorityCount` data-bearing voters hold, but never to an optime before the first
    /// entry of its own term (TopologyCoordinator::updateLastCommittedOpTimeAndWallTime and
    /// advanceLastCommittedOpTimeAndWallTime): entries of older terms commit only when an
    /// entry of the current term does. Non-voters' and arbiters' copies never count.
    ///
    /// Secondaries learn their sync source's commit point (capped at their own newest entry
    /// when its term differs: same branch guaranteed) and the primary's through heartbeats
    /// (ignored when its term differs from their newest entry's), both as they were
    /// `commit_point_delay` ago. Arbiters take the heartbeat value as is.
    ///
    /// The set's ground truth follows the primaries: an entry enters `committed` when a
    /// primary's commit point passes it.
    fn advance_commit(&mut self, s: usize, now: Instant) -> bool {
        let mut changed = false;
        let write_majority = self.sets[s].majorities().write_majority;
        for p in 0..self.sets[s].nodes.len() {
            let target = {
                let set = &self.sets[s];
                let primary = &set.nodes[p];
                if !primary.alive
                    || primary.removed
                    || primary.state != MemberState::Primary
                    || primary.draining
                {
                    continue;
                }
                let Some(floor) = primary.first_optime_of_term else {
                    continue;
                };
                let start = match &primary.commit_point {
                    Some(c) => match primary.oplog.position_of(&c.id) {
                        Some(i) => i + 1,
                        None => primary.oplog.index_after(c.id.ts),
                    },
                    None => 0,
                };
                let mut newest = None;
                for i in (start..primary.oplog.len()).rev() {
                    if let Some(e) = primary.oplog.get(i) {
                        if op_key(&e.id) < floor {
                            break;
                        }
                        if set.voting_holders_in_term(&e.id, primary.term) >= write_majority {
                            newest = Some(e.clone());
                            break;
                        }
                    }
                }
                newest
            };
            if let Some(e) = target {
                self.set_node_commit_point(s, p, e.clone(), now);
                self.advance_truth(s, p, &e);
                changed = true;
            }
        }
        // Secondaries and arbiters learn it.
        let cutoff = now.checked_sub(self.cfg.commit_point_delay);
        let primary = self.sets[s].sync_source();
        for i in 0..self.sets[s].nodes.len() {
            let (learn_from_source, is_arbiter) = {
                let n = &self.sets[s].nodes[i];
                if !n.reachable() || n.state == MemberState::Primary {
                    continue;
                }
                (n.sync_source, n.member.arbiter_only)
            };
            let mut candidates = Vec::new();
            if let Some(src) = learn_from_source.filter(|_| !is_arbiter) {
                if self.sets[s].nodes[src].reachable() {
                    if let Some(c) = commit_point_at(&self.sets[s].nodes[src], cutoff) {
                        candidates.push((c, true));
                    }
                }
            }
            if let Some(p) = primary.filter(|p| *p != i) {
                if let Some(c) = commit_point_at(&self.sets[s].nodes[p], cutoff) {
                    candidates.push((c, false));
                }
            }
            for (c, from_sync_source) in candidates {
                let accepted = {
                    let n = &self.sets[s].nodes[i];
                    let mine = n.commit_point.as_ref().map(|m| op_key(&m.id));
                    let c = if is_arbiter {
                        Some(c)
                    } else {
                        match n.oplog.last() {
                            None => None,
                            Some(last) if last.id.t == c.id.t => Some(c),
                            Some(last) if from_sync_source => {
                                Some(if op_key(&last.id) < op_key(&c.id) {
                                    last.clone()
                                } else {
                                    c
                                })
                            }
                            Some(_) => None,
                        }
                    };
                    c.filter(|c| mine.is_none_or(|m| op_key(&c.id) > m))
                };
                if let Some(c) = accepted {
                    self.set_node_commit_point(s, i, c, now);
                    changed = true;
                }
            }
        }
        // Forget history nobody can ask for any more.
        if let Some(cutoff) = cutoff {
            for n in &mut self.sets[s].nodes {
                while n.commit_history.len() >= 2 && n.commit_history[1].0 <= cutoff {
                    n.commit_history.pop_front();
                }
            }
        }
        changed
    }

    fn set_node_commit_point(&mut self, s: usize, n: usize, e: Arc<Entry>, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        node.commit_point = Some(e.clone());
        node.commit_history.push_back((now, e));
    }

    /// Moves the ground truth to `e` (committed by primary `p`): the entries of `p`'s oplog
    /// between the previous truth and `e` become committed.
    fn advance_truth(&mut self, s: usize, p: usize, e: &Arc<Entry>) {
        let set = &self.sets[s];
        if set
            .commit_point
            .as_ref()
            .is_some_and(|c| op_key(&c.id) >= op_key(&e.id))
        {
            return;
        }
        let primary = &set.nodes[p];
        let start = match &set.commit_point {
            Some(c) => match primary.oplog.position_of(&c.id) {
                Some(i) => i + 1,
                None => primary.oplog.index_after(c.id.ts),
            },
            None => 0,
        };
        let Some(end) = primary.oplog.position_of(&e.id) else {
            return;
        };
        let newly: Vec<Arc<Entry>> = (start..=end)
            .filter_map(|i| primary.oplog.get(i).cloned())
            .collect();
        let set = &mut self.sets[s];
        set.commit_point = Some(e.clone());
        if !set.rolled_back.is_empty() {
            set.rolled_back
                .retain(|r| !newly.iter().any(|c| c.id == r.id));
        }
        set.committed.extend(newly);
    }

    /// Kills a process: cursors are lost, a primary stops being primary.
    pub fn kill(&mut self, s: usize, n: usize, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        node.alive = false;
        node.cursors.clear();
        node.dead_cursors.clear();
        node.epoch += 1;
        if node.state == MemberState::Primary {
            self.step_down_node(s, n, now);
        }
    }

    /// Restarts a killed process as a secondary with its data and oplog.
    pub fn restart(&mut self, s: usize, n: usize, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        node.alive = true;
        node.state = if node.member.arbiter_only {
            MemberState::Arbiter
        } else {
            MemberState::Secondary
        };
        node.last_write_at = now;
    }

    /// Sharding catalog, or an error for non-sharded worlds.
    ///
    /// # Errors
    /// IllegalOperation when the world is not a sharded cluster.
    pub fn sharding(&self) -> Result<&Sharding, CmdError> {
        self.sharding
            .as_ref()
            .ok_or_else(|| CmdError::new(20, "IllegalOperation", "not a sharded cluster"))
    }

    /// Chunks of `ns`, sharding it on `_id` with the default split points on first use.
    pub fn chunks_for(&mut self, ns: &str) -> Vec<Chunk> {
        let Some(sh) = self.sharding.as_mut() else {
            return Vec::new();
        };
        if let Some(c) = sh.collections.get(ns) {
            return c.clone();
        }
        let active: Vec<String> = sh
            .shards
            .iter()
            .filter(|x| x.state == ShardState::Active)
            .map(|x| x.name.clone())
            .collect();
        let mut bounds = vec![Bson::MinKey];
        bounds.extend(sh.split_points.iter().cloned());
        bounds.push(Bson::MaxKey);
        let chunks: Vec<Chunk> = bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| Chunk {
                min: w[0].clone(),
                max: w[1].clone(),
                shard: active
                    .get(i % active.len().max(1))
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        sh.collections.insert(ns.to_owned(), chunks.clone());
        chunks
    }

    /// Set index of a shard by name.
    pub fn shard_set(&self, shard: &str) -> Option<usize> {
        self.sharding
            .as_ref()?
            .shards
            .iter()
            .find(|x| x.name == shard && x.state != ShardState::Removed)
            .map(|x| x.set)
    }

    /// Moves the chunk of `ns` containing `key` to `to`: the recipient logs `fromMigrate`
    /// inserts, then the donor logs `fromMigrate` deletes (as in the mlaunch transcript of `mlaunch-fixtures/sharded-migration`).
    ///
    /// # Errors
    /// When the shard or a primary is missing.
    pub fn move_chunk(
        &mut self,
        ns: &str,
        key: &Bson,
        to: &str,
        now: Instant,
    ) -> Result<(), CmdError> {
        let chunks = self.chunks_for(ns);
        let idx = chunks
            .iter()
            .position(|c| c.contains(key))
            .ok_or_else(|| CmdError::new(2, "BadValue", "no chunk contains the key"))?;
        let chunk = chunks[idx].clone();
        if chunk.shard == to {
            return Ok(());
        }
        let donor_set = self.shard_set(&chunk.shard).ok_or_else(|| {
            CmdError::new(
                70,
                "ShardNotFound",
                format!("shard {} not found", chunk.shard),
            )
        })?;
        let recipient_set = self
            .shard_set(to)
            .ok_or_else(|| CmdError::new(70, "ShardNotFound", format!("Shard {to} not found")))?;
        let dp = self.sets[donor_set]
            .sync_source()
            .ok_or_else(CmdError::not_primary)?;
        let rp = self.sets[recipient_set]
            .sync_source()
            .ok_or_else(CmdError::not_primary)?;
        let docs: Vec<Document> = self.sets[donor_set].nodes[dp]
            .data
            .get(ns)
            .map(|c| {
                c.iter()
                    .filter(|d| d.get("_id").is_some_and(|id| chunk.contains(id)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
        // Recipient clones the range (skipping ids it already holds as orphans).
        let fresh: Vec<Document> = docs
            .into_iter()
            .filter(|d| {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                self.sets[recipient_set].nodes[rp]
                    .data
                    .get(ns)
                    .is_none_or(|c| !c.contains(&id))
            })
            .collect();
        if !fresh.is_empty() {
            self.insert(recipient_set, rp, ns, fresh, true, now)
                .map_err(|(_, e)| e)?;
        } else {
            self.ensure_collection(recipient_set, rp, ns, true, now);
        }
        if let Some(sh) = self.sharding.as_mut() {
            if let Some(c) = sh.collections.get_mut(ns) {
                c[idx].shard = to.to_owned();
            }
        }
        for id in ids {
            self.delete(donor_set, dp, ns, &doc! {"_id": id}, true, true, now)?;
        }
        Ok(())
    }
}

/// The newest commit point `n` had at `cutoff` (what others can have learned by now).
fn commit_point_at(n: &NodeState, cutoff: Option<Instant>) -> Option<Arc<Entry>> {
    let cutoff = cutoff?;
    n.commit_history
        .iter()
        .rev()
        .find(|(at, _)| *at <= cutoff)
        .map(|(_, e)| e.clone())
}

/// BadValue (2) from a filter error.
pub fn bad_value(e: matcher::BadFilter) -> CmdError {
    CmdError::new(2, "BadValue", e.0)
}

/// Applies `$set`, `$unset`, `$inc` to a copy of `doc`.
///
/// # Errors
/// FailedToParse (9) for unsupported modifiers.
pub fn apply_modifiers(doc: &Document, u: &Document) -> Result<Document, CmdError> {
    let mut out = doc.clone();
    for (op, arg) in u {
        let Bson::Document(arg) = arg else {
            return Err(CmdError::new(
                9,
                "FailedToParse",
                format!(
                    "Modifiers operate on fields but we found type {} instead",
                    "non-object"
                ),
            ));
        };
        match op.as_str() {
            "$set" => {
                for (k, v) in arg {
                    oplog::set_path(&mut out, k, v.clone());
                }
            }
            "$unset" => {
                for (k, _) in arg {
                    oplog::unset_path(&mut out, k);
                }
            }
            "$inc" => {
                for (k, v) in arg {
                    let cur = matcher::lookup(&out, k).cloned();
                    let new = match (cur, v) {
                        (None, v) => v.clone(),
                        (Some(Bson::Int32(a)), Bson::Int32(b)) => Bson::Int32(a.wrapping_add(*b)),
                        (Some(Bson::Int64(a)), Bson::Int32(b)) => Bson::Int64(a + i64::from(*b)),
                        (Some(Bson::Int32(a)), Bson::Int64(b)) => Bson::Int64(i64::from(a) + b),
                        (Some(Bson::Int64(a)), Bson::Int64(b)) => Bson::Int64(a + b),
                        (Some(a), b) => {
                            let fa = a.as_f64().or_else(|| a.as_i64().map(|x| x as f64)).unwrap_or(0.0);
                            let fb = b.as_f64().or_else(|| b.as_i32().map(f64::from)).or_else(|| b.as_i64().map(|x| x as f64)).unwrap_or(0.0);
                            Bson::Double(fa + fb)
                        }
                    };
                    oplog::set_path(&mut out, k, new);
                }
            }
            other => {
                return Err(CmdError::new(
                    9,
                    "FailedToParse",
                    format!("Unknown modifier: {other}. Expected a valid update modifier or pipeline-style update specified as an array"),
                ))
            }
        }
    }
    Ok(out)
}

/// Applies an oplog entry to a node's data (idempotently, as oplog application must be).
pub fn apply_entry(data: &mut BTreeMap<String, Collection>, entry: &Document) {
    let op = entry.get_str("op").unwrap_or("n");
    let ns = entry.get_str("ns").unwrap_or("");
    let Ok(o) = entry.get_document("o") else {
        return;
    };
    match op {
        "i" => {
            data.entry(ns.to_owned()).or_default().upsert(o.clone());
        }
        "u" => {
            let id = entry
                .get_document("o2")
                .ok()
                .and_then(|o2| o2.get("_id").cloned())
                .unwrap_or(Bson::Null);
            if let Some(coll) = data.get_mut(ns) {
                if let Some(doc) = coll.get_mut(&id) {
                    oplog::apply_update_o(doc, o);
                }
            }
        }
        "d" => {
            let id = o.get("_id").cloned().unwrap_or(Bson::Null);
            if let Some(coll) = data.get_mut(ns) {
                coll.remove(&id);
            }
        }
        "c" => {
            let db = ns.split('.').next().unwrap_or("");
            if let Ok(inner) = o.get_array("applyOps") {
                for op in inner {
                    if let Bson::Document(op) = op {
                        apply_entry(data, op);
                    }
                }
            } else if let Ok(name) = o.get_str("create") {
                data.entry(format!("{db}.{name}")).or_default();
            } else if let Ok(name) = o.get_str("drop") {
                data.remove(&format!("{db}.{name}"));
            }
        }
        _ => {}
    }
}

/// Documents per batch of a batched multi-delete: the default of the server parameter
/// `batchedDeletesTargetBatchDocs` (100; `jstests/noPassthrough/batched_multi_deletes.js`
/// "docsPerBatchDefault"). The time (5 ms) and staged-bytes targets, which may cut a batch
/// earlier on a real server, are not simulated.
pub const BATCHED_DELETE_DOCS: usize = 100;

/// Key of an open transaction: the session id and txnNumber.
pub fn txn_key(lsid_id: &Bson, txn_number: i64) -> String {
    format!("{lsid_id}/{txn_number}")
}

/// Parses an `OpTime` document for hello / replSetGetStatus.
pub fn optime_doc(ts: Timestamp, t: i64) -> Document {
    doc! {"ts": ts, "t": t}
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(100);

    fn world(nodes: u16) -> (World, Instant) {
        let mut w = World::new(
            ServerVersion::V7_0,
            SimConfig {
                noop_interval: Duration::ZERO,
                election_timeout: TIMEOUT,
                oplog_max_entries: None,
                oplog_max_bytes: None,
                commit_point_delay: Duration::ZERO,
            },
        );
        let addrs: Vec<SocketAddr> = (0..nodes)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 40000 + i)))
            .collect();
        let now = Instant::now();
        w.add_set("rs", SetRole::Plain, &addrs, now);
        w.tick(now);
        (w, now)
    }

    fn ids(w: &World, n: usize) -> Vec<EntryId> {
        w.sets[0].nodes[n].oplog.iter().map(|e| e.id).collect()
    }

    #[test]
    fn writes_replicate_and_commit() {
        let (mut w, now) = world(3);
        w.insert(0, 0, "test.c", vec![doc! {"_id": 1}], false, now)
            .unwrap();
        w.tick(now);
        assert_eq!(ids(&w, 0), ids(&w, 1));
        assert_eq!(ids(&w, 0), ids(&w, 2));
        let last = w.sets[0].nodes[0].oplog.last().unwrap().id;
        assert_eq!(w.sets[0].commit_point.as_ref().unwrap().id, last);
        assert_eq!(w.sets[0].committed.len(), w.sets[0].nodes[0].oplog.len());
    }

    #[test]
    fn lag_delays_a_secondary_but_majority_still_commits() {
        let (mut w, now) = world(3);
        w.sets[0].nodes[2].lag = Duration::from_secs(1);
        w.insert(0, 0, "test.c", vec![doc! {"_id": 1}], false, now)
            .unwrap();
        w.tick(now);
        assert_ne!(ids(&w, 0), ids(&w, 2));
        let last = w.sets[0].nodes[0].oplog.last().unwrap().id;
        assert_eq!(w.sets[0].commit_point.as_ref().unwrap().id, last);
        w.tick(now + Duration::from_secs(1));
        assert_eq!(ids(&w, 0), ids(&w, 2));
    }

    #[test]
    fn isolated_primary_is_replaced_and_rolled_back_on_heal() {
        let (mut w, t0) = world(3);
        w.sets[0].nodes[0].partitioned = true;
        w.sets[0].nodes[0].partitioned_at = Some(t0);
        // Still primary within the election timeout: the write lands on node 0 only.
        w.insert(0, 0, "test.c", vec![doc! {"_id": "lost"}], false, t0)
            .unwrap();
        let lost = w.sets[0].nodes[0].oplog.last().unwrap().id;
        w.tick(t0);
        assert_eq!(w.sets[0].nodes[0].state, MemberState::Primary);
        assert!(!w.sets[0].nodes[1].oplog.contains(&lost));
        let t1 = t0 + TIMEOUT;
        w.tick(t1);
        assert_eq!(
            w.sets[0].nodes[0].state,
            MemberState::Secondary,
            "stepped down"
        );
        let p = w.sets[0].sync_source().unwrap();
        assert_ne!(p, 0);
        assert_eq!(w.sets[0].nodes[p].term, 2);
        let cursor = w.new_cursor_id();
        w.sets[0].nodes[0].cursors.insert(
            cursor,
            Cursor {
                ns: "local.oplog.rs".into(),
                kind: CursorKind::Buffered(VecDeque::new()),
                limit_remaining: None,
            },
        );
        w.sets[0].nodes[0].partitioned = false;
        w.tick(t1);
        assert!(!w.sets[0].nodes[0].oplog.contains(&lost), "rolled back");
        assert_eq!(ids(&w, 0), ids(&w, p));
        assert_eq!(
            w.sets[0].nodes[0].dead_cursors.get(&cursor).unwrap().code,
            175
        );
        assert!(w.sets[0].rolled_back.iter().any(|e| e.id == lost));
        assert!(!w.sets[0].committed.iter().any(|e| e.id == lost));
        // The implicit create was rolled back too: the collection is gone with its document.
        assert!(!w.sets[0].nodes[0].data.contains_key("test.c"));
    }

    #[test]
    fn killed_primary_is_replaced_after_the_timeout_and_rejoins() {
        let (mut w, t0) = world(3);
        w.kill(0, 0, t0);
        w.tick(t0);
        assert!(w.sets[0].sync_source().is_none());
        w.tick(t0 + TIMEOUT);
        let p = w.sets[0].sync_source().unwrap();
        assert_ne!(p, 0);
        let new_primary_noop = w.sets[0].nodes[p].oplog.last().unwrap();
        assert_eq!(
            new_primary_noop.doc.get_document("o").unwrap(),
            &doc! {"msg": "new primary"}
        );
        w.restart(0, 0, t0 + TIMEOUT);
        w.tick(t0 + TIMEOUT);
        assert_eq!(ids(&w, 0), ids(&w, p));
        assert_eq!(w.sets[0].nodes[0].state, MemberState::Secondary);
    }

    #[test]
    fn minority_side_never_elects() {
        let (mut w, t0) = world(3);
        w.kill(0, 1, t0);
        w.kill(0, 2, t0);
        w.tick(t0 + TIMEOUT);
        w.tick(t0 + TIMEOUT * 2);
        assert_eq!(
            w.sets[0].nodes[0].state,
            MemberState::Secondary,
            "no majority: steps down"
        );
        w.tick(t0 + TIMEOUT * 10);
        assert!(w.sets[0].primary_index().is_none());
    }

    #[test]
    fn step_down_hands_over_to_a_caught_up_secondary() {
        let (mut w, t0) = world(3);
        w.sets[0].nodes[1].lag = Duration::from_secs(60);
        w.sets[0].nodes[2].lag = Duration::from_secs(60);
        w.insert(0, 0, "test.c", vec![doc! {"_id": 1}], false, t0)
            .unwrap();
        let written = w.sets[0].nodes[0].oplog.last().unwrap().id;
        w.step_down(0, t0).unwrap();
        let p = w.sets[0].sync_source().unwrap();
        assert_ne!(p, 0);
        assert!(
            w.sets[0].nodes[p].oplog.contains(&written),
            "caught up before the handover"
        );
    }

    #[test]
    fn periodic_noops_only_when_idle() {
        let (mut w, t0) = world(1);
        w.cfg.noop_interval = Duration::from_secs(10);
        let before = w.sets[0].nodes[0].oplog.len();
        w.tick(t0 + Duration::from_secs(5));
        assert_eq!(w.sets[0].nodes[0].oplog.len(), before);
        w.tick(t0 + Duration::from_secs(10));
        let last = w.sets[0].nodes[0].oplog.last().unwrap();
        assert_eq!(
            last.doc.get_document("o").unwrap(),
            &doc! {"msg": "periodic noop"}
        );
        assert_eq!(last.doc.get_str("ns").unwrap(), "");
    }

    #[test]
    fn timestamps_strictly_increase() {
        let (mut w, t0) = world(1);
        for i in 0..50 {
            w.insert(0, 0, "test.c", vec![doc! {"_id": i}], false, t0)
                .unwrap();
        }
        let ts: Vec<(u32, u32)> = w.sets[0].nodes[0]
            .oplog
            .iter()
            .map(|e| ts_key(e.id.ts))
            .collect();
        assert!(ts.windows(2).all(|p| p[0] < p[1]));
    }
}

#[cfg(test)]
mod commit_rule_tests {
    use super::*;

    fn five() -> (World, Instant) {
        let mut w = World::new(
            ServerVersion::V7_0,
            SimConfig {
                noop_interval: Duration::ZERO,
                election_timeout: Duration::from_millis(100),
                oplog_max_entries: None,
                oplog_max_bytes: None,
                commit_point_delay: Duration::ZERO,
            },
        );
        let addrs: Vec<SocketAddr> = (0..5)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 41000 + i)))
            .collect();
        let now = Instant::now();
        w.add_set("rs", SetRole::Plain, &addrs, now);
        w.tick(now);
        (w, now)
    }

    #[test]
    fn an_older_term_entry_commits_only_with_an_entry_of_the_current_term() {
        let (mut w, t0) = five();
        for n in 2..5 {
            w.sets[0].nodes[n].replication_blocked = true;
        }
        w.insert(0, 0, "test.c", vec![doc! {"_id": "x"}], false, t0)
            .unwrap();
        w.tick(t0);
        let x = w.sets[0].nodes[0].oplog.last().unwrap().id;
        assert_eq!(w.sets[0].voting_holders(&x), 2);
        // Node 0 steps down and is re-elected in a new term with its step-up held.
        w.sets[0].hold_step_up = true;
        w.step_down_node(0, 0, t0);
        w.elect(0, 0, 5, t0);
        assert!(w.sets[0].nodes[0].draining);
        w.sets[0].nodes[2].replication_blocked = false;
        w.tick(t0);
        assert_eq!(w.sets[0].voting_holders(&x), 3, "held by a majority");
        assert!(!w.sets[0].committed.iter().any(|e| e.id == x));
        // Releasing the hold logs the term-5 no-op; once it is held by a majority, x commits.
        w.sets[0].hold_step_up = false;
        w.tick(t0);
        let noop = w.sets[0].nodes[0].oplog.last().unwrap().id;
        assert_eq!(noop.t, Some(5));
        assert!(w.sets[0].committed.iter().any(|e| e.id == x));
        assert_eq!(w.sets[0].commit_point.as_ref().unwrap().id, noop);
        // Secondaries learned it (commit_point_delay is zero here).
        assert_eq!(w.sets[0].nodes[2].commit_point.as_ref().unwrap().id, noop);
    }

    #[test]
    fn non_voters_do_not_count() {
        let (mut w, t0) = five();
        for n in 3..5 {
            w.sets[0].nodes[n].member = MemberSpec::non_voter();
        }
        assert_eq!(w.sets[0].majorities().write_majority, 2);
        w.sets[0].nodes[1].replication_blocked = true;
        w.sets[0].nodes[2].replication_blocked = true;
        w.insert(0, 0, "test.c", vec![doc! {"_id": "z"}], false, t0)
            .unwrap();
        w.tick(t0);
        let z = w.sets[0].nodes[0].oplog.last().unwrap().id;
        assert!(w.sets[0].nodes[3].oplog.contains(&z) && w.sets[0].nodes[4].oplog.contains(&z));
        assert!(!w.sets[0].committed.iter().any(|e| e.id == z));
        w.sets[0].nodes[1].replication_blocked = false;
        w.tick(t0);
        assert!(w.sets[0].committed.iter().any(|e| e.id == z));
    }
}

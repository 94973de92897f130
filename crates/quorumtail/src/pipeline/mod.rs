//! One shard's pipeline: a tailer per member, the majority merge, and the emitter.
//!
//! ```text
//!  member a ─► tailer ─► [bounded] ─┐
//!  member b ─► tailer ─► [bounded] ─┼─► merge task: Merge::push ─► Committed ─► Emitter ─► sink
//!  member c ─► tailer ─► [bounded] ─┘        │         └──► Discarded: counted, logged, never sent
//!                 ▲                          │
//!                 └── resume target (watch) ◄┘  the watermark after each release
//! ```
//!
//! # Whole entries from one member, identities from the others
//!
//! The merge needs identities; only the emitter needs contents. With `[pipeline]
//! whole_entries = "one"` (the default) one member per shard streams whole entries and the
//! others stream the projection `{ts, t, h}`, so reading three members costs about one
//! read of the oplog plus ~30 bytes per entry per extra member. The merge releases an
//! entry once a quorum reported its identity AND a payload arrived
//! ([`Merge::require_payload`]). The member read whole is chosen and changed here:
//!
//! * at start, the first member that answers, then the primary as soon as one says so;
//! * at once when it goes down, is refused, lacks the resume point or is removed, or
//!   has passed the entry the release waits for without holding it (another branch);
//! * when the release has waited [`SWITCH_AFTER`] for a payload: the member furthest ahead
//!   among those that reported the waiting entry.
//!
//! A change restarts both members' streams from the watermark (the last released entry):
//! the new whole member re-sends the waiting entry first, nothing is skipped, and nothing
//! released is released again (the merge ignores reports at or below what it decided).
//! Failover in the middle of a change is the same case again: the next member is chosen.
//!
//! # Membership
//!
//! Which members are read, who votes and the quorum come from the replica set itself.
//! Every tailer reads the set's configuration after it connects and whenever hello's
//! `setVersion` changes (`replSetGetConfig`; `replSetGetStatus` without that privilege) and
//! sends it here with the name the member gives itself (hello `me`). The newest
//! configuration (config term, then version) wins:
//!
//! * every data-bearing member in it is read, hidden and delayed ones included (hello and
//!   `config.shards` never list them); a listed or discovered address is matched to a
//!   configured member by `me`, so one member is never read twice under two names, and a
//!   listed address that has not answered yet stays until it says who it is;
//! * members that left the configuration stop being read;
//! * only voters' reports count; the quorum is the set's `writeMajorityCount` unless
//!   `[[shards]] quorum` says otherwise (a lower one is warned about).
//!
//! Until a configuration arrives (or when no member may read it) the listed members are
//! read as voters with the quorum from the list. Whatever the membership, an entry is
//! released only once MongoDB's commit point covers it (`[pipeline] release`), so a wrong
//! membership can delay output but not emit a rolled-back write.
//!
//! Backpressure: `sink.send` waits when the sink is full, which stops this task from
//! reading the tailer channels, which stops the tailers. When the merge holds more than
//! `max_pending` unconfirmed entries (a stalled quorum), the channels of the members that
//! are ahead are set aside until the others catch up; memory stays bounded either way.

pub mod emit;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::raw_batch_cursor::RawBatch;
use quorumtail_merge::{CommitOutcome, CommitPoint, Event, Merge, NodeId, PushError, Report};
use quorumtail_oplog::{EntryId, Filter, OplogEntry, Timestamp};
use quorumtail_sink::{SinkInput, SinkSender};
use quorumtail_tailer::{
    pred, ConfigSource, ReadMode, ReplicaSetConfig, ResumeTarget, TailMsg, TailerConfig,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{StreamExt, StreamMap};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{KeyKind, Release, StartPosition, WholeEntries};
use emit::Emitter;
use stats::ShardStats;

/// A shard as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    /// Shard name (`config.shards._id`); records carry it.
    pub name: Arc<str>,
    /// The replica set name members must report, if known.
    pub replica_set: Option<String>,
    /// Data-bearing members, `host:port`.
    pub members: Vec<String>,
    /// Arbiters (vote, no oplog).
    pub arbiters: usize,
    /// Explicit quorum, if any.
    pub quorum: Option<usize>,
    /// The members come from `[[shards]]` (the operator can list missing ones) rather
    /// than from discovery or a stored membership.
    pub listed: bool,
}

/// What every shard pipeline shares.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Template for tailer settings (shard and node are filled in).
    pub tailer: TailerConfig,
    /// The filter.
    pub filter: Filter,
    /// Kafka key choice.
    pub key: KeyKind,
    /// The sink's input.
    pub sink: SinkSender,
    /// `[pipeline] max_pending`.
    pub max_pending: usize,
    /// `[pipeline] channel_batches`.
    pub channel_batches: usize,
    /// `[start] position` for shards without a checkpoint.
    pub start: StartPosition,
    /// `[pipeline] whole_entries`.
    pub whole_entries: WholeEntries,
    /// `[pipeline] release`.
    pub release: Release,
}

/// How long the release may wait for the whole entry a quorum already confirmed before
/// another member is read whole. Long enough that a member re-reading a backlog after a
/// change is not changed again; short next to an election.
pub const SWITCH_AFTER: Duration = Duration::from_secs(1);

/// Why a shard stopped for good. These are definite: the operator must act.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Too few members still hold the resume point: changes in between are gone.
    #[error(
        "shard {shard}: the resume point {target} is no longer in the oplog of {lacking}; only {holders} of {members} member(s) may still hold it and the quorum is {quorum}, so the changes after it cannot be read any more. Never skipping them, quorumtail stops this shard. Fix: re-snapshot the shard's collections, then reset its checkpoint (remove the \"{shard}\" entry from the checkpoint store) and set [start] position"
    )]
    ResumePointLost {
        /// Shard.
        shard: Arc<str>,
        /// The target.
        target: EntryId,
        /// Members lacking it, with their first entry.
        lacking: String,
        /// Members that may hold it.
        holders: usize,
        /// Members.
        members: usize,
        /// Quorum.
        quorum: usize,
    },
    /// Two members reported the same entry identity with different content.
    #[error("shard {shard}: members disagree on the content of entry {id} ({detail}); MongoDB never does this, so the data or a reader is corrupt. Stopped to avoid emitting either version")]
    Divergence {
        /// Shard.
        shard: Arc<str>,
        /// Entry.
        id: EntryId,
        /// Which members.
        detail: String,
    },
    /// An entry could not be read or encoded.
    #[error("shard {shard}: {detail}")]
    BadEntry {
        /// Shard.
        shard: Arc<str>,
        /// What.
        detail: String,
    },
    /// A member's stream went backwards.
    #[error("shard {shard}: {source}")]
    Stream {
        /// Shard.
        shard: Arc<str>,
        /// The merge's error.
        source: PushError,
    },
    /// The membership or quorum cannot work.
    #[error("shard {shard}: {detail}")]
    Quorum {
        /// Shard.
        shard: Arc<str>,
        /// What.
        detail: String,
    },
    /// The sink refused input (it stopped).
    #[error("shard {shard}: the sink stopped accepting records: {detail}")]
    Sink {
        /// Shard.
        shard: Arc<str>,
        /// What.
        detail: String,
    },
}

/// A raw entry kept alive by its batch, without copying.
#[derive(Clone, Debug)]
pub struct EntryRef {
    batch: Arc<RawBatch>,
    start: usize,
    len: usize,
}

impl EntryRef {
    fn doc(&self) -> Result<&bson::RawDocument, String> {
        let bytes = self
            .batch
            .as_raw_document()
            .as_bytes()
            .get(self.start..self.start + self.len)
            .ok_or("entry outside its batch")?;
        bson::RawDocument::from_bytes(bytes).map_err(|e| e.to_string())
    }
}

/// Per-member state the merge task keeps.
#[derive(Debug)]
struct Member {
    addr: String,
    info: stats::NodeStats,
    probe: Option<(Option<EntryId>, Option<EntryId>)>,
    lacks: Option<(ResumeTarget, Option<EntryId>)>,
    state: String,
    /// What this member should read (its tailer restarts when this changes).
    mode_tx: watch::Sender<ReadMode>,
    /// What its current stream holds (from `Started`).
    reading: Option<ReadMode>,
    /// Whether it said it is primary when it last connected.
    primary: bool,
    /// Whether its last answer reached the end of its oplog (an empty or partial batch):
    /// then what it lacks, it lacks because it is behind, not because it reads slower.
    at_end: bool,
    /// When its stream last delivered entries (or started).
    moved_at: Option<Instant>,
    /// What it calls itself (hello `me`), once it answered.
    me: Option<String>,
    /// Its reports count towards the quorum.
    voter: bool,
    /// Said once that its commit point ran ahead of its own newest entry.
    noted_commit_beyond: bool,
}

impl Member {
    fn healthy(&self) -> bool {
        self.state == "tailing" || self.state == "connecting"
    }
}

/// A member the shard should read.
#[derive(Debug)]
struct Desired {
    addr: String,
    voter: bool,
    hidden: bool,
}

/// Messages the coordinator sends a running shard.
#[derive(Debug)]
pub enum Control {
    /// The member list changed (discovery).
    Members(ShardSpec),
    /// The shard was removed from the cluster: finish what its members hold, then stop.
    Drain,
}

/// Runs one shard until `shutdown` or a definite error.
///
/// # Errors
/// [`ShardError`] for definite problems; the other shards keep running.
pub async fn run_shard(
    spec: ShardSpec,
    shared: Shared,
    checkpoint: Option<EntryId>,
    stats: Arc<ShardStats>,
    mut control: mpsc::Receiver<Control>,
    shutdown: CancellationToken,
) -> Result<(), ShardError> {
    let mut task = ShardTask::new(spec, shared, checkpoint, stats, &shutdown)?;
    let result: Result<(), ShardError> = async {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                Some(c) = control.recv() => task.control(c)?,
                Some((node, msg)) = task.streams.next(), if !task.streams.is_empty() => {
                    task.handle(node, msg)?;
                    task.check_quorum_reachable();
                }
            }
            task.flush().await?;
            if task.drained() {
                info!(shard = %task.shard, "removed shard drained: every member caught up and everything committed was emitted");
                return Ok(());
            }
        }
    }
    .await;
    task.tailers_stop.cancel();
    // The tailers shut their driver clients down before the runtime may go away; with
    // their receivers dropped, none waits on a full channel.
    let tailers = task.tailers.clone();
    tailers.close();
    drop(std::mem::take(&mut task.streams));
    task.paused.clear();
    if tokio::time::timeout(Duration::from_secs(10), tailers.wait())
        .await
        .is_err()
    {
        warn!(shard = %task.shard, "member tailers did not stop within 10 s; not waiting for them");
    }
    use std::sync::atomic::Ordering::Relaxed;
    match &result {
        Err(e) => {
            task.stats.failed.store(1, Relaxed);
            error!(shard = %task.shard, error = %e, "shard stopped");
        }
        Ok(()) => {
            task.stats.stopped.store(1, Relaxed);
            info!(shard = %task.shard, "shard pipeline stopped");
        }
    }
    result
}

struct ShardTask {
    shard: Arc<str>,
    spec: ShardSpec,
    shared: Shared,
    stats: Arc<ShardStats>,
    tailers_stop: CancellationToken,
    /// The member tailers' tasks, awaited when the shard stops.
    tailers: tokio_util::task::TaskTracker,
    engine: Option<Merge<EntryRef>>,
    quorum: usize,
    target_tx: watch::Sender<Option<ResumeTarget>>,
    members: BTreeMap<NodeId, Member>,
    streams: StreamMap<NodeId, ReceiverStream<TailMsg>>,
    paused: HashMap<NodeId, ReceiverStream<TailMsg>>,
    emitter: Emitter,
    out: Vec<SinkInput>,
    /// Set once the shard was removed: members that returned an empty batch since.
    draining: Option<std::collections::HashSet<NodeId>>,
    /// Whether enough members are being tailed to reach the quorum (logged on change);
    /// `None` while starting, before a quorum answered or every member answered or failed.
    quorum_reachable: Option<bool>,
    /// `whole_entries = "one"`: only `whole` reads whole entries.
    key_only: bool,
    /// The member read whole (key-only mode).
    whole: Option<NodeId>,
    /// Since when the release waits for a payload (or since the last change of `whole`).
    waiting_since: Option<Instant>,
    /// The newest replica set configuration a member reported: it decides which members
    /// are read, who votes and the quorum (see "Membership" in the module docs).
    live: Option<ReplicaSetConfig>,
    /// Said once that an explicit quorum is below the replica set's write majority.
    noted_low_quorum: bool,
    /// Since when an entry a quorum holds waits for the commit point.
    commit_wait_since: Option<Instant>,
}

impl ShardTask {
    fn new(
        spec: ShardSpec,
        shared: Shared,
        checkpoint: Option<EntryId>,
        stats: Arc<ShardStats>,
        shutdown: &CancellationToken,
    ) -> Result<Self, ShardError> {
        let shard = spec.name.clone();
        let quorum = resolve(&spec)?;
        let task_key_only = shared.whole_entries == WholeEntries::One;
        let (target_tx, _) = watch::channel::<Option<ResumeTarget>>(None);
        let skip_orphans = match (checkpoint, shared.start) {
            (None, StartPosition::After(ts)) => Some(ts),
            _ => None,
        };
        let emitter = Emitter::new(
            shard.clone(),
            shared.filter.clone(),
            shared.key,
            stats.clone(),
            skip_orphans,
        );
        // Not reachable until a quorum of members answered (see `check_quorum_reachable`).
        stats
            .quorum_reachable
            .store(0, std::sync::atomic::Ordering::Relaxed);
        stats
            .quorum
            .store(quorum as u64, std::sync::atomic::Ordering::Relaxed);
        let mut task = ShardTask {
            shard: shard.clone(),
            spec: spec.clone(),
            shared,
            stats,
            tailers_stop: shutdown.child_token(),
            tailers: tokio_util::task::TaskTracker::new(),
            engine: None,
            quorum,
            target_tx,
            members: BTreeMap::new(),
            streams: StreamMap::new(),
            paused: HashMap::new(),
            emitter,
            out: Vec::with_capacity(1024),
            draining: None,
            quorum_reachable: None,
            key_only: task_key_only,
            whole: None,
            waiting_since: None,
            live: None,
            noted_low_quorum: false,
            commit_wait_since: None,
        };
        task.stats.set_quorum_source(if spec.quorum.is_some() {
            "static (explicit quorum)".into()
        } else {
            "static (member list; until a member reports the replica set configuration)".into()
        });
        match (checkpoint, task.shared.start) {
            (Some(cp), _) => {
                info!(%shard, checkpoint = %cp, "resuming from checkpoint");
                task.engine = Some(new_engine(
                    &shard,
                    spec.members.len(),
                    quorum,
                    Some(cp),
                    task.key_only,
                    task.shared.release,
                )?);
                task.target_tx.send_replace(Some(ResumeTarget {
                    id: cp,
                    exact: true,
                }));
            }
            (None, StartPosition::After(ts)) => {
                let id = EntryId::at(ts);
                info!(%shard, after = %ts, "no checkpoint: starting after the configured position");
                task.engine = Some(new_engine(
                    &shard,
                    spec.members.len(),
                    quorum,
                    Some(id),
                    task.key_only,
                    task.shared.release,
                )?);
                task.target_tx
                    .send_replace(Some(ResumeTarget { id, exact: false }));
            }
            (None, _) => {}
        }
        for (i, addr) in spec.members.iter().enumerate() {
            task.spawn_member(addr, NodeId(i as u8));
        }
        info!(%shard, members = ?spec.members, quorum, "shard pipeline started");
        Ok(task)
    }

    fn spawn_member(&mut self, addr: &str, id: NodeId) {
        let (tx, rx) = mpsc::channel(self.shared.channel_batches.max(1));
        let mut cfg = self.shared.tailer.clone();
        cfg.shard = self.shard.clone();
        cfg.node = addr.to_owned();
        cfg.replica_set = self.spec.replica_set.clone();
        let token = self.tailers_stop.child_token();
        // Key-only members start with identities; the member read whole is chosen when
        // the first ones answer (see the module docs).
        let mode = if self.key_only {
            ReadMode::Identity
        } else {
            ReadMode::Whole
        };
        let (mode_tx, mode_rx) = watch::channel(mode);
        self.tailers.spawn(quorumtail_tailer::run(
            cfg,
            self.target_tx.subscribe(),
            mode_rx,
            tx,
            token,
        ));
        self.streams.insert(id, ReceiverStream::new(rx));
        let info = stats::NodeStats {
            state: "connecting".into(),
            ..Default::default()
        };
        self.stats.set_node(addr, info.clone());
        self.members.insert(
            id,
            Member {
                addr: addr.to_owned(),
                info,
                probe: None,
                lacks: None,
                state: "connecting".into(),
                mode_tx,
                reading: None,
                primary: false,
                at_end: false,
                moved_at: None,
                me: None,
                voter: true,
                noted_commit_beyond: false,
            },
        );
    }

    /// Reads whole entries from `to` from now on (key-only mode); both streams restart
    /// from the watermark.
    fn switch_whole(&mut self, to: NodeId, why: &str) {
        if self.whole == Some(to) || !self.members.contains_key(&to) {
            return;
        }
        let from = self.whole.replace(to);
        let from_addr = from
            .and_then(|f| self.members.get(&f))
            .map(|m| m.addr.clone());
        if let Some(m) = from.and_then(|f| self.members.get(&f)) {
            m.mode_tx.send_replace(ReadMode::Identity);
        }
        let Some(m) = self.members.get(&to) else {
            return;
        };
        m.mode_tx.send_replace(ReadMode::Whole);
        // It must be read now even if the backlog bound had set it aside.
        if let Some(s) = self.paused.remove(&to) {
            self.streams.insert(to, s);
        }
        self.waiting_since = None;
        self.stats
            .whole_switches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match from_addr {
            Some(f) => {
                info!(shard = %self.shard, from = %f, to = %m.addr, reason = why, "reading whole entries from another member")
            }
            None => {
                info!(shard = %self.shard, node = %m.addr, reason = why, "reading whole entries from this member, identities from the others")
            }
        }
    }

    /// The healthy member furthest ahead among `among` (primary first on a tie).
    fn best_member(&self, among: impl Fn(NodeId) -> bool) -> Option<NodeId> {
        self.members
            .iter()
            .filter(|(id, m)| among(**id) && m.healthy())
            .max_by_key(|(id, m)| (m.info.last_ts, m.primary, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Key-only mode: keeps the member read whole able to deliver what the release needs
    /// (see the module docs for the rules).
    fn check_whole(&mut self) {
        if !self.key_only {
            return;
        }
        let whole = self
            .whole
            .and_then(|w| self.members.get(&w).map(|m| (w, m)));
        let Some((w, wm)) = whole else {
            if let Some(b) = self.best_member(|_| true) {
                self.switch_whole(b, "no member was read whole");
            }
            return;
        };
        if !wm.healthy() {
            let why = format!("{} is {}", wm.addr, wm.state);
            if let Some(b) = self.best_member(|id| id != w) {
                self.switch_whole(b, &why);
            }
            return;
        }
        let Some(e) = self.engine.as_ref() else {
            return;
        };
        let Some((waiting, reporters)) = e.awaiting_payload() else {
            self.waiting_since = None;
            return;
        };
        let passed = !reporters.contains(w)
            && wm.reading == Some(ReadMode::Whole)
            && e.node_position(w).is_some_and(|p| p.ts >= waiting.ts);
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        // A member read whole that is still working through a backlog (full batches) is
        // slower than the identity readers, not behind: it is left alone. It is replaced
        // when it is at the end of its oplog without the entry (replication lag) or has
        // delivered nothing for a while (a hung connection), for SWITCH_AFTER.
        let stalled = wm.moved_at.is_none_or(|t| t.elapsed() >= SWITCH_AFTER);
        if passed || ((wm.at_end || stalled) && since.elapsed() >= SWITCH_AFTER) {
            let why =
                if passed {
                    format!(
                        "{} passed entry {waiting} without holding it (another branch)",
                        wm.addr
                    )
                } else {
                    format!(
                    "entry {waiting} is confirmed by a quorum but {} has not sent it for {:?} ({})",
                    wm.addr,
                    since.elapsed(),
                    if wm.at_end { "it is behind" } else { "it delivers nothing" }
                )
                };
            match self.best_member(|id| id != w && reporters.contains(id)) {
                Some(b) => self.switch_whole(b, &why),
                None => self.waiting_since = Some(Instant::now()),
            }
        }
    }

    fn quorum_err(&self, e: impl std::fmt::Display) -> ShardError {
        ShardError::Quorum {
            shard: self.shard.clone(),
            detail: e.to_string(),
        }
    }

    /// Membership changes from discovery: stop removed members' tailers, start new ones,
    /// recompute the quorum.
    /// Says once, loudly, when fewer members than the quorum are being tailed (nothing can
    /// be emitted then), and again when enough are back.
    fn check_quorum_reachable(&mut self) {
        // Only members that answered count: a member still connecting for the first time
        // may never answer. Until a quorum answered or every member had its first answer
        // or failure, the shard is starting (neither reachable nor reported unreachable).
        let out: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.voter && m.state != "tailing")
            .collect();
        let tailing = self.members.values().filter(|m| m.voter).count() - out.len();
        let reachable = tailing >= self.quorum;
        let starting = self.quorum_reachable.is_none()
            && self.members.values().any(|m| m.state == "connecting");
        if (!reachable && starting) || Some(reachable) == self.quorum_reachable {
            return;
        }
        self.quorum_reachable = Some(reachable);
        self.stats
            .quorum_reachable
            .store(u64::from(reachable), std::sync::atomic::Ordering::Relaxed);
        if reachable {
            info!(shard = %self.shard, tailing, quorum = self.quorum, "quorum reachable: enough members answer to confirm entries");
        } else {
            let down: Vec<String> = out
                .iter()
                .map(|m| format!("{} ({})", m.addr, m.state))
                .collect();
            warn!(shard = %self.shard, tailing, quorum = self.quorum, members_out = ?down, "quorum unreachable: fewer members than the quorum are being read, so nothing can be confirmed; holding back until enough return");
        }
    }

    /// A removed shard is finished once a quorum of members reported an empty batch (they
    /// hold nothing newer) and the merge holds nothing unconfirmed.
    fn drained(&self) -> bool {
        match (&self.draining, &self.engine) {
            (Some(idle), Some(e)) => idle.len() >= self.quorum && e.pending_len() == 0,
            (Some(_), None) => true,
            _ => false,
        }
    }

    fn control(&mut self, c: Control) -> Result<(), ShardError> {
        let new_spec = match c {
            Control::Members(s) => s,
            Control::Drain => {
                info!(shard = %self.shard, "shard removed from the cluster: draining before stopping");
                self.draining = Some(Default::default());
                return Ok(());
            }
        };
        if self.live.is_some() {
            // The replica set's own configuration decides the members; the new list only
            // changes the seeds and an explicit quorum.
            self.spec = new_spec;
            self.reconcile()?;
            return self.drain();
        }
        let new_q = resolve(&new_spec)?;
        let desired: Vec<Desired> = new_spec
            .members
            .iter()
            .map(|a| Desired {
                addr: a.clone(),
                voter: true,
                hidden: false,
            })
            .collect();
        self.spec = new_spec;
        self.apply_membership(desired, new_q)?;
        self.drain()
    }

    /// A member reported the replica set's configuration: the newest one (config term,
    /// then version) is adopted.
    fn on_config(&mut self, node: NodeId, c: ReplicaSetConfig) -> Result<(), ShardError> {
        if let Some(expected) = &self.spec.replica_set {
            if &c.set != expected {
                warn!(shard = %self.shard, set = %c.set, expected = %expected, "member reported the configuration of another replica set; ignored");
                return Ok(());
            }
        }
        if let Some(m) = self.members.get_mut(&node) {
            if c.me.is_some() {
                m.me.clone_from(&c.me);
                m.info.me.clone_from(&c.me);
            }
        }
        if self.live.as_ref().is_none_or(|l| c.newer_than(l)) {
            let (voters, non_voters, arbiters) = c.voting();
            info!(shard = %self.shard, version = c.version, term = c.term, voters, non_voters, arbiters, hidden = c.members.iter().filter(|m| m.hidden).count(), write_majority = c.write_majority(), "replica set configuration");
            self.live = Some(c);
        }
        self.reconcile()
    }

    /// Brings the tailed members, their votes and the quorum in line with the replica
    /// set's configuration (see "Membership" in the module docs).
    fn reconcile(&mut self) -> Result<(), ShardError> {
        let Some(live) = self.live.clone() else {
            return Ok(());
        };
        let seeds = &self.spec.members;
        let mut desired: Vec<Desired> = Vec::new();
        let mut chosen_ids = std::collections::HashSet::new();
        for m in live.data_bearing() {
            let answered = self
                .members
                .iter()
                .filter(|(_, x)| x.me.as_deref() == Some(m.host.as_str()))
                .min_by_key(|(id, x)| (!seeds.contains(&x.addr), **id))
                .map(|(id, _)| *id);
            let chosen = answered.or_else(|| {
                self.members
                    .iter()
                    .find(|(_, x)| x.me.is_none() && x.addr == m.host)
                    .map(|(id, _)| *id)
            });
            let addr = match chosen {
                Some(id) => {
                    chosen_ids.insert(id);
                    self.members[&id].addr.clone()
                }
                None => m.host.clone(),
            };
            if !desired.iter().any(|d| d.addr == addr) {
                desired.push(Desired {
                    addr,
                    voter: m.voter,
                    hidden: m.hidden,
                });
            }
        }
        // Listed members that have not answered yet may be other names of configured
        // members: they stay until they say who they are (they report nothing before).
        for (id, x) in &self.members {
            if x.me.is_none()
                && !chosen_ids.contains(id)
                && !desired.iter().any(|d| d.addr == x.addr)
            {
                desired.push(Desired {
                    addr: x.addr.clone(),
                    voter: true,
                    hidden: false,
                });
            }
        }
        let write_majority = live.write_majority();
        let quorum = match self.spec.quorum {
            Some(q) => {
                if q < write_majority && !self.noted_low_quorum {
                    self.noted_low_quorum = true;
                    warn!(shard = %self.shard, quorum = q, write_majority, "the configured quorum is below the replica set's write majority: with [pipeline] release = \"quorum\" entries MongoDB later rolls back can be emitted");
                }
                q
            }
            None => write_majority,
        };
        let missing: Vec<&str> = desired
            .iter()
            .filter(|d| !self.members.values().any(|m| m.addr == d.addr))
            .map(|d| d.addr.as_str())
            .collect();
        if !missing.is_empty() {
            if self.spec.listed {
                warn!(shard = %self.shard, members = ?missing, "the replica set configuration has members that [[shards]] does not list (hidden or delayed members, or members added since): reading them too; list them to silence this");
            } else {
                info!(shard = %self.shard, members = ?missing, "reading members of the replica set configuration that discovery does not list (hidden or delayed members, or members added since)");
            }
        }
        self.stats.set_quorum_source(match live.source {
            ConfigSource::GetConfig => format!(
                "replica set config v{} term {}{}",
                live.version,
                live.term,
                if self.spec.quorum.is_some() {
                    ", explicit quorum"
                } else {
                    ""
                }
            ),
            ConfigSource::GetStatus => {
                "replica set status (no replSetGetConfig privilege: votes unknown)".into()
            }
        });
        self.stats
            .arbiters
            .store(live.voting().2 as u64, std::sync::atomic::Ordering::Relaxed);
        self.apply_membership(desired, quorum)
    }

    /// Starts and stops tailers so that exactly `desired` is read, sets who votes and the
    /// quorum.
    fn apply_membership(&mut self, desired: Vec<Desired>, quorum: usize) -> Result<(), ShardError> {
        let before: Vec<(String, bool)> = self
            .members
            .values()
            .map(|m| (m.addr.clone(), m.voter))
            .collect();
        let removed: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| !desired.iter().any(|d| d.addr == m.addr))
            .map(|(id, _)| *id)
            .collect();
        for id in removed {
            if let Some(m) = self.members.remove(&id) {
                info!(shard = %self.shard, node = %m.addr, "member removed: stopping its tailer");
                self.stats.remove_node(&m.addr);
            }
            // Dropping the receiver ends the tailer (its sends fail).
            self.streams.remove(&id);
            self.paused.remove(&id);
            if let Some(e) = self.engine.as_mut() {
                e.remove_node(id);
            }
        }
        for d in &desired {
            if !self.members.values().any(|m| m.addr == d.addr) {
                let id = match self.engine.as_mut() {
                    Some(e) => e.add_node().map_err(|e| ShardError::Quorum {
                        shard: self.shard.clone(),
                        detail: e.to_string(),
                    })?,
                    None => (0..64u8)
                        .map(NodeId)
                        .find(|i| !self.members.contains_key(i))
                        .ok_or_else(|| self.quorum_err("too many members"))?,
                };
                info!(shard = %self.shard, node = %d.addr, voter = d.voter, hidden = d.hidden, "member added: starting its tailer");
                self.spawn_member(&d.addr, id);
            }
            let id = self
                .members
                .iter()
                .find(|(_, m)| m.addr == d.addr)
                .map(|(id, _)| *id);
            if let Some(id) = id {
                if let Some(m) = self.members.get_mut(&id) {
                    m.voter = d.voter;
                    m.info.voter = d.voter;
                    m.info.hidden = d.hidden;
                    self.stats.set_node(&m.addr, m.info.clone());
                }
                if let Some(e) = self.engine.as_mut() {
                    e.set_voter(id, d.voter);
                }
            }
        }
        let voters = self.members.values().filter(|m| m.voter).count();
        let non_voters = self.members.len() - voters;
        quorumtail_merge::resolve_voting_quorum(
            quorumtail_merge::Voting {
                data_bearing_voters: voters,
                non_voters,
                arbiters: 0,
            },
            Some(quorum),
        )
        .map_err(|e| self.quorum_err(e))?;
        if let Some(e) = self.engine.as_mut() {
            e.set_quorum(quorum).map_err(|e| ShardError::Quorum {
                shard: self.shard.clone(),
                detail: e.to_string(),
            })?;
        }
        let after: Vec<(String, bool)> = self
            .members
            .values()
            .map(|m| (m.addr.clone(), m.voter))
            .collect();
        if before != after || self.quorum != quorum {
            info!(shard = %self.shard, before = ?before, after = ?after, quorum_before = self.quorum, quorum_after = quorum, "shard membership changed (member, voter)");
        }
        self.quorum = quorum;
        self.stats
            .quorum
            .store(quorum as u64, std::sync::atomic::Ordering::Relaxed);
        self.check_whole();
        Ok(())
    }

    fn handle(&mut self, node: NodeId, msg: TailMsg) -> Result<(), ShardError> {
        let result = self.handle_msg(node, msg);
        self.check_whole();
        if let Some(m) = self.members.get_mut(&node) {
            m.info.state.clone_from(&m.state);
            self.stats.set_node(&m.addr, m.info.clone());
        }
        if let Some(e) = self.engine.as_ref() {
            use std::sync::atomic::Ordering::Relaxed;
            let waiting = e.awaiting_commit_point().is_some();
            match (waiting, self.commit_wait_since) {
                (true, None) => {
                    self.commit_wait_since = Some(Instant::now());
                    self.stats.commit_waits.fetch_add(1, Relaxed);
                }
                (false, Some(t)) => {
                    self.commit_wait_since = None;
                    self.stats
                        .commit_wait_micros
                        .fetch_add(t.elapsed().as_micros() as u64, Relaxed);
                }
                _ => {}
            }
            self.stats
                .awaiting_commit_point
                .store(u64::from(waiting), Relaxed);
            self.stats.pending.store(e.pending_len() as u64, Relaxed);
            self.stats.quorum.store(e.quorum() as u64, Relaxed);
            if let Some(w) = e.watermark() {
                self.stats.watermark.store(w.ts.as_u64(), Relaxed);
            }
        }
        result
    }

    fn handle_msg(&mut self, node: NodeId, msg: TailMsg) -> Result<(), ShardError> {
        let shard = self.shard.clone();
        let Some(member) = self.members.get_mut(&node) else {
            return Ok(());
        };
        match msg {
            TailMsg::Probe {
                oldest,
                newest,
                primary,
                me,
            } => {
                member.probe = Some((oldest, newest));
                member.primary = primary;
                if me.is_some() && member.me != me {
                    member.me.clone_from(&me);
                    member.info.me = me;
                    // Another tailed address may name the same member: read it once.
                    self.reconcile()?;
                }
                let Some(member) = self.members.get_mut(&node) else {
                    return Ok(());
                };
                member.info.oldest_ts = oldest.map(|o| o.ts);
                if member.info.last_ts.is_none() {
                    member.info.last_ts = newest.map(|n| n.ts);
                }
                if self.key_only {
                    let whole_is_primary = self
                        .whole
                        .and_then(|w| self.members.get(&w))
                        .is_some_and(|m| m.primary);
                    if self.whole.is_none() {
                        self.switch_whole(node, "first member to answer");
                    } else if primary && !whole_is_primary {
                        self.switch_whole(node, "the primary answered");
                    }
                }

                if self.engine.is_none() {
                    if let Some((target, start)) =
                        decide_start(&self.members, self.quorum, self.shared.start)
                    {
                        info!(%shard, from = %target.id, "no checkpoint: start position chosen from the members' oplogs");
                        let n = self
                            .members
                            .keys()
                            .map(|k| k.0 as usize + 1)
                            .max()
                            .unwrap_or(0);
                        let mut engine =
                            new_engine(&shard, n, 1, start, self.key_only, self.shared.release)?;
                        for i in 0..n as u8 {
                            match self.members.get(&NodeId(i)) {
                                None => engine.remove_node(NodeId(i)),
                                Some(m) => engine.set_voter(NodeId(i), m.voter),
                            }
                        }
                        engine
                            .set_quorum(self.quorum)
                            .map_err(|e| self.quorum_err(e))?;
                        self.engine = Some(engine);
                        // A transaction may straddle the chosen start: its beginning is
                        // not ours to emit, so its end is skipped rather than an error.
                        let skip_before = match self.shared.start {
                            StartPosition::Earliest => target.id.ts,
                            _ => Timestamp::new(
                                target.id.ts.time,
                                target.id.ts.increment.saturating_add(1),
                            ),
                        };
                        self.emitter = Emitter::new(
                            shard.clone(),
                            self.shared.filter.clone(),
                            self.shared.key,
                            self.stats.clone(),
                            Some(skip_before),
                        );
                        self.target_tx.send_replace(Some(target));
                    }
                }
            }
            TailMsg::Started { mode, .. } => {
                member.reading = Some(mode);
                member.at_end = false;
                member.moved_at = Some(Instant::now());
                member.info.reading = mode.as_str().into();
                member.info.starts += 1;
                self.stats
                    .tailer_starts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                member.lacks = None;
                member.state = "tailing".into();
                if let Some(e) = self.engine.as_mut() {
                    e.node_reset(node);
                }
            }
            TailMsg::Idle => {
                member.at_end = true;
                member.info.last_seen_unix_ms = now_ms();
                member.state = "tailing".into();
                if let Some(idle) = self.draining.as_mut() {
                    idle.insert(node);
                }
            }
            TailMsg::Down { reason } => {
                member.info.interruptions += 1;
                member.state = format!("down: {reason}");
            }
            TailMsg::Refused { reason } => {
                let state = format!("refused: {reason}");
                // Retries repeat the refusal: say it once, until something changes.
                if member.state != state {
                    error!(%shard, node = %member.addr, %reason, "member refused");
                }
                member.info.interruptions += 1;
                member.state = state;
            }
            TailMsg::Lacks { target, first } => {
                warn!(%shard, node = %member.addr, target = %target.id, first = ?first.map(|f| f.to_string()), "member no longer holds the resume point");
                member.lacks = Some((target, first));
                member.info.interruptions += 1;
                member.state = "lacks the resume point".into();
                let lacking: Vec<&Member> = self
                    .members
                    .values()
                    .filter(|m| m.lacks.is_some_and(|(t, _)| t == target))
                    .collect();
                let holders = self
                    .members
                    .values()
                    .filter(|m| m.voter && !m.lacks.is_some_and(|(t, _)| t == target))
                    .count();
                if holders < self.quorum {
                    return Err(ShardError::ResumePointLost {
                        shard,
                        target: target.id,
                        lacking: lacking
                            .iter()
                            .map(|m| match m.lacks.and_then(|(_, f)| f) {
                                Some(f) => {
                                    format!("{} (its oldest entry after it: {})", m.addr, f.ts)
                                }
                                None => m.addr.clone(),
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                        holders,
                        members: self.members.len(),
                        quorum: self.quorum,
                    });
                }
            }
            TailMsg::CommitPoint(r) => {
                if r.committed.ts > r.last_applied.ts && !member.noted_commit_beyond {
                    member.noted_commit_beyond = true;
                    warn!(%shard, node = %member.addr, commit_point = %r.committed, newest_entry = %r.last_applied, "member reports a commit point beyond its own newest entry; it confirms nothing past that entry");
                }
                let Some(e) = self.engine.as_mut() else {
                    return Ok(());
                };
                let outcome = e
                    .commit_point(
                        node,
                        CommitPoint {
                            committed: r.committed,
                            last_applied: r.last_applied,
                        },
                    )
                    .map_err(|source| ShardError::Stream {
                        shard: shard.clone(),
                        source,
                    })?;
                if outcome == CommitOutcome::NotOnStream {
                    tracing::debug!(%shard, node = %member.addr, newest_entry = %r.last_applied, "commit point reading dropped: the member's stream passed its newest entry without holding it");
                }
                member.info.commit_point_ts = e.node_commit_point(node).map(|c| c.ts);
                self.drain()?;
            }
            TailMsg::Config(c) => self.on_config(node, *c)?,
            TailMsg::Batch(batch) => {
                member.state = "tailing".into();
                if let Some(idle) = self.draining.as_mut() {
                    idle.remove(&node);
                }
                let addr = member.addr.clone();
                member.info.last_seen_unix_ms = now_ms();
                let last_ts = &mut member.info.last_ts;
                let Some(e) = self.engine.as_mut() else {
                    return Ok(());
                };
                let reply = batch.shared();
                let whole = member.reading != Some(ReadMode::Identity);
                let reply_bytes = reply.as_raw_document().as_bytes().len();
                member.info.bytes_read += reply_bytes as u64;
                member.moved_at = Some(Instant::now());
                let full_batch = self.shared.tailer.batch_size as usize;
                let mut entries = 0usize;
                let base = reply.as_raw_document().as_bytes().as_ptr() as usize;
                let bad = |detail: String| ShardError::BadEntry {
                    shard: shard.clone(),
                    detail: format!("member {addr}: {detail}"),
                };
                for doc in batch.entries().map_err(bad)? {
                    let doc = doc.map_err(bad)?;
                    let report = if whole {
                        let parsed = OplogEntry::parse(doc).map_err(|e| bad(e.to_string()))?;
                        let start = doc.as_bytes().as_ptr() as usize - base;
                        Report {
                            id: parsed.id(),
                            digest: Some(parsed.digest()),
                            payload: Some(EntryRef {
                                batch: reply.clone(),
                                start,
                                len: doc.as_bytes().len(),
                            }),
                        }
                    } else {
                        Report {
                            id: OplogEntry::parse_id(doc).map_err(|e| bad(e.to_string()))?,
                            digest: None,
                            payload: None,
                        }
                    };
                    *last_ts = (*last_ts).max(Some(report.id.ts));
                    entries += 1;
                    e.push(node, report).map_err(|source| ShardError::Stream {
                        shard: shard.clone(),
                        source,
                    })?;
                }
                if let Some(m) = self.members.get_mut(&node) {
                    // A partial batch: the cursor reached the end of the member's oplog.
                    m.at_end = entries < full_batch && reply_bytes < 8 << 20;
                }
                self.drain()?;
                self.backpressure();
            }
        }
        Ok(())
    }

    /// Emits released events and publishes the new watermark as the resume target.
    fn drain(&mut self) -> Result<(), ShardError> {
        let Some(e) = self.engine.as_mut() else {
            return Ok(());
        };
        drain_events(
            &self.shard,
            e,
            &mut self.emitter,
            &self.stats,
            &mut self.out,
        )?;
        if let Some(w) = e.watermark() {
            if w.term.is_some() || w.hash.is_some() {
                let new = Some(ResumeTarget { id: w, exact: true });
                self.target_tx.send_if_modified(|t| {
                    let changed = *t != new;
                    *t = new;
                    changed
                });
            }
        }
        Ok(())
    }

    /// Sets aside members that are ahead while the merge backlog is over its bound.
    fn backpressure(&mut self) {
        let Some(e) = self.engine.as_ref() else {
            return;
        };
        if e.pending_len() > self.shared.max_pending {
            // The member read whole is never set aside while the release waits for its
            // content: that would stall the release that frees the backlog.
            let keep = self
                .whole
                .filter(|_| self.key_only && e.awaiting_payload().is_some());
            for n in e.nodes_ahead().iter().filter(|n| Some(*n) != keep) {
                if let Some(s) = self.streams.remove(&n) {
                    let addr = self.members.get(&n).map(|m| m.addr.as_str()).unwrap_or("?");
                    warn!(shard = %self.shard, node = %addr, pending = e.pending_len(), "merge backlog full: pausing a member that is ahead of the quorum");
                    self.paused.insert(n, s);
                }
            }
        } else if !self.paused.is_empty() && e.pending_len() <= self.shared.max_pending / 2 {
            for (n, s) in self.paused.drain() {
                self.streams.insert(n, s);
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ShardError> {
        for input in self.out.drain(..) {
            self.shared
                .sink
                .send(input)
                .await
                .map_err(|e| ShardError::Sink {
                    shard: self.shard.clone(),
                    detail: e.to_string(),
                })?;
        }
        Ok(())
    }
}

fn resolve(spec: &ShardSpec) -> Result<usize, ShardError> {
    quorumtail_merge::resolve_quorum(spec.members.len(), spec.arbiters, spec.quorum)
        .map(|q| q.quorum)
        .map_err(|e| ShardError::Quorum {
            shard: spec.name.clone(),
            detail: e.to_string(),
        })
}

fn new_engine(
    shard: &Arc<str>,
    nodes: usize,
    quorum: usize,
    start: Option<EntryId>,
    key_only: bool,
    release: Release,
) -> Result<Merge<EntryRef>, ShardError> {
    let mut engine = Merge::new(nodes, quorum, start).map_err(|e| ShardError::Quorum {
        shard: shard.clone(),
        detail: e.to_string(),
    })?;
    if key_only {
        engine = engine.require_payload();
    }
    if release == Release::CommitPoint {
        engine = engine.require_commit_point();
    }
    Ok(engine)
}

/// With `q` probes in, picks the start for a shard without a checkpoint:
/// `latest`: the q-th newest member's newest entry (held by at least q members once they
/// catch up); `earliest`: the q-th largest oldest entry (the oldest entry a quorum still
/// holds), emitted itself.
fn decide_start(
    members: &BTreeMap<NodeId, Member>,
    q: usize,
    pos: StartPosition,
) -> Option<(ResumeTarget, Option<EntryId>)> {
    let probes: Vec<(Option<EntryId>, Option<EntryId>)> =
        members.values().filter_map(|m| m.probe).collect();
    if probes.len() < q {
        return None;
    }
    match pos {
        StartPosition::Latest => {
            let mut newest: Vec<EntryId> = probes.iter().filter_map(|p| p.1).collect();
            if newest.len() < q {
                return None;
            }
            newest.sort_by(|a, b| b.cmp(a));
            let t = newest[q - 1];
            Some((ResumeTarget { id: t, exact: true }, Some(t)))
        }
        StartPosition::Earliest => {
            let mut oldest: Vec<EntryId> = probes.iter().filter_map(|p| p.0).collect();
            if oldest.len() < q {
                return None;
            }
            oldest.sort_by(|a, b| b.cmp(a));
            let t = oldest[q - 1];
            Some((
                ResumeTarget { id: t, exact: true },
                Some(EntryId::at(pred(t.ts))),
            ))
        }
        StartPosition::After(_) => None,
    }
}

fn drain_events(
    shard: &Arc<str>,
    engine: &mut Merge<EntryRef>,
    emitter: &mut Emitter,
    stats: &ShardStats,
    out: &mut Vec<SinkInput>,
) -> Result<(), ShardError> {
    use std::sync::atomic::Ordering::Relaxed;
    // Discards come in runs (a rollback); one log line per run.
    let mut discarded: Option<(EntryId, EntryId, u64, quorumtail_merge::NodeSet)> = None;
    for ev in engine.drain_events() {
        match ev {
            Event::Committed { id, payload, .. } => {
                stats.committed.fetch_add(1, Relaxed);
                let bad = |detail: String| ShardError::BadEntry {
                    shard: shard.clone(),
                    detail: format!("committed entry {id}: {detail}"),
                };
                let p = payload.ok_or_else(|| bad("committed without content".into()))?;
                let entry =
                    OplogEntry::parse(p.doc().map_err(bad)?).map_err(|e| bad(e.to_string()))?;
                emitter
                    .committed(&entry, out)
                    .map_err(|e| ShardError::BadEntry {
                        shard: shard.clone(),
                        detail: e.to_string(),
                    })?;
            }
            Event::Discarded {
                id,
                reporters,
                payload,
            } => {
                stats.discarded.fetch_add(1, Relaxed);
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let what = payload
                        .and_then(|p| {
                            p.doc()
                                .ok()
                                .and_then(|d| OplogEntry::parse(d).ok())
                                .map(|e| format!("{} {}", e.op.as_str(), e.ns))
                        })
                        .unwrap_or_default();
                    tracing::debug!(%shard, entry = %id, op = %what, members = ?reporters, "discarded");
                }
                discarded = Some(match discarded {
                    None => (id, id, 1, reporters),
                    Some((first, _, n, held)) => (first, id, n + 1, held.union(reporters)),
                });
            }
            Event::Divergence {
                id,
                agreeing,
                node,
                expected,
                found,
            } => {
                return Err(ShardError::Divergence {
                    shard: shard.clone(),
                    id,
                    detail: format!(
                        "members {agreeing:?} have digest {expected:x}, member {} has {found:x}",
                        node.0
                    ),
                });
            }
        }
    }
    if let Some((first, last, n, held)) = discarded {
        warn!(%shard, count = n, first = %first, last = %last, held_by = ?held, "discarded entries no quorum holds (rolled back or seen by a minority only); none is emitted");
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

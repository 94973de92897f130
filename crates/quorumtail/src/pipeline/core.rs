//! The shard's decisions, as a synchronous state machine: messages in, actions out, no
//! tasks, no channels, no clock reads.
//!
//! ```text
//!   Input::Member(node, MemberMsg) ─┐                  ┌─► Action::Start / Stop / SetMode (tailers)
//!   Input::Members(spec), Drain    ─┼─► ShardCore ─────┼─► Action::Pause / Resume         (backpressure)
//!   Input::Tick                    ─┘   │  owns Merge  ├─► Action::Target                 (resume point)
//!            (each with a `Now`)        │              ├─► Action::Release(Event)         (to the emitter)
//!                                       ▼              ├─► Action::Note                   (logs)
//!                           ShardStats (counters)      └─► Action::Fail(ShardError)       (definite)
//! ```
//!
//! The async task in [`super`] owns the I/O: it spawns the member tailers, reads their
//! channels, decodes raw batches into merge [`Report`]s, turns released entries into sink
//! inputs ([`super::emit`]) and sends them. Everything it must *decide* is decided here,
//! so each rule is unit-tested alone and the whole is property-tested against a model of a
//! replica set. The caller carries out the actions of one step in order, before the next
//! input; after [`Action::Fail`] it stops.
//!
//! # What the core owns, and where
//!
//! * **The merge engine** ([`Merge`]): every member's reports go in; committed and
//!   discarded entries come out as [`Action::Release`], in order, once each; after each
//!   release the watermark becomes the resume target ([`Action::Target`]). A divergence
//!   (two contents for one entry) fails the shard.
//! * **The start position** of a shard without a checkpoint ([`decide_start`], in
//!   `rules.rs`): once a quorum of members reported their oldest and newest entries,
//!   `latest` starts after the quorum-th newest entry (one a quorum will hold),
//!   `earliest` at the quorum-th oldest (the oldest a quorum still holds).
//! * **The resume-point-lost verdict** (`rules.rs`): when members say they no longer hold
//!   the resume target, the shard fails ([`ShardError::ResumePointLost`]) once fewer voters
//!   than the quorum may still hold it: the changes after it cannot be read from a quorum
//!   any more, and skipping them silently would lose data. A member that starts a stream
//!   again holds it after all.
//! * **The member read whole** (`whole.rs`): the rules of the pipeline's module docs,
//!   with [`SWITCH_AFTER`] measured on the supplied clock.
//! * **Backpressure** (`rules.rs`): past `max_pending` unconfirmed entries the members
//!   ahead of the quorum are set aside while a voter that is not ahead catches up; a
//!   member is read again once it is not ahead any more, all are at half the bound, and
//!   the members the release waits on are always read.
//! * **Quorum reachability** (`rules.rs`): said once when fewer voters than the quorum
//!   are being tailed (nothing can be confirmed), and once when enough are back.
//! * **Membership** (`membership.rs`): the replica set's newest configuration decides who
//!   is read, who votes and the quorum; hidden members are read, addresses are matched to
//!   configured members by hello `me`.
//! * **Member state** ([`MemberState`]): what a member's tailer last said, shown on status
//!   pages; the switch and reachability rules read it.
//!
//! Time comes with every input ([`Now`]), so tests drive it by hand. Counters and
//! per-member status go to [`ShardStats`] (in-memory atomics read by status pages and
//! metrics); every log line is an [`Action::Note`], logged by the caller, so warnings that
//! would repeat on every retry are said once here.
//!
//! `tests.rs` holds one test per rule; `model_tests.rs` runs random schedules against a
//! model of a replica set and its tailers.

mod membership;
#[cfg(test)]
mod model_tests;
mod notes;
mod rules;
#[cfg(test)]
mod tests;
mod whole;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumtail_merge::{CommitOutcome, CommitPoint, Event, Merge, NodeId, Report};
use quorumtail_oplog::{EntryId, Timestamp};
use quorumtail_tailer::{CommitReading, ReadMode, ReplicaSetConfig, ResumeTarget};

use super::stats::{NodeStats, ShardStats};
use super::{ShardError, ShardSpec};
use crate::config::{Release, StartPosition, WholeEntries};

pub use membership::Desired;
pub use notes::{Level, Note};
pub use rules::decide_start;

/// How long the release may wait for the whole entry a quorum already confirmed before
/// another member is read whole. Long enough that a member re-reading a backlog after a
/// change is not changed again; short next to an election.
pub const SWITCH_AFTER: Duration = Duration::from_secs(1);

/// The time an input happens at, read by the caller: the monotonic clock for the switch
/// rules, the wall clock for status pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub at: Instant,
    /// Unix milliseconds.
    pub unix_ms: u64,
}

impl Now {
    /// Reads both clocks.
    pub fn read() -> Now {
        Now {
            at: Instant::now(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

/// The settings the core's rules depend on.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// `[pipeline] max_pending`: the merge backlog past which members ahead are paused.
    pub max_pending: usize,
    /// `[start] position` for a shard without a checkpoint.
    pub start: StartPosition,
    /// `[pipeline] whole_entries`.
    pub whole_entries: WholeEntries,
    /// `[pipeline] release`.
    pub release: Release,
}

/// What a member's tailer reported (the decoded form of a tailer message).
#[derive(Debug)]
pub enum MemberMsg<P> {
    /// It connected: its oldest and newest entries, whether it is primary, its own name.
    Probe {
        /// Oldest entry in its oplog.
        oldest: Option<EntryId>,
        /// Newest entry.
        newest: Option<EntryId>,
        /// Whether it said it is the writable primary.
        primary: bool,
        /// What it calls itself (hello `me`).
        me: Option<String>,
    },
    /// A new stream started (it re-reads from the resume target).
    Started {
        /// What its batches hold.
        mode: ReadMode,
    },
    /// Entries following the previous ones of this stream, decoded.
    Batch {
        /// The entries, in the member's oplog order.
        reports: Vec<Report<P>>,
        /// Size of the reply, for status.
        bytes: u64,
        /// The batch was partial: the cursor reached the end of the member's oplog.
        at_end: bool,
        /// A commit point the member reported before the batch was read (entries at or
        /// below it are committed; see `Merge::set_read_commit`).
        read_after: Option<EntryId>,
    },
    /// An empty getMore: alive, nothing new.
    Idle,
    /// It does not hold the resume target; `first` is its oldest entry after it.
    Lacks {
        /// The target it lacks.
        target: ResumeTarget,
        /// Its first entry at or after the target.
        first: Option<EntryId>,
    },
    /// The stream ended; the tailer reconnects.
    Down {
        /// Why.
        reason: String,
    },
    /// The member cannot serve this shard.
    Refused {
        /// Why.
        reason: String,
    },
    /// Its view of the commit point with its newest entry.
    CommitPoint(CommitReading),
    /// The replica set configuration as it reports it.
    Config(Box<ReplicaSetConfig>),
}

/// An input to the core.
#[derive(Debug)]
pub enum Input<P> {
    /// A member's tailer reported something.
    Member(NodeId, MemberMsg<P>),
    /// Discovery changed the member list (or an explicit quorum).
    Members(ShardSpec),
    /// The shard was removed from the cluster: finish what the members hold, then stop.
    Drain,
    /// Time passed (the switch rules are re-evaluated).
    Tick,
}

/// What the caller must do.
#[derive(Debug)]
pub enum Action<P> {
    /// Start a tailer for `addr` as `node`, streaming `mode`.
    Start {
        /// The member's index in the merge.
        node: NodeId,
        /// `host:port`.
        addr: String,
        /// What it reads first.
        mode: ReadMode,
    },
    /// Stop reading `node` (it left the membership): drop its stream.
    Stop(NodeId),
    /// Restart `node`'s stream reading `mode` (from the resume target).
    SetMode(NodeId, ReadMode),
    /// Stop taking `node`'s batches for now (its channel fills, its tailer waits).
    Pause(NodeId),
    /// Take `node`'s batches again.
    Resume(NodeId),
    /// The resume target every tailer (re)starts from changed.
    Target(ResumeTarget),
    /// Start a new emitter: a user-given start may fall inside a transaction, whose
    /// start before this timestamp is skipped rather than an error.
    ResetEmitter {
        /// Skip transaction ends whose start is before this.
        skip_orphans_before: Option<Timestamp>,
    },
    /// Hand a released entry to the emitter (`Committed`) or count it (`Discarded`).
    Release(Event<P>),
    /// Log this.
    Note(Note),
    /// The shard stops for good; nothing after this is valid.
    Fail(ShardError),
}

/// Where a member's tailer stands. Shown on status pages by its [`fmt::Display`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Started, no answer yet.
    Connecting,
    /// Streaming (or idle at the end of its oplog).
    Tailing,
    /// The stream ended; reconnecting.
    Down(String),
    /// The member cannot serve this shard.
    Refused(String),
    /// It no longer holds the resume point.
    LacksResumePoint,
}

impl MemberState {
    /// Being read or about to be: a candidate to be read whole.
    pub fn healthy(&self) -> bool {
        matches!(self, MemberState::Tailing | MemberState::Connecting)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberState::Connecting => f.write_str("connecting"),
            MemberState::Tailing => f.write_str("tailing"),
            MemberState::Down(r) => write!(f, "down: {r}"),
            MemberState::Refused(r) => write!(f, "refused: {r}"),
            MemberState::LacksResumePoint => f.write_str("lacks the resume point"),
        }
    }
}

/// What the core knows about one member.
#[derive(Debug)]
struct Member {
    addr: String,
    info: NodeStats,
    /// Its oldest and newest entries when it last connected.
    probe: Option<(Option<EntryId>, Option<EntryId>)>,
    /// The resume target it said it lacks (cleared when a stream starts).
    lacks: Option<(ResumeTarget, Option<EntryId>)>,
    state: MemberState,
    /// What it was asked to read.
    mode: ReadMode,
    /// What its current stream holds (from `Started`).
    reading: Option<ReadMode>,
    /// Its batches are set aside (backpressure).
    paused: bool,
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

/// One shard's decisions. `P` is what a report carries back on release (the raw entry).
#[derive(Debug)]
pub struct ShardCore<P> {
    shard: Arc<str>,
    spec: ShardSpec,
    config: CoreConfig,
    stats: Arc<ShardStats>,
    engine: Option<Merge<P>>,
    quorum: usize,
    members: BTreeMap<NodeId, Member>,
    /// The resume target last published.
    target: Option<ResumeTarget>,
    /// Set once the shard was removed: members that returned an empty batch since.
    draining: Option<HashSet<NodeId>>,
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
    /// are read, who votes and the quorum.
    live: Option<ReplicaSetConfig>,
    /// Said once that an explicit quorum is below the replica set's write majority.
    noted_low_quorum: bool,
    /// Since when an entry a quorum holds waits for the commit point.
    commit_wait_since: Option<Instant>,
    out: Vec<Action<P>>,
}

type Step = Result<(), ShardError>;

impl<P: Clone> ShardCore<P> {
    /// A core for `spec`, resuming at `checkpoint` if there is one. The returned actions
    /// start the members' tailers and publish the first resume target.
    ///
    /// # Errors
    /// [`ShardError::Quorum`] when the member list and quorum cannot work.
    pub fn new(
        spec: ShardSpec,
        config: CoreConfig,
        checkpoint: Option<EntryId>,
        stats: Arc<ShardStats>,
    ) -> Result<(Self, Vec<Action<P>>), ShardError> {
        let shard = spec.name.clone();
        let quorum = membership::resolve(&spec)?;
        // Not reachable until a quorum of members answered (see `check_quorum_reachable`).
        stats.quorum_reachable.store(0, Relaxed);
        stats.quorum.store(quorum as u64, Relaxed);
        stats.set_quorum_source(if spec.quorum.is_some() {
            "static (explicit quorum)".into()
        } else {
            "static (member list; until a member reports the replica set configuration)".into()
        });
        let key_only = config.whole_entries == WholeEntries::One;
        let mut core = ShardCore {
            shard,
            spec: spec.clone(),
            config,
            stats,
            engine: None,
            quorum,
            members: BTreeMap::new(),
            target: None,
            draining: None,
            quorum_reachable: None,
            key_only,
            whole: None,
            waiting_since: None,
            live: None,
            noted_low_quorum: false,
            commit_wait_since: None,
            out: Vec::new(),
        };
        let skip_orphans = match (checkpoint, core.config.start) {
            (None, StartPosition::After(ts)) => Some(ts),
            _ => None,
        };
        core.out.push(Action::ResetEmitter {
            skip_orphans_before: skip_orphans,
        });
        match (checkpoint, core.config.start) {
            (Some(cp), _) => {
                core.note(Note::ResumingFromCheckpoint(cp));
                core.engine = Some(core.new_engine(spec.members.len(), quorum, Some(cp))?);
                core.set_target(ResumeTarget {
                    id: cp,
                    exact: true,
                });
            }
            (None, StartPosition::After(ts)) => {
                let id = EntryId::at(ts);
                core.note(Note::StartingAfter(ts));
                core.engine = Some(core.new_engine(spec.members.len(), quorum, Some(id))?);
                core.set_target(ResumeTarget { id, exact: false });
            }
            (None, _) => {}
        }
        for (i, addr) in spec.members.iter().enumerate() {
            core.add_member(addr, NodeId(i as u8));
        }
        let out = std::mem::take(&mut core.out);
        Ok((core, out))
    }

    /// Applies one input at `now`; the actions are appended to `out` in the order they
    /// must be carried out. After an [`Action::Fail`] the core must not be used again.
    pub fn step(&mut self, now: Now, input: Input<P>, out: &mut Vec<Action<P>>) {
        let result = match input {
            Input::Member(node, msg) => {
                let r = self.member(now, node, msg);
                self.check_quorum_reachable();
                r
            }
            Input::Members(spec) => self.members_changed(now, spec),
            Input::Drain => {
                self.note(Note::Draining);
                self.draining = Some(HashSet::new());
                Ok(())
            }
            Input::Tick => {
                self.check_whole(now);
                Ok(())
            }
        };
        out.append(&mut self.out);
        if let Err(e) = result {
            out.push(Action::Fail(e));
        }
    }

    /// A removed shard is finished once a quorum of members reported an empty batch (they
    /// hold nothing newer) and the merge holds nothing unconfirmed.
    pub fn drained(&self) -> bool {
        match (&self.draining, &self.engine) {
            (Some(idle), Some(e)) => idle.len() >= self.quorum && e.pending_len() == 0,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// What `node`'s current stream holds (`None` before its first stream started).
    pub fn stream_mode(&self, node: NodeId) -> Option<ReadMode> {
        self.members.get(&node).and_then(|m| m.reading)
    }

    /// Whether `node` is one of the members being read.
    pub fn is_member(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }

    /// A member's address.
    pub fn member_addr(&self, node: NodeId) -> Option<&str> {
        self.members.get(&node).map(|m| m.addr.as_str())
    }

    /// The quorum in force.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// The member read whole (key-only mode).
    pub fn whole(&self) -> Option<NodeId> {
        self.whole
    }

    /// A member's state.
    pub fn member_state(&self, node: NodeId) -> Option<&MemberState> {
        self.members.get(&node).map(|m| &m.state)
    }

    /// The members being read: index, address and whether it votes.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &str, bool)> {
        self.members
            .iter()
            .map(|(id, m)| (*id, m.addr.as_str(), m.voter))
    }

    /// The merge engine, once the start is known.
    pub fn engine(&self) -> Option<&Merge<P>> {
        self.engine.as_ref()
    }

    fn note(&mut self, n: Note) {
        self.out.push(Action::Note(n));
    }

    fn set_target(&mut self, t: ResumeTarget) {
        if self.target != Some(t) {
            self.target = Some(t);
            self.out.push(Action::Target(t));
        }
    }

    fn new_engine(
        &self,
        nodes: usize,
        quorum: usize,
        start: Option<EntryId>,
    ) -> Result<Merge<P>, ShardError> {
        let mut engine = Merge::new(nodes, quorum, start).map_err(|e| self.quorum_err(e))?;
        if self.key_only {
            engine = engine.require_payload();
        }
        if self.config.release == Release::CommitPoint {
            engine = engine.require_commit_point();
        }
        Ok(engine)
    }

    fn quorum_err(&self, e: impl fmt::Display) -> ShardError {
        ShardError::Quorum {
            shard: self.shard.clone(),
            detail: e.to_string(),
        }
    }

    fn stream_err(&self, source: quorumtail_merge::PushError) -> ShardError {
        ShardError::Stream {
            shard: self.shard.clone(),
            source,
        }
    }

    /// Starts reading a member (key-only members start with identities; the member read
    /// whole is chosen when the first ones answer).
    fn add_member(&mut self, addr: &str, node: NodeId) {
        let mode = if self.key_only {
            ReadMode::Identity
        } else {
            ReadMode::Whole
        };
        self.out.push(Action::Start {
            node,
            addr: addr.to_owned(),
            mode,
        });
        let info = NodeStats {
            state: MemberState::Connecting.to_string(),
            ..Default::default()
        };
        self.stats.set_node(addr, info.clone());
        self.members.insert(
            node,
            Member {
                addr: addr.to_owned(),
                info,
                probe: None,
                lacks: None,
                state: MemberState::Connecting,
                mode,
                reading: None,
                paused: false,
                primary: false,
                at_end: false,
                moved_at: None,
                me: None,
                voter: true,
                noted_commit_beyond: false,
            },
        );
    }

    /// One member message, then the checks every message triggers: the member read
    /// whole, the member's status, the commit-point wait.
    fn member(&mut self, now: Now, node: NodeId, msg: MemberMsg<P>) -> Step {
        let result = self.member_msg(now, node, msg);
        self.backpressure();
        self.check_whole(now);
        if let Some(m) = self.members.get_mut(&node) {
            m.info.state = m.state.to_string();
            self.stats.set_node(&m.addr, m.info.clone());
        }
        if let Some(e) = self.engine.as_ref() {
            let waiting = e.awaiting_commit_point().is_some();
            match (waiting, self.commit_wait_since) {
                (true, None) => {
                    self.commit_wait_since = Some(now.at);
                    self.stats.commit_waits.fetch_add(1, Relaxed);
                }
                (false, Some(t)) => {
                    self.commit_wait_since = None;
                    self.stats.commit_wait_micros.fetch_add(
                        now.at.saturating_duration_since(t).as_micros() as u64,
                        Relaxed,
                    );
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

    fn member_msg(&mut self, now: Now, node: NodeId, msg: MemberMsg<P>) -> Step {
        let Some(member) = self.members.get_mut(&node) else {
            return Ok(());
        };
        match msg {
            MemberMsg::Probe {
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
                    self.reconcile(now)?;
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
                        self.switch_whole(node, "first member to answer".into());
                    } else if primary && !whole_is_primary {
                        self.switch_whole(node, "the primary answered".into());
                    }
                }
                if self.engine.is_none() {
                    self.start_if_decided()?;
                }
            }
            MemberMsg::Started { mode } => {
                member.reading = Some(mode);
                member.at_end = false;
                member.moved_at = Some(now.at);
                member.info.reading = mode.as_str().into();
                member.info.starts += 1;
                self.stats.tailer_starts.fetch_add(1, Relaxed);
                member.lacks = None;
                member.state = MemberState::Tailing;
                if let Some(e) = self.engine.as_mut() {
                    e.node_reset(node);
                }
            }
            MemberMsg::Idle => {
                member.at_end = true;
                member.info.last_seen_unix_ms = now.unix_ms;
                member.state = MemberState::Tailing;
                if let Some(idle) = self.draining.as_mut() {
                    idle.insert(node);
                }
            }
            MemberMsg::Down { reason } => {
                member.info.interruptions += 1;
                member.state = MemberState::Down(reason);
            }
            MemberMsg::Refused { reason } => {
                let state = MemberState::Refused(reason.clone());
                member.info.interruptions += 1;
                // Retries repeat the refusal: say it once, until something changes.
                if member.state != state {
                    member.state = state;
                    let addr = member.addr.clone();
                    self.note(Note::Refused { addr, reason });
                }
            }
            MemberMsg::Lacks { target, first } => {
                member.lacks = Some((target, first));
                member.info.interruptions += 1;
                member.state = MemberState::LacksResumePoint;
                let addr = member.addr.clone();
                self.note(Note::Lacks {
                    addr,
                    target: target.id,
                    first,
                });
                self.resume_point_verdict(target)?;
            }
            MemberMsg::CommitPoint(r) => {
                let addr = member.addr.clone();
                if r.committed.ts > r.last_applied.ts && !member.noted_commit_beyond {
                    member.noted_commit_beyond = true;
                    self.note(Note::CommitBeyondNewest {
                        addr: addr.clone(),
                        commit_point: r.committed,
                        newest: r.last_applied,
                    });
                }
                let Some(e) = self.engine.as_mut() else {
                    return Ok(());
                };
                let outcome = e.commit_point(
                    node,
                    CommitPoint {
                        committed: r.committed,
                        last_applied: r.last_applied,
                    },
                );
                let commit_ts = e.node_commit_point(node).map(|c| c.ts);
                let outcome = outcome.map_err(|source| self.stream_err(source))?;
                if outcome == CommitOutcome::NotOnStream {
                    self.note(Note::CommitPointDropped {
                        addr,
                        newest: r.last_applied,
                    });
                }
                if let Some(m) = self.members.get_mut(&node) {
                    m.info.commit_point_ts = commit_ts;
                }
                self.release()?;
            }
            MemberMsg::Config(c) => self.on_config(now, node, *c)?,
            MemberMsg::Batch {
                reports,
                bytes,
                at_end,
                read_after,
            } => {
                member.state = MemberState::Tailing;
                if let Some(idle) = self.draining.as_mut() {
                    idle.remove(&node);
                }
                member.info.last_seen_unix_ms = now.unix_ms;
                let Some(e) = self.engine.as_mut() else {
                    return Ok(());
                };
                member.info.bytes_read += bytes;
                member.moved_at = Some(now.at);
                e.set_read_commit(node, read_after);
                let mut pushed = Ok(());
                for report in reports {
                    member.info.last_ts = member.info.last_ts.max(Some(report.id.ts));
                    if let Err(source) = e.push(node, report) {
                        pushed = Err(source);
                        break;
                    }
                }
                pushed.map_err(|source| self.stream_err(source))?;
                if let Some(m) = self.members.get_mut(&node) {
                    m.at_end = at_end;
                }
                self.release()?;
            }
        }
        Ok(())
    }

    /// Hands released events to the caller and publishes the new watermark as the resume
    /// target. A divergence stops the shard.
    fn release(&mut self) -> Step {
        let Some(e) = self.engine.as_mut() else {
            return Ok(());
        };
        for ev in e.drain_events() {
            if let Event::Divergence {
                id,
                agreeing,
                node,
                expected,
                found,
            } = ev
            {
                return Err(ShardError::Divergence {
                    shard: self.shard.clone(),
                    id,
                    detail: format!(
                        "members {agreeing:?} have digest {expected:x}, member {} has {found:x}",
                        node.0
                    ),
                });
            }
            self.out.push(Action::Release(ev));
        }
        if let Some(w) = e.watermark() {
            if w.term.is_some() || w.hash.is_some() {
                self.set_target(ResumeTarget { id: w, exact: true });
            }
        }
        Ok(())
    }
}

//! The per-shard majority-merge engine: a synchronous state machine with no clocks, no
//! tasks and no I/O.
//!
//! ```text
//!   tailer a ──push(a, id)──┐
//!   tailer b ──push(b, id)──┼──► Merge ──► Event::Committed  (in ts order, once each)
//!   tailer c ──push(c, id)──┘      │  ──► Event::Discarded  (never committed: rolled back
//!                                  │                          or seen by a minority only)
//!                                  └──► Event::Divergence (same identity, other content)
//! ```
//!
//! # Specification
//!
//! **Members and quorum.** The engine tracks the data-bearing members of one replica set
//! (up to 64; MongoDB allows 50), hidden and delayed ones included, each a voter or not
//! ([`Merge::set_voter`]: `votes: 0` members replicate but never make a write durable).
//! Only voters' reports count towards the quorum `q`, which defaults to MongoDB's
//! `writeMajorityCount`: a majority of all voters, arbiters included, capped at the
//! voting data-bearing members ([`resolve_voting_quorum`]).
//!
//! **Input.** Each member's tailer calls [`Merge::push`] for every entry of that member's
//! oplog, in oplog order (strictly increasing `ts`), starting at or before the watermark.
//! When a tailer restarts (reconnect, killed cursor, rollback) the pipeline calls
//! [`Merge::node_reset`] and the tailer re-sends from the watermark: the engine forgets
//! that member's earlier reports, because after a rollback the member may no longer hold
//! them.
//!
//! **Commit.** An entry is committed when `q` distinct voters reported the same
//! [`EntryId`] with the same content digest and, with [`Merge::require_commit_point`],
//! a member that reported it also reported a commit point at or past it (below).
//! Committed entries are released in `ts` order, each exactly once.
//!
//! **Commit point.** "Held by a majority" is observed; "majority committed" is what
//! MongoDB guarantees durable, and they differ: in Raft's "figure 8" an entry of an older
//! term that a re-elected primary carries to a majority is still rolled back if that
//! primary fails before committing an entry of its own term, and a tailer that has not yet
//! noticed its member's rollback still holds that member's old reports. MongoDB's commit
//! point never covers such an entry (a primary advances it only through an entry of its
//! own term held by a write majority). So each member's view of the commit point
//! (hello's `lastWrite.majorityOpTime`) is fed in with [`Merge::commit_point`], together
//! with the member's newest entry from the same reply (`lastWrite.opTime`). The reading
//! confirms that member's reports up to the commit point only once the member's current
//! stream has reported that newest entry itself: the reading and the stream are then one
//! history (a rollback in between would have removed the entry from the member's oplog
//! and killed the stream). Readings from before a stream restart are dropped with it; a
//! commit point beyond the member's own newest entry is capped to it. Legacy entries
//! without a term (protocol version 0) keep the quorum rule alone.
//!
//! **Discard.** When an entry at `ts = X` commits, every pending entry below `X` that is not
//! committed by the rule above (no quorum, or no reporter's commit point covers it) can
//! never commit: with the commit point, the confirming member reported its history in
//! order from the watermark, and that history up to `X` is committed, so an entry below
//! `X` that it did not report is on a branch that lost. Without it: the `q` members that
//! confirmed `X` each reported, in order, every entry of their oplog before `X` (they all
//! started at or before the watermark), and MongoDB's log-matching property makes those
//! prefixes identical; so an entry below `X` on the committed history was reported by all
//! of them. Such entries are
//! released as [`Event::Discarded`] with the members that had them. Pending entries at the
//! same `ts` as `X` with another term are discarded too: one `ts` holds one committed entry.
//!
//! **Watermark.** After releasing up to `X`, reports at `ts <= X` are ignored (counted as
//! stale), so a member hours behind costs no memory. Pending state is bounded by how far
//! the fastest members run ahead of the quorum; [`Merge::pending_len`] and
//! [`Merge::nodes_ahead`] let the pipeline stop reading from members that are ahead.
//!
//! **Errors.** A member whose stream does not strictly increase in `ts` gets a
//! [`PushError::NotIncreasing`] for that report, which is not applied; the pipeline resets
//! that member's tailer. Nothing in the engine panics on input.
//!
//! **Payloads: reading whole entries from one member.** A report carries the entry's
//! identity and, optionally, a payload (the whole entry) and its content digest. The
//! pipeline reads whole entries from one member and only identities from the others, which
//! is all a quorum needs: within one replica set an identity (`ts` with the term, or with
//! `h` before 4.2) names one entry of one history, so any member's payload for it is the
//! committed content. With [`Merge::require_payload`], an entry that reached the quorum
//! is released only once some member also sent its payload; until then it holds back
//! everything after it (entries below it are still decided: it has the quorum).
//! [`Merge::awaiting_payload`] names such an entry and its reporters, so the pipeline can
//! read whole entries from one of them instead. Digests are compared only between
//! members that sent content.
//!
//! **Membership.** Members can be added ([`Merge::add_node`]) and removed
//! ([`Merge::remove_node`]) and the quorum changed ([`Merge::set_quorum`]); entries that
//! reach the new quorum are released at once.
//!
//! # Tests
//!
//! `tests.rs` holds scripted stories (the rollback pitfall, non-voters, figure 8, commit
//! readings from a dead stream) and property tests over histories whose elections respect
//! leader completeness for every entry ever held by a majority; `raft_tests.rs` elects by
//! votes as MongoDB does, with non-voters, arbiters, chained replication, per-member commit
//! points learned late and tailers that notice rollbacks late, so figure 8 happens, and
//! checks that the output is exactly the final committed history (and that the engine
//! without the commit point fails that check on the same histories).

use std::collections::VecDeque;

pub use quorumtail_oplog::{EntryId, Timestamp};

/// Index of a member in one engine (assigned by [`Merge::new`] and [`Merge::add_node`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId(pub u8);

/// Maximum members per replica set the engine tracks (MongoDB allows 50).
pub const MAX_NODES: usize = 64;

/// A set of members, as a bit mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NodeSet(u64);

impl NodeSet {
    /// The empty set.
    pub const EMPTY: NodeSet = NodeSet(0);

    /// Whether `n` is in the set.
    pub fn contains(self, n: NodeId) -> bool {
        self.0 & (1 << n.0) != 0
    }

    /// Number of members in the set.
    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Members in either set.
    pub fn union(self, other: NodeSet) -> NodeSet {
        NodeSet(self.0 | other.0)
    }

    /// Members in both sets.
    pub fn intersection(self, other: NodeSet) -> NodeSet {
        NodeSet(self.0 & other.0)
    }

    fn insert(&mut self, n: NodeId) {
        self.0 |= 1 << n.0;
    }

    fn remove(&mut self, n: NodeId) {
        self.0 &= !(1 << n.0);
    }

    /// The members, in index order.
    pub fn iter(self) -> impl Iterator<Item = NodeId> {
        (0..64u8)
            .filter(move |i| self.0 & (1 << i) != 0)
            .map(NodeId)
    }
}

impl std::fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(|n| n.0)).finish()
    }
}

/// One member's report of one entry.
#[derive(Clone, Debug)]
pub struct Report<P> {
    /// The entry's identity.
    pub id: EntryId,
    /// A digest of the entry's content, when the member sent the content
    /// (see `OplogEntry::digest`). Two digests are compared only when both are present.
    pub digest: Option<u64>,
    /// What the pipeline wants back when the entry is released (the raw entry, or nothing
    /// for members that stream only identities).
    pub payload: Option<P>,
}

/// What the engine releases, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<P> {
    /// Reported by a quorum: part of the replica set's committed history.
    Committed {
        /// The entry.
        id: EntryId,
        /// The first payload any member sent for it.
        payload: Option<P>,
        /// The members that reported it.
        reporters: NodeSet,
    },
    /// Can never commit: rolled back, or only ever held by a minority.
    Discarded {
        /// The entry.
        id: EntryId,
        /// The first payload any member sent for it.
        payload: Option<P>,
        /// The members that reported it (empty if all of them were reset since).
        reporters: NodeSet,
    },
    /// A member reported an identity already reported with different content. Its report
    /// does not count towards the quorum. MongoDB never does this: it means corruption or
    /// a reader bug, and the pipeline should stop the shard.
    Divergence {
        /// The identity.
        id: EntryId,
        /// The members that reported the first content.
        agreeing: NodeSet,
        /// Digest of the first content.
        expected: u64,
        /// The member that disagrees.
        node: NodeId,
        /// Its digest.
        found: u64,
    },
}

/// What happened to one report.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pushed {
    /// The entry is pending (not yet reported by a quorum).
    Pending,
    /// The report completed a quorum; events were released.
    Released,
    /// At or below the watermark: already decided, ignored.
    Stale,
    /// Same identity, different content: see [`Event::Divergence`].
    Diverged,
}

/// A report the engine refuses.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum PushError {
    /// The member's stream went backwards or repeated a timestamp.
    #[error("member {node:?} reported {got} after {previous}: its oplog stream must strictly increase in ts; reset its tailer")]
    NotIncreasing {
        /// The member.
        node: NodeId,
        /// Its previous report.
        previous: EntryId,
        /// The refused report.
        got: EntryId,
    },
    /// The member is not (or no longer) part of this engine.
    #[error("member {0:?} is not part of this replica set's merge")]
    UnknownNode(NodeId),
}

/// A membership or quorum setting that can never work.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum QuorumError {
    /// No data-bearing members.
    #[error("a replica set needs at least one data-bearing member")]
    NoMembers,
    /// Data-bearing members, but none of them votes.
    #[error("no data-bearing member votes: MongoDB can never majority-commit a write in this replica set (give at least one data-bearing member `votes: 1`)")]
    NoVoters,
    /// More members than the engine tracks.
    #[error("{0} data-bearing members is more than the {MAX_NODES} the merge can track (MongoDB allows 50)")]
    TooManyMembers(usize),
    /// Quorum of zero.
    #[error("quorum must be at least 1")]
    Zero,
    /// Quorum larger than the data-bearing voters.
    #[error("quorum {quorum} can never be reached: only {data_bearing} voting members hold an oplog (arbiters vote but never confirm an entry; members with `votes: 0` never make a write durable); use a quorum between 1 and {data_bearing}")]
    Unreachable {
        /// Requested quorum.
        quorum: usize,
        /// Data-bearing voting members.
        data_bearing: usize,
    },
}

/// The voting make-up of a replica set, as its configuration (`replSetGetConfig`) states it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Voting {
    /// Members with an oplog and `votes: 1` (hidden and delayed ones included).
    pub data_bearing_voters: usize,
    /// Members with an oplog and `votes: 0`: they replicate but never make a write durable.
    pub non_voters: usize,
    /// Arbiters: they vote, hold no oplog.
    pub arbiters: usize,
}

impl Voting {
    /// A set where every data-bearing member votes.
    pub fn all_voting(data_bearing: usize, arbiters: usize) -> Voting {
        Voting {
            data_bearing_voters: data_bearing,
            non_voters: 0,
            arbiters,
        }
    }
}

/// The quorum a replica set uses, and how it was derived.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct QuorumInfo {
    /// Confirmations (from voting data-bearing members) required to commit an entry.
    pub quorum: usize,
    /// Majority of the voting members, arbiters included (`majorityVoteCount`).
    pub majority: usize,
    /// How many voting data-bearing members make a write durable in MongoDB
    /// (`writeMajorityCount`: the majority, capped at the data-bearing voters).
    pub write_majority: usize,
    /// Whether `quorum` is below the write majority: without MongoDB's commit point as a
    /// condition of release, entries could then be emitted that are later rolled back.
    pub below_majority: bool,
}

/// Resolves the quorum for `data_bearing` voting members and `arbiters`, with an optional
/// explicit override; see [`resolve_voting_quorum`].
///
/// # Errors
/// As [`resolve_voting_quorum`].
pub fn resolve_quorum(
    data_bearing: usize,
    arbiters: usize,
    explicit: Option<usize>,
) -> Result<QuorumInfo, QuorumError> {
    resolve_voting_quorum(Voting::all_voting(data_bearing, arbiters), explicit)
}

/// Resolves the quorum of a replica set from its voting make-up, with an optional explicit
/// override. The default is MongoDB's `writeMajorityCount`: a majority of all voters
/// (arbiters included), capped at the number of voting data-bearing members
/// (`ReplSetConfig::_writeMajority` in the server source).
///
/// # Errors
/// [`QuorumError`] when there are no data-bearing members, none of them votes, too many,
/// a zero quorum, or a quorum above the data-bearing voters.
pub fn resolve_voting_quorum(
    v: Voting,
    explicit: Option<usize>,
) -> Result<QuorumInfo, QuorumError> {
    let data_bearing = v.data_bearing_voters + v.non_voters;
    if data_bearing == 0 {
        return Err(QuorumError::NoMembers);
    }
    if data_bearing > MAX_NODES {
        return Err(QuorumError::TooManyMembers(data_bearing));
    }
    if v.data_bearing_voters == 0 {
        return Err(QuorumError::NoVoters);
    }
    let majority = (v.data_bearing_voters + v.arbiters) / 2 + 1;
    let write_majority = majority.min(v.data_bearing_voters);
    let quorum = explicit.unwrap_or(write_majority);
    if quorum == 0 {
        return Err(QuorumError::Zero);
    }
    if quorum > v.data_bearing_voters {
        return Err(QuorumError::Unreachable {
            quorum,
            data_bearing: v.data_bearing_voters,
        });
    }
    Ok(QuorumInfo {
        quorum,
        majority,
        write_majority,
        below_majority: quorum < write_majority,
    })
}

/// A member's view of its replica set's commit point, read together with its own newest
/// entry (hello's `lastWrite.majorityOpTime` and `lastWrite.opTime`, from one reply).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommitPoint {
    /// The newest entry the member knows to be majority-committed.
    pub committed: EntryId,
    /// The member's newest entry when it said so.
    pub last_applied: EntryId,
}

/// What happened to a commit point report ([`Merge::commit_point`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CommitOutcome {
    /// The member's stream holds `last_applied`: the commit point now confirms the member's
    /// reports up to it.
    Applied,
    /// The member's stream has not reached `last_applied` yet: the commit point takes
    /// effect when it reports that entry.
    Queued,
    /// Nothing to learn: at or below the watermark, not newer than what the member already
    /// confirmed, or the engine does not use commit points.
    Outdated,
    /// The member's stream passed `last_applied`'s timestamp without reporting that entry
    /// (another branch, or a filtered entry): the report proves nothing and is dropped.
    NotOnStream,
}

#[derive(Debug)]
struct Pending<P> {
    id: EntryId,
    digest: Option<u64>,
    reporters: NodeSet,
    diverged: NodeSet,
    payload: Option<P>,
}

/// Commit points waiting for their member's stream to reach `last_applied`.
const MAX_QUEUED_COMMIT_POINTS: usize = 32;

#[derive(Clone, Debug, Default)]
struct NodeState {
    member: bool,
    last: Option<EntryId>,
    /// The member's commit point, confirmed against its current stream.
    commit: Option<EntryId>,
    /// Commit points whose `last_applied` the stream has not reported yet, oldest first.
    queued: VecDeque<CommitPoint>,
    /// A commit point the member reported before its stream read the entries it reports
    /// now ([`Merge::set_read_commit`]).
    read_commit: Option<EntryId>,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries committed.
    pub committed: u64,
    /// Entries discarded (never committed).
    pub discarded: u64,
    /// Reports ignored because they were at or below the watermark.
    pub stale_reports: u64,
    /// Divergences seen.
    pub divergences: u64,
    /// Commit points that confirmed a member's stream.
    pub commit_points_applied: u64,
    /// Commit points dropped because the member's stream did not hold their entry.
    pub commit_points_not_on_stream: u64,
    /// Commit points beyond the member's own newest entry (capped to it).
    pub commit_points_beyond_last_applied: u64,
    /// Reports of entries a member read after it had reported a commit point covering
    /// them ([`Merge::set_read_commit`]).
    pub read_after_commit_point: u64,
}

/// The merge state of one replica set. See the crate docs for the specification.
#[derive(Debug)]
pub struct Merge<P> {
    quorum: u32,
    members: NodeSet,
    voters: NodeSet,
    nodes: Vec<NodeState>,
    watermark: Option<EntryId>,
    pending: VecDeque<Pending<P>>,
    events: VecDeque<Event<P>>,
    stats: Stats,
    require_payload: bool,
    require_commit_point: bool,
    /// The highest entry released (committed or discarded). With payloads required,
    /// entries can be discarded while the watermark waits below them; a member that
    /// restarts from the watermark must not bring them back.
    decided: Option<EntryId>,
    /// The highest pending entry that is decided as committed (quorum, and commit point
    /// when required), kept so that a payload unblocking the release finds how far to
    /// release without scanning the backlog.
    top_ready: Option<EntryId>,
}

impl<P> Merge<P> {
    /// An engine for `nodes` voting members (ids `0..nodes`) and the given quorum, ignoring
    /// everything at or before `start` (the checkpoint, or the start position).
    ///
    /// # Errors
    /// [`QuorumError`] as in [`resolve_quorum`] (with no arbiters).
    pub fn new(nodes: usize, quorum: usize, start: Option<EntryId>) -> Result<Self, QuorumError> {
        resolve_quorum(nodes, 0, Some(quorum))?;
        let mut m = Merge {
            quorum: quorum as u32,
            members: NodeSet::EMPTY,
            voters: NodeSet::EMPTY,
            nodes: Vec::with_capacity(nodes),
            watermark: start,
            pending: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            require_payload: false,
            require_commit_point: false,
            decided: None,
            top_ready: None,
        };
        for _ in 0..nodes {
            m.add_node()?;
        }
        Ok(m)
    }

    /// Makes a payload a condition of release (see "Payloads" in the crate docs): for
    /// pipelines where only some members send whole entries.
    #[must_use]
    pub fn require_payload(mut self) -> Self {
        self.require_payload = true;
        self
    }

    /// Whether a payload is a condition of release.
    pub fn requires_payload(&self) -> bool {
        self.require_payload
    }

    /// Makes MongoDB's commit point a condition of release for entries with a term (see
    /// "Commit point" in the crate docs).
    #[must_use]
    pub fn require_commit_point(mut self) -> Self {
        self.require_commit_point = true;
        self
    }

    /// Whether the commit point is a condition of release.
    pub fn requires_commit_point(&self) -> bool {
        self.require_commit_point
    }

    /// The entry that reached the quorum but cannot be released because no member sent
    /// its payload yet, with the members that reported it. `None` when nothing waits (or
    /// payloads are not required).
    pub fn awaiting_payload(&self) -> Option<(EntryId, NodeSet)> {
        let p = self.pending.front()?;
        (self.blocked(p)).then_some((p.id, p.reporters))
    }

    /// The next entry to release when a quorum of voters reported it but no reporter's
    /// commit point covers it yet (the release waits for MongoDB to commit it), with its
    /// reporters. `None` when the release does not wait for a commit point.
    pub fn awaiting_commit_point(&self) -> Option<(EntryId, NodeSet)> {
        if !self.require_commit_point {
            return None;
        }
        let p = self.pending.front()?;
        (self.has_quorum(p) && !self.confirmed(p)).then_some((p.id, p.reporters))
    }

    fn has_quorum(&self, p: &Pending<P>) -> bool {
        p.reporters.intersection(self.voters).len() >= self.quorum
    }

    /// Whether a reporter's confirmed commit point covers `p` (always, without the rule or
    /// for legacy entries without a term).
    fn confirmed(&self, p: &Pending<P>) -> bool {
        !self.require_commit_point
            || p.id.term.is_none()
            || p.reporters.iter().any(|r| {
                self.nodes[r.0 as usize]
                    .commit
                    .is_some_and(|c| p.id.ts <= c.ts)
            })
    }

    /// Part of the committed history: a quorum of voters reported it and (when required) a
    /// reporter's commit point covers it.
    fn ready(&self, p: &Pending<P>) -> bool {
        self.has_quorum(p) && self.confirmed(p)
    }

    fn blocked(&self, p: &Pending<P>) -> bool {
        self.require_payload && p.payload.is_none() && self.ready(p)
    }

    /// Adds a voting member; it must report from the watermark on. The quorum is
    /// unchanged: call [`Merge::set_quorum`] with the recomputed value.
    ///
    /// # Errors
    /// [`QuorumError::TooManyMembers`] when 64 members already exist.
    pub fn add_node(&mut self) -> Result<NodeId, QuorumError> {
        let idx = match self.nodes.iter().position(|n| !n.member) {
            Some(i) => i,
            None if self.nodes.len() < MAX_NODES => {
                self.nodes.push(NodeState::default());
                self.nodes.len() - 1
            }
            None => return Err(QuorumError::TooManyMembers(MAX_NODES + 1)),
        };
        let id = NodeId(idx as u8);
        self.nodes[idx] = NodeState {
            member: true,
            ..NodeState::default()
        };
        self.members.insert(id);
        self.voters.insert(id);
        Ok(id)
    }

    /// Removes a member and forgets its reports. The quorum is unchanged: call
    /// [`Merge::set_quorum`] with the recomputed value.
    pub fn remove_node(&mut self, node: NodeId) {
        if self.is_member(node) {
            self.forget(node);
            self.nodes[node.0 as usize] = NodeState::default();
            self.members.remove(node);
            self.voters.remove(node);
        }
    }

    /// Says whether a member votes (`votes: 1` in the replica set configuration). Only
    /// voters' reports count towards the quorum; a non-voter's reports still carry
    /// payloads and commit points. Entries that now reach the quorum are released.
    pub fn set_voter(&mut self, node: NodeId, voter: bool) {
        if !self.is_member(node) {
            return;
        }
        if voter {
            self.voters.insert(node);
        } else {
            self.voters.remove(node);
        }
        self.release_ready(None);
    }

    /// The voting members.
    pub fn voters(&self) -> NodeSet {
        self.voters
    }

    /// Changes the quorum; entries that now reach it are released.
    ///
    /// # Errors
    /// [`QuorumError`] when `quorum` is 0 or exceeds the current voting members.
    pub fn set_quorum(&mut self, quorum: usize) -> Result<(), QuorumError> {
        let voters = self.voters.len() as usize;
        let non_voters = self.members.len() as usize - voters;
        resolve_voting_quorum(
            Voting {
                data_bearing_voters: voters,
                non_voters,
                arbiters: 0,
            },
            Some(quorum),
        )?;
        self.quorum = quorum as u32;
        self.release_ready(None);
        Ok(())
    }

    /// The member's tailer restarted and will re-send from the watermark: forget what it
    /// reported (it may have been rolled back), its commit point (learned on the old
    /// stream) and accept its stream from the start again.
    pub fn node_reset(&mut self, node: NodeId) {
        if self.is_member(node) {
            self.forget(node);
            let n = &mut self.nodes[node.0 as usize];
            n.last = None;
            n.commit = None;
            n.queued.clear();
            n.read_commit = None;
        }
    }

    fn forget(&mut self, node: NodeId) {
        for p in self.pending.iter_mut() {
            p.reporters.remove(node);
            p.diverged.remove(node);
        }
        if self.require_payload {
            self.recompute_top_ready();
        }
    }

    fn recompute_top_ready(&mut self) {
        self.top_ready = self
            .pending
            .iter()
            .rev()
            .find(|p| self.ready(p))
            .map(|p| p.id);
    }

    fn top_ready_index(&self) -> Option<usize> {
        let top = self.top_ready?;
        self.pending.binary_search_by(|p| p.id.cmp(&top)).ok()
    }

    fn is_member(&self, node: NodeId) -> bool {
        (node.0 as usize) < MAX_NODES && self.members.contains(node)
    }

    /// Releases through the highest ready pending entry at or below `upto` (all of them
    /// with `None`).
    fn release_ready(&mut self, upto: Option<Timestamp>) {
        let mut top = None;
        for (i, p) in self.pending.iter().enumerate() {
            if upto.is_some_and(|u| p.id.ts > u) {
                break;
            }
            if self.ready(p) {
                top = Some(i);
            }
        }
        if self.require_payload {
            if let Some(i) = top {
                self.top_ready = self.top_ready.max(Some(self.pending[i].id));
            }
            if let Some(i) = self.top_ready_index() {
                self.release_through(i);
            }
        } else if let Some(i) = top {
            self.release_through(i);
        }
    }

    /// A member's view of the commit point, read from the member (hello's
    /// `lastWrite.majorityOpTime` with `lastWrite.opTime` of the same reply). It confirms
    /// the member's reports up to `committed` once the member's current stream holds
    /// `last_applied`: that proves the stream and the commit point are one history (a
    /// rollback between the report and the reading would have removed `last_applied` or
    /// killed the stream). A commit point beyond `last_applied` is capped to it and
    /// counted ([`Stats::commit_points_beyond_last_applied`]). Entries it confirms are
    /// released.
    ///
    /// # Errors
    /// [`PushError::UnknownNode`] for a removed member.
    pub fn commit_point(
        &mut self,
        node: NodeId,
        mut point: CommitPoint,
    ) -> Result<CommitOutcome, PushError> {
        if !self.is_member(node) {
            return Err(PushError::UnknownNode(node));
        }
        if point.committed.ts > point.last_applied.ts {
            self.stats.commit_points_beyond_last_applied += 1;
            point.committed = point.last_applied;
        }
        if !self.require_commit_point {
            return Ok(CommitOutcome::Outdated);
        }
        let state = &self.nodes[node.0 as usize];
        if state.commit.is_some_and(|c| point.committed.ts <= c.ts)
            || self.watermark.is_some_and(|w| point.committed.ts <= w.ts)
        {
            return Ok(CommitOutcome::Outdated);
        }
        match state.last {
            Some(last) if point.last_applied.ts <= last.ts => {}
            _ => {
                let q = &mut self.nodes[node.0 as usize].queued;
                if q.len() == MAX_QUEUED_COMMIT_POINTS {
                    q.pop_front();
                }
                q.push_back(point);
                return Ok(CommitOutcome::Queued);
            }
        }
        // The stream is at or past `last_applied`: it must have reported that very entry.
        let held = self
            .pending
            .binary_search_by(|p| p.id.cmp(&point.last_applied))
            .ok()
            .is_some_and(|i| self.pending[i].reporters.contains(node));
        if !held {
            self.stats.commit_points_not_on_stream += 1;
            return Ok(CommitOutcome::NotOnStream);
        }
        self.apply_commit(node, point.committed);
        Ok(CommitOutcome::Applied)
    }

    /// The member's stream reads the entries it reports from now on from its oplog after
    /// the member reported `committed` as its commit point (hello's
    /// `lastWrite.majorityOpTime`, capped at its `lastWrite.opTime`). Such an entry with
    /// `ts <= committed.ts` is committed: MongoDB keeps a member's commit point on its own
    /// history and never rolls back a committed entry, so the member's oplog up to
    /// `committed` never changes afterwards, and whatever is read from it later at or
    /// below that point is committed. This confirms entries as a lagging stream reads
    /// them (a restart catching up on a long backlog), where [`Merge::commit_point`] has
    /// to wait until the stream reaches the reading's `last_applied`. `None` stops it.
    /// The pipeline sets it per batch, from a reading received before the batch's read
    /// began; it is forgotten when the member's stream restarts.
    pub fn set_read_commit(&mut self, node: NodeId, committed: Option<EntryId>) {
        if let Some(n) = self.nodes.get_mut(node.0 as usize).filter(|n| n.member) {
            n.read_commit = committed;
        }
    }

    fn apply_commit(&mut self, node: NodeId, committed: EntryId) {
        let n = &mut self.nodes[node.0 as usize];
        if n.commit.is_some_and(|c| committed.ts <= c.ts) {
            return;
        }
        n.commit = Some(committed);
        self.stats.commit_points_applied += 1;
        self.release_ready(Some(committed.ts));
    }

    /// The member's stream reported `id`: queued commit points whose `last_applied` it is
    /// take effect; those it passed without reporting are dropped. Returns the commit
    /// point to apply once the report is recorded.
    fn take_queued_commit(&mut self, node: NodeId, id: EntryId) -> Option<EntryId> {
        let q = &mut self.nodes[node.0 as usize].queued;
        let mut apply = None;
        while let Some(front) = q.front() {
            if front.last_applied.ts > id.ts {
                break;
            }
            let point = q.pop_front()?;
            if point.last_applied == id {
                apply = apply.max(Some(point.committed));
            } else {
                self.stats.commit_points_not_on_stream += 1;
            }
        }
        apply
    }

    /// Takes one member's report of one entry.
    ///
    /// # Errors
    /// [`PushError::NotIncreasing`] when `report.id.ts` is not above the member's previous
    /// report (the report is not applied), [`PushError::UnknownNode`] for a removed member.
    pub fn push(&mut self, node: NodeId, report: Report<P>) -> Result<Pushed, PushError> {
        if !self.is_member(node) {
            return Err(PushError::UnknownNode(node));
        }
        let state = &mut self.nodes[node.0 as usize];
        if let Some(prev) = state.last {
            if report.id.ts <= prev.ts {
                return Err(PushError::NotIncreasing {
                    node,
                    previous: prev,
                    got: report.id,
                });
            }
        }
        state.last = Some(report.id);
        // Read after a commit point that covers it: this entry, and everything this
        // stream reported before it, is committed (see `set_read_commit`).
        let read_committed = (self.require_commit_point
            && state.read_commit.is_some_and(|c| report.id.ts <= c.ts))
        .then_some(report.id);
        let queued_commit = if state.queued.is_empty() {
            None
        } else {
            self.take_queued_commit(node, report.id)
        };
        if read_committed.is_some() {
            self.stats.read_after_commit_point += 1;
        }
        let queued_commit = queued_commit.max(read_committed);

        if self.watermark.is_some_and(|w| report.id.ts <= w.ts)
            || (self.require_payload && self.decided.is_some_and(|d| report.id <= d))
        {
            self.stats.stale_reports += 1;
            if let Some(c) = queued_commit {
                self.apply_commit(node, c);
            }
            return Ok(Pushed::Stale);
        }
        let pushed = self.record(node, report);
        match queued_commit {
            Some(c) if pushed != Ok(Pushed::Diverged) => {
                let before = self.stats.committed + self.stats.discarded;
                self.apply_commit(node, c);
                if self.stats.committed + self.stats.discarded > before {
                    return Ok(Pushed::Released);
                }
                pushed
            }
            _ => pushed,
        }
    }

    fn record(&mut self, node: NodeId, report: Report<P>) -> Result<Pushed, PushError> {
        // Fast path: a new entry beyond everything pending (the member furthest ahead).
        let idx = match self.pending.back() {
            None => None,
            Some(last) if last.id < report.id => None,
            Some(_) => Some(self.pending.binary_search_by(|p| p.id.cmp(&report.id))),
        };
        let idx = match idx {
            None | Some(Err(_)) => {
                let pos = match idx {
                    Some(Err(pos)) => pos,
                    _ => self.pending.len(),
                };
                let mut reporters = NodeSet::EMPTY;
                reporters.insert(node);
                self.pending.insert(
                    pos,
                    Pending {
                        id: report.id,
                        digest: report.digest,
                        reporters,
                        diverged: NodeSet::EMPTY,
                        payload: report.payload,
                    },
                );
                pos
            }
            Some(Ok(pos)) => {
                let p = &mut self.pending[pos];
                match (p.digest, report.digest) {
                    (Some(expected), Some(found)) if expected != found => {
                        if !p.diverged.contains(node) {
                            p.diverged.insert(node);
                            self.stats.divergences += 1;
                            self.events.push_back(Event::Divergence {
                                id: p.id,
                                agreeing: p.reporters,
                                expected,
                                node,
                                found,
                            });
                        }
                        return Ok(Pushed::Diverged);
                    }
                    (None, Some(d)) => p.digest = Some(d),
                    _ => {}
                }
                p.reporters.insert(node);
                let unblocks = p.payload.is_none() && report.payload.is_some() && pos == 0;
                if p.payload.is_none() {
                    p.payload = report.payload;
                }
                if unblocks && self.require_payload && self.ready(&self.pending[0]) {
                    // The entry holding back the release got its payload: everything up
                    // to the last ready entry can go now.
                    let last = self.top_ready_index().unwrap_or(0);
                    return Ok(if self.release_through(last) {
                        Pushed::Released
                    } else {
                        Pushed::Pending
                    });
                }
                pos
            }
        };
        if !self.ready(&self.pending[idx]) {
            return Ok(Pushed::Pending);
        }
        if self.require_payload {
            self.top_ready = self.top_ready.max(Some(self.pending[idx].id));
        }
        if self.release_through(idx) {
            Ok(Pushed::Released)
        } else {
            Ok(Pushed::Pending)
        }
    }

    /// Releases pending entries `0..=idx`, where `idx` is ready, then the entries sharing
    /// its `ts`. Stops early at an entry that is ready but waits for its payload; returns
    /// whether anything was released.
    fn release_through(&mut self, idx: usize) -> bool {
        let ts = self.pending[idx].id.ts;
        let mut released = false;
        for _ in 0..=idx {
            if self.pending.front().is_some_and(|p| self.blocked(p)) {
                return released;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            released = true;
            self.emit(p);
        }
        // Same ts, other term: a branch that lost.
        while self.pending.front().is_some_and(|p| p.id.ts == ts) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if self.require_payload {
                self.decided = self.decided.max(Some(p.id));
            }
            self.stats.discarded += 1;
            self.events.push_back(Event::Discarded {
                id: p.id,
                payload: p.payload,
                reporters: p.reporters,
            });
        }
        if self.require_payload && self.top_ready.is_some_and(|t| Some(t) <= self.decided) {
            self.top_ready = None;
        }
        released
    }

    fn emit(&mut self, p: Pending<P>) {
        if self.require_payload {
            self.decided = self.decided.max(Some(p.id));
        }

        if self.ready(&p) {
            self.stats.committed += 1;
            // Never moves backwards: the watermark only ever advances to a committed entry.
            self.watermark = Some(p.id);
            self.events.push_back(Event::Committed {
                id: p.id,
                payload: p.payload,
                reporters: p.reporters,
            });
        } else {
            self.stats.discarded += 1;
            self.events.push_back(Event::Discarded {
                id: p.id,
                payload: p.payload,
                reporters: p.reporters,
            });
        }
    }

    /// The next released event, oldest first.
    pub fn pop_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    /// All released events, oldest first.
    pub fn drain_events(&mut self) -> std::collections::vec_deque::Drain<'_, Event<P>> {
        self.events.drain(..)
    }

    /// The last committed entry (or the start position): everything at or below it is
    /// decided.
    pub fn watermark(&self) -> Option<EntryId> {
        self.watermark
    }

    /// Entries not released yet (waiting for a quorum, a commit point or a payload).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The quorum in force.
    pub fn quorum(&self) -> usize {
        self.quorum as usize
    }

    /// The current members.
    pub fn members(&self) -> NodeSet {
        self.members
    }

    /// The last entry a member reported since its last reset.
    pub fn node_position(&self, node: NodeId) -> Option<EntryId> {
        self.nodes
            .get(node.0 as usize)
            .filter(|n| n.member)
            .and_then(|n| n.last)
    }

    /// The member's commit point, confirmed against its current stream.
    pub fn node_commit_point(&self, node: NodeId) -> Option<EntryId> {
        self.nodes
            .get(node.0 as usize)
            .filter(|n| n.member)
            .and_then(|n| n.commit)
    }

    /// Members that reported entries beyond the watermark, i.e. that hold pending entries
    /// the quorum has not confirmed yet. When [`Merge::pending_len`] grows past the
    /// pipeline's bound, it stops reading from these members; the others catch up and
    /// commit, or the pending state stays bounded while the quorum is stalled.
    pub fn nodes_ahead(&self) -> NodeSet {
        let mut s = NodeSet::EMPTY;
        let w = self.watermark.map(|w| w.ts);
        for (i, n) in self.nodes.iter().enumerate() {
            if n.member && n.last.is_some_and(|l| Some(l.ts) > w) {
                s.insert(NodeId(i as u8));
            }
        }
        s
    }

    /// Counters since creation.
    pub fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod raft_tests;

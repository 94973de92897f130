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
//! (up to 64; MongoDB allows 50). The quorum `q` defaults to a majority of the voting
//! members, arbiters included (they vote but hold no oplog, so they never confirm an
//! entry); see [`resolve_quorum`], which rejects a quorum the data-bearing members can
//! never reach.
//!
//! **Input.** Each member's tailer calls [`Merge::push`] for every entry of that member's
//! oplog, in oplog order (strictly increasing `ts`), starting at or before the watermark.
//! When a tailer restarts (reconnect, killed cursor, rollback) the pipeline calls
//! [`Merge::node_reset`] and the tailer re-sends from the watermark: the engine forgets
//! that member's earlier reports, because after a rollback the member may no longer hold
//! them.
//!
//! **Commit.** An entry is committed when `q` distinct members reported the same
//! [`EntryId`] with the same content digest. Committed entries are released in `ts` order,
//! each exactly once.
//!
//! **Discard.** When an entry at `ts = X` commits, every pending entry below `X` that has
//! not reached `q` can never commit: the `q` members that confirmed `X` each reported, in
//! order, every entry of their oplog before `X` (they all started at or before the
//! watermark), and MongoDB's log-matching property makes those prefixes identical; so an
//! entry below `X` on the committed history was reported by all of them. Such entries are
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
//! # Known limit of commit-by-observation
//!
//! "Seen by a majority" is what this engine can observe; "majority committed" is what
//! MongoDB guarantees durable. They differ in one corner that Raft calls figure 8: an
//! entry written by primary P in term T, replicated to a minority, then carried to a
//! majority by P re-elected in term T+2 before P commits anything of its own term, can
//! still be rolled back if P fails at that moment and a member holding a term-T+1 branch
//! wins. MongoDB's own commit point never advances over such an entry. It needs two
//! elections in quick succession around the same primary; the property tests generate
//! histories that respect leader completeness for every entry ever held by a majority,
//! which is the condition under which the engine's output equals the committed history.

use std::collections::VecDeque;

pub use quorumtail_oplog::EntryId;

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
    /// More members than the engine tracks.
    #[error("{0} data-bearing members is more than the {MAX_NODES} the merge can track (MongoDB allows 50)")]
    TooManyMembers(usize),
    /// Quorum of zero.
    #[error("quorum must be at least 1")]
    Zero,
    /// Quorum larger than the data-bearing members.
    #[error("quorum {quorum} can never be reached: only {data_bearing} members hold an oplog (arbiters vote but never confirm an entry); use a quorum between 1 and {data_bearing}")]
    Unreachable {
        /// Requested quorum.
        quorum: usize,
        /// Data-bearing members.
        data_bearing: usize,
    },
}

/// The quorum a replica set uses, and how it was derived.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct QuorumInfo {
    /// Confirmations required to commit an entry.
    pub quorum: usize,
    /// Majority of the voting members (data-bearing + arbiters).
    pub majority: usize,
    /// Whether `quorum` is below the majority: entries can then be emitted that are later
    /// rolled back.
    pub below_majority: bool,
}

/// Resolves the quorum for a set of `data_bearing` members and `arbiters`, with an optional
/// explicit override.
///
/// # Errors
/// [`QuorumError`] when there are no members, too many, a zero quorum, or a quorum (given
/// or derived) that the data-bearing members can never reach, e.g. one data-bearing member
/// and two arbiters.
pub fn resolve_quorum(
    data_bearing: usize,
    arbiters: usize,
    explicit: Option<usize>,
) -> Result<QuorumInfo, QuorumError> {
    if data_bearing == 0 {
        return Err(QuorumError::NoMembers);
    }
    if data_bearing > MAX_NODES {
        return Err(QuorumError::TooManyMembers(data_bearing));
    }
    let majority = (data_bearing + arbiters) / 2 + 1;
    let quorum = explicit.unwrap_or(majority);
    if quorum == 0 {
        return Err(QuorumError::Zero);
    }
    if quorum > data_bearing {
        return Err(QuorumError::Unreachable {
            quorum,
            data_bearing,
        });
    }
    Ok(QuorumInfo {
        quorum,
        majority,
        below_majority: quorum < majority,
    })
}

#[derive(Debug)]
struct Pending<P> {
    id: EntryId,
    digest: Option<u64>,
    reporters: NodeSet,
    diverged: NodeSet,
    payload: Option<P>,
}

#[derive(Clone, Copy, Debug, Default)]
struct NodeState {
    member: bool,
    last: Option<EntryId>,
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
}

/// The merge state of one replica set. See the crate docs for the specification.
#[derive(Debug)]
pub struct Merge<P> {
    quorum: u32,
    members: NodeSet,
    nodes: Vec<NodeState>,
    watermark: Option<EntryId>,
    pending: VecDeque<Pending<P>>,
    events: VecDeque<Event<P>>,
    stats: Stats,
    require_payload: bool,
    /// The highest entry released (committed or discarded). With payloads required,
    /// entries can be discarded while the watermark waits below them; a member that
    /// restarts from the watermark must not bring them back.
    decided: Option<EntryId>,
    /// The highest pending entry that has the quorum (kept so that a payload unblocking
    /// the release finds how far to release without scanning the backlog).
    top_quorum: Option<EntryId>,
}

impl<P> Merge<P> {
    /// An engine for `nodes` members (ids `0..nodes`) and the given quorum, ignoring
    /// everything at or before `start` (the checkpoint, or the start position).
    ///
    /// # Errors
    /// [`QuorumError`] as in [`resolve_quorum`] (with no arbiters).
    pub fn new(nodes: usize, quorum: usize, start: Option<EntryId>) -> Result<Self, QuorumError> {
        resolve_quorum(nodes, 0, Some(quorum))?;
        let mut m = Merge {
            quorum: quorum as u32,
            members: NodeSet::EMPTY,
            nodes: Vec::with_capacity(nodes),
            watermark: start,
            pending: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            require_payload: false,
            decided: None,
            top_quorum: None,
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

    /// The entry that reached the quorum but cannot be released because no member sent
    /// its payload yet, with the members that reported it. `None` when nothing waits (or
    /// payloads are not required).
    pub fn awaiting_payload(&self) -> Option<(EntryId, NodeSet)> {
        let p = self.pending.front()?;
        (self.blocked(p)).then_some((p.id, p.reporters))
    }

    fn blocked(&self, p: &Pending<P>) -> bool {
        self.require_payload && p.payload.is_none() && p.reporters.len() >= self.quorum
    }

    /// Adds a member; it must report from the watermark on. The quorum is unchanged: call
    /// [`Merge::set_quorum`] with the recomputed value.
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
            last: None,
        };
        self.members.insert(id);
        Ok(id)
    }

    /// Removes a member and forgets its reports. The quorum is unchanged: call
    /// [`Merge::set_quorum`] with the recomputed value.
    pub fn remove_node(&mut self, node: NodeId) {
        if self.is_member(node) {
            self.forget(node);
            self.nodes[node.0 as usize] = NodeState::default();
            self.members.remove(node);
        }
    }

    /// Changes the quorum; entries that now reach it are released.
    ///
    /// # Errors
    /// [`QuorumError`] when `quorum` is 0 or exceeds the current members.
    pub fn set_quorum(&mut self, quorum: usize) -> Result<(), QuorumError> {
        resolve_quorum(self.members.len() as usize, 0, Some(quorum))?;
        self.quorum = quorum as u32;
        self.recompute_top_quorum();
        if let Some(idx) = self.top_quorum_index() {
            self.release_through(idx);
        }
        if !self.require_payload {
            self.top_quorum = None;
        }
        Ok(())
    }

    /// The member's tailer restarted and will re-send from the watermark: forget what it
    /// reported (it may have been rolled back) and accept its stream from the start again.
    pub fn node_reset(&mut self, node: NodeId) {
        if self.is_member(node) {
            self.forget(node);
            self.nodes[node.0 as usize].last = None;
        }
    }

    fn forget(&mut self, node: NodeId) {
        for p in self.pending.iter_mut() {
            p.reporters.remove(node);
            p.diverged.remove(node);
        }
        if self.require_payload {
            self.recompute_top_quorum();
        }
    }

    fn recompute_top_quorum(&mut self) {
        self.top_quorum = self
            .pending
            .iter()
            .rev()
            .find(|p| p.reporters.len() >= self.quorum)
            .map(|p| p.id);
    }

    fn top_quorum_index(&self) -> Option<usize> {
        let top = self.top_quorum?;
        self.pending.binary_search_by(|p| p.id.cmp(&top)).ok()
    }

    fn is_member(&self, node: NodeId) -> bool {
        (node.0 as usize) < MAX_NODES && self.members.contains(node)
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

        if self.watermark.is_some_and(|w| report.id.ts <= w.ts)
            || (self.require_payload && self.decided.is_some_and(|d| report.id <= d))
        {
            self.stats.stale_reports += 1;
            return Ok(Pushed::Stale);
        }

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
                if unblocks && self.require_payload && p.reporters.len() >= self.quorum {
                    // The entry holding back the release got its payload: everything up
                    // to the last entry with a quorum can go now.
                    let last = self.top_quorum_index().unwrap_or(0);
                    return Ok(if self.release_through(last) {
                        Pushed::Released
                    } else {
                        Pushed::Pending
                    });
                }
                pos
            }
        };
        if self.pending[idx].reporters.len() < self.quorum {
            return Ok(Pushed::Pending);
        }
        if self.require_payload {
            self.top_quorum = self.top_quorum.max(Some(self.pending[idx].id));
        }
        if self.release_through(idx) {
            Ok(Pushed::Released)
        } else {
            Ok(Pushed::Pending)
        }
    }

    /// Releases pending entries `0..=idx`, where `idx` has reached the quorum, then the
    /// entries sharing its `ts`. Stops early at an entry that has the quorum but waits for
    /// its payload; returns whether anything was released.
    fn release_through(&mut self, idx: usize) -> bool {
        let ts = self.pending[idx].id.ts;
        let quorum = self.quorum;
        let mut released = false;
        for _ in 0..=idx {
            if self.pending.front().is_some_and(|p| self.blocked(p)) {
                return released;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            released = true;
            self.emit(p, quorum);
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
        if self.require_payload && self.top_quorum.is_some_and(|t| Some(t) <= self.decided) {
            self.top_quorum = None;
        }
        released
    }

    fn emit(&mut self, p: Pending<P>, quorum: u32) {
        if self.require_payload {
            self.decided = self.decided.max(Some(p.id));
        }

        if p.reporters.len() >= quorum {
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

    /// Entries reported by fewer than a quorum so far.
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

//! The merge engine, [`Merge`]: the pending entries of one replica set with the members
//! that reported them, each member's position and commit point, and the commit, discard
//! and watermark rules of the crate docs' specification.

use std::collections::VecDeque;

use crate::{
    resolve_quorum, resolve_voting_quorum, CommitOutcome, CommitPoint, EntryId, Event, NodeId,
    NodeSet, PushError, Pushed, QuorumError, Report, Timestamp, Voting, MAX_NODES,
};

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

/// How many pending entries have `ts <= limit` (`pending` is sorted by identity): a
/// galloping search from the front. The entries a commit reading makes ready are few and at
/// the front, while the backlog behind them can be long; a plain binary search over the
/// whole deque touched a cache line per probe on every reading (7% of quorumtail's CPU in
/// the e2e profile), this touches about twice the log of the answer.
fn gallop_at_or_below<P>(pending: &VecDeque<Pending<P>>, limit: Timestamp) -> usize {
    let len = pending.len();
    let below = |i: usize| pending[i].id.ts <= limit;
    if len == 0 || !below(0) {
        return 0;
    }
    // Invariant: below(lo); hi is len or !below(hi).
    let (mut lo, mut step) = (0usize, 1usize);
    let mut hi = len;
    while lo + step < len {
        if below(lo + step) {
            lo += step;
            step *= 2;
        } else {
            hi = lo + step;
            break;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if below(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo + 1
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
        // The highest ready entry, searched from the top of the range where one can be: no
        // entry after the quorum-th highest position the voters reported has a quorum
        // (each voter's reports are its stream's entries in order, and forgetting a
        // member's reports resets its position). Without this bound every report of a
        // member far ahead of the others rescanned the whole backlog behind it.
        let top = match self.quorum_bound() {
            None => None,
            Some(bound) => {
                let limit = upto.map_or(bound, |u| u.min(bound));
                let end = gallop_at_or_below(&self.pending, limit);
                (0..end).rev().find(|&i| self.ready(&self.pending[i]))
            }
        };
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

    /// The `quorum`-th highest `ts` the voters' streams reported: no entry after it can
    /// have a quorum of voters' reports. `None` while fewer voters than the quorum
    /// reported anything.
    fn quorum_bound(&self) -> Option<Timestamp> {
        let q = self.quorum as usize;
        if q == 0 {
            return None;
        }
        // At most 64 voters: a fixed array, no allocation per call.
        let mut lasts = [Timestamp::default(); MAX_NODES];
        let mut n = 0;
        for v in self.voters.iter() {
            if let Some(l) = self.nodes[v.0 as usize].last {
                lasts[n] = l.ts;
                n += 1;
            }
        }
        if n < q {
            return None;
        }
        let lasts = &mut lasts[..n];
        lasts.sort_unstable_by(|a, b| b.cmp(a));
        Some(lasts[q - 1])
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
mod gallop_tests {
    use super::*;

    #[test]
    fn gallop_counts_what_a_binary_search_counts() {
        // Every length up to 70 (several doublings, odd ends), timestamps with repeats
        // (two terms of one ts), every limit from below the first to above the last.
        for len in 0..70u32 {
            let pending: VecDeque<Pending<()>> = (0..len)
                .map(|i| Pending {
                    id: EntryId::new(Timestamp::new(10 + i / 2, 0), i64::from(i % 2)),
                    digest: None,
                    reporters: NodeSet::EMPTY,
                    diverged: NodeSet::EMPTY,
                    payload: None,
                })
                .collect();
            for t in 0..(len / 2 + 13) {
                let limit = Timestamp::new(t, 0);
                assert_eq!(
                    gallop_at_or_below(&pending, limit),
                    pending.partition_point(|p| p.id.ts <= limit),
                    "len {len}, limit {t}"
                );
            }
        }
    }
}

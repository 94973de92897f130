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
//!
//! # Layout
//!
//! This file holds the specification and the interface types (node sets, reports,
//! events, quorum resolution); the engine itself, [`Merge`], is in `engine.rs`.

pub use quorumtail_oplog::{EntryId, Timestamp};

mod engine;

pub use engine::{Merge, Stats};

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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod raft_tests;

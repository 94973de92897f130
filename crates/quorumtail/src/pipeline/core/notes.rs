//! What the core says: every log line is a [`Note`] the caller logs at [`Note::level`].
//! Warnings that would repeat on every retry (a refusal, a commit point ahead of its
//! member, a low quorum) are produced once by the core, until something changes.

use quorumtail_oplog::{EntryId, Timestamp};

/// Something worth a log line. The caller logs it; the level is [`Note::level`].
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// Resuming from the stored checkpoint.
    ResumingFromCheckpoint(EntryId),
    /// No checkpoint: starting after `[start] position`.
    StartingAfter(Timestamp),
    /// No checkpoint: the start was chosen from the members' oplogs.
    StartChosen(EntryId),
    /// The member read whole changed.
    WholeSwitched {
        /// The previous one, if any.
        from: Option<String>,
        /// The new one.
        to: String,
        /// Why.
        reason: String,
    },
    /// Enough voters answer to confirm entries.
    QuorumReachable {
        /// Voters being read.
        tailing: usize,
        /// The quorum.
        quorum: usize,
    },
    /// Too few voters answer: nothing can be confirmed.
    QuorumUnreachable {
        /// Voters being read.
        tailing: usize,
        /// The quorum.
        quorum: usize,
        /// The voters not being read, with their state.
        out: Vec<String>,
    },
    /// The shard was removed: draining.
    Draining,
    /// A member reported another replica set's configuration (ignored).
    WrongReplicaSet {
        /// The set it reported.
        set: String,
        /// The expected set.
        expected: String,
    },
    /// A newer replica set configuration was adopted.
    Configuration {
        /// Version.
        version: i64,
        /// Term.
        term: i64,
        /// Voting data-bearing members.
        voters: usize,
        /// Non-voting data-bearing members.
        non_voters: usize,
        /// Arbiters.
        arbiters: usize,
        /// Hidden members.
        hidden: usize,
        /// `writeMajorityCount`.
        write_majority: usize,
    },
    /// An explicit quorum is below the replica set's write majority (said once).
    LowQuorum {
        /// The configured quorum.
        quorum: usize,
        /// The write majority.
        write_majority: usize,
    },
    /// The configuration has members the member list does not name; they are read too.
    UnlistedMembers {
        /// Their addresses.
        members: Vec<String>,
        /// The list came from `[[shards]]` (the operator can fix it: a warning).
        listed: bool,
    },
    /// A member left the membership; its tailer stops.
    MemberRemoved(String),
    /// A member joined the membership; its tailer starts.
    MemberAdded {
        /// Address.
        addr: String,
        /// Votes.
        voter: bool,
        /// Hidden.
        hidden: bool,
    },
    /// Members, votes or the quorum changed.
    MembershipChanged {
        /// (address, voter) before.
        before: Vec<(String, bool)>,
        /// (address, voter) after.
        after: Vec<(String, bool)>,
        /// Quorum before.
        quorum_before: usize,
        /// Quorum after.
        quorum_after: usize,
    },
    /// A member refused to serve (said once per reason).
    Refused {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A member no longer holds the resume point.
    Lacks {
        /// Address.
        addr: String,
        /// The target.
        target: EntryId,
        /// Its oldest entry after it.
        first: Option<EntryId>,
    },
    /// A member's commit point ran ahead of its own newest entry (said once per member).
    CommitBeyondNewest {
        /// Address.
        addr: String,
        /// Its commit point.
        commit_point: EntryId,
        /// Its newest entry.
        newest: EntryId,
    },
    /// A commit point reading was dropped: the stream passed its newest entry.
    CommitPointDropped {
        /// Address.
        addr: String,
        /// The newest entry of the reading.
        newest: EntryId,
    },
    /// The merge backlog is full: a member ahead is paused.
    Paused {
        /// Address.
        addr: String,
        /// Entries pending.
        pending: usize,
    },
}

/// How loud a [`Note`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Detail.
    Debug,
    /// Normal operation.
    Info,
    /// Needs attention.
    Warn,
    /// Something is wrong with the deployment.
    Error,
}

impl Note {
    /// The log level.
    pub fn level(&self) -> Level {
        match self {
            Note::CommitPointDropped { .. } => Level::Debug,
            Note::QuorumUnreachable { .. }
            | Note::WrongReplicaSet { .. }
            | Note::LowQuorum { .. }
            | Note::UnlistedMembers { listed: true, .. }
            | Note::Lacks { .. }
            | Note::CommitBeyondNewest { .. }
            | Note::Paused { .. } => Level::Warn,
            Note::Refused { .. } => Level::Error,
            _ => Level::Info,
        }
    }
}

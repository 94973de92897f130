//! Logs what the shard core notes ([`Note`]), one structured line each, at the note's
//! level.

use tracing::{debug, error, info, warn};

use super::core::Note;

/// Logs `note` for `shard`.
pub(crate) fn log(shard: &str, note: &Note) {
    match note {
        Note::ResumingFromCheckpoint(cp) => {
            info!(%shard, checkpoint = %cp, "resuming from checkpoint");
        }
        Note::StartingAfter(ts) => {
            info!(%shard, after = %ts, "no checkpoint: starting after the configured position");
        }
        Note::StartChosen(from) => {
            info!(%shard, from = %from, "no checkpoint: start position chosen from the members' oplogs");
        }
        Note::WholeSwitched {
            from: Some(from),
            to,
            reason,
        } => {
            info!(%shard, from = %from, to = %to, reason = %reason, "reading whole entries from another member");
        }
        Note::WholeSwitched {
            from: None,
            to,
            reason,
        } => {
            info!(%shard, node = %to, reason = %reason, "reading whole entries from this member, identities from the others");
        }
        Note::QuorumReachable { tailing, quorum } => {
            info!(%shard, tailing, quorum, "quorum reachable: enough members answer to confirm entries");
        }
        Note::QuorumUnreachable {
            tailing,
            quorum,
            out,
        } => {
            warn!(%shard, tailing, quorum, members_out = ?out, "quorum unreachable: fewer members than the quorum are being read, so nothing can be confirmed; holding back until enough return");
        }
        Note::Draining => {
            info!(%shard, "shard removed from the cluster: draining before stopping");
        }
        Note::WrongReplicaSet { set, expected } => {
            warn!(%shard, set = %set, expected = %expected, "member reported the configuration of another replica set; ignored");
        }
        Note::Configuration {
            version,
            term,
            voters,
            non_voters,
            arbiters,
            hidden,
            write_majority,
        } => {
            info!(%shard, version, term, voters, non_voters, arbiters, hidden, write_majority, "replica set configuration");
        }
        Note::LowQuorum {
            quorum,
            write_majority,
        } => {
            warn!(%shard, quorum, write_majority, "the configured quorum is below the replica set's write majority: with [pipeline] release = \"quorum\" entries MongoDB later rolls back can be emitted");
        }
        Note::UnlistedMembers {
            members,
            listed: true,
        } => {
            warn!(%shard, members = ?members, "the replica set configuration has members that [[shards]] does not list (hidden or delayed members, or members added since): reading them too; list them to silence this");
        }
        Note::UnlistedMembers {
            members,
            listed: false,
        } => {
            info!(%shard, members = ?members, "reading members of the replica set configuration that discovery does not list (hidden or delayed members, or members added since)");
        }
        Note::MemberRemoved(addr) => {
            info!(%shard, node = %addr, "member removed: stopping its tailer");
        }
        Note::MemberAdded {
            addr,
            voter,
            hidden,
        } => {
            info!(%shard, node = %addr, voter, hidden, "member added: starting its tailer");
        }
        Note::MembershipChanged {
            before,
            after,
            quorum_before,
            quorum_after,
        } => {
            info!(%shard, before = ?before, after = ?after, quorum_before, quorum_after, "shard membership changed (member, voter)");
        }
        Note::Refused { addr, reason } => {
            error!(%shard, node = %addr, %reason, "member refused");
        }
        Note::Lacks {
            addr,
            target,
            first,
        } => {
            warn!(%shard, node = %addr, target = %target, first = ?first.map(|f| f.to_string()), "member no longer holds the resume point");
        }
        Note::CommitBeyondNewest {
            addr,
            commit_point,
            newest,
        } => {
            warn!(%shard, node = %addr, commit_point = %commit_point, newest_entry = %newest, "member reports a commit point beyond its own newest entry; it confirms nothing past that entry");
        }
        Note::CommitPointDropped { addr, newest } => {
            debug!(%shard, node = %addr, newest_entry = %newest, "commit point reading dropped: the member's stream passed its newest entry without holding it");
        }
        Note::Paused { addr, pending } => {
            warn!(%shard, node = %addr, pending, "merge backlog full: pausing a member that is ahead of the quorum");
        }
    }
}

//! The shard's rules that are not about membership or the member read whole: the start
//! position, the resume-point-lost verdict, backpressure and quorum reachability.

use std::sync::atomic::Ordering::Relaxed;

use quorumtail_merge::NodeId;
use quorumtail_oplog::{EntryId, Timestamp};
use quorumtail_tailer::{pred, ResumeTarget};

use super::{Action, Member, MemberState, Note, ShardCore, Step};
use crate::config::StartPosition;
use crate::pipeline::ShardError;

impl<P: Clone> ShardCore<P> {
    /// No checkpoint: once the probes decide the start, creates the merge there, with
    /// the members and votes known so far.
    pub(super) fn start_if_decided(&mut self) -> Step {
        let probes: Vec<_> = self.members.values().filter_map(|m| m.probe).collect();
        let Some((target, start)) = decide_start(&probes, self.quorum, self.config.start) else {
            return Ok(());
        };
        self.note(Note::StartChosen(target.id));
        let n = self
            .members
            .keys()
            .map(|k| k.0 as usize + 1)
            .max()
            .unwrap_or(0);
        let mut engine = self.new_engine(n, 1, start)?;
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
        // A transaction may straddle the chosen start: its beginning is not ours to emit,
        // so its end is skipped rather than an error.
        let skip_before = match self.config.start {
            StartPosition::Earliest | StartPosition::Snapshot => target.id.ts,
            _ => Timestamp::new(target.id.ts.time, target.id.ts.increment.saturating_add(1)),
        };
        self.out.push(Action::ResetEmitter {
            skip_orphans_before: Some(skip_before),
        });
        self.set_target(target);
        Ok(())
    }

    /// Members lack the resume point `target`: if fewer voters than the quorum may still
    /// hold it, the changes after it can no longer be read from a quorum, and the shard
    /// stops rather than skip them.
    pub(super) fn resume_point_verdict(&self, target: ResumeTarget) -> Step {
        let lacks = |m: &Member| m.lacks.is_some_and(|(t, _)| t == target);
        let holders = self
            .members
            .values()
            .filter(|m| m.voter && !lacks(m))
            .count();
        if holders >= self.quorum {
            return Ok(());
        }
        Err(ShardError::ResumePointLost {
            shard: self.shard.clone(),
            target: target.id,
            lacking: self
                .members
                .values()
                .filter(|m| lacks(m))
                .map(|m| match m.lacks.and_then(|(_, f)| f) {
                    Some(f) => format!("{} (its oldest entry after it: {})", m.addr, f.ts),
                    None => m.addr.clone(),
                })
                .collect::<Vec<_>>()
                .join(", "),
            holders,
            members: self.members.len(),
            quorum: self.quorum,
        })
    }

    /// The backpressure rule, applied after every member message:
    ///
    /// * past `max_pending` unconfirmed entries, the members ahead of the quorum (that
    ///   reported entries beyond the watermark) are set aside, so the others catch up; at
    ///   half the bound all are read again;
    /// * a member set aside that is no longer ahead (the others caught up past it) is read
    ///   again at once: it adds nothing to the backlog, and its channel may hold what the
    ///   next release needs;
    /// * the member read whole is never set aside while the release waits for its content,
    ///   and is read again if it was;
    /// * members are set aside only while a voter that is tailing and not ahead is read:
    ///   when every member being read is ahead, the release waits on what their channels
    ///   carry (content, a commit point reading their stream must reach, the notice of a
    ///   rollback), and setting them aside would stop it for good.
    ///
    /// So the backlog stays near the bound while others catch up or a quorum is stalled,
    /// and the release is never left waiting on a channel that is not read.
    pub(super) fn backpressure(&mut self) {
        let Some(e) = self.engine.as_ref() else {
            return;
        };
        let pending = e.pending_len();
        let ahead = e.nodes_ahead();
        let needed = self
            .whole
            .filter(|_| self.key_only && e.awaiting_payload().is_some());
        let all = pending <= self.config.max_pending / 2;
        let catching_up = |n: NodeId, m: &Member| {
            m.voter && m.state == MemberState::Tailing && !ahead.contains(n)
        };
        let someone_catches_up = self.members.iter().any(|(n, m)| catching_up(*n, m));
        let resume: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(n, m)| {
                m.paused
                    && (all || !someone_catches_up || !ahead.contains(**n) || needed == Some(**n))
            })
            .map(|(n, _)| *n)
            .collect();
        for n in resume {
            if let Some(m) = self.members.get_mut(&n) {
                m.paused = false;
                self.out.push(Action::Resume(n));
            }
        }
        if pending > self.config.max_pending && someone_catches_up {
            for n in ahead.iter().filter(|n| Some(*n) != needed) {
                let Some(m) = self.members.get_mut(&n).filter(|m| !m.paused) else {
                    continue;
                };
                m.paused = true;
                let addr = m.addr.clone();
                self.out.push(Action::Pause(n));
                self.note(Note::Paused { addr, pending });
            }
        }
    }

    /// Says once, loudly, when fewer voters than the quorum are being tailed (nothing can
    /// be emitted then), and again when enough are back.
    pub(super) fn check_quorum_reachable(&mut self) {
        // Only members that answered count: a member still connecting for the first time
        // may never answer. Until a quorum answered or every member had its first answer
        // or failure, the shard is starting (neither reachable nor reported unreachable).
        let voters = self.members.values().filter(|m| m.voter);
        let out: Vec<String> = voters
            .clone()
            .filter(|m| m.state != MemberState::Tailing)
            .map(|m| format!("{} ({})", m.addr, m.state))
            .collect();
        let tailing = voters.count() - out.len();
        let reachable = tailing >= self.quorum;
        let starting = self.quorum_reachable.is_none()
            && self
                .members
                .values()
                .any(|m| m.state == MemberState::Connecting);
        if (!reachable && starting) || Some(reachable) == self.quorum_reachable {
            return;
        }
        self.quorum_reachable = Some(reachable);
        self.stats
            .quorum_reachable
            .store(u64::from(reachable), Relaxed);
        let quorum = self.quorum;
        self.note(if reachable {
            Note::QuorumReachable { tailing, quorum }
        } else {
            Note::QuorumUnreachable {
                tailing,
                quorum,
                out,
            }
        });
    }
}

/// With `q` probes in (each a member's oldest and newest entry), picks the start for a
/// shard without a checkpoint, as a resume target and the merge's start:
/// `latest`: the q-th newest member's newest entry (held by at least q members once they
/// catch up), not emitted; `earliest`: the q-th largest oldest entry (the oldest entry a
/// quorum still holds), emitted itself. `None` while too few probes are in, and for
/// `after` (that start needs no probe).
pub fn decide_start(
    probes: &[(Option<EntryId>, Option<EntryId>)],
    q: usize,
    pos: StartPosition,
) -> Option<(ResumeTarget, Option<EntryId>)> {
    if probes.len() < q || q == 0 {
        return None;
    }
    let qth_largest = |mut ids: Vec<EntryId>| {
        ids.sort_by(|a, b| b.cmp(a));
        ids.get(q - 1).copied()
    };
    match pos {
        StartPosition::Latest => {
            let t = qth_largest(probes.iter().filter_map(|p| p.1).collect())?;
            Some((ResumeTarget { id: t, exact: true }, Some(t)))
        }
        // A shard that reaches the core with `snapshot` has no snapshot of its own (it
        // appeared after the snapshot was planned): like a new shard, it is read from the
        // beginning of its oplog.
        StartPosition::Earliest | StartPosition::Snapshot => {
            let t = qth_largest(probes.iter().filter_map(|p| p.0).collect())?;
            Some((
                ResumeTarget { id: t, exact: true },
                Some(EntryId::at(pred(t.ts))),
            ))
        }
        StartPosition::After(_) => None,
    }
}

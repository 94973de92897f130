//! One test per rule of the core, driven by hand: inputs in, the actions checked.
//! Payloads are the entries' identities, so a release shows which entry it carries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumtail_merge::{Event, NodeId, Report};
use quorumtail_oplog::{EntryId, Timestamp};
use quorumtail_tailer::{
    CommitReading, ConfigSource, MemberConfig, ReadMode, ReplicaSetConfig, ResumeTarget,
};

use super::*;

mod membership;
use crate::config::{Release, StartPosition, WholeEntries};
use crate::pipeline::stats::ShardStats;
use crate::pipeline::{ShardError, ShardSpec};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const C: NodeId = NodeId(2);

fn id(i: u32) -> EntryId {
    EntryId::new(Timestamp::new(i, 0), 1)
}

fn spec(members: &[&str], quorum: Option<usize>) -> ShardSpec {
    ShardSpec {
        name: "s0".into(),
        replica_set: Some("rs0".into()),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        arbiters: 0,
        quorum,
        listed: true,
    }
}

fn config(whole: WholeEntries, release: Release, max_pending: usize) -> CoreConfig {
    CoreConfig {
        max_pending,
        start: StartPosition::Latest,
        whole_entries: whole,
        release,
    }
}

/// A core and a hand-driven clock.
struct H {
    core: ShardCore<EntryId>,
    now: Now,
    first: Vec<Action<EntryId>>,
}

impl H {
    fn new(spec: ShardSpec, config: CoreConfig, checkpoint: Option<EntryId>) -> H {
        let (core, first) =
            ShardCore::new(spec, config, checkpoint, Arc::new(ShardStats::default())).unwrap();
        H {
            core,
            now: Now {
                at: Instant::now(),
                unix_ms: 1,
            },
            first,
        }
    }

    /// Three members `a`, `b`, `c`, quorum 2, resuming at entry 1.
    fn three(whole: WholeEntries, release: Release) -> H {
        H::new(
            spec(&["a:1", "b:1", "c:1"], None),
            config(whole, release, 100),
            Some(id(1)),
        )
    }

    fn step(&mut self, input: Input<EntryId>) -> Vec<Action<EntryId>> {
        let mut out = Vec::new();
        self.core.step(self.now, input, &mut out);
        out
    }

    fn send(&mut self, node: NodeId, msg: MemberMsg<EntryId>) -> Vec<Action<EntryId>> {
        self.step(Input::Member(node, msg))
    }

    fn advance(&mut self, d: Duration) {
        self.now.at += d;
    }

    fn probe(&mut self, node: NodeId, primary: bool, me: &str) -> Vec<Action<EntryId>> {
        self.send(
            node,
            MemberMsg::Probe {
                oldest: Some(id(1)),
                newest: Some(id(1)),
                primary,
                me: Some(me.to_owned()),
            },
        )
    }

    fn started(&mut self, node: NodeId) -> Vec<Action<EntryId>> {
        let mode = self.mode(node);
        self.send(node, MemberMsg::Started { mode })
    }

    /// What the core last asked `node` to read.
    fn mode(&self, node: NodeId) -> ReadMode {
        self.core.members[&node].mode
    }

    /// A batch of `ids` as `node`'s current stream holds them.
    fn batch(&mut self, node: NodeId, ids: &[u32], at_end: bool) -> Vec<Action<EntryId>> {
        let whole = self.core.stream_mode(node) != Some(ReadMode::Identity);
        let reports = ids
            .iter()
            .map(|&i| Report {
                id: id(i),
                digest: whole.then_some(u64::from(i)),
                payload: whole.then_some(id(i)),
            })
            .collect();
        self.send(
            node,
            MemberMsg::Batch {
                reports,
                bytes: 100,
                at_end,
                read_after: None,
            },
        )
    }

    fn commit_point(&mut self, node: NodeId, committed: u32, last: u32) -> Vec<Action<EntryId>> {
        self.send(
            node,
            MemberMsg::CommitPoint(CommitReading {
                committed: id(committed),
                last_applied: id(last),
            }),
        )
    }

    /// Every member answered and streams; `a` is the primary (read whole when key-only).
    fn all_tailing(&mut self) {
        for (n, me) in [(A, "a:1"), (B, "b:1"), (C, "c:1")] {
            self.probe(n, n == A, me);
        }
        for n in [A, B, C] {
            self.started(n);
        }
    }
}

fn committed(actions: &[Action<EntryId>]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Release(Event::Committed { id, payload, .. }) => {
                assert_eq!(Some(*id), *payload, "released with its own content");
                Some(id.ts.time)
            }
            _ => None,
        })
        .collect()
}

fn modes(actions: &[Action<EntryId>]) -> Vec<(NodeId, ReadMode)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetMode(n, m) => Some((*n, *m)),
            _ => None,
        })
        .collect()
}

fn notes(actions: &[Action<EntryId>]) -> Vec<&Note> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Note(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn failure(actions: &[Action<EntryId>]) -> Option<&ShardError> {
    actions.iter().find_map(|a| match a {
        Action::Fail(e) => Some(e),
        _ => None,
    })
}

fn rs_config(version: i64, members: &[(&str, bool, bool)], me: &str) -> ReplicaSetConfig {
    ReplicaSetConfig {
        set: "rs0".into(),
        version,
        term: 1,
        members: members
            .iter()
            .map(|&(host, voter, hidden)| MemberConfig {
                host: host.into(),
                voter,
                arbiter: false,
                hidden,
                priority: if hidden { 0.0 } else { 1.0 },
                delay_secs: 0,
            })
            .collect(),
        write_majority: None,
        source: ConfigSource::GetConfig,
        me: Some(me.into()),
    }
}

// --- start position ---

#[test]
fn a_checkpoint_is_the_first_resume_target_before_any_tailer_starts() {
    let h = H::three(WholeEntries::One, Release::Quorum);
    let target = h
        .first
        .iter()
        .position(
            |a| matches!(a, Action::Target(t) if *t == ResumeTarget { id: id(1), exact: true }),
        )
        .expect("target published");
    let starts: Vec<usize> = (h.first.iter().enumerate())
        .filter(|(_, a)| {
            matches!(
                a,
                Action::Start {
                    mode: ReadMode::Identity,
                    ..
                }
            )
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(starts.len(), 3, "{:?}", h.first);
    assert!(starts.iter().all(|&s| s > target));
}

#[test]
fn latest_starts_at_the_quorum_th_newest_entry_and_earliest_at_the_quorum_th_oldest() {
    let probes = [
        (Some(id(1)), Some(id(9))),
        (Some(id(3)), Some(id(7))),
        (Some(id(2)), Some(id(8))),
    ];
    let exact = |i| ResumeTarget {
        id: id(i),
        exact: true,
    };
    assert_eq!(
        decide_start(&probes, 2, StartPosition::Latest),
        Some((exact(8), Some(id(8))))
    );
    // Earliest: entry 2 is emitted itself (the merge starts just below it).
    let (t, start) = decide_start(&probes, 2, StartPosition::Earliest).unwrap();
    assert_eq!(t, exact(2));
    assert!(start.unwrap().ts < id(2).ts);
    assert_eq!(decide_start(&probes[..1], 2, StartPosition::Latest), None);
    let empty = [(None, None), (None, None)];
    assert_eq!(decide_start(&empty, 2, StartPosition::Latest), None);
}

#[test]
fn without_a_checkpoint_the_start_is_chosen_once_a_quorum_of_members_answered() {
    let mut h = H::new(
        spec(&["a:1", "b:1", "c:1"], None),
        config(WholeEntries::All, Release::Quorum, 100),
        None,
    );
    assert!(!h.first.iter().any(|a| matches!(a, Action::Target(_))));
    let probe = |newest| MemberMsg::Probe {
        oldest: Some(id(1)),
        newest: Some(id(newest)),
        primary: false,
        me: None,
    };
    assert!(h
        .send(A, probe(9))
        .iter()
        .all(|a| !matches!(a, Action::Target(_))));
    assert!(h.core.engine().is_none());
    let out = h.send(B, probe(5));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Target(t) if t.id == id(5))));
    assert!(out.iter().any(|a| matches!(
        a,
        Action::ResetEmitter {
            skip_orphans_before: Some(_)
        }
    )));
    assert_eq!(h.core.engine().unwrap().watermark(), Some(id(5)));
}

// --- release ---

#[test]
fn release_waits_for_the_commit_point_then_moves_the_resume_target() {
    let mut h = H::three(WholeEntries::All, Release::CommitPoint);
    h.all_tailing();
    h.batch(A, &[2, 3], true);
    assert!(
        committed(&h.batch(B, &[2, 3], true)).is_empty(),
        "a quorum is not enough"
    );
    let out = h.commit_point(A, 2, 3);
    assert_eq!(committed(&out), vec![2]);
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Target(t) if t.id == id(2))));
    assert_eq!(committed(&h.commit_point(B, 3, 3)), vec![3]);
}

#[test]
fn two_contents_for_one_entry_stop_the_shard() {
    let mut h = H::three(WholeEntries::All, Release::Quorum);
    h.all_tailing();
    h.batch(A, &[2], true);
    let out = h.send(
        B,
        MemberMsg::Batch {
            reports: vec![Report {
                id: id(2),
                digest: Some(99),
                payload: Some(id(2)),
            }],
            bytes: 1,
            at_end: true,
            read_after: None,
        },
    );
    assert!(matches!(failure(&out), Some(ShardError::Divergence { .. })));
}

// --- resume point lost ---

#[test]
fn the_resume_point_is_lost_when_fewer_voters_than_the_quorum_may_hold_it() {
    let mut h = H::three(WholeEntries::All, Release::Quorum);
    h.all_tailing();
    let target = ResumeTarget {
        id: id(1),
        exact: true,
    };
    let lacks = |first| MemberMsg::Lacks {
        target,
        first: Some(id(first)),
    };
    let out = h.send(A, lacks(5));
    assert!(failure(&out).is_none(), "two of three may still hold it");
    assert_eq!(h.core.member_state(A), Some(&MemberState::LacksResumePoint));
    let out = h.send(B, lacks(6));
    match failure(&out) {
        Some(ShardError::ResumePointLost {
            holders,
            quorum,
            lacking,
            ..
        }) => {
            assert_eq!((*holders, *quorum), (1, 2));
            assert!(
                lacking.contains("a:1") && lacking.contains("b:1"),
                "{lacking}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_member_that_restarts_holds_the_resume_point_again() {
    let mut h = H::three(WholeEntries::All, Release::Quorum);
    h.all_tailing();
    let target = ResumeTarget {
        id: id(1),
        exact: true,
    };
    h.send(
        A,
        MemberMsg::Lacks {
            target,
            first: None,
        },
    );
    h.started(A); // it found the target after all (another sync source, a restore)
    let out = h.send(
        B,
        MemberMsg::Lacks {
            target,
            first: None,
        },
    );
    assert!(failure(&out).is_none());
}

// --- the member read whole ---

#[test]
fn the_first_member_to_answer_is_read_whole_then_the_primary() {
    let mut h = H::three(WholeEntries::One, Release::Quorum);
    let out = h.probe(B, false, "b:1");
    assert_eq!(modes(&out), vec![(B, ReadMode::Whole)]);
    assert!(h
        .probe(C, false, "c:1")
        .iter()
        .all(|a| !matches!(a, Action::SetMode(..))));
    let out = h.probe(A, true, "a:1");
    assert_eq!(
        modes(&out),
        vec![(B, ReadMode::Identity), (A, ReadMode::Whole)]
    );
    assert_eq!(h.core.whole(), Some(A));
}

#[test]
fn a_whole_member_that_goes_down_is_replaced_by_the_member_furthest_ahead() {
    let mut h = H::three(WholeEntries::One, Release::Quorum);
    h.all_tailing();
    h.batch(B, &[2], false);
    h.batch(C, &[2, 3], false);
    let out = h.send(
        A,
        MemberMsg::Down {
            reason: "reset".into(),
        },
    );
    assert_eq!(
        modes(&out),
        vec![(A, ReadMode::Identity), (C, ReadMode::Whole)]
    );
    assert!(
        matches!(notes(&out)[..], [Note::WholeSwitched { ref reason, .. }] if reason.contains("down: reset"))
    );
}

#[test]
fn a_whole_member_that_passed_the_waiting_entry_is_replaced_at_once() {
    let mut h = H::three(WholeEntries::One, Release::Quorum);
    h.all_tailing();
    // b and c hold entry 2 (identities); a, read whole, went on another branch past it.
    h.batch(B, &[2], false);
    h.batch(C, &[2], false);
    assert_eq!(
        h.core.engine().unwrap().awaiting_payload().map(|p| p.0),
        Some(id(2))
    );
    let out = h.batch(A, &[3], false);
    assert_eq!(
        modes(&out),
        vec![(A, ReadMode::Identity), (B, ReadMode::Whole)]
    );
    h.started(A);
    h.started(B);
    assert_eq!(committed(&h.batch(B, &[2], false)), vec![2]);
}

#[test]
fn a_whole_member_behind_at_the_end_of_its_oplog_is_replaced_after_switch_after() {
    let mut h = H::three(WholeEntries::One, Release::Quorum);
    h.all_tailing();
    h.send(A, MemberMsg::Idle); // at the end of its oplog, without entry 2
    h.batch(B, &[2], false);
    h.batch(C, &[2], false);
    h.advance(SWITCH_AFTER / 2);
    assert!(modes(&h.step(Input::Tick)).is_empty(), "too early");
    h.advance(SWITCH_AFTER / 2);
    let out = h.step(Input::Tick);
    assert_eq!(
        modes(&out),
        vec![(A, ReadMode::Identity), (B, ReadMode::Whole)]
    );
}

#[test]
fn a_whole_member_working_through_a_backlog_is_left_alone_until_it_stalls() {
    let mut h = H::three(WholeEntries::One, Release::Quorum);
    h.all_tailing();
    h.batch(B, &[2], false);
    h.batch(C, &[2], false);
    h.step(Input::Tick); // the wait starts
    for _ in 0..4 {
        h.advance(SWITCH_AFTER / 2);
        // Full batches of older entries... (the backlog is below the watermark here, so
        // an empty full batch stands for them).
        let out = h.batch(A, &[], false);
        assert!(
            modes(&out).is_empty(),
            "a member that delivers is not replaced"
        );
    }
    h.advance(SWITCH_AFTER);
    let out = h.step(Input::Tick);
    assert_eq!(
        modes(&out),
        vec![(A, ReadMode::Identity), (B, ReadMode::Whole)]
    );
    assert!(
        matches!(notes(&out)[..], [Note::WholeSwitched { ref reason, .. }] if reason.contains("delivers nothing"))
    );
}

#[test]
fn without_a_reporter_to_switch_to_the_wait_starts_over() {
    let mut h = H::three(WholeEntries::One, Release::Quorum);
    h.all_tailing();
    h.send(A, MemberMsg::Idle);
    h.batch(B, &[2], false);
    h.batch(C, &[2], false);
    h.send(B, MemberMsg::Down { reason: "x".into() });
    h.send(C, MemberMsg::Down { reason: "x".into() });
    h.advance(SWITCH_AFTER * 2);
    assert!(modes(&h.step(Input::Tick)).is_empty());
    assert_eq!(h.core.waiting_since, Some(h.now.at));
}

// --- backpressure ---

#[test]
fn members_ahead_are_paused_past_max_pending_and_resumed_at_half() {
    let mut h = H::new(
        spec(&["a:1", "b:1", "c:1"], None),
        config(WholeEntries::All, Release::Quorum, 4),
        Some(id(1)),
    );
    h.all_tailing();
    assert!(!h
        .batch(A, &[2, 3, 4, 5], false)
        .iter()
        .any(|a| matches!(a, Action::Pause(_))));
    let out = h.batch(A, &[6], false);
    assert!(out.iter().any(|a| matches!(a, Action::Pause(A))));
    assert!(matches!(notes(&out)[..], [Note::Paused { pending: 5, .. }]));
    // b catches up on three: two pending, half the bound: a is read again.
    let out = h.batch(B, &[2, 3, 4], false);
    assert_eq!(committed(&out), vec![2, 3, 4]);
    assert!(out.iter().any(|a| matches!(a, Action::Resume(A))));
}

#[test]
fn the_whole_member_is_not_paused_while_the_release_waits_for_its_content() {
    let mut h = H::new(
        spec(&["a:1", "b:1", "c:1"], None),
        config(WholeEntries::One, Release::Quorum, 1),
        Some(id(1)),
    );
    h.all_tailing();
    let mut out = h.batch(B, &[2, 3], false);
    out.extend(h.batch(C, &[2, 3], false)); // a quorum, no content: waits for a
    assert!(out.iter().any(|a| matches!(a, Action::Pause(B))));
    assert!(out.iter().any(|a| matches!(a, Action::Pause(C))));
    // a fails: b is read whole (and read again); its identity stream is still running.
    let out = h.send(A, MemberMsg::Down { reason: "x".into() });
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::SetMode(B, ReadMode::Whole))));
    assert!(out.iter().any(|a| matches!(a, Action::Resume(B))));
    let out = h.batch(B, &[4], false);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Pause(B))),
        "{out:?}"
    );
    h.started(B);
    assert_eq!(committed(&h.batch(B, &[2, 3, 4], false)), vec![2, 3]);
}

// --- quorum reachability ---

#[test]
fn quorum_reachability_is_said_once_per_change() {
    let mut h = H::three(WholeEntries::All, Release::Quorum);
    assert!(notes(&h.started(A)).is_empty(), "still starting");
    let out = h.started(B);
    assert!(matches!(
        notes(&out)[..],
        [Note::QuorumReachable {
            tailing: 2,
            quorum: 2
        }]
    ));
    assert!(notes(&h.started(C)).is_empty());
    assert!(notes(&h.send(A, MemberMsg::Down { reason: "x".into() })).is_empty());
    let out = h.send(
        B,
        MemberMsg::Refused {
            reason: "arbiter".into(),
        },
    );
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Note(Note::QuorumUnreachable { tailing: 1, .. }))));
    // The same refusal again is not said again.
    let out = h.send(
        B,
        MemberMsg::Refused {
            reason: "arbiter".into(),
        },
    );
    assert!(notes(&out).is_empty(), "{out:?}");
    assert_eq!(
        h.core.member_state(B).unwrap().to_string(),
        "refused: arbiter"
    );
}

/// Regression: members set aside while ahead stayed set aside after the others passed
/// them, until the backlog halved, which needed their channels: every member ended set
/// aside and the shard stopped for good.
#[test]
fn a_member_set_aside_is_read_again_once_the_others_pass_it() {
    let mut h = H::new(
        spec(&["a:1", "b:1", "c:1"], None),
        config(WholeEntries::All, Release::Quorum, 2),
        Some(id(1)),
    );
    h.all_tailing();
    let out = h.batch(A, &[2, 3, 4], false);
    assert!(out.iter().any(|a| matches!(a, Action::Pause(A))));
    // b confirms a's entries and runs ahead itself: a is behind it now and read again.
    let out = h.batch(B, &[2, 3, 4, 5, 6, 7], false);
    assert_eq!(committed(&out), vec![2, 3, 4]);
    assert!(out.iter().any(|a| matches!(a, Action::Resume(A))));
    assert!(out.iter().any(|a| matches!(a, Action::Pause(B))));
}

/// Regression: with the commit-point release, a backlog larger than `max_pending` (a
/// restart far behind) had every member ahead of the watermark with its commit point
/// reading queued until its stream reached the reading's newest entry; all were set
/// aside, so no stream moved and nothing was ever released.
#[test]
fn catching_up_past_max_pending_with_the_commit_point_release_does_not_stall() {
    let mut h = H::new(
        spec(&["a:1", "b:1", "c:1"], None),
        config(WholeEntries::All, Release::CommitPoint, 2),
        Some(id(1)),
    );
    h.all_tailing();
    for n in [A, B, C] {
        h.commit_point(n, 9, 9); // queued: the streams have not reached entry 9
    }
    let out = h.batch(A, &[2, 3, 4], false);
    assert!(
        out.iter().any(|a| matches!(a, Action::Pause(A))),
        "b and c catch up"
    );
    let out = h.batch(B, &[2, 3, 4], false);
    assert!(
        out.iter().any(|a| matches!(a, Action::Pause(B))),
        "c catches up"
    );
    // Every member is ahead now, and the commit point waits on their streams.
    let out = h.batch(C, &[2, 3, 4], false);
    assert!(
        out.iter().any(|a| matches!(a, Action::Resume(A))),
        "{out:?}"
    );
    assert!(
        out.iter().any(|a| matches!(a, Action::Resume(B))),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|a| matches!(a, Action::Pause(_))),
        "{out:?}"
    );
    let mut released = Vec::new();
    for n in [A, B, C] {
        released.extend(committed(&h.batch(n, &[5, 6, 7, 8, 9], true)));
    }
    assert_eq!(released, vec![2, 3, 4, 5, 6, 7, 8, 9]);
}

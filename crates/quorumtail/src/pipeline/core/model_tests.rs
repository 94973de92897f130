//! The core against a model of a MongoDB replica set and of the tailers.
//!
//! The model generates the committed history first (entries of one term at ts 10, 20,
//! ...), then runs a random schedule over it: members replicate its prefix at their own
//! pace; a minority of members may take entries of a stale primary (another term) that
//! are rolled back later, which kills their stream; the commit point advances only
//! through entries a majority holds; tailers fail, restart, lack the resume point, send
//! batches into bounded channels that the core may set aside, and restart their streams
//! when the core changes what they read; time passes in ticks.
//!
//! After the schedule, everything heals and the model runs until quiet. The property:
//! the released entries are exactly the committed history after the checkpoint, once
//! each, in order, each with its own content; and every action was legal when taken
//! (nothing released beyond the commit point with `release = "commit_point"`, nothing
//! released that is not in the history, at most one member read whole, the resume target
//! never moving back nor past what was released, the member read whole never set aside
//! while the release waits for its content, no shard failure). The expectations come from
//! the model's history, never from the code under test.
//!
//! `MODEL_TRACE=1` prints every input and the actions it caused (run one failing case).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use quorumtail_merge::{Event, NodeId, Report};
use quorumtail_oplog::{EntryId, Timestamp};
use quorumtail_tailer::{CommitReading, ReadMode, ResumeTarget};

use super::*;
use crate::config::{Release, StartPosition, WholeEntries};
use crate::pipeline::stats::ShardStats;
use crate::pipeline::ShardSpec;

/// Messages a tailer's channel holds at most (batches and others alike).
const CHANNEL: usize = 4;
/// The stale primary's term; the committed history's is higher.
const STALE_TERM: i64 = 1;
const TERM: i64 = 2;

#[derive(Clone, Debug)]
enum Op {
    /// The member replicates the next committed entry (rolling back a stale suffix first).
    Replicate(usize),
    /// The member takes an entry of a stale primary (only a minority ever does).
    Diverge(usize),
    /// The commit point advances as far as a majority holds the history.
    Commit,
    /// The member's tailer reads up to this many entries into its channel.
    Deliver(usize, u8),
    /// The core reads the member's channel (unless it set it aside).
    Read(usize),
    /// The member reports its commit point and newest entry.
    CommitReading(usize),
    /// The member's connection fails.
    Fail(usize),
    /// The member's tailer reconnects.
    Restart(usize),
    /// The member becomes primary (it says so when it next connects).
    Elect(usize),
    /// The member's capped oplog drops all but its newest entry of the history (only a
    /// minority ever does, so a quorum still holds every resume point).
    Truncate(usize),
    /// Time passes, in milliseconds.
    Tick(u16),
}

fn arb_op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..n).prop_map(Op::Replicate),
        1 => (0..n).prop_map(Op::Diverge),
        2 => Just(Op::Commit),
        4 => (0..n, 1u8..5).prop_map(|(i, k)| Op::Deliver(i, k)),
        5 => (0..n).prop_map(Op::Read),
        2 => (0..n).prop_map(Op::CommitReading),
        1 => (0..n).prop_map(Op::Fail),
        2 => (0..n).prop_map(Op::Restart),
        1 => (0..n).prop_map(Op::Elect),
        1 => (0..n).prop_map(Op::Truncate),
        2 => (0u16..1500).prop_map(Op::Tick),
    ]
}

/// One member's tailer: its current stream and its channel.
#[derive(Debug, Default)]
struct Tailer {
    /// What the core asked it to read.
    mode: Option<ReadMode>,
    /// The stream is open (its position: the next index of the member's log to send, or
    /// `None` while the member is behind the target and has not replicated it yet).
    open: bool,
    cursor: Option<usize>,
    /// The target the open stream started at.
    started_at: Option<EntryId>,
    inbox: VecDeque<MemberMsg<EntryId>>,
    paused: bool,
    /// The newest commit point the member reported to this tailer; what it reads later is
    /// read after it (kept across streams: the member's oplog up to it never changes).
    known_reading: Option<EntryId>,
}

struct Model {
    n: usize,
    q: usize,
    history: Vec<EntryId>,
    /// Entries of the history each member holds (a prefix, from `oldest` on).
    held: Vec<usize>,
    /// The first entry of the history each member still holds (its capped oplog).
    oldest: Vec<usize>,
    /// A stale primary's entries after that prefix, rolled back later.
    stale: Vec<Vec<EntryId>>,
    /// Entries of the history majority-committed.
    commit: usize,
    primary: usize,
    tailers: Vec<Tailer>,
    target: Option<ResumeTarget>,
    core: ShardCore<EntryId>,
    now: Now,
    release_at_commit_point: bool,
    key_only: bool,
    /// The checkpoint's index in the history.
    start: usize,
    released: Vec<EntryId>,
    seen: Coverage,
}

/// What a run went through, so the generator's reach can be checked.
#[derive(Clone, Copy, Debug, Default)]
struct Coverage {
    /// Members set aside.
    pauses: usize,
    /// Changes of the member read whole.
    switches: usize,
    /// Entries discarded (rolled back or minority-only).
    discards: usize,
    /// Members that said they lack the resume point.
    lacks: usize,
}

impl Model {
    fn log(&self, i: usize) -> Vec<EntryId> {
        let mut l = self.history[self.oldest[i]..self.held[i]].to_vec();
        l.extend(&self.stale[i]);
        l
    }

    fn input(&mut self, input: Input<EntryId>) -> Result<(), TestCaseError> {
        let mut out = Vec::new();
        let trace = std::env::var("MODEL_TRACE").is_ok();
        if trace {
            println!("IN {input:?}");
        }
        self.core.step(self.now, input, &mut out);
        if trace {
            for a in &out {
                println!("   {a:?}");
            }
        }
        for a in out {
            self.act(a)?;
        }
        // The release is never left waiting on a channel that is not read: the member
        // read whole while it waits for content.
        if let (Some(w), Some(e)) = (self.core.whole(), self.core.engine()) {
            if e.awaiting_payload().is_some() {
                prop_assert!(
                    !self.tailers[w.0 as usize].paused,
                    "whole member set aside while the release waits for it"
                );
            }
        }
        Ok(())
    }

    fn act(&mut self, a: Action<EntryId>) -> Result<(), TestCaseError> {
        match a {
            Action::Start { node, mode, .. } => {
                let t = &mut self.tailers[node.0 as usize];
                prop_assert!(t.mode.is_none(), "started twice");
                t.mode = Some(mode);
                self.connect(node.0 as usize);
            }
            Action::SetMode(node, mode) => {
                self.seen.switches += usize::from(mode == ReadMode::Whole);
                let i = node.0 as usize;
                self.tailers[i].mode = Some(mode);
                // The tailer restarts its stream from the current target at once.
                if self.tailers[i].open {
                    self.connect(i);
                }
            }
            Action::Pause(node) => {
                self.seen.pauses += 1;
                let t = &mut self.tailers[node.0 as usize];
                prop_assert!(!t.paused, "paused twice");
                t.paused = true;
            }
            Action::Resume(node) => {
                let t = &mut self.tailers[node.0 as usize];
                prop_assert!(t.paused, "resumed a member that was not paused");
                t.paused = false;
            }
            Action::Target(t) => {
                let idx = self.history.iter().position(|e| *e == t.id);
                prop_assert!(idx.is_some(), "target {} is not in the history", t.id);
                if let Some(old) = self.target {
                    prop_assert!(t.id > old.id, "target moved back");
                    let last = self.released.last().copied();
                    prop_assert_eq!(Some(t.id), last, "target is not the last release");
                }
                self.target = Some(t);
            }
            Action::Release(Event::Committed { id, payload, .. }) => {
                prop_assert_eq!(Some(id), payload, "released with other content");
                let next = self.start + 1 + self.released.len();
                prop_assert_eq!(
                    Some(&id),
                    self.history.get(next),
                    "out of order or not committed"
                );
                if self.release_at_commit_point {
                    prop_assert!(
                        next < self.commit,
                        "{} released beyond the commit point",
                        id
                    );
                }
                self.released.push(id);
            }
            Action::Release(Event::Discarded { id, .. }) => {
                self.seen.discards += 1;
                prop_assert!(!self.history.contains(&id), "discarded committed {}", id);
            }
            Action::Release(Event::Divergence { .. }) => prop_assert!(false, "divergence event"),
            Action::Stop(_) => prop_assert!(false, "no member leaves in this model"),
            Action::Fail(e) => prop_assert!(false, "shard failed: {}", e),
            Action::ResetEmitter { .. } | Action::Note(_) => {}
        }
        let whole = self
            .tailers
            .iter()
            .filter(|t| t.mode == Some(ReadMode::Whole))
            .count();
        if self.key_only {
            prop_assert!(whole <= 1, "{} members read whole", whole);
        }
        Ok(())
    }

    /// The tailer (re)connects: probe, then a stream from the current target.
    fn connect(&mut self, i: usize) {
        let log = self.log(i);
        let t = &mut self.tailers[i];
        t.inbox.push_back(MemberMsg::Probe {
            oldest: log.first().copied(),
            newest: log.last().copied(),
            primary: self.primary == i,
            me: Some(format!("m{i}:1")),
        });
        t.inbox.push_back(MemberMsg::Started {
            mode: t.mode.unwrap_or_default(),
        });
        t.open = true;
        t.cursor = None;
        t.started_at = self.target.map(|t| t.id);
        self.position(i);
    }

    /// Places a stream waiting for its target once the member holds it, or reports that
    /// it passed the target without holding it.
    fn position(&mut self, i: usize) {
        let log = self.log(i);
        let t = &mut self.tailers[i];
        if !t.open || t.cursor.is_some() {
            return;
        }
        let Some(target) = t.started_at else {
            t.cursor = Some(0);
            return;
        };
        if let Some(k) = log.iter().position(|e| *e == target) {
            t.cursor = Some(k);
        } else if let Some(first) = log.iter().find(|e| e.ts >= target.ts) {
            self.seen.lacks += 1;
            t.inbox.push_back(MemberMsg::Lacks {
                target: ResumeTarget {
                    id: target,
                    exact: true,
                },
                first: Some(*first),
            });
            t.open = false;
        }
    }

    fn kill(&mut self, i: usize, reason: &str) {
        let t = &mut self.tailers[i];
        if t.open {
            t.open = false;
            t.inbox.push_back(MemberMsg::Down {
                reason: reason.into(),
            });
        }
    }

    fn replicate(&mut self, i: usize) {
        if !self.stale[i].is_empty() {
            self.stale[i].clear();
            self.kill(i, "rollback");
        } else if self.held[i] < self.history.len() {
            self.held[i] += 1;
        }
        self.position(i);
    }

    fn deliver(&mut self, i: usize, k: usize) {
        self.position(i);
        let log = self.log(i);
        let t = &mut self.tailers[i];
        if !t.open || t.inbox.len() >= CHANNEL {
            return;
        }
        let Some(c) = t.cursor else {
            t.inbox.push_back(MemberMsg::Idle);
            return;
        };
        let end = (c + k).min(log.len());
        if end == c {
            t.inbox.push_back(MemberMsg::Idle);
            return;
        }
        let whole = t.mode != Some(ReadMode::Identity);
        let reports = log[c..end]
            .iter()
            .map(|e| Report {
                id: *e,
                digest: whole.then(|| e.ts.as_u64() ^ e.term.unwrap_or(0) as u64),
                payload: whole.then_some(*e),
            })
            .collect();
        t.cursor = Some(end);
        t.inbox.push_back(MemberMsg::Batch {
            reports,
            bytes: 1,
            at_end: end == log.len(),
            read_after: t.known_reading,
        });
    }

    fn read(&mut self, i: usize) -> Result<(), TestCaseError> {
        while !self.tailers[i].paused {
            let Some(m) = self.tailers[i].inbox.pop_front() else {
                break;
            };
            self.input(Input::Member(NodeId(i as u8), m))?;
        }
        Ok(())
    }

    fn commit_reading(&mut self, i: usize) {
        let log = self.log(i);
        let known = self.commit.min(self.held[i]);
        let t = &mut self.tailers[i];
        if let (true, Some(last)) = (t.open && known > 0, log.last()) {
            let bound = self.history[known - 1].min(*last);
            t.known_reading = t.known_reading.max(Some(bound));
            t.inbox.push_back(MemberMsg::CommitPoint(CommitReading {
                committed: self.history[known - 1],
                last_applied: *last,
            }));
        }
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Replicate(i) => self.replicate(i),
            Op::Diverge(i) => {
                let others = (0..self.n)
                    .filter(|&j| j != i && !self.stale[j].is_empty())
                    .count();
                if others < self.n - self.q && self.stale[i].len() < 3 {
                    // After its last entry of the history, and never an identity
                    // another member holds or held: a stale entry stays on a minority.
                    let base = self.history[self.held[i] - 1].ts.time;
                    let k = self.stale[i].len() as u32;
                    let ts = Timestamp::new(base, 1 + 10 * i as u32 + k);
                    let e = EntryId::new(ts, STALE_TERM);
                    self.stale[i].push(e);
                    self.position(i);
                }
            }
            Op::Commit => {
                let mut held: Vec<usize> = (0..self.n).map(|i| self.held[i]).collect();
                held.sort_unstable_by(|a, b| b.cmp(a));
                self.commit = self.commit.max(held[self.q - 1]);
            }
            Op::Deliver(i, k) => self.deliver(i, k as usize),
            Op::Read(i) => self.read(i)?,
            Op::CommitReading(i) => self.commit_reading(i),
            Op::Fail(i) => self.kill(i, "connection reset"),
            Op::Restart(i) => {
                if !self.tailers[i].open && self.tailers[i].inbox.len() < CHANNEL {
                    self.connect(i);
                }
            }
            Op::Elect(i) => {
                if self.stale[i].is_empty() {
                    self.primary = i;
                }
            }
            Op::Truncate(i) => {
                let others = (0..self.n)
                    .filter(|&j| j != i && self.oldest[j] > 0)
                    .count();
                if others < self.n - self.q && self.oldest[i] + 1 < self.held[i] {
                    self.oldest[i] = self.held[i] - 1;
                    // The open cursor loses its position (CappedPositionLost).
                    self.kill(i, "capped position lost");
                }
            }
            Op::Tick(ms) => {
                self.now.at += Duration::from_millis(u64::from(ms));
                self.input(Input::Tick)?;
            }
        }
        Ok(())
    }

    /// Heals everything and runs until the whole history is released or nothing moves.
    /// Every member delivers and is read several times within [`SWITCH_AFTER`], as live
    /// tailers do.
    fn converge(&mut self) -> Result<(), TestCaseError> {
        for i in 0..self.n {
            while !self.stale[i].is_empty() || self.held[i] < self.history.len() {
                self.replicate(i);
            }
        }
        self.commit = self.history.len();
        for _ in 0..100 {
            for i in 0..self.n {
                if !self.tailers[i].open {
                    self.step(Op::Restart(i))?;
                }
                self.read(i)?;
                self.deliver(i, 8);
                self.commit_reading(i);
                self.read(i)?;
            }
            if self.start + 1 + self.released.len() == self.history.len() {
                return Ok(());
            }
            self.step(Op::Tick(100))?;
        }
        prop_assert!(
            false,
            "stuck: released {} of {} entries after the checkpoint; tailers {:?}",
            self.released.len(),
            self.history.len() - self.start - 1,
            self.tailers
        );
        Ok(())
    }
}

fn run(
    n: usize,
    len: usize,
    start: usize,
    key_only: bool,
    commit_point: bool,
    max_pending: usize,
    ops: Vec<Op>,
) -> Result<Coverage, TestCaseError> {
    let q = n / 2 + 1;
    let history: Vec<EntryId> = (1..=len as u32)
        .map(|i| EntryId::new(Timestamp::new(10 * i, 0), TERM))
        .collect();
    let start = start.min(len - 1);
    let spec = ShardSpec {
        name: "s0".into(),
        replica_set: None,
        members: (0..n).map(|i| format!("m{i}:1")).collect(),
        arbiters: 0,
        quorum: None,
        listed: true,
    };
    let config = CoreConfig {
        max_pending,
        start: StartPosition::Latest,
        whole_entries: if key_only {
            WholeEntries::One
        } else {
            WholeEntries::All
        },
        release: if commit_point {
            Release::CommitPoint
        } else {
            Release::Quorum
        },
    };
    let (core, first) = ShardCore::new(
        spec,
        config,
        Some(history[start]),
        Arc::new(ShardStats::default()),
    )
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut m = Model {
        n,
        q,
        held: vec![start + 1; n],
        oldest: vec![0; n],
        stale: vec![Vec::new(); n],
        commit: start + 1,
        primary: 0,
        tailers: (0..n).map(|_| Tailer::default()).collect(),
        target: None,
        core,
        now: Now {
            at: Instant::now(),
            unix_ms: 0,
        },
        release_at_commit_point: commit_point,
        key_only,
        start,
        released: Vec::new(),
        seen: Coverage::default(),
        history,
    };
    for a in first {
        m.act(a)?;
    }
    for op in ops {
        m.step(op)?;
    }
    m.converge()?;
    let expected = &m.history[start + 1..];
    prop_assert_eq!(&m.released[..], expected);
    Ok(m.seen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn three_members(
        len in 2usize..30, start in 0usize..3, key_only: bool, commit_point: bool,
        max_pending in 2usize..12, ops in proptest::collection::vec(arb_op(3), 0..300),
    ) {
        run(3, len, start, key_only, commit_point, max_pending, ops)?;
    }

    #[test]
    fn five_members(
        len in 2usize..30, start in 0usize..3, key_only: bool, commit_point: bool,
        max_pending in 2usize..12, ops in proptest::collection::vec(arb_op(5), 0..400),
    ) {
        run(5, len, start, key_only, commit_point, max_pending, ops)?;
    }
}

/// The schedules must reach the cases the property is about, or it proves little.
#[test]
fn the_generator_reaches_pauses_switches_rollbacks_and_lost_resume_points() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops = proptest::collection::vec(arb_op(3), 100..300);
    let mut total = Coverage::default();
    for case in 0..200 {
        let ops = ops.new_tree(&mut runner).unwrap().current();
        let seen = run(3, 20, case % 3, case % 2 == 0, case % 4 < 2, 4, ops).unwrap();
        total.pauses += seen.pauses;
        total.switches += seen.switches;
        total.discards += seen.discards;
        total.lacks += seen.lacks;
    }
    assert!(total.pauses > 50, "{total:?}");
    assert!(total.switches > 50, "{total:?}");
    assert!(total.discards > 50, "{total:?}");
    assert!(total.lacks > 0, "{total:?}");
    println!("{total:?}");
}

use super::*;
use proptest::prelude::*;
use quorumtail_oplog::Timestamp;
use std::collections::{BTreeSet, HashSet};

fn id(secs: u32, term: i64) -> EntryId {
    EntryId::new(Timestamp::new(secs, 1), term)
}

fn rep(i: EntryId) -> Report<&'static str> {
    Report {
        id: i,
        digest: None,
        payload: None,
    }
}

fn committed<P>(m: &mut Merge<P>) -> Vec<EntryId> {
    m.drain_events()
        .filter_map(|e| match e {
            Event::Committed { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const C: NodeId = NodeId(2);

/// The rollback pitfall: events A..C replicated, D and E written by the old primary alone,
/// then a new primary writes F, G. D and E must never be emitted.
#[test]
fn rollback_pitfall_d_and_e_are_discarded() {
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap();
    let (a, b, c) = (id(1, 1), id(2, 1), id(3, 1));
    let (d, e) = (id(4, 1), id(5, 1));
    let (f, g) = (id(5, 2), id(6, 2)); // f reuses e's ts with the new term
    for x in [a, b, c, d, e] {
        m.push(A, rep(x)).unwrap();
    }
    for x in [a, b, c, f, g] {
        m.push(B, rep(x)).unwrap();
    }
    // Nothing of the new branch is committed yet: only B has it.
    let events: Vec<_> = m.drain_events().collect();
    assert_eq!(events.len(), 3);
    for x in [a, b, c, f, g] {
        m.push(C, rep(x)).unwrap();
    }
    let events: Vec<_> = m.drain_events().collect();
    let summary: Vec<_> = events
        .iter()
        .map(|e| match e {
            Event::Committed { id, .. } => ("commit", *id),
            Event::Discarded { id, .. } => ("discard", *id),
            Event::Divergence { id, .. } => ("diverge", *id),
        })
        .collect();
    assert_eq!(
        summary,
        vec![("discard", d), ("discard", e), ("commit", f), ("commit", g)]
    );
    if let Event::Discarded { reporters, .. } = &events[0] {
        assert_eq!(reporters.iter().collect::<Vec<_>>(), vec![A]);
    }
    // The old primary comes back after its rollback and re-sends from the watermark.
    m.node_reset(A);
    for x in [f, g] {
        assert_eq!(m.push(A, rep(x)).unwrap(), Pushed::Stale);
    }
    assert_eq!(m.pending_len(), 0);
    // C's a, b, c came after A and B had committed them; A's f, g after its reset.
    assert_eq!(
        m.stats(),
        Stats {
            committed: 5,
            discarded: 2,
            stale_reports: 5,
            divergences: 0,
            ..Stats::default()
        }
    );
}

#[test]
fn rejects_streams_that_go_backwards() {
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap();
    m.push(A, rep(id(5, 1))).unwrap();
    let err = m.push(A, rep(id(5, 2))).unwrap_err();
    assert!(matches!(err, PushError::NotIncreasing { node: A, .. }));
    assert!(err.to_string().contains("strictly increase"));
    assert!(m.push(A, rep(id(4, 1))).is_err());
    m.node_reset(A);
    assert_eq!(m.push(A, rep(id(4, 1))).unwrap(), Pushed::Pending);
    assert_eq!(
        m.push(NodeId(9), rep(id(9, 1))).unwrap_err(),
        PushError::UnknownNode(NodeId(9))
    );
}

#[test]
fn start_position_ignores_older_entries() {
    let mut m: Merge<&str> = Merge::new(3, 2, Some(id(10, 1))).unwrap();
    assert_eq!(m.push(A, rep(id(10, 1))).unwrap(), Pushed::Stale);
    assert_eq!(m.push(A, rep(id(11, 1))).unwrap(), Pushed::Pending);
    assert_eq!(m.push(B, rep(id(9, 1))).unwrap(), Pushed::Stale);
    assert_eq!(m.push(B, rep(id(11, 1))).unwrap(), Pushed::Released);
    assert_eq!(committed(&mut m), vec![id(11, 1)]);
}

#[test]
fn divergent_content_is_surfaced_and_not_counted() {
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap();
    let x = id(1, 1);
    m.push(
        A,
        Report {
            id: x,
            digest: Some(7),
            payload: Some("a"),
        },
    )
    .unwrap();
    assert_eq!(
        m.push(
            B,
            Report {
                id: x,
                digest: Some(8),
                payload: Some("b")
            }
        )
        .unwrap(),
        Pushed::Diverged
    );
    match m.pop_event() {
        Some(Event::Divergence {
            id,
            expected: 7,
            found: 8,
            node: B,
            agreeing,
        }) => {
            assert_eq!(id, x);
            assert!(agreeing.contains(A));
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
    // Key-only reports (no digest) still count.
    assert_eq!(
        m.push(
            C,
            Report {
                id: x,
                digest: None,
                payload: None
            }
        )
        .unwrap(),
        Pushed::Released
    );
    match m.pop_event() {
        Some(Event::Committed {
            payload, reporters, ..
        }) => {
            assert_eq!(payload, Some("a"));
            assert_eq!(reporters.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn payload_comes_from_whichever_member_sent_one() {
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap();
    m.push(
        A,
        Report {
            id: id(1, 1),
            digest: None,
            payload: None,
        },
    )
    .unwrap();
    m.push(
        B,
        Report {
            id: id(1, 1),
            digest: None,
            payload: Some("full"),
        },
    )
    .unwrap();
    assert!(matches!(
        m.pop_event(),
        Some(Event::Committed {
            payload: Some("full"),
            ..
        })
    ));
}

fn key(i: EntryId) -> Report<&'static str> {
    Report {
        id: i,
        digest: None,
        payload: None,
    }
}

fn whole(i: EntryId, p: &'static str) -> Report<&'static str> {
    Report {
        id: i,
        digest: Some(1),
        payload: Some(p),
    }
}

#[test]
fn with_payloads_required_a_quorum_of_identities_waits_for_the_whole_entry() {
    // A reads whole entries but lags; B and C send identities only.
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap().require_payload();
    m.push(B, key(id(1, 1))).unwrap();
    m.push(B, key(id(2, 1))).unwrap(); // a branch only B holds
    m.push(C, key(id(1, 1))).unwrap();
    m.push(C, key(id(3, 1))).unwrap();
    assert_eq!(m.push(B, key(id(3, 1))), Ok(Pushed::Pending));
    let (waiting, reporters) = m.awaiting_payload().expect("(1) has the quorum");
    assert_eq!(waiting, id(1, 1));
    assert!(reporters.contains(B) && reporters.contains(C) && !reporters.contains(A));
    assert!(
        m.pop_event().is_none(),
        "nothing is released without its content"
    );

    // A's whole (1) releases it and decides (2); (3) waits for its own content.
    assert_eq!(m.push(A, whole(id(1, 1), "one")), Ok(Pushed::Released));
    let events: Vec<_> = m.drain_events().collect();
    assert!(matches!(
        events.as_slice(),
        [
            Event::Committed {
                payload: Some("one"),
                ..
            },
            Event::Discarded { .. }
        ]
    ));
    assert_eq!(m.watermark(), Some(id(1, 1)));
    assert_eq!(m.awaiting_payload().map(|a| a.0), Some(id(3, 1)));

    // B restarts from the watermark and re-sends (2): decided already, not pending again.
    m.node_reset(B);
    assert_eq!(m.push(B, key(id(2, 1))), Ok(Pushed::Stale));
    assert_eq!(m.push(B, key(id(3, 1))), Ok(Pushed::Pending));
    assert_eq!(m.push(A, whole(id(3, 1), "three")), Ok(Pushed::Released));
    let events: Vec<_> = m.drain_events().collect();
    assert!(matches!(
        events.as_slice(),
        [Event::Committed {
            payload: Some("three"),
            ..
        }]
    ));
    assert_eq!(m.pending_len(), 0);
    assert!(m.awaiting_payload().is_none());
}

#[test]
fn without_payloads_required_identities_alone_commit() {
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap();
    assert!(!m.requires_payload());
    m.push(B, key(id(1, 1))).unwrap();
    assert_eq!(m.push(C, key(id(1, 1))), Ok(Pushed::Released));
    assert!(m.awaiting_payload().is_none());
}

#[test]
fn quorum_lost_then_regained_and_quorum_changes() {
    // Five members, quorum 3; only two are up: nothing commits, pending is bounded by
    // what the two reported.
    let mut m: Merge<&str> = Merge::new(5, 3, None).unwrap();
    for s in 1..=4 {
        m.push(A, rep(id(s, 1))).unwrap();
        m.push(B, rep(id(s, 1))).unwrap();
    }
    assert_eq!(m.pending_len(), 4);
    assert_eq!(m.nodes_ahead().iter().collect::<Vec<_>>(), vec![A, B]);
    assert!(m.drain_events().next().is_none());
    // A third member returns and catches up: everything commits in order.
    for s in 1..=4 {
        m.push(C, rep(id(s, 1))).unwrap();
    }
    assert_eq!(
        committed(&mut m),
        (1..=4).map(|s| id(s, 1)).collect::<Vec<_>>()
    );
    assert!(m.nodes_ahead().is_empty());
    // Two members removed from the set: quorum 2 of 3 releases what two already hold.
    m.push(A, rep(id(5, 1))).unwrap();
    m.push(B, rep(id(5, 1))).unwrap();
    m.remove_node(NodeId(3));
    m.remove_node(NodeId(4));
    m.set_quorum(2).unwrap();
    assert_eq!(committed(&mut m), vec![id(5, 1)]);
    assert!(m.set_quorum(4).is_err());
    let n = m.add_node().unwrap();
    assert_eq!(n, NodeId(3));
    m.set_quorum(3).unwrap();
}

#[test]
fn quorum_resolution() {
    assert_eq!(
        resolve_quorum(3, 0, None).unwrap(),
        QuorumInfo {
            quorum: 2,
            majority: 2,
            write_majority: 2,
            below_majority: false
        }
    );
    assert_eq!(resolve_quorum(2, 1, None).unwrap().quorum, 2);
    assert_eq!(resolve_quorum(4, 0, None).unwrap().quorum, 3);
    assert!(resolve_quorum(3, 0, Some(1)).unwrap().below_majority);
    // writeMajorityCount = min(majority of voters, voting data-bearing members)
    // (ReplSetConfig::_calculateMajorities): one data-bearing member and two arbiters
    // majority-commit with that one member.
    let psa = resolve_quorum(1, 2, None).unwrap();
    assert_eq!((psa.quorum, psa.majority, psa.write_majority), (1, 2, 1));
    let e = resolve_quorum(1, 2, Some(2)).unwrap_err();
    assert_eq!(
        e,
        QuorumError::Unreachable {
            quorum: 2,
            data_bearing: 1
        }
    );
    assert!(e.to_string().contains("arbiters vote but never confirm"));
    // Hidden voters count; non-voters do not: 3 visible + 2 hidden voters, 1 non-voter.
    let v = Voting {
        data_bearing_voters: 5,
        non_voters: 1,
        arbiters: 0,
    };
    let q = resolve_voting_quorum(v, None).unwrap();
    assert_eq!((q.quorum, q.majority, q.write_majority), (3, 3, 3));
    // Two voters and three non-voters: the non-voters never help.
    let v = Voting {
        data_bearing_voters: 2,
        non_voters: 3,
        arbiters: 1,
    };
    assert_eq!(resolve_voting_quorum(v, None).unwrap().quorum, 2);
    assert_eq!(
        resolve_voting_quorum(v, Some(3)).unwrap_err(),
        QuorumError::Unreachable {
            quorum: 3,
            data_bearing: 2
        }
    );
    assert_eq!(
        resolve_voting_quorum(
            Voting {
                data_bearing_voters: 0,
                non_voters: 2,
                arbiters: 1
            },
            None
        )
        .unwrap_err(),
        QuorumError::NoVoters
    );
    assert_eq!(
        resolve_quorum(3, 0, Some(4)).unwrap_err(),
        QuorumError::Unreachable {
            quorum: 4,
            data_bearing: 3
        }
    );
    assert_eq!(
        resolve_quorum(0, 0, None).unwrap_err(),
        QuorumError::NoMembers
    );
    assert_eq!(
        resolve_quorum(3, 0, Some(0)).unwrap_err(),
        QuorumError::Zero
    );
}

// ---------------------------------------------------------------------------------------
// Property test: random replica-set histories, random interleavings of the node streams.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Step {
    /// The current primary writes an entry.
    Write,
    /// A partitioned former primary that still believes it is primary writes an entry.
    StaleWrite(usize),
    /// Member n pulls the next entry from the primary (rolling back first if it diverged).
    Replicate(usize),
    /// Member n is cut off from / rejoins the majority side.
    TogglePartition(usize),
    /// An election among the connected members.
    Elect,
    /// Tailer n delivers its next entry to the engine.
    Deliver(usize),
    /// Tailer n restarts (reconnect) and re-sends from the watermark.
    Restart(usize),
    /// Key-only mode: whole entries are read from member n from now on (both its tailer
    /// and the previous one restart from the watermark, as the pipeline does).
    SwitchFull(usize),
}

fn arb_step(n: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Write),
        1 => (0..n).prop_map(Step::StaleWrite),
        6 => (0..n).prop_map(Step::Replicate),
        1 => (0..n).prop_map(Step::TogglePartition),
        1 => Just(Step::Elect),
        10 => (0..n).prop_map(Step::Deliver),
        1 => (0..n).prop_map(Step::Restart),
        1 => (0..n).prop_map(Step::SwitchFull),
    ]
}

type E = EntryId;

struct Sim {
    n: usize,
    q: usize,
    logs: Vec<Vec<E>>,
    connected: Vec<bool>,
    primary: usize,
    /// Members that were primary and were partitioned before stepping down: (node, term).
    stale_primaries: Vec<(usize, i64)>,
    term: i64,
    /// The highest term each member has seen (voted in or replicated from).
    seen_term: Vec<i64>,
    ever_majority: HashSet<E>,
    cursors: Vec<usize>,
    engine: Merge<E>,
    observed_pending: HashSet<E>,
    released: Vec<Event<E>>,
    start: Option<E>,
    resets: u64,
    /// Key-only mode: the member whose reports carry payloads (the others send identities).
    full: Option<usize>,
    /// Times the release waited for a payload (coverage).
    waits: u64,
}

impl Sim {
    fn new(n: usize, start_len: usize, key_only: bool) -> Sim {
        // A shared history before the engine starts, so that `start` is a real entry.
        let history: Vec<E> = (1..=start_len as u32)
            .map(|s| EntryId::new(Timestamp::new(s, 0), 1))
            .collect();
        let start = history.last().copied();
        let q = n / 2 + 1;
        let mut engine = Merge::new(n, q, start).unwrap();
        if key_only {
            engine = engine.require_payload();
        }
        let mut sim = Sim {
            n,
            q,
            logs: vec![history; n],
            connected: vec![true; n],
            primary: 0,
            stale_primaries: Vec::new(),
            term: 1,
            seen_term: vec![1; n],
            ever_majority: HashSet::new(),
            cursors: vec![0; n],
            engine,
            observed_pending: HashSet::new(),
            released: Vec::new(),
            start,
            resets: 0,
            full: key_only.then_some(0),
            waits: 0,
        };
        for i in 0..n {
            sim.cursors[i] = sim.resume_index(i);
        }
        sim
    }

    /// Tailers resume at the first entry with ts >= watermark (a `$gte` query).
    fn resume_index(&self, node: usize) -> usize {
        let w = self
            .engine
            .watermark()
            .map(|w| w.ts)
            .unwrap_or(Timestamp::ZERO);
        self.logs[node]
            .iter()
            .position(|e| e.ts >= w)
            .unwrap_or(self.logs[node].len())
    }

    fn next_ts(&self, node: usize, bump: u32) -> Timestamp {
        let last = self.logs[node].last().map(|e| e.ts.time).unwrap_or(0);
        Timestamp::new(last + 1 + bump, 0)
    }

    fn note_majority(&mut self) {
        let mut all: BTreeSet<E> = BTreeSet::new();
        for l in &self.logs {
            all.extend(l.iter().copied());
        }
        for e in all {
            let holders = self
                .logs
                .iter()
                .filter(|l| l.binary_search(&e).is_ok() || l.contains(&e))
                .count();
            if holders >= self.q {
                self.ever_majority.insert(e);
            }
        }
    }

    fn reset(&mut self, node: usize) {
        self.resets += 1;
        self.engine.node_reset(NodeId(node as u8));
        self.cursors[node] = self.resume_index(node);
    }

    fn step(&mut self, s: Step, salt: u32) {
        match s {
            Step::Write => {
                let p = self.primary;
                if self.connected[p] {
                    let ts = self.next_ts(p, salt % 2);
                    self.logs[p].push(EntryId::new(ts, self.term));
                }
            }
            Step::StaleWrite(i) => {
                if let Some(&(node, term)) = self
                    .stale_primaries
                    .get(i % self.stale_primaries.len().max(1))
                {
                    if !self.connected[node] {
                        let ts = self.next_ts(node, salt % 3);
                        self.logs[node].push(EntryId::new(ts, term));
                    }
                }
            }
            Step::Replicate(node) => {
                // Members on the majority side pull from the primary; members cut off
                // with a stale primary pull from it (the minority branch grows too).
                let source = if self.connected[node] {
                    Some((self.primary, self.term)).filter(|&(p, _)| self.connected[p])
                } else {
                    self.stale_primaries
                        .iter()
                        .copied()
                        .find(|&(n, _)| !self.connected[n])
                };
                let Some((p, source_term)) = source else {
                    return;
                };
                // A member that has seen a newer term refuses an older primary.
                if source_term < self.seen_term[node] {
                    return;
                }
                self.seen_term[node] = source_term;
                // A sync source must be ahead of its syncing member (by last (term, ts)).
                let last = |i: usize| self.logs[i].last().map(|e| (e.term, e.ts));
                if node == p || last(p) <= last(node) {
                    return;
                }
                let common = self.logs[node]
                    .iter()
                    .zip(&self.logs[p])
                    .take_while(|(a, b)| a == b)
                    .count();
                if common < self.logs[node].len() {
                    // Rollback: truncate to the common point; the cursor is killed.
                    self.logs[node].truncate(common);
                    self.stale_primaries.retain(|&(n, _)| n != node);
                    self.reset(node);
                } else if let Some(&e) = self.logs[p].get(common) {
                    self.logs[node].push(e);
                    self.note_majority();
                }
            }
            Step::TogglePartition(node) => {
                self.connected[node] = !self.connected[node];
                if !self.connected[node] && node == self.primary {
                    // Keeps accepting writes in its old term until it learns otherwise.
                    self.stale_primaries.push((node, self.term));
                }
            }
            Step::Elect => {
                let side = (0..self.n).filter(|&i| self.connected[i]).count() >= self.q;
                let up: Vec<usize> = (0..self.n).filter(|&i| self.connected[i] == side).collect();
                if up.len() < self.q {
                    return;
                }
                if !side {
                    // The cut-off side holds the majority now: it becomes the main side.
                    for c in self.connected.iter_mut() {
                        *c = !*c;
                    }
                    if self.connected[self.primary] {
                        self.stale_primaries.retain(|&(n, _)| n != self.primary);
                    } else {
                        self.stale_primaries.push((self.primary, self.term));
                    }
                }
                // The most up-to-date connected member that holds every entry ever held by
                // a majority (leader completeness; see the crate docs on figure 8).
                let key = |i: usize| self.logs[i].last().map(|e| (e.term, e.ts));
                let candidate = up
                    .iter()
                    .copied()
                    .filter(|&i| self.ever_majority.iter().all(|e| self.logs[i].contains(e)))
                    .max_by_key(|&i| (key(i), std::cmp::Reverse(i)));
                if let Some(c) = candidate {
                    if self.connected[self.primary] && self.primary != c {
                        // The old primary steps down; it is not stale.
                    }
                    self.term += 1;
                    self.primary = c;
                    for &v in &up {
                        self.seen_term[v] = self.term;
                    }
                    self.stale_primaries.retain(|&(n, _)| n != c);
                    let ts = self.next_ts(c, 0);
                    self.logs[c].push(EntryId::new(ts, self.term)); // "new primary" no-op
                }
            }
            Step::Deliver(node) => self.deliver(node),
            Step::Restart(node) => self.reset(node),
            Step::SwitchFull(node) => {
                if let Some(old) = self.full {
                    self.full = Some(node);
                    self.reset(old);
                    self.reset(node);
                }
            }
        }
    }

    fn deliver(&mut self, node: usize) {
        let Some(&e) = self.logs[node].get(self.cursors[node]) else {
            return;
        };
        self.cursors[node] += 1;
        let whole = self.full.is_none_or(|f| f == node);
        let pushed = self.engine.push(
            NodeId(node as u8),
            Report {
                id: e,
                digest: whole.then(|| e.ts.as_u64() ^ e.term.unwrap_or(0) as u64),
                payload: whole.then_some(e),
            },
        );
        // A report at or below what the engine already decided (the watermark, or in
        // key-only mode an entry decided while the release waits for a payload) is stale:
        // it cannot be committed any more and gets no event of its own.
        if pushed.expect("streams from a log are strictly increasing") != Pushed::Stale {
            self.observed_pending.insert(e);
        }
        self.released.extend(self.engine.drain_events());
        if let Some((waiting, reporters)) = self.engine.awaiting_payload() {
            self.waits += 1;
            // Only ever an entry of the committed history a quorum reported.
            assert!(
                reporters.len() as usize >= self.q,
                "{waiting} awaits with {reporters:?}"
            );
        }
    }

    /// Heal everything, elect, write one entry beyond every ts ever used, replicate to all
    /// and deliver everything.
    fn converge(&mut self) {
        for c in self.connected.iter_mut() {
            *c = true;
        }
        self.stale_primaries.clear();
        self.step(Step::Elect, 0);
        // Beyond every ts ever written, including rolled-back entries no log holds now.
        let max_ts = self
            .observed_pending
            .iter()
            .chain(self.logs.iter().flatten())
            .map(|e| e.ts.time)
            .max()
            .unwrap_or(0);
        let p = self.primary;
        self.logs[p].push(EntryId::new(Timestamp::new(max_ts + 1, 0), self.term));
        loop {
            let before: Vec<usize> = self.logs.iter().map(Vec::len).collect();
            for i in 0..self.n {
                for _ in 0..3 {
                    self.step(Step::Replicate(i), 0);
                }
            }
            if self.logs.iter().all(|l| *l == self.logs[p])
                && self.logs.iter().map(Vec::len).eq(before)
            {
                break;
            }
        }
        loop {
            let mut any = false;
            for i in 0..self.n {
                if self.cursors[i] < self.logs[i].len() {
                    self.deliver(i);
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
    }
}

/// Checks one history; returns (discarded entries, tailer resets) so the generator's
/// coverage can be asserted.
fn check(
    n: usize,
    start_len: usize,
    steps: Vec<(Step, u32)>,
) -> Result<(usize, u64), TestCaseError> {
    check_mode(n, start_len, steps, false).map(|(d, r, _)| (d, r))
}

/// `key_only`: one member (changing with [`Step::SwitchFull`]) sends payloads; the others
/// only identities. Returns (discarded, resets, waits for a payload).
fn check_mode(
    n: usize,
    start_len: usize,
    steps: Vec<(Step, u32)>,
    key_only: bool,
) -> Result<(usize, u64, u64), TestCaseError> {
    let mut sim = Sim::new(n, start_len, key_only);
    for (s, salt) in steps {
        sim.step(s, salt);
    }
    sim.converge();

    let final_log = sim.logs[sim.primary].clone();
    let start_ts = sim.start.map(|s| s.ts);
    let expected: Vec<E> = final_log
        .iter()
        .copied()
        .filter(|e| Some(e.ts) > start_ts)
        .collect();
    let final_set: HashSet<E> = final_log.iter().copied().collect();
    // The quorum rule alone is right only for histories in which nothing a majority held
    // at once is rolled back. This model enforces that at elections, but a member cut off
    // with a stale primary can still carry an old-term entry to a majority after a newer
    // leader was elected without it (Raft's figure 8). Such histories are what MongoDB's
    // commit point exists for (the engine's `require_commit_point`, property-tested on a
    // Raft model in raft_tests.rs); here they are outside the rule under test.
    if sim.ever_majority.iter().any(|e| !final_set.contains(e)) {
        return Ok((0, 0, 0));
    }

    let mut committed = Vec::new();
    let mut discarded = Vec::new();
    for e in &sim.released {
        match e {
            Event::Committed { id, payload, .. } => {
                prop_assert_eq!(Some(*id), *payload);
                committed.push(*id);
            }
            Event::Discarded { id, .. } => discarded.push(*id),
            Event::Divergence { .. } => prop_assert!(false, "no divergence in generated histories"),
        }
    }
    // Exactly the committed history after the start point, in order, no duplicates.
    prop_assert_eq!(&committed, &expected);
    // Discarded: exactly the observed entries that are not in the committed history.
    let discarded_set: HashSet<E> = discarded.iter().copied().collect();
    prop_assert_eq!(
        discarded_set.len(),
        discarded.len(),
        "an entry was discarded twice"
    );
    for d in &discarded {
        prop_assert!(!final_set.contains(d), "discarded a committed entry {}", d);
    }
    let expected_discards: HashSet<E> = sim
        .observed_pending
        .difference(&final_set)
        .copied()
        .collect();
    prop_assert_eq!(discarded_set, expected_discards);
    prop_assert_eq!(sim.engine.pending_len(), 0);
    prop_assert!(sim.engine.awaiting_payload().is_none());
    Ok((discarded.len(), sim.resets, sim.waits))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn three_members(start_len in 0usize..3, steps in proptest::collection::vec((arb_step(3), any::<u32>()), 0..250)) {
        check(3, start_len, steps).map(|_| ())?;
    }

    #[test]
    fn five_members(start_len in 0usize..3, steps in proptest::collection::vec((arb_step(5), any::<u32>()), 0..300)) {
        check(5, start_len, steps).map(|_| ())?;
    }

    /// Whole entries from one member, identities from the others, with switches of the
    /// member read whole: the same output, every committed entry with its payload.
    #[test]
    fn three_members_key_only(start_len in 0usize..3, steps in proptest::collection::vec((arb_step(3), any::<u32>()), 0..250)) {
        check_mode(3, start_len, steps, true).map(|_| ())?;
    }

    #[test]
    fn five_members_key_only(start_len in 0usize..3, steps in proptest::collection::vec((arb_step(5), any::<u32>()), 0..300)) {
        check_mode(5, start_len, steps, true).map(|_| ())?;
    }
}

/// In key-only mode the release must actually wait for payloads in generated histories
/// (the full member behind a quorum, rolled back, or switched), or the property proves
/// little.
#[test]
fn key_only_generator_makes_the_release_wait_for_payloads() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec((arb_step(3), any::<u32>()), 100..250);
    let (mut waits, mut with_waits) = (0, 0);
    for _ in 0..200 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let (_, _, w) = check_mode(3, 1, steps, true).unwrap();
        waits += w;
        with_waits += usize::from(w > 0);
    }
    assert!(
        with_waits >= 50 && waits >= 500,
        "only {with_waits} of 200 histories waited for a payload ({waits} waits)"
    );
}

/// The generator must actually produce rollbacks and discards, or the properties above
/// prove little.
#[test]
fn generator_produces_rollbacks_and_discards() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec((arb_step(5), any::<u32>()), 100..300);
    let (mut discards, mut resets, mut with_discards) = (0, 0, 0);
    for _ in 0..200 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let (d, r) = check(5, 1, steps).unwrap();
        discards += d;
        resets += r;
        with_discards += usize::from(d > 0);
    }
    assert!(
        with_discards >= 20,
        "only {with_discards} of 200 histories discarded anything"
    );
    assert!(
        discards >= 100 && resets >= 100,
        "discards {discards}, resets {resets}"
    );
}

// ---------------------------------------------------------------------------------------
// Voting membership and the commit point.
// ---------------------------------------------------------------------------------------

fn point(committed: EntryId, last_applied: EntryId) -> CommitPoint {
    CommitPoint {
        committed,
        last_applied,
    }
}

/// A primary and two non-voters hold an entry that one voter... never held: it must not be
/// emitted, and is discarded once the voters' branch commits.
#[test]
fn non_voters_never_confirm_an_entry() {
    // Members: A (voter, old primary), B and C (voters), D and E (votes: 0).
    let mut m: Merge<&str> = Merge::new(5, 1, None).unwrap();
    let (d, e) = (NodeId(3), NodeId(4));
    m.set_voter(d, false);
    m.set_voter(e, false);
    m.set_quorum(2).unwrap();
    assert_eq!(m.voters().len(), 3);
    let x = id(1, 1);
    for n in [A, d, e] {
        m.push(n, rep(x)).unwrap();
    }
    assert!(committed(&mut m).is_empty(), "three holders, one voter");
    // B and C elect B, which writes y at the same ts with a new term: x loses.
    let y = id(1, 2);
    m.push(B, rep(y)).unwrap();
    m.push(C, rep(y)).unwrap();
    let events: Vec<_> = m.drain_events().collect();
    assert!(matches!(events[0], Event::Discarded { id, .. } if id == x));
    assert!(matches!(events[1], Event::Committed { id, .. } if id == y));
    // A quorum above the voters is refused.
    assert!(matches!(
        m.set_quorum(4),
        Err(QuorumError::Unreachable {
            quorum: 4,
            data_bearing: 3
        })
    ));
}

/// Raft's figure 8: x (term 2) reaches a majority of voters while its writer is primary
/// again in term 4, but no commit point ever covers it; the term-3 branch wins.
#[test]
fn figure_8_entry_held_by_a_majority_is_not_released_without_the_commit_point() {
    let mut m: Merge<&str> = Merge::new(5, 3, None).unwrap().require_commit_point();
    let (s1, s2, s3, s4, s5) = (A, B, C, NodeId(3), NodeId(4));
    let base = id(1, 1);
    for n in [s1, s2, s3, s4, s5] {
        m.push(n, rep(base)).unwrap();
    }
    assert!(
        committed(&mut m).is_empty(),
        "held by all, not yet known committed"
    );
    assert_eq!(
        m.commit_point(s1, point(base, base)).unwrap(),
        CommitOutcome::Applied
    );
    assert_eq!(committed(&mut m), vec![base]);
    assert_eq!(
        m.commit_point(s2, point(base, base)).unwrap(),
        CommitOutcome::Outdated
    );
    // s1 (term 2) writes x, replicated to s2; s1 fails; s5 (term 3) writes y alone; s1
    // re-elected in term 4 carries x to s3: x is on s1, s2, s3, a majority.
    let x = id(2, 2);
    for n in [s1, s2, s3] {
        m.push(n, rep(x)).unwrap();
    }
    // Their commit points stay at base: a term-4 primary commits nothing before an entry
    // of term 4 reaches a majority.
    for n in [s1, s2, s3] {
        assert_eq!(
            m.commit_point(n, point(base, x)).unwrap(),
            CommitOutcome::Outdated
        );
    }
    assert!(
        committed(&mut m).is_empty(),
        "x must wait for the commit point"
    );
    assert_eq!(m.awaiting_commit_point().map(|(i, _)| i), Some(x));
    // s1 fails; s5 wins term 5 with votes of s2, s3, s4 (its y of term 3 is newer than x)
    // and rolls s2, s3 back: their tailers restart.
    let y = id(3, 3);
    let z = id(4, 5);
    m.node_reset(s2);
    m.node_reset(s3);
    for n in [s2, s3, s4, s5] {
        m.push(n, rep(y)).unwrap();
        m.push(n, rep(z)).unwrap();
    }
    assert!(
        committed(&mut m).is_empty(),
        "nothing committed until the commit point"
    );
    assert_eq!(
        m.commit_point(s5, point(z, z)).unwrap(),
        CommitOutcome::Applied
    );
    let events: Vec<_> = m.drain_events().collect();
    let summary: Vec<_> = events
        .iter()
        .map(|e| match e {
            Event::Committed { id, .. } => ("commit", *id),
            Event::Discarded { id, .. } => ("discard", *id),
            Event::Divergence { id, .. } => ("diverge", *id),
        })
        .collect();
    assert_eq!(summary, vec![("discard", x), ("commit", y), ("commit", z)]);
}

/// A commit point counts only once the member's stream holds the entry read with it: a
/// reading taken after a rollback the stream has not noticed confirms nothing.
#[test]
fn commit_point_is_tied_to_the_members_stream() {
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap().require_commit_point();
    let (a1, a2) = (id(1, 1), id(2, 1));
    for n in [A, B, C] {
        m.push(n, rep(a1)).unwrap();
        m.push(n, rep(a2)).unwrap();
    }
    // A was rolled back to a1 and moved on to b3 on another branch (its cursor is dead but
    // the pipeline does not know yet); its reading says b3 and a commit point past a2.
    let b3 = id(3, 2);
    assert_eq!(
        m.commit_point(A, point(b3, b3)).unwrap(),
        CommitOutcome::Queued
    );
    assert!(committed(&mut m).is_empty());
    // The stream dies: the queued reading goes with it.
    m.node_reset(A);
    m.push(A, rep(a1)).unwrap();
    m.push(A, rep(b3)).unwrap();
    assert!(
        committed(&mut m).is_empty(),
        "b3's reading was from the old stream"
    );
    // A reading whose newest entry the stream passed without holding it proves nothing.
    assert_eq!(
        m.commit_point(A, point(a2, a2)).unwrap(),
        CommitOutcome::NotOnStream
    );
    // B's stream holds a2: its reading confirms a1 and a2.
    assert_eq!(
        m.commit_point(B, point(a2, a2)).unwrap(),
        CommitOutcome::Applied
    );
    assert_eq!(committed(&mut m), vec![a1, a2]);
    // A queued reading takes effect when the stream reports its entry.
    let a4 = id(4, 2);
    assert_eq!(
        m.commit_point(B, point(a4, a4)).unwrap(),
        CommitOutcome::Queued
    );
    m.push(C, rep(a4)).unwrap();
    assert!(committed(&mut m).is_empty());
    assert_eq!(m.push(B, rep(a4)).unwrap(), Pushed::Released);
    assert_eq!(committed(&mut m), vec![a4]);
    assert_eq!(m.stats().commit_points_not_on_stream, 1);
}

/// A member claiming a commit point beyond its own newest entry is capped to that entry.
#[test]
fn commit_point_beyond_the_members_own_entry_is_capped() {
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap().require_commit_point();
    let (a1, a2) = (id(1, 1), id(2, 1));
    for n in [A, B] {
        m.push(n, rep(a1)).unwrap();
    }
    m.push(B, rep(a2)).unwrap();
    m.push(C, rep(a2)).unwrap();
    assert_eq!(
        m.commit_point(A, point(a2, a1)).unwrap(),
        CommitOutcome::Applied
    );
    // Only a1 is confirmed (A never reported a2).
    assert_eq!(committed(&mut m), vec![a1]);
    assert_eq!(m.stats().commit_points_beyond_last_applied, 1);
    assert_eq!(m.node_commit_point(A), Some(a1));
}

/// Legacy (protocol version 0) entries have no term: no commit point is needed.
#[test]
fn legacy_entries_without_terms_keep_the_quorum_rule() {
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap().require_commit_point();
    let legacy = EntryId {
        ts: Timestamp::new(1, 1),
        term: None,
        hash: Some(42),
    };
    m.push(A, rep(legacy)).unwrap();
    m.push(B, rep(legacy)).unwrap();
    assert_eq!(committed(&mut m), vec![legacy]);
}

/// A restart far behind (the pipeline catching up on a backlog): every reading's newest
/// entry is near the head, so readings tied to the stream confirm nothing until the
/// stream gets there and the whole backlog would wait in memory. Entries a stream reads
/// after the member reported a commit point covering them are committed as they arrive,
/// and so is everything the stream reported before them.
#[test]
fn a_stream_catching_up_is_confirmed_as_it_reads_below_an_earlier_commit_point() {
    let mut m: Merge<&str> = Merge::new(3, 2, None).unwrap().require_commit_point();
    let backlog: Vec<EntryId> = (1..=100).map(|s| id(s, 1)).collect();
    let head = backlog[99];
    // Read before the streams started: each member's commit point is the head.
    for n in [A, B, C] {
        assert_eq!(
            m.commit_point(n, point(head, head)).unwrap(),
            CommitOutcome::Queued
        );
    }
    // The first entries were read before the tailers knew the reading: held back.
    for n in [A, B] {
        for x in &backlog[..10] {
            m.push(n, rep(*x)).unwrap();
        }
    }
    assert!(committed(&mut m).is_empty());
    // From now on the streams read below the reported commit point.
    // A's next entry confirms what A's stream reported before it: the ten entries A and B
    // both hold go; the eleventh waits for a second reporter.
    m.set_read_commit(A, Some(head));
    m.push(A, rep(backlog[10])).unwrap();
    assert_eq!(committed(&mut m), backlog[..10].to_vec());
    m.set_read_commit(B, Some(head));
    assert_eq!(m.push(B, rep(backlog[10])).unwrap(), Pushed::Released);
    assert_eq!(committed(&mut m), backlog[10..11].to_vec());
    for x in &backlog[11..50] {
        m.push(A, rep(*x)).unwrap();
        m.push(B, rep(*x)).unwrap();
    }
    assert_eq!(committed(&mut m), backlog[11..50].to_vec());
    assert_eq!(m.pending_len(), 0, "nothing of the backlog waits in memory");
    // Beyond the reported commit point nothing is confirmed that way.
    m.set_read_commit(A, Some(backlog[59]));
    m.set_read_commit(B, Some(backlog[59]));
    for x in &backlog[50..70] {
        m.push(A, rep(*x)).unwrap();
        m.push(B, rep(*x)).unwrap();
    }
    assert_eq!(committed(&mut m), backlog[50..60].to_vec());
    // Counted per report: entries 11..=60 from A and from B.
    assert_eq!(m.stats().read_after_commit_point, 2 * 50);
}

//! Merge-engine throughput in node-entries per second (one `push` = one node-entry).
//!
//! `cargo bench -p quorumtail-merge` (figures in docs/benchmarks.md).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use quorumtail_merge::{CommitPoint, Event, Merge, NodeId, Report};
use quorumtail_oplog::{EntryId, Timestamp};

const ENTRIES: u32 = 1_000_000;

fn ids() -> Vec<EntryId> {
    (0..ENTRIES)
        .map(|i| EntryId::new(Timestamp::new(1_700_000_000 + i / 4, i % 4), 1))
        .collect()
}

fn report(id: EntryId, i: usize) -> Report<u64> {
    Report {
        id,
        digest: Some(id.ts.as_u64()),
        payload: Some(i as u64),
    }
}

/// Every node delivers in batches of `batch`, round-robin: node 0 is usually ahead.
fn interleaved(nodes: usize, batch: usize, ids: &[EntryId]) -> u64 {
    let q = nodes / 2 + 1;
    let mut m: Merge<u64> = Merge::new(nodes, q, None).unwrap();
    let mut committed = 0u64;
    for start in (0..ids.len()).step_by(batch) {
        let end = (start + batch).min(ids.len());
        for n in 0..nodes {
            for (i, &id) in ids[start..end].iter().enumerate() {
                m.push(NodeId(n as u8), report(id, start + i)).unwrap();
            }
            for e in m.drain_events() {
                if let Event::Committed { .. } = e {
                    committed += 1;
                }
            }
        }
    }
    committed
}

/// As `interleaved` with 3 members, whole entries from node 0 and identities from the
/// others, and the commit point as a condition of release: after each round node 0 reports
/// a commit point at the end of the previous round (the primary's commit point trails what
/// it wrote), so every entry waits for a reading, as in a live pipeline.
fn interleaved_commit_point(batch: usize, ids: &[EntryId]) -> u64 {
    let mut m: Merge<u64> = Merge::new(3, 2, None)
        .unwrap()
        .require_payload()
        .require_commit_point();
    let key = |id: EntryId| Report {
        id,
        digest: None,
        payload: None,
    };
    let mut committed = 0u64;
    let mut previous_end: Option<EntryId> = None;
    for start in (0..ids.len()).step_by(batch) {
        let end = (start + batch).min(ids.len());
        for n in 0..3u8 {
            for (i, &id) in ids[start..end].iter().enumerate() {
                let r = if n == 0 {
                    report(id, start + i)
                } else {
                    key(id)
                };
                m.push(NodeId(n), r).unwrap();
            }
        }
        let last = ids[end - 1];
        let committed_to = previous_end.unwrap_or(ids[start]);
        m.commit_point(
            NodeId(0),
            CommitPoint {
                committed: committed_to,
                last_applied: last,
            },
        )
        .unwrap();
        previous_end = Some(last);
        committed += m
            .drain_events()
            .filter(|e| matches!(e, Event::Committed { .. }))
            .count() as u64;
    }
    m.commit_point(
        NodeId(0),
        CommitPoint {
            committed: ids[ids.len() - 1],
            last_applied: ids[ids.len() - 1],
        },
    )
    .unwrap();
    committed
        + m.drain_events()
            .filter(|e| matches!(e, Event::Committed { .. }))
            .count() as u64
}

/// Nodes 0 and 1 run in lockstep; node 2 delivers everything afterwards (an hour behind):
/// all its reports are stale.
fn lagging(ids: &[EntryId]) -> u64 {
    let mut m: Merge<u64> = Merge::new(3, 2, None).unwrap();
    let mut committed = 0u64;
    for (i, &id) in ids.iter().enumerate() {
        m.push(NodeId(0), report(id, i)).unwrap();
        m.push(NodeId(1), report(id, i)).unwrap();
        committed += m.drain_events().count() as u64;
    }
    for (i, &id) in ids.iter().enumerate() {
        m.push(NodeId(2), report(id, i)).unwrap();
    }
    committed
}

/// Key-only catch-up: nodes 1 and 2 send identities and run `lead` entries ahead of node
/// 0, which sends whole entries; every payload unblocks the release of one entry.
fn key_only_catch_up(ids: &[EntryId], lead: usize) -> u64 {
    let mut m: Merge<u64> = Merge::new(3, 2, None).unwrap().require_payload();
    let key = |id: EntryId| Report {
        id,
        digest: None,
        payload: None,
    };
    let mut committed = 0u64;
    for (i, &id) in ids.iter().enumerate() {
        m.push(NodeId(1), key(id)).unwrap();
        m.push(NodeId(2), key(id)).unwrap();
        if i >= lead {
            m.push(NodeId(0), report(ids[i - lead], i - lead)).unwrap();
        }
        committed += m.drain_events().count() as u64;
    }
    for (i, &id) in ids.iter().enumerate().skip(ids.len() - lead) {
        m.push(NodeId(0), report(id, i)).unwrap();
        committed += m.drain_events().count() as u64;
    }
    committed
}

fn bench(c: &mut Criterion) {
    let ids = ids();
    let mut g = c.benchmark_group("merge");
    g.sample_size(10);
    for (name, nodes) in [("3_nodes_interleaved", 3usize), ("5_nodes_interleaved", 5)] {
        g.throughput(Throughput::Elements(ENTRIES as u64 * nodes as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || (),
                |_| assert_eq!(interleaved(nodes, 64, &ids), ENTRIES as u64),
                BatchSize::PerIteration,
            )
        });
    }
    g.throughput(Throughput::Elements(ENTRIES as u64 * 3));
    g.bench_function("3_nodes_interleaved_key_only_commit_point", |b| {
        b.iter_batched(
            || (),
            |_| assert_eq!(interleaved_commit_point(64, &ids), ENTRIES as u64),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("3_nodes_one_lagging", |b| {
        b.iter_batched(
            || (),
            |_| assert_eq!(lagging(&ids), ENTRIES as u64),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("3_nodes_key_only_whole_member_10k_behind", |b| {
        b.iter_batched(
            || (),
            |_| assert_eq!(key_only_catch_up(&ids, 10_000), ENTRIES as u64),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

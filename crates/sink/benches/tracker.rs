//! The contiguity tracker's cost per record: push, then acks in submission order and in a
//! scrambled (partition-interleaved) order.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use quorumtail_oplog::{EntryId, Timestamp};
use quorumtail_sink::tracker::ShardTracker;

const N: u64 = 10_000;

fn cp(n: u64) -> Option<EntryId> {
    Some(EntryId::new(Timestamp::new(n as u32, 0), 1))
}

/// Acks as four partitions would return them: round-robin over four interleaved queues,
/// each acknowledged in batches of 50.
fn scrambled() -> Vec<u64> {
    let mut parts: Vec<Vec<u64>> = vec![Vec::new(); 4];
    for s in 1..=N {
        parts[(s * 7 % 4) as usize].push(s);
    }
    let mut out = Vec::with_capacity(N as usize);
    let mut idx = [0usize; 4];
    while out.len() < N as usize {
        for (p, v) in parts.iter().enumerate() {
            let end = (idx[p] + 50).min(v.len());
            out.extend_from_slice(&v[idx[p]..end]);
            idx[p] = end;
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("tracker");
    g.throughput(Throughput::Elements(N));
    g.bench_function("push_then_ack_in_order", |b| {
        b.iter(|| {
            let mut t = ShardTracker::new();
            for s in 1..=N {
                t.push_record(s, cp(s)).unwrap();
            }
            for s in 1..=N {
                black_box(t.ack(s));
            }
            t.confirmed()
        })
    });
    let order = scrambled();
    g.bench_function("push_then_ack_scrambled", |b| {
        b.iter_batched(
            || {
                let mut t = ShardTracker::new();
                for s in 1..=N {
                    t.push_record(s, cp(s)).unwrap();
                }
                t
            },
            |mut t| {
                for &s in &order {
                    black_box(t.ack(s));
                }
                t.confirmed()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Reading an oplog entry: [`OplogEntry::parse`] (one pass over the entry's top-level
//! elements) against [`EntryLayout::view`] (rebuilding the same view from the layout the
//! parse recorded, by slicing). The pipeline parses each entry when its batch is decoded
//! and, before layouts, parsed it again when the merge released it; now the release takes
//! the view.
//!
//! `encode` is the record of the default format (relaxed Extended JSON) made from the view.
//!
//! `cargo bench -p quorumtail-oplog --bench entry` (figures in docs/benchmarks.md).

use std::hint::black_box;

use bson::{rawdoc, Binary, RawDocumentBuf};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quorumtail_oplog::extjson::Mode;
use quorumtail_oplog::record::encode_entry_as;
use quorumtail_oplog::{EntryLayout, OplogEntry};

/// Shapes the pipeline reads: a 7.0 insert of a ~300-byte document (as in the end-to-end
/// bench), an update with its target, and a retryable write's session fields.
fn entries() -> Vec<(&'static str, RawDocumentBuf)> {
    let uuid = || Binary {
        subtype: bson::spec::BinarySubtype::Uuid,
        bytes: vec![7; 16],
    };
    let ts = bson::Timestamp {
        time: 1_700_000_000,
        increment: 3,
    };
    let wall = bson::DateTime::from_millis(1_700_000_000_123);
    vec![
        (
            "insert",
            rawdoc! {
                "op": "i", "ns": "shop.orders", "ui": uuid(),
                "o": { "_id": 5, "sku": "x".repeat(200), "qty": 3, "tags": ["a", "b"], "at": wall },
                "o2": { "_id": 5 },
                "ts": ts, "t": 4_i64, "v": 2_i64, "wall": wall,
            },
        ),
        (
            "update",
            rawdoc! {
                "op": "u", "ns": "shop.orders", "ui": uuid(),
                "o": { "$v": 2, "diff": { "u": { "qty": 4 } } }, "o2": { "_id": 5 },
                "ts": ts, "t": 4_i64, "v": 2_i64, "wall": wall,
            },
        ),
        (
            "retryable_insert",
            rawdoc! {
                "lsid": { "id": uuid(), "uid": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![2; 32] } },
                "txnNumber": 3_i64,
                "op": "i", "ns": "shop.orders", "ui": uuid(),
                "o": { "_id": 6, "sku": "y".repeat(200) },
                "ts": ts, "t": 4_i64, "v": 2_i64, "wall": wall, "stmtId": 0,
                "prevOpTime": { "ts": bson::Timestamp { time: 0, increment: 0 }, "t": -1_i64 },
            },
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("entry");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in entries() {
        let layout = EntryLayout::parse(&raw).unwrap();
        eprintln!("{name}: {} bytes", raw.as_bytes().len());
        g.bench_function(format!("{name}/parse"), |b| {
            b.iter(|| OplogEntry::parse(black_box(&raw)).unwrap().ns.len())
        });
        g.bench_function(format!("{name}/view"), |b| {
            b.iter(|| black_box(&layout).view(black_box(&raw)).unwrap().ns.len())
        });
        g.bench_function(format!("{name}/parse_and_layout"), |b| {
            b.iter(|| OplogEntry::parse(black_box(&raw)).unwrap().layout())
        });
        // The record the default format makes of the entry (relaxed Extended JSON), into a
        // reused buffer: what the emitter does per released entry.
        let view = layout.view(&raw).unwrap();
        let mut out = Vec::with_capacity(2048);
        g.bench_function(format!("{name}/encode"), |b| {
            b.iter(|| {
                out.clear();
                encode_entry_as(Mode::Relaxed, "shard01", black_box(&view), &mut out).unwrap();
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

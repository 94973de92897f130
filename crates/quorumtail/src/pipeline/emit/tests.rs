//! Unit tests of the emitter.

use super::*;
use bson::{rawdoc, spec::BinarySubtype, Binary, RawDocumentBuf};

fn ts(i: u32) -> bson::Timestamp {
    bson::Timestamp {
        time: 1_700_000_000,
        increment: i,
    }
}

fn lsid() -> RawDocumentBuf {
    rawdoc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1; 16] }, "uid": Binary { subtype: BinarySubtype::Generic, bytes: vec![2; 32] } }
}

fn emitter() -> Emitter {
    Emitter::new(
        "s".into(),
        Filter::default(),
        KeyKind::Document,
        Arc::default(),
        None,
    )
}

fn run(e: &mut Emitter, docs: &[RawDocumentBuf]) -> Vec<SinkInput> {
    let mut out = Vec::new();
    for d in docs {
        e.committed(&OplogEntry::parse(d).unwrap(), &mut out)
            .unwrap();
    }
    out
}

fn checkpoints(out: &[SinkInput]) -> Vec<Option<u32>> {
    out.iter()
        .map(|i| match i {
            SinkInput::Record(r) => r.checkpoint.map(|c| c.ts.increment),
            SinkInput::Marker(m) => Some(m.checkpoint.ts.increment),
        })
        .collect()
}

/// A large transaction (two entries) with a plain insert released in between: the
/// operations come out together at the commit, with their transaction details, and
/// no checkpoint lands between the transaction's first entry and its commit.
#[test]
fn transactions_are_emitted_whole_and_checkpoints_skip_them() {
    let mut e = emitter();
    let first = rawdoc! {
        "lsid": lsid(), "txnNumber": 7_i64, "op": "c", "ns": "admin.$cmd",
        "o": { "applyOps": [ { "op": "i", "ns": "shop.orders", "o": { "_id": 1 } } ], "partialTxn": true },
        "ts": ts(2), "t": 1_i64, "prevOpTime": { "ts": bson::Timestamp { time: 0, increment: 0 }, "t": -1_i64 },
    };
    let plain =
        rawdoc! { "op": "i", "ns": "shop.users", "o": { "_id": "u" }, "ts": ts(3), "t": 1_i64 };
    let last = rawdoc! {
        "lsid": lsid(), "txnNumber": 7_i64, "op": "c", "ns": "admin.$cmd",
        "o": { "applyOps": [ { "op": "u", "ns": "shop.orders", "o": { "$set": { "x": 1 } }, "o2": { "_id": 1 } }, { "op": "i", "ns": "config.x", "o": { "_id": 9 } } ], "count": 3_i64 },
        "ts": ts(4), "t": 1_i64, "prevOpTime": { "ts": ts(2), "t": 1_i64 },
    };
    let before =
        rawdoc! { "op": "i", "ns": "shop.users", "o": { "_id": "a" }, "ts": ts(1), "t": 1_i64 };
    let out = run(&mut e, &[before, first, plain, last]);
    let records: Vec<serde_json::Value> = out
        .iter()
        .filter_map(|i| match i {
            SinkInput::Record(r) => {
                Some(serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
            }
            _ => None,
        })
        .collect();
    // before, plain, then the transaction's two shop.orders operations (config.x is internal).
    assert_eq!(records.len(), 4, "{records:#?}");
    assert_eq!(records[1]["entry"]["o"]["_id"], "u");
    assert_eq!(records[2]["txn"]["txnNumber"], 7);
    assert_eq!(records[2]["txn"]["index"], 0);
    assert_eq!(records[3]["txn"]["index"], 1);
    assert_eq!(records[3]["op"], "u");
    assert_eq!(
        records[2]["ts"]["i"], 4,
        "transaction records carry the commit's ts"
    );
    // Checkpoint after `before` (1); none while the transaction is open (the plain
    // insert at 3 carries none); after the commit, 4.
    assert_eq!(checkpoints(&out), vec![Some(1), None, None, None, Some(4)]);
}

/// Filtered entries still move the checkpoint, through markers.
#[test]
fn dropped_entries_advance_through_markers() {
    let mut e = emitter();
    let noop =
        rawdoc! { "op": "n", "ns": "", "o": { "msg": "periodic noop" }, "ts": ts(1), "t": 1_i64 };
    let migrated = rawdoc! { "op": "d", "ns": "shop.orders", "o": { "_id": 1 }, "fromMigrate": true, "ts": ts(2), "t": 1_i64 };
    let out = run(&mut e, &[noop, migrated]);
    assert!(out.iter().all(|i| matches!(i, SinkInput::Marker(_))));
    assert_eq!(checkpoints(&out), vec![Some(1), Some(2)]);
    assert_eq!(
        e.stats
            .dropped_from_migrate
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn document_keys_are_canonical() {
    let mut e = emitter();
    let ins =
        rawdoc! { "op": "i", "ns": "shop.orders", "o": { "_id": 1.0 }, "ts": ts(1), "t": 1_i64 };
    let out = run(&mut e, &[ins]);
    let SinkInput::Record(r) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        r.key.as_deref(),
        Some(&br#"{"ns":"shop.orders","_id":{"$numberDouble":"1.0"}}"#[..])
    );
    assert_eq!(
        (r.db.as_str(), r.coll.as_str(), r.op),
        ("shop", "orders", "i")
    );
}

/// `[sink] tombstones`: each delete is followed by a null value under the same key,
/// and the checkpoint rides on the tombstone, so a resume never falls between them.
#[test]
fn deletes_are_followed_by_tombstones_carrying_the_checkpoint() {
    let mut e = emitter().with_tombstones(true);
    let docs = [
        rawdoc! { "op": "i", "ns": "shop.users", "o": { "_id": 5 }, "ts": ts(1), "t": 1_i64 },
        rawdoc! { "op": "d", "ns": "shop.users", "o": { "_id": 5 }, "ts": ts(2), "t": 1_i64 },
    ];
    let out = run(&mut e, &docs);
    let records: Vec<&OutRecord> = out
        .iter()
        .filter_map(|i| match i {
            SinkInput::Record(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(records.len(), 3, "{records:#?}");
    let (delete, tombstone) = (records[1], records[2]);
    assert_eq!(delete.op, "d");
    assert!(delete.value.is_some());
    assert_eq!(delete.checkpoint, None);
    assert_eq!(tombstone.value, None);
    assert_eq!(tombstone.key, delete.key);
    assert_eq!(
        tombstone.checkpoint.map(|c| c.ts),
        Some(Timestamp::new(1_700_000_000, 2))
    );
    assert!(tombstone.seq > delete.seq);
    // Without the setting, no tombstone.
    let mut e = emitter();
    assert_eq!(
        run(&mut e, &docs)
            .iter()
            .filter(|i| matches!(i, SinkInput::Record(_)))
            .count(),
        2
    );
}

fn record_values(out: &[SinkInput]) -> Vec<(&OutRecord, Option<serde_json::Value>)> {
    out.iter()
        .filter_map(|i| match i {
            SinkInput::Record(r) => Some((
                r,
                r.value
                    .as_deref()
                    .map(|v| serde_json::from_slice(v).unwrap()),
            )),
            _ => None,
        })
        .collect()
}

/// `[sink] format = "debezium"`: the key is the record's `{"id": ...}` (tombstones
/// too), a transaction's operations carry their session and the transaction's orders
/// (overall and per collection), and commands give no record but move the position.
#[test]
fn debezium_records_keys_transactions_and_tombstones() {
    let mut e = emitter()
        .with_format(RecordFormat::Debezium {
            server_name: "inventory",
        })
        .with_tombstones(true);
    let txn = rawdoc! {
        "lsid": lsid(), "txnNumber": 7_i64, "op": "c", "ns": "admin.$cmd",
        "o": { "applyOps": [
            { "op": "i", "ns": "shop.orders", "o": { "_id": 1, "x": 1 } },
            { "op": "i", "ns": "shop.users", "o": { "_id": "u" } },
            { "op": "d", "ns": "shop.orders", "o": { "_id": 1 } },
        ] },
        "ts": ts(2), "t": 1_i64, "wall": bson::DateTime::from_millis(5_000),
    };
    let drop =
        rawdoc! { "op": "c", "ns": "shop.$cmd", "o": { "drop": "users" }, "ts": ts(3), "t": 1_i64 };
    let out = run(&mut e, &[txn, drop]);
    let recs = record_values(&out);
    assert_eq!(recs.len(), 4, "{recs:#?}");
    let (ins, v) = &recs[0];
    let v = v.as_ref().unwrap();
    assert_eq!(ins.key.as_deref(), Some(&br#"{"id":"1"}"#[..]));
    assert_eq!(v["op"], "c");
    assert_eq!(v["after"], r#"{"_id": 1,"x": 1}"#);
    assert_eq!(v["source"]["name"], "inventory");
    assert_eq!(v["source"]["connector"], "mongodb");
    assert_eq!(v["source"]["txnNumber"], 7);
    assert_eq!(v["source"]["wallTime"], 5_000);
    assert_eq!(v["transaction"]["total_order"], 1);
    assert_eq!(v["transaction"]["data_collection_order"], 1);
    let lsid = v["source"]["lsid"].as_str().unwrap();
    assert_eq!(v["transaction"]["id"], format!("{lsid}:7"));
    let v = recs[1].1.as_ref().unwrap();
    assert_eq!(recs[1].0.key.as_deref(), Some(&br#"{"id":"\"u\""}"#[..]));
    assert_eq!(v["transaction"]["total_order"], 2);
    assert_eq!(v["transaction"]["data_collection_order"], 1);
    let v = recs[2].1.as_ref().unwrap();
    assert_eq!(v["op"], "d");
    assert_eq!(v["transaction"]["total_order"], 3);
    assert_eq!(v["transaction"]["data_collection_order"], 2);
    let (tombstone, none) = &recs[3];
    assert!(none.is_none());
    assert_eq!(tombstone.key, recs[2].0.key);
    // The drop: no record, the position moves (a marker with its ts).
    assert!(matches!(out.last(), Some(SinkInput::Marker(m)) if m.checkpoint.ts.increment == 3));
}

fn record_ids(out: &[SinkInput]) -> Vec<serde_json::Value> {
    out.iter()
        .filter_map(|i| match i {
            SinkInput::Record(r) => {
                let v: serde_json::Value =
                    serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                Some(v["entry"]["o"]["_id"].clone())
            }
            _ => None,
        })
        .collect()
}

/// After a snapshot at `ts(10)`: what committed at or before it is the snapshot's, not
/// emitted again and never a checkpoint; a prepared transaction counts by its
/// commitTimestamp (the time its writes became visible), not by its commit entry's `ts`;
/// the snapshot's records and the stream's take one sequence.
#[test]
fn after_a_snapshot_only_what_committed_later_is_emitted() {
    let floor = Timestamp::from(ts(10));
    let mut e = Emitter::new(
        "s".into(),
        Filter::default(),
        KeyKind::Document,
        Arc::default(),
        Some(Timestamp::from(ts(5))),
    )
    .after_snapshot(Some(SnapshotFloor::at(floor)), 41);
    let ins = |id: i32, i: u32| rawdoc! { "op": "i", "ns": "shop.a", "o": { "_id": id }, "ts": ts(i), "t": 1_i64 };
    let prepare = |n: i64, id: i32, i: u32| {
        rawdoc! {
            "lsid": lsid(), "txnNumber": n, "op": "c", "ns": "admin.$cmd",
            "o": { "applyOps": [ { "op": "i", "ns": "shop.a", "o": { "_id": id } } ], "prepare": true },
            "ts": ts(i), "t": 1_i64, "prevOpTime": { "ts": bson::Timestamp { time: 0, increment: 0 }, "t": -1_i64 },
        }
    };
    let commit = |n: i64, at: u32, i: u32, prev: u32| {
        rawdoc! {
            "lsid": lsid(), "txnNumber": n, "op": "c", "ns": "admin.$cmd",
            "o": { "commitTransaction": 1, "commitTimestamp": ts(at) },
            "ts": ts(i), "t": 1_i64, "prevOpTime": { "ts": ts(prev), "t": 1_i64 },
        }
    };
    let out = run(
        &mut e,
        &[
            ins(1, 6),
            prepare(1, 2, 7),
            prepare(2, 3, 8),
            ins(4, 9),
            // Visible at 9 (before the snapshot), its commit entry logged after it.
            commit(1, 9, 11, 7),
            // Visible at 12: after the snapshot.
            commit(2, 12, 13, 8),
            ins(5, 14),
        ],
    );
    assert_eq!(
        record_ids(&out),
        [serde_json::json!(3), serde_json::json!(5)]
    );
    let seqs: Vec<u64> = out
        .iter()
        .map(|i| match i {
            SinkInput::Record(r) => r.seq,
            SinkInput::Marker(m) => m.seq,
        })
        .collect();
    assert_eq!(seqs.first(), Some(&42), "continues the snapshot's sequence");
    assert!(
        checkpoints(&out).into_iter().flatten().all(|i| i > 10),
        "no checkpoint at or before the snapshot: {out:?}"
    );
}

/// A transaction prepared before the stream's start and committed after the snapshot
/// cannot be emitted whole: a definite error naming the margin, never half emitted. One
/// that committed before the snapshot is the snapshot's and is skipped.
#[test]
fn a_transaction_prepared_before_the_stream_and_committed_after_the_snapshot_is_an_error() {
    let mut e = Emitter::new(
        "s".into(),
        Filter::default(),
        KeyKind::Document,
        Arc::default(),
        Some(Timestamp::from(ts(5))),
    )
    .after_snapshot(Some(SnapshotFloor::at(Timestamp::from(ts(10)))), 0);
    let commit = |at: u32, i: u32| {
        rawdoc! {
            "lsid": lsid(), "txnNumber": 1_i64, "op": "c", "ns": "admin.$cmd",
            "o": { "commitTransaction": 1, "commitTimestamp": ts(at) },
            "ts": ts(i), "t": 1_i64, "prevOpTime": { "ts": ts(2), "t": 1_i64 },
        }
    };
    let mut out = Vec::new();
    e.committed(&OplogEntry::parse(&commit(8, 11)).unwrap(), &mut out)
        .unwrap();
    assert!(out.iter().all(|i| matches!(i, SinkInput::Marker(_))));
    let err = e
        .committed(&OplogEntry::parse(&commit(12, 13)).unwrap(), &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stream_margin"), "{err}");
}

/// `[sink] full_document`: updates of fields (top-level and in a transaction) are
/// listed for a lookup by their index in the output, with the document key and the
/// entry (the commit's in a transaction); replacements, inserts and deletes are not, nor
/// anything when lookups are off.
#[test]
fn field_updates_are_marked_for_a_lookup() {
    let docs = [
        rawdoc! { "op": "i", "ns": "shop.users", "o": { "_id": 5 }, "ts": ts(1), "t": 1_i64 },
        rawdoc! { "op": "u", "ns": "shop.users", "o": { "$v": 2, "diff": { "u": { "x": 1 } } }, "o2": { "_id": 5 }, "ts": ts(2), "t": 1_i64 },
        rawdoc! { "op": "u", "ns": "shop.users", "o": { "_id": 5, "y": 1 }, "o2": { "_id": 5 }, "ts": ts(3), "t": 1_i64 },
        rawdoc! { "op": "n", "ns": "", "o": { "msg": "periodic noop" }, "ts": ts(4), "t": 1_i64 },
        rawdoc! {
            "lsid": lsid(), "txnNumber": 7_i64, "op": "c", "ns": "admin.$cmd",
            "o": { "applyOps": [
                { "op": "i", "ns": "shop.orders", "o": { "_id": 1 } },
                { "op": "u", "ns": "shop.orders", "o": { "$set": { "x": 1 } }, "o2": { "sk": 3, "_id": 1 } },
            ] },
            "ts": ts(5), "t": 1_i64,
        },
    ];
    for format in [
        RecordFormat::Oplog,
        RecordFormat::ChangeEvent,
        RecordFormat::Debezium { server_name: "x" },
    ] {
        let mut e = emitter()
            .with_format(format)
            .with_full_document(FullDocument::Lookup);
        let out = run(&mut e, &docs);
        let lookups = e.take_lookups();
        assert_eq!(lookups.len(), 2, "{format:?}: {lookups:#?}");
        for l in &lookups {
            let SinkInput::Record(r) = &out[l.index] else {
                panic!("{format:?}: not a record at {}", l.index)
            };
            assert_eq!(r.op, "u");
            assert_eq!(r.checkpoint.is_some(), l.entry.ts.increment == 2);
            let filled = crate::pipeline::lookup::fill(
                r.value.as_deref().unwrap(),
                l.splice,
                Some(&rawdoc! { "_id": 1 }),
            )
            .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&filled).unwrap();
            assert_eq!(v["fullDocumentLookup"], "found", "{format:?}");
        }
        assert_eq!(lookups[0].ns, "shop.users");
        assert_eq!(lookups[0].key, bson::doc! { "_id": 5 });
        assert_eq!(lookups[0].entry.ts.increment, 2);
        assert_eq!(lookups[1].ns, "shop.orders");
        assert_eq!(lookups[1].key, bson::doc! { "sk": 3, "_id": 1 });
        assert_eq!(lookups[1].entry.ts.increment, 5, "the commit's entry");
        assert!(e.take_lookups().is_empty(), "taken once");
        let mut off = emitter().with_format(format);
        run(&mut off, &docs);
        assert!(off.take_lookups().is_empty());
    }
}

/// Parts of a snapshot read later (after `SnapshotTooOld`): `shop.a` after `_id` 5 and all
/// of `shop.b` were read at `ts(20)`, the rest at `ts(10)`. A change between the two is
/// emitted only for documents read at `ts(10)`, also inside one transaction; no checkpoint
/// lands at or before `ts(20)`.
#[test]
fn documents_read_later_skip_their_changes_up_to_that_time() {
    use crate::snapshot::floor::LaterRead;
    let floor = SnapshotFloor {
        base: Timestamp::from(ts(10)),
        later: vec![
            LaterRead {
                ns: "shop.a".into(),
                after_id: Some(bson::Bson::Int32(5)),
                at: Timestamp::from(ts(20)),
            },
            LaterRead {
                ns: "shop.b".into(),
                after_id: None,
                at: Timestamp::from(ts(20)),
            },
        ],
    };
    let mut e = Emitter::new(
        "s".into(),
        Filter::default(),
        KeyKind::Document,
        Arc::default(),
        Some(Timestamp::from(ts(5))),
    )
    .after_snapshot(Some(floor), 0);
    let upd = |ns: &str, id: i32, i: u32| rawdoc! { "op": "u", "ns": ns, "o": { "$v": 2, "diff": { "u": { "n": 1 } } }, "o2": { "_id": id }, "ts": ts(i), "t": 1_i64 };
    let txn = rawdoc! {
        "lsid": lsid(), "txnNumber": 3_i64, "op": "c", "ns": "admin.$cmd",
        "o": { "applyOps": [
            { "op": "i", "ns": "shop.a", "o": { "_id": 7 } },
            { "op": "i", "ns": "shop.a", "o": { "_id": 2 } },
            { "op": "d", "ns": "shop.b", "o": { "_id": 1 } },
        ] },
        "ts": ts(15), "t": 1_i64,
    };
    let out = run(
        &mut e,
        &[
            upd("shop.a", 3, 12), // read at 10: emitted
            upd("shop.a", 6, 13), // read at 20: skipped
            upd("shop.b", 1, 14), // read at 20: skipped
            txn,                  // only the insert of _id 2
            upd("shop.c", 9, 16), // read at 10: emitted
            upd("shop.a", 6, 21), // after 20: emitted
        ],
    );
    let ids: Vec<serde_json::Value> = out
        .iter()
        .filter_map(|i| match i {
            SinkInput::Record(r) => {
                let v: serde_json::Value = serde_json::from_slice(r.value.as_deref()?).ok()?;
                Some(serde_json::json!([
                    v["ns"],
                    v["entry"]["o2"]["_id"].clone(),
                    v["entry"]["o"]["_id"].clone()
                ]))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        ids,
        [
            serde_json::json!(["shop.a", 3, null]),
            serde_json::json!(["shop.a", null, 2]),
            serde_json::json!(["shop.c", 9, null]),
            serde_json::json!(["shop.a", 6, null]),
        ]
    );
    assert!(
        checkpoints(&out).into_iter().flatten().all(|i| i > 20),
        "no checkpoint at or before the latest read: {out:?}"
    );
}

/// An update in a shape no MongoDB version logs (`$v: 3`), alone and inside a
/// transaction. `[sink] undecodable = "stop"` (the default): a definite error naming the
/// shard, the entry, the namespace and the fix, and no record for it (the update before
/// it was emitted). `"raw"`: a record flagged `"undecodable": true` carrying the
/// operation as logged and the error, with the document's key and no `operationType`
/// or Debezium `op`, counted; no lookup is asked for it; the stream goes on.
#[test]
fn undecodable_updates_stop_the_shard_or_are_written_raw_and_flagged() {
    let good = rawdoc! { "op": "u", "ns": "shop.users", "o": { "$v": 2, "diff": { "u": { "x": 1 } } }, "o2": { "_id": 5 }, "ts": ts(1), "t": 1_i64 };
    let odd = rawdoc! { "op": "u", "ns": "shop.users", "o": { "$v": 3, "delta": { "x": 1 } }, "o2": { "_id": 5 }, "ts": ts(2), "t": 1_i64 };
    let in_txn = rawdoc! {
        "lsid": lsid(), "txnNumber": 7_i64, "op": "c", "ns": "admin.$cmd",
        "o": { "applyOps": [
            { "op": "u", "ns": "shop.orders", "o": { "$rename": { "a": "b" } }, "o2": { "_id": 1 } },
        ] },
        "ts": ts(3), "t": 1_i64,
    };
    let after =
        rawdoc! { "op": "i", "ns": "shop.users", "o": { "_id": 6 }, "ts": ts(4), "t": 1_i64 };
    let formats = [
        RecordFormat::ChangeEvent,
        RecordFormat::Debezium { server_name: "x" },
    ];
    for format in formats {
        let mut e = emitter().with_format(format);
        let mut out = Vec::new();
        e.committed(&OplogEntry::parse(&good).unwrap(), &mut out)
            .unwrap();
        let err = e
            .committed(&OplogEntry::parse(&odd).unwrap(), &mut out)
            .unwrap_err()
            .to_string();
        for part in [
            "shard s",
            "shop.users",
            "$v: 3",
            "[sink] undecodable = \"raw\"",
        ] {
            assert!(err.contains(part), "{format:?}: {part} in {err}");
        }
        assert_eq!(out.len(), 1, "{format:?}: only the good update");
        let err = emitter()
            .with_format(format)
            .committed(&OplogEntry::parse(&in_txn).unwrap(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shop.orders") && err.contains("$rename"),
            "{err}"
        );

        let mut e = emitter()
            .with_format(format)
            .with_undecodable(Undecodable::Raw)
            .with_full_document(FullDocument::Lookup);
        let out = run(
            &mut e,
            &[good.clone(), odd.clone(), in_txn.clone(), after.clone()],
        );
        let records: Vec<&OutRecord> = out
            .iter()
            .filter_map(|i| match i {
                SinkInput::Record(r) => Some(r),
                SinkInput::Marker(_) => None,
            })
            .collect();
        assert_eq!(records.len(), 4, "{format:?}: {records:#?}");
        for (r, (ns, id, o)) in records[1..3].iter().zip([
            ("shop.users", 5, bson::doc! {"$v": 3, "delta": {"x": 1}}),
            ("shop.orders", 1, bson::doc! {"$rename": {"a": "b"}}),
        ]) {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(v["undecodable"], true, "{format:?}: {v}");
            assert!(v["error"].as_str().unwrap().contains(ns), "{v}");
            assert_eq!(v["ns"], ns);
            assert_eq!(v["op"], "u");
            assert!(v.get("operationType").is_none(), "{v}");
            let entry = bson::Bson::try_from(v["entry"].clone()).unwrap();
            assert_eq!(
                entry.as_document().unwrap().get_document("o").unwrap(),
                &o,
                "{v}"
            );
            let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
            match format {
                RecordFormat::Debezium { .. } => assert_eq!(key, format!("{{\"id\":\"{id}\"}}")),
                _ => assert!(key.contains(ns) && key.contains(&id.to_string()), "{key}"),
            }
        }
        assert_eq!(e.stats.undecodable.load(Relaxed), 2, "{format:?}");
        let lookups = e.take_lookups();
        assert_eq!(lookups.len(), 1, "only the good update: {lookups:#?}");
        assert_eq!(lookups[0].entry.ts.increment, 1);
    }
}

/// `[sink] json = "canonical"`: oplog and change-event records type every number, so an
/// int64 that fits in 32 bits stays an int64 for the consumer (relaxed writes it bare).
#[test]
fn canonical_json_keeps_the_types() {
    let ins = rawdoc! { "op": "i", "ns": "shop.a", "o": { "_id": 1, "n": 5_i64, "d": 2.0 }, "ts": ts(1), "t": 1_i64 };
    for (format, path) in [
        (RecordFormat::Oplog, "/entry/o/n"),
        (RecordFormat::ChangeEvent, "/fullDocument/n"),
    ] {
        let value = |json| {
            let mut e = emitter().with_format(format).with_json(json);
            let out = run(&mut e, std::slice::from_ref(&ins));
            let SinkInput::Record(r) = &out[0] else {
                panic!("{out:?}")
            };
            serde_json::from_slice::<serde_json::Value>(r.value.as_deref().unwrap()).unwrap()
        };
        let canonical = value(quorumtail_sink::JsonMode::Canonical);
        assert_eq!(
            canonical.pointer(path),
            Some(&serde_json::json!({"$numberLong": "5"})),
            "{canonical}"
        );
        let relaxed = value(quorumtail_sink::JsonMode::Relaxed);
        assert_eq!(
            relaxed.pointer(path),
            Some(&serde_json::json!(5)),
            "{relaxed}"
        );
    }
}

use super::*;
use bson::raw::cstr;
use bson::spec::BinarySubtype;
use bson::{rawdoc, Binary, RawArrayBuf};

const T0: u32 = 1_700_000_000;

fn ts(i: u32) -> bson::Timestamp {
    bson::Timestamp {
        time: T0,
        increment: i,
    }
}

fn at(i: u32) -> Timestamp {
    Timestamp::new(T0, i)
}

fn uuid(b: u8) -> Binary {
    Binary {
        subtype: BinarySubtype::Uuid,
        bytes: vec![b; 16],
    }
}

fn lsid(n: u8) -> RawDocumentBuf {
    rawdoc! {
        "id": uuid(n),
        "uid": Binary { subtype: BinarySubtype::Generic, bytes: vec![0xe3; 32] },
    }
}

fn ins(ns: &str, id: i32) -> RawDocumentBuf {
    rawdoc! { "op": "i", "ns": ns, "ui": uuid(9), "o": { "_id": id, "v": "x" }, "o2": { "_id": id } }
}

fn upd(ns: &str, id: i32) -> RawDocumentBuf {
    rawdoc! { "op": "u", "ns": ns, "ui": uuid(9), "o": { "$v": 2, "diff": { "u": { "v": "y" } } }, "o2": { "_id": id } }
}

fn ops(docs: Vec<RawDocumentBuf>) -> RawArrayBuf {
    let mut a = RawArrayBuf::new();
    for d in docs {
        a.push(d);
    }
    a
}

/// `prevOpTime` pointing at entry `i`, or the null OpTime for 0.
fn prev(i: u32) -> RawDocumentBuf {
    if i == 0 {
        rawdoc! { "ts": bson::Timestamp { time: 0, increment: 0 }, "t": -1_i64 }
    } else {
        rawdoc! { "ts": ts(i), "t": 1_i64 }
    }
}

/// A transaction entry at `ts(i)` with session `(lsid n, txnNumber)`, `o` and
/// `prevOpTime` (`None`: no field).
fn txn_entry(
    i: u32,
    session: Option<(u8, i64)>,
    o: RawDocumentBuf,
    prev_at: Option<u32>,
) -> RawDocumentBuf {
    let mut d = RawDocumentBuf::new();
    if let Some((n, txn)) = session {
        d.append(cstr!("lsid"), lsid(n));
        d.append(cstr!("txnNumber"), txn);
    }
    d.append(cstr!("op"), "c");
    d.append(cstr!("ns"), "admin.$cmd");
    d.append(cstr!("o"), o);
    d.append(cstr!("ts"), ts(i));
    d.append(cstr!("t"), 1_i64);
    d.append(cstr!("v"), 2_i64);
    d.append(
        cstr!("wall"),
        bson::DateTime::from_millis(1_700_000_000_000),
    );
    if let Some(p) = prev_at {
        d.append(cstr!("prevOpTime"), prev(p));
    }
    d.append(cstr!("stmtId"), 0_i32);
    d
}

fn partial(i: u32, s: (u8, i64), p: u32, docs: Vec<RawDocumentBuf>) -> RawDocumentBuf {
    txn_entry(
        i,
        Some(s),
        rawdoc! { "applyOps": ops(docs), "partialTxn": true },
        Some(p),
    )
}

fn last(i: u32, s: (u8, i64), p: u32, docs: Vec<RawDocumentBuf>, count: i64) -> RawDocumentBuf {
    txn_entry(
        i,
        Some(s),
        rawdoc! { "applyOps": ops(docs), "count": count },
        Some(p),
    )
}

fn commit(i: u32, s: (u8, i64), p: u32) -> RawDocumentBuf {
    txn_entry(
        i,
        Some(s),
        rawdoc! { "commitTransaction": 1, "commitTimestamp": ts(i - 1) },
        Some(p),
    )
}

fn abort(i: u32, s: (u8, i64), p: u32) -> RawDocumentBuf {
    txn_entry(i, Some(s), rawdoc! { "abortTransaction": 1 }, Some(p))
}

fn plain(i: u32) -> RawDocumentBuf {
    rawdoc! { "op": "i", "ns": "shop.orders", "ui": uuid(9), "o": { "_id": 1000 + i as i32 }, "ts": ts(i), "t": 1_i64, "v": 2_i64 }
}

fn push(a: &mut TxnAssembler, raw: &RawDocumentBuf) -> Result<Step, TxnError> {
    a.push(&OplogEntry::parse(raw).unwrap())
}

fn emitted(step: Step) -> CommittedTxn {
    match step {
        Step::Emit(t) => t,
        other => panic!("expected Emit, got {other:?}"),
    }
}

fn ids(t: &CommittedTxn) -> Vec<i32> {
    t.ops
        .iter()
        .map(|op| match op.document_id() {
            Some(RawBsonRef::Int32(v)) => v,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn non_transaction_entries_pass_through() {
    let mut a = TxnAssembler::default();
    assert_eq!(push(&mut a, &plain(1)).unwrap(), Step::Entry);
    let ddl = rawdoc! { "op": "c", "ns": "shop.$cmd", "ui": uuid(9), "o": { "drop": "orders" }, "ts": ts(2), "t": 1_i64 };
    assert_eq!(push(&mut a, &ddl).unwrap(), Step::Entry);
    let noop =
        rawdoc! { "op": "n", "ns": "", "o": { "msg": "periodic noop" }, "ts": ts(3), "t": 1_i64 };
    assert_eq!(push(&mut a, &noop).unwrap(), Step::Entry);
    assert!(!a.has_open());
}

#[test]
fn small_transaction() {
    let mut a = TxnAssembler::default();
    let raw = txn_entry(
        5,
        Some((1, 3)),
        rawdoc! { "applyOps": ops(vec![ins("shop.orders", 1), upd("shop.stock", 2)]) },
        Some(0),
    );
    let t = emitted(push(&mut a, &raw).unwrap());
    assert_eq!(t.commit, EntryId::new(at(5), 1));
    assert_eq!(t.first, t.commit);
    assert_eq!((t.entries, t.prepared), (1, false));
    assert_eq!(t.txn_number, Some(3));
    assert_eq!(t.lsid.as_deref(), Some(lsid(1).as_ref()));
    assert_eq!(ids(&t), [1, 2]);
    assert_eq!(t.ops[0].op, OpKind::Insert);
    assert_eq!(t.ops[1].op, OpKind::Update);
    assert_eq!(t.ops[1].ns, "shop.stock");
    assert_eq!(
        (t.ops[0].index, t.ops[1].index, t.ops[1].from_migrate),
        (0, 1, false)
    );
    assert_eq!(t.ops[0].doc, ins("shop.orders", 1));
    assert_eq!(t.info(&t.ops[1]).index, 1);
    assert!(!a.has_open());
}

#[test]
fn applyops_command_without_session() {
    let mut a = TxnAssembler::default();
    let raw = rawdoc! {
        "op": "c", "ns": "test.$cmd",
        "o": { "applyOps": ops(vec![ins("test.c", 1)]), "alwaysUpsert": true },
        "ts": ts(4), "t": 1_i64, "v": 2_i64,
    };
    let t = emitted(push(&mut a, &raw).unwrap());
    assert_eq!((&t.lsid, t.txn_number), (&None, None));
    assert_eq!(ids(&t), [1]);
}

#[test]
fn large_transaction_with_three_partial_entries() {
    let mut a = TxnAssembler::default();
    let s = (1, 7);
    push(&mut a, &plain(9)).unwrap();
    assert_eq!(
        push(
            &mut a,
            &partial(10, s, 0, vec![ins("a.b", 0), ins("a.b", 1)])
        )
        .unwrap(),
        Step::Buffered
    );
    assert_eq!(
        push(&mut a, &partial(11, s, 10, vec![ins("a.b", 2)])).unwrap(),
        Step::Buffered
    );
    assert_eq!(
        push(&mut a, &partial(12, s, 11, vec![upd("a.b", 3)])).unwrap(),
        Step::Buffered
    );
    let open = a.oldest_open().unwrap();
    assert_eq!(open.first, EntryId::new(at(10), 1));
    assert_eq!(a.safe_position(), Some(EntryId::new(at(9), 1)));
    assert_eq!((open.entries, open.ops, open.prepared), (3, 4, false));
    assert!(a.buffered_bytes() > 0);
    let t = emitted(push(&mut a, &last(13, s, 12, vec![ins("a.b", 4)], 5)).unwrap());
    assert_eq!(ids(&t), [0, 1, 2, 3, 4]);
    assert_eq!(
        t.ops.iter().map(|o| o.index).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(t.commit, EntryId::new(at(13), 1));
    assert_eq!(t.first, EntryId::new(at(10), 1));
    assert_eq!(t.entries, 4);
    assert!(!a.has_open());
    assert_eq!(a.buffered_bytes(), 0);
}

#[test]
fn prepared_small_transaction_commits() {
    let mut a = TxnAssembler::default();
    let s = (2, 1);
    let prep = txn_entry(
        20,
        Some(s),
        rawdoc! { "applyOps": ops(vec![ins("a.b", 1)]), "prepare": true },
        Some(0),
    );
    assert_eq!(push(&mut a, &prep).unwrap(), Step::Buffered);
    assert!(a.oldest_open().unwrap().prepared);
    assert_eq!(push(&mut a, &plain(21)).unwrap(), Step::Entry);
    let t = emitted(push(&mut a, &commit(22, s, 20)).unwrap());
    assert!(t.prepared);
    assert_eq!(t.entries, 2);
    assert_eq!(t.commit, EntryId::new(at(22), 1));
    // The commit time is the decision's commitTimestamp, not the commit entry's ts.
    assert_eq!(t.commit_timestamp, Some(at(21)));
    assert_eq!(t.info(&t.ops[0]).commit_timestamp, Some(at(21)));
    assert_eq!(ids(&t), [1]);
    assert!(!a.has_open());
}

#[test]
fn prepared_large_transaction_commits() {
    let mut a = TxnAssembler::default();
    let s = (3, 2);
    push(&mut a, &partial(30, s, 0, vec![ins("a.b", 1)])).unwrap();
    push(&mut a, &partial(31, s, 30, vec![ins("a.b", 2)])).unwrap();
    // The prepare entry takes the last reserved slot: a gap is normal.
    let prep = txn_entry(
        34,
        Some(s),
        rawdoc! { "applyOps": ops(vec![ins("a.b", 3)]), "prepare": true, "count": 3_i64 },
        Some(31),
    );
    assert_eq!(push(&mut a, &prep).unwrap(), Step::Buffered);
    assert_eq!(push(&mut a, &plain(35)).unwrap(), Step::Entry);
    let t = emitted(push(&mut a, &commit(40, s, 34)).unwrap());
    assert_eq!(ids(&t), [1, 2, 3]);
    assert_eq!((t.entries, t.prepared), (4, true));
}

#[test]
fn prepared_transaction_aborts() {
    let mut a = TxnAssembler::default();
    let s = (4, 9);
    push(
        &mut a,
        &partial(50, s, 0, vec![ins("a.b", 1), ins("a.b", 2)]),
    )
    .unwrap();
    let prep = txn_entry(
        51,
        Some(s),
        rawdoc! { "applyOps": ops(vec![ins("a.b", 3)]), "prepare": true, "count": 3_i64 },
        Some(50),
    );
    push(&mut a, &prep).unwrap();
    match push(&mut a, &abort(52, s, 51)).unwrap() {
        Step::Aborted(ab) => {
            assert_eq!(ab.dropped_ops, 3);
            assert_eq!(ab.abort, EntryId::new(at(52), 1));
            assert_eq!(ab.first, EntryId::new(at(50), 1));
            assert!(ab.txn.to_string().contains("txnNumber 9"), "{}", ab.txn);
        }
        other => panic!("{other:?}"),
    }
    assert!(!a.has_open());
    assert_eq!(a.buffered_bytes(), 0);
}

#[test]
fn empty_prepare_then_commit() {
    let mut a = TxnAssembler::default();
    let s = (4, 10);
    let prep = txn_entry(
        53,
        Some(s),
        rawdoc! { "applyOps": [], "prepare": true },
        Some(0),
    );
    assert_eq!(push(&mut a, &prep).unwrap(), Step::Buffered);
    assert!(emitted(push(&mut a, &commit(54, s, 53)).unwrap())
        .ops
        .is_empty());
}

#[test]
fn unprepared_large_transaction_aborts() {
    let mut a = TxnAssembler::default();
    let s = (5, 1);
    push(&mut a, &partial(60, s, 0, vec![ins("a.b", 1)])).unwrap();
    push(&mut a, &partial(61, s, 60, vec![ins("a.b", 2)])).unwrap();
    match push(&mut a, &abort(62, s, 61)).unwrap() {
        Step::Aborted(ab) => assert_eq!(ab.dropped_ops, 2),
        other => panic!("{other:?}"),
    }
    assert!(!a.has_open());
}

#[test]
fn interleaved_sessions_and_plain_entries() {
    let mut a = TxnAssembler::default();
    let (s1, s2) = ((1, 1), (2, 1));
    push(&mut a, &partial(70, s1, 0, vec![ins("a.one", 1)])).unwrap();
    push(&mut a, &partial(71, s2, 0, vec![ins("a.two", 1)])).unwrap();
    assert_eq!(push(&mut a, &plain(72)).unwrap(), Step::Entry);
    assert!(a.has_open());
    assert_eq!(a.open_count(), 2);
    assert_eq!(a.oldest_open().unwrap().first.ts, at(70));
    push(&mut a, &partial(73, s2, 71, vec![ins("a.two", 2)])).unwrap();
    push(&mut a, &partial(74, s1, 70, vec![ins("a.one", 2)])).unwrap();
    let t2 = emitted(push(&mut a, &last(75, s2, 73, vec![ins("a.two", 3)], 3)).unwrap());
    assert!(t2.ops.iter().all(|o| o.ns == "a.two"));
    assert_eq!(ids(&t2), [1, 2, 3]);
    assert_eq!(a.open_count(), 1);
    // s1 opened before s2 and is still open: no checkpoint yet, although s2's
    // first entry is behind us.
    assert_eq!(a.safe_position(), None);
    assert_eq!(push(&mut a, &plain(76)).unwrap(), Step::Entry);
    assert!(a.has_open());
    let t1 = emitted(push(&mut a, &last(77, s1, 74, vec![ins("a.one", 3)], 3)).unwrap());
    assert!(t1.ops.iter().all(|o| o.ns == "a.one"));
    assert_eq!(ids(&t1), [1, 2, 3]);
    assert!(!a.has_open());
    assert_eq!(a.safe_position(), Some(EntryId::new(at(77), 1)));
}

/// A batched multi-delete (7.0+: `OpObserverImpl::onBatchedWriteCommit`, one
/// session-less `applyOps` per batch, no `prevOpTime`) is emitted whole at its own
/// position, its deletes in order; the safe position is the batch entry itself, never a
/// point inside it.
#[test]
fn batched_delete_is_emitted_whole_at_its_position() {
    let mut a = TxnAssembler::default();
    push(&mut a, &plain(1)).unwrap();
    let del =
        |id: i32| rawdoc! { "op": "d", "ns": "shop.items", "ui": uuid(9), "o": { "_id": id } };
    let batch = txn_entry(
        2,
        None,
        rawdoc! { "applyOps": ops((0..100).map(del).collect()) },
        None,
    );
    let t = emitted(push(&mut a, &batch).unwrap());
    assert_eq!(ids(&t), (0..100).collect::<Vec<_>>());
    assert!(t
        .ops
        .iter()
        .all(|op| op.op == OpKind::Delete && op.ns == "shop.items"));
    assert_eq!(t.commit, EntryId::new(at(2), 1));
    assert!(t.lsid.is_none());
    assert!(!a.has_open());
    assert_eq!(a.safe_position(), Some(EntryId::new(at(2), 1)));
}

#[test]
fn safe_position_never_cuts_a_transaction() {
    let mut a = TxnAssembler::default();
    let (s1, s2) = ((1, 1), (2, 1));
    push(&mut a, &plain(1)).unwrap();
    push(&mut a, &partial(2, s1, 0, vec![ins("a.b", 1)])).unwrap();
    push(&mut a, &partial(3, s2, 0, vec![ins("a.b", 2)])).unwrap();
    push(&mut a, &last(4, s1, 2, vec![ins("a.b", 3)], 2)).unwrap();
    // s1 is done and s2 (oldest open) started at 3, but a checkpoint at 2 would cut
    // s1 in two: the safe position stays at 1.
    assert_eq!(a.oldest_open().unwrap().first.ts, at(3));
    assert_eq!(a.safe_position(), Some(EntryId::new(at(1), 1)));
    push(&mut a, &last(5, s2, 3, vec![ins("a.b", 4)], 2)).unwrap();
    assert_eq!(a.safe_position(), Some(EntryId::new(at(5), 1)));
}

#[test]
fn same_session_next_txn_number_is_separate() {
    let mut a = TxnAssembler::default();
    push(&mut a, &partial(80, (1, 1), 0, vec![ins("a.b", 1)])).unwrap();
    push(&mut a, &partial(81, (1, 2), 0, vec![ins("a.b", 2)])).unwrap();
    assert_eq!(a.open_count(), 2);
}

#[test]
fn from_migrate_inner_and_entry_level() {
    let mut a = TxnAssembler::default();
    let mut migrated = ins("a.b", 2);
    migrated.append(cstr!("fromMigrate"), true);
    let raw = txn_entry(
        90,
        Some((1, 1)),
        rawdoc! { "applyOps": ops(vec![ins("a.b", 1), migrated]) },
        Some(0),
    );
    let t = emitted(push(&mut a, &raw).unwrap());
    assert_eq!(
        t.ops.iter().map(|o| o.from_migrate).collect::<Vec<_>>(),
        [false, true]
    );
    // A batched write (6.0+) carries fromMigrate on the entry itself.
    let batched = rawdoc! {
        "op": "c", "ns": "admin.$cmd", "fromMigrate": true,
        "o": { "applyOps": ops(vec![rawdoc! { "op": "d", "ns": "a.b", "ui": uuid(9), "o": { "_id": 3 } }]) },
        "ts": ts(91), "t": 1_i64,
    };
    let t = emitted(push(&mut a, &batched).unwrap());
    assert!(t.ops[0].from_migrate);
    assert_eq!(t.ops[0].op, OpKind::Delete);
}

#[test]
fn session_less_batched_chain() {
    let mut a = TxnAssembler::default();
    let p = txn_entry(
        100,
        None,
        rawdoc! { "applyOps": ops(vec![ins("a.b", 1)]), "partialTxn": true },
        Some(0),
    );
    assert_eq!(push(&mut a, &p).unwrap(), Step::Buffered);
    assert!(matches!(
        a.oldest_open().unwrap().txn,
        TxnName::Chain { first: Some(t) } if t == at(100)
    ));
    let f = txn_entry(
        101,
        None,
        rawdoc! { "applyOps": ops(vec![ins("a.b", 2)]), "count": 2_i64 },
        Some(100),
    );
    let t = emitted(push(&mut a, &f).unwrap());
    assert_eq!(ids(&t), [1, 2]);
    assert_eq!(t.lsid, None);
}

/// 8.0 retryable vectored inserts (mongodb/mongo `oplog.cpp` `appendOplogEntryChainInfo`:
/// `multiOpType` instead of the statement ids; `session_info_in_oplog.js`: the first
/// batch's `prevOpTime` is null, `stmtId` on the inner operations): two batches of one
/// insert command on a shard, the second linked to the first, each emitted alone.
#[test]
fn applied_separately_entries_are_standalone() {
    let mut a = TxnAssembler::default();
    let stmt = |id: i32, k: i32| {
        rawdoc! { "op": "i", "ns": "a.b", "ui": uuid(1), "o": { "_id": id }, "o2": { "_id": id }, "stmtId": k }
    };
    for (i, p, docs) in [(110, 0, [(1, 0), (2, 1)]), (111, 110, [(3, 2), (4, 3)])] {
        let o = rawdoc! { "applyOps": ops(docs.iter().map(|(id, k)| stmt(*id, *k)).collect()) };
        let raw = rawdoc! { "lsid": lsid(1), "txnNumber": 4_i64, "op": "c", "ns": "admin.$cmd",
        "o": o, "ts": ts(i), "t": 1_i64, "v": 2_i64, "wall": bson::DateTime::from_millis(0),
        "prevOpTime": prev(p), "multiOpType": 1_i32 };
        let t = emitted(push(&mut a, &raw).unwrap());
        assert_eq!(ids(&t), docs.map(|(id, _)| id));
        assert!(t.lsid.is_some() && t.txn_number == Some(4));
        assert!(!a.has_open());
    }
}

#[test]
fn nested_apply_ops_is_flattened() {
    let mut a = TxnAssembler::default();
    let nested = rawdoc! { "op": "c", "ns": "admin.$cmd", "o": { "applyOps": ops(vec![ins("a.b", 2), ins("a.b", 3)]) }, "fromMigrate": true };
    let raw = rawdoc! {
        "op": "c", "ns": "admin.$cmd",
        "o": { "applyOps": ops(vec![ins("a.b", 1), nested, ins("a.b", 4)]) },
        "ts": bson::Timestamp { time: 1422998892, increment: 1 }, "h": 5_i64,
    };
    let t = emitted(push(&mut a, &raw).unwrap());
    assert_eq!(ids(&t), [1, 2, 3, 4]);
    assert_eq!(
        t.ops.iter().map(|o| o.from_migrate).collect::<Vec<_>>(),
        [false, true, true, false]
    );
    assert_eq!(
        t.ops.iter().map(|o| o.index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );

    let mut deep = ops(vec![ins("a.b", 1)]);
    for _ in 0..MAX_NESTING {
        deep = ops(vec![
            rawdoc! { "op": "c", "ns": "admin.$cmd", "o": { "applyOps": deep } },
        ]);
    }
    let raw = rawdoc! { "op": "c", "ns": "admin.$cmd", "o": { "applyOps": deep }, "ts": ts(1), "t": 1_i64 };
    assert!(matches!(
        push(&mut a, &raw),
        Err(TxnError::NestedTooDeep { .. })
    ));
}

#[test]
fn inner_command_and_noop_ops() {
    let mut a = TxnAssembler::default();
    let raw = txn_entry(
        120,
        Some((1, 1)),
        rawdoc! { "applyOps": ops(vec![
            rawdoc! { "op": "c", "ns": "a.$cmd", "ui": uuid(8), "o": { "create": "b", "idIndex": { "v": 2, "key": { "_id": 1 }, "name": "_id_" } } },
            rawdoc! { "op": "n", "o": { "msg": "x" } },
        ]) },
        Some(0),
    );
    let t = emitted(push(&mut a, &raw).unwrap());
    assert_eq!(t.ops[0].command_name(), Some("create"));
    assert_eq!(t.ops[1].op, OpKind::Noop);
    assert_eq!(t.ops[1].ns, "");
}

#[test]
fn error_not_an_array() {
    let mut a = TxnAssembler::default();
    let raw = txn_entry(
        130,
        Some((1, 1)),
        rawdoc! { "applyOps": { "0": ins("a.b", 1) } },
        Some(0),
    );
    let err = push(&mut a, &raw).unwrap_err();
    assert!(matches!(err, TxnError::NotAnArray { at: t, .. } if t == at(130)));
    assert!(err.to_string().contains("1700000000:130"), "{err}");
}

#[test]
fn error_bad_inner_ops() {
    let mut a = TxnAssembler::default();
    for (inner, needle) in [
        (rawdoc! { "ns": "a.b", "o": { "_id": 1 } }, "has no `op`"),
        (rawdoc! { "op": "i", "o": { "_id": 1 } }, "has no `ns`"),
        (
            rawdoc! { "op": "zz", "ns": "a.b", "o": {} },
            "unknown op code",
        ),
        (rawdoc! { "op": 1, "ns": "a.b", "o": {} }, "not a string"),
    ] {
        let raw = txn_entry(
            131,
            Some((1, 1)),
            rawdoc! { "applyOps": ops(vec![ins("a.b", 0), inner]) },
            Some(0),
        );
        let err = push(&mut a, &raw).unwrap_err();
        assert!(
            matches!(err, TxnError::BadInnerOp { index: 1, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(needle) && msg.contains("1700000000:131"),
            "{msg}"
        );
    }
    let raw =
        rawdoc! { "op": "c", "ns": "a.$cmd", "o": { "applyOps": [1] }, "ts": ts(132), "t": 1_i64 };
    assert!(push(&mut a, &raw)
        .unwrap_err()
        .to_string()
        .contains("not a document"));
}

#[test]
fn error_commit_or_abort_of_unknown_transaction() {
    let mut a = TxnAssembler::default();
    let err = push(&mut a, &commit(140, (6, 42), 139)).unwrap_err();
    match &err {
        TxnError::UnknownTransaction { at: t, what, txn } => {
            assert_eq!(*t, at(140));
            assert_eq!(*what, "commitTransaction");
            assert_eq!(
                *txn,
                TxnName::Session {
                    lsid: "06060606-0606-0606-0606-060606060606".into(),
                    txn_number: 42
                }
            );
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("06060606-0606") && msg.contains("txnNumber 42") && msg.contains("checkpoint"),
        "{msg}"
    );
    assert!(matches!(
        push(&mut a, &abort(141, (6, 42), 139)),
        Err(TxnError::UnknownTransaction {
            what: "abortTransaction",
            ..
        })
    ));
    // A continuation or final entry without its start is the same error.
    assert!(matches!(
        push(&mut a, &last(142, (6, 43), 138, vec![ins("a.b", 1)], 2)),
        Err(TxnError::UnknownTransaction {
            what: "applyOps",
            ..
        })
    ));
    let no_session = rawdoc! { "op": "c", "ns": "admin.$cmd", "o": { "commitTransaction": 1 }, "ts": ts(143), "t": 1_i64 };
    assert!(matches!(
        push(&mut a, &no_session),
        Err(TxnError::MissingSession { .. })
    ));
}

#[test]
fn error_broken_chain() {
    let mut a = TxnAssembler::default();
    let s = (7, 1);
    push(&mut a, &partial(150, s, 0, vec![ins("a.b", 1)])).unwrap();
    push(&mut a, &partial(151, s, 150, vec![ins("a.b", 2)])).unwrap();
    // Points at 150 instead of 151: entry 151 is skipped over.
    let err = push(&mut a, &partial(152, s, 150, vec![ins("a.b", 3)])).unwrap_err();
    match &err {
        TxnError::BrokenChain {
            at: t,
            expected,
            found,
            ..
        } => {
            assert_eq!(*t, at(152));
            assert_eq!(expected.ts, at(151));
            assert_eq!(found.ts, at(150));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("1700000000:152"), "{err}");
    // The failing entry changed nothing: the right continuation still works.
    assert_eq!(a.oldest_open().unwrap().ops, 2);
    let t = emitted(push(&mut a, &last(153, s, 151, vec![ins("a.b", 3)], 3)).unwrap());
    assert_eq!(ids(&t), [1, 2, 3]);

    // A restarted chain while one is open, and a commit pointing elsewhere.
    push(&mut a, &partial(160, s, 0, vec![ins("a.b", 1)])).unwrap();
    assert!(matches!(
        push(&mut a, &partial(161, s, 0, vec![ins("a.b", 1)])),
        Err(TxnError::BrokenChain { .. })
    ));
    assert!(matches!(
        push(&mut a, &commit(162, s, 159)),
        Err(TxnError::BrokenChain { .. })
    ));
}

#[test]
fn error_count_mismatch() {
    let mut a = TxnAssembler::default();
    let s = (8, 1);
    push(&mut a, &partial(170, s, 0, vec![ins("a.b", 1)])).unwrap();
    let err = push(&mut a, &last(171, s, 170, vec![ins("a.b", 2)], 3)).unwrap_err();
    assert!(
        matches!(
            err,
            TxnError::CountMismatch {
                count: 3,
                seen: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn error_bad_flags() {
    let mut a = TxnAssembler::default();
    let both = txn_entry(
        180,
        Some((1, 1)),
        rawdoc! { "applyOps": [], "partialTxn": true, "prepare": true },
        Some(0),
    );
    assert!(matches!(
        push(&mut a, &both),
        Err(TxnError::BadApplyOps { .. })
    ));
    let no_prev = txn_entry(
        181,
        Some((1, 1)),
        rawdoc! { "applyOps": [], "partialTxn": true },
        None,
    );
    assert!(matches!(
        push(&mut a, &no_prev),
        Err(TxnError::BadApplyOps { .. })
    ));
}

#[test]
fn memory_bounds() {
    let big = |id: i32| {
        rawdoc! { "op": "i", "ns": "a.b", "o": { "_id": id, "pad": "x".repeat(1000) } }
    };
    let mut a = TxnAssembler::new(TxnConfig {
        max_txn_bytes: 3000,
        max_total_bytes: 4000,
        skip_orphans_before: None,
    });
    let s = (9, 1);
    push(&mut a, &partial(190, s, 0, vec![big(1)])).unwrap();
    push(&mut a, &partial(191, s, 190, vec![big(2)])).unwrap();
    let err = push(&mut a, &partial(192, s, 191, vec![big(3)])).unwrap_err();
    match &err {
        TxnError::TooLarge {
            bound, limit, txn, ..
        } => {
            assert_eq!((*bound, *limit), (Bound::PerTransaction, 3000));
            assert!(matches!(txn, TxnName::Session { txn_number: 1, .. }));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("txnNumber 1"), "{err}");
    let before = a.buffered_bytes();
    // A second transaction hits the total bound.
    push(&mut a, &partial(193, (10, 1), 0, vec![big(1)])).unwrap();
    let err = push(&mut a, &partial(194, (10, 1), 193, vec![big(2)])).unwrap_err();
    assert!(
        matches!(
            err,
            TxnError::TooLarge {
                bound: Bound::Total,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(a.buffered_bytes() > before);
    assert!(a.buffered_bytes() <= 4000);
}

#[test]
fn orphans_before_the_start_can_be_skipped() {
    let mut a = TxnAssembler::new(TxnConfig {
        skip_orphans_before: Some(at(200)),
        ..TxnConfig::default()
    });
    let s = (11, 1);
    // Started at 198, before the start position 200.
    assert!(matches!(
        push(&mut a, &partial(201, s, 198, vec![ins("a.b", 2)])).unwrap(),
        Step::SkippedOrphan(_)
    ));
    assert!(matches!(
        push(&mut a, &last(202, s, 201, vec![ins("a.b", 3)], 3)).unwrap(),
        Step::SkippedOrphan(_)
    ));
    assert!(!a.has_open());
    // A prepared transaction prepared before the start, committed after.
    assert!(matches!(
        push(&mut a, &commit(203, (12, 1), 199)).unwrap(),
        Step::SkippedOrphan(_)
    ));
    // A chain that began after the start position is still an error.
    assert!(matches!(
        push(&mut a, &commit(205, (13, 1), 204)),
        Err(TxnError::UnknownTransaction { .. })
    ));
}

#[test]
fn clear_forgets_everything() {
    let mut a = TxnAssembler::default();
    push(&mut a, &partial(210, (1, 1), 0, vec![ins("a.b", 1)])).unwrap();
    a.clear();
    assert!(!a.has_open());
    assert_eq!(a.buffered_bytes(), 0);
    assert!(a.oldest_open().is_none());
}

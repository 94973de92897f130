use bson::raw::CStr;
use bson::{doc, rawdoc, Binary, Bson, RawBsonRef, RawDocument, RawDocumentBuf};
use proptest::prelude::*;

use super::*;

/// Every field of two views, and the addresses of the borrowed ones: a view rebuilt from
/// the layout must point at the very bytes the parse pointed at.
fn assert_same(parsed: &OplogEntry<'_>, viewed: &OplogEntry<'_>) {
    fn doc_bytes(d: Option<&RawDocument>) -> Option<(*const u8, &[u8])> {
        d.map(|d| (d.as_bytes().as_ptr(), d.as_bytes()))
    }
    assert!(std::ptr::eq(parsed.raw(), viewed.raw()));
    assert_eq!(parsed.ts, viewed.ts);
    assert_eq!(parsed.term, viewed.term);
    assert_eq!(parsed.hash, viewed.hash);
    assert_eq!(parsed.op, viewed.op);
    assert_eq!(parsed.ns, viewed.ns);
    if !parsed.ns.is_empty() {
        assert_eq!(parsed.ns.as_ptr(), viewed.ns.as_ptr());
    }
    assert_eq!(doc_bytes(parsed.o), doc_bytes(viewed.o));
    assert_eq!(doc_bytes(parsed.o2), doc_bytes(viewed.o2));
    assert_eq!(
        parsed.ui.map(|b| (b.as_ptr(), b)),
        viewed.ui.map(|b| (b.as_ptr(), b))
    );
    assert_eq!(parsed.from_migrate, viewed.from_migrate);
    assert_eq!(parsed.wall, viewed.wall);
    assert_eq!(doc_bytes(parsed.lsid), doc_bytes(viewed.lsid));
    assert_eq!(parsed.txn_number, viewed.txn_number);
    assert_eq!(parsed.prev_op_time, viewed.prev_op_time);
    // And what is derived from them.
    assert_eq!(parsed.id(), viewed.id());
    assert_eq!(parsed.digest(), viewed.digest());
    assert_eq!((parsed.db(), parsed.coll()), (viewed.db(), viewed.coll()));
    assert_eq!(parsed.command_name(), viewed.command_name());
    assert_eq!(parsed.document_id(), viewed.document_id());
}

/// parse(raw) and layout.view(raw) agree: the same error, or the same view.
fn check(raw: &RawDocument) {
    match (OplogEntry::parse(raw), EntryLayout::parse(raw)) {
        (Ok(parsed), Ok(layout)) => {
            assert_eq!(layout, parsed.layout());
            assert_eq!(layout.id(), parsed.id());
            let viewed = layout
                .view(raw)
                .unwrap_or_else(|| panic!("no view of the entry the layout came from: {raw:?}"));
            assert_same(&parsed, &viewed);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("parse {a:?} but layout {b:?}"),
    }
}

/// The entries of the `entry` module's tests, plus one with every field.
fn entries() -> Vec<RawDocumentBuf> {
    let uuid = Binary {
        subtype: bson::spec::BinarySubtype::Uuid,
        bytes: vec![7; 16],
    };
    let ts = |time, increment| bson::Timestamp { time, increment };
    let truncated = {
        let good =
            RawDocumentBuf::try_from(&doc! { "ts": ts(5, 1), "op": "n", "o": { "msg": "x" } })
                .unwrap();
        let mut bytes = good.as_bytes().to_vec();
        let n = bytes.len();
        bytes[n - 8] = 0x7f;
        RawDocumentBuf::from_bytes(bytes).unwrap()
    };
    vec![
        rawdoc! {
            "op": "i", "ns": "shop.orders", "ui": uuid.clone(),
            "o": { "_id": 5, "sku": "x" },
            "ts": ts(1700000000, 3), "t": 4_i64, "v": 2_i64,
            "wall": bson::DateTime::from_millis(1700000000123),
        },
        rawdoc! {
            "ts": ts(1422998892, 1),
            "h": -3056127588031004421_i64, "v": 2, "op": "d",
            "ns": "test.mycollection", "fromMigrate": true, "o": { "_id": 1.0 },
        },
        rawdoc! { "op": "i", "ns": "a.b", "o": { "_id": 1 }, "ts": ts(1700000000, 3), "t": 4_i64 },
        rawdoc! { "ts": ts(1700000000, 3), "t": 4_i64 },
        rawdoc! { "ts": ts(1700000000, 3), "h": -5_i64 },
        rawdoc! { "t": 1_i64 },
        rawdoc! { "ts": ts(1700000000, 3), "t": "x" },
        rawdoc! {
            "op": "u", "ns": "a.b", "o": { "$v": 2, "diff": { "u": { "x": 1 } } },
            "o2": { "_id": "k" }, "ts": ts(1, 1), "t": 1_i64,
        },
        rawdoc! { "op": "c", "ns": "a.$cmd", "o": { "drop": "b" }, "ts": ts(1, 2), "t": 1_i64 },
        rawdoc! {
            "lsid": { "id": Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] }, "uid": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![2; 32] } },
            "txnNumber": 3_i64,
            "op": "c", "ns": "admin.$cmd", "o": { "applyOps": [], "partialTxn": true },
            "ts": ts(9, 1), "t": 2_i64,
            "prevOpTime": { "ts": ts(0, 0), "t": -1_i64 },
        },
        rawdoc! { "op": "i", "ns": "a.b" },
        rawdoc! { "ts": ts(5, 1), "op": "x" },
        rawdoc! { "ts": ts(5, 1), "t": "one", "op": "n" },
        truncated,
        rawdoc! { "ts": ts(5, 1), "t": 1_i64, "op": "i", "ns": "a.b", "o": { "_id": 1 } },
        rawdoc! { "ts": ts(5, 1), "t": 1_i64, "op": "i", "ns": "a.b", "o": { "_id": 2 } },
        rawdoc! { "op": "i", "ns": "a.b", "o": { "_id": 1 }, "ts": ts(5, 1), "t": 1_i64, "wall": bson::DateTime::from_millis(3) },
        // Every field the view has, and an empty `ns`.
        rawdoc! {
            "ts": ts(7, 7), "t": 3_i32, "h": 0_i32, "op": "u", "ns": "", "ui": uuid,
            "o": { "$set": { "a": 1 } }, "o2": { "_id": 1, "sk": 2 }, "fromMigrate": false,
            "wall": bson::DateTime::from_millis(9), "lsid": { "id": 1 }, "txnNumber": 4_i32,
            "prevOpTime": { "ts": ts(7, 6), "t": 3_i64 }, "stmtId": 0,
        },
    ]
}

#[test]
fn view_equals_parse_on_every_test_entry() {
    for raw in entries() {
        check(&raw);
    }
}

#[test]
fn a_layout_on_other_bytes_gives_none_or_a_view_never_a_panic() {
    let entries = entries();
    let layouts: Vec<EntryLayout> = entries
        .iter()
        .filter_map(|raw| EntryLayout::parse(raw).ok())
        .collect();
    for layout in &layouts {
        for raw in &entries {
            let _ = layout.view(raw);
        }
    }
    // Same length, other bytes where `o` was: the document check refuses it.
    let a = rawdoc! { "ts": bson::Timestamp { time: 1, increment: 1 }, "op": "n", "o": { "m": 1 } };
    let b = rawdoc! { "ts": bson::Timestamp { time: 1, increment: 1 }, "op": "n", "x": { "m": 1 } };
    let swapped =
        rawdoc! { "o": { "m": 1 }, "op": "n", "ts": bson::Timestamp { time: 1, increment: 1 } };
    let layout = EntryLayout::parse(&a).unwrap();
    assert!(layout.view(&b).is_some_and(|v| v.o.is_some()));
    assert!(layout.view(&swapped).is_none());
    assert!(layout.view(&rawdoc! {}).is_none());
}

fn key(k: &str) -> &CStr {
    <&CStr>::try_from(k).unwrap()
}

/// A field of an oplog entry: known names with their usual type most of the time, any
/// type sometimes, and unknown names.
fn field() -> impl Strategy<Value = (String, Bson)> {
    let small_doc = proptest::collection::vec(("[a-z_]{1,4}", any::<i32>()), 0..3)
        .prop_map(|kv| Bson::Document(kv.into_iter().map(|(k, v)| (k, Bson::Int32(v))).collect()));
    let any_value = prop_oneof![
        any::<i64>().prop_map(Bson::Int64),
        any::<i32>().prop_map(Bson::Int32),
        any::<bool>().prop_map(Bson::Boolean),
        "[a-z.$]{0,8}".prop_map(Bson::String),
        (any::<u32>(), any::<u32>())
            .prop_map(|(time, increment)| Bson::Timestamp(bson::Timestamp { time, increment })),
        any::<i64>().prop_map(|ms| Bson::DateTime(bson::DateTime::from_millis(ms))),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(|bytes| Bson::Binary(Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes
        })),
        small_doc.clone(),
        Just(Bson::Null),
        any::<f64>().prop_map(Bson::Double),
    ];
    let optime = (any::<u32>(), any::<u32>(), prop::option::of(any::<i64>())).prop_map(
        |(time, increment, t)| {
            let mut d = doc! { "ts": bson::Timestamp { time, increment } };
            if let Some(t) = t {
                d.insert("t", t);
            }
            Bson::Document(d)
        },
    );
    let typed = prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(time, increment)| (
            "ts".to_owned(),
            Bson::Timestamp(bson::Timestamp { time, increment })
        )),
        any::<i64>().prop_map(|v| ("t".to_owned(), Bson::Int64(v))),
        any::<i64>().prop_map(|v| ("h".to_owned(), Bson::Int64(v))),
        prop::sample::select(vec!["i", "u", "d", "c", "n", "db"])
            .prop_map(|op| ("op".to_owned(), Bson::String(op.into()))),
        "[a-z]{0,4}(\\.[a-z$]{0,6})?".prop_map(|ns| ("ns".to_owned(), Bson::String(ns))),
        small_doc.clone().prop_map(|d| ("o".to_owned(), d)),
        small_doc.clone().prop_map(|d| ("o2".to_owned(), d)),
        small_doc.prop_map(|d| ("lsid".to_owned(), d)),
        proptest::collection::vec(any::<u8>(), 16).prop_map(|bytes| (
            "ui".to_owned(),
            Bson::Binary(Binary {
                subtype: bson::spec::BinarySubtype::Uuid,
                bytes
            })
        )),
        any::<bool>().prop_map(|b| ("fromMigrate".to_owned(), Bson::Boolean(b))),
        any::<i64>().prop_map(|ms| (
            "wall".to_owned(),
            Bson::DateTime(bson::DateTime::from_millis(ms))
        )),
        any::<i64>().prop_map(|v| ("txnNumber".to_owned(), Bson::Int64(v))),
        optime.prop_map(|d| ("prevOpTime".to_owned(), d)),
    ];
    let names = prop::sample::select(vec![
        "ts",
        "t",
        "h",
        "op",
        "ns",
        "o",
        "o2",
        "ui",
        "fromMigrate",
        "wall",
        "lsid",
        "txnNumber",
        "prevOpTime",
        "v",
        "stmtId",
        "x",
    ]);
    prop_oneof![
        6 => typed,
        1 => (names, any_value).prop_map(|(k, v)| (k.to_owned(), v)),
    ]
}

/// Entries as the raw bytes hold them: any order, repeated names (the last one wins in
/// `parse`), usually with `ts` and `op`.
fn entry() -> impl Strategy<Value = RawDocumentBuf> {
    let ts = (any::<u32>(), any::<u32>())
        .prop_map(|(time, increment)| Bson::Timestamp(bson::Timestamp { time, increment }));
    let op =
        prop::sample::select(vec!["i", "u", "d", "c", "n"]).prop_map(|o| Bson::String(o.into()));
    (
        prop::option::weighted(0.95, ts),
        prop::option::weighted(0.95, op),
        proptest::collection::vec(field(), 0..10),
    )
        .prop_flat_map(|(ts, op, mut fields)| {
            fields.extend(ts.map(|v| ("ts".to_owned(), v)));
            fields.extend(op.map(|v| ("op".to_owned(), v)));
            Just(fields).prop_shuffle()
        })
        .prop_map(|fields| {
            let mut raw = RawDocumentBuf::new();
            for (k, v) in fields {
                let v = bson::RawBson::try_from(v).unwrap();
                raw.append(key(&k), v);
            }
            raw
        })
}

proptest! {
    #[test]
    fn view_equals_parse_on_random_entries(raw in entry()) {
        check(&raw);
    }
}

#[test]
fn document_id_is_a_raw_value_of_the_entry() {
    let raw = rawdoc! { "ts": bson::Timestamp { time: 1, increment: 1 }, "op": "d", "ns": "a.b", "o": { "_id": "z" } };
    let layout = EntryLayout::parse(&raw).unwrap();
    let v = layout.view(&raw).unwrap();
    assert_eq!(v.document_id(), Some(RawBsonRef::String("z")));
}

//! The column encoder against MongoDB's own expectations: the binary diffs of
//! `src/mongo/db/timeseries/timeseries_write_util_test.cpp`
//! (`MakeTimeseriesCompressedDiffUpdateOp`) and hand-checked layouts of
//! `src/mongo/bson/column/bsoncolumn_test.cpp`.

use super::*;
use base64::Engine;
use bson::DateTime;

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn date(s: &str) -> Bson {
    Bson::DateTime(DateTime::parse_rfc3339_str(s).unwrap())
}

/// `MakeTimeseriesCompressedDiffUpdateOp`: a bucket of three measurements (time 15:34:31,
/// :32, :33; a and b 1, 2, 3) reopened, then :30 (a = b = 0) and :34 (4) appended in time
/// order: the diffs are `time: {o: 10, d: "gAt9AAD8fGBtAA=="}` and
/// `a, b: {o: 6, d: "gCsAEAAUABAAAA=="}`.
#[test]
fn compressed_diff_update_of_the_server_test() {
    let times = [
        "2022-06-06T15:34:31Z",
        "2022-06-06T15:34:32Z",
        "2022-06-06T15:34:33Z",
    ];
    let mut time = ColumnBuilder::reopened(&times.map(|t| Some(date(t)))).unwrap();
    let mut a = ColumnBuilder::reopened(&[1, 2, 3].map(|v| Some(Bson::Int32(v)))).unwrap();
    time.append(&date("2022-06-06T15:34:30Z")).unwrap();
    time.append(&date("2022-06-06T15:34:34Z")).unwrap();
    a.append(&Bson::Int32(0)).unwrap();
    a.append(&Bson::Int32(4)).unwrap();
    assert_eq!(
        time.intermediate(),
        BinaryDiff {
            offset: 10,
            data: b64("gAt9AAD8fGBtAA==")
        }
    );
    assert_eq!(
        a.intermediate(),
        BinaryDiff {
            offset: 6,
            data: b64("gCsAEAAUABAAAA==")
        }
    );
}

// ---- Cases of bsoncolumn_test.cpp. Their expected binaries are built as the server's test
// builds them: a literal (type, empty name, value), a control byte, and the expected deltas
// packed into Simple-8b blocks (checked against the server's words in simple8b_tests.rs).

use super::encoder::{encode_double, encode_oid, encode_string, zigzag128, zigzag64};
use super::simple8b::{BlockSink, PendingView, Simple8bBuilder};

struct Blocks(Vec<u8>);

impl BlockSink for Blocks {
    fn block(&mut self, word: u64, _: PendingView<'_>) {
        self.0.extend_from_slice(&word.to_le_bytes());
    }
}

/// `appendSimple8bBlocks64/128`: the values packed, asserting the number of blocks.
fn blocks(values: &[Option<u128>], wide: bool, n: usize) -> Vec<u8> {
    let mut b = Simple8bBuilder::new(wide);
    let mut out = Blocks(Vec::new());
    for v in values {
        match v {
            Some(v) => assert!(b.append(*v, &mut out)),
            None => b.skip(&mut out),
        }
    }
    b.flush(&mut out);
    assert_eq!(out.0.len(), 8 * n, "{values:?}");
    out.0
}

/// `appendLiteral`.
fn literal(v: &Bson) -> Vec<u8> {
    let e = Elem::of(v);
    [vec![e.t, 0], e.v].concat()
}

fn control(nibble: u8, count: u8) -> Vec<u8> {
    vec![nibble << 4 | count]
}

fn column(values: &[Option<Bson>]) -> Vec<u8> {
    let mut b = ColumnBuilder::new();
    for v in values {
        match v {
            Some(v) => b.append(v).unwrap(),
            None => b.skip(),
        }
    }
    b.finalize()
}

fn d(x: f64) -> Option<Bson> {
    Some(Bson::Double(x))
}

/// `deltaDouble` over a range: skips stay skips, deltas at the scale factor's index.
fn delta_double(values: &[Option<Bson>], prev: f64, scale: u8) -> Vec<Option<u128>> {
    let mut prev = prev;
    values
        .iter()
        .map(|v| {
            v.as_ref().map(|v| {
                let x = v.as_f64().unwrap();
                let delta = encode_double(x, scale).unwrap() - encode_double(prev, scale).unwrap();
                prev = x;
                zigzag64(delta)
            })
        })
        .collect()
}

/// `deltaDoubleMemory`: the bit patterns' difference.
fn delta_double_memory(values: &[Option<Bson>], prev: f64) -> Vec<Option<u128>> {
    let mut prev = prev;
    values
        .iter()
        .map(|v| {
            v.as_ref().map(|v| {
                let x = v.as_f64().unwrap();
                let delta = (x.to_bits().wrapping_sub(prev.to_bits())) as i64;
                prev = x;
                zigzag64(delta)
            })
        })
        .collect()
}

#[test]
fn empty_and_scalar_runs() {
    // Empty
    assert_eq!(column(&[]), vec![0]);
    // ContainsScalarInt32SimpleCompressed, ...Int64...
    let (i0, i1) = (Bson::Int32(100), Bson::Int32(101));
    let expected = [
        literal(&i0),
        control(0b1000, 0),
        blocks(&[Some(zigzag64(0)), Some(zigzag64(1))], false, 1),
        vec![0],
    ]
    .concat();
    assert_eq!(column(&[Some(i0.clone()), Some(i0), Some(i1)]), expected);
    let (l0, l1) = (Bson::Int64(100), Bson::Int64(101));
    let expected = [
        literal(&l0),
        control(0b1000, 0),
        blocks(&[Some(zigzag64(0)), Some(zigzag64(1))], false, 1),
        vec![0],
    ]
    .concat();
    assert_eq!(column(&[Some(l0.clone()), Some(l0), Some(l1)]), expected);
    // ContainsScalarDoubleSimpleCompressed (scale x1: control 0b1001)
    let expected = [
        literal(&Bson::Double(100.0)),
        control(0b1001, 0),
        blocks(&delta_double(&[d(100.0), d(101.0)], 100.0, 0), false, 1),
        vec![0],
    ]
    .concat();
    assert_eq!(column(&[d(100.0), d(100.0), d(101.0)]), expected);
    // ContainsScalarTimestampSimpleCompressed (delta of delta)
    let t0 = Bson::Timestamp(bson::Timestamp {
        time: 0,
        increment: 0,
    });
    let t1 = Bson::Timestamp(bson::Timestamp {
        time: 0,
        increment: 1,
    });
    let expected = [
        literal(&t0),
        control(0b1000, 0),
        blocks(&[Some(zigzag64(0)), Some(zigzag64(1))], false, 1),
        vec![0],
    ]
    .concat();
    assert_eq!(column(&[Some(t0.clone()), Some(t0), Some(t1)]), expected);
    // ContainsScalarStringSimpleCompressed (128-bit delta of reversed strings)
    let expected = [
        literal(&Bson::String("hello".into())),
        control(0b1000, 0),
        blocks(
            &[Some(zigzag128(
                encode_string(b"hellp").unwrap() - encode_string(b"hello").unwrap(),
            ))],
            true,
            1,
        ),
        vec![0],
    ]
    .concat();
    assert_eq!(
        column(&[
            Some(Bson::String("hello".into())),
            Some(Bson::String("hellp".into()))
        ]),
        expected
    );
    // ContainsScalarObjectIDSimpleCompressed (delta of delta of the interleaved bytes)
    let o0 = bson::oid::ObjectId::parse_str("112233445566778899AABBCC").unwrap();
    let o1 = bson::oid::ObjectId::parse_str("112233445566778899AABBCD").unwrap();
    let dd = encode_oid(&o1.bytes()) - encode_oid(&o0.bytes());
    let expected = [
        literal(&Bson::ObjectId(o0)),
        control(0b1000, 0),
        blocks(&[Some(zigzag64(0)), Some(zigzag64(dd))], false, 1),
        vec![0],
    ]
    .concat();
    assert_eq!(
        column(&[
            Some(Bson::ObjectId(o0)),
            Some(Bson::ObjectId(o0)),
            Some(Bson::ObjectId(o1))
        ]),
        expected
    );
    // Simple8bAfterTypeChange
    let expected = [
        literal(&Bson::Int32(0)),
        literal(&Bson::Int64(0)),
        control(0b1000, 0),
        blocks(&[Some(0)], false, 1),
        vec![0],
    ]
    .concat();
    assert_eq!(
        column(&[
            Some(Bson::Int32(0)),
            Some(Bson::Int64(0)),
            Some(Bson::Int64(0))
        ]),
        expected
    );
}

#[test]
fn doubles_scale_as_the_server_scales_them() {
    // BasicDouble, DoubleSameScale
    assert_eq!(
        column(&[d(1.0), d(2.0)]),
        [
            literal(&Bson::Double(1.0)),
            control(0b1001, 0),
            blocks(&delta_double(&[d(2.0)], 1.0, 0), false, 1),
            vec![0]
        ]
        .concat()
    );
    assert_eq!(
        column(&[d(1.0), d(2.0), d(3.0)]),
        [
            literal(&Bson::Double(1.0)),
            control(0b1001, 0),
            blocks(&delta_double(&[d(2.0), d(3.0)], 1.0, 0), false, 1),
            vec![0]
        ]
        .concat()
    );
    // DoubleIdenticalDeltas: 0, 40, ..., 360 in two blocks
    let elems: Vec<Option<Bson>> = (0..10).map(|i| d(f64::from(i) * 40.0)).collect();
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Double(0.0)),
            control(0b1001, 1),
            blocks(&delta_double(&elems[1..], 0.0, 0), false, 2),
            vec![0]
        ]
        .concat()
    );
    // DoubleOverflowEndsWithSkip
    let elems = [
        d(41.0),
        None,
        None,
        d(77.0),
        d(51.0),
        d(53.0),
        None,
        d(83.0),
        None,
        None,
    ];
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Double(41.0)),
            control(0b1001, 1),
            blocks(&delta_double(&elems[1..], 41.0, 0), false, 2),
            vec![0]
        ]
        .concat()
    );
    // DoubleIncreaseScaleFromLiteral
    assert_eq!(
        column(&[d(1.0), d(1.1)]),
        [
            literal(&Bson::Double(1.0)),
            control(0b1010, 0),
            blocks(&delta_double(&[d(1.1)], 1.0, 1), false, 1),
            vec![0]
        ]
        .concat()
    );
    // DoubleLiteralAndScaleAfterSkip
    assert_eq!(
        column(&[None, d(1.0), d(1.1)]),
        [
            control(0b1000, 0),
            blocks(&[None], false, 1),
            literal(&Bson::Double(1.0)),
            control(0b1010, 0),
            blocks(&delta_double(&[d(1.1)], 1.0, 1), false, 1),
            vec![0]
        ]
        .concat()
    );
    // DoubleIncreaseScaleFromLiteralAfterSkip
    assert_eq!(
        column(&[d(1.0), None, None, d(1.1)]),
        [
            literal(&Bson::Double(1.0)),
            control(0b1010, 0),
            blocks(&delta_double(&[None, None, d(1.1)], 1.0, 1), false, 1),
            vec![0]
        ]
        .concat()
    );
    // DoubleIncreaseScaleFromDeltaWithRescale
    let elems = [d(1.0), d(2.0), d(2.1), d(2.2)];
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Double(1.0)),
            control(0b1010, 0),
            blocks(&delta_double(&elems[1..], 1.0, 1), false, 1),
            vec![0]
        ]
        .concat()
    );
    // DoubleIncreaseScaleFromDeltaNoRescale
    let elems = [d(1.1), d(2.1), d(2.2), d(2.3), d(3.12345678)];
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Double(1.1)),
            control(0b1010, 0),
            blocks(&delta_double(&elems[1..4], 1.1, 1), false, 1),
            control(0b1101, 0),
            blocks(&delta_double(&elems[4..], 2.3, 4), false, 1),
            vec![0]
        ]
        .concat()
    );
    // DoubleIncreaseScaleNotPossible
    let elems = [d(-153764908544737.4), d(-85827904635132.83)];
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Double(-153764908544737.4)),
            control(0b1000, 0),
            blocks(
                &delta_double_memory(&elems[1..], -153764908544737.4),
                false,
                1
            ),
            vec![0]
        ]
        .concat()
    );
    // DoubleRescaleFirstRescaledIsSkip
    let mut elems = vec![d(0.0); 9];
    elems.extend([None, d(-0.0001), None, d(-0.0001)]);
    elems.extend(vec![d(0.0); 18]);
    elems.extend([None, d(f64::INFINITY), d(f64::INFINITY)]);
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Double(0.0)),
            control(0b1100, 0),
            blocks(&delta_double(&elems[1..31], 0.0, 3), false, 1),
            control(0b1000, 0),
            blocks(&delta_double_memory(&elems[31..], 0.0), false, 1),
            vec![0]
        ]
        .concat()
    );
    // DoubleScaleDownWithMultipleBlocksPending
    let mut elems = vec![d(-153764908544737.4), d(-85827904635132.83)];
    elems.extend(vec![None; 150]);
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Double(-153764908544737.4)),
            control(0b1000, 0),
            blocks(
                &delta_double_memory(&elems[1..2], -153764908544737.4),
                false,
                1
            ),
            control(0b1011, 2),
            blocks(&delta_double(&elems[2..], -85827904635132.83, 2), false, 3),
            vec![0]
        ]
        .concat()
    );
    // DoubleScaleDownWithRLEPending
    let tiny = f64::from_bits(1);
    let mut elems = vec![d(tiny), None, d(0.0)];
    elems.extend(vec![None; 148]);
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Double(tiny)),
            control(0b1000, 0),
            blocks(&delta_double_memory(&elems[1..31], tiny), false, 1),
            control(0b1001, 0),
            vec![0x0F, 0, 0, 0, 0, 0, 0, 0],
            vec![0]
        ]
        .concat()
    );
}

// ---- The invariant bsoncolumn_test.cpp's `verifyBinary` checks for every case: calling
// `intermediate()` between appends (after each, after every other, or once at any split
// point) and writing each diff at its offset gives exactly the `finalize()` binary.

use proptest::prelude::*;

fn value() -> impl Strategy<Value = Option<Bson>> {
    prop_oneof![
        Just(None),
        (-3i32..3).prop_map(|x| Some(Bson::Int32(x * 1000))),
        (0i64..5).prop_map(|x| Some(Bson::DateTime(DateTime::from_millis(
            1_700_000_000_000 + x * 1000
        )))),
        (-50i64..50).prop_map(|x| Some(Bson::Double(x as f64 / 8.0))),
        (0u8..4).prop_map(|x| Some(Bson::String(format!("sensor-{x}")))),
    ]
}

fn run_with_diffs(values: &[Option<Bson>], call_after: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut b = ColumnBuilder::new();
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => b.append(v).unwrap(),
            None => b.skip(),
        }
        if call_after(i) {
            let diff = b.intermediate();
            assert!(diff.offset <= out.len());
            apply_diff(&mut out, &diff);
        }
    }
    let diff = b.intermediate();
    assert!(diff.offset <= out.len());
    apply_diff(&mut out, &diff);
    out
}

proptest! {
    #[test]
    fn intermediate_diffs_rebuild_the_final_binary(
        values in proptest::collection::vec(value(), 0..150),
        runs in proptest::collection::vec(1usize..4, 0..40),
        split in 0usize..150,
    ) {
        // Runs of equal values make the RLE and zero-delta paths likely.
        let mut seq = Vec::new();
        for (i, v) in values.iter().enumerate() {
            for _ in 0..runs.get(i).copied().unwrap_or(1) {
                seq.push(v.clone());
            }
        }
        let full = column(&seq);
        prop_assert_eq!(&run_with_diffs(&seq, |_| true), &full);
        prop_assert_eq!(&run_with_diffs(&seq, |i| i % 2 == 0), &full);
        prop_assert_eq!(&run_with_diffs(&seq, |i| i == split), &full);
    }
}

// ---- Read back by the suites' decoder (quorumtail-testkit, written from the format's
// description independently of this encoder).

fn any_value() -> impl Strategy<Value = Option<Bson>> {
    let oid = |counter: u32| {
        let mut b = [0x65, 0x53, 0xf0, 0xc0, 1, 2, 3, 4, 5, 0, 0, 0];
        b[9..].copy_from_slice(&counter.to_be_bytes()[1..]);
        Bson::ObjectId(bson::oid::ObjectId::from_bytes(b))
    };
    prop_oneof![
        value(),
        (0u32..5).prop_map(move |c| Some(oid(c))),
        any::<i64>().prop_map(|x| Some(Bson::Int64(x))),
        any::<bool>().prop_map(|x| Some(Bson::Boolean(x))),
        (0u32..3, 0u32..3).prop_map(|(t, i)| Some(Bson::Timestamp(bson::Timestamp {
            time: t,
            increment: i
        }))),
        Just(Some(Bson::Null)),
        "[a-z]{0,24}".prop_map(|s| Some(Bson::String(s))),
        any::<f64>().prop_map(|x| Some(Bson::Double(x))),
        (0u8..3).prop_map(|x| Some(Bson::Binary(bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: vec![x; 4]
        }))),
        Just(Some(Bson::Document(bson::Document::new()))),
    ]
}

fn same(a: &Option<Bson>, b: &Option<Bson>) -> bool {
    match (a, b) {
        (Some(Bson::Double(x)), Some(Bson::Double(y))) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

proptest! {
    #[test]
    fn the_suites_decoder_reads_back_every_value(values in proptest::collection::vec(any_value(), 0..200)) {
        let decoded = quorumtail_testkit::bsoncolumn::decode(&column(&values)).unwrap();
        prop_assert_eq!(decoded.len(), values.len());
        for (a, b) in decoded.iter().zip(&values) {
            prop_assert!(same(a, b), "{:?} != {:?}", a, b);
        }
    }
}

/// Columns the server wrote, found in its tests (`bucket_catalog_test.cpp`,
/// `bucket_catalog_helpers_test.cpp`, `timeseries_write_util_test.cpp` and jstests of
/// compressed buckets: dates, doubles, ObjectIds, a string): read back by the suites'
/// decoder, their values encode to the same bytes.
#[test]
fn server_written_columns_encode_identically() {
    for b in [
        "CQBwO6c5gQEAAIANAAAAAAAAAAA=",
        "AQAAAAAAAADwP5AtAAAACAAAAAA=",
        "CQAAzpUBewEAAIANAAAAAAAAAAA=",
        "BwBn9uELkflmZ42JcguATQAHAPynAQAA",
        "BwBk3UrposROddEVEoUA",
        "CQAVoWwAigEAAAA=",
        "CQDoAwAAAAAAAAA=",
        "AQAAAAAAAADwPwA=",
        "BwBo8k+1PcGdpIplQTUA",
        "CQBHVKF2lQEAAAA=",
        "CQAAcHMxjwEAAAA=",
        "AgALAAAAcHJlVXBncmFkZQAA",
        "CQAYhggUjQEAAIAOAAAAAAAAAAA=",
        "AQAAAAAAAAAAAJAuAAAAAAAAAAA=",
        "BwBlpuun5tLoSOCMN1CALgAAAAAAAAAA",
    ] {
        let bytes = b64(b);
        let values = quorumtail_testkit::bsoncolumn::decode(&bytes).unwrap();
        assert!(!values.is_empty(), "{b}");
        assert_eq!(column(&values), bytes, "{b}: {values:?}");
    }
}

/// `MultipleSimple8bBlockRewriteAtEnd`'s dates (offsets from 1709224256311 ms).
const REWRITE_AT_END: [i64; 95] = [
    0, 7, 15, 22, 29, 37, 44, 52, 59, 67, 74, 81, 89, 96, 104, 111, 118, 126, 133, 141, 148, 155,
    163, 170, 178, 185, 193, 200, 208, 215, 222, 230, 237, 245, 252, 259, 267, 274, 281, 289, 296,
    303, 311, 318, 325, 333, 340, 347, 355, 362, 370, 377, 384, 392, 399, 407, 414, 422, 429, 436,
    444, 451, 458, 466, 473, 481, 488, 495, 503, 510, 518, 525, 532, 540, 547, 555, 562, 569, 577,
    584, 592, 599, 606, 614, 621, 629, 636, 643, 651, 658, 665, 673, 680, 688, 695,
];

fn date_ms(ms: i64) -> Option<Bson> {
    Some(Bson::DateTime(DateTime::from_millis(ms)))
}

/// `deltaOfDeltaDates`.
fn delta_of_delta_dates(ms: &[i64], prev: i64, prevprev: i64) -> Vec<Option<u128>> {
    let (mut prev, mut prevprev) = (prev, prevprev);
    ms.iter()
        .map(|&m| {
            let v = zigzag64((m - prev) - (prev - prevprev));
            prevprev = prev;
            prev = m;
            Some(v)
        })
        .collect()
}

fn deltas_i64(values: &[i64], prev: i64) -> Vec<Option<u128>> {
    let mut prev = prev;
    values
        .iter()
        .map(|&v| {
            let d = zigzag64(v.wrapping_sub(prev));
            prev = v;
            Some(d)
        })
        .collect()
}

#[test]
fn block_counts_literals_and_type_changes() {
    // MultipleSimple8bBlocksAfterControl64: longs alternating 0 and 1... (the 128-bit
    // variant): strings "" and "\u{1}" alternating, 99 deltas in 5 blocks.
    let strings: Vec<Option<Bson>> = (0..100)
        .map(|i| {
            Some(Bson::String(if i % 2 == 0 {
                String::new()
            } else {
                "\u{1}".into()
            }))
        })
        .collect();
    let deltas: Vec<Option<u128>> = (1..100)
        .map(|i| Some(zigzag128(if i % 2 == 0 { -1 } else { 1 })))
        .collect();
    assert_eq!(
        column(&strings),
        [
            literal(&Bson::String(String::new())),
            control(0b1000, 0b0100),
            blocks(&deltas, true, 5),
            vec![0]
        ]
        .concat()
    );
    // MultipleSimple8bBlockRewriteAtEnd, and its intermediate() edge case: 75 values,
    // intermediate(), 20 more, intermediate() rebuild the finalized binary.
    let base = 1_709_224_256_311;
    let ms: Vec<i64> = REWRITE_AT_END.iter().map(|o| base + o).collect();
    let dates: Vec<Option<Bson>> = ms.iter().map(|&m| date_ms(m)).collect();
    let full = [
        literal(&Bson::DateTime(DateTime::from_millis(base))),
        control(0b1000, 0b0100),
        blocks(&delta_of_delta_dates(&ms[1..], base, base), false, 5),
        vec![0],
    ]
    .concat();
    assert_eq!(column(&dates), full);
    assert_eq!(run_with_diffs(&dates, |i| i == 74), full);
    // LargeDeltaIsLiteral, LargeDeltaIsLiteralAfterSimple8b
    assert_eq!(
        column(&[Some(Bson::Int64(1)), Some(Bson::Int64(i64::MAX))]),
        [
            literal(&Bson::Int64(1)),
            literal(&Bson::Int64(i64::MAX)),
            vec![0]
        ]
        .concat()
    );
    let (zero, large) = (Bson::Int64(0), Bson::Int64(i64::MAX));
    assert_eq!(
        column(&[
            Some(zero.clone()),
            Some(zero.clone()),
            Some(large.clone()),
            Some(large.clone())
        ]),
        [
            literal(&zero),
            control(0b1000, 0),
            blocks(&[Some(0)], false, 1),
            literal(&large),
            control(0b1000, 0),
            blocks(&[Some(0)], false, 1),
            vec![0]
        ]
        .concat()
    );
    // OverBlockCount: 16 blocks fill a control byte, the rest open another.
    let mut v = 0xFFFF_FFFF_FFFFi64;
    let mut longs = Vec::new();
    for _ in 0..20 {
        longs.push(v);
        v = -v;
    }
    let elems: Vec<Option<Bson>> = longs.iter().map(|&l| Some(Bson::Int64(l))).collect();
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Int64(longs[0])),
            control(0b1000, 0b1111),
            blocks(&deltas_i64(&longs[1..17], longs[0]), false, 16),
            control(0b1000, 0b0010),
            blocks(&deltas_i64(&longs[17..], longs[16]), false, 3),
            vec![0]
        ]
        .concat()
    );
    // TypeChangeAfterLiteral, TypeChangeAfterSimple8b
    assert_eq!(
        column(&[Some(Bson::Int32(0)), Some(Bson::Int64(0))]),
        [literal(&Bson::Int32(0)), literal(&Bson::Int64(0)), vec![0]].concat()
    );
    assert_eq!(
        column(&[
            Some(Bson::Int32(0)),
            Some(Bson::Int32(0)),
            Some(Bson::Int64(0))
        ]),
        [
            literal(&Bson::Int32(0)),
            control(0b1000, 0),
            blocks(&[Some(0)], false, 1),
            literal(&Bson::Int64(0)),
            vec![0]
        ]
        .concat()
    );
}

#[path = "tests_interleaved.rs"]
mod interleaved;

//! Interleaved mode (sub-documents and arrays) against `bsoncolumn_test.cpp`'s
//! interleaved cases, the `intermediate()` invariant and the suites' decoder.

use super::*;

#[test]
fn min_and_max_keys_are_refused() {
    let mut b = ColumnBuilder::new();
    assert!(b.append(&Bson::MinKey).is_err());
    assert!(b
        .append(&Bson::Document(bson::doc! {"x": Bson::MaxKey}))
        .is_err());
    assert!(b.append(&Bson::Array(vec![])).is_ok());
}

/// The reference object as `appendInterleavedStart` writes it: 0xF1 (0xF2 for an array
/// root) and the object's bytes.
fn interleaved_start(v: &Bson, array: bool) -> Vec<u8> {
    let mut raw = Vec::new();
    match v {
        Bson::Document(d) => d.to_writer(&mut raw).unwrap(),
        Bson::Array(a) => {
            let d: bson::Document = a
                .iter()
                .enumerate()
                .map(|(i, x)| (i.to_string(), x.clone()))
                .collect();
            d.to_writer(&mut raw).unwrap()
        }
        _ => unreachable!(),
    }
    [vec![if array { 0xF2 } else { 0xF1 }], raw].concat()
}

fn i32_delta(a: i32, b: i32) -> Option<u128> {
    Some(zigzag64(i64::from(a) - i64::from(b)))
}

/// `bsoncolumn_test.cpp` `Interleaved`, `InterleavedArray`, `InterleavedArrayRoot`.
#[test]
fn interleaved_runs_as_the_server_writes_them() {
    let o = |x: Option<i32>, y: i32| {
        let mut d = bson::Document::new();
        if let Some(x) = x {
            d.insert("x", x);
        }
        d.insert("y", y);
        Some(Bson::Document(d))
    };
    let elems = [
        o(Some(1), 2),
        o(Some(1), 3),
        o(Some(1), 3),
        None,
        o(None, 4),
        o(Some(1), 3),
    ];
    let expected = [
        interleaved_start(elems[0].as_ref().unwrap(), false),
        control(0b1000, 0),
        blocks(
            &[
                Some(0),
                i32_delta(1, 1),
                i32_delta(1, 1),
                None,
                None,
                i32_delta(1, 1),
            ],
            false,
            1,
        ),
        control(0b1000, 0),
        blocks(
            &[
                Some(0),
                i32_delta(3, 2),
                i32_delta(3, 3),
                None,
                i32_delta(4, 3),
                i32_delta(3, 4),
            ],
            false,
            1,
        ),
        vec![0, 0],
    ]
    .concat();
    assert_eq!(column(&elems), expected);
    // InterleavedArray: {x: [1, 2]}, {x: [2, 3]}
    let elems = [
        Some(Bson::Document(bson::doc! {"x": [1, 2]})),
        Some(Bson::Document(bson::doc! {"x": [2, 3]})),
    ];
    let expected = [
        interleaved_start(elems[0].as_ref().unwrap(), false),
        control(0b1000, 0),
        blocks(&[Some(0), i32_delta(2, 1)], false, 1),
        control(0b1000, 0),
        blocks(&[Some(0), i32_delta(3, 2)], false, 1),
        vec![0, 0],
    ]
    .concat();
    assert_eq!(column(&elems), expected);
    // InterleavedArrayRoot: [1, 2], [2, 3]
    let elems = [
        Some(Bson::Array(vec![Bson::Int32(1), Bson::Int32(2)])),
        Some(Bson::Array(vec![Bson::Int32(2), Bson::Int32(3)])),
    ];
    let expected = [
        interleaved_start(elems[0].as_ref().unwrap(), true),
        control(0b1000, 0),
        blocks(&[Some(0), i32_delta(2, 1)], false, 1),
        control(0b1000, 0),
        blocks(&[Some(0), i32_delta(3, 2)], false, 1),
        vec![0, 0],
    ]
    .concat();
    assert_eq!(column(&elems), expected);
}

fn obj(d: bson::Document) -> Option<Bson> {
    Some(Bson::Document(d))
}

fn dbl_delta(a: f64, b: f64, scale: u8) -> Option<u128> {
    Some(zigzag64(
        encode_double(a, scale).unwrap() - encode_double(b, scale).unwrap(),
    ))
}

fn str_delta(a: &str, b: &str) -> Option<u128> {
    Some(zigzag128(
        encode_string(a.as_bytes()).unwrap() - encode_string(b.as_bytes()).unwrap(),
    ))
}

/// More interleaved cases of `bsoncolumn_test.cpp` (their 0xF1 variants):
/// `InterleavedAfterNonInterleaved`, `InterleavedLevels`, `InterleavedDoubleDifferentScale`,
/// `InterleavedDoubleIncreaseScaleFromDeltaNoRescale`, `InterleavedScalarToObject`,
/// `InterleavedMix64And128Bit`, `InterleavedWithEmptySubObj`.
#[test]
fn more_interleaved_cases() {
    use bson::doc;
    let start = |v: &Option<Bson>| interleaved_start(v.as_ref().unwrap(), false);
    let elems = [
        Some(Bson::Int32(1)),
        obj(doc! {"x": 1, "y": 2}),
        obj(doc! {"x": 1, "y": 3}),
        obj(doc! {"x": 2, "y": 4}),
    ];
    assert_eq!(
        column(&elems),
        [
            literal(&Bson::Int32(1)),
            start(&elems[1]),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(1, 1), i32_delta(2, 1)], false, 1),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(3, 2), i32_delta(4, 3)], false, 1),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"root": {"x": 1}, "y": 2}),
        obj(doc! {"root": {"x": 2}, "y": 5}),
        obj(doc! {"root": {"x": 2}, "y": 5}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(&elems[0]),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(2, 1), i32_delta(2, 2)], false, 1),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(5, 2), i32_delta(5, 5)], false, 1),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1.0, "y": 2.0}),
        obj(doc! {"x": 1.1, "y": 3.0}),
        obj(doc! {"x": 1.2, "y": 2.0}),
        obj(doc! {"x": 1.0}),
        obj(doc! {"x": 1.5, "y": 2.0}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(&elems[0]),
            control(0b1010, 0),
            blocks(
                &[
                    Some(0),
                    dbl_delta(1.1, 1.0, 1),
                    dbl_delta(1.2, 1.1, 1),
                    dbl_delta(1.0, 1.2, 1),
                    dbl_delta(1.5, 1.0, 1)
                ],
                false,
                1
            ),
            control(0b1001, 0),
            blocks(
                &[
                    Some(0),
                    dbl_delta(3.0, 2.0, 0),
                    dbl_delta(2.0, 3.0, 0),
                    None,
                    dbl_delta(2.0, 2.0, 0)
                ],
                false,
                1
            ),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1.1}),
        obj(doc! {"x": 2.1}),
        obj(doc! {"x": 2.2}),
        obj(doc! {"x": 2.3}),
        obj(doc! {"x": 3.12345678}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(&elems[0]),
            control(0b1010, 0),
            blocks(
                &[
                    Some(0),
                    dbl_delta(2.1, 1.1, 1),
                    dbl_delta(2.2, 2.1, 1),
                    dbl_delta(2.3, 2.2, 1)
                ],
                false,
                1
            ),
            control(0b1101, 0),
            blocks(&[dbl_delta(3.12345678, 2.3, 4)], false, 1),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1}),
        obj(doc! {"x": 2}),
        obj(doc! {"x": {"y": 1, "z": 1}}),
        obj(doc! {"x": {"y": 2, "z": 3}}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(&elems[0]),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(2, 1)], false, 1),
            vec![0],
            start(&elems[2]),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(2, 1)], false, 1),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(3, 1)], false, 1),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1, "y": "count0"}),
        obj(doc! {"x": 2, "y": "count1"}),
        obj(doc! {"x": 3, "y": "count2"}),
        obj(doc! {"x": 4}),
        obj(doc! {"x": 5, "y": "count3"}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(&elems[0]),
            control(0b1000, 0),
            blocks(
                &[
                    Some(0),
                    i32_delta(2, 1),
                    i32_delta(3, 2),
                    i32_delta(4, 3),
                    i32_delta(5, 4)
                ],
                false,
                1
            ),
            control(0b1000, 0),
            blocks(
                &[
                    Some(0),
                    str_delta("count1", "count0"),
                    str_delta("count2", "count1"),
                    None,
                    str_delta("count3", "count2")
                ],
                true,
                1
            ),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1, "y": {}}),
        obj(doc! {"x": 2, "y": {}}),
        obj(doc! {"x": 3, "y": {}}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(&elems[0]),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(2, 1), i32_delta(3, 2)], false, 1),
            vec![0, 0]
        ]
        .concat()
    );
}

/// Small objects and arrays with values (interleaved mode), some fields missing, some in
/// another order, sub-objects, and scalars between them.
fn object_value() -> impl Strategy<Value = Option<Bson>> {
    let scalar = prop_oneof![
        (0i32..4).prop_map(Bson::Int32),
        (0i64..4).prop_map(|x| Bson::Double(x as f64 / 4.0)),
        (0u8..3).prop_map(|x| Bson::String(format!("s{x}"))),
    ];
    let maybe = proptest::option::weighted(0.8, scalar.clone());
    prop_oneof![
        3 => (maybe.clone(), maybe.clone(), maybe, any::<bool>(), proptest::option::of(scalar.clone()))
            .prop_map(|(x, y, z, swap, sub)| {
                let mut d = bson::Document::new();
                let order = if swap { [("y", y), ("x", x)] } else { [("x", x), ("y", y)] };
                for (k, v) in order {
                    if let Some(v) = v {
                        d.insert(k, v);
                    }
                }
                if let Some(s) = sub {
                    d.insert("sub", bson::doc! {"z": s});
                }
                if let Some(z) = z {
                    d.insert("w", z);
                }
                Some(Bson::Document(d))
            }),
        1 => (scalar.clone(), scalar).prop_map(|(a, b)| Some(Bson::Array(vec![a, b]))),
        1 => value(),
    ]
}

proptest! {
    #[test]
    fn interleaved_runs_rebuild_and_read_back(values in proptest::collection::vec(object_value(), 0..120)) {
        let full = column(&values);
        prop_assert_eq!(&run_with_diffs(&values, |_| true), &full);
        prop_assert_eq!(&run_with_diffs(&values, |i| i % 3 == 1), &full);
        let decoded = quorumtail_testkit::bsoncolumn::decode(&full).unwrap();
        prop_assert_eq!(decoded.len(), values.len());
        for (a, b) in decoded.iter().zip(&values) {
            prop_assert!(same(a, b), "{:?} != {:?}", a, b);
        }
    }
}

/// `bsoncolumn_test.cpp` interleaved runs that end or merge: `InterleavedRemoveEmptySubObj`,
/// `InterleavedAddEmptySubObj`, `InterleavedSchemaChange`, `InterleavedObjectSchemaChange`,
/// `InterleavedObjectNameChange`, `InterleavedObjectEmptyObjChange`,
/// `InterleavedObjectNewEmptyObjMiddle`.
#[test]
fn interleaved_runs_end_and_merge_as_the_server_does() {
    use bson::doc;
    let start = |d: bson::Document| interleaved_start(&Bson::Document(d), false);
    let one = || [control(0b1000, 0), blocks(&[Some(0)], false, 1)].concat();
    let elems = [
        obj(doc! {"x": 1, "y": {}}),
        obj(doc! {"x": 2, "y": {}}),
        obj(doc! {"x": 3}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(doc! {"x": 1, "y": {}}),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(2, 1)], false, 1),
            vec![0],
            start(doc! {"x": 3}),
            one(),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [obj(doc! {"x": 3}), obj(doc! {"x": 1, "y": {}})];
    assert_eq!(
        column(&elems),
        [
            start(doc! {"x": 3}),
            one(),
            vec![0],
            start(doc! {"x": 1, "y": {}}),
            one(),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1, "y": 2}),
        obj(doc! {"x": 1, "y": 3}),
        obj(doc! {"x": 1, "y": 3.0}),
        obj(doc! {"x": 1, "y": 4.0}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(doc! {"x": 1, "y": 2}),
            control(0b1000, 0),
            blocks(&[Some(0), Some(0), Some(0), Some(0)], false, 1),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(3, 2)], false, 1),
            literal(&Bson::Double(3.0)),
            control(0b1001, 0),
            blocks(&[dbl_delta(4.0, 3.0, 0)], false, 1),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1, "y": {"z": 2}}),
        obj(doc! {"x": 1, "y": {"z": 3}}),
        obj(doc! {"x": 1, "y": 3}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(doc! {"x": 1, "y": {"z": 2}}),
            control(0b1000, 0),
            blocks(&[Some(0), Some(0)], false, 1),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(3, 2)], false, 1),
            vec![0],
            start(doc! {"x": 1, "y": 3}),
            one(),
            one(),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1, "y": {"z": 2}}),
        obj(doc! {"x": 1, "y2": {"z": 3}}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(doc! {"x": 1, "y": {"z": 2}, "y2": {"z": 3}}),
            control(0b1000, 0),
            blocks(&[Some(0), Some(0)], false, 1),
            control(0b1000, 0),
            blocks(&[Some(0), None], false, 1),
            control(0b1000, 0),
            blocks(&[None, Some(0)], false, 1),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1, "y": {"z": 2}}),
        obj(doc! {"x": 1, "y": {"z": 3}}),
        obj(doc! {"x": 1, "y": {}}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(doc! {"x": 1, "y": {"z": 2}}),
            control(0b1000, 0),
            blocks(&[Some(0), Some(0)], false, 1),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(3, 2)], false, 1),
            vec![0],
            start(doc! {"x": 1, "y": {}}),
            one(),
            vec![0, 0]
        ]
        .concat()
    );
    let elems = [
        obj(doc! {"x": 1, "z": 2}),
        obj(doc! {"x": 1, "z": 3}),
        obj(doc! {"x": 1, "y": {}, "z": 4}),
    ];
    assert_eq!(
        column(&elems),
        [
            start(doc! {"x": 1, "z": 2}),
            control(0b1000, 0),
            blocks(&[Some(0), Some(0)], false, 1),
            control(0b1000, 0),
            blocks(&[Some(0), i32_delta(3, 2)], false, 1),
            vec![0],
            start(doc! {"x": 1, "y": {}, "z": 4}),
            one(),
            one(),
            vec![0, 0]
        ]
        .concat()
    );
}

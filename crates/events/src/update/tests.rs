//! The golden cases are the server's own (`src/mongo/db/pipeline/
//! change_stream_document_diff_parser_test.cpp`, and the update cases of
//! `change_stream_event_transform_test.cpp`): same diffs, same expected descriptions.

use bson::{doc, Bson, Document};
use proptest::prelude::*;

use super::*;

fn delta(diff: Document) -> UpdateDescription {
    match decode(&doc! {"$v": 2, "diff": diff}).unwrap() {
        UpdateKind::Update(d) => d,
        other => panic!("{other:?}"),
    }
}

fn updated(d: &UpdateDescription) -> Vec<(&str, i32)> {
    d.updated_fields
        .iter()
        .map(|(p, v)| (p.as_str(), v.as_i32().unwrap()))
        .collect()
}

fn f(s: &str) -> PathPart {
    PathPart::Field(s.into())
}

fn paths(d: &UpdateDescription) -> Vec<(&str, Vec<PathPart>)> {
    d.disambiguated_paths
        .iter()
        .map(|(p, parts)| (p.as_str(), parts.clone()))
        .collect()
}

#[test]
fn disambiguates_dotted_fields() {
    let d = delta(doc! {
        "u": {"a.b": 1},
        "sc.d.": {"u": {"e": 1, "f.g": 1}, "sh": {"u": {"i.j": 1}}},
        "sk": {"u": {"l.m": 1}},
    });
    assert_eq!(
        updated(&d),
        [
            ("a.b", 1),
            ("c.d..e", 1),
            ("c.d..f.g", 1),
            ("c.d..h.i.j", 1),
            ("k.l.m", 1)
        ]
    );
    assert_eq!(
        paths(&d),
        [
            ("a.b", vec![f("a.b")]),
            ("c.d..e", vec![f("c.d."), f("e")]),
            ("c.d..f.g", vec![f("c.d."), f("f.g")]),
            ("c.d..h.i.j", vec![f("c.d."), f("h"), f("i.j")]),
            ("k.l.m", vec![f("k"), f("l.m")]),
        ]
    );
    assert!(d.removed_fields.is_empty() && d.truncated_arrays.is_empty());
}

#[test]
fn numeric_fields_and_array_indexes() {
    let d = delta(doc! {"sa": {"u": {"0": 1}}});
    assert_eq!(updated(&d), [("a.0", 1)]);
    assert_eq!(paths(&d), [("a.0", vec![f("a"), f("0")])]);

    let d = delta(doc! {"sa": {"s0": {"a": true, "u0": 1}}});
    assert_eq!(updated(&d), [("a.0.0", 1)]);
    assert_eq!(
        paths(&d),
        [("a.0.0", vec![f("a"), f("0"), PathPart::Index(0)])]
    );

    // A numeric field at the root, one with a leading zero, and array indexes alone are
    // unambiguous.
    let d = delta(doc! {"u": {"0": 1}});
    assert_eq!(updated(&d), [("0", 1)]);
    assert!(d.disambiguated_paths.is_empty());
    let d = delta(doc! {"sa": {"u": {"01": 1}}});
    assert_eq!(updated(&d), [("a.01", 1)]);
    assert!(d.disambiguated_paths.is_empty());
    let d = delta(doc! {"sa": {"a": true, "s0": {"u": {"b": 1}}}});
    assert_eq!(updated(&d), [("a.0.b", 1)]);
    assert!(d.disambiguated_paths.is_empty());
}

#[test]
fn removed_fields_and_truncated_arrays() {
    let d = delta(doc! {"d": {"a.b": false}, "sc": {"d": {"0": false}}});
    assert_eq!(d.removed_fields, ["a.b", "c.0"]);
    assert_eq!(
        paths(&d),
        [("a.b", vec![f("a.b")]), ("c.0", vec![f("c"), f("0")])]
    );
    assert!(d.updated_fields.is_empty());

    let d = delta(doc! {"sa.b": {"a": true, "l": 5}, "sc": {"s0": {"a": true, "l": 5}}});
    assert_eq!(
        d.truncated_arrays,
        [("a.b".to_owned(), 5), ("c.0".to_owned(), 5)]
    );
    assert_eq!(
        paths(&d),
        [("a.b", vec![f("a.b")]), ("c.0", vec![f("c"), f("0")])]
    );
}

/// The array shapes the server's update operators log (mongodb/mongo
/// `jstests/replsets/oplog_format.js`, `src/mongo/db/update/v2_log_builder.cpp`,
/// `push_node.cpp`, `unset_node.cpp`), each decoded and applied to its pre-image.
#[test]
fn array_diffs_the_update_operators_log() {
    let check = |pre: Document, diff: Document, want: Vec<(&str, Bson)>, post: Document| {
        let d = delta(diff.clone());
        let got: Vec<(&str, Bson)> = d
            .updated_fields
            .iter()
            .map(|(p, v)| (p.as_str(), v.clone()))
            .collect();
        assert_eq!(got, want, "{diff}");
        assert_eq!(apply(&pre, &d).unwrap(), post, "{diff}");
    };
    // $inc of "a.0" (oplog_format.js): an element replaced.
    check(
        doc! {"a": [2]},
        doc! {"sa": {"a": true, "u0": 3}},
        vec![("a.0", Bson::Int32(3))],
        doc! {"a": [3]},
    );
    // $push appending to a non-empty array: each new element a u<index> at the end.
    check(
        doc! {"a": [0]},
        doc! {"sa": {"a": true, "u1": 1, "u2": 2}},
        vec![("a.1", Bson::Int32(1)), ("a.2", Bson::Int32(2))],
        doc! {"a": [0, 1, 2]},
    );
    // $set of "a.3.z" on a one-element array: the element created with its sub-document,
    // the array padded with nulls (v2_log_builder.cpp, kDocumentInsert in an array).
    check(
        doc! {"a": [1]},
        doc! {"sa": {"a": true, "u3": {"z": 2}}},
        vec![("a.3", Bson::Document(doc! {"z": 2}))],
        doc! {"a": [1, null, null, {"z": 2}]},
    );
    // An element changed below (s<index>), in a document and in a nested array; $unset of
    // an element logs it updated to null.
    check(
        doc! {"a": [{"b": 1}, [0, 1]]},
        doc! {"sa": {"a": true, "s0": {"i": {"c": 1}}, "s1": {"a": true, "u0": null}}},
        vec![("a.0.c", Bson::Int32(1)), ("a.1.0", Bson::Null)],
        doc! {"a": [{"b": 1, "c": 1}, [null, 1]]},
    );
    // A truncation (l, from a diff the calculator computed) before the elements.
    let d = delta(doc! {"sa": {"a": true, "l": 1, "u0": 5}});
    assert_eq!(d.truncated_arrays, [("a".to_owned(), 1)]);
    assert_eq!(apply(&doc! {"a": [1, 2, 3]}, &d).unwrap(), doc! {"a": [5]});
    // An index far beyond what the server would pad is an error, not an allocation.
    let d = delta(doc! {"sa": {"a": true, "u4000000000": 1}});
    assert!(apply(&doc! {"a": []}, &d).is_err());
}

#[test]
fn combination_of_ambiguous_fields() {
    let d = delta(doc! {
        "sa.b": {"a": true, "s0": {"u": {"1": 1}}},
        "sc": {"a": true, "s0": {"u": {"d.e": 1}}, "s1": {"u": {"2": 1}}},
        "sf": {"s1": {"u": {"g.h": 1}, "s2": {"a": true, "u3": 1, "s4": {"u": {"5": 1}}}}},
    });
    assert_eq!(
        updated(&d),
        [
            ("a.b.0.1", 1),
            ("c.0.d.e", 1),
            ("c.1.2", 1),
            ("f.1.g.h", 1),
            ("f.1.2.3", 1),
            ("f.1.2.4.5", 1)
        ]
    );
    let i = PathPart::Index;
    assert_eq!(
        paths(&d),
        [
            ("a.b.0.1", vec![f("a.b"), i(0), f("1")]),
            ("c.0.d.e", vec![f("c"), i(0), f("d.e")]),
            ("c.1.2", vec![f("c"), i(1), f("2")]),
            ("f.1.g.h", vec![f("f"), f("1"), f("g.h")]),
            ("f.1.2.3", vec![f("f"), f("1"), f("2"), i(3)]),
            ("f.1.2.4.5", vec![f("f"), f("1"), f("2"), i(4), f("5")]),
        ]
    );
}

#[test]
fn duplicate_paths_are_kept() {
    let d = delta(doc! {"u": {"a.b": 2}, "sa": {"u": {"b": 1}}});
    assert_eq!(updated(&d), [("a.b", 2), ("a.b", 1)]);
    assert_eq!(paths(&d), [("a.b", vec![f("a.b")])]);
}

#[test]
fn sections_in_the_servers_order_and_the_document_form() {
    // u, then i, then d; sub-diffs after.
    let d =
        delta(doc! {"d": {"gone": false}, "i": {"new": 2}, "u": {"x": 1}, "sy": {"u": {"z": 3}}});
    assert_eq!(updated(&d), [("x", 1), ("new", 2), ("y.z", 3)]);
    assert_eq!(d.removed_fields, ["gone"]);
    assert_eq!(
        d.to_document(),
        doc! {"updatedFields": {"x": 1, "new": 2, "y.z": 3}, "removedFields": ["gone"], "truncatedArrays": []}
    );
}

#[test]
fn modifiers_and_replacements() {
    // change_stream_event_transform.cpp: $set -> updatedFields, $unset keys -> removedFields.
    let UpdateKind::Update(d) =
        decode(&doc! {"$set": {"y": 1, "a.b": 2}, "$unset": {"z": true}}).unwrap()
    else {
        panic!()
    };
    assert_eq!(updated(&d), [("y", 1), ("a.b", 2)]);
    assert_eq!(d.removed_fields, ["z"]);
    let UpdateKind::Update(d) = decode(&doc! {"$v": 1, "$set": {"y": 1}}).unwrap() else {
        panic!()
    };
    assert_eq!(updated(&d), [("y", 1)]);
    assert_eq!(
        decode(&doc! {"_id": 1, "x": 2}).unwrap(),
        UpdateKind::Replace(doc! {"_id": 1, "x": 2})
    );
}

#[test]
fn malformed_updates_name_the_path() {
    let e = decode(&doc! {"$v": 3, "diff": {}}).unwrap_err();
    assert!(e.problem.contains("$v: 3"), "{e}");
    let e = decode(&doc! {"$v": 2}).unwrap_err();
    assert!(e.problem.contains("without a diff"), "{e}");
    let e = decode(&doc! {"$v": 2, "diff": {"sa": {"u": 5}}}).unwrap_err();
    assert_eq!(e.path, "a");
    let e = decode(&doc! {"$v": 2, "diff": {"sa": {"a": true, "x1": 5}}}).unwrap_err();
    assert!(e.problem.contains("\"x1\""), "{e}");
    let e = decode(&doc! {"$v": 2, "diff": {"sa": {"a": true, "l": -1}}}).unwrap_err();
    assert!(e.problem.contains("length"), "{e}");
    // An array diff cannot be the root: `a` is no section of a document diff.
    let e = decode(&doc! {"$v": 2, "diff": {"a": true, "u0": 1}}).unwrap_err();
    assert!(e.problem.contains("\"a\" is not a section"), "{e}");
    let e = decode(&doc! {"$inc": {"x": 1}}).unwrap_err();
    assert!(e.problem.contains("$inc"), "{e}");
}

// A document diff computed from a pre- and a post-image, following the server's
// `document_diff_calculator.cpp` rules for the cases generated below: fields kept in
// place, new fields appended at the end.
fn diff_docs(pre: &Document, post: &Document) -> Option<Document> {
    let (mut u, mut i, mut d, mut subs) = (
        Document::new(),
        Document::new(),
        Document::new(),
        Document::new(),
    );
    for (k, old) in pre {
        match post.get(k) {
            None => {
                d.insert(k.clone(), false);
            }
            Some(new) if new == old => {}
            Some(new) => match (old, new) {
                (Bson::Document(a), Bson::Document(b)) => match diff_docs(a, b) {
                    Some(sub) => {
                        subs.insert(format!("s{k}"), sub);
                    }
                    None => {
                        u.insert(k.clone(), new.clone());
                    }
                },
                (Bson::Array(a), Bson::Array(b)) => {
                    subs.insert(format!("s{k}"), diff_arrays(a, b));
                }
                _ => {
                    u.insert(k.clone(), new.clone());
                }
            },
        }
    }
    for (k, new) in post {
        if !pre.contains_key(k) {
            i.insert(k.clone(), new.clone());
        }
    }
    let mut out = Document::new();
    for (name, sec) in [("d", d), ("u", u), ("i", i)] {
        if !sec.is_empty() {
            out.insert(name, sec);
        }
    }
    out.extend(subs);
    (!out.is_empty()).then_some(out)
}

fn diff_arrays(a: &[Bson], b: &[Bson]) -> Document {
    let mut out = doc! {"a": true};
    if b.len() < a.len() {
        out.insert("l", b.len() as i32);
    }
    for (idx, new) in b.iter().enumerate() {
        match a.get(idx) {
            Some(old) if old == new => {}
            Some(Bson::Document(x)) if matches!(new, Bson::Document(_)) => {
                let Bson::Document(y) = new else {
                    unreachable!()
                };
                match diff_docs(x, y) {
                    Some(sub) => {
                        out.insert(format!("s{idx}"), sub);
                    }
                    None => {
                        out.insert(format!("u{idx}"), new.clone());
                    }
                }
            }
            _ => {
                out.insert(format!("u{idx}"), new.clone());
            }
        }
    }
    out
}

fn leaf() -> impl Strategy<Value = Bson> {
    prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        "[a-z]{0,3}".prop_map(Bson::String),
        Just(Bson::Null),
        any::<bool>().prop_map(Bson::Boolean),
    ]
}

// Field names include numeric and dotted ones (legal in documents since 5.0), the cases
// that make paths ambiguous.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-c]".prop_map(String::from),
        1 => "[0-2]".prop_map(String::from),
        1 => Just("x.y".to_owned()),
    ]
}

fn value() -> impl Strategy<Value = Bson> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
            proptest::collection::vec((field(), inner), 0..4)
                .prop_map(|kv| { Bson::Document(kv.into_iter().collect()) }),
        ]
    })
}

fn document() -> impl Strategy<Value = Document> {
    proptest::collection::vec((field(), value()), 0..5).prop_map(|kv| kv.into_iter().collect())
}

/// Changes a document the way update operators can: set, unset, append, shrink, in place
/// at any depth; new fields go to the end.
fn mutate(
    doc: &Document,
    seed: &mut impl Iterator<Item = u8>,
    new: &mut impl Iterator<Item = Bson>,
) -> Document {
    let mut out = Document::new();
    for (k, v) in doc {
        match seed.next().unwrap_or(0) % 6 {
            0 => {} // removed
            1 => {
                out.insert(k.clone(), new.next().unwrap_or(Bson::Null));
            }
            2 => match v {
                Bson::Document(d) => {
                    out.insert(k.clone(), mutate(d, seed, new));
                }
                Bson::Array(a) => {
                    let mut a = a.clone();
                    match seed.next().unwrap_or(0) % 3 {
                        0 => a.push(new.next().unwrap_or(Bson::Null)),
                        1 => {
                            a.pop();
                        }
                        _ => {
                            if let Some(Bson::Document(d)) = a.first().cloned() {
                                a[0] = Bson::Document(mutate(&d, seed, new));
                            } else if !a.is_empty() {
                                a[0] = new.next().unwrap_or(Bson::Null);
                            }
                        }
                    }
                    out.insert(k.clone(), a);
                }
                other => {
                    out.insert(k.clone(), other.clone());
                }
            },
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if seed.next().unwrap_or(0).is_multiple_of(4) {
        let name = format!("n{}", seed.next().unwrap_or(0) % 3);
        if !out.contains_key(&name) {
            out.insert(name, new.next().unwrap_or(Bson::Null));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Applying the decoded description of the diff between two documents to the first
    /// yields the second.
    #[test]
    fn applying_the_description_yields_the_post_image(
        pre in document(),
        seed in proptest::collection::vec(any::<u8>(), 64),
        fresh in proptest::collection::vec(value(), 16),
    ) {
        let post = mutate(&pre, &mut seed.into_iter(), &mut fresh.into_iter());
        let Some(diff) = diff_docs(&pre, &post) else {
            prop_assert_eq!(pre, post);
            return Ok(());
        };
        let UpdateKind::Update(desc) = decode(&doc! {"$v": 2, "diff": diff.clone()}).unwrap() else {
            panic!("a delta is an update");
        };
        let got = apply(&pre, &desc).map_err(|e| TestCaseError::fail(format!("{e}\ndiff {diff}\ndesc {desc:?}")))?;
        prop_assert_eq!(&got, &post, "diff {} desc {:?}", diff, desc);
    }

    /// Whatever a diff holds, decoding returns a description or an error, never panics.
    #[test]
    fn arbitrary_diffs_never_panic(diff in document()) {
        let _ = decode(&doc! {"$v": 2, "diff": diff});
    }
}

//! Operator updates applied as mongod applies them: the rules of `push_node.cpp`
//! (`insertElementsWithPosition`, `performPush`), `pull_node.cpp` (its three matchers),
//! `addtoset_node.cpp`, `path_support.cpp` (null padding, as `path_support_test.cpp`
//! expects) and `cmpPathsAndArrayIndexes`.

use bson::{doc, Bson, Document};

use super::*;

fn applied(before: Document, u: Document) -> Document {
    apply_update(&before, &u, ServerVersion::V5_0).unwrap().0
}

#[test]
fn push_positions_and_slices() {
    let d = || doc! {"_id": 1, "a": [0, 1, 2]};
    let push = |spec: Document| applied(d(), doc! {"$push": {"a": spec}});
    assert_eq!(
        push(doc! {"$each": [9], "$position": 1}),
        doc! {"_id": 1, "a": [0, 9, 1, 2]}
    );
    // A negative position counts from the end; beyond the start means the front.
    assert_eq!(
        push(doc! {"$each": [9], "$position": -1}),
        doc! {"_id": 1, "a": [0, 1, 9, 2]}
    );
    assert_eq!(
        push(doc! {"$each": [9], "$position": -5}),
        doc! {"_id": 1, "a": [9, 0, 1, 2]}
    );
    assert_eq!(
        push(doc! {"$each": [8, 9], "$position": 7}),
        doc! {"_id": 1, "a": [0, 1, 2, 8, 9]}
    );
    // $slice keeps the first (positive) or last (negative) elements; with an empty $each
    // it still trims.
    assert_eq!(
        push(doc! {"$each": [9], "$slice": 2}),
        doc! {"_id": 1, "a": [0, 1]}
    );
    assert_eq!(
        push(doc! {"$each": [9], "$slice": -2}),
        doc! {"_id": 1, "a": [2, 9]}
    );
    assert_eq!(
        push(doc! {"$each": [], "$slice": 0}),
        doc! {"_id": 1, "a": []}
    );
    // A document without $each is one value.
    assert_eq!(
        applied(d(), doc! {"$push": {"a": {"x": 1}}}),
        doc! {"_id": 1, "a": [0, 1, 2, {"x": 1}]}
    );
}

#[test]
fn pull_matches_as_pull_node_does() {
    let d = doc! {"_id": 1, "a": [1, 2.0, "2", {"x": 1, "y": 2}, {"x": 2}, [2]]};
    // Equality: numbers by value, an array element as a whole.
    assert_eq!(
        applied(d.clone(), doc! {"$pull": {"a": 2}}),
        doc! {"_id": 1, "a": [1, "2", {"x": 1, "y": 2}, {"x": 2}, [2]]}
    );
    // An object without operators matches documents that satisfy it as a query.
    assert_eq!(
        applied(d.clone(), doc! {"$pull": {"a": {"x": 1}}}),
        doc! {"_id": 1, "a": [1, 2.0, "2", {"x": 2}, [2]]}
    );
    // $or at the top is a query on documents.
    assert_eq!(
        applied(
            d.clone(),
            doc! {"$pull": {"a": {"$or": [{"x": 2}, {"y": 2}]}}}
        ),
        doc! {"_id": 1, "a": [1, 2.0, "2", [2]]}
    );
    // An operator object matches the element wrapped as {"": element}.
    assert_eq!(
        applied(d, doc! {"$pull": {"a": {"$lte": 1}}}),
        doc! {"_id": 1, "a": [2.0, "2", {"x": 1, "y": 2}, {"x": 2}, [2]]}
    );
}

#[test]
fn addtoset_adds_what_is_missing_once() {
    assert_eq!(
        applied(
            doc! {"_id": 1, "a": [0, 0]},
            doc! {"$addToSet": {"a": {"$each": [1, 0, 1, 2]}}}
        ),
        doc! {"_id": 1, "a": [0, 0, 1, 2]}
    );
    assert_eq!(
        applied(doc! {"_id": 1}, doc! {"$addToSet": {"a": {"$each": []}}}),
        doc! {"_id": 1, "a": []}
    );
    // From 6.0 the logged shape is not established: refused, not guessed.
    assert!(apply_update(
        &doc! {"_id": 1, "a": [0]},
        &doc! {"$addToSet": {"a": 1}},
        ServerVersion::V7_0
    )
    .is_err());
}

#[test]
fn index_paths_pad_and_apply_in_path_order() {
    // createPathAt pads with nulls.
    assert_eq!(
        applied(doc! {"_id": 1, "a": [1]}, doc! {"$set": {"a.3": 4}}),
        doc! {"_id": 1, "a": [1, null, null, 4]}
    );
    // A non-canonical index ("01") below an array is a field name: not viable.
    assert!(apply_update(
        &doc! {"_id": 1, "a": [1]},
        &doc! {"$set": {"a.01": 4}},
        ServerVersion::V5_0
    )
    .is_err());
    // Numeric components compare as numbers: a.10 after a.9 (cmpPathsAndArrayIndexes).
    let (_, log) = apply_update(
        &doc! {"_id": 1, "a": (0..11).map(Bson::Int32).collect::<Vec<_>>()},
        &doc! {"$inc": {"a.10": 1, "a.9": 1}},
        ServerVersion::V5_0,
    )
    .unwrap();
    let paths: Vec<_> = log.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        vec![
            vec![Part::Field("a".into()), Part::Index(9)],
            vec![Part::Field("a".into()), Part::Index(10)]
        ]
    );
    // Beyond mongod's padding cap: refused with an error, not allocated.
    assert!(apply_update(
        &doc! {"_id": 1, "a": []},
        &doc! {"$set": {"a.99999999": 1}},
        ServerVersion::V5_0
    )
    .is_err());
}

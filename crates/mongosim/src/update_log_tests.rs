//! Logged shapes against the server's own expectations (mongodb/mongo):
//! `jstests/replsets/oplog_format.js` (both formats per case) and
//! `addtoset_node_test.cpp`; the other cases follow the `logUpdate` code of
//! `push_node.cpp`, `unset_node.cpp` and the serialisation of `v2_log_builder.cpp`.

use super::*;
use bson::doc;

/// The `o` logged by `version` for `update` applied to `before`; checks that the
/// simulator's own secondaries, applying it, reach the same document.
fn logged(version: ServerVersion, before: &Document, update: Document) -> Document {
    let (after, log) = crate::world::apply_update(before, &update, version).unwrap();
    let o = operator_update_o(version, &log);
    let mut applied = before.clone();
    crate::oplog::apply_update_o(&mut applied, &o);
    assert_eq!(applied, after, "{version}: {update} logged as {o}");
    o
}

fn v2(before: Document, update: Document) -> Document {
    logged(ServerVersion::V7_0, &before, update)
        .get_document("diff")
        .unwrap()
        .clone()
}

fn v1(before: Document, update: Document) -> Document {
    logged(ServerVersion::V4_4, &before, update)
}

#[test]
fn nested_paths_are_sub_diffs_as_mongod_logs_them() {
    let before = doc! {"_id": 1, "a": {"b": 1, "c": {"d": 2}}, "x": 1, "gone": 0};
    // Updated leaf below existing documents.
    assert_eq!(
        v2(before.clone(), doc! {"$set": {"a.c.d": 3}}),
        doc! {"sa": {"sc": {"u": {"d": 3}}}}
    );
    // A created field below an existing document; a created parent holds the whole new
    // sub-document.
    assert_eq!(
        v2(
            before.clone(),
            doc! {"$set": {"a.new": 1, "n.p.q": 2, "n.r": 3}}
        ),
        doc! {"i": {"n": {"p": {"q": 2}, "r": 3}}, "sa": {"i": {"new": 1}}}
    );
    // d, u, i at one level, then sub-diffs; unsetting a missing field is nothing.
    assert_eq!(
        v2(
            before.clone(),
            doc! {"$set": {"a.b": 5, "x": 2, "y": 1}, "$unset": {"gone": "", "nope": ""}, "$inc": {"a.c.d": 1}}
        ),
        doc! {"d": {"gone": false}, "u": {"x": 2}, "i": {"y": 1}, "sa": {"u": {"b": 5}, "sc": {"u": {"d": 3}}}}
    );
    // Setting a field to its value is not logged.
    assert_eq!(
        v2(before.clone(), doc! {"$set": {"x": 1, "a.b": 2}}),
        doc! {"sa": {"u": {"b": 2}}}
    );
    // A whole sub-document replaced is an update of that field.
    assert_eq!(
        v2(before, doc! {"$set": {"a": {"z": 1}}}),
        doc! {"u": {"a": {"z": 1}}}
    );
}

#[test]
fn before_5_0_dotted_paths_go_to_set_and_unset() {
    let before = doc! {"_id": 1, "a": {"b": 1}, "x": 1};
    let update = doc! {"$unset": {"x": ""}, "$set": {"a.b": 2, "a.n.m": 3}};
    // Applied in path order (a.b, a.n.m, x), so $set is the first section used.
    assert_eq!(
        logged(ServerVersion::V4_4, &before, update.clone()),
        doc! {"$v": 1, "$set": {"a.b": 2, "a.n.m": 3}, "$unset": {"x": true}}
    );
    assert_eq!(
        logged(ServerVersion::Legacy, &before, update),
        doc! {"$set": {"a.b": 2, "a.n.m": 3}, "$unset": {"x": true}}
    );
}

/// oplog_format.js, each case with its `$v: 2` and `$v: 1` expectation.
#[test]
fn oplog_format_js_cases() {
    let cases = [
        (
            doc! {"_id": 1, "a": 2},
            doc! {"$inc": {"a": 1}, "$set": {"b": 2}},
            doc! {"u": {"a": 3}, "i": {"b": 2}},
            doc! {"$v": 1, "$set": {"a": 3, "b": 2}},
        ),
        (
            doc! {"_id": 1, "a": {"b": [1, 2], "c": [1, 2]}},
            doc! {"$pull": {"a.b": 2, "a.c": 2}},
            doc! {"sa": {"u": {"b": [1], "c": [1]}}},
            doc! {"$v": 1, "$set": {"a.b": [1], "a.c": [1]}},
        ),
        (
            doc! {"_id": 1, "a": [2]},
            doc! {"$inc": {"a.0": 1}},
            doc! {"sa": {"a": true, "u0": 3}},
            doc! {"$v": 1, "$set": {"a.0": 3}},
        ),
        (
            doc! {"_id": 1, "a": "foo"},
            doc! {"$push": {"c": 18}},
            doc! {"i": {"c": [18]}},
            doc! {"$v": 1, "$set": {"c": [18]}},
        ),
        (
            doc! {"_id": 1, "a": {"b": [18]}},
            doc! {"$push": {"a.b": {"$each": [1, 2], "$slice": -2}}},
            doc! {"sa": {"u": {"b": [1, 2]}}},
            doc! {"$v": 1, "$set": {"a.b": [1, 2]}},
        ),
    ];
    for (before, update, diff, modifiers) in cases {
        assert_eq!(
            v2(before.clone(), update.clone()),
            diff,
            "$v: 2 of {update}"
        );
        assert_eq!(v1(before, update.clone()), modifiers, "$v: 1 of {update}");
    }
}

#[test]
fn push_appending_logs_each_new_element() {
    // PushNode::logUpdate, kArrayAppendUpdate: a push at the end of a non-empty array.
    let before = doc! {"_id": 1, "a": [0], "n": {"b": [{"x": 1}]}};
    assert_eq!(
        v2(
            before.clone(),
            doc! {"$push": {"a": {"$each": [1, 2]}, "n.b": 5}}
        ),
        doc! {"sa": {"a": true, "u1": 1, "u2": 2}, "sn": {"sb": {"a": true, "u1": 5}}}
    );
    assert_eq!(
        v1(before.clone(), doc! {"$push": {"a": {"$each": [1, 2]}}}),
        doc! {"$v": 1, "$set": {"a.1": 1, "a.2": 2}}
    );
    // At a position inside, into an empty array, or trimmed: the whole array.
    assert_eq!(
        v2(
            before.clone(),
            doc! {"$push": {"a": {"$each": [7], "$position": 0}}}
        ),
        doc! {"u": {"a": [7, 0]}}
    );
    assert_eq!(
        v2(doc! {"_id": 1, "a": []}, doc! {"$push": {"a": 1}}),
        doc! {"u": {"a": [1]}}
    );
    assert_eq!(
        v2(before, doc! {"$push": {"a": {"$each": [1], "$slice": 1}}}),
        doc! {"u": {"a": [0]}}
    );
}

#[test]
fn array_operators_log_the_whole_array() {
    let before = doc! {"_id": 1, "a": [1, 2, 3, 2], "s": [0]};
    // pop_node.cpp, array_culling_node.cpp: the whole array, never `l`.
    assert_eq!(
        v2(before.clone(), doc! {"$pop": {"a": 1}}),
        doc! {"u": {"a": [1, 2, 3]}}
    );
    assert_eq!(
        v2(before.clone(), doc! {"$pop": {"a": -1}}),
        doc! {"u": {"a": [2, 3, 2]}}
    );
    assert_eq!(
        v2(before.clone(), doc! {"$pull": {"a": 2}}),
        doc! {"u": {"a": [1, 3]}}
    );
    assert_eq!(
        v2(before.clone(), doc! {"$pull": {"a": {"$gte": 2}}}),
        doc! {"u": {"a": [1]}}
    );
    assert_eq!(
        v2(before.clone(), doc! {"$pullAll": {"a": [1, 3]}}),
        doc! {"u": {"a": [2, 2]}}
    );
    // addtoset_node_test.cpp on 5.0: {a: [0]} + $each [0, 1] is {u: {a: [0, 1]}}; a
    // created array is an insert.
    assert_eq!(
        logged(
            ServerVersion::V5_0,
            &before,
            doc! {"$addToSet": {"s": {"$each": [0, 1]}, "t": {"$each": [0, 1]}}}
        ),
        doc! {"$v": 2, "diff": {"u": {"s": [0, 1]}, "i": {"t": [0, 1]}}}
    );
    // addtoset_node_test.cpp ApplyNestedArray: {a: [1, []]} + {'a.1': 1}.
    assert_eq!(
        logged(
            ServerVersion::V5_0,
            &doc! {"_id": 1, "a": [1, []]},
            doc! {"$addToSet": {"a.1": 1}}
        ),
        doc! {"$v": 2, "diff": {"sa": {"a": true, "u1": [1]}}}
    );
    // Nothing removed, nothing added: no modification.
    assert_eq!(v2(before.clone(), doc! {"$pull": {"a": 9}}), doc! {});
    assert_eq!(v2(before, doc! {"$pop": {"missing": 1}}), doc! {});
}

#[test]
fn index_paths_are_array_diffs() {
    let before = doc! {"_id": 1, "a": [{"b": 1}, 5, [0, 1]], "x": {"y": [1]}};
    // An element below: s<index>; an element replaced: u<index>; $unset of an element
    // sets it to null (unset_node.cpp).
    assert_eq!(
        v2(
            before.clone(),
            doc! {"$set": {"a.0.b": 2, "a.1": 6}, "$unset": {"a.2.0": ""}}
        ),
        doc! {"sa": {"a": true, "s0": {"u": {"b": 2}}, "u1": 6, "s2": {"a": true, "u0": null}}}
    );
    // A created field in an element; an element created beyond the end (padded with
    // nulls) holding a created sub-document (v2_log_builder.cpp, kDocumentInsert).
    assert_eq!(
        v2(before.clone(), doc! {"$set": {"a.0.c": 1, "x.y.3.z": 2}}),
        doc! {"sa": {"a": true, "s0": {"i": {"c": 1}}}, "sx": {"sy": {"a": true, "u3": {"z": 2}}}}
    );
    assert_eq!(
        v1(before, doc! {"$set": {"x.y.3.z": 2}, "$unset": {"a.1": ""}}),
        doc! {"$v": 1, "$set": {"a.1": null, "x.y.3.z": 2}}
    );
}

#[test]
fn refused_updates_carry_the_servers_errors() {
    let before = doc! {"_id": 1, "n": 5, "a": [1], "d": {}};
    let err = |u: Document| {
        crate::world::apply_update(&before, &u, ServerVersion::V7_0)
            .unwrap_err()
            .errmsg
    };
    assert!(err(doc! {"$push": {"n": 1}})
        .contains("The field 'n' must be an array but is of type int in document {_id: 1}"));
    assert!(err(doc! {"$pop": {"n": 1}})
        .contains("Path 'n' contains an element of non-array type 'int'"));
    assert!(err(doc! {"$pop": {"a": 2}}).contains("$pop expects 1 or -1, found: 2"));
    assert!(err(doc! {"$pull": {"n": 1}}).contains("Cannot apply $pull to a non-array value"));
    assert!(err(doc! {"$pullAll": {"a": 1}})
        .contains("$pullAll requires an array argument but was given a int"));
    assert!(err(doc! {"$addToSet": {"n": 1}}).contains(
        "Cannot apply $addToSet to non-array field. Field named 'n' has non-array type int"
    ));
    assert!(err(doc! {"$set": {"a.x": 1}}).contains("Cannot create field 'x' in element"));
    assert!(err(doc! {"$set": {"n.x": 1}}).contains("Cannot create field 'x' in element {n: 5}"));
    assert!(err(doc! {"$pull": {"n.x": 1}})
        .contains("Cannot use the part (x) of (n.x) to traverse the element ({n: 5})"));
    assert!(err(doc! {"$set": {"a": 1}, "$push": {"a.b": 1}})
        .contains("Updating the path 'a.b' would create a conflict at 'a'"));
    assert!(err(doc! {"$set": {"a.b": 1}, "$push": {"a": 1}})
        .contains("Updating the path 'a' would create a conflict at 'a'"));
    assert!(err(doc! {"$push": {"a": {"$each": [1], "$sort": 1}}}).contains("does not simulate"));
    assert!(
        err(doc! {"$rename": {"a": "z"}}).contains("does not simulate the update operator $rename")
    );
    assert!(err(doc! {"$foo": {"a": 1}}).contains("Unknown modifier: $foo"));
    assert!(err(doc! {"$set": {"_id": 2}})
        .contains("Performing an update on the path '_id' would modify the immutable field '_id'"));
    assert!(err(doc! {"$inc": {"a.0": "x"}})
        .contains("Cannot increment with non-numeric argument: {a.0: \"x\"}"));
    // $unset through a scalar, $pull of a missing field: nothing to do.
    assert!(crate::world::apply_update(
        &before,
        &doc! {"$unset": {"n.x": ""}, "$pull": {"zz": 1}},
        ServerVersion::V7_0
    )
    .unwrap()
    .1
    .is_empty());
}

//! Expectations come from Debezium's MongoDB connector, not from this crate: the examples
//! of its documentation (`documentation/modules/ROOT/pages/connectors/mongodb.adoc`, the
//! update event and the key table) and its source (`JsonSerialization`,
//! `MongoDbCollectionSchema`, `SourceInfoTest.schemaIsCorrect`,
//! `MongoDbEventMetadataProvider`).

use base64::Engine as _;
use bson::{doc, spec::BinarySubtype, Binary, Bson, Document, Timestamp};
use serde_json::{json, Value};

use super::*;

fn src() -> DebeziumSource<'static> {
    DebeziumSource {
        server_name: "fulfillment",
        version: "test",
        ts: Timestamp {
            time: 1_558_965_508,
            increment: 1,
        },
        wall: Some(bson::DateTime::from_millis(1_558_965_508_123)),
        txn: None,
    }
}

const NOW_NS: i128 = 1_465_491_461_815_698_142;

fn record(op: &Document, s: &DebeziumSource<'_>) -> (Value, Value) {
    let r = debezium_record(op, s, NOW_NS).unwrap().unwrap();
    (
        serde_json::from_str(&r.key).unwrap(),
        serde_json::from_str(&r.value).unwrap(),
    )
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// The documentation's update example: `before`/`after` of the document with `_id`
/// `NumberLong(1004)`, in strict mode, compact.
#[test]
fn documents_are_strict_compact_json() {
    let d = doc! {"_id": 1004_i64, "first_name": "Anne Marie", "last_name": "Kretchmar", "email": "annek@noanswer.org"};
    assert_eq!(
        to_strict_json(&d),
        r#"{"_id": {"$numberLong": "1004"},"first_name": "Anne Marie","last_name": "Kretchmar","email": "annek@noanswer.org"}"#
    );
}

/// The documentation's `source.lsid` example: a session id in strict mode (legacy
/// `$binary`/`$type`).
#[test]
fn lsid_is_strict_compact_json() {
    let lsid = doc! {
        "id": Binary { subtype: BinarySubtype::Uuid, bytes: b64("FA7YEzXgQXSX9OxmzllH2w==") },
        "uid": Binary { subtype: BinarySubtype::Generic, bytes: b64("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=") },
    };
    assert_eq!(
        to_strict_json(&lsid),
        r#"{"id": {"$binary": "FA7YEzXgQXSX9OxmzllH2w==","$type": "04"},"uid": {"$binary": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=","$type": "00"}}"#
    );
}

/// Keys: `{"id": <_id in relaxed mode>}` (the documentation's table of `_id` types, in the
/// layout `JsonSerialization.getDocumentIdChangeStream` writes).
#[test]
fn keys_hold_the_id_as_relaxed_json() {
    let key = |id: Bson| {
        let r = debezium_record(
            &doc! {"op": "d", "ns": "inventory.customers", "o": {"_id": id}},
            &src(),
            NOW_NS,
        )
        .unwrap()
        .unwrap();
        serde_json::from_str::<Value>(&r.key).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(key(Bson::Int32(1234)), "1234");
    assert_eq!(key(Bson::Int64(1234)), "1234");
    assert_eq!(key(Bson::Double(12.34)), "12.34");
    assert_eq!(key(Bson::String("1234".into())), r#""1234""#);
    assert_eq!(
        key(Bson::Document(
            doc! {"hi": "kafka", "nums": [10.0, 100.0, 1000.0]}
        )),
        r#"{"hi": "kafka","nums": [10.0,100.0,1000.0]}"#
    );
    assert_eq!(
        key(Bson::ObjectId(
            bson::oid::ObjectId::parse_str("596e275826f08b2730779e1f").unwrap()
        )),
        r#"{"$oid": "596e275826f08b2730779e1f"}"#
    );
    assert_eq!(
        key(Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: b"kafka".to_vec()
        })),
        r#"{"$binary": {"base64": "a2Fma2E=","subType": "00"}}"#
    );
    // The whole key, as the JSON converter writes it.
    let r = debezium_record(
        &doc! {"op": "d", "ns": "a.b", "o": {"_id": "x"}},
        &src(),
        NOW_NS,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.key, r#"{"id":"\"x\""}"#);
}

/// The documentation's create event: `after` set, `op: "c"`, every envelope field present.
#[test]
fn insert_is_a_create_event() {
    let (key, v) = record(
        &doc! {"op": "i", "ns": "inventory.customers", "o": {"_id": 1004_i64, "first_name": "Anne"}},
        &src(),
    );
    assert_eq!(key, json!({"id": "1004"}));
    assert_eq!(v["op"], "c");
    assert_eq!(
        v["after"],
        r#"{"_id": {"$numberLong": "1004"},"first_name": "Anne"}"#
    );
    assert_eq!(v["before"], Value::Null);
    assert_eq!(v["updateDescription"], Value::Null);
    assert_eq!(v["transaction"], Value::Null);
    assert_eq!(v["ts_ms"], 1_465_491_461_815_i64);
    assert_eq!(v["ts_us"], 1_465_491_461_815_698_i64);
    assert_eq!(v["ts_ns"], json!(1_465_491_461_815_698_142_i64));
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "before",
        "after",
        "updateDescription",
        "source",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
        "transaction",
    ] {
        assert!(keys.contains(&k), "{k} in {keys:?}");
    }
    assert!(v.get("patch").is_none() && v.get("filter").is_none());
}

/// `source` holds exactly the fields of the current `io.debezium.connector.mongo.Source`
/// schema (`SourceInfoTest.schemaIsCorrect` plus the common `ts_us`/`ts_ns`).
#[test]
fn source_block() {
    let (_, v) = record(
        &doc! {"op": "i", "ns": "inventory.customers", "o": {"_id": 1}},
        &src(),
    );
    assert_eq!(
        v["source"],
        json!({
            "version": "test",
            "connector": "mongodb",
            "name": "fulfillment",
            "ts_ms": 1_558_965_508_000_i64,
            "snapshot": "false",
            "db": "inventory",
            "sequence": null,
            "ts_us": 1_558_965_508_000_000_i64,
            "ts_ns": 1_558_965_508_000_000_000_i64,
            "collection": "customers",
            "ord": 1,
            "lsid": null,
            "txnNumber": null,
            "wallTime": 1_558_965_508_123_i64,
        })
    );
}

/// Updates without a post-image: `after` is null, `updateDescription` carries the
/// change; `updatedFields` is a JSON string (the documentation's
/// `"{\"first_name\": \"Anne Marie\"}"`), empty lists are null.
#[test]
fn update_carries_its_description() {
    let (key, v) = record(
        &doc! {"op": "u", "ns": "inventory.customers", "o": {"$v": 2, "diff": {"u": {"first_name": "Anne Marie"}}}, "o2": {"_id": 1004}},
        &src(),
    );
    assert_eq!(key, json!({"id": "1004"}));
    assert_eq!(v["op"], "u");
    assert_eq!(v["after"], Value::Null);
    assert_eq!(v["before"], Value::Null);
    assert_eq!(
        v["updateDescription"],
        json!({"removedFields": null, "updatedFields": "{\"first_name\": \"Anne Marie\"}", "truncatedArrays": null})
    );
    // Removed fields, truncated arrays, several updated fields (`, ` between them).
    let (_, v) = record(
        &doc! {"op": "u", "ns": "a.b", "o": {"$v": 2, "diff": {"u": {"x": 1, "y": [1, 2]}, "d": {"z": false}, "sarr": {"a": true, "l": 1}}}, "o2": {"_id": 1}},
        &src(),
    );
    assert_eq!(
        v["updateDescription"],
        json!({"removedFields": ["z"], "updatedFields": "{\"x\": 1, \"y\": [1, 2]}", "truncatedArrays": [{"field": "arr", "size": 1}]})
    );
    // `$set`/`$unset` of 4.4 and earlier.
    let (_, v) = record(
        &doc! {"op": "u", "ns": "a.b", "o": {"$set": {"s.t": 2_i64}, "$unset": {"n": true}}, "o2": {"_id": 1}},
        &src(),
    );
    assert_eq!(
        v["updateDescription"],
        json!({"removedFields": ["n"], "updatedFields": "{\"s.t\": 2}", "truncatedArrays": null})
    );
}

/// A replacement is an update (`OPERATION_LITERALS` maps REPLACE to UPDATE) whose `after`
/// is the new document, without a description.
#[test]
fn replace_is_an_update_with_after() {
    let (_, v) = record(
        &doc! {"op": "u", "ns": "a.b", "o": {"_id": 7, "x": 3}, "o2": {"_id": 7}},
        &src(),
    );
    assert_eq!(v["op"], "u");
    assert_eq!(v["after"], r#"{"_id": 7,"x": 3}"#);
    assert_eq!(v["updateDescription"], Value::Null);
}

#[test]
fn delete_has_neither_before_nor_after() {
    let (key, v) = record(&doc! {"op": "d", "ns": "a.b", "o": {"_id": 7}}, &src());
    assert_eq!(key, json!({"id": "7"}));
    assert_eq!(v["op"], "d");
    assert_eq!(v["after"], Value::Null);
    assert_eq!(v["before"], Value::Null);
}

/// Operations of a transaction: `source.lsid` (strict JSON), `source.txnNumber`, and the
/// transaction block with `id` = `<lsid>:<txnNumber>`.
#[test]
fn transactions() {
    let lsid = doc! {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1; 16] }};
    let s = DebeziumSource {
        txn: Some(DebeziumTxn {
            lsid: Some(&lsid),
            txn_number: Some(9),
            total_order: 3,
            data_collection_order: 2,
        }),
        ..src()
    };
    let (_, v) = record(&doc! {"op": "d", "ns": "a.b", "o": {"_id": 7}}, &s);
    let l = r#"{"id": {"$binary": "AQEBAQEBAQEBAQEBAQEBAQ==","$type": "04"}}"#;
    assert_eq!(v["source"]["lsid"], l);
    assert_eq!(v["source"]["txnNumber"], 9);
    assert_eq!(
        v["transaction"],
        json!({"id": format!("{l}:9"), "total_order": 3, "data_collection_order": 2})
    );
    // A batched write (no session) is not a transaction.
    let s = DebeziumSource {
        txn: Some(DebeziumTxn {
            lsid: None,
            txn_number: None,
            total_order: 1,
            data_collection_order: 1,
        }),
        ..src()
    };
    let (_, v) = record(&doc! {"op": "d", "ns": "a.b", "o": {"_id": 7}}, &s);
    assert_eq!(v["transaction"], Value::Null);
    assert_eq!(v["source"]["lsid"], Value::Null);
}

/// The connector writes data change events only: commands and no-ops give no record.
#[test]
fn commands_have_no_record() {
    for o in [
        doc! {"drop": "c"},
        doc! {"renameCollection": "a.b", "to": "a.c"},
        doc! {"dropDatabase": 1},
        doc! {"create": "c"},
    ] {
        assert!(
            debezium_record(&doc! {"op": "c", "ns": "a.$cmd", "o": o}, &src(), NOW_NS)
                .unwrap()
                .is_none()
        );
    }
    assert!(debezium_record(
        &doc! {"op": "n", "ns": "", "o": {"msg": "x"}},
        &src(),
        NOW_NS
    )
    .unwrap()
    .is_none());
}

#[test]
fn malformed_operations_are_errors() {
    let e = debezium_record(
        &doc! {"op": "u", "ns": "a.b", "o": {"$v": 2, "diff": {}}},
        &src(),
        NOW_NS,
    )
    .unwrap_err();
    assert!(e.to_string().contains("without o2"), "{e}");
    let e = debezium_record(
        &doc! {"op": "i", "ns": "a.b", "o": {"x": 1}},
        &src(),
        NOW_NS,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no _id"), "{e}");
    let e = debezium_record(&doc! {"op": "d", "ns": "a.b"}, &src(), NOW_NS).unwrap_err();
    assert!(e.to_string().contains("no document in o"), "{e}");
}

/// Values in strict mode (the Java driver's `JsonMode.STRICT` converters) and the Java
/// number and string forms.
#[test]
fn strict_values() {
    let d = doc! {
        "l": 5_i64,
        "d": 1.0,
        "big": 1e10,
        "small": 0.0001,
        "date": bson::DateTime::from_millis(1_000),
        "ts": Timestamp { time: 1, increment: 2 },
        "re": bson::Regex { pattern: "a".to_owned().try_into().unwrap(), options: "i".to_owned().try_into().unwrap() },
        "s": "q\"\n\u{1F600}",
        "n": null,
        "arr": [1, "x"],
        "e": {},
    };
    assert_eq!(
        to_strict_json(&d),
        r#"{"l": {"$numberLong": "5"},"d": 1.0,"big": 1.0E10,"small": 1.0E-4,"date": {"$date": 1000},"ts": {"$timestamp": {"t": 1,"i": 2}},"re": {"$regex": "a","$options": "i"},"s": "q\"\n\ud83d\ude00","n": null,"arr": [1,"x"],"e": {}}"#
    );
}

/// An update's `after` is the `null` at [`AFTER_AT`], which a looked-up document replaces
/// with the string [`write_after`] writes: the result is the record an insert would carry.
#[test]
fn a_looked_up_document_replaces_the_updates_null_after() {
    let r = debezium_record(
        &doc! {"op": "u", "ns": "a.b", "o": {"$v": 2, "diff": {"u": {"x": 2}}}, "o2": {"_id": 1_i64}},
        &src(),
        0,
    )
    .unwrap()
    .unwrap();
    assert_eq!(&r.value[AFTER_AT..AFTER_AT + 4], "null");
    let mut after = String::new();
    write_after(&doc! {"_id": 1_i64, "x": 2}, &mut after);
    let filled = format!(
        "{}{after}{}",
        &r.value[..AFTER_AT],
        &r.value[AFTER_AT + 4..]
    );
    let v: Value = serde_json::from_str(&filled).unwrap();
    assert_eq!(v["after"], r#"{"_id": {"$numberLong": "1"},"x": 2}"#);
    assert_eq!(v["op"], "u");
}

/// An 8.0 compressed time-series bucket update (binary diffs in `sdata.b`, `scontrol.u`
/// with count and version) becomes an update record whose `updatedFields` holds every
/// changed part, the binary diffs as `$binary`: not refused, not dropped.
#[test]
fn compressed_bucket_update_is_an_update_record() {
    let d = |b: &[u8]| Binary {
        subtype: BinarySubtype::Generic,
        bytes: b.to_vec(),
    };
    let op = doc! {
        "op": "u", "ns": "farm.system.buckets.weather",
        "o": {"$v": 2_i32, "diff": {
            "scontrol": {"u": {"count": 5_i32, "version": 3_i32}},
            "sdata": {"b": {"time": {"o": 10_i32, "d": d(&b64("gAt9AAD8fGBtAA=="))}}},
        }},
        "o2": {"_id": 7_i32},
    };
    let (_, value) = record(&op, &src());
    assert_eq!(value["op"], "u");
    let desc = &value["updateDescription"];
    let fields: Value = serde_json::from_str(desc["updatedFields"].as_str().unwrap()).unwrap();
    assert_eq!(fields["control.count"], 5);
    assert_eq!(fields["control.version"], 3);
    assert_eq!(fields["data.time"]["o"], 10);
    assert_eq!(
        fields["data.time"]["d"]["$binary"]["base64"],
        "gAt9AAD8fGBtAA=="
    );
}

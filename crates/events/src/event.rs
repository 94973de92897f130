//! One oplog operation as a MongoDB change event.
//!
//! Shaped as the server's change streams shape events
//! (`src/mongo/db/pipeline/change_stream_event_transform.cpp`, with `showExpandedEvents`
//! for the DDL events of 6.0+):
//!
//! | oplog operation | `operationType` | fields |
//! |---|---|---|
//! | `i` | `insert` | `fullDocument` = `o`; `documentKey` = `o2` (6.0+, the shard key and `_id`), else `{_id}` |
//! | `u`, `$v: 2` delta or `$set`/`$unset` | `update` | `updateDescription` ([`crate::update`]); `documentKey` = `o2` |
//! | `u`, a whole document | `replace` | `fullDocument` = `o`; `documentKey` = `o2` |
//! | `d` | `delete` | `documentKey` = `o` |
//! | `c` `drop` | `drop` | `ns` = the dropped collection |
//! | `c` `renameCollection` | `rename` | `ns` = the source, `to` = the target |
//! | `c` `dropDatabase` | `dropDatabase` | `ns` = `{db}` |
//! | `c` `create` | `create` | `operationDescription` = the options |
//! | `c` `createIndexes` / `commitIndexBuild` | `createIndexes` | `operationDescription.indexes` |
//! | `c` `dropIndexes` | `dropIndexes` | `operationDescription.indexes` (from `o2`) |
//! | `c` `collMod` | `modify` | `operationDescription` = the changed options |
//!
//! Every event has `operationType`, `clusterTime` (the entry's `ts`; for an operation of a
//! transaction, the `ts` of the entry that committed it), `wallTime` when the entry has
//! one, and `ns`. Operations of a transaction also carry `lsid` and `txnNumber`.
//!
//! quorumtail adds `shard` and replaces the resume token `_id` (which only the server can
//! mint) with the operation's position, `{shard, ts, t, h, index}` (the parts the entry
//! has): equal for a re-delivered duplicate, so it deduplicates.
//!
//! Other commands (`applyOps` itself, `convertToCapped`, ...) and no-ops have no change
//! event: [`change_event`] returns `None` for them.

use bson::{doc, Bson, Document, Timestamp};

use crate::update::{decode, UpdateError, UpdateKind};

/// Where an operation sits, and the session of its transaction.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    /// The shard (replica set name).
    pub shard: &'a str,
    /// `ts` of the entry (of the commit entry for a transaction's operation).
    pub ts: Timestamp,
    /// Its term, when the entry has one.
    pub term: Option<i64>,
    /// Its `h`, when the entry has one.
    pub hash: Option<i64>,
    /// Its `wall`.
    pub wall: Option<bson::DateTime>,
    /// For an operation unpacked from `applyOps`: its index and the transaction's session.
    pub txn: Option<TxnSource<'a>>,
}

/// The transaction an operation belongs to.
#[derive(Clone, Debug, Default)]
pub struct TxnSource<'a> {
    /// Position of the operation within the transaction (or batch), from 0.
    pub index: u32,
    /// `lsid`, when the transaction had a session.
    pub lsid: Option<&'a Document>,
    /// `txnNumber`.
    pub txn_number: Option<i64>,
}

/// An operation that cannot be turned into an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A field the operation needs is missing or of another type.
    #[error("{op} operation on {ns:?}: {problem}")]
    Malformed {
        /// `op`.
        op: String,
        /// `ns`.
        ns: String,
        /// What is wrong.
        problem: String,
    },
    /// The update could not be decoded.
    #[error("update on {ns:?}: {source}")]
    Update {
        /// `ns`.
        ns: String,
        /// Why.
        source: UpdateError,
    },
}

/// The change event of `op` (a top-level oplog entry, or one operation of an `applyOps`),
/// or `None` when change streams show nothing for it.
///
/// # Errors
/// [`EventError`] for a CRUD operation without the fields it needs, or an undecodable
/// update.
pub fn change_event(op: &Document, src: &Source<'_>) -> Result<Option<Document>, EventError> {
    let kind = op.get_str("op").unwrap_or("");
    let ns = op.get_str("ns").unwrap_or("");
    let bad = |problem: &str| EventError::Malformed {
        op: kind.to_owned(),
        ns: ns.to_owned(),
        problem: problem.to_owned(),
    };
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let o = op.get_document("o").map_err(|_| bad("no document in o"));
    let o2 = op.get_document("o2").ok();
    let id_key = |d: &Document| -> Result<Document, EventError> {
        d.get("_id")
            .map(|id| doc! {"_id": id.clone()})
            .ok_or_else(|| bad("the document has no _id"))
    };

    let mut ev = Document::new();
    ev.insert("_id", position(src));
    let mut ns_doc = doc! {"db": db, "coll": coll};
    let operation_type;
    let mut fields = Document::new();
    match kind {
        "i" => {
            let o = o?;
            operation_type = "insert";
            fields.insert("fullDocument", o.clone());
            let key = match o2 {
                Some(k) => k.clone(),
                None => id_key(o)?,
            };
            fields.insert("documentKey", key);
        }
        "u" => {
            let o = o?;
            let key = match o2 {
                Some(k) => k.clone(),
                None => return Err(bad("an update without o2 (the document key)")),
            };
            match decode(o).map_err(|source| EventError::Update {
                ns: ns.to_owned(),
                source,
            })? {
                UpdateKind::Update(desc) => {
                    operation_type = "update";
                    fields.insert("documentKey", key);
                    fields.insert("updateDescription", desc.to_document());
                }
                UpdateKind::Replace(full) => {
                    operation_type = "replace";
                    fields.insert("documentKey", key);
                    fields.insert("fullDocument", full);
                }
            }
        }
        "d" => {
            operation_type = "delete";
            fields.insert("documentKey", o?.clone());
        }
        "c" => {
            let o = o?;
            let name = o.keys().next().map(String::as_str).unwrap_or("");
            let target = |v: &Bson| v.as_str().map(str::to_owned);
            let without = |skip: &[&str]| -> Document {
                o.iter()
                    .filter(|(k, _)| !skip.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            match name {
                "drop" => {
                    operation_type = "drop";
                    ns_doc = doc! {"db": db, "coll": target(&o["drop"]).unwrap_or_default()};
                }
                "renameCollection" => {
                    operation_type = "rename";
                    let from = target(&o["renameCollection"]).unwrap_or_default();
                    let (fdb, fcoll) = from.split_once('.').unwrap_or((&from, ""));
                    ns_doc = doc! {"db": fdb, "coll": fcoll};
                    let to = o.get_str("to").unwrap_or("");
                    let (tdb, tcoll) = to.split_once('.').unwrap_or((to, ""));
                    fields.insert("to", doc! {"db": tdb, "coll": tcoll});
                }
                "dropDatabase" => {
                    operation_type = "dropDatabase";
                    ns_doc = doc! {"db": db};
                }
                "create" => {
                    operation_type = "create";
                    ns_doc = doc! {"db": db, "coll": target(&o["create"]).unwrap_or_default()};
                    fields.insert("operationDescription", without(&["create"]));
                }
                "createIndexes" => {
                    operation_type = "createIndexes";
                    ns_doc =
                        doc! {"db": db, "coll": target(&o["createIndexes"]).unwrap_or_default()};
                    fields.insert(
                        "operationDescription",
                        doc! {"indexes": [without(&["createIndexes"])]},
                    );
                }
                "commitIndexBuild" => {
                    operation_type = "createIndexes";
                    ns_doc =
                        doc! {"db": db, "coll": target(&o["commitIndexBuild"]).unwrap_or_default()};
                    fields.insert(
                        "operationDescription",
                        doc! {"indexes": o.get("indexes").cloned().unwrap_or(Bson::Array(vec![]))},
                    );
                }
                "dropIndexes" => {
                    operation_type = "dropIndexes";
                    ns_doc = doc! {"db": db, "coll": target(&o["dropIndexes"]).unwrap_or_default()};
                    let spec: Document = o2
                        .map(|d| {
                            d.iter()
                                .filter(|(k, _)| k.as_str() != "dropIndexes")
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect()
                        })
                        .unwrap_or_default();
                    fields.insert("operationDescription", doc! {"indexes": [spec]});
                }
                "collMod" => {
                    operation_type = "modify";
                    ns_doc = doc! {"db": db, "coll": target(&o["collMod"]).unwrap_or_default()};
                    fields.insert("operationDescription", without(&["collMod"]));
                }
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    }
    ev.insert("operationType", operation_type);
    ev.insert("clusterTime", src.ts);
    if let Some(w) = src.wall {
        ev.insert("wallTime", w);
    }
    ev.insert("ns", ns_doc);
    ev.extend(fields);
    if let Some(t) = &src.txn {
        if let Some(n) = t.txn_number {
            ev.insert("txnNumber", n);
        }
        if let Some(l) = t.lsid {
            ev.insert("lsid", l.clone());
        }
    }
    ev.insert("shard", src.shard);
    Ok(Some(ev))
}

/// The operation's position: its event `_id`.
/// The record written in place of an event for an operation [`change_event`] (or
/// [`crate::debezium_record`]) refused with an [`EventError`], when the user asked for it
/// (`[sink] undecodable = "raw"`): never an event, so that no consumer applies it as
/// one. `{"undecodable": true, "error": <why>, "_id": <position>, "shard", "clusterTime",
/// "ns": "<db.coll>", "op", "entry": <the operation as logged>}`; it has no
/// `operationType` (nor Debezium's `op` letter), which makes change-stream and Debezium
/// consumers refuse it rather than guess.
pub fn undecodable_record(op: &Document, src: &Source<'_>, error: &EventError) -> Document {
    let mut d = doc! {
        "undecodable": true,
        "error": error.to_string(),
        "_id": position(src),
        "shard": src.shard,
        "clusterTime": src.ts,
        "ns": op.get_str("ns").unwrap_or(""),
        "op": op.get_str("op").unwrap_or(""),
    };
    d.insert("entry", op.clone());
    d
}

fn position(src: &Source<'_>) -> Document {
    let mut d = doc! {"shard": src.shard, "ts": src.ts};
    if let Some(t) = src.term {
        d.insert("t", t);
    }
    if let Some(h) = src.hash {
        d.insert("h", h);
    }
    if let Some(t) = &src.txn {
        d.insert("index", i64::from(t.index));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::Binary;

    /// An update in a shape no MongoDB version logs is an error naming the namespace and
    /// the problem, never an event; its raw record carries the entry and no
    /// `operationType`.
    #[test]
    fn an_unknown_update_shape_is_an_error_and_its_raw_record_is_flagged() {
        for o in [
            doc! {"$v": 3_i32, "diff": {"u": {"a": 1}}},
            doc! {"$v": 2_i32, "diff": {"x": {"a": 1}}},
            doc! {"$v": 2_i32, "diff": {"sa": {"a": true, "q1": 5}}},
            doc! {"$rename": {"a": "b"}},
        ] {
            let op = doc! {"op": "u", "ns": "shop.people", "o": o.clone(), "o2": {"_id": 1}};
            let e = change_event(&op, &src()).expect_err("not an event");
            assert!(
                matches!(&e, EventError::Update { ns, .. } if ns == "shop.people"),
                "{e}"
            );
            let raw = undecodable_record(&op, &src(), &e);
            assert_eq!(raw.get("undecodable"), Some(&Bson::Boolean(true)));
            assert_eq!(raw.get("error"), Some(&Bson::String(e.to_string())));
            assert_eq!(
                raw.get_document("entry").unwrap().get("o"),
                Some(&Bson::Document(o))
            );
            assert!(!raw.contains_key("operationType"));
            assert_eq!(raw.get("op"), Some(&Bson::String("u".into())));
        }
    }

    /// An 8.0 compressed time-series bucket update (the diff of the server's
    /// `timeseries_write_util_test.cpp` `MakeTimeseriesCompressedDiffUpdateOp`: `scontrol.u`
    /// with count and version, `sdata.b` binary diffs) is an update event whose changed
    /// fields name every part of it, and the compressed insert is an insert: nothing is
    /// dropped or refused.
    #[test]
    fn compressed_bucket_writes_are_events() {
        let d = |b: &[u8]| Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: b.to_vec(),
        };
        let diff = doc! {
            "scontrol": {"u": {"count": 5, "version": 3},
                         "smin": {"u": {"a": 0}}, "smax": {"u": {"a": 4}}},
            "sdata": {"i": {"w": Binary { subtype: bson::spec::BinarySubtype::Column, bytes: vec![0] }},
                      "b": {"time": {"o": 10, "d": d(&[0x80, 0x0b, 0x7d, 0, 0, 0xfc, 0x7c, 0x60, 0x6d, 0])},
                            "a": {"o": 6, "d": d(&[0x80, 0x2b, 0, 0x10, 0, 0x14, 0, 0x10, 0, 0])}}},
        };
        let op = doc! {"op": "u", "ns": "farm.system.buckets.weather", "o": {"$v": 2_i32, "diff": diff},
        "o2": {"_id": bson::oid::ObjectId::new()}};
        let ev = change_event(&op, &src()).unwrap().unwrap();
        let fields: Vec<&String> = ev
            .get_document("updateDescription")
            .unwrap()
            .get_document("updatedFields")
            .unwrap()
            .keys()
            .collect();
        assert_eq!(
            fields,
            [
                "control.count",
                "control.version",
                "control.min.a",
                "control.max.a",
                "data.w",
                "data.time",
                "data.a"
            ]
        );
        let insert = doc! {"op": "i", "ns": "farm.system.buckets.weather",
        "o": {"_id": 1, "control": {"version": 2, "min": {}, "max": {}, "count": 1},
              "data": {"t": Binary { subtype: bson::spec::BinarySubtype::Column, bytes: vec![0] }}}};
        let ev = change_event(&insert, &src()).unwrap().unwrap();
        assert_eq!(ev.get_str("operationType").unwrap(), "insert");
    }

    /// `jstests/change_streams/timeseries.js` (always-compressed buckets): the second
    /// insert of a measurement is a bucket update whose change event has `updatedFields`
    /// `{"control.count": 2, "data.ts": {o: 10, d: BinData(0, "gA4AAAAAAAAAAA==")},
    /// "data._id": {o: 10, d: BinData(0, "kA4AAAAAAAAAAA==")}}` and nothing removed or
    /// truncated.
    #[test]
    fn compressed_bucket_update_as_the_server_test_reports_it() {
        use base64::Engine;
        let d = |s: &str| Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: base64::engine::general_purpose::STANDARD.decode(s).unwrap(),
        };
        let op = doc! {"op": "u", "ns": "db.system.buckets.timeseries",
        "o": {"$v": 2_i32, "diff": {"scontrol": {"u": {"count": 2}},
              "sdata": {"b": {"ts": {"o": 10, "d": d("gA4AAAAAAAAAAA==")},
                              "_id": {"o": 10, "d": d("kA4AAAAAAAAAAA==")}}}}},
        "o2": {"_id": 1}};
        let ev = change_event(&op, &src()).unwrap().unwrap();
        let desc = ev.get_document("updateDescription").unwrap();
        assert_eq!(
            desc.get_document("updatedFields").unwrap(),
            &doc! {"control.count": 2,
            "data.ts": {"o": 10, "d": d("gA4AAAAAAAAAAA==")},
            "data._id": {"o": 10, "d": d("kA4AAAAAAAAAAA==")}}
        );
        assert_eq!(
            desc.get_array("removedFields").unwrap(),
            &Vec::<Bson>::new()
        );
        assert_eq!(
            desc.get_array("truncatedArrays").unwrap(),
            &Vec::<Bson>::new()
        );
    }

    fn src() -> Source<'static> {
        Source {
            shard: "shard01",
            ts: Timestamp {
                time: 10,
                increment: 2,
            },
            term: Some(3),
            wall: Some(bson::DateTime::from_millis(1_000)),
            hash: None,
            txn: None,
        }
    }

    #[test]
    fn insert_update_replace_delete() {
        let ev = change_event(
            &doc! {"op": "i", "ns": "shop.orders", "o": {"_id": 1, "x": 1}, "o2": {"sk": 5, "_id": 1}},
            &src(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ev.get_str("operationType").unwrap(), "insert");
        assert_eq!(
            ev.get_document("fullDocument").unwrap(),
            &doc! {"_id": 1, "x": 1}
        );
        assert_eq!(
            ev.get_document("documentKey").unwrap(),
            &doc! {"sk": 5, "_id": 1}
        );
        assert_eq!(
            ev.get_document("ns").unwrap(),
            &doc! {"db": "shop", "coll": "orders"}
        );
        assert_eq!(
            ev.get_document("_id").unwrap(),
            &doc! {"shard": "shard01", "ts": Timestamp { time: 10, increment: 2 }, "t": 3_i64}
        );
        // Before 6.0 inserts have no o2: the key is the _id.
        let ev = change_event(&doc! {"op": "i", "ns": "a.b", "o": {"_id": 7}}, &src())
            .unwrap()
            .unwrap();
        assert_eq!(ev.get_document("documentKey").unwrap(), &doc! {"_id": 7});

        let ev = change_event(
            &doc! {"op": "u", "ns": "a.b", "o": {"$v": 2, "diff": {"u": {"x": 2}, "d": {"y": false}}}, "o2": {"_id": 7}},
            &src(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ev.get_str("operationType").unwrap(), "update");
        assert_eq!(
            ev.get_document("updateDescription").unwrap(),
            &doc! {"updatedFields": {"x": 2}, "removedFields": ["y"], "truncatedArrays": []}
        );
        assert!(ev.get("fullDocument").is_none());

        let ev = change_event(
            &doc! {"op": "u", "ns": "a.b", "o": {"_id": 7, "x": 3}, "o2": {"_id": 7}},
            &src(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ev.get_str("operationType").unwrap(), "replace");
        assert_eq!(
            ev.get_document("fullDocument").unwrap(),
            &doc! {"_id": 7, "x": 3}
        );

        let ev = change_event(&doc! {"op": "d", "ns": "a.b", "o": {"_id": 7}}, &src())
            .unwrap()
            .unwrap();
        assert_eq!(ev.get_str("operationType").unwrap(), "delete");
        assert_eq!(ev.get_document("documentKey").unwrap(), &doc! {"_id": 7});
    }

    #[test]
    fn transactions_carry_their_session_and_index() {
        let lsid = doc! {"id": 1};
        let s = Source {
            txn: Some(TxnSource {
                index: 4,
                lsid: Some(&lsid),
                txn_number: Some(9),
            }),
            ..src()
        };
        let ev = change_event(&doc! {"op": "d", "ns": "a.b", "o": {"_id": 7}}, &s)
            .unwrap()
            .unwrap();
        assert_eq!(ev.get_i64("txnNumber").unwrap(), 9);
        assert_eq!(ev.get_document("lsid").unwrap(), &lsid);
        assert_eq!(ev.get_document("_id").unwrap().get_i64("index").unwrap(), 4);
    }

    #[test]
    fn ddl_events() {
        let cmd = |o: Document| doc! {"op": "c", "ns": "shop.$cmd", "o": o};
        let ev = change_event(&cmd(doc! {"drop": "orders"}), &src())
            .unwrap()
            .unwrap();
        assert_eq!(ev.get_str("operationType").unwrap(), "drop");
        assert_eq!(
            ev.get_document("ns").unwrap(),
            &doc! {"db": "shop", "coll": "orders"}
        );
        let ev = change_event(
            &cmd(doc! {"renameCollection": "shop.a", "to": "shop.b", "stayTemp": false}),
            &src(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ev.get_str("operationType").unwrap(), "rename");
        assert_eq!(
            ev.get_document("to").unwrap(),
            &doc! {"db": "shop", "coll": "b"}
        );
        let ev = change_event(&cmd(doc! {"dropDatabase": 1}), &src())
            .unwrap()
            .unwrap();
        assert_eq!(ev.get_document("ns").unwrap(), &doc! {"db": "shop"});
        let ev = change_event(&cmd(doc! {"create": "c", "capped": true}), &src())
            .unwrap()
            .unwrap();
        assert_eq!(
            ev.get_document("operationDescription").unwrap(),
            &doc! {"capped": true}
        );
        let ev = change_event(
            &cmd(doc! {"createIndexes": "c", "v": 2, "key": {"x": 1}, "name": "x_1"}),
            &src(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            ev.get_document("operationDescription").unwrap(),
            &doc! {"indexes": [{"v": 2, "key": {"x": 1}, "name": "x_1"}]}
        );
        assert!(change_event(&cmd(doc! {"applyOps": []}), &src())
            .unwrap()
            .is_none());
        assert!(
            change_event(&doc! {"op": "n", "ns": "", "o": {"msg": "x"}}, &src())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn malformed_operations_are_errors() {
        let e = change_event(
            &doc! {"op": "u", "ns": "a.b", "o": {"$v": 2, "diff": {}}},
            &src(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("without o2"), "{e}");
        let e = change_event(&doc! {"op": "i", "ns": "a.b", "o": {"x": 1}}, &src()).unwrap_err();
        assert!(e.to_string().contains("no _id"), "{e}");
        let e = change_event(&doc! {"op": "d", "ns": "a.b"}, &src()).unwrap_err();
        assert!(e.to_string().contains("no document in o"), "{e}");
    }
}

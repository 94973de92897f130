//! The output record: one JSON object per emitted operation, the same in the file sink
//! (one per line) and as the Kafka message value.
//!
//! ```json
//! {"shard":"shard01","ts":{"t":1422998574,"i":1},"id":{"ts":{"t":1422998574,"i":1},"h":-678},
//!  "op":"i","ns":"test.mycollection","entry":{ ...the oplog entry, relaxed Extended JSON v2... }}
//! ```
//!
//! * `shard`, `ts`, `op`, `ns` are copied out of the entry so consumers can route and
//!   order records without parsing `entry`.
//! * `id` is the entry identity the merge used; consumers drop duplicates (which can only
//!   follow a crash, see the checkpoint docs) by remembering the last `id` per shard.
//! * `entry` is the oplog entry as the server wrote it, field order and all.
//! * Writes to the buckets of a time-series collection (`ns` is
//!   `<db>.system.buckets.<coll>`, or a command on such a namespace) also carry
//!   `"timeseries":"<db>.<coll>"`, the collection the user named; `entry` is the bucket
//!   write as logged.
//! * Operations unpacked from a transaction also carry
//!   `"txn":{"lsid":{...},"txnNumber":N,"index":I}` and `entry` is the inner operation;
//!   `ts` and `id` are those of the entry that committed the transaction.

use bson::{RawBsonRef, RawDocument};

use crate::entry::{OpKind, OplogEntry};
use crate::extjson::{write_document, write_str, write_value, Mode};
use crate::filter::{command_target_ns, timeseries_view_ns};
use crate::position::{EntryId, Timestamp};

/// Transaction details of an operation unpacked from an `applyOps` entry.
#[derive(Clone, Copy, Debug)]
pub struct TxnInfo<'a> {
    /// `lsid` of the transaction, if it had one (`applyOps` run as a command has none).
    pub lsid: Option<&'a RawDocument>,
    /// `txnNumber`.
    pub txn_number: Option<i64>,
    /// Position of the operation within the whole transaction, from 0.
    pub index: u32,
    /// How many records the transaction's part on this shard yields (its operations the
    /// filter keeps): a consumer has the whole part once it holds this many.
    pub count: u32,
    /// `commitTimestamp` of a prepared (distributed) transaction: equal on every shard.
    pub commit_timestamp: Option<Timestamp>,
}

/// Appends the record for a top-level entry to `out`.
///
/// # Errors
/// When the entry's raw bytes are not valid BSON.
pub fn encode_entry(
    shard: &str,
    entry: &OplogEntry<'_>,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    encode_entry_as(Mode::Relaxed, shard, entry, out)
}

/// [`encode_entry`] with the BSON values in Extended JSON `mode` (`[sink] json`).
///
/// # Errors
/// As [`encode_entry`].
pub fn encode_entry_as(
    mode: Mode,
    shard: &str,
    entry: &OplogEntry<'_>,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    write_header(shard, entry.id(), entry.op.as_str(), entry.ns, out);
    write_timeseries(entry.op, entry.ns, entry.o, out);
    out.extend_from_slice(b",\"entry\":");
    write_document(entry.raw(), mode, out)?;
    out.push(b'}');
    Ok(())
}

/// Appends the record for one operation of a transaction to `out`. `commit` is the identity
/// of the entry that committed the transaction; `op` and `ns` are the inner operation's.
///
/// # Errors
/// When the raw bytes are not valid BSON.
pub fn encode_txn_op(
    shard: &str,
    commit: EntryId,
    op: &str,
    ns: &str,
    txn: TxnInfo<'_>,
    inner: &RawDocument,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    encode_txn_op_as(Mode::Relaxed, shard, commit, op, ns, txn, inner, out)
}

/// [`encode_txn_op`] with the BSON values in Extended JSON `mode` (`[sink] json`).
///
/// # Errors
/// As [`encode_txn_op`].
#[allow(clippy::too_many_arguments)]
pub fn encode_txn_op_as(
    mode: Mode,
    shard: &str,
    commit: EntryId,
    op: &str,
    ns: &str,
    txn: TxnInfo<'_>,
    inner: &RawDocument,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    write_header(shard, commit, op, ns, out);
    if let Some(kind) = OpKind::from_code(op) {
        let o = match inner.get("o") {
            Ok(Some(RawBsonRef::Document(o))) => Some(o),
            _ => None,
        };
        write_timeseries(kind, ns, o, out);
    }
    out.extend_from_slice(b",\"txn\":{");
    let mut sep = "";
    if let Some(lsid) = txn.lsid {
        out.extend_from_slice(b"\"lsid\":");
        write_document(lsid, mode, out)?;
        sep = ",";
    }
    if let Some(n) = txn.txn_number {
        out.extend_from_slice(sep.as_bytes());
        out.extend_from_slice(b"\"txnNumber\":");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        sep = ",";
    }
    out.extend_from_slice(sep.as_bytes());
    out.extend_from_slice(b"\"index\":");
    out.extend_from_slice(itoa::Buffer::new().format(txn.index).as_bytes());
    out.extend_from_slice(b",\"count\":");
    out.extend_from_slice(itoa::Buffer::new().format(txn.count).as_bytes());
    if let Some(at) = txn.commit_timestamp {
        out.extend_from_slice(b",\"commitTimestamp\":{\"t\":");
        out.extend_from_slice(itoa::Buffer::new().format(at.time).as_bytes());
        out.extend_from_slice(b",\"i\":");
        out.extend_from_slice(itoa::Buffer::new().format(at.increment).as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"},\"entry\":");
    write_document(inner, mode, out)?;
    out.push(b'}');
    Ok(())
}

/// Appends a placement marker to `out`: documents changed shards (a resharding
/// operation's cut-over on this shard, or a `movePrimary`). `op` is `"placement"`, `ns`
/// the collection (or the database for `movePrimary`), `entry` the entry that marks it
/// (the cut-over's rename or drop, or the notification) as logged:
///
/// ```json
/// {"shard":"shard02","ts":{"t":1700000100,"i":7},"id":{"ts":{"t":1700000100,"i":7},"t":1},
///  "op":"placement","ns":"shop.items",
///  "placement":{"operation":"reshardCollection","role":"recipient","uuid":{"$uuid":"..."}},
///  "entry":{...}}
/// ```
///
/// # Errors
/// When the entry's raw bytes are not valid BSON.
pub fn encode_placement(
    shard: &str,
    entry: &OplogEntry<'_>,
    placement: &crate::filter::Placement,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    use crate::filter::Placement;
    write_header(shard, entry.id(), "placement", placement.ns(), out);
    out.extend_from_slice(b",\"placement\":{\"operation\":");
    write_str(placement.operation(), out);
    match placement {
        Placement::Reshard { role, uuid, .. } => {
            out.extend_from_slice(b",\"role\":");
            write_str(role.as_str(), out);
            if let Some(u) = uuid {
                out.extend_from_slice(b",\"uuid\":");
                let bin = bson::RawBinaryRef {
                    subtype: bson::spec::BinarySubtype::Uuid,
                    bytes: u,
                };
                write_value(RawBsonRef::Binary(bin), Mode::Relaxed, out)?;
            }
        }
        Placement::MovePrimary { from, to, .. } => {
            out.extend_from_slice(b",\"from\":");
            write_str(from, out);
            out.extend_from_slice(b",\"to\":");
            write_str(to, out);
        }
    }
    out.extend_from_slice(b"},\"entry\":");
    write_document(entry.raw(), Mode::Relaxed, out)?;
    out.push(b'}');
    Ok(())
}

/// Appends the record of a document a snapshot read at `at` to `out`:
/// `{"shard", "ts": at, "op": "r", "ns", "snapshot": true, "entry": {"op": "r", "ns", "o":
/// <document>}}`. There is no oplog entry, so no `id`.
///
/// # Errors
/// When the document's raw bytes are not valid BSON.
pub fn encode_snapshot_document(
    shard: &str,
    at: crate::Timestamp,
    ns: &str,
    doc: &RawDocument,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    encode_snapshot_document_as(Mode::Relaxed, shard, at, ns, doc, out)
}

/// [`encode_snapshot_document`] with the document in Extended JSON `mode`.
///
/// # Errors
/// As [`encode_snapshot_document`].
pub fn encode_snapshot_document_as(
    mode: Mode,
    shard: &str,
    at: crate::Timestamp,
    ns: &str,
    doc: &RawDocument,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    out.extend_from_slice(b"{\"shard\":");
    write_str(shard, out);
    out.extend_from_slice(b",\"ts\":");
    write_ts(EntryId::at(at), out);
    out.extend_from_slice(b",\"op\":\"r\",\"ns\":");
    write_str(ns, out);
    out.extend_from_slice(b",\"snapshot\":true,\"entry\":{\"op\":\"r\",\"ns\":");
    write_str(ns, out);
    out.extend_from_slice(b",\"o\":");
    write_document(doc, mode, out)?;
    out.extend_from_slice(b"}}");
    Ok(())
}

fn write_header(shard: &str, id: EntryId, op: &str, ns: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"shard\":");
    write_str(shard, out);
    out.extend_from_slice(b",\"ts\":");
    write_ts(id, out);
    out.extend_from_slice(b",\"id\":{\"ts\":");
    write_ts(id, out);
    if let Some(t) = id.term {
        out.extend_from_slice(b",\"t\":");
        out.extend_from_slice(itoa::Buffer::new().format(t).as_bytes());
    }
    if let Some(h) = id.hash {
        out.extend_from_slice(b",\"h\":");
        out.extend_from_slice(itoa::Buffer::new().format(h).as_bytes());
    }
    out.extend_from_slice(b"},\"op\":");
    write_str(op, out);
    out.extend_from_slice(b",\"ns\":");
    write_str(ns, out);
}

/// `,"timeseries":"db.coll"` when the operation writes a time-series collection's buckets
/// (commands: when the namespace they change does).
fn write_timeseries(op: OpKind, ns: &str, o: Option<&RawDocument>, out: &mut Vec<u8>) {
    let view = if op == OpKind::Command {
        let first = o.and_then(|o| o.into_iter().next()).and_then(Result::ok);
        let target = match first {
            Some((name, value)) => command_target_ns(ns, name.as_str(), value.as_str()),
            None => return,
        };
        timeseries_view_ns(&target)
    } else {
        timeseries_view_ns(ns)
    };
    if let Some(view) = view {
        out.extend_from_slice(b",\"timeseries\":");
        write_str(&view, out);
    }
}

fn write_ts(id: EntryId, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"t\":");
    out.extend_from_slice(itoa::Buffer::new().format(id.ts.time).as_bytes());
    out.extend_from_slice(b",\"i\":");
    out.extend_from_slice(itoa::Buffer::new().format(id.ts.increment).as_bytes());
    out.push(b'}');
}

/// The Kafka key of a document-level operation: `{"ns":"db.coll","_id":<canonical>}`.
/// Canonical Extended JSON keeps `1`, `1.0` and `NumberLong(1)` apart, as MongoDB does.
///
/// # Errors
/// When the raw bytes of the `_id` are not valid BSON.
pub fn document_key(
    ns: &str,
    id: RawBsonRef<'_>,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    out.extend_from_slice(b"{\"ns\":");
    write_str(ns, out);
    out.extend_from_slice(b",\"_id\":");
    write_value(id, Mode::Canonical, out)?;
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn record_shape() {
        let raw = rawdoc! {
            "ts": bson::Timestamp { time: 1422998574, increment: 1 }, "h": -6781014703318499311_i64,
            "v": 2, "op": "i", "ns": "test.mycollection", "o": { "_id": 1.0, "data": "hello" },
        };
        let e = OplogEntry::parse(&raw).unwrap();
        let mut out = Vec::new();
        encode_entry("shard01", &e, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"shard":"shard01","ts":{"t":1422998574,"i":1},"id":{"ts":{"t":1422998574,"i":1},"h":-6781014703318499311},"op":"i","ns":"test.mycollection","entry":{"ts":{"$timestamp":{"t":1422998574,"i":1}},"h":-6781014703318499311,"v":2,"op":"i","ns":"test.mycollection","o":{"_id":1.0,"data":"hello"}}}"#
        );
    }

    /// A bucket write names its time-series collection; so does the buckets collection's
    /// `create`; a plain collection's records do not carry the field.
    #[test]
    fn timeseries_records_name_the_collection() {
        let encode = |raw: &RawDocument| {
            let e = OplogEntry::parse(raw).unwrap();
            let mut out = Vec::new();
            encode_entry("s", &e, &mut out).unwrap();
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        let ts = bson::Timestamp {
            time: 5,
            increment: 1,
        };
        let bucket = rawdoc! {"op": "i", "ns": "farm.system.buckets.weather",
        "o": {"_id": 1, "control": {"version": 1}}, "ts": ts, "t": 1_i64};
        let v = encode(&bucket);
        assert_eq!(v["timeseries"], "farm.weather");
        assert_eq!(v["ns"], "farm.system.buckets.weather");
        assert_eq!(v["entry"]["ns"], "farm.system.buckets.weather");
        let create = rawdoc! {"op": "c", "ns": "farm.$cmd",
        "o": {"create": "system.buckets.weather", "clusteredIndex": true}, "ts": ts, "t": 1_i64};
        assert_eq!(encode(&create)["timeseries"], "farm.weather");
        let plain = rawdoc! {"op": "i", "ns": "farm.sheep", "o": {"_id": 1}, "ts": ts, "t": 1_i64};
        assert!(encode(&plain).get("timeseries").is_none());
        let views = rawdoc! {"op": "i", "ns": "farm.system.views", "o": {"_id": "farm.weather"}, "ts": ts, "t": 1_i64};
        assert!(encode(&views).get("timeseries").is_none());

        let inner = rawdoc! {"op": "d", "ns": "farm.system.buckets.weather", "o": {"_id": 1}};
        let mut out = Vec::new();
        let info = TxnInfo {
            lsid: None,
            txn_number: None,
            index: 0,
            count: 1,
            commit_timestamp: None,
        };
        encode_txn_op(
            "s",
            EntryId::new(crate::Timestamp::new(5, 1), 1),
            "d",
            "farm.system.buckets.weather",
            info,
            &inner,
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timeseries"], "farm.weather");
    }

    #[test]
    fn txn_record_and_keys() {
        let inner = rawdoc! { "op": "i", "ns": "shop.orders", "o": { "_id": 7 } };
        let lsid = rawdoc! { "id": 1 };
        let mut out = Vec::new();
        let commit = EntryId::new(crate::Timestamp::new(10, 2), 3);
        encode_txn_op(
            "s",
            commit,
            "i",
            "shop.orders",
            TxnInfo {
                lsid: Some(&lsid),
                txn_number: Some(4),
                index: 1,
                count: 2,
                commit_timestamp: Some(crate::Timestamp::new(9, 7)),
            },
            &inner,
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["txn"],
            serde_json::json!({"lsid": {"id": 1}, "txnNumber": 4, "index": 1, "count": 2,
                "commitTimestamp": {"t": 9, "i": 7}})
        );
        assert_eq!(
            v["id"],
            serde_json::json!({"ts": {"t": 10, "i": 2}, "t": 3})
        );
        assert_eq!(v["entry"]["o"]["_id"], 7);

        let mut k = Vec::new();
        document_key("shop.orders", RawBsonRef::Int32(7), &mut k).unwrap();
        assert_eq!(k, br#"{"ns":"shop.orders","_id":{"$numberInt":"7"}}"#);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes a member sends, reading and encoding them returns an error or a
        /// record, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(doc) = RawDocument::from_bytes(&bytes) {
                if let Ok(e) = OplogEntry::parse(doc) {
                    let mut out = Vec::new();
                    let _ = encode_entry("s", &e, &mut out);
                    let _ = e.digest();
                    let _ = e.command_name();
                    let _ = e.document_id();
                }
            }
        }

        /// Valid documents with oplog-like fields in random order and types.
        #[test]
        fn arbitrary_fields_never_panic(fields in proptest::collection::vec((prop_oneof![Just("ts"), Just("t"), Just("h"), Just("op"), Just("ns"), Just("o"), Just("o2"), Just("ui"), Just("fromMigrate"), Just("wall"), Just("lsid"), Just("txnNumber"), Just("prevOpTime")], 0u8..8), 0..10)) {
            let mut d = bson::RawDocumentBuf::new();
            for (k, kind) in fields {
                let k: &bson::raw::CStr = k.try_into().unwrap();
                match kind {
                    0 => d.append(k, bson::Timestamp { time: 5, increment: 1 }),
                    1 => d.append(k, 7_i64),
                    2 => d.append(k, "i"),
                    3 => d.append(k, bson::rawdoc! { "_id": 1, "applyOps": [] }),
                    4 => d.append(k, true),
                    5 => d.append(k, bson::DateTime::from_millis(9)),
                    6 => d.append(k, bson::rawdoc! { "ts": "x" }),
                    _ => d.append(k, 3_i32),
                }
            }
            if let Ok(e) = OplogEntry::parse(&d) {
                let mut out = Vec::new();
                prop_assert!(encode_entry("s", &e, &mut out).is_ok());
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok(), "{}", String::from_utf8_lossy(&out));
            }
        }
    }
}

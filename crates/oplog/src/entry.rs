//! A zero-copy view of one raw oplog entry.
//!
//! [`OplogEntry::parse`] walks the top-level elements of the raw BSON document once and
//! keeps borrowed references to the fields quorumtail needs; nested documents (`o`, `o2`,
//! `lsid`, ...) stay raw until someone asks for them. Unknown fields are ignored, as the
//! server adds fields over versions (`v`, `stmtId`, `destinedRecipient`, `needsRetryImage`,
//! ...).
//!
//! An entry kept for later is parsed once: [`OplogEntry::layout`] records what the parse
//! found as an owned [`EntryLayout`] (scalars and byte ranges), and [`EntryLayout::view`]
//! rebuilds the same view from the same bytes without walking the document again.
//!
//! Field types follow `src/mongo/db/repl/oplog_entry.idl` in the server source: `ts` is a
//! BSON Timestamp, `t` a 64-bit integer (older servers sometimes wrote 32-bit), `h` a
//! 64-bit integer (random up to 4.0, 0 in 4.2, absent from 4.4), `op` a one-letter string,
//! `ns` a string, `wall` a Date, `fromMigrate` a boolean.

use bson::{RawBsonRef, RawDocument};

use crate::position::{EntryId, Timestamp};

mod layout;
pub use layout::EntryLayout;

/// The kind of operation an entry records (`op`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum OpKind {
    /// `i`: a document was inserted; `o` is the document.
    Insert,
    /// `u`: a document was updated; `o2` names it, `o` is the change.
    Update,
    /// `d`: a document was deleted; `o` holds its `_id` (and shard key).
    Delete,
    /// `c`: a command (DDL, `applyOps` transactions, commit/abort of prepared ones).
    Command,
    /// `n`: a no-op (periodic keep-alive, new primary, migration markers).
    Noop,
    /// `db`: a database declaration written by servers before 3.0; carries no data change.
    LegacyDbDeclaration,
}

impl OpKind {
    /// The code as written in the oplog.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Insert => "i",
            OpKind::Update => "u",
            OpKind::Delete => "d",
            OpKind::Command => "c",
            OpKind::Noop => "n",
            OpKind::LegacyDbDeclaration => "db",
        }
    }

    /// Parses an `op` code.
    pub fn from_code(code: &str) -> Option<OpKind> {
        Some(match code {
            "i" => OpKind::Insert,
            "u" => OpKind::Update,
            "d" => OpKind::Delete,
            "c" => OpKind::Command,
            "n" => OpKind::Noop,
            "db" => OpKind::LegacyDbDeclaration,
            _ => return None,
        })
    }
}

/// An `OpTime` as found in `prevOpTime`: a timestamp and a term.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct OpTime {
    /// The timestamp.
    pub ts: Timestamp,
    /// The term; `-1` marks "no previous entry" in a transaction chain.
    pub term: i64,
}

impl OpTime {
    /// Whether this is the null OpTime `{ts: Timestamp(0, 0), t: -1}` that starts a chain.
    pub fn is_null(&self) -> bool {
        self.ts == Timestamp::ZERO
    }
}

/// Why an oplog entry could not be read. These are definite: an entry MongoDB wrote is
/// never malformed, so seeing one means corruption, a wrong collection, or a bug, and the
/// shard must stop rather than skip it.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum EntryError {
    /// The BSON bytes themselves are invalid.
    #[error("oplog entry{at} is not valid BSON: {detail}")]
    Bson {
        /// Where, if the timestamp could be read.
        at: AtTs,
        /// The decoder's message.
        detail: String,
    },
    /// A required field is missing.
    #[error("oplog entry{at} has no `{field}` field; is this really local.oplog.rs?")]
    Missing {
        /// Where, if the timestamp could be read.
        at: AtTs,
        /// The missing field.
        field: &'static str,
    },
    /// A field has a type MongoDB never writes there.
    #[error("oplog entry{at}: field `{field}` has type {found}, expected {expected}")]
    WrongType {
        /// Where, if the timestamp could be read.
        at: AtTs,
        /// The field.
        field: &'static str,
        /// The type found.
        found: String,
        /// The type expected.
        expected: &'static str,
    },
    /// `op` holds an unknown code.
    #[error("oplog entry{at}: unknown op code {code:?} (known: i, u, d, c, n)")]
    UnknownOp {
        /// Where, if the timestamp could be read.
        at: AtTs,
        /// The code found.
        code: String,
    },
}

/// ` at <ts>` when known, for error messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct AtTs(pub Option<Timestamp>);

impl std::fmt::Display for AtTs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ts) => write!(f, " at ts {ts}"),
            None => Ok(()),
        }
    }
}

/// A parsed, borrowed view of an oplog entry.
#[derive(Clone, Copy, Debug)]
pub struct OplogEntry<'a> {
    raw: &'a RawDocument,
    /// `ts`.
    pub ts: Timestamp,
    /// `t`, the election term (protocol version 1, MongoDB 3.2+).
    pub term: Option<i64>,
    /// `h`, the legacy entry hash (up to 4.2).
    pub hash: Option<i64>,
    /// `op`.
    pub op: OpKind,
    /// `ns`; empty for no-ops.
    pub ns: &'a str,
    /// `o`, the operation's document.
    pub o: Option<&'a RawDocument>,
    /// `o2`, the update target (`_id` plus shard key) or no-op details.
    pub o2: Option<&'a RawDocument>,
    /// `ui`, the collection UUID (raw binary bytes).
    pub ui: Option<&'a [u8]>,
    /// `fromMigrate: true`: written by a chunk migration, not by an application.
    pub from_migrate: bool,
    /// `wall`, the primary's wall clock when it wrote the entry.
    pub wall: Option<bson::DateTime>,
    /// `lsid`, the logical session of a retryable write or transaction.
    pub lsid: Option<&'a RawDocument>,
    /// `txnNumber`.
    pub txn_number: Option<i64>,
    /// `prevOpTime`: the previous entry of the same transaction or retryable write.
    pub prev_op_time: Option<OpTime>,
}

fn type_name(v: &RawBsonRef<'_>) -> String {
    format!("{:?}", v.element_type())
}

impl<'a> OplogEntry<'a> {
    /// Reads the fields of a raw oplog entry in one pass.
    ///
    /// # Errors
    /// [`EntryError`] when the BSON is invalid, `ts` or `op` is missing, or a known field
    /// has a type MongoDB never writes.
    pub fn parse(raw: &'a RawDocument) -> Result<Self, EntryError> {
        let mut ts = None;
        let mut term = None;
        let mut hash = None;
        let mut op = None;
        let mut ns = None;
        let mut o = None;
        let mut o2 = None;
        let mut ui = None;
        let mut from_migrate = false;
        let mut wall = None;
        let mut lsid = None;
        let mut txn_number = None;
        let mut prev_op_time = None;

        for item in raw.iter() {
            let (key, value) = item.map_err(|e| EntryError::Bson {
                at: AtTs(ts),
                detail: e.to_string(),
            })?;
            let wrong = |field: &'static str, expected: &'static str| EntryError::WrongType {
                at: AtTs(ts),
                field,
                found: type_name(&value),
                expected,
            };
            match key.as_str() {
                "ts" => match value {
                    RawBsonRef::Timestamp(t) => ts = Some(t.into()),
                    _ => return Err(wrong("ts", "Timestamp")),
                },
                "t" => {
                    term = Some(match value {
                        RawBsonRef::Int64(v) => v,
                        RawBsonRef::Int32(v) => v.into(),
                        _ => return Err(wrong("t", "Int64")),
                    })
                }
                "h" => {
                    hash = Some(match value {
                        RawBsonRef::Int64(v) => v,
                        RawBsonRef::Int32(v) => v.into(),
                        _ => return Err(wrong("h", "Int64")),
                    })
                }
                "op" => match value {
                    RawBsonRef::String(code) => {
                        op = Some(
                            OpKind::from_code(code).ok_or_else(|| EntryError::UnknownOp {
                                at: AtTs(ts),
                                code: code.to_owned(),
                            })?,
                        )
                    }
                    _ => return Err(wrong("op", "String")),
                },
                "ns" => match value {
                    RawBsonRef::String(s) => ns = Some(s),
                    _ => return Err(wrong("ns", "String")),
                },
                "o" => match value {
                    RawBsonRef::Document(d) => o = Some(d),
                    _ => return Err(wrong("o", "Document")),
                },
                "o2" => match value {
                    RawBsonRef::Document(d) => o2 = Some(d),
                    _ => return Err(wrong("o2", "Document")),
                },
                "ui" => match value {
                    RawBsonRef::Binary(b) => ui = Some(b.bytes),
                    _ => return Err(wrong("ui", "Binary")),
                },
                "fromMigrate" => match value {
                    RawBsonRef::Boolean(b) => from_migrate = b,
                    _ => return Err(wrong("fromMigrate", "Boolean")),
                },
                "wall" => match value {
                    RawBsonRef::DateTime(d) => wall = Some(d),
                    _ => return Err(wrong("wall", "Date")),
                },
                "lsid" => match value {
                    RawBsonRef::Document(d) => lsid = Some(d),
                    _ => return Err(wrong("lsid", "Document")),
                },
                "txnNumber" => {
                    txn_number = Some(match value {
                        RawBsonRef::Int64(v) => v,
                        RawBsonRef::Int32(v) => v.into(),
                        _ => return Err(wrong("txnNumber", "Int64")),
                    })
                }
                "prevOpTime" => match value {
                    RawBsonRef::Document(d) => prev_op_time = Some(parse_optime(d, AtTs(ts))?),
                    _ => return Err(wrong("prevOpTime", "Document")),
                },
                _ => {}
            }
        }
        let ts = ts.ok_or(EntryError::Missing {
            at: AtTs(None),
            field: "ts",
        })?;
        let at = AtTs(Some(ts));
        let op = op.ok_or(EntryError::Missing { at, field: "op" })?;
        Ok(OplogEntry {
            raw,
            ts,
            term,
            hash,
            op,
            ns: ns.unwrap_or(""),
            o,
            o2,
            ui,
            from_migrate,
            wall,
            lsid,
            txn_number,
            prev_op_time,
        })
    }

    /// The fields that name an entry, and nothing else: `ts`, `t`, `h`. The identity
    /// projection that key-only members stream (`{ts: 1, t: 1, h: 1}`) parses with this;
    /// whole entries parse with it too.
    ///
    /// # Errors
    /// [`EntryError`] when the BSON is invalid, `ts` is missing, or `ts`/`t`/`h` has a type
    /// MongoDB never writes.
    pub fn parse_id(raw: &RawDocument) -> Result<EntryId, EntryError> {
        let mut ts = None;
        let mut term = None;
        let mut hash = None;
        for item in raw.iter() {
            let (key, value) = item.map_err(|e| EntryError::Bson {
                at: AtTs(ts),
                detail: e.to_string(),
            })?;
            let wrong = |field: &'static str, expected: &'static str| EntryError::WrongType {
                at: AtTs(ts),
                field,
                found: type_name(&value),
                expected,
            };
            let int = |field: &'static str| match value {
                RawBsonRef::Int64(v) => Ok(v),
                RawBsonRef::Int32(v) => Ok(v.into()),
                _ => Err(wrong(field, "Int64")),
            };
            match key.as_str() {
                "ts" => match value {
                    RawBsonRef::Timestamp(t) => ts = Some(t.into()),
                    _ => return Err(wrong("ts", "Timestamp")),
                },
                "t" => term = Some(int("t")?),
                "h" => hash = Some(int("h")?),
                _ => {}
            }
        }
        let ts = ts.ok_or(EntryError::Missing {
            at: AtTs(None),
            field: "ts",
        })?;
        Ok(EntryId { ts, term, hash })
    }

    /// The raw document this view borrows from.
    pub fn raw(&self) -> &'a RawDocument {
        self.raw
    }

    /// The entry's identity within its replica set.
    pub fn id(&self) -> EntryId {
        EntryId {
            ts: self.ts,
            term: self.term,
            hash: self.hash,
        }
    }

    /// A 64-bit digest of what the entry does (`op`, `ns`, `o`, `o2`), used to detect two
    /// nodes that report the same identity with different content. Fields a node may
    /// legitimately hold differently are left out.
    pub fn digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.op.as_str().as_bytes());
        h.update(&[0]);
        h.update(self.ns.as_bytes());
        h.update(&[0]);
        if let Some(o) = self.o {
            h.update(o.as_bytes());
        }
        h.update(&[1]);
        if let Some(o2) = self.o2 {
            h.update(o2.as_bytes());
        }
        h.digest()
    }

    /// The database part of `ns` (before the first dot).
    pub fn db(&self) -> &'a str {
        split_ns(self.ns).0
    }

    /// The collection part of `ns` (after the first dot), empty when there is none.
    pub fn coll(&self) -> &'a str {
        split_ns(self.ns).1
    }

    /// The name of the command in a `c` entry: the first key of `o` (`create`, `drop`,
    /// `applyOps`, `commitTransaction`, ...).
    pub fn command_name(&self) -> Option<&'a str> {
        if self.op != OpKind::Command {
            return None;
        }
        let o = self.o?;
        o.iter().next()?.ok().map(|(k, _)| k.as_str())
    }

    /// The `_id` of the document an `i`, `u` or `d` entry touches (`o._id` for inserts and
    /// deletes, `o2._id` for updates).
    pub fn document_id(&self) -> Option<RawBsonRef<'a>> {
        let doc = match self.op {
            OpKind::Insert | OpKind::Delete => self.o?,
            OpKind::Update => self.o2?,
            _ => return None,
        };
        doc.get("_id").ok().flatten()
    }
}

fn parse_optime(d: &RawDocument, at: AtTs) -> Result<OpTime, EntryError> {
    let ts = match d.get("ts") {
        Ok(Some(RawBsonRef::Timestamp(t))) => t.into(),
        _ => {
            return Err(EntryError::WrongType {
                at,
                field: "prevOpTime",
                found: "a document without a Timestamp `ts`".into(),
                expected: "{ts: Timestamp, t: Int64}",
            })
        }
    };
    let term = match d.get("t") {
        Ok(Some(RawBsonRef::Int64(v))) => v,
        Ok(Some(RawBsonRef::Int32(v))) => v.into(),
        _ => -1,
    };
    Ok(OpTime { ts, term })
}

/// Splits `db.coll` at the first dot. Collection names may contain dots; database names
/// may not.
pub fn split_ns(ns: &str) -> (&str, &str) {
    match ns.split_once('.') {
        Some((db, coll)) => (db, coll),
        None => (ns, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, rawdoc, Binary, RawDocumentBuf};

    #[test]
    fn reads_a_44_insert() {
        let uuid = Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: vec![7; 16],
        };
        let raw = rawdoc! {
            "op": "i", "ns": "shop.orders", "ui": uuid,
            "o": { "_id": 5, "sku": "x" },
            "ts": bson::Timestamp { time: 1700000000, increment: 3 }, "t": 4_i64, "v": 2_i64,
            "wall": bson::DateTime::from_millis(1700000000123),
        };
        let e = OplogEntry::parse(&raw).unwrap();
        assert_eq!(e.op, OpKind::Insert);
        assert_eq!(e.ns, "shop.orders");
        assert_eq!((e.db(), e.coll()), ("shop", "orders"));
        assert_eq!(e.id(), EntryId::new(Timestamp::new(1700000000, 3), 4));
        assert_eq!(e.ui, Some(&[7u8; 16][..]));
        assert_eq!(e.document_id(), Some(RawBsonRef::Int32(5)));
        assert!(!e.from_migrate);
        assert_eq!(e.wall.unwrap().timestamp_millis(), 1700000000123);
    }

    #[test]
    fn reads_legacy_entry_with_hash_and_from_migrate() {
        let raw = rawdoc! {
            "ts": bson::Timestamp { time: 1422998892, increment: 1 },
            "h": -3056127588031004421_i64, "v": 2, "op": "d",
            "ns": "test.mycollection", "fromMigrate": true, "o": { "_id": 1.0 },
        };
        let e = OplogEntry::parse(&raw).unwrap();
        assert_eq!(e.term, None);
        assert_eq!(e.hash, Some(-3056127588031004421));
        assert!(e.from_migrate);
        assert_eq!(e.op, OpKind::Delete);
    }

    #[test]
    fn identity_projections_parse_like_whole_entries() {
        let ts = bson::Timestamp {
            time: 1700000000,
            increment: 3,
        };
        let whole = rawdoc! { "op": "i", "ns": "a.b", "o": { "_id": 1 }, "ts": ts, "t": 4_i64 };
        let projected = rawdoc! { "ts": ts, "t": 4_i64 };
        let id = OplogEntry::parse_id(&projected).unwrap();
        assert_eq!(id, OplogEntry::parse(&whole).unwrap().id());
        assert_eq!(OplogEntry::parse_id(&whole).unwrap(), id);
        let legacy = rawdoc! { "ts": ts, "h": -5_i64 };
        assert_eq!(OplogEntry::parse_id(&legacy).unwrap().hash, Some(-5));
        // Not an entry: named errors, no panic.
        let e = OplogEntry::parse_id(&rawdoc! { "t": 1_i64 }).unwrap_err();
        assert!(e.to_string().contains("ts"), "{e}");
        let e = OplogEntry::parse_id(&rawdoc! { "ts": ts, "t": "x" }).unwrap_err();
        assert!(e.to_string().contains('t'), "{e}");
    }

    #[test]
    fn update_target_and_command_name() {
        let raw = rawdoc! {
            "op": "u", "ns": "a.b", "o": { "$v": 2, "diff": { "u": { "x": 1 } } },
            "o2": { "_id": "k" }, "ts": bson::Timestamp { time: 1, increment: 1 }, "t": 1_i64,
        };
        let e = OplogEntry::parse(&raw).unwrap();
        assert_eq!(e.document_id(), Some(RawBsonRef::String("k")));
        let c = rawdoc! { "op": "c", "ns": "a.$cmd", "o": { "drop": "b" }, "ts": bson::Timestamp { time: 1, increment: 2 }, "t": 1_i64 };
        assert_eq!(OplogEntry::parse(&c).unwrap().command_name(), Some("drop"));
    }

    #[test]
    fn prev_op_time_and_txn_fields() {
        let raw = rawdoc! {
            "lsid": { "id": Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] }, "uid": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![2; 32] } },
            "txnNumber": 3_i64,
            "op": "c", "ns": "admin.$cmd", "o": { "applyOps": [], "partialTxn": true },
            "ts": bson::Timestamp { time: 9, increment: 1 }, "t": 2_i64,
            "prevOpTime": { "ts": bson::Timestamp { time: 0, increment: 0 }, "t": -1_i64 },
        };
        let e = OplogEntry::parse(&raw).unwrap();
        assert_eq!(e.txn_number, Some(3));
        assert!(e.lsid.is_some());
        assert!(e.prev_op_time.unwrap().is_null());
        assert_eq!(e.command_name(), Some("applyOps"));
    }

    #[test]
    fn errors_name_the_field_and_ts() {
        let no_ts = rawdoc! { "op": "i", "ns": "a.b" };
        assert_eq!(
            OplogEntry::parse(&no_ts).unwrap_err().to_string(),
            "oplog entry has no `ts` field; is this really local.oplog.rs?"
        );
        let bad_op = rawdoc! { "ts": bson::Timestamp { time: 5, increment: 1 }, "op": "x" };
        assert_eq!(
            OplogEntry::parse(&bad_op).unwrap_err().to_string(),
            "oplog entry at ts 5:1: unknown op code \"x\" (known: i, u, d, c, n)"
        );
        let bad_t =
            rawdoc! { "ts": bson::Timestamp { time: 5, increment: 1 }, "t": "one", "op": "n" };
        let msg = OplogEntry::parse(&bad_t).unwrap_err().to_string();
        assert!(msg.contains("field `t` has type String"), "{msg}");
    }

    #[test]
    fn truncated_bson_is_an_error_not_a_panic() {
        let good = RawDocumentBuf::try_from(&doc! { "ts": bson::Timestamp { time: 5, increment: 1 }, "op": "n", "o": { "msg": "x" } }).unwrap();
        let mut bytes = good.as_bytes().to_vec();
        // Corrupt the length of the nested document.
        let n = bytes.len();
        bytes[n - 8] = 0x7f;
        // Only `o`'s string length is corrupt: the outer document's length and terminator
        // still hold, so the document is accepted as raw BSON.
        let doc = RawDocument::from_bytes(&bytes)
            .unwrap_or_else(|e| panic!("the outer document is intact, yet refused: {e}"));
        // The entry view reads only the fields it needs (no full decode): parsing does not
        // look inside `o`...
        let entry = OplogEntry::parse(doc)
            .unwrap_or_else(|e| panic!("parsing read inside `o` (no longer a view?): {e}"));
        assert_eq!(entry.op, OpKind::Noop);
        // ...so writing the record must find the corrupt string, never emit it as valid.
        let mut out = Vec::new();
        let err = crate::extjson::write_document(doc, crate::extjson::Mode::Relaxed, &mut out)
            .expect_err("a corrupt string length inside `o` was written as a valid record");
        let msg = err.to_string();
        assert!(msg.contains("msg"), "the error names the field: {msg}");
    }

    #[test]
    fn digest_separates_content() {
        let a = rawdoc! { "ts": bson::Timestamp { time: 5, increment: 1 }, "t": 1_i64, "op": "i", "ns": "a.b", "o": { "_id": 1 } };
        let b = rawdoc! { "ts": bson::Timestamp { time: 5, increment: 1 }, "t": 1_i64, "op": "i", "ns": "a.b", "o": { "_id": 2 } };
        let a2 = rawdoc! { "op": "i", "ns": "a.b", "o": { "_id": 1 }, "ts": bson::Timestamp { time: 5, increment: 1 }, "t": 1_i64, "wall": bson::DateTime::from_millis(3) };
        let da = OplogEntry::parse(&a).unwrap().digest();
        assert_ne!(da, OplogEntry::parse(&b).unwrap().digest());
        assert_eq!(da, OplogEntry::parse(&a2).unwrap().digest());
    }
}

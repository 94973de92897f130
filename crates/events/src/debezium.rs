//! One oplog operation as the record Debezium's MongoDB connector writes for it
//! (`[sink] format = "debezium"`), so consumers and sinks built for that connector read
//! quorumtail's records unchanged.
//!
//! # The format, as the current connector (3.x) writes it
//!
//! Looked up in the connector's source (repository `debezium/debezium`, module
//! `debezium-connector-mongodb`, package `io.debezium.connector.mongodb`) and its
//! documentation (`documentation/modules/ROOT/pages/connectors/mongodb.adoc`):
//!
//! * **Key**: `{"id": <the document's _id>}`, the `_id` written as Extended JSON in
//!   *relaxed* mode (`JsonSerialization.getDocumentIdChangeStream`, `SIMPLE_JSON_SETTINGS`):
//!   `1004` for an integer, `"\"1004\""` for a string, `{"$oid": "..."}` for an ObjectId.
//! * **Value**, the envelope (`MongoDbSchema`, `MongoDbCollectionSchema.
//!   valueFromDocumentChangeStream`, `recordemitter/MongoDbChangeRecordEmitter`):
//!   - `op`: `c` for an insert, `u` for an update *and* for a replacement, `d` for a
//!     delete (`OPERATION_LITERALS`); `r` is for snapshot reads, which quorumtail does not
//!     make. Other change-stream events (drop, rename, dropDatabase, index and collection
//!     DDL) have no operation there and produce no record: the connector emits data
//!     change events only.
//!   - `after`: the whole document as a JSON **string**, Extended JSON in the legacy
//!     *strict* mode (`JsonSerialization.COMPACT_JSON_SETTINGS`: `JsonMode.STRICT`, no
//!     line breaks: `{"_id": {"$numberLong": "1004"},"name": "Anne"}`). Set for inserts
//!     and replacements; for updates only when a post-image is available: here `null`,
//!     which quorumtail's full document lookup replaces at [`AFTER_AT`] when enabled
//!     (`[sink] full_document`, [`write_after`]).
//!   - `before`: the pre-image, the same way; quorumtail has none, so always `null`.
//!   - `updateDescription` (updates only): `updatedFields` a JSON string (the changed paths
//!     and values, the driver's default `toJson()`, relaxed mode), `removedFields` a list
//!     of paths, `truncatedArrays` a list of `{field, size}`; each list `null` when empty.
//!   - `patch` and `filter` belonged to the removed oplog capture mode
//!     (`MongoDbFieldName` keeps only the change-stream fields); they are not written.
//!   - `source` (`MongoDbSourceInfoStructMaker`, `AbstractSourceInfoStructMaker`, and the
//!     connector's `SourceInfoTest.schemaIsCorrect`): `version`, `connector` (`"mongodb"`),
//!     `name` (the logical name, the connector's `topic.prefix`), `ts_ms` (the operation's
//!     cluster time, in milliseconds; `ts_us`, `ts_ns` the same in micro- and
//!     nanoseconds), `snapshot` (`"false"`, its enum's default), `db`, `sequence` (`null`),
//!     `collection`, `ord` (the cluster time's increment), `lsid` (the session, a strict
//!     JSON string) and `txnNumber` for an operation of a transaction, else `null`,
//!     `wallTime` (milliseconds). The replica set name `rs` is gone since the connector
//!     reads whole clusters.
//!   - `ts_ms`, `ts_us`, `ts_ns`: when the record was made (the connector's clock).
//!   - `transaction` (with `provide.transaction.metadata`): `{id, total_order,
//!     data_collection_order}`, `id` being `<lsid>:<txnNumber>`
//!     (`MongoDbEventMetadataProvider.getTransactionId`), the orders counting from 1
//!     within the transaction, overall and per collection; `null` outside transactions.
//! * **Deletes** are followed by a tombstone (the key with a null value) when enabled.
//!
//! Every field of the envelope is present, `null` when unset, as Kafka Connect's JSON
//! converter writes a struct. The Connect schema itself (`schemas.enable=true`) is not
//! written: records are the `payload` part (the JSON converter with `schemas.enable=false`).
//!
//! The JSON inside the strings follows the Java driver's writer: `": "` after a name, `,`
//! between elements (`{"a": 1,"b": [1,2]}`) in the compact strict form, `, ` in the
//! default form of `updatedFields`. Strings escape `"`, `\`, control characters, and
//! characters outside the Basic Multilingual Plane as UTF-16 `\uXXXX` pairs, as that writer
//! does; it also escapes some other rare categories (combining marks, format characters),
//! of which only the common ones are escaped here: the JSON parses to the same values.

use std::fmt::Write as _;

use base64::Engine as _;
use bson::{Bson, Document, Timestamp};

use crate::event::EventError;
use crate::update::{decode, UpdateKind};

/// The connector name Debezium writes in `source.connector`.
pub const CONNECTOR: &str = "mongodb";

/// Where an operation sits, and what `source` needs beyond the operation itself.
#[derive(Clone, Debug)]
pub struct DebeziumSource<'a> {
    /// `source.name`: the logical server name.
    pub server_name: &'a str,
    /// `source.version`.
    pub version: &'a str,
    /// The operation's cluster time (for an operation of a transaction, the commit's).
    pub ts: Timestamp,
    /// `wall` of the entry.
    pub wall: Option<bson::DateTime>,
    /// For an operation of a transaction: its session and place.
    pub txn: Option<DebeziumTxn<'a>>,
}

/// An operation's transaction, for `source.lsid`, `source.txnNumber` and `transaction`.
#[derive(Clone, Debug)]
pub struct DebeziumTxn<'a> {
    /// `lsid`, when the transaction had a session (batched writes have none).
    pub lsid: Option<&'a Document>,
    /// `txnNumber`.
    pub txn_number: Option<i64>,
    /// Position of the operation among the transaction's records, from 1.
    pub total_order: u64,
    /// Position among the transaction's records of the same collection, from 1.
    pub data_collection_order: u64,
}

/// A record in Debezium's shape: the Kafka key and value, both JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebeziumRecord {
    /// `{"id":"..."}`.
    pub key: String,
    /// The envelope.
    pub value: String,
    /// `c`, `u`, `d`, or `r` (a snapshot read).
    pub op: &'static str,
}

/// The record of `op` (a top-level oplog entry, or one operation of an `applyOps`), or
/// `None` for operations the connector writes nothing for (commands, no-ops). `now_ns` is
/// the record's creation time in nanoseconds since the epoch (the envelope's `ts_*`).
///
/// # Errors
/// [`EventError`] for a CRUD operation without the fields it needs, or an undecodable
/// update.
pub fn debezium_record(
    op: &Document,
    src: &DebeziumSource<'_>,
    now_ns: i128,
) -> Result<Option<DebeziumRecord>, EventError> {
    let kind = op.get_str("op").unwrap_or("");
    let ns = op.get_str("ns").unwrap_or("");
    let bad = |problem: &str| EventError::Malformed {
        op: kind.to_owned(),
        ns: ns.to_owned(),
        problem: problem.to_owned(),
    };
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let o = || op.get_document("o").map_err(|_| bad("no document in o"));
    let id_of = |d: &Document| d.get("_id").cloned().ok_or_else(|| bad("no _id"));

    let code;
    let id;
    let mut after = None;
    let mut description = None;
    match kind {
        // `r`: a document read by a snapshot (quorumtail's own op code for it), which the
        // connector writes as a read event.
        "i" | "r" => {
            let o = o()?;
            code = if kind == "r" { "r" } else { "c" };
            id = id_of(o)?;
            after = Some(o.clone());
        }
        "u" => {
            let o = o()?;
            let key = op
                .get_document("o2")
                .map_err(|_| bad("an update without o2 (the document key)"))?;
            id = id_of(key)?;
            code = "u";
            match decode(o).map_err(|source| EventError::Update {
                ns: ns.to_owned(),
                source,
            })? {
                UpdateKind::Update(desc) => description = Some(desc),
                UpdateKind::Replace(full) => after = Some(full),
            }
        }
        "d" => {
            code = "d";
            id = id_of(o()?)?;
        }
        _ => return Ok(None),
    }

    let key = debezium_key(&id);

    let mut v = String::with_capacity(256);
    v.push_str(VALUE_PREFIX);
    match &after {
        Some(d) => json_str(&to_strict_json(d), &mut v),
        None => v.push_str("null"),
    }
    v.push_str(",\"updateDescription\":");
    match &description {
        Some(desc) => {
            v.push_str("{\"removedFields\":");
            if desc.removed_fields.is_empty() {
                v.push_str("null");
            } else {
                v.push('[');
                for (i, p) in desc.removed_fields.iter().enumerate() {
                    if i > 0 {
                        v.push(',');
                    }
                    json_str(p, &mut v);
                }
                v.push(']');
            }
            let mut updated = Document::new();
            for (path, value) in &desc.updated_fields {
                updated.insert(path.clone(), value.clone());
            }
            let mut updated_json = String::new();
            write_document(&updated, Style::RelaxedDefault, &mut updated_json);
            v.push_str(",\"updatedFields\":");
            json_str(&updated_json, &mut v);
            v.push_str(",\"truncatedArrays\":");
            if desc.truncated_arrays.is_empty() {
                v.push_str("null");
            } else {
                v.push('[');
                for (i, (field, size)) in desc.truncated_arrays.iter().enumerate() {
                    if i > 0 {
                        v.push(',');
                    }
                    v.push_str("{\"field\":");
                    json_str(field, &mut v);
                    let _ = write!(v, ",\"size\":{size}}}");
                }
                v.push(']');
            }
            v.push('}');
        }
        None => v.push_str("null"),
    }

    // source
    let secs = i64::from(src.ts.time);
    v.push_str(",\"source\":{\"version\":");
    json_str(src.version, &mut v);
    v.push_str(",\"connector\":");
    json_str(CONNECTOR, &mut v);
    v.push_str(",\"name\":");
    json_str(src.server_name, &mut v);
    let _ = write!(v, ",\"ts_ms\":{}", secs * 1_000);
    // `SnapshotRecord`: "true" for every snapshot read but the last ("last"); quorumtail
    // writes "true" throughout (it does not know which document is last until it is read).
    v.push_str(if code == "r" {
        ",\"snapshot\":\"true\",\"db\":"
    } else {
        ",\"snapshot\":\"false\",\"db\":"
    });
    json_str(db, &mut v);
    let _ = write!(
        v,
        ",\"sequence\":null,\"ts_us\":{},\"ts_ns\":{}",
        secs * 1_000_000,
        i128::from(secs) * 1_000_000_000
    );
    v.push_str(",\"collection\":");
    json_str(coll, &mut v);
    let _ = write!(v, ",\"ord\":{}", src.ts.increment);
    let txn = src.txn.as_ref();
    let lsid = txn.and_then(|t| t.lsid).map(to_strict_json);
    let txn_number = txn.and_then(|t| t.txn_number);
    v.push_str(",\"lsid\":");
    match &lsid {
        Some(l) => json_str(l, &mut v),
        None => v.push_str("null"),
    }
    match txn_number {
        Some(n) => {
            let _ = write!(v, ",\"txnNumber\":{n}");
        }
        None => v.push_str(",\"txnNumber\":null"),
    }
    match src.wall {
        Some(w) => {
            let _ = write!(v, ",\"wallTime\":{}}}", w.timestamp_millis());
        }
        None => v.push_str(",\"wallTime\":null}"),
    }

    let _ = write!(
        v,
        ",\"op\":\"{code}\",\"ts_ms\":{},\"ts_us\":{},\"ts_ns\":{}",
        now_ns.div_euclid(1_000_000),
        now_ns.div_euclid(1_000),
        now_ns
    );
    v.push_str(",\"transaction\":");
    let txn_id = match (&lsid, txn_number) {
        (Some(l), Some(n)) => Some(format!("{l}:{n}")),
        (Some(l), None) => Some(l.clone()),
        (None, Some(n)) => Some(n.to_string()),
        (None, None) => None,
    };
    match (txn, txn_id) {
        (Some(t), Some(id)) => {
            v.push_str("{\"id\":");
            json_str(&id, &mut v);
            let _ = write!(
                v,
                ",\"total_order\":{},\"data_collection_order\":{}}}",
                t.total_order, t.data_collection_order
            );
        }
        _ => v.push_str("null"),
    }
    v.push('}');
    Ok(Some(DebeziumRecord {
        key,
        value: v,
        op: code,
    }))
}

/// How every value starts: `before` is always `null`, `after` follows.
const VALUE_PREFIX: &str = "{\"before\":null,\"after\":";

/// Where `after` starts in a record's value. An update's `after` is `null` there (4 bytes),
/// which a looked-up document replaces (`[sink] full_document`, see [`write_after`]).
pub const AFTER_AT: usize = VALUE_PREFIX.len();

/// Debezium's key of the document with `_id` `id`: `{"id": <the _id as relaxed Extended
/// JSON, a string>}`.
pub fn debezium_key(id: &Bson) -> String {
    let mut key = String::with_capacity(32);
    key.push_str("{\"id\":");
    let mut id_json = String::new();
    write_value(id, Style::RelaxedCompact, &mut id_json);
    json_str(&id_json, &mut key);
    key.push('}');
    key
}

/// Appends `doc` as the connector writes `after`: a JSON string holding the document as
/// compact strict Extended JSON.
pub fn write_after(doc: &Document, out: &mut String) {
    json_str(&to_strict_json(doc), out);
}

/// A document as the connector writes `before`/`after` and `lsid`: strict mode, compact.
pub fn to_strict_json(doc: &Document) -> String {
    let mut s = String::with_capacity(64);
    write_document(doc, Style::StrictCompact, &mut s);
    s
}

/// How the Java driver's JSON writer was configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// `JsonMode.STRICT`, indented with empty indent and line break: `{"a": 1,"b": 2}`.
    StrictCompact,
    /// `JsonMode.RELAXED`, the same layout (the key's `_id`).
    RelaxedCompact,
    /// `JsonMode.RELAXED`, not indented: `{"a": 1, "b": 2}` (`BsonDocument.toJson()`).
    RelaxedDefault,
}

impl Style {
    fn strict(self) -> bool {
        self == Style::StrictCompact
    }
    fn sep(self) -> &'static str {
        match self {
            Style::RelaxedDefault => ", ",
            _ => ",",
        }
    }
}

fn write_document(doc: &Document, style: Style, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in doc.iter().enumerate() {
        if i > 0 {
            out.push_str(style.sep());
        }
        java_str(k, out);
        out.push_str(": ");
        write_value(v, style, out);
    }
    out.push('}');
}

/// Writes one value of a wrapper.
type Field<'a> = (&'a str, &'a dyn Fn(&mut String));

/// `{"name": value, ...}` for the wrappers of Extended JSON.
fn wrapper(fields: &[Field<'_>], style: Style, out: &mut String) {
    out.push('{');
    for (i, (k, f)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(style.sep());
        }
        java_str(k, out);
        out.push_str(": ");
        f(out);
    }
    out.push('}');
}

fn write_value(v: &Bson, style: Style, out: &mut String) {
    let s = style;
    match v {
        Bson::Double(f) => java_double(*f, s, out),
        Bson::String(t) => java_str(t, out),
        Bson::Document(d) => write_document(d, s, out),
        Bson::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(s.sep());
                }
                write_value(e, s, out);
            }
            out.push(']');
        }
        Bson::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Bson::Null => out.push_str("null"),
        Bson::Int32(i) => {
            let _ = write!(out, "{i}");
        }
        Bson::Int64(i) => {
            if s.strict() {
                wrapper(
                    &[("$numberLong", &|o: &mut String| java_str(&i.to_string(), o))],
                    s,
                    out,
                );
            } else {
                let _ = write!(out, "{i}");
            }
        }
        Bson::Timestamp(t) => wrapper(
            &[("$timestamp", &|o: &mut String| {
                wrapper(
                    &[
                        ("t", &|o: &mut String| {
                            let _ = write!(o, "{}", t.time);
                        }),
                        ("i", &|o: &mut String| {
                            let _ = write!(o, "{}", t.increment);
                        }),
                    ],
                    s,
                    o,
                )
            })],
            s,
            out,
        ),
        Bson::ObjectId(id) => wrapper(
            &[("$oid", &|o: &mut String| java_str(&id.to_hex(), o))],
            s,
            out,
        ),
        Bson::DateTime(d) => java_date(d.timestamp_millis(), s, out),
        Bson::Binary(b) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&b.bytes);
            let sub = format!("{:02X}", u8::from(b.subtype));
            if s.strict() {
                wrapper(
                    &[
                        ("$binary", &|o: &mut String| java_str(&b64, o)),
                        ("$type", &|o: &mut String| java_str(&sub, o)),
                    ],
                    s,
                    out,
                );
            } else {
                wrapper(
                    &[("$binary", &|o: &mut String| {
                        wrapper(
                            &[
                                ("base64", &|o: &mut String| java_str(&b64, o)),
                                ("subType", &|o: &mut String| java_str(&sub, o)),
                            ],
                            s,
                            o,
                        )
                    })],
                    s,
                    out,
                );
            }
        }
        Bson::RegularExpression(r) => {
            if s.strict() {
                wrapper(
                    &[
                        ("$regex", &|o: &mut String| java_str(r.pattern.as_str(), o)),
                        ("$options", &|o: &mut String| {
                            java_str(r.options.as_str(), o)
                        }),
                    ],
                    s,
                    out,
                );
            } else {
                wrapper(
                    &[("$regularExpression", &|o: &mut String| {
                        wrapper(
                            &[
                                ("pattern", &|o: &mut String| java_str(r.pattern.as_str(), o)),
                                ("options", &|o: &mut String| java_str(r.options.as_str(), o)),
                            ],
                            s,
                            o,
                        )
                    })],
                    s,
                    out,
                );
            }
        }
        Bson::JavaScriptCode(c) => {
            wrapper(&[("$code", &|o: &mut String| java_str(c, o))], s, out);
        }
        Bson::JavaScriptCodeWithScope(c) => wrapper(
            &[
                ("$code", &|o: &mut String| java_str(&c.code, o)),
                ("$scope", &|o: &mut String| write_document(&c.scope, s, o)),
            ],
            s,
            out,
        ),
        Bson::Symbol(t) => wrapper(&[("$symbol", &|o: &mut String| java_str(t, o))], s, out),
        Bson::Decimal128(d) => wrapper(
            &[("$numberDecimal", &|o: &mut String| {
                java_str(&d.to_string(), o)
            })],
            s,
            out,
        ),
        Bson::Undefined => wrapper(
            &[("$undefined", &|o: &mut String| o.push_str("true"))],
            s,
            out,
        ),
        Bson::MinKey => wrapper(&[("$minKey", &|o: &mut String| o.push('1'))], s, out),
        Bson::MaxKey => wrapper(&[("$maxKey", &|o: &mut String| o.push('1'))], s, out),
        Bson::DbPointer(p) => {
            // The bson crate keeps a DBPointer opaque; its Extended JSON form carries the
            // namespace and id.
            let ext = Bson::DbPointer(p.clone()).into_canonical_extjson();
            let inner = ext.get("$dbPointer").cloned().unwrap_or_default();
            let get = |k: &str| inner.get(k).cloned();
            let ns = get("$ref").and_then(|v| v.as_str().map(str::to_owned));
            let oid =
                get("$id").and_then(|v| v.get("$oid").and_then(|o| o.as_str().map(str::to_owned)));
            let body = |o: &mut String| {
                wrapper(
                    &[
                        ("$ref", &|o: &mut String| {
                            java_str(ns.as_deref().unwrap_or(""), o)
                        }),
                        ("$id", &|o: &mut String| {
                            wrapper(
                                &[("$oid", &|o: &mut String| {
                                    java_str(oid.as_deref().unwrap_or(""), o)
                                })],
                                s,
                                o,
                            )
                        }),
                    ],
                    s,
                    o,
                )
            };
            if s.strict() {
                body(out);
            } else {
                wrapper(&[("$dbPointer", &body)], s, out);
            }
        }
    }
}

/// Java's `Double.toString`: plain for 1e-3 <= |d| < 1e7, else `d.dddE±n`; strict mode
/// writes non-finite values as the bare tokens `NaN`/`Infinity`, relaxed mode wraps them.
fn java_double(f: f64, style: Style, out: &mut String) {
    if !f.is_finite() {
        let t = if f.is_nan() {
            "NaN"
        } else if f < 0.0 {
            "-Infinity"
        } else {
            "Infinity"
        };
        if style.strict() {
            out.push_str(t);
        } else {
            wrapper(
                &[("$numberDouble", &|o: &mut String| java_str(t, o))],
                style,
                out,
            );
        }
        return;
    }
    let a = f.abs();
    if a == 0.0 || (1e-3..1e7).contains(&a) {
        let t = format!("{f}");
        out.push_str(&t);
        if !t.contains('.') {
            out.push_str(".0");
        }
    } else {
        let t = format!("{f:e}");
        let (mantissa, exp) = t.split_once('e').unwrap_or((&t, "0"));
        out.push_str(mantissa);
        if !mantissa.contains('.') {
            out.push_str(".0");
        }
        out.push('E');
        out.push_str(exp);
    }
}

/// Strict: `{"$date": millis}`; relaxed: ISO-8601 for years 1970..=9999, else
/// `{"$date": {"$numberLong": "..."}}`.
fn java_date(millis: i64, style: Style, out: &mut String) {
    const MAX_ISO: i64 = 253_402_300_799_999;
    if style.strict() {
        wrapper(
            &[("$date", &|o: &mut String| {
                let _ = write!(o, "{millis}");
            })],
            style,
            out,
        );
    } else if (0..=MAX_ISO).contains(&millis) {
        let iso = bson::DateTime::from_millis(millis)
            .try_to_rfc3339_string()
            .unwrap_or_default();
        // The driver writes the fraction with as few digits as needed, none when zero
        // (`ISO_OFFSET_DATE_TIME`): "2015-02-03T21:16:14Z", "2015-02-03T21:16:14.12Z".
        let iso = match iso.split_once('.') {
            Some((whole, frac)) => {
                let digits = frac.trim_end_matches('Z').trim_end_matches('0');
                if digits.is_empty() {
                    format!("{whole}Z")
                } else {
                    format!("{whole}.{digits}Z")
                }
            }
            None => iso,
        };
        wrapper(
            &[("$date", &|o: &mut String| java_str(&iso, o))],
            style,
            out,
        );
    } else {
        wrapper(
            &[("$date", &|o: &mut String| {
                wrapper(
                    &[("$numberLong", &|o: &mut String| {
                        java_str(&millis.to_string(), o)
                    })],
                    style,
                    o,
                )
            })],
            style,
            out,
        );
    }
}

/// A string as the Java driver's JSON writer escapes it.
fn java_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if java_escapes(c) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Characters the Java writer escapes (it writes letters, digits, punctuation, symbols
/// and spaces as they are): control and format characters, line and paragraph
/// separators, private use, combining diacritical marks, and everything outside the Basic
/// Multilingual Plane (surrogate pairs in Java).
fn java_escapes(c: char) -> bool {
    let u = u32::from(c);
    c.is_control()
        || u > 0xFFFF
        || matches!(u, 0x00AD | 0x0300..=0x036F | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x2064 | 0xE000..=0xF8FF | 0xFEFF)
}

/// A JSON string literal as Kafka Connect's JSON converter writes it (compact).
fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;

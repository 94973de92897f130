//! Reading an `applyOps` entry: its fields, the inner operations (flattened, nested
//! `applyOps` included, up to a depth limit) and how a session is named in reports.

use bson::{RawArray, RawBsonRef, RawDocument, RawDocumentBuf};

use super::{TxnError, TxnName, TxnOp, MAX_NESTING};
use crate::entry::OpKind;
use crate::position::Timestamp;

/// One parsed inner operation, before it gets its index.
pub(super) struct Parsed {
    pub(super) op: OpKind,
    pub(super) ns: String,
    pub(super) from_migrate: bool,
    pub(super) doc: RawDocumentBuf,
}

impl Parsed {
    pub(super) fn cost(&self) -> usize {
        self.doc.as_bytes().len() + self.ns.len() + std::mem::size_of::<TxnOp>()
    }
}

/// The fields of an `applyOps` entry's `o`.
pub(super) struct ApplyOpsFields<'a> {
    pub(super) ops: &'a RawArray,
    pub(super) partial: bool,
    pub(super) prepare: bool,
    pub(super) count: Option<i64>,
}

pub(super) fn name_of(
    lsid: Option<&RawDocument>,
    txn_number: Option<i64>,
    first: Option<Timestamp>,
) -> TxnName {
    match (lsid, txn_number) {
        (Some(lsid), Some(txn_number)) => TxnName::Session {
            lsid: describe_lsid(lsid),
            txn_number,
        },
        _ => TxnName::Chain { first },
    }
}

fn uuid_of(v: Option<RawBsonRef<'_>>) -> Option<String> {
    match v {
        Some(RawBsonRef::Binary(b)) if b.bytes.len() == 16 => {
            let h: String = b.bytes.iter().map(|x| format!("{x:02x}")).collect();
            Some(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
        _ => None,
    }
}

/// `lsid.id` as a UUID, with `txnUUID` for internal transactions.
fn describe_lsid(lsid: &RawDocument) -> String {
    let id = uuid_of(lsid.get("id").ok().flatten()).unwrap_or_else(|| "<no UUID id>".into());
    match uuid_of(lsid.get("txnUUID").ok().flatten()) {
        Some(t) => format!("{id} (txnUUID {t})"),
        None => id,
    }
}

fn type_name(v: &RawBsonRef<'_>) -> String {
    format!("{:?}", v.element_type())
}

pub(super) fn read_apply_ops(
    o: &RawDocument,
    at: Timestamp,
) -> Result<ApplyOpsFields<'_>, TxnError> {
    let mut ops = None;
    let mut partial = false;
    let mut prepare = false;
    let mut count = None;
    for item in o.iter() {
        let (key, value) = item.map_err(|_| TxnError::BadApplyOps {
            at,
            problem: "`o` is not valid BSON",
        })?;
        match key.as_str() {
            "applyOps" => match value {
                RawBsonRef::Array(a) => ops = Some(a),
                other => {
                    return Err(TxnError::NotAnArray {
                        at,
                        found: type_name(&other),
                    })
                }
            },
            // The server reads both flags with `booleanSafe`: anything but `true` is false.
            "partialTxn" => partial = matches!(value, RawBsonRef::Boolean(true)),
            "prepare" => prepare = matches!(value, RawBsonRef::Boolean(true)),
            "count" => {
                count = Some(match value {
                    RawBsonRef::Int64(v) => v,
                    RawBsonRef::Int32(v) => v.into(),
                    _ => {
                        return Err(TxnError::BadApplyOps {
                            at,
                            problem: "`count` is not an integer",
                        })
                    }
                })
            }
            _ => {}
        }
    }
    let ops = ops.ok_or(TxnError::NotAnArray {
        at,
        found: "missing".into(),
    })?;
    Ok(ApplyOpsFields {
        ops,
        partial,
        prepare,
        count,
    })
}

pub(super) fn multi_op_type(raw: &RawDocument) -> Option<i64> {
    match raw.get("multiOpType") {
        Ok(Some(RawBsonRef::Int32(v))) => Some(v.into()),
        Ok(Some(RawBsonRef::Int64(v))) => Some(v),
        _ => None,
    }
}

/// Appends the operations of `arr` to `out`, flattening nested `applyOps`; returns how
/// many elements `arr` itself has.
pub(super) fn flatten(
    arr: &RawArray,
    outer_from_migrate: bool,
    depth: usize,
    at: Timestamp,
    out: &mut Vec<Parsed>,
) -> Result<u64, TxnError> {
    let mut n = 0;
    for item in arr {
        let index = out.len();
        let bad = |problem: String| TxnError::BadInnerOp { at, index, problem };
        let value = item.map_err(|err| bad(format!("invalid BSON: {err}")))?;
        let RawBsonRef::Document(d) = value else {
            return Err(bad(format!("is {}, not a document", type_name(&value))));
        };
        n += 1;
        let mut op = None;
        let mut ns = None;
        let mut from_migrate = false;
        let mut o = None;
        for field in d.iter() {
            let (key, value) = field.map_err(|err| bad(format!("invalid BSON: {err}")))?;
            match (key.as_str(), value) {
                ("op", RawBsonRef::String(code)) => {
                    op = Some(
                        OpKind::from_code(code)
                            .ok_or_else(|| bad(format!("unknown op code {code:?}")))?,
                    )
                }
                ("op", v) => return Err(bad(format!("`op` is {}, not a string", type_name(&v)))),
                ("ns", RawBsonRef::String(s)) => ns = Some(s),
                ("ns", v) => return Err(bad(format!("`ns` is {}, not a string", type_name(&v)))),
                ("fromMigrate", RawBsonRef::Boolean(b)) => from_migrate = b,
                ("o", RawBsonRef::Document(doc)) => o = Some(doc),
                _ => {}
            }
        }
        let op = op.ok_or_else(|| bad("has no `op`".into()))?;
        let ns = match (ns, op) {
            (Some(ns), _) => ns,
            // Servers skip no-ops before reading `ns`, so old entries may lack it.
            (None, OpKind::Noop) => "",
            (None, _) => return Err(bad("has no `ns`".into())),
        };
        let from_migrate = outer_from_migrate || from_migrate;
        let nested = match o.and_then(|o| o.iter().next()) {
            Some(Ok((k, v))) if op == OpKind::Command && k.as_str() == "applyOps" => Some(v),
            _ => None,
        };
        if let Some(nested) = nested {
            let RawBsonRef::Array(inner) = nested else {
                return Err(TxnError::NotAnArray {
                    at,
                    found: type_name(&nested),
                });
            };
            if depth + 1 >= MAX_NESTING {
                return Err(TxnError::NestedTooDeep {
                    at,
                    max: MAX_NESTING,
                });
            }
            flatten(inner, from_migrate, depth + 1, at, out)?;
            continue;
        }
        out.push(Parsed {
            op,
            ns: ns.to_owned(),
            from_migrate,
            doc: d.to_owned(),
        });
    }
    Ok(n)
}

//! Oplog entries: their identity, their shape per server version, and the capped oplog.
//!
//! Shapes looked up in mongodb/mongo `src/mongo/db/repl/oplog_entry.idl` (field order of
//! `DurableReplOperation` then `OpTimeBase` then `v`, `wall`: op, ns, ui, o, o2, fromMigrate,
//! ts, t, v, wall), `src/mongo/db/update/document_diff_serialization.h` (`$v: 2` diffs with
//! `d`, `u`, `i` sections) and the mlaunch transcript of `mlaunch-fixtures/sharded-migration` for the 2.6 shape
//! (ts, h, v, op, ns, fromMigrate, o).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bson::{doc, Bson, DateTime, Document, Timestamp};

use crate::version::ServerVersion;

/// The identity of an oplog entry within one replica set: `(ts, t)` on 4.4+, `(ts, h)` for
/// legacy entries. The same `ts` can reappear with another `t` after a rollback, so `ts`
/// alone is not an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId {
    /// The entry's timestamp.
    pub ts: Timestamp,
    /// The election term (`None` for legacy entries).
    pub t: Option<i64>,
    /// The legacy random hash (`None` on 4.4+).
    pub h: Option<i64>,
}

/// One oplog entry as stored by a node. Replicated copies share the same `Arc`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Identity of the entry.
    pub id: EntryId,
    /// The entry document, field order and types exactly as a client will read them.
    pub doc: Document,
    /// Serialized size, for the byte bound of the capped oplog.
    pub size: usize,
    /// When the entry was written on the primary (drives replication lag).
    pub written_at: Instant,
}

impl Entry {
    /// Wraps a document, reading `ts`, `t` and `h` from it.
    ///
    /// # Errors
    /// When the document has no Timestamp `ts`.
    pub fn from_doc(doc: Document, written_at: Instant) -> Result<Entry, String> {
        let ts = match doc.get("ts") {
            Some(Bson::Timestamp(ts)) => *ts,
            other => return Err(format!("oplog entry without a Timestamp ts: {other:?}")),
        };
        let as_i64 = |b: Option<&Bson>| match b {
            Some(Bson::Int64(v)) => Some(*v),
            Some(Bson::Int32(v)) => Some(i64::from(*v)),
            _ => None,
        };
        let id = EntryId {
            ts,
            t: as_i64(doc.get("t")),
            h: as_i64(doc.get("h")),
        };
        let size = doc.to_vec().map(|v| v.len()).unwrap_or(0);
        Ok(Entry {
            id,
            doc,
            size,
            written_at,
        })
    }

    /// Raw BSON bytes of the entry.
    pub fn to_raw(&self) -> bson::RawDocumentBuf {
        bson::RawDocumentBuf::try_from(&self.doc).unwrap_or_default()
    }
}

/// Compares timestamps as mongod does (seconds, then increment).
pub fn ts_key(ts: Timestamp) -> (u32, u32) {
    (ts.time, ts.increment)
}

/// What an entry records, before `ts`/`t`/`h`/`wall` are attached.
#[derive(Debug, Clone)]
pub struct OpSpec {
    /// `i`, `u`, `d`, `c` or `n`.
    pub op: &'static str,
    /// Namespace, `""` for no-ops.
    pub ns: String,
    /// Collection UUID (absent for no-ops and legacy entries).
    pub ui: Option<bson::Uuid>,
    /// The `o` field.
    pub o: Document,
    /// The `o2` field.
    pub o2: Option<Document>,
    /// `fromMigrate: true` for chunk migration traffic.
    pub from_migrate: bool,
}

impl OpSpec {
    /// A no-op with `o: {msg}`.
    pub fn noop(msg: &str) -> OpSpec {
        OpSpec {
            op: "n",
            ns: String::new(),
            ui: None,
            o: doc! {"msg": msg},
            o2: None,
            from_migrate: false,
        }
    }
}

/// Session fields of a retryable write (`OperationSessionInfo` in oplog_entry.idl):
/// `lsid` and `txnNumber` lead the entry, `stmtId` follows `o2`, `prevOpTime` follows `wall`.
#[derive(Debug, Clone)]
pub struct SessionFields {
    /// `{id: UUID, uid: BinData}` as the server stores it.
    pub lsid: Document,
    /// The client's transaction number.
    pub txn_number: i64,
    /// Statement index within the command.
    pub stmt_id: i32,
    /// Statement indexes of an entry that logs several statements (a time-series bucket
    /// write): `stmtId` is then an array (`stdx::variant<StmtId, std::vector<StmtId>>`).
    pub stmt_ids: Vec<i32>,
    /// OpTime of the previous entry of this write on this set, `(Timestamp(0,0), -1)` first.
    pub prev_op_time: (Timestamp, i64),
    /// A retryable findAndModify up to 5.0: `preImageOpTime` or `postImageOpTime` and the
    /// optime of the no-op entry holding the image.
    pub image_op_time: Option<(&'static str, Timestamp, i64)>,
    /// A retryable findAndModify from 5.1: `needsRetryImage: "preImage" | "postImage"`.
    pub needs_retry_image: Option<&'static str>,
}

/// Builds the entry document for `version`.
pub fn build_entry_doc(
    version: ServerVersion,
    spec: &OpSpec,
    ts: Timestamp,
    term: i64,
    wall: DateTime,
) -> Document {
    build_entry_doc_with_session(version, spec, ts, term, wall, None)
}

/// Builds the entry document, with retryable-write session fields when given (4.4+ only).
pub fn build_entry_doc_with_session(
    version: ServerVersion,
    spec: &OpSpec,
    ts: Timestamp,
    term: i64,
    wall: DateTime,
    session: Option<&SessionFields>,
) -> Document {
    let mut d = Document::new();
    if version.has_terms() {
        if let Some(sess) = session {
            d.insert("lsid", sess.lsid.clone());
            d.insert("txnNumber", sess.txn_number);
        }
        d.insert("op", spec.op);
        d.insert("ns", spec.ns.clone());
        if let Some(ui) = spec.ui {
            d.insert("ui", ui);
        }
        d.insert("o", spec.o.clone());
        if let Some(o2) = &spec.o2 {
            d.insert("o2", o2.clone());
        }
        // DurableReplOperation order (oplog_entry.idl): ..., o2, b, preImageOpTime,
        // postImageOpTime, needsRetryImage, destinedRecipient, stmtId, fromMigrate.
        if let Some((field, ts, t)) = session.and_then(|s| s.image_op_time) {
            d.insert(field, doc! {"ts": ts, "t": t});
        }
        if let Some(kind) = session.and_then(|s| s.needs_retry_image) {
            d.insert("needsRetryImage", kind);
        }
        if let Some(sess) = session.filter(|s| s.stmt_ids.len() > 1) {
            d.insert("stmtId", sess.stmt_ids.clone());
        } else if let Some(sess) = session.filter(|s| s.stmt_id >= 0) {
            d.insert("stmtId", sess.stmt_id);
        }
        if spec.from_migrate {
            d.insert("fromMigrate", true);
        }
        d.insert("ts", ts);
        d.insert("t", term);
        d.insert("v", 2i64);
        d.insert("wall", wall);
        if let Some(sess) = session {
            let (pts, pt) = sess.prev_op_time;
            d.insert("prevOpTime", doc! {"ts": pts, "t": pt});
        }
    } else {
        d.insert("ts", ts);
        let h: i64 = if spec.op == "n" && spec.o.get_str("msg").ok() == Some("initiating set") {
            0
        } else {
            rand::random()
        };
        d.insert("h", h);
        d.insert("v", 2i32);
        d.insert("op", spec.op);
        d.insert("ns", spec.ns.clone());
        if spec.from_migrate {
            d.insert("fromMigrate", true);
        }
        if let Some(o2) = &spec.o2 {
            d.insert("o2", o2.clone());
        }
        d.insert("o", spec.o.clone());
    }
    d
}

/// An operation inside a transaction's `applyOps` array: `{op, ns, ui, o, o2}`, no
/// timestamps.
pub fn inner_op_doc(spec: &OpSpec) -> Document {
    let mut d = doc! {"op": spec.op, "ns": spec.ns.clone()};
    if let Some(ui) = spec.ui {
        d.insert("ui", ui);
    }
    d.insert("o", spec.o.clone());
    if let Some(o2) = &spec.o2 {
        d.insert("o2", o2.clone());
    }
    d
}

/// Applies an update entry's `o` (any of the three shapes, or a replacement) to `doc`.
pub fn apply_update_o(doc: &mut Document, o: &Document) {
    let is_modifier = o.keys().any(|k| k.starts_with('$')) || o.contains_key("diff");
    if !is_modifier {
        let id = doc.get("_id").cloned();
        *doc = o.clone();
        if let (Some(id), false) = (id, doc.contains_key("_id")) {
            let mut with_id = doc! {"_id": id};
            with_id.extend(std::mem::take(doc));
            *doc = with_id;
        }
        return;
    }
    if let Ok(diff) = o.get_document("diff") {
        apply_diff(doc, diff);
        return;
    }
    if let Ok(set) = o.get_document("$set") {
        for (k, v) in set {
            set_path(doc, k, v.clone());
        }
    }
    if let Ok(unset) = o.get_document("$unset") {
        for (k, _) in unset {
            unset_path(doc, k);
        }
    }
}

fn apply_diff(doc: &mut Document, diff: &Document) {
    for (section, body) in diff {
        let Bson::Document(body) = body else { continue };
        match section.as_str() {
            "d" => {
                for (k, _) in body {
                    doc.remove(k);
                }
            }
            "u" | "i" => {
                for (k, v) in body {
                    doc.insert(k.clone(), v.clone());
                }
            }
            s if s.starts_with('s') => {
                if let Some(target) = doc.get_mut(&s[1..]) {
                    apply_sub_diff(target, body);
                }
            }
            _ => {}
        }
    }
}

/// A sub-diff: an array diff (`a: true`: `l` new length, `u<i>` element set, padding
/// with nulls, `s<i>` element changed below; `document_diff_applier.cpp`) or a document
/// diff.
fn apply_sub_diff(target: &mut Bson, diff: &Document) {
    match target {
        Bson::Array(a) if matches!(diff.get("a"), Some(Bson::Boolean(true))) => {
            if let Some(l) = diff
                .get("l")
                .and_then(|l| l.as_i32().map(i64::from).or(l.as_i64()))
            {
                a.resize(usize::try_from(l).unwrap_or(0), Bson::Null);
            }
            for (k, v) in diff {
                let Some(i) = k.get(1..).and_then(|n| n.parse::<usize>().ok()) else {
                    continue;
                };
                if k.starts_with('u') {
                    if i >= a.len() {
                        a.resize(i + 1, Bson::Null);
                    }
                    a[i] = v.clone();
                } else if let (true, Some(elem), Bson::Document(sub)) =
                    (k.starts_with('s'), a.get_mut(i), v)
                {
                    apply_sub_diff(elem, sub);
                }
            }
        }
        Bson::Document(d) => apply_diff(d, diff),
        _ => {}
    }
}

/// Sets a (possibly dotted) path, creating sub-documents as needed; a numeric component
/// below an array is an index (the array padded with nulls up to it).
pub fn set_path(doc: &mut Document, path: &str, value: Bson) {
    match path.split_once('.') {
        None => {
            doc.insert(path, value);
        }
        Some((head, rest)) => {
            if !matches!(doc.get(head), Some(Bson::Document(_) | Bson::Array(_))) {
                doc.insert(head, Document::new());
            }
            if let Some(target) = doc.get_mut(head) {
                set_in(target, rest, value);
            }
        }
    }
}

fn set_in(target: &mut Bson, path: &str, value: Bson) {
    match target {
        Bson::Document(sub) => set_path(sub, path, value),
        Bson::Array(a) => {
            let (head, rest) = match path.split_once('.') {
                Some((h, r)) => (h, Some(r)),
                None => (path, None),
            };
            let Ok(i) = head.parse::<usize>() else { return };
            if i >= a.len() {
                a.resize(i + 1, Bson::Null);
            }
            match rest {
                None => a[i] = value,
                Some(rest) => {
                    if !matches!(a[i], Bson::Document(_) | Bson::Array(_)) {
                        a[i] = Bson::Document(Document::new());
                    }
                    set_in(&mut a[i], rest, value);
                }
            }
        }
        _ => {}
    }
}

/// Removes a (possibly dotted) path.
pub fn unset_path(doc: &mut Document, path: &str) {
    match path.split_once('.') {
        None => {
            doc.remove(path);
        }
        Some((head, rest)) => {
            if let Some(Bson::Document(sub)) = doc.get_mut(head) {
                unset_path(sub, rest);
            }
        }
    }
}

/// A node's capped oplog: oldest entry first.
#[derive(Debug, Clone, Default)]
pub struct Oplog {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    /// Keep at most this many entries.
    pub max_entries: Option<usize>,
    /// Keep at most this many bytes (at least one entry is always kept).
    pub max_bytes: Option<usize>,
}

impl Oplog {
    /// An empty oplog with the given bounds.
    pub fn new(max_entries: Option<usize>, max_bytes: Option<usize>) -> Oplog {
        Oplog {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the oplog holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Oldest entry.
    pub fn first(&self) -> Option<&Arc<Entry>> {
        self.entries.front()
    }

    /// Newest entry.
    pub fn last(&self) -> Option<&Arc<Entry>> {
        self.entries.back()
    }

    /// All entries, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<Entry>> + ExactSizeIterator {
        self.entries.iter()
    }

    /// Appends and enforces the cap; returns the entries that fell off.
    pub fn push(&mut self, entry: Arc<Entry>) -> Vec<Arc<Entry>> {
        self.bytes += entry.size;
        self.entries.push_back(entry);
        let mut dropped = Vec::new();
        loop {
            let over_count = self
                .max_entries
                .is_some_and(|m| self.entries.len() > m.max(1));
            let over_bytes =
                self.max_bytes.is_some_and(|m| self.bytes > m) && self.entries.len() > 1;
            if !(over_count || over_bytes) {
                break;
            }
            if let Some(e) = self.pop_front() {
                dropped.push(e);
            }
        }
        dropped
    }

    /// Drops the oldest entry.
    pub fn pop_front(&mut self) -> Option<Arc<Entry>> {
        let e = self.entries.pop_front()?;
        self.bytes = self.bytes.saturating_sub(e.size);
        Some(e)
    }

    /// Index of the first entry with `ts` strictly greater than `ts`.
    pub fn index_after(&self, ts: Timestamp) -> usize {
        self.entries
            .partition_point(|e| ts_key(e.id.ts) <= ts_key(ts))
    }

    /// Index of the first entry with `ts >= ts`.
    pub fn index_at_or_after(&self, ts: Timestamp) -> usize {
        self.entries
            .partition_point(|e| ts_key(e.id.ts) < ts_key(ts))
    }

    /// Entry at `index`.
    pub fn get(&self, index: usize) -> Option<&Arc<Entry>> {
        self.entries.get(index)
    }

    /// Position of the entry with exactly this identity.
    pub fn position_of(&self, id: &EntryId) -> Option<usize> {
        let i = self.index_at_or_after(id.ts);
        match self.entries.get(i) {
            Some(e) if e.id == *id => Some(i),
            _ => None,
        }
    }

    /// Whether an entry with this identity is held.
    pub fn contains(&self, id: &EntryId) -> bool {
        self.position_of(id).is_some()
    }

    /// Removes every entry after `index` (exclusive) and returns them, oldest first.
    pub fn truncate_after(&mut self, keep: usize) -> Vec<Arc<Entry>> {
        let removed: Vec<_> = self.entries.drain(keep.min(self.entries.len())..).collect();
        for e in &removed {
            self.bytes = self.bytes.saturating_sub(e.size);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: u32, i: u32) -> Arc<Entry> {
        let d = build_entry_doc(
            ServerVersion::V7_0,
            &OpSpec::noop("periodic noop"),
            Timestamp {
                time: t,
                increment: i,
            },
            1,
            DateTime::now(),
        );
        Arc::new(Entry::from_doc(d, Instant::now()).unwrap())
    }

    #[test]
    fn modern_entry_field_order() {
        let e = entry(5, 1);
        let keys: Vec<_> = e.doc.keys().cloned().collect();
        assert_eq!(keys, ["op", "ns", "o", "ts", "t", "v", "wall"]);
        assert_eq!(e.doc.get("v"), Some(&Bson::Int64(2)));
        assert_eq!(e.id.t, Some(1));
    }

    #[test]
    fn legacy_entry_shape() {
        let spec = OpSpec {
            op: "d",
            ns: "test.c".into(),
            ui: None,
            o: doc! {"_id": 1},
            o2: None,
            from_migrate: true,
        };
        let d = build_entry_doc(
            ServerVersion::Legacy,
            &spec,
            Timestamp {
                time: 1,
                increment: 1,
            },
            1,
            DateTime::now(),
        );
        let keys: Vec<_> = d.keys().cloned().collect();
        assert_eq!(keys, ["ts", "h", "v", "op", "ns", "fromMigrate", "o"]);
        assert_eq!(d.get("v"), Some(&Bson::Int32(2)));
    }

    #[test]
    fn capped_drops_oldest() {
        let mut log = Oplog::new(Some(2), None);
        assert!(log.push(entry(1, 1)).is_empty());
        assert!(log.push(entry(1, 2)).is_empty());
        let dropped = log.push(entry(2, 1));
        assert_eq!(dropped.len(), 1);
        assert_eq!(log.first().unwrap().id.ts.time, 1);
        assert_eq!(log.first().unwrap().id.ts.increment, 2);
        assert_eq!(
            log.index_after(Timestamp {
                time: 1,
                increment: 2
            }),
            1
        );
    }

    #[test]
    fn diff_and_v1_updates_round_trip() {
        let before = doc! {"_id": 1, "a": 1, "b": 2};
        let after = doc! {"_id": 1, "a": 5, "c": 3};
        let update = doc! {"$set": {"a": 5, "c": 3}, "$unset": {"b": ""}};
        let update_entry_o = |v, before: &Document, after: &Document| {
            let (applied, log) = crate::world::apply_update(before, &update, v).unwrap();
            assert_eq!(&applied, after);
            crate::update_log::operator_update_o(v, &log)
        };
        for v in [
            ServerVersion::Legacy,
            ServerVersion::V4_4,
            ServerVersion::V7_0,
        ] {
            let o = update_entry_o(v, &before, &after);
            let mut d = before.clone();
            apply_update_o(&mut d, &o);
            assert_eq!(d.get("a"), Some(&Bson::Int32(5)), "{v}: {o}");
            assert_eq!(d.get("c"), Some(&Bson::Int32(3)));
            assert!(!d.contains_key("b"));
        }
        let o = update_entry_o(ServerVersion::V5_0, &before, &after);
        assert_eq!(
            o,
            doc! {"$v": 2, "diff": {"d": {"b": false}, "u": {"a": 5}, "i": {"c": 3}}}
        );
        let o = update_entry_o(ServerVersion::V4_4, &before, &after);
        assert_eq!(
            o,
            doc! {"$v": 1, "$set": {"a": 5, "c": 3}, "$unset": {"b": true}}
        );
    }
}

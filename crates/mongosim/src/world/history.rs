//! Point-in-time reads: each node keeps, beside its current data, an undo record of every
//! change it applied (the document's or collection's previous version, stamped with the
//! timestamp the change became visible at). The data as of `T` is the current data with
//! every change after `T` undone, newest first.
//!
//! What mongod does, looked up in the server source (repository `mongodb/mongo`):
//!
//! * WiredTiger keeps history back to its *oldest timestamp*, which trails the stable
//!   (majority committed) timestamp by `minSnapshotHistoryWindowInSeconds` (default 300;
//!   `src/mongo/db/storage/snapshot_window_options.idl`, settable with `setParameter`). A
//!   read at an older time fails with `SnapshotTooOld` (239): "Read timestamp … is older
//!   than the oldest available timestamp." (`wiredtiger_recovery_unit.cpp`).
//! * `readConcern: {level: "snapshot", atClusterTime: T}` with `T` later than the node's
//!   cluster time fails with `InvalidOptions` (72): "readConcern atClusterTime value must
//!   not be greater than the current clusterTime" (`read_concern_mongod.cpp`); otherwise
//!   the read waits until the majority committed snapshot reaches `T`. Without
//!   `atClusterTime`, a snapshot read is at the majority commit point and the cursor reply
//!   names the time it chose (`cursor.atClusterTime`), which drivers' snapshot sessions
//!   reuse for every later read.
//! * `readConcern: {level: "majority"}` reads the majority committed snapshot.
//!
//! A transaction's writes become visible at its commit (`commitTimestamp` for a prepared
//! transaction): that is the stamp of their undo records.

use std::collections::{BTreeMap, VecDeque};

use bson::{Bson, Document, Timestamp};

use super::data::{apply_entry, id_key, Collection};
use crate::oplog::ts_key;

/// The previous version of what one applied change touched.
#[derive(Debug, Clone)]
pub struct UndoRec {
    /// When the change became visible.
    pub at: Timestamp,
    /// The namespace changed.
    pub ns: String,
    /// What was there before.
    pub prev: Prev,
}

/// A previous version.
#[derive(Debug, Clone)]
pub enum Prev {
    /// The document with this `_id` (`None`: it did not exist).
    Doc(Bson, Option<Document>),
    /// The whole collection (create / drop; `None`: it did not exist).
    Coll(Option<Collection>),
}

/// Applies one oplog entry (or inner operation) visible at `at`, recording undo records.
pub fn apply_recorded(
    data: &mut BTreeMap<String, Collection>,
    undo: &mut VecDeque<UndoRec>,
    entry: &Document,
    at: Timestamp,
) {
    let op = entry.get_str("op").unwrap_or("n");
    let ns = entry.get_str("ns").unwrap_or("");
    let Ok(o) = entry.get_document("o") else {
        return;
    };
    let doc_prev = |data: &BTreeMap<String, Collection>, id: Bson| {
        let prev = data.get(ns).and_then(|c| c.get(&id)).cloned();
        Prev::Doc(id, prev)
    };
    let prev = match op {
        "i" | "d" => Some(doc_prev(data, o.get("_id").cloned().unwrap_or(Bson::Null))),
        "u" => Some(doc_prev(
            data,
            entry
                .get_document("o2")
                .ok()
                .and_then(|o2| o2.get("_id").cloned())
                .unwrap_or(Bson::Null),
        )),
        "c" => {
            if let Ok(inner) = o.get_array("applyOps") {
                for op in inner {
                    if let Bson::Document(op) = op {
                        apply_recorded(data, undo, op, at);
                    }
                }
                return;
            }
            let db = ns.split('.').next().unwrap_or("");
            // A rename changes two collections: both are restored by undo.
            if let (Ok(from), Ok(to)) = (o.get_str("renameCollection"), o.get_str("to")) {
                for target in [from, to] {
                    undo.push_back(UndoRec {
                        at,
                        prev: Prev::Coll(data.get(target).cloned()),
                        ns: target.to_owned(),
                    });
                }
                apply_entry(data, entry);
                return;
            }
            match o.get_str("create").or_else(|_| o.get_str("drop")) {
                Ok(coll) => {
                    let target = format!("{db}.{coll}");
                    undo.push_back(UndoRec {
                        at,
                        prev: Prev::Coll(data.get(&target).cloned()),
                        ns: target,
                    });
                    None
                }
                Err(_) => None,
            }
        }
        _ => None,
    };
    if let Some(prev) = prev {
        undo.push_back(UndoRec {
            at,
            ns: ns.to_owned(),
            prev,
        });
    }
    apply_entry(data, entry);
}

/// The documents of `ns` with these `_id`s as of `at`: what [`collection_at`] holds for
/// them, without copying the rest of the collection (a read by `_id`, which mongod answers
/// from the `_id` index).
pub fn docs_at(
    data: &BTreeMap<String, Collection>,
    undo: &VecDeque<UndoRec>,
    ns: &str,
    at: Timestamp,
    ids: &[Bson],
) -> Vec<Document> {
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(ids.len());
    let mut wanted: Vec<&Bson> = Vec::with_capacity(ids.len());
    for id in ids {
        let k = id_key(id);
        if !keys.contains(&k) {
            keys.push(k);
            wanted.push(id);
        }
    }
    let current = data.get(ns);
    let mut docs: Vec<Option<Document>> = wanted
        .iter()
        .map(|id| current.and_then(|c| c.get(id)).cloned())
        .collect();
    for rec in undo.iter().rev() {
        if ts_key(rec.at) <= ts_key(at) {
            break;
        }
        if rec.ns != ns {
            continue;
        }
        match &rec.prev {
            Prev::Coll(prev) => {
                for (d, id) in docs.iter_mut().zip(&wanted) {
                    *d = prev.as_ref().and_then(|c| c.get(id)).cloned();
                }
            }
            Prev::Doc(id, prev) => {
                let k = id_key(id);
                if let Some(i) = keys.iter().position(|w| *w == k) {
                    docs[i] = prev.clone();
                }
            }
        }
    }
    docs.into_iter().flatten().collect()
}

/// The collection `ns` as of `at`: the current one with every later change undone.
pub fn collection_at(
    data: &BTreeMap<String, Collection>,
    undo: &VecDeque<UndoRec>,
    ns: &str,
    at: Timestamp,
) -> Option<Collection> {
    let mut coll = data.get(ns).cloned();
    for rec in undo.iter().rev() {
        if ts_key(rec.at) <= ts_key(at) {
            break;
        }
        if rec.ns != ns {
            continue;
        }
        match &rec.prev {
            Prev::Coll(prev) => coll = prev.clone(),
            Prev::Doc(id, prev) => {
                let c = coll.get_or_insert_with(Collection::default);
                match prev {
                    Some(d) => c.upsert(d.clone()),
                    None => {
                        c.remove(id);
                    }
                }
            }
        }
    }
    coll
}

/// Forgets undo records no read may need: those at or before `oldest`.
pub fn prune(undo: &mut VecDeque<UndoRec>, oldest: Timestamp) {
    while undo.front().is_some_and(|r| ts_key(r.at) <= ts_key(oldest)) {
        undo.pop_front();
    }
}

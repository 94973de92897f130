//! Collections and documents on one node: the `_id`-indexed [`Collection`] and applying
//! an oplog entry to a node's data (operator updates are in `modifiers.rs`).

use std::collections::{BTreeMap, HashMap};

use bson::{doc, Bson, Document};

use super::CmdError;
use crate::matcher;
use crate::oplog;

/// A user collection on one node: documents in natural (insertion) order with an `_id`
/// index, so lookups stay O(1) as collections grow.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    slots: Vec<Option<Document>>,
    index: HashMap<Vec<u8>, usize>,
    live: usize,
}

/// The `_id` index key: numbers by value (1 and 1.0 are the same key, as in mongod's
/// index), anything else by its BSON bytes.
pub(super) fn id_key(id: &Bson) -> Vec<u8> {
    let number = match id {
        Bson::Int32(v) => Some(f64::from(*v)),
        Bson::Int64(v) => Some(*v as f64),
        Bson::Double(v) => Some(*v),
        _ => None,
    };
    match number {
        Some(n) => {
            let mut k = b"n:".to_vec();
            k.extend_from_slice(&(if n == 0.0 { 0.0f64 } else { n }).to_bits().to_le_bytes());
            k
        }
        None => doc! {"k": id.clone()}.to_vec().unwrap_or_default(),
    }
}

impl Collection {
    /// Documents in natural order.
    pub fn iter(&self) -> impl Iterator<Item = &Document> {
        self.slots.iter().flatten()
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the collection is empty.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether a document with this `_id` exists.
    pub fn contains(&self, id: &Bson) -> bool {
        self.index.contains_key(&id_key(id))
    }

    /// The document with this `_id`.
    pub fn get(&self, id: &Bson) -> Option<&Document> {
        let i = *self.index.get(&id_key(id))?;
        self.slots.get(i)?.as_ref()
    }

    /// The document with this `_id`, to change in place.
    pub fn get_mut(&mut self, id: &Bson) -> Option<&mut Document> {
        let i = *self.index.get(&id_key(id))?;
        self.slots.get_mut(i)?.as_mut()
    }

    /// The most recently inserted document.
    pub fn last(&self) -> Option<&Document> {
        self.slots.iter().rev().flatten().next()
    }

    /// Inserts, or replaces in place when the `_id` exists.
    pub fn upsert(&mut self, doc: Document) {
        let key = id_key(doc.get("_id").unwrap_or(&Bson::Null));
        match self.index.get(&key) {
            Some(i) => self.slots[*i] = Some(doc),
            None => {
                self.index.insert(key, self.slots.len());
                self.slots.push(Some(doc));
                self.live += 1;
            }
        }
    }

    /// Removes the document with this `_id`.
    pub fn remove(&mut self, id: &Bson) -> Option<Document> {
        let i = self.index.remove(&id_key(id))?;
        let doc = self.slots.get_mut(i)?.take();
        self.live -= 1;
        if self.slots.len() > 64 && self.live < self.slots.len() / 2 {
            self.compact();
        }
        doc
    }

    fn compact(&mut self) {
        let docs: Vec<Document> = self.slots.drain(..).flatten().collect();
        self.index.clear();
        self.live = 0;
        for d in docs {
            self.upsert(d);
        }
    }
}

/// BadValue (2) from a filter error.
pub fn bad_value(e: matcher::BadFilter) -> CmdError {
    CmdError::new(2, "BadValue", e.0)
}

/// Applies an oplog entry to a node's data (idempotently, as oplog application must be).
pub fn apply_entry(data: &mut BTreeMap<String, Collection>, entry: &Document) {
    let op = entry.get_str("op").unwrap_or("n");
    let ns = entry.get_str("ns").unwrap_or("");
    let Ok(o) = entry.get_document("o") else {
        return;
    };
    match op {
        "i" => {
            data.entry(ns.to_owned()).or_default().upsert(o.clone());
        }
        "u" => {
            let id = entry
                .get_document("o2")
                .ok()
                .and_then(|o2| o2.get("_id").cloned())
                .unwrap_or(Bson::Null);
            if let Some(coll) = data.get_mut(ns) {
                if let Some(doc) = coll.get_mut(&id) {
                    oplog::apply_update_o(doc, o);
                }
            }
        }
        "d" => {
            let id = o.get("_id").cloned().unwrap_or(Bson::Null);
            if let Some(coll) = data.get_mut(ns) {
                coll.remove(&id);
            }
        }
        "c" => {
            let db = ns.split('.').next().unwrap_or("");
            if let Ok(inner) = o.get_array("applyOps") {
                for op in inner {
                    if let Bson::Document(op) = op {
                        apply_entry(data, op);
                    }
                }
            } else if let Ok(name) = o.get_str("create") {
                data.entry(format!("{db}.{name}")).or_default();
            } else if let Ok(name) = o.get_str("drop") {
                data.remove(&format!("{db}.{name}"));
            } else if let (Ok(from), Ok(to)) = (o.get_str("renameCollection"), o.get_str("to")) {
                match data.remove(from) {
                    Some(c) => {
                        data.insert(to.to_owned(), c);
                    }
                    None => {
                        data.remove(to);
                    }
                }
            } else if o.contains_key("dropDatabase") {
                let prefix = format!("{db}.");
                data.retain(|ns, _| !ns.starts_with(&prefix));
            }
        }
        _ => {}
    }
}

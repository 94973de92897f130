//! How an operator update is logged: from the modifications the update made, as
//! mongod's log builders write them (mongodb/mongo `src/mongo/db/update/`). The
//! modifications ([`LogRecord`]) come from applying the update (`world/modifiers.rs`),
//! as mongod's modifier nodes hand them to the log builder.
//!
//! * 5.0+ (`v2_log_builder.cpp`; the serialisation moved to
//!   `document_diff_serialization.cpp` later, same shapes): a `$v: 2` delta built as a
//!   tree along each modified path. An updated field is a `u` entry of its level, a
//!   created one an `i` entry at the level of its first new component holding the created
//!   sub-document, a deleted one a `d` entry (`false`). A document on the way that existed
//!   is an `s<field>` sub-diff; one whose next component is an array index is an array
//!   diff: `a: true`, then per index in ascending order `u<index>` for an element updated
//!   or created (a created element with a created sub-document holds it whole) and
//!   `s<index>` for an element changed below. A level serialises as `d`, `u`, `i`, then
//!   its sub-diffs, each in the order first touched (`DocumentSubDiffFrame`,
//!   `ArrayFrame`). The log builder never writes `l` (a shrunk array is logged whole by
//!   the array operators); `l` comes only from the diff calculator
//!   (`document_diff_calculator.cpp`) of pipeline updates, which mongosim does not
//!   simulate, as it does not simulate that calculator's fallback to a replacement when
//!   the diff is not smaller than the post-image (`computeOplogDiff`).
//! * 4.4 and earlier (`v1_log_builder.cpp`, `log_builder.cpp`): `$set` with the dotted
//!   path (array indexes as numbers) of each updated or created field and its value,
//!   `$unset` with `{path: true}`; the sections in the order first used; `$v: 1` first
//!   from 4.4 (`includeVersionField`).
//!
//! What each node logs is read from its `logUpdate` (`modifier_node.cpp`,
//! `push_node.cpp`, `unset_node.cpp`, `addtoset_node.cpp`); the shapes are checked against
//! the server's `jstests/replsets/oplog_format.js` (both formats per case) and
//! `addtoset_node_test.cpp` (5.0 era), see `update_log_tests.rs`.

use std::collections::BTreeMap;

use bson::{Bson, Document};

use crate::version::ServerVersion;

/// One component of a modified path as the update walked it (`RuntimeUpdatePath`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// A field of a document.
    Field(String),
    /// An element of an array.
    Index(usize),
}

/// What happened at a path.
#[derive(Clone, Debug, PartialEq)]
pub enum Logged {
    /// An existing value was replaced by this one (`logUpdatedField`).
    Updated(Bson),
    /// The path was created from component `first_new` on, with this leaf value
    /// (`logCreatedField`).
    Created {
        /// Index in the path of the first component that did not exist.
        first_new: usize,
        /// The value at the end of the path.
        value: Bson,
    },
    /// The field was removed (`logDeletedField`).
    Deleted,
}

/// One modification, in the order the update made it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    /// The full path.
    pub path: Vec<Part>,
    /// What happened there.
    pub what: Logged,
}

/// A node of the `$v: 2` tree (`v2_log_builder.h`).
enum Node {
    Update(Bson),
    Insert(Bson),
    Delete,
    /// A document that existed, changed below (`DocumentSubDiffNode`).
    SubDiff(Vec<(String, Node)>),
    /// A document created by the update (`DocumentInsertionNode`).
    DocInsert(Vec<(String, Node)>),
    /// An array changed below (`ArrayNode`).
    Array(BTreeMap<usize, Node>),
}

impl Node {
    fn child(&mut self, key: &Part) -> Option<&mut Node> {
        match (self, key) {
            (Node::SubDiff(c) | Node::DocInsert(c), Part::Field(f)) => {
                c.iter_mut().find(|(n, _)| n == f).map(|(_, n)| n)
            }
            (Node::Array(c), Part::Index(i)) => c.get_mut(i),
            _ => None,
        }
    }

    /// Adds a child; a name already taken keeps its first node (the parser's conflict
    /// rule makes that unreachable).
    fn add(&mut self, key: &Part, node: Node) -> Option<&mut Node> {
        match (self, key) {
            (Node::SubDiff(c) | Node::DocInsert(c), Part::Field(f)) => {
                if !c.iter().any(|(n, _)| n == f) {
                    c.push((f.clone(), node));
                }
                c.iter_mut().find(|(n, _)| n == f).map(|(_, n)| n)
            }
            (Node::Array(c), Part::Index(i)) => Some(c.entry(*i).or_insert(node)),
            _ => None,
        }
    }

    fn is_internal(&self) -> bool {
        matches!(self, Node::SubDiff(_) | Node::DocInsert(_) | Node::Array(_))
    }
}

/// `V2LogBuilder::addNodeAtPath`.
fn add_at_path(root: &mut Node, path: &[Part], leaf: Node, first_new: Option<usize>) {
    let mut node = root;
    for (i, part) in path.iter().enumerate() {
        if i + 1 == path.len() {
            node.add(part, leaf);
            return;
        }
        if node.child(part).is_none() {
            let internal = if matches!(path[i + 1], Part::Index(_)) {
                Node::Array(BTreeMap::new())
            } else if first_new.is_some_and(|k| i >= k) {
                Node::DocInsert(Vec::new())
            } else {
                Node::SubDiff(Vec::new())
            };
            node.add(part, internal);
        }
        match node.child(part) {
            Some(n) if n.is_internal() => node = n,
            // A leaf already logged here: nothing below it can be added.
            _ => return,
        }
    }
}

fn key_of(p: &Part) -> String {
    match p {
        Part::Field(f) => f.clone(),
        Part::Index(i) => i.to_string(),
    }
}

/// An inserted value: a leaf as is, a created document built from its inserts.
fn insert_value(node: &Node) -> Bson {
    match node {
        Node::Insert(v) | Node::Update(v) => v.clone(),
        Node::DocInsert(children) => Bson::Document(
            children
                .iter()
                .map(|(k, n)| (k.clone(), insert_value(n)))
                .collect(),
        ),
        _ => Bson::Null,
    }
}

fn serialize(node: &Node) -> Document {
    let mut d = Document::new();
    match node {
        Node::SubDiff(children) => {
            let deletes: Document = children
                .iter()
                .filter(|(_, n)| matches!(n, Node::Delete))
                .map(|(k, _)| (k.clone(), Bson::Boolean(false)))
                .collect();
            let updates: Document = children
                .iter()
                .filter_map(|(k, n)| match n {
                    Node::Update(v) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect();
            let inserts: Document = children
                .iter()
                .filter(|(_, n)| matches!(n, Node::Insert(_) | Node::DocInsert(_)))
                .map(|(k, n)| (k.clone(), insert_value(n)))
                .collect();
            for (name, section) in [("d", deletes), ("u", updates), ("i", inserts)] {
                if !section.is_empty() {
                    d.insert(name, section);
                }
            }
            for (k, n) in children {
                if matches!(n, Node::SubDiff(_) | Node::Array(_)) {
                    d.insert(format!("s{k}"), serialize(n));
                }
            }
        }
        Node::Array(children) => {
            d.insert("a", true);
            for (i, n) in children {
                match n {
                    Node::Update(_) | Node::Insert(_) | Node::DocInsert(_) => {
                        d.insert(format!("u{i}"), insert_value(n));
                    }
                    Node::SubDiff(_) | Node::Array(_) => {
                        d.insert(format!("s{i}"), serialize(n));
                    }
                    Node::Delete => {}
                }
            }
        }
        _ => {}
    }
    d
}

/// The `o` of the update entry for an operator update that made `log`'s modifications.
pub fn operator_update_o(version: ServerVersion, log: &[LogRecord]) -> Document {
    if version.diff_updates() {
        let mut root = Node::SubDiff(Vec::new());
        for rec in log {
            let (leaf, first_new) = match &rec.what {
                Logged::Updated(v) => (Node::Update(v.clone()), None),
                Logged::Created { first_new, value } => {
                    (Node::Insert(value.clone()), Some(*first_new))
                }
                Logged::Deleted => (Node::Delete, None),
            };
            add_at_path(&mut root, &rec.path, leaf, first_new);
        }
        bson::doc! {"$v": 2, "diff": serialize(&root)}
    } else {
        let mut o = Document::new();
        if version.has_terms() {
            o.insert("$v", 1);
        }
        let mut set = Document::new();
        let mut unset = Document::new();
        let mut order: Vec<&str> = Vec::new();
        for rec in log {
            let dotted = rec.path.iter().map(key_of).collect::<Vec<_>>().join(".");
            let section = match &rec.what {
                Logged::Updated(v) | Logged::Created { value: v, .. } => {
                    set.insert(dotted, v.clone());
                    "$set"
                }
                Logged::Deleted => {
                    unset.insert(dotted, true);
                    "$unset"
                }
            };
            if !order.contains(&section) {
                order.push(section);
            }
        }
        for section in order {
            match section {
                "$set" => o.insert("$set", std::mem::take(&mut set)),
                _ => o.insert("$unset", std::mem::take(&mut unset)),
            };
        }
        o
    }
}

#[cfg(test)]
#[path = "update_log_tests.rs"]
mod tests;

//! What a shard's snapshot already holds, so that the stream after it emits only what it
//! does not: changes committed at or before the time the document was read.
//!
//! Usually one time, `P`. When a read falls out of the server's history
//! (`SnapshotTooOld`) and no chunk of the collections still to read changed shards since
//! `P`, the rest is read at a later time `P2`: the documents of the collection being read
//! after the last `_id` emitted, and the collections not read yet. Their changes up to
//! `P2` are in what was read; the others' changes after `P` are not. See
//! [`SnapshotFloor::covers`].

use std::cmp::Ordering;

use bson::{Bson, RawDocument};
use quorumtail_oplog::{OpKind, Timestamp};

use super::ownership::compare;

/// A part of the snapshot read later than `P`.
#[derive(Debug, Clone, PartialEq)]
pub struct LaterRead {
    /// `db.coll`.
    pub ns: String,
    /// Only documents whose `_id` sorts after this one (in the order the copy read them);
    /// `None`: the whole collection.
    pub after_id: Option<Bson>,
    /// When they were read.
    pub at: Timestamp,
}

/// What a snapshot holds: every change committed at or before `base`, and for the later
/// reads every change of their documents up to their time.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotFloor {
    /// `P`.
    pub base: Timestamp,
    /// Later reads, in the order they were made.
    pub later: Vec<LaterRead>,
}

impl SnapshotFloor {
    /// A snapshot read at one time.
    pub fn at(base: Timestamp) -> Self {
        SnapshotFloor {
            base,
            later: Vec::new(),
        }
    }

    /// The time up to which the snapshot holds the changes of document `id` of `ns` (`None`:
    /// a change without a document, such as a command: the base time).
    pub fn time_for(&self, ns: &str, id: Option<&Bson>) -> Timestamp {
        // The newest read that covers the document wins (reads only move forward).
        self.later
            .iter()
            .rev()
            .find(|r| {
                r.ns == ns
                    && match (&r.after_id, id) {
                        (None, _) => true,
                        (Some(after), Some(id)) => compare(id, after) == Ordering::Greater,
                        (Some(_), None) => false,
                    }
            })
            .map_or(self.base, |r| r.at)
    }

    /// Whether a change of document `id` of `ns` committed at `at` is in the snapshot.
    pub fn covers(&self, ns: &str, id: Option<&Bson>, at: Timestamp) -> bool {
        at <= self.time_for(ns, id)
    }

    /// The latest time any part was read at: no checkpoint may land at or before it.
    pub fn latest(&self) -> Timestamp {
        self.later
            .iter()
            .map(|r| r.at)
            .fold(self.base, std::cmp::max)
    }
}

/// The `_id` of the document a CRUD operation changes: `o._id` for inserts and deletes,
/// `o2._id` for updates; `None` for anything else.
pub fn changed_id(op: OpKind, o: Option<&RawDocument>, o2: Option<&RawDocument>) -> Option<Bson> {
    let from = match op {
        OpKind::Insert | OpKind::Delete => o,
        OpKind::Update => o2,
        _ => None,
    }?;
    let raw = from.get("_id").ok().flatten()?;
    Bson::try_from(bson::RawBson::from(raw)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(i: u32) -> Timestamp {
        Timestamp::new(1_700_000_000, i)
    }

    #[test]
    fn later_reads_move_the_time_of_their_documents_only() {
        let mut f = SnapshotFloor::at(ts(10));
        assert!(f.covers("a.x", Some(&Bson::Int32(5)), ts(10)));
        assert!(!f.covers("a.x", Some(&Bson::Int32(5)), ts(11)));
        // a.x re-read after _id 5 at 20; a.y wholly at 20.
        f.later.push(LaterRead {
            ns: "a.x".into(),
            after_id: Some(Bson::Int32(5)),
            at: ts(20),
        });
        f.later.push(LaterRead {
            ns: "a.y".into(),
            after_id: None,
            at: ts(20),
        });
        // Up to _id 5 (read at 10): changes after 10 are not in the snapshot.
        assert!(!f.covers("a.x", Some(&Bson::Int32(5)), ts(15)));
        assert!(!f.covers("a.x", Some(&Bson::Int32(-1)), ts(15)));
        // After _id 5, in BSON order (numbers compare across types, strings after them).
        assert!(f.covers("a.x", Some(&Bson::Int64(6)), ts(15)));
        assert!(f.covers("a.x", Some(&Bson::Double(5.5)), ts(20)));
        assert!(f.covers("a.x", Some(&Bson::String("k".into())), ts(20)));
        assert!(!f.covers("a.x", Some(&Bson::Int64(6)), ts(21)));
        assert!(f.covers("a.y", Some(&Bson::Int32(0)), ts(20)));
        // Other namespaces and commands: the base time.
        assert!(!f.covers("a.z", Some(&Bson::Int32(9)), ts(11)));
        assert!(!f.covers("a.x", None, ts(11)));
        assert_eq!(f.latest(), ts(20));
        // A third read of a.x further on wins for its documents.
        f.later.push(LaterRead {
            ns: "a.x".into(),
            after_id: Some(Bson::Int32(50)),
            at: ts(30),
        });
        assert!(f.covers("a.x", Some(&Bson::Int32(51)), ts(25)));
        assert!(!f.covers("a.x", Some(&Bson::Int32(40)), ts(25)));
        assert_eq!(f.latest(), ts(30));
    }

    #[test]
    fn the_changed_document_is_o_or_o2() {
        let o = bson::rawdoc! {"_id": 3, "x": 1};
        let o2 = bson::rawdoc! {"_id": "k"};
        assert_eq!(
            changed_id(OpKind::Insert, Some(&o), None),
            Some(Bson::Int32(3))
        );
        assert_eq!(
            changed_id(OpKind::Delete, Some(&o), None),
            Some(Bson::Int32(3))
        );
        assert_eq!(
            changed_id(OpKind::Update, Some(&o), Some(&o2)),
            Some(Bson::String("k".into()))
        );
        assert_eq!(changed_id(OpKind::Command, Some(&o), None), None);
        assert_eq!(changed_id(OpKind::Update, Some(&o), None), None);
    }
}

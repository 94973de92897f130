//! Resharding, moveCollection, unshardCollection and movePrimary: the placement markers
//! and the tracking of each donor's `reshardBegin` (see the parent module's documentation,
//! "Resharding and movePrimary").

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::Filter;
use crate::entry::{split_ns, OpKind, OplogEntry};

/// The shard's role in a resharding operation, as its cut-over entry shows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReshardRole {
    /// The collection now lives (also) on this shard: its temporary copy was renamed onto
    /// the collection.
    Recipient,
    /// The collection left this shard: its copy was dropped.
    Donor,
}

impl ReshardRole {
    /// `"recipient"` or `"donor"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReshardRole::Recipient => "recipient",
            ReshardRole::Donor => "donor",
        }
    }
}

/// What a placement marker says: documents of a collection (or a database's unsharded
/// collections) changed shards. Built from the shard's own entries, see the module
/// documentation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Placement {
    /// A resharding operation's cut-over on this shard. `operation` is
    /// `"reshardCollection"` for `reshardCollection`, `moveCollection` and
    /// `unshardCollection` alike (as MongoDB's change streams name all three; the primary
    /// shard's `reshardCollection` notification, a separate record from 6.0, tells them
    /// apart on 8.0 and carries the new shard key).
    Reshard {
        /// The collection.
        ns: String,
        /// What happened here.
        role: ReshardRole,
        /// The collection's UUID after the operation (the resharding operation's UUID).
        uuid: Option<[u8; 16]>,
    },
    /// `movePrimary` of `db` from shard `from` to shard `to` (the old primary logs it).
    MovePrimary {
        /// The database.
        db: String,
        /// The old primary shard.
        from: String,
        /// The new primary shard.
        to: String,
    },
}

impl Placement {
    /// The namespace the marker is about: the collection, or the database.
    pub fn ns(&self) -> &str {
        match self {
            Placement::Reshard { ns, .. } => ns,
            Placement::MovePrimary { db, .. } => db,
        }
    }

    /// The operation's name.
    pub fn operation(&self) -> &'static str {
        match self {
            Placement::Reshard { .. } => "reshardCollection",
            Placement::MovePrimary { .. } => "movePrimary",
        }
    }
}

/// A begun resharding on one shard: the collection's UUID there and the resharding UUID.
#[derive(Clone, Debug)]
struct Begun {
    ui: Option<Vec<u8>>,
    resharding_uuid: Option<[u8; 16]>,
}

/// Resharding operations each donor shard has begun (its `reshardBegin` no-op), so that
/// the same shard's drop of the same collection incarnation is read as the operation's
/// cut-over. Shared by every shard's filter, keyed by shard.
#[derive(Clone, Default, Debug)]
pub struct ReshardTracker {
    /// By `(shard, ns)`.
    begun: Arc<RwLock<HashMap<(String, String), Begun>>>,
}

/// Whether `ns` is a resharding operation's temporary collection
/// (`<db>.system.resharding.<uuid>`).
pub fn is_resharding_temp_ns(ns: &str) -> bool {
    split_ns(ns).1.starts_with("system.resharding.")
}

/// The no-ops a resharding operation logs for itself: `o2` `{type: "reshardBegin" |
/// "reshardFinalOp" | "reshardDoneCatchUp", ...}` (5.0's format, and `reshardFinalOp`
/// always) or `{reshardBegin | reshardDoneCatchUp | reshardBlockingWrites: ns, ...}`.
pub(super) fn resharding_noop(entry: &OplogEntry<'_>) -> Option<&'static str> {
    const KINDS: &[&str] = &[
        "reshardBegin",
        "reshardFinalOp",
        "reshardDoneCatchUp",
        "reshardBlockingWrites",
    ];
    if entry.op != OpKind::Noop {
        return None;
    }
    let o2 = entry.o2?;
    if let Ok(t) = o2.get_str("type") {
        return KINDS.iter().find(|k| **k == t).copied();
    }
    let (first, _) = o2.iter().next()?.ok()?;
    KINDS.iter().find(|k| **k == first.as_str()).copied()
}

fn uuid16(v: Option<bson::RawBsonRef<'_>>) -> Option<[u8; 16]> {
    match v {
        Some(bson::RawBsonRef::Binary(b)) => b.bytes.try_into().ok(),
        _ => None,
    }
}

impl Filter {
    /// Whether a top-level entry logged by `shard` is a placement marker (module
    /// documentation): a recipient's rename of a resharding temporary collection onto
    /// the collection, a donor's drop of a collection whose resharding it began, or a
    /// `movePrimary` notification. Call it on every top-level entry, in order, before
    /// [`Filter::check_entry`]: it remembers each donor's `reshardBegin` and moves a
    /// database's primary shard on its `movePrimary` notification. Always `None` when
    /// internal namespaces are kept (`drop_internal = false`: the entries are emitted as
    /// logged).
    pub fn placement(&self, entry: &OplogEntry<'_>, shard: &str) -> Option<Placement> {
        if !self.drop_internal {
            return None;
        }
        match entry.op {
            OpKind::Noop => {
                let o2 = entry.o2?;
                if resharding_noop(entry) == Some("reshardBegin") {
                    let uuid = uuid16(o2.get("reshardingUUID").ok().flatten());
                    self.resharding
                        .begun
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            (shard.to_owned(), entry.ns.to_owned()),
                            Begun {
                                ui: entry.ui.map(<[u8]>::to_vec),
                                resharding_uuid: uuid,
                            },
                        );
                    return None;
                }
                let db = o2.get_str("movePrimary").ok()?;
                let from = o2.get_str("from").ok()?;
                let to = o2.get_str("to").ok()?;
                if let Some(p) = &self.ddl_primaries {
                    p.update(HashMap::from([(db.to_owned(), to.to_owned())]));
                }
                Some(Placement::MovePrimary {
                    db: db.to_owned(),
                    from: from.to_owned(),
                    to: to.to_owned(),
                })
            }
            OpKind::Command => {
                let o = entry.o?;
                let db = split_ns(entry.ns).0;
                if let Ok(from) = o.get_str("renameCollection") {
                    if !is_resharding_temp_ns(from) {
                        return None;
                    }
                    let to = o.get_str("to").ok()?;
                    self.resharding
                        .begun
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&(shard.to_owned(), to.to_owned()));
                    return Some(Placement::Reshard {
                        ns: to.to_owned(),
                        role: ReshardRole::Recipient,
                        uuid: entry.ui.and_then(|u| u.try_into().ok()),
                    });
                }
                let coll = o.get_str("drop").ok()?;
                let ns = format!("{db}.{coll}");
                let mut begun = self
                    .resharding
                    .begun
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                let key = (shard.to_owned(), ns);
                let same = begun.get(&key).is_some_and(|b| b.ui.as_deref() == entry.ui);
                if !same {
                    return None;
                }
                let b = begun.remove(&key)?;
                Some(Placement::Reshard {
                    ns: key.1,
                    role: ReshardRole::Donor,
                    uuid: b.resharding_uuid,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cmd, judge, primaries, raw};
    use super::super::{command_target_ns, DropReason};
    use super::*;

    fn uuid(n: u8) -> bson::Binary {
        bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: vec![n; 16],
        }
    }

    fn entry_doc(
        mut d: bson::Document,
        ui: Option<u8>,
        from_migrate: bool,
    ) -> bson::RawDocumentBuf {
        d.insert(
            "ts",
            bson::Timestamp {
                time: 9,
                increment: 1,
            },
        );
        d.insert("t", 1i64);
        if let Some(n) = ui {
            d.insert("ui", uuid(n));
        }
        if from_migrate {
            d.insert("fromMigrate", true);
        }
        raw(d)
    }

    fn place(f: &Filter, doc: &bson::RawDocumentBuf, shard: &str) -> Option<Placement> {
        f.placement(&OplogEntry::parse(doc).unwrap(), shard)
    }

    /// The shapes of `reshardCollection` on two shards (mongosim's crate documentation
    /// cites the server source of each): the bookkeeping is dropped as `resharding`, the
    /// cut-over of each shard is a placement marker, a user's drop is not.
    #[test]
    fn resharding_bookkeeping_is_dropped_and_each_cut_over_is_a_marker() {
        let f = Filter {
            ddl_primaries: Some(primaries(&[("shop", "shard01")])),
            ..Filter::default()
        };
        let temp = "shop.system.resharding.0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a";
        // Donors (both shards): reshardBegin, in the 6.0+ and the 5.0 format.
        let begin_new = entry_doc(
            bson::doc! {"op": "n", "ns": "shop.items", "o": {"msg": "Created temporary resharding collection"},
            "o2": {"reshardBegin": "shop.items", "reshardingUUID": uuid(7)}},
            Some(1),
            true,
        );
        let begin_old = entry_doc(
            bson::doc! {"op": "n", "ns": "shop.items", "o": {"msg": "Created temporary resharding collection"},
            "o2": {"type": "reshardBegin", "reshardingUUID": uuid(7)}},
            Some(2),
            true,
        );
        for (b, shard) in [(&begin_new, "shard01"), (&begin_old, "shard02")] {
            assert_eq!(place(&f, b, shard), None);
            assert_eq!(judge(&f, b, shard), Err(DropReason::Resharding));
        }
        // Recipient: the temporary collection's create, cloner and applier writes.
        let create = entry_doc(
            bson::doc! {"op": "c", "ns": "shop.$cmd", "o": {"create": "system.resharding.0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a"}},
            Some(7),
            false,
        );
        let e = OplogEntry::parse(&create).unwrap();
        let ns = command_target_ns(
            e.ns,
            "create",
            Some("system.resharding.0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a"),
        );
        assert_eq!(
            f.check_entry(&e, &ns, "shard02"),
            Err(DropReason::Resharding)
        );
        let cloned = entry_doc(
            bson::doc! {"op": "i", "ns": temp, "o": {"_id": 1}},
            Some(7),
            false,
        );
        let e = OplogEntry::parse(&cloned).unwrap();
        assert_eq!(
            f.check_entry(&e, temp, "shard02"),
            Err(DropReason::Resharding)
        );
        // In a transaction-free `check` the temporary collection is internal anyway.
        assert_eq!(
            f.check(OpKind::Insert, temp, false),
            Err(DropReason::InternalNamespace)
        );
        // The donors' final no-op and the recipient's catch-up no-op.
        for o2 in [
            bson::doc! {"type": "reshardFinalOp", "reshardingUUID": uuid(7)},
            bson::doc! {"reshardDoneCatchUp": temp, "reshardingUUID": uuid(7)},
            bson::doc! {"type": "reshardDoneCatchUp", "reshardingUUID": uuid(7)},
        ] {
            let n = entry_doc(
                bson::doc! {"op": "n", "ns": "shop.items", "o": {"msg": "x"}, "o2": o2},
                Some(1),
                false,
            );
            assert_eq!(judge(&f, &n, "shard01"), Err(DropReason::Resharding));
        }
        // shard02 is also the recipient: its rename is its marker (and ends the tracking).
        let rename = entry_doc(
            bson::doc! {"op": "c", "ns": "shop.$cmd", "o": {"renameCollection": temp, "to": "shop.items", "stayTemp": false, "dropTarget": uuid(2)}},
            Some(7),
            true,
        );
        assert_eq!(
            place(&f, &rename, "shard02"),
            Some(Placement::Reshard {
                ns: "shop.items".to_owned(),
                role: ReshardRole::Recipient,
                uuid: Some([7; 16]),
            })
        );
        // shard01, a donor only: its drop of the same incarnation is its marker, marked
        // (6.0+) or not (5.0).
        for fm in [true, false] {
            let f = Filter {
                ddl_primaries: Some(primaries(&[("shop", "shard01")])),
                ..Filter::default()
            };
            assert_eq!(place(&f, &begin_new, "shard01"), None);
            let drop = entry_doc(
                bson::doc! {"op": "c", "ns": "shop.$cmd", "o": {"drop": "items"}, "o2": {"numRecords": 1}},
                Some(1),
                fm,
            );
            assert_eq!(
                place(&f, &drop, "shard01"),
                Some(Placement::Reshard {
                    ns: "shop.items".to_owned(),
                    role: ReshardRole::Donor,
                    uuid: Some([7; 16]),
                })
            );
            // Once: a later drop of the collection is the user's.
            assert_eq!(place(&f, &drop, "shard01"), None);
            assert_eq!(judge(&f, &drop, "shard01").is_ok(), !fm);
        }
        // A drop of another incarnation (another UUID) or on another shard is not a cut-over.
        let f = Filter::default();
        assert_eq!(place(&f, &begin_new, "shard01"), None);
        let other = entry_doc(
            bson::doc! {"op": "c", "ns": "shop.$cmd", "o": {"drop": "items"}},
            Some(9),
            false,
        );
        assert_eq!(place(&f, &other, "shard01"), None);
        let elsewhere = entry_doc(
            bson::doc! {"op": "c", "ns": "shop.$cmd", "o": {"drop": "items"}},
            Some(1),
            false,
        );
        assert_eq!(place(&f, &elsewhere, "shard02"), None);
        // A user's rename is not a marker.
        let user = entry_doc(
            bson::doc! {"op": "c", "ns": "shop.$cmd", "o": {"renameCollection": "shop.a", "to": "shop.b"}},
            Some(3),
            false,
        );
        assert_eq!(place(&f, &user, "shard01"), None);
        // Keeping internal namespaces keeps everything as logged.
        let keep = Filter {
            drop_internal: false,
            drop_noops: false,
            ..Filter::default()
        };
        assert_eq!(place(&keep, &rename, "shard02"), None);
        assert_eq!(
            judge(&keep, &begin_new, "shard01").map(|_| ()),
            Err(DropReason::FromMigrate)
        );
    }

    #[test]
    fn reshard_collection_notification_is_one_ddl_record() {
        let f = Filter {
            ddl_primaries: Some(primaries(&[("shop", "shard01")])),
            ..Filter::default()
        };
        let note = entry_doc(
            bson::doc! {"op": "n", "ns": "shop.items", "o": {"msg": "Reshard collection shop.items with shard key { k: 1 }"},
            "o2": {"reshardCollection": "shop.items", "reshardUUID": uuid(7), "shardKey": {"k": 1}, "oldShardKey": {"_id": 1}, "unique": false}},
            Some(1),
            false,
        );
        let e = OplogEntry::parse(&note).unwrap();
        assert_eq!(place(&f, &note, "shard01"), None);
        assert_eq!(f.check_entry(&e, "shop.items", "shard01"), Ok(None));
        assert_eq!(
            f.check_entry(&e, "shop.items", "shard02"),
            Err(DropReason::DdlOnOtherShard)
        );
    }

    #[test]
    fn move_primary_notification_is_a_marker_and_moves_the_primary() {
        let p = primaries(&[("shop", "shard01")]);
        let f = Filter {
            ddl_primaries: Some(p.clone()),
            ..Filter::default()
        };
        let note = entry_doc(
            bson::doc! {"op": "n", "ns": "shop", "o": {"msg": {"movePrimary": "shop"}},
            "o2": {"movePrimary": "shop", "from": "shard01", "to": "shard02"}},
            None,
            false,
        );
        assert_eq!(
            place(&f, &note, "shard01"),
            Some(Placement::MovePrimary {
                db: "shop".to_owned(),
                from: "shard01".to_owned(),
                to: "shard02".to_owned(),
            })
        );
        assert_eq!(p.primary_of("shop").as_deref(), Some("shard02"));
        // The old primary's drop of a moved collection is no longer its DDL.
        let drop = cmd(bson::doc! {"drop": "settings"}, false);
        assert_eq!(
            judge(&f, &drop, "shard01"),
            Err(DropReason::DdlOnOtherShard)
        );
        assert_eq!(judge(&f, &drop, "shard02"), Ok(None));
    }
}

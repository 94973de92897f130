//! Which shard owns a document at the snapshot time, from the sharding catalog: pure.
//!
//! A shard can hold documents it does not own: a migration copies a range to its new
//! owner and commits, and only later does the range deleter remove the donor's copies
//! (`orphanCleanupDelaySecs`); a failed migration leaves the recipient's partial copy.
//! Reading every shard directly would emit those documents twice. So a snapshot emits a
//! document only from the shard that owned its shard-key range at the snapshot time `P`:
//!
//! * sharded collections: `config.collections` gives the shard key pattern (`key`) and
//!   `config.chunks` the ranges `[min, max)` with their ownership history
//!   (`history: [{validAfter, shard}]`, newest first: "the time after which this chunk is
//!   at this shard", `src/mongo/s/catalog/type_chunk_base.idl`); the owner at `P` is the
//!   newest history element with `validAfter <= P` (without history, the current `shard`);
//! * unsharded collections live on their database's primary shard (`config.databases`
//!   `primary`): only that shard emits them.
//!
//! Shard-key values are compared in MongoDB's BSON order (`canonicalizeBSONType` in
//! `src/mongo/bson/bsonelement.cpp`: MinKey < null < numbers < strings < objects <
//! arrays < binary < ObjectId < booleans < dates < timestamps < regular expressions <
//! MaxKey; numbers by value whatever their type; strings by bytes, the simple collation).
//! A missing shard-key field counts as null, as mongod places such documents. Hashed shard
//! keys need mongod's hash of the value and are refused with a clear error rather than
//! guessed.

use std::cmp::Ordering;
use std::collections::HashMap;

use bson::{Bson, Document, Timestamp};

/// The sharding catalog as of the snapshot time.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    /// Sharded collections by namespace.
    collections: HashMap<String, Sharded>,
    /// Each database's primary shard.
    db_primary: HashMap<String, String>,
}

#[derive(Debug, Clone)]
struct Sharded {
    /// Shard-key fields (dotted paths), in key order.
    key: Vec<String>,
    /// Whether the key is hashed (not supported).
    hashed: bool,
    /// Ranges ordered by `min`: (min, max, owner at P).
    chunks: Vec<(Vec<Bson>, Vec<Bson>, String)>,
}

/// Who must emit a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner<'a> {
    /// This shard (by name).
    Shard(&'a str),
    /// Nobody knows: an unsharded collection whose database has no primary in the
    /// catalog read (emitted only when the cluster has one shard).
    Unknown,
}

/// Why ownership could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipError {
    /// The catalog is malformed.
    #[error("sharding catalog: {0}")]
    Catalog(String),
    /// A hashed shard key.
    #[error("{ns} is sharded on a hashed key ({key}); the snapshot cannot tell which shard owns a document without mongod's hash. Fix: leave {ns} out of [filter] include, or take its initial copy with another tool")]
    Hashed {
        /// Namespace.
        ns: String,
        /// The key pattern.
        key: String,
    },
    /// No chunk covers the shard key (a catalog that does not cover the key space).
    #[error("{ns}: no chunk of config.chunks covers the shard key {key:?}")]
    NoChunk {
        /// Namespace.
        ns: String,
        /// The document's shard-key values.
        key: Vec<Bson>,
    },
}

impl Ownership {
    /// Builds the catalog at `at` from the documents of `config.collections`,
    /// `config.chunks` and `config.databases`. Chunks name their collection by `ns` (up to
    /// 4.4) or by `uuid` (5.0+, matched to the collection's `uuid`). Dropped collections
    /// (`dropped: true`, up to 4.4) are left out.
    ///
    /// # Errors
    /// [`OwnershipError::Catalog`] for documents without the fields mongod writes.
    pub fn from_catalog(
        collections: &[Document],
        chunks: &[Document],
        databases: &[Document],
        at: Timestamp,
    ) -> Result<Ownership, OwnershipError> {
        let bad = |what: String| OwnershipError::Catalog(what);
        let mut own = Ownership::default();
        let mut by_uuid: HashMap<Vec<u8>, String> = HashMap::new();
        for c in collections {
            if c.get_bool("dropped").unwrap_or(false) {
                continue;
            }
            let ns = c
                .get_str("_id")
                .map_err(|_| bad(format!("a config.collections document without _id: {c}")))?;
            let key = c
                .get_document("key")
                .map_err(|_| bad(format!("config.collections {ns}: no key")))?;
            let hashed = key.values().any(|v| v.as_str() == Some("hashed"));
            if let Ok(u) = c.get_binary_generic("uuid") {
                by_uuid.insert(u.clone(), ns.to_owned());
            } else if let Some(Bson::Binary(b)) = c.get("uuid") {
                by_uuid.insert(b.bytes.clone(), ns.to_owned());
            }
            own.collections.insert(
                ns.to_owned(),
                Sharded {
                    key: key.keys().cloned().collect(),
                    hashed,
                    chunks: Vec::new(),
                },
            );
        }
        for ch in chunks {
            let ns = match ch.get_str("ns") {
                Ok(ns) => Some(ns.to_owned()),
                Err(_) => match ch.get("uuid") {
                    Some(Bson::Binary(b)) => by_uuid.get(&b.bytes).cloned(),
                    _ => None,
                },
            };
            let Some(ns) = ns else {
                continue;
            };
            let Some(coll) = own.collections.get_mut(&ns) else {
                continue;
            };
            let bound = |name: &str| -> Result<Vec<Bson>, OwnershipError> {
                let d = ch
                    .get_document(name)
                    .map_err(|_| bad(format!("a chunk of {ns} without {name}")))?;
                Ok(d.values().cloned().collect())
            };
            let owner = owner_at(ch, at)
                .ok_or_else(|| bad(format!("a chunk of {ns} without shard: {ch}")))?;
            coll.chunks.push((bound("min")?, bound("max")?, owner));
        }
        for c in own.collections.values_mut() {
            c.chunks.sort_by(|a, b| compare_keys(&a.0, &b.0));
        }
        for d in databases {
            if let (Ok(db), Ok(primary)) = (d.get_str("_id"), d.get_str("primary")) {
                own.db_primary.insert(db.to_owned(), primary.to_owned());
            }
        }
        Ok(own)
    }

    /// Whether a document of `ns` could have another owner in `other` (the same catalog
    /// at another time): a chunk moved, the collection's key or sharding changed, or (for
    /// an unsharded collection) its database's primary shard moved. Splits alone do not
    /// count.
    pub fn differs_for(&self, other: &Ownership, ns: &str) -> bool {
        match (self.collections.get(ns), other.collections.get(ns)) {
            (None, None) => {
                let db = ns.split('.').next().unwrap_or("");
                self.db_primary.get(db) != other.db_primary.get(db)
            }
            (Some(a), Some(b)) => {
                if a.key != b.key || a.hashed != b.hashed {
                    return true;
                }
                // Every chunk's range is owned by the same shard in the other view.
                let same = |x: &Sharded, y: &Sharded| {
                    x.chunks.iter().all(|(min, max, owner)| {
                        let i = y
                            .chunks
                            .partition_point(|(m, _, _)| compare_keys(m, min) != Ordering::Greater);
                        // The chunks of `y` overlapping [min, max) all belong to `owner`.
                        let start = i.saturating_sub(1);
                        y.chunks[start..]
                            .iter()
                            .take_while(|(m, _, _)| compare_keys(m, max) == Ordering::Less)
                            .filter(|(_, m2, _)| compare_keys(m2, min) == Ordering::Greater)
                            .all(|(_, _, o)| o == owner)
                    })
                };
                !(same(a, b) && same(b, a))
            }
            _ => true,
        }
    }

    /// Whether `ns` is sharded.
    pub fn is_sharded(&self, ns: &str) -> bool {
        self.collections.contains_key(ns)
    }

    /// Who must emit `doc` of `ns`.
    ///
    /// # Errors
    /// A hashed shard key, or a key no chunk covers.
    pub fn owner<'a>(&'a self, ns: &str, doc: &Document) -> Result<Owner<'a>, OwnershipError> {
        let Some(coll) = self.collections.get(ns) else {
            let db = ns.split('.').next().unwrap_or("");
            return Ok(match self.db_primary.get(db) {
                Some(p) => Owner::Shard(p),
                None => Owner::Unknown,
            });
        };
        if coll.hashed {
            return Err(OwnershipError::Hashed {
                ns: ns.to_owned(),
                key: coll.key.join(", "),
            });
        }
        let key: Vec<Bson> = coll
            .key
            .iter()
            .map(|path| lookup(doc, path).cloned().unwrap_or(Bson::Null))
            .collect();
        // The last chunk whose min <= key.
        let i = coll
            .chunks
            .partition_point(|(min, _, _)| compare_keys(min, &key) != Ordering::Greater);
        match i.checked_sub(1).and_then(|i| coll.chunks.get(i)) {
            Some((_, max, owner)) if compare_keys(&key, max) == Ordering::Less => {
                Ok(Owner::Shard(owner))
            }
            _ => Err(OwnershipError::NoChunk {
                ns: ns.to_owned(),
                key,
            }),
        }
    }
}

/// The owner of a chunk at `at`: the newest history element valid at `at`, else the
/// current `shard`.
fn owner_at(chunk: &Document, at: Timestamp) -> Option<String> {
    if let Ok(history) = chunk.get_array("history") {
        for h in history.iter().filter_map(Bson::as_document) {
            if let (Ok(valid_after), Ok(shard)) =
                (h.get_timestamp("validAfter"), h.get_str("shard"))
            {
                if (valid_after.time, valid_after.increment) <= (at.time, at.increment) {
                    return Some(shard.to_owned());
                }
            }
        }
    }
    chunk.get_str("shard").ok().map(str::to_owned)
}

/// A dotted path in a document (`a.b`); arrays are not traversed (shard keys cannot be
/// arrays).
fn lookup<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_document()?.get(p)?;
    }
    Some(cur)
}

fn compare_keys(a: &[Bson], b: &[Bson]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match compare(x, y) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    a.len().cmp(&b.len())
}

/// MongoDB's canonical type rank (`canonicalizeBSONType`).
fn rank(v: &Bson) -> i32 {
    match v {
        Bson::MinKey => -1,
        Bson::Undefined => 0,
        Bson::Null => 5,
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_) => 10,
        Bson::String(_) | Bson::Symbol(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => 127,
    }
}

/// Compares two values in MongoDB's BSON order.
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => int(a).cmp(&int(b)),
        (x, y) if ra == 10 => number(x).total_cmp(&number(y)),
        (Bson::String(x), Bson::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::Document(x), Bson::Document(y)) => compare_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                match compare(p, q) {
                    Ordering::Equal => {}
                    other => return other,
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        _ => Ordering::Equal,
    }
}

fn int(v: &Bson) -> i64 {
    match v {
        Bson::Int32(x) => i64::from(*x),
        Bson::Int64(x) => *x,
        _ => 0,
    }
}

/// A number as f64; NaN sorts first among numbers, as in mongod.
fn number(v: &Bson) -> f64 {
    match v {
        Bson::Double(x) if x.is_nan() => f64::NEG_INFINITY,
        Bson::Double(x) => *x,
        Bson::Int32(x) => f64::from(*x),
        Bson::Int64(x) => *x as f64,
        Bson::Decimal128(d) => d.to_string().parse().unwrap_or(f64::NAN),
        _ => 0.0,
    }
}

fn compare_docs(x: &Document, y: &Document) -> Ordering {
    for ((kx, vx), (ky, vy)) in x.iter().zip(y.iter()) {
        let o = rank(vx)
            .cmp(&rank(vy))
            .then_with(|| kx.as_bytes().cmp(ky.as_bytes()))
            .then_with(|| compare(vx, vy));
        if o != Ordering::Equal {
            return o;
        }
    }
    x.len().cmp(&y.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn ts(t: u32, i: u32) -> Timestamp {
        Timestamp {
            time: t,
            increment: i,
        }
    }

    fn catalog(at: Timestamp) -> Ownership {
        let colls = [
            doc! {"_id": "shop.orders", "key": {"_id": 1}},
            doc! {"_id": "shop.items", "key": {"sku": 1, "n": 1}},
            doc! {"_id": "shop.hashed", "key": {"k": "hashed"}},
            doc! {"_id": "shop.old", "key": {"_id": 1}, "dropped": true},
        ];
        let chunks = [
            doc! {"ns": "shop.orders", "min": {"_id": Bson::MinKey}, "max": {"_id": 100},
            "shard": "b", "history": [{"validAfter": ts(50, 1), "shard": "b"},
                                      {"validAfter": ts(10, 1), "shard": "a"}]},
            doc! {"ns": "shop.orders", "min": {"_id": 100}, "max": {"_id": Bson::MaxKey},
            "shard": "b", "history": [{"validAfter": ts(10, 1), "shard": "b"}]},
            doc! {"ns": "shop.items", "min": {"sku": Bson::MinKey, "n": Bson::MinKey},
            "max": {"sku": "m", "n": Bson::MinKey}, "shard": "a"},
            doc! {"ns": "shop.items", "min": {"sku": "m", "n": Bson::MinKey},
            "max": {"sku": Bson::MaxKey, "n": Bson::MaxKey}, "shard": "b"},
        ];
        let dbs = [doc! {"_id": "shop", "primary": "a"}];
        Ownership::from_catalog(&colls, &chunks, &dbs, at).unwrap()
    }

    /// A moved chunk makes two times differ for its collection only; a split without a
    /// move does not.
    #[test]
    fn ownership_differs_where_a_chunk_moved() {
        let (before, after) = (catalog(ts(40, 0)), catalog(ts(50, 1)));
        assert!(before.differs_for(&after, "shop.orders"));
        assert!(!before.differs_for(&after, "shop.items"));
        assert!(!before.differs_for(&catalog(ts(45, 0)), "shop.orders"));
        assert!(!before.differs_for(&after, "shop.unsharded"));
        // shop.items split at "t" on the same shard.
        let colls = [doc! {"_id": "shop.items", "key": {"sku": 1, "n": 1}}];
        let split = [
            doc! {"ns": "shop.items", "min": {"sku": Bson::MinKey, "n": Bson::MinKey},
            "max": {"sku": "m", "n": Bson::MinKey}, "shard": "a"},
            doc! {"ns": "shop.items", "min": {"sku": "m", "n": Bson::MinKey},
            "max": {"sku": "t", "n": Bson::MinKey}, "shard": "b"},
            doc! {"ns": "shop.items", "min": {"sku": "t", "n": Bson::MinKey},
            "max": {"sku": Bson::MaxKey, "n": Bson::MaxKey}, "shard": "b"},
        ];
        let dbs = [doc! {"_id": "shop", "primary": "a"}];
        let s = Ownership::from_catalog(&colls, &split, &dbs, ts(60, 0)).unwrap();
        assert!(!before.differs_for(&s, "shop.items"));
        // The upper part moved to a: differs.
        let mut moved = split.clone();
        moved[2].insert("shard", "a");
        let m = Ownership::from_catalog(&colls, &moved, &dbs, ts(60, 0)).unwrap();
        assert!(before.differs_for(&m, "shop.items"));
        assert!(m.differs_for(&before, "shop.items"));
        // The database's primary moved: its unsharded collections differ.
        let p = Ownership::from_catalog(
            &colls,
            &split,
            &[doc! {"_id": "shop", "primary": "b"}],
            ts(60, 0),
        )
        .unwrap();
        assert!(before.differs_for(&p, "shop.unsharded"));
    }

    #[test]
    fn the_owner_at_the_snapshot_time_follows_the_chunk_history() {
        let before = catalog(ts(40, 0));
        let after = catalog(ts(50, 1));
        let d = doc! {"_id": 5};
        assert_eq!(before.owner("shop.orders", &d).unwrap(), Owner::Shard("a"));
        assert_eq!(after.owner("shop.orders", &d).unwrap(), Owner::Shard("b"));
        assert_eq!(
            before.owner("shop.orders", &doc! {"_id": 100}).unwrap(),
            Owner::Shard("b"),
            "max is exclusive, min inclusive"
        );
    }

    #[test]
    fn compound_keys_missing_fields_and_unsharded_collections() {
        let c = catalog(ts(60, 0));
        assert_eq!(
            c.owner("shop.items", &doc! {"sku": "a", "n": 3}).unwrap(),
            Owner::Shard("a")
        );
        assert_eq!(
            c.owner("shop.items", &doc! {"sku": "m", "n": 3}).unwrap(),
            Owner::Shard("b")
        );
        // A missing shard-key field is null, which sorts before strings.
        assert_eq!(
            c.owner("shop.items", &doc! {"n": 3}).unwrap(),
            Owner::Shard("a")
        );
        assert_eq!(
            c.owner("shop.notes", &doc! {"_id": 1}).unwrap(),
            Owner::Shard("a"),
            "unsharded: the database's primary shard"
        );
        assert_eq!(
            c.owner("other.x", &doc! {"_id": 1}).unwrap(),
            Owner::Unknown
        );
        assert!(
            !c.is_sharded("shop.old"),
            "dropped collections are left out"
        );
        assert!(matches!(
            c.owner("shop.hashed", &doc! {"k": 1}),
            Err(OwnershipError::Hashed { .. })
        ));
    }

    #[test]
    fn bson_order_is_mongodb_s() {
        use std::cmp::Ordering::*;
        let cases = [
            (Bson::MinKey, Bson::Null, Less),
            (Bson::Null, Bson::Int32(-5), Less),
            (Bson::Int32(1), Bson::Double(1.0), Equal),
            (Bson::Int64(2), Bson::Double(1.5), Greater),
            (Bson::Double(f64::NAN), Bson::Int32(-1000), Less),
            (Bson::Int64(i64::MAX), Bson::Int64(i64::MAX - 1), Greater),
            (Bson::String("b".into()), Bson::String("ab".into()), Greater),
            (Bson::String("a".into()), Bson::String("ab".into()), Less),
            (Bson::Int32(1_000_000), Bson::String("".into()), Less),
            (Bson::String("z".into()), Bson::Document(doc! {}), Less),
            (
                Bson::ObjectId(bson::oid::ObjectId::from_bytes([0; 12])),
                Bson::Boolean(false),
                Less,
            ),
            (
                Bson::Boolean(true),
                Bson::DateTime(bson::DateTime::from_millis(0)),
                Less,
            ),
            (Bson::Timestamp(ts(1, 1)), Bson::MaxKey, Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(&a, &b), want, "{a:?} vs {b:?}");
            assert_eq!(compare(&b, &a), want.reverse(), "{b:?} vs {a:?}");
        }
    }
}

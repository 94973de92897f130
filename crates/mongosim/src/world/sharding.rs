//! The sharding catalog: shards, chunks of collections sharded on `_id`, and chunk
//! migrations (`fromMigrate` inserts on the recipient, then deletes on the donor).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use bson::{doc, Bson, Document};

use super::{CmdError, Cursor, World};
use crate::matcher;

/// Lifecycle of a shard in config.shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    /// Normal member.
    Active,
    /// removeShard started.
    Draining,
    /// removeShard completed.
    Removed,
}

/// A shard registered in the config servers.
#[derive(Debug, Clone)]
pub struct ShardEntry {
    /// `shard01`...
    pub name: String,
    /// Index of its replica set.
    pub set: usize,
    /// Draining or not.
    pub state: ShardState,
}

/// A chunk `[min, max)` of a collection sharded on `_id`.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Inclusive lower bound (MinKey for the first chunk).
    pub min: Bson,
    /// Exclusive upper bound (MaxKey for the last chunk).
    pub max: Bson,
    /// Owning shard.
    pub shard: String,
    /// Ownership history, newest first: `(validAfter, shard)`, as config.chunks keeps it
    /// (`ChunkHistoryBase` in `src/mongo/s/catalog/type_chunk_base.idl`: "The time after
    /// which this chunk is at this shard"); the first element's time is
    /// `onCurrentShardSince`.
    pub history: Vec<(bson::Timestamp, String)>,
}

impl Chunk {
    /// The shard that owned the chunk at `at` (`None` before its first history element).
    pub fn owner_at(&self, at: bson::Timestamp) -> Option<&str> {
        self.history
            .iter()
            .find(|(valid_after, _)| {
                (valid_after.time, valid_after.increment) <= (at.time, at.increment)
            })
            .map(|(_, s)| s.as_str())
    }

    /// Whether `id` falls in this chunk.
    pub fn contains(&self, id: &Bson) -> bool {
        matcher::compare(&self.min, id).is_le() && matcher::compare(id, &self.max).is_lt()
    }
}

/// A database in the sharding catalog (`config.databases`).
#[derive(Debug, Clone)]
pub struct DatabaseEntry {
    /// The primary shard: it holds the database's unsharded collections and coordinates
    /// its DDL.
    pub primary: String,
    /// `version.uuid`.
    pub uuid: bson::Uuid,
}

/// The sharding catalog.
#[derive(Debug, Clone)]
pub struct Sharding {
    /// Databases and their primary shards, by name.
    pub databases: BTreeMap<String, DatabaseEntry>,
    /// Index of the config server set.
    pub config_set: usize,
    /// Registered shards.
    pub shards: Vec<ShardEntry>,
    /// Chunks by namespace, ordered by `min`.
    pub collections: BTreeMap<String, Vec<Chunk>>,
    /// Split points for newly sharded collections.
    pub split_points: Vec<Bson>,
    /// The mongos address.
    pub mongos: SocketAddr,
    /// Open mongos cursors.
    pub cursors: HashMap<i64, Cursor>,
    /// Whether the mongos process is up.
    pub mongos_alive: bool,
    /// Shard keys that are not `{_id: 1}` (set by reshardCollection), by namespace.
    pub keys: BTreeMap<String, Document>,
    /// Collections tracked as unsplittable (8.0 moveCollection / unshardCollection).
    pub unsplittable: std::collections::BTreeSet<String>,
}

impl World {
    /// Sharding catalog, or an error for non-sharded worlds.
    ///
    /// # Errors
    /// IllegalOperation when the world is not a sharded cluster.
    pub fn sharding(&self) -> Result<&Sharding, CmdError> {
        self.sharding
            .as_ref()
            .ok_or_else(|| CmdError::new(20, "IllegalOperation", "not a sharded cluster"))
    }

    /// The primary shard of database `db`, registering the database with the first active
    /// shard as its primary on first use (as mongos creates a database implicitly on its
    /// first write); `None` outside a sharded cluster or without an active shard.
    ///
    /// A database whose primary shard was removed moves to the first active shard (the
    /// server makes removeShard wait for a `movePrimary`; mongosim does it implicitly).
    pub fn db_primary(&mut self, db: &str) -> Option<String> {
        let sh = self.sharding.as_mut()?;
        if let Some(d) = sh.databases.get(db) {
            let gone = sh
                .shards
                .iter()
                .any(|x| x.name == d.primary && x.state == ShardState::Removed);
            if !gone {
                return Some(d.primary.clone());
            }
            let next = sh
                .shards
                .iter()
                .find(|x| x.state == ShardState::Active)?
                .name
                .clone();
            if let Some(d) = sh.databases.get_mut(db) {
                d.primary = next.clone();
            }
            return Some(next);
        }
        let first = sh
            .shards
            .iter()
            .find(|x| x.state == ShardState::Active)?
            .name
            .clone();
        sh.databases.insert(
            db.to_owned(),
            DatabaseEntry {
                primary: first.clone(),
                uuid: bson::Uuid::new(),
            },
        );
        Some(first)
    }

    /// Registers database `db` with primary shard `primary` (`enableSharding` with
    /// `primaryShard`).
    ///
    /// # Errors
    /// ShardNotFound (70) for an unknown or draining shard; NamespaceExists (48) when the
    /// database exists with another primary.
    pub fn register_database(
        &mut self,
        db: &str,
        primary: Option<&str>,
    ) -> Result<String, CmdError> {
        let Some(primary) = primary else {
            return self
                .db_primary(db)
                .ok_or_else(|| CmdError::new(70, "ShardNotFound", "no active shard"));
        };
        let sh = self
            .sharding
            .as_mut()
            .ok_or_else(|| CmdError::new(20, "IllegalOperation", "not a sharded cluster"))?;
        if !sh
            .shards
            .iter()
            .any(|x| x.name == primary && x.state == ShardState::Active)
        {
            return Err(CmdError::new(
                70,
                "ShardNotFound",
                format!("Shard {primary} not found"),
            ));
        }
        match sh.databases.get(db) {
            Some(d) if d.primary != primary => Err(CmdError::new(
                48,
                "NamespaceExists",
                format!(
                    "database {db} already exists with primary shard {}",
                    d.primary
                ),
            )),
            Some(_) => Ok(primary.to_owned()),
            None => {
                sh.databases.insert(
                    db.to_owned(),
                    DatabaseEntry {
                        primary: primary.to_owned(),
                        uuid: bson::Uuid::new(),
                    },
                );
                Ok(primary.to_owned())
            }
        }
    }

    /// Chunks of `ns`, sharding it on `_id` with the default split points on first use.
    /// The chunks go round-robin over the active shards starting at the database's primary
    /// shard, which so owns the first chunk (as the first chunk of a newly sharded
    /// collection is on the primary shard).
    pub fn chunks_for(&mut self, ns: &str) -> Vec<Chunk> {
        if self
            .sharding
            .as_ref()
            .is_none_or(|sh| sh.collections.contains_key(ns))
        {
            return self
                .sharding
                .as_ref()
                .and_then(|sh| sh.collections.get(ns).cloned())
                .unwrap_or_default();
        }
        let db = ns.split('.').next().unwrap_or(ns).to_owned();
        let primary = self.db_primary(&db);
        let created = self.tick_cluster_time();
        let Some(sh) = self.sharding.as_mut() else {
            return Vec::new();
        };
        let mut active: Vec<String> = sh
            .shards
            .iter()
            .filter(|x| x.state == ShardState::Active)
            .map(|x| x.name.clone())
            .collect();
        if let Some(p) = primary.and_then(|p| active.iter().position(|a| *a == p)) {
            active.rotate_left(p);
        }
        let mut bounds = vec![Bson::MinKey];
        bounds.extend(sh.split_points.iter().cloned());
        bounds.push(Bson::MaxKey);
        let chunks: Vec<Chunk> = bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let shard = active
                    .get(i % active.len().max(1))
                    .cloned()
                    .unwrap_or_default();
                Chunk {
                    min: w[0].clone(),
                    max: w[1].clone(),
                    history: vec![(created, shard.clone())],
                    shard,
                }
            })
            .collect();
        sh.collections.insert(ns.to_owned(), chunks.clone());
        chunks
    }

    /// Set index of a shard by name.
    pub fn shard_set(&self, shard: &str) -> Option<usize> {
        self.sharding
            .as_ref()?
            .shards
            .iter()
            .find(|x| x.name == shard && x.state != ShardState::Removed)
            .map(|x| x.set)
    }

    /// Moves the chunk of `ns` containing `key` to `to`: the recipient logs `fromMigrate`
    /// inserts, then the donor logs `fromMigrate` deletes (as in the mlaunch transcript of `mlaunch-fixtures/sharded-migration`).
    ///
    /// # Errors
    /// When the shard or a primary is missing.
    pub fn move_chunk(
        &mut self,
        ns: &str,
        key: &Bson,
        to: &str,
        now: Instant,
    ) -> Result<(), CmdError> {
        let chunks = self.chunks_for(ns);
        let idx = chunks
            .iter()
            .position(|c| c.contains(key))
            .ok_or_else(|| CmdError::new(2, "BadValue", "no chunk contains the key"))?;
        let chunk = chunks[idx].clone();
        if chunk.shard == to {
            return Ok(());
        }
        let donor_set = self.shard_set(&chunk.shard).ok_or_else(|| {
            CmdError::new(
                70,
                "ShardNotFound",
                format!("shard {} not found", chunk.shard),
            )
        })?;
        let recipient_set = self
            .shard_set(to)
            .ok_or_else(|| CmdError::new(70, "ShardNotFound", format!("Shard {to} not found")))?;
        let dp = self.sets[donor_set]
            .sync_source()
            .ok_or_else(CmdError::not_primary)?;
        let rp = self.sets[recipient_set]
            .sync_source()
            .ok_or_else(CmdError::not_primary)?;
        let docs: Vec<Document> = self.sets[donor_set].nodes[dp]
            .data
            .get(ns)
            .map(|c| {
                c.iter()
                    .filter(|d| d.get("_id").is_some_and(|id| chunk.contains(id)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
        // Recipient clones the range (skipping ids it already holds as orphans).
        let fresh: Vec<Document> = docs
            .into_iter()
            .filter(|d| {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                self.sets[recipient_set].nodes[rp]
                    .data
                    .get(ns)
                    .is_none_or(|c| !c.contains(&id))
            })
            .collect();
        if !fresh.is_empty() {
            self.insert(recipient_set, rp, ns, fresh, true, now)
                .map_err(|(_, e)| e)?;
        } else {
            self.ensure_collection(recipient_set, rp, ns, true, now);
        }
        // The commit: ownership moves at a cluster time after every cloned write.
        let valid_after = self.tick_cluster_time();
        if let Some(sh) = self.sharding.as_mut() {
            if let Some(c) = sh.collections.get_mut(ns) {
                c[idx].shard = to.to_owned();
                c[idx].history.insert(0, (valid_after, to.to_owned()));
            }
        }
        // The range deleter removes the donor's copies after the commit (at once here, or
        // later while deferred: until then they are orphans).
        if self.defer_range_deletion {
            self.pending_range_deletions
                .push((donor_set, ns.to_owned(), ids));
            return Ok(());
        }
        for id in ids {
            self.delete(donor_set, dp, ns, &doc! {"_id": id}, true, true, now)?;
        }
        Ok(())
    }

    /// Runs the range deletions deferred by [`World::defer_range_deletion`] on each donor's
    /// current primary (`fromMigrate` deletes, as mongod's range deleter logs them).
    ///
    /// # Errors
    /// When a donor has no writable primary (the deletions stay pending).
    pub fn run_range_deletions(&mut self, now: Instant) -> Result<(), CmdError> {
        while let Some((set, ns, ids)) = self.pending_range_deletions.first().cloned() {
            let p = self.sets[set]
                .sync_source()
                .ok_or_else(CmdError::not_primary)?;
            for id in ids {
                self.delete(set, p, &ns, &doc! {"_id": id}, true, true, now)?;
            }
            self.pending_range_deletions.remove(0);
        }
        Ok(())
    }

    /// Advances the simulation's cluster time by one tick and returns it (the time of a
    /// catalog change such as a migration's commit).
    pub fn tick_cluster_time(&mut self) -> bson::Timestamp {
        let now = super::now_secs();
        let t = if now > self.cluster_time.time {
            bson::Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            bson::Timestamp {
                time: self.cluster_time.time,
                increment: self.cluster_time.increment + 1,
            }
        };
        self.cluster_time = t;
        t
    }
}

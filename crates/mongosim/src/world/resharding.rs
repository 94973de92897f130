//! Resharding (`reshardCollection` from 5.0, `moveCollection` / `unshardCollection` from
//! 8.0, which the server runs as resharding operations) and `movePrimary`: the entries
//! each shard logs, with a simplified data copy. The shapes and their sources are in the
//! crate documentation ("Resharding and movePrimary").
//!
//! ```text
//!   begin:    recipients  create <db>.system.resharding.<source uuid>  (ui: resharding uuid)
//!             donors      n reshardBegin  (fromMigrate)
//!             recipients  i ... (cloner inserts into the temporary collection)
//!   (held while `hold_resharding`; writes keep going to the donors)
//!   commit:   recipients  i/u/d on the temporary collection (the donors' writes applied)
//!             donors      n reshardFinalOp, one per recipient
//!             recipients  n reshardDoneCatchUp
//!             catalog     new uuid, new key, one chunk on the recipient
//!             recipients  c renameCollection temporary -> ns, dropTarget (fromMigrate 6.0+)
//!             donors only c drop ns (fromMigrate 6.0+)
//!             primary     n reshardCollection notification (6.0+)
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use bson::{doc, Bson, Document, Uuid};

use super::data::id_key;
use super::sharding::{Chunk, ShardState};
use super::{CmdError, World};
use crate::oplog::OpSpec;
use crate::version::ServerVersion;

/// The user command a resharding operation runs for (the server's `provenance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReshardProvenance {
    /// `reshardCollection` (5.0+).
    ReshardCollection,
    /// `moveCollection` (8.0).
    MoveCollection,
    /// `unshardCollection` (8.0).
    UnshardCollection,
}

impl ReshardProvenance {
    /// The command's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReshardProvenance::ReshardCollection => "reshardCollection",
            ReshardProvenance::MoveCollection => "moveCollection",
            ReshardProvenance::UnshardCollection => "unshardCollection",
        }
    }
}

/// A resharding operation between its clone and its cut-over.
#[derive(Debug, Clone)]
pub struct Resharding {
    /// The collection.
    pub ns: String,
    /// Which command started it.
    pub provenance: ReshardProvenance,
    /// The new shard key.
    pub key: Document,
    /// The shard key before.
    pub old_key: Document,
    /// `numInitialChunks` as the command gave it.
    pub num_initial_chunks: Option<i64>,
    /// The operation's UUID, which becomes the collection's UUID at the cut-over (the
    /// temporary collection is created with it).
    pub resharding_uuid: Uuid,
    /// The collection's UUID before (the catalog's: the primary shard's).
    pub source_uuid: Uuid,
    /// `<db>.system.resharding.<source uuid>`.
    pub temp_ns: String,
    /// Shards that owned chunks before.
    pub donors: Vec<String>,
    /// The shard that owns the collection after (mongosim gives the new key one chunk).
    pub recipient: String,
}

fn split(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

fn shard_not_found(name: &str) -> CmdError {
    CmdError::new(70, "ShardNotFound", format!("Shard {name} not found"))
}

/// `doc` with `destinedRecipient: to` where `oplog_entry.idl` puts it
/// (`DurableReplOperation`: after `needsRetryImage`, before `stmtId` and `fromMigrate`,
/// which precede the optime fields).
pub(super) fn with_destined_recipient(doc: Document, to: String) -> Document {
    const AFTER: &[&str] = &[
        "stmtId",
        "fromMigrate",
        "checkExistenceForDiffInsert",
        "ts",
        "t",
        "v",
        "wall",
        "prevOpTime",
    ];
    let mut out = Document::new();
    let mut to = Some(to);
    for (k, v) in doc {
        if AFTER.contains(&k.as_str()) {
            if let Some(to) = to.take() {
                out.insert("destinedRecipient", to);
            }
        }
        out.insert(k, v);
    }
    if let Some(to) = to {
        out.insert("destinedRecipient", to);
    }
    out
}

impl World {
    /// The `destinedRecipient` of an entry a donor logs while its collection is being
    /// resharded: its writes to the collection (`i`, `u`, `d`) and its `reshardFinalOp`
    /// no-ops. mongosim's operations have one recipient, which every document goes to.
    pub(super) fn destined_recipient(&self, s: usize, spec: &OpSpec) -> Option<String> {
        let op = self.resharding.get(&spec.ns)?;
        let final_op = spec.op == "n"
            && spec
                .o2
                .as_ref()
                .is_some_and(|o2| o2.get_str("type").ok() == Some("reshardFinalOp"));
        if !(matches!(spec.op, "i" | "u" | "d") || final_op) || spec.from_migrate {
            return None;
        }
        let shard = &self
            .sharding
            .as_ref()?
            .shards
            .iter()
            .find(|x| x.set == s)?
            .name;
        op.donors.contains(shard).then(|| op.recipient.clone())
    }

    /// The writable primary of shard `name`: `(set, node)`.
    fn shard_primary(&self, name: &str) -> Result<(usize, usize), CmdError> {
        let s = self.shard_set(name).ok_or_else(|| shard_not_found(name))?;
        let p = self.sets[s]
            .primary_index()
            .ok_or_else(CmdError::not_primary)?;
        Ok((s, p))
    }

    /// Starts resharding `ns`: the recipient creates the temporary collection, each donor
    /// logs `reshardBegin`, and the recipient clones the donors' documents into the
    /// temporary collection. The cut-over is [`World::reshard_commit`].
    ///
    /// `to_shard` is the recipient (moveCollection, unshardCollection); without it the
    /// recipient is the last active shard (reshardCollection; the server spreads the new
    /// chunks over the shards, mongosim gives the new key one chunk).
    ///
    /// # Errors
    /// NamespaceNotSharded (118) for a collection mongos does not route,
    /// ConflictingOperationInProgress (117) when `ns` is already being resharded,
    /// ShardNotFound (70), NotWritablePrimary when a participant has no primary.
    pub fn reshard_begin(
        &mut self,
        ns: &str,
        provenance: ReshardProvenance,
        key: Document,
        to_shard: Option<&str>,
        num_initial_chunks: Option<i64>,
        now: Instant,
    ) -> Result<(), CmdError> {
        let (db, _) = split(ns);
        let sh = self.sharding()?;
        let Some(chunks) = sh.collections.get(ns) else {
            return Err(CmdError::new(
                118,
                "NamespaceNotSharded",
                format!("{ns} is not tracked by the sharding catalog"),
            ));
        };
        if self.resharding.contains_key(ns) {
            return Err(CmdError::new(
                117,
                "ConflictingOperationInProgress",
                format!("{ns} is already being resharded"),
            ));
        }
        let mut donors: Vec<String> = Vec::new();
        for c in chunks {
            if !donors.contains(&c.shard) {
                donors.push(c.shard.clone());
            }
        }
        let old_key = sh.keys.get(ns).cloned().unwrap_or(doc! {"_id": 1});
        let recipient = match to_shard {
            Some(t) => {
                if !sh
                    .shards
                    .iter()
                    .any(|x| x.name == t && x.state == ShardState::Active)
                {
                    return Err(shard_not_found(t));
                }
                t.to_owned()
            }
            None => sh
                .shards
                .iter()
                .rev()
                .find(|x| x.state == ShardState::Active)
                .map(|x| x.name.clone())
                .ok_or_else(|| CmdError::new(70, "ShardNotFound", "no active shard"))?,
        };
        let primary = self
            .db_primary(db)
            .ok_or_else(|| CmdError::new(70, "ShardNotFound", "no active shard"))?;
        let (ps, _) = self.shard_primary(&primary)?;
        let source_uuid = self.collection_uuid(ps, ns);
        let resharding_uuid = Uuid::new();
        let temp_ns = format!("{db}.system.resharding.{source_uuid}");
        // Every participant needs a primary before anything is logged.
        let (rs, rp) = self.shard_primary(&recipient)?;
        let donor_nodes: Vec<(String, usize, usize)> = donors
            .iter()
            .map(|d| self.shard_primary(d).map(|(s, p)| (d.clone(), s, p)))
            .collect::<Result<_, _>>()?;
        let session = self.session.take();

        // The recipient creates the temporary collection with the operation's UUID.
        self.sets[rs].uuids.insert(temp_ns.clone(), resharding_uuid);
        self.ensure_collection(rs, rp, &temp_ns, false, now);
        // Each donor marks the start (fromMigrate, so change streams skip it).
        let o2 = if self.version >= ServerVersion::V6_0 {
            doc! {"reshardBegin": ns, "reshardingUUID": resharding_uuid}
        } else {
            doc! {"type": "reshardBegin", "reshardingUUID": resharding_uuid}
        };
        for (_, s, p) in &donor_nodes {
            let ui = self.collection_uuid(*s, ns);
            self.write(
                *s,
                *p,
                &OpSpec {
                    op: "n",
                    ns: ns.to_owned(),
                    ui: Some(ui),
                    o: doc! {"msg": "Created temporary resharding collection"},
                    o2: Some(o2.clone()),
                    from_migrate: true,
                },
                now,
            );
        }
        // The cloner: plain inserts into the temporary collection.
        let mut docs: Vec<Document> = Vec::new();
        for (_, s, p) in &donor_nodes {
            if let Some(c) = self.sets[*s].nodes[*p].data.get(ns) {
                docs.extend(c.iter().cloned());
            }
        }
        let result = if docs.is_empty() {
            Ok(0)
        } else {
            self.insert(rs, rp, &temp_ns, docs, false, now)
        };
        self.session = session;
        result.map_err(|(_, e)| e)?;
        self.resharding.insert(
            ns.to_owned(),
            Resharding {
                ns: ns.to_owned(),
                provenance,
                key,
                old_key,
                num_initial_chunks,
                resharding_uuid,
                source_uuid,
                temp_ns,
                donors,
                recipient,
            },
        );
        Ok(())
    }

    /// The cut-over of the resharding of `ns` started by [`World::reshard_begin`]: the
    /// recipient applies the donors' writes made since the clone to the temporary
    /// collection, the donors block writes (`reshardFinalOp`), the recipient reports its
    /// catch-up (`reshardDoneCatchUp`), the catalog commits the new UUID, key and chunk,
    /// the recipient renames the temporary collection onto `ns`, the donors that are not
    /// the recipient drop their copy, and (6.0+) the primary shard logs the
    /// `reshardCollection` notification.
    ///
    /// # Errors
    /// NoSuchReshardCollection (676) when `ns` is not being resharded; NotWritablePrimary
    /// when a participant has no primary (the operation stays open and can be retried).
    pub fn reshard_commit(&mut self, ns: &str, now: Instant) -> Result<(), CmdError> {
        let op = self.resharding.get(ns).cloned().ok_or_else(|| {
            CmdError::new(
                676,
                "NoSuchReshardCollection",
                format!("no resharding operation on {ns}"),
            )
        })?;
        let (db, _) = split(ns);
        let (rs, rp) = self.shard_primary(&op.recipient)?;
        let donor_nodes: Vec<(String, usize, usize)> = op
            .donors
            .iter()
            .map(|d| self.shard_primary(d).map(|(s, p)| (d.clone(), s, p)))
            .collect::<Result<_, _>>()?;
        let primary = self
            .db_primary(db)
            .ok_or_else(|| CmdError::new(70, "ShardNotFound", "no active shard"))?;
        let (ps, pp) = self.shard_primary(&primary)?;
        let v6 = self.version >= ServerVersion::V6_0;
        let session = self.session.take();
        let result = self.reshard_cut_over(&op, (rs, rp), &donor_nodes, (ps, pp), v6, now);
        self.session = session;
        result?;
        self.resharding.remove(ns);
        Ok(())
    }

    fn reshard_cut_over(
        &mut self,
        op: &Resharding,
        (rs, rp): (usize, usize),
        donor_nodes: &[(String, usize, usize)],
        (ps, pp): (usize, usize),
        v6: bool,
        now: Instant,
    ) -> Result<(), CmdError> {
        let ns = op.ns.as_str();
        // Oplog application: bring the temporary collection to the donors' current state.
        let mut want: BTreeMap<Vec<u8>, Document> = BTreeMap::new();
        for (_, s, p) in donor_nodes {
            if let Some(c) = self.sets[*s].nodes[*p].data.get(ns) {
                for d in c.iter() {
                    want.insert(id_key(d.get("_id").unwrap_or(&Bson::Null)), d.clone());
                }
            }
        }
        let have: BTreeMap<Vec<u8>, Document> = self.sets[rs].nodes[rp]
            .data
            .get(&op.temp_ns)
            .map(|c| {
                c.iter()
                    .map(|d| (id_key(d.get("_id").unwrap_or(&Bson::Null)), d.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (k, d) in &want {
            let id = d.get("_id").cloned().unwrap_or(Bson::Null);
            match have.get(k) {
                None => {
                    self.insert(rs, rp, &op.temp_ns, vec![d.clone()], false, now)
                        .map_err(|(_, e)| e)?;
                }
                Some(old) if old != d => {
                    self.update(rs, rp, &op.temp_ns, &doc! {"_id": id}, d, false, false, now)?;
                }
                Some(_) => {}
            }
        }
        for (k, d) in &have {
            if !want.contains_key(k) {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                self.delete(rs, rp, &op.temp_ns, &doc! {"_id": id}, true, false, now)?;
            }
        }
        // The donors block writes: one reshardFinalOp per recipient.
        for (_, s, p) in donor_nodes {
            let ui = self.collection_uuid(*s, ns);
            self.write(
                *s,
                *p,
                &OpSpec {
                    op: "n",
                    ns: ns.to_owned(),
                    ui: Some(ui),
                    o: doc! {"msg": format!("Writes to {ns} are temporarily blocked for resharding.")},
                    o2: Some(
                        doc! {"type": "reshardFinalOp", "reshardingUUID": op.resharding_uuid},
                    ),
                    from_migrate: false,
                },
                now,
            );
        }
        // The recipient has caught up.
        let o2 = if v6 {
            doc! {"reshardDoneCatchUp": op.temp_ns.clone(), "reshardingUUID": op.resharding_uuid}
        } else {
            doc! {"type": "reshardDoneCatchUp", "reshardingUUID": op.resharding_uuid}
        };
        self.write(
            rs,
            rp,
            &OpSpec {
                op: "n",
                ns: op.temp_ns.clone(),
                ui: Some(op.resharding_uuid),
                o: doc! {"msg": "The temporary resharding collection now has a strictly consistent view of the data"},
                o2: Some(o2),
                from_migrate: false,
            },
            now,
        );
        // The coordinator commits: one chunk of the new key on the recipient.
        let at = self.tick_cluster_time();
        if let Some(sh) = self.sharding.as_mut() {
            sh.collections.insert(
                ns.to_owned(),
                vec![Chunk {
                    min: Bson::MinKey,
                    max: Bson::MaxKey,
                    shard: op.recipient.clone(),
                    history: vec![(at, op.recipient.clone())],
                }],
            );
            if op.key == doc! {"_id": 1} {
                sh.keys.remove(ns);
            } else {
                sh.keys.insert(ns.to_owned(), op.key.clone());
            }
            if op.provenance == ReshardProvenance::ReshardCollection {
                sh.unsplittable.remove(ns);
            } else {
                sh.unsplittable.insert(ns.to_owned());
            }
        }
        // The recipient renames the temporary collection onto the user's.
        self.rename_collection(rs, rp, &op.temp_ns, ns, true, false, v6, now)?;
        // Donors that are not the recipient drop their copy.
        for (name, s, p) in donor_nodes {
            if *name != op.recipient {
                self.drop_collection(*s, *p, ns, v6, now);
            }
        }
        // 6.0+: the primary shard's change-stream notification.
        if v6 {
            let mut o2 = doc! {
                "reshardCollection": ns,
                "reshardUUID": op.resharding_uuid,
                "shardKey": op.key.clone(),
                "oldShardKey": op.old_key.clone(),
                "unique": false,
            };
            if let Some(n) = op.num_initial_chunks {
                o2.insert("numInitialChunks", n);
            }
            if self.version >= ServerVersion::V8_0 {
                o2.insert("provenance", op.provenance.as_str());
            }
            self.write(
                ps,
                pp,
                &OpSpec {
                    op: "n",
                    ns: ns.to_owned(),
                    ui: Some(op.source_uuid),
                    o: doc! {"msg": format!("Reshard collection {ns} with shard key {}", op.key)},
                    o2: Some(o2),
                    from_migrate: false,
                },
                now,
            );
        }
        Ok(())
    }

    /// `movePrimary`: the new primary shard clones the database's unsharded collections
    /// (`fromMigrate` creates and inserts), the catalog moves the database, (7.0+) the old
    /// primary logs the `movePrimary` notification, then drops its copies. Returns the old
    /// primary shard.
    ///
    /// # Errors
    /// ShardNotFound (70) for an unknown or inactive shard, NamespaceNotFound (26) for an
    /// unknown database, NotWritablePrimary when a shard has no primary.
    pub fn move_primary(&mut self, db: &str, to: &str, now: Instant) -> Result<String, CmdError> {
        let sh = self.sharding()?;
        if !sh.databases.contains_key(db) {
            return Err(CmdError::new(
                26,
                "NamespaceNotFound",
                format!("Database {db} not found"),
            ));
        }
        if !sh
            .shards
            .iter()
            .any(|x| x.name == to && x.state == ShardState::Active)
        {
            return Err(shard_not_found(to));
        }
        let sharded: Vec<String> = sh.collections.keys().cloned().collect();
        let old = self
            .db_primary(db)
            .ok_or_else(|| CmdError::new(70, "ShardNotFound", "no active shard"))?;
        if old == to {
            return Ok(old);
        }
        let (os, op) = self.shard_primary(&old)?;
        let (ns_, np) = self.shard_primary(to)?;
        let prefix = format!("{db}.");
        let unsharded: Vec<String> = self.sets[os].nodes[op]
            .data
            .keys()
            .filter(|ns| ns.starts_with(&prefix) && !sharded.contains(ns))
            .filter(|ns| !split(ns).1.starts_with("system."))
            .cloned()
            .collect();
        let session = self.session.take();
        let mut result = Ok(());
        for ns in &unsharded {
            let docs: Vec<Document> = self.sets[os].nodes[op]
                .data
                .get(ns)
                .map(|c| c.iter().cloned().collect())
                .unwrap_or_default();
            self.ensure_collection(ns_, np, ns, true, now);
            if !docs.is_empty() {
                if let Err((_, e)) = self.insert(ns_, np, ns, docs, true, now) {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            if let Some(d) = self.sharding.as_mut().and_then(|s| s.databases.get_mut(db)) {
                d.primary = to.to_owned();
            }
            if self.version >= ServerVersion::V7_0 {
                self.write(
                    os,
                    op,
                    &OpSpec {
                        op: "n",
                        ns: db.to_owned(),
                        ui: None,
                        o: doc! {"msg": {"movePrimary": db}},
                        o2: Some(doc! {"movePrimary": db, "from": old.clone(), "to": to}),
                        from_migrate: false,
                    },
                    now,
                );
            }
            for ns in &unsharded {
                self.drop_collection(os, op, ns, false, now);
            }
        }
        self.session = session;
        result.map(|()| old)
    }
}

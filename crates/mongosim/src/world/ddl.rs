//! DDL on one replica set's primary: explicit create with options, drop, renameCollection,
//! dropDatabase, createIndexes (one `createIndexes` entry per index on an empty
//! collection, a two-phase `startIndexBuild` / `commitIndexBuild` pair otherwise),
//! dropIndexes and collMod, each logged with the `o` / `o2` fields of mongod's
//! `OpObserverImpl` (the sources are cited in the crate documentation). How mongos spreads
//! them over shards lives in `commands/ddl.rs`.

use std::time::Instant;

use bson::{doc, Bson, Document};

use super::{CmdError, World};
use crate::oplog::OpSpec;

/// What a set knows of a collection besides its documents: its options (as given to
/// `create` and changed by `collMod`) and its secondary indexes, shared by the set's
/// members (index builds are not replicated member by member here).
#[derive(Debug, Clone, Default)]
pub struct CollMeta {
    /// Collection options (`validator`, `capped`, ...), in the order they were given.
    pub options: Document,
    /// Index specifications other than `_id_`: `{v: 2, key, name, ...}`.
    pub indexes: Vec<Document>,
}

fn type_mismatch(field: &str, expected: &str) -> CmdError {
    CmdError::new(
        14,
        "TypeMismatch",
        format!("BSON field '{field}' is the wrong type, expected type '{expected}'"),
    )
}

fn ns_not_found(msg: String) -> CmdError {
    CmdError::new(26, "NamespaceNotFound", msg)
}

/// `{numRecords}` of a drop or rename `o2` (`makeObject2ForDropOrRename`; `appendNumber`
/// writes an int when the count fits one).
fn num_records(n: usize) -> Document {
    match i32::try_from(n) {
        Ok(v) => doc! {"numRecords": v},
        Err(_) => doc! {"numRecords": n as i64},
    }
}

fn split(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

impl World {
    /// Whether node `n` of set `s` holds collection `ns`.
    pub fn has_collection(&self, s: usize, n: usize, ns: &str) -> bool {
        self.sets[s].nodes[n].data.contains_key(ns)
    }

    /// Collections of database `db` on node `n` of set `s`, by name.
    pub fn collections_of(&self, s: usize, n: usize, db: &str) -> Vec<String> {
        let prefix = format!("{db}.");
        self.sets[s].nodes[n]
            .data
            .keys()
            .filter(|ns| ns.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// `create` with options: logs `{create: coll, <options>, idIndex}` (as
    /// `makeCreateCollCmdObj`: the name, the options, then the `_id` index spec).
    ///
    /// # Errors
    /// NamespaceExists (48) when the collection exists; NotWritablePrimary.
    pub fn create_with_options(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        options: Document,
        now: Instant,
    ) -> Result<(), CmdError> {
        self.check_writable(s, n)?;
        if self.has_collection(s, n, ns) {
            return Err(CmdError::new(
                48,
                "NamespaceExists",
                format!("Collection {ns} already exists."),
            ));
        }
        let (db, coll) = split(ns);
        let ui = self.collection_uuid(s, ns);
        let mut o = doc! {"create": coll};
        o.extend(options.clone());
        o.insert("idIndex", doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"});
        self.write(
            s,
            n,
            &OpSpec {
                op: "c",
                ns: format!("{db}.$cmd"),
                ui: Some(ui),
                o,
                o2: None,
                from_migrate: false,
            },
            now,
        );
        self.sets[s].catalog.insert(
            ns.to_owned(),
            CollMeta {
                options,
                indexes: Vec::new(),
            },
        );
        Ok(())
    }

    /// Drops `ns` on node `n` if it holds it: `{drop: coll}` with `o2: {numRecords}`
    /// (`onDropCollection`), `fromMigrate` when asked. Returns whether anything was logged.
    pub fn drop_collection(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        from_migrate: bool,
        now: Instant,
    ) -> bool {
        let Some(count) = self.sets[s].nodes[n].data.get(ns).map(|c| c.len()) else {
            return false;
        };
        let (db, coll) = split(ns);
        let ui = self.collection_uuid(s, ns);
        self.write(
            s,
            n,
            &OpSpec {
                op: "c",
                ns: format!("{db}.$cmd"),
                ui: Some(ui),
                o: doc! {"drop": coll},
                o2: Some(num_records(count)),
                from_migrate,
            },
            now,
        );
        let set = &mut self.sets[s];
        set.uuids.remove(ns);
        set.catalog.remove(ns);
        set.timeseries.remove(ns);
        true
    }

    /// Renames `from` to `to` on node `n`: `{renameCollection: from, to, stayTemp: false,
    /// dropTarget: <target UUID>}` with `o2: {numRecords}` of the dropped target
    /// (`preRenameCollection`). When the node does not hold `from`, it drops `to` instead
    /// (what a rename participant without the source does). Returns whether anything was
    /// logged.
    ///
    /// # Errors
    /// NamespaceNotFound (26) when `from` is missing and `participant` is false;
    /// NamespaceExists (48) when `to` exists without `drop_target`.
    #[allow(clippy::too_many_arguments)]
    pub fn rename_collection(
        &mut self,
        s: usize,
        n: usize,
        from: &str,
        to: &str,
        drop_target: bool,
        participant: bool,
        from_migrate: bool,
        now: Instant,
    ) -> Result<bool, CmdError> {
        self.check_writable(s, n)?;
        if !self.has_collection(s, n, from) {
            if participant {
                return Ok(self.drop_collection(s, n, to, from_migrate, now));
            }
            return Err(ns_not_found(format!(
                "Source collection {from} does not exist"
            )));
        }
        let target = self.sets[s].nodes[n].data.get(to).map(|c| c.len());
        if target.is_some() && !drop_target {
            return Err(CmdError::new(
                48,
                "NamespaceExists",
                "target namespace exists",
            ));
        }
        let (db, _) = split(from);
        let ui = self.collection_uuid(s, from);
        let mut o = doc! {"renameCollection": from, "to": to, "stayTemp": false};
        let mut o2 = None;
        if let Some(count) = target {
            let target_ui = self.collection_uuid(s, to);
            o.insert("dropTarget", target_ui);
            o2 = Some(num_records(count));
        }
        self.write(
            s,
            n,
            &OpSpec {
                op: "c",
                ns: format!("{db}.$cmd"),
                ui: Some(ui),
                o,
                o2,
                from_migrate,
            },
            now,
        );
        let set = &mut self.sets[s];
        set.uuids.insert(to.to_owned(), ui);
        set.uuids.remove(from);
        match set.catalog.remove(from) {
            Some(meta) => set.catalog.insert(to.to_owned(), meta),
            None => set.catalog.remove(to),
        };
        Ok(true)
    }

    /// `{dropDatabase: 1}` on `<db>.$cmd` (`onDropDatabase`), after dropping each remaining
    /// collection of the database (mongod drops them one by one, each logged as a drop).
    /// `held` says whether the database existed on the node when the operation began: a
    /// node without it logs nothing. Returns whether the `dropDatabase` entry was logged.
    pub fn drop_database_local(
        &mut self,
        s: usize,
        n: usize,
        db: &str,
        held: bool,
        now: Instant,
    ) -> bool {
        for ns in self.collections_of(s, n, db) {
            self.drop_collection(s, n, &ns, false, now);
        }
        if !held {
            return false;
        }
        self.write(
            s,
            n,
            &OpSpec {
                op: "c",
                ns: format!("{db}.$cmd"),
                ui: None,
                o: doc! {"dropDatabase": 1},
                o2: None,
                from_migrate: false,
            },
            now,
        );
        true
    }

    /// createIndexes on node `n`: creates the collection if needed (logging its `create`),
    /// then for the indexes that do not exist yet logs one `{createIndexes: coll, v, key,
    /// name, ...}` per index when the collection is empty on the node, or else a two-phase
    /// build: `{startIndexBuild: coll, indexBuildUUID, indexes: [...]}` then
    /// `{commitIndexBuild: coll, indexBuildUUID, indexes: [...]}`. Returns
    /// `(createdCollectionAutomatically, numIndexesBefore, numIndexesAfter)`.
    ///
    /// # Errors
    /// FailedToParse (9) for a spec without `key` or `name`, IndexKeySpecsConflict (86) for
    /// an existing name with another key, NotWritablePrimary.
    pub fn create_indexes(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        specs: &[Document],
        now: Instant,
    ) -> Result<(bool, i32, i32), CmdError> {
        self.check_writable(s, n)?;
        let mut wanted = Vec::new();
        for spec in specs {
            let (Ok(key), Ok(name)) = (spec.get_document("key"), spec.get_str("name")) else {
                return Err(CmdError::new(
                    9,
                    "FailedToParse",
                    format!("Error in specification {spec}: an index needs 'key' (an object) and 'name' (a string)"),
                ));
            };
            let mut norm = doc! {"v": 2, "key": key.clone(), "name": name};
            for (k, v) in spec {
                if !matches!(k.as_str(), "v" | "key" | "name" | "ns") {
                    norm.insert(k.clone(), v.clone());
                }
            }
            wanted.push(norm);
        }
        let created = !self.has_collection(s, n, ns);
        self.ensure_collection(s, n, ns, false, now);
        let existing = self.sets[s]
            .catalog
            .get(ns)
            .map(|m| m.indexes.clone())
            .unwrap_or_default();
        let before = existing.len() as i32 + 1;
        let mut fresh: Vec<Document> = Vec::new();
        for spec in wanted {
            let name = spec.get_str("name").unwrap_or_default();
            let same = existing
                .iter()
                .chain(fresh.iter())
                .find(|e| e.get_str("name").ok() == Some(name));
            match same {
                Some(e) if e.get("key") == spec.get("key") => {}
                Some(_) => {
                    return Err(CmdError::new(
                        86,
                        "IndexKeySpecsConflict",
                        format!("An existing index has the same name as the requested index but a different key: {name}"),
                    ))
                }
                None if name == "_id_" => {}
                None => fresh.push(spec),
            }
        }
        if fresh.is_empty() {
            return Ok((created, before, before));
        }
        let (db, coll) = split(ns);
        let ui = self.collection_uuid(s, ns);
        let empty = self.sets[s].nodes[n]
            .data
            .get(ns)
            .is_none_or(|c| c.is_empty());
        let cmd = |o: Document| OpSpec {
            op: "c",
            ns: format!("{db}.$cmd"),
            ui: Some(ui),
            o,
            o2: None,
            from_migrate: false,
        };
        if empty {
            for spec in &fresh {
                let mut o = doc! {"createIndexes": coll};
                o.extend(spec.clone());
                self.write(s, n, &cmd(o), now);
            }
        } else {
            let build = bson::Uuid::new();
            let list: Vec<Bson> = fresh.iter().cloned().map(Bson::Document).collect();
            for phase in ["startIndexBuild", "commitIndexBuild"] {
                let o = doc! {phase: coll, "indexBuildUUID": build, "indexes": list.clone()};
                self.write(s, n, &cmd(o), now);
            }
        }
        let after = before + fresh.len() as i32;
        self.sets[s]
            .catalog
            .entry(ns.to_owned())
            .or_default()
            .indexes
            .extend(fresh);
        Ok((created, before, after))
    }

    /// dropIndexes on node `n`: `index` is a name, `"*"` (every index but `_id_`), a key
    /// pattern or a list of names; each dropped index is logged as `{dropIndexes: coll,
    /// index: name}` with its spec as `o2` (`onDropIndex`). Returns `nIndexesWas`.
    ///
    /// # Errors
    /// NamespaceNotFound (26), IndexNotFound (27), InvalidOptions (72) for `_id_`.
    pub fn drop_indexes(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        index: &Bson,
        now: Instant,
    ) -> Result<i32, CmdError> {
        self.check_writable(s, n)?;
        if !self.has_collection(s, n, ns) {
            return Err(ns_not_found(format!("ns not found {ns}")));
        }
        let existing = self.sets[s]
            .catalog
            .get(ns)
            .map(|m| m.indexes.clone())
            .unwrap_or_default();
        let was = existing.len() as i32 + 1;
        let by_name = |name: &str| -> Result<Document, CmdError> {
            if name == "_id_" {
                return Err(CmdError::new(72, "InvalidOptions", "cannot drop _id index"));
            }
            existing
                .iter()
                .find(|e| e.get_str("name").ok() == Some(name))
                .cloned()
                .ok_or_else(|| {
                    CmdError::new(
                        27,
                        "IndexNotFound",
                        format!("index not found with name [{name}]"),
                    )
                })
        };
        let targets: Vec<Document> = match index {
            Bson::String(star) if star == "*" => existing.clone(),
            Bson::String(name) => vec![by_name(name)?],
            Bson::Array(names) => {
                let mut v = Vec::new();
                for name in names {
                    let Bson::String(name) = name else {
                        return Err(type_mismatch("index", "string"));
                    };
                    v.push(by_name(name)?);
                }
                v
            }
            Bson::Document(key) => {
                if key == &doc! {"_id": 1} {
                    return Err(CmdError::new(72, "InvalidOptions", "cannot drop _id index"));
                }
                vec![existing
                    .iter()
                    .find(|e| e.get_document("key").ok() == Some(key))
                    .cloned()
                    .ok_or_else(|| {
                        CmdError::new(
                            27,
                            "IndexNotFound",
                            format!("can't find index with key: {key}"),
                        )
                    })?]
            }
            _ => return Err(type_mismatch("index", "string or object")),
        };
        let (db, coll) = split(ns);
        let ui = self.collection_uuid(s, ns);
        for spec in &targets {
            let name = spec.get_str("name").unwrap_or_default().to_owned();
            self.write(
                s,
                n,
                &OpSpec {
                    op: "c",
                    ns: format!("{db}.$cmd"),
                    ui: Some(ui),
                    o: doc! {"dropIndexes": coll, "index": name.clone()},
                    o2: Some(spec.clone()),
                    from_migrate: false,
                },
                now,
            );
            if let Some(meta) = self.sets[s].catalog.get_mut(ns) {
                meta.indexes
                    .retain(|e| e.get_str("name").ok() != Some(&name));
            }
        }
        Ok(was)
    }

    /// collMod on node `n`: logs the command's own fields as `o` and `{collectionOptions_old:
    /// {uuid, <options before>}}` as `o2` (`onCollMod`), then records the new options.
    ///
    /// # Errors
    /// NamespaceNotFound (26), NotWritablePrimary.
    pub fn coll_mod(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        fields: &Document,
        now: Instant,
    ) -> Result<(), CmdError> {
        self.check_writable(s, n)?;
        if !self.has_collection(s, n, ns) {
            return Err(ns_not_found(format!("ns does not exist: {ns}")));
        }
        let (db, coll) = split(ns);
        let ui = self.collection_uuid(s, ns);
        let old = self.sets[s]
            .catalog
            .get(ns)
            .map(|m| m.options.clone())
            .unwrap_or_default();
        let mut old_options = doc! {"uuid": ui};
        old_options.extend(old);
        let mut o = doc! {"collMod": coll};
        o.extend(fields.clone());
        self.write(
            s,
            n,
            &OpSpec {
                op: "c",
                ns: format!("{db}.$cmd"),
                ui: Some(ui),
                o,
                o2: Some(doc! {"collectionOptions_old": old_options}),
                from_migrate: false,
            },
            now,
        );
        let meta = self.sets[s].catalog.entry(ns.to_owned()).or_default();
        for (k, v) in fields {
            meta.options.insert(k.clone(), v.clone());
        }
        Ok(())
    }

    /// The change-stream notification a 6.0+ primary shard writes when a collection becomes
    /// sharded (`notifyChangeStreamsOnShardCollection`): `{op: "n", ns, ui, o: {msg:
    /// {shardCollection: ns}}, o2: {shardCollection: ns, <request>}}`.
    pub fn log_shard_collection(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        request: Document,
        now: Instant,
    ) {
        let ui = self.collection_uuid(s, ns);
        let mut o2 = doc! {"shardCollection": ns};
        o2.extend(request);
        self.write(
            s,
            n,
            &OpSpec {
                op: "n",
                ns: ns.to_owned(),
                ui: Some(ui),
                o: doc! {"msg": {"shardCollection": ns}},
                o2: Some(o2),
                from_migrate: false,
            },
            now,
        );
    }
}

//! Writes on a primary: stamping and logging oplog entries (with session fields and retry
//! images), implicit collection creation, and the insert, update, delete and
//! findAndModify operations, including batched multi-deletes.

use std::sync::Arc;
use std::time::Instant;

use bson::{doc, oid::ObjectId, Bson, DateTime, Document, Timestamp};

use super::data::{bad_value, id_key, Collection};
use super::history::{apply_recorded, prune};
use super::modifiers::apply_update;
use super::{now_secs, CmdError, RetryImage, World};
use crate::matcher;
use crate::oplog::{self, ts_key, Entry, EntryId, OpSpec};

impl World {
    pub(super) fn next_ts(&self, s: usize, n: usize) -> Timestamp {
        let own = self.sets[s].nodes[n].last_ts;
        let last = if ts_key(self.cluster_time) > ts_key(own) {
            self.cluster_time
        } else {
            own
        };
        let now = now_secs();
        if now > last.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: last.time,
                increment: last.increment + 1,
            }
        }
    }

    /// Appends an entry to a node's oplog and applies it to the node's data.
    ///
    /// A transaction's writes become visible when it commits, as on mongod: `partialTxn`
    /// and `prepare` entries change nothing, and the entry that commits (the last entry of
    /// a large transaction, or `commitTransaction` of a prepared one) applies the whole
    /// chain, found through `prevOpTime`. An aborted transaction leaves no data behind.
    pub fn push_entry(&mut self, s: usize, n: usize, entry: Arc<Entry>) {
        let deferred = txn_visibility(&entry.doc);
        let chain = match deferred {
            TxnVisibility::CommitsChain(prev) => self.chain_ops(s, n, prev),
            _ => Vec::new(),
        };
        // A prepared transaction's writes are visible from its commitTimestamp on.
        let visible_at = entry
            .doc
            .get_document("o")
            .ok()
            .and_then(|o| o.get_timestamp("commitTimestamp").ok())
            .unwrap_or(entry.id.ts);
        let oldest = self.oldest_readable(s, n);
        if ts_key(entry.id.ts) > ts_key(self.cluster_time) {
            self.cluster_time = entry.id.ts;
        }
        let node = &mut self.sets[s].nodes[n];
        if ts_key(entry.id.ts) > ts_key(node.last_ts) {
            node.last_ts = entry.id.ts;
        }
        for op in &chain {
            apply_recorded(&mut node.data, &mut node.undo, op, visible_at);
        }
        match deferred {
            TxnVisibility::Now | TxnVisibility::CommitsChain(_) => {
                apply_recorded(&mut node.data, &mut node.undo, &entry.doc, visible_at)
            }
            TxnVisibility::Later => {}
        }
        prune(&mut node.undo, oldest);
        node.oplog.push(entry);
    }

    /// The oldest time node `n` can still read at: `minSnapshotHistoryWindowInSeconds`
    /// behind its majority commit point (WiredTiger's oldest timestamp).
    pub fn oldest_readable(&self, s: usize, n: usize) -> Timestamp {
        let node = &self.sets[s].nodes[n];
        let stable = node.commit_point.as_ref().map_or(0, |c| c.id.ts.time);
        Timestamp {
            time: stable.saturating_sub(self.snapshot_window_secs),
            increment: 0,
        }
    }

    /// Writes an entry on node `n` (which must be primary) and returns it.
    pub fn write(&mut self, s: usize, n: usize, spec: &OpSpec, now: Instant) -> Option<Arc<Entry>> {
        if let Some(capture) = self.capture.as_mut() {
            if spec.op != "n" {
                capture.push((s, n, spec.clone()));
                return None;
            }
        }
        Some(self.write_logged(s, n, spec, now))
    }

    fn write_logged(&mut self, s: usize, n: usize, spec: &OpSpec, now: Instant) -> Arc<Entry> {
        let ts = self.next_ts(s, n);
        let term = self.sets[s].nodes[n].term;
        let image_noop = spec.op == "n" && self.retry_image.noop;
        let session = match &self.session {
            Some(sess)
                if (matches!(spec.op, "i" | "u" | "d") || image_noop) && !spec.from_migrate =>
            {
                Some(oplog::SessionFields {
                    lsid: sess.lsid.clone(),
                    txn_number: sess.txn_number,
                    stmt_id: sess.stmt_id,
                    stmt_ids: sess.stmt_ids.clone(),
                    image_op_time: None,
                    needs_retry_image: None,
                    prev_op_time: sess.prev.get(&s).copied().unwrap_or((
                        Timestamp {
                            time: 0,
                            increment: 0,
                        },
                        -1,
                    )),
                })
            }
            _ => None,
        };
        let mut session = session;
        if let Some(sess) = session.as_mut().filter(|_| matches!(spec.op, "u" | "d")) {
            sess.image_op_time = self.retry_image.link.take();
            sess.needs_retry_image = self.retry_image.needs.take();
        }
        // An image no-op shares the write's prevOpTime: it is not a write of the session.
        if session.is_some() && !image_noop {
            if let Some(sess) = self.session.as_mut() {
                sess.prev.insert(s, (ts, term));
            }
        }
        let mut doc = oplog::build_entry_doc_with_session(
            self.version,
            spec,
            ts,
            term,
            DateTime::now(),
            session.as_ref(),
        );
        if let Some(to) = self.destined_recipient(s, spec) {
            doc = super::resharding::with_destined_recipient(doc, to);
        }
        let entry = Arc::new(Entry {
            id: EntryId {
                ts,
                t: doc.get_i64("t").ok(),
                h: doc.get_i64("h").ok(),
            },
            size: doc.to_vec().map(|v| v.len()).unwrap_or(0),
            doc,
            written_at: now,
        });
        if let Some(sess) = &session {
            let lsid = id_key(sess.lsid.get("id").unwrap_or(&Bson::Null));
            let mut stmts = sess.stmt_ids.clone();
            if stmts.is_empty() {
                stmts.push(sess.stmt_id);
            }
            for stmt in stmts {
                self.sets[s]
                    .session_history
                    .insert((lsid.clone(), sess.txn_number, stmt), entry.id);
            }
        }
        self.push_entry(s, n, entry.clone());
        self.sets[s].nodes[n].last_write_at = now;
        entry
    }

    /// The UUID of a collection, created on first use.
    pub fn collection_uuid(&mut self, s: usize, ns: &str) -> bson::Uuid {
        *self.sets[s].uuids.entry(ns.to_owned()).or_default()
    }

    /// Checks that node `n` may take writes.
    ///
    /// # Errors
    /// NotWritablePrimary when the node is not primary.
    pub fn check_writable(&self, s: usize, n: usize) -> Result<(), CmdError> {
        if self.sets[s].nodes[n].writable_primary() {
            Ok(())
        } else {
            Err(CmdError::not_primary())
        }
    }

    /// Makes sure `ns` exists on the primary, logging the implicit `create` as mongod does.
    pub fn ensure_collection(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        from_migrate: bool,
        now: Instant,
    ) {
        if self.sets[s].nodes[n].data.contains_key(ns) {
            return;
        }
        let Some((db, coll)) = ns.split_once('.') else {
            return;
        };
        let cmd_ns = format!("{db}.$cmd");
        let pending =
            |o: &OpSpec| o.op == "c" && o.ns == cmd_ns && o.o.get_str("create").ok() == Some(coll);
        let captured = self.capture.as_ref().is_some_and(|c| {
            c.iter()
                .any(|(cs, cn, o)| *cs == s && *cn == n && pending(o))
        });
        let buffered = self.sets[s].nodes[n].txns.values().flatten().any(pending);
        if captured || buffered {
            return;
        }
        if self.version.has_terms() {
            let ui = self.collection_uuid(s, ns);
            let spec = OpSpec {
                op: "c",
                ns: format!("{db}.$cmd"),
                ui: Some(ui),
                o: doc! {"create": coll, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}},
                o2: None,
                from_migrate,
            };
            self.write(s, n, &spec, now);
        } else {
            self.sets[s].nodes[n]
                .data
                .insert(ns.to_owned(), Collection::default());
        }
    }

    /// Inserts documents on the primary.
    ///
    /// # Errors
    /// NotWritablePrimary, or DuplicateKey (11000) for an existing `_id`.
    pub fn insert(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        docs: Vec<Document>,
        from_migrate: bool,
        now: Instant,
    ) -> Result<usize, (usize, CmdError)> {
        self.check_writable(s, n).map_err(|e| (0, e))?;
        if self.statement_executed(s, n) {
            return Ok(docs.len());
        }
        self.ensure_collection(s, n, ns, from_migrate, now);
        let ui = self
            .version
            .has_terms()
            .then(|| self.collection_uuid(s, ns));
        let mut count = 0;
        for mut d in docs {
            if !d.contains_key("_id") {
                let mut with_id = doc! {"_id": ObjectId::new()};
                with_id.extend(d);
                d = with_id;
            }
            let id = d.get("_id").cloned().unwrap_or(Bson::Null);
            let exists = self.sets[s].nodes[n]
                .data
                .get(ns)
                .is_some_and(|c| c.contains(&id));
            if exists {
                return Err((
                    count,
                    CmdError::new(
                        11000,
                        "DuplicateKey",
                        format!("E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {id} }}"),
                    ),
                ));
            }
            let o2 = self
                .version
                .insert_document_key()
                .then(|| doc! {"_id": id.clone()});
            let spec = OpSpec {
                op: "i",
                ns: ns.to_owned(),
                ui,
                o: d,
                o2,
                from_migrate,
            };
            self.write(s, n, &spec, now);
            count += 1;
        }
        Ok(count)
    }

    /// Applies one update statement on the primary; returns (matched, modified, upserted id).
    ///
    /// # Errors
    /// NotWritablePrimary or a bad filter.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        q: &Document,
        u: &Document,
        multi: bool,
        upsert: bool,
        now: Instant,
    ) -> Result<(usize, usize, Option<Bson>), CmdError> {
        self.check_writable(s, n)?;
        if self.statement_executed(s, n) {
            return Ok((1, 1, None));
        }
        let targets: Vec<Document> = {
            let coll = self.sets[s].nodes[n].data.get(ns);
            let mut out = Vec::new();
            if let Some(c) = coll {
                for d in c.iter() {
                    if matcher::matches(d, q).map_err(bad_value)? {
                        out.push(d.clone());
                        if !multi {
                            break;
                        }
                    }
                }
            }
            out
        };
        let ui = self
            .version
            .has_terms()
            .then(|| self.collection_uuid(s, ns));
        let is_modifier = u.keys().any(|k| k.starts_with('$'));
        if targets.is_empty() {
            if !upsert {
                return Ok((0, 0, None));
            }
            let mut base = Document::new();
            for (k, v) in q {
                if !k.starts_with('$')
                    && !matches!(v, Bson::Document(d) if d.keys().any(|k| k.starts_with('$')))
                {
                    base.insert(k.clone(), v.clone());
                }
            }
            let new_doc = if is_modifier {
                apply_update(&base, u, self.version)?.0
            } else {
                let mut d = u.clone();
                if let Some(id) = base.get("_id") {
                    d.insert("_id", id.clone());
                }
                d
            };
            let id = new_doc.get("_id").cloned();
            self.insert(s, n, ns, vec![new_doc], false, now)
                .map_err(|(_, e)| e)?;
            let id = id.or_else(|| {
                self.sets[s].nodes[n]
                    .data
                    .get(ns)
                    .and_then(|c| c.last())
                    .and_then(|d| d.get("_id").cloned())
            });
            return Ok((0, 0, id));
        }
        let mut modified = 0;
        for before in &targets {
            let id = before.get("_id").cloned().unwrap_or(Bson::Null);
            let (after, o) = if is_modifier {
                let (after, log) = apply_update(before, u, self.version)?;
                let o = crate::update_log::operator_update_o(self.version, &log);
                (after, o)
            } else {
                let mut after = doc! {"_id": id.clone()};
                for (k, v) in u {
                    if k != "_id" {
                        after.insert(k.clone(), v.clone());
                    }
                }
                (after.clone(), after)
            };
            if &after == before {
                continue;
            }
            let spec = OpSpec {
                op: "u",
                ns: ns.to_owned(),
                ui,
                o,
                o2: Some(doc! {"_id": id}),
                from_migrate: false,
            };
            self.write(s, n, &spec, now);
            modified += 1;
        }
        Ok((targets.len(), modified, None))
    }

    /// Deletes matching documents on the primary; returns how many.
    ///
    /// # Errors
    /// NotWritablePrimary or a bad filter.
    #[allow(clippy::too_many_arguments)]
    pub fn delete(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        q: &Document,
        limit_one: bool,
        from_migrate: bool,
        now: Instant,
    ) -> Result<usize, CmdError> {
        self.check_writable(s, n)?;
        if self.statement_executed(s, n) {
            return Ok(1);
        }
        let ids: Vec<Bson> = {
            let mut out = Vec::new();
            if let Some(c) = self.sets[s].nodes[n].data.get(ns) {
                for d in c.iter() {
                    if matcher::matches(d, q).map_err(bad_value)? {
                        out.push(d.get("_id").cloned().unwrap_or(Bson::Null));
                        if limit_one {
                            break;
                        }
                    }
                }
            }
            out
        };
        let ui = self
            .version
            .has_terms()
            .then(|| self.collection_uuid(s, ns));
        let specs: Vec<OpSpec> = ids
            .iter()
            .map(|id| OpSpec {
                op: "d",
                ns: ns.to_owned(),
                ui,
                o: doc! {"_id": id.clone()},
                o2: None,
                from_migrate,
            })
            .collect();
        // Batched multi-deletes (7.0+): a multi-delete that is neither retryable nor in a
        // transaction nor a migration's is logged as one session-less applyOps per batch of
        // `BATCHED_DELETE_DOCS`; a batch of one document stays a plain `d`.
        let batched = self.version.batched_deletes()
            && !limit_one
            && !from_migrate
            && self.session.is_none()
            && self.capture.is_none();
        if batched {
            for batch in specs.chunks(BATCHED_DELETE_DOCS) {
                if let [single] = batch {
                    self.write(s, n, single, now);
                    continue;
                }
                let inner: Vec<Bson> = batch
                    .iter()
                    .map(|op| Bson::Document(oplog::inner_op_doc(op)))
                    .collect();
                let spec = OpSpec {
                    op: "c",
                    ns: "admin.$cmd".to_owned(),
                    ui: None,
                    o: doc! {"applyOps": inner},
                    o2: None,
                    from_migrate: false,
                };
                self.write(s, n, &spec, now);
            }
        } else {
            for spec in &specs {
                self.write(s, n, spec, now);
            }
        }
        Ok(ids.len())
    }

    /// findAndModify on the primary: the first document matching `q` is removed
    /// (`update: None`) or updated; returns `(value, n, updatedExisting, upserted id)`
    /// where `value` is the document before, or after when `return_new`.
    ///
    /// A retryable one (a session with a txnNumber) logs the returned image as mongod
    /// does: up to 5.0 as a no-op entry on the namespace (`o` = the image, with the
    /// session fields) that the update/delete links by `preImageOpTime` /
    /// `postImageOpTime`; from 5.1 by `needsRetryImage` on the update/delete alone (the
    /// image goes to `config.image_collection`, which is not logged).
    ///
    /// # Errors
    /// NotWritablePrimary or a bad filter / update.
    #[allow(clippy::too_many_arguments)]
    pub fn find_and_modify(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        q: &Document,
        update: Option<&Document>,
        return_new: bool,
        upsert: bool,
        now: Instant,
    ) -> Result<(Option<Document>, usize, bool, Option<Bson>), CmdError> {
        self.check_writable(s, n)?;
        if self.statement_executed(s, n) {
            return Ok((None, 1, update.is_some(), None));
        }
        let found = match self.sets[s].nodes[n].data.get(ns) {
            Some(c) => {
                let mut hit = None;
                for d in c.iter() {
                    if matcher::matches(d, q).map_err(bad_value)? {
                        hit = Some(d.clone());
                        break;
                    }
                }
                hit
            }
            None => None,
        };
        let ui = self
            .version
            .has_terms()
            .then(|| self.collection_uuid(s, ns));
        let Some(before) = found else {
            let Some(u) = update.filter(|_| upsert) else {
                return Ok((None, 0, false, None));
            };
            let (_, _, id) = self.update(s, n, ns, q, u, false, true, now)?;
            let value = match (&id, return_new) {
                (Some(id), true) => self.sets[s].nodes[n]
                    .data
                    .get(ns)
                    .and_then(|c| c.iter().find(|d| d.get("_id") == Some(id)).cloned()),
                _ => None,
            };
            return Ok((value, 1, false, id));
        };
        let id = before.get("_id").cloned().unwrap_or(Bson::Null);
        let (spec, after) = match update {
            None => (
                OpSpec {
                    op: "d",
                    ns: ns.to_owned(),
                    ui,
                    o: doc! {"_id": id.clone()},
                    o2: None,
                    from_migrate: false,
                },
                None,
            ),
            Some(u) => {
                let (after, o) = if u.keys().any(|k| k.starts_with('$')) {
                    let (after, log) = apply_update(&before, u, self.version)?;
                    let o = crate::update_log::operator_update_o(self.version, &log);
                    (after, o)
                } else {
                    let mut after = doc! {"_id": id.clone()};
                    for (k, v) in u {
                        if k != "_id" {
                            after.insert(k.clone(), v.clone());
                        }
                    }
                    (after.clone(), after)
                };
                (
                    OpSpec {
                        op: "u",
                        ns: ns.to_owned(),
                        ui,
                        o,
                        o2: Some(doc! {"_id": id.clone()}),
                        from_migrate: false,
                    },
                    Some(after),
                )
            }
        };
        let value = match (&after, return_new) {
            (Some(after), true) => after.clone(),
            _ => before.clone(),
        };
        if after.as_ref() == Some(&before) {
            return Ok((Some(value), 1, true, None));
        }
        let retryable =
            self.session.is_some() && self.capture.is_none() && self.version.has_terms();
        if retryable {
            let post = return_new && after.is_some();
            if self.version.retry_images_in_side_collection() {
                self.retry_image.needs = Some(if post { "postImage" } else { "preImage" });
            } else {
                self.retry_image.noop = true;
                let image = OpSpec {
                    op: "n",
                    ns: ns.to_owned(),
                    ui,
                    o: value.clone(),
                    o2: None,
                    from_migrate: false,
                };
                let entry = self.write(s, n, &image, now);
                self.retry_image.noop = false;
                if let Some(e) = entry {
                    let field = if post {
                        "postImageOpTime"
                    } else {
                        "preImageOpTime"
                    };
                    self.retry_image.link = Some((field, e.id.ts, e.id.t.unwrap_or(-1)));
                }
            }
        }
        self.write(s, n, &spec, now);
        self.retry_image = RetryImage::default();
        Ok((Some(value), 1, update.is_some(), None))
    }
}

/// Documents per batch of a batched multi-delete: the default of the server parameter
/// `batchedDeletesTargetBatchDocs` (100; `jstests/noPassthrough/batched_multi_deletes.js`
/// "docsPerBatchDefault"). The time (5 ms) and staged-bytes targets, which may cut a batch
/// earlier on a real server, are not simulated.
pub const BATCHED_DELETE_DOCS: usize = 100;

/// When an entry's writes become visible on a node.
enum TxnVisibility {
    /// Now (every entry outside a multi-entry or prepared transaction).
    Now,
    /// When a later entry commits its transaction (`partialTxn`, `prepare`, or the
    /// decision entries themselves).
    Later,
    /// Now, together with the chain ending at this `prevOpTime`.
    CommitsChain(Timestamp),
}

fn txn_visibility(doc: &Document) -> TxnVisibility {
    if doc.get_str("op").ok() != Some("c") {
        return TxnVisibility::Now;
    }
    let Ok(o) = doc.get_document("o") else {
        return TxnVisibility::Now;
    };
    let prev = match doc.get_document("prevOpTime").ok().map(|p| p.get("ts")) {
        Some(Some(Bson::Timestamp(t))) if (t.time, t.increment) != (0, 0) => Some(*t),
        _ => None,
    };
    if o.contains_key("applyOps") {
        // A retryable vectored insert (8.0) links the write's previous entry by
        // `prevOpTime` without being part of a chain: `multiOpType: 1`.
        if doc.get_i32("multiOpType").ok() == Some(1) {
            return TxnVisibility::Now;
        }
        if o.get_bool("partialTxn").unwrap_or(false) || o.get_bool("prepare").unwrap_or(false) {
            TxnVisibility::Later
        } else if let Some(prev) = prev {
            TxnVisibility::CommitsChain(prev)
        } else {
            TxnVisibility::Now
        }
    } else if o.contains_key("commitTransaction") {
        match prev {
            // The commit entry itself carries no operations: apply the chain only.
            Some(prev) => TxnVisibility::CommitsChain(prev),
            None => TxnVisibility::Later,
        }
    } else if o.contains_key("abortTransaction") {
        TxnVisibility::Later
    } else {
        TxnVisibility::Now
    }
}

//! 8.0 vectored inserts: an insert of several documents outside a transaction is logged as
//! one `applyOps` entry per batch instead of one `i` entry per document.
//!
//! ```text
//!  insert [d0, d1, d2] (one shard's batch)
//!      -> {op: "c", ns: "admin.$cmd", o: {applyOps: [{op: "i", ns, ui, o: d0, o2, stmtId: 0}, ...]},
//!          lsid, txnNumber, prevOpTime, multiOpType: 1}          (retryable)
//!      -> {op: "c", ns: "admin.$cmd", o: {applyOps: [{op: "i", ns, ui, o: d0, o2}, ...]}}
//!                                                                (not retryable)
//! ```
//!
//! From mongodb/mongo: `src/mongo/db/ops/write_ops_exec.cpp` (`insertBatchAndHandleErrors`
//! tries a batch of more than one document of a non-capped collection outside a
//! transaction "all together" with `insertDocumentsAtomically`, which groups its oplog
//! entries (`kGroupForPossiblyRetryableOperations`) when
//! `featureFlagReplicateVectoredInsertsTransactionally` is enabled, and falls back to one
//! document at a time when that fails); `src/mongo/db/op_observer/op_observer_impl.cpp`
//! (`logApplyOps`: for that grouping, only when the batch has statement ids, i.e. is a
//! retryable write, the entry gets the chain information with `multiOpType:
//! kApplyOpsAppliedSeparately`); `src/mongo/db/repl/oplog.cpp` (`appendOplogEntryChainInfo`:
//! `lsid`, `txnNumber`, `multiOpType` instead of the statement ids, "because they were
//! included in the individual operations", and `prevOpTime` = the session's last write);
//! `src/mongo/db/repl/oplog_entry.idl` (`multiOpType` after `prevOpTime`;
//! `kApplyOpsAppliedSeparately: 1`); and the revision of `jstests/sharding/
//! session_info_in_oplog.js` that checks `ReplicateVectoredInsertsTransactionally`: a
//! two-document retryable insert is one `applyOps` with `lsid`, `txnNumber` and
//! `prevOpTime` `Timestamp(0, 0)`, `t: -1` (the first write of the txnNumber), "Statement
//! IDs are defined on the inner operation for
//! vectored inserts": `stmtId` 0 and 1 on the inner operations). Batches hold at most
//! [`VECTORED_INSERT_MAX_DOCS`] documents.

use std::sync::Arc;
use std::time::Instant;

use bson::{doc, oid::ObjectId, Bson, DateTime, Document, Timestamp};

use super::data::id_key;
use super::World;
use crate::error::CmdError;
use crate::oplog::{self, Entry, EntryId, OpSpec, SessionFields};

/// Most documents in one vectored insert: `internalInsertMaxBatchSize`'s default at FCV 8.0
/// (`server_parameter_insert_max_batch_size.h` `kDefaultInternalInsertMaxBatchSizeFcv80 =
/// 500`; 64 without the feature flag). The server also cuts batches by size; not simulated.
pub const VECTORED_INSERT_MAX_DOCS: usize = 500;

/// Why a batch was not logged as one vectored insert.
#[derive(Debug)]
pub enum VectoredFallback {
    /// A document of the batch is a duplicate: the server's atomic attempt fails and it
    /// inserts the batch one document at a time (which reports the error where it occurs).
    OneAtATime,
    /// The command's own error (not primary).
    Error(CmdError),
}

impl World {
    /// Inserts `docs` (each with its statement index in the command) on primary `n` of set
    /// `s` as one vectored insert entry. Statements a retry already executed are skipped;
    /// when one document remains it is a plain insert. Returns how many documents the
    /// statements inserted.
    ///
    /// # Errors
    /// [`VectoredFallback::OneAtATime`] when a document's `_id` exists (nothing is
    /// written); NotWritablePrimary.
    pub fn insert_vectored(
        &mut self,
        s: usize,
        n: usize,
        ns: &str,
        docs: Vec<(usize, Document)>,
        now: Instant,
    ) -> Result<usize, VectoredFallback> {
        self.check_writable(s, n).map_err(VectoredFallback::Error)?;
        let total = docs.len();
        let pending: Vec<(usize, Document)> = docs
            .into_iter()
            .filter(|(stmt, _)| !self.stmt_executed(s, n, *stmt))
            .map(|(stmt, mut d)| {
                if !d.contains_key("_id") {
                    let mut with_id = doc! {"_id": ObjectId::new()};
                    with_id.extend(d);
                    d = with_id;
                }
                (stmt, d)
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for (_, d) in &pending {
            let id = d.get("_id").cloned().unwrap_or(Bson::Null);
            let exists = self.sets[s].nodes[n]
                .data
                .get(ns)
                .is_some_and(|c| c.contains(&id));
            if exists || !seen.insert(id_key(&id)) {
                return Err(VectoredFallback::OneAtATime);
            }
        }
        if pending.len() < 2 {
            for (stmt, d) in pending {
                if let Some(sess) = self.session.as_mut() {
                    sess.stmt_id = stmt as i32;
                }
                self.insert(s, n, ns, vec![d], false, now)
                    .map_err(|(_, e)| VectoredFallback::Error(e))?;
            }
            return Ok(total);
        }
        self.ensure_collection(s, n, ns, false, now);
        let ui = self.collection_uuid(s, ns);
        let retryable = self.session.is_some();
        let stmts: Vec<i32> = pending.iter().map(|(stmt, _)| *stmt as i32).collect();
        let inner: Vec<Bson> = pending
            .into_iter()
            .map(|(stmt, d)| {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                let spec = OpSpec {
                    op: "i",
                    ns: ns.to_owned(),
                    ui: Some(ui),
                    o: d,
                    o2: self.version.insert_document_key().then(|| doc! {"_id": id}),
                    from_migrate: false,
                };
                let mut op = oplog::inner_op_doc(&spec);
                if retryable {
                    op.insert("stmtId", stmt as i32);
                }
                Bson::Document(op)
            })
            .collect();
        let spec = OpSpec {
            op: "c",
            ns: "admin.$cmd".to_owned(),
            ui: None,
            o: doc! {"applyOps": inner},
            o2: None,
            from_migrate: false,
        };
        self.log_vectored(s, n, &spec, &stmts, now);
        Ok(total)
    }

    /// Whether statement `stmt` of the current retryable write has an entry on node `n`.
    fn stmt_executed(&mut self, s: usize, n: usize, stmt: usize) -> bool {
        let Some(sess) = self.session.as_mut() else {
            return false;
        };
        sess.stmt_id = stmt as i32;
        self.statement_executed(s, n)
    }

    /// Logs a vectored insert entry: with the session's chain fields and `multiOpType: 1`
    /// when retryable, each statement then recorded in the session history.
    fn log_vectored(&mut self, s: usize, n: usize, spec: &OpSpec, stmts: &[i32], now: Instant) {
        let ts = self.next_ts(s, n);
        let term = self.sets[s].nodes[n].term;
        let session = self.session.as_ref().map(|sess| SessionFields {
            lsid: sess.lsid.clone(),
            txn_number: sess.txn_number,
            // On the inner operations, not on the entry.
            stmt_id: -1,
            stmt_ids: Vec::new(),
            prev_op_time: sess.prev.get(&s).copied().unwrap_or((
                Timestamp {
                    time: 0,
                    increment: 0,
                },
                -1,
            )),
            image_op_time: None,
            needs_retry_image: None,
        });
        let mut doc = oplog::build_entry_doc_with_session(
            self.version,
            spec,
            ts,
            term,
            DateTime::now(),
            session.as_ref(),
        );
        if session.is_some() {
            doc.insert("multiOpType", 1_i32);
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
        if let Some(sess) = self.session.as_mut() {
            sess.prev.insert(s, (ts, term));
            let lsid = id_key(sess.lsid.get("id").unwrap_or(&Bson::Null));
            let txn_number = sess.txn_number;
            for stmt in stmts {
                self.sets[s]
                    .session_history
                    .insert((lsid.clone(), txn_number, *stmt), entry.id);
            }
        }
        self.push_entry(s, n, entry);
        self.sets[s].nodes[n].last_write_at = now;
    }
}

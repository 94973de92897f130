//! Prepared transactions on a participant shard, and the coordinator's state document:
//! the oplog side of a distributed (cross-shard) transaction's two-phase commit. The
//! protocol itself (who sends what, waiting for majorities) runs in
//! `commands/two_phase.rs`.
//!
//! What mongod logs, looked up in the server source (repository `mongodb/mongo`):
//!
//! * Participant, `prepareTransaction`: the transaction's applyOps chain whose last entry
//!   carries `prepare: true` (`TransactionOperations::logOplogEntries`, see
//!   [`World::log_txn_chain`]). Its optime is the prepare timestamp the participant votes
//!   with.
//! * Participant, decision (`OpObserverImpl::onPreparedTransactionCommit` /
//!   `onTransactionAbort` through `logCommitOrAbortForPreparedTransaction`): a command entry
//!   on `admin.$cmd` with the session, `prevOpTime` = the prepare entry's optime, and
//!   `o: {commitTransaction: 1, commitTimestamp}` (`CommitTransactionOplogObject`,
//!   `src/mongo/db/commands/txn_cmds.idl`) or `o: {abortTransaction: 1}`. It may be
//!   written by a later primary, in a later term, than the prepare entry.
//! * Coordinator (`src/mongo/db/s/transaction_coordinator_util.cpp`): its state lives in
//!   `config.transaction_coordinators` (`TransactionCoordinatorDocument`,
//!   `src/mongo/db/s/transaction_coordinator_document.idl`: `_id` = the
//!   `OperationSessionInfo` `{lsid, txnNumber}`, `participants` = shard ids, `decision` =
//!   `{decision: "commit", commitTimestamp}` or `{decision: "abort", abortStatus}`).
//!   `persistParticipantsList` and `persistDecision` are replacement upserts (so the first
//!   is logged as an insert and the second as a replacement update), each majority
//!   acknowledged; the document is deleted once every participant acknowledged the
//!   decision. The commit timestamp is the largest prepare timestamp of the votes
//!   (`PrepareVoteConsensus`).

use std::time::Instant;

use bson::{doc, Bson, Document, Timestamp};

use super::data::id_key;
use super::{CmdError, World};
use crate::oplog::{ts_key, OpSpec};

/// The namespace of the coordinators' state documents.
pub const COORDINATORS_NS: &str = "config.transaction_coordinators";

/// How a prepared transaction ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Commit at this timestamp (the same on every participant).
    Commit(Timestamp),
    /// Abort.
    Abort,
}

impl World {
    /// Prepares the transaction `key` buffered on primary `n` of set `s`: logs its chain
    /// ending with `prepare: true` and returns the prepare entry's optime (its timestamp is
    /// the participant's vote).
    ///
    /// # Errors
    /// NotWritablePrimary, or NoSuchTransaction (251) when the node holds nothing for the
    /// transaction (it was lost in a failover).
    pub fn prepare_transaction(
        &mut self,
        s: usize,
        n: usize,
        key: &str,
        lsid: &Document,
        txn_number: i64,
        now: Instant,
    ) -> Result<(Timestamp, i64), CmdError> {
        self.check_writable(s, n)?;
        let Some(ops) = self.sets[s].nodes[n].txns.remove(key) else {
            return Err(no_such_transaction(txn_number));
        };
        Ok(self
            .log_txn_chain(s, n, &ops, lsid, txn_number, true, now)
            .0)
    }

    /// The optime of the prepare entry of (`lsid`, `txn_number`) in node `n`'s oplog, and
    /// whether a decision (commit or abort entry) already follows it.
    pub fn find_prepared(
        &self,
        s: usize,
        n: usize,
        lsid: &Document,
        txn_number: i64,
    ) -> Option<((Timestamp, i64), bool)> {
        let want = id_key(lsid.get("id").unwrap_or(&Bson::Null));
        let mut decided = false;
        for e in self.sets[s].nodes[n].oplog.iter().rev() {
            let d = &e.doc;
            if d.get_str("op").ok() != Some("c")
                || d.get_i64("txnNumber").ok() != Some(txn_number)
                || d.get_document("lsid")
                    .ok()
                    .and_then(|l| l.get("id"))
                    .map(id_key)
                    .as_ref()
                    != Some(&want)
            {
                continue;
            }
            let Ok(o) = d.get_document("o") else { continue };
            if o.contains_key("commitTransaction") || o.contains_key("abortTransaction") {
                decided = true;
            } else if o.get_bool("prepare").unwrap_or(false) {
                return Some(((e.id.ts, e.id.t.unwrap_or(-1)), decided));
            }
        }
        None
    }

    /// Logs the decision for a prepared transaction on primary `n` of set `s`: a
    /// `commitTransaction` or `abortTransaction` entry pointing at the prepare entry.
    /// Idempotent: when the decision is already logged (the previous primary wrote it and
    /// it replicated), nothing is written.
    ///
    /// # Errors
    /// NotWritablePrimary, or NoSuchTransaction when `n` has no prepare entry for it.
    pub fn decide_prepared(
        &mut self,
        s: usize,
        n: usize,
        lsid: &Document,
        txn_number: i64,
        decision: Decision,
        now: Instant,
    ) -> Result<(), CmdError> {
        self.check_writable(s, n)?;
        let Some((prepare, decided)) = self.find_prepared(s, n, lsid, txn_number) else {
            return Err(no_such_transaction(txn_number));
        };
        if decided {
            return Ok(());
        }
        let o = match decision {
            Decision::Commit(at) => doc! {"commitTransaction": 1, "commitTimestamp": at},
            Decision::Abort => doc! {"abortTransaction": 1},
        };
        let spec = OpSpec {
            op: "c",
            ns: "admin.$cmd".to_owned(),
            ui: None,
            o,
            o2: None,
            from_migrate: false,
        };
        self.log_session_entry(s, n, &spec, lsid, txn_number, prepare, now);
        Ok(())
    }

    /// Writes a coordinator state change on primary `n` of set `s` (no session, no
    /// capture), unless it is already there: `doc` = `Some(full document)` upserts it
    /// (insert when absent, replacement update when different), `None` deletes it.
    ///
    /// # Errors
    /// NotWritablePrimary.
    pub fn write_coordinator_doc(
        &mut self,
        s: usize,
        n: usize,
        id: &Document,
        doc: Option<Document>,
        now: Instant,
    ) -> Result<(), CmdError> {
        self.check_writable(s, n)?;
        self.ensure_collection(s, n, COORDINATORS_NS, false, now);
        let ui = self
            .version
            .has_terms()
            .then(|| self.collection_uuid(s, COORDINATORS_NS));
        let key = Bson::Document(id.clone());
        let current = self.sets[s].nodes[n]
            .data
            .get(COORDINATORS_NS)
            .and_then(|c| c.iter().find(|d| d.get("_id") == Some(&key)).cloned());
        let spec = match (current, doc) {
            (None, None) => return Ok(()),
            (Some(cur), Some(new)) if cur == new => return Ok(()),
            (None, Some(new)) => OpSpec {
                op: "i",
                ns: COORDINATORS_NS.to_owned(),
                ui,
                o2: self
                    .version
                    .insert_document_key()
                    .then(|| doc! {"_id": key.clone()}),
                o: new,
                from_migrate: false,
            },
            (Some(_), Some(new)) => OpSpec {
                op: "u",
                ns: COORDINATORS_NS.to_owned(),
                ui,
                o: new,
                o2: Some(doc! {"_id": key.clone()}),
                from_migrate: false,
            },
            (Some(_), None) => OpSpec {
                op: "d",
                ns: COORDINATORS_NS.to_owned(),
                ui,
                o: doc! {"_id": key.clone()},
                o2: None,
                from_migrate: false,
            },
        };
        let saved = (self.session.take(), self.capture.take());
        self.write(s, n, &spec, now);
        (self.session, self.capture) = saved;
        Ok(())
    }

    /// The operations a commit makes visible on a node: walks a transaction's chain back
    /// from `prev` (the `prevOpTime` of a commit entry or of the last entry of a large
    /// transaction) and returns the inner operations of every entry, oldest first. Entries
    /// already gone from the capped oplog are skipped.
    pub(super) fn chain_ops(&self, s: usize, n: usize, mut prev: Timestamp) -> Vec<Document> {
        let oplog = &self.sets[s].nodes[n].oplog;
        let mut parts: Vec<Vec<Document>> = Vec::new();
        while ts_key(prev) != (0, 0) {
            let i = oplog.index_at_or_after(prev);
            let Some(e) = oplog.get(i).filter(|e| ts_key(e.id.ts) == ts_key(prev)) else {
                break;
            };
            let ops = e
                .doc
                .get_document("o")
                .ok()
                .and_then(|o| o.get_array("applyOps").ok())
                .map(|a| {
                    a.iter()
                        .filter_map(|b| b.as_document().cloned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            parts.push(ops);
            prev = match e.doc.get_document("prevOpTime").ok().map(|p| p.get("ts")) {
                Some(Some(Bson::Timestamp(t))) => *t,
                _ => break,
            };
        }
        parts.into_iter().rev().flatten().collect()
    }
}

/// The error a participant answers for a transaction it does not hold.
pub fn no_such_transaction(txn_number: i64) -> CmdError {
    CmdError::new(
        251,
        "NoSuchTransaction",
        format!("Transaction with {{ txnNumber: {txn_number} }} has been aborted."),
    )
}

/// The `_id` of a coordinator document: the transaction's `OperationSessionInfo`.
pub fn coordinator_id(lsid: &Document, txn_number: i64) -> Document {
    doc! {"lsid": lsid.clone(), "txnNumber": txn_number}
}

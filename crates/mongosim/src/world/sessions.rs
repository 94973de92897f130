//! Retryable-write sessions and multi-document transactions: the session context a
//! command's entries carry, retry images of findAndModify, statement history, and logging
//! a committed transaction as applyOps entries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bson::{doc, Bson, DateTime, Document, Timestamp};

use super::data::id_key;
use super::World;
use crate::oplog::{self, Entry, EntryId, OpSpec};

/// How a retryable findAndModify's image is being logged: up to 5.0 as a no-op entry
/// carrying the session (`noop`), whose optime the update/delete then links (`link`);
/// from 5.1 by `needsRetryImage` on the update/delete (`needs`). Taken by the next write.
#[derive(Debug, Clone, Default)]
pub struct RetryImage {
    /// The next `n` entry is an image and carries the session fields.
    pub noop: bool,
    /// `("preImageOpTime" | "postImageOpTime", ts, t)` for the next update/delete.
    pub link: Option<(&'static str, Timestamp, i64)>,
    /// `"preImage" | "postImage"` for the next update/delete.
    pub needs: Option<&'static str>,
}

/// The retryable-write context of the command being executed.
#[derive(Debug, Clone)]
pub struct SessionCtx {
    /// `{id, uid}`.
    pub lsid: Document,
    /// The command's txnNumber.
    pub txn_number: i64,
    /// The statement being executed.
    pub stmt_id: i32,
    /// Several statements logged by one entry (time-series bucket writes): logged as
    /// `stmtId: [..]`; empty otherwise.
    pub stmt_ids: Vec<i32>,
    /// Last optime written for this command, per set (for `prevOpTime`).
    pub prev: HashMap<usize, (Timestamp, i64)>,
}

/// SHA-256 of the empty string: the `uid` mongod derives for sessions without an
/// authenticated user.
const EMPTY_USER_UID: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

impl SessionCtx {
    /// The context of a retryable write command (`lsid` and `txnNumber`, not in a
    /// transaction), or `None`.
    pub fn from_command(cmd: &Document) -> Option<SessionCtx> {
        if cmd.contains_key("autocommit") || cmd.contains_key("startTransaction") {
            return None;
        }
        let (lsid, txn_number) = SessionCtx::lsid_and_txn(cmd)?;
        Some(SessionCtx {
            lsid,
            txn_number,
            stmt_id: 0,
            stmt_ids: Vec::new(),
            prev: HashMap::new(),
        })
    }

    /// The server-side `lsid` (`{id, uid}`) and `txnNumber` of a command, if it has both.
    pub fn lsid_and_txn(cmd: &Document) -> Option<(Document, i64)> {
        let txn_number = match cmd.get("txnNumber")? {
            Bson::Int64(v) => *v,
            Bson::Int32(v) => i64::from(*v),
            _ => return None,
        };
        let id = cmd.get_document("lsid").ok()?.get("id")?.clone();
        let uid = bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: EMPTY_USER_UID.to_vec(),
        };
        Some((doc! {"id": id, "uid": uid}, txn_number))
    }
}

impl World {
    /// Whether the current retryable-write statement (lsid, txnNumber, stmtId) already has
    /// an entry on node `n`: a retry after failover then reports success without executing
    /// again, as mongod does from its session history.
    pub fn statement_executed(&self, s: usize, n: usize) -> bool {
        let Some(sess) = &self.session else {
            return false;
        };
        let key = (
            id_key(sess.lsid.get("id").unwrap_or(&Bson::Null)),
            sess.txn_number,
            sess.stmt_id,
        );
        self.sets[s]
            .session_history
            .get(&key)
            .is_some_and(|entry| self.sets[s].nodes[n].oplog.contains(entry))
    }

    /// Logs a committed transaction's operations on node `n` as applyOps entries: one
    /// `{applyOps: [...]}` entry, or a chain of `{applyOps, partialTxn: true}` entries linked
    /// by `prevOpTime` ending with `{applyOps, count}` when it exceeds
    /// `max_txn_ops_per_entry`. Returns how many entries were written.
    pub fn commit_transaction(
        &mut self,
        s: usize,
        n: usize,
        key: &str,
        lsid: &Document,
        txn_number: i64,
        now: Instant,
    ) -> usize {
        let Some(ops) = self.sets[s].nodes[n].txns.remove(key) else {
            return 0;
        };
        if ops.is_empty() {
            return 0;
        }
        self.log_txn_chain(s, n, &ops, lsid, txn_number, false, now)
            .1
    }

    /// Logs `ops` as a transaction's applyOps chain on node `n` (see
    /// [`World::commit_transaction`]); with `prepare` the last entry carries
    /// `prepare: true` instead of being the implicit commit (an empty prepared transaction
    /// still logs `{applyOps: [], prepare: true}`). Returns the last entry's optime and the
    /// number of entries.
    ///
    /// Field order as `TransactionOperations::logOplogEntries` builds it (mongod
    /// `src/mongo/db/transaction/transaction_operations.cpp`): `applyOps`, then `prepare`
    /// on the last entry of a prepared transaction or `partialTxn` on every other entry,
    /// then `count` (Int64, the operations of the whole transaction) on a last entry that
    /// is not also the first.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn log_txn_chain(
        &mut self,
        s: usize,
        n: usize,
        ops: &[OpSpec],
        lsid: &Document,
        txn_number: i64,
        prepare: bool,
        now: Instant,
    ) -> ((Timestamp, i64), usize) {
        let total = ops.len();
        let per = self.max_txn_ops_per_entry.max(1);
        let mut chunks: Vec<&[OpSpec]> = ops.chunks(per).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        let mut prev = (
            Timestamp {
                time: 0,
                increment: 0,
            },
            -1i64,
        );
        for (i, chunk) in chunks.into_iter().enumerate() {
            let inner: Vec<Bson> = chunk
                .iter()
                .map(|op| Bson::Document(oplog::inner_op_doc(op)))
                .collect();
            let mut o = doc! {"applyOps": inner};
            if i == last && prepare {
                o.insert("prepare", true);
            }
            if i < last {
                o.insert("partialTxn", true);
            } else if last > 0 {
                o.insert("count", total as i64);
            }
            let spec = OpSpec {
                op: "c",
                ns: "admin.$cmd".to_owned(),
                ui: None,
                o,
                o2: None,
                from_migrate: false,
            };
            prev = self.log_session_entry(s, n, &spec, lsid, txn_number, prev, now);
        }
        (prev, last + 1)
    }

    /// Logs one command entry of a transaction (`lsid`, `txnNumber`, `prevOpTime`) on node
    /// `n`; returns its optime.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn log_session_entry(
        &mut self,
        s: usize,
        n: usize,
        spec: &OpSpec,
        lsid: &Document,
        txn_number: i64,
        prev: (Timestamp, i64),
        now: Instant,
    ) -> (Timestamp, i64) {
        let ts = self.next_ts(s, n);
        let term = self.sets[s].nodes[n].term;
        let session = oplog::SessionFields {
            lsid: lsid.clone(),
            txn_number,
            stmt_id: -1,
            stmt_ids: Vec::new(),
            prev_op_time: prev,
            image_op_time: None,
            needs_retry_image: None,
        };
        let doc = oplog::build_entry_doc_with_session(
            self.version,
            spec,
            ts,
            term,
            DateTime::now(),
            Some(&session),
        );
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
        self.push_entry(s, n, entry);
        self.sets[s].nodes[n].last_write_at = now;
        (ts, term)
    }
}

/// Key of an open transaction: the session id and txnNumber.
pub fn txn_key(lsid_id: &Bson, txn_number: i64) -> String {
    format!("{lsid_id}/{txn_number}")
}

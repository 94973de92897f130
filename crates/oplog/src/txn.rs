//! Transaction assembly: turns the committed oplog of one replica set into the operations
//! the pipeline must emit, unpacking `applyOps` entries and holding back the operations of
//! transactions that are not committed yet.
//!
//! [`TxnAssembler::push`] is fed every committed entry of one replica set, in oplog order
//! (after the majority merge), and answers with a [`Step`]:
//!
//! | entry                                                   | [`Step`]                     |
//! |---------------------------------------------------------|------------------------------|
//! | anything but `applyOps` / `commitTransaction` / `abortTransaction` (i, u, d, DDL, n) | [`Step::Entry`]: emit the entry itself |
//! | a standalone `applyOps` (one-entry transaction, `applyOps` run as a command, batched write) | [`Step::Emit`]: its inner operations, now |
//! | a `partialTxn` entry, or a `prepare` entry              | [`Step::Buffered`]           |
//! | the last entry of a large transaction, or `commitTransaction` of a prepared one | [`Step::Emit`]: every operation of the transaction |
//! | `abortTransaction`                                      | [`Step::Aborted`]            |
//!
//! Every emitted operation is a [`TxnOp`] (the inner operation document as it appears in
//! `applyOps`, owned) inside a [`CommittedTxn`] that carries `lsid`, `txnNumber` and the
//! identity of the entry that committed the transaction (the record's `ts` and `id`, see
//! [`crate::record`]).
//!
//! This file holds the assembler; reading an `applyOps` entry (its fields, flattening
//! nested `applyOps`, naming a session) is in `txn/apply_ops.rs`, [`TxnName`], [`Bound`]
//! and [`TxnError`] are in `txn/error.rs`, and the unit tests in `txn/tests.rs`.
//!
//! # Checkpoint contract
//!
//! While a transaction is open (some of its entries were pushed, its commit or abort was
//! not), the assembler holds state that exists nowhere else, and after a restart the
//! pipeline must read the transaction's chain again from its first entry. A resume from
//! position `P` re-reads the entries after `P`; so `P` is safe only if no transaction has
//! entries on both sides of it:
//!
//! **A checkpoint may only cover a position right after which no transaction was open.**
//!
//! [`TxnAssembler::safe_position`] is the latest such entry among those pushed (every
//! entry, while [`TxnAssembler::has_open`] stays false); `None` means there is none yet and
//! the checkpoint must not move. Records emitted after the safe position (non-transaction
//! entries, transactions that committed meanwhile) are emitted again after a restart;
//! consumers drop them by `id` as for any other duplicate. Note that it is not enough to
//! stay before the first entry of the oldest *open* transaction: a transaction that
//! started earlier and has committed since would be cut in two. A prepared transaction
//! can stay open for a long time (until its coordinator decides) and holds the
//! checkpoint back for as long; [`TxnAssembler::oldest_open`] names it for logs and
//! metrics.
//!
//! If the rule is broken, a resumed assembler sees a continuation, `commitTransaction` or
//! `abortTransaction` for a transaction it has never seen and returns
//! [`TxnError::UnknownTransaction`]: the transaction's earlier operations are lost, and
//! the pipeline must stop rather than emit a partial transaction. The one legitimate way
//! to start inside a transaction is a user-given start position;
//! [`TxnConfig::skip_orphans_before`] turns such transactions (those whose chain began
//! before the given timestamp) into [`Step::SkippedOrphan`] instead.
//!
//! # Formats
//!
//! Looked up in the MongoDB server source (repository `mongodb/mongo`):
//!
//! * `src/mongo/db/repl/oplog_entry.idl`: the entry fields `lsid`, `txnNumber` (from
//!   `OperationSessionInfo`), `prevOpTime` ("the opTime of the previous write with the same
//!   transaction"), `multiOpType` (`0` legacy, `1` = `kApplyOpsAppliedSeparately`); inner
//!   operations are `DurableReplOperation`s: `op`, `ns`, `ui`, `o`, `o2`, `stmtId`,
//!   `fromMigrate`, ... (the same fields as a top-level entry, without `ts`/`t`/`wall`).
//! * `src/mongo/db/repl/oplog_entry.cpp`: how the server itself classifies entries.
//!   `isInTransaction`: commit/abort, or an `applyOps` with `lsid`, `txnNumber` and a
//!   `prevOpTime`, unless `multiOpType` is `kApplyOpsAppliedSeparately`.
//!   `isSingleOplogEntryTransaction`: such an `applyOps` without `partialTxn` whose
//!   `prevOpTime` is null. `isEndOfLargeTransaction`: an `applyOps` with a non-null
//!   `prevOpTime`, no `partialTxn`, not applied separately.
//! * `src/mongo/db/transaction/transaction_operations.cpp` (`logOplogEntries`; in 4.2-era
//!   trees `src/mongo/db/op_observer_impl.cpp`): the chain. The first entry has the null
//!   `prevOpTime` `{ts: Timestamp(0, 0), t: -1}`, each next one points at the previous
//!   entry; every entry but the last has `partialTxn: true`; the last has `prepare: true`
//!   for a prepared transaction; `count` (Int64, the number of operations of the whole
//!   transaction) is written on the last entry when it is not also the first.
//!   `ns` is `admin.$cmd`.
//! * `src/mongo/db/op_observer/op_observer_impl.cpp` (`onPreparedTransactionCommit`,
//!   `onTransactionAbort`, `logCommitOrAbortForPreparedTransaction`): `commitTransaction`
//!   and `abortTransaction` entries carry the session, and `prevOpTime` points at the
//!   prepare entry. An abort entry is written **only for prepared transactions**
//!   (`abortOplogEntryOpTime` is set only then): an unprepared transaction writes its whole
//!   chain at commit, in one storage transaction, and nothing when it aborts. A prepared
//!   transaction without writes still logs an empty `applyOps: [], prepare: true`.
//! * `src/mongo/db/commands/txn_cmds.idl`: `CommitTransactionOplogObject`
//!   `{commitTransaction: 1, commitTimestamp: Timestamp}` (a 4.1 development format also
//!   had `count` for unprepared commits) and `AbortTransactionOplogObject`
//!   `{abortTransaction: 1}`.
//! * `src/mongo/db/repl/apply_ops.cpp`: the `applyOps` command. When its operations are
//!   CRUD only it is logged as one `applyOps` entry on `<db>.$cmd`, without a session and
//!   with the command's other fields (`alwaysUpsert`, ...); otherwise each operation is
//!   logged on its own. Servers up to 3.4 logged the whole command in every case, commands
//!   and nested `applyOps` included.
//! * `onBatchedWriteCommit` (op observer): batched writes (6.0+, e.g. batched deletes) are
//!   logged as `applyOps` without a session, with the entry-level `fromMigrate` of the
//!   batch; with `featureFlagLargeBatchedOperations` a large batch becomes a
//!   `partialTxn`/`prevOpTime` chain **without** `lsid`. Retryable vectored inserts use
//!   `multiOpType: 1`: a chain of entries each applied (and here: emitted) on its own.
//!
//! Small transaction (4.0+; 4.2+ shown):
//!
//! ```json
//! {"lsid": {"id": UUID("…"), "uid": BinData(0, "…32 bytes…")}, "txnNumber": 3,
//!  "op": "c", "ns": "admin.$cmd",
//!  "o": {"applyOps": [{"op": "i", "ns": "shop.orders", "ui": UUID("…"), "o": {"_id": 1}},
//!                     {"op": "u", "ns": "shop.stock", "ui": UUID("…"),
//!                      "o": {"$v": 2, "diff": {"u": {"n": 4}}}, "o2": {"_id": "sku1"}}]},
//!  "ts": Timestamp(1700000000, 5), "t": 1, "v": 2, "wall": ISODate("…"),
//!  "prevOpTime": {"ts": Timestamp(0, 0), "t": -1}}
//! ```
//!
//! Large transaction (4.2+): `partialTxn` entries, then the implicit commit with `count`:
//!
//! ```json
//! {"lsid": {…}, "txnNumber": 4, "op": "c", "ns": "admin.$cmd",
//!  "o": {"applyOps": [ …ops 0..k… ], "partialTxn": true},
//!  "ts": Timestamp(1700000000, 6), "t": 1, "prevOpTime": {"ts": Timestamp(0, 0), "t": -1}}
//! {"lsid": {…}, "txnNumber": 4, "op": "c", "ns": "admin.$cmd",
//!  "o": {"applyOps": [ …ops k+1..n-1… ], "count": n},
//!  "ts": Timestamp(1700000000, 7), "t": 1, "prevOpTime": {"ts": Timestamp(1700000000, 6), "t": 1}}
//! ```
//!
//! Prepared transaction (4.2+, sharded transactions): the last `applyOps` has
//! `prepare: true` (after `partialTxn` entries when large), then later one of
//!
//! ```json
//! {"lsid": {…}, "txnNumber": 5, "op": "c", "ns": "admin.$cmd",
//!  "o": {"commitTransaction": 1, "commitTimestamp": Timestamp(1700000010, 1)},
//!  "ts": Timestamp(1700000010, 3), "t": 1, "prevOpTime": {"ts": <the prepare entry>, "t": 1}}
//! {"lsid": {…}, "txnNumber": 5, "op": "c", "ns": "admin.$cmd", "o": {"abortTransaction": 1},
//!  "ts": …, "t": 1, "prevOpTime": {"ts": <the prepare entry>, "t": 1}}
//! ```
//!
//! `applyOps` run as a command (or a batched write):
//! `{"op": "c", "ns": "test.$cmd", "o": {"applyOps": [{"op": "i", "ns": "test.c", "o": {…}}]}, …}`.
//!
//! # Decisions
//!
//! * Transactions are keyed by `(lsid, txnNumber)`, comparing the raw bytes of `lsid` (the
//!   server serializes one session id the same way in every entry; internal transactions'
//!   lsids carry `txnNumber`/`txnUUID` inside `lsid` and stay distinct). Chains without a
//!   session (large batched writes) are followed by `prevOpTime` alone.
//! * Every link is checked: a continuation, final, commit or abort whose `prevOpTime` is
//!   not the optime of the transaction's last entry is a [`TxnError::BrokenChain`], and a
//!   final `count` that differs from the number of operations seen is a
//!   [`TxnError::CountMismatch`]. Both mean entries were lost.
//! * `abortTransaction` drops whatever is buffered for the session, prepared or not; a
//!   `commitTransaction` for an unprepared buffered chain (the 4.1 development format)
//!   emits it.
//! * Nested `applyOps` (an inner `c` operation whose `o` is itself `applyOps`) is
//!   flattened, depth-first, keeping order. Current servers cannot write it (transactions
//!   forbid `applyOps`; the command logs only CRUD-only batches as one entry), but servers
//!   up to 3.4 logged a user's `applyOps` command verbatim, nesting included. Nesting deeper
//!   than 8 levels is an error.
//! * `from_migrate` of an inner operation is its own `fromMigrate` or that of the entry
//!   carrying it (batched writes set it on the entry).
//! * Inner operations that are not a document, lack `op` or (except no-ops) `ns`, or have
//!   an unknown `op` code are errors, like malformed top-level entries.
//! * Memory: the buffered operations of each transaction, and of all together, are bounded
//!   ([`TxnConfig`]); going over is [`TxnError::TooLarge`], naming the transaction.
//! * Errors leave the assembler as it was before the failing entry. They are definite:
//!   the pipeline should stop the shard.

use std::collections::HashMap;

use bson::{RawBsonRef, RawDocument, RawDocumentBuf};

use crate::entry::{OpKind, OpTime, OplogEntry};
use crate::position::{EntryId, Timestamp};
use crate::record::TxnInfo;

mod apply_ops;
mod error;
#[cfg(test)]
mod tests;

use apply_ops::{flatten, multi_op_type, name_of, read_apply_ops, Parsed};
pub use error::{Bound, TxnError, TxnName};

/// Default bound on the buffered operations of all open transactions together.
pub const DEFAULT_MAX_TOTAL_BYTES: usize = 256 << 20;
/// Default bound on the buffered operations of one transaction.
pub const DEFAULT_MAX_TXN_BYTES: usize = 128 << 20;
/// How deep nested `applyOps` may go before the entry is rejected.
const MAX_NESTING: usize = 8;

/// Settings of a [`TxnAssembler`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TxnConfig {
    /// Bound on the buffered bytes of one transaction.
    pub max_txn_bytes: usize,
    /// Bound on the buffered bytes of all open transactions.
    pub max_total_bytes: usize,
    /// When set, a transaction whose chain started before this timestamp and that the
    /// assembler never saw the start of is skipped ([`Step::SkippedOrphan`]) instead of
    /// being an error. For a user-given start position only: never set it from a
    /// checkpoint, whose contract guarantees whole chains.
    pub skip_orphans_before: Option<Timestamp>,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_txn_bytes: DEFAULT_MAX_TXN_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            skip_orphans_before: None,
        }
    }
}

/// One operation unpacked from an `applyOps` entry.
#[derive(Clone, PartialEq, Debug)]
pub struct TxnOp {
    /// The inner operation's `op`.
    pub op: OpKind,
    /// The inner operation's `ns` (empty for a no-op without one).
    pub ns: String,
    /// `fromMigrate: true` on the inner operation or on the entry carrying it.
    pub from_migrate: bool,
    /// Position within the whole transaction, from 0.
    pub index: u32,
    /// The inner operation document as it appears in `applyOps`.
    pub doc: RawDocumentBuf,
}

impl TxnOp {
    fn sub(&self, key: &str) -> Option<&RawDocument> {
        match self.doc.get(key) {
            Ok(Some(RawBsonRef::Document(d))) => Some(d),
            _ => None,
        }
    }

    /// `o`, the operation's document.
    pub fn o(&self) -> Option<&RawDocument> {
        self.sub("o")
    }

    /// `o2`, the update target.
    pub fn o2(&self) -> Option<&RawDocument> {
        self.sub("o2")
    }

    /// The `_id` of the document an `i`, `u` or `d` operation touches.
    pub fn document_id(&self) -> Option<RawBsonRef<'_>> {
        let doc = match self.op {
            OpKind::Insert | OpKind::Delete => self.o()?,
            OpKind::Update => self.o2()?,
            _ => return None,
        };
        doc.get("_id").ok().flatten()
    }

    /// The name of the command of a `c` operation (the first key of `o`).
    pub fn command_name(&self) -> Option<&str> {
        if self.op != OpKind::Command {
            return None;
        }
        self.o()?.iter().next()?.ok().map(|(k, _)| k.as_str())
    }
}

/// Operations to emit together: a committed transaction or a standalone `applyOps`.
#[derive(Clone, PartialEq, Debug)]
pub struct CommittedTxn {
    /// `lsid`, when the entries had one.
    pub lsid: Option<RawDocumentBuf>,
    /// `txnNumber`, when the entries had one.
    pub txn_number: Option<i64>,
    /// The entry that committed: the last `applyOps`, or `commitTransaction`.
    pub commit: EntryId,
    /// The first entry of the transaction (equal to `commit` for one-entry ones).
    pub first: EntryId,
    /// How many oplog entries the transaction took, commit entry included.
    pub entries: u32,
    /// Whether the transaction was prepared.
    pub prepared: bool,
    /// `commitTimestamp` of a prepared transaction's `commitTransaction` entry: the
    /// transaction's commit time, the same on every shard of a distributed transaction
    /// (the coordinator's decision), unlike the commit entries' own `ts`.
    pub commit_timestamp: Option<Timestamp>,
    /// The operations, in order; `ops[i].index == i`.
    pub ops: Vec<TxnOp>,
}

impl CommittedTxn {
    /// The transaction details [`crate::record::encode_txn_op`] writes for `op` (`count`:
    /// every operation; a caller that filters some out says how many it keeps).
    pub fn info(&self, op: &TxnOp) -> TxnInfo<'_> {
        TxnInfo {
            lsid: self.lsid.as_deref(),
            txn_number: self.txn_number,
            index: op.index,
            count: self.ops.len() as u32,
            commit_timestamp: self.commit_timestamp,
        }
    }
}

/// A prepared transaction that was aborted: nothing is emitted.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AbortedTxn {
    /// Which transaction.
    pub txn: TxnName,
    /// The `abortTransaction` entry.
    pub abort: EntryId,
    /// The first entry of the transaction.
    pub first: EntryId,
    /// How many buffered operations were dropped.
    pub dropped_ops: usize,
}

/// What the pipeline must do after pushing one entry.
#[derive(Clone, PartialEq, Debug)]
pub enum Step {
    /// Not a transaction entry: emit the entry itself as one record.
    Entry,
    /// Emit these operations, in order, now.
    Emit(CommittedTxn),
    /// Part of an open transaction: emit nothing yet (and see the checkpoint contract).
    Buffered,
    /// A transaction was aborted; its buffered operations were dropped.
    Aborted(AbortedTxn),
    /// Part of a transaction that started before [`TxnConfig::skip_orphans_before`]:
    /// skipped.
    SkippedOrphan(TxnName),
}

/// A summary of an open transaction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OpenTxnInfo {
    /// Which transaction.
    pub txn: TxnName,
    /// Its first entry.
    pub first: EntryId,
    /// Entries seen.
    pub entries: u32,
    /// Operations buffered.
    pub ops: usize,
    /// Bytes buffered.
    pub bytes: usize,
    /// Whether its prepare entry was seen.
    pub prepared: bool,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum TxnKey {
    Session { lsid: Vec<u8>, txn_number: i64 },
    Chain { first: Timestamp },
}

#[derive(Debug)]
struct OpenTxn {
    lsid: Option<RawDocumentBuf>,
    txn_number: Option<i64>,
    first: EntryId,
    last: OpTime,
    entries: u32,
    top_level: u64,
    ops: Vec<TxnOp>,
    bytes: usize,
    prepared: bool,
}

impl OpenTxn {
    fn name(&self) -> TxnName {
        name_of(self.lsid.as_deref(), self.txn_number, Some(self.first.ts))
    }
}

/// Assembles the transactions of one replica set; see the module docs.
#[derive(Debug, Default)]
pub struct TxnAssembler {
    config: TxnConfig,
    open: HashMap<TxnKey, OpenTxn>,
    /// Chains being skipped under `skip_orphans_before`, with their last optime.
    orphans: HashMap<TxnKey, OpTime>,
    total_bytes: usize,
    /// The last entry pushed after which nothing was open.
    safe: Option<EntryId>,
}

impl TxnAssembler {
    /// An assembler with the given settings.
    pub fn new(config: TxnConfig) -> Self {
        TxnAssembler {
            config,
            ..TxnAssembler::default()
        }
    }

    /// The settings.
    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    /// Whether a transaction is open (see the checkpoint contract in the module docs).
    pub fn has_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// How many transactions are open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Bytes buffered for all open transactions.
    pub fn buffered_bytes(&self) -> usize {
        self.total_bytes
    }

    /// The latest pushed entry right after which no transaction was open: the highest
    /// position a checkpoint may cover (see the checkpoint contract in the module docs).
    /// `None`: no such entry was pushed yet; keep the previous checkpoint.
    pub fn safe_position(&self) -> Option<EntryId> {
        self.safe
    }

    /// The open transaction whose first entry is the oldest.
    pub fn oldest_open(&self) -> Option<OpenTxnInfo> {
        self.open
            .values()
            .min_by_key(|t| t.first)
            .map(|t| OpenTxnInfo {
                txn: t.name(),
                first: t.first,
                entries: t.entries,
                ops: t.ops.len(),
                bytes: t.bytes,
                prepared: t.prepared,
            })
    }

    /// Forgets every open transaction (for a pipeline that restarts from a checkpoint).
    pub fn clear(&mut self) {
        self.open.clear();
        self.orphans.clear();
        self.total_bytes = 0;
        self.safe = None;
    }

    /// Takes the next committed entry of the replica set and says what to emit.
    ///
    /// # Errors
    /// [`TxnError`] for malformed transaction entries, broken chains, transactions whose
    /// start was not seen, and memory bounds. The assembler is unchanged by a failing
    /// entry.
    pub fn push(&mut self, e: &OplogEntry<'_>) -> Result<Step, TxnError> {
        let step = match e.command_name() {
            Some("applyOps") => self.on_apply_ops(e)?,
            Some("commitTransaction") => self.on_commit_or_abort(e, true)?,
            Some("abortTransaction") => self.on_commit_or_abort(e, false)?,
            _ => Step::Entry,
        };
        if self.open.is_empty() && self.orphans.is_empty() {
            self.safe = Some(e.id());
        }
        Ok(step)
    }

    fn on_apply_ops(&mut self, e: &OplogEntry<'_>) -> Result<Step, TxnError> {
        let at = e.ts;
        let Some(o) = e.o else {
            return Ok(Step::Entry);
        };
        let fields = read_apply_ops(o, at)?;
        let mut parsed = Vec::new();
        let top_level = flatten(fields.ops, e.from_migrate, 0, at, &mut parsed)?;
        if fields.partial && fields.prepare {
            return Err(TxnError::BadApplyOps {
                at,
                problem: "both partialTxn and prepare are set",
            });
        }
        let applied_separately = multi_op_type(e.raw()) == Some(1);
        let prev = if applied_separately {
            None
        } else {
            e.prev_op_time
        };
        let Some(prev) = prev else {
            if fields.partial || fields.prepare {
                return Err(TxnError::BadApplyOps {
                    at,
                    problem: "partialTxn or prepare without a prevOpTime",
                });
            }
            return Ok(Step::Emit(standalone(e, parsed)));
        };
        let key = session_key(e);
        let this = OpTime {
            ts: e.ts,
            term: e.term.unwrap_or(-1),
        };
        let expect_more = fields.partial || fields.prepare;

        if prev.is_null() {
            // The first entry of a chain.
            if let Some(open) = key.as_ref().and_then(|k| self.open.get(k)) {
                return Err(TxnError::BrokenChain {
                    at,
                    txn: open.name(),
                    expected: open.last,
                    found: prev,
                });
            }
            if !expect_more {
                return Ok(Step::Emit(standalone(e, parsed)));
            }
            let key = key.unwrap_or(TxnKey::Chain { first: e.ts });
            let mut txn = OpenTxn {
                lsid: e.lsid.map(ToOwned::to_owned),
                txn_number: e.txn_number,
                first: e.id(),
                last: this,
                entries: 0,
                top_level: 0,
                ops: Vec::new(),
                bytes: 0,
                prepared: false,
            };
            let add = parsed.iter().map(Parsed::cost).sum::<usize>()
                + txn.lsid.as_ref().map_or(0, |l| l.as_bytes().len());
            self.check_room(&txn, add, at)?;
            append(&mut txn, parsed, top_level, add, this);
            txn.prepared = fields.prepare;
            self.total_bytes += add;
            self.open.insert(key, txn);
            return Ok(Step::Buffered);
        }

        // A continuation or the end of a chain.
        let found = match &key {
            Some(k) => self.open.contains_key(k).then(|| k.clone()),
            None => self
                .open
                .iter()
                .find(|(k, t)| matches!(k, TxnKey::Chain { .. }) && links(t.last, prev))
                .map(|(k, _)| k.clone()),
        };
        let Some(found) = found else {
            return self.orphan(e, key, prev, "applyOps", expect_more.then_some(this));
        };
        let Some(txn) = self.open.get(&found) else {
            return Err(unknown(e, "applyOps"));
        };
        if !links(txn.last, prev) {
            return Err(TxnError::BrokenChain {
                at,
                txn: txn.name(),
                expected: txn.last,
                found: prev,
            });
        }
        if txn.prepared {
            return Err(TxnError::BadApplyOps {
                at,
                problem: "applyOps continues a transaction that is already prepared",
            });
        }
        if !expect_more {
            if let Some(count) = fields.count {
                let seen = txn.top_level + top_level;
                if u64::try_from(count).ok() != Some(seen) {
                    return Err(TxnError::CountMismatch {
                        at,
                        txn: txn.name(),
                        count,
                        seen,
                    });
                }
            }
        }
        let add = parsed.iter().map(Parsed::cost).sum::<usize>();
        self.check_room(txn, add, at)?;
        self.total_bytes += add;
        let Some(txn) = self.open.get_mut(&found) else {
            return Err(unknown(e, "applyOps"));
        };
        append(txn, parsed, top_level, add, this);
        if expect_more {
            txn.prepared = fields.prepare;
            return Ok(Step::Buffered);
        }
        let Some(txn) = self.open.remove(&found) else {
            return Err(unknown(e, "applyOps"));
        };
        self.total_bytes -= txn.bytes;
        Ok(Step::Emit(finish(txn, e.id())))
    }

    fn on_commit_or_abort(&mut self, e: &OplogEntry<'_>, commit: bool) -> Result<Step, TxnError> {
        let at = e.ts;
        let command = if commit {
            "commitTransaction"
        } else {
            "abortTransaction"
        };
        let Some(key) = session_key(e) else {
            return Err(TxnError::MissingSession { at, command });
        };
        let Some(txn) = self.open.get(&key) else {
            let prev = e.prev_op_time.unwrap_or(OpTime {
                ts: Timestamp::ZERO,
                term: -1,
            });
            return self.orphan(e, Some(key), prev, command, None);
        };
        if let Some(prev) = e.prev_op_time {
            if !links(txn.last, prev) {
                return Err(TxnError::BrokenChain {
                    at,
                    txn: txn.name(),
                    expected: txn.last,
                    found: prev,
                });
            }
        }
        let Some(mut txn) = self.open.remove(&key) else {
            return Err(unknown(e, command));
        };
        self.total_bytes -= txn.bytes;
        if commit {
            txn.entries += 1;
            let commit_timestamp = e.o.and_then(|o| match o.get("commitTimestamp") {
                Ok(Some(RawBsonRef::Timestamp(t))) => Some(t.into()),
                _ => None,
            });
            Ok(Step::Emit(CommittedTxn {
                commit_timestamp,
                ..finish(txn, e.id())
            }))
        } else {
            Ok(Step::Aborted(AbortedTxn {
                txn: txn.name(),
                abort: e.id(),
                first: txn.first,
                dropped_ops: txn.ops.len(),
            }))
        }
    }

    /// An entry of a transaction whose start was not seen: skipped when it started before
    /// `skip_orphans_before` (remembering the chain while more entries are expected),
    /// an error otherwise. `next` is the entry's optime when the chain goes on.
    fn orphan(
        &mut self,
        e: &OplogEntry<'_>,
        key: Option<TxnKey>,
        prev: OpTime,
        what: &'static str,
        next: Option<OpTime>,
    ) -> Result<Step, TxnError> {
        let known = match &key {
            Some(k) => self.orphans.contains_key(k).then(|| k.clone()),
            None => self
                .orphans
                .iter()
                .find(|(k, last)| matches!(k, TxnKey::Chain { .. }) && links(**last, prev))
                .map(|(k, _)| k.clone()),
        };
        let key = match known {
            Some(k) => k,
            None => {
                let before = self.config.skip_orphans_before;
                if !before.is_some_and(|b| !prev.is_null() && prev.ts < b) {
                    return Err(unknown(e, what));
                }
                key.unwrap_or(TxnKey::Chain { first: prev.ts })
            }
        };
        let name = match &key {
            TxnKey::Session { .. } => name_of(e.lsid, e.txn_number, None),
            TxnKey::Chain { .. } => TxnName::Chain { first: None },
        };
        match next {
            Some(next) => {
                self.orphans.insert(key, next);
            }
            None => {
                self.orphans.remove(&key);
            }
        }
        Ok(Step::SkippedOrphan(name))
    }

    fn check_room(&self, txn: &OpenTxn, add: usize, at: Timestamp) -> Result<(), TxnError> {
        let bytes = txn.bytes.saturating_add(add);
        if bytes > self.config.max_txn_bytes {
            return Err(TxnError::TooLarge {
                at,
                txn: txn.name(),
                bytes,
                limit: self.config.max_txn_bytes,
                bound: Bound::PerTransaction,
            });
        }
        let total = self.total_bytes.saturating_add(add);
        if total > self.config.max_total_bytes {
            return Err(TxnError::TooLarge {
                at,
                txn: txn.name(),
                bytes: total,
                limit: self.config.max_total_bytes,
                bound: Bound::Total,
            });
        }
        Ok(())
    }
}

fn unknown(e: &OplogEntry<'_>, what: &'static str) -> TxnError {
    TxnError::UnknownTransaction {
        at: e.ts,
        what,
        txn: name_of(e.lsid, e.txn_number, None),
    }
}

/// Whether `prev` (an entry's `prevOpTime`) points at `last`. The term is compared when
/// both are known.
fn links(last: OpTime, prev: OpTime) -> bool {
    last.ts == prev.ts && (last.term == prev.term || last.term < 0 || prev.term < 0)
}

fn session_key(e: &OplogEntry<'_>) -> Option<TxnKey> {
    match (e.lsid, e.txn_number) {
        (Some(lsid), Some(txn_number)) => Some(TxnKey::Session {
            lsid: lsid.as_bytes().to_vec(),
            txn_number,
        }),
        _ => None,
    }
}

fn append(txn: &mut OpenTxn, parsed: Vec<Parsed>, top_level: u64, add: usize, this: OpTime) {
    let base = txn.ops.len();
    txn.ops
        .extend(parsed.into_iter().enumerate().map(|(i, p)| TxnOp {
            op: p.op,
            ns: p.ns,
            from_migrate: p.from_migrate,
            index: u32::try_from(base + i).unwrap_or(u32::MAX),
            doc: p.doc,
        }));
    txn.top_level += top_level;
    txn.bytes += add;
    txn.entries += 1;
    txn.last = this;
}

fn finish(txn: OpenTxn, commit: EntryId) -> CommittedTxn {
    CommittedTxn {
        lsid: txn.lsid,
        txn_number: txn.txn_number,
        commit,
        first: txn.first,
        entries: txn.entries,
        prepared: txn.prepared,
        commit_timestamp: None,
        ops: txn.ops,
    }
}

fn standalone(e: &OplogEntry<'_>, parsed: Vec<Parsed>) -> CommittedTxn {
    let mut txn = OpenTxn {
        lsid: e.lsid.map(ToOwned::to_owned),
        txn_number: e.txn_number,
        first: e.id(),
        last: OpTime {
            ts: e.ts,
            term: e.term.unwrap_or(-1),
        },
        entries: 0,
        top_level: 0,
        ops: Vec::with_capacity(parsed.len()),
        bytes: 0,
        prepared: false,
    };
    let last = txn.last;
    append(&mut txn, parsed, 0, 0, last);
    finish(txn, e.id())
}

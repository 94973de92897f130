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
use std::fmt;

use bson::{RawArray, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::entry::{OpKind, OpTime, OplogEntry};
use crate::position::{EntryId, Timestamp};
use crate::record::TxnInfo;

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
    /// The operations, in order; `ops[i].index == i`.
    pub ops: Vec<TxnOp>,
}

impl CommittedTxn {
    /// The transaction details [`crate::record::encode_txn_op`] writes for `op`.
    pub fn info(&self, op: &TxnOp) -> TxnInfo<'_> {
        TxnInfo {
            lsid: self.lsid.as_deref(),
            txn_number: self.txn_number,
            index: op.index,
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

/// How errors and reports name a transaction.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum TxnName {
    /// A session's transaction.
    Session {
        /// `lsid.id` as a UUID (plus `txnUUID` for internal transactions).
        lsid: String,
        /// `txnNumber`.
        txn_number: i64,
    },
    /// A chain of `applyOps` without a session (a large batched write).
    Chain {
        /// The `ts` of its first entry, if known.
        first: Option<Timestamp>,
    },
}

impl fmt::Display for TxnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnName::Session { lsid, txn_number } => {
                write!(f, "transaction lsid {lsid} txnNumber {txn_number}")
            }
            TxnName::Chain { first: Some(ts) } => {
                write!(f, "session-less applyOps chain starting at ts {ts}")
            }
            TxnName::Chain { first: None } => write!(f, "session-less applyOps chain"),
        }
    }
}

/// Which bound a transaction went over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bound {
    /// [`TxnConfig::max_txn_bytes`].
    PerTransaction,
    /// [`TxnConfig::max_total_bytes`].
    Total,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bound::PerTransaction => "per-transaction bound (max_txn_bytes)",
            Bound::Total => "bound on all open transactions (max_total_bytes)",
        })
    }
}

fn show_optime(t: &OpTime) -> String {
    format!("{{ts: {}, t: {}}}", t.ts, t.term)
}

/// Why a transaction entry could not be assembled. Every variant names the `ts` of the
/// entry; all are definite (the pipeline should stop the shard).
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum TxnError {
    /// The `applyOps` field is not an array.
    #[error("applyOps entry at ts {at}: the `applyOps` field is {found}, not an array")]
    NotAnArray {
        /// The entry.
        at: Timestamp,
        /// The type found.
        found: String,
    },
    /// An inner operation is malformed.
    #[error("applyOps entry at ts {at}: inner operation {index}: {problem}")]
    BadInnerOp {
        /// The entry.
        at: Timestamp,
        /// Position of the operation in the entry's `applyOps` (after flattening).
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// An `applyOps` entry's flags or links contradict each other.
    #[error("applyOps entry at ts {at}: {problem}")]
    BadApplyOps {
        /// The entry.
        at: Timestamp,
        /// What is wrong.
        problem: &'static str,
    },
    /// Nested `applyOps` deeper than the assembler accepts.
    #[error("applyOps entry at ts {at}: applyOps nested more than {max} levels deep")]
    NestedTooDeep {
        /// The entry.
        at: Timestamp,
        /// The accepted depth.
        max: usize,
    },
    /// `commitTransaction` / `abortTransaction` without `lsid` and `txnNumber`.
    #[error("{command} entry at ts {at} has no lsid/txnNumber")]
    MissingSession {
        /// The entry.
        at: Timestamp,
        /// `commitTransaction` or `abortTransaction`.
        command: &'static str,
    },
    /// An entry continues or ends a transaction the assembler has nothing buffered for.
    #[error(
        "{what} at ts {at} for {txn}, but nothing is buffered for it: its earlier entries \
         were not seen. After a restart this means the checkpoint was taken inside an open \
         transaction; the transaction's operations cannot be emitted whole"
    )]
    UnknownTransaction {
        /// The entry.
        at: Timestamp,
        /// The kind of entry (`commitTransaction`, `abortTransaction`, `applyOps`).
        what: &'static str,
        /// Which transaction.
        txn: TxnName,
    },
    /// `prevOpTime` does not point at the transaction's previous entry.
    #[error(
        "entry at ts {at} breaks the chain of {txn}: prevOpTime is {found}, but the \
         transaction's last entry is {expected}",
        found = show_optime(.found),
        expected = show_optime(.expected)
    )]
    BrokenChain {
        /// The entry.
        at: Timestamp,
        /// Which transaction.
        txn: TxnName,
        /// The optime of the transaction's last entry.
        expected: OpTime,
        /// The entry's `prevOpTime`.
        found: OpTime,
    },
    /// The final entry's `count` differs from the operations seen.
    #[error(
        "final applyOps at ts {at} of {txn} says count {count}, but the chain holds {seen} \
         operations"
    )]
    CountMismatch {
        /// The entry.
        at: Timestamp,
        /// Which transaction.
        txn: TxnName,
        /// `count`.
        count: i64,
        /// Operations in the chain.
        seen: u64,
    },
    /// Buffering the entry would go over a memory bound.
    #[error(
        "entry at ts {at}: buffering {txn} would take {bytes} bytes, over the {bound} of {limit}"
    )]
    TooLarge {
        /// The entry.
        at: Timestamp,
        /// Which transaction.
        txn: TxnName,
        /// Bytes after the entry.
        bytes: usize,
        /// The bound.
        limit: usize,
        /// Which bound.
        bound: Bound,
    },
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

/// One parsed inner operation, before it gets its index.
struct Parsed {
    op: OpKind,
    ns: String,
    from_migrate: bool,
    doc: RawDocumentBuf,
}

impl Parsed {
    fn cost(&self) -> usize {
        self.doc.as_bytes().len() + self.ns.len() + std::mem::size_of::<TxnOp>()
    }
}

/// The fields of an `applyOps` entry's `o`.
struct ApplyOpsFields<'a> {
    ops: &'a RawArray,
    partial: bool,
    prepare: bool,
    count: Option<i64>,
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
            Ok(Step::Emit(finish(txn, e.id())))
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

fn name_of(
    lsid: Option<&RawDocument>,
    txn_number: Option<i64>,
    first: Option<Timestamp>,
) -> TxnName {
    match (lsid, txn_number) {
        (Some(lsid), Some(txn_number)) => TxnName::Session {
            lsid: describe_lsid(lsid),
            txn_number,
        },
        _ => TxnName::Chain { first },
    }
}

fn uuid_of(v: Option<RawBsonRef<'_>>) -> Option<String> {
    match v {
        Some(RawBsonRef::Binary(b)) if b.bytes.len() == 16 => {
            let h: String = b.bytes.iter().map(|x| format!("{x:02x}")).collect();
            Some(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
        _ => None,
    }
}

/// `lsid.id` as a UUID, with `txnUUID` for internal transactions.
fn describe_lsid(lsid: &RawDocument) -> String {
    let id = uuid_of(lsid.get("id").ok().flatten()).unwrap_or_else(|| "<no UUID id>".into());
    match uuid_of(lsid.get("txnUUID").ok().flatten()) {
        Some(t) => format!("{id} (txnUUID {t})"),
        None => id,
    }
}

fn type_name(v: &RawBsonRef<'_>) -> String {
    format!("{:?}", v.element_type())
}

fn read_apply_ops(o: &RawDocument, at: Timestamp) -> Result<ApplyOpsFields<'_>, TxnError> {
    let mut ops = None;
    let mut partial = false;
    let mut prepare = false;
    let mut count = None;
    for item in o.iter() {
        let (key, value) = item.map_err(|_| TxnError::BadApplyOps {
            at,
            problem: "`o` is not valid BSON",
        })?;
        match key.as_str() {
            "applyOps" => match value {
                RawBsonRef::Array(a) => ops = Some(a),
                other => {
                    return Err(TxnError::NotAnArray {
                        at,
                        found: type_name(&other),
                    })
                }
            },
            // The server reads both flags with `booleanSafe`: anything but `true` is false.
            "partialTxn" => partial = matches!(value, RawBsonRef::Boolean(true)),
            "prepare" => prepare = matches!(value, RawBsonRef::Boolean(true)),
            "count" => {
                count = Some(match value {
                    RawBsonRef::Int64(v) => v,
                    RawBsonRef::Int32(v) => v.into(),
                    _ => {
                        return Err(TxnError::BadApplyOps {
                            at,
                            problem: "`count` is not an integer",
                        })
                    }
                })
            }
            _ => {}
        }
    }
    let ops = ops.ok_or(TxnError::NotAnArray {
        at,
        found: "missing".into(),
    })?;
    Ok(ApplyOpsFields {
        ops,
        partial,
        prepare,
        count,
    })
}

fn multi_op_type(raw: &RawDocument) -> Option<i64> {
    match raw.get("multiOpType") {
        Ok(Some(RawBsonRef::Int32(v))) => Some(v.into()),
        Ok(Some(RawBsonRef::Int64(v))) => Some(v),
        _ => None,
    }
}

/// Appends the operations of `arr` to `out`, flattening nested `applyOps`; returns how
/// many elements `arr` itself has.
fn flatten(
    arr: &RawArray,
    outer_from_migrate: bool,
    depth: usize,
    at: Timestamp,
    out: &mut Vec<Parsed>,
) -> Result<u64, TxnError> {
    let mut n = 0;
    for item in arr {
        let index = out.len();
        let bad = |problem: String| TxnError::BadInnerOp { at, index, problem };
        let value = item.map_err(|err| bad(format!("invalid BSON: {err}")))?;
        let RawBsonRef::Document(d) = value else {
            return Err(bad(format!("is {}, not a document", type_name(&value))));
        };
        n += 1;
        let mut op = None;
        let mut ns = None;
        let mut from_migrate = false;
        let mut o = None;
        for field in d.iter() {
            let (key, value) = field.map_err(|err| bad(format!("invalid BSON: {err}")))?;
            match (key.as_str(), value) {
                ("op", RawBsonRef::String(code)) => {
                    op = Some(
                        OpKind::from_code(code)
                            .ok_or_else(|| bad(format!("unknown op code {code:?}")))?,
                    )
                }
                ("op", v) => return Err(bad(format!("`op` is {}, not a string", type_name(&v)))),
                ("ns", RawBsonRef::String(s)) => ns = Some(s),
                ("ns", v) => return Err(bad(format!("`ns` is {}, not a string", type_name(&v)))),
                ("fromMigrate", RawBsonRef::Boolean(b)) => from_migrate = b,
                ("o", RawBsonRef::Document(doc)) => o = Some(doc),
                _ => {}
            }
        }
        let op = op.ok_or_else(|| bad("has no `op`".into()))?;
        let ns = match (ns, op) {
            (Some(ns), _) => ns,
            // Servers skip no-ops before reading `ns`, so old entries may lack it.
            (None, OpKind::Noop) => "",
            (None, _) => return Err(bad("has no `ns`".into())),
        };
        let from_migrate = outer_from_migrate || from_migrate;
        let nested = match o.and_then(|o| o.iter().next()) {
            Some(Ok((k, v))) if op == OpKind::Command && k.as_str() == "applyOps" => Some(v),
            _ => None,
        };
        if let Some(nested) = nested {
            let RawBsonRef::Array(inner) = nested else {
                return Err(TxnError::NotAnArray {
                    at,
                    found: type_name(&nested),
                });
            };
            if depth + 1 >= MAX_NESTING {
                return Err(TxnError::NestedTooDeep {
                    at,
                    max: MAX_NESTING,
                });
            }
            flatten(inner, from_migrate, depth + 1, at, out)?;
            continue;
        }
        out.push(Parsed {
            op,
            ns: ns.to_owned(),
            from_migrate,
            doc: d.to_owned(),
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::raw::cstr;
    use bson::spec::BinarySubtype;
    use bson::{rawdoc, Binary, RawArrayBuf};

    const T0: u32 = 1_700_000_000;

    fn ts(i: u32) -> bson::Timestamp {
        bson::Timestamp {
            time: T0,
            increment: i,
        }
    }

    fn at(i: u32) -> Timestamp {
        Timestamp::new(T0, i)
    }

    fn uuid(b: u8) -> Binary {
        Binary {
            subtype: BinarySubtype::Uuid,
            bytes: vec![b; 16],
        }
    }

    fn lsid(n: u8) -> RawDocumentBuf {
        rawdoc! {
            "id": uuid(n),
            "uid": Binary { subtype: BinarySubtype::Generic, bytes: vec![0xe3; 32] },
        }
    }

    fn ins(ns: &str, id: i32) -> RawDocumentBuf {
        rawdoc! { "op": "i", "ns": ns, "ui": uuid(9), "o": { "_id": id, "v": "x" }, "o2": { "_id": id } }
    }

    fn upd(ns: &str, id: i32) -> RawDocumentBuf {
        rawdoc! { "op": "u", "ns": ns, "ui": uuid(9), "o": { "$v": 2, "diff": { "u": { "v": "y" } } }, "o2": { "_id": id } }
    }

    fn ops(docs: Vec<RawDocumentBuf>) -> RawArrayBuf {
        let mut a = RawArrayBuf::new();
        for d in docs {
            a.push(d);
        }
        a
    }

    /// `prevOpTime` pointing at entry `i`, or the null OpTime for 0.
    fn prev(i: u32) -> RawDocumentBuf {
        if i == 0 {
            rawdoc! { "ts": bson::Timestamp { time: 0, increment: 0 }, "t": -1_i64 }
        } else {
            rawdoc! { "ts": ts(i), "t": 1_i64 }
        }
    }

    /// A transaction entry at `ts(i)` with session `(lsid n, txnNumber)`, `o` and
    /// `prevOpTime` (`None`: no field).
    fn txn_entry(
        i: u32,
        session: Option<(u8, i64)>,
        o: RawDocumentBuf,
        prev_at: Option<u32>,
    ) -> RawDocumentBuf {
        let mut d = RawDocumentBuf::new();
        if let Some((n, txn)) = session {
            d.append(cstr!("lsid"), lsid(n));
            d.append(cstr!("txnNumber"), txn);
        }
        d.append(cstr!("op"), "c");
        d.append(cstr!("ns"), "admin.$cmd");
        d.append(cstr!("o"), o);
        d.append(cstr!("ts"), ts(i));
        d.append(cstr!("t"), 1_i64);
        d.append(cstr!("v"), 2_i64);
        d.append(
            cstr!("wall"),
            bson::DateTime::from_millis(1_700_000_000_000),
        );
        if let Some(p) = prev_at {
            d.append(cstr!("prevOpTime"), prev(p));
        }
        d.append(cstr!("stmtId"), 0_i32);
        d
    }

    fn partial(i: u32, s: (u8, i64), p: u32, docs: Vec<RawDocumentBuf>) -> RawDocumentBuf {
        txn_entry(
            i,
            Some(s),
            rawdoc! { "applyOps": ops(docs), "partialTxn": true },
            Some(p),
        )
    }

    fn last(i: u32, s: (u8, i64), p: u32, docs: Vec<RawDocumentBuf>, count: i64) -> RawDocumentBuf {
        txn_entry(
            i,
            Some(s),
            rawdoc! { "applyOps": ops(docs), "count": count },
            Some(p),
        )
    }

    fn commit(i: u32, s: (u8, i64), p: u32) -> RawDocumentBuf {
        txn_entry(
            i,
            Some(s),
            rawdoc! { "commitTransaction": 1, "commitTimestamp": ts(i - 1) },
            Some(p),
        )
    }

    fn abort(i: u32, s: (u8, i64), p: u32) -> RawDocumentBuf {
        txn_entry(i, Some(s), rawdoc! { "abortTransaction": 1 }, Some(p))
    }

    fn plain(i: u32) -> RawDocumentBuf {
        rawdoc! { "op": "i", "ns": "shop.orders", "ui": uuid(9), "o": { "_id": 1000 + i as i32 }, "ts": ts(i), "t": 1_i64, "v": 2_i64 }
    }

    fn push(a: &mut TxnAssembler, raw: &RawDocumentBuf) -> Result<Step, TxnError> {
        a.push(&OplogEntry::parse(raw).unwrap())
    }

    fn emitted(step: Step) -> CommittedTxn {
        match step {
            Step::Emit(t) => t,
            other => panic!("expected Emit, got {other:?}"),
        }
    }

    fn ids(t: &CommittedTxn) -> Vec<i32> {
        t.ops
            .iter()
            .map(|op| match op.document_id() {
                Some(RawBsonRef::Int32(v)) => v,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn non_transaction_entries_pass_through() {
        let mut a = TxnAssembler::default();
        assert_eq!(push(&mut a, &plain(1)).unwrap(), Step::Entry);
        let ddl = rawdoc! { "op": "c", "ns": "shop.$cmd", "ui": uuid(9), "o": { "drop": "orders" }, "ts": ts(2), "t": 1_i64 };
        assert_eq!(push(&mut a, &ddl).unwrap(), Step::Entry);
        let noop = rawdoc! { "op": "n", "ns": "", "o": { "msg": "periodic noop" }, "ts": ts(3), "t": 1_i64 };
        assert_eq!(push(&mut a, &noop).unwrap(), Step::Entry);
        assert!(!a.has_open());
    }

    #[test]
    fn small_transaction() {
        let mut a = TxnAssembler::default();
        let raw = txn_entry(
            5,
            Some((1, 3)),
            rawdoc! { "applyOps": ops(vec![ins("shop.orders", 1), upd("shop.stock", 2)]) },
            Some(0),
        );
        let t = emitted(push(&mut a, &raw).unwrap());
        assert_eq!(t.commit, EntryId::new(at(5), 1));
        assert_eq!(t.first, t.commit);
        assert_eq!((t.entries, t.prepared), (1, false));
        assert_eq!(t.txn_number, Some(3));
        assert_eq!(t.lsid.as_deref(), Some(lsid(1).as_ref()));
        assert_eq!(ids(&t), [1, 2]);
        assert_eq!(t.ops[0].op, OpKind::Insert);
        assert_eq!(t.ops[1].op, OpKind::Update);
        assert_eq!(t.ops[1].ns, "shop.stock");
        assert_eq!(
            (t.ops[0].index, t.ops[1].index, t.ops[1].from_migrate),
            (0, 1, false)
        );
        assert_eq!(t.ops[0].doc, ins("shop.orders", 1));
        assert_eq!(t.info(&t.ops[1]).index, 1);
        assert!(!a.has_open());
    }

    #[test]
    fn applyops_command_without_session() {
        let mut a = TxnAssembler::default();
        let raw = rawdoc! {
            "op": "c", "ns": "test.$cmd",
            "o": { "applyOps": ops(vec![ins("test.c", 1)]), "alwaysUpsert": true },
            "ts": ts(4), "t": 1_i64, "v": 2_i64,
        };
        let t = emitted(push(&mut a, &raw).unwrap());
        assert_eq!((&t.lsid, t.txn_number), (&None, None));
        assert_eq!(ids(&t), [1]);
    }

    #[test]
    fn large_transaction_with_three_partial_entries() {
        let mut a = TxnAssembler::default();
        let s = (1, 7);
        push(&mut a, &plain(9)).unwrap();
        assert_eq!(
            push(
                &mut a,
                &partial(10, s, 0, vec![ins("a.b", 0), ins("a.b", 1)])
            )
            .unwrap(),
            Step::Buffered
        );
        assert_eq!(
            push(&mut a, &partial(11, s, 10, vec![ins("a.b", 2)])).unwrap(),
            Step::Buffered
        );
        assert_eq!(
            push(&mut a, &partial(12, s, 11, vec![upd("a.b", 3)])).unwrap(),
            Step::Buffered
        );
        let open = a.oldest_open().unwrap();
        assert_eq!(open.first, EntryId::new(at(10), 1));
        assert_eq!(a.safe_position(), Some(EntryId::new(at(9), 1)));
        assert_eq!((open.entries, open.ops, open.prepared), (3, 4, false));
        assert!(a.buffered_bytes() > 0);
        let t = emitted(push(&mut a, &last(13, s, 12, vec![ins("a.b", 4)], 5)).unwrap());
        assert_eq!(ids(&t), [0, 1, 2, 3, 4]);
        assert_eq!(
            t.ops.iter().map(|o| o.index).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(t.commit, EntryId::new(at(13), 1));
        assert_eq!(t.first, EntryId::new(at(10), 1));
        assert_eq!(t.entries, 4);
        assert!(!a.has_open());
        assert_eq!(a.buffered_bytes(), 0);
    }

    #[test]
    fn prepared_small_transaction_commits() {
        let mut a = TxnAssembler::default();
        let s = (2, 1);
        let prep = txn_entry(
            20,
            Some(s),
            rawdoc! { "applyOps": ops(vec![ins("a.b", 1)]), "prepare": true },
            Some(0),
        );
        assert_eq!(push(&mut a, &prep).unwrap(), Step::Buffered);
        assert!(a.oldest_open().unwrap().prepared);
        assert_eq!(push(&mut a, &plain(21)).unwrap(), Step::Entry);
        let t = emitted(push(&mut a, &commit(22, s, 20)).unwrap());
        assert!(t.prepared);
        assert_eq!(t.entries, 2);
        assert_eq!(t.commit, EntryId::new(at(22), 1));
        assert_eq!(ids(&t), [1]);
        assert!(!a.has_open());
    }

    #[test]
    fn prepared_large_transaction_commits() {
        let mut a = TxnAssembler::default();
        let s = (3, 2);
        push(&mut a, &partial(30, s, 0, vec![ins("a.b", 1)])).unwrap();
        push(&mut a, &partial(31, s, 30, vec![ins("a.b", 2)])).unwrap();
        // The prepare entry takes the last reserved slot: a gap is normal.
        let prep = txn_entry(
            34,
            Some(s),
            rawdoc! { "applyOps": ops(vec![ins("a.b", 3)]), "prepare": true, "count": 3_i64 },
            Some(31),
        );
        assert_eq!(push(&mut a, &prep).unwrap(), Step::Buffered);
        assert_eq!(push(&mut a, &plain(35)).unwrap(), Step::Entry);
        let t = emitted(push(&mut a, &commit(40, s, 34)).unwrap());
        assert_eq!(ids(&t), [1, 2, 3]);
        assert_eq!((t.entries, t.prepared), (4, true));
    }

    #[test]
    fn prepared_transaction_aborts() {
        let mut a = TxnAssembler::default();
        let s = (4, 9);
        push(
            &mut a,
            &partial(50, s, 0, vec![ins("a.b", 1), ins("a.b", 2)]),
        )
        .unwrap();
        let prep = txn_entry(
            51,
            Some(s),
            rawdoc! { "applyOps": ops(vec![ins("a.b", 3)]), "prepare": true, "count": 3_i64 },
            Some(50),
        );
        push(&mut a, &prep).unwrap();
        match push(&mut a, &abort(52, s, 51)).unwrap() {
            Step::Aborted(ab) => {
                assert_eq!(ab.dropped_ops, 3);
                assert_eq!(ab.abort, EntryId::new(at(52), 1));
                assert_eq!(ab.first, EntryId::new(at(50), 1));
                assert!(ab.txn.to_string().contains("txnNumber 9"), "{}", ab.txn);
            }
            other => panic!("{other:?}"),
        }
        assert!(!a.has_open());
        assert_eq!(a.buffered_bytes(), 0);
    }

    #[test]
    fn empty_prepare_then_commit() {
        let mut a = TxnAssembler::default();
        let s = (4, 10);
        let prep = txn_entry(
            53,
            Some(s),
            rawdoc! { "applyOps": [], "prepare": true },
            Some(0),
        );
        assert_eq!(push(&mut a, &prep).unwrap(), Step::Buffered);
        assert!(emitted(push(&mut a, &commit(54, s, 53)).unwrap())
            .ops
            .is_empty());
    }

    #[test]
    fn unprepared_large_transaction_aborts() {
        let mut a = TxnAssembler::default();
        let s = (5, 1);
        push(&mut a, &partial(60, s, 0, vec![ins("a.b", 1)])).unwrap();
        push(&mut a, &partial(61, s, 60, vec![ins("a.b", 2)])).unwrap();
        match push(&mut a, &abort(62, s, 61)).unwrap() {
            Step::Aborted(ab) => assert_eq!(ab.dropped_ops, 2),
            other => panic!("{other:?}"),
        }
        assert!(!a.has_open());
    }

    #[test]
    fn interleaved_sessions_and_plain_entries() {
        let mut a = TxnAssembler::default();
        let (s1, s2) = ((1, 1), (2, 1));
        push(&mut a, &partial(70, s1, 0, vec![ins("a.one", 1)])).unwrap();
        push(&mut a, &partial(71, s2, 0, vec![ins("a.two", 1)])).unwrap();
        assert_eq!(push(&mut a, &plain(72)).unwrap(), Step::Entry);
        assert!(a.has_open());
        assert_eq!(a.open_count(), 2);
        assert_eq!(a.oldest_open().unwrap().first.ts, at(70));
        push(&mut a, &partial(73, s2, 71, vec![ins("a.two", 2)])).unwrap();
        push(&mut a, &partial(74, s1, 70, vec![ins("a.one", 2)])).unwrap();
        let t2 = emitted(push(&mut a, &last(75, s2, 73, vec![ins("a.two", 3)], 3)).unwrap());
        assert!(t2.ops.iter().all(|o| o.ns == "a.two"));
        assert_eq!(ids(&t2), [1, 2, 3]);
        assert_eq!(a.open_count(), 1);
        // s1 opened before s2 and is still open: no checkpoint yet, although s2's
        // first entry is behind us.
        assert_eq!(a.safe_position(), None);
        assert_eq!(push(&mut a, &plain(76)).unwrap(), Step::Entry);
        assert!(a.has_open());
        let t1 = emitted(push(&mut a, &last(77, s1, 74, vec![ins("a.one", 3)], 3)).unwrap());
        assert!(t1.ops.iter().all(|o| o.ns == "a.one"));
        assert_eq!(ids(&t1), [1, 2, 3]);
        assert!(!a.has_open());
        assert_eq!(a.safe_position(), Some(EntryId::new(at(77), 1)));
    }

    /// A batched multi-delete (7.0+: `OpObserverImpl::onBatchedWriteCommit`, one
    /// session-less `applyOps` per batch, no `prevOpTime`) is emitted whole at its own
    /// position, its deletes in order; the safe position is the batch entry itself, never a
    /// point inside it.
    #[test]
    fn batched_delete_is_emitted_whole_at_its_position() {
        let mut a = TxnAssembler::default();
        push(&mut a, &plain(1)).unwrap();
        let del =
            |id: i32| rawdoc! { "op": "d", "ns": "shop.items", "ui": uuid(9), "o": { "_id": id } };
        let batch = txn_entry(
            2,
            None,
            rawdoc! { "applyOps": ops((0..100).map(del).collect()) },
            None,
        );
        let t = emitted(push(&mut a, &batch).unwrap());
        assert_eq!(ids(&t), (0..100).collect::<Vec<_>>());
        assert!(t
            .ops
            .iter()
            .all(|op| op.op == OpKind::Delete && op.ns == "shop.items"));
        assert_eq!(t.commit, EntryId::new(at(2), 1));
        assert!(t.lsid.is_none());
        assert!(!a.has_open());
        assert_eq!(a.safe_position(), Some(EntryId::new(at(2), 1)));
    }

    #[test]
    fn safe_position_never_cuts_a_transaction() {
        let mut a = TxnAssembler::default();
        let (s1, s2) = ((1, 1), (2, 1));
        push(&mut a, &plain(1)).unwrap();
        push(&mut a, &partial(2, s1, 0, vec![ins("a.b", 1)])).unwrap();
        push(&mut a, &partial(3, s2, 0, vec![ins("a.b", 2)])).unwrap();
        push(&mut a, &last(4, s1, 2, vec![ins("a.b", 3)], 2)).unwrap();
        // s1 is done and s2 (oldest open) started at 3, but a checkpoint at 2 would cut
        // s1 in two: the safe position stays at 1.
        assert_eq!(a.oldest_open().unwrap().first.ts, at(3));
        assert_eq!(a.safe_position(), Some(EntryId::new(at(1), 1)));
        push(&mut a, &last(5, s2, 3, vec![ins("a.b", 4)], 2)).unwrap();
        assert_eq!(a.safe_position(), Some(EntryId::new(at(5), 1)));
    }

    #[test]
    fn same_session_next_txn_number_is_separate() {
        let mut a = TxnAssembler::default();
        push(&mut a, &partial(80, (1, 1), 0, vec![ins("a.b", 1)])).unwrap();
        push(&mut a, &partial(81, (1, 2), 0, vec![ins("a.b", 2)])).unwrap();
        assert_eq!(a.open_count(), 2);
    }

    #[test]
    fn from_migrate_inner_and_entry_level() {
        let mut a = TxnAssembler::default();
        let mut migrated = ins("a.b", 2);
        migrated.append(cstr!("fromMigrate"), true);
        let raw = txn_entry(
            90,
            Some((1, 1)),
            rawdoc! { "applyOps": ops(vec![ins("a.b", 1), migrated]) },
            Some(0),
        );
        let t = emitted(push(&mut a, &raw).unwrap());
        assert_eq!(
            t.ops.iter().map(|o| o.from_migrate).collect::<Vec<_>>(),
            [false, true]
        );
        // A batched write (6.0+) carries fromMigrate on the entry itself.
        let batched = rawdoc! {
            "op": "c", "ns": "admin.$cmd", "fromMigrate": true,
            "o": { "applyOps": ops(vec![rawdoc! { "op": "d", "ns": "a.b", "ui": uuid(9), "o": { "_id": 3 } }]) },
            "ts": ts(91), "t": 1_i64,
        };
        let t = emitted(push(&mut a, &batched).unwrap());
        assert!(t.ops[0].from_migrate);
        assert_eq!(t.ops[0].op, OpKind::Delete);
    }

    #[test]
    fn session_less_batched_chain() {
        let mut a = TxnAssembler::default();
        let p = txn_entry(
            100,
            None,
            rawdoc! { "applyOps": ops(vec![ins("a.b", 1)]), "partialTxn": true },
            Some(0),
        );
        assert_eq!(push(&mut a, &p).unwrap(), Step::Buffered);
        assert!(matches!(
            a.oldest_open().unwrap().txn,
            TxnName::Chain { first: Some(t) } if t == at(100)
        ));
        let f = txn_entry(
            101,
            None,
            rawdoc! { "applyOps": ops(vec![ins("a.b", 2)]), "count": 2_i64 },
            Some(100),
        );
        let t = emitted(push(&mut a, &f).unwrap());
        assert_eq!(ids(&t), [1, 2]);
        assert_eq!(t.lsid, None);
    }

    #[test]
    fn applied_separately_entries_are_standalone() {
        let mut a = TxnAssembler::default();
        let mut raw = txn_entry(
            110,
            Some((1, 4)),
            rawdoc! { "applyOps": ops(vec![ins("a.b", 1)]) },
            Some(109),
        );
        raw.append(cstr!("multiOpType"), 1_i32);
        let t = emitted(push(&mut a, &raw).unwrap());
        assert_eq!(ids(&t), [1]);
        assert!(!a.has_open());
    }

    #[test]
    fn nested_apply_ops_is_flattened() {
        let mut a = TxnAssembler::default();
        let nested = rawdoc! { "op": "c", "ns": "admin.$cmd", "o": { "applyOps": ops(vec![ins("a.b", 2), ins("a.b", 3)]) }, "fromMigrate": true };
        let raw = rawdoc! {
            "op": "c", "ns": "admin.$cmd",
            "o": { "applyOps": ops(vec![ins("a.b", 1), nested, ins("a.b", 4)]) },
            "ts": bson::Timestamp { time: 1422998892, increment: 1 }, "h": 5_i64,
        };
        let t = emitted(push(&mut a, &raw).unwrap());
        assert_eq!(ids(&t), [1, 2, 3, 4]);
        assert_eq!(
            t.ops.iter().map(|o| o.from_migrate).collect::<Vec<_>>(),
            [false, true, true, false]
        );
        assert_eq!(
            t.ops.iter().map(|o| o.index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );

        let mut deep = ops(vec![ins("a.b", 1)]);
        for _ in 0..MAX_NESTING {
            deep = ops(vec![
                rawdoc! { "op": "c", "ns": "admin.$cmd", "o": { "applyOps": deep } },
            ]);
        }
        let raw = rawdoc! { "op": "c", "ns": "admin.$cmd", "o": { "applyOps": deep }, "ts": ts(1), "t": 1_i64 };
        assert!(matches!(
            push(&mut a, &raw),
            Err(TxnError::NestedTooDeep { .. })
        ));
    }

    #[test]
    fn inner_command_and_noop_ops() {
        let mut a = TxnAssembler::default();
        let raw = txn_entry(
            120,
            Some((1, 1)),
            rawdoc! { "applyOps": ops(vec![
                rawdoc! { "op": "c", "ns": "a.$cmd", "ui": uuid(8), "o": { "create": "b", "idIndex": { "v": 2, "key": { "_id": 1 }, "name": "_id_" } } },
                rawdoc! { "op": "n", "o": { "msg": "x" } },
            ]) },
            Some(0),
        );
        let t = emitted(push(&mut a, &raw).unwrap());
        assert_eq!(t.ops[0].command_name(), Some("create"));
        assert_eq!(t.ops[1].op, OpKind::Noop);
        assert_eq!(t.ops[1].ns, "");
    }

    #[test]
    fn error_not_an_array() {
        let mut a = TxnAssembler::default();
        let raw = txn_entry(
            130,
            Some((1, 1)),
            rawdoc! { "applyOps": { "0": ins("a.b", 1) } },
            Some(0),
        );
        let err = push(&mut a, &raw).unwrap_err();
        assert!(matches!(err, TxnError::NotAnArray { at: t, .. } if t == at(130)));
        assert!(err.to_string().contains("1700000000:130"), "{err}");
    }

    #[test]
    fn error_bad_inner_ops() {
        let mut a = TxnAssembler::default();
        for (inner, needle) in [
            (rawdoc! { "ns": "a.b", "o": { "_id": 1 } }, "has no `op`"),
            (rawdoc! { "op": "i", "o": { "_id": 1 } }, "has no `ns`"),
            (
                rawdoc! { "op": "zz", "ns": "a.b", "o": {} },
                "unknown op code",
            ),
            (rawdoc! { "op": 1, "ns": "a.b", "o": {} }, "not a string"),
        ] {
            let raw = txn_entry(
                131,
                Some((1, 1)),
                rawdoc! { "applyOps": ops(vec![ins("a.b", 0), inner]) },
                Some(0),
            );
            let err = push(&mut a, &raw).unwrap_err();
            assert!(
                matches!(err, TxnError::BadInnerOp { index: 1, .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(needle) && msg.contains("1700000000:131"),
                "{msg}"
            );
        }
        let raw = rawdoc! { "op": "c", "ns": "a.$cmd", "o": { "applyOps": [1] }, "ts": ts(132), "t": 1_i64 };
        assert!(push(&mut a, &raw)
            .unwrap_err()
            .to_string()
            .contains("not a document"));
    }

    #[test]
    fn error_commit_or_abort_of_unknown_transaction() {
        let mut a = TxnAssembler::default();
        let err = push(&mut a, &commit(140, (6, 42), 139)).unwrap_err();
        match &err {
            TxnError::UnknownTransaction { at: t, what, txn } => {
                assert_eq!(*t, at(140));
                assert_eq!(*what, "commitTransaction");
                assert_eq!(
                    *txn,
                    TxnName::Session {
                        lsid: "06060606-0606-0606-0606-060606060606".into(),
                        txn_number: 42
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("06060606-0606")
                && msg.contains("txnNumber 42")
                && msg.contains("checkpoint"),
            "{msg}"
        );
        assert!(matches!(
            push(&mut a, &abort(141, (6, 42), 139)),
            Err(TxnError::UnknownTransaction {
                what: "abortTransaction",
                ..
            })
        ));
        // A continuation or final entry without its start is the same error.
        assert!(matches!(
            push(&mut a, &last(142, (6, 43), 138, vec![ins("a.b", 1)], 2)),
            Err(TxnError::UnknownTransaction {
                what: "applyOps",
                ..
            })
        ));
        let no_session = rawdoc! { "op": "c", "ns": "admin.$cmd", "o": { "commitTransaction": 1 }, "ts": ts(143), "t": 1_i64 };
        assert!(matches!(
            push(&mut a, &no_session),
            Err(TxnError::MissingSession { .. })
        ));
    }

    #[test]
    fn error_broken_chain() {
        let mut a = TxnAssembler::default();
        let s = (7, 1);
        push(&mut a, &partial(150, s, 0, vec![ins("a.b", 1)])).unwrap();
        push(&mut a, &partial(151, s, 150, vec![ins("a.b", 2)])).unwrap();
        // Points at 150 instead of 151: entry 151 is skipped over.
        let err = push(&mut a, &partial(152, s, 150, vec![ins("a.b", 3)])).unwrap_err();
        match &err {
            TxnError::BrokenChain {
                at: t,
                expected,
                found,
                ..
            } => {
                assert_eq!(*t, at(152));
                assert_eq!(expected.ts, at(151));
                assert_eq!(found.ts, at(150));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("1700000000:152"), "{err}");
        // The failing entry changed nothing: the right continuation still works.
        assert_eq!(a.oldest_open().unwrap().ops, 2);
        let t = emitted(push(&mut a, &last(153, s, 151, vec![ins("a.b", 3)], 3)).unwrap());
        assert_eq!(ids(&t), [1, 2, 3]);

        // A restarted chain while one is open, and a commit pointing elsewhere.
        push(&mut a, &partial(160, s, 0, vec![ins("a.b", 1)])).unwrap();
        assert!(matches!(
            push(&mut a, &partial(161, s, 0, vec![ins("a.b", 1)])),
            Err(TxnError::BrokenChain { .. })
        ));
        assert!(matches!(
            push(&mut a, &commit(162, s, 159)),
            Err(TxnError::BrokenChain { .. })
        ));
    }

    #[test]
    fn error_count_mismatch() {
        let mut a = TxnAssembler::default();
        let s = (8, 1);
        push(&mut a, &partial(170, s, 0, vec![ins("a.b", 1)])).unwrap();
        let err = push(&mut a, &last(171, s, 170, vec![ins("a.b", 2)], 3)).unwrap_err();
        assert!(
            matches!(
                err,
                TxnError::CountMismatch {
                    count: 3,
                    seen: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn error_bad_flags() {
        let mut a = TxnAssembler::default();
        let both = txn_entry(
            180,
            Some((1, 1)),
            rawdoc! { "applyOps": [], "partialTxn": true, "prepare": true },
            Some(0),
        );
        assert!(matches!(
            push(&mut a, &both),
            Err(TxnError::BadApplyOps { .. })
        ));
        let no_prev = txn_entry(
            181,
            Some((1, 1)),
            rawdoc! { "applyOps": [], "partialTxn": true },
            None,
        );
        assert!(matches!(
            push(&mut a, &no_prev),
            Err(TxnError::BadApplyOps { .. })
        ));
    }

    #[test]
    fn memory_bounds() {
        let big = |id: i32| {
            rawdoc! { "op": "i", "ns": "a.b", "o": { "_id": id, "pad": "x".repeat(1000) } }
        };
        let mut a = TxnAssembler::new(TxnConfig {
            max_txn_bytes: 3000,
            max_total_bytes: 4000,
            skip_orphans_before: None,
        });
        let s = (9, 1);
        push(&mut a, &partial(190, s, 0, vec![big(1)])).unwrap();
        push(&mut a, &partial(191, s, 190, vec![big(2)])).unwrap();
        let err = push(&mut a, &partial(192, s, 191, vec![big(3)])).unwrap_err();
        match &err {
            TxnError::TooLarge {
                bound, limit, txn, ..
            } => {
                assert_eq!((*bound, *limit), (Bound::PerTransaction, 3000));
                assert!(matches!(txn, TxnName::Session { txn_number: 1, .. }));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("txnNumber 1"), "{err}");
        let before = a.buffered_bytes();
        // A second transaction hits the total bound.
        push(&mut a, &partial(193, (10, 1), 0, vec![big(1)])).unwrap();
        let err = push(&mut a, &partial(194, (10, 1), 193, vec![big(2)])).unwrap_err();
        assert!(
            matches!(
                err,
                TxnError::TooLarge {
                    bound: Bound::Total,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(a.buffered_bytes() > before);
        assert!(a.buffered_bytes() <= 4000);
    }

    #[test]
    fn orphans_before_the_start_can_be_skipped() {
        let mut a = TxnAssembler::new(TxnConfig {
            skip_orphans_before: Some(at(200)),
            ..TxnConfig::default()
        });
        let s = (11, 1);
        // Started at 198, before the start position 200.
        assert!(matches!(
            push(&mut a, &partial(201, s, 198, vec![ins("a.b", 2)])).unwrap(),
            Step::SkippedOrphan(_)
        ));
        assert!(matches!(
            push(&mut a, &last(202, s, 201, vec![ins("a.b", 3)], 3)).unwrap(),
            Step::SkippedOrphan(_)
        ));
        assert!(!a.has_open());
        // A prepared transaction prepared before the start, committed after.
        assert!(matches!(
            push(&mut a, &commit(203, (12, 1), 199)).unwrap(),
            Step::SkippedOrphan(_)
        ));
        // A chain that began after the start position is still an error.
        assert!(matches!(
            push(&mut a, &commit(205, (13, 1), 204)),
            Err(TxnError::UnknownTransaction { .. })
        ));
    }

    #[test]
    fn clear_forgets_everything() {
        let mut a = TxnAssembler::default();
        push(&mut a, &partial(210, (1, 1), 0, vec![ins("a.b", 1)])).unwrap();
        a.clear();
        assert!(!a.has_open());
        assert_eq!(a.buffered_bytes(), 0);
        assert!(a.oldest_open().is_none());
    }
}

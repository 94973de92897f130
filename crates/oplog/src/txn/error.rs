//! How errors and reports name a transaction ([`TxnName`]), the bounds on buffered
//! transactions ([`Bound`]) and why an entry could not be assembled ([`TxnError`]).

use std::fmt;

use crate::entry::OpTime;
use crate::position::Timestamp;

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
    /// [`TxnConfig::max_txn_bytes`](super::TxnConfig::max_txn_bytes).
    PerTransaction,
    /// [`TxnConfig::max_total_bytes`](super::TxnConfig::max_total_bytes).
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

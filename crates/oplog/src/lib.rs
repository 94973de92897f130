//! The oplog model of quorumtail: everything about a single oplog entry, with no I/O.
//!
//! ```text
//!  raw BSON from a node ──► OplogEntry::parse ──► id() / digest()  ──► merge engine
//!                                   │
//!           (after the merge)       ▼
//!            transactions unpacked, Filter::check, record::encode_* ──► sink
//! ```
//!
//! * [`position`]: [`Timestamp`], the entry identity [`EntryId`] and the shard-qualified
//!   [`ShardPosition`], with the ordering guarantees they carry.
//! * [`entry`]: a zero-copy view of a raw entry (bson's `RawDocument`), read in one pass.
//! * [`filter`]: `fromMigrate`, one record per DDL operation, no-ops, internal
//!   namespaces, include/exclude patterns.
//! * [`txn`]: transaction assembly: `applyOps` unpacked, large and prepared transactions
//!   buffered until they commit, with the checkpoint contract that goes with it.
//! * [`extjson`] and [`record`]: the output record, Extended JSON written straight from the
//!   raw bytes into a reused buffer.
//!
//! Why the identity is `(ts, t, h)` and not the classic `(ts, h)`: `h` was random only
//! up to MongoDB 4.0, is 0 in 4.2 and absent from 4.4, whereas the term `t` exists from 3.2
//! on and distinguishes an entry from the one that replaced it at the same `ts` after a
//! rollback. Using every part that is present covers legacy (2.6-era, `h` only) and current
//! (`t` only) oplogs alike.

pub mod entry;
pub mod extjson;
pub mod filter;
pub mod position;
pub mod record;
pub mod txn;

pub use entry::{EntryError, EntryLayout, OpKind, OpTime, OplogEntry};
pub use filter::{
    ddl_of, Ddl, DropReason, Filter, NsPattern, Placement, PrimaryShards, ReshardRole,
    ReshardTracker,
};
pub use position::{EntryId, ShardPosition, Timestamp};
pub use txn::{
    AbortedTxn, Bound, CommittedTxn, OpenTxnInfo, Step, TxnAssembler, TxnConfig, TxnError, TxnName,
    TxnOp,
};

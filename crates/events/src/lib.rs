//! Change events from oplog entries, shaped as MongoDB's change streams shape them.
//!
//! * [`update`]: what an update changed (`updatedFields`, `removedFields`,
//!   `truncatedArrays`, `disambiguatedPaths`), decoded from the update formats MongoDB logs:
//!   the `$v: 2` delta (5.0+; MongoDB does not document it for clients) and the `$set` /
//!   `$unset` modifiers of earlier versions; plus [`update::apply`], which applies such a
//!   description to a pre-image (what a consumer does, and what the property tests check).
//! * [`event`]: one operation as a change event (`operationType`, `ns`, `documentKey`,
//!   `fullDocument`, `updateDescription`, DDL events), positioned by shard and entry.
//! * [`debezium`]: one operation as the key and value Debezium's MongoDB connector writes
//!   (`before`/`after` as Extended JSON strings, `updateDescription`, `source`, `op`).
//!
//! Everything here is a pure function of the entry; no I/O.

pub mod debezium;
pub mod event;
pub mod update;

pub use debezium::{
    debezium_key, debezium_record, write_after, DebeziumRecord, DebeziumSource, DebeziumTxn,
    AFTER_AT,
};
pub use event::{change_event, undecodable_record, EventError, Source, TxnSource};
pub use update::{apply, decode, PathPart, UpdateDescription, UpdateError, UpdateKind};

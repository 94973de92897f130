//! The oplog model (work in progress).
pub mod position;
pub use position::{EntryId, ShardPosition, Timestamp};

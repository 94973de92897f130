//! Why a shard stops for good.

use std::sync::Arc;

use quorumtail_merge::PushError;
use quorumtail_oplog::EntryId;

/// Why a shard stopped for good. These are definite: the operator must act.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Too few members still hold the resume point: changes in between are gone.
    #[error(
        "shard {shard}: the resume point {target} is no longer in the oplog of {lacking}; only {holders} of {members} member(s) may still hold it and the quorum is {quorum}, so the changes after it cannot be read any more. Never skipping them, quorumtail stops this shard. Fix: take a new snapshot of this shard: stop quorumtail, remove the \"{shard}\" entry from the checkpoint store, set [start] position = \"snapshot\" (with [discovery] uri on a sharded cluster) and start it; the shard's documents are read again as op r records, then its changes follow, while the other shards resume from their checkpoints"
    )]
    ResumePointLost {
        /// Shard.
        shard: Arc<str>,
        /// The target.
        target: EntryId,
        /// Members lacking it, with their first entry.
        lacking: String,
        /// Members that may hold it.
        holders: usize,
        /// Members.
        members: usize,
        /// Quorum.
        quorum: usize,
    },
    /// Two members reported the same entry identity with different content.
    #[error("shard {shard}: members disagree on the content of entry {id} ({detail}); MongoDB never does this, so the data or a reader is corrupt. Stopped to avoid emitting either version")]
    Divergence {
        /// Shard.
        shard: Arc<str>,
        /// Entry.
        id: EntryId,
        /// Which members.
        detail: String,
    },
    /// An entry could not be read or encoded.
    #[error("shard {shard}: {detail}")]
    BadEntry {
        /// Shard.
        shard: Arc<str>,
        /// What.
        detail: String,
    },
    /// A member's stream went backwards.
    #[error("shard {shard}: {source}")]
    Stream {
        /// Shard.
        shard: Arc<str>,
        /// The merge's error.
        source: PushError,
    },
    /// The membership or quorum cannot work.
    #[error("shard {shard}: {detail}")]
    Quorum {
        /// Shard.
        shard: Arc<str>,
        /// What.
        detail: String,
    },
    /// The initial snapshot could not be taken.
    #[error("shard {shard}: snapshot: {detail}")]
    Snapshot {
        /// Shard.
        shard: Arc<str>,
        /// What failed, and the fix.
        detail: String,
    },
    /// `[sink] full_document = "required"`: an updated document is gone.
    #[error("shard {shard}: [sink] full_document = \"required\": the document {key} of {ns}, updated by the entry at {entry}, no longer exists (deleted since the update, or owned by another shard and read without a mongos). Stopped rather than emit the update without its document; set full_document = \"lookup\" to emit it with fullDocument null and fullDocumentLookup \"notFound\"")]
    FullDocumentMissing {
        /// Shard.
        shard: Arc<str>,
        /// Namespace.
        ns: String,
        /// The update's document key, as relaxed Extended JSON.
        key: String,
        /// The update's entry (the commit's, in a transaction).
        entry: EntryId,
    },
    /// Full documents could not be read (a definite error, or a malformed record).
    #[error("shard {shard}: full document lookup: {detail}")]
    Lookup {
        /// Shard.
        shard: Arc<str>,
        /// What.
        detail: String,
    },
    /// The lookup stage stopped taking records (its own error follows).
    #[error("shard {shard}: the full document lookup stage stopped")]
    LookupStopped {
        /// Shard.
        shard: Arc<str>,
    },
    /// The sink refused input (it stopped).
    #[error("shard {shard}: the sink stopped accepting records: {detail}")]
    Sink {
        /// Shard.
        shard: Arc<str>,
        /// What.
        detail: String,
    },
}

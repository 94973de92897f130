//! What the pipeline hands to the sink: encoded records and progress markers.

use std::sync::Arc;

use quorumtail_oplog::{EntryId, Timestamp};

/// One output record of one shard, already encoded upstream.
///
/// `seq` strictly increases per shard (gaps allowed); the sink refuses a shard's input
/// whose seq does not increase, because contiguity tracking depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRecord {
    /// The shard (replica set) name; also the `shard` header and the `{shard}` placeholder.
    pub shard: Arc<str>,
    /// Per-shard sequence number, strictly increasing.
    pub seq: u64,
    /// `Some(x)`: once this record and every earlier record of the shard are confirmed, the
    /// shard's checkpoint may move to `x`. `None`: inside a transaction; no checkpoint here.
    pub checkpoint: Option<EntryId>,
    /// The oplog entry's `ts`; the `ts` header (`secs:inc`) and named in errors.
    pub ts: Timestamp,
    /// The `op` code (`i`, `u`, `d`, `c`, `n`): the `op` header.
    pub op: &'static str,
    /// Database name: the `{db}` placeholder.
    pub db: String,
    /// Collection name (`$cmd` for commands, empty when the entry has no namespace): the
    /// `{coll}` placeholder.
    pub coll: String,
    /// The Kafka key (document, shard or namespace key, chosen upstream); `None` lets the
    /// producer spread keyless records over partitions.
    pub key: Option<Vec<u8>>,
    /// The record itself: one JSON object, without a trailing newline. `None`: a
    /// tombstone (a null Kafka value after a delete, `[sink] tombstones`); the file sink
    /// writes nothing for it.
    pub value: Option<Vec<u8>>,
}

impl OutRecord {
    /// The namespace, `db.coll` (or `db` alone when `coll` is empty): the `ns` header.
    pub fn ns(&self) -> String {
        let mut s = String::with_capacity(self.db.len() + 1 + self.coll.len());
        write_ns(&mut s, &self.db, &self.coll);
        s
    }
}

pub(crate) fn write_ns(out: &mut String, db: &str, coll: &str) {
    out.push_str(db);
    if !coll.is_empty() {
        out.push('.');
        out.push_str(coll);
    }
}

/// Progress without a record: entries that were filtered out still advance the
/// checkpoint. Confirmed as soon as every earlier record of the shard is confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The shard.
    pub shard: Arc<str>,
    /// Per-shard sequence number, in the same sequence as the shard's records.
    pub seq: u64,
    /// The checkpoint the shard may move to.
    pub checkpoint: EntryId,
}

/// One item of the sink's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkInput {
    /// A record to deliver.
    Record(OutRecord),
    /// Progress without a record.
    Marker(Marker),
}

impl SinkInput {
    /// The shard the item belongs to.
    pub fn shard(&self) -> &Arc<str> {
        match self {
            SinkInput::Record(r) => &r.shard,
            SinkInput::Marker(m) => &m.shard,
        }
    }
}

impl From<OutRecord> for SinkInput {
    fn from(r: OutRecord) -> Self {
        SinkInput::Record(r)
    }
}

impl From<Marker> for SinkInput {
    fn from(m: Marker) -> Self {
        SinkInput::Marker(m)
    }
}

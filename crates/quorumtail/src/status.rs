//! What the running coordinator shows its observers: per-shard counters and members, the
//! sink's progress, removed shards being drained, and where the endpoints listen. The
//! coordinator writes it; the HTTP endpoints, the demo and the tests read it.
//!
//! ```text
//!  coordinator ──writes──► Status ◄──reads── http (/status, /readyz, /metrics, /)
//!  shard pipelines ─► ShardStats ┘                 demo, tests
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use quorumtail_oplog::EntryId;

use crate::pipeline::stats::{ShardStats, StatsSnapshot};

/// Live view of the running shards, shared with observers (status endpoints, tests).
#[derive(Debug, Default)]
pub struct Status {
    pub(crate) shards: std::sync::Mutex<BTreeMap<Arc<str>, Arc<ShardStats>>>,
    pub(crate) sink: std::sync::OnceLock<quorumtail_sink::ProgressView>,
    /// Whether the sink is Kafka (the delivery histogram exists only then).
    pub(crate) kafka_sink: std::sync::OnceLock<bool>,
    pub(crate) http: std::sync::OnceLock<std::net::SocketAddr>,
    /// Shards with a stored checkpoint that are not in the topology and cannot be drained
    /// (no membership stored with the checkpoint).
    pub(crate) orphans: std::sync::Mutex<Vec<String>>,
    /// Removed shards being drained.
    pub(crate) draining: std::sync::Mutex<BTreeMap<String, Draining>>,
}

/// A removed shard being drained (see the [coordinator](crate::coordinator)).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Draining {
    /// `removed from the topology` (while running) or `removed while quorumtail was stopped`.
    pub reason: &'static str,
    /// The members it is read from.
    pub members: Vec<String>,
    /// The checkpoint it was draining from when the drain began.
    pub from: Option<EntryId>,
    /// How far the drain got.
    pub state: DrainState,
}

/// How far a drain got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Reading what a quorum of its members holds after the checkpoint.
    Reading,
    /// Fewer members than the quorum answer: nothing can be confirmed (retrying).
    Unreachable,
    /// Read to its end; waiting for the sink to confirm the last records, then marking it
    /// drained in the checkpoint store.
    Delivering,
    /// Done: marked drained in the checkpoint store.
    Drained,
}

impl DrainState {
    /// `reading`, `unreachable`, `delivering`, `drained`.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Reading => "reading",
            DrainState::Unreachable => "unreachable",
            DrainState::Delivering => "delivering",
            DrainState::Drained => "drained",
        }
    }
}

impl Status {
    /// The shard's checkpoint as confirmed by the sink now (delivered and acknowledged, or
    /// fsynced): everything up to it is safely out.
    pub fn confirmed(&self, shard: &str) -> Option<EntryId> {
        self.sink.get()?.checkpoints().get(shard)
    }

    /// Shards with a stored checkpoint that are not in the topology and cannot be drained
    /// (their checkpoint was stored without their membership): their later changes are not
    /// being read.
    pub fn orphaned_checkpoints(&self) -> Vec<String> {
        self.orphans.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Removed shards being drained (and those drained in this run), by name.
    pub fn draining(&self) -> BTreeMap<String, Draining> {
        self.draining.lock().map(|d| d.clone()).unwrap_or_default()
    }

    pub(crate) fn set_draining(&self, shard: &str, d: Draining) {
        if let Ok(mut m) = self.draining.lock() {
            m.insert(shard.to_owned(), d);
        }
    }

    pub(crate) fn drain_state(&self, shard: &str, state: DrainState) {
        if let Ok(mut m) = self.draining.lock() {
            if let Some(d) = m.get_mut(shard) {
                d.state = state;
            }
        }
    }

    pub(crate) fn not_draining(&self, shard: &str) {
        if let Ok(mut m) = self.draining.lock() {
            m.remove(shard);
        }
    }

    /// Where the HTTP endpoints listen, once they do.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.get().copied()
    }

    /// Records accepted by the sink and not yet confirmed.
    pub fn sink_in_flight(&self) -> Option<usize> {
        Some(self.sink.get()?.unconfirmed())
    }

    /// The Kafka sink's progress, whose delivery latency and errors `/metrics` shows
    /// (none for the file sink).
    pub fn sink_delivery(&self) -> Option<quorumtail_sink::ProgressView> {
        if !self.kafka_sink.get().copied().unwrap_or(false) {
            return None;
        }
        self.sink.get().cloned()
    }

    /// The sink's definite error, if it stopped.
    pub fn sink_failure(&self) -> Option<String> {
        let f = self.sink.get()?.failure();
        let f = f.borrow();
        f.as_ref().map(|e| e.to_string())
    }

    /// A shard's members.
    pub fn nodes(&self, shard: &str) -> BTreeMap<String, crate::pipeline::stats::NodeStats> {
        self.shards
            .lock()
            .ok()
            .and_then(|m| m.get(shard).map(|s| s.nodes()))
            .unwrap_or_default()
    }

    /// A shard's snapshot progress per collection.
    pub fn collection_copies(
        &self,
        shard: &str,
    ) -> BTreeMap<String, crate::pipeline::stats::CollectionCopy> {
        self.shards
            .lock()
            .ok()
            .and_then(|m| m.get(shard).map(|s| s.collection_copies()))
            .unwrap_or_default()
    }

    /// Where a shard's quorum comes from (static list, or the replica set configuration).
    pub fn quorum_source(&self, shard: &str) -> String {
        self.shards
            .lock()
            .ok()
            .and_then(|m| m.get(shard).map(|s| s.quorum_source()))
            .unwrap_or_default()
    }

    /// Whether a running shard is starting: fewer members than its quorum answered yet,
    /// and some were never reached (connecting for the first time). A shard that is
    /// starting is neither ready nor reported unreachable.
    pub fn starting(&self, shard: &str) -> bool {
        let Some(s) = self.shard(shard) else {
            return false;
        };
        let nodes = self.nodes(shard);
        !s.quorum_reachable
            && !s.stopped
            && !s.failed
            && (nodes.is_empty() || nodes.values().any(|n| n.state == "connecting"))
    }

    /// The counters of one shard, if it ever ran.
    pub fn shard(&self, name: &str) -> Option<StatsSnapshot> {
        self.shards.lock().ok()?.get(name).map(|s| s.snapshot())
    }

    /// Counters of every shard that ever ran.
    pub fn all(&self) -> BTreeMap<String, StatsSnapshot> {
        self.shards
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.snapshot()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn register(&self, name: &Arc<str>) -> Arc<ShardStats> {
        match self.shards.lock() {
            Ok(mut m) => m.entry(name.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }
}

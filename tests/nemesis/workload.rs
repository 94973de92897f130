//! The workload: unique writes through mongos with the official driver.
//!
//! Each client owns the `_id`s it inserts (so its own operations on a document are
//! sequential), spreads them over the whole id space (every chunk of both shards), and
//! updates (`$set: {v: n}` with an increasing per-document version) and deletes documents
//! it inserted before. Every attempt is recorded with its outcome; a write that failed or
//! timed out is indeterminate: the simulator's ground truth decides whether it committed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{doc, Document};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Application `_id`s are in `[0, ID_SPACE)`.
pub const ID_SPACE: i32 = 1 << 24;
/// `_id`s written straight to an isolated primary (they must be rolled back) start here.
pub const DOOMED_BASE: i32 = 1 << 30;
/// How long one write may take before it counts as timed out (indeterminate).
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// The split points of `shop.orders`: `chunks` chunks of equal width over the id space,
/// assigned to the shards round-robin.
pub fn split_points(chunks: i32) -> Vec<bson::Bson> {
    (1..chunks)
        .map(|i| bson::Bson::Int32(i * (ID_SPACE / chunks)))
        .collect()
}

/// The `seq`-th unique id: a bijection of `[0, ID_SPACE)` (multiplication by an odd
/// constant modulo a power of two), so consecutive inserts land in different chunks.
pub fn doc_id(seq: u64) -> i32 {
    (seq.wrapping_mul(0x9E37_79B1) & (ID_SPACE as u64 - 1)) as i32
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteKind {
    Insert,
    Update,
    Delete,
}

/// How a write ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Acknowledged (`w: "majority"` through mongos, `w: 1` when direct); `n` documents
    /// inserted, modified or deleted.
    Ok { n: u64 },
    /// The driver returned an error: indeterminate.
    Failed(String),
    /// No answer within the client's deadline: indeterminate.
    TimedOut,
}

/// One write attempt.
#[derive(Debug, Clone)]
pub struct Write {
    pub kind: WriteKind,
    pub id: i32,
    /// The document's version after this write (0 for inserts).
    pub version: i32,
    pub outcome: Outcome,
    /// Written straight to an isolated primary (expected to be rolled back).
    pub direct: bool,
    /// When the attempt started, since the run began.
    pub at: Duration,
}

/// Every attempt of the run.
#[derive(Debug, Default)]
pub struct History {
    pub writes: Mutex<Vec<Write>>,
    pub attempts: AtomicUsize,
}

impl History {
    pub fn record(&self, w: Write) {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.writes.lock().unwrap().push(w);
    }
}

fn short(e: &mongodb::error::Error) -> String {
    let s = e.to_string();
    s.chars().take(400).collect()
}

/// A short cause for an error message: its `code_name`, or its beginning.
pub fn cause(e: &str) -> String {
    match e.split_once("code_name: \"") {
        Some((_, rest)) => rest.split('"').next().unwrap_or_default().to_owned(),
        None => e
            .rsplit_once("message: \"")
            .map_or(e, |(_, m)| m)
            .split(['"', '\\'])
            .next()
            .unwrap_or_default()
            .chars()
            .take(60)
            .collect(),
    }
}

/// What a client needs.
#[derive(Debug, Clone)]
pub struct Client {
    pub index: usize,
    pub clients: usize,
    pub seed: u64,
    /// Time between two writes of this client (`None`: as fast as it can).
    pub period: Option<Duration>,
    pub coll: mongodb::Collection<Document>,
    pub history: Arc<History>,
    pub stop: Arc<AtomicBool>,
    pub t0: Instant,
}

/// Runs one client until `stop`.
pub async fn client(c: Client) {
    let mut rng =
        StdRng::seed_from_u64(c.seed ^ (c.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut live: Vec<(i32, i32)> = Vec::new();
    let mut next: u64 = 0;
    let mut tick = c.period.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    while !c.stop.load(Ordering::SeqCst) {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let r: f64 = rng.gen();
        let (kind, id, version) = if live.len() < 4 || r < 0.6 {
            let id = doc_id(next * c.clients as u64 + c.index as u64);
            next += 1;
            live.push((id, 0));
            (WriteKind::Insert, id, 0)
        } else if r < 0.9 {
            let i = rng.gen_range(0..live.len());
            live[i].1 += 1;
            (WriteKind::Update, live[i].0, live[i].1)
        } else {
            let i = rng.gen_range(0..live.len());
            let (id, v) = live.swap_remove(i);
            (WriteKind::Delete, id, v + 1)
        };
        let at = c.t0.elapsed();
        let coll = &c.coll;
        let op = async {
            match kind {
                WriteKind::Insert => coll
                    .insert_one(doc! { "_id": id, "v": 0, "c": c.index as i32 })
                    .await
                    .map(|_| 1),
                WriteKind::Update => coll
                    .update_one(doc! { "_id": id }, doc! { "$set": { "v": version } })
                    .await
                    .map(|r| r.modified_count),
                WriteKind::Delete => coll
                    .delete_one(doc! { "_id": id })
                    .await
                    .map(|r| r.deleted_count),
            }
        };
        let outcome = match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(n)) => Outcome::Ok { n },
            Ok(Err(e)) => Outcome::Failed(short(&e)),
            Err(_) => Outcome::TimedOut,
        };
        c.history.record(Write {
            kind,
            id,
            version,
            outcome,
            direct: false,
            at,
        });
    }
}

/// Writes straight to an isolated primary (`w: 1`) until one fails: an insert, an update
/// of it, a second insert and its delete. Returns how many were acknowledged.
pub async fn doomed_writes(
    coll: &mongodb::Collection<Document>,
    first_id: i32,
    history: &History,
    t0: Instant,
) -> usize {
    let steps = [
        (WriteKind::Insert, first_id, 0),
        (WriteKind::Update, first_id, 1),
        (WriteKind::Insert, first_id + 1, 0),
        (WriteKind::Delete, first_id + 1, 1),
    ];
    let mut acked = 0;
    for (kind, id, version) in steps {
        let at = t0.elapsed();
        let op = async {
            match kind {
                WriteKind::Insert => coll
                    .insert_one(doc! { "_id": id, "v": 0, "doomed": true })
                    .await
                    .map(|_| 1),
                WriteKind::Update => coll
                    .update_one(doc! { "_id": id }, doc! { "$set": { "v": version } })
                    .await
                    .map(|r| r.modified_count),
                WriteKind::Delete => coll
                    .delete_one(doc! { "_id": id })
                    .await
                    .map(|r| r.deleted_count),
            }
        };
        let outcome = match tokio::time::timeout(Duration::from_secs(3), op).await {
            Ok(Ok(n)) => Outcome::Ok { n },
            Ok(Err(e)) => Outcome::Failed(short(&e)),
            Err(_) => Outcome::TimedOut,
        };
        let ok = matches!(outcome, Outcome::Ok { n: 1 });
        history.record(Write {
            kind,
            id,
            version,
            outcome,
            direct: true,
            at,
        });
        if !ok {
            break;
        }
        acked += 1;
    }
    acked
}

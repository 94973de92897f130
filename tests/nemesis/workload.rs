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
/// `_id`s written straight to a shard's primary while mongos is down start here.
pub const DIRECT_BASE: i32 = 1 << 29;
/// Sequence numbers from here on (their [`doc_id`]s) are the transactions' documents; the
/// plain clients stay below.
pub const TXN_SEQ_BASE: u64 = 1 << 23;
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

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// commitTransaction acknowledged (`w: "majority"`).
    Committed,
    /// abortTransaction on purpose: nothing of it may ever be emitted.
    Aborted,
    /// An operation or the commit failed or timed out: indeterminate (if an operation
    /// failed, the transaction was aborted, but an abort is not acknowledged reliably).
    Failed(String),
}

/// One multi-document transaction through mongos. Its documents all lie in one chunk
/// (so on one shard: mongosim has no two-phase commit), and every operation carries the
/// transaction's `tag` (`t` in inserted documents and in `$set`), except deletes.
#[derive(Debug, Clone)]
pub struct Txn {
    pub tag: i64,
    /// `(kind, _id, version after)`.
    pub ops: Vec<(WriteKind, i32, i32)>,
    pub outcome: TxnOutcome,
    pub at: Duration,
}

/// Every attempt of the run.
#[derive(Debug, Default)]
pub struct History {
    pub writes: Mutex<Vec<Write>>,
    pub attempts: AtomicUsize,
    pub txns: Mutex<Vec<Txn>>,
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

/// What a transaction client needs.
#[derive(Debug, Clone)]
pub struct TxnClient {
    pub index: usize,
    pub clients: usize,
    pub seed: u64,
    pub period: Option<Duration>,
    pub chunks: i32,
    pub client: mongodb::Client,
    pub coll: mongodb::Collection<Document>,
    pub history: Arc<History>,
    pub stop: Arc<AtomicBool>,
    pub t0: Instant,
}

/// Runs one transaction client until `stop`: each transaction inserts 1 to 3 fresh
/// documents of one chunk and, when the client has live documents in that chunk,
/// updates one (and sometimes deletes another); 3 in 4 commit, the others abort.
pub async fn txn_client(c: TxnClient) {
    let mut rng = StdRng::seed_from_u64(
        c.seed ^ 0x7478_6e00 ^ (c.index as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93),
    );
    let width = ID_SPACE / c.chunks;
    let mut cursor: u64 = 0;
    let mut fresh_in = |chunk: i32| loop {
        let seq = TXN_SEQ_BASE + cursor * c.clients as u64 + c.index as u64;
        cursor += 1;
        let id = doc_id(seq);
        if (id / width).min(c.chunks - 1) == chunk {
            return id;
        }
    };
    let mut live: std::collections::HashMap<i32, Vec<(i32, i32)>> = Default::default();
    let mut tick = c.period.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut session = None;
    let mut n: i64 = 0;
    while !c.stop.load(Ordering::SeqCst) {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        if session.is_none() {
            match c.client.start_session().await {
                Ok(s) => session = Some(s),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let s = session.as_mut().unwrap();
        n += 1;
        let tag = ((c.index as i64 + 1) << 32) | n;
        let chunk = rng.gen_range(0..c.chunks);
        // A third of the transactions also write a second chunk, which usually lives on
        // another shard: a distributed transaction (two-phase commit).
        let mut chunks = vec![chunk];
        if c.chunks > 1 && rng.gen_bool(0.33) {
            chunks.push((chunk + rng.gen_range(1..c.chunks)) % c.chunks);
        }
        let mut ops = Vec::new();
        for &chunk in &chunks {
            for _ in 0..rng.gen_range(1..=2) {
                ops.push((WriteKind::Insert, fresh_in(chunk), 0));
            }
            let mine = live.entry(chunk).or_default();
            if !mine.is_empty() {
                let i = rng.gen_range(0..mine.len());
                ops.push((WriteKind::Update, mine[i].0, mine[i].1 + 1));
                if mine.len() > 1 && rng.gen_bool(0.3) {
                    let j = (i + 1) % mine.len();
                    ops.push((WriteKind::Delete, mine[j].0, mine[j].1 + 1));
                }
            }
        }
        let commit = rng.gen_bool(0.75);
        let at = c.t0.elapsed();
        let outcome = tokio::time::timeout(OP_TIMEOUT * 2, async {
            if let Err(e) = s.start_transaction().await {
                return TxnOutcome::Failed(short(&e));
            }
            for (kind, id, version) in &ops {
                let r = match kind {
                    WriteKind::Insert => c
                        .coll
                        .insert_one(doc! { "_id": *id, "v": 0, "t": tag })
                        .session(&mut *s)
                        .await
                        .map(|_| ()),
                    WriteKind::Update => c
                        .coll
                        .update_one(
                            doc! { "_id": *id },
                            doc! { "$set": { "v": *version, "t": tag } },
                        )
                        .session(&mut *s)
                        .await
                        .map(|_| ()),
                    WriteKind::Delete => c
                        .coll
                        .delete_one(doc! { "_id": *id })
                        .session(&mut *s)
                        .await
                        .map(|_| ()),
                };
                if let Err(e) = r {
                    let _ = s.abort_transaction().await;
                    return TxnOutcome::Failed(short(&e));
                }
            }
            if commit {
                match s.commit_transaction().await {
                    Ok(()) => TxnOutcome::Committed,
                    Err(e) => TxnOutcome::Failed(short(&e)),
                }
            } else {
                match s.abort_transaction().await {
                    Ok(()) => TxnOutcome::Aborted,
                    Err(e) => TxnOutcome::Failed(short(&e)),
                }
            }
        })
        .await
        .unwrap_or_else(|_| TxnOutcome::Failed("client timeout".into()));
        let chunk_of = |id: i32| (id / width).min(c.chunks - 1);
        match &outcome {
            TxnOutcome::Committed => {
                for (kind, id, v) in &ops {
                    let mine = live.entry(chunk_of(*id)).or_default();
                    match kind {
                        WriteKind::Insert => mine.push((*id, 0)),
                        WriteKind::Update => {
                            if let Some(d) = mine.iter_mut().find(|d| d.0 == *id) {
                                d.1 = *v;
                            }
                        }
                        WriteKind::Delete => mine.retain(|d| d.0 != *id),
                    }
                }
            }
            TxnOutcome::Aborted => {}
            TxnOutcome::Failed(_) => {
                // Whether it committed is for the ground truth to say: never touch its
                // documents again. A timed-out session may be unusable: start a new one.
                for &chunk in &chunks {
                    live.entry(chunk)
                        .or_default()
                        .retain(|d| !ops.iter().any(|o| o.1 == d.0));
                }
                session = None;
            }
        }
        c.history.txns.lock().unwrap().push(Txn {
            tag,
            ops,
            outcome,
            at,
        });
    }
}

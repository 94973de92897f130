//! Distributed transactions: mongos's commit of a transaction that wrote on more than one
//! shard, run as MongoDB's two-phase commit (the oplog shapes are in
//! `world/prepared.rs`).
//!
//! The order, from `src/mongo/db/s/transaction_coordinator.cpp` and
//! `transaction_coordinator_util.cpp` (mongod) and `src/mongo/s/transaction_router.cpp`
//! (mongos): the first participant mongos contacted coordinates. It
//!
//! 1. persists the participant list in `config.transaction_coordinators` (majority);
//! 2. sends `prepareTransaction` to every participant; each logs its prepare chain and
//!    votes with the prepare timestamp once it is majority committed, or votes to abort
//!    (e.g. `NoSuchTransaction` when a failover lost the unprepared transaction);
//! 3. persists the decision (majority): commit at the largest prepare timestamp, or abort;
//! 4. sends `commitTransaction` / `abortTransaction` to every prepared participant, retrying
//!    through failovers until each has logged the decision (majority); the decision may
//!    thus be logged by a later primary, in a later term;
//! 5. deletes its document.
//!
//! The client's `commitTransaction` answers after step 4, with `ok: 1` for a commit or
//! `NoSuchTransaction` (251) for an abort. A participant that only read is not a
//! participant here (the simulation tracks writes only). The fault levers
//! [`World::hold_txn_decisions`](crate::world::World) (between steps 2 and 3) and
//! `fail_next_prepare` make prepared-but-undecided and aborted-after-prepare
//! transactions reproducible.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document, Timestamp};

use super::writes::finish_write;
use super::{ok, CmdResult};
use crate::error::CmdError;
use crate::runtime::Shared;
use crate::world::{coordinator_id, no_such_transaction, Decision, Proc, World};

/// How long the coordinator retries one step (a set without a primary, a lost majority)
/// before giving the client an error.
const STEP_DEADLINE: Duration = Duration::from_secs(60);

/// Commits the transaction `key` that wrote on `participants` (first = coordinator).
pub(super) async fn commit(
    shared: &Arc<Shared>,
    key: &str,
    lsid: &Document,
    txn: i64,
    participants: Vec<usize>,
) -> CmdResult {
    let coordinator = participants[0];
    let id = coordinator_id(lsid, txn);
    let names: Vec<Bson> = {
        let w = shared.world();
        participants
            .iter()
            .map(|s| Bson::String(shard_name(&w, *s)))
            .collect()
    };
    let base = doc! {"_id": id.clone(), "participants": names};

    // 1. The participant list.
    let deadline = Some(tokio::time::Instant::now() + STEP_DEADLINE);
    on_primary(shared, coordinator, deadline, |w, s, n, now| {
        w.write_coordinator_doc(s, n, &id, Some(base.clone()), now)
    })
    .await?;

    // 2. Prepare, in order; the first abort vote ends the round.
    let mut prepared: Vec<usize> = Vec::new();
    let mut votes: Vec<Timestamp> = Vec::new();
    let mut abort: Option<CmdError> = None;
    for &s in &participants {
        match prepare_on(shared, s, key, lsid, txn).await {
            Ok(ts) => {
                prepared.push(s);
                votes.push(ts);
            }
            Err(e) => {
                abort = Some(e);
                break;
            }
        }
    }
    wait_until(shared, |w| !w.hold_txn_decisions).await;

    // 3. The decision.
    let (decision, decision_doc) = match &abort {
        None => {
            let at = votes
                .iter()
                .copied()
                .max_by_key(|t| (t.time, t.increment))
                .unwrap_or(Timestamp {
                    time: 0,
                    increment: 0,
                });
            (
                Decision::Commit(at),
                doc! {"decision": "commit", "commitTimestamp": at},
            )
        }
        Some(e) => (
            Decision::Abort,
            // The abort reason as mongod serializes a Status (`code`, `codeName`, `errmsg`).
            doc! {"decision": "abort", "abortStatus": {
                "code": e.code, "codeName": e.code_name, "errmsg": e.errmsg.clone()
            }},
        ),
    };
    let mut decided = base.clone();
    decided.insert("decision", decision_doc);
    // Once decided, the coordinator carries the decision through to the end whatever the
    // client does (mongod's coordinator is durable and resumes after failovers): steps 3 to
    // 5 run on their own and retry until done; the client waits a bounded time.
    let delivery = Delivery {
        key: key.to_owned(),
        lsid: lsid.clone(),
        txn,
        id,
        decided,
        decision,
        prepared,
        participants,
        coordinator,
    };
    let task = tokio::spawn(delivery.run(shared.clone()));
    match tokio::time::timeout(STEP_DEADLINE, task).await {
        Ok(Ok(Ok(()))) => match abort {
            None => Ok(ok(Document::new())),
            Some(_) => Err(no_such_transaction(txn)),
        },
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) | Err(_) => Err(CmdError::new(
            262,
            "ExceededTimeLimit",
            "transaction coordinator: the decision is not acknowledged yet",
        )),
    }
}

/// Steps 3 to 5 of a decided transaction.
struct Delivery {
    key: String,
    lsid: Document,
    txn: i64,
    id: Document,
    decided: Document,
    decision: Decision,
    prepared: Vec<usize>,
    participants: Vec<usize>,
    coordinator: usize,
}

impl Delivery {
    async fn run(self, shared: Arc<Shared>) -> Result<(), CmdError> {
        let shared = &shared;
        let (id, lsid, txn, decision) = (&self.id, &self.lsid, self.txn, self.decision);
        // 3. The decision, durable on the coordinator.
        on_primary(shared, self.coordinator, None, |w, s, n, now| {
            w.write_coordinator_doc(s, n, id, Some(self.decided.clone()), now)
        })
        .await?;
        // 4. Every prepared participant logs it; the others drop what they buffered.
        for &s in &self.prepared {
            on_primary(shared, s, None, |w, s, n, now| {
                w.decide_prepared(s, n, lsid, txn, decision, now)
            })
            .await?;
        }
        {
            let mut w = shared.world();
            for &s in &self.participants {
                for node in &mut w.sets[s].nodes {
                    node.txns.remove(&self.key);
                }
            }
            w.txn_participants.remove(&self.key);
        }
        // 5. Forget.
        on_primary(shared, self.coordinator, None, |w, s, n, now| {
            w.write_coordinator_doc(s, n, id, None, now)
        })
        .await
    }
}

/// The shard id of set `s` (its replica set name outside a sharded cluster).
fn shard_name(w: &World, s: usize) -> String {
    w.sharding
        .as_ref()
        .and_then(|sh| sh.shards.iter().find(|x| x.set == s))
        .map_or_else(|| w.sets[s].name.clone(), |x| x.name.clone())
}

/// `prepareTransaction` on one participant: its vote (the prepare timestamp), once the
/// prepare entry is majority committed.
async fn prepare_on(
    shared: &Arc<Shared>,
    s: usize,
    key: &str,
    lsid: &Document,
    txn: i64,
) -> Result<Timestamp, CmdError> {
    let written = {
        let mut w = shared.world();
        if w.fail_next_prepare.remove(&s) {
            for node in &mut w.sets[s].nodes {
                node.txns.remove(key);
            }
            return Err(no_such_transaction(txn));
        }
        // The member that took the transaction's writes holds it; a failover since then
        // lost it (unprepared transactions are not replicated).
        let holder =
            (0..w.sets[s].nodes.len()).find(|n| w.sets[s].nodes[*n].txns.contains_key(key));
        let Some(n) = holder else {
            return Err(no_such_transaction(txn));
        };
        let optime = w.prepare_transaction(s, n, key, lsid, txn, Instant::now())?;
        (n, optime)
    };
    shared.notify();
    let (n, (ts, _)) = written;
    if majority(shared, s, n).await {
        return Ok(ts);
    }
    // The primary lost its role before the prepare was majority committed: the
    // coordinator asks again, and the set's new primary either holds the prepared
    // transaction (the entry survived) or does not know it.
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    loop {
        let found = {
            let w = shared.world();
            w.sets[s]
                .primary_index()
                .filter(|p| w.check_writable(s, *p).is_ok())
                .map(|p| (p, w.find_prepared(s, p, lsid, txn)))
        };
        match found {
            Some((p, Some(((ts, _), _)))) => {
                if majority(shared, s, p).await {
                    return Ok(ts);
                }
            }
            Some((_, None)) => return Err(no_such_transaction(txn)),
            None if tokio::time::Instant::now() >= deadline => {
                return Err(no_such_transaction(txn))
            }
            None => changed(shared).await,
        }
    }
}

/// Runs `f` on the current primary of set `s` and waits until its newest entry is majority
/// committed, retrying (with `f` again: it must be idempotent) through elections, until
/// `deadline` (`None`: until the simulation shuts down).
async fn on_primary<F>(
    shared: &Arc<Shared>,
    s: usize,
    deadline: Option<tokio::time::Instant>,
    mut f: F,
) -> Result<(), CmdError>
where
    F: FnMut(&mut World, usize, usize, Instant) -> Result<(), CmdError>,
{
    loop {
        let done = {
            let mut w = shared.world();
            let primary = w.sets[s]
                .primary_index()
                .filter(|p| w.check_writable(s, *p).is_ok());
            primary.map(|p| (p, f(&mut w, s, p, Instant::now())))
        };
        shared.notify();
        match done {
            Some((p, Ok(()))) => {
                if majority(shared, s, p).await {
                    return Ok(());
                }
            }
            Some((_, Err(e))) if e.code != CmdError::not_primary().code => return Err(e),
            _ if deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                || shared.shutdown.is_cancelled() =>
            {
                return Err(CmdError::new(
                    262,
                    "ExceededTimeLimit",
                    "transaction coordinator: no primary took the step in time",
                ))
            }
            _ => changed(shared).await,
        }
    }
}

/// Waits until node `n`'s newest entry is majority committed; `false` when it stepped down
/// or lost the entry first.
async fn majority(shared: &Arc<Shared>, s: usize, n: usize) -> bool {
    let wc = doc! {"writeConcern": {"w": "majority", "wtimeout": 10_000}};
    match finish_write(shared, Proc::Mongos, &wc, Document::new(), Some(&[(s, n)])).await {
        Ok(reply) => !reply.contains_key("writeConcernError"),
        Err(_) => false,
    }
}

/// Waits until `ready` holds for the world.
async fn wait_until(shared: &Arc<Shared>, ready: impl Fn(&World) -> bool) {
    loop {
        let mut rx = shared.changes.subscribe();
        if ready(&shared.world()) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
}

/// Waits for any change in the world (or a short while).
async fn changed(shared: &Arc<Shared>) {
    let mut rx = shared.changes.subscribe();
    let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
}

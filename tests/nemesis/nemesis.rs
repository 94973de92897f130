//! The nemesis: a schedule of fault episodes drawn from the seed, run one after another
//! while the workload writes. Each episode injects its fault, holds it, heals it, and
//! waits (on conditions, with deadlines) for the outcome it must have: a new primary, a
//! rollback, a pipeline for an added shard, a removed shard drained, records flowing to
//! Kafka again after a broker fault. The replication and membership faults (double
//! failover, reconfig, lagging commit point, chained sync) are in `replication.rs`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson};
use mongosim::Cluster;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use quorumtail_oplog::EntryId;

use crate::kafka::{Kafka, Tail};
use crate::qt::{Quorumtail, Stopped};
use crate::topology::{members, Member};
use crate::workload::{
    doomed_writes, History, Outcome, Write, WriteKind, DIRECT_BASE, DOOMED_BASE,
};
use quorumtail_testkit::truth::committed_app_entries_discovered as committed_app_entries;

// The replication and membership faults, in their own file.
#[path = "replication.rs"]
mod replication;

/// The kinds of faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 a shard primary, restart it later (it rolls back what it alone held).
    KillPrimary,
    /// Isolate a primary that keeps accepting writes; write to it directly; heal (rollback).
    PartitionPrimary,
    /// Isolate a secondary, heal it.
    PartitionSecondary,
    /// Delay replication to a secondary.
    LagSecondary,
    /// kill -9 a secondary, restart it.
    RestartSecondary,
    /// replSetStepDown.
    StepDown,
    /// moveChunk to another shard.
    MoveChunk,
    /// addShard (and chunks moved to it).
    AddShard,
    /// removeShard of the added shard (drains its chunks away).
    RemoveShard,
    /// kill -9 quorumtail, restart it.
    QuorumtailKill9,
    /// SIGTERM quorumtail (must exit 0), restart it.
    QuorumtailSigterm,
    /// The broker becomes unreachable for 1-5 s: the proxy drops every connection and
    /// refuses new ones (a broker stop and start with its storage kept).
    BrokerOutage,
    /// SIGSTOP the broker for 1-3 s, then SIGCONT.
    BrokerPause,
    /// Stop the broker process (SIGTERM) and start it again on the same port and storage.
    BrokerRestart,
    /// kill mongos (discovery and the workload's writes fail), restart it.
    KillMongos,
    /// kill a config server member (the primary when the pick says so), restart it.
    KillConfigMember,
    /// Two elections in quick succession around one primary (Raft's figure 8): an entry
    /// reaches a majority of voters under a re-elected primary that never commits it, and
    /// is rolled back. Where the layout cannot hold that story (PSA), two elections back
    /// to back.
    DoubleFailover,
    /// replSetReconfig mid-stream (one voter change): add a hidden voter, take a member's
    /// votes, or drop a member; undone later.
    ReconfigVotes,
    /// Secondaries learn the commit point late (`commit_point_delay` raised), for a while.
    LaggingCommitPoint,
    /// Chained replication: a secondary syncs from another (lagging) secondary, for a while.
    ChainedSync,
}

/// One scheduled fault.
#[derive(Debug, Clone)]
pub struct Episode {
    pub fault: Fault,
    /// Chooses the target (shard, member, chunk) among those that exist when it runs.
    pub pick: u64,
    /// How long the fault is held.
    pub hold: Duration,
    /// Quiet time after the episode.
    pub gap: Duration,
}

/// The schedule for `seconds` of workload: every kind at least once (add before remove),
/// the rest drawn at random; about one episode per 2.5 s. `BrokerRestart` only when the
/// broker's storage survives a restart.
pub fn schedule(seed: u64, seconds: u64, broker_restart: bool) -> Vec<Episode> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut repeatable = vec![
        Fault::KillPrimary,
        Fault::PartitionPrimary,
        Fault::PartitionSecondary,
        Fault::LagSecondary,
        Fault::RestartSecondary,
        Fault::StepDown,
        Fault::MoveChunk,
        Fault::QuorumtailKill9,
        Fault::QuorumtailKill9,
        Fault::QuorumtailSigterm,
        Fault::BrokerOutage,
        Fault::BrokerPause,
        Fault::KillMongos,
        Fault::KillConfigMember,
        Fault::DoubleFailover,
        Fault::ReconfigVotes,
        Fault::LaggingCommitPoint,
        Fault::ChainedSync,
    ];
    if broker_restart {
        repeatable.push(Fault::BrokerRestart);
    }
    let n = ((seconds as f64 / 2.5) as usize).max(repeatable.len() + 2);
    let mut kinds: Vec<Fault> = repeatable.to_vec();
    kinds.dedup();
    while kinds.len() < n - 2 {
        kinds.push(*repeatable.choose(&mut rng).unwrap());
    }
    kinds.shuffle(&mut rng);
    let add = kinds.len() / 4;
    kinds.insert(add, Fault::AddShard);
    let remove = (kinds.len() * 2 / 3).max(add + 2);
    kinds.insert(remove, Fault::RemoveShard);
    kinds
        .into_iter()
        .map(|fault| Episode {
            fault,
            pick: rng.gen(),
            hold: Duration::from_millis(rng.gen_range(300..1500)),
            gap: Duration::from_millis(rng.gen_range(200..1200)),
        })
        .collect()
}

/// One line of the fault log.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub at: Duration,
    pub fault: Option<Fault>,
    pub what: String,
}

/// Waits until `cond` holds; an error naming `what` after `secs`.
pub async fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out after {secs} s waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until the async `cond` holds; an error naming `what` after `secs`.
pub async fn wait_for_async<F, Fut>(secs: u64, what: &str, mut cond: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out after {secs} s waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The identity of the committed insert of `_id` on `shard`, if there is one.
fn committed_entry_of(c: &Cluster, shard: &str, id: i32) -> Option<quorumtail_oplog::EntryId> {
    c.committed_entries(shard).iter().find_map(|raw| {
        let e = quorumtail_oplog::OplogEntry::parse(raw).ok()?;
        let doc = bson::Document::try_from(raw.as_ref()).ok()?;
        (doc.get_str("op").ok()? == "i" && doc.get_document("o").ok()?.get_i32("_id").ok()? == id)
            .then(|| e.id())
    })
}

/// The running nemesis.
pub struct Nemesis<'a> {
    pub cluster: &'a Cluster,
    pub qt: &'a mut Quorumtail,
    pub kafka: Arc<Kafka>,
    pub tail: Arc<Tail>,
    pub history: Arc<History>,
    pub t0: Instant,
    pub log: Vec<LogLine>,
    /// Shards that take writes now, in a stable order.
    pub active: Vec<String>,
    /// Every shard that ever existed (removed ones included).
    pub all: Vec<String>,
    pub added: Option<String>,
    pub removed: Option<String>,
    pub(crate) doomed_next: i32,
    direct_next: i32,
    /// Times quorumtail exited on its own (and was restarted), with why.
    pub exits: Vec<String>,
    /// Isolated-primary writes acknowledged (each must be rolled back).
    pub doomed_acked: usize,
    /// Episodes done, by kind.
    pub done: BTreeMap<Fault, usize>,
    /// Remove the shard while quorumtail is down (reproduces a known loss; see
    /// docs/nemesis.md).
    pub remove_while_down: bool,
    /// Members stepped down by `replSetStepDown`, and when: they cannot stand for 60 s.
    pub(crate) stepped_down: BTreeMap<SocketAddr, Instant>,
    /// Per shard, entries the nemesis saw held by a write majority of voters while not
    /// committed (the peak of a double failover). The simulator keeps no history of who
    /// held what, so this is what was observed, a lower bound.
    pub majority_held: BTreeMap<String, HashSet<EntryId>>,
    /// Double failovers that ran the figure-8 story (the others: two elections back to
    /// back, where the layout cannot carry an entry to a majority without committing it).
    pub figure_eights: usize,
}

impl std::fmt::Debug for Nemesis<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nemesis").field("done", &self.done).finish()
    }
}

impl<'a> Nemesis<'a> {
    pub fn new(
        cluster: &'a Cluster,
        qt: &'a mut Quorumtail,
        history: Arc<History>,
        t0: Instant,
    ) -> Nemesis<'a> {
        let kafka = qt.kafka.clone();
        let tail = kafka.tail.clone();
        let active = cluster.shard_names();
        Nemesis {
            cluster,
            qt,
            kafka,
            tail,
            history,
            t0,
            log: Vec::new(),
            all: active.clone(),
            active,
            added: None,
            removed: None,
            doomed_next: DOOMED_BASE,
            direct_next: DIRECT_BASE,
            exits: Vec::new(),
            doomed_acked: 0,
            done: BTreeMap::new(),
            remove_while_down: false,
            stepped_down: BTreeMap::new(),
            majority_held: BTreeMap::new(),
            figure_eights: 0,
        }
    }

    pub fn note(&mut self, fault: Option<Fault>, what: impl Into<String>) {
        let line = LogLine {
            at: self.t0.elapsed(),
            fault,
            what: what.into(),
        };
        eprintln!("[nemesis {:>7.2}s] {}", line.at.as_secs_f64(), line.what);
        self.log.push(line);
    }

    fn shard(&self, pick: u64) -> String {
        self.active[(pick % self.active.len() as u64) as usize].clone()
    }

    /// A member of `shard`'s configuration other than the primary (arbiters included: they
    /// can be killed and cut off too); `data` asks for one that holds an oplog.
    fn secondary(&self, shard: &str, pick: u64, data: bool) -> Result<Member, String> {
        let p = self.cluster.primary_of(shard);
        let s: Vec<Member> = members(self.cluster, shard)
            .into_iter()
            .filter(|m| Some(m.addr) != p && (!data || m.spec.is_data_bearing()))
            .collect();
        if s.is_empty() {
            return Err(format!("{shard} has no secondary"));
        }
        Ok(s[((pick >> 8) % s.len() as u64) as usize].clone())
    }

    /// Waits until every member of `shard` is up, connected, without lag and holds the
    /// commit point: a primary fault then cannot leave a stale member the only electable
    /// one (see docs/nemesis.md, "schedule constraints").
    async fn in_sync(&self, shard: &str) -> Result<(), String> {
        let c = self.cluster;
        wait_for(90, &format!("{shard} to be in sync"), || {
            let Some((cp, _)) = c.commit_point(shard) else {
                return false;
            };
            // Arbiters hold no oplog and a delayed member is behind by design: both only
            // need to be up and connected.
            let members = members(c, shard);
            c.primary_of(shard).is_some()
                && c.status().iter().all(|n| {
                    let Some(m) = members.iter().find(|m| m.addr.to_string() == n.addr) else {
                        return true;
                    };
                    n.alive
                        && !n.partitioned
                        && (!m.current() || (n.lag_ms == 0 && n.last_ts >= (cp.time, cp.increment)))
                })
        })
        .await
    }

    async fn new_primary(&self, shard: &str, old: SocketAddr) -> Result<SocketAddr, String> {
        let c = self.cluster;
        // 90 s: members that stepped down are not electable for 60 s (as in MongoDB),
        // so two step-downs and a kill can leave a shard without a candidate that long.
        wait_for(90, &format!("a new primary of {shard}"), || {
            c.primary_of(shard).is_some_and(|p| p != old)
                && c.status()
                    .iter()
                    .any(|n| n.addr == c.primary_of(shard).unwrap().to_string() && !n.partitioned)
        })
        .await?;
        Ok(c.primary_of(shard).unwrap())
    }

    /// Waits until quorumtail emitted every committed application entry of `shard`.
    async fn emitted_all(&mut self, shard: &str, secs: u64) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            self.revive().await?;
            // Every expected record's entry: transactions' and batches' too.
            let mut want: Vec<quorumtail_oplog::EntryId> =
                crate::checker::ShardTruth::read(self.cluster, shard)
                    .committed_app
                    .iter()
                    .map(|(id, _)| *id)
                    .collect();
            want.dedup();
            let missing = self.tail.missing(shard, &want);
            if missing == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "timed out after {secs} s waiting for quorumtail to emit {shard}'s committed entries ({missing} of {} missing)",
                    want.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn move_chunk(&mut self, key: i32, to: &str) -> Result<(), String> {
        let c = self.cluster;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            match c.move_chunk("shop.orders", Bson::Int32(key), to).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("moveChunk {key} to {to}: {e}")),
            }
        }
    }

    /// `(min key, owner)` of every chunk of `shop.orders`. The chunks exist once mongos
    /// sharded the collection (at its first write): an episode at the very start waits for
    /// them.
    async fn chunks(&self) -> Result<Vec<(i32, String)>, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let chunks = self.chunks_now().await;
            if !chunks.is_empty() {
                return Ok(chunks);
            }
            if tokio::time::Instant::now() > deadline {
                return Err("shop.orders has no chunks after 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `(min key, owner)` of every chunk of `shop.orders` (MinKey as 0: ids are >= 0).
    async fn chunks_now(&self) -> Vec<(i32, String)> {
        let reply = self
            .cluster
            .command(
                self.cluster.mongos_addr(),
                doc! {"find": "chunks", "filter": {}, "batchSize": 10000, "$db": "config"},
            )
            .await;
        let batch = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .cloned()
            .unwrap_or_default();
        let mut out: Vec<(i32, String)> = batch
            .iter()
            .filter_map(|d| {
                let d = d.as_document()?;
                if d.get_str("ns").ok()? != "shop.orders" {
                    return None;
                }
                let min = match d.get_document("min").ok()?.get("_id")? {
                    Bson::Int32(i) => *i,
                    _ => 0,
                };
                Some((min, d.get_str("shard").ok()?.to_owned()))
            })
            .collect();
        out.sort();
        out
    }

    /// Runs one episode.
    ///
    /// # Errors
    /// When an expected outcome does not happen in time.
    pub async fn run(&mut self, ep: &Episode) -> Result<(), String> {
        let c = self.cluster;
        let f = Some(ep.fault);
        match ep.fault {
            Fault::KillPrimary => {
                let shard = self.shard(ep.pick);
                self.in_sync(&shard).await?;
                let p = c.primary_of(&shard).ok_or("no primary")?;
                c.kill_node(p).await.map_err(|e| e.to_string())?;
                self.note(f, format!("kill primary {p} of {shard}"));
                let np = self.new_primary(&shard, p).await?;
                self.note(None, format!("{shard}: {np} elected"));
                tokio::time::sleep(ep.hold).await;
                c.restart_node(p).await.map_err(|e| e.to_string())?;
                self.note(None, format!("restart {p} of {shard}"));
            }
            Fault::PartitionPrimary => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let shard = self.shard(ep.pick + attempt - 1);
                    self.in_sync(&shard).await?;
                    let p = c.primary_of(&shard).ok_or("no primary")?;
                    let direct = mongodb::Client::with_uri_str(format!(
                        "mongodb://{p}/?directConnection=true&serverSelectionTimeoutMS=2000&retryWrites=false"
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                    let coll = direct
                        .database("shop")
                        .collection::<bson::Document>("orders");
                    let _ = direct.database("admin").run_command(doc! {"ping": 1}).await;
                    let before = c.rolled_back_entries(&shard).len();
                    c.partition_node(p).await.map_err(|e| e.to_string())?;
                    self.note(f, format!("partition primary {p} of {shard}"));
                    let first = self.doomed_next;
                    self.doomed_next += 2;
                    let acked = doomed_writes(&coll, first, &self.history, self.t0).await;
                    self.note(
                        None,
                        format!("{acked} direct write(s) acknowledged by the isolated {p} (_id {first}..)"),
                    );
                    let np = self.new_primary(&shard, p).await?;
                    self.note(None, format!("{shard}: {np} elected"));
                    tokio::time::sleep(ep.hold).await;
                    c.heal_node(p).await.map_err(|e| e.to_string())?;
                    self.note(None, format!("heal {p}"));
                    if acked > 0 {
                        wait_for(30, &format!("{p} to roll back"), || {
                            c.rolled_back_entries(&shard).len() > before
                        })
                        .await?;
                        let n = c.rolled_back_entries(&shard).len() - before;
                        self.note(None, format!("{shard}: {n} entries rolled back on {p}"));
                        self.doomed_acked += acked;
                        break;
                    }
                    if attempt >= 3 {
                        return Err("no direct write reached an isolated primary in 3 attempts (the election came first)".into());
                    }
                    drop(direct);
                }
            }
            Fault::PartitionSecondary => {
                let shard = self.shard(ep.pick);
                let m = self.secondary(&shard, ep.pick, false)?;
                let s = m.addr;
                c.partition_node(s).await.map_err(|e| e.to_string())?;
                self.note(
                    f,
                    format!("partition secondary {s} ({}) of {shard}", m.spec),
                );
                tokio::time::sleep(ep.hold).await;
                c.heal_node(s).await.map_err(|e| e.to_string())?;
                self.note(None, format!("heal {s}"));
            }
            Fault::LagSecondary => {
                let shard = self.shard(ep.pick);
                let m = self.secondary(&shard, ep.pick, true)?;
                let s = m.addr;
                let lag = Duration::from_millis(200 + (ep.pick >> 16) % 600);
                c.set_lag(s, lag).map_err(|e| e.to_string())?;
                self.note(
                    f,
                    format!("lag secondary {s} ({}) of {shard} by {lag:?}", m.spec),
                );
                tokio::time::sleep(ep.hold + lag).await;
                c.set_lag(s, Duration::ZERO).map_err(|e| e.to_string())?;
                self.note(None, format!("no lag on {s}"));
            }
            Fault::RestartSecondary => {
                let shard = self.shard(ep.pick);
                let m = self.secondary(&shard, ep.pick, false)?;
                let s = m.addr;
                c.kill_node(s).await.map_err(|e| e.to_string())?;
                self.note(f, format!("kill secondary {s} ({}) of {shard}", m.spec));
                tokio::time::sleep(ep.hold).await;
                c.restart_node(s).await.map_err(|e| e.to_string())?;
                self.note(None, format!("restart {s}"));
            }
            Fault::StepDown => {
                let shard = self.shard(ep.pick);
                self.in_sync(&shard).await?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
                let old = c.primary_of(&shard);
                loop {
                    match c.step_down(&shard).await {
                        Ok(()) => break,
                        Err(e) if tokio::time::Instant::now() < deadline => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(format!("step down {shard}: {e}")),
                    }
                }
                if let Some(old) = old {
                    self.stepped_down.insert(old, Instant::now());
                }
                self.note(
                    f,
                    format!(
                        "step down {} of {shard}; {} elected",
                        old.map(|a| a.to_string()).unwrap_or_default(),
                        c.primary_of(&shard)
                            .map(|a| a.to_string())
                            .unwrap_or_default()
                    ),
                );
            }
            Fault::MoveChunk => {
                let chunks = self.chunks().await?;
                let (key, owner) = chunks[(ep.pick % chunks.len() as u64) as usize].clone();
                let others: Vec<&String> = self.active.iter().filter(|s| **s != owner).collect();
                let to = others[((ep.pick >> 8) % others.len() as u64) as usize].clone();
                self.move_chunk(key, &to).await?;
                self.note(f, format!("move chunk {key} from {owner} to {to}"));
            }
            Fault::AddShard => {
                let name = c.add_shard(3).await.map_err(|e| e.to_string())?;
                self.note(f, format!("add shard {name}"));
                self.active.push(name.clone());
                self.all.push(name.clone());
                self.added = Some(name.clone());
                let chunks = self.chunks().await?;
                for k in 0..3u64 {
                    let i = ((ep.pick >> (8 * k)) % chunks.len() as u64) as usize;
                    let (key, owner) = chunks[i].clone();
                    if owner != name {
                        self.move_chunk(key, &name).await?;
                        self.note(
                            Some(Fault::MoveChunk),
                            format!("move chunk {key} from {owner} to {name}"),
                        );
                    }
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    self.revive().await?;
                    if self.tail.any_of(&name) {
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!("quorumtail emitted nothing of {name} in 60 s"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                self.note(None, format!("quorumtail follows {name}"));
            }
            Fault::RemoveShard => {
                let name = self.added.clone().ok_or("no added shard to remove")?;
                if self.remove_while_down {
                    let cps = self.qt.kill9().await?;
                    self.note(
                        Some(Fault::QuorumtailKill9),
                        format!("kill -9 quorumtail before removing {name} (checkpoints {cps:?})"),
                    );
                    // Writes keep landing on the shard while quorumtail is down.
                    tokio::time::sleep(ep.hold).await;
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
                loop {
                    match c.remove_shard(&name).await {
                        Ok(()) => break,
                        Err(e) if tokio::time::Instant::now() < deadline => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(format!("remove shard {name}: {e}")),
                    }
                }
                self.active.retain(|s| *s != name);
                self.removed = Some(name.clone());
                self.note(f, format!("remove shard {name} (its chunks drained away)"));
                if self.remove_while_down {
                    tokio::time::sleep(ep.hold).await;
                    self.qt.spawn();
                    self.note(None, "restart quorumtail");
                } else {
                    // quorumtail must emit everything the removed shard committed before
                    // it is restarted: discovery no longer lists the shard (see
                    // docs/nemesis.md).
                    self.settled(&name).await?;
                    self.emitted_all(&name, 60).await?;
                    self.note(None, format!("quorumtail emitted all of {name}"));
                }
            }
            Fault::BrokerOutage
            | Fault::BrokerPause
            | Fault::BrokerRestart
            | Fault::KillMongos
            | Fault::KillConfigMember => self.run_more(ep).await?,
            Fault::DoubleFailover
            | Fault::ReconfigVotes
            | Fault::LaggingCommitPoint
            | Fault::ChainedSync => self.run_replication(ep).await?,
            Fault::QuorumtailKill9 => {
                self.revive().await?;
                let cps = self.qt.kill9().await?;
                let cps: Vec<String> = cps.iter().map(|(s, id)| format!("{s}@{id}")).collect();
                self.note(
                    f,
                    format!("kill -9 quorumtail (checkpoints {})", cps.join(" ")),
                );
                tokio::time::sleep(ep.hold).await;
                self.qt.spawn();
                self.note(None, "restart quorumtail");
            }
            Fault::QuorumtailSigterm => {
                self.revive().await?;
                match self.qt.terminate().await? {
                    Stopped::Graceful(cps) => {
                        let cps: Vec<String> =
                            cps.iter().map(|(s, id)| format!("{s}@{id}")).collect();
                        self.note(
                            f,
                            format!("SIGTERM quorumtail: exit 0 (checkpoints {})", cps.join(" ")),
                        );
                    }
                    Stopped::Failed(what) => {
                        self.note(f, format!("SIGTERM quorumtail: it had {what}"));
                        self.exits.push(what);
                    }
                }
                tokio::time::sleep(ep.hold).await;
                self.qt.spawn();
                self.note(None, "restart quorumtail");
            }
        }
        *self.done.entry(ep.fault).or_default() += 1;
        self.revive().await?;
        tokio::time::sleep(ep.gap).await;
        Ok(())
    }

    /// If quorumtail exited on its own with an error, ends the run and restarts it, as an
    /// operator (or a supervisor) would.
    ///
    /// # Errors
    /// When it exited without a logged error or with a panic, or the boundary fails.
    pub async fn revive(&mut self) -> Result<(), String> {
        if let Some(what) = self.qt.exited() {
            self.qt.exited_ended().await?;
            self.qt.acceptable_exit(&what)?;
            self.note(
                None,
                format!("quorumtail {what}; restarting it (as an operator would)"),
            );
            self.exits.push(what);
            self.qt.spawn();
        }
        Ok(())
    }

    /// Waits until quorumtail emitted every application entry the active shards had
    /// committed when this was called (restarting it if it exits on its own).
    async fn caught_up(&mut self, secs: u64, after: &str) -> Result<(), String> {
        let want: Vec<(String, Vec<quorumtail_oplog::EntryId>)> = self
            .active
            .iter()
            .map(|s| (s.clone(), committed_app_entries(self.cluster, s)))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            self.revive().await?;
            let missing: usize = want.iter().map(|(s, ids)| self.tail.missing(s, ids)).sum();
            if missing == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{missing} committed entries not in Kafka {secs} s after {after}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A write straight to `shard`'s primary (`w: "majority"`), retried on a fresh `_id`
    /// until one is acknowledged; its entry identity.
    async fn write_to_primary(
        &mut self,
        shard: &str,
        secs: u64,
    ) -> Result<(i32, quorumtail_oplog::EntryId), String> {
        let c = self.cluster;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "no write straight to {shard}'s primary was acknowledged in {secs} s"
                ));
            }
            let Some(p) = c.primary_of(shard) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let id = self.direct_next;
            self.direct_next += 1;
            let client = mongodb::Client::with_uri_str(format!(
                "mongodb://{p}/?directConnection=true&serverSelectionTimeoutMS=2000&w=majority&wtimeoutMS=3000"
            ))
            .await
            .map_err(|e| e.to_string())?;
            let at = self.t0.elapsed();
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                client
                    .database("shop")
                    .collection::<bson::Document>("orders")
                    .insert_one(doc! {"_id": id, "v": 0, "direct": true}),
            )
            .await;
            let outcome = match r {
                Ok(Ok(_)) => Outcome::Ok { n: 1 },
                Ok(Err(e)) => Outcome::Failed(e.to_string().chars().take(300).collect()),
                Err(_) => Outcome::TimedOut,
            };
            let ok = matches!(outcome, Outcome::Ok { .. });
            self.history.record(Write {
                kind: WriteKind::Insert,
                id,
                version: 0,
                outcome,
                direct: false,
                at,
            });
            if !ok {
                continue;
            }
            // Its entry (acknowledged by a majority: committed).
            let mut found = None;
            wait_for(
                30,
                &format!("the committed entry of _id {id} on {shard}"),
                || {
                    found = committed_entry_of(c, shard, id);
                    found.is_some()
                },
            )
            .await?;
            return Ok((id, found.unwrap()));
        }
    }

    /// The broker faults, mongos and config-server kills.
    async fn run_more(&mut self, ep: &Episode) -> Result<(), String> {
        let c = self.cluster;
        let f = Some(ep.fault);
        match ep.fault {
            Fault::BrokerOutage => {
                let hold = Duration::from_millis(1000 + (ep.pick >> 24) % 4000);
                self.kafka.proxy.go_down();
                self.note(
                    f,
                    format!("broker unreachable for {hold:?}: every connection dropped, new ones refused"),
                );
                tokio::time::sleep(hold).await;
                self.kafka.proxy.come_up();
                self.note(None, "broker reachable again");
                self.caught_up(120, "the broker came back").await?;
                self.note(None, "quorumtail caught up");
            }
            Fault::BrokerPause => {
                let hold = Duration::from_millis(1000 + (ep.pick >> 24) % 2000);
                self.kafka.pause_broker();
                self.note(f, format!("SIGSTOP the broker for {hold:?}"));
                tokio::time::sleep(hold).await;
                self.kafka.resume_broker();
                self.note(None, "SIGCONT the broker");
                self.caught_up(120, "the broker resumed").await?;
                self.note(None, "quorumtail caught up");
            }
            Fault::BrokerRestart => {
                self.kafka.restart_broker(true);
                self.note(
                    f,
                    "broker stopped (SIGTERM) and started again (same port, same storage)",
                );
                let k = self.kafka.clone();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while !k.answers().await {
                    if tokio::time::Instant::now() > deadline {
                        return Err("the restarted broker did not answer within 60 s".into());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                self.note(None, "the broker answers");
                self.caught_up(120, "the broker restarted").await?;
                self.note(None, "quorumtail caught up");
            }
            Fault::KillMongos => {
                // The claim: quorumtail keeps tailing the shards it knows. A run started
                // while mongos is down knows none and exits (see docs/nemesis.md), so
                // mongos is killed once this run tails every shard.
                let active = self.active.clone();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while !self.qt.tailing(&active) {
                    self.revive().await?;
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "quorumtail did not start the pipelines of {active:?} within 60 s"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let m = c.mongos_addr();
                let from = self.qt.run_log_len();
                c.kill_node(m).await.map_err(|e| e.to_string())?;
                self.note(f, format!("kill mongos {m}"));
                // quorumtail keeps tailing the shards it knows: a write straight to a
                // shard's primary reaches Kafka while mongos is down.
                let shard = self.shard(ep.pick);
                let (id, eid) = self.write_to_primary(&shard, 60).await?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while !self.tail.emitted(&shard, &eid) {
                    self.revive().await?;
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "with mongos down, quorumtail did not emit {shard}'s _id {id} ({eid}) within 60 s"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                self.note(
                    None,
                    format!(
                        "with mongos down, _id {id} written to {shard}'s primary reached Kafka"
                    ),
                );
                let qt = &*self.qt;
                wait_for(30, "quorumtail to log the discovery failure", || {
                    qt.logged_since(from, "discovery failed")
                })
                .await?;
                self.note(
                    None,
                    "quorumtail logged: discovery failed; keeping the current topology",
                );
                tokio::time::sleep(ep.hold).await;
                c.restart_node(m).await.map_err(|e| e.to_string())?;
                wait_for_async(30, "mongos to answer", || async {
                    c.command(m, doc! {"ping": 1, "$db": "admin"})
                        .await
                        .get_f64("ok")
                        .is_ok_and(|ok| ok == 1.0)
                })
                .await?;
                self.note(None, format!("restart mongos {m}"));
            }
            Fault::KillConfigMember => {
                let set = "configRepl";
                let members = c.config_members();
                let m = members[(ep.pick % members.len() as u64) as usize];
                let primary = c.primary_of(set) == Some(m);
                if primary {
                    self.in_sync(set).await?;
                }
                c.kill_node(m).await.map_err(|e| e.to_string())?;
                self.note(
                    f,
                    format!(
                        "kill config server member {m}{}",
                        if primary { " (primary)" } else { "" }
                    ),
                );
                if primary {
                    let np = self.new_primary(set, m).await?;
                    self.note(None, format!("{set}: {np} elected"));
                }
                tokio::time::sleep(ep.hold).await;
                c.restart_node(m).await.map_err(|e| e.to_string())?;
                self.note(None, format!("restart {m}"));
            }
            other => return Err(format!("{other:?} is not handled by run_more")),
        }
        Ok(())
    }

    /// Heals everything and waits until every shard converged: all members hold the
    /// same newest entry and it is committed.
    pub async fn converge(&mut self) -> Result<(), String> {
        let c = self.cluster;
        for n in c.status() {
            let addr: SocketAddr = n.addr.parse().unwrap();
            if !n.alive {
                c.restart_node(addr).await.map_err(|e| e.to_string())?;
            }
            if n.partitioned {
                c.heal_node(addr).await.map_err(|e| e.to_string())?;
            }
            if n.lag_ms > 0 {
                c.set_lag(addr, Duration::ZERO).map_err(|e| e.to_string())?;
            }
            // Episodes release their blocks themselves; this is the safety net.
            c.block_replication(addr, false)
                .map_err(|e| e.to_string())?;
            c.set_sync_source(addr, None).map_err(|e| e.to_string())?;
        }
        for shard in &self.all {
            c.hold_step_up(shard, false).map_err(|e| e.to_string())?;
        }
        c.set_commit_point_delay(c.spec().commit_point_delay);
        for shard in self.all.clone() {
            self.settled(&shard).await?;
        }
        self.note(None, "cluster converged");
        Ok(())
    }

    /// Waits until every member of `shard` holds the same newest entry and it is
    /// committed.
    async fn settled(&self, shard: &str) -> Result<(), String> {
        let c = self.cluster;
        wait_for(60, &format!("{shard} to converge"), || {
            let Some((cp, _)) = c.commit_point(shard) else {
                return false;
            };
            // The members of the current configuration that hold an undelayed oplog.
            let members: Vec<String> = members(c, shard)
                .iter()
                .filter(|m| m.current())
                .map(|m| m.addr.to_string())
                .collect();
            c.status()
                .iter()
                .filter(|n| members.contains(&n.addr))
                .all(|n| n.last_ts == (cp.time, cp.increment))
        })
        .await
    }

    /// Waits until quorumtail emitted every shard's committed application entries.
    pub async fn drained(&mut self, secs: u64) -> Result<(), String> {
        for shard in self.all.clone() {
            let secs = if self.remove_while_down && self.removed.as_ref() == Some(&shard) {
                15
            } else {
                secs
            };
            self.emitted_all(&shard, secs).await?;
        }
        self.note(None, "quorumtail emitted every committed entry");
        Ok(())
    }
}

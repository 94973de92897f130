//! The faults of replication and membership: a double failover (Raft's figure 8), a
//! reconfig mid-stream, a lagging commit point and chained replication. Each one releases
//! what it set (blocks, held step-ups, sync sources, delays) before it returns, whether it
//! succeeded or not.
//!
//! ```text
//!  figure 8 (3 voters A B C; 5 voters add helpers that die with A)
//!   term 1   A writes X; B, C blocked            X on A (a minority)
//!   term 2   A dies; C elected, writes alone      C's entries on C only
//!   term 3   C dies; A re-elected, step-up held   A writes nothing of term 3
//!            B unblocked, copies X                X on A, B: a majority, not committed
//!   term 4   A dies; C (blocked) returns, wins    X rolled back everywhere
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mongosim::membership::MemberSpec;
use quorumtail_oplog::{EntryId, OplogEntry};

use super::{wait_for, Episode, Fault, Nemesis};
use crate::topology::{members, Member, Quorum};
use crate::workload::doomed_writes;
use quorumtail_testkit::truth::committed_app_entries_discovered as committed_app_entries;

/// How a double failover runs on one shard.
#[derive(Debug, Clone)]
struct Plan {
    shard: String,
    /// The primary.
    a: SocketAddr,
    /// Data-bearing voters that receive X with A and die with it.
    helpers: Vec<SocketAddr>,
    /// Every other data-bearing member; blocked from before X.
    others: Vec<Member>,
    quorum: Quorum,
    /// Whether the layout can carry X to a write majority without committing it.
    figure8: bool,
}

/// The identity of the newest entry of `node`'s oplog.
fn newest(c: &mongosim::Cluster, node: SocketAddr) -> Option<EntryId> {
    c.oplog_snapshot(node)
        .last()
        .and_then(|raw| OplogEntry::parse(raw).ok().map(|e| e.id()))
}

/// The identity of the insert of `_id` in `node`'s oplog.
fn insert_of(c: &mongosim::Cluster, node: SocketAddr, id: i32) -> Option<EntryId> {
    c.oplog_snapshot(node).iter().rev().find_map(|raw| {
        let e = OplogEntry::parse(raw).ok()?;
        let d = bson::Document::try_from(raw.as_ref()).ok()?;
        (d.get_str("op").ok()? == "i" && d.get_document("o").ok()?.get_i32("_id").ok()? == id)
            .then(|| e.id())
    })
}

fn ts_of(c: &mongosim::Cluster, node: SocketAddr) -> Option<(u32, u32)> {
    c.status()
        .into_iter()
        .find(|n| n.addr == node.to_string())
        .map(|n| n.last_ts)
}

fn is_primary(c: &mongosim::Cluster, set: &str, node: SocketAddr) -> bool {
    c.primary_of(set) == Some(node)
        && c.status()
            .iter()
            .any(|n| n.addr == node.to_string() && n.state == "PRIMARY" && !n.partitioned)
}

fn err(e: mongosim::SimError) -> String {
    e.to_string()
}

impl Nemesis<'_> {
    /// The replication and membership faults.
    pub(super) async fn run_replication(&mut self, ep: &Episode) -> Result<(), String> {
        match ep.fault {
            Fault::DoubleFailover => self.double_failover(ep).await,
            Fault::ReconfigVotes => self.reconfig_votes(ep).await,
            Fault::LaggingCommitPoint => self.lagging_commit_point(ep).await,
            Fault::ChainedSync => self.chained_sync(ep).await,
            other => Err(format!("{other:?} is not a replication fault")),
        }
    }

    /// Whether `node` cannot stand for election now (stepped down less than 60 s ago).
    fn frozen(&self, node: SocketAddr) -> bool {
        self.stepped_down
            .get(&node)
            .is_some_and(|at| at.elapsed() < Duration::from_secs(61))
    }

    /// A plan for `shard`, if a member other than the primary can be elected.
    fn plan(&self, shard: &str, pick: u64) -> Option<Plan> {
        let c = self.cluster;
        let a = c.primary_of(shard)?;
        let ms = members(c, shard);
        let specs: Vec<MemberSpec> = ms.iter().map(|m| m.spec.clone()).collect();
        let q = Quorum::of(&specs);
        let mut voters: Vec<Member> = ms
            .iter()
            .filter(|m| m.addr != a && m.data_voter())
            .cloned()
            .collect();
        // Helpers die with A, so the others must still elect: at most voters - 1 - majority
        // vote of them; X reaches A and the helpers only, less than a write majority.
        let h =
            (q.write_majority.saturating_sub(2)).min(q.voters.saturating_sub(1 + q.vote_majority));
        let rot = (pick >> 20) as usize % voters.len().max(1);
        voters.rotate_left(rot);
        // Helpers: members that cannot stand first, so that candidates remain.
        voters.sort_by_key(|m| m.spec.is_electable());
        let helpers: Vec<SocketAddr> = voters.iter().take(h).map(|m| m.addr).collect();
        let others: Vec<Member> = ms
            .iter()
            .filter(|m| m.addr != a && !helpers.contains(&m.addr) && m.spec.is_data_bearing())
            .cloned()
            .collect();
        let candidates = others
            .iter()
            .filter(|m| m.spec.is_electable() && !self.frozen(m.addr))
            .count();
        if candidates == 0 {
            return None;
        }
        // Figure 8 needs a write majority of data-bearing voters without the member elected
        // in term 2.
        let figure8 = voters.len() >= q.write_majority;
        Some(Plan {
            shard: shard.to_owned(),
            a,
            helpers,
            others,
            quorum: q,
            figure8,
        })
    }

    /// Unblocks every member of `set`, lets a held step-up finish, restarts dead members.
    async fn release(&self, set: &str) -> Result<(), String> {
        let c = self.cluster;
        c.hold_step_up(set, false).map_err(err)?;
        for n in c.status().into_iter().filter(|n| n.set == set) {
            let addr: SocketAddr = n.addr.parse().unwrap();
            c.block_replication(addr, false).map_err(err)?;
            if !n.alive {
                c.restart_node(addr).await.map_err(err)?;
            }
        }
        Ok(())
    }

    async fn double_failover(&mut self, ep: &Episode) -> Result<(), String> {
        // The shards of the drawn layout first (the pick chooses among them), the added
        // shard (3 plain voters) only when none of them can run it.
        let mut shards = self.active.clone();
        let rot = (ep.pick % shards.len() as u64) as usize;
        shards.rotate_left(rot);
        shards.sort_by_key(|s| self.added.as_ref() == Some(s));
        let deadline = Instant::now() + Duration::from_secs(75);
        let plan = loop {
            let mut found = None;
            for shard in &shards {
                self.in_sync(shard).await?;
                if let Some(p) = self.plan(shard, ep.pick) {
                    found = Some(p);
                    break;
                }
            }
            if let Some(p) = found {
                break p;
            }
            // Every candidate is frozen by a recent step-down: wait for the freeze to end.
            if Instant::now() > deadline {
                return Err(
                    "no shard has a member other than its primary that can be elected".into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let shard = plan.shard.clone();
        let result = if plan.figure8 {
            self.figure8(&plan, ep).await
        } else {
            self.back_to_back(&plan, ep).await
        };
        let released = self.release(&shard).await;
        result?;
        released?;
        self.in_sync(&shard).await?;
        self.note(None, format!("{shard}: in sync again"));
        Ok(())
    }

    /// Raft's figure 8, adapted to the layout (see the module docs).
    async fn figure8(&mut self, plan: &Plan, ep: &Episode) -> Result<(), String> {
        let c = self.cluster;
        let f = Some(Fault::DoubleFailover);
        let (set, a, q) = (plan.shard.as_str(), plan.a, plan.quorum);
        // Term 1: block the others; let one candidate catch up with every blocked voter so
        // the election of term 2 cannot be refused by a voter more up to date than it.
        for m in &plan.others {
            c.block_replication(m.addr, true).map_err(err)?;
        }
        let voters_ts = plan
            .others
            .iter()
            .filter(|m| m.spec.is_voter())
            .filter_map(|m| ts_of(c, m.addr))
            .max()
            .unwrap_or_default();
        let cand = plan
            .others
            .iter()
            .find(|m| m.spec.is_electable() && !self.frozen(m.addr))
            .map(|m| m.addr)
            .ok_or("no candidate")?;
        c.block_replication(cand, false).map_err(err)?;
        wait_for(
            20,
            &format!("{cand} to catch up with the blocked voters"),
            || ts_of(c, cand).is_some_and(|t| t >= voters_ts),
        )
        .await?;
        c.block_replication(cand, true).map_err(err)?;
        // X: writes straight to A (w: 1) that reach A and the helpers only.
        let direct = mongodb::Client::with_uri_str(format!(
            "mongodb://{a}/?directConnection=true&serverSelectionTimeoutMS=2000&retryWrites=false"
        ))
        .await
        .map_err(|e| e.to_string())?;
        let coll = direct
            .database("shop")
            .collection::<bson::Document>("orders");
        let first = self.doomed_next;
        self.doomed_next += 2;
        let acked = doomed_writes(&coll, first, &self.history, self.t0).await;
        drop(direct);
        let x = insert_of(c, a, first).ok_or_else(|| {
            format!("the write of _id {first} to {a} was not logged ({acked} acknowledged)")
        })?;
        self.doomed_acked += acked;
        for h in &plan.helpers {
            let h = *h;
            wait_for(20, &format!("{h} to hold X"), || {
                ts_of(c, h).is_some_and(|t| t >= (x.ts.time, x.ts.increment))
            })
            .await?;
        }
        self.note(
            f,
            format!(
                "double failover of {set} (figure 8, write majority {}): others blocked, X ({x}, {acked} direct writes) on {a}{}",
                q.write_majority,
                if plan.helpers.is_empty() { String::new() } else { format!(" and {:?}", plan.helpers) }
            ),
        );
        // Term 2: A (and the helpers) die; a blocked candidate wins and writes alone.
        c.kill_node(a).await.map_err(err)?;
        for h in &plan.helpers {
            c.kill_node(*h).await.map_err(err)?;
        }
        let w = self.new_primary(set, a).await?;
        if plan.helpers.contains(&w) {
            return Err(format!("{w}, which holds X, was elected"));
        }
        let mut wrote = None;
        wait_for(20, &format!("{w}'s first entry of its term"), || {
            let term = c
                .status()
                .into_iter()
                .find(|n| n.addr == w.to_string())
                .map(|n| n.term);
            wrote = newest(c, w);
            wrote.is_some_and(|e| e.term.is_some() && e.term == term)
        })
        .await?;
        self.note(
            None,
            format!(
                "{set}: {a} killed, {w} elected (term {:?}), writes alone",
                wrote.and_then(|e| e.term)
            ),
        );
        tokio::time::sleep(ep.hold).await;
        // Term 3: W dies; A returns and wins, but its step-up is held: no entry of term 3.
        c.kill_node(w).await.map_err(err)?;
        c.hold_step_up(set, true).map_err(err)?;
        c.restart_node(a).await.map_err(err)?;
        wait_for(30, &format!("{a} to be re-elected"), || {
            is_primary(c, set, a)
        })
        .await?;
        for h in &plan.helpers {
            c.restart_node(*h).await.map_err(err)?;
        }
        // A carries X to a write majority of voters.
        let need = q.write_majority - 1 - plan.helpers.len();
        let carriers: Vec<SocketAddr> = plan
            .others
            .iter()
            .filter(|m| m.addr != w && m.data_voter())
            .take(need)
            .map(|m| m.addr)
            .collect();
        for d in &carriers {
            c.block_replication(*d, false).map_err(err)?;
        }
        for d in &carriers {
            let d = *d;
            wait_for(20, &format!("{d} to copy X from {a}"), || {
                ts_of(c, d).is_some_and(|t| t >= (x.ts.time, x.ts.increment))
            })
            .await?;
        }
        let held = self.majority_held_now(set, a, q)?;
        if !held.contains(&x) {
            return Err(format!(
                "X ({x}) is not held by {} voters, or is committed",
                q.write_majority
            ));
        }
        self.note(
            None,
            format!(
                "{set}: {a} re-elected, step-up held; X copied to {carriers:?}: {} entries held by {} voters, not committed",
                held.len(),
                q.write_majority
            ),
        );
        self.majority_held
            .entry(set.to_owned())
            .or_default()
            .extend(held);
        tokio::time::sleep(ep.hold).await;
        // Term 4: A dies before writing; W returns without syncing from A, and wins.
        c.block_replication(w, true).map_err(err)?;
        c.restart_node(w).await.map_err(err)?;
        c.kill_node(a).await.map_err(err)?;
        wait_for(30, &format!("{w} to be elected again"), || {
            is_primary(c, set, w)
        })
        .await?;
        c.hold_step_up(set, false).map_err(err)?;
        self.release(set).await?;
        let cl = self.cluster;
        wait_for(30, &format!("X ({x}) to be rolled back"), || {
            cl.rolled_back_entries(set)
                .iter()
                .filter_map(|raw| OplogEntry::parse(raw).ok())
                .any(|e| e.id() == x)
        })
        .await?;
        self.figure_eights += 1;
        self.note(
            None,
            format!("{set}: {a} killed, {w} elected again; X rolled back"),
        );
        Ok(())
    }

    /// Entries of `a`'s oplog after the commit point that `write_majority` data-bearing
    /// voters of `set` hold now.
    fn majority_held_now(
        &self,
        set: &str,
        a: SocketAddr,
        q: Quorum,
    ) -> Result<HashSet<EntryId>, String> {
        let c = self.cluster;
        let (cp, _) = c.commit_point(set).ok_or("no commit point")?;
        let cp = (cp.time, cp.increment);
        let ids = |node: SocketAddr| -> Vec<EntryId> {
            c.oplog_snapshot(node)
                .iter()
                .filter_map(|raw| OplogEntry::parse(raw).ok())
                .map(|e| e.id())
                .filter(|id| (id.ts.time, id.ts.increment) > cp)
                .collect()
        };
        let voters: Vec<HashSet<EntryId>> = members(c, set)
            .iter()
            .filter(|m| m.data_voter())
            .map(|m| ids(m.addr).into_iter().collect())
            .collect();
        Ok(ids(a)
            .into_iter()
            .filter(|id| voters.iter().filter(|v| v.contains(id)).count() >= q.write_majority)
            .collect())
    }

    /// Two elections back to back, for layouts where X cannot reach a write majority
    /// without committing (a primary, a secondary and an arbiter): A writes alone, dies; W
    /// is elected and writes alone, dies; A returns and is elected again; W rejoins and
    /// rolls back its term.
    async fn back_to_back(&mut self, plan: &Plan, ep: &Episode) -> Result<(), String> {
        let c = self.cluster;
        let f = Some(Fault::DoubleFailover);
        let (set, a) = (plan.shard.as_str(), plan.a);
        for m in &plan.others {
            c.block_replication(m.addr, true).map_err(err)?;
        }
        self.note(
            f,
            format!("double failover of {set} (two elections back to back; the layout cannot hold figure 8): others blocked, {a} writes alone"),
        );
        tokio::time::sleep(ep.hold / 2).await;
        c.kill_node(a).await.map_err(err)?;
        let w = self.new_primary(set, a).await?;
        self.note(
            None,
            format!("{set}: {a} killed, {w} elected, writes alone"),
        );
        tokio::time::sleep(ep.hold / 2).await;
        let before = c.rolled_back_entries(set).len();
        c.kill_node(w).await.map_err(err)?;
        c.restart_node(a).await.map_err(err)?;
        wait_for(30, &format!("{a} to be re-elected"), || {
            is_primary(c, set, a)
        })
        .await?;
        self.release(set).await?;
        self.note(
            None,
            format!("{set}: {w} killed, {a} elected again; {w} restarted"),
        );
        // W's term began with its "new primary" entry, which only W holds.
        let cl = self.cluster;
        wait_for(30, &format!("{w} to roll back its term"), || {
            cl.rolled_back_entries(set).len() > before
        })
        .await?;
        let n = c.rolled_back_entries(set).len() - before;
        self.note(
            None,
            format!("{set}: {n} entries of {w}'s term rolled back"),
        );
        Ok(())
    }

    /// Waits until the commit point of `shard` moved on, then until quorumtail emitted
    /// everything committed by then: it follows the shard under the fault.
    async fn progress(&mut self, shard: &str, what: &str) -> Result<(), String> {
        let c = self.cluster;
        let from = c.commit_point(shard).map(|(ts, _)| (ts.time, ts.increment));
        wait_for(
            30,
            &format!("{shard}'s commit point to move {what}"),
            || c.commit_point(shard).map(|(ts, _)| (ts.time, ts.increment)) > from,
        )
        .await?;
        let want = committed_app_entries(c, shard);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.revive().await?;
            let missing = self.tail.missing(shard, &want);
            if missing == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{missing} of {shard}'s committed entries not in Kafka 60 s {what}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `replSetReconfig` on `set`'s primary, retried while the set has none.
    async fn reconfigure(&self, set: &str, ms: Vec<MemberSpec>) -> Result<Vec<SocketAddr>, String> {
        let c = self.cluster;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match c.reconfigure(set, ms.clone(), false).await {
                Ok(addrs) => return Ok(addrs),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("reconfig of {set}: {e}")),
            }
        }
    }

    async fn reconfig_votes(&mut self, ep: &Episode) -> Result<(), String> {
        let c = self.cluster;
        let f = Some(Fault::ReconfigVotes);
        let shard = self.shard(ep.pick);
        self.in_sync(&shard).await?;
        let p = c.primary_of(&shard).ok_or("no primary")?;
        let ms = members(c, &shard);
        let specs: Vec<MemberSpec> = ms.iter().map(|m| m.spec.clone()).collect();
        let q = Quorum::of(&specs);
        let pick_of = |v: Vec<&Member>| -> Option<Member> {
            (!v.is_empty()).then(|| v[((ep.pick >> 16) % v.len() as u64) as usize].clone())
        };
        let voters_not_primary = pick_of(
            ms.iter()
                .filter(|m| m.addr != p && m.data_voter())
                .collect(),
        );
        let not_primary = pick_of(ms.iter().filter(|m| m.addr != p).collect());
        // One voter change per reconfig, as mongod requires; the variant the pick names,
        // else the next one the layout allows.
        for k in 0..3 {
            match ((ep.pick >> 12) + k) % 3 {
                0 if q.voters < 7 => {
                    let mut new = specs.clone();
                    new.push(MemberSpec::hidden());
                    let addrs = self.reconfigure(&shard, new).await?;
                    let added = *addrs.last().ok_or("no members after reconfig")?;
                    self.note(
                        f,
                        format!(
                            "reconfig {shard}: add hidden voter {added} ({} voters)",
                            q.voters + 1
                        ),
                    );
                    self.progress(&shard, "after the reconfig").await?;
                    tokio::time::sleep(ep.hold).await;
                    let mut back = c.member_specs(&shard).map_err(err)?;
                    back.retain(|m| m.host != Some(added));
                    self.reconfigure(&shard, back).await?;
                    self.note(None, format!("reconfig {shard}: remove {added} again"));
                }
                1 if voters_not_primary.is_some() => {
                    let m = voters_not_primary.clone().unwrap();
                    let mut new = specs.clone();
                    let i = new.iter().position(|s| s.host == Some(m.addr)).unwrap();
                    new[i].votes = 0;
                    new[i].priority = 0.0;
                    self.reconfigure(&shard, new).await?;
                    self.note(
                        f,
                        format!(
                            "reconfig {shard}: {} ({}) loses its vote ({} voters)",
                            m.addr,
                            m.spec,
                            q.voters - 1
                        ),
                    );
                    self.progress(&shard, "after the reconfig").await?;
                    tokio::time::sleep(ep.hold).await;
                    let mut back = c.member_specs(&shard).map_err(err)?;
                    if let Some(s) = back.iter_mut().find(|s| s.host == Some(m.addr)) {
                        s.votes = m.spec.votes;
                        s.priority = m.spec.priority;
                    }
                    self.reconfigure(&shard, back).await?;
                    self.note(None, format!("reconfig {shard}: {} votes again", m.addr));
                }
                2 if not_primary.is_some() => {
                    let m = not_primary.clone().unwrap();
                    let mut new = specs.clone();
                    new.retain(|s| s.host != Some(m.addr));
                    self.reconfigure(&shard, new).await?;
                    self.note(f, format!("reconfig {shard}: drop {} ({})", m.addr, m.spec));
                    self.progress(&shard, "after the reconfig").await?;
                    tokio::time::sleep(ep.hold).await;
                    let mut back = c.member_specs(&shard).map_err(err)?;
                    back.push(MemberSpec {
                        host: None,
                        id: None,
                        ..m.spec.clone()
                    });
                    let addrs = self.reconfigure(&shard, back).await?;
                    let added = addrs.last().copied();
                    self.note(
                        None,
                        format!(
                            "reconfig {shard}: a new {} member {} in its place",
                            m.spec,
                            added.map(|a| a.to_string()).unwrap_or_default()
                        ),
                    );
                }
                _ => continue,
            }
            self.progress(&shard, "after the reconfig was undone")
                .await?;
            return Ok(());
        }
        Err(format!("no reconfig applies to {shard}"))
    }

    async fn lagging_commit_point(&mut self, ep: &Episode) -> Result<(), String> {
        let c = self.cluster;
        let normal = c.spec().commit_point_delay;
        let delay = Duration::from_millis(300 + (ep.pick >> 16) % 1200);
        c.set_commit_point_delay(delay);
        self.note(
            Some(Fault::LaggingCommitPoint),
            format!("secondaries learn the commit point {delay:?} late"),
        );
        let shard = self.shard(ep.pick);
        let r = self.progress(&shard, "with the commit point lagging").await;
        if r.is_ok() {
            tokio::time::sleep(ep.hold).await;
        }
        c.set_commit_point_delay(normal);
        r?;
        self.note(None, format!("commit point delay back to {normal:?}"));
        Ok(())
    }

    async fn chained_sync(&mut self, ep: &Episode) -> Result<(), String> {
        let c = self.cluster;
        let shards = self.active.clone();
        for k in 0..shards.len() {
            let shard = &shards[(ep.pick as usize + k) % shards.len()];
            let p = c.primary_of(shard);
            let data: Vec<Member> = members(c, shard)
                .into_iter()
                .filter(|m| Some(m.addr) != p && m.spec.is_data_bearing())
                .collect();
            if data.len() < 2 {
                continue;
            }
            let i = ((ep.pick >> 8) % data.len() as u64) as usize;
            let j = (i + 1 + ((ep.pick >> 24) % (data.len() as u64 - 1)) as usize) % data.len();
            let (node, source) = (&data[i], &data[j]);
            let lag = Duration::from_millis(100 + (ep.pick >> 32) % 400);
            c.set_sync_source(node.addr, Some(source.addr))
                .map_err(err)?;
            c.set_lag(source.addr, lag).map_err(err)?;
            self.note(
                Some(Fault::ChainedSync),
                format!(
                    "{shard}: {} ({}) syncs from {} ({}), which lags by {lag:?}",
                    node.addr, node.spec, source.addr, source.spec
                ),
            );
            let r = self.progress(shard, "with chained replication").await;
            if r.is_ok() {
                tokio::time::sleep(ep.hold).await;
            }
            c.set_sync_source(node.addr, None).map_err(err)?;
            c.set_lag(source.addr, Duration::ZERO).map_err(err)?;
            r?;
            self.note(
                None,
                format!("{shard}: {} syncs from the primary again", node.addr),
            );
            return Ok(());
        }
        // A primary, a secondary and an arbiter have one secondary to sync from: nothing
        // to chain.
        self.note(
            Some(Fault::ChainedSync),
            "no shard has two secondaries that hold data: no chain (not applicable to this layout)",
        );
        Ok(())
    }
}

//! Replication and failover, advanced by [`World::tick`]: elections and step-downs,
//! replicating entries after lag from the primary or a chained sync source, rollback of a
//! diverged member, periodic no-ops, the commit point of protocol version 1 and the ground
//! truth it feeds, and killing / restarting processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{op_key, CmdError, MemberState, NodeState, World};
use crate::oplog::{ts_key, Entry, OpSpec};

impl World {
    /// Makes node `n` primary with `term` and logs the "new primary" no-op.
    pub fn elect(&mut self, s: usize, n: usize, term: i64, now: Instant) {
        let set = &mut self.sets[s];
        for (i, node) in set.nodes.iter_mut().enumerate() {
            if node.reachable() || i == n {
                node.term = node.term.max(term);
            }
            if i == n {
                node.term = term;
                node.state = MemberState::Primary;
                node.minority_since = None;
                node.sync_source = None;
                node.draining = true;
                node.first_optime_of_term = None;
            }
        }
        set.no_primary_since = None;
        set.elect_now = false;
        // The bucket catalog is the primary's memory: a new primary opens new buckets.
        set.ts_buckets.clear();
        tracing::info!(set = %self.sets[s].name, node = %self.sets[s].nodes[n].addr, term, "elected primary");
        if !self.sets[s].hold_step_up {
            self.complete_step_up(s, n, now);
        }
    }

    /// Ends drain mode: logs the "new primary" no-op, whose optime becomes the floor of what
    /// this primary may commit (TopologyCoordinator::completeTransitionToPrimary).
    fn complete_step_up(&mut self, s: usize, n: usize, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        if node.state != MemberState::Primary || !node.draining {
            return;
        }
        node.draining = false;
        if let Some(e) = self.write(s, n, &OpSpec::noop("new primary"), now) {
            self.sets[s].nodes[n].first_optime_of_term = Some(op_key(&e.id));
        }
    }

    /// Steps a primary down to secondary.
    pub fn step_down_node(&mut self, s: usize, n: usize, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        if node.state == MemberState::Primary {
            node.state = MemberState::Secondary;
            node.minority_since = None;
            node.draining = false;
            node.first_optime_of_term = None;
            tracing::info!(node = %node.addr, "stepped down");
        }
        if self.sets[s].no_primary_since.is_none() {
            self.sets[s].no_primary_since = Some(now);
        }
    }

    /// Explicit `replSetStepDown`: the most up-to-date reachable secondary catches up with
    /// the primary (mongod waits for a caught-up secondary before stepping down) and is
    /// elected at once; the old primary is not electable for 60 s.
    ///
    /// # Errors
    /// NotWritablePrimary when the set has no primary; ExceededTimeLimit (262) when no
    /// electable secondary is reachable.
    pub fn step_down(&mut self, s: usize, now: Instant) -> Result<(), CmdError> {
        let p = self.sets[s]
            .sync_source()
            .ok_or_else(CmdError::not_primary)?;
        let candidate = self.sets[s]
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, node)| *i != p && node.reachable() && node.member.is_electable())
            .max_by_key(|(i, node)| (node.last_key(), std::cmp::Reverse(*i)))
            .map(|(i, _)| i);
        let Some(c) = candidate else {
            return Err(CmdError::new(
                262,
                "ExceededTimeLimit",
                "No electable secondaries caught up as of the step down deadline",
            ));
        };
        self.catch_up(s, c, p);
        self.step_down_node(s, p, now);
        self.sets[s].nodes[p].stepdown_until = Some(now + Duration::from_secs(60));
        let term = self.max_term(s) + 1;
        self.elect(s, c, term, now);
        Ok(())
    }

    fn max_term(&self, s: usize) -> i64 {
        self.sets[s].nodes.iter().map(|n| n.term).max().unwrap_or(0)
    }

    /// Copies every entry node `to` misses from node `from`, ignoring lag.
    fn catch_up(&mut self, s: usize, to: usize, from: usize) {
        let start = match self.sets[s].nodes[to].oplog.last() {
            Some(e) => match self.sets[s].nodes[from].oplog.position_of(&e.id) {
                Some(i) => i + 1,
                None => return,
            },
            None => 0,
        };
        let missing: Vec<_> = self.sets[s].nodes[from]
            .oplog
            .iter()
            .skip(start)
            .cloned()
            .collect();
        for e in missing {
            self.push_entry(s, to, e);
        }
    }

    /// Advances time: elections, replication, commit point, periodic no-ops.
    /// Returns whether anything observable changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for s in 0..self.sets.len() {
            if self.sets[s].removed {
                continue;
            }
            changed |= self.run_elections(s, now);
            changed |= self.finish_drains(s, now);
            changed |= self.replicate(s, now);
            changed |= self.write_noops(s, now);
            changed |= self.replicate(s, now);
            changed |= self.advance_commit(s, now);
        }
        changed
    }

    /// Completes drain mode of primaries elected while the step-up was held.
    fn finish_drains(&mut self, s: usize, now: Instant) -> bool {
        if self.sets[s].hold_step_up {
            return false;
        }
        let draining: Vec<usize> = (0..self.sets[s].nodes.len())
            .filter(|i| {
                let n = &self.sets[s].nodes[*i];
                n.alive && n.state == MemberState::Primary && n.draining
            })
            .collect();
        for n in &draining {
            self.complete_step_up(s, *n, now);
        }
        !draining.is_empty()
    }

    fn run_elections(&mut self, s: usize, now: Instant) -> bool {
        let timeout = self.cfg.election_timeout;
        let majority = self.sets[s].majority();
        let reachable: Vec<usize> = (0..self.sets[s].nodes.len())
            .filter(|i| self.sets[s].nodes[*i].reachable())
            .collect();
        // Only voters count towards an election or towards a primary seeing a majority.
        let voters: Vec<usize> = reachable
            .iter()
            .copied()
            .filter(|i| self.sets[s].nodes[*i].member.is_voter())
            .collect();
        let max_reachable_term = reachable
            .iter()
            .map(|i| self.sets[s].nodes[*i].term)
            .max()
            .unwrap_or(0);
        let mut changed = false;
        for i in 0..self.sets[s].nodes.len() {
            let node = &mut self.sets[s].nodes[i];
            if node.state != MemberState::Primary {
                continue;
            }
            let step = if !node.alive || node.removed || !node.member.is_electable() {
                true
            } else if node.partitioned {
                node.partitioned_at
                    .is_some_and(|at| now.duration_since(at) >= timeout)
            } else if voters.len() < majority {
                let since = *node.minority_since.get_or_insert(now);
                now.duration_since(since) >= timeout
            } else {
                node.minority_since = None;
                max_reachable_term > node.term
            };
            if step {
                if node.reachable() {
                    node.term = node.term.max(max_reachable_term);
                }
                self.step_down_node(s, i, now);
                changed = true;
            }
        }
        let has_primary = reachable
            .iter()
            .any(|i| self.sets[s].nodes[*i].state == MemberState::Primary);
        if has_primary {
            self.sets[s].no_primary_since = None;
            return changed;
        }
        if voters.len() < majority {
            return changed;
        }
        let since = *self.sets[s].no_primary_since.get_or_insert(now);
        if !self.sets[s].elect_now && now.duration_since(since) < timeout {
            return changed;
        }
        // Candidates: electable members (not arbiters, priority > 0: hidden, delayed and
        // non-voting members never stand) that are not frozen by a step-down.
        let candidate = reachable
            .iter()
            .copied()
            .filter(|i| {
                let n = &self.sets[s].nodes[*i];
                n.member.is_electable() && n.stepdown_until.is_none_or(|until| until <= now)
            })
            .max_by(|a, b| {
                let (na, nb) = (&self.sets[s].nodes[*a], &self.sets[s].nodes[*b]);
                na.last_key()
                    .cmp(&nb.last_key())
                    .then(na.member.priority.total_cmp(&nb.member.priority))
                    .then(b.cmp(a))
            });
        // A candidate needs the votes of a majority of voters (majorityVoteCount), and a
        // voter grants its vote only to a candidate whose oplog is at least as up to date as
        // its own (an arbiter's is empty, so it always does): otherwise a lagging member
        // could win and roll back majority-committed entries.
        if let Some(c) = candidate.filter(|c| {
            let ck = self.sets[s].nodes[*c].last_key();
            voters
                .iter()
                .filter(|v| self.sets[s].nodes[**v].last_key() <= ck)
                .count()
                >= majority
        }) {
            let term = max_reachable_term + 1;
            self.elect(s, c, term, now);
            changed = true;
        }
        changed
    }

    /// Where member `i` replicates from: its forced sync source when that one is usable,
    /// else the primary.
    fn pick_sync_source(&self, s: usize, i: usize) -> Option<usize> {
        let set = &self.sets[s];
        if let Some(j) = set.nodes[i].sync_from {
            let src = &set.nodes[j];
            if j != i && src.reachable() && src.member.is_data_bearing() {
                return Some(j);
            }
        }
        set.sync_source().filter(|p| *p != i)
    }

    fn replicate(&mut self, s: usize, now: Instant) -> bool {
        let mut changed = false;
        for i in 0..self.sets[s].nodes.len() {
            {
                let node = &self.sets[s].nodes[i];
                if !node.reachable()
                    || !node.member.is_data_bearing()
                    || node.state == MemberState::Primary
                {
                    continue;
                }
            }
            let Some(p) = self.pick_sync_source(s, i) else {
                self.sets[s].nodes[i].sync_source = None;
                continue;
            };
            self.sets[s].nodes[i].sync_source = Some(p);
            if self.sets[s].nodes[i].replication_blocked {
                continue;
            }
            let start = {
                let set = &self.sets[s];
                let (src, dst) = (&set.nodes[p], &set.nodes[i]);
                match dst.oplog.last() {
                    // Emptied by truncate_oplog: continue after what it last had.
                    None => Some(src.oplog.index_after(dst.last_ts)),
                    Some(e) => match src.oplog.position_of(&e.id) {
                        Some(x) => Some(x + 1),
                        // Its newest entry already fell off the source's oplog: "too stale",
                        // mongod stops replicating and needs a resync. So does the sim.
                        None if src
                            .oplog
                            .first()
                            .is_some_and(|f| ts_key(f.id.ts) > ts_key(e.id.ts)) =>
                        {
                            if !dst.too_stale_logged {
                                tracing::warn!(node = %dst.addr, source = %src.addr, "too stale to sync from its source");
                            }
                            None.or(Some(usize::MAX))
                        }
                        // Its newest entry is not on the source's branch yet: a secondary
                        // source that lags behind it waits; a primary means rollback.
                        None if src.state != MemberState::Primary
                            && src.last_key() < dst.last_key() =>
                        {
                            continue
                        }
                        None => None,
                    },
                }
            };
            if start == Some(usize::MAX) {
                self.sets[s].nodes[i].too_stale_logged = true;
                continue;
            }
            let start = match start {
                Some(x) => x,
                None => {
                    self.rollback(s, i, p);
                    changed = true;
                    match self.sets[s].nodes[i].oplog.last() {
                        None => 0,
                        Some(e) => match self.sets[s].nodes[p].oplog.position_of(&e.id) {
                            Some(x) => x + 1,
                            None => continue,
                        },
                    }
                }
            };
            let node = &self.sets[s].nodes[i];
            // A delayed member applies entries secondaryDelaySecs after they were written.
            let lag = node.lag + Duration::from_secs(node.member.secondary_delay_secs);
            let ready: Vec<Arc<Entry>> = self.sets[s].nodes[p]
                .oplog
                .iter()
                .skip(start)
                .take_while(|e| e.written_at + lag <= now)
                .cloned()
                .collect();
            for e in ready {
                self.push_entry(s, i, e);
                changed = true;
            }
        }
        changed
    }

    /// Rolls node `n` back to its common point with `src`, as a rejoining old primary does.
    fn rollback(&mut self, s: usize, n: usize, src: usize) {
        let common = {
            let set = &self.sets[s];
            let (node, source) = (&set.nodes[n], &set.nodes[src]);
            (0..node.oplog.len()).rev().find(|i| {
                node.oplog
                    .get(*i)
                    .is_some_and(|e| source.oplog.contains(&e.id))
            })
        };
        let source_data = (
            self.sets[s].nodes[src].data.clone(),
            self.sets[s].nodes[src].undo.clone(),
        );
        let set = &mut self.sets[s];
        let removed = match common {
            Some(c) => set.nodes[n].oplog.truncate_after(c + 1),
            None => {
                // No common point (oplog capped past it): resync from the source.
                let removed = set.nodes[n].oplog.truncate_after(0);
                let copy: Vec<_> = set.nodes[src].oplog.iter().cloned().collect();
                for e in copy {
                    set.nodes[n].oplog.push(e);
                }
                removed
            }
        };
        let node = &mut set.nodes[n];
        (node.data, node.undo) = source_data;
        node.last_ts = node.oplog.last().map(|e| e.id.ts).unwrap_or(node.last_ts);
        node.epoch += 1;
        let killed: Vec<i64> = node.cursors.keys().copied().collect();
        node.cursors.clear();
        for id in killed {
            node.dead_cursors.insert(
                id,
                CmdError::new(
                    175,
                    "QueryPlanKilled",
                    format!("cursor id {id} was killed because the node rolled back (mongosim)"),
                ),
            );
        }
        tracing::warn!(set = %set.name, node = %node.addr, entries = removed.len(), "rollback");
        let committed_key = set.commit_point.as_ref().map(|c| op_key(&c.id));
        for e in removed {
            if committed_key.is_some_and(|k| op_key(&e.id) <= k)
                && set.committed.iter().rev().any(|c| c.id == e.id)
            {
                tracing::error!(set = %set.name, node = %node.addr, ts = ?e.id.ts, "a committed entry was rolled back (simulator bug)");
            }
            if !set.rolled_back.iter().any(|r| r.id == e.id) {
                set.rolled_back.push(e);
            }
        }
    }

    fn write_noops(&mut self, s: usize, now: Instant) -> bool {
        let mut changed = false;
        for n in 0..self.sets[s].nodes.len() {
            let node = &self.sets[s].nodes[n];
            if node.alive
                && node.writable_primary()
                && !self.cfg.noop_interval.is_zero()
                && now.duration_since(node.last_write_at) >= self.cfg.noop_interval
            {
                self.write(s, n, &OpSpec::noop("periodic noop"), now);
                changed = true;
            }
        }
        changed
    }

    /// The commit rule of protocol version 1, per member.
    ///
    /// A primary (out of drain mode) moves its commit point to the newest entry that
    /// `writeMajorityCount` data-bearing voters hold, but never to an optime before the first
    /// entry of its own term (TopologyCoordinator::updateLastCommittedOpTimeAndWallTime and
    /// advanceLastCommittedOpTimeAndWallTime): entries of older terms commit only when an
    /// entry of the current term does. Non-voters' and arbiters' copies never count.
    ///
    /// Secondaries learn their sync source's commit point (capped at their own newest entry
    /// when its term differs: same branch guaranteed) and the primary's through heartbeats
    /// (ignored when its term differs from their newest entry's), both as they were
    /// `commit_point_delay` ago. Arbiters take the heartbeat value as is.
    ///
    /// The set's ground truth follows the primaries: an entry enters `committed` when a
    /// primary's commit point passes it.
    fn advance_commit(&mut self, s: usize, now: Instant) -> bool {
        let mut changed = false;
        let write_majority = self.sets[s].majorities().write_majority;
        for p in 0..self.sets[s].nodes.len() {
            let target = {
                let set = &self.sets[s];
                let primary = &set.nodes[p];
                if !primary.alive
                    || primary.removed
                    || primary.state != MemberState::Primary
                    || primary.draining
                {
                    continue;
                }
                let Some(floor) = primary.first_optime_of_term else {
                    continue;
                };
                let start = match &primary.commit_point {
                    Some(c) => match primary.oplog.position_of(&c.id) {
                        Some(i) => i + 1,
                        None => primary.oplog.index_after(c.id.ts),
                    },
                    None => 0,
                };
                let mut newest = None;
                for i in (start..primary.oplog.len()).rev() {
                    if let Some(e) = primary.oplog.get(i) {
                        if op_key(&e.id) < floor {
                            break;
                        }
                        if set.voting_holders_in_term(&e.id, primary.term) >= write_majority {
                            newest = Some(e.clone());
                            break;
                        }
                    }
                }
                newest
            };
            if let Some(e) = target {
                self.set_node_commit_point(s, p, e.clone(), now);
                self.advance_truth(s, p, &e);
                changed = true;
            }
        }
        // Secondaries and arbiters learn it.
        let cutoff = now.checked_sub(self.cfg.commit_point_delay);
        let primary = self.sets[s].sync_source();
        for i in 0..self.sets[s].nodes.len() {
            let (learn_from_source, is_arbiter) = {
                let n = &self.sets[s].nodes[i];
                if !n.reachable() || n.state == MemberState::Primary {
                    continue;
                }
                (n.sync_source, n.member.arbiter_only)
            };
            let mut candidates = Vec::new();
            if let Some(src) = learn_from_source.filter(|_| !is_arbiter) {
                if self.sets[s].nodes[src].reachable() {
                    if let Some(c) = commit_point_at(&self.sets[s].nodes[src], cutoff) {
                        candidates.push((c, true));
                    }
                }
            }
            if let Some(p) = primary.filter(|p| *p != i) {
                if let Some(c) = commit_point_at(&self.sets[s].nodes[p], cutoff) {
                    candidates.push((c, false));
                }
            }
            for (c, from_sync_source) in candidates {
                let accepted = {
                    let n = &self.sets[s].nodes[i];
                    let mine = n.commit_point.as_ref().map(|m| op_key(&m.id));
                    let c = if is_arbiter {
                        Some(c)
                    } else {
                        match n.oplog.last() {
                            None => None,
                            Some(last) if last.id.t == c.id.t => Some(c),
                            Some(last) if from_sync_source => {
                                Some(if op_key(&last.id) < op_key(&c.id) {
                                    last.clone()
                                } else {
                                    c
                                })
                            }
                            Some(_) => None,
                        }
                    };
                    c.filter(|c| mine.is_none_or(|m| op_key(&c.id) > m))
                };
                if let Some(c) = accepted {
                    self.set_node_commit_point(s, i, c, now);
                    changed = true;
                }
            }
        }
        // Forget history nobody can ask for any more.
        if let Some(cutoff) = cutoff {
            for n in &mut self.sets[s].nodes {
                while n.commit_history.len() >= 2 && n.commit_history[1].0 <= cutoff {
                    n.commit_history.pop_front();
                }
            }
        }
        changed
    }

    fn set_node_commit_point(&mut self, s: usize, n: usize, e: Arc<Entry>, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        node.commit_point = Some(e.clone());
        node.commit_history.push_back((now, e));
    }

    /// Moves the ground truth to `e` (committed by primary `p`): the entries of `p`'s oplog
    /// between the previous truth and `e` become committed.
    fn advance_truth(&mut self, s: usize, p: usize, e: &Arc<Entry>) {
        let set = &self.sets[s];
        if set
            .commit_point
            .as_ref()
            .is_some_and(|c| op_key(&c.id) >= op_key(&e.id))
        {
            return;
        }
        let primary = &set.nodes[p];
        let start = match &set.commit_point {
            Some(c) => match primary.oplog.position_of(&c.id) {
                Some(i) => i + 1,
                None => primary.oplog.index_after(c.id.ts),
            },
            None => 0,
        };
        let Some(end) = primary.oplog.position_of(&e.id) else {
            return;
        };
        let newly: Vec<Arc<Entry>> = (start..=end)
            .filter_map(|i| primary.oplog.get(i).cloned())
            .collect();
        let set = &mut self.sets[s];
        set.commit_point = Some(e.clone());
        if !set.rolled_back.is_empty() {
            set.rolled_back
                .retain(|r| !newly.iter().any(|c| c.id == r.id));
        }
        set.committed.extend(newly);
    }

    /// Kills a process: cursors are lost, a primary stops being primary.
    pub fn kill(&mut self, s: usize, n: usize, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        node.alive = false;
        node.cursors.clear();
        node.dead_cursors.clear();
        node.epoch += 1;
        if node.state == MemberState::Primary {
            self.step_down_node(s, n, now);
        }
    }

    /// Restarts a killed process as a secondary with its data and oplog.
    pub fn restart(&mut self, s: usize, n: usize, now: Instant) {
        let node = &mut self.sets[s].nodes[n];
        node.alive = true;
        node.state = if node.member.arbiter_only {
            MemberState::Arbiter
        } else {
            MemberState::Secondary
        };
        node.last_write_at = now;
    }
}

/// The newest commit point `n` had at `cutoff` (what others can have learned by now).
fn commit_point_at(n: &NodeState, cutoff: Option<Instant>) -> Option<Arc<Entry>> {
    let cutoff = cutoff?;
    n.commit_history
        .iter()
        .rev()
        .find(|(at, _)| *at <= cutoff)
        .map(|(_, e)| e.clone())
}

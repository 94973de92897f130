//! Membership: which members are read, who votes and the quorum.
//!
//! Until a member reports the replica set's configuration, the member list (from
//! `[[shards]]` or discovery) is read, every member a voter, with the quorum resolved from
//! the list. Once one does, the newest configuration (config term, then version:
//! [`ReplicaSetConfig::newer_than`]) decides:
//!
//! * every data-bearing member in it is read, hidden and delayed ones included;
//! * a configured member is matched to a tailed address by what the member calls itself
//!   (hello `me`), preferring a listed address, so one member is never read twice under
//!   two names; a listed address that has not answered yet is kept (it reports nothing
//!   before it answers, so keeping it costs nothing and it may be another name of a
//!   configured member);
//! * members that left the configuration stop being read;
//! * only voters count, and the quorum is `writeMajorityCount` unless `[[shards]] quorum`
//!   says otherwise (a lower one is noted once: with `release = "quorum"` it can emit a
//!   write MongoDB later rolls back).

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;

use quorumtail_merge::NodeId;
use quorumtail_tailer::{ConfigSource, ReplicaSetConfig};

use super::{Note, Now, ShardCore, Step};
use crate::pipeline::{ShardError, ShardSpec};

/// A member the shard should read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The address to read it at.
    pub addr: String,
    /// Its reports count towards the quorum.
    pub voter: bool,
    /// Hidden in the replica set configuration (for status).
    pub hidden: bool,
}

/// The quorum of a member list.
pub(super) fn resolve(spec: &ShardSpec) -> Result<usize, ShardError> {
    quorumtail_merge::resolve_quorum(spec.members.len(), spec.arbiters, spec.quorum)
        .map(|q| q.quorum)
        .map_err(|e| ShardError::Quorum {
            shard: spec.name.clone(),
            detail: e.to_string(),
        })
}

impl<P: Clone> ShardCore<P> {
    /// The member list changed (discovery or a reload).
    pub(super) fn members_changed(&mut self, now: Now, new_spec: ShardSpec) -> Step {
        if self.live.is_some() {
            // The replica set's own configuration decides the members; the new list only
            // changes the seeds and an explicit quorum.
            self.spec = new_spec;
            self.reconcile(now)?;
            self.release()?;
            self.backpressure();
            return Ok(());
        }
        let new_q = resolve(&new_spec)?;
        let desired: Vec<Desired> = new_spec
            .members
            .iter()
            .map(|a| Desired {
                addr: a.clone(),
                voter: true,
                hidden: false,
            })
            .collect();
        self.spec = new_spec;
        self.apply_membership(now, desired, new_q)?;
        self.release()?;
        self.backpressure();
        Ok(())
    }

    /// A member reported the replica set's configuration: the newest one is adopted.
    pub(super) fn on_config(&mut self, now: Now, node: NodeId, c: ReplicaSetConfig) -> Step {
        if let Some(expected) = &self.spec.replica_set {
            if &c.set != expected {
                let n = Note::WrongReplicaSet {
                    set: c.set.clone(),
                    expected: expected.clone(),
                };
                self.note(n);
                return Ok(());
            }
        }
        if let Some(m) = self.members.get_mut(&node) {
            if c.me.is_some() {
                m.me.clone_from(&c.me);
                m.info.me.clone_from(&c.me);
            }
        }
        if self.live.as_ref().is_none_or(|l| c.newer_than(l)) {
            let (voters, non_voters, arbiters) = c.voting();
            self.note(Note::Configuration {
                version: c.version,
                term: c.term,
                voters,
                non_voters,
                arbiters,
                hidden: c.members.iter().filter(|m| m.hidden).count(),
                write_majority: c.write_majority(),
            });
            self.live = Some(c);
        }
        self.reconcile(now)
    }

    /// Brings the tailed members, their votes and the quorum in line with the replica
    /// set's configuration (see the module docs).
    pub(super) fn reconcile(&mut self, now: Now) -> Step {
        let Some(live) = self.live.clone() else {
            return Ok(());
        };
        let seeds = &self.spec.members;
        let mut desired: Vec<Desired> = Vec::new();
        let mut chosen_ids = HashSet::new();
        for m in live.data_bearing() {
            let answered = self
                .members
                .iter()
                .filter(|(_, x)| x.me.as_deref() == Some(m.host.as_str()))
                .min_by_key(|(id, x)| (!seeds.contains(&x.addr), **id))
                .map(|(id, _)| *id);
            let chosen = answered.or_else(|| {
                self.members
                    .iter()
                    .find(|(_, x)| x.me.is_none() && x.addr == m.host)
                    .map(|(id, _)| *id)
            });
            let addr = match chosen {
                Some(id) => {
                    chosen_ids.insert(id);
                    self.members[&id].addr.clone()
                }
                None => m.host.clone(),
            };
            if !desired.iter().any(|d| d.addr == addr) {
                desired.push(Desired {
                    addr,
                    voter: m.voter,
                    hidden: m.hidden,
                });
            }
        }
        // Listed members that have not answered yet may be other names of configured
        // members: they stay until they say who they are (they report nothing before).
        for (id, x) in &self.members {
            if x.me.is_none()
                && !chosen_ids.contains(id)
                && !desired.iter().any(|d| d.addr == x.addr)
            {
                desired.push(Desired {
                    addr: x.addr.clone(),
                    voter: true,
                    hidden: false,
                });
            }
        }
        let write_majority = live.write_majority();
        let quorum = match self.spec.quorum {
            Some(q) => {
                if q < write_majority && !self.noted_low_quorum {
                    self.noted_low_quorum = true;
                    self.note(Note::LowQuorum {
                        quorum: q,
                        write_majority,
                    });
                }
                q
            }
            None => write_majority,
        };
        let missing: Vec<String> = desired
            .iter()
            .filter(|d| !self.members.values().any(|m| m.addr == d.addr))
            .map(|d| d.addr.clone())
            .collect();
        if !missing.is_empty() {
            let listed = self.spec.listed;
            self.note(Note::UnlistedMembers {
                members: missing,
                listed,
            });
        }
        self.stats.set_quorum_source(match live.source {
            ConfigSource::GetConfig => format!(
                "replica set config v{} term {}{}",
                live.version,
                live.term,
                if self.spec.quorum.is_some() {
                    ", explicit quorum"
                } else {
                    ""
                }
            ),
            ConfigSource::GetStatus => {
                "replica set status (no replSetGetConfig privilege: votes unknown)".into()
            }
        });
        self.stats.arbiters.store(live.voting().2 as u64, Relaxed);
        self.apply_membership(now, desired, quorum)
    }

    /// Starts and stops members so that exactly `desired` is read, sets who votes and the
    /// quorum.
    pub(super) fn apply_membership(
        &mut self,
        now: Now,
        desired: Vec<Desired>,
        quorum: usize,
    ) -> Step {
        let before: Vec<(String, bool)> = self
            .members
            .values()
            .map(|m| (m.addr.clone(), m.voter))
            .collect();
        let removed: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| !desired.iter().any(|d| d.addr == m.addr))
            .map(|(id, _)| *id)
            .collect();
        for id in removed {
            if let Some(m) = self.members.remove(&id) {
                self.note(Note::MemberRemoved(m.addr.clone()));
                self.stats.remove_node(&m.addr);
            }
            self.out.push(super::Action::Stop(id));
            if let Some(e) = self.engine.as_mut() {
                e.remove_node(id);
            }
        }
        for d in &desired {
            if !self.members.values().any(|m| m.addr == d.addr) {
                let id = match self.engine.as_mut() {
                    Some(e) => e.add_node().map_err(|e| self.quorum_err(e))?,
                    None => (0..64u8)
                        .map(NodeId)
                        .find(|i| !self.members.contains_key(i))
                        .ok_or_else(|| self.quorum_err("too many members"))?,
                };
                self.note(Note::MemberAdded {
                    addr: d.addr.clone(),
                    voter: d.voter,
                    hidden: d.hidden,
                });
                self.add_member(&d.addr, id);
            }
            let id = self
                .members
                .iter()
                .find(|(_, m)| m.addr == d.addr)
                .map(|(id, _)| *id);
            if let Some(id) = id {
                if let Some(m) = self.members.get_mut(&id) {
                    m.voter = d.voter;
                    m.info.voter = d.voter;
                    m.info.hidden = d.hidden;
                    self.stats.set_node(&m.addr, m.info.clone());
                }
                if let Some(e) = self.engine.as_mut() {
                    e.set_voter(id, d.voter);
                }
            }
        }
        let voters = self.members.values().filter(|m| m.voter).count();
        let non_voters = self.members.len() - voters;
        quorumtail_merge::resolve_voting_quorum(
            quorumtail_merge::Voting {
                data_bearing_voters: voters,
                non_voters,
                arbiters: 0,
            },
            Some(quorum),
        )
        .map_err(|e| self.quorum_err(e))?;
        if let Some(e) = self.engine.as_mut() {
            e.set_quorum(quorum).map_err(|e| self.quorum_err(e))?;
        }
        let after: Vec<(String, bool)> = self
            .members
            .values()
            .map(|m| (m.addr.clone(), m.voter))
            .collect();
        if before != after || self.quorum != quorum {
            let quorum_before = self.quorum;
            self.note(Note::MembershipChanged {
                before,
                after,
                quorum_before,
                quorum_after: quorum,
            });
        }
        self.quorum = quorum;
        self.stats.quorum.store(quorum as u64, Relaxed);
        self.check_whole(now);
        Ok(())
    }
}

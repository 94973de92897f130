//! What a member says about its replica set: its configuration (who votes, who is hidden)
//! and its view of the commit point. Pure parsing of server replies, unit-tested here.
//!
//! * `replSetGetConfig` (the `clusterMonitor` role has it) gives every member with
//!   `votes`, `hidden`, `arbiterOnly`, `priority` and `secondaryDelaySecs`, the config
//!   `version` and `term`. Hidden and delayed members are in it although hello and
//!   `config.shards` never list them.
//! * `replSetGetStatus` is the fallback when the user may not run `replSetGetConfig`: it
//!   lists every member by name and gives `writeMajorityCount`, but not who votes.
//! * hello's `lastWrite` holds `opTime` (the member's newest entry) and `majorityOpTime`
//!   (its view of the commit point); `setVersion` tells when the configuration changed.

use bson::{Bson, Document};
use quorumtail_oplog::{EntryId, Timestamp};

/// One member as the replica set configuration describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberConfig {
    /// `host:port` as configured (what the member calls itself in hello `me`).
    pub host: String,
    /// `votes: 1`.
    pub voter: bool,
    /// An arbiter: votes, holds no oplog.
    pub arbiter: bool,
    /// Hidden from hello and `config.shards`.
    pub hidden: bool,
    /// Election priority (0: never primary).
    pub priority: f64,
    /// A delayed member's delay (`secondaryDelaySecs`, `slaveDelay` before 5.0).
    pub delay_secs: i64,
}

/// Where a [`ReplicaSetConfig`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// `replSetGetConfig`: every member's votes are known.
    GetConfig,
    /// `replSetGetStatus` (no privilege for `replSetGetConfig`): members and the write
    /// majority are known, not who votes.
    GetStatus,
}

/// A replica set's membership as one member reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaSetConfig {
    /// Replica set name.
    pub set: String,
    /// Config version (hello `setVersion`).
    pub version: i64,
    /// Config term (4.4+), -1 when absent.
    pub term: i64,
    /// Members, arbiters included.
    pub members: Vec<MemberConfig>,
    /// `writeMajorityCount` when the source states it (replSetGetStatus).
    pub write_majority: Option<usize>,
    /// How it was read.
    pub source: ConfigSource,
    /// The member that answered, as it calls itself (hello `me`).
    pub me: Option<String>,
}

impl ReplicaSetConfig {
    /// Members that hold an oplog.
    pub fn data_bearing(&self) -> impl Iterator<Item = &MemberConfig> {
        self.members.iter().filter(|m| !m.arbiter)
    }

    /// The voting make-up. From `replSetGetStatus` every data-bearing member is taken as a
    /// voter (who votes is unknown there).
    pub fn voting(&self) -> (usize, usize, usize) {
        let arbiters = self.members.iter().filter(|m| m.arbiter).count();
        let voters = self.data_bearing().filter(|m| m.voter).count();
        let non_voters = self.data_bearing().count() - voters;
        (voters, non_voters, arbiters)
    }

    /// MongoDB's `writeMajorityCount`: a majority of voters (arbiters included), capped at
    /// the voting data-bearing members.
    pub fn write_majority(&self) -> usize {
        if let Some(w) = self.write_majority {
            return w;
        }
        let (voters, _, arbiters) = self.voting();
        ((voters + arbiters) / 2 + 1).min(voters)
    }

    /// Orders two readings of a set's configuration as `ConfigVersionAndTerm` does in the
    /// server (repl_set_config.h): term first, then version; when either term is
    /// uninitialized (-1, a force reconfig or a pre-4.4 server) by version alone.
    pub fn newer_than(&self, other: &ReplicaSetConfig) -> bool {
        if self.term == -1 || other.term == -1 {
            return self.version > other.version;
        }
        (self.term, self.version) > (other.term, other.version)
    }
}

/// A member's view of the commit point with its newest entry, from one hello reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitReading {
    /// `lastWrite.majorityOpTime`.
    pub committed: EntryId,
    /// `lastWrite.opTime`.
    pub last_applied: EntryId,
}

fn optime(d: &Document) -> Option<EntryId> {
    let ts = d.get_timestamp("ts").ok()?;
    let t = match d.get("t") {
        Some(Bson::Int64(t)) => *t,
        Some(Bson::Int32(t)) => i64::from(*t),
        _ => return None,
    };
    Some(EntryId::new(Timestamp::new(ts.time, ts.increment), t))
}

fn number(v: Option<&Bson>) -> Option<f64> {
    match v? {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        Bson::Boolean(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The commit point reading in a hello reply; `None` when the member does not state one
/// (not a replica-set member, or no majority-committed entry yet, or a term-less oplog).
pub fn commit_reading(hello: &Document) -> Option<CommitReading> {
    let lw = hello.get_document("lastWrite").ok()?;
    let committed = optime(lw.get_document("majorityOpTime").ok()?)?;
    let last_applied = optime(lw.get_document("opTime").ok()?)?;
    // A zero commit point (nothing committed yet) says nothing.
    if committed.ts == Timestamp::ZERO || committed.term.is_some_and(|t| t < 0) {
        return None;
    }
    Some(CommitReading {
        committed,
        last_applied,
    })
}

/// hello's `setVersion`, if present.
pub fn set_version(hello: &Document) -> Option<i64> {
    number(hello.get("setVersion")).map(|v| v as i64)
}

/// Parses a `replSetGetConfig` reply.
///
/// # Errors
/// A description of what is missing or malformed.
pub fn parse_get_config(reply: &Document) -> Result<ReplicaSetConfig, String> {
    let cfg = reply
        .get_document("config")
        .map_err(|_| "replSetGetConfig reply has no `config` document".to_owned())?;
    let set = cfg
        .get_str("_id")
        .map_err(|_| "replica set config has no `_id` (set name)".to_owned())?
        .to_owned();
    let version =
        number(cfg.get("version")).ok_or("replica set config has no numeric `version`")? as i64;
    let term = number(cfg.get("term")).map(|t| t as i64).unwrap_or(-1);
    let members = cfg
        .get_array("members")
        .map_err(|_| "replica set config has no `members` array".to_owned())?;
    let mut out = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        let Bson::Document(m) = m else {
            return Err(format!("replica set config member {i} is not a document"));
        };
        let host = m
            .get_str("host")
            .map_err(|_| format!("replica set config member {i} has no `host`"))?
            .to_owned();
        let arbiter = m.get_bool("arbiterOnly").unwrap_or(false);
        out.push(MemberConfig {
            host,
            // `votes` defaults to 1 (member_config.idl).
            voter: number(m.get("votes")).unwrap_or(1.0) > 0.0,
            arbiter,
            hidden: m.get_bool("hidden").unwrap_or(false),
            priority: number(m.get("priority")).unwrap_or(if arbiter { 0.0 } else { 1.0 }),
            delay_secs: number(m.get("secondaryDelaySecs"))
                .or_else(|| number(m.get("slaveDelay")))
                .unwrap_or(0.0) as i64,
        });
    }
    if out.is_empty() {
        return Err("replica set config lists no members".into());
    }
    Ok(ReplicaSetConfig {
        set,
        version,
        term,
        members: out,
        write_majority: None,
        source: ConfigSource::GetConfig,
        me: None,
    })
}

/// Parses a `replSetGetStatus` reply (the fallback): members by name, arbiters by state
/// (7), every data-bearing member taken as a voter, and the stated `writeMajorityCount`.
/// `version` comes from hello's `setVersion`.
///
/// # Errors
/// A description of what is missing or malformed.
pub fn parse_get_status(reply: &Document, version: i64) -> Result<ReplicaSetConfig, String> {
    let set = reply
        .get_str("set")
        .map_err(|_| "replSetGetStatus reply has no `set`".to_owned())?
        .to_owned();
    let members = reply
        .get_array("members")
        .map_err(|_| "replSetGetStatus reply has no `members` array".to_owned())?;
    let mut out = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        let Bson::Document(m) = m else {
            return Err(format!("replSetGetStatus member {i} is not a document"));
        };
        let host = m
            .get_str("name")
            .map_err(|_| format!("replSetGetStatus member {i} has no `name`"))?
            .to_owned();
        let arbiter = number(m.get("state")) == Some(7.0);
        out.push(MemberConfig {
            host,
            voter: true,
            arbiter,
            hidden: false,
            priority: 1.0,
            delay_secs: 0,
        });
    }
    let term = number(reply.get("term")).map(|t| t as i64).unwrap_or(-1);
    Ok(ReplicaSetConfig {
        set,
        version,
        term,
        members: out,
        write_majority: number(reply.get("writeMajorityCount")).map(|w| w as usize),
        source: ConfigSource::GetStatus,
        me: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn config_with_hidden_non_voting_arbiter_and_delayed_members() {
        let reply = doc! {
            "config": {
                "_id": "shard01", "version": 7, "term": Bson::Int64(3), "protocolVersion": Bson::Int64(1),
                "members": [
                    {"_id": 0, "host": "a:27018", "arbiterOnly": false, "hidden": false, "priority": 1.0, "votes": 1, "secondaryDelaySecs": Bson::Int64(0)},
                    {"_id": 1, "host": "b:27018", "priority": 1.0, "votes": 1},
                    {"_id": 2, "host": "c:27018", "priority": 0.0, "votes": 0},
                    {"_id": 3, "host": "d:27018", "hidden": true, "priority": 0.0, "votes": 1},
                    {"_id": 4, "host": "e:27018", "hidden": true, "priority": 0.0, "votes": 1, "secondaryDelaySecs": Bson::Int64(3600)},
                    {"_id": 5, "host": "f:27018", "arbiterOnly": true, "priority": 0.0, "votes": 1},
                ],
            },
            "ok": 1.0,
        };
        let c = parse_get_config(&reply).unwrap();
        assert_eq!((c.set.as_str(), c.version, c.term), ("shard01", 7, 3));
        assert_eq!(c.data_bearing().count(), 5);
        // voters: a, b, d, e (4 data-bearing) + f (arbiter) = 5 → majority 3, cap 4.
        assert_eq!(c.voting(), (4, 1, 1));
        assert_eq!(c.write_majority(), 3);
        assert!(c.members[3].hidden);
        assert_eq!(c.members[4].delay_secs, 3600);
        assert!(!c.members[2].voter);
        let newer = ReplicaSetConfig {
            version: 8,
            ..c.clone()
        };
        assert!(newer.newer_than(&c));
        let later_term = ReplicaSetConfig {
            term: 4,
            version: 1,
            ..c.clone()
        };
        assert!(later_term.newer_than(&newer));
        // A force reconfig (term -1) wins by version alone.
        let forced = ReplicaSetConfig {
            term: -1,
            version: 100,
            ..c.clone()
        };
        assert!(forced.newer_than(&later_term));
        assert!(!later_term.newer_than(&forced));
    }

    #[test]
    fn write_majority_is_capped_at_data_bearing_voters() {
        let reply = doc! { "config": { "_id": "rs", "version": 1, "members": [
            {"_id": 0, "host": "a:1"},
            {"_id": 1, "host": "b:1", "arbiterOnly": true},
            {"_id": 2, "host": "c:1", "arbiterOnly": true},
        ]}};
        let c = parse_get_config(&reply).unwrap();
        assert_eq!(c.voting(), (1, 0, 2));
        assert_eq!(c.write_majority(), 1);
        assert_eq!(c.term, -1);
    }

    #[test]
    fn malformed_configs_say_what_is_wrong() {
        assert!(parse_get_config(&doc! {"ok": 1})
            .unwrap_err()
            .contains("no `config`"));
        assert!(
            parse_get_config(&doc! {"config": {"_id": "rs", "version": 1, "members": []}})
                .unwrap_err()
                .contains("no members")
        );
        assert!(parse_get_config(
            &doc! {"config": {"_id": "rs", "version": 1, "members": [{"_id": 0}]}}
        )
        .unwrap_err()
        .contains("no `host`"));
    }

    #[test]
    fn status_fallback_takes_the_stated_write_majority() {
        let reply = doc! {
            "set": "shard01", "term": Bson::Int64(2), "writeMajorityCount": 3, "majorityVoteCount": 3,
            "members": [
                {"_id": 0, "name": "a:1", "state": 1},
                {"_id": 1, "name": "b:1", "state": 2},
                {"_id": 2, "name": "c:1", "state": 2},
                {"_id": 3, "name": "d:1", "state": 2},
                {"_id": 4, "name": "e:1", "state": 7},
            ],
            "ok": 1.0,
        };
        let c = parse_get_status(&reply, 5).unwrap();
        assert_eq!(c.source, ConfigSource::GetStatus);
        assert_eq!(c.data_bearing().count(), 4);
        assert_eq!(c.write_majority(), 3);
        assert_eq!(c.version, 5);
    }

    #[test]
    fn commit_reading_from_hello() {
        let ts = |s| bson::Timestamp {
            time: s,
            increment: 1,
        };
        let hello = doc! {
            "setVersion": 4,
            "lastWrite": {
                "opTime": {"ts": ts(20), "t": Bson::Int64(3)},
                "majorityOpTime": {"ts": ts(18), "t": Bson::Int64(3)},
            },
        };
        let r = commit_reading(&hello).unwrap();
        assert_eq!(r.committed, EntryId::new(Timestamp::new(18, 1), 3));
        assert_eq!(r.last_applied, EntryId::new(Timestamp::new(20, 1), 3));
        assert_eq!(set_version(&hello), Some(4));
        // Nothing committed yet: no reading.
        let empty = doc! { "lastWrite": {
            "opTime": {"ts": ts(20), "t": Bson::Int64(3)},
            "majorityOpTime": {"ts": bson::Timestamp { time: 0, increment: 0 }, "t": Bson::Int64(-1)},
        }};
        assert_eq!(commit_reading(&empty), None);
        assert_eq!(commit_reading(&doc! {"ismaster": true}), None);
    }
}

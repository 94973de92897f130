//! Replica-set member configuration: votes, priority, hidden, arbiters, delayed members,
//! validated the way mongod validates a config (looked up in mongodb/mongo
//! `src/mongo/db/repl/member_config.cpp`, `repl_set_config.cpp` and
//! `repl_set_config_checks.cpp`).
//!
//! ```text
//!   MemberSpec (per member) --validate_member--> --validate_set--> SetState config
//!        ^                                                          |
//!        |  "voter,hidden,arbiter" (CLI)     replSetReconfig / mongosimControl reconfig
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bson::{doc, Bson, Document};

use crate::error::CmdError;
use crate::version::ServerVersion;

/// At most this many voting members (`ReplSetConfig::kMaxVotingMembers`).
pub const MAX_VOTING_MEMBERS: usize = 7;
/// At most this many members (`ReplSetConfig::kMaxMembers`).
pub const MAX_MEMBERS: usize = 50;

/// One member of a replica set configuration, as in `rs.conf().members[]`.
///
/// The defaults are mongod's: a voter with priority 1, visible, data-bearing, not delayed.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSpec {
    /// `host`: set for members that exist; `None` asks the simulator to start a new process
    /// (on the next free port) when the spec is used in a reconfig.
    pub host: Option<SocketAddr>,
    /// `_id`; `None` lets the simulator number it (its index at startup, max + 1 when added).
    pub id: Option<i32>,
    /// `votes`: 0 or 1. Only voters elect and only data-bearing voters make a write durable.
    pub votes: u32,
    /// `priority`: 0 never stands for election (hidden, delayed and non-voting members must
    /// have 0). Higher wins ties between equally up-to-date candidates.
    pub priority: f64,
    /// `hidden`: absent from hello's host lists and from the shard's connection string; it
    /// still replicates and, if it votes, counts for write majority.
    pub hidden: bool,
    /// `arbiterOnly`: a process that votes but holds no oplog and no data, never primary.
    pub arbiter_only: bool,
    /// `secondaryDelaySecs`: applies entries this long after the primary wrote them.
    pub secondary_delay_secs: u64,
}

impl Default for MemberSpec {
    fn default() -> Self {
        MemberSpec::voter()
    }
}

impl MemberSpec {
    /// A plain voting, electable member (`{votes: 1, priority: 1}`).
    pub fn voter() -> MemberSpec {
        MemberSpec {
            host: None,
            id: None,
            votes: 1,
            priority: 1.0,
            hidden: false,
            arbiter_only: false,
            secondary_delay_secs: 0,
        }
    }

    /// A visible voter that never stands (`{priority: 0}`): hello lists it in `passives`.
    pub fn passive() -> MemberSpec {
        MemberSpec {
            priority: 0.0,
            ..MemberSpec::voter()
        }
    }

    /// A hidden voter (`{hidden: true, priority: 0}`).
    pub fn hidden() -> MemberSpec {
        MemberSpec {
            hidden: true,
            ..MemberSpec::passive()
        }
    }

    /// A visible non-voting member (`{votes: 0, priority: 0}`).
    pub fn non_voter() -> MemberSpec {
        MemberSpec {
            votes: 0,
            ..MemberSpec::passive()
        }
    }

    /// An arbiter (`{arbiterOnly: true}`; mongod turns its default priority 1 into 0).
    pub fn arbiter() -> MemberSpec {
        MemberSpec {
            arbiter_only: true,
            ..MemberSpec::passive()
        }
    }

    /// A hidden, delayed voter (`{hidden: true, priority: 0, secondaryDelaySecs: secs}`).
    pub fn delayed(secs: u64) -> MemberSpec {
        MemberSpec {
            secondary_delay_secs: secs,
            ..MemberSpec::hidden()
        }
    }

    /// With this host.
    pub fn at(mut self, host: SocketAddr) -> MemberSpec {
        self.host = Some(host);
        self
    }

    /// Whether it votes (`MemberConfig::isVoter`).
    pub fn is_voter(&self) -> bool {
        self.votes > 0
    }

    /// Whether it may stand for election (`MemberConfig::isElectable`: not an arbiter,
    /// priority > 0).
    pub fn is_electable(&self) -> bool {
        !self.arbiter_only && self.priority > 0.0
    }

    /// Whether it holds an oplog and data.
    pub fn is_data_bearing(&self) -> bool {
        !self.arbiter_only
    }

    /// Whether hello lists it at all (`fillHelloForReplSet` skips hidden and delayed ones).
    pub fn listed_in_hello(&self) -> bool {
        !self.hidden && self.secondary_delay_secs == 0
    }

    /// `rs.conf().members[]` as `MemberConfig::toBSON` writes it: `_id, host, arbiterOnly,
    /// buildIndexes, hidden, priority, tags, secondaryDelaySecs, votes`.
    pub fn to_config_doc(&self, id: i32, host: SocketAddr) -> Document {
        doc! {
            "_id": id,
            "host": host.to_string(),
            "arbiterOnly": self.arbiter_only,
            "buildIndexes": true,
            "hidden": self.hidden,
            "priority": self.priority,
            "tags": {},
            "secondaryDelaySecs": i64::try_from(self.secondary_delay_secs).unwrap_or(i64::MAX),
            "votes": i32::from(self.votes > 0),
        }
    }

    /// Parses one `members[]` document of `replSetReconfig` (or of the control API, where
    /// `host` and `_id` may be omitted for a new member). `slaveDelay` is accepted as the
    /// pre-5.0 name of `secondaryDelaySecs`.
    ///
    /// # Errors
    /// BadValue / TypeMismatch naming the field, as mongod's IDL parser does.
    pub fn from_config_doc(d: &Document, host_required: bool) -> Result<MemberSpec, CmdError> {
        let mut m = MemberSpec::voter();
        let mut priority_given = false;
        for (k, v) in d {
            match k.as_str() {
                "_id" => {
                    let id = number(v).ok_or_else(|| type_err("_id", "int"))?;
                    m.id = Some(
                        i32::try_from(id).map_err(|_| bad(format!("_id {id} is out of range")))?,
                    );
                }
                "host" => {
                    let s = v.as_str().ok_or_else(|| type_err("host", "string"))?;
                    m.host = Some(parse_host(s)?);
                }
                "votes" => {
                    let n = number(v).ok_or_else(|| type_err("votes", "int"))?;
                    if !(0..=1).contains(&n) {
                        return Err(bad(format!("votes field value is {n} but must be 0 or 1")));
                    }
                    m.votes = n as u32;
                }
                "priority" => {
                    let p = match v {
                        Bson::Double(p) => *p,
                        Bson::Int32(p) => f64::from(*p),
                        Bson::Int64(p) => *p as f64,
                        _ => return Err(type_err("priority", "double")),
                    };
                    if !(0.0..=1000.0).contains(&p) {
                        return Err(bad(format!(
                            "priority field value of {p} is out of range [0, 1000]"
                        )));
                    }
                    m.priority = p;
                    priority_given = true;
                }
                "hidden" => m.hidden = boolean(v).ok_or_else(|| type_err("hidden", "bool"))?,
                "arbiterOnly" => {
                    m.arbiter_only = boolean(v).ok_or_else(|| type_err("arbiterOnly", "bool"))?
                }
                "secondaryDelaySecs" | "slaveDelay" => {
                    let n = number(v).ok_or_else(|| type_err(k, "long"))?;
                    if n < 0 {
                        return Err(bad(format!("{k} field value of {n} is out of range")));
                    }
                    m.secondary_delay_secs = n as u64;
                }
                "buildIndexes" => {
                    if boolean(v) != Some(true) {
                        return Err(bad(
                            "buildIndexes: false is not simulated (mongosim members always build indexes)",
                        ));
                    }
                }
                "tags" => {
                    let t = v.as_document().ok_or_else(|| type_err("tags", "object"))?;
                    if !t.is_empty() {
                        return Err(bad("member tags are not simulated; pass tags: {}"));
                    }
                }
                // Fields mongod accepts that the simulation has no use for.
                "horizons" | "newlyAdded" => {}
                other => {
                    return Err(CmdError::new(
                        40415,
                        "Location40415",
                        format!("BSON field 'MemberConfig.{other}' is an unknown field."),
                    ))
                }
            }
        }
        // MemberConfig: an arbiter's default priority 1 becomes 0.
        if m.arbiter_only && !priority_given {
            m.priority = 0.0;
        }
        if host_required && m.host.is_none() {
            return Err(bad(
                "BSON field 'MemberConfig.host' is missing but a required field",
            ));
        }
        Ok(m)
    }
}

/// Shorthand kinds for the CLI and the control API: `voter`, `passive`, `hidden`,
/// `nonvoter`, `hidden-nonvoter`, `arbiter`, `delayed:SECS` (hidden, priority 0, voter).
impl FromStr for MemberSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<MemberSpec, String> {
        let s = s.trim();
        if let Some(secs) = s
            .strip_prefix("delayed:")
            .or_else(|| s.strip_prefix("delayed="))
        {
            let secs: u64 = secs
                .parse()
                .map_err(|_| format!("member kind {s:?}: the delay must be whole seconds"))?;
            return Ok(MemberSpec::delayed(secs));
        }
        match s {
            "voter" => Ok(MemberSpec::voter()),
            "passive" => Ok(MemberSpec::passive()),
            "hidden" => Ok(MemberSpec::hidden()),
            "nonvoter" | "non-voter" => Ok(MemberSpec::non_voter()),
            "hidden-nonvoter" => Ok(MemberSpec {
                hidden: true,
                ..MemberSpec::non_voter()
            }),
            "arbiter" => Ok(MemberSpec::arbiter()),
            other => Err(format!(
                "unknown member kind {other:?}: use voter, passive, hidden, nonvoter, \
                 hidden-nonvoter, arbiter or delayed:SECS"
            )),
        }
    }
}

impl fmt::Display for MemberSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.arbiter_only {
            "arbiter".to_owned()
        } else if self.secondary_delay_secs > 0 {
            format!("delayed:{}", self.secondary_delay_secs)
        } else {
            match (self.votes > 0, self.hidden, self.priority > 0.0) {
                (true, false, true) => "voter".to_owned(),
                (true, false, false) => "passive".to_owned(),
                (true, true, _) => "hidden".to_owned(),
                (false, false, _) => "nonvoter".to_owned(),
                (false, true, _) => "hidden-nonvoter".to_owned(),
            }
        };
        f.write_str(&kind)
    }
}

/// Parses a comma-separated list of member kinds (`"voter,voter,hidden,arbiter"`).
///
/// # Errors
/// The first unknown kind, named.
pub fn parse_member_list(s: &str) -> Result<Vec<MemberSpec>, String> {
    s.split(',')
        .filter(|k| !k.trim().is_empty())
        .map(MemberSpec::from_str)
        .collect()
}

fn number(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) if n.fract() == 0.0 => Some(*n as i64),
        _ => None,
    }
}

fn boolean(v: &Bson) -> Option<bool> {
    match v {
        Bson::Boolean(b) => Some(*b),
        other => number(other).map(|n| n != 0),
    }
}

fn bad(msg: impl Into<String>) -> CmdError {
    CmdError::new(2, "BadValue", msg)
}

fn invalid(msg: impl Into<String>) -> CmdError {
    CmdError::new(93, "InvalidReplicaSetConfig", msg)
}

fn type_err(field: &str, expected: &str) -> CmdError {
    CmdError::new(
        14,
        "TypeMismatch",
        format!("BSON field 'MemberConfig.{field}' is the wrong type, expected type '{expected}'"),
    )
}

/// `host:port`; `localhost` means 127.0.0.1 (every simulated process listens there).
///
/// # Errors
/// BadValue when it is not host:port on this machine's loopback.
pub fn parse_host(s: &str) -> Result<SocketAddr, CmdError> {
    let s = s.trim();
    let normalized = match s.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => s.to_owned(),
    };
    let addr: SocketAddr = normalized.parse().map_err(|_| {
        bad(format!(
            "host {s:?} is not 127.0.0.1:port (mongosim listens on loopback only)"
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(bad(format!(
            "host {s:?}: mongosim can only run members on 127.0.0.1"
        )));
    }
    Ok(addr)
}

/// The checks of `MemberConfig`'s constructor and `validateArbiterPriorities`.
///
/// # Errors
/// BadValue / InvalidReplicaSetConfig with mongod's message.
pub fn validate_member(m: &MemberSpec) -> Result<(), CmdError> {
    let who = m
        .host
        .map(|h| format!("member {h}: "))
        .unwrap_or_else(|| "member: ".to_owned());
    if m.votes > 1 {
        return Err(bad(format!(
            "{who}votes field value is {} but must be 0 or 1",
            m.votes
        )));
    }
    if m.arbiter_only {
        if !m.is_voter() {
            return Err(bad(format!("{who}Arbiter must vote (cannot have 0 votes)")));
        }
        if m.priority != 0.0 {
            return Err(invalid(format!(
                "{who}is an arbiter but has priority {}. Arbiter priority must be 0.",
                m.priority
            )));
        }
        if m.hidden || m.secondary_delay_secs > 0 {
            return Err(bad(format!(
                "{who}arbiters cannot be hidden or delayed in mongosim (they hold no data)"
            )));
        }
    }
    if m.priority != 0.0 {
        if !m.is_voter() {
            return Err(bad(format!(
                "{who}priority must be 0 when non-voting (votes:0)"
            )));
        }
        if m.secondary_delay_secs > 0 {
            return Err(bad(format!(
                "{who}priority must be 0 when secondaryDelaySecs is used"
            )));
        }
        if m.hidden {
            return Err(bad(format!("{who}priority must be 0 when hidden=true")));
        }
    }
    if m.priority.is_nan() || m.priority < 0.0 {
        return Err(bad(format!("{who}priority must be a number >= 0")));
    }
    Ok(())
}

/// The set-wide checks of `ReplSetConfig::_validate` (member count, voters, an electable
/// member, unique `_id`/host) plus the 5.3+ refusal of a second arbiter
/// (`allowMultipleArbiters` defaults to false; `jstests/replsets/disable_multiple_arbiters.js`)
/// and the config-server ban on arbiters and delayed members.
///
/// # Errors
/// BadValue / InvalidReplicaSetConfig naming what is wrong.
pub fn validate_set(
    members: &[MemberSpec],
    version: ServerVersion,
    config_server: bool,
) -> Result<(), CmdError> {
    if members.is_empty() || members.len() > MAX_MEMBERS {
        return Err(bad(format!(
            "Replica set configuration contains {} members, but must have at least 1 and no more than {MAX_MEMBERS}",
            members.len()
        )));
    }
    for m in members {
        validate_member(m)?;
    }
    let voters = members.iter().filter(|m| m.is_voter()).count();
    if voters == 0 || voters > MAX_VOTING_MEMBERS {
        return Err(bad(format!(
            "Replica set configuration contains {voters} voting members, but must be at least 1 and no more than {MAX_VOTING_MEMBERS}"
        )));
    }
    if !members.iter().any(MemberSpec::is_electable) {
        return Err(bad(
            "Replica set configuration must contain at least one non-arbiter member with priority > 0",
        ));
    }
    for (i, a) in members.iter().enumerate() {
        for (j, b) in members.iter().enumerate().skip(i + 1) {
            if a.id.is_some() && a.id == b.id {
                return Err(bad(format!(
                    "Found two member configurations with same _id field, members.{i}._id == members.{j}._id == {}",
                    a.id.unwrap_or_default()
                )));
            }
            if a.host.is_some() && a.host == b.host {
                return Err(bad(format!(
                    "Found two member configurations with same host field, members.{i}.host == members.{j}.host == {}",
                    a.host.map(|h| h.to_string()).unwrap_or_default()
                )));
            }
        }
    }
    let arbiters = members.iter().filter(|m| m.arbiter_only).count();
    if config_server && arbiters > 0 {
        return Err(bad(
            "Arbiters are not allowed in replica set configurations being used for config servers",
        ));
    }
    if config_server && members.iter().any(|m| m.secondary_delay_secs > 0) {
        return Err(bad(
            "Members in replica set configurations being used for config servers cannot have a non-zero secondaryDelaySecs",
        ));
    }
    if arbiters > 1 && version >= ServerVersion::V6_0 {
        return Err(invalid(format!(
            "Multiple arbiters are not allowed unless all nodes were started with --setParameter 'allowMultipleArbiters=true' (found {arbiters}; mongosim simulates the default)"
        )));
    }
    Ok(())
}

/// The majorities `ReplSetConfig::_calculateMajorities` derives from a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Majorities {
    /// Voting members (arbiters included): `votingMembersCount`.
    pub voters: usize,
    /// `voters / 2 + 1`: votes an election needs (`majorityVoteCount`).
    pub majority_vote_count: usize,
    /// Voters that hold data: `writableVotingMembersCount`.
    pub writable_voting_members: usize,
    /// `min(majority_vote_count, writable_voting_members)`: data-bearing voters that must
    /// hold an entry before it commits (`writeMajorityCount`).
    pub write_majority: usize,
}

impl Majorities {
    /// Computes them for these members.
    pub fn of<'a>(members: impl IntoIterator<Item = &'a MemberSpec>) -> Majorities {
        let (mut voters, mut arbiters) = (0, 0);
        for m in members {
            if m.is_voter() {
                voters += 1;
            }
            if m.arbiter_only {
                arbiters += 1;
            }
        }
        let majority_vote_count = voters / 2 + 1;
        let writable_voting_members = voters - arbiters;
        Majorities {
            voters,
            majority_vote_count,
            writable_voting_members,
            write_majority: majority_vote_count.min(writable_voting_members),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        let list = parse_member_list("voter, voter,hidden,nonvoter,arbiter,delayed:60").unwrap();
        let names: Vec<String> = list.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            names,
            [
                "voter",
                "voter",
                "hidden",
                "nonvoter",
                "arbiter",
                "delayed:60"
            ]
        );
        assert!(parse_member_list("voter,boss")
            .unwrap_err()
            .contains("boss"));
    }

    #[test]
    fn member_rules_match_mongod() {
        let mut m = MemberSpec::non_voter();
        m.priority = 1.0;
        assert!(validate_member(&m).unwrap_err().errmsg.contains("votes:0"));
        let mut m = MemberSpec::hidden();
        m.priority = 2.0;
        assert!(validate_member(&m)
            .unwrap_err()
            .errmsg
            .contains("hidden=true"));
        let mut m = MemberSpec::delayed(10);
        m.hidden = false;
        m.priority = 1.0;
        assert!(validate_member(&m)
            .unwrap_err()
            .errmsg
            .contains("secondaryDelaySecs"));
        let mut m = MemberSpec::arbiter();
        m.votes = 0;
        assert!(validate_member(&m)
            .unwrap_err()
            .errmsg
            .contains("Arbiter must vote"));
        let d = doc! {"_id": 3, "host": "127.0.0.1:1", "arbiterOnly": true};
        assert_eq!(MemberSpec::from_config_doc(&d, true).unwrap().priority, 0.0);
        let d = doc! {"_id": 3, "host": "127.0.0.1:1", "votes": 2};
        assert!(MemberSpec::from_config_doc(&d, true).is_err());
    }

    #[test]
    fn set_rules_match_mongod() {
        let eight = vec![MemberSpec::voter(); 8];
        assert!(validate_set(&eight, ServerVersion::V7_0, false)
            .unwrap_err()
            .errmsg
            .contains("no more than 7"));
        let none_electable = vec![MemberSpec::passive(), MemberSpec::hidden()];
        assert!(validate_set(&none_electable, ServerVersion::V7_0, false).is_err());
        let two_arbiters = vec![
            MemberSpec::voter(),
            MemberSpec::voter(),
            MemberSpec::arbiter(),
            MemberSpec::arbiter(),
        ];
        assert!(validate_set(&two_arbiters, ServerVersion::V7_0, false).is_err());
        assert!(validate_set(&two_arbiters, ServerVersion::V4_4, false).is_ok());
    }

    #[test]
    fn majorities_follow_repl_set_config() {
        // 3 visible + 2 hidden voters.
        let m = [
            MemberSpec::voter(),
            MemberSpec::voter(),
            MemberSpec::voter(),
            MemberSpec::hidden(),
            MemberSpec::hidden(),
        ];
        let maj = Majorities::of(&m);
        assert_eq!(
            (maj.voters, maj.majority_vote_count, maj.write_majority),
            (5, 3, 3)
        );
        // P-S-A: write majority capped at the data-bearing voters.
        let psa = [
            MemberSpec::voter(),
            MemberSpec::voter(),
            MemberSpec::arbiter(),
        ];
        let maj = Majorities::of(&psa);
        assert_eq!((maj.majority_vote_count, maj.write_majority), (2, 2));
        // P-A-A (4.4): majority 2 of 3 voters, only 1 data-bearing voter.
        let paa = [
            MemberSpec::voter(),
            MemberSpec::arbiter(),
            MemberSpec::arbiter(),
        ];
        assert_eq!(Majorities::of(&paa).write_majority, 1);
        // Non-voters do not count.
        let nv = [
            MemberSpec::voter(),
            MemberSpec::non_voter(),
            MemberSpec::non_voter(),
        ];
        let maj = Majorities::of(&nv);
        assert_eq!((maj.voters, maj.write_majority), (1, 1));
    }
}

//! The member layout of the shards, drawn from the seed: which members vote, which are
//! hidden, delayed, arbiters. Every shard of the cluster gets the same layout (a shard added
//! during the run has 3 plain voters); the config server set always has 3 plain voters.
//!
//! ```text
//!   seed % 6 ─► 0 plain        V V V           3 voters, write majority 2
//!               1 mixed        V V V H N       4 voters, write majority 3   (seed 1: CI)
//!               2 hidden       V V V H H       5 voters, write majority 3
//!               3 psa          V V A           3 voters, write majority 2 (2 bear data)
//!               4 non-voters   V V V N D       3 voters, write majority 2
//!               5 five         V V V V V       5 voters, write majority 3
//!   V voter  H hidden voter  N non-voter  D hidden delayed (1 s) non-voter  A arbiter
//! ```
//!
//! `NEMESIS_LAYOUT=<name>` overrides the seed's choice.

use std::net::SocketAddr;

use mongosim::membership::MemberSpec;

/// A shard's member layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 3 voters.
    Plain,
    /// 3 voters, a hidden voter and a visible non-voter.
    Mixed,
    /// 3 voters and 2 hidden voters.
    Hidden,
    /// Primary, secondary, arbiter.
    Psa,
    /// 3 voters, a visible non-voter and a hidden delayed non-voter.
    NonVoters,
    /// 5 voters.
    Five,
}

impl Layout {
    /// In seed order: seed `n` runs `ALL[n % 6]`.
    pub const ALL: [Layout; 6] = [
        Layout::Plain,
        Layout::Mixed,
        Layout::Hidden,
        Layout::Psa,
        Layout::NonVoters,
        Layout::Five,
    ];

    pub fn from_seed(seed: u64) -> Layout {
        Layout::ALL[(seed % Layout::ALL.len() as u64) as usize]
    }

    /// `NEMESIS_LAYOUT` if set, else the seed's.
    ///
    /// # Panics
    /// On an unknown name (the message lists the known ones).
    pub fn from_env(seed: u64) -> Layout {
        match std::env::var("NEMESIS_LAYOUT") {
            Ok(name) => Layout::ALL
                .into_iter()
                .find(|l| l.name() == name)
                .unwrap_or_else(|| {
                    let names: Vec<&str> = Layout::ALL.iter().map(|l| l.name()).collect();
                    panic!("NEMESIS_LAYOUT={name:?} is none of {names:?}")
                }),
            Err(_) => Layout::from_seed(seed),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Plain => "plain",
            Layout::Mixed => "mixed",
            Layout::Hidden => "hidden",
            Layout::Psa => "psa",
            Layout::NonVoters => "non-voters",
            Layout::Five => "five",
        }
    }

    /// The members of each shard, in config order.
    pub fn members(self) -> Vec<MemberSpec> {
        let v = MemberSpec::voter;
        let delayed_non_voter = MemberSpec {
            votes: 0,
            ..MemberSpec::delayed(1)
        };
        match self {
            Layout::Plain => vec![v(), v(), v()],
            Layout::Mixed => vec![v(), v(), v(), MemberSpec::hidden(), MemberSpec::non_voter()],
            Layout::Hidden => vec![v(), v(), v(), MemberSpec::hidden(), MemberSpec::hidden()],
            Layout::Psa => vec![v(), v(), MemberSpec::arbiter()],
            Layout::NonVoters => vec![v(), v(), v(), MemberSpec::non_voter(), delayed_non_voter],
            Layout::Five => vec![v(); 5],
        }
    }

    /// One line for the run's header: the members and the majorities they make.
    pub fn describe(self) -> String {
        let members = self.members();
        let kinds: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        let q = Quorum::of(&members);
        format!(
            "{} [{}]: {} voters, majority vote {}, write majority {}",
            self.name(),
            kinds.join(", "),
            q.voters,
            q.vote_majority,
            q.write_majority
        )
    }
}

/// The majorities of a configuration, as mongod computes them
/// (`ReplSetConfig::_calculateMajorities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    pub voters: usize,
    /// `majorityVoteCount`: votes an election needs.
    pub vote_majority: usize,
    /// `writeMajorityCount`: data-bearing voters that must hold an entry for it to commit.
    pub write_majority: usize,
}

impl Quorum {
    pub fn of(members: &[MemberSpec]) -> Quorum {
        let voters = members.iter().filter(|m| m.is_voter()).count();
        let data_voters = members
            .iter()
            .filter(|m| m.is_voter() && m.is_data_bearing())
            .count();
        let vote_majority = voters / 2 + 1;
        Quorum {
            voters,
            vote_majority,
            write_majority: vote_majority.min(data_voters),
        }
    }
}

/// A member of the current configuration.
#[derive(Debug, Clone)]
pub struct Member {
    pub addr: SocketAddr,
    pub spec: MemberSpec,
}

impl Member {
    /// Holds an oplog and is not delayed: it can be expected to hold the newest entries.
    pub fn current(&self) -> bool {
        self.spec.is_data_bearing() && self.spec.secondary_delay_secs == 0
    }

    pub fn data_voter(&self) -> bool {
        self.spec.is_voter() && self.spec.is_data_bearing()
    }
}

/// The members of `set`'s current configuration (removed members' processes excluded).
pub fn members(cluster: &mongosim::Cluster, set: &str) -> Vec<Member> {
    cluster
        .member_specs(set)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|spec| {
            Some(Member {
                addr: spec.host?,
                spec,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_seed_runs_a_layout_with_hidden_voters_and_non_voters() {
        let l = Layout::from_seed(1);
        let m = l.members();
        assert!(
            m.iter().any(|m| m.hidden && m.is_voter()),
            "{}",
            l.describe()
        );
        assert!(m.iter().any(|m| !m.is_voter()), "{}", l.describe());
    }

    #[test]
    fn every_layout_is_reachable_by_a_seed_and_valid() {
        for l in Layout::ALL {
            assert!((0..6).any(|s| Layout::from_seed(s) == l), "{l:?}");
            let q = Quorum::of(&l.members());
            assert!(q.write_majority >= 2, "{}", l.describe());
            assert!(q.voters <= 7);
        }
        assert_eq!(
            Quorum::of(&Layout::Psa.members()),
            Quorum {
                voters: 3,
                vote_majority: 2,
                write_majority: 2
            }
        );
        assert_eq!(Quorum::of(&Layout::Mixed.members()).write_majority, 3);
    }
}

//! Positions in an oplog: [`Timestamp`], the entry identity [`EntryId`], and the
//! shard-qualified [`ShardPosition`] that checkpoints store.
//!
//! # Ordering guarantees
//!
//! * Within one replica set, `ts` strictly increases along every node's oplog, and the
//!   majority-committed history is a single sequence ordered by `ts`. Emitting committed
//!   entries in `ts` order therefore reproduces the order in which the replica set applied
//!   them.
//! * The same `ts` can appear twice in one replica set's history: once on a branch that was
//!   later rolled back and once on the branch that replaced it (with a higher term). Those
//!   are different entries, which is why [`EntryId`] carries the term.
//! * Timestamps of two different replica sets are not comparable in any meaningful way
//!   (each shard's clock runs on its own primary). [`ShardPosition`] makes this visible: it
//!   only implements [`PartialOrd`], and two positions of different shards are unordered.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A BSON Timestamp as written in an oplog entry's `ts`: seconds since the Unix epoch and
/// an increment that orders entries within the same second.
///
/// Ordered by `(time, increment)`, which is MongoDB's order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    #[serde(rename = "t")]
    pub time: u32,
    /// Ordinal of the entry within `time`.
    #[serde(rename = "i")]
    pub increment: u32,
}

impl Timestamp {
    /// The smallest timestamp; every real entry is greater.
    pub const ZERO: Timestamp = Timestamp {
        time: 0,
        increment: 0,
    };

    /// Creates a timestamp from its two parts.
    pub const fn new(time: u32, increment: u32) -> Self {
        Timestamp { time, increment }
    }

    /// The 64-bit form MongoDB stores (`time << 32 | increment`).
    pub const fn as_u64(self) -> u64 {
        ((self.time as u64) << 32) | self.increment as u64
    }

    /// Inverse of [`Timestamp::as_u64`].
    pub const fn from_u64(v: u64) -> Self {
        Timestamp {
            time: (v >> 32) as u32,
            increment: v as u32,
        }
    }
}

impl From<bson::Timestamp> for Timestamp {
    fn from(t: bson::Timestamp) -> Self {
        Timestamp {
            time: t.time,
            increment: t.increment,
        }
    }
}

impl From<Timestamp> for bson::Timestamp {
    fn from(t: Timestamp) -> Self {
        bson::Timestamp {
            time: t.time,
            increment: t.increment,
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}, {})", self.time, self.increment)
    }
}

/// `seconds:increment`, the form the config file and logs use.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.time, self.increment)
    }
}

/// Error parsing a `seconds:increment` timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {input:?}: expected \"<seconds>:<increment>\" with two unsigned 32-bit integers, e.g. \"1422998574:1\"")]
pub struct ParseTimestampError {
    input: String,
}

impl FromStr for Timestamp {
    type Err = ParseTimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTimestampError {
            input: s.to_owned(),
        };
        let (a, b) = s.split_once(':').ok_or_else(err)?;
        let time = a.trim().parse::<u32>().map_err(|_| err())?;
        let increment = b.trim().parse::<u32>().map_err(|_| err())?;
        Ok(Timestamp { time, increment })
    }
}

/// The identity of one oplog entry within one replica set: `(ts, t, h)` with the parts the
/// server wrote.
///
/// * `t` (the election term) exists in every protocol-version-1 entry (MongoDB 3.2+), and
///   is the only disambiguator from 4.4 on, where `h` is no longer written.
/// * `h` was a random 64-bit value up to 4.0 (0 from 4.2). Legacy protocol-version-0
///   entries, like those of a 2.6 cluster, have only `ts` and `h`.
///
/// Two nodes that report the same `EntryId` report the same entry: MongoDB's log-matching
/// property guarantees that equal `(ts, t)` means equal content and equal history before it.
/// (The merge engine double-checks content with a digest and reports divergences.)
///
/// The derived order is `(ts, t, h)` with absent parts first. Only `ts` carries meaning
/// across a history; `t` and `h` merely break ties between a rolled-back entry and the one
/// that replaced it at the same `ts`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryId {
    /// The entry's `ts`.
    pub ts: Timestamp,
    /// The entry's `t` (election term), if present.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    /// The entry's `h`, if present.
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<i64>,
}

impl EntryId {
    /// An identity of a protocol-version-1 entry (`ts`, `t`).
    pub const fn new(ts: Timestamp, term: i64) -> Self {
        EntryId {
            ts,
            term: Some(term),
            hash: None,
        }
    }

    /// An identity with only a timestamp: a start position given by the user.
    pub const fn at(ts: Timestamp) -> Self {
        EntryId {
            ts,
            term: None,
            hash: None,
        }
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `ts` with the term and hash when present: `1422998574:1 t=3`, `1422998574:1 h=-678...`.
impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ts)?;
        if let Some(t) = self.term {
            write!(f, " t={t}")?;
        }
        if let Some(h) = self.hash {
            write!(f, " h={h}")?;
        }
        Ok(())
    }
}

/// A position in one named shard's history: what a checkpoint stores.
///
/// Positions of different shards are unordered (`partial_cmp` returns `None`), because
/// their timestamps come from different clocks and histories.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ShardPosition {
    /// The shard (replica set) name, as in `config.shards._id`.
    pub shard: Arc<str>,
    /// The last entry of that shard's history covered by the position.
    pub id: EntryId,
}

impl PartialOrd for ShardPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        if self.shard == other.shard {
            Some(self.id.cmp(&other.id))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_order_and_u64_round_trip() {
        let a = Timestamp::new(1422998574, 1);
        let b = Timestamp::new(1422998574, 2);
        let c = Timestamp::new(1422998575, 0);
        assert!(a < b && b < c);
        assert_eq!(Timestamp::from_u64(a.as_u64()), a);
        assert!(a.as_u64() < b.as_u64() && b.as_u64() < c.as_u64());
    }

    #[test]
    fn timestamp_parses_and_rejects() {
        assert_eq!(
            "1422998574:1".parse::<Timestamp>().unwrap(),
            Timestamp::new(1422998574, 1)
        );
        for bad in ["", "1", "1:", ":1", "a:1", "1:-1", "4294967296:0"] {
            let e = bad.parse::<Timestamp>().unwrap_err();
            assert!(e.to_string().contains("seconds"), "{e}");
        }
    }

    #[test]
    fn same_ts_other_term_is_another_entry() {
        let ts = Timestamp::new(100, 1);
        assert_ne!(EntryId::new(ts, 1), EntryId::new(ts, 2));
        assert!(EntryId::new(ts, 1) < EntryId::new(ts, 2));
        assert!(EntryId::at(ts) < EntryId::new(ts, 1));
    }

    #[test]
    fn positions_of_different_shards_are_unordered() {
        let a = ShardPosition {
            shard: "shard01".into(),
            id: EntryId::new(Timestamp::new(5, 0), 1),
        };
        let b = ShardPosition {
            shard: "shard02".into(),
            id: EntryId::new(Timestamp::new(9, 0), 1),
        };
        let c = ShardPosition {
            shard: "shard01".into(),
            id: EntryId::new(Timestamp::new(9, 0), 1),
        };
        assert_eq!(a.partial_cmp(&b), None);
        assert!(a < c);
    }

    #[test]
    fn entry_id_json_shape() {
        let id = EntryId::new(Timestamp::new(1422998574, 1), 3);
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            r#"{"ts":{"t":1422998574,"i":1},"t":3}"#
        );
        let legacy = EntryId {
            ts: Timestamp::new(1, 2),
            term: None,
            hash: Some(-5),
        };
        let s = serde_json::to_string(&legacy).unwrap();
        assert_eq!(s, r#"{"ts":{"t":1,"i":2},"h":-5}"#);
        assert_eq!(serde_json::from_str::<EntryId>(&s).unwrap(), legacy);
    }
}

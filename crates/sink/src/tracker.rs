//! Per-shard contiguity tracking: which checkpoint is confirmed, given acknowledgements
//! that arrive in any order.
//!
//! ```text
//!  submitted (seq order) ─►  [ 7 ✓ ][ 8 · ][ 9 ✓ ][ 10 m ][ 11 · ]   ✓ acked  · in flight
//!                              ▲                                      m marker (no record)
//!                 pop while ✓ ─┘  confirmed = last Some(checkpoint) among popped slots
//! ```
//!
//! Kafka acknowledges records partition by partition, so record 9 of a shard can be acked
//! before record 8. The shard's checkpoint may only move to the checkpoint of the highest
//! seq whose whole prefix (every record of the shard with a lower or equal seq) is acked.
//! [`ShardTracker`] keeps the unconfirmed slots in a queue ordered by seq; an ack marks its
//! slot (binary search), then the acked prefix is popped and its last checkpoint becomes
//! the confirmed one.
//!
//! Memory stays bounded by the number of records in flight: a record leaves the queue only
//! when it is confirmed (or discarded after a failure), and consecutive markers at the back
//! of the queue are merged into one, so markers never outnumber records by more than one.
//!
//! This module is pure (no locks, no clocks) and property-tested.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use quorumtail_oplog::EntryId;

/// A confirmed position of one shard: the checkpoint and the seq of the record or marker
/// that carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirmed {
    /// The pipeline's per-shard sequence number of the record or marker.
    pub seq: u64,
    /// The checkpoint it carried: the shard may resume after this entry.
    pub checkpoint: EntryId,
}

/// Why a slot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushRefused {
    /// The seq is not greater than the previous one of the same shard: a bug upstream.
    NotIncreasing {
        /// The refused seq.
        seq: u64,
        /// The last accepted seq.
        last: u64,
    },
    /// The shard failed earlier; nothing after the failed record is accepted.
    Failed {
        /// The seq of the record that failed.
        at: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    seq: u64,
    checkpoint: Option<EntryId>,
    acked: bool,
    /// `false` for a marker (progress without a record): acked from the start and does not
    /// hold an in-flight permit.
    record: bool,
}

/// The contiguity tracker of one shard. See the [module docs](self).
#[derive(Debug, Default)]
pub struct ShardTracker {
    pending: VecDeque<Slot>,
    last_seq: Option<u64>,
    confirmed: Option<Confirmed>,
    confirmed_seq: Option<u64>,
    records_pending: usize,
    failed_at: Option<u64>,
}

impl ShardTracker {
    /// A tracker with nothing submitted and nothing confirmed.
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest confirmed checkpoint.
    pub fn confirmed(&self) -> Option<Confirmed> {
        self.confirmed
    }

    /// The highest seq whose whole prefix is confirmed (whether or not it carried a
    /// checkpoint).
    pub fn confirmed_seq(&self) -> Option<u64> {
        self.confirmed_seq
    }

    /// Records submitted and neither confirmed nor discarded.
    pub fn records_pending(&self) -> usize {
        self.records_pending
    }

    /// The seq of the record whose failure stopped this shard, if any.
    pub fn failed_at(&self) -> Option<u64> {
        self.failed_at
    }

    fn check_seq(&self, seq: u64) -> Result<(), PushRefused> {
        if let Some(at) = self.failed_at {
            return Err(PushRefused::Failed { at });
        }
        match self.last_seq {
            Some(last) if seq <= last => Err(PushRefused::NotIncreasing { seq, last }),
            _ => Ok(()),
        }
    }

    /// Registers a record before it is handed to the producer.
    ///
    /// # Errors
    /// [`PushRefused`] if `seq` does not increase or the shard has failed; nothing is
    /// registered then.
    pub fn push_record(
        &mut self,
        seq: u64,
        checkpoint: Option<EntryId>,
    ) -> Result<(), PushRefused> {
        self.check_seq(seq)?;
        self.last_seq = Some(seq);
        self.records_pending += 1;
        self.pending.push_back(Slot {
            seq,
            checkpoint,
            acked: false,
            record: true,
        });
        Ok(())
    }

    /// Registers progress without a record: confirmed as soon as every earlier record is.
    /// Returns whether the confirmed checkpoint moved.
    ///
    /// # Errors
    /// As for [`ShardTracker::push_record`].
    pub fn push_marker(&mut self, seq: u64, checkpoint: EntryId) -> Result<bool, PushRefused> {
        self.check_seq(seq)?;
        self.last_seq = Some(seq);
        match self.pending.back_mut() {
            None => {
                self.confirmed_seq = Some(seq);
                self.confirmed = Some(Confirmed { seq, checkpoint });
                return Ok(true);
            }
            // Merge into a marker waiting at the back: the newer one supersedes it.
            Some(back) if !back.record => {
                back.seq = seq;
                back.checkpoint = Some(checkpoint);
            }
            Some(_) => self.pending.push_back(Slot {
                seq,
                checkpoint: Some(checkpoint),
                acked: true,
                record: false,
            }),
        }
        Ok(false)
    }

    /// Marks the record `seq` as delivered. Returns how many records left the queue (their
    /// in-flight permits can be released) and whether the confirmed checkpoint moved.
    /// Acks for unknown seqs (discarded after a failure, or duplicates) are ignored.
    pub fn ack(&mut self, seq: u64) -> Released {
        if let Ok(i) = self.pending.binary_search_by_key(&seq, |s| s.seq) {
            let slot = &mut self.pending[i];
            if slot.record {
                slot.acked = true;
            }
        }
        self.pop_acked_prefix()
    }

    /// Marks the record `seq` as definitely failed: the shard's confirmed checkpoint will
    /// never pass it. Every slot from `seq` on is discarded (acks for them are ignored from
    /// now on), and later pushes are refused.
    pub fn fail(&mut self, seq: u64) -> Released {
        let at = self.failed_at.map_or(seq, |f| f.min(seq));
        self.failed_at = Some(at);
        let keep = self.pending.partition_point(|s| s.seq < at);
        let discarded = self.pending.drain(keep..).filter(|s| s.record).count();
        self.records_pending -= discarded;
        let mut r = self.pop_acked_prefix();
        r.records += discarded;
        r
    }

    fn pop_acked_prefix(&mut self) -> Released {
        let mut out = Released::default();
        while let Some(front) = self.pending.front() {
            if !front.acked {
                break;
            }
            let s = self.pending.pop_front().expect("front exists");
            self.confirmed_seq = Some(s.seq);
            if let Some(checkpoint) = s.checkpoint {
                self.confirmed = Some(Confirmed {
                    seq: s.seq,
                    checkpoint,
                });
                out.advanced = true;
            }
            if s.record {
                self.records_pending -= 1;
                out.records += 1;
            }
        }
        out
    }
}

/// What an ack or a failure released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Records that left the queue (confirmed or discarded).
    pub records: usize,
    /// Whether the confirmed checkpoint moved.
    pub advanced: bool,
}

/// Positions the sink confirmed, one per shard. Only the sink creates these (or a caller
/// that vouches for them with [`ConfirmedCheckpoints::assume_confirmed`]), so a store can
/// never be handed positions that are not delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfirmedCheckpoints(HashMap<Arc<str>, EntryId>);

impl ConfirmedCheckpoints {
    pub(crate) fn from_sink(m: HashMap<Arc<str>, EntryId>) -> Self {
        ConfirmedCheckpoints(m)
    }

    /// Wraps positions the caller knows to be confirmed: ones just loaded from a store
    /// (to copy them to another store), or test data.
    pub fn assume_confirmed(m: HashMap<Arc<str>, EntryId>) -> Self {
        ConfirmedCheckpoints(m)
    }

    /// The confirmed position of a shard.
    pub fn get(&self, shard: &str) -> Option<EntryId> {
        self.0.get(shard).copied()
    }

    /// Every shard with a confirmed position.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &EntryId)> {
        self.0.iter()
    }

    /// How many shards have a position.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no shard has a position.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The positions as a map.
    pub fn into_map(self) -> HashMap<Arc<str>, EntryId> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quorumtail_oplog::Timestamp;

    fn cp(n: u64) -> EntryId {
        EntryId::new(Timestamp::new(n as u32, 0), 1)
    }

    #[test]
    fn out_of_order_acks_confirm_only_the_prefix() {
        let mut t = ShardTracker::new();
        for s in 1..=3 {
            t.push_record(s, Some(cp(s))).unwrap();
        }
        assert_eq!(t.ack(3), Released::default());
        assert_eq!(t.confirmed(), None);
        let r = t.ack(1);
        assert_eq!(r.records, 1);
        assert_eq!(t.confirmed().unwrap().seq, 1);
        let r = t.ack(2);
        assert_eq!(r.records, 2);
        assert_eq!(t.confirmed().unwrap().checkpoint, cp(3));
        assert_eq!(t.records_pending(), 0);
    }

    #[test]
    fn records_inside_a_transaction_carry_no_checkpoint() {
        let mut t = ShardTracker::new();
        t.push_record(1, Some(cp(1))).unwrap();
        t.push_record(2, None).unwrap();
        t.push_record(3, None).unwrap();
        t.push_record(4, Some(cp(4))).unwrap();
        t.ack(1);
        t.ack(2);
        t.ack(3);
        assert_eq!(t.confirmed().unwrap().seq, 1);
        assert_eq!(t.confirmed_seq(), Some(3));
        t.ack(4);
        assert_eq!(t.confirmed().unwrap().checkpoint, cp(4));
    }

    #[test]
    fn markers_wait_for_earlier_records_and_merge() {
        let mut t = ShardTracker::new();
        assert!(t.push_marker(1, cp(1)).unwrap());
        t.push_record(2, Some(cp(2))).unwrap();
        assert!(!t.push_marker(3, cp(3)).unwrap());
        assert!(!t.push_marker(4, cp(4)).unwrap());
        assert_eq!(t.pending.len(), 2, "markers merged");
        assert_eq!(t.confirmed().unwrap().seq, 1);
        let r = t.ack(2);
        assert!(r.advanced);
        assert_eq!(
            t.confirmed(),
            Some(Confirmed {
                seq: 4,
                checkpoint: cp(4)
            })
        );
    }

    #[test]
    fn failure_freezes_the_shard_before_the_failed_record() {
        let mut t = ShardTracker::new();
        for s in 1..=4 {
            t.push_record(s, Some(cp(s))).unwrap();
        }
        t.ack(3);
        t.ack(4);
        let r = t.fail(2);
        assert_eq!(r.records, 3, "2, 3 and 4 discarded");
        assert_eq!(t.confirmed(), None);
        t.ack(1);
        assert_eq!(t.confirmed().unwrap().seq, 1);
        assert_eq!(t.ack(3), Released::default());
        assert_eq!(t.push_record(5, None), Err(PushRefused::Failed { at: 2 }));
        assert_eq!(t.records_pending(), 0);
    }

    #[test]
    fn seq_must_increase() {
        let mut t = ShardTracker::new();
        t.push_record(5, None).unwrap();
        assert_eq!(
            t.push_record(5, None),
            Err(PushRefused::NotIncreasing { seq: 5, last: 5 })
        );
        assert_eq!(
            t.push_marker(4, cp(4)),
            Err(PushRefused::NotIncreasing { seq: 4, last: 5 })
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Record(Option<u8>),
        Marker(u8),
        Ack(prop::sample::Index),
        Fail(prop::sample::Index),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::option::of(any::<u8>()).prop_map(Op::Record),
            1 => any::<u8>().prop_map(Op::Marker),
            5 => any::<prop::sample::Index>().prop_map(Op::Ack),
            1 => any::<prop::sample::Index>().prop_map(Op::Fail),
        ]
    }

    /// A submitted slot in the model: seq, checkpoint, acked, is a record.
    type ModelSlot = (u64, Option<EntryId>, bool, bool);

    /// The model: every slot ever submitted, with its ack state; the confirmed checkpoint
    /// is the last checkpoint of the longest fully-acked prefix below the failed seq.
    fn model_confirmed(slots: &[ModelSlot], failed_at: Option<u64>) -> (Option<Confirmed>, usize) {
        let mut confirmed = None;
        let mut prefix = 0;
        for &(seq, checkpoint, acked, _) in slots {
            if !acked || failed_at.is_some_and(|f| seq >= f) {
                break;
            }
            prefix += 1;
            if let Some(checkpoint) = checkpoint {
                confirmed = Some(Confirmed { seq, checkpoint });
            }
        }
        (confirmed, prefix)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn confirmed_is_the_longest_acked_prefix(
            ops in prop::collection::vec(op(), 0..200),
            gaps in prop::collection::vec(1u64..4, 200),
        ) {
            let mut t = ShardTracker::new();
            let mut slots: Vec<ModelSlot> = Vec::new();
            let mut failed_at: Option<u64> = None;
            let mut seq = 0u64;
            let mut released_total = 0usize;
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Record(c) => {
                        seq += gaps[i];
                        let checkpoint = c.map(|c| cp(seq * 1000 + u64::from(c)));
                        let r = t.push_record(seq, checkpoint);
                        match failed_at {
                            Some(at) => prop_assert_eq!(r, Err(PushRefused::Failed { at })),
                            None => {
                                prop_assert_eq!(r, Ok(()));
                                slots.push((seq, checkpoint, false, true));
                            }
                        }
                    }
                    Op::Marker(c) => {
                        seq += gaps[i];
                        let checkpoint = cp(seq * 1000 + u64::from(c));
                        let r = t.push_marker(seq, checkpoint);
                        match failed_at {
                            Some(at) => prop_assert_eq!(r, Err(PushRefused::Failed { at })),
                            None => {
                                prop_assert!(r.is_ok());
                                slots.push((seq, Some(checkpoint), true, false));
                            }
                        }
                    }
                    Op::Ack(ix) | Op::Fail(ix) => {
                        let unacked: Vec<usize> = slots
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| !s.2)
                            .map(|(i, _)| i)
                            .collect();
                        if unacked.is_empty() {
                            continue;
                        }
                        let k = unacked[ix.index(unacked.len())];
                        let s = slots[k].0;
                        if matches!(op, Op::Ack(_)) {
                            slots[k].2 = true;
                            released_total += t.ack(s).records;
                        } else {
                            released_total += t.fail(s).records;
                            failed_at = Some(failed_at.map_or(s, |f| f.min(s)));
                        }
                    }
                }
                let (want, prefix) = model_confirmed(&slots, failed_at);
                prop_assert_eq!(t.confirmed(), want);
                prop_assert_eq!(t.failed_at(), failed_at);
                // A record's permit is released exactly when it joins the confirmed prefix,
                // or when a failure at or before it discards it.
                let records_in_prefix = slots[..prefix].iter().filter(|s| s.3).count();
                let discarded = slots
                    .iter()
                    .filter(|s| s.3 && failed_at.is_some_and(|f| s.0 >= f))
                    .count();
                let records_total = slots.iter().filter(|s| s.3).count();
                prop_assert_eq!(released_total, records_in_prefix + discarded);
                prop_assert_eq!(t.records_pending(), records_total - records_in_prefix - discarded);
                // Markers never outnumber records by more than one.
                prop_assert!(t.pending.len() <= 2 * t.records_pending() + 1);
            }
        }
    }
}

//! The shared progress registry: one [`ShardTracker`] per shard behind one mutex, written by
//! the sink task (submissions) and by librdkafka's delivery callback thread
//! (acknowledgements), read by the pipeline through per-shard watches.
//!
//! The mutex is held for a few hundred nanoseconds per record and never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use quorumtail_oplog::EntryId;
use tokio::sync::{watch, Notify, Semaphore};

use crate::error::SinkError;
use crate::tracker::ConfirmedCheckpoints;
use crate::tracker::{Confirmed, PushRefused, Released, ShardTracker};

/// What the pipeline sees of one shard's delivery.
#[derive(Clone, Debug, Default)]
pub struct ShardProgress {
    /// The latest confirmed checkpoint: every record of the shard up to `seq` is in Kafka
    /// (acks=all) or fsynced, and every marker up to it is passed.
    pub confirmed: Option<Confirmed>,
    /// Set once a definite error stopped this shard; `confirmed` never moves again then.
    pub failure: Option<Arc<SinkError>>,
}

#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    tracker: ShardTracker,
    tx: watch::Sender<ShardProgress>,
    failure: Option<Arc<SinkError>>,
    /// Records refused after the failure (not delivered, re-read after a restart).
    dropped: u64,
}

#[derive(Debug, Default)]
struct Inner {
    index: HashMap<Arc<str>, usize>,
    shards: Vec<Slot>,
}

/// A cloneable, read-only view of a sink's progress. It stays valid after the sink is
/// flushed (it then shows the final state).
#[derive(Clone, Debug)]
pub struct ProgressView {
    pub(crate) progress: Arc<Progress>,
}

impl ProgressView {
    /// See [`Sink::checkpoints`](crate::Sink::checkpoints).
    pub fn checkpoints(&self) -> ConfirmedCheckpoints {
        self.progress.checkpoints()
    }

    /// See [`Sink::progress`](crate::Sink::progress).
    pub fn progress(&self, shard: &str) -> watch::Receiver<ShardProgress> {
        self.progress.subscribe(shard)
    }

    /// The highest seq of shard `shard` whose whole prefix is delivered (records with or
    /// without a checkpoint), and whether the shard failed.
    pub fn delivered_seq(&self, shard: &str) -> (Option<u64>, bool) {
        self.progress.delivered_seq(shard)
    }

    /// See [`Sink::failure`](crate::Sink::failure).
    pub fn failure(&self) -> watch::Receiver<Option<Arc<SinkError>>> {
        self.progress.subscribe_failure()
    }

    /// See [`Sink::unconfirmed`](crate::Sink::unconfirmed).
    pub fn unconfirmed(&self) -> usize {
        self.progress.unconfirmed()
    }

    /// Delivery latency and errors of the Kafka sink.
    pub fn delivery(&self) -> &crate::metrics::DeliveryMetrics {
        &self.progress.metrics
    }
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Progress {
    inner: Mutex<Inner>,
    /// In-flight permits of the Kafka sink: one per record between submission and the
    /// moment it leaves its shard's queue. `None` for the file sink (bounded by its batch).
    permits: Option<Arc<Semaphore>>,
    /// Notified after every acknowledgement or failure (a sender waiting on a full
    /// librdkafka queue wakes up on it).
    pub(crate) changed: Notify,
    /// The first definite error of any shard.
    first_failure: watch::Sender<Option<Arc<SinkError>>>,
    /// Delivery latency and errors.
    pub(crate) metrics: crate::metrics::DeliveryMetrics,
}

impl Progress {
    pub(crate) fn new(permits: Option<Arc<Semaphore>>) -> Self {
        Progress {
            inner: Mutex::new(Inner::default()),
            permits,
            changed: Notify::new(),
            first_failure: watch::Sender::new(None),
            metrics: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every method updates the
        // tracker before publishing), so poisoning is not a reason to stop.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of a shard, registering it on first sight.
    pub(crate) fn index(&self, name: &Arc<str>) -> usize {
        let mut inner = self.lock();
        if let Some(&i) = inner.index.get(name) {
            return i;
        }
        let i = inner.shards.len();
        inner.shards.push(Slot {
            name: name.clone(),
            tracker: ShardTracker::new(),
            tx: watch::Sender::new(ShardProgress::default()),
            failure: None,
            dropped: 0,
        });
        inner.index.insert(name.clone(), i);
        i
    }

    pub(crate) fn subscribe(&self, name: &str) -> watch::Receiver<ShardProgress> {
        let name: Arc<str> = name.into();
        let i = self.index(&name);
        self.lock().shards[i].tx.subscribe()
    }

    pub(crate) fn delivered_seq(&self, name: &str) -> (Option<u64>, bool) {
        let inner = self.lock();
        match inner.index.get(name) {
            Some(&i) => {
                let slot = &inner.shards[i];
                (slot.tracker.confirmed_seq(), slot.failure.is_some())
            }
            None => (None, false),
        }
    }

    pub(crate) fn subscribe_failure(&self) -> watch::Receiver<Option<Arc<SinkError>>> {
        self.first_failure.subscribe()
    }

    /// Registers a record. `Err(())` means the record must not be sent: either the shard
    /// failed earlier (the record is dropped on purpose: the checkpoint stays before the
    /// failed record, so it is re-read after a restart), or the seq did not increase (the
    /// shard is failed now).
    pub(crate) fn push_record(
        &self,
        i: usize,
        seq: u64,
        checkpoint: Option<EntryId>,
    ) -> Result<(), ()> {
        let mut inner = self.lock();
        let r = inner.shards[i].tracker.push_record(seq, checkpoint);
        self.refused(&mut inner, i, r)
    }

    pub(crate) fn push_marker(&self, i: usize, seq: u64, checkpoint: EntryId) {
        let mut inner = self.lock();
        match inner.shards[i].tracker.push_marker(seq, checkpoint) {
            Ok(true) => publish(&inner.shards[i]),
            Ok(false) => {}
            Err(e) => {
                let _ = self.refused(&mut inner, i, Err(e));
            }
        }
    }

    fn refused(&self, inner: &mut Inner, i: usize, r: Result<(), PushRefused>) -> Result<(), ()> {
        match r {
            Ok(()) => Ok(()),
            Err(PushRefused::Failed { at }) => {
                let slot = &mut inner.shards[i];
                slot.dropped += 1;
                if slot.dropped == 1 {
                    tracing::warn!(
                        shard = %slot.name,
                        failed_seq = at,
                        "sink: the shard stopped at a failed record; its later records are not \
                         delivered and its checkpoint stays before the failed one, so they are \
                         re-read after a restart"
                    );
                }
                Err(())
            }
            Err(PushRefused::NotIncreasing { seq, last }) => {
                let err = SinkError::SeqNotIncreasing {
                    shard: inner.shards[i].name.clone(),
                    seq,
                    last,
                };
                self.fail_locked(inner, i, last.saturating_add(1), err);
                Err(())
            }
        }
    }

    /// A record was acknowledged.
    pub(crate) fn ack(&self, i: usize, seq: u64) {
        let released = {
            let mut inner = self.lock();
            let slot = &mut inner.shards[i];
            let r = slot.tracker.ack(seq);
            if r.advanced {
                publish(slot);
            }
            r
        };
        self.release(released);
    }

    /// A record failed definitely; `err` is built from the shard's name.
    pub(crate) fn fail(&self, i: usize, seq: u64, err: impl FnOnce(Arc<str>) -> SinkError) {
        let mut inner = self.lock();
        let err = err(inner.shards[i].name.clone());
        self.fail_locked(&mut inner, i, seq, err);
    }

    fn fail_locked(&self, inner: &mut Inner, i: usize, seq: u64, err: SinkError) {
        let slot = &mut inner.shards[i];
        let released = slot.tracker.fail(seq);
        if slot.failure.is_none() {
            tracing::error!(shard = %slot.name, seq, error = %err, "sink: shard stopped");
            let err = Arc::new(err);
            slot.failure = Some(err.clone());
            self.first_failure.send_if_modified(|f| {
                if f.is_none() {
                    *f = Some(err);
                    true
                } else {
                    false
                }
            });
        }
        publish(slot);
        self.release(released);
    }

    fn release(&self, r: Released) {
        if r.records > 0 {
            if let Some(p) = &self.permits {
                p.add_permits(r.records);
            }
        }
        self.changed.notify_waiters();
    }

    /// The confirmed checkpoint of every shard that has one.
    pub(crate) fn checkpoints(&self) -> ConfirmedCheckpoints {
        let inner = self.lock();
        ConfirmedCheckpoints::from_sink(
            inner
                .shards
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.tracker.confirmed()?.checkpoint)))
                .collect(),
        )
    }

    /// Records submitted and not yet confirmed (or discarded), over all shards.
    pub(crate) fn unconfirmed(&self) -> usize {
        self.lock()
            .shards
            .iter()
            .map(|s| s.tracker.records_pending())
            .sum()
    }

    pub(crate) fn failures(&self) -> Vec<Arc<SinkError>> {
        self.lock()
            .shards
            .iter()
            .filter_map(|s| s.failure.clone())
            .collect()
    }
}

fn publish(slot: &Slot) {
    slot.tx.send_replace(ShardProgress {
        confirmed: slot.tracker.confirmed(),
        failure: slot.failure.clone(),
    });
}

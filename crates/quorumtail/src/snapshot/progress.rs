//! A shard's snapshot progress, stored once the sink confirmed the records up to it.
//!
//! The copy hands each batch to the sink and notes `(last seq of the batch, where the
//! copy stands after it)`. Whenever the sink's delivered prefix of the shard reaches a
//! noted seq, that point is delivered; the newest such point is stored at most once per
//! interval. A restart continues after the last stored point, so what it repeats is what
//! was emitted after it: at most one interval of deliveries plus what was in flight.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::Bson;
use quorumtail_sink::{SnapshotCursor, SnapshotProgress};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::ProgressStore;

/// The progress of one shard's copy.
pub(super) struct Tracker {
    shard: Arc<str>,
    store: Option<ProgressStore>,
    /// Where the copy stands now (emitted, not necessarily delivered).
    now: SnapshotProgress,
    /// Points emitted and not yet known delivered, oldest first.
    noted: VecDeque<(u64, SnapshotProgress)>,
    /// The newest delivered point not stored yet.
    delivered: Option<SnapshotProgress>,
    last_store: Option<Instant>,
    /// When the copy started, and the documents read (kept and orphans) then.
    started: (Instant, u64),
    last_line: Instant,
}

/// How often the log gets a progress line during a copy.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(10);

/// Why progress could not be kept.
#[derive(Debug)]
pub(super) enum Stop {
    /// The sink failed this shard.
    SinkFailed,
    /// Shutdown while waiting for delivery.
    Shutdown,
}

impl Tracker {
    /// Starts from `from` (a fresh snapshot's, or an earlier run's stored progress).
    pub(super) fn new(
        shard: Arc<str>,
        store: Option<ProgressStore>,
        from: SnapshotProgress,
    ) -> Self {
        Tracker {
            shard,
            store,
            now: from,
            noted: VecDeque::new(),
            delivered: None,
            last_store: None,
            started: (Instant::now(), 0),
            last_line: Instant::now(),
        }
    }

    /// Logs how far the copy is, at most every [`PROGRESS_LINE_EVERY`]: documents read of
    /// the estimate, the rate, and the time left at that rate.
    pub(super) fn progress_line(&mut self, ns: &str, stats: &crate::pipeline::stats::ShardStats) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.last_line.elapsed() < PROGRESS_LINE_EVERY {
            return;
        }
        self.last_line = Instant::now();
        // This copy's reads (an earlier run's, or an earlier snapshot's, are not in the
        // estimate).
        let read = (stats.snapshot_documents.load(Relaxed) + stats.snapshot_orphans.load(Relaxed))
            .saturating_sub(self.started.1);
        let estimate = stats.snapshot_estimated_documents.load(Relaxed);
        let secs = self.started.0.elapsed().as_secs_f64().max(0.001);
        let rate = read as f64 / secs;
        let left = estimate.saturating_sub(read);
        let eta = if rate > 0.0 {
            left as f64 / rate
        } else {
            f64::NAN
        };
        tracing::info!(
            shard = %self.shard,
            ns,
            read,
            estimated = estimate,
            percent = format!("{:.1}", if estimate > 0 { 100.0 * read as f64 / estimate as f64 } else { 0.0 }),
            documents_per_second = rate.round() as u64,
            seconds_left = if eta.is_finite() { eta.round() as u64 } else { 0 },
            "snapshot: progress"
        );
    }

    /// Counts the documents read before this copy started (an earlier run's), for the
    /// rate of the progress line.
    pub(super) fn read_before(&mut self, n: u64) {
        self.started.1 = n;
    }

    /// Whether namespace `ns` was copied completely before.
    pub(super) fn done(&self, ns: &str) -> bool {
        self.now.done.iter().any(|d| d == ns)
    }

    /// The `_id` the copy of `ns` continues after, if an earlier run copied part of it.
    ///
    /// # Errors
    /// When the stored `_id` is not valid Extended JSON.
    pub(super) fn after_id(&self, ns: &str) -> Result<Option<Bson>, String> {
        match &self.now.current {
            Some(c) if c.ns == ns => Bson::try_from(c.after_id.clone()).map(Some).map_err(|e| {
                format!(
                    "the stored snapshot progress of {ns} has an unreadable _id {}: {e}",
                    c.after_id
                )
            }),
            _ => Ok(None),
        }
    }

    /// The copy emitted documents of `ns` up to `last_id` (`documents` in this batch); the
    /// batch's last record has sequence number `seq`.
    pub(super) fn emitted(&mut self, seq: u64, ns: &str, last_id: &Bson, documents: u64) {
        self.now.documents += documents;
        self.now.current = Some(SnapshotCursor {
            ns: ns.to_owned(),
            after_id: last_id.clone().into_canonical_extjson(),
        });
        self.noted.push_back((seq, self.now.clone()));
    }

    /// Parts of the snapshot are read later (`floor.later`): stored with the next progress,
    /// so that a restart reads the rest at that time and its stream skips what they hold.
    pub(super) fn read_later(&mut self, floor: &super::floor::SnapshotFloor) {
        self.now.later = floor
            .later
            .iter()
            .map(|l| quorumtail_sink::SnapshotLaterRead {
                ns: l.ns.clone(),
                after_id: l.after_id.clone().map(Bson::into_canonical_extjson),
                at: l.at,
            })
            .collect();
    }

    /// `ns` is copied completely; its last record has sequence number `seq`.
    pub(super) fn finished(&mut self, seq: u64, ns: &str) {
        self.now.current = None;
        self.now.done.push(ns.to_owned());
        self.noted.push_back((seq, self.now.clone()));
    }

    /// Stores the newest delivered point if the interval passed.
    pub(super) async fn maybe_store(&mut self) -> Result<(), Stop> {
        self.collect()?;
        let due = match (&self.store, self.last_store) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(s), Some(t)) => t.elapsed() >= s.interval,
        };
        if due {
            self.store_delivered().await;
        }
        Ok(())
    }

    /// Awaits `read`, storing delivered progress meanwhile: a slow read must not keep the
    /// records before it from being recorded as delivered.
    pub(super) async fn meanwhile<F: std::future::IntoFuture>(&mut self, read: F) -> F::Output {
        let read = read.into_future();
        let Some(every) = self.store.as_ref().map(|s| s.interval) else {
            return read.await;
        };
        tokio::pin!(read);
        loop {
            tokio::select! {
                out = &mut read => return out,
                _ = tokio::time::sleep(every) => {
                    // A sink failure shows at the next batch's regular call.
                    let _ = self.maybe_store().await;
                }
            }
        }
    }

    /// Every namespace is copied; the last record has sequence number `seq`. Waits until
    /// the sink delivered everything, then stores the snapshot as complete.
    pub(super) async fn complete(
        &mut self,
        seq: u64,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        self.now.current = None;
        self.now.complete = true;
        self.noted.push_back((seq, self.now.clone()));
        if self.store.is_none() {
            return Ok(());
        }
        // Delivery of the last batches takes the producer's linger and the broker's
        // acknowledgement; poll the delivered prefix until it covers them.
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            self.collect()?;
            if self.noted.is_empty() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.store_delivered().await;
                    return Err(Stop::Shutdown);
                }
                _ = tick.tick() => {}
            }
        }
        self.store_delivered().await;
        Ok(())
    }

    /// Moves the noted points the sink delivered to `delivered`.
    fn collect(&mut self) -> Result<(), Stop> {
        let Some(store) = &self.store else {
            self.noted.clear();
            return Ok(());
        };
        let (seq, failed) = store.view.delivered_seq(&self.shard);
        if failed {
            return Err(Stop::SinkFailed);
        }
        // Sequence numbers start at 1: a point noted before any record (0) is delivered.
        let seq = seq.unwrap_or(0);
        while self.noted.front().is_some_and(|(s, _)| *s <= seq) {
            self.delivered = self.noted.pop_front().map(|(_, p)| p);
        }
        Ok(())
    }

    async fn store_delivered(&mut self) {
        let (Some(store), Some(p)) = (&self.store, self.delivered.take()) else {
            return;
        };
        self.last_store = Some(Instant::now());
        if let Err(e) = store.store.store_snapshot(&self.shard, p.clone()).await {
            // The previous progress stays; a restart repeats more, never less.
            warn!(shard = %self.shard, error = %e, "snapshot progress could not be stored; retrying with the next batch");
            self.delivered = Some(p);
        }
    }
}

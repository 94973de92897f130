//! Delivery metrics of the Kafka sink: a latency histogram (from handing a record to the
//! producer to its acknowledgement) and definite errors by kind. Lock-free counters, read by
//! the coordinator's `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The counters.
#[derive(Debug, Default)]
pub struct DeliveryMetrics {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// A snapshot of [`DeliveryMetrics`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryStats {
    /// Cumulative counts per bucket bound (`le`), as Prometheus expects.
    pub buckets: Vec<(f64, u64)>,
    /// Acknowledged records.
    pub count: u64,
    /// Sum of their latencies, seconds.
    pub sum_seconds: f64,
    /// Definite delivery errors by librdkafka error code name.
    pub errors: BTreeMap<String, u64>,
}

impl DeliveryMetrics {
    pub(crate) fn observe(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }

    pub(crate) fn error(&self, kind: String) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_default() += 1;
        }
    }

    /// A snapshot (buckets made cumulative).
    pub fn snapshot(&self) -> DeliveryStats {
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| {
                acc += c.load(Relaxed);
                (*b, acc)
            })
            .collect();
        DeliveryStats {
            buckets,
            count: self.count.load(Relaxed),
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
            errors: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let m = DeliveryMetrics::default();
        m.observe(Duration::from_micros(500));
        m.observe(Duration::from_millis(20));
        m.observe(Duration::from_secs(60));
        m.error("MessageSizeTooLarge".into());
        let s = m.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.001, 1));
        assert_eq!(s.buckets.iter().find(|b| b.0 == 0.025).unwrap().1, 2);
        assert_eq!(s.buckets.last().unwrap().1, 2, "60 s lands only in +Inf");
        assert!((s.sum_seconds - 60.0205).abs() < 1e-6);
        assert_eq!(s.errors["MessageSizeTooLarge"], 1);
    }
}

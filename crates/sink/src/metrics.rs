//! Delivery metrics of the Kafka sink, as prometheus-client metrics: a latency histogram
//! (from handing a record to the producer to its acknowledgement) and definite errors by
//! kind. The delivery callback updates them lock-free; the coordinator's `/metrics`
//! encodes them under its own names.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A label value escaped as the Prometheus and OpenMetrics text formats require (`\` as
/// `\\`, `"` as `\"`, a line feed as `\n`). prometheus-client writes label values as
/// they are (prometheus/client_rust#151), so a value holding a quote would make the
/// whole scrape unreadable; every label value goes through this.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelValue(pub String);

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The label set of [`DeliveryMetrics::errors`]: `kind`, the librdkafka error code name.
pub type ErrorKind = [(&'static str, LabelValue); 1];

/// The Kafka sink's delivery metrics.
#[derive(Debug)]
pub struct DeliveryMetrics {
    /// Seconds from handing a record to the producer to its acknowledgement (acks=all).
    pub latency: Histogram,
    /// Definite delivery errors by librdkafka error code name.
    pub errors: Family<ErrorKind, Counter>,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        DeliveryMetrics {
            latency: Histogram::new(LATENCY_BUCKETS),
            errors: Family::default(),
        }
    }
}

impl DeliveryMetrics {
    pub(crate) fn observe(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    pub(crate) fn error(&self, kind: String) {
        self.errors
            .get_or_create(&[("kind", LabelValue(kind))])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::{Registry, Unit};

    fn exposition(m: DeliveryMetrics) -> String {
        let mut r = Registry::default();
        r.register_with_unit("delivery", "latency", Unit::Seconds, m.latency);
        r.register("errors", "errors", m.errors);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn buckets_are_cumulative() {
        let m = DeliveryMetrics::default();
        m.observe(Duration::from_micros(500));
        m.observe(Duration::from_millis(20));
        m.observe(Duration::from_secs(60));
        m.error("MessageSizeTooLarge".into());
        let text = exposition(m);
        for line in [
            "delivery_seconds_count 3",
            "delivery_seconds_bucket{le=\"0.001\"} 1",
            "delivery_seconds_bucket{le=\"0.025\"} 2",
            // 60 s lands only in +Inf.
            "delivery_seconds_bucket{le=\"10.0\"} 2",
            "delivery_seconds_bucket{le=\"+Inf\"} 3",
            "errors_total{kind=\"MessageSizeTooLarge\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("delivery_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 60.0205).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = DeliveryMetrics::default();
        m.error("a\"b\\c\nd".into());
        let text = exposition(m);
        assert!(
            text.contains("errors_total{kind=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
    }
}

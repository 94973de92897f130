//! End-to-end suites: a mongosim cluster, quorumtail's coordinator, a real sink, and the
//! simulator's ground truth to compare with.

// The Kafka test broker harness is shared with the sink's own tests.
mod auth;
mod batched;
#[path = "../../crates/sink/tests/sink/broker.rs"]
#[allow(dead_code)]
mod broker;
mod debezium;
mod distributed;
mod events;
mod fixtures;
mod images;
mod kafka;
mod live;
mod lookup;
mod membership;
mod page;
mod removed;
mod support;
mod timeseries;
mod tls;
mod whole;

/// Used by the shared broker harness.
pub fn init_tracing() {
    support::init_logs();
}

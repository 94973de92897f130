//! End-to-end suites: a mongosim cluster, quorumtail's coordinator, a real sink, and the
//! simulator's ground truth to compare with.

mod auth;
mod batched;
mod ddl;
mod debezium;
mod distributed;
mod etl;
mod events;
mod fixtures;
mod images;
mod kafka;
mod live;
mod lookup;
mod membership;
mod page;
mod removed;
mod resharding;
mod snapshot;
mod snapshot_faults;
mod snapshot_request;
mod snapshot_restart;
mod support;
mod timeseries;
mod tls;
mod whole;

// The Kafka test broker harness, shared with the sink's and the fault suites.
use quorumtail_testkit::broker;

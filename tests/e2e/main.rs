//! End-to-end suites: a mongosim cluster, quorumtail's coordinator, a real sink, and the
//! simulator's ground truth to compare with.

mod fixtures;
mod live;
mod support;

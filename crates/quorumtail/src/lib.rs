//! quorumtail: failover-safe change data capture from MongoDB sharded clusters to Kafka.
//!
//! The library behind the `quorumtail` binary: the configuration ([`config`]), one shard's
//! pipeline of tailers, majority merge and emitter ([`pipeline`]), the coordinator that
//! runs every shard with a sink, checkpoints and discovery ([`coordinator`]), the operator
//! endpoints ([`http`]), the checks of `check --connect` ([`preflight`]), and, with the
//! `demo` feature (on by default), the self-contained `demo` on a simulated cluster: the
//! only part that links the simulator, so `--no-default-features` builds a production
//! binary without it.
//!
//! The pure parts live in their own crates: `quorumtail-oplog` (entries, identities,
//! filters, transactions, records) and `quorumtail-merge` (the majority-merge engine);
//! the I/O shells in `quorumtail-tailer` (one member) and `quorumtail-sink` (Kafka, files,
//! checkpoint stores).
//!
//! To follow one entry from a member's oplog to a Kafka record, start with the
//! walk-through in [`pipeline`] ("One entry, from the oplog to Kafka").

pub mod config;
pub mod coordinator;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discovery;
pub mod http;
pub mod pipeline;
pub mod preflight;
pub mod snapshot;
pub mod status;

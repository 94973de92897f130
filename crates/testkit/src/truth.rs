//! The simulator's ground truth, read the way the suites expect it: which committed
//! entries quorumtail must emit with its default filter (per [`crate::emitted_by_default`]).

use mongosim::Cluster;
use quorumtail_oplog::{EntryId, OplogEntry};

/// The application entries of a shard's majority-committed history (what the default
/// filter keeps, as this crate states it), in order.
pub fn committed_app_entries(cluster: &Cluster, shard: &str) -> Vec<EntryId> {
    cluster
        .committed_entries(shard)
        .iter()
        .filter_map(|raw| OplogEntry::parse(raw).ok())
        .filter(|e| crate::emitted_by_default(e.op.as_str(), &changed_ns(e), e.from_migrate))
        .map(|e| e.id())
        .collect()
}

/// The namespace an entry changes: for a command on a collection (`{create: "orders"}` on
/// `shop.$cmd`) the collection, else the entry's `ns`.
pub fn changed_ns(e: &OplogEntry<'_>) -> String {
    if e.op.as_str() != "c" {
        return e.ns.to_owned();
    }
    let db = e.ns.split('.').next().unwrap_or("");
    let first = e.o.and_then(|o| o.into_iter().next()).and_then(Result::ok);
    match first {
        Some((name, value)) => match (name.as_str(), value.as_str()) {
            ("renameCollection", Some(from)) => from.to_owned(),
            ("create" | "drop" | "collMod" | "createIndexes" | "dropIndexes", Some(coll)) => {
                format!("{db}.{coll}")
            }
            _ => e.ns.to_owned(),
        },
        None => e.ns.to_owned(),
    }
}

/// Logs to the test output, filtered by `RUST_LOG` (default: warnings); once per process.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

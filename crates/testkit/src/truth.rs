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

/// As [`committed_app_entries`] when quorumtail knows the databases' primary shards
/// (`[discovery]`): a DDL entry is expected from its database's primary shard only (this
/// crate's rule; the primary shards as the simulator's catalog has them).
pub fn committed_app_entries_discovered(cluster: &Cluster, shard: &str) -> Vec<EntryId> {
    use crate::{command_emitted, ddl_database, ddl_emitted_from, emitted_by_default};
    let primaries = cluster.database_primaries();
    cluster
        .committed_entries(shard)
        .iter()
        .filter_map(|raw| OplogEntry::parse(raw).ok())
        .filter(|e| {
            let notification = e
                .raw()
                .get_document("o2")
                .ok()
                .and_then(|o2| o2.into_iter().next())
                .and_then(Result::ok)
                .map(|(k, _)| k.as_str().to_owned());
            let op = e.op.as_str();
            match ddl_database(op, e.ns, e.command_name(), notification.as_deref()) {
                None => emitted_by_default(op, &changed_ns(e), e.from_migrate),
                Some(db) => {
                    !e.from_migrate
                        && (op == "n" || emitted_by_default(op, &changed_ns(e), false))
                        && e.command_name().is_none_or(command_emitted)
                        && ddl_emitted_from(shard, primaries.get(db).map(String::as_str))
                }
            }
        })
        .map(|e| e.id())
        .collect()
}

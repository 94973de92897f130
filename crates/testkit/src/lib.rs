//! Test fixtures: a Kafka-protocol broker for the suites ([`broker`]: tansu on loopback or
//! `KAFKA_BOOTSTRAP`), a throwaway PKI for TLS tests ([`pki`]), the simulator's ground truth
//! as the suites read it ([`truth`]), and what the end-to-end and
//! fault suites expect quorumtail to emit, written down here independently of quorumtail's own filter code, so that a bug in that code cannot also
//! change what the tests expect.
//!
//! The rules come from the README's configuration section (`[filter]` defaults) and from
//! what MongoDB writes for its own bookkeeping:
//!
//! | dropped by default | why |
//! |---|---|
//! | `fromMigrate: true` | chunk-migration copies and range deletions: the data only moved between shards (`[filter] drop_from_migrate`) |
//! | `op: "n"` | no-ops: periodic no-ops, "new primary", migration markers (`drop_noops`) |
//! | `config.*`, `admin.*`, `local.*` | the cluster's own metadata, users and oplog (`drop_internal`) |
//! | `<db>.system.*` except `<db>.system.buckets.*` | system collections: view definitions, profiler, stored functions (`drop_internal`) |
//!
//! Everything else (inserts, updates, deletes and commands on application databases) is
//! emitted, including `<db>.system.buckets.<coll>`: mongod stores a time-series
//! collection's measurements there as bucket documents, so those writes are user data.
//!
//! For a command, `ns` is the namespace it changes (`shop.orders` for `{create:
//! "orders"}` on `shop.$cmd`), not `db.$cmd`.

pub mod broker;
pub mod pki;
pub mod truth;

/// Whether an operation `op` (`"i"`, `"u"`, `"d"`, `"c"`, `"n"`) on `ns` is emitted with
/// the default `[filter]` settings.
pub fn emitted_by_default(op: &str, ns: &str, from_migrate: bool) -> bool {
    if from_migrate || op == "n" {
        return false;
    }
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    if matches!(db, "config" | "admin" | "local") {
        return false;
    }
    let timeseries_buckets = coll
        .strip_prefix("system.buckets.")
        .is_some_and(|view| !view.is_empty());
    timeseries_buckets || !coll.starts_with("system.")
}

#[cfg(test)]
mod tests {
    use super::emitted_by_default;

    #[test]
    fn application_operations_are_emitted() {
        for op in ["i", "u", "d"] {
            assert!(emitted_by_default(op, "shop.orders", false));
        }
        assert!(emitted_by_default("c", "shop.$cmd", false));
        assert!(emitted_by_default("i", "shop.systems", false));
    }

    #[test]
    fn bookkeeping_is_dropped() {
        assert!(!emitted_by_default("i", "shop.orders", true));
        assert!(!emitted_by_default("n", "", false));
        assert!(!emitted_by_default("i", "config.chunks", false));
        assert!(!emitted_by_default("c", "admin.$cmd", false));
        assert!(!emitted_by_default("i", "local.oplog.rs", false));
        assert!(!emitted_by_default("i", "shop.system.views", false));
        assert!(!emitted_by_default("i", "admin.system.buckets.x", false));
    }

    #[test]
    fn timeseries_buckets_are_user_data() {
        for op in ["i", "u", "d"] {
            assert!(emitted_by_default(op, "farm.system.buckets.weather", false));
        }
        assert!(!emitted_by_default(
            "i",
            "farm.system.buckets.weather",
            true
        ));
    }
}

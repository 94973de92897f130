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
//!
//! DDL (README, "Records"): a user's DDL operation is one record although a sharded
//! cluster logs it on several shards. With `[discovery]` (the databases' primary shards
//! known from `config.databases`) a DDL entry — a command on an application database
//! other than a transaction's, or a `shardCollection` notification no-op — is emitted by
//! its database's primary shard only ([`ddl_emitted_from`]); `startIndexBuild` is never
//! emitted, the build's `commitIndexBuild` is the record ([`command_emitted`]).

pub mod broker;
pub mod bsoncolumn;
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

/// The database of a DDL entry: a command `c` named `command` on `<db>.$cmd` of an
/// application database, other than a transaction's (`applyOps`, `commitTransaction`,
/// `abortTransaction`); or a no-op `n` whose `o2` begins with `shardCollection`
/// (`notification`, the first key of `o2`). `None` for anything else.
pub fn ddl_database<'a>(
    op: &str,
    ns: &'a str,
    command: Option<&str>,
    notification: Option<&str>,
) -> Option<&'a str> {
    let db = ns.split('.').next().unwrap_or("");
    if db.is_empty() || matches!(db, "config" | "admin" | "local") {
        return None;
    }
    let ddl = match op {
        "c" => command.is_some_and(|c| {
            !matches!(
                c,
                "applyOps" | "commitTransaction" | "abortTransaction" | "prepareTransaction"
            )
        }),
        "n" => notification == Some("shardCollection"),
        _ => false,
    };
    ddl.then_some(db)
}

/// Whether a DDL entry logged by `shard` is emitted, `primary` being its database's
/// primary shard when known: only the primary shard's copy is; every copy is when the
/// primary shard is not known (no `[discovery]`).
pub fn ddl_emitted_from(shard: &str, primary: Option<&str>) -> bool {
    primary.is_none_or(|p| p == shard)
}

/// Whether a command named `command` that passes [`emitted_by_default`] is emitted:
/// every one but `startIndexBuild` (its `commitIndexBuild` is the operation's record).
pub fn command_emitted(command: &str) -> bool {
    command != "startIndexBuild"
}

#[cfg(test)]
mod tests {
    use super::{command_emitted, ddl_database, ddl_emitted_from, emitted_by_default};

    #[test]
    fn ddl_is_recognised_and_emitted_once() {
        assert_eq!(
            ddl_database("c", "shop.$cmd", Some("drop"), None),
            Some("shop")
        );
        assert_eq!(
            ddl_database("c", "admin.$cmd", Some("applyOps"), None),
            None
        );
        assert_eq!(ddl_database("c", "shop.$cmd", Some("applyOps"), None), None);
        assert_eq!(
            ddl_database("n", "shop.orders", None, Some("shardCollection")),
            Some("shop")
        );
        assert_eq!(ddl_database("n", "", None, None), None);
        assert_eq!(ddl_database("i", "shop.orders", None, None), None);
        assert!(ddl_emitted_from("shard01", Some("shard01")));
        assert!(!ddl_emitted_from("shard02", Some("shard01")));
        assert!(ddl_emitted_from("shard02", None));
        assert!(!command_emitted("startIndexBuild"));
        assert!(command_emitted("commitIndexBuild"));
    }

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

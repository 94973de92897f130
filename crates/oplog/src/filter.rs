//! Which committed operations become records.
//!
//! The filter runs after the merge (the merge must see every entry, including the ones
//! that will be dropped, so that positions advance) and after transactions are unpacked,
//! so it judges single operations: a top-level `i`/`u`/`d`/`c`/`n` entry or one operation
//! inside an `applyOps`.
//!
//! Order of the checks, first match wins: `fromMigrate` (chunk migrations copy documents
//! between shards; the cluster as a whole did not change), no-ops, internal namespaces
//! (`config.*`, `admin.*`, `local.*`, `*.system.*`), `exclude` patterns, then `include`
//! patterns (when any are given, everything else is dropped).
//!
//! Time-series collections are the exception to `*.system.*`: mongod stores their
//! measurements as bucket documents in `<db>.system.buckets.<coll>` (the collection the
//! user named is a view on it), so writes there are user data and are kept. Patterns
//! select them by either name: `include = ["farm.weather"]` and `include =
//! ["farm.system.buckets.weather"]` both keep the buckets of `farm.weather`, and an
//! `exclude` matching either drops them.

use crate::entry::{split_ns, OpKind};

/// Why an operation was not turned into a record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DropReason {
    /// Written by a chunk migration (`fromMigrate: true`).
    FromMigrate,
    /// A no-op entry (`op: "n"`) or a legacy database declaration.
    Noop,
    /// In `config`, `admin`, `local` or a `system.*` collection.
    InternalNamespace,
    /// Matched an `exclude` pattern.
    Excluded,
    /// `include` patterns are set and none matched.
    NotIncluded,
}

impl DropReason {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::FromMigrate => "from_migrate",
            DropReason::Noop => "noop",
            DropReason::InternalNamespace => "internal_namespace",
            DropReason::Excluded => "excluded",
            DropReason::NotIncluded => "not_included",
        }
    }
}

/// A namespace pattern: `db.coll`, with `*` matching any run of characters
/// (`shop.*`, `*.users`, `crm.user*`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NsPattern {
    text: String,
}

/// A namespace pattern that cannot match anything useful.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("namespace pattern {pattern:?} {problem}")]
pub struct PatternError {
    pattern: String,
    problem: &'static str,
}

impl NsPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// When the pattern is empty, has no `.` separating database and collection (write
    /// `shop.*` for a whole database), or contains whitespace.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let problem = if text.is_empty() {
            Some("is empty")
        } else if text.chars().any(char::is_whitespace) {
            Some("contains whitespace")
        } else if !text.contains('.') {
            Some("needs a database and a collection part, e.g. \"shop.*\" for a whole database")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(PatternError {
                pattern: text.to_owned(),
                problem,
            }),
            None => Ok(NsPattern {
                text: text.to_owned(),
            }),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `ns` matches.
    pub fn matches(&self, ns: &str) -> bool {
        glob(self.text.as_bytes(), ns.as_bytes())
    }
}

/// Iterative wildcard match with backtracking to the last `*`: linear in practice.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether `ns` is one of MongoDB's own namespaces. The buckets of a time-series
/// collection (`<db>.system.buckets.<coll>` outside `config`, `admin` and `local`) are not:
/// they hold the collection's data.
pub fn is_internal_ns(ns: &str) -> bool {
    let (db, coll) = split_ns(ns);
    matches!(db, "config" | "admin" | "local")
        || (coll.starts_with("system.") && timeseries_view_ns(ns).is_none())
}

/// The time-series collection whose buckets `ns` holds: `farm.weather` for
/// `farm.system.buckets.weather`; `None` for any other namespace.
pub fn timeseries_view_ns(ns: &str) -> Option<String> {
    let (db, coll) = split_ns(ns);
    let view = coll.strip_prefix("system.buckets.")?;
    if view.is_empty() || db.is_empty() || matches!(db, "config" | "admin" | "local") {
        return None;
    }
    Some(format!("{db}.{view}"))
}

/// The filter settings (`[filter]` in the config file).
#[derive(Clone, Debug)]
pub struct Filter {
    /// Drop operations written by chunk migrations.
    pub drop_from_migrate: bool,
    /// Drop no-op entries.
    pub drop_noops: bool,
    /// Drop operations on MongoDB's internal namespaces.
    pub drop_internal: bool,
    /// When non-empty, only namespaces matching one of these are kept.
    pub include: Vec<NsPattern>,
    /// Namespaces matching one of these are dropped.
    pub exclude: Vec<NsPattern>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            drop_from_migrate: true,
            drop_noops: true,
            drop_internal: true,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

impl Filter {
    /// Judges one operation. `ns` is the namespace the operation changes: for commands,
    /// use [`command_target_ns`] so that `drop: "orders"` on `shop.$cmd` is judged as
    /// `shop.orders`.
    pub fn check(&self, op: OpKind, ns: &str, from_migrate: bool) -> Result<(), DropReason> {
        if from_migrate && self.drop_from_migrate {
            return Err(DropReason::FromMigrate);
        }
        if matches!(op, OpKind::Noop | OpKind::LegacyDbDeclaration) && self.drop_noops {
            return Err(DropReason::Noop);
        }
        if self.drop_internal && is_internal_ns(ns) {
            return Err(DropReason::InternalNamespace);
        }
        let view = timeseries_view_ns(ns);
        let matches =
            |p: &NsPattern| p.matches(ns) || view.as_deref().is_some_and(|v| p.matches(v));
        if self.exclude.iter().any(matches) {
            return Err(DropReason::Excluded);
        }
        if !self.include.is_empty() && !self.include.iter().any(matches) {
            return Err(DropReason::NotIncluded);
        }
        Ok(())
    }
}

/// The namespace a DDL command changes, for filtering: `db.<coll>` for commands whose
/// first field names a collection (`create`, `drop`, `collMod`, `createIndexes`,
/// `dropIndexes`, ...), the source namespace for `renameCollection`, and `db.$cmd` for
/// database-wide commands (`dropDatabase`), which `db.*` patterns match.
pub fn command_target_ns(cmd_ns: &str, command: &str, first_value: Option<&str>) -> String {
    let (db, _) = split_ns(cmd_ns);
    match (command, first_value) {
        ("renameCollection", Some(from)) => from.to_owned(),
        (
            "create" | "drop" | "collMod" | "createIndexes" | "dropIndexes" | "deleteIndex"
            | "deleteIndexes" | "startIndexBuild" | "commitIndexBuild" | "abortIndexBuild"
            | "convertToCapped" | "emptycapped",
            Some(coll),
        ) => format!("{db}.{coll}"),
        _ => cmd_ns.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<NsPattern> {
        p.iter().map(|p| NsPattern::parse(p).unwrap()).collect()
    }

    #[test]
    fn glob_matching() {
        let m = |p: &str, s: &str| NsPattern::parse(p).unwrap().matches(s);
        assert!(m("shop.*", "shop.orders"));
        assert!(m("shop.*", "shop.a.b"));
        assert!(!m("shop.*", "shopping.orders"));
        assert!(m("*.users", "crm.users"));
        assert!(!m("*.users", "crm.users2"));
        assert!(m("crm.user*", "crm.users"));
        assert!(m("crm.users", "crm.users"));
        assert!(!m("crm.users", "crm.user"));
        assert!(m("*.*", "a.b"));
        assert!(m("a*b*c.d", "axxbyyc.d"));
        assert!(!m("a*b*c.d", "axxbyy.d"));
    }

    #[test]
    fn bad_patterns_are_explained() {
        let e = NsPattern::parse("shop").unwrap_err().to_string();
        assert!(e.contains("\"shop.*\""), "{e}");
        assert!(NsPattern::parse("").is_err());
        assert!(NsPattern::parse("a. b").is_err());
    }

    #[test]
    fn internal_namespaces() {
        for ns in [
            "config.chunks",
            "admin.$cmd",
            "local.oplog.rs",
            "test.system.indexes",
            "a.system.views",
        ] {
            assert!(is_internal_ns(ns), "{ns}");
        }
        for ns in ["test.mycollection", "configs.x", "shop.systems"] {
            assert!(!is_internal_ns(ns), "{ns}");
        }
    }

    /// Every namespace pattern the default filter drops, with the reason, judged on a
    /// representative namespace of each; and the time-series exception. The reasons are
    /// what MongoDB writes there for its own bookkeeping (server source:
    /// `src/mongo/db/namespace_string.h` and the collections it names).
    #[test]
    fn default_filter_drops_only_mongodbs_own_namespaces() {
        let dropped: &[(&str, &str)] = &[
            (
                "config.chunks",
                "config.*: sharding metadata (chunks, collections, shards)",
            ),
            (
                "config.image_collection",
                "config.*: retryable findAndModify pre/post images",
            ),
            (
                "config.transactions",
                "config.*: session and transaction table",
            ),
            ("config.system.sessions", "config.*: logical sessions"),
            ("admin.system.users", "admin.*: users and roles"),
            (
                "admin.system.version",
                "admin.*: feature compatibility version",
            ),
            (
                "admin.$cmd",
                "admin.*: applyOps / transaction wrappers (unpacked first)",
            ),
            (
                "local.oplog.rs",
                "local.*: the oplog and replication state, never replicated",
            ),
            (
                "local.system.replset",
                "local.*: the replica set configuration",
            ),
            (
                "shop.system.views",
                "*.system.*: view definitions (incl. time-series views)",
            ),
            ("shop.system.js", "*.system.*: stored server-side functions"),
            ("shop.system.profile", "*.system.*: the profiler's log"),
            (
                "shop.system.indexes",
                "*.system.*: index catalog of servers before 3.0",
            ),
            (
                "shop.system.resharding.0a1b",
                "*.system.*: resharding's temporary collection",
            ),
            (
                "config.system.buckets.x",
                "config.*: no user time-series live there",
            ),
        ];
        let f = Filter::default();
        for (ns, why) in dropped {
            assert_eq!(
                f.check(OpKind::Insert, ns, false),
                Err(DropReason::InternalNamespace),
                "{ns} should be dropped: {why}"
            );
        }
        // No-ops on a user namespace: the images of retryable findAndModify up to 5.0
        // (op "n" linked by preImageOpTime/postImageOpTime); from 5.1 the image goes to
        // config.image_collection (above). Dropped as no-ops.
        assert_eq!(
            f.check(OpKind::Noop, "shop.stock", false),
            Err(DropReason::Noop)
        );
        // Time-series buckets are the user's measurements: kept, under either name.
        assert_eq!(
            f.check(OpKind::Insert, "shop.system.buckets.weather", false),
            Ok(())
        );
        assert_eq!(
            f.check(OpKind::Update, "shop.system.buckets.weather", false),
            Ok(())
        );
        assert_eq!(
            f.check(
                OpKind::Command,
                &command_target_ns("shop.$cmd", "create", Some("system.buckets.weather")),
                false
            ),
            Ok(())
        );
        // Not internal merely by resembling one.
        for ns in [
            "shop.systems",
            "shop.system",
            "configs.x",
            "local_shop.x",
            "shop.orders",
        ] {
            assert_eq!(f.check(OpKind::Insert, ns, false), Ok(()), "{ns}");
        }
    }

    #[test]
    fn timeseries_buckets_match_patterns_by_either_name() {
        assert_eq!(
            timeseries_view_ns("farm.system.buckets.weather").as_deref(),
            Some("farm.weather")
        );
        assert_eq!(timeseries_view_ns("farm.system.buckets."), None);
        assert_eq!(timeseries_view_ns("admin.system.buckets.x"), None);
        assert_eq!(timeseries_view_ns("farm.weather"), None);
        let bucket = "farm.system.buckets.weather";
        let keep = |include: &[&str], exclude: &[&str]| {
            Filter {
                include: pats(include),
                exclude: pats(exclude),
                ..Filter::default()
            }
            .check(OpKind::Insert, bucket, false)
        };
        assert_eq!(keep(&["farm.weather"], &[]), Ok(()));
        assert_eq!(keep(&["farm.system.buckets.*"], &[]), Ok(()));
        assert_eq!(keep(&["*.weather"], &[]), Ok(()));
        assert_eq!(keep(&["farm.sheep"], &[]), Err(DropReason::NotIncluded));
        assert_eq!(keep(&[], &["farm.weather"]), Err(DropReason::Excluded));
        assert_eq!(
            keep(&[], &["farm.system.buckets.weather"]),
            Err(DropReason::Excluded)
        );
        assert_eq!(keep(&[], &["farm.sheep"]), Ok(()));
    }

    #[test]
    fn check_order_and_reasons() {
        let f = Filter::default();
        assert_eq!(
            f.check(OpKind::Insert, "test.c", true),
            Err(DropReason::FromMigrate)
        );
        assert_eq!(f.check(OpKind::Noop, "", false), Err(DropReason::Noop));
        assert_eq!(
            f.check(OpKind::Insert, "config.x", false),
            Err(DropReason::InternalNamespace)
        );
        assert_eq!(f.check(OpKind::Insert, "test.c", false), Ok(()));

        let f = Filter {
            include: pats(&["shop.*", "crm.users"]),
            exclude: pats(&["shop.tmp*"]),
            ..Filter::default()
        };
        assert_eq!(f.check(OpKind::Insert, "shop.orders", false), Ok(()));
        assert_eq!(f.check(OpKind::Insert, "crm.users", false), Ok(()));
        assert_eq!(
            f.check(OpKind::Insert, "crm.leads", false),
            Err(DropReason::NotIncluded)
        );
        assert_eq!(
            f.check(OpKind::Insert, "shop.tmp1", false),
            Err(DropReason::Excluded)
        );

        let keep_all = Filter {
            drop_from_migrate: false,
            drop_noops: false,
            drop_internal: false,
            ..Filter::default()
        };
        assert_eq!(keep_all.check(OpKind::Noop, "", true), Ok(()));
    }

    #[test]
    fn command_targets() {
        assert_eq!(
            command_target_ns("shop.$cmd", "drop", Some("orders")),
            "shop.orders"
        );
        assert_eq!(
            command_target_ns("shop.$cmd", "renameCollection", Some("shop.a")),
            "shop.a"
        );
        assert_eq!(
            command_target_ns("shop.$cmd", "dropDatabase", None),
            "shop.$cmd"
        );
        let f = Filter {
            include: pats(&["shop.*"]),
            ..Filter::default()
        };
        assert_eq!(f.check(OpKind::Command, "shop.$cmd", false), Ok(()));
    }
}

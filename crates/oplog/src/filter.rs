//! Which committed operations become records.
//!
//! The filter runs after the merge (the merge must see every entry, including the ones
//! that will be dropped, so that positions advance) and after transactions are unpacked,
//! so it judges single operations: a top-level `i`/`u`/`d`/`c`/`n` entry or one operation
//! inside an `applyOps`.
//!
//! Order of the checks, first match wins: `fromMigrate` (chunk migrations copy documents
//! between shards; the cluster as a whole did not change), the DDL rule (below), no-ops,
//! internal namespaces (`config.*`, `admin.*`, `local.*`, `*.system.*`), `exclude`
//! patterns, then `include` patterns (when any are given, everything else is dropped).
//!
//! # One record per DDL operation
//!
//! On a sharded cluster one DDL operation is logged by several shards: a drop by every
//! shard (from 6.0 the non-primary shards mark theirs `fromMigrate`), a rename by every
//! shard (marked from 7.0), an index build or collMod by every shard owning chunks (never
//! marked), a `dropDatabase` by the primary shard and (5.0+) the others. Each logs it
//! with the same `o`. The rule: a DDL entry — a command on an application database other
//! than a transaction's (`applyOps`, `commitTransaction`, `abortTransaction`), or a
//! no-op whose `o2` is a DDL notification (`shardCollection`, written by the primary
//! shard from 6.0) — is emitted only by its database's primary shard (`config.databases`,
//! [`PrimaryShards`]). When the primary shard is unknown the entry is emitted (the caller
//! says why). A no-op DDL notification is a record despite `drop_noops`. And
//! `startIndexBuild` is never a record: it opens a two-phase index build whose
//! `commitIndexBuild` (or `abortIndexBuild`) on the same shard is the operation's record.
//!
//! # Resharding and movePrimary
//!
//! A `reshardCollection` (and 8.0's `moveCollection` / `unshardCollection`, run as
//! resharding operations) copies a collection into `<db>.system.resharding.<uuid>` on the
//! recipient shards, applies the donors' writes made meanwhile there, and at the
//! cut-over renames it onto the collection (recipients) and drops the original (donors
//! that are not recipients). The temporary collection's entries and the operation's
//! no-ops (`reshardBegin`, `reshardFinalOp`, `reshardDoneCatchUp`) are MongoDB's
//! bookkeeping: dropped with [`DropReason::Resharding`]. The user's writes are records
//! once: on the donors until the cut-over, on the recipients after it. Each shard's
//! cut-over entry becomes a [`Placement`] marker instead of a drop or a rename
//! ([`Filter::placement`]): a recipient's rename is recognised by its source namespace; a
//! donor's drop by the `reshardBegin` the same shard logged for the same collection
//! incarnation (remembered per shard). The primary shard's `reshardCollection`
//! notification (6.0+: the new and old shard keys, on 8.0 the `provenance`) is a DDL
//! notification: one record, from the primary shard. A `movePrimary` notification
//! (7.0+, logged by the old primary) is a marker too, and moves the database's primary
//! shard in [`PrimaryShards`] at once, so that the old primary's drops of the moved
//! collections are judged by the new primary.
//!
//! Time-series collections are the exception to `*.system.*`: mongod stores their
//! measurements as bucket documents in `<db>.system.buckets.<coll>` (the collection the
//! user named is a view on it), so writes there are user data and are kept. Patterns
//! select them by either name: `include = ["farm.weather"]` and `include =
//! ["farm.system.buckets.weather"]` both keep the buckets of `farm.weather`, and an
//! `exclude` matching either drops them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::entry::{split_ns, OpKind, OplogEntry};

mod resharding;

use resharding::resharding_noop;
pub use resharding::{is_resharding_temp_ns, Placement, ReshardRole, ReshardTracker};

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
    /// A DDL entry logged by a shard other than its database's primary shard, which logs
    /// the same operation.
    DdlOnOtherShard,
    /// `startIndexBuild`: the build's `commitIndexBuild` / `abortIndexBuild` is the record.
    IndexBuildStart,
    /// Resharding's own entries: writes to and commands on `<db>.system.resharding.*`
    /// (the cloner's and the oplog applier's copies of the user's writes) and the
    /// operation's no-ops (`reshardBegin`, `reshardFinalOp`, `reshardDoneCatchUp`).
    Resharding,
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
            DropReason::DdlOnOtherShard => "ddl_other_shard",
            DropReason::IndexBuildStart => "index_build_start",
            DropReason::Resharding => "resharding",
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

/// Commands on an application database's `$cmd` that are not DDL of that database.
const NOT_DDL: &[&str] = &[
    "applyOps",
    "commitTransaction",
    "abortTransaction",
    "prepareTransaction",
];

/// No-ops whose `o2` records a DDL operation a user ran, written by the database's primary
/// shard for change streams (6.0+ `notifyChangeStreamsOnShardCollection`).
/// From 6.0 the primary shard also notifies the completion of a `reshardCollection`
/// (`notifyChangeStreamsOnReshardCollectionComplete`), with the new shard key.
pub const DDL_NOTIFICATIONS: &[&str] = &["shardCollection", "reshardCollection"];

/// A DDL entry: what the one-record-per-operation rule judges.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ddl<'a> {
    /// The database the operation belongs to.
    pub db: &'a str,
    /// The command name (`drop`, `createIndexes`, ...) or the notification's
    /// (`shardCollection`).
    pub name: &'a str,
    /// A no-op notification rather than a command.
    pub notification: bool,
}

/// The DDL an entry records, if any: a command on an application database (not a
/// transaction's), or a no-op whose `o2` begins with a [`DDL_NOTIFICATIONS`] name.
pub fn ddl_of<'a>(entry: &OplogEntry<'a>) -> Option<Ddl<'a>> {
    let db = split_ns(entry.ns).0;
    if db.is_empty() || matches!(db, "config" | "admin" | "local") {
        return None;
    }
    match entry.op {
        OpKind::Command => {
            let name = entry.command_name()?;
            (!NOT_DDL.contains(&name)).then_some(Ddl {
                db,
                name,
                notification: false,
            })
        }
        OpKind::Noop => {
            let o2 = entry.raw().get_document("o2").ok()?;
            let (name, _) = o2.iter().next()?.ok()?;
            let name: &str = name.as_str();
            DDL_NOTIFICATIONS.contains(&name).then_some(Ddl {
                db,
                name,
                notification: true,
            })
        }
        _ => None,
    }
}

/// Asks the catalog for one database's primary shard (`None`: unknown).
pub type PrimaryLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Which shard is each database's primary (`config.databases`), shared by every shard's
/// filter and kept current by whoever reads the catalog. An optional lookup is asked
/// about a database the map does not hold (a database created since the last read).
#[derive(Clone, Default)]
pub struct PrimaryShards {
    map: Arc<RwLock<HashMap<String, String>>>,
    lookup: Option<PrimaryLookup>,
}

impl std::fmt::Debug for PrimaryShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.read().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("PrimaryShards")
            .field("databases", &n)
            .field("lookup", &self.lookup.is_some())
            .finish()
    }
}

impl PrimaryShards {
    /// An empty map that asks `lookup` about databases it does not hold.
    pub fn with_lookup(lookup: PrimaryLookup) -> Self {
        PrimaryShards {
            map: Arc::default(),
            lookup: Some(lookup),
        }
    }

    /// Records the primary shard of each database read from the catalog. Databases
    /// missing from `read` are kept: a dropped database's entries may still be on their
    /// way, and their primary shard did not change.
    pub fn update(&self, read: HashMap<String, String>) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        m.extend(read);
    }

    /// The primary shard of `db`: from the map, else from the lookup (remembered).
    pub fn primary_of(&self, db: &str) -> Option<String> {
        if let Some(p) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(db) {
            return Some(p.clone());
        }
        let found = self.lookup.as_ref().and_then(|l| l(db))?;
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(db.to_owned(), found.clone());
        Some(found)
    }
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
    /// The databases' primary shards: when set, DDL entries are emitted by the primary
    /// shard only (see the module documentation). `None` on a replica set, or when the
    /// catalog cannot be read.
    pub ddl_primaries: Option<PrimaryShards>,
    /// Resharding operations begun on each shard (see [`Filter::placement`]).
    pub resharding: ReshardTracker,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            drop_from_migrate: true,
            drop_noops: true,
            drop_internal: true,
            include: Vec::new(),
            exclude: Vec::new(),
            ddl_primaries: None,
            resharding: ReshardTracker::default(),
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
        self.check_ns(ns)
    }

    /// Judges a top-level entry logged by `shard`, with the DDL rule (module
    /// documentation); `ns` as for [`Filter::check`]. Returns whether a DDL entry was
    /// emitted without knowing its database's primary shard (`Ok(Some(db))`), so that the
    /// caller can say so.
    ///
    /// # Errors
    /// The reason the entry is not a record.
    pub fn check_entry<'a>(
        &self,
        entry: &OplogEntry<'a>,
        ns: &str,
        shard: &str,
    ) -> Result<Option<&'a str>, DropReason> {
        if self.drop_internal && (is_resharding_temp_ns(ns) || resharding_noop(entry).is_some()) {
            return Err(DropReason::Resharding);
        }
        let Some(ddl) = ddl_of(entry) else {
            return self.check(entry.op, ns, entry.from_migrate).map(|()| None);
        };
        if entry.from_migrate && self.drop_from_migrate {
            return Err(DropReason::FromMigrate);
        }
        if ddl.name == "startIndexBuild" {
            return Err(DropReason::IndexBuildStart);
        }
        let mut unknown = None;
        if let Some(primaries) = &self.ddl_primaries {
            match primaries.primary_of(ddl.db) {
                Some(p) if p != shard => return Err(DropReason::DdlOnOtherShard),
                Some(_) => {}
                None => unknown = Some(ddl.db),
            }
        }
        self.check_ns(ns).map(|()| unknown)
    }

    fn check_ns(&self, ns: &str) -> Result<(), DropReason> {
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
mod tests;

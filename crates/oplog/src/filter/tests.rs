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
        (
            "config.transaction_coordinators",
            "config.*: a distributed transaction's coordinator document",
        ),
        (
            "config.localReshardingOplogBuffer.0a1b.shard01",
            "config.*: a resharding recipient's copy of the donors' oplog",
        ),
        ("admin.system.keys", "admin.*: the cluster's signing keys"),
        (
            "local.replset.minvalid",
            "local.*: a member's own replication bookkeeping",
        ),
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
    // Chunk migrations' copies and deletions (and other shards' copies of DDL): the
    // data only moved.
    assert_eq!(
        f.check(OpKind::Insert, "shop.orders", true),
        Err(DropReason::FromMigrate)
    );
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

pub(super) fn raw(d: bson::Document) -> bson::RawDocumentBuf {
    bson::RawDocumentBuf::try_from(&d).unwrap()
}

pub(super) fn cmd(o: bson::Document, from_migrate: bool) -> bson::RawDocumentBuf {
    let mut d = bson::doc! {
        "op": "c", "ns": "shop.$cmd", "o": o,
        "ts": bson::Timestamp { time: 5, increment: 1 }, "t": 1i64, "v": 2i64,
    };
    if from_migrate {
        d.insert("fromMigrate", true);
    }
    raw(d)
}

pub(super) fn primaries(known: &[(&str, &str)]) -> PrimaryShards {
    let p = PrimaryShards::default();
    p.update(
        known
            .iter()
            .map(|(d, s)| ((*d).to_owned(), (*s).to_owned()))
            .collect(),
    );
    p
}

pub(super) fn judge(
    f: &Filter,
    doc: &bson::RawDocumentBuf,
    shard: &str,
) -> Result<Option<String>, DropReason> {
    let e = OplogEntry::parse(doc).unwrap();
    let ns = command_target_ns(e.ns, e.command_name().unwrap_or(""), None);
    f.check_entry(&e, &ns, shard).map(|o| o.map(str::to_owned))
}

#[test]
fn ddl_is_emitted_by_the_primary_shard_only() {
    let f = Filter {
        ddl_primaries: Some(primaries(&[("shop", "shard01")])),
        ..Filter::default()
    };
    let drop = cmd(bson::doc! {"drop": "items"}, false);
    assert_eq!(judge(&f, &drop, "shard01"), Ok(None));
    assert_eq!(
        judge(&f, &drop, "shard02"),
        Err(DropReason::DdlOnOtherShard)
    );
    // 6.0+: the non-primary shard's copy is a migration's.
    let marked = cmd(bson::doc! {"drop": "items"}, true);
    assert_eq!(judge(&f, &marked, "shard02"), Err(DropReason::FromMigrate));
    // A database the map does not know: emitted, and said so.
    let other = raw(bson::doc! {
        "op": "c", "ns": "crm.$cmd", "o": {"collMod": "people"},
        "ts": bson::Timestamp { time: 5, increment: 2 }, "t": 1i64,
    });
    assert_eq!(judge(&f, &other, "shard02"), Ok(Some("crm".to_owned())));
    // Without the catalog the rule is off: every shard's copy is emitted.
    let off = Filter::default();
    assert_eq!(judge(&off, &drop, "shard02"), Ok(None));
}

#[test]
fn index_build_start_is_left_to_its_commit() {
    let f = Filter::default();
    let start = cmd(
        bson::doc! {"startIndexBuild": "items", "indexes": []},
        false,
    );
    assert_eq!(judge(&f, &start, "s"), Err(DropReason::IndexBuildStart));
    let commit = cmd(
        bson::doc! {"commitIndexBuild": "items", "indexes": []},
        false,
    );
    assert_eq!(judge(&f, &commit, "s"), Ok(None));
}

#[test]
fn shard_collection_notification_is_a_record_other_noops_are_not() {
    let f = Filter {
        ddl_primaries: Some(primaries(&[("shop", "shard01")])),
        ..Filter::default()
    };
    let noop = |o2: bson::Document| {
        raw(bson::doc! {
            "op": "n", "ns": "shop.orders", "o": {"msg": "x"}, "o2": o2,
            "ts": bson::Timestamp { time: 6, increment: 1 }, "t": 1i64,
        })
    };
    let sharded = noop(bson::doc! {"shardCollection": "shop.orders", "shardKey": {"_id": 1}});
    let e = OplogEntry::parse(&sharded).unwrap();
    assert_eq!(f.check_entry(&e, "shop.orders", "shard01"), Ok(None));
    assert_eq!(
        f.check_entry(&e, "shop.orders", "shard02"),
        Err(DropReason::DdlOnOtherShard)
    );
    let other = noop(bson::doc! {"migrateChunkToNewShard": "shop.orders"});
    let e = OplogEntry::parse(&other).unwrap();
    assert_eq!(
        f.check_entry(&e, "shop.orders", "shard01"),
        Err(DropReason::Noop)
    );
}

#[test]
fn a_miss_asks_the_lookup_once_and_remembers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let p = PrimaryShards::with_lookup(Arc::new(move |db: &str| {
        counted.fetch_add(1, Ordering::SeqCst);
        (db == "shop").then(|| "shard02".to_owned())
    }));
    assert_eq!(p.primary_of("shop").as_deref(), Some("shard02"));
    assert_eq!(p.primary_of("shop").as_deref(), Some("shard02"));
    assert_eq!(p.primary_of("gone"), None);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A later catalog read without the database keeps what was learnt.
    p.update(HashMap::new());
    assert_eq!(p.primary_of("shop").as_deref(), Some("shard02"));
}

#[test]
fn transactions_and_internal_commands_are_not_ddl() {
    let txn = raw(bson::doc! {
        "op": "c", "ns": "admin.$cmd", "o": {"applyOps": []},
        "ts": bson::Timestamp { time: 7, increment: 1 }, "t": 1i64,
    });
    assert!(ddl_of(&OplogEntry::parse(&txn).unwrap()).is_none());
    let commit = cmd(bson::doc! {"commitTransaction": 1}, false);
    assert!(ddl_of(&OplogEntry::parse(&commit).unwrap()).is_none());
    let create = cmd(bson::doc! {"create": "items"}, false);
    assert_eq!(
        ddl_of(&OplogEntry::parse(&create).unwrap()),
        Some(Ddl {
            db: "shop",
            name: "create",
            notification: false
        })
    );
}

//! DDL through mongos and on a replica set member, driven by the official Rust `mongodb`
//! driver: which shard logs which entry, with which `o`, `o2` and `fromMigrate`, per
//! simulated version (the crate documentation cites the server source of each shape).

use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use mongosim::{Cluster, ClusterSpec, ReplicaSet, ReplicaSetSpec, ServerVersion};

const VERSIONS: [ServerVersion; 5] = [
    ServerVersion::V4_4,
    ServerVersion::V5_0,
    ServerVersion::V6_0,
    ServerVersion::V7_0,
    ServerVersion::V8_0,
];

async fn cluster(version: ServerVersion) -> (Cluster, Client) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        nodes_per_shard: 1,
        version,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let mongos = Client::with_uri_str(format!("{}?serverSelectionTimeoutMS=5000", cluster.uri()))
        .await
        .unwrap();
    (cluster, mongos)
}

/// The DDL entries of a shard (commands on application databases and no-ops carrying a
/// DDL `o2`), in oplog order.
fn ddl(cluster: &Cluster, shard: &str) -> Vec<Document> {
    let primary = cluster.primary_of(shard).unwrap();
    cluster
        .oplog_snapshot(primary)
        .iter()
        .map(|r: &RawDocumentBuf| Document::try_from(r.as_ref()).unwrap())
        .filter(|e| {
            let ns = e.get_str("ns").unwrap_or("");
            let user = !ns.is_empty()
                && !ns.starts_with("admin.")
                && !ns.starts_with("config.")
                && !ns.starts_with("local.");
            match e.get_str("op").unwrap_or("") {
                "c" => user,
                "n" => e
                    .get_document("o2")
                    .is_ok_and(|o2| o2.contains_key("shardCollection")),
                _ => false,
            }
        })
        .collect()
}

/// `"<command> <first value>[ fm]"` per entry: a compact picture of what a shard logged.
fn summary(entries: &[Document]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            let o = e.get_document("o").unwrap();
            let (name, value) = match e.get_str("op").unwrap() {
                "n" => {
                    let o2 = e.get_document("o2").unwrap();
                    (
                        "shardCollection",
                        o2.get("shardCollection").cloned().unwrap(),
                    )
                }
                _ => {
                    let (k, v) = o.iter().next().unwrap();
                    (k.as_str(), v.clone())
                }
            };
            let value = match value {
                Bson::String(s) => s,
                other => other.to_string(),
            };
            let fm = if e.get_bool("fromMigrate").unwrap_or(false) {
                " fm"
            } else {
                ""
            };
            format!("{name} {value}{fm}")
        })
        .collect()
}

async fn insert(client: &Client, db: &str, coll: &str, ids: &[i32]) {
    client
        .database(db)
        .collection::<Document>(coll)
        .insert_many(ids.iter().map(|i| doc! {"_id": *i, "v": *i}))
        .await
        .unwrap();
}

async fn collection_ddl_per_version(version: ServerVersion) {
    let (cluster, client) = cluster(version).await;
    let shop = client.database("shop");
    // _id 1 lands on shard01 (the primary shard), 1500 on shard02.
    insert(&client, "shop", "items", &[1, 1500]).await;
    let items = shop.collection::<Document>("items");
    items
        .create_index(
            IndexModel::builder()
                .keys(doc! {"v": 1})
                .options(IndexOptions::builder().name("v_1".to_owned()).build())
                .build(),
        )
        .await
        .unwrap();
    shop.run_command(doc! {"collMod": "items", "validationLevel": "moderate"})
        .await
        .unwrap();
    items.drop_index("v_1").await.unwrap();
    shop.run_command(doc! {"create": "logs", "capped": true, "size": 4096})
        .await
        .unwrap();
    let renamed = client
        .database("admin")
        .run_command(doc! {"renameCollection": "shop.items", "to": "shop.goods"})
        .await;
    let dropped = if version >= ServerVersion::V5_0 {
        renamed.unwrap();
        "goods"
    } else {
        let e = renamed.unwrap_err().to_string();
        assert!(e.contains("sharded"), "{e}");
        "items"
    };
    shop.collection::<Document>(dropped).drop().await.unwrap();
    client
        .database("admin")
        .run_command(doc! {"shardCollection": "shop.orders", "key": {"_id": 1}})
        .await
        .unwrap();

    // What each shard must have logged, from the version rules in the crate docs.
    let v6 = version >= ServerVersion::V6_0;
    let v7 = version >= ServerVersion::V7_0;
    let fm = |on: bool| if on { " fm" } else { "" };
    let mut s1: Vec<String> = vec![
        "create items".into(),
        "startIndexBuild items".into(),
        "commitIndexBuild items".into(),
        "collMod items".into(),
        "dropIndexes items".into(),
        "create logs".into(),
    ];
    let mut s2: Vec<String> = vec![
        "create items".into(),
        "startIndexBuild items".into(),
        "commitIndexBuild items".into(),
        "collMod items".into(),
        "dropIndexes items".into(),
    ];
    if version >= ServerVersion::V5_0 {
        s1.push("renameCollection shop.items".into());
        s2.push(format!("renameCollection shop.items{}", fm(v7)));
    }
    s1.push(format!("drop {dropped}"));
    s2.insert(s2.len(), format!("drop {dropped}{}", fm(v6)));
    s1.push("create orders".into());
    if v6 {
        s1.push("shardCollection shop.orders".into());
    }
    let got1 = summary(&ddl(&cluster, "shard01"));
    let got2 = summary(&ddl(&cluster, "shard02"));
    // The non-primary shard drops first: compare each shard's own order.
    assert_eq!(got1, s1, "{version}: shard01");
    assert_eq!(got2, s2, "{version}: shard02");

    // Field shapes on the primary shard.
    let e1 = ddl(&cluster, "shard01");
    let find = |name: &str| {
        e1.iter()
            .find(|e| e.get_document("o").unwrap().contains_key(name))
            .unwrap()
            .clone()
    };
    let start = find("startIndexBuild");
    let so = start.get_document("o").unwrap();
    assert!(matches!(so.get("indexBuildUUID"), Some(Bson::Binary(_))));
    assert_eq!(
        so.get_array("indexes").unwrap()[0],
        Bson::Document(doc! {"v": 2, "key": {"v": 1}, "name": "v_1"})
    );
    let cm = find("collMod");
    assert_eq!(
        cm.get_document("o").unwrap(),
        &doc! {"collMod": "items", "validationLevel": "moderate"}
    );
    let old = cm
        .get_document("o2")
        .unwrap()
        .get_document("collectionOptions_old")
        .unwrap();
    assert!(matches!(old.get("uuid"), Some(Bson::Binary(_))));
    let di = find("dropIndexes");
    assert_eq!(
        di.get_document("o").unwrap(),
        &doc! {"dropIndexes": "items", "index": "v_1"}
    );
    assert_eq!(
        di.get_document("o2").unwrap(),
        &doc! {"v": 2, "key": {"v": 1}, "name": "v_1"}
    );
    let logs = e1
        .iter()
        .find(|e| e.get_document("o").unwrap().get_str("create").ok() == Some("logs"))
        .unwrap();
    assert_eq!(
        logs.get_document("o").unwrap(),
        &doc! {"create": "logs", "capped": true, "size": 4096, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
    );
    let drop = find("drop");
    assert_eq!(drop.get_document("o2").unwrap(), &doc! {"numRecords": 1});
    if version >= ServerVersion::V5_0 {
        let rename = find("renameCollection");
        assert_eq!(
            rename.get_document("o").unwrap(),
            &doc! {"renameCollection": "shop.items", "to": "shop.goods", "stayTemp": false}
        );
        assert!(rename.get("o2").is_none());
    }
    if v6 {
        let n = e1
            .iter()
            .find(|e| e.get_str("op").ok() == Some("n"))
            .unwrap();
        assert_eq!(n.get_str("ns").unwrap(), "shop.orders");
        assert_eq!(
            n.get_document("o").unwrap(),
            &doc! {"msg": {"shardCollection": "shop.orders"}}
        );
        assert_eq!(
            n.get_document("o2").unwrap(),
            &doc! {"shardCollection": "shop.orders", "shardKey": {"_id": 1}, "unique": false, "numInitialChunks": 0i64, "presplitHashedZones": false}
        );
    }
    // The data followed: the renamed collection is gone, the capped one is there.
    let names = shop.list_collection_names().await.unwrap();
    assert!(names.contains(&"logs".to_owned()) && names.contains(&"orders".to_owned()));
    assert!(!names.contains(&"items".to_owned()) && !names.contains(&"goods".to_owned()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_ddl_is_logged_per_shard_as_each_version_logs_it() {
    for version in VERSIONS {
        collection_ddl_per_version(version).await;
    }
}

async fn drop_database_per_version(version: ServerVersion) {
    let (cluster, client) = cluster(version).await;
    // crm's primary shard is shard02.
    client
        .database("admin")
        .run_command(doc! {"enableSharding": "crm", "primaryShard": "shard02"})
        .await
        .unwrap();
    let primaries = client
        .database("config")
        .collection::<Document>("databases")
        .find_one(doc! {"_id": "crm"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(primaries.get_str("primary").unwrap(), "shard02");
    // The primary shard owns the first chunk: _id 1 on shard02, 1500 on shard01.
    insert(&client, "crm", "people", &[1, 1500]).await;
    insert(&client, "crm", "notes", &[2]).await;
    client.database("crm").drop().await.unwrap();

    let v5 = version >= ServerVersion::V5_0;
    let v6 = version >= ServerVersion::V6_0;
    let fm = if v6 { " fm" } else { "" };
    // Primary shard02: its creates, each collection's drop (after the other shard's), then
    // dropDatabase. shard01 holds people only.
    let s2 = vec![
        "create people".to_owned(),
        "create notes".to_owned(),
        "drop notes".to_owned(),
        "drop people".to_owned(),
        "dropDatabase 1".to_owned(),
    ];
    let mut s1 = vec!["create people".to_owned(), format!("drop people{fm}")];
    if v5 {
        s1.push("dropDatabase 1".to_owned());
    }
    assert_eq!(summary(&ddl(&cluster, "shard02")), s2, "{version}: shard02");
    assert_eq!(summary(&ddl(&cluster, "shard01")), s1, "{version}: shard01");
    let dbs = client.list_database_names().await.unwrap();
    assert!(!dbs.contains(&"crm".to_owned()), "{dbs:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_is_logged_on_the_primary_and_participants() {
    for version in VERSIONS {
        drop_database_per_version(version).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_member_logs_each_ddl_once_and_answers_errors() {
    let rs = ReplicaSet::start(ReplicaSetSpec {
        nodes: 1,
        version: ServerVersion::V7_0,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let primary = rs.primary().unwrap();
    let client = Client::with_uri_str(format!(
        "mongodb://{primary}/?directConnection=true&serverSelectionTimeoutMS=5000"
    ))
    .await
    .unwrap();
    let db = client.database("app");
    // An index on an empty collection is one createIndexes entry.
    db.run_command(doc! {"create": "a"}).await.unwrap();
    db.collection::<Document>("a")
        .create_index(IndexModel::builder().keys(doc! {"k": 1}).build())
        .await
        .unwrap();
    let e = db.run_command(doc! {"create": "a"}).await.unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let e = db
        .run_command(doc! {"collMod": "missing", "validationLevel": "off"})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ns does not exist"), "{e}");
    let e = db
        .run_command(doc! {"dropIndexes": "a", "index": "_id_"})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot drop _id index"), "{e}");
    let e = db
        .run_command(doc! {"createIndexes": "a", "indexes": [{"key": {"x": 1}}]})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("'name'"), "{e}");
    db.collection::<Document>("b")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    client
        .database("admin")
        .run_command(doc! {"renameCollection": "app.b", "to": "app.a", "dropTarget": true})
        .await
        .unwrap();
    db.drop().await.unwrap();
    let got: Vec<Document> = rs
        .oplog_snapshot(primary)
        .iter()
        .map(|r| Document::try_from(r.as_ref()).unwrap())
        .filter(|e| e.get_str("ns").is_ok_and(|ns| ns == "app.$cmd"))
        .collect();
    let got_summary = summary(&got);
    assert_eq!(
        got_summary,
        vec![
            "create a",
            "createIndexes a",
            "create b",
            "renameCollection app.b",
            "drop a",
            "dropDatabase 1"
        ],
    );
    let rename = got[3].get_document("o").unwrap();
    assert!(matches!(rename.get("dropTarget"), Some(Bson::Binary(_))));
    assert_eq!(got[3].get_document("o2").unwrap(), &doc! {"numRecords": 0});
    assert_eq!(
        got[1].get_document("o").unwrap(),
        &doc! {"createIndexes": "a", "v": 2, "key": {"k": 1}, "name": "k_1"}
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_collection_is_created_on_the_primary_shard_first() {
    let (cluster, client) = cluster(ServerVersion::V7_0).await;
    // _id 1500 lands on shard02 only; the database's primary shard holds the collection.
    insert(&client, "shop", "solo", &[1500]).await;
    assert_eq!(summary(&ddl(&cluster, "shard01")), vec!["create solo"]);
    assert_eq!(summary(&ddl(&cluster, "shard02")), vec!["create solo"]);
    cluster.shutdown().await;
}

/// Regression: DDL through mongos answered at once, before a majority held it, so a
/// `w: "majority"` DDL acknowledged on a primary cut off from its secondaries could be
/// rolled back (seen while adding DDL to the fault suite's workload). It now waits like a write, on
/// the members that logged it.
#[tokio::test]
async fn ddl_through_mongos_waits_for_its_write_concern() {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        nodes_per_shard: 3,
        noop_interval: Duration::from_secs(3600),
        election_timeout: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let mongos = Client::with_uri_str(format!("{}?serverSelectionTimeoutMS=5000", cluster.uri()))
        .await
        .unwrap();
    let db = mongos.database("shop");
    let majority = doc! {"w": "majority", "wtimeout": 300};
    let reply = db
        .run_command(doc! {"create": "ok", "writeConcern": majority.clone()})
        .await
        .unwrap();
    assert!(!reply.contains_key("writeConcernError"), "{reply}");
    // The database's primary shard loses its secondaries: nothing it logs can commit.
    let shard = cluster.database_primaries()["shop"].clone();
    let primary = cluster.primary_of(&shard).unwrap();
    for m in cluster.shard_members(&shard) {
        if m != primary {
            cluster.partition_node(m).await.unwrap();
        }
    }
    for cmd in [
        doc! {"create": "side", "writeConcern": majority.clone()},
        doc! {"createIndexes": "ok", "indexes": [{"key": {"x": 1}, "name": "x_1"}], "writeConcern": majority.clone()},
        doc! {"drop": "ok", "writeConcern": majority.clone()},
    ] {
        let reply = db.run_command(cmd.clone()).await;
        let wce = match &reply {
            Ok(r) => r
                .get_document("writeConcernError")
                .ok()
                .and_then(|e| e.get_i32("code").ok()),
            Err(e) => match e.kind.as_ref() {
                mongodb::error::ErrorKind::Write(
                    mongodb::error::WriteFailure::WriteConcernError(wce),
                ) => Some(wce.code),
                _ => None,
            },
        };
        assert_eq!(wce, Some(64), "{cmd}: {reply:?}");
    }
    cluster.shutdown().await;
}

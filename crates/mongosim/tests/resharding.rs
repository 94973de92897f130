//! Resharding, moveCollection, unshardCollection and movePrimary through mongos, driven by
//! the official Rust `mongodb` driver: which shard logs which entry during and at the end
//! of each operation, per simulated version (the crate documentation cites the server
//! source of each shape), and what the catalog says afterwards.

use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;
use mongosim::{Cluster, ClusterSpec, ServerVersion};

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

fn oplog(cluster: &Cluster, shard: &str) -> Vec<Document> {
    let primary = cluster.primary_of(shard).unwrap();
    cluster
        .oplog_snapshot(primary)
        .iter()
        .map(|r: &RawDocumentBuf| Document::try_from(r.as_ref()).unwrap())
        .collect()
}

/// `"<op> <ns> <detail>[ fm]"` for the entries of database `db` (commands on `db.$cmd`,
/// writes and no-ops on its collections): the detail is the command name and value, the
/// `_id` of a write, or the `o2` kind of a no-op.
fn summary(entries: &[Document], db: &str) -> Vec<String> {
    let prefix = format!("{db}.");
    entries
        .iter()
        .filter(|e| {
            e.get_str("ns")
                .is_ok_and(|ns| ns.starts_with(&prefix) || ns == db)
        })
        .map(|e| {
            let op = e.get_str("op").unwrap();
            let ns = e.get_str("ns").unwrap();
            let text = |v: &Bson| match v {
                Bson::String(s) => s.clone(),
                other => other.to_string(),
            };
            let detail = match op {
                "c" => {
                    let (k, v) = e.get_document("o").unwrap().iter().next().unwrap();
                    format!("{k} {}", text(v))
                }
                "n" => {
                    let o2 = e.get_document("o2").unwrap();
                    match o2.get_str("type") {
                        Ok(t) => t.to_owned(),
                        Err(_) => o2.keys().next().unwrap().clone(),
                    }
                }
                "u" => text(e.get_document("o2").unwrap().get("_id").unwrap()),
                _ => text(e.get_document("o").unwrap().get("_id").unwrap()),
            };
            let fm = if e.get_bool("fromMigrate").unwrap_or(false) {
                " fm"
            } else {
                ""
            };
            format!("{op} {ns} {detail}{fm}")
        })
        .collect()
}

/// The entries logged after the last one matching `mark` (the operation's own entries).
fn after(entries: Vec<String>, mark: &str) -> Vec<String> {
    let at = entries.iter().position(|e| e == mark).unwrap_or_else(|| {
        panic!("no {mark:?} in {entries:#?}");
    });
    entries[at..].to_vec()
}

async fn config(client: &Client, coll: &str, filter: Document) -> Vec<Document> {
    use futures::TryStreamExt;
    client
        .database("config")
        .collection::<Document>(coll)
        .find(filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn docs(client: &Client, ns: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    let (db, coll) = ns.split_once('.').unwrap();
    let mut out: Vec<Document> = client
        .database(db)
        .collection::<Document>(coll)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    out.sort_by_key(|d| d.get_i32("_id").unwrap());
    out
}

/// Runs `cmd` on admin through mongos in a task while resharding is held, waits until the
/// operation has cloned, runs `during`, releases it and returns the command's reply.
async fn held<F>(cluster: &Cluster, client: &Client, ns: &str, cmd: Document, during: F)
where
    F: std::future::Future<Output = ()>,
{
    cluster.hold_resharding(true);
    let admin = client.database("admin");
    let task = tokio::spawn(async move { admin.run_command(cmd).await });
    let started = cluster
        .wait_for(Duration::from_secs(10), |c| {
            c.resharding_in_progress().contains(&ns.to_owned())
        })
        .await;
    assert!(started, "the resharding of {ns} never started");
    during.await;
    cluster.hold_resharding(false);
    task.await.unwrap().unwrap();
    assert!(cluster.resharding_in_progress().is_empty());
}

async fn reshard_collection_per_version(version: ServerVersion) {
    let (cluster, client) = cluster(version).await;
    let items = client.database("shop").collection::<Document>("items");
    // _id 1 lands on shard01 (the primary shard), 1500 on shard02.
    items
        .insert_many([doc! {"_id": 1, "k": 1}, doc! {"_id": 1500, "k": 2}])
        .await
        .unwrap();
    let v6 = version >= ServerVersion::V6_0;
    let cmd = doc! {"reshardCollection": "shop.items", "key": {"k": 1}};
    held(&cluster, &client, "shop.items", cmd, async {
        // Written to the donors while the collection is copied.
        items.insert_one(doc! {"_id": 2, "k": 3}).await.unwrap();
        items
            .update_one(doc! {"_id": 1500}, doc! {"$set": {"k": 4}})
            .await
            .unwrap();
        items.delete_one(doc! {"_id": 1}).await.unwrap();
    })
    .await;
    // After the cut-over, writes go to the new placement.
    items.insert_one(doc! {"_id": 3, "k": 5}).await.unwrap();

    let s1 = summary(&oplog(&cluster, "shard01"), "shop");
    let s2 = summary(&oplog(&cluster, "shard02"), "shop");
    let fm = if v6 { " fm" } else { "" };
    let begin = "n shop.items reshardBegin fm".to_owned();
    // shard01: donor only. Its writes during the operation are ordinary writes.
    let mut want1 = vec![
        begin.clone(),
        "i shop.items 2".to_owned(),
        "d shop.items 1".to_owned(),
        "n shop.items reshardFinalOp".to_owned(),
        format!("c shop.$cmd drop items{fm}"),
    ];
    if v6 {
        want1.push("n shop.items reshardCollection".to_owned());
    }
    assert_eq!(after(s1, &begin), want1, "{version}");
    // shard02: donor and recipient. The temporary collection is named after the
    // collection's UUID, and its writes are the cloner's and the oplog applier's.
    let temp = s2
        .iter()
        .filter_map(|e| e.strip_prefix("c shop.$cmd create "))
        .find(|t| t.starts_with("system.resharding."))
        .unwrap_or_else(|| panic!("no temporary collection: {s2:#?}"))
        .to_owned();
    let t = format!("shop.{temp}");
    let want2 = vec![
        format!("c shop.$cmd create {temp}"),
        begin.clone(),
        format!("i {t} 1"),
        format!("i {t} 1500"),
        "u shop.items 1500".to_owned(),
        format!("i {t} 2"),
        format!("u {t} 1500"),
        format!("d {t} 1"),
        "n shop.items reshardFinalOp".to_owned(),
        format!("n {t} reshardDoneCatchUp"),
        format!("c shop.$cmd renameCollection {t}{fm}"),
        "i shop.items 3".to_owned(),
    ];
    assert_eq!(
        after(s2, &format!("c shop.$cmd create {temp}")),
        want2,
        "{version}"
    );
    // Entry details: the rename drops the old collection, the notification names the key.
    let e2 = oplog(&cluster, "shard02");
    let rename = e2
        .iter()
        .find(|e| {
            e.get_document("o")
                .is_ok_and(|o| o.contains_key("renameCollection"))
        })
        .unwrap();
    let o = rename.get_document("o").unwrap();
    assert_eq!(o.get_str("to").unwrap(), "shop.items");
    assert!(o.get("dropTarget").is_some(), "{rename}");
    let e1 = oplog(&cluster, "shard01");
    let begin_entry = e1
        .iter()
        .find(|e| e.get_str("op").ok() == Some("n") && e.get_str("ns").ok() == Some("shop.items"))
        .unwrap();
    let o2 = begin_entry.get_document("o2").unwrap();
    let resharding_uuid = o2.get("reshardingUUID").unwrap().clone();
    if v6 {
        assert_eq!(o2.get_str("reshardBegin").unwrap(), "shop.items");
        let note = e1
            .iter()
            .find(|e| {
                e.get_document("o2")
                    .is_ok_and(|o2| o2.contains_key("reshardCollection"))
            })
            .unwrap();
        let o2 = note.get_document("o2").unwrap();
        assert_eq!(o2.get_document("shardKey").unwrap(), &doc! {"k": 1});
        assert_eq!(o2.get_document("oldShardKey").unwrap(), &doc! {"_id": 1});
        assert_eq!(o2.get("reshardUUID"), Some(&resharding_uuid));
        assert_eq!(
            o2.get_str("provenance").ok(),
            (version >= ServerVersion::V8_0).then_some("reshardCollection")
        );
    } else {
        assert_eq!(o2.get_str("type").unwrap(), "reshardBegin");
    }
    // Donor writes during the operation name the recipient (`destinedRecipient`, placed
    // as oplog_entry.idl orders it: before the optime); the writes before do not.
    let write = |id: i32| {
        e1.iter()
            .find(|e| {
                e.get_str("op").ok() == Some("i")
                    && e.get_str("ns").ok() == Some("shop.items")
                    && e.get_document("o").unwrap().get_i32("_id").ok() == Some(id)
            })
            .unwrap()
            .clone()
    };
    assert!(write(1).get("destinedRecipient").is_none());
    let during = write(2);
    assert_eq!(during.get_str("destinedRecipient").unwrap(), "shard02");
    let keys: Vec<&str> = during.keys().map(String::as_str).collect();
    let at = |k: &str| keys.iter().position(|x| *x == k).unwrap();
    assert!(at("o") < at("destinedRecipient") && at("destinedRecipient") < at("ts"));
    let final_op = e1
        .iter()
        .find(|e| {
            e.get_document("o2")
                .is_ok_and(|o2| o2.get_str("type").ok() == Some("reshardFinalOp"))
        })
        .unwrap();
    assert_eq!(final_op.get_str("destinedRecipient").unwrap(), "shard02");
    // The renamed collection carries the operation's UUID.
    assert_eq!(rename.get("ui"), Some(&resharding_uuid));
    // The catalog: the new key, one chunk on the recipient.
    let coll = config(&client, "collections", doc! {"_id": "shop.items"}).await;
    assert_eq!(coll[0].get_document("key").unwrap(), &doc! {"k": 1});
    let chunks = config(&client, "chunks", doc! {"ns": "shop.items"}).await;
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].get_str("shard").unwrap(), "shard02");
    assert_eq!(
        chunks[0].get_document("min").unwrap(),
        &doc! {"k": Bson::MinKey}
    );
    // Every document, as the writes left it.
    assert_eq!(
        docs(&client, "shop.items").await,
        vec![
            doc! {"_id": 2, "k": 3},
            doc! {"_id": 3, "k": 5},
            doc! {"_id": 1500, "k": 4}
        ],
        "{version}"
    );
    // Dropped and created again, the collection is back on the default key and chunks.
    items.drop().await.unwrap();
    items.insert_one(doc! {"_id": 1}).await.unwrap();
    let coll = config(&client, "collections", doc! {"_id": "shop.items"}).await;
    assert_eq!(coll[0].get_document("key").unwrap(), &doc! {"_id": 1});
    assert_eq!(
        config(&client, "chunks", doc! {"ns": "shop.items"})
            .await
            .len(),
        2
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_collection_5_0() {
    reshard_collection_per_version(ServerVersion::V5_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_collection_6_0() {
    reshard_collection_per_version(ServerVersion::V6_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_collection_7_0() {
    reshard_collection_per_version(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_collection_8_0() {
    reshard_collection_per_version(ServerVersion::V8_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_missing_from_older_versions_are_refused() {
    let (cluster, client) = cluster(ServerVersion::V4_4).await;
    let admin = client.database("admin");
    client
        .database("shop")
        .collection::<Document>("items")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let e = admin
        .run_command(doc! {"reshardCollection": "shop.items", "key": {"k": 1}})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no such command"), "{e}");
    cluster.shutdown().await;
    let (cluster, client) = self::cluster(ServerVersion::V7_0).await;
    let admin = client.database("admin");
    for cmd in [
        doc! {"moveCollection": "shop.items", "toShard": "shard02"},
        doc! {"unshardCollection": "shop.items"},
    ] {
        let e = admin.run_command(cmd).await.unwrap_err();
        assert!(e.to_string().contains("no such command"), "{e}");
    }
    // Bad input gets an error, not a panic.
    let e = admin
        .run_command(doc! {"reshardCollection": "shop.items", "key": {"k": "up"}})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Unsupported shard key"), "{e}");
    let e = admin
        .run_command(doc! {"reshardCollection": "shop.nothing", "key": {"k": 1}})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not tracked"), "{e}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_and_unshard_collection_8_0() {
    let (cluster, client) = cluster(ServerVersion::V8_0).await;
    let items = client.database("shop").collection::<Document>("items");
    items
        .insert_many([doc! {"_id": 1}, doc! {"_id": 1500}])
        .await
        .unwrap();
    // moveCollection: everything to shard01, the primary shard (donor and recipient);
    // shard02 is a donor only.
    let cmd = doc! {"moveCollection": "shop.items", "toShard": "shard01"};
    held(&cluster, &client, "shop.items", cmd, async {
        items.insert_one(doc! {"_id": 1600}).await.unwrap();
    })
    .await;
    let s2 = summary(&oplog(&cluster, "shard02"), "shop");
    let begin = "n shop.items reshardBegin fm";
    assert_eq!(
        after(s2, begin),
        vec![
            begin.to_owned(),
            "i shop.items 1600".to_owned(),
            "n shop.items reshardFinalOp".to_owned(),
            "c shop.$cmd drop items fm".to_owned(),
        ]
    );
    let e1 = oplog(&cluster, "shard01");
    let note = e1
        .iter()
        .rev()
        .find(|e| {
            e.get_document("o2")
                .is_ok_and(|o2| o2.contains_key("reshardCollection"))
        })
        .unwrap();
    let o2 = note.get_document("o2").unwrap();
    assert_eq!(o2.get_str("provenance").unwrap(), "moveCollection");
    assert_eq!(o2.get_document("shardKey").unwrap(), &doc! {"_id": 1});
    let coll = config(&client, "collections", doc! {"_id": "shop.items"}).await;
    assert_eq!(coll[0].get_bool("unsplittable").ok(), Some(true));
    let chunks = config(&client, "chunks", doc! {"ns": "shop.items"}).await;
    assert_eq!(chunks[0].get_str("shard").unwrap(), "shard01");
    // unshardCollection to shard02: shard01 is now the only donor.
    client
        .database("admin")
        .run_command(doc! {"unshardCollection": "shop.items", "toShard": "shard02"})
        .await
        .unwrap();
    let e1 = summary(&oplog(&cluster, "shard01"), "shop");
    assert_eq!(e1.last().unwrap(), "n shop.items reshardCollection");
    assert_eq!(e1[e1.len() - 2], "c shop.$cmd drop items fm");
    let chunks = config(&client, "chunks", doc! {"ns": "shop.items"}).await;
    assert_eq!(chunks[0].get_str("shard").unwrap(), "shard02");
    let ids: Vec<i32> = docs(&client, "shop.items")
        .await
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(ids, vec![1, 1500, 1600]);
    cluster.shutdown().await;
}

async fn move_primary_per_version(version: ServerVersion) {
    let (cluster, client) = cluster(version).await;
    let shop = client.database("shop");
    // An unsharded collection on the primary shard (shard01): created through mongos,
    // written on the shard itself (mongos shards every collection it writes here).
    shop.run_command(doc! {"create": "settings"}).await.unwrap();
    let p1 = cluster.primary_of("shard01").unwrap();
    let reply = cluster
        .command(
            p1,
            doc! {"insert": "settings", "documents": [{"_id": 1}, {"_id": 2}], "$db": "shop"},
        )
        .await;
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
    client
        .database("admin")
        .run_command(doc! {"movePrimary": "shop", "to": "shard02"})
        .await
        .unwrap();
    let mut want1 = Vec::new();
    if version >= ServerVersion::V7_0 {
        want1.push("n shop movePrimary".to_owned());
    }
    want1.push("c shop.$cmd drop settings".to_owned());
    let s1 = summary(&oplog(&cluster, "shard01"), "shop");
    assert_eq!(s1[s1.len() - want1.len()..].to_vec(), want1, "{version}");
    let s2 = summary(&oplog(&cluster, "shard02"), "shop");
    assert_eq!(
        s2,
        vec![
            "c shop.$cmd create settings fm",
            "i shop.settings 1 fm",
            "i shop.settings 2 fm"
        ],
        "{version}"
    );
    let dbs = config(&client, "databases", doc! {"_id": "shop"}).await;
    assert_eq!(dbs[0].get_str("primary").unwrap(), "shard02");
    if version >= ServerVersion::V7_0 {
        let e = oplog(&cluster, "shard01");
        let note = e
            .iter()
            .find(|e| e.get_str("ns").ok() == Some("shop") && e.get_str("op").ok() == Some("n"))
            .unwrap();
        assert_eq!(
            note.get_document("o2").unwrap(),
            &doc! {"movePrimary": "shop", "from": "shard01", "to": "shard02"}
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_primary_6_0() {
    move_primary_per_version(ServerVersion::V6_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_primary_7_0() {
    move_primary_per_version(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_primary_8_0() {
    move_primary_per_version(ServerVersion::V8_0).await;
}

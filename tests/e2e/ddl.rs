//! DDL end to end, on every simulated version: each operation run through mongos with the
//! Rust driver must reach the output exactly once, from its database's primary shard,
//! in order with the data written around it — although MongoDB logs most of them on
//! several shards (a drop on every shard, marked `fromMigrate` on the non-primary ones only
//! from 6.0; a rename on every shard from 5.0, marked from 7.0; index builds and collMod on
//! every shard owning chunks, never marked; dropDatabase on the primary and, from 5.0, the
//! other shards). The expected records below come from those behaviours (mongosim's crate
//! documentation cites the server source of each), not from quorumtail's filter.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use serde_json::Value;

use crate::support::{records, start, wait_until};

/// DDL names a record may carry in `o` (or `o2` for a notification no-op).
const DDL: &[&str] = &[
    "create",
    "drop",
    "renameCollection",
    "dropDatabase",
    "createIndexes",
    "startIndexBuild",
    "commitIndexBuild",
    "dropIndexes",
    "collMod",
];

/// `"<op> <what>"`: `i <coll> <_id>` for an insert, `c <command> <value>` for a command,
/// `n shardCollection <ns>` for the notification no-op.
fn summary(r: &Value) -> String {
    let e = &r["entry"];
    let coll = r["ns"]
        .as_str()
        .unwrap()
        .split_once('.')
        .map_or("", |(_, c)| c);
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match r["op"].as_str().unwrap() {
        "i" => format!("i {coll} {}", text(&e["o"]["_id"])),
        "c" => {
            let name = DDL
                .iter()
                .find(|k| e["o"].get(**k).is_some())
                .unwrap_or_else(|| panic!("not a DDL record: {r}"));
            format!("c {name} {}", text(&e["o"][*name]))
        }
        "n" => format!("n shardCollection {}", text(&e["o2"]["shardCollection"])),
        other => format!("{other} {coll}"),
    }
}

/// The summaries of one shard's records on database `db`, in output order.
fn of(recs: &[Value], shard: &str, db: &str) -> Vec<String> {
    recs.iter()
        .filter(|r| r["shard"] == shard)
        .filter(|r| {
            r["ns"]
                .as_str()
                .is_some_and(|ns| ns.split('.').next() == Some(db) && !ns.ends_with(".done"))
        })
        .map(summary)
        .collect()
}

async fn insert(client: &Client, db: &str, coll: &str, ids: &[i32]) {
    client
        .database(db)
        .collection::<Document>(coll)
        .insert_many(ids.iter().map(|i| doc! {"_id": *i}))
        .await
        .unwrap();
}

async fn index(client: &Client, db: &str, coll: &str) {
    client
        .database(db)
        .collection::<Document>(coll)
        .create_index(
            IndexModel::builder()
                .keys(doc! {"v": 1})
                .options(IndexOptions::builder().name("v_1".to_owned()).build())
                .build(),
        )
        .await
        .unwrap();
}

async fn run(version: ServerVersion) {
    let cluster = Cluster::start(ClusterSpec {
        shards: 2,
        version,
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let discovery = format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"200ms\"\n",
        cluster.mongos_addr()
    );
    let q = start(tmp.path(), &discovery, "[start]\nposition = \"earliest\"\n");
    let client = Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let admin = client.database("admin");
    let shop = client.database("shop");
    let v5 = version >= ServerVersion::V5_0;
    let v6 = version >= ServerVersion::V6_0;

    // shop: primary shard shard01 (the first). _id 1 and 2 live there, 1500 on shard02.
    insert(&client, "shop", "items", &[1, 1500]).await;
    index(&client, "shop", "items").await;
    insert(&client, "shop", "items", &[2]).await;
    shop.run_command(doc! {"collMod": "items", "validationLevel": "moderate"})
        .await
        .unwrap();
    shop.collection::<Document>("items")
        .drop_index("v_1")
        .await
        .unwrap();
    shop.run_command(doc! {"create": "logs", "capped": true, "size": 4096})
        .await
        .unwrap();
    let renamed = admin
        .run_command(doc! {"renameCollection": "shop.items", "to": "shop.goods"})
        .await;
    // 4.4 refuses to rename a sharded collection: nothing to emit.
    let live = if v5 {
        renamed.unwrap();
        "goods"
    } else {
        assert!(renamed.is_err());
        "items"
    };
    insert(&client, "shop", live, &[3]).await;
    shop.collection::<Document>(live).drop().await.unwrap();
    admin
        .run_command(doc! {"shardCollection": "shop.orders", "key": {"_id": 1}})
        .await
        .unwrap();

    // crm: primary shard shard02, which owns the first chunk: _id 1 there, 1500 on shard01.
    admin
        .run_command(doc! {"enableSharding": "crm", "primaryShard": "shard02"})
        .await
        .unwrap();
    insert(&client, "crm", "people", &[1, 1500]).await;
    index(&client, "crm", "people").await;
    // quorumtail learns crm's primary shard while the database exists (a database's
    // entries read after it was dropped would find no primary shard in the catalog).
    wait_until(30, "crm's first records", || {
        records(&q.out).iter().any(|r| r["ns"] == "crm.$cmd")
    })
    .await;
    client.database("crm").drop().await.unwrap();
    // Written last on each shard: once out, every earlier record of its shard is too.
    insert(&client, "shop", "done", &[1, 1500]).await;
    wait_until(30, "the last record of each shard", || {
        records(&q.out)
            .iter()
            .filter(|r| r["ns"] == "shop.done")
            .count()
            == 2
    })
    .await;
    // A moment for anything wrongly emitted after them (e.g. a late duplicate).
    tokio::time::sleep(Duration::from_millis(500)).await;
    q.stop().await;
    let recs = records(&tmp.path().join("out.jsonl"));

    let mut shop1: Vec<String> = [
        "c create items",
        "i items 1",
        "c commitIndexBuild items",
        "i items 2",
        "c collMod items",
        "c dropIndexes items",
        "c create logs",
    ]
    .map(String::from)
    .to_vec();
    if v5 {
        shop1.push("c renameCollection shop.items".into());
    }
    shop1.push(format!("i {live} 3"));
    shop1.push(format!("c drop {live}"));
    shop1.push("c create orders".into());
    if v6 {
        shop1.push("n shardCollection shop.orders".into());
    }
    // The marker's collection, created implicitly on both shards, once from the primary.
    shop1.push("c create done".into());
    assert_eq!(
        of(&recs, "shard01", "shop"),
        shop1,
        "{version}: shop on shard01"
    );
    assert_eq!(
        of(&recs, "shard02", "shop"),
        vec!["i items 1500"],
        "{version}: shop on shard02"
    );
    assert_eq!(
        of(&recs, "shard02", "crm"),
        vec![
            "c create people",
            "i people 1",
            "c commitIndexBuild people",
            "c drop people",
            "c dropDatabase 1",
        ],
        "{version}: crm on shard02"
    );
    assert_eq!(
        of(&recs, "shard01", "crm"),
        vec!["i people 1500"],
        "{version}: crm on shard01"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ddl_operation_is_one_record_4_4() {
    run(ServerVersion::V4_4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ddl_operation_is_one_record_5_0() {
    run(ServerVersion::V5_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ddl_operation_is_one_record_6_0() {
    run(ServerVersion::V6_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ddl_operation_is_one_record_7_0() {
    run(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ddl_operation_is_one_record_8_0() {
    run(ServerVersion::V8_0).await;
}

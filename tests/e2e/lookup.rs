//! `[sink] full_document` end to end: updates written through mongos by the Rust driver
//! come out with the whole document, read after the update (never an older version), in
//! each format (`change-event`: `fullDocument`; `debezium`: `after`; `oplog`: the
//! envelope's `fullDocument`); a document deleted after its update gives `null` and the
//! `notFound` marker; `required` stops the shard with an error naming the document and
//! the entry; and a document moved to another shard since its update is found on its new
//! owner when the discovery URI is a mongos.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bson::{doc, Bson, Document};
use mongosim::{Cluster, ClusterSpec};
use serde_json::Value;

use crate::support::{records, shards_toml, start_text, wait_until, Running};

async fn cluster() -> Cluster {
    Cluster::start(ClusterSpec {
        shards: 2,
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    })
    .await
    .unwrap()
}

/// quorumtail on `topology` with a file sink to `dir/<name>.jsonl` and `sink` lines.
fn run(dir: &Path, name: &str, topology: &str, sink: &str) -> Running {
    let out = dir.join(format!("{name}.jsonl"));
    let mut q = start_text(&format!(
        "{topology}\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\npath = {:?}\n{sink}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"earliest\"\n",
        out.display().to_string(),
        dir.join(format!("{name}.cp.json")).display().to_string()
    ));
    q.out = out;
    q
}

/// Extended JSON to BSON (relaxed, or the strict strings of Debezium's `after`).
fn bson_doc(v: &Value) -> Document {
    match Bson::try_from(v.clone()).unwrap() {
        Bson::Document(d) => d,
        other => panic!("not a document: {other}"),
    }
}

/// Updates interleaved with reads: the versions each document goes through, as change
/// events show them (insert, then each update's effect), against what each update
/// event's `fullDocument` holds: a version at or after the update's own.
fn check_versions(events: &[Value]) -> usize {
    let mut history: BTreeMap<String, Vec<Document>> = BTreeMap::new();
    let mut checked = 0;
    // First the versions, then each update's document against those from its own on.
    let mut updates = Vec::new();
    for ev in events {
        let key = ev["documentKey"]["_id"].to_string();
        match ev["operationType"].as_str().unwrap_or("") {
            "insert" | "replace" => history
                .entry(key)
                .or_default()
                .push(bson_doc(&ev["fullDocument"])),
            "update" => {
                let versions = history.entry(key.clone()).or_default();
                let pre = versions
                    .last()
                    .cloned()
                    .expect("an update of a known document");
                let d = bson_doc(&ev["updateDescription"]);
                let desc = quorumtail_events::UpdateDescription {
                    updated_fields: d
                        .get_document("updatedFields")
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    removed_fields: d
                        .get_array("removedFields")
                        .unwrap()
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    truncated_arrays: Vec::new(),
                    disambiguated_paths: Vec::new(),
                };
                versions.push(quorumtail_events::apply(&pre, &desc).unwrap());
                updates.push((key, versions.len() - 1, ev.clone()));
            }
            _ => {}
        }
    }
    for (key, at, ev) in updates {
        assert_eq!(ev["fullDocumentLookup"], "found", "{ev}");
        let full = bson_doc(&ev["fullDocument"]);
        let versions = &history[&key];
        assert!(
            versions[at..].contains(&full),
            "the update's document {full} is not one of the versions from the update on: {:#?}",
            &versions[at..]
        );
        checked += 1;
    }
    checked
}

/// Change events while updates go on: each update carries a version of its document no
/// older than the update (the lookup runs after the update is majority committed and reads
/// with afterClusterTime = its cluster time, so it may see later updates, never earlier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_carry_their_document_as_of_a_time_no_older_than_the_update() {
    let cluster = cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let q = run(
        tmp.path(),
        "events",
        &shards_toml(&cluster),
        "format = \"change-event\"\nfull_document = \"lookup\"\n",
    );
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client.database("shop").collection::<Document>("people");
    let ids: Vec<i32> = (0..6).chain(1000..1006).collect();
    for &i in &ids {
        coll.insert_one(doc! {"_id": i, "n": 0, "sub": {"x": 0}})
            .await
            .unwrap();
    }
    for round in 1..=8 {
        for &i in &ids {
            let u = if round % 3 == 0 {
                doc! {"$unset": {"sub.x": ""}, "$set": {"r": round}}
            } else {
                doc! {"$inc": {"n": 1}, "$set": {"sub.x": round}}
            };
            coll.update_one(doc! {"_id": i}, u).await.unwrap();
        }
    }
    let want = ids.len() * 8;
    let out = q.out.clone();
    wait_until(60, "every update's record", || {
        records(&out)
            .iter()
            .filter(|e| e["operationType"] == "update")
            .count()
            == want
    })
    .await;
    let events = records(&out);
    assert_eq!(check_versions(&events), want);
    // Inserts keep their own document and carry no marker.
    for ev in events.iter().filter(|e| e["operationType"] == "insert") {
        assert!(ev.get("fullDocumentLookup").is_none(), "{ev}");
    }
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");
    let lookups: u64 = report.shards.values().map(|s| s.lookups).sum();
    assert_eq!(lookups as usize, want);
    cluster.shutdown().await;
}

/// A document deleted after its update: the update's record says so, in every format
/// (`null` and `"fullDocumentLookup": "notFound"`), while a live document's update
/// carries it; with `required` the shard stops and the error names the document and the
/// entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_documents_give_null_and_a_marker_or_stop_the_shard_when_required() {
    let cluster = cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client.database("shop").collection::<Document>("people");
    for i in [1, 2] {
        coll.insert_one(doc! {"_id": i, "v": 0}).await.unwrap();
        coll.update_one(doc! {"_id": i}, doc! {"$set": {"v": 1}})
            .await
            .unwrap();
    }
    coll.delete_one(doc! {"_id": 2}).await.unwrap();
    let shards = shards_toml(&cluster);

    // change-event: fullDocument.
    let q = run(
        tmp.path(),
        "events",
        &shards,
        "format = \"change-event\"\nfull_document = \"lookup\"\n",
    );
    let out = q.out.clone();
    let updates = |out: &Path, op: &str, field: &str| -> Vec<Value> {
        records(out)
            .into_iter()
            .filter(|r| r[field] == op)
            .collect()
    };
    wait_until(60, "the change events of both updates", || {
        updates(&out, "update", "operationType").len() == 2
    })
    .await;
    let evs = updates(&out, "update", "operationType");
    let (live, gone) = (&evs[0], &evs[1]);
    assert_eq!(live["documentKey"]["_id"], 1);
    assert_eq!(live["fullDocument"], serde_json::json!({"_id": 1, "v": 1}));
    assert_eq!(live["fullDocumentLookup"], "found");
    assert_eq!(gone["documentKey"]["_id"], 2);
    assert!(gone["fullDocument"].is_null() && gone.get("fullDocument").is_some());
    assert_eq!(gone["fullDocumentLookup"], "notFound");
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");
    let not_found: u64 = report.shards.values().map(|s| s.lookups_not_found).sum();
    assert_eq!(not_found, 1);

    // debezium: after.
    let q = run(
        tmp.path(),
        "debezium",
        &shards,
        "format = \"debezium\"\nfull_document = \"lookup\"\n",
    );
    let out = q.out.clone();
    let values = |out: &Path| -> Vec<Value> {
        records(out)
            .into_iter()
            .map(|r| r["value"].clone())
            .filter(|v| v["op"] == "u")
            .collect()
    };
    wait_until(60, "the Debezium records of both updates", || {
        values(&out).len() == 2
    })
    .await;
    let vals = values(&out);
    let after: Value = serde_json::from_str(vals[0]["after"].as_str().unwrap()).unwrap();
    assert_eq!(bson_doc(&after), doc! {"_id": 1, "v": 1});
    assert_eq!(vals[0]["fullDocumentLookup"], "found");
    assert!(vals[0]["updateDescription"].is_object());
    assert!(vals[1]["after"].is_null());
    assert_eq!(vals[1]["fullDocumentLookup"], "notFound");
    assert!(q.stop().await.ok());

    // oplog: the envelope's fullDocument, next to the entry.
    let q = run(tmp.path(), "oplog", &shards, "full_document = \"lookup\"\n");
    let out = q.out.clone();
    wait_until(60, "the oplog records of both updates", || {
        updates(&out, "u", "op").len() == 2
    })
    .await;
    let recs = updates(&out, "u", "op");
    assert_eq!(
        recs[0]["fullDocument"],
        serde_json::json!({"_id": 1, "v": 1})
    );
    assert_eq!(recs[0]["fullDocumentLookup"], "found");
    assert!(recs[0]["entry"]["o"].is_object(), "the entry stays whole");
    assert!(recs[1]["fullDocument"].is_null());
    assert_eq!(recs[1]["fullDocumentLookup"], "notFound");
    assert!(q.stop().await.ok());

    // required: the shard stops before the update whose document is gone.
    let q = run(
        tmp.path(),
        "required",
        &shards,
        "format = \"change-event\"\nfull_document = \"required\"\n",
    );
    let status = q.status.clone();
    let shard = cluster.shard_names()[0].clone();
    wait_until(60, "the shard to stop", || {
        status.shard(&shard).is_some_and(|s| s.failed)
    })
    .await;
    let out = q.out.clone();
    let report = q.stop().await;
    let err = report.failed.join("\n");
    assert!(err.contains(&format!("shard {shard}")), "{err}");
    assert!(err.contains("full_document = \"required\""), "{err}");
    assert!(
        err.contains("{\"_id\":2}") && err.contains("shop.people"),
        "{err}"
    );
    assert!(err.contains("updated by the entry at"), "{err}");
    // Nothing after the failing update was delivered, the live update before it was.
    let evs = updates(&out, "update", "operationType");
    assert_eq!(evs.len(), 1, "{evs:#?}");
    assert_eq!(evs[0]["documentKey"]["_id"], 1);
    assert!(records(&out)
        .iter()
        .all(|e| e["documentKey"]["_id"] != 2 || e["operationType"] == "insert"));
    cluster.shutdown().await;
}

/// A document updated on one shard and then moved to another: through a mongos discovery
/// URI the lookup is routed to its new owner and finds it; read from the shard that
/// logged the update, it is gone there (`notFound`), the caveat the README names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrated_documents_are_found_on_their_new_owner_through_mongos() {
    let cluster = cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client.database("shop").collection::<Document>("people");
    coll.insert_one(doc! {"_id": 5, "v": 0}).await.unwrap();
    coll.update_one(doc! {"_id": 5}, doc! {"$set": {"v": 1}})
        .await
        .unwrap();
    let names = cluster.shard_names();
    cluster
        .move_chunk("shop.people", 5, &names[1])
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 5}, doc! {"$set": {"moved": true}})
        .await
        .unwrap();
    let now = doc! {"_id": 5, "v": 1, "moved": true};

    let first_update = |out: &Path| -> Option<Value> {
        records(out)
            .into_iter()
            .find(|e| e["operationType"] == "update" && e["shard"] == names[0].as_str())
    };
    let discovery = format!(
        "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"200ms\"\n",
        cluster.mongos_addr()
    );
    let q = run(
        tmp.path(),
        "routed",
        &discovery,
        "format = \"change-event\"\nfull_document = \"required\"\n",
    );
    let out = q.out.clone();
    wait_until(60, "the update logged on the first shard", || {
        first_update(&out).is_some()
    })
    .await;
    let ev = first_update(&out).unwrap();
    assert_eq!(bson_doc(&ev["fullDocument"]), now, "{ev}");
    assert_eq!(ev["fullDocumentLookup"], "found");
    let report = q.stop().await;
    assert!(report.ok(), "{report:?}");

    let q = run(
        tmp.path(),
        "direct",
        &shards_toml(&cluster),
        "format = \"change-event\"\nfull_document = \"lookup\"\n",
    );
    let out = q.out.clone();
    wait_until(60, "the update logged on the first shard", || {
        first_update(&out).is_some()
    })
    .await;
    let ev = first_update(&out).unwrap();
    assert_eq!(ev["fullDocumentLookup"], "notFound", "{ev}");
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

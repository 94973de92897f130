//! `[sink] format = "change-event"` end to end: documents written and changed through
//! mongos by the Rust driver with update operators ($set, $unset, $inc on nested paths,
//! creating sub-documents), replacements and deletes; and, in the decoder's property
//! test, random updates with the array operators on arrays nested in documents and
//! documents nested in arrays. From 5.0 these are logged as `$v: 2` deltas with nested sub-diffs. A consumer that replays the
//! events (insert: the full document; update: the update description applied with
//! `quorumtail_events::apply`; replace; delete) must end with exactly the documents the
//! cluster holds, on a version that logs `$v: 2` deltas and on one that logs `$set`/`$unset`.

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Bson, Document};
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use serde_json::Value;

use crate::support::{records, shards_toml, start_text};

/// Replays change events into documents keyed by (namespace, `_id` as JSON).
pub(crate) fn replay(events: &[Value]) -> Result<BTreeMap<(String, String), Document>, String> {
    let mut docs = BTreeMap::new();
    for ev in events {
        let ns = format!(
            "{}.{}",
            ev["ns"]["db"].as_str().unwrap_or(""),
            ev["ns"]["coll"].as_str().unwrap_or("")
        );
        let key = (ns, ev["documentKey"]["_id"].to_string());
        let bson_of = |v: &Value| -> Result<Document, String> {
            match Bson::try_from(v.clone()).map_err(|e| e.to_string())? {
                Bson::Document(d) => Ok(d),
                other => Err(format!("not a document: {other}")),
            }
        };
        match ev["operationType"].as_str().unwrap_or("") {
            "insert" | "replace" => {
                docs.insert(key, bson_of(&ev["fullDocument"])?);
            }
            "update" => {
                let pre = docs
                    .get(&key)
                    .ok_or_else(|| format!("update of an unknown document {key:?}"))?;
                let d = bson_of(&ev["updateDescription"])?;
                let desc = quorumtail_events::UpdateDescription {
                    updated_fields: d
                        .get_document("updatedFields")
                        .map_err(|e| e.to_string())?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    removed_fields: d
                        .get_array("removedFields")
                        .map_err(|e| e.to_string())?
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    truncated_arrays: d
                        .get_array("truncatedArrays")
                        .map_err(|e| e.to_string())?
                        .iter()
                        .filter_map(|t| t.as_document())
                        .map(|t| {
                            (
                                t.get_str("field").unwrap_or("").to_owned(),
                                t.get_i32("newSize").unwrap_or(0) as u32,
                            )
                        })
                        .collect(),
                    disambiguated_paths: Vec::new(),
                };
                let post = quorumtail_events::apply(pre, &desc)?;
                docs.insert(key, post);
            }
            "delete" => {
                docs.remove(&key);
            }
            _ => {}
        }
    }
    Ok(docs)
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
    let out = tmp.path().join("events.jsonl");
    let q = start_text(&format!(
        "{}\n[mongo]\nmax_await = \"100ms\"\n[sink]\nkind = \"file\"\nformat = \"change-event\"\npath = {:?}\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[start]\nposition = \"earliest\"\n",
        shards_toml(&cluster),
        out.display().to_string(),
        tmp.path().join("cp.json").display().to_string()
    ));
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let coll = client.database("shop").collection::<Document>("people");
    // Ids on both shards (the simulator splits at 1000).
    let ids: Vec<i32> = (0..8).chain(1000..1008).collect();
    for &i in &ids {
        coll.insert_one(doc! {"_id": i, "name": format!("p{i}"), "n": 1, "sub": {"x": 0, "tags": ["a", "b", "c"]}})
            .await
            .unwrap();
    }
    let updates = [
        doc! {"$set": {"name": "renamed", "sub.x": 5}},
        doc! {"$unset": {"n": ""}},
        doc! {"$inc": {"n": 2}},
        doc! {"$set": {"extra": {"deep": [1, 2]}, "sub.tags": ["z"]}},
        doc! {"$set": {"sub.deep.er": 1, "sub.x": 7}, "$inc": {"sub.y": 1}},
        doc! {"$unset": {"sub.x": ""}, "$set": {"sub.deep.more": {"k": [1, 2]}}},
        doc! {"$set": {"sub": {"replaced": true}}},
    ];
    for (k, &i) in ids.iter().enumerate() {
        for u in updates.iter().skip(k % 3).step_by(1 + k % 2) {
            coll.update_one(doc! {"_id": i}, u.clone()).await.unwrap();
        }
        match k % 4 {
            0 => {
                coll.replace_one(doc! {"_id": i}, doc! {"_id": i, "whole": k as i32})
                    .await
                    .unwrap();
            }
            1 => {
                coll.delete_one(doc! {"_id": i}).await.unwrap();
            }
            _ => {}
        }
    }
    let mut want = BTreeMap::new();
    let mut cursor = coll.find(doc! {}).await.unwrap();
    while cursor.advance().await.unwrap() {
        let d: Document = cursor.deserialize_current().unwrap();
        let id = Bson::Int32(d.get_i32("_id").unwrap()).into_relaxed_extjson();
        want.insert(
            ("shop.people".to_owned(), id.to_string()),
            Bson::Document(d).into_relaxed_extjson(),
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = records(&out);
        let got = replay(&events).map(|docs| {
            docs.into_iter()
                .map(|(k, d)| (k, Bson::Document(d).into_relaxed_extjson()))
                .collect::<BTreeMap<_, _>>()
        });
        if got.as_ref().is_ok_and(|g| *g == want) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replaying {} events gives {got:#?}\nthe collection holds {want:#?}",
            events.len()
        );
        // The polling interval of a bounded wait, not a race cover.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = records(&out);
    let kinds: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["operationType"].as_str())
        .collect();
    for k in ["insert", "update", "replace", "delete"] {
        assert!(kinds.contains(k), "{k} among {kinds:?}");
    }
    // Nested paths are described as such, not as whole sub-documents.
    let described = |field: &str, path: &str| {
        events.iter().any(|e| match &e["updateDescription"][field] {
            Value::Object(m) => m.contains_key(path),
            Value::Array(a) => a.iter().any(|p| p == path),
            _ => false,
        })
    };
    assert!(described("updatedFields", "sub.x"), "sub.x updated");
    // A created sub-document: 5.0+ logs it whole at its first new component, earlier
    // versions log the full path that was set.
    let created = if version >= ServerVersion::V5_0 {
        "sub.deep"
    } else {
        "sub.deep.er"
    };
    assert!(described("updatedFields", created), "{created} created");
    assert!(described("removedFields", "sub.x"), "sub.x removed");
    for e in &events {
        assert!(e["shard"].is_string() && e["_id"]["ts"].is_object(), "{e}");
        assert!(
            e["clusterTime"].is_object() && e["ns"]["db"] == "shop",
            "{e}"
        );
    }
    assert!(q.stop().await.ok());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_replay_to_the_collection_on_7_0_deltas() {
    run(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_replay_to_the_collection_on_4_4_modifiers() {
    run(ServerVersion::V4_4).await;
}

/// The property the decoder promises, through real update commands: a document with
/// arrays (nested in documents, documents nested in arrays) changed by random updates
/// through the Rust driver: `$set`/`$unset`/`$inc` on random paths, field names and array
/// indexes mixed (created, replaced, removed, padded), and the array operators (`$push`
/// with `$each`/`$slice`/`$position`, `$pop`, `$pull` by value and by condition,
/// `$pullAll`, `$addToSet`); for every update, the description decoded from the oplog
/// entry the server wrote, applied to the document before, gives the document after.
/// Updates the server refuses (a path through a scalar, an array operator on a
/// non-array, ...) are skipped; every 40 updates the document is reset so that arrays stay.
async fn random_updates_decode_to_their_effect(version: ServerVersion, seed: u64) {
    use rand::SeedableRng;
    let rs = mongosim::ReplicaSet::start(mongosim::ReplicaSetSpec {
        nodes: 1,
        version,
        noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let primary = rs.primary().unwrap();
    let client =
        mongodb::Client::with_uri_str(format!("mongodb://{primary}/?directConnection=true"))
            .await
            .unwrap();
    let coll = client.database("app").collection::<Document>("c");
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let fresh = || {
        doc! {
            "_id": 1,
            "a": {"b": [1, 2, 3], "c": 1},
            "b": [{"c": 1}, {"c": [1, 2]}, 3],
            "c": [[1, 2], [], {"a": [0]}],
        }
    };
    coll.insert_one(fresh()).await.unwrap();
    let mut updates = 0;
    let mut array_shapes = 0;
    for round in 0..600 {
        if round % 40 == 0 {
            coll.replace_one(doc! {"_id": 1}, fresh()).await.unwrap();
        }
        let before = coll.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
        let update = random_update(&mut rng);
        if coll
            .update_one(doc! {"_id": 1}, update.clone())
            .await
            .is_err()
        {
            continue;
        }
        let after = coll.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
        if after == before {
            continue;
        }
        let entry = oplog
            .find_one(doc! {"op": "u", "ns": "app.c"})
            .sort(doc! {"$natural": -1})
            .await
            .unwrap()
            .unwrap();
        let o = entry.get_document("o").unwrap();
        if logs_an_array_element(o) {
            array_shapes += 1;
        }
        let quorumtail_events::UpdateKind::Update(desc) = quorumtail_events::decode(o)
            .unwrap_or_else(|e| panic!("{e}: update {update} logged {o}"))
        else {
            panic!("an operator update decoded as a replacement: {o}");
        };
        let got = quorumtail_events::apply(&before, &desc)
            .unwrap_or_else(|e| panic!("{e}: update {update} logged {o}"));
        assert_eq!(
            got, after,
            "update {update} of {before} logged as {o} decoded as {desc:?}"
        );
        updates += 1;
    }
    assert!(updates > 150, "only {updates} updates changed the document");
    eprintln!("{version}: {updates} updates, {array_shapes} logged array elements");
    // The array shapes must really be exercised: `a: true` diffs, or dotted paths with
    // an index before 5.0.
    assert!(
        array_shapes > 20,
        "only {array_shapes} entries logged an array element"
    );
    rs.shutdown().await;
}

/// Whether an update's `o` names an array element: an array diff (`a: true`) or a
/// `$set`/`$unset` path with an index component.
fn logs_an_array_element(o: &Document) -> bool {
    fn has_array_diff(d: &Document) -> bool {
        d.get("a") == Some(&Bson::Boolean(true))
            || d.iter().any(|(k, v)| {
                k.starts_with('s') && matches!(v, Bson::Document(sub) if has_array_diff(sub))
            })
    }
    match o.get_document("diff") {
        Ok(diff) => has_array_diff(diff),
        Err(_) => ["$set", "$unset"].iter().any(|s| {
            o.get_document(s).is_ok_and(|d| {
                d.keys()
                    .any(|k| k.split('.').any(|p| p.bytes().all(|c| c.is_ascii_digit())))
            })
        }),
    }
}

/// One random update: one to three operators on disjoint random paths (mongod refuses a
/// path and its prefix in one update).
fn random_update(rng: &mut rand::rngs::StdRng) -> Document {
    use rand::Rng;
    let names = ["a", "b", "c"];
    let parts = ["a", "b", "c", "0", "1", "2", "4", "0", "1"];
    let path = |rng: &mut rand::rngs::StdRng| -> String {
        let depth = rng.gen_range(1..=3);
        let mut p = vec![names[rng.gen_range(0..names.len())]];
        for _ in 1..depth {
            p.push(parts[rng.gen_range(0..parts.len())]);
        }
        p.join(".")
    };
    let small = |rng: &mut rand::rngs::StdRng| Bson::Int32(rng.gen_range(0..4));
    let value = |rng: &mut rand::rngs::StdRng| -> Bson {
        match rng.gen_range(0..6) {
            0 => Bson::Int32(rng.gen_range(0..5)),
            1 => Bson::String(["x", "y"][rng.gen_range(0..2)].into()),
            2 => Bson::Document(doc! {"c": rng.gen_range(0..3)}),
            3 => Bson::Array(vec![Bson::Int32(1), Bson::Int32(rng.gen_range(0..3))]),
            4 => Bson::Array(vec![Bson::Document(doc! {"c": rng.gen_range(0..3)})]),
            _ => Bson::Array(vec![]),
        }
    };
    let mut ops: Vec<(&str, Document)> = Vec::new();
    let mut used: Vec<String> = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        let p = path(rng);
        if used
            .iter()
            .any(|u| u == &p || p.starts_with(&format!("{u}.")) || u.starts_with(&format!("{p}.")))
        {
            continue;
        }
        used.push(p.clone());
        let (op, arg): (&str, Bson) = match rng.gen_range(0..9) {
            0 => ("$set", value(rng)),
            1 => ("$unset", Bson::String(String::new())),
            2 => ("$inc", Bson::Int32(1)),
            3 => {
                let each: Vec<Bson> = (0..rng.gen_range(0..3)).map(|_| value(rng)).collect();
                let mut spec = doc! {"$each": each};
                if rng.gen_bool(0.3) {
                    spec.insert("$slice", rng.gen_range(-3..4));
                }
                if rng.gen_bool(0.3) {
                    spec.insert("$position", rng.gen_range(-2..4));
                }
                let plain = rng.gen_bool(0.4);
                (
                    "$push",
                    if plain {
                        value(rng)
                    } else {
                        Bson::Document(spec)
                    },
                )
            }
            4 => ("$pop", Bson::Int32(if rng.gen_bool(0.5) { 1 } else { -1 })),
            5 => {
                let cond = match rng.gen_range(0..3) {
                    0 => small(rng),
                    1 => Bson::Document(doc! {"$gte": rng.gen_range(0..3)}),
                    _ => Bson::Document(doc! {"c": rng.gen_range(0..3)}),
                };
                ("$pull", cond)
            }
            6 => ("$pullAll", Bson::Array(vec![small(rng), small(rng)])),
            7 => {
                let plain = rng.gen_bool(0.5);
                let arg = if plain {
                    small(rng)
                } else {
                    Bson::Document(doc! {"$each": [small(rng), small(rng)]})
                };
                ("$addToSet", arg)
            }
            _ => ("$set", small(rng)),
        };
        match ops.iter_mut().find(|(o, _)| *o == op) {
            Some((_, d)) => {
                d.insert(p, arg);
            }
            None => ops.push((op, doc! {p: arg})),
        }
    }
    ops.into_iter()
        .map(|(op, d)| (op.to_owned(), Bson::Document(d)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_updates_decode_to_their_effect_on_7_0_and_4_4() {
    for seed in 1..=3 {
        random_updates_decode_to_their_effect(ServerVersion::V7_0, seed).await;
        random_updates_decode_to_their_effect(ServerVersion::V4_4, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_updates_decode_to_their_effect_on_5_0_6_0_and_8_0() {
    // 5.0 also logs $addToSet adding to an existing array (the whole array); the
    // simulator refuses that from 6.0.
    for seed in 4..=5 {
        random_updates_decode_to_their_effect(ServerVersion::V5_0, seed).await;
        random_updates_decode_to_their_effect(ServerVersion::V6_0, seed).await;
        random_updates_decode_to_their_effect(ServerVersion::V8_0, seed).await;
    }
}

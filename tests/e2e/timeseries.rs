//! Time-series collections end to end: measurements written through mongos with the Rust
//! driver reach the output as the bucket writes mongod logs, each record naming its
//! time-series collection; unpacking the buckets from the records gives back exactly the
//! measurements written, once each. On 8.0 the buckets are compressed (BSONColumn data
//! fields, updates as binary diffs of the columns): they are decoded with the suites' own
//! BSONColumn decoder (quorumtail-testkit), and each bucket gives back its measurements in
//! the order they were written, including one written out of time order (version 3).

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Bson, Document};
use mongosim::{Cluster, ClusterSpec, ServerVersion};
use serde_json::Value;

use crate::broker::{read_all, Broker};
use crate::support::{records, shards_toml, start, start_text, wait_until};

/// Applies a `$v: 2` update diff (MongoDB's documented delta format: `i`/`u` set fields,
/// `d` removes them, `s<field>` descends into a sub-document, `b` rewrites a BinData
/// field from byte `o` on with `d`) to `doc`.
fn apply_diff(doc: &mut Document, diff: &Document) {
    for (section, body) in diff {
        let Bson::Document(body) = body else { continue };
        match section.as_str() {
            "i" | "u" => {
                for (k, v) in body {
                    doc.insert(k.clone(), v.clone());
                }
            }
            "b" => {
                for (k, change) in body {
                    let Bson::Document(change) = change else {
                        panic!("b.{k}: {change}")
                    };
                    let offset = change.get_i32("o").unwrap() as usize;
                    let bytes = &change.get_binary_generic("d").unwrap().clone();
                    let Some(Bson::Binary(bin)) = doc.get_mut(k) else {
                        panic!("binary diff of {k}, not a BinData field: {doc}")
                    };
                    assert!(offset <= bin.bytes.len(), "diff of {k} past the end");
                    bin.bytes.truncate(offset);
                    bin.bytes.extend_from_slice(bytes);
                }
            }
            "d" => {
                for (k, _) in body {
                    doc.remove(k);
                }
            }
            s => {
                if let Some(Bson::Document(sub)) = doc.get_mut(&s[1..]) {
                    apply_diff(sub, body);
                }
            }
        }
    }
}

/// The measurements of a bucket (MongoDB's documented bucket schema: `data.<field>.<n>`
/// holds measurement n's field, `meta` the metaField shared by all), in index order.
fn unpack(bucket: &Document, time_field: &str, meta_field: &str) -> Vec<Document> {
    let data = bucket.get_document("data").unwrap();
    if bucket
        .get_document("control")
        .unwrap()
        .get_i32("version")
        .unwrap()
        >= 2
    {
        return unpack_compressed(bucket, meta_field);
    }
    let count = data.get_document(time_field).unwrap().len();
    (0..count)
        .map(|n| {
            let mut m = Document::new();
            for (field, column) in data {
                if let Some(v) = column.as_document().and_then(|c| c.get(n.to_string())) {
                    m.insert(field.clone(), v.clone());
                }
            }
            if let Some(meta) = bucket.get("meta") {
                m.insert(meta_field, meta.clone());
            }
            m
        })
        .collect()
}

/// The measurements of a compressed bucket (schema version 2, or 3 when unsorted):
/// `control.count` measurements, each data field a BSONColumn whose n-th value (missing
/// when skipped) is measurement n's field.
fn unpack_compressed(bucket: &Document, meta_field: &str) -> Vec<Document> {
    let count = bucket
        .get_document("control")
        .unwrap()
        .get_i32("count")
        .unwrap() as usize;
    let columns: Vec<(String, Vec<Option<Bson>>)> = bucket
        .get_document("data")
        .unwrap()
        .iter()
        .map(|(field, col)| {
            let Bson::Binary(bin) = col else {
                panic!("{field}: not a column: {col}")
            };
            assert_eq!(bin.subtype, bson::spec::BinarySubtype::Column, "{field}");
            let values = quorumtail_testkit::bsoncolumn::decode(&bin.bytes)
                .unwrap_or_else(|e| panic!("column {field}: {e}"));
            assert_eq!(values.len(), count, "column {field} holds {values:?}");
            (field.clone(), values)
        })
        .collect();
    (0..count)
        .map(|n| {
            let mut m = Document::new();
            for (field, values) in &columns {
                if let Some(v) = &values[n] {
                    m.insert(field.clone(), v.clone());
                }
            }
            if let Some(meta) = bucket.get("meta") {
                m.insert(meta_field, meta.clone());
            }
            m
        })
        .collect()
}

fn to_bson(v: &Value) -> Document {
    match Bson::try_from(v.clone()).unwrap() {
        Bson::Document(d) => d,
        other => panic!("not a document: {other}"),
    }
}

/// Sorted by `_id`, fields sorted: the measurements compared as sets of field values.
fn canonical(mut docs: Vec<Document>) -> Vec<BTreeMap<String, Bson>> {
    docs.sort_by_key(|d| d.get_i32("_id").unwrap());
    docs.into_iter().map(|d| d.into_iter().collect()).collect()
}

/// Creates `farm.weather` through mongos and writes measurements (three in one
/// insertMany, one adding a field, one with another sensor); returns them.
async fn write_measurements(client: &mongodb::Client) -> Vec<Document> {
    let db = client.database("farm");
    db.run_command(
        doc! {"create": "weather", "timeseries": {"timeField": "ts", "metaField": "sensor"}},
    )
    .await
    .unwrap();
    let at = |s: i64| bson::DateTime::from_millis(1_700_000_010_000 + s * 1000);
    let written = vec![
        doc! {"_id": 1, "ts": at(0), "sensor": "a", "temp": 10},
        doc! {"_id": 2, "ts": at(1), "sensor": "a", "temp": 12},
        doc! {"_id": 3, "ts": at(2), "sensor": "a", "temp": 9},
        doc! {"_id": 4, "ts": at(3), "sensor": "a", "temp": 15, "wind": 3},
        doc! {"_id": 5, "ts": at(4), "sensor": "b", "temp": 20},
    ];
    let weather = db.collection::<Document>("weather");
    weather.insert_many(written[..3].to_vec()).await.unwrap();
    weather.insert_one(written[3].clone()).await.unwrap();
    weather.insert_one(written[4].clone()).await.unwrap();
    written
}

/// 8.0: as [`write_measurements`] with doubles, strings, sub-documents and an array
/// (BSONColumn's interleaved mode), and a measurement of sensor "a" earlier than the ones
/// before it (the bucket becomes unsorted, version 3).
async fn write_measurements_8_0(client: &mongodb::Client) -> Vec<Document> {
    let db = client.database("farm");
    db.run_command(
        doc! {"create": "weather", "timeseries": {"timeField": "ts", "metaField": "sensor"}},
    )
    .await
    .unwrap();
    let at = |ms: i64| bson::DateTime::from_millis(1_700_000_010_000 + ms);
    let written = vec![
        doc! {"_id": 1, "ts": at(0), "sensor": "a", "temp": 10.5, "note": "dawn",
        "pos": {"lat": 1.5, "lon": 2}},
        doc! {"_id": 2, "ts": at(1000), "sensor": "a", "temp": 12.25, "note": "dawn",
        "pos": {"lat": 1.5, "lon": 3}},
        doc! {"_id": 3, "ts": at(2000), "sensor": "a", "temp": 9.0, "pos": {"lon": 3}},
        doc! {"_id": 4, "ts": at(3000), "sensor": "a", "temp": 15.125, "wind": 3},
        doc! {"_id": 5, "ts": at(4000), "sensor": "b", "temp": 20, "pos": [1, 2]},
        doc! {"_id": 6, "ts": at(1500), "sensor": "a", "temp": 11.0, "note": "late",
        "pos": {"lat": 1.75, "lon": 3}},
        doc! {"_id": 7, "ts": at(5000), "sensor": "a", "temp": 13.5, "wind": 4},
    ];
    let weather = db.collection::<Document>("weather");
    weather.insert_many(written[..3].to_vec()).await.unwrap();
    for d in &written[3..] {
        weather.insert_one(d.clone()).await.unwrap();
    }
    written
}

/// The bucket writes among `recs` name `farm.weather`, the view definition stays out,
/// and unpacking the buckets in record order gives back exactly `written`.
fn check(recs: &[Value], written: Vec<Document>, version: ServerVersion) {
    let ts_recs: Vec<&Value> = recs
        .iter()
        .filter(|r| r.get("timeseries").is_some())
        .collect();
    for r in &ts_recs {
        assert_eq!(r["timeseries"], "farm.weather", "{r}");
    }
    // The buckets collection's create is the user's create; the view definition
    // (system.views) is MongoDB's bookkeeping and stays out.
    let creates: Vec<&&Value> = ts_recs.iter().filter(|r| r["op"] == "c").collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0]["entry"]["o"]["create"], "system.buckets.weather");
    assert!(
        !recs.iter().any(|r| r["ns"]
            .as_str()
            .is_some_and(|ns| ns.ends_with("system.views"))
            || r["entry"]["o"]["create"] == "system.views"),
        "view bookkeeping emitted"
    );
    // Unpack the buckets from the records, in output order.
    let mut buckets: Vec<(Bson, Document)> = Vec::new();
    for r in ts_recs.iter().filter(|r| r["op"] != "c") {
        assert_eq!(r["ns"], "farm.system.buckets.weather", "{r}");
        let entry = to_bson(&r["entry"]);
        let o = entry.get_document("o").unwrap();
        match r["op"].as_str().unwrap() {
            "i" => buckets.push((o.get("_id").unwrap().clone(), o.clone())),
            "u" => {
                let id = entry.get_document("o2").unwrap().get("_id").unwrap();
                let b = buckets
                    .iter_mut()
                    .find(|(bid, _)| bid == id)
                    .unwrap_or_else(|| panic!("update of a bucket never inserted: {r}"));
                apply_diff(&mut b.1, o.get_document("diff").unwrap());
            }
            other => panic!("unexpected bucket op {other}: {r}"),
        }
    }
    let measurements: Vec<Document> = buckets
        .iter()
        .flat_map(|(_, b)| unpack(b, "ts", "sensor"))
        .collect();
    if version >= ServerVersion::V8_0 {
        // Compressed buckets: each sensor's bucket holds its measurements in the order
        // written, the late one included; it was marked unsorted (version 3).
        for (_, b) in &buckets {
            let sensor = b.get_str("meta").unwrap();
            let mine: Vec<Document> = written
                .iter()
                .filter(|d| d.get_str("sensor").unwrap() == sensor)
                .cloned()
                .collect();
            let got = unpack(b, "ts", "sensor");
            let fields = |v: Vec<Document>| -> Vec<BTreeMap<String, Bson>> {
                v.into_iter().map(|d| d.into_iter().collect()).collect()
            };
            assert_eq!(fields(got), fields(mine), "bucket of {sensor}");
        }
        let version_of = |sensor: &str| {
            let (_, b) = buckets
                .iter()
                .find(|(_, b)| b.get_str("meta").unwrap() == sensor)
                .unwrap();
            b.get_document("control")
                .unwrap()
                .get_i32("version")
                .unwrap()
        };
        assert_eq!((version_of("a"), version_of("b")), (3, 2));
    }
    assert_eq!(canonical(measurements), canonical(written), "{version}");
}

fn spec(version: ServerVersion) -> ClusterSpec {
    ClusterSpec {
        shards: 1,
        version,
        noop_interval: Duration::from_millis(200),
        ..ClusterSpec::default()
    }
}

async fn run(version: ServerVersion) {
    let cluster = Cluster::start(spec(version)).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = start(
        tmp.path(),
        &shards_toml(&cluster),
        "[start]\nposition = \"earliest\"\n",
    );
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let written = if version >= ServerVersion::V8_0 {
        write_measurements_8_0(&client).await
    } else {
        write_measurements(&client).await
    };
    // A plain collection written last: once its record is out, so is everything before.
    client
        .database("farm")
        .collection::<Document>("sheep")
        .insert_one(doc! {"_id": "dolly"})
        .await
        .unwrap();
    wait_until(30, "the last write in the output", || {
        records(&q.out).iter().any(|r| r["ns"] == "farm.sheep")
    })
    .await;
    q.stop().await;
    check(&records(&tmp.path().join("out.jsonl")), written, version);
}

/// The same through a Kafka-protocol broker: the records (and their `timeseries` field)
/// reach Kafka unchanged, keyed by the bucket document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeseries_measurements_reach_kafka_7_0() {
    kafka(ServerVersion::V7_0).await;
}

/// 8.0's compressed buckets through Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeseries_measurements_reach_kafka_8_0() {
    kafka(ServerVersion::V8_0).await;
}

async fn kafka(version: ServerVersion) {
    let broker = Broker::start();
    let topic = format!("e2e{}.timeseries", std::process::id());
    broker.create_topics(&[(topic.as_str(), 1)]).await;
    let cluster = Cluster::start(spec(version)).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = start_text(&format!(
        "{}\n[sink]\nkind = \"kafka\"\nbrokers = {:?}\ntopic = {topic:?}\nkey = \"document\"\n\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n\n[mongo]\nmax_await = \"100ms\"\n\n[start]\nposition = \"earliest\"\n",
        shards_toml(&cluster),
        broker.bootstrap,
        tmp.path().join("cp.json").display().to_string(),
    ));
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let (written, bucket_writes) = if version >= ServerVersion::V8_0 {
        (write_measurements_8_0(&client).await, 5)
    } else {
        (write_measurements(&client).await, 3)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let consumed = loop {
        let got = read_all(&broker.bootstrap, &[topic.as_str()]).await;
        // The bucket writes and the buckets collection's create.
        if got
            .iter()
            .filter(|c| c.value.get("timeseries").is_some())
            .count()
            > bucket_writes
        {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bucket writes did not reach Kafka"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(q.stop().await.ok());
    for c in consumed
        .iter()
        .filter(|c| c.value["op"] == "i" && c.value.get("timeseries").is_some())
    {
        let key: Value = serde_json::from_slice(c.key.as_deref().unwrap()).unwrap();
        assert_eq!(key["ns"], "farm.system.buckets.weather");
        assert_eq!(key["_id"], c.value["entry"]["o"]["_id"]);
    }
    let values: Vec<Value> = consumed.into_iter().map(|c| c.value).collect();
    check(&values, written, version);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeseries_measurements_reach_the_output_as_bucket_writes_7_0() {
    run(ServerVersion::V7_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeseries_measurements_reach_the_output_as_compressed_buckets_8_0() {
    run(ServerVersion::V8_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeseries_measurements_reach_the_output_as_bucket_writes_5_0() {
    run(ServerVersion::V5_0).await;
}

/// On 8.0 a measurement holding MinKey (which MongoDB's column builder refuses) is refused
/// with BadValue naming the field, and no bucket write is logged for it; other
/// measurements still go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_key_measurements_are_refused_on_8_0() {
    let cluster = Cluster::start(spec(ServerVersion::V8_0)).await.unwrap();
    let client = mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
        .await
        .unwrap();
    let db = client.database("farm");
    db.run_command(doc! {"create": "weather", "timeseries": {"timeField": "ts"}})
        .await
        .unwrap();
    let weather = db.collection::<Document>("weather");
    let at = bson::DateTime::from_millis(1_700_000_010_000);
    let err = weather
        .insert_one(doc! {"ts": at, "pos": Bson::MinKey})
        .await
        .expect_err("a MinKey measurement");
    let msg = err.to_string();
    assert!(msg.contains("'pos'") && msg.contains("MinKey"), "{msg}");
    weather
        .insert_one(doc! {"ts": at, "pos": 1, "empty": {}})
        .await
        .unwrap();
    // One bucket write: the scalar measurement's insert.
    let shard = &cluster.shard_names()[0];
    let bucket_writes: Vec<Document> = cluster
        .oplog_snapshot(cluster.primary_of(shard).unwrap())
        .iter()
        .map(|r| Document::try_from(r.as_ref()).unwrap())
        .filter(|e| e.get_str("ns").ok() == Some("farm.system.buckets.weather"))
        .collect();
    assert_eq!(bucket_writes.len(), 1, "{bucket_writes:?}");
    let data = bucket_writes[0]
        .get_document("o")
        .unwrap()
        .get_document("data")
        .unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["ts", "_id", "pos", "empty"]
    );
    cluster.shutdown().await;
}

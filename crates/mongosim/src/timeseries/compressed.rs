//! 8.0's compressed bucket writes: a new bucket is inserted with `control.version: 2` and
//! one BSONColumn per data field; measurements added to it are a `$v: 2` diff whose `sdata`
//! carries the columns' binary diffs.
//!
//! From mongodb/mongo `src/mongo/db/timeseries/`: `timeseries_write_util.cpp`
//! (`makeNewDocument` compresses the new bucket with `compressBucket`;
//! `makeTimeseriesCompressedDiffUpdateOp` sorts the batch's measurements on time, marks
//! the bucket unsorted when the first of them is earlier than the last time already in the
//! time column, appends them to the bucket's column builders and builds the diff in
//! `makeTimeseriesCompressedDiffEntry`: `scontrol: {u: {count, version: 3 if it became
//! unsorted}, smin, smax}`, `sdata: {i: {<new field>: BinData(7)}, b: {<field>: {o, d:
//! BinData(0)}}}` from each builder's `intermediate()`), `bucket_compression.cpp`
//! (`compressBucket`: measurements sorted on time, `control` with `version` rewritten to 2
//! and `count` appended, the time column first, missing values as skips) and
//! `bucket_catalog/measurement_map.cpp` (`initBuilders` reopens the columns of the stored
//! bucket; `insertOne` appends a measurement's fields, starts a new field's builder with a
//! skip per earlier measurement, and skips the fields it lacks).
//!
//! Where the server's order is unspecified mongosim fixes one: measurements of one batch
//! with equal times keep their insert order (the server's `std::sort` is not stable), and
//! data fields and `sdata` entries follow the time field, then first appearance (the
//! server iterates hash maps).

use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};

use crate::bsoncolumn::ColumnBuilder;

/// The column builders of an open compressed bucket, in the order of its data fields.
#[derive(Debug, Clone)]
pub struct Columns {
    builders: Vec<(String, ColumnBuilder)>,
    /// `bucketIsSortedByTime`: false once a measurement arrived out of time order.
    sorted: bool,
    /// The last time appended to the time column (`getBuilder(timeField).last()`), in ms.
    last_time: i64,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            builders: Vec::new(),
            sorted: true,
            last_time: 0,
        }
    }
}

/// A measurement's time as the server orders it (`BSONElement::timestamp()`: the value's
/// 64 bits unsigned).
fn time_key(d: &Document, time_field: &str) -> u64 {
    match d.get(time_field) {
        Some(Bson::DateTime(t)) => t.timestamp_millis() as u64,
        _ => 0,
    }
}

fn column(bytes: Vec<u8>) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Column,
        bytes,
    })
}

/// Checks that a measurement's data fields fit a column.
///
/// # Errors
/// The field and why, for MinKey/MaxKey (which MongoDB's column builder refuses; the
/// server then fails the write as a bucket compression failure, mongosim with BadValue)
/// and BSONColumn binaries.
pub fn check(d: &Document, meta: Option<&str>) -> Result<(), String> {
    for (k, v) in d {
        if Some(k.as_str()) == meta {
            continue;
        }
        if let Err(e) = ColumnBuilder::new().append(v) {
            return Err(format!("field '{k}': {e}"));
        }
    }
    Ok(())
}

/// The measurements' data fields (less the meta field), sorted on time (stable).
fn sorted<'a>(docs: &'a [Document], time_field: &str) -> Vec<&'a Document> {
    let mut out: Vec<&Document> = docs.iter().collect();
    out.sort_by_key(|d| time_key(d, time_field));
    out
}

fn append(b: &mut ColumnBuilder, v: &Bson) {
    // `check` refused what a column cannot hold before anything was written.
    if b.append(v).is_err() {
        b.skip();
    }
}

/// A new compressed bucket holding `docs`: the document to insert and its open columns.
/// `control` is `{version: 1, min, max}` as for an uncompressed bucket.
pub fn new_bucket(
    id: Bson,
    control_min: &Document,
    control_max: &Document,
    meta: Option<&Bson>,
    docs: &[Document],
    time_field: &str,
    meta_field: Option<&str>,
) -> (Document, Columns) {
    let measurements = sorted(docs, time_field);
    let mut fields: Vec<&str> = vec![time_field];
    for d in &measurements {
        for k in d.keys() {
            if Some(k.as_str()) != meta_field && !fields.contains(&k.as_str()) {
                fields.push(k);
            }
        }
    }
    let mut data = Document::new();
    let mut builders = Vec::new();
    let mut last_time = 0;
    for f in fields {
        let mut b = ColumnBuilder::new();
        for d in &measurements {
            match d.get(f) {
                Some(v) => {
                    if let (true, Bson::DateTime(t)) = (f == time_field, v) {
                        last_time = t.timestamp_millis();
                    }
                    append(&mut b, v);
                }
                None => b.skip(),
            }
        }
        // The first intermediate() is the whole binary, and leaves the builder as the
        // server's reopen of the stored column does.
        let full = b.intermediate();
        data.insert(f, column(full.data));
        builders.push((f.to_owned(), b));
    }
    let mut o = doc! {
        "_id": id,
        "control": {
            "version": 2,
            "min": control_min.clone(),
            "max": control_max.clone(),
            "count": measurements.len() as i32,
        },
    };
    if let Some(m) = meta {
        o.insert("meta", m.clone());
    }
    o.insert("data", data);
    let cols = Columns {
        builders,
        sorted: true,
        last_time,
    };
    (o, cols)
}

/// The `$v: 2` diff adding `docs` to a compressed bucket that held `before` measurements.
pub fn update_diff(
    cols: &mut Columns,
    before: usize,
    docs: &[Document],
    min_changed: &Document,
    max_changed: &Document,
    time_field: &str,
    meta_field: Option<&str>,
) -> Document {
    let measurements = sorted(docs, time_field);
    let mut changed_to_unsorted = false;
    if let Some(first) = measurements.first() {
        if cols.sorted && time_key(first, time_field) < cols.last_time as u64 {
            cols.sorted = false;
            changed_to_unsorted = true;
        }
    }
    let mut new_fields: Vec<String> = Vec::new();
    let mut count = before;
    for d in &measurements {
        let mut touched = vec![false; cols.builders.len()];
        for (k, v) in *d {
            if Some(k.as_str()) == meta_field {
                continue;
            }
            if k == time_field {
                if let Bson::DateTime(t) = v {
                    cols.last_time = t.timestamp_millis();
                }
            }
            match cols.builders.iter().position(|(f, _)| f == k) {
                Some(at) => {
                    append(&mut cols.builders[at].1, v);
                    touched[at] = true;
                }
                None => {
                    let mut b = ColumnBuilder::new();
                    for _ in 0..count {
                        b.skip();
                    }
                    append(&mut b, v);
                    cols.builders.push((k.clone(), b));
                    touched.push(true);
                    new_fields.push(k.clone());
                }
            }
        }
        count += 1;
        for (at, t) in touched.iter().enumerate() {
            if !t {
                cols.builders[at].1.skip();
            }
        }
    }
    let mut u = doc! {"count": count as i32};
    if changed_to_unsorted {
        u.insert("version", 3);
    }
    let mut control = doc! {"u": u};
    if !min_changed.is_empty() {
        control.insert("smin", doc! {"u": min_changed.clone()});
    }
    if !max_changed.is_empty() {
        control.insert("smax", doc! {"u": max_changed.clone()});
    }
    let mut inserted = Document::new();
    let mut binary = Document::new();
    for (f, b) in &mut cols.builders {
        let diff = b.intermediate();
        if new_fields.contains(f) {
            inserted.insert(f.clone(), column(diff.data));
        } else {
            binary.insert(
                f.clone(),
                doc! {
                    "o": diff.offset as i32,
                    "d": Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: diff.data }),
                },
            );
        }
    }
    let mut sdata = Document::new();
    if !inserted.is_empty() {
        sdata.insert("i", inserted);
    }
    if !binary.is_empty() {
        sdata.insert("b", binary);
    }
    doc! {"scontrol": control, "sdata": sdata}
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn at(s: &str) -> Bson {
        Bson::DateTime(bson::DateTime::parse_rfc3339_str(format!("2022-06-06T15:34:{s}Z")).unwrap())
    }

    fn bin(subtype: BinarySubtype, b64: &str) -> Bson {
        Bson::Binary(Binary {
            subtype,
            bytes: base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        })
    }

    /// `timeseries_write_util_test.cpp` `MakeTimeseriesCompressedDiffUpdateOp`: the bucket
    /// of 15:34:31..33 (a = b = 1, 2, 3) gets 15:34:30 (0) and :34 (4); the expected diff.
    #[test]
    fn the_server_test_diff() {
        let pre: Vec<Document> = [("31", 1), ("32", 2), ("33", 3)]
            .iter()
            .map(|(t, v)| doc! {"time": at(t), "a": v, "b": v})
            .collect();
        let (_, mut cols) = new_bucket(
            Bson::Null,
            &Document::new(),
            &Document::new(),
            None,
            &pre,
            "time",
            None,
        );
        let batch = vec![
            doc! {"time": at("30"), "a": 0, "b": 0},
            doc! {"time": at("34"), "a": 4, "b": 4},
        ];
        let min = doc! {"time": at("30"), "a": 0, "b": 0};
        let max = doc! {"time": at("34"), "a": 4, "b": 4};
        let diff = update_diff(&mut cols, 3, &batch, &min, &max, "time", None);
        let expected = doc! {
            "scontrol": {"u": {"count": 5, "version": 3},
                         "smin": {"u": min.clone()},
                         "smax": {"u": max.clone()}},
            "sdata": {"b": {
                "time": {"o": 10, "d": bin(BinarySubtype::Generic, "gAt9AAD8fGBtAA==")},
                "a": {"o": 6, "d": bin(BinarySubtype::Generic, "gCsAEAAUABAAAA==")},
                "b": {"o": 6, "d": bin(BinarySubtype::Generic, "gCsAEAAUABAAAA==")},
            }},
        };
        assert_eq!(diff, expected);
        // In time order the bucket stays sorted (no version 3).
        let later = vec![doc! {"time": at("35"), "a": 5}];
        let diff = update_diff(
            &mut cols,
            5,
            &later,
            &Document::new(),
            &doc! {"a": 5},
            "time",
            None,
        );
        assert_eq!(
            diff.get_document("scontrol")
                .unwrap()
                .get_document("u")
                .unwrap(),
            &doc! {"count": 6}
        );
    }

    #[test]
    fn a_new_field_is_a_whole_column_with_leading_skips() {
        let pre = vec![doc! {"time": at("31"), "a": 1}];
        let (o, mut cols) = new_bucket(
            Bson::Null,
            &Document::new(),
            &Document::new(),
            Some(&Bson::from("m")),
            &pre,
            "time",
            Some("m"),
        );
        assert_eq!(
            o.get_document("control").unwrap().get_i32("count").unwrap(),
            1
        );
        assert_eq!(
            o.get_document("data").unwrap().keys().collect::<Vec<_>>(),
            ["time", "a"]
        );
        let diff = update_diff(
            &mut cols,
            1,
            &[doc! {"time": at("32"), "m": "x", "w": 7}],
            &Document::new(),
            &Document::new(),
            "time",
            Some("m"),
        );
        let sdata = diff.get_document("sdata").unwrap();
        let Some(Bson::Binary(w)) = sdata.get_document("i").unwrap().get("w") else {
            panic!("{diff}")
        };
        assert_eq!(w.subtype, BinarySubtype::Column);
        // One skip (control 0x80, a block of a single skip), then the literal 7.
        assert_eq!(
            &w.bytes[..9],
            &[0x80, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(&w.bytes[9..], &[0x10, 0, 7, 0, 0, 0, 0]);
        assert!(sdata.get_document("b").unwrap().contains_key("a"));
    }

    /// `jstests/change_streams/timeseries.js` with always-compressed buckets: inserting
    /// `{_id: 1, ts: new Date(1000), meta: {a: 1}}` (a shell number: a double) creates
    /// `data: {ts: BinData(7, "CQDoAwAAAAAAAAA="), _id: BinData(7, "AQAAAAAAAADwPwA=")}`
    /// with `count: 1`; inserting it again updates `control.count` to 2, `data.ts` to
    /// `{o: 10, d: BinData(0, "gA4AAAAAAAAAAA==")}` and `data._id` to `{o: 10, d:
    /// BinData(0, "kA4AAAAAAAAAAA==")}`, and nothing else (min and max unchanged).
    #[test]
    fn the_server_change_stream_test_bucket() {
        let m = doc! {"_id": 1.0, "ts": bson::DateTime::from_millis(1000), "meta": {"a": 1}};
        let (o, mut cols) = new_bucket(
            Bson::Null,
            &doc! {"_id": 1.0, "ts": bson::DateTime::from_millis(0)},
            &doc! {"_id": 1.0, "ts": bson::DateTime::from_millis(1000)},
            Some(&Bson::Document(doc! {"a": 1})),
            std::slice::from_ref(&m),
            "ts",
            Some("meta"),
        );
        assert_eq!(
            o.get_document("data").unwrap(),
            &doc! {"ts": bin(BinarySubtype::Column, "CQDoAwAAAAAAAAA="),
            "_id": bin(BinarySubtype::Column, "AQAAAAAAAADwPwA=")}
        );
        let control = o.get_document("control").unwrap();
        assert_eq!(
            (
                control.get_i32("version").ok(),
                control.get_i32("count").ok()
            ),
            (Some(2), Some(1))
        );
        let diff = update_diff(
            &mut cols,
            1,
            &[m],
            &Document::new(),
            &Document::new(),
            "ts",
            Some("meta"),
        );
        assert_eq!(
            diff,
            doc! {"scontrol": {"u": {"count": 2}},
            "sdata": {"b": {
                "ts": {"o": 10, "d": bin(BinarySubtype::Generic, "gA4AAAAAAAAAAA==")},
                "_id": {"o": 10, "d": bin(BinarySubtype::Generic, "kA4AAAAAAAAAAA==")}}}}
        );
    }
}

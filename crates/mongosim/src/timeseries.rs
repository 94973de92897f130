//! Time-series collections as mongod stores and logs them.
//!
//! ```text
//!  create {timeseries}          insert into db.coll (the view)
//!        |                                 |
//!        v                                 v
//!  c {create: "system.views"}    bucket catalog (open buckets, per set)
//!  c {create: "system.buckets.coll", clusteredIndex, timeseries}
//!  i db.system.views {_id, viewOn, pipeline}     new bucket -> i db.system.buckets.coll
//!                                     open bucket -> u db.system.buckets.coll ($v: 2 diff)
//! ```
//!
//! Shapes, from mongodb/mongo: the view and the buckets collection
//! (`src/mongo/db/catalog/create_collection.cpp` `_createTimeseries`: `system.views` is
//! created if missing, then the buckets collection, then the view; the view is replicated
//! as an insert on `<db>.system.views`, which secondaries turn into a view in
//! `src/mongo/db/op_observer/fallback_op_observer.cpp` `onInserts`, reading `_id`, `viewOn`,
//! `pipeline` and `collation`); the view pipeline (`timeseries_options.cpp`
//! `generateViewPipeline`: `[{$_internalUnpackBucket: {timeField, metaField?,
//! bucketMaxSpanSeconds}}]`); the order of the buckets collection's create options
//! (`collection_options.cpp` `appendBSON`: ... `clusteredIndex`, ..., `timeseries`); bucket
//! documents (`src/mongo/db/timeseries/README.md` "Bucket Collection Schema" and
//! `timeseries_write_util.cpp` `makeNewDocument`: `{_id, control: {version: 1, min, max},
//! meta?, data: {<field>: {"0": v, ...}}}`, `control.min.<time>` rounded down to the
//! granularity); the update of an open bucket (`timeseries_write_util.cpp`
//! `makeTimeseriesUpdateOpEntry`: `{scontrol: {smin: <diff>, smax: <diff>}, sdata: {i:
//! {<new field>: {...}}, s<field>: {i: {"<n>": v}}}}`, with the min/max diffs of
//! `minmax.cpp` `MinMax::minUpdates`/`maxUpdates`: `{u: {<changed field>: value}}`); the
//! granularity defaults (`timeseries_options.cpp`: seconds = 3600 s span, 60 s rounding;
//! minutes = 86400 / 3600; hours = 2592000 / 86400) and at most 1000 measurements per
//! bucket (`timeseriesBucketMaxCount`).
//!
//! On 8.0 buckets are compressed: [`compressed`] writes them (BSONColumn data fields, the
//! update of an open bucket as binary diffs of its columns).
//!
//! Not simulated (documented in the crate docs): compressing a closed bucket on 6.0/7.0,
//! the `validator` of the buckets collection, bucket size limits,
//! reopening buckets after a failover, and nested sub-document min/max (compared whole
//! here).

pub mod compressed;

use std::cmp::Ordering;

use bson::{doc, oid::ObjectId, Bson, Document};

use crate::error::CmdError;
use crate::oplog::OpSpec;
use crate::world::World;
use std::time::Instant;

/// `timeseries` options of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct TsOptions {
    /// `timeField`.
    pub time_field: String,
    /// `metaField`.
    pub meta_field: Option<String>,
    /// `granularity`: `seconds`, `minutes` or `hours`.
    pub granularity: String,
    /// `bucketMaxSpanSeconds`.
    pub max_span_secs: i64,
    /// `bucketRoundingSeconds` (logged from 6.3).
    pub rounding_secs: i64,
}

/// Most measurements in one bucket (`timeseriesBucketMaxCount`).
pub const BUCKET_MAX_COUNT: usize = 1000;

impl TsOptions {
    /// Parses the `timeseries` option of `create`.
    ///
    /// # Errors
    /// BadValue / InvalidOptions naming the field, as mongod's IDL parser would.
    pub fn parse(d: &Document) -> Result<TsOptions, CmdError> {
        let time_field = d
            .get_str("timeField")
            .map_err(|_| {
                CmdError::new(
                    40414,
                    "IDLFailedToParse",
                    "BSON field 'timeseries.timeField' is missing but a required field",
                )
            })?
            .to_owned();
        let meta_field = d.get_str("metaField").ok().map(str::to_owned);
        let granularity = d.get_str("granularity").unwrap_or("seconds").to_owned();
        let (max_span_secs, rounding_secs) = match granularity.as_str() {
            "seconds" => (3600, 60),
            "minutes" => (86_400, 3600),
            "hours" => (2_592_000, 86_400),
            other => {
                return Err(CmdError::new(
                    2,
                    "BadValue",
                    format!("Enumeration value '{other}' for field 'timeseries.granularity' is not a valid value."),
                ))
            }
        };
        if meta_field.as_deref() == Some(time_field.as_str()) {
            return Err(CmdError::new(
                72,
                "InvalidOptions",
                "The 'metaField' cannot be the same as the 'timeField'",
            ));
        }
        Ok(TsOptions {
            time_field,
            meta_field,
            granularity,
            max_span_secs,
            rounding_secs,
        })
    }

    /// The `timeseries` document as logged in the buckets collection's `create`.
    fn to_doc(&self, with_rounding: bool) -> Document {
        let mut d = doc! {"timeField": &self.time_field};
        if let Some(m) = &self.meta_field {
            d.insert("metaField", m);
        }
        d.insert("granularity", &self.granularity);
        d.insert("bucketMaxSpanSeconds", self.max_span_secs as i32);
        if with_rounding {
            d.insert("bucketRoundingSeconds", self.rounding_secs as i32);
        }
        d
    }
}

/// A bucket the primary's bucket catalog still accepts measurements into.
#[derive(Debug, Clone)]
pub struct OpenBucket {
    /// The time-series collection (view) namespace.
    pub view: String,
    /// `_id` of the bucket document.
    pub id: ObjectId,
    /// Normalised meta value (`None` without a metaField or when absent).
    pub meta: Option<Bson>,
    /// `control.min.<time>` in ms: the rounded start.
    pub start_ms: i64,
    /// Measurements so far.
    pub count: usize,
    /// `control.min` / `control.max` as stored.
    pub min: Document,
    /// See `min`.
    pub max: Document,
    /// Closed: a newer bucket took over its meta value; never written to again.
    pub closed: bool,
    /// The open columns of a compressed bucket (8.0).
    pub columns: Option<compressed::Columns>,
}

/// The buckets namespace of a time-series collection.
pub fn buckets_ns(view_ns: &str) -> String {
    let (db, coll) = view_ns.split_once('.').unwrap_or((view_ns, ""));
    format!("{db}.system.buckets.{coll}")
}

/// Sorts the fields of sub-documents of a meta value (README "Metadata Normalization").
fn normalize_meta(v: &Bson) -> Bson {
    match v {
        Bson::Document(d) => {
            let mut keys: Vec<&String> = d.keys().collect();
            keys.sort();
            let mut out = Document::new();
            for k in keys {
                if let Some(x) = d.get(k) {
                    out.insert(k.clone(), normalize_meta(x));
                }
            }
            Bson::Document(out)
        }
        Bson::Array(a) => Bson::Array(a.iter().map(normalize_meta).collect()),
        other => other.clone(),
    }
}

/// BSON's canonical type order (`canonicalizeBSONType`).
fn type_rank(v: &Bson) -> i32 {
    match v {
        Bson::MinKey => -1,
        Bson::Undefined => 0,
        Bson::Null => 5,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 10,
        Bson::String(_) | Bson::Symbol(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => 127,
    }
}

fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(x) => Some(f64::from(*x)),
        Bson::Int64(x) => Some(*x as f64),
        Bson::Double(x) => Some(*x),
        _ => None,
    }
}

/// Orders two values as BSON does for the types measurements usually hold; values of
/// the same rank that are not compared here (sub-documents, arrays, ...) are equal.
fn cmp_values(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        _ => match (as_f64(a), as_f64(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => Ordering::Equal,
        },
    }
}

/// Folds `doc` (less the meta field) into `min`/`max`; returns the fields whose min and
/// max changed, in document order, with their new values.
fn fold_min_max(
    min: &mut Document,
    max: &mut Document,
    doc: &Document,
    meta: Option<&str>,
    min_changed: &mut Document,
    max_changed: &mut Document,
) {
    for (k, v) in doc {
        if Some(k.as_str()) == meta {
            continue;
        }
        let lower = min
            .get(k)
            .is_none_or(|m| cmp_values(v, m) == Ordering::Less);
        if lower {
            min.insert(k.clone(), v.clone());
            min_changed.insert(k.clone(), v.clone());
        }
        let higher = max
            .get(k)
            .is_none_or(|m| cmp_values(v, m) == Ordering::Greater);
        if higher {
            max.insert(k.clone(), v.clone());
            max_changed.insert(k.clone(), v.clone());
        }
    }
}

/// An ObjectId whose timestamp is `secs` (mongod's bucket `_id` carries the bucket's
/// rounded start time).
fn bucket_oid(secs: i64) -> ObjectId {
    let mut bytes = ObjectId::new().bytes();
    let t = u32::try_from(secs.max(0)).unwrap_or(u32::MAX).to_be_bytes();
    bytes[..4].copy_from_slice(&t);
    ObjectId::from_bytes(bytes)
}

impl World {
    /// The time-series options of `view_ns` on set `s`, if it is a time-series collection.
    pub fn timeseries_options(&self, s: usize, view_ns: &str) -> Option<&TsOptions> {
        self.sets[s].timeseries.get(view_ns)
    }

    /// Creates a time-series collection on the primary `n`, logging what mongod logs.
    ///
    /// # Errors
    /// NotWritablePrimary; NamespaceExists when the name is taken; InvalidOptions on 4.4,
    /// which has no time-series collections.
    pub fn create_timeseries(
        &mut self,
        s: usize,
        n: usize,
        view_ns: &str,
        opts: TsOptions,
        now: Instant,
    ) -> Result<(), CmdError> {
        self.check_writable(s, n)?;
        if self.version < crate::ServerVersion::V5_0 {
            return Err(CmdError::new(
                40415,
                "Location40415",
                "BSON field 'create.timeseries' is an unknown field.",
            ));
        }
        let Some((db, coll)) = view_ns.split_once('.') else {
            return Err(CmdError::new(
                73,
                "InvalidNamespace",
                format!("Invalid namespace specified '{view_ns}'"),
            ));
        };
        if let Some(existing) = self.sets[s].timeseries.get(view_ns) {
            if *existing == opts {
                return Ok(());
            }
            return Err(CmdError::new(
                48,
                "NamespaceExists",
                format!("A timeseries collection already exists. NS: {view_ns}"),
            ));
        }
        if self.sets[s].nodes[n].data.contains_key(view_ns) {
            return Err(CmdError::new(
                48,
                "NamespaceExists",
                format!("Collection already exists. NS: {view_ns}"),
            ));
        }
        let bns = buckets_ns(view_ns);
        self.ensure_collection(s, n, &format!("{db}.system.views"), false, now);
        let ui = self.collection_uuid(s, &bns);
        // 6.3 added bucketRoundingSeconds to the options (gTimeseriesScalabilityImprovements).
        let with_rounding = self.version >= crate::ServerVersion::V7_0;
        let create = OpSpec {
            op: "c",
            ns: format!("{db}.$cmd"),
            ui: Some(ui),
            o: doc! {
                "create": format!("system.buckets.{coll}"),
                "clusteredIndex": true,
                "timeseries": opts.to_doc(with_rounding),
            },
            o2: None,
            from_migrate: false,
        };
        self.write(s, n, &create, now);
        let mut unpack = doc! {"timeField": &opts.time_field};
        if let Some(m) = &opts.meta_field {
            unpack.insert("metaField", m);
        }
        unpack.insert("bucketMaxSpanSeconds", opts.max_span_secs as i32);
        let views_ns = format!("{db}.system.views");
        let view_ui = self.collection_uuid(s, &views_ns);
        let view_doc = doc! {
            "_id": view_ns,
            "viewOn": format!("system.buckets.{coll}"),
            "pipeline": [{"$_internalUnpackBucket": unpack}],
        };
        let o2 = self
            .version
            .insert_document_key()
            .then(|| doc! {"_id": view_ns});
        let view = OpSpec {
            op: "i",
            ns: views_ns,
            ui: Some(view_ui),
            o: view_doc,
            o2,
            from_migrate: false,
        };
        self.write(s, n, &view, now);
        self.sets[s].timeseries.insert(view_ns.to_owned(), opts);
        Ok(())
    }

    /// Inserts measurements into a time-series collection on the primary `n`: one bucket
    /// write per bucket touched by the command (measurements of one command that land in
    /// the same bucket are committed together, as mongod's write batches are). `first_stmt`
    /// is the statement id of `docs[0]` for retryable writes.
    ///
    /// # Errors
    /// NotWritablePrimary, or BadValue for a measurement without a date in the time field
    /// (with the number of measurements inserted before it).
    pub fn insert_timeseries(
        &mut self,
        s: usize,
        n: usize,
        view_ns: &str,
        docs: Vec<Document>,
        now: Instant,
    ) -> Result<usize, (usize, CmdError)> {
        self.check_writable(s, n).map_err(|e| (0, e))?;
        let Some(opts) = self.sets[s].timeseries.get(view_ns).cloned() else {
            return Err((
                0,
                CmdError::new(
                    26,
                    "NamespaceNotFound",
                    format!("{view_ns} is not a time-series collection"),
                ),
            ));
        };
        let bns = buckets_ns(view_ns);
        let ui = self.collection_uuid(s, &bns);
        let first_stmt = self.session.as_ref().map(|sess| sess.stmt_id).unwrap_or(0);
        // Bucket writes of this command, in the order their buckets were first touched:
        // (bucket index in the catalog, is new, measurements with their statement ids).
        struct Pending {
            bucket: usize,
            new: bool,
            before: usize,
            docs: Vec<(i32, Document)>,
            new_fields: Vec<String>,
            min_changed: Document,
            max_changed: Document,
        }
        let mut pending: Vec<Pending> = Vec::new();
        // 8.0 writes every new bucket compressed (`compressed`).
        let compress = self.version >= crate::ServerVersion::V8_0;
        let mut error = None;
        let mut accepted = 0;
        for (i, d) in docs.into_iter().enumerate() {
            let time_ms = match d.get(&opts.time_field) {
                Some(Bson::DateTime(t)) => t.timestamp_millis(),
                _ => {
                    error = Some(CmdError::new(
                        2,
                        "BadValue",
                        format!(
                            "'{}' must be present and contain a valid BSON UTC datetime value",
                            opts.time_field
                        ),
                    ));
                    break;
                }
            };
            if compress {
                if let Err(why) = compressed::check(&d, opts.meta_field.as_deref()) {
                    error = Some(CmdError::new(2, "BadValue", why));
                    break;
                }
            }
            let meta = opts
                .meta_field
                .as_ref()
                .and_then(|m| d.get(m))
                .map(normalize_meta);
            let span_ms = opts.max_span_secs * 1000;
            let catalog = &mut self.sets[s].ts_buckets;
            let found = catalog.iter().position(|b| {
                !b.closed
                    && b.view == view_ns
                    && b.meta == meta
                    && b.count < BUCKET_MAX_COUNT
                    && time_ms >= b.start_ms
                    && time_ms < b.start_ms + span_ms
            });
            let bucket = match found {
                Some(b) => b,
                None => {
                    let round = opts.rounding_secs * 1000;
                    let start_ms = time_ms.div_euclid(round) * round;
                    // The open bucket that could not take the measurement is closed.
                    for b in catalog.iter_mut() {
                        if b.view == view_ns && b.meta == meta {
                            b.closed = true;
                        }
                    }
                    catalog.push(OpenBucket {
                        view: view_ns.to_owned(),
                        id: bucket_oid(start_ms.div_euclid(1000)),
                        meta: meta.clone(),
                        start_ms,
                        count: 0,
                        min: Document::new(),
                        max: Document::new(),
                        closed: false,
                        columns: None,
                    });
                    catalog.len() - 1
                }
            };
            let b = &mut catalog[bucket];
            let p = match pending.iter().position(|p| p.bucket == bucket) {
                Some(p) => p,
                None => {
                    pending.push(Pending {
                        bucket,
                        new: b.count == 0,
                        before: b.count,
                        docs: Vec::new(),
                        new_fields: Vec::new(),
                        min_changed: Document::new(),
                        max_changed: Document::new(),
                    });
                    pending.len() - 1
                }
            };
            let p = &mut pending[p];
            for k in d.keys() {
                if Some(k) != opts.meta_field.as_ref()
                    && !b.min.contains_key(k)
                    && !p.new_fields.contains(k)
                {
                    p.new_fields.push(k.clone());
                }
            }
            fold_min_max(
                &mut b.min,
                &mut b.max,
                &d,
                opts.meta_field.as_deref(),
                &mut p.min_changed,
                &mut p.max_changed,
            );
            if b.count == 0 {
                // control.min.<time> is the rounded start (processTimeseriesMeasurements).
                b.min.insert(
                    opts.time_field.clone(),
                    bson::DateTime::from_millis(b.start_ms),
                );
            }
            b.count += 1;
            p.docs.push((first_stmt + i as i32, d));
            accepted += 1;
        }
        for p in pending {
            let b = self.sets[s].ts_buckets[p.bucket].clone();
            let stmt_ids: Vec<i32> = p.docs.iter().map(|(st, _)| *st).collect();
            let spec = if compress {
                let docs: Vec<Document> = p.docs.iter().map(|(_, d)| d.clone()).collect();
                let meta_field = opts.meta_field.as_deref();
                let bucket = &mut self.sets[s].ts_buckets[p.bucket];
                if p.new {
                    let (o, cols) = compressed::new_bucket(
                        Bson::ObjectId(b.id),
                        &b.min,
                        &b.max,
                        b.meta.as_ref(),
                        &docs,
                        &opts.time_field,
                        meta_field,
                    );
                    bucket.columns = Some(cols);
                    OpSpec {
                        op: "i",
                        ns: bns.clone(),
                        ui: Some(ui),
                        o,
                        o2: self
                            .version
                            .insert_document_key()
                            .then(|| doc! {"_id": b.id}),
                        from_migrate: false,
                    }
                } else {
                    // Buckets of an 8.0 simulation are opened compressed.
                    let cols = bucket
                        .columns
                        .get_or_insert_with(compressed::Columns::default);
                    let diff = compressed::update_diff(
                        cols,
                        p.before,
                        &docs,
                        &p.min_changed,
                        &p.max_changed,
                        &opts.time_field,
                        meta_field,
                    );
                    OpSpec {
                        op: "u",
                        ns: bns.clone(),
                        ui: Some(ui),
                        o: doc! {"$v": 2, "diff": diff},
                        o2: Some(doc! {"_id": b.id}),
                        from_migrate: false,
                    }
                }
            } else if p.new {
                let mut data = Document::new();
                for (idx, (_, d)) in p.docs.iter().enumerate() {
                    for (k, v) in d {
                        if Some(k) == opts.meta_field.as_ref() {
                            continue;
                        }
                        let col = data
                            .entry(k.clone())
                            .or_insert_with(|| Bson::Document(Document::new()));
                        if let Bson::Document(col) = col {
                            col.insert(idx.to_string(), v.clone());
                        }
                    }
                }
                let mut o = doc! {
                    "_id": b.id,
                    "control": {"version": 1, "min": b.min.clone(), "max": b.max.clone()},
                };
                if let Some(m) = &b.meta {
                    o.insert("meta", m.clone());
                }
                o.insert("data", data);
                OpSpec {
                    op: "i",
                    ns: bns.clone(),
                    ui: Some(ui),
                    o,
                    o2: self
                        .version
                        .insert_document_key()
                        .then(|| doc! {"_id": b.id}),
                    from_migrate: false,
                }
            } else {
                let mut diff = Document::new();
                let mut control = Document::new();
                if !p.min_changed.is_empty() {
                    control.insert("smin", doc! {"u": p.min_changed.clone()});
                }
                if !p.max_changed.is_empty() {
                    control.insert("smax", doc! {"u": p.max_changed.clone()});
                }
                if !control.is_empty() {
                    diff.insert("scontrol", control);
                }
                let mut columns: Vec<(String, Document)> = Vec::new();
                for (idx, (_, d)) in p.docs.iter().enumerate() {
                    for (k, v) in d {
                        if Some(k) == opts.meta_field.as_ref() {
                            continue;
                        }
                        let at = match columns.iter().position(|(c, _)| c == k) {
                            Some(at) => at,
                            None => {
                                columns.push((k.clone(), Document::new()));
                                columns.len() - 1
                            }
                        };
                        columns[at]
                            .1
                            .insert((p.before + idx).to_string(), v.clone());
                    }
                }
                let mut sdata = Document::new();
                let inserted: Document = columns
                    .iter()
                    .filter(|(c, _)| p.new_fields.contains(c))
                    .map(|(c, col)| (c.clone(), Bson::Document(col.clone())))
                    .collect();
                if !inserted.is_empty() {
                    sdata.insert("i", inserted);
                }
                for (c, col) in &columns {
                    if !p.new_fields.contains(c) {
                        sdata.insert(format!("s{c}"), doc! {"i": col.clone()});
                    }
                }
                diff.insert("sdata", sdata);
                OpSpec {
                    op: "u",
                    ns: bns.clone(),
                    ui: Some(ui),
                    o: doc! {"$v": 2, "diff": diff},
                    o2: Some(doc! {"_id": b.id}),
                    from_migrate: false,
                }
            };
            if let Some(sess) = self.session.as_mut() {
                sess.stmt_id = stmt_ids[0];
                sess.stmt_ids = stmt_ids;
            }
            self.write(s, n, &spec, now);
        }
        if let Some(sess) = self.session.as_mut() {
            sess.stmt_ids.clear();
        }
        match error {
            Some(e) => Err((accepted, e)),
            None => Ok(accepted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_defaults_follow_the_granularity() {
        let o = TsOptions::parse(&doc! {"timeField": "t", "granularity": "minutes"}).unwrap();
        assert_eq!((o.max_span_secs, o.rounding_secs), (86_400, 3600));
        let o = TsOptions::parse(&doc! {"timeField": "t"}).unwrap();
        assert_eq!(o.granularity, "seconds");
        assert!(TsOptions::parse(&doc! {"metaField": "m"}).is_err());
        assert!(TsOptions::parse(&doc! {"timeField": "t", "granularity": "days"}).is_err());
        assert!(TsOptions::parse(&doc! {"timeField": "t", "metaField": "t"}).is_err());
    }

    #[test]
    fn values_order_as_bson() {
        assert_eq!(
            cmp_values(&Bson::Int32(2), &Bson::Double(1.5)),
            Ordering::Greater
        );
        assert_eq!(
            cmp_values(&Bson::String("a".into()), &Bson::Int64(9)),
            Ordering::Greater
        );
        assert_eq!(cmp_values(&Bson::Null, &Bson::Int32(0)), Ordering::Less);
    }

    #[test]
    fn meta_sub_documents_are_sorted() {
        let m = normalize_meta(&Bson::Document(doc! {"c": 1, "b": {"f": true, "d": 0}}));
        assert_eq!(m, Bson::Document(doc! {"b": {"d": 0, "f": true}, "c": 1}));
    }

    #[test]
    fn bucket_ids_carry_the_start_time() {
        let id = bucket_oid(1_700_000_040);
        assert_eq!(id.timestamp().timestamp_millis(), 1_700_000_040_000);
    }
}

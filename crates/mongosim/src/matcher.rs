//! Query filters, projections and sorts: the subset tailers and tests use.
//!
//! Supported: implicit equality (with array-contains), `$eq $ne $gt $gte $lt $lte $in $nin
//! $exists $not $and $or $nor`, dotted paths. Comparisons follow BSON type brackets (numbers
//! compare across Int32/Int64/Double; other types only with their own type), as mongod does.
//! Anything else is refused with BadValue (code 2) rather than silently mismatching.

use std::cmp::Ordering;

use bson::{Bson, Document};

/// A filter that could not be evaluated, with mongod's BadValue wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadFilter(pub String);

/// The BSON comparison order of type brackets (MinKey lowest, MaxKey highest).
fn type_rank(b: &Bson) -> u8 {
    match b {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::MaxKey => 255,
        _ => 12,
    }
}

fn rank(b: &Bson) -> u8 {
    type_rank(b)
}

fn as_f64(b: &Bson) -> Option<f64> {
    match b {
        Bson::Int32(v) => Some(f64::from(*v)),
        Bson::Int64(v) => Some(*v as f64),
        Bson::Double(v) => Some(*v),
        _ => None,
    }
}

/// Total order over BSON values (type bracket first, then value).
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        _ if ra == 2 => {
            let (x, y) = (as_f64(a).unwrap_or(f64::NAN), as_f64(b).unwrap_or(f64::NAN));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::Binary(x), Bson::Binary(y)) => (x.bytes.len(), u8::from(x.subtype), &x.bytes)
            .cmp(&(y.bytes.len(), u8::from(y.subtype), &y.bytes)),
        (Bson::Document(x), Bson::Document(y)) => {
            for ((ka, va), (kb, vb)) in x.iter().zip(y.iter()) {
                let o = compare(va, vb).then_with(|| ka.cmp(kb));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Array(x), Bson::Array(y)) => {
            for (va, vb) in x.iter().zip(y.iter()) {
                let o = compare(va, vb);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => Ordering::Equal,
    }
}

/// Whether two values are equal as the server compares them (numbers by value, documents
/// field by field in order).
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    rank(a) == rank(b) && compare(a, b) == Ordering::Equal
}

/// Looks a dotted path up; `None` when absent. Arrays along the path are not traversed.
pub fn lookup<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut current = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let v = current.get(part)?;
        if parts.peek().is_none() {
            return Some(v);
        }
        match v {
            Bson::Document(d) => current = d,
            _ => return None,
        }
    }
    None
}

/// Whether `doc` matches `filter`.
///
/// # Errors
/// [`BadFilter`] for unknown or unsupported operators.
pub fn matches(doc: &Document, filter: &Document) -> Result<bool, BadFilter> {
    for (key, cond) in filter {
        let ok = match key.as_str() {
            "$and" | "$or" | "$nor" => {
                let Bson::Array(clauses) = cond else {
                    return Err(BadFilter(format!("{key} must be an array")));
                };
                let mut results = Vec::with_capacity(clauses.len());
                for c in clauses {
                    let Bson::Document(c) = c else {
                        return Err(BadFilter(format!(
                            "{key} argument's entries must be objects"
                        )));
                    };
                    results.push(matches(doc, c)?);
                }
                match key.as_str() {
                    "$and" => results.iter().all(|r| *r),
                    "$or" => results.iter().any(|r| *r),
                    _ => !results.iter().any(|r| *r),
                }
            }
            "$comment" => true,
            k if k.starts_with('$') => {
                return Err(BadFilter(format!("unknown top level operator: {k}")))
            }
            path => field_matches(lookup(doc, path), cond)?,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn is_operator_doc(cond: &Bson) -> Option<&Document> {
    match cond {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => Some(d),
        _ => None,
    }
}

fn eq_matches(value: Option<&Bson>, target: &Bson) -> bool {
    match value {
        None => matches!(target, Bson::Null),
        Some(v) => {
            values_equal(v, target)
                || matches!(v, Bson::Array(items) if items.iter().any(|i| values_equal(i, target)))
        }
    }
}

fn cmp_matches(value: Option<&Bson>, target: &Bson, accept: fn(Ordering) -> bool) -> bool {
    let check = |v: &Bson| rank(v) == rank(target) && accept(compare(v, target));
    match value {
        None => false,
        Some(Bson::Array(items)) => items.iter().any(check),
        Some(v) => check(v),
    }
}

fn field_matches(value: Option<&Bson>, cond: &Bson) -> Result<bool, BadFilter> {
    let Some(ops) = is_operator_doc(cond) else {
        return Ok(eq_matches(value, cond));
    };
    for (op, arg) in ops {
        let ok = match op.as_str() {
            "$eq" => eq_matches(value, arg),
            "$ne" => !eq_matches(value, arg),
            "$gt" => cmp_matches(value, arg, |o| o == Ordering::Greater),
            "$gte" => cmp_matches(value, arg, |o| o != Ordering::Less),
            "$lt" => cmp_matches(value, arg, |o| o == Ordering::Less),
            "$lte" => cmp_matches(value, arg, |o| o != Ordering::Greater),
            "$in" | "$nin" => {
                let Bson::Array(items) = arg else {
                    return Err(BadFilter(format!("{op} needs an array")));
                };
                let any = items.iter().any(|t| eq_matches(value, t));
                if op == "$in" {
                    any
                } else {
                    !any
                }
            }
            "$exists" => {
                let want = match arg {
                    Bson::Boolean(b) => *b,
                    other => as_f64(other).is_some_and(|n| n != 0.0),
                };
                value.is_some() == want
            }
            "$not" => !field_matches(value, arg)?,
            other => return Err(BadFilter(format!("unknown operator: {other}"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Applies a find projection: inclusion (`{a: 1}`, `_id` kept unless `_id: 0`) or exclusion.
pub fn project(doc: &Document, projection: &Document) -> Document {
    if projection.is_empty() {
        return doc.clone();
    }
    let truthy = |b: &Bson| match b {
        Bson::Boolean(v) => *v,
        other => as_f64(other).is_none_or(|n| n != 0.0),
    };
    let inclusion = projection.iter().any(|(k, v)| k != "_id" && truthy(v));
    if inclusion {
        let keep_id = projection.get("_id").is_none_or(truthy);
        doc.iter()
            .filter(|(k, _)| {
                (k.as_str() == "_id" && keep_id)
                    || (k.as_str() != "_id" && projection.get(k.as_str()).is_some_and(truthy))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        doc.iter()
            .filter(|(k, _)| projection.get(k.as_str()).is_none_or(truthy))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Sorts documents by a sort spec; `$natural` keeps (1) or reverses (-1) natural order.
pub fn sort(docs: &mut [Document], spec: &Document) {
    if let Some(dir) = spec.get("$natural") {
        if as_f64(dir).is_some_and(|d| d < 0.0) {
            docs.reverse();
        }
        return;
    }
    docs.sort_by(|a, b| {
        for (k, dir) in spec {
            let null = Bson::Null;
            let o = compare(lookup(a, k).unwrap_or(&null), lookup(b, k).unwrap_or(&null));
            let o = if as_f64(dir).is_some_and(|d| d < 0.0) {
                o.reverse()
            } else {
                o
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Timestamp};

    fn ts(t: u32, i: u32) -> Timestamp {
        Timestamp {
            time: t,
            increment: i,
        }
    }

    #[test]
    fn oplog_style_filters() {
        let e =
            doc! {"ts": ts(10, 2), "op": "i", "ns": "test.c", "o": {"_id": 1}, "fromMigrate": true};
        assert!(matches(&e, &doc! {"ts": {"$gt": ts(10, 1)}}).unwrap());
        assert!(!matches(&e, &doc! {"ts": {"$gt": ts(10, 2)}}).unwrap());
        assert!(matches(&e, &doc! {"ts": {"$gte": ts(10, 2), "$lte": ts(10, 2)}}).unwrap());
        assert!(!matches(&e, &doc! {"fromMigrate": {"$exists": false}}).unwrap());
        assert!(matches(&e, &doc! {"op": {"$in": ["i", "u"]}, "o._id": 1}).unwrap());
        assert!(matches(&e, &doc! {"$or": [{"op": "u"}, {"ns": "test.c"}]}).unwrap());
        assert!(
            !matches(&e, &doc! {"ts": {"$gt": 5}}).unwrap(),
            "no cross-bracket compare"
        );
        assert!(
            matches(&e, &doc! {"o._id": 1.0}).unwrap(),
            "numbers compare across types"
        );
        assert!(matches(&e, &doc! {"ts": {"$regex": "x"}}).is_err());
    }

    #[test]
    fn projection_and_sort() {
        let d = doc! {"_id": 1, "a": 2, "b": 3};
        assert_eq!(project(&d, &doc! {"a": 1}), doc! {"_id": 1, "a": 2});
        assert_eq!(project(&d, &doc! {"a": 1, "_id": 0}), doc! {"a": 2});
        assert_eq!(project(&d, &doc! {"a": 0}), doc! {"_id": 1, "b": 3});
        let mut docs = vec![doc! {"x": 2}, doc! {"x": 1}, doc! {"x": 3}];
        sort(&mut docs, &doc! {"x": -1});
        assert_eq!(docs[0], doc! {"x": 3});
        assert_eq!(compare(&Bson::MinKey, &Bson::Int32(1)), Ordering::Less);
        assert_eq!(
            compare(&Bson::MaxKey, &Bson::String("z".into())),
            Ordering::Greater
        );
    }
}

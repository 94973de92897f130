//! Operator updates applied as mongod applies them, each modification recorded for the
//! oplog as mongod's modifier nodes hand it to the log builder (mongodb/mongo
//! `src/mongo/db/update/`).
//!
//! ```text
//!   {$push: .., $set: ..}  --parse: conflicts (update_object_node.cpp)-->  leaf per path
//!        --apply in path order (cmpPathsAndArrayIndexes)-->  new document
//!                                                            + LogRecord per change
//!        --update_log.rs-->  $v: 2 diff | $v: 1 $set/$unset
//! ```
//!
//! * Paths: a component below an array is an index when it is a canonical number
//!   (`FieldRef::isNumericPathComponentStrict`); `$set`/`$inc`/`$push`/`$addToSet` create
//!   what is missing (`ModifierNode::applyToNonexistentElement`), padding an array with
//!   nulls up to a new index (`path_support.cpp`, `createPathAt`); `$unset` of an array
//!   element sets it to null (`unset_node.cpp`). A path through a scalar, or a field name
//!   below an array, is PathNotViable (28).
//! * Which modifications are logged how (`ModifierNode::logUpdate` and the overrides):
//!   an existing field changed is an *update* of its new value; a created path is a
//!   *create* of the full path with its leaf value and the index of the first new
//!   component; an unset field a *delete*. `$push` that only appended to a non-empty array
//!   (no `$slice` trim, no `$position` inside) logs each appended element as a create at
//!   `path.<index>` (`PushNode::logUpdate`, `kArrayAppendUpdate`); any other `$push`,
//!   `$pop`, `$pull`, `$pullAll` and `$addToSet` log the whole new array
//!   (`array_culling_node.cpp`, `pop_node.cpp`, `addtoset_node.cpp`).
//! * Not simulated, refused with an error naming them: `$push` with `$sort`, positional
//!   (`$`, `$[]`, `$[id]`) paths, other operators, and `$addToSet` adding to an existing
//!   array from 6.0 (5.0's `addtoset_node_test.cpp` expects the whole array; the newest
//!   source logs only the appended elements; in which release that changed is not
//!   established here).

use std::cmp::Ordering;

use bson::{Bson, Document};

use super::modifier_args::{
    addtoset_values, bad_value, integer, is_number, not_simulated, parse, push_spec, Leaf, PushSpec,
};
use super::CmdError;
use crate::matcher;
use crate::update_log::{LogRecord, Logged, Part};
use crate::version::ServerVersion;

/// mongod's cap on the nulls added to reach a new array index (`kMaxPaddingAllowed`,
/// `path_support.h`).
const MAX_PADDING: usize = 1_500_000;

/// Applies an operator update to a copy of `doc`: the new document and what the server
/// logs for it, in the order it logs it.
///
/// # Errors
/// The server's errors for what it refuses (unknown modifier, conflicting paths, a path
/// through a scalar, an array operator on a non-array, bad operator arguments), and a
/// BadValue naming what the simulator does not simulate.
pub fn apply_update(
    doc: &Document,
    u: &Document,
    version: ServerVersion,
) -> Result<(Document, Vec<LogRecord>), CmdError> {
    let mut leaves = parse(u)?;
    // UpdateObjectNode keeps its children in a map ordered by cmpPathsAndArrayIndexes and
    // applies them in that order, depth first.
    leaves.sort_by(|a, b| cmp_paths(a.path, b.path));
    let mut out = doc.clone();
    let mut log = Vec::new();
    for leaf in &leaves {
        apply_leaf(&mut out, doc, leaf, version, &mut log)?;
    }
    Ok((out, log))
}

/// Applies an operator update and returns the new document only (upserts, tests).
///
/// # Errors
/// As [`apply_update`].
pub fn apply_modifiers(doc: &Document, u: &Document) -> Result<Document, CmdError> {
    apply_update(doc, u, ServerVersion::V5_0).map(|(d, _)| d)
}

/// Orders two update paths as the children of mongod's update tree are ordered, component
/// by component with `pathsupport::cmpPathsAndArrayIndexes` (`path_support.h`): names that
/// start with a digit and no padding zero compare by length first, then as strings. (That
/// is the comparator of the current source; whether older releases order numeric names
/// the same way is not established here.)
fn cmp_paths(a: &str, b: &str) -> Ordering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = cmp_component(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

fn cmp_component(a: &str, b: &str) -> Ordering {
    let number_like = |s: &str| {
        s.as_bytes().first().is_some_and(u8::is_ascii_digit) && !(s.starts_with('0') && s.len() > 1)
    };
    if number_like(a) && number_like(b) && a.len() != b.len() {
        a.len().cmp(&b.len())
    } else {
        a.cmp(b)
    }
}

/// `FieldRef::isNumericPathComponentStrict`: digits, no leading zero unless "0".
fn array_index(s: &str) -> Option<usize> {
    let canonical =
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// How far `parts` exists in `doc`.
enum Walk {
    /// The whole path exists; the parts as taken (fields and array indexes).
    Exists(Vec<Part>),
    /// `taken` exists; the part after it does not, below a document or an array.
    Missing(Vec<Part>),
    /// `taken` exists and holds a scalar; the path continues below it.
    Blocked(Vec<Part>),
}

fn walk(doc: &Document, parts: &[&str]) -> Walk {
    let mut taken = Vec::new();
    let mut cur: Option<&Bson> = None;
    for p in parts {
        let next = match cur {
            None => doc.get(*p).map(|v| (v, Part::Field((*p).to_owned()))),
            Some(Bson::Document(d)) => d.get(*p).map(|v| (v, Part::Field((*p).to_owned()))),
            Some(Bson::Array(a)) => {
                array_index(p).and_then(|i| a.get(i).map(|v| (v, Part::Index(i))))
            }
            Some(_) => return Walk::Blocked(taken),
        };
        match next {
            Some((v, part)) => {
                taken.push(part);
                cur = Some(v);
            }
            None => return Walk::Missing(taken),
        }
    }
    Walk::Exists(taken)
}

fn value_at<'a>(doc: &'a Document, taken: &[Part]) -> Option<&'a Bson> {
    let (first, rest) = taken.split_first()?;
    let Part::Field(f) = first else { return None };
    let mut cur = doc.get(f)?;
    for p in rest {
        cur = match (cur, p) {
            (Bson::Document(d), Part::Field(f)) => d.get(f)?,
            (Bson::Array(a), Part::Index(i)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn value_at_mut<'a>(doc: &'a mut Document, taken: &[Part]) -> Option<&'a mut Bson> {
    let (first, rest) = taken.split_first()?;
    let Part::Field(f) = first else { return None };
    let mut cur = doc.get_mut(f)?;
    for p in rest {
        cur = match (cur, p) {
            (Bson::Document(d), Part::Field(f)) => d.get_mut(f)?,
            (Bson::Array(a), Part::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn element_string(name: &str, v: &Bson) -> String {
    format!("{{{name}: {v}}}")
}

fn apply_leaf(
    out: &mut Document,
    original: &Document,
    leaf: &Leaf<'_>,
    version: ServerVersion,
    log: &mut Vec<LogRecord>,
) -> Result<(), CmdError> {
    let parts: Vec<&str> = leaf.path.split('.').collect();
    let logged = log.len();
    let r = apply_at(out, original, leaf, &parts, version, log);
    // modifier_node.cpp (`checkImmutablePathsNotModified`): `_id` may not change.
    // (An upsert's new document may get its `_id` from the update.)
    if r.is_ok() && parts[0] == "_id" && log.len() > logged && original.contains_key("_id") {
        if matches!(log.last().map(|l| &l.what), Some(Logged::Created { .. })) {
            return Err(not_simulated(format!("creating {} below _id", leaf.path)));
        }
        return Err(CmdError::new(
            66,
            "ImmutableField",
            format!(
                "Performing an update on the path '{}' would modify the immutable field '_id'",
                leaf.path
            ),
        ));
    }
    r
}

fn apply_at(
    out: &mut Document,
    original: &Document,
    leaf: &Leaf<'_>,
    parts: &[&str],
    version: ServerVersion,
    log: &mut Vec<LogRecord>,
) -> Result<(), CmdError> {
    let parts = parts.to_vec();
    match walk(out, &parts) {
        Walk::Exists(taken) => update_existing(out, original, leaf, taken, version, log),
        Walk::Missing(taken) => {
            let creates = matches!(leaf.op, "$set" | "$inc" | "$push" | "$addToSet");
            let below_array = matches!(value_at(out, &taken), Some(Bson::Array(_)));
            let next = parts[taken.len()];
            if !creates {
                // $unset allows any nonexistent path; $pop and the culling nodes check
                // viability: a field name below an array cannot be created.
                if leaf.op != "$unset" && below_array && array_index(next).is_none() {
                    return Err(not_viable_traverse(out, &parts, &taken));
                }
                return Ok(());
            }
            let value = new_value(leaf)?;
            create(out, &parts, taken, value, log)
        }
        Walk::Blocked(taken) => {
            if leaf.op == "$unset" {
                return Ok(());
            }
            if matches!(leaf.op, "$set" | "$inc" | "$push" | "$addToSet") {
                let holder = value_at(out, &taken).cloned().unwrap_or(Bson::Null);
                return Err(CmdError::new(
                    28,
                    "PathNotViable",
                    format!(
                        "Cannot create field '{}' in element {}",
                        parts[taken.len()],
                        element_string(parts[taken.len() - 1], &holder)
                    ),
                ));
            }
            Err(not_viable_traverse(out, &parts, &taken))
        }
    }
}

/// `UpdateLeafNode::checkViability`'s PathNotViable.
fn not_viable_traverse(out: &Document, parts: &[&str], taken: &[Part]) -> CmdError {
    let holder = value_at(out, taken).cloned().unwrap_or(Bson::Null);
    let k = taken.len();
    let taken_dotted = parts[..k].join(".");
    let rest = parts[k..].join(".");
    CmdError::new(
        28,
        "PathNotViable",
        format!(
            "Cannot use the part ({}) of ({taken_dotted}.{rest}) to traverse the element ({})",
            parts[k],
            element_string(parts[k.saturating_sub(1)], &holder)
        ),
    )
}

/// The value a creating leaf puts at a new path (`setValueForNewElement`).
fn new_value(leaf: &Leaf<'_>) -> Result<Bson, CmdError> {
    Ok(match leaf.op {
        "$set" | "$inc" => leaf.arg.clone(),
        "$push" => {
            let spec = push_spec(leaf.arg)?;
            let mut a = Vec::new();
            push_into(&mut a, &spec);
            Bson::Array(a)
        }
        _ => Bson::Array(addtoset_values(leaf.arg)?),
    })
}

/// Creates the missing rest of `parts` below `taken` holding `value`, padding an array
/// with nulls up to a new index (`pathsupport::createPathAt`).
fn create(
    out: &mut Document,
    parts: &[&str],
    taken: Vec<Part>,
    value: Bson,
    log: &mut Vec<LogRecord>,
) -> Result<(), CmdError> {
    let k = taken.len();
    let mut built = value.clone();
    for p in parts[k + 1..].iter().rev() {
        let mut d = Document::new();
        d.insert(*p, built);
        built = Bson::Document(d);
    }
    let first = parts[k];
    let mut path = taken.clone();
    let container = if taken.is_empty() {
        None
    } else {
        value_at_mut(out, &taken)
    };
    match container {
        None => {
            out.insert(first, built);
            path.push(Part::Field(first.to_owned()));
        }
        Some(Bson::Document(d)) => {
            d.insert(first, built);
            path.push(Part::Field(first.to_owned()));
        }
        Some(Bson::Array(a)) => {
            let Some(i) = array_index(first) else {
                let holder = Bson::Array(a.clone());
                return Err(CmdError::new(
                    28,
                    "PathNotViable",
                    format!(
                        "Cannot create field '{first}' in element {}",
                        element_string(parts[k - 1], &holder)
                    ),
                ));
            };
            if i - a.len() > MAX_PADDING {
                return Err(not_simulated(format!(
                    "padding an array by more than {MAX_PADDING} nulls ({})",
                    parts.join(".")
                )));
            }
            a.resize(i, Bson::Null);
            a.push(built);
            path.push(Part::Index(i));
        }
        Some(_) => return Ok(()),
    }
    path.extend(parts[k + 1..].iter().map(|p| Part::Field((*p).to_owned())));
    log.push(LogRecord {
        path,
        what: Logged::Created {
            first_new: k,
            value,
        },
    });
    Ok(())
}

fn update_existing(
    out: &mut Document,
    original: &Document,
    leaf: &Leaf<'_>,
    taken: Vec<Part>,
    version: ServerVersion,
    log: &mut Vec<LogRecord>,
) -> Result<(), CmdError> {
    let id = original.get("_id").cloned().unwrap_or(Bson::Null);
    let dotted = leaf.path;
    let field_name = leaf.path.rsplit('.').next().unwrap_or(leaf.path);
    let in_array = matches!(taken.last(), Some(Part::Index(_)));
    if leaf.op == "$unset" && !in_array {
        let Some((Part::Field(name), parent)) = taken.split_last() else {
            return Ok(());
        };
        if parent.is_empty() {
            out.remove(name);
        } else if let Some(Bson::Document(d)) = value_at_mut(out, parent) {
            d.remove(name);
        }
        log.push(LogRecord {
            path: taken,
            what: Logged::Deleted,
        });
        return Ok(());
    }
    let Some(slot) = value_at_mut(out, &taken) else {
        return Ok(());
    };
    let updated = |log: &mut Vec<LogRecord>, slot: &Bson, taken: Vec<Part>| {
        log.push(LogRecord {
            path: taken,
            what: Logged::Updated(slot.clone()),
        })
    };
    match leaf.op {
        "$unset" => {
            // unset_node.cpp: an array element is set to null, and logged as updated.
            *slot = Bson::Null;
            updated(log, slot, taken);
        }
        "$set" => {
            if binary_equal(slot, leaf.arg) {
                return Ok(());
            }
            *slot = leaf.arg.clone();
            updated(log, slot, taken);
        }
        "$inc" => {
            let new = increment(slot, leaf.arg)?.ok_or_else(|| {
                // `arithmetic_node.cpp` (`updateExistingElement`).
                CmdError::new(
                    14,
                    "TypeMismatch",
                    format!(
                        "Cannot apply $inc to a value of non-numeric type. {{_id: {id}}} has the field '{field_name}' of non-numeric type {}",
                        type_name(slot)
                    ),
                )
            })?;
            if binary_equal(slot, &new) {
                return Ok(());
            }
            *slot = new;
            updated(log, slot, taken);
        }
        "$push" => {
            let Bson::Array(a) = slot else {
                return Err(bad_value(format!(
                    "The field '{dotted}' must be an array but is of type {} in document {{_id: {id}}}",
                    type_name(slot)
                )));
            };
            let spec = push_spec(leaf.arg)?;
            match push_into(a, &spec) {
                PushResult::NoOp => {}
                PushResult::Appended => {
                    let n = a.len();
                    let first = n - spec.values.len();
                    for (j, v) in spec.values.iter().enumerate() {
                        let mut path = taken.clone();
                        path.push(Part::Index(first + j));
                        let first_new = path.len() - 1;
                        log.push(LogRecord {
                            path,
                            what: Logged::Created {
                                first_new,
                                value: v.clone(),
                            },
                        });
                    }
                }
                PushResult::Changed => updated(log, slot, taken),
            }
        }
        "$pop" => {
            let Bson::Array(a) = slot else {
                return Err(CmdError::new(
                    14,
                    "TypeMismatch",
                    format!(
                        "Path '{dotted}' contains an element of non-array type '{}'",
                        type_name(slot)
                    ),
                ));
            };
            if a.is_empty() {
                return Ok(());
            }
            if integer(leaf.arg) == Some(-1) {
                a.remove(0);
            } else {
                a.pop();
            }
            updated(log, slot, taken);
        }
        "$pull" | "$pullAll" => {
            let Bson::Array(a) = slot else {
                // array_culling_node.cpp says $pull for both.
                return Err(bad_value("Cannot apply $pull to a non-array value"));
            };
            let before = a.len();
            let mut failed = None;
            a.retain(|e| match culls(leaf, e) {
                Ok(m) => !m,
                Err(err) => {
                    failed = Some(err);
                    true
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if a.len() != before {
                updated(log, slot, taken);
            }
        }
        "$addToSet" => {
            let Bson::Array(a) = slot else {
                return Err(bad_value(format!(
                    "Cannot apply $addToSet to non-array field. Field named '{field_name}' has non-array type {}",
                    type_name(slot)
                )));
            };
            let values = addtoset_values(leaf.arg)?;
            let add: Vec<Bson> = values
                .into_iter()
                .filter(|v| !a.iter().any(|e| matcher::values_equal(e, v)))
                .collect();
            if add.is_empty() {
                return Ok(());
            }
            if version >= ServerVersion::V6_0 {
                return Err(not_simulated(format!(
                    "how MongoDB {} logs $addToSet adding to an existing array",
                    version.version_string()
                )));
            }
            a.extend(add);
            updated(log, slot, taken);
        }
        other => return Err(not_simulated(other)),
    }
    Ok(())
}

/// Whether a `$pull` / `$pullAll` removes `e` (`pull_node.cpp`: an object whose first
/// field is not an operator matches documents; an operator object matches the element
/// wrapped as `{"": e}`; anything else by equality. `pullall_node.cpp`: equality with any
/// listed value).
fn culls(leaf: &Leaf<'_>, e: &Bson) -> Result<bool, CmdError> {
    if leaf.op == "$pullAll" {
        let Bson::Array(values) = leaf.arg else {
            return Ok(false);
        };
        return Ok(values.iter().any(|v| matcher::values_equal(e, v)));
    }
    match leaf.arg {
        // Top-level query operators are not path-accepting keywords
        // (`MatchExpressionParser::parsePathAcceptingKeyword`): an object query.
        Bson::Document(q)
            if q.keys().next().is_some_and(|k| {
                !k.starts_with('$') || matches!(k.as_str(), "$and" | "$or" | "$nor")
            }) =>
        {
            match e {
                Bson::Document(d) => matcher::matches(d, q).map_err(super::data::bad_value),
                _ => Ok(false),
            }
        }
        Bson::Document(q) => {
            let mut wrapped = Document::new();
            wrapped.insert("", e.clone());
            let mut cond = Document::new();
            cond.insert("", Bson::Document(q.clone()));
            matcher::matches(&wrapped, &cond).map_err(super::data::bad_value)
        }
        v => Ok(matcher::values_equal(e, v)),
    }
}

enum PushResult {
    NoOp,
    Appended,
    Changed,
}

/// `PushNode::performPush` without `$sort`.
fn push_into(a: &mut Vec<Bson>, spec: &PushSpec) -> PushResult {
    let mut result = if spec.values.is_empty() {
        PushResult::NoOp
    } else {
        let len = a.len() as i64;
        let position = spec.position.unwrap_or(i64::MAX);
        let at = if len == 0 {
            0
        } else if position > len {
            len
        } else if position > 0 {
            position
        } else if position < 0 && -position < len {
            len + position
        } else {
            0
        };
        let appended = len > 0 && position > len;
        let tail = a.split_off(at as usize);
        a.extend(spec.values.iter().cloned());
        a.extend(tail);
        if appended {
            PushResult::Appended
        } else {
            PushResult::Changed
        }
    };
    if let Some(slice) = spec.slice {
        let keep = slice.unsigned_abs().min(usize::MAX as u64) as usize;
        while a.len() > keep {
            result = PushResult::Changed;
            if slice >= 0 {
                a.pop();
            } else {
                a.remove(0);
            }
        }
    }
    result
}

/// `$inc` of `cur` by `by` (`safe_num.cpp`: an int that overflows becomes a long);
/// `Ok(None)` when `cur` is not a number.
///
/// # Errors
/// A long that overflows, which mongosim does not simulate.
fn increment(cur: &Bson, by: &Bson) -> Result<Option<Bson>, CmdError> {
    let long = |a: i64, b: i64| {
        a.checked_add(b)
            .map(Bson::Int64)
            .ok_or_else(|| not_simulated("$inc overflowing a long"))
    };
    Ok(Some(match (cur, by) {
        (Bson::Int32(a), Bson::Int32(b)) => match a.checked_add(*b) {
            Some(n) => Bson::Int32(n),
            None => Bson::Int64(i64::from(*a) + i64::from(*b)),
        },
        (Bson::Int64(a), Bson::Int32(b)) => long(*a, i64::from(*b))?,
        (Bson::Int32(a), Bson::Int64(b)) => long(i64::from(*a), *b)?,
        (Bson::Int64(a), Bson::Int64(b)) => long(*a, *b)?,
        (Bson::Decimal128(_), _) | (_, Bson::Decimal128(_)) if is_number(cur) => {
            return Err(not_simulated("$inc with a decimal"))
        }
        (a, b) if is_number(a) => {
            let f = |x: &Bson| match x {
                Bson::Int32(n) => f64::from(*n),
                Bson::Int64(n) => *n as f64,
                Bson::Double(d) => *d,
                _ => 0.0,
            };
            Bson::Double(f(a) + f(b))
        }
        _ => return Ok(None),
    }))
}

/// mongod's no-op test for `$set`/`$inc`: the same type and value.
fn binary_equal(a: &Bson, b: &Bson) -> bool {
    a == b
}

/// The server's name of a BSON type (`typeName` in mongod's messages).
pub(super) fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Boolean(_) => "bool",
        Bson::Null => "null",
        Bson::Int32(_) => "int",
        Bson::Int64(_) => "long",
        Bson::DateTime(_) => "date",
        Bson::ObjectId(_) => "objectId",
        Bson::Decimal128(_) => "decimal",
        Bson::Binary(_) => "binData",
        Bson::Timestamp(_) => "timestamp",
        Bson::RegularExpression(_) => "regex",
        _ => "other",
    }
}

#[cfg(test)]
#[path = "modifiers_tests.rs"]
mod tests;

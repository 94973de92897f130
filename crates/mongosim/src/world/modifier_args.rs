//! Parsing an operator update into leaves, with the checks mongod makes while parsing
//! (`update_object_node.cpp` for unknown modifiers and conflicting paths, each node's
//! `init` for its argument: `push_node.cpp`, `pop_node.cpp`, `pullall_node.cpp`,
//! `addtoset_node.cpp`, `arithmetic_node.cpp`).

use bson::{Bson, Document};

use super::modifiers::type_name;
use super::CmdError;
use crate::matcher;

/// One leaf of the update: operator, path, argument.
pub(super) struct Leaf<'a> {
    pub(super) op: &'a str,
    pub(super) path: &'a str,
    pub(super) arg: &'a Bson,
}

pub(super) fn failed_to_parse(msg: impl Into<String>) -> CmdError {
    CmdError::new(9, "FailedToParse", msg)
}

pub(super) fn bad_value(msg: impl Into<String>) -> CmdError {
    CmdError::new(2, "BadValue", msg)
}

pub(super) fn not_simulated(what: impl std::fmt::Display) -> CmdError {
    bad_value(format!("mongosim does not simulate {what}"))
}

/// Splits the update into leaves, refusing what mongod refuses while parsing
/// (`update_object_node.cpp`, `UpdateObjectNode::parseAndMerge`; the modifier names of
/// `modifier_table.cpp`), and naming the modifiers mongosim does not simulate.
pub(super) fn parse(u: &Document) -> Result<Vec<Leaf<'_>>, CmdError> {
    let mut leaves: Vec<Leaf<'_>> = Vec::new();
    for (op, arg) in u {
        if matches!(
            op.as_str(),
            "$currentDate" | "$min" | "$max" | "$mul" | "$rename" | "$setOnInsert" | "$bit"
        ) {
            return Err(not_simulated(format!("the update operator {op}")));
        }
        if !matches!(
            op.as_str(),
            "$set" | "$unset" | "$inc" | "$push" | "$pop" | "$pull" | "$pullAll" | "$addToSet"
        ) {
            return Err(failed_to_parse(format!(
                "Unknown modifier: {op}. Expected a valid update modifier or pipeline-style update specified as an array"
            )));
        }
        let Bson::Document(fields) = arg else {
            return Err(failed_to_parse(format!(
                "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{op}: {arg}}}",
                type_name(arg)
            )));
        };
        for (path, value) in fields {
            if path.split('.').any(|p| p.starts_with('$')) {
                return Err(not_simulated(format!("positional update paths ({path})")));
            }
            // field_checker.cpp (`isUpdatable`).
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(CmdError::new(
                    56,
                    "EmptyFieldName",
                    format!("The update path '{path}' contains an empty field name, which is not allowed."),
                ));
            }
            check_arg(op, path, value)?;
            // A leaf may not share its path with another leaf, nor lie below one.
            for other in &leaves {
                if let Some(at) = conflict(other.path, path) {
                    return Err(CmdError::new(
                        40,
                        "ConflictingUpdateOperators",
                        format!("Updating the path '{path}' would create a conflict at '{at}'"),
                    ));
                }
            }
            leaves.push(Leaf {
                op,
                path,
                arg: value,
            });
        }
    }
    Ok(leaves)
}

/// Where adding `path` conflicts with the existing leaf `existing`: at `existing` when it
/// is a prefix of (or equal to) `path`, at `path` when `path` is a prefix of it.
fn conflict(existing: &str, path: &str) -> Option<String> {
    if existing == path || path.starts_with(&format!("{existing}.")) {
        Some(existing.to_owned())
    } else if existing.starts_with(&format!("{path}.")) {
        Some(path.to_owned())
    } else {
        None
    }
}

/// Argument checks each node's `init` makes.
fn check_arg(op: &str, path: &str, v: &Bson) -> Result<(), CmdError> {
    match op {
        // arithmetic_node.cpp: the element printed as `path: value`.
        "$inc" if !is_number(v) => Err(CmdError::new(
            14,
            "TypeMismatch",
            format!("Cannot increment with non-numeric argument: {{{path}: {v}}}"),
        )),
        "$pop" => match integer(v) {
            Some(1 | -1) => Ok(()),
            Some(n) => Err(failed_to_parse(format!("$pop expects 1 or -1, found: {n}"))),
            None => Err(failed_to_parse(format!("Expected a number in: {v}"))),
        },
        "$pullAll" if !matches!(v, Bson::Array(_)) => Err(bad_value(format!(
            "$pullAll requires an array argument but was given a {}",
            type_name(v)
        ))),
        "$push" => push_spec(v).map(|_| ()),
        "$addToSet" => addtoset_values(v).map(|_| ()),
        _ => Ok(()),
    }
}

pub(super) fn is_number(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
    )
}

/// `parseIntegerElementToLong`: an integer, or a double with no fraction.
pub(super) fn integer(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.2e18 => Some(*d as i64),
        _ => None,
    }
}

/// A parsed `$push` argument (`push_node.cpp`, `PushNode::init`).
pub(super) struct PushSpec {
    pub(super) values: Vec<Bson>,
    pub(super) slice: Option<i64>,
    pub(super) position: Option<i64>,
}

pub(super) fn push_spec(v: &Bson) -> Result<PushSpec, CmdError> {
    let each_form = matches!(v, Bson::Document(d) if d.contains_key("$each"));
    let Bson::Document(clauses) = v else {
        return Ok(PushSpec {
            values: vec![v.clone()],
            slice: None,
            position: None,
        });
    };
    if !each_form {
        return Ok(PushSpec {
            values: vec![v.clone()],
            slice: None,
            position: None,
        });
    }
    let mut spec = PushSpec {
        values: Vec::new(),
        slice: None,
        position: None,
    };
    for (name, clause) in clauses {
        match name.as_str() {
            "$each" => match clause {
                Bson::Array(items) => spec.values = items.clone(),
                other => {
                    return Err(bad_value(format!(
                        "The argument to $each in $push must be an array but it was of type: {}",
                        type_name(other)
                    )))
                }
            },
            "$slice" => {
                spec.slice = Some(integer(clause).ok_or_else(|| {
                    bad_value(format!(
                        "The value for $slice must be an integer value but was given type: {}",
                        type_name(clause)
                    ))
                })?)
            }
            "$position" => {
                spec.position = Some(integer(clause).ok_or_else(|| {
                    bad_value(format!(
                        "The value for $position must be an integer value, not of type: {}",
                        type_name(clause)
                    ))
                })?)
            }
            "$sort" => return Err(not_simulated("$push with $sort")),
            other => return Err(bad_value(format!("Unrecognized clause in $push: {other}"))),
        }
    }
    Ok(spec)
}

/// The values `$addToSet` adds, deduplicated (`addtoset_node.cpp`, `init`).
pub(super) fn addtoset_values(v: &Bson) -> Result<Vec<Bson>, CmdError> {
    let mut values: Vec<Bson> = match v {
        Bson::Document(d) if d.keys().next().map(String::as_str) == Some("$each") => {
            let Some(Bson::Array(items)) = d.get("$each") else {
                return Err(CmdError::new(
                    14,
                    "TypeMismatch",
                    format!(
                        "The argument to $each in $addToSet must be an array but it was of type {}",
                        type_name(d.get("$each").unwrap_or(&Bson::Null))
                    ),
                ));
            };
            if d.len() > 1 {
                return Err(bad_value(format!(
                    "Found unexpected fields after $each in $addToSet: {d}"
                )));
            }
            items.clone()
        }
        other => vec![other.clone()],
    };
    let mut seen: Vec<Bson> = Vec::new();
    values.retain(|x| {
        if seen.iter().any(|s| matcher::values_equal(s, x)) {
            false
        } else {
            seen.push(x.clone());
            true
        }
    });
    Ok(values)
}

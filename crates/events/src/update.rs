//! What an update changed, decoded from the update formats MongoDB logs, as change streams
//! report it (`updateDescription`).
//!
//! # The formats
//!
//! An update entry (`op: "u"`) carries in `o` one of (looked up in the server source,
//! repository `mongodb/mongo`):
//!
//! * **a delta**, `{$v: 2, diff: {...}}` (5.0+; `src/mongo/db/update/
//!   document_diff_serialization.h`). A document diff has sections `u` (updated fields), `i`
//!   (inserted fields), `d` (deleted fields, values ignored), `b` (binary diffs of BinData
//!   fields, 7.x+), and sub-diffs `s<field>` for fields whose value is itself changed in
//!   place. A sub-diff with `a: true` is an array diff: `l` is the array's new length when
//!   it shrank, `u<index>` a replaced or appended element, `s<index>` an element changed in
//!   place.
//! * **modifiers**, `{$set: {...}, $unset: {...}}` (`$v: 1` or no `$v`, before 5.0;
//!   `src/mongo/db/update/v1_log_builder.h`: the server logs every update operator as these
//!   two).
//! * **a replacement**: the whole new document, recognisable by its `_id`.
//!
//! # How change streams describe them
//!
//! Followed exactly (`src/mongo/db/pipeline/change_stream_event_transform.cpp`,
//! `change_stream_document_diff_parser.cpp` and its test):
//!
//! * a delta: per document level, the `u`, then `i`, then `b` entries become
//!   `updatedFields` (dotted paths, in that order), then `d` entries `removedFields`, then
//!   the sub-diffs are visited in order; in an array, `l` becomes a `truncatedArrays` entry
//!   `{field, newSize}` before its elements, and each `u<index>` an `updatedFields` entry
//!   `path.index`. A path is ambiguous when a field name below the root is a canonical
//!   number (`"0"`, not `"01"`) or any field name contains a dot; such paths also get a
//!   `disambiguatedPaths` entry listing the parts, array indexes as numbers.
//! * modifiers: `$set` as `updatedFields` (its keys are already dotted paths), the keys of
//!   `$unset` as `removedFields`; no `truncatedArrays`.
//! * a replacement: `operationType: "replace"` with the document, no description.
//!
//! A malformed update is an [`UpdateError`] naming the path and what is wrong; never a
//! panic.

use bson::{Bson, Document};

/// One part of a disambiguated path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPart {
    /// A field name (may contain dots or be numeric).
    Field(String),
    /// An array index.
    Index(u32),
}

/// What an update changed, as change streams' `updateDescription` holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpdateDescription {
    /// Dotted path and new value, in the server's order. A path may repeat (the server
    /// keeps both when a diff names a dotted field and a sub-field of the same spelling).
    pub updated_fields: Vec<(String, Bson)>,
    /// Dotted paths of removed fields.
    pub removed_fields: Vec<String>,
    /// Arrays that shrank: dotted path and new length.
    pub truncated_arrays: Vec<(String, u32)>,
    /// Paths above whose dotted form is ambiguous, with their parts.
    pub disambiguated_paths: Vec<(String, Vec<PathPart>)>,
}

impl UpdateDescription {
    /// The description as change streams write it: `{updatedFields, removedFields,
    /// truncatedArrays}` and, when any path is ambiguous, `disambiguatedPaths`.
    pub fn to_document(&self) -> Document {
        let mut updated = Document::new();
        for (path, value) in &self.updated_fields {
            updated.insert(path.clone(), value.clone());
        }
        let mut d = Document::new();
        d.insert("updatedFields", updated);
        d.insert(
            "removedFields",
            self.removed_fields
                .iter()
                .map(|p| Bson::String(p.clone()))
                .collect::<Vec<_>>(),
        );
        d.insert(
            "truncatedArrays",
            self.truncated_arrays
                .iter()
                .map(|(field, size)| {
                    Bson::Document(bson::doc! {"field": field.clone(), "newSize": *size as i32})
                })
                .collect::<Vec<_>>(),
        );
        if !self.disambiguated_paths.is_empty() {
            let mut paths = Document::new();
            for (path, parts) in &self.disambiguated_paths {
                paths.insert(
                    path.clone(),
                    parts
                        .iter()
                        .map(|p| match p {
                            PathPart::Field(f) => Bson::String(f.clone()),
                            PathPart::Index(i) => Bson::Int32(*i as i32),
                        })
                        .collect::<Vec<_>>(),
                );
            }
            d.insert("disambiguatedPaths", paths);
        }
        d
    }
}

/// What an update entry's `o` is.
#[derive(Clone, Debug, PartialEq)]
pub enum UpdateKind {
    /// Fields changed in place (a delta or modifiers).
    Update(UpdateDescription),
    /// The document was replaced by this one.
    Replace(Document),
}

/// A malformed update.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed update at {path:?}: {problem}")]
pub struct UpdateError {
    /// Where in the diff (dotted; empty at the root).
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

fn err(path: &Path, problem: impl Into<String>) -> UpdateError {
    UpdateError {
        path: path.dotted(),
        problem: problem.into(),
    }
}

/// Decodes an update entry's `o` (see the module docs).
///
/// # Errors
/// A `$v` other than 1 or 2, a delta without a `diff` document, or a malformed diff.
pub fn decode(o: &Document) -> Result<UpdateKind, UpdateError> {
    let root = Path::default();
    let version = match o.get("$v") {
        None => None,
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Double(v)) if v.fract() == 0.0 => Some(*v as i64),
        Some(other) => return Err(err(&root, format!("$v is {other}, not a number"))),
    };
    match version {
        Some(2) => match o.get("diff") {
            Some(Bson::Document(diff)) => {
                let mut b = Builder::default();
                b.document(diff, &mut Path::default())?;
                Ok(UpdateKind::Update(b.desc))
            }
            _ => Err(err(&root, "$v: 2 without a diff document")),
        },
        Some(1) | None => {
            if o.keys().any(|k| k.starts_with('$') && k != "$v") {
                decode_modifiers(o).map(UpdateKind::Update)
            } else if o.contains_key("_id") || version.is_none() {
                // change_stream_event_transform.cpp: no `o._id` means modifiers; with it,
                // a replacement. A document without `$` keys is a replacement either way
                // (a replacement keeps `_id`, so this is only reached with `_id`).
                Ok(UpdateKind::Replace(o.clone()))
            } else {
                decode_modifiers(o).map(UpdateKind::Update)
            }
        }
        Some(v) => Err(err(
            &root,
            format!("update format $v: {v} is not one MongoDB logs (1 or 2)"),
        )),
    }
}

fn decode_modifiers(o: &Document) -> Result<UpdateDescription, UpdateError> {
    let mut desc = UpdateDescription::default();
    for (k, v) in o {
        match (k.as_str(), v) {
            ("$v", _) => {}
            ("$set", Bson::Document(set)) => {
                for (path, value) in set {
                    desc.updated_fields.push((path.clone(), value.clone()));
                }
            }
            ("$unset", Bson::Document(unset)) => {
                desc.removed_fields.extend(unset.keys().cloned());
            }
            ("$set" | "$unset", other) => {
                return Err(err(
                    &Path::default(),
                    format!("{k} holds {other}, not a document"),
                ))
            }
            (other, _) => {
                return Err(err(
                    &Path::default(),
                    format!("{other} is not an operator MongoDB logs in updates ($set, $unset)"),
                ))
            }
        }
    }
    Ok(desc)
}

/// The current path while the diff is walked: parts and whether the path is ambiguous as
/// of each part.
#[derive(Default)]
struct Path {
    parts: Vec<(PathPart, bool)>,
}

impl Path {
    fn push(&mut self, part: PathPart) {
        let ambiguous_before = self.parts.last().is_some_and(|(_, a)| *a);
        let ambiguous = ambiguous_before
            || match &part {
                PathPart::Index(_) => false,
                PathPart::Field(f) => {
                    (!self.parts.is_empty() && is_canonical_number(f)) || f.contains('.')
                }
            };
        self.parts.push((part, ambiguous));
    }

    fn pop(&mut self) {
        self.parts.pop();
    }

    fn dotted(&self) -> String {
        let mut s = String::new();
        for (i, (p, _)) in self.parts.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            match p {
                PathPart::Field(f) => s.push_str(f),
                PathPart::Index(n) => s.push_str(&n.to_string()),
            }
        }
        s
    }

    fn ambiguous(&self) -> bool {
        self.parts.last().is_some_and(|(_, a)| *a)
    }
}

/// `FieldRef::isNumericPathComponentStrict`: digits only, no leading zero unless "0".
fn is_canonical_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

#[derive(Default)]
struct Builder {
    desc: UpdateDescription,
}

impl Builder {
    fn note_ambiguity(&mut self, path: &Path) {
        if path.ambiguous() {
            self.desc.disambiguated_paths.push((
                path.dotted(),
                path.parts.iter().map(|(p, _)| p.clone()).collect(),
            ));
        }
    }

    fn updated(&mut self, path: &mut Path, part: PathPart, value: &Bson) {
        path.push(part);
        self.desc
            .updated_fields
            .push((path.dotted(), value.clone()));
        self.note_ambiguity(path);
        path.pop();
    }

    fn document(&mut self, diff: &Document, path: &mut Path) -> Result<(), UpdateError> {
        let section = |name: &str| -> Result<Option<&Document>, UpdateError> {
            match diff.get(name) {
                None => Ok(None),
                Some(Bson::Document(d)) => Ok(Some(d)),
                Some(other) => Err(err(
                    path,
                    format!("section {name:?} holds {other}, not a document"),
                )),
            }
        };
        let (u, i, b, d) = (section("u")?, section("i")?, section("b")?, section("d")?);
        for sec in [u, i, b].into_iter().flatten() {
            for (field, value) in sec {
                self.updated(path, PathPart::Field(field.clone()), value);
            }
        }
        if let Some(d) = d {
            for field in d.keys() {
                path.push(PathPart::Field(field.clone()));
                self.desc.removed_fields.push(path.dotted());
                self.note_ambiguity(path);
                path.pop();
            }
        }
        for (key, value) in diff {
            match key.as_str() {
                "u" | "i" | "b" | "d" => {}
                k if k.starts_with('s') && k.len() > 1 => {
                    let Bson::Document(sub) = value else {
                        return Err(err(
                            path,
                            format!("sub-diff {k:?} holds {value}, not a document"),
                        ));
                    };
                    path.push(PathPart::Field(k[1..].to_owned()));
                    let r = self.sub(sub, path);
                    path.pop();
                    r?;
                }
                k => {
                    return Err(err(
                        path,
                        format!("{k:?} is not a section of a document diff (u, i, d, b, s<field>)"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// A sub-diff at `path` (already pushed): an array diff when it has `a: true`.
    fn sub(&mut self, diff: &Document, path: &mut Path) -> Result<(), UpdateError> {
        match diff.get("a") {
            Some(Bson::Boolean(true)) => self.array(diff, path),
            Some(other) => Err(err(path, format!("array marker a holds {other}, not true"))),
            None => self.document(diff, path),
        }
    }

    fn array(&mut self, diff: &Document, path: &mut Path) -> Result<(), UpdateError> {
        if path.parts.is_empty() {
            return Err(err(path, "an array diff at the root of the document"));
        }
        if let Some(l) = diff.get("l") {
            let size = match l {
                Bson::Int32(n) if *n >= 0 => *n as u32,
                Bson::Int64(n) if (0..=i64::from(u32::MAX)).contains(n) => *n as u32,
                other => return Err(err(path, format!("array length l is {other}"))),
            };
            self.desc.truncated_arrays.push((path.dotted(), size));
            self.note_ambiguity(path);
        }
        for (key, value) in diff {
            if key == "a" || key == "l" {
                continue;
            }
            let (kind, index) = key.split_at(1.min(key.len()));
            let index: u32 = index.parse().map_err(|_| {
                err(
                    path,
                    format!("{key:?} is not an array diff entry (a, l, u<index>, s<index>)"),
                )
            })?;
            match kind {
                "u" => self.updated(path, PathPart::Index(index), value),
                "s" => {
                    let Bson::Document(sub) = value else {
                        return Err(err(
                            path,
                            format!("sub-diff {key:?} holds {value}, not a document"),
                        ));
                    };
                    path.push(PathPart::Index(index));
                    let r = self.sub(sub, path);
                    path.pop();
                    r?;
                }
                _ => {
                    return Err(err(
                        path,
                        format!("{key:?} is not an array diff entry (a, l, u<index>, s<index>)"),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Applies `desc` to `pre` as a consumer of change events would: arrays truncated, then
/// each updated path set (creating documents on the way; an index at or beyond an
/// array's end extends it, padded with nulls, as the server's `$set` and `$v: 2` `u<index>`
/// do), then each removed path unset. Paths are split at dots unless
/// `disambiguatedPaths` gives their parts; a numeric part indexes an array when the value
/// there is an array.
///
/// # Errors
/// A path that runs through a value that is neither a document nor an array, an array
/// index beyond the end of an array being truncated, or one further beyond the end than
/// the server pads.
pub fn apply(pre: &Document, desc: &UpdateDescription) -> Result<Document, String> {
    let mut doc = pre.clone();
    let parts_of = |path: &str| -> Vec<PathPart> {
        if let Some((_, parts)) = desc.disambiguated_paths.iter().find(|(p, _)| p == path) {
            return parts.clone();
        }
        path.split('.')
            .map(|p| match p.parse::<u32>() {
                Ok(n) if is_canonical_number(p) => PathPart::Index(n),
                _ => PathPart::Field(p.to_owned()),
            })
            .collect()
    };
    for (path, size) in &desc.truncated_arrays {
        match slot(&mut doc, &parts_of(path), false)? {
            Some(Bson::Array(a)) => a.truncate(*size as usize),
            other => return Err(format!("truncatedArrays {path}: not an array ({other:?})")),
        }
    }
    for (path, value) in &desc.updated_fields {
        match slot(&mut doc, &parts_of(path), true)? {
            Some(v) => *v = value.clone(),
            None => return Err(format!("updatedFields {path}: cannot be set")),
        }
    }
    for path in &desc.removed_fields {
        let parts = parts_of(path);
        let (last, parent) = parts.split_last().ok_or("an empty removed path")?;
        let container = if parent.is_empty() {
            Some(&mut doc)
        } else {
            match slot(&mut doc, parent, false)? {
                Some(Bson::Document(d)) => Some(d),
                _ => None,
            }
        };
        if let Some(d) = container {
            let key = match last {
                PathPart::Field(f) => f.clone(),
                PathPart::Index(i) => i.to_string(),
            };
            d.remove(&key);
        }
    }
    Ok(doc)
}

/// The server's cap on the nulls that pad an array up to a new index
/// (`kMaxPaddingAllowed`, `src/mongo/db/update/path_support.h`).
const MAX_PADDING: usize = 1_500_000;

/// The value at `parts`, created (as `Null`, with documents on the way) when `create`.
fn slot<'a>(
    doc: &'a mut Document,
    parts: &[PathPart],
    create: bool,
) -> Result<Option<&'a mut Bson>, String> {
    let Some((first, rest)) = parts.split_first() else {
        return Ok(None);
    };
    let key = match first {
        PathPart::Field(f) => f.clone(),
        PathPart::Index(i) => i.to_string(),
    };
    if !doc.contains_key(&key) {
        if !create {
            return Ok(None);
        }
        doc.insert(key.clone(), Bson::Null);
    }
    let mut cur = doc.get_mut(&key).ok_or("vanished")?;
    for part in rest {
        cur = match cur {
            Bson::Array(a) => {
                let PathPart::Index(i) = part else {
                    return Err(format!("field {part:?} inside an array"));
                };
                let i = *i as usize;
                if i >= a.len() && create {
                    // As the server sets an index beyond the end: the array padded with
                    // nulls (`$set` of `a.5`, a `$v: 2` `u5`), no further than it would.
                    if i - a.len() > MAX_PADDING {
                        return Err(format!(
                            "array index {i} more than {MAX_PADDING} beyond the end ({})",
                            a.len()
                        ));
                    }
                    a.resize(i + 1, Bson::Null);
                }
                let len = a.len();
                a.get_mut(i)
                    .ok_or_else(|| format!("array index {i} beyond the end ({len})"))?
            }
            Bson::Document(d) => {
                let key = match part {
                    PathPart::Field(f) => f.clone(),
                    PathPart::Index(i) => i.to_string(),
                };
                if !d.contains_key(&key) {
                    if !create {
                        return Ok(None);
                    }
                    d.insert(key.clone(), Bson::Null);
                }
                d.get_mut(&key).ok_or("vanished")?
            }
            v @ Bson::Null if create => {
                let key = match part {
                    PathPart::Field(f) => f.clone(),
                    PathPart::Index(i) => i.to_string(),
                };
                *v = Bson::Document(bson::doc! { key.clone(): Bson::Null });
                match v {
                    Bson::Document(d) => d.get_mut(&key).ok_or("vanished")?,
                    _ => return Err("unreachable".into()),
                }
            }
            other => {
                return Err(format!("cannot descend into {other} at {part:?}"));
            }
        };
    }
    Ok(Some(cur))
}

#[cfg(test)]
mod tests;

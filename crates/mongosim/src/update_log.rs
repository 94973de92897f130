//! How an operator update (`$set`, `$unset`, `$inc`) is logged: per modified path, as
//! mongod's log builders write it (mongodb/mongo `src/mongo/db/update/`).
//!
//! * 5.0+ (`v2_log_builder.cpp`): a `$v: 2` delta built along each modified path. Fields
//!   the update replaced are `u` entries at their own level, under `s<field>` sub-diffs
//!   for the documents on the way (which existed before); a field the update created is an
//!   `i` entry at the level of its first new component, holding the whole created
//!   sub-document; an unset field is a `d` entry (`false`). A level serialises as `d`,
//!   `u`, `i`, then its sub-diffs in the order they were first touched
//!   (`document_diff_serialization.cpp`, `DocumentSubDiffFrame`).
//! * 4.4 and earlier (`v1_log_builder.cpp`): `$set` with the dotted path of each updated
//!   or created field and its new value, `$unset` with `{path: true}`; the sections in the
//!   order first used; `$v: 1` first from 4.4 (`includeVersionField`).
//!
//! A field set to the value it already had is not logged (mongod treats it as a no-op).
//! The simulator has no array operators and no positional paths; a path through a value
//! that is not a document (which mongod refuses) is logged as an update of that value.

use bson::{Bson, Document};

use crate::version::ServerVersion;

/// One level of a `$v: 2` diff.
#[derive(Default)]
struct Level {
    deletes: Vec<String>,
    updates: Vec<(String, Bson)>,
    inserts: Vec<(String, Bson)>,
    subs: Vec<(String, Level)>,
}

impl Level {
    fn sub(&mut self, name: &str) -> &mut Level {
        let i = match self.subs.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.subs.push((name.to_owned(), Level::default()));
                self.subs.len() - 1
            }
        };
        &mut self.subs[i].1
    }

    fn is_empty(&self) -> bool {
        self.deletes.is_empty()
            && self.updates.is_empty()
            && self.inserts.is_empty()
            && self.subs.iter().all(|(_, s)| s.is_empty())
    }

    fn serialize(&self) -> Document {
        let mut d = Document::new();
        if !self.deletes.is_empty() {
            d.insert(
                "d",
                self.deletes
                    .iter()
                    .map(|k| (k.clone(), Bson::Boolean(false)))
                    .collect::<Document>(),
            );
        }
        if !self.updates.is_empty() {
            d.insert("u", self.updates.iter().cloned().collect::<Document>());
        }
        if !self.inserts.is_empty() {
            d.insert("i", self.inserts.iter().cloned().collect::<Document>());
        }
        for (name, sub) in &self.subs {
            if !sub.is_empty() {
                d.insert(format!("s{name}"), sub.serialize());
            }
        }
        d
    }
}

fn value_at<'a>(doc: &'a Document, parts: &[&str]) -> Option<&'a Bson> {
    let (first, rest) = parts.split_first()?;
    let mut cur = doc.get(*first)?;
    for p in rest {
        cur = match cur {
            Bson::Document(d) => d.get(*p)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// How much of `parts` exists in `doc` as documents on the way: `Ok(n)` when the first
/// `n` components exist (all of them: the field exists), `Err(j)` when component `j`
/// exists but is not a document and the path continues below it.
fn existing_prefix(doc: &Document, parts: &[&str]) -> Result<usize, usize> {
    let mut cur = doc;
    for (i, p) in parts.iter().enumerate() {
        match cur.get(*p) {
            None => return Ok(i),
            Some(Bson::Document(d)) => cur = d,
            Some(_) if i + 1 == parts.len() => return Ok(i + 1),
            Some(_) => return Err(i),
        }
    }
    Ok(parts.len())
}

/// The paths an operator update touches, in the order its operators list them, each
/// with whether it was unset.
fn touched(update: &Document) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for (op, arg) in update {
        let Bson::Document(arg) = arg else { continue };
        let unset = op == "$unset";
        if matches!(op.as_str(), "$set" | "$unset" | "$inc") {
            out.extend(arg.keys().map(|k| (k.clone(), unset)));
        }
    }
    out
}

/// The `o` of the update entry for operator update `update`, which turned `before` into
/// `after`.
pub fn operator_update_o(
    version: ServerVersion,
    before: &Document,
    after: &Document,
    update: &Document,
) -> Document {
    if version.diff_updates() {
        let mut root = Level::default();
        for (path, unset) in touched(update) {
            let parts: Vec<&str> = path.split('.').collect();
            let n = parts.len();
            match existing_prefix(before, &parts) {
                Err(j) => {
                    // Through a non-document: the value at component j was replaced.
                    let mut level = &mut root;
                    for p in &parts[..j] {
                        level = level.sub(p);
                    }
                    if let Some(v) = value_at(after, &parts[..=j]) {
                        level.updates.push((parts[j].to_owned(), v.clone()));
                    }
                }
                Ok(k) if k == n => {
                    let mut level = &mut root;
                    for p in &parts[..n - 1] {
                        level = level.sub(p);
                    }
                    let old = value_at(before, &parts);
                    match value_at(after, &parts) {
                        None if unset => level.deletes.push(parts[n - 1].to_owned()),
                        Some(v) if !unset && Some(v) != old => {
                            level.updates.push((parts[n - 1].to_owned(), v.clone()))
                        }
                        _ => {}
                    }
                }
                Ok(k) => {
                    if unset {
                        continue; // unsetting a missing field changes nothing
                    }
                    let mut level = &mut root;
                    for p in &parts[..k] {
                        level = level.sub(p);
                    }
                    // Everything below the first new component was created by this update.
                    if !level.inserts.iter().any(|(name, _)| name == parts[k]) {
                        if let Some(v) = value_at(after, &parts[..=k]) {
                            level.inserts.push((parts[k].to_owned(), v.clone()));
                        }
                    }
                }
            }
        }
        bson::doc! {"$v": 2, "diff": root.serialize()}
    } else {
        let mut o = Document::new();
        if version.has_terms() {
            o.insert("$v", 1);
        }
        let mut set = Document::new();
        let mut unset = Document::new();
        let mut order: Vec<&str> = Vec::new();
        for (path, is_unset) in touched(update) {
            let parts: Vec<&str> = path.split('.').collect();
            let old = value_at(before, &parts);
            match (is_unset, value_at(after, &parts)) {
                (true, None) if old.is_some() => {
                    unset.insert(path.clone(), true);
                    if !order.contains(&"$unset") {
                        order.push("$unset");
                    }
                }
                (false, Some(v)) if Some(v) != old => {
                    set.insert(path.clone(), v.clone());
                    if !order.contains(&"$set") {
                        order.push("$set");
                    }
                }
                _ => {}
            }
        }
        for section in order {
            match section {
                "$set" => o.insert("$set", std::mem::take(&mut set)),
                _ => o.insert("$unset", std::mem::take(&mut unset)),
            };
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn v2(before: Document, update: Document) -> Document {
        let after = crate::world::apply_modifiers(&before, &update).unwrap();
        let o = operator_update_o(ServerVersion::V7_0, &before, &after, &update);
        // What the simulator's own secondaries apply gives the same document.
        let mut applied = before.clone();
        crate::oplog::apply_update_o(&mut applied, &o);
        assert_eq!(applied, after, "{o}");
        o.get_document("diff").unwrap().clone()
    }

    #[test]
    fn nested_paths_are_sub_diffs_as_mongod_logs_them() {
        let before = doc! {"_id": 1, "a": {"b": 1, "c": {"d": 2}}, "x": 1, "gone": 0};
        // Updated leaf below existing documents.
        assert_eq!(
            v2(before.clone(), doc! {"$set": {"a.c.d": 3}}),
            doc! {"sa": {"sc": {"u": {"d": 3}}}}
        );
        // A created field below an existing document; a created parent holds the whole
        // new sub-document.
        assert_eq!(
            v2(
                before.clone(),
                doc! {"$set": {"a.new": 1, "n.p.q": 2, "n.r": 3}}
            ),
            doc! {"i": {"n": {"p": {"q": 2}, "r": 3}}, "sa": {"i": {"new": 1}}}
        );
        // d, u, i at one level, then sub-diffs; unsetting a missing field is nothing.
        assert_eq!(
            v2(
                before.clone(),
                doc! {"$set": {"a.b": 5, "x": 2, "y": 1}, "$unset": {"gone": "", "nope": ""}, "$inc": {"a.c.d": 1}}
            ),
            doc! {"d": {"gone": false}, "u": {"x": 2}, "i": {"y": 1}, "sa": {"u": {"b": 5}, "sc": {"u": {"d": 3}}}}
        );
        // Setting a field to its value is not logged.
        assert_eq!(
            v2(before.clone(), doc! {"$set": {"x": 1, "a.b": 2}}),
            doc! {"sa": {"u": {"b": 2}}}
        );
        // A whole sub-document replaced is an update of that field.
        assert_eq!(
            v2(before, doc! {"$set": {"a": {"z": 1}}}),
            doc! {"u": {"a": {"z": 1}}}
        );
    }

    #[test]
    fn before_5_0_dotted_paths_go_to_set_and_unset() {
        let before = doc! {"_id": 1, "a": {"b": 1}, "x": 1};
        let update = doc! {"$unset": {"x": ""}, "$set": {"a.b": 2, "a.n.m": 3}};
        let after = crate::world::apply_modifiers(&before, &update).unwrap();
        assert_eq!(
            operator_update_o(ServerVersion::V4_4, &before, &after, &update),
            doc! {"$v": 1, "$unset": {"x": true}, "$set": {"a.b": 2, "a.n.m": 3}}
        );
        assert_eq!(
            operator_update_o(ServerVersion::Legacy, &before, &after, &update),
            doc! {"$unset": {"x": true}, "$set": {"a.b": 2, "a.n.m": 3}}
        );
    }
}

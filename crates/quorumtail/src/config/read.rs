//! Reading the file so that every problem is reported at once: a key that is unknown
//! or has a wrong type or value is reported (with its line) and taken out, and the
//! rest is read again, until what remains reads; then the values are validated.

use serde_path_to_error::Segment;

/// One step of a key path.
#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Enum { variant } => Some(Step::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// Reads `text` into a [`super::Config`], collecting every key-level problem.
///
/// # Errors
/// The TOML syntax error, with its line (nothing can be read past it).
pub(super) fn read(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(super::Config, Vec<String>), String> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())?;
    let doc = toml_edit::ImDocument::parse(text).ok();
    let mut problems: Vec<(usize, String)> = Vec::new();
    for (at, problem) in interpolate_table(&mut table, &mut Vec::new(), env) {
        let line = doc.as_ref().and_then(|d| line_of(d, text, &at));
        let key = display(&at);
        problems.push((
            line.unwrap_or(usize::MAX),
            match line {
                Some(l) => format!("{key} (line {l}): {problem}"),
                None => format!("{key}: {problem}"),
            },
        ));
    }
    // Each round takes one key out; a file has far fewer keys than this.
    for _ in 0..256 {
        let e = match serde_path_to_error::deserialize::<_, super::Config>(toml::Value::Table(
            table.clone(),
        )) {
            Ok(c) => return Ok((c, sorted(problems))),
            Err(e) => e,
        };
        let at = steps(e.path());
        let key = e.path().to_string();
        let line = doc.as_ref().and_then(|d| line_of(d, text, &at));
        // toml adds "in `key`" on a line of its own: the key leads the problem already.
        let inner = e.into_inner().to_string();
        let mut inner: String = inner
            .lines()
            .filter(|l| !l.starts_with("in `"))
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(hint) = did_you_mean(&inner) {
            inner.push_str(&hint);
        }
        problems.push((
            line.unwrap_or(usize::MAX),
            match (key.as_str(), line) {
                ("" | ".", _) => inner,
                (k, Some(l)) => format!("{k} (line {l}): {inner}"),
                (k, None) => format!("{k}: {inner}"),
            },
        ));
        if at.is_empty() || !remove(&mut table, &at) {
            // What remains cannot be read: validate nothing more than the defaults.
            return Ok((super::Config::default(), sorted(problems)));
        }
    }
    Ok((super::Config::default(), sorted(problems)))
}

fn sorted(mut problems: Vec<(usize, String)>) -> Vec<String> {
    problems.sort_by_key(|(line, _)| *line);
    problems.into_iter().map(|(_, p)| p).collect()
}

/// Keys whose problems make validation reports about them (or, for a `kind`, about
/// their section) meaningless: the key was taken out and its default stands in.
pub(super) fn shadowed(problems: &[String]) -> Vec<String> {
    problems
        .iter()
        .filter_map(|p| {
            let key = p.split([' ', ':']).next()?;
            // A list with a bad element is taken out whole.
            let key = match key.strip_suffix(']').and_then(|k| k.rsplit_once('[')) {
                Some((list, _)) => list,
                None => key,
            };
            Some(match key.strip_suffix(".kind") {
                Some(section) => format!("{section}."),
                None => key.to_owned(),
            })
        })
        .collect()
}

/// Replaces `${NAME}` in every string value by the environment variable `NAME`
/// (`$${` stands for a literal `${`); returns each problem with the key's path.
fn interpolate_table(
    table: &mut toml::Table,
    at: &mut Vec<Step>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<(Vec<Step>, String)> {
    let mut problems = Vec::new();
    for (k, v) in table.iter_mut() {
        at.push(Step::Key(k.clone()));
        interpolate_value(v, at, env, &mut problems);
        at.pop();
    }
    problems
}

fn interpolate_value(
    v: &mut toml::Value,
    at: &mut Vec<Step>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<(Vec<Step>, String)>,
) {
    match v {
        toml::Value::String(s) => match interpolate(s, env) {
            Ok(Some(new)) => *s = new,
            Ok(None) => {}
            Err(e) => problems.push((at.clone(), e)),
        },
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                at.push(Step::Index(i));
                interpolate_value(x, at, env, problems);
                at.pop();
            }
        }
        toml::Value::Table(t) => problems.extend(interpolate_table(t, at, env)),
        _ => {}
    }
}

/// `${NAME}` replaced by the variable, `$${` by `${`; `Ok(None)`: nothing to replace.
pub(super) fn interpolate(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = after.strip_prefix("${") {
            let end = r.find('}').ok_or_else(|| {
                "unclosed \"${\": write ${NAME} for an environment variable, or $${ for a literal \"${\"".to_owned()
            })?;
            let name = &r[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "\"${{{name}}}\" is not an environment variable name (letters, digits and '_'); write $${{ for a literal \"${{\""
                ));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(format!(
                        "the environment variable {name} (in \"${{{name}}}\") is not set; set it, or write $${{ for a literal \"${{\""
                    ))
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// `sink.librdkafka."sasl.password"`, `shards[0].members[1]`.
fn display(at: &[Step]) -> String {
    let mut s = String::new();
    for step in at {
        match step {
            Step::Key(k) if k.contains(['.', ' ', '"']) => s.push_str(&format!(".{k:?}")),
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s.trim_start_matches('.').to_owned()
}

fn remove(table: &mut toml::Table, at: &[Step]) -> bool {
    let (last, parents) = match at.split_last() {
        Some(x) => x,
        None => return false,
    };
    let mut node: &mut toml::Value = match parents.first() {
        Some(Step::Key(k)) => match table.get_mut(k) {
            Some(v) => v,
            None => return false,
        },
        Some(Step::Index(_)) => return false,
        None => {
            return match last {
                Step::Key(k) => table.remove(k).is_some(),
                Step::Index(_) => false,
            }
        }
    };
    for step in &parents[1..] {
        node = match (step, node) {
            (Step::Key(k), toml::Value::Table(t)) => match t.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Step::Index(i), toml::Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Step::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        // An element of a list with a wrong type: the list goes (indices must stay).
        (Step::Index(_), _) => remove(table, parents),
        _ => false,
    }
}

/// The line of the key (or element) at `at`, 1-based.
fn line_of(doc: &toml_edit::ImDocument<&str>, text: &str, at: &[Step]) -> Option<usize> {
    use toml_edit::{Item, Value};
    enum Node<'a> {
        Table(&'a toml_edit::Table),
        Inline(&'a toml_edit::InlineTable),
        Item(&'a Item),
        Value(&'a Value),
    }
    let mut node = Node::Table(doc.as_table());
    let mut span = None;
    for step in at {
        // Descend into the containers an item or value stands for.
        let n = match node {
            Node::Item(Item::Table(t)) => Node::Table(t),
            Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)) => {
                Node::Inline(t)
            }
            other => other,
        };
        node = match (step, n) {
            (Step::Key(k), Node::Table(t)) => {
                let (key, item) = t.get_key_value(k)?;
                span = key.span().or(item.span()).or(span);
                Node::Item(item)
            }
            (Step::Key(k), Node::Inline(t)) => {
                let (key, item) = t.get_key_value(k)?;
                span = key.span().or(item.span()).or(span);
                Node::Item(item)
            }
            (Step::Index(i), Node::Item(Item::ArrayOfTables(a))) => {
                let t = a.get(*i)?;
                span = t.span().or(span);
                Node::Table(t)
            }
            (Step::Index(i), Node::Item(Item::Value(Value::Array(a))))
            | (Step::Index(i), Node::Value(Value::Array(a))) => {
                let v = a.get(*i)?;
                span = v.span().or(span);
                Node::Value(v)
            }
            _ => return None,
        };
    }
    let start = span?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

/// serde names the expected keys or values; a near miss gets a suggestion.
fn did_you_mean(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("expected")?;
    let got = message.split('`').nth(1)?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let best = expected
        .iter()
        .map(|e| (edit_distance(&got.to_ascii_lowercase(), e), *e))
        .min()?;
    (best.0 <= 2 && best.1 != got).then(|| format!("; did you mean `{}`?", best.1))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

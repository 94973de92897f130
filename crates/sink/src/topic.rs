//! Topic names: the `[sink] topic` template with `{shard}`, `{db}` and `{coll}`, checked
//! when it is read, and Kafka's rules for a rendered name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::error::SinkError;
use crate::record::write_ns;

/// One piece of a [`TopicTemplate`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Shard,
    Db,
    Coll,
}

/// A topic name with placeholders `{shard}`, `{db}` and `{coll}`, validated when parsed:
/// an unknown placeholder, an unbalanced brace or an illegal literal character is an
/// error. Rendering writes into a reused buffer (no allocation per record).
#[derive(Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    source: String,
    parts: Vec<Part>,
}

impl fmt::Debug for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicTemplate({:?})", self.source)
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Whether `c` may appear in a Kafka topic name.
fn legal_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks a rendered topic name against Kafka's rules.
///
/// # Errors
/// A description of the problem.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the topic name is empty".into());
    }
    if name.len() > 249 {
        return Err(format!(
            "the topic name is {} characters long (at most 249)",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a legal topic name"));
    }
    if let Some(c) = name.chars().find(|&c| !legal_topic_char(c)) {
        return Err(format!(
            "{c:?} is not allowed in a topic name (letters, digits, '.', '_' and '-' only)"
        ));
    }
    Ok(())
}

impl FromStr for TopicTemplate {
    type Err = SinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem: String| SinkError::Config {
            key: "topic".into(),
            problem: format!("{s:?}: {problem}"),
        };
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            match c {
                '{' => {
                    let end = rest.find('}').ok_or_else(|| err("unclosed '{'".into()))?;
                    let name = &rest[1..end];
                    let part = match name {
                        "shard" => Part::Shard,
                        "db" => Part::Db,
                        "coll" => Part::Coll,
                        other => {
                            return Err(err(format!(
                                "unknown placeholder {{{other}}}; the placeholders are {{shard}}, {{db}} and {{coll}}"
                            )))
                        }
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(part);
                    rest = &rest[end + 1..];
                }
                '}' => return Err(err("'}' without a matching '{'".into())),
                c if legal_topic_char(c) => {
                    lit.push(c);
                    rest = &rest[c.len_utf8()..];
                }
                c => {
                    return Err(err(format!(
                    "{c:?} is not allowed in a topic name (letters, digits, '.', '_' and '-' only)"
                )))
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        if parts.is_empty() {
            return Err(err("the topic template is empty".into()));
        }
        let t = TopicTemplate {
            source: s.to_owned(),
            parts,
        };
        if let Some(fixed) = t.fixed() {
            check_topic_name(fixed).map_err(err)?;
        }
        Ok(t)
    }
}

impl<'de> Deserialize<'de> for TopicTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| match e {
            SinkError::Config { problem, .. } => serde::de::Error::custom(problem),
            other => serde::de::Error::custom(other),
        })
    }
}

impl TopicTemplate {
    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The topic, when the template has no placeholder.
    pub fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Literal(l)] => Some(l),
            _ => None,
        }
    }

    /// Whether the topic depends on the namespace (`{db}` or `{coll}`), so that not every
    /// topic can be known up front.
    pub fn uses_namespace(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Db | Part::Coll))
    }

    /// Renders into `out` (cleared first). A character Kafka does not allow in a topic
    /// name that a placeholder brings in (`$cmd` of commands, a space or a non-ASCII
    /// letter in a collection name) is written as `_`, as Debezium names its topics: a
    /// legal database or collection name never makes an illegal topic.
    pub fn render_into(&self, out: &mut String, shard: &str, db: &str, coll: &str) {
        out.clear();
        let push = |out: &mut String, v: &str| {
            if v.chars().all(legal_topic_char) {
                out.push_str(v);
            } else {
                out.extend(v.chars().map(|c| if legal_topic_char(c) { c } else { '_' }));
            }
        };
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Shard => push(out, shard),
                Part::Db => push(out, db),
                Part::Coll => push(out, coll),
            }
        }
    }

    /// Renders to a new string.
    pub fn render(&self, shard: &str, db: &str, coll: &str) -> String {
        let mut s = String::new();
        self.render_into(&mut s, shard, db, coll);
        s
    }
}

/// Renders the namespace header into `out`.
pub(crate) fn ns_into(out: &mut String, db: &str, coll: &str) {
    out.clear();
    write_ns(out, db, coll);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_render() {
        let t: TopicTemplate = "cdc.{shard}.{db}.{coll}".parse().unwrap();
        assert_eq!(t.render("rs0", "app", "users"), "cdc.rs0.app.users");
        assert!(t.uses_namespace());
        assert_eq!(t.fixed(), None);
        let f: TopicTemplate = "all-changes".parse().unwrap();
        assert_eq!(f.fixed(), Some("all-changes"));
        let s: TopicTemplate = "{shard}".parse().unwrap();
        assert!(!s.uses_namespace());
        // Characters Kafka refuses become `_`.
        assert_eq!(t.render("rs0", "app", "$cmd"), "cdc.rs0.app._cmd");
        assert_eq!(t.render("rs0", "app", "week 1 é"), "cdc.rs0.app.week_1__");
        assert!(check_topic_name(&t.render("rs0", "app", "$cmd")).is_ok());
    }

    #[test]
    fn templates_reject_with_the_reason() {
        for (bad, why) in [
            ("cdc.{collection}", "unknown placeholder {collection}"),
            ("cdc.{shard", "unclosed"),
            ("cdc}", "without a matching"),
            ("cdc topic", "not allowed"),
            ("", "empty"),
            ("..", "not a legal topic name"),
        ] {
            let e = bad.parse::<TopicTemplate>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("topic"), "{e}");
        }
    }
}

//! Configuration of the sinks and checkpoint stores: serde structs that reject unknown
//! keys, with named defaults and human durations ("10s").

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

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
        s.parse().map_err(serde::de::Error::custom)
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

    /// Renders into `out` (cleared first).
    pub fn render_into(&self, out: &mut String, shard: &str, db: &str, coll: &str) {
        out.clear();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Shard => out.push_str(shard),
                Part::Db => out.push_str(db),
                Part::Coll => out.push_str(coll),
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

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"10s\" or \"500ms\": {e}"
        ))
    })
}

fn default_topic() -> TopicTemplate {
    "quorumtail.{shard}"
        .parse()
        .expect("valid default template")
}
fn default_channel_capacity() -> usize {
    1024
}
fn default_max_in_flight() -> usize {
    10_000
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_require_topics() -> bool {
    true
}
fn default_fsync_every() -> usize {
    1000
}

/// The Kafka sink (`[sink]` with `kind = "kafka"` in the coordinator's config).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`: librdkafka's `bootstrap.servers`.
    pub brokers: String,
    /// Topic per record, with `{shard}`, `{db}`, `{coll}`; validated at startup so a typo
    /// fails before anything is read.
    #[serde(default = "default_topic")]
    pub topic: TopicTemplate,
    /// Capacity of the input channel: how many records the pipeline may hand over before
    /// `send` waits. Keeps memory flat when Kafka stalls.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
    /// Records handed to librdkafka and not yet confirmed (acknowledged and every earlier
    /// record of the shard acknowledged). When reached, the sink waits: it never drops.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long the startup check waits for broker metadata before reporting the brokers
    /// unreachable.
    #[serde(default = "default_startup_timeout", deserialize_with = "de_duration")]
    pub startup_timeout: Duration,
    /// Whether a topic that can be known at startup (no `{db}`/`{coll}` in the template)
    /// must already exist. Set to false for brokers that auto-create topics.
    #[serde(default = "default_require_topics")]
    pub require_topics: bool,
    /// librdkafka producer properties, passed through; they override the sink's defaults,
    /// except `enable.idempotence` and `acks`, which delivery-before-progress depends on.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

impl KafkaSinkConfig {
    /// A config with defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaSinkConfig {
            brokers: brokers.into(),
            topic: default_topic(),
            channel_capacity: default_channel_capacity(),
            max_in_flight: default_max_in_flight(),
            startup_timeout: default_startup_timeout(),
            require_topics: default_require_topics(),
            librdkafka: BTreeMap::new(),
        }
    }

    /// The librdkafka producer properties: the sink's defaults, then the user's
    /// passthrough map.
    ///
    /// # Errors
    /// [`SinkError::Config`] naming the key when a passthrough entry would weaken delivery
    /// (`enable.idempotence`, `acks`, `delivery.report.only.error`), conflicts with a sink
    /// setting (`bootstrap.servers`) or asks for transactions (`transactional.id`); or when
    /// a numeric setting is zero.
    pub fn producer_properties(&self) -> Result<BTreeMap<String, String>, SinkError> {
        if self.brokers.trim().is_empty() {
            return Err(SinkError::Config {
                key: "brokers".into(),
                problem: "empty; give host:port[,host:port...]".into(),
            });
        }
        for (key, v) in [
            ("channel_capacity", self.channel_capacity),
            ("max_in_flight", self.max_in_flight),
        ] {
            if v == 0 {
                return Err(SinkError::Config {
                    key: key.into(),
                    problem: "must be at least 1".into(),
                });
            }
        }
        producer_properties(&self.brokers, &self.librdkafka)
    }
}

pub(crate) fn producer_properties(
    brokers: &str,
    user: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SinkError> {
    let mut p: BTreeMap<String, String> = [
        ("bootstrap.servers", brokers),
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "5"),
        ("client.id", "quorumtail"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in user {
        let refuse = |problem: &str| {
            Err(SinkError::Config {
                key: format!("librdkafka.{k}"),
                problem: problem.to_owned(),
            })
        };
        let v_lc = v.trim().to_ascii_lowercase();
        match k.as_str() {
            "enable.idempotence" if v_lc != "true" => {
                return refuse(
                    "the sink needs the idempotent producer (no duplicates or reordering on \
                     retries); remove this key",
                )
            }
            "acks" | "request.required.acks" if v_lc != "all" && v_lc != "-1" => {
                return refuse(
                    "the sink confirms a checkpoint only after acks=all; remove this key",
                )
            }
            "delivery.report.only.error" if v_lc != "false" => {
                return refuse(
                    "the sink needs a delivery report for every record to move checkpoints; \
                     remove this key",
                )
            }
            "transactional.id" => {
                return refuse("the sink does not use transactions; remove this key")
            }
            "bootstrap.servers" | "metadata.broker.list" => {
                return refuse("set the brokers with the sink's `brokers` key instead")
            }
            _ => {}
        }
        p.insert(k.clone(), v.clone());
    }
    Ok(p)
}

/// The file sink: JSON lines, one record value per line.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Output file (appended to), or `-` for stdout.
    pub path: PathBuf,
    /// fsync after this many records at most; the sink also fsyncs whenever its input is
    /// momentarily empty, so a slow trickle is confirmed promptly.
    #[serde(default = "default_fsync_every")]
    pub fsync_every: usize,
    /// Capacity of the input channel.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
}

impl FileSinkConfig {
    /// A config with defaults for everything but the path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSinkConfig {
            path: path.into(),
            fsync_every: default_fsync_every(),
            channel_capacity: default_channel_capacity(),
        }
    }
}

/// Which sink to run: `kind = "kafka"` or `kind = "file"` plus that sink's keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    /// Deliver to Kafka.
    Kafka(KafkaSinkConfig),
    /// Write JSON lines to a file or stdout.
    File(FileSinkConfig),
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

    #[test]
    fn passthrough_overrides_defaults_but_not_delivery_guarantees() {
        let mut c = KafkaSinkConfig::new("127.0.0.1:9092");
        c.librdkafka.insert("linger.ms".into(), "50".into());
        c.librdkafka.insert("acks".into(), "-1".into());
        let p = c.producer_properties().unwrap();
        assert_eq!(p["linger.ms"], "50");
        assert_eq!(p["enable.idempotence"], "true");
        for (k, v, why) in [
            ("enable.idempotence", "false", "idempotent"),
            ("acks", "1", "acks=all"),
            ("request.required.acks", "0", "acks=all"),
            ("delivery.report.only.error", "true", "delivery report"),
            ("transactional.id", "x", "transactions"),
            ("bootstrap.servers", "h:1", "brokers"),
        ] {
            let mut c = KafkaSinkConfig::new("127.0.0.1:9092");
            c.librdkafka.insert(k.into(), v.into());
            let e = c.producer_properties().unwrap_err().to_string();
            assert!(
                e.contains(&format!("librdkafka.{k}")) && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn sink_kind_selects_the_sink_and_keeps_rejecting_unknown_keys() {
        let c: SinkConfig =
            serde_json::from_str(r#"{"kind":"file","path":"-","fsync_every":10}"#).unwrap();
        assert!(matches!(c, SinkConfig::File(f) if f.fsync_every == 10));
        let c: SinkConfig = serde_json::from_str(r#"{"kind":"kafka","brokers":"b:1"}"#).unwrap();
        assert!(matches!(c, SinkConfig::Kafka(k) if k.brokers == "b:1"));
        let e = serde_json::from_str::<SinkConfig>(r#"{"kind":"file","path":"-","fsync":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fsync"), "{e}");
        let e = serde_json::from_str::<SinkConfig>(r#"{"kind":"s3","path":"-"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3") && e.contains("kafka"), "{e}");
    }

    #[test]
    fn config_rejects_unknown_keys_and_parses_durations() {
        let c: KafkaSinkConfig = serde_json::from_str(
            r#"{"brokers":"b:1","topic":"x.{db}","startup_timeout":"3s","librdkafka":{"linger.ms":"1"}}"#,
        )
        .unwrap();
        assert_eq!(c.startup_timeout, Duration::from_secs(3));
        let e = serde_json::from_str::<KafkaSinkConfig>(r#"{"brokers":"b:1","topik":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("topik"), "{e}");
        let e = serde_json::from_str::<KafkaSinkConfig>(r#"{"brokers":"b:1","topic":"{x}"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown placeholder {x}"), "{e}");
    }
}

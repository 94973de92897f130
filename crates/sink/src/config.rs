//! The `[sink]` and `[checkpoint]` sections of quorumtail's config file, defined here once:
//! the serde structs the file is read into are the ones the sink and the stores run with.
//!
//! ```text
//!  config.toml ─► serde (unknown keys, wrong types: rejected with the key's path)
//!       [sink] ─► SinkConfig ──────┬─► SinkConfig::validate ─► every problem, "sink.<key>: ..."
//! [checkpoint] ─► CheckpointConfig ┘   CheckpointConfig::validate ─► "checkpoint.<key>: ..."
//!                       │
//!                       └─► Sink::start / CheckpointConfig::open (the same structs)
//! ```
//!
//! Each field's doc says why it exists; defaults are named functions; durations are human
//! strings ("10s", "500ms"). A key that only one `kind` uses is an `Option`, so that setting
//! it for the other kind is reported instead of silently ignored; its default is applied by
//! the accessor of the same name.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::client::{producer_properties, refused_property};
use crate::error::SinkError;
pub use crate::topic::{check_topic_name, TopicTemplate};

mod format;
pub use format::{FullDocument, JsonMode, Undecodable};

/// Parses a human duration ("500ms", "10s", "2m"); the problem quotes the value as written.
///
/// # Errors
/// What is wrong with `text` and how to write a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"2m\"")
    })
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Checks `host:port` (a broker, a member).
///
/// # Errors
/// What is wrong, to follow the value in a message.
pub fn check_host_port(s: &str) -> Result<(), &'static str> {
    let (host, port) = s.rsplit_once(':').ok_or("is not \"host:port\"")?;
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err("has no valid host; write \"host:port\"");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("has no valid port (1-65535)"),
    }
}

/// A secret from a file (a mounted secret): the whole file less one trailing newline.
///
/// # Errors
/// A problem naming `key` and the file when it cannot be read or is empty.
pub fn read_secret(key: &str, file: &Path) -> Result<String, String> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!("{key}: cannot read {name:?} ({e}); mount the secret there or fix the path")
    })?;
    let secret = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(format!(
            "{key}: {name:?} is empty; write the secret into it"
        ));
    }
    Ok(secret.to_owned())
}

/// Whether a librdkafka property holds a secret (never printed).
pub fn is_secret_property(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

/// Default `[sink] topic`.
pub const DEFAULT_TOPIC: &str = "quorumtail.{shard}";

fn default_topic() -> TopicTemplate {
    DEFAULT_TOPIC.parse().expect("valid default template")
}
fn default_path() -> &'static Path {
    Path::new("-")
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

/// `[sink] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// JSON lines to a file or stdout.
    #[default]
    File,
    /// Kafka through librdkafka.
    Kafka,
}

impl SinkKind {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Kafka => "kafka",
        }
    }
}

/// `[sink] key`: what a record's Kafka message key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Namespace and `_id` (canonical Extended JSON): all changes of one document land in
    /// one partition, in order.
    #[default]
    Document,
    /// The shard name: a shard's whole sequence in one partition, in order.
    Shard,
    /// The namespace: one collection's changes in one partition.
    Namespace,
}

impl KeyKind {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Document => "document",
            KeyKind::Shard => "shard",
            KeyKind::Namespace => "namespace",
        }
    }
}

/// `[sink] format`: what a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordFormat {
    /// The oplog entry as the server wrote it, with quorumtail's envelope (`shard`, `ts`,
    /// `id`, `op`, `ns`, `txn`).
    #[default]
    Oplog,
    /// One MongoDB change event per operation (`operationType`, `ns`, `documentKey`,
    /// `fullDocument`, `updateDescription`, ...), as change streams shape them.
    ChangeEvent,
    /// One record per insert, update, replace and delete, shaped as Debezium's MongoDB
    /// connector writes them (key `{"id": ...}`, value `{before, after, updateDescription,
    /// source, op, ts_ms, transaction}`); see `quorumtail_events::debezium`.
    Debezium {
        /// `source.name`, from `debezium_server_name`.
        server_name: &'static str,
    },
}

/// Default `[sink] debezium_server_name`: Debezium's `source.name`, the logical name
/// (`topic.prefix`) of the connector the records stand in for.
pub const DEFAULT_DEBEZIUM_SERVER_NAME: &str = "quorumtail";

const FORMATS: &[&str] = &["oplog", "change-event", "debezium"];

impl RecordFormat {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordFormat::Oplog => "oplog",
            RecordFormat::ChangeEvent => "change-event",
            RecordFormat::Debezium { .. } => "debezium",
        }
    }

    /// The format named `name` in the config file (Debezium with the default server name).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "oplog" => Some(RecordFormat::Oplog),
            "change-event" => Some(RecordFormat::ChangeEvent),
            "debezium" => Some(RecordFormat::Debezium {
                server_name: DEFAULT_DEBEZIUM_SERVER_NAME,
            }),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for RecordFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RecordFormat::parse(&s).ok_or_else(|| serde::de::Error::unknown_variant(&s, FORMATS))
    }
}

/// `name` for the life of the process, so that the format stays `Copy`: each distinct
/// name is kept once (a reload with the same name reuses it).
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(kept);
    kept
}

/// `[sink]`: where records go. The keys of one kind are `Option`s, read through the
/// accessors of the same name, which apply the defaults.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `file` (JSON lines, the default) or `kafka`.
    #[serde(default)]
    pub kind: SinkKind,
    /// What a record holds: `oplog` (the default), `change-event` or `debezium`.
    #[serde(default)]
    pub format: RecordFormat,
    /// `format = "debezium"`: the logical server name written in each record's
    /// `source.name` (Debezium's `topic.prefix`); default `quorumtail`. Set it to the
    /// connector's name when quorumtail replaces one, so consumers that check it keep
    /// working. [`SinkConfig::apply_format_options`] puts it into `format`.
    pub debezium_server_name: Option<String>,
    /// Whether update records carry the whole document as it is after the update:
    /// `off` (the default), `lookup` (`null` and a `notFound` marker when the document was
    /// deleted since) or `required` (a document that is gone stops the shard).
    #[serde(default)]
    pub full_document: FullDocument,
    /// `format = "change-event"` or `"debezium"`: an operation those records cannot
    /// describe stops the shard (`stop`, the default: nothing silently wrong reaches a
    /// consumer) or is written raw, flagged `"undecodable": true` (`raw`: the stream goes
    /// on and the consumer decides).
    #[serde(default)]
    pub undecodable: Undecodable,
    /// `relaxed` (the default) or `canonical` Extended JSON for the BSON values of
    /// `oplog` and `change-event` records (`debezium` records follow the connector).
    #[serde(default)]
    pub json: JsonMode,
    /// Capacity of the sink's input channel: how many records the shard pipelines may hand
    /// over before they wait. Keeps memory flat when the sink stalls.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
    /// File sink: the output file, appended to; `-` (the default) is stdout.
    pub path: Option<PathBuf>,
    /// File sink: fsync after at most this many records (default 1000). The sink also
    /// fsyncs whenever its input is momentarily empty, so a slow trickle is confirmed
    /// promptly; a record is confirmed (and may move a checkpoint) only once fsynced.
    pub fsync_every: Option<usize>,
    /// Kafka sink, required: bootstrap brokers, `host:port[,host:port...]` (librdkafka's
    /// `bootstrap.servers`).
    pub brokers: Option<String>,
    /// Kafka sink: the topic of each record, a template with `{shard}`, `{db}`, `{coll}`
    /// (default `quorumtail.{shard}`). Checked when the file is read, so a typo fails
    /// before anything is read.
    pub topic: Option<TopicTemplate>,
    /// Kafka sink: the message key (`document`, the default; `shard`; `namespace`), which
    /// decides what stays in order in one partition. With `format = "debezium"`,
    /// `document` is Debezium's key, `{"id": <_id>}`.
    #[serde(default)]
    pub key: KeyKind,
    /// Kafka sink: after each delete, also produce a tombstone (the delete's key with a
    /// null value) so that log compaction removes the document's records; needs
    /// `key = "document"`. Default false.
    pub tombstones: Option<bool>,
    /// Kafka sink: records handed to librdkafka and not yet confirmed (acknowledged, and
    /// every earlier record of the shard acknowledged), default 10000. When reached, the
    /// sink waits: it never drops. Bounds memory while a partition stalls.
    pub max_in_flight: Option<usize>,
    /// Kafka sink: how long the startup check waits for broker metadata before reporting
    /// the brokers unreachable (default "10s").
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub startup_timeout: Option<Duration>,
    /// Kafka sink: whether the topics that can be known at startup (a template without
    /// `{db}`/`{coll}`) must already exist (default true). Set to false for brokers that
    /// create topics on first use; a missing topic is then only logged.
    pub require_topics: Option<bool>,
    /// Kafka sink: librdkafka producer properties passed through (compression, TLS,
    /// SASL); they override the sink's defaults, except `enable.idempotence` and `acks`,
    /// which delivery before progress depends on. The Kafka checkpoint store uses them too.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// Kafka sink: a file holding the SASL password (a mounted secret), read once when the
    /// config is loaded ([`SinkConfig::load_secrets`]), a trailing newline removed; it
    /// becomes librdkafka's `sasl.password`, which must then not be set in `librdkafka`.
    pub sasl_password_file: Option<PathBuf>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::File,
            format: RecordFormat::Oplog,
            debezium_server_name: None,
            full_document: FullDocument::Off,
            undecodable: Undecodable::Stop,
            json: JsonMode::Relaxed,
            channel_capacity: default_channel_capacity(),
            path: None,
            fsync_every: None,
            brokers: None,
            topic: None,
            key: KeyKind::Document,
            tombstones: None,
            max_in_flight: None,
            startup_timeout: None,
            require_topics: None,
            librdkafka: BTreeMap::new(),
            sasl_password_file: None,
        }
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let librdkafka: BTreeMap<&str, &str> = self
            .librdkafka
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("SinkConfig")
            .field("kind", &self.kind)
            .field("format", &self.format)
            .field("debezium_server_name", &self.debezium_server_name)
            .field("full_document", &self.full_document)
            .field("undecodable", &self.undecodable)
            .field("json", &self.json)
            .field("channel_capacity", &self.channel_capacity)
            .field("path", &self.path)
            .field("fsync_every", &self.fsync_every)
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("max_in_flight", &self.max_in_flight)
            .field("startup_timeout", &self.startup_timeout)
            .field("require_topics", &self.require_topics)
            .field("librdkafka", &librdkafka)
            .field("sasl_password_file", &self.sasl_password_file)
            .finish()
    }
}

impl SinkConfig {
    /// Whether deletes are followed by tombstones (`tombstones`; Kafka only).
    pub fn tombstones(&self) -> bool {
        self.kind == SinkKind::Kafka && self.tombstones.unwrap_or(false)
    }

    /// A Kafka sink with defaults for everything but the brokers.
    pub fn kafka(brokers: impl Into<String>) -> Self {
        SinkConfig {
            kind: SinkKind::Kafka,
            brokers: Some(brokers.into()),
            ..SinkConfig::default()
        }
    }

    /// A file sink with defaults for everything but the path.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        SinkConfig {
            kind: SinkKind::File,
            path: Some(path.into()),
            ..SinkConfig::default()
        }
    }

    /// `path`, or its default `-` (stdout).
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(default_path())
    }

    /// `fsync_every`, or its default.
    pub fn fsync_every(&self) -> usize {
        self.fsync_every.unwrap_or_else(default_fsync_every)
    }

    /// `brokers` (empty when not set).
    pub fn brokers(&self) -> &str {
        self.brokers.as_deref().unwrap_or("")
    }

    /// `topic`, or its default `quorumtail.{shard}`.
    pub fn topic(&self) -> TopicTemplate {
        self.topic.clone().unwrap_or_else(default_topic)
    }

    /// `max_in_flight`, or its default.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.unwrap_or_else(default_max_in_flight)
    }

    /// `startup_timeout`, or its default.
    pub fn startup_timeout(&self) -> Duration {
        self.startup_timeout.unwrap_or_else(default_startup_timeout)
    }

    /// `require_topics`, or its default.
    pub fn require_topics(&self) -> bool {
        self.require_topics.unwrap_or_else(default_require_topics)
    }

    /// Puts the options of the chosen format into it (`debezium_server_name` into
    /// [`RecordFormat::Debezium`]); call once the file is read. Returns the problems, each
    /// starting with its key: an option of another format, an empty name.
    pub fn apply_format_options(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.undecodable != Undecodable::Stop && self.format == RecordFormat::Oplog {
            problems.push(format!(
                "sink.undecodable: only used by format = \"change-event\" or \"debezium\" (format is \"oplog\", whose records carry every entry as logged); remove it or set undecodable = \"{}\"",
                Undecodable::Stop.as_str()
            ));
        }
        if self.json != JsonMode::Relaxed && matches!(self.format, RecordFormat::Debezium { .. }) {
            problems.push(format!(
                "sink.json: only used by format = \"oplog\" or \"change-event\" (debezium records write JSON as the Debezium connector does); remove it or set json = \"{}\"",
                JsonMode::Relaxed.as_str()
            ));
        }
        if let Some(name) = &self.debezium_server_name {
            match self.format {
                RecordFormat::Debezium { .. } => {
                    if name.trim().is_empty() || name.chars().any(char::is_control) {
                        problems.push(format!(
                            "sink.debezium_server_name: {name:?} is not a name; write the logical name consumers expect in source.name, e.g. \"{DEFAULT_DEBEZIUM_SERVER_NAME}\""
                        ));
                    } else {
                        self.format = RecordFormat::Debezium {
                            server_name: intern(name),
                        };
                    }
                }
                other => problems.push(format!(
                    "sink.debezium_server_name: only used by format = \"debezium\" (format is \"{}\")",
                    other.as_str()
                )),
            }
        }
        problems
    }

    /// Reads `sasl_password_file` into librdkafka's `sasl.password` (Kafka sink only).
    /// Returns every problem, each starting with its key (`sink.sasl_password_file: ...`);
    /// the secret itself never appears in one.
    pub fn load_secrets(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(file) = self.sasl_password_file.clone() else {
            return problems;
        };
        if self.librdkafka.contains_key("sasl.password") {
            problems.push("sink.sasl_password_file: set either sasl_password_file or sink.librdkafka.\"sasl.password\", not both".into());
        }
        match read_secret("sink.sasl_password_file", &file) {
            Ok(p) if self.kind == SinkKind::Kafka => {
                self.librdkafka.insert("sasl.password".into(), p);
            }
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
        problems
    }

    /// Checks what types cannot express, without contacting anything: keys of the other
    /// kind, brokers, numbers out of range, passthrough properties that would weaken
    /// delivery, and (with librdkafka itself) property names and values.
    ///
    /// Returns every problem, one line each, starting with its key (`sink.brokers: ...`).
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let kafka_only = [
            ("brokers", self.brokers.is_some()),
            ("topic", self.topic.is_some()),
            ("max_in_flight", self.max_in_flight.is_some()),
            ("startup_timeout", self.startup_timeout.is_some()),
            ("require_topics", self.require_topics.is_some()),
            ("tombstones", self.tombstones.is_some()),
            ("librdkafka", !self.librdkafka.is_empty()),
            ("sasl_password_file", self.sasl_password_file.is_some()),
        ];
        let file_only = [
            ("path", self.path.is_some()),
            ("fsync_every", self.fsync_every.is_some()),
        ];
        let (other, keys) = match self.kind {
            SinkKind::File => (SinkKind::Kafka, &kafka_only[..]),
            SinkKind::Kafka => (SinkKind::File, &file_only[..]),
        };
        for (key, _) in keys.iter().filter(|(_, set)| *set) {
            problems.push(format!(
                "sink.{key}: only used by kind = \"{}\" (kind is \"{}\")",
                other.as_str(),
                self.kind.as_str()
            ));
        }
        match self.kind {
            SinkKind::File => {
                if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    problems.push("sink.path: must not be empty; use \"-\" for stdout".into());
                }
            }
            SinkKind::Kafka => match self.brokers.as_deref() {
                None | Some("") => problems.push(
                    "sink.brokers: required for kind = \"kafka\", e.g. \"127.0.0.1:9092\"".into(),
                ),
                Some(b) => {
                    for (i, broker) in b.split(',').enumerate() {
                        if let Err(why) = check_host_port(broker.trim()) {
                            problems.push(format!("sink.brokers: entry {i} {broker:?} {why}"));
                        }
                    }
                }
            },
        }
        for (key, problem) in self.value_problems(self.kind) {
            problems.push(format!("sink.{key}: {problem}"));
        }
        if self.tombstones == Some(true) && self.key != KeyKind::Document {
            problems.push(format!(
                "sink.tombstones: needs key = \"document\" (key is \"{}\"): a tombstone removes one document's records from a compacted topic",
                self.key.as_str()
            ));
        }
        // librdkafka itself judges property names and values (no broker is asked).
        if self.kind == SinkKind::Kafka && !self.librdkafka.is_empty() {
            let brokers = match self.brokers() {
                "" => "127.0.0.1:9092",
                b => b,
            };
            for (k, why) in crate::client::librdkafka_properties(brokers, &self.librdkafka) {
                problems.push(if k.is_empty() {
                    format!("sink.librdkafka: {why}")
                } else {
                    format!("sink.librdkafka.\"{k}\": {why}")
                });
            }
        }
        problems
    }

    /// The problems of values a sink of `kind` uses, as (key, problem): the part of
    /// [`SinkConfig::validate`] that starting a sink repeats.
    fn value_problems(&self, kind: SinkKind) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let at_least_one = "must be at least 1".to_owned();
        if self.channel_capacity == 0 {
            problems.push(("channel_capacity".into(), at_least_one.clone()));
        }
        match kind {
            SinkKind::File => {
                if self.fsync_every == Some(0) {
                    problems.push(("fsync_every".into(), at_least_one));
                }
            }
            SinkKind::Kafka => {
                if self.max_in_flight == Some(0) {
                    problems.push(("max_in_flight".into(), at_least_one));
                }
                if self.startup_timeout.is_some_and(|d| d.is_zero()) {
                    problems.push(("startup_timeout".into(), "must be above zero".into()));
                }
                for (k, v) in &self.librdkafka {
                    if let Some(why) = refused_property(k, v) {
                        problems.push((format!("librdkafka.\"{k}\""), why.into()));
                    }
                }
            }
        }
        problems
    }

    /// The first problem of the values a sink of `kind` uses, as a [`SinkError::Config`].
    pub(crate) fn check_values(&self, kind: SinkKind) -> Result<(), SinkError> {
        match self.value_problems(kind).into_iter().next() {
            Some((key, problem)) => Err(SinkError::Config { key, problem }),
            None => Ok(()),
        }
    }

    /// The librdkafka producer properties: the sink's defaults, then the user's
    /// passthrough map.
    ///
    /// # Errors
    /// [`SinkError::Config`] naming the key when the brokers are missing, a passthrough
    /// entry would weaken delivery (`enable.idempotence`, `acks`,
    /// `delivery.report.only.error`), conflicts with a sink setting (`bootstrap.servers`)
    /// or asks for transactions (`transactional.id`); or when a number is zero.
    pub fn producer_properties(&self) -> Result<BTreeMap<String, String>, SinkError> {
        if self.brokers().trim().is_empty() {
            return Err(SinkError::Config {
                key: "brokers".into(),
                problem: "empty; give host:port[,host:port...]".into(),
            });
        }
        self.check_values(SinkKind::Kafka)?;
        producer_properties(self.brokers(), &self.librdkafka)
    }
}

/// `[checkpoint] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// A JSON file replaced atomically.
    #[default]
    File,
    /// A compacted Kafka topic keyed by shard (uses the sink's brokers and librdkafka
    /// properties).
    Kafka,
}

fn default_checkpoint_path() -> PathBuf {
    "quorumtail.checkpoints.json".into()
}
fn default_checkpoint_topic() -> String {
    "quorumtail.checkpoints".into()
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_replication_factor() -> i32 {
    -1
}
fn default_checkpoint_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[checkpoint]`: where each shard's confirmed progress is stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// `file` (the default) or `kafka`.
    #[serde(default)]
    pub kind: CheckpointKind,
    /// File store: the JSON file, replaced atomically; its directory must exist.
    #[serde(default = "default_checkpoint_path")]
    pub path: PathBuf,
    /// Kafka store: the compacted topic holding one record per shard (created when
    /// missing).
    #[serde(default = "default_checkpoint_topic")]
    pub topic: String,
    /// How often confirmed progress is written (also on shutdown and on SIGUSR1): the
    /// records after the last stored checkpoint are produced again after a crash.
    #[serde(
        default = "default_checkpoint_interval",
        deserialize_with = "de_duration"
    )]
    pub interval: Duration,
    /// Refuse to start when the store holds no checkpoint. Without one every shard starts
    /// from `[start] position`; when a previous run's state was lost (a container recreated
    /// without its volume, a wrong path) that silently skips or repeats changes. Set it
    /// once the first checkpoints are stored.
    #[serde(default)]
    pub require_existing: bool,
    /// Kafka store: the replication factor of the topic when the store creates it; -1
    /// (the default) takes the broker's default.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Kafka store: bound on each load, each store and the startup check, so that an
    /// unreachable broker is reported instead of waited for.
    #[serde(
        default = "default_checkpoint_timeout",
        deserialize_with = "de_duration"
    )]
    pub timeout: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            kind: CheckpointKind::File,
            path: default_checkpoint_path(),
            topic: default_checkpoint_topic(),
            interval: default_checkpoint_interval(),
            require_existing: false,
            replication_factor: default_replication_factor(),
            timeout: default_checkpoint_timeout(),
        }
    }
}

impl CheckpointConfig {
    /// A file store at `path`, defaults for the rest.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        CheckpointConfig {
            path: path.into(),
            ..CheckpointConfig::default()
        }
    }

    /// A Kafka store in `topic` (it takes its brokers from the sink's config), defaults
    /// for the rest.
    pub fn kafka(topic: impl Into<String>) -> Self {
        CheckpointConfig {
            kind: CheckpointKind::Kafka,
            topic: topic.into(),
            ..CheckpointConfig::default()
        }
    }

    /// Checks what types cannot express; `sink` is the sink's config, whose brokers the
    /// Kafka store uses. Returns every problem, one line each, starting with its key
    /// (`checkpoint.topic: ...`).
    pub fn validate(&self, sink: &SinkConfig) -> Vec<String> {
        let mut problems = Vec::new();
        match self.kind {
            CheckpointKind::File => {
                if self.path.as_os_str().is_empty() {
                    problems.push("checkpoint.path: must not be empty".into());
                }
            }
            CheckpointKind::Kafka => {
                if sink.kind != SinkKind::Kafka {
                    problems.push("checkpoint.kind = \"kafka\": needs sink.kind = \"kafka\" (it uses the sink's brokers)".into());
                }
                if self.topic.trim().is_empty() {
                    problems.push("checkpoint.topic: must not be empty".into());
                } else if let Err(e) = check_topic_name(&self.topic) {
                    problems.push(format!("checkpoint.topic: {:?}: {e}", self.topic));
                }
            }
        }
        if self.interval.is_zero() {
            problems.push("checkpoint.interval: must be above zero".into());
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            problems.push(format!(
                "checkpoint.replication_factor: {} is not a replication factor; use -1 (the broker's default) or 1 and above",
                self.replication_factor
            ));
        }
        if self.timeout.is_zero() {
            problems.push("checkpoint.timeout: must be above zero".into());
        }
        problems
    }

    /// Where the store is, for messages: `file <path>` or `topic <topic>`.
    pub fn location(&self) -> String {
        match self.kind {
            CheckpointKind::File => format!("file {}", self.path.display()),
            CheckpointKind::Kafka => format!("topic {}", self.topic),
        }
    }
}

#[cfg(test)]
mod tests;

//! The configuration file: TOML, every key documented, unknown keys rejected.
//!
//! Parsing happens in two steps. serde reads the file into [`Config`] (unknown keys and
//! wrong types fail with the key's path, e.g. `shards[1].members`); then
//! [`Config::validate`] checks what types cannot express (quorums, addresses, templates,
//! patterns) and reports every problem at once, each with its key path and the fix.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use quorumtail_merge::{resolve_quorum, QuorumInfo};
use quorumtail_oplog::{filter::NsPattern, Filter, Timestamp};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Static topology: the shards' replica sets. May be empty when `[discovery]` is set.
    #[serde(default)]
    pub shards: Vec<ShardConfig>,
    /// Find shards in `config.shards` through mongos or the config servers.
    pub discovery: Option<DiscoveryConfig>,
    /// Connection settings shared by every per-node connection.
    #[serde(default)]
    pub mongo: MongoConfig,
    /// Where to start when a shard has no checkpoint.
    #[serde(default)]
    pub start: StartConfig,
    /// Which operations become records.
    #[serde(default)]
    pub filter: FilterConfig,
    /// Where records go.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Where per-shard progress is stored.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Limits that bound memory.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Metrics, health and status over HTTP.
    pub http: Option<HttpConfig>,
}

/// One shard replica set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// The replica set name, as in `config.shards._id` (records carry it as `shard`).
    /// Required (missing reads as empty, which validation reports with the others).
    #[serde(default)]
    pub name: String,
    /// Every data-bearing member as `host:port`. All are tailed; an entry is emitted once
    /// a quorum of them holds it. Required.
    #[serde(default)]
    pub members: Vec<String>,
    /// Voting members without an oplog. They raise the majority but never confirm an
    /// entry, which is why a set like 2 data + 1 arbiter needs both data members.
    #[serde(default)]
    pub arbiters: usize,
    /// Confirmations needed to emit an entry. Default: a majority of the voting members.
    /// Lower values trade failover safety for availability: `check` warns.
    pub quorum: Option<usize>,
}

/// `[discovery]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// A mongos or config-server URI; `listShards` (mongos) or `config.shards` (config
    /// servers) is read from it. Required.
    #[serde(default)]
    pub uri: String,
    /// How often the shard list and each shard's membership are re-read.
    #[serde(default = "default_discovery_interval")]
    pub interval: String,
}

fn default_discovery_interval() -> String {
    "10s".into()
}

/// `[mongo]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// Appended to every per-node connection string (`authSource=admin&tls=true`, ...).
    /// Credentials go in `username`/`password` or here; they are never logged.
    #[serde(default)]
    pub uri_options: String,
    /// User name for every node connection, if the cluster requires authentication.
    pub username: Option<String>,
    /// Password for `username`. Prefer `password_file` or `"${ENV_VAR}"` over writing it
    /// here.
    pub password: Option<String>,
    /// A file holding the password for `username` (a mounted secret): read once when the
    /// config is loaded, a trailing newline removed. Excludes `password`.
    pub password_file: Option<String>,
    /// Connect to every MongoDB process (members, mongos, config servers) over TLS. The
    /// members' certificates are always verified: against `tls_ca_file`, or the system's
    /// CA store when it is not set, and for the host name quorumtail connects to.
    #[serde(default)]
    pub tls: bool,
    /// CA certificates (PEM) that signed the members' certificates (mongod's
    /// `tlsCAFile` on the client side).
    pub tls_ca_file: Option<String>,
    /// quorumtail's client certificate followed by its private key (PEM), for members that
    /// require client certificates (`net.tls.CAFile` without
    /// `allowConnectionsWithoutCertificates`).
    pub tls_certificate_key_file: Option<String>,
    /// Entries per getMore batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// How long a tailing getMore waits for new entries before returning an empty batch
    /// (the idle tick that keeps lag metrics honest).
    #[serde(default = "default_max_await")]
    pub max_await: String,
}

fn default_batch_size() -> u32 {
    1000
}

fn default_max_await() -> String {
    "1s".into()
}

impl MongoConfig {
    /// How every connection to MongoDB is made (after [`Config::validate`] read the
    /// password file).
    pub fn access(&self) -> quorumtail_tailer::MongoAccess {
        quorumtail_tailer::MongoAccess {
            uri_options: self.uri_options.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            tls: self.tls.then(|| quorumtail_tailer::TlsFiles {
                ca_file: self.tls_ca_file.as_ref().map(Into::into),
                certificate_key_file: self.tls_certificate_key_file.as_ref().map(Into::into),
            }),
        }
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            uri_options: String::new(),
            username: None,
            password: None,
            password_file: None,
            tls: false,
            tls_ca_file: None,
            tls_certificate_key_file: None,
            batch_size: default_batch_size(),
            max_await: default_max_await(),
        }
    }
}

/// `[start]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartConfig {
    /// `latest` (from the newest entry at startup), `earliest` (from the oldest entry still
    /// in the oplogs), or `"<seconds>:<increment>"`. Used only for shards without a
    /// checkpoint.
    #[serde(default = "default_position")]
    pub position: String,
}

fn default_position() -> String {
    "latest".into()
}

impl Default for StartConfig {
    fn default() -> Self {
        StartConfig {
            position: default_position(),
        }
    }
}

/// A resolved `[start] position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The newest entry at startup (nothing before it is emitted).
    Latest,
    /// The oldest entry the oplogs still hold.
    Earliest,
    /// Everything after this timestamp.
    After(Timestamp),
}

/// `[filter]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Drop operations written by chunk migrations (`fromMigrate: true`).
    #[serde(default = "yes")]
    pub drop_from_migrate: bool,
    /// Drop no-op entries (`op: "n"`).
    #[serde(default = "yes")]
    pub drop_noops: bool,
    /// Drop `config.*`, `admin.*`, `local.*` and `*.system.*`, except the buckets of
    /// time-series collections (`*.system.buckets.*`), which hold user data.
    #[serde(default = "yes")]
    pub drop_internal: bool,
    /// Only these namespaces (`db.coll`, `db.*`); empty = all.
    #[serde(default)]
    pub include: Vec<String>,
    /// Never these namespaces.
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            drop_from_migrate: true,
            drop_noops: true,
            drop_internal: true,
            include: vec![],
            exclude: vec![],
        }
    }
}

/// Sink kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// JSON lines to a file or stdout.
    #[default]
    File,
    /// Kafka through librdkafka.
    Kafka,
}

/// Kafka message key choices.
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

/// `[sink]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `file` or `kafka`.
    #[serde(default)]
    pub kind: SinkKind,
    /// File sink: the output file; `-` is stdout.
    pub path: Option<String>,
    /// Kafka sink: bootstrap servers, `host:port[,host:port...]`.
    pub brokers: Option<String>,
    /// Kafka sink: topic template with `{shard}`, `{db}`, `{coll}`.
    pub topic: Option<String>,
    /// Kafka sink: message key.
    #[serde(default)]
    pub key: KeyKind,
    /// Kafka sink: librdkafka settings passed through (`compression.type`, TLS, SASL...).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// Kafka sink: a file holding the SASL password (a mounted secret), read once when the
    /// config is loaded, a trailing newline removed; it becomes librdkafka's
    /// `sasl.password`, which must then not be set in `[sink.librdkafka]`.
    pub sasl_password_file: Option<String>,
}

/// Whether a librdkafka property holds a secret (never printed).
pub fn is_secret_property(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("uri_options", &redact_uri_options(&self.uri_options))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_certificate_key_file", &self.tls_certificate_key_file)
            .field("batch_size", &self.batch_size)
            .field("max_await", &self.max_await)
            .finish()
    }
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
            .field("path", &self.path)
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("librdkafka", &librdkafka)
            .field("sasl_password_file", &self.sasl_password_file)
            .finish()
    }
}

/// `uri_options` with the value of any option that looks like a secret hidden.
fn redact_uri_options(options: &str) -> String {
    options
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if is_secret_property(&k.to_ascii_lowercase()) => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::File,
            path: None,
            brokers: None,
            topic: None,
            key: KeyKind::Document,
            librdkafka: BTreeMap::new(),
            sasl_password_file: None,
        }
    }
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

/// Default Kafka topic template.
pub const DEFAULT_TOPIC: &str = "quorumtail.{shard}";

/// Checkpoint store kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// A JSON file replaced atomically.
    #[default]
    File,
    /// A compacted Kafka topic keyed by shard (uses the sink's brokers and settings).
    Kafka,
}

/// `[checkpoint]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// `file` or `kafka`.
    #[serde(default)]
    pub kind: CheckpointKind,
    /// File store: path of the JSON file.
    #[serde(default = "default_checkpoint_path")]
    pub path: String,
    /// Kafka store: the compacted topic.
    #[serde(default = "default_checkpoint_topic")]
    pub topic: String,
    /// How often confirmed progress is written (also on shutdown and on SIGUSR1).
    #[serde(default = "default_checkpoint_interval")]
    pub interval: String,
    /// Refuse to start when the store holds no checkpoint. Without one every shard starts
    /// from `[start] position`; when a previous run's state was lost (a container recreated
    /// without its volume, a wrong path) that silently skips or repeats changes. Set it
    /// once the first checkpoints are stored.
    #[serde(default)]
    pub require_existing: bool,
}

fn default_checkpoint_path() -> String {
    "quorumtail.checkpoints.json".into()
}

fn default_checkpoint_topic() -> String {
    "quorumtail.checkpoints".into()
}

fn default_checkpoint_interval() -> String {
    "1s".into()
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            kind: CheckpointKind::File,
            path: default_checkpoint_path(),
            topic: default_checkpoint_topic(),
            interval: default_checkpoint_interval(),
            require_existing: false,
        }
    }
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Most entries a shard's merge holds unconfirmed; beyond it, members that are ahead
    /// are no longer read until the quorum catches up. Bounds memory when a quorum stalls.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Batches buffered between each tailer and its shard's merge.
    #[serde(default = "default_channel_batches")]
    pub channel_batches: usize,
    /// How long SIGINT/SIGTERM waits for in-flight records before exiting.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: String,
    /// Which members are read in whole: `"one"` (the default: one member per shard sends
    /// whole entries, the others only identities) or `"all"` (every member sends whole
    /// entries and their contents are cross-checked, at the members' count times the bytes).
    #[serde(default)]
    pub whole_entries: WholeEntries,
    /// When an entry is released: `"commit_point"` (the default: a quorum of voters
    /// reported it AND a member holding it reports MongoDB's commit point at or past it,
    /// so nothing MongoDB can still roll back is emitted) or `"quorum"` (a quorum of
    /// voters reported it: a few milliseconds sooner, but Raft's "figure 8" and rollbacks
    /// a tailer has not noticed yet can let a rolled-back entry through).
    #[serde(default)]
    pub release: Release,
}

/// `[pipeline] release`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// Quorum of voters and MongoDB's commit point.
    #[default]
    CommitPoint,
    /// Quorum of voters only.
    Quorum,
}

/// `[pipeline] whole_entries`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WholeEntries {
    /// One member per shard (the primary when it keeps up); the others send identities.
    #[default]
    One,
    /// Every member; contents are compared between members.
    All,
}

fn default_max_pending() -> usize {
    100_000
}

fn default_channel_batches() -> usize {
    4
}

fn default_shutdown_timeout() -> String {
    "30s".into()
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_pending: default_max_pending(),
            channel_batches: default_channel_batches(),
            shutdown_timeout: default_shutdown_timeout(),
            whole_entries: WholeEntries::default(),
            release: Release::default(),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address for `/metrics`, `/healthz`, `/readyz`, `/status`. Required.
    #[serde(default)]
    pub listen: String,
}

/// A configuration that could not be loaded: every problem, each with its key path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The path.
        path: PathBuf,
        /// serde's message with the key path.
        message: String,
    },
    /// The values do not make a working configuration.
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The path.
        path: PathBuf,
        /// One line per problem, starting with the key path.
        problems: Vec<String>,
    },
}

/// A shard with its quorum resolved.
#[derive(Debug, Clone)]
pub struct ResolvedShard {
    /// Replica set name.
    pub name: String,
    /// Data-bearing members.
    pub members: Vec<String>,
    /// Arbiters.
    pub arbiters: usize,
    /// Quorum.
    pub quorum: QuorumInfo,
}

/// A validated configuration with every derived value resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The file as parsed.
    pub config: Config,
    /// Static shards.
    pub shards: Vec<ResolvedShard>,
    /// `[discovery] interval`.
    pub discovery_interval: Duration,
    /// `[mongo] max_await`.
    pub max_await: Duration,
    /// `[start] position`.
    pub start: StartPosition,
    /// `[filter]`.
    pub filter: Filter,
    /// `[checkpoint] interval`.
    pub checkpoint_interval: Duration,
    /// `[pipeline] shutdown_timeout`.
    pub shutdown_timeout: Duration,
    /// Things that work but deserve a second look.
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and validates a file.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem with its key path.
    pub fn load(path: &Path) -> Result<Resolved, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` only names the source in errors.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem with its key path.
    pub fn parse(text: &str, path: &Path) -> Result<Resolved, ConfigError> {
        Self::parse_with_env(text, path, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with `env` standing in for the process environment (for
    /// `${NAME}` in string values).
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem with its key path.
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Resolved, ConfigError> {
        let (config, mut problems) =
            read::read(text, env).map_err(|message| ConfigError::Parse {
                path: path.into(),
                message,
            })?;
        let shadowed = read::shadowed(&problems);
        match config.validate() {
            Ok(resolved) if problems.is_empty() => return Ok(resolved),
            Ok(_) => {}
            Err(more) => problems.extend(
                more.into_iter()
                    .filter(|p| !shadowed.iter().any(|k| p.starts_with(k.as_str()))),
            ),
        }
        Err(ConfigError::Invalid {
            path: path.into(),
            problems,
        })
    }

    /// Checks everything types cannot express.
    ///
    /// # Errors
    /// Every problem found, one line each, starting with the key path.
    pub fn validate(mut self) -> Result<Resolved, Vec<String>> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();

        // Secrets from files: read once here, never printed.
        if let Some(file) = self.mongo.password_file.clone() {
            if self.mongo.password.is_some() {
                problems.push(
                    "mongo.password_file: set either password or password_file, not both".into(),
                );
            }
            match read_secret("mongo.password_file", &file) {
                Ok(p) => self.mongo.password = Some(p),
                Err(e) => problems.push(e),
            }
        }
        if let Some(file) = self.sink.sasl_password_file.clone() {
            if self.sink.librdkafka.contains_key("sasl.password") {
                problems.push("sink.sasl_password_file: set either sasl_password_file or sink.librdkafka.\"sasl.password\", not both".into());
            }
            if self.sink.kind != SinkKind::Kafka {
                problems.push("sink.sasl_password_file: only used by kind = \"kafka\"".into());
            }
            match read_secret("sink.sasl_password_file", &file) {
                Ok(p) => {
                    self.sink.librdkafka.insert("sasl.password".into(), p);
                }
                Err(e) => problems.push(e),
            }
        }

        if self.shards.is_empty() && self.discovery.is_none() {
            problems.push("no topology: add [[shards]] with name and members, or a [discovery] section with a mongos uri".to_owned());
        }
        let mut names = HashSet::new();
        let mut all_members: BTreeMap<String, String> = BTreeMap::new();
        let mut shards = Vec::new();
        for (i, s) in self.shards.iter().enumerate() {
            let at = format!("shards[{i}]");
            if s.name.trim().is_empty() {
                problems.push(format!(
                    "{at}.name: must not be empty (use the replica set name, e.g. \"shard01\")"
                ));
            } else if !names.insert(s.name.clone()) {
                problems.push(format!("{at}.name: shard {:?} is defined twice", s.name));
            }
            if s.members.is_empty() {
                problems.push(format!(
                    "{at}.members: empty; list every data-bearing member as \"host:port\""
                ));
            }
            for (j, m) in s.members.iter().enumerate() {
                if let Err(why) = check_host_port(m) {
                    problems.push(format!("{at}.members[{j}]: {m:?} {why}"));
                } else if let Some(other) =
                    all_members.insert(m.to_ascii_lowercase(), s.name.clone())
                {
                    problems.push(format!(
                        "{at}.members[{j}]: {m:?} is listed twice (also in shard {other:?})"
                    ));
                }
            }
            if !s.members.is_empty() {
                match resolve_quorum(s.members.len(), s.arbiters, s.quorum) {
                    Ok(q) => {
                        if q.below_majority {
                            warnings.push(format!(
                                "{at}.quorum: {} is below the majority {} of {} voting members: entries can be emitted and later rolled back",
                                q.quorum,
                                q.majority,
                                s.members.len() + s.arbiters
                            ));
                        }
                        shards.push(ResolvedShard {
                            name: s.name.clone(),
                            members: s.members.clone(),
                            arbiters: s.arbiters,
                            quorum: q,
                        });
                    }
                    Err(e) => problems.push(format!("{at}.quorum: {e}")),
                }
            }
        }

        let mut discovery_interval = Duration::from_secs(10);
        if let Some(d) = &self.discovery {
            if !(d.uri.starts_with("mongodb://") || d.uri.starts_with("mongodb+srv://")) {
                problems.push(format!(
                    "discovery.uri: {:?} must start with mongodb:// or mongodb+srv://",
                    redact_uri(&d.uri)
                ));
            }
            match parse_duration("discovery.interval", &d.interval) {
                Ok(v) if v.is_zero() => {
                    problems.push("discovery.interval: must be above zero".into())
                }
                Ok(v) => discovery_interval = v,
                Err(e) => problems.push(e),
            }
        }

        let max_await =
            parse_duration("mongo.max_await", &self.mongo.max_await).unwrap_or_else(|e| {
                problems.push(e);
                Duration::from_secs(1)
            });
        if self.mongo.batch_size == 0 {
            problems.push("mongo.batch_size: must be at least 1".into());
        }
        if self.mongo.password.is_some() && self.mongo.username.is_none() {
            problems.push("mongo.password: set mongo.username too".into());
        }
        if self.mongo.uri_options.starts_with('?') || self.mongo.uri_options.starts_with('&') {
            problems.push("mongo.uri_options: write options without a leading '?' or '&', e.g. \"authSource=admin&maxPoolSize=4\"".into());
        }
        check_mongo_tls(&self.mongo, &mut problems, &mut warnings);

        let start = match self.start.position.as_str() {
            "latest" => StartPosition::Latest,
            "earliest" => StartPosition::Earliest,
            other => match other.parse::<Timestamp>() {
                Ok(ts) => StartPosition::After(ts),
                Err(e) => {
                    problems.push(format!(
                        "start.position: {e}; or use \"latest\" or \"earliest\""
                    ));
                    StartPosition::Latest
                }
            },
        };

        let mut filter = Filter {
            drop_from_migrate: self.filter.drop_from_migrate,
            drop_noops: self.filter.drop_noops,
            drop_internal: self.filter.drop_internal,
            include: vec![],
            exclude: vec![],
        };
        for (key, list, out) in [
            ("include", &self.filter.include, &mut filter.include),
            ("exclude", &self.filter.exclude, &mut filter.exclude),
        ] {
            for (i, p) in list.iter().enumerate() {
                match NsPattern::parse(p) {
                    Ok(p) => out.push(p),
                    Err(e) => problems.push(format!("filter.{key}[{i}]: {e}")),
                }
            }
        }
        if !self.filter.drop_from_migrate {
            warnings.push("filter.drop_from_migrate = false: chunk migrations will appear as deletes on one shard and inserts on another".into());
        }

        match self.sink.kind {
            SinkKind::File => {
                for (key, set) in [
                    ("brokers", self.sink.brokers.is_some()),
                    ("topic", self.sink.topic.is_some()),
                    ("librdkafka", !self.sink.librdkafka.is_empty()),
                ] {
                    if set {
                        problems.push(format!(
                            "sink.{key}: only used by kind = \"kafka\" (kind is \"file\")"
                        ));
                    }
                }
                if self.sink.path.as_deref() == Some("") {
                    problems.push("sink.path: must not be empty; use \"-\" for stdout".into());
                }
            }
            SinkKind::Kafka => {
                if self.sink.path.is_some() {
                    problems
                        .push("sink.path: only used by kind = \"file\" (kind is \"kafka\")".into());
                }
                match self.sink.brokers.as_deref() {
                    None | Some("") => problems.push(
                        "sink.brokers: required for kind = \"kafka\", e.g. \"127.0.0.1:9092\""
                            .into(),
                    ),
                    Some(b) => {
                        for (i, broker) in b.split(',').enumerate() {
                            if let Err(why) = check_host_port(broker.trim()) {
                                problems.push(format!("sink.brokers: entry {i} {broker:?} {why}"));
                            }
                        }
                    }
                }
                // The sink's own parser: one definition of a valid template.
                let topic = self.sink.topic.as_deref().unwrap_or(DEFAULT_TOPIC);
                if let Err(e) = topic.parse::<quorumtail_sink::TopicTemplate>() {
                    let problem = match e {
                        quorumtail_sink::SinkError::Config { problem, .. } => problem,
                        other => other.to_string(),
                    };
                    problems.push(format!("sink.topic: {problem}"));
                }
                for (k, v) in &self.sink.librdkafka {
                    let v = v.trim().to_ascii_lowercase();
                    match k.as_str() {
                        "enable.idempotence" if v != "true" => problems.push(format!(
                            "sink.librdkafka.\"{k}\": quorumtail requires the idempotent producer (ordered, no duplicates on retry); remove this key"
                        )),
                        "acks" | "request.required.acks" if v != "all" && v != "-1" => problems.push(format!(
                            "sink.librdkafka.\"{k}\": quorumtail requires acks=all so a checkpoint never passes a record a broker failure could lose; remove this key"
                        )),
                        "bootstrap.servers" | "metadata.broker.list" => {
                            problems.push(format!("sink.librdkafka.\"{k}\": set sink.brokers instead"))
                        }
                        _ => {}
                    }
                }
                // librdkafka itself judges property names and values (no broker is asked).
                if !self.sink.librdkafka.is_empty() {
                    let brokers = self.sink.brokers.as_deref().unwrap_or("127.0.0.1:9092");
                    for (k, why) in quorumtail_sink::preflight::librdkafka_properties(
                        brokers,
                        &self.sink.librdkafka,
                    ) {
                        problems.push(if k.is_empty() {
                            format!("sink.librdkafka: {why}")
                        } else {
                            format!("sink.librdkafka.\"{k}\": {why}")
                        });
                    }
                }
            }
        }

        match self.checkpoint.kind {
            CheckpointKind::File => {
                if self.checkpoint.path.trim().is_empty() {
                    problems.push("checkpoint.path: must not be empty".into());
                }
            }
            CheckpointKind::Kafka => {
                if self.sink.kind != SinkKind::Kafka {
                    problems.push("checkpoint.kind = \"kafka\": needs sink.kind = \"kafka\" (it uses the sink's brokers)".into());
                }
                if self.checkpoint.topic.trim().is_empty() {
                    problems.push("checkpoint.topic: must not be empty".into());
                }
            }
        }
        let checkpoint_interval = parse_duration("checkpoint.interval", &self.checkpoint.interval)
            .unwrap_or_else(|e| {
                problems.push(e);
                Duration::from_secs(1)
            });

        if self.pipeline.max_pending == 0 {
            problems.push("pipeline.max_pending: must be at least 1".into());
        }
        if self.pipeline.channel_batches == 0 {
            problems.push("pipeline.channel_batches: must be at least 1".into());
        }
        let shutdown_timeout =
            parse_duration("pipeline.shutdown_timeout", &self.pipeline.shutdown_timeout)
                .unwrap_or_else(|e| {
                    problems.push(e);
                    Duration::from_secs(30)
                });
        if let Some(h) = &self.http {
            if h.listen.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!(
                    "http.listen: {:?} is not an address like \"127.0.0.1:9000\"",
                    h.listen
                ));
            }
        }

        if problems.is_empty() {
            Ok(Resolved {
                config: self,
                shards,
                discovery_interval,
                max_await,
                start,
                filter,
                checkpoint_interval,
                shutdown_timeout,
                warnings,
            })
        } else {
            Err(problems)
        }
    }
}

/// A secret from a file: the whole file less one trailing newline.
/// `[mongo] tls*`: the files are readable PEM of the right kind, TLS is set in one place,
/// and options that turn verification off are called out.
fn check_mongo_tls(m: &MongoConfig, problems: &mut Vec<String>, warnings: &mut Vec<String>) {
    let tls_options: Vec<&str> = m
        .uri_options
        .split('&')
        .filter_map(|kv| kv.split('=').next())
        .filter(|k| {
            let k = k.to_ascii_lowercase();
            k == "tls" || k == "ssl" || k.starts_with("tls")
        })
        .collect();
    let tls_keys_set = m.tls || m.tls_ca_file.is_some() || m.tls_certificate_key_file.is_some();
    if tls_keys_set && !tls_options.is_empty() {
        problems.push(format!(
            "mongo.uri_options: {} set TLS there while [mongo] tls keys set it too; set TLS in one place, with [mongo] tls, tls_ca_file and tls_certificate_key_file",
            tls_options.join(", ")
        ));
    }
    for insecure in [
        "tlsInsecure",
        "tlsAllowInvalidCertificates",
        "tlsAllowInvalidHostnames",
    ] {
        if tls_options.iter().any(|k| k.eq_ignore_ascii_case(insecure)) {
            warnings.push(format!(
                "mongo.uri_options: {insecure} weakens certificate checks, so a machine in the middle can read every change; put the members' CA into [mongo] tls_ca_file instead"
            ));
        }
    }
    for (key, file, needs_key) in [
        ("mongo.tls_ca_file", &m.tls_ca_file, false),
        (
            "mongo.tls_certificate_key_file",
            &m.tls_certificate_key_file,
            true,
        ),
    ] {
        let Some(file) = file else { continue };
        if !m.tls {
            problems.push(format!(
                "{key}: used only with TLS; set mongo.tls = true too"
            ));
        }
        match std::fs::read_to_string(file) {
            Err(e) => problems.push(format!(
                "{key}: cannot read {file:?} ({e}); mount the file there or fix the path"
            )),
            Ok(pem) => {
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    problems.push(format!(
                        "{key}: {file:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                    ));
                }
                let has_key = pem.contains("PRIVATE KEY-----");
                if needs_key && !has_key {
                    problems.push(format!(
                        "{key}: {file:?} holds no private key; write the client certificate followed by its key (-----BEGIN PRIVATE KEY-----) into one file"
                    ));
                }
                if !needs_key && has_key {
                    warnings.push(format!(
                        "{key}: {file:?} holds a private key; a CA file needs only certificates, keep keys out of it"
                    ));
                }
            }
        }
    }
}

fn read_secret(key: &str, file: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!("{key}: cannot read {file:?} ({e}); mount the secret there or fix the path")
    })?;
    let secret = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(format!(
            "{key}: {file:?} is empty; write the secret into it"
        ));
    }
    Ok(secret.to_owned())
}

fn parse_duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("{key}: {text:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"2m\"")
    })
}

fn check_host_port(s: &str) -> Result<(), &'static str> {
    let (host, port) = s.rsplit_once(':').ok_or("is not \"host:port\"")?;
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err("has no valid host; write \"host:port\"");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("has no valid port (1-65535)"),
    }
}

/// Hides the password of a `mongodb://user:pass@host` URI for logs and messages.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}{}:***@{}", &uri[..scheme_end + 3], user, &rest[at + 1..])
        }
        None => uri.to_owned(),
    }
}

mod read {
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
                Node::Item(Item::Value(Value::InlineTable(t)))
                | Node::Value(Value::InlineTable(t)) => Node::Inline(t),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Resolved, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn minimal_static_topology() {
        let r = parse("[[shards]]\nname = \"shard01\"\nmembers = [\"127.0.0.1:27018\", \"127.0.0.1:27019\", \"127.0.0.1:27020\"]\n").unwrap();
        assert_eq!(r.shards[0].quorum.quorum, 2);
        assert_eq!(r.start, StartPosition::Latest);
        assert_eq!(r.config.sink.kind, SinkKind::File);
        assert!(r.filter.drop_from_migrate && r.filter.drop_noops && r.filter.drop_internal);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = parse("[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\nquorom = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `quorom`"), "{e}");
        let e = parse("[[shards]]\nname = \"a\"\nmembers = \"h:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shards[0].members"), "{e}");
        let e = parse("[sink]\nkind = \"s3\"\n").unwrap_err().to_string();
        assert!(e.contains("sink.kind") && e.contains("kafka"), "{e}");
        let e = parse("[[shards]\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn every_problem_is_listed() {
        let p = problems(
            r#"
[[shards]]
name = "s"
members = []
[[shards]]
name = "s"
members = ["127.0.0.1:1", "nohost", "127.0.0.1:1"]
arbiters = 0
quorum = 4
[start]
position = "yesterday"
[filter]
include = ["shop"]
[sink]
kind = "kafka"
topic = "cdc.{collection}"
[sink.librdkafka]
"enable.idempotence" = "false"
acks = "1"
[checkpoint]
interval = "soon"
"#,
        );
        let all = p.join("\n");
        for needle in [
            "shards[0].members: empty",
            "shards[1].name: shard \"s\" is defined twice",
            "shards[1].members[1]: \"nohost\" is not \"host:port\"",
            "shards[1].members[2]: \"127.0.0.1:1\" is listed twice",
            "shards[1].quorum: quorum 4 can never be reached",
            "start.position",
            "filter.include[0]",
            "sink.brokers: required",
            "unknown placeholder {collection}",
            "enable.idempotence",
            "acks",
            "checkpoint.interval",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    /// Regression (issue 15): a bad value hid every later problem, parse-level ones
    /// (unknown keys, wrong types) included.
    #[test]
    fn parse_level_problems_are_reported_together_with_their_lines() {
        let p = problems(
            "[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\n[sink]\nkind = \"kafka\"\nbrokers = \"k:1\"\nkey = \"Document\"\n[pipeline]\nmax_pendin = 5\n[mongo]\nmax_await = \"soon\"\nbatch_size = \"many\"\n[sink.librdkafka]\n\"no.such.property\" = \"1\"\n",
        );
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(
            p[0].starts_with("sink.key (line 7): unknown variant `Document`"),
            "{p:#?}"
        );
        assert!(p[0].ends_with("did you mean `document`?"), "{p:#?}");
        assert!(
            p[1].starts_with("pipeline.max_pendin (line 9): unknown field `max_pendin`"),
            "{p:#?}"
        );
        assert!(p[1].ends_with("did you mean `max_pending`?"), "{p:#?}");
        assert!(
            p[2].starts_with("mongo.batch_size (line 12): invalid type: string \"many\""),
            "{p:#?}"
        );
        assert!(
            p[3].starts_with("mongo.max_await: \"soon\" is not a duration"),
            "{p:#?}"
        );
        assert!(
            p[4].starts_with("sink.librdkafka.\"no.such.property\": librdkafka refuses it: No such configuration property"),
            "{p:#?}"
        );
    }

    #[test]
    fn a_key_taken_out_does_not_report_its_default() {
        // The bad kind is reported; what depends on it is not (brokers with kind = file).
        let p = problems("[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\n[sink]\nkind = \"s3\"\nbrokers = \"k:1\"\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        // A list with a bad element, and a shard missing its members.
        let p = problems(
            "[[shards]]\nname = \"a\"\nmembers = [\"h:1\", 2]\n[[shards]]\nname = \"b\"\n",
        );
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(
            p[0].starts_with("shards[0].members[1] (line 3): invalid type: integer `2`"),
            "{p:#?}"
        );
        assert!(p[1].starts_with("shards[1].members: empty"), "{p:#?}");
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "MONGO_PW" => Some("p@ss".into()),
            "BROKERS" => Some("k1:9092,k2:9092".into()),
            _ => None,
        }
    }

    const SHARD: &str = "[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\n";

    #[test]
    fn environment_variables_in_string_values() {
        let text = format!("{SHARD}[mongo]\nusername = \"u\"\npassword = \"${{MONGO_PW}}\"\n[sink]\nkind = \"kafka\"\nbrokers = \"${{BROKERS}}\"\ntopic = \"cdc.{{shard}}\"\n[sink.librdkafka]\n\"client.id\" = \"a$${{b}}$c\"\n");
        let r = Config::parse_with_env(&text, Path::new("t.toml"), &env).unwrap();
        assert_eq!(r.config.mongo.password.as_deref(), Some("p@ss"));
        assert_eq!(r.config.sink.brokers.as_deref(), Some("k1:9092,k2:9092"));
        // `$${` is a literal `${`; a lone `$` stays.
        assert_eq!(r.config.sink.librdkafka["client.id"], "a${b}$c");
        // Never printed.
        let debug = format!("{:?}", r.config);
        assert!(!debug.contains("p@ss"), "{debug}");
    }

    #[test]
    fn a_missing_environment_variable_names_the_key_and_the_variable() {
        let text = format!("{SHARD}[mongo]\nusername = \"u\"\npassword = \"${{NOT_SET}}\"\n[sink.librdkafka]\n\"sasl.password\" = \"${{bad-name}}\"\n");
        let e = Config::parse_with_env(&text, Path::new("t.toml"), &env).unwrap_err();
        let ConfigError::Invalid { problems, .. } = e else {
            panic!("{e}")
        };
        assert!(
            problems[0].starts_with("mongo.password (line 6): the environment variable NOT_SET (in \"${NOT_SET}\") is not set"),
            "{problems:#?}"
        );
        assert!(
            problems[1].starts_with("sink.librdkafka.\"sasl.password\" (line 8): \"${bad-name}\" is not an environment variable name"),
            "{problems:#?}"
        );
    }

    #[test]
    fn secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let mongo = dir.path().join("mongo");
        let kafka = dir.path().join("kafka");
        std::fs::write(&mongo, "s3cret\n").unwrap();
        std::fs::write(&kafka, "k-s3cret\r\n").unwrap();
        let text = format!(
            "{SHARD}[mongo]\nusername = \"u\"\npassword_file = {:?}\n[sink]\nkind = \"kafka\"\nbrokers = \"k:9092\"\nsasl_password_file = {:?}\n",
            mongo.display().to_string(),
            kafka.display().to_string()
        );
        let r = parse(&text).unwrap();
        assert_eq!(r.config.mongo.password.as_deref(), Some("s3cret"));
        assert_eq!(r.config.sink.librdkafka["sasl.password"], "k-s3cret");
        let debug = format!("{r:?}");
        assert!(!debug.contains("s3cret"), "{debug}");

        let missing = dir.path().join("nope");
        let p = problems(&format!(
            "{SHARD}[mongo]\nusername = \"u\"\npassword = \"x\"\npassword_file = {:?}\n[sink]\nsasl_password_file = {:?}\n",
            missing.display().to_string(),
            mongo.display().to_string()
        ));
        let all = p.join("\n");
        assert!(
            all.contains("mongo.password_file: set either password or password_file"),
            "{all}"
        );
        assert!(
            all.contains(&format!(
                "mongo.password_file: cannot read {:?}",
                missing.display().to_string()
            )),
            "{all}"
        );
        assert!(
            all.contains("sink.sasl_password_file: only used by kind = \"kafka\""),
            "{all}"
        );
    }

    #[test]
    fn tls_files_are_checked_and_tls_is_set_in_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let client = dir.path().join("client.pem");
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(&ca, cert).unwrap();
        std::fs::write(
            &client,
            format!("{cert}-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let r = parse(&format!(
            "{SHARD}[mongo]\ntls = true\ntls_ca_file = {}\ntls_certificate_key_file = {}\n",
            q(&ca),
            q(&client)
        ))
        .unwrap();
        let access = r.config.mongo.access();
        let tls = access.tls.expect("TLS on");
        assert_eq!(tls.ca_file.as_deref(), Some(ca.as_path()));
        assert_eq!(tls.certificate_key_file.as_deref(), Some(client.as_path()));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);

        // Every problem at once: files without tls = true, a missing file, a client file
        // without its key, and TLS set in uri_options as well.
        let missing = dir.path().join("nope.pem");
        let p = problems(&format!(
            "{SHARD}[mongo]\nuri_options = \"tls=true&tlsCAFile=/x\"\ntls_ca_file = {}\ntls_certificate_key_file = {}\n",
            q(&missing),
            q(&ca)
        ));
        let all = p.join("\n");
        for want in [
            "mongo.uri_options: tls, tlsCAFile set TLS there while [mongo] tls keys set it too",
            "mongo.tls_ca_file: used only with TLS; set mongo.tls = true too",
            "mongo.tls_ca_file: cannot read",
            "mongo.tls_certificate_key_file: used only with TLS",
            "holds no private key",
        ] {
            assert!(all.contains(want), "{want:?} missing from\n{all}");
        }
        let r = parse(&format!(
            "{SHARD}[mongo]\ntls = true\ntls_ca_file = {}\n",
            q(&client)
        ))
        .unwrap();
        assert!(
            r.warnings[0].contains("holds a private key; a CA file needs only certificates"),
            "{:?}",
            r.warnings
        );
        std::fs::write(&missing, "not pem").unwrap();
        let p = problems(&format!(
            "{SHARD}[mongo]\ntls = true\ntls_ca_file = {}\n",
            q(&missing)
        ));
        assert!(p[0].contains("holds no PEM certificate"), "{p:?}");

        // Weakened verification through uri_options is called out.
        let r = parse(&format!(
            "{SHARD}[mongo]\nuri_options = \"tls=true&tlsAllowInvalidCertificates=true\"\n"
        ))
        .unwrap();
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("tlsAllowInvalidCertificates weakens")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn arbiters_raise_the_majority_and_low_quorum_warns() {
        let r = parse("[[shards]]\nname = \"a\"\nmembers = [\"h:1\", \"h:2\"]\narbiters = 1\n")
            .unwrap();
        assert_eq!(r.shards[0].quorum.quorum, 2);
        // One data-bearing member and two arbiters: MongoDB's writeMajorityCount is 1
        // (the majority of voters, capped at the data-bearing voters).
        let r = parse("[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\narbiters = 2\n").unwrap();
        assert_eq!(r.shards[0].quorum.quorum, 1);
        let p =
            problems("[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\narbiters = 2\nquorum = 2\n");
        assert!(p[0].contains("arbiters vote but never confirm"), "{p:?}");
        let r =
            parse("[[shards]]\nname = \"a\"\nmembers = [\"h:1\", \"h:2\", \"h:3\"]\nquorum = 1\n")
                .unwrap();
        assert!(
            r.warnings[0].contains("below the majority"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn discovery_only_and_positions() {
        let r = parse("[discovery]\nuri = \"mongodb://127.0.0.1:27017/\"\ninterval = \"5s\"\n[start]\nposition = \"1422998574:1\"\n").unwrap();
        assert_eq!(r.discovery_interval, Duration::from_secs(5));
        assert_eq!(r.start, StartPosition::After(Timestamp::new(1422998574, 1)));
        assert!(problems("").iter().any(|p| p.contains("no topology")));
        let p = problems("[discovery]\nuri = \"http://x:y@h\"\n");
        assert!(
            p[0].contains("mongodb://") && p[0].contains("x:***@h"),
            "{p:?}"
        );
    }

    #[test]
    fn topic_templates_and_redaction() {
        let kafka = |topic: &str| {
            format!("[[shards]]\nname = \"a\"\nmembers = [\"h:1\"]\n[sink]\nkind = \"kafka\"\nbrokers = \"k:9092\"\ntopic = \"{topic}\"\n")
        };
        assert!(parse(&kafka("cdc.{shard}.{db}.{coll}")).is_ok());
        let p = problems(&kafka("cdc {shard}"));
        assert!(
            p[0].starts_with("sink.topic:") && p[0].contains("not allowed"),
            "{p:?}"
        );
        assert!(problems(&kafka("cdc.{shard"))[0].contains("unclosed"));
        assert_eq!(
            redact_uri("mongodb://u:secret@h:1/?x=1"),
            "mongodb://u:***@h:1/?x=1"
        );
        assert_eq!(redact_uri("mongodb://h:1/"), "mongodb://h:1/");
    }
}

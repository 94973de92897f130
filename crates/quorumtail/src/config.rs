//! The configuration file: TOML, every key documented, unknown keys rejected.
//!
//! Parsing happens in two steps. serde reads the file into [`Config`] (unknown keys and
//! wrong types fail with the key's path, e.g. `shards[1].members`); then
//! [`Config::validate`] checks what types cannot express (quorums, addresses, templates,
//! patterns) and reports every problem at once, each with its key path and the fix.
//!
//! `[sink]` and `[checkpoint]` are defined, documented and validated once, in the sink
//! crate ([`SinkConfig`], [`CheckpointConfig`]): the file is read straight into the structs
//! the sink and the checkpoint stores run with, so every setting they have is a key here.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use quorumtail_merge::{resolve_quorum, QuorumInfo};
use quorumtail_oplog::{filter::NsPattern, Filter, Timestamp};
use quorumtail_sink::config::{check_host_port, read_secret};
/// `[sink]` and `[checkpoint]` belong to the sink crate, which defines, documents and
/// validates them once; they are read here as part of the file.
pub use quorumtail_sink::config::{
    is_secret_property, CheckpointConfig, CheckpointKind, KeyKind, SinkConfig, SinkKind,
    DEFAULT_TOPIC,
};

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
    /// Where records go (defined by the sink crate: [`SinkConfig`]).
    #[serde(default)]
    pub sink: SinkConfig,
    /// Where per-shard progress is stored (defined by the sink crate:
    /// [`CheckpointConfig`]).
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Limits that bound memory.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Metrics, health and status over HTTP.
    pub http: Option<HttpConfig>,
    /// The initial snapshot (`[start] position = "snapshot"`).
    #[serde(default)]
    pub snapshot: SnapshotConfig,
}

/// `[snapshot]`: how the initial snapshot reads (see [`crate::snapshot`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Documents per `find`/`getMore` batch.
    #[serde(default = "default_snapshot_batch")]
    pub batch_size: u32,
    /// How long before the snapshot's time the stream after it starts, so that a
    /// transaction prepared before the snapshot and committed after it is read whole.
    /// Longer than any transaction's prepare-to-commit time; the oplogs must hold it.
    #[serde(default = "default_stream_margin")]
    pub stream_margin: String,
}

fn default_snapshot_batch() -> u32 {
    1000
}

fn default_stream_margin() -> String {
    "60s".into()
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            batch_size: default_snapshot_batch(),
            stream_margin: default_stream_margin(),
        }
    }
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
    /// in the oplogs), `snapshot` (the existing documents first, then the changes from the
    /// snapshot's time on), or `"<seconds>:<increment>"`. Used only for shards without a
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
    /// A snapshot of the existing documents, then the stream from the snapshot's time
    /// (shards that appear later start from their oplog's beginning).
    Snapshot,
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
    /// Also accept `POST /snapshot` (`quorumtail snapshot`), which makes shards copy
    /// collections again. Off by default: the listener has no authentication, so turn it
    /// on only where the address is reachable by operators alone.
    #[serde(default)]
    pub control: bool,
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
    /// `[snapshot] stream_margin`.
    pub stream_margin: Duration,
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
            match read_secret("mongo.password_file", Path::new(&file)) {
                Ok(p) => self.mongo.password = Some(p),
                Err(e) => problems.push(e),
            }
        }
        problems.extend(self.sink.load_secrets());
        problems.extend(self.sink.apply_format_options());

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
            "snapshot" => StartPosition::Snapshot,
            other => match other.parse::<Timestamp>() {
                Ok(ts) => StartPosition::After(ts),
                Err(e) => {
                    problems.push(format!(
                        "start.position: {e}; or use \"latest\", \"earliest\" or \"snapshot\""
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
            // Set by the coordinator once discovery can read config.databases.
            ddl_primaries: None,
            resharding: Default::default(),
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

        problems.extend(self.sink.validate());
        problems.extend(self.checkpoint.validate(&self.sink));
        let checkpoint_interval = self.checkpoint.interval;

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
        let stream_margin = parse_duration("snapshot.stream_margin", &self.snapshot.stream_margin)
            .unwrap_or_else(|e| {
                problems.push(e);
                Duration::from_secs(60)
            });
        if self.snapshot.batch_size == 0 {
            problems.push("snapshot.batch_size: must be at least 1".into());
        }
        if start == StartPosition::Snapshot && self.discovery.is_none() && self.shards.len() > 1 {
            problems.push("start.position: a snapshot of several shards needs [discovery] uri (mongos or a config server), where it reads which shard owns each document (config.chunks); without it, migrations' leftovers would be copied twice".into());
        }
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
                stream_margin,
                warnings,
            })
        } else {
            Err(problems)
        }
    }
}

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

fn parse_duration(key: &str, text: &str) -> Result<Duration, String> {
    quorumtail_sink::config::parse_duration(text).map_err(|e| format!("{key}: {e}"))
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

mod read;

#[cfg(test)]
mod tests;

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

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            uri_options: String::new(),
            username: None,
            password: None,
            password_file: None,
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
    /// Drop `config.*`, `admin.*`, `local.*` and `*.system.*`.
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
            match read_secret("mongo.password_file", Path::new(&file)) {
                Ok(p) => self.mongo.password = Some(p),
                Err(e) => problems.push(e),
            }
        }
        problems.extend(self.sink.load_secrets());

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
            problems.push("mongo.uri_options: write options without a leading '?' or '&', e.g. \"tls=true&authSource=admin\"".into());
        }

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

    /// Issue 16: every key of the sink and checkpoint sections is read from the file, with
    /// its default when absent.
    #[test]
    fn sink_and_checkpoint_keys_are_reachable_from_the_file() {
        let r = parse(&format!("{SHARD}[sink]\nkind = \"kafka\"\nbrokers = \"k:9092\"\nmax_in_flight = 50\nrequire_topics = false\nstartup_timeout = \"3s\"\nchannel_capacity = 16\n[checkpoint]\nkind = \"kafka\"\nreplication_factor = 3\ntimeout = \"20s\"\ninterval = \"250ms\"\n")).unwrap();
        let sink = &r.config.sink;
        assert_eq!(sink.max_in_flight(), 50);
        assert!(!sink.require_topics());
        assert_eq!(sink.startup_timeout(), Duration::from_secs(3));
        assert_eq!(sink.channel_capacity, 16);
        let cp = &r.config.checkpoint;
        assert_eq!(
            (cp.replication_factor, cp.timeout),
            (3, Duration::from_secs(20))
        );
        assert_eq!(r.checkpoint_interval, Duration::from_millis(250));
        let r = parse(&format!("{SHARD}[sink]\nfsync_every = 10\n")).unwrap();
        assert_eq!(r.config.sink.fsync_every(), 10);
        let r = parse(SHARD).unwrap();
        assert_eq!(r.config.sink.max_in_flight(), 10_000);
        assert!(r.config.sink.require_topics());
        assert_eq!(r.config.sink.startup_timeout(), Duration::from_secs(10));
        assert_eq!(r.config.sink.fsync_every(), 1000);
        assert_eq!(r.config.checkpoint.timeout, Duration::from_secs(30));
    }

    /// Issue 16: bad values of the newly reachable keys are reported with the others, each
    /// with its key (and line, for what cannot be read) and the value as written.
    #[test]
    fn bad_sink_and_checkpoint_values_are_all_reported() {
        let p = problems(&format!("{SHARD}[sink]\nkind = \"kafka\"\nbrokers = \"k:9092\"\nmax_in_flight = 0\nrequire_topics = \"yes\"\nstartup_timeout = \"soon\"\nchannel_capacity = -1\nfsync_every = 5\n[checkpoint]\nreplication_factor = 0\ntimeout = \"0s\"\ninterval = \"0s\"\n"));
        let expected = [
            "sink.require_topics (line 8): invalid type: string \"yes\", expected a boolean",
            "sink.startup_timeout (line 9): \"soon\" is not a duration",
            "sink.channel_capacity (line 10): invalid value: integer `-1`",
            "sink.fsync_every: only used by kind = \"file\" (kind is \"kafka\")",
            "sink.max_in_flight: must be at least 1",
            "checkpoint.interval: must be above zero",
            "checkpoint.replication_factor: 0 is not a replication factor",
            "checkpoint.timeout: must be above zero",
        ];
        assert_eq!(p.len(), expected.len(), "{p:#?}");
        for (p, e) in p.iter().zip(expected) {
            assert!(p.starts_with(e), "{p:?} does not start with {e:?}");
        }
        let p = problems(&format!(
            "{SHARD}[sink]\nmax_in_flight = 5\nrequire_topics = true\n"
        ));
        assert_eq!(
            p,
            [
                "sink.max_in_flight: only used by kind = \"kafka\" (kind is \"file\")",
                "sink.require_topics: only used by kind = \"kafka\" (kind is \"file\")",
            ]
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
            p[0].starts_with("sink.topic (line 7): \"cdc {shard}\": ")
                && p[0].contains("not allowed"),
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

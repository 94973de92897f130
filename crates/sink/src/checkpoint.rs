//! Checkpoint stores: where the confirmed per-shard positions survive a restart.
//!
//! ```text
//!  Sink::checkpoints() ──► ConfirmedCheckpoints ──► CheckpointStore::store
//!  (only the sink can make one: a checkpoint is only ever written with confirmed positions)
//!
//!  startup: CheckpointStore::load ──► HashMap<shard, EntryId> ──► tailers resume after it
//! ```
//!
//! * [`FileCheckpointStore`]: one JSON file, replaced atomically (temp file in the same
//!   directory, fsync, rename, fsync of the directory). A file that does not parse is an
//!   error naming the path and the fix, never ignored: ignoring it would restart every
//!   shard from scratch or from "now" and lose or duplicate data silently.
//! * [`KafkaCheckpointStore`]: a compacted topic keyed by shard name whose values are JSON
//!   [`ShardPosition`]s; loading reads the topic to its end (end-of-partition events, not
//!   the high watermark).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use quorumtail_oplog::{EntryId, ShardPosition};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::de_duration;
use crate::kafka::TracingContext;
use crate::ProgressView;

/// Positions the sink confirmed, one per shard. Only the sink creates these (or a caller
/// that vouches for them with [`ConfirmedCheckpoints::assume_confirmed`]), so a store can
/// never be handed positions that are not delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfirmedCheckpoints(HashMap<Arc<str>, EntryId>);

impl ConfirmedCheckpoints {
    pub(crate) fn from_sink(m: HashMap<Arc<str>, EntryId>) -> Self {
        ConfirmedCheckpoints(m)
    }

    /// Wraps positions the caller knows to be confirmed: ones just loaded from a store
    /// (to copy them to another store), or test data.
    pub fn assume_confirmed(m: HashMap<Arc<str>, EntryId>) -> Self {
        ConfirmedCheckpoints(m)
    }

    /// The confirmed position of a shard.
    pub fn get(&self, shard: &str) -> Option<EntryId> {
        self.0.get(shard).copied()
    }

    /// Every shard with a confirmed position.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &EntryId)> {
        self.0.iter()
    }

    /// How many shards have a position.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no shard has a position.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The positions as a map.
    pub fn into_map(self) -> HashMap<Arc<str>, EntryId> {
        self.0
    }
}

/// Errors of the checkpoint stores.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the checkpoint file failed.
    #[error(
        "checkpoint file {path}: cannot {op}: {source}; check the path, free space and permissions"
    )]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint file exists but is not a valid checkpoint.
    #[error(
        "checkpoint file {path} is corrupt ({cause}); quorumtail will not guess where to resume: \
         restore the file from a backup, fix it by hand (format: {{\"version\":1,\"shards\":\
         {{\"<shard>\":{{\"ts\":{{\"t\":<secs>,\"i\":<inc>}},\"t\":<term>}}}}}}), or move it away to \
         start from the configured start position"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        cause: String,
    },
    /// A record of the checkpoint topic is not a valid position.
    #[error(
        "checkpoint topic {topic:?} partition {partition} offset {offset} is not a valid position \
         ({cause}); delete that key with a tombstone or write a valid position for it, then restart"
    )]
    CorruptRecord {
        /// The topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// The parse error.
        cause: String,
    },
    /// A Kafka operation of the checkpoint store failed.
    #[error("checkpoint topic {topic:?}: {op} failed: {cause}; fix: {fix}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What we were doing.
        op: &'static str,
        /// The error.
        cause: String,
        /// What to do.
        fix: &'static str,
    },
}

/// Where confirmed checkpoints are kept. Object-safe, so the coordinator can pick a store
/// from its config.
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// The stored position of every shard (empty on a first run).
    ///
    /// # Errors
    /// [`CheckpointError`] when the store cannot be read or holds something that is not a
    /// valid checkpoint.
    fn load(&self) -> BoxFuture<'_, Result<HashMap<Arc<str>, EntryId>, CheckpointError>>;

    /// Stores the given positions; shards absent from `checkpoints` keep their stored
    /// position. Durable when the future completes.
    ///
    /// # Errors
    /// [`CheckpointError`] when the write did not complete (the previous checkpoint is
    /// still intact then).
    fn store<'a>(
        &'a self,
        checkpoints: &'a ConfirmedCheckpoints,
    ) -> BoxFuture<'a, Result<(), CheckpointError>>;
}

/// Stores the sink's confirmed checkpoints every `interval` when they changed, until
/// `shutdown` is cancelled. A failed store is logged and retried at the next tick (the
/// previous checkpoint stays intact, so nothing is lost; a restart would only resend more).
///
/// The last store is the caller's: after [`Sink::flush`](crate::Sink::flush), store
/// [`FlushReport::checkpoints`](crate::FlushReport::checkpoints).
pub async fn run_checkpointer(
    view: ProgressView,
    store: Arc<dyn CheckpointStore>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut stored = ConfirmedCheckpoints::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = view.checkpoints();
        if now == stored {
            continue;
        }
        match store.store(&now).await {
            Ok(()) => {
                tracing::debug!(shards = now.len(), "checkpoints stored");
                stored = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint store failed; retrying at the next tick")
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    version: u32,
    shards: BTreeMap<String, EntryId>,
}

const FILE_VERSION: u32 = 1;

/// A checkpoint file, replaced atomically. See the [module docs](self).
#[derive(Debug)]
pub struct FileCheckpointStore {
    path: PathBuf,
    /// What the file holds, once read; `store` merges into it.
    known: Mutex<Option<HashMap<Arc<str>, EntryId>>>,
}

impl FileCheckpointStore {
    /// A store at `path` (the file need not exist yet; its directory must).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileCheckpointStore {
            path: path.into(),
            known: Mutex::new(None),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(path: &Path) -> Result<HashMap<Arc<str>, EntryId>, CheckpointError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(source) => {
                return Err(CheckpointError::Io {
                    op: "read",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let corrupt = |cause: String| CheckpointError::Corrupt {
            path: path.to_owned(),
            cause,
        };
        let f: CheckpointFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if f.version != FILE_VERSION {
            return Err(corrupt(format!(
                "version {} is not {FILE_VERSION}, the only version this quorumtail knows",
                f.version
            )));
        }
        Ok(f.shards.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    fn write_atomic(path: &Path, content: &[u8]) -> Result<(), CheckpointError> {
        let io = |op: &'static str, p: &Path| {
            let p = p.to_owned();
            move |source| CheckpointError::Io {
                op,
                path: p,
                source,
            }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoints".into());
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(content).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
            drop(f);
            fs::rename(&tmp, path).map_err(io("rename into place", path))?;
            // Make the rename itself durable.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync the directory of", &dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn load(&self) -> BoxFuture<'_, Result<HashMap<Arc<str>, EntryId>, CheckpointError>> {
        Box::pin(async move {
            let path = self.path.clone();
            let m = tokio::task::spawn_blocking(move || Self::read(&path))
                .await
                .expect("reading the checkpoint file does not panic")?;
            *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
            Ok(m)
        })
    }

    fn store<'a>(
        &'a self,
        checkpoints: &'a ConfirmedCheckpoints,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        let updates: Vec<(Arc<str>, EntryId)> =
            checkpoints.iter().map(|(k, v)| (k.clone(), *v)).collect();
        Box::pin(async move {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let path = self.path.clone();
            let merged = tokio::task::spawn_blocking(move || {
                // Never overwrite a file we could not read: a corrupt file stays for the
                // operator to look at.
                let mut m = match known {
                    Some(m) => m,
                    None => Self::read(&path)?,
                };
                m.extend(updates);
                let file = CheckpointFile {
                    version: FILE_VERSION,
                    shards: m.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                };
                let mut json = serde_json::to_vec_pretty(&file).expect("checkpoints serialize");
                json.push(b'\n');
                Self::write_atomic(&path, &json)?;
                Ok::<_, CheckpointError>(m)
            })
            .await
            .expect("writing the checkpoint file does not panic")?;
            *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(merged);
            Ok(())
        })
    }
}

fn default_checkpoint_topic() -> String {
    "quorumtail.checkpoints".into()
}
fn default_replication_factor() -> i32 {
    -1
}
fn default_checkpoint_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The Kafka checkpoint store (`[checkpoint]` with `kind = "kafka"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaCheckpointConfig {
    /// Bootstrap brokers.
    pub brokers: String,
    /// The compacted topic holding one record per shard.
    #[serde(default = "default_checkpoint_topic")]
    pub topic: String,
    /// Replication factor when the topic is created; -1 takes the broker's default.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Bound on each load, store and the startup check.
    #[serde(
        default = "default_checkpoint_timeout",
        deserialize_with = "de_duration"
    )]
    pub timeout: Duration,
    /// librdkafka properties for the store's producer and consumer (security settings).
    /// `enable.idempotence` and `acks` cannot be weakened.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

impl KafkaCheckpointConfig {
    /// A config with defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaCheckpointConfig {
            brokers: brokers.into(),
            topic: default_checkpoint_topic(),
            replication_factor: default_replication_factor(),
            timeout: default_checkpoint_timeout(),
            librdkafka: BTreeMap::new(),
        }
    }
}

/// Which checkpoint store to use: `kind = "file"` (with `path`) or `kind = "kafka"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckpointConfig {
    /// A JSON file, replaced atomically.
    File(FileCheckpointConfig),
    /// A compacted Kafka topic.
    Kafka(KafkaCheckpointConfig),
}

/// The file checkpoint store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheckpointConfig {
    /// The checkpoint file; its directory must exist.
    pub path: PathBuf,
}

impl CheckpointConfig {
    /// Opens the configured store (creating the Kafka topic if needed).
    ///
    /// # Errors
    /// As [`KafkaCheckpointStore::open`]; the file store opens lazily and cannot fail here.
    pub async fn open(&self) -> Result<Arc<dyn CheckpointStore>, CheckpointError> {
        Ok(match self {
            CheckpointConfig::File(f) => Arc::new(FileCheckpointStore::new(&f.path)),
            CheckpointConfig::Kafka(k) => Arc::new(KafkaCheckpointStore::open(k.clone()).await?),
        })
    }
}

/// Checkpoints in a compacted Kafka topic. See the [module docs](self).
pub struct KafkaCheckpointStore {
    config: KafkaCheckpointConfig,
    producer: FutureProducer<TracingContext>,
}

impl std::fmt::Debug for KafkaCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCheckpointStore")
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

/// Security and connection properties are shared by the admin client and the consumer;
/// producer-only keys would make librdkafka warn there, so they are left out.
const PRODUCER_ONLY: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "linger.ms",
    "queue.buffering.max.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "compression.type",
    "compression.codec",
    "client.id",
];

impl KafkaCheckpointStore {
    /// Connects, and creates the topic (`cleanup.policy=compact`, one partition) if it does
    /// not exist.
    ///
    /// # Errors
    /// [`CheckpointError::Kafka`] for a bad `librdkafka` entry, unreachable brokers or a
    /// failed topic creation.
    pub async fn open(config: KafkaCheckpointConfig) -> Result<Self, CheckpointError> {
        let topic = config.topic.clone();
        let kerr = |op: &'static str, fix: &'static str| {
            let topic = topic.clone();
            move |e: String| CheckpointError::Kafka {
                topic,
                op,
                cause: e,
                fix,
            }
        };
        let props = crate::config::producer_properties(&config.brokers, &config.librdkafka)
            .map_err(|e| kerr("configuration", "fix [checkpoint.librdkafka]")(e.to_string()))?;
        let mut pc = ClientConfig::new();
        for (k, v) in &props {
            pc.set(k, v);
        }
        pc.set("linger.ms", "0");
        let producer: FutureProducer<TracingContext> =
            pc.create_with_context(TracingContext).map_err(|e| {
                kerr("creating the producer", "fix [checkpoint.librdkafka]")(e.to_string())
            })?;
        let store = KafkaCheckpointStore { config, producer };
        store.ensure_topic().await?;
        Ok(store)
    }

    fn common_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.brokers);
        for (k, v) in &self.config.librdkafka {
            if !PRODUCER_ONLY.contains(&k.as_str()) {
                c.set(k, v);
            }
        }
        c
    }

    fn err(&self, op: &'static str, cause: impl ToString, fix: &'static str) -> CheckpointError {
        CheckpointError::Kafka {
            topic: self.config.topic.clone(),
            op,
            cause: cause.to_string(),
            fix,
        }
    }

    async fn partitions(&self) -> Result<Option<Vec<i32>>, CheckpointError> {
        let p = self.producer.clone();
        let timeout = self.config.timeout;
        // Metadata of all topics: asking for one topic by name makes brokers with
        // auto.create.topics.enable create it, with default (non-compacted) settings.
        let md = tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, timeout))
            .await
            .expect("metadata fetch does not panic")
            .map_err(|e| {
                self.err(
                    "fetching metadata",
                    e,
                    "check [checkpoint] brokers and that the brokers are reachable from here",
                )
            })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == self.config.topic) else {
            return Ok(None);
        };
        match t.error().map(RDKafkaErrorCode::from) {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            Some(code) => {
                return Err(self.err(
                    "fetching metadata",
                    code,
                    "grant DESCRIBE, READ and WRITE on the checkpoint topic",
                ))
            }
            None => {}
        }
        if t.partitions().is_empty() {
            return Ok(None);
        }
        Ok(Some(t.partitions().iter().map(|p| p.id()).collect()))
    }

    async fn ensure_topic(&self) -> Result<(), CheckpointError> {
        if self.partitions().await?.is_some() {
            return Ok(());
        }
        tracing::info!(topic = %self.config.topic, "checkpoint store: creating the compacted topic");
        let admin: AdminClient<TracingContext> = self
            .common_config()
            .create_with_context(TracingContext)
            .map_err(|e| {
                self.err(
                    "creating the admin client",
                    e,
                    "fix [checkpoint.librdkafka]",
                )
            })?;
        let new = NewTopic::new(
            &self.config.topic,
            1,
            TopicReplication::Fixed(self.config.replication_factor),
        )
        .set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(self.config.timeout));
        let fix =
            "create the topic yourself with cleanup.policy=compact, or grant CREATE on the cluster";
        let res = tokio::time::timeout(self.config.timeout, admin.create_topics([&new], &opts))
            .await
            .map_err(|_| self.err("creating the topic", "timed out", fix))?
            .map_err(|e| self.err("creating the topic", e, fix))?;
        for r in res {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(self.err("creating the topic", code, fix)),
            }
        }
        // Wait (bounded) until the new topic shows up in metadata.
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        loop {
            if self.partitions().await?.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.err("creating the topic", "it did not appear in metadata", fix));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn read_to_end(
    topic: &str,
    timeout: Duration,
    mut cc: ClientConfig,
    partitions: &[i32],
) -> Result<HashMap<Arc<str>, EntryId>, CheckpointError> {
    let err = |op: &'static str, cause: &dyn std::fmt::Display, fix: &'static str| {
        CheckpointError::Kafka {
            topic: topic.to_owned(),
            op,
            cause: cause.to_string(),
            fix,
        }
    };
    let consumer: BaseConsumer<TracingContext> = cc
        .set("group.id", "quorumtail-checkpoint-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(TracingContext)
        .map_err(|e| err("creating the consumer", &e, "fix [checkpoint.librdkafka]"))?;
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| err("assigning partitions", &e, "report this bug"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| err("assigning partitions", &e, "check READ on the topic"))?;
    let mut at_end: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let mut out: HashMap<Arc<str>, EntryId> = HashMap::new();
    let deadline = std::time::Instant::now() + timeout;
    while at_end.len() < partitions.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(err(
                "reading to the end",
                &format!("timed out after {timeout:?}"),
                "check the brokers' health, or raise [checkpoint] timeout",
            ));
        }
        match consumer.poll(left.min(Duration::from_millis(200))) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => {
                return Err(err(
                    "reading",
                    &e,
                    "check READ on the topic and the brokers' health",
                ))
            }
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let corrupt = |cause: String| CheckpointError::CorruptRecord {
                    topic: topic.to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    cause,
                };
                let key = m.key().ok_or_else(|| {
                    corrupt("the record has no key (expected the shard name)".into())
                })?;
                let shard =
                    std::str::from_utf8(key).map_err(|_| corrupt("the key is not UTF-8".into()))?;
                match m.payload() {
                    None => {
                        out.remove(shard);
                    }
                    Some(v) => {
                        let pos: ShardPosition =
                            serde_json::from_slice(v).map_err(|e| corrupt(e.to_string()))?;
                        if &*pos.shard != shard {
                            return Err(corrupt(format!(
                                "the key says shard {shard:?} but the value says {:?}",
                                pos.shard
                            )));
                        }
                        out.insert(pos.shard, pos.id);
                    }
                }
            }
        }
    }
    Ok(out)
}

impl CheckpointStore for KafkaCheckpointStore {
    fn load(&self) -> BoxFuture<'_, Result<HashMap<Arc<str>, EntryId>, CheckpointError>> {
        Box::pin(async move {
            let Some(partitions) = self.partitions().await? else {
                return Err(self.err(
                    "loading",
                    "the topic does not exist",
                    "open the store with KafkaCheckpointStore::open, which creates it",
                ));
            };
            // The consumer blocks; keep it off the async workers.
            let topic = self.config.topic.clone();
            let timeout = self.config.timeout;
            let cc = self.common_config();
            tokio::task::spawn_blocking(move || read_to_end(&topic, timeout, cc, &partitions))
                .await
                .expect("reading the checkpoint topic does not panic")
        })
    }

    fn store<'a>(
        &'a self,
        checkpoints: &'a ConfirmedCheckpoints,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(async move {
            let values: Vec<(&Arc<str>, Vec<u8>)> = checkpoints
                .iter()
                .map(|(shard, id)| {
                    let pos = ShardPosition {
                        shard: shard.clone(),
                        id: *id,
                    };
                    (
                        shard,
                        serde_json::to_vec(&pos).expect("positions serialize"),
                    )
                })
                .collect();
            let sends = values.iter().map(|(shard, value)| {
                let record = FutureRecord::to(&self.config.topic)
                    .key(shard.as_bytes())
                    .payload(value.as_slice());
                async move {
                    self.producer
                        .send(record, self.config.timeout)
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e)
                }
            });
            for r in futures::future::join_all(sends).await {
                r.map_err(|e| {
                    self.err(
                        "storing",
                        e,
                        "check the brokers' health and WRITE on the checkpoint topic",
                    )
                })?;
            }
            Ok(())
        })
    }
}

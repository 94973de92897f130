//! [`KafkaCheckpointStore`]: checkpoints in a compacted topic keyed by shard (see the
//! [checkpoint module](super)).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use quorumtail_oplog::EntryId;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::{
    changed, merged, CheckpointError, CheckpointStore, ConfirmedCheckpoints, Ledger,
    ShardMembership, SnapshotProgress, StoredShard, StoredShards,
};
use crate::client::{producer_properties, shared_properties, TracingContext};
use crate::config::{CheckpointConfig, SinkConfig};

/// Checkpoints in a compacted Kafka topic. See the [checkpoint module docs](crate::checkpoint).
pub struct KafkaCheckpointStore {
    config: CheckpointConfig,
    brokers: String,
    librdkafka: BTreeMap<String, String>,
    producer: FutureProducer<TracingContext>,
    /// What the topic holds, once read; writes merge into it. Held across a write, so
    /// writes are serialized.
    held: tokio::sync::Mutex<Option<StoredShards>>,
    ledger: Mutex<Ledger>,
}

/// A record of the checkpoint topic: a [`ShardPosition`](quorumtail_oplog::ShardPosition)
/// (`shard`, `id`) with the two optional fields of [`StoredShard`].
#[derive(Debug, Serialize, Deserialize)]
struct TopicRecord {
    shard: Arc<str>,
    id: EntryId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    membership: Option<ShardMembership>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    drained: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<SnapshotProgress>,
}

impl std::fmt::Debug for KafkaCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCheckpointStore")
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaCheckpointStore {
    /// Connects, and creates the topic (`cleanup.policy=compact`, one partition) if it does
    /// not exist.
    ///
    /// # Errors
    /// [`CheckpointError::Kafka`] for a bad `librdkafka` entry, unreachable brokers or a
    /// failed topic creation.
    pub async fn open(
        config: &CheckpointConfig,
        sink: &SinkConfig,
    ) -> Result<Self, CheckpointError> {
        let config = config.clone();
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
        let props = producer_properties(sink.brokers(), &sink.librdkafka)
            .map_err(|e| kerr("configuration", "fix [sink.librdkafka]")(e.to_string()))?;
        let mut pc = ClientConfig::new();
        for (k, v) in &props {
            pc.set(k, v);
        }
        pc.set("linger.ms", "0");
        let producer: FutureProducer<TracingContext> = pc
            .create_with_context(TracingContext)
            .map_err(|e| kerr("creating the producer", "fix [sink.librdkafka]")(e.to_string()))?;
        let store = KafkaCheckpointStore {
            config,
            brokers: sink.brokers().to_owned(),
            librdkafka: sink.librdkafka.clone(),
            producer,
            held: Default::default(),
            ledger: Default::default(),
        };
        store.ensure_topic().await?;
        Ok(store)
    }

    fn common_config(&self) -> ClientConfig {
        shared_properties(&self.brokers, &self.librdkafka)
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
                    "check sink.brokers and that the brokers are reachable from here",
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
            .map_err(|e| self.err("creating the admin client", e, "fix [sink.librdkafka]"))?;
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
) -> Result<StoredShards, CheckpointError> {
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
        .map_err(|e| err("creating the consumer", &e, "fix [sink.librdkafka]"))?;
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| err("assigning partitions", &e, "report this bug"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| err("assigning partitions", &e, "check READ on the topic"))?;
    let mut at_end: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let mut out: StoredShards = BTreeMap::new();
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
                        let r: TopicRecord =
                            serde_json::from_slice(v).map_err(|e| corrupt(e.to_string()))?;
                        if &*r.shard != shard {
                            return Err(corrupt(format!(
                                "the key says shard {shard:?} but the value says {:?}",
                                r.shard
                            )));
                        }
                        out.insert(
                            r.shard,
                            StoredShard {
                                checkpoint: r.id,
                                membership: r.membership,
                                drained: r.drained,
                                snapshot: r.snapshot,
                            },
                        );
                    }
                }
            }
        }
    }
    Ok(out)
}

impl KafkaCheckpointStore {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read(&self) -> Result<StoredShards, CheckpointError> {
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
    }

    /// Merges and produces the records that changed, serialized with other writes.
    async fn write(
        &self,
        checkpoints: &ConfirmedCheckpoints,
        drained: Option<&str>,
    ) -> Result<(), CheckpointError> {
        let mut held = self.held.lock().await;
        // A store that never loaded reads the topic first, so that it never replaces a
        // record with less than it holds (a membership, a drained flag).
        let current = match held.take() {
            Some(h) => h,
            None => self.read().await?,
        };
        let (next, revived, snapshots) = {
            let ledger = self.ledger();
            (
                merged(&current, &ledger, checkpoints, drained),
                ledger.revived.clone(),
                ledger.snapshots.clone(),
            )
        };
        let values: Vec<(&Arc<str>, Vec<u8>)> = changed(&current, &next)
            .into_iter()
            .map(|(shard, s)| {
                let r = TopicRecord {
                    shard: shard.clone(),
                    id: s.checkpoint,
                    membership: s.membership.clone(),
                    drained: s.drained,
                    snapshot: s.snapshot.clone(),
                };
                (shard, serde_json::to_vec(&r).expect("positions serialize"))
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
        let results = futures::future::join_all(sends).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            // Some records may have landed; re-sending them next time is harmless.
            *held = Some(current);
            return Err(self.err(
                "storing",
                e,
                "check the brokers' health and WRITE on the checkpoint topic",
            ));
        }
        *held = Some(next);
        self.ledger().written(&revived, &snapshots);
        Ok(())
    }
}

impl CheckpointStore for KafkaCheckpointStore {
    fn load_shards(&self) -> BoxFuture<'_, Result<StoredShards, CheckpointError>> {
        Box::pin(async move {
            let mut held = self.held.lock().await;
            let m = self.read().await?;
            *held = Some(m.clone());
            Ok(m)
        })
    }

    fn store<'a>(
        &'a self,
        checkpoints: &'a ConfirmedCheckpoints,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(self.write(checkpoints, None))
    }

    fn remember(&self, shard: &Arc<str>, membership: ShardMembership) {
        self.ledger().remember(shard, membership);
    }

    fn store_snapshot<'a>(
        &'a self,
        shard: &'a Arc<str>,
        progress: SnapshotProgress,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        self.ledger().snapshots.insert(shard.clone(), progress);
        Box::pin(async move { self.write(&ConfirmedCheckpoints::default(), None).await })
    }

    fn mark_drained<'a>(
        &'a self,
        shard: &'a str,
        checkpoints: &'a ConfirmedCheckpoints,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(self.write(checkpoints, Some(shard)))
    }
}

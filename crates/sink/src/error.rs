//! Errors of the sink, split the way STYLE.md asks: transient conditions never surface here
//! (librdkafka retries them until `message.timeout.ms`, and a full queue makes the sender
//! wait); what surfaces is definite and says what to do next.

use std::path::PathBuf;
use std::sync::Arc;

use rdkafka::types::RDKafkaErrorCode;

/// A record of one shard that will never be delivered: the shard's checkpoint stops before
/// it, and nothing after it is sent for that shard.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "shard {shard}: record seq={seq} ts={ts} ns={ns} was not delivered to topic {topic:?}: \
     {cause}; fix: {fix}. The shard's checkpoint stays before this record, so a restart \
     after the fix resumes here"
)]
pub struct DeliveryError {
    /// The shard whose progress stopped.
    pub shard: Arc<str>,
    /// The record's per-shard seq.
    pub seq: u64,
    /// The record's oplog `ts` (`secs:inc`).
    pub ts: String,
    /// The record's namespace.
    pub ns: String,
    /// The topic it was sent to (for the file sink, the path).
    pub topic: String,
    /// What went wrong, as the producer or the OS reported it.
    pub cause: String,
    /// What the operator can do about it.
    pub fix: &'static str,
}

/// The fix to suggest for a definite Kafka delivery error code.
pub(crate) fn kafka_fix(code: RDKafkaErrorCode) -> &'static str {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            "raise message.max.bytes on the topic (max.message.bytes) and on the brokers, and \
             message.max.bytes in [sink.librdkafka]; or exclude the namespace"
        }
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => {
            "create the topic (or allow auto-creation on the brokers: auto.create.topics.enable)"
        }
        C::TopicAuthorizationFailed => "grant WRITE and DESCRIBE on the topic to the sink's principal",
        C::ClusterAuthorizationFailed => {
            "grant IDEMPOTENT_WRITE on the cluster to the sink's principal (the producer is idempotent)"
        }
        C::InvalidTopic => {
            "change the topic template so that every rendered name is a legal Kafka topic \
             (letters, digits, '.', '_', '-', at most 249 characters), or exclude the namespace"
        }
        C::MessageTimedOut | C::RequestTimedOut => {
            "the brokers did not acknowledge within message.timeout.ms: check that they are up \
             and that enough replicas are in sync for acks=all (min.insync.replicas), or raise \
             message.timeout.ms in [sink.librdkafka]"
        }
        C::NotEnoughReplicas | C::NotEnoughReplicasAfterAppend => {
            "bring the topic's replicas back in sync, or lower min.insync.replicas on the topic"
        }
        C::PurgeQueue | C::PurgeInflight => {
            "the sink shut down before the record was acknowledged; nothing to fix, it is \
             delivered again after a restart"
        }
        C::Fatal | C::OutOfOrderSequenceNumber | C::UnknownProducerId | C::InvalidProducerEpoch => {
            "the idempotent producer hit a fatal error (for example the broker lost its producer \
             state); restart quorumtail, it resumes from the last checkpoint"
        }
        _ => "see the broker logs and the error above; restart after fixing the cause",
    }
}

/// Errors of the sinks.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A configuration value is invalid.
    #[error("invalid sink configuration: {key}: {problem}")]
    Config {
        /// The configuration key, as written in the config file.
        key: String,
        /// What is wrong and what to write instead.
        problem: String,
    },
    /// librdkafka refused to create the producer (usually a bad [sink.librdkafka] entry).
    #[error(
        "cannot create the Kafka producer: {0}; check the keys and values in [sink.librdkafka]"
    )]
    Client(#[source] rdkafka::error::KafkaError),
    /// The brokers did not answer a metadata request in time at startup.
    #[error(
        "cannot reach the Kafka brokers {brokers} within {timeout_ms} ms ({cause}): check [sink] \
         brokers, that the brokers run, and that their advertised listeners resolve and are \
         reachable from this host"
    )]
    Unreachable {
        /// The bootstrap list.
        brokers: String,
        /// How long we waited.
        timeout_ms: u128,
        /// librdkafka's error.
        cause: String,
    },
    /// A topic known at startup does not exist (or is not usable).
    #[error("topic {topic:?} for {what} is not usable: {cause}; fix: {fix}")]
    Topic {
        /// The topic.
        topic: String,
        /// Which shard or purpose needs it.
        what: String,
        /// The metadata error.
        cause: String,
        /// What to do.
        fix: &'static str,
    },
    /// A record could not be delivered (definite).
    #[error(transparent)]
    Delivery(Box<DeliveryError>),
    /// The pipeline broke the input contract: a shard's seq did not increase.
    #[error(
        "shard {shard}: input seq {seq} does not follow seq {last}; this is a bug in quorumtail's \
         pipeline, please report it; the shard's checkpoint stops here"
    )]
    SeqNotIncreasing {
        /// The shard.
        shard: Arc<str>,
        /// The refused seq.
        seq: u64,
        /// The previous seq.
        last: u64,
    },
    /// Writing the output file failed.
    #[error("cannot {op} {path}: {source}; check the disk and the path's permissions")]
    Io {
        /// What we were doing ("write", "fsync", "open").
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The sink has stopped (after a failure or a flush) and takes no more input.
    #[error("the sink has stopped and takes no more input")]
    Closed,
}

impl From<DeliveryError> for SinkError {
    fn from(e: DeliveryError) -> Self {
        SinkError::Delivery(Box::new(e))
    }
}

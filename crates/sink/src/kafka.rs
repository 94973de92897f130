//! The Kafka sink: one task that submits records to a [`ThreadedProducer`], and
//! librdkafka's polling thread that reports deliveries to the progress registry.
//!
//! ```text
//!  SinkSender ─► [input channel] ─► sink task ── send(record, opaque=(shard, seq)) ─► librdkafka
//!                   (bounded)          │  ▲ waits for an in-flight permit,            │ queue,
//!                                      │  │ or on QueueFull for the next delivery     │ retries
//!                                      ▼  │                                           ▼
//!                                   Progress ◄─── delivery callback (polling thread) ─┘
//!                                      │       ack(shard, seq) / fail(shard, seq, error)
//!                                      ▼
//!                 watch<ShardProgress> per shard, ConfirmedCheckpoints
//! ```
//!
//! * The producer is idempotent with `acks=all`: librdkafka keeps the order of a partition
//!   across retries with up to 5 requests in flight, and never duplicates.
//! * Transient conditions never reach us: librdkafka retries them until
//!   `message.timeout.ms`; a full local queue (`QueueFull`) makes the task wait for the
//!   next delivery. What the delivery callback reports as an error is therefore definite
//!   for that record, and stops its shard (see [`DeliveryError`]). A produce to a topic that
//!   does not exist waits up to `topic.metadata.propagation.max.ms` before failing with
//!   `UnknownTopic`.
//! * Memory is bounded by `max_in_flight` permits: a record holds one from submission
//!   until it leaves its shard's tracker queue (confirmed, or discarded after a failure).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::client::log_to_tracing;
use crate::config::SinkConfig;
use crate::error::{kafka_fix, DeliveryError, SinkError};
use crate::progress::Progress;
use crate::record::{OutRecord, SinkInput};
use crate::topic::{check_topic_name, ns_into, TopicTemplate};
use crate::Msg;

/// Identifies a record in the delivery callback.
#[derive(Debug)]
pub(crate) struct DeliveryTag {
    shard: usize,
    seq: u64,
    /// When the record was handed to the producer (for the latency histogram).
    sent: std::time::Instant,
}

/// The producer context: forwards librdkafka's logs to `tracing` and deliveries to the
/// progress registry.
#[derive(Debug)]
pub(crate) struct SinkContext {
    progress: Arc<Progress>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Transient errors (a broker down, a connection refused) are retried by librdkafka;
        // they only become definite through a delivery report.
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

fn header_str<H: Headers>(h: Option<&H>, key: &str) -> String {
    h.and_then(|h| {
        h.iter()
            .find(|x| x.key == key)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
    .unwrap_or_else(|| "?".into())
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<DeliveryTag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<DeliveryTag>) {
        match result {
            Ok(_) => {
                self.progress.metrics.observe(tag.sent.elapsed());
                self.progress.ack(tag.shard, tag.seq)
            }
            Err((err, msg)) => {
                let code = err.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                self.progress.metrics.error(format!("{code:?}"));
                let ts = header_str(msg.headers(), "ts");
                let ns = header_str(msg.headers(), "ns");
                let topic = msg.topic().to_owned();
                self.progress.fail(tag.shard, tag.seq, |shard| {
                    DeliveryError {
                        shard,
                        seq: tag.seq,
                        ts,
                        ns,
                        topic,
                        cause: err.to_string(),
                        fix: kafka_fix(code),
                    }
                    .into()
                });
            }
        }
    }
}

pub(crate) type SinkProducer = ThreadedProducer<SinkContext>;

/// Creates the producer and runs the startup check.
pub(crate) async fn start(
    config: &SinkConfig,
    shards: &[Arc<str>],
    progress: Arc<Progress>,
) -> Result<SinkProducer, SinkError> {
    let props = config.producer_properties()?;
    let mut cc = ClientConfig::new();
    for (k, v) in &props {
        cc.set(k, v);
    }
    let producer: SinkProducer = cc
        .create_with_context(SinkContext { progress })
        .map_err(SinkError::Client)?;
    check_topics(&producer, config, shards).await?;
    Ok(producer)
}

/// Fetches metadata (bounded by `startup_timeout`) and checks the topics that can be known
/// up front.
async fn check_topics(
    producer: &SinkProducer,
    config: &SinkConfig,
    shards: &[Arc<str>],
) -> Result<(), SinkError> {
    let p = producer.clone();
    let timeout = config.startup_timeout();
    let template = config.topic();
    let md = tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, timeout))
        .await
        .expect("metadata fetch does not panic")
        .map_err(|e| SinkError::Unreachable {
            brokers: config.brokers().to_owned(),
            timeout_ms: timeout.as_millis(),
            cause: e.to_string(),
        })?;
    tracing::info!(
        brokers = md.brokers().len(),
        topics = md.topics().len(),
        "kafka sink: brokers reachable"
    );
    let mut wanted: Vec<(String, String)> = Vec::new();
    if let Some(t) = template.fixed() {
        wanted.push((t.to_owned(), "every shard".into()));
    } else if !template.uses_namespace() {
        for s in shards {
            wanted.push((template.render(s, "", ""), format!("shard {s}")));
        }
    }
    for (topic, what) in wanted {
        let problem = match md.topics().iter().find(|t| t.name() == topic) {
            None => Some((
                "the topic does not exist".to_owned(),
                RDKafkaErrorCode::UnknownTopic,
            )),
            Some(t) => match t.error() {
                Some(e) => {
                    let code = RDKafkaErrorCode::from(e);
                    Some((code.to_string(), code))
                }
                None if t.partitions().is_empty() => Some((
                    "the topic has no partitions".to_owned(),
                    RDKafkaErrorCode::UnknownPartition,
                )),
                None => None,
            },
        };
        if let Some((cause, code)) = problem {
            let err = SinkError::Topic {
                topic,
                what,
                cause,
                fix: kafka_fix(code),
            };
            if config.require_topics() {
                return Err(err);
            }
            tracing::warn!(error = %err, "kafka sink: topic missing, relying on auto-creation");
        }
    }
    Ok(())
}

/// The sink task.
pub(crate) struct Worker {
    pub(crate) producer: SinkProducer,
    pub(crate) progress: Arc<Progress>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) max_in_flight: usize,
    pub(crate) template: TopicTemplate,
    topic: String,
    ns: String,
    ts: String,
}

/// How long a sender waits on a full librdkafka queue before trying again even without a
/// delivery report (a safety net; normally the next delivery wakes it).
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(100);
/// How long the task waits for in-flight records when the sink handle is dropped without
/// a flush.
const DROP_FLUSH: Duration = Duration::from_secs(30);

impl Worker {
    pub(crate) fn new(
        producer: SinkProducer,
        progress: Arc<Progress>,
        permits: Arc<Semaphore>,
        config: &SinkConfig,
    ) -> Self {
        Worker {
            producer,
            progress,
            permits,
            max_in_flight: config.max_in_flight(),
            template: config.topic(),
            topic: String::new(),
            ns: String::new(),
            ts: String::new(),
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Input(input) => self.handle(input).await,
                Msg::Flush { deadline, reply } => {
                    // Take what was already accepted, then nothing more.
                    rx.close();
                    while let Some(msg) = rx.recv().await {
                        if let Msg::Input(input) = msg {
                            self.handle(input).await;
                        }
                    }
                    self.wait_idle(deadline).await;
                    let _ = reply.send(());
                    return;
                }
            }
        }
        self.wait_idle(Instant::now() + DROP_FLUSH).await;
    }

    /// Waits until every submitted record left its shard's queue, or the deadline.
    async fn wait_idle(&self, deadline: Instant) {
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout_at(deadline, self.permits.acquire_many(all)).await;
    }

    async fn handle(&mut self, input: SinkInput) {
        match input {
            SinkInput::Marker(m) => {
                let i = self.progress.index(&m.shard);
                self.progress.push_marker(i, m.seq, m.checkpoint);
            }
            SinkInput::Record(r) => self.send(r).await,
        }
    }

    async fn send(&mut self, r: OutRecord) {
        let i = self.progress.index(&r.shard);
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the permit semaphore is never closed");
        if self.progress.push_record(i, r.seq, r.checkpoint).is_err() {
            // The shard failed earlier (or this seq broke the contract): not sent.
            return;
        }
        permit.forget();

        self.template
            .render_into(&mut self.topic, &r.shard, &r.db, &r.coll);
        ns_into(&mut self.ns, &r.db, &r.coll);
        self.ts.clear();
        {
            use std::fmt::Write;
            let _ = write!(self.ts, "{}", r.ts);
        }
        if let Err(problem) = check_topic_name(&self.topic) {
            let d = self.delivery_error(
                &r,
                format!("illegal topic name: {problem}"),
                RDKafkaErrorCode::InvalidTopic,
            );
            self.progress.fail(i, r.seq, |_| d.into());
            return;
        }

        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "shard",
                value: Some(r.shard.as_bytes()),
            })
            .insert(Header {
                key: "ts",
                value: Some(self.ts.as_bytes()),
            })
            .insert(Header {
                key: "op",
                value: Some(r.op.as_bytes()),
            })
            .insert(Header {
                key: "ns",
                value: Some(self.ns.as_bytes()),
            });
        let mut record: BaseRecord<'_, [u8], [u8], Box<DeliveryTag>> = BaseRecord::with_opaque_to(
            &self.topic,
            Box::new(DeliveryTag {
                shard: i,
                seq: r.seq,
                sent: std::time::Instant::now(),
            }),
        )
        .headers(headers);
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        loop {
            // Register interest before trying, so a delivery between the attempt and the
            // wait is not missed.
            let delivered = self.progress.changed.notified();
            tokio::pin!(delivered);
            delivered.as_mut().enable();
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    let _ = tokio::time::timeout(QUEUE_FULL_RETRY, delivered).await;
                }
                Err((err, _back)) => {
                    let code = err.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                    let d = self.delivery_error(&r, err.to_string(), code);
                    self.progress.fail(i, r.seq, |_| d.into());
                    return;
                }
            }
        }
    }

    fn delivery_error(
        &self,
        r: &OutRecord,
        cause: String,
        code: RDKafkaErrorCode,
    ) -> DeliveryError {
        DeliveryError {
            shard: r.shard.clone(),
            seq: r.seq,
            ts: r.ts.to_string(),
            ns: self.ns.clone(),
            topic: self.topic.clone(),
            cause,
            fix: kafka_fix(code),
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("template", &self.template)
            .field("max_in_flight", &self.max_in_flight)
            .field("in_flight", &self.producer.in_flight_count())
            .finish_non_exhaustive()
    }
}

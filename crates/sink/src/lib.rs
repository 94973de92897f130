//! The sink of quorumtail: delivers each shard's ordered records to Kafka (or a JSON-lines
//! file) and reports, per shard, how far delivery is **confirmed**, so that checkpoints
//! move only after delivery ("delivery before progress": a crash loses nothing).
//!
//! ```text
//!  merge task, shard A ──┐
//!                        ├─► SinkSender ─► [bounded channel] ─► sink task ─► Kafka (idempotent, acks=all)
//!  merge task, shard B ──┘   records + markers                     │          or file (+ fsync)
//!                                                                  │ register        │
//!                                                                  ▼ (shard, seq)    │ acks, any order
//!                                                 per-shard contiguity trackers ◄────┘
//!                                                                  │
//!  checkpointer ◄── Sink::checkpoints() / watch<ShardProgress> ◄───┘
//!       │
//!       └─► CheckpointStore::store(ConfirmedCheckpoints)     (JSON file, or a compacted topic)
//! ```
//!
//! # The decisions
//!
//! * **Confirmed means contiguous.** Kafka acknowledges partition by partition, so the
//!   acks of one shard arrive out of order. A shard's confirmed checkpoint is the checkpoint
//!   of the highest seq whose whole prefix is acknowledged ([`tracker`]). Records inside a
//!   transaction carry no checkpoint, so a checkpoint never lands inside one. Entries that
//!   were filtered out travel as [`Marker`]s and move the checkpoint once everything before
//!   them is confirmed.
//! * **One producer, delivery callbacks, no awaited future per record.** A
//!   [`ThreadedProducer`](rdkafka::producer::ThreadedProducer) carries an opaque
//!   `(shard, seq)` per record to its delivery callback, which updates the trackers
//!   directly ([`kafka`]). Throughput is librdkafka's batching, not our round trips.
//! * **Bounded everywhere.** The input channel, and the records in flight
//!   (`max_in_flight` permits, held until a record is *confirmed*, so even a partition that
//!   stalls while others flow cannot grow memory). A full librdkafka queue makes the task
//!   wait for the next delivery; nothing is ever dropped to make room.
//! * **Definite errors stop the shard, loudly.** Transient trouble is retried by
//!   librdkafka until `message.timeout.ms`; whatever the delivery callback reports is
//!   definite: the shard's checkpoint freezes before that record, its later records are not
//!   sent, and a [`DeliveryError`] names the shard, the record's ts and ns, the topic and the
//!   fix. Other shards keep flowing; [`Sink::failure`] lets the coordinator stop them too.
//! * **Idempotent, not transactional.** Records are delivered at least once across
//!   restarts (a restart resends what followed the stored checkpoint). Materialize's sink
//!   gets exactly-once by writing a progress record in the same transaction as the data,
//!   fenced by `init_transactions`; that needs transactions on the broker (tansu's crates.io
//!   build has no EndTxn) and is left for later.
//! * **Checkpoints only from confirmed positions.** [`ConfirmedCheckpoints`] is made by the
//!   sink; the stores ([`checkpoint`]) take nothing else.
//!
//! # Use
//!
//! ```no_run
//! # async fn f() -> Result<(), quorumtail_sink::SinkError> {
//! use quorumtail_sink::{Sink, SinkConfig};
//! let shards: Vec<std::sync::Arc<str>> = vec!["rs0".into(), "rs1".into()];
//! let sink = Sink::kafka(&SinkConfig::kafka("127.0.0.1:9092"), &shards).await?;
//! let tx = sink.sender(); // give clones to the merge tasks; tx.send(record).await
//! let mut rs0 = sink.progress("rs0"); // rs0.changed().await; rs0.borrow().confirmed
//! # drop((tx, rs0));
//! # let store: std::sync::Arc<dyn quorumtail_sink::CheckpointStore> =
//! #     std::sync::Arc::new(quorumtail_sink::FileCheckpointStore::new("cp.json"));
//! let stop = tokio_util::sync::CancellationToken::new();
//! let every = std::time::Duration::from_secs(1);
//! tokio::spawn(quorumtail_sink::run_checkpointer(sink.view(), store.clone(), every, stop.clone()));
//! // ... at shutdown:
//! stop.cancel();
//! let report = sink.flush(tokio::time::Instant::now() + std::time::Duration::from_secs(30)).await;
//! store.store(&report.checkpoints).await.ok();
//! # Ok(()) }
//! ```

pub mod checkpoint;
mod client;
pub mod config;
pub mod error;
pub mod file;
pub mod kafka;
pub mod metrics;
pub mod preflight;
mod progress;
pub mod record;
mod topic;
pub mod tracker;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use checkpoint::{
    run_checkpointer, CheckpointError, CheckpointStore, ConfirmedCheckpoints, FileCheckpointStore,
    KafkaCheckpointStore, ShardMembership, SnapshotCursor, SnapshotLaterRead, SnapshotProgress,
    StoredShard, StoredShards,
};
pub use config::{
    CheckpointConfig, CheckpointKind, FullDocument, JsonMode, KeyKind, RecordFormat, SinkConfig,
    SinkKind, TopicTemplate, Undecodable, DEFAULT_DEBEZIUM_SERVER_NAME,
};
pub use error::{DeliveryError, SinkError};
pub use progress::{ProgressView, ShardProgress};
pub use record::{Marker, OutRecord, SinkInput};
pub use tracker::Confirmed;

use progress::Progress;

/// What travels on the input channel.
#[derive(Debug)]
pub(crate) enum Msg {
    Input(SinkInput),
    /// Take what is queued, then stop taking input and wait for deliveries until
    /// `deadline`.
    Flush {
        deadline: Instant,
        reply: oneshot::Sender<()>,
    },
}

/// The pipeline's side of the input channel. Cheap to clone; `send` waits while the
/// channel is full (backpressure).
#[derive(Clone, Debug)]
pub struct SinkSender {
    tx: mpsc::Sender<Msg>,
}

impl SinkSender {
    /// Hands a record or a marker to the sink, waiting for room in the channel.
    ///
    /// # Errors
    /// [`SinkError::Closed`] once the sink has been flushed or has stopped.
    pub async fn send(&self, input: impl Into<SinkInput>) -> Result<(), SinkError> {
        self.tx
            .send(Msg::Input(input.into()))
            .await
            .map_err(|_| SinkError::Closed)
    }
}

#[derive(Debug)]
enum Worker {
    Task(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

/// A running sink. See the [crate docs](crate).
#[derive(Debug)]
pub struct Sink {
    tx: mpsc::Sender<Msg>,
    progress: Arc<Progress>,
    worker: Worker,
    /// Stops the Kafka task when a flush reaches its deadline.
    cancel: CancellationToken,
}

/// What [`Sink::flush`] leaves behind.
#[derive(Debug, Default)]
pub struct FlushReport {
    /// The final confirmed checkpoint of every shard that has one: store these.
    pub checkpoints: ConfirmedCheckpoints,
    /// Records that were accepted and not confirmed when the deadline passed (0 when
    /// everything was delivered). They are re-read from the checkpoint after a restart.
    pub unconfirmed: usize,
    /// Definite errors of failed shards.
    pub failures: Vec<Arc<SinkError>>,
}

impl FlushReport {
    /// Whether every accepted record was confirmed and no shard failed.
    pub fn is_complete(&self) -> bool {
        self.unconfirmed == 0 && self.failures.is_empty()
    }
}

impl Sink {
    /// Starts the Kafka sink: validates the config, creates the producer, checks that the
    /// brokers answer and that the topics that can be known up front (a fixed topic, or
    /// `{shard}` topics of `shards`) exist, then spawns the sink task. Must be called
    /// within a tokio runtime.
    ///
    /// # Errors
    /// [`SinkError::Config`], [`SinkError::Client`], [`SinkError::Unreachable`],
    /// [`SinkError::Topic`].
    pub async fn kafka(config: &SinkConfig, shards: &[Arc<str>]) -> Result<Sink, SinkError> {
        config.producer_properties()?;
        let permits = Arc::new(Semaphore::new(config.max_in_flight()));
        let progress = Arc::new(Progress::new(Some(permits.clone())));
        for s in shards {
            progress.index(s);
        }
        let producer = kafka::start(config, shards, progress.clone()).await?;
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let keep = producer.clone();
        let worker = kafka::Worker::new(producer, progress.clone(), permits, config);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = worker.run(rx) => {}
                }
                // The last producer handle purges what is left and waits up to 500 ms
                // for the purge reports: keep that off the async workers.
                let _ = tokio::task::spawn_blocking(move || drop(keep)).await;
            }
        });
        tracing::info!(topic = %config.topic(), brokers = %config.brokers(), "kafka sink started");
        Ok(Sink {
            tx,
            progress,
            worker: Worker::Task(task),
            cancel,
        })
    }

    /// Starts the sink `config.kind` names.
    ///
    /// # Errors
    /// As [`Sink::kafka`] and [`Sink::file`].
    pub async fn start(config: &SinkConfig, shards: &[Arc<str>]) -> Result<Sink, SinkError> {
        match config.kind {
            SinkKind::Kafka => Sink::kafka(config, shards).await,
            SinkKind::File => Sink::file(config),
        }
    }

    /// Starts the file sink on its own thread (`path = "-"` writes to stdout).
    ///
    /// # Errors
    /// [`SinkError::Config`] for a zero setting, [`SinkError::Io`] when the file cannot be
    /// opened.
    pub fn file(config: &SinkConfig) -> Result<Sink, SinkError> {
        let progress = Arc::new(Progress::new(None));
        let writer = file::Writer::open(config, progress.clone())?;
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let thread = std::thread::Builder::new()
            .name("quorumtail-file-sink".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| SinkError::Io {
                op: "start a thread for",
                path: config.path().to_owned(),
                source,
            })?;
        Ok(Sink {
            tx,
            progress,
            worker: Worker::Thread(thread),
            cancel: CancellationToken::new(),
        })
    }

    /// A read-only view of the progress, for tasks that do not own the sink (the
    /// checkpointer).
    pub fn view(&self) -> ProgressView {
        ProgressView {
            progress: self.progress.clone(),
        }
    }

    /// A sender for the pipeline.
    pub fn sender(&self) -> SinkSender {
        SinkSender {
            tx: self.tx.clone(),
        }
    }

    /// The delivery progress of one shard (registered on first use).
    pub fn progress(&self, shard: &str) -> watch::Receiver<ShardProgress> {
        self.progress.subscribe(shard)
    }

    /// The first definite error of any shard (`None` while all is well).
    pub fn failure(&self) -> watch::Receiver<Option<Arc<SinkError>>> {
        self.progress.subscribe_failure()
    }

    /// The confirmed checkpoint of every shard that has one, now.
    pub fn checkpoints(&self) -> ConfirmedCheckpoints {
        self.progress.checkpoints()
    }

    /// Records accepted and not yet confirmed, over all shards.
    pub fn unconfirmed(&self) -> usize {
        self.progress.unconfirmed()
    }

    /// Graceful shutdown: the sink takes what is already in its channel, refuses more, and
    /// waits until every accepted record is confirmed or `deadline` passes. Returns the
    /// final confirmed checkpoints. Records still unconfirmed at the deadline are purged
    /// (they are re-read from the checkpoint after a restart); the purge can take up to
    /// about half a second after the deadline.
    pub async fn flush(self, deadline: Instant) -> FlushReport {
        let (reply, done) = oneshot::channel();
        if let Ok(Ok(())) =
            tokio::time::timeout_at(deadline, self.tx.send(Msg::Flush { deadline, reply })).await
        {
            let _ = tokio::time::timeout_at(deadline, done).await;
        }
        let report = FlushReport {
            checkpoints: self.progress.checkpoints(),
            unconfirmed: self.progress.unconfirmed(),
            failures: self.progress.failures(),
        };
        // Whatever is still in flight is purged now; it is re-read after a restart.
        self.cancel.cancel();
        match self.worker {
            Worker::Task(t) => {
                let _ = t.await;
            }
            Worker::Thread(t) => {
                if report.unconfirmed == 0 {
                    let _ = tokio::task::spawn_blocking(move || t.join()).await;
                }
            }
        }
        tracing::info!(
            shards = report.checkpoints.len(),
            unconfirmed = report.unconfirmed,
            failures = report.failures.len(),
            "sink flushed"
        );
        report
    }
}

//! One shard's pipeline: a tailer per member, the shard core that decides, and the
//! emitter that turns committed entries into records for the sink.
//!
//! ```text
//!  member a ─► tailer ─► [bounded] ─┐   shard task (this module: I/O only)
//!  member b ─► tailer ─► [bounded] ─┼─► decode batch ─► core::ShardCore ──► actions
//!  member c ─► tailer ─► [bounded] ─┘   (Report per entry)   │ owns Merge      │
//!      ▲  ▲                                                  │                 ├─ Release(Committed) ─► emit::Emitter ─► sink
//!      │  └── read mode (watch per member) ◄── SetMode ──────┤                 ├─ Release(Discarded): counted, logged
//!      └───── resume target (watch) ◄──────── Target ────────┘                 ├─ Start / Stop / Pause / Resume
//!                                                                              └─ Note (logs), Fail (definite error)
//! ```
//!
//! # One entry, from the oplog to Kafka
//!
//! 1. A member's tailer (`quorumtail_tailer::run`) reads a raw batch from the member's
//!    oplog, starting at the shard's resume target, and sends it on its bounded channel
//!    as a `TailMsg::Batch`.
//! 2. [`run_shard`]'s loop takes it from the channel; `ShardTask::decode` turns each
//!    entry into a merge `Report`: its identity, and when the stream holds whole entries
//!    its digest and the raw entry itself ([`EntryRef`], which keeps the batch alive
//!    without copying, and the layout of this one parse so the release does not parse
//!    the entry again).
//! 3. [`core::ShardCore::step`] pushes the reports into the majority merge
//!    (`quorumtail_merge::Merge`). Once a quorum of voters reported the entry, MongoDB's
//!    commit point covers it (`[pipeline] release = "commit_point"`) and some member sent
//!    its content, the merge releases it, in `ts` order, once; the core hands it back as
//!    [`core::Action::Release`] and moves the resume target to it.
//! 4. [`emit::Emitter`] unpacks transactions, applies the filter, encodes records and
//!    attaches a checkpoint wherever resuming is safe (never inside a transaction).
//! 5. `ShardTask::flush` sends the records to the sink (`quorumtail_sink`), which
//!    delivers them and stores a shard's checkpoint only once everything up to it is
//!    confirmed delivered.
//!
//! # Who decides what
//!
//! The shard's decisions live in [`core`], a synchronous state machine without tasks,
//! channels or clock reads (time is passed in): where to start without a checkpoint,
//! whether the resume point is lost, which member is read whole and when that changes,
//! backpressure, quorum reachability and membership. Each rule is unit-tested there and
//! the whole is property-tested against a model of a replica set. This module only moves
//! messages: it spawns and stops tailers, reads their channels (except those the core set
//! aside), feeds the core, carries out its actions in order, and logs its notes
//! (`notes.rs`). A definite error stops the shard; the other shards keep running.
//!
//! # Whole entries from one member, identities from the others
//!
//! The merge needs identities; only the emitter needs contents. With `[pipeline]
//! whole_entries = "one"` (the default) one member per shard streams whole entries and the
//! others stream the projection `{ts, t, h}`, so reading three members costs about one
//! read of the oplog plus ~30 bytes per entry per extra member. The merge releases an
//! entry once a quorum reported its identity AND a payload arrived
//! (`Merge::require_payload`). The core chooses and changes the member read whole:
//!
//! * at start, the first member that answers, then the primary as soon as one says so;
//! * at once when it goes down, is refused, lacks the resume point or is removed, or
//!   has passed the entry the release waits for without holding it (another branch);
//! * when the release has waited [`SWITCH_AFTER`] for a payload while the member read
//!   whole is at the end of its oplog (it is behind) or has delivered nothing for that
//!   long (a hung connection): the member furthest ahead among those that reported the
//!   waiting entry. One still working through a backlog is slower, not behind, and is
//!   left alone.
//!
//! A change restarts both members' streams from the watermark (the last released entry):
//! the new whole member re-sends the waiting entry first, nothing is skipped, and nothing
//! released is released again (the merge ignores reports at or below what it decided).
//! Failover in the middle of a change is the same case again: the next member is chosen.
//!
//! # Membership
//!
//! Which members are read, who votes and the quorum come from the replica set itself.
//! Every tailer reads the set's configuration after it connects and whenever hello's
//! `setVersion` changes (`replSetGetConfig`; `replSetGetStatus` without that privilege) and
//! sends it here with the name the member gives itself (hello `me`). The newest
//! configuration (config term, then version) wins:
//!
//! * every data-bearing member in it is read, hidden and delayed ones included (hello and
//!   `config.shards` never list them); a listed or discovered address is matched to a
//!   configured member by `me`, so one member is never read twice under two names, and a
//!   listed address that has not answered yet stays until it says who it is;
//! * members that left the configuration stop being read;
//! * only voters' reports count; the quorum is the set's `writeMajorityCount` unless
//!   `[[shards]] quorum` says otherwise (a lower one is warned about).
//!
//! Until a configuration arrives (or when no member may read it) the listed members are
//! read as voters with the quorum from the list. Whatever the membership, an entry is
//! released only once MongoDB's commit point covers it (`[pipeline] release`), so a wrong
//! membership can delay output but not emit a rolled-back write.
//!
//! # Backpressure
//!
//! `sink.send` waits when the sink is full, which stops this task from reading the tailer
//! channels, which stops the tailers. When the merge holds more than `max_pending`
//! unconfirmed entries, the channels of the members that are ahead are set aside while
//! others catch up; a member is read again once it is no longer ahead, and the members
//! the release waits on are always read (the rules are on `ShardCore`'s backpressure in
//! `core/rules.rs`). Memory stays bounded while a quorum is stalled.

mod again;
pub mod core;
pub mod emit;
mod error;
pub mod lookup;
mod notes;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mongodb::raw_batch_cursor::RawBatch;
use quorumtail_merge::{Event, NodeId, NodeSet, Report};
use quorumtail_oplog::{EntryId, EntryLayout, Filter, OplogEntry, Timestamp};
use quorumtail_sink::{SinkInput, SinkSender};
use quorumtail_tailer::{ReadMode, ResumeTarget, TailMsg, TailerConfig};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{StreamExt, StreamMap};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::core::{Action, CoreConfig, Input, MemberMsg, Now, ShardCore};
use crate::config::{KeyKind, Release, StartPosition, WholeEntries};
use emit::Emitter;
use stats::ShardStats;

pub use self::core::SWITCH_AFTER;
pub use error::ShardError;

/// A shard as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    /// Shard name (`config.shards._id`); records carry it.
    pub name: Arc<str>,
    /// The replica set name members must report, if known.
    pub replica_set: Option<String>,
    /// Data-bearing members, `host:port`.
    pub members: Vec<String>,
    /// Arbiters (vote, no oplog).
    pub arbiters: usize,
    /// Explicit quorum, if any.
    pub quorum: Option<usize>,
    /// The members come from `[[shards]]` (the operator can list missing ones) rather
    /// than from discovery or a stored membership.
    pub listed: bool,
}

/// What every shard pipeline shares.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Template for tailer settings (shard and node are filled in).
    pub tailer: TailerConfig,
    /// The filter.
    pub filter: Filter,
    /// Kafka key choice.
    pub key: KeyKind,
    /// `[sink] format`.
    pub format: quorumtail_sink::RecordFormat,
    /// `[sink] tombstones`.
    pub tombstones: bool,
    /// `[sink] full_document`.
    pub full_document: quorumtail_sink::FullDocument,
    /// `[sink] undecodable`.
    pub undecodable: quorumtail_sink::Undecodable,
    /// `[sink] json`.
    pub json: quorumtail_sink::JsonMode,
    /// With full documents: the mongos client lookups go through (the discovery URI's,
    /// when it is a mongos); `None`: each shard's members are read directly.
    pub lookup_router: Option<mongodb::Client>,
    /// The sink's input.
    pub sink: SinkSender,
    /// `[pipeline] max_pending`.
    pub max_pending: usize,
    /// `[pipeline] channel_batches`.
    pub channel_batches: usize,
    /// `[start] position` for shards without a checkpoint.
    pub start: StartPosition,
    /// `[pipeline] whole_entries`.
    pub whole_entries: WholeEntries,
    /// `[pipeline] release`.
    pub release: Release,
    /// The initial snapshot, for shards without a checkpoint (`[start] position =
    /// "snapshot"`); `None` otherwise, and for shards that appear later.
    pub snapshot: Option<Arc<crate::snapshot::SnapshotPlan>>,
}

/// A raw entry kept alive by its batch, without copying, with what its one parse found.
///
/// The entry is parsed once, when its batch is decoded (for the identity and digest the
/// merge needs); the parse's [`EntryLayout`] travels with it through the merge, and the
/// release rebuilds the same [`OplogEntry`] view from it by slicing the batch instead of
/// walking the entry's elements again.
#[derive(Clone, Debug)]
pub struct EntryRef {
    batch: Arc<RawBatch>,
    start: usize,
    len: usize,
    layout: EntryLayout,
}

impl EntryRef {
    fn doc(&self) -> Result<&bson::RawDocument, String> {
        let bytes = self
            .batch
            .as_raw_document()
            .as_bytes()
            .get(self.start..self.start + self.len)
            .ok_or("entry outside its batch")?;
        bson::RawDocument::from_bytes(bytes).map_err(|e| e.to_string())
    }

    /// The view the decode-time parse gave. The batch's bytes do not change, so the layout
    /// always fits them; if it did not, that is reported as a bad entry rather than
    /// reparsed silently.
    fn entry(&self) -> Result<OplogEntry<'_>, String> {
        self.layout
            .view(self.doc()?)
            .ok_or_else(|| "the entry's bytes do not match its parse".to_owned())
    }
}

/// Messages the coordinator sends a running shard.
#[derive(Debug)]
pub enum Control {
    /// The member list changed (discovery).
    Members(ShardSpec),
    /// The shard was removed from the cluster: finish what its members hold, then stop.
    Drain,
    /// Copy collections again, as of the last entry released (`quorumtail snapshot`).
    Snapshot(Box<crate::snapshot::Request>),
}

/// Runs one shard until `shutdown` or a definite error.
///
/// # Errors
/// [`ShardError`] for definite problems; the other shards keep running.
pub async fn run_shard(
    spec: ShardSpec,
    shared: Shared,
    checkpoint: Option<EntryId>,
    stats: Arc<ShardStats>,
    mut control: mpsc::Receiver<Control>,
    shutdown: CancellationToken,
) -> Result<(), ShardError> {
    // No checkpoint and a snapshot planned: the existing documents first, then the stream
    // from shortly before the snapshot's time, emitting only what committed after it.
    let mut shared = shared;
    let mut after = AfterSnapshot::default();
    if let (None, Some(plan)) = (checkpoint, shared.snapshot.clone()) {
        let mut emitter = Emitter::new(
            spec.name.clone(),
            shared.filter.clone(),
            shared.key,
            stats.clone(),
            None,
        )
        .with_format(shared.format)
        .with_tombstones(shared.tombstones)
        .with_undecodable(shared.undecodable)
        .with_json(shared.json);
        let arrived = plan.barrier.arrive();
        let copied = crate::snapshot::copy_shard(
            &spec,
            &plan,
            &shared.filter,
            &mut emitter,
            &shared.sink,
            &stats,
            &shutdown,
        )
        .await;
        drop(arrived);
        if copied.as_ref().is_ok_and(Option::is_some) {
            let left = plan.barrier.left();
            if left > 0 {
                info!(shard = %spec.name, shards_copying = left, "snapshot: copied; streaming starts once every shard's copy ended (a document moved after the snapshot's time must be read before its later changes)");
            }
            if !plan.barrier.wait(&shutdown).await {
                return Ok(());
            }
        }
        match copied {
            Ok(Some((start, floor))) => {
                shared.start = StartPosition::After(start.into());
                after = AfterSnapshot {
                    floor: Some(floor),
                    seq: emitter.seq(),
                };
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                stats.failed.store(1, std::sync::atomic::Ordering::Relaxed);
                error!(shard = %spec.name, error = %e, "shard stopped");
                return Err(e);
            }
        }
    }
    let mut task = ShardTask::new(spec, shared, checkpoint, stats, &shutdown, after)?;
    // The full document lookup stage, when on: its end (a definite error) ends the shard.
    let mut stage = task.stage_handle.take();
    let result: Result<(), ShardError> = async {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                r = async {
                    match stage.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                } => {
                    stage = None;
                    return Err(stage_end(&task.shard, r));
                }
                Some(c) = control.recv() => match c {
                    Control::Snapshot(req) => task.snapshot_again(&req, &shutdown).await?,
                    c => task.control(c)?,
                },
                Some((node, msg)) = task.streams.next(), if !task.streams.is_empty() => {
                    task.handle(node, msg)?;
                }
            }
            if let Err(e) = task.flush().await {
                // The stage stopped: its own error says why.
                return Err(match (stage.take(), &e) {
                    (Some(h), ShardError::LookupStopped { .. }) => stage_end(&task.shard, h.await),
                    _ => e,
                });
            }
            if task.core.drained() {
                // What the lookup stage holds is delivered before the shard counts as done.
                task.lookup_tx = None;
                if let Some(h) = stage.take() {
                    match h.await {
                        Ok(r) => r?,
                        Err(e) => return Err(stage_end(&task.shard, Err(e))),
                    }
                }
                info!(shard = %task.shard, "removed shard drained: every member caught up and everything committed was emitted");
                return Ok(());
            }
        }
    }
    .await;
    task.lookup_stop.cancel();
    task.tailers_stop.cancel();
    // The tailers shut their driver clients down before the runtime may go away; with
    // their receivers dropped, none waits on a full channel.
    let tailers = task.tailers.clone();
    tailers.close();
    drop(std::mem::take(&mut task.streams));
    task.paused.clear();
    if tokio::time::timeout(Duration::from_secs(10), tailers.wait())
        .await
        .is_err()
    {
        warn!(shard = %task.shard, "member tailers did not stop within 10 s; not waiting for them");
    }
    use std::sync::atomic::Ordering::Relaxed;
    match &result {
        Err(e) => {
            task.stats.failed.store(1, Relaxed);
            error!(shard = %task.shard, error = %e, "shard stopped");
        }
        Ok(()) => {
            task.stats.stopped.store(1, Relaxed);
            info!(shard = %task.shard, "shard pipeline stopped");
        }
    }
    result
}

/// What the stream after a snapshot continues from: the snapshot's time and the last
/// sequence number its records took.
#[derive(Debug, Clone, Default)]
struct AfterSnapshot {
    floor: Option<crate::snapshot::floor::SnapshotFloor>,
    seq: u64,
}

/// Why the lookup stage ended while the shard runs.
fn stage_end(
    shard: &Arc<str>,
    r: Result<Result<(), ShardError>, tokio::task::JoinError>,
) -> ShardError {
    match r {
        Ok(Err(e)) => e,
        Ok(Ok(())) => ShardError::Lookup {
            shard: shard.clone(),
            detail: "the lookup stage stopped".into(),
        },
        Err(e) => ShardError::Lookup {
            shard: shard.clone(),
            detail: format!("the lookup stage failed: {e}"),
        },
    }
}

/// The I/O around one [`ShardCore`]: the member tailers and their channels, the emitter
/// and the sink. It decides nothing: it feeds the core and carries out its actions.
struct ShardTask {
    shard: Arc<str>,
    /// The replica set name tailers must find (from the latest member list).
    replica_set: Option<String>,
    shared: Shared,
    stats: Arc<ShardStats>,
    core: ShardCore<EntryRef>,
    tailers_stop: CancellationToken,
    /// The member tailers' tasks, awaited when the shard stops.
    tailers: tokio_util::task::TaskTracker,
    /// The resume target every tailer (re)starts from.
    target_tx: watch::Sender<Option<ResumeTarget>>,
    /// What each member's tailer should read (it restarts its stream when this changes).
    modes: HashMap<NodeId, watch::Sender<ReadMode>>,
    streams: StreamMap<NodeId, ReceiverStream<TailMsg>>,
    /// Channels set aside by backpressure.
    paused: HashMap<NodeId, ReceiverStream<TailMsg>>,
    emitter: Emitter,
    after: AfterSnapshot,
    out: Vec<SinkInput>,
    /// With full documents: the lookup stage's input (each step's output goes there, in
    /// order, instead of straight to the sink).
    lookup_tx: Option<mpsc::Sender<lookup::Chunk>>,
    /// The lookup stage's task, taken by [`run_shard`].
    stage_handle: Option<tokio::task::JoinHandle<Result<(), ShardError>>>,
    lookup_stop: CancellationToken,
    actions: Vec<Action<EntryRef>>,
    /// The `ts` of the last committed entry handed to the emitter: a snapshot on request
    /// reads as of it.
    last_released: Option<Timestamp>,
}

impl ShardTask {
    fn new(
        spec: ShardSpec,
        shared: Shared,
        checkpoint: Option<EntryId>,
        stats: Arc<ShardStats>,
        shutdown: &CancellationToken,
        after: AfterSnapshot,
    ) -> Result<Self, ShardError> {
        let shard = spec.name.clone();
        let config = CoreConfig {
            max_pending: shared.max_pending,
            start: shared.start,
            whole_entries: shared.whole_entries,
            release: shared.release,
        };
        let members = spec.members.clone();
        let replica_set = spec.replica_set.clone();
        let (core, actions) = ShardCore::new(spec, config, checkpoint, stats.clone())?;
        let (target_tx, _) = watch::channel::<Option<ResumeTarget>>(None);
        let emitter = Emitter::new(
            shard.clone(),
            shared.filter.clone(),
            shared.key,
            stats.clone(),
            None,
        )
        .with_format(shared.format)
        .with_tombstones(shared.tombstones)
        .with_full_document(shared.full_document)
        .with_undecodable(shared.undecodable)
        .with_json(shared.json)
        .after_snapshot(after.floor.clone(), after.seq);
        let lookup_stop = shutdown.child_token();
        let (lookup_tx, stage_handle) = if shared.full_document.enabled() {
            let route = match &shared.lookup_router {
                Some(c) => lookup::Route::Router(c.clone()),
                None => lookup::Route::Members {
                    members: members.clone(),
                    replica_set: replica_set.clone(),
                    access: shared.tailer.access.clone(),
                },
            };
            let stage = lookup::Stage::start(
                lookup::StageConfig {
                    shard: shard.clone(),
                    mode: shared.full_document,
                    route,
                    sink: shared.sink.clone(),
                    stats: stats.clone(),
                },
                lookup_stop.clone(),
            );
            (Some(stage.tx), Some(stage.handle))
        } else {
            (None, None)
        };
        let mut task = ShardTask {
            shard: shard.clone(),
            replica_set,
            shared,
            stats,
            core,
            tailers_stop: shutdown.child_token(),
            tailers: tokio_util::task::TaskTracker::new(),
            target_tx,
            modes: HashMap::new(),
            streams: StreamMap::new(),
            paused: HashMap::new(),
            emitter,
            after,
            out: Vec::with_capacity(1024),
            lookup_tx,
            stage_handle,
            lookup_stop,
            actions,
            last_released: None,
        };
        task.execute()?;
        info!(%shard, members = ?members, quorum = task.core.quorum(), "shard pipeline started");
        Ok(task)
    }

    fn control(&mut self, c: Control) -> Result<(), ShardError> {
        let input = match c {
            Control::Members(spec) => {
                self.replica_set.clone_from(&spec.replica_set);
                Input::Members(spec)
            }
            Control::Drain => Input::Drain,
            // Handled by `run_shard`, which awaits the copy.
            Control::Snapshot(_) => return Ok(()),
        };
        self.core.step(Now::read(), input, &mut self.actions);
        self.execute()
    }

    /// Decodes a tailer's message for the core, steps it and carries out its actions.
    fn handle(&mut self, node: NodeId, msg: TailMsg) -> Result<(), ShardError> {
        if !self.core.is_member(node) {
            return Ok(());
        }
        let msg = match msg {
            TailMsg::Probe {
                oldest,
                newest,
                primary,
                me,
            } => MemberMsg::Probe {
                oldest,
                newest,
                primary,
                me,
            },
            TailMsg::Started { mode, .. } => MemberMsg::Started { mode },
            TailMsg::Batch(batch) => self.decode(node, batch)?,
            TailMsg::Idle => MemberMsg::Idle,
            TailMsg::Lacks { target, first } => MemberMsg::Lacks { target, first },
            TailMsg::Down { reason } => MemberMsg::Down { reason },
            TailMsg::Refused { reason } => MemberMsg::Refused { reason },
            TailMsg::CommitPoint(r) => MemberMsg::CommitPoint(r),
            TailMsg::Config(c) => MemberMsg::Config(c),
        };
        self.core
            .step(Now::read(), Input::Member(node, msg), &mut self.actions);
        self.execute()
    }

    /// A batch as merge reports: whole entries (identity, digest and the raw entry kept
    /// alive by its batch) or identities, as the member's current stream holds them.
    fn decode(
        &self,
        node: NodeId,
        batch: quorumtail_tailer::Batch,
    ) -> Result<MemberMsg<EntryRef>, ShardError> {
        let reply = batch.shared();
        let bytes = reply.as_raw_document().as_bytes().len();
        // Sized from the reply (an entry takes at least ~100 bytes), so that neither does a
        // large batch grow report by report (copying them again) nor a live batch of one
        // entry allocate room for a thousand.
        let mut reports =
            Vec::with_capacity((bytes / 100).min(self.shared.tailer.batch_size as usize));
        // Before the start is decided the core ignores batches: nothing to decode.
        if self.core.engine().is_some() {
            let whole = self.core.stream_mode(node) != Some(ReadMode::Identity);
            let addr = self.core.member_addr(node).unwrap_or("?");
            let base = reply.as_raw_document().as_bytes().as_ptr() as usize;
            let bad = |detail: String| ShardError::BadEntry {
                shard: self.shard.clone(),
                detail: format!("member {addr}: {detail}"),
            };
            for doc in batch.entries().map_err(bad)? {
                let doc = doc.map_err(bad)?;
                reports.push(if whole {
                    let parsed = OplogEntry::parse(doc).map_err(|e| bad(e.to_string()))?;
                    let start = doc.as_bytes().as_ptr() as usize - base;
                    Report {
                        id: parsed.id(),
                        digest: Some(parsed.digest()),
                        payload: Some(EntryRef {
                            batch: reply.clone(),
                            start,
                            len: doc.as_bytes().len(),
                            layout: parsed.layout(),
                        }),
                    }
                } else {
                    Report {
                        id: OplogEntry::parse_id(doc).map_err(|e| bad(e.to_string()))?,
                        digest: None,
                        payload: None,
                    }
                });
            }
        }
        let full_batch = self.shared.tailer.batch_size as usize;
        Ok(MemberMsg::Batch {
            read_after: batch.read_after_commit_point(),
            // A partial batch: the cursor reached the end of the member's oplog.
            at_end: reports.len() < full_batch && bytes < 8 << 20,
            reports,
            bytes: bytes as u64,
        })
    }

    /// Carries out the core's actions in order.
    fn execute(&mut self) -> Result<(), ShardError> {
        // Discards come in runs (a rollback); one log line per run.
        let mut discarded: Option<(EntryId, EntryId, u64, NodeSet)> = None;
        let mut actions = std::mem::take(&mut self.actions);
        let mut result = Ok(());
        for action in actions.drain(..) {
            match action {
                Action::Start { node, addr, mode } => self.spawn_member(node, &addr, mode),
                Action::Stop(node) => {
                    // Dropping the receiver ends the tailer (its sends fail).
                    self.streams.remove(&node);
                    self.paused.remove(&node);
                    self.modes.remove(&node);
                }
                Action::SetMode(node, mode) => {
                    if let Some(m) = self.modes.get(&node) {
                        m.send_replace(mode);
                    }
                }
                Action::Pause(node) => {
                    if let Some(s) = self.streams.remove(&node) {
                        self.paused.insert(node, s);
                    }
                }
                Action::Resume(node) => {
                    if let Some(s) = self.paused.remove(&node) {
                        self.streams.insert(node, s);
                    }
                }
                Action::Target(t) => {
                    self.target_tx.send_if_modified(|cur| {
                        let changed = *cur != Some(t);
                        *cur = Some(t);
                        changed
                    });
                }
                Action::ResetEmitter {
                    skip_orphans_before,
                } => {
                    let pending = self.emitter.take_lookups();
                    self.emitter = Emitter::new(
                        self.shard.clone(),
                        self.shared.filter.clone(),
                        self.shared.key,
                        self.stats.clone(),
                        skip_orphans_before,
                    )
                    .with_format(self.shared.format)
                    .with_tombstones(self.shared.tombstones)
                    .with_full_document(self.shared.full_document)
                    .with_undecodable(self.shared.undecodable)
                    .with_json(self.shared.json)
                    .after_snapshot(self.after.floor.clone(), self.emitter.seq());
                    self.emitter.adopt_lookups(pending);
                }
                Action::Release(ev) => {
                    if let Err(e) = self.released(ev, &mut discarded) {
                        result = Err(e);
                        break;
                    }
                }
                Action::Note(n) => notes::log(&self.shard, &n),
                Action::Fail(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        actions.clear();
        self.actions = actions;
        if let Some((first, last, n, held)) = discarded {
            warn!(shard = %self.shard, count = n, first = %first, last = %last, held_by = ?held, "discarded entries no quorum holds (rolled back or seen by a minority only); none is emitted");
        }
        result
    }

    fn spawn_member(&mut self, node: NodeId, addr: &str, mode: ReadMode) {
        let (tx, rx) = mpsc::channel(self.shared.channel_batches.max(1));
        let mut cfg = self.shared.tailer.clone();
        cfg.shard = self.shard.clone();
        cfg.node = addr.to_owned();
        cfg.replica_set = self.replica_set.clone();
        let token = self.tailers_stop.child_token();
        let (mode_tx, mode_rx) = watch::channel(mode);
        self.tailers.spawn(quorumtail_tailer::run(
            cfg,
            self.target_tx.subscribe(),
            mode_rx,
            tx,
            token,
        ));
        self.streams.insert(node, ReceiverStream::new(rx));
        self.modes.insert(node, mode_tx);
    }

    /// A released entry: committed ones go through the emitter; discarded ones are
    /// counted (and gathered into `run` for one log line).
    fn released(
        &mut self,
        ev: Event<EntryRef>,
        run: &mut Option<(EntryId, EntryId, u64, NodeSet)>,
    ) -> Result<(), ShardError> {
        use std::sync::atomic::Ordering::Relaxed;
        let shard = &self.shard;
        match ev {
            Event::Committed { id, payload, .. } => {
                self.stats.committed.fetch_add(1, Relaxed);
                let bad = |detail: String| ShardError::BadEntry {
                    shard: shard.clone(),
                    detail: format!("committed entry {id}: {detail}"),
                };
                let p = payload.ok_or_else(|| bad("committed without content".into()))?;
                let entry = p.entry().map_err(bad)?;
                self.last_released = Some(id.ts);
                self.emitter.committed(&entry, &mut self.out).map_err(|e| {
                    ShardError::BadEntry {
                        shard: shard.clone(),
                        detail: e.to_string(),
                    }
                })?;
            }
            Event::Discarded {
                id,
                reporters,
                payload,
            } => {
                self.stats.discarded.fetch_add(1, Relaxed);
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let what = payload
                        .and_then(|p| {
                            p.entry()
                                .ok()
                                .map(|e| format!("{} {}", e.op.as_str(), e.ns))
                        })
                        .unwrap_or_default();
                    tracing::debug!(%shard, entry = %id, op = %what, members = ?reporters, "discarded");
                }
                *run = Some(match *run {
                    None => (id, id, 1, reporters),
                    Some((first, _, n, held)) => (first, id, n + 1, held.union(reporters)),
                });
            }
            // The core turns a divergence into `Action::Fail`.
            Event::Divergence { .. } => {}
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ShardError> {
        if let Some(tx) = &self.lookup_tx {
            if self.out.is_empty() {
                return Ok(());
            }
            let chunk = lookup::Chunk {
                inputs: std::mem::replace(&mut self.out, Vec::with_capacity(1024)),
                lookups: self.emitter.take_lookups(),
            };
            return tx.send(chunk).await.map_err(|_| ShardError::LookupStopped {
                shard: self.shard.clone(),
            });
        }
        for input in self.out.drain(..) {
            self.shared
                .sink
                .send(input)
                .await
                .map_err(|e| ShardError::Sink {
                    shard: self.shard.clone(),
                    detail: e.to_string(),
                })?;
        }
        Ok(())
    }
}

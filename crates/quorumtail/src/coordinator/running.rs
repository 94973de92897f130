//! The set of running shard pipelines: starting, reconciling with a new topology,
//! draining removed shards and marking them drained once the sink confirmed them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quorumtail_oplog::EntryId;
use quorumtail_sink::{CheckpointStore, ProgressView, StoredShards};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{membership_of, spec_from};
use crate::pipeline::{run_shard, Control, ShardError, ShardSpec, Shared};
use crate::status::{DrainState, Draining, Status};

struct ShardRun {
    spec: ShardSpec,
    control: mpsc::Sender<Control>,
    draining: bool,
}

/// A shard pipeline's end: its name, its result, and whether it ended by itself (a drained
/// shard) rather than by the shutdown.
type PipelineEnd = (Arc<str>, Result<(), ShardError>, bool);

/// A drained shard's delivery and marking: its name and the position it was marked
/// drained at (`None`: it never had one), or why it was not marked.
type DrainEnd = (Arc<str>, Result<Option<EntryId>, String>);

pub(super) struct Running {
    pub(super) tasks: JoinSet<PipelineEnd>,
    shards: HashMap<Arc<str>, ShardRun>,
    pub(super) status: Arc<Status>,
    pub(super) failed: Vec<String>,
    failed_shards: std::collections::HashSet<Arc<str>>,
    store: Arc<dyn CheckpointStore>,
    view: ProgressView,
    /// What the checkpoint store holds (as loaded, then updated as shards start and drain).
    remembered: StoredShards,
    /// Drained shards waiting for the sink to confirm their last records.
    pub(super) finishing: JoinSet<DrainEnd>,
    finishing_names: std::collections::HashSet<Arc<str>>,
    orphans_reported: std::collections::HashSet<Arc<str>>,
    /// Draining shards whose quorum is unreachable: since when, and when it was last logged.
    unreachable_since: HashMap<Arc<str>, (std::time::Instant, std::time::Instant)>,
    /// Shards marked drained in this run.
    pub(super) drained: Vec<String>,
    /// Between attempts to mark a shard drained.
    retry: Duration,
}

/// How often a removed shard that cannot be drained is logged again.
const UNREACHABLE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Waits until the sink confirmed the last checkpoint the drained shard's pipeline handed
/// it (delivery before progress), then marks the shard drained in the store, retrying
/// until that succeeds.
async fn finish_drain(
    shard: Arc<str>,
    handed: Option<EntryId>,
    view: ProgressView,
    store: Arc<dyn CheckpointStore>,
    retry: Duration,
) -> DrainEnd {
    if let Some(last) = handed {
        let mut progress = view.progress(&shard);
        loop {
            {
                let p = progress.borrow_and_update();
                if let Some(f) = &p.failure {
                    return (
                        shard.clone(),
                        Err(format!("the sink stopped delivering its records: {f}")),
                    );
                }
                if p.confirmed.is_some_and(|c| c.checkpoint >= last) {
                    break;
                }
            }
            if progress.changed().await.is_err() {
                return (shard.clone(), Err("the sink stopped".into()));
            }
        }
    }
    loop {
        let confirmed = view.checkpoints();
        match store.mark_drained(&shard, &confirmed).await {
            Ok(()) => return (shard.clone(), Ok(confirmed.get(&shard))),
            Err(e) => {
                warn!(%shard, error = %e, "could not mark the drained shard in the checkpoint store; retrying");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

impl Running {
    pub(super) fn new(
        status: Arc<Status>,
        store: Arc<dyn CheckpointStore>,
        view: ProgressView,
        remembered: StoredShards,
        retry: Duration,
    ) -> Running {
        Running {
            tasks: JoinSet::new(),
            shards: HashMap::new(),
            status,
            failed: Vec::new(),
            failed_shards: Default::default(),
            store,
            view,
            remembered,
            finishing: JoinSet::new(),
            finishing_names: Default::default(),
            orphans_reported: Default::default(),
            unreachable_since: HashMap::new(),
            drained: Vec::new(),
            retry,
        }
    }

    pub(super) fn start(
        &mut self,
        spec: ShardSpec,
        checkpoint: Option<EntryId>,
        shared: &Shared,
        stop: &CancellationToken,
    ) {
        let stats = self.status.register(&spec.name);
        let (tx, rx) = mpsc::channel(8);
        let token = stop.child_token();
        let name = spec.name.clone();
        // Stored with the shard's next checkpoint; a drained shard that starts again is no
        // longer drained.
        let membership = membership_of(&spec);
        self.store.remember(&name, membership.clone());
        if let Some(r) = self.remembered.get_mut(&name) {
            r.membership = Some(membership);
            r.drained = false;
        }
        self.status.not_draining(&name);
        // An orphaned checkpoint listed under [[shards]] (SIGHUP) is read again.
        if self.orphans_reported.remove(&name) {
            self.status
                .orphans
                .lock()
                .map(|mut o| o.retain(|x| **x != *name))
                .ok();
        }
        let fut = run_shard(
            spec.clone(),
            shared.clone(),
            checkpoint,
            stats,
            rx,
            token.clone(),
        );
        // Ok without the shutdown: the pipeline stopped because the shard was drained.
        self.tasks.spawn(async move {
            let r = fut.await;
            let by_itself = r.is_ok() && !token.is_cancelled();
            (name, r, by_itself)
        });
        self.shards.insert(
            spec.name.clone(),
            ShardRun {
                spec,
                control: tx,
                draining: false,
            },
        );
    }

    /// Starts a shard that is no longer in the topology, draining from the start.
    pub(super) fn start_draining(
        &mut self,
        spec: ShardSpec,
        checkpoint: EntryId,
        shared: &Shared,
        stop: &CancellationToken,
    ) {
        let name = spec.name.clone();
        let members = spec.members.clone();
        warn!(shard = %name, ?members, %checkpoint, "a shard with a checkpoint is not in the topology (removed while quorumtail was stopped): draining it with its remembered members; what a quorum of them holds after the checkpoint is emitted, then it stops");
        self.start(spec, Some(checkpoint), shared, stop);
        if let Some(run) = self.shards.get_mut(&name) {
            run.draining = true;
            // A fresh channel of 8: the first message always fits.
            let _ = run.control.try_send(Control::Drain);
        }
        self.status.set_draining(
            &name,
            Draining {
                reason: "removed while quorumtail was stopped",
                members,
                from: Some(checkpoint),
                state: DrainState::Reading,
            },
        );
    }

    /// No pipeline runs and no drained shard waits for delivery.
    pub(super) fn idle(&self) -> bool {
        self.tasks.is_empty() && self.finishing.is_empty()
    }

    /// Where a shard of the topology resumes: its checkpoint, unless it was drained as
    /// another replica set than the one it is now (a new shard that reuses the name).
    pub(super) fn resume_point(
        &self,
        spec: &ShardSpec,
        positions: &HashMap<Arc<str>, EntryId>,
    ) -> Option<EntryId> {
        let cp = positions.get(&spec.name).copied()?;
        let Some(r) = self.remembered.get(&spec.name) else {
            return Some(cp);
        };
        let was = r.membership.as_ref().and_then(|m| m.replica_set.as_deref());
        if r.drained
            && was.is_some()
            && spec.replica_set.is_some()
            && was != spec.replica_set.as_deref()
        {
            info!(shard = %spec.name, was = ?was, now = ?spec.replica_set, drained_at = %cp, "a drained shard is back as another replica set: reading it as a new shard from the beginning of its oplog");
            return None;
        }
        if r.drained {
            info!(shard = %spec.name, checkpoint = %cp, "a drained shard is back: resuming from its checkpoint");
        }
        Some(cp)
    }

    /// Shards with a checkpoint that are neither in the topology nor running: drained with
    /// their remembered members when `complete` (the topology is known to be whole), run
    /// normally otherwise (discovery did not answer; the next successful one decides).
    /// Without a remembered membership, an error says so and `/readyz` reports it.
    pub(super) fn adopt_removed(
        &mut self,
        complete: bool,
        shared: &Shared,
        stop: &CancellationToken,
    ) {
        let candidates: Vec<(Arc<str>, quorumtail_sink::StoredShard)> = self
            .remembered
            .iter()
            .filter(|(name, s)| {
                !s.drained
                    && !self.shards.contains_key(*name)
                    && !self.finishing_names.contains(*name)
                    && !self.failed_shards.contains(*name)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, s) in candidates {
            if s.snapshot.is_some() {
                if self.orphans_reported.insert(name.clone()) {
                    error!(shard = %name, "the shard left the topology before its initial snapshot finished: its documents are only partly emitted and its changes are not read. If it is still in the cluster, add it under [[shards]] (or fix [discovery]) and its snapshot continues; if it is gone for good, remove its entry from the checkpoint store");
                    self.status
                        .orphans
                        .lock()
                        .map(|mut o| o.push(name.to_string()))
                        .ok();
                }
                continue;
            }
            let Some(m) = &s.membership else {
                if self.orphans_reported.insert(name.clone()) {
                    error!(
                        shard = %name,
                        checkpoint = %s.checkpoint,
                        "a checkpoint exists for a shard that is not in the topology, and it was stored without the shard's members (by an older quorumtail), so it cannot be drained: changes the shard committed after the checkpoint are NOT emitted. If the shard was removed while quorumtail was stopped, add it under [[shards]] with its members until it is drained (its members are then stored with its checkpoint, and a later removal drains it by itself); if it is gone for good, remove its checkpoint"
                    );
                    self.status
                        .orphans
                        .lock()
                        .map(|mut o| o.push(name.to_string()))
                        .ok();
                }
                continue;
            };
            let spec = spec_from(&name, m);
            if complete {
                self.start_draining(spec, s.checkpoint, shared, stop);
            } else {
                warn!(shard = %name, members = ?m.members, checkpoint = %s.checkpoint, "discovery did not answer: running a shard with a checkpoint from its remembered members until discovery says whether it is still in the cluster");
                self.start(spec, Some(s.checkpoint), shared, stop);
            }
        }
    }

    /// Hands a snapshot request to the named running shards (every running, not draining
    /// shard when `names` is empty). Returns the shards that took it, or why none did.
    pub(super) fn request_snapshot(
        &self,
        names: &[String],
        request: crate::snapshot::Request,
    ) -> Result<Vec<String>, String> {
        let targets: Vec<(&Arc<str>, &ShardRun)> = if names.is_empty() {
            self.shards.iter().filter(|(_, r)| !r.draining).collect()
        } else {
            let mut out = Vec::new();
            for n in names {
                match self.shards.get_key_value(n.as_str()) {
                    Some((k, r)) if !r.draining => out.push((k, r)),
                    Some(_) => {
                        return Err(format!(
                        "shard {n} is being drained (removed from the cluster); nothing to copy"
                    ))
                    }
                    None => {
                        let known: Vec<&str> = self.shards.keys().map(|k| &**k).collect();
                        return Err(format!("no running shard {n}; running: {known:?}"));
                    }
                }
            }
            out
        };
        if targets.is_empty() {
            return Err("no shard is running".into());
        }
        let mut took = Vec::new();
        for (name, run) in targets {
            match run
                .control
                .try_send(Control::Snapshot(Box::new(request.clone())))
            {
                Ok(()) => took.push(name.to_string()),
                Err(e) => {
                    warn!(shard = %name, error = %e, "snapshot request not taken (the shard is busy or stopping); request it again")
                }
            }
        }
        if took.is_empty() {
            return Err("no shard took the request (busy or stopping); request it again".into());
        }
        info!(shards = ?took, namespaces = ?request.namespaces, "snapshot requested");
        Ok(took)
    }

    /// Says, loudly and again every minute, which draining shards cannot be read.
    pub(super) fn watch_drains(&mut self) {
        let now = std::time::Instant::now();
        let draining: Vec<(Arc<str>, Vec<String>)> = self
            .shards
            .iter()
            .filter(|(_, r)| r.draining)
            .map(|(k, r)| (k.clone(), r.spec.members.clone()))
            .collect();
        self.unreachable_since
            .retain(|k, _| draining.iter().any(|(d, _)| d == k));
        for (name, members) in draining {
            // A shard still starting is not known to be unreachable yet.
            let reachable = self.status.starting(&name)
                || self.status.shard(&name).is_none_or(|s| s.quorum_reachable);
            if reachable {
                if self.unreachable_since.remove(&name).is_some() {
                    info!(shard = %name, "the removed shard's members answer again: draining resumes");
                }
                self.status.drain_state(&name, DrainState::Reading);
                continue;
            }
            self.status.drain_state(&name, DrainState::Unreachable);
            let (since, logged) = self
                .unreachable_since
                .entry(name.clone())
                .or_insert((now, now));
            if *logged != now && now.duration_since(*logged) < UNREACHABLE_LOG_EVERY {
                continue;
            }
            *logged = now;
            let checkpoint = self
                .status
                .confirmed(&name)
                .or_else(|| self.remembered.get(&name).map(|r| r.checkpoint));
            let states: Vec<String> = self
                .status
                .nodes(&name)
                .into_iter()
                .map(|(addr, n)| format!("{addr} ({})", n.state))
                .collect();
            error!(
                shard = %name,
                ?members,
                member_states = ?states,
                checkpoint = ?checkpoint.map(|c| c.to_string()),
                unreachable_for = ?now.duration_since(*since),
                "a removed shard cannot be drained: fewer of its members than its quorum answer, so what it committed after its checkpoint cannot be read. quorumtail keeps retrying, stays not ready, and keeps the checkpoint. Choices: make a quorum of these members reachable again (restart them, or fix the network) until the shard is drained; or, if the shard's changes after the checkpoint are not needed (it held no data then, or they were copied elsewhere), stop quorumtail and remove the shard's checkpoint entry, accepting that they are never emitted"
            );
        }
    }

    /// A drained shard's delivery ended.
    pub(super) fn drain_finished(&mut self, done: Result<DrainEnd, tokio::task::JoinError>) {
        let Ok((name, r)) = done else {
            return; // aborted at shutdown: marked after the flush if delivered
        };
        self.finishing_names.remove(&name);
        match r {
            Ok(at) => {
                info!(shard = %name, checkpoint = ?at.map(|c| c.to_string()), "removed shard drained and delivered: marked drained in the checkpoint store (later starts neither drain nor report it)");
                if let Some(r) = self.remembered.get_mut(&name) {
                    r.drained = true;
                    if let Some(at) = at {
                        r.checkpoint = at;
                    }
                }
                self.status.drain_state(&name, DrainState::Drained);
                self.drained.push(name.to_string());
            }
            Err(e) => {
                error!(shard = %name, error = %e, "the removed shard was read to its end but its records were not all delivered: it is not marked drained, and the next start drains it again");
                self.failed_shards.insert(name.clone());
                self.failed.push(format!("shard {name}: drained, but {e}"));
            }
        }
    }

    /// At shutdown, after the sink's flush: drained shards whose delivery is now confirmed
    /// are marked (the others are drained again at the next start).
    pub(super) async fn mark_delivered_drains(
        &mut self,
        confirmed: &quorumtail_sink::ConfirmedCheckpoints,
    ) {
        let names: Vec<Arc<str>> = self.finishing_names.drain().collect();
        for name in names {
            let handed = self.status.register(&name).last_handed();
            let delivered = match handed {
                None => true,
                Some(last) => confirmed.get(&name).is_some_and(|c| c >= last),
            };
            if !delivered {
                warn!(shard = %name, "the removed shard was read to its end but not all its records were confirmed before the shutdown deadline: the next start drains it again");
                continue;
            }
            match self.store.mark_drained(&name, confirmed).await {
                Ok(()) => {
                    info!(shard = %name, "removed shard drained and delivered: marked drained in the checkpoint store");
                    self.status.drain_state(&name, DrainState::Drained);
                    self.drained.push(name.to_string());
                }
                Err(e) => {
                    error!(shard = %name, error = %e, "could not mark the drained shard in the checkpoint store: the next start drains it again")
                }
            }
        }
    }

    pub(super) fn finished(&mut self, done: Result<PipelineEnd, tokio::task::JoinError>) {
        match done {
            Ok((name, Ok(()), by_itself)) => {
                let run = self.shards.remove(&name);
                if by_itself && run.is_some_and(|r| r.draining) {
                    let handed = self.status.register(&name).last_handed();
                    self.status.drain_state(&name, DrainState::Delivering);
                    self.finishing_names.insert(name.clone());
                    self.finishing.spawn(finish_drain(
                        name,
                        handed,
                        self.view.clone(),
                        self.store.clone(),
                        self.retry,
                    ));
                }
            }
            Ok((name, Err(e), _)) => {
                error!(shard = %name, error = %e, "shard stopped with a definite error; the other shards keep running");
                self.failed.push(e.to_string());
                self.failed_shards.insert(name.clone());
                self.shards.remove(&name);
            }
            Err(e) => {
                error!(error = %e, "a shard pipeline task panicked");
                self.failed.push(format!("a shard pipeline panicked: {e}"));
            }
        }
    }

    /// Applies a discovered topology: new shards start (from their checkpoint, or from the
    /// beginning of their oplog: a new shard's oplog is short), shards gone from the list
    /// stop once drained, member changes go to the running pipeline.
    pub(super) fn reconcile(
        &mut self,
        found: Vec<ShardSpec>,
        stored: &HashMap<Arc<str>, EntryId>,
        shared: &Shared,
        stop: &CancellationToken,
        new_shard_start: crate::config::StartPosition,
    ) {
        let before: Vec<String> = self.shards.keys().map(|k| k.to_string()).collect();
        let mut changed = false;
        for s in &found {
            match self.shards.get_mut(&s.name) {
                None => {
                    if self.failed_shards.contains(&s.name) {
                        // Stopped by a definite error: it stays stopped until restart.
                        continue;
                    }
                    if self.finishing_names.contains(&s.name) {
                        // Drained and back: it starts again once marked (next discovery).
                        continue;
                    }
                    info!(shard = %s.name, members = ?s.members, start = ?new_shard_start, "shard added: starting its pipeline");
                    let mut shared = shared.clone();
                    let cp = self.resume_point(s, stored);
                    if cp.is_none() {
                        shared.start = new_shard_start;
                    }
                    self.start(s.clone(), cp, &shared, stop);
                    changed = true;
                }
                Some(run) if run.spec.members != s.members || run.spec.arbiters != s.arbiters => {
                    let _ = run.control.try_send(Control::Members(s.clone()));
                    run.spec = s.clone();
                    self.store.remember(&s.name, membership_of(s));
                    if let Some(r) = self.remembered.get_mut(&s.name) {
                        r.membership = Some(membership_of(s));
                    }
                    changed = true;
                }
                Some(_) => {}
            }
        }
        let gone: Vec<Arc<str>> = self
            .shards
            .keys()
            .filter(|k| !found.iter().any(|s| &s.name == *k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(run) = self.shards.get_mut(&name) {
                if !run.draining {
                    run.draining = true;
                    let _ = run.control.try_send(Control::Drain);
                    self.status.set_draining(
                        &name,
                        Draining {
                            reason: "removed from the topology",
                            members: run.spec.members.clone(),
                            from: self.status.confirmed(&name),
                            state: DrainState::Reading,
                        },
                    );
                    changed = true;
                }
            }
        }
        if changed {
            let after: Vec<String> = found.iter().map(|s| s.name.to_string()).collect();
            info!(?before, ?after, "topology changed");
        }
    }
}

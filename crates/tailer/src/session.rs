//! One connection's session: hello and the member checks, reading the replica set
//! configuration, verifying the resume point (see the crate docs, "The resume check"),
//! then streaming raw oplog batches to the merge while watching the commit point, the
//! resume target and the read mode. `tail` in the crate root reconnects around it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bson::doc;
use futures::StreamExt;
use mongodb::options::CursorType;
use mongodb::Client;
use quorumtail_oplog::{EntryId, OplogEntry};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::membership::{self, CommitReading, ReplicaSetConfig};
use crate::{same_entry, send, Batch, Ended, ReadMode, ResumeTarget, TailMsg, TailerConfig};

/// The projection of an entry's identity.
static IDENTITY: std::sync::LazyLock<bson::Document> =
    std::sync::LazyLock::new(|| doc! { "ts": 1, "t": 1, "h": 1 });

/// What a tailer has already said once (so that it is not repeated at every reconnect).
#[derive(Debug, Default)]
pub(crate) struct Notes {
    config_fallback: bool,
    config_unavailable: bool,
}

/// Reads the replica set's configuration from the member: `replSetGetConfig`, or
/// `replSetGetStatus` when that is not permitted. `None` (logged once) when neither is.
async fn read_config(
    cfg: &TailerConfig,
    admin: &mongodb::Database,
    version: Option<i64>,
    me: Option<String>,
    notes: &mut Notes,
) -> Result<Option<ReplicaSetConfig>, Ended> {
    let refused = |e: &mongodb::error::Error| match &*e.kind {
        mongodb::error::ErrorKind::Command(c) => Some(format!("{} ({})", c.code_name, c.code)),
        _ => None,
    };
    let first = match admin.run_command(doc! { "replSetGetConfig": 1 }).await {
        Ok(reply) => match membership::parse_get_config(&reply) {
            Ok(c) => return Ok(Some(ReplicaSetConfig { me, ..c })),
            Err(e) => e,
        },
        Err(e) => match refused(&e) {
            Some(why) => why,
            None => return Err(e.into()),
        },
    };
    let second = match admin.run_command(doc! { "replSetGetStatus": 1 }).await {
        Ok(reply) => match membership::parse_get_status(&reply, version.unwrap_or(0)) {
            Ok(c) => {
                if !notes.config_fallback {
                    notes.config_fallback = true;
                    warn!(shard = %cfg.shard, node = %cfg.node, replSetGetConfig = %first, "cannot read the replica set configuration, using replSetGetStatus: hidden and delayed members are known but not who votes, so non-voting members are counted as voters (MongoDB's commit point still guards every release). Fix: grant the clusterMonitor role (it has replSetGetConfig)");
                }
                return Ok(Some(ReplicaSetConfig { me, ..c }));
            }
            Err(e) => e,
        },
        Err(e) => match refused(&e) {
            Some(why) => why,
            None => return Err(e.into()),
        },
    };
    if !notes.config_unavailable {
        notes.config_unavailable = true;
        warn!(shard = %cfg.shard, node = %cfg.node, replSetGetConfig = %first, replSetGetStatus = %second, "cannot read the replica set's membership: members and votes come from the configuration only, and hidden members are not found. Fix: grant the clusterMonitor role");
    }
    Ok(None)
}

type HelloPoll = Pin<Box<dyn Future<Output = mongodb::error::Result<bson::Document>> + Send>>;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn session(
    cfg: &TailerConfig,
    client: &mut Option<Client>,
    target_rx: &mut watch::Receiver<Option<ResumeTarget>>,
    mode_rx: &mut watch::Receiver<ReadMode>,
    tx: &mpsc::Sender<TailMsg>,
    shutdown: &CancellationToken,
    progressed: &mut bool,
    notes: &mut Notes,
) -> Result<(), Ended> {
    if client.is_none() {
        let opts = cfg.access.client_options(&cfg.uri()).await?;
        *client = Some(Client::with_options(opts)?);
    }
    let client = client.as_ref().ok_or(Ended::CursorClosed)?;

    // Who is this member?
    let admin = client.database("admin");
    let hello = tokio::select! {
        _ = shutdown.cancelled() => return Err(Ended::Shutdown),
        r = admin.run_command(doc! { "hello": 1 }) => r?,
    };
    if hello.get_bool("arbiterOnly").unwrap_or(false) {
        return Err(Ended::Refused(
            "member is an arbiter and has no oplog; list it under `arbiters`, not `members`".into(),
        ));
    }
    if hello.get_str("msg").ok() == Some("isdbgrid") {
        return Err(Ended::Refused(
            "member is a mongos, not a shard member; list the shard's replica set members".into(),
        ));
    }
    match (hello.get_str("setName").ok(), &cfg.replica_set) {
        (None, _) => {
            return Err(Ended::Refused(
                "member is not part of a replica set (no setName in hello): it has no oplog to tail".into(),
            ))
        }
        (Some(actual), Some(expected)) if actual != expected => {
            return Err(Ended::Refused(format!(
                "member belongs to replica set {actual:?}, not {expected:?}: its oplog is another history; fix the shard's member list"
            )))
        }
        _ => {}
    }
    let me = hello.get_str("me").ok().map(str::to_owned);
    let mut set_version = membership::set_version(&hello);
    if let Some(c) = read_config(cfg, &admin, set_version, me.clone(), notes).await? {
        send(tx, shutdown, TailMsg::Config(Box::new(c))).await?;
    }
    let mut reading = membership::commit_reading(&hello);

    let oplog = client
        .database("local")
        .collection::<bson::Document>("oplog.rs");
    let primary = hello
        .get_bool("isWritablePrimary")
        .or_else(|_| hello.get_bool("ismaster"))
        .unwrap_or(false);
    let id_only = IDENTITY.clone();
    let oldest = oplog
        .find(doc! {})
        .sort(doc! { "$natural": 1 })
        .projection(id_only.clone())
        .limit(1)
        .batch()
        .await?;
    let oldest = first_id(oldest).await?;
    let newest = oplog
        .find(doc! {})
        .sort(doc! { "$natural": -1 })
        .projection(id_only)
        .limit(1)
        .batch()
        .await?;
    let newest = first_id(newest).await?;
    send(
        tx,
        shutdown,
        TailMsg::Probe {
            oldest,
            newest,
            primary,
            me: me.clone(),
        },
    )
    .await?;

    let target = loop {
        if let Some(t) = *target_rx.borrow_and_update() {
            break t;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Ended::Shutdown),
            r = target_rx.changed() => r.map_err(|_| Ended::ReceiverGone)?,
        }
    };

    if !target.exact {
        if let Some(o) = oldest {
            if o.ts > target.id.ts {
                send(
                    tx,
                    shutdown,
                    TailMsg::Lacks {
                        target,
                        first: Some(o),
                    },
                )
                .await?;
                return Err(Ended::Lacks);
            }
        }
    }

    let mut filter = if target.exact {
        doc! { "ts": { "$gte": bson::Timestamp::from(target.id.ts) } }
    } else {
        doc! { "ts": { "$gt": bson::Timestamp::from(target.id.ts) } }
    };
    if cfg.server_filter_from_migrate {
        filter.insert("fromMigrate", doc! { "$exists": false });
    }
    let mode = *mode_rx.borrow_and_update();
    let mut find = oplog
        .find(filter)
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(cfg.max_await)
        .batch_size(cfg.batch_size);
    if mode == ReadMode::Identity {
        find = find.projection(IDENTITY.clone());
    }
    let mut cursor = find.batch().await?;
    send(tx, shutdown, TailMsg::Started { target, mode }).await?;
    info!(shard = %cfg.shard, node = %cfg.node, from = %target.id, reading = mode.as_str(), "tailing");
    if let Some(r) = reading {
        send(tx, shutdown, TailMsg::CommitPoint(r)).await?;
    }

    // The member's commit point is read with hello on the side: often while entries this
    // stream sent may wait for it, rarely otherwise. The merge ties each reading to this
    // stream by the newest entry in it (see the merge crate docs), so the reading may come
    // from another connection of the pool.
    let mut last_sent: Option<EntryId> = None;
    let mut poll: Option<HelloPoll> = None;
    let mut next_poll = Instant::now() + cfg.commit_poll;
    let waiting = |last_sent: Option<EntryId>, reading: Option<CommitReading>| {
        last_sent.is_some_and(|s| reading.is_none_or(|r| r.committed.ts < s.ts))
    };
    let mut verified = !target.exact;
    // The reading known when the next read was sent: the initial hello preceded the find;
    // a getMore is sent only after the previous batch was handed over (the driver does not
    // read ahead), so the reading known then preceded it.
    let mut known_before_read = reading.map(read_bound);
    loop {
        if poll.is_none() && Instant::now() >= next_poll {
            let db = admin.clone();
            poll = Some(Box::pin(async move {
                db.run_command(doc! { "hello": 1 }).await
            }));
        }
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Err(Ended::Shutdown),
            r = mode_rx.changed() => {
                r.map_err(|_| Ended::ReceiverGone)?;
                if *mode_rx.borrow_and_update() != mode {
                    return Err(Ended::ModeChanged);
                }
                continue;
            }
            r = async { poll.as_mut().expect("guarded").await }, if poll.is_some() => {
                poll = None;
                let hello = r?;
                let now = membership::commit_reading(&hello);
                if now.is_some() && now != reading {
                    reading = now;
                    if let Some(r) = now {
                        send(tx, shutdown, TailMsg::CommitPoint(r)).await?;
                    }
                }
                let version = membership::set_version(&hello);
                if version != set_version {
                    set_version = version;
                    debug!(shard = %cfg.shard, node = %cfg.node, set_version = ?version, "replica set configuration changed: reading it again");
                    if let Some(c) = read_config(cfg, &admin, set_version, me.clone(), notes).await? {
                        send(tx, shutdown, TailMsg::Config(Box::new(c))).await?;
                    }
                }
                next_poll = Instant::now()
                    + if waiting(last_sent, reading) { cfg.commit_poll } else { cfg.idle_poll };
                continue;
            }
            _ = tokio::time::sleep_until(next_poll), if poll.is_none() => continue,
            n = cursor.next() => n,
        };
        let batch = match next {
            None => return Err(Ended::CursorClosed),
            Some(r) => Batch {
                reply: Arc::new(r?),
                read_after: known_before_read,
            },
        };
        known_before_read = reading.map(read_bound);
        let first = {
            let mut entries = batch
                .entries()
                .map_err(|e| Ended::Refused(format!("malformed reply: {e}")))?;
            match entries.next() {
                None => None,
                Some(Err(e)) => return Err(Ended::Refused(format!("malformed oplog entry: {e}"))),
                Some(Ok(doc)) => {
                    Some(OplogEntry::parse_id(doc).map_err(|e| Ended::Refused(e.to_string()))?)
                }
            }
        };
        let Some(first) = first else {
            send(tx, shutdown, TailMsg::Idle).await?;
            continue;
        };
        if !verified {
            if !same_entry(first, target.id) {
                send(
                    tx,
                    shutdown,
                    TailMsg::Lacks {
                        target,
                        first: Some(first),
                    },
                )
                .await?;
                return Err(Ended::Lacks);
            }
            verified = true;
        }
        let last = {
            let entries = batch
                .entries()
                .map_err(|e| Ended::Refused(format!("malformed reply: {e}")))?;
            match entries.last() {
                Some(Ok(doc)) => OplogEntry::parse_id(doc).ok(),
                _ => None,
            }
        };
        send(tx, shutdown, TailMsg::Batch(batch)).await?;
        *progressed = true;
        if last.is_some() {
            last_sent = last;
            if waiting(last_sent, reading) {
                next_poll = next_poll.min(Instant::now() + cfg.commit_poll);
            }
        }
    }
}

/// What a reading proves committed on the member: its commit point, capped at its newest
/// entry (a member reporting more than it holds is not believed beyond that).
fn read_bound(r: CommitReading) -> EntryId {
    if r.committed.ts <= r.last_applied.ts {
        r.committed
    } else {
        r.last_applied
    }
}

async fn first_id(
    mut c: mongodb::raw_batch_cursor::RawBatchCursor,
) -> Result<Option<EntryId>, Ended> {
    while let Some(batch) = c.next().await {
        let batch = Batch {
            reply: Arc::new(batch?),
            read_after: None,
        };
        let mut entries = batch.entries().map_err(Ended::Refused)?;
        if let Some(first) = entries.next() {
            let first = first.map_err(Ended::Refused)?;
            return OplogEntry::parse_id(first)
                .map(Some)
                .map_err(|e| Ended::Refused(e.to_string()));
        }
    }
    Ok(None)
}

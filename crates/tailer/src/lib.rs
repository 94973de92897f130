//! One replica-set member's oplog tailer.
//!
//! ```text
//!            resume target (watch, from the shard's merge)
//!                      │
//!   connect ─► hello ─► probe ─► verify resume point ─► tail raw batches ─► TailMsg channel
//!      ▲                                                     │ error / killed cursor / rollback
//!      └──────────────── backoff with jitter ◄───────────────┘
//! ```
//!
//! A tailer reads and reports; it never decides what is committed. Every (re)connection
//! starts from the shard's current resume target (the merge watermark), not from the
//! tailer's own last entry: after a rollback that entry may no longer exist, and the new
//! branch may even reuse its timestamps with a new term.
//!
//! # The resume check
//!
//! mongod answers `find({ts: {$gte: X}})` from the oldest surviving entry, without any
//! error, when `X` has fallen off the capped oplog. So a tailer never trusts the query:
//!
//! * an exact target (a real entry: a checkpoint or the watermark) must be the FIRST entry
//!   the cursor returns. A later first entry means this member lacks it
//!   ([`TailMsg::Lacks`]); the shard's merge judges whether a quorum still holds it.
//! * a timestamp-only target (`[start] position = "<secs>:<inc>"`) requires the member's
//!   oldest entry to be at or before it.
//!
//! An empty first batch is not a failure: the member is behind and the target will be its
//! first entry once it replicates it.
//!
//! # Errors
//!
//! Connection loss, a killed cursor (rollback, restart), `CappedPositionLost` (136),
//! not-primary and the like are transient here: the tailer logs the transition once,
//! reports [`TailMsg::Down`], backs off (exponential, with jitter) and reconnects from the
//! then-current target. What is definite for the shard (too few members hold the resume
//! point) is decided by the merge, which sees every member. A member that claims another
//! replica set name, or is an arbiter, is refused ([`TailMsg::Refused`]): its oplog is not
//! this shard's history. So is a member that rejects the credentials (AuthenticationFailed,
//! 18) or the user's privileges on the oplog (Unauthorized, 13): the operator must fix the
//! config or the roles, so the tailer says so once, naming the user and the member, and
//! retries only at the longest backoff. A TLS handshake that fails on the member's
//! certificate (unknown issuer, another host name) or that the member refuses (no client
//! certificate) is refused the same way ([`access::tls_refusal`]).
//!
//! # Modules
//!
//! This file holds the types, the reconnect loop with its backoff and the error
//! classification; one connection's session (hello, resume check, streaming batches) is
//! in `session.rs`; [`access`] is how a member is reached (connection options, credentials,
//! TLS) and [`membership`] parses what a member says about its replica set (configuration,
//! commit point).

pub mod access;
pub mod membership;
mod session;

use std::sync::Arc;
use std::time::Duration;

use bson::{RawBsonRef, RawDocument};
use mongodb::raw_batch_cursor::RawBatch;
use mongodb::Client;
use quorumtail_oplog::{EntryId, Timestamp};
use tokio::sync::{mpsc, watch};

pub use access::{tls_refusal, MongoAccess, TlsFiles};
pub use membership::{CommitReading, ConfigSource, MemberConfig, ReplicaSetConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use session::{session, Notes};

/// Where a tailer starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ResumeTarget {
    /// The entry (or timestamp) to resume at.
    pub id: EntryId,
    /// `true`: the member must hold this very entry (it is the first one returned).
    /// `false`: only a timestamp; the member's oldest entry must be at or before it.
    pub exact: bool,
}

/// What a tailer reads of each entry.
///
/// The merge needs only identities from most members: the pipeline reads whole entries
/// from one member and identities (`{ts, t, h}`, about 30 bytes) from the others, so
/// reading every member of a replica set costs little more than reading one. A change of
/// mode restarts the stream from the current resume target (a new [`TailMsg::Started`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum ReadMode {
    /// Whole entries.
    #[default]
    Whole,
    /// Only the fields of the entry's identity: `ts`, `t`, `h`.
    Identity,
}

impl ReadMode {
    /// For status pages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::Whole => "whole entries",
            ReadMode::Identity => "identities",
        }
    }
}

/// A batch of raw oplog entries, in the member's oplog order.
#[derive(Clone, Debug)]
pub struct Batch {
    reply: Arc<RawBatch>,
    read_after: Option<EntryId>,
}

impl Batch {
    /// A commit point the member reported before this batch was read from its oplog (the
    /// reply to a hello that arrived before the find or getMore was sent): entries of the
    /// batch at or below it are committed (see the merge's `set_read_commit`).
    pub fn read_after_commit_point(&self) -> Option<EntryId> {
        self.read_after
    }

    /// The entries. Invalid BSON is reported per entry.
    ///
    /// # Errors
    /// When the reply has no `firstBatch`/`nextBatch` array.
    pub fn entries(&self) -> Result<impl Iterator<Item = Result<&RawDocument, String>>, String> {
        let arr = self.reply.doc_slices().map_err(|e| e.to_string())?;
        Ok(arr.into_iter().map(|v| match v {
            Ok(RawBsonRef::Document(d)) => Ok(d),
            Ok(other) => Err(format!(
                "oplog batch holds a {:?} instead of a document",
                other.element_type()
            )),
            Err(e) => Err(e.to_string()),
        }))
    }

    /// The reply buffer, to keep entries alive without copying them.
    pub fn shared(&self) -> Arc<RawBatch> {
        Arc::clone(&self.reply)
    }
}

/// What a tailer tells its shard's merge. Messages of one tailer arrive in order.
#[derive(Clone, Debug)]
pub enum TailMsg {
    /// The member's oldest and newest entries (sent after each connect, before tailing):
    /// the merge uses them to pick a start position when there is no checkpoint.
    Probe {
        /// Oldest entry in the member's oplog.
        oldest: Option<EntryId>,
        /// Newest entry.
        newest: Option<EntryId>,
        /// Whether the member said it is the writable primary.
        primary: bool,
        /// What the member calls itself (hello `me`): the name the replica set
        /// configuration uses for it, which may differ from the address dialled.
        me: Option<String>,
    },
    /// A new stream starts at `target`: forget what this member reported before.
    Started {
        /// Where it starts.
        target: ResumeTarget,
        /// What its batches hold.
        mode: ReadMode,
    },
    /// Entries following the previous ones of this stream.
    Batch(Batch),
    /// An empty getMore: the member is alive and has nothing new.
    Idle,
    /// The member does not hold the resume target; `first` is its oldest entry at or
    /// after the target (its oplog window starts later), if any.
    Lacks {
        /// The target it lacks.
        target: ResumeTarget,
        /// Its first entry at or after the target.
        first: Option<EntryId>,
    },
    /// The stream ended; the tailer will reconnect.
    Down {
        /// Why, for logs and status.
        reason: String,
    },
    /// The member cannot serve this shard (another replica set, an arbiter). The tailer
    /// keeps checking at the longest backoff in case the topology is being fixed.
    Refused {
        /// Why.
        reason: String,
    },
    /// The member's view of the commit point with its newest entry (one hello reply). Sent
    /// after `Started`, and again whenever it changes.
    CommitPoint(CommitReading),
    /// The replica set's configuration as this member reports it (after each connect, and
    /// when hello's `setVersion` changes).
    Config(Box<ReplicaSetConfig>),
}

/// Settings of one tailer.
#[derive(Clone, Debug)]
pub struct TailerConfig {
    /// The shard (for logs).
    pub shard: Arc<str>,
    /// The replica set name the member must report in `hello`, if known.
    pub replica_set: Option<String>,
    /// `host:port`.
    pub node: String,
    /// Connection-string options, credentials and TLS.
    pub access: MongoAccess,
    /// Entries per getMore.
    pub batch_size: u32,
    /// How long a getMore waits for new entries.
    pub max_await: Duration,
    /// Drop `fromMigrate` entries on the server (the same filter on every member).
    pub server_filter_from_migrate: bool,
    /// Smallest reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Read the member's commit point (hello) while entries it sent may wait for it, this
    /// often.
    pub commit_poll: Duration,
    /// Read it (and the config version) this often otherwise.
    pub idle_poll: Duration,
}

impl TailerConfig {
    /// Defaults for a member.
    pub fn new(shard: Arc<str>, node: impl Into<String>) -> Self {
        TailerConfig {
            shard,
            replica_set: None,
            node: node.into(),
            access: MongoAccess::default(),
            batch_size: 1000,
            max_await: Duration::from_secs(1),
            server_filter_from_migrate: false,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            commit_poll: Duration::from_millis(10),
            idle_poll: Duration::from_secs(1),
        }
    }

    fn uri(&self) -> String {
        format!("mongodb://{}/?directConnection=true&appName=quorumtail&serverSelectionTimeoutMS=5000&connectTimeoutMS=5000", self.node)
    }
}

/// Why one connection attempt ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("{0}")]
    Driver(#[from] mongodb::error::Error),
    #[error("cursor closed by the server")]
    CursorClosed,
    #[error("member lacks the resume point")]
    Lacks,
    #[error("{0}")]
    Refused(String),
    #[error("shutting down")]
    Shutdown,
    #[error("merge stopped")]
    ReceiverGone,
    #[error("read mode changed")]
    ModeChanged,
}

/// Runs a tailer until `shutdown` is cancelled or the receiver is dropped.
/// `mode` says what to read; a change restarts the stream from the resume target.
///
/// The driver client is shut down before this returns (see [`close`]): await the task
/// before the runtime goes away.
pub async fn run(
    cfg: TailerConfig,
    target: watch::Receiver<Option<ResumeTarget>>,
    mode: watch::Receiver<ReadMode>,
    tx: mpsc::Sender<TailMsg>,
    shutdown: CancellationToken,
) {
    let mut client: Option<Client> = None;
    tail(&cfg, &mut client, target, mode, tx, shutdown).await;
    if let Some(c) = client {
        close(c).await;
    }
}

/// Shuts a driver client down: its cursors are killed, its sessions ended and its
/// background tasks stopped. A client merely dropped does that cleanup in tasks of its
/// own, which the runtime may cancel while they run when the process exits (the driver
/// then panics). The graceful part waits at most a second (a member that stopped
/// answering cannot take a cursor's kill); the rest skips waiting for the server.
pub async fn close(client: Client) {
    let graceful = client.clone().shutdown();
    if tokio::time::timeout(Duration::from_secs(1), graceful)
        .await
        .is_err()
    {
        let immediate = client.shutdown().immediate(true);
        if tokio::time::timeout(Duration::from_secs(1), immediate)
            .await
            .is_err()
        {
            debug!("driver client shutdown timed out");
        }
    }
}

async fn tail(
    cfg: &TailerConfig,
    client: &mut Option<Client>,
    mut target: watch::Receiver<Option<ResumeTarget>>,
    mut mode: watch::Receiver<ReadMode>,
    tx: mpsc::Sender<TailMsg>,
    shutdown: CancellationToken,
) {
    let mut backoff = cfg.backoff_min;
    let mut last_reason = String::new();
    let mut notes = Notes::default();
    loop {
        let mut progressed = false;
        // Cancelled as a whole at shutdown: a member that stopped answering must not hold
        // the stop in a driver call that has no deadline.
        let result = tokio::select! {
            _ = shutdown.cancelled() => Err(Ended::Shutdown),
            r = session(
                cfg,
                client,
                &mut target,
                &mut mode,
                &tx,
                &shutdown,
                &mut progressed,
                &mut notes,
            ) => r,
        };
        if progressed {
            // The member served entries: the next interruption starts a fresh backoff.
            backoff = cfg.backoff_min;
            last_reason.clear();
        }
        let (reason, msg, delay) = match result {
            Ok(()) | Err(Ended::Shutdown) | Err(Ended::ReceiverGone) => return,
            Err(Ended::ModeChanged) => {
                debug!(shard = %cfg.shard, node = %cfg.node, mode = mode.borrow().as_str(), "read mode changed: restarting the stream");
                continue;
            }
            Err(Ended::Lacks) => (
                "lacks the resume point".to_owned(),
                None,
                cfg.backoff_max.min(Duration::from_secs(2)),
            ),
            Err(Ended::Refused(r)) => (
                r.clone(),
                Some(TailMsg::Refused { reason: r }),
                cfg.backoff_max,
            ),
            Err(e @ Ended::CursorClosed) => (
                e.to_string(),
                Some(TailMsg::Down {
                    reason: e.to_string(),
                }),
                cfg.backoff_min,
            ),
            Err(Ended::Driver(e)) if refusal(cfg, &e).is_some() => {
                // Definite until an operator fixes credentials, roles or certificates: one
                // message, and retries only at the longest backoff (each retry is one
                // handshake, not a storm). A fresh client then, so nothing of the refused
                // handshake lingers.
                let reason = refusal(cfg, &e).unwrap_or_default();
                if let Some(c) = client.take() {
                    close(c).await;
                }
                (
                    reason.clone(),
                    Some(TailMsg::Refused { reason }),
                    cfg.backoff_max,
                )
            }
            Err(Ended::Driver(e)) => {
                let reason = describe(&e);
                if is_connection_error(&e) {
                    // A fresh client after the member was down: pools of a dead client can
                    // linger on a closed port.
                    if let Some(c) = client.take() {
                        close(c).await;
                    }
                }
                (reason.clone(), Some(TailMsg::Down { reason }), backoff)
            }
        };
        if reason != last_reason {
            warn!(shard = %cfg.shard, node = %cfg.node, %reason, "tailer interrupted, reconnecting");
            last_reason = reason;
        } else {
            debug!(shard = %cfg.shard, node = %cfg.node, %reason, "tailer still interrupted");
        }
        if let Some(m) = msg {
            if send(&tx, &shutdown, m).await.is_err() {
                return;
            }
        }
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        let sleep = delay.mul_f64(jitter);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

fn is_connection_error(e: &mongodb::error::Error) -> bool {
    matches!(
        *e.kind,
        mongodb::error::ErrorKind::Io(_)
            | mongodb::error::ErrorKind::ServerSelection { .. }
            | mongodb::error::ErrorKind::ConnectionPoolCleared { .. }
    )
}

/// A failure the operator must fix (credentials, privileges, TLS certificates), as the
/// message that says how; `None` for failures that may pass by themselves.
fn refusal(cfg: &TailerConfig, e: &mongodb::error::Error) -> Option<String> {
    auth_refusal(cfg, e).or_else(|| tls_refusal(&cfg.access, &cfg.node, e))
}

/// The refusal an authentication failure (AuthenticationFailed 18, which the driver
/// reports as `ErrorKind::Authentication` when it happens in the connection handshake) or a
/// missing privilege (Unauthorized 13) amounts to: it names the user, the member and the
/// fix. `None` for every other error.
fn auth_refusal(cfg: &TailerConfig, e: &mongodb::error::Error) -> Option<String> {
    use mongodb::error::ErrorKind;
    let who = match &cfg.access.username {
        Some(u) => format!("user {u:?}"),
        None => "no user ([mongo] username is not set)".to_owned(),
    };
    let node = &cfg.node;
    let failed = |detail: &str| {
        format!(
            "authentication failed for {who} on {node} ({detail}); fix: check [mongo] username and password or password_file, and the authSource in [mongo] uri_options (default admin)"
        )
    };
    match &*e.kind {
        ErrorKind::Authentication { message, .. } => Some(failed(message)),
        ErrorKind::Command(c) if c.code == 18 => Some(failed(&format!(
            "{} ({}): {}",
            c.code_name, c.code, c.message
        ))),
        ErrorKind::Command(c) if c.code == 13 => Some(format!(
            "{who} may not read the oplog on {node}: {} ({}): {}; fix: grant the role read on the local database (the oplog), and clusterMonitor for replSetGetConfig",
            c.code_name, c.code, c.message
        )),
        _ => None,
    }
}

fn describe(e: &mongodb::error::Error) -> String {
    match &*e.kind {
        mongodb::error::ErrorKind::Command(c) if c.code == 136 => {
            format!(
                "CappedPositionLost: the oplog rolled over past this tailer's position ({})",
                c.message
            )
        }
        mongodb::error::ErrorKind::Command(c) => {
            format!("{} ({}): {}", c.code_name, c.code, c.message)
        }
        mongodb::error::ErrorKind::ServerSelection { .. } => "unreachable".to_owned(),
        mongodb::error::ErrorKind::Io(io) => format!("connection lost: {io}"),
        _ => e.to_string(),
    }
}

async fn send(
    tx: &mpsc::Sender<TailMsg>,
    shutdown: &CancellationToken,
    msg: TailMsg,
) -> Result<(), Ended> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(Ended::Shutdown),
        r = tx.send(msg) => r.map_err(|_| Ended::ReceiverGone),
    }
}

/// Whether `found` is the entry `target` names (same ts; same term and hash where the
/// target has them).
pub fn same_entry(found: EntryId, target: EntryId) -> bool {
    found.ts == target.ts
        && (target.term.is_none() || found.term == target.term)
        && (target.hash.is_none() || found.hash == target.hash)
}

/// The timestamp just below `ts` (for "start at this entry, inclusive").
pub fn pred(ts: Timestamp) -> Timestamp {
    if ts.increment > 0 {
        Timestamp::new(ts.time, ts.increment - 1)
    } else {
        Timestamp::new(ts.time.saturating_sub(1), u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn same_entry_compares_the_parts_the_target_has() {
        let ts = Timestamp::new(100, 2);
        let t3 = EntryId::new(ts, 3);
        assert!(same_entry(t3, t3));
        // After a rollback the same ts exists with another term: not the resume entry.
        assert!(!same_entry(EntryId::new(ts, 4), t3));
        assert!(!same_entry(EntryId::new(Timestamp::new(100, 3), 3), t3));
        // A timestamp-only target matches any entry at that ts.
        assert!(same_entry(t3, EntryId::at(ts)));
        let legacy = EntryId {
            ts,
            term: None,
            hash: Some(-7),
        };
        assert!(same_entry(legacy, legacy));
        assert!(!same_entry(
            EntryId {
                hash: Some(8),
                ..legacy
            },
            legacy
        ));
    }

    #[test]
    fn pred_is_the_timestamp_just_below() {
        assert_eq!(pred(Timestamp::new(100, 2)), Timestamp::new(100, 1));
        assert_eq!(pred(Timestamp::new(100, 0)), Timestamp::new(99, u32::MAX));
        assert!(pred(Timestamp::new(100, 0)) < Timestamp::new(100, 0));
    }

    #[tokio::test]
    async fn connection_is_direct_and_carries_user_options() {
        let mut c = TailerConfig::new("s".into(), "h:27018");
        assert!(c
            .uri()
            .starts_with("mongodb://h:27018/?directConnection=true"));
        c.access.uri_options = "maxPoolSize=3".into();
        let o = c.access.client_options(&c.uri()).await.unwrap();
        assert_eq!(o.direct_connection, Some(true));
        assert_eq!(o.max_pool_size, Some(3));
    }

    fn command_error(code: i32, name: &str, msg: &str) -> mongodb::error::Error {
        let e: mongodb::error::CommandError =
            bson::deserialize_from_document(doc! {"code": code, "codeName": name, "errmsg": msg})
                .unwrap();
        mongodb::error::ErrorKind::Command(e).into()
    }

    /// A failed authentication and a missing privilege are
    /// refusals naming the user, the member and the fix; other errors are not.
    #[test]
    fn auth_errors_are_refusals_naming_user_member_and_fix() {
        let mut c = TailerConfig::new("s".into(), "h:27018");
        c.access.username = Some("tail".into());
        // The handshake's ErrorKind::Authentication cannot be built outside the driver;
        // tests/e2e/auth.rs meets it through a real handshake.
        let e = command_error(18, "AuthenticationFailed", "Authentication failed.");
        let r = auth_refusal(&c, &e).expect("a refusal");
        assert!(r.contains("user \"tail\"") && r.contains("h:27018"), "{r}");
        assert!(r.contains("password_file"), "{r}");
        let e = command_error(
            13,
            "Unauthorized",
            "not authorized on local to execute command",
        );
        let r = auth_refusal(&c, &e).expect("a refusal");
        assert!(
            r.contains("user \"tail\" may not read the oplog on h:27018"),
            "{r}"
        );
        assert!(
            r.contains("read on the local database") && r.contains("clusterMonitor"),
            "{r}"
        );
        c.access.username = None;
        let r = auth_refusal(&c, &e).expect("a refusal");
        assert!(r.contains("[mongo] username is not set"), "{r}");
        assert!(auth_refusal(&c, &command_error(136, "CappedPositionLost", "gone")).is_none());
    }
}

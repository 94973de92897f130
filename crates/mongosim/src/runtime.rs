//! The running simulation's shared state and its processes: the [`World`] under its lock,
//! change notifications, and the process table (one TCP listener per simulated process).
//!
//! This module sits below the command handlers and the wire loop and depends on neither:
//! the operations that start and stop processes ([`crate::ops`]: kill, restart, add a shard,
//! add members by reconfig) bind ports and start listeners through it, while what runs on
//! each accepted connection is a [`ConnectionHandler`] the wire layer
//! ([`crate::server::serve`]) installs when the simulation is built. Commands can thus
//! start processes without the command layer and the wire layer importing each other
//! (the call goes server → commands → ops → runtime → the installed handler).
//!
//! Killing a process cancels its token: the listener closes and every connection drops, as
//! when mongod dies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, ConnAuthCell};
use crate::error::SimError;
use crate::world::World;

/// Serves one accepted connection: `(shared, process address, stream, peer)`. A plain
/// function pointer (no captured state) so that [`Shared`] stays `Debug` and the process
/// table needs no knowledge of the wire protocol.
pub(crate) type ConnectionHandler =
    fn(Arc<Shared>, SocketAddr, TcpStream, SocketAddr) -> BoxFuture<'static, ()>;

/// A running listener.
#[derive(Debug)]
pub(crate) struct ProcHandle {
    pub token: CancellationToken,
    pub task: JoinHandle<()>,
}

/// State shared by every task of one simulation.
#[derive(Debug)]
pub(crate) struct Shared {
    pub world: Mutex<World>,
    pub changes: watch::Sender<u64>,
    pub procs: Mutex<HashMap<SocketAddr, ProcHandle>>,
    pub shutdown: CancellationToken,
    pub next_request_id: AtomicI32,
    /// Users and authentication counters.
    pub auth: Auth,
    /// `requireTLS`: every connection starts with a TLS handshake.
    pub tls: Option<crate::tls::Acceptor>,
    /// What each listener runs on an accepted connection.
    connection_handler: ConnectionHandler,
    /// A namespace whose reads on members wait while it is set, and whether only its
    /// `getMore`s wait (see `Cluster::hold_reads`).
    pub read_hold: watch::Sender<Option<(String, bool)>>,
}

impl Shared {
    pub fn new(
        world: World,
        auth: Auth,
        tls: Option<crate::tls::Acceptor>,
        connection_handler: ConnectionHandler,
    ) -> Arc<Shared> {
        let (changes, _) = watch::channel(0);
        let (read_hold, _) = watch::channel(None);
        Arc::new(Shared {
            read_hold,
            world: Mutex::new(world),
            changes,
            procs: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            next_request_id: AtomicI32::new(1),
            auth,
            tls,
            connection_handler,
        })
    }

    /// Locks the world, recovering from a poisoned lock (a panicking handler must not take
    /// the whole simulation down).
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiting getMore.
    pub fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn procs(&self) -> MutexGuard<'_, HashMap<SocketAddr, ProcHandle>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts serving `listener` as the process at `addr`.
    pub fn spawn_listener(self: &Arc<Self>, listener: TcpListener, addr: SocketAddr) {
        let token = self.shutdown.child_token();
        let shared = self.clone();
        let t = token.clone();
        let handler = self.connection_handler;
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = t.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let shared = shared.clone();
                            let t = t.clone();
                            tokio::spawn(async move {
                                tokio::select! {
                                    _ = t.cancelled() => {}
                                    _ = handler(shared, addr, stream, peer) => {}
                                }
                            });
                        }
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "accept failed");
                        }
                    }
                }
            }
        });
        self.procs().insert(addr, ProcHandle { token, task });
    }

    /// Stops the listener at `addr` and drops its connections; waits until the port is free.
    pub async fn stop_listener(&self, addr: SocketAddr) {
        let handle = self.procs().remove(&addr);
        if let Some(h) = handle {
            h.token.cancel();
            let _ = h.task.await;
        }
    }

    /// Stops every listener.
    pub async fn stop_all(&self) {
        self.shutdown.cancel();
        let handles: Vec<ProcHandle> = self.procs().drain().map(|(_, h)| h).collect();
        for h in handles {
            let _ = h.task.await;
        }
    }

    /// The next `requestID` of a reply.
    pub fn request_id(&self) -> i32 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Per-connection state handlers may need.
#[derive(Debug, Clone)]
pub(crate) struct ConnCtx {
    pub connection_id: i64,
    pub peer: SocketAddr,
    /// Set by `mongosimControl: "killNode"` aimed at this very process: the kill happens
    /// after the reply is written.
    pub kill_after_reply: Arc<Mutex<Option<SocketAddr>>>,
    /// Who authenticated on this connection, and the SCRAM conversation in progress.
    pub auth: ConnAuthCell,
}

/// Binds `127.0.0.1:port` (0 = ephemeral) for a process to listen on.
pub(crate) async fn bind(port: u16) -> Result<(TcpListener, SocketAddr), SimError> {
    if port == 0 {
        if let Some(found) = bind_below_ephemeral().await {
            return Ok(found);
        }
    }
    let sock = SocketAddr::from(([127, 0, 0, 1], port));
    let addr = sock.to_string();
    // A just-killed listener may take a moment to release the port: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(sock).await {
            Ok(l) => {
                let a = l.local_addr().map_err(|source| SimError::Bind {
                    addr: addr.clone(),
                    source,
                })?;
                return Ok((l, a));
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && port != 0
                    && Instant::now() < deadline =>
            {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => return Err(SimError::Bind { addr, source }),
        }
    }
}

/// Binds `count` consecutive ports from `base + offset` (all ephemeral when `base` is 0).
/// Ports handed out when no port is asked for lie below Linux's ephemeral range (32768 on):
/// a port a killed process frees is then never given to some outgoing connection before
/// the process is restarted on it (which made restarts fail with AddrInUse under load).
const OWN_PORTS: std::ops::Range<u16> = 20_000..32_700;

/// Where this process's next port search starts; spread by process id so that test
/// processes running side by side search different parts of the range.
static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);

/// Binds the next free port of [`OWN_PORTS`]; `None` when none is free.
async fn bind_below_ephemeral() -> Option<(TcpListener, SocketAddr)> {
    use std::sync::atomic::Ordering::Relaxed;
    let span = u32::from(OWN_PORTS.end - OWN_PORTS.start);
    let _ = NEXT_PORT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(2_654_435_761) % span,
        Relaxed,
        Relaxed,
    );
    for _ in 0..span {
        let i = NEXT_PORT.fetch_add(1, Relaxed) % span;
        let port = OWN_PORTS.start + u16::try_from(i).ok()?;
        if let Ok(l) = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
            let a = l.local_addr().ok()?;
            return Some((l, a));
        }
    }
    None
}

pub(crate) async fn bind_many(
    base: u16,
    offset: usize,
    count: usize,
) -> Result<Vec<(TcpListener, SocketAddr)>, SimError> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let port = if base == 0 {
            0
        } else {
            u16::try_from(usize::from(base) + offset + i)
                .map_err(|_| SimError::Spec(format!("port {base}+{} overflows", offset + i)))?
        };
        out.push(bind(port).await?);
    }
    Ok(out)
}

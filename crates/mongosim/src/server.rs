//! The network side: one TCP listener per simulated process, one task per connection.
//!
//! ```text
//!   accept --> conn task: read header --check_header--> read frame --parse_frame-->
//!              commands::handle (locks World briefly, may await oplog changes) --> reply
//! ```
//!
//! Killing a process cancels its token: the listener closes and every connection drops, as
//! when mongod dies. Malformed or oversized input closes only that connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, ConnAuthCell};
use crate::codec::{self, Request, HEADER_LEN};
use crate::commands;
use crate::world::World;

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
}

impl Shared {
    pub fn new(world: World, auth: Auth, tls: Option<crate::tls::Acceptor>) -> Arc<Shared> {
        let (changes, _) = watch::channel(0);
        Arc::new(Shared {
            world: Mutex::new(world),
            changes,
            procs: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            next_request_id: AtomicI32::new(1),
            auth,
            tls,
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
                                    _ = accept_connection(shared, addr, stream, peer) => {}
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

    fn request_id(&self) -> i32 {
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

/// Runs the TLS handshake when the simulation requires TLS, then serves the connection.
async fn accept_connection(
    shared: Arc<Shared>,
    addr: SocketAddr,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    match shared.tls.clone() {
        None => serve_connection(shared, addr, stream, peer).await,
        Some(acceptor) => match acceptor.0.accept(stream).await {
            Ok(tls) => serve_connection(shared, addr, tls, peer).await,
            Err(e) => {
                tracing::warn!(%addr, %peer, error = %e, "closing connection: TLS handshake failed");
            }
        },
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    addr: SocketAddr,
    mut stream: S,
    peer: SocketAddr,
) {
    let connection_id = {
        let mut w = shared.world();
        w.next_connection_id += 1;
        w.next_connection_id
    };
    let ctx = ConnCtx {
        connection_id,
        peer,
        kill_after_reply: Arc::new(Mutex::new(None)),
        auth: Default::default(),
    };
    loop {
        let mut head = [0u8; HEADER_LEN];
        if stream.read_exact(&mut head).await.is_err() {
            return;
        }
        let header = match codec::check_header(&head) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(%addr, %peer, error = %e, "closing connection: bad header");
                return;
            }
        };
        let mut frame = vec![0u8; header.message_length as usize];
        frame[..HEADER_LEN].copy_from_slice(&head);
        if stream.read_exact(&mut frame[HEADER_LEN..]).await.is_err() {
            return;
        }
        let request = match codec::parse_frame(&frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%addr, %peer, error = %e, "closing connection: malformed message");
                return;
            }
        };
        let reply = match request {
            Request::Msg {
                header,
                flags,
                command,
            } => {
                let reply = commands::handle(&shared, addr, &ctx, command).await;
                if flags & codec::FLAG_MORE_TO_COME != 0 {
                    continue;
                }
                codec::encode_msg_reply(shared.request_id(), header.request_id, &reply)
            }
            Request::Query {
                header,
                full_collection_name,
                query,
            } => {
                let name = query.keys().next().map(String::as_str).unwrap_or("");
                let is_handshake = full_collection_name.ends_with(".$cmd")
                    && matches!(name, "isMaster" | "ismaster" | "hello");
                if !is_handshake {
                    tracing::warn!(%addr, %peer, ns = %full_collection_name, "closing connection: OP_QUERY other than the handshake");
                    return;
                }
                let reply = commands::hello(&shared, addr, &ctx, &query, true);
                codec::encode_op_reply(shared.request_id(), header.request_id, &reply)
            }
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
        let kill = ctx
            .kill_after_reply
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(target) = kill {
            let _ = stream.flush().await;
            let shared = shared.clone();
            tokio::spawn(async move {
                let _ = crate::cluster::kill_node(&shared, target).await;
            });
        }
    }
}

//! The wire loop: one task per connection of a simulated process (the listeners and the
//! process table are in [`crate::runtime`], which runs [`serve`] on each accepted
//! connection).
//!
//! ```text
//!   accept --> conn task: read header --check_header--> read frame --parse_frame-->
//!              commands::handle (locks World briefly, may await oplog changes) --> reply
//! ```
//!
//! Malformed or oversized input closes only that connection. A command that kills the very
//! process answering it (`ConnCtx::kill_after_reply`) has the kill carried out here, once
//! the reply is written.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::{self, Request, HEADER_LEN};
use crate::commands;
use crate::runtime::{ConnCtx, Shared};

/// The [`ConnectionHandler`](crate::runtime::ConnectionHandler) every listener runs:
/// installed in [`Shared`] when the simulation is built, so that the process table in
/// [`crate::runtime`] can start listeners without depending on this module.
pub(crate) fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    stream: TcpStream,
    peer: SocketAddr,
) -> BoxFuture<'static, ()> {
    Box::pin(accept_connection(shared, addr, stream, peer))
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
                let _ = crate::ops::kill_node(&shared, target).await;
            });
        }
    }
}

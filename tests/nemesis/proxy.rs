//! A TCP proxy between the Kafka clients and the broker. The broker advertises the proxy's
//! address, so every connection (quorumtail's producer, the checker's consumer and marker
//! producer) goes through it. It serves two purposes:
//!
//! - **Broker outages.** [`Proxy::go_down`] drops every open connection and closes the
//!   listening socket, so new connections are refused (`ECONNREFUSED`) until
//!   [`Proxy::come_up`] binds the same port again: from a client's side the broker stopped
//!   and came back with its storage intact.
//! - **Exact run boundaries.** The proxy forwards only complete Kafka request frames (a
//!   4-byte length, then the body) and counts the responses (one per request: quorumtail
//!   produces with `acks=all`, so every request is answered). When a client goes away
//!   (quorumtail killed with `kill -9`), the proxy keeps the broker side of the connection
//!   open until every request it forwarded was answered, then closes it. A request torn
//!   by the kill was never forwarded whole, so the broker never processes it. Hence once
//!   [`Proxy::quiet`] holds after a quorumtail process exited, every produce request that
//!   process sent has been appended or never will be: a marker written then separates its
//!   records from the next run's. Connections are told apart by the `client_id` of their
//!   first request (quorumtail's producer says `quorumtail`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The `client.id` of the test's own Kafka clients (not quorumtail's).
pub const CHECKER_CLIENT_ID: &str = "nemesis-checker";

/// How long a connection whose client went away waits for the answers to the requests it
/// forwarded before it is closed anyway (and counted in [`Proxy::abandoned`]).
const ORPHAN_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
struct Conn {
    /// The `client_id` of its first request (`None` until one arrived).
    client_id: Option<String>,
}

#[derive(Debug)]
struct Shared {
    /// The broker's listener (set once it runs).
    upstream: Mutex<Option<SocketAddr>>,
    conns: Mutex<HashMap<u64, Conn>>,
    next: AtomicU64,
    /// Connections closed while requests were still unanswered (broker faults, deadline).
    abandoned: AtomicU64,
}

/// `(up, epoch)`: whether the proxy accepts connections, and a counter bumped by every
/// outage (open connections of an older epoch are dropped).
type Ctl = (bool, u64);

/// The proxy, running on the test's tokio runtime.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    ctl: watch::Sender<Ctl>,
}

impl Proxy {
    /// Listens on a free loopback port; forwards to the broker once
    /// [`Proxy::set_upstream`] named it (until then connections are closed at once).
    pub async fn start() -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        });
        let (ctl, rx) = watch::channel((true, 0));
        tokio::spawn(accept_loop(addr, Some(listener), shared.clone(), rx));
        Ok(Proxy { addr, shared, ctl })
    }

    /// Where the broker listens.
    pub fn set_upstream(&self, addr: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = Some(addr);
    }

    /// Drops every open connection and refuses new ones.
    pub fn go_down(&self) {
        self.ctl.send_modify(|(up, epoch)| {
            *up = false;
            *epoch += 1;
        });
    }

    /// Accepts connections again (on the same port).
    pub fn come_up(&self) {
        self.ctl.send_modify(|(up, _)| *up = true);
    }

    /// Whether no connection other than the checker's own is open (or still waiting for
    /// the broker's answers to a departed client's requests).
    pub fn quiet(&self) -> bool {
        self.shared
            .conns
            .lock()
            .unwrap()
            .values()
            .all(|c| c.client_id.as_deref() == Some(CHECKER_CLIENT_ID))
    }

    /// Connections closed with requests unanswered so far.
    pub fn abandoned(&self) -> u64 {
        self.shared.abandoned.load(Ordering::SeqCst)
    }
}

async fn accept_loop(
    addr: SocketAddr,
    mut listener: Option<TcpListener>,
    shared: Arc<Shared>,
    mut rx: watch::Receiver<Ctl>,
) {
    loop {
        let (up, epoch) = *rx.borrow_and_update();
        if !up {
            // Closed listening socket: connections are refused.
            listener = None;
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match bind_again(addr).await {
                Some(l) => l,
                None => return,
            },
        };
        tokio::select! {
            r = l.accept() => {
                listener = Some(l);
                if let Ok((sock, _)) = r {
                    let id = shared.next.fetch_add(1, Ordering::SeqCst);
                    shared.conns.lock().unwrap().insert(id, Conn::default());
                    let shared = shared.clone();
                    let rx = rx.clone();
                    tokio::spawn(async move {
                        serve(sock, id, epoch, &shared, rx).await;
                        shared.conns.lock().unwrap().remove(&id);
                    });
                }
            }
            r = rx.changed() => {
                listener = Some(l);
                if r.is_err() {
                    return;
                }
            }
        }
    }
}

/// Binds the proxy's port again after an outage (retrying while the old socket lingers).
async fn bind_again(addr: SocketAddr) -> Option<TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                eprintln!("proxy: cannot bind {addr} again: {e}");
                return None;
            }
        }
    }
}

/// Takes one complete frame (length prefix included) off the front of `buf`.
fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    Some(buf.drain(..4 + len).collect())
}

/// The `client_id` of a request frame: after api_key (2), api_version (2) and
/// correlation_id (4), a nullable string with a 2-byte length in every header version.
fn client_id(frame: &[u8]) -> String {
    let body = &frame[4..];
    if body.len() < 10 {
        return String::new();
    }
    let len = i16::from_be_bytes([body[8], body[9]]);
    if len < 0 {
        return String::new();
    }
    let end = (10 + len as usize).min(body.len());
    String::from_utf8_lossy(&body[10..end]).into_owned()
}

async fn serve(
    client: TcpStream,
    id: u64,
    epoch: u64,
    shared: &Shared,
    mut rx: watch::Receiver<Ctl>,
) {
    let dropped = |c: &Ctl| c.1 != epoch;
    if dropped(&rx.borrow()) {
        return;
    }
    let Some(to) = *shared.upstream.lock().unwrap() else {
        return;
    };
    let Ok(upstream) = TcpStream::connect(to).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (mut cr, mut cw) = (Some(cr), Some(cw));
    let (mut ur, mut uw) = upstream.into_split();
    let (mut cbuf, mut ubuf) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut outstanding = 0usize;
    let mut first = true;
    let orphan = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(orphan);
    // The client side is closed (client gone, or dropped by an outage): the broker side
    // stays open until the forwarded requests are answered (their answers discarded).
    macro_rules! close_client {
        () => {{
            cr = None;
            cw = None;
            orphan
                .as_mut()
                .reset(tokio::time::Instant::now() + ORPHAN_DEADLINE);
        }};
    }
    loop {
        if cr.is_none() && outstanding == 0 {
            return;
        }
        tokio::select! {
            r = rx.changed(), if cr.is_some() => {
                if r.is_err() || dropped(&rx.borrow()) {
                    close_client!();
                }
            }
            r = async { cr.as_mut().unwrap().read(&mut a).await }, if cr.is_some() => match r {
                Ok(0) | Err(_) => close_client!(),
                Ok(n) => {
                    cbuf.extend_from_slice(&a[..n]);
                    while let Some(frame) = take_frame(&mut cbuf) {
                        if first {
                            first = false;
                            let cid = client_id(&frame);
                            if let Some(c) = shared.conns.lock().unwrap().get_mut(&id) {
                                c.client_id = Some(cid);
                            }
                        }
                        outstanding += 1;
                        if uw.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                }
            },
            r = ur.read(&mut b) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    ubuf.extend_from_slice(&b[..n]);
                    while let Some(frame) = take_frame(&mut ubuf) {
                        outstanding = outstanding.saturating_sub(1);
                        if let Some(w) = cw.as_mut() {
                            if w.write_all(&frame).await.is_err() {
                                close_client!();
                            }
                        }
                    }
                }
            },
            () = orphan.as_mut(), if cr.is_none() => break,
        }
    }
    if outstanding > 0 {
        shared.abandoned.fetch_add(1, Ordering::SeqCst);
    }
}

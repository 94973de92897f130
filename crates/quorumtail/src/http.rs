//! Operator endpoints over plain HTTP/1.1: `/metrics` (Prometheus metrics in the
//! OpenMetrics text format), `/healthz` (the process answers), `/readyz` (every shard can
//! confirm entries and the sink has not failed), `/status` (JSON), and `/`, a small status
//! page that refreshes itself.
//!
//! The metrics are read from the [`Status`] at each scrape and encoded by prometheus-client
//! (names, types, units, help), with label values escaped on the way (`exposition`).
//!
//! With `[http] control = true`, `POST /snapshot?shard=<name>&collection=<db.coll>` (each
//! repeatable, both optional) asks the named running shards (all when none is named) to
//! copy the named collections (all the filter keeps when none is named) again; the answer
//! (202) names the shards that took the request. `quorumtail snapshot` sends it.
//!
//! Deliberately minimal: GET and HEAD (and that one POST) only, one request per
//! connection, bounded request size and time, at most [`MAX_CONNECTIONS`] connections served at once (more wait to be
//! accepted); scrapers and browsers need nothing more, and it keeps a web framework out of
//! the dependency tree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use quorumtail_oplog::extjson::utc_seconds;

use crate::pipeline::stats::NodeStats;
use crate::status::{DrainState, Status};

mod exposition;
pub use exposition::{metrics, METRICS_CONTENT_TYPE};

/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// Serves the endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    control: Option<tokio::sync::mpsc::Sender<crate::coordinator::Command>>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP endpoints: /metrics /healthz /readyz /status /");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first: a flood of connections waits in the kernel's backlog instead of
        // costing a task each.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let status = status.clone();
                    let control = control.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(Duration::from_secs(10), handle(stream, &status, control.as_ref())).await {
                            debug!(error = %e, "HTTP request timed out");
                        }
                        drop(slot);
                    });
                }
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    status: &Status,
    control: Option<&tokio::sync::mpsc::Sender<crate::coordinator::Command>>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            return respond(
                &mut stream,
                431,
                "text/plain",
                b"request header too large\n",
                true,
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "POST" && target.split('?').next() == Some("/snapshot") {
        let (code, body) = snapshot_request(target, control).await;
        return respond(&mut stream, code, "application/json", body.as_bytes(), true).await;
    }
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", b"only GET and HEAD\n", true).await;
    }
    let with_body = method == "GET";
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            respond(
                &mut stream,
                200,
                METRICS_CONTENT_TYPE,
                metrics(status).as_bytes(),
                with_body,
            )
            .await
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", b"ok\n", with_body).await,
        "/readyz" => {
            let problems = not_ready(status);
            if problems.is_empty() {
                respond(&mut stream, 200, "text/plain", b"ready\n", with_body).await
            } else {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    format!("not ready:\n{}\n", problems.join("\n")).as_bytes(),
                    with_body,
                )
                .await
            }
        }
        "/status" => {
            let body = serde_json::to_vec_pretty(&status_json(status)).unwrap_or_default();
            respond(&mut stream, 200, "application/json", &body, with_body).await
        }
        "/" => {
            respond(
                &mut stream,
                200,
                "text/html; charset=utf-8",
                page(status).as_bytes(),
                with_body,
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                b"not found: try /metrics /healthz /readyz /status /\n",
                with_body,
            )
            .await
        }
    }
}

/// Writes a whole response; `with_body: false` answers HEAD (the headers GET would get).
async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

/// A plain HTTP/1.1 GET of `http://host:port/path` (what `quorumtail healthcheck` needs,
/// no more): the status code and the body.
///
/// # Errors
/// A URL that is not `http://host:port/...`, or no answer within `timeout` (named with
/// the URL and the fix).
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    request("GET", url, timeout)
}

fn request(method: &str, url: &str, timeout: Duration) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("--url {url:?}: only http://host:port/path is supported, e.g. http://127.0.0.1:9000/healthz")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("--url {url:?}: {authority:?} is not host:port ({e})"))?
        .next()
        .ok_or_else(|| format!("--url {url:?}: {authority:?} resolves to no address"))?;
    let fail = |e: std::io::Error| {
        format!("{url}: no answer ({e}); is quorumtail running with [http] listen on {authority}?")
    };
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    s.set_read_timeout(Some(timeout)).map_err(fail)?;
    s.set_write_timeout(Some(timeout)).map_err(fail)?;
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(fail)?;
    let mut text = Vec::new();
    s.read_to_end(&mut text).map_err(fail)?;
    let text = String::from_utf8_lossy(&text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// `POST /snapshot?shard=..&collection=..`: the answer's status and JSON body.
async fn snapshot_request(
    target: &str,
    control: Option<&tokio::sync::mpsc::Sender<crate::coordinator::Command>>,
) -> (u16, String) {
    let err = |code: u16, e: &str| (code, serde_json::json!({ "error": e }).to_string() + "\n");
    let Some(control) = control else {
        return err(
            403,
            "snapshot requests are off: set [http] control = true to accept them",
        );
    };
    let (mut shards, mut namespaces) = (Vec::new(), Vec::new());
    for pair in target.split_once('?').map_or("", |(_, q)| q).split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(v) = percent_decode(v) else {
            return err(400, &format!("{k}: not valid percent-encoding: {v:?}"));
        };
        match k {
            "shard" => shards.push(v),
            "collection" => {
                if !v.contains('.') {
                    return err(400, &format!("collection {v:?}: expected db.coll"));
                }
                namespaces.push(v)
            }
            other => {
                return err(
                    400,
                    &format!("unknown parameter {other:?}: expected shard and collection"),
                )
            }
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let cmd = crate::coordinator::Command::Snapshot(crate::coordinator::SnapshotCommand {
        shards,
        namespaces,
        reply: tx,
    });
    if control.send(cmd).await.is_err() {
        return err(503, "quorumtail is stopping");
    }
    match tokio::time::timeout(Duration::from_secs(8), rx).await {
        Ok(Ok(Ok(took))) => (
            202,
            serde_json::json!({ "accepted": took }).to_string() + "\n",
        ),
        Ok(Ok(Err(e))) => err(409, &e),
        _ => err(503, "no answer from the coordinator; look at the log"),
    }
}

/// `%XX` and `+` decoding of a query value; `None` when malformed.
fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Sends `POST path` to a running quorumtail (`quorumtail snapshot`): the answer's status
/// and body.
///
/// # Errors
/// When the URL is not `http://host:port...` or nothing answers.
pub fn post(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    request("POST", url, timeout)
}

/// Why the process is not ready, one line each; empty when ready.
pub fn not_ready(status: &Status) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(f) = status.sink_failure() {
        out.push(format!("sink: {f}"));
    }
    for shard in status.orphaned_checkpoints() {
        out.push(format!("shard {shard}: has a checkpoint but is not in the topology, and its members were not stored with it (older checkpoint format), so it cannot be drained; its later changes are not read (list it under [[shards]] with its members until drained, or remove its checkpoint)"));
    }
    let draining = status.draining();
    for (shard, d) in &draining {
        if d.state == DrainState::Unreachable {
            out.push(format!(
                "shard {shard}: removed ({}) and being drained, but fewer of its members than its quorum answer ({}); what it committed after its checkpoint is not read yet (make its members reachable, or remove its checkpoint to give it up)",
                d.reason,
                d.members.join(", ")
            ));
        }
    }
    let shards = status.all();
    if shards.is_empty() {
        out.push("no shard pipeline is running yet".into());
    }
    for (name, s) in &shards {
        let unreachable_drain = draining
            .get(name)
            .is_some_and(|d| d.state == DrainState::Unreachable);
        if s.failed {
            out.push(format!(
                "shard {name}: stopped with a definite error (see the logs)"
            ));
        } else if status.starting(name) {
            let nodes = status.nodes(name);
            let answered = nodes.values().filter(|n| n.state == "tailing").count();
            out.push(format!(
                "shard {name}: starting: {answered} of {} member(s) answered so far, {} needed to confirm entries",
                nodes.len(),
                s.quorum
            ));
        } else if !s.stopped && !s.quorum_reachable && !unreachable_drain {
            out.push(format!(
                "shard {name}: fewer members than the quorum are being read"
            ));
        }
    }
    out
}

/// The newest entry any member of the shard reported.
fn newest(nodes: &BTreeMap<String, NodeStats>) -> Option<quorumtail_oplog::Timestamp> {
    nodes.values().filter_map(|n| n.last_ts).max()
}

/// The `/status` document.
pub fn status_json(status: &Status) -> serde_json::Value {
    let draining = status.draining();
    let mut shards = serde_json::Map::new();
    for (name, s) in status.all() {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        v["nodes"] = serde_json::to_value(status.nodes(&name)).unwrap_or_default();
        v["snapshot_progress"] =
            serde_json::to_value(status.collection_copies(&name)).unwrap_or_default();
        v["quorum_source"] = serde_json::Value::String(status.quorum_source(&name));
        v["checkpoint"] = serde_json::to_value(status.confirmed(&name)).unwrap_or_default();
        v["draining"] = serde_json::to_value(draining.get(&name)).unwrap_or_default();
        shards.insert(name, v);
    }
    serde_json::json!({
        "ready": not_ready(status).is_empty(),
        "not_ready": not_ready(status),
        "sink_failure": status.sink_failure(),
        "orphaned_checkpoints": status.orphaned_checkpoints(),
        "shards": shards,
    })
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The human status page: one table per shard, one row per member.
pub fn page(status: &Status) -> String {
    let problems = not_ready(status);
    let mut h = String::with_capacity(4096);
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\"><title>quorumtail</title><style>");
    h.push_str("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin-bottom:1.5em}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}.ok{color:#137a2c}.bad{color:#b3261e;font-weight:600}.muted{color:#777}h2{margin-bottom:.3em}");
    h.push_str("</style></head><body><h1>quorumtail</h1>");
    if problems.is_empty() {
        h.push_str("<p class=\"ok\">Ready: every shard can confirm entries.</p>");
    } else {
        h.push_str("<p class=\"bad\">Not ready:</p><ul>");
        for p in &problems {
            let _ = write!(h, "<li class=\"bad\">{}</li>", html_escape(p));
        }
        h.push_str("</ul>");
    }
    let draining = status.draining();
    for (name, s) in status.all() {
        let nodes = status.nodes(&name);
        let top = newest(&nodes);
        let drain = draining.get(&name).map(|d| (d.state, d.reason));
        let state = if s.failed {
            "<span class=\"bad\">stopped: definite error</span>"
        } else if let Some((DrainState::Unreachable, _)) = drain {
            "<span class=\"bad\">removed, draining: too few members answer</span>"
        } else if let Some((DrainState::Drained, _)) = drain {
            "<span class=\"muted\">removed: drained</span>"
        } else if let Some((DrainState::Delivering, _)) = drain {
            "<span class=\"ok\">removed: read to its end, delivering</span>"
        } else if drain.is_some() {
            "<span class=\"ok\">removed: draining</span>"
        } else if s.stopped {
            "<span class=\"muted\">stopped</span>"
        } else if status.starting(&name) {
            "<span class=\"muted\">starting: waiting for members to answer</span>"
        } else if s.quorum_reachable {
            "<span class=\"ok\">quorum available</span>"
        } else {
            "<span class=\"bad\">quorum unavailable</span>"
        };
        let cp = status
            .confirmed(&name)
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none yet".into());
        let _ = write!(
            h,
            "<h2>{}</h2><p>{state} &middot; quorum {} ({}) &middot; committed up to {} &middot; checkpoint {} &middot; {} records, {} discarded, {} pending</p>",
            html_escape(&name),
            s.quorum,
            html_escape(&status.quorum_source(&name)),
            if s.watermark_seconds == 0 { "nothing yet".to_owned() } else { utc_seconds(s.watermark_seconds as u32) },
            html_escape(&cp),
            s.records,
            s.discarded,
            s.pending
        );
        h.push_str("<table><tr><th>member</th><th>votes</th><th>state</th><th>newest entry</th><th>lag</th><th>commit point</th><th>reads</th><th>reconnects</th></tr>");
        for (addr, n) in &nodes {
            let class = if n.state == "tailing" { "ok" } else { "bad" };
            let lag = match (top, n.last_ts) {
                (Some(top), Some(last)) => format!("{} s", top.time.saturating_sub(last.time)),
                _ => "-".to_owned(),
            };
            let kind = match (n.voter, n.hidden) {
                (true, false) => "voter",
                (true, true) => "voter, hidden",
                (false, false) => "non-voter",
                (false, true) => "non-voter, hidden",
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{kind}</td><td class=\"{class}\">{}</td><td>{}</td><td>{lag}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html_escape(addr),
                html_escape(&n.state),
                n.last_ts.map(|t| format!("{} ({t})", utc_seconds(t.time))).unwrap_or_else(|| "-".into()),
                n.commit_point_ts.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                html_escape(if n.reading.is_empty() { "-" } else { &n.reading }),
                n.interruptions
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::stats::NodeStats;
    use quorumtail_oplog::Timestamp;

    fn sample(text: &str, name: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    /// Regression (issue 15): a member that never reported showed a lag of about 1.7e9 s
    /// (the shard's newest entry minus zero); the file sink showed a Kafka histogram; the
    /// bytes counter is named per Prometheus conventions.
    #[test]
    fn metrics_name_and_omit_what_does_not_exist() {
        let status = Status::default();
        let stats = status.register(&"shard01".into());
        stats.set_node(
            "a:1",
            NodeStats {
                state: "tailing".into(),
                last_ts: Some(Timestamp::new(1_700_000_010, 1)),
                bytes_read: 42,
                ..Default::default()
            },
        );
        stats.set_node(
            "b:1",
            NodeStats {
                state: "tailing".into(),
                last_ts: Some(Timestamp::new(1_700_000_000, 1)),
                ..Default::default()
            },
        );
        stats.set_node(
            "c:1",
            NodeStats {
                state: "connecting".into(),
                ..Default::default()
            },
        );
        let m = metrics(&status);
        assert_eq!(
            sample(&m, "quorumtail_node_lag_seconds"),
            [
                "quorumtail_node_lag_seconds{shard=\"shard01\",node=\"a:1\"} 0",
                "quorumtail_node_lag_seconds{shard=\"shard01\",node=\"b:1\"} 10",
            ]
        );
        assert!(
            m.contains("quorumtail_node_read_bytes_total{shard=\"shard01\",node=\"a:1\"} 42"),
            "{m}"
        );
        assert!(!m.contains("bytes_read"), "{m}");
        assert!(
            m.contains(&format!(
                "quorumtail_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{m}"
        );
        // The status page neither: the member that never reported has no lag.
        let page = page(&status);
        let row = page.split("<tr>").find(|r| r.contains("c:1")).unwrap();
        assert!(row.contains("<td>-</td><td>-</td>"), "{row}");
        assert!(page.contains("<td>10 s</td>"), "{page}");
        // No sink known as Kafka: no delivery histogram.
        assert!(!m.contains("quorumtail_sink_delivery"), "{m}");
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert_eq!(sample(&m, name).len(), 1, "{name} in\n{m}");
        }
    }

    async fn request(addr: std::net::SocketAddr, text: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(text.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("shop.items").as_deref(), Some("shop.items"));
        assert_eq!(percent_decode("a%2Eb+c").as_deref(), Some("a.b c"));
        assert_eq!(percent_decode("%E2%9C%93").as_deref(), Some("\u{2713}"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
    }

    /// HEAD answers the headers without a body; other methods get 405 with `Allow`; at
    /// most MAX_CONNECTIONS connections are served at once.
    #[tokio::test]
    async fn head_405_and_the_connection_cap() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Arc::new(Status::default()),
            None,
            stop.clone(),
        ));

        let head = request(addr, "HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Length: 3\r\n"), "{head}");
        assert!(
            head.ends_with("\r\n\r\n"),
            "a body after the headers: {head:?}"
        );

        let post = request(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
        // Snapshot requests are refused unless [http] control is on.
        let snap = request(addr, "POST /snapshot HTTP/1.1\r\n\r\n").await;
        assert!(snap.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{snap}");
        assert!(snap.contains("[http] control = true"), "{snap}");

        // Every slot held by a connection that sends nothing.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        waiting
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut buf))
                .await
                .is_err(),
            "served beyond the cap"
        );
        // One slot frees: the waiting request is served.
        drop(idle.pop());
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), waiting.read_to_string(&mut out))
            .await
            .expect("served once a slot is free")
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        stop.cancel();
    }
}

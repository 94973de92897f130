//! Operator endpoints over plain HTTP/1.1: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers), `/readyz` (every shard can confirm entries and the sink
//! has not failed), `/status` (JSON), and `/`, a small status page that refreshes itself.
//!
//! Deliberately minimal: GET only, one request per connection, bounded request size and
//! time; scrapers and browsers need nothing more, and it keeps a web framework out of the
//! dependency tree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use quorumtail_oplog::extjson::utc_seconds;

use crate::coordinator::{DrainState, Status};
use crate::pipeline::stats::{NodeStats, StatsSnapshot};

/// Serves the endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, status: Arc<Status>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP endpoints: /metrics /healthz /readyz /status /");
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let status = status.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(Duration::from_secs(10), handle(stream, &status)).await {
                            debug!(error = %e, "HTTP request timed out");
                        }
                    });
                }
            }
        }
    }
}

async fn handle(mut stream: TcpStream, status: &Status) -> std::io::Result<()> {
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
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", b"only GET\n").await;
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4",
                metrics(status).as_bytes(),
            )
            .await
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", b"ok\n").await,
        "/readyz" => {
            let problems = not_ready(status);
            if problems.is_empty() {
                respond(&mut stream, 200, "text/plain", b"ready\n").await
            } else {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    format!("not ready:\n{}\n", problems.join("\n")).as_bytes(),
                )
                .await
            }
        }
        "/status" => {
            let body = serde_json::to_vec_pretty(&status_json(status)).unwrap_or_default();
            respond(&mut stream, 200, "application/json", &body).await
        }
        "/" => {
            respond(
                &mut stream,
                200,
                "text/html; charset=utf-8",
                page(status).as_bytes(),
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                b"not found: try /metrics /healthz /readyz /status /\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// A plain HTTP/1.1 GET of `http://host:port/path` (what `quorumtail healthcheck` needs,
/// no more): the status code and the body.
///
/// # Errors
/// A URL that is not `http://host:port/...`, or no answer within `timeout` (named with
/// the URL and the fix).
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
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
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
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

fn family(m: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>) {
    let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(m, "{name} {v}");
        } else {
            let _ = writeln!(m, "{name}{{{labels}}} {v}");
        }
    }
}

/// The Prometheus text exposition.
pub fn metrics(status: &Status) -> String {
    let shards = status.all();
    let nodes: BTreeMap<String, BTreeMap<String, NodeStats>> = shards
        .keys()
        .map(|k| (k.clone(), status.nodes(k)))
        .collect();
    let mut m = String::with_capacity(4096);
    let per_shard = |f: &dyn Fn(&StatsSnapshot) -> f64| -> Vec<(String, f64)> {
        shards
            .iter()
            .map(|(k, s)| (format!("shard=\"{}\"", esc(k)), f(s)))
            .collect()
    };
    let per_node = |f: &dyn Fn(&NodeStats, Option<quorumtail_oplog::Timestamp>) -> Option<f64>| -> Vec<(String, f64)> {
        let mut v = Vec::new();
        for (shard, ns) in &nodes {
            let top = newest(ns);
            for (addr, n) in ns {
                if let Some(x) = f(n, top) {
                    v.push((format!("shard=\"{}\",node=\"{}\"", esc(shard), esc(addr)), x));
                }
            }
        }
        v
    };
    family(
        &mut m,
        "quorumtail_node_up",
        "gauge",
        "Whether the member's tailer is reading its oplog (1) or interrupted (0).",
        per_node(&|n, _| Some(f64::from(u8::from(n.state == "tailing")))),
    );
    family(
        &mut m,
        "quorumtail_node_last_entry_timestamp_seconds",
        "gauge",
        "ts (seconds) of the newest oplog entry the member reported.",
        per_node(&|n, _| n.last_ts.map(|t| f64::from(t.time))),
    );
    family(&mut m,
        "quorumtail_node_lag_seconds",
        "gauge",
        "How far the member's newest reported entry is behind the newest entry any member of its shard reported.",
        per_node(&|n, top| Some(f64::from(top.map(|t| t.time).unwrap_or(0).saturating_sub(n.last_ts.map(|t| t.time).unwrap_or(0))))),
    );
    family(
        &mut m,
        "quorumtail_node_reconnects_total",
        "counter",
        "Times the member's tailer was interrupted and reconnected.",
        per_node(&|n, _| Some(n.interruptions as f64)),
    );
    family(
        &mut m,
        "quorumtail_node_bytes_read_total",
        "counter",
        "Bytes of oplog replies received from the member (whole entries or identities).",
        per_node(&|n, _| Some(n.bytes_read as f64)),
    );
    family(
        &mut m,
        "quorumtail_node_reading_whole_entries",
        "gauge",
        "Whether the member's stream holds whole entries (1) or identities only (0).",
        per_node(&|n, _| Some(f64::from(u8::from(n.reading == "whole entries")))),
    );
    let checkpoints: BTreeMap<String, u32> = shards
        .keys()
        .filter_map(|k| status.confirmed(k).map(|c| (k.clone(), c.ts.time)))
        .collect();
    {
        let mut v = Vec::new();
        for (shard, ns) in &nodes {
            let Some(cp) = checkpoints.get(shard) else {
                continue;
            };
            for (addr, n) in ns {
                if let Some(o) = n.oldest_ts {
                    v.push((
                        format!("shard=\"{}\",node=\"{}\"", esc(shard), esc(addr)),
                        f64::from(*cp) - f64::from(o.time),
                    ));
                }
            }
        }
        family(&mut m,
            "quorumtail_node_oplog_headroom_seconds",
            "gauge",
            "Checkpoint minus the member's oldest oplog entry: how long quorumtail may stay stopped before this member no longer holds the resume point.",
            v,
        );
    }
    family(
        &mut m,
        "quorumtail_shard_committed_timestamp_seconds",
        "gauge",
        "ts (seconds) of the last entry a quorum confirmed (the merge watermark).",
        per_shard(&|s| s.watermark_seconds as f64),
    );
    family(
        &mut m,
        "quorumtail_shard_checkpoint_timestamp_seconds",
        "gauge",
        "ts (seconds) of the shard's checkpoint as confirmed by the sink.",
        checkpoints
            .iter()
            .map(|(k, v)| (format!("shard=\"{}\"", esc(k)), f64::from(*v)))
            .collect(),
    );
    family(
        &mut m,
        "quorumtail_shard_pending_entries",
        "gauge",
        "Entries reported by fewer members than the quorum so far.",
        per_shard(&|s| s.pending as f64),
    );
    family(
        &mut m,
        "quorumtail_shard_committed_entries_total",
        "counter",
        "Entries a quorum of members confirmed.",
        per_shard(&|s| s.committed as f64),
    );
    family(
        &mut m,
        "quorumtail_shard_whole_entry_member_changes_total",
        "counter",
        "Times another member was chosen to send whole entries (the others send identities).",
        per_shard(&|s| s.whole_switches as f64),
    );
    family(
        &mut m,
        "quorumtail_shard_discarded_entries_total",
        "counter",
        "Entries no quorum ever held (rolled back, or seen by a minority only); never emitted.",
        per_shard(&|s| s.discarded as f64),
    );
    {
        let mut v = Vec::new();
        for (k, s) in &shards {
            for (reason, n) in [
                ("from_migrate", s.dropped_from_migrate),
                ("noop", s.dropped_noops),
                ("internal_namespace", s.dropped_internal),
                ("pattern", s.dropped_by_pattern),
                ("aborted_transaction", s.aborted_ops),
            ] {
                v.push((
                    format!("shard=\"{}\",reason=\"{reason}\"", esc(k)),
                    n as f64,
                ));
            }
        }
        family(
            &mut m,
            "quorumtail_shard_dropped_operations_total",
            "counter",
            "Committed operations not emitted, by reason.",
            v,
        );
    }
    family(
        &mut m,
        "quorumtail_shard_records_total",
        "counter",
        "Records handed to the sink.",
        per_shard(&|s| s.records as f64),
    );
    family(
        &mut m,
        "quorumtail_shard_quorum_available",
        "gauge",
        "Whether enough members are being read to confirm entries.",
        per_shard(&|s| f64::from(u8::from(s.quorum_reachable))),
    );
    {
        let draining = status.draining();
        family(
            &mut m,
            "quorumtail_shard_draining",
            "gauge",
            "Whether the shard was removed and is being drained (1: reading, unreachable or delivering; 0: not removed, or drained).",
            shards
                .keys()
                .map(|k| {
                    let d = draining
                        .get(k)
                        .is_some_and(|d| d.state != DrainState::Drained);
                    (format!("shard=\"{}\"", esc(k)), f64::from(u8::from(d)))
                })
                .collect(),
        );
        family(
            &mut m,
            "quorumtail_shard_drain_blocked",
            "gauge",
            "Whether a removed shard cannot be drained because fewer of its members than its quorum answer.",
            shards
                .keys()
                .map(|k| {
                    let d = draining
                        .get(k)
                        .is_some_and(|d| d.state == DrainState::Unreachable);
                    (format!("shard=\"{}\"", esc(k)), f64::from(u8::from(d)))
                })
                .collect(),
        );
    }
    family(
        &mut m,
        "quorumtail_shard_failed",
        "gauge",
        "Whether the shard stopped with a definite error.",
        per_shard(&|s| f64::from(u8::from(s.failed))),
    );
    family(
        &mut m,
        "quorumtail_sink_in_flight_records",
        "gauge",
        "Records handed to the sink and not yet confirmed (acknowledged by Kafka or fsynced).",
        status
            .sink_in_flight()
            .map(|n| vec![(String::new(), n as f64)])
            .unwrap_or_default(),
    );
    if let Some(d) = status.sink_delivery() {
        let _ = writeln!(
            m,
            "# HELP quorumtail_sink_delivery_seconds Time from handing a record to the Kafka producer to its acknowledgement (acks=all).\n# TYPE quorumtail_sink_delivery_seconds histogram"
        );
        for (le, n) in &d.buckets {
            let _ = writeln!(
                m,
                "quorumtail_sink_delivery_seconds_bucket{{le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            m,
            "quorumtail_sink_delivery_seconds_bucket{{le=\"+Inf\"}} {}",
            d.count
        );
        let _ = writeln!(m, "quorumtail_sink_delivery_seconds_sum {}", d.sum_seconds);
        let _ = writeln!(m, "quorumtail_sink_delivery_seconds_count {}", d.count);
        let _ = writeln!(m, "# HELP quorumtail_sink_delivery_errors_total Definite delivery errors, by librdkafka error code.\n# TYPE quorumtail_sink_delivery_errors_total counter");
        for (kind, n) in &d.errors {
            let _ = writeln!(
                m,
                "quorumtail_sink_delivery_errors_total{{kind=\"{}\"}} {n}",
                esc(kind)
            );
        }
    }
    family(
        &mut m,
        "quorumtail_sink_failed",
        "gauge",
        "Whether the sink stopped with a definite error.",
        vec![(
            String::new(),
            f64::from(u8::from(status.sink_failure().is_some())),
        )],
    );
    m
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/status` document.
pub fn status_json(status: &Status) -> serde_json::Value {
    let draining = status.draining();
    let mut shards = serde_json::Map::new();
    for (name, s) in status.all() {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        v["nodes"] = serde_json::to_value(status.nodes(&name)).unwrap_or_default();
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
            "<h2>{}</h2><p>{state} &middot; quorum {} &middot; committed up to {} &middot; checkpoint {} &middot; {} records, {} discarded, {} pending</p>",
            html_escape(&name),
            s.quorum,
            if s.watermark_seconds == 0 { "nothing yet".to_owned() } else { utc_seconds(s.watermark_seconds as u32) },
            html_escape(&cp),
            s.records,
            s.discarded,
            s.pending
        );
        h.push_str("<table><tr><th>member</th><th>state</th><th>newest entry</th><th>lag</th><th>reads</th><th>reconnects</th></tr>");
        for (addr, n) in &nodes {
            let class = if n.state == "tailing" { "ok" } else { "bad" };
            let lag = top
                .map(|t| t.time)
                .unwrap_or(0)
                .saturating_sub(n.last_ts.map(|t| t.time).unwrap_or(0));
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{lag} s</td><td>{}</td><td>{}</td></tr>",
                html_escape(addr),
                html_escape(&n.state),
                n.last_ts.map(|t| format!("{} ({t})", utc_seconds(t.time))).unwrap_or_else(|| "-".into()),
                html_escape(if n.reading.is_empty() { "-" } else { &n.reading }),
                n.interruptions
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>");
    h
}

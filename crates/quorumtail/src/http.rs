//! Operator endpoints over plain HTTP/1.1: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers), `/readyz` (every shard can confirm entries and the sink
//! has not failed), `/status` (JSON), and `/`, a small status page that refreshes itself.
//!
//! Deliberately minimal: GET and HEAD only, one request per connection, bounded request
//! size and time, at most [`MAX_CONNECTIONS`] connections served at once (more wait to be
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

use crate::coordinator::{DrainState, Status};
use crate::pipeline::stats::{NodeStats, StatsSnapshot};

/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// Serves the endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, status: Arc<Status>, shutdown: CancellationToken) {
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
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(Duration::from_secs(10), handle(stream, &status)).await {
                            debug!(error = %e, "HTTP request timed out");
                        }
                        drop(slot);
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
                true,
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
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
                "text/plain; version=0.0.4",
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
        404 => "Not Found",
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
    let mut m = String::with_capacity(4096);
    family(
        &mut m,
        "quorumtail_build_info",
        "gauge",
        "Always 1; the labels say which build runs.",
        vec![(
            format!("version=\"{}\"", esc(env!("CARGO_PKG_VERSION"))),
            1.0,
        )],
    );
    process_metrics(&mut m);
    m.push_str(&pipeline_metrics(status));
    m
}

/// `process_*` metrics as Prometheus client libraries name them, from `/proc/self`
/// (Linux; elsewhere none).
fn process_metrics(m: &mut String) {
    let Some(p) = ProcessStats::read() else {
        return;
    };
    family(
        m,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        vec![(String::new(), p.cpu_seconds)],
    );
    family(
        m,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        vec![(String::new(), p.resident_bytes)],
    );
    family(
        m,
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        vec![(String::new(), p.virtual_bytes)],
    );
    family(
        m,
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        vec![(String::new(), p.open_fds)],
    );
    if let Some(max) = p.max_fds {
        family(
            m,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            vec![(String::new(), max)],
        );
    }
    if let Some(start) = p.start_time_seconds {
        family(
            m,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            vec![(String::new(), start)],
        );
    }
}

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

/// Clock ticks per second in `/proc` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self::parse(&stat, &status, open_fds, &limits, &boot)
    }

    fn parse(
        stat: &str,
        status: &str,
        open_fds: usize,
        limits: &str,
        proc_stat: &str,
    ) -> Option<ProcessStats> {
        // Fields after the command name (which may hold spaces and parentheses).
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 2..)?
            .split_whitespace()
            .collect();
        // utime, stime and starttime are fields 14, 15 and 22 of the whole line.
        let tick = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
        let cpu_seconds = (tick(14)? + tick(15)?) / USER_HZ;
        let kb = |key: &str| -> Option<f64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? * 1024.0)
        };
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok());
        let btime = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        Some(ProcessStats {
            cpu_seconds,
            resident_bytes: kb("VmRSS:")?,
            virtual_bytes: kb("VmSize:").unwrap_or(0.0),
            open_fds: open_fds as f64,
            max_fds,
            start_time_seconds: btime.zip(tick(22)).map(|(b, t)| b + t / USER_HZ),
        })
    }
}

/// The pipeline's and the sink's metrics.
fn pipeline_metrics(status: &Status) -> String {
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
        // A member that never reported has no lag to show (not "since 1970").
        per_node(&|n, top| Some(f64::from(top?.time.saturating_sub(n.last_ts?.time)))),
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
        "quorumtail_node_read_bytes_total",
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
    family(
        &mut m,
        "quorumtail_node_voter",
        "gauge",
        "Whether the member's reports count towards the quorum (votes: 1 in the replica set configuration).",
        per_node(&|n, _| Some(f64::from(u8::from(n.voter)))),
    );
    family(
        &mut m,
        "quorumtail_node_hidden",
        "gauge",
        "Whether the member is hidden in the replica set configuration (read although hello and config.shards omit it).",
        per_node(&|n, _| Some(f64::from(u8::from(n.hidden)))),
    );
    family(
        &mut m,
        "quorumtail_node_commit_point_timestamp_seconds",
        "gauge",
        "ts (seconds) of the member's view of MongoDB's commit point, confirmed against its stream.",
        per_node(&|n, _| n.commit_point_ts.map(|t| f64::from(t.time))),
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
        "quorumtail_shard_awaiting_commit_point",
        "gauge",
        "Whether the next entry a quorum of voters holds waits for MongoDB's commit point (1).",
        per_shard(&|s| f64::from(u8::from(s.awaiting_commit_point))),
    );
    family(
        &mut m,
        "quorumtail_shard_commit_point_waits_total",
        "counter",
        "Times the release waited for MongoDB's commit point after a quorum of voters held the next entry.",
        per_shard(&|s| s.commit_waits as f64),
    );
    family(
        &mut m,
        "quorumtail_shard_commit_point_wait_seconds_total",
        "counter",
        "Total time the release waited for MongoDB's commit point.",
        per_shard(&|s| s.commit_wait_micros as f64 / 1e6),
    );
    family(
        &mut m,
        "quorumtail_shard_arbiters",
        "gauge",
        "Arbiters in the replica set configuration (they vote, hold no oplog).",
        per_shard(&|s| s.arbiters as f64),
    );
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

    #[test]
    fn process_stats_from_proc_files() {
        let stat = "4242 (quorum tail) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1000 123456789 5000 18446744073709551615";
        let status = "Name:\tquorumtail\nVmSize:\t  123456 kB\nVmRSS:\t   30000 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let p =
            ProcessStats::parse(stat, status, 17, limits, "cpu 1 2 3\nbtime 1700000000\n").unwrap();
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 30000.0 * 1024.0,
                virtual_bytes: 123456.0 * 1024.0,
                open_fds: 17.0,
                max_fds: Some(1024.0),
                start_time_seconds: Some(1_700_000_010.0),
            }
        );
        #[cfg(target_os = "linux")]
        {
            let live = ProcessStats::read().unwrap();
            assert!(live.resident_bytes > 0.0 && live.open_fds > 0.0, "{live:?}");
        }
    }

    async fn request(addr: std::net::SocketAddr, text: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(text.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// HEAD answers the headers without a body; other methods get 405 with `Allow`; at
    /// most MAX_CONNECTIONS connections are served at once.
    #[tokio::test]
    async fn head_405_and_the_connection_cap() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::new(Status::default()), stop.clone()));

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

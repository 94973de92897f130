//! Operator endpoints over plain HTTP/1.1: `/metrics` (Prometheus metrics in the
//! OpenMetrics text format), `/healthz` (the process answers), `/readyz` (every shard can
//! confirm entries and the sink has not failed), `/status` (JSON), and `/`, a small status
//! page that refreshes itself.
//!
//! The metrics are read from the [`Status`] at each scrape by a prometheus-client
//! [`Collector`] and encoded by that crate (names, types, units, help); label values are
//! escaped on the way ([`LabelValue`]), which the crate itself does not do.
//!
//! Deliberately minimal: GET and HEAD only, one request per connection, bounded request
//! size and time, at most [`MAX_CONNECTIONS`] connections served at once (more wait to be
//! accepted); scrapers and browsers need nothing more, and it keeps a web framework out of
//! the dependency tree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use quorumtail_sink::metrics::LabelValue;
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

/// The Prometheus exposition of `status` at this scrape, encoded by prometheus-client in
/// the OpenMetrics text format (which Prometheus reads; served as [`METRICS_CONTENT_TYPE`]).
pub fn metrics(status: &Status) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape::take(status)));
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The content type of [`metrics`].
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reports, read from the [`Status`] once: the collector encodes it.
#[derive(Debug)]
struct Scrape {
    shards: BTreeMap<String, StatsSnapshot>,
    nodes: BTreeMap<String, BTreeMap<String, NodeStats>>,
    /// `ts` seconds of each shard's confirmed checkpoint.
    checkpoints: BTreeMap<String, u32>,
    draining: BTreeMap<String, DrainState>,
    in_flight: Option<usize>,
    /// The Kafka sink's progress (its delivery metrics); none for the file sink.
    delivery: Option<quorumtail_sink::ProgressView>,
    sink_failed: bool,
    process: Option<ProcessStats>,
}

impl Scrape {
    fn take(status: &Status) -> Scrape {
        let shards = status.all();
        let nodes = shards
            .keys()
            .map(|k| (k.clone(), status.nodes(k)))
            .collect();
        let checkpoints = shards
            .keys()
            .filter_map(|k| status.confirmed(k).map(|c| (k.clone(), c.ts.time)))
            .collect();
        Scrape {
            shards,
            nodes,
            checkpoints,
            draining: status
                .draining()
                .into_iter()
                .map(|(k, d)| (k, d.state))
                .collect(),
            in_flight: status.sink_in_flight(),
            delivery: status.sink_delivery(),
            sink_failed: status.sink_failure().is_some(),
            process: ProcessStats::read(),
        }
    }
}

/// The label values of one sample, each escaped.
type Labels = Vec<(&'static str, LabelValue)>;

fn shard_labels(shard: &str) -> Labels {
    vec![("shard", LabelValue(shard.to_owned()))]
}

fn node_labels(shard: &str, node: &str) -> Labels {
    vec![
        ("shard", LabelValue(shard.to_owned())),
        ("node", LabelValue(node.to_owned())),
    ]
}

/// A sample's value: whole numbers are written as integers.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(i64),
    Float(f64),
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(i64::from(b))
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Value {
        Value::Int(i64::from(n))
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// Gauge or counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// Encodes one family. `name` is given without the unit and without `_total`: the
/// encoder appends `_<unit>` and, for a counter's samples, `_total`.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: Kind,
    samples: Vec<(Labels, Value)>,
) -> std::fmt::Result {
    let metric_type = match kind {
        Kind::Gauge => MetricType::Gauge,
        Kind::Counter => MetricType::Counter,
    };
    let mut m = encoder.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    for (labels, v) in &samples {
        if labels.is_empty() {
            sample(&mut m, kind, *v)?;
        } else {
            sample(&mut m.encode_family(labels)?, kind, *v)?;
        }
    }
    Ok(())
}

fn sample(m: &mut MetricEncoder, kind: Kind, v: Value) -> std::fmt::Result {
    match (kind, v) {
        (Kind::Gauge, Value::Int(n)) => m.encode_gauge(&n),
        (Kind::Gauge, Value::Float(x)) => m.encode_gauge(&x),
        (Kind::Counter, Value::Int(n)) => {
            m.encode_counter::<NoLabelSet, u64, u64>(&u64::try_from(n).unwrap_or(0), None)
        }
        (Kind::Counter, Value::Float(x)) => m.encode_counter::<NoLabelSet, f64, f64>(&x, None),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let version: Labels = vec![("version", LabelValue(env!("CARGO_PKG_VERSION").into()))];
        Info::new(version).encode(e.encode_descriptor(
            "quorumtail_build",
            "Always 1; the labels say which build runs.",
            None,
            MetricType::Info,
        )?)?;
        self.process(&mut e)?;
        self.nodes(&mut e)?;
        self.shards(&mut e)?;
        self.sink(&mut e)
    }
}

impl Scrape {
    /// `process_*` metrics as Prometheus client libraries name them, from `/proc/self`
    /// (Linux; elsewhere none).
    fn process(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(p) = self.process else {
            return Ok(());
        };
        let one = |v: Value| vec![(Labels::new(), v)];
        family(
            e,
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(Unit::Seconds),
            Kind::Counter,
            one(Value::Float(p.cpu_seconds)),
        )?;
        family(
            e,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(Unit::Bytes),
            Kind::Gauge,
            one(Value::Int(p.resident_bytes as i64)),
        )?;
        family(
            e,
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(Unit::Bytes),
            Kind::Gauge,
            one(Value::Int(p.virtual_bytes as i64)),
        )?;
        family(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            Kind::Gauge,
            one(Value::Int(p.open_fds as i64)),
        )?;
        if let Some(max) = p.max_fds {
            family(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                Kind::Gauge,
                one(Value::Int(max as i64)),
            )?;
        }
        if let Some(start) = p.start_time_seconds {
            family(
                e,
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                Kind::Gauge,
                one(Value::Float(start)),
            )?;
        }
        Ok(())
    }

    /// One sample per member for which `f` has a value.
    fn per_node(
        &self,
        f: &dyn Fn(&NodeStats, Option<quorumtail_oplog::Timestamp>) -> Option<Value>,
    ) -> Vec<(Labels, Value)> {
        let mut v = Vec::new();
        for (shard, ns) in &self.nodes {
            let top = newest(ns);
            for (addr, n) in ns {
                if let Some(x) = f(n, top) {
                    v.push((node_labels(shard, addr), x));
                }
            }
        }
        v
    }

    fn per_shard(&self, f: &dyn Fn(&StatsSnapshot) -> Value) -> Vec<(Labels, Value)> {
        self.shards
            .iter()
            .map(|(k, s)| (shard_labels(k), f(s)))
            .collect()
    }

    fn nodes(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        use Kind::{Counter, Gauge};
        let secs = || Some(Unit::Seconds);
        family(
            e,
            "quorumtail_node_up",
            "Whether the member's tailer is reading its oplog (1) or interrupted (0).",
            None,
            Gauge,
            self.per_node(&|n, _| Some((n.state == "tailing").into())),
        )?;
        family(
            e,
            "quorumtail_node_last_entry_timestamp",
            "ts (seconds) of the newest oplog entry the member reported.",
            secs(),
            Gauge,
            self.per_node(&|n, _| n.last_ts.map(|t| t.time.into())),
        )?;
        family(
            e,
            "quorumtail_node_lag",
            "How far the member's newest reported entry is behind the newest entry any member of its shard reported.",
            secs(),
            Gauge,
            // A member that never reported has no lag to show (not "since 1970").
            self.per_node(&|n, top| Some(top?.time.saturating_sub(n.last_ts?.time).into())),
        )?;
        family(
            e,
            "quorumtail_node_reconnects",
            "Times the member's tailer was interrupted and reconnected.",
            None,
            Counter,
            self.per_node(&|n, _| Some(n.interruptions.into())),
        )?;
        family(
            e,
            "quorumtail_node_read",
            "Bytes of oplog replies received from the member (whole entries or identities).",
            Some(Unit::Bytes),
            Counter,
            self.per_node(&|n, _| Some(n.bytes_read.into())),
        )?;
        family(
            e,
            "quorumtail_node_reading_whole_entries",
            "Whether the member's stream holds whole entries (1) or identities only (0).",
            None,
            Gauge,
            self.per_node(&|n, _| Some((n.reading == "whole entries").into())),
        )?;
        family(
            e,
            "quorumtail_node_voter",
            "Whether the member's reports count towards the quorum (votes: 1 in the replica set configuration).",
            None,
            Gauge,
            self.per_node(&|n, _| Some(n.voter.into())),
        )?;
        family(
            e,
            "quorumtail_node_hidden",
            "Whether the member is hidden in the replica set configuration (read although hello and config.shards omit it).",
            None,
            Gauge,
            self.per_node(&|n, _| Some(n.hidden.into())),
        )?;
        family(
            e,
            "quorumtail_node_commit_point_timestamp",
            "ts (seconds) of the member's view of MongoDB's commit point, confirmed against its stream.",
            secs(),
            Gauge,
            self.per_node(&|n, _| n.commit_point_ts.map(|t| t.time.into())),
        )?;
        let mut headroom = Vec::new();
        for (shard, ns) in &self.nodes {
            let Some(cp) = self.checkpoints.get(shard) else {
                continue;
            };
            for (addr, n) in ns {
                if let Some(o) = n.oldest_ts {
                    headroom.push((
                        node_labels(shard, addr),
                        Value::Int(i64::from(*cp) - i64::from(o.time)),
                    ));
                }
            }
        }
        family(
            e,
            "quorumtail_node_oplog_headroom",
            "Checkpoint minus the member's oldest oplog entry: how long quorumtail may stay stopped before this member no longer holds the resume point.",
            secs(),
            Gauge,
            headroom,
        )
    }

    fn shards(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        use Kind::{Counter, Gauge};
        let secs = || Some(Unit::Seconds);
        family(
            e,
            "quorumtail_shard_awaiting_commit_point",
            "Whether the next entry a quorum of voters holds waits for MongoDB's commit point (1).",
            None,
            Gauge,
            self.per_shard(&|s| s.awaiting_commit_point.into()),
        )?;
        family(
            e,
            "quorumtail_shard_commit_point_waits",
            "Times the release waited for MongoDB's commit point after a quorum of voters held the next entry.",
            None,
            Counter,
            self.per_shard(&|s| s.commit_waits.into()),
        )?;
        family(
            e,
            "quorumtail_shard_commit_point_wait",
            "Total time the release waited for MongoDB's commit point.",
            secs(),
            Counter,
            self.per_shard(&|s| Value::Float(s.commit_wait_micros as f64 / 1e6)),
        )?;
        family(
            e,
            "quorumtail_shard_arbiters",
            "Arbiters in the replica set configuration (they vote, hold no oplog).",
            None,
            Gauge,
            self.per_shard(&|s| s.arbiters.into()),
        )?;
        family(
            e,
            "quorumtail_shard_committed_timestamp",
            "ts (seconds) of the last entry a quorum confirmed (the merge watermark).",
            secs(),
            Gauge,
            self.per_shard(&|s| s.watermark_seconds.into()),
        )?;
        family(
            e,
            "quorumtail_shard_checkpoint_timestamp",
            "ts (seconds) of the shard's checkpoint as confirmed by the sink.",
            secs(),
            Gauge,
            self.checkpoints
                .iter()
                .map(|(k, v)| (shard_labels(k), (*v).into()))
                .collect(),
        )?;
        family(
            e,
            "quorumtail_shard_pending_entries",
            "Entries reported by fewer members than the quorum so far.",
            None,
            Gauge,
            self.per_shard(&|s| s.pending.into()),
        )?;
        family(
            e,
            "quorumtail_shard_committed_entries",
            "Entries a quorum of members confirmed.",
            None,
            Counter,
            self.per_shard(&|s| s.committed.into()),
        )?;
        family(
            e,
            "quorumtail_shard_whole_entry_member_changes",
            "Times another member was chosen to send whole entries (the others send identities).",
            None,
            Counter,
            self.per_shard(&|s| s.whole_switches.into()),
        )?;
        family(
            e,
            "quorumtail_shard_discarded_entries",
            "Entries no quorum ever held (rolled back, or seen by a minority only); never emitted.",
            None,
            Counter,
            self.per_shard(&|s| s.discarded.into()),
        )?;
        let mut dropped = Vec::new();
        for (k, s) in &self.shards {
            for (reason, n) in [
                ("from_migrate", s.dropped_from_migrate),
                ("noop", s.dropped_noops),
                ("internal_namespace", s.dropped_internal),
                ("pattern", s.dropped_by_pattern),
                ("aborted_transaction", s.aborted_ops),
            ] {
                let mut labels = shard_labels(k);
                labels.push(("reason", LabelValue(reason.into())));
                dropped.push((labels, n.into()));
            }
        }
        family(
            e,
            "quorumtail_shard_dropped_operations",
            "Committed operations not emitted, by reason.",
            None,
            Counter,
            dropped,
        )?;
        family(
            e,
            "quorumtail_shard_records",
            "Records handed to the sink.",
            None,
            Counter,
            self.per_shard(&|s| s.records.into()),
        )?;
        family(
            e,
            "quorumtail_shard_quorum_available",
            "Whether enough members are being read to confirm entries.",
            None,
            Gauge,
            self.per_shard(&|s| s.quorum_reachable.into()),
        )?;
        let drain = |blocked: bool| -> Vec<(Labels, Value)> {
            self.shards
                .keys()
                .map(|k| {
                    let d = self.draining.get(k).is_some_and(|d| {
                        if blocked {
                            *d == DrainState::Unreachable
                        } else {
                            *d != DrainState::Drained
                        }
                    });
                    (shard_labels(k), d.into())
                })
                .collect()
        };
        family(
            e,
            "quorumtail_shard_draining",
            "Whether the shard was removed and is being drained (1: reading, unreachable or delivering; 0: not removed, or drained).",
            None,
            Gauge,
            drain(false),
        )?;
        family(
            e,
            "quorumtail_shard_drain_blocked",
            "Whether a removed shard cannot be drained because fewer of its members than its quorum answer.",
            None,
            Gauge,
            drain(true),
        )?;
        family(
            e,
            "quorumtail_shard_failed",
            "Whether the shard stopped with a definite error.",
            None,
            Gauge,
            self.per_shard(&|s| s.failed.into()),
        )
    }

    fn sink(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        family(
            e,
            "quorumtail_sink_in_flight_records",
            "Records handed to the sink and not yet confirmed (acknowledged by Kafka or fsynced).",
            None,
            Kind::Gauge,
            self.in_flight
                .map(|n| vec![(Labels::new(), n.into())])
                .unwrap_or_default(),
        )?;
        if let Some(view) = &self.delivery {
            let d = view.delivery();
            d.latency.encode(e.encode_descriptor(
                "quorumtail_sink_delivery",
                "Time from handing a record to the Kafka producer to its acknowledgement (acks=all).",
                Some(&Unit::Seconds),
                d.latency.metric_type(),
            )?)?;
            d.errors.encode(e.encode_descriptor(
                "quorumtail_sink_delivery_errors",
                "Definite delivery errors, by librdkafka error code.",
                None,
                d.errors.metric_type(),
            )?)?;
        }
        family(
            e,
            "quorumtail_sink_failed",
            "Whether the sink stopped with a definite error.",
            None,
            Kind::Gauge,
            vec![(Labels::new(), self.sink_failed.into())],
        )
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

    /// A label value holding quotes, backslashes or a line feed is escaped (the library
    /// writes label values as they are); families carry their type, unit and help.
    #[test]
    fn label_values_are_escaped_and_families_typed() {
        let status = Status::default();
        let stats = status.register(&"sh\"ard\\01".into());
        stats.set_node(
            "a:1\nb",
            NodeStats {
                state: "tailing".into(),
                bytes_read: 7,
                ..Default::default()
            },
        );
        let m = metrics(&status);
        assert!(
            m.lines().any(|l| {
                l
                == "quorumtail_node_read_bytes_total{shard=\"sh\\\"ard\\\\01\",node=\"a:1\\nb\"} 7"
            }),
            "{m}"
        );
        assert!(
            m.contains("quorumtail_shard_records_total{shard=\"sh\\\"ard\\\\01\"} 0\n"),
            "{m}"
        );
        for line in [
            "# TYPE quorumtail_node_read_bytes counter",
            "# UNIT quorumtail_node_read_bytes bytes",
            "# TYPE quorumtail_node_lag_seconds gauge",
            "# UNIT quorumtail_node_lag_seconds seconds",
            "# HELP quorumtail_shard_records Records handed to the sink.",
            "# TYPE quorumtail_build info",
            "# EOF",
        ] {
            assert!(m.lines().any(|l| l == line), "{line:?} in\n{m}");
        }
        // Every sample line is `name[{labels}] value` with a name the README lists.
        for l in m.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(
                name.starts_with("quorumtail_") || name.starts_with("process_"),
                "{l}"
            );
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

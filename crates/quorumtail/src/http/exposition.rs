//! `/metrics`: what the [`Status`] holds at a scrape, encoded by prometheus-client.
//!
//! ```text
//!  Status ─► Scrape::take (one read of every counter) ─► Collector::encode ─► OpenMetrics text
//!  /proc/self ─► ProcessStats ─┘
//! ```
//!
//! Each family is encoded with its type, unit and help; a family's name is given without
//! its unit and without `_total`, which the encoder appends. Label values go through
//! [`LabelValue`], which escapes them (prometheus-client writes them as they are).

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use quorumtail_sink::metrics::LabelValue;

use super::newest;
use crate::pipeline::stats::{NodeStats, StatsSnapshot};
use crate::status::{DrainState, Status};

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

mod snapshot;

/// The content type of [`metrics`].
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reports, read from the [`Status`] once: the collector encodes it.
#[derive(Debug)]
struct Scrape {
    shards: BTreeMap<String, StatsSnapshot>,
    /// Snapshot progress per shard and collection.
    copies: BTreeMap<String, BTreeMap<String, crate::pipeline::stats::CollectionCopy>>,
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
        let copies = shards
            .keys()
            .map(|k| (k.clone(), status.collection_copies(k)))
            .collect();
        Scrape {
            shards,
            copies,
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
        self.snapshots(&mut e)?;
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
                ("ddl_other_shard", s.dropped_ddl_other_shard),
                ("index_build_start", s.dropped_index_build_start),
                ("resharding", s.dropped_resharding),
                ("no_change_event", s.dropped_no_change_event),
                ("aborted_transaction", s.aborted_ops),
                ("in_snapshot", s.in_snapshot),
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
        let mut lookups = Vec::new();
        for (k, s) in &self.shards {
            for (result, n) in [
                ("found", s.lookups.saturating_sub(s.lookups_not_found)),
                ("not_found", s.lookups_not_found),
            ] {
                let mut labels = shard_labels(k);
                labels.push(("result", LabelValue(result.into())));
                lookups.push((labels, n.into()));
            }
        }
        family(
            e,
            "quorumtail_shard_full_document_lookups",
            "Updates whose full document was read ([sink] full_document), by result (not_found: deleted since).",
            None,
            Counter,
            lookups,
        )?;
        family(
            e,
            "quorumtail_shard_undecodable_operations",
            "Operations change-event or Debezium records could not describe, written raw and flagged undecodable ([sink] undecodable = \"raw\").",
            None,
            Counter,
            self.per_shard(&|s| s.undecodable.into()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

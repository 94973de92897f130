//! quorumtail as users run it: the real binary as a subprocess, a config file, a file sink
//! that every run appends to, a file checkpoint store. Killed with SIGKILL or stopped with
//! SIGTERM by the nemesis; each run's byte range of the output is remembered, with the
//! checkpoints stored when it ended.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quorumtail_oplog::EntryId;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Still running (only while the test runs).
    Running,
    /// `kill -9`.
    Killed,
    /// SIGTERM; the exit code.
    Terminated(Option<i32>),
}

/// One run of the binary.
#[derive(Debug, Clone)]
pub struct Run {
    /// Its first byte in the output file.
    pub start: u64,
    /// After its last complete line (a line torn by `kill -9` is cut by the next run).
    pub end: u64,
    pub ended: Ended,
    /// The checkpoint file's content right after it ended.
    pub checkpoints: BTreeMap<String, EntryId>,
}

/// The quorumtail process and its files.
#[derive(Debug)]
pub struct Quorumtail {
    cfg: PathBuf,
    pub out: PathBuf,
    pub checkpoint: PathBuf,
    log: PathBuf,
    /// Where the current run's log starts.
    log_start: u64,
    child: Option<Child>,
    pub runs: Vec<Run>,
}

impl Quorumtail {
    /// Writes the config: discovery through mongos, file sink, file checkpoints.
    pub fn new(dir: &Path, mongos: std::net::SocketAddr) -> Quorumtail {
        let out = dir.join("out.jsonl");
        let checkpoint = dir.join("checkpoints.json");
        let cfg = dir.join("quorumtail.toml");
        let text = format!(
            "[discovery]\nuri = \"mongodb://{mongos}/\"\ninterval = \"200ms\"\n\n\
             [start]\nposition = \"earliest\"\n\n\
             [mongo]\nmax_await = \"100ms\"\n\n\
             [sink]\nkind = \"file\"\npath = {:?}\n\n\
             [checkpoint]\nkind = \"file\"\npath = {:?}\ninterval = \"100ms\"\n\n\
             [pipeline]\nshutdown_timeout = \"20s\"\n",
            out.display().to_string(),
            checkpoint.display().to_string()
        );
        std::fs::write(&cfg, text).unwrap();
        Quorumtail {
            cfg,
            out,
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
        let start = self.runs.last().map_or(0, |r| r.end);
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
            start,
            end: start,
            ended: Ended::Running,
            checkpoints: BTreeMap::new(),
        });
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn ended(&mut self, how: Ended) -> BTreeMap<String, EntryId> {
        let end = complete_len(&self.out);
        let checkpoints = read_checkpoints(&self.checkpoint);
        let run = self.runs.last_mut().expect("a run");
        run.end = end;
        run.ended = how;
        run.checkpoints = checkpoints.clone();
        checkpoints
    }

    /// `kill -9`; returns the checkpoints stored before the kill.
    pub fn kill9(&mut self) -> BTreeMap<String, EntryId> {
        let mut child = self.child.take().expect("quorumtail is running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.ended(Ended::Killed)
    }

    /// SIGTERM, then waits (with a deadline) for it to exit.
    ///
    /// # Errors
    /// When it does not exit in time or exits with a failure.
    pub async fn terminate(&mut self) -> Result<BTreeMap<String, EntryId>, String> {
        // A SIGTERM before the process installed its handler kills it outright: wait
        // until this run started its pipelines.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.started() {
            self.check_alive()?;
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
                self.ended(Ended::Terminated(None));
                return Err("quorumtail did not exit within 40 s of SIGTERM".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.child = None;
        let cps = self.ended(Ended::Terminated(status.code()));
        if status.success() {
            Ok(cps)
        } else {
            Err(format!(
                "quorumtail exited with {status} after SIGTERM\n{}",
                self.log_tail(30)
            ))
        }
    }

    /// Whether the current run logged its first shard pipeline.
    fn started(&self) -> bool {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let from = (self.log_start as usize).min(text.len());
        String::from_utf8_lossy(&text[from..]).contains("shard pipeline started")
    }

    /// An error if the process died on its own.
    pub fn check_alive(&mut self) -> Result<(), String> {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                self.ended(Ended::Terminated(s.code()));
                return Err(format!(
                    "quorumtail exited on its own with {s}\n{}",
                    self.log_tail(30)
                ));
            }
        }
        Ok(())
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

/// The length of the file up to and including its last newline.
pub fn complete_len(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i as u64 + 1)
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

/// Reads the output as it grows (complete lines only) and remembers which identities
/// each shard emitted: what the nemesis waits on.
#[derive(Debug)]
pub struct OutputTail {
    path: PathBuf,
    offset: u64,
    pub seen: HashMap<String, HashSet<EntryId>>,
    pub records: usize,
}

impl OutputTail {
    pub fn new(path: &Path) -> OutputTail {
        OutputTail {
            path: path.to_owned(),
            offset: 0,
            seen: HashMap::new(),
            records: 0,
        }
    }

    /// Reads the complete lines appended since the last call.
    pub fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        for line in buf[..end].split(|b| *b == b'\n') {
            let r: serde_json::Value = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("bad record {:?}: {e}", String::from_utf8_lossy(line)));
            let id: EntryId = serde_json::from_value(r["id"].clone()).expect("record id");
            let shard = r["shard"].as_str().unwrap_or_default().to_owned();
            self.seen.entry(shard).or_default().insert(id);
            self.records += 1;
        }
        self.offset += end as u64 + 1;
    }

    /// The identities of `ids` this shard has not emitted yet.
    pub fn missing(&self, shard: &str, ids: &[EntryId]) -> usize {
        let seen = self.seen.get(shard);
        ids.iter()
            .filter(|id| !seen.is_some_and(|s| s.contains(id)))
            .count()
    }
}

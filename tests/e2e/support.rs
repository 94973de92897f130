//! Shared helpers: start quorumtail on a config text, read its JSON-lines output, wait on
//! conditions with a deadline (never a bare sleep).

use std::path::{Path, PathBuf};
use std::time::Duration;

use quorumtail::config::Config;
use quorumtail::coordinator::{run_observed, RunReport, Status};
use quorumtail_oplog::EntryId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running quorumtail.
pub struct Running {
    pub status: std::sync::Arc<Status>,
    pub token: CancellationToken,
    pub handle: JoinHandle<Result<RunReport, quorumtail::coordinator::RunError>>,
    pub out: PathBuf,
}

impl Running {
    /// Stops it gracefully and returns its report.
    pub async fn stop(self) -> RunReport {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("stops within 30 s")
            .expect("no panic")
            .expect("runs")
    }
}

/// `[[shards]]` sections for a simulated cluster.
pub fn shards_toml(cluster: &mongosim::Cluster) -> String {
    let mut t = String::new();
    for s in cluster.shard_names() {
        let m: Vec<String> = cluster
            .shard_members(&s)
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        t.push_str(&format!(
            "[[shards]]\nname = \"{s}\"\nmembers = [{}]\n\n",
            m.join(", ")
        ));
    }
    t
}

/// Starts quorumtail with `extra` TOML after a file sink to `dir/out.jsonl` and a file
/// checkpoint store in `dir`.
pub fn start(dir: &Path, shards: &str, extra: &str) -> Running {
    start_with_mongo(dir, shards, "", extra)
}

/// As [`start`], with `mongo` TOML lines added to the `[mongo]` section (credentials).
pub fn start_with_mongo(dir: &Path, shards: &str, mongo: &str, extra: &str) -> Running {
    init_logs();
    let out = dir.join("out.jsonl");
    let text = format!(
        "{shards}\n[mongo]\nmax_await = \"100ms\"\n{mongo}\n[sink]\nkind = \"file\"\npath = {:?}\n\n[checkpoint]\npath = {:?}\ninterval = \"100ms\"\n\n{extra}",
        out.display().to_string(),
        dir.join("checkpoints.json").display().to_string()
    );
    let resolved =
        Config::parse(&text, Path::new("e2e.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let token = CancellationToken::new();
    let status = std::sync::Arc::new(Status::default());
    let handle = tokio::spawn(run_observed(resolved, token.clone(), status.clone()));
    Running {
        status,
        token,
        handle,
        out,
    }
}

/// Starts quorumtail on a complete config text (no file output).
pub fn start_text(text: &str) -> Running {
    init_logs();
    let resolved =
        Config::parse(text, Path::new("e2e.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let token = CancellationToken::new();
    let status = std::sync::Arc::new(Status::default());
    let handle = tokio::spawn(run_observed(resolved, token.clone(), status.clone()));
    Running {
        status,
        token,
        handle,
        out: PathBuf::new(),
    }
}

/// Every record in a JSON-lines file (an incomplete last line is left out).
pub fn records(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l:?}: {e}")))
        .collect()
}

/// Waits until `cond` holds, or panics with `what` after `secs`.
pub async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The identity of a record.
pub fn record_id(r: &serde_json::Value) -> EntryId {
    serde_json::from_value(r["id"].clone()).expect("record id")
}

pub use quorumtail_testkit::truth::{
    committed_app_entries, committed_app_entries_discovered, init_logs,
};

/// Identities of a shard's records in output order.
pub fn shard_ids(recs: &[serde_json::Value], shard: &str) -> Vec<EntryId> {
    recs.iter()
        .filter(|r| r["shard"] == shard)
        .map(record_id)
        .collect()
}

/// A plain HTTP GET: (status code, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: quorumtail\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

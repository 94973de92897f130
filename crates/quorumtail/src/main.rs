//! The `quorumtail` command line: `run`, `check`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use quorumtail::{config, coordinator};

use config::{Config, ConfigError, SinkKind, StartPosition};
use tokio_util::sync::CancellationToken;

/// Failover-safe change data capture from MongoDB sharded clusters to Kafka.
///
/// Tails every member of every shard replica set and emits only the oplog entries a
/// majority of the set holds, in order, so rolled-back writes never reach consumers.
#[derive(Debug, Parser)]
#[command(name = "quorumtail", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr: `pretty` (default on a terminal), `compact`, or `json`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Compact,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tail the cluster described by the config file until SIGINT/SIGTERM.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a simulated sharded cluster (2 shards x 3 members) with a workload that
    /// includes a chunk migration and a failover whose rolled-back writes must never be
    /// emitted; tail it and print the records and a summary. Needs a build with the
    /// `demo` feature (the default).
    Demo {
        /// Send records to this Kafka broker instead of stdout.
        #[arg(long)]
        brokers: Option<String>,
        /// Topic template for --brokers.
        #[arg(long, default_value = "quorumtail.{shard}")]
        topic: String,
        /// Application writes before the failover.
        #[arg(long, default_value_t = 20)]
        writes: usize,
    },
    /// Validate a config file and print the resolved topology and quorum per shard.
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Also reach every member (hello, a one-entry oplog read), the discovery
        /// endpoint (listShards) and the Kafka brokers (metadata, topics).
        #[arg(long)]
        connect: bool,
    },
    /// Ask a running quorumtail (with `[http] control = true`) to copy collections again:
    /// each named shard (all when none is named) reads the named collections (all the
    /// filter keeps when none is named) as of the last entry it released, emits them as
    /// `r` records, and streams on. Prints the shards that took the request.
    Snapshot {
        /// The running quorumtail's `[http] listen` address: `http://host:port`.
        #[arg(long)]
        url: String,
        /// A shard to copy (repeatable); all running shards when none is given.
        #[arg(long = "shard")]
        shards: Vec<String>,
        /// A collection, `db.coll` (repeatable); every collection the filter keeps when
        /// none is given.
        #[arg(long = "collection")]
        collections: Vec<String>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "10s")]
        timeout: humantime::Duration,
    },
    /// GET an endpoint of a running quorumtail (for container health checks, where no
    /// HTTP client may be installed): exit 0 on a 2xx answer, 1 otherwise.
    Healthcheck {
        /// `http://host:port/path`, e.g. `http://127.0.0.1:9000/healthz`.
        #[arg(long)]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s")]
        timeout: humantime::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config, connect } => check(&config, connect),
        Command::Healthcheck { url, timeout } => healthcheck(&url, timeout.into()),
        Command::Snapshot {
            url,
            shards,
            collections,
            timeout,
        } => snapshot(&url, &shards, &collections, timeout.into()),
        Command::Run { config } => run(&config),
        Command::Demo {
            brokers,
            topic,
            writes,
        } => demo(brokers, topic, writes),
    }
}

#[cfg(feature = "demo")]
fn demo(brokers: Option<String>, topic: String, writes: usize) -> ExitCode {
    use quorumtail::demo;
    runtime().block_on(demo::demo(demo::DemoOptions {
        brokers,
        topic,
        writes,
    }))
}

/// A production build has no simulator to run the demo on: say so, exit 2.
#[cfg(not(feature = "demo"))]
fn demo(_brokers: Option<String>, _topic: String, _writes: usize) -> ExitCode {
    eprintln!(
        "error: this build of quorumtail has no demo: it was built without the `demo` feature \
         (the simulated cluster it runs on is left out of production builds); build with \
         `cargo build -p quorumtail` (the feature is on by default) to run it"
    );
    ExitCode::from(2)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("quorumtail")
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1)
        })
}

fn init_logging(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Compact
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Compact => builder.compact().with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// SIGINT/SIGTERM cancel `token`; SIGUSR1 asks for a checkpoint now; SIGHUP re-reads the
/// config file and, when it is valid, applies its topology (a bad file is logged and the
/// running topology kept).
fn on_signals(
    token: CancellationToken,
    path: std::path::PathBuf,
    commands: tokio::sync::mpsc::Sender<coordinator::Command>,
) {
    // The handlers are installed here, before anything else runs: a signal that arrives
    // while the pipeline starts is still handled gracefully.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term), Ok(mut usr1), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::user_defined1()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                    _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                    _ = usr1.recv() => {
                        tracing::info!("SIGUSR1: storing checkpoints now");
                        let _ = commands.send(coordinator::Command::ForceCheckpoint).await;
                    }
                    _ = hup.recv() => match Config::load(&path) {
                        Ok(new) => {
                            tracing::info!(path = %path.display(), "SIGHUP: configuration re-read and valid");
                            let _ = commands.send(coordinator::Command::Reload(Box::new(new))).await;
                        }
                        Err(e) => tracing::error!("SIGHUP: the configuration was rejected, keeping the running topology: {e}"),
                    },
                }
            }
            token.cancel();
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (path, commands);
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
        });
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let resolved = match Config::load(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &resolved.warnings {
        tracing::warn!("{w}");
    }
    runtime().block_on(async move {
        let token = CancellationToken::new();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        on_signals(token.clone(), path.to_owned(), tx);
        match coordinator::run_controlled(resolved, token, Default::default(), rx).await {
            Ok(report) if report.ok() => {
                tracing::info!(checkpoints = ?report.checkpoints, "stopped cleanly");
                ExitCode::SUCCESS
            }
            Ok(report) => {
                for f in report.failed.iter().chain(&report.sink_failures) {
                    tracing::error!("{f}");
                }
                ExitCode::from(1)
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::from(1)
            }
        }
    })
}

fn snapshot(
    url: &str,
    shards: &[String],
    collections: &[String],
    timeout: std::time::Duration,
) -> ExitCode {
    let enc = |v: &str| -> String {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let query: Vec<String> = shards
        .iter()
        .map(|s| format!("shard={}", enc(s)))
        .chain(collections.iter().map(|c| format!("collection={}", enc(c))))
        .collect();
    let target = format!(
        "{}/snapshot{}{}",
        url.trim_end_matches('/'),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    match quorumtail::http::post(&target, timeout) {
        Ok((202, body)) => {
            let took = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["accepted"].as_array().cloned())
                .unwrap_or_default();
            let names: Vec<&str> = took.iter().filter_map(|v| v.as_str()).collect();
            println!(
                "snapshot requested on {}; progress on /status (snapshotting, snapshot_documents) and in the log",
                names.join(", ")
            );
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            let why = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(body);
            eprintln!("error: {code}: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn healthcheck(url: &str, timeout: std::time::Duration) -> ExitCode {
    match quorumtail::http::get(url, timeout) {
        Ok((code, body)) => {
            let first = body.lines().next().unwrap_or("");
            if (200..300).contains(&code) {
                println!("{url}: {code} {first}");
                ExitCode::SUCCESS
            } else {
                eprintln!("{url}: {code}\n{body}");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &std::path::Path, connect: bool) -> ExitCode {
    let resolved = match Config::load(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            if matches!(e, ConfigError::Invalid { .. } | ConfigError::Parse { .. }) {
                eprintln!("hint: every key is described in the README's configuration section");
            }
            return ExitCode::from(2);
        }
    };
    println!("{}: OK", path.display());
    for s in &resolved.shards {
        let voters = s.members.len() + s.arbiters;
        println!(
            "shard {}: quorum {} of {} data-bearing member(s) (majority of {} voter(s){})",
            s.name,
            s.quorum.quorum,
            s.members.len(),
            voters,
            if s.arbiters > 0 {
                format!(", {} arbiter(s)", s.arbiters)
            } else {
                String::new()
            }
        );
        println!("  (as listed; at run time the replica set's configuration decides: every data-bearing member including hidden ones, who votes, and writeMajorityCount; `check --connect` shows it)");
        for m in &s.members {
            println!("  member {m}");
        }
    }
    let c = &resolved.config;
    if let Some(d) = &c.discovery {
        println!(
            "discovery: {} every {} (shards found there are tailed too)",
            config::redact_uri(&d.uri),
            d.interval
        );
    }
    let start = match resolved.start {
        StartPosition::Latest => "latest".to_owned(),
        StartPosition::Earliest => "earliest".to_owned(),
        StartPosition::After(ts) => format!("after {ts}"),
        StartPosition::Snapshot => {
            "snapshot of the existing documents, then their changes".to_owned()
        }
    };
    println!("start: {start} (for shards without a checkpoint)");
    let f = &resolved.filter;
    let list = |l: &[quorumtail_oplog::filter::NsPattern]| {
        let quoted: Vec<String> = l.iter().map(|p| format!("{:?}", p.as_str())).collect();
        format!("[{}]", quoted.join(", "))
    };
    println!(
        "filter: drop_from_migrate = {}, drop_noops = {}, drop_internal = {}, include = {}, exclude = {}",
        f.drop_from_migrate,
        f.drop_noops,
        f.drop_internal,
        list(&f.include),
        list(&f.exclude)
    );
    match c.sink.kind {
        SinkKind::File => println!("sink: file {}", c.sink.path().display()),
        SinkKind::Kafka => println!(
            "sink: kafka brokers = {}, topic = {}, key = {}",
            c.sink.brokers(),
            c.sink.topic(),
            c.sink.key.as_str()
        ),
    }
    match c.checkpoint.kind {
        config::CheckpointKind::File => println!(
            "checkpoint: file {} every {}",
            c.checkpoint.path.display(),
            humantime::format_duration(c.checkpoint.interval)
        ),
        config::CheckpointKind::Kafka => println!(
            "checkpoint: kafka topic {} every {}",
            c.checkpoint.topic,
            humantime::format_duration(c.checkpoint.interval)
        ),
    }
    for w in &resolved.warnings {
        println!("warning: {w}");
    }
    if !connect {
        return ExitCode::SUCCESS;
    }
    let report = runtime().block_on(quorumtail::preflight::connect(&resolved));
    for ok in &report.ok {
        println!("connect: ok: {ok}");
    }
    for w in &report.warnings {
        println!("connect: warning: {w}");
    }
    if report.problems.is_empty() {
        println!("connect: OK");
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {} connection problem(s):", report.problems.len());
    for p in &report.problems {
        eprintln!("  - {p}");
    }
    ExitCode::from(1)
}

//! `quorumtail`: failover-safe change data capture from MongoDB sharded clusters to Kafka.
//!
//! This binary wires the pieces together: the configuration ([`config`]), and the
//! commands users run (`check`, and the pipeline commands as they land).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;

use config::{Config, ConfigError, SinkKind, StartPosition};

/// Failover-safe change data capture from MongoDB sharded clusters to Kafka.
///
/// Tails every member of every shard replica set and emits only the oplog entries a
/// majority of the set holds, in order, so rolled-back writes never reach consumers.
#[derive(Debug, Parser)]
#[command(name = "quorumtail", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file and print the resolved topology and quorum per shard.
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
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
        for m in &s.members {
            println!("  member {m}");
        }
    }
    let c = &resolved.config;
    if let Some(d) = &c.discovery {
        println!(
            "discovery: {} every {:?} (shards found there are tailed too)",
            config::redact_uri(&d.uri),
            resolved.discovery_interval
        );
    }
    let start = match resolved.start {
        StartPosition::Latest => "latest".to_owned(),
        StartPosition::Earliest => "earliest".to_owned(),
        StartPosition::After(ts) => format!("after {ts}"),
    };
    println!("start: {start} (for shards without a checkpoint)");
    let f = &resolved.filter;
    println!(
        "filter: drop fromMigrate={} noops={} internal={} include={:?} exclude={:?}",
        f.drop_from_migrate,
        f.drop_noops,
        f.drop_internal,
        f.include.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        f.exclude.iter().map(|p| p.as_str()).collect::<Vec<_>>()
    );
    match c.sink.kind {
        SinkKind::File => println!("sink: file {}", c.sink.path.as_deref().unwrap_or("-")),
        SinkKind::Kafka => println!(
            "sink: kafka brokers={} topic={} key={:?}",
            c.sink.brokers.as_deref().unwrap_or(""),
            c.sink.topic.as_deref().unwrap_or(config::DEFAULT_TOPIC),
            c.sink.key
        ),
    }
    match c.checkpoint.kind {
        config::CheckpointKind::File => println!(
            "checkpoint: file {} every {:?}",
            c.checkpoint.path, resolved.checkpoint_interval
        ),
        config::CheckpointKind::Kafka => println!(
            "checkpoint: kafka topic {} every {:?}",
            c.checkpoint.topic, resolved.checkpoint_interval
        ),
    }
    for w in &resolved.warnings {
        println!("warning: {w}");
    }
    ExitCode::SUCCESS
}

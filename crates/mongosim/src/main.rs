//! `mongosim`: start a simulated replica set or sharded cluster, like mlaunch.
//!
//! ```text
//! mongosim --sharded 2 --replicaset --nodes 3 --port 27017
//! mongosim --replicaset --nodes 3 --version 4.4 --noop-interval 100ms
//! mongosim --fixture mlaunch-fixtures/sharded-migration --layout-json /tmp/layout.json
//! mongosim --replicaset --members voter,voter,voter,hidden,arbiter
//! mongosim --replicaset --tls-certificate-key-file server.pem --tls-ca-file ca.pem
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mongosim::membership::{parse_member_list, MemberSpec};
use mongosim::{Cluster, ClusterSpec, ServerVersion, SimRole, SimUser, TlsSpec};

/// The value of `--members` (one argument holding the whole list).
#[derive(Debug, Clone)]
struct MemberList(Vec<MemberSpec>);

fn parse_members(s: &str) -> Result<MemberList, String> {
    let members = parse_member_list(s)?;
    if members.is_empty() {
        return Err("--members needs at least one member kind".into());
    }
    Ok(MemberList(members))
}

/// Start a simulated MongoDB deployment on 127.0.0.1 and run until SIGINT/SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "mongosim")]
struct Args {
    /// Number of shards (starts mongos + config servers too).
    #[arg(long)]
    sharded: Option<usize>,
    /// Shards (or the single deployment) are replica sets (always true; accepted for
    /// mlaunch compatibility).
    #[arg(long)]
    replicaset: bool,
    /// Members per replica set (plain voters; see --members for other kinds).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Member kinds of every shard replica set (or of the replica set), comma-separated;
    /// replaces --nodes. Kinds: voter (votes 1, priority 1), passive (priority 0), hidden
    /// (hidden voter, priority 0), nonvoter (votes 0, priority 0), hidden-nonvoter, arbiter
    /// (votes, no data), delayed:SECS (hidden voter applying entries SECS late). Validated
    /// as mongod validates a config: at most 7 voters, at least one voter with priority > 0,
    /// one arbiter at most from 6.0 on. Example: voter,voter,voter,hidden,arbiter
    #[arg(long, value_parser = parse_members)]
    members: Option<MemberList>,
    /// How long secondaries take to learn the commit point from their sync source or the
    /// primary (their hello lastWrite.majorityOpTime trails the primary's by this much).
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    commit_point_delay: Duration,
    /// Config server members.
    #[arg(long, default_value_t = 1)]
    config: usize,
    /// First port (mongos when sharded); 0 = ephemeral ports.
    #[arg(long, default_value_t = 27017)]
    port: u16,
    /// Simulated release: legacy, 4.4, 5.0, 6.0, 7.0, 8.0.
    #[arg(long)]
    version: Option<ServerVersion>,
    /// Replica set name when not sharded.
    #[arg(long, default_value = "replset")]
    name: String,
    /// Preload oplogs from DIR/fixture.toml (topology comes from the fixture).
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Idle interval of the primary's periodic no-op.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    noop_interval: Duration,
    /// Election timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    election_timeout: Duration,
    /// Cap each oplog at this many entries.
    #[arg(long)]
    oplog_max_entries: Option<usize>,
    /// Cap each oplog at this many bytes (default 64 MiB, so long demos stay bounded).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    oplog_max_bytes: usize,
    /// A user on admin, NAME:PASSWORD:ROLE[,ROLE...] with roles root, clusterMonitor,
    /// read@DB, readWrite@DB (repeat for more users). Any user turns authentication on
    /// (SCRAM-SHA-1 and SCRAM-SHA-256). Example: --user tail:secret:read@local,clusterMonitor
    #[arg(long = "user", value_parser = parse_user)]
    users: Vec<SimUser>,
    /// Require TLS on every process (mongod's `--tlsMode requireTLS`) with the server
    /// certificate and private key in this PEM file (mongod's `--tlsCertificateKeyFile`).
    #[arg(long, alias = "tlsCertificateKeyFile")]
    tls_certificate_key_file: Option<PathBuf>,
    /// With --tls-certificate-key-file: clients must present a certificate signed by a CA
    /// in this PEM file (mongod's `--tlsCAFile`).
    #[arg(long, alias = "tlsCAFile", requires = "tls_certificate_key_file")]
    tls_ca_file: Option<PathBuf>,
    /// With --tls-ca-file: clients may connect without a certificate (mongod's
    /// `--tlsAllowConnectionsWithoutCertificates`).
    #[arg(
        long,
        alias = "tlsAllowConnectionsWithoutCertificates",
        requires = "tls_ca_file"
    )]
    tls_allow_connections_without_certificates: bool,
    /// Write the layout as JSON to this file once every process listens.
    #[arg(long)]
    layout_json: Option<PathBuf>,
}

fn parse_user(s: &str) -> Result<SimUser, String> {
    // The password is everything between the first and the last colon.
    let Some(((name, password), roles)) = s
        .split_once(':')
        .and_then(|(n, rest)| rest.rsplit_once(':').map(|(p, r)| ((n, p), r)))
    else {
        return Err(format!("'{s}': expected NAME:PASSWORD:ROLE[,ROLE...]"));
    };
    let roles = roles
        .split(',')
        .filter(|r| !r.is_empty())
        .map(SimRole::parse)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SimUser::new(name, password, roles))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let spec = ClusterSpec {
        shards: args.sharded.unwrap_or(0),
        nodes_per_shard: args.nodes,
        config_servers: args.config,
        base_port: args.port,
        version: args.version.unwrap_or_default(),
        noop_interval: args.noop_interval,
        election_timeout: args.election_timeout,
        oplog_max_entries: args.oplog_max_entries,
        oplog_max_bytes: Some(args.oplog_max_bytes),
        replica_set_name: args.name.clone(),
        members: args.members.clone().map(|m| m.0),
        commit_point_delay: args.commit_point_delay,
        users: args.users.clone(),
        tls: args
            .tls_certificate_key_file
            .clone()
            .map(|certificate_key_file| TlsSpec {
                certificate_key_file,
                ca_file: args.tls_ca_file.clone(),
                allow_connections_without_certificates: args
                    .tls_allow_connections_without_certificates,
            }),
        ..ClusterSpec::default()
    };
    let cluster = match &args.fixture {
        Some(dir) => Cluster::start_with_fixture(spec, dir).await?,
        None => Cluster::start(spec).await?,
    };
    let layout = cluster.layout();
    for p in &layout.processes {
        let set = if p.set.is_empty() {
            String::new()
        } else {
            format!(" {}", p.set)
        };
        println!("{:<8} {}{}", p.role, p.addr, set);
    }
    if let Some(path) = &args.layout_json {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&layout)?)?;
        std::fs::rename(&tmp, path)?;
    }
    println!("ready {}", cluster.uri());
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    cluster.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

//! `quorumtail check --connect`: reaches everything a run needs and checks the rights it
//! needs, reporting every failure at once with the member or broker and the fix.
//!
//! ```text
//!  [discovery] uri ──► listShards (or config.shards) ──┐
//!  [[shards]] members ─────────────────────────────────┼─► per member: hello, find local.oplog.rs limit 1
//!  [sink] brokers ──► metadata ──► topics known up front (and the checkpoint topic)
//! ```
//!
//! quorumtail needs these rights: a member's `hello` (membership, primary, commit point),
//! `find` on `local.oplog.rs`, `replSetGetConfig` (votes, hidden members; `clusterMonitor`
//! has it; without it `replSetGetStatus`, with less), and `listShards` (or `find` on
//! `config.shards`) for discovery. Per shard, `check --connect` prints the live membership
//! it read (voters, hidden and non-voting members, arbiters, the write majority), the
//! quorum quorumtail will use, and the configured members `[[shards]]` does not list.

use std::time::Duration;

use bson::doc;
use futures::future::join_all;

use crate::config::{redact_uri, CheckpointKind, Resolved, SinkKind};
use crate::discovery::{Discovery, MemberAccess};
use quorumtail_tailer::{ConfigSource, ReplicaSetConfig};

/// What `check --connect` found: lines that passed and problems.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per check that passed.
    pub ok: Vec<String>,
    /// Findings that do not stop a run but an operator should know (a quorum below the
    /// replica set's write majority, configured members missing from the list, no right to
    /// read the configuration).
    pub warnings: Vec<String>,
    /// One line per failure: what, where, and the fix.
    pub problems: Vec<String>,
}

/// How long one member or broker may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every check.
pub async fn connect(cfg: &Resolved) -> Report {
    let c = &cfg.config;
    let mut report = Report::default();
    let access = c.mongo.access();
    // (shard, replica set name if known, member)
    let mut members: Vec<(String, Option<String>, String)> = cfg
        .shards
        .iter()
        .flat_map(|s| {
            s.members
                .iter()
                .map(|m| (s.name.clone(), Some(s.name.clone()), m.clone()))
        })
        .collect();
    let mut shard_names: Vec<String> = cfg.shards.iter().map(|s| s.name.clone()).collect();

    if let Some(d) = &c.discovery {
        let uri = redact_uri(&d.uri);
        match Discovery::connect(&d.uri, access.clone()).await {
            Err(e) => report.problems.push(format!("discovery.uri {uri}: {e}")),
            Ok(discovery) => {
                match discovery.shards().await {
                    Ok(found) => {
                        report.ok.push(format!(
                            "discovery {uri}: {} shard(s) listed",
                            found.len()
                        ));
                        for s in found {
                            if shard_names.iter().any(|n| **n == *s.name) {
                                continue; // a static definition wins
                            }
                            shard_names.push(s.name.to_string());
                            for m in &s.members {
                                members.push((
                                    s.name.to_string(),
                                    s.replica_set.clone(),
                                    m.clone(),
                                ));
                            }
                        }
                    }
                    Err(e) => report.problems.push(format!(
                        "discovery {uri}: cannot list the shards ({e}); check that it is a mongos or a config server that this host reaches, and that the user may run listShards (built-in role clusterMonitor) or read config.shards"
                    )),
                }
                discovery.close().await;
            }
        }
    }

    let checks = members
        .iter()
        .map(|(shard, set, member)| check_member(shard, set.as_deref(), member, &access));
    // Per shard, the newest configuration a member reported, and the names the listed
    // members give themselves.
    let mut live: std::collections::BTreeMap<String, (ReplicaSetConfig, Vec<String>)> =
        Default::default();
    for ((shard, _, _), r) in members.iter().zip(join_all(checks).await) {
        match r {
            Ok((line, cfg, me)) => {
                report.ok.push(line);
                let entry = live.entry(shard.clone());
                match (entry, cfg) {
                    (std::collections::btree_map::Entry::Vacant(v), Some(c)) => {
                        v.insert((c, me.into_iter().collect()));
                    }
                    (std::collections::btree_map::Entry::Occupied(mut o), c) => {
                        let (known, names) = o.get_mut();
                        names.extend(me);
                        if let Some(c) = c {
                            if c.newer_than(known) {
                                *known = c;
                            }
                        }
                    }
                    (std::collections::btree_map::Entry::Vacant(_), None) => {}
                }
            }
            Err(problem) => report.problems.push(problem),
        }
    }
    for (shard, (c, names)) in &live {
        let listed = cfg.shards.iter().any(|s| &s.name == shard);
        let (line, warnings) =
            describe_membership(shard, c, names, c_listed_quorum(cfg, shard), listed);
        report.ok.push(line);
        report.warnings.extend(warnings);
    }

    if c.sink.kind == SinkKind::Kafka {
        let brokers = c.sink.brokers().to_owned();
        let mut topics = quorumtail_sink::preflight::known_topics(&c.sink.topic(), &shard_names);
        if c.checkpoint.kind == CheckpointKind::Kafka {
            topics.push((c.checkpoint.topic.clone(), "checkpoints".into()));
        }
        let problems = quorumtail_sink::preflight::brokers_and_topics(
            &brokers,
            &c.sink.librdkafka,
            &topics,
            TIMEOUT,
        )
        .await;
        if problems.is_empty() {
            report.ok.push(format!(
                "kafka {brokers}: metadata answered{}",
                if topics.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; topic(s) {} exist",
                        topics
                            .iter()
                            .map(|(t, _)| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ));
        }
        report.problems.extend(problems);
    }
    report
}

/// An explicit `[[shards]] quorum`, if the shard sets one.
fn c_listed_quorum(cfg: &Resolved, shard: &str) -> Option<usize> {
    cfg.config
        .shards
        .iter()
        .find(|s| s.name == shard)
        .and_then(|s| s.quorum)
}

/// The live membership of one shard as an operator reads it, and what deserves a warning.
pub fn describe_membership(
    shard: &str,
    c: &ReplicaSetConfig,
    listed_names: &[String],
    explicit_quorum: Option<usize>,
    listed: bool,
) -> (String, Vec<String>) {
    let (voters, non_voters, arbiters) = c.voting();
    let hidden = c.data_bearing().filter(|m| m.hidden).count();
    let delayed = c.data_bearing().filter(|m| m.delay_secs > 0).count();
    let wm = c.write_majority();
    let quorum = explicit_quorum.unwrap_or(wm);
    let source = match c.source {
        ConfigSource::GetConfig => format!("replSetGetConfig v{} term {}", c.version, c.term),
        ConfigSource::GetStatus => "replSetGetStatus (votes unknown)".to_owned(),
    };
    let mut line = format!(
        "shard {shard}: live membership ({source}): {} data-bearing member(s): {voters} voter(s), {non_voters} non-voter(s), {hidden} hidden, {delayed} delayed; {arbiters} arbiter(s); write majority {wm}; quorum {quorum}{}",
        voters + non_voters,
        if explicit_quorum.is_some() { " (explicit)" } else { " (the write majority)" },
    );
    let mut warnings = Vec::new();
    let unlisted: Vec<String> = c
        .data_bearing()
        .filter(|m| !listed_names.iter().any(|n| n == &m.host))
        .map(|m| {
            let mut kind = vec![if m.voter { "voter" } else { "non-voter" }];
            if m.hidden {
                kind.push("hidden");
            }
            if m.delay_secs > 0 {
                kind.push("delayed");
            }
            format!("{} ({})", m.host, kind.join(", "))
        })
        .collect();
    if !unlisted.is_empty() {
        line.push_str(&format!(
            "; read although not listed: {}",
            unlisted.join(", ")
        ));
    }
    if !unlisted.is_empty() && listed {
        warnings.push(format!(
            "shard {shard}: the replica set has member(s) that are not listed: {}; quorumtail reads them too (they count for the write majority); list them to make the configuration say so",
            unlisted.join(", ")
        ));
    }
    if let Some(q) = explicit_quorum {
        if q < wm {
            warnings.push(format!(
                "shard {shard}: quorum {q} is below the replica set's write majority {wm}: with [pipeline] release = \"quorum\" entries MongoDB later rolls back can be emitted; remove `quorum` to use the write majority"
            ));
        }
    }
    if c.source == ConfigSource::GetStatus {
        warnings.push(format!(
            "shard {shard}: replSetGetConfig is not permitted, so who votes is unknown (non-voting members are counted as voters); grant the clusterMonitor role"
        ));
    }
    (line, warnings)
}

/// `hello`, a one-entry read of the oplog and the replica set configuration, as a tailer
/// does them: the line to print, the configuration (if readable) and the member's own name.
async fn check_member(
    shard: &str,
    set: Option<&str>,
    member: &str,
    access: &MemberAccess,
) -> Result<(String, Option<ReplicaSetConfig>, Option<String>), String> {
    let at = format!("shard {shard} member {member}");
    let uri = format!(
        "mongodb://{member}/?directConnection=true&appName=quorumtail-check&serverSelectionTimeoutMS={}&connectTimeoutMS={}",
        TIMEOUT.as_millis(),
        TIMEOUT.as_millis()
    );
    let opts = access.client_options(&uri).await.map_err(|e| {
        format!("{at}: cannot build a connection string ({e}); check [mongo] uri_options")
    })?;
    let client = mongodb::Client::with_options(opts)
        .map_err(|e| format!("{at}: {e}; check [mongo] uri_options"))?;
    let result = probe(&client, &at, set, member, access).await;
    quorumtail_tailer::close(client).await;
    result
}

async fn probe(
    client: &mongodb::Client,
    at: &str,
    set: Option<&str>,
    member: &str,
    access: &MemberAccess,
) -> Result<(String, Option<ReplicaSetConfig>, Option<String>), String> {
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(|e| format!("{at}: {}", why(&e, access, member)))?;
    if hello.get_bool("arbiterOnly").unwrap_or(false) {
        return Err(format!("{at}: is an arbiter (no oplog); list it as an arbiter (`arbiters` count), not under `members`"));
    }
    if hello.get_str("msg").ok() == Some("isdbgrid") {
        return Err(format!(
            "{at}: is a mongos; list the shard's replica set members instead"
        ));
    }
    let actual = hello.get_str("setName").ok();
    match (actual, set) {
        (None, _) => {
            return Err(format!(
                "{at}: is not a replica set member (no setName in hello), so it has no oplog to tail; list the members of the shard's replica set"
            ))
        }
        (Some(a), Some(want)) if a != want => {
            return Err(format!(
                "{at}: belongs to replica set {a:?}, not {want:?}; fix the shard's name or its member list"
            ))
        }
        _ => {}
    }
    let oplog = client
        .database("local")
        .collection::<bson::Document>("oplog.rs");
    match oplog.find_one(doc! {}).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(format!("{at}: its oplog (local.oplog.rs) is empty or missing; is it a replica set member that was initiated?")),
        Err(e) => return Err(format!("{at}: cannot read local.oplog.rs: {}", why(&e, access, member))),
    }
    let role = if hello
        .get_bool("isWritablePrimary")
        .or_else(|_| hello.get_bool("ismaster"))
        .unwrap_or(false)
    {
        "primary"
    } else {
        "secondary"
    };
    let me = hello.get_str("me").ok().map(str::to_owned);
    let admin = client.database("admin");
    let config = match admin.run_command(doc! { "replSetGetConfig": 1 }).await {
        Ok(reply) => quorumtail_tailer::membership::parse_get_config(&reply).ok(),
        Err(_) => match admin.run_command(doc! { "replSetGetStatus": 1 }).await {
            Ok(reply) => quorumtail_tailer::membership::parse_get_status(
                &reply,
                quorumtail_tailer::membership::set_version(&hello).unwrap_or(0),
            )
            .ok(),
            Err(_) => None,
        },
    };
    let commit = quorumtail_tailer::membership::commit_reading(&hello)
        .map(|r| format!(", commit point {}", r.committed))
        .unwrap_or_else(|| ", no commit point in hello".to_owned());
    Ok((
        format!(
            "{at}: answers ({role} of {}{commit}), local.oplog.rs readable{}",
            actual.unwrap_or("?"),
            if config.is_some() {
                ", replica set configuration readable"
            } else {
                "; the replica set configuration is NOT readable (replSetGetConfig and replSetGetStatus refused)"
            }
        ),
        config,
        me,
    ))
}

/// A driver error with the fix an operator needs.
fn why(e: &mongodb::error::Error, access: &MemberAccess, member: &str) -> String {
    use mongodb::error::ErrorKind;
    let user = match &access.username {
        Some(u) => format!("the user {u:?}"),
        None => "no user ([mongo] username is not set)".to_owned(),
    };
    if let Some(tls) = quorumtail_tailer::tls_refusal(access, member, e) {
        return tls;
    }
    match &*e.kind {
        ErrorKind::Command(c) if c.code == 13 => format!(
            "{} ({}): {user} lacks a privilege; grant it read on the local database (the oplog, e.g. the role {{role: \"read\", db: \"local\"}}) and clusterMonitor (replSetGetConfig, replSetGetStatus)",
            c.code_name,
            c.message,
        ),
        ErrorKind::Command(c) if c.code == 18 => format!(
            "authentication failed for {user} ({}: {}); check [mongo] username and password or password_file, and authSource in [mongo] uri_options (default admin)",
            c.code_name, c.message
        ),
        ErrorKind::Command(c) => format!("{} ({}): {}", c.code_name, c.code, c.message),
        ErrorKind::Authentication { message, .. } => format!(
            "authentication failed for {user} ({message}); check [mongo] username and password or password_file, and authSource in [mongo] uri_options (default admin)"
        ),
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) => format!(
            "unreachable within {} s; check that it runs and that this host can reach it{}",
            TIMEOUT.as_secs(),
            if access.tls.is_none() {
                "; if the members require TLS, set [mongo] tls = true (and tls_ca_file)"
            } else {
                "; [mongo] tls is on: check that the members accept TLS"
            }
        ),
        _ => e.to_string(),
    }
}

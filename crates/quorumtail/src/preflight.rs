//! `quorumtail check --connect`: reaches everything a run needs and checks the rights it
//! needs, reporting every failure at once with the member or broker and the fix.
//!
//! ```text
//!  [discovery] uri ──► listShards (or config.shards) ──┐
//!  [[shards]] members ─────────────────────────────────┼─► per member: hello, find local.oplog.rs limit 1
//!  [sink] brokers ──► metadata ──► topics known up front (and the checkpoint topic)
//! ```
//!
//! quorumtail needs no more rights than these: a member's `hello` (membership, primary),
//! `find` on `local.oplog.rs`, and `listShards` (or `find` on `config.shards`) for
//! discovery. It does not run `replSetGetStatus` or `replSetGetConfig`.

use std::time::Duration;

use bson::doc;
use futures::future::join_all;

use crate::config::{redact_uri, CheckpointKind, Resolved, SinkKind, DEFAULT_TOPIC};
use crate::coordinator::{Discovery, MemberAccess};

/// What `check --connect` found: lines that passed and problems.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per check that passed.
    pub ok: Vec<String>,
    /// One line per failure: what, where, and the fix.
    pub problems: Vec<String>,
}

/// How long one member or broker may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every check.
pub async fn connect(cfg: &Resolved) -> Report {
    let c = &cfg.config;
    let mut report = Report::default();
    let access = MemberAccess {
        uri_options: c.mongo.uri_options.clone(),
        username: c.mongo.username.clone(),
        password: c.mongo.password.clone(),
    };
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
    for r in join_all(checks).await {
        match r {
            Ok(line) => report.ok.push(line),
            Err(problem) => report.problems.push(problem),
        }
    }

    if c.sink.kind == SinkKind::Kafka {
        let brokers = c.sink.brokers.clone().unwrap_or_default();
        let template = c.sink.topic.as_deref().unwrap_or(DEFAULT_TOPIC);
        let mut topics = match template.parse::<quorumtail_sink::TopicTemplate>() {
            Ok(t) => quorumtail_sink::preflight::known_topics(&t, &shard_names),
            Err(_) => Vec::new(),
        };
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

/// `hello` and a one-entry read of the oplog, as a tailer does them.
async fn check_member(
    shard: &str,
    set: Option<&str>,
    member: &str,
    access: &MemberAccess,
) -> Result<String, String> {
    let at = format!("shard {shard} member {member}");
    let mut uri = format!(
        "mongodb://{member}/?directConnection=true&appName=quorumtail-check&serverSelectionTimeoutMS={}&connectTimeoutMS={}",
        TIMEOUT.as_millis(),
        TIMEOUT.as_millis()
    );
    if !access.uri_options.is_empty() {
        uri.push('&');
        uri.push_str(&access.uri_options);
    }
    let mut opts = mongodb::options::ClientOptions::parse(&uri)
        .await
        .map_err(|e| {
            format!("{at}: cannot build a connection string ({e}); check [mongo] uri_options")
        })?;
    if let Some(user) = &access.username {
        opts.credential = Some(
            mongodb::options::Credential::builder()
                .username(user.clone())
                .password(access.password.clone())
                .build(),
        );
    }
    let client = mongodb::Client::with_options(opts)
        .map_err(|e| format!("{at}: {e}; check [mongo] uri_options"))?;
    let result = probe(&client, &at, set, access).await;
    quorumtail_tailer::close(client).await;
    result
}

async fn probe(
    client: &mongodb::Client,
    at: &str,
    set: Option<&str>,
    access: &MemberAccess,
) -> Result<String, String> {
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(|e| format!("{at}: {}", why(&e, access)))?;
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
        Err(e) => return Err(format!("{at}: cannot read local.oplog.rs: {}", why(&e, access))),
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
    Ok(format!(
        "{at}: answers ({role} of {}), local.oplog.rs readable",
        actual.unwrap_or("?")
    ))
}

/// A driver error with the fix an operator needs.
fn why(e: &mongodb::error::Error, access: &MemberAccess) -> String {
    use mongodb::error::ErrorKind;
    match &*e.kind {
        ErrorKind::Command(c) if c.code == 13 => format!(
            "{} ({}): grant the user {:?} read on the local database (e.g. the role {{role: \"read\", db: \"local\"}})",
            c.code_name,
            c.message,
            access.username.as_deref().unwrap_or("")
        ),
        ErrorKind::Command(c) => format!("{} ({}): {}", c.code_name, c.code, c.message),
        ErrorKind::Authentication { message, .. } => format!(
            "authentication failed ({message}); check [mongo] username and password (and authSource in uri_options)"
        ),
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) => format!(
            "unreachable within {} s; check that it runs, that this host can reach it, and the TLS settings in [mongo] uri_options",
            TIMEOUT.as_secs()
        ),
        _ => e.to_string(),
    }
}

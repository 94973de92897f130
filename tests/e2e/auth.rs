//! Authentication against a replica set with users (mongosim's SCRAM-SHA-256/SHA-1): the
//! right credentials tail as before; a wrong password or a user without read on `local`
//! is a definite refusal of each member, said once, naming the user, and retried only at
//! the longest backoff (counted in saslStart commands, not in time).

use std::time::Duration;

use bson::{doc, Document};
use mongosim::{ReplicaSet, ReplicaSetSpec, SimRole, SimUser};

use crate::support::{
    committed_app_entries, records, shard_ids, start_with_mongo, wait_until, Running,
};

fn users() -> Vec<SimUser> {
    vec![
        SimUser::new(
            "tail",
            "s3cret",
            vec![SimRole::Read("local".into()), SimRole::ClusterMonitor],
        ),
        SimUser::new("app", "apppw", vec![SimRole::ReadWrite("app".into())]),
        SimUser::new("monitor", "m", vec![SimRole::ClusterMonitor]),
    ]
}

async fn secured_set() -> ReplicaSet {
    ReplicaSet::start(ReplicaSetSpec {
        users: users(),
        noop_interval: Duration::from_secs(3600),
        election_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn shards(rs: &ReplicaSet) -> String {
    let m: Vec<String> = rs.members().iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[shards]]\nname = \"{}\"\nmembers = [{}]\n",
        rs.name(),
        m.join(", ")
    )
}

fn mongo(user: &str, password: &str) -> String {
    format!("username = {user:?}\npassword = {password:?}\n")
}

const EARLIEST: &str = "[start]\nposition = \"earliest\"\n";

/// Writes through the primary as the application user, majority-acknowledged.
async fn write(rs: &ReplicaSet, ids: &[&str]) {
    let primary = rs.primary().expect("a primary");
    let c = mongodb::Client::with_uri_str(format!(
        "mongodb://app:apppw@{primary}/?directConnection=true&serverSelectionTimeoutMS=5000"
    ))
    .await
    .unwrap();
    for id in ids {
        c.database("app")
            .collection::<Document>("c")
            .insert_one(doc! {"_id": *id})
            .with_options(
                mongodb::options::InsertOneOptions::builder()
                    .write_concern(mongodb::options::WriteConcern::majority())
                    .build(),
            )
            .await
            .unwrap();
    }
    c.shutdown().await;
}

/// Every member shows a refusal containing `needle`.
fn all_refused(q: &Running, set: &str, members: usize, needle: &str) -> bool {
    let nodes = q.status.nodes(set);
    nodes.len() == members
        && nodes
            .values()
            .all(|n| n.state.starts_with("refused: ") && n.state.contains(needle))
}

/// (a) The user with read on local and clusterMonitor: quorumtail emits exactly the
/// committed history, as without authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_credentials_emit_the_committed_history() {
    let rs = secured_set().await;
    let set = rs.name();
    write(&rs, &["a", "b"]).await;
    let dir = tempfile::tempdir().unwrap();
    let q = start_with_mongo(dir.path(), &shards(&rs), &mongo("tail", "s3cret"), EARLIEST);
    write(&rs, &["c"]).await;
    let want = committed_app_entries(&rs, &set);
    assert!(want.len() >= 3, "the three writes committed: {want:?}");
    wait_until(30, "quorumtail emits the committed history", || {
        shard_ids(&records(&q.out), &set).len() >= want.len()
    })
    .await;
    assert_eq!(shard_ids(&records(&q.out), &set), want);
    // A quorum suffices to emit; the third member may still be starting, but none is refused.
    wait_until(30, "every member tailing", || {
        let nodes = q.status.nodes(&set);
        for (addr, n) in &nodes {
            assert!(!n.state.starts_with("refused"), "{addr}: {}", n.state);
        }
        nodes.len() == rs.members().len() && nodes.values().all(|n| n.state == "tailing")
    })
    .await;
    assert_eq!(rs.auth_failures(), 0);
    q.stop().await;
    rs.shutdown().await;
}

/// (b) A wrong password: nothing is emitted, every member is refused with a message that
/// names the user and the member, and the tailers do not hammer the members (each retries
/// at the longest backoff, 10 s, so over the next ~2 s at most one more authentication
/// each; a tailer retrying at its shortest backoff would make about five).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_refuses_each_member_without_a_retry_storm() {
    let rs = secured_set().await;
    let set = rs.name();
    write(&rs, &["a"]).await;
    let members = rs.members();
    let dir = tempfile::tempdir().unwrap();
    let q = start_with_mongo(dir.path(), &shards(&rs), &mongo("tail", "wrong"), EARLIEST);
    wait_until(30, "every member refused for authentication", || {
        all_refused(
            &q,
            &set,
            members.len(),
            "authentication failed for user \"tail\"",
        )
    })
    .await;
    for (addr, n) in q.status.nodes(&set) {
        assert!(n.state.contains(&addr), "names the member: {}", n.state);
        assert!(
            n.state.contains("password_file"),
            "says the fix: {}",
            n.state
        );
    }
    let first = rs.sasl_starts();
    assert!(
        first >= members.len() as u64,
        "each member was asked: {first}"
    );
    // An observation window, not a race cover: the bound holds however slow the machine.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = rs.sasl_starts();
    assert!(
        attempts <= first + members.len() as u64,
        "at most one retry per member in ~2 s: {first} then {attempts} saslStart"
    );
    assert!(records(&q.out).is_empty(), "nothing emitted");
    q.stop().await;
    rs.shutdown().await;
}

/// (c) A user that authenticates but may not read `local`: a clear refusal naming the user
/// and the privilege to grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_without_read_on_local_is_refused_naming_the_privilege() {
    let rs = secured_set().await;
    let set = rs.name();
    write(&rs, &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let q = start_with_mongo(dir.path(), &shards(&rs), &mongo("monitor", "m"), EARLIEST);
    wait_until(30, "every member refused for the oplog privilege", || {
        all_refused(
            &q,
            &set,
            rs.members().len(),
            "user \"monitor\" may not read the oplog",
        )
    })
    .await;
    for (addr, n) in q.status.nodes(&set) {
        assert!(
            n.state.contains("not authorized on local"),
            "{addr}: {}",
            n.state
        );
        assert!(
            n.state
                .contains("grant the role read on the local database"),
            "{}",
            n.state
        );
    }
    assert_eq!(rs.auth_failures(), 0, "the password was right");
    assert!(records(&q.out).is_empty(), "nothing emitted");
    q.stop().await;
    rs.shutdown().await;
}

//! TLS to MongoDB (mongosim's `requireTLS` listeners, certificates from a throwaway CA):
//! with the CA and a client certificate quorumtail emits the committed history as over
//! plain TCP; a certificate for another name, one from an unknown CA, and a member that
//! requires a client certificate quorumtail does not have are definite refusals of each
//! member, naming the member and the fix, and nothing is emitted.

use std::path::Path;
use std::time::Duration;

use bson::{doc, Document};
use mongodb::options::{ClientOptions, Tls, TlsOptions};
use mongosim::{ReplicaSet, ReplicaSetSpec, TlsSpec};
use quorumtail_testkit::pki::TestPki;

use crate::support::{
    committed_app_entries, committed_app_entries_discovered, records, shard_ids, start_with_mongo,
    wait_until, Running,
};

async fn tls_set(tls: TlsSpec) -> ReplicaSet {
    ReplicaSet::start(ReplicaSetSpec {
        tls: Some(tls),
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

fn mongo_tls(ca: &Path, client: Option<&Path>) -> String {
    let mut s = format!("tls = true\ntls_ca_file = {:?}\n", ca.display().to_string());
    if let Some(c) = client {
        s.push_str(&format!(
            "tls_certificate_key_file = {:?}\n",
            c.display().to_string()
        ));
    }
    s
}

const EARLIEST: &str = "[start]\nposition = \"earliest\"\n";

/// Majority-acknowledged inserts through the primary, over TLS with the client certificate.
async fn write(rs: &ReplicaSet, pki: &TestPki, ids: &[&str]) {
    let primary = rs.primary().expect("a primary");
    let mut opts = ClientOptions::parse(format!(
        "mongodb://{primary}/?directConnection=true&serverSelectionTimeoutMS=5000"
    ))
    .await
    .unwrap();
    opts.tls = Some(Tls::Enabled(
        TlsOptions::builder()
            .ca_file_path(pki.ca.clone())
            .cert_key_file_path(pki.client.clone())
            .build(),
    ));
    let c = mongodb::Client::with_options(opts).unwrap();
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

/// Every member shows a refusal containing each of `needles`.
fn all_refused(q: &Running, set: &str, members: usize, needles: &[&str]) -> bool {
    let nodes = q.status.nodes(set);
    nodes.len() == members
        && nodes.iter().all(|(addr, n)| {
            n.state.starts_with("refused: TLS to ")
                && n.state.contains(addr.as_str())
                && needles.iter().all(|w| n.state.contains(w))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_and_a_client_certificate_emits_the_committed_history() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let rs = tls_set(TlsSpec {
        certificate_key_file: pki.server.clone(),
        ca_file: Some(pki.ca.clone()),
        allow_connections_without_certificates: false,
    })
    .await;
    let set = rs.name();
    write(&rs, &pki, &["a", "b"]).await;
    let q = start_with_mongo(
        dir.path(),
        &shards(&rs),
        &mongo_tls(&pki.ca, Some(&pki.client)),
        EARLIEST,
    );
    write(&rs, &pki, &["c"]).await;
    let want = committed_app_entries(&rs, &set);
    assert!(want.len() >= 3, "the three writes committed: {want:?}");
    wait_until(30, "quorumtail emits the committed history", || {
        shard_ids(&records(&q.out), &set).len() >= want.len()
    })
    .await;
    assert_eq!(shard_ids(&records(&q.out), &set), want);
    wait_until(30, "every member tailing", || {
        let nodes = q.status.nodes(&set);
        for (addr, n) in &nodes {
            assert!(!n.state.starts_with("refused"), "{addr}: {}", n.state);
        }
        nodes.len() == rs.members().len() && nodes.values().all(|n| n.state == "tailing")
    })
    .await;
    q.stop().await;
    rs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_refuses_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let rs = tls_set(TlsSpec {
        certificate_key_file: pki.server_wrong_name.clone(),
        ..Default::default()
    })
    .await;
    let set = rs.name();
    let q = start_with_mongo(
        dir.path(),
        &shards(&rs),
        &mongo_tls(&pki.ca, None),
        EARLIEST,
    );
    wait_until(
        30,
        "every member refused for its certificate's name",
        || {
            all_refused(
                &q,
                &set,
                rs.members().len(),
                &["db.example.invalid", "by a name its certificate holds"],
            )
        },
    )
    .await;
    assert!(records(&q.out).is_empty(), "nothing emitted");
    q.stop().await;
    rs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_refuses_every_member_naming_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let rs = tls_set(TlsSpec {
        certificate_key_file: pki.server.clone(),
        ..Default::default()
    })
    .await;
    let set = rs.name();
    let q = start_with_mongo(
        dir.path(),
        &shards(&rs),
        &mongo_tls(&pki.other_ca, None),
        EARLIEST,
    );
    wait_until(30, "every member refused for an unknown issuer", || {
        all_refused(
            &q,
            &set,
            rs.members().len(),
            &["UnknownIssuer", "other-ca.pem"],
        )
    })
    .await;
    assert!(records(&q.out).is_empty(), "nothing emitted");
    q.stop().await;
    rs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_requiring_a_client_certificate_is_refused_with_the_key_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let rs = tls_set(TlsSpec {
        certificate_key_file: pki.server.clone(),
        ca_file: Some(pki.ca.clone()),
        allow_connections_without_certificates: false,
    })
    .await;
    let set = rs.name();
    let q = start_with_mongo(
        dir.path(),
        &shards(&rs),
        &mongo_tls(&pki.ca, None),
        EARLIEST,
    );
    wait_until(
        30,
        "every member refused for a missing client certificate",
        || all_refused(&q, &set, rs.members().len(), &["tls_certificate_key_file"]),
    )
    .await;
    assert!(records(&q.out).is_empty(), "nothing emitted");
    q.stop().await;
    rs.shutdown().await;
}

/// A sharded cluster with TLS everywhere: discovery through mongos and the tailers of every
/// shard use `[mongo] tls`, and each shard's committed history is emitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_through_mongos_and_every_shard_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let cluster = mongosim::Cluster::start(mongosim::ClusterSpec {
        tls: Some(TlsSpec {
            certificate_key_file: pki.server.clone(),
            ..Default::default()
        }),
        noop_interval: Duration::from_secs(3600),
        election_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    cluster
        .insert(
            "shop.orders",
            (0..3000).step_by(100).map(|i| doc! {"_id": i}).collect(),
        )
        .await
        .unwrap();
    let q = start_with_mongo(
        dir.path(),
        &format!(
            "[discovery]\nuri = \"mongodb://{}/\"\ninterval = \"200ms\"\n",
            cluster.mongos_addr()
        ),
        &mongo_tls(&pki.ca, None),
        EARLIEST,
    );
    let shards = cluster.shard_names();
    wait_until(30, "the 30 inserts committed", || {
        shards
            .iter()
            .map(|s| committed_app_entries_discovered(&cluster, s).len())
            .sum::<usize>()
            >= 30
    })
    .await;
    for shard in &shards {
        let want = committed_app_entries_discovered(&cluster, shard);
        wait_until(30, "every shard's committed history", || {
            shard_ids(&records(&q.out), shard) == want
        })
        .await;
    }
    let emitted: usize = shards
        .iter()
        .map(|s| shard_ids(&records(&q.out), s).len())
        .sum();
    assert!(
        emitted >= 30,
        "the 30 inserts (and collection creations): {emitted}"
    );
    // Every member is reached over TLS. A quorum suffices for the records above, so a
    // member whose handshake is still under way (a loaded machine) gets its own deadline.
    for shard in &shards {
        wait_until(30, "every member tailing over TLS", || {
            q.status
                .nodes(shard)
                .iter()
                .all(|(_, n)| n.state == "tailing")
        })
        .await;
    }
    q.stop().await;
    cluster.shutdown().await;
}

//! Replica sets configured the way production sets often are: hidden voters, non-voting
//! members, and Raft's "figure 8" (two elections in quick succession around one primary).
//! In each story an entry is held by what a naive count calls a majority and is rolled
//! back by MongoDB; quorumtail must never emit it, and must emit the committed history
//! exactly once, in order. The expected output is the simulator's ground truth, which
//! follows MongoDB's commit rule (a primary commits only through an entry of its own term
//! held by a write majority of voters; see mongosim's crate docs).

use std::net::SocketAddr;
use std::time::Duration;

use bson::{doc, Document};
use mongosim::membership::MemberSpec;
use mongosim::{Cluster, ReplicaSet, ReplicaSetSpec};
use quorumtail_oplog::{EntryId, OplogEntry};

use crate::support::{committed_app_entries, records, shard_ids, start, wait_until, Running};

fn spec(members: Vec<MemberSpec>) -> ReplicaSetSpec {
    ReplicaSetSpec {
        members: Some(members),
        noop_interval: Duration::from_secs(3600),
        election_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

async fn direct(addr: SocketAddr) -> mongodb::Client {
    mongodb::Client::with_uri_str(format!(
        "mongodb://{addr}/?directConnection=true&serverSelectionTimeoutMS=2000"
    ))
    .await
    .unwrap()
}

/// Inserts `{_id: id}` on `primary` with w: 1 and returns its oplog entry's identity.
async fn insert_on(rs: &ReplicaSet, primary: SocketAddr, id: &str) -> EntryId {
    direct(primary)
        .await
        .database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": id})
        .await
        .unwrap();
    entry_of(rs, primary, id).expect("the insert is in the primary's oplog")
}

fn entry_of(rs: &Cluster, node: SocketAddr, id: &str) -> Option<EntryId> {
    rs.oplog_snapshot(node).iter().find_map(|raw| {
        let e = OplogEntry::parse(raw).ok()?;
        let doc = Document::try_from(raw.as_ref()).ok()?;
        let o = doc.get_document("o").ok()?;
        (doc.get_str("op").ok() == Some("i") && o.get_str("_id").ok() == Some(id)).then(|| e.id())
    })
}

fn holds(rs: &Cluster, node: SocketAddr, id: EntryId) -> bool {
    rs.oplog_snapshot(node)
        .iter()
        .filter_map(|raw| OplogEntry::parse(raw).ok())
        .any(|e| e.id() == id)
}

async fn wait_primary(rs: &ReplicaSet, want: SocketAddr) {
    let set = rs.name();
    assert!(
        rs.wait_for(Duration::from_secs(20), |c| c.primary_of(&set)
            == Some(want)
            && c.status()
                .iter()
                .any(|n| n.addr == want.to_string() && n.state == "PRIMARY"))
            .await,
        "{want} did not become primary: {:?}",
        rs.status()
    );
}

fn shards(rs: &ReplicaSet, members: &[SocketAddr]) -> String {
    let m: Vec<String> = members.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[shards]]\nname = \"{}\"\nmembers = [{}]\n",
        rs.name(),
        m.join(", ")
    )
}

/// Writes a last entry on `primary` through the majority, then waits until quorumtail
/// emitted exactly the committed history; returns the emitted identities.
async fn settle(rs: &ReplicaSet, primary: SocketAddr, q: &Running, last: &str) -> Vec<EntryId> {
    let coll = direct(primary)
        .await
        .database("app")
        .collection::<Document>("c");
    // A member rejoining after the story can interrupt the wait for the majority
    // (InterruptedDueToReplStateChange): the write is retried, as a client would.
    let mut tries = 0;
    loop {
        let r = coll
            .insert_one(doc! {"_id": last})
            .with_options(
                mongodb::options::InsertOneOptions::builder()
                    .write_concern(mongodb::options::WriteConcern::majority())
                    .build(),
            )
            .await;
        match r {
            Ok(_) => break,
            Err(e) if e.to_string().contains("E11000") => {
                // An earlier attempt got in; the ground truth below decides about it.
                break;
            }
            Err(e) => {
                tries += 1;
                assert!(tries < 100, "the last write kept failing: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let set = rs.name();
    let want = committed_app_entries(rs, &set);
    wait_until(30, "quorumtail emits the committed history", || {
        shard_ids(&records(&q.out), &set).len() >= want.len()
    })
    .await;
    // Settled: nothing further may arrive beyond the committed history.
    let got = shard_ids(&records(&q.out), &set);
    assert_eq!(
        got,
        committed_app_entries(rs, &set),
        "emitted exactly the committed history, in order"
    );
    got
}

/// Raft's figure 8 with five voters: X (term 1) reaches B only; C (term 2) writes Y alone;
/// A is re-elected (term 3) and carries X to D, so three of five voters hold X, but A fails
/// before committing anything of term 3; C wins again and X is rolled back everywhere.
/// quorumtail with the commit-point rule never emits X; the same run with
/// `release = "quorum"` does (the story really exercises the rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figure_8_rolled_back_entry_held_by_a_majority_is_never_emitted() {
    let rs = ReplicaSet::start(spec(vec![MemberSpec::voter(); 5]))
        .await
        .unwrap();
    let set = rs.name();
    let m = rs.members();
    let (a, b, c, d, e) = (m[0], m[1], m[2], m[3], m[4]);
    wait_primary(&rs, a).await;
    let first = insert_on(&rs, a, "before").await;
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| r
            .commit_point(&set)
            .is_some_and(|(ts, _)| ts.time >= first.ts.time))
            .await
    );

    let dir = tempfile::tempdir().unwrap();
    let naive_dir = tempfile::tempdir().unwrap();
    let q = start(
        dir.path(),
        &shards(&rs, &m),
        "[start]\nposition = \"earliest\"\n",
    );
    let naive = start(
        naive_dir.path(),
        &shards(&rs, &m),
        "[start]\nposition = \"earliest\"\n[pipeline]\nrelease = \"quorum\"\n",
    );
    wait_until(30, "both emit the first write", || {
        shard_ids(&records(&q.out), &set).contains(&first)
            && shard_ids(&records(&naive.out), &set).contains(&first)
    })
    .await;

    // Term 1: X reaches B only.
    for n in [c, d, e] {
        rs.block_replication(n, true).unwrap();
    }
    let x = insert_on(&rs, a, "X").await;
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| holds(r, b, x))
            .await
    );
    rs.kill_node(a).await.unwrap();
    rs.kill_node(b).await.unwrap();
    // Term 2: C is elected by C, D, E and writes Y on its own.
    wait_primary(&rs, c).await;
    let y = insert_on(&rs, c, "Y").await;
    rs.kill_node(c).await.unwrap();
    // Term 3: A wins (it holds X) and stays in drain mode; D copies X from it.
    rs.hold_step_up(&set, true).unwrap();
    rs.restart_node(a).await.unwrap();
    rs.restart_node(b).await.unwrap();
    wait_primary(&rs, a).await;
    rs.block_replication(d, false).unwrap();
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| holds(r, d, x))
            .await
    );
    assert_eq!(
        [a, b, c, d, e]
            .iter()
            .filter(|n| holds(&rs, **n, x))
            .count(),
        3,
        "X is held by a majority of the voters"
    );
    // The naive rule emits X now; quorumtail must not (checked at the end, after X is
    // gone, so that a late emission would be seen too).
    wait_until(30, "the quorum-only instance emits X", || {
        shard_ids(&records(&naive.out), &set).contains(&x)
    })
    .await;

    // A dies before committing anything of term 3; C returns and wins; X rolls back.
    rs.block_replication(c, true).unwrap();
    rs.restart_node(c).await.unwrap();
    rs.kill_node(a).await.unwrap();
    wait_primary(&rs, c).await;
    rs.hold_step_up(&set, false).unwrap();
    for n in [c, e] {
        rs.block_replication(n, false).unwrap();
    }
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| r
            .rolled_back_entries(&set)
            .iter()
            .filter_map(|raw| OplogEntry::parse(raw).ok())
            .any(|e| e.id() == x))
            .await
    );
    rs.restart_node(a).await.unwrap();
    let got = settle(&rs, c, &q, "after").await;
    assert!(!got.contains(&x), "the rolled-back X was emitted");
    assert!(
        got.contains(&y),
        "Y (term 2, committed by C's term) is emitted"
    );
    assert_eq!(got.iter().filter(|i| **i == y).count(), 1);

    let report = q.stop().await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    naive.stop().await;
    rs.shutdown().await;
}

/// A primary and two `votes: 0` members hold X; the two other voters do not. Counted as
/// voters (3 of 5) X looks committed; it is not, and is rolled back when the voters elect
/// a new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_held_by_a_primary_and_non_voters_is_never_emitted() {
    let rs = ReplicaSet::start(spec(vec![
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::non_voter(),
        MemberSpec::non_voter(),
    ]))
    .await
    .unwrap();
    let set = rs.name();
    let m = rs.members();
    let (a, b, c, d, e) = (m[0], m[1], m[2], m[3], m[4]);
    wait_primary(&rs, a).await;
    // The default, and the quorum rule alone: voting membership must hold on its own.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let qs = [
        start(
            dirs[0].path(),
            &shards(&rs, &m),
            "[start]\nposition = \"earliest\"\n",
        ),
        start(
            dirs[1].path(),
            &shards(&rs, &m),
            "[start]\nposition = \"earliest\"\n[pipeline]\nrelease = \"quorum\"\n",
        ),
    ];
    let first = insert_on(&rs, a, "before").await;
    for q in &qs {
        wait_until(30, "the first write", || {
            shard_ids(&records(&q.out), &set).contains(&first)
        })
        .await;
        wait_until(30, "quorumtail read the replica set configuration", || {
            let nodes = q.status.nodes(&set);
            nodes.len() == 5 && nodes.values().filter(|n| n.voter).count() == 3
        })
        .await;
    }

    for n in [b, c] {
        rs.block_replication(n, true).unwrap();
    }
    let x = insert_on(&rs, a, "X").await;
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| holds(r, d, x)
            && holds(r, e, x))
            .await
    );
    rs.partition_node(a).await.unwrap();
    for n in [b, c] {
        rs.block_replication(n, false).unwrap();
    }
    let set2 = set.clone();
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| {
            let p = r.primary_of(&set2);
            p == Some(b) || p == Some(c)
        })
        .await
    );
    let new_primary = rs.primary_of(&set).unwrap();
    wait_primary(&rs, new_primary).await;
    rs.heal_node(a).await.unwrap();
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| [a, d, e]
            .iter()
            .all(|n| !holds(r, *n, x)))
            .await,
        "X rolled back everywhere"
    );
    for (i, q) in qs.iter().enumerate() {
        let got = settle(&rs, new_primary, q, &format!("after{i}")).await;
        assert!(
            !got.contains(&x),
            "X, held by one voter and two non-voters, was emitted (instance {i})"
        );
    }
    for q in qs {
        assert_eq!(q.status.all()[&set].quorum, 2, "write majority of 3 voters");
        q.stop().await;
    }
    rs.shutdown().await;
}

/// Three visible members and two hidden voters; only the visible ones are listed. X on the
/// primary and one visible secondary is 2 of the 3 listed but not 3 of the 5 voters; the
/// hidden voters and the third visible member elect a new primary and X is rolled back.
/// quorumtail finds the hidden members through the replica set configuration, reads them
/// and requires 3 voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_voters_missing_from_the_list_are_found_and_counted() {
    let rs = ReplicaSet::start(spec(vec![
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::hidden(),
        MemberSpec::hidden(),
    ]))
    .await
    .unwrap();
    let set = rs.name();
    let m = rs.members();
    let (a, b, c, d, e) = (m[0], m[1], m[2], m[3], m[4]);
    wait_primary(&rs, a).await;
    // hello lists only the visible members, as mongod does.
    let hello = direct(a)
        .await
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_array("hosts").unwrap().len(), 3, "{hello}");

    // The default, and the quorum rule alone: membership must hold on its own.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let qs = [
        start(
            dirs[0].path(),
            &shards(&rs, &[a, b, c]),
            "[start]\nposition = \"earliest\"\n",
        ),
        start(
            dirs[1].path(),
            &shards(&rs, &[a, b, c]),
            "[start]\nposition = \"earliest\"\n[pipeline]\nrelease = \"quorum\"\n",
        ),
    ];
    let first = insert_on(&rs, a, "before").await;
    for q in &qs {
        wait_until(30, "the first write", || {
            shard_ids(&records(&q.out), &set).contains(&first)
        })
        .await;
        wait_until(30, "quorumtail reads the hidden members too", || {
            let nodes = q.status.nodes(&set);
            nodes.len() == 5
                && nodes.values().filter(|n| n.hidden).count() == 2
                && nodes.values().all(|n| n.state == "tailing")
        })
        .await;
        assert_eq!(q.status.all()[&set].quorum, 3);
    }

    for n in [c, d, e] {
        rs.block_replication(n, true).unwrap();
    }
    let x = insert_on(&rs, a, "X").await;
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| holds(r, b, x))
            .await
    );
    rs.partition_node(a).await.unwrap();
    rs.partition_node(b).await.unwrap();
    for n in [c, d, e] {
        rs.block_replication(n, false).unwrap();
    }
    // Only C can be elected (hidden members have priority 0), by C, D and E.
    wait_primary(&rs, c).await;
    insert_on(&rs, c, "Z").await;
    rs.heal_node(a).await.unwrap();
    rs.heal_node(b).await.unwrap();
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| [a, b]
            .iter()
            .all(|n| !holds(r, *n, x)))
            .await,
        "X rolled back"
    );
    for (i, q) in qs.into_iter().enumerate() {
        let got = settle(&rs, c, &q, &format!("after{i}")).await;
        assert!(
            !got.contains(&x),
            "X, held by 2 of 5 voters, was emitted (instance {i})"
        );
        q.stop().await;
    }
    rs.shutdown().await;
}

/// A reconfig mid-stream: a hidden voter is added, a member's votes are removed, a member
/// is dropped. quorumtail follows without a restart: it reads the new member, counts the
/// new voters, and loses and repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfig_mid_stream_is_followed_without_loss() {
    let rs = ReplicaSet::start(spec(vec![MemberSpec::voter(); 3]))
        .await
        .unwrap();
    let set = rs.name();
    let m = rs.members();
    let a = m[0];
    wait_primary(&rs, a).await;
    let dir = tempfile::tempdir().unwrap();
    let q = start(
        dir.path(),
        &shards(&rs, &m),
        "[start]\nposition = \"earliest\"\n",
    );
    for i in 0..20 {
        insert_on(&rs, a, &format!("a{i}")).await;
    }
    wait_until(30, "the first writes", || {
        shard_ids(&records(&q.out), &set).len() >= 20
    })
    .await;

    // Add a hidden voter (4 voters: write majority 3).
    let mut members = rs.member_specs(&set).unwrap();
    members.push(MemberSpec::hidden());
    rs.reconfigure(&set, members, false).await.unwrap();
    wait_until(
        30,
        "the hidden voter is read and the quorum follows",
        || {
            let nodes = q.status.nodes(&set);
            nodes.len() == 4
                && nodes
                    .values()
                    .filter(|n| n.hidden && n.state == "tailing")
                    .count()
                    == 1
                && q.status.all()[&set].quorum == 3
        },
    )
    .await;
    for i in 0..20 {
        insert_on(&rs, a, &format!("b{i}")).await;
    }
    // Take the votes of the third member away (3 voters: write majority 2).
    let mut members = rs.member_specs(&set).unwrap();
    members[2].votes = 0;
    members[2].priority = 0.0;
    rs.reconfigure(&set, members.clone(), false).await.unwrap();
    wait_until(30, "the member no longer votes", || {
        q.status.nodes(&set).values().filter(|n| n.voter).count() == 3
            && q.status.all()[&set].quorum == 2
    })
    .await;
    for i in 0..20 {
        insert_on(&rs, a, &format!("c{i}")).await;
    }
    // Drop it.
    members.remove(2);
    rs.reconfigure(&set, members, false).await.unwrap();
    wait_until(30, "the removed member is no longer read", || {
        q.status.nodes(&set).len() == 3
    })
    .await;
    let got = settle(&rs, a, &q, "last").await;
    assert_eq!(got.len(), 62);
    q.stop().await;
    rs.shutdown().await;
}

/// Bad input from members: every member refuses `replSetGetConfig` (a user without the
/// clusterMonitor role) and one reports a commit point beyond its own newest entry.
/// quorumtail falls back to `replSetGetStatus` (hidden members are still found), says so,
/// trusts no commit point past the member's own entry, and emits exactly the committed
/// history. With `replSetGetStatus` refused too, it keeps the listed members and still
/// emits only what MongoDB committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_config_and_a_commit_point_beyond_the_members_entry() {
    let rs = ReplicaSet::start(spec(vec![
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::hidden(),
    ]))
    .await
    .unwrap();
    let set = rs.name();
    let m = rs.members();
    let a = m[0];
    wait_primary(&rs, a).await;
    for n in &m {
        rs.refuse_commands(*n, &["replSetGetConfig"]).unwrap();
    }
    rs.misreport_commit_point(m[1], true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = start(
        dir.path(),
        &shards(&rs, &m[..3]),
        "[start]\nposition = \"earliest\"\n",
    );
    wait_until(
        30,
        "the hidden member is found through replSetGetStatus",
        || {
            let nodes = q.status.nodes(&set);
            nodes.len() == 4 && nodes.values().all(|n| n.state == "tailing")
        },
    )
    .await;
    assert!(
        q.status.quorum_source(&set).contains("replica set status"),
        "{}",
        q.status.quorum_source(&set)
    );
    // writeMajorityCount of 4 voters, as replSetGetStatus states it.
    assert_eq!(q.status.all()[&set].quorum, 3);
    for i in 0..30 {
        insert_on(&rs, a, &format!("w{i}")).await;
    }
    let got = settle(&rs, a, &q, "last").await;
    // The collection's implicit create, 30 inserts, the last one.
    assert_eq!(got.len(), 32);
    // The misreporting member's confirmed commit point never passes its own entries.
    let nodes = q.status.nodes(&set);
    let liar = &nodes[&m[1].to_string()];
    assert!(liar.commit_point_ts <= liar.last_ts, "{liar:?}");
    q.stop().await;

    // Neither command permitted: the listed members are read, as voters.
    for n in &m {
        rs.refuse_commands(*n, &["replSetGetConfig", "replSetGetStatus"])
            .unwrap();
    }
    let dir2 = tempfile::tempdir().unwrap();
    let q2 = start(
        dir2.path(),
        &shards(&rs, &m[..3]),
        "[start]\nposition = \"earliest\"\n",
    );
    wait_until(30, "the listed members are read", || {
        let nodes = q2.status.nodes(&set);
        nodes.len() == 3 && nodes.values().all(|n| n.state == "tailing")
    })
    .await;
    let got = settle(&rs, a, &q2, "last2").await;
    assert_eq!(got.len(), 33);
    q2.stop().await;
    rs.shutdown().await;
}

/// Discovery through mongos: `config.shards` (and so `listShards`) never lists hidden
/// members, as mongod builds the host string from what the shard's replica-set monitor
/// sees. quorumtail finds them in each shard's configuration, reads them and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_hidden_members_that_config_shards_omits() {
    let cluster = Cluster::start(mongosim::ClusterSpec {
        members: Some(vec![
            MemberSpec::voter(),
            MemberSpec::voter(),
            MemberSpec::voter(),
            MemberSpec::hidden(),
            MemberSpec::non_voter(),
        ]),
        noop_interval: Duration::from_millis(200),
        election_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let mongos = cluster.mongos_addr();
    let listed = direct(mongos)
        .await
        .database("admin")
        .run_command(doc! {"listShards": 1})
        .await
        .unwrap();
    for s in listed.get_array("shards").unwrap() {
        let host = s.as_document().unwrap().get_str("host").unwrap();
        assert_eq!(
            host.split(',').count(),
            4,
            "config.shards omits the hidden member: {host}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let q = start(
        dir.path(),
        &format!("[discovery]\nuri = \"mongodb://{mongos}/\"\ninterval = \"200ms\"\n"),
        "[start]\nposition = \"earliest\"\n",
    );
    for shard in cluster.shard_names() {
        wait_until(30, "every member of every shard is read", || {
            let nodes = q.status.nodes(&shard);
            nodes.len() == 5
                && nodes.values().filter(|n| n.hidden).count() == 1
                && nodes.values().filter(|n| n.voter).count() == 4
                && nodes.values().all(|n| n.state == "tailing")
        })
        .await;
        // 4 voters: write majority 3.
        assert_eq!(q.status.all()[&shard].quorum, 3);
    }
    // Discovery runs again every 200 ms with the 4 listed members: the hidden member stays.
    // (The ids fall in shard01's chunk; shard02 must emit exactly its own history.)
    cluster
        .insert("shop.orders", (0..50).map(|i| doc! {"_id": i}).collect())
        .await
        .unwrap();
    for shard in cluster.shard_names() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = shard_ids(&records(&q.out), &shard);
            let want = committed_app_entries(&cluster, &shard);
            if got == want && (!got.is_empty() || shard != "shard01") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{shard}: emitted {} entries, committed {}:\n{got:?}\n{want:?}\n{:?}",
                got.len(),
                want.len(),
                q.status.nodes(&shard)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(q.status.nodes(&shard).len(), 5);
    }
    q.stop().await;
    cluster.shutdown().await;
}

/// Primary, secondary, arbiter (PSA): the arbiter votes but holds no oplog, so the write
/// majority is 2 of the 2 data-bearing members (`writeMajorityCount` capped at the
/// data-bearing voters). X reaches the primary only; the secondary and the arbiter elect
/// the secondary and X is rolled back. quorumtail reads the arbiter from the configuration
/// (it is never tailed), requires both data-bearing members and never emits X.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_secondary_arbiter_rollback_is_never_emitted() {
    let rs = ReplicaSet::start(spec(vec![
        MemberSpec::voter(),
        MemberSpec::voter(),
        MemberSpec::arbiter(),
    ]))
    .await
    .unwrap();
    let set = rs.name();
    let m = rs.members();
    let (a, b) = (m[0], m[1]);
    wait_primary(&rs, a).await;
    let dir = tempfile::tempdir().unwrap();
    // The data-bearing members are listed; the arbiter is found in the configuration.
    let q = start(
        dir.path(),
        &shards(&rs, &[a, b]),
        "[start]\nposition = \"earliest\"\n",
    );
    let first = insert_on(&rs, a, "before").await;
    wait_until(30, "the first write", || {
        shard_ids(&records(&q.out), &set).contains(&first)
    })
    .await;
    wait_until(30, "the arbiter is known", || {
        q.status.all()[&set].arbiters == 1 && q.status.nodes(&set).len() == 2
    })
    .await;
    assert_eq!(q.status.all()[&set].quorum, 2);

    rs.block_replication(b, true).unwrap();
    let x = insert_on(&rs, a, "X").await;
    rs.partition_node(a).await.unwrap();
    rs.block_replication(b, false).unwrap();
    wait_primary(&rs, b).await;
    insert_on(&rs, b, "Y").await;
    rs.heal_node(a).await.unwrap();
    assert!(
        rs.wait_for(Duration::from_secs(20), |r| !holds(r, a, x))
            .await,
        "X rolled back"
    );
    let got = settle(&rs, b, &q, "after").await;
    assert!(
        !got.contains(&x),
        "X, held by the old primary alone, was emitted"
    );
    q.stop().await;
    rs.shutdown().await;
}

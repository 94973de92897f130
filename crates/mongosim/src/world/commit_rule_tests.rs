use super::*;

fn five() -> (World, Instant) {
    let mut w = World::new(
        ServerVersion::V7_0,
        SimConfig {
            noop_interval: Duration::ZERO,
            election_timeout: Duration::from_millis(100),
            oplog_max_entries: None,
            oplog_max_bytes: None,
            commit_point_delay: Duration::ZERO,
        },
    );
    let addrs: Vec<SocketAddr> = (0..5)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 41000 + i)))
        .collect();
    let now = Instant::now();
    w.add_set("rs", SetRole::Plain, &addrs, now);
    w.tick(now);
    (w, now)
}

#[test]
fn an_older_term_entry_commits_only_with_an_entry_of_the_current_term() {
    let (mut w, t0) = five();
    for n in 2..5 {
        w.sets[0].nodes[n].replication_blocked = true;
    }
    w.insert(0, 0, "test.c", vec![doc! {"_id": "x"}], false, t0)
        .unwrap();
    w.tick(t0);
    let x = w.sets[0].nodes[0].oplog.last().unwrap().id;
    assert_eq!(w.sets[0].voting_holders(&x), 2);
    // Node 0 steps down and is re-elected in a new term with its step-up held.
    w.sets[0].hold_step_up = true;
    w.step_down_node(0, 0, t0);
    w.elect(0, 0, 5, t0);
    assert!(w.sets[0].nodes[0].draining);
    w.sets[0].nodes[2].replication_blocked = false;
    w.tick(t0);
    assert_eq!(w.sets[0].voting_holders(&x), 3, "held by a majority");
    assert!(!w.sets[0].committed.iter().any(|e| e.id == x));
    // Releasing the hold logs the term-5 no-op; once it is held by a majority, x commits.
    w.sets[0].hold_step_up = false;
    w.tick(t0);
    let noop = w.sets[0].nodes[0].oplog.last().unwrap().id;
    assert_eq!(noop.t, Some(5));
    assert!(w.sets[0].committed.iter().any(|e| e.id == x));
    assert_eq!(w.sets[0].commit_point.as_ref().unwrap().id, noop);
    // Secondaries learned it (commit_point_delay is zero here).
    assert_eq!(w.sets[0].nodes[2].commit_point.as_ref().unwrap().id, noop);
}

#[test]
fn non_voters_do_not_count() {
    let (mut w, t0) = five();
    for n in 3..5 {
        w.sets[0].nodes[n].member = MemberSpec::non_voter();
    }
    assert_eq!(w.sets[0].majorities().write_majority, 2);
    w.sets[0].nodes[1].replication_blocked = true;
    w.sets[0].nodes[2].replication_blocked = true;
    w.insert(0, 0, "test.c", vec![doc! {"_id": "z"}], false, t0)
        .unwrap();
    w.tick(t0);
    let z = w.sets[0].nodes[0].oplog.last().unwrap().id;
    assert!(w.sets[0].nodes[3].oplog.contains(&z) && w.sets[0].nodes[4].oplog.contains(&z));
    assert!(!w.sets[0].committed.iter().any(|e| e.id == z));
    w.sets[0].nodes[1].replication_blocked = false;
    w.tick(t0);
    assert!(w.sets[0].committed.iter().any(|e| e.id == z));
}

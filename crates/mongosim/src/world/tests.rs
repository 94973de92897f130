use super::*;

const TIMEOUT: Duration = Duration::from_millis(100);

fn world(nodes: u16) -> (World, Instant) {
    let mut w = World::new(
        ServerVersion::V7_0,
        SimConfig {
            noop_interval: Duration::ZERO,
            election_timeout: TIMEOUT,
            oplog_max_entries: None,
            oplog_max_bytes: None,
            commit_point_delay: Duration::ZERO,
        },
    );
    let addrs: Vec<SocketAddr> = (0..nodes)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 40000 + i)))
        .collect();
    let now = Instant::now();
    w.add_set("rs", SetRole::Plain, &addrs, now);
    w.tick(now);
    (w, now)
}

fn ids(w: &World, n: usize) -> Vec<EntryId> {
    w.sets[0].nodes[n].oplog.iter().map(|e| e.id).collect()
}

#[test]
fn writes_replicate_and_commit() {
    let (mut w, now) = world(3);
    w.insert(0, 0, "test.c", vec![doc! {"_id": 1}], false, now)
        .unwrap();
    w.tick(now);
    assert_eq!(ids(&w, 0), ids(&w, 1));
    assert_eq!(ids(&w, 0), ids(&w, 2));
    let last = w.sets[0].nodes[0].oplog.last().unwrap().id;
    assert_eq!(w.sets[0].commit_point.as_ref().unwrap().id, last);
    assert_eq!(w.sets[0].committed.len(), w.sets[0].nodes[0].oplog.len());
}

#[test]
fn lag_delays_a_secondary_but_majority_still_commits() {
    let (mut w, now) = world(3);
    w.sets[0].nodes[2].lag = Duration::from_secs(1);
    w.insert(0, 0, "test.c", vec![doc! {"_id": 1}], false, now)
        .unwrap();
    w.tick(now);
    assert_ne!(ids(&w, 0), ids(&w, 2));
    let last = w.sets[0].nodes[0].oplog.last().unwrap().id;
    assert_eq!(w.sets[0].commit_point.as_ref().unwrap().id, last);
    w.tick(now + Duration::from_secs(1));
    assert_eq!(ids(&w, 0), ids(&w, 2));
}

#[test]
fn isolated_primary_is_replaced_and_rolled_back_on_heal() {
    let (mut w, t0) = world(3);
    w.sets[0].nodes[0].partitioned = true;
    w.sets[0].nodes[0].partitioned_at = Some(t0);
    // Still primary within the election timeout: the write lands on node 0 only.
    w.insert(0, 0, "test.c", vec![doc! {"_id": "lost"}], false, t0)
        .unwrap();
    let lost = w.sets[0].nodes[0].oplog.last().unwrap().id;
    w.tick(t0);
    assert_eq!(w.sets[0].nodes[0].state, MemberState::Primary);
    assert!(!w.sets[0].nodes[1].oplog.contains(&lost));
    let t1 = t0 + TIMEOUT;
    w.tick(t1);
    assert_eq!(
        w.sets[0].nodes[0].state,
        MemberState::Secondary,
        "stepped down"
    );
    let p = w.sets[0].sync_source().unwrap();
    assert_ne!(p, 0);
    assert_eq!(w.sets[0].nodes[p].term, 2);
    let cursor = w.new_cursor_id();
    w.sets[0].nodes[0].cursors.insert(
        cursor,
        Cursor {
            ns: "local.oplog.rs".into(),
            kind: CursorKind::Buffered(VecDeque::new()),
            limit_remaining: None,
        },
    );
    w.sets[0].nodes[0].partitioned = false;
    w.tick(t1);
    assert!(!w.sets[0].nodes[0].oplog.contains(&lost), "rolled back");
    assert_eq!(ids(&w, 0), ids(&w, p));
    assert_eq!(
        w.sets[0].nodes[0].dead_cursors.get(&cursor).unwrap().code,
        175
    );
    assert!(w.sets[0].rolled_back.iter().any(|e| e.id == lost));
    assert!(!w.sets[0].committed.iter().any(|e| e.id == lost));
    // The implicit create was rolled back too: the collection is gone with its document.
    assert!(!w.sets[0].nodes[0].data.contains_key("test.c"));
}

#[test]
fn killed_primary_is_replaced_after_the_timeout_and_rejoins() {
    let (mut w, t0) = world(3);
    w.kill(0, 0, t0);
    w.tick(t0);
    assert!(w.sets[0].sync_source().is_none());
    w.tick(t0 + TIMEOUT);
    let p = w.sets[0].sync_source().unwrap();
    assert_ne!(p, 0);
    let new_primary_noop = w.sets[0].nodes[p].oplog.last().unwrap();
    assert_eq!(
        new_primary_noop.doc.get_document("o").unwrap(),
        &doc! {"msg": "new primary"}
    );
    w.restart(0, 0, t0 + TIMEOUT);
    w.tick(t0 + TIMEOUT);
    assert_eq!(ids(&w, 0), ids(&w, p));
    assert_eq!(w.sets[0].nodes[0].state, MemberState::Secondary);
}

#[test]
fn minority_side_never_elects() {
    let (mut w, t0) = world(3);
    w.kill(0, 1, t0);
    w.kill(0, 2, t0);
    w.tick(t0 + TIMEOUT);
    w.tick(t0 + TIMEOUT * 2);
    assert_eq!(
        w.sets[0].nodes[0].state,
        MemberState::Secondary,
        "no majority: steps down"
    );
    w.tick(t0 + TIMEOUT * 10);
    assert!(w.sets[0].primary_index().is_none());
}

#[test]
fn step_down_hands_over_to_a_caught_up_secondary() {
    let (mut w, t0) = world(3);
    w.sets[0].nodes[1].lag = Duration::from_secs(60);
    w.sets[0].nodes[2].lag = Duration::from_secs(60);
    w.insert(0, 0, "test.c", vec![doc! {"_id": 1}], false, t0)
        .unwrap();
    let written = w.sets[0].nodes[0].oplog.last().unwrap().id;
    w.step_down(0, t0).unwrap();
    let p = w.sets[0].sync_source().unwrap();
    assert_ne!(p, 0);
    assert!(
        w.sets[0].nodes[p].oplog.contains(&written),
        "caught up before the handover"
    );
}

#[test]
fn periodic_noops_only_when_idle() {
    let (mut w, t0) = world(1);
    w.cfg.noop_interval = Duration::from_secs(10);
    let before = w.sets[0].nodes[0].oplog.len();
    w.tick(t0 + Duration::from_secs(5));
    assert_eq!(w.sets[0].nodes[0].oplog.len(), before);
    w.tick(t0 + Duration::from_secs(10));
    let last = w.sets[0].nodes[0].oplog.last().unwrap();
    assert_eq!(
        last.doc.get_document("o").unwrap(),
        &doc! {"msg": "periodic noop"}
    );
    assert_eq!(last.doc.get_str("ns").unwrap(), "");
}

#[test]
fn timestamps_strictly_increase() {
    let (mut w, t0) = world(1);
    for i in 0..50 {
        w.insert(0, 0, "test.c", vec![doc! {"_id": i}], false, t0)
            .unwrap();
    }
    let ts: Vec<(u32, u32)> = w.sets[0].nodes[0]
        .oplog
        .iter()
        .map(|e| ts_key(e.id.ts))
        .collect();
    assert!(ts.windows(2).all(|p| p[0] < p[1]));
}

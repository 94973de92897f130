//! Membership and draining, driven by hand.

use super::*;

#[test]
fn a_hidden_member_of_the_configuration_is_read_too() {
    let mut h = H::new(
        spec(&["a:1", "b:1"], None),
        config(WholeEntries::All, Release::Quorum, 100),
        Some(id(1)),
    );
    let cfg = rs_config(
        2,
        &[
            ("a:1", true, false),
            ("b:1", true, false),
            ("h:1", true, true),
        ],
        "a:1",
    );
    let out = h.send(A, MemberMsg::Config(Box::new(cfg)));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Start { addr, .. } if addr == "h:1")));
    assert!(notes(&out).iter().any(
        |n| matches!(n, Note::UnlistedMembers { members, listed: true } if members == &["h:1"])
    ));
    assert_eq!(h.core.members().count(), 3);
    assert_eq!(h.core.quorum(), 2);
}

#[test]
fn a_listed_alias_is_matched_to_its_configured_member_by_hello_me() {
    let mut h = H::new(
        spec(&["alias:1", "b:1"], None),
        config(WholeEntries::All, Release::Quorum, 100),
        Some(id(1)),
    );
    h.probe(A, true, "a:1"); // alias:1 calls itself a:1
    let cfg = rs_config(2, &[("a:1", true, false), ("b:1", true, false)], "a:1");
    let out = h.send(A, MemberMsg::Config(Box::new(cfg)));
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::Start { .. } | Action::Stop(_))),
        "{out:?}"
    );
    let addrs: Vec<&str> = h.core.members().map(|m| m.1).collect();
    assert_eq!(addrs, ["alias:1", "b:1"]);
}

#[test]
fn a_reconfig_removing_a_member_stops_it_and_older_configurations_are_ignored() {
    let mut h = H::three(WholeEntries::All, Release::Quorum);
    h.all_tailing();
    let all = [
        ("a:1", true, false),
        ("b:1", true, false),
        ("c:1", true, false),
    ];
    h.send(A, MemberMsg::Config(Box::new(rs_config(2, &all, "a:1"))));
    let two = [("a:1", true, false), ("b:1", true, false)];
    let out = h.send(A, MemberMsg::Config(Box::new(rs_config(3, &two, "a:1"))));
    assert!(out.iter().any(|a| matches!(a, Action::Stop(C))));
    assert!(notes(&out)
        .iter()
        .any(|n| matches!(n, Note::MemberRemoved(a) if a == "c:1")));
    assert!(!h.core.is_member(C));
    assert_eq!(h.core.quorum(), 2);
    // A member still on the old configuration does not bring c back.
    let out = h.send(B, MemberMsg::Config(Box::new(rs_config(2, &all, "b:1"))));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Start { .. })),
        "{out:?}"
    );
    // A message from the removed member is ignored.
    assert!(h.batch(C, &[2], false).is_empty());
}

#[test]
fn non_voters_do_not_count_and_the_quorum_is_the_write_majority() {
    let mut h = H::three(WholeEntries::All, Release::Quorum);
    h.all_tailing();
    let cfg = [
        ("a:1", true, false),
        ("b:1", true, false),
        ("c:1", false, false),
    ];
    h.send(A, MemberMsg::Config(Box::new(rs_config(2, &cfg, "a:1"))));
    assert_eq!(h.core.quorum(), 2);
    h.batch(A, &[2], false);
    assert!(
        committed(&h.batch(C, &[2], false)).is_empty(),
        "c does not vote"
    );
    assert_eq!(committed(&h.batch(B, &[2], false)), vec![2]);
}

#[test]
fn a_configured_quorum_below_the_write_majority_is_warned_about_once() {
    let mut h = H::new(
        spec(&["a:1", "b:1", "c:1"], Some(1)),
        config(WholeEntries::All, Release::Quorum, 100),
        Some(id(1)),
    );
    let all = [
        ("a:1", true, false),
        ("b:1", true, false),
        ("c:1", true, false),
    ];
    let out = h.send(A, MemberMsg::Config(Box::new(rs_config(2, &all, "a:1"))));
    assert!(notes(&out).iter().any(|n| matches!(
        n,
        Note::LowQuorum {
            quorum: 1,
            write_majority: 2
        }
    )));
    assert_eq!(h.core.quorum(), 1, "the configured quorum is kept");
    let out = h.send(B, MemberMsg::Config(Box::new(rs_config(3, &all, "b:1"))));
    assert!(!notes(&out)
        .iter()
        .any(|n| matches!(n, Note::LowQuorum { .. })));
}

#[test]
fn another_replica_sets_configuration_is_ignored() {
    let mut h = H::three(WholeEntries::All, Release::Quorum);
    let mut cfg = rs_config(9, &[("x:1", true, false)], "x:1");
    cfg.set = "other".into();
    let out = h.send(A, MemberMsg::Config(Box::new(cfg)));
    assert!(matches!(notes(&out)[..], [Note::WrongReplicaSet { .. }]));
    assert_eq!(h.core.members().count(), 3);
}

#[test]
fn discovery_adds_and_removes_members_until_a_configuration_arrives() {
    let mut h = H::three(WholeEntries::All, Release::Quorum);
    let out = h.step(Input::Members(spec(&["a:1", "b:1", "d:1"], None)));
    assert!(out.iter().any(|a| matches!(a, Action::Stop(C))));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Start { node: NodeId(2), addr, .. } if addr == "d:1")));
}

// --- draining ---

#[test]
fn a_removed_shard_is_drained_once_a_quorum_is_idle_and_nothing_is_pending() {
    let mut h = H::three(WholeEntries::All, Release::Quorum);
    h.all_tailing();
    h.step(Input::Drain);
    assert!(!h.core.drained());
    h.send(A, MemberMsg::Idle);
    h.batch(B, &[2], true);
    h.send(B, MemberMsg::Idle);
    assert!(!h.core.drained(), "entry 2 is pending");
    h.batch(A, &[2], true);
    h.send(A, MemberMsg::Idle);
    assert!(h.core.drained());
}

//! Replica set reconfiguration (`replSetReconfig`, [`Cluster::reconfigure`](crate::Cluster::reconfigure),
//! `{mongosimControl: "reconfig"}`): validating a new config against the old one as
//! `repl_set_config_checks.cpp` does, starting added members (initial sync) and applying
//! the change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bson::Bson;

use crate::error::CmdError;
use crate::error::SimError;
use crate::membership::{self, MemberSpec};
use crate::runtime::{bind, Shared};
use crate::world::{MemberState, Proc, SetRole, World};

fn reconfig_error(code: i32, name: &'static str, msg: impl Into<String>) -> SimError {
    SimError::Command(CmdError::new(code, name, msg))
}

/// A validated reconfig, ready to apply.
struct ReconfigPlan {
    /// Per new-config member: its existing node index, or the port to start it on
    /// (0 = ephemeral).
    slots: Vec<(MemberSpec, Result<usize, u16>)>,
    version: i32,
}

fn plan_reconfig(
    w: &World,
    s: usize,
    mut members: Vec<MemberSpec>,
    version: Option<i64>,
    force: bool,
    executing: Option<usize>,
) -> Result<ReconfigPlan, SimError> {
    let set = &w.sets[s];
    let current: Vec<&MemberSpec> = set.config_members().map(|(_, n)| &n.member).collect();
    let mut next_id = set
        .nodes
        .iter()
        .filter_map(|n| n.member.id)
        .max()
        .unwrap_or(-1)
        + 1;
    let mut next_port = {
        let max = w
            .sets
            .iter()
            .flat_map(|x| x.nodes.iter().map(|n| n.addr.port()))
            .chain(w.sharding.as_ref().map(|sh| sh.mongos.port()))
            .max()
            .unwrap_or(0);
        if w.base_port == 0 {
            0
        } else {
            max.saturating_add(1)
        }
    };
    let mut slots = Vec::with_capacity(members.len());
    for m in &mut members {
        let slot = match m.host {
            Some(h) => match w.locate(h) {
                Some(Proc::Node { set: s2, node }) if s2 == s => Ok(node),
                Some(_) => {
                    return Err(reconfig_error(
                        103,
                        "NewReplicaSetConfigurationIncompatible",
                        format!(
                            "host {h} is another process of this simulation, not a member of {}",
                            set.name
                        ),
                    ))
                }
                None => Err(h.port()),
            },
            None => {
                let port = next_port;
                if next_port != 0 {
                    next_port = next_port.saturating_add(1);
                }
                Err(port)
            }
        };
        if let Ok(node) = slot {
            let old = &set.nodes[node];
            if !old.removed {
                if let Some(id) = m.id.filter(|id| Some(*id) != old.member.id) {
                    return Err(reconfig_error(
                        103,
                        "NewReplicaSetConfigurationIncompatible",
                        format!(
                            "New and old configurations both have members with host of {} but in the new configuration the _id field is {id} and in the old configuration it is {} for replica set {}",
                            old.addr,
                            old.member.id.unwrap_or_default(),
                            set.name
                        ),
                    ));
                }
                if old.member.arbiter_only != m.arbiter_only {
                    return Err(reconfig_error(
                        103,
                        "NewReplicaSetConfigurationIncompatible",
                        format!(
                            "New and old configurations differ in the setting of the arbiterOnly field for member {}; to make this change, remove then re-add the member",
                            old.addr
                        ),
                    ));
                }
            }
            if m.id.is_none() {
                m.id = old.member.id;
            }
        }
        if m.id.is_none() {
            m.id = Some(next_id);
            next_id += 1;
        }
        slots.push((m.clone(), slot));
    }
    // Fill hosts for validation of uniqueness (new hostless members get distinct ports).
    let for_validation: Vec<MemberSpec> = slots
        .iter()
        .map(|(m, slot)| {
            let mut m = m.clone();
            if let Ok(node) = slot {
                m.host = Some(set.nodes[*node].addr);
            }
            m
        })
        .collect();
    membership::validate_set(
        &for_validation,
        w.version,
        set.role == SetRole::ConfigServer,
    )
    .map_err(SimError::Command)?;
    let version = if force {
        let given = version.unwrap_or(i64::from(set.set_version));
        given + 10_000 + i64::from(rand::random::<u32>() % 100_000)
    } else {
        let v = version.unwrap_or(i64::from(set.set_version) + 1);
        if v <= i64::from(set.set_version) {
            return Err(reconfig_error(
                103,
                "NewReplicaSetConfigurationIncompatible",
                format!(
                    "New replica set configuration version and term must be greater than old, but {{ version: {v}, term: {} }} is not greater than {{ version: {}, term: {} }} for replica set {}",
                    set.config_term, set.set_version, set.config_term, set.name
                ),
            ));
        }
        // validateSingleNodeChange: at most one voter added or removed.
        let old_voters: std::collections::BTreeSet<i32> = current
            .iter()
            .filter(|m| m.is_voter())
            .filter_map(|m| m.id)
            .collect();
        let new_voters: std::collections::BTreeSet<i32> = slots
            .iter()
            .filter(|(m, _)| m.is_voter())
            .filter_map(|(m, _)| m.id)
            .collect();
        if old_voters.symmetric_difference(&new_voters).count() > 1 {
            return Err(reconfig_error(
                93,
                "InvalidReplicaSetConfig",
                "Non force replica set reconfig can only add or remove at most 1 voting member.",
            ));
        }
        if let Some(me) = executing {
            let stays_electable = slots
                .iter()
                .any(|(m, slot)| *slot == Ok(me) && m.is_electable());
            if !stays_electable {
                return Err(reconfig_error(
                    103,
                    "NewReplicaSetConfigurationIncompatible",
                    format!(
                        "This node, {}, with _id {} is not electable under the new configuration with version {v} for replica set {}",
                        set.nodes[me].addr,
                        set.nodes[me].member.id.unwrap_or_default(),
                        set.name
                    ),
                ));
            }
        }
        v
    };
    let version = i32::try_from(version)
        .map_err(|_| reconfig_error(2, "BadValue", format!("version {version} is out of range")))?;
    Ok(ReconfigPlan { slots, version })
}

/// Validates, starts the processes of new members, and installs the config.
pub(crate) async fn reconfigure(
    shared: &Arc<Shared>,
    s: usize,
    members: Vec<MemberSpec>,
    version: Option<i64>,
    force: bool,
    executing: Option<usize>,
) -> Result<Vec<SocketAddr>, SimError> {
    let plan = {
        let w = shared.world();
        plan_reconfig(&w, s, members, version, force, executing)?
    };
    let mut listeners = Vec::new();
    let mut slots = Vec::with_capacity(plan.slots.len());
    for (m, slot) in plan.slots {
        match slot {
            Ok(node) => slots.push((m, Ok(node))),
            Err(port) => {
                let (l, addr) = bind(port).await?;
                listeners.push((l, addr));
                slots.push((m, Err(addr)));
            }
        }
    }
    let addrs = {
        let mut w = shared.world();
        let now = Instant::now();
        let cfg = w.cfg.clone();
        let mut keep = Vec::new();
        let mut addrs = Vec::new();
        for (mut m, slot) in slots {
            let n = match slot {
                Ok(node) => {
                    let addr = w.sets[s].nodes[node].addr;
                    m.host = Some(addr);
                    let was_removed = w.sets[s].nodes[node].removed;
                    let node_state = &mut w.sets[s].nodes[node];
                    node_state.member = m;
                    node_state.removed = false;
                    if node_state.member.arbiter_only {
                        node_state.state = MemberState::Arbiter;
                    }
                    if was_removed {
                        tracing::info!(%addr, "member re-added");
                    }
                    node
                }
                Err(addr) => {
                    m.host = Some(addr);
                    w.sets[s]
                        .nodes
                        .push(crate::world::NodeState::new(addr, m, &cfg, now));
                    let node = w.sets[s].nodes.len() - 1;
                    w.initial_sync(s, node);
                    tracing::info!(%addr, "member added; initial sync copied its sync source");
                    node
                }
            };
            keep.push(n);
            addrs.push(w.sets[s].nodes[n].addr);
        }
        for n in 0..w.sets[s].nodes.len() {
            if keep.contains(&n) || w.sets[s].nodes[n].removed {
                continue;
            }
            w.sets[s].nodes[n].removed = true;
            if w.sets[s].nodes[n].state == MemberState::Primary {
                w.step_down_node(s, n, now);
            }
            tracing::info!(addr = %w.sets[s].nodes[n].addr, "member removed from the config");
        }
        for n in 0..w.sets[s].nodes.len() {
            let stale = w.sets[s].nodes[n]
                .sync_from
                .is_some_and(|j| !keep.contains(&j));
            if stale {
                w.sets[s].nodes[n].sync_from = None;
            }
            let node = &w.sets[s].nodes[n];
            if node.state == MemberState::Primary && !node.member.is_electable() {
                // "Could not remain primary because no longer electable".
                w.step_down_node(s, n, now);
            }
        }
        let term = w.sets[s]
            .primary_index()
            .map(|p| w.sets[s].nodes[p].term)
            .unwrap_or(w.sets[s].config_term);
        let set = &mut w.sets[s];
        set.set_version = plan.version;
        set.config_term = if force { -1 } else { term };
        tracing::info!(set = %set.name, version = plan.version, force, "reconfig installed");
        addrs
    };
    for (l, a) in listeners {
        shared.spawn_listener(l, a);
    }
    shared.notify();
    Ok(addrs)
}

/// The `replSetReconfig` command run on member `n` of set `s`.
pub(crate) async fn repl_set_reconfig_cmd(
    shared: &Arc<Shared>,
    s: usize,
    n: usize,
    cmd: &bson::Document,
) -> Result<bson::Document, CmdError> {
    let cfg = cmd.get_document("replSetReconfig").map_err(|_| {
        CmdError::new(
            14,
            "TypeMismatch",
            "BSON field 'replSetReconfig' is the wrong type, expected type 'object'",
        )
    })?;
    let force = matches!(cmd.get("force"), Some(Bson::Boolean(true)));
    {
        let w = shared.world();
        let set = &w.sets[s];
        let node = &set.nodes[n];
        if !force && !node.writable_primary() {
            return Err(CmdError::new(
                10107,
                "NotWritablePrimary",
                format!(
                    "replSetReconfig should only be run on a writable PRIMARY. Current state {};",
                    node.state.name()
                ),
            ));
        }
        let name = cfg.get_str("_id").unwrap_or_default();
        if name != set.name {
            return Err(CmdError::new(
                103,
                "NewReplicaSetConfigurationIncompatible",
                format!(
                    "New and old configurations differ in replica set name; old was {}, and new is {name}",
                    set.name
                ),
            ));
        }
    }
    let version = match cfg.get("version") {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) if v.fract() == 0.0 => *v as i64,
        _ => {
            return Err(CmdError::new(
                40414,
                "Location40414",
                "BSON field 'ReplSetConfig.version' is missing but a required field",
            ))
        }
    };
    let docs = cfg.get_array("members").map_err(|_| {
        CmdError::new(
            40414,
            "Location40414",
            "BSON field 'ReplSetConfig.members' is missing but a required field",
        )
    })?;
    let mut members = Vec::with_capacity(docs.len());
    for d in docs {
        let Bson::Document(d) = d else {
            return Err(CmdError::new(
                14,
                "TypeMismatch",
                "members must be an array of objects",
            ));
        };
        let m = MemberSpec::from_config_doc(d, true)?;
        if m.id.is_none() {
            return Err(CmdError::new(
                40414,
                "Location40414",
                "BSON field 'MemberConfig._id' is missing but a required field",
            ));
        }
        members.push(m);
    }
    reconfigure(shared, s, members, Some(version), force, Some(n))
        .await
        .map_err(|e| match e {
            SimError::Command(c) => c,
            other => CmdError::new(2, "BadValue", other.to_string()),
        })?;
    Ok(bson::doc! {"ok": 1.0})
}

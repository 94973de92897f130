//! Multi-document transactions and retryable-write statements: which transaction a
//! write belongs to, commitTransaction / abortTransaction, and the per-statement session
//! context.

use std::sync::Arc;
use std::time::Instant;

use bson::{Bson, Document};

use super::writes::finish_write;
use super::{ok, CmdResult};
use crate::error::CmdError;
use crate::runtime::Shared;
use crate::world::{MemberState, Proc, SessionCtx, World};

/// The transaction a write belongs to (`autocommit: false` with lsid and txnNumber).
pub(super) fn txn_key_of(cmd: &Document) -> Option<String> {
    if cmd.get_bool("autocommit").ok() != Some(false) {
        return None;
    }
    let (lsid, txn) = SessionCtx::lsid_and_txn(cmd)?;
    Some(crate::world::txn_key(lsid.get("id")?, txn))
}

/// Moves operations captured inside a transaction to the nodes' transaction buffers.
pub(super) fn flush_capture(w: &mut World) {
    let captured = w.capture.take();
    let key = w.txn_key.take();
    if let (Some(ops), Some(key)) = (captured, key) {
        for (s, n, op) in ops {
            let order = w.txn_participants.entry(key.clone()).or_default();
            if !order.contains(&s) {
                order.push(s);
            }
            w.sets[s].nodes[n]
                .txns
                .entry(key.clone())
                .or_default()
                .push(op);
        }
    }
}

/// commitTransaction: through mongos, a transaction that wrote on more than one shard
/// commits with two-phase commit (`two_phase.rs`); any other commits on the member(s) that
/// hold it.
pub(super) async fn commit(shared: &Arc<Shared>, proc: Proc, cmd: &Document) -> CmdResult {
    if proc == Proc::Mongos {
        if let Some((lsid, txn)) = SessionCtx::lsid_and_txn(cmd) {
            let key = crate::world::txn_key(lsid.get("id").unwrap_or(&Bson::Null), txn);
            let participants: Vec<usize> = {
                let w = shared.world();
                w.txn_participants
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|s| w.sets[*s].nodes.iter().any(|n| n.txns.contains_key(&key)))
                    .collect()
            };
            if participants.len() > 1 {
                return super::two_phase::commit(shared, &key, &lsid, txn, participants).await;
            }
        }
    }
    let (reply, committed) = end_transaction(shared, proc, cmd, true)?;
    finish_write(shared, proc, cmd, reply, Some(&committed)).await
}

/// commitTransaction / abortTransaction: log (or drop) the buffered operations on every
/// node that holds some for this transaction (through mongos: the one shard touched; more
/// than one commit through [`commit`]'s two-phase commit). Also returns the
/// nodes that logged a commit (their entries are what the write concern waits for).
pub(super) fn end_transaction(
    shared: &Arc<Shared>,
    proc: Proc,
    cmd: &Document,
    commit: bool,
) -> Result<(Document, Vec<(usize, usize)>), CmdError> {
    let (lsid, txn) = SessionCtx::lsid_and_txn(cmd).ok_or_else(|| {
        CmdError::new(
            50768,
            "Location50768",
            "Given transaction number does not match any in-progress transactions.",
        )
    })?;
    let key = crate::world::txn_key(lsid.get("id").unwrap_or(&Bson::Null), txn);
    let now = Instant::now();
    let mut committed = Vec::new();
    {
        let mut w = shared.world();
        w.txn_participants.remove(&key);
        let nodes: Vec<(usize, usize)> = match proc {
            Proc::Node { set, node } => {
                w.check_writable(set, node)?;
                vec![(set, node)]
            }
            Proc::Mongos => (0..w.sets.len())
                .flat_map(|s| (0..w.sets[s].nodes.len()).map(move |n| (s, n)))
                .collect(),
        };
        for (s, n) in nodes {
            if !w.sets[s].nodes[n].txns.contains_key(&key) {
                continue;
            }
            if commit {
                if w.sets[s].nodes[n].state != MemberState::Primary {
                    return Err(CmdError::not_primary());
                }
                w.commit_transaction(s, n, &key, &lsid, txn, now);
                committed.push((s, n));
            } else {
                w.sets[s].nodes[n].txns.remove(&key);
            }
        }
    }
    shared.notify();
    Ok((ok(Document::new()), committed))
}

/// Marks the statement being executed for retryable-write oplog fields.
pub(super) fn enter_statement(
    w: &mut World,
    session: &Option<SessionCtx>,
    txn: &Option<String>,
    index: usize,
) {
    // Set only here, inside the statement loop, so that an early error return can never
    // leave a capture behind for the next command.
    if w.capture.is_none() && txn.is_some() {
        w.capture = Some(Vec::new());
        w.txn_key = txn.clone();
    }
    if let Some(sess) = session {
        let prev = w.session.take().map(|s| s.prev).unwrap_or_default();
        w.session = Some(SessionCtx {
            stmt_id: index as i32,
            prev,
            ..sess.clone()
        });
    }
}

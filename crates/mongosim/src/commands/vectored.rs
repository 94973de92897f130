//! An insert command on 8.0 outside a transaction: its documents are split into the
//! batches a shard receives and each batch of two or more is logged as one vectored
//! insert (`world/vectored.rs` has the shape and its sources).
//!
//! Through mongos an ordered insert is cut into child batches wherever the target shard
//! changes, an unordered one is grouped per shard (mongodb/mongo
//! `src/mongo/s/write_ops/batch_write_op.cpp`: "If ordered and we have a previous
//! endpoint, make sure we don't need to send these targeted writes to any other
//! endpoints"); each document keeps its statement index in the command.

use std::time::Instant;

use bson::{doc, Bson, Document};

use super::writes::{route, write_error};
use crate::error::CmdError;
use crate::world::{Proc, SessionCtx, VectoredFallback, World, VECTORED_INSERT_MAX_DOCS};

/// What the insert did.
#[derive(Debug, Default)]
pub(super) struct Inserted {
    pub n: usize,
    pub errors: Vec<Bson>,
    /// The members written, for the write concern.
    pub written: Vec<(usize, usize)>,
}

/// A child batch: its member and `(statement index, document)`s.
type Batch = ((usize, usize), Vec<(usize, Document)>);

/// Runs an insert of `docs` on 8.0 outside a transaction (see the module docs).
pub(super) fn insert(
    w: &mut World,
    proc: Proc,
    ns: &str,
    session: &Option<SessionCtx>,
    docs: Vec<Document>,
    ordered: bool,
    now: Instant,
) -> Inserted {
    let mut out = Inserted::default();
    let mut batches: Vec<Batch> = Vec::new();
    for (i, mut d) in docs.into_iter().enumerate() {
        if !d.contains_key("_id") {
            let mut with_id = doc! {"_id": bson::oid::ObjectId::new()};
            with_id.extend(d);
            d = with_id;
        }
        let target = match proc {
            Proc::Node { set, node } => Ok((set, node)),
            Proc::Mongos => route(w, ns, d.get("_id")).and_then(|t| {
                t.first()
                    .copied()
                    .ok_or_else(|| CmdError::new(70, "ShardNotFound", "no shard owns the key"))
            }),
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                out.errors.push(write_error(i, &e));
                if ordered {
                    break;
                }
                continue;
            }
        };
        let same = if ordered {
            batches.last_mut().filter(|(t, _)| *t == target)
        } else {
            batches.iter_mut().find(|(t, _)| *t == target)
        };
        match same {
            Some((_, b)) => b.push((i, d)),
            None => batches.push((target, vec![(i, d)])),
        }
    }
    'batches: for ((s, n), batch) in batches {
        if proc == Proc::Mongos {
            out.written.push((s, n));
        }
        let mut rest = batch;
        while !rest.is_empty() {
            let chunk: Vec<(usize, Document)> = rest
                .drain(..rest.len().min(VECTORED_INSERT_MAX_DOCS))
                .collect();
            let first = chunk[0].0;
            enter(w, session, first);
            let one_at_a_time = match w.insert_vectored(s, n, ns, chunk.clone(), now) {
                Ok(c) => {
                    out.n += c;
                    continue;
                }
                Err(VectoredFallback::OneAtATime) => true,
                Err(VectoredFallback::Error(e)) => {
                    out.errors.push(write_error(first, &e));
                    if ordered {
                        break 'batches;
                    }
                    false
                }
            };
            if !one_at_a_time {
                continue 'batches;
            }
            for (i, d) in chunk {
                enter(w, session, i);
                match w.insert(s, n, ns, vec![d], false, now) {
                    Ok(c) => out.n += c,
                    Err((_, e)) => {
                        out.errors.push(write_error(i, &e));
                        if ordered {
                            break 'batches;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Makes statement `index` the session's current one (keeping its per-set `prevOpTime`).
fn enter(w: &mut World, session: &Option<SessionCtx>, index: usize) {
    super::txn::enter_statement(w, session, &None, index);
}

//! Oplog tailing: finds on `local.oplog.rs` (tailable, awaitData), getMore with its
//! awaitData wait and the errors a rollback or a capped rollover produces, and killCursors.

use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document, Timestamp};

use super::find::{
    check_fields, cursor_reply, filter_sort_project, take_batch, FindArgs, GET_MORE_ARGS,
};
use super::{cmd_str, get_i64, ok, type_error, CmdResult, BATCH_BYTES, DEFAULT_AWAIT};
use crate::error::CmdError;
use crate::matcher;
use crate::oplog::ts_key;
use crate::runtime::Shared;
use crate::world::{bad_value, Cursor, CursorKind, Proc, World};

/// Lower bound for the scan from a `ts: {$gt|$gte: X}` filter (an optimization only: every
/// entry is still checked against the full filter).
fn scan_start(w: &World, s: usize, n: usize, filter: &Document) -> usize {
    let log = &w.sets[s].nodes[n].oplog;
    match filter.get("ts") {
        Some(Bson::Document(ops)) => {
            if let Some(Bson::Timestamp(ts)) = ops.get("$gt") {
                log.index_after(*ts)
            } else if let Some(Bson::Timestamp(ts)) = ops.get("$gte") {
                log.index_at_or_after(*ts)
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// Scans the oplog from `start`; returns the batch and the ts of the last examined entry.
fn scan_oplog(
    w: &World,
    s: usize,
    n: usize,
    start: usize,
    filter: &Document,
    projection: Option<&Document>,
    max: Option<i64>,
) -> Result<(Vec<Document>, Option<Timestamp>), CmdError> {
    let log = &w.sets[s].nodes[n].oplog;
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    for e in log.iter().skip(start) {
        if max.is_some_and(|m| out.len() as i64 >= m)
            || (!out.is_empty() && bytes + e.size > BATCH_BYTES)
        {
            break;
        }
        last = Some(e.id.ts);
        if matcher::matches(&e.doc, filter).map_err(bad_value)? {
            bytes += e.size;
            out.push(match projection {
                Some(p) => matcher::project(&e.doc, p),
                None => e.doc.clone(),
            });
        }
    }
    Ok((out, last))
}

pub(super) fn find_oplog(
    w: &mut World,
    s: usize,
    n: usize,
    a: &FindArgs,
    first_n: Option<i64>,
) -> CmdResult {
    let reverse = a
        .sort
        .as_ref()
        .and_then(|s| get_i64(s, "$natural"))
        .is_some_and(|d| d < 0);
    if a.sort.as_ref().is_some_and(|s| !s.contains_key("$natural")) || reverse {
        if a.tailable {
            return Err(CmdError::new(
                2,
                "BadValue",
                "cannot use tailable option with a sort other than {$natural: 1}",
            ));
        }
        let natural_only = a.sort.as_ref().is_some_and(|s| s.len() == 1);
        let kept = if reverse && natural_only {
            // A reverse scan from the newest entry, stopping at the limit (as mongod's
            // collection scan does): "the newest entry" costs one entry, not the oplog.
            let want = a.limit.map(|l| a.skip + l.max(0) as usize);
            let mut out = Vec::new();
            for e in w.sets[s].nodes[n].oplog.iter().rev() {
                if want.is_some_and(|want| out.len() >= want) {
                    break;
                }
                if matcher::matches(&e.doc, &a.filter).map_err(bad_value)? {
                    out.push(e.doc.clone());
                }
            }
            out.into_iter()
                .skip(a.skip)
                .map(|d| match &a.projection {
                    Some(p) => matcher::project(&d, p),
                    None => d,
                })
                .collect()
        } else {
            let docs: Vec<Document> = w.sets[s].nodes[n]
                .oplog
                .iter()
                .map(|e| e.doc.clone())
                .collect();
            filter_sort_project(docs, a)?
        };
        let mut buf: std::collections::VecDeque<Document> = kept.into();
        let batch = take_batch(&mut buf, first_n);
        let id = if buf.is_empty() || a.single_batch {
            0
        } else {
            let id = w.new_cursor_id();
            w.sets[s].nodes[n].cursors.insert(
                id,
                Cursor {
                    ns: a.ns.clone(),
                    kind: CursorKind::Buffered(buf),
                    limit_remaining: None,
                },
            );
            id
        };
        return Ok(cursor_reply(id, &a.ns, batch, true));
    }
    if a.tailable && w.sets[s].nodes[n].oplog.is_empty() {
        // A tailable find on an empty capped collection returns cursor id 0.
        return Ok(cursor_reply(0, &a.ns, Vec::new(), true));
    }
    let start = scan_start(w, s, n, &a.filter) + a.skip;
    let max = match (first_n, a.limit) {
        (Some(b), Some(l)) => Some(b.min(l)),
        (b, l) => b.or(l),
    };
    let (batch, last) = scan_oplog(w, s, n, start, &a.filter, a.projection.as_ref(), max)?;
    let last_ts = last.or_else(|| {
        // Nothing examined: position at the entry before the scan start (or the newest).
        let log = &w.sets[s].nodes[n].oplog;
        start
            .checked_sub(1)
            .and_then(|i| log.get(i))
            .map(|e| e.id.ts)
    });
    let limit_remaining = a.limit.map(|l| l - batch.len() as i64);
    let exhausted_limit = limit_remaining.is_some_and(|r| r <= 0);
    if a.tailable {
        if exhausted_limit || a.single_batch {
            return Ok(cursor_reply(0, &a.ns, batch, true));
        }
        let id = w.new_cursor_id();
        w.sets[s].nodes[n].cursors.insert(
            id,
            Cursor {
                ns: a.ns.clone(),
                kind: CursorKind::Tail {
                    filter: a.filter.clone(),
                    projection: a.projection.clone(),
                    last_ts,
                    await_data: a.await_data,
                },
                limit_remaining,
            },
        );
        return Ok(cursor_reply(id, &a.ns, batch, true));
    }
    // Non-tailable oplog scan: materialize the rest.
    let log = &w.sets[s].nodes[n].oplog;
    let resume = match last_ts {
        Some(ts) => log.index_after(ts),
        None => log.len(),
    };
    let rest_args = FindArgs {
        ns: a.ns.clone(),
        filter: a.filter.clone(),
        projection: a.projection.clone(),
        sort: None,
        skip: 0,
        limit: limit_remaining,
        batch_size: None,
        single_batch: false,
        tailable: false,
        await_data: false,
    };
    let rest = if exhausted_limit {
        // The limit is reached (a `limit: 1` probe): nothing more to copy.
        Vec::new()
    } else {
        let rest_docs: Vec<Document> = log.iter().skip(resume).map(|e| e.doc.clone()).collect();
        filter_sort_project(rest_docs, &rest_args)?
    };
    if rest.is_empty() || a.single_batch {
        return Ok(cursor_reply(0, &a.ns, batch, true));
    }
    let id = w.new_cursor_id();
    w.sets[s].nodes[n].cursors.insert(
        id,
        Cursor {
            ns: a.ns.clone(),
            kind: CursorKind::Buffered(rest.into()),
            limit_remaining: None,
        },
    );
    Ok(cursor_reply(id, &a.ns, batch, true))
}

enum Step {
    Reply(Document),
    Wait {
        deadline: tokio::time::Instant,
        epoch: u64,
    },
}

pub(super) async fn get_more(
    shared: &Arc<Shared>,
    proc: Proc,
    db: &str,
    cmd: &Document,
) -> CmdResult {
    let id = match cmd.get("getMore") {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        _ => return Err(type_error("getMore", "long")),
    };
    check_fields(cmd, "getMore", GET_MORE_ARGS)?;
    let coll = cmd_str(cmd, "collection")?;
    let ns = format!("{db}.{coll}");
    let batch_size = get_i64(cmd, "batchSize").filter(|b| *b > 0);
    let max_time = get_i64(cmd, "maxTimeMS").map(|ms| Duration::from_millis(ms.max(0) as u64));
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut start_epoch: Option<u64> = None;
    loop {
        let mut rx = shared.changes.subscribe();
        let step = {
            let mut w = shared.world();
            get_more_step(
                &mut w,
                proc,
                id,
                &ns,
                batch_size,
                max_time,
                &mut deadline,
                &mut start_epoch,
            )?
        };
        match step {
            Step::Reply(d) => return Ok(d),
            Step::Wait { deadline, epoch } => {
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                if let Proc::Node { set, node } = proc {
                    let mut w = shared.world();
                    if w.sets[set].nodes[node].epoch != epoch {
                        w.sets[set].nodes[node].cursors.remove(&id);
                        w.sets[set].nodes[node].dead_cursors.remove(&id);
                        return Err(CmdError::new(
                            11602,
                            "InterruptedDueToReplStateChange",
                            "operation was interrupted because of a replication state change (rollback)",
                        ));
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn get_more_step(
    w: &mut World,
    proc: Proc,
    id: i64,
    ns: &str,
    batch_size: Option<i64>,
    max_time: Option<Duration>,
    deadline: &mut Option<tokio::time::Instant>,
    start_epoch: &mut Option<u64>,
) -> Result<Step, CmdError> {
    let not_found = || CmdError::new(43, "CursorNotFound", format!("cursor id {id} not found"));
    let (s, n) = match proc {
        Proc::Mongos => {
            let sh = w.sharding.as_mut().ok_or_else(not_found)?;
            let cursor = sh.cursors.get_mut(&id).ok_or_else(not_found)?;
            let CursorKind::Buffered(buf) = &mut cursor.kind else {
                return Err(not_found());
            };
            let batch = take_batch(buf, batch_size);
            let done = buf.is_empty();
            if done {
                sh.cursors.remove(&id);
            }
            return Ok(Step::Reply(cursor_reply(
                if done { 0 } else { id },
                ns,
                batch,
                false,
            )));
        }
        Proc::Node { set, node } => (set, node),
    };
    if let Some(e) = w.sets[s].nodes[n].dead_cursors.remove(&id) {
        return Err(e);
    }
    let epoch = w.sets[s].nodes[n].epoch;
    start_epoch.get_or_insert(epoch);
    let node = &mut w.sets[s].nodes[n];
    let found = node.cursors.get_mut(&id).ok_or_else(not_found)?;
    if found.ns != ns {
        return Err(CmdError::new(
            13,
            "Unauthorized",
            format!("Requested getMore on namespace '{ns}', but cursor belongs to a different namespace {}", found.ns),
        ));
    }
    // A buffered cursor's batch is taken in place: copying the cursor would copy every
    // document it still holds, on each getMore.
    if let CursorKind::Buffered(buf) = &mut found.kind {
        let batch = take_batch(buf, batch_size);
        let done = buf.is_empty();
        if done {
            node.cursors.remove(&id);
        }
        return Ok(Step::Reply(cursor_reply(
            if done { 0 } else { id },
            ns,
            batch,
            false,
        )));
    }
    let cursor = found.clone();
    match cursor.kind {
        CursorKind::Buffered(_) => Err(not_found()),
        CursorKind::Tail {
            filter,
            projection,
            last_ts,
            await_data,
        } => {
            let log = &w.sets[s].nodes[n].oplog;
            let lost = match (log.first(), last_ts) {
                (_, None) => false,
                (Some(first), Some(lt)) => ts_key(first.id.ts) > ts_key(lt),
                (None, Some(_)) => true,
            };
            if let (true, Some(last_ts)) = (lost, last_ts) {
                w.sets[s].nodes[n].cursors.remove(&id);
                let record_id = (i64::from(last_ts.time) << 32) | i64::from(last_ts.increment);
                return Err(CmdError::new(
                    136,
                    "CappedPositionLost",
                    format!("Executor error during getMore :: caused by :: CollectionScan died due to position in capped collection being deleted. Last seen record id: RecordId({record_id})"),
                ));
            }
            let start = match last_ts {
                Some(lt) => log.index_after(lt),
                None => scan_start(w, s, n, &filter),
            };
            let max = match (batch_size, cursor.limit_remaining) {
                (Some(b), Some(l)) => Some(b.min(l)),
                (b, l) => b.or(l),
            };
            let (batch, last) = scan_oplog(w, s, n, start, &filter, projection.as_ref(), max)?;
            let limit_remaining = cursor.limit_remaining.map(|l| l - batch.len() as i64);
            let node = &mut w.sets[s].nodes[n];
            if let Some(c) = node.cursors.get_mut(&id) {
                if let CursorKind::Tail { last_ts: lt, .. } = &mut c.kind {
                    if last.is_some() {
                        *lt = last;
                    }
                }
                c.limit_remaining = limit_remaining;
            }
            if limit_remaining.is_some_and(|r| r <= 0) {
                node.cursors.remove(&id);
                return Ok(Step::Reply(cursor_reply(0, ns, batch, false)));
            }
            if !batch.is_empty() || !await_data {
                return Ok(Step::Reply(cursor_reply(id, ns, batch, false)));
            }
            let now = tokio::time::Instant::now();
            let dl = *deadline.get_or_insert(now + max_time.unwrap_or(DEFAULT_AWAIT));
            if now >= dl {
                return Ok(Step::Reply(cursor_reply(id, ns, batch, false)));
            }
            Ok(Step::Wait {
                deadline: dl,
                epoch: start_epoch.unwrap_or(epoch),
            })
        }
    }
}

pub(super) fn kill_cursors(shared: &Arc<Shared>, proc: Proc, cmd: &Document) -> CmdResult {
    let ids: Vec<i64> = cmd
        .get_array("cursors")
        .map_err(|_| type_error("cursors", "array"))?
        .iter()
        .filter_map(|b| match b {
            Bson::Int64(v) => Some(*v),
            Bson::Int32(v) => Some(i64::from(*v)),
            _ => None,
        })
        .collect();
    let mut w = shared.world();
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    for id in ids {
        let removed = match proc {
            Proc::Mongos => w
                .sharding
                .as_mut()
                .and_then(|sh| sh.cursors.remove(&id))
                .is_some(),
            Proc::Node { set, node } => {
                let nd = &mut w.sets[set].nodes[node];
                nd.cursors.remove(&id).is_some() || nd.dead_cursors.remove(&id).is_some()
            }
        };
        if removed {
            killed.push(Bson::Int64(id));
        } else {
            not_found.push(Bson::Int64(id));
        }
    }
    Ok(ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
    }))
}

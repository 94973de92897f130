//! Key-only mode: which member is read whole, and when that changes (the rules are in
//! the pipeline's module docs).

use std::sync::atomic::Ordering::Relaxed;

use quorumtail_merge::NodeId;
use quorumtail_tailer::ReadMode;

use super::{Action, Note, Now, ShardCore, SWITCH_AFTER};

impl<P: Clone> ShardCore<P> {
    /// Reads whole entries from `to` from now on (key-only mode); both streams restart
    /// from the watermark.
    pub(super) fn switch_whole(&mut self, to: NodeId, why: String) {
        if self.whole == Some(to) || !self.members.contains_key(&to) {
            return;
        }
        let from = self.whole.replace(to);
        let mut from_addr = None;
        if let Some((f, m)) = from.and_then(|f| self.members.get_mut(&f).map(|m| (f, m))) {
            from_addr = Some(m.addr.clone());
            m.mode = ReadMode::Identity;
            self.out.push(Action::SetMode(f, ReadMode::Identity));
        }
        let Some(m) = self.members.get_mut(&to) else {
            return;
        };
        m.mode = ReadMode::Whole;
        self.out.push(Action::SetMode(to, ReadMode::Whole));
        // It must be read now even if the backlog bound had set it aside.
        if m.paused {
            m.paused = false;
            self.out.push(Action::Resume(to));
        }
        let to_addr = m.addr.clone();
        self.waiting_since = None;
        self.stats.whole_switches.fetch_add(1, Relaxed);
        self.note(Note::WholeSwitched {
            from: from_addr,
            to: to_addr,
            reason: why,
        });
    }

    /// The healthy member furthest ahead among `among` (primary first on a tie).
    pub(super) fn best_member(&self, among: impl Fn(NodeId) -> bool) -> Option<NodeId> {
        self.members
            .iter()
            .filter(|(id, m)| among(**id) && m.state.healthy())
            .max_by_key(|(id, m)| (m.info.last_ts, m.primary, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Key-only mode: keeps the member read whole able to deliver what the release needs
    /// (the rules are in the pipeline's module docs).
    pub(super) fn check_whole(&mut self, now: Now) {
        if !self.key_only {
            return;
        }
        let whole = self
            .whole
            .and_then(|w| self.members.get(&w).map(|m| (w, m)));
        let Some((w, wm)) = whole else {
            if let Some(b) = self.best_member(|_| true) {
                self.switch_whole(b, "no member was read whole".into());
            }
            return;
        };
        if !wm.state.healthy() {
            let why = format!("{} is {}", wm.addr, wm.state);
            if let Some(b) = self.best_member(|id| id != w) {
                self.switch_whole(b, why);
            }
            return;
        }
        let Some(e) = self.engine.as_ref() else {
            return;
        };
        let Some((waiting, reporters)) = e.awaiting_payload() else {
            self.waiting_since = None;
            return;
        };
        let passed = !reporters.contains(w)
            && wm.reading == Some(ReadMode::Whole)
            && e.node_position(w).is_some_and(|p| p.ts >= waiting.ts);
        let since = *self.waiting_since.get_or_insert(now.at);
        let waited = now.at.saturating_duration_since(since);
        // A member read whole that is still working through a backlog (full batches) is
        // slower than the identity readers, not behind: it is left alone. It is replaced
        // when it is at the end of its oplog without the entry (replication lag) or has
        // delivered nothing for a while (a hung connection), for SWITCH_AFTER.
        let stalled = wm
            .moved_at
            .is_none_or(|t| now.at.saturating_duration_since(t) >= SWITCH_AFTER);
        if passed || ((wm.at_end || stalled) && waited >= SWITCH_AFTER) {
            let why = if passed {
                format!(
                    "{} passed entry {waiting} without holding it (another branch)",
                    wm.addr
                )
            } else {
                format!(
                    "entry {waiting} is confirmed by a quorum but {} has not sent it for {waited:?} ({})",
                    wm.addr,
                    if wm.at_end { "it is behind" } else { "it delivers nothing" }
                )
            };
            match self.best_member(|id| id != w && reporters.contains(id)) {
                Some(b) => self.switch_whole(b, why),
                None => self.waiting_since = Some(now.at),
            }
        }
    }
}

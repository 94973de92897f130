//! [`EntryLayout`]: an owned record of one parse of an oplog entry, so that an entry kept
//! for later (in quorumtail, from decoding a batch until the merge releases the entry) is
//! parsed once.
//!
//! [`OplogEntry`] borrows from the raw document, so it cannot be stored next to the buffer
//! it borrows from. The layout keeps what the parse found without the borrow: the scalar
//! fields by value and the borrowed ones (`ns`, `o`, `o2`, `ui`, `lsid`) as byte ranges
//! relative to the start of the entry. [`EntryLayout::view`] rebuilds the view from the same
//! bytes by slicing: no iteration over the document's elements. Slicing checks each range
//! against the bytes, the `ns` range is checked to be UTF-8 and each document range to
//! have a matching length prefix and terminator (constant-time checks), so a layout applied
//! to other bytes yields `None` or another valid view, never a panic.
//!
//! Ranges are relative to the entry, not to the batch that holds it, so the layout does not
//! depend on where the entry sits in a reply.

use bson::RawDocument;

use super::{EntryError, OpKind, OpTime, OplogEntry};
use crate::position::{EntryId, Timestamp};

/// Byte range of a borrowed field, relative to the start of the entry. `u32` because a BSON
/// document's length is an `i32`; a range that does not fit (impossible for a valid
/// document) is stored as one no slice can satisfy, so the view then fails instead of
/// pointing at the wrong bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    const INVALID: Span = Span {
        start: u32::MAX,
        len: u32::MAX,
    };

    /// Where `part` lies within `base`; `part` is a subslice of `base` (both come from the
    /// same parse). Address arithmetic only, no unsafe code.
    fn of(base: &[u8], part: &[u8]) -> Span {
        let offset = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        match (u32::try_from(offset), u32::try_from(part.len())) {
            (Ok(start), Ok(len)) if offset <= base.len() => Span { start, len },
            _ => Span::INVALID,
        }
    }

    fn get(self, bytes: &[u8]) -> Option<&[u8]> {
        let start = usize::try_from(self.start).ok()?;
        let end = start.checked_add(usize::try_from(self.len).ok()?)?;
        bytes.get(start..end)
    }

    fn doc(self, bytes: &[u8]) -> Option<&RawDocument> {
        RawDocument::from_bytes(self.get(bytes)?).ok()
    }
}

/// What one parse of an oplog entry found, owned: the scalar fields of [`OplogEntry`] and
/// the byte ranges of its borrowed fields. Take it with [`OplogEntry::layout`] (or
/// [`EntryLayout::parse`]) and turn it back into the view with [`EntryLayout::view`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EntryLayout {
    /// Length of the entry the layout was taken from.
    len: u32,
    ts: Timestamp,
    term: Option<i64>,
    hash: Option<i64>,
    op: OpKind,
    from_migrate: bool,
    wall: Option<bson::DateTime>,
    txn_number: Option<i64>,
    prev_op_time: Option<OpTime>,
    ns: Option<Span>,
    o: Option<Span>,
    o2: Option<Span>,
    ui: Option<Span>,
    lsid: Option<Span>,
}

impl EntryLayout {
    /// [`OplogEntry::parse`] followed by [`OplogEntry::layout`]: the same errors.
    ///
    /// # Errors
    /// As [`OplogEntry::parse`].
    pub fn parse(raw: &RawDocument) -> Result<EntryLayout, EntryError> {
        OplogEntry::parse(raw).map(|e| e.layout())
    }

    /// The entry's identity, without the raw bytes.
    pub fn id(&self) -> EntryId {
        EntryId {
            ts: self.ts,
            term: self.term,
            hash: self.hash,
        }
    }

    /// The view [`OplogEntry::parse`] gave for `raw`, rebuilt without iterating the
    /// document: `raw` must be the entry this layout was taken from. `None` when it cannot
    /// be (another length, or a range that does not hold what the parse found there).
    pub fn view<'a>(&self, raw: &'a RawDocument) -> Option<OplogEntry<'a>> {
        let bytes = raw.as_bytes();
        if u32::try_from(bytes.len()).ok()? != self.len {
            return None;
        }
        let ns = match self.ns {
            Some(span) => std::str::from_utf8(span.get(bytes)?).ok()?,
            None => "",
        };
        let doc = |span: Option<Span>| match span {
            Some(span) => span.doc(bytes).map(Some),
            None => Some(None),
        };
        Some(OplogEntry {
            raw,
            ts: self.ts,
            term: self.term,
            hash: self.hash,
            op: self.op,
            ns,
            o: doc(self.o)?,
            o2: doc(self.o2)?,
            ui: match self.ui {
                Some(span) => Some(span.get(bytes)?),
                None => None,
            },
            from_migrate: self.from_migrate,
            wall: self.wall,
            lsid: doc(self.lsid)?,
            txn_number: self.txn_number,
            prev_op_time: self.prev_op_time,
        })
    }
}

impl OplogEntry<'_> {
    /// This view as an owned [`EntryLayout`] (no parsing: the fields are already read).
    pub fn layout(&self) -> EntryLayout {
        let base = self.raw.as_bytes();
        let span = |part: &[u8]| Span::of(base, part);
        let doc_span = |d: Option<&RawDocument>| d.map(|d| span(d.as_bytes()));
        EntryLayout {
            len: u32::try_from(base.len()).unwrap_or(u32::MAX),
            ts: self.ts,
            term: self.term,
            hash: self.hash,
            op: self.op,
            from_migrate: self.from_migrate,
            wall: self.wall,
            txn_number: self.txn_number,
            prev_op_time: self.prev_op_time,
            // `parse` gives "" for a missing `ns`; an empty `ns` written in the entry is
            // the same to every reader, so both are recorded as absent.
            ns: (!self.ns.is_empty()).then(|| span(self.ns.as_bytes())),
            o: doc_span(self.o),
            o2: doc_span(self.o2),
            ui: self.ui.map(span),
            lsid: doc_span(self.lsid),
        }
    }
}

#[cfg(test)]
mod tests;

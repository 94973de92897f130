//! MongoDB's BSONColumn binary (BinData subtype 7), written byte for byte as the server's
//! `BSONColumnBuilder` writes it, for the compressed time-series buckets of 8.0.
//!
//! Looked up in mongodb/mongo, `src/mongo/bson/column/`: `bsoncolumnbuilder.cpp`/`.h`
//! (the builder, its `EncodingState` with `Encoder64`/`Encoder128`, `intermediate()`),
//! `simple8b_builder.h`/`.inl` and `simple8b_helpers.h` (Simple-8b packing, [`simple8b`]),
//! `simple8b_type_util.cpp`/`.h` (zigzag, double scaling, ObjectId and string encodings),
//! `bsoncolumn_util.h` (control bytes, which types use delta-of-delta or 128 bits) and
//! `README.md` (the format).
//!
//! # Format
//!
//! A column is a sequence of control blocks ending with a 0x00 byte:
//! - a literal: a BSON element with an empty field name (its type byte, 0x00, its value);
//! - a Simple-8b run: a control byte whose high nibble is the double scale (0x80 none or
//!   not a double, 0x90/0xA0/0xB0/0xC0/0xD0 for x1, x10, x100, x10^4, x10^8) and whose
//!   low nibble is the number of 8-byte blocks minus one, then the blocks. Each value is
//!   the zigzag-encoded difference to the previous value (ints, longs, booleans, doubles
//!   scaled to integers, strings of up to 16 bytes as reversed little-endian 128-bit
//!   integers, BinData of up to 16 bytes, Decimal128), or the difference of differences
//!   (dates, timestamps, ObjectIds of one process: timestamp and counter bytes
//!   interleaved); 0 repeats the previous value for any type; a skip is a missing value.
//! - an interleaved run (0xF1, or 0xF2 for arrays) for sub-documents and arrays holding
//!   values: a reference object, then one delta stream per scalar field of the reference
//!   (a skip where an object lacks the field), their control blocks interleaved in the
//!   order a decoder runs out of values, then 0x00 (the `interleaved` module).
//!
//! A new literal is written when the type changes or a delta does not fit; a double
//! whose scale rises either rescales the pending values or closes the control block.
//!
//! # What is covered
//!
//! Every type the builder accepts: doubles, strings, BinData, undefined, ObjectId,
//! booleans, dates, null, regular expressions, DBPointer, JavaScript code (with or
//! without scope), symbols, ints, timestamps, longs, Decimal128, and sub-documents and
//! arrays (interleaved mode, with the reference object merged as `mergeObj` merges it).
//! MinKey and MaxKey are refused as the server refuses them, and so is a BSONColumn
//! nested in a value. Not reimplemented: reopening a builder from a stored binary by
//! scanning it (`BinaryReopen`); [`ColumnBuilder::reopened`] appends the values instead,
//! which the server asserts gives the same state.
//!
//! # Diffs
//!
//! [`ColumnBuilder::intermediate`] is the server's `intermediate()`: it returns the bytes
//! that changed since the previous call and the offset they start at, keeping pending
//! values pending, so that appending to a column after a write yields the binary diff
//! (`{o: <offset>, d: <bytes>}`) an 8.0 bucket update logs. The server reopens a stored
//! column (`BSONColumnBuilder(const char*, int)`) into the state of a builder that
//! appended the same values and called `intermediate()` once (its test-only check in
//! `measurement_map.cpp` `initBuilders` asserts exactly that); [`ColumnBuilder::reopened`]
//! builds that state. While an interleaved run is open nothing of it is final, so each
//! diff rewrites the run from its start (`intermediate()` has no open control byte then).

pub mod encoder;
mod interleaved;
pub mod simple8b;

use bson::{Bson, Document};

use encoder::Encoder;
use interleaved::{Interleaved, Node};

pub(crate) const T_DOUBLE: u8 = 0x01;
pub(crate) const T_STRING: u8 = 0x02;
pub(crate) const T_BINARY: u8 = 0x05;
pub(crate) const T_UNDEFINED: u8 = 0x06;
pub(crate) const T_OID: u8 = 0x07;
pub(crate) const T_BOOL: u8 = 0x08;
pub(crate) const T_DATE: u8 = 0x09;
pub(crate) const T_NULL: u8 = 0x0A;
pub(crate) const T_CODE: u8 = 0x0D;
pub(crate) const T_INT32: u8 = 0x10;
pub(crate) const T_TIMESTAMP: u8 = 0x11;
pub(crate) const T_INT64: u8 = 0x12;
pub(crate) const T_DECIMAL: u8 = 0x13;

/// A value the column cannot hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ColumnError {
    /// MinKey/MaxKey (the server throws InvalidBSONType) or a nested BSONColumn.
    #[error("{0} cannot be stored in a BSONColumn")]
    Invalid(&'static str),
}

/// An element without its field name: the BSON type byte and the value bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Elem {
    pub(crate) t: u8,
    pub(crate) v: Vec<u8>,
}

impl Elem {
    /// The type byte and value bytes of `value`, as BSON serialises it.
    pub fn of(value: &Bson) -> Elem {
        let mut d = Document::new();
        d.insert("", value.clone());
        let mut raw = Vec::new();
        // Serialising a document built from a Bson value cannot fail.
        if d.to_writer(&mut raw).is_err() || raw.len() < 7 {
            return Elem {
                t: 0,
                v: Vec::new(),
            };
        }
        // length(4) type(1) name NUL(1) value... document NUL(1)
        Elem {
            t: raw[4],
            v: raw[6..raw.len() - 1].to_vec(),
        }
    }

    fn eoo() -> Elem {
        Elem {
            t: 0,
            v: Vec::new(),
        }
    }
}

/// Refuses what the server refuses anywhere in a value: MinKey, MaxKey (InvalidBSONType)
/// and BSONColumn binaries (a column cannot nest).
fn check(v: &Bson) -> Result<(), ColumnError> {
    match v {
        Bson::MinKey => Err(ColumnError::Invalid("MinKey")),
        Bson::MaxKey => Err(ColumnError::Invalid("MaxKey")),
        Bson::Binary(b) if b.subtype == bson::spec::BinarySubtype::Column => {
            Err(ColumnError::Invalid("a BSONColumn"))
        }
        Bson::Document(d) => d.values().try_for_each(check),
        Bson::Array(a) => a.iter().try_for_each(check),
        _ => Ok(()),
    }
}

/// The non-interleaved state (`EncodingState`).
#[derive(Clone, Debug)]
pub(crate) struct Regular {
    encoder: Encoder,
    prev: Elem,
    /// Offset of the open Simple-8b control byte.
    cbo: Option<usize>,
    /// Completed control blocks (offset, length): what an interleaved sub-field stream
    /// hands over (`controlBlockWriter`); emptied in regular mode.
    pub(crate) blocks: Vec<(usize, usize)>,
}

impl Regular {
    fn new() -> Regular {
        Regular {
            encoder: Encoder::E64(encoder::Encoder64::new()),
            prev: Elem::eoo(),
            cbo: None,
            blocks: Vec::new(),
        }
    }

    /// A sub-field stream of interleaved mode: its previous value is the reference
    /// object's, without writing a literal (`_storePrevious` + `_initializeFromPrevious`).
    pub(crate) fn continuing(reference: Elem) -> Regular {
        Regular {
            encoder: Encoder::after_literal(&reference),
            prev: reference,
            cbo: None,
            blocks: Vec::new(),
        }
    }

    fn close_control(&mut self, buf: &[u8]) {
        if let Some(at) = self.cbo {
            self.blocks.push((at, buf.len() - at));
        }
    }

    fn write_literal(&mut self, buf: &mut Vec<u8>) {
        self.close_control(buf);
        buf.push(self.prev.t);
        buf.push(0);
        buf.extend_from_slice(&self.prev.v);
        self.blocks
            .push((buf.len() - self.prev.v.len() - 2, self.prev.v.len() + 2));
        self.cbo = None;
        self.encoder = Encoder::after_literal(&self.prev);
    }

    pub(crate) fn append(&mut self, e: Elem, buf: &mut Vec<u8>) {
        if self.prev.t != e.t {
            let t = e.t;
            self.prev = e;
            self.encoder.flush(t, buf, &mut self.cbo, &mut self.blocks);
            self.write_literal(buf);
            return;
        }
        let mut compressed = !encoder::uses_delta_of_delta(e.t) && e == self.prev;
        if compressed {
            self.encoder
                .append_zero(e.t, buf, &mut self.cbo, &mut self.blocks);
        } else {
            compressed =
                self.encoder
                    .append_delta(&e, &self.prev, buf, &mut self.cbo, &mut self.blocks);
        }
        let t = e.t;
        self.prev = e;
        if !compressed {
            self.encoder.flush(t, buf, &mut self.cbo, &mut self.blocks);
            self.write_literal(buf);
        }
    }

    pub(crate) fn skip(&mut self, buf: &mut Vec<u8>) {
        let before = buf.len();
        let t = self.prev.t;
        self.encoder.skip(t, buf, &mut self.cbo, &mut self.blocks);
        if before != buf.len() && t == T_DOUBLE {
            if let Encoder::E64(x) = &mut self.encoder {
                x.rescale_after_skip();
            }
        }
    }

    pub(crate) fn flush(&mut self, buf: &mut Vec<u8>) {
        let t = self.prev.t;
        self.encoder.flush(t, buf, &mut self.cbo, &mut self.blocks);
        self.close_control(buf);
    }
}

const INVALID_CONTROL: u8 = 0xFE;

/// Builds one BSONColumn binary (`BSONColumnBuilder`, regular mode).
#[derive(Clone, Debug)]
pub struct ColumnBuilder {
    state: Regular,
    /// Interleaved mode, when appending sub-documents or arrays with values.
    il: Option<Interleaved>,
    buf: Vec<u8>,
    /// Where `buf` starts in the binary returned by earlier `intermediate` calls.
    offset: usize,
    last_buf_length: usize,
    last_control: u8,
    last_control_offset: u16,
}

impl Default for ColumnBuilder {
    fn default() -> Self {
        ColumnBuilder::new()
    }
}

/// A binary diff: write `data` at byte `offset` of the previous binary (truncating it).
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryDiff {
    /// Absolute offset in the binary.
    pub offset: usize,
    /// The bytes from there to the end.
    pub data: Vec<u8>,
}

impl ColumnBuilder {
    /// An empty column.
    pub fn new() -> ColumnBuilder {
        ColumnBuilder {
            state: Regular::new(),
            il: None,
            buf: Vec::new(),
            offset: 0,
            last_buf_length: 0,
            last_control: INVALID_CONTROL,
            last_control_offset: 0,
        }
    }

    /// The state the server reopens a stored column of these values into: appended, then
    /// `intermediate()` once.
    ///
    /// # Errors
    /// As [`ColumnBuilder::append`].
    pub fn reopened(values: &[Option<Bson>]) -> Result<ColumnBuilder, ColumnError> {
        let mut b = ColumnBuilder::new();
        for v in values {
            match v {
                Some(v) => b.append(v)?,
                None => b.skip(),
            }
        }
        let _ = b.intermediate();
        Ok(b)
    }

    /// Appends a value.
    ///
    /// # Errors
    /// [`ColumnError`] for values the column cannot hold (nothing is appended then).
    pub fn append(&mut self, v: &Bson) -> Result<(), ColumnError> {
        check(v)?;
        let plain = match v {
            Bson::Document(d) => d.is_empty(),
            Bson::Array(a) => a.is_empty(),
            _ => true,
        };
        if plain {
            if let Some(il) = self.il.take() {
                self.flush_interleaved(il);
            }
            self.append_regular(v);
        } else {
            self.append_obj(Node::of(v), v);
        }
        Ok(())
    }

    fn append_regular(&mut self, v: &Bson) {
        self.state.append(Elem::of(v), &mut self.buf);
        self.state.blocks.clear();
    }

    fn start_interleaved(&mut self, node: Node) {
        self.state.flush(&mut self.buf);
        self.il = Some(Interleaved::start(node));
    }

    fn flush_interleaved(&mut self, il: Interleaved) {
        il.flush(&mut self.buf);
        self.state = Regular::new();
    }

    /// `_appendObj`.
    fn append_obj(&mut self, node: Node, v: &Bson) {
        let scalars = interleaved::contains_scalars(&node);
        let Some(mut il) = self.il.take() else {
            if scalars {
                self.start_interleaved(node);
            } else {
                self.append_regular(v);
            }
            return;
        };
        let array = matches!(node, Node::Obj { array: true, .. });
        if array != il.root_array() {
            self.flush_interleaved(il);
            if scalars {
                self.start_interleaved(node);
            } else {
                self.append_regular(v);
            }
            return;
        }
        if il.determining {
            let mut n = 0usize;
            if !interleaved::traverse(&il.reference, &node, &mut |_, _| n += 1) {
                match interleaved::merge(&il.reference, &node) {
                    Some(merged) => il.reference = merged,
                    None => {
                        self.flush_interleaved(il);
                        if scalars {
                            self.il = Some(Interleaved::start(node));
                        } else {
                            self.append_regular(v);
                        }
                        return;
                    }
                }
            }
            if n * 2 >= il.buffered.len() {
                il.buffered.push(node);
                self.il = Some(il);
                return;
            }
            il.finish_determining(&mut self.buf);
        }
        if il.append_sub_elements(&node) {
            self.il = Some(il);
            return;
        }
        self.flush_interleaved(il);
        if scalars {
            self.start_interleaved(node);
        } else {
            self.append_regular(v);
        }
    }

    /// Appends a missing value.
    pub fn skip(&mut self) {
        let Some(mut il) = self.il.take() else {
            self.state.skip(&mut self.buf);
            self.state.blocks.clear();
            return;
        };
        if interleaved::has_empty_obj(&il.reference) {
            self.flush_interleaved(il);
            return self.skip();
        }
        if il.determining {
            il.buffered.push(Node::Obj {
                array: false,
                fields: Vec::new(),
            });
        } else {
            il.skip_all();
        }
        self.il = Some(il);
    }

    fn finish(&mut self) {
        match self.il.take() {
            Some(il) => self.flush_interleaved(il),
            None => self.state.flush(&mut self.buf),
        }
        self.buf.push(0);
    }

    /// The whole binary, ending with 0x00 (`finalize()`); the builder is consumed.
    pub fn finalize(mut self) -> Vec<u8> {
        self.finish();
        self.buf
    }

    /// The bytes changed since the previous call and where they start (`intermediate()`).
    pub fn intermediate(&mut self) -> BinaryDiff {
        let control_offset = if self.il.is_some() {
            None
        } else {
            self.state.cbo
        };
        let length = self.buf.len();
        let prev_offset = self.offset;
        let mut finalized = self.clone();
        finalized.finish();
        let mut identical = 0;
        match control_offset {
            None => {
                self.offset += length;
                self.last_control = INVALID_CONTROL;
                self.last_buf_length = 0;
                self.buf.clear();
            }
            Some(co) => {
                self.buf.drain(..co);
                self.state.cbo = Some(0);
                self.offset += co;
                let new_last_buf_length = length - co;
                let fin_co = finalized.state.cbo;
                let fin_last = fin_co.map(|o| finalized.buf[o]).unwrap_or(0);
                if self.last_control != INVALID_CONTROL
                    && prev_offset != 0
                    && fin_co == Some(usize::from(self.last_control_offset))
                    && self.last_control == fin_last
                {
                    identical = self.last_buf_length.saturating_sub(co);
                }
                let at_control = finalized.buf[co];
                let scale = |c: u8| c >> 4;
                match fin_co {
                    Some(f) if scale(fin_last) != scale(at_control) => {
                        self.last_control = fin_last;
                        self.last_control_offset = (f - co) as u16;
                    }
                    _ => {
                        self.last_control = at_control;
                        self.last_control_offset = 0;
                    }
                }
                self.last_buf_length = new_last_buf_length;
            }
        }
        BinaryDiff {
            offset: prev_offset + identical,
            data: finalized.buf[identical.min(finalized.buf.len())..].to_vec(),
        }
    }
}

/// Writes `diff` into `binary` (the server's `b` section of a document diff: the bytes
/// from `offset` are replaced by `data`).
pub fn apply_diff(binary: &mut Vec<u8>, diff: &BinaryDiff) {
    binary.truncate(diff.offset);
    binary.extend_from_slice(&diff.data);
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

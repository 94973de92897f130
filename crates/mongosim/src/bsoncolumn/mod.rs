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
//! - interleaved sub-object runs (0xF0-0xF2): not written here, see below.
//!
//! A new literal is written when the type changes or a delta does not fit; a double
//! whose scale rises either rescales the pending values or closes the control block.
//!
//! # What is covered
//!
//! Every scalar type the builder accepts: doubles, strings, BinData, undefined,
//! ObjectId, booleans, dates, null, regular expressions, DBPointer, JavaScript code (with
//! or without scope), symbols, ints, timestamps, longs and Decimal128, and sub-documents
//! or arrays that hold no scalar anywhere (written as literals, as the builder does).
//! Sub-documents and arrays with scalars, which the server writes in interleaved mode
//! (`_appendObj`, reference object merging), are refused with
//! [`ColumnError::Interleaved`]; MinKey and MaxKey are refused as the server refuses them.
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
//! builds that state.

pub mod encoder;
pub mod simple8b;

use bson::{Bson, Document};

use encoder::Encoder;

pub(crate) const T_DOUBLE: u8 = 0x01;
pub(crate) const T_STRING: u8 = 0x02;
pub(crate) const T_DOCUMENT: u8 = 0x03;
pub(crate) const T_ARRAY: u8 = 0x04;
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
const T_MINKEY: u8 = 0xFF;
const T_MAXKEY: u8 = 0x7F;

/// A value the column cannot hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ColumnError {
    /// A sub-document or array holding scalars: MongoDB compresses those in interleaved
    /// mode, which is not reimplemented.
    #[error("a sub-document or array with values (MongoDB's interleaved BSONColumn mode) is not supported by the simulator's column encoder; write scalar fields")]
    Interleaved,
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

/// True when a sub-document or array holds a scalar somewhere (`_containsScalars`).
fn contains_scalars(v: &Bson) -> bool {
    match v {
        Bson::Document(d) => d.values().any(contains_scalars),
        Bson::Array(a) => a.iter().any(contains_scalars),
        _ => true,
    }
}

/// The non-interleaved state (`EncodingState`).
#[derive(Clone, Debug)]
struct Regular {
    encoder: Encoder,
    prev: Elem,
    /// Offset of the open Simple-8b control byte.
    cbo: Option<usize>,
}

impl Regular {
    fn new() -> Regular {
        Regular {
            encoder: Encoder::E64(encoder::Encoder64::new()),
            prev: Elem::eoo(),
            cbo: None,
        }
    }

    fn write_literal(&mut self, buf: &mut Vec<u8>) {
        buf.push(self.prev.t);
        buf.push(0);
        buf.extend_from_slice(&self.prev.v);
        self.cbo = None;
        self.encoder = Encoder::after_literal(&self.prev);
    }

    fn append(&mut self, e: Elem, buf: &mut Vec<u8>) {
        if self.prev.t != e.t {
            let t = e.t;
            self.prev = e;
            self.encoder.flush(t, buf, &mut self.cbo);
            self.write_literal(buf);
            return;
        }
        let mut compressed = !encoder::uses_delta_of_delta(e.t) && e == self.prev;
        if compressed {
            self.encoder.append_zero(e.t, buf, &mut self.cbo);
        } else {
            compressed = self
                .encoder
                .append_delta(&e, &self.prev, buf, &mut self.cbo);
        }
        let t = e.t;
        self.prev = e;
        if !compressed {
            self.encoder.flush(t, buf, &mut self.cbo);
            self.write_literal(buf);
        }
    }

    fn skip(&mut self, buf: &mut Vec<u8>) {
        let before = buf.len();
        let t = self.prev.t;
        self.encoder.skip(t, buf, &mut self.cbo);
        if before != buf.len() && t == T_DOUBLE {
            if let Encoder::E64(x) = &mut self.encoder {
                x.rescale_after_skip();
            }
        }
    }

    fn flush(&mut self, buf: &mut Vec<u8>) {
        let t = self.prev.t;
        self.encoder.flush(t, buf, &mut self.cbo);
    }
}

const INVALID_CONTROL: u8 = 0xFE;

/// Builds one BSONColumn binary (`BSONColumnBuilder`, regular mode).
#[derive(Clone, Debug)]
pub struct ColumnBuilder {
    state: Regular,
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
        match v {
            Bson::MinKey => return Err(ColumnError::Invalid("MinKey")),
            Bson::MaxKey => return Err(ColumnError::Invalid("MaxKey")),
            Bson::Binary(b) if b.subtype == bson::spec::BinarySubtype::Column => {
                return Err(ColumnError::Invalid("a BSONColumn"))
            }
            Bson::Document(_) | Bson::Array(_) if contains_scalars(v) => {
                return Err(ColumnError::Interleaved)
            }
            _ => {}
        }
        let e = Elem::of(v);
        debug_assert!(e.t != T_MINKEY && e.t != T_MAXKEY);
        debug_assert!(e.t != T_DOCUMENT && e.t != T_ARRAY || !contains_scalars(v));
        self.state.append(e, &mut self.buf);
        Ok(())
    }

    /// Appends a missing value.
    pub fn skip(&mut self) {
        self.state.skip(&mut self.buf);
    }

    /// The whole binary, ending with 0x00 (`finalize()`); the builder is consumed.
    pub fn finalize(mut self) -> Vec<u8> {
        self.state.flush(&mut self.buf);
        self.buf.push(0);
        self.buf
    }

    /// The bytes changed since the previous call and where they start (`intermediate()`).
    pub fn intermediate(&mut self) -> BinaryDiff {
        let control_offset = self.state.cbo;
        let length = self.buf.len();
        let prev_offset = self.offset;
        let mut finalized = self.clone();
        finalized.state.flush(&mut finalized.buf);
        finalized.buf.push(0);
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

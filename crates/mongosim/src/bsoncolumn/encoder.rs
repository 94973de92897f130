//! Per-type delta encoders of a column (`EncodingState::Encoder64` / `Encoder128` in
//! `src/mongo/bson/column/bsoncolumnbuilder.cpp`), and the numeric transforms of
//! `simple8b_type_util.cpp`.

use super::simple8b::{BlockSink, PendingView, Simple8bBuilder};
use super::{Elem, T_BINARY, T_BOOL, T_CODE, T_DATE, T_DECIMAL, T_DOUBLE, T_INT32, T_INT64};
use super::{T_NULL, T_OID, T_STRING, T_TIMESTAMP, T_UNDEFINED};

/// Scale factors of doubles (`kScaleMultiplier`); index 5 means "the bits as an integer".
const SCALE: [f64; 5] = [1.0, 10.0, 100.0, 10_000.0, 100_000_000.0];
/// `kMemoryAsInteger`.
pub const MEMORY_AS_INTEGER: u8 = 5;
/// Control byte (high nibble) per scale index (`kControlByteForScaleIndex`).
pub const CONTROL_FOR_SCALE: [u8; 6] = [0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0x80];
const SAFE: f64 = 9_007_199_254_740_992.0; // 2^53

/// Zigzag of a signed 64-bit delta (`encodeInt64`).
pub fn zigzag64(v: i64) -> u128 {
    u128::from(((v as u64) << 1) ^ ((v >> 63) as u64))
}

/// Inverse of [`zigzag64`].
pub fn unzigzag64(v: u128) -> i64 {
    let v = v as u64;
    ((v >> 1) as i64) ^ (-((v & 1) as i64))
}

/// Zigzag of a signed 128-bit delta (`encodeInt128`).
pub fn zigzag128(v: i128) -> u128 {
    ((v as u128) << 1) ^ ((v >> 127) as u128)
}

/// `encodeDouble`: the value times the scale, when that is an exact integer below 2^53.
pub fn encode_double(val: f64, scale: u8) -> Option<i64> {
    if scale == MEMORY_AS_INTEGER {
        return Some(val.to_bits() as i64);
    }
    let m = SCALE[usize::from(scale)];
    let x = val * m;
    if !(-SAFE..=SAFE).contains(&x) {
        return None;
    }
    let r = x.round() as i64;
    if (r as f64 / m).to_bits() != val.to_bits() {
        return None;
    }
    Some(r)
}

/// `decodeDouble`.
pub fn decode_double(v: i64, scale: u8) -> f64 {
    if scale == MEMORY_AS_INTEGER {
        f64::from_bits(v as u64)
    } else {
        v as f64 / SCALE[usize::from(scale)]
    }
}

/// `scaleAndEncodeDouble`: the lowest scale from `min` that encodes `val`.
pub fn scale_and_encode(val: f64, min: u8) -> (i64, u8) {
    let mut s = min;
    loop {
        if let Some(e) = encode_double(val, s) {
            return (e, s);
        }
        s += 1;
    }
}

/// `encodeObjectId`: counter and timestamp bytes interleaved, entropy low.
pub fn encode_oid(b: &[u8]) -> i64 {
    let order = [11, 3, 10, 2, 9, 1, 0];
    let mut out = 0u64;
    for (i, &at) in order.iter().enumerate() {
        out |= u64::from(b[at]) << (8 * i);
    }
    out as i64
}

/// `encodeString`: up to 16 bytes, reversed, not starting with NUL.
pub fn encode_string(s: &[u8]) -> Option<i128> {
    if s.len() > 16 || s.first() == Some(&0) {
        return None;
    }
    let mut arr = [0u8; 16];
    for (i, c) in s.iter().rev().enumerate() {
        arr[i] = *c;
    }
    Some(i128::from_le_bytes(arr))
}

/// `encodeBinary`: up to 16 bytes, zero padded.
pub fn encode_binary(b: &[u8]) -> Option<i128> {
    if b.len() > 16 {
        return None;
    }
    let mut arr = [0u8; 16];
    arr[..b.len()].copy_from_slice(b);
    Some(i128::from_le_bytes(arr))
}

fn le_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_le_bytes(a)
}

fn le_i32(b: &[u8]) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    i32::from_le_bytes(a)
}

/// The string bytes of a String/Code element value (length, bytes, NUL).
fn string_bytes(v: &[u8]) -> &[u8] {
    &v[4..v.len() - 1]
}

/// The payload and subtype of a BinData element value.
fn binary_parts(v: &[u8]) -> (&[u8], u8) {
    (&v[5..], v[4])
}

/// `usesDeltaOfDelta`.
pub fn uses_delta_of_delta(t: u8) -> bool {
    t == T_OID || t == T_DATE || t == T_TIMESTAMP
}

/// `uses128bit`.
pub fn uses_128bit(t: u8) -> bool {
    t == T_DECIMAL || t == T_BINARY || t == T_STRING || t == T_CODE
}

/// `incrementSimple8bCount`: counts a block in the open control byte (opening one, or a
/// new one when the scale changed, recording the closed one in `blocks`); returns the
/// offset of a control byte this block fills.
fn increment_count(
    buf: &mut Vec<u8>,
    cbo: &mut Option<usize>,
    scale: u8,
    blocks: &mut Vec<(usize, usize)>,
) -> Option<usize> {
    let control = CONTROL_FOR_SCALE[usize::from(scale)];
    let (at, count) = match *cbo {
        None => {
            buf.push(0);
            (buf.len() - 1, 0u8)
        }
        Some(at) => {
            if buf[at] & 0xF0 != control {
                blocks.push((at, buf.len() - at));
                *cbo = None;
                increment_count(buf, cbo, scale, blocks);
                return None;
            }
            (at, (buf[at] & 0x0F) + 1)
        }
    };
    *cbo = Some(at);
    buf[at] = control | (count & 0x0F);
    if count + 1 == 16 {
        *cbo = None;
        return Some(at);
    }
    None
}

/// Writes finished blocks after their control byte (`Simple8bBlockWriter64/128`).
struct Writer<'a> {
    buf: &'a mut Vec<u8>,
    cbo: &'a mut Option<usize>,
    /// Control blocks completed (offset, length), for interleaved mode.
    blocks: &'a mut Vec<(usize, usize)>,
    scale: u8,
    /// For doubles: the previous value's encoding, to find the last value of the block.
    double_prev: Option<i64>,
    last_value_in_prev_block: Option<&'a mut f64>,
}

impl BlockSink for Writer<'_> {
    fn block(&mut self, word: u64, pending: PendingView<'_>) {
        let full = increment_count(self.buf, self.cbo, self.scale, self.blocks);
        self.buf.extend_from_slice(&word.to_le_bytes());
        if let Some(at) = full {
            self.blocks.push((at, self.buf.len() - at));
        }
        if let (Some(prev), Some(out)) = (self.double_prev, self.last_value_in_prev_block.as_mut())
        {
            let mut current = prev;
            for v in pending.values().iter().rev().flatten() {
                current = current.wrapping_sub(unzigzag64(*v));
            }
            **out = decode_double(current, self.scale);
        }
    }
}

/// Delta state of 64-bit types.
#[derive(Clone, Debug)]
pub struct Encoder64 {
    pub s8b: Simple8bBuilder,
    prev_delta: i64,
    prev_encoded: i64,
    last_value_in_prev_block: f64,
    pub scale_index: u8,
}

/// Delta state of 128-bit types.
#[derive(Clone, Debug)]
pub struct Encoder128 {
    pub s8b: Simple8bBuilder,
    prev_encoded: Option<i128>,
}

/// The encoder of the column's current run.
#[derive(Clone, Debug)]
pub enum Encoder {
    /// Ints, doubles, dates, ObjectIds, timestamps, booleans, null...
    E64(Encoder64),
    /// Strings, code, BinData, Decimal128.
    E128(Encoder128),
}

impl Default for Encoder64 {
    fn default() -> Self {
        Encoder64::new()
    }
}

impl Default for Encoder128 {
    fn default() -> Self {
        Encoder128::new()
    }
}

impl Encoder64 {
    /// A fresh encoder (no previous value, the integer scale).
    pub fn new() -> Encoder64 {
        Encoder64 {
            s8b: Simple8bBuilder::new(false),
            prev_delta: 0,
            prev_encoded: 0,
            last_value_in_prev_block: 0.0,
            scale_index: MEMORY_AS_INTEGER,
        }
    }

    fn writer<'a>(
        &'a mut self,
        t: u8,
        buf: &'a mut Vec<u8>,
        cbo: &'a mut Option<usize>,
        blocks: &'a mut Vec<(usize, usize)>,
    ) -> (&'a mut Simple8bBuilder, Writer<'a>) {
        let is_double = t == T_DOUBLE;
        let w = Writer {
            buf,
            cbo,
            blocks,
            scale: self.scale_index,
            double_prev: is_double.then_some(self.prev_encoded),
            last_value_in_prev_block: is_double.then_some(&mut self.last_value_in_prev_block),
        };
        (&mut self.s8b, w)
    }

    pub fn append(
        &mut self,
        t: u8,
        v: u128,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) -> bool {
        let (s8b, mut w) = self.writer(t, buf, cbo, blocks);
        s8b.append(v, &mut w)
    }

    pub fn skip(
        &mut self,
        t: u8,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) {
        let (s8b, mut w) = self.writer(t, buf, cbo, blocks);
        s8b.skip(&mut w);
    }

    pub fn flush(
        &mut self,
        t: u8,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) {
        let (s8b, mut w) = self.writer(t, buf, cbo, blocks);
        s8b.flush(&mut w);
    }

    fn initialize(&mut self, e: &Elem) {
        match e.t {
            T_DOUBLE => {
                self.last_value_in_prev_block = f64::from_bits(le_i64(&e.v) as u64);
                (self.prev_encoded, self.scale_index) =
                    scale_and_encode(self.last_value_in_prev_block, 0);
            }
            T_OID => self.prev_encoded = encode_oid(&e.v),
            _ => {}
        }
    }

    /// After a skip wrote blocks: with only skips pending, doubles restart at the lowest scale.
    pub fn rescale_after_skip(&mut self) {
        if self.s8b.view().values().iter().all(Option::is_none) {
            (self.prev_encoded, self.scale_index) =
                scale_and_encode(self.last_value_in_prev_block, 0);
        }
    }

    fn append_delta(
        &mut self,
        e: &Elem,
        prev: &Elem,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) -> bool {
        let mut possible = true;
        let mut value: i64 = 0;
        match e.t {
            T_DOUBLE => {
                let v = f64::from_bits(le_i64(&e.v) as u64);
                let p = f64::from_bits(le_i64(&prev.v) as u64);
                return self.append_double(v, p, buf, cbo, blocks);
            }
            T_INT32 => value = i64::from(le_i32(&e.v)).wrapping_sub(i64::from(le_i32(&prev.v))),
            T_INT64 | T_DATE | T_TIMESTAMP => value = le_i64(&e.v).wrapping_sub(le_i64(&prev.v)),
            T_OID => {
                possible = e.v[4..9] == prev.v[4..9];
                if possible {
                    let cur = encode_oid(&e.v);
                    value = cur.wrapping_sub(self.prev_encoded);
                    self.prev_encoded = cur;
                }
            }
            T_BOOL => value = i64::from(e.v[0]) - i64::from(prev.v[0]),
            T_UNDEFINED | T_NULL => value = 0,
            _ => possible = false,
        }
        if uses_delta_of_delta(e.t) {
            let current = value;
            value = current.wrapping_sub(self.prev_delta);
            self.prev_delta = current;
        }
        possible && self.append(e.t, zigzag64(value), buf, cbo, blocks)
    }

    fn try_rescale_pending(&self, encoded: i64, new_scale: u8) -> Option<Simple8bBuilder> {
        let mut prev = encode_double(self.last_value_in_prev_block, self.scale_index)?;
        let mut prev_rescaled = encode_double(self.last_value_in_prev_block, new_scale)?;
        let mut sink = super::simple8b::Overflow(false);
        let mut b = Simple8bBuilder::new(false);
        b.initialize_rle_from(&self.s8b);
        for pending in self.s8b.view().values() {
            let Some(p) = pending else {
                b.skip(&mut sink);
                continue;
            };
            prev = prev.wrapping_add(unzigzag64(p));
            let rescaled = encode_double(decode_double(prev, self.scale_index), new_scale)?;
            let ok = b.append(zigzag64(rescaled.wrapping_sub(prev_rescaled)), &mut sink);
            if !ok || sink.0 {
                return None;
            }
            prev_rescaled = rescaled;
        }
        let ok = b.append(zigzag64(encoded.wrapping_sub(prev_rescaled)), &mut sink);
        (ok && !sink.0).then_some(b)
    }

    fn append_double(
        &mut self,
        value: f64,
        previous: f64,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) -> bool {
        let (mut encoded, mut scale) = scale_and_encode(value, self.scale_index);
        if scale != self.scale_index {
            if let Some(rescaled) = self.try_rescale_pending(encoded, scale) {
                self.s8b = rescaled;
                self.prev_encoded = encoded;
                self.scale_index = scale;
                return true;
            }
            self.flush(T_DOUBLE, buf, cbo, blocks);
            if let Some(at) = *cbo {
                blocks.push((at, buf.len() - at));
            }
            *cbo = None;
            let prev_scale;
            (self.prev_encoded, prev_scale) = scale_and_encode(previous, scale);
            if scale != prev_scale {
                (encoded, scale) = scale_and_encode(value, prev_scale);
                (self.prev_encoded, _) = scale_and_encode(previous, scale);
            }
            self.scale_index = scale;
        }
        let before = buf.len();
        if !self.append(
            T_DOUBLE,
            zigzag64(encoded.wrapping_sub(self.prev_encoded)),
            buf,
            cbo,
            blocks,
        ) {
            return false;
        }
        if buf.len() == before {
            self.prev_encoded = encoded;
            return true;
        }
        // A block was written: restart at the lowest scale and re-add what is pending.
        let prev_scale = self.scale_index;
        (self.prev_encoded, self.scale_index) = scale_and_encode(self.last_value_in_prev_block, 0);
        let mut fresh = Simple8bBuilder::new(false);
        fresh.initialize_rle_from(&self.s8b);
        let old = std::mem::replace(&mut self.s8b, fresh);
        let mut prev = self.last_value_in_prev_block;
        let mut prev_encoded = encode_double(prev, prev_scale).unwrap_or(0);
        for pending in old.view().values() {
            match pending {
                Some(p) => {
                    prev_encoded = prev_encoded.wrapping_add(unzigzag64(p));
                    let val = decode_double(prev_encoded, prev_scale);
                    self.append_double(val, prev, buf, cbo, blocks);
                    prev = val;
                }
                None => self.skip(T_DOUBLE, buf, cbo, blocks),
            }
        }
        true
    }
}

impl Encoder128 {
    /// A fresh encoder.
    pub fn new() -> Encoder128 {
        Encoder128 {
            s8b: Simple8bBuilder::new(true),
            prev_encoded: None,
        }
    }

    fn writer<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
        cbo: &'a mut Option<usize>,
        blocks: &'a mut Vec<(usize, usize)>,
    ) -> (&'a mut Simple8bBuilder, Writer<'a>) {
        let w = Writer {
            buf,
            cbo,
            blocks,
            scale: MEMORY_AS_INTEGER,
            double_prev: None,
            last_value_in_prev_block: None,
        };
        (&mut self.s8b, w)
    }

    pub fn append(
        &mut self,
        v: u128,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) -> bool {
        let (s8b, mut w) = self.writer(buf, cbo, blocks);
        s8b.append(v, &mut w)
    }

    pub fn skip(
        &mut self,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) {
        let (s8b, mut w) = self.writer(buf, cbo, blocks);
        s8b.skip(&mut w);
    }

    pub fn flush(
        &mut self,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) {
        let (s8b, mut w) = self.writer(buf, cbo, blocks);
        s8b.flush(&mut w);
    }

    fn initialize(&mut self, e: &Elem) {
        self.prev_encoded = match e.t {
            T_STRING | T_CODE => encode_string(string_bytes(&e.v)),
            T_BINARY => encode_binary(binary_parts(&e.v).0),
            T_DECIMAL => Some(i128::from_le_bytes(e.v[..16].try_into().unwrap_or([0; 16]))),
            _ => None,
        };
    }

    fn append_delta(
        &mut self,
        e: &Elem,
        prev: &Elem,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) -> bool {
        let encoded = match e.t {
            T_STRING | T_CODE => encode_string(string_bytes(&e.v)),
            T_BINARY => {
                let (data, sub) = binary_parts(&e.v);
                let (pdata, psub) = binary_parts(&prev.v);
                if data.len() != pdata.len() || sub != psub {
                    return false;
                }
                encode_binary(data)
            }
            T_DECIMAL => Some(i128::from_le_bytes(e.v[..16].try_into().unwrap_or([0; 16]))),
            _ => None,
        };
        let Some(encoded) = encoded else {
            return false;
        };
        if self.prev_encoded.is_some() || encoded != 0 {
            let delta = encoded.wrapping_sub(self.prev_encoded.unwrap_or(0));
            let ok = self.append(zigzag128(delta), buf, cbo, blocks);
            self.prev_encoded = Some(encoded);
            return ok;
        }
        false
    }
}

impl Encoder {
    /// The encoder that follows a literal of `e` (`_initializeFromPrevious`).
    pub fn after_literal(e: &Elem) -> Encoder {
        if uses_128bit(e.t) {
            let mut x = Encoder128::new();
            x.initialize(e);
            Encoder::E128(x)
        } else {
            let mut x = Encoder64::new();
            x.initialize(e);
            Encoder::E64(x)
        }
    }

    pub fn append_zero(
        &mut self,
        t: u8,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) {
        match self {
            Encoder::E64(x) => {
                x.append(t, 0, buf, cbo, blocks);
            }
            Encoder::E128(x) => {
                x.append(0, buf, cbo, blocks);
            }
        }
    }

    pub fn append_delta(
        &mut self,
        e: &Elem,
        prev: &Elem,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) -> bool {
        match self {
            Encoder::E64(x) => x.append_delta(e, prev, buf, cbo, blocks),
            Encoder::E128(x) => x.append_delta(e, prev, buf, cbo, blocks),
        }
    }

    pub fn skip(
        &mut self,
        t: u8,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) {
        match self {
            Encoder::E64(x) => x.skip(t, buf, cbo, blocks),
            Encoder::E128(x) => x.skip(buf, cbo, blocks),
        }
    }

    pub fn flush(
        &mut self,
        t: u8,
        buf: &mut Vec<u8>,
        cbo: &mut Option<usize>,
        blocks: &mut Vec<(usize, usize)>,
    ) {
        match self {
            Encoder::E64(x) => x.flush(t, buf, cbo, blocks),
            Encoder::E128(x) => x.flush(buf, cbo, blocks),
        }
    }
}

//! A BSONColumn decoder for the suites, written from MongoDB's description of the format
//! (`src/mongo/bson/column/README.md`, the selector tables in `simple8b_helpers.h` and the
//! type transforms in `simple8b_type_util.h`) independently of the simulator's encoder, so
//! that a bug in the encoder does not also change what the tests read back.
//!
//! Literals, Simple-8b runs (with skips, RLE and the selector 7/8 extensions) and
//! interleaved runs of sub-documents and arrays (a reference object, then one stream per
//! scalar field whose control blocks arrive when that stream runs out of values).

use bson::{Bson, Document};

/// Values per block and bits per value of the base selectors 1..=14.
const BASE: [(u32, u32); 15] = [
    (0, 0),
    (60, 1),
    (30, 2),
    (20, 3),
    (15, 4),
    (12, 5),
    (10, 6),
    (8, 7),
    (7, 8),
    (6, 10),
    (5, 12),
    (4, 15),
    (3, 20),
    (2, 30),
    (1, 60),
];
/// Selector 7 extensions 1..=9: (values, value bits); 4 bits of trailing-zero count each.
const SEVEN: [(u32, u32); 10] = [
    (0, 0),
    (9, 2),
    (8, 3),
    (7, 4),
    (6, 5),
    (5, 7),
    (4, 10),
    (3, 14),
    (2, 24),
    (1, 52),
];
/// Selector 8 extensions 1..=13: (values, value bits, trailing-zero bits); the count is in
/// nibbles.
const EIGHT: [(u32, u32, u32); 14] = [
    (0, 0, 0),
    (7, 4, 4),
    (6, 5, 4),
    (5, 7, 4),
    (4, 10, 4),
    (3, 14, 4),
    (2, 24, 4),
    (1, 52, 4),
    (6, 4, 5),
    (5, 6, 5),
    (4, 9, 5),
    (3, 13, 5),
    (2, 23, 5),
    (1, 51, 5),
];

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// The values of one Simple-8b block; `last` is the previous value (for RLE).
fn block(word: u64, last: Option<u128>) -> Result<Vec<Option<u128>>, String> {
    let selector = word & 0xF;
    let ext = ((word >> 4) & 0xF) as usize;
    let mut out = Vec::new();
    match selector {
        0 => return Err(format!("Simple-8b selector 0 in block {word:#x}")),
        15 => {
            out.extend(std::iter::repeat_n(last, (ext + 1) * 120));
        }
        7 | 8 if ext != 0 => {
            let (n, bits, tz_bits, tz_mult) = if selector == 7 {
                let (n, bits) = *SEVEN.get(ext).ok_or("selector 7 extension")?;
                (n, bits, 4, 1)
            } else {
                let (n, bits, tz) = EIGHT[ext];
                (n, bits, tz, 4)
            };
            if n == 0 {
                return Err(format!("invalid extension {ext} of selector {selector}"));
            }
            let slot = bits + tz_bits;
            for i in 0..n {
                let v = (word >> (8 + slot * i)) & mask(slot);
                if v == mask(slot) {
                    out.push(None);
                } else {
                    let tz = (v & mask(tz_bits)) as u32 * tz_mult;
                    out.push(Some(u128::from(v >> tz_bits) << tz));
                }
            }
        }
        s => {
            let (n, bits) = BASE[s as usize];
            // Selectors 7 and 8 leave 4 bits after the selector (their extension nibble, 0).
            let first = if s == 7 || s == 8 { 8 } else { 4 };
            for i in 0..n {
                let v = (word >> (first + bits * i)) & mask(bits);
                out.push(if v == mask(bits) {
                    None
                } else {
                    Some(u128::from(v))
                });
            }
        }
    }
    Ok(out)
}

fn unzigzag64(v: u128) -> i64 {
    let v = v as u64;
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn unzigzag128(v: u128) -> i128 {
    ((v >> 1) as i128) ^ -((v & 1) as i128)
}

/// Length of an element value of type `t` at the start of `b`.
fn value_len(t: u8, b: &[u8]) -> Result<usize, String> {
    let i32_at = |at: usize| -> Result<usize, String> {
        let s = b.get(at..at + 4).ok_or("truncated literal")?;
        Ok(i32::from_le_bytes([s[0], s[1], s[2], s[3]]).max(0) as usize)
    };
    let cstr = |from: usize| -> Result<usize, String> {
        b[from..]
            .iter()
            .position(|&c| c == 0)
            .map(|p| p + 1)
            .ok_or_else(|| "unterminated string in literal".to_owned())
    };
    Ok(match t {
        0x01 | 0x09 | 0x11 | 0x12 => 8,
        0x02 | 0x0D | 0x0E => 4 + i32_at(0)?,
        0x03 | 0x04 | 0x0F => i32_at(0)?,
        0x05 => 5 + i32_at(0)?,
        0x06 | 0x0A | 0xFF | 0x7F => 0,
        0x07 => 12,
        0x08 => 1,
        0x0B => {
            let a = cstr(0)?;
            a + cstr(a)?
        }
        0x0C => 4 + i32_at(0)? + 12,
        0x10 => 4,
        0x13 => 16,
        other => return Err(format!("unknown BSON type {other:#x} in a literal")),
    })
}

fn to_bson(t: u8, v: &[u8]) -> Result<Bson, String> {
    let mut raw = Vec::with_capacity(v.len() + 7);
    raw.extend_from_slice(&((v.len() + 7) as i32).to_le_bytes());
    raw.push(t);
    raw.push(0);
    raw.extend_from_slice(v);
    raw.push(0);
    let d = Document::from_reader(&mut raw.as_slice()).map_err(|e| e.to_string())?;
    d.get("").cloned().ok_or_else(|| "empty literal".to_owned())
}

/// The string a 128-bit string encoding stands for (bytes reversed, trailing NULs cut).
fn decode_string(v: i128) -> Vec<u8> {
    let bytes = v.to_le_bytes();
    let len = bytes.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
    bytes[..len].iter().rev().copied().collect()
}

fn oid_encoding(b: &[u8]) -> i64 {
    // Bytes 0..7 of the integer are: counter[2], ts[3], counter[1], ts[2], counter[0],
    // ts[1], ts[0] (simple8b_type_util.h).
    let order = [11, 3, 10, 2, 9, 1, 0];
    order
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, &at)| acc | (u64::from(b[at]) << (8 * i))) as i64
}

fn oid_from(encoded: i64, unique: &[u8]) -> [u8; 12] {
    let e = (encoded as u64).to_le_bytes();
    let mut b = [0u8; 12];
    let order = [11, 3, 10, 2, 9, 1, 0];
    for (i, &at) in order.iter().enumerate() {
        b[at] = e[i];
    }
    b[4..9].copy_from_slice(unique);
    b
}

const SCALES: [f64; 5] = [1.0, 10.0, 100.0, 10_000.0, 100_000_000.0];

/// The integer a double stands for at a scale index (5: its bits).
fn double_encoding(x: f64, scale: usize) -> i64 {
    match SCALES.get(scale) {
        Some(m) => (x * m).round() as i64,
        None => x.to_bits() as i64,
    }
}

fn double_value(e: i64, scale: usize) -> f64 {
    match SCALES.get(scale) {
        Some(m) => e as f64 / m,
        None => f64::from_bits(e as u64),
    }
}

/// The state of the current run: the last literal and what deltas apply to.
struct Run {
    t: u8,
    literal: Vec<u8>,
    last: Bson,
    /// Ints, booleans, dates, timestamps, ObjectId encodings: the last value.
    int: i64,
    /// Delta-of-delta types: the last delta.
    delta: i64,
    /// Doubles: the scale of the current control byte and the last value's encoding.
    scale: usize,
    encoded: i64,
    /// 128-bit types: the last encoding, if the literal had one.
    wide: Option<i128>,
}

impl Run {
    fn new(t: u8, literal: Vec<u8>) -> Result<Run, String> {
        let last = to_bson(t, &literal)?;
        let int = match &last {
            Bson::Int32(x) => i64::from(*x),
            Bson::Int64(x) => *x,
            Bson::Boolean(b) => i64::from(*b),
            Bson::DateTime(d) => d.timestamp_millis(),
            Bson::Timestamp(ts) => ((u64::from(ts.time) << 32) | u64::from(ts.increment)) as i64,
            Bson::ObjectId(o) => oid_encoding(&o.bytes()),
            _ => 0,
        };
        let wide = match &last {
            Bson::String(s) | Bson::JavaScriptCode(s) => {
                let b = s.as_bytes();
                (b.len() <= 16 && b.first() != Some(&0)).then(|| {
                    let mut a = [0u8; 16];
                    for (i, c) in b.iter().rev().enumerate() {
                        a[i] = *c;
                    }
                    i128::from_le_bytes(a)
                })
            }
            Bson::Binary(bin) => (bin.bytes.len() <= 16).then(|| {
                let mut a = [0u8; 16];
                a[..bin.bytes.len()].copy_from_slice(&bin.bytes);
                i128::from_le_bytes(a)
            }),
            Bson::Decimal128(d) => Some(i128::from_le_bytes(d.bytes())),
            _ => None,
        };
        Ok(Run {
            t,
            literal,
            last,
            int,
            delta: 0,
            scale: 5,
            encoded: 0,
            wide,
        })
    }

    /// A new control byte: doubles re-encode the last value at its scale.
    fn control(&mut self, scale: usize) {
        if let Bson::Double(x) = self.last {
            self.scale = scale;
            self.encoded = double_encoding(x, scale);
        }
    }

    fn apply(&mut self, v: u128) -> Result<Bson, String> {
        let t = self.t;
        let out = match t {
            0x02 | 0x0D | 0x05 | 0x13 => {
                let d = unzigzag128(v);
                if d == 0 {
                    return Ok(self.last.clone());
                }
                let x = self.wide.unwrap_or(0).wrapping_add(d);
                self.wide = Some(x);
                match (&self.last, t) {
                    (_, 0x02) => Bson::String(
                        String::from_utf8(decode_string(x)).map_err(|e| e.to_string())?,
                    ),
                    (_, 0x0D) => Bson::JavaScriptCode(
                        String::from_utf8(decode_string(x)).map_err(|e| e.to_string())?,
                    ),
                    (Bson::Binary(b), _) => {
                        let mut b = b.clone();
                        let len = b.bytes.len();
                        b.bytes = x.to_le_bytes()[..len].to_vec();
                        Bson::Binary(b)
                    }
                    _ => Bson::Decimal128(bson::Decimal128::from_bytes(x.to_le_bytes())),
                }
            }
            0x01 => {
                self.encoded = self.encoded.wrapping_add(unzigzag64(v));
                Bson::Double(double_value(self.encoded, self.scale))
            }
            0x10 | 0x12 | 0x08 => {
                self.int = self.int.wrapping_add(unzigzag64(v));
                match t {
                    0x10 => Bson::Int32(self.int as i32),
                    0x12 => Bson::Int64(self.int),
                    _ => Bson::Boolean(self.int != 0),
                }
            }
            0x09 | 0x11 | 0x07 => {
                self.delta = self.delta.wrapping_add(unzigzag64(v));
                self.int = self.int.wrapping_add(self.delta);
                match t {
                    0x09 => Bson::DateTime(bson::DateTime::from_millis(self.int)),
                    0x11 => Bson::Timestamp(bson::Timestamp {
                        time: ((self.int as u64) >> 32) as u32,
                        increment: self.int as u32,
                    }),
                    _ => Bson::ObjectId(bson::oid::ObjectId::from_bytes(oid_from(
                        self.int,
                        &self.literal[4..9],
                    ))),
                }
            }
            _ if unzigzag64(v) == 0 => self.last.clone(),
            _ => return Err(format!("a non-zero delta for BSON type {t:#x}")),
        };
        self.last = out.clone();
        Ok(out)
    }
}

/// Reads the control block at `at` (a literal or a Simple-8b run) of a stream whose state
/// is `run`, appending its values to `out`.
fn read_control(
    binary: &[u8],
    at: &mut usize,
    run: &mut Option<Run>,
    last_s8b: &mut Option<u128>,
    out: &mut Vec<Option<Bson>>,
) -> Result<(), String> {
    let c = *binary.get(*at).ok_or("truncated BSONColumn")?;
    *at += 1;
    match c {
        c if c & 0xE0 == 0 || c == 0xFF || c == 0x7F => {
            if binary.get(*at) != Some(&0) {
                return Err(format!("literal at byte {} has a field name", *at - 1));
            }
            *at += 1;
            let len = value_len(c, &binary[*at..])?;
            let literal = binary
                .get(*at..*at + len)
                .ok_or("truncated literal")?
                .to_vec();
            *at += len;
            let r = Run::new(c, literal)?;
            out.push(Some(r.last.clone()));
            *run = Some(r);
            *last_s8b = Some(0);
        }
        0x80..=0xDF => {
            let scale = match c >> 4 {
                0x8 => 5,
                n => usize::from(n - 9),
            };
            if let Some(r) = run.as_mut() {
                r.control(scale);
            }
            for _ in 0..usize::from(c & 0x0F) + 1 {
                let w = binary
                    .get(*at..*at + 8)
                    .ok_or("truncated Simple-8b block")?;
                *at += 8;
                let word = u64::from_le_bytes(w.try_into().map_err(|_| "block")?);
                for v in block(word, *last_s8b)? {
                    *last_s8b = v;
                    match (v, run.as_mut()) {
                        (None, _) => out.push(None),
                        (Some(v), Some(r)) => out.push(Some(r.apply(v)?)),
                        (Some(_), None) => return Err("a delta before any literal".into()),
                    }
                }
            }
        }
        other => return Err(format!("unexpected control byte {other:#x} at {}", *at - 1)),
    }
    Ok(())
}

/// The scalar leaves of a reference object, in order.
fn leaves(v: &Bson, out: &mut Vec<Bson>) {
    match v {
        Bson::Document(d) => d.values().for_each(|x| leaves(x, out)),
        Bson::Array(a) => a.iter().for_each(|x| leaves(x, out)),
        other => out.push(other.clone()),
    }
}

/// Rebuilds an object of an interleaved run from the reference and one value per leaf:
/// missing leaves are left out, and so are sub-objects left empty (unless empty in the
/// reference); `None` when nothing is present.
fn rebuild(reference: &Bson, values: &mut std::vec::IntoIter<Option<Bson>>) -> Option<Bson> {
    match reference {
        Bson::Document(d) => {
            let mut out = Document::new();
            for (k, v) in d {
                if let Some(x) = rebuild(v, values) {
                    out.insert(k.clone(), x);
                }
            }
            (!out.is_empty() || d.is_empty()).then_some(Bson::Document(out))
        }
        Bson::Array(a) => {
            let out: Vec<Bson> = a.iter().filter_map(|v| rebuild(v, values)).collect();
            (!out.is_empty() || a.is_empty()).then_some(Bson::Array(out))
        }
        _ => values.next().flatten(),
    }
}

/// One scalar field's stream in an interleaved run.
struct Leaf {
    run: Option<Run>,
    last_s8b: Option<u128>,
    queue: std::collections::VecDeque<Option<Bson>>,
}

/// Decodes an interleaved run starting at `at` (its start byte), to its closing 0x00.
fn interleaved(binary: &[u8], at: &mut usize, out: &mut Vec<Option<Bson>>) -> Result<(), String> {
    let root_array = binary[*at] == 0xF2;
    *at += 1;
    let len = binary
        .get(*at..*at + 4)
        .map(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]).max(0) as usize)
        .ok_or("truncated reference object")?;
    let raw = binary
        .get(*at..*at + len)
        .ok_or("truncated reference object")?;
    let doc = Document::from_reader(&mut &raw[..]).map_err(|e| e.to_string())?;
    *at += len;
    let reference = if root_array {
        Bson::Array(doc.values().cloned().collect())
    } else {
        Bson::Document(doc)
    };
    let mut refs = Vec::new();
    leaves(&reference, &mut refs);
    let mut states = Vec::new();
    for r in &refs {
        let mut d = Document::new();
        d.insert("", r.clone());
        let mut raw = Vec::new();
        d.to_writer(&mut raw).map_err(|e| e.to_string())?;
        let run = Run::new(raw[4], raw[6..raw.len() - 1].to_vec())?;
        states.push(Leaf {
            run: Some(run),
            last_s8b: Some(0),
            queue: Default::default(),
        });
    }
    loop {
        let mut values = Vec::with_capacity(states.len());
        for (i, leaf) in states.iter_mut().enumerate() {
            if leaf.queue.is_empty() {
                if binary.get(*at) == Some(&0) {
                    if i != 0 {
                        return Err("interleaved run ends in the middle of an object".into());
                    }
                    *at += 1;
                    return Ok(());
                }
                let mut got = Vec::new();
                read_control(binary, at, &mut leaf.run, &mut leaf.last_s8b, &mut got)?;
                leaf.queue.extend(got);
            }
            values.push(leaf.queue.pop_front().flatten());
        }
        if states.is_empty() {
            return Err("interleaved run without scalar fields".into());
        }
        out.push(rebuild(&reference, &mut values.into_iter()));
    }
}

/// Decodes a BSONColumn binary into its values; `None` is a missing (skipped) value.
///
/// # Errors
/// A description of the first malformed byte.
pub fn decode(binary: &[u8]) -> Result<Vec<Option<Bson>>, String> {
    let mut out = Vec::new();
    let mut run: Option<Run> = None;
    // The last Simple-8b value, which an RLE block repeats; 0 at the start of a run.
    let mut last_s8b: Option<u128> = Some(0);
    let mut at = 0;
    loop {
        match *binary.get(at).ok_or("BSONColumn without its final 0x00")? {
            0x00 => break,
            0xF0..=0xF2 => {
                interleaved(binary, &mut at, &mut out)?;
                run = None;
                last_s8b = Some(0);
            }
            _ => read_control(binary, &mut at, &mut run, &mut last_s8b, &mut out)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's expected binaries (`timeseries_write_util_test.cpp`,
    /// `MakeTimeseriesCompressedDiffUpdateOp`): a time column of 15:34:31, :32, :33 whose
    /// tail from byte 10 is replaced by "gAt9AAD8fGBtAA==" holds those and then :30, :34.
    #[test]
    fn decodes_the_server_diffed_columns() {
        let t =
            |s: u32| bson::DateTime::parse_rfc3339_str(format!("2022-06-06T15:34:{s}Z")).unwrap();
        // The literal of 15:34:31 (type 0x09, empty name, millis) then the diff.
        let mut col = vec![0x09, 0x00];
        col.extend_from_slice(&t(31).timestamp_millis().to_le_bytes());
        col.extend([0x80, 0x0b, 0x7d, 0x00, 0x00, 0xfc, 0x7c, 0x60, 0x6d, 0x00]);
        let got = decode(&col).unwrap();
        let want: Vec<Option<Bson>> = [31, 32, 33, 30, 34]
            .iter()
            .map(|s| Some(Bson::DateTime(t(*s))))
            .collect();
        assert_eq!(got, want);
        // Int32 column: literal 1 then "gCsAEAAUABAAAA==": 1, 2, 3, 0, 4.
        let col = [
            0x10, 0x00, 1, 0, 0, 0, 0x80, 0x2b, 0x00, 0x10, 0x00, 0x14, 0x00, 0x10, 0x00, 0x00,
        ];
        let got = decode(&col).unwrap();
        let want: Vec<Option<Bson>> = [1, 2, 3, 0, 4]
            .iter()
            .map(|v| Some(Bson::Int32(*v)))
            .collect();
        assert_eq!(got, want);
    }

    /// Blocks from `simple8b_test.cpp` (SkipInMiddle's last words, Selector7BaseTest,
    /// Selector8SmallBaseTest) decode to their values.
    #[test]
    fn decodes_the_server_simple8b_words() {
        assert_eq!(block(0x1E, Some(0)).unwrap(), vec![Some(1)]);
        let w = u64::from_le_bytes([0x27, 0xFD, 0x7E, 0xBF, 0xDF, 0xEF, 0xF7, 0xFB]);
        assert_eq!(block(w, Some(0)).unwrap(), vec![Some(57344); 8]);
        let w = u64::from_le_bytes([0x18, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55]);
        assert_eq!(block(w, Some(0)).unwrap(), vec![Some(0x50_0000); 7]);
        let w = u64::from_le_bytes([0x3A, 0x0, 0x3, 0x30, 0x0, 0xFF, 0x7F, 0x0]);
        assert_eq!(
            block(w, Some(0)).unwrap(),
            vec![Some(3), Some(3), Some(3), None, Some(7)]
        );
        assert_eq!(block(0x0F, Some(1)).unwrap(), vec![Some(1); 120]);
        // EncodeWithTrailingDirtyBits: selector 8, seven values of 1 from bit 8.
        let w = u64::from_le_bytes([0x08, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(block(w, Some(0)).unwrap(), vec![Some(1); 7]);
    }
}

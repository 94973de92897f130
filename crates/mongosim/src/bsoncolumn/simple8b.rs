//! Simple-8b blocks as MongoDB's `Simple8bBuilder` writes them
//! (`src/mongo/bson/column/simple8b_builder.h`/`.inl`, tables in `simple8b_helpers.h`).
//!
//! A block is a little-endian u64 whose low 4 bits select how the other 60 bits hold
//! values: selectors 1-14 pack 60..1 values of 1..60 bits; selectors 7 and 8 use 4 spare
//! bits as an extension that stores trailing zeros (7: up to 15 zeros; 8 "small": nibbles
//! up to 60 zeros; 8 "large": nibbles up to 124 zeros, for 128-bit deltas); selector 15
//! is run-length encoding: `(n + 1) * 120` repeats of the last value of the previous
//! block. A value of all ones in its slot is a skip (a missing value). Pending values are
//! packed greedily: a block is written when the next value fits no selector any more,
//! using the last selector type that fitted and the smallest selector leaving no slot
//! empty.

/// Index of the selector types in the tables below.
const BASE: usize = 0;
const SEVEN: usize = 1;
const EIGHT_SMALL: usize = 2;
const EIGHT_LARGE: usize = 3;

const RLE_SELECTOR: u64 = 15;
const MAX_RLE_COUNT: u32 = 16;
const RLE_MULTIPLIER: u32 = 120;
const SELECTOR_BITS: u32 = 4;
const NIBBLE: u8 = 4;

const MAX_SELECTOR: [usize; 4] = [14, 9, 7, 13];
const MIN_SELECTOR: [usize; 4] = [1, 1, 1, 8];
const DATA_BITS: [u32; 4] = [60, 56, 56, 56];
const TRAILING_ZERO_BITS: [u32; 4] = [0, 4, 4, 5];
const TRAILING_ZEROS_MAX: [u8; 4] = [0, 15, 60, 124];
/// The fewest value bits each selector type stores (`kMinDataBits`).
const MIN_DATA_BITS: [u8; 4] = [1, 2, 4, 4];

const INTS_FOR_SELECTOR: [[u8; 16]; 4] = [
    [0, 60, 30, 20, 15, 12, 10, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    [0, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0, 0, 0],
    [0, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 6, 5, 4, 3, 2, 1, 0, 0],
];
const BITS_PER_INT: [[u8; 16]; 4] = [
    [64, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30, 60, 64],
    [64, 2, 3, 4, 5, 7, 10, 14, 24, 52, 64, 64, 64, 64, 64, 64],
    [64, 4, 5, 7, 10, 14, 24, 52, 0, 0, 64, 64, 64, 64, 64, 64],
    [64, 0, 0, 0, 0, 0, 0, 0, 4, 6, 9, 13, 23, 51, 64, 64],
];

/// The base selector (low 4 bits) of a selector index of a type.
fn base_selector(ext: usize, selector: usize) -> u64 {
    match ext {
        BASE => selector as u64,
        SEVEN => 7,
        _ => 8,
    }
}

/// A value waiting to be packed, with the bits it needs under each selector type.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pending {
    val: Option<u128>,
    bits: [u8; 4],
    trailing: [u8; 4],
}

const SKIP: Pending = Pending {
    val: None,
    bits: [0; 4],
    trailing: [0; 4],
};

/// Packs unsigned values (64-bit, or 128-bit when `wide`) into Simple-8b blocks.
#[derive(Clone, Debug)]
pub struct Simple8bBuilder {
    wide: bool,
    rle_count: u32,
    last_in_prev_word: Option<u128>,
    curr_max_bits: [u8; 4],
    last_valid_ext: usize,
    possible: [bool; 4],
    pending: Vec<Pending>,
}

/// The values not yet written, oldest first: `rle_count` repeats of the run's value, then
/// the pending values (`Simple8bBuilder::begin()`); `None` is a skip.
#[derive(Clone, Copy, Debug)]
pub struct PendingView<'a> {
    rle_count: u32,
    rle_value: Option<u128>,
    pending: &'a [Pending],
}

impl PendingView<'_> {
    /// The values, oldest first.
    pub fn values(&self) -> Vec<Option<u128>> {
        let mut out = vec![self.rle_value; self.rle_count as usize];
        out.extend(self.pending.iter().map(|p| p.val));
        out
    }
}

/// Receives each block as it is completed, with the values still pending after it.
pub trait BlockSink {
    /// A finished block.
    fn block(&mut self, word: u64, pending: PendingView<'_>);
}

/// A sink that only notes that a block was written.
#[derive(Debug)]
pub struct Overflow(pub bool);

impl BlockSink for Overflow {
    fn block(&mut self, _word: u64, _pending: PendingView<'_>) {
        self.0 = true;
    }
}

fn bits_without_leading_zeros(value: u128, wide: bool) -> u8 {
    let high = (value >> 64) as u64;
    let low = value as u64;
    if !wide || high == 0 {
        if wide && low == u64::MAX {
            return 65;
        }
        // All ones is the skip pattern, hence the + 1.
        (64 - low.wrapping_add(1).leading_zeros()) as u8
    } else {
        (128 - high.leading_zeros()) as u8
    }
}

fn trailing_zeros(value: u128) -> u8 {
    if value == 0 {
        0
    } else {
        value.trailing_zeros() as u8
    }
}

impl Simple8bBuilder {
    /// An empty builder; `wide` for 128-bit values.
    pub fn new(wide: bool) -> Simple8bBuilder {
        Simple8bBuilder {
            wide,
            rle_count: 0,
            last_in_prev_word: Some(0),
            curr_max_bits: MIN_DATA_BITS,
            last_valid_ext: BASE,
            possible: [true; 4],
            pending: Vec::new(),
        }
    }

    /// The values not yet written.
    pub fn view(&self) -> PendingView<'_> {
        PendingView {
            rle_count: self.rle_count,
            rle_value: self.last_in_prev_word,
            pending: &self.pending,
        }
    }

    /// Takes over the run-length state of `other` (`initializeRLEFrom`).
    pub fn initialize_rle_from(&mut self, other: &Simple8bBuilder) {
        if other.rle_possible() {
            self.last_in_prev_word = other.last_in_prev_word;
        }
    }

    /// True while a run may start or continue.
    pub fn rle_possible(&self) -> bool {
        self.pending.is_empty() || self.rle_count != 0
    }

    /// Appends a value; false when no selector can hold it.
    pub fn append(&mut self, value: u128, sink: &mut dyn BlockSink) -> bool {
        if self.rle_possible() {
            if self.last_in_prev_word == Some(value) {
                self.rle_count += 1;
                self.last_valid_ext = BASE;
                self.possible = [true; 4];
                return true;
            }
            self.handle_rle_termination(sink);
        }
        self.append_value(value, true, sink)
    }

    /// Appends a skip.
    pub fn skip(&mut self, sink: &mut dyn BlockSink) {
        if self.rle_possible() {
            if self.last_in_prev_word.is_none() {
                self.rle_count += 1;
                self.last_valid_ext = BASE;
                self.possible = [true; 4];
                return;
            }
            self.handle_rle_termination(sink);
        }
        self.append_skip(true, sink);
    }

    /// Writes every pending value out.
    pub fn flush(&mut self, sink: &mut dyn BlockSink) {
        self.handle_rle_termination(sink);
        if !self.pending.is_empty() {
            loop {
                let word = self.encode_largest_possible_word(self.last_valid_ext);
                sink.block(word, self.view());
                if self.pending.is_empty() {
                    break;
                }
            }
            self.rle_count = 0;
        }
    }

    fn calculate_pending(&self, value: u128) -> Option<Pending> {
        let max = if self.wide {
            u128::MAX
        } else {
            u128::from(u64::MAX)
        };
        if value == max {
            return None;
        }
        let wide = self.wide;
        let tz = trailing_zeros(value);
        let bits = bits_without_leading_zeros(value, wide);
        let tz7 = tz.min(TRAILING_ZEROS_MAX[SEVEN]);
        let mut m7 = bits - tz7;
        let tz8s = (tz.min(TRAILING_ZEROS_MAX[EIGHT_SMALL]) / NIBBLE) * NIBBLE;
        let mut m8s = bits - tz8s;
        let tz8l = (tz.min(TRAILING_ZEROS_MAX[EIGHT_LARGE]) / NIBBLE) * NIBBLE;
        let mut m8l = bits - tz8l;
        if tz == TRAILING_ZEROS_MAX[SEVEN] {
            m7 = bits_without_leading_zeros(value >> tz, wide);
        } else if tz == TRAILING_ZEROS_MAX[EIGHT_SMALL] {
            m8s = bits_without_leading_zeros(value >> tz, wide);
        }
        if wide && tz == TRAILING_ZEROS_MAX[EIGHT_LARGE] {
            m8l = bits_without_leading_zeros(value >> tz, wide);
        }
        let too_big = |m: u8, ext: usize| u32::from(m) + TRAILING_ZERO_BITS[ext] > DATA_BITS[ext];
        if u32::from(bits) > DATA_BITS[BASE]
            && too_big(m7, SEVEN)
            && too_big(m8s, EIGHT_SMALL)
            && too_big(m8l, EIGHT_LARGE)
        {
            return None;
        }
        Some(Pending {
            val: Some(value),
            bits: [bits, m7, m8s, m8l],
            trailing: [0, tz7, tz8s, tz8l],
        })
    }

    fn append_value(&mut self, value: u128, try_rle: bool, sink: &mut dyn BlockSink) -> bool {
        let Some(pv) = self.calculate_pending(value) else {
            return false;
        };
        if self.fits(&pv) {
            self.pending.push(pv);
            self.update_state(&pv);
            return true;
        }
        let last = self.pending.last().copied();
        loop {
            let word = self.encode_largest_possible_word(self.last_valid_ext);
            sink.block(word, self.view());
            if self.fits(&pv) {
                break;
            }
        }
        if try_rle && self.pending.is_empty() && last.and_then(|l| l.val) == Some(value) {
            self.rle_count = 1;
            self.last_in_prev_word = Some(value);
            self.last_valid_ext = BASE;
            self.possible = [true; 4];
        } else {
            self.pending.push(pv);
            self.update_state(&pv);
        }
        true
    }

    fn append_skip(&mut self, try_rle: bool, sink: &mut dyn BlockSink) {
        if let Some(last) = self.pending.last().copied() {
            let last_is_skip = last.val.is_none();
            let probe = Pending {
                val: None,
                bits: MIN_DATA_BITS,
                trailing: [0; 4],
            };
            if !self.fits(&probe) {
                let word = self.encode_largest_possible_word(self.last_valid_ext);
                sink.block(word, self.view());
                self.last_valid_ext = BASE;
            }
            if self.pending.is_empty() && last_is_skip && try_rle {
                self.rle_count = 1;
                self.last_in_prev_word = None;
                return;
            }
        }
        self.pending.push(SKIP);
    }

    fn handle_rle_termination(&mut self, sink: &mut dyn BlockSink) {
        self.append_rle_encoding(sink);
        while self.rle_count > 0 {
            match self.last_in_prev_word {
                None => self.append_skip(false, sink),
                Some(v) => {
                    self.append_value(v, false, sink);
                }
            }
            self.rle_count -= 1;
        }
        self.last_in_prev_word = Some(0);
        if self.pending.is_empty() {
            self.last_valid_ext = BASE;
            self.possible = [true; 4];
        }
    }

    fn append_rle_encoding(&mut self, sink: &mut dyn BlockSink) {
        let mut count = self.rle_count / RLE_MULTIPLIER;
        if count >= 1 {
            while count > MAX_RLE_COUNT {
                self.rle_word(MAX_RLE_COUNT, sink);
                count -= MAX_RLE_COUNT;
            }
            self.rle_word(count, sink);
        }
    }

    fn rle_word(&mut self, count: u32, sink: &mut dyn BlockSink) {
        let word = RLE_SELECTOR | (u64::from(count - 1) << SELECTOR_BITS);
        self.rle_count -= RLE_MULTIPLIER * count;
        sink.block(word, self.view());
    }

    fn fits(&mut self, pv: &Pending) -> bool {
        for ext in 0..4 {
            if self.possible[ext] && self.fits_with(pv, ext) {
                return true;
            }
        }
        false
    }

    fn fits_with(&mut self, pv: &Pending, ext: usize) -> bool {
        let per = u64::from(self.curr_max_bits[ext].max(pv.bits[ext]))
            + u64::from(TRAILING_ZERO_BITS[ext]);
        let needed = per * (self.pending.len() as u64 + 1);
        if u64::from(DATA_BITS[ext]) < needed {
            self.possible[ext] = false;
            return false;
        }
        self.last_valid_ext = ext;
        true
    }

    fn encode_largest_possible_word(&mut self, ext: usize) -> u64 {
        let n = self.pending.len();
        let selector = (MIN_SELECTOR[ext]..MAX_SELECTOR[ext])
            .find(|&s| n >= usize::from(INTS_FOR_SELECTOR[ext][s]))
            .unwrap_or(MAX_SELECTOR[ext]);
        let ints = usize::from(INTS_FOR_SELECTOR[ext][selector]);
        let word = self.encode(selector, ext);
        self.pending.drain(..ints);
        self.curr_max_bits = MIN_DATA_BITS;
        for p in self.pending.clone() {
            self.update_state(&p);
        }
        self.possible = [true; 4];
        word
    }

    fn encode(&self, selector: usize, ext: usize) -> u64 {
        let base = base_selector(ext, selector);
        let shift_ext = if base == 7 || base == 8 { 4 } else { 0 };
        let bits = u32::from(BITS_PER_INT[ext][selector]);
        let tz_bits = TRAILING_ZERO_BITS[ext];
        let ints = usize::from(INTS_FOR_SELECTOR[ext][selector]);
        let mask = if bits + tz_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << (bits + tz_bits)) - 1
        };
        let mut word = base;
        for (i, p) in self.pending.iter().take(ints).enumerate() {
            let shift = (bits + tz_bits) * i as u32 + SELECTOR_BITS + shift_ext;
            let slot = match p.val {
                None => mask,
                Some(v) => match ext {
                    BASE => v as u64,
                    SEVEN => {
                        let tz = u32::from(p.trailing[SEVEN]);
                        u64::from(tz) | ((v >> tz) << TRAILING_ZERO_BITS[SEVEN]) as u64
                    }
                    _ => {
                        let t = u32::from(p.trailing[ext] / NIBBLE);
                        u64::from(t) | ((v >> (t * 4)) << TRAILING_ZERO_BITS[ext]) as u64
                    }
                },
            };
            word |= slot << shift;
        }
        if ext != BASE {
            word |= (selector as u64) << SELECTOR_BITS;
        }
        word
    }

    fn update_state(&mut self, p: &Pending) {
        for i in 0..4 {
            self.curr_max_bits[i] = self.curr_max_bits[i].max(p.bits[i]);
        }
    }
}

/// The number of values (skips included) a block holds (`blockCount`).
pub fn block_count(word: u64) -> u64 {
    let selector = (word & 0xF) as usize;
    let ext = ((word >> 4) & 0xF) as usize;
    match selector {
        0 => 0,
        15 => (ext as u64 + 1) * u64::from(RLE_MULTIPLIER),
        7 | 8 if ext != 0 => {
            let t = if selector == 7 {
                SEVEN
            } else if ext >= 8 {
                EIGHT_LARGE
            } else {
                EIGHT_SMALL
            };
            INTS_FOR_SELECTOR[t].get(ext).copied().map_or(0, u64::from)
        }
        s => u64::from(INTS_FOR_SELECTOR[BASE][s]),
    }
}

#[cfg(test)]
#[path = "simple8b_tests.rs"]
mod tests;

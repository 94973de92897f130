//! Expected blocks from MongoDB's own `src/mongo/bson/column/simple8b_test.cpp` (the byte
//! arrays of its `testSimple8b(values, expectedBinary)` cases), packed by this builder.

use super::*;

struct Collect(Vec<u8>);

impl BlockSink for Collect {
    fn block(&mut self, word: u64, _pending: PendingView<'_>) {
        self.0.extend_from_slice(&word.to_le_bytes());
    }
}

fn pack(values: &[Option<u64>]) -> Vec<u8> {
    let mut b = Simple8bBuilder::new(false);
    let mut out = Collect(Vec::new());
    for v in values {
        match v {
            Some(v) => assert!(b.append(u128::from(*v), &mut out)),
            None => b.skip(&mut out),
        }
    }
    b.flush(&mut out);
    out.0
}

fn rep(n: usize, v: Option<u64>) -> Vec<Option<u64>> {
    vec![v; n]
}

fn word(w: [u8; 8]) -> Vec<u8> {
    w.to_vec()
}

const FIFTY_FIVES: [u8; 8] = [0x52, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55];
const ALL_SKIP_60: [u8; 8] = [0xF1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

#[test]
fn single_values_and_skips() {
    assert_eq!(pack(&[]), Vec::<u8>::new());
    // OnlySkip, OneValue, MaxValue, MultipleValues
    assert_eq!(
        pack(&[None]),
        word([0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
    );
    assert_eq!(pack(&[Some(1)]), word([0x1E, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(
        pack(&[Some(0xFFF_FFFF_FFFF_FFFE)]),
        word([0xEE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
    );
    assert_eq!(
        pack(&[Some(1), Some(2), Some(3)]),
        word([0x1C, 0x0, 0x0, 0x2, 0x0, 0x30, 0x0, 0x0])
    );
}

#[test]
fn full_words_and_splits() {
    // MaxValues, EncodeWithTrailingDirtyBits, FullBuffer
    assert_eq!(pack(&rep(60, Some(1))), [FIFTY_FIVES, FIFTY_FIVES].concat());
    assert_eq!(pack(&rep(7, Some(1))), word([0x08, 1, 1, 1, 1, 1, 1, 1]));
    assert_eq!(pack(&rep(120, Some(1))), [FIFTY_FIVES; 4].concat());
    // MaxValueBuffer
    assert_eq!(
        pack(&rep(3, Some(0xFFF_FFFF_FFFF_FFFE))),
        [[0xEE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]; 3].concat()
    );
    // BreakPendingIntoMultipleSimple8bBlocks
    let mut v = rep(57, Some(1));
    v.push(Some(15));
    assert_eq!(
        pack(&v),
        [
            FIFTY_FIVES,
            [0x93, 0x24, 0x49, 0x92, 0x24, 0x49, 0x92, 0x24],
            [0x07, 0x81, 0x40, 0x20, 0x10, 0x08, 0x04, 0x1E]
        ]
        .concat()
    );
    // BreakPendingValuesIntoMultipleSimple8bWords
    let mut v = rep(50, Some(0));
    v.push(Some(0xFFFF_FFFF_FFFF));
    assert_eq!(
        pack(&v),
        [
            [0x2, 0, 0, 0, 0, 0, 0, 0],
            [0x3, 0, 0, 0, 0, 0, 0, 0],
            [0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF, 0x0]
        ]
        .concat()
    );
}

#[test]
fn skips_among_values() {
    // SkipAtSecondToLast
    let mut v = rep(3, Some(3));
    v.extend([None, Some(7)]);
    assert_eq!(pack(&v), word([0x3A, 0x0, 0x3, 0x30, 0x0, 0xFF, 0x7F, 0x0]));
    // SkipInMiddle
    let mut v = rep(50, Some(1));
    v.push(None);
    v.extend(rep(50, Some(1)));
    assert_eq!(
        pack(&v),
        [
            FIFTY_FIVES,
            [0x52, 0x55, 0x55, 0x55, 0x55, 0x75, 0x55, 0x55],
            FIFTY_FIVES,
            [0x16, 0x4, 0x41, 0x10, 0x4, 0x41, 0x10, 0x4],
            [0x1E, 0, 0, 0, 0, 0, 0, 0]
        ]
        .concat()
    );
    // TrailingSkips
    let mut v = rep(48, Some(1));
    v.extend(rep(2, None));
    assert_eq!(
        pack(&v),
        [
            FIFTY_FIVES,
            [0x93, 0x24, 0x49, 0x92, 0x24, 0x49, 0x92, 0xFC]
        ]
        .concat()
    );
    // LeadingSkips
    let v = [None, None, Some(3), Some(8), Some(13)];
    assert_eq!(
        pack(&v),
        word([0xFA, 0xFF, 0xFF, 0x3F, 0x0, 0x8, 0xD0, 0x0])
    );
    // WordOfSkips
    let mut v = rep(30, None);
    v.push(Some((1 << 30) + 1));
    assert_eq!(
        pack(&v),
        [
            [0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            [0x1E, 0, 0, 0, 0x4, 0, 0, 0]
        ]
        .concat()
    );
    // LargeSkipsFirst
    let v: Vec<Option<u64>> = (0..10).flat_map(|_| [None, Some(64)]).collect();
    assert_eq!(
        pack(&v),
        [
            [0x17, 0xBF, 0xF5, 0x5B, 0xBF, 0xF5, 0x5B, 0x3F],
            [0x17, 0xD6, 0x6F, 0xFD, 0xD6, 0x6F, 0xFD, 0x16],
            [0xFD, 0xFF, 0xFF, 0xFF, 0x03, 0x01, 0x0, 0x0]
        ]
        .concat()
    );
}

#[test]
fn selector_seven_and_eight_extensions() {
    // Selector7BaseTest, Selector7BaseTestAndSkips, Selector7SingleZero, Selector7SkipEncoding
    assert_eq!(
        pack(&rep(8, Some(57344))),
        word([0x27, 0xFD, 0x7E, 0xBF, 0xDF, 0xEF, 0xF7, 0xFB])
    );
    let v: Vec<Option<u64>> = (0..4).flat_map(|_| [Some(57344), None]).collect();
    assert_eq!(
        pack(&v),
        word([0x27, 0xFD, 0x7F, 0xFF, 0xDF, 0xFF, 0xF7, 0xFF])
    );
    assert_eq!(
        pack(&rep(12, Some(30))),
        word([0xE5, 0xBD, 0xF7, 0xDE, 0x7B, 0xEF, 0xBD, 0xF7])
    );
    assert_eq!(
        pack(&rep(7, Some(229_376))),
        word([0x37, 0x7F, 0x7F, 0x7F, 0x7F, 0x7F, 0x7F, 0x7F])
    );
    // Selector7IntegrationWithBaseEncoding (both directions)
    let mut v = rep(2, Some(11));
    v.extend(rep(2, Some(12_615_680)));
    assert_eq!(
        pack(&v),
        word([0x67, 0xB0, 0x00, 0x2C, 0xF0, 0x81, 0x7D, 0x60])
    );
    let mut v = rep(2, Some(12_615_680));
    v.extend(rep(2, Some(11)));
    assert_eq!(
        pack(&v),
        word([0x67, 0x1F, 0xD8, 0x07, 0x06, 0x0B, 0xC0, 0x02])
    );
    // Selector8SmallBaseTest, ...AndSkip, ...SkipEncoding, ...NibbleShift, ...BitsAndNibble
    assert_eq!(
        pack(&rep(7, Some(0x50_0000))),
        word([0x18, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55])
    );
    let mut v = vec![Some(7_340_032)];
    for _ in 0..3 {
        v.extend([None, Some(7_340_032)]);
    }
    assert_eq!(
        pack(&v),
        word([0x18, 0x75, 0xFF, 0x75, 0xFF, 0x75, 0xFF, 0x75])
    );
    let v: Vec<Option<u64>> = (0..3)
        .flat_map(|_| [Some(17_293_822_569_102_704_640), None])
        .collect();
    assert_eq!(
        pack(&v),
        word([0x28, 0xFF, 0xFE, 0xFF, 0xFB, 0xFF, 0xEF, 0x3F])
    );
    assert_eq!(
        pack(&rep(5, Some(7_864_320))),
        word([0x38, 0x84, 0x27, 0x3C, 0xE1, 0x09, 0x4F, 0x78])
    );
    assert_eq!(
        pack(&rep(2, Some(549_789_368_320))),
        word([0x68, 0x26, 0x00, 0x08, 0x60, 0x02, 0x80, 0x00])
    );
    // Selector8SmallAddSelector7FirstThen8, ...AddBaseSelectorThen7Then8,
    // ...StartWith8SelectorAndAddSmallerValues
    let mut v = rep(4, Some(57344));
    v.extend(rep(3, Some(7_340_032)));
    assert_eq!(
        pack(&v),
        word([0x18, 0xE3, 0xE3, 0xE3, 0xE3, 0x75, 0x75, 0x75])
    );
    let mut v = vec![Some(6)];
    v.extend(rep(4, Some(57344)));
    v.extend(rep(2, Some(7_340_032)));
    assert_eq!(
        pack(&v),
        word([0x18, 0x60, 0xE3, 0xE3, 0xE3, 0xE3, 0x75, 0x75])
    );
    let mut v = rep(3, Some(7_340_032));
    v.extend(rep(3, Some(57344)));
    v.push(Some(6));
    assert_eq!(
        pack(&v),
        word([0x18, 0x75, 0x75, 0x75, 0xE3, 0xE3, 0xE3, 0x60])
    );
}

#[test]
fn run_length_encoding() {
    const RLE1: [u8; 8] = [0x0F, 0, 0, 0, 0, 0, 0, 0];
    // RleZeroThenRleAnotherValue
    let mut v = rep(1920, Some(0));
    v.extend(rep(270, Some(1)));
    assert_eq!(
        pack(&v),
        [
            [0xFF, 0, 0, 0, 0, 0, 0, 0],
            FIFTY_FIVES,
            [0x1F, 0, 0, 0, 0, 0, 0, 0]
        ]
        .concat()
    );
    // Rle, MultipleRleWords, RleSkip, FlushSkipRLE, RleChangeOfValue
    assert_eq!(
        pack(&rep(180, Some(1))),
        [FIFTY_FIVES, RLE1, FIFTY_FIVES].concat()
    );
    assert_eq!(
        pack(&rep(30 + 16 * 120 * 2, Some(1))),
        [
            FIFTY_FIVES,
            [0xFF, 0, 0, 0, 0, 0, 0, 0],
            [0xFF, 0, 0, 0, 0, 0, 0, 0]
        ]
        .concat()
    );
    assert_eq!(
        pack(&rep(240, None)),
        [ALL_SKIP_60, RLE1, ALL_SKIP_60].concat()
    );
    assert_eq!(
        pack(&rep(121, None)),
        [
            ALL_SKIP_60,
            ALL_SKIP_60,
            [0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        ]
        .concat()
    );
    let mut v = rep(300, Some(1));
    v.push(Some(7));
    assert_eq!(
        pack(&v),
        [
            FIFTY_FIVES,
            [0x1F, 0, 0, 0, 0, 0, 0, 0],
            FIFTY_FIVES,
            [0x7E, 0, 0, 0, 0, 0, 0, 0]
        ]
        .concat()
    );
}

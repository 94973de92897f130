//! MongoDB Extended JSON v2 written straight from raw BSON.
//!
//! Records carry the whole oplog entry as relaxed Extended JSON; Kafka keys carry the
//! document `_id` as canonical Extended JSON (so `1` and `1.0` and `NumberLong(1)` make
//! different keys, as they are different `_id`s). Going through `bson::Bson` and
//! `serde_json::Value` would allocate a tree per entry; this writer walks the raw bytes
//! once and appends to a reused buffer.
//!
//! The output follows the Extended JSON v2 specification (mongodb/specifications,
//! `extended-json.md`) and is checked against the `bson` crate's own converter in tests.

use base64::Engine as _;
use bson::{RawArray, RawBsonRef, RawDocument};

/// Relaxed or canonical Extended JSON.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Numbers as JSON numbers, dates as ISO-8601 where possible: for people and tools.
    Relaxed,
    /// Every type preserved (`{"$numberInt": "1"}`): for keys that must round-trip.
    Canonical,
}

/// Appends `doc` as Extended JSON to `out`.
///
/// # Errors
/// When the raw bytes are not valid BSON; `out` then holds a partial document and should
/// be discarded.
pub fn write_document(
    doc: &RawDocument,
    mode: Mode,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    out.push(b'{');
    let mut first = true;
    for item in doc.iter() {
        let (k, v) = item?;
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(k.as_str(), out);
        out.push(b':');
        write_value(v, mode, out)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_array(arr: &RawArray, mode: Mode, out: &mut Vec<u8>) -> Result<(), bson::error::Error> {
    out.push(b'[');
    let mut first = true;
    for v in arr {
        let v = v?;
        if !first {
            out.push(b',');
        }
        first = false;
        write_value(v, mode, out)?;
    }
    out.push(b']');
    Ok(())
}

/// Appends one value as Extended JSON to `out`.
///
/// # Errors
/// When the raw bytes of a nested document are not valid BSON.
pub fn write_value(
    v: RawBsonRef<'_>,
    mode: Mode,
    out: &mut Vec<u8>,
) -> Result<(), bson::error::Error> {
    match v {
        RawBsonRef::Double(f) => write_double(f, mode, out),
        RawBsonRef::String(s) => write_str(s, out),
        RawBsonRef::Array(a) => write_array(a, mode, out)?,
        RawBsonRef::Document(d) => write_document(d, mode, out)?,
        RawBsonRef::Boolean(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        RawBsonRef::Null => out.extend_from_slice(b"null"),
        RawBsonRef::RegularExpression(re) => {
            let mut opts: Vec<char> = re.options.as_str().chars().collect();
            opts.sort_unstable();
            let opts: String = opts.into_iter().collect();
            out.extend_from_slice(b"{\"$regularExpression\":{\"pattern\":");
            write_str(re.pattern.as_str(), out);
            out.extend_from_slice(b",\"options\":");
            write_str(&opts, out);
            out.extend_from_slice(b"}}");
        }
        RawBsonRef::JavaScriptCode(code) => {
            out.extend_from_slice(b"{\"$code\":");
            write_str(code, out);
            out.push(b'}');
        }
        RawBsonRef::JavaScriptCodeWithScope(cws) => {
            out.extend_from_slice(b"{\"$code\":");
            write_str(cws.code, out);
            out.extend_from_slice(b",\"$scope\":");
            write_document(cws.scope, mode, out)?;
            out.push(b'}');
        }
        RawBsonRef::Int32(i) => match mode {
            Mode::Relaxed => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
            Mode::Canonical => {
                out.extend_from_slice(b"{\"$numberInt\":\"");
                out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
                out.extend_from_slice(b"\"}");
            }
        },
        RawBsonRef::Int64(i) => match mode {
            Mode::Relaxed => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
            Mode::Canonical => {
                out.extend_from_slice(b"{\"$numberLong\":\"");
                out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
                out.extend_from_slice(b"\"}");
            }
        },
        RawBsonRef::Timestamp(ts) => {
            out.extend_from_slice(b"{\"$timestamp\":{\"t\":");
            out.extend_from_slice(itoa::Buffer::new().format(ts.time).as_bytes());
            out.extend_from_slice(b",\"i\":");
            out.extend_from_slice(itoa::Buffer::new().format(ts.increment).as_bytes());
            out.extend_from_slice(b"}}");
        }
        RawBsonRef::Binary(b) => {
            out.extend_from_slice(b"{\"$binary\":{\"base64\":\"");
            let start = out.len();
            let enc_len = base64::encoded_len(b.bytes.len(), true).unwrap_or(0);
            out.resize(start + enc_len, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(b.bytes, &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + written);
            let st: u8 = b.subtype.into();
            out.extend_from_slice(b"\",\"subType\":\"");
            out.extend_from_slice(&[HEX[usize::from(st >> 4)], HEX[usize::from(st & 0xf)]]);
            out.extend_from_slice(b"\"}}");
        }
        RawBsonRef::ObjectId(oid) => {
            out.extend_from_slice(b"{\"$oid\":\"");
            for b in oid.bytes() {
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
            out.extend_from_slice(b"\"}");
        }
        RawBsonRef::DateTime(dt) => write_date(dt.timestamp_millis(), mode, out),
        RawBsonRef::Symbol(s) => {
            out.extend_from_slice(b"{\"$symbol\":");
            write_str(s, out);
            out.push(b'}');
        }
        RawBsonRef::Decimal128(d) => {
            out.extend_from_slice(b"{\"$numberDecimal\":");
            write_str(&d.to_string(), out);
            out.push(b'}');
        }
        RawBsonRef::Undefined => out.extend_from_slice(b"{\"$undefined\":true}"),
        RawBsonRef::MaxKey => out.extend_from_slice(b"{\"$maxKey\":1}"),
        RawBsonRef::MinKey => out.extend_from_slice(b"{\"$minKey\":1}"),
        RawBsonRef::DbPointer(_) => {
            // Deprecated since 1.6 and never written by a current server; the raw view does
            // not expose its parts, so take the slow road through the owned value.
            let owned = bson::Bson::try_from(bson::RawBson::from(v))?;
            let json = match mode {
                Mode::Relaxed => owned.into_relaxed_extjson(),
                Mode::Canonical => owned.into_canonical_extjson(),
            };
            out.extend_from_slice(json.to_string().as_bytes());
        }
    }
    Ok(())
}

fn write_double(f: f64, mode: Mode, out: &mut Vec<u8>) {
    if !f.is_finite() {
        let s = if f.is_nan() {
            "NaN"
        } else if f.is_sign_negative() {
            "-Infinity"
        } else {
            "Infinity"
        };
        out.extend_from_slice(b"{\"$numberDouble\":\"");
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\"}");
        return;
    }
    let mut buf = ryu::Buffer::new();
    let text = buf.format_finite(f);
    match mode {
        Mode::Relaxed => out.extend_from_slice(text.as_bytes()),
        Mode::Canonical => {
            out.extend_from_slice(b"{\"$numberDouble\":\"");
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\"}");
        }
    }
}

/// `{"$date": "2015-02-03T21:16:14.123Z"}` in relaxed mode for years 1970..=9999,
/// `{"$date": {"$numberLong": "..."}}` otherwise, as the specification requires.
fn write_date(millis: i64, mode: Mode, out: &mut Vec<u8>) {
    const MAX_ISO: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    if mode == Mode::Relaxed && (0..=MAX_ISO).contains(&millis) {
        let secs = millis.div_euclid(1000);
        let ms = millis.rem_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        // Written digit by digit: `write!` through a String cost a few hundred ns a date,
        // and every insert carries at least one (`wall`).
        out.extend_from_slice(b"{\"$date\":\"");
        digits(y as u32, 4, out);
        out.push(b'-');
        digits(m, 2, out);
        out.push(b'-');
        digits(d, 2, out);
        out.push(b'T');
        digits((sod / 3600) as u32, 2, out);
        out.push(b':');
        digits(((sod / 60) % 60) as u32, 2, out);
        out.push(b':');
        digits((sod % 60) as u32, 2, out);
        if ms != 0 {
            out.push(b'.');
            digits(ms as u32, 3, out);
        }
        out.extend_from_slice(b"Z\"}");
    } else {
        out.extend_from_slice(b"{\"$date\":{\"$numberLong\":\"");
        out.extend_from_slice(itoa::Buffer::new().format(millis).as_bytes());
        out.extend_from_slice(b"\"}}");
    }
}

/// Appends `v` as exactly `width` decimal digits, zero-padded (`v < 10^width`).
fn digits(mut v: u32, width: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// `2015-02-03T21:16:14Z` (UTC) for seconds since the Unix epoch: for logs and status pages.
pub fn utc_seconds(secs: u32) -> String {
    let secs = i64::from(secs);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Bytes a JSON string literal must escape: `"`, `\\` and the control characters.
const ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` as a JSON string literal.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    // Runs without anything to escape (nearly every string) are copied whole.
    while let Some(off) = bytes[start..].iter().position(|&b| ESCAPE[usize::from(b)]) {
        let i = start + off;
        out.extend_from_slice(&bytes[start..i]);
        let b = bytes[i];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, spec::BinarySubtype, Binary, Bson, Document, RawDocumentBuf};
    use proptest::prelude::*;

    fn relaxed(d: &Document) -> String {
        let raw = RawDocumentBuf::try_from(d).unwrap();
        let mut out = Vec::new();
        write_document(&raw, Mode::Relaxed, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn canonical(d: &Document) -> String {
        let raw = RawDocumentBuf::try_from(d).unwrap();
        let mut out = Vec::new();
        write_document(&raw, Mode::Canonical, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn known_shapes() {
        let d = doc! {
            "i": 1, "l": 2_i64, "f": 1.0, "s": "a\"b\n\u{1}", "n": Bson::Null, "b": true,
            "ts": bson::Timestamp { time: 1422998574, increment: 1 },
            "date": bson::DateTime::from_millis(1422998574123),
            "old": bson::DateTime::from_millis(-1),
            "bin": Binary { subtype: BinarySubtype::Uuid, bytes: vec![0xff; 4] },
            "arr": [1, "x"],
        };
        assert_eq!(
            relaxed(&d),
            r#"{"i":1,"l":2,"f":1.0,"s":"a\"b\n\u0001","n":null,"b":true,"ts":{"$timestamp":{"t":1422998574,"i":1}},"date":{"$date":"2015-02-03T21:22:54.123Z"},"old":{"$date":{"$numberLong":"-1"}},"bin":{"$binary":{"base64":"/////w==","subType":"04"}},"arr":[1,"x"]}"#
        );
        assert_eq!(
            canonical(
                &doc! { "_id": 1, "l": 2_i64, "f": 1.5, "d": bson::DateTime::from_millis(5) }
            ),
            r#"{"_id":{"$numberInt":"1"},"l":{"$numberLong":"2"},"f":{"$numberDouble":"1.5"},"d":{"$date":{"$numberLong":"5"}}}"#
        );
        assert_eq!(
            relaxed(&doc! { "d": bson::DateTime::from_millis(0) }),
            r#"{"d":{"$date":"1970-01-01T00:00:00Z"}}"#
        );
    }

    #[test]
    fn utc_seconds_formats() {
        assert_eq!(utc_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_seconds(1422998574), "2015-02-03T21:22:54Z");
    }

    #[test]
    fn dates_after_9999() {
        assert_eq!(
            relaxed(&doc! { "d": bson::DateTime::from_millis(253_402_300_800_000) }),
            r#"{"d":{"$date":{"$numberLong":"253402300800000"}}}"#
        );
    }

    fn arb_bson() -> impl Strategy<Value = Bson> {
        let leaf = prop_oneof![
            any::<i32>().prop_map(Bson::Int32),
            any::<i64>().prop_map(Bson::Int64),
            any::<f64>().prop_map(Bson::Double),
            ".*".prop_map(Bson::String),
            any::<bool>().prop_map(Bson::Boolean),
            Just(Bson::Null),
            Just(Bson::MinKey),
            Just(Bson::MaxKey),
            (any::<u32>(), any::<u32>()).prop_map(|(t, i)| Bson::Timestamp(bson::Timestamp {
                time: t,
                increment: i
            })),
            // The bson crate clamps dates after 9999 when printing them relaxed (a lossy output this
            // writer avoids, see `dates_after_9999`), so compare within its exact range.
            (-62_135_596_800_000_i64..=253_402_300_799_999)
                .prop_map(|m| Bson::DateTime(bson::DateTime::from_millis(m))),
            any::<[u8; 12]>().prop_map(|b| Bson::ObjectId(bson::oid::ObjectId::from_bytes(b))),
            (
                proptest::collection::vec(any::<u8>(), 0..40),
                prop_oneof![Just(0u8), Just(4u8), Just(0x80u8)]
            )
                .prop_map(|(bytes, st)| Bson::Binary(Binary {
                    subtype: st.into(),
                    bytes
                })),
            any::<[u8; 16]>().prop_map(|b| Bson::Decimal128(bson::Decimal128::from_bytes(b))),
            ("[a-z]{0,5}", "[imsx]{0,3}").prop_map(|(p, o)| Bson::RegularExpression(bson::Regex {
                pattern: p.try_into().unwrap(),
                options: o.try_into().unwrap()
            })),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
                proptest::collection::vec(("[a-z$_]{1,6}", inner), 0..4)
                    .prop_map(|kv| Bson::Document(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Canonical output parses back (with the bson crate's Extended JSON parser) to the
        /// exact same value, and relaxed output equals the bson crate's own relaxed form.
        #[test]
        fn matches_the_bson_crate(values in proptest::collection::vec(("[a-z]{1,4}", arb_bson()), 0..6)) {
            let d: Document = values.into_iter().collect();
            let c: serde_json::Value = serde_json::from_str(&canonical(&d)).unwrap();
            let back = Bson::try_from(c).unwrap();
            // NaN never equals itself: compare the canonical JSON of both sides instead.
            prop_assert_eq!(Bson::Document(d.clone()).into_canonical_extjson(), back.into_canonical_extjson());

            let mine: serde_json::Value = serde_json::from_str(&relaxed(&d)).unwrap();
            let theirs = Bson::Document(d).into_relaxed_extjson();
            prop_assert_eq!(normalize_dates(mine), normalize_dates(theirs));
        }
    }

    /// Relaxed `$date` strings: the bson crate prints fractional seconds with a variable
    /// number of digits; compare the instants.
    fn normalize_dates(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(m) if m.len() == 1 && m.contains_key("$date") => {
                if let Some(s) = m["$date"].as_str() {
                    let dt = bson::DateTime::parse_rfc3339_str(s).unwrap();
                    serde_json::json!({ "$date": { "$numberLong": dt.timestamp_millis().to_string() } })
                } else {
                    Value::Object(m)
                }
            }
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, normalize_dates(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(normalize_dates).collect()),
            other => other,
        }
    }
}

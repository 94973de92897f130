//! The column encoder against MongoDB's own expectations: the binary diffs of
//! `src/mongo/db/timeseries/timeseries_write_util_test.cpp`
//! (`MakeTimeseriesCompressedDiffUpdateOp`) and hand-checked layouts of
//! `src/mongo/bson/column/bsoncolumn_test.cpp`.

use super::*;
use base64::Engine;
use bson::DateTime;

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn date(s: &str) -> Bson {
    Bson::DateTime(DateTime::parse_rfc3339_str(s).unwrap())
}

/// `MakeTimeseriesCompressedDiffUpdateOp`: a bucket of three measurements (time 15:34:31,
/// :32, :33; a and b 1, 2, 3) reopened, then :30 (a = b = 0) and :34 (4) appended in time
/// order: the diffs are `time: {o: 10, d: "gAt9AAD8fGBtAA=="}` and
/// `a, b: {o: 6, d: "gCsAEAAUABAAAA=="}`.
#[test]
fn compressed_diff_update_of_the_server_test() {
    let times = ["2022-06-06T15:34:31Z", "2022-06-06T15:34:32Z", "2022-06-06T15:34:33Z"];
    let mut time = ColumnBuilder::reopened(&times.map(|t| Some(date(t)))).unwrap();
    let mut a = ColumnBuilder::reopened(&[1, 2, 3].map(|v| Some(Bson::Int32(v)))).unwrap();
    time.append(&date("2022-06-06T15:34:30Z")).unwrap();
    time.append(&date("2022-06-06T15:34:34Z")).unwrap();
    a.append(&Bson::Int32(0)).unwrap();
    a.append(&Bson::Int32(4)).unwrap();
    assert_eq!(
        time.intermediate(),
        BinaryDiff {
            offset: 10,
            data: b64("gAt9AAD8fGBtAA==")
        }
    );
    assert_eq!(
        a.intermediate(),
        BinaryDiff {
            offset: 6,
            data: b64("gCsAEAAUABAAAA==")
        }
    );
}

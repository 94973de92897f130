//! Which mongod release is simulated: it decides the wire version, `buildInfo` and the oplog
//! entry shapes.

use std::fmt;
use std::str::FromStr;

/// A simulated server release.
///
/// `Legacy` replays pre-3.2 style fixtures (entries carry `h`, no `t`); it still advertises
/// wire version 9 so that current drivers (which refuse anything below 4.4) can connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ServerVersion {
    /// Oplog entries shaped like MongoDB 2.6 (`ts`, `h`, `v: 2`, `op`, `ns`, `o`).
    Legacy,
    /// MongoDB 4.4 (wire 9): `$v: 1` updates, no `h`.
    V4_4,
    /// MongoDB 5.0 (wire 13): `$v: 2` diff updates.
    V5_0,
    /// MongoDB 6.0 (wire 17).
    V6_0,
    /// MongoDB 7.0 (wire 21).
    #[default]
    V7_0,
    /// MongoDB 8.0 (wire 25).
    V8_0,
}

impl ServerVersion {
    /// `maxWireVersion` advertised in hello.
    pub fn max_wire_version(self) -> i32 {
        match self {
            ServerVersion::Legacy | ServerVersion::V4_4 => 9,
            ServerVersion::V5_0 => 13,
            ServerVersion::V6_0 => 17,
            ServerVersion::V7_0 => 21,
            ServerVersion::V8_0 => 25,
        }
    }

    /// The `version` string of `buildInfo`.
    pub fn version_string(self) -> &'static str {
        match self {
            ServerVersion::Legacy | ServerVersion::V4_4 => "4.4.29",
            ServerVersion::V5_0 => "5.0.31",
            ServerVersion::V6_0 => "6.0.20",
            ServerVersion::V7_0 => "7.0.14",
            ServerVersion::V8_0 => "8.0.4",
        }
    }

    /// `buildInfo.versionArray`.
    pub fn version_array(self) -> [i32; 4] {
        let mut out = [0; 4];
        for (slot, part) in out.iter_mut().zip(self.version_string().split('.')) {
            *slot = part.parse().unwrap_or(0);
        }
        out
    }

    /// Whether oplog entries carry `t` (protocol version 1) rather than a random `h`.
    pub fn has_terms(self) -> bool {
        self != ServerVersion::Legacy
    }

    /// Whether inserts carry `o2` = the document key (`{_id}` plus shard key fields): from
    /// 5.3, per mongodb/mongo `jstests/sharding/write_oplog_document_key.js` (requires_fcv_53).
    pub fn insert_document_key(self) -> bool {
        self >= ServerVersion::V6_0
    }

    /// Whether multi-deletes are batched into session-less `applyOps` entries: from 6.1
    /// (`featureFlagBatchMultiDeletes`; the server's tests carry `requires_fcv_61`), so on
    /// 7.0 and 8.0 here.
    pub fn batched_deletes(self) -> bool {
        self >= ServerVersion::V7_0
    }

    /// Whether an insert of several documents (not in a transaction) is logged as one
    /// `applyOps` entry per batch, a "vectored insert": on 8.0
    /// (`featureFlagReplicateVectoredInsertsTransactionally`, FCV-gated; see the crate docs
    /// for the sources).
    pub fn vectored_inserts(self) -> bool {
        self >= ServerVersion::V8_0
    }

    /// Whether a retryable findAndModify stores its image in `config.image_collection` and
    /// marks the oplog entry `needsRetryImage` (the default from 5.1, so 6.0+ here) rather
    /// than logging the image as a no-op entry (5.0 and earlier): mongodb/mongo
    /// `src/mongo/db/repl/README.md`, retryable findAndModify.
    pub fn retry_images_in_side_collection(self) -> bool {
        self >= ServerVersion::V6_0
    }

    /// Whether updates are logged as `$v: 2` diffs (5.0+) rather than `$v: 1` modifiers.
    pub fn diff_updates(self) -> bool {
        self >= ServerVersion::V5_0
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerVersion::Legacy => "legacy",
            ServerVersion::V4_4 => "4.4",
            ServerVersion::V5_0 => "5.0",
            ServerVersion::V6_0 => "6.0",
            ServerVersion::V7_0 => "7.0",
            ServerVersion::V8_0 => "8.0",
        })
    }
}

/// Error for an unknown version name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown server version {0:?}: expected legacy, 2.6, 4.4, 5.0, 6.0, 7.0 or 8.0")]
pub struct UnknownVersion(pub String);

impl FromStr for ServerVersion {
    type Err = UnknownVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "legacy" | "2.6" | "3.0" => ServerVersion::Legacy,
            "4.4" => ServerVersion::V4_4,
            "5.0" => ServerVersion::V5_0,
            "6.0" => ServerVersion::V6_0,
            "7.0" => ServerVersion::V7_0,
            "8.0" => ServerVersion::V8_0,
            other => return Err(UnknownVersion(other.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for v in ["legacy", "4.4", "5.0", "6.0", "7.0", "8.0"] {
            assert_eq!(v.parse::<ServerVersion>().unwrap().to_string(), v);
        }
        assert_eq!(ServerVersion::V7_0.version_array(), [7, 0, 14, 0]);
        assert!("9.9".parse::<ServerVersion>().is_err());
    }
}

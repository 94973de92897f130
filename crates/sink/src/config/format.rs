//! The options that shape records beside `[sink] format`: full documents, undecodable
//! operations, and the Extended JSON mode.

use serde::Deserialize;

/// `[sink] full_document`: whether update records carry the whole document, read after
/// the update the way MongoDB's change streams read it for `fullDocument: "updateLookup"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FullDocument {
    /// No lookup: updates carry what the oplog holds (the change only).
    #[default]
    Off,
    /// Each update is completed with the document as it is now (majority-committed, no
    /// older than the update); `null` with a `notFound` marker when it was deleted since.
    Lookup,
    /// As `lookup`, but a document that is gone stops the shard with an error naming it.
    Required,
}

impl FullDocument {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            FullDocument::Off => "off",
            FullDocument::Lookup => "lookup",
            FullDocument::Required => "required",
        }
    }

    /// Whether updates are looked up.
    pub fn enabled(self) -> bool {
        self != FullDocument::Off
    }
}

/// `[sink] undecodable`: what becomes of an operation that `change-event` or `debezium`
/// records cannot describe (an update in a shape the decoder does not know, a CRUD entry
/// without the fields an event needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Undecodable {
    /// The shard stops with an error naming the entry (its checkpoint stays before it).
    #[default]
    Stop,
    /// A record flagged `"undecodable": true` carrying the entry as logged and the
    /// error, in place of the event (never an event a consumer would apply); counted.
    Raw,
}

impl Undecodable {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Undecodable::Stop => "stop",
            Undecodable::Raw => "raw",
        }
    }
}

/// `[sink] json`: how BSON values are written in `oplog` and `change-event` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JsonMode {
    /// Relaxed Extended JSON (the default): numbers as JSON numbers, so an int64 that fits
    /// in 32 bits reads back as an int32 and a double with a whole value as a number.
    #[default]
    Relaxed,
    /// Canonical Extended JSON: every number typed (`{"$numberLong": "5"}`), so a
    /// consumer applying the records keeps the source's BSON types exactly.
    Canonical,
}

impl JsonMode {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            JsonMode::Relaxed => "relaxed",
            JsonMode::Canonical => "canonical",
        }
    }
}

//! Encoding one operation as a change event or a Debezium record, and what becomes of
//! an operation those formats cannot describe (`[sink] undecodable`): the error that
//! stops the shard, or a raw record flagged `"undecodable": true`.

use std::sync::atomic::Ordering::Relaxed;

use quorumtail_oplog::extjson::{write_document, Mode};
use quorumtail_sink::Undecodable;

use super::Emitter;

impl Emitter {
    /// Writes operations the format cannot describe raw, or stops (`[sink] undecodable`).
    pub fn with_undecodable(mut self, mode: Undecodable) -> Self {
        self.undecodable = mode;
        self
    }

    /// Writes BSON values in oplog and change-event records as `mode` Extended JSON
    /// (`[sink] json`).
    pub fn with_json(mut self, mode: quorumtail_sink::JsonMode) -> Self {
        self.json = match mode {
            quorumtail_sink::JsonMode::Relaxed => Mode::Relaxed,
            quorumtail_sink::JsonMode::Canonical => Mode::Canonical,
        };
        self
    }

    /// The value written for an operation its format refused: with `[sink] undecodable =
    /// "raw"` the flagged raw record (counted), else the error that stops the shard.
    pub(super) fn undecodable_value(
        &self,
        failure: Failure,
        src: &quorumtail_events::Source<'_>,
    ) -> Result<Vec<u8>, String> {
        let (op, e) = match failure {
            Failure::Other(detail) => return Err(detail),
            Failure::Undecodable(failed) => *failed,
        };
        if self.undecodable == Undecodable::Stop {
            return Err(format!(
                "{e}: no {} record can describe it, and none is emitted rather than a wrong one. Fix: set [sink] undecodable = \"raw\" to write such operations raw, flagged \"undecodable\": true (the stream goes on), or exclude the namespace with [filter] exclude",
                self.format.as_str()
            ));
        }
        self.stats.undecodable.fetch_add(1, Relaxed);
        let rec = quorumtail_events::undecodable_record(&op, src, &e);
        let raw = bson::RawDocumentBuf::try_from(&rec).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(raw.as_bytes().len() * 2);
        write_document(&raw, self.json, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// The key of a raw record under `format = "debezium"`: Debezium's key when the
    /// operation names its document, else as for a command.
    pub(super) fn debezium_raw_key(&self, id: Option<bson::Bson>, target: &str) -> Option<Vec<u8>> {
        match id {
            Some(id) => self.debezium_key(quorumtail_events::debezium_key(&id), target),
            None => Some(target.as_bytes().to_vec()),
        }
    }
}

/// Why an operation has no record in its format.
#[derive(Debug)]
pub(super) enum Failure {
    /// The format cannot describe the operation (an update in a shape the decoder does
    /// not know, a CRUD entry without the fields an event needs): `[sink] undecodable`
    /// decides.
    Undecodable(Box<(bson::Document, quorumtail_events::EventError)>),
    /// Anything else (unreadable bytes): the shard stops.
    Other(String),
}

impl Failure {
    /// The `_id` of the document the operation changed, when it names one (`o2`, else `o`).
    pub(super) fn doc_id(&self) -> Option<bson::Bson> {
        let Failure::Undecodable(failed) = self else {
            return None;
        };
        let op = &failed.0;
        ["o2", "o"]
            .iter()
            .find_map(|f| op.get_document(f).ok().and_then(|d| d.get("_id")).cloned())
    }
}

/// The Debezium record of `op`, made now; `None` when the connector writes none for it.
pub(super) fn debezium_json(
    op: &bson::RawDocument,
    src: &quorumtail_events::DebeziumSource<'_>,
) -> Result<Option<quorumtail_events::DebeziumRecord>, Failure> {
    let doc = bson::Document::try_from(op)
        .map_err(|e| Failure::Other(format!("unreadable entry: {e}")))?;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    quorumtail_events::debezium_record(&doc, src, now_ns)
        .map_err(|e| Failure::Undecodable(Box::new((doc, e))))
}

/// Writes the change event of `op` as relaxed Extended JSON; `false` when it has none.
pub(super) fn change_event_json(
    mode: Mode,
    op: &bson::RawDocument,
    src: &quorumtail_events::Source<'_>,
    out: &mut Vec<u8>,
) -> Result<bool, Failure> {
    let doc = bson::Document::try_from(op)
        .map_err(|e| Failure::Other(format!("unreadable entry: {e}")))?;
    let event = match quorumtail_events::change_event(&doc, src) {
        Ok(Some(event)) => event,
        Ok(None) => return Ok(false),
        Err(e) => return Err(Failure::Undecodable(Box::new((doc, e)))),
    };
    let raw = bson::RawDocumentBuf::try_from(&event).map_err(|e| Failure::Other(e.to_string()))?;
    write_document(&raw, mode, out).map_err(|e| Failure::Other(e.to_string()))?;
    Ok(true)
}

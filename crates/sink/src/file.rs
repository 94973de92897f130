//! The file sink: JSON lines on a dedicated thread, confirmed after flush + fsync.
//!
//! ```text
//!  SinkSender ─► [input channel] ─► writer thread: write value + "\n" (buffered)
//!                                        │ every `fsync_every` records, or when the
//!                                        │ channel is momentarily empty:
//!                                        ▼ flush + fdatasync (stdout: flush)
//!                                   Progress::ack for the batch ─► confirmed checkpoints
//! ```
//!
//! The fsync is batched, never per record. Order is the input order, so contiguity is
//! trivial here; the same tracker still checks seqs and places markers.
//!
//! With `format = "debezium"` a line is `{"key":<key>,"value":<value>}`: a Debezium value
//! alone does not name the document an update or a delete changed, its key does.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Stdout, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TryRecvError};

use crate::config::{KeyKind, RecordFormat, SinkConfig, SinkKind};
use crate::error::{DeliveryError, SinkError};
use crate::progress::Progress;
use crate::record::SinkInput;
use crate::Msg;

enum Out {
    Stdout(BufWriter<Stdout>),
    File(BufWriter<File>),
}

impl Out {
    fn open(path: &Path) -> Result<Out, SinkError> {
        if path == Path::new("-") {
            return Ok(Out::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())));
        }
        let io = |op: &'static str| {
            move |source| SinkError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let existed = path.exists();
        let f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io("open"))?;
        if !existed {
            // A new file's directory entry must be durable too, or an fsynced record can
            // vanish with the file after a power loss.
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync the directory of"))?;
        }
        let cut = drop_partial_line(&f).map_err(io("repair the last line of"))?;
        if cut > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = cut,
                "file sink: removed an incomplete last line left by a crash (it was never confirmed)"
            );
        }
        Ok(Out::File(BufWriter::with_capacity(1 << 16, f)))
    }

    fn write_line(&mut self, key: Option<&[u8]>, value: &[u8]) -> io::Result<()> {
        let w: &mut dyn Write = match self {
            Out::Stdout(w) => w,
            Out::File(w) => w,
        };
        if let Some(key) = key {
            w.write_all(b"{\"key\":")?;
            w.write_all(key)?;
            w.write_all(b",\"value\":")?;
            w.write_all(value)?;
            w.write_all(b"}\n")
        } else {
            w.write_all(value)?;
            w.write_all(b"\n")
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        match self {
            Out::Stdout(w) => w.flush(),
            Out::File(w) => {
                w.flush()?;
                w.get_ref().sync_data()
            }
        }
    }
}

/// Truncates the file after its last newline and returns how many bytes went.
///
/// A crash can leave part of a line behind. That line was never confirmed (a batch is
/// confirmed only after whole lines are fsynced), so it is re-sent after the restart;
/// appending to the fragment would glue two records into one invalid line.
fn drop_partial_line(f: &File) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = f;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        r.seek(SeekFrom::Start(start))?;
        r.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        f.set_len(end)?;
        f.sync_data()?;
    }
    Ok(len - end)
}

/// The writer thread.
pub(crate) struct Writer {
    out: Out,
    path: PathBuf,
    progress: Arc<Progress>,
    fsync_every: usize,
    /// Lines carry the record's key with its value (`format = "debezium"`); the key is
    /// JSON itself with `key = "document"`, else written as a JSON string.
    with_keys: bool,
    key_is_json: bool,
    /// Written, not yet fsynced: (shard index, seq).
    unsynced: Vec<(usize, u64)>,
    broken: bool,
}

impl Writer {
    pub(crate) fn open(config: &SinkConfig, progress: Arc<Progress>) -> Result<Self, SinkError> {
        config.check_values(SinkKind::File)?;
        let fsync_every = config.fsync_every();
        Ok(Writer {
            out: Out::open(config.path())?,
            path: config.path().to_owned(),
            progress,
            fsync_every,
            with_keys: matches!(config.format, RecordFormat::Debezium { .. }),
            key_is_json: config.key == KeyKind::Document,
            unsynced: Vec::with_capacity(fsync_every),
            broken: false,
        })
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut reply = None;
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    self.sync();
                    match rx.blocking_recv() {
                        Some(m) => m,
                        None => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            match msg {
                Msg::Input(input) => self.handle(input),
                Msg::Flush { reply: r, .. } => {
                    // Take what was already accepted, then stop.
                    rx.close();
                    reply = Some(r);
                }
            }
        }
        self.sync();
        if let Some(r) = reply {
            let _ = r.send(());
        }
    }

    fn handle(&mut self, input: SinkInput) {
        match input {
            SinkInput::Marker(m) => {
                let i = self.progress.index(&m.shard);
                self.progress.push_marker(i, m.seq, m.checkpoint);
            }
            SinkInput::Record(r) => {
                let i = self.progress.index(&r.shard);
                if self.progress.push_record(i, r.seq, r.checkpoint).is_err() {
                    // The shard failed earlier (or this seq broke the contract): not written.
                    return;
                }
                if self.broken {
                    self.progress.fail(i, r.seq, |shard| {
                        file_error(&self.path, shard, &r, "an earlier write failed".into())
                    });
                    return;
                }
                let Some(value) = &r.value else {
                    // A tombstone means nothing in a file: confirmed with the next sync.
                    self.unsynced.push((i, r.seq));
                    return;
                };
                let key = match (self.with_keys, r.key.as_deref()) {
                    (false, _) => None,
                    (true, None) => Some(b"null".to_vec()),
                    (true, Some(k)) if self.key_is_json => Some(k.to_vec()),
                    (true, Some(k)) => serde_json::to_vec(&String::from_utf8_lossy(k)).ok(),
                };
                match self.out.write_line(key.as_deref(), value) {
                    Ok(()) => {
                        self.unsynced.push((i, r.seq));
                        if self.unsynced.len() >= self.fsync_every {
                            self.sync();
                        }
                    }
                    Err(e) => {
                        self.progress.fail(i, r.seq, |shard| {
                            file_error(&self.path, shard, &r, e.to_string())
                        });
                        self.break_output(&e);
                    }
                }
            }
        }
    }

    fn sync(&mut self) {
        if self.unsynced.is_empty() {
            return;
        }
        match self.out.sync() {
            Ok(()) => {
                for (i, seq) in self.unsynced.drain(..) {
                    self.progress.ack(i, seq);
                }
            }
            Err(e) => self.break_output(&e),
        }
    }

    /// After a failed write or fsync nothing written since the last fsync can be trusted:
    /// every shard with unsynced records stops at its first unsynced record, and every
    /// later record fails too.
    fn break_output(&mut self, e: &io::Error) {
        tracing::error!(path = %self.path.display(), error = %e, "file sink: output failed");
        self.broken = true;
        let mut seen = std::collections::HashSet::new();
        for (i, seq) in std::mem::take(&mut self.unsynced) {
            if seen.insert(i) {
                let cause = format!("write or fsync failed: {e}");
                let path = self.path.clone();
                self.progress.fail(i, seq, |shard| {
                    DeliveryError {
                        shard,
                        seq,
                        ts: "?".into(),
                        ns: "?".into(),
                        topic: path.display().to_string(),
                        cause,
                        fix: FILE_FIX,
                    }
                    .into()
                });
            }
        }
    }
}

const FILE_FIX: &str = "check free space and permissions of the output file's file system";

fn file_error(path: &Path, shard: Arc<str>, r: &crate::OutRecord, cause: String) -> SinkError {
    DeliveryError {
        shard,
        seq: r.seq,
        ts: r.ts.to_string(),
        ns: r.ns(),
        topic: path.display().to_string(),
        cause,
        fix: FILE_FIX,
    }
    .into()
}

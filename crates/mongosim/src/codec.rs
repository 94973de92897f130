//! Wire framing: pure functions from bytes to [`Request`] and from reply documents to bytes.
//!
//! ```text
//!   socket --len prefix--> check_header --frame bytes--> parse_frame --> Request
//!   Reply doc ------------> encode_msg_reply / encode_op_reply -------> socket
//! ```
//!
//! Check-then-parse: [`check_header`] looks only at the 16-byte header and decides whether
//! the frame may be read at all (size bounds, opcode); [`parse_frame`] then decodes a whole
//! frame without I/O. Neither panics on any input (see the random-bytes tests below).
//!
//! Looked up in mongodb/specifications `source/message/OP_MSG.md` and the legacy opcodes
//! page of the server docs (OP_QUERY = 2004, OP_REPLY = 1, OP_MSG = 2013).

use bson::{Bson, Document, RawDocument};

/// Largest message mongod accepts (`maxMessageSizeBytes` in hello).
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
/// Largest BSON document (`maxBsonObjectSize`).
pub const MAX_BSON_OBJECT_SIZE: usize = 16 * 1024 * 1024;
/// Size of the standard message header.
pub const HEADER_LEN: usize = 16;

/// OP_REPLY, the legacy reply opcode.
pub const OP_REPLY: i32 = 1;
/// OP_QUERY, the legacy query opcode (still used for the first handshake by old clients).
pub const OP_QUERY: i32 = 2004;
/// OP_COMPRESSED: never negotiated by mongosim (hello lists no `compression`).
pub const OP_COMPRESSED: i32 = 2012;
/// OP_MSG, the only opcode current drivers send.
pub const OP_MSG: i32 = 2013;

/// OP_MSG flag bit 0: a CRC-32C checksum follows the sections.
pub const FLAG_CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag bit 1: the sender will not wait for a reply.
pub const FLAG_MORE_TO_COME: u32 = 1 << 1;
/// OP_MSG flag bit 16: the client accepts exhaust replies.
pub const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;

/// The standard header that starts every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total message length including the header.
    pub message_length: i32,
    /// Identifier chosen by the sender.
    pub request_id: i32,
    /// The request this message answers (0 in requests).
    pub response_to: i32,
    /// The opcode.
    pub op_code: i32,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// An OP_MSG: `command` is the kind-0 body with every kind-1 sequence merged in as an
    /// array under its identifier.
    Msg {
        /// The message header.
        header: Header,
        /// The OP_MSG flag bits.
        flags: u32,
        /// The command document.
        command: Document,
    },
    /// A legacy OP_QUERY (only a `$cmd` handshake is answered).
    Query {
        /// The message header.
        header: Header,
        /// `"admin.$cmd"` and the like.
        full_collection_name: String,
        /// The query document (the command for `$cmd` queries).
        query: Document,
    },
}

impl Request {
    /// The header of the request.
    pub fn header(&self) -> &Header {
        match self {
            Request::Msg { header, .. } | Request::Query { header, .. } => header,
        }
    }
}

/// Why a frame was refused. Any of these closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared length is below the header size or above [`MAX_MESSAGE_SIZE`].
    #[error("message length {0} outside [{HEADER_LEN}, {MAX_MESSAGE_SIZE}]")]
    BadLength(i64),
    /// An opcode mongosim does not speak.
    #[error("unsupported opcode {0}")]
    UnsupportedOpCode(i32),
    /// The CRC-32C trailer does not match.
    #[error("OP_MSG checksum mismatch: declared {declared:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// The checksum in the message.
        declared: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// Anything else structurally wrong, with a description.
    #[error("malformed message: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> FrameError {
    FrameError::Malformed(what.into())
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    read_i32(buf, at).map(|v| v as u32)
}

/// Checks the 16-byte header before the rest of the frame is read.
///
/// # Errors
/// [`FrameError::BadLength`] for a length outside the allowed bounds,
/// [`FrameError::UnsupportedOpCode`] for opcodes other than OP_MSG and OP_QUERY.
pub fn check_header(head: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
    let header = Header {
        message_length: read_i32(head, 0).unwrap_or_default(),
        request_id: read_i32(head, 4).unwrap_or_default(),
        response_to: read_i32(head, 8).unwrap_or_default(),
        op_code: read_i32(head, 12).unwrap_or_default(),
    };
    let len = i64::from(header.message_length);
    if len < HEADER_LEN as i64 || len > MAX_MESSAGE_SIZE as i64 {
        return Err(FrameError::BadLength(len));
    }
    match header.op_code {
        OP_MSG | OP_QUERY => Ok(header),
        other => Err(FrameError::UnsupportedOpCode(other)),
    }
}

/// Reads one BSON document at `at` and returns it with its length.
fn read_document(buf: &[u8], at: usize) -> Result<(Document, usize), FrameError> {
    let len = read_i32(buf, at).ok_or_else(|| malformed("truncated document length"))?;
    if len < 5 {
        return Err(malformed(format!("document length {len}")));
    }
    let len = len as usize;
    let end = at
        .checked_add(len)
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| malformed("document runs past the end of the message"))?;
    let raw = RawDocument::from_bytes(&buf[at..end]).map_err(|e| malformed(e.to_string()))?;
    let doc = Document::try_from(raw).map_err(|e| malformed(e.to_string()))?;
    Ok((doc, len))
}

fn read_cstring(buf: &[u8], at: usize) -> Result<(String, usize), FrameError> {
    let rest = buf
        .get(at..)
        .ok_or_else(|| malformed("truncated cstring"))?;
    let nul = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| malformed("unterminated cstring"))?;
    let s = std::str::from_utf8(&rest[..nul]).map_err(|_| malformed("cstring is not UTF-8"))?;
    Ok((s.to_owned(), nul + 1))
}

/// Decodes a whole frame (header included). Never panics.
///
/// # Errors
/// Any [`FrameError`]: bad length, opcode, checksum, or a structurally invalid body.
pub fn parse_frame(frame: &[u8]) -> Result<Request, FrameError> {
    let head: [u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::BadLength(frame.len() as i64))?;
    let header = check_header(&head)?;
    if header.message_length as usize != frame.len() {
        return Err(malformed(format!(
            "declared length {} but frame has {} bytes",
            header.message_length,
            frame.len()
        )));
    }
    match header.op_code {
        OP_MSG => parse_msg(header, frame),
        OP_QUERY => parse_query(header, frame),
        other => Err(FrameError::UnsupportedOpCode(other)),
    }
}

fn parse_msg(header: Header, frame: &[u8]) -> Result<Request, FrameError> {
    let flags = read_u32(frame, HEADER_LEN).ok_or_else(|| malformed("missing flagBits"))?;
    // Required bits (0-15) other than the two defined ones must be rejected.
    if flags & 0xFFFF & !(FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME) != 0 {
        return Err(malformed(format!("unknown required flag bits {flags:#x}")));
    }
    let mut end = frame.len();
    if flags & FLAG_CHECKSUM_PRESENT != 0 {
        if end < HEADER_LEN + 4 + 4 {
            return Err(malformed("checksum flag set but no room for a checksum"));
        }
        end -= 4;
        let declared = read_u32(frame, end).unwrap_or_default();
        let computed = crc32c::crc32c(&frame[..end]);
        if declared != computed {
            return Err(FrameError::BadChecksum { declared, computed });
        }
    }
    let body = &frame[..end];
    let mut at = HEADER_LEN + 4;
    let mut command: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while at < body.len() {
        let kind = body[at];
        at += 1;
        match kind {
            0 => {
                let (doc, len) = read_document(body, at)?;
                if command.is_some() {
                    return Err(malformed("more than one kind-0 section"));
                }
                command = Some(doc);
                at += len;
            }
            1 => {
                let size = read_i32(body, at).ok_or_else(|| malformed("truncated section"))?;
                if size < 5 {
                    return Err(malformed(format!("kind-1 section size {size}")));
                }
                let section_end = at
                    .checked_add(size as usize)
                    .filter(|e| *e <= body.len())
                    .ok_or_else(|| malformed("kind-1 section runs past the end"))?;
                let section = &body[..section_end];
                let (identifier, id_len) = read_cstring(section, at + 4)?;
                let mut pos = at + 4 + id_len;
                let mut docs = Vec::new();
                while pos < section_end {
                    let (doc, len) = read_document(section, pos)?;
                    docs.push(Bson::Document(doc));
                    pos += len;
                }
                sequences.push((identifier, docs));
                at = section_end;
            }
            other => return Err(malformed(format!("unknown section kind {other}"))),
        }
    }
    let mut command = command.ok_or_else(|| malformed("no kind-0 section"))?;
    for (identifier, docs) in sequences {
        if command.contains_key(&identifier) {
            return Err(malformed(format!(
                "kind-1 identifier {identifier:?} duplicates a body field"
            )));
        }
        command.insert(identifier, Bson::Array(docs));
    }
    Ok(Request::Msg {
        header,
        flags,
        command,
    })
}

fn parse_query(header: Header, frame: &[u8]) -> Result<Request, FrameError> {
    let mut at = HEADER_LEN + 4; // flags
    let (full_collection_name, len) = read_cstring(frame, at)?;
    at += len + 8; // numberToSkip, numberToReturn
    let (query, _) = read_document(frame, at)?;
    Ok(Request::Query {
        header,
        full_collection_name,
        query,
    })
}

fn document_bytes(doc: &Document) -> Vec<u8> {
    // Serializing a Document we built ourselves only fails for invalid keys (NUL bytes),
    // which the handlers never produce; fall back to an error document rather than panic.
    doc.to_vec().unwrap_or_else(|e| {
        let mut fallback = Document::new();
        fallback.insert("ok", 0.0);
        fallback.insert(
            "errmsg",
            format!("mongosim failed to serialize a reply: {e}"),
        );
        fallback.insert("code", 1);
        fallback.insert("codeName", "InternalError");
        fallback.to_vec().unwrap_or_default()
    })
}

fn write_header(out: &mut Vec<u8>, request_id: i32, response_to: i32, op_code: i32) {
    out.extend_from_slice(&0i32.to_le_bytes()); // patched below
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
}

fn patch_length(out: &mut [u8]) {
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_le_bytes());
}

/// Encodes an OP_MSG with flags 0 and one kind-0 section.
pub fn encode_msg_reply(request_id: i32, response_to: i32, reply: &Document) -> Vec<u8> {
    let body = document_bytes(reply);
    let mut out = Vec::with_capacity(HEADER_LEN + 5 + body.len());
    write_header(&mut out, request_id, response_to, OP_MSG);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&body);
    patch_length(&mut out);
    out
}

/// Encodes an OP_MSG request (used by tests and the control client).
pub fn encode_msg_request(request_id: i32, flags: u32, command: &Document) -> Vec<u8> {
    let body = document_bytes(command);
    let mut out = Vec::with_capacity(HEADER_LEN + 9 + body.len());
    write_header(&mut out, request_id, 0, OP_MSG);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&body);
    if flags & FLAG_CHECKSUM_PRESENT != 0 {
        out.extend_from_slice(&[0; 4]);
        patch_length(&mut out);
        let end = out.len() - 4;
        let crc = crc32c::crc32c(&out[..end]);
        out[end..].copy_from_slice(&crc.to_le_bytes());
    } else {
        patch_length(&mut out);
    }
    out
}

/// Encodes a legacy OP_REPLY carrying one document (responseFlags 0, cursorID 0).
pub fn encode_op_reply(request_id: i32, response_to: i32, reply: &Document) -> Vec<u8> {
    let body = document_bytes(reply);
    let mut out = Vec::with_capacity(HEADER_LEN + 20 + body.len());
    write_header(&mut out, request_id, response_to, OP_REPLY);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(&body);
    patch_length(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;
    use proptest::prelude::*;

    fn head(frame: &[u8]) -> [u8; HEADER_LEN] {
        frame[..HEADER_LEN].try_into().unwrap()
    }

    #[test]
    fn round_trips_a_command() {
        let cmd = doc! {"ping": 1, "$db": "admin"};
        let frame = encode_msg_request(7, 0, &cmd);
        let h = check_header(&head(&frame)).unwrap();
        assert_eq!(h.message_length as usize, frame.len());
        match parse_frame(&frame).unwrap() {
            Request::Msg {
                header, command, ..
            } => {
                assert_eq!(header.request_id, 7);
                assert_eq!(command, cmd);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn verifies_checksum() {
        let cmd = doc! {"ping": 1};
        let mut frame = encode_msg_request(1, FLAG_CHECKSUM_PRESENT, &cmd);
        assert!(parse_frame(&frame).is_ok());
        let n = frame.len();
        frame[n - 1] ^= 0xff;
        assert!(matches!(
            parse_frame(&frame),
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[test]
    fn merges_document_sequences() {
        let cmd = doc! {"insert": "c", "$db": "test"};
        let mut frame = encode_msg_request(1, 0, &cmd);
        let d1 = doc! {"_id": 1}.to_vec().unwrap();
        let d2 = doc! {"_id": 2}.to_vec().unwrap();
        let ident = b"documents\0";
        let size = (4 + ident.len() + d1.len() + d2.len()) as i32;
        frame.push(1);
        frame.extend_from_slice(&size.to_le_bytes());
        frame.extend_from_slice(ident);
        frame.extend_from_slice(&d1);
        frame.extend_from_slice(&d2);
        patch_length(&mut frame);
        let Request::Msg { command, .. } = parse_frame(&frame).unwrap() else {
            panic!("not a msg")
        };
        assert_eq!(
            command.get_array("documents").unwrap(),
            &vec![
                Bson::Document(doc! {"_id": 1}),
                Bson::Document(doc! {"_id": 2})
            ]
        );
    }

    #[test]
    fn rejects_oversized_and_tiny() {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&(MAX_MESSAGE_SIZE as i32 + 1).to_le_bytes());
        h[12..].copy_from_slice(&OP_MSG.to_le_bytes());
        assert!(matches!(check_header(&h), Err(FrameError::BadLength(_))));
        h[..4].copy_from_slice(&3i32.to_le_bytes());
        assert!(matches!(check_header(&h), Err(FrameError::BadLength(_))));
        h[..4].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(matches!(check_header(&h), Err(FrameError::BadLength(_))));
    }

    #[test]
    fn parses_legacy_query() {
        let q = doc! {"isMaster": 1};
        let mut frame = Vec::new();
        write_header(&mut frame, 3, 0, OP_QUERY);
        frame.extend_from_slice(&0i32.to_le_bytes());
        frame.extend_from_slice(b"admin.$cmd\0");
        frame.extend_from_slice(&0i32.to_le_bytes());
        frame.extend_from_slice(&(-1i32).to_le_bytes());
        frame.extend_from_slice(&q.to_vec().unwrap());
        patch_length(&mut frame);
        let Request::Query {
            full_collection_name,
            query,
            ..
        } = parse_frame(&frame).unwrap()
        else {
            panic!("not a query")
        };
        assert_eq!(full_collection_name, "admin.$cmd");
        assert_eq!(query, q);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_frame(&bytes);
            if bytes.len() >= HEADER_LEN {
                let _ = check_header(&head(&bytes));
            }
        }

        #[test]
        fn mutated_valid_frames_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            checksum in any::<bool>(),
        ) {
            let cmd = doc! {"find": "oplog.rs", "filter": {"ts": {"$gt": bson::Timestamp{time: 1, increment: 2}}}, "$db": "local"};
            let flags = if checksum { FLAG_CHECKSUM_PRESENT } else { 0 };
            let mut frame = encode_msg_request(1, flags, &cmd);
            for (at, b) in flips {
                let n = frame.len();
                frame[at % n] ^= b;
            }
            let _ = parse_frame(&frame);
        }
    }
}

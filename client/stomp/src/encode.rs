//! Frame encoder.

use bytes::{BufMut, BytesMut};

use crate::decode::Escaping;
use crate::frame::{Command, Frame, Version};

const CONTENT_LENGTH: &str = "content-length";

/// Encodes a frame. Header escaping per `version` (never for CONNECT/CONNECTED).
/// Any `content-length` in frame.headers is IGNORED and one computed from the body is written
/// whenever the body is non-empty (always for SEND/MESSAGE/ERROR, even when empty is fine too).
///
/// Details:
/// * The computed `content-length` takes the place of the frame's first
///   `content-length` header (later ones are dropped); without one it is appended
///   after the other headers. A frame with a `content-length` header and an empty
///   body gets `content-length:0`.
/// * Lines end with a bare LF.
/// * The output can never inject a line or a frame: where the escaping in force cannot
///   represent a character (CR/LF in 1.0 or CONNECT/CONNECTED headers, CR in 1.1) it is
///   written as a space, and a `:` in a header name that cannot be escaped becomes `_`.
///   Headers with an empty name are not representable and are skipped.
pub fn encode(frame: &Frame, version: Version, dst: &mut BytesMut) {
    dst.reserve(frame.encoded_len_hint());
    dst.put_slice(frame.command.as_str().as_bytes());
    dst.put_u8(b'\n');

    let escaping = Escaping::for_frame(version, frame.command);
    let body_len = frame.body.len();
    let mut wrote_length = false;
    for (name, value) in &frame.headers {
        if name == CONTENT_LENGTH {
            if !wrote_length {
                put_content_length(dst, body_len);
                wrote_length = true;
            }
            continue;
        }
        if name.is_empty() {
            continue;
        }
        put_text(dst, name.as_bytes(), escaping, true);
        dst.put_u8(b':');
        put_text(dst, value.as_bytes(), escaping, false);
        dst.put_u8(b'\n');
    }
    let always = matches!(
        frame.command,
        Command::Send | Command::Message | Command::Error
    );
    if !wrote_length && (body_len > 0 || always) {
        put_content_length(dst, body_len);
    }
    dst.put_u8(b'\n');
    dst.put_slice(&frame.body);
    dst.put_u8(0);
}

/// Writes one frame piece by piece, without building a [`Frame`]: for hot paths (a broker
/// delivering MESSAGE frames) where the headers come from several places. The output is exactly
/// what [`encode`] writes for the same command, headers and body (same escaping and
/// `content-length` rules).
///
/// ```
/// use bytes::BytesMut;
/// use fabricmq_stomp::{Command, FrameWriter, Version};
///
/// let mut out = BytesMut::new();
/// let mut w = FrameWriter::begin(&mut out, Command::Message, Version::V1_2);
/// w.header("destination", "/queue/a");
/// w.header_u64("priority", 4);
/// w.finish(b"hi");
/// assert_eq!(&out[..], b"MESSAGE\ndestination:/queue/a\npriority:4\ncontent-length:2\n\nhi\0");
/// ```
pub struct FrameWriter<'a> {
    dst: &'a mut BytesMut,
    command: Command,
    escaping: Escaping,
}

impl<'a> FrameWriter<'a> {
    /// Starts a frame: writes the command line.
    pub fn begin(dst: &'a mut BytesMut, command: Command, version: Version) -> Self {
        dst.put_slice(command.as_str().as_bytes());
        dst.put_u8(b'\n');
        FrameWriter {
            dst,
            command,
            escaping: Escaping::for_frame(version, command),
        }
    }

    /// Writes one header, escaped. `content-length` headers and empty names are skipped (the
    /// length is computed by [`FrameWriter::finish`]).
    pub fn header(&mut self, name: &str, value: &str) {
        if name.is_empty() || name == CONTENT_LENGTH {
            return;
        }
        put_text(self.dst, name.as_bytes(), self.escaping, true);
        self.dst.put_u8(b':');
        put_text(self.dst, value.as_bytes(), self.escaping, false);
        self.dst.put_u8(b'\n');
    }

    /// Writes a header whose value is a number (no allocation).
    pub fn header_u64(&mut self, name: &str, value: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut v = value;
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if name.is_empty() || name == CONTENT_LENGTH {
            return;
        }
        put_text(self.dst, name.as_bytes(), self.escaping, true);
        self.dst.put_u8(b':');
        self.dst.put_slice(&buf[i..]);
        self.dst.put_u8(b'\n');
    }

    /// Writes `content-length` (as [`encode`] would), the blank line, the body and the NUL.
    pub fn finish(self, body: &[u8]) {
        let always = matches!(
            self.command,
            Command::Send | Command::Message | Command::Error
        );
        if !body.is_empty() || always {
            put_content_length(self.dst, body.len());
        }
        self.dst.put_u8(b'\n');
        self.dst.put_slice(body);
        self.dst.put_u8(0);
    }
}

/// Writes a heart-beat: a single `"\n"`.
pub fn encode_heartbeat(dst: &mut BytesMut) {
    dst.put_u8(b'\n');
}

fn put_content_length(dst: &mut BytesMut, len: usize) {
    dst.put_slice(CONTENT_LENGTH.as_bytes());
    dst.put_u8(b':');
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = len as u64;
    loop {
        at -= 1;
        if let Some(slot) = digits.get_mut(at) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    dst.put_slice(digits.get(at..).unwrap_or_default());
    dst.put_u8(b'\n');
}

/// The replacement for `b` under `escaping`, or `None` to copy it as is.
#[inline]
fn escape_byte(b: u8, escaping: Escaping, is_name: bool) -> Option<&'static [u8]> {
    match (escaping, b) {
        (Escaping::V1_2, b'\r') => Some(b"\\r"),
        (Escaping::V1_1 | Escaping::None, b'\r') => Some(b" "),
        (Escaping::V1_1 | Escaping::V1_2, b'\n') => Some(b"\\n"),
        (Escaping::None, b'\n') => Some(b" "),
        (Escaping::V1_1 | Escaping::V1_2, b':') => Some(b"\\c"),
        (Escaping::None, b':') if is_name => Some(b"_"),
        (Escaping::V1_1 | Escaping::V1_2, b'\\') => Some(b"\\\\"),
        _ => None,
    }
}

/// Writes `text` with escaping, copying unescaped runs in one go.
fn put_text(dst: &mut BytesMut, text: &[u8], escaping: Escaping, is_name: bool) {
    let mut run_start = 0;
    for (i, &b) in text.iter().enumerate() {
        if let Some(replacement) = escape_byte(b, escaping, is_name) {
            dst.put_slice(text.get(run_start..i).unwrap_or_default());
            dst.put_slice(replacement);
            run_start = i + 1;
        }
    }
    dst.put_slice(text.get(run_start..).unwrap_or_default());
}

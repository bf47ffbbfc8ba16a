//! Incremental, limit-checked frame decoder.
//!
//! The decoder never consumes bytes of an incomplete frame: the frame always starts at
//! index 0 of the caller's buffer, and the decoder remembers how far it has scanned
//! (plus the command and headers parsed so far) so each byte is examined once no
//! matter how many reads the frame arrives in.

use std::mem;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::{lossy_truncated, truncate_chars, Command, Frame, Item, Version};

/// Limits checked BEFORE allocating; every violation is a typed DecodeError with size and max.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Whole frame incl. command line, headers, body and the terminating NUL; default 10 MiB.
    /// Heart-beat EOLs between frames are not counted.
    pub max_frame_bytes: usize,
    /// Maximum number of header lines in one frame; default 128.
    pub max_headers: usize,
    /// Bytes of one header line (`name:value`, escaped form, EOL excluded); default 16 KiB.
    pub max_header_line: usize,
    /// Bytes of the command line (EOL excluded); default 64.
    pub max_command_line: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_frame_bytes: 10 * 1024 * 1024,
            max_headers: 128,
            max_header_line: 16 * 1024,
            max_command_line: 64,
        }
    }
}

/// Why a byte stream is not valid STOMP. After any of these the stream is unusable.
///
/// For the size errors, `size` is exact when it is known (a complete line, or a frame
/// announcing its `content-length`) and otherwise the smallest size the frame or line
/// can still have given the bytes seen so far, which already exceeds `max`.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    /// The frame is (or will be, at least) larger than `max_frame_bytes`.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Frame size in bytes (a lower bound while the frame is incomplete).
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// More header lines than `max_headers`.
    #[error("frame has {count} headers, more than the limit of {max}")]
    TooManyHeaders {
        /// Number of headers seen when the limit was crossed.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// A header line longer than `max_header_line`.
    #[error("header line of {size} bytes exceeds the limit of {max} bytes")]
    HeaderLineTooLong {
        /// Line length in bytes (a lower bound while the line is incomplete).
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A command line longer than `max_command_line`.
    #[error("command line of {size} bytes exceeds the limit of {max} bytes")]
    CommandLineTooLong {
        /// Line length in bytes (a lower bound while the line is incomplete).
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The command line is not a STOMP command.
    #[error("unknown command {command:?}")]
    UnknownCommand {
        /// Lossy UTF-8 of the command bytes, truncated to 64 characters.
        command: String,
    },
    /// A header line without `:` or with an empty name.
    #[error("malformed header line {line:?}")]
    MalformedHeader {
        /// Lossy UTF-8 of the line, truncated to 64 characters.
        line: String,
    },
    /// An escape sequence the negotiated version does not define (e.g. `\t`).
    #[error("invalid escape sequence {sequence:?} in header")]
    InvalidEscape {
        /// The offending sequence, e.g. `"\\t"`, or `"\\"` for a trailing backslash.
        sequence: String,
    },
    /// Header bytes are not UTF-8 (after unescaping).
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// `"header"`. (`"command"` is reserved: a command line that is not a known
        /// command, UTF-8 or not, is reported as [`DecodeError::UnknownCommand`].)
        what: &'static str,
    },
    /// A `content-length` value that is not a non-negative integer fitting in `usize`.
    #[error("invalid content-length {value:?}")]
    InvalidContentLength {
        /// The value, truncated to 64 characters.
        value: String,
    },
    /// The byte after a `content-length` body is not NUL.
    #[error("content-length body is not followed by NUL")]
    MissingNul,
}

/// Which escape rules apply to the header lines of the frame being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escaping {
    /// STOMP 1.0, and CONNECT/CONNECTED frames in every version: bytes are literal.
    None,
    /// STOMP 1.1: `\n`, `\c`, `\\`.
    V1_1,
    /// STOMP 1.2: `\r`, `\n`, `\c`, `\\`.
    V1_2,
}

impl Escaping {
    pub(crate) fn for_frame(version: Version, command: Command) -> Escaping {
        if command.is_escape_exempt() {
            return Escaping::None;
        }
        match version {
            Version::V1_0 => Escaping::None,
            Version::V1_1 => Escaping::V1_1,
            Version::V1_2 => Escaping::V1_2,
        }
    }
}

/// Where the decoder is inside the frame that starts at index 0 of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for / scanning the command line (leading EOLs are heart-beats).
    Command,
    /// Command parsed; scanning header lines until the blank line.
    Headers {
        command: Command,
        escaping: Escaping,
    },
    /// Header section done; the body starts at `start`.
    Body {
        command: Command,
        start: usize,
        content_length: Option<usize>,
    },
}

/// Incremental decoder. Distinguishes "need more bytes" (Ok(None), buffer untouched or partially
/// consumed only of whole heart-beat EOLs) from malformed input (Err). After an Err the stream is
/// unusable (caller sends ERROR and closes).
///
/// Contract: pass the same buffer on every call and only append to it between calls
/// (as `tokio_util::codec::FramedRead` does). The decoder keeps scan offsets into that
/// buffer so that a frame arriving in many reads is scanned once (O(n) overall). If the
/// buffer is found shorter than what was already scanned, the decoder restarts the frame
/// from index 0 rather than misbehave; it never panics whatever the bytes.
///
/// Heart-beats: while waiting for a command, every EOL (`\n` or `\r\n`) currently in the
/// buffer is consumed and the whole run is reported as ONE [`Item::Heartbeat`]. A lone
/// trailing `\r` is left in place until the next byte shows whether it starts a `\r\n`.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: FrameLimits,
    version: Version,
    phase: Phase,
    /// `buf[..scan]` has been examined for the current frame.
    scan: usize,
    /// Start of the line currently being scanned (command or header phase).
    line_start: usize,
    /// Headers parsed so far for the current frame.
    headers: Vec<(String, String)>,
    /// First `content-length` header of the current frame, parsed.
    content_length: Option<usize>,
    /// Set once the stream is known bad; returned again on every later call.
    failed: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(FrameLimits::default())
    }
}

impl Decoder {
    /// A decoder with the given limits, using STOMP 1.2 escaping until told otherwise.
    pub fn new(limits: FrameLimits) -> Decoder {
        Decoder {
            limits,
            version: Version::V1_2,
            phase: Phase::Command,
            scan: 0,
            line_start: 0,
            headers: Vec::new(),
            content_length: None,
            failed: None,
        }
    }

    /// Escaping rules to apply to header names/values: 1.0 none, 1.1 `\n \c \\`, 1.2 adds `\r`.
    /// Default V1_2. CONNECT and CONNECTED frames are NEVER unescaped (spec).
    ///
    /// Takes effect from the next frame whose command line has not been parsed yet;
    /// call it between frames (e.g. right after negotiating the version).
    pub fn set_version(&mut self, v: Version) {
        self.version = v;
    }

    /// The version whose escaping rules are applied.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> FrameLimits {
        self.limits
    }

    /// Forgets any partially scanned frame and any previous error (version and limits
    /// are kept). Only useful when the caller also discards its buffer.
    pub fn reset(&mut self) {
        self.reset_frame();
        self.failed = None;
    }

    /// Decodes the next item from the front of `buf`.
    ///
    /// * `Ok(Some(Item::Frame(_)))`: the frame's bytes (and nothing after its NUL) were
    ///   removed from `buf`; the body is a zero-copy slice of them.
    /// * `Ok(Some(Item::Heartbeat))`: one or more leading EOLs were removed.
    /// * `Ok(None)`: more bytes are needed; `buf` is untouched.
    /// * `Err(_)`: the stream is malformed or over a limit. The same error is returned
    ///   by every later call.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if buf.len() < self.scan {
            // The caller did not keep appending to the same buffer: start over.
            self.reset_frame();
        }
        let result = self.decode_inner(buf);
        if let Err(err) = &result {
            self.reset_frame();
            self.failed = Some(err.clone());
        }
        result
    }

    fn reset_frame(&mut self) {
        self.phase = Phase::Command;
        self.scan = 0;
        self.line_start = 0;
        self.headers.clear();
        self.content_length = None;
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        loop {
            match self.phase {
                Phase::Command => {
                    if self.scan == 0 {
                        let eols = leading_eols(buf);
                        if eols > 0 {
                            buf.advance(eols);
                            return Ok(Some(Item::Heartbeat));
                        }
                        if buf.is_empty() || buf[..] == b"\r"[..] {
                            return Ok(None);
                        }
                    }
                    let max = self.limits.max_command_line;
                    let Some(range) = self.next_line(buf, max, |size, max| {
                        DecodeError::CommandLineTooLong { size, max }
                    })?
                    else {
                        return Ok(None);
                    };
                    let line = buf.get(range).unwrap_or_default();
                    let command =
                        Command::from_bytes(line).ok_or_else(|| DecodeError::UnknownCommand {
                            command: lossy_truncated(line, 64),
                        })?;
                    self.phase = Phase::Headers {
                        command,
                        escaping: Escaping::for_frame(self.version, command),
                    };
                }
                Phase::Headers { command, escaping } => {
                    let max = self.limits.max_header_line;
                    let Some(range) = self.next_line(buf, max, |size, max| {
                        DecodeError::HeaderLineTooLong { size, max }
                    })?
                    else {
                        return Ok(None);
                    };
                    if range.is_empty() {
                        self.end_of_headers(command)?;
                        continue;
                    }
                    let count = self.headers.len().saturating_add(1);
                    if count > self.limits.max_headers {
                        return Err(DecodeError::TooManyHeaders {
                            count,
                            max: self.limits.max_headers,
                        });
                    }
                    let line = buf.get(range).unwrap_or_default();
                    let (name, value) = parse_header(line, escaping)?;
                    if self.content_length.is_none() && name == "content-length" {
                        let len = parse_content_length(&value)?;
                        // Fail before the body arrives: at least a blank line and a NUL follow.
                        let min_size = self.scan.saturating_add(len).saturating_add(2);
                        self.check_frame_size(min_size)?;
                        self.content_length = Some(len);
                    }
                    self.headers.push((name, value));
                }
                Phase::Body {
                    command,
                    start,
                    content_length: Some(len),
                } => {
                    // `start + len + 1 <= max_frame_bytes` was checked in `end_of_headers`.
                    let nul_at = start.saturating_add(len);
                    return match buf.get(nul_at) {
                        None => {
                            self.scan = self.scan.max(buf.len());
                            Ok(None)
                        }
                        Some(0) => Ok(Some(self.finish(buf, command, start, nul_at))),
                        Some(_) => Err(DecodeError::MissingNul),
                    };
                }
                Phase::Body {
                    command,
                    start,
                    content_length: None,
                } => {
                    // The NUL must be at an index below `max_frame_bytes`.
                    let end = buf.len().min(self.limits.max_frame_bytes);
                    let from = self.scan.max(start);
                    let window = buf.get(from..end).unwrap_or_default();
                    if let Some(pos) = window.iter().position(|&b| b == 0) {
                        return Ok(Some(self.finish(buf, command, start, from + pos)));
                    }
                    self.scan = from.max(end);
                    self.check_frame_size(end.saturating_add(1))?;
                    return Ok(None);
                }
            }
        }
    }

    /// Scans for the end of the current line, starting where the last call stopped.
    ///
    /// On success returns the line's content range (EOL stripped) and moves `scan` and
    /// `line_start` past the LF. Returns `Ok(None)` when more bytes are needed, and an
    /// error as soon as the line or the frame is known to exceed its limit.
    fn next_line(
        &mut self,
        buf: &[u8],
        max_line: usize,
        too_long: fn(usize, usize) -> DecodeError,
    ) -> Result<Option<Range<usize>>, DecodeError> {
        // Never look further than the longest allowed line (+CRLF) or the frame limit.
        let line_cap = self.line_start.saturating_add(max_line).saturating_add(2);
        let end = buf.len().min(line_cap).min(self.limits.max_frame_bytes);
        let from = self.scan.max(self.line_start);
        let window = buf.get(from..end).unwrap_or_default();
        if let Some(pos) = window.iter().position(|&b| b == b'\n') {
            let lf = from + pos;
            let content_end = match lf.checked_sub(1) {
                Some(cr) if cr >= self.line_start && buf.get(cr) == Some(&b'\r') => cr,
                _ => lf,
            };
            let len = content_end.saturating_sub(self.line_start);
            if len > max_line {
                return Err(too_long(len, max_line));
            }
            let range = self.line_start..content_end;
            self.scan = lf + 1;
            self.line_start = lf + 1;
            return Ok(Some(range));
        }
        self.scan = from.max(end);
        let seen = end.saturating_sub(self.line_start);
        // A trailing CR may turn out to be half of the CRLF: don't count it yet.
        let lower_bound = match end.checked_sub(1).and_then(|i| buf.get(i)) {
            Some(b'\r') if seen > 0 => seen - 1,
            _ => seen,
        };
        if lower_bound > max_line {
            return Err(too_long(lower_bound, max_line));
        }
        // Bytes [0, end) belong to the frame and its NUL is still to come.
        self.check_frame_size(end.saturating_add(1))?;
        Ok(None)
    }

    /// The blank line ending the header section has been consumed (`scan` is the body start).
    fn end_of_headers(&mut self, command: Command) -> Result<(), DecodeError> {
        let start = self.scan;
        if let Some(len) = self.content_length {
            let size = start.saturating_add(len).saturating_add(1);
            self.check_frame_size(size)?;
        }
        self.phase = Phase::Body {
            command,
            start,
            content_length: self.content_length,
        };
        Ok(())
    }

    fn check_frame_size(&self, size: usize) -> Result<(), DecodeError> {
        let max = self.limits.max_frame_bytes;
        if size > max {
            return Err(DecodeError::FrameTooLarge { size, max });
        }
        Ok(())
    }

    /// Splits the complete frame `buf[..=nul_at]` off the buffer.
    fn finish(
        &mut self,
        buf: &mut BytesMut,
        command: Command,
        start: usize,
        nul_at: usize,
    ) -> Item {
        let headers = mem::take(&mut self.headers);
        let body = if nul_at > start && nul_at < buf.len() {
            buf.advance(start);
            let body = buf.split_to(nul_at - start).freeze();
            buf.advance(1);
            body
        } else {
            // Empty body: don't pin the receive buffer for nothing.
            buf.advance(nul_at.saturating_add(1).min(buf.len()));
            Bytes::new()
        };
        self.reset_frame();
        Item::Frame(Frame {
            command,
            headers,
            body,
        })
    }
}

/// Length of the run of `\n` / `\r\n` at the front of `buf` (a lone trailing `\r` excluded).
fn leading_eols(buf: &[u8]) -> usize {
    let mut n = 0;
    loop {
        match buf.get(n) {
            Some(b'\n') => n += 1,
            Some(b'\r') if buf.get(n + 1) == Some(&b'\n') => n += 2,
            _ => return n,
        }
    }
}

/// Splits `name:value` on the first raw colon and unescapes both parts.
fn parse_header(line: &[u8], escaping: Escaping) -> Result<(String, String), DecodeError> {
    let malformed = || DecodeError::MalformedHeader {
        line: lossy_truncated(line, 64),
    };
    let colon = line.iter().position(|&b| b == b':').ok_or_else(malformed)?;
    if colon == 0 {
        return Err(malformed());
    }
    let name = line.get(..colon).unwrap_or_default();
    let value = line.get(colon + 1..).unwrap_or_default();
    Ok((unescape(name, escaping)?, unescape(value, escaping)?))
}

/// Applies the escape rules of `escaping` and validates UTF-8.
fn unescape(raw: &[u8], escaping: Escaping) -> Result<String, DecodeError> {
    let utf8_err = |_| DecodeError::InvalidUtf8 { what: "header" };
    if escaping == Escaping::None || !raw.contains(&b'\\') {
        return std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(utf8_err);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let decoded = match bytes.next() {
            Some(b'n') => b'\n',
            Some(b'c') => b':',
            Some(b'\\') => b'\\',
            Some(b'r') if escaping == Escaping::V1_2 => b'\r',
            Some(&other) => {
                return Err(DecodeError::InvalidEscape {
                    sequence: format!("\\{}", other.escape_ascii()),
                })
            }
            None => {
                return Err(DecodeError::InvalidEscape {
                    sequence: "\\".to_owned(),
                })
            }
        };
        out.push(decoded);
    }
    String::from_utf8(out).map_err(|_| DecodeError::InvalidUtf8 { what: "header" })
}

/// Parses a `content-length` value: ASCII digits only (surrounding ASCII whitespace
/// tolerated), fitting in `usize`.
pub(crate) fn parse_content_length(value: &str) -> Result<usize, DecodeError> {
    let trimmed = value.trim_matches(|c: char| c.is_ascii_whitespace());
    let valid = !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit());
    valid
        .then(|| trimmed.parse::<usize>().ok())
        .flatten()
        .ok_or_else(|| DecodeError::InvalidContentLength {
            value: truncate_chars(value, 64),
        })
}

//! Frame model: commands, protocol versions, frames, and the header-level
//! negotiation helpers (`accept-version`, `heart-beat`).

use std::fmt;

use bytes::Bytes;

/// A STOMP frame command.
///
/// Client commands: `CONNECT`, `STOMP`, `SEND`, `SUBSCRIBE`, `UNSUBSCRIBE`, `ACK`,
/// `NACK`, `BEGIN`, `COMMIT`, `ABORT`, `DISCONNECT`. Server commands: `CONNECTED`,
/// `MESSAGE`, `RECEIPT`, `ERROR`. The codec accepts every command in both directions;
/// deciding which side may send what is the caller's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `CONNECT`: client opens a session (headers are never escaped).
    Connect,
    /// `STOMP`: the 1.1+ spelling of `CONNECT`.
    Stomp,
    /// `CONNECTED`: server accepts a session (headers are never escaped).
    Connected,
    /// `SEND`: client publishes a message.
    Send,
    /// `SUBSCRIBE`: client subscribes to a destination.
    Subscribe,
    /// `UNSUBSCRIBE`: client ends a subscription.
    Unsubscribe,
    /// `ACK`: client acknowledges a message.
    Ack,
    /// `NACK`: client rejects a message.
    Nack,
    /// `BEGIN`: client starts a transaction.
    Begin,
    /// `COMMIT`: client commits a transaction.
    Commit,
    /// `ABORT`: client rolls back a transaction.
    Abort,
    /// `DISCONNECT`: client closes the session gracefully.
    Disconnect,
    /// `MESSAGE`: server delivers a message to a subscription.
    Message,
    /// `RECEIPT`: server confirms a frame that carried a `receipt` header.
    Receipt,
    /// `ERROR`: server reports an error (and usually closes the connection).
    Error,
}

impl Command {
    /// Every command, in declaration order.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Connected,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The wire spelling of the command, e.g. `"CONNECT"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command from its exact, case-sensitive wire spelling (no EOL).
    pub fn from_bytes(b: &[u8]) -> Option<Command> {
        Some(match b {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"CONNECTED" => Command::Connected,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// True for `CONNECT` and `CONNECTED`, whose headers are never escaped in any
    /// version (STOMP 1.2 keeps them readable by 1.0 peers).
    pub fn is_escape_exempt(&self) -> bool {
        matches!(self, Command::Connect | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A STOMP protocol version. Ordered: `V1_0 < V1_1 < V1_2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// STOMP 1.0: no header escaping.
    V1_0,
    /// STOMP 1.1: escapes `\n`, `\c` (colon) and `\\` in headers.
    V1_1,
    /// STOMP 1.2: 1.1 escapes plus `\r`.
    V1_2,
}

impl Version {
    /// Every version, lowest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as written in `accept-version` / `version` headers: `"1.0"`, `"1.1"`, `"1.2"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses `"1.0"`, `"1.1"` or `"1.2"` (surrounding ASCII whitespace ignored).
    pub fn parse(s: &str) -> Option<Version> {
        match s.trim_matches(|c: char| c.is_ascii_whitespace()) {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }
}

impl Default for Version {
    /// STOMP 1.2, the version this crate speaks unless told otherwise.
    fn default() -> Self {
        Version::V1_2
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Picks the highest version both sides support from an `accept-version` header value
/// (comma separated). `None` header => V1_0 (a 1.0 client sends none). Returns None if no overlap.
///
/// Unknown entries (e.g. `"2.0"`) are ignored; whitespace around entries is tolerated.
pub fn negotiate_version(accept_version: Option<&str>) -> Option<Version> {
    match accept_version {
        None => Some(Version::V1_0),
        Some(list) => list.split(',').filter_map(Version::parse).max(),
    }
}

/// Error for a header whose value cannot be interpreted (used by [`parse_heart_beat`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum HeaderError {
    /// The header value is malformed. `value` is truncated to 64 characters.
    #[error("invalid `{name}` header value {value:?}")]
    Invalid {
        /// Header name, e.g. `heart-beat`.
        name: String,
        /// The offending value (truncated to 64 characters).
        value: String,
    },
}

/// Parses a `heart-beat` header "cx,cy" (missing header => (0,0)); errors on malformed.
///
/// Both fields must be non-empty runs of ASCII digits that fit in a `u64`; ASCII
/// whitespace around each field is tolerated.
pub fn parse_heart_beat(value: Option<&str>) -> Result<(u64, u64), HeaderError> {
    let Some(value) = value else {
        return Ok((0, 0));
    };
    let invalid = || HeaderError::Invalid {
        name: "heart-beat".to_owned(),
        value: truncate_chars(value, 64),
    };
    let mut parts = value.split(',');
    let (Some(cx), Some(cy), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let field = |s: &str| -> Option<u64> {
        let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (field(cx), field(cy)) {
        (Some(x), Some(y)) => Ok((x, y)),
        _ => Err(invalid()),
    }
}

/// STOMP heart-beat negotiation. `ours` = (what we can send, what we want to receive) in ms,
/// `theirs` = the peer's header. Returns (send_every_ms, expect_every_ms); 0 = disabled.
/// send = if ours.0==0 || theirs.1==0 {0} else max(ours.0, theirs.1); recv likewise with ours.1/theirs.0.
pub fn negotiate_heart_beat(ours: (u64, u64), theirs: (u64, u64)) -> (u64, u64) {
    let pick = |a: u64, b: u64| if a == 0 || b == 0 { 0 } else { a.max(b) };
    (pick(ours.0, theirs.1), pick(ours.1, theirs.0))
}

/// One STOMP frame: command, headers in wire order (repeats kept), and body.
///
/// Header names and values are stored unescaped. `content-length` is an ordinary
/// header here: the decoder keeps whatever the peer sent, and the encoder rewrites it
/// from the body length (see [`crate::encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame command.
    pub command: Command,
    /// Headers in wire order; a name may repeat, and the first occurrence wins.
    pub headers: Vec<(String, String)>,
    /// The body (zero-copy slice of the receive buffer when decoded).
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Builder: appends a header and returns the frame.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Builder: replaces the body and returns the frame.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the FIRST header called `name` (STOMP 1.2 rule), case-sensitive.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of headers called `name`, in wire order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Replaces the value of the first header called `name`, or appends one.
    /// Later repeats, if any, are left alone (they are shadowed by the first anyway).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        match self.headers.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.into(),
            None => self.headers.push((name.to_owned(), value.into())),
        }
    }

    /// Removes every header called `name`.
    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| n != name);
    }

    /// Appends a header (even if the name already exists).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push((name.into(), value.into()));
    }

    /// A cheap estimate of the encoded size, for buffer reservation and accounting.
    ///
    /// Exact for unescaped headers when the frame carries no `content-length`
    /// header of its own; escaping can add up to one byte per escaped character.
    pub fn encoded_len_hint(&self) -> usize {
        // command + EOL, blank line, NUL, and a computed `content-length:<20 digits>\n`.
        let fixed = self.command.as_str().len() + 1 + 1 + 1 + CONTENT_LENGTH_LINE_MAX;
        self.headers
            .iter()
            .fold(fixed.saturating_add(self.body.len()), |acc, (n, v)| {
                acc.saturating_add(n.len() + v.len() + 2)
            })
    }
}

/// Longest possible `content-length:<usize>\n` line.
pub(crate) const CONTENT_LENGTH_LINE_MAX: usize = "content-length:".len() + 20 + 1;

/// What the decoder yields: a frame, or a heart-beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// One or more EOLs (`\n` or `\r\n`) between frames. A run of EOLs that is
    /// available in the buffer at once is coalesced into a single heart-beat.
    Heartbeat,
}

/// Truncates `s` to at most `max` characters (for error messages).
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((idx, _)) => s.get(..idx).unwrap_or(s).to_owned(),
        None => s.to_owned(),
    }
}

/// Lossy UTF-8 of at most `max` characters of peer bytes (for error messages).
pub(crate) fn lossy_truncated(bytes: &[u8], max: usize) -> String {
    // A char is at most 4 bytes: never convert more than needed.
    let cap = bytes.len().min(max.saturating_mul(4));
    let head = bytes.get(..cap).unwrap_or(bytes);
    truncate_chars(&String::from_utf8_lossy(head), max)
}

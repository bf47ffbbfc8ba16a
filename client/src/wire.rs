//! Allocation-free frame encoding for the frames a client sends.
//!
//! The codec crate's `encode` takes a [`fabricmq_stomp::Frame`], whose headers
//! are owned `String` pairs: building one per `SEND` or `ACK` would cost a
//! dozen small allocations per message on the hottest path. [`FrameWriter`]
//! instead writes command, headers and body straight into the connection's
//! write buffer, applying the same escaping rules as the codec:
//!
//! * STOMP 1.2: `\` `LF` `:` `CR` become `\\` `\n` `\c` `\r`;
//! * STOMP 1.1: the same without `CR`, which cannot be represented and is
//!   written as a space;
//! * STOMP 1.0 and the `CONNECT` frame: no escaping; a CR or LF (which would
//!   break the framing) is written as a space, and a `:` in a header name as
//!   `_`.
//!
//! Frames are written with LF line endings, a `content-length` header
//! whenever there is a body (always for `SEND`), and the NUL terminator.

use bytes::{BufMut, BytesMut};
use fabricmq_stomp::{Command, Version};

/// Header escaping rules in force for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escaping {
    /// STOMP 1.0, and CONNECT frames in every version.
    None,
    /// STOMP 1.1.
    V1_1,
    /// STOMP 1.2.
    V1_2,
}

impl Escaping {
    /// The rules for ordinary frames of protocol version `v`.
    pub(crate) fn for_version(v: Version) -> Escaping {
        match v {
            Version::V1_0 => Escaping::None,
            Version::V1_1 => Escaping::V1_1,
            Version::V1_2 => Escaping::V1_2,
        }
    }
}

/// Writes one frame into a buffer: create with [`FrameWriter::new`], add
/// headers, finish with [`FrameWriter::finish`]. A writer dropped without
/// `finish` leaves a truncated frame in the buffer, so always finish.
pub(crate) struct FrameWriter<'a> {
    dst: &'a mut BytesMut,
    escaping: Escaping,
    always_content_length: bool,
}

impl<'a> FrameWriter<'a> {
    /// Starts `command` in `dst`. `size_hint` is reserved up front (headers
    /// plus body) so the buffer grows at most once.
    pub(crate) fn new(
        dst: &'a mut BytesMut,
        command: Command,
        escaping: Escaping,
        size_hint: usize,
    ) -> FrameWriter<'a> {
        dst.reserve(size_hint + 32);
        dst.put_slice(command.as_str().as_bytes());
        dst.put_u8(b'\n');
        let escaping = if command == Command::Connect {
            Escaping::None
        } else {
            escaping
        };
        FrameWriter {
            dst,
            escaping,
            always_content_length: command == Command::Send,
        }
    }

    /// Appends `name:value`.
    pub(crate) fn header(&mut self, name: &str, value: &str) -> &mut Self {
        put_escaped(self.dst, name, self.escaping, true);
        self.dst.put_u8(b':');
        put_escaped(self.dst, value, self.escaping, false);
        self.dst.put_u8(b'\n');
        self
    }

    /// Appends `name:<decimal n>` without going through `format!`.
    pub(crate) fn header_u64(&mut self, name: &str, n: u64) -> &mut Self {
        put_escaped(self.dst, name, self.escaping, true);
        self.dst.put_u8(b':');
        put_u64(self.dst, n);
        self.dst.put_u8(b'\n');
        self
    }

    /// Writes `content-length` (when there is a body, or always for SEND), the
    /// blank line, the body and the NUL terminator.
    pub(crate) fn finish(self, body: &[u8]) {
        if self.always_content_length || !body.is_empty() {
            self.dst.put_slice(b"content-length:");
            put_u64(self.dst, body.len() as u64);
            self.dst.put_u8(b'\n');
        }
        self.dst.put_u8(b'\n');
        self.dst.put_slice(body);
        self.dst.put_u8(0);
    }
}

/// Writes `n` in decimal.
pub(crate) fn put_u64(dst: &mut BytesMut, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&buf[i..]);
}

fn put_escaped(dst: &mut BytesMut, s: &str, escaping: Escaping, is_name: bool) {
    let bytes = s.as_bytes();
    let special = |b: u8| match escaping {
        Escaping::None => b == b'\n' || b == b'\r' || (is_name && b == b':'),
        Escaping::V1_1 | Escaping::V1_2 => matches!(b, b'\\' | b'\n' | b':' | b'\r'),
    };
    if !bytes.iter().any(|&b| special(b)) {
        dst.put_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !special(b) {
            continue;
        }
        dst.put_slice(&bytes[start..i]);
        let replacement: &[u8] = match (escaping, b) {
            // Not representable: keep the framing intact (as the codec does).
            (Escaping::None, b':') => b"_",
            (Escaping::None, _) | (Escaping::V1_1, b'\r') => b" ",
            (_, b'\\') => b"\\\\",
            (_, b'\n') => b"\\n",
            (_, b':') => b"\\c",
            _ => b"\\r",
        };
        dst.put_slice(replacement);
        start = i + 1;
    }
    dst.put_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabricmq_stomp::{Decoder, FrameLimits, Item};

    fn decode_one(buf: &mut BytesMut, v: Version) -> fabricmq_stomp::Frame {
        let mut d = Decoder::new(FrameLimits::default());
        d.set_version(v);
        match d.decode(buf).expect("decodes").expect("complete frame") {
            Item::Frame(f) => f,
            Item::Heartbeat => panic!("heartbeat"),
        }
    }

    #[test]
    fn numbers() {
        for n in [0u64, 7, 10, 99, 1234567890, u64::MAX] {
            let mut b = BytesMut::new();
            put_u64(&mut b, n);
            assert_eq!(&b[..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn send_round_trips_through_the_codec_with_escaping() {
        for v in [Version::V1_1, Version::V1_2] {
            let mut buf = BytesMut::new();
            let mut w = FrameWriter::new(&mut buf, Command::Send, Escaping::for_version(v), 64);
            w.header("destination", "/queue/a:b")
                .header("x\\y", "line1\nline2");
            w.header_u64("producer-seq", 17);
            w.finish(b"body\0with nul");
            let f = decode_one(&mut buf, v);
            assert_eq!(f.command, Command::Send);
            assert_eq!(f.get("destination"), Some("/queue/a:b"));
            assert_eq!(f.get("x\\y"), Some("line1\nline2"));
            assert_eq!(f.get("producer-seq"), Some("17"));
            assert_eq!(&f.body[..], b"body\0with nul");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn exact_bytes_v1_2() {
        let mut buf = BytesMut::new();
        let mut w = FrameWriter::new(&mut buf, Command::Ack, Escaping::V1_2, 0);
        w.header("id", "a:b\r");
        w.finish(b"");
        assert_eq!(&buf[..], b"ACK\nid:a\\cb\\r\n\n\0");

        let mut buf = BytesMut::new();
        FrameWriter::new(&mut buf, Command::Send, Escaping::V1_2, 0).finish(b"");
        assert_eq!(&buf[..], b"SEND\ncontent-length:0\n\n\0");
    }

    #[test]
    fn connect_and_v1_0_are_not_escaped() {
        let mut buf = BytesMut::new();
        let mut w = FrameWriter::new(&mut buf, Command::Connect, Escaping::V1_2, 0);
        w.header("login", "a:b\\c\nd");
        w.finish(b"");
        assert_eq!(&buf[..], b"CONNECT\nlogin:a:b\\c d\n\n\0");

        let mut buf = BytesMut::new();
        let mut w = FrameWriter::new(&mut buf, Command::Send, Escaping::None, 0);
        w.header("k", "v:w\\").header("a:b", "\r");
        w.finish(b"x");
        let f = decode_one(&mut buf, Version::V1_0);
        assert_eq!(f.get("k"), Some("v:w\\"));
        assert_eq!(f.get("a_b"), Some(" "));

        let mut buf = BytesMut::new();
        let mut w = FrameWriter::new(&mut buf, Command::Send, Escaping::V1_1, 0);
        w.header("k", "a\rb");
        w.finish(b"");
        assert_eq!(decode_one(&mut buf, Version::V1_1).get("k"), Some("a b"));
    }
}

//! Unit and property tests for the codec.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Feeds `chunks` one after the other into one decoder, draining items after each.
/// Asserts the `Ok(None)` contract: the buffer is left untouched.
fn decode_chunks(
    chunks: &[&[u8]],
    version: Version,
    limits: FrameLimits,
) -> (Vec<Item>, Option<DecodeError>) {
    let mut decoder = Decoder::new(limits);
    decoder.set_version(version);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            // Cloning a large buffer on every call would make big-frame tests quadratic.
            let before = (buf.len() <= 4096).then(|| buf.clone());
            let (len, ptr) = (buf.len(), buf.as_ptr());
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    assert_eq!(
                        (buf.len(), buf.as_ptr()),
                        (len, ptr),
                        "Ok(None) consumed bytes"
                    );
                    if let Some(before) = before {
                        assert_eq!(buf, before, "Ok(None) must leave the buffer untouched");
                    }
                    break;
                }
                Err(err) => {
                    // The decoder stays failed.
                    assert_eq!(decoder.decode(&mut buf), Err(err.clone()));
                    return (items, Some(err));
                }
            }
        }
    }
    (items, None)
}

fn decode_all(bytes: &[u8]) -> (Vec<Item>, Option<DecodeError>) {
    decode_chunks(&[bytes], Version::V1_2, FrameLimits::default())
}

fn frames_of(items: &[Item]) -> Vec<Frame> {
    items
        .iter()
        .filter_map(|item| match item {
            Item::Frame(f) => Some(f.clone()),
            Item::Heartbeat => None,
        })
        .collect()
}

fn decode_frames(bytes: &[u8]) -> Vec<Frame> {
    let (items, err) = decode_all(bytes);
    assert_eq!(err, None);
    frames_of(&items)
}

fn decode_one(bytes: &[u8], version: Version) -> Result<Frame, DecodeError> {
    let (items, err) = decode_chunks(&[bytes], version, FrameLimits::default());
    if let Some(err) = err {
        return Err(err);
    }
    let frames = frames_of(&items);
    assert_eq!(frames.len(), 1, "expected exactly one frame in {bytes:?}");
    Ok(frames.into_iter().next().unwrap())
}

fn encoded(frame: &Frame, version: Version) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(frame, version, &mut buf);
    buf
}

/// First error for `bytes` fed as one chunk with `limits`.
fn error_with(limits: FrameLimits, chunks: &[&[u8]]) -> Option<DecodeError> {
    decode_chunks(chunks, Version::V1_2, limits).1
}

// ---------------------------------------------------------------------------
// Basic decoding
// ---------------------------------------------------------------------------

#[test]
fn decodes_simple_frame() {
    let frame = decode_one(
        b"SEND\ndestination:/queue/a\nreceipt:r1\n\nhello\0",
        Version::V1_2,
    )
    .unwrap();
    assert_eq!(frame.command, Command::Send);
    assert_eq!(
        frame.headers,
        vec![
            ("destination".to_owned(), "/queue/a".to_owned()),
            ("receipt".to_owned(), "r1".to_owned()),
        ]
    );
    assert_eq!(frame.body, Bytes::from_static(b"hello"));
}

#[test]
fn decodes_every_command() {
    for command in Command::ALL {
        let wire = format!("{}\n\n\0", command.as_str());
        let frame = decode_one(wire.as_bytes(), Version::V1_2).unwrap();
        assert_eq!(frame, Frame::new(command));
        assert_eq!(
            Command::from_bytes(command.as_str().as_bytes()),
            Some(command)
        );
        assert_eq!(command.to_string(), command.as_str());
    }
    assert_eq!(Command::from_bytes(b"send"), None);
    assert_eq!(Command::from_bytes(b"SEND "), None);
    assert_eq!(Command::from_bytes(b""), None);
}

#[test]
fn body_is_zero_copy_slice_of_input() {
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:4\n\nab\0c\0rest"[..]);
    let base = buf.as_ptr() as usize;
    let Some(Item::Frame(frame)) = Decoder::default().decode(&mut buf).unwrap() else {
        panic!("expected a frame")
    };
    assert_eq!(&frame.body[..], b"ab\0c");
    let offset = b"SEND\ncontent-length:4\n\n".len();
    assert_eq!(frame.body.as_ptr() as usize, base + offset);
    assert_eq!(&buf[..], b"rest");
}

#[test]
fn header_value_may_contain_colons() {
    let frame = decode_one(b"SEND\nurl:http://x:80/a\n\n\0", Version::V1_2).unwrap();
    assert_eq!(frame.get("url"), Some("http://x:80/a"));
    let frame = decode_one(b"SEND\nempty:\n\n\0", Version::V1_2).unwrap();
    assert_eq!(frame.get("empty"), Some(""));
}

#[test]
fn repeated_headers_first_wins() {
    let mut frame =
        decode_one(b"MESSAGE\nfoo:1\nbar:x\nfoo:2\nfoo:3\n\n\0", Version::V1_2).unwrap();
    assert_eq!(frame.headers.len(), 4);
    assert_eq!(frame.get("foo"), Some("1"));
    assert_eq!(
        frame.get_all("foo").collect::<Vec<_>>(),
        vec!["1", "2", "3"]
    );
    frame.set("foo", "one");
    assert_eq!(frame.get("foo"), Some("one"));
    assert_eq!(
        frame.headers.get(2),
        Some(&("foo".to_owned(), "2".to_owned()))
    );
    frame.set("new", "v");
    assert_eq!(
        frame.headers.last(),
        Some(&("new".to_owned(), "v".to_owned()))
    );
    frame.remove("foo");
    assert_eq!(frame.get("foo"), None);
    assert_eq!(frame.headers.len(), 2);
    frame.push("bar", "y");
    assert_eq!(frame.get("bar"), Some("x"));
    assert_eq!(frame.get("missing"), None);
}

#[test]
fn repeated_content_length_first_wins() {
    let frame = decode_one(
        b"SEND\ncontent-length:3\ncontent-length:1\n\na\0b\0",
        Version::V1_2,
    )
    .unwrap();
    assert_eq!(&frame.body[..], b"a\0b");
}

#[test]
fn crlf_line_endings() {
    let frame = decode_one(
        b"SEND\r\ndestination:/q\r\nx:y\r\n\r\nbody\0",
        Version::V1_2,
    )
    .unwrap();
    assert_eq!(frame.command, Command::Send);
    assert_eq!(frame.get("destination"), Some("/q"));
    assert_eq!(frame.get("x"), Some("y"));
    assert_eq!(&frame.body[..], b"body");
    // Mixed endings, and a CR that is not part of an EOL stays in the value (1.0).
    let frame = decode_one(b"SEND\na:b\rc\r\n\n\0", Version::V1_0).unwrap();
    assert_eq!(frame.get("a"), Some("b\rc"));
}

#[test]
fn content_length_body_with_nuls() {
    let body = b"\0\0a\0\0b\0";
    let mut wire = format!("SEND\ncontent-length:{}\n\n", body.len()).into_bytes();
    wire.extend_from_slice(body);
    wire.push(0);
    let frame = decode_one(&wire, Version::V1_2).unwrap();
    assert_eq!(&frame.body[..], body);

    // Zero length.
    let frame = decode_one(b"SEND\ncontent-length:0\n\n\0", Version::V1_2).unwrap();
    assert!(frame.body.is_empty());
    // Whitespace around the number is tolerated, leading zeros too.
    let frame = decode_one(b"SEND\ncontent-length: 003 \n\nabc\0", Version::V1_2).unwrap();
    assert_eq!(&frame.body[..], b"abc");
}

#[test]
fn body_without_content_length_runs_to_first_nul() {
    let frames = decode_frames(b"SEND\n\nab\0");
    assert_eq!(&frames[0].body[..], b"ab");
    let (items, err) = decode_all(b"SEND\n\nab\0SEND\n\ncd\0");
    assert_eq!(err, None);
    let frames = frames_of(&items);
    assert_eq!(&frames[0].body[..], b"ab");
    assert_eq!(&frames[1].body[..], b"cd");
    // "cd\0" after the first frame's NUL is not a command: garbage.
    let (items, err) = decode_all(b"SEND\n\nab\0cd\0\n");
    assert_eq!(frames_of(&items).len(), 1);
    assert!(matches!(err, Some(DecodeError::UnknownCommand { .. })));
}

#[test]
fn heartbeats_between_frames() {
    let (items, err) = decode_all(b"\n\r\n\nSEND\n\na\0\n\nSEND\n\nb\0\r\n");
    assert_eq!(err, None);
    assert_eq!(items.len(), 5, "{items:?}");
    assert_eq!(items[0], Item::Heartbeat);
    assert!(matches!(items[1], Item::Frame(_)));
    assert_eq!(items[2], Item::Heartbeat);
    assert!(matches!(items[3], Item::Frame(_)));
    assert_eq!(items[4], Item::Heartbeat);

    // A lone CR waits for the LF.
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], b"\r");
    buf.extend_from_slice(b"\n");
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Item::Heartbeat)));
    assert!(buf.is_empty());
    assert_eq!(decoder.decode(&mut buf), Ok(None));

    // A run ending in a lone CR: the complete EOLs are one heartbeat, the CR stays.
    let mut buf = BytesMut::from(&b"\n\r\n\r"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Item::Heartbeat)));
    assert_eq!(&buf[..], b"\r");

    // Heartbeats fed one byte at a time are each reported.
    let (items, err) = decode_chunks(
        &[b"\n", b"\n", b"\r", b"\n"],
        Version::V1_2,
        FrameLimits::default(),
    );
    assert_eq!(err, None);
    assert_eq!(items, vec![Item::Heartbeat; 3]);
}

#[test]
fn cr_not_followed_by_lf_is_not_a_heartbeat() {
    let (items, err) = decode_all(b"\rSEND\n\n\0");
    assert!(items.is_empty());
    assert!(matches!(err, Some(DecodeError::UnknownCommand { .. })));
}

// ---------------------------------------------------------------------------
// Split feeding
// ---------------------------------------------------------------------------

fn sample_stream() -> Vec<u8> {
    let mut wire = Vec::new();
    wire.extend_from_slice(b"\n\r\n");
    wire.extend_from_slice(b"CONNECT\r\naccept-version:1.2\r\nhost:h\r\nlogin:a\\b\r\n\r\n\0");
    wire.extend_from_slice(b"\n");
    wire.extend_from_slice(b"SEND\ndestination:/q/a\\cb\nx:1\nx:2\ncontent-length:5\n\n\0a\0b\0\0");
    wire.extend_from_slice(b"SUBSCRIBE\nid:0\ndestination:/t\\n\\r\\\\\n\n\0\n\n\n");
    wire.extend_from_slice(b"MESSAGE\nmessage-id:9\n\nplain body\0");
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(b"DISCONNECT\nreceipt:77\n\n\0");
    wire
}

#[test]
fn split_at_every_offset_gives_identical_frames() {
    let wire = sample_stream();
    let (items, err) = decode_all(&wire);
    assert_eq!(err, None);
    let expected = frames_of(&items);
    assert_eq!(expected.len(), 5);
    assert_eq!(
        expected[0].get("login"),
        Some("a\\b"),
        "CONNECT is not unescaped"
    );
    assert_eq!(expected[1].get("destination"), Some("/q/a:b"));
    assert_eq!(&expected[1].body[..], b"\0a\0b\0");
    assert_eq!(expected[2].get("destination"), Some("/t\n\r\\"));
    assert_eq!(&expected[3].body[..], b"plain body");

    for split in 0..=wire.len() {
        let (head, tail) = wire.split_at(split);
        let (items, err) = decode_chunks(&[head, tail], Version::V1_2, FrameLimits::default());
        assert_eq!(err, None, "split at {split}");
        assert_eq!(frames_of(&items), expected, "split at {split}");
    }
    for a in (0..=wire.len()).step_by(7) {
        for b in a..=wire.len() {
            let chunks = [&wire[..a], &wire[a..b], &wire[b..]];
            let (items, err) = decode_chunks(&chunks, Version::V1_2, FrameLimits::default());
            assert_eq!(err, None, "split at {a},{b}");
            assert_eq!(frames_of(&items), expected, "split at {a},{b}");
        }
    }
    let bytes: Vec<&[u8]> = wire.chunks(1).collect();
    let (items, err) = decode_chunks(&bytes, Version::V1_2, FrameLimits::default());
    assert_eq!(err, None);
    assert_eq!(frames_of(&items), expected);
}

#[test]
fn large_frame_in_small_reads_is_linear() {
    // 4 MiB body without content-length in 64-byte reads (65536 calls). A decoder
    // that rescans from the start on every call would do ~10^11 byte comparisons.
    let body = vec![b'x'; 4 << 20];
    let mut wire = b"SEND\ndestination:/q\n\n".to_vec();
    wire.extend_from_slice(&body);
    wire.push(0);
    let chunks: Vec<&[u8]> = wire.chunks(64).collect();
    let started = std::time::Instant::now();
    let (items, err) = decode_chunks(&chunks, Version::V1_2, FrameLimits::default());
    assert_eq!(err, None);
    let frames = frames_of(&items);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].body.len(), body.len());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn many_small_frames_in_one_buffer() {
    let frame = Frame::new(Command::Send)
        .header("destination", "/queue/load")
        .with_body(&b"0123456789"[..]);
    let mut buf = BytesMut::new();
    for _ in 0..1000 {
        encode(&frame, Version::V1_2, &mut buf);
    }
    let mut decoder = Decoder::default();
    let mut n = 0;
    while let Some(item) = decoder.decode(&mut buf).unwrap() {
        let Item::Frame(f) = item else { panic!() };
        assert_eq!(f.body, frame.body);
        n += 1;
    }
    assert_eq!(n, 1000);
    assert!(buf.is_empty());
}

#[test]
fn shrunk_buffer_restarts_without_panic() {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::from(&b"SEND\ndestination:/q\nfoo"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    // Misuse: a different, shorter buffer.
    let mut other = BytesMut::from(&b"ACK\n\n\0"[..]);
    let Some(Item::Frame(frame)) = decoder.decode(&mut other).unwrap() else {
        panic!()
    };
    assert_eq!(frame.command, Command::Ack);
}

// ---------------------------------------------------------------------------
// Escaping
// ---------------------------------------------------------------------------

#[test]
fn escaping_round_trip_per_version() {
    let tricky = "a:b\nc\\d\re";
    let frame = Frame::new(Command::Send)
        .header(tricky, tricky)
        .header("plain", "value");

    // 1.2: everything round trips.
    let wire = encoded(&frame, Version::V1_2);
    assert_eq!(
        &wire[..],
        &b"SEND\na\\cb\\nc\\\\d\\re:a\\cb\\nc\\\\d\\re\nplain:value\ncontent-length:0\n\n\0"[..]
    );
    let mut expected = frame.clone();
    expected.push("content-length", "0");
    assert_eq!(decode_one(&wire, Version::V1_2).unwrap(), expected);

    // 1.1: CR cannot be escaped and becomes a space; the rest round trips.
    let wire = encoded(&frame, Version::V1_1);
    assert_eq!(
        &wire[..],
        &b"SEND\na\\cb\\nc\\\\d e:a\\cb\\nc\\\\d e\nplain:value\ncontent-length:0\n\n\0"[..]
    );
    let decoded = decode_one(&wire, Version::V1_1).unwrap();
    assert_eq!(decoded.get("a:b\nc\\d e"), Some("a:b\nc\\d e"));

    // 1.0: no escaping; CR/LF become spaces and ':' in names '_'.
    let wire = encoded(&frame, Version::V1_0);
    assert_eq!(
        &wire[..],
        &b"SEND\na_b c\\d e:a:b c\\d e\nplain:value\ncontent-length:0\n\n\0"[..]
    );
    let decoded = decode_one(&wire, Version::V1_0).unwrap();
    assert_eq!(decoded.get("a_b c\\d e"), Some("a:b c\\d e"));

    // Simple values round trip in every version.
    let simple = Frame::new(Command::Message)
        .header("destination", "/queue/x y")
        .header("content-length", "3")
        .with_body(&b"a\0b"[..]);
    for version in Version::ALL {
        let wire = encoded(&simple, version);
        assert_eq!(decode_one(&wire, version).unwrap(), simple, "{version}");
    }
}

#[test]
fn decoder_escape_rules_per_version() {
    let wire = b"SEND\nk\\c:v\\n\\r\\\\\n\n\0";
    let frame = decode_one(wire, Version::V1_2).unwrap();
    assert_eq!(frame.get("k:"), Some("v\n\r\\"));

    // \r is not a 1.1 escape.
    assert_eq!(
        decode_one(wire, Version::V1_1),
        Err(DecodeError::InvalidEscape {
            sequence: "\\r".to_owned()
        })
    );
    let frame = decode_one(b"SEND\nk\\c:v\\n\\\\\n\n\0", Version::V1_1).unwrap();
    assert_eq!(frame.get("k:"), Some("v\n\\"));

    // 1.0: literal.
    let frame = decode_one(wire, Version::V1_0).unwrap();
    assert_eq!(frame.get("k\\c"), Some("v\\n\\r\\\\"));

    // Undefined escapes and a trailing backslash.
    assert_eq!(
        decode_one(b"SEND\nk:a\\tb\n\n\0", Version::V1_2),
        Err(DecodeError::InvalidEscape {
            sequence: "\\t".to_owned()
        })
    );
    assert_eq!(
        decode_one(b"SEND\nk:a\\\n\n\0", Version::V1_2),
        Err(DecodeError::InvalidEscape {
            sequence: "\\".to_owned()
        })
    );
}

#[test]
fn connect_and_connected_are_never_escaped() {
    for command in [Command::Connect, Command::Connected] {
        let frame = Frame::new(command)
            .header("login", "us:er")
            .header("passcode", "p\\w:\\n");
        for version in Version::ALL {
            let wire = encoded(&frame, version);
            let text = format!("{}\nlogin:us:er\npasscode:p\\w:\\n\n\n\0", command.as_str());
            assert_eq!(&wire[..], text.as_bytes(), "{command} {version}");
            assert_eq!(decode_one(&wire, version).unwrap(), frame);
        }
        // Raw newlines cannot be represented: they never inject a line.
        let bad = Frame::new(command).header("x", "a\nevil:1\r");
        let wire = encoded(&bad, Version::V1_2);
        let decoded = decode_one(&wire, Version::V1_2).unwrap();
        assert_eq!(decoded.headers, vec![("x".into(), "a evil:1 ".into())]);
    }
    // STOMP (the other connect spelling) follows the normal rules.
    let frame = Frame::new(Command::Stomp).header("passcode", "a\\b");
    let wire = encoded(&frame, Version::V1_2);
    assert_eq!(&wire[..], b"STOMP\npasscode:a\\\\b\n\n\0");
    assert_eq!(decode_one(&wire, Version::V1_2).unwrap(), frame);
}

#[test]
fn invalid_utf8_in_header() {
    assert_eq!(
        decode_one(b"SEND\nk:\xff\xfe\n\n\0", Version::V1_2),
        Err(DecodeError::InvalidUtf8 { what: "header" })
    );
    assert_eq!(
        decode_one(b"SEND\nk:a\\n\xff\n\n\0", Version::V1_2),
        Err(DecodeError::InvalidUtf8 { what: "header" })
    );
}

// ---------------------------------------------------------------------------
// Encoder details
// ---------------------------------------------------------------------------

#[test]
fn encoder_computes_content_length() {
    // A bogus content-length is replaced in place; later ones are dropped.
    let frame = Frame::new(Command::Send)
        .header("a", "1")
        .header("content-length", "999")
        .header("b", "2")
        .header("content-length", "5")
        .with_body(&b"xyz"[..]);
    let wire = encoded(&frame, Version::V1_2);
    assert_eq!(&wire[..], b"SEND\na:1\ncontent-length:3\nb:2\n\nxyz\0");
    // Always for SEND/MESSAGE/ERROR, otherwise only with a body.
    assert_eq!(
        &encoded(&Frame::new(Command::Error), Version::V1_2)[..],
        b"ERROR\ncontent-length:0\n\n\0"
    );
    assert_eq!(
        &encoded(
            &Frame::new(Command::Receipt).header("receipt-id", "1"),
            Version::V1_2
        )[..],
        b"RECEIPT\nreceipt-id:1\n\n\0"
    );
    assert_eq!(
        &encoded(
            &Frame::new(Command::Ack).with_body(&b"\0"[..]),
            Version::V1_2
        )[..],
        b"ACK\ncontent-length:1\n\n\0\0"
    );
    let big = Frame::new(Command::Send).with_body(vec![7u8; 1_234_567]);
    let wire = encoded(&big, Version::V1_2);
    assert!(wire.starts_with(b"SEND\ncontent-length:1234567\n\n"));
    assert_eq!(decode_one(&wire, Version::V1_2).unwrap().body, big.body);
    // Empty header names are skipped rather than producing an undecodable frame.
    assert_eq!(
        &encoded(&Frame::new(Command::Begin).header("", "v"), Version::V1_2)[..],
        b"BEGIN\n\n\0"
    );
}

#[test]
fn encoded_len_hint_is_an_upper_bound_without_escapes() {
    let frame = Frame::new(Command::Message)
        .header("destination", "/queue/a")
        .header("message-id", "12345")
        .with_body(vec![1u8; 300]);
    let wire = encoded(&frame, Version::V1_2);
    assert!(frame.encoded_len_hint() >= wire.len());
    assert!(frame.encoded_len_hint() <= wire.len() + 32);
}

#[test]
fn heartbeat_encoding() {
    let mut buf = BytesMut::new();
    encode_heartbeat(&mut buf);
    assert_eq!(&buf[..], b"\n");
    assert_eq!(
        Decoder::default().decode(&mut buf),
        Ok(Some(Item::Heartbeat))
    );
}

// ---------------------------------------------------------------------------
// Errors and limits
// ---------------------------------------------------------------------------

#[test]
fn unknown_command() {
    assert_eq!(
        decode_all(b"FOO\n\n\0").1,
        Some(DecodeError::UnknownCommand {
            command: "FOO".to_owned()
        })
    );
    assert_eq!(
        decode_all(b"send\n\n\0").1,
        Some(DecodeError::UnknownCommand {
            command: "send".to_owned()
        })
    );
    // Known as soon as the command line is complete: no need for the rest.
    assert!(matches!(
        decode_all(b"\xff\xfe\n").1,
        Some(DecodeError::UnknownCommand { .. })
    ));
}

#[test]
fn bad_content_length() {
    for value in [
        "abc",
        "-1",
        "",
        "+5",
        "1.5",
        "5 5",
        "99999999999999999999999999",
    ] {
        let wire = format!("SEND\ncontent-length:{value}\n\nabc\0");
        assert_eq!(
            decode_all(wire.as_bytes()).1,
            Some(DecodeError::InvalidContentLength {
                value: value.to_owned()
            }),
            "{value:?}"
        );
    }
}

#[test]
fn missing_nul_after_content_length_body() {
    assert_eq!(
        decode_all(b"SEND\ncontent-length:3\n\nabcd\0").1,
        Some(DecodeError::MissingNul)
    );
    // Incomplete: still waiting.
    let (items, err) = decode_all(b"SEND\ncontent-length:3\n\nabc");
    assert!(items.is_empty());
    assert_eq!(err, None);
}

#[test]
fn malformed_headers() {
    assert_eq!(
        decode_all(b"SEND\nno-colon\n\n\0").1,
        Some(DecodeError::MalformedHeader {
            line: "no-colon".to_owned()
        })
    );
    assert_eq!(
        decode_all(b"SEND\n:value\n\n\0").1,
        Some(DecodeError::MalformedHeader {
            line: ":value".to_owned()
        })
    );
    let long = format!("SEND\n{}\n\n\0", "z".repeat(500));
    let Some(DecodeError::MalformedHeader { line }) = decode_all(long.as_bytes()).1 else {
        panic!()
    };
    assert_eq!(line.chars().count(), 64);
}

fn small_limits() -> FrameLimits {
    FrameLimits {
        max_frame_bytes: 256,
        max_headers: 4,
        max_header_line: 32,
        max_command_line: 16,
    }
}

#[test]
fn limits_default() {
    let l = FrameLimits::default();
    assert_eq!(l.max_frame_bytes, 10 * 1024 * 1024);
    assert_eq!(l.max_headers, 128);
    assert_eq!(l.max_header_line, 16 * 1024);
    assert_eq!(l.max_command_line, 64);
    assert_eq!(Decoder::new(small_limits()).limits(), small_limits());
}

#[test]
fn frame_too_large_by_content_length_fails_before_body() {
    // Only the headers have arrived.
    let err = error_with(small_limits(), &[b"SEND\ncontent-length:1000\n"]);
    assert_eq!(
        err,
        Some(DecodeError::FrameTooLarge {
            size: 25 + 1000 + 2,
            max: 256
        })
    );
    // Exactly at the limit is fine: 25 header bytes + body + NUL = 256.
    let body_len = 256 - b"SEND\ncontent-length:NNN\n\n".len() - 1;
    let mut wire = format!("SEND\ncontent-length:{body_len}\n\n").into_bytes();
    assert_eq!(wire.len(), 25);
    wire.extend(std::iter::repeat_n(b'b', body_len));
    wire.push(0);
    assert_eq!(wire.len(), 256);
    let (items, err) = decode_chunks(&[&wire], Version::V1_2, small_limits());
    assert_eq!(err, None);
    assert_eq!(frames_of(&items)[0].body.len(), body_len);
    // One more byte is too much, known at the blank line.
    let wire = format!("SEND\ncontent-length:{}\n\n", body_len + 1);
    assert_eq!(
        error_with(small_limits(), &[wire.as_bytes()]),
        Some(DecodeError::FrameTooLarge {
            size: 257,
            max: 256
        })
    );
    // Absurd content-length does not overflow.
    let wire = format!("SEND\ncontent-length:{}\n", usize::MAX);
    let limits = FrameLimits {
        max_header_line: 64,
        ..small_limits()
    };
    assert_eq!(
        error_with(limits, &[wire.as_bytes()]),
        Some(DecodeError::FrameTooLarge {
            size: usize::MAX,
            max: 256
        })
    );
}

#[test]
fn frame_too_large_without_content_length_fails_early() {
    let mut decoder = Decoder::new(small_limits());
    let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    let mut fed = buf.len();
    let err = loop {
        buf.extend_from_slice(&[b'x'; 10]);
        fed += 10;
        match decoder.decode(&mut buf) {
            Ok(None) => continue,
            Ok(Some(item)) => panic!("unexpected {item:?}"),
            Err(err) => break err,
        }
    };
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            size: 257,
            max: 256
        }
    );
    assert!(fed < 256 + 10, "failed only after {fed} bytes");

    // The same for a header section that never ends (many short lines).
    let limits = FrameLimits {
        max_headers: 1000,
        ..small_limits()
    };
    let mut wire = b"SEND\n".to_vec();
    for i in 0..100 {
        wire.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    assert!(matches!(
        error_with(limits, &[&wire]),
        Some(DecodeError::FrameTooLarge { max: 256, .. })
    ));
}

#[test]
fn too_many_headers() {
    let wire = b"SEND\na:1\nb:2\nc:3\nd:4\ne:5\n";
    assert_eq!(
        error_with(small_limits(), &[wire]),
        Some(DecodeError::TooManyHeaders { count: 5, max: 4 })
    );
    // Exactly at the limit is fine.
    let (items, err) = decode_chunks(
        &[b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0"],
        Version::V1_2,
        small_limits(),
    );
    assert_eq!(err, None);
    assert_eq!(frames_of(&items)[0].headers.len(), 4);
}

#[test]
fn header_line_too_long_fails_before_line_ends() {
    // 33 bytes of an unfinished header line: over the 32-byte limit already.
    let line = [b'h'; 33];
    assert_eq!(
        error_with(small_limits(), &[b"SEND\n", &line]),
        Some(DecodeError::HeaderLineTooLong { size: 33, max: 32 })
    );
    // 32 bytes + CR could still be a valid line ending in CRLF.
    let mut line = format!("h:{}", "v".repeat(30)).into_bytes();
    line.push(b'\r');
    let (items, err) = decode_chunks(&[b"SEND\n", &line], Version::V1_2, small_limits());
    assert_eq!((items.len(), err), (0, None));
    let (items, err) = decode_chunks(
        &[b"SEND\n", &line, b"\n\n\0"],
        Version::V1_2,
        small_limits(),
    );
    assert_eq!(err, None);
    assert_eq!(frames_of(&items)[0].get("h").map(str::len), Some(30));
    // A complete line of 33 bytes.
    let wire = format!("SEND\nh:{}\n\n\0", "v".repeat(31));
    assert_eq!(
        error_with(small_limits(), &[wire.as_bytes()]),
        Some(DecodeError::HeaderLineTooLong { size: 33, max: 32 })
    );
    // A huge line arriving at once is not scanned past the limit.
    let mut wire = b"SEND\n".to_vec();
    wire.extend(std::iter::repeat_n(b'h', 100_000));
    assert_eq!(
        error_with(small_limits(), &[&wire]),
        Some(DecodeError::HeaderLineTooLong { size: 34, max: 32 })
    );
}

#[test]
fn command_line_too_long_fails_before_line_ends() {
    assert_eq!(
        error_with(small_limits(), &[&[b'A'; 17]]),
        Some(DecodeError::CommandLineTooLong { size: 17, max: 16 })
    );
    assert_eq!(
        error_with(small_limits(), &[&[b'A'; 10], &[b'A'; 10]]),
        Some(DecodeError::CommandLineTooLong { size: 18, max: 16 })
    );
    // 16 bytes is not too long, just unknown.
    assert!(matches!(
        error_with(small_limits(), &[b"ABCDEFGHIJKLMNOP\n"]),
        Some(DecodeError::UnknownCommand { .. })
    ));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let cases: &[&[u8]] = &[
        b"\0\n",
        b"\0\0\0\n",
        b"SEND\n\xff:\xff\n\n\0",
        b"SEND\nk:v\\\n",
        b":\n",
        b"\x00\x01\x02\x03\n",
        b"SEND\ncontent-length:18446744073709551616\n\n\0",
        b"SEND\ncontent-length:\n\n\0",
    ];
    for case in cases {
        let (_, err) = decode_all(case);
        assert!(err.is_some(), "{case:?}");
    }
}

#[test]
fn error_display_carries_context() {
    let err = DecodeError::FrameTooLarge { size: 11, max: 10 };
    assert_eq!(
        err.to_string(),
        "frame of 11 bytes exceeds the limit of 10 bytes"
    );
    let err = DecodeError::TooManyHeaders { count: 5, max: 4 };
    assert!(err.to_string().contains('5') && err.to_string().contains('4'));
}

#[test]
fn reset_clears_failure() {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::from(&b"BAD\n"[..]);
    assert!(decoder.decode(&mut buf).is_err());
    assert!(decoder.decode(&mut buf).is_err());
    decoder.reset();
    let mut buf = BytesMut::from(&b"ACK\n\n\0"[..]);
    assert!(matches!(decoder.decode(&mut buf), Ok(Some(Item::Frame(_)))));
}

// ---------------------------------------------------------------------------
// Negotiation
// ---------------------------------------------------------------------------

#[test]
fn version_negotiation() {
    assert_eq!(negotiate_version(Some("1.0,1.1,1.2")), Some(Version::V1_2));
    assert_eq!(negotiate_version(Some("1.2,1.0")), Some(Version::V1_2));
    assert_eq!(negotiate_version(Some("1.1")), Some(Version::V1_1));
    assert_eq!(negotiate_version(Some("1.0")), Some(Version::V1_0));
    assert_eq!(negotiate_version(Some("1.0, 1.1")), Some(Version::V1_1));
    assert_eq!(negotiate_version(None), Some(Version::V1_0));
    assert_eq!(negotiate_version(Some("2.0")), None);
    assert_eq!(negotiate_version(Some("")), None);
    assert_eq!(negotiate_version(Some("2.0,1.1")), Some(Version::V1_1));
    assert!(Version::V1_0 < Version::V1_1 && Version::V1_1 < Version::V1_2);
    for v in Version::ALL {
        assert_eq!(Version::parse(v.as_str()), Some(v));
    }
    assert_eq!(Version::default(), Version::V1_2);
}

#[test]
fn heart_beat_parse() {
    assert_eq!(parse_heart_beat(None), Ok((0, 0)));
    assert_eq!(parse_heart_beat(Some("0,0")), Ok((0, 0)));
    assert_eq!(parse_heart_beat(Some("10000,5000")), Ok((10000, 5000)));
    assert_eq!(parse_heart_beat(Some(" 100 , 200 ")), Ok((100, 200)));
    for bad in [
        "",
        "1",
        "1,2,3",
        "a,b",
        "-1,0",
        "1,",
        ",1",
        "+1,2",
        "99999999999999999999,0",
    ] {
        assert_eq!(
            parse_heart_beat(Some(bad)),
            Err(HeaderError::Invalid {
                name: "heart-beat".to_owned(),
                value: bad.to_owned()
            }),
            "{bad:?}"
        );
    }
}

#[test]
fn heart_beat_negotiate() {
    // We can send every 1s and want one every 2s; the peer wants one every 5s and sends every 3s.
    assert_eq!(
        negotiate_heart_beat((1000, 2000), (3000, 5000)),
        (5000, 3000)
    );
    assert_eq!(negotiate_heart_beat((0, 2000), (3000, 5000)), (0, 3000));
    assert_eq!(negotiate_heart_beat((1000, 0), (3000, 5000)), (5000, 0));
    assert_eq!(negotiate_heart_beat((1000, 2000), (0, 0)), (0, 0));
    assert_eq!(negotiate_heart_beat((0, 0), (0, 0)), (0, 0));
    assert_eq!(negotiate_heart_beat((9000, 9000), (10, 10)), (9000, 9000));
}

// ---------------------------------------------------------------------------
// tokio-util adapter
// ---------------------------------------------------------------------------

#[cfg(feature = "codec")]
mod codec_tests {
    use super::*;
    use tokio_util::codec::{Decoder as _, Encoder as _};

    #[test]
    fn codec_round_trip_and_version() {
        let mut codec = StompCodec::new(FrameLimits::default());
        assert_eq!(codec.version(), Version::V1_2);
        codec.set_version(Version::V1_1);
        assert_eq!(codec.version(), Version::V1_1);
        let frame = Frame::new(Command::Send)
            .header("k", "a:b\n")
            .header("content-length", "2")
            .with_body(&b"\0\0"[..]);
        let mut buf = BytesMut::new();
        codec.encode(frame.clone(), &mut buf).unwrap();
        assert!(buf.starts_with(b"SEND\nk:a\\cb\\n\n"));
        buf.extend_from_slice(b"\n");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::Frame(frame)));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::Heartbeat));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(codec.limits(), FrameLimits::default());
    }

    #[test]
    fn codec_eof_handling() {
        let mut codec = StompCodec::new(FrameLimits::default());
        let mut buf = BytesMut::new();
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        let mut buf = BytesMut::from(&b"\r"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        let mut buf = BytesMut::from(&b"ACK\n\n\0"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf).unwrap(),
            Some(Item::Frame(_))
        ));
        let mut buf = BytesMut::from(&b"SEND\n\nhalf"[..]);
        let err = codec.decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(&err, CodecError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{err:?}"
        );
        let mut codec = StompCodec::new(FrameLimits::default());
        let mut buf = BytesMut::from(&b"NOPE\n"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Decode(DecodeError::UnknownCommand { .. }))
        ));
    }
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

fn any_command() -> impl Strategy<Value = Command> {
    proptest::sample::select(&Command::ALL[..])
}

/// Arbitrary unicode with the STOMP-special characters well represented.
fn any_text(min: usize) -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => any::<char>(),
        1 => proptest::sample::select(vec![':', '\n', '\r', '\\', 'c', 'n', 'r', '\0', ' ']),
    ];
    proptest::collection::vec(ch, min..12).prop_map(|chars| chars.into_iter().collect())
}

fn any_frame() -> impl Strategy<Value = Frame> {
    (
        any_command().prop_filter("escape exempt", |c| !c.is_escape_exempt()),
        proptest::collection::vec(
            (
                any_text(1).prop_filter("content-length", |n| n != "content-length"),
                any_text(0),
            ),
            0..8,
        ),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(command, headers, body)| {
            let mut frame = Frame::new(command).with_body(body);
            frame.headers = headers;
            let len = frame.body.len().to_string();
            frame.push("content-length", len);
            frame
        })
}

/// Bytes that look a bit like STOMP, so the decoder gets past the command line often.
fn stompish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..8),
        proptest::sample::select(vec![
            b"SEND\n".to_vec(),
            b"MESSAGE\r\n".to_vec(),
            b"CONNECT\n".to_vec(),
            b"\n".to_vec(),
            b"\r\n".to_vec(),
            b"\0".to_vec(),
            b"content-length:".to_vec(),
            b"content-length:3\n".to_vec(),
            b"k:v\n".to_vec(),
            b"\\".to_vec(),
            b":".to_vec(),
            b"1".to_vec(),
        ]),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn prop_encode_decode_round_trip(frame in any_frame(), split in any::<prop::sample::Index>()) {
        let wire = encoded(&frame, Version::V1_2);
        let decoded = decode_one(&wire, Version::V1_2);
        prop_assert_eq!(decoded, Ok(frame.clone()));

        let at = split.index(wire.len() + 1);
        let (items, err) = decode_chunks(
            &[&wire[..at], &wire[at..]],
            Version::V1_2,
            FrameLimits::default(),
        );
        prop_assert_eq!(err, None);
        prop_assert_eq!(items, vec![Item::Frame(frame)]);
    }

    #[test]
    fn prop_stream_of_frames_in_random_chunks(
        frames in proptest::collection::vec(any_frame(), 1..6),
        heartbeats in proptest::collection::vec(0usize..3, 6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut wire = BytesMut::new();
        for (frame, hb) in frames.iter().zip(heartbeats.iter().cycle()) {
            for _ in 0..*hb {
                wire.extend_from_slice(b"\r\n");
            }
            encode(frame, Version::V1_2, &mut wire);
        }
        let mut offsets: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        offsets.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for off in offsets.into_iter().chain(std::iter::once(wire.len())) {
            chunks.push(&wire[prev..off]);
            prev = off;
        }
        let (items, err) = decode_chunks(&chunks, Version::V1_2, FrameLimits::default());
        prop_assert_eq!(err, None);
        prop_assert_eq!(frames_of(&items), frames);
    }

    #[test]
    fn prop_round_trip_other_versions(
        frame in any_frame(),
        version in proptest::sample::select(vec![Version::V1_0, Version::V1_1]),
    ) {
        // Encoding is lossy where the version cannot represent a character, but the
        // output must always decode, to the same command, header count and body.
        let wire = encoded(&frame, version);
        let decoded = decode_one(&wire, version).unwrap();
        prop_assert_eq!(decoded.command, frame.command);
        prop_assert_eq!(decoded.headers.len(), frame.headers.len());
        prop_assert_eq!(decoded.body, frame.body);
    }

    #[test]
    fn prop_garbage_never_panics_and_split_agrees(
        bytes in stompish_bytes(),
        split in any::<prop::sample::Index>(),
        small in any::<bool>(),
    ) {
        let limits = if small { small_limits() } else { FrameLimits::default() };
        let (whole_items, whole_err) = decode_chunks(&[&bytes], Version::V1_2, limits);
        let at = split.index(bytes.len() + 1);
        let (split_items, split_err) =
            decode_chunks(&[&bytes[..at], &bytes[at..]], Version::V1_2, limits);
        prop_assert_eq!(frames_of(&whole_items), frames_of(&split_items));
        prop_assert_eq!(
            whole_err.as_ref().map(std::mem::discriminant),
            split_err.as_ref().map(std::mem::discriminant)
        );
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        let (byte_items, byte_err) = decode_chunks(&bytewise, Version::V1_2, limits);
        prop_assert_eq!(frames_of(&whole_items), frames_of(&byte_items));
        prop_assert_eq!(
            whole_err.as_ref().map(std::mem::discriminant),
            byte_err.as_ref().map(std::mem::discriminant)
        );
    }

    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_chunks(&[&bytes], Version::V1_2, small_limits());
        let _ = decode_chunks(&[&bytes], Version::V1_0, FrameLimits::default());
    }
}

mod frame_writer {
    use crate::{encode, Command, Frame, FrameWriter, Version};
    use bytes::BytesMut;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn writes_exactly_what_encode_writes(
            headers in proptest::collection::vec(("[a-z:\\\\\n\r-]{0,8}", "\\PC{0,12}"), 0..6),
            number in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            v in 0usize..3,
        ) {
            let version = Version::ALL[v];
            let mut frame = Frame::new(Command::Message);
            let mut out = BytesMut::new();
            let mut w = FrameWriter::begin(&mut out, Command::Message, version);
            for (k, val) in &headers {
                w.header(k, val);
                frame.push(k.clone(), val.clone());
            }
            w.header_u64("n", number);
            frame.push("n", number.to_string());
            w.finish(&body);
            let frame = frame.with_body(body.clone());
            let mut want = BytesMut::new();
            // encode() replaces a content-length header in place; FrameWriter skips it and
            // appends the computed one, so compare frames without it.
            let mut f2 = frame.clone();
            f2.remove("content-length");
            encode(&f2, version, &mut want);
            prop_assert_eq!(&out[..], &want[..]);
        }
    }
}

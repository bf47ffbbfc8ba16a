//! STOMP decoder: arbitrary bytes, in one piece and in chunks, must decode to the same frames and
//! the same error (never a panic), and every decoded frame must survive `encode` + decode.
//!
//! Input: `[mode][limit scale][chunk seed] stream...`
//! * `mode % 3` picks the version (1.0, 1.1, 1.2); `mode / 3 % 4` picks the limits (0: defaults,
//!   1-3: small limits scaled by the second byte, so that every limit error is reachable);
//! * the chunk seed drives the chunk sizes of the second run (0: byte by byte).
#![no_main]

use std::mem::discriminant;

use bytes::BytesMut;
use fabricmq_stomp::{
    encode, Command, DecodeError, Decoder, Frame, FrameLimits, FrameWriter, Item, Version,
};
use libfuzzer_sys::fuzz_target;

/// What decoding a whole stream produced.
#[derive(Debug)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<DecodeError>,
    /// Bytes left in the buffer (an incomplete frame) when there was no error.
    rest: BytesMut,
}

fn limits(mode: u8, scale: u8) -> FrameLimits {
    let s = usize::from(scale);
    match mode / 3 % 4 {
        0 => FrameLimits::default(),
        1 => FrameLimits {
            max_frame_bytes: 16 + s,
            max_headers: 1 + s % 8,
            max_header_line: 4 + s % 32,
            max_command_line: 4 + s % 16,
        },
        2 => FrameLimits {
            max_frame_bytes: 64 + 4 * s,
            max_headers: 4 + s % 16,
            max_header_line: 16 + s,
            max_command_line: 64,
        },
        _ => FrameLimits {
            max_frame_bytes: 1 + s,
            max_headers: s % 4,
            max_header_line: s % 8,
            max_command_line: s % 12,
        },
    }
}

/// Feeds `chunks` one after the other to one decoder, draining it after each.
fn decode_stream<'a>(
    limits: FrameLimits,
    version: Version,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> Outcome {
    let mut dec = Decoder::new(limits);
    dec.set_version(version);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let (len, ptr) = (buf.len(), buf.as_ptr());
            let eols = buf
                .iter()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
            match dec.decode(&mut buf) {
                Ok(Some(Item::Frame(f))) => {
                    let used = len - buf.len();
                    assert!(used > 0, "frame consumed no bytes");
                    assert!(used <= limits.max_frame_bytes, "frame over the limit");
                    assert!(f.headers.len() <= limits.max_headers, "too many headers");
                    frames.push(f);
                }
                Ok(Some(Item::Heartbeat)) => {
                    let used = len - buf.len();
                    assert!(used > 0 && used <= eols, "heart-beat consumed {used} bytes");
                }
                Ok(None) => {
                    assert_eq!(
                        (buf.len(), buf.as_ptr()),
                        (len, ptr),
                        "Ok(None) moved the buffer"
                    );
                    break;
                }
                Err(e) => {
                    // The stream stays failed, with the same error.
                    assert_eq!(dec.decode(&mut buf), Err(e.clone()));
                    return Outcome {
                        frames,
                        error: Some(e),
                        rest: BytesMut::new(),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
        rest: buf,
    }
}

/// `(size, max)` of the errors whose size is a lower bound while a frame is incomplete.
fn size_error(e: &DecodeError) -> Option<(usize, usize)> {
    match *e {
        DecodeError::FrameTooLarge { size, max }
        | DecodeError::HeaderLineTooLong { size, max }
        | DecodeError::CommandLineTooLong { size, max } => Some((size, max)),
        _ => None,
    }
}

fn same_error(whole: &DecodeError, chunked: &DecodeError) -> bool {
    if discriminant(whole) != discriminant(chunked) {
        return false;
    }
    match (size_error(whole), size_error(chunked)) {
        // The reported size may be a lower bound that depends on how much had arrived.
        (Some((s1, m1)), Some((s2, m2))) => m1 == m2 && s1 > m1 && s2 > m2,
        _ => whole == chunked,
    }
}

/// Chunk sizes from a xorshift generator seeded by `seed` (0: one byte at a time).
fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let max = usize::from(seed % 64) + 1;
    let mut state = u32::from(seed) | 0x9e37_7900;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = if seed == 0 {
            1
        } else {
            (state as usize % max + 1).min(rest.len())
        };
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    // Empty reads happen too.
    out.push(&[]);
    out
}

/// What `encode` writes for a character the escaping in force cannot represent.
fn representable(s: &str, version: Version, command: Command, is_name: bool) -> String {
    let exempt = command.is_escape_exempt() || version == Version::V1_0;
    s.chars()
        .map(|c| match c {
            '\r' if exempt || version == Version::V1_1 => ' ',
            '\n' if exempt => ' ',
            ':' if exempt && is_name => '_',
            c => c,
        })
        .collect()
}

/// `encode` then decode again: same command, body and headers (modulo `content-length`, which
/// the encoder computes, and characters the version cannot carry).
fn check_round_trip(frame: &Frame, version: Version) {
    let mut wire = BytesMut::new();
    encode(frame, version, &mut wire);

    // FrameWriter writes exactly what `encode` writes for a frame without `content-length`.
    let mut stripped = frame.clone();
    stripped.remove("content-length");
    let mut expected = BytesMut::new();
    encode(&stripped, version, &mut expected);
    let mut written = BytesMut::new();
    let mut w = FrameWriter::begin(&mut written, frame.command, version);
    for (name, value) in &frame.headers {
        w.header(name, value);
    }
    w.finish(&frame.body);
    assert_eq!(written, expected, "FrameWriter differs from encode");

    let mut dec = Decoder::new(FrameLimits {
        max_frame_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_header_line: usize::MAX,
        max_command_line: 64,
    });
    dec.set_version(version);
    let encoded = wire.clone();
    let again = match dec.decode(&mut wire) {
        Ok(Some(Item::Frame(f))) => f,
        other => panic!("re-encoded frame {encoded:?} decodes to {other:?}"),
    };
    assert!(wire.is_empty(), "bytes left after the re-encoded frame");
    assert_eq!(again.command, frame.command);
    assert_eq!(again.body, frame.body);

    let not_length = |(n, _): &&(String, String)| n != "content-length";
    let want: Vec<(String, String)> = frame
        .headers
        .iter()
        .filter(not_length)
        .filter(|(n, _)| !n.is_empty())
        .map(|(n, v)| {
            (
                representable(n, version, frame.command, true),
                representable(v, version, frame.command, false),
            )
        })
        .collect();
    let got: Vec<(String, String)> = again.headers.iter().filter(not_length).cloned().collect();
    assert_eq!(
        got, want,
        "headers changed by encode + decode of {encoded:?}"
    );

    let lengths: Vec<&str> = again.get_all("content-length").collect();
    let always = matches!(
        frame.command,
        Command::Send | Command::Message | Command::Error
    );
    let had_length = frame.get("content-length").is_some();
    if !frame.body.is_empty() || always || had_length {
        assert_eq!(lengths, [frame.body.len().to_string()], "content-length");
    } else {
        assert!(lengths.is_empty(), "content-length without a body");
    }
}

fuzz_target!(|input: &[u8]| {
    let [mode, scale, seed, data @ ..] = input else {
        return;
    };
    let version = Version::ALL[usize::from(*mode % 3)];
    let limits = limits(*mode, *scale);

    let whole = decode_stream(limits, version, std::iter::once(data));
    let pieces = chunks(data, *seed);
    let chunked = decode_stream(limits, version, pieces.into_iter());

    assert_eq!(whole.frames, chunked.frames, "frames differ when chunked");
    match (&whole.error, &chunked.error) {
        (None, None) => assert_eq!(whole.rest, chunked.rest, "leftover differs"),
        (Some(a), Some(b)) => assert!(same_error(a, b), "errors differ: {a:?} vs {b:?}"),
        (a, b) => panic!("one piece: {a:?}, chunked: {b:?}"),
    }
    if let Some(e) = &whole.error {
        if let Some((size, max)) = size_error(e) {
            assert!(size > max, "size error within the limit: {e:?}");
        }
    }
    for frame in &whole.frames {
        check_round_trip(frame, version);
    }
});

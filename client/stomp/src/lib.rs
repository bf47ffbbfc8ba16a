//! STOMP 1.0 / 1.1 / 1.2 frame codec for fabricmq, shared by the broker, the client
//! library and the tools. Pure codec: no I/O, no sockets, no timers.
//!
//! # What this crate owns
//!
//! * The frame model ([`Frame`], [`Command`], [`Item`]) and the wire format: command
//!   line, `name:value` header lines, blank line, body, NUL; lines end in LF or CRLF.
//! * Header escaping per [`Version`]: 1.2 `\r \n \c \\`, 1.1 `\n \c \\`, 1.0 none;
//!   `CONNECT` and `CONNECTED` headers are never escaped in any version.
//! * Bodies: with `content-length` the body is exactly that many bytes (NULs allowed)
//!   followed by a NUL; without it the body runs to the first NUL.
//! * Header-level negotiation helpers: [`negotiate_version`], [`parse_heart_beat`],
//!   [`negotiate_heart_beat`]. Timers and the CONNECT handshake itself belong to the
//!   broker and the client.
//! * With the default `codec` feature, a `tokio_util::codec` adapter, [`StompCodec`].
//!
//! # Invariants
//!
//! * The [`Decoder`] never panics, whatever the bytes: peer bytes are only read through
//!   checked ranges, and every limit of [`FrameLimits`] is checked before anything is
//!   buffered or allocated for it. A frame that cannot fit fails as soon as that is
//!   knowable (an oversize `content-length` fails before its body arrives).
//! * Decoding is O(n): the decoder remembers how far it scanned the incomplete frame at
//!   the front of the buffer and never rescans those bytes on the next call.
//! * Bodies are zero-copy: a decoded body is a slice of the receive buffer
//!   (`BytesMut::split_to(..).freeze()`), never a copy.
//! * Headers keep wire order and repeats; [`Frame::get`] returns the FIRST occurrence
//!   (STOMP 1.2). Header names and values are stored unescaped.
//! * Heart-beats: EOLs between frames are reported as [`Item::Heartbeat`]; a run of EOLs
//!   available at once is coalesced into one item.
//! * [`encode`] always produces bytes that [`Decoder`] accepts for the same version and
//!   that decode to the same frame, except where a value cannot be represented in that
//!   version (see [`encode`]); it writes `content-length` from the body so NULs in bodies
//!   are always safe.
//!
//! ```
//! use bytes::BytesMut;
//! use fabricmq_stomp::{encode, Command, Decoder, Frame, FrameLimits, Item, Version};
//!
//! let frame = Frame::new(Command::Send)
//!     .header("destination", "/queue/a")
//!     .with_body(&b"hi\0there"[..]);
//! let mut buf = BytesMut::new();
//! encode(&frame, Version::V1_2, &mut buf);
//!
//! let mut decoder = Decoder::new(FrameLimits::default());
//! let Some(Item::Frame(decoded)) = decoder.decode(&mut buf).unwrap() else { panic!() };
//! assert_eq!(decoded.get("destination"), Some("/queue/a"));
//! assert_eq!(&decoded.body[..], b"hi\0there");
//! ```

#[cfg(feature = "codec")]
mod codec;
mod decode;
mod encode;
mod frame;

#[cfg(test)]
mod tests;

#[cfg(feature = "codec")]
pub use codec::{CodecError, StompCodec};
pub use decode::{DecodeError, Decoder, FrameLimits};
pub use encode::{encode, encode_heartbeat, FrameWriter};
pub use frame::{
    negotiate_heart_beat, negotiate_version, parse_heart_beat, Command, Frame, HeaderError, Item,
    Version,
};

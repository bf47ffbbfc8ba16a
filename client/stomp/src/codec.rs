//! `tokio_util::codec` adapter over [`Decoder`] and [`encode`].

use bytes::BytesMut;

use crate::decode::{DecodeError, Decoder, FrameLimits};
use crate::encode::encode;
use crate::frame::{Frame, Item, Version};

/// Error of [`StompCodec`]: a protocol violation or an I/O error from the transport.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer sent malformed or oversized STOMP.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The transport failed, or closed in the middle of a frame (`UnexpectedEof`).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `tokio_util::codec` Decoder (`Item = Item`) and Encoder (`Frame`) for one connection.
///
/// Encoding uses the version set with [`StompCodec::set_version`] (default V1_2), the
/// same one the decoder uses for unescaping. To send a heart-beat, write
/// [`crate::encode_heartbeat`]'s `"\n"` to the transport (e.g. through
/// `Framed::write_buffer_mut()` followed by a flush).
#[derive(Debug, Clone, Default)]
pub struct StompCodec {
    decoder: Decoder,
    version: Version,
}

impl StompCodec {
    /// A codec with the given decode limits, speaking STOMP 1.2 until told otherwise.
    pub fn new(limits: FrameLimits) -> Self {
        StompCodec {
            decoder: Decoder::new(limits),
            version: Version::V1_2,
        }
    }

    /// Sets the negotiated version for both directions (escaping rules).
    pub fn set_version(&mut self, v: Version) {
        self.version = v;
        self.decoder.set_version(v);
    }

    /// The version in use.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The decode limits.
    pub fn limits(&self) -> FrameLimits {
        self.decoder.limits()
    }
}

impl tokio_util::codec::Decoder for StompCodec {
    type Item = Item;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        Ok(self.decoder.decode(src)?)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        // A lone CR (half of a CRLF heart-beat) at close is harmless.
        if buf.is_empty() || buf[..] == b"\r"[..] {
            buf.clear();
            return Ok(None);
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed inside a STOMP frame ({} bytes buffered)",
                buf.len()
            ),
        )
        .into())
    }
}

impl tokio_util::codec::Encoder<Frame> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode(&frame, self.version, dst);
        Ok(())
    }
}

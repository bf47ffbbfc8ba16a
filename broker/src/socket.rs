//! A client connection's socket halves: plain TCP or TLS behind one read and one write type,
//! with the cancel-safe partial read and write the connection's `select!` loop needs.
//!
//! Moved out of `connection.rs` unchanged (that module owns the protocol; this one the bytes).

use std::pin::Pin;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The read side of a connection's socket. Plain TCP keeps the hot path of waiting for
/// readiness and reserving the read buffer only then; TLS reads through rustls into a buffer
/// reserved up front.
pub(crate) enum Reader {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The write side of a connection's socket. A TLS write may leave encrypted bytes inside rustls
/// when the socket is full (`dirty`): the loop then flushes even with nothing left to encode.
pub(crate) enum Writer {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS, with whether rustls holds bytes that still need a flush.
    Tls {
        /// The write half.
        io: tokio::io::WriteHalf<tokio_rustls::server::TlsStream<TcpStream>>,
        /// Bytes inside rustls not flushed yet.
        dirty: bool,
    },
}

impl Reader {
    /// Reads what is available into `buf`, reserving `chunk` bytes when less than a quarter of
    /// that is free. Returns (bytes read, room there was), or `None` after a spurious wakeup.
    ///
    /// # Cancel safety
    /// Cancel safe: no bytes are lost when it is dropped before completing.
    pub(crate) async fn read_some(
        &mut self,
        buf: &mut BytesMut,
        chunk: usize,
    ) -> std::io::Result<Option<(usize, usize)>> {
        fn reserve(buf: &mut BytesMut, chunk: usize) -> usize {
            if buf.capacity() - buf.len() < chunk / 4 {
                buf.reserve(chunk);
            }
            buf.capacity() - buf.len()
        }
        match self {
            Reader::Plain(rd) => {
                // The read buffer is reserved only once there is something to read.
                rd.readable().await?;
                let room = reserve(buf, chunk);
                match rd.try_read_buf(buf) {
                    Ok(n) => Ok(Some((n, room))),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Reader::Tls(rd) => {
                let room = reserve(buf, chunk);
                rd.read_buf(buf).await.map(|n| Some((n, room)))
            }
        }
    }
}

impl Writer {
    /// True when a TLS write left bytes inside rustls that still need a flush.
    pub(crate) fn unflushed(&self) -> bool {
        matches!(self, Writer::Tls { dirty: true, .. })
    }

    /// Writes part of `buf` (cancel safe, like [`AsyncWriteExt::write`]); with `buf` empty,
    /// flushes what a TLS write left inside rustls and returns `Ok(0)`.
    pub(crate) async fn write_some(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            self.flush().await?;
            return Ok(0);
        }
        self.write(buf).await
    }
}

impl AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Reader::Plain(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Tls { io, dirty } => {
                let r = Pin::new(io).poll_write(cx, buf);
                if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
                    *dirty = true;
                }
                r
            }
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_flush(cx),
            Writer::Tls { io, dirty } => {
                let r = Pin::new(io).poll_flush(cx);
                if matches!(r, std::task::Poll::Ready(Ok(()))) {
                    *dirty = false;
                }
                r
            }
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Writer::Plain(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Tls { io, .. } => Pin::new(io).poll_shutdown(cx),
        }
    }
}

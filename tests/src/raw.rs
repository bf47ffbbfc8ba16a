//! A raw STOMP connection for tests: frames in, frames out, nothing hidden or retried.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use fabricmq_stomp::{encode, Command, Decoder, Frame, FrameLimits, Item, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw STOMP connection: frames in, frames out, nothing hidden.
pub struct Raw {
    /// The socket.
    pub stream: TcpStream,
    buf: BytesMut,
    dec: Decoder,
    /// The CONNECTED frame (after [`Raw::connect`]).
    pub connected: Frame,
    puts: u64,
}

/// How long `recv` waits for a frame.
pub const WAIT: Duration = Duration::from_secs(5);

impl Raw {
    /// Opens a TCP connection without sending anything.
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            dec: Decoder::new(FrameLimits::default()),
            connected: Frame::new(Command::Connected),
            puts: 0,
        }
    }

    /// Opens and logs in with STOMP 1.2 (no heart-beats); panics unless CONNECTED.
    pub async fn connect(addr: SocketAddr, login: &str, pass: &str) -> Raw {
        let mut r = Raw::open(addr).await;
        r.send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("host", "localhost")
                .header("login", login)
                .header("passcode", pass)
                .header("heart-beat", "0,0"),
        )
        .await;
        let f = r.recv().await.expect("CONNECTED");
        assert_eq!(f.command, Command::Connected, "{f:?}");
        r.connected = f;
        r
    }

    /// Like [`Raw::connect`], but reports a refused connection or login (within [`WAIT`]) as
    /// an error (the frame or the reason) instead of panicking.
    pub async fn try_connect(addr: SocketAddr, login: &str, pass: &str) -> Result<Raw, String> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let mut r = Raw {
            stream,
            buf: BytesMut::new(),
            dec: Decoder::new(FrameLimits::default()),
            connected: Frame::new(Command::Connected),
            puts: 0,
        };
        let connect = Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", "localhost")
            .header("login", login)
            .header("passcode", pass)
            .header("heart-beat", "0,0");
        let mut out = BytesMut::new();
        encode(&connect, Version::V1_2, &mut out);
        r.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        match r.recv().await {
            Some(f) if f.command == Command::Connected => {
                r.connected = f;
                Ok(r)
            }
            Some(f) => Err(format!("{f:?}")),
            None => Err("closed without CONNECTED".into()),
        }
    }

    /// Writes one frame.
    pub async fn send(&mut self, f: Frame) {
        let mut out = BytesMut::new();
        encode(&f, Version::V1_2, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    /// Writes raw bytes (errors ignored: the broker may have closed).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Next frame, or None on close or after `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Frame> {
        let fut = async {
            loop {
                match self.dec.decode(&mut self.buf) {
                    Ok(Some(Item::Frame(f))) => return Some(f),
                    Ok(Some(Item::Heartbeat)) => continue,
                    Ok(None) => {}
                    Err(e) => panic!("broker sent a malformed frame: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(d, fut).await.ok().flatten()
    }

    /// Next frame within [`WAIT`], or None.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.recv_within(WAIT).await
    }

    /// Expects a frame of `cmd`.
    pub async fn expect(&mut self, cmd: Command) -> Frame {
        let f = self
            .recv()
            .await
            .unwrap_or_else(|| panic!("expected {cmd:?}, got nothing"));
        assert_eq!(f.command, cmd, "unexpected frame {f:?}");
        f
    }

    /// True if nothing arrives within `d` (used only to check absence after a receipt barrier).
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        self.recv_within(d).await.is_none()
    }

    /// Sends `f` with a receipt header and waits for that RECEIPT, returning frames seen before it.
    pub async fn with_receipt(&mut self, f: Frame, id: &str) -> Vec<Frame> {
        self.send(f.header("receipt", id)).await;
        let mut before = Vec::new();
        loop {
            let f = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("no receipt {id}"));
            if f.command == Command::Receipt && f.get("receipt-id") == Some(id) {
                return before;
            }
            assert_ne!(f.command, Command::Error, "ERROR instead of receipt: {f:?}");
            before.push(f);
        }
    }

    /// Sends a message with a receipt and waits for it.
    pub async fn put(&mut self, dest: &str, body: &str, extra: &[(&str, &str)]) {
        let mut f = Frame::new(Command::Send)
            .header("destination", dest)
            .with_body(body.to_string());
        for (k, v) in extra {
            f.push(*k, *v);
        }
        self.puts += 1;
        let id = format!("put-{}", self.puts);
        self.with_receipt(f, &id).await;
    }

    /// Subscribes with a receipt and waits for it.
    pub async fn subscribe(&mut self, id: &str, dest: &str, ack: &str, extra: &[(&str, &str)]) {
        let mut f = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", dest)
            .header("ack", ack);
        for (k, v) in extra {
            f.push(*k, *v);
        }
        self.send(f.header("receipt", format!("sub-{id}"))).await;
        let r = self.expect(Command::Receipt).await;
        assert_eq!(r.get("receipt-id"), Some(format!("sub-{id}").as_str()));
    }

    /// ACKs a MESSAGE by its `ack` header.
    pub async fn ack(&mut self, msg: &Frame) {
        let id = msg.get("ack").expect("ack header").to_string();
        self.send(Frame::new(Command::Ack).header("id", id)).await;
    }

    /// NACKs a MESSAGE by its `ack` header.
    pub async fn nack(&mut self, msg: &Frame) {
        let id = msg.get("ack").expect("ack header").to_string();
        self.send(Frame::new(Command::Nack).header("id", id)).await;
    }

    /// A receipt round trip: returns the frames that arrived before it.
    pub async fn barrier(&mut self) -> Vec<Frame> {
        let begin = Frame::new(Command::Begin).header("transaction", "barrier-tx");
        let before = self.with_receipt(begin, "barrier").await;
        self.send(Frame::new(Command::Abort).header("transaction", "barrier-tx"))
            .await;
        before
    }
}

/// The body as text.
pub fn body(f: &Frame) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}

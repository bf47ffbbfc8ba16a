//! Test helpers: an in-process broker on a loopback port and a raw STOMP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fabricmq_broker::broker::Broker;
use fabricmq_broker::config::BrokerConfig;
use fabricmq_broker::server;
use fabricmq_stomp::{encode, Command, Decoder, Frame, FrameLimits, Item, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A broker served in this process on 127.0.0.1:<free port>.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub dir: Arc<tempfile::TempDir>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(dir, f).await
    }

    pub async fn start_in(
        dir: Arc<tempfile::TempDir>,
        f: impl FnOnce(&mut BrokerConfig),
    ) -> TestBroker {
        let mut config = BrokerConfig::default();
        config.listen = vec!["stomp://127.0.0.1:0".into()];
        config.data_dir = dir.path().to_path_buf();
        f(&mut config);
        config.validate().unwrap();
        let shutdown = CancellationToken::new();
        let started = server::start(config, shutdown.clone()).await.unwrap();
        let addr = started.local_addrs()[0];
        let broker = started.broker.clone();
        let task = tokio::spawn(started.serve());
        TestBroker {
            addr,
            broker,
            shutdown,
            task,
            dir,
        }
    }

    /// Graceful stop; waits for the journal to close.
    pub async fn stop(self) -> Arc<tempfile::TempDir> {
        self.shutdown.cancel();
        self.task.await.unwrap();
        self.dir
    }

    pub async fn client(&self) -> Raw {
        Raw::connect(self.addr, "admin", "admin").await
    }
}

/// A raw STOMP connection: frames in, frames out, nothing hidden.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    dec: Decoder,
    pub connected: Frame,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            dec: Decoder::new(FrameLimits::default()),
            connected: Frame::new(Command::Connected),
        }
    }

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

    pub async fn send(&mut self, f: Frame) {
        let mut out = BytesMut::new();
        encode(&f, Version::V1_2, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Next frame, or None on close/timeout.
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

    pub async fn recv(&mut self) -> Option<Frame> {
        self.recv_within(WAIT).await
    }

    /// Expects a frame of `cmd`.
    pub async fn expect(&mut self, cmd: Command) -> Frame {
        let f = self.recv().await.unwrap_or_else(|| panic!("expected {cmd:?}, got nothing"));
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
            let f = self.recv().await.unwrap_or_else(|| panic!("no receipt {id}"));
            if f.command == Command::Receipt && f.get("receipt-id") == Some(id) {
                return before;
            }
            assert_ne!(f.command, Command::Error, "ERROR instead of receipt: {f:?}");
            before.push(f);
        }
    }

    pub async fn put(&mut self, dest: &str, body: &str, extra: &[(&str, &str)]) {
        let mut f = Frame::new(Command::Send)
            .header("destination", dest)
            .with_body(body.to_string());
        for (k, v) in extra {
            f.push(*k, *v);
        }
        let id = format!("put-{body}");
        self.with_receipt(f, &id).await;
    }

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

    pub async fn ack(&mut self, msg: &Frame) {
        let id = msg.get("ack").expect("ack header").to_string();
        self.send(Frame::new(Command::Ack).header("id", id)).await;
    }

    pub async fn nack(&mut self, msg: &Frame) {
        let id = msg.get("ack").expect("ack header").to_string();
        self.send(Frame::new(Command::Nack).header("id", id)).await;
    }

    /// A receipt round trip: everything the broker sent before it has arrived.
    pub async fn barrier(&mut self) -> Vec<Frame> {
        self.with_receipt(Frame::new(Command::Begin).header("transaction", "barrier-tx"), "barrier")
            .await
            .into_iter()
            .chain({
                self.send(Frame::new(Command::Abort).header("transaction", "barrier-tx"))
                    .await;
                std::iter::empty()
            })
            .collect()
    }
}

pub fn body(f: &Frame) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}

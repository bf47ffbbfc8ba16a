//! Connection tests against an in-process fake STOMP server.
//!
//! The fake server is driven step by step by each test (accept, expect a
//! frame, answer), so every wait is on an event; a 10 s guard around each
//! test turns a hang into a failure.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fabricmq_client::{
    AckMode, BrokerUrl, ClientError, ConnectOptions, Connection, Message, Outgoing,
    SubscribeOptions, Version,
};
use fabricmq_stomp::{encode, Command, Decoder, Frame, FrameLimits, Item};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fails the test instead of hanging forever.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test timed out")
}

struct FakeServer {
    listener: TcpListener,
    url: BrokerUrl,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}").parse().unwrap();
        FakeServer { listener, url }
    }

    async fn accept(&self) -> Peer {
        let (stream, _) = self.listener.accept().await.unwrap();
        Peer {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(FrameLimits::default()),
            version: Version::V1_2,
        }
    }
}

/// The server side of one client connection.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    version: Version,
}

impl Peer {
    /// The next frame or heart-beat; `None` at EOF.
    async fn item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self
                .decoder
                .decode(&mut self.buf)
                .expect("client sent valid STOMP")
            {
                return Some(item);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next frame, skipping heart-beats.
    async fn frame(&mut self) -> Frame {
        loop {
            match self.item().await {
                Some(Item::Frame(f)) => return f,
                Some(Item::Heartbeat) => continue,
                None => panic!("client closed the connection"),
            }
        }
    }

    async fn expect(&mut self, command: Command) -> Frame {
        let f = self.frame().await;
        assert_eq!(f.command, command, "unexpected frame {f:?}");
        f
    }

    /// Waits until the client closes, ignoring heart-beats; panics on a frame.
    async fn expect_eof(&mut self) {
        loop {
            match self.item().await {
                None => return,
                Some(Item::Heartbeat) => {}
                Some(Item::Frame(f)) => panic!("expected EOF, got {f:?}"),
            }
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        encode(&frame, self.version, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    async fn receipt_for(&mut self, frame: &Frame) {
        let id = frame
            .get("receipt")
            .expect("frame asks for a receipt")
            .to_owned();
        self.send(Frame::new(Command::Receipt).header("receipt-id", id))
            .await;
    }

    /// Expects CONNECT, answers CONNECTED with `version` and `heart_beat`.
    async fn handshake(&mut self, version: &str, heart_beat: &str) -> Frame {
        let connect = self.expect(Command::Connect).await;
        self.version = match version {
            "1.0" => Version::V1_0,
            "1.1" => Version::V1_1,
            _ => Version::V1_2,
        };
        self.send(
            Frame::new(Command::Connected)
                .header("version", version)
                .header("server", "fake/1.0")
                .header("heart-beat", heart_beat),
        )
        .await;
        self.decoder.set_version(self.version);
        connect
    }
}

fn no_heart_beat() -> ConnectOptions {
    ConnectOptions {
        heart_beat: (Duration::ZERO, Duration::ZERO),
        ..Default::default()
    }
}

/// Connects a client to a fresh fake server that speaks `version`.
async fn setup_with(
    opts: ConnectOptions,
    version: &str,
    heart_beat: &str,
) -> (Connection, Peer, Frame) {
    let server = FakeServer::start().await;
    let (conn, (peer, connect)) = tokio::join!(Connection::connect(&server.url, opts), async {
        let mut peer = server.accept().await;
        let connect = peer.handshake(version, heart_beat).await;
        (peer, connect)
    });
    (conn.expect("connects"), peer, connect)
}

async fn setup(version: &str) -> (Connection, Peer) {
    let (conn, peer, _) = setup_with(no_heart_beat(), version, "0,0").await;
    (conn, peer)
}

fn msg(body: &'static str) -> Outgoing {
    Outgoing::new("/queue/a", Bytes::from_static(body.as_bytes()))
}

fn message_frame(sub: &str, id: &str, ack: Option<&str>) -> Frame {
    let mut f = Frame::new(Command::Message)
        .header("destination", "/queue/a")
        .header("message-id", id)
        .header("subscription", sub);
    if let Some(a) = ack {
        f.push("ack", a);
    }
    f.with_body(Bytes::from(format!("body of {id}")))
}

/// Subscribes and answers the SUBSCRIBE; returns the subscription and the frame.
async fn subscribe(
    conn: &Connection,
    peer: &mut Peer,
    ack: AckMode,
    opts: SubscribeOptions,
) -> (fabricmq_client::Subscription, Frame) {
    let (sub, frame) = tokio::join!(conn.subscribe("/queue/a", ack, opts), async {
        let f = peer.expect(Command::Subscribe).await;
        peer.receipt_for(&f).await;
        f
    });
    (sub.expect("subscribes"), frame)
}

#[tokio::test]
async fn handshake_sends_connect_headers_and_reads_connected() {
    within(async {
        let opts = ConnectOptions {
            login: Some("admin".into()),
            passcode: Some("secret".into()),
            client_id: Some("client-7".into()),
            ..Default::default()
        };
        let (conn, _peer, connect) = setup_with(opts, "1.2", "5000,20000").await;
        assert_eq!(connect.get("accept-version"), Some("1.0,1.1,1.2"));
        assert_eq!(connect.get("host"), Some("127.0.0.1"));
        assert_eq!(connect.get("login"), Some("admin"));
        assert_eq!(connect.get("passcode"), Some("secret"));
        assert_eq!(connect.get("client-id"), Some("client-7"));
        assert_eq!(connect.get("heart-beat"), Some("10000,10000"));
        assert_eq!(conn.server(), Some("fake/1.0"));
        assert_eq!(conn.version(), Version::V1_2);
        // We send every max(10000, 20000) ms and expect every max(10000, 5000) ms.
        assert_eq!(
            conn.heart_beat(),
            (Some(Duration::from_secs(20)), Some(Duration::from_secs(10)))
        );
        assert!(!conn.is_closed());
        let printed = format!("{conn:?}");
        assert!(!printed.contains("secret"), "{printed}");
    })
    .await;
}

#[tokio::test]
async fn virtual_host_and_old_versions() {
    within(async {
        let opts = ConnectOptions {
            virtual_host: Some("vh1".into()),
            ..no_heart_beat()
        };
        let (conn, _peer, connect) = setup_with(opts, "1.1", "0,0").await;
        assert_eq!(connect.get("host"), Some("vh1"));
        assert_eq!(connect.get("heart-beat"), Some("0,0"));
        assert_eq!(conn.version(), Version::V1_1);
        assert_eq!(conn.heart_beat(), (None, None));

        // A 1.0 broker sends no version header.
        let server = FakeServer::start().await;
        let (conn, _peer) =
            tokio::join!(Connection::connect(&server.url, no_heart_beat()), async {
                let mut peer = server.accept().await;
                peer.expect(Command::Connect).await;
                peer.send(Frame::new(Command::Connected)).await;
                peer
            });
        let conn = conn.unwrap();
        assert_eq!(conn.version(), Version::V1_0);
        assert_eq!(conn.server(), None);
    })
    .await;
}

#[tokio::test]
async fn wrong_login_is_an_auth_error() {
    within(async {
        let server = FakeServer::start().await;
        let (result, _peer) =
            tokio::join!(Connection::connect(&server.url, no_heart_beat()), async {
                let mut peer = server.accept().await;
                peer.expect(Command::Connect).await;
                peer.send(
                    Frame::new(Command::Error)
                        .header("message", "Authentication failed: bad password")
                        .with_body("User name [admin] or password is invalid."),
                )
                .await;
                peer
            });
        match result {
            Err(ClientError::Auth { message }) => {
                assert_eq!(message, "Authentication failed: bad password")
            }
            other => panic!("expected Auth, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn connect_errors_name_the_failure() {
    within(async {
        // Nobody listens: a Connect error naming the address.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url: BrokerUrl = format!("tcp://127.0.0.1:{port}").parse().unwrap();
        match Connection::connect(&url, no_heart_beat()).await {
            Err(ClientError::Connect { addr, .. }) => assert_eq!(addr, format!("127.0.0.1:{port}")),
            other => panic!("expected Connect, got {other:?}"),
        }

        // Listening but never answering CONNECT: a Timeout.
        let server = FakeServer::start().await;
        let opts = ConnectOptions {
            connect_timeout: Duration::from_millis(200),
            ..no_heart_beat()
        };
        match Connection::connect(&server.url, opts).await {
            Err(ClientError::Timeout { after, .. }) => {
                assert_eq!(after, Duration::from_millis(200))
            }
            other => panic!("expected Timeout, got {other:?}"),
        }

        // Closed before answering: a protocol error, not a hang.
        let server = FakeServer::start().await;
        let (result, ()) = tokio::join!(Connection::connect(&server.url, no_heart_beat()), async {
            let mut peer = server.accept().await;
            peer.expect(Command::Connect).await;
            drop(peer);
        });
        assert!(
            matches!(result, Err(ClientError::Protocol { .. })),
            "{result:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn send_with_receipt_carries_all_headers() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let out = Outgoing {
            destination: "/queue/orders".into(),
            body: Bytes::from_static(b"payload\0with nul"),
            headers: vec![
                ("app:key".into(), "v1\nv2".into()),
                ("content-length".into(), "999".into()),
            ],
            persistent: Some(true),
            priority: Some(7),
            expires: Some(1_700_000_000_000),
            producer: Some(("prod-1".into(), 42)),
            content_type: Some("text/plain".into()),
        };
        let (result, ()) = tokio::join!(conn.send(out), async {
            let f = peer.expect(Command::Send).await;
            assert_eq!(f.get("destination"), Some("/queue/orders"));
            assert_eq!(f.get("persistent"), Some("true"));
            assert_eq!(f.get("priority"), Some("7"));
            assert_eq!(f.get("expires"), Some("1700000000000"));
            assert_eq!(f.get("producer-id"), Some("prod-1"));
            assert_eq!(f.get("producer-seq"), Some("42"));
            assert_eq!(f.get("content-type"), Some("text/plain"));
            assert_eq!(f.get("app:key"), Some("v1\nv2"));
            assert_eq!(f.get("content-length"), Some("16"));
            assert!(f.get("transaction").is_none());
            assert_eq!(&f.body[..], b"payload\0with nul");
            peer.receipt_for(&f).await;
        });
        result.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_receipts_resolve_in_order() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let mut futures = Vec::new();
        for i in 0..200u64 {
            let m = Outgoing {
                producer: Some(("p".into(), i)),
                ..msg("x")
            };
            futures.push(conn.send_pipelined(m, true).await.unwrap());
        }
        let mut frames = Vec::new();
        for i in 0..200u64 {
            let f = peer.expect(Command::Send).await;
            assert_eq!(
                f.get("producer-seq"),
                Some(i.to_string().as_str()),
                "order kept"
            );
            frames.push(f);
        }
        // Nothing is receipted yet.
        assert!(futures::poll!(&mut futures[0]).is_pending());
        // Answer the first half, check exactly those resolve.
        for f in &frames[..100] {
            peer.receipt_for(f).await;
        }
        let rest = futures.split_off(100);
        for r in futures::future::join_all(futures).await {
            r.unwrap();
        }
        let mut rest = rest;
        assert!(futures::poll!(&mut rest[0]).is_pending());
        for f in &frames[100..] {
            peer.receipt_for(f).await;
        }
        for r in futures::future::join_all(rest).await {
            r.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiptless_pipelined_sends_resolve_when_written() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let mut futures = Vec::new();
        for _ in 0..500 {
            futures.push(
                conn.send_pipelined(msg("fire and forget"), false)
                    .await
                    .unwrap(),
            );
        }
        // They resolve without the broker answering anything.
        for r in futures::future::join_all(futures).await {
            r.unwrap();
        }
        for _ in 0..500 {
            let f = peer.expect(Command::Send).await;
            assert!(f.get("receipt").is_none(), "no receipt requested: {f:?}");
        }
        // Dropping the future does not cancel the send.
        drop(
            conn.send_pipelined(msg("dropped future"), false)
                .await
                .unwrap(),
        );
        assert_eq!(
            &peer.expect(Command::Send).await.body[..],
            b"dropped future"
        );
    })
    .await;
}

#[tokio::test]
async fn error_with_receipt_id_fails_only_that_send() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let first = conn.send_pipelined(msg("refused"), true).await.unwrap();
        let second = conn.send_pipelined(msg("accepted"), true).await.unwrap();
        let f1 = peer.expect(Command::Send).await;
        let f2 = peer.expect(Command::Send).await;
        peer.send(
            Frame::new(Command::Error)
                .header("receipt-id", f1.get("receipt").unwrap())
                .header("message", "not authorized to write to /queue/a")
                .with_body("details here"),
        )
        .await;
        peer.receipt_for(&f2).await;
        match first.await {
            Err(ClientError::Server { message, detail }) => {
                assert_eq!(message, "not authorized to write to /queue/a");
                assert_eq!(detail, "details here");
            }
            other => panic!("expected Server error, got {other:?}"),
        }
        second.await.unwrap();
        assert!(!conn.is_closed());
    })
    .await;
}

#[tokio::test]
async fn connection_level_error_fails_every_waiter() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let (mut sub, _) =
            subscribe(&conn, &mut peer, AckMode::Auto, SubscribeOptions::default()).await;
        let pending = conn.send_pipelined(msg("x"), true).await.unwrap();
        peer.expect(Command::Send).await;
        peer.send(Frame::new(Command::Error).header("message", "broker shutting down"))
            .await;
        match pending.await {
            Err(ClientError::Server { message, .. }) => assert_eq!(message, "broker shutting down"),
            other => panic!("expected Server error, got {other:?}"),
        }
        assert!(sub.recv().await.is_none());
        assert!(conn.is_closed());
        assert!(matches!(
            conn.send(msg("late")).await,
            Err(ClientError::Closed)
        ));
        peer.expect_eof().await;
    })
    .await;
}

#[tokio::test]
async fn subscribe_receives_messages() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let opts = SubscribeOptions {
            prefetch: Some(10),
            browser: false,
            headers: vec![
                ("selector".into(), "color = 'red'".into()),
                ("id".into(), "evil".into()),
            ],
        };
        let (mut sub, f) = subscribe(&conn, &mut peer, AckMode::ClientIndividual, opts).await;
        assert_eq!(f.get("id"), Some(sub.id()));
        assert!(sub.id().starts_with("sub-"));
        assert_eq!(f.get("destination"), Some("/queue/a"));
        assert_eq!(f.get("ack"), Some("client-individual"));
        assert_eq!(f.get("prefetch"), Some("10"));
        assert_eq!(f.get("activemq.prefetchSize"), Some("10"));
        assert_eq!(f.get("selector"), Some("color = 'red'"));
        assert!(f.get("browser").is_none());

        let first = message_frame(sub.id(), "m-1", Some("ack-1"))
            .header("redelivered", "true")
            .header("delivery-count", "3")
            .header("producer-id", "p-9")
            .header("producer-seq", "12")
            .header("x-app", "a:b");
        peer.send(first).await;
        peer.send(message_frame(sub.id(), "m-2", Some("ack-2")))
            .await;
        peer.send(message_frame("sub-unknown", "m-x", None)).await;
        peer.send(message_frame(sub.id(), "m-3", Some("ack-3")))
            .await;

        let m: Message = sub.recv().await.unwrap();
        assert_eq!(m.message_id, "m-1");
        assert_eq!(m.destination, "/queue/a");
        assert_eq!(m.subscription, sub.id());
        assert_eq!(m.ack_id.as_deref(), Some("ack-1"));
        assert!(m.redelivered);
        assert_eq!(m.delivery_count, 3);
        assert_eq!(m.producer(), Some(("p-9".into(), 12)));
        assert_eq!(m.header("x-app"), Some("a:b"));
        assert_eq!(&m.body[..], b"body of m-1");
        // The Stream impl yields the next ones; the unknown subscription's is dropped.
        let m2 = sub.next().await.unwrap();
        assert_eq!(
            (m2.message_id.as_str(), m2.redelivered, m2.delivery_count),
            ("m-2", false, 1)
        );
        assert_eq!(sub.next().await.unwrap().message_id, "m-3");
    })
    .await;
}

#[tokio::test]
async fn browser_subscription_and_unsubscribe() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let opts = SubscribeOptions {
            browser: true,
            ..Default::default()
        };
        let (mut sub, f) = subscribe(&conn, &mut peer, AckMode::Auto, opts).await;
        assert_eq!(f.get("browser"), Some("true"));
        assert_eq!(f.get("ack"), Some("auto"));
        assert!(f.get("prefetch").is_none());
        peer.send(message_frame(sub.id(), "m-1", None)).await;
        peer.send(message_frame(sub.id(), "end", None).header("browser", "end"))
            .await;
        assert!(!sub.recv().await.unwrap().is_browser_end());
        assert!(sub.recv().await.unwrap().is_browser_end());

        let id = sub.id().to_owned();
        let (result, ()) = tokio::join!(sub.unsubscribe(), async {
            let f = peer.expect(Command::Unsubscribe).await;
            assert_eq!(f.get("id"), Some(id.as_str()));
            peer.receipt_for(&f).await;
        });
        result.unwrap();

        // Dropping a subscription unsubscribes without a receipt.
        let (sub, _) =
            subscribe(&conn, &mut peer, AckMode::Auto, SubscribeOptions::default()).await;
        let id = sub.id().to_owned();
        drop(sub);
        let f = peer.expect(Command::Unsubscribe).await;
        assert_eq!(f.get("id"), Some(id.as_str()));
        assert!(f.get("receipt").is_none());
    })
    .await;
}

#[tokio::test]
async fn ack_frames_for_stomp_1_2() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let (mut sub, _) = subscribe(
            &conn,
            &mut peer,
            AckMode::Client,
            SubscribeOptions::default(),
        )
        .await;
        peer.send(message_frame(sub.id(), "m-1", Some("ack-1")))
            .await;
        let m = sub.recv().await.unwrap();
        conn.ack(&m).await.unwrap();
        let f = peer.expect(Command::Ack).await;
        assert_eq!(f.headers, vec![("id".to_owned(), "ack-1".to_owned())]);
        conn.nack(&m).await.unwrap();
        let f = peer.expect(Command::Nack).await;
        assert_eq!(f.headers, vec![("id".to_owned(), "ack-1".to_owned())]);

        // Auto mode: no ack header, ack is a no-op; the next frame is the SEND.
        let (mut auto, _) =
            subscribe(&conn, &mut peer, AckMode::Auto, SubscribeOptions::default()).await;
        peer.send(message_frame(auto.id(), "m-2", None)).await;
        let m = auto.recv().await.unwrap();
        conn.ack(&m).await.unwrap();
        conn.send_pipelined(msg("marker"), false)
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(peer.frame().await.command, Command::Send);
    })
    .await;
}

#[tokio::test]
async fn ack_frames_for_stomp_1_1_and_1_0() {
    within(async {
        let (conn, mut peer) = setup("1.1").await;
        let (mut sub, _) = subscribe(
            &conn,
            &mut peer,
            AckMode::Client,
            SubscribeOptions::default(),
        )
        .await;
        peer.send(message_frame(sub.id(), "m-1", None)).await;
        let m = sub.recv().await.unwrap();
        conn.ack(&m).await.unwrap();
        let f = peer.expect(Command::Ack).await;
        assert_eq!(
            f.headers,
            vec![
                ("message-id".to_owned(), "m-1".to_owned()),
                ("subscription".to_owned(), sub.id().to_owned())
            ]
        );
        conn.nack(&m).await.unwrap();
        assert_eq!(
            peer.expect(Command::Nack).await.get("message-id"),
            Some("m-1")
        );

        // 1.1 auto mode: the client knows the mode and writes nothing.
        let (mut auto, _) =
            subscribe(&conn, &mut peer, AckMode::Auto, SubscribeOptions::default()).await;
        peer.send(message_frame(auto.id(), "m-2", None)).await;
        let m = auto.recv().await.unwrap();
        conn.ack(&m).await.unwrap();
        conn.send_pipelined(msg("marker"), false)
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(peer.frame().await.command, Command::Send);

        let (conn, mut peer) = setup("1.0").await;
        let (mut sub, _) = subscribe(
            &conn,
            &mut peer,
            AckMode::Client,
            SubscribeOptions::default(),
        )
        .await;
        peer.send(message_frame(sub.id(), "m-1", None)).await;
        let m = sub.recv().await.unwrap();
        conn.ack(&m).await.unwrap();
        let f = peer.expect(Command::Ack).await;
        assert_eq!(f.headers, vec![("message-id".to_owned(), "m-1".to_owned())]);
        assert!(matches!(
            conn.nack(&m).await,
            Err(ClientError::Protocol { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn transaction_frames() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let (mut sub, _) = subscribe(
            &conn,
            &mut peer,
            AckMode::Client,
            SubscribeOptions::default(),
        )
        .await;
        peer.send(message_frame(sub.id(), "m-1", Some("ack-1")))
            .await;
        let m = sub.recv().await.unwrap();

        let tx = conn.begin().await.unwrap();
        let tx_id = tx.id().to_owned();
        assert_eq!(
            peer.expect(Command::Begin).await.get("transaction"),
            Some(tx_id.as_str())
        );
        tx.send(msg("in tx")).await.unwrap();
        let f = peer.expect(Command::Send).await;
        assert_eq!(f.get("transaction"), Some(tx_id.as_str()));
        assert!(f.get("receipt").is_none());
        tx.ack(&m).await.unwrap();
        let f = peer.expect(Command::Ack).await;
        assert_eq!(f.get("id"), Some("ack-1"));
        assert_eq!(f.get("transaction"), Some(tx_id.as_str()));
        let (result, ()) = tokio::join!(tx.commit(), async {
            let f = peer.expect(Command::Commit).await;
            assert_eq!(f.get("transaction"), Some(tx_id.as_str()));
            peer.receipt_for(&f).await;
        });
        result.unwrap();

        let tx = conn.begin().await.unwrap();
        let tx_id = tx.id().to_owned();
        peer.expect(Command::Begin).await;
        let (result, ()) = tokio::join!(tx.abort(), async {
            let f = peer.expect(Command::Abort).await;
            assert_eq!(f.get("transaction"), Some(tx_id.as_str()));
            peer.receipt_for(&f).await;
        });
        result.unwrap();

        // A refused COMMIT fails with the broker's message.
        let tx = conn.begin().await.unwrap();
        peer.expect(Command::Begin).await;
        let (result, ()) = tokio::join!(tx.commit(), async {
            let f = peer.expect(Command::Commit).await;
            peer.send(
                Frame::new(Command::Error)
                    .header("receipt-id", f.get("receipt").unwrap())
                    .header("message", "unknown transaction"),
            )
            .await;
        });
        assert!(
            matches!(result, Err(ClientError::Server { .. })),
            "{result:?}"
        );

        // Dropping an unfinished transaction aborts it.
        let tx = conn.begin().await.unwrap();
        let tx_id = tx.id().to_owned();
        peer.expect(Command::Begin).await;
        drop(tx);
        let f = peer.expect(Command::Abort).await;
        assert_eq!(f.get("transaction"), Some(tx_id.as_str()));
    })
    .await;
}

#[tokio::test]
async fn heart_beat_timeout_closes_the_connection() {
    within(async {
        // We send every 20 ms and expect the broker every 200 ms (dead after 400 ms).
        let opts = ConnectOptions {
            heart_beat: (Duration::from_millis(20), Duration::from_millis(200)),
            ..Default::default()
        };
        let (conn, mut peer, connect) = setup_with(opts, "1.2", "200,20").await;
        assert_eq!(connect.get("heart-beat"), Some("20,200"));
        let (mut sub, _) =
            subscribe(&conn, &mut peer, AckMode::Auto, SubscribeOptions::default()).await;
        let pending = conn
            .send_pipelined(msg("never receipted"), true)
            .await
            .unwrap();
        peer.expect(Command::Send).await;
        // The broker goes silent; count the client's heart-beats until it hangs up.
        let server = tokio::spawn(async move {
            let mut heart_beats = 0;
            loop {
                match peer.item().await {
                    Some(Item::Heartbeat) => heart_beats += 1,
                    Some(Item::Frame(f)) => panic!("unexpected frame {f:?}"),
                    None => return heart_beats,
                }
            }
        });
        assert!(matches!(pending.await, Err(ClientError::Closed)));
        assert!(conn.is_closed());
        assert!(sub.recv().await.is_none());
        assert!(
            server.await.unwrap() >= 1,
            "client sent heart-beats while idle"
        );
    })
    .await;
}

#[tokio::test]
async fn broker_heart_beats_keep_the_connection_alive() {
    within(async {
        // We expect the broker every 50 ms: dead after 100 ms of silence.
        let opts = ConnectOptions {
            heart_beat: (Duration::ZERO, Duration::from_millis(50)),
            ..Default::default()
        };
        let (conn, mut peer, _) = setup_with(opts, "1.2", "50,0").await;
        let pending = conn.send_pipelined(msg("x"), true).await.unwrap();
        let f = peer.expect(Command::Send).await;
        // Heart-beat for 400 ms (4x the dead-peer limit), then answer.
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..20 {
            ticker.tick().await;
            peer.stream.write_all(b"\n").await.unwrap();
        }
        assert!(!conn.is_closed());
        peer.receipt_for(&f).await;
        pending.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn server_close_fails_pending_waiters_with_closed() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let (mut sub, _) =
            subscribe(&conn, &mut peer, AckMode::Auto, SubscribeOptions::default()).await;
        let first = conn.send_pipelined(msg("a"), true).await.unwrap();
        let second = conn.send_pipelined(msg("b"), true).await.unwrap();
        let tx = conn.begin().await.unwrap();
        peer.expect(Command::Send).await;
        peer.expect(Command::Send).await;
        peer.expect(Command::Begin).await;
        // One message is buffered before the close: it is still delivered.
        peer.send(message_frame(sub.id(), "m-1", None)).await;
        drop(peer);
        assert!(matches!(first.await, Err(ClientError::Closed)));
        assert!(matches!(second.await, Err(ClientError::Closed)));
        assert_eq!(sub.recv().await.unwrap().message_id, "m-1");
        assert!(sub.recv().await.is_none());
        assert!(conn.is_closed());
        assert!(matches!(tx.commit().await, Err(ClientError::Closed)));
        assert!(matches!(
            conn.send(msg("late")).await,
            Err(ClientError::Closed)
        ));
        assert!(matches!(
            conn.subscribe("/queue/a", AckMode::Auto, SubscribeOptions::default())
                .await,
            Err(ClientError::Closed)
        ));
        assert!(matches!(
            conn.clone().disconnect().await,
            Err(ClientError::Closed)
        ));
    })
    .await;
}

#[tokio::test]
async fn disconnect_waits_for_its_receipt() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let other = conn.clone();
        let pending = conn.send_pipelined(msg("before"), true).await.unwrap();
        let (result, ()) = tokio::join!(conn.disconnect(), async {
            let send = peer.expect(Command::Send).await;
            let disconnect = peer.expect(Command::Disconnect).await;
            peer.receipt_for(&send).await;
            peer.receipt_for(&disconnect).await;
            peer.expect_eof().await;
        });
        result.unwrap();
        pending.await.unwrap();
        assert!(other.is_closed());
        assert!(matches!(
            other.send(msg("after")).await,
            Err(ClientError::Closed)
        ));
    })
    .await;
}

#[tokio::test]
async fn disconnect_times_out_without_receipt() {
    within(async {
        let opts = ConnectOptions {
            connect_timeout: Duration::from_millis(200),
            ..no_heart_beat()
        };
        let (conn, mut peer, _) = setup_with(opts, "1.2", "0,0").await;
        let (result, ()) = tokio::join!(conn.disconnect(), async {
            peer.expect(Command::Disconnect).await;
            // Never answer; the client gives up and closes the socket.
            peer.expect_eof().await;
        });
        assert!(
            matches!(result, Err(ClientError::Timeout { .. })),
            "{result:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn dropping_every_handle_disconnects() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let pending = conn.send_pipelined(msg("last words"), true).await.unwrap();
        drop(conn);
        let send = peer.expect(Command::Send).await;
        let disconnect = peer.expect(Command::Disconnect).await;
        peer.receipt_for(&send).await;
        peer.receipt_for(&disconnect).await;
        // The receipt still reached the future that outlived the handle.
        pending.await.unwrap();
        peer.expect_eof().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_subscription_buffer_pauses_reads_without_losing_messages() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        // prefetch 1 => the smallest local buffer (64 messages).
        let opts = SubscribeOptions {
            prefetch: Some(1),
            ..Default::default()
        };
        let (mut sub, _) = subscribe(&conn, &mut peer, AckMode::Auto, opts).await;
        let total = 1000;
        let mut burst = BytesMut::new();
        for i in 0..total {
            encode(
                &message_frame(sub.id(), &format!("m-{i}"), None),
                Version::V1_2,
                &mut burst,
            );
        }
        let (mut reader, mut writer) = peer.stream.into_split();
        let server = tokio::spawn(async move {
            writer.write_all(&burst).await.unwrap();
            writer
        });
        // While the subscriber is not consuming, writes still go out.
        conn.send_pipelined(msg("while paused"), false)
            .await
            .unwrap()
            .await
            .unwrap();
        let mut decoder = Decoder::new(FrameLimits::default());
        let mut buf = BytesMut::new();
        let sent = loop {
            if let Some(Item::Frame(f)) = decoder.decode(&mut buf).unwrap() {
                break f;
            }
            assert!(reader.read_buf(&mut buf).await.unwrap() > 0);
        };
        assert_eq!(&sent.body[..], b"while paused");
        // Now consume: everything arrives, in order.
        for i in 0..total {
            let m = sub.recv().await.unwrap();
            assert_eq!(m.message_id, format!("m-{i}"));
        }
        // Keep the write half open: dropping it would shut the socket down.
        let _writer = server.await.unwrap();
        assert!(!conn.is_closed());
    })
    .await;
}

#[tokio::test]
async fn disconnect_gets_through_a_full_subscription_buffer() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let opts = SubscribeOptions {
            prefetch: Some(1),
            ..Default::default()
        };
        let (sub, _) = subscribe(&conn, &mut peer, AckMode::Auto, opts).await;
        let mut burst = BytesMut::new();
        for i in 0..500 {
            encode(
                &message_frame(sub.id(), &format!("m-{i}"), None),
                Version::V1_2,
                &mut burst,
            );
        }
        peer.stream.write_all(&burst).await.unwrap();
        // The subscriber never consumes; DISCONNECT still completes.
        let (result, ()) = tokio::join!(conn.disconnect(), async {
            let f = peer.expect(Command::Disconnect).await;
            peer.receipt_for(&f).await;
        });
        result.unwrap();
        drop(sub);
    })
    .await;
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<Connection>();
    send_sync::<fabricmq_client::ReceiptFuture>();
    send_sync::<fabricmq_client::Transaction>();
    send::<fabricmq_client::Subscription>();
    send_sync::<ClientError>();
}

#[tokio::test]
async fn protocol_violation_closes_the_connection() {
    within(async {
        let (conn, mut peer) = setup("1.2").await;
        let pending = conn.send_pipelined(msg("x"), true).await.unwrap();
        peer.expect(Command::Send).await;
        peer.stream.write_all(b"BOGUS\n\n\0").await.unwrap();
        assert!(matches!(pending.await, Err(ClientError::Closed)));
        assert!(conn.is_closed());
    })
    .await;
}

//! Connection limits, heart-beats, dead-peer detection, CONNECT and idle timeouts, slow topic
//! consumers.

use std::time::{Duration, Instant};

use fabricmq_broker::config::{ByteSize, HumanDuration};
use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::inproc::TestBroker;
use fabricmq_tests::raw::{body, Raw};

fn connect(hb: &str) -> Frame {
    Frame::new(Command::Connect)
        .header("accept-version", "1.2")
        .header("login", "admin")
        .header("passcode", "admin")
        .header("heart-beat", hb)
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_an_error() {
    let b = TestBroker::start_with(|c| c.limits.max_connections = 2).await;
    let _a = b.client().await;
    let _b = b.client().await;
    let mut third = Raw::open(b.addr).await;
    let e = third.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("too many connections"));
    assert!(third.recv().await.is_none());
    drop(_a);
    // The slot frees once the broker has seen the close; a later connection succeeds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut r = Raw::open(b.addr).await;
        r.send(connect("0,0")).await;
        match r.recv().await {
            Some(f) if f.command == Command::Connected => break,
            _ if Instant::now() < deadline => tokio::task::yield_now().await,
            other => panic!("slot never freed: {other:?}"),
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn broker_heart_beats_when_asked_and_drops_silent_peers() {
    let b = TestBroker::start_with(|c| c.limits.heart_beat_ms = (100, 100)).await;
    // The client wants heart-beats every 100 ms and promises none.
    let mut r = Raw::open(b.addr).await;
    r.send(connect("0,100")).await;
    let c = r.expect(Command::Connected).await;
    assert_eq!(c.get("heart-beat"), Some("100,100"));
    let mut raw = [0u8; 64];
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(Duration::from_secs(2), r.stream.read(&mut raw))
        .await
        .expect("no heart-beat within 2s")
        .unwrap();
    assert!(
        n > 0 && raw[..n].iter().all(|b| *b == b'\n'),
        "{:?}",
        &raw[..n]
    );

    // A client that promised heart-beats every 100 ms and goes silent is closed.
    let mut silent = Raw::open(b.addr).await;
    silent.send(connect("100,0")).await;
    silent.expect(Command::Connected).await;
    let start = Instant::now();
    assert!(silent.recv_within(Duration::from_secs(5)).await.is_none());
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "closed only after {waited:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn connect_and_idle_timeouts_close_quiet_sockets() {
    let b = TestBroker::start_with(|c| {
        c.limits.connect_timeout = HumanDuration(Duration::from_millis(200));
        c.limits.idle_timeout = HumanDuration(Duration::from_millis(300));
    })
    .await;
    let mut mute = Raw::open(b.addr).await;
    let e = mute.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("connect timeout"));
    let mut idle = b.client().await;
    let e = idle.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("idle timeout"));
    b.stop().await;
}

#[tokio::test]
async fn a_topic_subscriber_that_never_reads_is_disconnected_not_buffered() {
    let b = TestBroker::start_with(|c| c.limits.max_pending_bytes = ByteSize(64 * 1024)).await;
    let mut lazy = b.client().await;
    lazy.subscribe("t", "/topic/firehose", "auto", &[]).await;
    let mut fast = b.client().await;
    fast.subscribe("t", "/topic/firehose", "auto", &[]).await;
    // The lazy subscriber never reads its socket; the producer and the other subscriber go on.
    let mut p = b.client().await;
    let payload = "y".repeat(16 * 1024);
    let topic = b.broker.topic("/topic/firehose");
    let mut sent = 0;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(m) = fast.recv().await {
            assert_eq!(m.body.len(), 16 * 1024);
            n += 1;
            if n == 2000 {
                break;
            }
        }
        n
    });
    while sent < 2000 {
        p.put("/topic/firehose", &payload, &[]).await;
        sent += 1;
    }
    assert_eq!(reader.await.unwrap(), 2000);
    assert_eq!(
        topic
            .stats
            .slow_consumers_closed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(topic.subscriber_count(), 1);
    // The lazy connection gets its ERROR once it reads.
    let mut saw_error = false;
    while let Some(f) = lazy.recv().await {
        if f.command == Command::Error {
            assert!(
                f.get("message").unwrap().starts_with("slow consumer"),
                "{}",
                body(&f)
            );
            saw_error = true;
            break;
        }
    }
    assert!(saw_error);
    b.stop().await;
}

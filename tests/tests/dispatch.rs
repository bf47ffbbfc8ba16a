//! Dispatch semantics over real TCP against an in-process broker: ack modes, NACK, redelivery,
//! dead-letters, expiry, priority, prefetch, transactions, de-duplication, browsing, topics.

use std::time::Duration;

use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::inproc::TestBroker;
use fabricmq_tests::raw::{body, Raw};

fn send(dest: &str, body: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", dest)
        .with_body(body.to_string())
}

#[tokio::test]
async fn queue_consumers_compete_fairly_within_prefetch() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    let mut c1 = b.client().await;
    let mut c2 = b.client().await;
    c1.subscribe(
        "s",
        "/queue/fair",
        "client-individual",
        &[("prefetch", "1")],
    )
    .await;
    c2.subscribe(
        "s",
        "/queue/fair",
        "client-individual",
        &[("prefetch", "1")],
    )
    .await;
    for i in 0..4 {
        p.put("/queue/fair", &format!("m{i}"), &[]).await;
    }
    // Each consumer holds exactly one (prefetch 1) until it acks.
    let a = c1.expect(Command::Message).await;
    let b2 = c2.expect(Command::Message).await;
    assert!(c1.quiet_for(Duration::from_millis(200)).await);
    assert!(c2.quiet_for(Duration::from_millis(10)).await);
    let mut got = vec![body(&a), body(&b2)];
    c1.ack(&a).await;
    c2.ack(&b2).await;
    got.push(body(&c1.expect(Command::Message).await));
    got.push(body(&c2.expect(Command::Message).await));
    got.sort();
    assert_eq!(got, vec!["m0", "m1", "m2", "m3"]);
    b.stop().await;
}

#[tokio::test]
async fn topic_fans_out_to_every_subscriber() {
    let b = TestBroker::start().await;
    let mut s1 = b.client().await;
    let mut s2 = b.client().await;
    s1.subscribe("t", "/topic/news", "auto", &[]).await;
    s2.subscribe("t", "/topic/news", "auto", &[]).await;
    let mut p = b.client().await;
    p.put("/topic/news", "hello", &[]).await;
    assert_eq!(body(&s1.expect(Command::Message).await), "hello");
    assert_eq!(body(&s2.expect(Command::Message).await), "hello");
    b.stop().await;
}

#[tokio::test]
async fn client_ack_is_cumulative_and_unacked_are_redelivered_on_close() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    for i in 1..=5 {
        p.put("/queue/cum", &format!("m{i}"), &[]).await;
    }
    let mut c = b.client().await;
    c.subscribe("s", "/queue/cum", "client", &[]).await;
    let mut msgs = Vec::new();
    for _ in 0..5 {
        msgs.push(c.expect(Command::Message).await);
    }
    assert!(msgs.iter().all(|m| m.get("redelivered").is_none()));
    assert_eq!(msgs[0].get("delivery-count"), Some("1"));
    c.ack(&msgs[2]).await; // acks m1..m3
    c.barrier().await;
    drop(c);
    let mut c = b.client().await;
    c.subscribe("s", "/queue/cum", "client-individual", &[])
        .await;
    let m4 = c.expect(Command::Message).await;
    let m5 = c.expect(Command::Message).await;
    assert_eq!((body(&m4).as_str(), body(&m5).as_str()), ("m4", "m5"));
    assert_eq!(m4.get("redelivered"), Some("true"));
    assert_eq!(m4.get("delivery-count"), Some("2"));
    assert!(c.quiet_for(Duration::from_millis(200)).await);
    b.stop().await;
}

#[tokio::test]
async fn client_individual_acks_only_the_named_message() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    for i in 1..=3 {
        p.put("/queue/ind", &format!("m{i}"), &[]).await;
    }
    let mut c = b.client().await;
    c.subscribe("s", "/queue/ind", "client-individual", &[])
        .await;
    let _m1 = c.expect(Command::Message).await;
    let m2 = c.expect(Command::Message).await;
    let _m3 = c.expect(Command::Message).await;
    c.ack(&m2).await;
    c.barrier().await;
    drop(c);
    let mut c = b.client().await;
    c.subscribe("s", "/queue/ind", "auto", &[]).await;
    let got: Vec<String> = vec![
        body(&c.expect(Command::Message).await),
        body(&c.expect(Command::Message).await),
    ];
    assert_eq!(got, vec!["m1", "m3"]);
    b.stop().await;
}

#[tokio::test]
async fn auto_ack_removes_messages() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    p.put("/queue/auto", "x", &[]).await;
    let mut c = b.client().await;
    c.subscribe("s", "/queue/auto", "auto", &[]).await;
    let m = c.expect(Command::Message).await;
    assert!(m.get("ack").is_none());
    c.barrier().await;
    drop(c);
    let mut c = b.client().await;
    c.subscribe("s", "/queue/auto", "auto", &[]).await;
    assert!(c.quiet_for(Duration::from_millis(200)).await);
    b.stop().await;
}

#[tokio::test]
async fn nack_redelivers_then_dead_letters_past_the_limit() {
    let b = TestBroker::start_with(|c| {
        c.destinations.defaults.max_redeliveries = Some(1);
    })
    .await;
    let mut p = b.client().await;
    p.put("/queue/poison", "bad", &[("x-app", "1")]).await;
    let mut c = b.client().await;
    c.subscribe("s", "/queue/poison", "client-individual", &[])
        .await;
    let m = c.expect(Command::Message).await;
    c.nack(&m).await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.get("redelivered"), Some("true"));
    assert_eq!(m.get("delivery-count"), Some("2"));
    c.nack(&m).await;
    // Two deliveries allowed (1 redelivery): now it goes to the DLQ.
    assert!(c.quiet_for(Duration::from_millis(200)).await);
    let mut d = b.client().await;
    d.subscribe("d", "/queue/DLQ.poison", "auto", &[]).await;
    let dl = d.expect(Command::Message).await;
    assert_eq!(body(&dl), "bad");
    assert_eq!(dl.get("original-destination"), Some("/queue/poison"));
    assert_eq!(dl.get("dlq-reason"), Some("max-redeliveries"));
    assert_eq!(dl.get("x-app"), Some("1"));
    b.stop().await;
}

#[tokio::test]
async fn expired_messages_are_never_delivered() {
    let b = TestBroker::start_with(|c| {
        c.destinations
            .policies
            .push(fabricmq_broker::config::DestinationPolicy {
                pattern: Some("queue://drop.>".into()),
                expired: Some(fabricmq_broker::config::ExpiredAction::Drop),
                ..Default::default()
            });
    })
    .await;
    let mut p = b.client().await;
    let past = "1000";
    let future = (fabricmq_broker::message::now_ms() + 3_600_000).to_string();
    p.put("/queue/exp", "old", &[("expires", past)]).await;
    p.put("/queue/exp", "fresh", &[("expires", &future)]).await;
    p.put("/queue/drop.x", "old", &[("expires", past)]).await;
    let mut c = b.client().await;
    c.subscribe("s", "/queue/exp", "auto", &[]).await;
    assert_eq!(body(&c.expect(Command::Message).await), "fresh");
    c.subscribe("d", "/queue/DLQ.exp", "auto", &[]).await;
    let dl = c.expect(Command::Message).await;
    assert_eq!(dl.get("dlq-reason"), Some("expired"));
    c.subscribe("x", "/queue/drop.x", "auto", &[]).await;
    c.subscribe("y", "/queue/DLQ.drop.x", "auto", &[]).await;
    assert!(c.quiet_for(Duration::from_millis(200)).await);
    b.stop().await;
}

#[tokio::test]
async fn higher_priority_first_then_arrival_order() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    for (body, prio) in [
        ("a1", "1"),
        ("b9", "9"),
        ("c5", "5"),
        ("d9", "9"),
        ("e", "4"),
    ] {
        p.put("/queue/prio", body, &[("priority", prio)]).await;
    }
    let mut c = b.client().await;
    c.subscribe("s", "/queue/prio", "auto", &[]).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(body(&c.expect(Command::Message).await));
    }
    assert_eq!(got, vec!["b9", "d9", "c5", "e", "a1"]);
    b.stop().await;
}

#[tokio::test]
async fn transactions_apply_at_commit_and_vanish_on_abort() {
    let b = TestBroker::start().await;
    let mut c = b.client().await;
    c.subscribe("s", "/queue/tx", "client-individual", &[])
        .await;
    let mut p = b.client().await;
    p.send(Frame::new(Command::Begin).header("transaction", "t1"))
        .await;
    p.send(send("/queue/tx", "in-t1").header("transaction", "t1"))
        .await;
    p.send(Frame::new(Command::Begin).header("transaction", "t2"))
        .await;
    p.send(send("/queue/tx", "in-t2").header("transaction", "t2"))
        .await;
    p.barrier().await;
    assert!(
        c.quiet_for(Duration::from_millis(200)).await,
        "uncommitted send visible"
    );
    p.with_receipt(Frame::new(Command::Abort).header("transaction", "t2"), "a")
        .await;
    p.with_receipt(Frame::new(Command::Commit).header("transaction", "t1"), "c")
        .await;
    let m = c.expect(Command::Message).await;
    assert_eq!(body(&m), "in-t1");
    assert!(
        c.quiet_for(Duration::from_millis(200)).await,
        "aborted send delivered"
    );
    // An ACK inside an aborted transaction leaves the message unacknowledged.
    c.send(Frame::new(Command::Begin).header("transaction", "ta"))
        .await;
    c.send(
        Frame::new(Command::Ack)
            .header("id", m.get("ack").unwrap())
            .header("transaction", "ta"),
    )
    .await;
    c.with_receipt(Frame::new(Command::Abort).header("transaction", "ta"), "ab")
        .await;
    drop(c);
    let mut c = b.client().await;
    c.subscribe("s", "/queue/tx", "client-individual", &[])
        .await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.get("redelivered"), Some("true"));
    // An ACK inside a committed transaction settles it.
    c.send(Frame::new(Command::Begin).header("transaction", "tc"))
        .await;
    c.send(
        Frame::new(Command::Ack)
            .header("id", m.get("ack").unwrap())
            .header("transaction", "tc"),
    )
    .await;
    c.with_receipt(
        Frame::new(Command::Commit).header("transaction", "tc"),
        "cc",
    )
    .await;
    drop(c);
    let mut c = b.client().await;
    c.subscribe("s", "/queue/tx", "auto", &[]).await;
    assert!(c.quiet_for(Duration::from_millis(200)).await);
    b.stop().await;
}

#[tokio::test]
async fn dropped_connection_discards_open_transaction() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    p.send(Frame::new(Command::Begin).header("transaction", "t"))
        .await;
    p.send(send("/queue/txdrop", "lost").header("transaction", "t"))
        .await;
    p.barrier().await;
    drop(p);
    let mut c = b.client().await;
    c.subscribe("s", "/queue/txdrop", "auto", &[]).await;
    assert!(c.quiet_for(Duration::from_millis(200)).await);
    b.stop().await;
}

#[tokio::test]
async fn producer_sequence_duplicates_are_dropped() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    let h = [("producer-id", "p1"), ("producer-seq", "1")];
    p.put("/queue/dedup", "one", &h).await;
    p.put("/queue/dedup", "one-again", &h).await;
    p.put(
        "/queue/dedup",
        "two",
        &[("producer-id", "p1"), ("producer-seq", "2")],
    )
    .await;
    let mut c = b.client().await;
    c.subscribe("s", "/queue/dedup", "auto", &[]).await;
    let m = c.expect(Command::Message).await;
    assert_eq!(body(&m), "one");
    assert_eq!(m.get("producer-id"), Some("p1"));
    assert_eq!(m.get("producer-seq"), Some("1"));
    assert_eq!(body(&c.expect(Command::Message).await), "two");
    assert!(c.quiet_for(Duration::from_millis(200)).await);
    b.stop().await;
}

#[tokio::test]
async fn browser_subscription_peeks_without_consuming() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    p.put("/queue/browse", "a", &[]).await;
    p.put("/queue/browse", "b", &[]).await;
    let mut c = b.client().await;
    c.subscribe("br", "/queue/browse", "auto", &[("browser", "true")])
        .await;
    assert_eq!(body(&c.expect(Command::Message).await), "a");
    assert_eq!(body(&c.expect(Command::Message).await), "b");
    let end = c.expect(Command::Message).await;
    assert_eq!(end.get("browser"), Some("end"));
    c.subscribe("s", "/queue/browse", "auto", &[]).await;
    assert_eq!(body(&c.expect(Command::Message).await), "a");
    assert_eq!(body(&c.expect(Command::Message).await), "b");
    b.stop().await;
}

#[tokio::test]
async fn headers_and_binary_bodies_survive_the_trip() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    let payload = bytes::Bytes::from_static(b"a\0b\0\nc");
    p.with_receipt(
        Frame::new(Command::Send)
            .header("destination", "/queue/bin")
            .header("weird", "x:y\nz\\w")
            .with_body(payload.clone()),
        "r",
    )
    .await;
    let mut c = b.client().await;
    c.subscribe("s", "/queue/bin", "auto", &[]).await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.body, payload);
    assert_eq!(m.get("weird"), Some("x:y\nz\\w"));
    assert!(m.get("message-id").unwrap().starts_with("ID:"));
    b.stop().await;
}

#[tokio::test]
async fn bad_input_gets_an_error_and_spares_other_connections() {
    let b = TestBroker::start_with(|c| {
        c.limits.max_frame_bytes = fabricmq_broker::config::ByteSize(64 * 1024);
    })
    .await;
    let mut good = b.client().await;
    good.subscribe("s", "/queue/ok", "auto", &[]).await;

    // Garbage command.
    let mut bad = b.client().await;
    bad.send_raw(b"HELLO\n\n\0").await;
    let e = bad.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("malformed frame"));
    assert!(
        bad.recv().await.is_none(),
        "connection not closed after ERROR"
    );

    // Oversize frame, refused from its content-length.
    let mut big = b.client().await;
    big.send_raw(b"SEND\ndestination:/queue/ok\ncontent-length:10000000\n\n")
        .await;
    let e = big.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("frame too large"));

    // Unknown destination kind, with receipt-id echoed.
    let mut unk = b.client().await;
    unk.send(send("/exchange/x", "m").header("receipt", "r9"))
        .await;
    let e = unk.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("unknown destination"));
    assert_eq!(e.get("receipt-id"), Some("r9"));

    // Bad header value.
    let mut bh = b.client().await;
    bh.send(send("/queue/ok", "m").header("priority", "high"))
        .await;
    assert_eq!(
        bh.expect(Command::Error).await.get("message"),
        Some("invalid priority header")
    );

    // Wrong password.
    let mut wp = Raw::open(b.addr).await;
    wp.send(
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("login", "admin")
            .header("passcode", "nope"),
    )
    .await;
    let e = wp.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("authentication failed"));
    assert!(wp.recv().await.is_none());

    // The good connection and the broker carry on.
    let mut p = b.client().await;
    p.put("/queue/ok", "still-here", &[]).await;
    assert_eq!(body(&good.expect(Command::Message).await), "still-here");
    b.stop().await;
}

#[tokio::test]
async fn version_negotiation_and_legacy_acks() {
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.send(
        Frame::new(Command::Connect)
            .header("accept-version", "1.0,1.1")
            .header("login", "admin")
            .header("passcode", "admin"),
    )
    .await;
    let c = r.expect(Command::Connected).await;
    assert_eq!(c.get("version"), Some("1.1"));
    let mut p = b.client().await;
    p.put("/queue/legacy", "x", &[]).await;
    r.send(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", "/queue/legacy")
            .header("ack", "client"),
    )
    .await;
    let m = r.expect(Command::Message).await;
    r.send(
        Frame::new(Command::Ack)
            .header("message-id", m.get("message-id").unwrap())
            .header("subscription", "0")
            .header("receipt", "ok"),
    )
    .await;
    r.expect(Command::Receipt).await;
    drop(r);
    let mut c2 = b.client().await;
    c2.subscribe("s", "/queue/legacy", "auto", &[]).await;
    assert!(c2.quiet_for(Duration::from_millis(200)).await);

    let mut bad = Raw::open(b.addr).await;
    bad.send(Frame::new(Command::Connect).header("accept-version", "2.0"))
        .await;
    let e = bad.expect(Command::Error).await;
    assert_eq!(e.get("version"), Some("1.0,1.1,1.2"));
    b.stop().await;
}

#[tokio::test]
async fn persistent_messages_survive_a_restart() {
    let b = TestBroker::start().await;
    let mut p = b.client().await;
    for i in 0..50 {
        p.put("/queue/durable", &format!("m{i}"), &[]).await;
    }
    p.put("/queue/durable", "np", &[("persistent", "false")])
        .await;
    let dir = b.stop().await;
    let b = TestBroker::start_in(dir, |_| {}).await;
    let mut c = b.client().await;
    c.subscribe("s", "/queue/durable", "client-individual", &[])
        .await;
    for i in 0..50 {
        let m = c.expect(Command::Message).await;
        assert_eq!(body(&m), format!("m{i}"));
        // Recovered messages may have been delivered before the restart: flagged redelivered.
        assert_eq!(m.get("redelivered"), Some("true"));
        c.ack(&m).await;
    }
    assert!(
        c.quiet_for(Duration::from_millis(200)).await,
        "non-persistent survived"
    );
    c.barrier().await;
    let dir = b.stop().await;
    let b = TestBroker::start_in(dir, |_| {}).await;
    let mut c = b.client().await;
    c.subscribe("s", "/queue/durable", "auto", &[]).await;
    assert!(
        c.quiet_for(Duration::from_millis(200)).await,
        "acked messages came back"
    );
    b.stop().await;
}

#[tokio::test]
async fn backlogs_larger_than_memory_are_served_from_disk() {
    let b = TestBroker::start_with(|c| {
        c.limits.max_memory = fabricmq_broker::config::ByteSize(256 * 1024);
    })
    .await;
    let mut p = b.client().await;
    let big = "x".repeat(8 * 1024);
    for i in 0..200 {
        let persistent = if i % 2 == 0 { "true" } else { "false" };
        p.put(
            "/queue/big",
            &format!("{i:03}{big}"),
            &[("persistent", persistent)],
        )
        .await;
    }
    assert!(b.broker.memory().used() <= 256 * 1024 + 16 * 1024);
    let mut c = b.client().await;
    c.subscribe(
        "s",
        "/queue/big",
        "client-individual",
        &[("prefetch", "10")],
    )
    .await;
    for i in 0..200 {
        let m = c.expect(Command::Message).await;
        assert_eq!(&body(&m)[..3], format!("{i:03}"));
        assert_eq!(m.body.len(), 3 + 8 * 1024);
        c.ack(&m).await;
    }
    c.barrier().await;
    assert_eq!(b.broker.memory().used(), 0);
    b.stop().await;
}

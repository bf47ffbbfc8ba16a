//! Producer de-duplication is scoped to the authenticated user and bounded, and its journal
//! checkpoint survives restarts whatever its size (issue 10, items 1 and 2).
//!
//! In-process brokers over real loopback TCP; a restart is a graceful stop and a new broker on
//! the same data directory.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fabricmq_broker::config::{BrokerConfig, ByteSize, HumanDuration};
use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::inproc::TestBroker;
use fabricmq_tests::raw::{body, Raw};
use fabricmq_tests::users::write_users_file;

/// `eve` may write only to `queue://eve.>`; `app` may do everything.
fn two_users(
    dir: &Path,
) -> (
    std::path::PathBuf,
    Vec<fabricmq_broker::authz::AuthorizationEntry>,
) {
    let users = dir.join("users.toml");
    write_users_file(&users, "pw", &[("eve", &["guests"]), ("app", &["apps"])]);
    let authz = BrokerConfig::from_toml(
        r#"
[[authorization]]
pattern = "queue://eve.>"
read = ["guests"]
write = ["guests"]
admin = ["guests"]
[[authorization]]
pattern = ">"
read = ["apps"]
write = ["apps"]
admin = ["apps"]
"#,
    )
    .unwrap();
    (users, authz.authorization)
}

fn send(dest: &str, text: &str, producer: &str, seq: u64, receipt: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", dest)
        .header("producer-id", producer)
        .header("producer-seq", seq.to_string())
        .header("receipt", receipt)
        .with_body(text.to_string())
}

/// Sends and waits for the receipt (an ERROR fails the test).
async fn put(c: &mut Raw, dest: &str, text: &str, producer: &str, seq: u64) {
    let receipt = format!("r-{producer}-{seq}");
    c.with_receipt(send(dest, text, producer, seq, &receipt), &receipt)
        .await;
}

/// Subscribes to `dest` and takes `n` messages, then makes sure no further one was delivered
/// (a receipt round trip after them); returns the bodies.
async fn drain(c: &mut Raw, dest: &str, n: usize) -> Vec<String> {
    c.subscribe("s", dest, "auto", &[]).await;
    let mut got = Vec::new();
    while got.len() < n {
        match c.recv_within(Duration::from_secs(30)).await {
            Some(f) if f.command == Command::Message => got.push(body(&f)),
            other => panic!("after {} of {n} messages: {other:?}", got.len()),
        }
    }
    let extra = c.barrier().await;
    assert!(extra.is_empty(), "more than {n} messages: {extra:?}");
    got
}

#[tokio::test]
async fn one_user_cannot_suppress_another_users_messages() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (users, authz) = two_users(dir.path());
    let configure = |c: &mut BrokerConfig| {
        c.auth.users_file = Some(users.clone());
        c.authorization = authz.clone();
    };
    let b = TestBroker::start_in(dir.clone(), configure).await;

    // Eve writes to her own queue with the victim's producer id and the highest sequence.
    let mut eve = Raw::connect(b.addr, "eve", "pw").await;
    put(&mut eve, "/queue/eve.x", "eve", "orders-producer", u64::MAX).await;

    // The victim's sends are receipted *and* enqueued.
    let mut app = Raw::connect(b.addr, "app", "pw").await;
    for seq in 1..=3 {
        put(
            &mut app,
            "/queue/orders",
            &format!("m{seq}"),
            "orders-producer",
            seq,
        )
        .await;
    }
    // A genuine re-send (same user, same id, same sequence) is still a duplicate.
    put(&mut app, "/queue/orders", "m3 again", "orders-producer", 3).await;
    drop(app);
    drop(eve);
    let dir = b.stop().await;

    // The same after a restart: the journal kept the two producers apart.
    let b = TestBroker::start_in(dir, configure).await;
    let mut app = Raw::connect(b.addr, "app", "pw").await;
    put(
        &mut app,
        "/queue/orders",
        "m3 after restart",
        "orders-producer",
        3,
    )
    .await;
    put(&mut app, "/queue/orders", "m4", "orders-producer", 4).await;
    let mut eve = Raw::connect(b.addr, "eve", "pw").await;
    put(&mut eve, "/queue/eve.x", "eve again", "orders-producer", 5).await;
    let got = drain(&mut app, "/queue/orders", 4).await;
    assert_eq!(got, ["m1", "m2", "m3", "m4"]);
    let got = drain(&mut eve, "/queue/eve.x", 1).await;
    assert_eq!(got, ["eve"], "eve's own re-use of her id is hers to lose");
    b.stop().await;
}

#[tokio::test]
async fn producer_ids_are_bounded_per_user_and_long_ids_refused() {
    let configure = |c: &mut BrokerConfig| {
        c.producers.max_per_user = 100;
        c.producers.idle_expiry = HumanDuration(Duration::ZERO);
    };
    let b = TestBroker::start_with(configure).await;
    let mut c = b.client().await;
    for i in 0..300u64 {
        put(&mut c, "/queue/bounded", "x", &format!("p{i:03}"), 1).await;
    }
    let (ids, evicted, _) = b.broker.producer_ids();
    assert_eq!((ids, evicted), (100, 200));
    // The 100 most recent ids are still recognised.
    put(&mut c, "/queue/bounded", "dup", "p299", 1).await;
    assert_eq!(b.broker.producer_ids().0, 100);

    // An id over producers.max_id_bytes: ERROR naming the key, nothing enqueued.
    let long = "x".repeat(257);
    c.send(send("/queue/bounded", "long", &long, 1, "long"))
        .await;
    let e = c.expect(Command::Error).await;
    assert_eq!(e.get("receipt-id"), Some("long"));
    assert!(body(&e).contains("producers.max_id_bytes"), "{e:?}");
    drop(c);
    let dir = b.stop().await;

    // The journal forgot what the table forgot: a restart loads only the 100.
    let b = TestBroker::start_in(dir, configure).await;
    assert_eq!(b.broker.producer_ids().0, 100);
    let mut c = b.client().await;
    put(&mut c, "/queue/bounded", "dup", "p299", 1).await;
    let got = drain(&mut c, "/queue/bounded", 300).await;
    assert_eq!(got.len(), 300, "the duplicate of p299 was not enqueued");
    b.stop().await;
}

/// Journal segment files in a data directory.
fn segments(data: &Path) -> usize {
    std::fs::read_dir(data.join("journal"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("journal-") && n.ends_with(".log")
        })
        .count()
}

#[tokio::test]
async fn a_producer_table_larger_than_a_segment_survives_a_graceful_restart() {
    // 1,400 producers with 1,000-byte ids: a 1.4 MB table, more than a 1 MiB segment. Every
    // message stays queued, so no segment can be deleted.
    let configure = |c: &mut BrokerConfig| {
        c.journal.segment_bytes = ByteSize(1 << 20);
        c.producers.max_id_bytes = 1000;
    };
    let b = TestBroker::start_with(configure).await;
    let mut c = b.client().await;
    let id = |i: u64| format!("{i:0>1000}");
    let n = 1_400u64;
    for i in 0..n {
        put(&mut c, "/queue/big-table", &format!("m{i}"), &id(i), 1).await;
        // Each segment holds ~1 MiB of data after its checkpoint: a handful of segments, not
        // one per append (the old header-embedded table rolled on every append past 1 MiB).
        let segs = segments(b.dir.path());
        assert!(segs <= 8, "{segs} segments after {} messages", i + 1);
    }
    drop(c);
    let dir = b.stop().await;

    let b = TestBroker::start_in(dir, configure).await;
    assert_eq!(b.broker.producer_ids().0, n as usize);
    let mut c = b.client().await;
    // Re-sends of producers from every segment are recognised after the restart.
    for i in [0, n / 2, n - 1] {
        put(&mut c, "/queue/big-table", "dup", &id(i), 1).await;
    }
    let got: BTreeSet<String> = drain(&mut c, "/queue/big-table", n as usize)
        .await
        .into_iter()
        .collect();
    let want: BTreeSet<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    b.stop().await;
}

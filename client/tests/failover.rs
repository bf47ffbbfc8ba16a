//! Failover transport tests against real `mq-broker` processes.
//!
//! Each test starts its own broker(s) on free loopback ports with their own
//! data directories, kills them with SIGKILL (by PID) and restarts them on the
//! same port and data directory, so the journal (and the broker's producer
//! de-duplication table) survives like a shared store would. Every wait is on
//! an event (a ready file, a connection event, a message) and bounded.
//!
//! The broker binary is built on demand (`cargo build -p fabricmq-broker --bin
//! mq-broker`) when it is missing.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fabricmq_client::{
    AckMode, BrokerUrl, ClientError, ConnectOptions, Connection, ConnectionEvent, Outgoing,
    SubscribeOptions,
};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// Fails the test instead of hanging.
async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s: {what}"),
    }
}

fn broker_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin = root.join("target/debug/mq-broker");
        if !bin.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "fabricmq-broker", "--bin", "mq-broker"])
                .current_dir(&root)
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building mq-broker failed");
        }
        bin
    })
    .clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("fabricmq-failover-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `mq-broker` on a fixed port and data directory, restartable.
struct Broker {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
    config: Option<PathBuf>,
}

impl Broker {
    async fn start() -> Broker {
        Broker::start_with(None).await
    }

    /// Starts with `config` (TOML) as its configuration file.
    async fn start_with(config: Option<&str>) -> Broker {
        let dir = TempDir::new();
        let config = config.map(|text| {
            let path = dir.0.join("broker.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut b = Broker {
            port: free_port(),
            dir,
            child: None,
            starts: 0,
            config,
        };
        b.restart().await;
        b
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process and waits for its ready file.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let ready = self.dir.0.join(format!("ready-{}.json", self.starts));
        let log = std::fs::File::create(self.dir.0.join(format!("log-{}.txt", self.starts)))
            .expect("log file");
        let mut cmd = Command::new(broker_binary());
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .arg("--listen")
            .arg(format!("stomp://127.0.0.1:{}", self.port))
            .arg("--data")
            .arg(self.dir.0.join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mq-broker");
        self.child = Some(child);
        within(30, "broker ready file", async {
            loop {
                if ready.exists() {
                    return;
                }
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    panic!("mq-broker exited early: {status}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// SIGKILL by PID, and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        login: Some("admin".into()),
        passcode: Some("admin".into()),
        heart_beat: (Duration::from_millis(500), Duration::from_millis(500)),
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn failover_url(brokers: &[&Broker], options: &str) -> BrokerUrl {
    let list: Vec<String> = brokers.iter().map(|b| b.url()).collect();
    let text = format!("failover:({})?{options}", list.join(","));
    text.parse().unwrap_or_else(|e| panic!("parse {text}: {e}"))
}

/// Waits for the next `Resumed` event (skipping others).
async fn resumed(events: &mut broadcast::Receiver<ConnectionEvent>) -> (String, String, Duration) {
    loop {
        match events.recv().await {
            Ok(ConnectionEvent::Resumed { from, to, downtime }) => return (from, to, downtime),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("events ended: {e}"),
        }
    }
}

/// Waits for the next `Interrupted` event.
async fn interrupted(events: &mut broadcast::Receiver<ConnectionEvent>) -> String {
    loop {
        match events.recv().await {
            Ok(ConnectionEvent::Interrupted { endpoint, .. }) => return endpoint,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("events ended: {e}"),
        }
    }
}

/// One broker, SIGKILLed and restarted on the same port and data directory
/// three times while a producer sends persistent messages with receipts and a
/// consumer with client-individual acks reads them: every receipted message
/// is consumed, the application sees a message twice only as a redelivery of
/// one it had not acknowledged, and each producer's order is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_across_broker_kills() {
    const TOTAL: u64 = 3000;
    const WINDOW: usize = 64;
    const KILLS: u64 = 3;
    let mut broker = Broker::start().await;
    let url = failover_url(&[&broker], "initialReconnectDelay=10&maxReconnectDelay=200");
    let producer = Connection::connect(&url, opts()).await.unwrap();
    let consumer = Connection::connect(&url, opts()).await.unwrap();
    let mut p_events = producer.events();
    let mut c_events = consumer.events();
    let sub_opts = SubscribeOptions {
        prefetch: Some(200),
        ..Default::default()
    };
    let mut sub = consumer
        .subscribe("/queue/failover", AckMode::ClientIndividual, sub_opts)
        .await
        .unwrap();

    // Producer: pipelined persistent sends with receipts, WINDOW in flight.
    let (receipted_tx, receipted_rx) = watch::channel(0u64);
    let producer_task = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut in_flight = std::collections::VecDeque::new();
            let mut receipted = BTreeSet::new();
            for seq in 1..=TOTAL {
                let msg = Outgoing {
                    destination: "/queue/failover".into(),
                    body: format!("m{seq}").into(),
                    persistent: Some(true),
                    producer: Some(("p-failover".into(), seq)),
                    ..Default::default()
                };
                let fut = producer.send_pipelined(msg, true).await.expect("queued");
                in_flight.push_back((seq, fut));
                while in_flight.len() >= WINDOW {
                    let (s, f) = in_flight.pop_front().unwrap();
                    f.await.expect("receipt");
                    receipted.insert(s);
                    receipted_tx.send_replace(receipted.len() as u64);
                }
            }
            for (s, f) in in_flight {
                f.await.expect("receipt");
                receipted.insert(s);
                receipted_tx.send_replace(receipted.len() as u64);
            }
            receipted
        })
    };

    // Consumer: ack each message; remember what the application saw.
    let consumer_task = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let mut first_seen: Vec<u64> = Vec::new();
            let mut seen = BTreeSet::new();
            let mut app_duplicates = 0u64;
            let mut redelivered = 0u64;
            while seen.len() < TOTAL as usize {
                let msg = sub.recv().await.expect("subscription ended");
                let (pid, seq) = msg.producer().expect("producer headers");
                assert_eq!(pid, "p-failover");
                if msg.redelivered {
                    redelivered += 1;
                }
                if !seen.insert(seq) {
                    // Only a message we never acknowledged may come back.
                    assert!(msg.redelivered, "duplicate {seq} without redelivered flag");
                    app_duplicates += 1;
                } else {
                    first_seen.push(seq);
                }
                consumer.ack(&msg).await.expect("ack queued");
            }
            (first_seen, app_duplicates, redelivered)
        })
    };

    // Chaos: kill and restart the broker at evenly spaced receipt counts.
    for k in 1..=KILLS {
        let at = TOTAL * k / (KILLS + 1);
        let mut rx = receipted_rx.clone();
        within(60, "producer progress", rx.wait_for(|n| *n >= at))
            .await
            .unwrap();
        broker.kill();
        within(10, "producer interrupted", interrupted(&mut p_events)).await;
        broker.restart().await;
        let (from, to, downtime) = within(30, "producer resumed", resumed(&mut p_events)).await;
        assert_eq!(from, to);
        assert!(downtime > Duration::ZERO);
        within(30, "consumer resumed", resumed(&mut c_events)).await;
    }

    let receipted = within(120, "producer done", producer_task).await.unwrap();
    let (first_seen, app_duplicates, redelivered) =
        within(120, "consumer done", consumer_task).await.unwrap();
    assert_eq!(receipted.len() as u64, TOTAL);
    let consumed: BTreeSet<u64> = first_seen.iter().copied().collect();
    let missing: Vec<u64> = receipted.difference(&consumed).copied().collect();
    assert!(
        missing.is_empty(),
        "receipted but never consumed: {missing:?}"
    );
    assert!(
        first_seen.windows(2).all(|w| w[0] < w[1]),
        "per-producer order broken"
    );
    assert_eq!(producer.failovers(), KILLS);
    assert_eq!(consumer.failovers(), KILLS);
    assert!(producer.downtime_total() > Duration::ZERO);
    report_counts(&[
        ("sent", TOTAL),
        ("receipted", receipted.len() as u64),
        ("consumed", consumed.len() as u64),
        ("redelivered", redelivered),
        ("app duplicates (unacked redeliveries)", app_duplicates),
        (
            "duplicates dropped client-side",
            consumer.duplicates_dropped(),
        ),
        ("producer failovers", producer.failovers()),
    ]);
    producer.disconnect().await.unwrap();
    consumer.disconnect().await.unwrap();
}

/// The figures a test reports, on stderr (shown with `--nocapture`).
fn report_counts(rows: &[(&str, u64)]) {
    let text: Vec<String> = rows.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("failover counts: {}", text.join(" "));
}

/// While no broker is reachable a send waits; once `timeout` elapses it fails
/// with the typed error. When the broker is back, sends go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_wait_then_fail_with_timeout_while_disconnected() {
    let mut broker = Broker::start().await;
    let url = failover_url(
        &[&broker],
        "timeout=600&initialReconnectDelay=20&maxReconnectDelay=100",
    );
    let conn = Connection::connect(&url, opts()).await.unwrap();
    let mut events = conn.events();
    conn.send(Outgoing::new("/queue/t", "before"))
        .await
        .unwrap();

    broker.kill();
    within(10, "interrupted", interrupted(&mut events)).await;
    assert!(conn.is_reconnecting());
    let started = Instant::now();
    let err = within(
        10,
        "send fails",
        conn.send(Outgoing::new("/queue/t", "lost")),
    )
    .await
    .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, ClientError::NotConnected { after } if after == Duration::from_millis(600)),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(550),
        "failed after {waited:?}"
    );

    // A send issued while down succeeds once the broker is back in time.
    let pending = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.send(Outgoing::new("/queue/t", "after")).await })
    };
    broker.restart().await;
    within(10, "resumed", resumed(&mut events)).await;
    within(10, "send after restart", pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.failovers(), 1);
    conn.disconnect().await.unwrap();
}

/// Wrong credentials end the connection attempt at once, even with endless
/// retries configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_error_is_not_retried() {
    let broker = Broker::start().await;
    let url = failover_url(&[&broker], "startupMaxReconnectAttempts=-1");
    let bad = ConnectOptions {
        passcode: Some("wrong".into()),
        ..opts()
    };
    let err = within(10, "auth error", Connection::connect(&url, bad))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Auth { .. }), "{err:?}");
}

/// A dead endpoint in the list is skipped; `startupMaxReconnectAttempts`
/// bounds the first connection when nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_skips_dead_endpoints_and_startup_attempts_are_bounded() {
    let broker = Broker::start().await;
    let dead = format!("tcp://127.0.0.1:{}", free_port());
    let text = format!("failover:({dead},{})?randomize=false", broker.url());
    let url: BrokerUrl = text.parse().unwrap();
    let conn = within(10, "connect", Connection::connect(&url, opts()))
        .await
        .unwrap();
    assert_eq!(conn.endpoint(), format!("127.0.0.1:{}", broker.port));
    conn.disconnect().await.unwrap();

    let text = format!("failover:({dead})?startupMaxReconnectAttempts=2&initialReconnectDelay=10");
    let url: BrokerUrl = text.parse().unwrap();
    let err = within(10, "give up", Connection::connect(&url, opts()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
}

/// A transaction open when the connection fails cannot commit: the broker
/// rolled it back. The session itself goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transaction_fails_clearly_after_failover() {
    let mut broker = Broker::start().await;
    let url = failover_url(&[&broker], "initialReconnectDelay=10&maxReconnectDelay=100");
    let conn = Connection::connect(&url, opts()).await.unwrap();
    let mut events = conn.events();
    let tx = conn.begin().await.unwrap();
    tx.send(Outgoing::new("/queue/tx", "in tx")).await.unwrap();
    conn.send(Outgoing::new("/queue/tx-sync", "sync"))
        .await
        .unwrap();

    broker.kill();
    broker.restart().await;
    let (from, to, _) = within(10, "resumed", resumed(&mut events)).await;
    assert_eq!(from, to);

    tx.send(Outgoing::new("/queue/tx", "after failure"))
        .await
        .unwrap();
    let err = tx.commit().await.unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::TransactionLost {
                outcome_unknown: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("rolled back"), "{err}");

    // A new transaction works, and nothing of the lost one was delivered.
    let tx = conn.begin().await.unwrap();
    tx.send(Outgoing::new("/queue/tx", "retried"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut sub = conn
        .subscribe("/queue/tx", AckMode::Auto, SubscribeOptions::default())
        .await
        .unwrap();
    let msg = within(10, "committed message", sub.recv()).await.unwrap();
    assert_eq!(&msg.body[..], b"retried");
    assert_eq!(conn.failovers(), 1);
    conn.disconnect().await.unwrap();
}

/// Events: Interrupted names the endpoint, Connected and Resumed follow with
/// from/to and the downtime; the counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_interruption_and_resumption() {
    let mut a = Broker::start().await;
    let b = Broker::start().await;
    let url = failover_url(
        &[&a, &b],
        "randomize=false&initialReconnectDelay=10&maxReconnectDelay=100",
    );
    let conn = Connection::connect(&url, opts()).await.unwrap();
    let a_ep = format!("127.0.0.1:{}", a.port);
    let b_ep = format!("127.0.0.1:{}", b.port);
    assert_eq!(conn.endpoint(), a_ep);
    let mut events = conn.events();
    // A subscription survives the move (restored on the other broker).
    let mut sub = conn
        .subscribe("/queue/ev", AckMode::Client, SubscribeOptions::default())
        .await
        .unwrap();
    a.kill();
    let mut seen = Vec::new();
    within(10, "three events", async {
        while seen.len() < 3 {
            match events.recv().await {
                Ok(e) => seen.push(e),
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert!(
        matches!(&seen[0], ConnectionEvent::Interrupted { endpoint, .. } if *endpoint == a_ep),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[1], ConnectionEvent::Connected { endpoint } if *endpoint == b_ep),
        "{seen:?}"
    );
    let ConnectionEvent::Resumed { from, to, downtime } = &seen[2] else {
        panic!("{seen:?}")
    };
    assert_eq!((from.as_str(), to.as_str()), (a_ep.as_str(), b_ep.as_str()));
    assert_eq!(conn.failovers(), 1);
    assert_eq!(conn.downtime_total(), *downtime);
    assert_eq!(conn.endpoint(), b_ep);

    conn.send(Outgoing::new("/queue/ev", "on b")).await.unwrap();
    let msg = within(10, "message on b", sub.recv()).await.unwrap();
    assert_eq!(&msg.body[..], b"on b");
    conn.ack(&msg).await.unwrap();
    conn.disconnect().await.unwrap();
}

/// A broker that stops answering without closing its sockets (SIGSTOP: no
/// FIN, no RST) is detected by missed heart-beats; the session resumes once
/// it answers again (SIGCONT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_beats_detect_a_silent_broker() {
    // The broker offers 500 ms heart-beats (its default is 10 s).
    let broker = Broker::start_with(Some("[limits]\nheart_beat_ms = [500, 500]\n")).await;
    let url = failover_url(&[&broker], "initialReconnectDelay=10&maxReconnectDelay=100");
    let conn = Connection::connect(&url, opts()).await.unwrap();
    let mut events = conn.events();
    let pid = broker.child.as_ref().unwrap().id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    };
    signal("-STOP");
    let reason = within(10, "interrupted by missed heart-beats", async {
        loop {
            match events.recv().await {
                Ok(ConnectionEvent::Interrupted { reason, .. }) => return reason,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    signal("-CONT");
    assert!(reason.contains("nothing received"), "{reason}");
    within(20, "resumed", resumed(&mut events)).await;
    conn.send(Outgoing::new("/queue/hb", "x")).await.unwrap();
    conn.disconnect().await.unwrap();
}

fn held(seq: u64) -> Outgoing {
    Outgoing {
        destination: "/queue/held".into(),
        body: format!("m{seq}").into(),
        persistent: Some(true),
        producer: Some(("held-producer".into(), seq)),
        ..Default::default()
    }
}

/// A message the application holds across a failover and acknowledges only after the new
/// connection's redelivery of it already waits in the subscription's buffer reaches the
/// application once: the subscription drops the buffered copy and acknowledges it on the broker
/// (so it does not come back either). With de-duplication only on arrival the copy was buffered
/// before the ACK and then handed out: the "ack racing a failover" of issue 10 (item 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_acknowledged_after_its_redelivery_arrived_is_seen_once() {
    let mut broker = Broker::start().await;
    let url = failover_url(&[&broker], "initialReconnectDelay=10&maxReconnectDelay=100");
    let producer = Connection::connect(&url, opts()).await.unwrap();
    let consumer = Connection::connect(&url, opts()).await.unwrap();
    let mut events = consumer.events();
    let mut sub = consumer
        .subscribe(
            "/queue/held",
            AckMode::ClientIndividual,
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    producer.send(held(1)).await.unwrap();
    let first = within(10, "first delivery", sub.recv()).await.unwrap();
    assert_eq!(&first.body[..], b"m1");

    // The application still holds m1 when the broker dies; the new connection redelivers it.
    broker.kill();
    broker.restart().await;
    within(10, "resumed", resumed(&mut events)).await;
    within(10, "the redelivery buffered", async {
        while sub.buffered() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Now the application acknowledges the copy it holds, and reads on.
    consumer.ack(&first).await.unwrap();
    producer.send(held(2)).await.unwrap();
    let next = within(10, "next message", sub.recv()).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&next.body),
        "m2",
        "the application got m1 twice (redelivered: {})",
        next.redelivered
    );
    assert!(consumer.duplicates_dropped() >= 1);
    consumer.ack(&next).await.unwrap();
    consumer.disconnect().await.unwrap();

    // The broker had the dropped copy acknowledged: nothing comes back.
    producer.send(held(3)).await.unwrap();
    let mut sub = producer
        .subscribe(
            "/queue/held",
            AckMode::ClientIndividual,
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let last = within(10, "last message", sub.recv()).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&last.body),
        "m3",
        "m1 or m2 came back"
    );
    producer.disconnect().await.unwrap();
}

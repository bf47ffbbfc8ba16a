//! End-to-end tests of the `mq-client` subcommands against a small in-process fake STOMP broker
//! that records every frame it receives, so the exact wire behaviour (transactions, receipts,
//! producer stamps, acks, browse) can be asserted without a real broker.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use fabricmq_stomp::{Command, Frame, Item, StompCodec};
use fabricmq_tools::cli::{Cli, Command as Sub};
use fabricmq_tools::common::StopFlag;
use fabricmq_tools::{browse, consumer, perf, producer};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

/// A frame received by the fake broker, with the number of the connection it came on.
type Recorded = (usize, Frame);

struct Subscriber {
    conn: usize,
    id: String,
    client_ack: bool,
    tx: mpsc::UnboundedSender<Frame>,
}

#[derive(Default)]
struct State {
    frames: Vec<Recorded>,
    subscribers: Vec<Subscriber>,
    backlog: VecDeque<Frame>,
    next_id: u64,
    round_robin: usize,
    /// Answer the SEND with this `producer-seq` with an ERROR and close.
    fail_seq: Option<u64>,
}

impl State {
    /// Turns a SEND (or a preloaded frame) into a MESSAGE for `sub`.
    fn message_for(&mut self, send: &Frame, sub_id: &str, client_ack: bool) -> Frame {
        self.next_id += 1;
        let id = format!("m-{}", self.next_id);
        let mut m = Frame::new(Command::Message)
            .header("subscription", sub_id)
            .header("message-id", id.clone());
        if client_ack {
            m = m.header("ack", format!("ack-{id}"));
        }
        for (k, v) in &send.headers {
            if !matches!(
                k.as_str(),
                "receipt" | "transaction" | "content-length" | "message-id" | "subscription"
            ) {
                m = m.header(k.clone(), v.clone());
            }
        }
        m.with_body(send.body.clone())
    }

    /// Delivers `send` to the next subscriber, or keeps it for later.
    fn route(&mut self, send: Frame) {
        self.subscribers.retain(|s| !s.tx.is_closed());
        if self.subscribers.is_empty() {
            self.backlog.push_back(send);
            return;
        }
        let i = self.round_robin % self.subscribers.len();
        self.round_robin += 1;
        let (id, client_ack, tx) = {
            let s = &self.subscribers[i];
            (s.id.clone(), s.client_ack, s.tx.clone())
        };
        let m = self.message_for(&send, &id, client_ack);
        let _ = tx.send(m);
    }
}

struct FakeBroker {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeBroker {
    async fn start() -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                n += 1;
                tokio::spawn(serve(n, stream, st.clone()));
            }
        });
        FakeBroker { addr, state }
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Puts a message on the queue before anyone subscribes.
    fn preload(&self, headers: &[(&str, &str)], body: &str) {
        let mut f = Frame::new(Command::Send).with_body(body.to_owned());
        for (k, v) in headers {
            f = f.header(*k, *v);
        }
        self.state.lock().unwrap().backlog.push_back(f);
    }

    fn fail_on_seq(&self, seq: u64) {
        self.state.lock().unwrap().fail_seq = Some(seq);
    }

    fn frames(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().frames.clone()
    }

    /// The received frames of these commands, in order.
    fn of(&self, commands: &[Command]) -> Vec<Frame> {
        self.frames()
            .into_iter()
            .map(|(_, f)| f)
            .filter(|f| commands.contains(&f.command))
            .collect()
    }
}

async fn serve(conn: usize, stream: TcpStream, state: Arc<Mutex<State>>) {
    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, StompCodec::default());
    let mut writer = FramedWrite::new(w, StompCodec::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let write_task = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if writer.send(f).await.is_err() {
                break;
            }
        }
    });
    let receipt = |f: &Frame, tx: &mpsc::UnboundedSender<Frame>| {
        if let Some(r) = f.get("receipt") {
            let _ = tx.send(Frame::new(Command::Receipt).header("receipt-id", r));
        }
    };
    while let Some(Ok(item)) = reader.next().await {
        let Item::Frame(f) = item else { continue };
        state.lock().unwrap().frames.push((conn, f.clone()));
        match f.command {
            Command::Connect | Command::Stomp => {
                let _ = tx.send(
                    Frame::new(Command::Connected)
                        .header("version", "1.2")
                        .header("heart-beat", "0,0")
                        .header("server", "fake/1"),
                );
            }
            Command::Send => {
                let mut st = state.lock().unwrap();
                let seq = f.get("producer-seq").and_then(|s| s.parse::<u64>().ok());
                if st.fail_seq.is_some() && st.fail_seq == seq {
                    let mut e = Frame::new(Command::Error).header("message", "rejected");
                    if let Some(r) = f.get("receipt") {
                        e = e.header("receipt-id", r);
                    }
                    let _ = tx.send(e);
                    break;
                }
                receipt(&f, &tx);
                st.route(f);
            }
            Command::Subscribe => {
                let id = f.get("id").unwrap_or("?").to_owned();
                receipt(&f, &tx);
                let mut st = state.lock().unwrap();
                if f.get("browser") == Some("true") {
                    let backlog: Vec<Frame> = st.backlog.iter().cloned().collect();
                    for m in backlog {
                        let m = st.message_for(&m, &id, false);
                        let _ = tx.send(m);
                    }
                    let _ = tx.send(
                        Frame::new(Command::Message)
                            .header("subscription", id.as_str())
                            .header("message-id", "browser-end")
                            .header("browser", "end"),
                    );
                    continue;
                }
                let client_ack = f.get("ack").is_some_and(|a| a != "auto");
                while let Some(m) = st.backlog.pop_front() {
                    let m = st.message_for(&m, &id, client_ack);
                    let _ = tx.send(m);
                }
                st.subscribers.push(Subscriber {
                    conn,
                    id,
                    client_ack,
                    tx: tx.clone(),
                });
            }
            Command::Disconnect => {
                receipt(&f, &tx);
                break;
            }
            _ => receipt(&f, &tx),
        }
    }
    state.lock().unwrap().subscribers.retain(|s| s.conn != conn);
    drop(tx);
    let _ = write_task.await;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn cli(args: &[&str]) -> Sub {
    let mut v = vec!["mq-client"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap().command
}

async fn run_producer(
    args: &[&str],
) -> fabricmq_tools::report::Outcome<fabricmq_tools::report::ProducerReport> {
    let Sub::Producer(a) = cli(args) else {
        unreachable!()
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        producer::execute(&a, &StopFlag::new()),
    )
    .await
    .expect("producer finished in time")
    .expect("producer started")
}

async fn run_consumer(
    args: &[&str],
) -> fabricmq_tools::report::Outcome<fabricmq_tools::report::ConsumerReport> {
    let Sub::Consumer(a) = cli(args) else {
        unreachable!()
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        consumer::execute(&a, &StopFlag::new()),
    )
    .await
    .expect("consumer finished in time")
    .expect("consumer started")
}

fn seq_of(f: &Frame) -> u64 {
    f.get("producer-seq").unwrap().parse().unwrap()
}

#[tokio::test]
async fn batched_producer_commits_the_trailing_partial_batch_and_stamps_every_message() {
    let b = FakeBroker::start().await;
    let before = now_ms();
    let out = run_producer(&[
        "producer",
        "--brokerUrl",
        &b.url(),
        "--destination",
        "queue://orders",
        "--count",
        "10",
        "--batchSize",
        "4",
        "--ttl",
        "5000",
        "--clientId",
        "me",
        "--priority",
        "7",
        "--header",
        "region=eu",
        "--json",
    ])
    .await;
    let after = now_ms();
    assert!(out.failure.is_none(), "{:?}", out.failure);
    assert_eq!((out.report.sent, out.report.receipted), (10, 10));

    let connect = &b.of(&[Command::Connect, Command::Stomp])[0];
    assert_eq!(connect.get("client-id"), Some("me"));

    let tx_frames = b.of(&[
        Command::Begin,
        Command::Send,
        Command::Commit,
        Command::Abort,
    ]);
    let shape: Vec<&str> = tx_frames.iter().map(|f| f.command.as_str()).collect();
    let mut want = Vec::new();
    for n in [4, 4, 2] {
        want.push("BEGIN");
        want.extend(std::iter::repeat_n("SEND", n));
        want.push("COMMIT");
    }
    assert_eq!(shape, want);
    let mut current_tx = None;
    let mut seqs = Vec::new();
    for f in &tx_frames {
        match f.command {
            Command::Begin => current_tx = f.get("transaction").map(str::to_owned),
            Command::Commit => {
                assert_eq!(f.get("transaction"), current_tx.as_deref());
                assert!(f.get("receipt").is_some(), "COMMIT waits for a receipt");
            }
            Command::Send => {
                assert_eq!(f.get("transaction"), current_tx.as_deref());
                assert_eq!(f.get("destination"), Some("/queue/orders"));
                // `<clientId>-<run id>-<thread>`: unique per run.
                let pid = f.get("producer-id").unwrap();
                assert!(
                    pid.starts_with("me-") && pid.ends_with("-1") && pid.len() == 3 + 8 + 2,
                    "{pid}"
                );
                assert_eq!(f.get("persistent"), Some("true"));
                assert_eq!(f.get("priority"), Some("7"));
                assert_eq!(f.get("region"), Some("eu"));
                let expires: u64 = f.get("expires").unwrap().parse().unwrap();
                assert!(
                    (before + 5000..=after + 5000).contains(&expires),
                    "expires {expires} not in [{}, {}]",
                    before + 5000,
                    after + 5000
                );
                assert_eq!(f.body.len(), 100);
                seqs.push(seq_of(f));
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn receipted_producer_waits_for_a_receipt_per_message() {
    let b = FakeBroker::start().await;
    let out = run_producer(&[
        "producer",
        "--brokerUrl",
        &b.url(),
        "--count",
        "5",
        "--persistent",
        "false",
        "--json",
    ])
    .await;
    assert!(out.failure.is_none());
    assert_eq!((out.report.sent, out.report.receipted), (5, 5));
    let sends = b.of(&[Command::Send]);
    assert_eq!(sends.len(), 5);
    assert!(sends.iter().all(|f| f.get("receipt").is_some()));
    assert!(sends.iter().all(|f| f.get("persistent") == Some("false")));
    assert!(
        sends.iter().all(|f| f.get("expires").is_none()),
        "no --ttl, no expires"
    );
    // Without --clientId the producer id is a UUID (simple form) suffixed with the thread number.
    let id = sends[0].get("producer-id").unwrap();
    assert!(id.ends_with("-1") && id.len() == 34, "{id}");
    assert!(sends.iter().all(|f| f.get("producer-id") == Some(id)));
}

#[tokio::test]
async fn pipelined_producer_asks_for_receipts_on_schedule() {
    let b = FakeBroker::start().await;
    let out = run_producer(&[
        "producer",
        "--brokerUrl",
        &b.url(),
        "--count",
        "7",
        "--receipts",
        "false",
        "--receiptEvery",
        "3",
        "--message",
        "hi",
        "--json",
    ])
    .await;
    assert!(out.failure.is_none());
    assert_eq!((out.report.sent, out.report.receipted), (7, 7));
    let sends = b.of(&[Command::Send]);
    let receipted: Vec<u64> = sends
        .iter()
        .filter(|f| f.get("receipt").is_some())
        .map(seq_of)
        .collect();
    assert_eq!(receipted, [3, 6, 7]);
    assert!(sends.iter().all(|f| &f.body[..] == b"hi"));
}

#[tokio::test]
async fn parallel_producers_have_their_own_connections_and_ids() {
    let b = FakeBroker::start().await;
    let out = run_producer(&[
        "producer",
        "--brokerUrl",
        &b.url(),
        "--count",
        "3",
        "--parallelThreads",
        "2",
        "--clientId",
        "me",
        "--json",
    ])
    .await;
    assert!(out.failure.is_none());
    assert_eq!(out.report.sent, 6);
    let mut client_ids: Vec<String> = b
        .of(&[Command::Connect, Command::Stomp])
        .iter()
        .map(|f| f.get("client-id").unwrap().to_owned())
        .collect();
    client_ids.sort();
    assert_eq!(client_ids, ["me-1", "me-2"]);
    let sends = b.of(&[Command::Send]);
    let mut producer_ids: Vec<&str> = sends
        .iter()
        .map(|f| f.get("producer-id").unwrap())
        .collect();
    producer_ids.sort();
    producer_ids.dedup();
    assert_eq!(producer_ids.len(), 2, "{producer_ids:?}");
    for (id, thread) in producer_ids.iter().zip(["-1", "-2"]) {
        assert!(id.starts_with("me-") && id.ends_with(thread), "{id}");
        let seqs: Vec<u64> = sends
            .iter()
            .filter(|f| f.get("producer-id") == Some(id))
            .map(seq_of)
            .collect();
        assert_eq!(seqs, [1, 2, 3], "{id}");
    }
}

#[tokio::test]
async fn a_rejected_send_fails_the_run() {
    let b = FakeBroker::start().await;
    b.fail_on_seq(3);
    let out = run_producer(&[
        "producer",
        "--brokerUrl",
        &b.url(),
        "--count",
        "5",
        "--json",
    ])
    .await;
    assert_eq!((out.report.sent, out.report.receipted), (2, 2));
    let err = format!("{:#}", out.failure.expect("the run failed"));
    assert!(err.contains("message 3"), "{err}");
}

#[tokio::test]
async fn consumer_accounts_gaps_duplicates_and_redeliveries() {
    let b = FakeBroker::start().await;
    for (id, seq, redelivered) in [
        ("p-1", "1", false),
        ("p-1", "2", false),
        ("p-1", "2", true),  // duplicate, redelivered
        ("p-1", "4", false), // 3 is missing
        ("p-1", "5", false),
        ("q-1", "2", false), // 1 is missing
    ] {
        let mut h = vec![("producer-id", id), ("producer-seq", seq)];
        if redelivered {
            h.push(("redelivered", "true"));
        }
        b.preload(&h, "x");
    }
    b.preload(&[], "no producer headers");
    let out = run_consumer(&[
        "consumer",
        "--brokerUrl",
        &b.url(),
        "--count",
        "7",
        "--ack",
        "client",
        "--batchSize",
        "3",
        "--json",
    ])
    .await;
    assert!(out.failure.is_none(), "{:?}", out.failure);
    let r = &out.report;
    assert_eq!(
        (r.received, r.gaps, r.duplicates, r.redelivered),
        (7, 2, 1, 1)
    );
    let sub = &b.of(&[Command::Subscribe])[0];
    assert_eq!(sub.get("ack"), Some("client"));
    // Cumulative acks every 3 messages, and the trailing partial batch at the end.
    let acks: Vec<String> = b
        .of(&[Command::Ack])
        .iter()
        .map(|f| f.get("id").unwrap().to_owned())
        .collect();
    assert_eq!(acks, ["ack-m-3", "ack-m-6", "ack-m-7"]);
}

#[tokio::test]
async fn individual_acks_ack_every_message_with_prefetch() {
    let b = FakeBroker::start().await;
    for seq in ["1", "2", "3"] {
        b.preload(&[("producer-id", "p"), ("producer-seq", seq)], "x");
    }
    let out = run_consumer(&[
        "consumer",
        "--brokerUrl",
        &b.url(),
        "--count",
        "3",
        "--ack",
        "individual",
        "--prefetch",
        "10",
        "--json",
    ])
    .await;
    assert!(out.failure.is_none());
    let sub = &b.of(&[Command::Subscribe])[0];
    assert_eq!(sub.get("ack"), Some("client-individual"));
    assert_eq!(sub.get("prefetch"), Some("10"));
    assert_eq!(b.of(&[Command::Ack]).len(), 3);
}

#[tokio::test]
async fn consumer_fails_when_fewer_messages_arrive_before_the_timeout() {
    let b = FakeBroker::start().await;
    b.preload(&[("producer-id", "p"), ("producer-seq", "1")], "x");
    b.preload(&[("producer-id", "p"), ("producer-seq", "2")], "x");
    let out = run_consumer(&[
        "consumer",
        "--brokerUrl",
        &b.url(),
        "--count",
        "5",
        "--timeout",
        "300",
        "--json",
    ])
    .await;
    assert_eq!(out.report.received, 2);
    let err = format!("{:#}", out.failure.expect("short run fails"));
    assert!(err.contains("received 2 of 5"), "{err}");

    // --count 0 consumes until idle and is not a failure.
    let out = run_consumer(&[
        "consumer",
        "--brokerUrl",
        &b.url(),
        "--count",
        "0",
        "--timeout",
        "200",
        "--json",
    ])
    .await;
    assert!(out.failure.is_none());
}

#[tokio::test]
async fn parallel_consumers_on_a_queue_share_the_count_and_merge_accounting() {
    let b = FakeBroker::start().await;
    let consumer = {
        let url = b.url();
        tokio::spawn(async move {
            run_consumer(&[
                "consumer",
                "--brokerUrl",
                &url,
                "--count",
                "20",
                "--parallelThreads",
                "2",
                "--timeout",
                "5000",
                "--json",
            ])
            .await
        })
    };
    // Wait for both subscriptions, then produce.
    for _ in 0..200 {
        if b.of(&[Command::Subscribe]).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p = run_producer(&[
        "producer",
        "--brokerUrl",
        &b.url(),
        "--count",
        "20",
        "--clientId",
        "x",
        "--json",
    ])
    .await;
    assert_eq!(p.report.sent, 20);
    let out = consumer.await.unwrap();
    assert!(out.failure.is_none(), "{:?}", out.failure);
    let r = &out.report;
    assert_eq!((r.received, r.gaps, r.duplicates), (20, 0, 0));
}

#[tokio::test]
async fn browse_lists_until_the_end_marker() {
    let b = FakeBroker::start().await;
    for i in 0..3 {
        b.preload(&[("n", &i.to_string())], "body");
    }
    let Sub::Browse(a) = cli(&["browse", "--brokerUrl", &b.url(), "--json"]) else {
        unreachable!()
    };
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        browse::execute(&a, &StopFlag::new()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(out.failure.is_none());
    assert_eq!(out.report.browsed, 3);
    assert_eq!(b.of(&[Command::Subscribe])[0].get("browser"), Some("true"));
    assert!(b.of(&[Command::Unsubscribe]).is_empty());

    let Sub::Browse(a) = cli(&["browse", "--brokerUrl", &b.url(), "--count", "2", "--json"]) else {
        unreachable!()
    };
    let out = browse::execute(&a, &StopFlag::new()).await.unwrap();
    assert_eq!(out.report.browsed, 2);
}

#[tokio::test]
async fn perf_measures_both_latencies() {
    let b = FakeBroker::start().await;
    let Sub::Perf(a) = cli(&[
        "perf",
        "--brokerUrl",
        &b.url(),
        "--producers",
        "2",
        "--consumers",
        "2",
        "--count",
        "300",
        "--receiptEvery",
        "10",
        "--size",
        "64",
        "--warmup",
        "20",
        "--persistent",
        "false",
        "--ack",
        "client",
        "--json",
    ]) else {
        unreachable!()
    };
    let out = tokio::time::timeout(Duration::from_secs(60), perf::execute(&a, &StopFlag::new()))
        .await
        .expect("perf finished in time")
        .expect("perf started");
    assert!(out.failure.is_none(), "{:?}", out.failure);
    let r = &out.report;
    assert_eq!(
        (r.producers, r.consumers, r.sent, r.received),
        (2, 2, 600, 600)
    );
    assert!(r.send_rate > 0.0 && r.recv_rate > 0.0);
    assert!(r.receipt_latency_ms.max > 0.0);
    assert!(r.delivery_latency_ms.max > 0.0);
    assert!(r.delivery_latency_ms.p50 <= r.delivery_latency_ms.p99);

    let sends = b.of(&[Command::Send]);
    assert_eq!(sends.len(), 2 * (300 + 20));
    // Receipts on every 10th measured message plus the last warm-up message of each producer.
    let receipts = sends.iter().filter(|f| f.get("receipt").is_some()).count();
    assert_eq!(receipts, 2 * (30 + 1));
    assert!(sends.iter().all(|f| f.body.len() == 64));
    assert!(sends.iter().all(|f| f.get("persistent") == Some("false")));
    let json = serde_json::to_value(r).unwrap();
    for key in [
        "sent",
        "received",
        "elapsed_s",
        "send_rate",
        "recv_rate",
        "failovers",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
}

#[tokio::test]
async fn perf_drains_a_backlog_with_no_producers() {
    let b = FakeBroker::start().await;
    for _ in 0..50 {
        b.preload(&[], "0123456789abcdef");
    }
    let Sub::Perf(a) = cli(&[
        "perf",
        "--brokerUrl",
        &b.url(),
        "--producers",
        "0",
        "--consumers",
        "1",
        "--count",
        "50",
        "--json",
    ]) else {
        unreachable!()
    };
    let out = tokio::time::timeout(Duration::from_secs(30), perf::execute(&a, &StopFlag::new()))
        .await
        .unwrap()
        .unwrap();
    assert!(out.failure.is_none(), "{:?}", out.failure);
    assert_eq!((out.report.sent, out.report.received), (0, 50));
}

#[tokio::test]
async fn connection_refused_is_one_clear_error() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let Sub::Producer(a) = cli(&["producer", "--brokerUrl", &url]) else {
        unreachable!()
    };
    let err = producer::execute(&a, &StopFlag::new()).await.unwrap_err();
    let line = format!("{err:#}");
    assert!(line.contains(&port.to_string()), "{line}");
    assert!(!line.contains('\n'), "{line}");
}

//! Resource limits under load: a real `mq-broker` process, over real loopback TCP, stays
//! responsive to other clients and keeps its resident memory bounded under
//! - thousands of idle (CONNECTed, then silent) connections;
//! - a producer far faster than its consumer (persistent and non-persistent backlogs spill to disk);
//! - consumers that never read their socket (queue prefetch windows, topic slow-consumer cut-off,
//!   including tiny topic messages whose bodies are smaller than their bookkeeping);
//! - floods of malformed frames from several connections.
//!
//! Memory is the broker's `VmRSS` from `/proc/<pid>/status`, sampled every 10 ms by a thread while
//! the load runs. Responsiveness is functional: a separate client's receipted round trip must
//! complete within [`ROUND_TRIP`] (generous; no wall-clock thresholds on throughput). Every test
//! prints what it measured (`cargo test --test resource_limits -- --nocapture`).
//!
//! The tests of this file run one at a time (a file-wide lock): each loads a small machine fully,
//! and their figures mean more when measured alone.
//!
//! Broker problems these tests found (fixed in `broker/src/connection.rs`, `destination.rs`,
//! `message.rs`): two 64 KiB socket buffers reserved per connection up front (~139 KB of RSS per
//! idle connection with mimalloc's huge-page-backed arenas); the slow-consumer limit counting only
//! body bytes (a topic subscriber that never reads could queue millions of empty messages); small
//! topic bodies pinning the producer's whole read buffer; frames pipelined behind CONNECT left
//! unread until the client sent more.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fabricmq_stomp::{encode, Command, Frame, Version};
use fabricmq_tests::process::{BrokerOptions, BrokerProcess};
use fabricmq_tests::procfs::{self, mib, RssSampler};
use fabricmq_tests::raw::{body, Raw};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

/// Longest a receipted round trip of the probe client may take while the broker is under load.
const ROUND_TRIP: Duration = Duration::from_secs(10);
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// One test at a time (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The broker's resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    procfs::rss_kib(pid).expect("VmRSS of a running broker")
}

/// Raises this process's soft open-file limit to its hard limit (the broker does the same for
/// itself at start-up); returns the resulting soft limit.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let target = if hard == RLIM_INFINITY { 1 << 20 } else { hard };
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        return target;
    }
    soft
}

/// Reads frames until the RECEIPT for `id` (at most `within`); returns the frames before it.
async fn until_receipt(c: &mut Raw, id: &str, within: Duration) -> Vec<Frame> {
    let deadline = Instant::now() + within;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = c
            .recv_within(left)
            .await
            .unwrap_or_else(|| panic!("no RECEIPT {id} within {within:?}"));
        if f.command == Command::Receipt && f.get("receipt-id") == Some(id) {
            return before;
        }
        assert_ne!(f.command, Command::Error, "ERROR instead of receipt: {f:?}");
        before.push(f);
    }
}

/// A client that keeps doing receipted round trips (SEND with receipt to a queue it consumes)
/// to show the broker still serves others.
struct Probe {
    c: Raw,
    dest: String,
    n: u64,
    worst: Duration,
    total: Duration,
}

impl Probe {
    async fn connect(addr: SocketAddr, dest: &str) -> Probe {
        let mut c = Raw::connect(addr, "admin", "admin").await;
        c.subscribe("probe", dest, "auto", &[]).await;
        Probe {
            c,
            dest: dest.to_string(),
            n: 0,
            worst: Duration::ZERO,
            total: Duration::ZERO,
        }
    }

    /// One persistent SEND with a receipt, and its delivery back to us, within [`ROUND_TRIP`].
    async fn round_trip(&mut self) -> Duration {
        self.n += 1;
        let start = Instant::now();
        let text = format!("probe-{}", self.n);
        let id = format!("probe-r{}", self.n);
        self.c
            .send(
                Frame::new(Command::Send)
                    .header("destination", self.dest.as_str())
                    .header("receipt", id.as_str())
                    .with_body(text.clone()),
            )
            .await;
        let mut seen = until_receipt(&mut self.c, &id, ROUND_TRIP).await;
        if seen.is_empty() {
            let left = ROUND_TRIP.saturating_sub(start.elapsed());
            let m = self.c.recv_within(left).await.unwrap_or_else(|| {
                panic!("probe message {text} not delivered within {ROUND_TRIP:?}")
            });
            seen.push(m);
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].command, Command::Message, "{:?}", seen[0]);
        assert_eq!(body(&seen[0]), text);
        let took = start.elapsed();
        self.worst = self.worst.max(took);
        self.total += took;
        took
    }

    /// Round trips back to back until `stop` is set; returns the probe with its statistics.
    fn run_until(mut self, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Probe> {
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                self.round_trip().await;
            }
            self
        })
    }

    fn report(&self, what: &str) {
        let mean = if self.n == 0 {
            Duration::ZERO
        } else {
            self.total / self.n as u32
        };
        println!(
            "{what}: {} probe round trips, mean {:.1} ms, worst {:.1} ms",
            self.n,
            mean.as_secs_f64() * 1e3,
            self.worst.as_secs_f64() * 1e3
        );
    }
}

fn send_frame(dest: &str, persistent: Option<bool>, n: usize, body: Bytes) -> Frame {
    let mut f = Frame::new(Command::Send)
        .header("destination", dest)
        .header("n", n.to_string());
    if let Some(p) = persistent {
        f.push("persistent", if p { "true" } else { "false" });
    }
    f.with_body(body)
}

/// Writes `frames` pipelined (encoded in batches of about 1 MiB), without receipts.
async fn pipeline(c: &mut Raw, frames: impl Iterator<Item = Frame>) {
    let mut out = BytesMut::new();
    for f in frames {
        encode(&f, Version::V1_2, &mut out);
        if out.len() >= MIB as usize {
            c.stream.write_all(&out).await.expect("producer write");
            out.clear();
        }
    }
    c.stream.write_all(&out).await.expect("producer write");
}

/// The `n` header of a message we sent.
fn index(m: &Frame) -> usize {
    assert_eq!(m.command, Command::Message, "{m:?}");
    m.get("n").and_then(|n| n.parse().ok()).expect("n header")
}

/// Scenario 1: thousands of idle connections. Every connection is a descriptor and a task; the
/// broker raises its own open-file limit and keeps them all, stays responsive to another client,
/// and each costs it a few KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_leave_the_broker_responsive_and_small() {
    const WANTED: usize = 5000;
    let _serial = SERIAL.lock().await;
    let limit = raise_open_file_limit();
    // This process holds one descriptor per connection too (and the broker inherits the limit).
    let idle_n = WANTED.min(limit.saturating_sub(256) as usize);
    if idle_n < WANTED {
        println!("open file limit {limit}: testing {idle_n} idle connections, not {WANTED}");
    }
    let b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let pid = b.pid().unwrap();
    let addr = b.addr;
    let mut probe = Probe::connect(addr, "/queue/idle-probe").await;
    probe.round_trip().await;
    let before = rss_kib(pid);
    let sampler = RssSampler::start(pid);

    // `Raw::connect` asks for heart-beat 0,0: with nothing to miss and no idle timeout configured,
    // the broker keeps these connections however long they stay silent.
    let start = Instant::now();
    let mut idle: Vec<Raw> = tokio::time::timeout(
        Duration::from_secs(60),
        futures::stream::iter(0..idle_n)
            .map(|_| Raw::connect(addr, "admin", "admin"))
            .buffer_unordered(64)
            .collect::<Vec<Raw>>(),
    )
    .await
    .expect("idle connections opened within 60s");
    let opened_in = start.elapsed();
    let with_idle = rss_kib(pid);

    // Another client still gets through at once: a fresh connection, a receipted send, delivery.
    let t = Instant::now();
    tokio::time::timeout(ROUND_TRIP, async {
        let mut fresh = Raw::connect(addr, "admin", "admin").await;
        fresh.subscribe("s", "/queue/idle-fresh", "auto", &[]).await;
        fresh
            .send(
                Frame::new(Command::Send)
                    .header("destination", "/queue/idle-fresh")
                    .header("receipt", "fresh")
                    .with_body("hello"),
            )
            .await;
        let mut seen = until_receipt(&mut fresh, "fresh", ROUND_TRIP).await;
        if seen.is_empty() {
            seen.push(fresh.expect(Command::Message).await);
        }
        assert_eq!(body(&seen[0]), "hello");
    })
    .await
    .expect("a fresh client's round trip completes within 10s");
    let fresh_took = t.elapsed();
    let probe_took = probe.round_trip().await;

    // Every idle connection is still open and served: one receipt round trip on each.
    let t = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(60),
        futures::stream::iter(idle.iter_mut()).for_each_concurrent(64, |r| async move {
            r.barrier().await;
        }),
    )
    .await
    .expect("every idle connection answers within 60s");
    let barriers_took = t.elapsed();
    let after_use = rss_kib(pid);
    let peak = sampler.finish();

    drop(idle);
    probe.round_trip().await;
    let after_close = rss_kib(pid);

    let per_conn = (with_idle.saturating_sub(before)) * KIB / idle_n as u64;
    println!(
        "idle connections: {idle_n} opened in {:.2}s ({:.0}/s); broker RSS before {}, with idle {}, \
         after a receipt on each {}, peak {}, after closing {}; {per_conn} bytes per idle connection",
        opened_in.as_secs_f64(),
        idle_n as f64 / opened_in.as_secs_f64(),
        mib(before),
        mib(with_idle),
        mib(after_use),
        mib(peak),
        mib(after_close),
    );
    println!(
        "idle connections: fresh client's round trip {:.1} ms, probe round trip {:.1} ms, a receipt on \
         each idle connection in {:.2}s",
        fresh_took.as_secs_f64() * 1e3,
        probe_took.as_secs_f64() * 1e3,
        barriers_took.as_secs_f64()
    );
    assert!(
        peak < 512 * KIB,
        "broker RSS peaked at {} with {idle_n} idle connections",
        mib(peak)
    );
    assert!(
        b.log_text().contains("open file limit"),
        "the broker logs its open-file limit"
    );
    b.assert_no_panic();
}

/// Scenario 2: a producer far faster than its consumer. 200 MiB of 64 KiB messages, half
/// persistent, half not, sent as fast as the broker takes them without receipts while the only
/// consumer (client ack, prefetch 1) dawdles; memory stays bounded (bodies past `max_memory` live
/// in the journal or the temporary store) and every message is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_far_faster_than_its_consumer_is_absorbed_on_disk_and_all_is_delivered() {
    const BODY: usize = 64 * 1024;
    const N: usize = 3200; // 200 MiB
    const DEST: &str = "/queue/flood";
    let _serial = SERIAL.lock().await;
    let b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let pid = b.pid().unwrap();
    let addr = b.addr;
    let before = rss_kib(pid);
    let sampler = RssSampler::start(pid);

    let producing = Arc::new(AtomicBool::new(true));
    let mut consumer = Raw::connect(addr, "admin", "admin").await;
    consumer
        .subscribe("slow", DEST, "client", &[("prefetch", "1")])
        .await;
    let consumer = {
        let producing = producing.clone();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut while_producing = 0usize;
            while seen.len() < N {
                let m = consumer
                    .recv_within(Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|| panic!("stalled after {} messages", seen.len()));
                let i = index(&m);
                assert_eq!(m.body.len(), BODY);
                assert_eq!(
                    m.get("persistent"),
                    Some(if i.is_multiple_of(2) { "true" } else { "false" })
                );
                assert!(seen.insert(i), "message {i} delivered twice");
                if producing.load(Ordering::Relaxed) {
                    // The deliberate slowness: ~50 messages/s (3 MiB/s) while the producer runs.
                    while_producing += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                consumer.ack(&m).await;
            }
            // Nothing beyond what was sent.
            assert!(consumer.barrier().await.is_empty(), "extra messages");
            (seen, while_producing)
        })
    };
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = Probe::connect(addr, "/queue/flood-probe")
        .await
        .run_until(probe_stop.clone());

    let body_bytes = Bytes::from(vec![b'f'; BODY]);
    let mut producer = Raw::connect(addr, "admin", "admin").await;
    let start = Instant::now();
    pipeline(
        &mut producer,
        (0..N - 1).map(|i| send_frame(DEST, Some(i.is_multiple_of(2)), i, body_bytes.clone())),
    )
    .await;
    // The last one asks for a receipt: every earlier frame was taken and journaled before it.
    let last = send_frame(
        DEST,
        Some((N - 1).is_multiple_of(2)),
        N - 1,
        body_bytes.clone(),
    )
    .header("receipt", "last");
    producer.send(last).await;
    until_receipt(&mut producer, "last", Duration::from_secs(60)).await;
    let produced_in = start.elapsed();
    producing.store(false, Ordering::Relaxed);
    let peak_producing = sampler.peak();
    probe_stop.store(true, Ordering::Relaxed);
    let probe = probe.await.unwrap();

    let (seen, slow) = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .expect("backlog drained within 60s")
        .unwrap();
    let total = start.elapsed();
    let peak = sampler.finish();
    let after = rss_kib(pid);
    assert_eq!(seen.len(), N);
    assert_eq!(seen, (0..N).collect::<HashSet<_>>());
    let mb = (N * BODY) as f64 / MIB as f64;
    println!(
        "fast producer: {N} x 64 KiB ({mb:.0} MiB, half persistent) accepted in {:.2}s ({:.1} MiB/s) \
         while the consumer took {slow}; backlog of {} drained, all {N} delivered in {:.2}s overall",
        produced_in.as_secs_f64(),
        mb / produced_in.as_secs_f64(),
        N - slow,
        total.as_secs_f64()
    );
    println!(
        "fast producer: broker RSS before {}, peak while producing {}, peak {}, after drain {}",
        mib(before),
        mib(peak_producing),
        mib(peak),
        mib(after)
    );
    probe.report("fast producer");
    assert!(peak < 400 * KIB, "broker RSS peaked at {}", mib(peak));
    b.assert_no_panic();
}

/// Scenario 3: consumers that never read their socket while a producer sends a lot. A queue
/// consumer with a huge prefetch window holds at most one outbound buffer of encoded messages
/// (the rest wait in the queue or on disk); a topic subscriber is cut off as a slow consumer.
/// Other clients are unaffected and nothing is lost for the queue consumer once it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_never_read_do_not_make_the_broker_buffer_without_bound() {
    const BODY: usize = 64 * 1024;
    const N: usize = 1600; // 100 MiB to the queue and 100 MiB to the topic
    let _serial = SERIAL.lock().await;
    let b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let pid = b.pid().unwrap();
    let addr = b.addr;
    let before = rss_kib(pid);
    let sampler = RssSampler::start(pid);

    let mut lazy_queue = Raw::connect(addr, "admin", "admin").await;
    lazy_queue
        .subscribe("q", "/queue/hoard", "client", &[("prefetch", "1000000")])
        .await;
    let mut lazy_topic = Raw::connect(addr, "admin", "admin").await;
    lazy_topic.subscribe("t", "/topic/hoard", "auto", &[]).await;
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = Probe::connect(addr, "/queue/hoard-probe")
        .await
        .run_until(probe_stop.clone());

    let body_bytes = Bytes::from(vec![b'h'; BODY]);
    let mut producer = Raw::connect(addr, "admin", "admin").await;
    let start = Instant::now();
    pipeline(
        &mut producer,
        (0..N).flat_map(|i| {
            [
                send_frame(
                    "/queue/hoard",
                    Some(i.is_multiple_of(2)),
                    i,
                    body_bytes.clone(),
                ),
                send_frame("/topic/hoard", None, i, body_bytes.clone()),
            ]
        }),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), producer.barrier())
        .await
        .expect("producer's barrier within 60s");
    let produced_in = start.elapsed();
    probe_stop.store(true, Ordering::Relaxed);
    let probe = probe.await.unwrap();
    let peak_hoarding = sampler.peak();
    let hoarding = rss_kib(pid);

    // The topic subscriber was cut off: what it was sent before, then the ERROR, then EOF.
    let mut topic_got = 0usize;
    let error = loop {
        let f = lazy_topic
            .recv_within(Duration::from_secs(10))
            .await
            .expect("the lazy topic subscriber gets an ERROR, not an endless stream");
        match f.command {
            Command::Message => topic_got += 1,
            Command::Error => break f,
            _ => panic!("unexpected {f:?}"),
        }
    };
    assert!(
        error
            .get("message")
            .is_some_and(|m| m.starts_with("slow consumer")),
        "{error:?}"
    );
    assert!(lazy_topic.recv().await.is_none(), "closed after the ERROR");
    assert!(topic_got < N, "the topic subscriber got everything");

    // The queue consumer gets everything, in order, once it reads.
    let mut queue_got = Vec::new();
    let mut last = None;
    while queue_got.len() < N {
        let m = lazy_queue
            .recv_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("queue consumer stalled after {}", queue_got.len()));
        queue_got.push(index(&m));
        last = Some(m);
    }
    lazy_queue.ack(&last.unwrap()).await;
    assert!(lazy_queue.barrier().await.is_empty(), "extra messages");
    assert_eq!(queue_got, (0..N).collect::<Vec<_>>());
    let peak = sampler.finish();
    println!(
        "never-reading consumers: {N} x 64 KiB to a queue and {N} to a topic accepted in {:.2}s \
         ({:.1} MiB/s); the topic subscriber got {topic_got} then ERROR {:?}; the queue consumer \
         got all {N} afterwards",
        produced_in.as_secs_f64(),
        (2 * N * BODY) as f64 / MIB as f64 / produced_in.as_secs_f64(),
        error.get("message").unwrap_or("")
    );
    println!(
        "never-reading consumers: broker RSS before {}, peak while hoarding {}, with both still \
         unread {}, peak {}",
        mib(before),
        mib(peak_hoarding),
        mib(hoarding),
        mib(peak)
    );
    probe.report("never-reading consumers");
    assert!(peak < 400 * KIB, "broker RSS peaked at {}", mib(peak));
    b.assert_no_panic();
}

/// Scenario 3, small messages: the slow-consumer limit of a topic subscriber must count what a
/// queued message costs, not only its body, or a subscriber that never reads could hold millions
/// of empty messages. Also: a small topic body must not keep the producer's whole read buffer
/// alive (here each tiny message follows a 60 KiB one that nobody keeps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_topic_messages_to_a_subscriber_that_never_reads_are_bounded_too() {
    const TINY: usize = 300_000;
    const PAIRS: usize = 6000;
    let _serial = SERIAL.lock().await;
    let b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let pid = b.pid().unwrap();
    let addr = b.addr;
    let before = rss_kib(pid);
    let sampler = RssSampler::start(pid);

    // Phase 1: empty bodies.
    let mut lazy = Raw::connect(addr, "admin", "admin").await;
    lazy.subscribe("t", "/topic/tiny", "auto", &[]).await;
    let mut producer = Raw::connect(addr, "admin", "admin").await;
    let start = Instant::now();
    pipeline(
        &mut producer,
        (0..TINY).map(|i| send_frame("/topic/tiny", None, i, Bytes::new())),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), producer.barrier())
        .await
        .expect("producer's barrier within 60s");
    let tiny_in = start.elapsed();
    let peak_tiny = sampler.peak();
    let mut got = 0usize;
    let error = loop {
        let Some(f) = lazy.recv_within(Duration::from_secs(10)).await else {
            break None;
        };
        match f.command {
            Command::Message => got += 1,
            Command::Error => break Some(f),
            _ => panic!("unexpected {f:?}"),
        }
    };
    println!(
        "tiny topic messages: {TINY} empty messages in {:.2}s ({:.0}/s); the subscriber that never \
         read got {got} and then {:?}; broker RSS before {}, peak {}",
        tiny_in.as_secs_f64(),
        TINY as f64 / tiny_in.as_secs_f64(),
        error.as_ref().and_then(|e| e.get("message")),
        mib(before),
        mib(peak_tiny)
    );
    let error = error.unwrap_or_else(|| panic!("no ERROR after {got} of {TINY} tiny messages"));
    assert!(
        error
            .get("message")
            .is_some_and(|m| m.starts_with("slow consumer")),
        "{error:?}"
    );

    // Phase 2: each 1-byte topic message is decoded from the same read buffer as a 60 KiB frame
    // sent to a topic without subscribers (dropped at once).
    let mut lazy = Raw::connect(addr, "admin", "admin").await;
    lazy.subscribe("t", "/topic/small", "auto", &[]).await;
    let big = Bytes::from(vec![b'v'; 60 * 1024]);
    let small = Bytes::from_static(b"s");
    let before_pairs = rss_kib(pid);
    let start = Instant::now();
    pipeline(
        &mut producer,
        (0..PAIRS).flat_map(|i| {
            [
                send_frame("/topic/void", None, i, big.clone()),
                send_frame("/topic/small", None, i, small.clone()),
            ]
        }),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), producer.barrier())
        .await
        .expect("producer's barrier within 60s");
    let pairs_in = start.elapsed();
    let with_pairs = rss_kib(pid);
    let mut got = Vec::new();
    while got.len() < PAIRS {
        let m = lazy
            .recv_within(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("small messages stalled after {}", got.len()));
        assert_eq!(&m.body[..], b"s");
        got.push(index(&m));
    }
    assert_eq!(got, (0..PAIRS).collect::<Vec<_>>());
    let peak = sampler.finish();
    println!(
        "small topic bodies: {PAIRS} x (60 KiB unsubscribed + 1 B to a subscriber that had not read \
         yet) in {:.2}s; broker RSS before {}, with all {PAIRS} queued {}, peak {}",
        pairs_in.as_secs_f64(),
        mib(before_pairs),
        mib(with_pairs),
        mib(peak)
    );
    assert!(peak < 256 * KIB, "broker RSS peaked at {}", mib(peak));
    b.assert_no_panic();
}

/// A bad input and the ERROR `message` the broker answers it with (None: any message).
struct Bad {
    what: &'static str,
    /// Send CONNECT first.
    login: bool,
    bytes: Vec<u8>,
    expect: Option<&'static str>,
}

fn bad_inputs() -> Vec<Bad> {
    // Deterministic garbage (xorshift): no rand dependency, same bytes every run.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let garbage: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut too_many = b"SEND\ndestination:/queue/bad\n".to_vec();
    for i in 0..100_000 {
        too_many.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    let mut long_line = b"SEND\ndestination:/queue/bad\nx:".to_vec();
    long_line.extend(std::iter::repeat_n(b'l', 64 * 1024));
    long_line.extend_from_slice(b"\n\nx\0");
    let mut endless = b"SEND\ndestination:/queue/bad\n\n".to_vec();
    endless.extend(std::iter::repeat_n(b'e', 11 << 20));
    let mut announced = b"SEND\ndestination:/queue/bad\ncontent-length:104857600\n\n".to_vec();
    announced.extend(std::iter::repeat_n(b'a', 256 * 1024));
    let v = |b: &[u8]| b.to_vec();
    let mut behind_connect =
        b"CONNECT\naccept-version:1.2\nlogin:admin\npasscode:admin\nheart-beat:0,0\n\n\0".to_vec();
    behind_connect.extend_from_slice(&garbage[..512]);
    vec![
        Bad {
            what: "garbage in the same write as CONNECT",
            login: false,
            bytes: behind_connect,
            expect: Some("malformed frame"),
        },
        Bad {
            what: "garbage before CONNECT",
            login: false,
            bytes: garbage.clone(),
            expect: Some("malformed frame"),
        },
        Bad {
            what: "garbage after CONNECT",
            login: true,
            bytes: garbage,
            expect: Some("malformed frame"),
        },
        Bad {
            what: "SEND before CONNECT",
            login: false,
            bytes: v(b"SEND\ndestination:/queue/bad\n\nx\0"),
            expect: Some("expected CONNECT"),
        },
        Bad {
            what: "bad heart-beat in CONNECT",
            login: false,
            bytes: v(
                b"CONNECT\naccept-version:1.2\nlogin:admin\npasscode:admin\nheart-beat:x,y\n\n\0",
            ),
            expect: Some("invalid heart-beat header"),
        },
        Bad {
            what: "unknown command",
            login: true,
            bytes: v(b"FROB\n\n\0"),
            expect: Some("malformed frame"),
        },
        Bad {
            what: "endless command line",
            login: true,
            bytes: vec![b'A'; 1 << 20],
            expect: Some("malformed frame"),
        },
        Bad {
            what: "header without a colon",
            login: true,
            bytes: v(b"SEND\ndestination:/queue/bad\nnocolon\n\nx\0"),
            expect: Some("malformed frame"),
        },
        Bad {
            what: "invalid escape",
            login: true,
            bytes: v(b"SEND\ndestination:/queue/bad\nk:\\t\n\nx\0"),
            expect: Some("malformed frame"),
        },
        Bad {
            what: "header not UTF-8",
            login: true,
            bytes: v(b"SEND\ndestination:/queue/\xff\xfe\n\nx\0"),
            expect: Some("malformed frame"),
        },
        Bad {
            what: "invalid content-length",
            login: true,
            bytes: v(b"SEND\ndestination:/queue/bad\ncontent-length:-1\n\nx\0"),
            expect: Some("malformed frame"),
        },
        Bad {
            what: "content-length body without NUL",
            login: true,
            bytes: v(b"SEND\ndestination:/queue/bad\ncontent-length:1\n\nxyz\0"),
            expect: Some("malformed frame"),
        },
        Bad {
            what: "100,000 headers",
            login: true,
            bytes: too_many,
            expect: Some("too many headers"),
        },
        Bad {
            what: "64 KiB header line",
            login: true,
            bytes: long_line,
            expect: Some("header line too long"),
        },
        Bad {
            what: "100 MiB announced by content-length",
            login: true,
            bytes: announced,
            expect: Some("frame too large"),
        },
        Bad {
            what: "11 MiB body without NUL",
            login: true,
            bytes: endless,
            expect: Some("frame too large"),
        },
        Bad {
            what: "SEND without destination",
            login: true,
            bytes: v(b"SEND\n\nx\0"),
            expect: Some("missing header"),
        },
        Bad {
            what: "second CONNECT",
            login: true,
            bytes: v(b"CONNECT\naccept-version:1.2\n\n\0"),
            expect: Some("already connected"),
        },
    ]
}

/// Sends one bad input on a fresh connection; expects one ERROR, then the close.
async fn one_bad(addr: SocketAddr, bad: &Bad) {
    let mut c = if bad.login {
        Raw::connect(addr, "admin", "admin").await
    } else {
        Raw::open(addr).await
    };
    // Big inputs may be cut short by the broker's close: errors are ignored.
    c.send_raw(&bad.bytes).await;
    let mut e = c
        .recv_within(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("{}: no ERROR", bad.what));
    if !bad.login && e.command == Command::Connected {
        // A CONNECT was part of the input.
        e = c
            .recv_within(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{}: no ERROR after CONNECTED", bad.what));
    }
    assert_eq!(e.command, Command::Error, "{}: {e:?}", bad.what);
    let message = e.get("message").unwrap_or_default();
    if let Some(want) = bad.expect {
        assert_eq!(message, want, "{}: {e:?}", bad.what);
    }
    assert!(
        c.recv_within(Duration::from_secs(10)).await.is_none(),
        "{}: not closed after the ERROR",
        bad.what
    );
}

/// Scenario 4: several connections flood the broker with malformed frames (garbage, oversize
/// frames, invalid headers, huge header counts) while a good client does receipted sends. Each
/// bad connection gets one ERROR and is closed; the good client never notices; memory is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_malformed_frames_get_errors_and_leave_good_clients_alone() {
    const WORKERS: usize = 6;
    const ROUNDS: usize = 3;
    let _serial = SERIAL.lock().await;
    let b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let pid = b.pid().unwrap();
    let addr = b.addr;
    let before = rss_kib(pid);
    let sampler = RssSampler::start(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let probe = Probe::connect(addr, "/queue/good")
        .await
        .run_until(stop.clone());
    let inputs = Arc::new(bad_inputs());
    let start = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let inputs = inputs.clone();
            tokio::spawn(async move {
                let mut n = 0;
                for round in 0..ROUNDS {
                    // Each worker walks the list from a different place, so all kinds overlap.
                    for k in 0..inputs.len() {
                        let bad = &inputs[(k + w * 3 + round) % inputs.len()];
                        one_bad(addr, bad).await;
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut bad_connections = 0;
    for w in workers {
        bad_connections += tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("flood finished within 60s")
            .unwrap();
    }
    let flood_took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let probe = probe.await.unwrap();
    let peak = sampler.finish();
    let after = rss_kib(pid);
    // The broker still takes new clients.
    let mut late = Probe::connect(addr, "/queue/late").await;
    late.round_trip().await;
    println!(
        "malformed flood: {bad_connections} bad connections ({} kinds, {WORKERS} at a time) each got \
         its ERROR and was closed in {:.2}s; broker RSS before {}, peak {}, after {}",
        inputs.len(),
        flood_took.as_secs_f64(),
        mib(before),
        mib(peak),
        mib(after)
    );
    probe.report("malformed flood");
    assert!(probe.n > 0);
    assert!(peak < 400 * KIB, "broker RSS peaked at {}", mib(peak));
    b.assert_no_panic();
}

/// Found while writing the tests above: frames that arrive in the same read as CONNECT must be
/// served at once, not when the client next sends something (a client that pipelines CONNECT,
/// SUBSCRIBE and SEND and then waits used to hang; a malformed frame behind CONNECT used to leave
/// the connection open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pipelined_behind_connect_are_served_at_once() {
    let _serial = SERIAL.lock().await;
    let b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let mut c = Raw::open(b.addr).await;
    let mut out = BytesMut::new();
    for f in [
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("login", "admin")
            .header("passcode", "admin")
            .header("heart-beat", "0,0"),
        Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", "/queue/pipelined")
            .header("receipt", "sub"),
        Frame::new(Command::Send)
            .header("destination", "/queue/pipelined")
            .header("receipt", "sent")
            .with_body("early"),
    ] {
        encode(&f, Version::V1_2, &mut out);
    }
    c.send_raw(&out).await;
    c.expect(Command::Connected).await;
    let r = c.expect(Command::Receipt).await;
    assert_eq!(r.get("receipt-id"), Some("sub"));
    let mut seen = until_receipt(&mut c, "sent", ROUND_TRIP).await;
    if seen.is_empty() {
        seen.push(c.expect(Command::Message).await);
    }
    assert_eq!(body(&seen[0]), "early");
    b.assert_no_panic();
}

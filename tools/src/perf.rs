//! `mq-client perf`: throughput and latency measurement.
//!
//! `--producers N` connections send `--count` messages each while `--consumers M` connections
//! receive them. The tool is built not to be the bottleneck of a broker doing >200k msg/s on two
//! cores:
//!
//! * sends are pipelined (`--receiptEvery K` > 1 or 0); with K > 1 a per-producer task awaits the
//!   receipts concurrently (bounded window) and records send->receipt latency, so the send loop
//!   never blocks on a round trip;
//! * message bodies come from one template: when nobody in this run measures delivery latency the
//!   template `Bytes` is cloned (a reference-count increment); otherwise the 8-byte send timestamp
//!   is written in front of a copy of the template taken from a 256 KiB arena (`BytesMut::split`),
//!   so there is one allocation per arena, not per message;
//! * per message the workers only bump relaxed atomic counters and record into thread-local
//!   `hdrhistogram`s (merged at the end); the progress bar samples the counters from its own task.
//!
//! Body layout: the first 8 bytes are the send time in ns since the Unix epoch, big endian.
//! `0` means "not stamped" (no delivery latency is recorded), `u64::MAX` marks warm-up messages
//! (not counted). Bodies are therefore at least 8 bytes.
//!
//! Consumers stop when they together received everything the producers sent (on a topic: each
//! consumer received everything), after `--count` messages in total with `--producers 0`, after
//! `--timeout` ms without a message, when `--duration` is over, or on Ctrl-C.
//!
//! Failovers (with a `failover:(...)` or `discovery:fabric:` broker URL) are counted over every
//! connection; `--failover-report` also collects the client-observed downtime of each one and
//! reports its distribution (count, min, p50, p90, max), e.g. while masters are killed during a
//! run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use fabricmq_client::{
    AckMode, Connection, Destination, Outgoing, ReceiptFuture, SubscribeOptions,
};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Barrier};

use crate::cli::PerfArgs;
use crate::common::{self, Acker, Ended, FailoverMonitor, Next, Receiver, StopFlag};
use crate::producer::wants_receipt;
use crate::progress::{self, Progress};
use crate::report::{self, DowntimeMs, LatencyMs, Outcome, Output, PerfDetails, PerfReport};

/// Length of the timestamp prefix of every perf body.
pub const TIMESTAMP_LEN: usize = 8;
/// Prefix of a body that carries no timestamp.
pub const UNSTAMPED: u64 = 0;
/// Prefix of a warm-up message.
pub const WARMUP: u64 = u64::MAX;
/// Bytes reserved at once for stamped bodies.
pub const ARENA_BYTES: usize = 256 * 1024;
/// Messages a pipelined producer may have sent without their receipt having arrived (bounds the
/// receipt window: `MAX_UNCONFIRMED / receiptEvery` receipts).
pub const MAX_UNCONFIRMED: u64 = 32 * 1024;
/// Highest latency the histograms hold (1 hour in µs); larger values are clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Makes perf message bodies: the template cloned, or stamped with a send time.
#[derive(Debug)]
pub struct BodyFactory {
    template: Bytes,
    arena: BytesMut,
}

impl BodyFactory {
    /// Bodies of `size` bytes (at least [`TIMESTAMP_LEN`]) whose template prefix is `prefix`.
    pub fn new(size: usize, prefix: u64) -> BodyFactory {
        let size = size.max(TIMESTAMP_LEN);
        let mut t = BytesMut::with_capacity(size);
        t.put_u64(prefix);
        t.extend(
            b"fabricmq-perf-"
                .iter()
                .copied()
                .cycle()
                .take(size - TIMESTAMP_LEN),
        );
        BodyFactory {
            template: t.freeze(),
            arena: BytesMut::new(),
        }
    }

    /// Body size in bytes.
    pub fn len(&self) -> usize {
        self.template.len()
    }

    /// Always false: bodies hold at least the timestamp.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The template itself (no copy).
    pub fn template(&self) -> Bytes {
        self.template.clone()
    }

    /// A copy of the template with `ts` as its first 8 bytes, carved out of a shared arena.
    pub fn stamped(&mut self, ts: u64) -> Bytes {
        let len = self.template.len();
        if self.arena.capacity() < len {
            // Reuses the old arena if every body cut from it has been dropped.
            self.arena.reserve(len.max(ARENA_BYTES));
        }
        self.arena.put_u64(ts);
        self.arena
            .extend_from_slice(&self.template[TIMESTAMP_LEN..]);
        self.arena.split().freeze()
    }
}

/// What the first 8 bytes of a received body say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// A warm-up message: not counted.
    Warmup,
    /// No (plausible) timestamp: counted, no latency.
    Unstamped,
    /// Send-to-delivery latency in ns.
    Latency(u64),
}

/// Classifies a received body; `now_ns` is the receive time (ns since the Unix epoch). Stamps more
/// than an hour old or more than a second in the future are not plausible perf timestamps.
pub fn classify(body: &[u8], now_ns: u64) -> Stamp {
    let Some(prefix) = body.get(..TIMESTAMP_LEN) else {
        return Stamp::Unstamped;
    };
    let ts = u64::from_be_bytes(prefix.try_into().unwrap_or([0; TIMESTAMP_LEN]));
    const HOUR_NS: u64 = 3_600_000_000_000;
    const SKEW_NS: u64 = 1_000_000_000;
    match ts {
        WARMUP => Stamp::Warmup,
        UNSTAMPED => Stamp::Unstamped,
        ts if ts <= now_ns && now_ns - ts < HOUR_NS => Stamp::Latency(now_ns - ts),
        // The wall clock may step back a little between send and receive.
        ts if ts > now_ns && ts - now_ns < SKEW_NS => Stamp::Latency(0),
        _ => Stamp::Unstamped,
    }
}

/// A latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).clamp(1, MAX_LATENCY_US));
}

/// How many messages the consumers must receive, per slot: one shared slot on a queue, one slot
/// per consumer on a topic.
#[derive(Debug)]
pub struct Target {
    expected: AtomicU64,
    unlimited: bool,
    slots: Vec<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    received: AtomicU64,
    done: StopFlag,
}

impl Target {
    /// `expected` messages per slot (`None`: until idle); `slots` >= 1.
    pub fn new(expected: Option<u64>, slots: usize) -> Target {
        Target {
            expected: AtomicU64::new(expected.unwrap_or(0)),
            unlimited: expected.is_none(),
            slots: (0..slots.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    /// Counts one measured message on `slot`.
    pub fn record(&self, slot: usize) {
        let s = &self.slots[slot];
        let n = s.received.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.unlimited && n >= self.expected.load(Ordering::SeqCst) {
            s.done.set();
        }
    }

    /// A producer sent `by` fewer messages than planned.
    pub fn reduce(&self, by: u64) {
        if by == 0 {
            return;
        }
        let e = self
            .expected
            .fetch_sub(by, Ordering::SeqCst)
            .saturating_sub(by);
        if !self.unlimited {
            for s in &self.slots {
                if s.received.load(Ordering::SeqCst) >= e {
                    s.done.set();
                }
            }
        }
    }

    /// Set when `slot` received everything.
    pub fn done(&self, slot: usize) -> &StopFlag {
        &self.slots[slot].done
    }

    /// Messages expected per slot (`None`: unlimited).
    pub fn expected(&self) -> Option<u64> {
        (!self.unlimited).then(|| self.expected.load(Ordering::SeqCst))
    }
}

/// What a producer brings back.
#[derive(Debug)]
pub struct ProducerOutcome {
    /// Measured messages sent.
    pub sent: u64,
    /// When it finished.
    pub end: Instant,
    /// Send->receipt latencies (µs).
    pub receipts: Histogram<u64>,
    /// The first failure.
    pub error: Option<anyhow::Error>,
}

/// What a consumer brings back.
#[derive(Debug)]
pub struct ConsumerOutcome {
    /// Measured messages received.
    pub received: u64,
    /// Warm-up messages received.
    pub warmup: u64,
    /// When its last measured message arrived.
    pub last: Option<Instant>,
    /// Send->delivery latencies (µs).
    pub delivery: Histogram<u64>,
    /// Why it stopped.
    pub ended: Ended,
    /// The first failure.
    pub error: Option<anyhow::Error>,
}

/// Settings shared by the producers.
#[derive(Debug, Clone)]
pub struct ProducerPlan {
    /// STOMP destination.
    pub destination: String,
    /// Measured messages.
    pub count: u64,
    /// Warm-up messages.
    pub warmup: u64,
    /// Body size.
    pub size: usize,
    /// `persistent` header.
    pub persistent: bool,
    /// Receipt spacing (see `--receiptEvery`).
    pub receipt_every: u64,
    /// Stamp bodies with the send time (someone measures delivery latency).
    pub stamp: bool,
}

/// Runs `mq-client perf`: measures, prints the table or JSON, fails if a producer or consumer
/// failed or the consumers did not get everything.
pub async fn run(args: PerfArgs) -> anyhow::Result<()> {
    let stop = StopFlag::new();
    stop.set_on_ctrl_c();
    let out = Output {
        json: args.common.json,
    };
    execute(&args, &stop).await?.finish(out)
}

/// Runs the measurement described by `args` (until done or `stop` is set).
pub async fn execute(args: &PerfArgs, stop: &StopFlag) -> anyhow::Result<Outcome<PerfReport>> {
    let topic = matches!(args.common.destination, Destination::Topic(_));
    let destination = args.common.destination.stomp_name();
    let (producers, consumers) = (args.producers, args.consumers);
    let ack = AckMode::from(args.ack);
    let ack_batch = args.prefetch.map_or(64, |p| u64::from(p / 2).max(1));
    let idle = (args.timeout > 0).then(|| Duration::from_millis(args.timeout));
    let body_size = args.size.max(TIMESTAMP_LEN);
    if args.size < TIMESTAMP_LEN {
        tracing::warn!(
            "--size {} raised to {TIMESTAMP_LEN} bytes (the send timestamp)",
            args.size
        );
    }

    // Consumers first: `subscribe` waits for the broker's receipt, so on a topic every consumer is
    // subscribed before anything is sent.
    let subs = futures::future::try_join_all((1..=consumers).map(|c| {
        let id = client_id(&args.common.connection.client_id, "consumer", c);
        let (destination, prefetch) = (destination.clone(), args.prefetch);
        let connection = &args.common.connection;
        async move {
            let conn = common::connect(connection, id).await?;
            let opts = SubscribeOptions {
                prefetch,
                ..SubscribeOptions::default()
            };
            let sub = conn
                .subscribe(&destination, ack, opts)
                .await
                .with_context(|| format!("cannot subscribe to {destination}"))?;
            anyhow::Ok((conn, sub))
        }
    }))
    .await?;
    let conns = futures::future::try_join_all((1..=producers).map(|p| {
        let id = client_id(&args.common.connection.client_id, "producer", p);
        common::connect(&args.common.connection, id)
    }))
    .await?;
    let mut monitor = FailoverMonitor::new(!args.common.json);
    for conn in subs.iter().map(|(c, _)| c).chain(&conns) {
        monitor.watch(conn);
    }

    let expected = if producers > 0 {
        Some(args.count * u64::from(producers))
    } else {
        (args.count > 0).then_some(args.count)
    };
    let slots = if topic { consumers as usize } else { 1 };
    let target = Arc::new(Target::new(expected, slots));
    let sent_counter = Arc::new(AtomicU64::new(0));
    let recv_counter = Arc::new(AtomicU64::new(0));

    let consumer_tasks: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, (conn, sub))| {
            let slot = if topic { i } else { 0 };
            let (target, stop, counter) = (target.clone(), stop.clone(), recv_counter.clone());
            tokio::spawn(async move {
                let receiver = Receiver::new(sub, idle);
                let acker = Acker::new(ack, ack_batch);
                consume(conn, receiver, acker, &target, slot, &stop, &counter).await
            })
        })
        .collect();

    let plan = ProducerPlan {
        destination: destination.clone(),
        count: args.count,
        warmup: args.warmup,
        size: body_size,
        persistent: args.persistent,
        receipt_every: args.receipt_every,
        stamp: consumers > 0,
    };
    let barrier = Arc::new(Barrier::new(producers as usize + 1));
    let producer_tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let (plan, barrier, stop) = (plan.clone(), barrier.clone(), stop.clone());
            let (target, counter) = (target.clone(), sent_counter.clone());
            tokio::spawn(async move {
                let r = produce(conn, &plan, &barrier, &stop, &counter).await;
                target.reduce(plan.count.saturating_sub(r.sent));
                r
            })
        })
        .collect();

    // The measured run starts when every producer finished its warm-up.
    barrier.wait().await;
    let t0 = Instant::now();
    let deadline = args.duration.map(|d| {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            tracing::info!("--duration is over");
            stop.set();
        })
    });
    let (label, total, mut counters) = if producers > 0 {
        (
            "perf",
            Some(args.count * u64::from(producers)),
            vec![("sent", sent_counter.clone())],
        )
    } else {
        ("perf", expected, vec![])
    };
    if consumers > 0 {
        counters.push(("received", recv_counter.clone()));
    }
    let progress = Progress::start(progress::wanted(args.common.json), label, total, counters);

    let mut failures: Vec<anyhow::Error> = Vec::new();
    let mut sent = 0;
    let mut receipts = new_histogram();
    let mut send_end = t0;
    for task in producer_tasks {
        let r = task.await.context("producer task panicked")?;
        sent += r.sent;
        send_end = send_end.max(r.end);
        receipts.add(&r.receipts).ok();
        if let Some(e) = r.error {
            // The first failure becomes the final error line; log only the others.
            if !failures.is_empty() {
                tracing::error!("producer failed: {e:#}");
            }
            failures.push(e);
        }
    }
    let mut received = 0;
    let mut delivery = new_histogram();
    let mut recv_end = t0;
    let mut shortfall = false;
    for task in consumer_tasks {
        let r = task.await.context("consumer task panicked")?;
        received += r.received;
        recv_end = recv_end.max(r.last.unwrap_or(t0));
        delivery.add(&r.delivery).ok();
        shortfall |= r.ended == Ended::Idle;
        if r.warmup > 0 {
            tracing::debug!(warmup = r.warmup, "warm-up messages received");
        }
        if let Some(e) = r.error {
            // The first failure becomes the final error line; log only the others.
            if !failures.is_empty() {
                tracing::error!("consumer failed: {e:#}");
            }
            failures.push(e);
        }
    }
    let end = Instant::now();
    progress.finish().await;
    let failover_stats = monitor.finish().await;
    if let Some(d) = deadline {
        d.abort();
    }

    let send_elapsed = send_end.duration_since(t0);
    let recv_elapsed = recv_end.duration_since(t0);
    let report = PerfReport {
        producers,
        consumers,
        sent,
        received,
        elapsed_s: report::secs(end.duration_since(t0)),
        send_rate: report::rate(sent, send_elapsed),
        recv_rate: report::rate(received, recv_elapsed),
        receipt_latency_ms: LatencyMs::from_micros(&receipts),
        delivery_latency_ms: LatencyMs::from_micros(&delivery),
        failovers: failover_stats.failovers,
        downtime_ms: failover_stats.downtime_ms(),
        failover_downtime_ms: args
            .failover_report
            .then(|| DowntimeMs::from_durations(&failover_stats.downtimes)),
    };
    let details = PerfDetails {
        size: body_size,
        send_elapsed_s: report::secs(send_elapsed),
        recv_elapsed_s: report::secs(recv_elapsed),
        receipt_samples: receipts.len(),
        delivery_samples: delivery.len(),
        show_failovers: args.failover_report || args.common.connection.broker_url.is_failover(),
    };
    let mut failure = failures.into_iter().next();
    if failure.is_none() && consumers > 0 && shortfall && !stop.is_set() {
        if let Some(want) = target.expected() {
            let want_total = if topic {
                want * u64::from(consumers)
            } else {
                want
            };
            if received < want_total {
                failure = Some(anyhow::anyhow!(
                    "consumers received {received} of {want_total} messages: nothing arrived for {} ms",
                    args.timeout
                ));
            }
        }
    }
    let human = report.human(&details);
    Ok(Outcome {
        report,
        human,
        failure,
    })
}

fn client_id(base: &Option<String>, role: &str, n: u32) -> Option<String> {
    base.as_ref().map(|b| format!("{b}-{role}-{n}"))
}

/// One producer: warm-up, barrier, measured sends, receipts, disconnect.
pub async fn produce(
    conn: Connection,
    plan: &ProducerPlan,
    barrier: &Barrier,
    stop: &StopFlag,
    counter: &AtomicU64,
) -> ProducerOutcome {
    let warm = warmup(&conn, plan).await;
    // Always reach the barrier, even after a failure, or the others would wait forever.
    barrier.wait().await;
    let mut out = ProducerOutcome {
        sent: 0,
        end: Instant::now(),
        receipts: new_histogram(),
        error: None,
    };
    if let Err(e) = warm {
        out.error = Some(e.context("warm-up failed"));
        return out;
    }
    let result = match plan.receipt_every {
        1 => send_each_receipted(&conn, plan, stop, counter, &mut out).await,
        k => send_pipelined(&conn, plan, k, stop, counter, &mut out).await,
    };
    out.end = Instant::now();
    if let Err(e) = result {
        out.error = Some(e);
    }
    if let Err(e) = conn.disconnect().await {
        tracing::warn!("producer disconnect: {e}");
        if out.error.is_none() && plan.receipt_every != 1 {
            out.error = Some(anyhow::Error::new(e).context("the final DISCONNECT receipt failed"));
        }
    }
    out
}

async fn warmup(conn: &Connection, plan: &ProducerPlan) -> anyhow::Result<()> {
    if plan.warmup == 0 {
        return Ok(());
    }
    let body = BodyFactory::new(plan.size, WARMUP).template();
    let mut last = None;
    for i in 1..=plan.warmup {
        let msg = message(&plan.destination, body.clone(), plan.persistent);
        last = Some(conn.send_pipelined(msg, i == plan.warmup).await?);
    }
    if let Some(receipt) = last {
        receipt.await?;
    }
    Ok(())
}

fn message(destination: &str, body: Bytes, persistent: bool) -> Outgoing {
    Outgoing {
        destination: destination.to_owned(),
        body,
        persistent: Some(persistent),
        ..Outgoing::default()
    }
}

fn next_body(bodies: &mut BodyFactory, stamp: bool) -> Bytes {
    if stamp {
        bodies.stamped(common::now_ns())
    } else {
        bodies.template()
    }
}

async fn send_each_receipted(
    conn: &Connection,
    plan: &ProducerPlan,
    stop: &StopFlag,
    counter: &AtomicU64,
    out: &mut ProducerOutcome,
) -> anyhow::Result<()> {
    let mut bodies = BodyFactory::new(plan.size, UNSTAMPED);
    for seq in 1..=plan.count {
        if stop.is_set() {
            break;
        }
        let msg = message(
            &plan.destination,
            next_body(&mut bodies, plan.stamp),
            plan.persistent,
        );
        let t = Instant::now();
        conn.send(msg)
            .await
            .with_context(|| format!("send of message {seq} failed"))?;
        record(&mut out.receipts, t.elapsed());
        out.sent += 1;
        counter.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn send_pipelined(
    conn: &Connection,
    plan: &ProducerPlan,
    every: u64,
    stop: &StopFlag,
    counter: &AtomicU64,
    out: &mut ProducerOutcome,
) -> anyhow::Result<()> {
    let window = MAX_UNCONFIRMED.checked_div(every).map_or(1, |w| w.max(1)) as usize;
    let (tx, rx) = mpsc::channel::<(Instant, ReceiptFuture)>(64);
    let collector = tokio::spawn(collect_receipts(rx, window));
    let mut bodies = BodyFactory::new(plan.size, UNSTAMPED);
    let mut last_write: Option<ReceiptFuture> = None;
    let sending = async {
        for seq in 1..=plan.count {
            if stop.is_set() {
                break;
            }
            let want = wants_receipt(seq, plan.count, every);
            let msg = message(
                &plan.destination,
                next_body(&mut bodies, plan.stamp),
                plan.persistent,
            );
            let t = if want { Some(Instant::now()) } else { None };
            let fut = conn
                .send_pipelined(msg, want)
                .await
                .with_context(|| format!("send of message {seq} failed"))?;
            out.sent += 1;
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = t {
                if tx.send((t, fut)).await.is_err() {
                    // The collector stopped: a receipt failed; its error is reported below.
                    break;
                }
            } else {
                last_write = Some(fut);
            }
        }
        anyhow::Ok(())
    }
    .await;
    drop(tx);
    let (hist, receipt_error) = collector.await.context("receipt task panicked")?;
    out.receipts = hist;
    sending?;
    if let Some(e) = receipt_error {
        return Err(e);
    }
    if let Some(fut) = last_write {
        fut.await.context("the last send was not written")?;
    }
    Ok(())
}

/// Awaits the receipts of one producer, at most `window` at a time, recording send->receipt
/// latency. Stops at the first failed receipt.
async fn collect_receipts(
    mut rx: mpsc::Receiver<(Instant, ReceiptFuture)>,
    window: usize,
) -> (Histogram<u64>, Option<anyhow::Error>) {
    let mut hist = new_histogram();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            Some((t, res)) = pending.next(), if !pending.is_empty() => {
                let res: Result<(), fabricmq_client::ClientError> = res;
                match res {
                    Ok(()) => record(&mut hist, Instant::now().duration_since(t)),
                    Err(e) => return (hist, Some(anyhow::Error::new(e).context("a receipt failed"))),
                }
            }
            item = rx.recv(), if open && pending.len() < window => match item {
                Some((t, fut)) => pending.push(async move { (t, fut.await) }),
                None => open = false,
            },
        }
    }
    (hist, None)
}

/// One consumer: receive until its target is reached, the stream is idle, or the run stops.
pub async fn consume(
    conn: Connection,
    mut receiver: Receiver,
    mut acker: Acker,
    target: &Target,
    slot: usize,
    stop: &StopFlag,
    counter: &AtomicU64,
) -> ConsumerOutcome {
    let mut out = ConsumerOutcome {
        received: 0,
        warmup: 0,
        last: None,
        delivery: new_histogram(),
        ended: Ended::Stopped,
        error: None,
    };
    let stops = [stop, target.done(slot)];
    let result: anyhow::Result<Ended> = async {
        loop {
            let msg = match receiver.next(&conn, &mut acker, &stops).await? {
                Next::Message(m) => m,
                Next::End(e) => return Ok(e),
            };
            match classify(&msg.body, common::now_ns()) {
                Stamp::Warmup => {
                    out.warmup += 1;
                    acker.done(&conn, msg).await?;
                    continue;
                }
                Stamp::Latency(ns) => record(&mut out.delivery, Duration::from_nanos(ns)),
                Stamp::Unstamped => {}
            }
            out.received += 1;
            out.last = Some(receiver.last_activity().into_std());
            counter.fetch_add(1, Ordering::Relaxed);
            target.record(slot);
            acker.done(&conn, msg).await?;
        }
    }
    .await;
    let flushed = acker.flush(&conn).await;
    match result {
        Ok(Ended::Closed) => {
            out.ended = Ended::Closed;
            out.error = Some(anyhow::anyhow!("the broker closed the consumer connection"));
            return out;
        }
        Ok(e) => {
            out.ended = e;
            if let Err(e) = flushed {
                out.error = Some(anyhow::Error::new(e).context("final acknowledgement failed"));
            }
        }
        Err(e) => out.error = Some(e),
    }
    if let Err(e) = conn.disconnect().await {
        tracing::warn!("consumer disconnect: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_has_size_and_unstamped_prefix() {
        let f = BodyFactory::new(1024, UNSTAMPED);
        assert_eq!(f.len(), 1024);
        let t = f.template();
        assert_eq!(&t[..8], &[0; 8]);
        assert_eq!(classify(&t, 123), Stamp::Unstamped);
        // Cloning the template shares the buffer.
        assert_eq!(f.template().as_ptr(), t.as_ptr());
        // Tiny sizes still hold the timestamp.
        assert_eq!(BodyFactory::new(0, UNSTAMPED).len(), TIMESTAMP_LEN);
        assert_eq!(
            classify(&BodyFactory::new(3, WARMUP).template(), 5),
            Stamp::Warmup
        );
    }

    #[test]
    fn stamped_bodies_share_arenas_and_keep_their_stamps() {
        let mut f = BodyFactory::new(100, UNSTAMPED);
        let base = 1_700_000_000_000_000_000u64;
        let bodies: Vec<Bytes> = (0..5000).map(|i| f.stamped(base + i)).collect();
        for (i, b) in bodies.iter().enumerate() {
            assert_eq!(b.len(), 100);
            assert_eq!(
                u64::from_be_bytes(b[..8].try_into().unwrap()),
                base + i as u64
            );
            assert_eq!(&b[8..], &f.template()[8..]);
        }
        // Consecutive bodies are adjacent slices of one arena allocation.
        let adjacent = bodies
            .windows(2)
            .filter(|w| w[0].as_ptr() as usize + 100 == w[1].as_ptr() as usize)
            .count();
        assert!(adjacent > 4900, "only {adjacent} adjacent bodies");
        assert_eq!(
            classify(&bodies[0], base + 2_000_000),
            Stamp::Latency(2_000_000)
        );
    }

    #[test]
    fn large_bodies_get_their_own_allocation() {
        let mut f = BodyFactory::new(ARENA_BYTES * 2, UNSTAMPED);
        let a = f.stamped(1);
        let b = f.stamped(2);
        assert_eq!(a.len(), ARENA_BYTES * 2);
        assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), 2);
    }

    #[test]
    fn classification() {
        let now = 1_700_000_000_000_000_000u64;
        let body = |ts: u64| {
            let mut b = ts.to_be_bytes().to_vec();
            b.extend_from_slice(b"xyz");
            b
        };
        assert_eq!(classify(&body(now - 5_000), now), Stamp::Latency(5_000));
        assert_eq!(classify(&body(now + 5_000), now), Stamp::Latency(0));
        assert_eq!(classify(&body(0), now), Stamp::Unstamped);
        assert_eq!(classify(&body(u64::MAX), now), Stamp::Warmup);
        // Text bodies or ancient stamps are not latencies.
        assert_eq!(classify(b"hello world", now), Stamp::Unstamped);
        assert_eq!(
            classify(&body(now - 7_200_000_000_000), now),
            Stamp::Unstamped
        );
        assert_eq!(classify(b"short", now), Stamp::Unstamped);
    }

    #[test]
    fn queue_target_is_shared() {
        let t = Target::new(Some(3), 1);
        t.record(0);
        t.record(0);
        assert!(!t.done(0).is_set());
        t.record(0);
        assert!(t.done(0).is_set());
    }

    #[test]
    fn topic_targets_are_per_consumer() {
        let t = Target::new(Some(2), 2);
        t.record(0);
        t.record(0);
        assert!(t.done(0).is_set());
        assert!(!t.done(1).is_set());
    }

    #[test]
    fn producer_shortfall_lowers_the_target() {
        let t = Target::new(Some(10), 2);
        for _ in 0..4 {
            t.record(0);
        }
        t.record(1);
        t.reduce(6);
        assert_eq!(t.expected(), Some(4));
        assert!(t.done(0).is_set());
        assert!(!t.done(1).is_set());
        t.reduce(0);
        assert!(!t.done(1).is_set());
    }

    #[test]
    fn unlimited_target_never_completes() {
        let t = Target::new(None, 1);
        for _ in 0..100 {
            t.record(0);
        }
        t.reduce(5);
        assert!(!t.done(0).is_set());
        assert_eq!(t.expected(), None);
    }

    #[test]
    fn histogram_clamps() {
        let mut h = new_histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(10_000));
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_LATENCY_US - MAX_LATENCY_US / 500);
    }
}

//! `mq-client producer`: sends `--count` messages per thread.
//!
//! Every message carries `producer-id` (the client id or a random UUID, suffixed `-<thread>`) and
//! `producer-seq` (1, 2, 3, ...), which the consumer uses to find gaps and duplicates and the
//! broker may use to drop re-sent duplicates.
//!
//! Three ways of sending, chosen by the flags:
//!
//! * `--batchSize N` (N > 0): transactions of N messages; each COMMIT waits for its receipt and the
//!   trailing partial batch is committed too. A message counts as receipted once its transaction
//!   committed.
//! * `--receipts true` (default): every SEND carries a receipt request and waits for it.
//! * `--receipts false`: pipelined SENDs; a receipt is requested on every `--receiptEvery`th and on
//!   the last message (a receipt confirms everything sent before it on the connection), with a
//!   bounded number of receipts outstanding. The final DISCONNECT receipt confirms the rest.
//!
//! The command fails (exit 1, after printing its report) if any send, receipt or commit failed.
//!
//! With a `failover:(...)` or `discovery:fabric:` broker URL the client library reconnects under
//! the producer and re-sends every unreceipted message (same `producer-id`/`producer-seq`, so the
//! broker drops what it already has); a send fails only when no connection came within the URL's
//! `timeout` option ([`ClientError::NotConnected`]). A transaction open at a failover is lost
//! ([`ClientError::TransactionLost`]): the batch is sent again in a new transaction with the same
//! sequence numbers (up to [`MAX_BATCH_RETRIES`] times). Each failover is printed on stderr as it
//! happens (not with `--json`), and the report counts them with their total downtime.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabricmq_client::{ClientError, Connection, Outgoing, ReceiptFuture, Transaction};
use tokio::time::Instant;

use crate::cli::ProducerArgs;
use crate::common::{self, FailoverMonitor, StopFlag};
use crate::progress::{self, Progress};
use crate::report::{self, Outcome, Output, ProducerReport};

/// Receipts awaited at once by a pipelined producer before it waits for the oldest.
const MAX_OUTSTANDING_RECEIPTS: usize = 64;
/// Times a transaction lost in a failover is run again before the producer gives up.
pub const MAX_BATCH_RETRIES: u32 = 10;

/// Everything a producer thread needs to build its messages.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    /// STOMP destination name (`/queue/x`).
    pub destination: String,
    /// Body shared by every message (a cheap `Bytes` clone per message).
    pub body: Bytes,
    /// Extra application headers.
    pub headers: Vec<(String, String)>,
    /// `persistent` header.
    pub persistent: bool,
    /// `priority` header.
    pub priority: Option<u8>,
    /// Time to live in ms (0 = none).
    pub ttl: u64,
}

impl MessageTemplate {
    /// The template described by the producer flags.
    pub fn from_args(args: &ProducerArgs) -> MessageTemplate {
        let body = match &args.message {
            Some(text) => Bytes::from(text.clone().into_bytes()),
            None => generated_body(args.size),
        };
        MessageTemplate {
            destination: args.common.destination.stomp_name(),
            body,
            headers: args.headers.clone(),
            persistent: args.persistent,
            priority: args.priority,
            ttl: args.ttl,
        }
    }

    /// Message number `seq` of producer `producer_id`; `now_ms` is the send time used for `expires`.
    pub fn message(&self, producer_id: &str, seq: u64, now_ms: u64) -> Outgoing {
        Outgoing {
            destination: self.destination.clone(),
            body: self.body.clone(),
            headers: self.headers.clone(),
            persistent: Some(self.persistent),
            priority: self.priority,
            expires: (self.ttl > 0).then(|| now_ms.saturating_add(self.ttl)),
            producer: Some((producer_id.to_owned(), seq)),
            ..Outgoing::default()
        }
    }
}

/// A printable body of `size` bytes: a repeating alphabet, so it is readable in a browser.
pub fn generated_body(size: usize) -> Bytes {
    const PATTERN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    PATTERN
        .iter()
        .copied()
        .cycle()
        .take(size)
        .collect::<Vec<u8>>()
        .into()
}

/// How a producer thread sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMode {
    /// Transactions of this many messages.
    Batched(u64),
    /// One receipt per message, waited for.
    Receipted,
    /// Pipelined; a receipt every N messages and on the last (0 = never).
    Pipelined(u64),
}

impl SendMode {
    /// The mode selected by `--batchSize`, `--receipts` and `--receiptEvery`.
    pub fn from_args(args: &ProducerArgs) -> SendMode {
        if args.batch_size > 0 {
            SendMode::Batched(args.batch_size)
        } else if args.receipts {
            SendMode::Receipted
        } else {
            SendMode::Pipelined(args.receipt_every)
        }
    }
}

/// Whether pipelined message `seq` (1-based) of `count` asks for a receipt.
pub fn wants_receipt(seq: u64, count: u64, every: u64) -> bool {
    every > 0 && (seq == count || seq.checked_rem(every) == Some(0))
}

/// The outcome of one producer thread.
#[derive(Debug, Default)]
pub struct ThreadResult {
    /// Messages handed over successfully.
    pub sent: u64,
    /// Messages confirmed by the broker.
    pub receipted: u64,
    /// The first failure, if any.
    pub error: Option<anyhow::Error>,
}

/// One producer thread's settings.
#[derive(Debug, Clone)]
pub struct ThreadPlan {
    /// `producer-id` header value.
    pub producer_id: String,
    /// Messages to send.
    pub count: u64,
    /// How to send.
    pub mode: SendMode,
    /// Pause between messages.
    pub sleep: Duration,
}

/// Runs `mq-client producer`: sends, prints the report, fails if any send failed.
pub async fn run(args: ProducerArgs) -> anyhow::Result<()> {
    let stop = StopFlag::new();
    stop.set_on_ctrl_c();
    let out = Output {
        json: args.common.json,
    };
    execute(&args, &stop).await?.finish(out)
}

/// Sends the messages described by `args` (until done or `stop` is set) and returns the report.
/// `Err` only when the run could not start (connection refused, ...).
pub async fn execute(
    args: &ProducerArgs,
    stop: &StopFlag,
) -> anyhow::Result<Outcome<ProducerReport>> {
    let threads = args.parallel_threads;
    // Producer ids must be unique per producer session: the broker drops sequence numbers it has
    // seen for an id before (re-sends after a failover), so a second run reusing `<clientId>-1`
    // would be acknowledged and silently dropped. A run id keeps `--clientId` readable.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let base_id = match &args.common.connection.client_id {
        Some(id) => format!("{id}-{}", &run_id[..8]),
        None => run_id,
    };
    let template = Arc::new(MessageTemplate::from_args(args));
    let mode = SendMode::from_args(args);

    // Connect everything first: a broker that is not there fails the run before anything is sent.
    let conns = futures::future::try_join_all((1..=threads).map(|t| {
        let conn_id = args
            .common
            .connection
            .client_id
            .as_deref()
            .map(|id| common::thread_id(id, t, threads));
        common::connect(&args.common.connection, conn_id)
    }))
    .await?;
    let mut monitor = FailoverMonitor::new(!args.common.json);
    for conn in &conns {
        monitor.watch(conn);
    }

    let sent_counter = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(
        progress::wanted(args.common.json),
        "producer",
        Some(args.count * u64::from(threads)),
        vec![("sent", sent_counter.clone())],
    );
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(1..=threads)
        .map(|(conn, t)| {
            let plan = ThreadPlan {
                producer_id: format!("{base_id}-{t}"),
                count: args.count,
                mode,
                sleep: args.sleep(),
            };
            let template = template.clone();
            let stop = stop.clone();
            let counter = sent_counter.clone();
            tokio::spawn(async move { produce(conn, &template, &plan, &stop, &counter).await })
        })
        .collect();

    let mut total = ThreadResult::default();
    let mut failures = Vec::new();
    for (t, task) in (1..=threads).zip(tasks) {
        let r = task.await.unwrap_or_else(|e| ThreadResult {
            error: Some(anyhow::anyhow!("producer thread panicked: {e}")),
            ..ThreadResult::default()
        });
        total.sent += r.sent;
        total.receipted += r.receipted;
        if let Some(e) = r.error {
            // The first failure becomes the final error line; log only the others.
            if !failures.is_empty() {
                tracing::error!(thread = t, "producer failed: {e:#}");
            }
            failures.push(e);
        }
    }
    let elapsed = started.elapsed();
    progress.finish().await;
    let failovers = monitor.finish().await;

    let report = ProducerReport {
        sent: total.sent,
        receipted: total.receipted,
        failovers: failovers.failovers,
        downtime_ms: failovers.downtime_ms(),
        elapsed_s: report::secs(elapsed),
        rate: report::rate(total.sent, elapsed),
    };
    let human = report.human(
        &args.common.destination.to_string(),
        args.common.connection.broker_url.is_failover(),
    );
    Ok(Outcome {
        report,
        human,
        failure: report::combine_failures(failures, threads, "producer threads"),
    })
}

/// Sends the messages of one thread over `conn`, then disconnects.
pub async fn produce(
    conn: Connection,
    template: &MessageTemplate,
    plan: &ThreadPlan,
    stop: &StopFlag,
    counter: &AtomicU64,
) -> ThreadResult {
    let mut r = ThreadResult::default();
    let outcome = match plan.mode {
        SendMode::Batched(n) => send_batched(&conn, template, plan, n, stop, counter, &mut r).await,
        SendMode::Receipted => send_receipted(&conn, template, plan, stop, counter, &mut r).await,
        SendMode::Pipelined(every) => {
            send_pipelined(&conn, template, plan, every, stop, counter, &mut r).await
        }
    };
    if let Err(e) = outcome {
        r.error = Some(e);
    }
    let pipelined = matches!(plan.mode, SendMode::Pipelined(_));
    match conn.disconnect().await {
        // The DISCONNECT receipt confirms every frame sent before it.
        Ok(()) if pipelined && r.error.is_none() => r.receipted = r.sent,
        Ok(()) => {}
        Err(e) => {
            tracing::warn!("disconnect: {e}");
            if r.error.is_none() && r.receipted < r.sent {
                r.error = Some(anyhow::Error::new(e).context(format!(
                    "{} sent messages were not confirmed",
                    r.sent - r.receipted
                )));
            }
        }
    }
    r
}

/// Messages between two `debug` progress log lines (`sent=N`, over all threads).
pub const PROGRESS_LOG_EVERY: u64 = 500;

/// Counts one sent message (for the progress display) and logs every
/// [`PROGRESS_LOG_EVERY`]th at debug level.
fn count_sent(counter: &AtomicU64) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_multiple_of(PROGRESS_LOG_EVERY) {
        tracing::debug!(sent = n, "producer progress");
    }
}

async fn pause(plan: &ThreadPlan, seq: u64) {
    if !plan.sleep.is_zero() && seq < plan.count {
        tokio::time::sleep(plan.sleep).await;
    }
}

async fn send_receipted(
    conn: &Connection,
    template: &MessageTemplate,
    plan: &ThreadPlan,
    stop: &StopFlag,
    counter: &AtomicU64,
    r: &mut ThreadResult,
) -> anyhow::Result<()> {
    for seq in 1..=plan.count {
        if stop.is_set() {
            break;
        }
        let msg = template.message(&plan.producer_id, seq, common::now_ms());
        conn.send(msg).await.map_err(|e| send_error(e, seq))?;
        r.sent += 1;
        r.receipted += 1;
        count_sent(counter);
        pause(plan, seq).await;
    }
    Ok(())
}

async fn send_pipelined(
    conn: &Connection,
    template: &MessageTemplate,
    plan: &ThreadPlan,
    every: u64,
    stop: &StopFlag,
    counter: &AtomicU64,
    r: &mut ThreadResult,
) -> anyhow::Result<()> {
    // (seq, receipt) in send order; a receipt confirms everything up to its seq.
    let mut receipts: VecDeque<(u64, ReceiptFuture)> = VecDeque::new();
    let mut last_write: Option<ReceiptFuture> = None;
    let result = async {
        for seq in 1..=plan.count {
            if stop.is_set() {
                break;
            }
            if receipts.len() >= MAX_OUTSTANDING_RECEIPTS {
                if let Some((s, fut)) = receipts.pop_front() {
                    fut.await.map_err(|e| receipt_error(e, s))?;
                    r.receipted = s;
                }
            }
            let want = wants_receipt(seq, plan.count, every);
            let msg = template.message(&plan.producer_id, seq, common::now_ms());
            let fut = conn
                .send_pipelined(msg, want)
                .await
                .map_err(|e| send_error(e, seq))?;
            if want {
                receipts.push_back((seq, fut));
                last_write = None;
            } else {
                last_write = Some(fut);
            }
            r.sent += 1;
            count_sent(counter);
            pause(plan, seq).await;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    // Collect the outstanding receipts even after a failure: they may still confirm messages.
    for (s, fut) in receipts {
        match fut.await {
            Ok(()) => r.receipted = s,
            Err(e) => {
                return result.and(Err(receipt_error(e, s)));
            }
        }
    }
    if let Some(fut) = last_write {
        if let Err(e) = fut.await {
            return result.and(Err(send_error(e, r.sent)));
        }
    }
    result
}

async fn send_batched(
    conn: &Connection,
    template: &MessageTemplate,
    plan: &ThreadPlan,
    batch: u64,
    stop: &StopFlag,
    counter: &AtomicU64,
    r: &mut ThreadResult,
) -> anyhow::Result<()> {
    let mut first = 1u64;
    while first <= plan.count && !stop.is_set() {
        let last = first.saturating_add(batch - 1).min(plan.count);
        let mut retries = 0u32;
        let committed = loop {
            match send_batch(conn, template, plan, first..=last, stop, counter, r).await {
                Ok(n) => break n,
                Err(e) if is_transaction_lost(&e) && retries < MAX_BATCH_RETRIES => {
                    retries += 1;
                    tracing::warn!(
                        "{e:#}: sending messages {first}..={last} again in a new transaction \
                         (retry {retries} of {MAX_BATCH_RETRIES})"
                    );
                }
                Err(e) => return Err(e),
            }
        };
        r.receipted += committed;
        if committed < last - first + 1 {
            // Cut short by a stop: the partial batch was committed.
            break;
        }
        first = last + 1;
    }
    Ok(())
}

/// Sends messages `seqs` in one transaction and commits it; returns how many were committed
/// (fewer when `stop` was set meanwhile: the partial batch is committed too). A message counts
/// as sent the first time it is handed over, not again when a lost transaction is re-run.
async fn send_batch(
    conn: &Connection,
    template: &MessageTemplate,
    plan: &ThreadPlan,
    seqs: std::ops::RangeInclusive<u64>,
    stop: &StopFlag,
    counter: &AtomicU64,
    r: &mut ThreadResult,
) -> anyhow::Result<u64> {
    let tx = conn
        .begin()
        .await
        .map_err(|e| anyhow::Error::new(e).context("cannot begin a transaction"))?;
    let mut in_batch = 0u64;
    let sent = async {
        for seq in seqs {
            if stop.is_set() {
                break;
            }
            let msg = template.message(&plan.producer_id, seq, common::now_ms());
            tx.send(msg).await.map_err(|e| send_error(e, seq))?;
            in_batch += 1;
            if seq > r.sent {
                r.sent = seq;
                count_sent(counter);
            }
            pause(plan, seq).await;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = sent {
        if let Err(abort) = tx.abort().await {
            tracing::debug!("abort after failure: {abort}");
        }
        return Err(e);
    }
    commit(tx, in_batch).await?;
    Ok(in_batch)
}

/// Whether `e` says a transaction was lost in a failover (the batch may be run again).
fn is_transaction_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ClientError>(),
            Some(ClientError::TransactionLost { .. })
        )
    })
}

async fn commit(tx: Transaction, messages: u64) -> anyhow::Result<()> {
    let id = tx.id().to_owned();
    tx.commit().await.map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "commit of transaction {id} ({messages} messages) failed"
        ))
    })
}

/// A failed send. [`ClientError::NotConnected`] (no connection within the failover URL's
/// `timeout`) says so itself: "no broker connection within 5s (failover timeout)".
fn send_error(e: ClientError, seq: u64) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("send of message {seq} failed"))
}

fn receipt_error(e: ClientError, seq: u64) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("no receipt for message {seq}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> ProducerArgs {
        let mut v = vec!["mq-client", "producer"];
        v.extend_from_slice(extra);
        match Cli::parse_from(v).command {
            Command::Producer(p) => p,
            _ => unreachable!(),
        }
    }

    #[test]
    fn generated_bodies_have_the_requested_size() {
        assert_eq!(generated_body(0).len(), 0);
        assert_eq!(generated_body(100).len(), 100);
        assert_eq!(&generated_body(40)[..3], b"abc");
        assert_eq!(generated_body(40)[36], b'a');
    }

    #[test]
    fn messages_carry_producer_stamp_ttl_and_headers() {
        let t = MessageTemplate::from_args(&args(&[
            "--destination",
            "queue://orders",
            "--ttl",
            "5000",
            "--priority",
            "4",
            "--persistent",
            "false",
            "--header",
            "k=v",
            "--size",
            "10",
        ]));
        let m = t.message("me-1", 7, 1_000);
        assert_eq!(m.destination, "/queue/orders");
        assert_eq!(m.producer, Some(("me-1".to_owned(), 7)));
        assert_eq!(m.expires, Some(6_000));
        assert_eq!(m.priority, Some(4));
        assert_eq!(m.persistent, Some(false));
        assert_eq!(m.headers, vec![("k".to_owned(), "v".to_owned())]);
        assert_eq!(m.body.len(), 10);

        let t = MessageTemplate::from_args(&args(&["--message", "hello"]));
        let m = t.message("p", 1, 1_000);
        assert_eq!(m.expires, None, "no ttl means no expires");
        assert_eq!(m.persistent, Some(true));
        assert_eq!(&m.body[..], b"hello");
        // The body is shared, not copied.
        assert_eq!(m.body.as_ptr(), t.body.as_ptr());
    }

    #[test]
    fn send_mode_selection() {
        assert_eq!(SendMode::from_args(&args(&[])), SendMode::Receipted);
        assert_eq!(
            SendMode::from_args(&args(&["--receipts", "false"])),
            SendMode::Pipelined(100)
        );
        assert_eq!(
            SendMode::from_args(&args(&["--receipts", "false", "--receiptEvery", "0"])),
            SendMode::Pipelined(0)
        );
        assert_eq!(
            SendMode::from_args(&args(&["--batchSize", "10", "--receipts", "false"])),
            SendMode::Batched(10)
        );
    }

    #[test]
    fn receipt_schedule_includes_the_last_message() {
        let asked: Vec<u64> = (1..=25).filter(|&s| wants_receipt(s, 25, 10)).collect();
        assert_eq!(asked, [10, 20, 25]);
        let asked: Vec<u64> = (1..=20).filter(|&s| wants_receipt(s, 20, 10)).collect();
        assert_eq!(asked, [10, 20]);
        assert!((1..=5).all(|s| !wants_receipt(s, 5, 0)));
        assert!((1..=5).all(|s| wants_receipt(s, 5, 1)));
    }
}

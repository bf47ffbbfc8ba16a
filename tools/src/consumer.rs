//! `mq-client consumer`: receives messages and checks the producers' sequence numbers.
//!
//! Each thread has its own connection and subscription. On a queue the threads compete for the
//! messages, so `--count` is shared and their sequence accounting is merged (a message delivered
//! to two threads is a duplicate). On a topic every thread gets every message, so each thread
//! receives `--count` messages and is accounted on its own; the totals are summed.
//!
//! The run ends when `--count` messages arrived, after `--timeout` ms without a message, on
//! Ctrl-C, or when the connection is lost. It fails (exit 1, after the report) if the connection
//! was lost or fewer than `--count` messages arrived.
//!
//! With a `failover:(...)` or `discovery:fabric:` broker URL the client library reconnects under
//! the consumer and restores its subscription; the broker redelivers what was not acknowledged and
//! the library drops redeliveries of messages already acknowledged (counted as
//! `duplicates_dropped`; `duplicates` counts what still reached the application). The idle
//! `--timeout` does not run while reconnecting. Each failover is printed on stderr as it happens
//! (not with `--json`), and the report counts them with their total downtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fabricmq_client::{AckMode, Connection, Destination, SubscribeOptions};
use tokio::time::Instant;

use crate::accounting::{Accounting, Summary};
use crate::cli::ConsumerArgs;
use crate::common::{self, Acker, Ended, FailoverMonitor, Next, Receiver, StopFlag};
use crate::progress::{self, Progress};
use crate::report::{self, ConsumerReport, Outcome, Output};

/// How many messages the threads may take, shared on a queue.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    taken: AtomicU64,
    done: StopFlag,
}

impl Budget {
    /// A budget of `limit` messages (0 = unlimited).
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit,
            taken: AtomicU64::new(0),
            done: StopFlag::new(),
        }
    }

    /// Takes one message; returns `false` if the budget was already used up (the message must not
    /// be processed). Sets [`Budget::done`] when the last one is taken.
    pub fn take(&self) -> bool {
        if self.limit == 0 {
            return true;
        }
        let n = self.taken.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.limit {
            self.done.set();
        }
        n <= self.limit
    }

    /// Set once the whole budget is taken.
    pub fn done(&self) -> &StopFlag {
        &self.done
    }
}

/// What one consumer thread brings back.
#[derive(Debug, Default)]
pub struct ThreadResult {
    /// Its sequence accounting.
    pub accounting: Accounting,
    /// When its last message arrived.
    pub last_message: Option<Instant>,
    /// Why it stopped.
    pub ended: Option<Ended>,
    /// The error that stopped it, if any.
    pub error: Option<anyhow::Error>,
}

/// One consumer thread's settings.
#[derive(Debug, Clone)]
pub struct ThreadPlan {
    /// Ack mode of the subscription.
    pub ack: AckMode,
    /// Cumulative ack batch (client mode).
    pub ack_batch: u64,
    /// Idle timeout.
    pub idle: Option<Duration>,
    /// Simulated processing time per message.
    pub sleep: Duration,
}

/// Runs `mq-client consumer`: receives, prints the report, fails on a lost connection or when
/// fewer than `--count` messages arrived.
pub async fn run(args: ConsumerArgs) -> anyhow::Result<()> {
    let stop = StopFlag::new();
    stop.set_on_ctrl_c();
    let out = Output {
        json: args.common.json,
    };
    execute(&args, &stop).await?.finish(out)
}

/// Receives as described by `args` (until done or `stop` is set) and returns the report, with the
/// per-producer accounting. `Err` only when the run could not start (connection refused, ...).
pub async fn execute(
    args: &ConsumerArgs,
    stop: &StopFlag,
) -> anyhow::Result<Outcome<ConsumerReport>> {
    let threads = args.parallel_threads;
    let topic = matches!(args.common.destination, Destination::Topic(_));
    let destination = args.common.destination.stomp_name();
    let ack = AckMode::from(args.ack);
    if args.batch_size > 1 && ack != AckMode::Client {
        tracing::warn!("--batchSize only applies to --ack client; ignored");
    }
    if args.count == 0 && args.timeout == 0 {
        tracing::warn!("--count 0 and --timeout 0: consuming until interrupted");
    }
    let plan = ThreadPlan {
        ack,
        ack_batch: args.batch_size.max(1),
        idle: (args.timeout > 0).then(|| Duration::from_millis(args.timeout)),
        sleep: Duration::from_millis(args.sleep),
    };

    // Connect and subscribe everything first.
    let subs = futures::future::try_join_all((1..=threads).map(|t| {
        let conn_id = args
            .common
            .connection
            .client_id
            .as_deref()
            .map(|id| common::thread_id(id, t, threads));
        let destination = destination.clone();
        let connection = &args.common.connection;
        let prefetch = args.prefetch;
        async move {
            let conn = common::connect(connection, conn_id).await?;
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
    let mut monitor = FailoverMonitor::new(!args.common.json);
    for (conn, _) in &subs {
        monitor.watch(conn);
    }

    let received = Arc::new(AtomicU64::new(0));
    let total = if topic {
        args.count * u64::from(threads)
    } else {
        args.count
    };
    let progress = Progress::start(
        progress::wanted(args.common.json),
        "consumer",
        (total > 0).then_some(total),
        vec![("received", received.clone())],
    );
    let shared_budget = Arc::new(Budget::new(args.count));
    let started = Instant::now();
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|(conn, sub)| {
            // On a topic every thread gets every message: one budget each.
            let budget = if topic {
                Arc::new(Budget::new(args.count))
            } else {
                shared_budget.clone()
            };
            let (plan, stop, received) = (plan.clone(), stop.clone(), received.clone());
            tokio::spawn(async move {
                let receiver = Receiver::new(sub, plan.idle);
                consume(conn, receiver, &plan, &budget, &stop, &received).await
            })
        })
        .collect();

    let mut merged = Accounting::new();
    let mut summed = Summary::default();
    let mut last: Option<Instant> = None;
    let mut failures = Vec::new();
    let mut idle_ended = false;
    for (t, task) in (1..=threads).zip(tasks) {
        let r = task.await.unwrap_or_else(|e| ThreadResult {
            error: Some(anyhow::anyhow!("consumer thread panicked: {e}")),
            ..ThreadResult::default()
        });
        if let Some(e) = r.error {
            // The first failure becomes the final error line; log only the others.
            if !failures.is_empty() {
                tracing::error!(thread = t, "consumer failed: {e:#}");
            }
            failures.push(e);
        }
        idle_ended |= r.ended == Some(Ended::Idle);
        last = last.max(r.last_message);
        if topic {
            summed += r.accounting.summary();
        } else {
            merged.merge(r.accounting);
        }
    }
    let end = Instant::now();
    progress.finish().await;
    let failovers = monitor.finish().await;
    if !topic {
        summed = merged.summary();
    }
    // The rate is over the time messages were flowing, not the trailing idle wait.
    let elapsed = last.unwrap_or(end).duration_since(started);
    let report = ConsumerReport {
        received: summed.received,
        gaps: summed.gaps,
        duplicates: summed.duplicates,
        duplicates_dropped: failovers.duplicates_dropped,
        redelivered: summed.redelivered,
        failovers: failovers.failovers,
        downtime_ms: failovers.downtime_ms(),
        elapsed_s: report::secs(elapsed),
        rate: report::rate(summed.received, elapsed),
    };
    if summed.untracked > 0 {
        tracing::info!(
            untracked = summed.untracked,
            "messages without producer-id/producer-seq were not sequence-checked"
        );
    }
    let mut failure = report::combine_failures(failures, threads, "consumer threads");
    if failure.is_none() && total > 0 && summed.received < total && idle_ended && !stop.is_set() {
        failure = Some(anyhow::anyhow!(
            "received {} of {total} messages: nothing arrived for {} ms",
            summed.received,
            args.timeout
        ));
    }
    let human = report.human(
        &args.common.destination.to_string(),
        args.common.connection.broker_url.is_failover(),
    );
    Ok(Outcome {
        report,
        human,
        failure,
    })
}

/// Receives on one subscription until the budget is used up, the stream is idle, a stop flag is
/// set or the connection ends; then acknowledges what is pending and disconnects.
pub async fn consume(
    conn: Connection,
    mut receiver: Receiver,
    plan: &ThreadPlan,
    budget: &Budget,
    stop: &StopFlag,
    received: &AtomicU64,
) -> ThreadResult {
    let mut r = ThreadResult::default();
    let mut acker = Acker::new(plan.ack, plan.ack_batch);
    let stops = [stop, budget.done()];
    let outcome: anyhow::Result<Ended> = async {
        loop {
            let msg = match receiver.next(&conn, &mut acker, &stops).await? {
                Next::Message(m) => m,
                Next::End(e) => return Ok(e),
            };
            if !budget.take() {
                // Another thread took the last one; leave this message to the broker (it is
                // redelivered after we disconnect unless the subscription is auto-ack).
                if plan.ack == AckMode::Auto {
                    tracing::debug!("message beyond --count dropped (auto ack)");
                }
                return Ok(Ended::Stopped);
            }
            r.accounting.record_message(&msg);
            received.fetch_add(1, Ordering::Relaxed);
            r.last_message = Some(receiver.last_activity());
            if !plan.sleep.is_zero() {
                tokio::time::sleep(plan.sleep).await;
            }
            acker.done(&conn, msg).await?;
        }
    }
    .await;
    let flushed = acker.flush(&conn).await;
    match outcome {
        Ok(ended) => {
            r.ended = Some(ended);
            if ended == Ended::Closed {
                r.error = Some(anyhow::anyhow!("the broker closed the connection"));
            } else if let Err(e) = flushed {
                r.error = Some(anyhow::Error::new(e).context("final acknowledgement failed"));
            }
        }
        Err(e) => r.error = Some(e),
    }
    if r.ended != Some(Ended::Closed) {
        if let Err(e) = receiver.into_inner().unsubscribe().await {
            tracing::debug!("unsubscribe: {e}");
        }
        if let Err(e) = conn.disconnect().await {
            tracing::warn!("disconnect: {e}");
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_limits_and_signals() {
        let b = Budget::new(3);
        assert!(b.take() && b.take());
        assert!(!b.done().is_set());
        assert!(b.take());
        assert!(b.done().is_set());
        assert!(!b.take());
        let unlimited = Budget::new(0);
        assert!((0..1000).all(|_| unlimited.take()));
        assert!(!unlimited.done().is_set());
    }
}

//! Pieces shared by the subcommands: connecting, stop signals, acknowledgements and a receive loop
//! with an idle timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fabricmq_client::{
    AckMode, ClientError, ConnectOptions, Connection, ConnectionEvent, Message, Subscription,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use crate::cli::ConnectionArgs;

/// Connect options for one connection of this run. `client_id` is the id of this connection
/// (see [`thread_id`]).
pub fn connect_options(args: &ConnectionArgs, client_id: Option<String>) -> ConnectOptions {
    ConnectOptions {
        login: args.user.clone(),
        passcode: args.password.clone(),
        client_id,
        tls: fabricmq_client::TlsOptions {
            ca_file: args.tls_ca.clone(),
            cert_file: args.tls_cert.clone(),
            key_file: args.tls_key.clone(),
            server_name: None,
        },
        ..ConnectOptions::default()
    }
}

/// Opens one connection to the broker URL of `args` (any form: `tcp://`, `failover:(...)`,
/// `discovery:fabric:<group>` with the ZooKeeper address of `--zk`/FABRIC_ZK filled in); the
/// error names the broker URL.
pub async fn connect(
    args: &ConnectionArgs,
    client_id: Option<String>,
) -> anyhow::Result<Connection> {
    let url = &args.effective_url().map_err(anyhow::Error::msg)?;
    if args.zk.is_some() && !matches!(url, fabricmq_client::BrokerUrl::Discovery { .. }) {
        tracing::debug!("--zk is only used by discovery URLs; ignored");
    }
    let conn = Connection::connect(url, connect_options(args, client_id))
        .await
        .map_err(|e| match e {
            // Already names the address it could not reach.
            ClientError::Connect { .. } => anyhow::Error::new(e),
            e => anyhow::Error::new(e).context(format!("cannot connect to {url}")),
        })?;
    tracing::info!(%url, server = conn.server().unwrap_or("?"), "connected");
    Ok(conn)
}

/// What the failover transport did on the connections of a run, summed over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FailoverStats {
    /// Times a session moved to a new connection.
    pub failovers: u64,
    /// Time spent without a connection, summed over every failover.
    pub downtime: Duration,
    /// The client-observed downtime of each failover seen as a `Resumed` event, in the order
    /// they were seen (per connection).
    pub downtimes: Vec<Duration>,
    /// Redeliveries of already acknowledged messages the client dropped.
    pub duplicates_dropped: u64,
}

impl FailoverStats {
    /// Total downtime in milliseconds (3 decimals).
    pub fn downtime_ms(&self) -> f64 {
        crate::report::round3(self.downtime.as_secs_f64() * 1000.0)
    }
}

/// The line printed on stderr (without `--json`) when a connection failed over.
pub fn failover_line(from: &str, to: &str, downtime: Duration) -> String {
    format!(
        "failover: tcp://{from} -> tcp://{to} after {} ms",
        downtime.as_millis()
    )
}

/// Watches the failover events of every connection of a run: prints each failover on stderr as
/// it happens (when `print`), remembers the downtime of each, and sums the connections' counters
/// at the end ([`FailoverMonitor::finish`]).
#[derive(Debug)]
pub struct FailoverMonitor {
    print: bool,
    stop: StopFlag,
    conns: Vec<Connection>,
    tasks: Vec<JoinHandle<Vec<Duration>>>,
}

impl FailoverMonitor {
    /// A monitor; `print` = print a line on stderr for every failover.
    pub fn new(print: bool) -> FailoverMonitor {
        FailoverMonitor {
            print,
            stop: StopFlag::new(),
            conns: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Starts watching `conn` (call right after connecting: events from then on are seen).
    /// A plain `tcp://` connection has no events; only its counters are read at the end.
    pub fn watch(&mut self, conn: &Connection) {
        self.conns.push(conn.clone());
        let rx = conn.events();
        let (stop, print) = (self.stop.clone(), self.print);
        self.tasks.push(tokio::spawn(watch_events(rx, stop, print)));
    }

    /// Stops watching and returns the totals (read from the connections, which may already be
    /// disconnected).
    pub async fn finish(self) -> FailoverStats {
        self.stop.set();
        let mut stats = FailoverStats::default();
        for task in self.tasks {
            match task.await {
                Ok(d) => stats.downtimes.extend(d),
                Err(e) => tracing::warn!("failover event watcher failed: {e}"),
            }
        }
        for c in &self.conns {
            stats.failovers += c.failovers();
            stats.downtime += c.downtime_total();
            stats.duplicates_dropped += c.duplicates_dropped();
        }
        stats
    }
}

async fn watch_events(
    mut rx: broadcast::Receiver<ConnectionEvent>,
    stop: StopFlag,
    print: bool,
) -> Vec<Duration> {
    let mut downtimes = Vec::new();
    let mut handle = |ev: ConnectionEvent| {
        if let ConnectionEvent::Resumed { from, to, downtime } = ev {
            if print {
                eprintln!("{}", failover_line(&from, &to, downtime));
            }
            downtimes.push(downtime);
        }
    };
    loop {
        tokio::select! {
            biased;
            ev = rx.recv() => match ev {
                Ok(ev) => handle(ev),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "failover events lost (listener too slow)");
                }
                Err(RecvError::Closed) => break,
            },
            _ = stop.wait() => {
                // Take what is already queued, then stop.
                loop {
                    match rx.try_recv() {
                        Ok(ev) => handle(ev),
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    }
                }
                break;
            }
        }
    }
    downtimes
}

/// The id of thread `thread` (1-based) of `threads`: `base` itself when there is only one thread,
/// `base-<thread>` otherwise (brokers reject two connections with the same client id).
pub fn thread_id(base: &str, thread: u32, threads: u32) -> String {
    if threads <= 1 {
        base.to_owned()
    } else {
        format!("{base}-{thread}")
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A one-shot, cloneable stop signal: cheap to poll (an atomic load) and awaitable.
#[derive(Debug, Clone, Default)]
pub struct StopFlag {
    inner: Arc<StopInner>,
}

#[derive(Debug, Default)]
struct StopInner {
    set: AtomicBool,
    notify: Notify,
}

impl StopFlag {
    /// A flag that is not set.
    pub fn new() -> StopFlag {
        StopFlag::default()
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.inner.set.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.inner.set.load(Ordering::Relaxed)
    }

    /// Resolves once the flag is set.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.set.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Sets the flag on the first Ctrl-C (so the run ends cleanly and still reports); a second
    /// Ctrl-C exits at once with status 130.
    pub fn set_on_ctrl_c(&self) {
        let flag = self.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            tracing::warn!("interrupted: finishing (press Ctrl-C again to abort)");
            flag.set();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    }
}

/// Acknowledges received messages according to the subscription's ack mode.
///
/// * auto: nothing to do;
/// * client-individual: every message is acknowledged as it is handed over;
/// * client (cumulative): the latest message is kept and acknowledged every `batch` messages and
///   on [`Acker::flush`], which covers everything received before it.
#[derive(Debug)]
pub struct Acker {
    mode: AckMode,
    batch: u64,
    pending: u64,
    last: Option<Message>,
}

impl Acker {
    /// An acker for `mode`; `batch` (at least 1) only matters for cumulative client acks.
    pub fn new(mode: AckMode, batch: u64) -> Acker {
        Acker {
            mode,
            batch: batch.max(1),
            pending: 0,
            last: None,
        }
    }

    /// Hands over a processed message.
    pub async fn done(&mut self, conn: &Connection, msg: Message) -> Result<(), ClientError> {
        match self.mode {
            AckMode::Auto => Ok(()),
            AckMode::ClientIndividual => conn.ack(&msg).await,
            AckMode::Client => {
                self.pending += 1;
                self.last = Some(msg);
                if self.pending >= self.batch {
                    self.flush(conn).await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Whether cumulative acks are waiting for [`Acker::flush`].
    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// Acknowledges everything handed over so far (cumulative mode).
    pub async fn flush(&mut self, conn: &Connection) -> Result<(), ClientError> {
        self.pending = 0;
        match self.last.take() {
            Some(msg) => conn.ack(&msg).await,
            None => Ok(()),
        }
    }
}

/// Pending cumulative acks are flushed when no message arrived for this long, so a consumer never
/// stalls on a prefetch window smaller than its ack batch.
pub const ACK_FLUSH_AFTER: Duration = Duration::from_millis(20);

/// While a failover connection is reconnecting, the idle timeout is re-checked this often.
const RECONNECT_POLL: Duration = Duration::from_millis(50);

/// Why [`Receiver::next`] did not return a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No message for the idle timeout.
    Idle,
    /// The subscription ended: the connection closed or failed.
    Closed,
    /// A stop flag was set.
    Stopped,
}

/// The result of [`Receiver::next`].
#[derive(Debug)]
pub enum Next {
    /// A message.
    Message(Message),
    /// The end of the stream.
    End(Ended),
}

/// Receives from a subscription with an optional idle timeout, watching stop flags and flushing
/// pending cumulative acks when the stream pauses.
///
/// Per message this costs one `Instant::now()`: the timer is armed only while the stream is
/// waiting and is moved lazily when it fires early.
///
/// The idle timeout does not run out while a failover connection is reconnecting: the time
/// without a connection is not idleness of the stream.
pub struct Receiver {
    sub: Subscription,
    idle: Option<Duration>,
    last: Instant,
    /// The idle timeout counts from the later of `last` and this (the last time the connection
    /// was seen reconnecting).
    idle_from: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Receiver {
    /// Wraps `sub`; `idle` = stop after this long without a message (`None`: wait forever).
    pub fn new(sub: Subscription, idle: Option<Duration>) -> Receiver {
        let last = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(far_future(last)));
        let mut r = Receiver {
            sub,
            idle,
            last,
            idle_from: last,
            timer,
        };
        r.rearm(false);
        r
    }

    /// The subscription (to unsubscribe at the end).
    pub fn into_inner(self) -> Subscription {
        self.sub
    }

    /// When the last message arrived (or when the receiver was created).
    pub fn last_activity(&self) -> Instant {
        self.last
    }

    fn deadline(&self, ack_pending: bool) -> Instant {
        let mut d = far_future(self.last);
        if let Some(idle) = self.idle {
            d = d.min(self.last.max(self.idle_from) + idle);
        }
        if ack_pending {
            d = d.min(self.last + ACK_FLUSH_AFTER);
        }
        d
    }

    fn rearm(&mut self, ack_pending: bool) {
        let d = self.deadline(ack_pending);
        self.timer.as_mut().reset(d);
    }

    /// The next message, or why the stream ended. `stops` are checked before every message.
    pub async fn next(
        &mut self,
        conn: &Connection,
        acker: &mut Acker,
        stops: &[&StopFlag],
    ) -> Result<Next, ClientError> {
        if acker.has_pending() && self.timer.deadline() > self.last + ACK_FLUSH_AFTER {
            self.rearm(true);
        }
        loop {
            if stops.iter().any(|s| s.is_set()) {
                return Ok(Next::End(Ended::Stopped));
            }
            // Fast path: a buffered message needs no timer or select machinery.
            if let Some(m) = self.sub.try_recv() {
                self.last = Instant::now();
                return Ok(Next::Message(m));
            }
            tokio::select! {
                biased;
                msg = self.sub.recv() => {
                    return Ok(match msg {
                        Some(m) => {
                            self.last = Instant::now();
                            Next::Message(m)
                        }
                        None => Next::End(Ended::Closed),
                    });
                }
                _ = any_set(stops) => return Ok(Next::End(Ended::Stopped)),
                _ = &mut self.timer => {
                    let now = Instant::now();
                    if acker.has_pending() && now >= self.last + ACK_FLUSH_AFTER {
                        acker.flush(conn).await?;
                    }
                    if self.idle.is_some() && conn.is_reconnecting() {
                        // No connection is not an idle stream: look again shortly.
                        self.idle_from = now;
                        self.timer.as_mut().reset(now + RECONNECT_POLL);
                        continue;
                    }
                    let idle_base = self.last.max(self.idle_from);
                    if self.idle.is_some_and(|idle| now >= idle_base + idle) {
                        return Ok(Next::End(Ended::Idle));
                    }
                    self.rearm(acker.has_pending());
                }
            }
        }
    }
}

fn far_future(from: Instant) -> Instant {
    from + Duration::from_secs(86_400 * 365)
}

/// Resolves when any of `flags` is set (never when there are none).
pub async fn any_set(flags: &[&StopFlag]) {
    if flags.is_empty() {
        std::future::pending::<()>().await;
    }
    let waits = flags.iter().map(|f| Box::pin(f.wait()));
    futures::future::select_all(waits).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_ids() {
        assert_eq!(thread_id("me", 1, 1), "me");
        assert_eq!(thread_id("me", 1, 3), "me-1");
        assert_eq!(thread_id("me", 3, 3), "me-3");
    }

    #[tokio::test]
    async fn stop_flag_wakes_waiters() {
        let f = StopFlag::new();
        assert!(!f.is_set());
        let g = f.clone();
        let waiter = tokio::spawn(async move { g.wait().await });
        tokio::task::yield_now().await;
        f.set();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        assert!(f.is_set());
        // Waiting on a set flag returns at once.
        f.wait().await;
    }

    #[tokio::test]
    async fn any_set_resolves_on_the_second_flag() {
        let (a, b) = (StopFlag::new(), StopFlag::new());
        let b2 = b.clone();
        tokio::spawn(async move { b2.set() });
        tokio::time::timeout(Duration::from_secs(5), any_set(&[&a, &b]))
            .await
            .expect("resolved");
        assert!(!a.is_set());
    }

    #[test]
    fn clocks_are_sane() {
        let ms = now_ms();
        let ns = now_ns();
        assert!(ms > 1_600_000_000_000);
        assert!(ns / 1_000_000 >= ms);
    }
}

//! The failover transport: one session carried over any number of TCP
//! connections, invisible to the code that uses the [`Connection`] handle.
//!
//! This module owns reconnecting. A `failover:(...)` or `discovery:fabric:`
//! URL gives a [`Source`] of endpoints (a static list, shuffled when
//! `randomize` is set, or the group's master as published in the registry and
//! watched by [`Discovery`](crate::discovery::Discovery)), and a [`Policy`]
//! (back-off and limits, from the URL's ActiveMQ options). The connection task
//! then runs [`Task::run`]:
//!
//! ```text
//! connected ──(EOF, I/O error, ERROR frame, missed heart-beats, master moved)──▶ interrupted
//!     ▲                                                                           │
//!     └── replay: SUBSCRIBE again, re-send unreceipted SENDs, then held commands ◀┘ dial with back-off
//! ```
//!
//! * The session state (`state.rs`) survives: subscriptions are restored with
//!   their ack modes and ids (their `Subscription` handles keep working), and
//!   every SEND that had no receipt is re-sent with the same receipt id and
//!   `producer-id`/`producer-seq`, so the broker drops the ones it already has.
//! * While disconnected the task takes commands from the handles into a
//!   bounded holding queue; one that waited longer than the URL's `timeout`
//!   fails with [`ClientError::NotConnected`]. So do the SENDs that were
//!   waiting for a receipt when the connection failed, `timeout` after the
//!   failure. Nothing is dropped silently.
//! * Redeliveries of messages the application already acknowledged are dropped
//!   by a bounded per-subscription window (see `state.rs`); transactions open
//!   at the failure fail with [`ClientError::TransactionLost`].
//! * An authentication error is never retried: it ends the session.
//! * Every change is a [`ConnectionEvent`] on [`Connection::events`] and a
//!   `tracing` event (target `fabricmq_client`).
//!
//! A *reconnect attempt* is one pass over the candidate endpoints; the
//! back-off delay is applied between passes.
//!
//! [`Connection`]: crate::Connection
//! [`Connection::events`]: crate::Connection::events

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use fabricmq_registry::MasterRecord;
use fabricmq_stomp::Decoder;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::driver::{handshake, Driver, DriverLinks, Negotiated, Resume};
use crate::error::ClientError;
use crate::options::ConnectOptions;
use crate::state::{fail_command, has_waiter, CloseReason, Command, ConnState};
use crate::tls::{SocketRead, SocketWrite, Stream};
use crate::url::FailoverOptions;

/// Commands held while disconnected; past this the handles wait for room in
/// the command channel (bounded by `timeout` too, see `Connection`).
const HELD_MAX: usize = 1024;
/// Capacity of the events broadcast channel (a slow listener loses the oldest).
const EVENTS_CAPACITY: usize = 256;
/// Per subscription: how many acknowledged messages are remembered for
/// client-side de-duplication.
pub(crate) const DEDUP_WINDOW: usize = 16_384;

/// A change in a failover connection's life, from [`Connection::events`].
///
/// [`Connection::events`]: crate::Connection::events
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// A connection to `endpoint` (`host:port`) was established (the first
    /// one, and every reconnection before its `Resumed`).
    Connected {
        /// The broker's `host:port`.
        endpoint: String,
    },
    /// The connection to `endpoint` failed (or was left because the master
    /// moved); the transport is reconnecting. Requests wait meanwhile.
    Interrupted {
        /// The broker's `host:port`.
        endpoint: String,
        /// Why, in words.
        reason: String,
    },
    /// The session continues on `to` after `downtime` without a connection;
    /// subscriptions are restored and unreceipted sends re-sent.
    Resumed {
        /// The endpoint that failed.
        from: String,
        /// The endpoint now in use.
        to: String,
        /// From the failure to the new CONNECTED.
        downtime: Duration,
    },
}

/// Reconnect policy (the URL's ActiveMQ failover options).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    /// First delay between two reconnect passes.
    pub(crate) initial_delay: Duration,
    /// Upper bound of the delay.
    pub(crate) max_delay: Duration,
    /// Multiply the delay by `multiplier` after each failed pass.
    pub(crate) exponential: bool,
    /// Back-off multiplier.
    pub(crate) multiplier: f64,
    /// Reconnect passes after a failure before giving up (`None`: forever).
    pub(crate) max_attempts: Option<u32>,
    /// Retry passes for the first connection (`None`: forever).
    pub(crate) startup_max_attempts: Option<u32>,
    /// Shuffle a static endpoint list.
    pub(crate) randomize: bool,
    /// How long a request may wait for a connection (`None`: forever).
    pub(crate) timeout: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(30),
            exponential: true,
            multiplier: 2.0,
            max_attempts: None,
            startup_max_attempts: None,
            randomize: true,
            timeout: None,
        }
    }
}

impl From<&FailoverOptions> for Policy {
    fn from(o: &FailoverOptions) -> Policy {
        Policy {
            initial_delay: o.initial_reconnect_delay,
            max_delay: o.max_reconnect_delay,
            exponential: o.use_exponential_back_off,
            multiplier: o.back_off_multiplier,
            max_attempts: o.max_reconnect_attempts,
            startup_max_attempts: o.startup_max_reconnect_attempts,
            randomize: o.randomize,
            timeout: o.timeout,
        }
    }
}

impl Policy {
    fn next_delay(&self, delay: Duration) -> Duration {
        let next = if self.exponential {
            delay.mul_f64(self.multiplier.max(1.0))
        } else {
            delay
        };
        next.min(self.max_delay)
    }
}

/// A broker endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `ssl://`: STOMP over TLS.
    pub(crate) tls: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where the endpoints come from.
pub(crate) enum Source {
    /// `failover:(...)`.
    Static {
        list: Vec<Endpoint>,
        randomize: bool,
        rng: u64,
    },
    /// `discovery:fabric:<group>`: the master's record (its endpoints), kept current.
    Watch {
        rx: watch::Receiver<Option<MasterRecord>>,
        /// Keeps the discovery (its registry session and watch) alive.
        _keep: Box<dyn Send + Sync>,
    },
}

impl Source {
    /// A static list, shuffled per pass when `randomize`.
    pub(crate) fn fixed(list: Vec<Endpoint>, randomize: bool) -> Source {
        let seed = (uuid::Uuid::new_v4().as_u128() as u64) | 1;
        Source::Static {
            list,
            randomize,
            rng: seed,
        }
    }

    /// Endpoints pushed by a watch; `keep` is kept alive as long as the source.
    pub(crate) fn watched(
        rx: watch::Receiver<Option<MasterRecord>>,
        keep: Box<dyn Send + Sync>,
    ) -> Source {
        Source::Watch { rx, _keep: keep }
    }

    /// The endpoints to try in one pass; `failed` (the one that just failed)
    /// goes last.
    fn candidates(&mut self, failed: Option<&Endpoint>) -> Vec<Endpoint> {
        let mut list = match self {
            Source::Static {
                list,
                randomize,
                rng,
            } => {
                let mut l = list.clone();
                if *randomize {
                    for i in (1..l.len()).rev() {
                        // xorshift64: good enough to spread clients over brokers.
                        *rng ^= *rng << 13;
                        *rng ^= *rng >> 7;
                        *rng ^= *rng << 17;
                        let j = (*rng % (i as u64 + 1)) as usize;
                        l.swap(i, j);
                    }
                }
                l
            }
            Source::Watch { rx, .. } => {
                crate::discovery::dial_endpoints(rx.borrow_and_update().as_ref())
            }
        };
        if let Some(f) = failed {
            if let Some(pos) = list.iter().position(|e| e == f) {
                let e = list.remove(pos);
                list.push(e);
            }
        }
        list
    }

    /// Resolves when the endpoint set changes (never for a static list).
    ///
    /// # Cancel safety
    /// Cancel safe (a change seen by a dropped call is seen by the next).
    async fn changed(&mut self) {
        match self {
            Source::Static { .. } => std::future::pending().await,
            Source::Watch { rx, .. } => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// True when `ep` is no longer where the master is (a non-empty endpoint
    /// set without it). An empty set (no master right now) moves nobody.
    fn moved_away(&self, ep: &Endpoint) -> bool {
        match self {
            Source::Static { .. } => false,
            Source::Watch { rx, .. } => {
                let now = crate::discovery::dial_endpoints(rx.borrow().as_ref());
                !now.is_empty() && !now.contains(ep)
            }
        }
    }
}

/// Counters and the events channel, shared by the handles and the task.
pub(crate) struct Shared {
    /// Events for [`Connection::events`](crate::Connection::events).
    pub(crate) events: broadcast::Sender<ConnectionEvent>,
    /// Completed failovers.
    pub(crate) failovers: AtomicU64,
    /// Sum of the downtimes, in nanoseconds.
    pub(crate) downtime_ns: AtomicU64,
    /// Redeliveries dropped client-side.
    pub(crate) duplicates: Arc<AtomicU64>,
    /// The session's current connection generation (bumped by every replay). Subscription handles
    /// drop messages of older generations: their ACK would never be sent, and the broker
    /// redelivers them on the new connection.
    pub(crate) generation: Arc<AtomicU64>,
    /// False while the transport is between connections.
    pub(crate) connected: AtomicBool,
    /// True for a failover connection.
    pub(crate) failover: bool,
    /// The URL's `timeout`.
    pub(crate) timeout: Option<Duration>,
    /// The endpoint in use (or last used).
    pub(crate) endpoint: Mutex<String>,
    /// The fabric epoch of the broker in use (0: unknown or not a fabric master).
    pub(crate) epoch: AtomicU64,
}

impl Shared {
    pub(crate) fn new(failover: bool, timeout: Option<Duration>, endpoint: String) -> Shared {
        Shared {
            events: broadcast::channel(EVENTS_CAPACITY).0,
            failovers: AtomicU64::new(0),
            downtime_ns: AtomicU64::new(0),
            duplicates: Arc::new(AtomicU64::new(0)),
            generation: Arc::new(AtomicU64::new(0)),
            connected: AtomicBool::new(true),
            failover,
            timeout,
            endpoint: Mutex::new(endpoint),
            epoch: AtomicU64::new(0),
        }
    }

    /// Sends `event` to the current listeners.
    pub(crate) fn emit(&self, event: ConnectionEvent) {
        // No receiver is fine: events are also traced.
        let _ = self.events.send(event);
    }
}

/// A handshaken connection.
pub(crate) struct Established {
    pub(crate) stream: Stream,
    pub(crate) negotiated: Negotiated,
    pub(crate) decoder: Decoder,
    pub(crate) rbuf: BytesMut,
    pub(crate) endpoint: Endpoint,
}

/// Connects to `ep` over TCP (and TLS for an `ssl://` endpoint) and does the
/// CONNECT/CONNECTED exchange, all within `opts.connect_timeout`.
///
/// # Cancel safety
/// Cancel safe: dropping it closes the half-open socket.
pub(crate) async fn dial(ep: &Endpoint, opts: &ConnectOptions) -> Result<Established, ClientError> {
    let after = opts.connect_timeout;
    let attempt = async {
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: ep.to_string(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        let mut stream = if ep.tls {
            let tls = crate::tls::connect(tcp, &ep.host, &opts.tls, &ep.to_string()).await?;
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        let (negotiated, decoder, rbuf) = handshake(&mut stream, &ep.host, opts).await?;
        Ok::<_, ClientError>((stream, negotiated, decoder, rbuf))
    };
    let (stream, negotiated, decoder, rbuf) =
        tokio::time::timeout(after, attempt)
            .await
            .map_err(|_| ClientError::Timeout {
                what: "connection to the broker",
                after,
            })??;
    debug!(
        endpoint = %ep,
        tls = ep.tls,
        version = negotiated.version.as_str(),
        server = negotiated.server.as_deref().unwrap_or(""),
        send_heart_beat = ?negotiated.send_every,
        expect_heart_beat = ?negotiated.expect_every,
        "connected"
    );
    Ok(Established {
        stream,
        negotiated,
        decoder,
        rbuf,
        endpoint: ep.clone(),
    })
}

/// Establishes the first connection of a failover session: passes over the
/// source's endpoints with back-off, up to `startupMaxReconnectAttempts`
/// retries. An authentication error ends it at once.
///
/// # Cancel safety
/// Cancel safe: nothing is left running.
pub(crate) async fn connect_first(
    source: &mut Source,
    policy: &Policy,
    opts: &ConnectOptions,
) -> Result<Established, ClientError> {
    let mut delay = policy.initial_delay;
    let mut retries = 0u32;
    loop {
        let candidates = source.candidates(None);
        let mut last = None;
        for ep in &candidates {
            match dial(ep, opts).await {
                Ok(est) => return Ok(est),
                Err(e @ ClientError::Auth { .. }) => {
                    error!(endpoint = %ep, error = %e, "authentication failed: not retrying");
                    return Err(e);
                }
                Err(e @ ClientError::Tls { .. }) => {
                    error!(endpoint = %ep, error = %e, "unusable TLS settings: not retrying");
                    return Err(e);
                }
                Err(e) => {
                    warn!(endpoint = %ep, error = %e, "cannot connect");
                    last = Some(e);
                }
            }
        }
        let last = last.unwrap_or_else(|| ClientError::Discovery {
            message: "the group has no master".into(),
        });
        if policy
            .startup_max_attempts
            .is_some_and(|max| retries >= max)
        {
            return Err(last);
        }
        retries += 1;
        debug!(retry = retries, ?delay, "retrying the first connection");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = source.changed() => {}
        }
        delay = policy.next_delay(delay);
    }
}

/// Builds the driver of an established connection.
pub(crate) fn driver_for(
    est: Established,
    state: ConnState,
    links: DriverLinks,
    disconnect_timeout: Duration,
) -> (Driver<SocketRead, SocketWrite>, Negotiated) {
    let (reader, writer) = est.stream.into_split();
    let driver = Driver::new(
        reader,
        writer,
        &est.negotiated,
        est.decoder,
        est.rbuf,
        state,
        links,
        disconnect_timeout,
    );
    (driver, est.negotiated)
}

/// The connection task of a failover session (see the module docs).
pub(crate) struct Task {
    pub(crate) source: Source,
    pub(crate) policy: Policy,
    pub(crate) opts: ConnectOptions,
    pub(crate) shared: Arc<Shared>,
}

type Attempt =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Established, ClientError>> + Send>>;

impl Task {
    /// Runs the session on `driver` (connected to `endpoint`) and on every
    /// later connection, until the client disconnects, every handle is gone,
    /// or reconnecting gives up.
    pub(crate) async fn run(
        mut self,
        mut driver: Driver<SocketRead, SocketWrite>,
        mut endpoint: Endpoint,
    ) {
        loop {
            let token = CancellationToken::new();
            let run = driver.resumable(token.clone()).run();
            tokio::pin!(run);
            let resume = loop {
                tokio::select! {
                    r = &mut run => break r,
                    () = self.source.changed() => {
                        if self.source.moved_away(&endpoint) && !token.is_cancelled() {
                            info!(%endpoint, "the master moved: leaving this connection");
                            token.cancel();
                        }
                    }
                }
            };
            let Some(resume) = resume else {
                self.shared.connected.store(false, Ordering::Release);
                return;
            };
            let down_at = Instant::now();
            self.shared.connected.store(false, Ordering::Release);
            let reason = resume.reason.to_string();
            warn!(%endpoint, %reason, "connection interrupted: failing over");
            self.shared.emit(ConnectionEvent::Interrupted {
                endpoint: endpoint.to_string(),
                reason,
            });
            let Some((next, to)) = self.reconnect(resume, &endpoint, down_at).await else {
                return;
            };
            let downtime = down_at.elapsed();
            self.shared.failovers.fetch_add(1, Ordering::Relaxed);
            self.shared.downtime_ns.fetch_add(
                u64::try_from(downtime.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            *self
                .shared
                .endpoint
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = to.to_string();
            self.shared.connected.store(true, Ordering::Release);
            info!(from = %endpoint, to = %to, ?downtime, "failover complete: session resumed");
            self.shared.emit(ConnectionEvent::Connected {
                endpoint: to.to_string(),
            });
            self.shared.emit(ConnectionEvent::Resumed {
                from: endpoint.to_string(),
                to: to.to_string(),
                downtime,
            });
            driver = next;
            endpoint = to;
        }
    }

    /// Between connections: holds commands (failing those that wait past the
    /// timeout) while dialling with back-off. Returns the next connection's
    /// driver with the session replayed into it, or `None` when the session
    /// ended (everything waiting has been failed).
    async fn reconnect(
        &mut self,
        resume: Resume,
        failed: &Endpoint,
        down_at: Instant,
    ) -> Option<(Driver<SocketRead, SocketWrite>, Endpoint)> {
        let Resume {
            mut state,
            mut links,
            ..
        } = resume;
        let policy = self.policy.clone();
        let mut held: VecDeque<(Instant, Command)> = VecDeque::new();
        let mut delay = policy.initial_delay;
        let mut passes = 0u32;
        let mut candidates: VecDeque<Endpoint> = VecDeque::new();
        let mut in_pass = false;
        let mut attempt: Option<(Endpoint, Attempt)> = None;
        let mut retry_at = Instant::now();
        let mut handles_gone = false;
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        if policy.max_attempts == Some(0) {
            error!(endpoint = %failed, "maxReconnectAttempts=0: not reconnecting");
            self.end(state, links, held, &CloseReason::Eof);
            return None;
        }
        loop {
            let now = Instant::now();
            if attempt.is_none() && now >= retry_at {
                if !in_pass {
                    candidates = self.source.candidates(Some(failed)).into();
                    in_pass = true;
                }
                match candidates.pop_front() {
                    Some(ep) => {
                        let opts = self.opts.clone();
                        let target = ep.clone();
                        attempt = Some((ep, Box::pin(async move { dial(&target, &opts).await })));
                    }
                    None => {
                        // End of a pass without a connection.
                        in_pass = false;
                        passes += 1;
                        if policy.max_attempts.is_some_and(|max| passes >= max) {
                            error!(attempts = passes, "giving up reconnecting");
                            self.end(state, links, held, &CloseReason::Eof);
                            return None;
                        }
                        retry_at = now + delay;
                        debug!(pass = passes, ?delay, "no endpoint reachable; backing off");
                        delay = policy.next_delay(delay);
                    }
                }
            }
            // The earliest moment something times out.
            let expiry = policy.timeout.map(|t| {
                let held_due = held
                    .iter()
                    .find(|(_, c)| has_waiter(c))
                    .map_or(far, |(at, _)| *at + t);
                let pending_due = if state.has_pending() {
                    down_at + t
                } else {
                    far
                };
                held_due.min(pending_due)
            });
            let take = !handles_gone && held.len() < HELD_MAX;
            tokio::select! {
                r = async { attempt.as_mut().expect("checked").1.as_mut().await }, if attempt.is_some() => {
                    let (ep, _) = attempt.take().expect("checked");
                    match r {
                        Ok(est) => {
                            info!(endpoint = %ep, "connected");
                            let (mut driver, negotiated) =
                                driver_for(est, state, links, self.opts.connect_timeout);
                            self.shared
                                .epoch
                                .store(negotiated.epoch.unwrap_or(0), Ordering::Release);
                            let held = held.into_iter().map(|(_, c)| c);
                            driver.resume_session(negotiated.version, held);
                            return Some((driver, ep));
                        }
                        Err(e @ ClientError::Auth { .. }) => {
                            error!(endpoint = %ep, error = %e, "authentication failed: not retrying");
                            self.end(state, links, held, &CloseReason::ServerError {
                                message: e.to_string(),
                                detail: String::new(),
                            });
                            return None;
                        }
                        Err(e) => warn!(endpoint = %ep, error = %e, "reconnect attempt failed"),
                    }
                }
                cmd = links.commands.recv(), if take => match cmd {
                    Some(Command::Disconnect { reply }) => {
                        debug!("disconnect while between connections: closing");
                        self.end(state, links, held, &CloseReason::Disconnected);
                        if let Some(w) = reply {
                            let _ = w.send(Ok(()));
                        }
                        return None;
                    }
                    Some(cmd) => held.push_back((Instant::now(), cmd)),
                    None => {
                        handles_gone = true;
                        if held.iter().all(|(_, c)| !has_waiter(c)) && !state.has_pending() {
                            debug!("all handles dropped while between connections: closing");
                            self.end(state, links, held, &CloseReason::Disconnected);
                            return None;
                        }
                    }
                },
                () = tokio::time::sleep_until(expiry.unwrap_or(far)), if expiry.is_some() => {
                    let t = policy.timeout.unwrap_or_default();
                    let now = Instant::now();
                    let mut kept = VecDeque::with_capacity(held.len());
                    for (at, cmd) in held.drain(..) {
                        if has_waiter(&cmd) && now >= at + t {
                            fail_command(cmd, ClientError::NotConnected { after: t });
                        } else {
                            kept.push_back((at, cmd));
                        }
                    }
                    held = kept;
                    if state.has_pending() && now >= down_at + t {
                        warn!(timeout = ?t, "no connection within the timeout: failing requests in flight");
                        state.expire_pending(|| ClientError::NotConnected { after: t });
                    }
                }
                () = tokio::time::sleep_until(retry_at), if attempt.is_none() && retry_at > now => {}
                () = self.source.changed() => {
                    debug!("endpoints changed: reconnecting now");
                    attempt = None;
                    in_pass = false;
                    retry_at = Instant::now();
                    delay = policy.initial_delay;
                }
            }
        }
    }

    /// Ends the session: everything still waiting fails.
    fn end(
        &self,
        mut state: ConnState,
        mut links: DriverLinks,
        held: VecDeque<(Instant, Command)>,
        reason: &CloseReason,
    ) {
        self.shared.connected.store(false, Ordering::Release);
        links.closed.store(true, Ordering::Release);
        links.commands.close();
        for (_, cmd) in held {
            fail_command(cmd, ClientError::Closed);
        }
        while let Ok(cmd) = links.commands.try_recv() {
            fail_command(cmd, ClientError::Closed);
        }
        state.close(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_grows_to_the_cap() {
        let p = Policy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            ..Policy::default()
        };
        let d = p.next_delay(Duration::from_millis(10));
        assert_eq!(d, Duration::from_millis(20));
        assert_eq!(
            p.next_delay(Duration::from_millis(40)),
            Duration::from_millis(50)
        );
        let flat = Policy {
            exponential: false,
            ..p
        };
        assert_eq!(
            flat.next_delay(Duration::from_millis(10)),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn candidates_put_the_failed_endpoint_last_and_shuffle() {
        let eps: Vec<Endpoint> = (1..=5)
            .map(|p| Endpoint {
                host: "h".into(),
                port: p,
                tls: false,
            })
            .collect();
        let mut s = Source::fixed(eps.clone(), false);
        let c = s.candidates(Some(&eps[0]));
        assert_eq!(c.last(), Some(&eps[0]));
        assert_eq!(c.len(), 5);
        let mut r = Source::fixed(eps.clone(), true);
        let orders: std::collections::HashSet<Vec<u16>> = (0..20)
            .map(|_| r.candidates(None).iter().map(|e| e.port).collect())
            .collect();
        assert!(orders.len() > 1, "randomize shuffles");
        for o in orders {
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![1, 2, 3, 4, 5]);
        }
    }

    #[tokio::test]
    async fn watched_source_moves_only_to_a_different_master() {
        let record = |services: &[&str]| {
            Some(MasterRecord {
                container: "c".into(),
                epoch: 1,
                services: services.iter().map(|s| s.to_string()).collect(),
                since: 0,
            })
        };
        let (tx, rx) = watch::channel(record(&["stomp://a:1"]));
        let mut s = Source::watched(rx, Box::new(()));
        let a = Endpoint {
            host: "a".into(),
            port: 1,
            tls: false,
        };
        assert_eq!(s.candidates(None), vec![a.clone()]);
        assert!(!s.moved_away(&a));
        tx.send_replace(None);
        s.changed().await;
        assert!(!s.moved_away(&a), "no master: stay");
        tx.send_replace(record(&["stomp+ssl://a:1"]));
        s.changed().await;
        assert!(s.moved_away(&a), "same address, now TLS");
        assert_eq!(
            s.candidates(None),
            vec![Endpoint {
                tls: true,
                ..a.clone()
            }]
        );
        tx.send_replace(record(&["stomp://b:2"]));
        s.changed().await;
        assert!(s.moved_away(&a));
    }
}

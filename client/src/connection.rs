//! The public handles: [`Connection`], [`Subscription`], [`Transaction`] and
//! [`ReceiptFuture`].
//!
//! This module owns the user-facing side of a connection. A handle holds the
//! sending end of a bounded command channel; the driver task (`driver.rs`) at
//! the other end owns the socket and the session state (`state.rs`). Handles
//! therefore never lock anything on the hot path, are cheap to clone, and can
//! be used from many tasks at once. A full channel makes callers wait: that is
//! how a fast producer is slowed down to the speed of the socket.
//!
//! Dropping every handle (including subscriptions and transactions, which keep
//! their connection alive) makes the task send DISCONNECT and close.
//!
//! With a `failover:(...)` or `discovery:fabric:` URL the task at the other end
//! of the channel is the failover transport (`failover.rs`): the handles work
//! the same, requests wait across reconnects (bounded by the URL's `timeout`),
//! and [`Connection::events`], [`Connection::failovers`] and
//! [`Connection::downtime_total`] report what happened underneath.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fabricmq_stomp::Version;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, Instrument};

use crate::discovery::Discovery;
use crate::driver::{DriverLinks, Negotiated};
use crate::error::ClientError;
use crate::failover::{
    connect_first, dial, driver_for, ConnectionEvent, Endpoint, Policy, Shared, Source, Task,
    DEDUP_WINDOW,
};
use crate::message::{Message, Outgoing};
use crate::options::{AckMode, ConnectOptions, SubscribeOptions};
use crate::state::{AckTarget, Command, ConnState, DedupKey, SendReply, SharedSeen, Waiter};
use crate::url::BrokerUrl;

/// Capacity of the command channel between handles and the connection task.
const COMMAND_QUEUE: usize = 1024;
/// Subscription buffer size when no prefetch is given.
const DEFAULT_SUBSCRIPTION_BUFFER: usize = 1024;
/// Bounds of the subscription buffer size derived from the prefetch.
const MIN_SUBSCRIPTION_BUFFER: usize = 64;
const MAX_SUBSCRIPTION_BUFFER: usize = 65_536;

/// The handles' ends of the channels to the connection task.
struct HandleParts {
    commands: mpsc::Sender<Command>,
    written: watch::Receiver<u64>,
    closed: Arc<AtomicBool>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    /// Orders receipt-less sends: the sequence number is taken and the command
    /// queued under this lock, so sequence order is queue order.
    send_seq: Mutex<u64>,
    written: watch::Receiver<u64>,
    closed: Arc<AtomicBool>,
    negotiated: Negotiated,
    next_id: AtomicU64,
    connect_timeout: Duration,
    peer: String,
    shared: Arc<Shared>,
}

/// Cheap-to-clone handle to one STOMP connection (one task owns the socket).
///
/// All methods take `&self` and may be called concurrently from clones; frames
/// go out in the order their calls queued them.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.inner.peer)
            .field("server", &self.inner.negotiated.server)
            .field("version", &self.inner.negotiated.version)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Connects over TCP (and TLS for `ssl://`, trusting what `opts.tls` says),
    /// sends CONNECT and waits for CONNECTED, all within `opts.connect_timeout`.
    ///
    /// With a `failover:(...)` or `discovery:fabric:` URL the first connection
    /// is retried with back-off up to the URL's `startupMaxReconnectAttempts`
    /// (the last error is returned), and the returned connection reconnects
    /// by itself whenever its connection fails (see the `failover` module
    /// docs and [`events`](Self::events)).
    ///
    /// Errors: [`ClientError::Connect`] when the TCP connection fails,
    /// [`ClientError::Tls`] for unusable TLS settings (never retried),
    /// [`ClientError::TlsHandshake`] when the TLS handshake fails,
    /// [`ClientError::Auth`] when the broker answers with an ERROR (never
    /// retried), [`ClientError::Timeout`] when it takes too long,
    /// [`ClientError::Protocol`] when the broker's reply makes no sense,
    /// [`ClientError::Discovery`] when the registry cannot be used.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes closes the half-open socket;
    /// nothing is left running.
    pub async fn connect(url: &BrokerUrl, opts: ConnectOptions) -> Result<Connection, ClientError> {
        match url {
            BrokerUrl::Tcp { host, port, tls } => {
                if *tls {
                    // Unusable TLS settings fail here, before any dial.
                    crate::tls::client_config(&opts.tls)?;
                }
                Self::connect_tcp(host, *port, *tls, opts).await
            }
            BrokerUrl::Failover { urls, options } => {
                let list: Vec<Endpoint> = urls
                    .iter()
                    .map(|u| Endpoint {
                        host: u.host().to_owned(),
                        port: u.port(),
                        tls: matches!(u, BrokerUrl::Tcp { tls: true, .. }),
                    })
                    .collect();
                if list.iter().any(|e| e.tls) {
                    crate::tls::client_config(&opts.tls)?;
                }
                let source = Source::fixed(list, options.randomize);
                Self::connect_failover(source, Policy::from(options), opts, url.to_string()).await
            }
            BrokerUrl::Discovery { options, .. } => {
                let discovery = Discovery::from_url(url).await?;
                let source = Source::watched(discovery.master(), Box::new(discovery));
                Self::connect_failover(source, Policy::from(options), opts, url.to_string()).await
            }
        }
    }

    /// A plain connection to one broker (no failover).
    pub(crate) async fn connect_tcp(
        host: &str,
        port: u16,
        tls: bool,
        opts: ConnectOptions,
    ) -> Result<Connection, ClientError> {
        let ep = Endpoint {
            host: host.to_owned(),
            port,
            tls,
        };
        let est = dial(&ep, &opts).await?;
        let peer = ep.to_string();
        let shared = Arc::new(Shared::new(false, None, peer.clone()));
        shared
            .epoch
            .store(est.negotiated.epoch.unwrap_or(0), Ordering::Release);
        let (links, parts) = Self::links();
        let state = ConnState::new(est.negotiated.version);
        let (driver, negotiated) = driver_for(est, state, links, opts.connect_timeout);
        let span = tracing::debug_span!("stomp", peer = %peer);
        tokio::spawn(
            async move {
                driver.run().await;
            }
            .instrument(span),
        );
        Ok(Self::handle(
            parts,
            negotiated,
            opts.connect_timeout,
            peer,
            shared,
        ))
    }

    /// A failover connection over `source` with `policy`.
    pub(crate) async fn connect_failover(
        mut source: Source,
        policy: Policy,
        opts: ConnectOptions,
        label: String,
    ) -> Result<Connection, ClientError> {
        let est = connect_first(&mut source, &policy, &opts).await?;
        let endpoint = est.endpoint.clone();
        let shared = Arc::new(Shared::new(true, policy.timeout, endpoint.to_string()));
        shared
            .epoch
            .store(est.negotiated.epoch.unwrap_or(0), Ordering::Release);
        let (links, parts) = Self::links();
        let state = ConnState::new(est.negotiated.version).with_dedup(
            DEDUP_WINDOW,
            shared.duplicates.clone(),
            shared.generation.clone(),
        );
        let (driver, negotiated) = driver_for(est, state, links, opts.connect_timeout);
        let connect_timeout = opts.connect_timeout;
        let task = Task {
            source,
            policy,
            opts,
            shared: shared.clone(),
        };
        tracing::info!(%endpoint, url = %label, "connected");
        shared.emit(ConnectionEvent::Connected {
            endpoint: endpoint.to_string(),
        });
        let span = tracing::debug_span!("stomp", url = %label);
        tokio::spawn(task.run(driver, endpoint).instrument(span));
        Ok(Self::handle(
            parts,
            negotiated,
            connect_timeout,
            label,
            shared,
        ))
    }

    fn links() -> (DriverLinks, HandleParts) {
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (written_tx, written_rx) = watch::channel(0);
        let closed = Arc::new(AtomicBool::new(false));
        let links = DriverLinks {
            commands: commands_rx,
            written: written_tx,
            closed: closed.clone(),
        };
        (
            links,
            HandleParts {
                commands: commands_tx,
                written: written_rx,
                closed,
            },
        )
    }

    fn handle(
        parts: HandleParts,
        negotiated: Negotiated,
        connect_timeout: Duration,
        peer: String,
        shared: Arc<Shared>,
    ) -> Connection {
        Connection {
            inner: Arc::new(Inner {
                commands: parts.commands,
                send_seq: Mutex::new(0),
                written: parts.written,
                closed: parts.closed,
                negotiated,
                next_id: AtomicU64::new(1),
                connect_timeout,
                peer,
                shared,
            }),
        }
    }

    /// Events of a failover connection (connected, interrupted, resumed),
    /// from the moment of this call on. A plain `tcp://` connection never
    /// sends any. A receiver that falls more than 256 events behind loses the
    /// oldest ([`broadcast`] semantics).
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.inner.shared.events.subscribe()
    }

    /// How many times the session moved to a new connection.
    pub fn failovers(&self) -> u64 {
        self.inner.shared.failovers.load(Ordering::Relaxed)
    }

    /// Sum of the time spent without a connection, over every failover.
    pub fn downtime_total(&self) -> Duration {
        Duration::from_nanos(self.inner.shared.downtime_ns.load(Ordering::Relaxed))
    }

    /// How many redeliveries of already acknowledged messages the client
    /// dropped (failover connections only).
    pub fn duplicates_dropped(&self) -> u64 {
        self.inner.shared.duplicates.load(Ordering::Relaxed)
    }

    /// The broker endpoint (`host:port`) in use, or last used while
    /// reconnecting.
    pub fn endpoint(&self) -> String {
        self.inner
            .shared
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True while a failover connection is between two connections (always
    /// false for a plain one until it closes).
    pub fn is_reconnecting(&self) -> bool {
        self.inner.shared.failover
            && !self.is_closed()
            && !self.inner.shared.connected.load(Ordering::Acquire)
    }

    /// The election epoch of the fabric master this connection is on now (its CONNECTED
    /// `fabric-epoch` header; a failover connection updates it on every reconnection). `None`
    /// for a standalone broker or another server. Read it before a request and again after its
    /// receipt: the same value both times means that master gave the receipt.
    pub fn broker_epoch(&self) -> Option<u64> {
        match self.inner.shared.epoch.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    /// The CONNECTED `server` header (e.g. `fabricmq/0.1.0`), if the broker sent one.
    pub fn server(&self) -> Option<&str> {
        self.inner.negotiated.server.as_deref()
    }

    /// The negotiated STOMP version.
    pub fn version(&self) -> Version {
        self.inner.negotiated.version
    }

    /// The negotiated heart-beat intervals as (we send every, we expect every);
    /// `None` where disabled.
    pub fn heart_beat(&self) -> (Option<Duration>, Option<Duration>) {
        (
            self.inner.negotiated.send_every,
            self.inner.negotiated.expect_every,
        )
    }

    /// True once the connection no longer accepts requests (closed by either
    /// side, dead peer detected, or [`disconnect`](Self::disconnect) called).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) || self.inner.commands.is_closed()
    }

    fn next_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}",
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Queues `cmd`, waiting for room in the command channel.
    async fn enqueue(&self, cmd: Command) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let permit = self.reserve().await?;
        permit.send(cmd);
        Ok(())
    }

    /// Waits for room in the command channel. On a failover connection with a
    /// `timeout`, a wait that lasts the whole timeout while the transport is
    /// reconnecting fails with [`ClientError::NotConnected`].
    async fn reserve(&self) -> Result<mpsc::Permit<'_, Command>, ClientError> {
        let shared = &self.inner.shared;
        let Some(t) = shared.timeout.filter(|_| shared.failover) else {
            return self
                .inner
                .commands
                .reserve()
                .await
                .map_err(|_| ClientError::Closed);
        };
        loop {
            match tokio::time::timeout(t, self.inner.commands.reserve()).await {
                Ok(r) => return r.map_err(|_| ClientError::Closed),
                Err(_) if !shared.connected.load(Ordering::Acquire) => {
                    return Err(ClientError::NotConnected { after: t });
                }
                // Connected: ordinary backpressure, keep waiting.
                Err(_) => {}
            }
        }
    }

    /// Queues the command built around a fresh waiter and waits for its outcome.
    async fn request(&self, make: impl FnOnce(Waiter) -> Command) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(make(tx)).await?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Sends with a receipt and waits for it (or for the ERROR that refers to it).
    ///
    /// # Cancel safety
    /// Not cancel safe in the sense that the message may or may not have been
    /// sent when the future is dropped (dropping stops the wait, not the send).
    pub async fn send(&self, msg: Outgoing) -> Result<(), ClientError> {
        self.send_pipelined(msg, true).await?.await
    }

    /// Queues the SEND and returns at once (once there is room in the command
    /// queue); with `receipt` the returned future resolves when the RECEIPT
    /// arrives (pipelined sends), without it the future resolves once the frame
    /// is written to the socket. The returned future may be dropped: the send
    /// still happens.
    ///
    /// Receipt-less pipelined sends cost no allocation of their own; sends
    /// queued together are written with one syscall.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, the message
    /// was not queued.
    pub async fn send_pipelined(
        &self,
        msg: Outgoing,
        receipt: bool,
    ) -> Result<ReceiptFuture, ClientError> {
        if receipt {
            let (tx, rx) = oneshot::channel();
            let cmd = Command::Send {
                msg,
                transaction: None,
                reply: SendReply::Receipt(tx),
            };
            self.enqueue(cmd).await?;
            return Ok(ReceiptFuture {
                state: ReceiptState::Receipt(rx),
            });
        }
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let permit = self.reserve().await?;
        let seq = {
            let mut last = self
                .inner
                .send_seq
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *last += 1;
            let seq = *last;
            permit.send(Command::Send {
                msg,
                transaction: None,
                reply: SendReply::Written(seq),
            });
            seq
        };
        Ok(ReceiptFuture {
            state: ReceiptState::Written {
                seq,
                written: self.inner.written.clone(),
            },
        })
    }

    /// Subscribes to `destination` (a STOMP name like `/queue/x`) and waits for
    /// the broker's receipt, so messages sent after this returns are seen.
    ///
    /// The subscription's local buffer holds `opts.prefetch` messages (clamped
    /// to 64..=65536; 1024 without a prefetch). When it is full, the
    /// connection stops reading the socket: see [`Subscription`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, a subscription the broker may
    /// already have set up is unsubscribed when its first message arrives.
    pub async fn subscribe(
        &self,
        destination: &str,
        ack: AckMode,
        opts: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let id = self.next_id("sub");
        let buffer = opts.prefetch.map_or(DEFAULT_SUBSCRIPTION_BUFFER, |p| {
            (p as usize).clamp(MIN_SUBSCRIPTION_BUFFER, MAX_SUBSCRIPTION_BUFFER)
        });
        let (deliver, rx) = mpsc::channel(buffer);
        let sub_id = id.clone();
        let destination = destination.to_owned();
        let dedup = self.inner.shared.failover && ack != AckMode::Auto;
        let seen = dedup.then(|| SharedSeen::new(DEDUP_WINDOW, ack));
        let task_seen = seen.clone();
        self.request(move |reply| Command::Subscribe {
            id: sub_id,
            destination,
            ack,
            opts,
            deliver,
            reply,
            seen: task_seen,
        })
        .await?;
        let stale = seen.map(|seen| StaleFilter {
            generation: self.inner.shared.generation.clone(),
            duplicates: self.inner.shared.duplicates.clone(),
            seen,
        });
        Ok(Subscription {
            id,
            rx,
            conn: self.clone(),
            unsubscribed: false,
            stale,
        })
    }

    /// Acknowledges `msg` (STOMP 1.2: `ACK id:<ack_id>`; 1.1: `message-id` +
    /// `subscription`; 1.0: `message-id`). A no-op for auto-ack
    /// subscriptions. Returns once the ACK is queued (acks have no receipt).
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before completion, nothing was queued.
    pub async fn ack(&self, msg: &Message) -> Result<(), ClientError> {
        self.acknowledge(msg, false, None).await
    }

    /// Rejects `msg` (NACK, same addressing as [`ack`](Self::ack)); the broker
    /// redelivers it or moves it to a dead-letter queue. Not available when
    /// STOMP 1.0 was negotiated ([`ClientError::Protocol`]).
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before completion, nothing was queued.
    pub async fn nack(&self, msg: &Message) -> Result<(), ClientError> {
        self.acknowledge(msg, true, None).await
    }

    async fn acknowledge(
        &self,
        msg: &Message,
        nack: bool,
        transaction: Option<Arc<str>>,
    ) -> Result<(), ClientError> {
        let version = self.version();
        if nack && version == Version::V1_0 {
            return Err(ClientError::Protocol {
                reason: "NACK needs STOMP 1.1 or later; the broker negotiated 1.0".into(),
            });
        }
        let target = if version >= Version::V1_2 {
            match &msg.ack_id {
                Some(id) => AckTarget::Id(id.clone()),
                // No `ack` header: an auto-ack delivery, nothing to acknowledge.
                None => return Ok(()),
            }
        } else {
            AckTarget::MessageId {
                message_id: msg.message_id.clone(),
                subscription: msg.subscription.clone(),
            }
        };
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let permit = self.reserve().await?;
        if let (false, None, Some(seen)) = (nack, &transaction, &msg.seen) {
            // Recorded now, before the ACK is even queued: a redelivery already
            // buffered (or arriving before the connection task gets to the ACK)
            // must be recognised from here on.
            seen.acknowledged(&DedupKey::of(msg));
        }
        permit.send(Command::Ack {
            nack,
            target,
            transaction,
            generation: msg.generation,
        });
        Ok(())
    }

    /// Starts a transaction: BEGIN is queued (without a receipt: if the broker
    /// refuses it, the COMMIT fails) and a [`Transaction`] returned.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before completion, nothing was queued.
    pub async fn begin(&self) -> Result<Transaction, ClientError> {
        let id: Arc<str> = Arc::from(self.next_id("tx"));
        self.enqueue(Command::Begin {
            transaction: id.clone(),
        })
        .await?;
        Ok(Transaction {
            id,
            conn: self.clone(),
            finished: false,
        })
    }

    /// Sends DISCONNECT with a receipt, waits for it (bounded by
    /// `connect_timeout`: [`ClientError::Timeout`]), then closes. Requests
    /// queued before it complete first; later ones fail with
    /// [`ClientError::Closed`], on every clone of this handle. Fails with
    /// `Closed` if the connection was already closed.
    ///
    /// While the receipt is awaited, messages that arrive for a subscription
    /// whose buffer is full are dropped (not parked, see [`Subscription`]) so
    /// that an unconsumed subscription cannot hold the receipt up; messages
    /// already buffered stay readable.
    ///
    /// # Cancel safety
    /// If dropped after the DISCONNECT was queued, the connection still closes
    /// (at the latest `connect_timeout` after the DISCONNECT was written).
    pub async fn disconnect(self) -> Result<(), ClientError> {
        let after = self.inner.connect_timeout;
        let wait = self.request(|reply| Command::Disconnect { reply: Some(reply) });
        match tokio::time::timeout(after, wait).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: "DISCONNECT receipt",
                after,
            }),
        }
    }
}

/// Resolves when a pipelined SEND is done: for a receipt request, when the
/// RECEIPT arrives (`Err` with the broker's ERROR, or [`ClientError::Closed`]
/// if the connection ends first); without, when the frame was written to the
/// socket.
///
/// It is `Send + 'static` and may be dropped without affecting the send.
#[must_use = "a ReceiptFuture does nothing unless awaited; drop it to not wait"]
pub struct ReceiptFuture {
    state: ReceiptState,
}

type BoxedWait = Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send + Sync>>;

enum ReceiptState {
    Receipt(oneshot::Receiver<Result<(), ClientError>>),
    /// Waiting for the driver to publish `written >= seq`.
    Written {
        seq: u64,
        written: watch::Receiver<u64>,
    },
    /// Same, after a first poll found it not yet written (boxed lazily so that
    /// futures that are dropped unpolled cost no allocation).
    Waiting(BoxedWait),
    Done,
}

impl fmt::Debug for ReceiptFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            ReceiptState::Receipt(_) => "awaiting receipt",
            ReceiptState::Written { .. } | ReceiptState::Waiting(_) => "awaiting write",
            ReceiptState::Done => "done",
        };
        f.debug_struct("ReceiptFuture")
            .field("state", &state)
            .finish()
    }
}

impl Future for ReceiptFuture {
    type Output = Result<(), ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = match &mut this.state {
            ReceiptState::Receipt(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(r) => r.unwrap_or(Err(ClientError::Closed)),
                Poll::Pending => return Poll::Pending,
            },
            ReceiptState::Written { seq, written } => {
                if *written.borrow() >= *seq {
                    Ok(())
                } else {
                    let seq = *seq;
                    let mut written = written.clone();
                    let mut wait: BoxedWait = Box::pin(async move {
                        written
                            .wait_for(|w| *w >= seq)
                            .await
                            .map(|_| ())
                            .map_err(|_| ClientError::Closed)
                    });
                    match wait.as_mut().poll(cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            this.state = ReceiptState::Waiting(wait);
                            return Poll::Pending;
                        }
                    }
                }
            }
            ReceiptState::Waiting(wait) => match wait.as_mut().poll(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => return Poll::Pending,
            },
            ReceiptState::Done => Err(ClientError::Protocol {
                reason: "ReceiptFuture polled after completion".into(),
            }),
        };
        this.state = ReceiptState::Done;
        Poll::Ready(result)
    }
}

/// Messages of one subscription. Bounded buffer; ends (`None`) when the
/// connection closes or after unsubscribe.
///
/// # Backpressure
/// The buffer is bounded (see [`Connection::subscribe`]). When it is full the
/// connection stops reading its socket until there is room again, so an
/// unconsumed subscription pushes back on the broker (TCP flow control)
/// instead of growing memory. Reading resumes once a quarter of the buffer
/// is free again. A paused connection also holds up every other subscription
/// and every receipt of the same connection, so:
/// * consume all subscriptions, or drop the ones you no longer want;
/// * do not stop consuming to await a receipt (a `send`, a `commit`) on the
///   same connection while a buffer is full: the receipt is queued behind the
///   paused messages. With client acknowledgement and a prefetch of at most
///   65536 this cannot happen (the buffer holds the whole prefetch window);
///   with auto-ack, use a separate connection for such request/reply patterns.
///
/// Dropping a `Subscription` unsubscribes (best effort, without a receipt);
/// use [`unsubscribe`](Self::unsubscribe) to wait for the broker. Buffered
/// messages are still returned after the connection closed, then `None`.
pub struct Subscription {
    id: String,
    rx: mpsc::Receiver<Message>,
    conn: Connection,
    unsubscribed: bool,
    /// Failover sessions, acknowledging subscriptions: drops messages buffered from an earlier
    /// connection (see [`StaleFilter`]).
    stale: Option<StaleFilter>,
}

/// Drops, in a failover session's acknowledging subscription, what the application must not
/// see (counted as duplicates):
/// - messages delivered on an earlier connection that are still in the buffer: their ACK could
///   not be sent any more (ack ids belong to the connection that delivered them), and the broker
///   redelivers every unacknowledged message on the new connection;
/// - redeliveries of a message the application acknowledged after the redelivery reached the
///   buffer (it held the first copy across a failover): the connection task could not drop those
///   on arrival. Their ACK is sent (`client-individual`; a later cumulative ACK covers them in
///   `client` mode), so the broker does not redeliver them again.
///
/// Auto-ack subscriptions have no filter: the broker does not redeliver those.
struct StaleFilter {
    generation: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
    seen: SharedSeen,
}

/// What [`StaleFilter`] decides for a message.
#[derive(Debug, PartialEq, Eq)]
enum Filtered {
    /// Hand it to the application.
    Keep,
    /// Drop it.
    Drop,
    /// Drop it and acknowledge it on the broker (a redelivery of an acknowledged message).
    DropAndAck,
}

impl StaleFilter {
    /// What to do with `msg` (a dropped one is counted as a duplicate).
    fn check(&self, msg: &Message) -> Filtered {
        if msg.generation < self.generation.load(Ordering::Acquire) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(message_id = %msg.message_id, "dropping a message buffered from an earlier connection");
            return Filtered::Drop;
        }
        if !self.seen.is_acked(&DedupKey::of(msg)) {
            return Filtered::Keep;
        }
        self.duplicates.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(message_id = %msg.message_id, redelivered = msg.redelivered,
            "dropping a buffered redelivery of a message acknowledged meanwhile");
        // `client` mode: the application's next cumulative ACK covers it.
        if self.seen.mode() == AckMode::ClientIndividual {
            Filtered::DropAndAck
        } else {
            Filtered::Drop
        }
    }

    /// [`check`](Self::check) for the synchronous paths (`try_recv`, `Stream`): the ACK of a
    /// dropped redelivery is queued by a task of its own (outside a runtime the copy stays
    /// unacknowledged until the next reconnect, where it is dropped again).
    fn drops(&self, msg: &Message, conn: &Connection) -> bool {
        match self.check(msg) {
            Filtered::Keep => false,
            Filtered::Drop => true,
            Filtered::DropAndAck => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let (conn, msg) = (conn.clone(), msg.clone());
                    runtime.spawn(async move {
                        if let Err(e) = conn.ack(&msg).await {
                            tracing::debug!(error = %e, "cannot acknowledge a dropped redelivery");
                        }
                    });
                }
                true
            }
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("buffered", &self.rx.len())
            .finish()
    }
}

impl Subscription {
    /// The subscription id (the SUBSCRIBE `id` header, e.g. `sub-1`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next message, or `None` once the subscription ended.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is never lost when the future is dropped. (Dropped while it
    /// acknowledges a redelivery it filtered out, that ACK may not be sent: the copy then stays
    /// unacknowledged on the broker until the connection ends.)
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            let msg = self.rx.recv().await?;
            match self
                .stale
                .as_ref()
                .map_or(Filtered::Keep, |f| f.check(&msg))
            {
                Filtered::Keep => return Some(msg),
                Filtered::Drop => {}
                Filtered::DropAndAck => {
                    // Queued before the next message is returned, so it precedes the
                    // application's later ACKs and DISCONNECT.
                    if let Err(e) = self.conn.ack(&msg).await {
                        debug!(error = %e, "cannot acknowledge a dropped redelivery");
                    }
                }
            }
        }
    }

    /// Messages received from the broker and waiting in this subscription's buffer (not yet
    /// returned by [`recv`](Self::recv); some may still be dropped as duplicates then).
    pub fn buffered(&self) -> usize {
        self.rx.len()
    }

    /// The next message if one is already buffered.
    pub fn try_recv(&mut self) -> Option<Message> {
        loop {
            let msg = self.rx.try_recv().ok()?;
            if !self
                .stale
                .as_ref()
                .is_some_and(|f| f.drops(&msg, &self.conn))
            {
                return Some(msg);
            }
        }
    }

    /// The connection this subscription belongs to (e.g. to ack messages).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Sends UNSUBSCRIBE with a receipt and waits for it. Messages still in
    /// the buffer are discarded.
    ///
    /// # Cancel safety
    /// If dropped after the UNSUBSCRIBE was queued, it still happens.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.unsubscribed = true;
        let id = self.id.clone();
        let result = self
            .conn
            .request(move |reply| Command::Unsubscribe {
                id,
                reply: Some(reply),
            })
            .await;
        self.rx.close();
        result
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.unsubscribed && !self.conn.is_closed() {
            let id = std::mem::take(&mut self.id);
            // Best effort: if the queue is full, the connection notices the
            // dropped buffer on the next message for it and unsubscribes then.
            let _ = self
                .conn
                .inner
                .commands
                .try_send(Command::Unsubscribe { id, reply: None });
        }
    }
}

impl futures::Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(msg))
                    if self
                        .stale
                        .as_ref()
                        .is_some_and(|f| f.drops(&msg, &self.conn)) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }
}

/// A STOMP transaction: BEGIN was sent and the `transaction` header is added to
/// every send and ack made through it. Finish with [`commit`](Self::commit) or
/// [`abort`](Self::abort); dropping it unfinished sends ABORT (best effort).
pub struct Transaction {
    id: Arc<str>,
    conn: Connection,
    finished: bool,
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction").field("id", &self.id).finish()
    }
}

impl Transaction {
    /// The transaction id (the `transaction` header, e.g. `tx-1`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Queues a SEND inside the transaction (no receipt needed per send: the
    /// COMMIT's receipt covers it).
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before completion, nothing was queued.
    pub async fn send(&self, msg: Outgoing) -> Result<(), ClientError> {
        let transaction = Some(self.id.clone());
        self.conn
            .enqueue(Command::Send {
                msg,
                transaction,
                reply: SendReply::Nothing,
            })
            .await
    }

    /// Acknowledges `msg` inside the transaction (takes effect on commit).
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before completion, nothing was queued.
    pub async fn ack(&self, msg: &Message) -> Result<(), ClientError> {
        self.conn
            .acknowledge(msg, false, Some(self.id.clone()))
            .await
    }

    /// Rejects `msg` inside the transaction.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before completion, nothing was queued.
    pub async fn nack(&self, msg: &Message) -> Result<(), ClientError> {
        self.conn
            .acknowledge(msg, true, Some(self.id.clone()))
            .await
    }

    /// Sends COMMIT with a receipt and waits for it.
    ///
    /// # Cancel safety
    /// If dropped after the COMMIT was queued, the commit still happens but
    /// its outcome is unknown.
    pub async fn commit(mut self) -> Result<(), ClientError> {
        self.finished = true;
        let transaction = self.id.clone();
        self.conn
            .request(move |reply| Command::Commit { transaction, reply })
            .await
    }

    /// Sends ABORT with a receipt and waits for it.
    ///
    /// # Cancel safety
    /// If dropped after the ABORT was queued, the abort still happens.
    pub async fn abort(mut self) -> Result<(), ClientError> {
        self.finished = true;
        let transaction = self.id.clone();
        self.conn
            .request(move |reply| Command::Abort {
                transaction,
                reply: Some(reply),
            })
            .await
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.finished && !self.conn.is_closed() {
            debug!(transaction = %self.id, "transaction dropped unfinished: aborting");
            let transaction = self.id.clone();
            let _ = self.conn.inner.commands.try_send(Command::Abort {
                transaction,
                reply: None,
            });
        }
    }
}

//! The connection state machine, without I/O.
//!
//! [`ConnState`] owns everything a STOMP session remembers between frames:
//! the negotiated version, the receipts still awaited (with their waiters),
//! and the live subscriptions (with the channels their messages go to). It
//! turns [`Command`]s from the public handles into encoded frames appended to
//! an output buffer, and turns decoded frames from the broker into waiter
//! completions and message deliveries.
//!
//! It never touches a socket or a timer: the driver (`driver.rs`) owns those
//! and feeds this type. That split is what lets a later failover transport
//! reuse it: after reconnecting, the driver calls [`ConnState::replay`] to
//! re-subscribe and to re-send every `SEND` whose receipt never came (with the
//! same `producer-id`/`producer-seq`, so the broker can drop duplicates).
//!
//! For a failover session it also remembers, per subscription, a bounded
//! window of the messages the application acknowledged ([`Seen`]), so that
//! the broker's redelivery of a message whose ACK was lost with the old
//! connection is dropped instead of handed to the application twice; and the
//! transactions open when a connection failed, which then fail with
//! [`ClientError::TransactionLost`].
//!
//! The window is shared ([`SharedSeen`]) with the application side: an ACK is
//! recorded when the application makes it (not when this task gets to it), and
//! the subscription handle checks the window again when it hands a message
//! out. A redelivery can reach the buffer while the application still holds the
//! first copy (delivered just before a failover, acknowledged after the new
//! connection redelivered it); checking only on arrival let that copy through.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use fabricmq_stomp::{Command as StompCommand, Frame, FrameWriter, Version};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::error::ClientError;
use crate::message::{Message, Outgoing};
use crate::options::{AckMode, SubscribeOptions};

/// Completes one request that waits for a receipt.
pub(crate) type Waiter = oneshot::Sender<Result<(), ClientError>>;

/// What the sender of a `SEND` wants to hear back.
pub(crate) enum SendReply {
    /// Ask the broker for a receipt and complete the waiter with it.
    Receipt(Waiter),
    /// No receipt; the driver publishes this sequence number once the frame is
    /// written to the socket (see `ReceiptFuture`).
    Written(u64),
    /// Nothing (transactional sends: the COMMIT receipt covers them).
    Nothing,
}

/// How an ACK/NACK names its message, decided by the handle from the
/// negotiated version.
pub(crate) enum AckTarget {
    /// STOMP 1.2: the MESSAGE's `ack` header value.
    Id(String),
    /// STOMP 1.0/1.1: `message-id` (+ `subscription` in 1.1).
    MessageId {
        /// `message-id` of the MESSAGE.
        message_id: String,
        /// `subscription` of the MESSAGE.
        subscription: String,
    },
}

/// A request from a public handle to the connection task.
pub(crate) enum Command {
    /// SEND, optionally inside a transaction.
    Send {
        msg: Outgoing,
        transaction: Option<Arc<str>>,
        reply: SendReply,
    },
    /// SUBSCRIBE (always with a receipt).
    Subscribe {
        id: String,
        destination: String,
        ack: AckMode,
        opts: SubscribeOptions,
        deliver: mpsc::Sender<Message>,
        reply: Waiter,
        /// The de-duplication window the subscription handle shares (failover
        /// sessions, acknowledging subscriptions); `None`: made here if the
        /// session de-duplicates.
        seen: Option<SharedSeen>,
    },
    /// UNSUBSCRIBE; with a receipt when `reply` is set.
    Unsubscribe { id: String, reply: Option<Waiter> },
    /// ACK or NACK.
    Ack {
        nack: bool,
        target: AckTarget,
        transaction: Option<Arc<str>>,
        /// The connection generation of the message (see [`Message`]); an
        /// ACK for an earlier connection's delivery is not written. (The
        /// handle already recorded the ACK in the message's [`SharedSeen`].)
        generation: u64,
    },
    /// BEGIN (no receipt: a failed BEGIN makes the COMMIT fail).
    Begin { transaction: Arc<str> },
    /// COMMIT with a receipt.
    Commit {
        transaction: Arc<str>,
        reply: Waiter,
    },
    /// ABORT; with a receipt when `reply` is set.
    Abort {
        transaction: Arc<str>,
        reply: Option<Waiter>,
    },
    /// DISCONNECT with a receipt; `reply` is `None` when the task disconnects
    /// on its own because every handle is gone.
    Disconnect { reply: Option<Waiter> },
}

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum CloseReason {
    /// The broker closed the TCP connection.
    Eof,
    /// An ERROR frame not tied to a receipt.
    ServerError { message: String, detail: String },
    /// Nothing arrived within this long (twice the negotiated interval).
    HeartbeatTimeout(Duration),
    /// A socket error.
    Io(std::io::Error),
    /// Undecodable input or an unexpected frame.
    Protocol(String),
    /// The DISCONNECT receipt arrived.
    Disconnected,
    /// The DISCONNECT receipt did not arrive in time.
    DisconnectTimeout,
    /// The failover transport left this connection on purpose (the group's
    /// master moved to another endpoint).
    Moved(String),
}

impl CloseReason {
    /// The error handed to a waiter that this close leaves unanswered.
    fn error(&self) -> ClientError {
        match self {
            CloseReason::ServerError { message, detail } => ClientError::Server {
                message: message.clone(),
                detail: detail.clone(),
            },
            _ => ClientError::Closed,
        }
    }

    /// True for the ends the client asked for.
    pub(crate) fn is_graceful(&self) -> bool {
        matches!(self, CloseReason::Disconnected)
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Eof => f.write_str("broker closed the connection"),
            CloseReason::ServerError { message, .. } => write!(f, "broker ERROR: {message}"),
            CloseReason::HeartbeatTimeout(d) => write!(f, "nothing received for {d:?}"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::Protocol(r) => write!(f, "protocol error: {r}"),
            CloseReason::Disconnected => f.write_str("disconnected"),
            CloseReason::DisconnectTimeout => f.write_str("no DISCONNECT receipt in time"),
            CloseReason::Moved(to) => write!(f, "master moved to {to}"),
        }
    }
}

/// A MESSAGE that could not be delivered because its subscription's buffer is
/// full. The driver stops reading the socket until `deliver` has room.
pub(crate) struct Parked {
    /// The subscription it belongs to.
    pub(crate) sub_id: String,
    /// A clone of that subscription's sender.
    pub(crate) deliver: mpsc::Sender<Message>,
    /// The message.
    pub(crate) msg: Message,
}

enum PendingKind {
    /// The message is kept (moved, not copied) so a failover transport can
    /// re-send it if the connection dies before the receipt.
    Send(Outgoing),
    Subscribe(String),
    Unsubscribe,
    Commit(Arc<str>),
    Abort,
    Disconnect,
}

struct Pending {
    waiter: Option<Waiter>,
    kind: PendingKind,
}

struct SubEntry {
    destination: String,
    ack: AckMode,
    opts: SubscribeOptions,
    deliver: mpsc::Sender<Message>,
    /// Client-side de-duplication (failover sessions, non-auto acks only).
    seen: Option<SharedSeen>,
}

/// What identifies a message across redeliveries: the producer's id and
/// sequence when it has them (stable whatever the broker), else the broker's
/// `message-id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum DedupKey {
    /// `producer-id` and `producer-seq`.
    Producer(Arc<str>, u64),
    /// `message-id`.
    MessageId(Arc<str>),
}

impl DedupKey {
    /// The key of `msg`.
    pub(crate) fn of(msg: &Message) -> DedupKey {
        match (msg.header("producer-id"), msg.producer()) {
            (Some(id), Some((_, seq))) => DedupKey::Producer(Arc::from(id), seq),
            _ => DedupKey::MessageId(Arc::from(msg.message_id.as_str())),
        }
    }
}

/// Per subscription: the last `window` messages the application acknowledged
/// (a ring plus a set over it) and, for cumulative (`client`) acks, the
/// messages handed out and not yet covered by an ACK. Both are bounded, so
/// memory stays bounded whatever the application does.
struct Seen {
    window: usize,
    acked: HashSet<DedupKey>,
    order: VecDeque<DedupKey>,
    /// `client` mode only: handed to the application, not yet acknowledged.
    handed: VecDeque<DedupKey>,
}

/// A subscription's [`Seen`], shared by the connection task (drops redeliveries
/// as they arrive), the messages it delivers (an ACK records itself the moment
/// the application makes it) and the subscription handle (drops a redelivery
/// buffered before the application acknowledged its first copy).
#[derive(Clone)]
pub(crate) struct SharedSeen {
    seen: Arc<Mutex<Seen>>,
    mode: AckMode,
}

impl std::fmt::Debug for SharedSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSeen")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl SharedSeen {
    /// An empty window of `window` acknowledged messages for a subscription in
    /// `mode`.
    pub(crate) fn new(window: usize, mode: AckMode) -> SharedSeen {
        SharedSeen {
            seen: Arc::new(Mutex::new(Seen::new(window))),
            mode,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The application acknowledged `key` (`client` mode: and everything
    /// handed out before it).
    pub(crate) fn acknowledged(&self, key: &DedupKey) {
        let mut seen = self.lock();
        match self.mode {
            AckMode::Client => seen.acked_up_to(key),
            _ => seen.record(key.clone()),
        }
    }

    /// Whether the application acknowledged a copy of `key`.
    pub(crate) fn is_acked(&self, key: &DedupKey) -> bool {
        self.lock().acked.contains(key)
    }

    /// The subscription's acknowledgement mode.
    pub(crate) fn mode(&self) -> AckMode {
        self.mode
    }
}

impl Seen {
    fn new(window: usize) -> Seen {
        Seen {
            window,
            acked: HashSet::new(),
            order: VecDeque::new(),
            handed: VecDeque::new(),
        }
    }

    fn record(&mut self, key: DedupKey) {
        if self.acked.insert(key.clone()) {
            self.order.push_back(key);
            while self.order.len() > self.window {
                if let Some(old) = self.order.pop_front() {
                    self.acked.remove(&old);
                }
            }
        }
    }

    fn handed(&mut self, key: DedupKey) {
        self.handed.push_back(key);
        while self.handed.len() > self.window {
            self.handed.pop_front();
        }
    }

    /// A cumulative ACK of `key`: it and everything handed out before it.
    fn acked_up_to(&mut self, key: &DedupKey) {
        if let Some(pos) = self.handed.iter().position(|k| k == key) {
            let covered: Vec<DedupKey> = self.handed.drain(..=pos).collect();
            for k in covered {
                self.record(k);
            }
        } else {
            self.record(key.clone());
        }
    }
}

/// The STOMP session state of one connection (see the module docs).
pub(crate) struct ConnState {
    version: Version,
    next_receipt: u64,
    /// Ordered by receipt id = by the order requests were written.
    pending: BTreeMap<u64, Pending>,
    subs: HashMap<String, SubEntry>,
    disconnect_receipt: Option<u64>,
    disconnected: bool,
    /// Incremented by every [`replay`](Self::replay) (one per reconnect).
    generation: u64,
    /// Size of the per-subscription de-duplication window; 0 disables it.
    dedup_window: usize,
    /// Redeliveries dropped by the de-duplication window.
    duplicates: Arc<AtomicU64>,
    /// Published copy of `generation` for the subscription handles (failover sessions).
    shared_generation: Option<Arc<AtomicU64>>,
    /// Transactions begun and not yet committed or aborted.
    open_tx: HashSet<Arc<str>>,
    /// Transactions that were open when a connection failed.
    lost_tx: HashSet<Arc<str>>,
}

impl ConnState {
    /// A fresh session that negotiated `version`.
    pub(crate) fn new(version: Version) -> ConnState {
        ConnState {
            version,
            next_receipt: 1,
            pending: BTreeMap::new(),
            subs: HashMap::new(),
            disconnect_receipt: None,
            disconnected: false,
            generation: 0,
            dedup_window: 0,
            duplicates: Arc::new(AtomicU64::new(0)),
            shared_generation: None,
            open_tx: HashSet::new(),
            lost_tx: HashSet::new(),
        }
    }

    /// Turns on client-side de-duplication (failover sessions): each
    /// non-auto subscription remembers the last `window` acknowledged
    /// messages and drops their redeliveries, counting them in `duplicates`.
    pub(crate) fn with_dedup(
        mut self,
        window: usize,
        duplicates: Arc<AtomicU64>,
        generation: Arc<AtomicU64>,
    ) -> ConnState {
        self.shared_generation = Some(generation);
        self.dedup_window = window;
        self.duplicates = duplicates;
        self
    }

    /// The connection generation (0 before the first reconnect).
    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Requests still waiting for a receipt.
    #[cfg(test)]
    pub(crate) fn pending_receipts(&self) -> usize {
        self.pending.len()
    }

    /// True once DISCONNECT has been written: nothing else may follow it.
    pub(crate) fn is_disconnecting(&self) -> bool {
        self.disconnect_receipt.is_some()
    }

    /// True once the DISCONNECT receipt arrived: the connection can close.
    pub(crate) fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// True while subscription `id` is live.
    pub(crate) fn has_subscription(&self, id: &str) -> bool {
        self.subs.contains_key(id)
    }

    fn receipt_id(&mut self) -> u64 {
        let id = self.next_receipt;
        self.next_receipt += 1;
        id
    }

    /// Starts `cmd` in `out` with the codec's writer (escaping per the
    /// negotiated version). `hint` (headers plus body) is reserved up front so
    /// the buffer grows at most once per frame.
    fn writer<'a>(&self, out: &'a mut BytesMut, cmd: StompCommand, hint: usize) -> FrameWriter<'a> {
        out.reserve(hint + 32);
        FrameWriter::begin(out, cmd, self.version)
    }

    /// Encodes `cmd` into `out` and registers what it waits for. Returns the
    /// sequence number of a receipt-less SEND whose write must be published.
    pub(crate) fn handle_command(&mut self, cmd: Command, out: &mut BytesMut) -> Option<u64> {
        if self.is_disconnecting() {
            // The driver stops taking commands after DISCONNECT; anything that
            // slips through is refused rather than written after it.
            reject(cmd);
            return None;
        }
        match cmd {
            Command::Send {
                transaction: Some(t),
                ..
            } if self.lost_tx.contains(&t) => {
                debug!(transaction = %t, "dropping a SEND of a transaction lost in a failover");
                None
            }
            Command::Send {
                msg,
                transaction,
                reply,
            } => match reply {
                SendReply::Receipt(waiter) => {
                    let id = self.receipt_id();
                    self.encode_send(&msg, transaction.as_deref(), Some(id), out);
                    self.pending.insert(
                        id,
                        Pending {
                            waiter: Some(waiter),
                            kind: PendingKind::Send(msg),
                        },
                    );
                    None
                }
                SendReply::Written(seq) => {
                    self.encode_send(&msg, transaction.as_deref(), None, out);
                    Some(seq)
                }
                SendReply::Nothing => {
                    self.encode_send(&msg, transaction.as_deref(), None, out);
                    None
                }
            },
            Command::Subscribe {
                id,
                destination,
                ack,
                opts,
                deliver,
                reply,
                seen,
            } => {
                let receipt = self.receipt_id();
                self.encode_subscribe(&id, &destination, ack, &opts, Some(receipt), out);
                let seen = seen.or_else(|| {
                    (self.dedup_window > 0 && ack != AckMode::Auto)
                        .then(|| SharedSeen::new(self.dedup_window, ack))
                });
                self.subs.insert(
                    id.clone(),
                    SubEntry {
                        destination,
                        ack,
                        opts,
                        deliver,
                        seen,
                    },
                );
                self.pending.insert(
                    receipt,
                    Pending {
                        waiter: Some(reply),
                        kind: PendingKind::Subscribe(id),
                    },
                );
                None
            }
            Command::Unsubscribe { id, reply } => {
                if self.subs.remove(&id).is_some() {
                    let receipt = reply.as_ref().map(|_| self.receipt_id());
                    self.encode_unsubscribe(&id, receipt, out);
                    if let (Some(r), Some(w)) = (receipt, reply) {
                        self.pending.insert(
                            r,
                            Pending {
                                waiter: Some(w),
                                kind: PendingKind::Unsubscribe,
                            },
                        );
                    }
                } else if let Some(w) = reply {
                    // Already gone (its buffer was dropped and we unsubscribed then).
                    let _ = w.send(Ok(()));
                }
                None
            }
            Command::Ack {
                nack,
                target,
                transaction,
                generation,
            } => {
                if let Some(t) = &transaction {
                    if self.lost_tx.contains(t) {
                        return None;
                    }
                }
                if generation != self.generation {
                    // Delivered by an earlier connection: its ack id means
                    // nothing (or something else) on this one. The broker
                    // redelivers the message; the de-duplication window drops
                    // (and re-acknowledges) that copy.
                    debug!("not sending an ACK for a delivery of a previous connection");
                    return None;
                }
                self.encode_ack(nack, &target, transaction.as_deref(), out);
                None
            }
            Command::Begin { transaction } => {
                let mut w = self.writer(out, StompCommand::Begin, 32 + transaction.len());
                w.header("transaction", &transaction);
                w.finish(b"");
                self.open_tx.insert(transaction);
                None
            }
            Command::Commit { transaction, reply } => {
                if self.lost_tx.remove(&transaction) {
                    let _ = reply.send(Err(ClientError::TransactionLost {
                        transaction: transaction.to_string(),
                        outcome_unknown: false,
                    }));
                    return None;
                }
                self.open_tx.remove(&transaction);
                self.encode_tx_end(StompCommand::Commit, &transaction, Some(reply), out);
                None
            }
            Command::Abort { transaction, reply } => {
                if self.lost_tx.remove(&transaction) {
                    // The broker already rolled it back with the old connection.
                    if let Some(w) = reply {
                        let _ = w.send(Ok(()));
                    }
                    return None;
                }
                self.open_tx.remove(&transaction);
                self.encode_tx_end(StompCommand::Abort, &transaction, reply, out);
                None
            }
            Command::Disconnect { reply } => {
                let receipt = self.receipt_id();
                let mut w = self.writer(out, StompCommand::Disconnect, 32);
                w.header_u64("receipt", receipt);
                w.finish(b"");
                self.pending.insert(
                    receipt,
                    Pending {
                        waiter: reply,
                        kind: PendingKind::Disconnect,
                    },
                );
                self.disconnect_receipt = Some(receipt);
                None
            }
        }
    }

    fn encode_send(
        &self,
        msg: &Outgoing,
        transaction: Option<&str>,
        receipt: Option<u64>,
        out: &mut BytesMut,
    ) {
        let extra: usize = msg.headers.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let hint = 200 + msg.destination.len() + extra + msg.body.len();
        let mut w = self.writer(out, StompCommand::Send, hint);
        w.header("destination", &msg.destination);
        if let Some(r) = receipt {
            w.header_u64("receipt", r);
        }
        if let Some(t) = transaction {
            w.header("transaction", t);
        }
        if let Some(p) = msg.persistent {
            w.header("persistent", if p { "true" } else { "false" });
        }
        if let Some(p) = msg.priority {
            w.header_u64("priority", u64::from(p));
        }
        if let Some(e) = msg.expires {
            w.header_u64("expires", e);
        }
        if let Some((id, seq)) = &msg.producer {
            w.header("producer-id", id);
            w.header_u64("producer-seq", *seq);
        }
        if let Some(ct) = &msg.content_type {
            w.header("content-type", ct);
        }
        for (k, v) in &msg.headers {
            if !k.eq_ignore_ascii_case("content-length") {
                w.header(k, v);
            }
        }
        w.finish(&msg.body);
    }

    fn encode_subscribe(
        &self,
        id: &str,
        destination: &str,
        ack: AckMode,
        opts: &SubscribeOptions,
        receipt: Option<u64>,
        out: &mut BytesMut,
    ) {
        let mut w = self.writer(out, StompCommand::Subscribe, 160 + destination.len());
        w.header("id", id);
        w.header("destination", destination);
        w.header("ack", ack.as_str());
        if let Some(p) = opts.prefetch {
            w.header_u64("prefetch", u64::from(p));
            w.header_u64("activemq.prefetchSize", u64::from(p));
        }
        if opts.browser {
            w.header("browser", "true");
        }
        if let Some(r) = receipt {
            w.header_u64("receipt", r);
        }
        for (k, v) in &opts.headers {
            w.header(k, v);
        }
        w.finish(b"");
    }

    fn encode_unsubscribe(&self, id: &str, receipt: Option<u64>, out: &mut BytesMut) {
        let mut w = self.writer(out, StompCommand::Unsubscribe, 48 + id.len());
        w.header("id", id);
        if let Some(r) = receipt {
            w.header_u64("receipt", r);
        }
        w.finish(b"");
    }

    fn encode_ack(
        &self,
        nack: bool,
        target: &AckTarget,
        transaction: Option<&str>,
        out: &mut BytesMut,
    ) {
        if let AckTarget::MessageId { subscription, .. } = target {
            if self
                .subs
                .get(subscription)
                .is_some_and(|s| s.ack == AckMode::Auto)
            {
                // Auto mode: the broker considers it acknowledged already.
                return;
            }
        }
        let cmd = if nack {
            StompCommand::Nack
        } else {
            StompCommand::Ack
        };
        let mut w = self.writer(out, cmd, 160);
        match target {
            AckTarget::Id(id) => {
                w.header("id", id);
            }
            AckTarget::MessageId {
                message_id,
                subscription,
            } => {
                w.header("message-id", message_id);
                if self.version >= Version::V1_1 {
                    w.header("subscription", subscription);
                }
            }
        }
        if let Some(t) = transaction {
            w.header("transaction", t);
        }
        w.finish(b"");
    }

    fn encode_tx_end(
        &mut self,
        cmd: StompCommand,
        transaction: &str,
        reply: Option<Waiter>,
        out: &mut BytesMut,
    ) {
        let receipt = reply.as_ref().map(|_| self.receipt_id());
        let mut w = self.writer(out, cmd, 64 + transaction.len());
        w.header("transaction", transaction);
        if let Some(r) = receipt {
            w.header_u64("receipt", r);
        }
        w.finish(b"");
        if let (Some(r), Some(w)) = (receipt, reply) {
            let kind = if cmd == StompCommand::Commit {
                PendingKind::Commit(Arc::from(transaction))
            } else {
                PendingKind::Abort
            };
            self.pending.insert(
                r,
                Pending {
                    waiter: Some(w),
                    kind,
                },
            );
        }
    }

    /// Handles one frame from the broker. A MESSAGE whose subscription buffer
    /// is full comes back as [`Parked`]; an error that ends the connection
    /// comes back as `Err`.
    pub(crate) fn handle_frame(
        &mut self,
        frame: Frame,
        out: &mut BytesMut,
    ) -> Result<Option<Parked>, CloseReason> {
        match frame.command {
            StompCommand::Message => Ok(self.deliver(Message::from_frame(frame), out)),
            StompCommand::Receipt => {
                let id = frame
                    .get("receipt-id")
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match id.and_then(|id| self.pending.remove(&id)) {
                    Some(p) => {
                        if matches!(p.kind, PendingKind::Disconnect) {
                            self.disconnected = true;
                        }
                        if let Some(w) = p.waiter {
                            let _ = w.send(Ok(()));
                        }
                    }
                    None => {
                        debug!(receipt_id = ?frame.get("receipt-id"), "ignoring unknown receipt")
                    }
                }
                Ok(None)
            }
            StompCommand::Error => {
                let detail = String::from_utf8_lossy(&frame.body).into_owned();
                let message = match frame.get("message") {
                    Some(m) => m.to_owned(),
                    None => detail.lines().next().unwrap_or("(no message)").to_owned(),
                };
                let id = frame
                    .get("receipt-id")
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if let Some(p) = id.and_then(|id| self.pending.remove(&id)) {
                    warn!(%message, receipt_id = id, "broker refused a request");
                    if let PendingKind::Subscribe(sub) = &p.kind {
                        self.subs.remove(sub);
                    }
                    if matches!(p.kind, PendingKind::Disconnect) {
                        self.disconnected = true;
                    }
                    if let Some(w) = p.waiter {
                        let _ = w.send(Err(ClientError::Server { message, detail }));
                    }
                    return Ok(None);
                }
                Err(CloseReason::ServerError { message, detail })
            }
            StompCommand::Connected => {
                warn!("ignoring a second CONNECTED frame");
                Ok(None)
            }
            other => Err(CloseReason::Protocol(format!(
                "unexpected {} frame from the broker",
                other.as_str()
            ))),
        }
    }

    fn deliver(&mut self, mut msg: Message, out: &mut BytesMut) -> Option<Parked> {
        msg.generation = self.generation;
        let version = self.version;
        let Some(sub) = self.subs.get_mut(&msg.subscription) else {
            debug!(subscription = %msg.subscription, message_id = %msg.message_id,
                "dropping MESSAGE for an unknown subscription");
            return None;
        };
        let mode = sub.ack;
        let mut handed = None;
        let mut duplicate = false;
        if let Some(seen) = &sub.seen {
            let key = DedupKey::of(&msg);
            if seen.is_acked(&key) {
                duplicate = true;
            } else if mode == AckMode::Client {
                handed = Some(key);
            }
            msg.seen = Some(seen.clone());
        }
        if duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            debug!(subscription = %msg.subscription, message_id = %msg.message_id,
                redelivered = msg.redelivered, "dropping a redelivery of an acknowledged message");
            if mode == AckMode::ClientIndividual {
                // Settle it on the broker, which lost the first ACK.
                let target = match (&msg.ack_id, version) {
                    (Some(id), Version::V1_2) => Some(AckTarget::Id(id.clone())),
                    (None, Version::V1_2) => None,
                    _ => Some(AckTarget::MessageId {
                        message_id: msg.message_id.clone(),
                        subscription: msg.subscription.clone(),
                    }),
                };
                if let Some(target) = target {
                    self.encode_ack(false, &target, None, out);
                }
            }
            // `client` mode: the application's next (cumulative) ACK covers it.
            return None;
        }
        let disconnecting = self.is_disconnecting();
        let sub = self.subs.get_mut(&msg.subscription)?;
        if let (Some(key), Some(seen)) = (handed, &sub.seen) {
            // Counted as handed out even if parked: it is delivered once the
            // buffer has room (or redelivered after a failover).
            seen.lock().handed(key);
        }
        match sub.deliver.try_send(msg) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(msg)) if disconnecting => {
                // Waiting for the DISCONNECT receipt must not depend on the
                // subscriber making room; nothing can be acked any more anyway.
                debug!(subscription = %msg.subscription, message_id = %msg.message_id,
                    "dropping MESSAGE for a full subscription while disconnecting");
                None
            }
            Err(mpsc::error::TrySendError::Full(msg)) => {
                debug!(subscription = %msg.subscription, "subscription buffer full: pausing reads");
                Some(Parked {
                    sub_id: msg.subscription.clone(),
                    deliver: sub.deliver.clone(),
                    msg,
                })
            }
            Err(mpsc::error::TrySendError::Closed(msg)) => {
                self.subscriber_gone(&msg.subscription, out);
                None
            }
        }
    }

    /// The `Subscription` of `id` was dropped: tell the broker (once).
    pub(crate) fn subscriber_gone(&mut self, id: &str, out: &mut BytesMut) {
        if self.subs.remove(id).is_some() && !self.is_disconnecting() {
            debug!(subscription = id, "subscription dropped: unsubscribing");
            self.encode_unsubscribe(id, None, out);
        }
    }

    /// Ends the session: every waiter fails with the error `reason` implies
    /// (except a DISCONNECT waiter when the broker simply closed, which is what
    /// it asked for), and every subscription's stream ends.
    pub(crate) fn close(&mut self, reason: &CloseReason) {
        let unreceipted_sends = self
            .pending
            .values()
            .filter(|p| matches!(p.kind, PendingKind::Send(_)))
            .count();
        if unreceipted_sends > 0 {
            debug!(
                unreceipted_sends,
                "connection closed with sends awaiting receipts"
            );
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            let Some(w) = p.waiter else { continue };
            let result = match (&p.kind, reason) {
                (PendingKind::Disconnect, CloseReason::Eof) => Ok(()),
                _ => Err(reason.error()),
            };
            let _ = w.send(result);
        }
        self.subs.clear();
    }

    /// Failover hook: after a reconnect that negotiated `version`, re-encodes
    /// a SUBSCRIBE for every live subscription (with its ack mode and
    /// options; with its original receipt id if that receipt never came) and
    /// every SEND still awaiting a receipt (same receipt id, same producer
    /// headers) into `out`, in their original order. It also starts a new
    /// connection generation (ACKs for older deliveries are not written) and
    /// marks every open transaction as lost (see
    /// [`ClientError::TransactionLost`]). A COMMIT in flight fails with
    /// `TransactionLost` (outcome unknown); an UNSUBSCRIBE or ABORT in flight
    /// succeeds (the old connection's end did it).
    pub(crate) fn replay(&mut self, version: Version, out: &mut BytesMut) {
        self.version = version;
        self.generation += 1;
        if let Some(g) = &self.shared_generation {
            g.store(self.generation, Ordering::Release);
        }
        for t in self.open_tx.drain() {
            debug!(transaction = %t, "transaction lost with the connection");
            self.lost_tx.insert(t);
        }
        let mut sub_receipts: HashMap<String, u64> = HashMap::new();
        for (receipt, p) in &self.pending {
            if let PendingKind::Subscribe(id) = &p.kind {
                sub_receipts.insert(id.clone(), *receipt);
            }
        }
        let mut subs: Vec<(&String, &SubEntry)> = self.subs.iter().collect();
        // Subscription ids are `sub-<n>`: replay them in creation order.
        subs.sort_by_key(|(id, _)| {
            (
                id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()),
                id.to_string(),
            )
        });
        for (id, s) in subs {
            let receipt = sub_receipts.get(id.as_str()).copied();
            self.encode_subscribe(id, &s.destination, s.ack, &s.opts, receipt, out);
        }
        for seen in self.subs.values().filter_map(|s| s.seen.as_ref()) {
            // Handed out on the old connection and not acknowledged: the
            // broker redelivers them, and the application may still ack them
            // (recorded then). Nothing to carry.
            seen.lock().handed.clear();
        }
        let pending = std::mem::take(&mut self.pending);
        for (receipt, p) in pending {
            match &p.kind {
                PendingKind::Send(msg) => {
                    self.encode_send(msg, None, Some(receipt), out);
                    self.pending.insert(receipt, p);
                }
                PendingKind::Subscribe(id) if self.subs.contains_key(id) => {
                    self.pending.insert(receipt, p);
                }
                PendingKind::Commit(t) => {
                    if let Some(w) = p.waiter {
                        let _ = w.send(Err(ClientError::TransactionLost {
                            transaction: t.to_string(),
                            outcome_unknown: true,
                        }));
                    }
                }
                PendingKind::Unsubscribe | PendingKind::Abort => {
                    if let Some(w) = p.waiter {
                        let _ = w.send(Ok(()));
                    }
                }
                _ => {
                    if let Some(w) = p.waiter {
                        let _ = w.send(Err(ClientError::Closed));
                    }
                }
            }
        }
    }

    /// Failover hook: fails every request still waiting for a receipt with
    /// `err` (the connection stayed down for the whole `timeout`) and forgets
    /// it, so it is not replayed. Subscriptions whose SUBSCRIBE receipt never
    /// came are dropped too.
    pub(crate) fn expire_pending(&mut self, err: impl Fn() -> ClientError) {
        for (_, p) in std::mem::take(&mut self.pending) {
            if let PendingKind::Subscribe(id) = &p.kind {
                self.subs.remove(id);
            }
            if let Some(w) = p.waiter {
                let _ = w.send(Err(err()));
            }
        }
    }

    /// True while requests wait for a receipt.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// True when `cmd` has a caller waiting for its outcome (so it can time out).
pub(crate) fn has_waiter(cmd: &Command) -> bool {
    match cmd {
        Command::Send { reply, .. } => matches!(reply, SendReply::Receipt(_)),
        Command::Subscribe { .. } | Command::Commit { .. } => true,
        Command::Unsubscribe { reply, .. }
        | Command::Abort { reply, .. }
        | Command::Disconnect { reply } => reply.is_some(),
        Command::Ack { .. } | Command::Begin { .. } => false,
    }
}

/// Fails `cmd` with `err` (its waiter, if any, hears it).
pub(crate) fn fail_command(cmd: Command, err: ClientError) {
    let waiter = match cmd {
        Command::Send {
            reply: SendReply::Receipt(w),
            ..
        } => Some(w),
        Command::Subscribe { reply, .. } | Command::Commit { reply, .. } => Some(reply),
        Command::Unsubscribe { reply, .. }
        | Command::Abort { reply, .. }
        | Command::Disconnect { reply } => reply,
        _ => None,
    };
    if let Some(w) = waiter {
        let _ = w.send(Err(err));
    }
}

/// Fails a command that can no longer be carried out.
fn reject(cmd: Command) {
    fail_command(cmd, ClientError::Closed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fabricmq_stomp::{Decoder, FrameLimits, Item};

    fn frames(buf: &mut BytesMut, v: Version) -> Vec<Frame> {
        let mut d = Decoder::new(FrameLimits::default());
        d.set_version(v);
        let mut out = Vec::new();
        while let Some(item) = d.decode(buf).expect("valid output") {
            if let Item::Frame(f) = item {
                out.push(f);
            }
        }
        assert!(buf.is_empty(), "trailing bytes");
        out
    }

    fn receipt(id: &str) -> Frame {
        Frame::new(StompCommand::Receipt).header("receipt-id", id)
    }

    #[test]
    fn receipts_complete_waiters_and_errors_fail_them() {
        let mut s = ConnState::new(Version::V1_2);
        let mut out = BytesMut::new();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let msg = Outgoing::new("/queue/a", Bytes::from_static(b"x"));
        s.handle_command(
            Command::Send {
                msg: msg.clone(),
                transaction: None,
                reply: SendReply::Receipt(tx1),
            },
            &mut out,
        );
        s.handle_command(
            Command::Send {
                msg,
                transaction: None,
                reply: SendReply::Receipt(tx2),
            },
            &mut out,
        );
        let sent = frames(&mut out, Version::V1_2);
        assert_eq!(sent[0].get("receipt"), Some("1"));
        assert_eq!(sent[1].get("receipt"), Some("2"));
        assert_eq!(s.pending_receipts(), 2);

        let err = Frame::new(StompCommand::Error)
            .header("receipt-id", "2")
            .header("message", "no");
        assert!(s.handle_frame(err, &mut out).unwrap().is_none());
        assert!(matches!(
            rx2.try_recv(),
            Ok(Err(ClientError::Server { .. }))
        ));
        assert!(rx1.try_recv().is_err(), "still waiting");
        s.handle_frame(receipt("1"), &mut out).unwrap();
        assert!(matches!(rx1.try_recv(), Ok(Ok(()))));
        assert_eq!(s.pending_receipts(), 0);

        let fatal = Frame::new(StompCommand::Error).header("message", "bye");
        assert!(matches!(
            s.handle_frame(fatal, &mut out),
            Err(CloseReason::ServerError { message, .. }) if message == "bye"
        ));
    }

    #[test]
    fn full_buffer_parks_and_dropped_subscription_unsubscribes_once() {
        let mut s = ConnState::new(Version::V1_2);
        let mut out = BytesMut::new();
        let (deliver, mut rx) = mpsc::channel(1);
        let (w, _r) = oneshot::channel();
        s.handle_command(
            Command::Subscribe {
                id: "sub-1".into(),
                destination: "/queue/a".into(),
                ack: AckMode::Auto,
                opts: SubscribeOptions::default(),
                deliver,
                reply: w,
                seen: None,
            },
            &mut out,
        );
        out.clear();
        let m = |id: &str| {
            Frame::new(StompCommand::Message)
                .header("subscription", "sub-1")
                .header("message-id", id)
        };
        assert!(s.handle_frame(m("1"), &mut out).unwrap().is_none());
        let parked = s.handle_frame(m("2"), &mut out).unwrap().expect("parked");
        assert_eq!(parked.msg.message_id, "2");
        assert_eq!(parked.sub_id, "sub-1");
        assert_eq!(rx.try_recv().unwrap().message_id, "1");
        drop(rx);
        assert!(s.handle_frame(m("3"), &mut out).unwrap().is_none());
        assert!(!s.has_subscription("sub-1"));
        // A later explicit unsubscribe does not write a second UNSUBSCRIBE.
        let (w, mut r) = oneshot::channel();
        s.handle_command(
            Command::Unsubscribe {
                id: "sub-1".into(),
                reply: Some(w),
            },
            &mut out,
        );
        assert!(matches!(r.try_recv(), Ok(Ok(()))));
        let sent = frames(&mut out, Version::V1_2);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].command, StompCommand::Unsubscribe);
        assert_eq!(sent[0].get("id"), Some("sub-1"));
    }

    #[test]
    fn close_fails_waiters_and_disconnect_accepts_eof() {
        let mut s = ConnState::new(Version::V1_2);
        let mut out = BytesMut::new();
        let (tx, mut rx) = oneshot::channel();
        let (dtx, mut drx) = oneshot::channel();
        s.handle_command(
            Command::Commit {
                transaction: Arc::from("tx-1"),
                reply: tx,
            },
            &mut out,
        );
        s.handle_command(Command::Disconnect { reply: Some(dtx) }, &mut out);
        assert!(s.is_disconnecting());
        // Refused after DISCONNECT.
        let (late, mut late_rx) = oneshot::channel();
        s.handle_command(
            Command::Commit {
                transaction: Arc::from("tx-2"),
                reply: late,
            },
            &mut out,
        );
        assert!(matches!(late_rx.try_recv(), Ok(Err(ClientError::Closed))));
        s.close(&CloseReason::Eof);
        assert!(matches!(rx.try_recv(), Ok(Err(ClientError::Closed))));
        assert!(matches!(drx.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn replay_resubscribes_and_resends_unreceipted_sends_in_order() {
        let mut s = ConnState::new(Version::V1_2);
        let mut out = BytesMut::new();
        let (deliver, _rx) = mpsc::channel(8);
        let (w, _r) = oneshot::channel();
        s.handle_command(
            Command::Subscribe {
                id: "sub-1".into(),
                destination: "/topic/t".into(),
                ack: AckMode::Client,
                opts: SubscribeOptions {
                    prefetch: Some(5),
                    ..Default::default()
                },
                deliver,
                reply: w,
                seen: None,
            },
            &mut out,
        );
        s.handle_frame(receipt("1"), &mut out).unwrap();
        let mut waiters = Vec::new();
        for seq in 1..=3u64 {
            let (tx, rx) = oneshot::channel();
            waiters.push(rx);
            let msg = Outgoing {
                destination: "/queue/q".into(),
                producer: Some(("p".into(), seq)),
                ..Default::default()
            };
            s.handle_command(
                Command::Send {
                    msg,
                    transaction: None,
                    reply: SendReply::Receipt(tx),
                },
                &mut out,
            );
        }
        let (ctx, mut crx) = oneshot::channel();
        s.handle_command(
            Command::Commit {
                transaction: Arc::from("tx"),
                reply: ctx,
            },
            &mut out,
        );
        s.handle_frame(receipt("3"), &mut out).unwrap(); // seq 2 receipted
        out.clear();

        s.replay(Version::V1_1, &mut out);
        let sent = frames(&mut out, Version::V1_1);
        assert_eq!(sent[0].command, StompCommand::Subscribe);
        assert_eq!(sent[0].get("prefetch"), Some("5"));
        assert_eq!(sent[0].get("ack"), Some("client"));
        let resent: Vec<_> = sent[1..]
            .iter()
            .map(|f| {
                (
                    f.get("receipt").unwrap().to_owned(),
                    f.get("producer-seq").unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(resent, [("2".into(), "1".into()), ("4".into(), "3".into())]);
        assert!(matches!(
            crx.try_recv(),
            Ok(Err(ClientError::TransactionLost {
                outcome_unknown: true,
                ..
            }))
        ));
        assert_eq!(s.pending_receipts(), 2);
        assert_eq!(s.generation(), 1);
    }

    #[test]
    fn send_headers_round_trip_through_the_codec_per_version() {
        for v in Version::ALL {
            let mut s = ConnState::new(v);
            let mut out = BytesMut::new();
            let msg = Outgoing {
                destination: "/queue/a:b".into(),
                body: Bytes::from_static(b"body\0with nul"),
                headers: vec![
                    ("x\\y".into(), "line1\nline2".into()),
                    ("k".into(), "a\rb".into()),
                    ("n:m".into(), "v".into()),
                    ("Content-Length".into(), "999".into()),
                ],
                producer: Some(("p".into(), 17)),
                ..Default::default()
            };
            s.handle_command(
                Command::Send {
                    msg,
                    transaction: None,
                    reply: SendReply::Written(1),
                },
                &mut out,
            );
            let f = frames(&mut out, v).remove(0);
            assert_eq!(f.command, StompCommand::Send);
            assert_eq!(f.get("destination"), Some("/queue/a:b"));
            assert_eq!(f.get("producer-seq"), Some("17"));
            assert_eq!(f.get("content-length"), Some("13"));
            assert_eq!(f.get("Content-Length"), None);
            assert_eq!(&f.body[..], b"body\0with nul");
            // What each version cannot represent is written as a space (CR,
            // and LF in 1.0) or `_` (a `:` in a 1.0 header name).
            let (lf, cr, name) = match v {
                Version::V1_0 => ("line1 line2", "a b", "n_m"),
                Version::V1_1 => ("line1\nline2", "a b", "n:m"),
                Version::V1_2 => ("line1\nline2", "a\rb", "n:m"),
            };
            assert_eq!(f.get("x\\y"), Some(lf), "{v:?}");
            assert_eq!(f.get("k"), Some(cr), "{v:?}");
            assert_eq!(f.get(name), Some("v"), "{v:?}");
        }
    }

    #[test]
    fn exact_bytes_v1_2() {
        let mut s = ConnState::new(Version::V1_2);
        let mut out = BytesMut::new();
        s.handle_command(
            Command::Ack {
                nack: false,
                target: AckTarget::Id("a:b\r".into()),
                transaction: None,
                generation: 0,
            },
            &mut out,
        );
        assert_eq!(&out[..], b"ACK\nid:a\\cb\\r\n\n\0");

        out.clear();
        s.handle_command(
            Command::Send {
                msg: Outgoing::new("/q", ""),
                transaction: None,
                reply: SendReply::Written(1),
            },
            &mut out,
        );
        assert_eq!(&out[..], b"SEND\ndestination:/q\ncontent-length:0\n\n\0");
    }

    #[test]
    fn ack_shapes_per_version() {
        for (v, want) in [
            (Version::V1_2, vec![("id", "a-1")]),
            (
                Version::V1_1,
                vec![("message-id", "m-1"), ("subscription", "sub-9")],
            ),
            (Version::V1_0, vec![("message-id", "m-1")]),
        ] {
            let mut s = ConnState::new(v);
            let mut out = BytesMut::new();
            let target = if v == Version::V1_2 {
                AckTarget::Id("a-1".into())
            } else {
                AckTarget::MessageId {
                    message_id: "m-1".into(),
                    subscription: "sub-9".into(),
                }
            };
            s.handle_command(
                Command::Ack {
                    nack: false,
                    target,
                    transaction: Some(Arc::from("tx-1")),
                    generation: 0,
                },
                &mut out,
            );
            let f = frames(&mut out, v).remove(0);
            assert_eq!(f.command, StompCommand::Ack);
            let mut want: Vec<(String, String)> = want
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            want.push(("transaction".into(), "tx-1".into()));
            assert_eq!(f.headers, want, "{v:?}");
        }
    }

    #[test]
    fn ack_in_auto_mode_writes_nothing() {
        let mut s = ConnState::new(Version::V1_1);
        let mut out = BytesMut::new();
        let (deliver, _rx) = mpsc::channel(8);
        let (w, _r) = oneshot::channel();
        s.handle_command(
            Command::Subscribe {
                id: "sub-1".into(),
                destination: "/queue/q".into(),
                ack: AckMode::Auto,
                opts: SubscribeOptions::default(),
                deliver,
                reply: w,
                seen: None,
            },
            &mut out,
        );
        let before = out.len();
        let target = AckTarget::MessageId {
            message_id: "m".into(),
            subscription: "sub-1".into(),
        };
        s.handle_command(
            Command::Ack {
                nack: false,
                target,
                transaction: None,
                generation: 0,
            },
            &mut out,
        );
        assert_eq!(out.len(), before);
    }
}

//! One client connection: handshake, frame handling, deliveries, receipts, heart-beats.
//!
//! A connection is one task that owns its socket and all per-connection state (subscriptions,
//! unacknowledged deliveries, open transactions, pending receipts); nothing else touches that state.
//! Other tasks reach it only through its [`Outbox`] (deliveries from queues and topics).
//!
//! The task never blocks on a write: one `select!` loop reads, writes whatever is buffered, takes
//! deliveries from the outbox and completes receipts as the journal fsyncs. Backpressure is explicit:
//! - inbound: the socket is not read while the outbound buffer or the number of pending receipts
//!   is over its limit (a producer that does not read its receipts is slowed, not buffered);
//! - outbound: deliveries are taken from the outbox only while the outbound buffer is under
//!   `max_pending_bytes`; queues send at most a prefetch window per subscription; topic
//!   subscribers that fall too far behind are disconnected (see `destination`);
//! - memory: queued bodies past the broker's memory budget live only on disk (journal or temporary
//!   store), see [`Broker::admit`].
//!
//! Receipts are sent in the order of the frames that asked for them; a RECEIPT for a persistent
//! SEND is written only after the journal's fdatasync covering it returned.
//!
//! Protocol errors become exactly one ERROR frame (with `receipt-id` when the frame asked for a
//! receipt), then the connection is closed; the broker and other connections carry on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::authz::Right;
use fabricmq_stomp::{
    encode, encode_heartbeat, negotiate_heart_beat, negotiate_version, parse_heart_beat, Command,
    DecodeError, Decoder, Frame, FrameLimits, FrameWriter, Item, Version,
};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::auth::Principal;
use crate::broker::{Broker, Dedup};
use crate::client_state::{resolve, PendingSend, Refusal, SubTarget, Transactions};
use crate::destination::{ConsumerKey, Outbox, Queue, STORE_BACKLOG_LIMIT};
use crate::message::{now_ms, Delivery, Message, Outbound, Source, DEFAULT_PRIORITY};
use crate::quota::ConnQuota;
use crate::socket::{Reader, Writer};
use crate::store::{Op, ProducerSeq};
use crate::tls::TlsAcceptor;

/// Server name sent in CONNECTED.
pub const SERVER: &str = concat!("fabricmq/", env!("CARGO_PKG_VERSION"));

/// Most receipts waiting for the journal before the connection stops reading.
const MAX_PENDING_RECEIPTS: usize = 8192;
/// Most deliveries taken from the outbox per loop turn.
const OUTBOX_BATCH: usize = 256;
/// Smallest and largest room reserved for one socket read. A connection starts at the smallest
/// and doubles while its reads fill the buffer (a busy producer); it starts small again once its
/// buffer was released for being empty at a tick. Reserving 64 KiB for every read of a mostly
/// idle connection cost ~64 KiB of RSS per connection with mimalloc on transparent huge pages.
const READ_CHUNK_MIN: usize = 4 * 1024;
/// See [`READ_CHUNK_MIN`].
const READ_CHUNK_MAX: usize = 64 * 1024;

/// A problem that ends the connection with an ERROR frame.
#[derive(Debug)]
struct ConnError {
    message: String,
    detail: String,
    receipt: Option<String>,
}

impl ConnError {
    fn new(message: impl Into<String>, detail: impl Into<String>) -> Self {
        ConnError {
            message: message.into(),
            detail: detail.into(),
            receipt: None,
        }
    }

    fn with_receipt(mut self, f: &Frame) -> Self {
        self.receipt = f.get("receipt").map(str::to_string);
        self
    }
}

impl From<Refusal> for ConnError {
    fn from(r: Refusal) -> Self {
        ConnError::new(r.message, r.detail)
    }
}

impl From<crate::quota::QuotaError> for ConnError {
    fn from(e: crate::quota::QuotaError) -> Self {
        Refusal::from(e).into()
    }
}

fn error_frame(message: &str, detail: &str, receipt: Option<&str>) -> Frame {
    let mut f = Frame::new(Command::Error)
        .header("message", message)
        .header("content-type", "text/plain");
    if let Some(r) = receipt {
        f.push("receipt-id", r);
    }
    f.with_body(Bytes::copy_from_slice(detail.as_bytes()))
}

fn receipt_frame(id: &str) -> Frame {
    Frame::new(Command::Receipt).header("receipt-id", id)
}

/// What a pending receipt turns into when its turn comes: the frame to send (RECEIPT or
/// ERROR; None: nothing) and the messages to route now that their journal append is durable.
struct Completion {
    frame: Option<Frame>,
    route: Vec<(SubTarget, Arc<Message>)>,
}

impl Completion {
    fn frame(frame: Option<Frame>) -> Completion {
        Completion {
            frame,
            route: Vec::new(),
        }
    }
}

/// Resolves, in frame order, once the journal has done its part.
type ReceiptFuture = Pin<Box<dyn Future<Output = Completion> + Send>>;

fn ready(f: Frame) -> ReceiptFuture {
    Box::pin(std::future::ready(Completion::frame(Some(f))))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Auto,
    Client,
    Individual,
}

struct Unacked {
    source: Source,
    msg_id: u64,
}

struct Subscription {
    id: String,
    key: u64,
    ack: AckMode,
    target: SubTarget,
    /// Deliveries awaiting ACK/NACK, by delivery tag (increasing).
    unacked: BTreeMap<u64, Unacked>,
}

/// Serves one accepted socket until it closes. Errors are logged, never returned. With `tls`
/// (a `stomp+ssl://` listener) the TLS handshake runs first, here in the connection's task, and
/// shares the CONNECT timeout: a client that does not speak TLS (a plain STOMP client on the TLS
/// port) fails the handshake and is closed.
pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
) {
    let conn_id = broker.next_connection_id();
    let span = tracing::info_span!("conn", conn_id, %peer, login = tracing::field::Empty);
    async move {
        let _ = stream.set_nodelay(true);
        broker
            .stats
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        broker
            .stats
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        debug!("connection accepted");
        let deadline = tokio::time::Instant::now() + broker.config.limits.connect_timeout.0;
        let halves = match tls {
            None => {
                let (rd, wr) = stream.into_split();
                Some((Reader::Plain(rd), Writer::Plain(wr)))
            }
            Some(acceptor) => {
                match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let (_, session) = s.get_ref();
                        debug!(
                            client_certificate = session.peer_certificates().is_some(),
                            "TLS handshake done"
                        );
                        let (rd, wr) = tokio::io::split(s);
                        Some((
                            Reader::Tls(rd),
                            Writer::Tls {
                                io: wr,
                                dirty: false,
                            },
                        ))
                    }
                    Ok(Err(e)) => {
                        info!(error = %e, "TLS handshake failed; closing");
                        None
                    }
                    Err(_) => {
                        info!("no TLS handshake within the connect timeout; closing");
                        None
                    }
                }
            }
        };
        if let Some((rd, wr)) = halves {
            let (tx, rx) = mpsc::unbounded_channel();
            let mut conn = Conn::new(broker.clone(), conn_id, rd, wr, tx, rx);
            conn.connect_deadline = deadline;
            conn.peer = peer.ip();
            conn.run().await;
            conn.settle_pending().await;
            conn.cleanup().await;
        }
        broker
            .stats
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        debug!("connection closed");
    }
    .instrument(span)
    .await
}

/// Refuses a connection over the limit with an ERROR frame (best effort, bounded in time; over
/// TLS after the handshake, within the same second).
pub async fn refuse(mut stream: TcpStream, tls: Option<TlsAcceptor>, reason: &str) {
    let mut buf = BytesMut::new();
    encode(&error_frame(reason, reason, None), Version::V1_2, &mut buf);
    let Some(acceptor) = tls else {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&buf)).await;
        let _ = stream.shutdown().await;
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async move {
        let mut s = acceptor.accept(stream).await?;
        s.write_all(&buf).await?;
        s.shutdown().await
    })
    .await;
}

struct Conn {
    broker: Arc<Broker>,
    id: u64,
    rd: Reader,
    wr: Writer,
    /// When CONNECT must have arrived (the TLS handshake counts against it).
    connect_deadline: tokio::time::Instant,
    /// The client's address (back-off and pool shares are per address).
    peer: std::net::IpAddr,
    inbuf: BytesMut,
    outbuf: BytesMut,
    decoder: Decoder,
    version: Version,
    principal: Option<Principal>,
    /// The authenticated user as the scope of its producer ids (shared by every SEND).
    producer_scope: Arc<str>,
    outbox: Outbox,
    outbox_rx: mpsc::UnboundedReceiver<Outbound>,
    subs: HashMap<String, Subscription>,
    sub_ids: HashMap<u64, String>,
    next_sub_key: u64,
    next_tag: u64,
    /// Open transactions, and the quota of everything this connection holds.
    txs: Transactions,
    receipts: FuturesOrdered<ReceiptFuture>,
    /// Browser subscriptions being streamed: (subscription id, remaining messages).
    browsing: Vec<(String, std::vec::IntoIter<Arc<Message>>)>,
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
    last_read: Instant,
    last_write: Instant,
    /// Close once every pending receipt and buffered byte is written.
    closing: bool,
    /// Close after flushing, without reading more (set after an ERROR).
    fatal: bool,
    max_pending: usize,
    /// Room reserved for the next socket read (see [`READ_CHUNK_MIN`]).
    read_chunk: usize,
    /// Auto-ack deliveries written this turn: (queue, subscription key, message id).
    auto_acks: Vec<(Arc<Queue>, u64, u64)>,
    /// Journal acks of persistent messages settled this turn, written as one lazy record per
    /// socket read or outbox batch instead of one per ACK frame.
    journal_acks: Vec<Op>,
}

impl Conn {
    fn new(
        broker: Arc<Broker>,
        id: u64,
        rd: Reader,
        wr: Writer,
        tx: mpsc::UnboundedSender<Outbound>,
        rx: mpsc::UnboundedReceiver<Outbound>,
    ) -> Self {
        let l = &broker.config.limits;
        let limits = FrameLimits {
            max_frame_bytes: l.max_frame_bytes.0 as usize,
            max_headers: l.max_headers,
            max_header_line: l.max_header_line.0 as usize,
            ..FrameLimits::default()
        };
        let max_pending = l.max_pending_bytes.0 as usize;
        let connect_deadline = tokio::time::Instant::now() + l.connect_timeout.0;
        let now = Instant::now();
        let quota = ConnQuota::new(broker.quotas.clone());
        Conn {
            broker,
            id,
            rd,
            wr,
            connect_deadline,
            peer: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            // Both buffers are allocated when there is something to read or write and released
            // when they are empty again, so an idle connection holds no buffer at all (5,000
            // idle connections with two 64 KiB buffers each cost ~690 MiB of RSS once the
            // allocator's arenas are backed by transparent huge pages).
            inbuf: BytesMut::new(),
            outbuf: BytesMut::new(),
            decoder: Decoder::new(limits),
            version: Version::V1_2,
            principal: None,
            producer_scope: Arc::from(""),
            outbox: Outbox {
                tx,
                pending: Arc::new(AtomicU64::new(0)),
            },
            outbox_rx: rx,
            subs: HashMap::new(),
            sub_ids: HashMap::new(),
            next_sub_key: 1,
            next_tag: 1,
            txs: Transactions::new(quota),
            receipts: FuturesOrdered::new(),
            browsing: Vec::new(),
            send_every: None,
            expect_every: None,
            last_read: now,
            last_write: now,
            closing: false,
            fatal: false,
            max_pending,
            read_chunk: READ_CHUNK_MIN,
            auto_acks: Vec::new(),
            journal_acks: Vec::new(),
        }
    }

    /// Writes the acks collected this turn to the journal (one lazy record).
    fn flush_journal_acks(&mut self) {
        if !self.journal_acks.is_empty() {
            self.broker
                .journal
                .append_lazy(std::mem::take(&mut self.journal_acks));
        }
    }

    fn push_frame(&mut self, f: &Frame) {
        encode(f, self.version, &mut self.outbuf);
    }

    fn fail(&mut self, e: ConnError) {
        if !self.fatal {
            if self.principal.is_some() {
                debug!(message = %e.message, detail = %e.detail, "protocol error; closing");
            } else {
                info!(message = %e.message, "connection refused");
            }
            self.broker
                .stats
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            let f = error_frame(&e.message, &e.detail, e.receipt.as_deref());
            self.push_frame(&f);
        }
        self.fatal = true;
    }

    async fn run(&mut self) {
        if !self.handshake().await {
            self.flush_bounded().await;
            return;
        }
        // Bytes that arrived in the same read as CONNECT are processed by the loop (under its
        // gate and backpressure checks); otherwise they would wait for the client's next bytes,
        // and a client that pipelines CONNECT and SUBSCRIBE and then waits would hang.
        let mut behind_connect = !self.inbuf.is_empty();
        if !behind_connect {
            self.inbuf = BytesMut::new();
        }
        let tick_every = [self.send_every, self.expect_every]
            .into_iter()
            .flatten()
            .map(|d| d / 2)
            .min()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle_timeout = self.broker.config.limits.idle_timeout.0;
        let shutdown = self.broker.shutdown.clone();
        let gate = self.broker.gate.clone();
        let mut shutting_down = false;
        loop {
            // A closed gate (the fabric may have lost its ZooKeeper session, or this process was
            // paused) freezes the connection: nothing is read, nothing is written.
            let open = gate.is_open();
            if shutting_down && !open {
                // Stepping down: whatever is pending must not be acknowledged by this broker.
                return;
            }
            if self.fatal || (self.closing && self.receipts.is_empty() && self.browsing.is_empty())
            {
                break;
            }
            let can_read = open
                && !self.closing
                && self.outbuf.len() < self.max_pending
                && self.receipts.len() < MAX_PENDING_RECEIPTS;
            let can_take = open && self.outbuf.len() < self.max_pending;
            let can_browse = can_take && !self.browsing.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !shutting_down => {
                    // Finish what is in flight (receipts of appends already queued), then close.
                    shutting_down = true;
                    self.closing = true;
                }
                _ = gate.opened(), if !open => {}
                Some(done) = self.receipts.next(), if open && !self.receipts.is_empty() => {
                    // Shutting down, the messages stay in the journal for the next master or
                    // start: handing them out now would only make redeliveries.
                    if !shutting_down {
                        for (target, msg) in done.route {
                            self.route(&target, msg);
                        }
                    }
                    if let Some(frame) = done.frame {
                        self.push_frame(&frame);
                        if frame.command == Command::Error {
                            self.fatal = true;
                        }
                    }
                }
                r = self.wr.write_some(&self.outbuf), if open && (!self.outbuf.is_empty() || self.wr.unflushed()) => {
                    match r {
                        Err(_) => return,
                        Ok(0) if !self.outbuf.is_empty() => return,
                        Ok(n) => {
                            self.outbuf.advance(n);
                            self.last_write = Instant::now();
                        }
                    }
                }
                item = self.outbox_rx.recv(), if can_take => {
                    if let Some(ob) = item {
                        self.take_outbox_batch(ob).await;
                    }
                }
                _ = std::future::ready(()), if can_browse => {
                    self.stream_browse();
                }
                _ = std::future::ready(()), if can_read && behind_connect => {
                    behind_connect = false;
                    self.process_input().await;
                }
                r = self.rd.read_some(&mut self.inbuf, self.read_chunk), if can_read => {
                    match r {
                        Ok(Some((0, _))) => {
                            debug!("peer closed");
                            return;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            debug!(error = %e, "read failed");
                            return;
                        }
                        Ok(Some((n, room))) => {
                            self.last_read = Instant::now();
                            if n == room {
                                self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK_MAX);
                            }
                            self.process_input().await;
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if let Some(expect) = self.expect_every {
                        if now.duration_since(self.last_read) > expect * 2 {
                            info!(silent_ms = now.duration_since(self.last_read).as_millis() as u64, "no heart-beat from peer; closing");
                            return;
                        }
                    } else if !idle_timeout.is_zero() && now.duration_since(self.last_read) > idle_timeout {
                        self.fail(ConnError::new("idle timeout", format!("nothing received for {idle_timeout:?}")));
                        continue;
                    }
                    // Empty buffers go back to the allocator at every tick, so a quiet
                    // connection holds none (and a consumer's output buffer that grew to
                    // max_pending_bytes in a burst does not stay that big). Decoded bodies that
                    // still share the read buffer keep their part alive themselves.
                    if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
                        self.inbuf = BytesMut::new();
                        self.read_chunk = READ_CHUNK_MIN;
                    }
                    if self.outbuf.is_empty() && self.outbuf.capacity() > 0 {
                        self.outbuf = BytesMut::new();
                    }
                    if let Some(every) = self.send_every {
                        if self.outbuf.is_empty() && now.duration_since(self.last_write) >= every {
                            encode_heartbeat(&mut self.outbuf);
                        }
                    }
                }
            }
        }
        if gate.is_open() {
            self.flush_bounded().await;
        }
    }

    /// After the connection ended: waits for the journal appends still pending and routes their
    /// messages (they are stored: dropping them would leave them on disk but in no queue until
    /// the next restart). Their receipts have nobody to go to. Skipped when the broker is
    /// shutting down or stepping down: the next start or master recovers them from the journal.
    async fn settle_pending(&mut self) {
        let shutdown = self.broker.shutdown.clone();
        while !self.receipts.is_empty() {
            let done = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = self.receipts.next() => d,
            };
            let Some(done) = done else { return };
            for (target, msg) in done.route {
                self.route(&target, msg);
            }
        }
    }

    /// Writes what is buffered, bounded in time (the peer may not be reading).
    async fn flush_bounded(&mut self) {
        let outbuf = &mut self.outbuf;
        let wr = &mut self.wr;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !outbuf.is_empty() {
                match wr.write(outbuf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => outbuf.advance(n),
                }
            }
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
        })
        .await;
    }

    /// Reads CONNECT, authenticates, negotiates, answers CONNECTED. False = close.
    async fn handshake(&mut self) -> bool {
        let timeout = self.broker.config.limits.connect_timeout.0;
        let deadline = self.connect_deadline;
        let frame = loop {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(Item::Frame(f))) => break f,
                Ok(Some(Item::Heartbeat)) => continue,
                Ok(None) => {}
                Err(e) => {
                    self.fail(decode_error(e));
                    return false;
                }
            }
            self.inbuf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.inbuf)).await {
                Err(_) => {
                    self.fail(ConnError::new(
                        "connect timeout",
                        format!("no CONNECT frame within {timeout:?}"),
                    ));
                    return false;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(_)) => {}
            }
        };
        if !matches!(frame.command, Command::Connect | Command::Stomp) {
            self.fail(
                ConnError::new(
                    "expected CONNECT",
                    format!("first frame was {}", frame.command.as_str()),
                )
                .with_receipt(&frame),
            );
            return false;
        }
        let Some(version) = negotiate_version(frame.get("accept-version")) else {
            let mut f = error_frame(
                "unsupported protocol version",
                "supported versions are 1.0,1.1,1.2",
                None,
            );
            f.push("version", "1.0,1.1,1.2");
            self.push_frame(&f);
            self.fatal = true;
            return false;
        };
        self.version = version;
        let client_hb = match parse_heart_beat(frame.get("heart-beat")) {
            Ok(hb) => hb,
            Err(e) => {
                self.fail(ConnError::new("invalid heart-beat header", e.to_string()));
                return false;
            }
        };
        // The authenticator guards the password check (pool, back-off) and logs refusals.
        let login = frame.get("login");
        let passcode = frame.get("passcode");
        let auth = self.broker.auth.clone();
        let principal = match auth.login(login, passcode, self.peer, deadline).await {
            Ok(p) => p,
            Err(e) => {
                self.broker
                    .stats
                    .auth_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.push_frame(&error_frame(e.message(), &e.to_string(), None));
                self.fatal = true;
                return false;
            }
        };
        tracing::Span::current().record("login", principal.user.as_str());
        let ours = self.broker.config.limits.heart_beat_ms;
        let (send_ms, expect_ms) = if version == Version::V1_0 {
            (0, 0)
        } else {
            negotiate_heart_beat(ours, client_hb)
        };
        self.send_every = (send_ms > 0).then(|| Duration::from_millis(send_ms));
        self.expect_every = (expect_ms > 0).then(|| Duration::from_millis(expect_ms));
        self.decoder.set_version(version);
        let mut connected = Frame::new(Command::Connected)
            .header("version", version.as_str())
            .header("server", SERVER)
            .header("session", format!("session-{}", self.id));
        let epoch = self.broker.journal.epoch();
        if epoch > 0 {
            // A fabric master says which election it won: clients and the chaos checker tie
            // receipts to a master with it.
            connected.push("fabric-epoch", epoch.to_string());
        }
        if version != Version::V1_0 {
            connected.push("heart-beat", format!("{},{}", ours.0, ours.1));
        }
        self.push_frame(&connected);
        debug!(version = version.as_str(), send_ms, expect_ms, "connected");
        self.producer_scope = Arc::from(principal.user.as_str());
        self.txs.quota.set_user(&principal.user);
        self.principal = Some(principal);
        true
    }

    async fn process_input(&mut self) {
        while !self.fatal && !self.closing {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(Item::Frame(f))) => {
                    if let Err(e) = self.on_frame(f).await {
                        self.fail(e);
                    }
                }
                Ok(Some(Item::Heartbeat)) => {}
                Ok(None) => break,
                Err(e) => self.fail(decode_error(e)),
            }
        }
        self.flush_journal_acks();
    }

    fn receipt_now(&mut self, f: &Frame) {
        if let Some(r) = f.get("receipt") {
            self.push_receipt(receipt_frame(r));
        }
    }

    /// Sends `frame` now, or after the receipts still pending (receipts keep frame order).
    fn push_receipt(&mut self, frame: Frame) {
        if self.receipts.is_empty() {
            self.push_frame(&frame);
        } else {
            self.receipts.push_back(ready(frame));
        }
    }

    async fn on_frame(&mut self, f: Frame) -> Result<(), ConnError> {
        match f.command {
            Command::Send => self.on_send(f).await,
            Command::Subscribe => self.on_subscribe(f),
            Command::Unsubscribe => self.on_unsubscribe(f),
            Command::Ack => self.on_ack(f, false),
            Command::Nack => self.on_ack(f, true),
            Command::Begin => {
                let tx = required(&f, "transaction")?.to_string();
                let begun = self
                    .txs
                    .begin(&tx)
                    .map_err(|r| ConnError::from(r).with_receipt(&f))?;
                if !begun {
                    return Err(ConnError::new(
                        "transaction already started",
                        format!("transaction {tx:?} is already open"),
                    )
                    .with_receipt(&f));
                }
                self.receipt_now(&f);
                Ok(())
            }
            Command::Commit => self.on_commit(f).await,
            Command::Abort => {
                let tx = required(&f, "transaction")?;
                if self.txs.end(tx).is_none() {
                    return Err(unknown_tx(tx).with_receipt(&f));
                }
                self.receipt_now(&f);
                Ok(())
            }
            Command::Disconnect => {
                // Its RECEIPT also says that the acks and sends before it are stored.
                self.receipt_when_durable(&f, true);
                self.closing = true;
                Ok(())
            }
            Command::Connect | Command::Stomp => Err(ConnError::new(
                "already connected",
                "CONNECT received on a connected session",
            )
            .with_receipt(&f)),
            other => Err(ConnError::new(
                "unexpected frame",
                format!("clients do not send {}", other.as_str()),
            )
            .with_receipt(&f)),
        }
    }

    fn parse_send(&self, mut f: Frame, may_create: bool) -> Result<PendingSend, ConnError> {
        let f = &mut f;
        let destination = required(f, "destination")?;
        let is_queue = check_destination(destination).map_err(|e| e.with_receipt(f))?;
        let bad = |name: &str, v: &str, why: &str| {
            ConnError::new(
                format!("invalid {name} header"),
                format!("{name}:{v:?} {why}"),
            )
            .with_receipt(f)
        };
        let persistent = match f.get("persistent") {
            None => {
                is_queue
                    && self
                        .broker
                        .config
                        .destinations
                        .policy_for(destination)
                        .persistent
            }
            Some("true") => true,
            Some("false") => false,
            Some(v) => return Err(bad("persistent", v, "must be true or false")),
        };
        let priority = match f.get("priority") {
            None => DEFAULT_PRIORITY,
            Some(v) => match v.parse::<u8>() {
                Ok(p) if p <= 9 => p,
                _ => return Err(bad("priority", v, "must be 0 to 9")),
            },
        };
        let expires = match f.get("expires") {
            None => 0,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| bad("expires", v, "must be milliseconds since the Unix epoch"))?,
        };
        let producer = match (f.get("producer-id"), f.get("producer-seq")) {
            (None, None) => None,
            (Some(id), Some(_)) if id.len() > self.broker.config.producers.max_id_bytes => {
                return Err(ConnError::new(
                    "producer-id too long",
                    format!(
                        "producer-id of {} bytes exceeds producers.max_id_bytes ({})",
                        id.len(),
                        self.broker.config.producers.max_id_bytes
                    ),
                )
                .with_receipt(f))
            }
            (Some(id), Some(seq)) if !id.is_empty() => Some(ProducerSeq {
                producer: id.to_string(),
                seq: seq
                    .parse()
                    .map_err(|_| bad("producer-seq", seq, "must be an unsigned integer"))?,
                user: self.producer_scope.clone(),
            }),
            _ => {
                return Err(ConnError::new(
                    "invalid producer headers",
                    "producer-id and producer-seq go together",
                )
                .with_receipt(f))
            }
        };
        let user = self.principal.as_ref().map_or("", |p| p.user.as_str());
        let target = resolve(&self.broker, user, destination, is_queue, may_create)
            .map_err(|r| ConnError::from(r).with_receipt(f))?;
        // Application headers only, in a Vec of their own size: it lives as long as the message.
        let headers: Vec<(String, String)> = std::mem::take(&mut f.headers)
            .into_iter()
            .filter(|(k, _)| !is_broker_header(k))
            .collect();
        Ok(PendingSend {
            target,
            is_queue,
            persistent,
            priority,
            expires,
            producer,
            headers,
            body: f.body.clone(),
        })
    }

    async fn on_send(&mut self, f: Frame) -> Result<(), ConnError> {
        let receipt = f.get("receipt").map(str::to_string);
        let tx = f.get("transaction").map(str::to_string);
        self.txs
            .quota
            .check_headers(f.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| ConnError::from(e).with_receipt(&f))?;
        // As `Message::header_bytes` will count them (for the header-memory backpressure).
        let header_bytes: u64 = f
            .headers
            .iter()
            .map(|(k, v)| (k.len() + v.len() + 32) as u64)
            .sum();
        let mut may_create = true;
        if let Some(destination) = f.get("destination") {
            may_create = self.authorize(Right::Write, destination, &f)?;
        }
        if let Some(tx) = &tx {
            if !self.txs.contains(tx) {
                let mut e = unknown_tx(tx);
                e.receipt = receipt;
                return Err(e);
            }
        }
        let send = self.parse_send(f, may_create)?;
        if let Some(tx) = tx {
            self.txs.buffer_send(&tx, send).map_err(|r| {
                let mut e = ConnError::from(r);
                e.receipt = receipt.clone();
                e
            })?;
            if let Some(r) = receipt {
                self.push_receipt(receipt_frame(&r));
            }
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut accepted = self.accept(send, &mut ops);
        let journal = &self.broker.journal;
        match (receipt, ops.is_empty()) {
            (Some(r), false) => {
                // Store, then dispatch: a consumer never sees a receipted message before it is
                // on disk, so a master that dies before the fsync cannot have handed out a
                // message that its successor will not have (and the producer will resend).
                let fut = journal.append(ops);
                let route: Vec<_> = accepted.take().into_iter().collect();
                self.receipts.push_back(Box::pin(async move {
                    match fut.await {
                        Ok(()) => Completion {
                            frame: Some(receipt_frame(&r)),
                            route,
                        },
                        Err(e) => {
                            warn!(error = %e, "journal append failed");
                            Completion::frame(Some(error_frame(
                                "message not stored",
                                &e.to_string(),
                                Some(&r),
                            )))
                        }
                    }
                }));
            }
            (Some(r), true) if accepted.is_none() => {
                // A duplicate: its original may still be on its way to disk; receipt once
                // everything queued so far is durable.
                let j = journal.clone();
                self.receipts.push_back(Box::pin(async move {
                    Completion::frame(Some(match j.flush().await {
                        Ok(()) => receipt_frame(&r),
                        Err(e) => error_frame("message not stored", &e.to_string(), Some(&r)),
                    }))
                }));
            }
            (Some(r), true) => self.push_receipt(receipt_frame(&r)),
            (None, false) => journal.append_lazy(ops),
            (None, true) => {}
        }
        if let Some((target, msg)) = accepted {
            self.route_in_order(target, msg);
        }
        if self.broker.context().stores_behind()
            || self.broker.memory().producer_must_wait(header_bytes)
        {
            memory_backpressure(self.broker.clone(), header_bytes).await;
        }
        Ok(())
    }

    /// De-duplicates and builds the message; persistent queue messages add their journal op
    /// to `ops`. Returns the message to route, or None for a duplicate.
    fn accept(
        &mut self,
        send: PendingSend,
        ops: &mut Vec<Op>,
    ) -> Option<(SubTarget, Arc<Message>)> {
        if self.broker.dedup(send.producer.as_ref()) == Dedup::Duplicate {
            debug!(producer = ?send.producer, "duplicate send dropped");
            return None;
        }
        // Resolved once (when the SEND was read): routing uses it, and the message shares its
        // name.
        let target = send.target;
        let destination = target.name();
        let mut msg = Message {
            id: self.broker.next_message_id(),
            destination,
            persistent: send.persistent,
            priority: send.priority,
            expires: send.expires,
            timestamp: now_ms(),
            producer: send.producer,
            headers: send.headers,
            body_len: send.body.len() as u32,
            body: Some(send.body),
        };
        if send.is_queue {
            if msg.persistent {
                ops.push(Op::Add(msg.to_stored()));
            }
            msg = self.broker.admit(msg);
        } else if let Some(b) = msg.body.as_mut() {
            // As `Broker::admit` does for queues: a small body decoded from a socket is a view
            // into a shared read buffer, and queued for a slow subscriber it would keep that whole
            // buffer alive (a 1-byte body pinning a 64 KiB frame that was dropped long ago).
            if !b.is_empty() && b.len() < (64 << 10) {
                *b = Bytes::copy_from_slice(b);
            }
        }
        Some((target, Arc::new(msg)))
    }

    /// Routes `msg` now, or after the receipts still pending when there are some, so that a
    /// producer's messages reach their destination in the order it sent them.
    fn route_in_order(&mut self, target: SubTarget, msg: Arc<Message>) {
        if self.receipts.is_empty() {
            self.route(&target, msg);
        } else {
            self.receipts
                .push_back(Box::pin(std::future::ready(Completion {
                    frame: None,
                    route: vec![(target, msg)],
                })));
        }
    }

    fn route(&self, target: &SubTarget, msg: Arc<Message>) {
        match target {
            SubTarget::Queue(q) => {
                let fx = q.enqueue([msg]);
                self.broker.apply(fx);
            }
            SubTarget::Topic(t) => t.publish(msg),
        }
    }

    async fn on_commit(&mut self, f: Frame) -> Result<(), ConnError> {
        let txid = required(&f, "transaction")?;
        let Some(tx) = self.txs.end(txid) else {
            return Err(unknown_tx(txid).with_receipt(&f));
        };
        let mut ops = Vec::new();
        // Acks first: they are validated and taken out of the subscriptions now.
        let mut by_queue: Vec<(Arc<Queue>, ConsumerKey, Vec<u64>)> = Vec::new();
        for (sub_key, tags) in tx.acks {
            let Some(sub_id) = self.sub_ids.get(&sub_key) else {
                continue;
            };
            let Some(sub) = self.subs.get_mut(sub_id) else {
                continue;
            };
            for tag in tags {
                if let Some(u) = sub.unacked.remove(&tag) {
                    if let Source::Queue(q) = u.source {
                        let key = ConsumerKey {
                            conn: self.id,
                            sub: sub_key,
                        };
                        match by_queue
                            .iter_mut()
                            .find(|(bq, k, _)| Arc::ptr_eq(bq, &q) && *k == key)
                        {
                            Some((_, _, ids)) => ids.push(u.msg_id),
                            None => by_queue.push((q, key, vec![u.msg_id])),
                        }
                    }
                }
            }
        }
        for (q, key, ids) in by_queue {
            let out = q.ack(key, &ids, false);
            ops.extend(out.persistent.into_iter().map(|id| Op::Ack { id }));
            self.broker.apply(out.effects);
        }
        let mut accepted = Vec::new();
        let header_bytes = tx
            .sends
            .iter()
            .map(|s| {
                s.headers
                    .iter()
                    .map(|(k, v)| (k.len() + v.len() + 32) as u64)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        for send in tx.sends {
            if let Some(m) = self.accept(send, &mut ops) {
                accepted.push(m);
            }
        }
        let receipt = f.get("receipt").map(str::to_string);
        if ops.is_empty() {
            if let Some(r) = receipt {
                self.receipts.push_back(ready(receipt_frame(&r)));
            }
        } else {
            // One record: every send and ack of the transaction, all or nothing. Its messages
            // are dispatched once that record is durable.
            let fut = self.broker.journal.append(ops);
            let route = std::mem::take(&mut accepted);
            self.receipts.push_back(Box::pin(async move {
                match fut.await {
                    Ok(()) => Completion {
                        frame: receipt.map(|r| receipt_frame(&r)),
                        route,
                    },
                    Err(e) => {
                        warn!(error = %e, "journal append of a commit failed");
                        Completion::frame(Some(error_frame(
                            "transaction not stored",
                            &e.to_string(),
                            receipt.as_deref(),
                        )))
                    }
                }
            }));
        }
        for (target, msg) in accepted {
            self.route_in_order(target, msg);
        }
        if self.broker.context().stores_behind()
            || self.broker.memory().producer_must_wait(header_bytes)
        {
            memory_backpressure(self.broker.clone(), header_bytes).await;
        }
        Ok(())
    }

    /// Checks the `[[authorization]]` rights of this connection's user: `right` on
    /// `destination`, and `admin` too when the destination does not exist yet. Returns whether
    /// the user may create the destination (lookups with `false` never create one, so a
    /// destination removed as idle after this check is not re-created without the right).
    fn authorize(&self, right: Right, destination: &str, f: &Frame) -> Result<bool, ConnError> {
        let authz = self.broker.config.authorization();
        if !authz.is_enabled() {
            return Ok(true);
        }
        let Some(who) = &self.principal else {
            return Ok(true);
        };
        let result = authz.check(who, right, destination).and_then(|()| {
            match authz.check(who, Right::Admin, destination) {
                Ok(()) => Ok(true),
                Err(_) if self.broker.destination_exists(destination) => Ok(false),
                Err(denied) => Err(denied),
            }
        });
        result.map_err(|denied| {
            warn!(user = %denied.user, right = denied.right.as_str(), destination, "not authorized");
            ConnError::new("not authorized", denied.to_string()).with_receipt(f)
        })
    }

    fn on_subscribe(&mut self, f: Frame) -> Result<(), ConnError> {
        let destination = required(&f, "destination")?.to_string();
        let is_queue = check_destination(&destination).map_err(|e| e.with_receipt(&f))?;
        let may_create = self.authorize(Right::Read, &destination, &f)?;
        let id = match f.get("id") {
            Some(id) => id.to_string(),
            None if self.version == Version::V1_0 => destination.clone(),
            None => {
                return Err(
                    ConnError::new("missing header", "SUBSCRIBE needs an id header")
                        .with_receipt(&f),
                )
            }
        };
        if self.subs.contains_key(&id) {
            return Err(ConnError::new(
                "duplicate subscription",
                format!("subscription id {id:?} is already in use"),
            )
            .with_receipt(&f));
        }
        let ack = match f.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::Individual,
            other => {
                return Err(ConnError::new(
                    "invalid ack header",
                    format!("ack:{other:?} must be auto, client or client-individual"),
                )
                .with_receipt(&f))
            }
        };
        if f.get("browser") == Some("true") {
            if !is_queue {
                return Err(ConnError::new(
                    "browse needs a queue",
                    format!("{destination} is not a queue"),
                )
                .with_receipt(&f));
            }
            let max = self.broker.config.quotas.max_subscriptions_per_connection;
            if self.browsing.len() >= max {
                return Err(ConnError::from(self.broker.quotas.refuse(
                    crate::quota::Quota::SubscriptionsPerConnection,
                    format!("this connection streams {max} browsers already"),
                ))
                .with_receipt(&f));
            }
            let user = self.principal.as_ref().map_or("", |p| p.user.as_str());
            let snapshot = match resolve(&self.broker, user, &destination, true, may_create)
                .map_err(|r| ConnError::from(r).with_receipt(&f))?
            {
                SubTarget::Queue(q) => q.browse(),
                SubTarget::Topic(_) => Vec::new(),
            };
            self.receipt_now(&f);
            self.browsing.push((id, snapshot.into_iter()));
            return Ok(());
        }
        let prefetch = match f.get("prefetch").or_else(|| f.get("activemq.prefetchSize")) {
            None => {
                self.broker
                    .config
                    .destinations
                    .policy_for(&destination)
                    .prefetch
            }
            Some(v) => match v.parse::<u32>() {
                Ok(p) if p > 0 => p,
                _ => {
                    return Err(ConnError::new(
                        "invalid prefetch header",
                        format!("prefetch:{v:?} must be a positive integer"),
                    )
                    .with_receipt(&f))
                }
            },
        };
        let user = self.principal.as_ref().map_or("", |p| p.user.as_str());
        let target = resolve(&self.broker, user, &destination, is_queue, may_create)
            .map_err(|r| ConnError::from(r).with_receipt(&f))?;
        self.txs
            .quota
            .add_subscription()
            .map_err(|e| ConnError::from(e).with_receipt(&f))?;
        let key = self.next_sub_key;
        self.next_sub_key += 1;
        let ckey = ConsumerKey {
            conn: self.id,
            sub: key,
        };
        self.subs.insert(
            id.clone(),
            Subscription {
                id: id.clone(),
                key,
                ack,
                target,
                unacked: BTreeMap::new(),
            },
        );
        self.sub_ids.insert(key, id.clone());
        // Receipt before the first MESSAGE so clients see the subscription confirmed first.
        self.receipt_now(&f);
        match &self.subs[&id].target {
            SubTarget::Queue(q) => {
                let fx = q.add_consumer(ckey, self.outbox.clone(), prefetch);
                self.broker.apply(fx);
            }
            SubTarget::Topic(t) => t.subscribe(ckey, self.outbox.clone()),
        }
        debug!(sub = %id, %destination, ?ack, prefetch, "subscribed");
        Ok(())
    }

    fn on_unsubscribe(&mut self, f: Frame) -> Result<(), ConnError> {
        let id = match f.get("id") {
            Some(id) => id.to_string(),
            None => match (self.version, f.get("destination")) {
                (Version::V1_0, Some(d)) => d.to_string(),
                _ => {
                    return Err(
                        ConnError::new("missing header", "UNSUBSCRIBE needs an id header")
                            .with_receipt(&f),
                    )
                }
            },
        };
        let Some(sub) = self.subs.remove(&id) else {
            // A browse subscription (streaming or already ended) or one never made: nothing to
            // undo. Clients commonly unsubscribe after a browse ends, so this is not an error.
            self.browsing.retain(|(b, _)| *b != id);
            debug!(sub = %id, "UNSUBSCRIBE of an unknown or browse subscription");
            self.receipt_now(&f);
            return Ok(());
        };
        self.sub_ids.remove(&sub.key);
        self.txs.quota.remove_subscription();
        self.drop_subscription(sub, &HashSet::new());
        self.receipt_now(&f);
        Ok(())
    }

    fn drop_subscription(&self, sub: Subscription, undelivered: &HashSet<u64>) {
        let key = ConsumerKey {
            conn: self.id,
            sub: sub.key,
        };
        match sub.target {
            SubTarget::Queue(q) => {
                let fx = q.remove_consumer(key, undelivered);
                self.broker.apply(fx);
            }
            SubTarget::Topic(t) => t.unsubscribe(key),
        }
    }

    /// Finds the subscription and delivery tags an ACK/NACK refers to.
    fn resolve_ack(&self, f: &Frame) -> Result<Option<(String, Vec<u64>)>, ConnError> {
        let (sub_id, tag) = if let Some(id) = f.get("id").filter(|_| self.version == Version::V1_2)
        {
            let parsed = id
                .split_once('-')
                .and_then(|(s, t)| Some((s.parse::<u64>().ok()?, t.parse::<u64>().ok()?)));
            let Some((sub_key, tag)) = parsed else {
                return Err(ConnError::new(
                    "invalid ack id",
                    format!("id:{id:?} is not an ack header this connection issued"),
                )
                .with_receipt(f));
            };
            match self.sub_ids.get(&sub_key) {
                Some(s) => (s.clone(), tag),
                None => return Ok(None),
            }
        } else {
            let mid = f.get("message-id").or_else(|| f.get("id")).ok_or_else(|| {
                ConnError::new("missing header", "ACK/NACK needs id (1.2) or message-id")
                    .with_receipt(f)
            })?;
            let wanted_sub = f.get("subscription");
            // Our message ids are `ID:fabricmq-<id>`; anything else is not ours.
            let wanted_id = mid
                .strip_prefix("ID:fabricmq-")
                .and_then(|n| n.parse::<u64>().ok());
            let found = self
                .subs
                .values()
                .filter(|s| wanted_sub.is_none_or(|w| w == s.id))
                .find_map(|s| {
                    s.unacked.iter().find_map(|(tag, u)| {
                        (Some(u.msg_id) == wanted_id).then(|| (s.id.clone(), *tag))
                    })
                });
            match found {
                Some(x) => x,
                None => return Ok(None),
            }
        };
        let Some(sub) = self.subs.get(&sub_id) else {
            return Ok(None);
        };
        let tags: Vec<u64> = match sub.ack {
            AckMode::Auto => Vec::new(),
            AckMode::Client => sub.unacked.range(..=tag).map(|(t, _)| *t).collect(),
            AckMode::Individual => sub
                .unacked
                .contains_key(&tag)
                .then_some(tag)
                .into_iter()
                .collect(),
        };
        Ok(Some((sub_id, tags)))
    }

    fn on_ack(&mut self, f: Frame, nack: bool) -> Result<(), ConnError> {
        let resolved = self.resolve_ack(&f)?;
        let tx = f.get("transaction").map(str::to_string);
        if let Some(tx) = &tx {
            if !self.txs.contains(tx) {
                return Err(unknown_tx(tx).with_receipt(&f));
            }
        }
        let Some((sub_id, tags)) = resolved else {
            // Already settled (e.g. covered by a cumulative ACK) or never ours: nothing to do.
            debug!("ACK/NACK for an unknown or settled delivery ignored");
            self.receipt_now(&f);
            return Ok(());
        };
        if tags.is_empty() {
            self.receipt_now(&f);
            return Ok(());
        }
        let Some(sub) = self.subs.get_mut(&sub_id) else {
            return Ok(());
        };
        if let (Some(tx), false) = (&tx, nack) {
            // Settled at COMMIT; ABORT leaves them unacknowledged.
            let key = sub.key;
            self.txs.buffer_ack(tx, key, tags);
            self.receipt_now(&f);
            return Ok(());
        }
        let key = ConsumerKey {
            conn: self.id,
            sub: sub.key,
        };
        let mut per_queue: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
        for tag in tags {
            if let Some(u) = sub.unacked.remove(&tag) {
                if let Source::Queue(q) = u.source {
                    match per_queue.iter_mut().find(|(pq, _)| Arc::ptr_eq(pq, &q)) {
                        Some((_, ids)) => ids.push(u.msg_id),
                        None => per_queue.push((q, vec![u.msg_id])),
                    }
                }
            }
        }
        for (q, ids) in per_queue {
            if nack {
                let fx = q.nack(key, &ids);
                self.broker.apply(fx);
            } else {
                let out = q.ack(key, &ids, false);
                self.journal_acks
                    .extend(out.persistent.iter().map(|&id| Op::Ack { id }));
                self.broker.apply(out.effects);
            }
        }
        self.receipt_when_durable(&f, false);
        Ok(())
    }

    /// Receipts `f` only once what it changed is durable: the acks collected so far are appended
    /// now (not lazily) and the RECEIPT follows their fsync; `flush` also waits for everything this
    /// connection appended lazily before. When the journal cannot store them the client gets an
    /// ERROR instead (and the connection closes): its messages come back, flagged `redelivered`.
    fn receipt_when_durable(&mut self, f: &Frame, flush: bool) {
        let Some(r) = f.get("receipt").map(str::to_string) else {
            return;
        };
        if self.journal_acks.is_empty() && !flush {
            self.push_receipt(receipt_frame(&r));
            return;
        }
        let stored = self
            .broker
            .journal
            .append(std::mem::take(&mut self.journal_acks));
        self.receipts.push_back(Box::pin(async move {
            Completion::frame(Some(match stored.await {
                Ok(()) => receipt_frame(&r),
                Err(e) => error_frame("acknowledgement not stored", &e.to_string(), Some(&r)),
            }))
        }));
    }

    /// Takes `first` and whatever else is queued in the outbox (bounded in count and bytes), loads
    /// the bodies that live only on disk in one blocking call, and encodes the deliveries.
    async fn take_outbox_batch(&mut self, first: Outbound) {
        let mut batch = vec![first];
        let room = self.max_pending.saturating_sub(self.outbuf.len());
        let mut bytes = 0usize;
        while batch.len() < OUTBOX_BATCH && bytes < room {
            match self.outbox_rx.try_recv() {
                Ok(ob) => {
                    if let Outbound::Deliver(d) = &ob {
                        bytes += d.msg.body_len as usize;
                    }
                    batch.push(ob);
                }
                Err(_) => break,
            }
        }
        let wanted: Vec<(usize, Arc<Message>)> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, ob)| match ob {
                Outbound::Deliver(d) if d.msg.body.is_none() => Some((i, d.msg.clone())),
                _ => None,
            })
            .collect();
        let mut bodies = load_bodies(self.broker.context().clone(), wanted).await;
        for (i, ob) in batch.into_iter().enumerate() {
            match ob {
                Outbound::Close(reason) => {
                    warn!(%reason, "closing connection");
                    self.fail(ConnError::new(reason.clone(), reason));
                }
                Outbound::Deliver(d) => {
                    self.outbox
                        .pending
                        .fetch_sub(d.msg.outbox_bytes(), Ordering::Relaxed);
                    let body = match d.msg.body.clone() {
                        Some(b) => Ok(b),
                        None => bodies
                            .remove(&i)
                            .unwrap_or(Err(crate::store::StoreError::NotFound { id: d.msg.id })),
                    };
                    self.deliver(d, body);
                }
            }
        }
        self.flush_auto_acks();
        self.flush_journal_acks();
    }

    fn deliver(&mut self, d: Delivery, body: Result<Bytes, crate::store::StoreError>) {
        let Some(sub_id) = self.sub_ids.get(&d.sub_key) else {
            // Unsubscribed meanwhile; the queue already took the message back.
            return;
        };
        if !self.subs.contains_key(sub_id) {
            return;
        }
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(id = d.msg.id, error = %e, "cannot read message body from its store");
                if let Source::Queue(q) = &d.source {
                    let key = ConsumerKey {
                        conn: self.id,
                        sub: d.sub_key,
                    };
                    let fx = q.nack(key, &[d.msg.id]);
                    self.broker.apply(fx);
                }
                return;
            }
        };
        let Some(sub) = self.subs.get_mut(sub_id) else {
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let m = &d.msg;
        let ack = (sub.ack != AckMode::Auto).then_some((sub.key, tag));
        write_message(
            &mut self.outbuf,
            self.version,
            &sub.id,
            m,
            ack,
            d.delivery_count,
            &body,
        );
        match sub.ack {
            AckMode::Auto => {
                if let Source::Queue(q) = d.source {
                    self.auto_acks.push((q, d.sub_key, m.id));
                }
            }
            _ => {
                sub.unacked.insert(
                    tag,
                    Unacked {
                        source: d.source,
                        msg_id: m.id,
                    },
                );
            }
        }
    }

    fn flush_auto_acks(&mut self) {
        let mut acks = std::mem::take(&mut self.auto_acks);
        let mut i = 0;
        while i < acks.len() {
            let (q, sub, _) = &acks[i];
            let mut j = i;
            while j < acks.len() && Arc::ptr_eq(&acks[j].0, q) && acks[j].1 == *sub {
                j += 1;
            }
            let ids: Vec<u64> = acks[i..j].iter().map(|a| a.2).collect();
            let key = ConsumerKey {
                conn: self.id,
                sub: *sub,
            };
            let out = q.ack(key, &ids, false);
            self.journal_acks
                .extend(out.persistent.iter().map(|&id| Op::Ack { id }));
            self.broker.apply(out.effects);
            i = j;
        }
        acks.clear();
        self.auto_acks = acks;
    }

    fn stream_browse(&mut self) {
        while self.outbuf.len() < self.max_pending {
            let Some((sub_id, iter)) = self.browsing.first_mut() else {
                return;
            };
            let sub_id = sub_id.clone();
            match iter.next() {
                Some(m) => {
                    let Ok(body) = self.broker.context().body(&m) else {
                        continue; // acknowledged meanwhile
                    };
                    write_message(&mut self.outbuf, self.version, &sub_id, &m, None, 0, &body);
                }
                None => {
                    let end = Frame::new(Command::Message)
                        .header("subscription", sub_id)
                        .header("message-id", "browser-end")
                        .header("browser", "end");
                    self.push_frame(&end);
                    self.browsing.remove(0);
                }
            }
        }
    }

    /// Gives every unsettled message back to its queue. Yields to the runtime every 1,024
    /// subscriptions, so a connection with very many does not hold its worker thread.
    async fn cleanup(&mut self) {
        self.outbox_rx.close();
        let mut undelivered: HashMap<u64, HashSet<u64>> = HashMap::new();
        while let Ok(ob) = self.outbox_rx.try_recv() {
            if let Outbound::Deliver(d) = ob {
                undelivered.entry(d.sub_key).or_default().insert(d.msg.id);
            }
        }
        self.flush_auto_acks();
        self.flush_journal_acks();
        let empty = HashSet::new();
        for (i, (_, sub)) in std::mem::take(&mut self.subs).into_iter().enumerate() {
            let u = undelivered.get(&sub.key).unwrap_or(&empty);
            self.drop_subscription(sub, u);
            if i % 1024 == 1023 {
                tokio::task::yield_now().await;
            }
        }
        self.sub_ids.clear();
        let open = self.txs.clear();
        if open > 0 {
            debug!(open, "open transactions discarded");
        }
    }
}

/// Waits while the stores are behind or, for a producer whose last message had more than
/// [`crate::memory::SMALL_HEADERS`] of headers, while the headers of messages whose bodies are on
/// disk exceed `limits.max_memory` (see [`crate::memory`]): the connection reads nothing meanwhile.
async fn memory_backpressure(broker: Arc<Broker>, header_bytes: u64) {
    if broker.context().stores_behind() {
        store_backpressure(broker.context().clone()).await;
    }
    let memory = broker.memory();
    if memory.producer_must_wait(header_bytes) {
        debug!(
            spilled_header_bytes = memory.spilled(),
            "headers of messages on disk exceed limits.max_memory; pausing this producer"
        );
        tokio::select! {
            _ = memory.wait_for_room() => {}
            _ = broker.shutdown.cancelled() => {}
        }
    }
}

/// Waits while the journal or the temporary store is too far behind (see
/// [`STORE_BACKLOG_LIMIT`]). The connection reads nothing meanwhile: TCP pushes back on the
/// producer.
async fn store_backpressure(ctx: Arc<crate::destination::QueueContext>) {
    for store in [&ctx.journal, &ctx.temp] {
        if store.backlog_bytes() > STORE_BACKLOG_LIMIT {
            debug!(
                backlog = store.backlog_bytes(),
                "store behind; pausing this producer"
            );
            store.wait_backlog_below(STORE_BACKLOG_LIMIT / 2).await;
        }
    }
}

/// Reads the bodies of messages that are not in memory, in one blocking task (reads are usually
/// served by the page cache). Keyed by the caller's positions.
async fn load_bodies(
    ctx: Arc<crate::destination::QueueContext>,
    wanted: Vec<(usize, Arc<Message>)>,
) -> HashMap<usize, Result<Bytes, crate::store::StoreError>> {
    if wanted.is_empty() {
        return HashMap::new();
    }
    match tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(i, m)| (i, ctx.body(&m)))
            .collect::<HashMap<_, _>>()
    })
    .await
    {
        Ok(map) => map,
        Err(e) => {
            tracing::error!(error = %e, "body loading task failed");
            HashMap::new()
        }
    }
}

/// Encodes a MESSAGE frame straight into `out`. `ack` is (subscription key, delivery tag) when
/// the subscription acknowledges; `delivery_count` 0 means a browse (no delivery headers).
fn write_message(
    out: &mut BytesMut,
    version: Version,
    sub_id: &str,
    m: &Message,
    ack: Option<(u64, u64)>,
    delivery_count: u32,
    body: &[u8],
) {
    out.reserve(body.len() + 256);
    let mut w = FrameWriter::begin(out, Command::Message, version);
    w.header("subscription", sub_id);
    let mut text = String::with_capacity(48);
    let _ = write!(text, "ID:fabricmq-{}", m.id);
    w.header("message-id", &text);
    w.header("destination", &m.destination);
    if let Some((key, tag)) = ack {
        text.clear();
        let _ = write!(text, "{key}-{tag}");
        w.header("ack", &text);
    }
    if delivery_count > 1 {
        w.header("redelivered", "true");
    }
    if delivery_count > 0 {
        w.header_u64("delivery-count", u64::from(delivery_count));
    }
    w.header("persistent", if m.persistent { "true" } else { "false" });
    w.header_u64("priority", u64::from(m.priority));
    if m.expires != 0 {
        w.header_u64("expires", m.expires);
    }
    w.header_u64("timestamp", m.timestamp);
    if let Some(p) = &m.producer {
        w.header("producer-id", &p.producer);
        w.header_u64("producer-seq", p.seq);
    }
    for (k, v) in &m.headers {
        w.header(k, v);
    }
    w.finish(body);
}

fn decode_error(e: DecodeError) -> ConnError {
    let message = match &e {
        DecodeError::FrameTooLarge { .. } => "frame too large",
        DecodeError::TooManyHeaders { .. } => "too many headers",
        DecodeError::HeaderLineTooLong { .. } => "header line too long",
        _ => "malformed frame",
    };
    ConnError::new(message, e.to_string())
}

fn required<'a>(f: &'a Frame, name: &str) -> Result<&'a str, ConnError> {
    f.get(name).ok_or_else(|| {
        ConnError::new(
            "missing header",
            format!("{} needs a {name} header", f.command.as_str()),
        )
        .with_receipt(f)
    })
}

fn unknown_tx(tx: &str) -> ConnError {
    ConnError::new("unknown transaction", format!("no open transaction {tx:?}"))
}

/// Validates a destination name; true for a queue, false for a topic.
fn check_destination(d: &str) -> Result<bool, ConnError> {
    let (is_queue, name) = if let Some(n) = d.strip_prefix("/queue/") {
        (true, n)
    } else if let Some(n) = d.strip_prefix("/topic/") {
        (false, n)
    } else {
        return Err(ConnError::new(
            "unknown destination",
            format!("{d:?}: destinations are /queue/<name> or /topic/<name>"),
        ));
    };
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ConnError::new(
            "invalid destination",
            format!(
                "{d:?}: the name must be 1-200 characters without spaces or control characters"
            ),
        ));
    }
    Ok(is_queue)
}

/// Headers the broker sets itself on delivery (not copied from a SEND).
fn is_broker_header(k: &str) -> bool {
    matches!(
        k,
        "destination"
            | "receipt"
            | "transaction"
            | "content-length"
            | "persistent"
            | "priority"
            | "expires"
            | "producer-id"
            | "producer-seq"
            | "message-id"
            | "subscription"
            | "ack"
            | "redelivered"
            | "delivery-count"
            | "timestamp"
    )
}

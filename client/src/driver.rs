//! The task that owns the socket.
//!
//! This module owns all I/O of one connection: the CONNECT/CONNECTED handshake
//! ([`handshake`]) and then [`Driver`], a single task that
//!
//! * takes [`Command`]s from the handles' bounded channel and has the
//!   [`ConnState`] encode them into a pending output buffer, draining every
//!   command that is already queued before writing, so pipelined sends cost
//!   one `write` syscall per batch rather than per message;
//! * writes with two buffers: one being written to the socket while the next
//!   batch accumulates in the other, swapped when the first is fully written
//!   (which is also when receipt-less sends in it are reported as written);
//! * reads and decodes frames (bodies are zero-copy slices of the read
//!   buffer) and hands them to the [`ConnState`];
//! * sends heart-beats when it wrote nothing for the negotiated interval, and
//!   declares the peer dead when nothing at all arrived for twice the
//!   negotiated receive interval (which is how a peer that vanished without
//!   a FIN or RST, e.g. a paused or unplugged broker, is detected).
//!
//! # Failover
//! A driver started by the failover transport (`failover.rs`) is *resumable*:
//! when its connection fails (anything but a DISCONNECT the client asked
//! for), [`Driver::run`] does not fail the waiters but hands the session state
//! and the handles' channels back as a [`Resume`], for the transport to replay
//! on the next connection. An `interrupt` token lets the transport leave a
//! connection that still works (the master moved).
//!
//! # Backpressure
//! Every subscription has a bounded buffer. When a MESSAGE arrives for a full
//! buffer, the driver keeps that one message aside and stops reading the
//! socket until the subscriber has freed a quarter of the buffer (not just
//! one slot: resuming per message would cost a cross-thread wake-up each). The broker then sees TCP
//! backpressure (and, with client acks, its prefetch window fills), instead of
//! the client buffering without bound. Commands (sends, acks) keep flowing
//! while reads are paused. The flip side: one subscription that is not
//! consumed stalls the delivery of every other subscription, and of receipts,
//! on the same connection. Consume every subscription, or drop it (which
//! unsubscribes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `message` headers of an ERROR answering CONNECT that mean "not now" rather than "wrong login":
/// the broker's password-check pool is full (`server busy`), its back-off after failed logins
/// would pass the CONNECT deadline (`too many failed logins`), or the check did not finish in time
/// (`connect timeout`).
pub(crate) const TRANSIENT_CONNECT_ERRORS: [&str; 3] =
    ["server busy", "too many failed logins", "connect timeout"];

use bytes::{Buf, BytesMut};
use fabricmq_stomp::{
    encode_heartbeat, negotiate_heart_beat, parse_heart_beat, Command as StompCommand, Decoder,
    FrameLimits, FrameWriter, Item, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::ClientError;
use crate::options::ConnectOptions;
use crate::state::{CloseReason, Command, ConnState, Parked};

/// Stop taking commands while this many bytes wait to be written.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Grow the read buffer by this much when it runs low.
const READ_CHUNK: usize = 64 * 1024;
/// Minimum free space in the read buffer before a read.
const READ_MIN_FREE: usize = 8 * 1024;

/// What the handshake settled.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    /// Protocol version from CONNECTED `version` (1.0 when absent).
    pub(crate) version: Version,
    /// CONNECTED `server` header.
    pub(crate) server: Option<String>,
    /// Send a heart-beat after this much write idleness (None: never).
    pub(crate) send_every: Option<Duration>,
    /// Expect something from the broker this often (None: no check).
    pub(crate) expect_every: Option<Duration>,
    /// CONNECTED `fabric-epoch` header: the election epoch of the fabric master that answered
    /// (absent from standalone brokers and other servers).
    pub(crate) epoch: Option<u64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn nonzero_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn parse_version(v: Option<&str>) -> Result<Version, ClientError> {
    match v.map(str::trim) {
        None | Some("1.0") => Ok(Version::V1_0),
        Some("1.1") => Ok(Version::V1_1),
        Some("1.2") => Ok(Version::V1_2),
        Some(other) => Err(ClientError::Protocol {
            reason: format!("broker chose unsupported STOMP version '{other}'"),
        }),
    }
}

/// Writes the CONNECT frame into `out`. `ours` is the heart-beat pair we offer,
/// in milliseconds. CONNECT headers are never escaped (the codec's writer
/// applies that rule whatever the version), so the version passed is moot.
fn encode_connect(out: &mut BytesMut, host: &str, opts: &ConnectOptions, ours: (u64, u64)) {
    let mut w = FrameWriter::begin(out, StompCommand::Connect, Version::V1_0);
    w.header("accept-version", "1.0,1.1,1.2");
    w.header("host", opts.virtual_host.as_deref().unwrap_or(host));
    if let Some(login) = &opts.login {
        w.header("login", login);
    }
    if let Some(passcode) = &opts.passcode {
        w.header("passcode", passcode);
    }
    w.header("heart-beat", &format!("{},{}", ours.0, ours.1));
    if let Some(id) = &opts.client_id {
        w.header("client-id", id);
    }
    w.finish(b"");
}

/// Sends CONNECT and waits for CONNECTED. Returns what was negotiated, plus the
/// decoder and read buffer (which may already hold the broker's next frames).
/// An ERROR in reply becomes [`ClientError::Auth`], except the broker's transient refusals
/// ([`TRANSIENT_CONNECT_ERRORS`]), which become [`ClientError::Server`].
///
/// Not bounded in time by itself: the caller wraps it in the connect timeout.
pub(crate) async fn handshake<S>(
    stream: &mut S,
    host: &str,
    opts: &ConnectOptions,
) -> Result<(Negotiated, Decoder, BytesMut), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ours = (millis(opts.heart_beat.0), millis(opts.heart_beat.1));
    let mut out = BytesMut::with_capacity(256);
    encode_connect(&mut out, host, opts, ours);
    stream.write_all(&out).await?;
    stream.flush().await?;

    let mut decoder = Decoder::new(FrameLimits::default());
    // Nothing is negotiated yet: read CONNECTED/ERROR without unescaping (a
    // refusal message with a stray backslash must not turn into a decode error).
    decoder.set_version(Version::V1_0);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let frame = loop {
        match decoder.decode(&mut rbuf) {
            Ok(Some(Item::Frame(f))) => break f,
            Ok(Some(Item::Heartbeat)) => continue,
            Ok(None) => {}
            Err(e) => {
                return Err(ClientError::Protocol {
                    reason: format!("undecodable reply to CONNECT: {e}"),
                })
            }
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Err(ClientError::Protocol {
                reason: "broker closed the connection before answering CONNECT".into(),
            });
        }
    };
    match frame.command {
        StompCommand::Connected => {}
        StompCommand::Error => {
            let message = match frame.get("message") {
                Some(m) => lenient_unescape(m),
                None => String::from_utf8_lossy(&frame.body).trim().to_owned(),
            };
            // The broker's login guard refuses for now, not for good: these are worth retrying
            // (a failover transport does; an `Auth` error it never retries).
            if TRANSIENT_CONNECT_ERRORS.contains(&message.as_str()) {
                return Err(ClientError::Server {
                    message,
                    detail: String::from_utf8_lossy(&frame.body).trim().to_owned(),
                });
            }
            return Err(ClientError::Auth { message });
        }
        other => {
            return Err(ClientError::Protocol {
                reason: format!("expected CONNECTED, got {}", other.as_str()),
            })
        }
    }
    let version = parse_version(frame.get("version"))?;
    let theirs = parse_heart_beat(frame.get("heart-beat")).map_err(|e| ClientError::Protocol {
        reason: format!("bad heart-beat header in CONNECTED: {e}"),
    })?;
    let (send_ms, expect_ms) = negotiate_heart_beat(ours, theirs);
    decoder.set_version(version);
    let negotiated = Negotiated {
        version,
        server: frame.get("server").map(str::to_owned),
        send_every: nonzero_ms(send_ms),
        expect_every: nonzero_ms(expect_ms),
        epoch: frame
            .get("fabric-epoch")
            .and_then(|e| e.trim().parse().ok()),
    };
    Ok((negotiated, decoder, rbuf))
}

/// Undoes STOMP 1.1/1.2 header escapes where they are valid and keeps every
/// other byte as is. Used for an ERROR in reply to CONNECT, which was read
/// raw because the broker may or may not have escaped it (it answers before,
/// or after, settling on a version).
fn lenient_unescape(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let replacement = match chars.peek() {
                Some('c') => Some(':'),
                Some('n') => Some('\n'),
                Some('r') => Some('\r'),
                Some('\\') => Some('\\'),
                _ => None,
            };
            if let Some(r) = replacement {
                chars.next();
                out.push(r);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Channels and flags shared between the driver and the handles.
pub(crate) struct DriverLinks {
    /// Commands from the handles.
    pub(crate) commands: mpsc::Receiver<Command>,
    /// Highest sequence number of receipt-less SENDs fully written.
    pub(crate) written: watch::Sender<u64>,
    /// Set when the connection stops accepting requests.
    pub(crate) closed: Arc<AtomicBool>,
}

/// What a resumable driver hands back when its connection failed.
pub(crate) struct Resume {
    /// The session, with every unanswered request still pending.
    pub(crate) state: ConnState,
    /// The handles' channels.
    pub(crate) links: DriverLinks,
    /// Why the connection ended.
    pub(crate) reason: CloseReason,
}

/// The connection task (see the module docs).
pub(crate) struct Driver<R, W> {
    reader: R,
    writer: W,
    decoder: Decoder,
    rbuf: BytesMut,
    /// Being written to the socket.
    out: BytesMut,
    /// Written-sequence to publish once `out` is fully written.
    out_seq: Option<u64>,
    /// Accumulating the next batch.
    next: BytesMut,
    next_seq: Option<u64>,
    state: ConnState,
    links: DriverLinks,
    /// Still taking commands from the channel.
    accepting: bool,
    parked: Option<Parked>,
    send_every: Option<Duration>,
    recv_timeout: Option<Duration>,
    last_read: Instant,
    last_write: Instant,
    send_timer: std::pin::Pin<Box<Sleep>>,
    recv_timer: std::pin::Pin<Box<Sleep>>,
    /// Armed once DISCONNECT is written: close even without its receipt.
    disconnect_deadline: Option<std::pin::Pin<Box<Sleep>>>,
    disconnect_timeout: Duration,
    /// Failover: hand the session back instead of closing it.
    resumable: bool,
    /// Failover: leave this connection now.
    interrupt: Option<CancellationToken>,
}

impl<R, W> Driver<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// A driver for an established, handshaken connection that carries the
    /// session `state` (fresh, or replayed by the failover transport).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        reader: R,
        writer: W,
        negotiated: &Negotiated,
        decoder: Decoder,
        rbuf: BytesMut,
        state: ConnState,
        links: DriverLinks,
        disconnect_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        let recv_timeout = negotiated.expect_every.map(|d| d * 2);
        let far = now + Duration::from_secs(86_400);
        Driver {
            reader,
            writer,
            decoder,
            rbuf,
            out: BytesMut::with_capacity(READ_CHUNK),
            out_seq: None,
            next: BytesMut::with_capacity(READ_CHUNK),
            next_seq: None,
            state,
            links,
            accepting: true,
            parked: None,
            send_every: negotiated.send_every,
            recv_timeout,
            last_read: now,
            last_write: now,
            send_timer: Box::pin(tokio::time::sleep_until(
                negotiated.send_every.map_or(far, |d| now + d),
            )),
            recv_timer: Box::pin(tokio::time::sleep_until(
                recv_timeout.map_or(far, |d| now + d),
            )),
            disconnect_deadline: None,
            disconnect_timeout,
            resumable: false,
            interrupt: None,
        }
    }

    /// Makes this driver resumable (see the module docs): on a connection
    /// failure [`run`](Self::run) returns the session instead of closing it,
    /// and cancelling `interrupt` ends the connection on purpose.
    pub(crate) fn resumable(mut self, interrupt: CancellationToken) -> Self {
        self.resumable = true;
        self.interrupt = Some(interrupt);
        self
    }

    /// Runs the connection until it closes, then fails whatever still waits;
    /// a resumable driver instead returns the session when the connection
    /// failed (not when the client disconnected).
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future drops the session (waiters see
    /// [`ClientError::Closed`]). The failover transport uses the interrupt
    /// token instead.
    pub(crate) async fn run(mut self) -> Option<Resume> {
        // Frames that arrived together with CONNECTED.
        let reason = match self.process_input() {
            Ok(()) => self.event_loop().await,
            Err(r) => r,
        };
        let resume = self.resumable
            && !reason.is_graceful()
            && !matches!(reason, CloseReason::DisconnectTimeout)
            && !self.state.is_disconnecting();
        if resume {
            // Nothing more is written; bytes still buffered are lost with the
            // socket (receipted sends and subscriptions are replayed from the
            // state, acks are re-done by the de-duplication window).
            debug!(%reason, "connection lost: handing the session to the failover transport");
            return Some(Resume {
                state: self.state,
                links: self.links,
                reason,
            });
        }
        self.finish(reason).await;
        None
    }

    async fn event_loop(&mut self) -> CloseReason {
        loop {
            if self.state.is_disconnected() {
                return CloseReason::Disconnected;
            }
            if self.out.is_empty() && !self.next.is_empty() {
                std::mem::swap(&mut self.out, &mut self.next);
                self.out_seq = self.next_seq.take();
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_MIN_FREE {
                self.rbuf.reserve(READ_CHUNK);
            }
            let reading = self.parked.is_none();
            let take_commands = self.accepting && self.next.len() < WRITE_HIGH_WATER;
            let parked_tx = self.parked.as_ref().map(|p| p.deliver.clone());
            let deadline = self.disconnect_deadline.as_mut();
            let interrupt = self.interrupt.as_ref();
            tokio::select! {
                r = self.reader.read_buf(&mut self.rbuf), if reading => match r {
                    Ok(0) => return CloseReason::Eof,
                    Ok(_) => {
                        self.last_read = Instant::now();
                        if let Err(reason) = self.process_input() {
                            return reason;
                        }
                    }
                    Err(e) => return CloseReason::Io(e),
                },
                r = self.writer.write(&self.out), if !self.out.is_empty() => match r {
                    Ok(0) => return CloseReason::Io(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.wrote(n),
                    Err(e) => return CloseReason::Io(e),
                },
                room = async move {
                    match parked_tx {
                        // Wait for a quarter of the buffer to be free, not one
                        // slot, so a slow consumer does not make us pause and
                        // resume on every message. The permits are released at
                        // once: only this task sends to the buffer, so the room
                        // stays until it fills it.
                        Some(tx) => {
                            let want = (tx.max_capacity() / 4).max(1);
                            tx.reserve_many(want).await.is_ok()
                        }
                        None => std::future::pending().await,
                    }
                }, if !reading => {
                    if let Some(parked) = self.parked.take() {
                        if room {
                            self.unpark(parked);
                        } else {
                            self.state.subscriber_gone(&parked.sub_id, &mut self.next);
                        }
                        if let Err(reason) = self.process_input() {
                            return reason;
                        }
                    }
                },
                cmd = self.links.commands.recv(), if take_commands => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => self.handles_gone(),
                },
                () = self.send_timer.as_mut(), if self.send_every.is_some() => self.on_send_timer(),
                () = self.recv_timer.as_mut(), if self.recv_timeout.is_some() => {
                    if let Err(reason) = self.on_recv_timer() {
                        return reason;
                    }
                },
                () = async move {
                    match deadline {
                        Some(d) => d.as_mut().await,
                        None => std::future::pending().await,
                    }
                } => return CloseReason::DisconnectTimeout,
                () = async move {
                    match interrupt {
                        Some(t) => t.cancelled().await,
                        None => std::future::pending().await,
                    }
                } => return CloseReason::Moved("another endpoint".into()),
            }
            self.drain_commands();
            if let Some(p) = &self.parked {
                if !self.state.has_subscription(&p.sub_id) || self.state.is_disconnecting() {
                    // Unsubscribed while its message waited, or disconnecting
                    // (the DISCONNECT receipt must get through): drop it, read on.
                    self.parked = None;
                    if let Err(reason) = self.process_input() {
                        return reason;
                    }
                }
            }
        }
    }

    /// Failover: replays the carried session on this new connection (which
    /// negotiated `version`) and then takes the commands held while
    /// disconnected, in their order. Called before [`run`](Self::run).
    pub(crate) fn resume_session(
        &mut self,
        version: Version,
        held: impl IntoIterator<Item = Command>,
    ) {
        self.state.replay(version, &mut self.next);
        for cmd in held {
            self.on_command(cmd);
        }
    }

    /// Delivers the parked message now that its buffer has room.
    fn unpark(&mut self, parked: Parked) {
        match parked.deliver.try_send(parked.msg) {
            Ok(()) => debug!(subscription = %parked.sub_id, "resuming reads"),
            // Cannot happen (this task is the only sender), but stay parked if it does.
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.parked = Some(Parked { msg, ..parked });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.state.subscriber_gone(&parked.sub_id, &mut self.next);
            }
        }
    }

    /// Takes every command already queued, up to the write high-water mark.
    fn drain_commands(&mut self) {
        while self.accepting && self.next.len() < WRITE_HIGH_WATER {
            match self.links.commands.try_recv() {
                Ok(cmd) => self.on_command(cmd),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.handles_gone(),
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        if let Some(seq) = self.state.handle_command(cmd, &mut self.next) {
            self.next_seq = Some(seq);
        }
        if self.state.is_disconnecting() && self.accepting {
            self.stop_accepting();
        }
    }

    fn stop_accepting(&mut self) {
        self.accepting = false;
        self.links.closed.store(true, Ordering::Release);
        self.disconnect_deadline = Some(Box::pin(tokio::time::sleep(self.disconnect_timeout)));
    }

    /// Every handle (connection, subscription, transaction) was dropped: say
    /// DISCONNECT; receipts still awaited by `ReceiptFuture`s arrive before
    /// its receipt because the broker answers in order.
    fn handles_gone(&mut self) {
        if !self.accepting {
            return;
        }
        debug!("all handles dropped: disconnecting");
        self.on_command(Command::Disconnect { reply: None });
    }

    fn wrote(&mut self, n: usize) {
        self.out.advance(n);
        self.last_write = Instant::now();
        if self.out.is_empty() {
            self.out.clear();
            if let Some(seq) = self.out_seq.take() {
                self.links.written.send_replace(seq);
            }
        }
    }

    fn process_input(&mut self) -> Result<(), CloseReason> {
        while self.parked.is_none() {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(Item::Frame(frame))) => {
                    self.parked = self.state.handle_frame(frame, &mut self.next)?;
                }
                Ok(Some(Item::Heartbeat)) => {}
                Ok(None) => break,
                Err(e) => return Err(CloseReason::Protocol(e.to_string())),
            }
        }
        Ok(())
    }

    fn on_send_timer(&mut self) {
        let Some(every) = self.send_every else { return };
        let now = Instant::now();
        let due = self.last_write + every;
        if now >= due {
            if self.out.is_empty() && self.next.is_empty() {
                encode_heartbeat(&mut self.next);
            }
            self.send_timer.as_mut().reset(now + every);
        } else {
            self.send_timer.as_mut().reset(due);
        }
    }

    fn on_recv_timer(&mut self) -> Result<(), CloseReason> {
        let Some(limit) = self.recv_timeout else {
            return Ok(());
        };
        let now = Instant::now();
        if self.parked.is_some() {
            // We are the ones not reading: the peer is not to blame.
            self.last_read = now;
        }
        let deadline = self.last_read + limit;
        if now >= deadline {
            return Err(CloseReason::HeartbeatTimeout(limit));
        }
        self.recv_timer.as_mut().reset(deadline);
        Ok(())
    }

    async fn finish(mut self, reason: CloseReason) {
        self.links.closed.store(true, Ordering::Release);
        self.links.commands.close();
        if reason.is_graceful() {
            debug!(%reason, "connection closed");
            let _ = self.writer.shutdown().await;
        } else if matches!(reason, CloseReason::DisconnectTimeout) {
            info!(%reason, "connection closed");
        } else {
            warn!(%reason, "connection lost");
        }
        self.state.close(&reason);
        // Commands still queued are dropped here; their waiters see Closed.
        while self.links.commands.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_unescape_keeps_what_is_not_an_escape() {
        assert_eq!(lenient_unescape("plain"), "plain");
        assert_eq!(lenient_unescape("a\\cb\\nc\\\\d\\re"), "a:b\nc\\d\re");
        assert_eq!(lenient_unescape("C:\\temp\\x \\"), "C:\\temp\\x \\");
    }

    #[test]
    fn connect_is_never_escaped_and_cannot_break_framing() {
        let opts = ConnectOptions {
            login: Some("a:b\\c\nd".into()),
            passcode: Some("p\r".into()),
            client_id: Some("cid".into()),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        encode_connect(&mut out, "h", &opts, (1000, 0));
        assert_eq!(
            &out[..],
            &b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:h\nlogin:a:b\\c d\npasscode:p \n\
               heart-beat:1000,0\nclient-id:cid\n\n\0"[..]
        );
        let mut d = Decoder::new(FrameLimits::default());
        d.set_version(Version::V1_2);
        let Ok(Some(Item::Frame(f))) = d.decode(&mut out) else {
            panic!("CONNECT does not decode");
        };
        assert_eq!(f.command, StompCommand::Connect);
        assert_eq!(f.get("login"), Some("a:b\\c d"));
        assert!(out.is_empty());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version(None).unwrap(), Version::V1_0);
        assert_eq!(parse_version(Some("1.1")).unwrap(), Version::V1_1);
        assert_eq!(parse_version(Some(" 1.2")).unwrap(), Version::V1_2);
        assert!(matches!(
            parse_version(Some("2.0")),
            Err(ClientError::Protocol { .. })
        ));
    }
}

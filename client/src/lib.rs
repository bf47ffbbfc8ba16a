//! fabricmq client library: broker URLs, STOMP connections, producer/consumer API.
//!
//! ```no_run
//! use fabricmq_client::{AckMode, BrokerUrl, ConnectOptions, Connection, Outgoing, SubscribeOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let url: BrokerUrl = "tcp://localhost:61613".parse()?;
//! let conn = Connection::connect(&url, ConnectOptions::default()).await?;
//!
//! let mut sub = conn.subscribe("/queue/orders", AckMode::Client, SubscribeOptions::default()).await?;
//! conn.send(Outgoing::new("/queue/orders", "hello")).await?; // waits for the receipt
//!
//! let msg = sub.recv().await.expect("a message");
//! conn.ack(&msg).await?;
//! conn.disconnect().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! * [`url`]: [`BrokerUrl`] and [`Destination`] parsing.
//! * `options` / `message` / `error`: the plain data types re-exported below.
//! * `connection`: the public handles ([`Connection`], [`Subscription`],
//!   [`Transaction`], [`ReceiptFuture`]).
//! * `state`: the STOMP session state machine (receipts, subscriptions),
//!   without I/O, separate from the handles so that a failover transport can
//!   carry it over a reconnect.
//! * `driver`: the one task per connection that owns the socket (handshake,
//!   batched writes, reads, heart-beats, backpressure).
//! * `failover`: the failover transport under `failover:(...)` and
//!   `discovery:fabric:` URLs: reconnect with back-off, replay of the
//!   session, client-side de-duplication, [`ConnectionEvent`]s.
//! * `tls`: `ssl://` connections (rustls, ring provider): the trust store and
//!   client certificate of [`TlsOptions`], and the plain-or-TLS socket halves
//!   the driver runs on.
//!
//! Outgoing frames are written straight into the connection's write buffer
//! with the codec's [`fabricmq_stomp::FrameWriter`] (no per-message `Frame`
//! allocation, and the one copy of the STOMP escaping rules).
//!
//! # Design
//! A [`Connection`] is an `Arc` around the sending end of a bounded channel.
//! One task per connection owns the TCP socket: it drains every queued
//! command into a single buffer and writes it with one syscall, so pipelined
//! sends ([`Connection::send_pipelined`]) scale to hundreds of thousands of
//! messages per second. Receipts are matched to waiters by id; a broker ERROR
//! carrying a `receipt-id` fails only that request, any other ERROR, EOF or a
//! missed heart-beat fails every waiter and ends every subscription.
//! Subscriptions have bounded buffers; a full one pauses reading from the
//! socket (TCP backpressure, see [`Subscription`]).
//!
//! Logging goes through `tracing` (target `fabricmq_client`); the passcode is
//! never logged nor printed by `Debug`.

mod connection;
pub mod discovery;
mod driver;
mod error;
mod failover;
mod message;
mod options;
mod state;
mod tls;
pub mod url;

pub use connection::{Connection, ReceiptFuture, Subscription, Transaction};
pub use discovery::Discovery;
pub use error::ClientError;
pub use fabricmq_stomp::Version;
pub use failover::ConnectionEvent;
pub use message::{Message, Outgoing};
pub use options::{AckMode, ConnectOptions, ParseAckModeError, SubscribeOptions, TlsOptions};
pub use url::FailoverOptions;
pub use url::{BrokerUrl, Destination, UrlError, DEFAULT_STOMP_PORT};

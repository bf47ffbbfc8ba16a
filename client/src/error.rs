//! The client's error type.
//!
//! [`ClientError`] is the one error every fallible call of this crate returns.
//! Its variants separate what a caller may want to react to differently:
//! a bad URL, a refused TCP connection, rejected credentials, an `ERROR` frame
//! from the broker, a protocol violation, a timeout, and a connection that is
//! gone. The failover transport adds three: a request that waited too long for
//! a connection ([`ClientError::NotConnected`]), a transaction lost in a
//! failover ([`ClientError::TransactionLost`]), and a discovery failure
//! ([`ClientError::Discovery`]).

use std::time::Duration;

use crate::url::UrlError;

/// Everything that can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker URL could not be parsed.
    #[error(transparent)]
    Url(#[from] UrlError),

    /// The TCP connection could not be established.
    #[error("cannot connect to {addr}")]
    Connect {
        /// `host:port` that was dialled.
        addr: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// The broker answered `CONNECT` with an `ERROR` frame (typically a wrong
    /// login or passcode).
    #[error("broker refused the connection: {message}")]
    Auth {
        /// The `message` header of the `ERROR` frame (or its body if it had none).
        message: String,
    },

    /// The broker sent an `ERROR` frame: either for one request (it carried that
    /// request's `receipt-id`) or for the whole connection, which then closes.
    #[error("broker error: {message}")]
    Server {
        /// The `message` header of the `ERROR` frame.
        message: String,
        /// The body of the `ERROR` frame (often a longer explanation), lossily
        /// decoded as UTF-8.
        detail: String,
    },

    /// The peer broke the STOMP protocol (undecodable bytes, an unexpected
    /// frame, an unsupported version), or a call is not possible with the
    /// negotiated protocol version.
    #[error("STOMP protocol error: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },

    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was being waited for ("CONNECTED", "DISCONNECT receipt", ...).
        what: &'static str,
        /// How long it waited.
        after: Duration,
    },

    /// The connection is gone (closed by either side, dead peer detected by
    /// heart-beating, or an I/O failure); the call could not complete.
    #[error("connection closed")]
    Closed,

    /// Failover transport: the request waited `after` (the URL's `timeout`
    /// option) for a connection to a broker and none came. The request was
    /// not sent (for a SEND that was already written once, the broker may
    /// still have it).
    #[error("no broker connection within {after:?} (failover timeout)")]
    NotConnected {
        /// How long the request waited.
        after: Duration,
    },

    /// Failover transport: the connection failed while transaction
    /// `transaction` was open. The broker rolls back an open transaction when
    /// its connection ends, so every send and ack made in it is void; the
    /// application must run the transaction again. When `outcome_unknown`
    /// is true the COMMIT had been written but its receipt never came: the
    /// broker may or may not have committed it.
    #[error("{}", transaction_lost_message(.transaction, *.outcome_unknown))]
    TransactionLost {
        /// The transaction id.
        transaction: String,
        /// True when the COMMIT was already on its way.
        outcome_unknown: bool,
    },

    /// Broker discovery (the registry) failed, e.g. ZooKeeper could not be
    /// reached at start-up.
    #[error("discovery failed: {message}")]
    Discovery {
        /// What went wrong.
        message: String,
    },

    /// TLS could not be set up: an unreadable or unparsable CA, certificate or key file, or a
    /// broker name that cannot be verified. Not retried by the failover transport at start-up.
    #[error("TLS: {message}")]
    Tls {
        /// What went wrong (names the file or setting).
        message: String,
    },

    /// The TLS handshake with the broker failed (untrusted or mismatched certificate, a
    /// client certificate the broker refused, or a peer that does not speak TLS).
    #[error("TLS handshake with {addr} failed")]
    TlsHandshake {
        /// `host:port` that was dialled.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// An I/O error on an established connection.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn transaction_lost_message(transaction: &str, outcome_unknown: bool) -> String {
    if outcome_unknown {
        format!(
            "transaction {transaction}: the connection failed before the COMMIT receipt arrived; \
             whether the broker committed it is unknown"
        )
    } else {
        format!(
            "transaction {transaction} was rolled back: the connection failed while it was open; \
             run it again"
        )
    }
}

//! The client's error type.
//!
//! [`ClientError`] is the one error every fallible call of this crate returns.
//! Its variants separate what a caller may want to react to differently:
//! a bad URL, a refused TCP connection, rejected credentials, an `ERROR` frame
//! from the broker, a protocol violation, a timeout, and a connection that is
//! gone.

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

    /// An I/O error on an established connection.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

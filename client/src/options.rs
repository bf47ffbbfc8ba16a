//! Knobs for connecting and subscribing.
//!
//! This module owns [`ConnectOptions`] (credentials, heart-beats, timeouts, TLS trust),
//! [`AckMode`] and [`SubscribeOptions`]. They are plain data: nothing here
//! touches the network.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How to open a connection.
///
/// `Debug` never prints the passcode (it shows `Some("<redacted>")`), so the
/// options can be logged safely.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `login` header. `None` sends no credentials.
    pub login: Option<String>,
    /// `passcode` header. Never printed by `Debug`.
    pub passcode: Option<String>,
    /// Sent as the `client-id` header (durable topic subscriptions key on it).
    pub client_id: Option<String>,
    /// Heart-beats as (how often we can send, how often we want to receive).
    /// Default (10 s, 10 s); (0, 0) disables heart-beating. Sub-millisecond
    /// parts are ignored.
    pub heart_beat: (Duration, Duration),
    /// Upper bound for the TCP connect plus the CONNECT/CONNECTED exchange, and
    /// for waiting for the DISCONNECT receipt. Default 10 s.
    pub connect_timeout: Duration,
    /// The `host` header (the broker's virtual host). Default: the URL's host.
    pub virtual_host: Option<String>,
    /// Trust and client-certificate settings for `ssl://` (`stomp+ssl://`) brokers.
    pub tls: TlsOptions,
}

/// TLS settings for `ssl://` and `stomp+ssl://` URLs (also inside `failover:(...)` and from a
/// discovery master record). Files are PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// CA certificates trusted to sign the broker's certificate. When `None`: the file named by
    /// the `FABRIC_TLS_CA` environment variable, else the system bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for brokers that require client certificates (with
    /// [`key_file`](Self::key_file)).
    pub cert_file: Option<PathBuf>,
    /// Private key of [`cert_file`](Self::cert_file).
    pub key_file: Option<PathBuf>,
    /// Name to verify the broker's certificate against instead of the URL's host.
    pub server_name: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            login: None,
            passcode: None,
            client_id: None,
            heart_beat: (Duration::from_secs(10), Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(10),
            virtual_host: None,
            tls: TlsOptions::default(),
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("login", &self.login)
            .field("passcode", &self.passcode.as_ref().map(|_| "<redacted>"))
            .field("client_id", &self.client_id)
            .field("heart_beat", &self.heart_beat)
            .field("connect_timeout", &self.connect_timeout)
            .field("virtual_host", &self.virtual_host)
            .field("tls", &self.tls)
            .finish()
    }
}

/// How the broker learns that a message was consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// The broker considers a message consumed as soon as it sends it.
    Auto,
    /// Cumulative: acknowledging a message acknowledges every earlier message
    /// of the same subscription.
    Client,
    /// Each message is acknowledged on its own.
    ClientIndividual,
}

impl AckMode {
    /// The `ack` header value: `"auto"`, `"client"` or `"client-individual"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }
}

impl fmt::Display for AckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an [`AckMode`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ack mode '{0}': expected auto, client, client-individual or individual")]
pub struct ParseAckModeError(pub String);

impl FromStr for AckMode {
    type Err = ParseAckModeError;

    /// Accepts the header values plus `individual` (mq-client's spelling of
    /// `client-individual`), case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AckMode::Auto),
            "client" => Ok(AckMode::Client),
            "client-individual" | "individual" => Ok(AckMode::ClientIndividual),
            _ => Err(ParseAckModeError(s.to_owned())),
        }
    }
}

/// Optional parts of a `SUBSCRIBE`.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Sent as `prefetch` (and as `activemq.prefetchSize`, which ActiveMQ
    /// honours): how many unacknowledged messages the broker may push. `None`
    /// leaves the broker default. Also sizes the subscription's local buffer
    /// (see [`Subscription`](crate::Subscription)).
    pub prefetch: Option<u32>,
    /// `browser: true`: a non-destructive snapshot of a queue that ends with a
    /// `MESSAGE` carrying `browser: end` (see [`Message::is_browser_end`](crate::Message::is_browser_end)).
    pub browser: bool,
    /// Extra `SUBSCRIBE` headers (e.g. `selector`). They come after the
    /// client's own headers, so they cannot override `id`, `destination` or
    /// `ack` (STOMP: the first occurrence of a header wins).
    pub headers: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_passcode() {
        let opts = ConnectOptions {
            login: Some("admin".into()),
            passcode: Some("s3cr3t-passc0de".into()),
            ..Default::default()
        };
        let printed = format!("{opts:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(printed.contains("admin"), "{printed}");
        let none = format!("{:?}", ConnectOptions::default());
        assert!(none.contains("passcode: None"), "{none}");
    }

    #[test]
    fn defaults() {
        let o = ConnectOptions::default();
        assert_eq!(
            o.heart_beat,
            (Duration::from_secs(10), Duration::from_secs(10))
        );
        assert_eq!(o.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn ack_mode_strings() {
        for m in [AckMode::Auto, AckMode::Client, AckMode::ClientIndividual] {
            assert_eq!(m.as_str().parse::<AckMode>().unwrap(), m);
            assert_eq!(m.to_string(), m.as_str());
        }
        assert_eq!(
            "individual".parse::<AckMode>().unwrap(),
            AckMode::ClientIndividual
        );
        assert_eq!("AUTO".parse::<AckMode>().unwrap(), AckMode::Auto);
        assert!("sometimes"
            .parse::<AckMode>()
            .unwrap_err()
            .to_string()
            .contains("sometimes"));
    }
}

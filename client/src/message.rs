//! Messages going out ([`Outgoing`]) and coming in ([`Message`]).
//!
//! This module owns the mapping between these structs and STOMP headers on the
//! receiving side ([`Message::from_frame`]); the sending side is encoded by the
//! connection's state machine straight into its write buffer.

use bytes::Bytes;
use fabricmq_stomp::Frame;

/// A message to send.
///
/// Only `destination` is required; everything else is optional. Build with a
/// struct literal and `..Default::default()`, or with [`Outgoing::new`].
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// STOMP destination name, e.g. `/queue/x` (see
    /// [`Destination::stomp_name`](crate::Destination::stomp_name)).
    pub destination: String,
    /// The message body (cloning a `Bytes` is cheap: no copy).
    pub body: Bytes,
    /// Extra application headers. They are written after the client's own
    /// headers, so they cannot override them; a `content-length` here is
    /// ignored (it is always computed from the body).
    pub headers: Vec<(String, String)>,
    /// `persistent: true|false`; `None` leaves the broker default.
    pub persistent: Option<bool>,
    /// `priority` (0-9 in JMS terms).
    pub priority: Option<u8>,
    /// `expires`: absolute expiry time, ms since the Unix epoch.
    pub expires: Option<u64>,
    /// Sent as `producer-id` and `producer-seq`: lets the broker drop
    /// duplicates when a send is retried (e.g. after failover).
    pub producer: Option<(String, u64)>,
    /// `content-type` header.
    pub content_type: Option<String>,
}

impl Outgoing {
    /// A message for `destination` (a STOMP name like `/queue/x`) with `body`
    /// and nothing else set.
    pub fn new(destination: impl Into<String>, body: impl Into<Bytes>) -> Outgoing {
        Outgoing {
            destination: destination.into(),
            body: body.into(),
            ..Default::default()
        }
    }
}

/// A message delivered to a [`Subscription`](crate::Subscription).
#[derive(Debug, Clone)]
pub struct Message {
    /// `destination` header.
    pub destination: String,
    /// `message-id` header.
    pub message_id: String,
    /// `subscription` header: the id of the subscription it was delivered to.
    pub subscription: String,
    /// Value of the MESSAGE `ack` header (STOMP 1.2; `None` in auto mode and
    /// with 1.0/1.1 brokers, which acknowledge by `message-id`).
    pub ack_id: Option<String>,
    /// True when the `redelivered: true` header is present: the broker
    /// delivered this message before (to this or another consumer) without it
    /// being acknowledged, e.g. because a connection failed. With a failover
    /// URL, redeliveries of messages this client already acknowledged are
    /// dropped by the client; the ones that reach the application were never
    /// acknowledged by it.
    pub redelivered: bool,
    /// `delivery-count` header, 1 if absent or unparsable.
    pub delivery_count: u32,
    /// All headers as received, in order (including the ones above).
    pub headers: Vec<(String, String)>,
    /// The message body.
    pub body: Bytes,
    /// Which connection of a failover session delivered it (0 for the first).
    /// An ACK for a message of an earlier connection is not sent: the broker
    /// redelivers the message on the new connection anyway.
    pub(crate) generation: u64,
    /// The subscription's de-duplication window (failover sessions,
    /// acknowledging subscriptions): acknowledging records the message there.
    pub(crate) seen: Option<crate::state::SharedSeen>,
}

impl Message {
    /// The first value of header `name` (STOMP: the first occurrence wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `(producer-id, producer-seq)` when both headers are present and the
    /// sequence is a number.
    pub fn producer(&self) -> Option<(String, u64)> {
        let id = self.header("producer-id")?;
        let seq = self.header("producer-seq")?.trim().parse().ok()?;
        Some((id.to_owned(), seq))
    }

    /// True for the `browser: end` marker that closes a browsing subscription
    /// (it carries no queue message).
    pub fn is_browser_end(&self) -> bool {
        self.header("browser") == Some("end")
    }

    /// Builds a message from a `MESSAGE` frame, taking over its headers and
    /// body without copying them. Missing headers become empty strings
    /// (defaults), never errors: routing only needs `subscription`.
    pub fn from_frame(frame: Frame) -> Message {
        let mut destination = None;
        let mut message_id = None;
        let mut subscription = None;
        let mut ack_id = None;
        let mut redelivered = None;
        let mut delivery_count = None;
        for (name, value) in &frame.headers {
            // First occurrence wins: only fill fields still unset.
            let slot = match name.as_str() {
                "destination" => &mut destination,
                "message-id" => &mut message_id,
                "subscription" => &mut subscription,
                "ack" => &mut ack_id,
                "redelivered" => &mut redelivered,
                "delivery-count" => &mut delivery_count,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.as_str());
            }
        }
        Message {
            destination: destination.unwrap_or_default().to_owned(),
            message_id: message_id.unwrap_or_default().to_owned(),
            subscription: subscription.unwrap_or_default().to_owned(),
            ack_id: ack_id.map(str::to_owned),
            redelivered: redelivered.is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            delivery_count: delivery_count
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(1),
            headers: frame.headers,
            body: frame.body,
            generation: 0,
            seen: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabricmq_stomp::Command;

    #[test]
    fn from_frame_extracts_fields() {
        let f = Frame::new(Command::Message)
            .header("destination", "/queue/a")
            .header("message-id", "m-1")
            .header("subscription", "sub-1")
            .header("ack", "a-1")
            .header("redelivered", "true")
            .header("delivery-count", "3")
            .header("producer-id", "p")
            .header("producer-seq", "42")
            .header("destination", "/queue/ignored")
            .with_body(Bytes::from_static(b"hi"));
        let m = Message::from_frame(f);
        assert_eq!(m.destination, "/queue/a");
        assert_eq!(m.message_id, "m-1");
        assert_eq!(m.subscription, "sub-1");
        assert_eq!(m.ack_id.as_deref(), Some("a-1"));
        assert!(m.redelivered);
        assert_eq!(m.delivery_count, 3);
        assert_eq!(m.producer(), Some(("p".to_owned(), 42)));
        assert_eq!(m.header("destination"), Some("/queue/a"));
        assert_eq!(m.headers.len(), 9);
        assert_eq!(&m.body[..], b"hi");
        assert!(!m.is_browser_end());
    }

    #[test]
    fn from_frame_defaults() {
        let m = Message::from_frame(Frame::new(Command::Message).header("browser", "end"));
        assert_eq!(m.message_id, "");
        assert_eq!(m.ack_id, None);
        assert!(!m.redelivered);
        assert_eq!(m.delivery_count, 1);
        assert_eq!(m.producer(), None);
        assert!(m.is_browser_end());
    }
}

//! Broker URLs and destination names.
//!
//! This module owns the two small "names" a client deals with before any byte
//! goes on the wire:
//!
//! * [`BrokerUrl`]: where the broker is (`tcp://host:port`, `stomp://host:port`).
//!   A later release adds `failover:(...)` and `discovery:fabric:<group>` forms as
//!   new variants; callers that only pass the URL through keep working.
//! * [`Destination`]: what to send to / subscribe on, written either the
//!   mq-client way (`queue://x`, `topic://x`) or the STOMP way (`/queue/x`,
//!   `/topic/x`).
//!
//! Both parse with [`FromStr`] and print with [`Display`](fmt::Display) so that
//! parsing the printed form gives the same value back. Every parse failure is a
//! [`UrlError`] that names the part that is wrong (scheme, host, port, ...).

use std::fmt;
use std::str::FromStr;

/// The port STOMP brokers listen on by convention; used when a URL has none.
pub const DEFAULT_STOMP_PORT: u16 = 61613;

/// A broker URL. For now: `tcp://host:port` and `stomp://host:port` (the same
/// thing: STOMP over TCP).
///
/// Parsing rules:
/// * the scheme is case-insensitive (`TCP://` is accepted);
/// * IPv6 literals are written in brackets: `tcp://[::1]:61613`;
/// * the port may be omitted and defaults to [`DEFAULT_STOMP_PORT`];
/// * user info, paths and query strings are rejected (they would be silently
///   ignored otherwise).
///
/// `Display` always prints the canonical `tcp://host:port` form, which parses
/// back to an equal value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// STOMP over a plain TCP connection.
    Tcp {
        /// Host name or IP address (IPv6 without the brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl BrokerUrl {
    /// The host part of the URL (what the `host` header defaults to).
    pub fn host(&self) -> &str {
        match self {
            BrokerUrl::Tcp { host, .. } => host,
        }
    }

    /// The TCP port of the URL.
    pub fn port(&self) -> u16 {
        match self {
            BrokerUrl::Tcp { port, .. } => *port,
        }
    }

    /// `host:port` as used in log lines and error messages (IPv6 in brackets).
    pub fn authority(&self) -> String {
        match self {
            BrokerUrl::Tcp { host, port } => format_authority(host, *port),
        }
    }
}

fn format_authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why a broker URL or a destination name could not be parsed. Each variant
/// names the offending part.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum UrlError {
    /// The input was empty (or only white space).
    #[error("empty broker URL")]
    Empty,
    /// There is no `scheme://` prefix.
    #[error("missing scheme in broker URL '{url}': expected tcp://host:port or stomp://host:port")]
    MissingScheme {
        /// The whole input.
        url: String,
    },
    /// The scheme is not one this client speaks.
    #[error("unsupported scheme '{scheme}' in broker URL: expected tcp or stomp")]
    UnsupportedScheme {
        /// The scheme as written.
        scheme: String,
    },
    /// Nothing between `://` and the port.
    #[error("missing host in broker URL '{url}'")]
    MissingHost {
        /// The whole input.
        url: String,
    },
    /// The host part is malformed.
    #[error("invalid host '{host}' in broker URL: {reason}")]
    InvalidHost {
        /// The host as written.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The port is not a number in 1..=65535.
    #[error("invalid port '{port}' in broker URL: {reason}")]
    InvalidPort {
        /// The port as written.
        port: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path or query string follows the port.
    #[error(
        "unexpected '{rest}' after host:port in broker URL (paths and options are not supported)"
    )]
    TrailingInput {
        /// Everything after `host:port`.
        rest: String,
    },
    /// A destination name could not be parsed.
    #[error("invalid destination '{input}': {reason}")]
    InvalidDestination {
        /// The destination as written.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        if input.is_empty() {
            return Err(UrlError::Empty);
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(UrlError::MissingScheme {
                url: input.to_owned(),
            });
        };
        if scheme.is_empty() {
            return Err(UrlError::MissingScheme {
                url: input.to_owned(),
            });
        }
        if !(scheme.eq_ignore_ascii_case("tcp") || scheme.eq_ignore_ascii_case("stomp")) {
            return Err(UrlError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            });
        }
        // Split the authority from any trailing path / query / fragment.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, trailing) = rest.split_at(end);
        if !trailing.is_empty() && trailing != "/" {
            return Err(UrlError::TrailingInput {
                rest: trailing.to_owned(),
            });
        }
        if authority.contains('@') {
            return Err(UrlError::InvalidHost {
                host: authority.to_owned(),
                reason: "user info is not supported in broker URLs (use the login options)",
            });
        }
        let (host, port) = if let Some(after_bracket) = authority.strip_prefix('[') {
            // IPv6 literal: [addr] or [addr]:port
            let Some((addr, after)) = after_bracket.split_once(']') else {
                return Err(UrlError::InvalidHost {
                    host: authority.to_owned(),
                    reason: "unterminated '[' in IPv6 address",
                });
            };
            if addr.is_empty() {
                return Err(UrlError::MissingHost {
                    url: input.to_owned(),
                });
            }
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(UrlError::InvalidHost {
                    host: addr.to_owned(),
                    reason: "not a valid IPv6 address",
                });
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => {
                        return Err(UrlError::InvalidHost {
                            host: authority.to_owned(),
                            reason: "expected ':' after ']'",
                        })
                    }
                },
            };
            (addr, port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost {
                url: input.to_owned(),
            });
        }
        validate_host(host)?;
        let port = match port {
            None => DEFAULT_STOMP_PORT,
            Some(p) => parse_port(p)?,
        };
        Ok(BrokerUrl::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

fn validate_host(host: &str) -> Result<(), UrlError> {
    if host.contains(':') {
        // Only bracketed IPv6 reaches here with ':' stripped of brackets, and it
        // was validated already; anything else is e.g. "a:b:c".
        if host.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(());
        }
        return Err(UrlError::InvalidHost {
            host: host.to_owned(),
            reason: "too many ':' (write IPv6 addresses in brackets)",
        });
    }
    let ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        return Err(UrlError::InvalidHost {
            host: host.to_owned(),
            reason: "only letters, digits, '-', '.' and '_' are allowed",
        });
    }
    Ok(())
}

fn parse_port(p: &str) -> Result<u16, UrlError> {
    if p.is_empty() {
        return Err(UrlError::InvalidPort {
            port: String::new(),
            reason: "empty port",
        });
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlError::InvalidPort {
            port: p.to_owned(),
            reason: "not a number",
        });
    }
    match p.parse::<u16>() {
        Ok(0) => Err(UrlError::InvalidPort {
            port: p.to_owned(),
            reason: "port 0 is not allowed",
        }),
        Ok(n) => Ok(n),
        Err(_) => Err(UrlError::InvalidPort {
            port: p.to_owned(),
            reason: "out of range 1-65535",
        }),
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Tcp { host, port } => {
                if host.contains(':') {
                    write!(f, "tcp://[{host}]:{port}")
                } else {
                    write!(f, "tcp://{host}:{port}")
                }
            }
        }
    }
}

/// A message destination: a queue (each message to one consumer) or a topic
/// (each message to every subscriber).
///
/// Parses `queue://x` / `topic://x` (mq-client habit) and STOMP `/queue/x` /
/// `/topic/x`. `Display` prints the `queue://x` form; [`Destination::stomp_name`]
/// gives the name to put in a `destination` header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A point-to-point queue, by name (without prefix).
    Queue(String),
    /// A publish/subscribe topic, by name (without prefix).
    Topic(String),
}

impl Destination {
    /// The STOMP destination header value: `/queue/x` or `/topic/x`.
    pub fn stomp_name(&self) -> String {
        match self {
            Destination::Queue(n) => format!("/queue/{n}"),
            Destination::Topic(n) => format!("/topic/{n}"),
        }
    }

    /// The name without its kind prefix.
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Topic(n) => n,
        }
    }

    /// True for [`Destination::Topic`].
    pub fn is_topic(&self) -> bool {
        matches!(self, Destination::Topic(_))
    }
}

impl FromStr for Destination {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        let invalid = |reason| UrlError::InvalidDestination {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(invalid("empty destination"));
        }
        let (is_topic, name) = if let Some(n) = strip_prefix_ci(input, "queue://") {
            (false, n)
        } else if let Some(n) = strip_prefix_ci(input, "topic://") {
            (true, n)
        } else if let Some(n) = input.strip_prefix("/queue/") {
            (false, n)
        } else if let Some(n) = input.strip_prefix("/topic/") {
            (true, n)
        } else if input.contains("://") {
            return Err(invalid("unknown kind: expected queue:// or topic://"));
        } else {
            return Err(invalid(
                "missing kind: expected queue://NAME, topic://NAME, /queue/NAME or /topic/NAME",
            ));
        };
        if name.is_empty() {
            return Err(invalid("empty name"));
        }
        if name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(invalid("name contains white space or control characters"));
        }
        let name = name.to_owned();
        Ok(if is_topic {
            Destination::Topic(name)
        } else {
            Destination::Queue(name)
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Queue(n) => write!(f, "queue://{n}"),
            Destination::Topic(n) => write!(f, "topic://{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> BrokerUrl {
        BrokerUrl::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn parses_valid_urls() {
        let cases = [
            ("tcp://localhost:61613", tcp("localhost", 61613)),
            ("stomp://localhost:61613", tcp("localhost", 61613)),
            (
                "TCP://Broker-1.example.com:1",
                tcp("Broker-1.example.com", 1),
            ),
            ("tcp://127.0.0.1:65535", tcp("127.0.0.1", 65535)),
            ("tcp://[::1]:61613", tcp("::1", 61613)),
            ("tcp://[fe80::1]", tcp("fe80::1", DEFAULT_STOMP_PORT)),
            ("tcp://localhost", tcp("localhost", DEFAULT_STOMP_PORT)),
            ("  tcp://host_1:5/  ", tcp("host_1", 5)),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<BrokerUrl>(), Ok(want), "{input}");
        }
    }

    #[test]
    fn accessors() {
        let u: BrokerUrl = "tcp://[::1]:7".parse().unwrap();
        assert_eq!(u.host(), "::1");
        assert_eq!(u.port(), 7);
        assert_eq!(u.authority(), "[::1]:7");
    }

    #[test]
    fn every_error_names_the_bad_part() {
        let cases: &[(&str, UrlError, &str)] = &[
            ("", UrlError::Empty, "empty"),
            ("   ", UrlError::Empty, "empty"),
            (
                "localhost:61613",
                UrlError::MissingScheme {
                    url: "localhost:61613".into(),
                },
                "scheme",
            ),
            (
                "://h:1",
                UrlError::MissingScheme {
                    url: "://h:1".into(),
                },
                "scheme",
            ),
            (
                "http://h:1",
                UrlError::UnsupportedScheme {
                    scheme: "http".into(),
                },
                "'http'",
            ),
            (
                "failover://h:1",
                UrlError::UnsupportedScheme {
                    scheme: "failover".into(),
                },
                "'failover'",
            ),
            (
                "tcp://:61613",
                UrlError::MissingHost {
                    url: "tcp://:61613".into(),
                },
                "host",
            ),
            (
                "tcp://",
                UrlError::MissingHost {
                    url: "tcp://".into(),
                },
                "host",
            ),
            (
                "tcp://[]:1",
                UrlError::MissingHost {
                    url: "tcp://[]:1".into(),
                },
                "host",
            ),
            (
                "tcp://bad host:1",
                UrlError::InvalidHost {
                    host: "bad host".into(),
                    reason: "only letters, digits, '-', '.' and '_' are allowed",
                },
                "host 'bad host'",
            ),
            (
                "tcp://user@h:1",
                UrlError::InvalidHost {
                    host: "user@h:1".into(),
                    reason: "user info is not supported in broker URLs (use the login options)",
                },
                "host",
            ),
            (
                "tcp://[::1:1",
                UrlError::InvalidHost {
                    host: "[::1:1".into(),
                    reason: "unterminated '[' in IPv6 address",
                },
                "host",
            ),
            (
                "tcp://[zz]:1",
                UrlError::InvalidHost {
                    host: "zz".into(),
                    reason: "not a valid IPv6 address",
                },
                "host 'zz'",
            ),
            (
                "tcp://[::1]x",
                UrlError::InvalidHost {
                    host: "[::1]x".into(),
                    reason: "expected ':' after ']'",
                },
                "host",
            ),
            (
                "tcp://h:",
                UrlError::InvalidPort {
                    port: "".into(),
                    reason: "empty port",
                },
                "port",
            ),
            (
                "tcp://h:abc",
                UrlError::InvalidPort {
                    port: "abc".into(),
                    reason: "not a number",
                },
                "port 'abc'",
            ),
            (
                "tcp://h:-1",
                UrlError::InvalidPort {
                    port: "-1".into(),
                    reason: "not a number",
                },
                "port '-1'",
            ),
            (
                "tcp://h:65536",
                UrlError::InvalidPort {
                    port: "65536".into(),
                    reason: "out of range 1-65535",
                },
                "port '65536'",
            ),
            (
                "tcp://h:0",
                UrlError::InvalidPort {
                    port: "0".into(),
                    reason: "port 0 is not allowed",
                },
                "port '0'",
            ),
            (
                "tcp://h:1:2",
                UrlError::InvalidPort {
                    port: "1:2".into(),
                    reason: "not a number",
                },
                "port '1:2'",
            ),
            (
                "tcp://h:1/path",
                UrlError::TrailingInput {
                    rest: "/path".into(),
                },
                "'/path'",
            ),
            (
                "tcp://h:1?wireFormat.x=1",
                UrlError::TrailingInput {
                    rest: "?wireFormat.x=1".into(),
                },
                "'?wireFormat.x=1'",
            ),
        ];
        for (input, want, in_message) in cases {
            let err = input.parse::<BrokerUrl>().expect_err(input);
            assert_eq!(&err, want, "{input}");
            let msg = err.to_string();
            assert!(
                msg.contains(in_message),
                "{input}: message {msg:?} lacks {in_message:?}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "tcp://localhost:61613",
            "stomp://10.0.0.1:1234",
            "tcp://[::1]:61613",
            "tcp://[2001:db8::7]",
            "TCP://x",
        ] {
            let url: BrokerUrl = input.parse().unwrap();
            let printed = url.to_string();
            assert!(printed.starts_with("tcp://"), "{printed}");
            assert_eq!(
                printed.parse::<BrokerUrl>().unwrap(),
                url,
                "{input} -> {printed}"
            );
        }
        assert_eq!(tcp("::1", 5).to_string(), "tcp://[::1]:5");
        assert_eq!(tcp("h", 5).to_string(), "tcp://h:5");
    }

    #[test]
    fn parses_destinations() {
        let q = |n: &str| Destination::Queue(n.into());
        let t = |n: &str| Destination::Topic(n.into());
        let cases = [
            ("queue://TEST", q("TEST")),
            ("topic://prices.eu", t("prices.eu")),
            ("/queue/a.b", q("a.b")),
            ("/topic/x", t("x")),
            ("QUEUE://Mixed", q("Mixed")),
            ("queue://a/b", q("a/b")),
        ];
        for (input, want) in cases {
            let d: Destination = input.parse().unwrap();
            assert_eq!(d, want, "{input}");
        }
        assert_eq!(q("x").stomp_name(), "/queue/x");
        assert_eq!(t("x").stomp_name(), "/topic/x");
        assert_eq!(q("x").name(), "x");
        assert!(t("x").is_topic());
        assert!(!q("x").is_topic());
    }

    #[test]
    fn destination_display_round_trips() {
        for input in ["queue://TEST", "topic://t.1", "/queue/q", "/topic/t"] {
            let d: Destination = input.parse().unwrap();
            let printed = d.to_string();
            assert_eq!(printed.parse::<Destination>().unwrap(), d);
            // The STOMP name also parses back to the same destination.
            assert_eq!(d.stomp_name().parse::<Destination>().unwrap(), d);
        }
        assert_eq!(Destination::Queue("x".into()).to_string(), "queue://x");
        assert_eq!(Destination::Topic("x".into()).to_string(), "topic://x");
    }

    #[test]
    fn destination_errors() {
        for (input, reason) in [
            ("", "empty destination"),
            ("TEST", "missing kind"),
            ("/temp-queue/x", "missing kind"),
            ("mailbox://x", "unknown kind"),
            ("queue://", "empty name"),
            ("/topic/", "empty name"),
            ("queue://a b", "white space"),
        ] {
            let err = input.parse::<Destination>().expect_err(input);
            match &err {
                UrlError::InvalidDestination {
                    input: got,
                    reason: r,
                } => {
                    assert_eq!(got, input.trim());
                    assert!(r.contains(reason), "{input}: {r}");
                }
                other => panic!("{input}: unexpected {other:?}"),
            }
            assert!(err.to_string().contains("destination"), "{err}");
        }
    }
}

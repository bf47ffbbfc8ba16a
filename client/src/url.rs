//! Broker URLs and destination names.
//!
//! This module owns the two small "names" a client deals with before any byte
//! goes on the wire:
//!
//! * [`BrokerUrl`]: where the broker is. Three forms:
//!   * `tcp://host:port` / `stomp://host:port`: one broker;
//!   * `ssl://host:port` / `stomp+ssl://host:port`: one broker over TLS (trust settings in
//!     [`ConnectOptions::tls`](crate::ConnectOptions::tls));
//!   * `failover:(tcp://a:61613,tcp://b:61613)?options`: a list of brokers the
//!     client reconnects among (ActiveMQ's failover transport);
//!   * `discovery:fabric:<group>?zk=host:port&options`: the current master of a
//!     fabric group, found in ZooKeeper (see [`crate::discovery`]).
//!
//!   The last two carry [`FailoverOptions`] (ActiveMQ's option names and
//!   defaults).
//! * [`Destination`]: what to send to / subscribe on, written either the
//!   mq-client way (`queue://x`, `topic://x`) or the STOMP way (`/queue/x`,
//!   `/topic/x`).
//!
//! Both parse with [`FromStr`] and print with [`Display`](fmt::Display) so that
//! parsing the printed form gives the same value back. Every parse failure is a
//! [`UrlError`] that names the part that is wrong (scheme, host, port, option,
//! group, ...).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The port STOMP brokers listen on by convention; used when a URL has none.
pub const DEFAULT_STOMP_PORT: u16 = 61613;

/// A broker URL: one broker, a failover list, or a fabric group to discover.
///
/// Parsing rules for `tcp://host:port` and `stomp://host:port` (the same
/// thing: STOMP over TCP):
/// * the scheme is case-insensitive (`TCP://` is accepted);
/// * `ssl://host:port` and `stomp+ssl://host:port` are the same over TLS
///   ([`BrokerUrl::Tcp`] with `tls` set; printed as `ssl://`);
/// * IPv6 literals are written in brackets: `tcp://[::1]:61613`;
/// * the port may be omitted and defaults to [`DEFAULT_STOMP_PORT`];
/// * user info, paths and query strings are rejected (they would be silently
///   ignored otherwise).
///
/// `failover:(url,url,...)?options` lists `tcp://`/`stomp://`/`ssl://` URLs (the
/// parentheses may be left out when there are no options, `failover:` may be
/// written `failover://`); `discovery:fabric:<group>?zk=...&zkRoot=...&options`
/// (also `discovery:(fabric:<group>)?...`, fabric8's spelling) names a fabric
/// group. Options are `name=value` pairs joined by `&`, named as ActiveMQ names
/// them (matched without regard to case); see [`FailoverOptions`]. Values may
/// be percent-encoded (`%2C`).
///
/// `Display` prints a canonical form that parses back to an equal value:
/// `tcp://host:port`, `failover:(tcp://a:1,tcp://b:2)?...` and
/// `discovery:fabric:<group>?...`, listing only options that differ from their
/// defaults, in a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerUrl {
    /// STOMP over a TCP connection (`tcp://host:port` or `stomp://host:port`), or over TLS
    /// (`ssl://host:port` or `stomp+ssl://host:port`).
    Tcp {
        /// Host name or IP address (IPv6 without the brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// STOMP over TLS.
        tls: bool,
    },
    /// `failover:(url,url,...)?options`: reconnect among a fixed list of brokers.
    Failover {
        /// The brokers, in the order written; always [`BrokerUrl::Tcp`] (the parser
        /// rejects nested failover or discovery URLs) and never empty when parsed.
        urls: Vec<BrokerUrl>,
        /// How to reconnect.
        options: FailoverOptions,
    },
    /// `discovery:fabric:<group>?zk=host:port,host:port&zkRoot=/fabric&options`:
    /// connect to whichever broker is the group's master, as published in
    /// ZooKeeper, and follow it when it changes.
    Discovery {
        /// The fabric group (cluster) name.
        group: String,
        /// The ZooKeeper connect string (`host:port[,host:port...][/chroot]`);
        /// `None` when the URL has no `zk` option: the caller then supplies one
        /// from `--zk` or `FABRIC_ZK` with [`BrokerUrl::with_default_zk`].
        zk: Option<String>,
        /// The registry root in ZooKeeper (`zkRoot`); `None` means the registry's
        /// default (`/fabric`).
        zk_root: Option<String>,
        /// How to reconnect.
        options: FailoverOptions,
    },
}

/// How a failover (or discovery) connection reconnects: ActiveMQ's failover
/// transport options, with ActiveMQ's names (as written in URLs) and defaults.
///
/// | URL option | field | default |
/// |---|---|---|
/// | `initialReconnectDelay` (ms) | [`initial_reconnect_delay`](Self::initial_reconnect_delay) | 10 |
/// | `maxReconnectDelay` (ms) | [`max_reconnect_delay`](Self::max_reconnect_delay) | 30000 |
/// | `useExponentialBackOff` | [`use_exponential_back_off`](Self::use_exponential_back_off) | true |
/// | `backOffMultiplier` | [`back_off_multiplier`](Self::back_off_multiplier) | 2.0 |
/// | `maxReconnectAttempts` | [`max_reconnect_attempts`](Self::max_reconnect_attempts) | -1 (forever) |
/// | `startupMaxReconnectAttempts` | [`startup_max_reconnect_attempts`](Self::startup_max_reconnect_attempts) | -1 (forever) |
/// | `randomize` | [`randomize`](Self::randomize) | true |
/// | `timeout` (ms) | [`timeout`](Self::timeout) | -1 (wait forever) |
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverOptions {
    /// Delay before the first reconnect attempt (`initialReconnectDelay`, ms).
    pub initial_reconnect_delay: Duration,
    /// Upper bound of the delay between attempts (`maxReconnectDelay`, ms).
    pub max_reconnect_delay: Duration,
    /// Whether the delay grows by [`back_off_multiplier`](Self::back_off_multiplier)
    /// after each failed attempt (`useExponentialBackOff`).
    pub use_exponential_back_off: bool,
    /// Growth factor of the delay (`backOffMultiplier`, at least 1).
    pub back_off_multiplier: f64,
    /// Reconnect attempts after a connection was lost before giving up
    /// (`maxReconnectAttempts`): `None` (-1) retries forever, `Some(0)` does not
    /// reconnect at all.
    pub max_reconnect_attempts: Option<u32>,
    /// Connect attempts when the connection is first made, before any
    /// connection succeeded (`startupMaxReconnectAttempts`): `None` (-1) retries
    /// forever.
    pub startup_max_reconnect_attempts: Option<u32>,
    /// Whether to try the brokers of a `failover:(...)` list in random order
    /// (`randomize`). A discovery URL has one master, so it does not matter there.
    pub randomize: bool,
    /// How long a request waits for a connection while none is up (`timeout`,
    /// ms): `None` (-1) waits forever.
    pub timeout: Option<Duration>,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            initial_reconnect_delay: Duration::from_millis(10),
            max_reconnect_delay: Duration::from_millis(30_000),
            use_exponential_back_off: true,
            back_off_multiplier: 2.0,
            max_reconnect_attempts: None,
            startup_max_reconnect_attempts: None,
            randomize: true,
            timeout: None,
        }
    }
}

impl FailoverOptions {
    /// The delay before reconnect attempt `attempt` (0 for the first):
    /// [`initial_reconnect_delay`](Self::initial_reconnect_delay), multiplied by
    /// [`back_off_multiplier`](Self::back_off_multiplier) for every earlier
    /// attempt when [`use_exponential_back_off`](Self::use_exponential_back_off)
    /// is set, never more than [`max_reconnect_delay`](Self::max_reconnect_delay).
    pub fn reconnect_delay(&self, attempt: u32) -> Duration {
        let initial = self.initial_reconnect_delay.as_secs_f64();
        let max = self.max_reconnect_delay.as_secs_f64();
        let delay = if self.use_exponential_back_off {
            // Exponents past 1000 overflow to infinity anyway; min() then caps it.
            let exponent = i32::try_from(attempt.min(1000)).unwrap_or(1000);
            initial * self.back_off_multiplier.max(1.0).powi(exponent)
        } else {
            initial
        };
        let delay = delay.min(max);
        if delay.is_finite() && delay >= 0.0 {
            Duration::from_secs_f64(delay)
        } else {
            self.max_reconnect_delay
        }
    }

    /// Options that differ from the defaults, as `(name, value)` URL pairs in
    /// the fixed Display order.
    fn non_default_pairs(&self) -> Vec<(&'static str, String)> {
        let d = FailoverOptions::default();
        let ms = |v: Duration| v.as_millis().to_string();
        let count = |v: Option<u32>| v.map_or_else(|| "-1".to_owned(), |n| n.to_string());
        let mut out = Vec::new();
        if self.initial_reconnect_delay != d.initial_reconnect_delay {
            out.push((OPT_INITIAL_DELAY, ms(self.initial_reconnect_delay)));
        }
        if self.max_reconnect_delay != d.max_reconnect_delay {
            out.push((OPT_MAX_DELAY, ms(self.max_reconnect_delay)));
        }
        if self.use_exponential_back_off != d.use_exponential_back_off {
            out.push((OPT_EXPONENTIAL, self.use_exponential_back_off.to_string()));
        }
        if self.back_off_multiplier != d.back_off_multiplier {
            out.push((OPT_MULTIPLIER, self.back_off_multiplier.to_string()));
        }
        if self.max_reconnect_attempts != d.max_reconnect_attempts {
            out.push((OPT_MAX_ATTEMPTS, count(self.max_reconnect_attempts)));
        }
        if self.startup_max_reconnect_attempts != d.startup_max_reconnect_attempts {
            out.push((
                OPT_STARTUP_ATTEMPTS,
                count(self.startup_max_reconnect_attempts),
            ));
        }
        if self.randomize != d.randomize {
            out.push((OPT_RANDOMIZE, self.randomize.to_string()));
        }
        if self.timeout != d.timeout {
            out.push((
                OPT_TIMEOUT,
                self.timeout.map_or_else(|| "-1".to_owned(), ms),
            ));
        }
        out
    }
}

const OPT_INITIAL_DELAY: &str = "initialReconnectDelay";
const OPT_MAX_DELAY: &str = "maxReconnectDelay";
const OPT_EXPONENTIAL: &str = "useExponentialBackOff";
const OPT_MULTIPLIER: &str = "backOffMultiplier";
const OPT_MAX_ATTEMPTS: &str = "maxReconnectAttempts";
const OPT_STARTUP_ATTEMPTS: &str = "startupMaxReconnectAttempts";
const OPT_RANDOMIZE: &str = "randomize";
const OPT_TIMEOUT: &str = "timeout";
const OPT_ZK: &str = "zk";
const OPT_ZK_ROOT: &str = "zkRoot";

/// Every option name a URL may carry, canonical spelling.
const ALL_OPTIONS: &[&str] = &[
    OPT_INITIAL_DELAY,
    OPT_MAX_DELAY,
    OPT_EXPONENTIAL,
    OPT_MULTIPLIER,
    OPT_MAX_ATTEMPTS,
    OPT_STARTUP_ATTEMPTS,
    OPT_RANDOMIZE,
    OPT_TIMEOUT,
    OPT_ZK,
    OPT_ZK_ROOT,
];

impl BrokerUrl {
    /// The host part of the URL (what the `host` header defaults to). For a
    /// failover list, the first broker's host; for a discovery URL the empty
    /// string (the host is known only once the master is discovered).
    pub fn host(&self) -> &str {
        match self {
            BrokerUrl::Tcp { host, .. } => host,
            BrokerUrl::Failover { urls, .. } => urls.first().map_or("", BrokerUrl::host),
            BrokerUrl::Discovery { .. } => "",
        }
    }

    /// The TCP port of the URL. For a failover list, the first broker's port;
    /// for a discovery URL 0 (unknown until the master is discovered).
    pub fn port(&self) -> u16 {
        match self {
            BrokerUrl::Tcp { port, .. } => *port,
            BrokerUrl::Failover { urls, .. } => urls.first().map_or(0, BrokerUrl::port),
            BrokerUrl::Discovery { .. } => 0,
        }
    }

    /// `host:port` as used in log lines and error messages (IPv6 in brackets);
    /// `host:port,host:port` for a failover list and `fabric:<group>` for a
    /// discovery URL.
    pub fn authority(&self) -> String {
        match self {
            BrokerUrl::Tcp { host, port, .. } => format_authority(host, *port),
            BrokerUrl::Failover { urls, .. } => urls
                .iter()
                .map(BrokerUrl::authority)
                .collect::<Vec<_>>()
                .join(","),
            BrokerUrl::Discovery { group, .. } => format!("fabric:{group}"),
        }
    }

    /// True for URLs whose connection reconnects by itself:
    /// [`BrokerUrl::Failover`] and [`BrokerUrl::Discovery`].
    pub fn is_failover(&self) -> bool {
        !matches!(self, BrokerUrl::Tcp { .. })
    }

    /// Fills in the ZooKeeper connect string of a discovery URL that has none
    /// (from `--zk` or the `FABRIC_ZK` environment variable); a `zk` option
    /// written in the URL wins. Other URLs are returned unchanged.
    pub fn with_default_zk(self, zk: Option<&str>) -> Self {
        match self {
            BrokerUrl::Discovery {
                group,
                zk: None,
                zk_root,
                options,
            } => BrokerUrl::Discovery {
                group,
                zk: zk.map(str::to_owned),
                zk_root,
                options,
            },
            other => other,
        }
    }

    /// The reconnect options of a failover or discovery URL; `None` for a
    /// plain `tcp://` URL.
    pub fn options(&self) -> Option<&FailoverOptions> {
        match self {
            BrokerUrl::Tcp { .. } => None,
            BrokerUrl::Failover { options, .. } | BrokerUrl::Discovery { options, .. } => {
                Some(options)
            }
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
    #[error("missing scheme in broker URL '{url}': expected tcp://host:port, stomp://host:port, ssl://host:port, failover:(...) or discovery:fabric:<group>")]
    MissingScheme {
        /// The whole input.
        url: String,
    },
    /// The scheme is not one this client speaks.
    #[error(
        "unsupported scheme '{scheme}' in broker URL: expected tcp, stomp, ssl, stomp+ssl, failover or discovery"
    )]
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
    /// A `(` without its `)` (or the reverse, or nested parentheses) in a
    /// failover or discovery URL.
    #[error("unbalanced parentheses in broker URL '{url}'")]
    UnbalancedParentheses {
        /// The whole input.
        url: String,
    },
    /// Something other than `?options` follows the `)` of a failover list.
    #[error("unexpected '{rest}' after ')' in broker URL (options start with '?')")]
    TrailingAfterList {
        /// Everything after the `)`.
        rest: String,
    },
    /// `failover:()` or `failover:` with no broker in it.
    #[error("no broker URL in failover list '{url}'")]
    EmptyFailoverList {
        /// The whole input.
        url: String,
    },
    /// One broker of a failover list is malformed.
    #[error("broker #{position} '{url}' in failover list: {reason}")]
    FailoverMember {
        /// 1-based position in the list.
        position: usize,
        /// That entry as written.
        url: String,
        /// What is wrong with it.
        reason: Box<UrlError>,
    },
    /// A failover list holds a failover or discovery URL.
    #[error("broker #{position} '{url}' in failover list: only tcp://, stomp:// and ssl:// URLs may be listed (no nested failover or discovery)")]
    NestedFailover {
        /// 1-based position in the list.
        position: usize,
        /// That entry as written.
        url: String,
    },
    /// `discovery:` names something other than `fabric:<group>`.
    #[error(
        "unsupported discovery agent '{agent}' in broker URL: expected discovery:fabric:<group>"
    )]
    UnsupportedDiscoveryAgent {
        /// What follows `discovery:`, up to the options.
        agent: String,
    },
    /// `discovery:fabric:` without a group name.
    #[error("empty group in discovery URL '{url}': expected discovery:fabric:<group>")]
    EmptyGroup {
        /// The whole input.
        url: String,
    },
    /// The group name of a discovery URL is not a usable ZooKeeper node name.
    #[error("invalid group '{group}' in discovery URL: {reason}")]
    InvalidGroup {
        /// The group as written.
        group: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An option this client does not know.
    #[error("unknown option `{option}` in broker URL (known: {})", ALL_OPTIONS.join(", "))]
    UnknownOption {
        /// The option name as written.
        option: String,
    },
    /// An option without `=value`.
    #[error("option `{option}` in broker URL has no value (expected {option}=VALUE)")]
    MissingOptionValue {
        /// The option name as written.
        option: String,
    },
    /// The same option twice.
    #[error("option `{option}` appears twice in broker URL")]
    DuplicateOption {
        /// The option name (canonical spelling).
        option: &'static str,
    },
    /// An option whose value cannot be used.
    #[error("bad value '{value}' for `{option}`: {reason}")]
    BadOptionValue {
        /// The option name (canonical spelling).
        option: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An option that is valid for another kind of URL only (`zk` on a
    /// failover URL).
    #[error("option `{option}` is not allowed in {kind} URLs")]
    OptionNotAllowed {
        /// The option name (canonical spelling).
        option: &'static str,
        /// The kind of URL (`failover`).
        kind: &'static str,
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
        if let Some(body) = strip_prefix_ci(input, "failover:") {
            return parse_failover(input, body);
        }
        if let Some(body) = strip_prefix_ci(input, "discovery:") {
            return parse_discovery(input, body);
        }
        parse_tcp(input)
    }
}

/// `tcp://host:port` / `stomp://host:port` / `ssl://host:port` / `stomp+ssl://host:port`
/// (`input` is trimmed and non-empty).
fn parse_tcp(input: &str) -> Result<BrokerUrl, UrlError> {
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
    let tls = scheme.eq_ignore_ascii_case("ssl") || scheme.eq_ignore_ascii_case("stomp+ssl");
    if !(tls || scheme.eq_ignore_ascii_case("tcp") || scheme.eq_ignore_ascii_case("stomp")) {
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
        tls,
    })
}

/// Splits the body of a failover or discovery URL (after `failover:` /
/// `discovery:` and an optional `//`) into what is inside the parentheses (or
/// before the `?` when there are none) and the query (without its `?`).
fn split_body<'a>(input: &str, body: &'a str) -> Result<(&'a str, Option<&'a str>), UrlError> {
    let unbalanced = || UrlError::UnbalancedParentheses {
        url: input.to_owned(),
    };
    let body = body.strip_prefix("//").unwrap_or(body);
    if let Some(inner) = body.strip_prefix('(') {
        let Some(close) = inner.find(')') else {
            return Err(unbalanced());
        };
        let (inside, after) = (&inner[..close], &inner[close + 1..]);
        if inside.contains('(') {
            return Err(unbalanced());
        }
        let query = match after {
            "" => None,
            a => match a.strip_prefix('?') {
                Some(q) => Some(q),
                None if a.contains(['(', ')']) => return Err(unbalanced()),
                None => return Err(UrlError::TrailingAfterList { rest: a.to_owned() }),
            },
        };
        Ok((inside, query))
    } else {
        let (inside, query) = match body.split_once('?') {
            Some((inside, query)) => (inside, Some(query)),
            None => (body, None),
        };
        if inside.contains(['(', ')']) {
            return Err(unbalanced());
        }
        Ok((inside, query))
    }
}

/// `failover:` has been stripped: `body` is `(url,...)?opts`, `//(url,...)?opts`
/// or `url,...?opts`.
fn parse_failover(input: &str, body: &str) -> Result<BrokerUrl, UrlError> {
    let (list, query) = split_body(input, body)?;
    if list.trim().is_empty() {
        return Err(UrlError::EmptyFailoverList {
            url: input.to_owned(),
        });
    }
    let mut urls = Vec::new();
    for (i, entry) in list.split(',').enumerate() {
        let entry = entry.trim();
        let position = i + 1;
        let member = entry
            .parse::<BrokerUrl>()
            .map_err(|reason| UrlError::FailoverMember {
                position,
                url: entry.to_owned(),
                reason: Box::new(reason),
            })?;
        if member.is_failover() {
            return Err(UrlError::NestedFailover {
                position,
                url: entry.to_owned(),
            });
        }
        urls.push(member);
    }
    let parsed = parse_options(query.unwrap_or(""))?;
    for (option, given) in [
        (OPT_ZK, parsed.zk.is_some()),
        (OPT_ZK_ROOT, parsed.zk_root.is_some()),
    ] {
        if given {
            return Err(UrlError::OptionNotAllowed {
                option,
                kind: "failover",
            });
        }
    }
    Ok(BrokerUrl::Failover {
        urls,
        options: parsed.options,
    })
}

/// `discovery:` has been stripped: `body` is `fabric:<group>?opts` or
/// `(fabric:<group>)?opts`.
fn parse_discovery(input: &str, body: &str) -> Result<BrokerUrl, UrlError> {
    let (agent, query) = split_body(input, body)?;
    let Some(group) = strip_prefix_ci(agent, "fabric:") else {
        return Err(UrlError::UnsupportedDiscoveryAgent {
            agent: agent.to_owned(),
        });
    };
    if group.is_empty() {
        return Err(UrlError::EmptyGroup {
            url: input.to_owned(),
        });
    }
    validate_group(group)?;
    let parsed = parse_options(query.unwrap_or(""))?;
    Ok(BrokerUrl::Discovery {
        group: group.to_owned(),
        zk: parsed.zk,
        zk_root: parsed.zk_root,
        options: parsed.options,
    })
}

/// Checks a fabric group name, with the rules `mq-fabric` applies to group
/// names (they become ZooKeeper node names): letters, digits, `.`, `_` and
/// `-`, starting with a letter or digit, at most 128 characters.
pub(crate) fn validate_group(group: &str) -> Result<(), UrlError> {
    let invalid = |reason| UrlError::InvalidGroup {
        group: group.to_owned(),
        reason,
    };
    if group.is_empty() {
        return Err(invalid("empty group name"));
    }
    if group.len() > 128 {
        return Err(invalid("longer than 128 characters"));
    }
    if !group.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid("must start with a letter or a digit"));
    }
    if !group
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// The options of a failover or discovery URL.
struct ParsedOptions {
    options: FailoverOptions,
    zk: Option<String>,
    zk_root: Option<String>,
}

/// Parses `name=value&name=value` (without the `?`).
fn parse_options(query: &str) -> Result<ParsedOptions, UrlError> {
    let mut out = ParsedOptions {
        options: FailoverOptions::default(),
        zk: None,
        zk_root: None,
    };
    let mut seen: Vec<&'static str> = Vec::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            // Tolerate `?&a=1` and a trailing `&`.
            continue;
        }
        let (raw_name, raw_value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        let Some(name) = ALL_OPTIONS
            .iter()
            .copied()
            .find(|known| known.eq_ignore_ascii_case(raw_name))
        else {
            return Err(UrlError::UnknownOption {
                option: raw_name.to_owned(),
            });
        };
        let Some(raw_value) = raw_value else {
            return Err(UrlError::MissingOptionValue {
                option: raw_name.to_owned(),
            });
        };
        if seen.contains(&name) {
            return Err(UrlError::DuplicateOption { option: name });
        }
        seen.push(name);
        let bad = |reason: &str| UrlError::BadOptionValue {
            option: name,
            value: raw_value.to_owned(),
            reason: reason.to_owned(),
        };
        let value = percent_decode(raw_value).map_err(bad)?;
        if value.is_empty() {
            return Err(bad("empty value"));
        }
        let o = &mut out.options;
        match name {
            OPT_INITIAL_DELAY => o.initial_reconnect_delay = parse_millis(&value).map_err(bad)?,
            OPT_MAX_DELAY => o.max_reconnect_delay = parse_millis(&value).map_err(bad)?,
            OPT_EXPONENTIAL => o.use_exponential_back_off = parse_bool(&value).map_err(bad)?,
            OPT_MULTIPLIER => o.back_off_multiplier = parse_multiplier(&value).map_err(bad)?,
            OPT_MAX_ATTEMPTS => o.max_reconnect_attempts = parse_attempts(&value).map_err(bad)?,
            OPT_STARTUP_ATTEMPTS => {
                o.startup_max_reconnect_attempts = parse_attempts(&value).map_err(bad)?
            }
            OPT_RANDOMIZE => o.randomize = parse_bool(&value).map_err(bad)?,
            OPT_TIMEOUT => {
                o.timeout = if value == "-1" {
                    None
                } else {
                    Some(parse_millis(&value).map_err(|_| {
                        bad("expected a number of milliseconds, or -1 to wait forever")
                    })?)
                }
            }
            OPT_ZK => {
                fabricmq_registry::RegistryConfig::parse(&value)
                    .map_err(|e| bad(&e.to_string()))?;
                out.zk = Some(value);
            }
            OPT_ZK_ROOT => {
                validate_zk_root(&value).map_err(bad)?;
                out.zk_root = Some(value);
            }
            _ => unreachable!("every name of ALL_OPTIONS is handled"),
        }
    }
    let o = &out.options;
    if o.max_reconnect_delay < o.initial_reconnect_delay {
        return Err(UrlError::BadOptionValue {
            option: OPT_MAX_DELAY,
            value: o.max_reconnect_delay.as_millis().to_string(),
            reason: format!(
                "less than initialReconnectDelay ({} ms)",
                o.initial_reconnect_delay.as_millis()
            ),
        });
    }
    Ok(out)
}

fn parse_millis(value: &str) -> Result<Duration, &'static str> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a number of milliseconds");
    }
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| "number of milliseconds out of range")
}

fn parse_bool(value: &str) -> Result<bool, &'static str> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err("expected true or false")
    }
}

fn parse_multiplier(value: &str) -> Result<f64, &'static str> {
    match value.parse::<f64>() {
        Ok(m) if m.is_finite() && m >= 1.0 => Ok(m),
        Ok(_) => Err("must be a number of at least 1"),
        Err(_) => Err("expected a number like 2.0"),
    }
}

fn parse_attempts(value: &str) -> Result<Option<u32>, &'static str> {
    if value == "-1" {
        return Ok(None);
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a count (0 or more), or -1 for no limit");
    }
    value
        .parse::<u32>()
        .map(Some)
        .map_err(|_| "count out of range")
}

/// The registry root must name a node below `/` (as `mq-fabric --zk-root`).
pub(crate) fn validate_zk_root(value: &str) -> Result<(), &'static str> {
    let Some(rest) = value.strip_prefix('/') else {
        return Err("must start with / (e.g. /fabric)");
    };
    if rest.is_empty() || rest.ends_with('/') {
        return Err("must name a node below / without a trailing / (e.g. /fabric)");
    }
    if rest
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("has an empty, `.` or `..` path element");
    }
    if rest.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    Ok(())
}

/// Decodes `%XX` escapes (no `+` rule: `+` stays `+`).
fn percent_decode(value: &str) -> Result<String, &'static str> {
    if !value.contains('%') {
        return Ok(value.to_owned());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape (expected % and two hex digits)")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "%-escapes do not decode to UTF-8")
}

/// Escapes what would end or confuse an option value: `%`, `&`, `#`, `(`,
/// `)`, white space, control and non-ASCII characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'&' | b'#' | b'(' | b')') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

/// Writes `?a=1&b=2` (nothing when `pairs` is empty).
fn write_query(f: &mut fmt::Formatter<'_>, pairs: &[(&str, String)]) -> fmt::Result {
    for (i, (name, value)) in pairs.iter().enumerate() {
        let sep = if i == 0 { '?' } else { '&' };
        write!(f, "{sep}{name}={value}")?;
    }
    Ok(())
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Tcp { host, port, tls } => {
                let scheme = if *tls { "ssl" } else { "tcp" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}")
                } else {
                    write!(f, "{scheme}://{host}:{port}")
                }
            }
            BrokerUrl::Failover { urls, options } => {
                f.write_str("failover:(")?;
                for (i, url) in urls.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{url}")?;
                }
                f.write_str(")")?;
                write_query(f, &options.non_default_pairs())
            }
            BrokerUrl::Discovery {
                group,
                zk,
                zk_root,
                options,
            } => {
                write!(f, "discovery:fabric:{group}")?;
                let mut pairs = Vec::new();
                if let Some(zk) = zk {
                    pairs.push((OPT_ZK, percent_encode(zk)));
                }
                if let Some(root) = zk_root {
                    pairs.push((OPT_ZK_ROOT, percent_encode(root)));
                }
                pairs.extend(options.non_default_pairs());
                write_query(f, &pairs)
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
            tls: false,
        }
    }

    fn ssl(host: &str, port: u16) -> BrokerUrl {
        BrokerUrl::Tcp {
            host: host.to_owned(),
            port,
            tls: true,
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
            ("ssl://localhost:61614", ssl("localhost", 61614)),
            ("stomp+ssl://127.0.0.1:61614", ssl("127.0.0.1", 61614)),
            ("SSL://[::1]", ssl("::1", DEFAULT_STOMP_PORT)),
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
                "tls://h:1",
                UrlError::UnsupportedScheme {
                    scheme: "tls".into(),
                },
                "'tls'",
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn failover_options_defaults_are_activemq_s() {
        let d = FailoverOptions::default();
        assert_eq!(d.initial_reconnect_delay, ms(10));
        assert_eq!(d.max_reconnect_delay, ms(30_000));
        assert!(d.use_exponential_back_off);
        assert_eq!(d.back_off_multiplier, 2.0);
        assert_eq!(d.max_reconnect_attempts, None);
        assert_eq!(d.startup_max_reconnect_attempts, None);
        assert!(d.randomize);
        assert_eq!(d.timeout, None);
        assert!(d.non_default_pairs().is_empty());
    }

    #[test]
    fn parses_failover_urls() {
        let list = vec![tcp("a", 61613), tcp("b", 2), tcp("::1", 3)];
        let plain = BrokerUrl::Failover {
            urls: list.clone(),
            options: FailoverOptions::default(),
        };
        for input in [
            "failover:(tcp://a:61613,stomp://b:2,tcp://[::1]:3)",
            "failover:(tcp://a, tcp://b:2 ,tcp://[::1]:3)",
            "FAILOVER:(TCP://a:61613,tcp://b:2,tcp://[::1]:3)",
            "failover://(tcp://a:61613,tcp://b:2,tcp://[::1]:3)",
            "failover:tcp://a:61613,tcp://b:2,tcp://[::1]:3",
            "  failover:(tcp://a:61613,tcp://b:2,tcp://[::1]:3)?  ",
        ] {
            assert_eq!(input.parse::<BrokerUrl>(), Ok(plain.clone()), "{input}");
        }
        let one: BrokerUrl = "failover:(tcp://h:1)".parse().unwrap();
        assert_eq!(
            one,
            BrokerUrl::Failover {
                urls: vec![tcp("h", 1)],
                options: FailoverOptions::default()
            }
        );
        // Options without parentheses too.
        let url: BrokerUrl = "failover:tcp://a:1,tcp://b:2?randomize=false"
            .parse()
            .unwrap();
        assert_eq!(
            url,
            BrokerUrl::Failover {
                urls: vec![tcp("a", 1), tcp("b", 2)],
                options: FailoverOptions {
                    randomize: false,
                    ..FailoverOptions::default()
                }
            }
        );
    }

    #[test]
    fn parses_every_option() {
        let url: BrokerUrl =
            "failover:(tcp://a:1)?initialReconnectDelay=100&maxReconnectDelay=5000\
             &useExponentialBackOff=false&backOffMultiplier=1.5&maxReconnectAttempts=3\
             &startupMaxReconnectAttempts=0&randomize=false&timeout=2500"
                .parse()
                .unwrap();
        let want = FailoverOptions {
            initial_reconnect_delay: ms(100),
            max_reconnect_delay: ms(5000),
            use_exponential_back_off: false,
            back_off_multiplier: 1.5,
            max_reconnect_attempts: Some(3),
            startup_max_reconnect_attempts: Some(0),
            randomize: false,
            timeout: Some(ms(2500)),
        };
        assert_eq!(url.options(), Some(&want));

        // -1 means "no limit" / "forever"; names match without regard to case; values too.
        let url: BrokerUrl =
            "failover:(tcp://a:1)?MAXRECONNECTATTEMPTS=-1&startupmaxreconnectattempts=-1\
             &Timeout=-1&RANDOMIZE=TRUE&useExponentialBackOff=True&initialReconnectDelay=0\
             &backOffMultiplier=1&maxReconnectDelay=0"
                .parse()
                .unwrap();
        let want = FailoverOptions {
            initial_reconnect_delay: ms(0),
            max_reconnect_delay: ms(0),
            back_off_multiplier: 1.0,
            ..FailoverOptions::default()
        };
        assert_eq!(url.options(), Some(&want));

        // Empty pairs are tolerated; %-escapes are decoded.
        let url: BrokerUrl = "failover:(tcp://a:1)?&timeout=%31%30&".parse().unwrap();
        assert_eq!(url.options().unwrap().timeout, Some(ms(10)));
    }

    #[test]
    fn parses_discovery_urls() {
        let url: BrokerUrl = "discovery:fabric:default".parse().unwrap();
        assert_eq!(
            url,
            BrokerUrl::Discovery {
                group: "default".into(),
                zk: None,
                zk_root: None,
                options: FailoverOptions::default()
            }
        );
        let want = BrokerUrl::Discovery {
            group: "eu-west.1_a".into(),
            zk: Some("zk1:2181,zk2:2182/prod".into()),
            zk_root: Some("/fabric2".into()),
            options: FailoverOptions {
                max_reconnect_attempts: Some(5),
                timeout: Some(ms(3000)),
                ..FailoverOptions::default()
            },
        };
        for input in [
            "discovery:fabric:eu-west.1_a?zk=zk1:2181,zk2:2182/prod&zkRoot=/fabric2&maxReconnectAttempts=5&timeout=3000",
            "DISCOVERY:FABRIC:eu-west.1_a?timeout=3000&zkroot=/fabric2&ZK=zk1:2181,zk2:2182/prod&maxReconnectAttempts=5",
            "discovery:(fabric:eu-west.1_a)?zk=zk1:2181,zk2:2182/prod&zkRoot=/fabric2&maxReconnectAttempts=5&timeout=3000",
            "discovery://fabric:eu-west.1_a?zk=zk1%3A2181%2Czk2%3A2182%2Fprod&zkRoot=%2Ffabric2&maxReconnectAttempts=5&timeout=3000",
        ] {
            assert_eq!(input.parse::<BrokerUrl>(), Ok(want.clone()), "{input}");
        }
        let url: BrokerUrl = "discovery:fabric:g?zk=[::1]:2181".parse().unwrap();
        assert!(matches!(url, BrokerUrl::Discovery { zk: Some(ref z), .. } if z == "[::1]:2181"));
    }

    #[test]
    fn helpers_of_each_kind() {
        let t: BrokerUrl = "tcp://h:1".parse().unwrap();
        let f: BrokerUrl = "failover:(tcp://a:1,tcp://[::1]:2)".parse().unwrap();
        let d: BrokerUrl = "discovery:fabric:g".parse().unwrap();
        assert!(!t.is_failover());
        assert!(f.is_failover());
        assert!(d.is_failover());
        assert_eq!(t.options(), None);
        assert_eq!(f.options(), Some(&FailoverOptions::default()));
        assert_eq!(d.options(), Some(&FailoverOptions::default()));
        assert_eq!((f.host(), f.port()), ("a", 1));
        assert_eq!((d.host(), d.port()), ("", 0));
        assert_eq!(f.authority(), "a:1,[::1]:2");
        assert_eq!(d.authority(), "fabric:g");

        // with_default_zk fills only a missing zk of a discovery URL.
        let filled = d.clone().with_default_zk(Some("zk:2181"));
        assert!(matches!(&filled, BrokerUrl::Discovery { zk: Some(z), .. } if z == "zk:2181"));
        assert_eq!(d.clone().with_default_zk(None), d);
        let own: BrokerUrl = "discovery:fabric:g?zk=mine:1".parse().unwrap();
        assert_eq!(own.clone().with_default_zk(Some("zk:2181")), own);
        assert_eq!(t.clone().with_default_zk(Some("zk:2181")), t);
        assert_eq!(f.clone().with_default_zk(Some("zk:2181")), f);
    }

    #[test]
    fn reconnect_delays() {
        let o = FailoverOptions {
            initial_reconnect_delay: ms(10),
            max_reconnect_delay: ms(100),
            ..FailoverOptions::default()
        };
        let delays: Vec<_> = (0..6).map(|n| o.reconnect_delay(n)).collect();
        assert_eq!(delays, [ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]);
        assert_eq!(o.reconnect_delay(u32::MAX), ms(100));
        let flat = FailoverOptions {
            use_exponential_back_off: false,
            initial_reconnect_delay: ms(7),
            ..FailoverOptions::default()
        };
        assert_eq!(flat.reconnect_delay(0), ms(7));
        assert_eq!(flat.reconnect_delay(50), ms(7));
        let d = FailoverOptions::default();
        assert_eq!(d.reconnect_delay(0), ms(10));
        assert_eq!(d.reconnect_delay(40), ms(30_000));
    }

    #[test]
    fn failover_and_discovery_errors_name_the_bad_part() {
        let cases: &[(&str, &str)] = &[
            ("failover:", "no broker URL in failover list"),
            (
                "failover:()",
                "no broker URL in failover list 'failover:()'",
            ),
            ("failover:(tcp://a:1", "unbalanced parentheses"),
            ("failover:tcp://a:1)", "unbalanced parentheses"),
            ("failover:((tcp://a:1))", "unbalanced parentheses"),
            ("failover:(tcp://a:1))", "unbalanced parentheses"),
            ("failover:(tcp://a:1)x", "unexpected 'x' after ')'"),
            (
                "failover:(tcp://a:1,,tcp://b:2)",
                "broker #2 '' in failover list: empty broker URL",
            ),
            ("failover:(tcp://a:1,)", "broker #2 ''"),
            (
                "failover:(tcp://a:1,tcp://b:abc)",
                "broker #2 'tcp://b:abc' in failover list: invalid port 'abc'",
            ),
            (
                "failover:(http://a:1)",
                "broker #1 'http://a:1' in failover list: unsupported scheme 'http'",
            ),
            (
                "failover://h:1",
                "broker #1 'h:1' in failover list: missing scheme",
            ),
            ("failover:(tcp://a:1?x=1)", "broker #1 'tcp://a:1?x=1'"),
            (
                "failover:discovery:fabric:g",
                "broker #1 'discovery:fabric:g' in failover list: only tcp://",
            ),
            ("failover:(tcp://a:1)?foo=1", "unknown option `foo`"),
            (
                "failover:(tcp://a:1)?randomize",
                "option `randomize` in broker URL has no value",
            ),
            (
                "failover:(tcp://a:1)?randomize=",
                "bad value '' for `randomize`",
            ),
            (
                "failover:(tcp://a:1)?randomize=yes",
                "bad value 'yes' for `randomize`: expected true or false",
            ),
            (
                "failover:(tcp://a:1)?useExponentialBackOff=1",
                "bad value '1' for `useExponentialBackOff`",
            ),
            (
                "failover:(tcp://a:1)?maxReconnectDelay=5s",
                "bad value '5s' for `maxReconnectDelay`: expected a number of milliseconds",
            ),
            (
                "failover:(tcp://a:1)?maxReconnectDelay=-1",
                "bad value '-1' for `maxReconnectDelay`",
            ),
            (
                "failover:(tcp://a:1)?initialReconnectDelay=99999999999999999999999",
                "`initialReconnectDelay`: number of milliseconds out of range",
            ),
            (
                "failover:(tcp://a:1)?initialReconnectDelay=100&maxReconnectDelay=50",
                "bad value '50' for `maxReconnectDelay`: less than initialReconnectDelay (100 ms)",
            ),
            (
                "failover:(tcp://a:1)?backOffMultiplier=0.5",
                "bad value '0.5' for `backOffMultiplier`: must be a number of at least 1",
            ),
            (
                "failover:(tcp://a:1)?backOffMultiplier=NaN",
                "`backOffMultiplier`: must be a number of at least 1",
            ),
            (
                "failover:(tcp://a:1)?backOffMultiplier=inf",
                "`backOffMultiplier`",
            ),
            (
                "failover:(tcp://a:1)?backOffMultiplier=two",
                "bad value 'two' for `backOffMultiplier`: expected a number",
            ),
            (
                "failover:(tcp://a:1)?maxReconnectAttempts=-2",
                "bad value '-2' for `maxReconnectAttempts`",
            ),
            (
                "failover:(tcp://a:1)?startupMaxReconnectAttempts=x",
                "bad value 'x' for `startupMaxReconnectAttempts`",
            ),
            (
                "failover:(tcp://a:1)?maxReconnectAttempts=4294967296",
                "`maxReconnectAttempts`: count out of range",
            ),
            (
                "failover:(tcp://a:1)?timeout=-5",
                "bad value '-5' for `timeout`",
            ),
            (
                "failover:(tcp://a:1)?timeout=%zz",
                "bad value '%zz' for `timeout`: bad %-escape",
            ),
            (
                "failover:(tcp://a:1)?randomize=true&Randomize=false",
                "option `randomize` appears twice",
            ),
            (
                "failover:(tcp://a:1)?zk=h:1",
                "option `zk` is not allowed in failover URLs",
            ),
            (
                "failover:(tcp://a:1)?zkRoot=/x",
                "option `zkRoot` is not allowed in failover URLs",
            ),
            (
                "discovery:fabric:",
                "empty group in discovery URL 'discovery:fabric:'",
            ),
            ("discovery:fabric:?zk=h:1", "empty group"),
            (
                "discovery:fabric:a/b",
                "invalid group 'a/b' in discovery URL",
            ),
            (
                "discovery:fabric:-a",
                "invalid group '-a' in discovery URL: must start with a letter or a digit",
            ),
            ("discovery:fabric:a b", "invalid group 'a b'"),
            (
                "discovery:multicast://default",
                "unsupported discovery agent 'multicast://default'",
            ),
            ("discovery:default", "unsupported discovery agent 'default'"),
            ("discovery:(fabric:g", "unbalanced parentheses"),
            ("discovery:fabric:(g)", "unbalanced parentheses"),
            ("discovery:(fabric:g)x", "unexpected 'x' after ')'"),
            ("discovery:fabric:g?zk=", "bad value '' for `zk`"),
            (
                "discovery:fabric:g?zk=h:abc",
                "bad value 'h:abc' for `zk`: invalid ZooKeeper connect string",
            ),
            ("discovery:fabric:g?zk=h:1,,h:2", "empty server entry #2"),
            (
                "discovery:fabric:g?zkRoot=fabric",
                "bad value 'fabric' for `zkRoot`: must start with /",
            ),
            ("discovery:fabric:g?zkRoot=/", "bad value '/' for `zkRoot`"),
            ("discovery:fabric:g?zkRoot=/a//b", "`zkRoot`: has an empty"),
            (
                "discovery:fabric:g?zkRoot=/a/../b",
                "`zkRoot`: has an empty, `.` or `..`",
            ),
            (
                "discovery:fabric:g?timeout=abc",
                "bad value 'abc' for `timeout`",
            ),
            (
                "discovery:fabric:g?wireFormat.maxInactivityDuration=0",
                "unknown option `wireFormat.maxInactivityDuration`",
            ),
        ];
        for (input, in_message) in cases {
            let err = input.parse::<BrokerUrl>().expect_err(input);
            let msg = err.to_string();
            assert!(
                msg.contains(in_message),
                "{input}: message {msg:?} lacks {in_message:?}"
            );
        }
        // The structure, not just the text, for a few.
        assert_eq!(
            "failover:(tcp://a:1,tcp://b:0)".parse::<BrokerUrl>(),
            Err(UrlError::FailoverMember {
                position: 2,
                url: "tcp://b:0".into(),
                reason: Box::new(UrlError::InvalidPort {
                    port: "0".into(),
                    reason: "port 0 is not allowed"
                })
            })
        );
        assert_eq!(
            "failover:(tcp://a:1)?foo=1".parse::<BrokerUrl>(),
            Err(UrlError::UnknownOption {
                option: "foo".into()
            })
        );
        assert_eq!(
            "discovery:fabric:g?maxReconnectDelay=soon".parse::<BrokerUrl>(),
            Err(UrlError::BadOptionValue {
                option: "maxReconnectDelay",
                value: "soon".into(),
                reason: "expected a number of milliseconds".into()
            })
        );
        assert_eq!(
            "failover:failover:(tcp://a:1)".parse::<BrokerUrl>(),
            Err(UrlError::UnbalancedParentheses {
                url: "failover:failover:(tcp://a:1)".into()
            })
        );
        assert_eq!(
            "failover:failover:tcp://a:1".parse::<BrokerUrl>(),
            Err(UrlError::NestedFailover {
                position: 1,
                url: "failover:tcp://a:1".into()
            })
        );
    }

    #[test]
    fn failover_and_discovery_display_round_trips() {
        let cases = [
            ("failover:(tcp://a:1,stomp://b:2)", "failover:(tcp://a:1,tcp://b:2)"),
            ("failover:tcp://[::1]", "failover:(tcp://[::1]:61613)"),
            (
                "failover:(tcp://a:1)?timeout=-1&randomize=true&maxReconnectAttempts=-1",
                "failover:(tcp://a:1)",
            ),
            (
                "failover:(tcp://a:1)?timeout=0&RANDOMIZE=false&backOffMultiplier=1.5&startupMaxReconnectAttempts=2\
                 &maxReconnectAttempts=0&useExponentialBackOff=false&maxReconnectDelay=1000&initialReconnectDelay=5",
                "failover:(tcp://a:1)?initialReconnectDelay=5&maxReconnectDelay=1000&useExponentialBackOff=false\
                 &backOffMultiplier=1.5&maxReconnectAttempts=0&startupMaxReconnectAttempts=2&randomize=false&timeout=0",
            ),
            ("discovery:(fabric:default)", "discovery:fabric:default"),
            (
                "discovery:fabric:g?timeout=100&zkRoot=/r&zk=h1:1,[::1]:2/chroot",
                "discovery:fabric:g?zk=h1:1,[::1]:2/chroot&zkRoot=/r&timeout=100",
            ),
            (
                "discovery:fabric:g?zk=h:1/a%20b%26c&backOffMultiplier=3.25",
                "discovery:fabric:g?zk=h:1/a%20b%26c&backOffMultiplier=3.25",
            ),
        ];
        for (input, printed) in cases {
            let url: BrokerUrl = input.parse().unwrap();
            assert_eq!(url.to_string(), printed, "{input}");
            assert_eq!(printed.parse::<BrokerUrl>(), Ok(url), "{printed}");
        }
        // A zk filled in by with_default_zk prints (escaped) and parses back.
        let url = "discovery:fabric:g"
            .parse::<BrokerUrl>()
            .unwrap()
            .with_default_zk(Some("h:1/odd (chroot)#1"));
        let printed = url.to_string();
        assert_eq!(printed, "discovery:fabric:g?zk=h:1/odd%20%28chroot%29%231");
        assert_eq!(printed.parse::<BrokerUrl>(), Ok(url));
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

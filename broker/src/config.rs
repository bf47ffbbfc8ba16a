//! Broker configuration: the typed, validated settings of one `mq-broker`.
//!
//! Settings come from an optional TOML file (`--config`), with command-line flags overriding the
//! file. Everything is validated once, here, with errors that name the key; the rest of the broker
//! only sees typed values (`SocketAddr`, `Duration`, byte counts). `mq-broker --print-config` prints
//! the effective configuration as TOML, which doubles as the documented default file.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pattern::Pattern;

/// A configuration problem, naming the key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys are errors).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key, in TOML dotted form.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A byte count written as an integer or with a unit: `65536`, `"64KiB"`, `"10 MiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a byte size (e.g. 65536, \"64KiB\", \"10MiB\")"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" | "k" => 1024,
            "mb" => 1000 * 1000,
            "mib" | "m" => 1024 * 1024,
            "gb" => 1000 * 1000 * 1000,
            "gib" | "g" => 1024 * 1024 * 1024,
            other => return Err(format!("unknown byte unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if v >= m && v.is_multiple_of(m) {
                return s.serialize_str(&format!("{}{unit}", v / m));
            }
        }
        s.serialize_u64(v)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as `"10s"`, `"250ms"`, `"1m"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e} (e.g. \"10s\", \"250ms\")")))
    }
}

/// A client listener URL: `stomp://HOST:PORT` (or `tcp://HOST:PORT`), or TLS with
/// `stomp+ssl://HOST:PORT` (or `ssl://HOST:PORT`, settings in `[tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenUrl {
    /// Host as written (kept for publishing).
    pub host: String,
    /// Port (0 = pick a free one).
    pub port: u16,
    /// STOMP over TLS (`stomp+ssl://`).
    pub tls: bool,
}

impl FromStr for ListenUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, tls) = if let Some(r) = s
            .strip_prefix("stomp+ssl://")
            .or_else(|| s.strip_prefix("ssl://"))
        {
            (r, true)
        } else {
            let r = s
                .strip_prefix("stomp://")
                .or_else(|| s.strip_prefix("tcp://"))
                .ok_or_else(|| {
                    format!(
                        "{s:?}: listener URLs start with stomp://, tcp://, stomp+ssl:// or ssl://"
                    )
                })?;
            (r, false)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: missing :PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: missing host"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: port {port:?} is not a number from 0 to 65535"))?;
        Ok(ListenUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl std::fmt::Display for ListenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.scheme();
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl ListenUrl {
    /// `stomp+ssl` for a TLS listener, `stomp` otherwise (the scheme published and printed).
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "stomp+ssl"
        } else {
            "stomp"
        }
    }

    /// Resolves the address to bind.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("{self}: {e}"))?
            .next()
            .ok_or_else(|| format!("{self}: host resolves to no address"))
    }
}

/// Whether a TLS listener asks clients for a certificate (`[tls] client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A client certificate is asked for and, when sent, must be signed by `client_ca`.
    Optional,
    /// A client without a certificate signed by `client_ca` is refused in the handshake.
    Required,
}

impl ClientAuth {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}

/// TLS for `stomp+ssl://` listeners (`[tls]`): PEM files read at start-up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates; when set, client certificates are
    /// verified against them.
    pub client_ca: Option<PathBuf>,
    /// `"none"`, `"optional"` or `"required"`; default `"required"` when `client_ca` is set,
    /// else `"none"`.
    pub client_auth: Option<ClientAuth>,
}

impl TlsSettings {
    /// `client_auth` with its default applied.
    pub fn effective_client_auth(&self) -> ClientAuth {
        self.client_auth.unwrap_or(if self.client_ca.is_some() {
            ClientAuth::Required
        } else {
            ClientAuth::None
        })
    }

    fn is_set(&self) -> bool {
        self.cert.is_some()
            || self.key.is_some()
            || self.client_ca.is_some()
            || self.client_auth.is_some()
    }
}

/// What happens to a message whose `expires` time has passed before delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpiredAction {
    /// Remove it silently (counted in metrics).
    Drop,
    /// Move it to the destination's dead-letter queue (ActiveMQ's default).
    DeadLetter,
}

/// Connection and frame limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most simultaneous client connections; more are refused with an ERROR frame.
    pub max_connections: usize,
    /// Largest frame accepted (headers and body).
    pub max_frame_bytes: ByteSize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Longest header line.
    pub max_header_line: ByteSize,
    /// Bytes buffered for one connection's socket in either direction before the broker stops
    /// reading from it (inbound) or stops handing it more messages (outbound).
    pub max_pending_bytes: ByteSize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: HumanDuration,
    /// Close connections that send nothing for this long when no heart-beat was negotiated
    /// (`"0s"` = never).
    pub idle_timeout: HumanDuration,
    /// Heart-beat the broker offers: (can send every, wants to receive every), in milliseconds.
    pub heart_beat_ms: (u64, u64),
    /// Memory for message bodies held by queues. Past it, bodies of persistent messages are read
    /// back from the journal when delivered, and non-persistent messages spill to a temporary
    /// store under `<data_dir>/tmp` (wiped at start-up), so backlogs larger than memory work and
    /// resident memory stays bounded.
    pub max_memory: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_frame_bytes: ByteSize(10 << 20),
            max_headers: 128,
            max_header_line: ByteSize(16 << 10),
            max_pending_bytes: ByteSize(4 << 20),
            connect_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::ZERO),
            heart_beat_ms: (10_000, 10_000),
            max_memory: ByteSize(64 << 20),
        }
    }
}

/// Journal settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSettings {
    /// Size at which the journal starts a new segment file.
    pub segment_bytes: ByteSize,
    /// Start even if a segment other than the last is corrupt, dropping what follows the damage
    /// in that segment (logged loudly). Off by default: a corrupt middle segment stops the broker.
    pub salvage: bool,
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            segment_bytes: ByteSize(64 << 20),
            salvage: false,
        }
    }
}

/// Authentication settings, including the guard against login floods (see [`crate::auth`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// TOML file of users with argon2 password hashes (see `mq-broker hash-password`). When unset,
    /// the documented default user `admin`/`admin` is active and the broker warns about it.
    pub users_file: Option<PathBuf>,
    /// Accept connections without login (not recommended).
    pub allow_anonymous: bool,
    /// Allow the built-in `admin`/`admin` login (no users file) in fabric mode or on a
    /// non-loopback listener, where the broker otherwise refuses to start (insecure; logged).
    pub allow_default_admin: bool,
    /// Threads that verify passwords (argon2, 19 MiB each while running); default: the number of
    /// cores.
    pub password_check_threads: usize,
    /// Logins that may wait for a password-check thread; more get `ERROR message:server busy`.
    pub password_check_queue: usize,
    /// Password checks one client address may have queued or running; more get `server busy`.
    /// Default: half of `password_check_threads` (at least 1).
    pub password_checks_per_address: usize,
    /// Back-off after the first failed login of an address or login name; it doubles with each
    /// further failure.
    pub failure_backoff: HumanDuration,
    /// Longest back-off; an attempt whose back-off would pass `limits.connect_timeout` is refused
    /// at once with `ERROR message:too many failed logins`.
    pub failure_backoff_max: HumanDuration,
    /// Addresses (and, separately, login names) remembered for back-off; the least recently
    /// failed are evicted beyond it.
    pub failure_table_size: usize,
    /// An address or login name without failures for this long is forgotten.
    pub failure_forget_after: HumanDuration,
    /// Most failed-login log lines per second; the rest are counted and summarised.
    pub failure_log_per_second: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        AuthSettings {
            users_file: None,
            allow_anonymous: false,
            allow_default_admin: false,
            password_check_threads: threads,
            password_check_queue: 32,
            password_checks_per_address: (threads / 2).max(1),
            failure_backoff: HumanDuration(Duration::from_millis(200)),
            failure_backoff_max: HumanDuration(Duration::from_secs(5)),
            failure_table_size: 10_000,
            failure_forget_after: HumanDuration(Duration::from_secs(600)),
            failure_log_per_second: 10,
        }
    }
}

impl AuthSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.password_check_threads == 0 {
            return Err(invalid("auth.password_check_threads", "must be at least 1"));
        }
        if self.password_check_threads > 256 {
            return Err(invalid(
                "auth.password_check_threads",
                "must be at most 256 (each running check holds 19 MiB)",
            ));
        }
        if self.password_checks_per_address == 0 {
            return Err(invalid(
                "auth.password_checks_per_address",
                "must be at least 1",
            ));
        }
        if self.failure_backoff.0 > self.failure_backoff_max.0 {
            return Err(invalid(
                "auth.failure_backoff",
                "must not exceed auth.failure_backoff_max",
            ));
        }
        if self.failure_table_size == 0 {
            return Err(invalid("auth.failure_table_size", "must be at least 1"));
        }
        Ok(())
    }
}

// ---- [producers]: the de-duplication table (see crate::producers) ----

/// Bounds of the producer de-duplication table (`[producers]`). Producer ids are scoped to the
/// authenticated user; see [`crate::producers`] for the pruning rule and the guarantee it keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerSettings {
    /// Longest `producer-id` header accepted; a longer one gets an ERROR naming this key.
    pub max_id_bytes: usize,
    /// Most producer ids remembered per user; past it the user's least recently used id is
    /// forgotten (counted in `fabricmq_producer_ids_evicted_total`).
    pub max_per_user: usize,
    /// A producer id that sent nothing for this long is forgotten (`"0s"` = never; the per-user
    /// count still bounds the table).
    pub idle_expiry: HumanDuration,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            max_id_bytes: 256,
            max_per_user: 10_000,
            idle_expiry: HumanDuration(Duration::from_secs(24 * 3600)),
        }
    }
}

impl ProducerSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=4096).contains(&self.max_id_bytes) {
            return Err(invalid("producers.max_id_bytes", "must be 1 to 4096"));
        }
        if !(1..=10_000_000).contains(&self.max_per_user) {
            return Err(invalid("producers.max_per_user", "must be 1 to 10000000"));
        }
        Ok(())
    }
}

// ---- end of [producers] ----

// ---- [admin]: the HTTP admin endpoint (see crate::admin) ----

/// Where the admin endpoint listens when `[admin] listen` is not set: loopback only (ActiveMQ's
/// web console port), so a default installation exposes nothing beyond the machine.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8161";

/// The HTTP admin endpoint: `/metrics` (Prometheus), `/health` (200 only on a serving master),
/// `/status` (JSON). See [`crate::admin`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Serve the endpoint (default on).
    pub enabled: bool,
    /// `HOST:PORT` to bind; `""` disables the endpoint. Unset: [`DEFAULT_ADMIN_LISTEN`], and a
    /// failure to bind it is only a warning (another broker or ActiveMQ may hold it); an address
    /// set here (or with `--admin-listen`) must bind or the broker does not start.
    #[serde(serialize_with = "serialize_admin_listen")]
    pub listen: Option<String>,
    /// Most admin HTTP connections open at once, separate from `limits.max_connections`; one
    /// more is answered `503` and closed at once. Keep it well below the open-file limit minus
    /// `limits.max_connections`, so a flood of admin connections never takes descriptors STOMP
    /// clients need.
    pub max_connections: usize,
    /// Time a connection has to send a request's complete header (also the idle time allowed
    /// between two requests on a kept-alive connection); then it is closed.
    pub header_read_timeout: HumanDuration,
    /// Time a request may take to be answered; then it gets `503`.
    pub request_timeout: HumanDuration,
    #[serde(skip)]
    resolved: Option<SocketAddr>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            enabled: true,
            listen: None,
            max_connections: 64,
            header_read_timeout: HumanDuration(Duration::from_secs(5)),
            request_timeout: HumanDuration(Duration::from_secs(10)),
            resolved: None,
        }
    }
}

fn serialize_admin_listen<S: serde::Serializer>(
    v: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN))
}

impl AdminSettings {
    /// The address to bind, or `None` when the endpoint is disabled (valid after
    /// [`BrokerConfig::validate`]).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.resolved
    }

    /// Whether the address was configured (file or flag) rather than defaulted.
    pub fn explicit(&self) -> bool {
        self.listen.is_some()
    }

    fn resolve(&mut self) -> Result<(), ConfigError> {
        self.resolved = None;
        if self.max_connections == 0 {
            return Err(invalid("admin.max_connections", "must be at least 1"));
        }
        if self.header_read_timeout.0.is_zero() {
            return Err(invalid("admin.header_read_timeout", "must be more than 0s"));
        }
        if self.request_timeout.0.is_zero() {
            return Err(invalid("admin.request_timeout", "must be more than 0s"));
        }
        let listen = self
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_ADMIN_LISTEN)
            .trim();
        if !self.enabled || listen.is_empty() {
            return Ok(());
        }
        let addr = listen
            .to_socket_addrs()
            .map_err(|e| invalid("admin.listen", format!("{listen:?}: {e} (want HOST:PORT)")))?
            .next()
            .ok_or_else(|| invalid("admin.listen", format!("{listen:?} resolves to no address")))?;
        self.resolved = Some(addr);
        Ok(())
    }
}

// ---- end of [admin] ----

// ---- [quotas]: what one client may make the broker hold (issue 10 item 6; see crate::quota) ----

/// Per-connection and per-user quotas, and the bounds on destinations a client can create.
/// Every limit has a default; 0 is never "unlimited" except where the field says so. A client
/// that exceeds one gets an ERROR frame naming the key (`quotas.<field>`) and is disconnected;
/// refusals are counted in `/metrics` (`fabricmq_quota_refusals{quota="<field>"}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Most subscriptions (queue consumers, topic subscribers, browsers) one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Most subscriptions one authenticated user may hold over all its connections.
    pub max_subscriptions_per_user: usize,
    /// Most transactions one connection may have open (BEGIN without COMMIT or ABORT).
    pub max_transactions_per_connection: usize,
    /// Most bytes (bodies plus headers of SENDs) one connection may buffer in its open
    /// transactions. These bytes also count against `limits.max_memory`, and all connections
    /// together may not buffer more than `limits.max_memory` in transactions.
    pub max_transaction_bytes: ByteSize,
    /// Most bytes of headers (names plus values) in one SEND. The per-line and per-count limits
    /// of `[limits]` still apply.
    pub max_header_bytes: ByteSize,
    /// Most destinations (queues plus topics) the broker holds. Creating one more (a SEND or
    /// SUBSCRIBE to a new name) is refused; queues rebuilt from the journal and dead-letter queues
    /// are always created. This also bounds the size of `/metrics`.
    pub max_destinations: usize,
    /// Remove a destination that has been idle this long: no messages, no consumers or
    /// subscribers, nothing in flight and no connection referring to it (`"0s"` = never).
    pub destination_idle_timeout: HumanDuration,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_subscriptions_per_connection: 1_000,
            max_subscriptions_per_user: 10_000,
            max_transactions_per_connection: 16,
            max_transaction_bytes: ByteSize(16 << 20),
            max_header_bytes: ByteSize(64 << 10),
            max_destinations: 10_000,
            destination_idle_timeout: HumanDuration(Duration::from_secs(300)),
        }
    }
}

impl Quotas {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            (
                "quotas.max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
            ),
            (
                "quotas.max_subscriptions_per_user",
                self.max_subscriptions_per_user,
            ),
            (
                "quotas.max_transactions_per_connection",
                self.max_transactions_per_connection,
            ),
            ("quotas.max_destinations", self.max_destinations),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_transaction_bytes.0 < 1024 {
            return Err(invalid(
                "quotas.max_transaction_bytes",
                "must be at least 1KiB",
            ));
        }
        if self.max_header_bytes.0 < 1024 {
            return Err(invalid("quotas.max_header_bytes", "must be at least 1KiB"));
        }
        Ok(())
    }
}

// ---- end of [quotas] ----

/// Per-destination behaviour; every field is optional in a policy and falls back to the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationPolicy {
    /// Destinations this policy applies to (`queue://orders.>`); not used in `[destinations]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Whether a SEND without a `persistent` header is persistent (queues only; topics are never
    /// journaled because subscriptions are not durable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    /// Deliveries allowed before a message is dead-lettered (ActiveMQ default 6 redeliveries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_redeliveries: Option<u32>,
    /// Default prefetch window of a subscription that does not ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u32>,
    /// What to do with expired messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<ExpiredAction>,
    /// Name prefix of dead-letter queues: `/queue/orders` dead-letters to `/queue/DLQ.orders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_prefix: Option<String>,
}

/// The resolved policy for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// See [`DestinationPolicy::persistent`].
    pub persistent: bool,
    /// See [`DestinationPolicy::max_redeliveries`].
    pub max_redeliveries: u32,
    /// See [`DestinationPolicy::prefetch`].
    pub prefetch: u32,
    /// See [`DestinationPolicy::expired`].
    pub expired: ExpiredAction,
    /// See [`DestinationPolicy::dead_letter_prefix`].
    pub dead_letter_prefix: String,
}

/// Destination defaults plus per-pattern overrides.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Destinations {
    /// Defaults for every destination.
    #[serde(flatten)]
    pub defaults: DestinationPolicy,
    /// Overrides; the first matching policy wins per field.
    #[serde(rename = "policy", skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<DestinationPolicy>,
    #[serde(skip)]
    compiled: Vec<(Pattern, DestinationPolicy)>,
}

impl Default for Destinations {
    fn default() -> Self {
        Destinations {
            defaults: DestinationPolicy {
                pattern: None,
                persistent: Some(true),
                max_redeliveries: Some(6),
                prefetch: Some(1000),
                expired: Some(ExpiredAction::DeadLetter),
                dead_letter_prefix: Some("DLQ.".into()),
            },
            policies: Vec::new(),
            compiled: Vec::new(),
        }
    }
}

impl Destinations {
    fn compile(&mut self) -> Result<(), ConfigError> {
        let d = Destinations::default().defaults;
        let defaults = &mut self.defaults;
        defaults.persistent = defaults.persistent.or(d.persistent);
        defaults.max_redeliveries = defaults.max_redeliveries.or(d.max_redeliveries);
        defaults.prefetch = defaults.prefetch.or(d.prefetch);
        defaults.expired = defaults.expired.or(d.expired);
        defaults.dead_letter_prefix = defaults.dead_letter_prefix.take().or(d.dead_letter_prefix);
        if defaults.pattern.is_some() {
            return Err(invalid(
                "destinations.pattern",
                "patterns belong in [[destinations.policy]] entries",
            ));
        }
        if defaults.prefetch == Some(0) {
            return Err(invalid("destinations.prefetch", "must be at least 1"));
        }
        self.compiled.clear();
        for (i, p) in self.policies.iter().enumerate() {
            let key = format!("destinations.policy[{i}].pattern");
            let pat = p
                .pattern
                .as_deref()
                .ok_or_else(|| invalid(&key, "missing"))?
                .parse::<Pattern>()
                .map_err(|e| invalid(&key, e.to_string()))?;
            if p.prefetch == Some(0) {
                return Err(invalid(
                    format!("destinations.policy[{i}].prefetch"),
                    "must be at least 1",
                ));
            }
            self.compiled.push((pat, p.clone()));
        }
        Ok(())
    }

    /// The policy for `destination` (STOMP name).
    pub fn policy_for(&self, destination: &str) -> Policy {
        let mut r = DestinationPolicy::default();
        for (pat, p) in &self.compiled {
            if pat.matches(destination) {
                r.persistent = r.persistent.or(p.persistent);
                r.max_redeliveries = r.max_redeliveries.or(p.max_redeliveries);
                r.prefetch = r.prefetch.or(p.prefetch);
                r.expired = r.expired.or(p.expired);
                if r.dead_letter_prefix.is_none() {
                    r.dead_letter_prefix = p.dead_letter_prefix.clone();
                }
            }
        }
        let d = &self.defaults;
        Policy {
            persistent: r.persistent.or(d.persistent).unwrap_or(true),
            max_redeliveries: r.max_redeliveries.or(d.max_redeliveries).unwrap_or(6),
            prefetch: r.prefetch.or(d.prefetch).unwrap_or(1000),
            expired: r.expired.or(d.expired).unwrap_or(ExpiredAction::DeadLetter),
            dead_letter_prefix: r
                .dead_letter_prefix
                .or_else(|| d.dead_letter_prefix.clone())
                .unwrap_or_else(|| "DLQ.".into()),
        }
    }
}

/// The whole broker configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Client listeners.
    pub listen: Vec<String>,
    /// Data directory (journal and lock file).
    pub data_dir: PathBuf,
    /// Limits.
    pub limits: Limits,
    /// Journal.
    pub journal: JournalSettings,
    /// Authentication.
    pub auth: AuthSettings,
    /// The producer de-duplication table (`[producers]`).
    pub producers: ProducerSettings,
    /// The HTTP admin endpoint (`[admin]`).
    pub admin: AdminSettings,
    /// What one client may make the broker hold (`[quotas]`).
    pub quotas: Quotas,
    /// TLS for `stomp+ssl://` listeners (`[tls]`).
    pub tls: TlsSettings,
    /// Destination policies.
    pub destinations: Destinations,
    /// Who may read, write and create which destinations (`[[authorization]]`; none: everyone
    /// authenticated may do everything). See [`crate::authz`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<crate::authz::AuthorizationEntry>,
    #[serde(skip)]
    listeners: Vec<ListenUrl>,
    #[serde(skip)]
    tls_server: Option<Arc<rustls::ServerConfig>>,
    #[serde(skip)]
    authz: crate::authz::Authorization,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: vec!["stomp://0.0.0.0:61613".into()],
            data_dir: PathBuf::from("./data"),
            limits: Limits::default(),
            journal: JournalSettings::default(),
            auth: AuthSettings::default(),
            producers: ProducerSettings::default(),
            admin: AdminSettings::default(),
            quotas: Quotas::default(),
            tls: TlsSettings::default(),
            destinations: Destinations::default(),
            authorization: Vec::new(),
            listeners: Vec::new(),
            tls_server: None,
            authz: crate::authz::Authorization::default(),
        }
    }
}

impl BrokerConfig {
    /// Reads a TOML file (unknown keys are errors). Call [`BrokerConfig::validate`] after applying
    /// command-line overrides.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every value and compiles derived forms; names the key at fault.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one listener is required"));
        }
        self.listeners = self
            .listen
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.parse()
                    .map_err(|e: String| invalid(format!("listen[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if l.max_frame_bytes.0 < 1024 {
            return Err(invalid("limits.max_frame_bytes", "must be at least 1KiB"));
        }
        if l.max_frame_bytes.0 > (1 << 30) {
            return Err(invalid("limits.max_frame_bytes", "must be at most 1GiB"));
        }
        if l.max_headers == 0 {
            return Err(invalid("limits.max_headers", "must be at least 1"));
        }
        if l.max_header_line.0 < 64 {
            return Err(invalid(
                "limits.max_header_line",
                "must be at least 64 bytes",
            ));
        }
        if l.max_pending_bytes.0 < 64 * 1024 {
            return Err(invalid(
                "limits.max_pending_bytes",
                "must be at least 64KiB",
            ));
        }
        if l.connect_timeout.0.is_zero() {
            return Err(invalid("limits.connect_timeout", "must be more than 0s"));
        }
        if self.journal.segment_bytes.0 < (1 << 20) {
            return Err(invalid("journal.segment_bytes", "must be at least 1MiB"));
        }
        self.producers.validate()?;
        self.auth.validate()?;
        self.admin.resolve()?;
        self.quotas.validate()?;
        self.validate_tls()?;
        self.authz = crate::authz::Authorization::compile(&self.authorization)
            .map_err(|e| invalid(format!("authorization[{}].{}", e.index, e.field), e.reason))?;
        self.destinations.compile()
    }

    /// The compiled `[[authorization]]` entries (valid after [`BrokerConfig::validate`]).
    pub fn authorization(&self) -> &crate::authz::Authorization {
        &self.authz
    }

    /// Loads the `[tls]` files when a listener uses TLS (or the section is set at all, so a broken
    /// file is reported before it is needed).
    fn validate_tls(&mut self) -> Result<(), ConfigError> {
        let t = &self.tls;
        if t.client_auth == Some(ClientAuth::None) && t.client_ca.is_some() {
            return Err(invalid(
                "tls.client_auth",
                "is \"none\" but client_ca is set: use \"optional\" or \"required\", or remove client_ca",
            ));
        }
        self.tls_server = if self.listeners.iter().any(|l| l.tls) || t.is_set() {
            Some(crate::tls::server_config(t)?)
        } else {
            None
        };
        Ok(())
    }

    /// The TLS server configuration of `stomp+ssl://` listeners (after
    /// [`BrokerConfig::validate`]; `None` without a `[tls]` section).
    pub fn tls_server(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls_server.as_ref()
    }

    /// Listener URLs, parsed (valid after [`BrokerConfig::validate`]).
    pub fn listeners(&self) -> &[ListenUrl] {
        &self.listeners
    }

    /// Effective configuration as TOML (a commented default file is generated from this).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!("65536".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("10 MiB".parse::<ByteSize>().unwrap().0, 10 << 20);
        assert_eq!("1GB".parse::<ByteSize>().unwrap().0, 1_000_000_000);
        assert!("ten".parse::<ByteSize>().is_err());
        assert!("10 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn defaults_validate_and_round_trip() {
        let mut c = BrokerConfig::default();
        c.validate().unwrap();
        let text = c.to_toml();
        let mut back = BrokerConfig::from_toml(&text).unwrap();
        back.validate().unwrap();
        assert_eq!(back.listeners(), c.listeners());
        assert_eq!(back.limits.max_frame_bytes, c.limits.max_frame_bytes);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = BrokerConfig::from_toml("[limits]\nmax_conections = 3\n").unwrap_err();
        assert!(e.contains("max_conections"), "{e}");
        let mut c = BrokerConfig::from_toml("listen = [\"http://x:1\"]").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("listen[0]"), "{e}");
        let e = BrokerConfig::from_toml("[limits]\nconnect_timeout = \"soon\"\n").unwrap_err();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn policies_resolve_first_match_per_field() {
        let mut c = BrokerConfig::from_toml(
            r#"
            [destinations]
            max_redeliveries = 2
            [[destinations.policy]]
            pattern = "queue://events.>"
            persistent = false
            [[destinations.policy]]
            pattern = ">"
            prefetch = 10
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let p = c.destinations.policy_for("/queue/events.a");
        assert!(!p.persistent);
        assert_eq!(p.prefetch, 10);
        assert_eq!(p.max_redeliveries, 2);
        let p = c.destinations.policy_for("/queue/orders");
        assert!(p.persistent);
        assert_eq!(p.expired, ExpiredAction::DeadLetter);
    }

    #[test]
    fn admin_section() {
        let mut c = BrokerConfig::default();
        c.validate().unwrap();
        assert_eq!(
            c.admin.socket_addr(),
            Some(DEFAULT_ADMIN_LISTEN.parse().unwrap())
        );
        assert!(!c.admin.explicit());
        assert!(c.to_toml().contains("[admin]"), "{}", c.to_toml());
        let mut c = BrokerConfig::from_toml("[admin]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.admin.socket_addr(), Some("0.0.0.0:9000".parse().unwrap()));
        assert!(c.admin.explicit());
        for off in ["[admin]\nlisten = \"\"\n", "[admin]\nenabled = false\n"] {
            let mut c = BrokerConfig::from_toml(off).unwrap();
            c.validate().unwrap();
            assert_eq!(c.admin.socket_addr(), None, "{off}");
        }
        let mut c = BrokerConfig::from_toml("[admin]\nlisten = \"nowhere\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("admin.listen"), "{e}");
    }

    #[test]
    fn login_guard_and_admin_limits_are_checked_by_key() {
        let mut c = BrokerConfig::default();
        c.validate().unwrap();
        let text = c.to_toml();
        for key in [
            "allow_default_admin",
            "password_check_threads",
            "password_check_queue",
            "password_checks_per_address",
            "failure_backoff",
            "failure_backoff_max",
            "failure_table_size",
            "failure_forget_after",
            "failure_log_per_second",
            "max_connections",
            "header_read_timeout",
            "request_timeout",
        ] {
            assert!(
                text.contains(key),
                "{key} missing from --print-config:\n{text}"
            );
        }
        for (toml, key) in [
            (
                "[auth]\npassword_check_threads = 0\n",
                "auth.password_check_threads",
            ),
            (
                "[auth]\npassword_checks_per_address = 0\n",
                "auth.password_checks_per_address",
            ),
            (
                "[auth]\nfailure_backoff = \"10s\"\n",
                "auth.failure_backoff",
            ),
            (
                "[auth]\nfailure_table_size = 0\n",
                "auth.failure_table_size",
            ),
            ("[admin]\nmax_connections = 0\n", "admin.max_connections"),
            (
                "[admin]\nheader_read_timeout = \"0s\"\n",
                "admin.header_read_timeout",
            ),
            (
                "[admin]\nrequest_timeout = \"0s\"\n",
                "admin.request_timeout",
            ),
        ] {
            let mut c = BrokerConfig::from_toml(toml).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn tls_settings_are_checked() {
        // A TLS listener without [tls]: the key is named.
        let mut c = BrokerConfig::from_toml("listen = [\"stomp+ssl://127.0.0.1:0\"]").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tls.cert"), "{e}");
        let mut c = BrokerConfig::from_toml(
            "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("tls.cert") && e.contains("/nonexistent/c.pem"),
            "{e}"
        );
        let mut c =
            BrokerConfig::from_toml("[tls]\nclient_ca = \"/x.pem\"\nclient_auth = \"none\"\n")
                .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tls.client_auth"), "{e}");
        assert!(BrokerConfig::from_toml("[tls]\nclient_auth = \"maybe\"\n").is_err());
        // No TLS anywhere: nothing loaded.
        let mut c = BrokerConfig::default();
        c.validate().unwrap();
        assert!(c.tls_server().is_none());
    }

    #[test]
    fn quotas_section_is_printed_and_checked() {
        let mut c = BrokerConfig::default();
        c.validate().unwrap();
        let text = c.to_toml();
        assert!(text.contains("[quotas]"), "{text}");
        assert!(
            text.contains("max_subscriptions_per_connection = 1000"),
            "{text}"
        );
        assert!(text.contains("destination_idle_timeout = \"5m\""), "{text}");
        for bad in [
            "[quotas]\nmax_destinations = 0\n",
            "[quotas]\nmax_subscriptions_per_user = 0\n",
            "[quotas]\nmax_header_bytes = 10\n",
        ] {
            let mut c = BrokerConfig::from_toml(bad).unwrap();
            let e = c.validate().unwrap_err().to_string();
            let key = bad.lines().nth(1).unwrap().split(' ').next().unwrap();
            assert!(e.contains(&format!("quotas.{key}")), "{e}");
        }
        let mut c =
            BrokerConfig::from_toml("[quotas]\ndestination_idle_timeout = \"0s\"\n").unwrap();
        c.validate().unwrap();
        assert!(c.quotas.destination_idle_timeout.0.is_zero());
    }

    #[test]
    fn listen_urls() {
        let u: ListenUrl = "stomp://127.0.0.1:61613".parse().unwrap();
        assert_eq!(u.port, 61613);
        assert_eq!(u.to_string(), "stomp://127.0.0.1:61613");
        assert!(!u.tls);
        for tls in ["stomp+ssl://127.0.0.1:61614", "ssl://127.0.0.1:61614"] {
            let t: ListenUrl = tls.parse().unwrap();
            assert!(t.tls, "{tls}");
            assert_eq!(t.to_string(), "stomp+ssl://127.0.0.1:61614");
        }
        assert!("stomp://127.0.0.1".parse::<ListenUrl>().is_err());
        assert!("stomp://:1".parse::<ListenUrl>().is_err());
        assert!("stomp://h:99999".parse::<ListenUrl>().is_err());
    }
}

//! Authentication: who may connect.
//!
//! Users live in a TOML file of argon2 password hashes (PHC strings, as printed by
//! `mq-broker hash-password`):
//!
//! ```toml
//! [users.admin]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! groups = ["admins"]
//! ```
//!
//! Without a users file the documented default user `admin`/`admin` (the login the ActiveMQ and
//! fabric8 tutorials use) is active, and the broker logs a warning at start-up; in fabric mode or
//! on a non-loopback listener the broker refuses to start that way unless
//! `auth.allow_default_admin` says so ([`check_default_admin`]). Passwords are never logged and
//! never kept in clear; comparisons are constant-time (argon2 verification, or a constant-time
//! compare for the built-in default). An unknown login is checked against a dummy hash, so it
//! costs the same as a wrong password (no user enumeration by timing).
//!
//! A login costs an argon2 verification (19 MiB, tens of milliseconds), which an unauthenticated
//! client can ask for at will. [`Authenticator::login`] therefore guards it:
//! - [`pool`]: verifications run on a fixed pool of threads (`auth.password_check_threads`) behind
//!   a bounded queue (`auth.password_check_queue`), at most `auth.password_checks_per_address`
//!   per client address; beyond that the client gets `server busy` at once;
//! - [`throttle`]: after failures, attempts of the same address or login name are spaced out
//!   exponentially (`auth.failure_backoff` .. `auth.failure_backoff_max`) in bounded tables;
//! - [`loglimit`]: at most `auth.failure_log_per_second` failure lines are logged per second;
//! - [`stats`]: what `/metrics` shows of all three.

pub mod loglimit;
pub mod pool;
pub mod stats;
pub mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use serde::Deserialize;

/// Problems loading the users file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read users file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid users file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the user or key).
        message: String,
    },
}

/// Why a login was refused. The message (`message()`) goes into the ERROR frame's `message`
/// header, the display text into its body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Wrong login or passcode (which one is not told).
    #[error("the login or passcode is wrong")]
    Wrong,
    /// The password-check queue is full.
    #[error(
        "too many logins are being checked (auth.password_check_queue = {queue}); retry later"
    )]
    Busy {
        /// The configured queue length.
        queue: usize,
    },
    /// This address already has its share of the password-check pool.
    #[error("too many logins from this address are being checked (auth.password_checks_per_address = {limit}); retry later")]
    BusyAddress {
        /// The configured limit.
        limit: usize,
    },
    /// Back-off after failed logins would pass the CONNECT deadline.
    #[error("too many failed logins from this address or for this login; retry in {retry_after_ms} ms (auth.failure_backoff, auth.failure_backoff_max)")]
    BackedOff {
        /// When a retry could be checked.
        retry_after_ms: u64,
    },
    /// The CONNECT deadline passed while the check waited.
    #[error("the login was not checked within limits.connect_timeout")]
    Timeout,
}

impl LoginError {
    /// The short reason for the ERROR frame's `message` header.
    pub fn message(&self) -> &'static str {
        match self {
            LoginError::Wrong => "authentication failed",
            LoginError::Busy { .. } | LoginError::BusyAddress { .. } => "server busy",
            LoginError::BackedOff { .. } => "too many failed logins",
            LoginError::Timeout => "connect timeout",
        }
    }
}

/// How logins are guarded (from `[auth]`): see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct GuardSettings {
    /// `auth.password_check_threads`.
    pub threads: usize,
    /// `auth.password_check_queue`.
    pub queue: usize,
    /// `auth.password_checks_per_address`.
    pub per_address: usize,
    /// Back-off after failures.
    pub backoff: throttle::BackoffSettings,
    /// `auth.failure_log_per_second`.
    pub log_per_second: u32,
}

impl GuardSettings {
    /// The settings of an `[auth]` section.
    pub fn from_config(a: &crate::config::AuthSettings) -> GuardSettings {
        GuardSettings {
            threads: a.password_check_threads,
            queue: a.password_check_queue,
            per_address: a.password_checks_per_address,
            backoff: throttle::BackoffSettings {
                base: a.failure_backoff.0,
                max: a.failure_backoff_max.0,
                capacity: a.failure_table_size,
                forget_after: a.failure_forget_after.0,
            },
            log_per_second: a.failure_log_per_second,
        }
    }
}

struct Guard {
    settings: GuardSettings,
    stats: Arc<stats::AuthStats>,
    pool: pool::Pool,
    throttle: throttle::Throttle,
    log: loglimit::LogLimit,
}

impl Guard {
    fn new(settings: GuardSettings) -> Guard {
        let stats = Arc::new(stats::AuthStats::default());
        Guard {
            pool: pool::Pool::new(
                settings.threads,
                settings.queue,
                settings.per_address,
                stats.clone(),
            ),
            throttle: throttle::Throttle::new(settings.backoff, stats.clone()),
            log: loglimit::LogLimit::new(settings.log_per_second, stats.clone()),
            settings,
            stats,
        }
    }
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Login name (`anonymous` when anonymous access is allowed and no login was given).
    pub user: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: HashMap<String, UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    password: String,
    #[serde(default)]
    groups: Vec<String>,
}

enum Credential {
    /// The built-in default `admin`/`admin`.
    DefaultAdmin,
    /// An argon2 PHC hash.
    Hash(String),
}

struct User {
    credential: Credential,
    groups: Vec<String>,
}

/// Checks logins. Cheap to share behind an `Arc`.
pub struct Authenticator {
    users: HashMap<String, User>,
    allow_anonymous: bool,
    using_default: bool,
    guard: Guard,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.len())
            .field("allow_anonymous", &self.allow_anonymous)
            .field("using_default", &self.using_default)
            .finish()
    }
}

/// The name of the built-in default user.
pub const DEFAULT_USER: &str = "admin";

impl Authenticator {
    /// Loads users from `users_file`, or sets up the default `admin`/`admin` user when `None`.
    pub fn load(users_file: Option<&Path>, allow_anonymous: bool) -> Result<Self, AuthError> {
        let Some(path) = users_file else {
            let mut users = HashMap::new();
            users.insert(
                DEFAULT_USER.to_string(),
                User {
                    credential: Credential::DefaultAdmin,
                    groups: vec!["admins".into()],
                },
            );
            return Ok(Authenticator {
                users,
                allow_anonymous,
                using_default: true,
                guard: Guard::new(default_guard()),
            });
        };
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, allow_anonymous).map_err(|message| AuthError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    fn from_toml(text: &str, allow_anonymous: bool) -> Result<Self, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut users = HashMap::new();
        for (name, entry) in file.users {
            PasswordHash::new(&entry.password).map_err(|e| {
                format!("user {name:?}: password is not an argon2 hash ({e}); use `mq-broker hash-password`")
            })?;
            users.insert(
                name,
                User {
                    credential: Credential::Hash(entry.password),
                    groups: entry.groups,
                },
            );
        }
        Ok(Authenticator {
            users,
            allow_anonymous,
            using_default: false,
            guard: Guard::new(default_guard()),
        })
    }

    /// Loads the users of an `[auth]` section and guards logins with its limits.
    pub fn from_config(a: &crate::config::AuthSettings) -> Result<Self, AuthError> {
        let mut auth = Self::load(a.users_file.as_deref(), a.allow_anonymous)?;
        auth.guard = Guard::new(GuardSettings::from_config(a));
        Ok(auth)
    }

    /// The guard's counters (for `/metrics`).
    pub fn stats(&self) -> &stats::AuthStats {
        &self.guard.stats
    }

    /// Checks a login from a client at `peer`, guarded by the password-check pool and the
    /// back-off, giving up at `deadline` (the CONNECT deadline). Logs refusals, rate-limited.
    pub async fn login(
        &self,
        login: Option<&str>,
        passcode: Option<&str>,
        peer: IpAddr,
        deadline: tokio::time::Instant,
    ) -> Result<Principal, LoginError> {
        let result = self.login_unlogged(login, passcode, peer, deadline).await;
        if let Err(e) = &result {
            match self.guard.log.check() {
                loglimit::Verdict::Write { suppressed: 0 } => {
                    tracing::warn!(login = login.unwrap_or(""), %peer, reason = e.message(), "login refused");
                }
                loglimit::Verdict::Write { suppressed } => {
                    tracing::warn!(login = login.unwrap_or(""), %peer, reason = e.message(), suppressed, "login refused (and {suppressed} more not logged: auth.failure_log_per_second)");
                }
                loglimit::Verdict::Drop => {}
            }
        }
        result
    }

    async fn login_unlogged(
        &self,
        login: Option<&str>,
        passcode: Option<&str>,
        peer: IpAddr,
        deadline: tokio::time::Instant,
    ) -> Result<Principal, LoginError> {
        let Some(name) = login.filter(|l| !l.is_empty()) else {
            return self.authenticate(None, None).ok_or(LoginError::Wrong);
        };
        let passcode = passcode.unwrap_or("");
        let hash = match self.users.get(name).map(|u| &u.credential) {
            // The built-in default costs no argon2: checked at once, without the guard.
            Some(Credential::DefaultAdmin) => {
                return self
                    .authenticate(Some(name), Some(passcode))
                    .ok_or(LoginError::Wrong)
            }
            Some(Credential::Hash(h)) => h.clone(),
            None => DUMMY_HASH.to_string(),
        };
        let g = &self.guard;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match g.throttle.admit(peer, name, remaining) {
            throttle::Decision::Go => {}
            throttle::Decision::Wait(d) => tokio::time::sleep(d).await,
            throttle::Decision::Refuse { retry_after } => {
                return Err(LoginError::BackedOff {
                    retry_after_ms: retry_after.as_millis() as u64,
                })
            }
        }
        let mut ticket =
            g.pool
                .submit(peer, hash, passcode.to_string())
                .map_err(|full| match full {
                    pool::PoolFull::Queue => LoginError::Busy {
                        queue: g.settings.queue,
                    },
                    pool::PoolFull::Address => LoginError::BusyAddress {
                        limit: g.settings.per_address,
                    },
                })?;
        let ok = tokio::time::timeout_at(deadline, ticket.result())
            .await
            .map_err(|_| LoginError::Timeout)?;
        let user = self.users.get(name).filter(|_| ok);
        match user {
            Some(u) => {
                g.throttle.succeeded(peer, name);
                Ok(Principal {
                    user: name.to_string(),
                    groups: u.groups.clone(),
                })
            }
            None => {
                g.throttle.failed(peer, name);
                Err(LoginError::Wrong)
            }
        }
    }

    /// True when the built-in default user is active (the broker warns about it).
    pub fn using_default_credentials(&self) -> bool {
        self.using_default
    }

    /// Checks a login. Blocking (argon2 takes milliseconds on purpose): call it from
    /// `spawn_blocking`. Returns `None` for a wrong login; the reason is not told to the client.
    pub fn authenticate(&self, login: Option<&str>, passcode: Option<&str>) -> Option<Principal> {
        let Some(login) = login.filter(|l| !l.is_empty()) else {
            return self.allow_anonymous.then(|| Principal {
                user: "anonymous".into(),
                groups: Vec::new(),
            });
        };
        let passcode = passcode.unwrap_or("");
        let Some(user) = self.users.get(login) else {
            // Spend comparable time so that unknown users are not distinguishable by timing.
            let _ = verify_hash(DUMMY_HASH, passcode);
            return None;
        };
        let ok = match &user.credential {
            Credential::DefaultAdmin => constant_time_eq(passcode.as_bytes(), b"admin"),
            Credential::Hash(h) => verify_hash(h, passcode),
        };
        ok.then(|| Principal {
            user: login.to_string(),
            groups: user.groups.clone(),
        })
    }
}

fn default_guard() -> GuardSettings {
    GuardSettings::from_config(&crate::config::AuthSettings::default())
}

/// Refuses the built-in `admin`/`admin` login where it would be reachable by others: in fabric
/// mode (`fabric`) or when any client listener binds a non-loopback address, unless
/// `auth.allow_default_admin` (`--allow-default-admin`) is set, which is then logged as a warning
/// saying what it gives up. Does nothing when a users file is configured.
pub fn check_default_admin(
    config: &crate::config::BrokerConfig,
    fabric: bool,
) -> Result<(), DefaultAdminRefused> {
    if config.auth.users_file.is_some() {
        return Ok(());
    }
    let exposed: Vec<String> = config
        .listeners()
        .iter()
        .filter(|l| !l.socket_addr().is_ok_and(|a| a.ip().is_loopback()))
        .map(|l| l.to_string())
        .collect();
    if !fabric && exposed.is_empty() {
        return Ok(());
    }
    let why = if fabric {
        "the broker runs in fabric mode".to_string()
    } else {
        format!("listener {} is not loopback-only", exposed.join(", "))
    };
    if config.auth.allow_default_admin {
        tracing::warn!(
            "{why} and no users file is configured: the built-in login admin/admin is active because auth.allow_default_admin (--allow-default-admin) is set; anyone who can reach a listener can log in as admin and read, write and administer every destination"
        );
        return Ok(());
    }
    Err(DefaultAdminRefused { why })
}

/// The built-in `admin`/`admin` login would be exposed: see [`check_default_admin`].
#[derive(Debug, thiserror::Error)]
#[error("{why} and no users file is configured, so the built-in login admin/admin would be open to anyone: pass --users FILE (auth.users_file; hashes from `mq-broker hash-password`), or --allow-default-admin (auth.allow_default_admin) to accept that risk")]
pub struct DefaultAdminRefused {
    why: String,
}

/// A valid argon2 hash of a random string, used to even out timing for unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$mMCq1hQ0yqmYBK0hRU3y3E6Q0dZB3LYyW8eUHlyk8bE";

pub(crate) fn verify_hash(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Hashes a password for the users file (argon2id with the crate's recommended parameters).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_admin() {
        let a = Authenticator::load(None, false).unwrap();
        assert!(a.using_default_credentials());
        assert_eq!(
            a.authenticate(Some("admin"), Some("admin")).unwrap().user,
            "admin"
        );
        assert!(a.authenticate(Some("admin"), Some("admin1")).is_none());
        assert!(a.authenticate(Some("admin"), None).is_none());
        assert!(a.authenticate(None, None).is_none());
        assert!(a.authenticate(Some("bob"), Some("admin")).is_none());
    }

    #[test]
    fn hashed_users_and_anonymous() {
        let h = hash_password("s3cret").unwrap();
        let text = format!("[users.bob]\npassword = \"{h}\"\ngroups = [\"apps\"]\n");
        let a = Authenticator::from_toml(&text, true).unwrap();
        let p = a.authenticate(Some("bob"), Some("s3cret")).unwrap();
        assert_eq!(p.groups, vec!["apps".to_string()]);
        assert!(a.authenticate(Some("bob"), Some("wrong")).is_none());
        assert!(a.authenticate(Some("admin"), Some("admin")).is_none());
        assert_eq!(a.authenticate(None, None).unwrap().user, "anonymous");
    }

    #[test]
    fn clear_text_passwords_are_refused() {
        let e = Authenticator::from_toml("[users.bob]\npassword = \"plain\"\n", false).unwrap_err();
        assert!(e.contains("bob"), "{e}");
    }

    #[test]
    fn default_admin_only_on_loopback_standalone_unless_allowed() {
        let config = |listen: &str, users: bool, allow: bool| {
            let mut c = crate::config::BrokerConfig::default();
            c.listen = vec![listen.to_string()];
            c.auth.users_file = users.then(|| PathBuf::from("/etc/users.toml"));
            c.auth.allow_default_admin = allow;
            c.validate().unwrap();
            c
        };
        assert!(check_default_admin(&config("stomp://127.0.0.1:0", false, false), false).is_ok());
        assert!(check_default_admin(&config("stomp://[::1]:0", false, false), false).is_ok());
        let e = check_default_admin(&config("stomp://0.0.0.0:61613", false, false), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0.0.0.0") && e.contains("--users"), "{e}");
        let e = check_default_admin(&config("stomp://127.0.0.1:0", false, false), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fabric mode") && e.contains("--allow-default-admin"),
            "{e}"
        );
        assert!(check_default_admin(&config("stomp://0.0.0.0:0", false, true), true).is_ok());
        assert!(check_default_admin(&config("stomp://0.0.0.0:0", true, false), true).is_ok());
    }

    #[tokio::test]
    async fn login_is_guarded_by_the_pool_and_the_back_off() {
        let h = hash_password("s3cret").unwrap();
        let text = format!("[users.bob]\npassword = \"{h}\"\n");
        let mut a = Authenticator::from_toml(&text, false).unwrap();
        let mut settings = default_guard();
        // Long enough that no stall of a loaded machine lets the back-off lapse in this test.
        settings.backoff.base = std::time::Duration::from_secs(60);
        settings.backoff.max = std::time::Duration::from_secs(60);
        a.guard = Guard::new(settings);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let later = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
        let p = a
            .login(Some("bob"), Some("s3cret"), ip, later)
            .await
            .unwrap();
        assert_eq!(p.user, "bob");
        assert_eq!(
            a.login(Some("bob"), Some("nope"), ip, later).await,
            Err(LoginError::Wrong)
        );
        // Back-off after a failure: an attempt due before its slot is refused, not waited for.
        let now = tokio::time::Instant::now();
        assert!(matches!(
            a.login(Some("bob"), Some("s3cret"), ip, now).await,
            Err(LoginError::BackedOff { .. })
        ));
        assert!(matches!(
            a.login(
                Some("eve"),
                Some("nope"),
                "10.9.9.9".parse().unwrap(),
                later
            )
            .await,
            Err(LoginError::Wrong)
        ));
        assert_eq!(
            a.stats()
                .checks_total
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }

    #[test]
    fn dummy_hash_is_valid() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}

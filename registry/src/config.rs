//! Where and how to reach ZooKeeper: [`RegistryConfig`] and its connect-string parser.
//!
//! The connect string has ZooKeeper's usual shape, `host:port[,host:port...][/chroot]`. A missing
//! port means 2181 (as in ZooKeeper's own clients); IPv6 hosts go in brackets (`[::1]:2181`).
//! Parse errors name the bad part. `Display` writes the servers and chroot back in the same form.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::RegistryError;
use crate::layout::DEFAULT_ROOT;

/// ZooKeeper's default client port, used when a server entry has none.
pub const DEFAULT_PORT: u16 = 2181;

/// Where and how to reach ZooKeeper. Parsed from `"host:port[,host:port...][/chroot]"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The ensemble's servers, `(host, port)`; an IPv6 host is stored without brackets.
    pub servers: Vec<(String, u16)>,
    /// Optional chroot every path is relative to (created on connect if missing).
    pub chroot: Option<String>,
    /// Root of fabricmq's nodes inside the chroot (default [`DEFAULT_ROOT`], `/fabric`).
    pub root: String,
    /// Session timeout requested from ZooKeeper (default 4 s; the server clamps it to its
    /// `minSessionTimeout..maxSessionTimeout`).
    pub session_timeout: Duration,
    /// The first connect gives up after this (default 5 s) with [`RegistryError::Unreachable`].
    pub connect_timeout: Duration,
    /// Every ZooKeeper call is bounded by this (default 2 s) and fails with
    /// [`RegistryError::Timeout`] after it.
    pub op_timeout: Duration,
    /// Digest credentials. With them the session authenticates, and every node it creates gets
    /// the ACL "the authenticated creator's identity: all; anyone: read" (brokers and `mq-fabric`
    /// write, discovery clients read). Never taken from a command-line argument: see
    /// [`ZkCredentials::from_env_or_file`].
    pub credentials: Option<ZkCredentials>,
}

/// ZooKeeper digest credentials (`user:password`). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkCredentials {
    /// The digest user.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for ZkCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkCredentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Environment variable holding `user:password` for the registry.
pub const AUTH_ENV: &str = "FABRIC_ZK_AUTH";
/// Environment variable naming a file that holds `user:password` for the registry.
pub const AUTH_FILE_ENV: &str = "FABRIC_ZK_AUTH_FILE";
/// Environment variable that, set to a true value (`1`, `true`, `yes`), lets a process write the
/// registry without credentials (the `--zk-insecure` flag of `mq-broker` and `mq-fabric`).
pub const INSECURE_ENV: &str = "FABRIC_ZK_INSECURE";

/// What running without registry credentials gives up (logged at WARN by
/// [`RegistryConfig::require_credentials`] when the insecure flag allows it).
pub const INSECURE_WARNING: &str = "running WITHOUT registry credentials (--zk-insecure): every node this process creates is writable by anyone who can reach ZooKeeper; they can redirect clients to another endpoint (rewrite the master record), yield or delete the master, change the group's epoch and change profiles. Set --zk-auth-file FILE (or FABRIC_ZK_AUTH_FILE / FABRIC_ZK_AUTH) to secure the fabric";

impl ZkCredentials {
    /// Parses `user:password` (surrounding whitespace and a trailing newline are ignored).
    pub fn parse(text: &str) -> Result<ZkCredentials, RegistryError> {
        let text = text.trim();
        let fail = |reason: &str| RegistryError::Config {
            input: "ZooKeeper credentials".into(),
            reason: reason.into(),
        };
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| fail("expected user:password"))?;
        if user.is_empty() || password.is_empty() {
            return Err(fail("user and password must not be empty (user:password)"));
        }
        Ok(ZkCredentials {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Reads `user:password` from `path` (the file should be readable by its owner only: a WARN
    /// names a file that group or others may read or write).
    pub fn from_file(path: &std::path::Path) -> Result<ZkCredentials, RegistryError> {
        if let Some(mode) = open_to_others(path) {
            tracing::warn!(
                file = %path.display(),
                mode = %format_args!("{mode:04o}"),
                "the registry credentials file is readable or writable by other users: anyone who reads it can redirect the fabric's clients; chmod 600 it"
            );
        }
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError::Config {
            input: path.display().to_string(),
            reason: format!("cannot read the ZooKeeper credentials file: {e}"),
        })?;
        Self::parse(&text).map_err(|e| match e {
            RegistryError::Config { reason, .. } => RegistryError::Config {
                input: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Credentials from `file` if given, else from the file named by `FABRIC_ZK_AUTH_FILE`,
    /// else from `FABRIC_ZK_AUTH`; `None` when none is set.
    pub fn from_env_or_file(
        file: Option<&std::path::Path>,
    ) -> Result<Option<ZkCredentials>, RegistryError> {
        if let Some(f) = file {
            return Self::from_file(f).map(Some);
        }
        if let Some(f) = std::env::var_os(AUTH_FILE_ENV) {
            return Self::from_file(std::path::Path::new(&f)).map(Some);
        }
        match std::env::var(AUTH_ENV) {
            Ok(v) => Self::parse(&v).map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// The permission bits of `path` if group or others have any right on it (`None` if not, or if
/// it cannot be read).
pub fn open_to_others(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

impl RegistryConfig {
    /// Default session timeout.
    pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(4);
    /// Default connect timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default operation timeout.
    pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);

    /// These settings with `credentials`.
    pub fn with_credentials(mut self, credentials: Option<ZkCredentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Secure by default: a process that writes the registry (`what`, e.g. "mq-broker in fabric
    /// mode") must have credentials. Without them it is refused with
    /// [`RegistryError::CredentialsRequired`] (the message says how to fix it) unless `insecure`
    /// (the explicit `--zk-insecure` / [`INSECURE_ENV`] flag) is set, in which case
    /// [`INSECURE_WARNING`] is logged at WARN and `Ok` returned.
    pub fn require_credentials(&self, what: &str, insecure: bool) -> Result<(), RegistryError> {
        if self.credentials.is_some() {
            if insecure {
                tracing::info!("registry credentials are set: --zk-insecure has no effect");
            }
            return Ok(());
        }
        if insecure {
            tracing::warn!("{what}: {INSECURE_WARNING}");
            return Ok(());
        }
        Err(RegistryError::CredentialsRequired {
            what: what.to_owned(),
        })
    }

    /// Parses `"host:port[,host:port...][/chroot]"`; the other settings get their defaults.
    /// Errors ([`RegistryError::Config`]) name the bad part.
    pub fn parse(connect: &str) -> Result<Self, RegistryError> {
        let fail = |reason: String| RegistryError::Config {
            input: connect.to_string(),
            reason,
        };
        let input = connect.trim();
        if input.is_empty() {
            return Err(fail(
                "empty connect string (expected host:port[,host:port...][/chroot])".into(),
            ));
        }
        let (hosts, chroot) = match input.find('/') {
            Some(i) => (&input[..i], Some(&input[i..])),
            None => (input, None),
        };
        let chroot = match chroot {
            None | Some("/") => None,
            Some(c) => {
                validate_path(c).map_err(|why| fail(format!("bad chroot {c:?}: {why}")))?;
                Some(c.to_string())
            }
        };
        let mut servers = Vec::new();
        for (i, entry) in hosts.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(fail(format!(
                    "empty server entry #{} (stray comma?)",
                    i + 1
                )));
            }
            servers.push(parse_server(entry).map_err(fail)?);
        }
        Ok(Self {
            servers,
            chroot,
            ..Self::defaults()
        })
    }

    fn defaults() -> Self {
        Self {
            servers: Vec::new(),
            chroot: None,
            root: DEFAULT_ROOT.to_string(),
            session_timeout: Self::DEFAULT_SESSION_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            op_timeout: Self::DEFAULT_OP_TIMEOUT,
            credentials: None,
        }
    }

    /// Sets [`root`](Self::root).
    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }

    /// Sets [`session_timeout`](Self::session_timeout).
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`op_timeout`](Self::op_timeout).
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The servers as `host:port,host:port` (no chroot).
    pub fn servers_string(&self) -> String {
        self.servers
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The root with any trailing `/` removed (empty when the root is `/`).
    pub(crate) fn normalized_root(&self) -> Result<String, RegistryError> {
        let root = self.root.trim_end_matches('/');
        if root.is_empty() {
            return Ok(String::new());
        }
        validate_path(root).map_err(|why| RegistryError::Config {
            input: self.root.clone(),
            reason: format!("bad registry root: {why}"),
        })?;
        Ok(root.to_string())
    }
}

impl FromStr for RegistryConfig {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for RegistryConfig {
    /// `host:port[,host:port...][/chroot]`: parses back to the same servers and chroot.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.servers_string())?;
        if let Some(chroot) = &self.chroot {
            f.write_str(chroot)?;
        }
        Ok(())
    }
}

fn parse_server(entry: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!(
                "server {entry:?}: missing ']' after the IPv6 address"
            ));
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!("server {entry:?}: bad IPv6 address {host:?}"));
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => {
                    return Err(format!(
                        "server {entry:?}: expected ':port' after ']', got {after:?}"
                    ))
                }
            },
        };
        (host, port)
    } else {
        match entry.split_once(':') {
            Some((h, p)) => {
                if p.contains(':') {
                    return Err(format!(
                        "server {entry:?}: too many ':' (write IPv6 addresses as [addr]:port)"
                    ));
                }
                (h, Some(p))
            }
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err(format!("server {entry:?}: empty host"));
    }
    if !entry.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(format!("server {entry:?}: bad host {host:?}"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return Err(format!("server {entry:?}: port 0 is not usable")),
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "server {entry:?}: bad port {p:?} (expected 1-65535)"
                ))
            }
        },
    };
    Ok((host.to_string(), port))
}

/// Checks an absolute ZooKeeper path (not `/` itself): leading `/`, no trailing `/`, no empty,
/// `.` or `..` segments, no control characters.
pub(crate) fn validate_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    if rest.is_empty() {
        return Err("must name a node below '/'".into());
    }
    for segment in rest.split('/') {
        validate_name(segment)?;
    }
    Ok(())
}

/// Checks one node name (a path segment): non-empty, not `.`/`..`, no `/`, no control characters.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty path segment".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not allowed as a node name"));
    }
    if name.contains('/') {
        return Err(format!("{name:?} contains '/'"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(format!("{name:?} contains a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn parses_servers_and_chroot() {
        let c = RegistryConfig::parse("zk1:2181,zk2:2182/fabric/prod").unwrap();
        assert_eq!(
            c.servers,
            vec![("zk1".to_string(), 2181), ("zk2".to_string(), 2182)]
        );
        assert_eq!(c.chroot.as_deref(), Some("/fabric/prod"));
        assert_eq!(c.root, "/fabric");
        assert_eq!(c.session_timeout, Duration::from_secs(4));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.op_timeout, Duration::from_secs(2));
    }

    #[test]
    fn defaults_port_and_accepts_ipv6() {
        let c: RegistryConfig = "zk1,[::1]:2183,10.0.0.1".parse().unwrap();
        assert_eq!(
            c.servers,
            vec![
                ("zk1".to_string(), 2181),
                ("::1".to_string(), 2183),
                ("10.0.0.1".to_string(), 2181)
            ]
        );
        assert_eq!(c.chroot, None);
        assert_eq!(c.to_string(), "zk1:2181,[::1]:2183,10.0.0.1:2181");
        let c = RegistryConfig::parse("127.0.0.1:2181/").unwrap();
        assert_eq!(c.chroot, None);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "127.0.0.1:2181",
            "zk1:2181,zk2:2182,zk3:2183/fabric/prod",
            "[::1]:2181/t1",
            "zk-1.example.com:65535",
        ] {
            let c = RegistryConfig::parse(s).unwrap();
            assert_eq!(c.to_string(), s);
            assert_eq!(RegistryConfig::parse(&c.to_string()).unwrap(), c);
        }
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases = [
            ("", "empty connect string"),
            ("   ", "empty connect string"),
            ("zk1:abc", "bad port \"abc\""),
            ("zk1:2181,zk2:99999", "bad port \"99999\""),
            ("zk1:0", "port 0"),
            ("zk1:-1", "bad port \"-1\""),
            ("zk1:2181,,zk2:2181", "empty server entry #2"),
            ("zk1:2181,", "empty server entry #2"),
            (":2181", "empty host"),
            ("zk 1:2181", "bad host \"zk 1\""),
            ("::1:2181", "too many ':'"),
            ("[::1:2181", "missing ']'"),
            ("[::1]x", "expected ':port'"),
            ("zk1:2181/fabric/", "bad chroot \"/fabric/\""),
            ("zk1:2181//fabric", "bad chroot \"//fabric\""),
            ("zk1:2181/a/../b", "bad chroot"),
        ];
        for (input, expected) in cases {
            let err = RegistryConfig::parse(input).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{input:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(expected),
                "{input:?}: {msg:?} lacks {expected:?}"
            );
            assert!(
                msg.contains(&format!("{input:?}")),
                "{msg:?} lacks the input"
            );
        }
    }

    #[test]
    fn credentials_files_open_to_others_are_detected() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zk-auth");
        std::fs::write(&path, "u:p\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(open_to_others(&path), Some(0o644));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(open_to_others(&path), None);
        assert_eq!(ZkCredentials::from_file(&path).unwrap().user, "u");
    }

    #[test]
    fn writers_need_credentials_unless_insecure() {
        let c = RegistryConfig::parse("zk1").unwrap();
        let err = c.require_credentials("mq-broker", false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CredentialsRequired);
        let msg = err.to_string();
        for part in [
            "--zk-auth-file",
            "FABRIC_ZK_AUTH_FILE",
            "--zk-insecure",
            "redirect",
        ] {
            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
        }
        assert!(c.require_credentials("mq-broker", true).is_ok());
        let c = c.with_credentials(Some(ZkCredentials::parse("u:p").unwrap()));
        assert!(c.require_credentials("mq-broker", false).is_ok());
    }

    #[test]
    fn root_is_normalized_and_checked() {
        let c = RegistryConfig::parse("zk1").unwrap();
        assert_eq!(c.normalized_root().unwrap(), "/fabric");
        assert_eq!(c.clone().with_root("/x/").normalized_root().unwrap(), "/x");
        assert_eq!(c.clone().with_root("/").normalized_root().unwrap(), "");
        assert_eq!(
            c.with_root("fabric").normalized_root().unwrap_err().kind(),
            ErrorKind::Config
        );
    }
}

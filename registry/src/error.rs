//! Errors of every registry operation.
//!
//! This module owns [`RegistryError`] (what callers match on, with the node path or connect string
//! as context) and the single mapping from the ZooKeeper library's errors to it, so no library type
//! leaks out of the crate.

use std::time::Duration;

use zookeeper_client as zk;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The connect string (or another setting) is malformed.
    #[error("invalid ZooKeeper connect string {input:?}: {reason}")]
    Config {
        /// The rejected input.
        input: String,
        /// What is wrong with it, naming the bad part.
        reason: String,
    },
    /// No ZooKeeper server answered within the connect timeout.
    #[error("ZooKeeper unreachable at {servers} (gave up after {after:?})")]
    Unreachable {
        /// The servers tried (`host:port,...`).
        servers: String,
        /// How long connecting was tried.
        after: Duration,
    },
    /// The operation got no answer within the operation timeout (connection suspended or hung).
    #[error("ZooKeeper {op} on {path} timed out after {after:?}")]
    Timeout {
        /// The operation (`get`, `create`, ...).
        op: &'static str,
        /// The node path.
        path: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The session is gone (expired, or closed): build a new `Registry` and re-contend.
    #[error("ZooKeeper session expired or closed")]
    SessionExpired,
    /// The connection dropped (or hung) while the operation was in flight; the session may still be
    /// alive, and a write may or may not have been applied.
    #[error("ZooKeeper connection lost during {op} on {path}")]
    ConnectionLoss {
        /// The operation.
        op: &'static str,
        /// The node path.
        path: String,
    },
    /// The node does not exist.
    #[error("ZooKeeper node {path} does not exist")]
    NoNode {
        /// The node path.
        path: String,
    },
    /// The node already exists.
    #[error("ZooKeeper node {path} already exists")]
    NodeExists {
        /// The node path.
        path: String,
    },
    /// The node's version is not the expected one (someone else wrote it first).
    #[error("ZooKeeper node {path} was changed by someone else (version mismatch)")]
    BadVersion {
        /// The node path.
        path: String,
    },
    /// A node holds content that is not the expected JSON, or a name is not usable in a path.
    #[error("invalid ZooKeeper node {path}: {reason}")]
    Invalid {
        /// The node path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// ZooKeeper refused the operation: the node's ACL does not allow this session (missing or
    /// wrong credentials).
    #[error("ZooKeeper refused {op} on {path}: not authorized (set the fabric's registry credentials: FABRIC_ZK_AUTH_FILE or FABRIC_ZK_AUTH)")]
    NoAuth {
        /// The operation.
        op: &'static str,
        /// The node path.
        path: String,
    },
    /// A process that writes the registry was started without credentials and without the
    /// explicit insecure flag (see [`crate::config::RegistryConfig::require_credentials`]).
    #[error("{what} needs registry credentials: without them every node it writes is open to anyone who can reach ZooKeeper (they could redirect clients to another endpoint, yield or delete the master, change profiles). Set --zk-auth-file FILE (a file holding user:password, mode 0600), or FABRIC_ZK_AUTH_FILE=FILE, or FABRIC_ZK_AUTH=user:password; to run without credentials anyway pass --zk-insecure (or FABRIC_ZK_INSECURE=1)")]
    CredentialsRequired {
        /// Who needs them (`mq-broker in fabric mode`, `mq-fabric profile create`, ...).
        what: String,
    },
    /// Any other ZooKeeper failure.
    #[error("ZooKeeper {op} on {path} failed: {message}")]
    Other {
        /// The operation.
        op: &'static str,
        /// The node path.
        path: String,
        /// The library's message.
        message: String,
    },
}

/// The variant of a [`RegistryError`] without its context, for comparisons in code and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`RegistryError::Config`].
    Config,
    /// [`RegistryError::Unreachable`].
    Unreachable,
    /// [`RegistryError::Timeout`].
    Timeout,
    /// [`RegistryError::SessionExpired`].
    SessionExpired,
    /// [`RegistryError::ConnectionLoss`].
    ConnectionLoss,
    /// [`RegistryError::NoNode`].
    NoNode,
    /// [`RegistryError::NodeExists`].
    NodeExists,
    /// [`RegistryError::BadVersion`].
    BadVersion,
    /// [`RegistryError::Invalid`].
    Invalid,
    /// [`RegistryError::NoAuth`].
    NoAuth,
    /// [`RegistryError::CredentialsRequired`].
    CredentialsRequired,
    /// [`RegistryError::Other`].
    Other,
}

impl RegistryError {
    /// The variant, without context.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Config { .. } => ErrorKind::Config,
            RegistryError::Unreachable { .. } => ErrorKind::Unreachable,
            RegistryError::Timeout { .. } => ErrorKind::Timeout,
            RegistryError::SessionExpired => ErrorKind::SessionExpired,
            RegistryError::ConnectionLoss { .. } => ErrorKind::ConnectionLoss,
            RegistryError::NoNode { .. } => ErrorKind::NoNode,
            RegistryError::NodeExists { .. } => ErrorKind::NodeExists,
            RegistryError::BadVersion { .. } => ErrorKind::BadVersion,
            RegistryError::Invalid { .. } => ErrorKind::Invalid,
            RegistryError::NoAuth { .. } => ErrorKind::NoAuth,
            RegistryError::CredentialsRequired { .. } => ErrorKind::CredentialsRequired,
            RegistryError::Other { .. } => ErrorKind::Other,
        }
    }

    /// Whether the same session may still work after this error (connection loss or timeout):
    /// retrying, after the session is `Connected` again, can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Timeout { .. } | RegistryError::ConnectionLoss { .. }
        )
    }

    /// Maps a library error for `op` on `path`.
    pub(crate) fn from_zk(op: &'static str, path: &str, err: zk::Error) -> Self {
        let path = path.to_string();
        match err {
            zk::Error::NoNode => RegistryError::NoNode { path },
            zk::Error::NodeExists => RegistryError::NodeExists { path },
            zk::Error::BadVersion => RegistryError::BadVersion { path },
            zk::Error::NoAuth | zk::Error::AuthFailed => RegistryError::NoAuth { op, path },
            zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::ClientClosed => {
                RegistryError::SessionExpired
            }
            // `Custom` is how the library reports a hung connection ("no response from connection
            // in N ms") or an I/O error on it: the same situation as a dropped connection.
            zk::Error::ConnectionLoss | zk::Error::Custom(_) => {
                tracing::debug!(op, %path, error = %err, "ZooKeeper connection lost");
                RegistryError::ConnectionLoss { op, path }
            }
            other => RegistryError::Other {
                op,
                path,
                message: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_map_to_kinds() {
        let k = |e| RegistryError::from_zk("get", "/a", e).kind();
        assert_eq!(k(zk::Error::NoNode), ErrorKind::NoNode);
        assert_eq!(k(zk::Error::NodeExists), ErrorKind::NodeExists);
        assert_eq!(k(zk::Error::BadVersion), ErrorKind::BadVersion);
        assert_eq!(k(zk::Error::SessionExpired), ErrorKind::SessionExpired);
        assert_eq!(k(zk::Error::ClientClosed), ErrorKind::SessionExpired);
        assert_eq!(k(zk::Error::ConnectionLoss), ErrorKind::ConnectionLoss);
        assert_eq!(k(zk::Error::NoAuth), ErrorKind::NoAuth);
    }

    #[test]
    fn messages_carry_context() {
        let e = RegistryError::from_zk("delete", "/fabric/profiles/p", zk::Error::NoNode);
        assert_eq!(
            e.to_string(),
            "ZooKeeper node /fabric/profiles/p does not exist"
        );
        let e = RegistryError::from_zk("set", "/x", zk::Error::NoAuth);
        assert!(e.to_string().contains("refused set on /x"), "{e}");
    }
}

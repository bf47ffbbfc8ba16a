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
//! fabric8 tutorials use) is active, and the broker logs a warning at start-up. Passwords are never
//! logged and never kept in clear; comparisons are constant-time (argon2 verification, or a
//! constant-time compare for the built-in default).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
        })
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

/// A valid argon2 hash of a random string, used to even out timing for unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$mMCq1hQ0yqmYBK0hRU3y3E6Q0dZB3LYyW8eUHlyk8bE";

fn verify_hash(hash: &str, password: &str) -> bool {
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
    fn dummy_hash_is_valid() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}

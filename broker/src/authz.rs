//! Destination authorization in ActiveMQ's habit: `[[authorization]]` entries in the broker
//! configuration (and so in a profile's `config`) give the `read`, `write` and `admin` rights on
//! a destination pattern (`queue://orders.>`) to users and groups.
//!
//! ```toml
//! [[authorization]]
//! pattern = "queue://orders.>"
//! read = ["consumers"]
//! write = ["producers", "bob"]
//! admin = ["producers"]
//! ```
//!
//! - `write` is needed to SEND, `read` to SUBSCRIBE (browsing included), `admin` to create a
//!   destination that does not exist yet (its first SEND or SUBSCRIBE), as in ActiveMQ.
//! - A name in a list is a user or a group of the users file; `*` is every authenticated user.
//! - Every entry whose pattern matches counts (their lists are merged). A destination that no
//!   entry matches is denied.
//! - Without any `[[authorization]]` entry every authenticated user may do everything (the
//!   behaviour before authorization existed).

use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::pattern::Pattern;

/// A right on a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Consume (SUBSCRIBE, browse).
    Read,
    /// Produce (SEND).
    Write,
    /// Create the destination.
    Admin,
}

impl Right {
    /// The right's name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        }
    }
}

/// One `[[authorization]]` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationEntry {
    /// Destination pattern (`queue://orders.>`, `/topic/prices.*`, `>`).
    pub pattern: String,
    /// Users and groups that may consume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Users and groups that may produce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<String>,
    /// Users and groups that may create the destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin: Vec<String>,
}

/// The compiled entries.
#[derive(Debug, Clone, Default)]
pub struct Authorization {
    entries: Vec<(Pattern, AuthorizationEntry)>,
}

/// Why an entry cannot be compiled: (index, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    /// Which entry (0-based).
    pub index: usize,
    /// The field at fault (`pattern`, `read`, ...).
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// A refused operation, for the ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The user.
    pub user: String,
    /// The missing right.
    pub right: Right,
    /// The destination.
    pub destination: String,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "user {:?} lacks the {} right on {}",
            self.user,
            self.right.as_str(),
            self.destination
        )
    }
}

impl Authorization {
    /// Compiles `entries` (patterns checked, names non-empty).
    pub fn compile(entries: &[AuthorizationEntry]) -> Result<Authorization, EntryError> {
        let mut out = Vec::with_capacity(entries.len());
        for (index, e) in entries.iter().enumerate() {
            let pattern = e.pattern.parse::<Pattern>().map_err(|err| EntryError {
                index,
                field: "pattern",
                reason: err.to_string(),
            })?;
            for (field, list) in [("read", &e.read), ("write", &e.write), ("admin", &e.admin)] {
                if list.iter().any(|n| n.trim().is_empty()) {
                    return Err(EntryError {
                        index,
                        field,
                        reason: "names must not be empty".into(),
                    });
                }
            }
            out.push((pattern, e.clone()));
        }
        Ok(Authorization { entries: out })
    }

    /// Whether any entry exists (else everything is allowed).
    pub fn is_enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Whether `who` has `right` on `destination` (a STOMP name such as `/queue/orders`).
    pub fn check(&self, who: &Principal, right: Right, destination: &str) -> Result<(), Denied> {
        if !self.is_enabled() {
            return Ok(());
        }
        let allowed = self
            .entries
            .iter()
            .filter(|(p, _)| p.matches(destination))
            .any(|(_, e)| {
                let list = match right {
                    Right::Read => &e.read,
                    Right::Write => &e.write,
                    Right::Admin => &e.admin,
                };
                list.iter()
                    .any(|n| n == "*" || *n == who.user || who.groups.iter().any(|g| g == n))
            });
        if allowed {
            Ok(())
        } else {
            Err(Denied {
                user: who.user.clone(),
                right,
                destination: destination.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, groups: &[&str]) -> Principal {
        Principal {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn authz() -> Authorization {
        Authorization::compile(&[
            AuthorizationEntry {
                pattern: "queue://orders.>".into(),
                read: vec!["consumers".into()],
                write: vec!["producers".into(), "bob".into()],
                admin: vec!["producers".into()],
            },
            AuthorizationEntry {
                pattern: "topic://prices.*".into(),
                read: vec!["*".into()],
                ..Default::default()
            },
            AuthorizationEntry {
                pattern: ">".into(),
                read: vec!["admins".into()],
                write: vec!["admins".into()],
                admin: vec!["admins".into()],
            },
        ])
        .unwrap()
    }

    #[test]
    fn rights_come_from_users_groups_and_every_matching_entry() {
        let a = authz();
        let p = who("paul", &["producers"]);
        let c = who("carol", &["consumers"]);
        let bob = who("bob", &[]);
        let root = who("root", &["admins"]);
        assert!(a.check(&p, Right::Write, "/queue/orders.eu").is_ok());
        assert!(a.check(&p, Right::Admin, "/queue/orders.eu").is_ok());
        assert!(a.check(&bob, Right::Write, "/queue/orders.eu").is_ok());
        assert!(a.check(&c, Right::Read, "/queue/orders.eu.paris").is_ok());
        // The catch-all entry adds the admins to every destination.
        assert!(a.check(&root, Right::Read, "/queue/orders.eu").is_ok());
        assert!(a.check(&c, Right::Read, "/topic/prices.eur").is_ok());
        let denied = a.check(&c, Right::Write, "/queue/orders.eu").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "user \"carol\" lacks the write right on /queue/orders.eu"
        );
        assert!(a.check(&bob, Right::Admin, "/queue/orders.eu").is_err());
        // No entry but the catch-all matches: only admins.
        assert!(a.check(&p, Right::Write, "/queue/other").is_err());
        assert!(a.check(&c, Right::Read, "/topic/prices.eur.x").is_err());
    }

    #[test]
    fn without_entries_everything_is_allowed() {
        let a = Authorization::compile(&[]).unwrap();
        assert!(!a.is_enabled());
        assert!(a.check(&who("x", &[]), Right::Admin, "/queue/a").is_ok());
    }

    #[test]
    fn bad_entries_name_the_field() {
        let e = Authorization::compile(&[AuthorizationEntry {
            pattern: "queue://a.>.b".into(),
            ..Default::default()
        }])
        .unwrap_err();
        assert_eq!((e.index, e.field), (0, "pattern"));
        let e = Authorization::compile(&[AuthorizationEntry {
            pattern: "queue://a".into(),
            write: vec!["".into()],
            ..Default::default()
        }])
        .unwrap_err();
        assert_eq!(e.field, "write");
    }
}

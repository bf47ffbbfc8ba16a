//! fabricmq's registry crate: the only crate that talks to ZooKeeper.
//!
//! It keeps the fabric's shared state in ZooKeeper, as plain JSON nodes under a root
//! (default [`DEFAULT_ROOT`]): broker profiles, the members of each master/slave group, the
//! group's epoch counter and its master record. Modules:
//!
//! - [`layout`]: node paths and the JSON records (no I/O);
//! - [`config`]: [`RegistryConfig`] and the connect-string parser;
//! - [`error`]: [`RegistryError`] and the mapping of the ZooKeeper library's errors;
//! - `session`: [`Registry`] (one ZooKeeper session), its [`SessionEvent`]s and the timeout
//!   wrapper every call goes through;
//! - `election`: membership, the herd-free wait for first place, epochs, the fenced master
//!   record and its watch stream;
//! - `guard`: the serving master's watch that restores its own master record;
//! - `acl`: node ACLs, and the repair of open ones to the secure ACL;
//! - `profiles`: profile CRUD;
//! - `testing` (feature `test-server`): a real ZooKeeper child process for tests.
//!
//! The public API exposes no type of the ZooKeeper library (`zookeeper-client`), so it can be
//! swapped. Every call is bounded by [`RegistryConfig::op_timeout`]; a hung connection is reported
//! as [`RegistryError::ConnectionLoss`] or [`RegistryError::Timeout`], never as a hang.

mod acl;
pub mod config;
mod election;
pub mod error;
mod guard;
mod handover;
pub mod layout;
mod profiles;
mod session;
#[cfg(feature = "test-server")]
pub mod testing;

pub use acl::{AclEntry, AclReport};
pub use config::{RegistryConfig, ZkCredentials, INSECURE_ENV, INSECURE_WARNING};
pub use election::{EpochClaim, Member, MemberInfo};
pub use error::{ErrorKind, RegistryError};
pub use layout::{
    GroupPaths, HandoverRequest, Layout, MasterRecord, MemberRecord, MemberState, Profile,
    DEFAULT_ROOT,
};
pub use session::{Registry, SessionEvent};

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}
    fn is_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

    /// The broker and tools spawn these futures on a multi-threaded runtime: they must stay `Send`.
    #[allow(dead_code)]
    fn futures_are_send(
        r: Registry,
        m: Member,
        rec: MemberRecord,
        claim: EpochClaim,
        master: MasterRecord,
        p: Profile,
    ) {
        is_send(&Registry::connect(r.config().clone()));
        is_send(&r.join("g", &rec));
        is_send(&r.update_member(&m, &rec));
        is_send(&r.member_exists(&m));
        is_send(&r.members("g"));
        is_send(&r.wait_until_first(&m));
        is_send(&r.predecessor(&m));
        is_send(&r.remove_member_node("g", "n"));
        is_send(&r.next_epoch("g"));
        is_send(&r.current_epoch("g"));
        is_send(&r.publish_master("g", claim, &master));
        is_send(&r.remove_master("g"));
        is_send(&r.remove_master_any("g"));
        is_send(&r.master("g"));
        is_send(&r.watch_master("g"));
        is_send(&r.guard_master("g", claim, &master));
        is_send(&r.secure_group("g", None));
        is_send(&r.secure_tree());
        is_send(&r.acl("/g"));
        is_send(&r.groups());
        is_send(&r.create_profile(&p));
        is_send(&r.put_profile(&p));
        is_send(&r.profile("p"));
        is_send(&r.profiles());
        is_send(&r.delete_profile("p"));
        is_send(&r.close());
    }

    #[test]
    fn registry_is_shareable() {
        is_send_sync_clone::<Registry>();
        is_send_sync_clone::<RegistryConfig>();
    }
}

//! The fabric's HA lifecycle: one broker container in a master/slave group.
//!
//! ```text
//! connect ──▶ join as slave ──▶ first in line? ──▶ epoch+1 (CAS) ──▶ open store (fenced by epoch)
//!    ▲          (no listener)     (predecessor      ──▶ listeners ──▶ publish master record ──▶ serve
//!    │                             watch; store lock                                            │
//!    └──────────── step down: master record removed, gate closed, clients dropped, store ◀─────┘
//!                  released, session closed; rejoin as a new member
//! ```
//!
//! Rules this module owns:
//! - **ZooKeeper is the authority, the store lock a guard.** A slave next in line also waits on the
//!   shared store's lock: the kernel releases it when the master's process dies, so the slave can
//!   remove the dead master's registry entries itself and take over at once instead of waiting for
//!   the session to expire. A master elected by ZooKeeper whose predecessor still holds the lock (a
//!   paused process) opens the store anyway; the journal's epoch fencing makes the stale process
//!   harmless.
//! - **Two-stage session handling.** Connection suspended → the [`Gate`] closes at once (nothing is
//!   acknowledged, state stays warm). Reconnected within a third of the session timeout with the
//!   member node and the epoch unchanged → the gate reopens. Otherwise, or on expiry, or when the
//!   journal reports itself fenced → step down and rejoin. A paused process finds its gate closed by
//!   its stopped heart and re-checks with ZooKeeper before acknowledging anything.
//! - **Registry entries tell the truth.** The member record says slave / activating / master; the
//!   master record is created only after the listeners are bound and removed before they close.
//!   While serving, the master guards its record (`Registry::guard_master`): deleted or rewritten
//!   by anyone, it is restored (fenced by the epoch); if it cannot be, the master steps down.
//! - **Secure registry.** A credentialed container repairs open ACLs of the nodes it owns at each
//!   connect (`Registry::secure_group`), logging each repaired node at WARN.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabricmq_registry::{
    EpochClaim, HandoverRequest, MasterRecord, Member, MemberRecord, MemberState, Registry,
    RegistryConfig, RegistryError, SessionEvent,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{Role, ZkState};
use crate::config::BrokerConfig;
use crate::gate::Gate;
use crate::message::now_ms;
use crate::server::{self, StartError, StartOptions};
use crate::store::{DirLock, LockMode, StoreError};

/// What a container needs to take part in a group.
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// ZooKeeper connection.
    pub registry: RegistryConfig,
    /// Group name.
    pub group: String,
    /// This container's name.
    pub container: String,
    /// Profile it runs, if any (shown by `mq-fabric container list`).
    pub profile: Option<String>,
    /// Host name published in service URLs when a listener binds a wildcard address.
    pub advertise_host: String,
    /// Optional file the lifecycle writes `{"role": ..., "listeners": [...], "epoch": N, "admin":
    /// "HOST:PORT"}` to on every role change (for scripts and tests).
    pub state_file: Option<PathBuf>,
    /// What the admin endpoint reports; the lifecycle keeps it current (role, epoch, ZooKeeper
    /// session, the serving broker).
    pub status: Arc<crate::admin::Status>,
}

/// Why a term as master ended.
#[derive(Debug)]
enum Ended {
    /// Clean stop requested.
    Shutdown,
    /// Lost (or could not prove) leadership: rejoin.
    StepDown(String),
    /// Asked to hand over (`mq-fabric master yield`): drained like a clean stop, then rejoin at
    /// the back of the line.
    Yield(HandoverRequest),
}

/// How often a master looks for a hand-over request.
const HANDOVER_POLL: Duration = Duration::from_millis(100);
/// A hand-over request older than this is ignored by slaves deciding whether to defer.
const HANDOVER_STALE: Duration = Duration::from_secs(60);

/// Runs the lifecycle until `shutdown` is cancelled.
pub async fn run(config: BrokerConfig, ha: HaSettings, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        ha.status.set_role(Role::Connecting);
        ha.status.set_zookeeper(ZkState::Connecting);
        let registry = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = Registry::connect(ha.registry.clone()) => r,
        };
        let registry = match registry {
            Ok(r) => {
                backoff = Duration::from_millis(100);
                r
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "ZooKeeper unreachable; staying out of the group");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let session = tokio::spawn(mirror_session(registry.events(), ha.status.clone()));
        repair_acls(&registry, &ha).await;
        let ended = term(&config, &ha, &registry, &shutdown).await;
        // Not serving any more, whatever happens next (closing may wait for ZooKeeper).
        write_state(&ha, "slave", &[], None);
        match ended {
            Ok(Ended::Shutdown) => {
                ha.status.set_role(Role::Stopping);
                registry.close().await;
                session.abort();
                ha.status.set_zookeeper(ZkState::Closed);
                return;
            }
            Ok(Ended::StepDown(why)) => {
                warn!(reason = %why, "stepping down; rejoining the group as a new member");
            }
            Ok(Ended::Yield(req)) => {
                info!(
                    to = req.to.as_deref().unwrap_or("any slave"),
                    "handed over; rejoining the group as a slave"
                );
            }
            Err(e) => warn!(error = %e, "registry error; rejoining the group"),
        }
        ha.status.set_role(Role::Connecting);
        registry.close().await;
        session.abort();
    }
}

/// A credentialed container checks the ACLs of the nodes it owns (see
/// `Registry::secure_group`) and repairs open ones; the registry logs each repaired node and each
/// node it cannot repair at WARN. Without credentials (`--zk-insecure`) there is nothing to do:
/// this container creates open nodes itself. A failed pass is logged and the container goes on.
async fn repair_acls(registry: &Registry, ha: &HaSettings) {
    if registry.config().credentials.is_none() {
        return;
    }
    match registry
        .secure_group(&ha.group, ha.profile.as_deref())
        .await
    {
        Ok(report) if report.repaired.is_empty() && report.unrepairable.is_empty() => {
            info!(checked = report.checked, group = %ha.group, "registry ACLs checked: none open");
        }
        Ok(report) => warn!(
            checked = report.checked,
            repaired = report.repaired.len(),
            left_open = report.unrepairable.len(),
            group = %ha.group,
            "registry ACLs checked: open nodes found"
        ),
        Err(e) => warn!(error = %e, group = %ha.group, "cannot check the registry ACLs"),
    }
}

/// Mirrors a registry session's events into the admin status until the session ends.
async fn mirror_session(
    mut events: tokio::sync::watch::Receiver<SessionEvent>,
    status: Arc<crate::admin::Status>,
) {
    loop {
        let ev = *events.borrow_and_update();
        status.set_zookeeper(ev.into());
        if events.changed().await.is_err() {
            return;
        }
    }
}

fn member_record(
    ha: &HaSettings,
    state: MemberState,
    epoch: Option<u64>,
    services: &[String],
    store_locked: bool,
) -> MemberRecord {
    MemberRecord {
        container: ha.container.clone(),
        host: ha.advertise_host.clone(),
        profile: ha.profile.clone(),
        state,
        epoch,
        ready: state == MemberState::Master,
        services: services.to_vec(),
        started: *START_MS.get_or_init(now_ms),
        pid: std::process::id(),
        store_locked,
    }
}

/// When this process joined its first group (ms since the Unix epoch).
static START_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn write_state(ha: &HaSettings, role: &str, listeners: &[String], epoch: Option<u64>) {
    let Some(path) = &ha.state_file else { return };
    let admin = ha.status.admin_addr().map(|a| a.to_string());
    let json = serde_json::json!({
        "role": role, "listeners": listeners, "epoch": epoch, "pid": std::process::id(),
        "admin": admin,
    });
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, json.to_string()).and_then(|_| std::fs::rename(&tmp, path))
    {
        warn!(file = %path.display(), error = %e, "cannot write the state file");
    }
}

/// One membership: slave until first in line, then master until the term ends.
async fn term(
    config: &BrokerConfig,
    ha: &HaSettings,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Result<Ended, RegistryError> {
    let (member, lock) = loop {
        let member = registry
            .join(
                &ha.group,
                &member_record(ha, MemberState::Slave, None, &[], false),
            )
            .await?;
        let master = registry.master(&ha.group).await.ok().flatten();
        info!(
            group = %ha.group,
            node = %member.node,
            master = master.as_ref().map(|m| m.container.as_str()).unwrap_or("none"),
            "joined the group as slave; no client listener is open"
        );
        write_state(ha, "slave", &[], None);
        ha.status.set_role(Role::Slave);

        // Wait to be first in line, also watching the store lock when next in line.
        let lock = match wait_for_turn(config, ha, registry, &member, shutdown).await? {
            Turn::Shutdown => return Ok(Ended::Shutdown),
            Turn::Expired => return Ok(Ended::StepDown("session expired while slave".into())),
            Turn::First(lock) => lock,
        };
        if let Some(to) = defer_to(ha, registry).await {
            // A hand-over to another container is pending: go to the back of the line.
            info!(%to, "deferring to the container chosen by a pending hand-over");
            drop(lock);
            registry.remove_member_node(&ha.group, &member.node).await?;
            continue;
        }
        break (member, lock);
    };

    // Activate. Take the store lock if it is free; if a paused predecessor still holds it,
    // ZooKeeper's word is enough (the journal's epoch fencing makes the stale process harmless).
    let activating = Instant::now();
    let journal_dir = config.data_dir.join("journal");
    let lock = match lock {
        Some(l) => Some(l),
        None => DirLock::try_acquire(&journal_dir).ok().flatten(),
    };
    let store_locked = lock.is_some();
    registry
        .update_member(
            &member,
            &member_record(ha, MemberState::Activating, None, &[], store_locked),
        )
        .await?;
    let claim = registry.next_epoch(&ha.group).await?;
    ha.status.activating(claim.epoch);
    info!(
        epoch = claim.epoch,
        store_locked, "first in line: activating as master"
    );
    let session_timeout = registry.config().session_timeout;
    let gate = Arc::new(Gate::with_heart(session_timeout / 3));
    let lock_mode = match lock {
        Some(l) => LockMode::Held(l),
        None => LockMode::BestEffort,
    };
    let server_token = CancellationToken::new();
    let temp_dir = config.data_dir.join("tmp").join(sanitize(&ha.container));
    let started = server::start_with(
        config.clone(),
        StartOptions {
            epoch: claim.epoch,
            lock: lock_mode,
            gate: gate.clone(),
            temp_dir: Some(temp_dir),
            addrs: None,
        },
        server_token.clone(),
    )
    .await;
    let started = match started {
        Ok(s) => s,
        Err(StartError::Store {
            source:
                StoreError::Fenced {
                    store_epoch,
                    our_epoch,
                },
            ..
        }) => {
            return Ok(Ended::StepDown(format!(
                "the store holds epoch {store_epoch}, newer than ours ({our_epoch})"
            )));
        }
        Err(e) => {
            error!(error = %e, "cannot start as master");
            // Let another member try; come back after a pause.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(Ended::StepDown(format!("start failed: {e}")));
        }
    };
    let services: Vec<String> = started
        .local_listeners()
        .iter()
        .map(|(scheme, a)| {
            let host = if a.ip().is_unspecified() {
                ha.advertise_host.clone()
            } else {
                a.ip().to_string()
            };
            format!("{scheme}://{host}:{}", a.port())
        })
        .collect();
    let journal = started.broker.journal.clone();
    let broker = started.broker.clone();
    let serve = tokio::spawn(started.serve());
    gate.open();

    // Publish: the master record appears only now that the listeners are bound.
    let record = MasterRecord {
        container: ha.container.clone(),
        epoch: claim.epoch,
        services: services.clone(),
        since: now_ms(),
    };
    if let Err(e) = publish(registry, &ha.group, claim, &record).await {
        gate.close();
        server_token.cancel();
        let _ = serve.await;
        return Ok(Ended::StepDown(format!(
            "cannot publish the master record: {e}"
        )));
    }
    let master_record = |locked: bool| {
        member_record(
            ha,
            MemberState::Master,
            Some(claim.epoch),
            &services,
            locked,
        )
    };
    // From here on the server runs: every way out goes through the step-down below (no `?`).
    if let Err(e) = registry
        .update_member(&member, &master_record(store_locked))
        .await
    {
        // The master record is published, so clients may already use us; only the member
        // record lags. Keep serving: the session watch below decides whether we still lead.
        warn!(error = %e, "cannot update the member record to master");
    }
    write_state(ha, "master", &services, Some(claim.epoch));
    ha.status
        .serving_master(claim.epoch, &services, record.since, &broker);
    // The status keeps only a weak reference: the broker lives as long as it serves.
    drop(broker);
    info!(
        epoch = claim.epoch,
        services = ?services,
        activation_ms = activating.elapsed().as_millis() as u64,
        "master: serving"
    );

    // Serve until something ends the term. Without the store lock, keep trying to take it (the
    // paused predecessor releases it when it steps down or dies) and say so once held, so that
    // slaves can again read the lock's release as this process's death.
    let mut late_lock: Option<DirLock> = None;
    // A hand-over that made us master is done.
    if let Ok(Some(req)) = registry.handover(&ha.group).await {
        if req.from != ha.container {
            info!(from = %req.from, "hand-over complete: this container took over");
            if let Err(e) = registry.clear_handover(&ha.group, &req.id).await {
                warn!(error = %e, "cannot remove the hand-over request");
            }
        }
    }
    let watch = watch_term(
        registry,
        ha,
        &member,
        claim,
        &record,
        &gate,
        &journal,
        shutdown,
        session_timeout,
    );
    tokio::pin!(watch);
    let mut poll = tokio::time::interval(Duration::from_millis(25));
    let ended = loop {
        tokio::select! {
            ended = &mut watch => break ended,
            _ = poll.tick(), if !store_locked && late_lock.is_none() => {
                if let Ok(Some(l)) = DirLock::try_acquire(&journal_dir) {
                    late_lock = Some(l);
                    info!("took the store lock released by the previous master");
                    if let Err(e) = registry.update_member(&member, &master_record(true)).await {
                        warn!(error = %e, "cannot update the member record");
                    }
                }
            }
        }
    };

    // The master record disappears before the listeners close.
    ha.status.set_role(Role::Stopping);
    match &ended {
        Ended::Shutdown => {
            let _ = registry.remove_master(&ha.group).await;
            info!("clean stop: master record removed; draining connections");
            server_token.cancel();
        }
        Ended::Yield(req) => {
            // As a clean stop: clients move as soon as the record is gone, in-flight receipts
            // are still sent, the store is closed (lock released) before the session ends.
            let _ = registry.remove_master(&ha.group).await;
            info!(
                to = req.to.as_deref().unwrap_or("any slave"),
                "hand-over requested: master record removed; draining connections"
            );
            server_token.cancel();
        }
        Ended::StepDown(why) => {
            // Nothing more is acknowledged (gate), listeners and clients go now; the master record
            // is removed best effort (with ZooKeeper unreachable it vanishes with the session).
            gate.close();
            warn!(reason = %why, "stepping down: closing listeners and client connections");
            server_token.cancel();
            let _ = tokio::time::timeout(
                Duration::from_millis(300),
                registry.remove_master(&ha.group),
            )
            .await;
        }
    }
    let _ = serve.await;
    drop(late_lock);
    Ok(ended)
}

enum Turn {
    First(Option<DirLock>),
    Shutdown,
    Expired,
}

/// Waits until `member` is first in line. Meanwhile it polls the shared store's lock: getting it
/// proves that the process which held it (the master) is dead, and if that master is this
/// member's predecessor its registry entries are removed so the election moves on at once.
async fn wait_for_turn(
    config: &BrokerConfig,
    ha: &HaSettings,
    registry: &Registry,
    member: &Member,
    shutdown: &CancellationToken,
) -> Result<Turn, RegistryError> {
    let journal_dir = config.data_dir.join("journal");
    let mut events = registry.events();
    let mut poll = tokio::time::interval(Duration::from_millis(25));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held: Option<DirLock> = None;
    let wait = registry.wait_until_first(member);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Turn::Shutdown),
            r = &mut wait => {
                return match r {
                    Ok(()) => Ok(Turn::First(held.take())),
                    Err(RegistryError::SessionExpired) => Ok(Turn::Expired),
                    Err(e) => Err(e),
                };
            }
            _ = poll.tick(), if held.is_none() => {
                let lock = match DirLock::try_acquire(&journal_dir) {
                    Ok(Some(lock)) => lock,
                    Ok(None) => continue,
                    Err(e) => {
                        warn!(error = %e, "cannot check the store lock");
                        continue;
                    }
                };
                // Nobody holds the store. If our predecessor is (or was becoming) the master, its
                // process is gone: remove its entries so the election moves on now.
                let Some(pred) = registry.predecessor(member).await? else {
                    // We are first already; `wait` resolves next.
                    held = Some(lock);
                    continue;
                };
                // Only a predecessor that says it holds the lock can have released it by dying.
                if pred.record.store_locked && pred.record.state != MemberState::Slave {
                    warn!(
                        dead = %pred.record.container,
                        "the master's process released the store lock: removing its registry entries"
                    );
                    registry.remove_master_any(&ha.group).await?;
                    registry.remove_member_node(&ha.group, &pred.node).await?;
                    held = Some(lock);
                } else {
                    // Another slave is ahead of us: let it take the lock.
                    drop(lock);
                }
            }
            changed = events.changed() => {
                if changed.is_err() || *events.borrow() == SessionEvent::Expired {
                    return Ok(Turn::Expired);
                }
            }
        }
    }
}

async fn publish(
    registry: &Registry,
    group: &str,
    claim: EpochClaim,
    record: &MasterRecord,
) -> Result<(), RegistryError> {
    match registry.publish_master(group, claim, record).await {
        Err(RegistryError::NodeExists { .. }) => {
            // We are first in line, so the previous master's member node is gone and with it its
            // session (or we proved its process dead): its master node is stale.
            registry.remove_master_any(group).await?;
            registry.publish_master(group, claim, record).await
        }
        r => r,
    }
}

/// Watches the session while serving. Returns why the term ended.
// Each argument is a distinct piece of the term's state, borrowed from `term`.
#[allow(clippy::too_many_arguments)]
async fn watch_term(
    registry: &Registry,
    ha: &HaSettings,
    member: &Member,
    claim: EpochClaim,
    record: &MasterRecord,
    gate: &Gate,
    journal: &crate::store::Journal,
    shutdown: &CancellationToken,
    session_timeout: Duration,
) -> Ended {
    // Our master record stays as published: deleted or rewritten by anyone, it is put back
    // (fenced by the epoch); if it cannot be, this term ends.
    let guard = registry.guard_master(&ha.group, claim, record);
    tokio::pin!(guard);
    let mut events = registry.events();
    let mut heart = tokio::time::interval(Duration::from_millis(25));
    heart.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let grace = session_timeout / 3;
    let mut suspended_since: Option<Instant> = None;
    let mut handover = tokio::time::interval(HANDOVER_POLL);
    handover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            guarded = &mut guard => {
                let why = match guarded {
                    Err(RegistryError::BadVersion { .. }) => "the group's epoch moved on".to_owned(),
                    Err(e) => e.to_string(),
                    Ok(()) => "the master record guard ended".to_owned(),
                };
                return Ended::StepDown(format!("cannot keep our master record in place: {why}"));
            }
            _ = handover.tick(), if suspended_since.is_none() && gate.is_open() => {
                // Bounded well inside the heart's grace: a hung ZooKeeper call must not keep
                // this loop from seeing session events.
                let read = tokio::time::timeout(grace / 4, registry.handover(&ha.group)).await;
                if let Ok(Ok(Some(req))) = read {
                    if req.from == ha.container {
                        return Ended::Yield(req);
                    }
                }
            }
            _ = heart.tick() => {
                let silent = gate.tick();
                if silent > grace {
                    // This process was not running (paused): verify before acknowledging anything.
                    gate.close();
                    warn!(paused_ms = silent.as_millis() as u64, "this process was paused; checking leadership before serving again");
                    if !still_leader(registry, member, claim).await {
                        return Ended::StepDown(format!("paused for {silent:?}; leadership lost"));
                    }
                    gate.open();
                    info!("leadership confirmed after the pause; serving again");
                }
                if journal.is_fenced() {
                    return Ended::StepDown("the journal was fenced by a newer epoch".into());
                }
                if journal.has_failed() {
                    // Disk full or an I/O error: never retry an fsync; hand the store over (a
                    // new term, here or on a slave, re-reads what really is on disk).
                    let reason = crate::standalone::failure_reason(journal).await;
                    ha.status.store_failed(&reason);
                    return Ended::StepDown(format!("a journal write failed: {reason}"));
                }
                if let Some(since) = suspended_since {
                    if since.elapsed() > grace {
                        return Ended::StepDown(format!(
                            "ZooKeeper connection suspended for more than {grace:?} (a third of the session timeout)"
                        ));
                    }
                }
            }
            changed = events.changed() => {
                if changed.is_err() {
                    return Ended::StepDown("registry session closed".into());
                }
                let ev = *events.borrow();
                match ev {
                    SessionEvent::Disconnected => {
                        gate.close();
                        suspended_since.get_or_insert_with(Instant::now);
                        warn!("ZooKeeper connection suspended: no acknowledgements until it is back");
                    }
                    SessionEvent::Connected => {
                        if suspended_since.take().is_some() {
                            if still_leader(registry, member, claim).await {
                                gate.open();
                                info!("ZooKeeper connection back within the session: serving again");
                            } else {
                                return Ended::StepDown("member node or epoch changed while suspended".into());
                            }
                        }
                    }
                    SessionEvent::Expired => return Ended::StepDown("ZooKeeper session expired".into()),
                    SessionEvent::Closed | SessionEvent::AuthFailed => {
                        return Ended::StepDown(format!("registry session {ev:?}"));
                    }
                }
            }
        }
    }
}

/// The container a pending, recent hand-over chose, if it is another live member of the group
/// (then this one, first in line, must let it go first).
async fn defer_to(ha: &HaSettings, registry: &Registry) -> Option<String> {
    let req = registry.handover(&ha.group).await.ok()??;
    let to = req.to?;
    let age = Duration::from_millis(now_ms().saturating_sub(req.requested));
    if to == ha.container || age > HANDOVER_STALE {
        return None;
    }
    let members = registry.members(&ha.group).await.ok()?;
    members
        .iter()
        .any(|m| m.record.container == to)
        .then_some(to)
}

/// Whether `member` still exists and the group's epoch is still ours.
async fn still_leader(registry: &Registry, member: &Member, claim: EpochClaim) -> bool {
    let exists = registry.member_exists(member).await;
    let epoch = registry.current_epoch(&member.group).await;
    matches!((exists, epoch), (Ok(true), Ok(e)) if e == claim.epoch)
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

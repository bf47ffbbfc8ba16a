//! Discovery against a real ZooKeeper (Debian package `zookeeper`, started by the registry's test
//! harness): endpoints follow the group's master record as it is published, replaced and removed;
//! discovery keeps following after ZooKeeper was frozen past the session timeout; while ZooKeeper
//! is frozen the last known endpoints stay, and that is logged once.
//!
//! One server for this test binary; every test uses a fresh chroot. Some tests freeze the server
//! (SIGSTOP), so the tests take turns. Every wait is on an event (a watch channel, a session event,
//! a log line) and bounded.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabricmq_client::discovery::DiscoveryStatus;
use fabricmq_client::Discovery;
use fabricmq_registry::testing::ZkServer;
use fabricmq_registry::{MasterRecord, Registry, RegistryConfig};
use tokio::sync::{watch, Notify};

/// Upper bound of every wait for something that must happen.
const WAIT: Duration = Duration::from_secs(15);

/// The server, shared by the tests of this binary, which take turns.
static ZK: Mutex<Option<ZkServer>> = Mutex::new(None);
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `f` with the server (started on first use).
fn with_zk<T>(f: impl FnOnce(&mut ZkServer) -> T) -> T {
    let mut guard = ZK.lock().unwrap_or_else(|e| e.into_inner());
    let zk = guard.get_or_insert_with(|| {
        let zk = ZkServer::start().expect("ZooKeeper test server (apt-get install zookeeper)");
        eprintln!("ZooKeeper ready in {:?}", zk.started_in());
        zk
    });
    f(zk)
}

/// Resumes the server even if the test panics while it is frozen.
struct Resume;
impl Drop for Resume {
    fn drop(&mut self) {
        with_zk(|zk| zk.resume());
    }
}

/// A fresh chroot with short timeouts for the discovery side (1 s session, so a freeze expires
/// it quickly; 500 ms connect attempts while ZooKeeper is frozen).
fn discovery_config(connect: &str) -> RegistryConfig {
    RegistryConfig::parse(connect)
        .unwrap()
        .with_session_timeout(Duration::from_secs(1))
        .with_op_timeout(Duration::from_millis(500))
        .with_connect_timeout(Duration::from_millis(500))
}

/// A publisher session (the "broker") that outlives a short freeze: 10 s session.
async fn publisher(connect: &str) -> Registry {
    let config = RegistryConfig::parse(connect)
        .unwrap()
        .with_session_timeout(Duration::from_secs(10));
    tokio::time::timeout(WAIT, Registry::connect(config))
        .await
        .expect("publisher connect: timed out")
        .expect("publisher connect")
}

fn record(container: &str, services: &[&str]) -> MasterRecord {
    MasterRecord {
        container: container.to_string(),
        epoch: 0,
        services: services.iter().map(|s| s.to_string()).collect(),
        since: 1,
    }
}

/// Publishes `record` as the group's master (whoever held it before is removed first).
async fn publish(registry: &Registry, group: &str, mut record: MasterRecord) {
    registry.remove_master_any(group).await.unwrap();
    let claim = registry.next_epoch(group).await.unwrap();
    record.epoch = claim.epoch;
    registry
        .publish_master(group, claim, &record)
        .await
        .unwrap();
}

fn endpoints(list: &[(&str, u16)]) -> Vec<(String, u16)> {
    list.iter().map(|(h, p)| (h.to_string(), *p)).collect()
}

/// Waits (bounded) until the endpoints are `want`.
async fn wait_endpoints(rx: &mut watch::Receiver<Vec<(String, u16)>>, want: &[(String, u16)]) {
    let seen = tokio::time::timeout(WAIT, rx.wait_for(|e| e == want))
        .await
        .map(|r| r.is_ok());
    match seen {
        Ok(true) => {}
        Ok(false) => panic!("discovery ended while waiting for {want:?}"),
        Err(_) => panic!(
            "endpoints not {want:?} within {WAIT:?} (now {:?})",
            *rx.borrow()
        ),
    }
}

/// Waits (bounded) until the status satisfies `pred`; returns it.
async fn wait_status(
    rx: &mut watch::Receiver<DiscoveryStatus>,
    what: &str,
    pred: impl FnMut(&DiscoveryStatus) -> bool,
) -> DiscoveryStatus {
    let seen = tokio::time::timeout(WAIT, rx.wait_for(pred))
        .await
        .map(|r| r.map(|status| *status));
    match seen {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => panic!("discovery ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {WAIT:?} (now {:?})", *rx.borrow()),
    }
}

async fn start(config: RegistryConfig, group: &str) -> Discovery {
    tokio::time::timeout(WAIT, Discovery::start_with_config(group, config))
        .await
        .expect("discovery start: timed out")
        .expect("discovery start")
}

#[tokio::test]
async fn endpoints_follow_published_replaced_and_removed_master_records() {
    let _turn = TURN.lock().await;
    let connect = with_zk(|zk| zk.chroot_connect());
    let group = "g1";

    // Through the public entry point (default timeouts), with the root option.
    let discovery = tokio::time::timeout(WAIT, Discovery::start(group, &connect, Some("/fab")))
        .await
        .expect("start: timed out")
        .expect("start");
    assert_eq!(discovery.group(), group);
    let mut eps = discovery.endpoints();
    let master = discovery.master();
    assert!(eps.borrow().is_empty(), "no master yet");
    assert_eq!(*master.borrow(), None);

    // The publishers use the same root.
    let a = {
        let config = RegistryConfig::parse(&connect)
            .unwrap()
            .with_root("/fab")
            .with_session_timeout(Duration::from_secs(10));
        Registry::connect(config).await.unwrap()
    };
    let published = Instant::now();
    publish(
        &a,
        group,
        record(
            "broker-a",
            &["stomp://127.0.0.1:61613", "tcp://[::1]:61614"],
        ),
    )
    .await;
    let want_a = endpoints(&[("127.0.0.1", 61613), ("::1", 61614)]);
    wait_endpoints(&mut eps, &want_a).await;
    eprintln!(
        "endpoints appeared {:?} after publishing",
        published.elapsed()
    );
    assert_eq!(
        master.borrow().as_ref().map(|r| r.container.clone()),
        Some("broker-a".to_string())
    );

    // Another master replaces it (a different session, as after a failover).
    let b = {
        let config = a.config().clone();
        Registry::connect(config).await.unwrap()
    };
    let replaced = Instant::now();
    publish(&b, group, record("broker-b", &["stomp://127.0.0.2:61700"])).await;
    wait_endpoints(&mut eps, &endpoints(&[("127.0.0.2", 61700)])).await;
    eprintln!("endpoints changed {:?} after replacing", replaced.elapsed());
    assert_eq!(
        master.borrow().as_ref().map(|r| r.container.clone()),
        Some("broker-b".to_string())
    );

    // The master goes away: no endpoints.
    b.remove_master(group).await.unwrap();
    wait_endpoints(&mut eps, &[]).await;
    assert_eq!(*master.borrow(), None);

    // A clone shares the channels; dropping every clone ends the discovery (its channels close).
    let clone = discovery.clone();
    drop(discovery);
    let mut status = clone.status();
    assert!(matches!(
        *status.borrow_and_update(),
        DiscoveryStatus::Connected { .. }
    ));
    drop(clone);
    let closed = tokio::time::timeout(WAIT, status.changed()).await;
    assert!(
        matches!(closed, Ok(Err(_))),
        "discovery did not stop: {closed:?}"
    );
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn follows_changes_after_zookeeper_was_frozen_past_the_session() {
    let _turn = TURN.lock().await;
    let connect = with_zk(|zk| zk.chroot_connect());
    let group = "g2";
    let p1 = publisher(&connect).await;
    publish(&p1, group, record("a", &["stomp://127.0.0.1:1001"])).await;

    let discovery = start(discovery_config(&connect), group).await;
    let mut eps = discovery.endpoints();
    let mut status = discovery.status();
    assert_eq!(*eps.borrow(), endpoints(&[("127.0.0.1", 1001)]));
    let DiscoveryStatus::Connected { session: first } = *status.borrow() else {
        panic!("not connected: {:?}", *status.borrow());
    };

    // Freeze ZooKeeper until the discovery's 1 s session has expired.
    let resume = Resume;
    let frozen = Instant::now();
    with_zk(|zk| zk.pause());
    wait_status(&mut status, "Disconnected", |s| {
        *s == DiscoveryStatus::Disconnected
    })
    .await;
    wait_status(&mut status, "SessionLost", |s| {
        *s == DiscoveryStatus::SessionLost
    })
    .await;
    eprintln!(
        "discovery's session lost {:?} after SIGSTOP",
        frozen.elapsed()
    );
    with_zk(|zk| zk.resume());
    drop(resume);

    // A new session, and the record (p1's session outlived the freeze) is still there.
    let now = wait_status(
        &mut status,
        "a new session",
        |s| matches!(s, DiscoveryStatus::Connected { session } if *session != first),
    )
    .await;
    eprintln!("new session {now:?} {:?} after SIGSTOP", frozen.elapsed());
    assert_eq!(*eps.borrow(), endpoints(&[("127.0.0.1", 1001)]));

    // The new session follows changes: replaced, then removed.
    let p2 = publisher(&connect).await;
    publish(&p2, group, record("b", &["stomp://127.0.0.1:1002"])).await;
    wait_endpoints(&mut eps, &endpoints(&[("127.0.0.1", 1002)])).await;
    p2.remove_master(group).await.unwrap();
    wait_endpoints(&mut eps, &[]).await;
    publish(&p2, group, record("b", &["stomp://127.0.0.1:1003"])).await;
    wait_endpoints(&mut eps, &endpoints(&[("127.0.0.1", 1003)])).await;
    p1.close().await;
    p2.close().await;
}

/// Log lines written while a test runs (the test's thread only: `#[tokio::test]` runs the
/// discovery task on it), with a notification per write to wait on.
#[derive(Clone, Default)]
struct Captured {
    text: Arc<Mutex<Vec<u8>>>,
    written: Arc<Notify>,
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (bounded) until `needle` was logged at least `n` times.
    async fn wait_count(&self, needle: &str, n: usize) {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let written = self.written.notified();
                let mut written = std::pin::pin!(written);
                written.as_mut().enable();
                if self.count(needle) >= n {
                    return;
                }
                written.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{needle:?} not logged {n} times within {WAIT:?}; log:\n{}",
            self.text()
        );
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.lock().unwrap().extend_from_slice(buf);
        self.written.notify_waiters();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const UNREACHABLE: &str = "ZooKeeper unreachable; keeping the last known endpoints";
const STILL_UNREACHABLE: &str = "ZooKeeper still unreachable";
const BACK: &str = "ZooKeeper reachable again";

#[tokio::test]
async fn keeps_the_last_endpoints_while_zookeeper_is_frozen_and_says_so_once() {
    let _turn = TURN.lock().await;
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log_guard = tracing::subscriber::set_default(subscriber);

    let connect = with_zk(|zk| zk.chroot_connect());
    let group = "g3";
    let p1 = publisher(&connect).await;
    publish(&p1, group, record("a", &["stomp://127.0.0.1:2001"])).await;
    let discovery = start(discovery_config(&connect), group).await;
    let mut eps = discovery.endpoints();
    let mut status = discovery.status();
    let known = endpoints(&[("127.0.0.1", 2001)]);
    wait_endpoints(&mut eps, &known).await;
    eps.mark_unchanged();

    let resume = Resume;
    with_zk(|zk| zk.pause());
    // Connection lost: endpoints kept.
    wait_status(&mut status, "Disconnected", |s| {
        *s == DiscoveryStatus::Disconnected
    })
    .await;
    assert_eq!(*eps.borrow(), known);
    // Session expired (the broker's may not have): endpoints still kept.
    wait_status(&mut status, "SessionLost", |s| {
        *s == DiscoveryStatus::SessionLost
    })
    .await;
    assert_eq!(*eps.borrow(), known);
    // Two failed attempts to open a new session later: still kept, and said only once.
    log.wait_count(STILL_UNREACHABLE, 2).await;
    assert_eq!(*eps.borrow(), known);
    assert!(!eps.has_changed().unwrap(), "endpoints were republished");
    assert_eq!(log.count(UNREACHABLE), 1, "log:\n{}", log.text());
    let line = log
        .text()
        .lines()
        .find(|l| l.contains(UNREACHABLE))
        .unwrap()
        .to_owned();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("127.0.0.1"),
        "names the endpoints kept: {line}"
    );

    with_zk(|zk| zk.resume());
    drop(resume);
    wait_status(&mut status, "Connected", |s| {
        matches!(s, DiscoveryStatus::Connected { .. })
    })
    .await;
    log.wait_count(BACK, 1).await;
    assert_eq!(*eps.borrow(), known);
    assert_eq!(log.count(UNREACHABLE), 1, "log:\n{}", log.text());
    assert_eq!(log.count(BACK), 1, "log:\n{}", log.text());
    p1.close().await;
}

/// Only the genuine master record is followed: a record rewritten by someone else (here one epoch
/// ahead, pointing elsewhere) or one left behind by an epoch claimed since reads as "no master
/// known" (empty endpoints: the failover transport keeps waiting instead of moving there), and
/// the next genuine record is followed again.
#[tokio::test]
async fn a_forged_or_outdated_master_record_is_not_followed() {
    let _turn = TURN.lock().await;
    let connect = with_zk(|zk| zk.chroot_connect());
    let group = "g-forged";
    let a = publisher(&connect).await;
    publish(&a, group, record("broker-a", &["stomp://127.0.0.1:61613"])).await;
    let discovery = start(discovery_config(&connect), group).await;
    let mut eps = discovery.endpoints();
    wait_endpoints(&mut eps, &endpoints(&[("127.0.0.1", 61613)])).await;
    let genuine = a.master(group).await.unwrap().expect("published");

    // Rewritten in place to another endpoint with a newer-looking epoch.
    let path = a.layout().group(group).master();
    let forged = MasterRecord {
        container: "evil".into(),
        epoch: genuine.epoch + 1,
        services: vec!["stomp://127.0.0.1:6666".into()],
        since: 1,
    };
    a.raw_set(&path, &serde_json::to_vec(&forged).unwrap())
        .await
        .unwrap();
    wait_endpoints(&mut eps, &[]).await;
    assert_eq!(*discovery.master().borrow(), None);

    // Rewritten again with the group's own epoch: still not the record the master created.
    let same_epoch = MasterRecord {
        epoch: genuine.epoch,
        ..forged.clone()
    };
    a.raw_set(&path, &serde_json::to_vec(&same_epoch).unwrap())
        .await
        .unwrap();
    // A genuine record published after it is followed (the forged one never was).
    publish(&a, group, record("broker-b", &["stomp://127.0.0.1:61615"])).await;
    wait_endpoints(&mut eps, &endpoints(&[("127.0.0.1", 61615)])).await;

    // An epoch claimed without a matching record: the old record is outdated.
    a.next_epoch(group).await.unwrap();
    wait_endpoints(&mut eps, &[]).await;
    publish(&a, group, record("broker-c", &["stomp://127.0.0.1:61616"])).await;
    wait_endpoints(&mut eps, &endpoints(&[("127.0.0.1", 61616)])).await;
    drop(discovery);
    a.close().await;
}

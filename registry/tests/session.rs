//! Session events against a real ZooKeeper that is paused (SIGSTOP) and restarted. These tests
//! freeze or restart the server, so they have their own server and run one at a time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use fabricmq_registry::testing::ZkServer;
use fabricmq_registry::{
    ErrorKind, MasterRecord, MemberRecord, MemberState, Profile, Registry, RegistryConfig,
    SessionEvent,
};
use futures::StreamExt;
use tokio::sync::watch;

/// Upper bound of every wait for something that must happen.
const WAIT: Duration = Duration::from_secs(10);

/// The server, shared by the tests of this binary, which take turns.
static ZK: Mutex<Option<ZkServer>> = Mutex::new(None);
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `f` with the server (started on first use); the tests hold [`TURN`] meanwhile.
fn with_zk<T>(f: impl FnOnce(&mut ZkServer) -> T) -> T {
    let mut guard = ZK.lock().unwrap_or_else(|e| e.into_inner());
    let zk = guard.get_or_insert_with(|| {
        let zk = ZkServer::start().expect("ZooKeeper test server (apt-get install zookeeper)");
        eprintln!(
            "ZooKeeper ready in {:?}: {}",
            zk.started_in(),
            zk.command_line().join(" ")
        );
        zk
    });
    f(zk)
}

fn config(session: Duration) -> RegistryConfig {
    RegistryConfig::parse(&with_zk(|zk| zk.chroot_connect()))
        .unwrap()
        .with_session_timeout(session)
        .with_op_timeout(Duration::from_millis(500))
}

async fn connect(config: &RegistryConfig) -> Registry {
    tokio::time::timeout(WAIT, Registry::connect(config.clone()))
        .await
        .expect("connect: timed out")
        .expect("connect")
}

fn record(container: &str) -> MemberRecord {
    MemberRecord {
        container: container.to_string(),
        host: "localhost".into(),
        profile: None,
        state: MemberState::Slave,
        epoch: None,
        ready: true,
        services: vec![],
        started: 1,
        pid: 1,
        store_locked: false,
    }
}

/// Waits (bounded) until the session reports `want`; returns when it did.
async fn wait_event(events: &mut watch::Receiver<SessionEvent>, want: SessionEvent) -> Instant {
    let seen = tokio::time::timeout(WAIT, async {
        events.wait_for(|e| *e == want).await.is_ok()
    })
    .await;
    match seen {
        Ok(true) => Instant::now(),
        Ok(false) => panic!("events channel closed while waiting for {want:?}"),
        Err(_) => panic!("no {want:?} within {WAIT:?} (now {:?})", *events.borrow()),
    }
}

/// Resumes the server even if the test panics while it is paused.
struct Resume;
impl Drop for Resume {
    fn drop(&mut self) {
        with_zk(|zk| zk.resume());
    }
}

#[tokio::test]
async fn short_pause_disconnects_then_reconnects_the_same_session() {
    let _turn = TURN.lock().await;
    let session = Duration::from_secs(2);
    let config = config(session);
    let r = connect(&config).await;
    let observer = connect(&config).await;
    let m = r.join("g", &record("a")).await.unwrap();
    let id = r.session_id();
    let mut events = r.events();
    assert_eq!(*events.borrow_and_update(), SessionEvent::Connected);
    let mut masters = Box::pin(r.watch_master("g"));
    assert_eq!(masters.next().await, Some(None));

    let _resume = Resume;
    let paused = Instant::now();
    with_zk(|zk| zk.pause());
    let disconnected = wait_event(&mut events, SessionEvent::Disconnected).await;
    // A call while ZooKeeper is unreachable fails within the operation timeout; no hang.
    let t = Instant::now();
    let err = r.master("g").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::ConnectionLoss),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "call took {:?}",
        t.elapsed()
    );
    // Resume well within the session timeout (the server expires it 2 s after the last ping).
    let pause = Duration::from_millis(1300);
    tokio::time::sleep_until((paused + pause).into()).await;
    with_zk(|zk| zk.resume());
    let resumed = Instant::now();
    let connected = wait_event(&mut events, SessionEvent::Connected).await;
    eprintln!(
        "session {session:?}: Disconnected {:?} after SIGSTOP; Connected {:?} after SIGCONT (paused {:?})",
        disconnected - paused,
        connected - resumed,
        resumed - paused
    );
    assert_eq!(r.session_id(), id);
    assert!(r.member_exists(&m).await.unwrap());
    assert!(observer.member_exists(&m).await.unwrap());
    assert_eq!(r.members("g").await.unwrap()[0].owner_session, id);
    // The master watch survived the reconnect.
    let claim = observer.next_epoch("g").await.unwrap();
    let rec = MasterRecord {
        container: "o".into(),
        epoch: claim.epoch,
        services: vec![],
        since: 1,
    };
    observer.publish_master("g", claim, &rec).await.unwrap();
    let seen = tokio::time::timeout(WAIT, masters.next())
        .await
        .expect("master after reconnect");
    assert_eq!(seen, Some(Some(rec)));
    r.close().await;
    observer.close().await;
}

#[tokio::test]
async fn long_pause_expires_the_session() {
    let _turn = TURN.lock().await;
    let session = Duration::from_secs(1);
    let config = config(session);
    let r = connect(&config).await;
    assert_eq!(r.negotiated_session_timeout(), session);
    let m = r.join("g", &record("a")).await.unwrap();
    let mut events = r.events();
    let mut masters = Box::pin(r.watch_master("g"));
    assert_eq!(masters.next().await, Some(None));

    let _resume = Resume;
    let paused = Instant::now();
    with_zk(|zk| zk.pause());
    let disconnected = wait_event(&mut events, SessionEvent::Disconnected).await;
    let expired = wait_event(&mut events, SessionEvent::Expired).await;
    with_zk(|zk| zk.resume());
    let resumed = Instant::now();
    eprintln!(
        "session {session:?}: Disconnected {:?} and Expired {:?} after SIGSTOP (resumed at {:?})",
        disconnected - paused,
        expired - paused,
        resumed - paused
    );
    assert!(
        expired - paused >= session,
        "expired early: {:?}",
        expired - paused
    );
    // Terminal: calls fail, the master stream ends.
    let err = r.member_exists(&m).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionExpired, "{err}");
    let err = r.wait_until_first(&m).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionExpired, "{err}");
    assert_eq!(
        tokio::time::timeout(WAIT, masters.next())
            .await
            .expect("stream end"),
        None
    );

    // Seen from a new session: the server expires the old one and its member node goes. Joining
    // and waiting to be first is the event-driven way to see it.
    let s = connect(&config).await;
    let ms = s.join("g", &record("b")).await.unwrap();
    tokio::time::timeout(WAIT, s.wait_until_first(&ms))
        .await
        .expect("old member removed by expiry")
        .unwrap();
    let gone = Instant::now();
    eprintln!("old member node gone {:?} after SIGCONT", gone - resumed);
    assert!(!s.member_exists(&m).await.unwrap());
    let members: Vec<String> = s
        .members("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.node)
        .collect();
    assert_eq!(members, [ms.node]);
    s.close().await;
}

#[tokio::test]
async fn restart_keeps_data_and_the_session() {
    let _turn = TURN.lock().await;
    let config = config(Duration::from_secs(10));
    let r = connect(&config).await;
    let profile = Profile {
        name: "p".into(),
        group: "g".into(),
        kind: "master-slave".into(),
        containers: 2,
        listen: vec!["stomp://0.0.0.0:61613".into()],
        data: "/tmp/x".into(),
        users: None,
        config: None,
    };
    r.create_profile(&profile).await.unwrap();
    let m = r.join("g", &record("a")).await.unwrap();
    let id = r.session_id();
    let mut events = r.events();
    let mut masters = Box::pin(r.watch_master("g"));
    assert_eq!(masters.next().await, Some(None));
    let t = Instant::now();
    let restart = tokio::task::spawn_blocking(|| with_zk(|zk| zk.restart()));
    // The connection drops with the old process and comes back to the restarted server.
    let disconnected = wait_event(&mut events, SessionEvent::Disconnected).await;
    restart.await.unwrap().expect("restart");
    let restarted = Instant::now();
    let connected = wait_event(&mut events, SessionEvent::Connected).await;
    eprintln!(
        "restart: Disconnected {:?} after it began, server back after {:?}, Connected {:?} after that",
        disconnected - t,
        restarted - t,
        connected - restarted
    );
    assert_eq!(r.session_id(), id);
    assert_eq!(r.profile("p").await.unwrap(), Some(profile));
    assert!(r.member_exists(&m).await.unwrap());
    // A change made by another session after the restart reaches the watch set before it.
    let other = connect(&config).await;
    let claim = other.next_epoch("g").await.unwrap();
    let rec = MasterRecord {
        container: "o".into(),
        epoch: claim.epoch,
        services: vec![],
        since: 1,
    };
    other.publish_master("g", claim, &rec).await.unwrap();
    let seen = tokio::time::timeout(WAIT, masters.next())
        .await
        .expect("master after restart");
    assert_eq!(seen, Some(Some(rec)));
    other.close().await;
    r.close().await;
}

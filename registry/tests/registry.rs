//! The registry against a real ZooKeeper (Debian's package, via `testing::ZkServer`): one server
//! for this test binary, a fresh chroot per test. Every wait is bounded; nothing sleeps in place
//! of waiting for an event (the only fixed waits assert that something does *not* happen).

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fabricmq_registry::testing::ZkServer;
use fabricmq_registry::{
    EpochClaim, ErrorKind, MasterRecord, Member, MemberRecord, MemberState, Profile, Registry,
    RegistryConfig, RegistryError, SessionEvent,
};
use futures::StreamExt;

/// Upper bound of every wait for something that must happen.
const WAIT: Duration = Duration::from_secs(10);
/// How long we watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(300);

fn zk() -> &'static ZkServer {
    static ZK: OnceLock<ZkServer> = OnceLock::new();
    ZK.get_or_init(|| {
        let zk = ZkServer::start().expect("ZooKeeper test server (apt-get install zookeeper)");
        eprintln!(
            "ZooKeeper ready in {:?} on port {}",
            zk.started_in(),
            zk.port()
        );
        zk
    })
}

/// A config for a fresh chroot of the shared server.
fn fresh_config() -> RegistryConfig {
    RegistryConfig::parse(&zk().chroot_connect())
        .unwrap()
        .with_session_timeout(Duration::from_secs(4))
        .with_op_timeout(Duration::from_secs(3))
}

async fn connect(config: &RegistryConfig) -> Registry {
    within("connect", Registry::connect(config.clone()))
        .await
        .expect("connect")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {WAIT:?}"))
}

fn record(container: &str) -> MemberRecord {
    MemberRecord {
        container: container.to_string(),
        host: "localhost".into(),
        profile: Some("p1".into()),
        state: MemberState::Slave,
        epoch: None,
        ready: false,
        services: vec![],
        started: 1_700_000_000_000,
        pid: 4242,
        store_locked: false,
    }
}

fn master_record(container: &str, claim: EpochClaim) -> MasterRecord {
    MasterRecord {
        container: container.to_string(),
        epoch: claim.epoch,
        services: vec![format!("stomp://127.0.0.1:{}", 61000 + claim.epoch)],
        since: 1_700_000_000_000 + claim.epoch,
    }
}

fn profile(name: &str) -> Profile {
    Profile {
        name: name.to_string(),
        group: "g1".into(),
        kind: "master-slave".into(),
        containers: 2,
        listen: vec!["stomp://0.0.0.0:61613".into()],
        data: "/srv/fabricmq/g1".into(),
        users: None,
        config: None,
    }
}

/// Spawns `wait_until_first` for `m` on `registry`.
fn spawn_wait(
    registry: &Registry,
    m: &Member,
) -> tokio::task::JoinHandle<Result<(), RegistryError>> {
    let registry = registry.clone();
    let m = m.clone();
    tokio::spawn(async move { registry.wait_until_first(&m).await })
}

/// Asserts the task is still pending after [`QUIET`].
async fn still_waiting<T: std::fmt::Debug>(task: &mut tokio::task::JoinHandle<T>, who: &str) {
    if let Ok(done) = tokio::time::timeout(QUIET, &mut *task).await {
        panic!("{who} should still be waiting, got {done:?}");
    }
}

#[tokio::test]
async fn unreachable_address_fails_within_connect_timeout() {
    // A closed port: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = RegistryConfig::parse(&format!("127.0.0.1:{port}"))
        .unwrap()
        .with_connect_timeout(Duration::from_millis(800));
    let t = Instant::now();
    let err = Registry::connect(config).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(took < Duration::from_millis(1500), "refused: took {took:?}");

    // A hung "server": accepts TCP connections (kernel backlog) but never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = RegistryConfig::parse(&hung.local_addr().unwrap().to_string())
        .unwrap()
        .with_connect_timeout(Duration::from_millis(800));
    let t = Instant::now();
    let err = Registry::connect(config).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(
        took >= Duration::from_millis(700),
        "hung: gave up early after {took:?}"
    );
    assert!(took < Duration::from_millis(1500), "hung: took {took:?}");
    drop(hung);
}

#[tokio::test]
async fn connect_creates_a_missing_chroot_and_reports_the_session() {
    let config = RegistryConfig::parse(&format!(
        "{}/fresh{}/nested",
        zk().connect_string(),
        std::process::id()
    ))
    .unwrap();
    let r = connect(&config).await;
    assert_ne!(r.session_id(), 0);
    assert_eq!(r.state(), SessionEvent::Connected);
    assert_eq!(*r.events().borrow(), SessionEvent::Connected);
    assert_eq!(r.negotiated_session_timeout(), Duration::from_secs(4));
    r.put_profile(&profile("p")).await.unwrap();
    assert_eq!(r.profile("p").await.unwrap(), Some(profile("p")));
    // The chroot holds the whole tree.
    let plain = connect(&RegistryConfig::parse(&zk().connect_string()).unwrap()).await;
    let raw = plain
        .raw_data(&format!(
            "/fresh{}/nested/fabric/profiles/p",
            std::process::id()
        ))
        .await
        .unwrap();
    assert!(raw.is_some());
    plain.close().await;
    r.close().await;
}

#[tokio::test]
async fn join_lists_members_in_sequence_order() {
    let config = fresh_config();
    let (a, b, c) = (
        connect(&config).await,
        connect(&config).await,
        connect(&config).await,
    );
    let ma = a.join("g", &record("broker-a")).await.unwrap();
    let mb = b.join("g", &record("broker-b")).await.unwrap();
    let mc = c.join("g", &record("broker-c")).await.unwrap();
    assert!(ma.seq < mb.seq && mb.seq < mc.seq, "{ma:?} {mb:?} {mc:?}");
    assert_eq!(ma.node, format!("broker-a-{:010}", ma.seq));
    assert_eq!(ma.group, "g");

    let members = a.members("g").await.unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(names, [&ma.node, &mb.node, &mc.node]);
    let owners: Vec<i64> = members.iter().map(|m| m.owner_session).collect();
    assert_eq!(owners, [a.session_id(), b.session_id(), c.session_id()]);
    assert_eq!(members[1].record, record("broker-b"));
    assert_eq!(members[2].seq, mc.seq);
    assert_eq!(a.groups().await.unwrap(), ["g"]);
    assert!(a.members("other").await.unwrap().is_empty());

    // update_member / member_exists / predecessor
    let mut rec = record("broker-b");
    rec.state = MemberState::Activating;
    rec.ready = true;
    b.update_member(&mb, &rec).await.unwrap();
    assert_eq!(c.predecessor(&mc).await.unwrap().unwrap().record, rec);
    assert_eq!(a.predecessor(&ma).await.unwrap(), None);
    assert!(c.member_exists(&mb).await.unwrap());

    // A closed session's member vanishes at once.
    b.close().await;
    assert!(!c.member_exists(&mb).await.unwrap());
    let names: Vec<String> = c
        .members("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.node)
        .collect();
    assert_eq!(names, [ma.node.clone(), mc.node.clone()]);
    assert_eq!(c.predecessor(&mc).await.unwrap().unwrap().node, ma.node);
    let err = c.update_member(&mb, &rec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoNode);
    let err = c.predecessor(&mb).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoNode);

    // Bad names are refused before reaching ZooKeeper.
    let err = a.join("a/b", &record("x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let err = a.join("g", &record("")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    a.close().await;
    c.close().await;
}

#[tokio::test]
async fn only_the_lowest_member_is_first_and_each_watches_only_its_predecessor() {
    let config = fresh_config();
    let (a, b, c) = (
        connect(&config).await,
        connect(&config).await,
        connect(&config).await,
    );
    let ma = a.join("g", &record("a")).await.unwrap();
    let mb = b.join("g", &record("b")).await.unwrap();
    let mc = c.join("g", &record("c")).await.unwrap();

    let mut wa = spawn_wait(&a, &ma);
    let mut wb = spawn_wait(&b, &mb);
    let mut wc = spawn_wait(&c, &mc);
    within("a first", &mut wa).await.unwrap().unwrap();
    still_waiting(&mut wb, "b").await;
    still_waiting(&mut wc, "c").await;

    // Herd-free: b watches only a's node, c only b's; nobody watches the members' children.
    let watches = zk().four_letter("wchp").expect("wchp");
    let members_dir = "/registry/clusters/g/members";
    let watched: Vec<&str> = watches
        .lines()
        .filter(|l| l.starts_with('/') && l.contains(members_dir))
        .collect();
    let node_a = format!("{members_dir}/{}", ma.node);
    let node_b = format!("{members_dir}/{}", mb.node);
    assert_eq!(watched.len(), 2, "watched paths: {watched:?}\n{watches}");
    assert!(watched.iter().any(|l| l.ends_with(&node_a)), "{watched:?}");
    assert!(watched.iter().any(|l| l.ends_with(&node_b)), "{watched:?}");

    // The first one leaves: the second becomes first, the third keeps waiting.
    a.close().await;
    within("b first", &mut wb).await.unwrap().unwrap();
    still_waiting(&mut wc, "c").await;
    assert_eq!(c.predecessor(&mc).await.unwrap().unwrap().node, mb.node);

    // Fast takeover: a third session removes b's node (its owner proved dead): c is first.
    let d = connect(&config).await;
    d.remove_member_node("g", &mb.node).await.unwrap();
    d.remove_member_node("g", &mb.node).await.unwrap(); // NoNode is Ok
    within("c first", &mut wc).await.unwrap().unwrap();
    // b's own wait now reports its node gone.
    let err = b.wait_until_first(&mb).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoNode, "{err}");
    for r in [b, c, d] {
        r.close().await;
    }
}

#[tokio::test]
async fn wait_until_first_ends_with_session_expired_when_the_session_closes() {
    let config = fresh_config();
    let (a, b) = (connect(&config).await, connect(&config).await);
    let _ma = a.join("g", &record("a")).await.unwrap();
    let mb = b.join("g", &record("b")).await.unwrap();
    let mut wb = spawn_wait(&b, &mb);
    still_waiting(&mut wb, "b").await;
    b.close().await;
    let err = within("b's wait ends", wb).await.unwrap().unwrap_err();
    assert!(matches!(err, RegistryError::SessionExpired), "{err}");
    assert_eq!(b.state(), SessionEvent::Closed);
    // Every call on a closed registry says so.
    let err = b.master("g").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionExpired);
    let err = b.join("g", &record("b")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionExpired);
    b.close().await; // idempotent
    a.close().await;
}

#[tokio::test]
async fn next_epoch_is_a_cas_counter_under_concurrency() {
    let config = fresh_config();
    let (a, b) = (connect(&config).await, connect(&config).await);
    assert_eq!(a.current_epoch("g").await.unwrap(), 0);
    let race = |r: Registry| async move {
        let mut claims = Vec::new();
        for _ in 0..20 {
            claims.push(r.next_epoch("g").await.unwrap());
        }
        claims
    };
    let (ca, cb) = within("40 claims", async {
        tokio::join!(tokio::spawn(race(a.clone())), tokio::spawn(race(b.clone())))
    })
    .await;
    let claims: Vec<EpochClaim> = ca.unwrap().into_iter().chain(cb.unwrap()).collect();
    let epochs: HashSet<u64> = claims.iter().map(|c| c.epoch).collect();
    assert_eq!(epochs.len(), 40, "duplicate epochs: {claims:?}");
    assert_eq!(epochs, (1..=40).collect::<HashSet<u64>>());
    // Each claim's version is the node version its write produced.
    for c in &claims {
        assert_eq!(c.version as u64, c.epoch - 1, "{c:?}");
    }
    assert_eq!(a.current_epoch("g").await.unwrap(), 40);
    assert_eq!(b.next_epoch("g").await.unwrap().epoch, 41);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn publish_master_is_fenced_by_the_epoch() {
    let config = fresh_config();
    let (a, b) = (connect(&config).await, connect(&config).await);
    let claim_a = a.next_epoch("g").await.unwrap();
    let claim_b = b.next_epoch("g").await.unwrap();
    assert!(claim_b.epoch > claim_a.epoch);

    // b claimed a newer epoch: a's publish must fail.
    let err = a
        .publish_master("g", claim_a, &master_record("a", claim_a))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadVersion, "{err}");
    assert!(
        err.to_string().contains("/registry/clusters/g/epoch"),
        "{err}"
    );
    assert_eq!(a.master("g").await.unwrap(), None);

    b.publish_master("g", claim_b, &master_record("b", claim_b))
        .await
        .unwrap();
    assert_eq!(
        a.master("g").await.unwrap(),
        Some(master_record("b", claim_b))
    );

    // A master node exists: NodeExists, even with a valid newer claim.
    let claim_a2 = a.next_epoch("g").await.unwrap();
    let err = a
        .publish_master("g", claim_a2, &master_record("a", claim_a2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NodeExists, "{err}");
    assert!(
        err.to_string().contains("/registry/clusters/g/master"),
        "{err}"
    );

    // remove_master only removes our own node.
    a.remove_master("g").await.unwrap();
    assert_eq!(
        a.master("g").await.unwrap(),
        Some(master_record("b", claim_b))
    );
    // remove_master_any removes another session's ephemeral node.
    a.remove_master_any("g").await.unwrap();
    assert_eq!(a.master("g").await.unwrap(), None);
    a.remove_master_any("g").await.unwrap(); // NoNode is Ok

    a.publish_master("g", claim_a2, &master_record("a", claim_a2))
        .await
        .unwrap();
    b.remove_master("g").await.unwrap();
    assert_eq!(
        b.master("g").await.unwrap(),
        Some(master_record("a", claim_a2))
    );
    a.remove_master("g").await.unwrap();
    assert_eq!(b.master("g").await.unwrap(), None);
    a.remove_master("g").await.unwrap(); // nothing to remove

    // The master node is ephemeral: it goes with its session.
    let claim_b2 = b.next_epoch("g").await.unwrap();
    b.publish_master("g", claim_b2, &master_record("b", claim_b2))
        .await
        .unwrap();
    b.close().await;
    assert_eq!(a.master("g").await.unwrap(), None);
    a.close().await;
}

#[tokio::test]
async fn watch_master_sees_appear_change_and_disappear() {
    let config = fresh_config();
    let (w, a, b) = (
        connect(&config).await,
        connect(&config).await,
        connect(&config).await,
    );
    let mut stream = Box::pin(w.watch_master("g"));
    assert_eq!(within("initial", stream.next()).await, Some(None));

    let c1 = a.next_epoch("g").await.unwrap();
    a.publish_master("g", c1, &master_record("a", c1))
        .await
        .unwrap();
    assert_eq!(
        within("appear", stream.next()).await,
        Some(Some(master_record("a", c1)))
    );

    // Replaced by another master: either directly the new record, or none then the new one.
    a.close().await;
    let c2 = b.next_epoch("g").await.unwrap();
    b.publish_master("g", c2, &master_record("b", c2))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&Some(master_record("b", c2))) {
        seen.push(within("change", stream.next()).await.expect("stream ended"));
    }
    assert!(seen.len() <= 2, "{seen:?}");

    b.remove_master("g").await.unwrap();
    assert_eq!(within("disappear", stream.next()).await, Some(None));

    // A watcher started later gets the current value first.
    let c3 = b.next_epoch("g").await.unwrap();
    b.publish_master("g", c3, &master_record("b", c3))
        .await
        .unwrap();
    let mut late = Box::pin(w.watch_master("g"));
    assert_eq!(
        within("late initial", late.next()).await,
        Some(Some(master_record("b", c3)))
    );
    assert_eq!(
        within("appear again", stream.next()).await,
        Some(Some(master_record("b", c3)))
    );

    // The streams end when their session closes.
    w.close().await;
    assert_eq!(within("end", stream.next()).await, None);
    assert_eq!(within("late end", late.next()).await, None);
    b.close().await;
}

#[tokio::test]
async fn watch_master_ends_when_every_registry_clone_is_dropped() {
    let config = fresh_config();
    let w = connect(&config).await;
    let mut stream = Box::pin(w.watch_master("g"));
    assert_eq!(within("initial", stream.next()).await, Some(None));
    drop(w);
    assert_eq!(within("end", stream.next()).await, None);
}

#[tokio::test]
async fn profiles_crud() {
    let config = fresh_config();
    let r = connect(&config).await;
    assert!(r.profiles().await.unwrap().is_empty());
    assert_eq!(r.profile("p1").await.unwrap(), None);

    r.create_profile(&profile("p2")).await.unwrap();
    r.create_profile(&profile("p1")).await.unwrap();
    let err = r.create_profile(&profile("p1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NodeExists);
    assert!(err.to_string().contains("/fabric/profiles/p1"), "{err}");
    assert_eq!(r.profile("p1").await.unwrap(), Some(profile("p1")));

    let mut changed = profile("p1");
    changed.containers = 3;
    changed.users = Some("/etc/fabricmq/users".into());
    changed.config = Some("/etc/fabricmq/extra.toml".into());
    r.put_profile(&changed).await.unwrap();
    r.put_profile(&profile("p3")).await.unwrap(); // create through put
    assert_eq!(r.profile("p1").await.unwrap(), Some(changed.clone()));
    let names: Vec<String> = r
        .profiles()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["p1", "p2", "p3"]);

    r.delete_profile("p2").await.unwrap();
    let err = r.delete_profile("p2").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoNode);
    assert_eq!(r.profile("p2").await.unwrap(), None);
    assert_eq!(r.profiles().await.unwrap(), vec![changed, profile("p3")]);

    let err = r.profile("../x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let err = r.create_profile(&profile("a/b")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    r.close().await;
}

#[tokio::test]
async fn nodes_hold_plain_json() {
    let config = fresh_config();
    let r = connect(&config).await;
    let m = r.join("g", &record("broker1")).await.unwrap();
    let claim = r.next_epoch("g").await.unwrap();
    r.publish_master("g", claim, &master_record("broker1", claim))
        .await
        .unwrap();
    r.create_profile(&profile("p1")).await.unwrap();

    let json = |bytes: Option<Vec<u8>>| -> serde_json::Value {
        serde_json::from_slice(&bytes.expect("node exists")).expect("plain JSON")
    };
    let member = json(
        r.raw_data(&format!("/fabric/registry/clusters/g/members/{}", m.node))
            .await
            .unwrap(),
    );
    assert_eq!(member["container"], "broker1");
    assert_eq!(member["state"], "slave");
    assert_eq!(member["pid"], 4242);
    assert_eq!(member["profile"], "p1");
    let master = json(
        r.raw_data("/fabric/registry/clusters/g/master")
            .await
            .unwrap(),
    );
    assert_eq!(master["container"], "broker1");
    assert_eq!(master["epoch"], 1);
    assert_eq!(master["services"][0], "stomp://127.0.0.1:61001");
    let epoch = json(
        r.raw_data("/fabric/registry/clusters/g/epoch")
            .await
            .unwrap(),
    );
    assert_eq!(epoch, serde_json::json!({ "epoch": 1 }));
    let p = json(r.raw_data("/fabric/profiles/p1").await.unwrap());
    assert_eq!(p["kind"], "master-slave");
    assert_eq!(p["listen"][0], "stomp://0.0.0.0:61613");
    assert_eq!(
        r.raw_children("/fabric/registry/clusters/g").await.unwrap(),
        ["epoch", "master", "members"]
    );
    assert_eq!(r.raw_data("/nope").await.unwrap(), None);

    // And ZooKeeper's own CLI reads it as-is.
    let chroot = config.chroot.clone().unwrap();
    let zk = zk();
    let path = format!("{chroot}/fabric/registry/clusters/g/epoch");
    let out = tokio::task::spawn_blocking(move || zk.cli(&["get", &path]))
        .await
        .unwrap()
        .expect("zkCli");
    assert!(out.contains(r#"{"epoch":1}"#), "zkCli output: {out}");
    r.close().await;
}

#[tokio::test]
async fn invalid_content_is_reported_with_the_path() {
    use zookeeper_client as zkc;
    let config = fresh_config();
    let r = connect(&config).await;
    r.create_profile(&profile("good")).await.unwrap();
    let m = r.join("g", &record("a")).await.unwrap();
    r.next_epoch("g").await.unwrap();

    // Garbage written behind the registry's back (as a human with zkCli could).
    let chroot = config.chroot.clone().unwrap();
    let raw = zkc::Client::connect(&format!("{}{chroot}", zk().connect_string()))
        .await
        .unwrap();
    let open = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    raw.create("/fabric/profiles/bad", b"not json", &open)
        .await
        .unwrap();
    raw.create(
        "/fabric/registry/clusters/g/members/junk-0000000099",
        b"{}",
        &open,
    )
    .await
    .unwrap();
    raw.create(
        "/fabric/registry/clusters/g/members/not-a-member",
        b"",
        &open,
    )
    .await
    .unwrap();
    raw.set_data(
        "/fabric/registry/clusters/g/epoch",
        b"{\"epoch\":\"two\"}",
        None,
    )
    .await
    .unwrap();

    let err = r.profile("bad").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("/fabric/profiles/bad"), "{err}");
    let names: Vec<String> = r
        .profiles()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["good"]);
    let members: Vec<String> = r
        .members("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.node)
        .collect();
    assert_eq!(members, [m.node.as_str()]);
    let err = r.next_epoch("g").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(
        err.to_string().contains("/registry/clusters/g/epoch"),
        "{err}"
    );
    // A non-member child does not disturb the election.
    within("first", r.wait_until_first(&m)).await.unwrap();
    drop(raw);
    r.close().await;
}

/// The master's guard puts its record back after a rewrite and a delete by another session,
/// and gives up (BadVersion: the caller steps down) once the epoch moved on; it never replaces
/// the newer master's record.
#[tokio::test]
async fn the_guard_restores_the_master_record_until_the_epoch_moves_on() {
    let config = fresh_config();
    let (a, b) = (connect(&config).await, connect(&config).await);
    let claim = a.next_epoch("g").await.unwrap();
    let mine = master_record("a", claim);
    a.publish_master("g", claim, &mine).await.unwrap();
    let guard = tokio::spawn({
        let (a, mine) = (a.clone(), mine.clone());
        async move { a.guard_master("g", claim, &mine).await }
    });
    let path = b.layout().group("g").master();
    let wait_restored = |what: &'static str| {
        let (b, mine) = (b.clone(), mine.clone());
        within(what, async move {
            let mut stream = Box::pin(b.watch_master("g"));
            while let Some(value) = stream.next().await {
                if value.as_ref() == Some(&mine) {
                    return;
                }
            }
        })
    };
    let forged = MasterRecord {
        container: "evil".into(),
        ..mine.clone()
    };
    b.raw_set(&path, &serde_json::to_vec(&forged).unwrap())
        .await
        .unwrap();
    wait_restored("restored after a rewrite").await;
    b.raw_delete(&path).await.unwrap();
    wait_restored("restored after a delete").await;
    assert!(!guard.is_finished());

    // A newer epoch: the guard may not restore any more.
    b.remove_master_any("g").await.unwrap();
    let newer = b.next_epoch("g").await.unwrap();
    let err = within("guard gives up", guard).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadVersion, "{err}");
    // (The guard may have restored the record once between the delete and the claim.)
    b.remove_master_any("g").await.unwrap();
    b.publish_master("g", newer, &master_record("b", newer))
        .await
        .unwrap();
    assert_eq!(
        b.master("g").await.unwrap(),
        Some(master_record("b", newer))
    );
}

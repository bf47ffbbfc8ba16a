//! Registry security: with digest credentials, brokers and `mq-fabric` write the fabric's nodes
//! (ACL: the authenticated identity may do anything, anyone may read); a client without them can
//! still discover the master and use it, but cannot change the registry; wrong credentials are
//! refused; credentials never appear on a command line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabricmq_client::{BrokerUrl, ConnectOptions, Connection, Outgoing};
use fabricmq_registry::{
    ErrorKind, HandoverRequest, MasterRecord, MemberRecord, MemberState, Profile, Registry,
    RegistryConfig, ZkCredentials,
};
use fabricmq_tests::process::{binary, free_port, BrokerOptions, BrokerProcess};

mod fabric_common;

use fabric_common::*;

async fn registry(zk: &str, creds: Option<&str>) -> Registry {
    let config = RegistryConfig::parse(zk)
        .unwrap()
        .with_credentials(creds.map(|c| ZkCredentials::parse(c).unwrap()));
    Registry::connect(config).await.unwrap()
}

fn profile(name: &str) -> Profile {
    Profile {
        name: name.into(),
        group: "default".into(),
        kind: "master-slave".into(),
        containers: 2,
        listen: vec!["stomp://0.0.0.0:61613".into()],
        data: "/srv/fabricmq/default".into(),
        users: None,
        config: None,
    }
}

async fn mq_fabric(zk: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(binary("mq-fabric"));
    cmd.args(["--zk", zk]).args(args);
    cmd.env_remove("FABRIC_ZK_AUTH")
        .env_remove("FABRIC_ZK_AUTH_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_credentialed_sessions_change_a_secured_fabric_and_anyone_reads_it() {
    let _serial = SERIAL.lock().await;
    let zk = zk().chroot_connect();
    let work = tempfile::tempdir().unwrap();
    let auth_file = work.path().join("zk-auth");
    std::fs::write(&auth_file, "fabric:s3cret\n").unwrap();

    // A broker with the credentials (from a file named in the environment) becomes master.
    let port = free_port();
    let mut broker = BrokerProcess::start(BrokerOptions {
        listen: Some(format!("stomp://127.0.0.1:{port}")),
        fabric: Some((zk.clone(), "default".into(), "broker1".into())),
        args: vec!["--session-timeout".into(), SESSION.into()],
        env: vec![(
            "FABRIC_ZK_AUTH_FILE".into(),
            auth_file.display().to_string(),
        )],
        ..Default::default()
    })
    .await
    .unwrap();
    broker
        .wait_role(&["master"], Duration::from_secs(20))
        .await
        .unwrap();

    let admin = registry(&zk, Some("fabric:s3cret")).await;
    admin.create_profile(&profile("secured")).await.unwrap();
    let anonymous = registry(&zk, None).await;
    let intruder = registry(&zk, Some("fabric:wrong")).await;

    // Anyone reads.
    assert!(anonymous.profile("secured").await.unwrap().is_some());
    let master = anonymous.master("default").await.unwrap().expect("master");
    assert_eq!(master.container, "broker1");
    // Nobody else writes: profiles, the master record (rewrite or delete), the group's epoch, the
    // members, a hand-over request.
    let paths = admin.layout().group("default");
    let fake = br#"{"container":"evil","epoch":99,"services":["stomp://127.0.0.1:1"],"since":0}"#;
    for r in [&anonymous, &intruder] {
        let denied = [
            r.raw_set(&paths.master(), fake).await.err(),
            r.raw_delete(&paths.master()).await.err(),
            r.raw_set(&paths.epoch(), br#"{"epoch":99}"#).await.err(),
            r.next_epoch("default").await.err(),
            r.put_profile(&profile("secured")).await.err(),
            r.delete_profile("secured").await.err(),
            r.remove_master_any("default").await.err(),
            r.request_handover(
                "default",
                &HandoverRequest {
                    id: "x".into(),
                    from: "broker1".into(),
                    to: None,
                    requested: 0,
                },
            )
            .await
            .err(),
        ];
        for (i, e) in denied.into_iter().enumerate() {
            let e = e.unwrap_or_else(|| panic!("write {i} was allowed"));
            assert_eq!(e.kind(), ErrorKind::NoAuth, "write {i}: {e}");
        }
        for m in r.members("default").await.unwrap() {
            let e = r.remove_member_node("default", &m.node).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NoAuth, "{e}");
        }
    }
    assert!(admin.master("default").await.unwrap().is_some());

    // A discovery client without credentials finds the master and is served.
    let url: BrokerUrl = format!("discovery:fabric:default?zk={zk}").parse().unwrap();
    let conn = Connection::connect(
        &url,
        ConnectOptions {
            login: Some("admin".into()),
            passcode: Some("admin".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    conn.send(Outgoing::new("/queue/secured", "hello"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();

    // mq-fabric: refused without credentials (one clear line saying how to fix it), allowed
    // with them.
    let (code, out) = mq_fabric(&zk, &[], &["profile", "delete", "secured"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("needs registry credentials"), "{out}");
    assert!(out.contains("--zk-auth-file"), "{out}");
    // Insecure on purpose: the secured node still refuses the anonymous write.
    let (code, out) = mq_fabric(
        &zk,
        &[("FABRIC_ZK_INSECURE", "1")],
        &["profile", "delete", "secured"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not authorized"), "{out}");
    assert!(out.contains("WITHOUT registry credentials"), "{out}");
    let (code, out) = mq_fabric(
        &zk,
        &[("FABRIC_ZK_AUTH", "fabric:wrong")],
        &["profile", "delete", "secured"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    let (code, out) = mq_fabric(
        &zk,
        &[],
        &[
            "--zk-auth-file",
            auth_file.to_str().unwrap(),
            "profile",
            "delete",
            "secured",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    // Reading needs nothing.
    let (code, out) = mq_fabric(&zk, &[], &["cluster-list"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("broker1"), "{out}");

    // The broker's command line carries no secret.
    let pid = broker.pid().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret"));

    for r in [admin, anonymous, intruder] {
        r.close().await;
    }
    broker.assert_no_panic();
}

#[test]
fn credentials_parse_and_hide_the_password() {
    let c = ZkCredentials::parse(" fabric:pa:ss\n").unwrap();
    assert_eq!((c.user.as_str(), c.password.as_str()), ("fabric", "pa:ss"));
    assert!(!format!("{c:?}").contains("pa:ss"));
    for bad in ["", "nocolon", ":pw", "user:"] {
        assert!(ZkCredentials::parse(bad).is_err(), "{bad:?}");
    }
}

/// Waits (bounded) until the group's master record holds `expected` again.
async fn wait_record(registry: &Registry, group: &str, expected: &MasterRecord, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if registry.master(group).await.ok().flatten().as_ref() == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the master did not restore its record within 20 s (now {:?})",
            registry.master(group).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Secure by default: a fabric container without registry credentials and without the explicit
/// insecure flag refuses to start, saying how to fix it, and writes nothing to the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fabric_broker_without_registry_credentials_refuses_to_start() {
    let _serial = SERIAL.lock().await;
    let zk = zk().chroot_connect();
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = BrokerProcess::start(BrokerOptions {
        raw_args: true,
        args: [
            "--zk",
            zk.as_str(),
            "--group",
            "default",
            "--container",
            "broker1",
            "--listen",
            &format!("stomp://127.0.0.1:{port}"),
            "--data",
            work.path().join("data").to_str().unwrap(),
            "--no-admin",
        ]
        .map(String::from)
        .to_vec(),
        no_registry_credentials: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let code = broker.wait_exit(Duration::from_secs(20)).await;
    let log = broker.log_text();
    assert_eq!(
        code.ok().flatten(),
        Some(1),
        "the broker must refuse to start:\n{log}"
    );
    for part in [
        "needs registry credentials",
        "--zk-auth-file",
        "FABRIC_ZK_AUTH_FILE",
        "--zk-insecure",
        "redirect clients",
    ] {
        assert!(log.contains(part), "{part:?} missing from:\n{log}");
    }
    let anonymous = registry(&zk, None).await;
    assert!(
        anonymous.groups().await.unwrap().is_empty(),
        "nothing may be written"
    );
    anonymous.close().await;

    // mq-fabric commands that write refuse too; reading needs nothing.
    let (code, out) = mq_fabric(&zk, &[], &["master", "yield", "default"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("needs registry credentials"), "{out}");
    let (code, out) = mq_fabric(&zk, &[], &["status"]).await;
    assert_eq!(code, 0, "{out}");

    // The explicit flag starts it, with a warning saying what it gives up.
    let mut broker = BrokerProcess::start(BrokerOptions {
        listen: Some(format!("stomp://127.0.0.1:{port}")),
        fabric: Some((zk.clone(), "default".into(), "broker1".into())),
        args: ["--session-timeout", SESSION, "--zk-insecure", "--no-admin"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    broker
        .wait_role(&["master"], Duration::from_secs(20))
        .await
        .unwrap();
    let log = broker.log_text();
    assert!(
        log.contains("WITHOUT registry credentials") && log.contains("redirect clients"),
        "{log}"
    );
    broker.assert_no_panic();
}

/// In a fabric run insecure on purpose, an intruder rewrites the master record to its own
/// endpoint (a newer-looking epoch) and later deletes it. A discovery producer never goes to the
/// fake endpoint (the record's epoch is not the group's), every message reaches the real queue,
/// and the master puts its record back each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_restores_its_record_and_clients_ignore_a_forged_one() {
    let _serial = SERIAL.lock().await;
    let zk = zk().chroot_connect();
    let port = free_port();
    let mut broker = BrokerProcess::start(BrokerOptions {
        listen: Some(format!("stomp://127.0.0.1:{port}")),
        fabric: Some((zk.clone(), "default".into(), "broker1".into())),
        args: vec!["--session-timeout".into(), SESSION.into()],
        // The environment form of the flag (old brokers ignore it, so this test runs against
        // them too).
        env: vec![("FABRIC_ZK_INSECURE".into(), "1".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    broker
        .wait_role(&["master"], Duration::from_secs(20))
        .await
        .unwrap();
    let intruder = registry(&zk, None).await;
    let genuine = intruder.master("default").await.unwrap().expect("master");
    let master_path = intruder.layout().group("default").master();

    // The intruder's endpoint counts every connection it gets.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let dialed = Arc::new(AtomicUsize::new(0));
    let counter = dialed.clone();
    let fake_task = tokio::spawn(async move {
        while let Ok((socket, _)) = fake.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });

    let url: BrokerUrl = format!("discovery:fabric:default?zk={zk}").parse().unwrap();
    let conn = Connection::connect(
        &url,
        ConnectOptions {
            login: Some("admin".into()),
            passcode: Some("admin".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut sent = 0;
    for _ in 0..5 {
        conn.send(Outgoing::new("/queue/redirect", format!("m{sent}")))
            .await
            .unwrap();
        sent += 1;
    }

    // Rewrite: a record one epoch ahead, pointing at the intruder.
    let forged = MasterRecord {
        container: "evil".into(),
        epoch: genuine.epoch + 1,
        services: vec![format!("stomp://127.0.0.1:{fake_port}")],
        since: genuine.since,
    };
    let attacked = Instant::now();
    intruder
        .raw_set(&master_path, &serde_json::to_vec(&forged).unwrap())
        .await
        .unwrap();
    for _ in 0..20 {
        conn.send(Outgoing::new("/queue/redirect", format!("m{sent}")))
            .await
            .unwrap();
        sent += 1;
    }
    wait_record(&intruder, "default", &genuine, "after the rewrite").await;
    let rewrite_seen = attacked.elapsed();

    // Delete: the group must not stay masterless.
    let attacked = Instant::now();
    intruder.raw_delete(&master_path).await.unwrap();
    wait_record(&intruder, "default", &genuine, "after the delete").await;
    // Measured, not asserted (includes 20 receipted sends and the 10 ms polling of the check).
    eprintln!(
        "record back {:?} after the rewrite (20 receipted sends in between), {:?} after the delete",
        rewrite_seen,
        attacked.elapsed()
    );
    for _ in 0..5 {
        conn.send(Outgoing::new("/queue/redirect", format!("m{sent}")))
            .await
            .unwrap();
        sent += 1;
    }
    conn.disconnect().await.unwrap();

    assert_eq!(
        dialed.load(Ordering::SeqCst),
        0,
        "a client connected to the forged endpoint"
    );
    let got = drain(addr_of(&genuine), "/queue/redirect", sent).await;
    assert_eq!(got.len(), sent, "{got:?}");
    eprintln!(
        "sent {sent} receipted, {} on the real queue, {} connections to the forged endpoint",
        got.len(),
        dialed.load(Ordering::SeqCst)
    );
    let log = broker.log_text();
    assert!(log.contains("master record restored"), "{log}");
    assert_eq!(broker.role().as_deref(), Some("master"));
    fake_task.abort();
    intruder.close().await;
    broker.assert_no_panic();
}

/// A group whose nodes were created anonymously (open ACLs) before the fabric was secured: the
/// first credentialed broker repairs them at start-up (a WARN per node) and from then on an
/// anonymous session can change none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentialed_broker_repairs_open_acls_of_its_group_at_start_up() {
    let _serial = SERIAL.lock().await;
    let zk = zk().chroot_connect();
    let anonymous = registry(&zk, None).await;
    // Pre-created without credentials: the root nodes, the group, its members and epoch nodes,
    // the profiles node.
    let member = anonymous
        .join(
            "default",
            &MemberRecord {
                container: "squatter".into(),
                host: "127.0.0.1".into(),
                profile: None,
                state: MemberState::Slave,
                epoch: None,
                ready: false,
                services: Vec::new(),
                started: 0,
                pid: 0,
                store_locked: false,
            },
        )
        .await
        .unwrap();
    anonymous
        .remove_member_node("default", &member.node)
        .await
        .unwrap();
    anonymous.next_epoch("default").await.unwrap();
    anonymous.create_profile(&profile("open")).await.unwrap();
    let layout = anonymous.layout().clone();
    let paths = layout.group("default");
    let owned = [
        layout.root.clone(),
        format!("{}/registry", layout.root),
        layout.clusters(),
        layout.profiles(),
        paths.group.clone(),
        paths.members(),
        paths.epoch(),
    ];
    for node in &owned {
        let acl = anonymous.acl(node).await.unwrap().expect(node);
        assert!(acl.iter().any(|e| e.is_open()), "{node}: {acl:?}");
    }

    // A credentialed broker (the harness's credentials) starts and becomes master.
    let port = free_port();
    let mut broker = BrokerProcess::start(BrokerOptions {
        listen: Some(format!("stomp://127.0.0.1:{port}")),
        fabric: Some((zk.clone(), "default".into(), "broker1".into())),
        args: vec!["--session-timeout".into(), SESSION.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    broker
        .wait_role(&["master"], Duration::from_secs(20))
        .await
        .unwrap();

    for node in owned.iter().chain([&paths.master()]) {
        let acl = anonymous.acl(node).await.unwrap().expect(node);
        assert!(
            !acl.iter().any(|e| e.is_open()),
            "{node} still open: {acl:?}"
        );
        assert!(
            acl.iter()
                .any(|e| e.scheme == "world" && e.id == "anyone" && e.permissions == "READ"),
            "{node}: anyone must still read: {acl:?}"
        );
    }
    let log = broker.log_text();
    for node in [&paths.group, &paths.epoch()] {
        assert!(
            log.lines()
                .any(|l| l.contains("repaired an open registry ACL") && l.contains(node.as_str())),
            "no repair logged for {node}:\n{log}"
        );
    }
    // The same check as zkCli's getAcl, through ZooKeeper's own client.
    let cli = zk_server_path(&zk, &paths.group);
    let text = fabric_common::zk().cli(&["getAcl", &cli]).unwrap();
    assert!(!text.contains("'world,'anyone\n: cdrwa"), "{text}");

    // Behaviour, not only the ACL: the anonymous session can no longer change the group.
    let denied = [
        anonymous.next_epoch("default").await.err(),
        anonymous.raw_set(&paths.master(), b"{}").await.err(),
        anonymous.remove_master_any("default").await.err(),
    ];
    for (i, e) in denied.into_iter().enumerate() {
        let e = e.unwrap_or_else(|| panic!("anonymous write {i} was allowed"));
        assert_eq!(e.kind(), ErrorKind::NoAuth, "write {i}: {e}");
    }
    assert!(anonymous.master("default").await.unwrap().is_some());
    anonymous.close().await;
    broker.assert_no_panic();
}

/// `host:port/chroot` + `path` as a path for zkCli (which has no chroot).
fn zk_server_path(connect: &str, path: &str) -> String {
    let chroot = connect.find('/').map(|i| &connect[i..]).unwrap_or("");
    format!("{chroot}{path}")
}

/// Issue 10, item 4 (last part): a fabric container without a users file used to accept the
/// built-in admin/admin login (a profile without `users` made every master accept it). It now
/// refuses to start, naming the fix; `--allow-default-admin` allows it with a warning saying
/// what it gives up. (Registry credentials are given, so that only the login is at issue.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fabric_container_without_a_users_file_refuses_admin_admin_unless_allowed() {
    let _serial = SERIAL.lock().await;
    let zk = zk().chroot_connect();
    let work = tempfile::tempdir().unwrap();
    let auth_file = work.path().join("zk-auth");
    std::fs::write(&auth_file, "fabric:s3cret\n").unwrap();
    let port = free_port();
    let listen = format!("stomp://127.0.0.1:{port}");

    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary("mq-broker"))
            .args(["--zk", &zk, "--group", "logins", "--container", "c1"])
            .args(["--listen", &listen, "--no-admin", "--data"])
            .arg(work.path().join("data"))
            .env("FABRIC_ZK_AUTH_FILE", &auth_file)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the container exits instead of serving admin/admin")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("fabric mode") && err.contains("--users") && err.contains("admin/admin"),
        "{err}"
    );
    assert!(err.contains("--allow-default-admin"), "{err}");

    // Explicitly allowed (the harness passes --allow-default-admin in fabric mode): it serves,
    // and says what that gives up.
    let mut b = BrokerProcess::start(BrokerOptions {
        listen: Some(listen.clone()),
        fabric: Some((zk.clone(), "logins".into(), "c1".into())),
        args: vec![
            "--session-timeout".into(),
            SESSION.into(),
            "--no-admin".into(),
        ],
        env: vec![(
            "FABRIC_ZK_AUTH_FILE".into(),
            auth_file.display().to_string(),
        )],
        ..Default::default()
    })
    .await
    .unwrap();
    b.wait_role(&["master"], Duration::from_secs(20))
        .await
        .unwrap();
    let addr = b.master_addr().expect("master listener");
    let _c = fabricmq_tests::raw::Raw::connect(addr, "admin", "admin").await;
    let log = b.log_text();
    assert!(
        log.contains("WARN") && log.contains("auth.allow_default_admin"),
        "{log}"
    );
    assert!(log.contains("anyone who can reach a listener"), "{log}");
    b.terminate(Duration::from_secs(20)).await.unwrap();
}

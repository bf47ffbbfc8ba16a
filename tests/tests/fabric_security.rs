//! Registry security: with digest credentials, brokers and `mq-fabric` write the fabric's nodes
//! (ACL: the authenticated identity may do anything, anyone may read); a client without them can
//! still discover the master and use it, but cannot change the registry; wrong credentials are
//! refused; credentials never appear on a command line.

use std::time::Duration;

use fabricmq_client::{BrokerUrl, ConnectOptions, Connection, Outgoing};
use fabricmq_registry::{
    ErrorKind, HandoverRequest, Profile, Registry, RegistryConfig, ZkCredentials,
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
    // Nobody else writes: profiles, the master record, the members, a hand-over request.
    for r in [&anonymous, &intruder] {
        let denied = [
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

    // mq-fabric: refused without credentials (one clear line), allowed with them.
    let (code, out) = mq_fabric(&zk, &[], &["profile", "delete", "secured"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not authorized"), "{out}");
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

//! Master/slave groups on a real ZooKeeper with real `mq-broker` processes sharing one data
//! directory: election, clean hand-over, crash takeover without loss, a paused master fenced out,
//! ZooKeeper outages, repeated kill/restart rounds.

use std::time::{Duration, Instant};

use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::raw::Raw;
use nix::sys::signal::Signal;

mod fabric_common;

use fabric_common::*;

#[tokio::test]
async fn exactly_one_master_and_only_its_port_listens() {
    let _serial = SERIAL.lock().await;
    for n in [2, 3] {
        let mut g = Group::start(n).await;
        let m = g.master(Duration::from_secs(20)).await;
        let registry = g.registry().await;
        let rec = registry
            .master(&g.name)
            .await
            .unwrap()
            .expect("master record");
        assert_eq!(rec.container, format!("broker{}", m + 1));
        assert_eq!(addr_of(&rec).port(), g.ports[m]);
        let members = registry.members(&g.name).await.unwrap();
        assert_eq!(members.len(), n);
        // mq-fabric cluster-list shows the master and the slaves.
        let out = std::process::Command::new(fabricmq_tests::process::binary("mq-fabric"))
            .args(["--zk", &g.zk, "--json", "cluster-list"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["cluster"], "default");
        assert_eq!(v[0]["master"], rec.container.as_str());
        assert_eq!(v[0]["slaves"].as_array().unwrap().len(), n - 1);
        assert_eq!(v[0]["services"][0], rec.services[0].as_str());
        for (i, port) in g.ports.iter().enumerate() {
            let open = tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_ok();
            assert_eq!(open, i == m, "port of broker{} open={open}", i + 1);
        }
        registry.close().await;
        g.no_panics();
    }
}

#[tokio::test]
async fn a_container_takes_its_configuration_from_its_profile() {
    let _serial = SERIAL.lock().await;
    let zk_connect = zk().chroot_connect();
    let data = tempfile::tempdir().unwrap();
    let port = fabricmq_tests::process::free_port();
    let registry = {
        let c = fabricmq_tests::process::test_registry_config(&zk_connect);
        fabricmq_registry::Registry::connect(c).await.unwrap()
    };
    registry
        .create_profile(&fabricmq_registry::Profile {
            name: "tolerant".into(),
            group: "orders".into(),
            kind: "master-slave".into(),
            containers: 1,
            listen: vec![format!("stomp://127.0.0.1:{port}")],
            data: data.path().display().to_string(),
            users: None,
            config: None,
        })
        .await
        .unwrap();
    // No --listen, --data or --group: all of it comes from the profile.
    let mut b =
        fabricmq_tests::process::BrokerProcess::start(fabricmq_tests::process::BrokerOptions {
            fabric: None,
            args: vec![
                "--zk".into(),
                zk_connect.clone(),
                "--profile".into(),
                "tolerant".into(),
                "--container".into(),
                "c1".into(),
                "--state-file".into(),
                data.path().join("state.json").display().to_string(),
                // Fabric mode refuses the built-in admin/admin login without it (issue 10).
                "--allow-default-admin".into(),
            ],
            // raw_args: the harness adds nothing, so the registry credentials are given here.
            env: vec![(
                "FABRIC_ZK_AUTH_FILE".into(),
                fabricmq_tests::process::write_test_auth_file(data.path())
                    .unwrap()
                    .display()
                    .to_string(),
            )],
            raw_args: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let rec = next_master(&registry, "orders", None).await;
    assert_eq!(rec.container, "c1");
    assert_eq!(addr_of(&rec).port(), port);
    put_many(addr_of(&rec), "/queue/p", "m", 3).await;
    assert!(
        data.path().join("journal").exists(),
        "store not in the profile's data dir"
    );
    b.kill();
    registry.close().await;
}

#[tokio::test]
async fn sigterm_of_the_master_hands_over_at_once() {
    let _serial = SERIAL.lock().await;
    let mut g = Group::start(2).await;
    let m = g.master(Duration::from_secs(20)).await;
    let registry = g.registry().await;
    let old = registry.master(&g.name).await.unwrap().unwrap();
    let t0 = Instant::now();
    g.brokers[m].signal(Signal::SIGTERM).unwrap();
    let new = next_master(&registry, &g.name, Some(&old)).await;
    let to_record = t0.elapsed();
    put_many(addr_of(&new), "/queue/term", "m", 1).await;
    let to_receipt = t0.elapsed();
    eprintln!(
        "FIGURE sigterm: signal->new master record {to_record:?}, ->first receipt {to_receipt:?}"
    );
    assert_ne!(new.container, old.container);
    assert!(new.epoch > old.epoch);
    let code = g.brokers[m]
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    registry.close().await;
    g.no_panics();
}

#[tokio::test]
async fn sigkill_of_the_master_loses_nothing_receipted() {
    let _serial = SERIAL.lock().await;
    let mut g = Group::start(2).await;
    let m = g.master(Duration::from_secs(20)).await;
    let registry = g.registry().await;
    let old = registry.master(&g.name).await.unwrap().unwrap();
    put_many(addr_of(&old), "/queue/orders", "m", 1000).await;
    let t0 = Instant::now();
    g.brokers[m].kill();
    let new = next_master(&registry, &g.name, Some(&old)).await;
    let to_record = t0.elapsed();
    let got = drain(addr_of(&new), "/queue/orders", 1000).await;
    eprintln!(
        "FIGURE sigkill: signal->new master record {to_record:?}, ->1000 drained {:?}",
        t0.elapsed()
    );
    let want: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    assert_eq!(
        got, want,
        "lost, duplicated or reordered across the takeover"
    );
    registry.close().await;
    g.no_panics();
}

#[tokio::test]
async fn a_paused_master_is_replaced_and_acknowledges_nothing_when_it_wakes() {
    let _serial = SERIAL.lock().await;
    let mut g = Group::start(2).await;
    let m = g.master(Duration::from_secs(20)).await;
    let registry = g.registry().await;
    let old = registry.master(&g.name).await.unwrap().unwrap();
    // A client connected to the old master before the pause.
    let mut stale_client = Raw::connect(addr_of(&old), "admin", "admin").await;
    stale_client
        .subscribe("s", "/queue/paused", "client-individual", &[])
        .await;
    g.brokers[m].signal(Signal::SIGSTOP).unwrap();
    // kill() returns before every thread has stopped: what follows assumes it is stopped.
    g.brokers[m]
        .wait_stopped(Duration::from_secs(10))
        .await
        .unwrap();
    let new = next_master(&registry, &g.name, Some(&old)).await;
    assert_ne!(new.container, old.container);
    // The new master takes a message the old one's consumer would get if it served.
    put_many(addr_of(&new), "/queue/paused", "m", 1).await;
    // While stopped, the stale client sends a persistent message asking for a receipt.
    stale_client
        .send(
            Frame::new(Command::Send)
                .header("destination", "/queue/paused")
                .header("receipt", "stale")
                .with_body("written-to-a-stale-master"),
        )
        .await;
    g.brokers[m].signal(Signal::SIGCONT).unwrap();
    // The old master acknowledges nothing and delivers nothing: it steps down and closes.
    while let Some(f) = stale_client.recv_within(Duration::from_secs(5)).await {
        assert!(
            f.command != Command::Receipt && f.command != Command::Message,
            "stale master answered: {f:?}"
        );
    }
    g.brokers[m]
        .wait_role(&["slave"], Duration::from_secs(20))
        .await
        .unwrap();
    // The new master's store has exactly the one message sent to it.
    let got = drain(addr_of(&new), "/queue/paused", 2).await;
    assert_eq!(got, vec!["m0".to_string()]);
    registry.close().await;
    g.no_panics();
}

#[tokio::test]
async fn five_kill_restart_rounds_keep_the_group_working() {
    let _serial = SERIAL.lock().await;
    let mut g = Group::start(2).await;
    let registry = g.registry().await;
    let mut expected = 0;
    for round in 0..5 {
        let m = g.master(Duration::from_secs(20)).await;
        let rec = registry.master(&g.name).await.unwrap().unwrap();
        put_many(addr_of(&rec), "/queue/rounds", &format!("r{round}-"), 50).await;
        expected += 50;
        g.brokers[m].kill();
        let new = next_master(&registry, &g.name, Some(&rec)).await;
        assert_ne!(new.container, rec.container, "round {round}");
        // The old master comes back as a slave.
        g.restart(m).await;
        assert_eq!(
            g.brokers[m].role().as_deref(),
            Some("slave"),
            "round {round}"
        );
    }
    let m = g.master(Duration::from_secs(20)).await;
    let addr = g.brokers[m].master_addr().unwrap();
    let got = drain(addr, "/queue/rounds", expected).await;
    assert_eq!(got.len(), expected);
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), expected, "duplicates across rounds");
    registry.close().await;
    g.no_panics();
}

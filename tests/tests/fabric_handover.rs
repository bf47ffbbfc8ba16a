//! Controlled hand-over (`mq-fabric master yield`) under a running producer and consumer: the
//! chosen slave takes over, nothing receipted is lost, no send fails, and the tool refuses bad
//! targets.

use std::sync::Arc;
use std::time::Duration;

use fabricmq_tests::chaos::check;
use fabricmq_tests::chaos::history::{self, Recorder};
use fabricmq_tests::chaos::workload::{self, Workload};
use fabricmq_tests::process::binary;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod fabric_common;

use fabric_common::*;

/// Runs `mq-fabric --zk <zk> master yield <args>` with the harness's registry credentials;
/// returns (exit code, stdout, stderr).
async fn mq_fabric_yield(zk: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(binary("mq-fabric"))
        .args(["--zk", zk, "master", "yield"])
        .args(args)
        .env_remove("FABRIC_ZK_AUTH_FILE")
        .env_remove("FABRIC_ZK_INSECURE")
        .env("FABRIC_ZK_AUTH", fabricmq_tests::process::TEST_ZK_AUTH)
        .output()
        .await
        .expect("mq-fabric");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_yield_hands_over_to_the_chosen_slave_without_losing_anything() {
    let _serial = SERIAL.lock().await;
    let mut g = Group::start(3).await;
    let first = g.master(Duration::from_secs(20)).await;
    assert_eq!(first, 0, "broker1 starts first and becomes master");

    // Bad requests are refused before anything is written.
    let (code, _, err) = mq_fabric_yield(&g.zk, &["default", "--to", "broker9"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("broker9 is not a live member"), "{err}");
    let (code, _, err) = mq_fabric_yield(&g.zk, &["default", "--to", "broker1"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already the master"), "{err}");

    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("history.jsonl");
    let rec = Arc::new(Recorder::create(&path).unwrap());
    let (stop_tx, stop_rx) = watch::channel(false);
    let cancel = CancellationToken::new();
    let load = tokio::spawn(workload::run(
        Workload {
            url: g.discovery_url(""),
            producers: 2,
            queues: 1,
            consumers_per_queue: 2,
            rate: 400,
            run_id: "handover".into(),
            drain_quiet: Duration::from_secs(20),
        },
        rec.clone(),
        stop_rx,
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // To a chosen slave: broker3, although broker2 is next in line.
    let (code, out, err) = mq_fabric_yield(&g.zk, &["default", "--to", "broker3"]).await;
    assert_eq!(code, 0, "yield --to broker3 failed: {out}{err}");
    assert!(out.contains("handed over to broker3"), "{out}");
    assert_eq!(g.master(Duration::from_secs(20)).await, 2);
    println!("{}", out.trim());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // To whoever is next.
    let (code, out, err) = mq_fabric_yield(&g.zk, &["default", "--json"]).await;
    assert_eq!(code, 0, "yield failed: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON value");
    assert_eq!(v["from"]["container"], "broker3");
    assert_ne!(v["to"]["container"], "broker3");
    println!("{}", out.trim());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("workload finished")
        .unwrap()
        .unwrap();
    rec.flush().unwrap();
    let report = check::check(&history::read(&path).unwrap());
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.receipted > 500, "{report}");
    assert_eq!(
        report.send_failed, 0,
        "a hand-over made sends fail: {report}"
    );
    assert_eq!(report.unresolved, 0, "{report}");
    assert!(report.lost.is_empty());
    // Every hand-over left the group with its three members and the request removed.
    let registry = g.registry().await;
    assert_eq!(registry.members("default").await.unwrap().len(), 3);
    assert_eq!(registry.handover("default").await.unwrap(), None);
    registry.close().await;
    g.no_panics();
}

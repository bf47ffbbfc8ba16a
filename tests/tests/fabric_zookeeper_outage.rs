//! ZooKeeper outages against a master/slave group: a blip keeps the master; a long outage stops
//! every acknowledgement until a master is elected again. Own test binary: it pauses its
//! ZooKeeper, which would disturb other tests sharing one.

mod fabric_common;

use std::time::{Duration, Instant};

use fabric_common::*;
use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::raw::Raw;

#[tokio::test]
async fn zookeeper_blips_keep_the_master_and_outages_stop_acknowledgements() {
    let mut g = Group::start(2).await;
    let m = g.master(Duration::from_secs(20)).await;
    let registry = g.registry().await;
    let rec = registry.master(&g.name).await.unwrap().unwrap();
    registry.close().await;
    // A short outage (well under a third of the 1 s session): the master keeps its role.
    zk().pause();
    tokio::time::sleep(Duration::from_millis(150)).await;
    zk().resume();
    put_many(addr_of(&rec), "/queue/blip", "a", 1).await;
    assert_eq!(g.brokers[m].role().as_deref(), Some("master"));
    // A long outage: the master notices the lost connection (within about 2/5 of the session),
    // stops acknowledging at once and steps down after a third of the session; while ZooKeeper is
    // away no broker is master and no port accepts clients.
    let mut client = Raw::connect(addr_of(&rec), "admin", "admin").await;
    zk().pause();
    let t0 = Instant::now();
    g.brokers[m]
        .wait_role(&["slave"], Duration::from_secs(10))
        .await
        .unwrap();
    let stepped_down = t0.elapsed();
    eprintln!("FIGURE zk outage: master stepped down {stepped_down:?} after ZooKeeper stopped");
    client
        .send(
            Frame::new(Command::Send)
                .header("destination", "/queue/blip")
                .header("receipt", "during-outage")
                .with_body("x"),
        )
        .await;
    let answered = client.recv_within(Duration::from_millis(500)).await;
    assert!(
        answered.is_none(),
        "a stepped-down master answered: {answered:?}"
    );
    for (i, b) in g.brokers.iter().enumerate() {
        assert_eq!(
            b.role().as_deref(),
            Some("slave"),
            "broker{} during the outage",
            i + 1
        );
    }
    for port in &g.ports {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_err(),
            "port {port} accepts clients without ZooKeeper"
        );
    }
    zk().resume();
    let registry = g.registry().await;
    // A record with a newer epoch: the old one lingers until ZooKeeper expires the old session.
    let rec2 = next_master(&registry, &g.name, Some(&rec)).await;
    eprintln!(
        "FIGURE zk outage: master after ZooKeeper came back: {} (epoch {}), {:?} after the outage began",
        rec2.container,
        rec2.epoch,
        t0.elapsed()
    );
    put_many(addr_of(&rec2), "/queue/blip", "b", 1).await;
    registry.close().await;
    g.no_panics();
}

//! Shared helpers of the fabric scenario tests: a ZooKeeper per test binary, broker groups.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fabricmq_registry::testing::ZkServer;
use fabricmq_registry::{MasterRecord, Registry};
use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::process::{free_port, BrokerOptions, BrokerProcess};
use fabricmq_tests::raw::{body, Raw};
use futures::StreamExt;

/// One ZooKeeper for this test binary; each test uses its own chroot.
pub fn zk() -> &'static ZkServer {
    static ZK: OnceLock<ZkServer> = OnceLock::new();
    ZK.get_or_init(|| ZkServer::start().expect("ZooKeeper (apt-get install zookeeper)"))
}

/// The scenarios run one at a time: each starts several brokers and times failovers on a 2-core
/// machine, and some stop processes on purpose.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Session timeout the brokers use in these tests (ZooKeeper runs with tickTime 200 ms).
pub const SESSION: &str = "1s";

pub struct Group {
    pub zk: String,
    pub name: String,
    pub data: tempfile::TempDir,
    pub brokers: Vec<BrokerProcess>,
    pub ports: Vec<u16>,
    /// The brokers' `--session-timeout` ([`SESSION`] unless started with [`Group::start_with`]).
    pub session: String,
}

impl Group {
    pub async fn start(n: usize) -> Group {
        Self::start_with(n, SESSION).await
    }

    /// Like [`Group::start`] with the brokers' ZooKeeper session timeout `session` (e.g. "4s";
    /// the test ZooKeeper's tickTime of 200 ms allows 400 ms to 4 s).
    pub async fn start_with(n: usize, session: &str) -> Group {
        let zk = zk().chroot_connect();
        let data = tempfile::tempdir().unwrap();
        let mut g = Group {
            zk,
            name: "default".into(),
            data,
            brokers: Vec::new(),
            ports: Vec::new(),
            session: session.to_owned(),
        };
        for i in 0..n {
            let port = free_port();
            g.ports.push(port);
            let b = g.launch(i, port).await;
            g.brokers.push(b);
        }
        g
    }

    pub async fn launch(&self, i: usize, port: u16) -> BrokerProcess {
        BrokerProcess::start(BrokerOptions {
            data_dir: Some(self.data.path().to_path_buf()),
            listen: Some(format!("stomp://127.0.0.1:{port}")),
            fabric: Some((
                self.zk.clone(),
                self.name.clone(),
                format!("broker{}", i + 1),
            )),
            args: vec!["--session-timeout".into(), self.session.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
    }

    pub async fn restart(&mut self, i: usize) {
        let b = self.launch(i, self.ports[i]).await;
        self.brokers[i] = b;
    }

    pub async fn registry(&self) -> Registry {
        // The harness gives the brokers its credentials; tests that change the registry use them.
        let mut c = fabricmq_tests::process::test_registry_config(&self.zk);
        c.session_timeout = Duration::from_secs(4);
        Registry::connect(c).await.unwrap()
    }

    /// Index of the broker that reports master (waits until exactly one does).
    pub async fn master(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let masters: Vec<usize> = (0..self.brokers.len())
                .filter(|&i| self.brokers[i].role().as_deref() == Some("master"))
                .collect();
            if masters.len() == 1 {
                return masters[0];
            }
            assert!(masters.len() <= 1, "two masters: {masters:?}");
            assert!(Instant::now() < deadline, "no master after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `discovery:fabric:<group>?zk=<this group's chroot connect string>` plus `options`
    /// (`&`-separated, may be empty).
    pub fn discovery_url(&self, options: &str) -> String {
        let mut url = format!("discovery:fabric:{}?zk={}", self.name, self.zk);
        if !options.is_empty() {
            url.push('&');
            url.push_str(options);
        }
        url
    }

    /// `failover:(tcp://127.0.0.1:<port>,...)` over every container's fixed port, plus `?options`
    /// when not empty. No ZooKeeper involved.
    pub fn failover_url(&self, options: &str) -> String {
        let list: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("tcp://127.0.0.1:{p}"))
            .collect();
        let mut url = format!("failover:({})", list.join(","));
        if !options.is_empty() {
            url.push('?');
            url.push_str(options);
        }
        url
    }

    /// Index of the container named in a master record (`brokerN` -> N-1).
    pub fn index_of(&self, rec: &MasterRecord) -> usize {
        rec.container
            .trim_start_matches("broker")
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|&i| i < self.brokers.len())
            .unwrap_or_else(|| panic!("not a container of this group: {}", rec.container))
    }

    pub fn no_panics(&self) {
        for b in &self.brokers {
            b.assert_no_panic();
        }
    }
}

/// Waits for a master record different from `old` (by container or epoch); returns it.
pub async fn next_master(
    registry: &Registry,
    group: &str,
    old: Option<&MasterRecord>,
) -> MasterRecord {
    let mut stream = Box::pin(registry.watch_master(group));
    let fut = async {
        while let Some(rec) = stream.next().await {
            if let Some(rec) = rec {
                if old.is_none_or(|o| o.epoch != rec.epoch) {
                    return rec;
                }
            }
        }
        panic!("master watch ended");
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("no new master record within 20s")
}

pub fn addr_of(rec: &MasterRecord) -> std::net::SocketAddr {
    rec.services[0]
        .trim_start_matches("stomp://")
        .parse()
        .unwrap()
}

pub async fn put_many(addr: std::net::SocketAddr, dest: &str, prefix: &str, n: usize) {
    let mut p = Raw::connect(addr, "admin", "admin").await;
    for i in 0..n {
        p.send(
            Frame::new(Command::Send)
                .header("destination", dest)
                .header("receipt", format!("r{i}"))
                .with_body(format!("{prefix}{i}")),
        )
        .await;
    }
    for i in 0..n {
        let r = p.expect(Command::Receipt).await;
        assert_eq!(r.get("receipt-id"), Some(format!("r{i}").as_str()));
    }
}

pub async fn drain(addr: std::net::SocketAddr, dest: &str, n: usize) -> Vec<String> {
    let mut c = Raw::connect(addr, "admin", "admin").await;
    c.subscribe("s", dest, "client-individual", &[("prefetch", "200")])
        .await;
    let mut got = Vec::new();
    while got.len() < n {
        let Some(m) = c.recv().await else { break };
        c.ack(&m).await;
        got.push(body(&m));
    }
    for f in c.barrier().await {
        got.push(body(&f));
    }
    got
}

//! End-to-end tests of the `mq-fabric` binary against a real ZooKeeper
//! ([`fabricmq_registry::testing::ZkServer`]: Debian's `zookeeper` package run as a child process).
//!
//! One server serves the whole test binary (started by the first test that needs it, killed when
//! the test process exits); every test works in its own fresh chroot, so tests run in parallel
//! without seeing each other's nodes. Group members and master records are created through the
//! registry API, as a broker would.

use std::net::TcpListener;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fabricmq_registry::testing::ZkServer;
use fabricmq_registry::{
    MasterRecord, MemberRecord, MemberState, Registry, RegistryConfig, ZkCredentials,
};
use serde_json::Value;

/// The ZooKeeper shared by the tests of this binary.
fn zk() -> &'static ZkServer {
    static SERVER: OnceLock<ZkServer> = OnceLock::new();
    SERVER.get_or_init(|| ZkServer::start().expect("cannot start ZooKeeper for the tests"))
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// The registry credentials of these tests' fabrics (writes need credentials by default).
const ZK_AUTH: &str = "fabric:tools-test";

/// Runs `mq-fabric --zk CONNECT ARGS...` (FABRIC_ZK removed from the environment) with the
/// fabric's credentials ([`ZK_AUTH`]).
fn mq_fabric(connect: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mq-fabric"));
    cmd.env_remove("FABRIC_ZK")
        .env_remove("RUST_LOG")
        .env_remove("FABRIC_ZK_AUTH_FILE")
        .env_remove("FABRIC_ZK_INSECURE")
        .env("FABRIC_ZK_AUTH", ZK_AUTH);
    cmd.arg("--zk").arg(connect).args(args);
    run(cmd)
}

fn run(mut cmd: Command) -> Run {
    let started = Instant::now();
    let out = cmd.output().expect("cannot run mq-fabric");
    Run {
        code: out.status.code().expect("mq-fabric killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
        took: started.elapsed(),
    }
}

/// Runs and expects exit status `code`.
fn expect(connect: &str, args: &[&str], code: i32) -> Run {
    let r = mq_fabric(connect, args);
    assert_eq!(r.code, code, "mq-fabric {args:?}: {r:#?}");
    r
}

fn json(r: &Run) -> Value {
    assert_eq!(r.stdout.lines().count(), 1, "one line of JSON: {r:#?}");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r:#?}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A registry session of a fake broker (its ephemeral nodes live as long as it does).
struct FakeBrokers {
    runtime: tokio::runtime::Runtime,
    registry: Registry,
}

impl FakeBrokers {
    fn connect(connect: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = RegistryConfig::parse(connect)
            .unwrap()
            .with_credentials(Some(ZkCredentials::parse(ZK_AUTH).unwrap()));
        let registry = runtime.block_on(Registry::connect(config)).unwrap();
        FakeBrokers { runtime, registry }
    }

    /// Joins `group` as `container` in `state`.
    fn join(&self, group: &str, container: &str, state: MemberState, profile: Option<&str>) {
        let record = MemberRecord {
            container: container.to_owned(),
            host: "127.0.0.1".to_owned(),
            profile: profile.map(str::to_owned),
            state,
            epoch: None,
            ready: state == MemberState::Master,
            services: Vec::new(),
            started: now_ms() - 60_000,
            pid: 4242,
            store_locked: false,
        };
        self.runtime
            .block_on(self.registry.join(group, &record))
            .unwrap();
    }

    /// Wins the next epoch of `group` and publishes `container` as master since `ago`.
    fn publish_master(
        &self,
        group: &str,
        container: &str,
        services: &[&str],
        ago: Duration,
    ) -> u64 {
        self.runtime.block_on(async {
            let claim = self.registry.next_epoch(group).await.unwrap();
            let record = MasterRecord {
                container: container.to_owned(),
                epoch: claim.epoch,
                services: services.iter().map(|s| s.to_string()).collect(),
                since: now_ms() - ago.as_millis() as u64,
            };
            self.registry
                .publish_master(group, claim, &record)
                .await
                .unwrap();
            claim.epoch
        })
    }

    /// Ends the session: its member and master nodes vanish at once.
    fn close(self) {
        self.runtime.block_on(self.registry.close());
    }
}

#[test]
fn profile_create_list_show_edit_delete() {
    let zk = zk().chroot_connect();
    let r = expect(
        &zk,
        &[
            "profile",
            "create",
            "tolerantbroker",
            "--group",
            "default",
            "--kind",
            "master-slave",
            "--containers",
            "2",
            "--listen",
            "stomp://0.0.0.0:61613",
            "--listen",
            "tcp://0.0.0.0:61614",
            "--data",
            "/srv/fabricmq/default",
            "--users",
            "/etc/fabricmq/users.toml",
        ],
        0,
    );
    assert!(
        r.stdout.contains("created profile tolerantbroker"),
        "{r:#?}"
    );

    // Creating it again is refused, pointing at `profile edit`.
    let r = expect(
        &zk,
        &[
            "profile",
            "create",
            "tolerantbroker",
            "--group",
            "x",
            "--listen",
            "stomp://h:1",
            "--data",
            "/d",
        ],
        1,
    );
    assert_eq!(
        r.stderr,
        "mq-fabric: profile tolerantbroker already exists (use profile edit)\n"
    );

    // Inconsistent with the existing profile: another store for the same group, or the same
    // store for another group, is refused naming the field; nothing is written.
    let r = expect(
        &zk,
        &[
            "profile",
            "create",
            "second",
            "--group",
            "default",
            "--listen",
            "stomp://0.0.0.0:61613",
            "--data",
            "/srv/elsewhere",
        ],
        1,
    );
    assert!(
        r.stderr.starts_with("mq-fabric: profile second: data: ")
            && r.stderr.contains("must share one data directory"),
        "{r:#?}"
    );
    let r = expect(
        &zk,
        &[
            "profile",
            "create",
            "third",
            "--group",
            "other",
            "--listen",
            "stomp://0.0.0.0:61700",
            "--data",
            "/srv/fabricmq/default",
        ],
        1,
    );
    assert!(r.stderr.contains("cannot share a store"), "{r:#?}");

    let r = expect(&zk, &["profile", "list"], 0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{r:#?}");
    assert!(lines[0].starts_with("[name]"), "{r:#?}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        [
            "tolerantbroker",
            "default",
            "master-slave",
            "2",
            "stomp://0.0.0.0:61613,tcp://0.0.0.0:61614",
            "/srv/fabricmq/default"
        ]
    );

    let r = expect(&zk, &["profile", "show", "tolerantbroker"], 0);
    assert!(
        r.stdout.contains("users:      /etc/fabricmq/users.toml"),
        "{r:#?}"
    );
    assert!(r
        .stdout
        .contains("Changes take effect when a container of this profile restarts."));

    let r = expect(&zk, &["profile", "show", "tolerantbroker", "--json"], 0);
    assert_eq!(
        json(&r),
        serde_json::json!({
            "name": "tolerantbroker",
            "group": "default",
            "kind": "master-slave",
            "containers": 2,
            "listen": ["stomp://0.0.0.0:61613", "tcp://0.0.0.0:61614"],
            "data": "/srv/fabricmq/default",
            "users": "/etc/fabricmq/users.toml",
            "config": null
        })
    );

    // Only the given fields change.
    let r = expect(
        &zk,
        &[
            "profile",
            "edit",
            "tolerantbroker",
            "--containers",
            "3",
            "--listen",
            "stomp://0.0.0.0:61700",
            "--clear-users",
        ],
        0,
    );
    assert!(r.stdout.contains("containers: 2 -> 3"), "{r:#?}");
    assert!(r.stdout.contains("Changes take effect"), "{r:#?}");
    let p = json(&expect(
        &zk,
        &["--json", "profile", "show", "tolerantbroker"],
        0,
    ));
    assert_eq!(p["containers"], 3);
    assert_eq!(p["listen"], serde_json::json!(["stomp://0.0.0.0:61700"]));
    assert_eq!(p["users"], Value::Null);
    assert_eq!(p["data"], "/srv/fabricmq/default");
    assert_eq!(p["group"], "default");

    // Bad values are usage errors (exit 2) naming the flag, and change nothing.
    let r = expect(
        &zk,
        &["profile", "edit", "tolerantbroker", "--data", "rel/dir"],
        2,
    );
    assert!(r.stderr.contains("--data"), "{r:#?}");
    let r = expect(
        &zk,
        &["profile", "edit", "tolerantbroker", "--containers", "0"],
        2,
    );
    assert!(r.stderr.contains("--containers"), "{r:#?}");
    assert_eq!(
        json(&expect(&zk, &["--json", "profile", "list"], 0))[0]["containers"],
        3
    );

    let r = expect(&zk, &["profile", "edit", "nosuch", "--containers", "2"], 1);
    assert_eq!(r.stderr, "mq-fabric: profile nosuch does not exist\n");

    expect(&zk, &["profile", "delete", "tolerantbroker"], 0);
    let r = expect(&zk, &["profile", "show", "tolerantbroker"], 1);
    assert_eq!(
        r.stderr,
        "mq-fabric: profile tolerantbroker does not exist\n"
    );
    let r = expect(&zk, &["profile", "delete", "tolerantbroker"], 1);
    assert_eq!(
        r.stderr,
        "mq-fabric: profile tolerantbroker does not exist\n"
    );
    assert_eq!(
        json(&expect(&zk, &["--json", "profile", "list"], 0)),
        serde_json::json!([])
    );
}

#[test]
fn profile_create_rejects_bad_values_before_connecting() {
    // No ZooKeeper at all behind this address: validation fails first, with exit status 2.
    let closed = closed_port();
    let zk = format!("127.0.0.1:{closed}");
    let base = ["profile", "create", "p", "--group", "g"];
    for (extra, flag) in [
        (
            &[
                "--kind",
                "replicated",
                "--listen",
                "stomp://h:1",
                "--data",
                "/d",
            ][..],
            "--kind",
        ),
        (
            &[
                "--containers",
                "0",
                "--listen",
                "stomp://h:1",
                "--data",
                "/d",
            ],
            "--containers",
        ),
        (&["--listen", "localhost:61613", "--data", "/d"], "--listen"),
        (&["--listen", "stomp://h:1", "--data", "data"], "--data"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let r = expect(&zk, &args, 2);
        assert!(r.stderr.contains(flag), "{flag}: {r:#?}");
    }
}

#[test]
fn cluster_list_container_list_and_status() {
    let zk = zk().chroot_connect();
    let brokers = FakeBrokers::connect(&zk);
    brokers.join(
        "default",
        "broker1",
        MemberState::Master,
        Some("tolerantbroker"),
    );
    brokers.join(
        "default",
        "broker2",
        MemberState::Slave,
        Some("tolerantbroker"),
    );
    let services = ["stomp://127.0.0.1:61613", "stomp://127.0.0.1:61614"];
    let epoch = brokers.publish_master("default", "broker1", &services, Duration::from_secs(192));
    brokers.join("orders", "broker9", MemberState::Slave, None);
    expect(
        &zk,
        &[
            "profile",
            "create",
            "tolerantbroker",
            "--group",
            "default",
            "--containers",
            "3",
            "--listen",
            "stomp://0.0.0.0:61613",
            "--data",
            "/srv/mq",
        ],
        0,
    );

    // cluster-list: every group, one row each.
    let r = expect(&zk, &["cluster-list"], 0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{r:#?}");
    let header: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "[cluster]",
            "[masters]",
            "[slaves]",
            "[services]",
            "[epoch]",
            "[master for]"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..5],
        [
            "default",
            "broker1",
            "broker2",
            "stomp://127.0.0.1:61613,stomp://127.0.0.1:61614",
            &epoch.to_string()
        ]
    );
    assert!(row[5].starts_with("3m1"), "served ~3m12s: {r:#?}");
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(row, ["orders", "-", "broker9", "-", "0", "-"]);

    // One group; JSON.
    let r = expect(&zk, &["cluster-list", "default", "--json"], 0);
    let v = json(&r);
    let c = &v.as_array().unwrap()[..];
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["cluster"], "default");
    assert_eq!(c[0]["master"], "broker1");
    assert_eq!(c[0]["slaves"], serde_json::json!(["broker2"]));
    assert_eq!(c[0]["services"], serde_json::json!(services));
    assert_eq!(c[0]["epoch"], epoch);
    assert!(c[0]["since_ms"].as_u64().unwrap() < now_ms());
    let served = c[0]["serving_for_s"].as_u64().unwrap();
    assert!((192..200).contains(&served), "{served}");

    // container list: every member, then the profile short of containers.
    let r = expect(&zk, &["container", "list"], 0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{r:#?}");
    assert!(lines[0].starts_with("[container]"), "{r:#?}");
    let rows: Vec<Vec<&str>> = lines[1..4]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0][..6],
        [
            "broker1",
            "tolerantbroker",
            "default",
            "master",
            "127.0.0.1",
            "4242"
        ]
    );
    assert_eq!(
        rows[1][..4],
        ["broker2", "tolerantbroker", "default", "slave"]
    );
    assert_eq!(rows[2][..4], ["broker9", "-", "orders", "slave"]);
    assert!(rows[0][6].starts_with("1m"), "uptime ~1m: {r:#?}");
    assert_eq!(
        lines[4],
        "warning: profile tolerantbroker wants 3 containers, 2 live"
    );
    let v = json(&expect(&zk, &["container", "list", "--json"], 0));
    assert_eq!(v["containers"].as_array().unwrap().len(), 3);
    assert_eq!(v["containers"][0]["role"], "master");
    assert_eq!(
        v["warnings"],
        serde_json::json!([{"profile": "tolerantbroker", "wants": 3, "live": 2}])
    );

    // status: 0 when every listed group has a master, 3 otherwise.
    let r = expect(&zk, &["status", "default"], 0);
    assert_eq!(
        r.stdout,
        format!("default: master broker1 (epoch {epoch}), 1 slave\n")
    );
    let r = expect(&zk, &["status", "orders"], 3);
    assert_eq!(r.stdout, "orders: no master (last epoch 0), 1 slave\n");
    let r = expect(&zk, &["status"], 3);
    assert_eq!(r.stdout.lines().count(), 2, "{r:#?}");
    expect(&zk, &["status", "nosuchgroup"], 3);
    let v = json(&expect(&zk, &["status", "--json"], 3));
    assert_eq!(v[0]["group"], "default");
    assert_eq!(v[0]["master"], "broker1");
    assert_eq!(v[1]["master"], Value::Null);

    // The brokers' session ends: the master record vanishes with it.
    brokers.close();
    let r = expect(&zk, &["status", "default"], 3);
    assert_eq!(
        r.stdout,
        format!("default: no master (last epoch {epoch}), 0 slaves\n")
    );

    // Another root holds nothing.
    let r = expect(&zk, &["--zk-root", "/elsewhere", "status"], 0);
    assert_eq!(r.stdout, "no groups registered\n");
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn unreachable_zookeeper_fails_within_the_timeout() {
    let port = closed_port();
    let zk = format!("127.0.0.1:{port}");
    let r = mq_fabric(&zk, &["--timeout", "2s", "status"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert_eq!(
        r.stderr,
        format!("mq-fabric: cannot reach ZooKeeper at 127.0.0.1:{port} within 2s\n")
    );
    assert!(r.stdout.is_empty(), "{r:#?}");
    assert!(r.took < Duration::from_secs(4), "took {:?}", r.took);

    // The address can come from FABRIC_ZK too (and the default timeout is 5s).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mq-fabric"));
    cmd.env("FABRIC_ZK", &zk).env_remove("RUST_LOG");
    cmd.args(["profile", "list"]);
    let r = run(cmd);
    assert_eq!(r.code, 1, "{r:#?}");
    assert_eq!(
        r.stderr,
        format!("mq-fabric: cannot reach ZooKeeper at 127.0.0.1:{port} within 5s\n")
    );
    assert!(r.took < Duration::from_secs(7), "took {:?}", r.took);
}

#[test]
fn silent_server_fails_within_the_timeout() {
    // Something accepts TCP connections but never speaks ZooKeeper (a hung server): the
    // connect must still give up on time.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = mq_fabric(
        &format!("127.0.0.1:{port}"),
        &["--timeout", "1500ms", "cluster-list"],
    );
    assert_eq!(r.code, 1, "{r:#?}");
    assert_eq!(
        r.stderr,
        format!("mq-fabric: cannot reach ZooKeeper at 127.0.0.1:{port} within 1s 500ms\n")
    );
    assert!(r.took < Duration::from_millis(3_500), "took {:?}", r.took);
    drop(listener);
}

/// `secure` sets the secure ACL on every open node under the root (created by a session without
/// credentials), reports them, and is refused without credentials; `--zk-insecure` lets a
/// writing command run without them, with a warning.
#[test]
fn secure_repairs_open_acls_and_writers_need_credentials() {
    let zk = zk().chroot_connect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let anonymous = runtime
        .block_on(Registry::connect(RegistryConfig::parse(&zk).unwrap()))
        .unwrap();
    runtime.block_on(anonymous.next_epoch("g")).unwrap();
    let epoch = anonymous.layout().group("g").epoch();
    let open = |path: &str| {
        runtime
            .block_on(anonymous.acl(path))
            .unwrap()
            .expect(path)
            .iter()
            .any(|e| e.is_open())
    };
    assert!(open(&epoch));

    // Without credentials: refused before connecting, saying how to fix it.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mq-fabric"));
    cmd.env_remove("FABRIC_ZK_AUTH")
        .env_remove("FABRIC_ZK_AUTH_FILE")
        .env_remove("FABRIC_ZK_INSECURE")
        .env_remove("RUST_LOG")
        .args(["--zk", &zk, "secure"]);
    let r = run(cmd);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("needs registry credentials"), "{r:#?}");
    assert!(r.stderr.contains("--zk-insecure"), "{r:#?}");

    let r = expect(&zk, &["--json", "secure"], 0);
    let v = json(&r);
    let repaired: Vec<&str> = v["repaired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for node in ["/fabric", "/fabric/registry/clusters/g", epoch.as_str()] {
        assert!(repaired.contains(&node), "{node} not in {repaired:?}");
        assert!(!open(node), "{node} still open");
    }
    let v = json(&expect(&zk, &["--json", "secure"], 0));
    assert_eq!(v["repaired"].as_array().unwrap().len(), 0, "{v}");

    // Insecure on purpose: allowed, with a warning (here refused by the now secured node).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mq-fabric"));
    cmd.env_remove("FABRIC_ZK_AUTH")
        .env_remove("FABRIC_ZK_AUTH_FILE")
        .env_remove("RUST_LOG")
        .env("FABRIC_ZK_INSECURE", "1")
        .args(["--zk", &zk, "master", "yield", "g", "--wait", "1s"]);
    let r = run(cmd);
    assert!(r.stderr.contains("WITHOUT registry credentials"), "{r:#?}");
    runtime.block_on(anonymous.close());
}

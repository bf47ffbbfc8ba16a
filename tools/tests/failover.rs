//! Process-level tests of `mq-client` over the failover transport: the real `mq-client` binary
//! against a real `mq-broker` process that is SIGKILLed and restarted on the same port and data
//! directory while the producer runs; and the `--zk` / `FABRIC_ZK` handling of discovery URLs.
//!
//! The broker binary is taken from `$MQ_BIN_DIR/mq-broker`, else from next to `mq-client`
//! (`target/<profile>/mq-broker`): build it first (`cargo build -p fabricmq-broker --bin
//! mq-broker`, or `cargo build --workspace --bins` as `deploy/test.sh` does).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const MQ_CLIENT: &str = env!("CARGO_BIN_EXE_mq-client");

fn broker_binary() -> PathBuf {
    let p = match std::env::var_os("MQ_BIN_DIR") {
        Some(dir) => Path::new(&dir).join("mq-broker"),
        None => Path::new(MQ_CLIENT)
            .parent()
            .expect("mq-client lives in target/<profile>")
            .join("mq-broker"),
    };
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo build -p fabricmq-broker --bin mq-broker`)",
        p.display()
    );
    p
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "mq-client-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// An `mq-broker` process we started; SIGKILLed (by its own PID) and reaped on drop.
struct Broker {
    child: Option<Child>,
    log: PathBuf,
}

impl Broker {
    /// Starts a broker on `port` with data in `dir/data`; returns once its ready file exists.
    fn start(dir: &Path, port: u16, run: u32) -> Broker {
        let ready = dir.join(format!("ready-{run}.json"));
        let log = dir.join(format!("broker-{run}.log"));
        let logf = std::fs::File::create(&log).expect("log file");
        let child = Command::new(broker_binary())
            .arg("--listen")
            .arg(format!("stomp://127.0.0.1:{port}"))
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log file"))
            .stderr(logf)
            .spawn()
            .expect("spawning mq-broker");
        let mut b = Broker {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The broker writes the ready file once it listens; nothing else to wait on.
        while !ready.exists() {
            if let Some(status) = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("mq-broker exited with {status}:\n{}", b.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mq-broker not ready after 30 s:\n{}",
                b.log_text()
            );
            thread::sleep(Duration::from_millis(10));
        }
        b
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (`Child::kill` signals this child's PID only) and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A running `mq-client`: its stderr lines arrive on a channel as they are written, its stdout is
/// collected until it exits. Killed (by PID) on drop if still running.
struct Client {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    stdout: mpsc::Receiver<String>,
}

impl Client {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Client {
        let mut cmd = Command::new(MQ_CLIENT);
        cmd.args(args)
            .env_remove("FABRIC_ZK")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning mq-client");
        let mut out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (out_tx, out_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            let _ = out_tx.send(s);
        });
        Client {
            child,
            stderr_lines: rx,
            stderr_seen: Vec::new(),
            stdout: out_rx,
        }
    }

    /// Waits (at most `timeout`) for a stderr line containing `needle`.
    fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.stderr_seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Waits (at most `timeout`) for the process to exit; returns (exit code, stdout, stderr).
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        // Stdout reaches EOF when the process exits (nothing else holds the pipe).
        let out = match self.stdout.recv_timeout(timeout) {
            Ok(out) => out,
            Err(_) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                while let Ok(l) = self.stderr_lines.try_recv() {
                    self.stderr_seen.push(l);
                }
                panic!(
                    "mq-client did not finish within {timeout:?}; stderr:\n{}",
                    self.stderr_seen.join("\n")
                );
            }
        };
        let status = self.child.wait().expect("wait for mq-client");
        // The stderr pipe is at EOF too now; take every remaining line.
        while let Ok(l) = self.stderr_lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr_seen.push(l);
        }
        (status.code(), out, self.stderr_seen.join("\n"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn json(stdout: &str, stderr: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout:?}\nstderr:\n{stderr}"))
}

#[test]
fn producer_and_consumer_survive_a_broker_restart() {
    let dir = TempDir::new("failover");
    let port = free_port();
    let mut broker = Broker::start(&dir.0, port, 1);
    let url = format!("failover:(tcp://127.0.0.1:{port})?maxReconnectDelay=100");
    let destination = format!("queue://failover-{}", uuid::Uuid::new_v4().simple());

    let mut producer = Client::spawn(
        &[
            "producer",
            "--brokerUrl",
            &url,
            "--user",
            "admin",
            "--password",
            "admin",
            "--destination",
            &destination,
            "--count",
            "2000",
            "--sleep",
            "1",
            "--json",
        ],
        &[("RUST_LOG", "warn,fabricmq_tools=debug")],
    );
    // Kill the broker once a quarter of the messages went out.
    assert!(
        producer.wait_stderr("sent=500", Duration::from_secs(60)),
        "the producer never reported 500 sent messages:\n{}",
        producer.stderr_seen.join("\n")
    );
    broker.kill();
    let _broker = Broker::start(&dir.0, port, 2);

    let (code, out, err) = producer.finish(Duration::from_secs(120));
    let p = json(&out, &err);
    assert_eq!(code, Some(0), "producer failed: {p}\n{err}");
    assert!(p["failovers"].as_u64().unwrap() >= 1, "{p}\n{err}");
    assert!(p["downtime_ms"].as_f64().unwrap() > 0.0, "{p}");
    assert_eq!(p["sent"], 2000, "{p}");
    assert_eq!(p["receipted"], 2000, "{p}");
    // The human summary (on stderr with --json) reports the failovers too.
    assert!(err.contains("; failovers "), "{err}");
    assert!(err.contains("total downtime"), "{err}");

    let consumer = Client::spawn(
        &[
            "consumer",
            "--brokerUrl",
            &url,
            "--user",
            "admin",
            "--password",
            "admin",
            "--destination",
            &destination,
            "--count",
            "2000",
            "--timeout",
            "20000",
            "--ack",
            "individual",
            "--json",
        ],
        &[],
    );
    let (code, out, err) = consumer.finish(Duration::from_secs(120));
    let c = json(&out, &err);
    assert_eq!(code, Some(0), "consumer failed: {c}\n{err}");
    assert_eq!(c["received"], 2000, "{c}");
    assert_eq!(c["gaps"], 0, "{c}");
    assert_eq!(c["duplicates"], 0, "{c}");
    assert_eq!(c["failovers"], 0, "{c}");
    assert!(c["duplicates_dropped"].is_u64(), "{c}");
}

#[test]
fn discovery_url_needs_a_zookeeper_address() {
    // Neither zk= in the URL, nor --zk, nor FABRIC_ZK: a usage error naming the ways to give one.
    let client = Client::spawn(
        &[
            "producer",
            "--brokerUrl",
            "discovery:fabric:default",
            "--count",
            "1",
        ],
        &[],
    );
    let (code, out, err) = client.finish(Duration::from_secs(30));
    assert_eq!(code, Some(2), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("--zk") && err.contains("FABRIC_ZK") && err.contains("zk="),
        "{err}"
    );

    // FABRIC_ZK (here pointing at a closed port) is taken: no usage error any more, the run
    // fails (exit 1) trying to reach that ZooKeeper.
    let zk = format!("127.0.0.1:{}", free_port());
    for (args, env) in [
        (vec!["--zk", zk.as_str()], vec![]),
        (vec![], vec![("FABRIC_ZK", zk.as_str())]),
    ] {
        let mut all = vec![
            "consumer",
            "--brokerUrl",
            "discovery:fabric:default",
            "--count",
            "1",
        ];
        all.extend(args);
        let client = Client::spawn(&all, &env);
        let (code, _, err) = client.finish(Duration::from_secs(60));
        assert_eq!(code, Some(1), "{err}");
        assert!(!err.contains("needs a ZooKeeper address"), "{err}");
        assert!(err.contains(&zk) || err.contains("discovery"), "{err}");
    }
}

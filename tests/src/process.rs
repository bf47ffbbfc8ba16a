//! Real `mq-broker` processes for tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Path of a workspace binary (`mq-broker`, `mq-client`): `$MQ_BIN_DIR/<name>` if set, else next
/// to the test executable's profile directory (`target/<profile>/<name>`).
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("MQ_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // A test: target/<profile>/deps/<test>-<hash>; a binary (mq-chaos): target/<profile>/<name>.
    let dir = exe.parent().expect("executable has a directory");
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent")
    } else {
        dir
    };
    let p = profile_dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --bins`)",
        p.display()
    );
    p
}

/// How to start a broker.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// Data directory; a fresh temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Listener URL; `stomp://127.0.0.1:0` (a free port) when `None`.
    pub listen: Option<String>,
    /// More command-line arguments.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Fabric mode: (ZooKeeper connect string, group, container). The broker then starts as a
    /// group member; `start` returns once it reported its first role (slave or master).
    pub fabric: Option<(String, String, String)>,
    /// Pass only `args` (no --listen/--data/--ready-file); `start` returns once the process runs.
    pub raw_args: bool,
    /// Run inside this network namespace (`ip netns exec`; the PID stays the broker's own).
    pub netns: Option<String>,
    /// Fabric mode: the host published in the master record (default 127.0.0.1).
    pub advertise_host: Option<String>,
    /// Fabric mode: do not give the broker the harness's registry credentials
    /// ([`TEST_ZK_AUTH`]). They are given by default (a 0600 file in the work directory, named
    /// by `FABRIC_ZK_AUTH_FILE`) unless `env` or `args` already choose credentials or
    /// `--zk-insecure`.
    pub no_registry_credentials: bool,
}

/// The registry credentials (`user:password`) the harness gives fabric brokers, so that test
/// fabrics run secured as production ones do. Tests that change the registry use them too
/// ([`test_registry_config`]).
pub const TEST_ZK_AUTH: &str = "fabricmq-test:harness-secret";

/// A registry configuration for `zk` carrying [`TEST_ZK_AUTH`].
pub fn test_registry_config(zk: &str) -> fabricmq_registry::RegistryConfig {
    fabricmq_registry::RegistryConfig::parse(zk)
        .expect("a valid connect string")
        .with_credentials(Some(
            fabricmq_registry::ZkCredentials::parse(TEST_ZK_AUTH).expect("valid credentials"),
        ))
}

/// Writes [`TEST_ZK_AUTH`] to `dir/zk-auth` (mode 0600) and returns the file's path.
pub fn write_test_auth_file(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("zk-auth");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{TEST_ZK_AUTH}")?;
    Ok(path)
}

/// Whether the options already say how the broker deals with registry credentials.
fn chooses_registry_auth(opts: &BrokerOptions) -> bool {
    opts.no_registry_credentials
        || opts.env.iter().any(|(k, _)| {
            k == fabricmq_registry::config::AUTH_ENV
                || k == fabricmq_registry::config::AUTH_FILE_ENV
                || k == fabricmq_registry::INSECURE_ENV
        })
        || opts
            .args
            .iter()
            .any(|a| a == "--zk-auth-file" || a == "--zk-insecure")
}

/// A free loopback port (bound and released; fine for tests that must know a port in advance).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running `mq-broker` process. Killed (SIGKILL) and reaped on drop.
pub struct BrokerProcess {
    child: Option<Child>,
    /// Where its logs go.
    pub log: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its first listener (standalone; in fabric mode see [`BrokerProcess::listeners`]).
    pub addr: SocketAddr,
    /// Fabric mode: the state file the broker rewrites on every role change.
    state: Option<PathBuf>,
    /// Keeps temporary directories alive.
    _work: Arc<tempfile::TempDir>,
}

impl BrokerProcess {
    /// Starts a broker and waits until it listens (at most 20 s).
    pub async fn start(opts: BrokerOptions) -> anyhow::Result<BrokerProcess> {
        let work = Arc::new(tempfile::tempdir().context("temp dir")?);
        Self::start_in(work, opts).await
    }

    /// Starts a broker keeping its files in `work` (shared with a previous run to restart it).
    pub async fn start_in(
        work: Arc<tempfile::TempDir>,
        opts: BrokerOptions,
    ) -> anyhow::Result<BrokerProcess> {
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| work.path().join("data"));
        let n = std::fs::read_dir(work.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = work.path().join(format!("broker-{n}.log"));
        let ready = work.path().join(format!("ready-{n}.json"));
        let state = work.path().join(format!("state-{n}.json"));
        let listen = opts
            .listen
            .clone()
            .unwrap_or_else(|| "stomp://127.0.0.1:0".into());
        let logf = std::fs::File::create(&log).context("log file")?;
        let mut cmd = match &opts.netns {
            Some(ns) => {
                // `ip netns exec` joins the namespace and then execs: the child's PID is the broker's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary("mq-broker"));
                c
            }
            None => Command::new(binary("mq-broker")),
        };
        if !opts.raw_args {
            cmd.arg("--listen")
                .arg(&listen)
                .arg("--data")
                .arg(&data_dir);
        }
        match &opts.fabric {
            _ if opts.raw_args => {}
            None => {
                cmd.arg("--ready-file").arg(&ready);
            }
            Some((zk, group, container)) => {
                cmd.args(["--zk", zk, "--group", group, "--container", container])
                    .arg("--state-file")
                    .arg(&state)
                    .arg("--advertise-host")
                    .arg(opts.advertise_host.as_deref().unwrap_or("127.0.0.1"));
                // Issue 10: fabric mode refuses the built-in admin/admin login without this flag;
                // the tests log in as admin/admin (a users file given in `args` takes precedence).
                cmd.arg("--allow-default-admin");
            }
        }
        cmd.args(&opts.args)
            .env(
                "RUST_LOG",
                std::env::var("BROKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        // Only what the test chose reaches the broker (not the runner's own environment).
        cmd.env_remove(fabricmq_registry::config::AUTH_ENV)
            .env_remove(fabricmq_registry::config::AUTH_FILE_ENV)
            .env_remove(fabricmq_registry::INSECURE_ENV);
        if opts.fabric.is_some() && !chooses_registry_auth(&opts) {
            let auth = write_test_auth_file(work.path())?;
            cmd.env(fabricmq_registry::config::AUTH_FILE_ENV, auth);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawning mq-broker")?;
        let mut p = BrokerProcess {
            child: Some(child),
            log,
            data_dir,
            addr: "127.0.0.1:0".parse().expect("literal"),
            state: opts.fabric.is_some().then_some(state),
            _work: work,
        };
        if opts.raw_args {
            return Ok(p);
        }
        if p.state.is_some() {
            p.wait_role(&["slave", "master"], Duration::from_secs(20))
                .await?;
            return Ok(p);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                let first = v["listeners"][0]
                    .as_str()
                    .context("ready file lists no listener")?;
                p.addr = first.trim_start_matches("stomp://").parse()?;
                return Ok(p);
            }
            if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "mq-broker exited with {status} before listening:\n{}",
                    p.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("mq-broker not listening after 20s:\n{}", p.log_text());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The work directory (pass to [`BrokerProcess::start_in`] to restart on the same files).
    pub fn work(&self) -> Arc<tempfile::TempDir> {
        self._work.clone()
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal to this process (only this PID).
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("process already reaped")?;
        kill(Pid::from_raw(pid as i32), sig).context("kill")?;
        Ok(())
    }

    /// Waits (bounded) until every thread of the process is stopped (after SIGSTOP). `kill`
    /// returns before the stop takes effect: on a loaded machine (a vCPU waiting for its turn)
    /// the broker was seen journaling and receipting frames sent after `kill` had returned.
    /// Polls `/proc/<pid>/task/*/stat` (there is no event for another process's stop that does
    /// not also reap it).
    pub async fn wait_stopped(&self, timeout: Duration) -> anyhow::Result<()> {
        let pid = self.pid().context("process already reaped")?;
        let deadline = Instant::now() + timeout;
        loop {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).context("task list")?;
            let mut all_stopped = true;
            for task in tasks.flatten() {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                // `pid (comm) S ...`: the state follows the last ')'.
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next());
                if !matches!(state, Some('T') | Some('t') | None) {
                    all_stopped = false;
                    break;
                }
            }
            if all_stopped {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("process {pid} not stopped after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// If the process has exited (reaping it): `Some(exit code)`; `None` while it runs.
    pub fn try_exit_code(&mut self) -> Option<Option<i32>> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status.code())
            }
            _ => None,
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for exit (at most `timeout`); returns the exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit(timeout).await
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().context("already reaped")?;
            if let Some(status) = c.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("broker still running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Fabric mode: the role and listeners the broker last reported (None before the first report).
    pub fn state(&self) -> Option<(String, Vec<String>, Option<u64>)> {
        let text = std::fs::read_to_string(self.state.as_ref()?).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let role = v["role"].as_str()?.to_string();
        let listeners = v["listeners"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Some((role, listeners, v["epoch"].as_u64()))
    }

    /// Fabric mode: the current role ("slave" or "master"), if reported.
    pub fn role(&self) -> Option<String> {
        self.state().map(|s| s.0)
    }

    /// Fabric mode: the first listener as a socket address, when master.
    pub fn master_addr(&self) -> Option<SocketAddr> {
        let (role, listeners, _) = self.state()?;
        if role != "master" {
            return None;
        }
        listeners
            .first()?
            .trim_start_matches("stomp://")
            .parse()
            .ok()
    }

    /// Fabric mode: waits until the broker reports one of `roles` (polls its state file, which the
    /// broker writes on every role change; fails early if the process exits).
    pub async fn wait_role(&mut self, roles: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(role) = self.role() {
                if roles.contains(&role.as_str()) {
                    return Ok(role);
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("mq-broker exited with {status}:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "mq-broker not {roles:?} after {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails if the broker's log shows a panic.
    pub fn assert_no_panic(&self) {
        let log = self.log_text();
        assert!(!log.contains("panicked at"), "broker panicked:\n{log}");
    }

    /// The address of the broker's HTTP admin endpoint, as its ready file (standalone) or state
    /// file (fabric) reports it; `None` when it has none (disabled, or the default port was
    /// taken). Start the broker with `--admin-listen 127.0.0.1:0` to get a free port.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        let read = |path: &Path| -> Option<serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
        };
        let v = match &self.state {
            Some(state) => read(state)?,
            None => {
                // The ready file of this process (a work directory may hold earlier runs').
                let pid = u64::from(self.pid()?);
                std::fs::read_dir(self._work.path())
                    .ok()?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("ready-") && n.ends_with(".json"))
                    })
                    .filter_map(|p| read(&p))
                    .find(|v| v["pid"].as_u64() == Some(pid))?
            }
        };
        v["admin"].as_str()?.parse().ok()
    }

    /// Standalone: every listener URL this process wrote to its ready file (`stomp://ADDR`,
    /// `stomp+ssl://ADDR`), in the order of its `--listen` flags; empty before it listens.
    pub fn ready_listeners(&self) -> Vec<String> {
        let Some(pid) = self.pid().map(u64::from) else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir(self._work.path()) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ready-") && n.ends_with(".json"))
            })
            .filter_map(|p| {
                serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).ok()?).ok()
            })
            .find(|v| v["pid"].as_u64() == Some(pid))
            .and_then(|v| {
                v["listeners"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
        let log = self.log_text();
        let show = std::env::var_os("SHOW_BROKER_LOGS").is_some();
        if show || std::thread::panicking() || log.contains("panicked at") {
            eprintln!(
                "---- {} ----\n{log}---- end of log ----",
                self.log.display()
            );
        }
    }
}

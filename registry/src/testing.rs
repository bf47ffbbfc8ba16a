//! A real ZooKeeper for tests (feature `test-server`).
//!
//! [`ZkServer`] runs Debian's `zookeeper` package (3.8) as a child process: standalone
//! `ZooKeeperServerMain` on a free loopback port with a temporary data directory, tickTime 200 ms
//! (so sessions can be ~1 s; allowed range 400 ms..60 s), admin server off, all four-letter
//! commands allowed and no fsync per transaction (`forceSync=no`; test speed). It is ready
//! when `ruok` is answered `imok` and `srvr` reports a serving server. Its log goes to a file in the
//! temporary directory, printed (to stderr) when start-up fails.
//!
//! The JVM is started through a tiny `sh` wrapper that kills it when the wrapper's stdin (a pipe
//! from this process) closes: a server kept in a `static` (never dropped) or left behind by a
//! crashed test binary dies with the test process instead of leaking.
//!
//! This module installs nothing: if the package is missing, [`ZkServer::start`] fails with a
//! message saying `apt-get install zookeeper`.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long start-up may take before [`ZkServer::start`] gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Jars of the Debian package: `zookeeper.jar`'s manifest `Class-Path` lists its own dependencies
/// (jute, netty, jackson, metrics, slf4j-api, ...); the slf4j binding and log4j 1.2 are added so
/// the server logs to our file.
const CLASSPATH: &[&str] = &[
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
];

/// JVM flags for a fast start and a small footprint.
const JVM_FLAGS: &[&str] = &[
    "-Xmx64m",
    "-Xss512k",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:CICompilerCount=1",
    "-Xshare:auto",
    "-XX:-UsePerfData",
    "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.jmx.log4j.disable=true",
];

const MAIN_CLASS: &str = "org.apache.zookeeper.server.ZooKeeperServerMain";

/// Kills the JVM (`$1`) when stdin closes; echoes the JVM's pid first.
const WRAPPER: &str = r#"jvm_log=$1; shift
exec 3<&0
"$@" 3<&- </dev/null >>"$jvm_log" 2>&1 &
jvm=$!
echo "$jvm"
( read -r _ <&3; kill -9 "$jvm" 2>/dev/null ) &
exec 3<&-
wait "$jvm""#;

/// A real ZooKeeper (Debian package `zookeeper`, 3.8) started as a child process for tests:
/// free loopback port, temp data dir, tickTime 200 ms (sessions can be ~1 s), admin server off,
/// 4lw commands whitelisted; readiness = `ruok` answered `imok` (poll, bounded 30 s); stderr/stdout
/// to a log file printed on failure; killed (SIGKILL, by PID) and reaped on drop.
pub struct ZkServer {
    dir: tempfile::TempDir,
    /// Address the server binds (127.0.0.1 unless started in a network namespace).
    host: std::net::Ipv4Addr,
    /// Network namespace the server runs in (`ip netns exec`), if any.
    netns: Option<String>,
    port: u16,
    pid: u32,
    wrapper: Option<Child>,
    stdin: Option<ChildStdin>,
    started_in: Duration,
}

impl ZkServer {
    /// Starts a server and waits until it serves (blocking; usable from sync and async tests).
    pub fn start() -> io::Result<ZkServer> {
        check_installed()?;
        let dir = tempfile::Builder::new().prefix("fabricmq-zk-").tempdir()?;
        let mut server = ZkServer {
            dir,
            host: std::net::Ipv4Addr::LOCALHOST,
            netns: None,
            port: 0,
            pid: 0,
            wrapper: None,
            stdin: None,
            started_in: Duration::ZERO,
        };
        let mut last = None;
        for _ in 0..3 {
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    // Most likely the port was taken between probing and binding: try another.
                    server.kill();
                    eprintln!(
                        "ZooKeeper failed to start on port {}: {e}\n--- log ---\n{}",
                        server.port,
                        server.log()
                    );
                    let _ = fs::remove_dir_all(server.dir.path().join("data"));
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("ZooKeeper failed to start")))
    }

    /// Starts a server inside the network namespace `netns` (created beforehand, e.g. by the
    /// chaos runner with `ip netns add`), listening on `host:port` there. The readiness probe
    /// and [`four_letter`](Self::four_letter) connect from a thread that joins the namespace.
    pub fn start_in_netns(
        netns: &str,
        host: std::net::Ipv4Addr,
        port: u16,
    ) -> io::Result<ZkServer> {
        check_installed()?;
        let dir = tempfile::Builder::new().prefix("fabricmq-zk-").tempdir()?;
        let mut server = ZkServer {
            dir,
            host,
            netns: Some(netns.to_owned()),
            port,
            pid: 0,
            wrapper: None,
            stdin: None,
            started_in: Duration::ZERO,
        };
        if let Err(e) = server.launch() {
            server.kill();
            return Err(io::Error::other(format!(
                "ZooKeeper failed to start in netns {netns} on {host}:{port}: {e}\n--- log ---\n{}",
                server.log()
            )));
        }
        Ok(server)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"HOST:PORT"` (`127.0.0.1:PORT` unless started in a network namespace).
    pub fn connect_string(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A fresh chroot-ed connect string for one test: `"127.0.0.1:PORT/t<random>"` (creates the
    /// chroot node).
    pub fn chroot_connect(&self) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let chroot = format!(
            "/t{}x{:x}x{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let servers = self.connect_string();
        let path = chroot.clone();
        let created = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let client = tokio::time::timeout(
                    Duration::from_secs(10),
                    zookeeper_client::Client::connect(&servers),
                )
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
                let options = zookeeper_client::CreateMode::Persistent
                    .with_acls(zookeeper_client::Acls::anyone_all());
                match client.create(&path, b"", &options).await {
                    Ok(_) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .join();
        match created {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("creating chroot {chroot} on ZooKeeper {}: {e}", self.port),
            Err(_) => panic!(
                "creating chroot {chroot} on ZooKeeper {}: thread panicked",
                self.port
            ),
        }
        format!("{}{chroot}", self.connect_string())
    }

    /// Freezes the JVM (SIGSTOP): ZooKeeper becomes unreachable without closing connections.
    pub fn pause(&self) {
        if self.pid != 0 {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGSTOP);
        }
    }

    /// Thaws the JVM (SIGCONT).
    pub fn resume(&self) {
        if self.pid != 0 {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGCONT);
        }
    }

    /// Kills the server (SIGKILL) and reaps it; the data directory is kept for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port with the same data (sessions that have not
    /// expired survive, as with a real restart).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.launch()
    }

    /// The JVM's process id (0 while stopped).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How long the last start took until the server answered (for reports).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The server's temporary directory (config, data, `zookeeper.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far (log4j output plus the JVM's stdout/stderr).
    pub fn log(&self) -> String {
        let mut out = String::new();
        for name in ["jvm.log", "zookeeper.log"] {
            if let Ok(text) = fs::read_to_string(self.dir.path().join(name)) {
                out.push_str(&format!("== {name} ==\n{text}"));
            }
        }
        out
    }

    /// Sends a ZooKeeper four-letter command (`srvr`, `wchp`, `cons`, ...) and returns the
    /// answer; `None` if the server does not answer.
    pub fn four_letter(&self, cmd: &str) -> Option<String> {
        self.probe(cmd)
    }

    /// Runs ZooKeeper's own command-line client (`zkCli.sh`'s `ZooKeeperMain`) with `args`
    /// (e.g. `["get", "/fabric/profiles/p"]`) against this server; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> io::Result<String> {
        let out = Command::new(java())
            .args(JVM_FLAGS)
            .arg("-Dlog4j.configuration=file:/dev/null")
            .arg("-cp")
            .arg(CLASSPATH.join(":"))
            .arg("org.apache.zookeeper.ZooKeeperMain")
            .arg("-server")
            .arg(self.connect_string())
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "zkCli {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The command line used to start the JVM (for reports and debugging).
    pub fn command_line(&self) -> Vec<String> {
        self.java_args()
    }

    fn java_args(&self) -> Vec<String> {
        let dir = self.dir.path();
        let mut args = vec![java().to_string_lossy().into_owned()];
        args.extend(JVM_FLAGS.iter().map(|s| s.to_string()));
        args.push(format!(
            "-Dlog4j.configuration=file:{}",
            dir.join("log4j.properties").display()
        ));
        args.push("-cp".into());
        args.push(CLASSPATH.join(":"));
        args.push(MAIN_CLASS.into());
        args.push(dir.join("zoo.cfg").display().to_string());
        args
    }

    fn write_config(&self) -> io::Result<()> {
        let dir = self.dir.path();
        let data = dir.join("data");
        fs::create_dir_all(&data)?;
        fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=200\n\
                 dataDir={}\n\
                 clientPort={}\n\
                 clientPortAddress={}\n\
                 minSessionTimeout=400\n\
                 maxSessionTimeout=60000\n\
                 maxClientCnxns=0\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=*\n\
                 autopurge.purgeInterval=0\n\
                 forceSync=no\n",
                data.display(),
                self.port,
                self.host
            ),
        )?;
        fs::write(
            dir.join("log4j.properties"),
            format!(
                "log4j.rootLogger=INFO, FILE\n\
                 log4j.appender.FILE=org.apache.log4j.FileAppender\n\
                 log4j.appender.FILE.File={}\n\
                 log4j.appender.FILE.Append=true\n\
                 log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n\
                 log4j.appender.FILE.layout.ConversionPattern=%d{{ISO8601}} %-5p [%t] %c{{1}} - %m%n\n\
                 log4j.logger.org.apache.zookeeper.server.NIOServerCnxn=ERROR\n",
                dir.join("zookeeper.log").display()
            ),
        )
    }

    fn launch(&mut self) -> io::Result<()> {
        self.write_config()?;
        let started = Instant::now();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/bin/sh"]);
                c
            }
            None => Command::new("/bin/sh"),
        };
        let mut child = command
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(self.dir.path().join("jvm.log"))
            .args(self.java_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        self.wrapper = Some(child);
        self.stdin = stdin;
        let mut line = String::new();
        if let Some(stdout) = stdout {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        self.pid = line
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("wrapper printed {line:?} instead of a pid")))?;
        let deadline = started + START_TIMEOUT;
        loop {
            if !self.jvm_alive() {
                return Err(io::Error::other(format!(
                    "the ZooKeeper JVM exited during start-up (log in {})",
                    self.dir.path().display()
                )));
            }
            if self.probe("ruok").as_deref() == Some("imok")
                && self.probe("srvr").is_some_and(|s| s.contains("Mode:"))
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("ZooKeeper did not answer ruok within {START_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.started_in = started.elapsed();
        Ok(())
    }

    fn jvm_alive(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // Field 3 (after the parenthesised command) is the state; Z = exited, not yet reaped.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }

    fn kill(&mut self) {
        if self.pid != 0 {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
        // Closing the pipe also makes the wrapper kill the JVM (if it was not ours to signal).
        drop(self.stdin.take());
        if let Some(mut wrapper) = self.wrapper.take() {
            let _ = wrapper.wait();
        }
        self.pid = 0;
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for ZkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkServer")
            .field("host", &self.host)
            .field("netns", &self.netns)
            .field("port", &self.port)
            .field("pid", &self.pid)
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn java() -> PathBuf {
    match std::env::var_os("JAVA_HOME") {
        Some(home) if Path::new(&home).join("bin/java").exists() => {
            Path::new(&home).join("bin/java")
        }
        _ => PathBuf::from("java"),
    }
}

fn check_installed() -> io::Result<()> {
    for jar in CLASSPATH {
        if !Path::new(jar).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{jar} not found: the ZooKeeper test server needs Debian's zookeeper package \
                     (apt-get install zookeeper)"
                ),
            ));
        }
    }
    Ok(())
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ZkServer {
    /// A four-letter command to this server, from inside its network namespace if it has one.
    fn probe(&self, cmd: &str) -> Option<String> {
        let addr = SocketAddr::from((self.host, self.port));
        match &self.netns {
            None => four_letter(addr, cmd),
            Some(ns) => in_netns(ns, || four_letter(addr, cmd)).ok().flatten(),
        }
    }
}

/// Runs `f` on a thread that has joined the network namespace `netns` (`/var/run/netns/<netns>`,
/// as made by `ip netns add`): sockets it opens live in that namespace. Needs CAP_SYS_ADMIN.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let path = Path::new("/var/run/netns").join(netns);
    let file = fs::File::open(&path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> io::Result<T> {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::other(format!("setns {}: {e}", path.display())))?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
    })
}

/// Sends a four-letter command; `None` if the server does not answer (yet).
fn four_letter(addr: SocketAddr, cmd: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(cmd.as_bytes()).ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

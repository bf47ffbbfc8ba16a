//! `mq-chaos`: runs a broker group under injected faults and checks the history.
//!
//! `mq-chaos run` starts a real ZooKeeper and a group of `mq-broker` processes sharing one store,
//! runs producers and consumers through `discovery:fabric:chaos`, and injects faults at random
//! (seeded) intervals: SIGKILL, SIGTERM, short and long SIGSTOP of the master, ZooKeeper stopped
//! and restarted, network partitions (master cut from ZooKeeper, from the clients, or from
//! everybody; each node in its own network namespace), and a full store filesystem (a tmpfs with
//! a size limit). Then it heals everything, drains the queues and checks the history (see
//! `fabricmq_tests::chaos::check`): it exits 0 only if nothing receipted was lost, nothing was
//! invented or duplicated, order held and no two masters acknowledged at once.
//!
//! Everything it creates (namespaces, processes, mounts, temporary directories) is removed when
//! it ends, also on SIGINT/SIGTERM; `mq-chaos cleanup` removes what a killed runner left.
//! Outputs (kept): `<out>/history.jsonl`, `<out>/summary.json`, `<out>/summary.txt` and the
//! broker and ZooKeeper logs under `<out>/logs/`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use fabricmq_registry::testing::ZkServer;
use fabricmq_tests::chaos::check;
use fabricmq_tests::chaos::history::{self, Event, Recorder};
use fabricmq_tests::chaos::netns::{self, Net};
use fabricmq_tests::chaos::workload::{self, Workload};
use fabricmq_tests::process::{free_port, BrokerOptions, BrokerProcess};
use fabricmq_tests::tmpfs::Mount;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "mq-chaos",
    version,
    about = "Fault injection and history checking for a fabricmq broker group"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a workload under faults, then check the history.
    Run(RunArgs),
    /// Check a recorded history file again.
    Check {
        /// The `history.jsonl` of a run.
        history: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove network namespaces (and their processes) left by a killed runner.
    Cleanup,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Random seed for the fault schedule (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long faults are injected (the drain comes after).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Brokers in the group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=5))]
    brokers: u8,
    /// Producers.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Queues.
    #[arg(long, default_value_t = 2)]
    queues: usize,
    /// Consumers per queue.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Messages per second, all producers together.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Fault kinds to inject (comma-separated); `all` = every kind this machine supports.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    faults: Vec<FaultArg>,
    /// Shortest pause between two faults.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    every_min: Duration,
    /// Longest pause between two faults.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    every_max: Duration,
    /// The brokers' ZooKeeper session timeout.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    session_timeout: Duration,
    /// Run everything on 127.0.0.1 without network namespaces (no partition faults).
    #[arg(long)]
    no_netns: bool,
    /// Output directory (history, summary, logs).
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
    /// After producing stops: how long consumers may go without a delivery while receipted
    /// messages are missing, and how long producers wait for their last receipts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_quiet: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum FaultArg {
    All,
    Kill,
    Term,
    Pause,
    LongPause,
    Zk,
    PartitionZk,
    PartitionClients,
    Isolate,
    DiskFull,
}

impl FaultArg {
    fn name(self) -> &'static str {
        match self {
            FaultArg::All => "all",
            FaultArg::Kill => "kill",
            FaultArg::Term => "term",
            FaultArg::Pause => "pause",
            FaultArg::LongPause => "long-pause",
            FaultArg::Zk => "zk",
            FaultArg::PartitionZk => "partition-zk",
            FaultArg::PartitionClients => "partition-clients",
            FaultArg::Isolate => "isolate",
            FaultArg::DiskFull => "disk-full",
        }
    }

    fn needs_netns(self) -> bool {
        matches!(
            self,
            FaultArg::PartitionZk | FaultArg::PartitionClients | FaultArg::Isolate
        )
    }
}

const KINDS: [FaultArg; 9] = [
    FaultArg::Kill,
    FaultArg::Term,
    FaultArg::Pause,
    FaultArg::LongPause,
    FaultArg::Zk,
    FaultArg::PartitionZk,
    FaultArg::PartitionClients,
    FaultArg::Isolate,
    FaultArg::DiskFull,
];

/// Size of the store's tmpfs when `disk-full` is on.
const STORE_FS_BYTES: u64 = 192 << 20;
/// Group name.
const GROUP: &str = "chaos";
/// ZooKeeper's port inside its namespace.
const ZK_PORT: u16 = 2181;
/// Brokers' STOMP port inside their namespaces.
const STOMP_PORT: u16 = 61613;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { history, json } => {
            let events = history::read(&history)?;
            let report = check::check(&events);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            std::process::exit(if report.passed() { 0 } else { 1 });
        }
        Cmd::Cleanup => {
            let removed = netns::cleanup_stale()?;
            println!("removed {} namespace(s): {removed:?}", removed.len());
            for m in stale_mounts()? {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
                println!("unmounted {m}");
            }
            Ok(())
        }
        Cmd::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let passed = runtime.block_on(run(args))?;
            std::process::exit(if passed { 0 } else { 1 });
        }
    }
}

/// tmpfs mounts the runner made (their directory names start with `fabricmq-chaos-`).
fn stale_mounts() -> anyhow::Result<Vec<String>> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, at, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "tmpfs" && at.contains("fabricmq-chaos-")).then(|| at.to_owned())
        })
        .collect())
}

/// One broker of the group.
struct Slot {
    name: String,
    opts: BrokerOptions,
    work: Arc<tempfile::TempDir>,
    proc: Option<BrokerProcess>,
    /// Network node name (`b1`, ...), when namespaces are in use.
    node: String,
}

struct Chaos {
    args: RunArgs,
    rec: Arc<Recorder>,
    rng: StdRng,
    net: Option<Net>,
    zk: ZkServer,
    zk_stopped: bool,
    slots: Vec<Slot>,
    store: PathBuf,
    store_fs: Option<Mount>,
    kinds: Vec<FaultArg>,
    last_master: Option<(String, u64)>,
    cancel: CancellationToken,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.clone();
    let rec = Arc::new(Recorder::create(&out.join("history.jsonl"))?);
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("mq-chaos: interrupted; stopping and cleaning up");
            cancel.cancel();
        });
    }
    let use_netns = !args.no_netns && netns::available();
    if !args.no_netns && !use_netns {
        eprintln!(
            "mq-chaos: cannot create network namespaces here (needs root and iproute2): running on 127.0.0.1 without partition faults"
        );
    }
    let want_all = args.faults.contains(&FaultArg::All);
    let mut kinds = Vec::new();
    for k in KINDS {
        if !want_all && !args.faults.contains(&k) {
            continue;
        }
        if k.needs_netns() && !use_netns {
            eprintln!(
                "mq-chaos: fault {} skipped (no network namespaces)",
                k.name()
            );
            continue;
        }
        kinds.push(k);
    }
    if kinds.is_empty() {
        bail!("no fault kind left to inject");
    }
    let work = tempfile::Builder::new()
        .prefix("fabricmq-chaos-")
        .tempdir()
        .context("temporary directory")?;
    let store = work.path().join("store");
    let mut store_fs = None;
    if kinds.contains(&FaultArg::DiskFull) {
        match Mount::tmpfs(&store, STORE_FS_BYTES) {
            Ok(m) => store_fs = Some(m),
            Err(e) => {
                eprintln!("mq-chaos: fault disk-full skipped: {e:#}");
                kinds.retain(|k| *k != FaultArg::DiskFull);
            }
        }
    }
    std::fs::create_dir_all(&store)?;
    let tag = format!("{}{}", netns::PREFIX, std::process::id() % 100_000);
    let mut node_names: Vec<String> = vec!["zk".into()];
    node_names.extend((1..=args.brokers).map(|i| format!("b{i}")));
    node_names.push("cl".into());
    let net = if use_netns {
        let names: Vec<&str> = node_names.iter().map(String::as_str).collect();
        Some(Net::create(&tag, &names)?)
    } else {
        None
    };
    let zk = match &net {
        Some(net) => {
            let n = net.node("zk");
            ZkServer::start_in_netns(&n.ns, n.ip, ZK_PORT)?
        }
        None => ZkServer::start()?,
    };
    let zk_connect = zk.connect_string();
    let config = work.path().join("broker.toml");
    std::fs::write(&config, "[journal]\nsegment_bytes = \"8MiB\"\n")?;
    let mut slots = Vec::new();
    for i in 1..=args.brokers {
        let node = format!("b{i}");
        let (host, netns_name) = match &net {
            Some(net) => (net.node(&node).ip, Some(net.node(&node).ns.clone())),
            None => (Ipv4Addr::LOCALHOST, None),
        };
        let port = if net.is_some() {
            STOMP_PORT
        } else {
            free_port()
        };
        let opts = BrokerOptions {
            data_dir: Some(store.clone()),
            listen: Some(format!("stomp://{host}:{port}")),
            fabric: Some((zk_connect.clone(), GROUP.into(), format!("broker{i}"))),
            args: vec![
                "--session-timeout".into(),
                humantime::format_duration(args.session_timeout).to_string(),
                "--config".into(),
                config.display().to_string(),
            ],
            netns: netns_name,
            advertise_host: Some(host.to_string()),
            ..Default::default()
        };
        slots.push(Slot {
            name: format!("broker{i}"),
            opts,
            work: Arc::new(
                tempfile::Builder::new()
                    .prefix("fabricmq-chaos-broker-")
                    .tempdir()?,
            ),
            proc: None,
            node,
        });
    }
    let mut chaos = Chaos {
        args: args.clone(),
        rec: rec.clone(),
        rng: StdRng::seed_from_u64(seed),
        net,
        zk,
        zk_stopped: false,
        slots,
        store,
        store_fs,
        kinds,
        last_master: None,
        cancel: cancel.clone(),
    };
    println!(
        "mq-chaos: seed {seed}, {} brokers, faults [{}] for {:?}, {}, out {}, work {}",
        args.brokers,
        chaos
            .kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(","),
        args.duration,
        if chaos.net.is_some() {
            format!("network namespaces {tag}-*")
        } else {
            "loopback only".to_string()
        },
        out.display(),
        work.path().display()
    );
    let result = chaos.run_all(&zk_connect, seed).await;
    // Clean-up: logs first, then processes, mounts, namespaces, temporary directories.
    chaos.save_logs(&out.join("logs"));
    for s in &mut chaos.slots {
        if let Some(p) = s.proc.as_mut() {
            let _ = p.signal(Signal::SIGCONT);
            p.kill();
        }
        s.proc = None;
    }
    chaos.zk.stop();
    drop(chaos.store_fs.take());
    if let Some(mut net) = chaos.net.take() {
        net.remove();
    }
    rec.flush()?;
    drop(work);
    let report = match result {
        Ok(()) => check::check(&history::read(&out.join("history.jsonl"))?),
        Err(e) => {
            eprintln!("mq-chaos: run failed: {e:#}");
            return Err(e);
        }
    };
    let text = report.to_string();
    print!("{text}");
    std::fs::write(out.join("summary.txt"), &text)?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if cancel.is_cancelled() {
        bail!("interrupted (partial history checked above)");
    }
    Ok(report.passed())
}

impl Chaos {
    fn note(&self, text: String) {
        eprintln!("mq-chaos: {text}");
        self.rec.record(&Event::Note {
            t: self.rec.now(),
            text,
        });
    }

    async fn run_all(&mut self, zk_connect: &str, seed: u64) -> anyhow::Result<()> {
        for i in 0..self.slots.len() {
            self.start_broker(i).await?;
        }
        self.wait_master(Duration::from_secs(30))
            .await
            .context("no master at start")?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let w = Workload {
            url: format!("discovery:fabric:{GROUP}?zk={zk_connect}"),
            producers: self.args.producers,
            queues: self.args.queues,
            consumers_per_queue: self.args.consumers,
            rate: self.args.rate,
            run_id: format!("s{seed}"),
            drain_quiet: self.args.drain_quiet,
        };
        let client_ns = self.net.as_ref().map(|n| n.node("cl").ns.clone());
        let workload = spawn_workload(w, self.rec.clone(), stop_rx, self.cancel.clone(), client_ns);
        // Let the clients connect and traffic flow before the first fault.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        let mut faults = 0u64;
        let progress_every = Duration::from_secs(30);
        let mut next_progress = started + progress_every;
        while started.elapsed() < self.args.duration && !self.cancel.is_cancelled() {
            let pause = self
                .rng
                .gen_range(self.args.every_min..=self.args.every_max.max(self.args.every_min));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.cancel.cancelled() => break,
            }
            let kind = self.kinds[self.rng.gen_range(0..self.kinds.len())];
            if let Err(e) = self.inject(kind).await {
                self.note(format!("fault {} failed: {e:#}", kind.name()));
            }
            faults += 1;
            self.recover().await;
            if Instant::now() >= next_progress {
                next_progress += progress_every;
                eprintln!(
                    "mq-chaos: {:.0}/{:.0} s, {faults} faults",
                    started.elapsed().as_secs_f64(),
                    self.args.duration.as_secs_f64()
                );
            }
        }
        self.rec.record(&Event::Phase {
            t: self.rec.now(),
            name: "faults-end".into(),
        });
        self.recover().await;
        // Quiet traffic for a moment with everything healed, then stop producing and drain.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop_tx.send(true);
        eprintln!("mq-chaos: {faults} faults injected; draining");
        let joined = tokio::task::spawn_blocking(move || workload.join())
            .await
            .context("joining the workload")?;
        match joined {
            Ok(r) => r?,
            Err(_) => bail!("the workload thread panicked"),
        }
        Ok(())
    }

    async fn start_broker(&mut self, i: usize) -> anyhow::Result<()> {
        let s = &mut self.slots[i];
        let p = BrokerProcess::start_in(s.work.clone(), s.opts.clone())
            .await
            .with_context(|| format!("starting {}", s.name))?;
        s.proc = Some(p);
        Ok(())
    }

    /// The broker reporting master with the highest epoch (records a change of master).
    fn master(&mut self) -> Option<usize> {
        let mut best: Option<(usize, u64)> = None;
        let mut masters = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let Some(p) = &s.proc else { continue };
            if let Some((role, _, epoch)) = p.state() {
                if role == "master" {
                    let e = epoch.unwrap_or(0);
                    masters.push((s.name.clone(), e));
                    if best.is_none_or(|b| e > b.1) {
                        best = Some((i, e));
                    }
                }
            }
        }
        let (i, e) = best?;
        let cur = (self.slots[i].name.clone(), e);
        if self.last_master.as_ref() != Some(&cur) {
            self.rec.record(&Event::Master {
                t: self.rec.now(),
                container: cur.0.clone(),
                epoch: e,
            });
            self.last_master = Some(cur);
        }
        Some(i)
    }

    async fn wait_master(&mut self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.master() {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no master within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn fault(&self, kind: FaultArg, target: &str, hold: Option<Duration>) {
        eprintln!(
            "mq-chaos: {:>7.1}s fault {} on {target}{}",
            self.rec.now() as f64 / 1e6,
            kind.name(),
            hold.map(|h| format!(" for {h:?}")).unwrap_or_default()
        );
        self.rec.record(&Event::Fault {
            t: self.rec.now(),
            kind: kind.name().into(),
            target: target.into(),
            hold_ms: hold.map(us),
        });
    }

    fn healed(&self, kind: FaultArg, target: &str) {
        self.rec.record(&Event::Healed {
            t: self.rec.now(),
            kind: kind.name().into(),
            target: target.into(),
        });
    }

    fn session_times(&mut self, lo: f64, hi: f64) -> Duration {
        self.args
            .session_timeout
            .mul_f64(self.rng.gen_range(lo..hi))
    }

    async fn hold(&self, d: Duration) {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.cancel.cancelled() => {}
        }
    }

    async fn inject(&mut self, kind: FaultArg) -> anyhow::Result<()> {
        let m = match self.wait_master(Duration::from_secs(20)).await {
            Ok(m) => m,
            Err(e) => {
                self.note(format!("no master to hit: {e}"));
                return Ok(());
            }
        };
        let name = self.slots[m].name.clone();
        let node = self.slots[m].node.clone();
        match kind {
            FaultArg::Kill => {
                let hold = Duration::from_millis(self.rng.gen_range(300..2000));
                self.fault(kind, &name, Some(hold));
                if let Some(p) = self.slots[m].proc.as_mut() {
                    p.kill();
                }
                self.slots[m].proc = None;
                self.hold(hold).await;
                self.start_broker(m).await?;
                self.healed(kind, &name);
            }
            FaultArg::Term => {
                let hold = Duration::from_millis(self.rng.gen_range(300..2000));
                self.fault(kind, &name, Some(hold));
                if let Some(p) = self.slots[m].proc.as_mut() {
                    match p.terminate(Duration::from_secs(20)).await {
                        Ok(Some(0)) => {}
                        other => {
                            let msg = format!("{name}: SIGTERM exit {other:?}");
                            p.kill();
                            self.note(msg);
                        }
                    }
                }
                self.slots[m].proc = None;
                self.hold(hold).await;
                self.start_broker(m).await?;
                self.healed(kind, &name);
            }
            FaultArg::Pause | FaultArg::LongPause => {
                let hold = if kind == FaultArg::Pause {
                    self.session_times(0.1, 0.5)
                } else {
                    self.session_times(1.5, 3.0)
                };
                self.fault(kind, &name, Some(hold));
                if let Some(p) = &self.slots[m].proc {
                    p.signal(Signal::SIGSTOP)?;
                }
                self.hold(hold).await;
                if let Some(p) = &self.slots[m].proc {
                    p.signal(Signal::SIGCONT)?;
                }
                self.healed(kind, &name);
            }
            FaultArg::Zk => {
                let hold = self.session_times(0.25, 2.0);
                self.fault(kind, "zookeeper", Some(hold));
                self.zk.stop();
                self.zk_stopped = true;
                self.hold(hold).await;
                self.restart_zk().await?;
                self.healed(kind, "zookeeper");
            }
            FaultArg::PartitionZk | FaultArg::PartitionClients | FaultArg::Isolate => {
                let hold = match kind {
                    FaultArg::PartitionClients => {
                        Duration::from_millis(self.rng.gen_range(500..4000))
                    }
                    _ => self.session_times(0.5, 3.0),
                };
                let what = match kind {
                    FaultArg::PartitionZk => format!("{name} | zookeeper"),
                    FaultArg::PartitionClients => format!("{name} | clients"),
                    _ => format!("{name} | everybody"),
                };
                self.fault(kind, &what, Some(hold));
                let net = self.net.as_mut().context("no network namespaces")?;
                match kind {
                    FaultArg::PartitionZk => net.cut(&node, "zk")?,
                    FaultArg::PartitionClients => net.cut(&node, "cl")?,
                    _ => net.isolate(&node)?,
                }
                self.hold(hold).await;
                self.net.as_mut().context("no network namespaces")?.heal()?;
                self.healed(kind, &what);
            }
            FaultArg::DiskFull => {
                let hold = Duration::from_millis(self.rng.gen_range(500..3000));
                self.fault(kind, "store", Some(hold));
                let fill = self.store.join("chaos-fill");
                let filled = fill_disk(&fill).await;
                if let Err(e) = &filled {
                    self.note(format!("filling the store: {e:#}"));
                }
                self.hold(hold).await;
                std::fs::remove_file(&fill).context("freeing the store")?;
                self.healed(kind, "store");
            }
            FaultArg::All => unreachable!("expanded before the run"),
        }
        Ok(())
    }

    async fn restart_zk(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..3 {
            match tokio::task::block_in_place(|| self.zk.restart()) {
                Ok(()) => {
                    self.zk_stopped = false;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("zk restart")))
    }

    /// Undoes whatever a failed or interrupted fault may have left, restarts brokers that
    /// exited by themselves, and waits for a master.
    async fn recover(&mut self) {
        if let Some(net) = self.net.as_mut() {
            if let Err(e) = net.heal() {
                self.note(format!("heal: {e:#}"));
            }
        }
        if self.zk_stopped {
            if let Err(e) = self.restart_zk().await {
                self.note(format!("restarting ZooKeeper: {e:#}"));
            }
        }
        let _ = std::fs::remove_file(self.store.join("chaos-fill"));
        for i in 0..self.slots.len() {
            let exited = match self.slots[i].proc.as_mut() {
                Some(p) => {
                    let _ = p.signal(Signal::SIGCONT);
                    p.try_exit_code()
                }
                None => Some(None),
            };
            if let Some(code) = exited {
                if self.slots[i].proc.is_some() {
                    self.note(format!(
                        "{} exited by itself (code {code:?}); restarting it",
                        self.slots[i].name
                    ));
                }
                if let Err(e) = self.start_broker(i).await {
                    self.note(format!("restart: {e:#}"));
                }
            }
        }
        if let Err(e) = self.wait_master(Duration::from_secs(30)).await {
            self.note(format!("after recovery: {e}"));
        }
    }

    fn save_logs(&self, dir: &Path) {
        let _ = std::fs::create_dir_all(dir);
        for s in &self.slots {
            if let Ok(entries) = std::fs::read_dir(s.work.path()) {
                for e in entries.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.ends_with(".log") {
                        let _ = std::fs::copy(e.path(), dir.join(format!("{}-{n}", s.name)));
                    }
                }
            }
        }
        let _ = std::fs::write(dir.join("zookeeper.log"), self.zk.log());
    }
}

/// Writes `path` until the filesystem is full; returns the bytes written.
async fn fill_disk(path: &Path) -> anyhow::Result<u64> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || fabricmq_tests::tmpfs::fill(&path)).await?
}

/// Runs the workload on its own thread and runtime, every thread of which joins the clients'
/// network namespace (when there is one) before doing anything.
fn spawn_workload(
    w: Workload,
    rec: Arc<Recorder>,
    stop: watch::Receiver<bool>,
    cancel: CancellationToken,
    netns: Option<String>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || -> anyhow::Result<()> {
        let join = netns.map(|ns| PathBuf::from("/var/run/netns").join(ns));
        let enter = move |path: &Path| -> anyhow::Result<()> {
            let f = std::fs::File::open(path)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(())
        };
        if let Some(p) = &join {
            enter(p)?;
        }
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2).enable_all();
        if let Some(p) = join.clone() {
            b.on_thread_start(move || {
                if let Err(e) = enter(&p) {
                    // A client thread outside the namespace would reach nothing: fail loudly.
                    panic!("joining {}: {e}", p.display());
                }
            });
        }
        let runtime = b.build()?;
        runtime.block_on(async move {
            tokio::spawn(workload::run(w, rec, stop, cancel))
                .await
                .context("workload task")?
        })
    })
}

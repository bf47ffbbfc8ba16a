//! `mq-broker`: runs one fabricmq broker.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fabricmq_broker::admin;
use fabricmq_broker::config::BrokerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A fabricmq STOMP broker.
#[derive(Parser, Debug)]
#[command(
    name = "mq-broker",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (see `--print-config` for every key and its default).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client listener, `stomp://HOST:PORT` or `stomp+ssl://HOST:PORT` (TLS, see `[tls]`)
    /// (repeatable; default stomp://0.0.0.0:61613).
    #[arg(long, value_name = "URL")]
    listen: Vec<String>,
    /// Data directory holding the journal (default ./data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Users file (argon2 hashes); without one the default admin/admin login is active, which
    /// is refused in fabric mode and on non-loopback listeners (see --allow-default-admin).
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// Insecure: allow the built-in admin/admin login (no users file) in fabric mode or on a
    /// non-loopback listener (`auth.allow_default_admin`); logged as a warning.
    #[arg(long)]
    allow_default_admin: bool,
    /// Start even if a journal segment before the last is corrupt (drops what follows the damage).
    #[arg(long)]
    salvage: bool,
    /// Write `{"listeners": [...], "pid": N, "admin": "HOST:PORT"|null}` to this file once listening.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// ZooKeeper ensemble `host:port[,host:port...][/chroot]`: run as a container of a
    /// master/slave group (needs --container and --group or --profile).
    #[arg(long, env = "FABRIC_ZK", value_name = "CONNECT")]
    zk: Option<String>,
    /// Root of fabricmq's nodes in ZooKeeper.
    #[arg(long, default_value = "/fabric", value_name = "PATH")]
    zk_root: String,
    /// File holding the registry's digest credentials `user:password` (else FABRIC_ZK_AUTH_FILE
    /// or FABRIC_ZK_AUTH); with them every node this container creates is writable by that
    /// identity only and readable by anyone.
    #[arg(long, value_name = "FILE")]
    zk_auth_file: Option<std::path::PathBuf>,
    /// Run the fabric WITHOUT registry credentials (also FABRIC_ZK_INSECURE=1): every node this
    /// container creates is then writable by anyone who can reach ZooKeeper (they can redirect
    /// clients, yield or delete the master, change profiles). Without credentials and without
    /// this flag a fabric container refuses to start.
    #[arg(long, env = fabricmq_registry::INSECURE_ENV,
          value_parser = clap::builder::FalseyValueParser::new())]
    zk_insecure: bool,
    /// ZooKeeper session timeout (e.g. "4s"); a master steps down after a third of it without
    /// ZooKeeper.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    session_timeout: std::time::Duration,
    /// Group this container belongs to (default: the profile's group).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// This container's name (unique in the fabric).
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    /// Take the configuration from this registry profile (flags given here override it).
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Host name to publish in service URLs for listeners bound to a wildcard address
    /// (default: this machine's host name).
    #[arg(long, value_name = "HOST")]
    advertise_host: Option<String>,
    /// Write `{"role": "slave"|"master", "listeners": [...], "epoch": N, "admin": "HOST:PORT"|null}`
    /// here on every role change.
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    // ---- admin endpoint (broker/src/admin.rs) ----
    /// Serve the HTTP admin endpoint (/metrics, /health, /status) on `HOST:PORT` (default
    /// 127.0.0.1:8161; "" disables it; port 0 picks a free one, written to the ready/state file).
    #[arg(long, value_name = "ADDR", conflicts_with = "no_admin")]
    admin_listen: Option<String>,
    /// Do not serve the HTTP admin endpoint.
    #[arg(long)]
    no_admin: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a password on standard input and print its argon2 hash for the users file.
    HashPassword,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    raise_open_file_limit();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mq-broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::HashPassword) = cli.command {
        let mut pw = String::new();
        std::io::stdin()
            .read_to_string(&mut pw)
            .context("reading the password from standard input")?;
        let pw = pw.trim_end_matches(['\n', '\r']);
        anyhow::ensure!(!pw.is_empty(), "empty password");
        let hash = fabricmq_broker::auth::hash_password(pw).map_err(anyhow::Error::msg)?;
        println!("{hash}");
        return Ok(());
    }
    let mut config = match &cli.config {
        Some(path) => BrokerConfig::from_file(path)?,
        None => BrokerConfig::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mq-broker")
        .build()
        .context("starting the async runtime")?;
    // A profile from the registry supplies the base configuration; flags override it.
    let ha = match &cli.zk {
        None => {
            anyhow::ensure!(
                cli.profile.is_none() && cli.group.is_none(),
                "--profile and --group need --zk (or FABRIC_ZK)"
            );
            None
        }
        Some(zk) => {
            let mut registry = fabricmq_registry::RegistryConfig::parse(zk)
                .with_context(|| format!("--zk {zk:?}"))?;
            registry.root = cli.zk_root.clone();
            registry.session_timeout = cli.session_timeout;
            registry.credentials =
                fabricmq_registry::ZkCredentials::from_env_or_file(cli.zk_auth_file.as_deref())
                    .context("registry credentials")?;
            registry.require_credentials("mq-broker in fabric mode (--zk)", cli.zk_insecure)?;
            let container = cli
                .container
                .clone()
                .context("--container is required with --zk")?;
            let mut group = cli.group.clone();
            if let Some(name) = &cli.profile {
                let profile = runtime
                    .block_on(load_profile(registry.clone(), name))
                    .with_context(|| format!("loading profile {name:?}"))?;
                if let Some(extra) = &profile.config {
                    config = BrokerConfig::from_file(std::path::Path::new(extra))?;
                }
                config.listen = profile.listen.clone();
                config.data_dir = PathBuf::from(&profile.data);
                if let Some(u) = &profile.users {
                    config.auth.users_file = Some(PathBuf::from(u));
                }
                group = group.or(Some(profile.group.clone()));
            }
            let group = group.context("--group (or --profile) is required with --zk")?;
            let advertise_host = cli.advertise_host.clone().unwrap_or_else(hostname);
            let status = admin::Status::fabric(&container, &group, cli.profile.as_deref());
            Some(fabricmq_broker::ha::HaSettings {
                registry,
                group,
                container,
                profile: cli.profile.clone(),
                advertise_host,
                state_file: cli.state_file.clone(),
                status,
            })
        }
    };
    if !cli.listen.is_empty() {
        config.listen = cli.listen.clone();
    }
    if let Some(d) = cli.data {
        config.data_dir = d;
    }
    if let Some(u) = cli.users {
        config.auth.users_file = Some(u);
    }
    if cli.salvage {
        config.journal.salvage = true;
    }
    if cli.allow_default_admin {
        config.auth.allow_default_admin = true;
    }
    if let Some(a) = &cli.admin_listen {
        config.admin.listen = Some(a.clone());
    }
    if cli.no_admin {
        config.admin.enabled = false;
    }
    config.validate()?;
    if cli.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    fabricmq_broker::auth::check_default_admin(&config, ha.is_some())?;
    warn_if_files_short(config.limits.max_connections, config.admin.max_connections);
    if let Some(users) = &config.auth.users_file {
        fabricmq_broker::file_perms::warn_if_exposed(users, "the users file (password hashes)");
    }
    let zk_auth_file = cli
        .zk_auth_file
        .clone()
        .or_else(|| std::env::var_os(fabricmq_registry::config::AUTH_FILE_ENV).map(PathBuf::from));
    if let (Some(_), Some(f)) = (&ha, &zk_auth_file) {
        fabricmq_broker::file_perms::warn_if_exposed(f, "the registry credentials file");
    }
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let status = match &ha {
            Some(ha) => ha.status.clone(),
            None => admin::Status::standalone(),
        };
        start_admin(&config, &status).await?;
        if let Some(ha) = ha {
            tokio::spawn(signals(shutdown.clone()));
            fabricmq_broker::ha::run(config, ha, shutdown).await;
            return anyhow::Ok(());
        }
        tokio::spawn(signals(shutdown.clone()));
        let settings = fabricmq_broker::standalone::StandaloneSettings {
            status,
            ready_file: cli.ready_file.clone(),
        };
        fabricmq_broker::standalone::run(config, settings, shutdown).await?;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Starts the admin endpoint if configured. A configured address that cannot be bound is an
/// error; the default one (another broker or ActiveMQ's console may hold it) only a warning.
async fn start_admin(config: &BrokerConfig, status: &Arc<admin::Status>) -> anyhow::Result<()> {
    let Some(addr) = config.admin.socket_addr() else {
        info!("admin endpoint disabled");
        return Ok(());
    };
    match admin::bind(addr).await {
        Ok(listener) => {
            admin::spawn(
                listener,
                status.clone(),
                admin::AdminLimits::from_config(&config.admin),
            );
            Ok(())
        }
        Err(e) if config.admin.explicit() => {
            Err(anyhow::Error::new(e).context("admin.listen / --admin-listen"))
        }
        Err(e) => {
            warn!(error = %e, "running without the admin endpoint; set --admin-listen (or [admin] listen) to another address");
            Ok(())
        }
    }
}

/// Raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit, as production brokers
/// do: every connection is a descriptor, and the usual soft limit of 1024 would refuse clients
/// (EMFILE in the accept loop) long before `limits.max_connections`. Logs the resulting limit.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot read the open file limit");
            return;
        }
    };
    // Linux refuses an infinite RLIMIT_NOFILE: the ceiling is then fs.nr_open.
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(soft)
    } else {
        hard
    };
    if target <= soft {
        info!(soft, hard, "open file limit");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => info!(
            soft = target,
            hard,
            previous = soft,
            "open file limit raised"
        ),
        Err(e) => warn!(error = %e, soft, hard, "cannot raise the open file limit"),
    }
}

/// Warns when `limits.max_connections` (plus the admin endpoint's `admin.max_connections`)
/// cannot be reached under the open file limit.
fn warn_if_files_short(max_connections: usize, admin_connections: usize) {
    use nix::sys::resource::{getrlimit, Resource};
    // The journal, its temporary store, listeners and the runtime need some descriptors too.
    const RESERVED: u64 = 64;
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        // The admin endpoint holds up to its cap and closes up to as many refused connections.
        let wanted = max_connections as u64 + 2 * admin_connections as u64 + RESERVED;
        if soft < wanted {
            warn!(
                open_file_limit = soft,
                max_connections,
                admin_max_connections = admin_connections,
                "the open file limit is below limits.max_connections + 2 × admin.max_connections + {RESERVED}; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower them"
            );
        }
    }
}

async fn load_profile(
    config: fabricmq_registry::RegistryConfig,
    name: &str,
) -> anyhow::Result<fabricmq_registry::Profile> {
    let registry = fabricmq_registry::Registry::connect(config).await?;
    let profile = registry.profile(name).await;
    registry.close().await;
    profile?.with_context(|| format!("no profile named {name:?} in the registry"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    warn!("second signal: exiting immediately");
    std::process::exit(130);
}

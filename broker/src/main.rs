//! `mq-broker`: runs one fabricmq broker.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fabricmq_broker::config::BrokerConfig;
use fabricmq_broker::server;
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
    /// Client listener, `stomp://HOST:PORT` (repeatable; default stomp://0.0.0.0:61613).
    #[arg(long, value_name = "URL")]
    listen: Vec<String>,
    /// Data directory holding the journal (default ./data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Users file (argon2 hashes); without one the default admin/admin login is active.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// Start even if a journal segment before the last is corrupt (drops what follows the damage).
    #[arg(long)]
    salvage: bool,
    /// Write `{"listeners": [...], "pid": N}` to this file once listening.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
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
    config.validate()?;
    if cli.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mq-broker")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let started = server::start(config, shutdown.clone()).await?;
        if let Some(path) = &cli.ready_file {
            let addrs: Vec<String> = started
                .local_addrs()
                .iter()
                .map(|a| format!("stomp://{a}"))
                .collect();
            let json = serde_json::json!({ "listeners": addrs, "pid": std::process::id() });
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, json.to_string())
                .and_then(|_| std::fs::rename(&tmp, path))
                .with_context(|| format!("writing ready file {}", path.display()))?;
        }
        tokio::spawn(signals(shutdown));
        started.serve().await;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
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

//! `mq-client`: command-line producer, consumer, browser and load generator for STOMP brokers.
//!
//! Exit status: 0 on success, 1 when the run failed (connection refused, a send failed, fewer
//! messages than requested arrived, ...), 2 for bad flags. Logs go to stderr (`RUST_LOG`, default
//! `warn`).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use fabricmq_tools::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli::validate(&cli) {
        e.exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mq-client: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(fabricmq_tools::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mq-client: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

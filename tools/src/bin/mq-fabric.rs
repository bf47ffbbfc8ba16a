//! `mq-fabric`: administer a fabricmq fabric (clusters, containers, profiles) in ZooKeeper.
//!
//! Exit status: 0 on success, 1 on errors (ZooKeeper unreachable or too slow, missing profile,
//! ...), 2 for bad flags, 3 when `status` finds a listed group without a master. Errors are one
//! line on stderr prefixed `mq-fabric:`. Logs are off unless `RUST_LOG` is set.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fabricmq_tools::fabric::{self, cli::Cli};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Off by default: the ZooKeeper library logs every failed connection attempt, and a CLI
    // reports its errors itself.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mq-fabric: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(fabric::run(cli));
    // Background tasks of the ZooKeeper session must not delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            eprintln!("mq-fabric: {e:#}");
            ExitCode::from(1)
        }
    }
}

//! `mq-fabric`: the fabric administration tool (JBoss A-MQ / fabric8 console habits).
//!
//! It reads and writes the fabric's ZooKeeper registry only through [`fabricmq_registry`]:
//!
//! * `cluster-list [GROUP]`: master, slaves, services, epoch and serving time of each group;
//! * `container list`: every live group member, plus a warning for each profile that has fewer
//!   live containers than it asks for;
//! * `status [GROUP]`: one line per group; exit status 3 when a group has no master;
//! * `profile create|list|show|edit|delete`: the broker profiles containers start from;
//! * `master yield GROUP`: controlled hand-over;
//! * `secure`: repair open ACLs of the fabric's nodes (needs the fabric's credentials).
//!
//! Commands that write refuse to run without registry credentials unless `--zk-insecure` (or
//! `FABRIC_ZK_INSECURE=1`) is given, which prints a warning saying what it gives up.
//!
//! Layout of the module:
//!
//! * [`cli`]: the clap definitions and the validation of every value written to the registry;
//! * [`commands`]: the subcommands (registry calls, each bounded by `--timeout`);
//! * [`view`]: the data shown, derived from registry records (pure; also the `--json` shapes);
//! * [`render`]: tables, status lines, profile blocks, durations.
//!
//! Output contract: results on stdout (with `--json` exactly one JSON value on one line, notes on
//! stderr); errors are one line on stderr prefixed `mq-fabric:` (printed by the binary).
//! Exit status: 0 success, 1 error, 2 bad flags (clap), 3 `status` found a group without master.

pub mod cli;
pub mod commands;
pub mod render;
pub mod view;

use cli::Cli;
use commands::Fabric;

/// How a successful run ends (errors are exit status 1, bad flags 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit status 0.
    Success,
    /// `status`: some listed group has no master (exit status 3).
    NoMaster,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::NoMaster => 3,
        }
    }
}

/// Connects to ZooKeeper (bounded by `--timeout`), runs the subcommand, prints its output and
/// closes the session. An `Err` is a one-line message for stderr (exit status 1).
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let credentials =
        fabricmq_registry::ZkCredentials::from_env_or_file(cli.zk_auth_file.as_deref())?;
    let zk = cli.zk.clone().with_credentials(credentials);
    if cli.command.writes() {
        let what = format!("mq-fabric {}", cli.command.name());
        zk.require_credentials(&what, cli.zk_insecure)?;
        if zk.credentials.is_none() {
            // Logs are off by default in this tool: say it on stderr.
            eprintln!(
                "mq-fabric: warning: {}",
                fabricmq_registry::INSECURE_WARNING
            );
        }
    }
    let fabric = Fabric::connect(&zk, &cli.zk_root, cli.timeout).await?;
    let result = fabric.execute(&cli.command, cli.json).await;
    fabric.close().await;
    result
}

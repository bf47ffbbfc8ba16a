//! # fabricmq-tools
//!
//! Library behind the command-line tools:
//!
//! * `mq-client`: a STOMP producer, consumer, queue browser and load generator ("perf") built on
//!   the [`fabricmq_client`] API. It speaks plain STOMP, so it can drive any STOMP broker
//!   (fabricmq, ActiveMQ, ...);
//! * `mq-fabric`: the fabric administration tool (clusters, containers, profiles in ZooKeeper),
//!   entirely in the [`fabric`] module.
//!
//! The binaries (`src/bin/`) only parse flags, set up logging and the runtime and turn errors into
//! exit codes; everything else lives here so that it can be unit-tested. `mq-client`'s modules:
//!
//! * [`cli`]: the clap definitions (flag names, defaults, validation);
//! * [`producer`], [`consumer`], [`browse`], [`perf`]: one module per subcommand;
//! * [`accounting`]: exact per-producer sequence accounting (gaps, duplicates, redeliveries);
//! * [`report`]: the JSON reports and human-readable summaries;
//! * [`progress`]: the optional progress display on stderr;
//! * [`common`]: connection set-up (any broker URL form, `--zk`/FABRIC_ZK), the failover monitor
//!   (failover lines on stderr, counts and downtimes), stop signals, acknowledgement and receive
//!   helpers.
//!
//! Output contract: with `--json` a command writes exactly one JSON object (one line) to stdout and
//! nothing else there; the human summary then goes to stderr. Without `--json` the summary goes to
//! stdout. Logs always go to stderr.

pub mod accounting;
pub mod browse;
pub mod cli;
pub mod common;
pub mod consumer;
pub mod fabric;
pub mod perf;
pub mod producer;
pub mod progress;
pub mod report;

use cli::{Cli, Command};

/// Runs the `mq-client` subcommand selected on the command line.
///
/// Reports (JSON or human summary) are printed before this returns. An `Err` means the run failed
/// (could not connect, a send failed, fewer messages than requested arrived, ...); the caller
/// prints it as one line and exits with status 1.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Producer(args) => producer::run(args).await,
        Command::Consumer(args) => consumer::run(args).await,
        Command::Browse(args) => browse::run(args).await,
        Command::Perf(args) => perf::run(args).await,
    }
}

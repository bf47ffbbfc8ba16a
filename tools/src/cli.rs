//! Command-line definitions of `mq-client` (clap derive).
//!
//! Long flags are camelCase exactly as the fabric8/ActiveMQ `mq-client` spells them
//! (`--brokerUrl`, `--parallelThreads`, `--batchSize`, `--receiptEvery`, ...). Boolean options that
//! default to `true` take an explicit value (`--persistent false`, `--receipts false`); given
//! without a value they mean `true`.
//!
//! Parsing errors are clap errors (exit status 2). Cross-flag checks that clap cannot express live
//! in [`validate`] and also produce clap errors.

use std::fmt;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};
use fabricmq_client::{AckMode, BrokerUrl, Destination};

/// `mq-client`: produce, consume, browse and load-test a STOMP broker.
#[derive(Debug, Parser)]
#[command(
    name = "mq-client",
    version,
    about = "STOMP producer, consumer, queue browser and load generator (fabricmq, ActiveMQ, ...)",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send messages to a destination.
    Producer(ProducerArgs),
    /// Receive messages from a destination and check per-producer sequence numbers.
    Consumer(ConsumerArgs),
    /// List the messages of a queue without consuming them.
    Browse(BrowseArgs),
    /// Measure throughput and latency with pipelined producers and consumers.
    Perf(PerfArgs),
}

/// How to reach and log in to the broker.
#[derive(Clone, Args)]
pub struct ConnectionArgs {
    /// Broker URL: `tcp://host:port` (or `stomp://host:port`) for one broker;
    /// `failover:(tcp://a:61613,tcp://b:61613)?options` to reconnect among several (ActiveMQ
    /// option names: initialReconnectDelay, maxReconnectDelay, useExponentialBackOff,
    /// backOffMultiplier, maxReconnectAttempts, startupMaxReconnectAttempts, randomize, timeout);
    /// `discovery:fabric:<group>?zk=host:port&zkRoot=/fabric&options` to follow the master of a
    /// fabric group (ZooKeeper from `zk=`, else `--zk` / FABRIC_ZK). `ssl://host:port` (or
    /// `stomp+ssl://`) speaks TLS, also inside failover:(...); see --tls-ca.
    #[arg(
        long = "brokerUrl",
        value_name = "URL",
        default_value = "tcp://localhost:61613"
    )]
    pub broker_url: BrokerUrl,

    /// Login name (none by default).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Password (also read from the MQ_CLIENT_PASSWORD environment variable, which keeps it out of
    /// the process list).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "MQ_CLIENT_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// Client id: sent as the `client-id` connect header and used as the base of the
    /// `producer-id` header (a random UUID when absent). With several threads each connection gets
    /// `<clientId>-<thread>`.
    #[arg(long = "clientId", value_name = "ID")]
    pub client_id: Option<String>,

    /// ZooKeeper connect string (`host:port[,host:port...][/chroot]`) for a
    /// `discovery:fabric:<group>` broker URL that has no `zk=` option (a `zk=` in the URL wins).
    /// Ignored by the other URL forms.
    #[arg(long, value_name = "HOST:PORT", env = "FABRIC_ZK")]
    pub zk: Option<String>,

    /// CA certificates (PEM) trusted to sign the broker's certificate for `ssl://` URLs
    /// (default: the system bundle).
    #[arg(long = "tls-ca", value_name = "FILE", env = "FABRIC_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client certificate chain (PEM) for brokers that require client certificates (with
    /// --tls-key).
    #[arg(long = "tls-cert", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl ConnectionArgs {
    /// The broker URL to connect to: `--brokerUrl` with the ZooKeeper address of `--zk` (or
    /// FABRIC_ZK) filled into a discovery URL that has none. A discovery URL that still has no
    /// ZooKeeper address is an error naming the ways to give one.
    pub fn effective_url(&self) -> Result<BrokerUrl, String> {
        let url = self.broker_url.clone().with_default_zk(self.zk.as_deref());
        match &url {
            BrokerUrl::Discovery { zk: None, .. } => Err(format!(
                "{url} needs a ZooKeeper address: add zk=host:port to the URL, or give --zk \
                 host:port or set FABRIC_ZK"
            )),
            _ => Ok(url),
        }
    }
}

impl fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("broker_url", &self.broker_url)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("client_id", &self.client_id)
            .field("zk", &self.zk)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// Flags shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Connection settings.
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Destination: `queue://NAME` or `topic://NAME` (STOMP `/queue/NAME` and `/topic/NAME` work too).
    #[arg(long, value_name = "DEST", default_value = "queue://TEST")]
    pub destination: Destination,

    /// Print exactly one JSON object on stdout at the end (the human summary goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Acknowledgement mode flag values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    /// The broker considers a message consumed when it delivers it.
    Auto,
    /// Cumulative client acknowledgement (`ack: client`).
    Client,
    /// Per-message client acknowledgement (`ack: client-individual`).
    #[value(alias = "client-individual")]
    Individual,
}

impl From<AckArg> for AckMode {
    fn from(value: AckArg) -> Self {
        match value {
            AckArg::Auto => AckMode::Auto,
            AckArg::Client => AckMode::Client,
            AckArg::Individual => AckMode::ClientIndividual,
        }
    }
}

/// `mq-client producer`.
#[derive(Debug, Clone, Args)]
pub struct ProducerArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Messages to send per thread.
    #[arg(long, default_value_t = 100)]
    pub count: u64,

    /// Number of producers sending in parallel, each with its own connection.
    #[arg(long = "parallelThreads", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel_threads: u32,

    /// Milliseconds to wait between two messages.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub sleep: u64,

    /// Size in bytes of the generated message body.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub size: usize,

    /// Send persistent messages (`--persistent false` for non-persistent ones).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub persistent: bool,

    /// Send in transactions of this many messages (0 = no transactions). A trailing partial batch
    /// is committed too.
    #[arg(long = "batchSize", value_name = "N", default_value_t = 0)]
    pub batch_size: u64,

    /// Time to live in milliseconds (0 = never expires); sets `expires` = now + ttl.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub ttl: u64,

    /// Message priority (0-9; broker default when absent).
    #[arg(long, value_name = "0-9", value_parser = clap::value_parser!(u8).range(0..=9))]
    pub priority: Option<u8>,

    /// Wait for a receipt after every message (when not batching). `--receipts false` pipelines the
    /// sends and asks for a receipt only every `--receiptEvery` messages (and on the last one).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub receipts: bool,

    /// With `--receipts false`: request a receipt on every Nth message (0 = none; the final
    /// DISCONNECT receipt still confirms the whole run).
    #[arg(long = "receiptEvery", value_name = "N", default_value_t = 100)]
    pub receipt_every: u64,

    /// Fixed text body to send instead of a generated one (overrides `--size`).
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,

    /// Extra message header `name=value` (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
}

impl ProducerArgs {
    /// Pause between two messages.
    pub fn sleep(&self) -> Duration {
        Duration::from_millis(self.sleep)
    }
}

/// `mq-client consumer`.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Stop after this many messages (0 = until `--timeout`). On a queue the threads share this
    /// count; on a topic each thread receives this many.
    #[arg(long, default_value_t = 100)]
    pub count: u64,

    /// Number of consumers receiving in parallel, each with its own connection.
    #[arg(long = "parallelThreads", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel_threads: u32,

    /// Acknowledgement mode: auto, client (cumulative) or individual (client-individual).
    #[arg(long, value_enum, default_value_t = AckArg::Auto)]
    pub ack: AckArg,

    /// Stop after this many milliseconds without a message (0 = wait for `--count`).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub timeout: u64,

    /// Subscription prefetch (`prefetch` and `activemq.prefetchSize` headers; broker default when absent).
    #[arg(long, value_name = "N")]
    pub prefetch: Option<u32>,

    /// Milliseconds to spend on each message (simulated processing, before acknowledging it).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub sleep: u64,

    /// With `--ack client`: acknowledge cumulatively every N messages (0 or 1 = every message).
    /// The trailing partial batch is acknowledged at the end.
    #[arg(long = "batchSize", value_name = "N", default_value_t = 0)]
    pub batch_size: u64,
}

/// `mq-client browse`.
#[derive(Debug, Clone, Args)]
pub struct BrowseArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Stop after this many messages (0 = until the end of the queue).
    #[arg(long, default_value_t = 0)]
    pub count: u64,

    /// Stop after this many milliseconds without a message (0 = wait for the end of the queue).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub timeout: u64,

    /// Subscription prefetch (broker default when absent).
    #[arg(long, value_name = "N")]
    pub prefetch: Option<u32>,

    /// Print whole bodies instead of a short preview.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// `mq-client perf`.
#[derive(Debug, Clone, Args)]
pub struct PerfArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Number of producers, each with its own connection.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub producers: u32,

    /// Number of consumers, each with its own connection.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub consumers: u32,

    /// Messages per producer; with `--producers 0` the total the consumers drain (0 = until idle).
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,

    /// Body size in bytes (at least 8: the body starts with the send timestamp).
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub size: usize,

    /// Send persistent messages (`--persistent false` for non-persistent ones).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub persistent: bool,

    /// 1 = every send waits for its receipt; K>1 = pipelined sends with a receipt on every Kth and
    /// on the last message; 0 = no receipts at all.
    #[arg(long = "receiptEvery", value_name = "K", default_value_t = 1)]
    pub receipt_every: u64,

    /// Consumer acknowledgement mode: auto, client (cumulative, batched) or individual.
    #[arg(long, value_enum, default_value_t = AckArg::Auto)]
    pub ack: AckArg,

    /// Consumer prefetch (broker default when absent).
    #[arg(long, value_name = "N")]
    pub prefetch: Option<u32>,

    /// Messages each producer sends before the measurement starts (not counted, no latency).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warmup: u64,

    /// Cap on the measured run in seconds: producers and consumers stop when it is over.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Consumers stop after this many milliseconds without a message.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub timeout: u64,

    /// Collect the client-observed downtime of every failover (on every producer and consumer
    /// connection) and print its distribution (count, min, p50, p90, max in ms); in the JSON
    /// object as `failover_downtime_ms`. Meant for failover and discovery broker URLs.
    #[arg(long = "failover-report")]
    pub failover_report: bool,
}

/// Parses `name=value` (the value may contain `=`; the name must not be empty).
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        Some(_) => Err("the header name is empty (expected NAME=VALUE)".to_owned()),
        None => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// Parses a positive number of seconds (fractions allowed).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// Cross-flag checks clap cannot express. The error prints like any clap usage error (exit 2).
pub fn validate(cli: &Cli) -> Result<(), clap::Error> {
    let (name, connection) = match &cli.command {
        Command::Producer(a) => ("producer", &a.common.connection),
        Command::Consumer(a) => ("consumer", &a.common.connection),
        Command::Browse(a) => ("browse", &a.common.connection),
        Command::Perf(a) => ("perf", &a.common.connection),
    };
    if let Err(msg) = connection.effective_url() {
        return Err(usage_error(name, &msg));
    }
    if let Command::Perf(p) = &cli.command {
        if p.producers == 0 && p.consumers == 0 {
            return Err(usage_error(
                "perf",
                "perf needs at least one producer or one consumer",
            ));
        }
    }
    Ok(())
}

/// A usage error printed with the usage line of `subcommand`.
fn usage_error(subcommand: &str, msg: &str) -> clap::Error {
    let mut cmd = Cli::command();
    cmd.build();
    match cmd.find_subcommand_mut(subcommand) {
        Some(sub) => sub.error(ErrorKind::ArgumentConflict, msg),
        None => cmd.error(ErrorKind::ArgumentConflict, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut v = vec!["mq-client"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
    }

    fn producer(args: &[&str]) -> ProducerArgs {
        let mut v = vec!["producer"];
        v.extend_from_slice(args);
        match parse(&v).unwrap().command {
            Command::Producer(p) => p,
            other => panic!("not a producer: {other:?}"),
        }
    }

    fn consumer(args: &[&str]) -> ConsumerArgs {
        let mut v = vec!["consumer"];
        v.extend_from_slice(args);
        match parse(&v).unwrap().command {
            Command::Consumer(c) => c,
            other => panic!("not a consumer: {other:?}"),
        }
    }

    fn perf(args: &[&str]) -> PerfArgs {
        let mut v = vec!["perf"];
        v.extend_from_slice(args);
        match parse(&v).unwrap().command {
            Command::Perf(p) => p,
            other => panic!("not perf: {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn producer_defaults() {
        let p = producer(&[]);
        assert_eq!(
            p.common.connection.broker_url,
            "tcp://localhost:61613".parse::<BrokerUrl>().unwrap()
        );
        assert_eq!(p.common.destination, Destination::Queue("TEST".into()));
        assert_eq!(p.common.connection.user, None);
        assert_eq!(p.common.connection.client_id, None);
        assert!(!p.common.json);
        assert_eq!(p.count, 100);
        assert_eq!(p.parallel_threads, 1);
        assert_eq!(p.sleep, 0);
        assert_eq!(p.size, 100);
        assert!(p.persistent);
        assert_eq!(p.batch_size, 0);
        assert_eq!(p.ttl, 0);
        assert_eq!(p.priority, None);
        assert!(p.receipts);
        assert_eq!(p.receipt_every, 100);
        assert_eq!(p.message, None);
        assert!(p.headers.is_empty());
    }

    #[test]
    fn producer_flags() {
        let p = producer(&[
            "--brokerUrl",
            "tcp://127.0.0.1:61614",
            "--user",
            "admin",
            "--password",
            "secret",
            "--destination",
            "topic://prices",
            "--count",
            "7",
            "--clientId",
            "me",
            "--parallelThreads",
            "3",
            "--json",
            "--zk",
            "localhost:2181",
            "--sleep",
            "5",
            "--size",
            "42",
            "--persistent",
            "false",
            "--batchSize",
            "10",
            "--ttl",
            "60000",
            "--priority",
            "9",
            "--receipts",
            "false",
            "--receiptEvery",
            "50",
            "--message",
            "hello",
            "--header",
            "a=1",
            "--header",
            "b=x=y",
        ]);
        assert_eq!(
            p.common.connection.broker_url,
            "tcp://127.0.0.1:61614".parse::<BrokerUrl>().unwrap()
        );
        assert_eq!(p.common.connection.user.as_deref(), Some("admin"));
        assert_eq!(p.common.connection.password.as_deref(), Some("secret"));
        assert_eq!(p.common.connection.client_id.as_deref(), Some("me"));
        assert_eq!(p.common.connection.zk.as_deref(), Some("localhost:2181"));
        assert_eq!(p.common.destination, Destination::Topic("prices".into()));
        assert!(p.common.json);
        assert_eq!(p.count, 7);
        assert_eq!(p.parallel_threads, 3);
        assert_eq!(p.sleep(), Duration::from_millis(5));
        assert_eq!(p.size, 42);
        assert!(!p.persistent);
        assert_eq!(p.batch_size, 10);
        assert_eq!(p.ttl, 60_000);
        assert_eq!(p.priority, Some(9));
        assert!(!p.receipts);
        assert_eq!(p.receipt_every, 50);
        assert_eq!(p.message.as_deref(), Some("hello"));
        assert_eq!(
            p.headers,
            vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]
        );
    }

    #[test]
    fn boolean_flags_take_values_or_mean_true() {
        assert!(!producer(&["--persistent", "false"]).persistent);
        assert!(!producer(&["--persistent=false"]).persistent);
        assert!(producer(&["--persistent", "true"]).persistent);
        assert!(producer(&["--persistent"]).persistent);
        assert!(producer(&["--persistent", "--count", "3"]).persistent);
        assert!(!producer(&["--receipts", "false"]).receipts);
        assert!(!producer(&["--receipts", "no"]).receipts);
        assert!(!perf(&["--persistent", "false"]).persistent);
        assert!(parse(&["producer", "--persistent", "maybe"]).is_err());
    }

    #[test]
    fn ack_flag_maps_to_client_modes() {
        assert_eq!(AckMode::from(consumer(&[]).ack), AckMode::Auto);
        assert_eq!(
            AckMode::from(consumer(&["--ack", "auto"]).ack),
            AckMode::Auto
        );
        assert_eq!(
            AckMode::from(consumer(&["--ack", "client"]).ack),
            AckMode::Client
        );
        assert_eq!(
            AckMode::from(consumer(&["--ack", "individual"]).ack),
            AckMode::ClientIndividual
        );
        assert_eq!(
            AckMode::from(consumer(&["--ack", "client-individual"]).ack),
            AckMode::ClientIndividual
        );
        assert_eq!(
            AckMode::from(perf(&["--ack", "individual"]).ack),
            AckMode::ClientIndividual
        );
        let err = parse(&["consumer", "--ack", "sometimes"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn consumer_defaults() {
        let c = consumer(&[]);
        assert_eq!(c.count, 100);
        assert_eq!(c.parallel_threads, 1);
        assert_eq!(c.ack, AckArg::Auto);
        assert_eq!(c.timeout, 0);
        assert_eq!(c.prefetch, None);
        assert_eq!(c.sleep, 0);
        assert_eq!(c.batch_size, 0);
        assert_eq!(c.common.destination, Destination::Queue("TEST".into()));
        let c = consumer(&["--count", "0", "--timeout", "2000", "--prefetch", "10"]);
        assert_eq!((c.count, c.timeout, c.prefetch), (0, 2000, Some(10)));
    }

    #[test]
    fn browse_defaults() {
        let Command::Browse(b) = parse(&["browse"]).unwrap().command else {
            panic!("not browse")
        };
        assert_eq!(
            (b.count, b.timeout, b.prefetch, b.verbose),
            (0, 0, None, false)
        );
    }

    #[test]
    fn perf_defaults_and_flags() {
        let p = perf(&[]);
        assert_eq!(p.producers, 1);
        assert_eq!(p.consumers, 0);
        assert_eq!(p.count, 10_000);
        assert_eq!(p.size, 1024);
        assert!(p.persistent);
        assert_eq!(p.receipt_every, 1);
        assert_eq!(p.ack, AckArg::Auto);
        assert_eq!(p.prefetch, None);
        assert_eq!(p.warmup, 0);
        assert_eq!(p.duration, None);
        assert_eq!(p.timeout, 10_000);
        let p = perf(&[
            "--producers",
            "2",
            "--consumers",
            "3",
            "--receiptEvery",
            "100",
            "--duration",
            "1.5",
            "--warmup",
            "1000",
            "--prefetch",
            "500",
        ]);
        assert_eq!((p.producers, p.consumers, p.receipt_every), (2, 3, 100));
        assert_eq!(p.duration, Some(Duration::from_millis(1500)));
        assert_eq!((p.warmup, p.prefetch), (1000, Some(500)));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &["producer", "--count", "x"][..],
            &["producer", "--parallelThreads", "0"],
            &["producer", "--priority", "10"],
            &["producer", "--header", "novalue"],
            &["producer", "--header", "=v"],
            &["producer", "--brokerUrl", "http://x:1"],
            &["producer", "--destination", "nowhere"],
            &["producer", "--nosuchflag"],
            &["perf", "--duration", "0"],
            &["perf", "--duration", "-3"],
            &["frobnicate"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} should not parse"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn cross_flag_validation() {
        let cli = parse(&["perf", "--producers", "0", "--consumers", "0"]).unwrap();
        let err = validate(&cli).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            validate(&parse(&["perf", "--producers", "0", "--consumers", "1"]).unwrap()).is_ok()
        );
        assert!(validate(&parse(&["producer"]).unwrap()).is_ok());
    }

    #[test]
    fn broker_url_accepts_every_form() {
        let p = producer(&["--brokerUrl", "failover:(tcp://a:1,tcp://b:2)?timeout=5000"]);
        let url = p.common.connection.effective_url().unwrap();
        assert!(matches!(&url, BrokerUrl::Failover { urls, .. } if urls.len() == 2));
        assert_eq!(
            url.options().unwrap().timeout,
            Some(Duration::from_millis(5000))
        );
        let p = producer(&["--brokerUrl", "stomp://127.0.0.1:61614"]);
        assert!(!p.common.connection.broker_url.is_failover());
        let c = consumer(&["--brokerUrl", "discovery:fabric:default?zk=zk1:2181"]);
        assert!(matches!(
            c.common.connection.effective_url().unwrap(),
            BrokerUrl::Discovery { zk: Some(z), .. } if z == "zk1:2181"
        ));
        // Bad URLs are usage errors that name the bad part.
        let err = parse(&["producer", "--brokerUrl", "failover:(tcp://a:1)?nosuch=1"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("nosuch"), "{err}");
    }

    #[test]
    fn zk_flag_completes_discovery_urls() {
        let p = producer(&[
            "--brokerUrl",
            "discovery:fabric:default",
            "--zk",
            "zk9:2181",
        ]);
        assert!(validate(&Cli {
            command: Command::Producer(p.clone())
        })
        .is_ok());
        match p.common.connection.effective_url().unwrap() {
            BrokerUrl::Discovery { group, zk, .. } => {
                assert_eq!(group, "default");
                assert_eq!(zk.as_deref(), Some("zk9:2181"));
            }
            other => panic!("not discovery: {other:?}"),
        }
        // A zk= in the URL wins over --zk.
        let p = producer(&[
            "--brokerUrl",
            "discovery:fabric:default?zk=inurl:2181",
            "--zk",
            "flag:2181",
        ]);
        assert!(matches!(
            p.common.connection.effective_url().unwrap(),
            BrokerUrl::Discovery { zk: Some(z), .. } if z == "inurl:2181"
        ));
        // --zk is ignored by the other URL forms.
        let p = producer(&["--brokerUrl", "tcp://h:1", "--zk", "zk:2181"]);
        assert_eq!(
            p.common.connection.effective_url().unwrap(),
            "tcp://h:1".parse::<BrokerUrl>().unwrap()
        );
    }

    #[test]
    fn zk_flag_reads_fabric_zk() {
        let cmd = Cli::command();
        for sub in ["producer", "consumer", "browse", "perf"] {
            let zk = cmd
                .find_subcommand(sub)
                .and_then(|s| s.get_arguments().find(|a| a.get_id() == "zk"))
                .unwrap_or_else(|| panic!("{sub} has --zk"));
            assert_eq!(zk.get_env().and_then(|e| e.to_str()), Some("FABRIC_ZK"));
        }
    }

    #[test]
    fn discovery_without_zookeeper_is_a_usage_error() {
        // FABRIC_ZK may be set where the tests run: clear what it filled in.
        for sub in ["producer", "consumer", "browse", "perf"] {
            let mut cli = parse(&[sub, "--brokerUrl", "discovery:fabric:default"]).unwrap();
            match &mut cli.command {
                Command::Producer(a) => a.common.connection.zk = None,
                Command::Consumer(a) => a.common.connection.zk = None,
                Command::Browse(a) => a.common.connection.zk = None,
                Command::Perf(a) => a.common.connection.zk = None,
            }
            let err = validate(&cli).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            assert!(
                text.contains("--zk") && text.contains("FABRIC_ZK") && text.contains("zk="),
                "{text}"
            );
            assert!(text.contains(sub), "usage of {sub}: {text}");
        }
        let mut p = producer(&["--brokerUrl", "discovery:fabric:default"]);
        p.common.connection.zk = None;
        let msg = p.common.connection.effective_url().unwrap_err();
        assert!(msg.contains("discovery:fabric:default"), "{msg}");
    }

    #[test]
    fn failover_report_flag() {
        assert!(!perf(&[]).failover_report);
        assert!(perf(&["--failover-report"]).failover_report);
    }

    #[test]
    fn header_parser() {
        assert_eq!(parse_header("k=v"), Ok(("k".into(), "v".into())));
        assert_eq!(parse_header("k="), Ok(("k".into(), String::new())));
        assert_eq!(parse_header("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert!(parse_header("k").is_err());
        assert!(parse_header(" =v").is_err());
    }

    #[test]
    fn password_is_not_debug_printed() {
        let p = producer(&["--password", "hunter2"]);
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }
}

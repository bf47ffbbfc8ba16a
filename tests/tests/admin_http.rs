//! The broker's HTTP admin endpoint (`/metrics`, `/health`, `/status`) on real `mq-broker`
//! processes: the exposition follows the OpenMetrics text grammar, counters move as messages
//! flow, `/health` answers 200 only on the serving master and flips to the slave that takes over
//! when the master is killed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::process::{free_port, BrokerOptions, BrokerProcess};
use fabricmq_tests::raw::Raw;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod fabric_common;

use fabric_common::*;

// ---- a plain HTTP/1.1 GET over a TcpStream (no client library) ----

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {addr}: no answer within 5s"))
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let text = String::from_utf8(buf).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    let headers = head.to_ascii_lowercase();
    let body = if headers.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

// ---- the OpenMetrics text grammar, checked line by line ----

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s.parse().ok(),
        _ => None,
    }
}

/// Parses one sample line: `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value: {line:?}"))?;
    let name = &line[..end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let key = &rest[..eq];
            if !is_label_name(key) {
                return Err(format!("bad label name {key:?} in {line:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c} in {line:?}")),
                    },
                    (_, c) => value.push(c),
                }
            };
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} twice in {line:?}"));
            }
            rest = &rest[close + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err(format!("expected , or }} in {line:?}"));
            }
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before the value: {line:?}"))?;
    let mut parts = rest.split(' ');
    let value = parts
        .next()
        .and_then(parse_value)
        .ok_or_else(|| format!("bad value in {line:?}"))?;
    if let Some(ts) = parts.next() {
        parse_value(ts).ok_or_else(|| format!("bad timestamp in {line:?}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("trailing text in {line:?}"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Checks a whole exposition against the OpenMetrics text format (what Prometheus parses when
/// it asks for `application/openmetrics-text`) and returns its samples.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let body = text
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("exposition does not end with # EOF:\n{text}"));
    let mut families: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap_or_default();
            let name = parts.next().unwrap_or_default();
            assert!(is_metric_name(name), "bad family name in {line:?}");
            match kw {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or_default();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "gaugehistogram",
                            "summary",
                            "info",
                            "stateset",
                            "unknown"
                        ]
                        .contains(&t),
                        "unknown type in {line:?}"
                    );
                    assert!(
                        families.insert(name.to_string(), t.to_string()).is_none(),
                        "family {name} declared twice"
                    );
                }
                _ => panic!("unknown descriptor line {line:?}"),
            }
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "comment not allowed in OpenMetrics: {line:?}"
        );
        let s = parse_sample(line).unwrap_or_else(|e| panic!("{e}"));
        // The sample must belong to a declared family, with the suffixes its type allows.
        let ok = families.iter().any(|(fam, t)| {
            let suffixes: &[&str] = match t.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            suffixes.iter().any(|suf| s.name == format!("{fam}{suf}"))
        });
        assert!(ok, "sample {} belongs to no declared family", s.name);
        samples.push(s);
    }
    check_histograms(&samples);
    samples
}

/// Buckets are cumulative, `le` ascending, and `+Inf` equals `_count`.
fn check_histograms(samples: &[Sample]) {
    // (family, labels without `le`) -> [(le, cumulative count)]
    type Series = BTreeMap<(String, BTreeMap<String, String>), Vec<(f64, f64)>>;
    let mut series = Series::new();
    for s in samples {
        if let Some(fam) = s.name.strip_suffix("_bucket") {
            let mut labels = s.labels.clone();
            let le = labels.remove("le").expect("bucket without le");
            let le = parse_value(&le).expect("numeric le");
            series
                .entry((fam.to_string(), labels))
                .or_default()
                .push((le, s.value));
        }
    }
    for ((fam, labels), buckets) in series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{fam}{labels:?}: buckets not ascending and cumulative: {buckets:?}"
        );
        let last = buckets.last().expect("buckets");
        assert_eq!(last.0, f64::INFINITY, "{fam}: no +Inf bucket");
        let count = samples
            .iter()
            .find(|s| s.name == format!("{fam}_count") && s.labels == labels)
            .unwrap_or_else(|| panic!("{fam}{labels:?}: no _count"));
        assert_eq!(last.1, count.value, "{fam}{labels:?}: +Inf != _count");
    }
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        r.headers
    );
    parse_exposition(&r.body)
}

/// Scrapes until `cond` holds (counters are read from atomics the connection tasks update just
/// after a receipt or an ack); fails after 10 s showing the last scrape.
async fn scrape_until(addr: SocketAddr, what: &str, cond: impl Fn(&[Sample]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(addr).await;
        if cond(&samples) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached; last scrape:\n{samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status_json(addr: SocketAddr) -> serde_json::Value {
    let r = get(addr, "/status").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.contains("content-type: application/json"));
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// Polls `/health` until it answers `code`; returns the body.
async fn wait_health(addr: SocketAddr, code: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let r = get(addr, "/health").await;
        if r.status == code {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "/health on {addr} still {} ({:?}) after {timeout:?}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const ADMIN_ANY_PORT: [&str; 2] = ["--admin-listen", "127.0.0.1:0"];

#[tokio::test]
async fn standalone_metrics_parse_and_counters_follow_the_messages() {
    let b = BrokerProcess::start(BrokerOptions {
        args: ADMIN_ANY_PORT.map(String::from).to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let admin = b
        .admin_addr()
        .expect("the ready file names the admin address");
    assert!(admin.ip().is_loopback() && admin.port() != 0, "{admin}");

    // /health and /status of a serving standalone broker.
    let r = get(admin, "/health").await;
    assert_eq!((r.status, r.body.as_str()), (200, "standalone\n"));
    let st = status_json(admin).await;
    assert_eq!(st["mode"], "standalone");
    assert_eq!(st["role"], "standalone");
    assert_eq!(st["serving"], true);
    assert_eq!(st["services"][0], format!("stomp://{}", b.addr));
    assert_eq!(st["admin"], admin.to_string());
    assert_eq!(st["pid"].as_u64(), b.pid().map(u64::from));
    assert_eq!(st["connections"]["open"], 0);
    assert!(st["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(get(admin, "/nothing").await.status, 404);

    let samples = scrape(admin).await;
    assert_eq!(
        value(&samples, "fabricmq_role", &[("role", "standalone")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "fabricmq_role", &[("role", "master")]),
        Some(0.0)
    );
    assert_eq!(value(&samples, "fabricmq_serving", &[]), Some(1.0));
    assert_eq!(value(&samples, "fabricmq_epoch", &[]), Some(0.0));
    assert_eq!(value(&samples, "fabricmq_connections_open", &[]), Some(0.0));
    assert!(value(&samples, "fabricmq_build_info", &[]).is_some());
    assert!(
        value(&samples, "fabricmq_zookeeper_session_state", &[]).is_none(),
        "no ZooKeeper state for a standalone broker"
    );

    // A refused login is counted.
    let mut bad = Raw::open(b.addr).await;
    bad.send(
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", "localhost")
            .header("login", "admin")
            .header("passcode", "wrong"),
    )
    .await;
    assert_eq!(bad.expect(Command::Error).await.command, Command::Error);
    scrape_until(admin, "auth failure counted", |s| {
        value(s, "fabricmq_auth_failures_total", &[]) == Some(1.0)
    })
    .await;

    // N persistent messages, each receipted (so journaled and fsynced).
    const N: usize = 40;
    const SIZE: usize = 100;
    let dest = "/queue/admin.flow";
    let q = [("destination", dest), ("type", "queue")];
    let mut p = Raw::connect(b.addr, "admin", "admin").await;
    for i in 0..N {
        p.send(
            Frame::new(Command::Send)
                .header("destination", dest)
                .header("receipt", format!("r{i}"))
                .with_body(format!("{i:0SIZE$}")),
        )
        .await;
    }
    for _ in 0..N {
        p.expect(Command::Receipt).await;
    }
    scrape_until(admin, "N messages in", |s| {
        value(s, "fabricmq_messages_in_total", &q) == Some(N as f64)
            && value(s, "fabricmq_queue_messages", &q) == Some(N as f64)
            && value(s, "fabricmq_queue_bytes", &q) == Some((N * SIZE) as f64)
    })
    .await;
    let s = scrape(admin).await;
    assert_eq!(value(&s, "fabricmq_messages_out_total", &q), Some(0.0));
    assert_eq!(value(&s, "fabricmq_connections_open", &[]), Some(1.0));
    assert!(value(&s, "fabricmq_connections_total", &[]).unwrap() >= 2.0);
    let journal = [("store", "journal")];
    assert!(value(&s, "fabricmq_journal_records_total", &journal).unwrap() >= N as f64);
    assert!(
        value(&s, "fabricmq_journal_written_bytes_total", &journal).unwrap() > (N * SIZE) as f64
    );
    let fsyncs = value(&s, "fabricmq_journal_fsyncs_total", &journal).unwrap();
    assert!(fsyncs >= 1.0);
    // Every group commit of a receipted send is timed and its batch size recorded.
    let timed = value(&s, "fabricmq_journal_fsync_seconds_count", &journal).unwrap();
    assert!(timed >= 1.0 && timed <= fsyncs, "{timed} of {fsyncs}");
    assert!(value(&s, "fabricmq_journal_fsync_seconds_sum", &journal).unwrap() > 0.0);
    let batched = value(&s, "fabricmq_journal_batch_records_sum", &journal).unwrap();
    let records = value(&s, "fabricmq_journal_records_total", &journal).unwrap();
    assert!(
        batched >= N as f64 && batched <= records,
        "records made durable by counted fsyncs: {batched} of {records}"
    );

    // Consume them all with acknowledgements: out and acked move by N, the queue empties.
    let got = drain(b.addr, dest, N).await;
    assert_eq!(got.len(), N);
    scrape_until(admin, "N messages out and acknowledged", |s| {
        value(s, "fabricmq_messages_out_total", &q) == Some(N as f64)
            && value(s, "fabricmq_messages_acked_total", &q) == Some(N as f64)
            && value(s, "fabricmq_queue_messages", &q) == Some(0.0)
            && value(s, "fabricmq_queue_bytes", &q) == Some(0.0)
    })
    .await;
    let s = scrape(admin).await;
    assert_eq!(value(&s, "fabricmq_messages_in_total", &q), Some(N as f64));
    assert_eq!(
        value(&s, "fabricmq_messages_redelivered_total", &q),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "fabricmq_messages_dead_lettered_total", &q),
        Some(0.0)
    );
    b.assert_no_panic();
}

#[tokio::test]
async fn admin_endpoint_can_be_disabled_and_a_configured_port_must_bind() {
    let b = BrokerProcess::start(BrokerOptions {
        args: vec!["--no-admin".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(b.admin_addr(), None);
    drop(b);

    // An address the operator chose that cannot be bound stops the start-up with a clear error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = BrokerProcess::start(BrokerOptions {
        args: vec!["--admin-listen".into(), addr.to_string()],
        ..Default::default()
    })
    .await
    .err()
    .expect("the broker must not start without its configured admin endpoint");
    let text = format!("{err:#}");
    assert!(
        text.contains("admin") && text.contains(&addr.to_string()),
        "{text}"
    );
}

/// A group whose containers serve their admin endpoint on free ports.
async fn admin_group(n: usize) -> Group {
    let mut g = Group {
        zk: zk().chroot_connect(),
        name: "default".into(),
        data: tempfile::tempdir().unwrap(),
        brokers: Vec::new(),
        ports: Vec::new(),
        session: SESSION.into(),
    };
    for i in 0..n {
        let port = free_port();
        g.ports.push(port);
        let b = BrokerProcess::start(BrokerOptions {
            data_dir: Some(g.data.path().to_path_buf()),
            listen: Some(format!("stomp://127.0.0.1:{port}")),
            fabric: Some((g.zk.clone(), g.name.clone(), format!("broker{}", i + 1))),
            args: [
                "--session-timeout",
                SESSION,
                "--admin-listen",
                "127.0.0.1:0",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        g.brokers.push(b);
    }
    g
}

#[tokio::test]
async fn health_follows_the_master_through_a_failover() {
    let _serial = SERIAL.lock().await;
    let mut g = admin_group(2).await;
    let m = g.master(Duration::from_secs(20)).await;
    let s = 1 - m;
    let master_admin = g.brokers[m].admin_addr().expect("master admin address");
    let slave_admin = g.brokers[s].admin_addr().expect("slave admin address");
    assert_ne!(master_admin, slave_admin);

    // The master answers 200, the slave 503.
    let body = wait_health(master_admin, 200, Duration::from_secs(10)).await;
    let first_epoch = g.brokers[m].state().and_then(|s| s.2).expect("epoch");
    assert_eq!(body, format!("master epoch {first_epoch}\n"));
    let body = wait_health(slave_admin, 503, Duration::from_secs(10)).await;
    assert!(body == "slave\n" || body == "connecting\n", "{body:?}");

    let st = status_json(master_admin).await;
    assert_eq!(st["mode"], "fabric");
    assert_eq!(st["role"], "master");
    assert_eq!(st["serving"], true);
    assert_eq!(st["epoch"].as_u64(), Some(first_epoch));
    assert_eq!(st["container"], format!("broker{}", m + 1));
    assert_eq!(st["group"], "default");
    assert_eq!(
        st["services"][0],
        format!("stomp://127.0.0.1:{}", g.ports[m])
    );
    assert_eq!(st["zookeeper"], "connected");
    assert_eq!(st["master_terms"], 1);
    assert!(st["master_since"].as_u64().is_some());
    let st = status_json(slave_admin).await;
    assert_eq!(st["role"], "slave");
    assert_eq!(st["serving"], false);
    assert_eq!(st["epoch"], serde_json::Value::Null);
    assert_eq!(st["master_terms"], 0);

    let ms = scrape(master_admin).await;
    assert_eq!(
        value(&ms, "fabricmq_role", &[("role", "master")]),
        Some(1.0)
    );
    assert_eq!(value(&ms, "fabricmq_epoch", &[]), Some(first_epoch as f64));
    assert_eq!(value(&ms, "fabricmq_master_terms_total", &[]), Some(1.0));
    assert_eq!(
        value(
            &ms,
            "fabricmq_zookeeper_session_state",
            &[("state", "connected")]
        ),
        Some(1.0)
    );
    let ss = scrape(slave_admin).await;
    assert_eq!(value(&ss, "fabricmq_role", &[("role", "slave")]), Some(1.0));
    assert_eq!(value(&ss, "fabricmq_serving", &[]), Some(0.0));
    assert_eq!(value(&ss, "fabricmq_master_terms_total", &[]), Some(0.0));
    assert!(
        value(&ss, "fabricmq_connections_open", &[]).is_none(),
        "a slave serves no broker"
    );

    // Messages on the master survive in the shared store.
    const N: usize = 10;
    let dest = "/queue/admin.failover";
    put_many(g.brokers[m].master_addr().unwrap(), dest, "m", N).await;

    // Kill the master: the slave takes over and its /health turns 200.
    g.brokers[m].kill();
    let body = wait_health(slave_admin, 200, Duration::from_secs(20)).await;
    let st = status_json(slave_admin).await;
    let epoch = st["epoch"].as_u64().expect("epoch");
    assert!(epoch > first_epoch, "{epoch} after {first_epoch}");
    assert_eq!(body, format!("master epoch {epoch}\n"));
    assert_eq!(st["role"], "master");
    assert_eq!(st["master_terms"], 1);
    assert_eq!(
        st["services"][0],
        format!("stomp://127.0.0.1:{}", g.ports[s])
    );
    let q = [("destination", dest), ("type", "queue")];
    scrape_until(
        slave_admin,
        "the new master serves the recovered queue",
        |x| {
            value(x, "fabricmq_role", &[("role", "master")]) == Some(1.0)
                && value(x, "fabricmq_epoch", &[]) == Some(epoch as f64)
                && value(x, "fabricmq_queue_messages", &q) == Some(N as f64)
        },
    )
    .await;
    g.no_panics();
}

/// Issue 10, item 7: held admin connections used to take every descriptor of the broker (20,000
/// of them: STOMP clients refused with "Too many open files", `/health` timing out). Now the
/// admin endpoint holds at most `admin.max_connections` (default 64), refuses more at once with a
/// 503 naming the key, and closes a connection whose request header does not arrive within
/// `admin.header_read_timeout` (default 5 s). The broker's open-file limit is lowered to 256 so
/// that 300 held connections would exhaust it.
#[tokio::test]
async fn a_flood_of_admin_connections_leaves_stomp_clients_and_health_working() {
    const FD_LIMIT: usize = 256;
    const HELD: usize = 300;
    const CAP: usize = 64; // admin.max_connections's default
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broker.toml");
    std::fs::write(&cfg, "[limits]\nmax_connections = 100\n").unwrap();
    let mut args: Vec<String> = ADMIN_ANY_PORT.iter().map(|s| s.to_string()).collect();
    args.extend(["--config".into(), cfg.display().to_string()]);
    let b = BrokerProcess::start(BrokerOptions {
        args,
        ..Default::default()
    })
    .await
    .unwrap();
    let admin = b.admin_addr().expect("admin endpoint");
    let pid = b.pid().unwrap();
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={FD_LIMIT}:{FD_LIMIT}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success(), "prlimit failed");

    // HELD connections, each with a partial request header (no blank line: never complete).
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for _ in 0..HELD {
        let mut s = TcpStream::connect(admin).await.unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
        let tx = closed_tx.clone();
        tokio::spawn(async move {
            // Whatever the broker says before it closes (a 503 for the refused ones).
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
    }
    drop(closed_tx);
    // Those beyond the cap are refused at once, naming the limit.
    let mut refused = 0;
    let mut named = 0;
    while refused < HELD - CAP {
        let text = tokio::time::timeout(Duration::from_secs(30), closed_rx.recv())
            .await
            .expect("connections beyond admin.max_connections are refused at once")
            .expect("a closed connection");
        refused += 1;
        named += usize::from(text.contains("admin.max_connections"));
    }
    assert!(named > 0, "no refusal named admin.max_connections");

    // STOMP clients still get in (the admin endpoint cannot take their descriptors).
    let mut c = Raw::connect(b.addr, "admin", "admin").await;
    c.put("/queue/while.flooded", "hello", &[]).await;

    // A new /health request is answered at once: refused naming the cap, or served.
    let r = get(admin, "/health").await;
    assert!(
        r.status == 200 || (r.status == 503 && r.body.contains("admin.max_connections")),
        "{} {}",
        r.status,
        r.body
    );

    // The held connections never complete their header: closed after the header-read timeout.
    while refused < HELD {
        tokio::time::timeout(Duration::from_secs(60), closed_rx.recv())
            .await
            .expect("a connection with a partial header is closed after admin.header_read_timeout")
            .expect("a closed connection");
        refused += 1;
    }
    wait_health(admin, 200, Duration::from_secs(10)).await;
    let s = scrape(admin).await;
    assert!(
        value(&s, "fabricmq_admin_connections_refused_total", &[]).unwrap_or(0.0)
            >= (HELD - CAP) as f64,
        "{s:#?}"
    );
    assert!(
        value(&s, "fabricmq_admin_header_timeouts_total", &[]).unwrap_or(0.0) >= 1.0,
        "{s:#?}"
    );
    scrape_until(admin, "only the scrape itself open", |s| {
        value(s, "fabricmq_admin_connections_open", &[]) == Some(1.0)
    })
    .await;
    b.assert_no_panic();
}

//! Measurements for issue 10 items 1, 2 and the producer-id part of 6, against a real broker
//! process (ignored: run them with `tools/bench/producer_probes.sh`, release binaries). They print
//! figures; the pass/fail properties are in `producer_identity.rs`.

use std::time::{Duration, Instant};

use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::process::{BrokerOptions, BrokerProcess};
use fabricmq_tests::procfs;
use fabricmq_tests::raw::Raw;

/// `VmRSS` and `VmHWM` (peak) of a process.
fn rss_mib(pid: u32) -> String {
    let kib = |key| procfs::status_kib(pid, key).unwrap_or(0);
    format!(
        "{} (peak {})",
        procfs::mib(kib("VmRSS")),
        procfs::mib(kib("VmHWM"))
    )
}

/// Segment files and their bytes under a data directory's journal.
fn journal_size(b: &BrokerProcess) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(b.data_dir.join("journal"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("journal-") && name.ends_with(".log") {
            n += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (n, bytes)
}

/// Sends `n` persistent messages to `dest`, message `i` with producer id `id(i)`, pipelined with
/// a receipt every `every` messages (and on the last); returns the messages receipted.
async fn pipelined(c: &mut Raw, dest: &str, n: u64, every: u64, id: impl Fn(u64) -> String) -> u64 {
    let mut outstanding = 0u64;
    let mut receipted = 0u64;
    for i in 0..n {
        let mut f = Frame::new(Command::Send)
            .header("destination", dest)
            .header("persistent", "true")
            .header("producer-id", id(i))
            .header("producer-seq", "1")
            .with_body(format!("m{i}"));
        let last = i + 1 == n;
        if (i + 1) % every == 0 || last {
            f.push("receipt", format!("r{i}"));
            outstanding += 1;
        }
        c.send(f).await;
        while outstanding > 4 || (last && outstanding > 0) {
            let r = c.expect(Command::Receipt).await;
            outstanding -= 1;
            let upto: u64 = r.get("receipt-id").unwrap()[1..].parse().unwrap();
            receipted = upto + 1;
        }
    }
    receipted
}

/// Messages on a queue, counted by consuming them all (auto ack) until `want` arrived or a
/// receipt round trip shows no more are coming.
async fn count(b: &BrokerProcess, dest: &str, want: u64) -> u64 {
    let mut c = Raw::connect(b.addr, "admin", "admin").await;
    c.subscribe("s", dest, "auto", &[]).await;
    let mut got = 0;
    while got < want {
        match c.recv_within(Duration::from_secs(10)).await {
            Some(f) if f.command == Command::Message => got += 1,
            _ => break,
        }
    }
    got += c
        .barrier()
        .await
        .iter()
        .filter(|f| f.command == Command::Message)
        .count() as u64;
    got
}

/// Item 1: 19,600 producer ids (16 kB ones made a 313 MB table before the fix; the largest
/// `[producers] max_id_bytes` now allows is 4,096: PROBE_ID_BYTES, default 4,000), graceful
/// restarts, counting what recovery kept.
#[tokio::test]
#[ignore = "measurement: tools/bench/producer_probes.sh"]
async fn probe_item1_huge_producer_table_and_graceful_restarts() {
    let work = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let conf = work.path().join("broker.toml");
    // The old broker has no [producers] section: PROBE_OLD=1 leaves the file empty.
    let text = if std::env::var_os("PROBE_OLD").is_some() {
        String::new()
    } else {
        "[producers]\nmax_id_bytes = 4096\n".into()
    };
    std::fs::write(&conf, text).unwrap();
    let opts = || BrokerOptions {
        args: vec!["--config".into(), conf.display().to_string()],
        ..Default::default()
    };
    let id_bytes: usize = std::env::var("PROBE_ID_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let n: u64 = std::env::var("PROBE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(19_600);
    let mut b = BrokerProcess::start_in(work.clone(), opts()).await.unwrap();
    let mut c = Raw::connect(b.addr, "admin", "admin").await;
    let t = Instant::now();
    let receipted = pipelined(&mut c, "/queue/item1", n, 100, |i| {
        format!("{i:0>id_bytes$}")
    })
    .await;
    drop(c);
    let (segs, bytes) = journal_size(&b);
    println!(
        "item1: {receipted} of {n} receipted in {:.1} s; {segs} segments, {:.0} MB on disk; RSS {}",
        t.elapsed().as_secs_f64(),
        bytes as f64 / 1e6,
        rss_mib(b.pid().unwrap())
    );
    for round in 1..=3 {
        assert_eq!(
            b.terminate(Duration::from_secs(120)).await.unwrap(),
            Some(0)
        );
        let t = Instant::now();
        b = BrokerProcess::start_in(work.clone(), opts()).await.unwrap();
        let start = t.elapsed();
        let log = b.log_text();
        let torn = log.contains("torn");
        println!(
            "item1 restart {round}: listening after {:.2} s; 'torn' in log: {torn}; RSS {}",
            start.as_secs_f64(),
            rss_mib(b.pid().unwrap())
        );
    }
    let got = count(&b, "/queue/item1", receipted).await;
    println!("item1: {got} messages recovered of {receipted} receipted after 3 graceful restarts");
}

/// Item 6 (producer ids): 300,000 distinct producer ids from one user, sent to a topic nobody
/// subscribes to (so only the de-duplication table can grow); ids of PROBE_ID_BYTES (default
/// 256, the most `[producers] max_id_bytes` allows by default). RSS and a well-behaved client's
/// receipted round trip meanwhile.
#[tokio::test]
#[ignore = "measurement: tools/bench/producer_probes.sh"]
async fn probe_item6_300k_producer_ids() {
    let id_bytes: usize = std::env::var("PROBE_ID_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let pid = b.pid().unwrap();
    println!("item6: RSS before {}", rss_mib(pid));
    let addr = b.addr;
    let attack = tokio::spawn(async move {
        let mut c = Raw::connect(addr, "admin", "admin").await;
        let t = Instant::now();
        let r = pipelined(&mut c, "/topic/ids", 300_000, 1000, |i| {
            format!("{i:0>id_bytes$}")
        })
        .await;
        (r, t.elapsed())
    });
    let mut good = Raw::connect(addr, "admin", "admin").await;
    let mut rtts = Vec::new();
    while !attack.is_finished() {
        let t = Instant::now();
        good.put("/queue/good", "x", &[]).await;
        rtts.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (receipted, took) = attack.await.unwrap();
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
    println!(
        "item6: {receipted} sends with distinct ids in {:.1} s; RSS {}; good client round trip p50 {:?} p99 {:?} max {:?} ({} samples)",
        took.as_secs_f64(),
        rss_mib(pid),
        pct(0.5),
        pct(0.99),
        rtts.last().unwrap(),
        rtts.len()
    );
}

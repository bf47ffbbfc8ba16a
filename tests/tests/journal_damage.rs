//! Journal damage (issue 5, item 4): random bit flips, truncations and zero-filled ranges in the
//! segment files of a real broker's journal. After the damage the broker either refuses to start
//! naming the file and offset (and then starts with `--salvage`), or starts; it never panics and
//! never serves a message that was not sent, an altered one, a duplicate or one out of order.
//! Damage confined to the last segment must cost exactly the records from the damaged one on.
//!
//! The seed is printed; `DAMAGE_SEED` (decimal or `0x` hex) overrides it, `DAMAGE_CASES` the
//! number of cases.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::process::{BrokerOptions, BrokerProcess};
use fabricmq_tests::raw::Raw;

const N: usize = 300;
const BODY_BYTES: usize = 8 * 1024;
const DEST: &str = "/queue/damage";
const DEFAULT_SEED: u64 = 0x00D4_3A6E_5EED_0001;
const DEFAULT_CASES: usize = 30;

/// xorshift64* (no dependencies; deterministic per seed).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn marker(i: usize) -> String {
    format!("<<DMG{i:06}>>")
}

/// Body of message `i`: its marker, then filler derived from `i` (never forms a marker).
fn make_body(i: usize) -> String {
    let mut s = marker(i);
    let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut k = i.wrapping_mul(2_654_435_761) as u64 | 1;
    while s.len() < BODY_BYTES {
        k ^= k << 13;
        k ^= k >> 7;
        k ^= k << 17;
        s.push(alphabet[(k % alphabet.len() as u64) as usize] as char);
    }
    s
}

/// Index encoded in a body, if it parses.
fn parse_index(body: &str) -> Option<usize> {
    let rest = body.strip_prefix("<<DMG")?;
    let digits = rest.get(..6)?;
    if !rest[6..].starts_with(">>") {
        return None;
    }
    digits.parse().ok()
}

fn persistent(i: usize) -> Frame {
    Frame::new(Command::Send)
        .header("destination", DEST)
        .header("persistent", "true")
        .header("receipt", format!("r{i}"))
        .with_body(make_body(i))
}

/// One record of a pristine segment: byte range and the message indices whose bodies it holds.
#[derive(Debug, Clone)]
struct Record {
    start: u64,
    end: u64,
    msgs: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Segment {
    name: String,
    bytes: Vec<u8>,
    records: Vec<Record>,
    /// End of the last record (the rest of the file, if any, is zero-filled space).
    data_end: u64,
}

fn find(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return Vec::new();
    }
    (0..=hay.len() - needle.len())
        .filter(|&p| &hay[p..p + needle.len()] == needle)
        .collect()
}

/// Walks the record chain of an undamaged segment (`len:u32 crc:u32 type:u8 payload[len]`).
fn parse_segment(name: String, bytes: Vec<u8>) -> Segment {
    let mut records = Vec::new();
    let mut off = 0usize;
    while off + 9 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap());
        if len == 0 && crc == 0 && bytes[off + 8] == 0 {
            break; // zero-filled tail
        }
        let end = off + 9 + len;
        assert!(
            end <= bytes.len(),
            "pristine {name} has a torn record at {off}"
        );
        let rec = &bytes[off..end];
        let msgs = find(rec, b"<<DMG")
            .into_iter()
            .filter_map(|p| std::str::from_utf8(&rec[p..(p + 13).min(rec.len())]).ok())
            .filter_map(parse_index)
            .collect();
        records.push(Record {
            start: off as u64,
            end: end as u64,
            msgs,
        });
        off = end;
    }
    assert!(
        bytes[off..].iter().all(|&b| b == 0),
        "pristine {name} has non-zero bytes after its records at {off}"
    );
    Segment {
        name,
        data_end: off as u64,
        bytes,
        records,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// XOR `mask` into the byte at `at` (mask != 0).
    Flip { at: u64, mask: u8 },
    /// Cut the file to `len` bytes.
    Truncate { len: u64 },
    /// Zero `len` bytes from `at`.
    Zero { at: u64, len: u64 },
}

fn apply(bytes: &[u8], d: Damage) -> Vec<u8> {
    let mut v = bytes.to_vec();
    match d {
        Damage::Flip { at, mask } => v[at as usize] ^= mask,
        Damage::Truncate { len } => v.truncate(len as usize),
        Damage::Zero { at, len } => {
            let end = ((at + len) as usize).min(v.len());
            v[at as usize..end].fill(0);
        }
    }
    v
}

/// An offset biased towards the record data (80%) rather than anywhere in the file.
fn pick_offset(rng: &mut Rng, seg: &Segment) -> u64 {
    let file_len = seg.bytes.len() as u64;
    if seg.data_end > 0 && rng.chance(80) {
        // Sometimes right at a record boundary or inside the first record's header.
        if rng.chance(15) {
            let r = &seg.records[rng.below(seg.records.len() as u64) as usize];
            return r.start + rng.below(9);
        }
        rng.below(seg.data_end)
    } else {
        rng.below(file_len)
    }
}

fn random_damage(rng: &mut Rng, seg: &Segment) -> Damage {
    let at = pick_offset(rng, seg);
    match rng.below(3) {
        0 => Damage::Flip {
            at,
            mask: 1u8 << rng.below(8) | (rng.below(2) as u8) << rng.below(8),
        },
        1 => Damage::Truncate { len: at },
        _ => {
            let max = if rng.chance(50) { 16 } else { 20_000 };
            Damage::Zero {
                at,
                len: 1 + rng.below(max),
            }
        }
    }
}

/// Drains `DEST` with client-individual acks until nothing more comes, returning the bodies.
async fn drain(addr: SocketAddr) -> Vec<String> {
    let mut c = Raw::connect(addr, "admin", "admin").await;
    c.subscribe("s", DEST, "client-individual", &[("prefetch", "1000")])
        .await;
    let mut got = Vec::new();
    let push = |f: &Frame, got: &mut Vec<String>| {
        assert_eq!(f.command, Command::Message, "{f:?}");
        got.push(String::from_utf8_lossy(&f.body).into_owned());
    };
    while let Some(m) = c.recv_within(Duration::from_millis(700)).await {
        push(&m, &mut got);
        c.ack(&m).await;
    }
    for f in c.barrier().await {
        push(&f, &mut got);
    }
    assert!(
        c.quiet_for(Duration::from_millis(150)).await,
        "unexpected extra frame"
    );
    got
}

/// Checks the drained bodies: only sent messages, unaltered, no duplicates, in send order.
/// Returns the indices.
fn check_bodies(got: &[String], ctx: &str) -> Vec<usize> {
    let mut idx = Vec::with_capacity(got.len());
    for b in got {
        let i = parse_index(b).unwrap_or_else(|| {
            panic!(
                "{ctx}: invented message (body starts {:?})",
                &b[..b.len().min(40)]
            )
        });
        assert!(i < N, "{ctx}: invented message index {i}");
        assert!(*b == make_body(i), "{ctx}: message {i} served altered");
        idx.push(i);
    }
    let set: HashSet<usize> = idx.iter().copied().collect();
    assert_eq!(set.len(), idx.len(), "{ctx}: duplicates served: {idx:?}");
    assert!(
        idx.windows(2).all(|w| w[0] < w[1]),
        "{ctx}: served out of send order: {idx:?}"
    );
    idx
}

/// Fills a fresh data dir with `N` receipted persistent messages and kills the broker (-9).
async fn fill(data: &Path, config: &Path) {
    let mut b = BrokerProcess::start(BrokerOptions {
        data_dir: Some(data.to_path_buf()),
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut p = Raw::connect(b.addr, "admin", "admin").await;
    for i in 0..N {
        p.send(persistent(i)).await;
        if i % 50 == 49 {
            // Keep the pipeline bounded.
            for j in i - 49..=i {
                let r = p.expect(Command::Receipt).await;
                assert_eq!(r.get("receipt-id"), Some(format!("r{j}").as_str()));
            }
        }
    }
    b.kill();
    b.assert_no_panic();
}

fn segments_of(journal: &Path) -> Vec<Segment> {
    let mut names: Vec<String> = std::fs::read_dir(journal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal-") && n.ends_with(".log"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let bytes = std::fs::read(journal.join(&n)).unwrap();
            parse_segment(n, bytes)
        })
        .collect()
}

fn first_changed(before: &[u8], after: &[u8]) -> Option<u64> {
    let common = before.len().min(after.len());
    (0..common)
        .find(|&k| before[k] != after[k])
        .or((after.len() < before.len()).then_some(common))
        .map(|k| k as u64)
}

fn parse_offset(log: &str) -> Option<u64> {
    let p = log.find("at offset ")? + "at offset ".len();
    let digits: String = log[p..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

struct Outcome {
    refused: bool,
    salvaged: Option<usize>,
    recovered: usize,
}

#[allow(clippy::too_many_arguments)]
async fn run_case(
    case: usize,
    seed: u64,
    pristine: &Path,
    config: &Path,
    segs: &[Segment],
    target: usize,
    damage: Damage,
) -> Outcome {
    let is_last = target == segs.len() - 1;
    let seg = &segs[target];
    let ctx = format!(
        "seed {seed:#x} case {case}: {damage:?} in {} ({} of {} segments, data end {}, file {} bytes)",
        seg.name,
        if is_last { "last" } else { "earlier" },
        segs.len(),
        seg.data_end,
        seg.bytes.len()
    );
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    copy_dir(pristine, &data);
    let file = data.join("journal").join(&seg.name);
    let damaged = apply(&seg.bytes, damage);
    std::fs::write(&file, &damaged).unwrap();

    // Where the damage begins and the record it lands in (`r`): every record ending at or before
    // `r` is intact; nothing from `r` on can pass a CRC check.
    let d = first_changed(&seg.bytes, &damaged);
    let r = match d {
        Some(d) if d < seg.data_end => seg
            .records
            .iter()
            .find(|rec| rec.start <= d && d < rec.end)
            .map(|rec| rec.start)
            .unwrap(),
        _ => seg.data_end,
    };
    // Recovery must report (warn) unless the damaged file is clean from `r` on (a record
    // boundary followed only by zeros or the end of file).
    let must_report = damaged[(r as usize).min(damaged.len())..]
        .iter()
        .any(|&b| b != 0);
    let mut intact: Vec<usize> = Vec::new();
    let mut lost_in_damaged: Vec<usize> = Vec::new();
    for (k, s) in segs.iter().enumerate() {
        for rec in &s.records {
            if k != target || rec.end <= r {
                intact.extend(&rec.msgs);
            } else {
                lost_in_damaged.extend(&rec.msgs);
            }
        }
    }
    intact.sort_unstable();
    let opts = |salvage: bool| BrokerOptions {
        data_dir: Some(data.clone()),
        args: {
            let mut a = vec!["--config".into(), config.display().to_string()];
            if salvage {
                a.push("--salvage".into());
            }
            a
        },
        ..Default::default()
    };
    let check_superset = |idx: &[usize], what: &str| {
        let got: HashSet<usize> = idx.iter().copied().collect();
        let missing: Vec<usize> = intact
            .iter()
            .copied()
            .filter(|i| !got.contains(i))
            .collect();
        assert!(
            missing.is_empty(),
            "{ctx}: {what}: intact messages lost: {missing:?} (recovered {})",
            idx.len()
        );
    };

    match BrokerProcess::start(opts(false)).await {
        Ok(b) => {
            let got = drain(b.addr).await;
            b.assert_no_panic();
            let log = b.log_text();
            let idx = check_bodies(&got, &ctx);
            check_superset(&idx, "started");
            // A sealed earlier segment with invalid bytes is corruption: refused, not started.
            // (Cut exactly at a record boundary it is indistinguishable from a shorter segment.)
            assert!(
                is_last || !must_report,
                "{ctx}: started although an earlier segment is damaged at {r}:\n{log}"
            );
            if is_last {
                // Scanning stops at the damaged record: exactly the records before it survive.
                assert_eq!(
                    idx, intact,
                    "{ctx}: last-segment recovery must keep exactly the records before offset {r} \
                     (lost there: {lost_in_damaged:?})"
                );
                if must_report {
                    assert!(
                        log.contains("cutting off torn or corrupt tail")
                            && log.contains(&seg.name)
                            && log.contains(&format!("offset={r}")),
                        "{ctx}: recovery did not report cutting the tail at {r}:\n{log}"
                    );
                }
            }
            drop(b);
            Outcome {
                refused: false,
                salvaged: None,
                recovered: idx.len(),
            }
        }
        Err(e) => {
            let log = format!("{e:#}");
            assert!(!log.contains("panicked"), "{ctx}: broker panicked:\n{log}");
            assert!(
                !is_last,
                "{ctx}: damage in the last segment must be cut off, not refused:\n{log}"
            );
            assert!(
                log.contains(&seg.name),
                "{ctx}: refusal does not name the damaged file:\n{log}"
            );
            let off = parse_offset(&log)
                .unwrap_or_else(|| panic!("{ctx}: refusal names no offset:\n{log}"));
            assert!(
                off <= d.unwrap_or(u64::MAX),
                "{ctx}: refusal names offset {off}, after the first damaged byte {d:?}:\n{log}"
            );
            let b = BrokerProcess::start(opts(true))
                .await
                .unwrap_or_else(|e| panic!("{ctx}: --salvage does not start: {e:#}"));
            let got = drain(b.addr).await;
            b.assert_no_panic();
            let idx = check_bodies(&got, &format!("{ctx} (salvage)"));
            check_superset(&idx, "salvaged");
            Outcome {
                refused: true,
                salvaged: Some(idx.len()),
                recovered: idx.len(),
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

#[tokio::test]
async fn random_journal_damage_never_panics_or_invents_messages() {
    let seed = env_u64("DAMAGE_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_u64("DAMAGE_CASES").map_or(DEFAULT_CASES, |c| c as usize);
    eprintln!("journal damage: seed {seed:#x} ({seed}), {cases} cases (DAMAGE_SEED overrides)");
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let config: PathBuf = work.path().join("broker.toml");
    std::fs::write(&config, "[journal]\nsegment_bytes = \"1MiB\"\n").unwrap();
    let pristine = work.path().join("data");
    fill(&pristine, &config).await;
    let segs = segments_of(&pristine.join("journal"));
    assert!(
        segs.len() >= 2,
        "expected several segments, got {}",
        segs.len()
    );
    let stored: usize = segs
        .iter()
        .flat_map(|s| &s.records)
        .map(|r| r.msgs.len())
        .sum();
    assert_eq!(stored, N, "every receipted message is in the journal once");
    for s in &segs {
        eprintln!(
            "  {}: {} bytes, data end {}, {} records",
            s.name,
            s.bytes.len(),
            s.data_end,
            s.records.len()
        );
    }

    let mut rng = Rng::new(seed);
    let (mut refused, mut started_ok) = (0, 0);
    for case in 0..cases {
        let target = if rng.chance(50) {
            segs.len() - 1
        } else {
            rng.below(segs.len() as u64 - 1) as usize
        };
        let damage = random_damage(&mut rng, &segs[target]);
        let t = Instant::now();
        let o = run_case(case, seed, &pristine, &config, &segs, target, damage).await;
        if o.refused {
            refused += 1;
        } else {
            started_ok += 1;
        }
        eprintln!(
            "  case {case:2}: {damage:?} in {}{}: {} -> recovered {} ({:?})",
            segs[target].name,
            if target == segs.len() - 1 {
                " (last)"
            } else {
                ""
            },
            if o.refused {
                "refused, salvaged"
            } else {
                "started"
            },
            o.salvaged.unwrap_or(o.recovered),
            t.elapsed()
        );
    }
    eprintln!(
        "journal damage: {cases} cases, {started_ok} started, {refused} refused (then salvaged), {:?}",
        started.elapsed()
    );
}

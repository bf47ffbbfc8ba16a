//! The short chaos variant run by CI: `mq-chaos run` with a fixed seed (a group of three real
//! brokers, a real ZooKeeper, every fault kind this machine supports, partitions included when
//! the test may create network namespaces), and a check that the runner leaves nothing behind,
//! also when it is interrupted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fabricmq_tests::process::binary;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The two runs are heavy (three brokers, ZooKeeper, eight clients on two cores): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The seed CI uses (any fixed value; the schedule it gives mixes every fault kind).
const SEED: &str = "20261122";

/// Namespaces and tmpfs mounts of the chaos runner with process id `pid`.
fn leftovers(pid: u32, work: Option<&str>) -> Vec<String> {
    let mut found = Vec::new();
    let tag = format!("fmqc{}-", pid % 100_000);
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with(&tag) {
                found.push(format!("namespace {line}"));
            }
        }
    }
    if let Some(work) = work {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        found.extend(
            mounts
                .lines()
                .filter(|l| l.contains(work))
                .map(|l| format!("mount {l}")),
        );
        if Path::new(work).exists() {
            found.push(format!("directory {work}"));
        }
        // Any process still running with the work directory on its command line (a broker).
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(work) {
                    found.push(format!("process {:?}", p.file_name()));
                }
            }
        }
    }
    found
}

/// The `work <dir>` the runner prints in its first line.
fn work_dir(line: &str) -> Option<String> {
    line.split(", work ").nth(1).map(|w| w.trim().to_owned())
}

#[test]
fn a_short_fixed_seed_chaos_run_loses_nothing_and_finds_no_split_brain() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let child = Command::new(binary("mq-chaos"))
        .args(["run", "--seed", SEED, "--duration", "50s", "--brokers", "3"])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("mq-chaos");
    let pid = child.id();
    let output = child.wait_with_output().expect("mq-chaos output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    println!("(mq-chaos took {:?})", started.elapsed());
    let work = stdout.lines().next().and_then(work_dir);
    assert!(
        output.status.success(),
        "the chaos run failed ({}); history in {}",
        output.status,
        out.path().display()
    );
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    // The history was written and checks the same when read back.
    let again = Command::new(binary("mq-chaos"))
        .arg("check")
        .arg(out.path().join("history.jsonl"))
        .output()
        .unwrap();
    assert!(again.status.success());
    // At least one fault of each kind the runner said it would use was injected.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    let faults = summary["faults"].as_object().expect("faults");
    let total: u64 = faults.values().filter_map(|v| v.as_u64()).sum();
    // A fault every 1-4 s plus its hold and recovery: 10-15 in 50 s here; a slow machine
    // stretches the recoveries, so only require that faults clearly happened.
    assert!(total >= 5, "only {total} faults in 50 s: {faults:?}");
    assert!(summary["receipted"].as_u64().unwrap() > 1000, "{summary}");
    let left = leftovers(pid, work.as_deref());
    assert!(left.is_empty(), "the runner left {left:?}");
}

#[test]
fn an_interrupted_chaos_run_removes_everything_it_created() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary("mq-chaos"))
        .args([
            "run",
            "--seed",
            "5",
            "--duration",
            "5m",
            "--every-min",
            "300ms",
            "--every-max",
            "600ms",
        ])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mq-chaos");
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let work = work_dir(&first);
    assert!(work.is_some(), "first line: {first}");
    // Interrupt once a fault is under way (the runner says so on stderr).
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut saw_fault = false;
    for line in stderr.by_ref() {
        let line = line.unwrap();
        eprintln!("{line}");
        if line.contains(" fault ") {
            saw_fault = true;
            kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
            break;
        }
    }
    assert!(saw_fault, "the runner never injected a fault");
    // Keep both pipes drained so that the runner never blocks on a full one while it cleans up.
    let drain_err =
        std::thread::spawn(move || stderr.for_each(|l| eprintln!("{}", l.unwrap_or_default())));
    let drain_out = std::thread::spawn(move || {
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "mq-chaos still running 90 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = drain_err.join();
    let _ = drain_out.join();
    assert!(
        !status.success(),
        "an interrupted run must not report success"
    );
    let left = leftovers(pid, work.as_deref());
    assert!(left.is_empty(), "the interrupted runner left {left:?}");
}

//! The real `mq-broker` binary: durability across SIGKILL, graceful SIGTERM, bad input and logins.

use std::collections::HashSet;
use std::time::Duration;

use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::process::{binary, BrokerOptions, BrokerProcess};
use fabricmq_tests::raw::{body, Raw};

fn persistent(dest: &str, body: String, receipt: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", dest)
        .header("persistent", "true")
        .header("receipt", receipt)
        .with_body(body)
}

/// Drains `dest` with client-individual acks until the broker has nothing more (a receipt barrier
/// after the last message), returning the bodies.
async fn drain(addr: std::net::SocketAddr, dest: &str, expect: usize) -> Vec<String> {
    let mut c = Raw::connect(addr, "admin", "admin").await;
    c.subscribe("s", dest, "client-individual", &[("prefetch", "500")])
        .await;
    let mut got = Vec::new();
    while got.len() < expect {
        let Some(m) = c.recv().await else { break };
        assert_eq!(m.command, Command::Message, "{m:?}");
        c.ack(&m).await;
        got.push(body(&m));
    }
    // Anything beyond `expect` would be invented: look for it behind a receipt barrier.
    for f in c.barrier().await {
        got.push(body(&f));
    }
    assert!(
        c.quiet_for(Duration::from_millis(300)).await,
        "unexpected extra message"
    );
    got
}

#[tokio::test]
async fn receipted_messages_survive_sigkill_exactly() {
    const N: usize = 1000;
    let mut b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let mut p = Raw::connect(b.addr, "admin", "admin").await;
    for i in 0..N {
        p.send(persistent("/queue/kill", format!("m{i}"), &format!("r{i}")))
            .await;
    }
    for i in 0..N {
        let r = p.expect(Command::Receipt).await;
        assert_eq!(r.get("receipt-id"), Some(format!("r{i}").as_str()));
    }
    b.kill();
    let b2 = BrokerProcess::start_in(b.work(), BrokerOptions::default())
        .await
        .unwrap();
    let got = drain(b2.addr, "/queue/kill", N).await;
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "lost, invented or reordered messages");
    b2.assert_no_panic();
}

#[tokio::test]
async fn kill_during_a_stream_loses_nothing_receipted_and_invents_nothing() {
    const N: usize = 3000;
    let mut b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let mut p = Raw::connect(b.addr, "admin", "admin").await;
    let sender = {
        let mut s = Raw::connect(b.addr, "admin", "admin").await;
        tokio::spawn(async move {
            // Pipelined on a second connection so the kill lands mid-stream.
            for i in 0..N {
                s.send(persistent(
                    "/queue/midkill",
                    format!("m{i}"),
                    &format!("r{i}"),
                ))
                .await;
            }
            s
        })
    };
    let _ = &mut p;
    let mut s = sender.await.unwrap();
    let mut receipted = HashSet::new();
    while receipted.len() < N / 3 {
        let r = s.expect(Command::Receipt).await;
        receipted.insert(
            r.get("receipt-id")
                .unwrap()
                .trim_start_matches('r')
                .to_string(),
        );
    }
    b.kill();
    // Receipts already on the wire before the kill count too.
    while let Some(r) = s.recv_within(Duration::from_millis(200)).await {
        if r.command == Command::Receipt {
            receipted.insert(
                r.get("receipt-id")
                    .unwrap()
                    .trim_start_matches('r')
                    .to_string(),
            );
        }
    }
    let b2 = BrokerProcess::start_in(b.work(), BrokerOptions::default())
        .await
        .unwrap();
    let got = drain(b2.addr, "/queue/midkill", N).await;
    let got_set: HashSet<String> = got
        .iter()
        .map(|m| m.trim_start_matches('m').to_string())
        .collect();
    assert_eq!(got_set.len(), got.len(), "duplicates after recovery");
    for r in &receipted {
        assert!(got_set.contains(r), "receipted message m{r} lost");
    }
    for g in &got_set {
        let i: usize = g.parse().expect("a message we sent");
        assert!(i < N, "invented message m{g}");
    }
    // Order is the send order.
    let idx: Vec<usize> = got.iter().map(|m| m[1..].parse().unwrap()).collect();
    assert!(
        idx.windows(2).all(|w| w[0] < w[1]),
        "recovered out of order"
    );
    eprintln!(
        "sent {N}, receipted before kill {}, recovered {}",
        receipted.len(),
        got.len()
    );
    b2.assert_no_panic();
}

#[tokio::test]
async fn sigterm_finishes_in_flight_receipts_and_exits_cleanly() {
    let mut b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let mut p = Raw::connect(b.addr, "admin", "admin").await;
    for i in 0..200 {
        p.send(persistent("/queue/term", format!("m{i}"), &format!("r{i}")))
            .await;
    }
    let last = p.expect(Command::Receipt).await;
    assert_eq!(last.get("receipt-id"), Some("r0"));
    let code = b.terminate(Duration::from_secs(15)).await.unwrap();
    assert_eq!(code, Some(0), "exit code\n{}", b.log_text());
    // Every receipt that was sent reached us before the close.
    let mut n = 1;
    while let Some(f) = p.recv_within(Duration::from_secs(2)).await {
        if f.command == Command::Receipt {
            n += 1;
        }
    }
    let b2 = BrokerProcess::start_in(b.work(), BrokerOptions::default())
        .await
        .unwrap();
    let got = drain(b2.addr, "/queue/term", 200).await;
    assert!(got.len() >= n, "receipted {n} but recovered {}", got.len());
    assert!(b.log_text().contains("broker stopped"), "{}", b.log_text());
    b.assert_no_panic();
}

#[tokio::test]
async fn malformed_input_on_one_connection_leaves_the_others_working() {
    let b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let mut consumer = Raw::connect(b.addr, "admin", "admin").await;
    consumer.subscribe("s", "/queue/robust", "auto", &[]).await;
    let garbage: [&[u8]; 5] = [
        b"\x00\x01\x02\xff\xfe\n\n\x00",
        b"SEND\ndestination /queue/robust\n\nbody\x00",
        b"SEND\ndestination:/queue/robust\ncontent-length:zz\n\nx\x00",
        b"SEND\ndestination:/queue/robust\ncontent-length:3\n\nabcdef\x00",
        b"SEND\nbad\\qescape:1\ndestination:/queue/robust\n\nx\x00",
    ];
    for g in garbage {
        let mut bad = Raw::connect(b.addr, "admin", "admin").await;
        bad.send_raw(g).await;
        let e = bad.expect(Command::Error).await;
        assert!(e.get("message").is_some());
        assert!(bad.recv().await.is_none(), "not closed after ERROR");
    }
    // A flood of header lines is cut off at the limit, not buffered.
    let mut flood = Raw::connect(b.addr, "admin", "admin").await;
    let mut big = b"SEND\ndestination:/queue/robust\n".to_vec();
    for i in 0..1000 {
        big.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    flood.send_raw(&big).await;
    assert_eq!(
        flood.expect(Command::Error).await.get("message"),
        Some("too many headers")
    );
    let mut p = Raw::connect(b.addr, "admin", "admin").await;
    p.put("/queue/robust", "fine", &[]).await;
    assert_eq!(body(&consumer.expect(Command::Message).await), "fine");
    b.assert_no_panic();
}

#[tokio::test]
async fn logins_are_checked_against_the_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(binary("mq-broker"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = out;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = out.stdin.take().unwrap();
        stdin.write_all(b"s3cret\n").await.unwrap();
    }
    let out = out.wait_with_output().await.unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!("[users.app]\npassword = \"{}\"\n", hash.trim()),
    )
    .unwrap();
    let b = BrokerProcess::start(BrokerOptions {
        args: vec!["--users".into(), users.display().to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ok = Raw::connect(b.addr, "app", "s3cret").await;
    ok.put("/queue/auth", "x", &[]).await;
    for (login, pass) in [("app", "wrong"), ("admin", "admin"), ("", "")] {
        let mut r = Raw::open(b.addr).await;
        r.send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("login", login)
                .header("passcode", pass),
        )
        .await;
        let e = r.expect(Command::Error).await;
        assert_eq!(e.get("message"), Some("authentication failed"), "{login}");
        assert!(r.recv().await.is_none());
    }
    assert!(!b.log_text().contains("s3cret"), "password in the log");
    assert!(!b.log_text().contains("default login admin/admin"));
    b.assert_no_panic();
}

#[tokio::test]
async fn default_credentials_are_announced_in_the_log() {
    let b = BrokerProcess::start(BrokerOptions::default())
        .await
        .unwrap();
    let _c = Raw::connect(b.addr, "admin", "admin").await;
    assert!(b.log_text().contains("default login admin/admin"));
}

#[tokio::test]
async fn bad_flags_and_config_are_refused_with_a_clear_message() {
    let run = |args: &[&str]| {
        std::process::Command::new(binary("mq-broker"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["--listen", "http://x:1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("listen[0]"));
    let o = run(&["--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("b.toml");
    std::fs::write(&cfg, "[limits]\nmax_frame_bytes = \"lots\"\n").unwrap();
    let o = run(&["--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("lots"));
    let o = run(&["--print-config"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("max_frame_bytes"));
}

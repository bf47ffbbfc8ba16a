//! TLS client listeners (`stomp+ssl://`) against the real `mq-broker` process, with certificates
//! generated at test time (rcgen): a CA, a server certificate for 127.0.0.1/localhost, client
//! certificates. Each broker also has a plain listener first (the harness reads the first
//! listener of the ready file as its address); the TLS one is found with `ready_listeners`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fabricmq_client::{
    AckMode, BrokerUrl, ClientError, ConnectOptions, Connection, Outgoing, SubscribeOptions,
    TlsOptions,
};
use fabricmq_tests::process::{binary, BrokerOptions, BrokerProcess};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod fabric_common;

/// A CA with its key, able to sign certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Signs a leaf certificate; writes `<name>.pem` and `<name>.key` into `dir`.
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

/// Everything a test needs: the CA file, the server's files, a client certificate.
struct Pki {
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    /// A client certificate from a CA the broker does not trust.
    stranger: (PathBuf, PathBuf),
    /// A CA that did not sign the server certificate.
    other_ca_file: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("fabricmq test CA");
    let other = Ca::new("someone else's CA");
    let ca_file = ca.write(dir.path(), "ca");
    let other_ca_file = other.write(dir.path(), "other-ca");
    let server = ca.issue(
        dir.path(),
        "server",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = ca.issue(
        dir.path(),
        "client-1",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let stranger = other.issue(
        dir.path(),
        "stranger",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        dir,
        ca_file,
        server,
        client,
        stranger,
        other_ca_file,
    }
}

/// Starts a broker with a plain listener and a `stomp+ssl://` listener; `extra` goes into
/// `[tls]`. Returns the broker and the TLS listener's address.
async fn start_tls_broker(pki: &Pki, extra: &str) -> (BrokerProcess, std::net::SocketAddr) {
    let config = pki
        .dir
        .path()
        .join(format!("broker-{}.toml", rand_suffix()));
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n{extra}",
            pki.server.0, pki.server.1
        ),
    )
    .unwrap();
    let b = BrokerProcess::start(BrokerOptions {
        args: vec![
            "--listen".into(),
            "stomp+ssl://127.0.0.1:0".into(),
            "--config".into(),
            config.display().to_string(),
            "--no-admin".into(),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let listeners = b.ready_listeners();
    let tls = listeners
        .iter()
        .find_map(|l| l.strip_prefix("stomp+ssl://"))
        .unwrap_or_else(|| panic!("no stomp+ssl listener in {listeners:?}"))
        .parse()
        .unwrap();
    (b, tls)
}

/// Waits (up to 5 s) for `line` in the broker's log: the broker logs after closing the socket.
async fn wait_log(b: &BrokerProcess, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.log_text().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "{line:?} not in the log:\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn opts(tls: TlsOptions) -> ConnectOptions {
    ConnectOptions {
        login: Some("admin".into()),
        passcode: Some("admin".into()),
        connect_timeout: Duration::from_secs(5),
        tls,
        ..Default::default()
    }
}

fn trust(pki: &Pki) -> TlsOptions {
    TlsOptions {
        ca_file: Some(pki.ca_file.clone()),
        ..Default::default()
    }
}

async fn connect(url: &str, o: ConnectOptions) -> Result<Connection, ClientError> {
    let url: BrokerUrl = url.parse().unwrap();
    tokio::time::timeout(Duration::from_secs(15), Connection::connect(&url, o))
        .await
        .expect("connect finishes in time")
}

/// Sends `n` messages of `size` bytes with receipts and receives them all back, acknowledged.
async fn round_trip(conn: &Connection, queue: &str, n: usize, size: usize) {
    let mut sub = conn
        .subscribe(
            queue,
            AckMode::ClientIndividual,
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    for i in 0..n {
        let mut body = format!("{i}:").into_bytes();
        body.resize(size.max(body.len()), b'x');
        conn.send(Outgoing::new(queue, body)).await.unwrap();
    }
    for i in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("message in time")
            .expect("subscription open");
        assert!(m.body.starts_with(format!("{i}:").as_bytes()));
        assert_eq!(m.body.len(), size.max(format!("{i}:").len()));
        conn.ack(&m).await.unwrap();
    }
}

#[tokio::test]
async fn tls_client_sends_and_receives_with_receipts() {
    let pki = pki();
    let (b, addr) = start_tls_broker(&pki, "").await;
    for url in [
        format!("ssl://{addr}"),
        format!("stomp+ssl://localhost:{}", addr.port()),
        format!("failover:(ssl://{addr})?maxReconnectAttempts=0"),
    ] {
        let conn = connect(&url, opts(trust(&pki)))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        round_trip(&conn, "/queue/tls.small", 50, 100).await;
        conn.disconnect().await.unwrap();
    }
    // Frames far larger than a TLS record and the socket buffers: partial TLS writes both ways.
    let conn = connect(&format!("ssl://{addr}"), opts(trust(&pki)))
        .await
        .unwrap();
    round_trip(&conn, "/queue/tls.big", 20, 512 * 1024).await;
    conn.disconnect().await.unwrap();
    // The plain listener of the same broker still works.
    let plain = connect(&format!("tcp://{}", b.addr), opts(TlsOptions::default()))
        .await
        .unwrap();
    round_trip(&plain, "/queue/tls.plain", 10, 10).await;
    plain.disconnect().await.unwrap();
    b.assert_no_panic();
}

#[tokio::test]
async fn plain_client_on_the_tls_port_is_refused_cleanly() {
    let pki = pki();
    let (b, addr) = start_tls_broker(&pki, "").await;
    // A raw plain STOMP client: the TLS handshake fails, the broker closes; no CONNECTED.
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"CONNECT\naccept-version:1.2\nlogin:admin\npasscode:admin\n\n\0")
            .await
            .unwrap();
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("the broker closes the connection");
        // EOF (maybe after a TLS alert) or a reset: either way, closed, and no STOMP.
        let _ = r;
        assert!(
            !String::from_utf8_lossy(&got).contains("CONNECTED"),
            "{got:?}"
        );
    }
    // The fabricmq client over tcp:// to the TLS port fails too, in bounded time.
    let err = connect(&format!("tcp://{addr}"), opts(TlsOptions::default()))
        .await
        .unwrap_err();
    assert!(
        !matches!(err, ClientError::Auth { .. }),
        "not a STOMP refusal: {err:?}"
    );
    // A client that trusts another CA refuses the broker's certificate.
    let err = connect(
        &format!("ssl://{addr}"),
        opts(TlsOptions {
            ca_file: Some(pki.other_ca_file.clone()),
            ..Default::default()
        }),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::TlsHandshake { .. }),
        "untrusted server certificate: {err:?}"
    );
    // The broker keeps serving TLS clients.
    let conn = connect(&format!("ssl://{addr}"), opts(trust(&pki)))
        .await
        .unwrap();
    round_trip(&conn, "/queue/tls.after", 10, 10).await;
    conn.disconnect().await.unwrap();
    b.assert_no_panic();
    wait_log(&b, "TLS handshake failed").await;
}

#[tokio::test]
async fn silent_client_on_the_tls_port_is_closed_after_the_connect_timeout() {
    let pki = pki();
    let (b, addr) = start_tls_broker(&pki, "\n[limits]\nconnect_timeout = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("closed by the broker");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(got.is_empty(), "{got:?}");
    b.assert_no_panic();
    wait_log(&b, "no TLS handshake within the connect timeout").await;
}

#[tokio::test]
async fn required_client_certificates() {
    let pki = pki();
    let extra = format!(
        "client_ca = {:?}\nclient_auth = \"required\"\n",
        pki.ca_file
    );
    let (b, addr) = start_tls_broker(&pki, &extra).await;
    let url = format!("ssl://{addr}");
    // No certificate: refused in the handshake (TLS 1.3 reports it on the first read).
    let err = connect(&url, opts(trust(&pki))).await.unwrap_err();
    assert!(
        !matches!(err, ClientError::Auth { .. }),
        "refused by TLS, not by STOMP: {err:?}"
    );
    // A certificate from a CA the broker does not trust: refused.
    let stranger = TlsOptions {
        cert_file: Some(pki.stranger.0.clone()),
        key_file: Some(pki.stranger.1.clone()),
        ..trust(&pki)
    };
    connect(&url, opts(stranger)).await.unwrap_err();
    // Signed by client_ca: accepted.
    let with_cert = TlsOptions {
        cert_file: Some(pki.client.0.clone()),
        key_file: Some(pki.client.1.clone()),
        ..trust(&pki)
    };
    let conn = connect(&url, opts(with_cert.clone())).await.unwrap();
    round_trip(&conn, "/queue/tls.mutual", 20, 1000).await;
    conn.disconnect().await.unwrap();
    // mq-client with --tls-ca/--tls-cert/--tls-key.
    let out = tokio::process::Command::new(binary("mq-client"))
        .args(["producer", "--brokerUrl", &url])
        .args(["--user", "admin", "--password", "admin"])
        .args(["--destination", "queue://tls.cli", "--count", "5"])
        .arg("--tls-ca")
        .arg(&pki.ca_file)
        .arg("--tls-cert")
        .arg(&pki.client.0)
        .arg("--tls-key")
        .arg(&pki.client.1)
        .env_remove("FABRIC_TLS_CA")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "mq-client producer over TLS: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    b.assert_no_panic();
}

#[tokio::test]
async fn bad_tls_config_stops_the_broker_naming_the_key() {
    let pki = pki();
    let missing = pki.dir.path().join("no-such.key");
    let cases = [
        (
            format!("[tls]\ncert = {:?}\nkey = {:?}\n", pki.server.0, missing),
            "tls.key",
            missing.display().to_string(),
        ),
        (
            // A certificate where the key should be: no private key in it.
            format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n",
                pki.server.0, pki.server.0
            ),
            "tls.key",
            "no PRIVATE KEY".to_string(),
        ),
        (
            // The client's key with the server's certificate.
            format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n",
                pki.server.0, pki.client.1
            ),
            "tls.key",
            "does not go with".to_string(),
        ),
        ("[tls]\n".to_string(), "tls.cert", "missing".to_string()),
        (
            format!(
                "[tls]\ncert = {:?}\nkey = {:?}\nclient_auth = \"required\"\n",
                pki.server.0, pki.server.1
            ),
            "tls.client_ca",
            "missing".to_string(),
        ),
    ];
    for (i, (toml, key, detail)) in cases.into_iter().enumerate() {
        let config = pki.dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&config, toml).unwrap();
        let data = pki.dir.path().join(format!("data-{i}"));
        let mut b = BrokerProcess::start(BrokerOptions {
            raw_args: true,
            args: vec![
                "--listen".into(),
                "stomp+ssl://127.0.0.1:0".into(),
                "--data".into(),
                data.display().to_string(),
                "--config".into(),
                config.display().to_string(),
                "--no-admin".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        let code = b.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert_ne!(code, Some(0), "case {i}");
        let log = b.log_text();
        assert!(log.contains(key), "case {i}: {key} in {log}");
        assert!(log.contains(&detail), "case {i}: {detail} in {log}");
    }
}

/// A two-container fabric group with only TLS listeners: the master record publishes
/// `stomp+ssl://`, a discovery client connects over TLS and fails over (still over TLS) when the
/// master is SIGKILLed, without losing a receipted message.
#[tokio::test]
async fn discovery_client_fails_over_between_tls_masters() {
    let _serial = fabric_common::SERIAL.lock().await;
    let pki = pki();
    let zk = fabric_common::zk().chroot_connect();
    let data = tempfile::tempdir().unwrap();
    let config = pki.dir.path().join("fabric.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            pki.server.0, pki.server.1
        ),
    )
    .unwrap();
    let mut brokers = Vec::new();
    for i in 0..2 {
        let port = fabricmq_tests::process::free_port();
        brokers.push(
            BrokerProcess::start(BrokerOptions {
                data_dir: Some(data.path().to_path_buf()),
                listen: Some(format!("stomp+ssl://127.0.0.1:{port}")),
                fabric: Some((zk.clone(), "tls".into(), format!("broker{}", i + 1))),
                args: vec![
                    "--session-timeout".into(),
                    fabric_common::SESSION.into(),
                    "--config".into(),
                    config.display().to_string(),
                    "--no-admin".into(),
                ],
                ..Default::default()
            })
            .await
            .unwrap(),
        );
    }
    let master = wait_master(&mut brokers).await;
    let (_, services, _) = brokers[master].state().unwrap();
    assert!(
        services.iter().all(|s| s.starts_with("stomp+ssl://")),
        "{services:?}"
    );
    let url =
        format!("discovery:fabric:tls?zk={zk}&initialReconnectDelay=10&maxReconnectDelay=200");
    let conn = connect(&url, opts(trust(&pki))).await.unwrap();
    for i in 0..20 {
        conn.send(Outgoing::new("/queue/tls.fabric", format!("m{i}")))
            .await
            .unwrap();
    }
    brokers[master].kill();
    for i in 20..40 {
        tokio::time::timeout(
            Duration::from_secs(20),
            conn.send(Outgoing::new("/queue/tls.fabric", format!("m{i}"))),
        )
        .await
        .expect("receipt from the new master")
        .unwrap();
    }
    assert!(conn.failovers() >= 1, "the client failed over");
    let next = wait_master(&mut brokers).await;
    assert_ne!(next, master);
    let mut sub = conn
        .subscribe(
            "/queue/tls.fabric",
            AckMode::ClientIndividual,
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 40 {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 40 messages: {seen:?}", seen.len()))
            .expect("subscription open");
        seen.insert(String::from_utf8_lossy(&m.body).into_owned());
        conn.ack(&m).await.unwrap();
    }
    conn.disconnect().await.unwrap();
    for b in &brokers {
        b.assert_no_panic();
    }
}

/// Index of the one broker reporting master (waits up to 20 s; skips killed ones).
async fn wait_master(brokers: &mut [BrokerProcess]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let masters: Vec<usize> = (0..brokers.len())
            .filter(|&i| {
                brokers[i].pid().is_some() && brokers[i].role().as_deref() == Some("master")
            })
            .collect();
        if masters.len() == 1 {
            return masters[0];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no single master: {masters:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

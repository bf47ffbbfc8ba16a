//! Destination authorization against the real broker: `[[authorization]]` entries in the
//! configuration give read / write / admin rights on patterns to users and groups; a missing right
//! gets an ERROR naming it and changes nothing.

use fabricmq_stomp::{Command, Frame};
use fabricmq_tests::process::{BrokerOptions, BrokerProcess};
use fabricmq_tests::raw::{body, Raw};
use fabricmq_tests::users::write_users_file;

const CONFIG: &str = r#"
[[authorization]]
pattern = "queue://orders.>"
read = ["consumers"]
write = ["producers"]
admin = ["producers"]

[[authorization]]
pattern = ">"
read = ["admins"]
write = ["admins"]
admin = ["admins"]
"#;

async fn broker() -> (BrokerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_users_file(
        &dir.path().join("users.toml"),
        "pw",
        &[
            ("paul", &["producers"]),
            ("carol", &["consumers"]),
            ("root", &["admins"]),
        ],
    );
    std::fs::write(dir.path().join("broker.toml"), CONFIG).unwrap();
    let b = BrokerProcess::start(BrokerOptions {
        args: vec![
            "--users".into(),
            dir.path().join("users.toml").display().to_string(),
            "--config".into(),
            dir.path().join("broker.toml").display().to_string(),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    (b, dir)
}

fn send(dest: &str, text: &str, receipt: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", dest)
        .header("receipt", receipt)
        .with_body(text.to_string())
}

#[tokio::test]
async fn a_missing_right_gets_an_error_naming_it_and_nothing_is_enqueued() {
    let (b, _dir) = broker().await;

    // A producer with write + admin on orders.> creates the queue and sends.
    let mut paul = Raw::connect(b.addr, "paul", "pw").await;
    paul.send(send("/queue/orders.eu", "from paul", "p1")).await;
    let r = paul.expect(Command::Receipt).await;
    assert_eq!(r.get("receipt-id"), Some("p1"));

    // A consumer may not write: ERROR naming the right, with the receipt id; connection closed.
    let mut carol = Raw::connect(b.addr, "carol", "pw").await;
    carol.send(send("/queue/orders.eu", "intruder", "c1")).await;
    let e = carol.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("not authorized"));
    assert_eq!(e.get("receipt-id"), Some("c1"));
    let detail = body(&e);
    assert!(
        detail.contains("\"carol\" lacks the write right on /queue/orders.eu"),
        "{detail}"
    );
    assert!(carol.recv().await.is_none(), "connection left open");

    // Inside a transaction too.
    let mut carol = Raw::connect(b.addr, "carol", "pw").await;
    carol
        .send(Frame::new(Command::Begin).header("transaction", "t"))
        .await;
    carol
        .send(send("/queue/orders.eu", "intruder", "c2").header("transaction", "t"))
        .await;
    let e = carol.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("not authorized"));

    // A producer may not read.
    let mut paul2 = Raw::connect(b.addr, "paul", "pw").await;
    paul2
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "s")
                .header("destination", "/queue/orders.eu")
                .header("receipt", "s1"),
        )
        .await;
    let e = paul2.expect(Command::Error).await;
    assert!(body(&e).contains("lacks the read right"), "{}", body(&e));

    // A consumer may read orders.eu but not create a queue that does not exist yet.
    let mut carol = Raw::connect(b.addr, "carol", "pw").await;
    carol
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "s")
                .header("destination", "/queue/orders.new")
                .header("receipt", "s2"),
        )
        .await;
    let e = carol.expect(Command::Error).await;
    assert!(
        body(&e).contains("lacks the admin right on /queue/orders.new"),
        "{}",
        body(&e)
    );
    // Nor anything outside orders.>.
    let mut paul3 = Raw::connect(b.addr, "paul", "pw").await;
    paul3.send(send("/queue/other", "x", "p2")).await;
    let e = paul3.expect(Command::Error).await;
    assert!(
        body(&e).contains("lacks the write right on /queue/other"),
        "{}",
        body(&e)
    );

    // The queue holds exactly paul's message: the refused sends enqueued nothing.
    let mut carol = Raw::connect(b.addr, "carol", "pw").await;
    carol
        .subscribe("s", "/queue/orders.eu", "client-individual", &[])
        .await;
    let m = carol.expect(Command::Message).await;
    assert_eq!(body(&m), "from paul");
    carol.ack(&m).await;
    assert!(
        carol.barrier().await.is_empty(),
        "an unauthorized send was enqueued"
    );

    // An admin may do everything.
    let mut root = Raw::connect(b.addr, "root", "pw").await;
    root.send(send("/queue/anything", "ok", "r1")).await;
    root.expect(Command::Receipt).await;
    b.assert_no_panic();
}

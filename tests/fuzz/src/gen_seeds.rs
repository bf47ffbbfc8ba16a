//! Writes the seed corpora of the fuzz targets into `seeds/<target>/` (run from `tests/fuzz`:
//! `cargo run --bin gen_seeds`). STOMP seeds are hand-written frames; journal seeds are real
//! segment files written by `Journal` in a temporary directory.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use fabricmq_broker::store::{Journal, JournalConfig, Op, ProducerSeq, StoredMessage};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    std::fs::create_dir_all(&dir).expect("create seed directory");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

/// `[mode][scale][chunk seed] data`: mode = version + 3 * limit set.
fn stomp(name: &str, version: u8, limits: u8, scale: u8, seed: u8, data: &[u8]) {
    let mut v = vec![version + 3 * limits, scale, seed];
    v.extend_from_slice(data);
    write("stomp_decoder", name, &v);
}

fn stomp_seeds() {
    let connect = b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:localhost\nlogin:guest\n\
passcode:g:u\\est\nheart-beat:1000,1000\n\n\0";
    stomp("connect", 2, 0, 0, 0, connect);
    stomp("connect-small-limits", 2, 1, 40, 3, connect);
    let send = b"SEND\ndestination:/queue/a\ncontent-type:text/plain\ncontent-length:8\n\
receipt:r1\n\nhi\0there\0\n\nSEND\ndestination:/queue/a\n\nhello\0\r\n";
    stomp("send", 2, 0, 0, 7, send);
    stomp("send-limits", 2, 2, 10, 17, send);
    stomp("send-v10", 0, 0, 0, 5, send);
    stomp(
        "message-escapes",
        2,
        0,
        0,
        9,
        b"MESSAGE\r\nsubscription:0\r\nmessage-id:id\\c1\r\nx:a\\nb\\\\c\\r\r\n\
destination:/topic/x\r\ncr:a\rb\r\n\r\nbody\0",
    );
    stomp(
        "message-v11",
        1,
        0,
        0,
        2,
        b"MESSAGE\nsubscription:0\nmessage-id:7\nx:a\\nb\\c\\\\\nraw:a\rb\n\nbody\0",
    );
    stomp(
        "client-frames",
        2,
        0,
        0,
        1,
        b"\n\n\r\nSUBSCRIBE\nid:0\ndestination:/queue/a\nack:client-individual\n\n\0\
UNSUBSCRIBE\nid:0\n\n\0ACK\nid:1\n\n\0NACK\nid:2\ntransaction:t\n\n\0BEGIN\ntransaction:t\n\n\0\
COMMIT\ntransaction:t\n\n\0ABORT\ntransaction:t\n\n\0DISCONNECT\nreceipt:9\n\n\0\n",
    );
    stomp(
        "server-frames",
        2,
        0,
        0,
        4,
        b"CONNECTED\nversion:1.2\nheart-beat:0,0\nserver:x:y\n\n\0RECEIPT\nreceipt-id:9\n\n\0\
ERROR\nmessage:bad\ncontent-length:3\n\nabc\0STOMP\naccept-version:1.2\nhost:h\n\n\0",
    );
    stomp(
        "repeated-headers",
        2,
        0,
        0,
        6,
        b"SEND\ndestination:a\ndestination:b\ncontent-length:2\ncontent-length:5\n\nxy\0",
    );
    stomp(
        "too-large",
        2,
        3,
        20,
        1,
        b"SEND\ndestination:/queue/a\ncontent-length:100\n\n0123456789\0",
    );
    stomp("errors", 2, 0, 0, 3, b"SEND\nbad\\tescape:x\n\n\0");
}

fn message(id: u64, body: &[u8], producer: Option<(&str, u64)>) -> StoredMessage {
    StoredMessage {
        id,
        destination: format!("/queue/q{}", id % 3),
        priority: (id % 10) as u8,
        expires: if id.is_multiple_of(2) {
            0
        } else {
            1_900_000_000_000
        },
        timestamp: 1_700_000_000_000 + id,
        producer: producer.map(|(p, seq)| ProducerSeq {
            producer: p.into(),
            seq,
            user: "app".into(),
        }),
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("x-id".into(), id.to_string()),
        ],
        body: Some(Bytes::copy_from_slice(body)),
        body_len: body.len() as u32,
    }
}

fn append(journal: &Journal, ops: Vec<Op>) {
    futures::executor::block_on(journal.append(ops)).expect("append");
}

fn segment(dir: &Path, seq: u64) -> Vec<u8> {
    std::fs::read(dir.join(format!("journal-{seq:016}.log"))).expect("read segment")
}

/// Real segments: `(first, second, fenced)`. The first journal rolls at 600 bytes so that its
/// second segment starts with a header carrying the producer table; the fenced one is the first
/// segment of epoch 1 (its header lists the older segments).
fn journal_segments(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut config = JournalConfig::new(dir);
    config.preallocate = false;
    config.segment_bytes = 600;
    let (journal, _) = Journal::open(config.clone()).expect("open journal");
    append(
        &journal,
        vec![
            Op::Add(message(1, b"first body", Some(("p-1", 1)))),
            Op::Add(message(2, b"with\0nul", Some(("p-1", 2)))),
        ],
    );
    append(&journal, vec![Op::Ack { id: 1 }]);
    append(&journal, vec![Op::Add(message(3, b"", None))]);
    append(
        &journal,
        vec![Op::Add(message(4, &[7u8; 200], Some(("p-2", 9))))],
    );
    append(&journal, vec![Op::Ack { id: 3 }, Op::Ack { id: 99 }]);
    for id in 5..9 {
        append(&journal, vec![Op::Add(message(id, b"x", None))]);
        append(&journal, vec![Op::Ack { id }]);
    }
    journal.shutdown();
    drop(journal);
    let first = segment(dir, 1);
    let second = segment(dir, 2);

    config.epoch = 1;
    let (journal, _) = Journal::open(config).expect("open journal with epoch 1");
    append(&journal, vec![Op::Add(message(10, b"epoch 1", None))]);
    journal.shutdown();
    let last = std::fs::read_dir(dir)
        .expect("list journal")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("journal-")?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("a segment");
    (first, second, segment(dir, last))
}

fn with_prefix(prefix: [u8; 3], parts: &[&[u8]]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

fn main() {
    stomp_seeds();

    let tmp: PathBuf =
        std::env::temp_dir().join(format!("fabricmq-gen-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (first, second, fenced) = journal_segments(&tmp.join("journal"));
    let _ = std::fs::remove_dir_all(&tmp);

    // journal_records: [flags][buffer][cache]; flags bit 0 last, bit 1 header seq, bit 2 shrink,
    // bits 3-7 compaction threshold.
    let rec = "journal_records";
    write(
        rec,
        "segment-last",
        &with_prefix([0b011, 15, 255], &[&first]),
    );
    write(
        rec,
        "segment-sealed",
        &with_prefix([0b010, 255, 0], &[&first]),
    );
    write(
        rec,
        "segment-second",
        &with_prefix([0b011, 40, 4], &[&second]),
    );
    write(
        rec,
        "segment-zero-tail",
        &with_prefix([0b011, 7, 255], &[&first, &[0u8; 300]]),
    );
    write(
        rec,
        "segment-torn",
        &with_prefix([0b011, 31, 255], &[&first[..first.len() - 5]]),
    );
    write(
        rec,
        "segment-fenced",
        &with_prefix([0b010, 63, 255], &[&fenced]),
    );
    write(
        rec,
        "segment-shrinks",
        &with_prefix([0b111, 3, 255], &[&first]),
    );
    write(
        rec,
        "segment-compacts",
        &with_prefix([(1 << 3) | 0b011, 100, 255], &[&first]),
    );

    // journal_open: [flags][split hi][split lo]; flags bit 0 salvage, bits 1-2 epoch,
    // bit 3 header seq.
    let open = "journal_open";
    let split = (first.len() as u16).to_be_bytes();
    write(
        open,
        "two-segments",
        &with_prefix([0, split[0], split[1]], &[&first, &second]),
    );
    let mut damaged = first.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    write(
        open,
        "damaged-first-salvage",
        &with_prefix([1, split[0], split[1]], &[&damaged, &second]),
    );
    write(
        open,
        "one-segment-epoch-1",
        &with_prefix([0b010, 0xff, 0xff], &[&first]),
    );
    let split = (fenced.len() as u16).to_be_bytes();
    write(
        open,
        "fenced-then-first",
        &with_prefix([0b1100, split[0], split[1]], &[&fenced, &first]),
    );
}

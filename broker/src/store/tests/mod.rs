//! Journal tests (unit tests of the whole module through its public API).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

mod producers;

fn msg(id: u64, dest: &str, body: &[u8]) -> StoredMessage {
    StoredMessage {
        id,
        destination: dest.to_owned(),
        priority: (id % 10) as u8,
        expires: if id % 3 == 1 {
            0
        } else {
            1_700_000_000_000 + id
        },
        timestamp: 1_600_000_000_000 + id,
        producer: None,
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("x-id".into(), id.to_string()),
        ],
        body: Some(Bytes::copy_from_slice(body)),
        body_len: body.len() as u32,
    }
}

fn with_producer(mut m: StoredMessage, p: &str, seq: u64) -> StoredMessage {
    m.producer = Some(ProducerSeq {
        producer: p.into(),
        seq,
        user: Arc::from("app"),
    });
    m
}

/// A body whose bytes are all non-zero (so a record never ends in zeros).
fn body_for(id: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| 1 + ((i as u64 + id * 7) % 250) as u8)
        .collect()
}

fn cfg(dir: &Path) -> JournalConfig {
    JournalConfig::new(dir)
}

fn small_cfg(dir: &Path, segment_bytes: u64) -> JournalConfig {
    let mut c = JournalConfig::new(dir);
    c.segment_bytes = segment_bytes;
    c
}

fn open(c: &JournalConfig) -> (Journal, Recovered) {
    Journal::open(c.clone()).expect("open journal")
}

fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            parse_segment_name(e.file_name().to_str()?).map(|s| (s, e.path()))
        })
        .collect();
    v.sort();
    v
}

fn seg_exists(dir: &Path, seq: u64) -> bool {
    segment_path(dir, seq).exists()
}

fn ids(msgs: &[StoredMessage]) -> Vec<u64> {
    msgs.iter().map(|m| m.id).collect()
}

/// Length of a segment header without producers.
fn header_len_no_producers() -> u64 {
    let mut v = Vec::new();
    format::put_header(&mut v, 1, 0, 1, None);
    v.len() as u64
}

#[tokio::test]
async fn round_trip_messages_and_producers() {
    let tmp = tempfile::tempdir().unwrap();
    let c = small_cfg(tmp.path(), 4096);
    let (j, rec) = open(&c);
    assert!(rec.messages.is_empty());
    assert_eq!(rec.next_id, 1);

    let mut expected: Vec<StoredMessage> = Vec::new();
    let mut producers = HashMap::new();
    for id in 1..=60u64 {
        let mut m = msg(
            id,
            &format!("/queue/q{}", id % 4),
            &body_for(id, (id * 37 % 700) as usize),
        );
        if id % 2 == 0 {
            let p = format!("prod-{}", id % 3);
            m = with_producer(m, &p, id * 10);
            producers.insert(producer_key("app", &p), id * 10);
        }
        if id % 5 == 0 {
            m.headers.clear();
        }
        expected.push(m.clone());
        j.append(vec![Op::Add(m)]).await.unwrap();
    }
    // An atomic multi-op record: ack two, add one.
    let m61 = msg(61, "/topic/t", b"");
    j.append(vec![
        Op::Ack { id: 3 },
        Op::Ack { id: 10 },
        Op::Add(m61.clone()),
    ])
    .await
    .unwrap();
    expected.retain(|m| m.id != 3 && m.id != 10);
    expected.push(m61);
    // Lazy acks become durable by shutdown.
    j.append_lazy(vec![Op::Ack { id: 20 }]);
    expected.retain(|m| m.id != 20);
    let stats = j.stats();
    assert!(
        stats.segments_live > 1,
        "expected several segments: {stats:?}"
    );
    j.shutdown();

    let (j, rec) = open(&c);
    assert_eq!(rec.messages, expected);
    assert_eq!(rec.producers, producers);
    assert_eq!(rec.next_id, 62);
    assert!(rec.report.truncated.is_none());
    assert!(rec.report.salvaged.is_empty());
    // And it keeps working across another reopen.
    j.append(vec![Op::Add(msg(62, "/queue/x", b"x"))])
        .await
        .unwrap();
    drop(j); // the last handle shuts down
    let (_j, rec) = open(&c);
    assert_eq!(rec.messages.len(), expected.len() + 1);
    assert_eq!(rec.next_id, 63);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_covers_many_records_per_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let (j, _) = open(&c);
    let tasks = 64u64;
    let per_task = 40u64;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let j = j.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let id = 1 + t * per_task + i;
                j.append(vec![Op::Add(msg(id, "/queue/g", &[7u8; 1024]))])
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let s = j.stats();
    let total = tasks * per_task;
    assert_eq!(s.records, total);
    assert!(
        s.fsyncs * 4 <= total,
        "group commit ineffective: {} fsyncs for {} records",
        s.fsyncs,
        total
    );
    assert!(s.avg_batch_records >= 4.0, "{s:?}");
    j.shutdown();
    let (_j, rec) = open(&c);
    assert_eq!(rec.messages.len() as u64, total);
}

/// Writes three records (the last one given by `last`) into segment 1 of a
/// journal without pre-allocation and returns the segment's bytes and the
/// offset where the last record starts.
async fn journal_with_last_record(dir: &Path, last: Vec<Op>) -> (Vec<u8>, u64) {
    let mut c = cfg(dir);
    c.preallocate = false;
    let (j, _) = open(&c);
    j.append(vec![Op::Add(msg(1, "/queue/a", &body_for(1, 40)))])
        .await
        .unwrap();
    j.append(vec![Op::Add(msg(2, "/queue/a", &body_for(2, 40)))])
        .await
        .unwrap();
    let seg = segment_path(dir, 1);
    let last_start = std::fs::metadata(&seg).unwrap().len();
    j.append(last).await.unwrap();
    j.shutdown();
    (std::fs::read(&seg).unwrap(), last_start)
}

/// Opens a journal whose segment 1 holds `bytes`, checks recovery against
/// `expect_ids` and the expected truncation, then checks that appends work
/// and that a second reopen is clean.
async fn check_recovers(bytes: &[u8], expect_ids: &[u64], trunc_at: Option<u64>) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(segment_path(tmp.path(), 1), bytes).unwrap();
    let mut c = cfg(tmp.path());
    c.preallocate = false;
    let (j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), expect_ids);
    match (trunc_at, &rec.report.truncated) {
        (None, None) => {}
        (Some(off), Some(t)) => {
            assert_eq!(t.offset, off, "{t:?}");
            assert_eq!(t.dropped_bytes, bytes.len() as u64 - off);
            assert_eq!(t.file, segment_path(tmp.path(), 1));
        }
        (want, got) => panic!("truncation: want {want:?}, got {got:?}"),
    }
    j.append(vec![Op::Add(msg(100, "/queue/after", b"after"))])
        .await
        .unwrap();
    j.shutdown();
    let (_j, rec) = open(&c);
    assert!(rec.report.truncated.is_none(), "{:?}", rec.report.truncated);
    let mut want = expect_ids.to_vec();
    want.push(100);
    assert_eq!(ids(&rec.messages), want);
}

#[tokio::test]
async fn torn_tail_at_every_offset_of_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let last = vec![Op::Add(msg(3, "/queue/a", &body_for(3, 40)))];
    let (bytes, start) = journal_with_last_record(tmp.path(), last).await;
    // Cut exactly at the record boundary: a clean end.
    check_recovers(&bytes[..start as usize], &[1, 2], None).await;
    for cut in start as usize + 1..bytes.len() {
        check_recovers(&bytes[..cut], &[1, 2], Some(start)).await;
    }
    check_recovers(&bytes, &[1, 2, 3], None).await;
}

#[tokio::test]
async fn torn_multi_op_record_applies_none_of_its_ops() {
    let tmp = tempfile::tempdir().unwrap();
    let last = vec![
        Op::Ack { id: 1 },
        Op::Add(msg(3, "/queue/a", &body_for(3, 10))),
        Op::Ack { id: 2 },
        Op::Add(msg(4, "/queue/b", &body_for(4, 10))),
    ];
    let (bytes, start) = journal_with_last_record(tmp.path(), last).await;
    for cut in start as usize + 1..bytes.len() {
        check_recovers(&bytes[..cut], &[1, 2], Some(start)).await;
    }
    check_recovers(&bytes, &[3, 4], None).await;
}

#[tokio::test]
async fn bit_flips_in_last_record_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let last = vec![Op::Add(msg(3, "/queue/a", &body_for(3, 24)))];
    let (bytes, start) = journal_with_last_record(tmp.path(), last).await;
    for pos in start as usize..bytes.len() {
        for bit in [pos % 8, 7 - pos % 8] {
            let mut b = bytes.clone();
            b[pos] ^= 1 << bit;
            check_recovers(&b, &[1, 2], Some(start)).await;
        }
    }
}

#[tokio::test]
async fn torn_write_into_preallocated_space_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let c = small_cfg(tmp.path(), 8192);
    let (j, _) = open(&c);
    let mut id = 0;
    let mut add = |j: &Journal| {
        id += 1;
        j.append(vec![Op::Add(msg(id, "/queue/p", &body_for(id, 200)))])
    };
    // A quarter of segment 1 makes the writer ask for a spare; give the
    // helper time to prepare it, then roll into it.
    while j.stats().bytes < 2500 {
        add(&j).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    while segment_files(tmp.path()).len() < 2 {
        add(&j).await.unwrap();
    }
    add(&j).await.unwrap();
    add(&j).await.unwrap();
    let all: Vec<u64> = (1..=id).collect();
    j.shutdown();
    let seg = segment_path(tmp.path(), 2);
    let pristine = std::fs::read(&seg).unwrap();
    let data_end = pristine.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    assert_eq!(pristine.len(), 8192, "segment 2 is the pre-allocated spare");
    assert!(data_end < 4000);
    // The sealed segment 1 has no zero tail.
    let seg1 = std::fs::read(segment_path(tmp.path(), 1)).unwrap();
    assert_ne!(seg1.last(), Some(&0));

    // Clean reopen: the zero tail is not damage.
    let (j, rec) = open(&c);
    assert!(rec.report.truncated.is_none());
    assert_eq!(ids(&rec.messages), all);
    j.shutdown();

    for garbage_at in [data_end, data_end + 3000] {
        let mut b = pristine.clone();
        for (i, x) in b[garbage_at as usize..garbage_at as usize + 300]
            .iter_mut()
            .enumerate()
        {
            *x = (i % 200) as u8 + 1;
        }
        std::fs::write(&seg, &b).unwrap();
        let (j, rec) = open(&c);
        let t = rec.report.truncated.clone().expect("truncation reported");
        assert_eq!((t.file, t.offset), (seg.clone(), data_end));
        assert_eq!(ids(&rec.messages), all);
        j.append(vec![Op::Add(msg(1000, "/queue/p", b"9"))])
            .await
            .unwrap();
        j.shutdown();
        let (j, rec) = open(&c);
        assert!(rec.report.truncated.is_none());
        let mut want = all.clone();
        want.push(1000);
        assert_eq!(ids(&rec.messages), want);
        j.shutdown();
        std::fs::write(&seg, &pristine).unwrap();
    }
}

/// Writes `n` messages, one record and therefore one segment each
/// (segments 1..=n), with no producers.
async fn one_segment_per_message(c: &JournalConfig, n: u64) {
    let (j, _) = open(c);
    for id in 1..=n {
        j.append(vec![Op::Add(msg(id, "/queue/s", &body_for(id, 200)))])
            .await
            .unwrap();
    }
    j.shutdown();
    assert_eq!(segment_files(&c.dir).len() as u64, n);
}

#[tokio::test]
async fn corrupt_middle_segment_is_refused_with_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let c = small_cfg(tmp.path(), 300);
    one_segment_per_message(&c, 4).await;
    let seg2 = segment_path(tmp.path(), 2);
    let mut b = std::fs::read(&seg2).unwrap();
    let rec_off = header_len_no_producers();
    b[rec_off as usize + 30] ^= 0x40;
    std::fs::write(&seg2, &b).unwrap();
    match Journal::open(c.clone()) {
        Err(StoreError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, seg2);
            assert_eq!(offset, rec_off);
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r.report)),
    }
    // Nothing was modified by the refused open, and the lock was released.
    assert_eq!(std::fs::read(&seg2).unwrap(), b);
    assert!(matches!(Journal::open(c), Err(StoreError::Corrupt { .. })));
}

#[tokio::test]
async fn salvage_starts_past_a_corrupt_middle_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = small_cfg(tmp.path(), 300);
    one_segment_per_message(&c, 4).await;
    let seg2 = segment_path(tmp.path(), 2);
    let mut b = std::fs::read(&seg2).unwrap();
    let rec_off = header_len_no_producers();
    b[rec_off as usize + 30] ^= 0x40;
    std::fs::write(&seg2, &b).unwrap();
    c.salvage = true;
    let (j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [1, 3, 4]);
    assert_eq!(rec.report.salvaged.len(), 1);
    let s = &rec.report.salvaged[0];
    assert_eq!((s.file.clone(), s.offset), (seg2.clone(), rec_off));
    assert_eq!(s.dropped_bytes, b.len() as u64 - rec_off);
    let aside = tmp
        .path()
        .join(format!("journal-0000000000000002.log.corrupt-at-{rec_off}"));
    assert_eq!(std::fs::read(aside).unwrap(), &b[rec_off as usize..]);
    j.shutdown();
    // The damage was cut off: a normal open works now.
    c.salvage = false;
    let (j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [1, 3, 4]);
    j.shutdown();

    // A damaged header sets the whole segment aside.
    let seg3 = segment_path(tmp.path(), 3);
    let mut b = std::fs::read(&seg3).unwrap();
    b[12] ^= 1;
    std::fs::write(&seg3, &b).unwrap();
    assert!(matches!(
        Journal::open(c.clone()),
        Err(StoreError::Corrupt { offset: 0, .. })
    ));
    c.salvage = true;
    let (j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [1, 4]);
    assert_eq!(rec.report.salvaged[0].offset, 0);
    assert!(!seg3.exists());
    assert!(tmp
        .path()
        .join("journal-0000000000000003.log.corrupt")
        .exists());
    j.shutdown();
}

#[tokio::test]
async fn fully_acked_segments_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let c = small_cfg(tmp.path(), 300);
    let (j, _) = open(&c);
    for id in 1..=10 {
        j.append(vec![Op::Add(msg(id, "/queue/d", &body_for(id, 200)))])
            .await
            .unwrap();
    }
    assert_eq!(segment_files(tmp.path()).len(), 10);
    let acks = (1..=10).map(|id| Op::Ack { id }).collect();
    j.append(acks).await.unwrap();
    // Deletion runs after the sync; the next batch starts after it.
    j.flush().await.unwrap();
    j.flush().await.unwrap();
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].0, 11);
    let s = j.stats();
    assert_eq!(s.segments_deleted, 10);
    assert_eq!(s.segments_live, 1);
    assert_eq!(s.live_messages, 0);
    j.shutdown();
    let (_j, rec) = open(&c);
    assert!(rec.messages.is_empty());
    assert_eq!(
        rec.next_id, 11,
        "id counter survives via the header checkpoint"
    );
    assert_eq!(rec.report.segments, 1);
}

#[tokio::test]
async fn ack_segment_kept_while_acked_segment_exists_no_resurrection() {
    let tmp = tempfile::tempdir().unwrap();
    let c = small_cfg(tmp.path(), 100); // every record gets its own segment
    let (j, _) = open(&c);
    // R = segment 1: m1, m2.
    j.append(vec![
        Op::Add(msg(1, "/queue/r", b"one")),
        Op::Add(msg(2, "/queue/r", b"two")),
    ])
    .await
    .unwrap();
    // S = segment 2: the ack of m1 (refers to R).
    j.append(vec![Op::Ack { id: 1 }]).await.unwrap();
    j.append(vec![Op::Add(msg(3, "/queue/r", b"three"))])
        .await
        .unwrap();
    j.append(vec![Op::Add(msg(4, "/queue/r", b"four"))])
        .await
        .unwrap();
    j.flush().await.unwrap();
    j.flush().await.unwrap();
    // S has no live message and is not active, but R (m2 live) still exists.
    assert!(seg_exists(tmp.path(), 1));
    assert!(seg_exists(tmp.path(), 2), "ack segment must be kept");
    // Segment 3 holds live m3, so it is kept too.
    assert!(seg_exists(tmp.path(), 3));
    j.shutdown();

    // What deleting S would have done: m1 comes back.
    let copy = tempfile::tempdir().unwrap();
    for (_, p) in segment_files(tmp.path()) {
        std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(segment_path(copy.path(), 2)).unwrap();
    let (jc, rec) = open(&cfg(copy.path()));
    assert_eq!(
        ids(&rec.messages),
        [1, 2, 3, 4],
        "resurrection without the rule"
    );
    jc.shutdown();

    let (j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [2, 3, 4]);
    assert!(seg_exists(tmp.path(), 2), "recovery's GC keeps S too");
    // Ack m2: R becomes deletable, then S (in a later round).
    j.append(vec![Op::Ack { id: 2 }]).await.unwrap();
    j.flush().await.unwrap();
    j.flush().await.unwrap();
    assert!(!seg_exists(tmp.path(), 1));
    assert!(!seg_exists(tmp.path(), 2));
    assert!(seg_exists(tmp.path(), 3));
    j.shutdown();
    let (_j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [3, 4]);
}

#[tokio::test]
async fn dedup_table_survives_deletion_of_original_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let c = small_cfg(tmp.path(), 100);
    let (j, rec) = open(&c);
    assert!(rec.producers.is_empty());
    j.append(vec![Op::Add(with_producer(msg(1, "/q", b"a"), "p", 7))])
        .await
        .unwrap();
    j.append(vec![Op::Add(with_producer(msg(2, "/q", b"b"), "q", 3))])
        .await
        .unwrap();
    j.append(vec![Op::Add(with_producer(msg(3, "/q", b"c"), "p", 5))])
        .await
        .unwrap();
    j.append(vec![
        Op::Ack { id: 1 },
        Op::Ack { id: 2 },
        Op::Ack { id: 3 },
    ])
    .await
    .unwrap();
    j.append(vec![Op::Add(msg(4, "/q", b"d"))]).await.unwrap();
    j.flush().await.unwrap();
    j.flush().await.unwrap();
    for seq in 1..=4 {
        assert!(!seg_exists(tmp.path(), seq), "segment {seq} should be gone");
    }
    j.shutdown();
    let (_j, rec) = open(&c);
    let want: HashMap<String, u64> =
        [(producer_key("app", "p"), 7), (producer_key("app", "q"), 3)].into();
    assert_eq!(rec.producers, want);
    assert_eq!(ids(&rec.messages), [4]);
    assert_eq!(rec.next_id, 5);
}

#[tokio::test]
async fn read_body_beyond_the_cache_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = small_cfg(tmp.path(), 8 << 10);
    let (j, _) = open(&c);
    let bodies: Vec<Vec<u8>> = (1..=10).map(|id| body_for(id, 1000)).collect();
    for (i, b) in bodies.iter().enumerate() {
        j.append(vec![Op::Add(msg(i as u64 + 1, "/queue/big", b))])
            .await
            .unwrap();
    }
    // A record much larger than one of its bodies (read without verification).
    let big_a = body_for(11, 70_000);
    let big_b = body_for(12, 70_000);
    j.append(vec![
        Op::Add(msg(11, "/queue/big", &big_a)),
        Op::Add(msg(12, "/queue/big", &big_b)),
    ])
    .await
    .unwrap();
    j.append(vec![Op::Ack { id: 2 }]).await.unwrap();
    j.shutdown();

    c.body_cache_bytes = 3500;
    let (j, rec) = open(&c);
    assert_eq!(rec.messages.len(), 11);
    let loaded: Vec<u64> = rec
        .messages
        .iter()
        .filter(|m| m.body.is_some())
        .map(|m| m.id)
        .collect();
    // Bodies load in scan order until the budget is used up (message 2 was
    // loaded, then acked by the last record: its bytes count until then).
    assert_eq!(loaded, [1, 3], "bodies load in order up to the limit");
    for m in &rec.messages {
        assert_eq!(m.body_len as usize, if m.id > 10 { 70_000 } else { 1000 });
        let want: &[u8] = match m.id {
            11 => &big_a,
            12 => &big_b,
            id => &bodies[id as usize - 1],
        };
        assert_eq!(j.read_body(m.id).unwrap(), want, "body of {}", m.id);
        assert_eq!(j.read_body_async(m.id).await.unwrap(), want);
    }
    assert!(matches!(
        j.read_body(2),
        Err(StoreError::NotFound { id: 2 })
    ));
    assert!(matches!(
        j.read_body(99),
        Err(StoreError::NotFound { id: 99 })
    ));

    // Readable as soon as it is queued (lazy: not even synced yet).
    j.append_lazy(vec![Op::Add(msg(13, "/queue/big", b"fresh"))]);
    assert_eq!(j.read_body(13).unwrap(), &b"fresh"[..]);
    j.flush().await.unwrap();
    assert_eq!(j.read_body(13).unwrap(), &b"fresh"[..]);
    j.shutdown();
    assert!(matches!(j.read_body(13), Err(StoreError::Closed)));
}

#[tokio::test]
async fn read_body_detects_corruption_after_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path());
    c.body_cache_bytes = 0;
    let (j, _) = open(&c);
    j.append(vec![Op::Add(msg(1, "/q", &body_for(1, 500)))])
        .await
        .unwrap();
    j.shutdown();
    let (j, rec) = open(&c);
    assert!(rec.messages[0].body.is_none());
    // Damage the body after recovery.
    let seg = segment_path(tmp.path(), 1);
    let mut b = std::fs::read(&seg).unwrap();
    let end = b.iter().rposition(|&x| x != 0).unwrap();
    b[end - 10] ^= 0xff;
    std::fs::write(&seg, &b).unwrap();
    assert!(matches!(j.read_body(1), Err(StoreError::Corrupt { .. })));
}

#[tokio::test]
async fn second_open_of_same_dir_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let (j, _) = open(&c);
    match Journal::open(c.clone()) {
        Err(StoreError::Locked { path }) => assert_eq!(path, tmp.path().join("lock")),
        other => panic!("expected Locked, got {:?}", other.map(|(_, r)| r.report)),
    }
    j.shutdown();
    j.shutdown(); // idempotent
    let (_j, _) = open(&c);
}

/// Cuts the zero tail off a segment, as the writer does before it creates
/// the next segment (all test bodies end in non-zero bytes).
fn seal(path: &Path) {
    let b = std::fs::read(path).unwrap();
    let data_end = b.iter().rposition(|&x| x != 0).unwrap() + 1;
    std::fs::write(path, &b[..data_end]).unwrap();
}

#[tokio::test]
async fn empty_and_header_only_last_segments_are_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    // A zero-length first segment.
    std::fs::write(segment_path(tmp.path(), 1), b"").unwrap();
    let (j, rec) = open(&c);
    assert!(rec.report.truncated.is_none());
    j.append(vec![Op::Add(msg(1, "/q", b"1"))]).await.unwrap();
    j.shutdown();
    // A zero-length segment after a real one (crash right after creation;
    // the real one was sealed first: its zero tail cut off).
    seal(&segment_path(tmp.path(), 1));
    std::fs::write(segment_path(tmp.path(), 2), b"").unwrap();
    let (j, rec) = open(&c);
    assert!(rec.report.truncated.is_none());
    assert_eq!(ids(&rec.messages), [1]);
    j.append(vec![Op::Add(msg(2, "/q", b"2"))]).await.unwrap();
    j.shutdown();
    // A zero-filled segment (a renamed spare that never got its header).
    seal(&segment_path(tmp.path(), 2));
    std::fs::write(segment_path(tmp.path(), 3), vec![0u8; 8192]).unwrap();
    let (j, rec) = open(&c);
    assert!(rec.report.truncated.is_none());
    assert_eq!(ids(&rec.messages), [1, 2]);
    j.shutdown();
    // Header-only (plus zero tail): the journal just opened and closed.
    let (j, rec) = open(&c);
    assert!(rec.report.truncated.is_none());
    assert_eq!(ids(&rec.messages), [1, 2]);
    j.shutdown();
    let (_j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [1, 2]);
    assert_eq!(rec.next_id, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let (j, _) = open(&c);
    let futs: Vec<Append> = (1..=200)
        .map(|id| j.append(vec![Op::Add(msg(id, "/q", &[1u8; 512]))]))
        .collect();
    j.append_lazy(vec![Op::Add(msg(201, "/q", b"lazy"))]);
    let j2 = j.clone();
    tokio::task::spawn_blocking(move || j2.shutdown())
        .await
        .unwrap();
    for f in futs {
        f.await.unwrap();
    }
    assert!(matches!(
        j.append(vec![Op::Add(msg(300, "/q", b"x"))]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(j.flush().await, Err(StoreError::Closed)));
    j.shutdown();
    let (_j, rec) = open(&c);
    assert_eq!(rec.messages.len(), 201);
}

#[tokio::test]
async fn lazy_appends_are_synced_within_the_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let (j, _) = open(&c);
    let before = j.stats().fsyncs;
    j.append_lazy(vec![Op::Add(msg(1, "/q", b"lazy"))]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(j.stats().records, 1, "written with the next batch");
    let deadline = Instant::now() + Duration::from_millis(400);
    while j.stats().fsyncs == before {
        assert!(Instant::now() < deadline, "lazy record never synced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(j.stats().last_batch_records, 1);
}

#[test]
fn handles_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send_static<T: Send + 'static>() {}
    send_sync::<Journal>();
    send_static::<Append>();
    send_sync::<StoreError>();
}

#[tokio::test]
async fn empty_append_and_flush_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = open(&cfg(tmp.path()));
    j.flush().await.unwrap();
    j.append(Vec::new()).await.unwrap();
    assert_eq!(j.stats().records, 0);
    j.append_lazy(vec![Op::Add(msg(1, "/q", b"1"))]);
    j.flush().await.unwrap();
    let s = j.stats();
    assert_eq!((s.records, s.live_messages), (1, 1));
    assert!(s.fsyncs >= 1);
}

#[tokio::test]
async fn invalid_appends_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = open(&cfg(tmp.path()));
    let mut m = msg(1, "/q", b"abc");
    m.body = None;
    assert!(matches!(
        j.append(vec![Op::Add(m)]).await,
        Err(StoreError::InvalidOp { id: Some(1), .. })
    ));
    let mut m = msg(2, "/q", b"abc");
    m.body_len = 2;
    assert!(j.append(vec![Op::Add(m)]).await.is_err());
    let m = msg(3, "/q", &vec![0u8; MAX_RECORD_BYTES as usize + 1]);
    assert!(matches!(
        j.append(vec![Op::Add(m)]).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(j.stats().records, 0);
}

#[tokio::test]
async fn epoch_change_starts_a_new_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path());
    let (j, rec) = open(&c);
    assert_eq!(rec.report.last_epoch, None);
    j.append(vec![Op::Add(msg(1, "/q", b"1"))]).await.unwrap();
    j.shutdown();
    c.epoch = 5;
    let (j, rec) = open(&c);
    assert_eq!(rec.report.last_epoch, Some(0));
    assert_eq!(segment_files(tmp.path()).len(), 2);
    j.append(vec![Op::Add(msg(2, "/q", b"2"))]).await.unwrap();
    j.shutdown();
    let (_j, rec) = open(&c);
    assert_eq!(rec.report.last_epoch, Some(5));
    assert_eq!(ids(&rec.messages), [1, 2]);
    assert_eq!(segment_files(tmp.path()).len(), 2);
}

#[tokio::test]
async fn rolls_without_spare_and_with_huge_records() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = small_cfg(tmp.path(), 1000);
    c.preallocate = false;
    let (j, _) = open(&c);
    let big = body_for(2, 5000);
    j.append(vec![Op::Add(msg(1, "/q", b"small"))])
        .await
        .unwrap();
    j.append(vec![Op::Add(msg(2, "/q", &big))]).await.unwrap();
    j.append(vec![Op::Add(msg(3, "/q", b"small"))])
        .await
        .unwrap();
    j.shutdown();
    assert_eq!(segment_files(tmp.path()).len(), 3);
    let (_j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [1, 2, 3]);
    assert_eq!(rec.messages[1].body.as_deref(), Some(&big[..]));
}

// ---------------------------------------------------------------------------
// Epoch fencing and lock modes.

fn ha_cfg(dir: &Path, epoch: u64, lock: LockMode, segment_bytes: u64) -> JournalConfig {
    let mut c = small_cfg(dir, segment_bytes);
    c.epoch = epoch;
    c.lock = lock;
    c
}

/// Every file of `dir` but the lock file, with its contents.
fn dir_snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "lock")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn epoch_file(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("EPOCH")).ok()
}

/// The header of segment `seq` as written on disk.
fn header_of(dir: &Path, seq: u64) -> format::SegmentHeader {
    let b = std::fs::read(segment_path(dir, seq)).unwrap();
    let (len, _, _) = format::parse_frame(b[..format::FRAME_LEN].try_into().unwrap());
    format::decode_header(&b[format::FRAME_LEN..format::FRAME_LEN + len as usize]).unwrap()
}

#[tokio::test]
async fn fenced_open_is_refused_and_touches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (j, _) = open(&ha_cfg(dir, 5, LockMode::Required, 4096));
    j.append(vec![Op::Add(msg(1, "/q", b"one"))]).await.unwrap();
    j.shutdown();
    assert_eq!(epoch_file(dir).as_deref(), Some("5\n"));
    let before = dir_snapshot(dir);
    for (epoch, store) in [(3, 5), (4, 5), (0, 5)] {
        match Journal::open(ha_cfg(dir, epoch, LockMode::Required, 4096)) {
            Err(StoreError::Fenced {
                store_epoch,
                our_epoch,
            }) => assert_eq!((store_epoch, our_epoch), (store, epoch)),
            other => panic!("expected Fenced, got {:?}", other.map(|(_, r)| r.report)),
        }
        assert_eq!(dir_snapshot(dir), before, "refused open of epoch {epoch}");
    }
    // A higher epoch only in the EPOCH file (a master that crashed in its
    // open) fences too.
    std::fs::write(dir.join("EPOCH"), "9\n").unwrap();
    let before = dir_snapshot(dir);
    assert!(matches!(
        Journal::open(ha_cfg(dir, 7, LockMode::Required, 4096)),
        Err(StoreError::Fenced {
            store_epoch: 9,
            our_epoch: 7
        })
    ));
    assert_eq!(dir_snapshot(dir), before);
    // A garbled EPOCH file is refused, not guessed at.
    std::fs::write(dir.join("EPOCH"), "nine\n").unwrap();
    assert!(matches!(
        Journal::open(ha_cfg(dir, 10, LockMode::Required, 4096)),
        Err(StoreError::Corrupt { offset: 0, .. })
    ));
    std::fs::write(dir.join("EPOCH"), "9\n").unwrap();
    // The same or a higher epoch opens.
    let (j, rec) = open(&ha_cfg(dir, 9, LockMode::Required, 4096));
    assert_eq!(ids(&rec.messages), [1]);
    assert_eq!(j.epoch(), 9);
    assert!(!j.is_fenced());
}

#[tokio::test]
async fn stale_writer_is_fenced_and_its_late_records_are_never_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A: the old master (epoch 1). No spare files: its late roll creates a
    // segment of its own.
    let mut ca = ha_cfg(dir, 1, LockMode::Required, 2048);
    ca.preallocate = false;
    let (a, rec) = open(&ca);
    assert!(rec.messages.is_empty());
    assert_eq!(epoch_file(dir).as_deref(), Some("1\n"));
    for id in 1..=6 {
        a.append(vec![Op::Add(msg(id, "/queue/ha", &body_for(id, 300)))])
            .await
            .unwrap();
    }
    a.append(vec![Op::Ack { id: 2 }]).await.unwrap();
    let a_segments = segment_files(dir);
    assert!(a_segments.len() >= 2, "{a_segments:?}");

    // B: the new master (epoch 2), while A (paused, say) still holds the lock.
    let (b, rec) = open(&ha_cfg(dir, 2, LockMode::BestEffort, 2048));
    assert_eq!(ids(&rec.messages), [1, 3, 4, 5, 6]);
    assert_eq!(rec.report.last_epoch, Some(1));
    assert_eq!(epoch_file(dir).as_deref(), Some("2\n"));
    // B never appends to A's segments: it started one carrying the fence.
    let b_first = segment_files(dir).last().unwrap().0;
    assert_eq!(b_first, a_segments.last().unwrap().0 + 1);
    let h = header_of(dir, b_first);
    assert_eq!(h.epoch, 2);
    let fence = h.fence.expect("fence in the new epoch's first segment");
    assert_eq!(
        fence.iter().map(|e| e.seq).collect::<Vec<_>>(),
        a_segments.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    b.append(vec![
        Op::Add(msg(100, "/queue/ha", b"from B")),
        Op::Ack { id: 3 },
    ])
    .await
    .unwrap();

    // A wakes up: lazy records (one big enough to roll), then one with a waiter.
    a.append_lazy(vec![Op::Ack { id: 1 }]);
    a.append_lazy(vec![Op::Add(msg(7, "/queue/ha", &body_for(7, 3000)))]);
    match a.append(vec![Op::Add(msg(8, "/queue/ha", b"late"))]).await {
        Err(StoreError::Fenced {
            store_epoch: 2,
            our_epoch: 1,
        }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(a.is_fenced());
    assert!(a.stats().fenced);
    assert!(matches!(
        a.append(vec![Op::Ack { id: 4 }]).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(a.flush().await, Err(StoreError::Fenced { .. })));
    a.append_lazy(vec![Op::Ack { id: 5 }]); // dropped, no panic
                                            // A rolled past B's segment into segments of its own (epoch 1): one
                                            // for the big record, one for the next.
    let late: Vec<u64> = segment_files(dir)
        .into_iter()
        .map(|s| s.0)
        .filter(|&s| s > b_first)
        .collect();
    assert_eq!(late.len(), 2, "A's late segments");
    for &seq in &late {
        assert_eq!(header_of(dir, seq).epoch, 1);
    }
    assert!(!b.is_fenced());
    b.append(vec![Op::Add(msg(101, "/queue/ha", b"B again"))])
        .await
        .unwrap();
    b.shutdown();

    // C (epoch 3): exactly B's view; A's late bytes ignored, its segment set aside.
    let (c, rec) = open(&ha_cfg(dir, 3, LockMode::BestEffort, 2048));
    assert_eq!(ids(&rec.messages), [1, 4, 5, 6, 100, 101]);
    assert!(rec.report.fenced_bytes > 0, "{:?}", rec.report);
    let stale: Vec<String> = rec
        .report
        .stale_segments
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let want: Vec<String> = late
        .iter()
        .map(|s| format!("journal-{s:016}.log.stale"))
        .collect();
    assert_eq!(stale, want);
    for &seq in &late {
        assert!(!seg_exists(dir, seq));
    }
    assert_eq!(rec.next_id, 102);
    c.shutdown();
    a.shutdown();
    // Stable across reopens (same epoch: no new segment).
    let n = segment_files(dir).len();
    let (c, rec) = open(&ha_cfg(dir, 3, LockMode::Required, 2048));
    assert_eq!(ids(&rec.messages), [1, 4, 5, 6, 100, 101]);
    assert!(rec.report.stale_segments.is_empty());
    assert_eq!(segment_files(dir).len(), n);
    c.shutdown();
}

#[tokio::test]
async fn stale_writer_deletes_no_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (a, _) = open(&ha_cfg(dir, 1, LockMode::Required, 300));
    for id in 1..=4 {
        a.append(vec![Op::Add(msg(id, "/q", &body_for(id, 200)))])
            .await
            .unwrap();
    }
    let before = segment_files(dir);
    assert_eq!(before.len(), 4);
    let (b, _) = open(&ha_cfg(dir, 2, LockMode::BestEffort, 300));
    // A acks everything: segments 1-3 would be deletable for A.
    a.append_lazy((1..=4).map(|id| Op::Ack { id }).collect());
    assert!(matches!(a.flush().await, Err(StoreError::Fenced { .. })));
    assert!(a.is_fenced());
    for (seq, _) in &before {
        assert!(
            seg_exists(dir, *seq),
            "segment {seq} deleted by a fenced writer"
        );
    }
    assert_eq!(a.stats().segments_deleted, 0);
    a.shutdown();
    b.shutdown();
    let (_c, rec) = open(&ha_cfg(dir, 2, LockMode::Required, 300));
    assert_eq!(ids(&rec.messages), [1, 2, 3, 4]);
}

#[tokio::test]
async fn fence_survives_deletion_of_the_fencing_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (a, _) = open(&ha_cfg(dir, 1, LockMode::Required, 1 << 20));
    a.append(vec![Op::Add(msg(1, "/q", &body_for(1, 200)))])
        .await
        .unwrap();
    a.append(vec![Op::Add(msg(2, "/q", &body_for(2, 200)))])
        .await
        .unwrap();
    let (b, rec) = open(&ha_cfg(dir, 2, LockMode::BestEffort, 300));
    assert_eq!(ids(&rec.messages), [1, 2]);
    // Segment 1 (A's) is fenced by segment 2 (B's first).
    assert_eq!(segment_files(dir).len(), 2);
    // A appends to segment 1 past the fence, then is fenced.
    a.append_lazy(vec![
        Op::Add(msg(3, "/q", &body_for(3, 100))),
        Op::Ack { id: 1 },
    ]);
    assert!(matches!(a.flush().await, Err(StoreError::Fenced { .. })));
    a.shutdown();
    // B's messages: 10 goes into segment 2, 11 rolls into 3 (whose header
    // carries the fence on), the ack of 10 into 4: segment 2 is deleted
    // while segment 1 (m1, m2 live) stays.
    b.append(vec![Op::Add(msg(10, "/q", &body_for(10, 50)))])
        .await
        .unwrap();
    b.append(vec![Op::Add(msg(11, "/q", &body_for(11, 200)))])
        .await
        .unwrap();
    b.append(vec![Op::Ack { id: 10 }, Op::Ack { id: 2 }])
        .await
        .unwrap();
    b.flush().await.unwrap();
    b.flush().await.unwrap();
    assert!(seg_exists(dir, 1));
    assert!(!seg_exists(dir, 2), "{:?}", segment_files(dir));
    let carried = header_of(dir, 3).fence.expect("fence carried forward");
    assert_eq!(carried.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    b.shutdown();
    // Without segment 2, the carried fence still hides A's late records.
    for epoch in [2, 3] {
        let (j, rec) = open(&ha_cfg(dir, epoch, LockMode::Required, 300));
        assert_eq!(ids(&rec.messages), [1, 11], "epoch {epoch}");
        assert!(rec.report.fenced_bytes > 0);
        assert!(rec.report.truncated.is_none());
        j.shutdown();
    }
    // Once m1 is acked, B's successor deletes A's segment as usual.
    let (j, _) = open(&ha_cfg(dir, 3, LockMode::Required, 300));
    j.append(vec![Op::Ack { id: 1 }]).await.unwrap();
    j.flush().await.unwrap();
    j.flush().await.unwrap();
    assert!(!seg_exists(dir, 1));
    j.shutdown();
    let (_j, rec) = open(&ha_cfg(dir, 3, LockMode::Required, 300));
    assert_eq!(ids(&rec.messages), [11]);
}

#[tokio::test]
async fn new_epoch_leaves_a_torn_older_segment_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut c = cfg(dir);
    c.preallocate = false;
    let (j, _) = open(&c);
    j.append(vec![Op::Add(msg(1, "/q", &body_for(1, 40)))])
        .await
        .unwrap();
    j.shutdown();
    // A torn write at the end of the standalone journal.
    let seg1 = segment_path(dir, 1);
    let mut b = std::fs::read(&seg1).unwrap();
    let clean_len = b.len() as u64;
    b.extend_from_slice(&[7u8; 33]);
    std::fs::write(&seg1, &b).unwrap();
    let (j, rec) = open(&ha_cfg(dir, 1, LockMode::Required, 4096));
    assert_eq!(ids(&rec.messages), [1]);
    let t = rec.report.truncated.expect("torn tail reported");
    assert_eq!((t.offset, t.dropped_bytes), (clean_len, 33));
    // Not cut off: the segment belongs to the older epoch and is fenced.
    assert_eq!(std::fs::read(&seg1).unwrap(), b);
    let fence = header_of(dir, 2).fence.unwrap();
    assert_eq!((fence[0].seq, fence[0].end), (1, clean_len));
    j.append(vec![Op::Add(msg(2, "/q", b"two"))]).await.unwrap();
    j.shutdown();
    let (_j, rec) = open(&ha_cfg(dir, 1, LockMode::Required, 4096));
    assert_eq!(ids(&rec.messages), [1, 2]);
    assert!(rec.report.truncated.is_none());
    assert_eq!(rec.report.fenced_bytes, 33);
}

#[tokio::test]
async fn fencing_journal_sets_aside_blank_and_headerless_last_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = ha_cfg(dir, 4, LockMode::Required, 4096);
    let (j, _) = open(&c);
    j.append(vec![Op::Add(msg(1, "/q", b"1"))]).await.unwrap();
    j.shutdown();
    // Files created by a roll that never wrote a header (ours or a stale
    // writer's that may still hold them open).
    std::fs::write(segment_path(dir, 2), vec![0u8; 8192]).unwrap();
    std::fs::write(segment_path(dir, 3), b"\x05\x00\x00").unwrap();
    // And leftovers of crashes.
    std::fs::write(dir.join("journal.fence-4.tmp"), b"partial").unwrap();
    std::fs::write(dir.join("journal.spare-3.tmp"), b"").unwrap();
    let (j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [1]);
    assert_eq!(rec.report.stale_segments.len(), 2, "{:?}", rec.report);
    assert!(!dir.join("journal.fence-4.tmp").exists());
    assert!(!dir.join("journal.spare-3.tmp").exists());
    // Same epoch, fence already in place: it continues segment 1.
    assert_eq!(segment_files(dir).len(), 1);
    j.append(vec![Op::Add(msg(2, "/q", b"2"))]).await.unwrap();
    j.shutdown();
    let (_j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [1, 2]);
}

#[tokio::test]
async fn writer_restores_a_lowered_epoch_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (j, _) = open(&ha_cfg(dir, 6, LockMode::Required, 4096));
    // An older master paused in the middle of its open renames its EPOCH in.
    std::fs::write(dir.join("EPOCH"), "5\n").unwrap();
    j.append(vec![Op::Add(msg(1, "/q", b"1"))]).await.unwrap();
    assert_eq!(epoch_file(dir).as_deref(), Some("6\n"));
    std::fs::remove_file(dir.join("EPOCH")).unwrap();
    j.append(vec![Op::Add(msg(2, "/q", b"2"))]).await.unwrap();
    assert_eq!(epoch_file(dir).as_deref(), Some("6\n"));
    // A higher one fences it, lazy appends included.
    std::fs::write(dir.join("EPOCH"), "7\n").unwrap();
    j.append_lazy(vec![Op::Add(msg(3, "/q", b"3"))]);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !j.is_fenced() {
        assert!(Instant::now() < deadline, "lazy sync never checked EPOCH");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        j.append(vec![Op::Add(msg(4, "/q", b"4"))]).await,
        Err(StoreError::Fenced {
            store_epoch: 7,
            our_epoch: 6
        })
    ));
    // The waiters for the backlog are released too.
    j.wait_backlog_below(0).await;
}

#[tokio::test]
async fn standalone_journal_writes_no_epoch_file_and_no_fence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = small_cfg(dir, 300);
    let (j, _) = open(&c);
    for id in 1..=3 {
        j.append(vec![Op::Add(msg(id, "/q", &body_for(id, 200)))])
            .await
            .unwrap();
    }
    assert_eq!(j.epoch(), 0);
    j.shutdown();
    assert!(epoch_file(dir).is_none());
    for (seq, _) in segment_files(dir) {
        let h = header_of(dir, seq);
        assert_eq!((h.epoch, h.fence), (0, None));
    }
    let (j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [1, 2, 3]);
    assert!(rec.report.stale_segments.is_empty());
    assert_eq!(rec.report.fenced_bytes, 0);
    assert!(!j.is_fenced());
}

#[test]
fn dir_lock_try_and_blocking_acquire() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("created");
    let first = DirLock::try_acquire(&dir).unwrap().expect("free lock");
    assert!(dir.is_dir());
    assert_eq!(first.path(), dir.join("lock"));
    assert!(DirLock::try_acquire(&dir).unwrap().is_none());
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    let waiter = std::thread::spawn(move || {
        let l = DirLock::acquire_blocking(&d).unwrap();
        tx.send(()).unwrap();
        l
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "acquired while held"
    );
    drop(first);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("acquire_blocking returns once the holder drops the lock");
    let second = waiter.join().unwrap();
    assert!(DirLock::try_acquire(&dir).unwrap().is_none());
    drop(second);
    assert!(DirLock::try_acquire(&dir).unwrap().is_some());
}

#[tokio::test]
async fn dir_lock_waits_for_an_open_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (j, _) = open(&cfg(&dir));
    assert!(DirLock::try_acquire(&dir).unwrap().is_none());
    let d = dir.clone();
    let waiter = tokio::task::spawn_blocking(move || DirLock::acquire_blocking(&d));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    j.shutdown();
    let lock = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("lock released by shutdown")
        .unwrap()
        .unwrap();
    // The slave opens with the lock it waited for.
    let mut c = cfg(&dir);
    c.lock = LockMode::Held(lock);
    let (j, _) = Journal::open(c).unwrap();
    j.append(vec![Op::Add(msg(1, "/q", b"1"))]).await.unwrap();
}

#[tokio::test]
async fn held_lock_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lock = DirLock::try_acquire(dir).unwrap().unwrap();
    let mut c = cfg(dir);
    c.lock = LockMode::Held(lock);
    let twin = c.clone(); // shares the lock
    let (j, _) = Journal::open(c).unwrap();
    j.append(vec![Op::Add(msg(1, "/q", b"1"))]).await.unwrap();
    // Nobody else gets in: not another process or journal, not a second
    // journal with the same lock.
    assert!(matches!(
        Journal::open(cfg(dir)),
        Err(StoreError::Locked { .. })
    ));
    assert!(DirLock::try_acquire(dir).unwrap().is_none());
    assert!(matches!(
        Journal::open(twin.clone()),
        Err(StoreError::Locked { .. })
    ));
    j.shutdown();
    // The twin still shares the lock; once shut down it can be reused.
    assert!(DirLock::try_acquire(dir).unwrap().is_none());
    let (j, rec) = Journal::open(twin).unwrap();
    assert_eq!(ids(&rec.messages), [1]);
    j.shutdown();
    drop(j);
    assert!(DirLock::try_acquire(dir).unwrap().is_some());

    // A lock of another directory is refused.
    let other = tempfile::tempdir().unwrap();
    let mut c = cfg(dir);
    c.lock = LockMode::Held(DirLock::try_acquire(other.path()).unwrap().unwrap());
    assert!(matches!(
        Journal::open(c),
        Err(StoreError::InvalidOp { id: None, .. })
    ));

    // BestEffort takes a free lock like Required does.
    let mut c = cfg(dir);
    c.lock = LockMode::BestEffort;
    let (j, _) = Journal::open(c).unwrap();
    assert!(matches!(
        Journal::open(cfg(dir)),
        Err(StoreError::Locked { .. })
    ));
    j.shutdown();
}

#[test]
fn new_epoch_segment_skips_numbers_taken_by_another_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dir_file = std::fs::File::open(dir).unwrap();
    // A stale writer created 5 and 6 under our feet.
    std::fs::write(segment_path(dir, 5), b"theirs").unwrap();
    std::fs::write(segment_path(dir, 6), b"").unwrap();
    let fence = [format::FenceEntry { seq: 4, end: 99 }];
    let active =
        writer::create_fence_segment(dir, &dir_file, 5, 3, 42, &HashMap::new(), &fence).unwrap();
    assert_eq!(active.seq, 7);
    assert_eq!(std::fs::read(segment_path(dir, 5)).unwrap(), b"theirs");
    let h = header_of(dir, 7);
    assert_eq!((h.seq, h.epoch, h.next_id), (7, 3, 42));
    assert_eq!(h.fence.as_deref(), Some(&fence[..]));
    assert!(!dir.join("journal.fence-3.tmp").exists());
    assert_eq!(
        std::fs::metadata(segment_path(dir, 7)).unwrap().len(),
        active.pos
    );
}

#[tokio::test]
async fn segment_shorter_than_its_fenced_end_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut c = cfg(dir);
    c.preallocate = false;
    let (j, _) = open(&c);
    j.append(vec![Op::Add(msg(1, "/q", &body_for(1, 40)))])
        .await
        .unwrap();
    j.shutdown();
    let len = std::fs::metadata(segment_path(dir, 1)).unwrap().len();
    // A fence claiming more data in segment 1 than it holds.
    let mut h = Vec::new();
    let fence = [format::FenceEntry {
        seq: 1,
        end: len + 100,
    }];
    format::put_header(&mut h, 2, 1, 2, Some(&fence));
    std::fs::write(segment_path(dir, 2), &h).unwrap();
    let mut c = ha_cfg(dir, 1, LockMode::Required, 4096);
    match Journal::open(c.clone()) {
        Err(StoreError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (segment_path(dir, 1), len));
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r.report)),
    }
    c.salvage = true;
    let (_j, rec) = open(&c);
    assert_eq!(ids(&rec.messages), [1]);
    assert_eq!(rec.report.salvaged.len(), 1);
}

/// Cost of the writer's EPOCH check (open + read + close + parse):
/// `cargo test -- --ignored --nocapture bench_epoch_check`
#[test]
#[ignore]
fn bench_epoch_check() {
    let tmp = tempfile::tempdir_in(env_dir()).unwrap();
    std::fs::write(tmp.path().join("EPOCH"), "12345\n").unwrap();
    let n = 100_000u32;
    let t0 = Instant::now();
    for _ in 0..n {
        assert_eq!(fence::read_epoch_file(tmp.path()).unwrap(), Some(12345));
    }
    let per = t0.elapsed() / n;
    eprintln!("EPOCH check: {per:?} per call");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// Append a record with these ops: `true` = add a new message,
        /// `false` = ack the k-th live message (modulo), with lazy flag.
        Record(Vec<(bool, usize)>, bool),
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (proptest::collection::vec((any::<bool>(), any::<usize>()), 1..4), any::<bool>())
                .prop_map(|(ops, lazy)| Step::Record(ops, lazy)),
            1 => Just(Step::Reopen),
        ]
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Recovery matches a simple model for random operation sequences
        /// and segment sizes (including segment deletion).
        #[test]
        fn recovery_matches_model(
            steps in proptest::collection::vec(step(), 1..40),
            seg in 150u64..2000,
            prealloc in any::<bool>(),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let mut c = small_cfg(tmp.path(), seg);
            c.preallocate = prealloc;
            let rt = rt();
            let mut model: Vec<StoredMessage> = Vec::new();
            let mut next = 1u64;
            let (mut j, _) = open(&c);
            for s in steps {
                match s {
                    Step::Reopen => {
                        j.shutdown();
                        let (nj, rec) = open(&c);
                        j = nj;
                        prop_assert_eq!(&rec.messages, &model);
                        prop_assert!(rec.report.truncated.is_none());
                        prop_assert_eq!(rec.next_id, next);
                    }
                    Step::Record(ops, lazy) => {
                        let mut rec_ops = Vec::new();
                        for (add, k) in ops {
                            if add || model.is_empty() {
                                let m = msg(next, "/queue/m", &body_for(next, next as usize % 90));
                                next += 1;
                                model.push(m.clone());
                                rec_ops.push(Op::Add(m));
                            } else {
                                let m = model.remove(k % model.len());
                                rec_ops.push(Op::Ack { id: m.id });
                            }
                        }
                        if lazy {
                            j.append_lazy(rec_ops);
                        } else {
                            rt.block_on(j.append(rec_ops)).unwrap();
                        }
                    }
                }
            }
            j.shutdown();
            let (_j, rec) = open(&c);
            prop_assert_eq!(&rec.messages, &model);
            // Segments are deleted when nothing is needed from them: with no
            // live messages only the active segment may remain.
            if model.is_empty() {
                let n = segment_files(tmp.path()).len();
                prop_assert!(n <= 2, "{} segments left", n);
            }
        }

        /// Arbitrary bytes appended to, or written over, the last segment
        /// never panic recovery and never produce messages that were not
        /// written.
        #[test]
        fn garbage_in_last_segment_is_cut(
            garbage in proptest::collection::vec(any::<u8>(), 1..300),
            overwrite_at in proptest::option::of(0usize..400),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let mut c = cfg(tmp.path());
            c.preallocate = false;
            let rt = rt();
            let (j, _) = open(&c);
            let written: Vec<StoredMessage> =
                (1..=3).map(|id| msg(id, "/q", &body_for(id, 50))).collect();
            for m in &written {
                rt.block_on(j.append(vec![Op::Add(m.clone())])).unwrap();
            }
            j.shutdown();
            let seg = segment_path(tmp.path(), 1);
            let mut b = std::fs::read(&seg).unwrap();
            match overwrite_at {
                None => b.extend_from_slice(&garbage),
                Some(at) => {
                    let at = at.min(b.len());
                    let end = (at + garbage.len()).min(b.len());
                    b[at..end].copy_from_slice(&garbage[..end - at]);
                }
            }
            std::fs::write(&seg, &b).unwrap();
            let (j, rec) = open(&c);
            prop_assert!(rec.messages.len() <= 3);
            prop_assert_eq!(&rec.messages[..], &written[..rec.messages.len()]);
            j.shutdown();
            let (_j, rec2) = open(&c);
            prop_assert!(rec2.report.truncated.is_none());
            prop_assert_eq!(rec2.messages, rec.messages);
        }

        /// Arbitrary bytes as an earlier segment are refused (or salvaged)
        /// without panicking.
        #[test]
        fn garbage_middle_segment_is_refused(
            garbage in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(segment_path(tmp.path(), 1), &garbage).unwrap();
            std::fs::write(segment_path(tmp.path(), 2), b"").unwrap();
            let mut c = cfg(tmp.path());
            let refused = matches!(
                Journal::open(c.clone()),
                Err(StoreError::Corrupt { offset: 0, .. })
            );
            prop_assert!(refused);
            c.salvage = true;
            let (_j, rec) = open(&c);
            prop_assert!(rec.messages.is_empty());
            prop_assert_eq!(rec.report.salvaged.len(), 1);
        }
    }
}

/// Throughput and recovery figures (release mode, run by hand):
/// `cargo test --release -- --ignored --nocapture bench_`
#[test]
#[ignore]
fn bench_append_throughput() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for &(appenders, prealloc) in &[
        (8usize, true),
        (8, false),
        (16, true),
        (32, true),
        (64, true),
        (128, true),
    ] {
        let tmp = tempfile::tempdir_in(env_dir()).unwrap();
        let mut c = small_cfg(tmp.path(), 16 << 20);
        c.preallocate = prealloc;
        let (j, _) = open(&c);
        let per = 40_000 / appenders as u64 * 2;
        let body = Bytes::from(vec![0x5au8; 1024]);
        // Steady state: get past the first segment (never pre-allocated)
        // with acked filler, then time.
        let mut filler = 10_000_000u64;
        while j.stats().segments_live + (j.stats().segments_deleted as usize) < 2 {
            for _ in 0..1000 {
                filler += 1;
                j.append_lazy(vec![
                    Op::Add(msg(filler, "/queue/filler", &body)),
                    Op::Ack { id: filler },
                ]);
            }
            futures_lite_block_on(j.flush()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let (r0, b0, f0) = {
            let s = j.stats();
            (s.records, s.bytes, s.fsyncs)
        };
        let t0 = Instant::now();
        rt.block_on(async {
            let mut hs = Vec::new();
            for a in 0..appenders as u64 {
                let j = j.clone();
                let body = body.clone();
                hs.push(tokio::spawn(async move {
                    for i in 0..per {
                        let id = 1 + a * per + i;
                        let m = StoredMessage {
                            id,
                            destination: "/queue/bench".into(),
                            priority: 4,
                            expires: 0,
                            timestamp: id,
                            producer: None,
                            headers: vec![("content-type".into(), "text/plain".into())],
                            body: Some(body.clone()),
                            body_len: 1024,
                        };
                        j.append(vec![Op::Add(m)]).await.unwrap();
                    }
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
        });
        let dt = t0.elapsed().as_secs_f64();
        let s = j.stats();
        let (records, bytes, fsyncs) = (s.records - r0, s.bytes - b0, s.fsyncs - f0);
        eprintln!(
            "appenders={appenders:4} prealloc={prealloc:5} records={records} time={dt:.2}s  {:.0} appends/s  {:.1} MB/s on disk ({:.1} MB/s of bodies)  fsyncs={fsyncs} records/fsync={:.1} segments={}",
            records as f64 / dt,
            bytes as f64 / dt / 1e6,
            records as f64 * 1024.0 / dt / 1e6,
            records as f64 / fsyncs as f64,
            s.segments_live,
        );
        j.shutdown();
    }
}

fn env_dir() -> PathBuf {
    std::env::var_os("JOURNAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

#[test]
#[ignore]
fn bench_recovery() {
    let only: Option<u64> = std::env::var("JOURNAL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok());
    for &n in &[100_000u64, 1_000_000] {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let tmp = tempfile::tempdir_in(env_dir()).unwrap();
        // With JOURNAL_BENCH_KEEP the data set is kept (and reused) in
        // <JOURNAL_BENCH_DIR>/journal-bench-<n>, e.g. for profiling recovery.
        let keep = std::env::var_os("JOURNAL_BENCH_KEEP").is_some();
        let dir = if keep {
            env_dir().join(format!("journal-bench-{n}"))
        } else {
            tmp.path().to_path_buf()
        };
        let mut c = cfg(&dir);
        if let Some(b) = std::env::var("JOURNAL_BENCH_CACHE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            c.body_cache_bytes = b;
        }
        let (j, rec) = open(&c);
        if rec.messages.len() as u64 == n {
            j.shutdown();
        } else {
            write_backlog(&j, n);
        }
        for _ in 0..2 {
            let cpu0 = thread_cpu_ns();
            let (j, rec) = open(&c);
            let cpu = thread_cpu_ns() - cpu0;
            let loaded = rec.messages.iter().filter(|m| m.body.is_some()).count();
            eprintln!(
                "recovered {} live messages ({} bodies loaded, {} segments, {} MB) in {:.3}s (on-CPU {:.3}s)",
                rec.messages.len(),
                loaded,
                rec.report.segments,
                rec.report.bytes_scanned / 1_000_000,
                rec.report.elapsed.as_secs_f64(),
                cpu as f64 / 1e9,
            );
            assert_eq!(rec.messages.len() as u64, n);
            let last = rec.messages.last().unwrap();
            assert_eq!(j.read_body(last.id).unwrap().len(), 1024);
            j.shutdown();
        }
    }
}

/// CPU time of the calling thread in ns (0 if unavailable), to tell the
/// journal's cost from time lost to other processes on a shared machine.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Appends `n` 1 KiB messages (lazily, flushing every 1000) and shuts down.
fn write_backlog(j: &Journal, n: u64) {
    let body = Bytes::from(vec![0x33u8; 1024]);
    let t0 = Instant::now();
    let mut id = 1;
    while id <= n {
        // Lazy appends in chunks of 1000 messages, then a flush.
        for _ in 0..1000 {
            let m = StoredMessage {
                id,
                destination: "/queue/backlog".into(),
                priority: 4,
                expires: 0,
                timestamp: id,
                producer: Some(ProducerSeq {
                    producer: format!("p{}", id % 16),
                    seq: id,
                    user: Arc::from("app"),
                }),
                headers: vec![("content-type".into(), "text/plain".into())],
                body: Some(body.clone()),
                body_len: 1024,
            };
            j.append_lazy(vec![Op::Add(m)]);
            id += 1;
        }
        futures_lite_block_on(j.flush()).unwrap();
    }
    eprintln!(
        "wrote {n} messages in {:.2}s ({} segments)",
        t0.elapsed().as_secs_f64(),
        j.stats().segments_live
    );
    j.shutdown();
}

/// Minimal `block_on` for the benchmark (no runtime needed: the writer
/// thread completes the future).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[tokio::test]
async fn backlog_is_counted_until_written_and_waiters_wake() {
    let tmp = tempfile::tempdir().unwrap();
    let c = small_cfg(tmp.path(), 1 << 20);
    let (j, _) = open(&c);
    assert_eq!(j.backlog_bytes(), 0);
    for id in 1..=200 {
        j.append_lazy(vec![Op::Add(msg(id, "/queue/b", &body_for(id, 512)))]);
    }
    // Whatever is still queued is counted; once written, nothing is.
    j.wait_backlog_below(1).await;
    assert_eq!(j.backlog_bytes(), 0);
    j.flush().await.unwrap();
    assert_eq!(j.backlog_bytes(), 0);
    j.shutdown();
    // After shutdown the wait returns at once instead of hanging.
    j.wait_backlog_below(0).await;
}

/// Scan options for [`fuzzing::scan_segment`] over segment 1.
fn scan_opts(is_last: bool, buf_len: usize, claimed_len: Option<u64>) -> fuzzing::ScanOptions {
    fuzzing::ScanOptions {
        seq: 1,
        is_last,
        buf_len,
        claimed_len,
        body_cache_bytes: u64::MAX,
        compact_min_dead: 2,
        max_record_bytes: None,
    }
}

/// A real segment 1 holding adds, acks and an ack of an unknown id, and the
/// ids `open` recovers from it.
async fn small_segment(dir: &Path) -> (Vec<u8>, Vec<u64>) {
    let mut c = cfg(dir);
    c.preallocate = false;
    let (j, _) = open(&c);
    for id in 1..=6u64 {
        let m = with_producer(msg(id, "/queue/f", &body_for(id, 20)), "p", id);
        j.append(vec![Op::Add(m)]).await.unwrap();
    }
    j.append(vec![
        Op::Ack { id: 2 },
        Op::Ack { id: 4 },
        Op::Ack { id: 77 },
    ])
    .await
    .unwrap();
    j.shutdown();
    drop(j);
    let (j, rec) = open(&c);
    j.shutdown();
    (
        std::fs::read(segment_path(dir, 1)).unwrap(),
        ids(&rec.messages),
    )
}

#[tokio::test]
async fn fuzzing_scan_recovers_what_open_does() {
    let tmp = tempfile::tempdir().unwrap();
    let (seg, live) = small_segment(tmp.path()).await;
    assert_eq!(live, vec![1, 3, 5, 6]);
    for buf_len in [1, 9, 50, 1 << 20] {
        for is_last in [false, true] {
            let s = fuzzing::scan_segment(&seg, &scan_opts(is_last, buf_len, None)).unwrap();
            assert!(s.violations.is_empty(), "{s:?}");
            assert_eq!(s.bad, None);
            assert_eq!(s.data_end, seg.len() as u64);
            assert_eq!(s.messages.iter().map(|m| m.id).collect::<Vec<_>>(), live);
            assert_eq!(s.next_id, 7);
            assert_eq!(s.producers, vec![(producer_key("app", "p"), 6)]);
        }
    }
    // A torn last record is cut; the records before it are kept.
    let torn = &seg[..seg.len() - 3];
    let s = fuzzing::scan_segment(torn, &scan_opts(true, 16, None)).unwrap();
    assert!(s.violations.is_empty(), "{s:?}");
    assert!(s.bad.is_some());
    assert_eq!(s.messages.len(), 6);
}

/// Regression (found by the `journal_records` fuzz target): a segment that
/// shrinks to end exactly at a record boundary while recovery reads it (an
/// older-epoch writer sealing it) ended cleanly when a large read had already
/// seen it shrink, but was reported as a torn record ("1 bytes left, too short
/// for a record frame") when the scanner reached the boundary first. It now
/// ends cleanly whatever the read sizes.
#[tokio::test]
async fn segment_shrinking_at_a_record_boundary_ends_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (seg, live) = small_segment(tmp.path()).await;
    let len = seg.len() as u64;
    // Every buffer size: some make the last read end exactly at the boundary.
    for extra in [1, 8, 9, 100] {
        for buf_len in 1..=seg.len() + 1 {
            let opts = scan_opts(false, buf_len, Some(len + extra));
            let s = fuzzing::scan_segment(&seg, &opts).unwrap();
            assert!(s.violations.is_empty(), "{s:?}");
            assert_eq!(s.bad, None, "extra {extra}, buffer {buf_len}");
            assert_eq!(s.data_end, len);
            assert_eq!(s.messages.iter().map(|m| m.id).collect::<Vec<_>>(), live);
        }
    }
    // The fuzzer's case: a header-only segment, a 1-byte buffer, 1 byte gone.
    let header_end = fuzzing::scan_segment(&seg, &scan_opts(false, 64, None))
        .unwrap()
        .header_end as usize;
    let header_only = &seg[..header_end];
    let opts = scan_opts(false, 1, Some(header_end as u64 + 1));
    let s = fuzzing::scan_segment(header_only, &opts).unwrap();
    assert_eq!((s.bad, s.data_end), (None, header_end as u64));
    // Shrinking inside a record is still damage, at that record.
    let cut = &seg[..seg.len() - 3];
    for buf_len in [1, 16, seg.len()] {
        let s = fuzzing::scan_segment(cut, &scan_opts(false, buf_len, Some(len))).unwrap();
        assert!(s.violations.is_empty(), "{s:?}");
        let (off, _) = s.bad.expect("damage reported");
        assert!(off < cut.len() as u64 && off == s.data_end);
    }
}

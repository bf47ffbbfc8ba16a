//! The producer table in the journal (forgetting, checkpoints, format version 1) and the rule
//! that a complete, CRC-valid record recovery cannot accept is refused, never cut off as a torn
//! tail (issue 10, item 1).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use super::super::format::{self, FRAME_LEN, MAGIC, REC_HEADER, REC_OPS};
use super::*;

/// A journal in `dir` (no pre-allocation: the file ends where the data does) holding messages
/// 1 and 2 in segment 1, closed. Returns the config and segment 1's length.
async fn two_messages(dir: &Path) -> (JournalConfig, u64) {
    let mut c = cfg(dir);
    c.preallocate = false;
    let (j, _) = open(&c);
    for id in 1..=2 {
        j.append(vec![Op::Add(msg(id, "/queue/a", &body_for(id, 40)))])
            .await
            .unwrap();
    }
    j.shutdown();
    let len = std::fs::metadata(segment_path(dir, 1)).unwrap().len();
    (c, len)
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all_at(bytes, f.metadata().unwrap().len()).unwrap();
    f.sync_all().unwrap();
}

/// A CRC-valid record of type `typ` around `payload`.
fn record(typ: u8, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let start = format::begin_record(&mut buf, typ);
    buf.extend_from_slice(payload);
    format::finish_record(&mut buf, start);
    buf
}

#[tokio::test]
async fn a_complete_record_recovery_cannot_accept_is_refused_not_cut_off() {
    // Unknown record type; an ops record with an unknown operation tag; an ops record whose
    // payload does not decode. All complete, all with a right CRC.
    let cases: [(&str, Vec<u8>); 3] = [
        ("unknown type", record(9, b"from a newer version")),
        ("unknown op", record(REC_OPS, &[1, 0, 0, 0, 77])),
        ("short op", record(REC_OPS, &[1, 0, 0, 0, 2, 1, 2])),
    ];
    for (what, bad) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (mut c, len) = two_messages(tmp.path()).await;
        let seg = segment_path(tmp.path(), 1);
        append_bytes(&seg, &bad);
        let total = std::fs::metadata(&seg).unwrap().len();
        match Journal::open(c.clone()) {
            Err(StoreError::Corrupt { file, offset, .. }) => {
                assert_eq!((file, offset), (seg.clone(), len), "{what}");
            }
            Err(e) => panic!("{what}: {e}"),
            Ok((_, rec)) => panic!(
                "{what}: opened with {:?}, truncated {:?}",
                ids(&rec.messages),
                rec.report.truncated
            ),
        }
        // Nothing was cut off.
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), total, "{what}");

        // --salvage starts, keeps what precedes it and a copy of what it drops.
        c.salvage = true;
        let (j, rec) = open(&c);
        assert_eq!(ids(&rec.messages), [1, 2], "{what}");
        let kept = seg.with_file_name(format!("journal-0000000000000001.log.corrupt-at-{len}"));
        assert_eq!(std::fs::read(&kept).unwrap(), bad, "{what}");
        j.shutdown();
    }
}

#[tokio::test]
async fn an_oversized_complete_header_is_refused_and_a_torn_one_cut() {
    // Segment 2 starts with a header-typed record one byte over the limit (the shape of the
    // 313 MB header the producer table once made). Sparse: it costs no disk.
    let len = MAX_RECORD_BYTES + 1;
    let mut crc = crc32c::crc32c(&[REC_HEADER]);
    let zeros = vec![0u8; 1 << 20];
    let mut left = u64::from(len);
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        crc = crc32c::crc32c_append(crc, &zeros[..n]);
        left -= n as u64;
    }
    for (what, crc) in [("complete", crc), ("torn", crc ^ 1)] {
        let tmp = tempfile::tempdir().unwrap();
        let (c, _) = two_messages(tmp.path()).await;
        let seg2 = segment_path(tmp.path(), 2);
        let f = std::fs::File::create(&seg2).unwrap();
        let mut frame = Vec::new();
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.push(REC_HEADER);
        f.write_all_at(&frame, 0).unwrap();
        f.set_len(FRAME_LEN as u64 + u64::from(len)).unwrap();
        drop(f);
        match (what, Journal::open(c.clone())) {
            (
                "complete",
                Err(StoreError::Corrupt {
                    file,
                    offset,
                    reason,
                }),
            ) => {
                assert_eq!((file, offset), (seg2.clone(), 0));
                assert!(reason.contains("exceeds the maximum"), "{reason}");
                assert!(seg2.exists());
            }
            ("torn", Ok((j, rec))) => {
                // Not CRC-valid: a torn write, cut off as before.
                assert_eq!(ids(&rec.messages), [1, 2]);
                assert_eq!(rec.report.truncated.as_ref().map(|t| t.offset), Some(0));
                j.shutdown();
            }
            (what, Err(e)) => panic!("{what}: {e}"),
            (what, Ok((_, rec))) => panic!("{what}: opened, truncated {:?}", rec.report.truncated),
        }
    }
}

#[tokio::test]
async fn forgotten_producers_leave_the_journal_and_its_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    // Tiny segments: every append starts a new one, so the originals get deleted.
    let c = small_cfg(tmp.path(), 100);
    let (j, _) = open(&c);
    j.append(vec![Op::Add(with_producer(msg(1, "/q", b"a"), "p", 7))])
        .await
        .unwrap();
    j.append(vec![Op::Add(with_producer(msg(2, "/q", b"b"), "q", 3))])
        .await
        .unwrap();
    j.append(vec![Op::Forget {
        key: producer_key("app", "p"),
    }])
    .await
    .unwrap();
    j.append(vec![Op::Ack { id: 1 }, Op::Ack { id: 2 }])
        .await
        .unwrap();
    j.append(vec![Op::Add(msg(3, "/q", b"c"))]).await.unwrap();
    j.flush().await.unwrap();
    j.flush().await.unwrap();
    for seq in 1..=3 {
        assert!(!seg_exists(tmp.path(), seq), "segment {seq} should be gone");
    }
    j.shutdown();
    let (_j, rec) = open(&c);
    let want: HashMap<String, u64> = [(producer_key("app", "q"), 3)].into();
    assert_eq!(rec.producers, want);
    assert_eq!(ids(&rec.messages), [3]);
}

#[tokio::test]
async fn a_checkpoint_larger_than_a_segment_is_chunked_and_does_not_roll_every_append() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = small_cfg(tmp.path(), 64 << 10);
    c.preallocate = false;
    let (j, _) = open(&c);
    // 3,000 producers with 1 KB ids: a 3 MB table, 48 segments' worth, in 1 MiB records.
    let mut want = HashMap::new();
    for id in 1..=3_000u64 {
        let p = format!("{id:0>1000}");
        want.insert(producer_key("app", &p), id);
        j.append(vec![Op::Add(with_producer(msg(id, "/q", b"x"), &p, id))])
            .await
            .unwrap();
    }
    let before = segment_files(tmp.path()).len();
    for id in 3_001..=3_200u64 {
        j.append(vec![Op::Add(msg(id, "/q", &[7u8; 100]))])
            .await
            .unwrap();
    }
    // 200 small appends after the table outgrew the segment size: a segment or two, not 200.
    let after = segment_files(tmp.path()).len();
    assert!(after - before <= 2, "{before} -> {after} segments");
    j.shutdown();
    let (_j, rec) = open(&c);
    assert_eq!(rec.producers, want);
    assert_eq!(rec.messages.len(), 3_200);
}

#[tokio::test]
async fn version_1_segments_load_messages_but_not_unscoped_producer_ids() {
    // A segment as format version 1 wrote it: raw producer ids in the header and in the Add.
    let mut seg = Vec::new();
    let start = format::begin_record(&mut seg, REC_HEADER);
    seg.extend_from_slice(&MAGIC);
    seg.extend_from_slice(&1u16.to_le_bytes());
    seg.extend_from_slice(&0u16.to_le_bytes());
    for v in [1u64, 0, 1] {
        seg.extend_from_slice(&v.to_le_bytes());
    }
    seg.extend_from_slice(&1u32.to_le_bytes());
    seg.extend_from_slice(&3u32.to_le_bytes());
    seg.extend_from_slice(b"old");
    seg.extend_from_slice(&9u64.to_le_bytes());
    format::finish_record(&mut seg, start);
    let mut m = with_producer(msg(1, "/queue/old", b"body"), "raw", 4);
    m.producer.as_mut().unwrap().user = Arc::from("");
    let start = format::begin_record(&mut seg, REC_OPS);
    format::put_op_count(&mut seg, 1);
    format::put_op(&mut seg, start, Op::Add(m));
    format::finish_record(&mut seg, start);

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(segment_path(tmp.path(), 1), &seg).unwrap();
    let (j, rec) = open(&cfg(tmp.path()));
    assert_eq!(ids(&rec.messages), [1]);
    assert_eq!(
        rec.messages[0]
            .producer
            .as_ref()
            .map(|p| p.producer.as_str()),
        Some("raw")
    );
    assert!(rec.producers.is_empty());
    assert_eq!(rec.report.unscoped_producer_ids, 2);
    j.shutdown();
}

//! Journal recovery scanner: arbitrary bytes as a segment file, read by recovery's own scanner
//! (`store::fuzzing::scan_segment`): record framing, CRC, segment header, ops decoding and
//! applying, the zero tail of the last segment. It must never panic, the state it recovers must
//! be consistent (`violations` empty), and the result must not depend on the scan buffer size.
//!
//! Input: `[flags][buffer][cache] segment bytes...`
//! * flags bit 0: scan as the last segment; bit 1: name the segment after the sequence number its
//!   header claims (otherwise 1); bit 2: claim a longer file (it "shrinks" while read); bits 3-7:
//!   compaction threshold;
//! * buffer: initial scan buffer of 1-256 bytes (recovery's is 1 MiB: small ones exercise refills);
//! * cache: body cache of `16 * cache` bytes (255: unlimited).
#![no_main]

use fabricmq_broker::store::fuzzing::{scan_segment, ScanOptions, ScanSummary};
use libfuzzer_sys::fuzz_target;

/// Offset of the sequence number in a segment file: record frame (9), magic (8), version (2),
/// flags (2).
const HEADER_SEQ_AT: usize = 9 + 8 + 2 + 2;

fn scan(bytes: &[u8], opts: &ScanOptions) -> ScanSummary {
    let summary = scan_segment(bytes, opts).expect("no I/O error from bytes in memory");
    assert!(
        summary.violations.is_empty(),
        "recovered state inconsistent: {:?}\n{summary:?}",
        summary.violations
    );
    summary
}

fuzz_target!(|input: &[u8]| {
    let [flags, buffer, cache, bytes @ ..] = input else {
        return;
    };
    let seq = match bytes.get(HEADER_SEQ_AT..HEADER_SEQ_AT + 8) {
        Some(b) if flags & 2 != 0 => u64::from_le_bytes(b.try_into().unwrap_or_default()),
        _ => 1,
    };
    let shrinks = flags & 4 != 0;
    let opts = ScanOptions {
        seq,
        is_last: flags & 1 != 0,
        buf_len: usize::from(*buffer) + 1,
        claimed_len: shrinks.then(|| bytes.len() as u64 + u64::from(*buffer) + 1),
        body_cache_bytes: match cache {
            255 => u64::MAX,
            c => u64::from(*c) * 16,
        },
        compact_min_dead: usize::from(flags >> 3),
        // Sometimes a tiny record limit, so complete over-long records are reached.
        max_record_bytes: (*cache == 254).then_some(64),
    };
    let small = scan(bytes, &opts);

    // A buffer that takes the whole file in one read, as recovery's 1 MiB one does for a small
    // segment: the same result.
    let big = scan(
        bytes,
        &ScanOptions {
            buf_len: bytes.len() + 1,
            compact_min_dead: 4096,
            ..opts
        },
    );
    if shrinks {
        // Where the file is found to end depends on the reads: only the reason may differ.
        let strip = |s: &ScanSummary| ScanSummary {
            bad: s.bad.as_ref().map(|(off, _)| (*off, String::new())),
            ..s.clone()
        };
        assert_eq!(
            strip(&small),
            strip(&big),
            "result depends on the buffer size"
        );
    } else {
        assert_eq!(small, big, "result depends on the buffer size");
    }
});

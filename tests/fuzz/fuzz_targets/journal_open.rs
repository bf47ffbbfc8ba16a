//! `Journal::open` over arbitrary segment files: one or two segments written into a directory on
//! tmpfs (when there is one), opened with salvage off or on and with epoch 0 or a fencing epoch.
//! It must never panic; a corrupt earlier segment refused without salvage must open with it;
//! every recovered message's body must read back; and a second open of what the first one left
//! must recover the same state without cutting or salvaging anything more.
//!
//! Input: `[flags][split hi][split lo] bytes...`: the first `split` bytes are segment 1, the rest
//! (if any) segment 2. Flags bit 0: salvage; bits 1-2: epoch 0, 1, 2 or 7; bit 3: name each
//! segment after the sequence number its header claims.
#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fabricmq_broker::store::{Journal, JournalConfig, Recovered, StoreError};
use libfuzzer_sys::fuzz_target;

/// Offset of the sequence number in a segment file.
const HEADER_SEQ_AT: usize = 9 + 8 + 2 + 2;

/// A directory of this process's own: under `$FABRICMQ_FUZZ_DIR` (set by `deploy/fuzz.sh`), or
/// on tmpfs, or in the temporary directory.
fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = match std::env::var_os("FABRICMQ_FUZZ_DIR") {
            Some(d) => PathBuf::from(d),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        base.join(format!("fabricmq-fuzz-open-{}", std::process::id()))
    })
}

fn config(dir: &Path, salvage: bool, epoch: u64) -> JournalConfig {
    let mut c = JournalConfig::new(dir);
    c.salvage = salvage;
    c.epoch = epoch;
    c.preallocate = false;
    c.segment_bytes = 1 << 16;
    c
}

/// What must be the same after a second open.
fn state(r: &Recovered) -> (Vec<u64>, u64, HashMap<String, u64>) {
    (
        r.messages.iter().map(|m| m.id).collect(),
        r.next_id,
        r.producers.clone(),
    )
}

fuzz_target!(|input: &[u8]| {
    let [flags, hi, lo, bytes @ ..] = input else {
        return;
    };
    let split = usize::from(u16::from_be_bytes([*hi, *lo])).min(bytes.len());
    let (first, second) = bytes.split_at(split);
    let salvage = flags & 1 != 0;
    let epoch = [0, 1, 2, 7][usize::from(flags >> 1 & 3)];
    let claimed = |seg: &[u8], default: u64| match seg.get(HEADER_SEQ_AT..HEADER_SEQ_AT + 8) {
        Some(b) if flags & 8 != 0 => u64::from_le_bytes(b.try_into().unwrap_or_default()),
        _ => default,
    };

    let dir = work_dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create the fuzzing directory");
    let mut segments = vec![(claimed(first, 1), first)];
    if !second.is_empty() {
        segments.push((claimed(second, 2), second));
    }
    for (seq, seg) in &segments {
        let path = dir.join(format!("journal-{seq:016}.log"));
        std::fs::write(path, seg).expect("write a segment");
    }

    let mut salvage = salvage;
    let mut opened = Journal::open(config(dir, salvage, epoch));
    if let (Err(StoreError::Corrupt { .. }), false) = (&opened, salvage) {
        salvage = true;
        opened = Journal::open(config(dir, salvage, epoch));
        assert!(
            !matches!(opened, Err(StoreError::Corrupt { .. })),
            "still corrupt with salvage: {opened:?}"
        );
    }
    let Ok((journal, first_rec)) = opened else {
        return;
    };
    if !salvage {
        assert!(
            first_rec.report.salvaged.is_empty(),
            "salvaged without salvage"
        );
    }
    for m in &first_rec.messages {
        let body = journal
            .read_body(m.id)
            .unwrap_or_else(|e| panic!("body of recovered message {} unreadable: {e}", m.id));
        assert_eq!(body.len(), m.body_len as usize, "body length of {}", m.id);
        if let Some(b) = &m.body {
            assert_eq!(
                b, &body,
                "loaded body of {} differs from the one read",
                m.id
            );
        }
    }
    journal.shutdown();
    drop(journal);

    let (journal, again) = Journal::open(config(dir, salvage, epoch))
        .unwrap_or_else(|e| panic!("second open failed: {e}\nfirst: {:?}", first_rec.report));
    assert_eq!(
        state(&again),
        state(&first_rec),
        "second open recovered another state\nfirst: {:?}\nsecond: {:?}",
        first_rec.report,
        again.report
    );
    assert!(
        again.report.truncated.is_none() && again.report.salvaged.is_empty(),
        "second open cut more: {:?}",
        again.report
    );
    journal.shutdown();
});

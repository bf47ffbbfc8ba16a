//! Entry point for the fuzz targets in `tests/fuzz` (not a stable API).
//!
//! [`scan_segment`] runs recovery's own segment scanner (the code
//! [`super::Journal::open`] runs over every segment file: record framing,
//! CRC, [`super::MAX_RECORD_BYTES`], the segment header, decoding and
//! applying ops records, the zero-tail rule of the last segment) over bytes
//! in memory instead of a file, and summarises what it recovered together
//! with any broken internal invariant it finds.

use super::StoreError;

/// How [`scan_segment`] reads the bytes.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Sequence number the segment's file name gives (its header must match).
    pub seq: u64,
    /// Scan it as the last segment (an all-zero tail is a clean end).
    pub is_last: bool,
    /// Initial scan buffer size (recovery uses 1 MiB; small values exercise
    /// the refill and grow paths). At least 1 is used.
    pub buf_len: usize,
    /// Length the file appears to have when recovery takes it; more than
    /// the bytes given simulates a file that shrinks while being read.
    /// `None`: the length of the bytes.
    pub claimed_len: Option<u64>,
    /// [`super::JournalConfig::body_cache_bytes`].
    pub body_cache_bytes: u64,
    /// Tombstones in the recovered message list before it is compacted
    /// (recovery uses 4096).
    pub compact_min_dead: usize,
    /// Largest record payload accepted; `None`: [`super::MAX_RECORD_BYTES`]
    /// (a small value reaches the limit without a huge input).
    pub max_record_bytes: Option<u32>,
}

/// A recovered message, as the summary reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMessage {
    /// Message id.
    pub id: u64,
    /// Destination.
    pub destination: String,
    /// Body length.
    pub body_len: u32,
    /// Whether recovery loaded the body (within `body_cache_bytes`).
    pub body_loaded: bool,
}

/// What [`scan_segment`] recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanSummary {
    /// `(seq, epoch, next_id)` of a valid segment header.
    pub header: Option<(u64, u64, u64)>,
    /// End of the header record.
    pub header_end: u64,
    /// End of the last valid record.
    pub data_end: u64,
    /// First invalid record: offset and reason.
    pub bad: Option<(u64, String)>,
    /// The invalid record is complete with a valid CRC but cannot be
    /// accepted: recovery refuses it instead of cutting it off as torn.
    pub bad_complete: bool,
    /// Valid records applied (the header included).
    pub records: u64,
    /// Bytes counted as scanned.
    pub bytes_scanned: u64,
    /// Live messages in append order.
    pub messages: Vec<LiveMessage>,
    /// 1 + the highest message id seen (or the header's `next_id`).
    pub next_id: u64,
    /// Producer table, sorted.
    pub producers: Vec<(String, u64)>,
    /// Broken invariants of the recovered state (index, message list,
    /// loaded bodies, offsets); empty when all hold.
    pub violations: Vec<String>,
}

/// Scans `bytes` as the segment file `opts.seq` with recovery's scanner.
///
/// Never panics; an `Err` can only be an I/O error, which bytes in memory
/// do not produce.
pub fn scan_segment(bytes: &[u8], opts: &ScanOptions) -> Result<ScanSummary, StoreError> {
    super::recovery::scan_bytes(bytes, opts)
}

//! Recovery: scans the segment files in order, rebuilds the live message set,
//! the index and the per-segment book-keeping, and repairs a torn tail of the
//! last segment. Which files it reads, and how far, comes from the plan made
//! by [`super::fence::plan`] (fences and stale segments).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::fence::{self, Plan};
use super::format::{self, DecodedOp, FenceEntry, SegmentHeader, FRAME_LEN, MAX_RECORD_BYTES};
use super::producers;
use super::state::{Loc, SegmentInfo, State};
use super::{io_err, JournalConfig, RecoveryReport, StoreError, StoredMessage, Truncation};

/// Read buffer size for scanning (grows for larger records). Small enough
/// to stay in the CPU cache between the copy from the page cache and the
/// CRC/decode pass, large enough to make the syscall cost negligible.
const SCAN_BUF: usize = 1 << 20;

/// Tombstones in the recovered message list before it is compacted.
const COMPACT_MIN_DEAD: usize = 4096;

/// The last segment as recovery left it, for the writer to continue.
pub(super) struct LastSegment {
    pub seq: u64,
    pub path: PathBuf,
    /// Read/write handle.
    pub file: File,
    /// End of the valid data (where the next record goes).
    pub data_end: u64,
    /// End of the header record (0 without header).
    pub header_end: u64,
    /// File length (larger than `data_end` when pre-allocated).
    pub file_len: u64,
    /// Its header, or `None` when it has none yet (empty, zero-filled, or the
    /// header was torn and cut off).
    pub header: Option<SegmentHeader>,
}

/// Everything recovery produced.
pub(super) struct RecoveryOutput {
    pub messages: Vec<StoredMessage>,
    pub producers: HashMap<String, u64>,
    pub next_id: u64,
    pub report: RecoveryReport,
    pub state: State,
    pub last: Option<LastSegment>,
    /// End of the accepted data of every segment still present, in order:
    /// the entries of a new fence.
    pub ends: Vec<FenceEntry>,
}

/// Result of scanning one segment.
struct SegScan {
    header: Option<SegmentHeader>,
    /// End of the header record and the producer checkpoint that follows it.
    header_end: u64,
    /// End of the last valid record.
    data_end: u64,
    /// First invalid record: offset and reason.
    bad: Option<(u64, String)>,
    /// The invalid record is complete and its CRC is right, but recovery
    /// cannot accept it (does not decode, unknown type, too large, names
    /// another segment): never a torn write, so never cut off as one.
    bad_complete: bool,
}

/// What the scanner found next.
enum Item {
    Record {
        off: u64,
        typ: u8,
        payload: Range<usize>,
        len: usize,
    },
    End,
    Bad {
        off: u64,
        reason: String,
        /// A complete, CRC-valid record that cannot be accepted (see
        /// [`SegScan::bad_complete`]), as opposed to a torn or damaged one.
        complete: bool,
    },
}

/// Positioned reads from a segment's bytes: a file, or a byte slice (the
/// fuzzing entry point, [`scan_bytes`]).
pub(super) trait SegmentSource {
    /// Reads into `buf` from offset `off`; `Ok(0)` at the end.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
}

impl SegmentSource for File {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, off)
    }
}

impl SegmentSource for [u8] {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let start = usize::try_from(off).unwrap_or(usize::MAX).min(self.len());
        let src = self.get(start..).unwrap_or_default();
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
}

/// Sequential reader over one segment with a large buffer: one `pread` per
/// buffer fill, never per record.
struct Scanner<'a, S: SegmentSource + ?Sized> {
    file: &'a S,
    /// Largest record payload accepted ([`MAX_RECORD_BYTES`]).
    max_record: u32,
    path: &'a Path,
    file_len: u64,
    buf: &'a mut Vec<u8>,
    start: usize,
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
}

impl<'a, S: SegmentSource + ?Sized> Scanner<'a, S> {
    fn new(
        file: &'a S,
        path: &'a Path,
        file_len: u64,
        buf: &'a mut Vec<u8>,
        max_record: u32,
    ) -> Self {
        Scanner {
            file,
            max_record,
            path,
            file_len,
            buf,
            start: 0,
            end: 0,
            base: 0,
        }
    }

    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            op,
            path: self.path.to_path_buf(),
            source,
        }
    }

    /// Makes at least `n` bytes available at `start`. The caller checked
    /// that `file_len` covers them; returns `false` if the file ended first
    /// (it shrank since its length was taken: a writer of an older epoch
    /// sealed it), and then lowers `file_len` to where it ended.
    fn ensure(&mut self, n: usize) -> Result<bool, StoreError> {
        if self.end - self.start >= n {
            return Ok(true);
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.base += self.start as u64;
        self.end -= self.start;
        self.start = 0;
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        let file_pos = self.base + self.end as u64;
        let want = ((self.buf.len() - self.end) as u64).min(self.file_len - file_pos) as usize;
        let end = self.end;
        let mut got = 0;
        while got < want {
            let dst = &mut self.buf[end + got..end + want];
            match self.file.read_at(dst, file_pos + got as u64) {
                Ok(0) => {
                    self.file_len = file_pos + got as u64;
                    break;
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io("read segment")(e)),
            }
        }
        self.end += got;
        Ok(self.end - self.start >= n)
    }

    /// The item for a file that ended early (see [`Scanner::ensure`]).
    fn shrunk(&self, off: u64) -> Item {
        Item::Bad {
            off,
            reason: format!("segment shrank to {} bytes while being read", self.file_len),
            complete: false,
        }
    }

    fn payload(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    fn next(&mut self) -> Result<Item, StoreError> {
        let off = self.base + self.start as u64;
        if off >= self.file_len {
            return Ok(Item::End);
        }
        // Read (up to) the frame before judging the length: a file that
        // shrank to end exactly here ends cleanly whether or not an earlier
        // read already saw it shrink (found by fuzzing: with a large buffer
        // the shrink was seen and the scan ended cleanly, with a small one
        // it was reported as a torn record).
        let want = (self.file_len - off).min(FRAME_LEN as u64) as usize;
        if !self.ensure(want)? {
            if off >= self.file_len {
                return Ok(Item::End);
            }
            return Ok(self.shrunk(off));
        }
        let remaining = self.file_len - off;
        if remaining < FRAME_LEN as u64 {
            return Ok(Item::Bad {
                off,
                reason: format!("{remaining} bytes left, too short for a record frame"),
                complete: false,
            });
        }
        let mut frame = [0u8; FRAME_LEN];
        frame.copy_from_slice(&self.buf[self.start..self.start + FRAME_LEN]);
        if frame == [0u8; FRAME_LEN] {
            return Ok(Item::Bad {
                off,
                reason: "zero-filled (never written) space".into(),
                complete: false,
            });
        }
        let (len, crc, typ) = format::parse_frame(&frame);
        let total = FRAME_LEN as u64 + u64::from(len);
        if total > remaining {
            return Ok(Item::Bad {
                off,
                reason: format!(
                    "record of {total} bytes extends past the end of the file ({remaining} bytes left)"
                ),
                complete: false,
            });
        }
        if len > self.max_record {
            // Complete in the file: a torn write if its CRC is wrong, a record
            // recovery must not accept (and must not cut off) if it is right.
            let complete = self.crc_matches(off + FRAME_LEN as u64, u64::from(len), typ, crc)?;
            let max = self.max_record;
            return Ok(Item::Bad {
                off,
                reason: if complete {
                    format!("complete record of {len} bytes exceeds the maximum of {max} bytes")
                } else {
                    format!("record length {len} exceeds the maximum {max}")
                },
                complete,
            });
        }
        let total = total as usize;
        if !self.ensure(total)? {
            return Ok(self.shrunk(off));
        }
        let payload = self.start + FRAME_LEN..self.start + total;
        if format::record_crc(typ, &self.buf[payload.clone()]) != crc {
            return Ok(Item::Bad {
                off,
                reason: "CRC mismatch".into(),
                complete: false,
            });
        }
        self.start += total;
        Ok(Item::Record {
            off,
            typ,
            payload,
            len: total,
        })
    }

    /// Whether the CRC of the `len` payload bytes at `from` (a record of type
    /// `typ` too large to buffer) is `crc`, read in buffer-sized pieces.
    /// Consumes the scanner's buffered state.
    fn crc_matches(&mut self, from: u64, len: u64, typ: u8, crc: u32) -> Result<bool, StoreError> {
        self.start = 0;
        self.end = 0;
        let mut acc = crc32c::crc32c(&[typ]);
        let mut pos = from;
        let end = from + len;
        while pos < end {
            let n = (end - pos).min(self.buf.len() as u64) as usize;
            let n = match self.file.read_at(&mut self.buf[..n], pos) {
                Ok(0) => return Ok(false),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io("read segment")(e)),
            };
            acc = crc32c::crc32c_append(acc, &self.buf[..n]);
            pos += n as u64;
        }
        Ok(acc == crc)
    }

    /// Whether every byte from `from` to the end of the file is zero.
    /// Consumes the scanner's buffered state.
    fn rest_is_zero(&mut self, from: u64) -> Result<bool, StoreError> {
        let mut pos = from;
        self.start = 0;
        self.end = 0;
        while pos < self.file_len {
            let n = (self.file_len - pos).min(self.buf.len() as u64) as usize;
            let n = match self.file.read_at(&mut self.buf[..n], pos) {
                // The file shrank: what is left was checked.
                Ok(0) => return Ok(true),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io("read segment")(e)),
            };
            if self.buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            pos += n as u64;
        }
        Ok(true)
    }
}

/// Mutable recovery context.
struct Ctx<'c> {
    config: &'c JournalConfig,
    state: State,
    /// Recovered messages in append order; `None` = acked since.
    msgs: Vec<Option<StoredMessage>>,
    dead: usize,
    producers: HashMap<String, u64>,
    next_id: u64,
    /// Body bytes currently loaded.
    loaded: u64,
    report: RecoveryReport,
    ops: Vec<DecodedOp>,
    /// Tombstones before the message list is compacted ([`COMPACT_MIN_DEAD`];
    /// lower in [`scan_bytes`] so that fuzzing reaches the compaction).
    compact_min_dead: usize,
    /// Largest record payload accepted ([`MAX_RECORD_BYTES`]; lower in
    /// [`scan_bytes`] so tests and fuzzing reach the limit cheaply).
    max_record: u32,
}

impl Ctx<'_> {
    fn kill_slot(&mut self, slot: u32) {
        if let Some(m) = self.msgs.get_mut(slot as usize).and_then(Option::take) {
            if m.body.is_some() {
                self.loaded -= u64::from(m.body_len);
            }
            self.dead += 1;
        }
    }

    /// Applies one ops record (already CRC-checked). Nothing is applied if
    /// the payload does not decode.
    fn apply(&mut self, seg: u64, rec_off: u64, payload: &[u8]) -> Result<(), &'static str> {
        let mut ops = std::mem::take(&mut self.ops);
        let res = format::decode_ops(payload, &mut ops);
        if let Err(e) = res {
            self.ops = ops;
            return Err(e);
        }
        let rec_len = (FRAME_LEN + payload.len()) as u32;
        for op in ops.drain(..) {
            match op {
                DecodedOp::Add { mut msg, body_rel } => {
                    let id = msg.id;
                    self.next_id = self.next_id.max(id.saturating_add(1));
                    if let Some(p) = &msg.producer {
                        match p.key() {
                            Some(k) => producers::note_owned(&mut self.producers, k, p.seq),
                            None => self.report.unscoped_producer_ids += 1,
                        }
                    }
                    let len = u64::from(msg.body_len);
                    if self.loaded + len <= self.config.body_cache_bytes {
                        // In bounds: `decode_ops` checked the body lies in the payload.
                        let start = body_rel as usize - FRAME_LEN;
                        msg.body = payload
                            .get(start..start + msg.body_len as usize)
                            .map(Bytes::copy_from_slice);
                        if msg.body.is_some() {
                            self.loaded += len;
                        }
                    }
                    let slot = self.msgs.len() as u32;
                    self.msgs.push(Some(msg));
                    let loc = Loc {
                        seg,
                        rec_off,
                        rec_len,
                        body_rel,
                        body_len: len as u32,
                        slot,
                    };
                    if let Some(old) = self.state.add(id, loc) {
                        tracing::warn!(
                            id,
                            "journal recovery: message id added twice; keeping the later one"
                        );
                        self.kill_slot(old.slot);
                    }
                }
                DecodedOp::Ack(id) => {
                    if let Some(loc) = self.state.ack(id, seg) {
                        self.kill_slot(loc.slot);
                    }
                }
                DecodedOp::Forget(key) => {
                    self.producers.remove(&key);
                }
            }
        }
        self.ops = ops;
        if self.dead >= self.compact_min_dead && self.dead * 2 >= self.msgs.len() {
            self.compact();
        }
        Ok(())
    }

    /// Drops tombstones from the message list and renumbers the slots.
    fn compact(&mut self) {
        self.msgs.retain(Option::is_some);
        for (i, m) in self.msgs.iter().enumerate() {
            if let Some(m) = m {
                if let Some(loc) = self.state.index.get_mut(&m.id) {
                    loc.slot = i as u32;
                }
            }
        }
        self.dead = 0;
    }

    /// Scans one segment, applying its valid records.
    fn scan<S: SegmentSource + ?Sized>(
        &mut self,
        seq: u64,
        path: &Path,
        file: &S,
        file_len: u64,
        is_last: bool,
        buf: &mut Vec<u8>,
    ) -> Result<SegScan, StoreError> {
        let mut sc = Scanner::new(file, path, file_len, buf, self.max_record);
        let mut out = SegScan {
            header: None,
            header_end: 0,
            data_end: 0,
            bad: None,
            bad_complete: false,
        };
        // Producer checkpoint records directly follow the header.
        let mut in_checkpoint = false;
        loop {
            let item = sc.next()?;
            match item {
                Item::End => break,
                Item::Bad {
                    off,
                    reason,
                    complete,
                } => {
                    out.bad = Some((off, reason));
                    out.bad_complete = complete;
                    break;
                }
                Item::Record {
                    off,
                    typ,
                    payload,
                    len,
                } => {
                    let res = match (out.header.is_some(), typ) {
                        (false, format::REC_HEADER) => {
                            match format::decode_header(sc.payload(payload)) {
                                Ok(h) if h.seq != seq => Err(format!(
                                    "segment header names segment {} instead of {seq}",
                                    h.seq
                                )),
                                Ok(h) => {
                                    if h.version == 1 {
                                        // Raw ids with no user: not loaded (module docs of
                                        // `producers`).
                                        self.report.unscoped_producer_ids +=
                                            h.producers.len() as u64;
                                    } else {
                                        for (k, s) in &h.producers {
                                            producers::note(&mut self.producers, k, *s);
                                        }
                                    }
                                    self.next_id = self.next_id.max(h.next_id);
                                    out.header = Some(h);
                                    out.header_end = off + len as u64;
                                    in_checkpoint = true;
                                    Ok(())
                                }
                                Err(e) => Err(format!("invalid segment header: {e}")),
                            }
                        }
                        (false, t) => Err(format!("missing segment header (record type {t})")),
                        (true, format::REC_PRODUCERS) if in_checkpoint => {
                            match format::decode_producers(sc.payload(payload)) {
                                Ok(entries) => {
                                    for (k, s) in entries {
                                        producers::note_owned(&mut self.producers, k, s);
                                    }
                                    out.header_end = off + len as u64;
                                    Ok(())
                                }
                                Err(e) => Err(format!("invalid producer checkpoint: {e}")),
                            }
                        }
                        (true, format::REC_OPS) => {
                            in_checkpoint = false;
                            self.apply(seq, off, sc.payload(payload))
                                .map_err(|e| format!("malformed record: {e}"))
                        }
                        (true, t) => Err(format!("unexpected record type {t}")),
                    };
                    match res {
                        Ok(()) => {
                            out.data_end = off + len as u64;
                            self.report.records += 1;
                        }
                        Err(reason) => {
                            // CRC-valid and complete, yet not acceptable.
                            out.bad = Some((off, reason));
                            out.bad_complete = true;
                            break;
                        }
                    }
                }
            }
        }
        if out.header.is_none() && out.bad.is_none() {
            out.bad = Some((0, "empty segment file (no header)".into()));
        }
        // The unused, zero-filled tail of a pre-allocated last segment (or a
        // last segment that was created but never written) is not damage.
        if is_last && !out.bad_complete {
            if let Some((off, _)) = &out.bad {
                if sc.rest_is_zero(*off)? {
                    out.bad = None;
                }
            }
        }
        self.report.bytes_scanned += match &out.bad {
            Some(_) => file_len,
            None => out.data_end,
        };
        Ok(out)
    }
}

/// Copies the bytes of segment `path` (open as `f`, `file_len` long) from
/// `off` on to `<segment>.corrupt-at-<off>` (fsynced) before a salvage cuts
/// them off; returns the copy's path.
fn save_tail(path: &Path, f: &File, file_len: u64, off: u64) -> Result<PathBuf, StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = path.with_file_name(format!("{name}.corrupt-at-{off}"));
    let copy = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::FILE_MODE)
        .open(&aside)
        .map_err(io_err("save damaged bytes", &aside))?;
    let mut pos = off;
    let mut buf = vec![0u8; SCAN_BUF];
    while pos < file_len {
        let n = (file_len - pos).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], pos)
            .map_err(io_err("read damaged segment", path))?;
        copy.write_all_at(&buf[..n], pos - off)
            .map_err(io_err("save damaged bytes", &aside))?;
        pos += n as u64;
    }
    copy.sync_all()
        .map_err(io_err("save damaged bytes", &aside))?;
    Ok(aside)
}

/// Salvages a damaged non-last segment: keeps a copy of the dropped bytes
/// next to it and cuts it at `off` (or sets the whole file aside when its
/// header is bad).
fn salvage_segment(
    path: &Path,
    file_len: u64,
    off: u64,
    dir_file: &File,
    dir: &Path,
) -> Result<bool, StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if off == 0 {
        let aside = path.with_file_name(format!("{name}.corrupt"));
        std::fs::rename(path, &aside).map_err(io_err("set damaged segment aside", path))?;
        dir_file
            .sync_all()
            .map_err(io_err("fsync directory", dir))?;
        tracing::error!(file = %path.display(), kept_as = %aside.display(), "journal salvage: segment header damaged; whole segment dropped");
        return Ok(false);
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open damaged segment", path))?;
    save_tail(path, &f, file_len, off)?;
    f.set_len(off)
        .and_then(|()| f.sync_all())
        .map_err(io_err("truncate damaged segment", path))?;
    dir_file
        .sync_all()
        .map_err(io_err("fsync directory", dir))?;
    Ok(true)
}

/// Recovers the journal in `config.dir` (the directory lock is held, or
/// was given up under [`super::LockMode::BestEffort`]) following `plan`:
/// sets its stale segments aside, then reads its segments in order.
///
/// With `keep_last`, the last segment is not modified (a torn tail is
/// reported but not cut off): it belongs to an older epoch and the caller
/// fences it at its accepted end instead.
pub(super) fn recover(
    config: &JournalConfig,
    dir_file: &File,
    plan: Plan,
    keep_last: bool,
) -> Result<RecoveryOutput, StoreError> {
    let dir = config.dir.as_path();
    let mut ctx = Ctx {
        config,
        state: State::default(),
        msgs: Vec::new(),
        dead: 0,
        producers: HashMap::new(),
        next_id: 1,
        loaded: 0,
        report: RecoveryReport::default(),
        ops: Vec::new(),
        compact_min_dead: COMPACT_MIN_DEAD,
        max_record: MAX_RECORD_BYTES,
    };
    for (path, reason) in &plan.stale {
        let aside = fence::set_aside(path)?;
        tracing::warn!(
            file = %path.display(),
            kept_as = %aside.display(),
            reason = %reason,
            "journal recovery: segment of a stale writer set aside (never read back)"
        );
        ctx.report.stale_segments.push(aside);
    }
    if !plan.stale.is_empty() {
        dir_file
            .sync_all()
            .map_err(io_err("fsync directory", dir))?;
    }
    let mut buf = vec![0u8; SCAN_BUF];
    let mut last = None;
    let mut ends = Vec::new();
    let n = plan.scan.len();
    for (i, planned) in plan.scan.into_iter().enumerate() {
        let (seq, path, limit) = (planned.seq, planned.path, planned.limit);
        let is_last = i + 1 == n;
        let file = match OpenOptions::new()
            .read(true)
            .write(is_last && !keep_last)
            .open(&path)
        {
            Ok(f) => f,
            // A writer of an older epoch deleted it after the survey (it
            // held nothing live in that writer's view).
            Err(e) if e.kind() == io::ErrorKind::NotFound && config.epoch > 0 => {
                tracing::warn!(file = %path.display(), "journal recovery: segment deleted by another writer during recovery");
                continue;
            }
            Err(e) => return Err(io_err("open segment", &path)(e)),
        };
        let file_len = file
            .metadata()
            .map_err(io_err("stat segment", &path))?
            .len();
        // A fenced segment is read only up to its fenced end.
        let read_len = match limit {
            Some(end) => end.min(file_len),
            None => file_len,
        };
        if read_len < file_len {
            let ignored = file_len - read_len;
            tracing::warn!(
                file = %path.display(),
                fenced_end = read_len,
                ignored_bytes = ignored,
                "journal recovery: ignoring bytes appended to a fenced segment by a stale writer"
            );
            ctx.report.fenced_bytes += ignored;
        }
        ctx.state
            .segments
            .insert(seq, SegmentInfo::new(path.clone()));
        ctx.report.segments += 1;
        if limit == Some(0) {
            // Fenced before anything in it was accepted: nothing to read (it
            // holds nothing, so it is deleted like any empty segment).
            ends.push(FenceEntry { seq, end: 0 });
            continue;
        }
        let mut scan = ctx.scan(seq, &path, &file, read_len, is_last, &mut buf)?;
        if let Some(end) = limit {
            if scan.bad.is_none() && scan.data_end < end {
                scan.bad = Some((
                    scan.data_end,
                    format!(
                        "segment ends at {} before its fenced end {end}",
                        scan.data_end
                    ),
                ));
            }
        }
        if let Some(h) = &scan.header {
            ctx.report.last_epoch = Some(h.epoch);
        }
        if let (true, Some((off, reason))) = (is_last && scan.bad_complete, &scan.bad) {
            // Not a torn write: a record that was written whole and that this
            // version cannot accept. Cutting it off would silently drop it and
            // everything after it.
            if !config.salvage {
                tracing::error!(file = %path.display(), offset = off, reason = %reason, "journal recovery: complete record that cannot be accepted in the last segment; refusing to start (see the salvage option)");
                return Err(StoreError::Corrupt {
                    file: path,
                    offset: *off,
                    reason: reason.clone(),
                });
            }
            let kept = save_tail(&path, &file, file_len, *off)?;
            tracing::error!(
                file = %path.display(),
                offset = off,
                kept_as = %kept.display(),
                reason = %reason,
                "journal recovery: SALVAGE: dropping a complete record that cannot be accepted, and the rest of the last segment"
            );
        }
        if is_last {
            let mut header = scan.header;
            let mut data_end = scan.data_end;
            let mut header_end = scan.header_end;
            let mut len = file_len;
            if let Some((off, reason)) = scan.bad {
                let t = Truncation {
                    file: path.clone(),
                    offset: off,
                    dropped_bytes: file_len.saturating_sub(off),
                    reason,
                };
                if keep_last {
                    tracing::warn!(
                        file = %t.file.display(),
                        offset = t.offset,
                        dropped_bytes = t.dropped_bytes,
                        reason = %t.reason,
                        "journal recovery: ignoring torn or corrupt tail of the last segment (left in place: fenced at its end)"
                    );
                } else {
                    tracing::warn!(
                        file = %t.file.display(),
                        offset = t.offset,
                        dropped_bytes = t.dropped_bytes,
                        reason = %t.reason,
                        "journal recovery: cutting off torn or corrupt tail of the last segment"
                    );
                    file.set_len(off)
                        .and_then(|()| file.sync_all())
                        .map_err(io_err("truncate torn segment tail", &path))?;
                    len = off;
                }
                if off == 0 {
                    header = None;
                }
                data_end = off;
                ctx.report.truncated = Some(t);
            }
            if header.is_none() {
                data_end = 0;
                header_end = 0;
            }
            ends.push(FenceEntry { seq, end: data_end });
            last = Some(LastSegment {
                seq,
                path,
                file,
                data_end,
                header_end,
                file_len: len,
                header,
            });
        } else if let Some((off, reason)) = scan.bad {
            if !config.salvage {
                tracing::error!(file = %path.display(), offset = off, reason = %reason, "journal recovery: damaged segment before the last one; refusing to start (see the salvage option)");
                return Err(StoreError::Corrupt {
                    file: path,
                    offset: off,
                    reason,
                });
            }
            let dropped_bytes = file_len.saturating_sub(off);
            tracing::error!(
                file = %path.display(),
                offset = off,
                dropped_bytes,
                reason = %reason,
                "journal recovery: SALVAGE: dropping the rest of a damaged segment; messages and acks in it are lost"
            );
            if salvage_segment(&path, file_len, off, dir_file, dir)? {
                ends.push(FenceEntry { seq, end: off });
            } else {
                ctx.state.segments.remove(&seq);
            }
            ctx.report.salvaged.push(Truncation {
                file: path,
                offset: off,
                dropped_bytes,
                reason,
            });
        } else {
            ends.push(FenceEntry {
                seq,
                end: scan.data_end,
            });
        }
    }
    ctx.state.gc_hint = true;
    // Same layout (`Option` uses a niche): collected in place, no copy.
    let messages: Vec<StoredMessage> = ctx.msgs.into_iter().flatten().collect();
    Ok(RecoveryOutput {
        messages,
        producers: ctx.producers,
        next_id: ctx.next_id,
        report: ctx.report,
        state: ctx.state,
        last,
        ends,
    })
}

/// Runs [`Ctx::scan`] over `bytes` as segment `opts.seq` (the fuzzing entry
/// point, [`super::fuzzing::scan_segment`]) and checks the invariants of
/// what it recovered.
pub(super) fn scan_bytes(
    bytes: &[u8],
    opts: &super::fuzzing::ScanOptions,
) -> Result<super::fuzzing::ScanSummary, StoreError> {
    use super::fuzzing::{LiveMessage, ScanSummary};

    let path = Path::new("<memory>");
    let mut config = JournalConfig::new(path);
    config.body_cache_bytes = opts.body_cache_bytes;
    let mut ctx = Ctx {
        config: &config,
        state: State::default(),
        msgs: Vec::new(),
        dead: 0,
        producers: HashMap::new(),
        next_id: 1,
        loaded: 0,
        report: RecoveryReport::default(),
        ops: Vec::new(),
        compact_min_dead: opts.compact_min_dead,
        max_record: opts.max_record_bytes.unwrap_or(MAX_RECORD_BYTES),
    };
    let seq = opts.seq;
    ctx.state
        .segments
        .insert(seq, SegmentInfo::new(path.to_path_buf()));
    let file_len = opts.claimed_len.unwrap_or(bytes.len() as u64);
    let mut buf = vec![0u8; opts.buf_len.max(1)];
    let scan = ctx.scan(seq, path, bytes, file_len, opts.is_last, &mut buf)?;

    let mut v = Vec::new();
    let avail = file_len.min(bytes.len() as u64);
    if !(scan.header_end <= scan.data_end && scan.data_end <= avail) {
        v.push(format!(
            "header_end {} / data_end {} / length {avail} out of order",
            scan.header_end, scan.data_end
        ));
    }
    if scan.header.is_none() && (scan.data_end, scan.header_end) != (0, 0) {
        v.push(format!("data_end {} without a header", scan.data_end));
    }
    match &scan.bad {
        Some((off, _)) if *off != scan.data_end => {
            v.push(format!(
                "bad record at {off} but data ends at {}",
                scan.data_end
            ));
        }
        Some(_) => {}
        // A file that shrinks at a record boundary (sealed by an older
        // writer) ends cleanly where it ends.
        None if !opts.is_last && scan.data_end != avail => {
            v.push(format!("clean scan ended at {} of {avail}", scan.data_end));
        }
        None => {
            let tail = usize::try_from(scan.data_end)
                .ok()
                .and_then(|from| bytes.get(from..usize::try_from(avail).ok()?));
            if !tail.is_some_and(|t| t.iter().all(|&b| b == 0)) {
                v.push(format!("non-zero tail after {} accepted", scan.data_end));
            }
        }
    }
    let live = ctx.msgs.iter().filter(|m| m.is_some()).count();
    if live != ctx.state.index.len() || ctx.msgs.len() - live != ctx.dead {
        v.push(format!(
            "{live} live messages, {} indexed, {} dead counted of {}",
            ctx.state.index.len(),
            ctx.dead,
            ctx.msgs.len()
        ));
    }
    let seg_live = ctx.state.segments.get(&seq).map(|s| s.live);
    if seg_live != Some(ctx.state.index.len() as u64) {
        v.push(format!(
            "segment live count {seg_live:?}, {} indexed",
            ctx.state.index.len()
        ));
    }
    for (&id, loc) in &ctx.state.index {
        let msg = ctx.msgs.get(loc.slot as usize).and_then(Option::as_ref);
        let Some(msg) = msg.filter(|m| m.id == id) else {
            v.push(format!("index entry {id} points at slot {}", loc.slot));
            continue;
        };
        let rec_end = loc.rec_off + u64::from(loc.rec_len);
        let body_rel = u64::from(loc.body_rel);
        if loc.seg != seq
            || rec_end > scan.data_end
            || loc.rec_off < scan.header_end
            || body_rel < FRAME_LEN as u64
            || body_rel + u64::from(loc.body_len) > u64::from(loc.rec_len)
            || loc.body_len != msg.body_len
        {
            v.push(format!("message {id}: bad location {loc:?}"));
            continue;
        }
        if let Some(body) = &msg.body {
            let at = (loc.rec_off + body_rel) as usize;
            if bytes.get(at..at + loc.body_len as usize) != Some(&body[..]) {
                v.push(format!("message {id}: loaded body differs from the record"));
            }
        }
        if ctx.next_id < id.saturating_add(1) {
            v.push(format!("next_id {} not above live id {id}", ctx.next_id));
        }
        // (An entry may be gone: a later `Forget` removed it.)
        if let Some(k) = msg.producer.as_ref().and_then(|p| p.key()) {
            let seq = msg.producer.as_ref().map_or(0, |p| p.seq);
            if ctx.producers.get(&k).is_some_and(|&s| s < seq) {
                v.push(format!("producer {k:?} below seq {seq}"));
            }
        }
    }
    let loaded: u64 = ctx
        .msgs
        .iter()
        .flatten()
        .filter_map(|m| m.body.as_ref().map(|b| b.len() as u64))
        .sum();
    if loaded != ctx.loaded || loaded > opts.body_cache_bytes {
        v.push(format!(
            "{loaded} body bytes loaded, {} counted, cache {}",
            ctx.loaded, opts.body_cache_bytes
        ));
    }
    if let Some(h) = &scan.header {
        if h.seq != seq || ctx.next_id < h.next_id {
            v.push(format!("header {h:?} accepted for segment {seq}"));
        }
    }
    let mut producers: Vec<(String, u64)> = ctx.producers.into_iter().collect();
    producers.sort();
    Ok(ScanSummary {
        header: scan.header.map(|h| (h.seq, h.epoch, h.next_id)),
        header_end: scan.header_end,
        data_end: scan.data_end,
        bad: scan.bad,
        bad_complete: scan.bad_complete,
        records: ctx.report.records,
        bytes_scanned: ctx.report.bytes_scanned,
        messages: ctx
            .msgs
            .into_iter()
            .flatten()
            .map(|m| LiveMessage {
                id: m.id,
                destination: m.destination,
                body_len: m.body_len,
                body_loaded: m.body.is_some(),
            })
            .collect(),
        next_id: ctx.next_id,
        producers,
        violations: v,
    })
}

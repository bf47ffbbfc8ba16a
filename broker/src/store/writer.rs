//! The writer thread: group commit, segment roll, segment deletion, epoch
//! checks, and the background pre-allocator of spare segment files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::fence;
use super::format::{self, FenceEntry, OpMeta};
use super::producers;
use super::state::{Loc, SegmentInfo};
use super::{io_err, lock, segment_path, JournalConfig, Shared, StoreError};

/// How many sequence numbers a fencing writer tries past segment files that
/// another writer created first before it gives up.
const MAX_SEQ_SKIP: u64 = 64;

/// Largest amount of space pre-allocated for one segment.
const MAX_PREALLOC_BYTES: u64 = 256 << 20;

/// Zero-fill chunk size of the pre-allocator.
const ZERO_CHUNK: usize = 1 << 20;

/// One queued append (or flush, when `record` is empty).
pub(super) struct Request {
    /// The complete framed record, encoded by the caller.
    pub record: Vec<u8>,
    /// What the record does, for the index.
    pub ops: Vec<OpMeta>,
    /// Completed once the record is durable (`None` for lazy appends).
    pub waiter: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The submission queue (protected by `Shared::queue`).
#[derive(Default)]
pub(super) struct Queue {
    /// Requests in submission order.
    pub items: Vec<Request>,
    /// Set by `shutdown`: no new requests are accepted.
    pub closed: bool,
    /// Set when the writer hit an I/O error: no new requests are accepted.
    pub failed: Option<String>,
    /// Set when the writer found a higher epoch in `<dir>/EPOCH`:
    /// `(store_epoch, our_epoch)`; no new requests are accepted.
    pub fenced: Option<(u64, u64)>,
    /// The writer is waiting on the condition variable (needs a notify).
    pub writer_idle: bool,
}

/// The segment currently appended to.
pub(super) struct Active {
    /// Sequence number.
    pub seq: u64,
    /// Path of the file.
    pub path: PathBuf,
    /// Read/write handle; its cursor is kept at `pos`.
    pub file: File,
    /// End of the data written so far (next record offset).
    pub pos: u64,
    /// End of the header record.
    pub header_end: u64,
    /// Current file length (larger than `pos` when pre-allocated).
    pub file_len: u64,
}

/// Size of the pre-allocated part of a segment for a `segment_bytes` setting.
pub(super) fn prealloc_size(segment_bytes: u64) -> u64 {
    segment_bytes
        .clamp(4096, MAX_PREALLOC_BYTES)
        .next_multiple_of(4096)
}

/// State owned by the writer thread.
pub(super) struct Writer {
    /// State shared with the handles.
    shared: Arc<Shared>,
    /// Journal directory.
    dir: PathBuf,
    /// Open handle of the directory, for fsync.
    dir_file: File,
    /// Roll threshold.
    segment_bytes: u64,
    /// Epoch written into new segment headers.
    epoch: u64,
    /// With an epoch > 0: the fence of this epoch, carried into every new
    /// segment header (trimmed to the segments still present). Also turns on
    /// the `EPOCH` file checks and no-clobber segment creation.
    fence: Option<Vec<FenceEntry>>,
    /// Longest time a lazily appended record stays un-synced.
    lazy_interval: Duration,
    /// The segment being appended to.
    pub active: Active,
    /// Producer table, checkpointed into new segment headers.
    producers: HashMap<String, u64>,
    /// Highest message id written.
    max_id: u64,
    /// Spare-file preparer.
    prealloc: Option<Arc<Preallocator>>,
    /// The next spare file was asked for (once per segment).
    spare_requested: bool,
    /// Records written but not yet covered by an fdatasync.
    dirty: bool,
    /// A segment file was created or renamed since the last directory fsync.
    dir_dirty: bool,
    /// When dirty without waiters: fsync no later than this.
    deadline: Option<Instant>,
    records_since_sync: u64,
    header_buf: Vec<u8>,
}

/// `write_all` for vectored writes (retries short writes and EINTR).
fn write_all_vectored(mut w: &File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes zeros over `[from, to)` of `file`. Returns `false` if `stop`
/// became true before the end.
pub(super) fn zero_fill(file: &File, from: u64, to: u64, stop: &AtomicBool) -> io::Result<bool> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut off = from;
    while off < to {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let n = (to - off).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(true)
}

impl Writer {
    /// Creates the writer state around an already prepared active segment.
    pub fn new(
        shared: Arc<Shared>,
        config: &JournalConfig,
        dir_file: File,
        active: Active,
        producers: HashMap<String, u64>,
        max_id: u64,
        prealloc: Option<Arc<Preallocator>>,
    ) -> Self {
        Writer {
            shared,
            dir: config.dir.clone(),
            dir_file,
            segment_bytes: config.segment_bytes,
            epoch: config.epoch,
            fence: None,
            lazy_interval: config.lazy_sync_interval,
            active,
            producers,
            max_id,
            prealloc,
            spare_requested: false,
            dirty: false,
            dir_dirty: false,
            deadline: None,
            records_since_sync: 0,
            header_buf: Vec::new(),
        }
    }

    /// Turns epoch fencing on (with an epoch > 0): `fence` is this epoch's
    /// fence, carried into every new segment header.
    pub fn set_fence(&mut self, fence: Option<Vec<FenceEntry>>) {
        self.fence = fence;
    }

    /// Positions the file cursor at the end of the data (for a segment
    /// continued after recovery).
    pub fn seek_to_end(&mut self) -> Result<(), StoreError> {
        let a = &mut self.active;
        a.file
            .seek(SeekFrom::Start(a.pos))
            .map(|_| ())
            .map_err(io_err("seek segment", &a.path))
    }

    /// Writes a fresh header at offset 0 of the active segment (used at open
    /// for a segment that has none) and makes it durable.
    pub fn write_header_in_place(&mut self) -> Result<(), StoreError> {
        let seq = self.active.seq;
        self.write_header(seq)?;
        self.active
            .file
            .sync_all()
            .map_err(io_err("fsync segment", &self.active.path))?;
        self.dir_file
            .sync_all()
            .map_err(io_err("fsync directory", &self.dir))
    }

    /// Encodes and writes the header of segment `seq` and the producer
    /// checkpoint at offset 0 of the active file and positions the cursor
    /// after them.
    fn write_header(&mut self, seq: u64) -> Result<(), StoreError> {
        if let Some(fence) = &mut self.fence {
            // Entries of deleted segments are dropped: nothing to fence.
            let st = lock(&self.shared.state);
            fence.retain(|e| st.segments.contains_key(&e.seq));
        }
        let mut buf = std::mem::take(&mut self.header_buf);
        buf.clear();
        put_segment_start(
            &mut buf,
            seq,
            self.epoch,
            self.max_id.saturating_add(1),
            &self.producers,
            self.fence.as_deref(),
        );
        let a = &mut self.active;
        let res = a
            .file
            .write_all_at(&buf, 0)
            .and_then(|()| a.file.seek(SeekFrom::Start(buf.len() as u64)).map(|_| ()));
        res.map_err(io_err("write segment header", &a.path))?;
        a.pos = buf.len() as u64;
        a.header_end = a.pos;
        a.file_len = a.file_len.max(a.pos);
        self.shared
            .stats
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.header_buf = buf;
        Ok(())
    }

    /// Seals the active segment (drops its unused pre-allocated tail, makes
    /// it durable) and starts segment `active.seq + 1`, in the spare file if
    /// one is ready (otherwise the new segment grows as it is written).
    pub fn roll(&mut self) -> Result<(), StoreError> {
        // Seal: a sealed segment never ends with zeros, so recovery can treat
        // any invalid byte in it as corruption.
        let a = &mut self.active;
        let was_dirty = self.dirty;
        if a.file_len > a.pos {
            a.file
                .set_len(a.pos)
                .map_err(io_err("truncate sealed segment", &a.path))?;
            a.file_len = a.pos;
            a.file
                .sync_all()
                .map_err(io_err("fsync sealed segment", &a.path))?;
        } else if was_dirty {
            a.file
                .sync_data()
                .map_err(io_err("fdatasync sealed segment", &a.path))?;
        }
        let next = a.seq + 1;
        if was_dirty {
            // The records of the sealed segment are durable now; waiters are
            // completed after the new segment is synced as well.
            self.note_sync();
        }

        let (seq, path, file, file_len) = self.create_segment_file(next)?;
        tracing::debug!(segment = %path.display(), preallocated = file_len, "journal: new segment");
        self.spare_requested = false;
        self.active = Active {
            seq,
            path: path.clone(),
            file,
            pos: 0,
            header_end: 0,
            file_len,
        };
        self.dir_dirty = true;
        self.dirty = true;
        self.write_header(seq)?;
        let mut st = lock(&self.shared.state);
        st.segments.insert(seq, SegmentInfo::new(path));
        st.active = seq;
        // The sealed segment may already be empty.
        st.gc_hint = true;
        Ok(())
    }

    /// Creates the file of the next segment, `first` or (for a fencing
    /// writer, when another writer created that file first) one of the
    /// following numbers, in the spare file if one is ready. A fencing
    /// writer never replaces an existing file (hard link instead of rename).
    fn create_segment_file(&mut self, first: u64) -> Result<(u64, PathBuf, File, u64), StoreError> {
        let no_clobber = self.fence.is_some();
        let mut seq = first;
        loop {
            let path = segment_path(&self.dir, seq);
            let spare = match &self.prealloc {
                Some(p) => p.take_as(&path, no_clobber),
                None => Ok(None),
            };
            let (op, res) = match spare {
                Ok(Some(spare)) => ("rename spare segment", Ok(spare)),
                Ok(None) => (
                    "create segment",
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(super::FILE_MODE)
                        .open(&path)
                        .map(|f| (f, 0)),
                ),
                Err(e) => ("rename spare segment", Err(e)),
            };
            match res {
                Ok((file, len)) => return Ok((seq, path, file, len)),
                Err(e)
                    if no_clobber
                        && e.kind() == io::ErrorKind::AlreadyExists
                        && seq - first < MAX_SEQ_SKIP =>
                {
                    tracing::warn!(
                        segment = %path.display(),
                        "journal: segment file already created by another writer; using the next number"
                    );
                    seq += 1;
                }
                Err(e) => return Err(io_err(op, &path)(e)),
            }
        }
    }

    /// Epoch check of a fencing writer (epoch > 0), made after every fsync
    /// before that batch's waiters are completed, and before any segment is
    /// deleted: fails with [`StoreError::Fenced`] when `<dir>/EPOCH` holds a
    /// higher epoch. Costs one open + read + close of a small file. A lower
    /// or missing value (an older master that was paused in the middle of
    /// its open replaced the file) is put back to this journal's epoch.
    pub fn check_epoch(&mut self) -> Result<(), StoreError> {
        if self.fence.is_none() {
            return Ok(());
        }
        match fence::read_epoch_file(&self.dir)? {
            Some(e) if e == self.epoch => Ok(()),
            Some(e) if e > self.epoch => Err(StoreError::Fenced {
                store_epoch: e,
                our_epoch: self.epoch,
            }),
            found => {
                tracing::error!(
                    dir = %self.dir.display(),
                    found = ?found,
                    epoch = self.epoch,
                    "journal: EPOCH file missing or lower than this journal's epoch; restoring it"
                );
                fence::write_epoch_file(&self.dir, &self.dir_file, self.epoch)
            }
        }
    }

    /// fdatasync of the active segment (and the directory if a segment was
    /// created since the last one).
    fn sync(&mut self) -> Result<(), StoreError> {
        let a = &self.active;
        let started = Instant::now();
        a.file
            .sync_data()
            .map_err(io_err("fdatasync segment", &a.path))?;
        self.shared
            .fsync_micros
            .observe(started.elapsed().as_micros() as u64);
        if self.dir_dirty {
            self.dir_file
                .sync_all()
                .map_err(io_err("fsync directory", &self.dir))?;
            self.dir_dirty = false;
        }
        self.note_sync();
        self.dirty = false;
        self.deadline = None;
        Ok(())
    }

    /// Public form of a sync, used at open.
    pub fn sync_now(&mut self) -> Result<(), StoreError> {
        self.sync()
    }

    fn note_sync(&mut self) {
        let stats = &self.shared.stats;
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        stats
            .last_batch_records
            .store(self.records_since_sync, Ordering::Relaxed);
        if self.records_since_sync > 0 {
            self.shared.batch_records.observe(self.records_since_sync);
        }
        self.records_since_sync = 0;
    }

    /// Writes a run of requests that all go to the active segment at the
    /// offsets in `offs`, then applies them to the index.
    fn write_and_apply(&mut self, run: &mut [Request], offs: &[u64]) -> Result<(), StoreError> {
        let mut slices: Vec<IoSlice<'_>> = run
            .iter()
            .filter(|r| !r.record.is_empty())
            .map(|r| IoSlice::new(&r.record))
            .collect();
        if slices.is_empty() {
            return Ok(());
        }
        let n_records = slices.len() as u64;
        let n_bytes: u64 = slices.iter().map(|s| s.len() as u64).sum();
        write_all_vectored(&self.active.file, &mut slices)
            .map_err(io_err("write records", &self.active.path))?;
        drop(slices);
        self.active.file_len = self.active.file_len.max(self.active.pos);
        self.dirty = true;
        // Ask for the next segment's spare file once this one is a quarter
        // full: early enough to be ready at the roll, and never for
        // short-lived or idle journals.
        if !self.spare_requested && self.active.pos >= self.segment_bytes / 4 {
            if let Some(p) = &self.prealloc {
                p.request();
            }
            self.spare_requested = true;
        }
        self.records_since_sync += n_records;
        let stats = &self.shared.stats;
        stats.records.fetch_add(n_records, Ordering::Relaxed);
        stats.bytes.fetch_add(n_bytes, Ordering::Relaxed);

        let seg = self.active.seq;
        let mut st = lock(&self.shared.state);
        for (req, &rec_off) in run.iter_mut().zip(offs) {
            let rec_len = req.record.len() as u32;
            for op in req.ops.iter_mut() {
                match op {
                    OpMeta::Add {
                        id,
                        body_rel,
                        body_len,
                        producer,
                        ..
                    } => {
                        let loc = Loc {
                            seg,
                            rec_off,
                            rec_len,
                            body_rel: *body_rel,
                            body_len: *body_len,
                            slot: 0,
                        };
                        if st.add(*id, loc).is_some() {
                            tracing::warn!(id = *id, "journal: message id appended twice");
                        }
                        self.max_id = self.max_id.max(*id);
                        if let Some(p) = producer.take() {
                            if let Some(k) = p.key() {
                                producers::note_owned(&mut self.producers, k, p.seq);
                            }
                        }
                    }
                    OpMeta::Ack { id } => {
                        st.ack(*id, seg);
                    }
                    OpMeta::Forget { key } => {
                        self.producers.remove(key.as_str());
                    }
                }
            }
        }
        drop(st);
        // Bodies are readable from the file now (index first, then pending:
        // see `Journal::read_body`).
        self.forget_pending(run);
        Ok(())
    }

    fn forget_pending(&self, run: &[Request]) {
        let mut pending = lock(&self.shared.pending);
        for req in run {
            for op in &req.ops {
                if let OpMeta::Add { id, .. } = op {
                    pending.remove(id);
                }
            }
        }
    }

    /// Writes one batch (group commit). Completes the waiters once an
    /// fdatasync covers their records.
    fn process(&mut self, batch: &mut [Request], closing: bool) -> Result<(), StoreError> {
        let mut offs = Vec::with_capacity(batch.len());
        let mut run_start = 0;
        for i in 0..batch.len() {
            let len = batch[i].record.len() as u64;
            // The roll threshold counts the data after the header and the
            // producer checkpoint: a large checkpoint must not make every
            // append start a new segment.
            let data = self.active.pos - self.active.header_end;
            if len > 0 && data > 0 && data + len > self.segment_bytes {
                self.write_and_apply(&mut batch[run_start..i], &offs[run_start..i])?;
                self.roll()?;
                run_start = i;
            }
            offs.push(self.active.pos);
            self.active.pos += len;
        }
        self.write_and_apply(&mut batch[run_start..], &offs[run_start..])?;

        let now = Instant::now();
        let has_waiters = batch.iter().any(|r| r.waiter.is_some());
        if self.dirty {
            let due = self.deadline.is_some_and(|d| now >= d);
            if has_waiters || closing || due {
                self.sync()?;
                // Before any waiter learns that its record is durable.
                self.check_epoch()?;
            } else if self.deadline.is_none() {
                self.deadline = Some(now + self.lazy_interval);
            }
        }
        if !self.dirty {
            for req in batch.iter_mut() {
                if let Some(w) = req.waiter.take() {
                    // The receiver may be gone: the write is not cancelled.
                    let _ = w.send(Ok(()));
                }
            }
        }
        Ok(())
    }

    /// Deletes every deletable segment, in rounds separated by a directory
    /// fsync so that a segment is never gone before the segments its acks
    /// refer to are durably gone.
    fn collect_garbage(&mut self) -> Result<(), StoreError> {
        loop {
            let victims: Vec<(u64, Arc<Path>)> = {
                let mut st = lock(&self.shared.state);
                if !st.gc_hint {
                    return Ok(());
                }
                st.gc_hint = false;
                st.deletable()
                    .into_iter()
                    .filter_map(|s| st.segments.get(&s).map(|i| (s, i.path.clone())))
                    .collect()
            };
            if victims.is_empty() {
                return Ok(());
            }
            // A fenced writer must not delete what the new master reads.
            self.check_epoch()?;
            let mut removed = Vec::with_capacity(victims.len());
            let mut failed = Vec::new();
            for (seq, path) in victims {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed.push(seq),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => removed.push(seq),
                    Err(e) => {
                        tracing::error!(
                            segment = %path.display(),
                            error = %e,
                            "journal: cannot delete fully acknowledged segment; keeping it"
                        );
                        failed.push(seq);
                    }
                }
            }
            if !removed.is_empty() {
                self.dir_file
                    .sync_all()
                    .map_err(io_err("fsync directory", &self.dir))?;
            }
            let mut st = lock(&self.shared.state);
            for seq in &failed {
                if let Some(info) = st.segments.get_mut(seq) {
                    info.undeletable = true;
                }
            }
            for &seq in &removed {
                st.remove_segment(seq);
            }
            drop(st);
            if !removed.is_empty() {
                tracing::debug!(segments = ?removed, "journal: deleted acknowledged segments");
                self.shared
                    .stats
                    .segments_deleted
                    .fetch_add(removed.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Fails every request of `batch` and of the queue with `err`, and makes
    /// the journal refuse further appends.
    fn fail(&mut self, err: StoreError, batch: &mut Vec<Request>) {
        let reason = err.to_string();
        tracing::error!(error = %reason, "journal: write failed; refusing further appends");
        let mut rest = {
            let mut q = lock(&self.shared.queue);
            q.failed = Some(reason);
            std::mem::take(&mut q.items)
        };
        batch.append(&mut rest);
        self.release_backlog(batch);
        self.forget_pending(batch);
        for req in batch.drain(..) {
            if let Some(w) = req.waiter {
                let _ = w.send(Err(err.duplicate()));
            }
        }
        self.shared.stats.failed.store(true, Ordering::Relaxed);
    }

    /// Enters the fenced state: fails every request of `batch` and of the
    /// queue with [`StoreError::Fenced`], makes every later append fail the
    /// same way and stops (so nothing is written or deleted any more).
    fn fenced(&mut self, store_epoch: u64, our_epoch: u64, batch: &mut Vec<Request>) {
        tracing::error!(
            dir = %self.dir.display(),
            store_epoch,
            our_epoch,
            "journal: FENCED: a newer master took the journal over; refusing all appends and segment deletions"
        );
        let mut rest = {
            let mut q = lock(&self.shared.queue);
            q.fenced = Some((store_epoch, our_epoch));
            std::mem::take(&mut q.items)
        };
        batch.append(&mut rest);
        self.release_backlog(batch);
        self.forget_pending(batch);
        // Before the waiters hear of it, so that they see `is_fenced()`.
        self.shared.fenced.store(true, Ordering::Release);
        for req in batch.drain(..) {
            if let Some(w) = req.waiter {
                let _ = w.send(Err(StoreError::Fenced {
                    store_epoch,
                    our_epoch,
                }));
            }
        }
    }

    /// Stops the writer after an error: fenced state or failure. A fencing
    /// writer that fails for another reason first looks at `EPOCH`: errors
    /// of a stale writer usually come from the new master's changes (a spare
    /// or segment of the old epoch removed), and must read as `Fenced`.
    fn stop_on(&mut self, err: StoreError, batch: &mut Vec<Request>) {
        let err = match err {
            StoreError::Fenced { .. } => err,
            _ if self.fence.is_some() => match fence::read_epoch_file(&self.dir) {
                Ok(Some(e)) if e > self.epoch => {
                    tracing::warn!(error = %err, "journal: write failed after a newer master took over");
                    StoreError::Fenced {
                        store_epoch: e,
                        our_epoch: self.epoch,
                    }
                }
                _ => err,
            },
            _ => err,
        };
        match err {
            StoreError::Fenced {
                store_epoch,
                our_epoch,
            } => self.fenced(store_epoch, our_epoch, batch),
            err => self.fail(err, batch),
        }
    }

    /// Accounts `batch` as written and wakes appenders waiting for the backlog to shrink.
    fn release_backlog(&self, batch: &[Request]) {
        let bytes: u64 = batch.iter().map(|r| r.record.len() as u64).sum();
        self.shared.backlog.fetch_sub(bytes, Ordering::Relaxed);
        self.shared.drained.notify_waiters();
    }

    /// The writer thread's main loop.
    pub fn run(mut self) {
        let mut batch: Vec<Request> = Vec::new();
        if let Err(e) = self.collect_garbage() {
            self.stop_on(e, &mut batch);
            return;
        }
        loop {
            let closing = {
                let mut q = lock(&self.shared.queue);
                loop {
                    if !q.items.is_empty() || q.closed {
                        break;
                    }
                    q.writer_idle = true;
                    match self.deadline {
                        None => {
                            q = self
                                .shared
                                .queue_cv
                                .wait(q)
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                q.writer_idle = false;
                                break;
                            }
                            q = self
                                .shared
                                .queue_cv
                                .wait_timeout(q, d - now)
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .0;
                        }
                    }
                    q.writer_idle = false;
                }
                std::mem::swap(&mut q.items, &mut batch);
                q.closed
            };
            let res = self.process(&mut batch, closing).and_then(|()| {
                if self.dirty {
                    Ok(())
                } else {
                    self.collect_garbage()
                }
            });
            if let Err(e) = res {
                self.stop_on(e, &mut batch);
                return;
            }
            self.release_backlog(&batch);
            batch.clear();
            if closing {
                // `closed` was set before this batch was taken, so nothing
                // can have been queued after it; `process` synced.
                tracing::debug!("journal: writer stopped");
                return;
            }
        }
    }
}

/// Encodes the start of a segment: its header record, then the producer
/// table checkpoint in records of bounded size (`producers` module docs).
fn put_segment_start(
    buf: &mut Vec<u8>,
    seq: u64,
    epoch: u64,
    next_id: u64,
    producers: &HashMap<String, u64>,
    fence: Option<&[FenceEntry]>,
) {
    format::put_header(buf, seq, epoch, next_id, fence);
    for chunk in producers::checkpoint_chunks(producers) {
        format::put_producers(buf, &chunk);
    }
}

/// Creates the first segment of a new epoch atomically: its header, carrying
/// `fence`, is written to `<dir>/journal.fence-<epoch>.tmp`, fsynced and
/// hard-linked to the first free segment name from `first_seq` on (never
/// replacing a file another writer created meanwhile); then the temporary
/// name is removed and the directory fsynced. A crash leaves either no new
/// segment or a complete one.
pub(super) fn create_fence_segment(
    dir: &Path,
    dir_file: &File,
    first_seq: u64,
    epoch: u64,
    next_id: u64,
    producers: &HashMap<String, u64>,
    fence: &[FenceEntry],
) -> Result<Active, StoreError> {
    let tmp = dir.join(format!("journal.fence-{epoch}.tmp"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::FILE_MODE)
        .open(&tmp)
        .map_err(io_err("create new segment", &tmp))?;
    let mut buf = Vec::new();
    for seq in first_seq..first_seq.saturating_add(MAX_SEQ_SKIP) {
        buf.clear();
        put_segment_start(&mut buf, seq, epoch, next_id, producers, Some(fence));
        let res = file
            .set_len(0)
            .and_then(|()| file.write_all_at(&buf, 0))
            .and_then(|()| file.sync_all());
        res.map_err(io_err("write new segment", &tmp))?;
        let path = segment_path(dir, seq);
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => {
                std::fs::remove_file(&tmp)
                    .map_err(io_err("remove temporary segment name", &tmp))?;
                dir_file
                    .sync_all()
                    .map_err(io_err("fsync directory", dir))?;
                let len = buf.len() as u64;
                return Ok(Active {
                    seq,
                    path,
                    file,
                    pos: len,
                    header_end: len,
                    file_len: len,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tracing::warn!(
                    segment = %path.display(),
                    "journal: segment file already created by another writer; using the next number"
                );
            }
            Err(e) => return Err(io_err("link new segment", &path)(e)),
        }
    }
    Err(StoreError::Io {
        op: "create new segment",
        path: segment_path(dir, first_seq),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "segment numbers {first_seq} to {} are all taken",
                first_seq.saturating_add(MAX_SEQ_SKIP - 1)
            ),
        ),
    })
}

/// Prepares one zero-filled, fsynced spare segment file ahead of time so the
/// writer's fdatasyncs overwrite allocated blocks instead of growing the
/// file (which costs an extra metadata journal commit per fdatasync).
pub(super) struct Preallocator {
    path: PathBuf,
    size: u64,
    st: Mutex<PreState>,
    cv: Condvar,
    stop: AtomicBool,
}

#[derive(Default)]
struct PreState {
    want: bool,
    ready: Option<File>,
    stopped: bool,
}

impl Preallocator {
    /// A pre-allocator of spare files at `path` for segments of
    /// `segment_bytes`.
    pub fn new(path: PathBuf, segment_bytes: u64) -> Self {
        Preallocator {
            path,
            size: prealloc_size(segment_bytes),
            st: Mutex::new(PreState::default()),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }

    /// Asks for a spare file (no-op if one is ready or being prepared).
    pub fn request(&self) {
        let mut st = lock(&self.st);
        if st.ready.is_none() {
            st.want = true;
            self.cv.notify_one();
        }
    }

    /// Renames the ready spare file, if any, to `dest`. Returns the file and
    /// its length. With `no_clobber` an existing `dest` is never replaced
    /// (hard link, then unlink of the spare name): the error is then
    /// `AlreadyExists` and the spare stays ready.
    pub fn take_as(&self, dest: &Path, no_clobber: bool) -> io::Result<Option<(File, u64)>> {
        let mut st = lock(&self.st);
        if st.ready.is_none() {
            return Ok(None);
        }
        // Renamed under the lock: the thread must not start a next spare
        // (same path) before this one is gone.
        if no_clobber {
            std::fs::hard_link(&self.path, dest)?;
            std::fs::remove_file(&self.path)?;
        } else {
            std::fs::rename(&self.path, dest)?;
        }
        Ok(st.ready.take().map(|f| (f, self.size)))
    }

    /// Stops the thread (it finishes or abandons the current file).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut st = lock(&self.st);
        st.stopped = true;
        self.cv.notify_one();
    }

    /// Removes a left-over spare file.
    pub fn remove_spare(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = %self.path.display(), error = %e, "journal: cannot remove spare segment");
            }
        }
    }

    fn build(&self) -> io::Result<Option<File>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(super::FILE_MODE)
            .open(&self.path)?;
        if !zero_fill(&f, 0, self.size, &self.stop)? {
            return Ok(None);
        }
        f.sync_all()?;
        Ok(Some(f))
    }

    /// The pre-allocator thread's main loop.
    pub fn run(self: Arc<Self>) {
        loop {
            {
                let mut st = lock(&self.st);
                while !(st.stopped || (st.want && st.ready.is_none())) {
                    st = self
                        .cv
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if st.stopped {
                    return;
                }
                st.want = false;
            }
            match self.build() {
                Ok(Some(f)) => {
                    let mut st = lock(&self.st);
                    if st.stopped {
                        return;
                    }
                    st.ready = Some(f);
                }
                Ok(None) => return,
                Err(e) => {
                    // Not fatal: segments then grow as they are written.
                    tracing::warn!(file = %self.path.display(), error = %e, "journal: cannot pre-allocate segment");
                }
            }
        }
    }
}

//! Durable message journal: a segmented, append-only, CRC-protected log with
//! group commit.
//!
//! # Overview
//!
//! The journal stores [`Op`]s: `Add` (a persistent message was accepted) and
//! `Ack` (a message was removed: consumed, expired, moved). One call to
//! [`Journal::append`] writes *one* record holding all its operations, which
//! is applied atomically after a crash (all of it or none of it).
//!
//! A single writer thread owns the files. It takes every request queued
//! while the previous fdatasync ran, writes them with one vectored `write`,
//! issues *one* `fdatasync`, then completes all their futures (group commit).
//! An append future resolves `Ok` only after an fdatasync of the segment that
//! holds the record returned (and, if the record is the first one after a new
//! segment file was created, after the directory was fsynced too).
//!
//! # Directory layout
//!
//! ```text
//! <dir>/lock                          exclusive flock, held while the journal is open
//! <dir>/journal-0000000000000001.log  segments; 16-digit decimal sequence number
//! <dir>/journal-0000000000000002.log  (gaps appear when old segments are deleted)
//! <dir>/journal.spare.tmp             zero-filled spare segment being prepared (ignored by recovery)
//! <dir>/journal-*.log.corrupt[-at-N]  bytes set aside by a salvage (ignored by recovery)
//! ```
//!
//! # Record format
//!
//! Every segment is a sequence of records; all integers are little-endian:
//!
//! ```text
//! record  = len:u32  crc:u32  type:u8  payload[len]
//!           len = payload length (type byte excluded), at most MAX_RECORD_BYTES
//!           crc = CRC-32C over type byte + payload
//! ```
//!
//! Type 1, the **segment header**, is always and only the first record:
//!
//! ```text
//! magic:[8] = "FMQJRNL\0"  version:u16 = 1  flags:u16 = 0
//! seq:u64          segment sequence number (must match the file name)
//! epoch:u64        JournalConfig::epoch when the segment was created
//! next_id:u64      1 + highest message id written before this segment
//! count:u32  { producer:str  seq:u64 } * count
//!                  checkpoint of the producer de-duplication table
//! ```
//!
//! Type 2, an **ops record** (one `append` call):
//!
//! ```text
//! count:u32  op * count
//! op  = 1:u8 (Add) id:u64 priority:u8 expires:u64 timestamp:u64 flags:u8
//!         [producer:str seq:u64]            present when flags bit 0 is set
//!         destination:str  nheaders:u32 { key:str value:str } * nheaders
//!         body_len:u32 body[body_len]
//!     | 2:u8 (Ack) id:u64
//! str = len:u32 utf8[len]
//! ```
//!
//! The header checkpoints make the producer table and the id counter survive
//! the deletion of the segments that held the original `Add` records: every
//! segment newer than a deleted one carries a table at least as recent, and
//! the active (newest) segment is never deleted.
//!
//! Segments are normally pre-allocated (a spare file zero-filled and fsynced
//! by a helper thread ahead of time, renamed into place at the roll; see
//! [`JournalConfig::preallocate`]) so that the per-commit fdatasync
//! overwrites allocated blocks instead of growing the file. A
//! segment is *sealed* (its unused zero tail cut off and the file fsynced)
//! before the next one is created, so only the last segment can end in
//! zeros.
//!
//! # Crash rules (recovery)
//!
//! Segments are scanned in sequence order with large sequential reads.
//!
//! * **Last segment.** Writes are only ever appended to it, so damage can only
//!   be the torn tail of a write that was never acknowledged. Scanning stops
//!   at the first record that is incomplete (extends past the end of file),
//!   fails its CRC, does not decode, or is zero-filled space followed by
//!   non-zero bytes; everything from there on is cut off (the file is
//!   truncated and fsynced), logged with `tracing::warn!` (file, offset,
//!   dropped bytes) and reported in [`RecoveryReport::truncated`]. A record
//!   is applied only if it is entirely valid, so a torn multi-op record
//!   applies none of its operations. An all-zero tail (unused pre-allocated
//!   space), an empty file or a header-only file is a clean end.
//! * **Earlier segments** are sealed and were fsynced before their successor
//!   was created, so any invalid byte in them is corruption, not a crash
//!   artefact: recovery refuses to start with [`StoreError::Corrupt`] naming
//!   the file and offset, unless [`JournalConfig::salvage`] is set. Salvage
//!   copies the damaged tail to `<segment>.corrupt-at-<offset>`, truncates
//!   the segment there (or sets the whole segment aside as
//!   `<segment>.corrupt` when its header is bad), logs loudly and reports it
//!   in [`RecoveryReport::salvaged`]. Messages and acks in the dropped bytes
//!   are lost (acked messages may come back).
//! * Recovery never invents messages: only CRC-valid, fully decodable records
//!   are applied; `Ack`s of unknown ids are ignored; no input bytes can make
//!   it panic or allocate more than the file's size.
//!
//! # Segment deletion
//!
//! A segment is deleted when it is not the active one, none of its messages
//! is live, and every older segment that one of its `Ack` records refers to
//! has already been deleted (KahaDB's ack-file map). Without the last rule,
//! deleting segment `S` holding the ack of a message in an older, still
//! present segment `R` would resurrect that message on recovery. Deletions
//! happen in rounds separated by a directory fsync, only after the acks that
//! made them possible are durable. Recovery reads only the remaining
//! segments, so its cost does not grow with deleted history.
//!
//! # Memory
//!
//! The journal keeps an index `id -> (segment, offset, length)` of live
//! messages (about 50 bytes each). Recovery loads message bodies until
//! [`JournalConfig::body_cache_bytes`] is reached; later messages come back
//! with `body: None` and are read back with [`Journal::read_body`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

mod format;
mod recovery;
mod state;
mod writer;

#[cfg(test)]
mod tests;

pub use self::format::MAX_RECORD_BYTES;

use self::format::OpMeta;
use self::state::{IdMap, State};
use self::writer::{Active, Preallocator, Queue, Request, Writer};

/// Name of the spare segment file prepared by the pre-allocator.
const SPARE_NAME: &str = "journal.spare.tmp";

/// Name of the lock file.
const LOCK_NAME: &str = "lock";

/// `read_body` verifies the record CRC when the record is at most this much
/// larger than the body (i.e. for ordinary one-message records).
const VERIFY_SLACK: u64 = 64 << 10;

/// One message as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Broker-assigned id, unique and increasing across the journal's life.
    pub id: u64,
    /// Destination, e.g. `/queue/orders`.
    pub destination: String,
    /// Priority, 0-9.
    pub priority: u8,
    /// Expiry in ms since the Unix epoch, 0 = never.
    pub expires: u64,
    /// Broker receive time in ms since the Unix epoch.
    pub timestamp: u64,
    /// Producer id and sequence number, for de-duplication.
    pub producer: Option<ProducerSeq>,
    /// Application headers as the broker will deliver them.
    pub headers: Vec<(String, String)>,
    /// Always `Some` when appended (and `body_len` must match it); after
    /// recovery `None` when not loaded because of
    /// [`JournalConfig::body_cache_bytes`].
    pub body: Option<Bytes>,
    /// Length of the body in bytes.
    pub body_len: u32,
}

/// A producer's id and the sequence number of one of its messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProducerSeq {
    /// Producer id.
    pub producer: String,
    /// Sequence number within the producer.
    pub seq: u64,
}

/// One logical operation. A `Vec<Op>` passed to one append is one atomic
/// record on disk (a transaction commit or a dead-letter move: all or nothing
/// after a crash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A message was accepted.
    Add(StoredMessage),
    /// A message was removed (consumed, expired, moved). Unknown ids are
    /// ignored on recovery.
    Ack {
        /// Id of the removed message.
        id: u64,
    },
}

/// Journal settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Journal directory, created if missing.
    pub dir: PathBuf,
    /// Roll to a new segment file past this size (default 64 MiB). A record
    /// larger than this gets a segment of its own.
    pub segment_bytes: u64,
    /// Recovery loads message bodies until this many bytes (default
    /// 256 MiB); later ones come back with `body: None`.
    pub body_cache_bytes: u64,
    /// Allow starting past a corrupt segment that is not the last one: the
    /// rest of that segment is dropped (and logged loudly). Default `false`.
    pub salvage: bool,
    /// Written in each new segment header; 0 in standalone mode. When it
    /// differs from the last segment's, `open` starts a new segment.
    pub epoch: u64,
    /// Pre-allocate (zero-fill and fsync) the next segment file on a helper
    /// thread once the active segment is a quarter full, so that the
    /// group-commit fdatasyncs overwrite allocated blocks instead of growing
    /// the file (about twice as cheap on ext4). Default `true`. The first
    /// segment of a new journal is not pre-allocated.
    pub preallocate: bool,
    /// Upper bound on how long a record appended with
    /// [`Journal::append_lazy`] stays un-synced (default 100 ms).
    pub lazy_sync_interval: Duration,
}

impl JournalConfig {
    /// Settings for a journal in `dir` with defaults for everything else.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            body_cache_bytes: 256 << 20,
            salvage: false,
            epoch: 0,
            preallocate: true,
            lazy_sync_interval: Duration::from_millis(100),
        }
    }
}

/// What [`Journal::open`] recovered.
#[derive(Debug)]
pub struct Recovered {
    /// Every live (unacked) message, in append order.
    pub messages: Vec<StoredMessage>,
    /// Highest sequence number seen per producer id (de-duplication state).
    pub producers: HashMap<String, u64>,
    /// 1 + the highest message id ever written (1 for a new journal).
    pub next_id: u64,
    /// Details of the recovery.
    pub report: RecoveryReport,
}

/// Details of a recovery.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments: usize,
    /// Valid records applied (segment headers included).
    pub records: u64,
    /// Bytes read from segment files.
    pub bytes_scanned: u64,
    /// Torn or corrupt tail of the last segment that was cut off.
    pub truncated: Option<Truncation>,
    /// With `salvage`: damaged earlier segments whose rest was dropped.
    pub salvaged: Vec<Truncation>,
    /// Wall time of `open`.
    pub elapsed: Duration,
    /// Epoch in the newest valid segment header, if any.
    pub last_epoch: Option<u64>,
}

/// A piece of a segment that recovery dropped.
#[derive(Debug, Clone)]
pub struct Truncation {
    /// Segment file.
    pub file: PathBuf,
    /// Offset of the first dropped byte.
    pub offset: u64,
    /// Number of bytes dropped.
    pub dropped_bytes: u64,
    /// Why the data at `offset` was rejected.
    pub reason: String,
}

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O operation failed.
    #[error("journal I/O error: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// File or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A segment before the last one is damaged and `salvage` is off (or a
    /// record read back by `read_body` failed its CRC).
    #[error("journal corrupt: {file} at offset {offset}: {reason}")]
    Corrupt {
        /// Damaged segment file.
        file: PathBuf,
        /// Offset of the first bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process (or another `Journal`) holds the directory lock.
    #[error("journal directory is locked by another process: {path}")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The journal was shut down.
    #[error("journal is shut down")]
    Closed,
    /// `read_body` of an id that is not live.
    #[error("message {id} is not in the journal")]
    NotFound {
        /// The id asked for.
        id: u64,
    },
    /// An operation cannot be stored as given (e.g. an `Add` without body).
    #[error("invalid journal operation (message {id:?}): {reason}")]
    InvalidOp {
        /// Message concerned, if any.
        id: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// A record would exceed [`MAX_RECORD_BYTES`].
    #[error("journal record of at least {bytes} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Size of the record (so far).
        bytes: u64,
        /// The maximum.
        max: u64,
    },
    /// An earlier write or fsync failed; the journal accepts no more appends
    /// (its durable state is unknown until it is reopened).
    #[error("journal failed earlier and refuses appends: {reason}")]
    Failed {
        /// The original error.
        reason: String,
    },
}

impl StoreError {
    /// A copy of this error (I/O errors keep their kind and message).
    fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Io { op, path, source } => StoreError::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::Corrupt {
                file,
                offset,
                reason,
            } => StoreError::Corrupt {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            StoreError::Locked { path } => StoreError::Locked { path: path.clone() },
            StoreError::Closed => StoreError::Closed,
            StoreError::NotFound { id } => StoreError::NotFound { id: *id },
            StoreError::InvalidOp { id, reason } => StoreError::InvalidOp {
                id: *id,
                reason: reason.clone(),
            },
            StoreError::TooLarge { bytes, max } => StoreError::TooLarge {
                bytes: *bytes,
                max: *max,
            },
            StoreError::Failed { reason } => StoreError::Failed {
                reason: reason.clone(),
            },
        }
    }
}

/// Journal counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalStats {
    /// Records written since open (segment headers excluded).
    pub records: u64,
    /// Bytes written since open (headers included).
    pub bytes: u64,
    /// fdatasyncs of segment files since open.
    pub fsyncs: u64,
    /// Records covered by the most recent fdatasync.
    pub last_batch_records: u64,
    /// Average records per fdatasync.
    pub avg_batch_records: f64,
    /// Segment files currently present.
    pub segments_live: usize,
    /// Segment files deleted since open.
    pub segments_deleted: u64,
    /// Live messages in the index (written ones; queued ones not yet).
    pub live_messages: usize,
    /// The journal failed (see [`StoreError::Failed`]).
    pub failed: bool,
}

/// Counters updated by the writer.
#[derive(Default)]
struct Counters {
    records: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    last_batch_records: AtomicU64,
    segments_deleted: AtomicU64,
    failed: AtomicBool,
}

/// State shared by the handles and the writer thread.
struct Shared {
    queue: Mutex<Queue>,
    queue_cv: Condvar,
    state: Mutex<State>,
    /// Bodies of `Add`s handed to the writer but not yet written.
    pending: Mutex<IdMap<Bytes>>,
    stats: Counters,
    dir: PathBuf,
    /// Set once `shutdown` finished.
    closed: AtomicBool,
    /// Bytes of records queued for the writer and not yet written (appenders use it for
    /// backpressure: lazy appends have no waiter to slow them down).
    backlog: AtomicU64,
    /// Notified by the writer after each batch it has written (and when it stops).
    drained: tokio::sync::Notify,
}

/// Locks a mutex, ignoring poisoning (the protected data stays consistent:
/// no code path panics while holding these locks).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Path of segment `seq` in `dir`.
fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("journal-{seq:016}.log"))
}

/// Parses a segment file name (`journal-<16 digits>.log`).
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("journal-")?.strip_suffix(".log")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Maps an I/O error to [`StoreError::Io`] with context.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the exclusive, non-blocking lock on the journal's lock file.
fn try_lock_dir(lock_file: &File, lock_path: PathBuf) -> Result<(), StoreError> {
    match lock_file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked { path: lock_path }),
        Err(TryLockError::Error(e)) => Err(StoreError::Io {
            op: "lock journal directory",
            path: lock_path,
            source: e,
        }),
    }
}

struct Threads {
    writer: JoinHandle<()>,
    prealloc: Option<JoinHandle<()>>,
}

struct Inner {
    shared: Arc<Shared>,
    threads: Mutex<Option<Threads>>,
    lock_file: Mutex<Option<File>>,
    prealloc: Option<Arc<Preallocator>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        let mut threads = lock(&self.threads);
        {
            let mut q = lock(&self.shared.queue);
            q.closed = true;
            self.shared.queue_cv.notify_one();
        }
        let Some(t) = threads.take() else {
            return;
        };
        if t.writer.join().is_err() {
            tracing::error!("journal: writer thread panicked");
        }
        if let Some(p) = &self.prealloc {
            p.stop();
        }
        if let Some(h) = t.prealloc {
            let _ = h.join();
        }
        if let Some(p) = &self.prealloc {
            p.remove_spare();
        }
        self.shared.closed.store(true, Ordering::Release);
        // Closing the descriptor releases the flock.
        drop(lock(&self.lock_file).take());
        tracing::info!(dir = %self.shared.dir.display(), "journal closed");
    }
}

/// Handle to an open journal. Cheap to clone; `Send + Sync`. The journal
/// shuts down when the last handle is dropped (or on [`Journal::shutdown`]).
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.shared.dir)
            .finish_non_exhaustive()
    }
}

/// Future returned by [`Journal::append`]: resolves once an fdatasync
/// covering the record returned.
///
/// # Cancel safety
///
/// Dropping it does not cancel the write: the record is already queued and
/// will be written (and synced) anyway; only the notification is lost.
#[must_use = "the append is queued regardless; await it to know it is durable, or use append_lazy"]
pub struct Append {
    state: AppendState,
}

enum AppendState {
    Waiting(oneshot::Receiver<Result<(), StoreError>>),
    Done(Option<Result<(), StoreError>>),
}

impl Future for Append {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            AppendState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                // The writer dropped the sender without answering: it is gone.
                Poll::Ready(r) => Poll::Ready(r.unwrap_or(Err(StoreError::Closed))),
                Poll::Pending => Poll::Pending,
            },
            AppendState::Done(r) => Poll::Ready(r.take().unwrap_or(Err(StoreError::Closed))),
        }
    }
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append").finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir`: takes an exclusive
    /// lock on `<dir>/lock` (held until shutdown), recovers synchronously
    /// (see the module documentation for the crash rules), deletes segments
    /// that are no longer needed and starts the writer thread.
    ///
    /// This blocks for the duration of recovery; call it from a blocking
    /// context (before starting to serve, or via `spawn_blocking`).
    pub fn open(config: JournalConfig) -> Result<(Journal, Recovered), StoreError> {
        let started = Instant::now();
        let dir = config.dir.clone();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io_err("create journal directory", &dir))?;
            // Make the new directory's entry durable in its parent.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync parent of journal directory", parent))?;
        }
        let lock_path = dir.join(LOCK_NAME);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("open lock file", &lock_path))?;
        try_lock_dir(&lock_file, lock_path)?;
        let dir_file = File::open(&dir).map_err(io_err("open journal directory", &dir))?;
        let prealloc = config.preallocate.then(|| {
            Arc::new(Preallocator::new(
                dir.join(SPARE_NAME),
                config.segment_bytes,
            ))
        });
        // A spare left by a crash may not be completely zero-filled.
        if let Err(e) = std::fs::remove_file(dir.join(SPARE_NAME)) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(StoreError::Io {
                    op: "remove stale spare segment",
                    path: dir.join(SPARE_NAME),
                    source: e,
                });
            }
        }

        let out = recovery::recover(&config, &dir_file)?;
        let mut state = out.state;
        let (active, needs_header, last_epoch) = match out.last {
            Some(ls) => {
                let active = Active {
                    seq: ls.seq,
                    path: ls.path,
                    file: ls.file,
                    pos: ls.data_end,
                    header_end: ls.header_end,
                    file_len: ls.file_len,
                };
                (active, ls.header.is_none(), ls.header.map(|h| h.epoch))
            }
            None => {
                let path = segment_path(&dir, 1);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io_err("create segment", &path))?;
                state
                    .segments
                    .insert(1, state::SegmentInfo::new(path.clone()));
                let active = Active {
                    seq: 1,
                    path,
                    file,
                    pos: 0,
                    header_end: 0,
                    file_len: 0,
                };
                (active, true, None)
            }
        };
        state.active = active.seq;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            state: Mutex::new(state),
            pending: Mutex::new(IdMap::default()),
            stats: Counters::default(),
            dir: dir.clone(),
            closed: AtomicBool::new(false),
            backlog: AtomicU64::new(0),
            drained: tokio::sync::Notify::new(),
        });
        let mut writer = Writer::new(
            shared.clone(),
            &config,
            dir_file,
            active,
            out.producers.clone(),
            out.next_id.saturating_sub(1),
            prealloc.clone(),
        );
        writer.seek_to_end()?;
        if needs_header {
            writer.write_header_in_place()?;
        }
        if !needs_header && last_epoch != Some(config.epoch) {
            tracing::info!(
                old = ?last_epoch,
                new = config.epoch,
                "journal: epoch changed; starting a new segment"
            );
            writer.roll()?;
            writer.sync_now()?;
        }

        let spawn_err = |e| StoreError::Io {
            op: "spawn journal thread",
            path: dir.clone(),
            source: e,
        };
        let prealloc_thread = match &prealloc {
            Some(p) => {
                let p = p.clone();
                Some(
                    std::thread::Builder::new()
                        .name("journal-prealloc".into())
                        .spawn(move || p.run())
                        .map_err(spawn_err)?,
                )
            }
            None => None,
        };
        let writer_thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run());
        let writer_thread = match writer_thread {
            Ok(t) => t,
            Err(e) => {
                if let Some(p) = &prealloc {
                    p.stop();
                }
                return Err(spawn_err(e));
            }
        };

        let mut report = out.report;
        report.elapsed = started.elapsed();
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            records = report.records,
            bytes = report.bytes_scanned,
            live_messages = out.messages.len(),
            next_id = out.next_id,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "journal recovered"
        );
        let journal = Journal {
            inner: Arc::new(Inner {
                shared,
                threads: Mutex::new(Some(Threads {
                    writer: writer_thread,
                    prealloc: prealloc_thread,
                })),
                lock_file: Mutex::new(Some(lock_file)),
                prealloc,
            }),
        };
        Ok((
            journal,
            Recovered {
                messages: out.messages,
                producers: out.producers,
                next_id: out.next_id,
                report,
            },
        ))
    }

    /// Encodes `ops` into one record and queues it for the writer.
    fn submit(
        &self,
        ops: Vec<Op>,
        waiter: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Result<(), StoreError> {
        let shared = &self.inner.shared;
        let mut req = Request {
            record: Vec::new(),
            ops: Vec::new(),
            waiter,
        };
        if !ops.is_empty() {
            let size = format::ops_record_len(&ops)?;
            let mut record = Vec::with_capacity(size);
            let start = format::begin_record(&mut record, format::REC_OPS);
            format::put_op_count(&mut record, ops.len() as u32);
            let mut metas: Vec<OpMeta> = ops
                .into_iter()
                .map(|op| format::put_op(&mut record, start, op))
                .collect();
            format::finish_record(&mut record, start);
            debug_assert_eq!(record.len(), size);
            // Park the bodies so `read_body` finds them until written.
            if metas.iter().any(|m| matches!(m, OpMeta::Add { .. })) {
                let mut pending = lock(&shared.pending);
                for m in &mut metas {
                    if let OpMeta::Add { id, body, .. } = m {
                        if let Some(b) = body.take() {
                            pending.insert(*id, b);
                        }
                    }
                }
            }
            req.record = record;
            req.ops = metas;
        }
        let mut q = lock(&shared.queue);
        let refused = if let Some(reason) = &q.failed {
            Some(StoreError::Failed {
                reason: reason.clone(),
            })
        } else if q.closed {
            Some(StoreError::Closed)
        } else {
            None
        };
        if let Some(err) = refused {
            drop(q);
            let mut pending = lock(&shared.pending);
            for m in &req.ops {
                if let OpMeta::Add { id, .. } = m {
                    pending.remove(id);
                }
            }
            return Err(err);
        }
        shared
            .backlog
            .fetch_add(req.record.len() as u64, Ordering::Relaxed);
        q.items.push(req);
        if q.writer_idle {
            shared.queue_cv.notify_one();
        }
        Ok(())
    }

    /// Bytes of records queued for the writer and not yet written.
    pub fn backlog_bytes(&self) -> u64 {
        self.inner.shared.backlog.load(Ordering::Relaxed)
    }

    /// Waits until fewer than `limit` bytes are queued for the writer, or the journal stopped or
    /// failed (then appends report the error). Producers use it so that receipt-less appends
    /// cannot queue more than the disk absorbs.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn wait_backlog_below(&self, limit: u64) {
        let shared = &self.inner.shared;
        loop {
            let drained = shared.drained.notified();
            if shared.backlog.load(Ordering::Relaxed) < limit
                || shared.closed.load(Ordering::Relaxed)
                || lock(&shared.queue).failed.is_some()
            {
                return;
            }
            drained.await;
        }
    }

    /// Queues `ops` as one atomic record. The returned future resolves once
    /// an fdatasync covering the record returned (group commit: one fdatasync
    /// covers every append that arrived while the previous one ran).
    /// Dropping the future does not cancel the write. An empty `ops` is a
    /// [`flush`](Journal::flush).
    ///
    /// Errors (delivered by the future): [`StoreError::InvalidOp`] /
    /// [`StoreError::TooLarge`] for ops that cannot be stored (nothing is
    /// queued), [`StoreError::Closed`] after shutdown,
    /// [`StoreError::Failed`] / [`StoreError::Io`] when writing failed.
    pub fn append(&self, ops: Vec<Op>) -> Append {
        let (tx, rx) = oneshot::channel();
        let state = match self.submit(ops, Some(tx)) {
            Ok(()) => AppendState::Waiting(rx),
            Err(e) => AppendState::Done(Some(Err(e))),
        };
        Append { state }
    }

    /// Queues `ops` as one atomic record without a waiter (acks, persistent
    /// sends without receipt). It is written with the next batch and made
    /// durable by the next fdatasync, which happens at the latest
    /// [`JournalConfig::lazy_sync_interval`] (100 ms) later. Errors cannot be
    /// reported and are logged.
    pub fn append_lazy(&self, ops: Vec<Op>) {
        match self.submit(ops, None) {
            Ok(()) => {}
            Err(StoreError::Closed) => {
                tracing::warn!("journal: lazy append after shutdown dropped")
            }
            Err(e) => tracing::error!(error = %e, "journal: lazy append dropped"),
        }
    }

    /// Reads the body of a live message back (blocking `pread`, normally
    /// served from the page cache; the record CRC is verified for ordinary
    /// records). Works as soon as the append was queued.
    ///
    /// Errors: [`StoreError::NotFound`] when the id is not live,
    /// [`StoreError::Corrupt`] when the record fails its CRC,
    /// [`StoreError::Closed`] after shutdown.
    pub fn read_body(&self, id: u64) -> Result<Bytes, StoreError> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        // Pending first, then the index: the writer inserts into the index
        // before it removes from pending, so no window misses both.
        if let Some(b) = lock(&shared.pending).get(&id) {
            return Ok(b.clone());
        }
        let (loc, file, path) = lock(&shared.state).reader(id)?;
        let read_err = |e| StoreError::Io {
            op: "read message body",
            path: path.to_path_buf(),
            source: e,
        };
        let body_len = u64::from(loc.body_len);
        if u64::from(loc.rec_len) > body_len + VERIFY_SLACK {
            let mut buf = vec![0u8; loc.body_len as usize];
            file.read_exact_at(&mut buf, loc.rec_off + u64::from(loc.body_rel))
                .map_err(read_err)?;
            return Ok(Bytes::from(buf));
        }
        let mut buf = vec![0u8; loc.rec_len as usize];
        file.read_exact_at(&mut buf, loc.rec_off)
            .map_err(read_err)?;
        let corrupt = |reason: &str| StoreError::Corrupt {
            file: path.to_path_buf(),
            offset: loc.rec_off,
            reason: format!("reading message {id}: {reason}"),
        };
        let Some(frame) = buf.first_chunk::<{ format::FRAME_LEN }>() else {
            return Err(corrupt("record shorter than its frame"));
        };
        let (len, crc, typ) = format::parse_frame(frame);
        if len as usize + format::FRAME_LEN != buf.len()
            || format::record_crc(typ, &buf[format::FRAME_LEN..]) != crc
        {
            return Err(corrupt("CRC mismatch"));
        }
        let range = loc.body_rel as usize..loc.body_rel as usize + loc.body_len as usize;
        if range.end > buf.len() {
            return Err(corrupt("body outside its record"));
        }
        if buf.len() as u64 > 2 * body_len + 4096 {
            Ok(Bytes::copy_from_slice(&buf[range]))
        } else {
            Ok(Bytes::from(buf).slice(range))
        }
    }

    /// [`read_body`](Journal::read_body) on tokio's blocking pool.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only discards the result (the read
    /// itself has no side effects).
    pub async fn read_body_async(&self, id: u64) -> Result<Bytes, StoreError> {
        let journal = self.clone();
        match tokio::task::spawn_blocking(move || journal.read_body(id)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Io {
                op: "read message body (blocking task)",
                path: self.inner.shared.dir.clone(),
                source: io::Error::other(e),
            }),
        }
    }

    /// Resolves once everything queued before the call is written and
    /// fsynced.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future does not undo or cancel anything.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.append(Vec::new()).await
    }

    /// Finishes the appends queued so far (written and fsynced, their
    /// futures completed), stops the writer thread and releases the
    /// directory lock. Blocks until then. Idempotent. Afterwards appends
    /// resolve `Err(Closed)` and `read_body` fails with `Closed`.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Current counters.
    pub fn stats(&self) -> JournalStats {
        let shared = &self.inner.shared;
        let c = &shared.stats;
        let records = c.records.load(Ordering::Relaxed);
        let fsyncs = c.fsyncs.load(Ordering::Relaxed);
        let (segments_live, live_messages) = {
            let st = lock(&shared.state);
            (st.segments.len(), st.index.len())
        };
        JournalStats {
            records,
            bytes: c.bytes.load(Ordering::Relaxed),
            fsyncs,
            last_batch_records: c.last_batch_records.load(Ordering::Relaxed),
            avg_batch_records: if fsyncs == 0 {
                0.0
            } else {
                records as f64 / fsyncs as f64
            },
            segments_live,
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            live_messages,
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }
}

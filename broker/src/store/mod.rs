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
//! <dir>/journal.spare.tmp             zero-filled spare segment being prepared (ignored by recovery);
//! <dir>/journal.spare-<E>.tmp           journal.spare-<E>.tmp for a journal of epoch E > 0
//! <dir>/journal-*.log.corrupt[-at-N]  bytes set aside by a salvage (ignored by recovery)
//! <dir>/EPOCH                         highest epoch that claimed the store (epoch fencing)
//! <dir>/EPOCH.<E>.tmp                 EPOCH being replaced
//! <dir>/journal.fence-<E>.tmp         first segment of epoch E being prepared
//! <dir>/journal-*.log.stale[-N]       segments of a stale master, set aside (never read back)
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
//! magic:[8] = "FMQJRNL\0"  version:u16 = 2  flags:u16
//! seq:u64          segment sequence number (must match the file name)
//! epoch:u64        JournalConfig::epoch when the segment was created
//! next_id:u64      1 + highest message id written before this segment
//! count:u32  { producer:str  seq:u64 } * count
//!                  version 1: the producer table (raw ids, not loaded);
//!                  version 2 writes count = 0 (the table follows in type 3)
//! [fence]          present when flags bit 0 is set (other bits must be 0)
//! fence = n:u32 { seq:u64 end:u64 } * n
//!                  older segments (ascending seq, all lower than this
//!                  segment's) and the end of the data accepted in each
//! ```
//!
//! Standalone journals (epoch 0) write flags 0 and no fence, exactly as
//! before fencing existed. A journal with an epoch > 0 writes a fence into
//! every segment header it creates (see *Epoch fencing*).
//!
//! Type 3, a **producer checkpoint** record, only directly after the header
//! (any number of them, each at most 1 MiB of payload):
//!
//! ```text
//! count:u32  { key:str  seq:u64 } * count       key = producer_key(user, id)
//! ```
//!
//! Type 2, an **ops record** (one `append` call):
//!
//! ```text
//! count:u32  op * count
//! op  = 1:u8 (Add) id:u64 priority:u8 expires:u64 timestamp:u64 flags:u8
//!         [producer:str seq:u64]            present when flags bit 0 is set
//!         [user:str]                        present when flags bit 1 is set
//!         destination:str  nheaders:u32 { key:str value:str } * nheaders
//!         body_len:u32 body[body_len]
//!     | 2:u8 (Ack) id:u64
//!     | 3:u8 (Forget) key:str               a producer table entry dropped
//! str = len:u32 utf8[len]
//! ```
//!
//! The checkpoints make the producer table and the id counter survive
//! the deletion of the segments that held the original `Add` records: every
//! segment newer than a deleted one carries a table at least as recent, and
//! the active (newest) segment is never deleted. The table is bounded by the
//! broker (`Forget` ops), and split into records of bounded size, so a
//! checkpoint can never outgrow [`MAX_RECORD_BYTES`]; the roll threshold
//! counts the data after the checkpoint, so a large table does not make
//! every append start a new segment. Segments of format version 1 are still
//! read (their producer ids carry no user and are not loaded).
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
//!   fails its CRC, or is zero-filled space followed by
//!   non-zero bytes; everything from there on is cut off (the file is
//!   truncated and fsynced), logged with `tracing::warn!` (file, offset,
//!   dropped bytes) and reported in [`RecoveryReport::truncated`].
//! * **A complete record recovery cannot accept** (its CRC is right but it
//!   does not decode, has an unknown type, is longer than
//!   [`MAX_RECORD_BYTES`], or names another segment) was written whole: it
//!   is never a torn write, so it is never cut off as one, in any segment.
//!   Recovery refuses to start with [`StoreError::Corrupt`] (file, offset)
//!   unless salvage is set, which keeps a copy of the dropped bytes. A record
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
//! * **Fences** (see *Epoch fencing*) bound what is read: a segment listed
//!   in the authoritative fence is read only up to its fenced end (it is an
//!   earlier segment for the rules above: damage before that end is
//!   corruption; a segment shorter than its end is too); the bytes after it
//!   are ignored, counted in [`RecoveryReport::fenced_bytes`] and logged.
//!   Messages whose `Add` lies beyond a fence are not live and acks beyond
//!   it do not count. Segments of a stale master are renamed to `*.stale`
//!   before anything is read ([`RecoveryReport::stale_segments`]).
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
//! With fences the rules are unchanged: the book-keeping of a fenced segment
//! comes from its fenced part only, so bytes a stale master appended after
//! the fence neither keep a message live nor count as acks. The segment
//! holding the first fence of an epoch may be deleted while segments it
//! fences remain: every later segment header of that epoch carries the fence
//! on (and a newer epoch's fence lists them with the same ends). A fencing
//! journal checks `EPOCH` before every deletion round and never deletes once
//! fenced.
//!
//! # Epoch fencing
//!
//! Brokers of a group share one directory; ZooKeeper elects the master and
//! hands it an epoch, strictly increasing per group, which the broker passes
//! as [`JournalConfig::epoch`]. Fencing makes a *stale* master harmless: one
//! that was paused (SIGSTOP, a long GC-like stall, a frozen VM) while its
//! ZooKeeper session expired and a new master took over, possibly without
//! the directory lock ([`LockMode::BestEffort`]: the paused process still
//! holds it). With epoch 0 (standalone) none of this applies and nothing
//! changes, except that a standalone journal refuses a store that fencing
//! already protects (its own segments would otherwise be fenced away as
//! stale at the next takeover).
//!
//! `<dir>/EPOCH` holds the highest epoch that claimed the store, in decimal
//! ASCII with a final newline (e.g. `7\n`). It is only ever replaced
//! atomically: written to `EPOCH.<E>.tmp`, fsynced, renamed over `EPOCH`,
//! directory fsynced. Anything else in it is corruption
//! ([`StoreError::Corrupt`]).
//!
//! Opening with epoch `E > 0`:
//!
//! 1. If `EPOCH` or any segment header holds an epoch above `E`, `open`
//!    fails with [`StoreError::Fenced`] having modified nothing.
//! 2. Otherwise it writes `EPOCH = E` (when lower) *before* listing and
//!    reading the segments, then checks the headers again. Ordering matters:
//!    a stale writer's batch that was fsynced before the new `EPOCH` was in
//!    place was acknowledged and is seen by this recovery; one fsynced after
//!    it is reported `Fenced` by the stale writer (rule 4). Recovering first
//!    would lose batches acknowledged in between.
//! 3. Unless the store's authoritative fence already has epoch `E` and the
//!    last segment too (a reopen by the same master), it never appends to an
//!    existing segment: it starts a new one whose header carries a fence
//!    listing every segment present with the end of what recovery accepted
//!    in it. That segment is created atomically (header written to
//!    `journal.fence-<E>.tmp`, fsynced, hard-linked to the first free
//!    segment number, directory fsynced), and the older last segment is left
//!    untouched (a torn tail is reported in [`RecoveryReport::truncated`] but
//!    not cut off: the fence excludes it). Later segments of epoch `E` carry
//!    the same fence, trimmed to the segments still present.
//! 4. Its writer reads `EPOCH` after every fsync, before completing that
//!    batch's waiters, and before every segment deletion round. Cost: one
//!    open + read + close of a 2–21 byte file per fsync (a few microseconds
//!    on a local file system, next to a millisecond-scale fdatasync; one
//!    round trip on NFS). If it holds a higher epoch, the journal is fenced:
//!    the batch's waiters and every later append get
//!    [`StoreError::Fenced`], it deletes nothing any more, stops writing,
//!    [`Journal::is_fenced`] turns true and it logs one error. A stale writer
//!    therefore never acknowledges a write made after the takeover. A lower
//!    or missing `EPOCH` (an older master, paused in the middle of its own
//!    open, renamed its file in late) is put back to `E`.
//!
//! Fencing writers (epoch > 0) never replace a file: new segments are
//! created with `O_EXCL` or by hard link, and a number already taken by
//! another writer is skipped. Each uses its own spare file
//! (`journal.spare-<E>.tmp`); leftovers of its own and older epochs are
//! removed at open.
//!
//! Recovery (for any epoch) takes as **authoritative fence** the one with the
//! highest epoch (ties: the highest segment). It reads the segments listed in
//! it only up to their ends. A segment with a valid header whose epoch is
//! lower than the fence's, that the fence does not list and that is not the
//! fence's own, was created by a stale master after the takeover: it is set
//! aside (renamed to `*.stale`) and never read. With an epoch > 0, blank
//! (all-zero) segments and a last segment without a valid header are set
//! aside too: nothing in them was accepted, and the writer that created them
//! may still hold them open. Set-aside files are never deleted by the
//! journal.
//!
//! **Shared file systems.** The `EPOCH` check relies on the file system
//! showing the replaced file to the stale writer promptly. Local file systems
//! do; NFSv4 does thanks to close-to-open consistency (the file is opened
//! afresh for every check), but attribute and directory caching can delay
//! what a stale client sees (the new master's listing of a stale writer's
//! just-created segment, or the new `EPOCH` on clients mounted with
//! `nocto`), and an `flock` held by a dead NFS client is released only when
//! the server expires its lease. Fencing narrows the window in which a stale
//! master can do harm to about one group commit; it does not replace the
//! ZooKeeper epoch, which remains the authority: a master must stop serving
//! as soon as its session expires, whatever the journal says.
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
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

mod fence;
mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod histogram;
mod producers;
mod recovery;
mod state;
mod writer;

#[cfg(test)]
mod tests;

pub use self::format::MAX_RECORD_BYTES;
pub use self::producers::{producer_key, split_producer_key};

use self::format::OpMeta;
use self::state::{IdMap, State};
use self::writer::{Active, Preallocator, Queue, Request, Writer};

/// Name of the spare segment file prepared by the pre-allocator of a
/// journal with epoch 0 (see [`spare_name`]).
const SPARE_NAME: &str = "journal.spare.tmp";

/// Name of the spare segment file of a journal with `epoch`. Fencing
/// journals (epoch > 0) each use their own, so that a stale writer's
/// pre-allocator never shares a file with the new master's.
fn spare_name(epoch: u64) -> String {
    if epoch == 0 {
        SPARE_NAME.to_owned()
    } else {
        format!("journal.spare-{epoch}.tmp")
    }
}

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
    /// Producer id, as the client sent it.
    pub producer: String,
    /// Sequence number within the producer.
    pub seq: u64,
    /// The authenticated user that sent it: producer ids are scoped to their user (see
    /// [`producer_key`]). Empty only for records of journal format version 1, which carried no
    /// user; those never enter the de-duplication table.
    pub user: Arc<str>,
}

impl ProducerSeq {
    /// The de-duplication table key ([`producer_key`]), or `None` for an unscoped (format
    /// version 1) producer.
    pub fn key(&self) -> Option<String> {
        (!self.user.is_empty()).then(|| producer_key(&self.user, &self.producer))
    }
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
    /// A producer's de-duplication entry was dropped (idle, or its user's
    /// table was full): removes the key ([`producer_key`]) from the journal's
    /// table and from the checkpoints of later segments. Unknown keys are
    /// ignored.
    Forget {
        /// The table key.
        key: String,
    },
}

/// How [`Journal::open`] treats the directory lock (`<dir>/lock`, an
/// exclusive `flock` taken with `File::try_lock`).
#[derive(Debug, Default)]
pub enum LockMode {
    /// Fail with [`StoreError::Locked`] if another holder has it (standalone
    /// brokers; the default).
    #[default]
    Required,
    /// Try; if it is held, log a warning and open anyway (an elected master
    /// whose predecessor is known dead to ZooKeeper but may be a paused
    /// process still holding the lock). Epoch fencing then protects the
    /// store: the journal should have an epoch > 0.
    BestEffort,
    /// Use a lock the caller already acquired (a slave that waited for it
    /// with [`DirLock::acquire_blocking`]). It must be the lock of this
    /// journal's directory and not in use by another open journal.
    Held(DirLock),
}

impl Clone for LockMode {
    /// Clones of `Held` share the one lock (see [`DirLock`]).
    fn clone(&self) -> Self {
        match self {
            LockMode::Required => LockMode::Required,
            LockMode::BestEffort => LockMode::BestEffort,
            LockMode::Held(l) => LockMode::Held(l.share()),
        }
    }
}

/// An acquired journal directory lock (`<dir>/lock`); released when dropped.
///
/// The lock is an `flock` on an open file description: the kernel releases
/// it when the holding process dies, whatever the way. A `DirLock` moved
/// into a [`JournalConfig`] through [`LockMode::Held`] is released when that
/// journal shuts down — unless clones of the config still hold it: clones
/// share the lock, which is released when the last of them is dropped.
pub struct DirLock {
    inner: Arc<LockInner>,
}

struct LockInner {
    /// The locked file (closing it releases the lock).
    file: File,
    /// `<dir>/lock`.
    path: PathBuf,
    /// An open journal uses it.
    in_use: AtomicBool,
}

impl std::fmt::Debug for DirLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirLock")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl DirLock {
    /// Takes the lock of journal directory `dir` if it is free; `Ok(None)`
    /// when another holder has it. Creates `dir` if missing.
    pub fn try_acquire(dir: &Path) -> Result<Option<DirLock>, StoreError> {
        let (file, path) = open_lock_file(dir)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DirLock::new(file, path))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(StoreError::Io {
                op: "lock journal directory",
                path,
                source: e,
            }),
        }
    }

    /// Blocks until the lock of journal directory `dir` is free and takes it
    /// (`File::lock`). The kernel releases a lock when its holder's process
    /// dies, so a slave learns at once that a crashed master is gone (on
    /// NFS only when the server expires the dead client's lease). Run it on
    /// a blocking thread. Creates `dir` if missing.
    pub fn acquire_blocking(dir: &Path) -> Result<DirLock, StoreError> {
        let (file, path) = open_lock_file(dir)?;
        loop {
            match file.lock() {
                Ok(()) => return Ok(DirLock::new(file, path)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        op: "wait for journal directory lock",
                        path,
                        source: e,
                    })
                }
            }
        }
    }

    /// The lock file (`<dir>/lock`).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn new(file: File, path: PathBuf) -> Self {
        DirLock {
            inner: Arc::new(LockInner {
                file,
                path,
                in_use: AtomicBool::new(false),
            }),
        }
    }

    /// Another handle on the same lock.
    fn share(&self) -> DirLock {
        DirLock {
            inner: self.inner.clone(),
        }
    }
}

/// A [`DirLock`] in use by one open journal (cleared when dropped).
struct LockGuard(DirLock);

impl LockGuard {
    /// Marks `lock` as used by the journal in `dir`, after checking that it
    /// is that directory's lock file and not used by another journal.
    fn claim(lock: DirLock, dir: &Path) -> Result<LockGuard, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let expected = dir.join(LOCK_NAME);
        let held = lock
            .inner
            .file
            .metadata()
            .map_err(io_err("stat lock file", &lock.inner.path))?;
        let same = match std::fs::metadata(&expected) {
            Ok(m) => m.dev() == held.dev() && m.ino() == held.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err("stat lock file", &expected)(e)),
        };
        if !same {
            return Err(StoreError::InvalidOp {
                id: None,
                reason: format!(
                    "LockMode::Held: the lock held is {}, not the lock of {}",
                    lock.inner.path.display(),
                    dir.display()
                ),
            });
        }
        if lock
            .inner
            .in_use
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(StoreError::Locked { path: expected });
        }
        Ok(LockGuard(lock))
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.0.inner.in_use.store(false, Ordering::Release);
    }
}

/// Permissions of every file the journal creates: message bodies are nobody else's to read,
/// and a lock file others cannot open cannot be locked by them either.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Permissions of the directories the journal creates (and of its own directory, tightened at
/// open if an older version or an operator made it wider).
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) with [`DIR_MODE`] if missing (and makes its entry
/// durable in its parent); tightens an existing one to [`DIR_MODE`].
fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Ok(meta) = std::fs::metadata(dir) {
        if meta.is_dir() {
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(io_err("restrict journal directory permissions", dir))?;
                tracing::warn!(
                    dir = %dir.display(),
                    was = format!("{:o}", meta.permissions().mode() & 0o777),
                    "journal directory was readable by other users; restricted to 700"
                );
            }
            return Ok(());
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("create journal directory", dir))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync parent of journal directory", parent))
}

/// Opens (creating them if missing) `dir` and its lock file.
fn open_lock_file(dir: &Path) -> Result<(File, PathBuf), StoreError> {
    ensure_dir(dir)?;
    let path = dir.join(LOCK_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    // A lock file of an older version (0644) could be opened, and share-locked, by anyone.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(FILE_MODE))
        .map_err(io_err("restrict lock file permissions", &path))?;
    Ok((file, path))
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
    ///
    /// An epoch > 0 (handed out by ZooKeeper, strictly increasing per broker
    /// group) turns on epoch fencing: `open` refuses a store that holds a
    /// higher epoch, writes `<dir>/EPOCH` and fences the older segments, and
    /// the writer stops with [`StoreError::Fenced`] once a newer master has
    /// taken over (see the module documentation).
    pub epoch: u64,
    /// How `open` treats the directory lock (default
    /// [`LockMode::Required`]). `open` takes it out of the config.
    pub lock: LockMode,
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
            lock: LockMode::Required,
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
    /// Epoch in the newest valid segment header, if any (before the segment
    /// that `open` starts for a new epoch).
    pub last_epoch: Option<u64>,
    /// Bytes past the fenced end of fenced segments, ignored (appended by a
    /// stale master after a newer one took over).
    pub fenced_bytes: u64,
    /// Segments created by a stale master (or never written) that were set
    /// aside as `*.stale`, under their new names.
    pub stale_segments: Vec<PathBuf>,
    /// Producer ids of format version 1 records and headers (no user): not
    /// loaded into the de-duplication table, since they could belong to any
    /// user (see `producers` in the module docs).
    pub unscoped_producer_ids: u64,
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
    /// A newer master owns the store. From `open`: the store holds a higher
    /// epoch than [`JournalConfig::epoch`] (in `<dir>/EPOCH` or a segment
    /// header), or the journal is opened with epoch 0 (standalone) on a store
    /// that epoch fencing already protects; nothing was modified. From an
    /// append: `<dir>/EPOCH` holds a higher epoch; the record may be on disk
    /// but the new master does not read it, and the journal accepts nothing
    /// any more ([`Journal::is_fenced`]).
    #[error(
        "journal fenced: the store belongs to epoch {store_epoch}, this journal has epoch {our_epoch} (a newer master took over)"
    )]
    Fenced {
        /// Highest epoch found in the store.
        store_epoch: u64,
        /// This journal's epoch.
        our_epoch: u64,
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
            StoreError::Fenced {
                store_epoch,
                our_epoch,
            } => StoreError::Fenced {
                store_epoch: *store_epoch,
                our_epoch: *our_epoch,
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
    /// The journal is fenced (see [`StoreError::Fenced`]).
    pub fenced: bool,
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
    /// [`JournalConfig::epoch`].
    epoch: u64,
    /// Set when the writer entered the fenced state.
    fenced: AtomicBool,
    /// Latency of the group-commit fdatasyncs, in microseconds (admin endpoint).
    fsync_micros: histogram::Histogram,
    /// Records made durable per group-commit fdatasync (admin endpoint).
    batch_records: histogram::Histogram,
}

/// Locks a mutex, ignoring poisoning (the protected data stays consistent:
/// no code path panics while holding these locks).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rule 1 of epoch fencing: a journal with an epoch > 0 may not open a store
/// holding a higher epoch, and a standalone journal (epoch 0) may not open a
/// store that fencing protects (its segments would be fenced away as stale).
fn check_store_epoch(dir: &Path, survey: &fence::Survey, epoch: u64) -> Result<(), StoreError> {
    let store_epoch = survey.store_epoch();
    let refused = if epoch == 0 {
        survey.is_fenced_store()
    } else {
        store_epoch > epoch
    };
    if refused {
        tracing::error!(
            dir = %dir.display(),
            store_epoch,
            epoch,
            "journal: the store belongs to a newer epoch; refusing to open it"
        );
        return Err(StoreError::Fenced {
            store_epoch,
            our_epoch: epoch,
        });
    }
    Ok(())
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

struct Threads {
    writer: JoinHandle<()>,
    prealloc: Option<JoinHandle<()>>,
}

struct Inner {
    shared: Arc<Shared>,
    threads: Mutex<Option<Threads>>,
    /// The directory lock (`None` under [`LockMode::BestEffort`] when it was
    /// held elsewhere, and after shutdown).
    dir_lock: Mutex<Option<LockGuard>>,
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
        // Closing the descriptor releases the flock (unless a clone of a
        // `LockMode::Held` config still shares it).
        drop(lock(&self.dir_lock).take());
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
    /// Opens (or creates) the journal in `config.dir`: takes the directory
    /// lock as [`JournalConfig::lock`] says (held until shutdown), checks and
    /// claims the epoch (see *Epoch fencing* in the module documentation),
    /// recovers synchronously (see the crash rules), deletes segments that
    /// are no longer needed and starts the writer thread.
    ///
    /// This blocks for the duration of recovery; call it from a blocking
    /// context (before starting to serve, or via `spawn_blocking`).
    ///
    /// Errors: [`StoreError::Locked`] (lock held elsewhere under
    /// [`LockMode::Required`], or a [`LockMode::Held`] lock already used by
    /// another open journal), [`StoreError::InvalidOp`] (a `Held` lock of
    /// another directory), [`StoreError::Fenced`] (the store belongs to a
    /// newer epoch; nothing was modified), [`StoreError::Corrupt`],
    /// [`StoreError::Io`]. On error the lock is released (a `Held` one when
    /// no clone of the config shares it).
    pub fn open(mut config: JournalConfig) -> Result<(Journal, Recovered), StoreError> {
        let started = Instant::now();
        let dir = config.dir.clone();
        let epoch = config.epoch;
        let dir_lock = match std::mem::take(&mut config.lock) {
            LockMode::Required => match DirLock::try_acquire(&dir)? {
                Some(l) => Some(LockGuard::claim(l, &dir)?),
                None => {
                    return Err(StoreError::Locked {
                        path: dir.join(LOCK_NAME),
                    })
                }
            },
            LockMode::BestEffort => match DirLock::try_acquire(&dir)? {
                Some(l) => Some(LockGuard::claim(l, &dir)?),
                None => {
                    tracing::warn!(
                        dir = %dir.display(),
                        epoch,
                        "journal: directory lock held by another process (a paused predecessor?); opening without it"
                    );
                    None
                }
            },
            LockMode::Held(l) => Some(LockGuard::claim(l, &dir)?),
        };
        let dir_file = File::open(&dir).map_err(io_err("open journal directory", &dir))?;

        // Epoch check (read-only), then, with fencing, claim the store by
        // writing EPOCH *before* recovery lists and reads the segments: a
        // stale writer's fsynced batch is then either seen by recovery or
        // reported to it as fenced, never acknowledged and lost.
        let mut survey = fence::survey(&dir, false)?;
        check_store_epoch(&dir, &survey, epoch)?;
        if epoch > 0 {
            if survey.epoch_file.is_none_or(|e| e < epoch) {
                fence::write_epoch_file(&dir, &dir_file, epoch)?;
                tracing::info!(dir = %dir.display(), epoch, previous = ?survey.epoch_file, "journal: EPOCH file written");
            }
            survey = fence::survey(&dir, true)?;
            if let Err(e) = check_store_epoch(&dir, &survey, epoch) {
                // A newer master got in between: do not leave EPOCH lowered.
                if let Err(w) = fence::write_epoch_file(&dir, &dir_file, survey.store_epoch()) {
                    tracing::error!(error = %w, "journal: cannot restore the EPOCH file of the newer master");
                }
                return Err(e);
            }
        }

        let prealloc = config.preallocate.then(|| {
            Arc::new(Preallocator::new(
                dir.join(spare_name(epoch)),
                config.segment_bytes,
            ))
        });
        // A spare left by a crash may not be completely zero-filled.
        let spare = dir.join(spare_name(epoch));
        if let Err(e) = std::fs::remove_file(&spare) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(StoreError::Io {
                    op: "remove stale spare segment",
                    path: spare,
                    source: e,
                });
            }
        }
        if epoch > 0 {
            fence::remove_leftovers(&dir, epoch);
        }

        let plan = fence::plan(survey, epoch);
        let max_seq = plan.max_seq;
        let last_epoch = plan.scan.last().and_then(|p| p.epoch);
        let fence_epoch = plan.fence.as_ref().map(|f| f.epoch);
        // A fencing journal appends only to segments of its own epoch, and
        // only once its epoch has fenced the store; otherwise it starts a new
        // segment carrying a fence.
        let continues = fence_epoch == Some(epoch) && last_epoch == Some(epoch);
        let fence_roll = epoch > 0 && !continues;
        let carried = match (&plan.fence, epoch > 0 && continues) {
            (Some(f), true) => Some(f.entries.clone()),
            _ => None,
        };
        let out = recovery::recover(&config, &dir_file, plan, fence_roll)?;
        let mut state = out.state;
        let (active, needs_header, last_epoch, fence) = if fence_roll {
            let active = writer::create_fence_segment(
                &dir,
                &dir_file,
                max_seq.max(state.segments.keys().next_back().copied().unwrap_or(0)) + 1,
                epoch,
                out.next_id,
                &out.producers,
                &out.ends,
            )?;
            tracing::info!(
                dir = %dir.display(),
                epoch,
                previous_epoch = ?last_epoch,
                segment = %active.path.display(),
                fenced_segments = out.ends.len(),
                "journal: new epoch; older segments fenced at their recovered ends"
            );
            state
                .segments
                .insert(active.seq, state::SegmentInfo::new(active.path.clone()));
            (active, false, Some(epoch), Some(out.ends))
        } else {
            let fence = carried.or_else(|| (epoch > 0).then(Vec::new));
            match out.last {
                Some(ls) => {
                    let active = Active {
                        seq: ls.seq,
                        path: ls.path,
                        file: ls.file,
                        pos: ls.data_end,
                        header_end: ls.header_end,
                        file_len: ls.file_len,
                    };
                    (
                        active,
                        ls.header.is_none(),
                        ls.header.map(|h| h.epoch),
                        fence,
                    )
                }
                None => {
                    let path = segment_path(&dir, 1);
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(FILE_MODE)
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
                    (active, true, None, fence)
                }
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
            epoch,
            fenced: AtomicBool::new(false),
            fsync_micros: histogram::Histogram::new(histogram::FSYNC_MICROS_BOUNDS),
            batch_records: histogram::Histogram::new(histogram::BATCH_RECORDS_BOUNDS),
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
        writer.set_fence(fence);
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
        // A newer master may have claimed the store while we recovered (and
        // an older one, paused in its open, may have lowered EPOCH).
        if let Err(e) = writer.check_epoch() {
            if let StoreError::Fenced { store_epoch, .. } = &e {
                tracing::error!(dir = %dir.display(), store_epoch, epoch, "journal: fenced by a newer master during open");
            }
            return Err(e);
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
                dir_lock: Mutex::new(dir_lock),
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
        let refused = if let Some((store_epoch, our_epoch)) = q.fenced {
            Some(StoreError::Fenced {
                store_epoch,
                our_epoch,
            })
        } else if let Some(reason) = &q.failed {
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
                || {
                    let q = lock(&shared.queue);
                    q.failed.is_some() || q.fenced.is_some()
                }
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
            // The fenced state was logged once, when it was entered.
            Err(e @ StoreError::Fenced { .. }) => {
                tracing::debug!(error = %e, "journal: lazy append dropped")
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
            fenced: shared.fenced.load(Ordering::Acquire),
        }
    }

    /// Whether the journal is fenced: a newer master took the store over
    /// (`<dir>/EPOCH` holds a higher epoch). Every append fails with
    /// [`StoreError::Fenced`] and no segment is deleted any more; shut it
    /// down. Always `false` for epoch 0.
    pub fn is_fenced(&self) -> bool {
        self.inner.shared.fenced.load(Ordering::Acquire)
    }

    /// Whether a write or fsync failed: the journal then refuses every append (what reached the
    /// disk is unknown until the files are read again, so the owner should close it and open
    /// the store afresh, e.g. a fabric master steps down).
    pub fn has_failed(&self) -> bool {
        self.inner.shared.stats.failed.load(Ordering::Relaxed)
    }

    /// Latency of the group-commit fdatasyncs since open, in microseconds.
    pub fn fsync_latency(&self) -> histogram::HistogramSnapshot {
        self.inner.shared.fsync_micros.snapshot()
    }

    /// Records made durable per group-commit fdatasync since open.
    pub fn batch_sizes(&self) -> histogram::HistogramSnapshot {
        self.inner.shared.batch_records.snapshot()
    }

    /// The epoch the journal was opened with ([`JournalConfig::epoch`]; 0 =
    /// standalone, no fencing).
    pub fn epoch(&self) -> u64 {
        self.inner.shared.epoch
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }
}

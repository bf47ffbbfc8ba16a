//! In-memory index of live messages and per-segment bookkeeping, shared by
//! recovery and the writer thread.
//!
//! Deletion rule (the "ack-file map" of KahaDB): a segment `S` may be deleted
//! only when it is not the active segment, holds no live message, and every
//! older segment that one of its `Ack` records refers to has already been
//! deleted (and that deletion made durable). Otherwise deleting `S` would drop
//! the only record of those acks and recovery would resurrect the messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::StoreError;

/// Cached read handles beyond which all of them are closed (only segments
/// that `read_body` actually touches are opened).
const MAX_CACHED_READ_HANDLES: usize = 64;

/// Hasher for broker-assigned `u64` message ids (not attacker-controlled).
///
/// The low 57 bits are the id itself, so the mostly sequential ids of a
/// broker land in consecutive buckets (no collisions within a window of live
/// ids smaller than the table, and cache-friendly inserts during recovery);
/// the top 7 bits, which the table uses as per-bucket tag, come from a
/// multiplicative hash so tags stay well distributed.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

const TAG_BITS: u64 = 0x7f << 57;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        (self.0 & !TAG_BITS) | (self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) & TAG_BITS)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// `HashMap` keyed by message id.
pub(super) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Where a live message's record lives on disk.
#[derive(Debug, Clone, Copy)]
pub(super) struct Loc {
    /// Segment sequence number.
    pub seg: u64,
    /// File offset of the record frame.
    pub rec_off: u64,
    /// Length of the whole record (frame included).
    pub rec_len: u32,
    /// Offset of the body relative to `rec_off`.
    pub body_rel: u32,
    /// Body length.
    pub body_len: u32,
    /// Recovery only: position in the recovered message list.
    pub slot: u32,
}

/// Book-keeping for one segment file.
#[derive(Debug)]
pub(super) struct SegmentInfo {
    /// Path of the segment file.
    pub path: Arc<Path>,
    /// Cached read handle (opened lazily by `read_body`).
    pub file: Option<Arc<File>>,
    /// Number of live messages whose `Add` is in this segment.
    pub live: u64,
    /// Older segments holding messages acked by records of this segment.
    pub refs: BTreeSet<u64>,
    /// Unlinking failed once; the segment is kept (so dependants are kept).
    pub undeletable: bool,
}

impl SegmentInfo {
    /// Book-keeping for a segment without live messages yet.
    pub fn new(path: PathBuf) -> Self {
        SegmentInfo {
            path: path.into(),
            file: None,
            live: 0,
            refs: BTreeSet::new(),
            undeletable: false,
        }
    }
}

/// Index of live messages and segment table.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Live message id -> location.
    pub index: IdMap<Loc>,
    /// Existing segments by sequence number.
    pub segments: BTreeMap<u64, SegmentInfo>,
    /// Sequence number of the segment being appended to.
    pub active: u64,
    /// Set when a segment may have become deletable.
    pub gc_hint: bool,
    /// Number of cached read handles.
    open_handles: usize,
}

impl State {
    /// Records an `Add` of `id` at `loc`. Returns the previous location if
    /// the id was already live (a broker bug; the newer record wins).
    pub fn add(&mut self, id: u64, loc: Loc) -> Option<Loc> {
        let old = self.index.insert(id, loc);
        if let Some(old) = old {
            self.dec_live(old.seg);
        }
        if let Some(seg) = self.segments.get_mut(&loc.seg) {
            seg.live += 1;
        }
        old
    }

    /// Records an `Ack` of `id` written in segment `in_seg`. Returns the
    /// location of the message if it was live (unknown ids are ignored).
    pub fn ack(&mut self, id: u64, in_seg: u64) -> Option<Loc> {
        let loc = self.index.remove(&id)?;
        self.dec_live(loc.seg);
        if loc.seg != in_seg {
            if let Some(seg) = self.segments.get_mut(&in_seg) {
                seg.refs.insert(loc.seg);
            }
        }
        Some(loc)
    }

    fn dec_live(&mut self, seg: u64) {
        if let Some(s) = self.segments.get_mut(&seg) {
            s.live = s.live.saturating_sub(1);
            if s.live == 0 {
                self.gc_hint = true;
            }
        }
    }

    /// Segments that may be deleted now (see the module documentation).
    pub fn deletable(&self) -> Vec<u64> {
        self.segments
            .iter()
            .filter(|(&seq, info)| {
                seq != self.active
                    && info.live == 0
                    && !info.undeletable
                    && info.refs.iter().all(|r| !self.segments.contains_key(r))
            })
            .map(|(&seq, _)| seq)
            .collect()
    }

    /// Forgets a deleted segment.
    pub fn remove_segment(&mut self, seq: u64) {
        if let Some(info) = self.segments.remove(&seq) {
            if info.file.is_some() {
                self.open_handles -= 1;
            }
        }
        // Dependants may have become deletable.
        self.gc_hint = true;
    }

    /// Looks up a live message and returns its location together with a
    /// read handle for its segment (opened and cached on first use).
    pub fn reader(&mut self, id: u64) -> Result<(Loc, Arc<File>, Arc<Path>), StoreError> {
        let loc = *self.index.get(&id).ok_or(StoreError::NotFound { id })?;
        let cached = match self.segments.get(&loc.seg) {
            None => return Err(StoreError::NotFound { id }),
            Some(info) => info.file.clone().map(|f| (f, info.path.clone())),
        };
        if let Some((file, path)) = cached {
            return Ok((loc, file, path));
        }
        if self.open_handles >= MAX_CACHED_READ_HANDLES {
            for info in self.segments.values_mut() {
                info.file = None;
            }
            self.open_handles = 0;
        }
        let info = self
            .segments
            .get_mut(&loc.seg)
            .ok_or(StoreError::NotFound { id })?;
        // Opened while the state lock is held: a segment with a live message
        // cannot be deleted concurrently.
        let file = File::open(&info.path).map_err(|e| StoreError::Io {
            op: "open segment for reading",
            path: info.path.to_path_buf(),
            source: e,
        })?;
        let file = Arc::new(file);
        info.file = Some(file.clone());
        self.open_handles += 1;
        Ok((loc, file, info.path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(seg: u64) -> Loc {
        Loc {
            seg,
            rec_off: 0,
            rec_len: 0,
            body_rel: 0,
            body_len: 0,
            slot: 0,
        }
    }

    #[test]
    fn ack_refs_block_deletion() {
        let mut st = State::default();
        for s in 1..=3 {
            st.segments
                .insert(s, SegmentInfo::new(format!("{s}").into()));
        }
        st.active = 3;
        st.add(1, loc(1));
        st.add(2, loc(1));
        st.ack(1, 2); // ack in segment 2 refers to segment 1
        assert_eq!(st.deletable(), Vec::<u64>::new());
        st.ack(2, 3);
        assert_eq!(st.deletable(), vec![1]);
        st.remove_segment(1);
        assert_eq!(st.deletable(), vec![2]);
        st.remove_segment(2);
        assert!(st.deletable().is_empty()); // 3 is active
    }

    #[test]
    fn unknown_ack_ignored() {
        let mut st = State::default();
        st.segments.insert(1, SegmentInfo::new("1".into()));
        assert!(st.ack(42, 1).is_none());
        assert!(st.segments[&1].refs.is_empty());
    }
}

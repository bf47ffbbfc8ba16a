//! Epoch fencing: the `EPOCH` file, the survey of segment headers made before
//! recovery, and the recovery plan derived from the authoritative fence (see
//! the module documentation of [`super`] for the rules).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::format::{self, FenceEntry, SegmentHeader, FRAME_LEN, MAX_RECORD_BYTES};
use super::{io_err, parse_segment_name, StoreError};

/// Name of the epoch file.
pub(super) const EPOCH_NAME: &str = "EPOCH";

/// Longest accepted `EPOCH` file (`u64::MAX` has 20 digits, plus a newline).
const EPOCH_MAX_LEN: usize = 21;

/// Chunk size of the all-zero check of header-less segments.
const ZERO_CHECK_CHUNK: usize = 1 << 20;

/// Parses the contents of an `EPOCH` file: decimal digits and an optional
/// final newline.
fn parse_epoch(b: &[u8]) -> Option<u64> {
    let digits = b.strip_suffix(b"\n").unwrap_or(b);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Reads `<dir>/EPOCH`: `None` when it does not exist. Opens the file afresh
/// each time (on NFS the open revalidates it: close-to-open consistency).
pub(super) fn read_epoch_file(dir: &Path) -> Result<Option<u64>, StoreError> {
    let path = dir.join(EPOCH_NAME);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open epoch file", &path)(e)),
    };
    // One byte more than the longest valid content, to detect longer files.
    let mut buf = [0u8; EPOCH_MAX_LEN + 1];
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read epoch file", &path)(e)),
        }
    }
    match parse_epoch(&buf[..n]) {
        Some(epoch) => Ok(Some(epoch)),
        None => Err(StoreError::Corrupt {
            reason: format!(
                "epoch file does not hold a decimal epoch: {:?}",
                String::from_utf8_lossy(&buf[..n.min(EPOCH_MAX_LEN)])
            ),
            file: path,
            offset: 0,
        }),
    }
}

/// Replaces `<dir>/EPOCH` with `epoch` atomically and durably: writes
/// `EPOCH.<epoch>.tmp`, fsyncs it, renames it over `EPOCH`, fsyncs the
/// directory.
pub(super) fn write_epoch_file(dir: &Path, dir_file: &File, epoch: u64) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{EPOCH_NAME}.{epoch}.tmp"));
    let res = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::FILE_MODE)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{epoch}\n").as_bytes())?;
            f.sync_all()
        });
    res.map_err(io_err("write epoch file", &tmp))?;
    let path = dir.join(EPOCH_NAME);
    std::fs::rename(&tmp, &path).map_err(io_err("replace epoch file", &path))?;
    dir_file.sync_all().map_err(io_err("fsync directory", dir))
}

/// One segment file as the survey found it.
#[derive(Debug)]
pub(super) struct SurveyedSegment {
    /// Sequence number (from the file name).
    pub seq: u64,
    /// The file.
    pub path: PathBuf,
    /// Its header, when the first record is a valid header naming `seq`.
    pub header: Option<SegmentHeader>,
    /// No header and no byte other than zero (created, never written).
    /// Only determined when asked for (`check_blank`).
    pub blank: bool,
}

/// The segment headers and the `EPOCH` file, read before recovery.
#[derive(Debug)]
pub(super) struct Survey {
    /// Segment files by sequence number.
    pub segments: Vec<SurveyedSegment>,
    /// Contents of the `EPOCH` file, if there is one.
    pub epoch_file: Option<u64>,
}

impl Survey {
    /// Highest epoch held by the store: the `EPOCH` file or any header.
    pub fn store_epoch(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|s| s.header.as_ref().map(|h| h.epoch))
            .chain(self.epoch_file)
            .max()
            .unwrap_or(0)
    }

    /// Whether a fencing journal (epoch > 0) ever opened the store: it has an
    /// `EPOCH` file or a header with a fence.
    pub fn is_fenced_store(&self) -> bool {
        self.epoch_file.is_some()
            || self
                .segments
                .iter()
                .any(|s| s.header.as_ref().is_some_and(|h| h.fence.is_some()))
    }

    /// Highest segment sequence number seen.
    pub fn max_seq(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.seq)
    }
}

/// Reads the header record of a segment, if it has a valid one naming `seq`.
/// A file that shrinks while being read has no header as far as the survey
/// is concerned.
fn read_header(file: &File, len: u64, seq: u64) -> io::Result<Option<SegmentHeader>> {
    if len < FRAME_LEN as u64 {
        return Ok(None);
    }
    let mut frame = [0u8; FRAME_LEN];
    match file.read_exact_at(&mut frame, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (plen, crc, typ) = format::parse_frame(&frame);
    if typ != format::REC_HEADER
        || plen > MAX_RECORD_BYTES
        || FRAME_LEN as u64 + u64::from(plen) > len
    {
        return Ok(None);
    }
    let mut payload = vec![0u8; plen as usize];
    match file.read_exact_at(&mut payload, FRAME_LEN as u64) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if format::record_crc(typ, &payload) != crc {
        return Ok(None);
    }
    Ok(format::decode_header(&payload)
        .ok()
        .filter(|h| h.seq == seq))
}

/// Whether every byte of `file` is zero (reads up to where it ends now).
fn all_zero(file: &File) -> io::Result<bool> {
    let mut buf = vec![0u8; ZERO_CHECK_CHUNK];
    let mut pos = 0u64;
    loop {
        match file.read_at(&mut buf, pos) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                if buf[..n].iter().any(|&b| b != 0) {
                    return Ok(false);
                }
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Lists the segment files of `dir` with their headers, and reads the
/// `EPOCH` file. Read-only. Segments that disappear while being surveyed
/// (deleted by a writer of an older epoch) are left out. With `check_blank`,
/// header-less segments are read in full to tell blank ones apart.
pub(super) fn survey(dir: &Path, check_blank: bool) -> Result<Survey, StoreError> {
    let epoch_file = read_epoch_file(dir)?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("list journal directory", dir))? {
        let entry = entry.map_err(io_err("list journal directory", dir))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            names.push((seq, entry.path()));
        }
    }
    names.sort_unstable_by_key(|(s, _)| *s);
    let mut segments = Vec::with_capacity(names.len());
    for (seq, path) in names {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("open segment", &path)(e)),
        };
        let len = file
            .metadata()
            .map_err(io_err("stat segment", &path))?
            .len();
        let header = read_header(&file, len, seq).map_err(io_err("read segment header", &path))?;
        let blank = header.is_none()
            && check_blank
            && all_zero(&file).map_err(io_err("read segment", &path))?;
        segments.push(SurveyedSegment {
            seq,
            path,
            header,
            blank,
        });
    }
    Ok(Survey {
        segments,
        epoch_file,
    })
}

/// Removes temporary files of `epoch` and older epochs, left by crashes or
/// by stale writers: spare segments, new segments never linked, `EPOCH`
/// temporaries. Best effort (failures are logged).
pub(super) fn remove_leftovers(dir: &Path, epoch: u64) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "journal: cannot list directory to remove temporary files");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let epoch_of = |prefix: &str| -> Option<u64> {
            name.strip_prefix(prefix)?
                .strip_suffix(".tmp")?
                .parse()
                .ok()
        };
        let leftover = name == super::SPARE_NAME
            || ["journal.spare-", "journal.fence-", "EPOCH."]
                .iter()
                .any(|p| epoch_of(p).is_some_and(|e| e <= epoch));
        if leftover {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::debug!(file = %entry.path().display(), "journal: removed temporary file of an older writer");
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "journal: cannot remove temporary file");
                }
            }
        }
    }
}

/// A segment recovery reads.
#[derive(Debug)]
pub(super) struct Planned {
    /// Sequence number.
    pub seq: u64,
    /// The file.
    pub path: PathBuf,
    /// Read only up to this offset (the segment is in the authoritative
    /// fence).
    pub limit: Option<u64>,
    /// Epoch in its header (`None` without a valid header).
    pub epoch: Option<u64>,
}

/// The authoritative fence of a store.
#[derive(Debug, Clone)]
pub(super) struct AuthFence {
    /// Its epoch (that of the header carrying it).
    pub epoch: u64,
    /// Segment whose header carries it.
    pub seq: u64,
    /// Its entries.
    pub entries: Vec<FenceEntry>,
}

/// What recovery reads and what it sets aside.
#[derive(Debug)]
pub(super) struct Plan {
    /// Segments to read, in order; the last one is the "last segment" of the
    /// crash rules.
    pub scan: Vec<Planned>,
    /// Segments to set aside as `*.stale`, with the reason.
    pub stale: Vec<(PathBuf, String)>,
    /// The authoritative fence, if any.
    pub fence: Option<AuthFence>,
    /// Highest sequence number seen (set-aside segments included).
    pub max_seq: u64,
}

/// Derives the recovery plan from a survey, for a journal opening with
/// `epoch`:
///
/// * The authoritative fence is the one with the highest epoch (ties: the
///   highest segment). Segments it lists are read only up to their entry.
/// * A segment with a valid header whose epoch is lower than the fence's,
///   not listed in it and not the fence's own, was created by a stale
///   writer: set aside.
/// * With `epoch > 0`, blank (never written) segments and a header-less last
///   segment are set aside too: nothing in them was accepted, and the writer
///   that created them may still hold them open.
pub(super) fn plan(survey: Survey, epoch: u64) -> Plan {
    let max_seq = survey.max_seq();
    let fence = survey
        .segments
        .iter()
        .filter_map(|s| {
            let h = s.header.as_ref()?;
            let f = h.fence.as_ref()?;
            Some(AuthFence {
                epoch: h.epoch,
                seq: s.seq,
                entries: f.clone(),
            })
        })
        .max_by_key(|f| (f.epoch, f.seq));
    let listed = |seq: u64| -> Option<u64> {
        let f = fence.as_ref()?;
        let i = f.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        Some(f.entries[i].end)
    };
    let mut scan = Vec::with_capacity(survey.segments.len());
    let mut stale = Vec::new();
    for s in survey.segments {
        let limit = listed(s.seq);
        match (&s.header, &fence) {
            (Some(h), Some(f)) if h.epoch < f.epoch && s.seq != f.seq && limit.is_none() => {
                stale.push((
                    s.path,
                    format!(
                        "created under epoch {} but not in the epoch-{} fence of segment {}",
                        h.epoch, f.epoch, f.seq
                    ),
                ));
            }
            (None, _) if epoch > 0 && s.blank => {
                stale.push((s.path, "never written (no header)".into()));
            }
            _ => scan.push(Planned {
                seq: s.seq,
                path: s.path,
                limit,
                epoch: s.header.as_ref().map(|h| h.epoch),
            }),
        }
    }
    if epoch > 0 {
        while let Some(last) = scan.pop_if(|p| p.epoch.is_none() && p.limit.is_none()) {
            stale.push((last.path, "last segment without a valid header".into()));
        }
    }
    Plan {
        scan,
        stale,
        fence,
        max_seq,
    }
}

/// Renames a stale segment to `<name>.stale` (or `<name>.stale-<n>` when
/// that exists). Returns the new path.
pub(super) fn set_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut n = 1u32;
    loop {
        let aside = if n == 1 {
            path.with_file_name(format!("{name}.stale"))
        } else {
            path.with_file_name(format!("{name}.stale-{n}"))
        };
        if !aside.exists() || n == u32::MAX {
            std::fs::rename(path, &aside).map_err(io_err("set stale segment aside", path))?;
            return Ok(aside);
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u64, epoch: Option<u64>, fence: Option<Vec<(u64, u64)>>) -> SurveyedSegment {
        SurveyedSegment {
            seq,
            path: PathBuf::from(format!("s{seq}")),
            header: epoch.map(|epoch| SegmentHeader {
                version: super::format::FORMAT_VERSION,
                seq,
                epoch,
                next_id: 1,
                producers: Vec::new(),
                fence: fence.map(|f| {
                    f.into_iter()
                        .map(|(seq, end)| FenceEntry { seq, end })
                        .collect()
                }),
            }),
            blank: epoch.is_none(),
        }
    }

    fn survey_of(segments: Vec<SurveyedSegment>) -> Survey {
        Survey {
            segments,
            epoch_file: None,
        }
    }

    #[test]
    fn epoch_file_contents() {
        assert_eq!(parse_epoch(b"7\n"), Some(7));
        assert_eq!(parse_epoch(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"\n",
            b"-1",
            b"1 ",
            b"0x10",
            b"18446744073709551616",
        ] {
            assert_eq!(parse_epoch(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn plan_applies_the_highest_epoch_fence() {
        let p = plan(
            survey_of(vec![
                seg(1, Some(1), Some(vec![])),
                seg(2, Some(1), None),
                // A stale writer (epoch 1) created 3 after the fence in 4.
                seg(3, Some(1), None),
                seg(4, Some(2), Some(vec![(1, 10), (2, 20)])),
                seg(5, Some(1), Some(vec![])),
                seg(6, Some(2), Some(vec![(1, 10), (2, 20)])),
            ]),
            3,
        );
        let scanned: Vec<_> = p.scan.iter().map(|s| (s.seq, s.limit)).collect();
        assert_eq!(
            scanned,
            [(1, Some(10)), (2, Some(20)), (4, None), (6, None)]
        );
        assert_eq!(p.stale.len(), 2);
        let f = p.fence.unwrap();
        assert_eq!((f.epoch, f.seq), (2, 6));
        assert_eq!(p.max_seq, 6);
    }

    #[test]
    fn plan_without_fences_reads_everything() {
        let segs = vec![
            seg(1, Some(0), None),
            seg(2, Some(5), None),
            seg(3, None, None),
        ];
        let p = plan(survey_of(segs), 0);
        assert_eq!(p.scan.len(), 3);
        assert!(p.stale.is_empty() && p.fence.is_none());
        // With fencing on, the header-less last segment is set aside.
        let segs = vec![
            seg(1, Some(0), None),
            seg(2, None, None),
            seg(3, None, None),
        ];
        let p = plan(survey_of(segs), 1);
        assert_eq!(p.scan.len(), 1);
        assert_eq!(p.stale.len(), 2);
    }
}

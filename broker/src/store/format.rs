//! Byte-level encoding of journal records (see the module documentation of
//! [`super`] for the layout).
//!
//! Everything here is pure: encoding writes into a caller-supplied `Vec<u8>`,
//! decoding works on a borrowed slice and reports malformed input as a
//! `&'static str` reason instead of panicking. Every length read from disk is
//! bounds-checked before it is used.

use std::sync::Arc;

use super::{Op, ProducerSeq, StoreError, StoredMessage};

/// Size of the record frame: `[len u32][crc32c u32][type u8]`.
pub(super) const FRAME_LEN: usize = 9;

/// Largest accepted record payload (type byte excluded), in bytes.
pub const MAX_RECORD_BYTES: u32 = 256 << 20;

/// Magic bytes at the start of every segment header payload.
pub(super) const MAGIC: [u8; 8] = *b"FMQJRNL\0";

/// On-disk format version written into segment headers. Version 2 added the
/// user of a producer (`Add` flag bit 1), `Forget` operations and producer
/// checkpoint records; version 1 segments are still read.
pub(super) const FORMAT_VERSION: u16 = 2;

/// Oldest format version recovery reads.
pub(super) const MIN_FORMAT_VERSION: u16 = 1;

/// Record type of the segment header (always and only the first record).
pub(super) const REC_HEADER: u8 = 1;

/// Record type of an atomic group of operations.
pub(super) const REC_OPS: u8 = 2;

/// Record type of a producer-table checkpoint chunk (after a header).
pub(super) const REC_PRODUCERS: u8 = 3;

/// Operation tag: a message was added.
const OP_ADD: u8 = 1;

/// Operation tag: a message was removed.
const OP_ACK: u8 = 2;

/// Operation tag: a producer's de-duplication entry was dropped.
const OP_FORGET: u8 = 3;

/// Flag bit of an `Add`: a producer sequence follows.
const FLAG_PRODUCER: u8 = 1;

/// Flag bit of an `Add` (version 2): the producer's user follows its sequence.
const FLAG_PRODUCER_USER: u8 = 2;

/// Flag bit of a segment header: a fence follows the producer table.
const HEADER_FLAG_FENCE: u16 = 1;

/// One entry of a fence: segment `seq` is valid only up to offset `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FenceEntry {
    /// Sequence number of the fenced (older) segment.
    pub seq: u64,
    /// End of the data recovery accepted in it when the fence was written.
    pub end: u64,
}

/// Decoded segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    /// Format version it was written with.
    pub version: u16,
    /// Segment sequence number (must match the file name).
    pub seq: u64,
    /// Epoch of the journal when the segment was created.
    pub epoch: u64,
    /// `1 + highest message id` written before this segment was created.
    pub next_id: u64,
    /// Producer de-duplication table as of the segment's creation: raw
    /// producer ids in version 1 (not loaded); always empty in version 2,
    /// whose checkpoint follows in `REC_PRODUCERS` records.
    pub producers: Vec<(String, u64)>,
    /// The fence the header carries (written by journals with an epoch > 0),
    /// sorted by sequence number.
    pub fence: Option<Vec<FenceEntry>>,
}

/// Metadata of one operation of an encoded record, kept by the writer to
/// update the in-memory index once the record is on disk.
#[derive(Debug)]
pub(super) enum OpMeta {
    /// An added message whose body starts `body_rel` bytes into the record.
    Add {
        id: u64,
        body_rel: u32,
        body_len: u32,
        producer: Option<ProducerSeq>,
        /// The body until it is parked in the pending map (then `None`).
        body: Option<bytes::Bytes>,
    },
    /// A removed message.
    Ack { id: u64 },
    /// A dropped producer table entry.
    Forget { key: String },
}

/// One decoded operation (recovery side).
#[derive(Debug)]
pub(super) enum DecodedOp {
    /// An added message (body not materialised: `body` is `None`) whose body
    /// starts `body_rel` bytes into the record.
    Add { msg: StoredMessage, body_rel: u32 },
    /// A removed message.
    Ack(u64),
    /// A dropped producer table entry.
    Forget(String),
}

fn str_len(s: &str) -> Result<u64, StoreError> {
    u32::try_from(s.len())
        .map(u64::from)
        .map_err(|_| StoreError::InvalidOp {
            id: None,
            reason: format!("string of {} bytes does not fit the format", s.len()),
        })
}

/// Validates `ops` and returns the exact size of the framed record.
pub(super) fn ops_record_len(ops: &[Op]) -> Result<usize, StoreError> {
    if u32::try_from(ops.len()).is_err() {
        return Err(StoreError::InvalidOp {
            id: None,
            reason: format!("{} operations in one record", ops.len()),
        });
    }
    let mut len: u64 = 4;
    for op in ops {
        len += match op {
            Op::Ack { .. } => 1 + 8,
            Op::Forget { key } => 1 + 4 + str_len(key)?,
            Op::Add(m) => {
                let body = m.body.as_ref().ok_or_else(|| StoreError::InvalidOp {
                    id: Some(m.id),
                    reason: "Add without a body (read it back with read_body first)".into(),
                })?;
                if body.len() as u64 != u64::from(m.body_len) {
                    return Err(StoreError::InvalidOp {
                        id: Some(m.id),
                        reason: format!(
                            "body_len {} does not match the body's {} bytes",
                            m.body_len,
                            body.len()
                        ),
                    });
                }
                if m.headers.len() > u32::MAX as usize {
                    return Err(StoreError::InvalidOp {
                        id: Some(m.id),
                        reason: "too many headers".into(),
                    });
                }
                let mut n: u64 = 1 + 8 + 1 + 8 + 8 + 1;
                if let Some(p) = &m.producer {
                    n += 4 + str_len(&p.producer)? + 8;
                    if !p.user.is_empty() {
                        n += 4 + str_len(&p.user)?;
                    }
                }
                n += 4 + str_len(&m.destination)?;
                n += 4;
                for (k, v) in &m.headers {
                    n += 4 + str_len(k)? + 4 + str_len(v)?;
                }
                n + 4 + body.len() as u64
            }
        };
        if len > u64::from(MAX_RECORD_BYTES) {
            return Err(StoreError::TooLarge {
                bytes: len,
                max: u64::from(MAX_RECORD_BYTES),
            });
        }
    }
    // `len` <= MAX_RECORD_BYTES, so this cannot overflow usize.
    Ok(FRAME_LEN + len as usize)
}

#[inline]
fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}
#[inline]
fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}
#[inline]
fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}
/// Writes a `u32`-length-prefixed string. Lengths were validated by
/// [`ops_record_len`] (or are bounded by construction for headers).
#[inline]
fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_u32(buf, s.len() as u32);
    buf.extend_from_slice(s.as_bytes());
}

/// Starts a record: reserves the frame and writes the type byte.
/// Returns the offset of the frame inside `buf`.
pub(super) fn begin_record(buf: &mut Vec<u8>, rec_type: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_LEN - 1]);
    buf.push(rec_type);
    start
}

/// Completes the record started at `start`: fills in length and CRC.
pub(super) fn finish_record(buf: &mut [u8], start: usize) {
    let payload_len = (buf.len() - start - FRAME_LEN) as u32;
    let crc = crc32c::crc32c(&buf[start + FRAME_LEN - 1..]);
    buf[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Writes the operation count of an ops record (right after [`begin_record`]).
pub(super) fn put_op_count(buf: &mut Vec<u8>, count: u32) {
    put_u32(buf, count);
}

/// Encodes one operation, consuming it, and returns its metadata (which
/// carries the body of an `Add`, moved, not copied). `record_start` is the
/// offset of the record frame inside `buf`.
pub(super) fn put_op(buf: &mut Vec<u8>, record_start: usize, op: Op) -> OpMeta {
    match op {
        Op::Ack { id } => {
            buf.push(OP_ACK);
            put_u64(buf, id);
            OpMeta::Ack { id }
        }
        Op::Forget { key } => {
            buf.push(OP_FORGET);
            put_str(buf, &key);
            OpMeta::Forget { key }
        }
        Op::Add(m) => {
            buf.push(OP_ADD);
            put_u64(buf, m.id);
            buf.push(m.priority);
            put_u64(buf, m.expires);
            put_u64(buf, m.timestamp);
            buf.push(match &m.producer {
                None => 0,
                Some(p) if p.user.is_empty() => FLAG_PRODUCER,
                Some(_) => FLAG_PRODUCER | FLAG_PRODUCER_USER,
            });
            if let Some(p) = &m.producer {
                put_str(buf, &p.producer);
                put_u64(buf, p.seq);
                if !p.user.is_empty() {
                    put_str(buf, &p.user);
                }
            }
            put_str(buf, &m.destination);
            put_u32(buf, m.headers.len() as u32);
            for (k, v) in &m.headers {
                put_str(buf, k);
                put_str(buf, v);
            }
            let body = m.body.unwrap_or_default();
            put_u32(buf, body.len() as u32);
            let body_rel = (buf.len() - record_start) as u32;
            buf.extend_from_slice(&body);
            OpMeta::Add {
                id: m.id,
                body_rel,
                body_len: body.len() as u32,
                producer: m.producer,
                body: Some(body),
            }
        }
    }
}

/// Bytes one entry takes in a producer checkpoint record.
pub(super) fn checkpoint_entry_len(key: &str) -> usize {
    4 + key.len() + 8
}

/// Encodes one producer checkpoint record (`REC_PRODUCERS`):
/// `count:u32 { key:str seq:u64 } * count`. The caller keeps it under
/// [`MAX_RECORD_BYTES`] (see `producers::checkpoint_chunks`).
pub(super) fn put_producers(buf: &mut Vec<u8>, entries: &[(&str, u64)]) {
    let start = begin_record(buf, REC_PRODUCERS);
    put_u32(buf, entries.len() as u32);
    for (k, s) in entries {
        put_str(buf, k);
        put_u64(buf, *s);
    }
    finish_record(buf, start);
}

/// Decodes a producer checkpoint record payload.
pub(super) fn decode_producers(payload: &[u8]) -> Result<Vec<(String, u64)>, &'static str> {
    let mut c = Cursor::new(payload);
    let count = c.u32()? as usize;
    let mut out = Vec::with_capacity(count.min(c.remaining() / 12));
    for _ in 0..count {
        let k = c.string()?;
        let s = c.u64()?;
        out.push((k, s));
    }
    if c.remaining() != 0 {
        return Err("trailing bytes after producer checkpoint");
    }
    Ok(out)
}

/// Encodes a complete segment header record into `buf`, with a fence when
/// `fence` is `Some`. The producer checkpoint follows it as separate
/// records ([`put_producers`]).
pub(super) fn put_header(
    buf: &mut Vec<u8>,
    seq: u64,
    epoch: u64,
    next_id: u64,
    fence: Option<&[FenceEntry]>,
) {
    let start = begin_record(buf, REC_HEADER);
    buf.extend_from_slice(&MAGIC);
    put_u16(buf, FORMAT_VERSION);
    put_u16(
        buf,
        if fence.is_some() {
            HEADER_FLAG_FENCE
        } else {
            0
        },
    );
    put_u64(buf, seq);
    put_u64(buf, epoch);
    put_u64(buf, next_id);
    // Version 2 keeps the table out of the header (see `put_producers`).
    put_u32(buf, 0);
    if let Some(fence) = fence {
        // One entry per segment file: never near u32::MAX.
        put_u32(buf, fence.len() as u32);
        for e in fence {
            put_u64(buf, e.seq);
            put_u64(buf, e.end);
        }
    }
    finish_record(buf, start);
}

/// Parses a record frame. Returns `(payload_len, crc, type)`.
#[inline]
pub(super) fn parse_frame(frame: &[u8; FRAME_LEN]) -> (u32, u32, u8) {
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    (len, crc, frame[8])
}

/// CRC of a record: over the type byte and the payload.
#[inline]
pub(super) fn record_crc(rec_type: u8, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&[rec_type]), payload)
}

/// Bounds-checked little-endian reader over a payload.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.remaining() < n {
            return Err("payload ends inside a field");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<String, &'static str> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "string is not valid UTF-8")
    }
}

/// Decodes a segment header payload.
pub(super) fn decode_header(payload: &[u8]) -> Result<SegmentHeader, &'static str> {
    let mut c = Cursor::new(payload);
    if c.take(MAGIC.len())? != MAGIC {
        return Err("bad magic in segment header");
    }
    let version = c.u16()?;
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err("unsupported journal format version");
    }
    let flags = c.u16()?;
    if flags & !HEADER_FLAG_FENCE != 0 {
        return Err("unknown flags in segment header");
    }
    let seq = c.u64()?;
    let epoch = c.u64()?;
    let next_id = c.u64()?;
    let count = c.u32()? as usize;
    // Each entry takes at least 12 bytes: never pre-allocate more than the
    // payload could hold.
    let mut producers = Vec::with_capacity(count.min(c.remaining() / 12));
    for _ in 0..count {
        let p = c.string()?;
        let s = c.u64()?;
        producers.push((p, s));
    }
    let fence = if flags & HEADER_FLAG_FENCE != 0 {
        let count = c.u32()? as usize;
        let mut fence = Vec::with_capacity(count.min(c.remaining() / 16));
        for _ in 0..count {
            let seq = c.u64()?;
            let end = c.u64()?;
            fence.push(FenceEntry { seq, end });
        }
        if fence.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Err("fence entries not sorted by segment");
        }
        if fence.iter().any(|e| e.seq >= seq) {
            return Err("fence names a segment that is not older than its own");
        }
        Some(fence)
    } else {
        None
    };
    if c.remaining() != 0 {
        return Err("trailing bytes after segment header");
    }
    Ok(SegmentHeader {
        version,
        seq,
        epoch,
        next_id,
        producers,
        fence,
    })
}

/// Decodes an ops record payload into `out` (cleared first). On error `out`
/// holds a partial decode that the caller must discard.
pub(super) fn decode_ops(payload: &[u8], out: &mut Vec<DecodedOp>) -> Result<(), &'static str> {
    out.clear();
    let mut c = Cursor::new(payload);
    let count = c.u32()? as usize;
    for _ in 0..count {
        match c.u8()? {
            OP_ACK => out.push(DecodedOp::Ack(c.u64()?)),
            OP_FORGET => out.push(DecodedOp::Forget(c.string()?)),
            OP_ADD => {
                let id = c.u64()?;
                let priority = c.u8()?;
                let expires = c.u64()?;
                let timestamp = c.u64()?;
                let flags = c.u8()?;
                if flags & !(FLAG_PRODUCER | FLAG_PRODUCER_USER) != 0 {
                    return Err("unknown flags in Add");
                }
                let producer = match (flags & FLAG_PRODUCER != 0, flags & FLAG_PRODUCER_USER != 0) {
                    (false, false) => None,
                    (false, true) => return Err("producer user without a producer in Add"),
                    (true, with_user) => {
                        let producer = c.string()?;
                        let seq = c.u64()?;
                        let user: Arc<str> = if with_user {
                            let u = c.string()?;
                            if u.is_empty() {
                                return Err("empty producer user in Add");
                            }
                            Arc::from(u)
                        } else {
                            Arc::from("")
                        };
                        Some(ProducerSeq {
                            producer,
                            seq,
                            user,
                        })
                    }
                };
                let destination = c.string()?;
                let nh = c.u32()? as usize;
                let mut headers = Vec::with_capacity(nh.min(c.remaining() / 8));
                for _ in 0..nh {
                    let k = c.string()?;
                    let v = c.string()?;
                    headers.push((k, v));
                }
                let body_len = c.u32()?;
                let body_rel = (FRAME_LEN + c.pos) as u32;
                c.take(body_len as usize)?;
                out.push(DecodedOp::Add {
                    msg: StoredMessage {
                        id,
                        destination,
                        priority,
                        expires,
                        timestamp,
                        producer,
                        headers,
                        body: None,
                        body_len,
                    },
                    body_rel,
                });
            }
            _ => return Err("unknown operation tag"),
        }
    }
    if c.remaining() != 0 {
        return Err("trailing bytes after operations");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(id: u64) -> StoredMessage {
        StoredMessage {
            id,
            destination: "/queue/a".into(),
            priority: 4,
            expires: 7,
            timestamp: 9,
            producer: Some(ProducerSeq {
                producer: "p".into(),
                seq: 3,
                user: Arc::from("alice"),
            }),
            headers: vec![("k".into(), "v".into())],
            body: Some(Bytes::from_static(b"hello")),
            body_len: 5,
        }
    }

    #[test]
    fn ops_encode_decode_round_trip() {
        let mut unscoped = msg(2);
        unscoped.producer.as_mut().unwrap().user = Arc::from("");
        let ops = vec![
            Op::Add(msg(1)),
            Op::Ack { id: 9 },
            Op::Add(unscoped.clone()),
            Op::Forget {
                key: "5:alicep".into(),
            },
        ];
        let len = ops_record_len(&ops).unwrap();
        let mut buf = Vec::new();
        let start = begin_record(&mut buf, REC_OPS);
        put_op_count(&mut buf, ops.len() as u32);
        let metas: Vec<_> = ops
            .into_iter()
            .map(|op| put_op(&mut buf, start, op))
            .collect();
        finish_record(&mut buf, start);
        assert_eq!(buf.len(), len);
        let frame: [u8; FRAME_LEN] = buf[..FRAME_LEN].try_into().unwrap();
        let (plen, crc, ty) = parse_frame(&frame);
        assert_eq!(plen as usize, len - FRAME_LEN);
        assert_eq!(ty, REC_OPS);
        assert_eq!(crc, record_crc(ty, &buf[FRAME_LEN..]));
        let mut out = Vec::new();
        decode_ops(&buf[FRAME_LEN..], &mut out).unwrap();
        assert_eq!(out.len(), 4);
        match (&out[0], &metas[0]) {
            (DecodedOp::Add { msg: m, body_rel }, OpMeta::Add { body_rel: r2, .. }) => {
                assert_eq!(body_rel, r2);
                assert_eq!(&buf[*body_rel as usize..*body_rel as usize + 5], b"hello");
                let mut expect = msg(1);
                expect.body = None;
                assert_eq!(m, &expect);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(out[1], DecodedOp::Ack(9)));
        match &out[2] {
            DecodedOp::Add { msg: m, .. } => assert_eq!(m.producer, unscoped.producer),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(&out[3], DecodedOp::Forget(k) if k == "5:alicep"));
    }

    #[test]
    fn producer_checkpoint_round_trip() {
        let mut buf = Vec::new();
        put_producers(&mut buf, &[("5:alicep", 3), ("3:bobq", u64::MAX)]);
        let frame: [u8; FRAME_LEN] = buf[..FRAME_LEN].try_into().unwrap();
        let (len, crc, ty) = parse_frame(&frame);
        assert_eq!((ty, len as usize), (REC_PRODUCERS, buf.len() - FRAME_LEN));
        assert_eq!(crc, record_crc(ty, &buf[FRAME_LEN..]));
        assert_eq!(
            decode_producers(&buf[FRAME_LEN..]).unwrap(),
            vec![("5:alicep".into(), 3), ("3:bobq".into(), u64::MAX)]
        );
        assert!(decode_producers(&buf[FRAME_LEN..buf.len() - 1]).is_err());
    }

    #[test]
    fn version_1_headers_still_decode() {
        // A version 1 header as the first releases wrote it: raw producer ids in the header.
        let mut buf = Vec::new();
        let start = begin_record(&mut buf, REC_HEADER);
        buf.extend_from_slice(&MAGIC);
        put_u16(&mut buf, 1);
        put_u16(&mut buf, 0);
        put_u64(&mut buf, 5);
        put_u64(&mut buf, 0);
        put_u64(&mut buf, 77);
        put_u32(&mut buf, 1);
        put_str(&mut buf, "raw-id");
        put_u64(&mut buf, 9);
        finish_record(&mut buf, start);
        let h = decode_header(&buf[FRAME_LEN..]).unwrap();
        assert_eq!(h.version, 1);
        assert_eq!(h.producers, vec![("raw-id".into(), 9)]);
        buf[FRAME_LEN + 8] = 3;
        assert!(decode_header(&buf[FRAME_LEN..]).is_err());
    }

    #[test]
    fn header_round_trip() {
        let mut buf = Vec::new();
        put_header(&mut buf, 5, 2, 77, None);
        let h = decode_header(&buf[FRAME_LEN..]).unwrap();
        assert_eq!(
            h,
            SegmentHeader {
                version: FORMAT_VERSION,
                seq: 5,
                epoch: 2,
                next_id: 77,
                producers: vec![],
                fence: None,
            }
        );
        // The flags word of an unfenced header is 0, as before fencing existed.
        assert_eq!(&buf[FRAME_LEN + 10..FRAME_LEN + 12], &[0, 0]);
    }

    #[test]
    fn fenced_header_round_trip_and_validation() {
        let fence = [
            FenceEntry { seq: 2, end: 100 },
            FenceEntry { seq: 4, end: 7 },
        ];
        let mut buf = Vec::new();
        put_header(&mut buf, 9, 3, 1, Some(&fence));
        let h = decode_header(&buf[FRAME_LEN..]).unwrap();
        assert_eq!(h.fence.as_deref(), Some(&fence[..]));
        assert_eq!((h.seq, h.epoch), (9, 3));
        // An empty fence is still a fence.
        let mut buf = Vec::new();
        put_header(&mut buf, 1, 3, 1, Some(&[]));
        assert_eq!(
            decode_header(&buf[FRAME_LEN..]).unwrap().fence,
            Some(vec![])
        );
        // Entries must name older segments, in order.
        for bad in [
            [FenceEntry { seq: 4, end: 0 }, FenceEntry { seq: 2, end: 0 }],
            [FenceEntry { seq: 2, end: 0 }, FenceEntry { seq: 9, end: 0 }],
        ] {
            let mut buf = Vec::new();
            put_header(&mut buf, 9, 3, 1, Some(&bad));
            assert!(decode_header(&buf[FRAME_LEN..]).is_err());
        }
        // Unknown header flags are refused.
        let mut buf = Vec::new();
        put_header(&mut buf, 1, 0, 1, None);
        buf[FRAME_LEN + 10] = 2;
        assert!(decode_header(&buf[FRAME_LEN..]).is_err());
    }

    #[test]
    fn invalid_ops_rejected() {
        let mut m = msg(1);
        m.body = None;
        assert!(matches!(
            ops_record_len(&[Op::Add(m)]),
            Err(StoreError::InvalidOp { id: Some(1), .. })
        ));
        let mut m = msg(2);
        m.body_len = 4;
        assert!(ops_record_len(&[Op::Add(m)]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            let _ = decode_ops(&data, &mut out);
            let _ = decode_header(&data);
            let _ = decode_producers(&data);
        }
    }
}

//! The journal's copy of the producer de-duplication table: its keys, how it
//! is checkpointed into a new segment, and how recovery rebuilds it.
//!
//! # Keys
//!
//! A producer is identified by the **authenticated user** that sent and the
//! `producer-id` it chose: two users can never collide, whatever ids they
//! pick. The table key is [`producer_key`]`(user, id)` = `"<len>:<user><id>"`
//! where `<len>` is the decimal byte length of the user name, so the split is
//! unambiguous for any user name and id. `Add` records carry the user beside
//! the id (format version 2); records of version 1 carry no user, and their
//! ids are not loaded into the table (they could belong to anybody).
//!
//! # Invariants
//!
//! * The table is exactly what the records written so far say: an `Add` with
//!   a producer raises its entry to at least the sequence number; a
//!   `Forget` op removes the entry. The writer thread and recovery apply the
//!   same two rules in the same (append) order, so the writer's table after a
//!   restart equals its table before.
//! * A checkpoint (the `producers` records that follow a segment header)
//!   holds the table as of the segment's creation, in records of at most
//!   [`CHECKPOINT_CHUNK_BYTES`] each, so no checkpoint can outgrow what
//!   recovery accepts. Entries are never taken from anywhere but written
//!   records, so a checkpoint never claims a sequence number that is not on
//!   disk.
//! * The broker ([`crate::producers`]) bounds the table (per-user count, id
//!   length, idle expiry) and writes a `Forget` for every entry it drops, so
//!   the journal's table, and with it every checkpoint, stays bounded too.

use std::collections::HashMap;

/// Most bytes of one checkpoint record's payload (entries are never split).
pub(super) const CHECKPOINT_CHUNK_BYTES: usize = 1 << 20;

/// The table key of producer `id` of `user` (see the module documentation).
pub fn producer_key(user: &str, id: &str) -> String {
    use std::fmt::Write as _;
    let mut k = String::with_capacity(user.len() + id.len() + 4);
    let _ = write!(k, "{}:", user.len());
    k.push_str(user);
    k.push_str(id);
    k
}

/// Splits a key made by [`producer_key`] into `(user, id)`; `None` for a
/// string that is not such a key.
pub fn split_producer_key(key: &str) -> Option<(&str, &str)> {
    let (len, rest) = key.split_once(':')?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: usize = len.parse().ok()?;
    if !rest.is_char_boundary(len) || rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// Raises the entry `key` to at least `seq`.
pub(super) fn note(table: &mut HashMap<String, u64>, key: &str, seq: u64) {
    match table.get_mut(key) {
        Some(s) => *s = (*s).max(seq),
        None => {
            table.insert(key.to_owned(), seq);
        }
    }
}

/// Like [`note`], taking ownership of the key.
pub(super) fn note_owned(table: &mut HashMap<String, u64>, key: String, seq: u64) {
    let s = table.entry(key).or_insert(seq);
    *s = (*s).max(seq);
}

/// Splits the table into checkpoint chunks of at most
/// [`CHECKPOINT_CHUNK_BYTES`] of payload each (entries sorted, so a
/// checkpoint's bytes depend only on the table).
pub(super) fn checkpoint_chunks(table: &HashMap<String, u64>) -> Vec<Vec<(&str, u64)>> {
    let mut entries: Vec<(&str, u64)> = table.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    entries.sort_unstable();
    let mut chunks = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 4;
    for (k, s) in entries {
        let n = super::format::checkpoint_entry_len(k);
        if !cur.is_empty() && bytes + n > CHECKPOINT_CHUNK_BYTES {
            chunks.push(std::mem::take(&mut cur));
            bytes = 4;
        }
        bytes += n;
        cur.push((k, s));
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_for_any_user_and_id() {
        for (u, id) in [
            ("alice", "p-1"),
            ("", "x"),
            ("a:b", ":c"),
            ("10:x", "12"),
            ("ü", "ß"),
        ] {
            let k = producer_key(u, id);
            assert_eq!(split_producer_key(&k), Some((u, id)), "{k:?}");
        }
        // Two users never share a key, whatever ids they choose.
        assert_ne!(producer_key("ev", "eprod"), producer_key("eve", "prod"));
        for bad in ["", "x", ":a", "9:abc", "a:b", "1:"] {
            assert_eq!(split_producer_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn checkpoint_chunks_respect_the_chunk_size() {
        let mut t = HashMap::new();
        for i in 0..20_000u64 {
            t.insert(producer_key("u", &format!("{i:0>100}")), i);
        }
        let chunks = checkpoint_chunks(&t);
        assert!(chunks.len() > 1);
        let mut n = 0;
        for c in &chunks {
            let bytes: usize = 4 + c
                .iter()
                .map(|(k, _)| super::super::format::checkpoint_entry_len(k))
                .sum::<usize>();
            assert!(bytes <= CHECKPOINT_CHUNK_BYTES);
            n += c.len();
        }
        assert_eq!(n, t.len());
    }
}

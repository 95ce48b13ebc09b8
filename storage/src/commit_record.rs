//! The codec of the store-level commit log (`commit.wal`, FORMAT.md "Commit log"), pure.
//!
//! ```text
//! wal header := "SSWL" | version:u16 LE = 2 | reserved:u64 LE = 0 | crc32(previous 14):u32 LE
//! batch      := frame(count:u32 LE | entry*count)
//! entry      := id_len:u8 | id[id_len] | pos:u64 LE | len:u32 LE | bytes[len]
//! ```
//! One batch is one group commit; `bytes` are exactly the change records the batch wrote to
//! `<id>/changes.log` at file position `pos`, so replaying an entry is idempotent.

use std::ops::Range;

use crate::error::FormatError;
use crate::record::LOG_HEADER_LEN;

pub(crate) const WAL_MAGIC: [u8; 4] = *b"SSWL";
/// The store format version that introduced the commit log.
/// Version 3 (store format 3): batch positions are logical positions of the change part, which
/// may span segment files. Version 2 positions are the same numbers (one segment), so a v2
/// commit log is replayed as is and its header rewritten as v3 once empty; a v2 binary refuses a
/// v3 store instead of ignoring its later segments.
pub(crate) const WAL_VERSION: u16 = 3;
/// Length of the commit log header (same layout as a log file header).
pub(crate) const WAL_HEADER_LEN: usize = LOG_HEADER_LEN;

/// Encodes the commit log header.
pub(crate) fn encode_wal_header() -> [u8; WAL_HEADER_LEN] {
    let mut h = [0u8; WAL_HEADER_LEN];
    h[0..4].copy_from_slice(&WAL_MAGIC);
    h[4..6].copy_from_slice(&WAL_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&h[0..14]);
    h[14..18].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a commit log header; returns its version (2 or 3).
pub(crate) fn decode_wal_header(h: &[u8]) -> Result<u16, FormatError> {
    let h = h
        .get(..WAL_HEADER_LEN)
        .ok_or(FormatError::new("short header"))?;
    if h[0..4] != WAL_MAGIC {
        return Err(FormatError::new("bad magic"));
    }
    if crc32fast::hash(&h[0..14]).to_le_bytes() != h[14..18] {
        return Err(FormatError::new("header checksum mismatch"));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if !(2..=WAL_VERSION).contains(&version) {
        return Err(FormatError::new(format!(
            "unsupported commit log version {version}"
        )));
    }
    Ok(version)
}

/// Builds the body of one batch frame, entry by entry.
#[derive(Default)]
pub(crate) struct BatchBuilder {
    /// The frame being built in place: frame header (8 bytes, filled by `finish`), count,
    /// entries.
    frame: Vec<u8>,
    count: u32,
}

/// Frame header (len, crc) and entry count, before the first entry.
const BATCH_START: usize = 8 + 4;

impl BatchBuilder {
    /// A builder writing into `buf` (cleared; its capacity is reused, so a steady stream of
    /// batches does not fault in fresh pages each time).
    pub(crate) fn reusing(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.resize(BATCH_START, 0);
        BatchBuilder {
            frame: buf,
            count: 0,
        }
    }

    /// Adds one entry: `bytes` are the records for the shape file at `pos`. `id` is a
    /// validated shape id (at most 100 bytes).
    pub(crate) fn entry(&mut self, id: &str, pos: u64, bytes: &[u8]) {
        self.frame.push(id.len() as u8);
        self.frame.extend_from_slice(id.as_bytes());
        self.frame.extend_from_slice(&pos.to_le_bytes());
        self.frame
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.frame.extend_from_slice(bytes);
        self.count += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the framed batch so far.
    pub(crate) fn len(&self) -> usize {
        self.frame.len()
    }

    /// The framed batch (the record framing: `len | crc32(body) | body`), built in place.
    pub(crate) fn finish(&mut self) -> &[u8] {
        self.frame[8..12].copy_from_slice(&self.count.to_le_bytes());
        let body = &self.frame[8..];
        let len = body.len() as u32;
        let crc = crc32fast::hash(body);
        self.frame[0..4].copy_from_slice(&len.to_le_bytes());
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());
        &self.frame
    }

    /// The buffer back, for the next batch.
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.frame
    }
}

/// One entry of a decoded batch: ranges into the batch body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchEntry {
    pub(crate) id: Range<usize>,
    pub(crate) pos: u64,
    pub(crate) bytes: Range<usize>,
}

/// Decodes a batch body (its frame already validated); `None` if it does not parse exactly.
pub(crate) fn decode_batch(body: &[u8]) -> Option<Vec<BatchEntry>> {
    let count = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?);
    let mut at = 4;
    let mut out = Vec::new();
    for _ in 0..count {
        let id_len = *body.get(at)? as usize;
        let id = at + 1..at + 1 + id_len;
        body.get(id.clone())?;
        at = id.end;
        let pos = u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?);
        let len = u32::from_le_bytes(body.get(at + 8..at + 12)?.try_into().ok()?) as usize;
        let bytes = at + 12..at + 12 + len;
        body.get(bytes.clone())?;
        at = bytes.end;
        if pos < LOG_HEADER_LEN as u64 {
            return None;
        }
        out.push(BatchEntry { id, pos, bytes });
    }
    (at == body.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::parse_frame;

    #[test]
    fn batch_round_trip_and_damage() {
        let mut b = BatchBuilder::reusing(vec![1, 2, 3]);
        assert!(b.is_empty());
        b.entry("s1", 18, b"abc");
        b.entry("shape-2", 40, b"");
        let framed = b.finish().to_vec();
        let (body, len) = parse_frame(&framed, true).unwrap();
        assert_eq!(len, framed.len());
        let body = &framed[body];
        let entries = decode_batch(body).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(&body[entries[0].id.clone()], b"s1");
        assert_eq!(
            (entries[0].pos, &body[entries[0].bytes.clone()]),
            (18, &b"abc"[..])
        );
        assert_eq!(&body[entries[1].id.clone()], b"shape-2");
        assert_eq!(entries[1].pos, 40);
        assert!(decode_batch(&body[..body.len() - 1]).is_none());
        let mut extra = body.to_vec();
        extra.push(0);
        assert!(decode_batch(&extra).is_none());
    }

    #[test]
    fn header() {
        let h = encode_wal_header();
        assert_eq!(decode_wal_header(&h), Ok(3));
        let mut v2 = h;
        v2[4] = 2;
        let crc = crc32fast::hash(&v2[0..14]);
        v2[14..18].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_wal_header(&v2), Ok(2), "a v2 store's log is read");
        let mut v4 = v2;
        v4[4] = 4;
        let crc = crc32fast::hash(&v4[0..14]);
        v4[14..18].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_wal_header(&v4).is_err());
        let mut bad = h;
        bad[4] = 1;
        assert!(decode_wal_header(&bad).is_err());
        assert!(decode_wal_header(&h[..10]).is_err());
    }
}

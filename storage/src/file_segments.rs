//! Segment files of the change part of a log on disk (FORMAT.md "Segments").
//!
//! The change part is one logical byte space: positions start at `LOG_HEADER_LEN` and grow with
//! every record, exactly as when it was one file. Physically it is cut into **segments**: the
//! first is `changes.log`, each later one `changes-<base>.log`, where `<base>` is the logical
//! position of its first record. Every segment file starts with the usual 18-byte log header,
//! so logical position `p` of the segment with base `b` is at file offset `p - b + 18` (the
//! first segment's base is 18: offset = position, as in store version 2).
//!
//! A new segment is started at the beginning of a write batch once the active one holds
//! `segment_bytes(threshold)` bytes; the finished segment is fsynced and its part of the sparse
//! chunk index written to `chunks-<base>.idx` first. Opening a log reads those index files
//! instead of scanning finished segments: only the last segment is scanned.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::offset::LogOffset;
use crate::open_files::{CachedFile, FileBudget, OpenFile};
use crate::record::{encode_frame, encode_log_header, parse_frame, CHANGES_MAGIC, LOG_HEADER_LEN};
use crate::seek::SealedChunk;

/// The base (logical position of the first record) of the first segment, `changes.log`.
pub(crate) const FIRST_BASE: u64 = LOG_HEADER_LEN as u64;

/// A segment is finished once it holds this many bytes of records (checked at the start of a
/// write batch): four chunks' worth, at least 4 KiB. Derived from the threshold in the log's
/// header, so it does not change when the configuration does.
pub(crate) fn segment_bytes(threshold: u64) -> u64 {
    threshold.saturating_mul(4).max(4096)
}

/// The file name of the segment starting at logical position `base`.
pub(crate) fn segment_name(base: u64) -> Cow<'static, str> {
    if base == FIRST_BASE {
        Cow::Borrowed("changes.log")
    } else {
        Cow::Owned(format!("changes-{base}.log"))
    }
}

/// The base named by a later segment's file name (`changes-<base>.log`, base > 18).
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("changes-")?.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&b| b > FIRST_BASE)
}

/// The index file of the finished segment starting at `base`.
pub(crate) fn index_name(base: u64) -> String {
    format!("chunks-{base}.idx")
}

/// File offset of logical position `pos` in the segment starting at `base`.
pub(crate) fn file_offset(base: u64, pos: u64) -> u64 {
    pos - base + FIRST_BASE
}

/// Creates the segment file starting at `base` with its header, durably (tmp + fsync +
/// rename + fsync of the directory).
pub(crate) fn create_segment(dir: &Path, base: u64, threshold: u64) -> io::Result<File> {
    let name = segment_name(base);
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all_at(&encode_log_header(CHANGES_MAGIC, threshold), 0)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(&*name))?;
    crate::file_scan::sync_dir(dir)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(&*name))
}

const INDEX_MAGIC: [u8; 4] = *b"SSCI";
const INDEX_VERSION: u16 = 1;

/// The part of the sparse chunk index that a finished segment holds, and the writer's state
/// at its end (what a scan of the segment would have produced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    /// The log's chunk threshold (from its header).
    pub(crate) threshold: u64,
    /// Logical positions: the segment's first record, and the end of its last one (the next
    /// segment's base).
    pub(crate) base: u64,
    pub(crate) end: u64,
    /// Offset of the segment's last record.
    pub(crate) last: LogOffset,
    /// Bytes (sum of `len + 1`) of the chunk still open at the segment's end.
    pub(crate) running: u64,
    /// Chunks sealed by records of this segment: end offset and logical end position.
    pub(crate) seals: Vec<SealedChunk<u64>>,
}

/// `SSCI | version:u16 | frame(threshold | base | end | last tx | last op | running | n:u32 |
/// n × (end tx | end op | end pos))`, all little-endian.
pub(crate) fn encode_index(ix: &SegmentIndex) -> Vec<u8> {
    let mut body = Vec::with_capacity(60 + 24 * ix.seals.len());
    for v in [
        ix.threshold,
        ix.base,
        ix.end,
        ix.last.tx(),
        ix.last.op().unwrap_or(0),
        ix.running,
    ] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&(ix.seals.len() as u32).to_le_bytes());
    for s in &ix.seals {
        for v in [s.end.tx(), s.end.op().unwrap_or(0), s.end_pos] {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut out = Vec::with_capacity(body.len() + 14);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    encode_frame(&mut out, &[&body]);
    out
}

/// Decodes and verifies an index file; `None` if it is not one, damaged, or inconsistent.
pub(crate) fn decode_index(buf: &[u8]) -> Option<SegmentIndex> {
    let header = buf.get(..6)?;
    if header[..4] != INDEX_MAGIC || u16::from_le_bytes([header[4], header[5]]) != INDEX_VERSION {
        return None;
    }
    let (body, len) = parse_frame(&buf[6..], true).ok()?;
    if 6 + len != buf.len() {
        return None;
    }
    let body = &buf[6 + body.start..6 + body.end];
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(i..i + 8)?.try_into().ok()?))
    };
    let n = u32::from_le_bytes(body.get(48..52)?.try_into().ok()?) as usize;
    if body.len() != 52 + 24 * n {
        return None;
    }
    let mut seals = Vec::with_capacity(n);
    for i in 0..n {
        let at = 52 + 24 * i;
        seals.push(SealedChunk {
            end: LogOffset::new(u64_at(at)?, u64_at(at + 8)?),
            end_pos: u64_at(at + 16)?,
        });
    }
    let ix = SegmentIndex {
        threshold: u64_at(0)?,
        base: u64_at(8)?,
        end: u64_at(16)?,
        last: LogOffset::new(u64_at(24)?, u64_at(32)?),
        running: u64_at(40)?,
        seals,
    };
    let ordered = ix
        .seals
        .windows(2)
        .all(|w| w[0].end < w[1].end && w[0].end_pos < w[1].end_pos);
    let inside = ix
        .seals
        .iter()
        .all(|s| s.end_pos > ix.base && s.end_pos <= ix.end && s.end <= ix.last);
    let chunking = ix.running < ix.threshold.max(1);
    (ix.base < ix.end && ix.last.tx() > 0 && ordered && inside && chunking).then_some(ix)
}

/// The change part's segment files: the newest one used is kept open through the open-file
/// budget (closed again by `release_if_unused` once idle, or by the budget's sweep); older ones
/// are opened for each read (they hold sealed chunks only, read rarely and cached by CDNs).
pub(crate) struct SegmentFiles {
    dir: Arc<Path>,
    slot: CachedFile,
}

impl SegmentFiles {
    pub(crate) fn new(
        dir: &Arc<Path>,
        open: Option<(u64, File)>,
        budget: &Arc<FileBudget>,
    ) -> SegmentFiles {
        SegmentFiles {
            dir: Arc::clone(dir),
            slot: match open {
                Some((base, file)) => CachedFile::with(budget, base, file),
                None => CachedFile::closed(budget),
            },
        }
    }

    /// The segment starting at `base`.
    pub(crate) fn get(&self, base: u64) -> io::Result<Arc<OpenFile>> {
        let path = self.dir.join(&*segment_name(base));
        self.slot.get(
            base,
            || OpenOptions::new().read(true).write(true).open(&path),
            |cached| cached.is_none_or(|b| base > b),
        )
    }

    /// Reads logical range `[from, to)`, which may cross segment boundaries (`bases` are the
    /// segments' bases, ascending, the first being `FIRST_BASE`), into a caller's buffer (its
    /// capacity is reused).
    pub(crate) fn read_into(
        &self,
        bases: &[u64],
        from: u64,
        to: u64,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let len = usize::try_from(to.saturating_sub(from))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        buf.clear();
        buf.resize(len, 0);
        let mut at = from;
        while at < to {
            let i = bases.partition_point(|&b| b <= at).saturating_sub(1);
            let base = bases.get(i).copied().unwrap_or(FIRST_BASE);
            let seg_end = bases.get(i + 1).copied().unwrap_or(u64::MAX).min(to);
            let part = &mut buf[(at - from) as usize..(seg_end - from) as usize];
            self.get(base)?.read_exact_at(part, file_offset(base, at))?;
            at = seg_end;
        }
        Ok(())
    }

    /// Closes the cached handle unless it was used since the last call. True if closed now.
    pub(crate) fn release_if_unused(&self) -> bool {
        self.slot.release_if_unused()
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn is_open(&self) -> bool {
        self.slot.is_open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_offsets() {
        assert_eq!(segment_name(FIRST_BASE), "changes.log");
        assert_eq!(segment_name(4096), "changes-4096.log");
        assert_eq!(parse_segment_name("changes-4096.log"), Some(4096));
        assert_eq!(parse_segment_name("changes-18.log"), None);
        assert_eq!(parse_segment_name("changes.log"), None);
        assert_eq!(parse_segment_name("changes-4x.log"), None);
        assert_eq!(file_offset(FIRST_BASE, 100), 100);
        assert_eq!(file_offset(4096, 4096), 18);
        assert_eq!(segment_bytes(10 << 20), 40 << 20);
        assert_eq!(segment_bytes(64), 4096);
    }

    #[test]
    fn index_round_trip_and_damage() {
        let ix = SegmentIndex {
            threshold: 100,
            base: 18,
            end: 4200,
            last: LogOffset::new(9, 4),
            running: 37,
            seals: vec![
                SealedChunk {
                    end: LogOffset::new(3, 0),
                    end_pos: 1000,
                },
                SealedChunk {
                    end: LogOffset::new(9, 2),
                    end_pos: 4100,
                },
            ],
        };
        let bytes = encode_index(&ix);
        assert_eq!(decode_index(&bytes), Some(ix.clone()));
        for cut in [0, 5, 10, bytes.len() - 1] {
            assert_eq!(decode_index(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert_eq!(decode_index(&flipped), None);
        let mut outside = ix;
        outside.seals[1].end_pos = 5000;
        assert_eq!(decode_index(&encode_index(&outside)), None);
    }
}

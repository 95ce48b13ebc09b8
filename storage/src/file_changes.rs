//! `changes.log`: the change part of a shape log on disk.
//!
//! Appends are buffered in memory by the writer. They become durable either by `flush` (one
//! positional write at the durable end + fdatasync of this file) or by the store's group
//! commit (`stage`: the same write without fsync, recorded in the commit log, which is
//! fsynced once for all shapes; then `publish`). Only then are the new durable end and the
//! chunks sealed by the batch published in the reader-visible `ChangeIndex`. A failed write
//! or fsync is retryable: the buffer is kept and written again at the same position.
//!
//! Memory stays bounded whatever the size of a transaction: once the buffer passes
//! `SPILL_BYTES` it is moved to `changes.spill.tmp` beside the log (not fsynced, never read by
//! readers, removed on open like every `*.tmp`). A commit then copies the spilled bytes and the
//! rest of the buffer to the durable end and fsyncs the log itself instead of copying them into
//! the commit log; until then nothing of them is visible. Readers take the index
//! lock only to plan a read, then read the byte range with one `read_at` on the shared handle:
//! the published range is immutable (append-only file), so no lock is held during I/O.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::chunking::Chunker;
use crate::error::StoreError;
use crate::file_scan::write_atomic;
use crate::file_scan::CHANGES_FILE;
use crate::file_scan::{create_log_file, open_log_file, scan_records, truncate_tail};
use crate::file_segments::{
    create_segment, decode_index, encode_index, file_offset, index_name, segment_bytes,
    segment_name, SegmentFiles, SegmentIndex, FIRST_BASE,
};
use crate::log::{
    check_change_offset, check_compacted, CompactionCandidate, SealedRead, SnapshotState,
};
use crate::object_tier::codec::{decode_chunk, encode_chunk};
use crate::offset::LogOffset;
use crate::open_files::FileBudget;
use crate::record::{
    decode_change_body, encode_change, fits, parse_frame, CHANGES_MAGIC, CHANGE_PREFIX_LEN,
    FRAME_HEADER_LEN,
};
use crate::seek::{plan, ChangeIndex, Plan, SealedChunk};

/// Buffered bytes beyond this move to the spill file (a transaction of any size is held in
/// memory only up to about this much per shape).
pub(crate) const SPILL_BYTES: usize = 8 << 20;

/// Name of the spill file in the shape directory (a `*.tmp`: removed when the store opens).
pub(crate) const SPILL_FILE: &str = "changes.spill.tmp";

pub(crate) struct ChangeFile {
    /// The segment files (the newest one used opened on demand, closed while idle):
    /// positional reads and writes only, so no cursor is shared.
    file: SegmentFiles,
    /// std RwLock: held for index lookups and publication only, never across I/O or `.await`.
    index: RwLock<ChangeIndex<u64>>,
    /// Serialises the (single) writer; readers never take it. Held across the write and
    /// fsync in `flush`, which is fine: only the writer waits on it.
    writer: Mutex<ChangeWriter>,
    /// Published bytes not written to the segment files yet (write-behind), and the records
    /// last published (see [`Behind`]).
    behind: Mutex<Behind>,
    /// Serialises writers of the write-behind tail (the store's writeback thread, a segment
    /// roll, a spill, `flush`): one writes a part, then drops it, before the next looks.
    tail_write: Mutex<()>,
}

/// What a log holds in memory beyond its index.
#[derive(Default)]
struct Behind {
    /// Published (durable in the commit log) but not yet in the segment files, in position
    /// order and contiguous, ending at the durable end. Readers overlay them on the file; the
    /// store's writeback writes them (coalesced: one write per segment for several batches)
    /// and drops them. A checkpoint writes them all before its `syncfs`.
    tail: Vec<TailPart>,
    /// The records last made durable, from their logical position: the readers their
    /// publication wakes (live requests) read them from memory instead of the file. Dropped
    /// when the log goes idle (`release_if_unused`), so idle logs hold nothing.
    recent: Option<Box<Recent>>,
    /// The log was removed from its store: its tail is dropped, never written.
    dead: bool,
}

/// The last publication: its position, its records, and the last offset before it.
struct Recent {
    at: u64,
    bytes: Bytes,
    before: Option<LogOffset>,
}

impl Behind {
    /// A publication of `bytes` at logical position `at` (in the segment starting at `base`;
    /// `before`: the last offset before it): kept for the readers it wakes if small, and
    /// queued for the writeback unless `written` already.
    fn published(
        &mut self,
        at: u64,
        base: u64,
        before: Option<LogOffset>,
        bytes: Bytes,
        written: bool,
    ) {
        self.recent = (bytes.len() <= RECENT_BYTES).then(|| {
            Box::new(Recent {
                at,
                bytes: bytes.clone(),
                before,
            })
        });
        if !written && !self.dead {
            self.tail.push(TailPart {
                pos: at,
                base,
                bytes,
            });
        }
    }
}

struct TailPart {
    /// Logical position of the first byte.
    pos: u64,
    /// Base of the segment it belongs to (a batch never spans segments).
    base: u64,
    bytes: Bytes,
}

impl TailPart {
    fn end(&self) -> u64 {
        self.pos + self.bytes.len() as u64
    }
}

/// Publications up to this size are kept in memory for the readers they wake.
const RECENT_BYTES: usize = 64 << 10;

struct ChangeWriter {
    /// Encoded records not yet written.
    buf: Vec<u8>,
    /// Chunks sealed by buffered entries, with absolute end positions.
    pending_seals: Vec<SealedChunk<u64>>,
    chunker: Chunker,
    /// Last appended offset (buffered or durable).
    last: Option<LogOffset>,
    /// Logical position where `buf` will be written (= the durable end).
    write_pos: u64,
    /// Logical position where the segment being written starts.
    active_base: u64,
    /// `chunker` and `last` as of the durable end, restored by `discard_unflushed`.
    durable_chunker: Chunker,
    durable_last: Option<LogOffset>,
    /// Records moved out of `buf`: they precede `buf` in what will be written at `write_pos`.
    spill: Option<Spill>,
    /// Records taken by a prepared group commit (`prepare`), being made durable while appends
    /// go on into `buf`: they come first, at `write_pos`.
    staged: Option<Box<Prepared>>,
}

/// A log's part of a prepared group commit: what `prepare` took from the buffer.
struct Prepared {
    bytes: Bytes,
    seals: Vec<SealedChunk<u64>>,
    /// `chunker` and `last` as of its end (the durable ones once it is published).
    chunker: Chunker,
    last: Option<LogOffset>,
}

struct Spill {
    file: File,
    len: u64,
}

impl ChangeWriter {
    /// Bytes appended and not yet durable nor taken by a prepared commit (spilled + buffered).
    fn pending_len(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.len) + self.buf.len() as u64
    }

    /// Bytes taken by a prepared commit in flight.
    fn staged_len(&self) -> u64 {
        self.staged.as_ref().map_or(0, |p| p.bytes.len() as u64)
    }

    /// The single-log paths (`flush`, `stage`) never run while a prepared commit is in flight.
    fn check_not_staged(&self) -> Result<(), StoreError> {
        match self.staged {
            Some(_) => Err(StoreError::Corrupt(
                "a prepared commit of this log is still in flight".into(),
            )),
            None => Ok(()),
        }
    }
}

/// What `stage` did with a log's pending bytes.
pub(crate) enum Staged {
    Nothing,
    /// Written without fsync; `record` got them for the commit log.
    Logged(u64),
    /// Written and fsynced in the log itself (spilled: too large for the commit log).
    Synced(u64),
}

impl ChangeFile {
    pub(crate) fn create(
        dir: &Arc<Path>,
        threshold: u64,
        budget: &Arc<FileBudget>,
    ) -> Result<ChangeFile, StoreError> {
        let file = create_log_file(&dir.join(CHANGES_FILE), CHANGES_MAGIC, threshold)?;
        let index = ChangeIndex::new(FIRST_BASE);
        Ok(ChangeFile::assemble(
            SegmentFiles::new(dir, Some((FIRST_BASE, file)), budget),
            index,
            Chunker::new(threshold),
            None,
        ))
    }

    /// Opens and recovers. Finished segments are taken from their index files (a missing or
    /// damaged one is rebuilt by scanning the segment, which must then end exactly where the
    /// next one starts); the last segment is scanned, re-deriving chunk boundaries with the
    /// threshold from the header, and truncated at the first record that does not validate
    /// (bad frame, bad checksum, bad body, or an offset not above the previous one).
    /// `segments`: the bases of the later segment files found; `compacted`: ends named by
    /// compacted chunk files (a file whose chunk is not sealed in the recovered log is
    /// removed).
    pub(crate) fn open(
        dir: &Arc<Path>,
        segments: Vec<u64>,
        compacted: Vec<LogOffset>,
        budget: &Arc<FileBudget>,
    ) -> Result<ChangeFile, StoreError> {
        let (first, threshold) = open_log_file(&dir.join(CHANGES_FILE), CHANGES_MAGIC)?;
        let mut first = Some(first);
        let mut bases = vec![FIRST_BASE];
        bases.extend(segments);
        let mut chunker = Chunker::new(threshold);
        let mut seals = Vec::new();
        let mut last = None;
        let mut end = FIRST_BASE;
        for (i, &base) in bases.iter().enumerate() {
            let next = bases.get(i + 1).copied();
            if let Some(next) = next {
                let ix = std::fs::read(dir.join(index_name(base)))
                    .ok()
                    .and_then(|b| decode_index(&b))
                    .filter(|ix| ix.base == base && ix.end == next && ix.threshold == threshold)
                    .filter(|ix| {
                        // It continues the segments before it.
                        let first = ix.seals.first().map_or(ix.last, |s| s.end);
                        last.is_none_or(|l| ix.last > l && first > l)
                    });
                if let Some(ix) = ix {
                    seals.extend(ix.seals);
                    last = Some(ix.last);
                    chunker = Chunker::resume(threshold, ix.running);
                    end = next;
                    continue;
                }
            }
            let sealed_before = seals.len();
            let scanned = scan_segment(
                dir,
                base,
                first.take().filter(|_| base == FIRST_BASE),
                &mut chunker,
                &mut last,
                &mut seals,
                next.is_none(),
            )?;
            match (next, last) {
                (Some(next), _) if scanned != next => {
                    return Err(StoreError::Corrupt(format!(
                        "{}: damaged at {scanned}, before the next segment at {next}",
                        segment_name(base)
                    )));
                }
                (Some(next), Some(last)) => {
                    // A finished segment without a usable index: write it again (best
                    // effort), so the next open does not scan, and so that the segment can be
                    // given back once compacted.
                    let ix = SegmentIndex {
                        threshold,
                        base,
                        end: next,
                        last,
                        running: chunker.running(),
                        seals: seals[sealed_before..].to_vec(),
                    };
                    let name = index_name(base);
                    let _ = write_atomic(dir, &name, &format!("{name}.tmp"), &encode_index(&ix));
                    end = next;
                }
                _ => end = scanned,
            }
        }
        let mut index = ChangeIndex::new(FIRST_BASE);
        for (i, &base) in bases.iter().enumerate() {
            if i > 0 {
                index.push_segment(base);
            }
            // A finished segment given back before this open: its records are not on disk.
            if let Some(&next) = bases.get(i + 1) {
                let len = std::fs::metadata(dir.join(&*segment_name(base)))?.len();
                if len <= FIRST_BASE {
                    index.note_given_back(next - base);
                }
            }
        }
        if let Some(latest) = last {
            index.publish(seals, end, latest);
        }
        for end in compacted {
            if index.sealed_range(end).is_some() {
                index.mark_offered(end, true);
            } else {
                std::fs::remove_file(dir.join(compacted_name(end)))?;
            }
        }
        let log = ChangeFile::assemble(SegmentFiles::new(dir, None, budget), index, chunker, last);
        // A crash may have come between a compaction and the reclaim it allowed. Best effort:
        // a failure costs disk space only, and the next compaction tries again.
        let _ = log.reclaim_compacted();
        Ok(log)
    }

    fn assemble(
        file: SegmentFiles,
        index: ChangeIndex<u64>,
        chunker: Chunker,
        last: Option<LogOffset>,
    ) -> ChangeFile {
        let write_pos = index.durable_end();
        let active_base = index.segments().last().copied().unwrap_or(FIRST_BASE);
        ChangeFile {
            file,
            behind: Mutex::new(Behind::default()),
            tail_write: Mutex::new(()),
            index: RwLock::new(index),
            writer: Mutex::new(ChangeWriter {
                buf: Vec::new(),
                pending_seals: Vec::new(),
                chunker,
                last,
                write_pos,
                active_base,
                durable_chunker: chunker,
                durable_last: last,
                spill: None,
                staged: None,
            }),
        }
    }

    fn writer(&self) -> Result<std::sync::MutexGuard<'_, ChangeWriter>, StoreError> {
        Ok(self.writer.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn append(&self, offset: LogOffset, json: &[u8]) -> Result<(), StoreError> {
        let mut w = self.writer()?;
        check_change_offset(offset, w.last)?;
        let (tx, op) = (offset.tx(), offset.op().unwrap_or(0));
        if !fits(json, CHANGE_PREFIX_LEN) {
            return Err(StoreError::EntryTooLarge(json.len()));
        }
        encode_change(&mut w.buf, tx, op, json);
        w.last = Some(offset);
        if w.chunker.add(json.len()) {
            let end_pos = w.write_pos + w.staged_len() + w.pending_len();
            w.pending_seals.push(SealedChunk {
                end: offset,
                end_pos,
            });
        }
        if w.buf.len() >= SPILL_BYTES && w.staged.is_none() {
            // On failure the bytes simply stay in memory (nothing is lost; the next append
            // or the commit tries again). Not while a prepared commit is in flight: a failed
            // one puts its bytes back in front of the buffer, which must then be in memory.
            let _ = self.spill(&mut w);
        }
        Ok(())
    }

    /// Moves the buffer to the end of the spill file.
    fn spill(&self, w: &mut ChangeWriter) -> std::io::Result<()> {
        if w.spill.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.spill_path())?;
            w.spill = Some(Spill { file, len: 0 });
        }
        if let Some(spill) = w.spill.as_mut() {
            spill.file.write_all_at(&w.buf, spill.len)?;
            spill.len += w.buf.len() as u64;
            w.buf.clear();
            w.buf.shrink_to(SPILL_BYTES * 2);
        }
        Ok(())
    }

    /// Writes every pending byte (spilled, then buffered) at the durable end, without fsync.
    fn write_pending(&self, file: &File, w: &ChangeWriter) -> std::io::Result<()> {
        let mut at = file_offset(w.active_base, w.write_pos);
        if let Some(spill) = &w.spill {
            let mut piece = vec![0u8; 1 << 20];
            let mut from = 0u64;
            while from < spill.len {
                let n = (spill.len - from).min(piece.len() as u64) as usize;
                spill.file.read_exact_at(&mut piece[..n], from)?;
                file.write_all_at(&piece[..n], at)?;
                from += n as u64;
                at += n as u64;
            }
        }
        file.write_all_at(&w.buf, at)
    }

    fn spill_path(&self) -> PathBuf {
        self.file.dir().join(SPILL_FILE)
    }

    fn drop_spill(&self, w: &mut ChangeWriter) {
        if w.spill.take().is_some() {
            let _ = std::fs::remove_file(self.spill_path());
        }
    }

    pub(crate) fn discard_unflushed(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.buf.clear();
        self.drop_spill(&mut w);
        w.pending_seals.clear();
        w.staged = None;
        w.chunker = w.durable_chunker;
        w.last = w.durable_last;
    }

    /// Pipelined group commit, step 1 (no I/O): takes the buffered records for a commit that
    /// runs while appends go on. `false` if there is nothing to take. A log that spilled, or
    /// has a prepared commit in flight already, cannot be: `Err` (the caller commits the
    /// classic way instead, after the one in flight).
    pub(crate) fn prepare(&self) -> Result<bool, StoreError> {
        let mut w = self.writer()?;
        w.check_not_staged()?;
        if w.spill.is_some() {
            return Err(StoreError::Corrupt(
                "a spilled log is committed the classic way".into(),
            ));
        }
        if w.buf.is_empty() {
            return Ok(false);
        }
        let prepared = Prepared {
            bytes: Bytes::from(std::mem::take(&mut w.buf)),
            seals: std::mem::take(&mut w.pending_seals),
            chunker: w.chunker,
            last: w.last,
        };
        w.staged = Some(Box::new(prepared));
        Ok(true)
    }

    /// Step 2 (on the committing thread): rolls the segment if it is full, then hands the
    /// prepared records' `(position, bytes)` to `record` for the commit log.
    pub(crate) fn stage_prepared(&self, record: impl FnOnce(u64, &[u8])) -> Result<(), StoreError> {
        let mut w = self.writer()?;
        if w.staged.is_none() {
            return Ok(());
        }
        self.roll_if_full(&mut w)?;
        if let Some(p) = &w.staged {
            record(w.write_pos, &p.bytes);
        }
        Ok(())
    }

    /// Step 3, after the commit log's fsync: publishes the prepared records (they become the
    /// write-behind tail). True if the log has a tail to write now.
    pub(crate) fn publish_prepared(&self) -> Result<bool, StoreError> {
        let mut w = self.writer()?;
        let Some(p) = w.staged.take() else {
            return Ok(false);
        };
        let at = w.write_pos;
        let len = p.bytes.len() as u64;
        self.behind()
            .published(at, w.active_base, w.durable_last, p.bytes, false);
        w.write_pos += len;
        w.durable_chunker = p.chunker;
        w.durable_last = p.last;
        let latest = p.last.unwrap_or(LogOffset::LAST_BEFORE_REAL);
        let durable_end = w.write_pos;
        self.index_mut().publish(p.seals, durable_end, latest);
        drop(w);
        Ok(self.has_tail())
    }

    /// A prepared commit failed: its records go back in front of what was appended since, to
    /// be committed again.
    pub(crate) fn abort_prepared(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = w.staged.take() else { return };
        let mut buf = Vec::with_capacity(p.bytes.len() + w.buf.len());
        buf.extend_from_slice(&p.bytes);
        buf.extend_from_slice(&w.buf);
        w.buf = buf;
        let mut seals = p.seals;
        seals.append(&mut w.pending_seals);
        w.pending_seals = seals;
    }

    /// Writes buffered changes and fsyncs them (the single-log path; the store's group commit
    /// uses `stage` + `publish` instead). A failed write or fsync keeps the buffer: the retry
    /// writes the same bytes at the same position again, which re-dirties any page whose
    /// writeback failed, so a later successful fsync covers them.
    pub(crate) fn flush(&self) -> Result<LogOffset, StoreError> {
        let mut w = self.writer()?;
        w.check_not_staged()?;
        let len = w.pending_len();
        if len == 0 {
            return Ok(self.latest_offset());
        }
        // Earlier batches still behind go first: the file has no gap before `write_pos`.
        self.write_tail()?;
        self.roll_if_full(&mut w)?;
        let file = self.file.get(w.active_base)?;
        self.write_pending(&file, &w)
            .and_then(|()| file.sync_data())?;
        Ok(self.publish_locked(&mut w, len, true))
    }

    /// Group commit, phase 1: hands the buffered changes' `(position, bytes)` to `record` (for
    /// the commit log). They are not written to the segment file here: once published they
    /// are the log's write-behind tail, served from memory until the store's writeback (or a
    /// checkpoint) writes them. A log that spilled is written whole and fsynced itself instead
    /// (`Staged::Synced`; the commit log never holds more than `SPILL_BYTES` per shape).
    /// Nothing becomes visible. On error nothing changes and the call can be repeated.
    pub(crate) fn stage(&self, record: impl FnOnce(u64, &[u8])) -> Result<Staged, StoreError> {
        let mut w = self.writer()?;
        w.check_not_staged()?;
        let len = w.pending_len();
        if len == 0 {
            return Ok(Staged::Nothing);
        }
        self.roll_if_full(&mut w)?;
        if w.spill.is_some() {
            self.write_tail()?;
            let file = self.file.get(w.active_base)?;
            self.write_pending(&file, &w)
                .and_then(|()| file.sync_data())?;
            return Ok(Staged::Synced(len));
        }
        record(w.write_pos, &w.buf);
        Ok(Staged::Logged(len))
    }

    /// Writes the write-behind tail to the segment files (one write per segment it touches)
    /// and drops what was written. Without fsync: the bytes are durable in the commit log
    /// until a checkpoint syncs the files. On error the tail is kept (served from memory, and
    /// written again by the next call).
    pub(crate) fn write_tail(&self) -> Result<(), StoreError> {
        let _one_writer = self.tail_write.lock().unwrap_or_else(|e| e.into_inner());
        let parts: Vec<(u64, u64, Bytes)> = {
            let behind = self.behind();
            if behind.dead {
                return Ok(());
            }
            behind
                .tail
                .iter()
                .map(|p| (p.pos, p.base, p.bytes.clone()))
                .collect()
        };
        let mut i = 0;
        while i < parts.len() {
            let base = parts[i].1;
            let j = i + parts[i..].iter().take_while(|p| p.1 == base).count();
            let file = self.file.get(base)?;
            let at = file_offset(base, parts[i].0);
            if j == i + 1 {
                file.write_all_at(&parts[i].2, at)?;
            } else {
                let mut joined = Vec::with_capacity(parts[i..j].iter().map(|p| p.2.len()).sum());
                for p in &parts[i..j] {
                    joined.extend_from_slice(&p.2);
                }
                file.write_all_at(&joined, at)?;
            }
            let end = parts[j - 1].0 + parts[j - 1].2.len() as u64;
            // Parts are contiguous and in order: the written ones are a prefix.
            self.behind().tail.retain(|p| p.end() > end);
            i = j;
        }
        Ok(())
    }

    /// True while published bytes wait for the writeback.
    pub(crate) fn has_tail(&self) -> bool {
        !self.behind().tail.is_empty()
    }

    /// The log was removed from its store: drops its write-behind tail and never writes one
    /// again (waits for a write of it in progress to finish, so nothing is written after).
    pub(crate) fn kill(&self) {
        let _one_writer = self.tail_write.lock().unwrap_or_else(|e| e.into_inner());
        let mut behind = self.behind();
        behind.dead = true;
        behind.tail = Vec::new();
    }

    fn behind(&self) -> std::sync::MutexGuard<'_, Behind> {
        self.behind.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At the start of a write batch: if the active segment is full, finish it (fsync, then
    /// its index file) and start the next segment at the durable end. A batch is never split
    /// across segments, so every commit-log entry lies in one segment. On failure nothing
    /// changed that matters: the batch goes to the same segment on the retry, or the retry
    /// rolls again (rewriting the same index and segment files).
    fn roll_if_full(&self, w: &mut ChangeWriter) -> Result<(), StoreError> {
        let threshold = w.durable_chunker.threshold();
        let Some(last) = w.durable_last else {
            return Ok(());
        };
        if w.write_pos - w.active_base < segment_bytes(threshold) {
            return Ok(());
        }
        // The finished segment's bytes still behind are written to it before it is indexed.
        self.write_tail()?;
        let dir = self.file.dir();
        // No fsync of the finished segment here: its records are as durable as any others
        // (fsynced by `flush`, or in the commit log until a checkpoint syncs them), and a
        // failed fsync retried on the same handle would report success for pages that never
        // reached the disk.
        let ix = SegmentIndex {
            threshold,
            base: w.active_base,
            end: w.write_pos,
            last,
            running: w.durable_chunker.running(),
            seals: self.index_ref().sealed_between(w.active_base, w.write_pos),
        };
        let name = index_name(ix.base);
        write_atomic(dir, &name, &format!("{name}.tmp"), &encode_index(&ix))?;
        let file = create_segment(dir, w.write_pos, threshold)?;
        drop(file);
        w.active_base = w.write_pos;
        self.index_mut().push_segment(w.write_pos);
        // Chunks of the finished segment may all be compacted already. Best effort: a failure
        // here costs only disk space, and the next compaction or opening tries again.
        let _ = self.reclaim_compacted();
        Ok(())
    }

    /// Group commit, phase 2 (after the commit log fsync): publishes the `len` staged bytes;
    /// `written`: `stage` wrote them to the segment (`Staged::Synced`), else they become the
    /// write-behind tail. The caller is the single writer, so the buffer still holds exactly
    /// what was staged. True if the log has a tail to write now.
    pub(crate) fn publish(&self, len: u64, written: bool) -> Result<bool, StoreError> {
        let mut w = self.writer()?;
        if w.pending_len() != len {
            return Err(StoreError::Corrupt(
                "changes appended between stage and publish".into(),
            ));
        }
        self.publish_locked(&mut w, len, written);
        Ok(!written && self.has_tail())
    }

    /// Marks the `len` pending bytes (all of them) durable and visible. `written`: they are in
    /// the segment file; else (not spilled) they join the write-behind tail, which is
    /// extended before the index is, so a reader never plans past file + tail.
    fn publish_locked(&self, w: &mut ChangeWriter, len: u64, written: bool) -> LogOffset {
        debug_assert_eq!(len, w.pending_len());
        let at = w.write_pos;
        if written {
            let mut behind = self.behind();
            if w.spill.is_none() && w.buf.len() <= RECENT_BYTES {
                let bytes = Bytes::copy_from_slice(&w.buf);
                behind.published(at, w.active_base, w.durable_last, bytes, true);
            } else {
                behind.recent = None;
            }
            // Capacity is kept for the next commit (a hot log); `release_if_unused` gives it
            // back once the log goes idle.
            w.buf.clear();
        } else {
            debug_assert!(w.spill.is_none());
            let bytes = Bytes::from(std::mem::take(&mut w.buf));
            self.behind()
                .published(at, w.active_base, w.durable_last, bytes, false);
        }
        w.write_pos += len;
        self.drop_spill(w);
        w.durable_chunker = w.chunker;
        w.durable_last = w.last;
        let latest = w.last.unwrap_or(LogOffset::LAST_BEFORE_REAL);
        let seals = std::mem::take(&mut w.pending_seals);
        let durable_end = w.write_pos;
        self.index_mut().publish(seals, durable_end, latest);
        latest
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, ChangeIndex<u64>> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn index_ref(&self) -> std::sync::RwLockReadGuard<'_, ChangeIndex<u64>> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Plans a read against the current index (short read-lock).
    pub(crate) fn plan(&self, after: LogOffset, snapshot: &SnapshotState) -> Plan<u64> {
        plan(after, snapshot, &self.index_ref())
    }

    /// Every segment's base, ascending (the first is `FIRST_BASE`).
    fn segment_bases(&self) -> Vec<u64> {
        std::iter::once(FIRST_BASE)
            .chain(self.index_ref().segments().iter().copied())
            .collect()
    }

    /// The published bytes `[from, to)`: from memory when one publication (the last, or a part
    /// of the write-behind tail) holds them all, else from the files with the tail overlaid.
    fn read_range(&self, from: u64, to: u64) -> Result<Bytes, StoreError> {
        {
            let behind = self.behind();
            let whole = |at: u64, bytes: &Bytes| {
                (at <= from && to <= at + bytes.len() as u64)
                    .then(|| bytes.slice((from - at) as usize..(to - at) as usize))
            };
            let hit = behind
                .recent
                .as_ref()
                .and_then(|r| whole(r.at, &r.bytes))
                .or_else(|| behind.tail.iter().find_map(|p| whole(p.pos, &p.bytes)));
            if let Some(bytes) = hit {
                return Ok(bytes);
            }
        }
        let mut buf = Vec::new();
        self.read_range_into(&self.segment_bases(), from, to, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// `[from, to)` into `buf`: what lies below the write-behind tail from the segment files
    /// (`bases`), the rest from the tail. The tail is looked at first: a part leaves it only
    /// once written, so everything below its first part is in the files.
    fn read_range_into(
        &self,
        bases: &[u64],
        from: u64,
        to: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let overlap: Vec<(u64, Bytes)> = self
            .behind()
            .tail
            .iter()
            .filter(|p| p.end() > from && p.pos < to)
            .map(|p| (p.pos, p.bytes.clone()))
            .collect();
        let file_to = overlap
            .first()
            .map_or(to, |(pos, _)| (*pos).clamp(from, to));
        self.file.read_into(bases, from, file_to, buf)?;
        for (pos, bytes) in overlap {
            let (s, e) = (from.max(pos), to.min(pos + bytes.len() as u64));
            buf.extend_from_slice(&bytes[(s - pos) as usize..(e - pos) as usize]);
        }
        if buf.len() as u64 != to - from {
            return Err(StoreError::Corrupt(format!(
                "read of [{from}, {to}) got {} bytes (write-behind tail out of order)",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Reads every entry stored in `[from, to)` with its offset.
    pub(crate) fn read_with_offsets(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(LogOffset, Bytes)>, StoreError> {
        parse_entries(self.read_range(from, to)?, from)
    }

    /// The entries of chunk `[from, to)` after `after`, when the last publication holds all
    /// of them: a reader woken by it (a live request at the offset before it) reads no file,
    /// however much of the chunk came before.
    fn recent_after(
        &self,
        from: u64,
        to: u64,
        after: LogOffset,
    ) -> Option<Result<Vec<(LogOffset, Bytes)>, StoreError>> {
        let bytes = {
            let behind = self.behind();
            let r = behind.recent.as_ref()?;
            let end = r.at + r.bytes.len() as u64;
            let all_inside = r.before.is_none_or(|b| after >= b);
            (from <= r.at && r.at <= to && to <= end && all_inside)
                .then(|| (r.at, r.bytes.slice(..(to - r.at) as usize)))?
        };
        Some(parse_entries(bytes.1, bytes.0))
    }
}

/// The framed change records in `buf` (read from logical position `from`) with their offsets.
fn parse_entries(buf: Bytes, from: u64) -> Result<Vec<(LogOffset, Bytes)>, StoreError> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let (body, len) = parse_frame(&buf[at..], false).map_err(|e| corrupt(from, at, e))?;
        let body = at + body.start..at + body.end;
        let (offset, json) =
            decode_change_body(&buf[body.clone()]).ok_or_else(|| corrupt(from, at, "body"))?;
        entries.push((
            offset,
            buf.slice(body.start + json.start..body.start + json.end),
        ));
        at += len;
    }
    Ok(entries)
}

impl ChangeFile {
    /// The compacted form of the sealed chunk ending at `end`, if it has one. A compacted file
    /// that is missing or does not verify is dropped from service: readers get the original
    /// chunk (`read_chunk`). Other I/O errors (out of descriptors, say) are errors, and the
    /// compacted form stays in service.
    pub(crate) fn read_compacted(
        &self,
        end: LogOffset,
    ) -> Result<Option<Vec<(LogOffset, Bytes)>>, StoreError> {
        if !self.index_ref().is_compacted(end) {
            return Ok(None);
        }
        match std::fs::read(self.file.dir().join(compacted_name(end))) {
            Ok(bytes) => {
                if let Some(entries) = verify_compacted(bytes, end) {
                    return Ok(Some(entries));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.index_mut().drop_compacted(end);
        Ok(None)
    }

    /// The sealed or tail chunk `[from, to)` ending at `end`, whole: its compacted form if it
    /// has one (`true`), else its records. A read of the records that fails because the chunk
    /// was compacted and its segment reclaimed meanwhile is answered from the compacted form.
    /// With `after`, entries up to it may be left out (the caller drops them anyway).
    pub(crate) fn read_chunk(
        &self,
        from: u64,
        to: u64,
        end: LogOffset,
        after: Option<LogOffset>,
    ) -> Result<(Vec<(LogOffset, Bytes)>, bool), StoreError> {
        if let Some(entries) = self.read_compacted(end)? {
            return Ok((entries, true));
        }
        if let Some(read) = after.and_then(|a| self.recent_after(from, to, a)) {
            return Ok((read?, false));
        }
        match self.read_with_offsets(from, to) {
            Ok(entries) => Ok((entries, false)),
            Err(e) => match self.read_compacted(end) {
                Ok(Some(entries)) => Ok((entries, true)),
                _ => Err(e),
            },
        }
    }

    pub(crate) fn sealed_chunk_start(&self, end: LogOffset) -> Option<LogOffset> {
        self.index_ref().sealed_chunk_start(end)
    }

    pub(crate) fn has_compaction_candidate(&self) -> bool {
        self.index_ref().has_compaction_candidate()
    }

    /// The oldest sealed chunk not offered to compaction yet, whole.
    pub(crate) fn compaction_candidate(&self) -> Result<Option<CompactionCandidate>, StoreError> {
        let Some((from, to, end)) = self.index_ref().compaction_candidate() else {
            return Ok(None);
        };
        Ok(Some((end, self.read_with_offsets(from, to)?)))
    }

    /// See `ShapeLog::visit_compaction_candidate`: the chunk is read in pieces of at most
    /// `VISIT_PIECE` bytes into `scratch` (more only for an entry larger than that), so the
    /// caller's memory stays small whatever the chunk size.
    pub(crate) fn visit_compaction_candidate(
        &self,
        scratch: &mut Vec<u8>,
        visit: &mut dyn FnMut(LogOffset, &[u8]),
    ) -> Result<Option<LogOffset>, StoreError> {
        const VISIT_PIECE: u64 = 256 << 10;
        let range = self.index_ref().compaction_candidate();
        let bases = self.segment_bases();
        let Some((from, to, end)) = range else {
            return Ok(None);
        };
        let mut at = from;
        while at < to {
            // One piece: at least the next whole frame, at most VISIT_PIECE if that holds it.
            let mut header = Vec::new();
            self.read_range_into(
                &bases,
                at,
                (at + FRAME_HEADER_LEN as u64).min(to),
                &mut header,
            )?;
            let first = header
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
                .ok_or_else(|| corrupt(at, 0, "short frame header"))?;
            let want = (FRAME_HEADER_LEN as u64 + first).max(VISIT_PIECE);
            self.read_range_into(&bases, at, (at + want).min(to), scratch)?;
            let mut pos = 0;
            while pos < scratch.len() {
                let Ok((body, len)) = parse_frame(&scratch[pos..], false) else {
                    break; // a frame cut by the piece's end: it starts the next piece
                };
                let body = &scratch[pos + body.start..pos + body.end];
                let (offset, json) =
                    decode_change_body(body).ok_or_else(|| corrupt(at, pos, "body"))?;
                visit(offset, &body[json]);
                pos += len;
            }
            if pos == 0 {
                return Err(corrupt(at, 0, "frame larger than its chunk"));
            }
            at += pos as u64;
        }
        Ok(Some(end))
    }

    /// See `ShapeLog::store_compacted`: the compacted form is written to its own file
    /// (tmp + fsync + rename + fsync of the directory) before readers are pointed at it.
    pub(crate) fn store_compacted(
        &self,
        end: LogOffset,
        entries: Option<&[(LogOffset, Bytes)]>,
    ) -> Result<(), StoreError> {
        let (range, done) = {
            let index = self.index_ref();
            (index.sealed_range(end), index.is_compacted(end))
        };
        let Some((from, to)) = range else {
            return Err(StoreError::InvalidCompaction(format!(
                "no sealed chunk ends at {end}"
            )));
        };
        if let Some(entries) = entries {
            if done {
                return Err(StoreError::InvalidCompaction(format!(
                    "the chunk ending at {end} is already compacted"
                )));
            }
            check_compacted(&self.read_with_offsets(from, to)?, entries)?;
            let body = encode_chunk(&SealedRead::Changes {
                entries: entries.to_vec(),
                compacted: true,
            });
            let name = compacted_name(end);
            write_atomic(self.file.dir(), &name, &format!("{name}.tmp"), &body)?;
        }
        self.index_mut().mark_offered(end, entries.is_some());
        if entries.is_some() {
            self.reclaim_compacted()?;
        }
        Ok(())
    }

    /// Gives back the disk space of finished segments whose every chunk is stored compacted:
    /// nobody reads their records any more (reads, uploads and compaction use the compacted
    /// files), and opening the log takes their index files. The file is cut to its header,
    /// not removed, so the segment layout stays visible. Idempotent. Returns the bytes freed.
    pub(crate) fn reclaim_compacted(&self) -> Result<u64, StoreError> {
        let segments = self.index_ref().fully_compacted_segments();
        let dir = self.file.dir();
        let mut freed = 0;
        for (start, end, chunks) in segments {
            let path = dir.join(&*segment_name(start));
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            let len = file.metadata()?.len();
            if len <= FIRST_BASE {
                continue; // given back already (counted when the log was opened)
            }
            // Once cut, the segment's index file is the only record of its chunk boundaries,
            // and the compacted files the only copy of its chunks: all must verify first.
            let indexed = std::fs::read(dir.join(index_name(start)))
                .ok()
                .and_then(|b| decode_index(&b))
                .is_some_and(|ix| ix.base == start && ix.end == end);
            if !indexed {
                continue;
            }
            let mut verified = true;
            for chunk in chunks {
                verified &= self.read_compacted(chunk)?.is_some();
            }
            if verified {
                file.set_len(FIRST_BASE)?;
                file.sync_all()?;
                freed += len - FIRST_BASE;
                self.index_mut().note_given_back(end - start);
            }
        }
        Ok(freed)
    }

    /// Is `end` the end of a sealed (durable) change chunk?
    pub(crate) fn is_sealed_end(&self, end: LogOffset) -> bool {
        self.index_ref().is_sealed_end(end)
    }

    pub(crate) fn latest_offset(&self) -> LogOffset {
        self.index_ref().latest_offset()
    }

    /// Closes the file handle if it was not used since the last call (and no spill file is
    /// open), and gives back the write buffer's capacity. True if nothing is held open now.
    pub(crate) fn release_if_unused(&self) -> bool {
        let Ok(mut w) = self.writer.try_lock() else {
            return false; // being written right now
        };
        if w.spill.is_some() || !self.file.release_if_unused() {
            return false;
        }
        if w.buf.is_empty() {
            w.buf = Vec::new();
        }
        self.behind().recent = None;
        true
    }

    pub(crate) fn is_open(&self) -> bool {
        self.file.is_open()
    }

    /// Durable bytes of the file.
    /// Bytes of records on disk: the durable end, less the segments given back.
    pub(crate) fn size_bytes(&self) -> u64 {
        let index = self.index_ref();
        index.durable_end().saturating_sub(index.given_back())
    }
}

/// Scans the segment starting at `base` (`open`: its file, already opened and checked), whose
/// header must carry the log's threshold (`chunker`'s), continuing the chunking state, the last
/// offset and the seals of the segments before it. Returns the logical end of its last valid
/// record; the last segment (`truncate`) is cut there, durably.
fn scan_segment(
    dir: &Path,
    base: u64,
    open: Option<File>,
    chunker: &mut Chunker,
    last: &mut Option<LogOffset>,
    seals: &mut Vec<SealedChunk<u64>>,
    truncate: bool,
) -> Result<u64, StoreError> {
    let name = segment_name(base);
    let threshold = chunker.threshold();
    let (file, header_threshold) = match open {
        Some(file) => (file, threshold),
        None => open_log_file(&dir.join(&*name), CHANGES_MAGIC)?,
    };
    if header_threshold != threshold {
        return Err(StoreError::Corrupt(format!(
            "{name}: threshold {header_threshold}, the log's is {threshold}"
        )));
    }
    let logical = |file_pos: u64| base + file_pos - FIRST_BASE;
    let end = scan_records(&file, |body, end_pos| {
        let Some((offset, json)) = decode_change_body(body) else {
            return false;
        };
        if check_change_offset(offset, *last).is_err() {
            return false;
        }
        *last = Some(offset);
        if chunker.add(json.len()) {
            seals.push(SealedChunk {
                end: offset,
                end_pos: logical(end_pos),
            });
        }
        true
    })?;
    if truncate {
        truncate_tail(&file, end)?;
    }
    Ok(logical(end))
}

/// The entries of a compacted chunk file if it decodes, verifies, is of the compacted kind and
/// ends at `end`.
fn verify_compacted(bytes: Vec<u8>, end: LogOffset) -> Option<Vec<(LogOffset, Bytes)>> {
    let decoded = decode_chunk(&Bytes::from(bytes)).ok()?;
    if !decoded.compacted {
        return None;
    }
    let entries: Option<Vec<(LogOffset, Bytes)>> = decoded
        .entries
        .into_iter()
        .map(|(o, e)| Some((o?, e)))
        .collect();
    entries.filter(|e| e.last().map(|l| l.0) == Some(end))
}

/// `compacted-<tx>_<op>.chunk`: the compacted form of the sealed chunk ending at that offset.
pub(crate) fn compacted_name(end: LogOffset) -> String {
    format!("compacted-{end}.chunk")
}

/// The chunk end named by a compacted chunk file name, if it is one.
pub(crate) fn parse_compacted_name(name: &str) -> Option<LogOffset> {
    let end: LogOffset = name
        .strip_prefix("compacted-")?
        .strip_suffix(".chunk")?
        .parse()
        .ok()?;
    (end.tx() > 0 && end.op().is_some()).then_some(end)
}

fn corrupt(from: u64, at: usize, what: impl std::fmt::Debug) -> StoreError {
    StoreError::Corrupt(format!(
        "changes.log: bad record at {}: {what:?}",
        from + at as u64
    ))
}

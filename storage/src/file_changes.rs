//! `changes.log`: the change part of a shape log on disk.
//!
//! Appends are buffered in memory by the writer. They become durable either by `flush` (one
//! positional write at the durable end + fdatasync of this file) or by the store's group
//! commit (`stage`: the same write without fsync, recorded in the commit log, which is
//! fsynced once for all shapes; then `publish`). Only then are the new durable end and the
//! chunks sealed by the batch published in the reader-visible `ChangeIndex`. A failed write
//! or fsync is retryable: the buffer is kept and written again at the same position. Readers take the index
//! lock only to plan a read, then read the byte range with one `read_at` on the shared handle:
//! the published range is immutable (append-only file), so no lock is held during I/O.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use bytes::Bytes;

use crate::chunking::Chunker;
use crate::file_scan::{create_log_file, open_log_file, read_range, scan_records, truncate_tail};
use crate::record::{
    decode_change_body, encode_change, fits, parse_frame, CHANGES_MAGIC, CHANGE_PREFIX_LEN,
    LOG_HEADER_LEN,
};
use crate::seek::{plan, ChangeIndex, Plan, SealedChunk};
use crate::{check_change_offset, LogOffset, SnapshotState, StoreError};

pub(crate) struct ChangeFile {
    /// Shared handle: positional reads and writes only, so no cursor is shared.
    file: File,
    /// std RwLock: held for index lookups and publication only, never across I/O or `.await`.
    index: RwLock<ChangeIndex<u64>>,
    /// Serialises the (single) writer; readers never take it. Held across the write and
    /// fsync in `flush`, which is fine: only the writer waits on it.
    writer: Mutex<ChangeWriter>,
}

struct ChangeWriter {
    /// Encoded records not yet written.
    buf: Vec<u8>,
    /// Chunks sealed by buffered entries, with absolute end positions.
    pending_seals: Vec<SealedChunk<u64>>,
    chunker: Chunker,
    /// Last appended offset (buffered or durable).
    last: Option<LogOffset>,
    /// File position where `buf` will be written (= the durable end).
    write_pos: u64,
    /// `chunker` and `last` as of the durable end, restored by `discard_unflushed`.
    durable_chunker: Chunker,
    durable_last: Option<LogOffset>,
}

impl ChangeFile {
    pub(crate) fn create(path: &Path, threshold: u64) -> Result<ChangeFile, StoreError> {
        let file = create_log_file(path, CHANGES_MAGIC, threshold)?;
        let index = ChangeIndex::new(LOG_HEADER_LEN as u64);
        Ok(ChangeFile::assemble(
            file,
            index,
            Chunker::new(threshold),
            None,
        ))
    }

    /// Opens and recovers: replays the records, re-deriving chunk boundaries with the
    /// threshold from the header, and truncates at the first record that does not validate
    /// (bad frame, bad checksum, bad body, or an offset not above the previous one).
    pub(crate) fn open(path: &Path) -> Result<ChangeFile, StoreError> {
        let (file, threshold) = open_log_file(path, CHANGES_MAGIC)?;
        let mut chunker = Chunker::new(threshold);
        let mut seals = Vec::new();
        let mut last = None;
        let end = scan_records(&file, |body, end_pos| {
            let Some((offset, json)) = decode_change_body(body) else {
                return false;
            };
            if check_change_offset(offset, last).is_err() {
                return false;
            }
            last = Some(offset);
            if chunker.add(json.len()) {
                seals.push(SealedChunk {
                    end: offset,
                    end_pos,
                });
            }
            true
        })?;
        truncate_tail(&file, end)?;
        let mut index = ChangeIndex::new(LOG_HEADER_LEN as u64);
        if let Some(latest) = last {
            index.publish(seals, end, latest);
        }
        Ok(ChangeFile::assemble(file, index, chunker, last))
    }

    fn assemble(
        file: File,
        index: ChangeIndex<u64>,
        chunker: Chunker,
        last: Option<LogOffset>,
    ) -> ChangeFile {
        let write_pos = index.durable_end();
        ChangeFile {
            file,
            index: RwLock::new(index),
            writer: Mutex::new(ChangeWriter {
                buf: Vec::new(),
                pending_seals: Vec::new(),
                chunker,
                last,
                write_pos,
                durable_chunker: chunker,
                durable_last: last,
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
            let end_pos = w.write_pos + w.buf.len() as u64;
            w.pending_seals.push(SealedChunk {
                end: offset,
                end_pos,
            });
        }
        Ok(())
    }

    pub(crate) fn discard_unflushed(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.buf.clear();
        w.pending_seals.clear();
        w.chunker = w.durable_chunker;
        w.last = w.durable_last;
    }

    /// Writes buffered changes and fsyncs them (the single-log path; the store's group commit
    /// uses `stage` + `publish` instead). A failed write or fsync keeps the buffer: the retry
    /// writes the same bytes at the same position again, which re-dirties any page whose
    /// writeback failed, so a later successful fsync covers them.
    pub(crate) fn flush(&self) -> Result<LogOffset, StoreError> {
        let mut w = self.writer()?;
        if w.buf.is_empty() {
            return Ok(self.latest_offset());
        }
        self.file
            .write_all_at(&w.buf, w.write_pos)
            .and_then(|()| self.file.sync_data())?;
        let len = w.buf.len();
        Ok(self.publish_locked(&mut w, len))
    }

    /// Group commit, phase 1: writes the buffered changes at the durable end **without**
    /// fsync and hands `(position, bytes)` to `record` (for the commit log). Nothing becomes
    /// visible. Returns the number of bytes staged (0: nothing buffered). On error nothing
    /// changes and the call can be repeated.
    pub(crate) fn stage(&self, record: impl FnOnce(u64, &[u8])) -> Result<usize, StoreError> {
        let w = self.writer()?;
        if w.buf.is_empty() {
            return Ok(0);
        }
        self.file.write_all_at(&w.buf, w.write_pos)?;
        record(w.write_pos, &w.buf);
        Ok(w.buf.len())
    }

    /// Group commit, phase 2 (after the commit log fsync): publishes the `len` staged bytes.
    /// The caller is the single writer, so the buffer still holds exactly what was staged.
    pub(crate) fn publish(&self, len: usize) -> Result<LogOffset, StoreError> {
        let mut w = self.writer()?;
        if w.buf.len() != len {
            return Err(StoreError::Corrupt(
                "changes appended between stage and publish".into(),
            ));
        }
        Ok(self.publish_locked(&mut w, len))
    }

    /// Marks the first `len` buffered bytes (the whole buffer) durable and visible.
    fn publish_locked(&self, w: &mut ChangeWriter, len: usize) -> LogOffset {
        debug_assert_eq!(len, w.buf.len());
        w.write_pos += len as u64;
        w.buf.clear();
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

    /// Reads the entries `> after` stored in `[from, to)`.
    pub(crate) fn read_entries(
        &self,
        from: u64,
        to: u64,
        after: LogOffset,
    ) -> Result<Vec<Bytes>, StoreError> {
        let mut entries = self.read_with_offsets(from, to)?;
        entries.retain(|(offset, _)| *offset > after);
        Ok(entries.into_iter().map(|(_, json)| json).collect())
    }

    /// Reads every entry stored in `[from, to)` with its offset.
    pub(crate) fn read_with_offsets(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(LogOffset, Bytes)>, StoreError> {
        let buf = read_range(&self.file, from, to)?;
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

    /// Is `end` the end of a sealed (durable) change chunk?
    pub(crate) fn is_sealed_end(&self, end: LogOffset) -> bool {
        self.index_ref().is_sealed_end(end)
    }

    pub(crate) fn latest_offset(&self) -> LogOffset {
        self.index_ref().latest_offset()
    }

    /// Durable bytes of the file.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.index_ref().durable_end()
    }
}

fn corrupt(from: u64, at: usize, what: impl std::fmt::Debug) -> StoreError {
    StoreError::Corrupt(format!(
        "changes.log: bad record at {}: {what:?}",
        from + at as u64
    ))
}

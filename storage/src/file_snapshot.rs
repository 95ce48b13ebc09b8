//! `snapshot.log`: the snapshot part of a shape log on disk.
//!
//! Rows are buffered by the writer until the chunking rule seals a chunk; the rows and a
//! `Seal` record are then written with one positional write and the chunk end is published
//! (readable, not yet durable). `finish_snapshot` writes the last row, `Seal` and `Finished`
//! and fsyncs: only a finished snapshot is a durable promise. Recovery keeps whole sealed
//! chunks and drops unsealed rows, so the file always ends at a chunk boundary.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::chunking::Chunker;
use crate::error::StoreError;
use crate::file_scan::SNAPSHOT_FILE;
use crate::file_scan::{
    create_log_file, open_log_file, read_range, scan_records, truncate_tail, LazyFile,
};
use crate::log::SnapshotState;
use crate::open_files::FileBudget;
use crate::record::{
    decode_snapshot_body, encode_snapshot, fits, parse_frame, SnapshotKind, LOG_HEADER_LEN,
    SNAPSHOT_MAGIC,
};

pub(crate) struct SnapshotFile {
    /// Shared handle (opened on demand, closed while idle): positional reads and writes only.
    file: LazyFile,
    /// std RwLock: held to copy out a chunk range or publish a seal; never across I/O.
    index: RwLock<SnapIndex>,
    /// Serialises the writer (held across its writes); readers never take it.
    writer: Mutex<SnapWriter>,
}

/// Reader-visible state: where sealed chunks end, and whether the snapshot is finished.
struct SnapIndex {
    /// End position (after the `Seal` record) of every sealed chunk; chunk `k` spans
    /// `chunk_ends[k-1]..chunk_ends[k]` (chunk 0 starts after the header).
    chunk_ends: Vec<u64>,
    finished: bool,
    /// Bytes written to the file so far.
    written: u64,
}

struct SnapWriter {
    /// Encoded records of the open chunk, not yet written.
    buf: Vec<u8>,
    write_pos: u64,
    chunker: Chunker,
    finished: bool,
    failed: bool,
}

impl SnapshotFile {
    pub(crate) fn create(
        dir: &Arc<Path>,
        threshold: u64,
        budget: &Arc<FileBudget>,
    ) -> Result<SnapshotFile, StoreError> {
        let file = create_log_file(&dir.join(SNAPSHOT_FILE), SNAPSHOT_MAGIC, threshold)?;
        let index = SnapIndex {
            chunk_ends: Vec::new(),
            finished: false,
            written: LOG_HEADER_LEN as u64,
        };
        Ok(SnapshotFile::assemble(
            LazyFile::new(dir, SNAPSHOT_FILE, file, budget),
            index,
            threshold,
        ))
    }

    /// Opens and recovers. A record is accepted only in sequence: rows; a `Seal` (required
    /// right after a row that reaches the threshold); `Finished` only right after a `Seal`,
    /// and nothing after `Finished`. The file is cut after the last `Seal`/`Finished`.
    pub(crate) fn open(
        dir: &Arc<Path>,
        budget: &Arc<FileBudget>,
    ) -> Result<SnapshotFile, StoreError> {
        let (file, threshold) = open_log_file(&dir.join(SNAPSHOT_FILE), SNAPSHOT_MAGIC)?;
        let mut chunker = Chunker::new(threshold);
        let mut chunk_ends = Vec::new();
        let (mut finished, mut need_seal, mut after_seal) = (false, false, false);
        let mut keep = LOG_HEADER_LEN as u64;
        scan_records(&file, |body, end_pos| {
            let Some((kind, json)) = decode_snapshot_body(body) else {
                return false;
            };
            let ok = match kind {
                _ if finished => false,
                SnapshotKind::Row if need_seal => false,
                SnapshotKind::Row => {
                    need_seal = chunker.add(json.len());
                    true
                }
                SnapshotKind::Seal => {
                    chunker.reset();
                    need_seal = false;
                    chunk_ends.push(end_pos);
                    keep = end_pos;
                    true
                }
                SnapshotKind::Finished if after_seal => {
                    finished = true;
                    keep = end_pos;
                    true
                }
                SnapshotKind::Finished => false,
            };
            after_seal = kind == SnapshotKind::Seal;
            ok
        })?;
        truncate_tail(&file, keep)?;
        let index = SnapIndex {
            chunk_ends,
            finished,
            written: keep,
        };
        drop(file);
        Ok(SnapshotFile::assemble(
            LazyFile::closed(dir, SNAPSHOT_FILE, budget),
            index,
            threshold,
        ))
    }

    fn assemble(file: LazyFile, index: SnapIndex, threshold: u64) -> SnapshotFile {
        let writer = SnapWriter {
            buf: Vec::new(),
            write_pos: index.written,
            chunker: Chunker::new(threshold),
            finished: index.finished,
            failed: false,
        };
        SnapshotFile {
            file,
            index: RwLock::new(index),
            writer: Mutex::new(writer),
        }
    }

    fn writer(&self) -> Result<std::sync::MutexGuard<'_, SnapWriter>, StoreError> {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.failed {
            return Err(StoreError::LogFailed);
        }
        if w.finished {
            return Err(StoreError::SnapshotFinished);
        }
        Ok(w)
    }

    pub(crate) fn append_row(&self, json: &[u8]) -> Result<(), StoreError> {
        let mut w = self.writer()?;
        if !fits(json, 1) {
            return Err(StoreError::EntryTooLarge(json.len()));
        }
        encode_snapshot(&mut w.buf, SnapshotKind::Row, json);
        if w.chunker.add(json.len()) {
            encode_snapshot(&mut w.buf, SnapshotKind::Seal, &[]);
            self.write_out(&mut w, false)?;
        }
        Ok(())
    }

    pub(crate) fn finish(&self, snapshot_end_json: &[u8]) -> Result<(), StoreError> {
        let mut w = self.writer()?;
        if !fits(snapshot_end_json, 1) {
            return Err(StoreError::EntryTooLarge(snapshot_end_json.len()));
        }
        encode_snapshot(&mut w.buf, SnapshotKind::Row, snapshot_end_json);
        encode_snapshot(&mut w.buf, SnapshotKind::Seal, &[]);
        w.chunker.reset();
        self.write_out(&mut w, true)
    }

    /// Writes the buffered chunk (ending in a `Seal`, plus `Finished` if `finish`) and
    /// publishes it. With `finish`, fsyncs first: the finish must be durable before visible.
    fn write_out(&self, w: &mut SnapWriter, finish: bool) -> Result<(), StoreError> {
        let chunk_end = w.write_pos + w.buf.len() as u64;
        if finish {
            encode_snapshot(&mut w.buf, SnapshotKind::Finished, &[]);
        }
        let mut written = self
            .file
            .get()
            .and_then(|file| file.write_all_at(&w.buf, w.write_pos).map(|()| file));
        if finish {
            written = written.and_then(|file| file.sync_data().map(|()| file));
        }
        if let Err(e) = written {
            w.failed = true;
            return Err(e.into());
        }
        w.write_pos += w.buf.len() as u64;
        w.buf.clear();
        if finish {
            // A finished snapshot never writes again: give the buffer back (idle memory, P7).
            w.buf = Vec::new();
        }
        w.finished = finish;
        let mut ix = self.index.write().unwrap_or_else(|e| e.into_inner());
        ix.chunk_ends.push(chunk_end);
        ix.finished = finish;
        ix.written = w.write_pos;
        Ok(())
    }

    fn index_ref(&self) -> std::sync::RwLockReadGuard<'_, SnapIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn state(&self) -> SnapshotState {
        let ix = self.index_ref();
        SnapshotState {
            sealed_chunks: ix.chunk_ends.len() as u64,
            finished: ix.finished,
        }
    }

    /// The rows of sealed chunk `k` (empty if `k` is not sealed).
    pub(crate) fn read_chunk(&self, k: u64) -> Result<Vec<Bytes>, StoreError> {
        let range = {
            let ix = self.index_ref();
            let k = usize::try_from(k).unwrap_or(usize::MAX);
            let start = match k {
                0 => Some(LOG_HEADER_LEN as u64),
                _ => ix.chunk_ends.get(k - 1).copied(),
            };
            start.zip(ix.chunk_ends.get(k).copied())
        };
        let Some((from, to)) = range else {
            return Ok(Vec::new());
        };
        let buf = read_range(&*self.file.get()?, from, to)?;
        let mut rows = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let bad = |what: &str| {
                StoreError::Corrupt(format!("snapshot.log: bad {what} at {}", from + at as u64))
            };
            let (body, len) = parse_frame(&buf[at..], false).map_err(|_| bad("frame"))?;
            let body = at + body.start..at + body.end;
            let (kind, json) =
                decode_snapshot_body(&buf[body.clone()]).ok_or_else(|| bad("record"))?;
            if kind == SnapshotKind::Row {
                rows.push(buf.slice(body.start + json.start..body.start + json.end));
            }
            at += len;
        }
        Ok(rows)
    }

    /// Closes the file handle if it was not used since the last call.
    pub(crate) fn release_if_unused(&self) -> bool {
        self.file.release_if_unused()
    }

    pub(crate) fn is_open(&self) -> bool {
        self.file.is_open()
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.index_ref().written
    }
}

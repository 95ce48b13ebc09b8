//! `commit.wal`: the store-level commit log that makes group commit possible.
//!
//! A commit writes every shape's buffered change records to its `changes.log` **without**
//! fsync, appends one batch (shape id, file position, the same bytes) to this log and fsyncs
//! it **once**: one fsync covers every shape of the batch. The shape files are made durable
//! lazily by a checkpoint (one `syncfs` of the store's filesystem, then the log is reset to its
//! header). Recovery replays the durable batches into the shape files (each entry rewrites the
//! same bytes at the same position, so replaying twice is harmless), syncs, and resets.
//!
//! Failure rules: a failed append leaves the durable end where it was (the file is cut back
//! there before the retry), so nothing of a failed batch is ever taken as committed. A failed
//! checkpoint keeps the log (it still holds every batch since the last good checkpoint) and
//! rewrites the shape files from it before the next attempt: after a failed sync the page
//! cache may have dropped pages that never reached the disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::commit_record::{decode_batch, decode_wal_header, encode_wal_header, WAL_HEADER_LEN};
use crate::error::StoreError;
use crate::file_scan::CHANGES_FILE;
use crate::file_scan::{open_log_file, scan_records, sync_dir};
use crate::file_segments::{file_offset, parse_segment_name, segment_name, FIRST_BASE};
use crate::log::validate_id;
use crate::record::CHANGES_MAGIC;

pub(crate) const WAL_FILE: &str = "commit.wal";
const WAL_TMP: &str = "commit.wal.tmp";

pub(crate) struct CommitLog {
    file: File,
    /// The store directory (shape directories are its children).
    dir: PathBuf,
    /// End of the last durable batch; the next batch is written here.
    end: u64,
    /// A sync of the shape files failed since the log was last reset: rewrite them from the
    /// log before the next checkpoint.
    rewrite: bool,
    /// The last append failed: bytes past `end` may exist and are cut before the next one.
    torn: bool,
}

impl CommitLog {
    /// Opens (or creates) the commit log of the store in `dir`, replays every durable batch
    /// into the shape files, makes them durable and resets the log. Returns the log and the
    /// number of entries replayed.
    pub(crate) fn open(dir: &Path) -> Result<(CommitLog, usize), StoreError> {
        let path = dir.join(WAL_FILE);
        if !path.exists() {
            crate::file_scan::write_atomic(dir, WAL_FILE, WAL_TMP, &encode_wal_header())?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut header = [0u8; WAL_HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| StoreError::Corrupt(format!("{WAL_FILE}: header: {e}")))?;
        let version = decode_wal_header(&header)
            .map_err(|e| StoreError::Corrupt(format!("{WAL_FILE}: {e}")))?;
        let mut log = CommitLog {
            file,
            dir: dir.to_owned(),
            end: WAL_HEADER_LEN as u64,
            rewrite: false,
            torn: false,
        };
        let replayed = log.replay(None)?;
        if replayed > 0 || log.file.metadata()?.len() > WAL_HEADER_LEN as u64 {
            log.checkpoint()?;
        }
        if version < crate::commit_record::WAL_VERSION {
            // An older store, replayed and empty now: from here on it is this version's.
            crate::file_scan::write_atomic(dir, WAL_FILE, WAL_TMP, &encode_wal_header())?;
            log.file = OpenOptions::new().read(true).write(true).open(&path)?;
        }
        Ok((log, replayed))
    }

    /// Bytes of batches since the last reset.
    pub(crate) fn len(&self) -> u64 {
        self.end - WAL_HEADER_LEN as u64
    }

    /// Appends one framed batch and fsyncs it: once this returns Ok, the batch is durable.
    pub(crate) fn append(&mut self, batch: &[u8]) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.end)?;
            self.torn = false;
        }
        let written = self
            .file
            .write_all_at(batch, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.torn = true;
            return Err(e);
        }
        self.end += batch.len() as u64;
        Ok(())
    }

    /// Makes every shape file durable (one `syncfs`) and resets the log to its header.
    pub(crate) fn checkpoint(&mut self) -> Result<(), StoreError> {
        if self.rewrite {
            self.replay(Some(self.end))?;
        }
        let synced = File::open(&self.dir).and_then(|d| Ok(rustix::fs::syncfs(&d)?));
        if let Err(e) = synced {
            self.rewrite = true;
            return Err(e.into());
        }
        self.rewrite = false;
        self.file.set_len(WAL_HEADER_LEN as u64)?;
        self.file.sync_all()?;
        self.end = WAL_HEADER_LEN as u64;
        self.torn = false;
        Ok(())
    }

    /// Writes every durable batch into its shape file: up to `limit` (the durable end, once
    /// the log is open) or, on open, up to the first batch that does not validate. Entries of
    /// shapes that no longer exist are skipped. Returns the number of entries written.
    fn replay(&mut self, limit: Option<u64>) -> Result<usize, StoreError> {
        let mut files: HashMap<String, Option<ShapeSegments>> = HashMap::new();
        // Shapes holding an open segment file: at most `REPLAY_OPEN_FILES` at a time, whatever
        // the number of shapes the log names (a batch may touch 100,000 of them).
        let mut open: Vec<String> = Vec::new();
        let mut failed = None;
        let mut replayed = 0;
        let dir = &self.dir;
        let end = scan_records(&self.file, |body, end_pos| {
            if limit.is_some_and(|l| end_pos > l) {
                return false;
            }
            let Some(entries) = decode_batch(body) else {
                return false;
            };
            for e in entries {
                let Ok(id) = std::str::from_utf8(&body[e.id]) else {
                    continue;
                };
                let file = match files.entry(id.to_owned()) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => match open_changes(dir, id) {
                        Ok(f) => v.insert(f),
                        Err(err) => {
                            failed = Some(err);
                            return false;
                        }
                    },
                };
                let Some(file) = file else { continue };
                let was_open = file.open.is_some();
                if let Err(err) = file.write_at(e.pos, &body[e.bytes]) {
                    failed = Some(err);
                    return false;
                }
                if !was_open {
                    open.push(id.to_owned());
                }
                if open.len() >= REPLAY_OPEN_FILES {
                    for id in open.drain(..) {
                        if let Some(Some(f)) = files.get_mut(&id) {
                            f.open = None;
                        }
                    }
                }
                replayed += 1;
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        self.end = end;
        Ok(replayed)
    }
}

/// Segment files replay keeps open at once (each closed again before more are opened).
const REPLAY_OPEN_FILES: usize = 32;

/// The change segments of one shape being replayed into: their bases, and the one segment
/// file open at a time (a store may hold many shapes of many segments: one descriptor each).
struct ShapeSegments {
    dir: PathBuf,
    /// Bases of the segments, ascending; the first is `FIRST_BASE` (`changes.log`).
    bases: Vec<u64>,
    open: Option<(u64, File)>,
}

impl ShapeSegments {
    /// Writes `bytes` at logical position `pos`, in the segment holding it (a commit-log entry
    /// never spans segments: a batch is written to one). A segment that cannot be opened is an
    /// error: never a silent skip, never a write into another segment.
    fn write_at(&mut self, pos: u64, bytes: &[u8]) -> std::io::Result<()> {
        let i = self.bases.partition_point(|b| *b <= pos).saturating_sub(1);
        let base = self.bases.get(i).copied().unwrap_or(FIRST_BASE);
        if self.open.as_ref().map(|(b, _)| *b) != Some(base) {
            self.open = None;
            let path = self.dir.join(&*segment_name(base));
            let (file, _) = open_log_file(&path, CHANGES_MAGIC)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            self.open = Some((base, file));
        }
        match &self.open {
            Some((_, file)) => file.write_all_at(bytes, file_offset(base, pos)),
            None => Ok(()),
        }
    }
}

/// The change segments of shape `id` if its first one exists with a valid header (anything
/// else is left to `open_all`, which removes incomplete shapes and reports damaged ones).
/// Failing to list the shape's directory is an error.
fn open_changes(dir: &Path, id: &str) -> std::io::Result<Option<ShapeSegments>> {
    if validate_id(id).is_err() {
        return Ok(None);
    }
    let shape = dir.join(id);
    if !shape.join("meta").exists() {
        return Ok(None);
    }
    match open_log_file(&shape.join(CHANGES_FILE), CHANGES_MAGIC) {
        Ok(_) => {}
        // A shape whose first segment is missing or damaged is left to `open_all`; any other
        // failure (out of descriptors, say) is an error: never a silent skip of its entries.
        Err(StoreError::Corrupt(_)) => return Ok(None),
        Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(StoreError::Io(e)) => return Err(e),
        Err(e) => return Err(std::io::Error::other(e.to_string())),
    }
    let mut bases = vec![FIRST_BASE];
    for entry in std::fs::read_dir(&shape)? {
        if let Some(base) = entry?.file_name().to_str().and_then(parse_segment_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(Some(ShapeSegments {
        dir: shape,
        bases,
        open: None,
    }))
}

/// Removes the commit log's leftover temporary file (a crash while creating it).
pub(crate) fn remove_tmp(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(WAL_TMP)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::sync::Arc;

    use crate::file_store::FileStore;
    use crate::log::{ShapeLog, ShapeLogStore, StoreConfig};
    use crate::offset::LogOffset;

    /// After a failed sync the kernel may have dropped dirty pages of the shape files; the next
    /// checkpoint must rewrite them from the commit log before resetting it.
    #[test]
    fn checkpoint_after_a_failed_sync_rewrites_shape_files_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), StoreConfig::default()).unwrap();
        let log = store.create("s", b"m").unwrap();
        log.finish_snapshot(b"{}").unwrap();
        let logs: Vec<Arc<dyn ShapeLog>> = vec![Arc::clone(&log)];
        for tx in 1..=3 {
            log.append_change(LogOffset::new(tx, 0), b"{\"a\":1}")
                .unwrap();
            store.commit(&logs).unwrap();
        }
        // The pages "lost" by the failed sync, and the failure itself.
        OpenOptions::new()
            .write(true)
            .open(dir.path().join("s/changes.log"))
            .unwrap()
            .set_len(18)
            .unwrap();
        store.wal().log.rewrite = true;
        store.checkpoint().unwrap();
        assert_eq!(store.wal().log.len(), 0, "reset");
        drop((log, logs, store));
        let store = FileStore::open(dir.path(), StoreConfig::default()).unwrap();
        let all = store.open_all().unwrap();
        assert_eq!(all[0].2.latest_offset(), LogOffset::new(3, 0));
    }
}

//! File plumbing shared by the two log files: creating and opening a log file with its
//! header, the recovery scan that finds the last valid record, tail truncation, positional
//! range reads, directory fsync, and lazily opened handles (`LazyFile`).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::StoreError;
use crate::open_files::{CachedFile, FileBudget, OpenFile};
use crate::record::{
    decode_log_header, encode_log_header, parse_frame_header, FRAME_HEADER_LEN, LOG_HEADER_LEN,
};

/// The snapshot part's file, and the change part's first segment, in a shape's directory.
pub(crate) const SNAPSHOT_FILE: &str = "snapshot.log";
pub(crate) const CHANGES_FILE: &str = "changes.log";

/// Creates a log file with its header, not yet durable: the store's creation makes the shape's
/// files durable together (`SyncGroup`) before its `meta` exists.
pub(crate) fn create_log_file(path: &Path, magic: [u8; 4], threshold: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all_at(&encode_log_header(magic, threshold), 0)?;
    Ok(file)
}

/// Opens a log file and validates its header; returns the file and its chunk threshold.
pub(crate) fn open_log_file(path: &Path, magic: [u8; 4]) -> Result<(File, u64), StoreError> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut header = [0u8; LOG_HEADER_LEN];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| StoreError::Corrupt(format!("{}: header: {e}", path.display())))?;
    let threshold = decode_log_header(magic, &header)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    Ok((file, threshold))
}

/// Reads records from `LOG_HEADER_LEN` on, calling `visit(body, end_pos)` for every record
/// whose frame and checksum validate; stops at the first record that does not validate or
/// that `visit` rejects (returns false). Returns the end position of the last accepted record.
pub(crate) fn scan_records(
    file: &File,
    mut visit: impl FnMut(&[u8], u64) -> bool,
) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(LOG_HEADER_LEN as u64))?;
    let mut pos = LOG_HEADER_LEN as u64;
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER_LEN];
        if !read_full(&mut reader, &mut header)? {
            return Ok(pos);
        }
        let Ok((len, crc)) = parse_frame_header(header) else {
            return Ok(pos);
        };
        body.resize(len as usize, 0);
        if !read_full(&mut reader, &mut body)? || crc32fast::hash(&body) != crc {
            return Ok(pos);
        }
        let end = pos + (FRAME_HEADER_LEN + body.len()) as u64;
        if !visit(&body, end) {
            return Ok(pos);
        }
        pos = end;
    }
}

/// `read_exact` that reports a short read (end of file) as `false` instead of an error.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Cuts the file at `valid_end` if anything follows it, durably.
pub(crate) fn truncate_tail(file: &File, valid_end: u64) -> io::Result<()> {
    if file.metadata()?.len() > valid_end {
        file.set_len(valid_end)?;
        file.sync_all()?;
    }
    Ok(())
}

/// Reads `[from, to)` with one positional read; entries are then sliced out zero-copy.
pub(crate) fn read_range(file: &File, from: u64, to: u64) -> io::Result<Bytes> {
    let len = usize::try_from(to.saturating_sub(from))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, from)?;
    Ok(Bytes::from(buf))
}

/// fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// A log file's handle, opened on demand through the open-file budget and closed by
/// `release_if_unused` once it has not been used since the previous call (or by the budget's
/// sweep), so idle shapes hold no open files. A handle handed out stays valid while its user
/// holds it (closing only drops the cached reference).
pub(crate) struct LazyFile {
    /// The shape directory, shared by the log's files (a path per file per shape was a good
    /// part of an idle shape's memory), and the file's name in it.
    dir: Arc<Path>,
    name: &'static str,
    slot: CachedFile,
}

impl LazyFile {
    /// Wraps a handle already open (read + write) on `dir/name`.
    pub(crate) fn new(
        dir: &Arc<Path>,
        name: &'static str,
        file: File,
        budget: &Arc<FileBudget>,
    ) -> LazyFile {
        LazyFile {
            dir: Arc::clone(dir),
            name,
            slot: CachedFile::with(budget, 0, file),
        }
    }

    /// A handle on `path` not open yet (opened by the first use): what recovery leaves, so
    /// opening a store of many shapes does not hold two files per shape.
    pub(crate) fn closed(
        dir: &Arc<Path>,
        name: &'static str,
        budget: &Arc<FileBudget>,
    ) -> LazyFile {
        LazyFile {
            dir: Arc::clone(dir),
            name,
            slot: CachedFile::closed(budget),
        }
    }

    pub(crate) fn get(&self) -> io::Result<Arc<OpenFile>> {
        let path = self.dir.join(self.name);
        self.slot.get(
            0,
            || OpenOptions::new().read(true).write(true).open(&path),
            |_| true,
        )
    }

    /// Closes the handle unless it was used since the last call. True if it is closed now.
    pub(crate) fn release_if_unused(&self) -> bool {
        self.slot.release_if_unused()
    }

    pub(crate) fn is_open(&self) -> bool {
        self.slot.is_open()
    }
}

/// Writes `dir/name` atomically: `dir/tmp` + fsync + rename + fsync `dir`.
pub(crate) fn write_atomic(dir: &Path, name: &str, tmp: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(tmp);
    {
        let file = File::create(&tmp)?;
        io::Write::write_all(&mut &file, bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

//! `FileStore`: shape logs on disk, one directory per shape under the store directory.
//!
//! ```text
//! <dir>/<id>/meta          opaque metadata (written last, atomically: its presence and
//!                          validity mean the shape was fully created)
//! <dir>/<id>/snapshot.log  snapshot part
//! <dir>/<id>/changes.log   change part
//! ```
//! `create` makes the directory and both log files, fsyncs them, then writes `meta` with
//! tmp + fsync + rename + fsync dir. `open_all` removes directories without a valid `meta`
//! (a crash during create) and leftover `*.tmp` files, and recovers every log.
//!
//! `commit` is the group commit of the change parts of many logs through the store's
//! commit log (`commit_log`): one write and one fsync per batch, whatever the number of
//! shapes. The shape files get the bytes afterwards, from the store's writeback
//! (`writeback`).

use std::collections::HashSet;
use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::commit_log::{self, CommitLog};
use crate::commit_record::BatchBuilder;
use crate::error::StoreError;
use crate::file_changes::{parse_compacted_name, Staged};
use crate::file_log::FileLog;
use crate::file_scan::sync_dir;
use crate::file_segments::parse_segment_name;
use crate::log::{
    validate_id, CommitStats, OpenedLog, PreparedCommit, ShapeLog, ShapeLogStore, StoreConfig,
};
use crate::offset::LogOffset;
use crate::open_files::FileBudget;
use crate::record::{decode_meta, encode_meta};
use crate::sync_group::SyncGroup;
use crate::writeback::Writeback;

const META_FILE: &str = "meta";
const META_TMP: &str = "meta.tmp";
const TMP_SUFFIX: &str = ".tmp";

/// A [`ShapeLogStore`] on the local filesystem.
pub struct FileStore {
    dir: PathBuf,
    cfg: StoreConfig,
    /// std Mutex: held by `commit` across its writes and the fsync (blocking callers only;
    /// commits are serialised anyway, one writer per store).
    wal: Mutex<WalState>,
    /// Open log files are counted against this budget (shared by the process's stores).
    budget: Arc<FileBudget>,
    /// Writes committed bytes to the shape files behind the commit log.
    writeback: Writeback,
    /// Concurrent creations share their syncs.
    syncs: SyncGroup,
}

pub(crate) struct WalState {
    pub(crate) log: CommitLog,
    /// Ids removed since the last checkpoint: the commit log may still name them, so
    /// re-creating one of them checkpoints first (a replay must never reach a new log).
    removed: HashSet<String>,
    stats: CommitStats,
    /// The last batch's buffer, reused by the next one.
    scratch: Vec<u8>,
}

/// A batch buffer larger than this is not kept for the next batch.
const SCRATCH_KEEP: usize = 16 << 20;

impl WalState {
    fn batch(&mut self) -> BatchBuilder {
        BatchBuilder::reusing(std::mem::take(&mut self.scratch))
    }

    /// Appends `batch` (unless empty) with one fsync and keeps its buffer; its byte count.
    fn append(&mut self, mut batch: BatchBuilder) -> Result<u64, StoreError> {
        let bytes = batch.len() as u64;
        if !batch.is_empty() {
            self.log.append(batch.finish())?;
            self.stats.batches += 1;
            self.stats.wal_fsyncs += 1;
        }
        let buf = batch.into_buffer();
        if buf.capacity() <= SCRATCH_KEEP {
            self.scratch = buf;
        }
        Ok(bytes)
    }

    /// A log committed to after its removal: its files are gone, so its bytes are written
    /// nowhere (replay skips ids without a directory).
    fn unless_removed(&self, log: &FileLog) {
        if self.removed.contains(log.id()) {
            log.changes().kill();
        }
    }
}

/// Reset the commit log once it holds this many bytes of batches.
const CHECKPOINT_BYTES: u64 = 64 << 20;

impl FileStore {
    /// Opens (creating if needed) the store directory, with an open-file budget of its own
    /// ([`FileBudget::for_process`]). Logs are opened by `open_all`.
    pub fn open(dir: impl Into<PathBuf>, cfg: StoreConfig) -> Result<FileStore, StoreError> {
        FileStore::open_with_budget(dir, cfg, FileBudget::for_process())
    }

    /// [`FileStore::open`] with the open-file budget shared by the process's stores.
    pub fn open_with_budget(
        dir: impl Into<PathBuf>,
        cfg: StoreConfig,
        budget: Arc<FileBudget>,
    ) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        commit_log::remove_tmp(&dir)?;
        let (log, replayed) = CommitLog::open(&dir)?;
        let stats = CommitStats {
            replayed_entries: replayed as u64,
            ..CommitStats::default()
        };
        let wal = Mutex::new(WalState {
            log,
            removed: HashSet::new(),
            stats,
            scratch: Vec::new(),
        });
        let syncs = SyncGroup::open(&dir)?;
        Ok(FileStore {
            dir,
            cfg,
            wal,
            budget,
            writeback: Writeback::start(),
            syncs,
        })
    }

    /// After a commit: its logs' bytes go to the writeback, and the commit log is checkpointed
    /// once full. The batch is durable in the commit log whatever happens here; a failed
    /// checkpoint is retried at the next one (counted in the stats).
    fn written_behind(&self, wal: &mut WalState, behind: Vec<Arc<dyn ShapeLog>>, bytes: u64) {
        self.writeback.queue(behind, bytes);
        if wal.log.len() >= CHECKPOINT_BYTES {
            let _ = checkpoint(wal, &self.writeback);
        }
    }

    /// Counters of the group commit path (for benches and metrics).
    pub fn commit_stats(&self) -> CommitStats {
        let (passes, failures) = self.writeback.stats();
        CommitStats {
            writeback_passes: passes,
            writeback_failures: failures,
            ..self.wal().stats
        }
    }

    pub(crate) fn wal(&self) -> MutexGuard<'_, WalState> {
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every shape file durable and resets the commit log.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let mut wal = self.wal();
        checkpoint(&mut wal, &self.writeback)
    }

    /// The open-file budget its logs count against.
    pub fn budget(&self) -> &Arc<FileBudget> {
        &self.budget
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shape's files, then its `meta` (what makes it exist): the log files, `meta.tmp` and
    /// the directories are made durable together, then `meta.tmp` is renamed and that is made
    /// durable, each time by one `syncfs` shared with the creations running at the same moment
    /// (`SyncGroup`): a crash leaves either no `meta` (the directory is removed on open) or a
    /// shape whose files are whole.
    fn create_in(&self, id: &str, path: &Path, meta: &[u8]) -> Result<FileLog, StoreError> {
        let log = FileLog::create(id, path, self.cfg.chunk_bytes_threshold, &self.budget)?;
        fs::write(path.join(META_TMP), encode_meta(meta))?;
        self.syncs.sync()?;
        fs::rename(path.join(META_TMP), path.join(META_FILE))?;
        self.syncs.sync()?;
        Ok(log)
    }

    /// Opens one shape directory; `None` if it has no valid meta (then it is removed).
    fn open_one(&self, id: &str, path: &Path) -> Result<Option<(Vec<u8>, FileLog)>, StoreError> {
        let (segments, compacted) = scan_shape_dir(path)?;
        let meta = match fs::read(path.join(META_FILE)) {
            Ok(bytes) => decode_meta(&bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let Some(meta) = meta else {
            fs::remove_dir_all(path)?;
            return Ok(None);
        };
        Ok(Some((
            meta,
            FileLog::open(id, path, segments, compacted, &self.budget)?,
        )))
    }
}

impl ShapeLogStore for FileStore {
    fn create(&self, id: &str, meta: &[u8]) -> Result<Arc<dyn ShapeLog>, StoreError> {
        validate_id(id)?;
        {
            let mut wal = self.wal();
            if wal.removed.contains(id) {
                checkpoint(&mut wal, &self.writeback)?;
            }
        }
        let path = self.dir.join(id);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StoreError::AlreadyExists(id.to_owned()))
            }
            Err(e) => return Err(e.into()),
        }
        match self.create_in(id, &path, meta) {
            Ok(log) => Ok(Arc::new(log)),
            Err(e) => {
                // Best effort: without a meta file, open_all would remove it anyway.
                let _ = fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }

    fn open_all(&self) -> Result<Vec<OpenedLog>, StoreError> {
        let mut out = Vec::new();
        let mut removed = false;
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let file_type = entry.file_type()?;
            if file_type.is_file() && name.ends_with(TMP_SUFFIX) {
                fs::remove_file(&path)?;
                removed = true;
                continue;
            }
            if !file_type.is_dir() || validate_id(&name).is_err() {
                continue; // not ours: leave it alone
            }
            dirs.push((name, path));
        }
        // Recovery reads every log: spread the shapes over the cores (restart time, P11).
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            .min(dirs.len().max(1));
        let results: Vec<Result<Vec<_>, StoreError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let dirs = &dirs;
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for (name, path) in dirs.iter().skip(t).step_by(threads) {
                            mine.push((name.clone(), self.open_one(name, path)?));
                        }
                        Ok(mine)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(StoreError::Corrupt("a recovery thread panicked".into()))
                    })
                })
                .collect()
        });
        for result in results {
            for (name, opened) in result? {
                match opened {
                    Some((meta, log)) => out.push((name, meta, Arc::new(log) as Arc<dyn ShapeLog>)),
                    None => removed = true,
                }
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn commit(&self, logs: &[Arc<dyn ShapeLog>]) -> Result<(), StoreError> {
        let mut wal = self.wal();
        let mut batch = wal.batch();
        let mut staged = Vec::with_capacity(logs.len());
        for (i, log) in logs.iter().enumerate() {
            let log = FileLog::of(log).ok_or(StoreError::ForeignLog)?;
            match log
                .changes()
                .stage(|pos, bytes| batch.entry(log.id(), pos, bytes))?
            {
                Staged::Nothing => {}
                Staged::Logged(len) => staged.push((i, len, false)),
                Staged::Synced(len) => {
                    wal.stats.log_fsyncs += 1;
                    staged.push((i, len, true));
                }
            }
        }
        if staged.is_empty() {
            return Ok(());
        }
        let batch_bytes = wal.append(batch)?;
        let mut behind = Vec::new();
        for (i, len, written) in staged {
            let Some(log) = FileLog::of(&logs[i]) else {
                continue;
            };
            wal.unless_removed(log);
            if log.changes().publish(len, written)? {
                behind.push(Arc::clone(&logs[i]));
            }
        }
        self.written_behind(&mut wal, behind, batch_bytes);
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        FileStore::checkpoint(self)
    }

    fn prepare_commit(
        &self,
        logs: &[Arc<dyn ShapeLog>],
    ) -> Result<Option<PreparedCommit>, StoreError> {
        let mut prepared = PreparedCommit { logs: Vec::new() };
        for log in logs {
            let file_log = FileLog::of(log).ok_or(StoreError::ForeignLog)?;
            match file_log.changes().prepare() {
                Ok(true) => prepared.logs.push(Arc::clone(log)),
                Ok(false) => {}
                // Spilled (or already in flight): the classic commit, once `prepared` has
                // given back what it took (its drop).
                Err(_) => return Ok(None),
            }
        }
        Ok(Some(prepared))
    }

    fn run_prepared(&self, mut prepared: PreparedCommit) -> Result<(), StoreError> {
        if prepared.logs.is_empty() {
            return Ok(());
        }
        let mut wal = self.wal();
        let mut batch = wal.batch();
        for log in &prepared.logs {
            let file_log = FileLog::of(log).ok_or(StoreError::ForeignLog)?;
            // On error `prepared` is dropped: every log gets its changes back.
            file_log
                .changes()
                .stage_prepared(|pos, bytes| batch.entry(file_log.id(), pos, bytes))?;
        }
        let batch_bytes = wal.append(batch)?;
        let mut behind = Vec::new();
        for log in &prepared.logs {
            let Some(file_log) = FileLog::of(log) else {
                continue;
            };
            wal.unless_removed(file_log);
            if file_log.changes().publish_prepared()? {
                behind.push(Arc::clone(log));
            }
        }
        // Run: nothing to give back.
        prepared.logs.clear();
        self.written_behind(&mut wal, behind, batch_bytes);
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        validate_id(id)?;
        self.wal().removed.insert(id.to_owned());
        self.writeback.forget(id);
        match fs::remove_dir_all(self.dir.join(id)) {
            Ok(()) => Ok(sync_dir(&self.dir)?),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound(id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }
}

/// Resets the commit log after making every shape file durable: the write-behind tails are
/// written first (the commit log is their only durable copy until then).
fn checkpoint(wal: &mut WalState, writeback: &Writeback) -> Result<(), StoreError> {
    let result = writeback.write_all().and_then(|()| wal.log.checkpoint());
    match &result {
        Ok(()) => {
            wal.stats.checkpoints += 1;
            wal.removed.clear();
        }
        Err(_) => wal.stats.checkpoint_failures += 1,
    }
    result
}

/// Removes leftover `*.tmp` files of an interrupted atomic write from a shape directory, and
/// returns the bases of its later change segments and the chunk ends of its compacted chunk
/// files, ascending (one directory listing for all three).
fn scan_shape_dir(dir: &Path) -> io::Result<(Vec<u64>, Vec<LogOffset>)> {
    let mut segments = Vec::new();
    let mut compacted = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or_default();
        if name.ends_with(TMP_SUFFIX) && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
        } else if let Some(end) = parse_compacted_name(name) {
            compacted.push(end);
        } else if let Some(base) = parse_segment_name(name) {
            segments.push(base);
        }
    }
    segments.sort_unstable();
    compacted.sort_unstable();
    Ok((segments, compacted))
}

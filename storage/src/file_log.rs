//! `FileLog`: one shape's log on disk, `snapshot.log` + `changes.log` in the shape directory.
//!
//! It owns no state of its own: the seek plan is computed from the snapshot state and the
//! change index, and the chosen range is read from the matching file.

use std::path::Path;
use std::sync::Arc;

use crate::error::StoreError;
use crate::file_changes::ChangeFile;
use crate::file_snapshot::SnapshotFile;
use crate::log::{CompactionCandidate, ReadResult, SealedRead, ShapeLog, SnapshotState};
use crate::offset::LogOffset;
use crate::open_files::FileBudget;
use crate::seek::Plan;

pub(crate) struct FileLog {
    /// The shape id (directory name), named in the store's commit log entries.
    id: String,
    snapshot: SnapshotFile,
    changes: ChangeFile,
}

impl FileLog {
    /// Creates both files (headers fsynced). The caller fsyncs the directory.
    pub(crate) fn create(
        id: &str,
        dir: &Path,
        threshold: u64,
        budget: &Arc<FileBudget>,
    ) -> Result<FileLog, StoreError> {
        let shared: Arc<Path> = Arc::from(dir);
        Ok(FileLog {
            id: id.to_owned(),
            snapshot: SnapshotFile::create(&shared, threshold, budget)?,
            changes: ChangeFile::create(&shared, threshold, budget)?,
        })
    }

    /// Opens both parts, truncating torn tails; `segments` and `compacted`: the bases of the
    /// later change segment files and the ends of the compacted chunk files in the directory.
    pub(crate) fn open(
        id: &str,
        dir: &Path,
        segments: Vec<u64>,
        compacted: Vec<LogOffset>,
        budget: &Arc<FileBudget>,
    ) -> Result<FileLog, StoreError> {
        let shared: Arc<Path> = Arc::from(dir);
        Ok(FileLog {
            id: id.to_owned(),
            snapshot: SnapshotFile::open(&shared, budget)?,
            changes: ChangeFile::open(&shared, segments, compacted, budget)?,
        })
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Group commit: see `ChangeFile::stage` and `ChangeFile::publish`.
    pub(crate) fn changes(&self) -> &ChangeFile {
        &self.changes
    }
}

impl FileLog {
    /// `log` as a log of a [`crate::FileStore`], if it is one.
    pub(crate) fn of(log: &Arc<dyn ShapeLog>) -> Option<&FileLog> {
        let any: &dyn std::any::Any = &**log;
        any.downcast_ref::<FileLog>()
    }
}

impl ShapeLog for FileLog {
    fn append_snapshot_row(&self, json: &[u8]) -> Result<(), StoreError> {
        self.snapshot.append_row(json)
    }

    fn finish_snapshot(&self, snapshot_end_json: &[u8]) -> Result<(), StoreError> {
        self.snapshot.finish(snapshot_end_json)
    }

    fn append_change(&self, offset: LogOffset, json: &[u8]) -> Result<(), StoreError> {
        self.changes.append(offset, json)
    }

    fn flush(&self) -> Result<LogOffset, StoreError> {
        self.changes.flush()
    }

    fn discard_unflushed(&self) {
        self.changes.discard_unflushed()
    }

    fn abort_prepared(&self) {
        self.changes.abort_prepared()
    }

    fn release_idle_files(&self) {
        self.snapshot.release_if_unused();
        self.changes.release_if_unused();
    }

    fn open_files(&self) -> usize {
        usize::from(self.snapshot.is_open()) + usize::from(self.changes.is_open())
    }

    fn read(&self, after: LogOffset) -> Result<ReadResult, StoreError> {
        let state = self.snapshot.state();
        Ok(match self.changes.plan(after, &state) {
            Plan::NotReady => ReadResult::NotReady,
            Plan::Snapshot(k) => ReadResult::Chunk {
                entries: self.snapshot.read_chunk(k)?,
                end: LogOffset::snapshot_chunk(k),
                compacted: false,
            },
            Plan::Changes { from, to, end } => {
                let (entries, compacted) = self.changes.read_chunk(from, to, end, Some(after))?;
                ReadResult::Chunk {
                    entries: entries
                        .into_iter()
                        .filter(|(o, _)| *o > after)
                        .map(|(_, json)| json)
                        .collect(),
                    end,
                    compacted,
                }
            }
            Plan::Empty { end } => ReadResult::Chunk {
                entries: Vec::new(),
                end,
                compacted: false,
            },
        })
    }

    fn read_sealed(&self, after: LogOffset) -> Result<Option<SealedRead>, StoreError> {
        let state = self.snapshot.state();
        Ok(match self.changes.plan(after, &state) {
            Plan::Snapshot(k) if state.finished => Some(SealedRead::Snapshot {
                k,
                entries: self.snapshot.read_chunk(k)?,
            }),
            Plan::Changes { from, to, end } if self.changes.is_sealed_end(end) => {
                let (entries, compacted) = self.changes.read_chunk(from, to, end, None)?;
                Some(SealedRead::Changes { entries, compacted })
            }
            _ => None,
        })
    }

    fn compaction_candidate(&self) -> Result<Option<CompactionCandidate>, StoreError> {
        self.changes.compaction_candidate()
    }

    fn visit_compaction_candidate(
        &self,
        scratch: &mut Vec<u8>,
        visit: &mut dyn FnMut(LogOffset, &[u8]),
    ) -> Result<Option<LogOffset>, StoreError> {
        self.changes.visit_compaction_candidate(scratch, visit)
    }

    fn sealed_chunk_start(&self, end: LogOffset) -> Option<LogOffset> {
        self.changes.sealed_chunk_start(end)
    }

    fn has_compaction_candidate(&self) -> bool {
        self.changes.has_compaction_candidate()
    }

    fn store_compacted(
        &self,
        end: LogOffset,
        entries: Option<&[(LogOffset, bytes::Bytes)]>,
    ) -> Result<(), StoreError> {
        self.changes.store_compacted(end, entries)
    }

    fn latest_offset(&self) -> LogOffset {
        self.changes.latest_offset()
    }

    fn snapshot_state(&self) -> SnapshotState {
        self.snapshot.state()
    }

    fn size_bytes(&self) -> u64 {
        self.snapshot.size_bytes() + self.changes.size_bytes()
    }
}

//! The store's contract: the [`ShapeLog`] and [`ShapeLogStore`] traits the server is written
//! against (one contract test suite runs over both implementations), what reads return, the
//! store's settings and counters, and the checks both implementations share.

use std::sync::Arc;

use crate::error::StoreError;
use crate::offset::LogOffset;

/// Store-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Chunk size threshold in bytes of JSON (sum of `len + 1` per entry), protocol.md §3.3.
    /// Stored in each log file header at creation: changing it affects only new logs.
    pub chunk_bytes_threshold: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunk_bytes_threshold: 10 * 1024 * 1024,
        }
    }
}

/// The answer to [`ShapeLog::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// The entries after the requested offset up to and including `end`; each entry is one
    /// stored JSON payload.
    Chunk {
        entries: Vec<bytes::Bytes>,
        end: LogOffset,
        /// The entries come from the chunk's compacted form ([`ShapeLog::store_compacted`]).
        compacted: bool,
    },
    /// The requested snapshot chunk is not sealed yet; the caller waits and retries.
    NotReady,
}

/// Progress of the snapshot part of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotState {
    /// Number of sealed (readable) snapshot chunks.
    pub sealed_chunks: u64,
    /// Whether `finish_snapshot` completed (durably).
    pub finished: bool,
}

/// One shape's log. One writer at a time (callers serialise writes); any number of readers.
/// (`Any` lets a store recognise its own logs in [`ShapeLogStore::commit`].)
pub trait ShapeLog: std::any::Any + Send + Sync {
    /// Appends one snapshot row; seals the chunk when the row makes it reach the threshold.
    /// Sealed chunks are readable but not durable until `finish_snapshot`.
    fn append_snapshot_row(&self, json: &[u8]) -> Result<(), StoreError>;
    /// Appends the `snapshot-end` message to the last chunk, seals it, fsyncs and marks the
    /// snapshot finished (durably).
    fn finish_snapshot(&self, snapshot_end_json: &[u8]) -> Result<(), StoreError>;
    /// Buffers one change at `offset` (strictly increasing, `tx > 0`); invisible until `flush`.
    fn append_change(&self, offset: LogOffset, json: &[u8]) -> Result<(), StoreError>;
    /// Writes and fsyncs buffered changes, then makes them visible. Returns the latest
    /// durable offset.
    fn flush(&self) -> Result<LogOffset, StoreError>;
    /// The seek algorithm of protocol.md §3.2.
    fn read(&self, after: LogOffset) -> Result<ReadResult, StoreError>;
    /// The last durable change offset, or `0_inf` when there is none.
    fn latest_offset(&self) -> LogOffset;
    fn snapshot_state(&self) -> SnapshotState;
    /// Bytes on disk (or in memory) of this log, for metrics.
    fn size_bytes(&self) -> u64;
    /// Drop every change appended since the last successful `flush` (they were never visible):
    /// the writer's state returns to the durable point, so the same offsets can be appended
    /// again (used when the replication stream breaks mid-batch and is replayed).
    fn discard_unflushed(&self);
    /// A prepared group commit holding this log's changes failed or was dropped: the changes go
    /// back in front of those appended since (see [`ShapeLogStore::prepare_commit`]).
    fn abort_prepared(&self) {}
    /// Close the log's open files if they were not used since the previous call (they are
    /// reopened on the next read or write), so idle shapes hold no file descriptors. Called
    /// periodically; cheap when nothing is open.
    fn release_idle_files(&self) {}
    /// Files this log holds open right now.
    fn open_files(&self) -> usize {
        0
    }
    /// The chunk that `read(after)` would return, whole and with each change entry's offset,
    /// if that chunk is sealed (its end boundary is written and durable; a snapshot chunk counts
    /// only once the snapshot is finished). `None` when it is not sealed yet, or when there is
    /// nothing after `after`. Used to copy sealed chunks to the object-store tier.
    fn read_sealed(&self, after: LogOffset) -> Result<Option<SealedRead>, StoreError>;
    /// The oldest sealed change chunk not offered to compaction yet, whole: `(end, entries
    /// with offsets)`. Chunks given to [`ShapeLog::store_compacted`] since the log was opened,
    /// and every chunk up to the last one stored compacted, count as offered.
    fn compaction_candidate(&self) -> Result<Option<CompactionCandidate>, StoreError>;
    /// The same chunk as [`ShapeLog::compaction_candidate`], visited entry by entry without
    /// building anything: read into `scratch` (its capacity is reused), so a caller deciding
    /// whether a chunk is worth compacting allocates nothing per chunk. Returns its end.
    fn visit_compaction_candidate(
        &self,
        scratch: &mut Vec<u8>,
        visit: &mut dyn FnMut(LogOffset, &[u8]),
    ) -> Result<Option<LogOffset>, StoreError>;
    /// The offset after which the sealed change chunk ending at `end` starts (the previous
    /// chunk's end, or `0_inf`); `None` if no sealed chunk ends there. A chunk whose first entry
    /// has the same `tx` as that offset begins inside a transaction.
    fn sealed_chunk_start(&self, end: LogOffset) -> Option<LogOffset>;
    /// Whether [`ShapeLog::compaction_candidate`] has a chunk to offer (cheap: no read).
    fn has_compaction_candidate(&self) -> bool;
    /// Stores `entries` as the compacted form of the sealed change chunk ending at `end`
    /// (durably, before returning): from then on readers of that chunk get them instead of its
    /// entries, with `compacted: true`. `None` leaves the chunk as it is. Either way the chunk
    /// stops being a candidate. `entries` must be a non-empty subset of the chunk's offsets
    /// that keeps its last one; a chunk is compacted at most once.
    fn store_compacted(
        &self,
        end: LogOffset,
        entries: Option<&[(LogOffset, bytes::Bytes)]>,
    ) -> Result<(), StoreError>;
}

/// A sealed change chunk offered to compaction: its end offset and every entry.
pub type CompactionCandidate = (LogOffset, Vec<(LogOffset, bytes::Bytes)>);

/// Checks that `compacted` may replace the sealed chunk `original` (see
/// [`ShapeLog::store_compacted`]).
pub(crate) fn check_compacted(
    original: &[(LogOffset, bytes::Bytes)],
    compacted: &[(LogOffset, bytes::Bytes)],
) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::InvalidCompaction(why.to_owned()));
    if compacted.last().map(|e| e.0) != original.last().map(|e| e.0) {
        return bad("the compacted form must keep the chunk's last offset");
    }
    let mut from = original.iter().map(|e| e.0);
    for (offset, _) in compacted {
        // Offsets strictly increasing and each one the chunk's: one pass over both.
        if !from.any(|o| o == *offset) {
            return bad("offsets must be a subset of the chunk's, in order");
        }
    }
    Ok(())
}

/// A sealed chunk read whole by [`ShapeLog::read_sealed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealedRead {
    /// Snapshot chunk `k` (offset `0_k`) of a finished snapshot.
    Snapshot { k: u64, entries: Vec<bytes::Bytes> },
    /// A sealed change chunk: every entry with its offset; the chunk ends at the last one.
    Changes {
        entries: Vec<(LogOffset, bytes::Bytes)>,
        /// The chunk's compacted form ([`ShapeLog::store_compacted`]).
        compacted: bool,
    },
}

/// One entry of [`ShapeLogStore::open_all`]: `(id, meta, log)`.
pub type OpenedLog = (String, Vec<u8>, Arc<dyn ShapeLog>);

/// A collection of shape logs keyed by shape id.
pub trait ShapeLogStore: Send + Sync {
    /// Creates an empty log for `id` (`[A-Za-z0-9_-]{1,100}`) with opaque `meta` bytes.
    fn create(&self, id: &str, meta: &[u8]) -> Result<Arc<dyn ShapeLog>, StoreError>;
    /// Opens every existing log (crash recovery): `(id, meta, log)` for each.
    fn open_all(&self) -> Result<Vec<OpenedLog>, StoreError>;
    /// Removes a shape's log and all its data.
    fn remove(&self, id: &str) -> Result<(), StoreError>;
    /// Group commit: makes the changes buffered in every log of `logs` (logs of this store)
    /// durable together, with one fsync for the whole batch, then visible (the same as
    /// `flush` on each, at the cost of one flush). On error nothing of the batch became
    /// visible and the same call can be retried (disk full, I/O error).
    fn commit(&self, logs: &[Arc<dyn ShapeLog>]) -> Result<(), StoreError>;
    /// Makes everything committed durable in the logs themselves, so that the next open has
    /// nothing to replay (called on a clean stop). Nothing to do for stores without a commit
    /// log.
    fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Pipelined group commit, step 1 (cheap, no I/O): takes the changes buffered in `logs`
    /// so that the caller can go on appending while [`ShapeLogStore::run_prepared`] makes
    /// exactly these durable. `None`: this store (or one of the logs, e.g. one holding a
    /// transaction too large for memory) commits only the classic way, with `commit`; nothing
    /// was taken then.
    fn prepare_commit(
        &self,
        _logs: &[Arc<dyn ShapeLog>],
    ) -> Result<Option<PreparedCommit>, StoreError> {
        Ok(None)
    }
    /// Step 2 (blocking: one write and one fsync): makes a prepared commit durable, then
    /// visible. On error nothing of it became visible and its changes are back in their logs,
    /// ahead of what was appended since: a `commit` of the same logs retries them.
    fn run_prepared(&self, prepared: PreparedCommit) -> Result<(), StoreError> {
        drop(prepared);
        Ok(())
    }
}

/// A group commit taken by [`ShapeLogStore::prepare_commit`], to be run by the same store's
/// [`ShapeLogStore::run_prepared`].
pub struct PreparedCommit {
    pub(crate) logs: Vec<Arc<dyn ShapeLog>>,
}

impl Drop for PreparedCommit {
    /// Not run to success (failed, or dropped unrun): every log gets its changes back.
    fn drop(&mut self) {
        for log in self.logs.drain(..) {
            log.abort_prepared();
        }
    }
}

impl PreparedCommit {
    /// Logs it holds changes of.
    pub fn len(&self) -> usize {
        self.logs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }
}

/// Counters of a store's group commit path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Batches committed (each one commit-log fsync).
    pub batches: u64,
    /// fsyncs of the commit log.
    pub wal_fsyncs: u64,
    /// fsyncs of a shape's own log at a commit: its pending changes passed the spill
    /// threshold (a large transaction), so they bypass the commit log.
    pub log_fsyncs: u64,
    /// Checkpoints done (each one `syncfs`), and failed.
    pub checkpoints: u64,
    pub checkpoint_failures: u64,
    /// Commit-log entries replayed into shape logs when the store was opened.
    pub replayed_entries: u64,
    /// Passes of the writeback (committed bytes written to the shape files behind the
    /// commit log), and passes where a write failed (retried).
    pub writeback_passes: u64,
    pub writeback_failures: u64,
}

/// Checks a shape id: `[A-Za-z0-9_-]{1,100}` (safe as a directory name).
pub(crate) fn validate_id(id: &str) -> Result<(), StoreError> {
    let ok = (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.to_owned()))
    }
}

/// Checks that `offset` may follow `last` in a change log.
pub(crate) fn check_change_offset(
    offset: LogOffset,
    last: Option<LogOffset>,
) -> Result<(), StoreError> {
    let last = last.unwrap_or(LogOffset::LAST_BEFORE_REAL);
    if offset.tx() == 0 || offset <= last {
        return Err(StoreError::OffsetNotIncreasing { offset, last });
    }
    if offset.op().is_none() {
        return Err(StoreError::InvalidOffset(offset));
    }
    Ok(())
}

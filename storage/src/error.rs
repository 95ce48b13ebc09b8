//! `StoreError`: the one error type of the storage boundary.
//!
//! Callers match on the variants that they can act on (`NotFound`, `AlreadyExists`,
//! `OffsetNotIncreasing`, `LogFailed`); everything else is an internal failure to log.

use crate::offset::LogOffset;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A file is damaged beyond what tail recovery can repair (bad header, bad record in the
    /// middle of a range that was valid before).
    #[error("corrupt shape log: {0}")]
    Corrupt(String),
    /// `append_change` got an offset not strictly above the last one, or with `tx == 0`.
    #[error("change offset {offset} is not greater than the last offset {last}")]
    OffsetNotIncreasing { offset: LogOffset, last: LogOffset },
    /// `append_change` got an offset that cannot be stored (`<tx>_inf`).
    #[error("offset {0} cannot be stored as a change offset")]
    InvalidOffset(LogOffset),
    #[error("shape log {0} already exists")]
    AlreadyExists(String),
    #[error("invalid shape id {0:?}")]
    InvalidId(String),
    #[error("shape log {0} not found")]
    NotFound(String),
    /// A snapshot row or finish after `finish_snapshot`.
    #[error("the snapshot is already finished")]
    SnapshotFinished,
    /// One entry does not fit in a record (length is a u32).
    #[error("entry of {0} bytes is too large")]
    EntryTooLarge(usize),
    /// An earlier write or fsync of this log's **snapshot** part failed: it refuses further
    /// writes and the caller re-creates the shape. (Change writes are retryable instead: a
    /// failed `flush` or `commit` keeps its buffer and is simply called again.)
    #[error("an earlier write to this log failed; the log is read-only")]
    LogFailed,
    /// `store_compacted` was given entries that cannot replace the chunk, or no sealed chunk
    /// ends at the offset, or the chunk is already compacted.
    #[error("invalid compaction: {0}")]
    InvalidCompaction(String),
    /// `commit` was given a log that another store implementation created.
    #[error("commit given a log of another store")]
    ForeignLog,
}

/// A header or object that does not decode (bad magic, checksum, version, length).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub std::borrow::Cow<'static, str>);

impl FormatError {
    pub(crate) fn new(why: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        FormatError(why.into())
    }
}

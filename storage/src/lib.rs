//! shapesync-storage: the append-only shape log store.
//!
//! Every shape has one log with two parts: the **snapshot** part (the initial rows, cut into
//! chunks `0_0`, `0_1`, … and closed by the `snapshot-end` control message) and the **change**
//! part (replicated changes at offsets `<tx>_<op>`, made visible only once durable). Readers
//! follow the seek algorithm of protocol.md §3.2 and get whole chunks back as zero-copy
//! `Bytes` slices. The byte format is documented in `storage/FORMAT.md` (store version 3).
//! Durability: changes of many logs are made durable together by [`ShapeLogStore::commit`]
//! (group commit: one fsync per batch through the store's commit log).
//!
//! Layout (small files, one concept each):
//! - `offset`: [`LogOffset`], its text form and ordering (pure).
//! - `record`: the on-disk codec: file headers, framed records, checksums (pure).
//! - `chunking`: the `(len + 1) >= threshold` chunking rule (pure).
//! - `seek`: the sparse change index and the seek plan shared by both stores (pure).
//! - `error`: [`StoreError`].
//! - `memory_store`: [`MemoryStore`], the in-memory implementation (tests, ephemeral use).
//! - `file_store`: [`FileStore`]: one directory per shape, create / open_all / remove, and
//!   the group commit of many logs.
//! - `commit_record` / `commit_log`: the store's commit log (`commit.wal`): codec (pure) and
//!   I/O (append + one fsync per batch, checkpoint, replay on open).
//! - `writeback`: the thread that writes committed bytes to the shape files behind the
//!   commit log (coalesced per file), and before every checkpoint.
//! - `file_log`: a shape's log on disk, combining `file_snapshot` (`snapshot.log`) and
//!   `file_changes` (the change part: `changes.log` and later segments, whose files and
//!   persisted chunk index are `file_segments`), with `file_scan` for crash recovery and
//!   positional reads. `file_changes` also keeps compacted chunks (`compacted-<end>.chunk`).
//! - `object_tier`: the object-store tier: sealed chunks copied write-once to a bucket with a
//!   numbered manifest per shape, and reads of them by any process sharing the bucket
//!   (`object_tier::codec` is its pure object format).
//!
//! The traits [`ShapeLogStore`] and [`ShapeLog`] are the seam the server is written against;
//! one contract test suite (`tests/integration/contract.rs`) runs over both implementations.

mod chunking;
mod commit_log;
mod commit_record;
mod dir_lock;
mod error;
mod file_changes;
mod file_log;
mod file_scan;
mod file_segments;
mod file_snapshot;
mod file_store;
mod log;
mod memory_store;
pub mod object_tier;
pub mod offset;
mod open_files;
mod record;
mod seek;
mod sync_group;
mod writeback;

pub use dir_lock::{DirLock, DirLockError, LOCK_FILE};
pub use error::StoreError;
pub use file_store::FileStore;
pub use log::{
    CommitStats, CompactionCandidate, OpenedLog, PreparedCommit, ReadResult, SealedRead, ShapeLog,
    ShapeLogStore, SnapshotState, StoreConfig,
};
pub use memory_store::MemoryStore;
pub use offset::{LogOffset, ParseOffsetError};
pub use open_files::{
    budget_for_limit, nofile_limit, raise_nofile_limit, FileBudget, FileBudgetStats,
};

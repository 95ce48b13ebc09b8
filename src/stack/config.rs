//! How a stack is set up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shapesync_storage::FileBudget;

use crate::postgres::connect::SourceDb;
use crate::shape::lifecycle::{CompactionWorker, LifecycleConfig};

/// How a stack is set up.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Subquery shapes write deletes before move-out events.
    pub subquery_move_out_deletes: bool,
    /// The tenant's database id.
    pub id: String,
    pub db: SourceDb,
    /// Replication slot and publication names (see `stack::naming`).
    pub slot: String,
    pub publication: String,
    /// Where this stack's shape logs live (`<dir>/shapes`).
    pub storage_dir: PathBuf,
    pub chunk_bytes: u64,
    /// Initial snapshots that may run at once.
    pub max_snapshots: usize,
    /// How often tables with shapes are checked for drops, renames and column changes.
    pub schema_check: Duration,
    /// Object-store tier, archiving and the shape cap.
    pub lifecycle: LifecycleConfig,
    /// The process's open-file budget, shared by every stack's store.
    pub file_budget: Arc<FileBudget>,
    /// The process's compaction thread, shared by every stack.
    pub compaction: CompactionWorker,
}

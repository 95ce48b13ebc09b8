//! Shapes: a definition (table, where clause, columns, replica, log mode) bound to a live handle
//! and a shape log. The writer appends to the log; HTTP requests read it and wait on
//! [`Progress`], a watch value the writer and snapshotter advance only with durable (or, for
//! snapshot chunks, sealed) data.

pub mod compaction;
pub mod definition;
pub mod filter;
pub mod lifecycle;
pub mod message;
pub mod registry;
pub mod route;
pub mod snapshot;
pub mod subset;
pub mod visibility;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shapesync_storage::{LogOffset, ShapeLog};
use tokio::sync::watch;

use crate::postgres::catalog::{schema_header, TableInfo};
use definition::{ShapeDefinition, ShapeHandle};
use filter::WhereClause;
use message::Encoder;

/// Where a shape's data stands, as readers may see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Latest durable offset of the log.
    pub latest: LogOffset,
    /// Snapshot chunks readable so far.
    pub sealed_chunks: u64,
    pub snapshot_finished: bool,
    pub state: Lifecycle,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lifecycle {
    Active,
    /// Invalidated (deleted, truncated, schema changed): requests answer 409.
    Gone,
    /// The snapshot failed: requests answer 503 and the next one creates it again.
    Failed(Arc<str>),
}

/// A live shape.
pub struct Shape {
    pub handle: ShapeHandle,
    pub def: ShapeDefinition,
    pub table: TableInfo,
    /// Selected columns (indexes into `table.columns`), in table order.
    pub selected: Vec<usize>,
    pub filter: Option<WhereClause>,
    pub encoder: Encoder,
    pub schema_header: String,
    pub log: Arc<dyn ShapeLog>,
    progress: watch::Sender<Progress>,
    /// Unix µs of the latest request for this shape: idle shapes are archived after the local
    /// retention, and the least recently used one is evicted at `--max-shapes`.
    last_used: AtomicU64,
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shape")
            .field("handle", &self.handle)
            .field("def", &self.def)
            .finish()
    }
}

/// What is stored with a shape's log so it can be restored after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShapeMeta {
    pub version: u32,
    pub handle: ShapeHandle,
    pub def: ShapeDefinition,
    pub table: TableInfo,
}

/// A definition checked against its table: what to select and how to filter.
#[derive(Debug)]
pub struct Compiled {
    pub selected: Vec<usize>,
    pub filter: Option<WhereClause>,
}

/// A definition that does not fit its table: (field, message) for the 400 answer.
pub type FieldError = (&'static str, String);

/// Check `def` against `table`.
pub fn compile(def: &ShapeDefinition, table: &TableInfo) -> Result<Compiled, FieldError> {
    let selected = match &def.columns {
        None => (0..table.columns.len()).collect(),
        Some(cols) => {
            let missing: Vec<&str> = cols
                .iter()
                .filter(|c| table.column_index(c).is_none())
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err((
                    "columns",
                    format!(
                        "The following columns are not found on the table: {}",
                        missing.join(", ")
                    ),
                ));
            }
            let mut idx: Vec<usize> = cols.iter().filter_map(|c| table.column_index(c)).collect();
            idx.sort_unstable();
            idx.dedup();
            if table.has_pk {
                let missing_pk: Vec<&str> = table
                    .key
                    .iter()
                    .filter(|k| !idx.contains(k))
                    .map(|&k| table.columns[k].name.as_str())
                    .collect();
                if !missing_pk.is_empty() {
                    return Err((
                        "columns",
                        format!(
                            "The list of columns must include all primary key columns, missing: {}",
                            missing_pk.join(", ")
                        ),
                    ));
                }
            }
            idx
        }
    };
    let filter = match &def.where_clause {
        None => None,
        Some(w) => Some(filter::parse_where(w, table, &def.params).map_err(|e| ("where", e))?),
    };
    Ok(Compiled { selected, filter })
}

impl Shape {
    pub fn new(meta: ShapeMeta, compiled: Compiled, log: Arc<dyn ShapeLog>) -> Arc<Self> {
        let encoder = Encoder::new(&meta.table, &compiled.selected, meta.def.replica);
        let schema_header = schema_header(&meta.table, &compiled.selected);
        let snap = log.snapshot_state();
        let (progress, _) = watch::channel(Progress {
            latest: log.latest_offset(),
            sealed_chunks: snap.sealed_chunks,
            snapshot_finished: snap.finished,
            state: Lifecycle::Active,
        });
        Arc::new(Shape {
            handle: meta.handle,
            def: meta.def,
            table: meta.table,
            selected: compiled.selected,
            filter: compiled.filter,
            encoder,
            schema_header,
            log,
            progress,
            last_used: AtomicU64::new(now_micros()),
        })
    }

    pub fn meta(&self) -> ShapeMeta {
        ShapeMeta {
            version: 1,
            handle: self.handle.clone(),
            def: self.def.clone(),
            table: self.table.clone(),
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Publish what the log now holds (after a flush or a sealed snapshot chunk).
    pub fn publish_log_state(&self) {
        let latest = self.log.latest_offset();
        let snap = self.log.snapshot_state();
        self.progress.send_if_modified(|p| {
            let changed = p.latest != latest
                || p.sealed_chunks != snap.sealed_chunks
                || p.snapshot_finished != snap.finished;
            p.latest = latest;
            p.sealed_chunks = snap.sealed_chunks;
            p.snapshot_finished = snap.finished;
            changed
        });
    }

    pub fn set_state(&self, state: Lifecycle) {
        self.progress.send_modify(|p| p.state = state);
    }

    /// Record a request for this shape (see `last_used`).
    pub fn touch(&self) {
        self.last_used.fetch_max(now_micros(), Ordering::Relaxed);
    }

    /// Unix µs of the latest request.
    pub fn last_used_micros(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Is a request waiting on this shape (a parked long-poll or an SSE stream)?
    pub fn has_waiters(&self) -> bool {
        self.progress.receiver_count() > 0
    }

    pub fn is_active(&self) -> bool {
        self.progress.borrow().state == Lifecycle::Active
    }
}

/// Unix time in µs (0 if the clock is before 1970).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

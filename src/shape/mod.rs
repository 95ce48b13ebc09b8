//! Shapes: a definition (table, where clause, columns, replica, log mode) bound to a live handle
//! and a shape log. The writer appends to the log; HTTP requests read it and wait on
//! [`Progress`], a watch value the writer and snapshotter advance only with durable (or, for
//! snapshot chunks, sealed) data.

pub mod compaction;
pub mod definition;
pub mod deps;
pub mod lifecycle;
pub mod message;
pub mod progress;
pub mod registry;
pub mod route;
pub mod snapshot;
pub mod spill;
pub mod subq;
pub mod subset;
pub mod visibility;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};
use shapesync_storage::{LogOffset, ShapeLog};

use crate::postgres::catalog::schema_header;
use crate::shape::definition::Replica;
use definition::{ShapeDefinition, ShapeHandle};
use message::Encoder;
use shapesync_filter::table::TableInfo;
use shapesync_filter::WhereClause;

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
    /// The where clause raised an error on the table's data (division by zero, overflow…):
    /// requests answer 400 with Postgres' message; retrying cannot help until the data or the
    /// clause changes.
    Rejected(Arc<str>),
}

/// A live shape.
pub struct Shape {
    pub handle: ShapeHandle,
    pub def: ShapeDefinition,
    /// Shared by the shapes of one table description (see `shared_parts`).
    pub table: Arc<TableInfo>,
    /// Selected columns (indexes into `table.columns`), in table order.
    pub selected: Vec<usize>,
    pub filter: Option<WhereClause>,
    /// What a shape whose clause holds subqueries keeps (`subq`).
    pub subq: Option<Arc<subq::Subq>>,
    /// Shared by the shapes selecting the same columns of the same table description.
    pub encoder: Arc<Encoder>,
    pub schema_header: Arc<str>,
    pub log: Arc<dyn ShapeLog>,
    progress: progress::ProgressCell,
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
    /// The tables the where clause's subqueries read, as they were described.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableInfo>,
}

/// A definition checked against its table: what to select and how to filter.
#[derive(Debug)]
pub struct Compiled {
    pub selected: Vec<usize>,
    pub filter: Option<WhereClause>,
    /// The normal form of a clause with subqueries (what its tags number).
    pub dnf: Option<shapesync_filter::Dnf>,
}

/// A definition that does not fit its table: (field, message) for the 400 answer.
pub type FieldError = (&'static str, String);

/// Every name in `cols` is a column of `table`; else the reference's error for `field`.
pub fn columns_exist(
    table: &TableInfo,
    cols: &[String],
    field: &'static str,
) -> Result<(), FieldError> {
    let missing: Vec<&str> = cols
        .iter()
        .filter(|c| table.column_index(c).is_none())
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err((
        field,
        format!(
            "The following columns are not found on the table: {}",
            missing.join(", ")
        ),
    ))
}

/// Check `def` against `table`; its subqueries read `tables`.
pub fn compile(
    def: &ShapeDefinition,
    table: &TableInfo,
    tables: &[Arc<TableInfo>],
) -> Result<Compiled, FieldError> {
    let selected = match &def.columns {
        None => (0..table.columns.len()).collect(),
        Some(cols) => {
            columns_exist(table, cols, "columns")?;
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
    let client = match &def.where_clause {
        None => None,
        Some(w) => Some(
            shapesync_filter::parse_where_in(w, table, &def.params, &tables.to_vec()).map_err(
                |e| match e.kind {
                    shapesync_filter::WhereErrorKind::UnknownTable => ("table", e.to_string()),
                    _ => ("where", e.to_string()),
                },
            )?,
        ),
    };
    // The role's row filter is typed on its own (its claims bound as constants) and joined to
    // the client's clause as a sibling under AND: the two never share a parse.
    let role = match &def.row_filter {
        None => None,
        Some(f) => Some(
            shapesync_filter::parse_where_with(&f.clause, table, f).map_err(|e| {
                // The filter's text is the role's business, not the caller's.
                tracing::warn!(table = %table.quoted_name(), error = %e, "a role's row filter does not apply to a table");
                (
                    "where",
                    "the credential's row filter does not apply to this table (see the server log)"
                        .to_string(),
                )
            })?,
        ),
    };
    // The client's clause is evaluated only on rows the role's filter keeps.
    let filter = match (client, role) {
        (Some(c), Some(r)) => Some(shapesync_filter::WhereClause::guarded(r, c)),
        (c, r) => c.or(r),
    };
    let dnf = match &filter {
        Some(f) if f.has_subqueries() => {
            Some(shapesync_filter::Dnf::of(f.expr()).map_err(|e| ("where", e.to_string()))?)
        }
        _ => None,
    };
    Ok(Compiled {
        selected,
        filter,
        dnf,
    })
}

impl Shape {
    pub fn new(meta: ShapeMeta, compiled: Compiled, log: Arc<dyn ShapeLog>) -> Arc<Self> {
        let (table, encoder, schema_header) =
            shared_parts(meta.table, &compiled.selected, meta.def.replica);
        let snap = log.snapshot_state();
        let subq = match (compiled.dnf, &compiled.filter) {
            (Some(dnf), Some(f)) => Some(Arc::new(subq::Subq::new(
                dnf,
                f.subqueries(),
                meta.handle.to_string(),
                meta.def.log == definition::LogMode::ChangesOnly,
            ))),
            _ => None,
        };
        let progress = progress::ProgressCell::new(Progress {
            latest: log.latest_offset(),
            sealed_chunks: snap.sealed_chunks,
            snapshot_finished: snap.finished,
            state: Lifecycle::Active,
        });
        Arc::new(Shape {
            handle: meta.handle,
            def: meta.def,
            table,
            selected: compiled.selected,
            filter: compiled.filter,
            subq,
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
            table: TableInfo::clone(&self.table),
            tables: self
                .subq
                .iter()
                .flat_map(|s| snapshot::all_subqueries(&s.deps))
                .map(|d| TableInfo::clone(&d.table))
                .collect(),
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress.get()
    }

    pub fn subscribe(self: &Arc<Self>) -> progress::ProgressRx {
        progress::ProgressRx::new(Arc::clone(self))
    }

    /// Publish what the log now holds (after a flush or a sealed snapshot chunk).
    pub fn publish_log_state(&self) {
        // A move-in waiting for its rows: readers are shown nothing past it until they land.
        if self.subq.as_ref().is_some_and(|s| s.is_holding()) {
            return;
        }
        let latest = self.log.latest_offset();
        let snap = self.log.snapshot_state();
        self.progress.update(|p| {
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
        self.progress.update(|p| {
            p.state = state;
            true
        });
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
        self.progress.has_receivers()
    }

    pub fn is_active(&self) -> bool {
        self.progress.get().state == Lifecycle::Active
    }
}

/// Parts of a shape that depend only on its table description, selected columns and replica
/// mode are shared by every live shape with the same ones (thousands of `id = k` shapes on one
/// table then hold one copy): the idle cost of a shape (target P7). Entries hold weak
/// references, so parts go away with their last shape.
type SharedKey = (u32, Vec<usize>, Replica);
type SharedParts = (Weak<TableInfo>, Weak<Encoder>, Weak<str>);

static SHARED: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<SharedKey, Vec<SharedParts>>>,
> = std::sync::LazyLock::new(Default::default);

fn shared_parts(
    table: TableInfo,
    selected: &[usize],
    replica: Replica,
) -> (Arc<TableInfo>, Arc<Encoder>, Arc<str>) {
    let mut map = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let candidates = map
        .entry((table.oid, selected.to_vec(), replica))
        .or_default();
    candidates.retain(|(t, _, _)| t.strong_count() > 0);
    let found = candidates.iter().find_map(|(t, e, h)| {
        let (t, e, h) = (t.upgrade()?, e.upgrade()?, h.upgrade()?);
        (*t == table).then_some((t, e, h))
    });
    let parts = found.unwrap_or_else(|| {
        let encoder = Arc::new(Encoder::new(&table, selected, replica));
        let header: Arc<str> = schema_header(&table, selected).into();
        let table = Arc::new(table);
        candidates.push((
            Arc::downgrade(&table),
            Arc::downgrade(&encoder),
            Arc::downgrade(&header),
        ));
        (table, encoder, header)
    });
    // Keys whose shapes are all gone are dropped now and then.
    if map.len() > 64 && map.len().is_power_of_two() {
        map.retain(|_, c| c.iter().any(|(t, _, _)| t.strong_count() > 0));
    }
    parts
}

/// A table description shared by every holder of an equal one (the tables subqueries read:
/// thousands of shapes over one inner table then hold one copy).
pub fn shared_table(table: TableInfo) -> Arc<TableInfo> {
    static TABLES: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<u32, Vec<Weak<TableInfo>>>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut map = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let held = map.entry(table.oid).or_default();
    held.retain(|t| t.strong_count() > 0);
    if let Some(t) = held.iter().filter_map(Weak::upgrade).find(|t| **t == table) {
        return t;
    }
    let t = Arc::new(table);
    held.push(Arc::downgrade(&t));
    t
}

/// Unix time in µs (0 if the clock is before 1970).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod shared_tests {
    use super::*;
    use shapesync_filter::table::ColumnInfo;

    fn table(oid: u32, second: &str) -> TableInfo {
        let c = |name: &str, pk: Option<usize>| ColumnInfo {
            name: name.into(),
            type_oid: 0,
            type_name: "text".into(),
            dims: 0,
            type_mod: -1,
            not_null: false,
            pk_index: pk,
        };
        TableInfo::new(
            oid,
            "public".into(),
            "items".into(),
            vec![c("id", Some(0)), c(second, None)],
        )
    }

    #[test]
    fn shapes_of_one_table_description_share_their_parts_while_alive() {
        let (t1, e1, h1) = shared_parts(table(9001, "a"), &[0, 1], Replica::Default);
        let (t2, e2, h2) = shared_parts(table(9001, "a"), &[0, 1], Replica::Default);
        assert!(Arc::ptr_eq(&t1, &t2) && Arc::ptr_eq(&e1, &e2) && Arc::ptr_eq(&h1, &h2));
        // Other columns selected, another replica mode, or a changed table: not shared.
        let (_, e3, _) = shared_parts(table(9001, "a"), &[0], Replica::Default);
        assert!(!Arc::ptr_eq(&e1, &e3));
        let (_, e4, _) = shared_parts(table(9001, "a"), &[0, 1], Replica::Full);
        assert!(!Arc::ptr_eq(&e1, &e4));
        let (t5, _, h5) = shared_parts(table(9001, "renamed"), &[0, 1], Replica::Default);
        assert!(!Arc::ptr_eq(&t1, &t5));
        assert_ne!(h1, h5, "the schema header names the new column");
        // Gone with their last holder: a new description is built.
        let weak = Arc::downgrade(&t1);
        drop((t1, e1, h1, t2, e2, h2));
        assert!(weak.upgrade().is_none());
        let (t6, _, _) = shared_parts(table(9001, "a"), &[0, 1], Replica::Default);
        assert_eq!(*t6, table(9001, "a"));
    }
}

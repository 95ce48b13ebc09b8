//! Restoring a stack's shapes on start: every log opened (recovered), each shape rebuilt from its
//! stored metadata on all cores, its snapshot's visibility read back from its `snapshot-end`
//! message; shapes whose snapshot never finished are deleted (their clients get 409).

use std::sync::Arc;

use shapesync_storage::{ReadResult, ShapeLogStore};

use crate::shape::registry::Registry;
use crate::shape::visibility::SnapshotInfo;
use crate::shape::writer::Writer;
use crate::shape::{self, Shape, ShapeMeta};

/// Restore the shapes found on disk; shapes whose snapshot never finished are deleted.
/// Subquery shapes are returned apart: they are brought up to date before the writer routes
/// to them (`reconcile`).
pub(super) async fn restore_shapes(
    store: &Arc<dyn ShapeLogStore>,
    registry: &Registry,
    writer: &mut Writer,
) -> anyhow::Result<(usize, Vec<Arc<Shape>>)> {
    let s = Arc::clone(store);
    // Open every log, then rebuild the shapes (metadata, compiled where clause, snapshot
    // visibility) spread over the cores: restart time grows with the number of shapes (P11).
    let rebuilt = tokio::task::spawn_blocking(move || {
        let opened = s.open_all()?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let chunk = opened.len().div_ceil(threads).max(1);
        let rebuilt: Vec<Vec<Restored>> = std::thread::scope(|scope| {
            let workers: Vec<_> = opened
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().map(rebuild).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        Ok::<_, shapesync_storage::StoreError>(rebuilt)
    })
    .await??;
    let mut restored = 0;
    let mut subquery = Vec::new();
    for r in rebuilt.into_iter().flatten() {
        match r {
            Restored::Shape(shape, _) if shape.subq.is_some() => {
                shape.handle.observe();
                registry.insert(&shape);
                subquery.push(shape);
                restored += 1;
            }
            Restored::Shape(shape, snapshot) => {
                shape.handle.observe();
                registry.insert(&shape);
                writer.restore(shape, snapshot);
                restored += 1;
            }
            Restored::Unusable(id) => {
                tracing::info!(handle = %id, "dropping a shape whose snapshot did not finish");
                let s = Arc::clone(store);
                tokio::task::spawn_blocking(move || s.remove(&id)).await??;
            }
        }
    }
    Ok((restored, subquery))
}

enum Restored {
    Shape(Arc<Shape>, Option<SnapshotInfo>),
    Unusable(String),
}

fn rebuild((id, meta, log): &shapesync_storage::OpenedLog) -> Restored {
    let meta: Option<ShapeMeta> = serde_json::from_slice(meta).ok();
    let usable = meta
        .filter(|_| log.snapshot_state().finished)
        .and_then(|m| {
            let tables: Vec<Arc<shapesync_filter::table::TableInfo>> =
                m.tables.iter().cloned().map(shape::shared_table).collect();
            let compiled = shape::compile(&m.def, &m.table, &tables).ok()?;
            Some(Shape::new(m, compiled, Arc::clone(log)))
        });
    match usable {
        Some(shape) => {
            let snapshot = snapshot_info(&shape);
            Restored::Shape(shape, snapshot)
        }
        None => Restored::Unusable(id.clone()),
    }
}

/// The visibility recorded in a finished snapshot's `snapshot-end` message.
fn snapshot_info(shape: &Shape) -> Option<SnapshotInfo> {
    let chunks = shape.log.snapshot_state().sealed_chunks;
    let after = match chunks {
        0 => return None,
        1 => shapesync_storage::LogOffset::BEFORE_ALL,
        n => shapesync_storage::LogOffset::snapshot_chunk(n - 2),
    };
    let ReadResult::Chunk { entries, .. } = shape.log.read(after).ok()? else {
        return None;
    };
    let end: serde_json::Value = serde_json::from_slice(entries.last()?).ok()?;
    let h = end.get("headers")?;
    let num = |v: &serde_json::Value| v.as_str()?.parse::<u64>().ok();
    Some(SnapshotInfo {
        xmin: num(h.get("xmin")?)?,
        xmax: num(h.get("xmax")?)?,
        xip: h
            .get("xip_list")?
            .as_array()?
            .iter()
            .filter_map(num)
            .collect(),
    })
}

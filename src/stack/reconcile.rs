//! Subquery shapes across a restart: their subqueries' results are not kept on disk, so on
//! start each restored subquery shape is brought up to date in place before replication
//! resumes. Its dependencies are seeded first (the writer keeps them from then on); then the
//! shape's rows are read in a snapshot, compared with what its clients hold (its log replayed
//! as a tag-aware client would), and the difference is appended to its log: deletes, inserts
//! and updates carrying fresh tags and conditions. The shape then skips every transaction that
//! snapshot contains. Its clients keep their handle and offset: no 409.

use std::collections::HashMap;
use std::sync::Arc;

use shapesync_storage::{LogOffset, ReadResult};

use super::pool::SnapshotPool;
use crate::shape::message::Cell;
use crate::shape::subq::{removed, write_tag_headers};
use crate::shape::writer::{Command, Writer};
use crate::shape::Shape;

/// What a client of the shape holds for one key: values of the selected columns, tags,
/// active conditions.
struct Held {
    value: serde_json::Map<String, serde_json::Value>,
    tags: Vec<String>,
    ac: Vec<bool>,
}

/// Bring each restored subquery shape up to date and route to it; a shape that cannot be is
/// removed (its clients get 409).
pub(super) async fn reconcile_all(
    pool: &Arc<SnapshotPool>,
    writer: &mut Writer,
    registry: &crate::shape::registry::Registry,
    shapes: Vec<Arc<Shape>>,
) {
    for shape in shapes {
        match reconcile(pool, writer, registry.store(), &shape).await {
            Ok(changed) => {
                tracing::info!(handle = %shape.handle, changed, "subquery shape brought up to date after the restart")
            }
            Err(e) => {
                tracing::warn!(handle = %shape.handle, error = %format!("{e:#}"), "a subquery shape could not be restored; its clients refetch");
                registry.remove(&shape.handle, crate::shape::Lifecycle::Gone);
            }
        }
    }
}

/// The rows its clients hold, from its log.
fn replay(shape: &Shape) -> anyhow::Result<HashMap<String, Held>> {
    let mut held: HashMap<String, Held> = HashMap::new();
    let mut after = LogOffset::BEFORE_ALL;
    loop {
        let ReadResult::Chunk { entries, end, .. } = shape.log.read(after)? else {
            anyhow::bail!("the snapshot is not complete");
        };
        for e in &entries {
            let m: serde_json::Value = serde_json::from_slice(e)?;
            let h = &m["headers"];
            let strings = |v: &serde_json::Value| -> Vec<String> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let bools = |v: &serde_json::Value| -> Vec<bool> {
                v.as_array()
                    .map(|a| a.iter().filter_map(serde_json::Value::as_bool).collect())
                    .unwrap_or_default()
            };
            if let Some(event) = h["event"].as_str() {
                // As a tag-aware client: flip the matching positions, drop rows left out.
                let on = event == "move-in";
                for p in h["patterns"].as_array().into_iter().flatten() {
                    let (Some(pos), Some(value)) = (p["pos"].as_u64(), p["value"].as_str()) else {
                        continue;
                    };
                    let pos = pos as usize;
                    for r in held.values_mut() {
                        if r.tags.iter().any(|t| t.split('/').nth(pos) == Some(value)) {
                            if let Some(a) = r.ac.get_mut(pos) {
                                *a = on;
                            }
                        }
                    }
                }
                held.retain(|_, r| visible(&r.tags, &r.ac));
                continue;
            }
            let Some(key) = m["key"].as_str() else {
                continue;
            };
            let value = m["value"].as_object().cloned().unwrap_or_default();
            match h["operation"].as_str() {
                Some("insert") => {
                    held.insert(
                        key.to_string(),
                        Held {
                            value,
                            tags: strings(&h["tags"]),
                            ac: bools(&h["active_conditions"]),
                        },
                    );
                }
                Some("update") => {
                    if let Some(r) = held.get_mut(key) {
                        r.value.extend(value);
                        let gone = strings(&h["removed_tags"]);
                        r.tags.retain(|t| !gone.contains(t));
                        for t in strings(&h["tags"]) {
                            if !r.tags.contains(&t) {
                                r.tags.push(t);
                            }
                        }
                        r.ac = bools(&h["active_conditions"]);
                    }
                }
                Some("delete") => {
                    held.remove(key);
                }
                _ => {}
            }
        }
        if end <= after || entries.is_empty() {
            return Ok(held);
        }
        after = end;
    }
}

fn visible(tags: &[String], ac: &[bool]) -> bool {
    tags.iter().any(|t| {
        t.split('/')
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .all(|(p, _)| ac.get(p).copied().unwrap_or(false))
    })
}

/// Cells of a held row's selected values (by column name; others unknown).
fn cells_of<'a>(
    shape: &Shape,
    value: &'a serde_json::Map<String, serde_json::Value>,
) -> Vec<Cell<'a>> {
    shape
        .table
        .columns
        .iter()
        .map(|c| match value.get(&c.name) {
            Some(serde_json::Value::String(s)) => Cell::Text(s.as_bytes()),
            Some(serde_json::Value::Null) => Cell::Null,
            _ => Cell::Unknown,
        })
        .collect()
}

async fn reconcile(
    pool: &Arc<SnapshotPool>,
    writer: &mut Writer,
    store: &Arc<dyn shapesync_storage::ShapeLogStore>,
    shape: &Arc<Shape>,
) -> anyhow::Result<usize> {
    let Some(subq) = shape.subq.clone() else {
        anyhow::bail!("not a subquery shape");
    };
    let conn = pool.get().await?;
    let client = conn.client();
    // The subqueries' tables must still be what the shape was built on.
    for sub in &crate::shape::snapshot::all_subqueries(&subq.deps) {
        let now = crate::postgres::catalog::load_table(client, &sub.table.schema, &sub.table.name)
            .await?;
        let same = now.oid == sub.table.oid
            && now.columns.len() == sub.table.columns.len()
            && now
                .columns
                .iter()
                .zip(&sub.table.columns)
                .all(|(a, b)| a.name == b.name && a.type_oid == b.type_oid);
        anyhow::ensure!(same, "the table {} changed", sub.table.quoted_name());
    }
    // Their results (inner ones first), seeded before the shape's rows are read (so no move
    // is missed between).
    for sub in &crate::shape::snapshot::all_subqueries(&subq.deps) {
        let (done, added) = tokio::sync::oneshot::channel();
        writer.command(Command::AddDep {
            sub: Arc::clone(sub),
            done,
        });
        let (id, _, seed) = added.await?;
        if seed {
            let (info, rows) = crate::shape::snapshot::seed_rows(client, sub).await?;
            writer.command(Command::DepSeeded { id, info, rows });
        }
    }
    let s = Arc::clone(shape);
    let held = tokio::task::spawn_blocking(move || replay(&s)).await??;
    let (info, rows) = crate::shape::snapshot::shape_rows(client, shape).await?;
    conn.release();
    let e = &shape.encoder;
    let ncols = shape.table.columns.len();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    {
        let mut index = subq.index();
        for row in &rows {
            let cells: Vec<Cell<'_>> = row
                .iter()
                .map(|v| match v {
                    Some(b) => Cell::Text(b),
                    None => Cell::Null,
                })
                .collect();
            let (cells, truths) = cells.split_at(ncols.min(cells.len()));
            let ac: Vec<bool> = truths.iter().map(|c| *c == Cell::Text(b"t")).collect();
            let links = subq.links_of(cells);
            let tags = subq.tags(&links);
            let key = e.key(cells);
            let key_text = String::from_utf8_lossy(&key).into_owned();
            seen.insert(key_text.clone());
            let mut json = Vec::with_capacity(256);
            match held.get(&key_text) {
                None => {
                    e.insert_open(&mut json, cells);
                    write_tag_headers(&mut json, &tags, &ac, None);
                }
                Some(h) => {
                    let old = cells_of(shape, &h.value);
                    let gone = removed(&h.tags, &tags);
                    let changed = e.selected_changed(&old, cells)
                        || !gone.is_empty()
                        || h.ac != ac
                        || tags.iter().any(|t| !h.tags.contains(t));
                    if changed {
                        e.update_open(&mut json, &old, cells);
                        write_tag_headers(&mut json, &tags, &ac, Some(&gone));
                    }
                }
            }
            if !json.is_empty() {
                json.extend_from_slice(b"}}");
                out.push(json);
            }
            let pk = shape
                .table
                .key
                .iter()
                .map(|&k| cells.get(k).and_then(|c| c.bytes()).map(<[u8]>::to_vec))
                .collect();
            index.report(&subq, &key, 1, (0, 0), (pk, links, ac));
        }
        index.finish_loading();
    }
    for (key, h) in &held {
        if seen.contains(key) {
            continue;
        }
        let cells = cells_of(shape, &h.value);
        let mut json = Vec::with_capacity(192);
        e.delete_open(&mut json, &cells, &[]);
        write_tag_headers(&mut json, &h.tags, &h.ac, None);
        json.extend_from_slice(b"}}");
        out.push(json);
    }
    let changed = out.len();
    if changed > 0 {
        let last = shape.log.latest_offset();
        let (tx, mut op) = match last.op() {
            Some(o) if !last.is_snapshot() => (last.tx(), o + 1),
            _ => (1, 0),
        };
        let log = Arc::clone(&shape.log);
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || {
            for json in &out {
                log.append_change(LogOffset::new(tx, op), json)?;
                op += 1;
            }
            store.commit(&[log])
        })
        .await??;
    }
    anyhow::ensure!(
        writer.restore_reconciled(Arc::clone(shape), info),
        "the shape's table changed"
    );
    shape.publish_log_state();
    Ok(changed)
}

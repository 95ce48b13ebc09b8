//! Periodic detection of tables that were dropped, renamed or altered while no change to them has
//! streamed. pgoutput only describes a table (a Relation message) before its next change, and says
//! nothing at all when a table is dropped, so without this a shape on a dropped or renamed table
//! would keep answering up-to-date forever. Every interval the stack's tables are looked up by oid;
//! shapes whose table is gone, renamed, moved to another schema, or whose columns or key changed
//! are invalidated, so their clients get 409 and refetch (and learn of the new schema, or get the
//! 400 for a table that no longer exists).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::postgres::catalog::{load_table_by_oid, TableInfo};
use crate::stack::Stack;

/// Why a shape's table no longer matches the catalog, or `None` if it still does.
pub fn table_change(was: &TableInfo, now: Option<&TableInfo>) -> Option<&'static str> {
    let Some(now) = now else {
        return Some("table dropped");
    };
    if was.name != now.name || was.schema != now.schema {
        return Some("table renamed");
    }
    // Names, types, modifiers, nullability and key positions all show in the shape's schema.
    (was.columns != now.columns).then_some("table schema changed")
}

/// Run until the stack stops (or is dropped), checking every `every`.
pub async fn run(stack: Weak<Stack>, every: Duration) {
    let mut shutdown = match stack.upgrade() {
        Some(s) => s.shutdown_signal(),
        None => return,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::stack::stopping(&mut shutdown) => return,
        }
        let Some(stack) = stack.upgrade() else { return };
        if stack.is_stopped() {
            return;
        }
        if let Err(e) = check(&stack).await {
            tracing::debug!(stack = %stack.id, error = %e, "schema check skipped");
        }
    }
}

/// One pass: look up every table that has shapes, invalidate the shapes whose table changed.
pub async fn check(stack: &Arc<Stack>) -> anyhow::Result<usize> {
    let shapes = stack.registry.shapes();
    if shapes.is_empty() {
        return Ok(0);
    }
    let client = stack.admin().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut current: HashMap<u32, Option<TableInfo>> = HashMap::new();
    let mut invalidated = 0;
    for shape in shapes {
        if !shape.is_active() {
            continue;
        }
        let oid = shape.table.oid;
        if let std::collections::hash_map::Entry::Vacant(e) = current.entry(oid) {
            e.insert(load_table_by_oid(&client, oid).await?);
        }
        if let Some(why) = table_change(&shape.table, current[&oid].as_ref()) {
            tracing::info!(stack = %stack.id, handle = %shape.handle, reason = why, "invalidating shape");
            stack.invalidate(&shape.handle);
            invalidated += 1;
        }
    }
    Ok(invalidated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::catalog::ColumnInfo;

    fn col(name: &str, type_oid: u32, pk: Option<usize>) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            type_oid,
            type_name: "int4".into(),
            dims: 0,
            type_mod: -1,
            not_null: pk.is_some(),
            pk_index: pk,
        }
    }

    fn table(name: &str, cols: Vec<ColumnInfo>) -> TableInfo {
        TableInfo::new(42, "public".into(), name.into(), cols)
    }

    #[test]
    fn detects_drop_rename_and_column_changes() {
        let t = table("items", vec![col("id", 23, Some(0)), col("v", 25, None)]);
        assert_eq!(table_change(&t, Some(&t.clone())), None);
        assert_eq!(table_change(&t, None), Some("table dropped"));
        let renamed = table("things", t.columns.clone());
        assert_eq!(table_change(&t, Some(&renamed)), Some("table renamed"));
        let mut moved = t.clone();
        moved.schema = "other".into();
        assert_eq!(table_change(&t, Some(&moved)), Some("table renamed"));
        let added = table(
            "items",
            vec![
                col("id", 23, Some(0)),
                col("v", 25, None),
                col("w", 23, None),
            ],
        );
        assert_eq!(table_change(&t, Some(&added)), Some("table schema changed"));
        let retyped = table("items", vec![col("id", 23, Some(0)), col("v", 20, None)]);
        assert_eq!(
            table_change(&t, Some(&retyped)),
            Some("table schema changed")
        );
        let rekeyed = table("items", vec![col("id", 23, None), col("v", 25, Some(0))]);
        assert_eq!(
            table_change(&t, Some(&rekeyed)),
            Some("table schema changed")
        );
    }
}

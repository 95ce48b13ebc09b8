//! The schema check: every `--schema-check-ms` (and at once when the stream shows a table with
//! shapes without replica identity FULL) it verifies that every shape still describes what
//! Postgres holds and that what shapesync set up is still in place, repairs what it can, and
//! rotates (invalidates: clients get 409 and refetch) the shapes whose changes may have been
//! missed. pgoutput says nothing when a table is dropped, describes a renamed or altered one only
//! before its next change, and simply stops sending a table taken out of the publication, so
//! none of this can be learnt from the stream alone.
//!
//! Per pass, for the tables with shapes:
//! - dropped, renamed, moved, or whose columns or key changed → their shapes rotate;
//! - the publication: gone → the replication session restarts, which creates it and the slot
//!   again and rotates every shape; its options changed (operations published,
//!   `publish_via_partition_root`) → set back, every shape rotated;
//! - the slot gone or its WAL lost → the session restarts (slot created again, shapes rotated);
//! - a table (or the partitioned table above it) no longer in the publication, or published
//!   with a row filter or column list → added back as it was, its shapes rotated;
//! - a table or partition without `REPLICA IDENTITY FULL` → set back (changes that streamed
//!   without the values a shape needed have already rotated that shape, in the writer);
//! - a partitioned table whose leaf partitions changed: one detached or dropped → its shapes
//!   rotate (its rows left without a change); one attached that existed before (so rows came
//!   in without a change), or that received rows before the attach in the attaching
//!   transaction → rotate; one created as a partition → nothing to do (its rows stream as
//!   changes).
//!
//! Every detection and repair is logged at `warn` and counted in `/metrics`
//! (`shapesync_integrity_events_total`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::IntegrityEvent;
use crate::postgres::catalog::{self, load_table_by_oid};
use crate::postgres::publication;
use crate::shape::Shape;
use crate::stack::ctx::StackCtx;
use shapesync_filter::ident::quote_ident;
use shapesync_filter::table::TableInfo;

/// Why a shape's table no longer matches the catalog, or `None` if it still does.
pub fn table_change(was: &TableInfo, now: Option<&TableInfo>) -> Option<&'static str> {
    let Some(now) = now else {
        return Some("table dropped");
    };
    if was.name != now.name || was.schema != now.schema {
        return Some("table renamed");
    }
    if was.partitioned != now.partitioned {
        return Some("table partitioning changed");
    }
    // Names, types, modifiers, nullability and key positions all show in the shape's schema.
    (was.columns != now.columns).then_some("table schema changed")
}

/// What a watch remembers between passes, and across restarts (`partitions.json` in the
/// stack's storage directory): leaf partitions found to have been created as partitions (their
/// rows all stream), with their links, per partitioned table. A shape built before such a
/// partition appeared counts it as its own, so that its later detach or drop rotates the shape.
#[derive(Default)]
pub struct WatchState {
    accepted: BTreeMap<u32, BTreeMap<u32, String>>,
    file: Option<PathBuf>,
}

impl WatchState {
    /// The state saved in `file`, if any (a damaged file is reported and ignored).
    pub fn load(file: PathBuf) -> WatchState {
        let accepted = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "ignoring a damaged partition state file");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        WatchState {
            accepted,
            file: Some(file),
        }
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec(&self.accepted)?;
            let tmp = file.with_extension("json.tmp");
            {
                let f = std::fs::File::create(&tmp)?;
                std::io::Write::write_all(&mut &f, &bytes)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, file)?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(file = %file.display(), error = %e, "saving the partition state failed");
        }
    }
}

/// Run until the stack stops, checking every `every` and when woken.
pub async fn run(stack: Arc<StackCtx>, every: Duration) {
    let mut shutdown = stack.shutdown_signal();
    let mut state = WatchState::load(stack.partitions_file.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stack.check_now.notified() => {}
            _ = crate::stack::status::stopping(&mut shutdown) => return,
        }
        if stack.is_stopped() {
            return;
        }
        if let Err(e) = check(&stack, &mut state).await {
            tracing::warn!(stack = %stack.id, error = %format!("{e:#}"), "schema check failed; retrying at the next one");
        }
    }
}

/// Lock waits of the statements that repair what shapesync set up: `ALTER TABLE … REPLICA
/// IDENTITY` takes an exclusive lock, and must not queue the application's queries behind a
/// long one of its own. A repair that times out is tried again at the next pass.
pub const REPAIR_LOCK_TIMEOUT: &str = "5s";

/// One pass (see the module documentation). Returns how many shapes it rotated. Each check
/// runs on its own (a failing one, e.g. on a table shapesync may not alter, is logged at
/// `warn` and does not turn the others off).
pub async fn check(stack: &StackCtx, state: &mut WatchState) -> anyhow::Result<usize> {
    let mut tables: HashMap<u32, Vec<Arc<Shape>>> = HashMap::new();
    for shape in stack.registry.shapes() {
        if shape.is_active() {
            tables.entry(shape.table.oid).or_default().push(shape);
        }
    }
    if tables.is_empty() {
        return Ok(0);
    }
    let client = stack.admin().await?;
    let mut rotated = 0;
    let mut rotate = |shape: &Shape, why: &str| {
        tracing::warn!(stack = %stack.id, handle = %shape.handle, table = %shape.table.quoted_name(), reason = why, "rotating shape");
        stack.invalidate(&shape.handle);
        rotated += 1;
    };
    // Dropped, renamed, altered.
    let mut gone = Vec::new();
    for (&oid, shapes) in &tables {
        let now = match load_table_by_oid(&client, oid).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(stack = %stack.id, table = %shapes[0].table.quoted_name(), error = %e, "schema check of a table failed");
                continue;
            }
        };
        for shape in shapes {
            if let Some(why) = table_change(&shape.table, now.as_ref()) {
                rotate(shape, why);
            }
        }
        if now.is_none() {
            gone.push(oid);
        }
    }
    for oid in gone {
        tables.remove(&oid);
    }
    if tables.is_empty() {
        return Ok(rotated);
    }
    match verify_publication_and_slot(stack, &client, &tables, &mut rotate).await {
        Ok(true) => {}
        Ok(false) => return Ok(rotated),
        Err(e) => {
            tracing::warn!(stack = %stack.id, error = %format!("{e:#}"), "checking the publication and slot failed")
        }
    }
    verify_replica_identity(stack, &client, &tables).await;
    verify_partitions(stack, &client, &tables, state, &mut rotate).await;
    Ok(rotated)
}

/// The publication, its options, its tables and the slot. False when the replication session
/// was restarted (it sets everything up again and rotates every shape itself).
async fn verify_publication_and_slot(
    stack: &StackCtx,
    client: &tokio_postgres::Client,
    tables: &HashMap<u32, Vec<Arc<Shape>>>,
    rotate: &mut impl FnMut(&Shape, &str),
) -> anyhow::Result<bool> {
    let name = stack.publication.name();
    let row = client
        .query_opt(
            "SELECT oid, pubinsert AND pubupdate AND pubdelete AND pubtruncate AND NOT pubviaroot \
             FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else {
        tracing::warn!(stack = %stack.id, publication = name, "the publication is gone: restarting replication to create it again (every shape is rotated)");
        stack.restart_replication();
        return Ok(false);
    };
    let pub_oid: u32 = row.get(0);
    let options_ok: bool = row.get(1);
    // `wal_status` is read through jsonb so that servers without the column answer too.
    let slot = client
        .query_opt(
            "SELECT coalesce(to_jsonb(s) ->> 'wal_status', '') FROM pg_replication_slots s \
             WHERE slot_name = $1",
            &[&stack.slot],
        )
        .await?;
    let slot_status: Option<String> = slot.map(|r| r.get(0));
    if slot_status.as_deref().is_none_or(|s| s == "lost") {
        tracing::warn!(stack = %stack.id, slot = stack.slot, status = ?slot_status, "the replication slot is gone or lost WAL: restarting replication to create it again (every shape is rotated)");
        stack.restart_replication();
        return Ok(false);
    }
    if !options_ok {
        tracing::warn!(stack = %stack.id, publication = name, "the publication's options were changed: setting them back (publish all operations, not via the partition root); every shape is rotated");
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate', \
                 publish_via_partition_root = false)",
                quote_ident(name)
            ))
            .await?;
        stack
            .stats
            .integrity
            .note(IntegrityEvent::PublicationOptionsRepaired);
        publication::wait_for_running_writers(client, Duration::from_secs(30)).await?;
        for shapes in tables.values() {
            for s in shapes {
                rotate(s, "publication options changed");
            }
        }
        return Ok(true);
    }
    // Membership: each table with shapes (or a partitioned table above it) must be in the
    // publication, without a row filter or column list (read through jsonb: those columns
    // exist from Postgres 15 on).
    let rows = client
        .query(
            "SELECT prrelid, coalesce(to_jsonb(pr) ->> 'prqual', to_jsonb(pr) ->> 'prattrs') \
               IS NOT NULL FROM pg_publication_rel pr WHERE prpubid = $1",
            &[&pub_oid],
        )
        .await?;
    let members: HashMap<u32, bool> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (&oid, shapes) in tables {
        if let Err(e) = verify_member(stack, client, &members, oid, shapes, rotate).await {
            tracing::warn!(stack = %stack.id, table = %shapes[0].table.quoted_name(), error = %format!("{e:#}"), "checking the table's publication failed");
        }
    }
    Ok(true)
}

/// One table with shapes in the publication (see [`verify_publication_and_slot`]).
async fn verify_member(
    stack: &StackCtx,
    client: &tokio_postgres::Client,
    members: &HashMap<u32, bool>,
    oid: u32,
    shapes: &[Arc<Shape>],
    rotate: &mut impl FnMut(&Shape, &str),
) -> anyhow::Result<()> {
    let Some(ancestors) = catalog::partition_ancestors(client, oid).await? else {
        return Ok(()); // dropped meanwhile: the next pass rotates its shapes
    };
    let covering: Vec<u32> = std::iter::once(oid).chain(ancestors).collect();
    let filtered: Vec<u32> = covering
        .iter()
        .copied()
        .filter(|t| members.get(t) == Some(&true))
        .collect();
    let published = covering.iter().any(|t| members.get(t) == Some(&false));
    if published && filtered.is_empty() {
        return Ok(());
    }
    // The table as it is named now (it may have been renamed since the shapes were made).
    let Some(table) = quoted_name(client, oid).await? else {
        return Ok(());
    };
    tracing::warn!(stack = %stack.id, table = %table, filtered = !filtered.is_empty(), "a table with shapes was taken out of the publication (or given a row filter or column list): adding it back; its shapes are rotated (changes made meanwhile were not streamed)");
    // A filtered entry is replaced by a plain one (that covers the table again); else the
    // table itself is added. One simple query: one transaction, rolled back on error.
    let p = quote_ident(stack.publication.name());
    let mut sql = String::new();
    for t in &filtered {
        if let Some(n) = quoted_name(client, *t).await? {
            sql.push_str(&format!(
                "ALTER PUBLICATION {p} DROP TABLE {n};ALTER PUBLICATION {p} ADD TABLE {n};"
            ));
        }
    }
    if filtered.is_empty() {
        sql.push_str(&format!("ALTER PUBLICATION {p} ADD TABLE {table};"));
    }
    client.batch_execute(&sql).await?;
    stack.publication.forget(oid).await;
    stack
        .stats
        .integrity
        .note(IntegrityEvent::PublicationTableReadded);
    // Writers that started before it was back would not be streamed: let them end before
    // the rotated shapes take new snapshots.
    publication::wait_for_running_writers(client, Duration::from_secs(30)).await?;
    for s in shapes {
        rotate(s, "table was taken out of the publication");
    }
    Ok(())
}

/// Tables and partitions with shapes keep `REPLICA IDENTITY FULL`.
async fn verify_replica_identity(
    stack: &StackCtx,
    client: &tokio_postgres::Client,
    tables: &HashMap<u32, Vec<Arc<Shape>>>,
) {
    for (&oid, shapes) in tables {
        let names = match publication::not_full(client, oid).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(stack = %stack.id, table = %shapes[0].table.quoted_name(), error = %e, "checking replica identities failed");
                continue;
            }
        };
        for name in names {
            tracing::warn!(stack = %stack.id, table = %name, "a table with shapes lost REPLICA IDENTITY FULL: setting it back");
            match publication::set_identity_full(client, &name, REPAIR_LOCK_TIMEOUT).await {
                Ok(()) => stack
                    .stats
                    .integrity
                    .note(IntegrityEvent::ReplicaIdentityRepaired),
                Err(e) => {
                    tracing::warn!(stack = %stack.id, table = %name, error = %e, "setting REPLICA IDENTITY FULL failed (retried at the next check); shapes that need values its changes lack are rotated meanwhile")
                }
            }
        }
    }
}

/// Partitioned tables: leaf partitions detached, dropped, attached, or detached and attached
/// again since the shapes' tables were read (or since the partition was accepted).
async fn verify_partitions(
    stack: &StackCtx,
    client: &tokio_postgres::Client,
    tables: &HashMap<u32, Vec<Arc<Shape>>>,
    state: &mut WatchState,
    rotate: &mut impl FnMut(&Shape, &str),
) {
    let mut changed = false;
    for (&oid, shapes) in tables {
        if !shapes[0].table.partitioned {
            continue;
        }
        match verify_partitions_of(stack, client, oid, shapes, state, rotate).await {
            Ok(c) => changed |= c,
            Err(e) => {
                tracing::warn!(stack = %stack.id, table = %shapes[0].table.quoted_name(), error = %format!("{e:#}"), "checking partitions failed")
            }
        }
    }
    // Partitioned tables without shapes any more are forgotten.
    let before = state.accepted.len();
    state.accepted.retain(|oid, _| tables.contains_key(oid));
    if changed || state.accepted.len() != before {
        state.save();
    }
}

/// One partitioned table (see [`verify_partitions`]); true if the accepted set changed.
async fn verify_partitions_of(
    stack: &StackCtx,
    client: &tokio_postgres::Client,
    oid: u32,
    shapes: &[Arc<Shape>],
    state: &mut WatchState,
    rotate: &mut impl FnMut(&Shape, &str),
) -> anyhow::Result<bool> {
    let current: BTreeMap<u32, String> = catalog::leaf_partitions(client, oid)
        .await?
        .into_iter()
        .map(|l| (l.oid, l.link))
        .collect();
    let accepted = state.accepted.entry(oid).or_default();
    let mut decided: BTreeMap<u32, bool> = BTreeMap::new();
    for shape in shapes {
        let mut known: BTreeMap<u32, &str> = shape
            .table
            .leaves
            .iter()
            .map(|l| (l.oid, l.link.as_str()))
            .collect();
        for (leaf, link) in accepted.iter() {
            known.entry(*leaf).or_insert(link.as_str());
        }
        // Gone, or attached anew (detached and attached again between two checks).
        if known
            .iter()
            .any(|(leaf, link)| current.get(leaf).map(String::as_str) != Some(*link))
        {
            stack
                .stats
                .integrity
                .note(IntegrityEvent::PartitionDetached);
            rotate(shape, "a partition was detached, dropped or attached again");
            continue;
        }
        let mut brought_rows = false;
        for &leaf in current.keys().filter(|l| !known.contains_key(l)) {
            let rows = match decided.get(&leaf) {
                Some(&r) => r,
                None => {
                    let r = attached_with_rows(client, oid, leaf).await.unwrap_or(true);
                    decided.insert(leaf, r);
                    r
                }
            };
            brought_rows |= rows;
        }
        if brought_rows {
            stack
                .stats
                .integrity
                .note(IntegrityEvent::PartitionAttached);
            rotate(shape, "a partition with rows of its own was attached");
        }
    }
    // Only now (every shape compared with them) are accepted partitions that are gone or
    // attached anew forgotten.
    let before = accepted.clone();
    accepted.retain(|leaf, link| current.get(leaf) == Some(link));
    for (leaf, rows) in decided {
        if !rows {
            tracing::info!(stack = %stack.id, table_oid = oid, partition_oid = leaf, "a partition was created: its rows stream as changes");
            if let Some(link) = current.get(&leaf) {
                accepted.insert(leaf, link.clone());
            }
        }
    }
    Ok(*accepted != before)
}

/// Could leaf partition `leaf` of `root` hold rows that never streamed as changes of `root`?
/// Yes unless every link between them was created together with its partition (`CREATE TABLE
/// … PARTITION OF`: the partition's row type and its `pg_inherits` entry come from the same
/// transaction; an attached table is older than its link) and no row of the leaf was written
/// before the newest link in the transaction that made it (a table created, filled and
/// attached in one transaction: those rows were not published). Rows written in that
/// transaction after the link streamed, so a partition created and filled in one transaction
/// needs no rotation.
async fn attached_with_rows(
    client: &tokio_postgres::Client,
    root: u32,
    leaf: u32,
) -> anyhow::Result<bool> {
    let row = client
        .query_one(
            "SELECT coalesce(bool_and(i.xmin = t.xmin), false), \
               (array_agg(i.xmin::text ORDER BY age(i.xmin), i.cmin::text::int8 DESC))[1], \
               (array_agg(i.cmin::text::int8 ORDER BY age(i.xmin), i.cmin::text::int8 DESC))[1] \
             FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_type t ON t.oid = c.reltype \
             WHERE i.inhrelid IN (SELECT relid FROM pg_partition_ancestors($1::oid::regclass)) \
               AND i.inhrelid IN (SELECT relid FROM pg_partition_tree($2::oid::regclass)) \
               AND i.inhrelid <> $2",
            &[&leaf, &root],
        )
        .await?;
    let created_as_partitions: bool = row.get(0);
    let plain: bool = client
        .query_one(
            "SELECT coalesce((SELECT relkind = 'r' FROM pg_class WHERE oid = $1), false)",
            &[&leaf],
        )
        .await?
        .get(0);
    if !plain {
        // A foreign table (its changes are not replicated): the shapes rotate, and their
        // next request is refused with the reason.
        return Ok(true);
    }
    let newest: Option<String> = row.get(1);
    let newest_cmin: Option<i64> = row.get(2);
    let (true, Some(newest), Some(newest_cmin)) = (created_as_partitions, newest, newest_cmin)
    else {
        return Ok(true);
    };
    let Some(name) = quoted_name(client, leaf).await? else {
        return Ok(true);
    };
    let row = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM ONLY {name} \
                 WHERE xmin = $1::text::xid AND cmin::text::int8 < $2)"
            ),
            &[&newest, &newest_cmin],
        )
        .await?;
    Ok(row.get(0))
}

/// `"schema"."table"` of a relation, as the server quotes it; `None` if it is gone.
async fn quoted_name(client: &tokio_postgres::Client, oid: u32) -> anyhow::Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await?
        .map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapesync_filter::table::ColumnInfo;

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

//! Creating a shape: the table looked up and the definition checked against it, the table
//! published with `REPLICA IDENTITY FULL`, the log created, the writer told to route changes to
//! the shape (held until the snapshot's visibility is known), then the snapshot started on a
//! pooled connection (ARCHITECTURE.md, "Creating a shape").

use std::sync::Arc;

use shapesync_storage::StoreError;
use tokio::sync::oneshot;

use super::start::Stack;

use super::status::{ShapeError, Status};
use crate::postgres::catalog::{self, CatalogError};
use crate::shape::definition::{ShapeDefinition, ShapeHandle};
use crate::shape::deps::DepStatus;
use crate::shape::lifecycle;
use crate::shape::writer::Command;
use crate::shape::{self, Lifecycle, Shape, ShapeMeta};
use shapesync_filter::table::TableInfo;

impl Stack {
    /// The live shape for `def`, created (with its snapshot started) if there is none.
    pub async fn get_or_create(&self, def: &ShapeDefinition) -> Result<Arc<Shape>, ShapeError> {
        for _ in 0..3 {
            if let Some(s) = self.registry.live(def) {
                return Ok(s);
            }
            let cell = self.registry.cell(def);
            let shape = cell.get_or_try_init(|| self.create(def)).await?;
            if shape.is_active() {
                return Ok(Arc::clone(shape));
            }
            // It was invalidated meanwhile: its cell is gone from the registry; try again.
        }
        Err(ShapeError::NotReady(
            "the shape keeps being invalidated".into(),
        ))
    }

    async fn create(&self, def: &ShapeDefinition) -> Result<Arc<Shape>, ShapeError> {
        if self.status() != Status::Active || self.is_stopped() {
            return Err(ShapeError::NotReady(format!("{:?}", self.status())));
        }
        self.make_room().await;
        let admin = self.admin().await?;
        let locale = match self
            .locale
            .get_or_try_init(|| catalog::load_locale(&admin))
            .await
        {
            Ok(l) => l.clone(),
            Err(e) => return Err(ShapeError::database("reading the database's locale", e)),
        };
        let table = match self
            .load_table(&admin, (&def.schema, &def.table), locale.clone())
            .await
        {
            Ok(t) => t,
            Err(e @ CatalogError::NotFound(_)) => {
                return Err(ShapeError::Invalid("table", e.to_string()))
            }
            Err(CatalogError::Db(e)) => {
                return Err(ShapeError::database(
                    "reading the table from the catalog",
                    e,
                ))
            }
        };
        if table.partitioned {
            let foreign = catalog::unreplicated_partitions(&admin, table.oid)
                .await
                .map_err(|e| ShapeError::database("reading the table's partitions", e))?;
            if !foreign.is_empty() {
                return Err(ShapeError::Invalid(
                    "table",
                    format!(
                        "Table {} has partitions whose changes Postgres does not replicate \
                         (foreign tables: {}); it cannot be synced as a shape.",
                        table.quoted_name(),
                        foreign.join(", ")
                    ),
                ));
            }
        }
        // The tables the clause's subqueries read (one the catalog does not have is reported
        // when the clause is typed).
        let mut tables = Vec::new();
        if let Some(w) = &def.where_clause {
            let names = shapesync_filter::subquery_tables(w)
                .map_err(|e| ShapeError::Invalid("where", e.to_string()))?;
            for n in names {
                match self
                    .load_table(&admin, (&n.schema, &n.name), locale.clone())
                    .await
                {
                    Ok(t) => tables.push(shape::shared_table(t)),
                    Err(CatalogError::NotFound(_)) => {}
                    Err(CatalogError::Db(e)) => {
                        return Err(ShapeError::database("reading a subquery's table", e))
                    }
                }
            }
        }
        let compiled =
            shape::compile(def, &table, &tables).map_err(|(f, m)| ShapeError::Invalid(f, m))?;
        // Every subquery at any depth, inner ones first.
        let subqueries = shape::snapshot::all_subqueries(
            &compiled
                .filter
                .as_ref()
                .map(|f| f.subqueries())
                .unwrap_or_default(),
        );
        for sub in &subqueries {
            if sub.table.partitioned {
                return Err(ShapeError::Invalid(
                    "where",
                    format!(
                        "subqueries over partitioned tables ({}) are not supported yet",
                        sub.table.quoted_name()
                    ),
                ));
            }
        }
        self.publication
            .ensure_table(&admin, &table)
            .await
            .map_err(|e| ShapeError::database("publishing the table", e))?;
        for sub in &subqueries {
            self.publication
                .ensure_table(&admin, &sub.table)
                .await
                .map_err(|e| ShapeError::database("publishing a subquery's table", e))?;
        }
        for sub in &subqueries {
            self.ensure_dep(sub).await?;
        }
        let handle = ShapeHandle::mint(def);
        let meta = ShapeMeta {
            version: 1,
            handle: handle.clone(),
            def: def.clone(),
            table,
            tables: subqueries
                .iter()
                .map(|s| TableInfo::clone(&s.table))
                .collect(),
        };
        let bytes =
            serde_json::to_vec(&meta).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let store = Arc::clone(self.registry.store());
        let id = handle.to_string();
        let log = tokio::task::spawn_blocking(move || store.create(&id, &bytes))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(|e| match e {
                // Disk full or failing: retryable (503 + retry-after), not an internal error.
                StoreError::Io(e) => ShapeError::NotReady(format!("storage not writable: {e}")),
                e => ShapeError::Storage(e),
            })?;
        let shape = Shape::new(meta, compiled, log);
        // Route changes to the shape before its snapshot starts (see shape::visibility).
        let (done, added) = oneshot::channel();
        let sent = self.command(Command::Add {
            shape: Arc::clone(&shape),
            done,
        });
        if !sent {
            return Err(ShapeError::NotReady("replication stopped".into()));
        }
        let added = added
            .await
            .map_err(|_| ShapeError::NotReady("replication stopped".into()))?;
        self.registry.insert(&shape);
        if !added {
            // Older than a shape of the same table described otherwise: its files go, and
            // the request is retried under the newer description.
            self.registry.remove(&shape.handle, Lifecycle::Gone);
            return Err(ShapeError::NotReady(
                "the table changed while the shape was created".into(),
            ));
        }
        self.spawn_snapshot(Arc::clone(&shape));
        tracing::info!(stack = %self.id, handle = %shape.handle, table = %shape.table.quoted_name(), "shape created");
        Ok(shape)
    }

    /// The table of `def` as the catalog describes it now. Creations of shapes of one table
    /// that run at the same time share one load (10,000 shapes of a table created at once
    /// made 10,000 identical loads, one after the other on the admin connection: target P10).
    /// Only a load in flight is shared, and only its success: the first creation after it
    /// ends loads afresh, and a failed load leaves each waiter to load (and fail) on its own.
    async fn load_table(
        &self,
        admin: &tokio_postgres::Client,
        (schema, name): (&str, &str),
        locale: shapesync_filter::table::TextLocale,
    ) -> Result<TableInfo, CatalogError> {
        let key = (schema.to_string(), name.to_string());
        let cell = Arc::clone(
            self.table_loads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.clone())
                .or_default(),
        );
        let loaded = cell
            .get_or_try_init(|| catalog::load_table_in(admin, schema, name, locale))
            .await
            .cloned();
        let mut loads = self.table_loads.lock().unwrap_or_else(|e| e.into_inner());
        if loads.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            loads.remove(&key);
        }
        loaded
    }

    /// Make sure the writer keeps `sub`'s result, seeded and up to date, before a shape
    /// using it is added (the first creation that needs it seeds it; the others wait).
    async fn ensure_dep(&self, sub: &Arc<shapesync_filter::Subquery>) -> Result<(), ShapeError> {
        let stopped = || ShapeError::NotReady("replication stopped".into());
        let (done, added) = oneshot::channel();
        if !self.command(Command::AddDep {
            sub: Arc::clone(sub),
            done,
        }) {
            return Err(stopped());
        }
        let (id, mut status, seed) = added.await.map_err(|_| stopped())?;
        if seed {
            let rows = async {
                let conn = self.snapshot_pool.get().await?;
                match shape::snapshot::seed_rows(conn.client(), sub).await {
                    Ok(r) => {
                        conn.release();
                        Ok(r)
                    }
                    Err(e) => {
                        conn.discard().await;
                        Err(e)
                    }
                }
            }
            .await;
            match rows {
                Ok((info, rows)) => {
                    self.command(Command::DepSeeded { id, info, rows });
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    self.command(Command::DepFailed {
                        id,
                        error: error.clone(),
                    });
                    // The subquery's clause fails on some row: the request's mistake.
                    if let Some(msg) = data_error(&e) {
                        return Err(ShapeError::Invalid("where", msg));
                    }
                    return Err(ShapeError::NotReady(format!(
                        "reading a subquery's rows failed: {error}"
                    )));
                }
            }
        }
        loop {
            let now = status.borrow_and_update().clone();
            match now {
                DepStatus::Ready => return Ok(()),
                DepStatus::Failed(e) => {
                    return Err(ShapeError::NotReady(format!("a subquery's result: {e}")))
                }
                DepStatus::Seeding => {
                    if status.changed().await.is_err() {
                        return Err(stopped());
                    }
                }
            }
        }
    }

    fn spawn_snapshot(&self, shape: Arc<Shape>) {
        let ctx = Arc::clone(self.ctx());
        let registry = Arc::clone(&self.registry);
        let pool = Arc::clone(&self.snapshot_pool);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let handle = shape.handle.clone();
            let result = async {
                let conn = pool.get().await?;
                let rows = shape::snapshot::run(conn.client(), &shape, |info| {
                    ctx.command(Command::SnapshotStarted {
                        handle: handle.clone(),
                        info,
                    });
                })
                .await;
                // Back to the pool only after a clean COMMIT; a failed snapshot's query is
                // cancelled and its connection closed.
                let rows = match rows {
                    Ok(rows) => {
                        conn.release();
                        rows
                    }
                    Err(e) => {
                        conn.discard().await;
                        return Err(e);
                    }
                };
                Ok::<_, anyhow::Error>(rows)
            }
            .await;
            match result {
                Ok(rows) => {
                    tracing::info!(handle = %handle, rows, ms = started.elapsed().as_millis() as u64, "snapshot done")
                }
                Err(e) => {
                    tracing::error!(handle = %handle, error = %format!("{e:#}"), "snapshot failed");
                    ctx.command(Command::Remove {
                        handle: handle.clone(),
                    });
                    let state = match data_error(&e) {
                        Some(msg) => Lifecycle::Rejected(msg.into()),
                        None => Lifecycle::Failed(format!("{e:#}").into()),
                    };
                    registry.remove(&handle, state);
                }
            }
        });
    }

    /// At the shape cap, archive (or, without a tier, remove) the least recently used shapes
    /// so one more fits. The cap is soft under concurrent creations.
    async fn make_room(&self) {
        let Some(max) = self.lifecycle.max_shapes else {
            return;
        };
        while self.registry.len() >= max.max(1) {
            let Some(victim) = self.registry.least_recently_used(None) else {
                return;
            };
            tracing::info!(stack = %self.id, handle = %victim.handle, "evicting the least recently used shape");
            lifecycle::archive(self.ctx(), self.lifecycle.tier.as_ref(), &victim, None).await;
        }
    }
}

/// Postgres' message when `e` is a data exception (SQLSTATE class 22, or 0A000 for a NaN or
/// infinity cast to an integer): it comes from evaluating a where clause on some row, so the
/// request was bad, not the service.
fn data_error(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .filter_map(|pg| pg.as_db_error())
        .find(|db| {
            let code = db.code().code();
            code.starts_with("22") || code == "0A000"
        })
        .map(|db| db.message().to_string())
}

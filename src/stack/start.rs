//! A running stack: everything shapesync keeps for one source database. Starting one opens its
//! shape logs and restores its shapes ([`super::restore`]), then starts its workers: the
//! replication supervisor ([`super::supervisor`]), the schema check and the lifecycle task, each
//! holding only the stack's shared context ([`StackCtx`]). Shape creation is in
//! [`super::create`]. One process can run several stacks (one per tenant), fully independent.

use std::sync::Arc;

use shapesync_storage::{FileStore, ShapeLogStore, StoreConfig};
use tokio::sync::{mpsc, Notify};

use super::config::StackConfig;
use super::ctx::{CtxParts, StackCtx};
use super::pool::SnapshotPool;
use super::restore::restore_shapes;
use super::status::ReplicationStats;
use super::supervisor::replicate;
use crate::lsn::AtomicLsn;
use crate::postgres::connect::SourceDb;
use crate::replication::stream::drop_slot;
use crate::shape::lifecycle::{self, LifecycleConfig};
use crate::shape::registry::Registry;
use crate::shape::writer::Writer;
use crate::shape::Lifecycle;

/// Catalog loads in flight, by (schema, table): a load's result cell, shared by the creations
/// that run while it is loading (`Stack::load_table`).
pub(crate) type TableLoads = std::sync::Mutex<
    std::collections::HashMap<
        (String, String),
        Arc<tokio::sync::OnceCell<shapesync_filter::table::TableInfo>>,
    >,
>;

pub struct Stack {
    ctx: Arc<StackCtx>,
    /// Connections for initial snapshots and subsets (at most `max_snapshots` at once, reused).
    pub snapshot_pool: Arc<SnapshotPool>,
    /// Where subset results larger than memory should hold are spilled (unnamed temp files).
    pub spill_dir: std::path::PathBuf,
    /// The database's locale (collation and character class), loaded once: where clauses
    /// consult it for text ordering and case mapping.
    pub(super) locale: tokio::sync::OnceCell<shapesync_filter::table::TextLocale>,
    /// Catalog loads in flight, by table (see `Stack::load_table`).
    pub(super) table_loads: TableLoads,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub lifecycle: LifecycleConfig,
    /// Final manifests of archived shapes read from the bucket (they never change).
    pub archived_manifests: lifecycle::ArchivedManifests,
    /// The lifecycle task (uploads, archiving, bucket deletions), awaited by `stop`.
    lifecycle_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// `storage_bytes` as last summed, and when.
    storage_bytes: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

/// `storage_bytes` is summed over every shape at most this often (with 100,000 shapes one sum
/// takes tens of milliseconds; a `/metrics` poller could keep a core busy with it).
const STORAGE_BYTES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl std::ops::Deref for Stack {
    type Target = StackCtx;
    fn deref(&self) -> &StackCtx {
        &self.ctx
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stack({}, {})", self.id, self.db.redacted())
    }
}

impl Stack {
    /// Open the stack's shape logs, restore its shapes, and start replication in the background.
    pub async fn start(cfg: StackConfig) -> anyhow::Result<Arc<Stack>> {
        let dir = cfg.storage_dir.join("shapes");
        let store_cfg = StoreConfig {
            chunk_bytes_threshold: cfg.chunk_bytes,
        };
        let budget = Arc::clone(&cfg.file_budget);
        let store: Arc<dyn ShapeLogStore> = Arc::new(
            tokio::task::spawn_blocking(move || {
                FileStore::open_with_budget(dir, store_cfg, budget)
            })
            .await??,
        );
        let (tier_cleanup, deletions) = mpsc::unbounded_channel();
        let registry = Arc::new(match cfg.lifecycle.tier {
            Some(_) => Registry::with_tier_cleanup(Arc::clone(&store), tier_cleanup),
            None => Registry::new(Arc::clone(&store)),
        });
        let global_lsn = Arc::new(AtomicLsn::default());
        let stats = Arc::new(ReplicationStats::new());
        let check_now = Arc::new(Notify::new());
        let mut writer = Writer::new(
            Arc::clone(&registry),
            Arc::clone(&global_lsn),
            Arc::clone(&stats.fsync),
        )
        .with_checks(Arc::clone(&stats.integrity), Arc::clone(&check_now));
        let (move_requests, move_rx) = mpsc::unbounded_channel();
        writer = writer
            .with_move_requests(move_requests)
            .with_move_out_deletes(cfg.subquery_move_out_deletes);
        let (restored, subquery_shapes) = restore_shapes(&store, &registry, &mut writer).await?;
        let snapshot_pool = SnapshotPool::new(cfg.db.clone(), cfg.max_snapshots);
        super::reconcile::reconcile_all(&snapshot_pool, &mut writer, &registry, subquery_shapes)
            .await;
        tracing::info!(stack = %cfg.id, shapes = restored, "shape logs opened");

        let (commands, rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(StackCtx::new(CtxParts {
            id: cfg.id.clone(),
            db: cfg.db.clone(),
            registry,
            stats,
            publication: cfg.publication.clone(),
            slot: cfg.slot.clone(),
            global_lsn,
            partitions_file: cfg.storage_dir.join("partitions.json"),
            check_now,
            commands,
        }));
        let stack = Arc::new(Stack {
            ctx: Arc::clone(&ctx),
            snapshot_pool,
            spill_dir: cfg.storage_dir.clone(),
            locale: tokio::sync::OnceCell::new(),
            table_loads: Default::default(),
            task: std::sync::Mutex::new(None),
            lifecycle: cfg.lifecycle.clone(),
            lifecycle_task: std::sync::Mutex::new(None),
            archived_manifests: lifecycle::ArchivedManifests::new(4096),
            storage_bytes: std::sync::Mutex::new(None),
        });
        tokio::spawn(crate::schema_watch::run(Arc::clone(&ctx), cfg.schema_check));
        tokio::spawn(super::moves::run(
            Arc::clone(&stack.snapshot_pool),
            Arc::clone(&ctx),
            move_rx,
        ));
        let lifecycle_task = tokio::spawn(lifecycle::run(
            Arc::clone(&ctx),
            cfg.lifecycle.clone(),
            deletions,
            cfg.compaction.clone(),
        ));
        *stack
            .lifecycle_task
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(lifecycle_task);
        let task = tokio::spawn(replicate(ctx, cfg, writer, rx));
        *stack.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(stack)
    }

    /// The context its workers share.
    pub fn ctx(&self) -> &Arc<StackCtx> {
        &self.ctx
    }

    /// Stop replication after making complete transactions durable and acknowledged.
    pub async fn stop(&self) {
        self.ctx.begin_shutdown();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let task = self
            .lifecycle_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        // Everything committed into the shape files and synced: the next start replays
        // nothing (best effort: the commit log still holds it all if this fails).
        let store = Arc::clone(self.registry.store());
        match tokio::task::spawn_blocking(move || store.checkpoint()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(stack = %self.id, error = %e, "final checkpoint failed; the next start replays the commit log")
            }
            Err(e) => tracing::warn!(stack = %self.id, error = %e, "final checkpoint task failed"),
        }
    }

    pub fn db(&self) -> &SourceDb {
        &self.ctx.db
    }

    /// Total bytes of the stack's shape logs (summed at most once a second; up to a second
    /// old).
    pub fn storage_bytes(&self) -> u64 {
        let mut last = self.storage_bytes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, bytes)) = *last {
            if at.elapsed() < STORAGE_BYTES_EVERY {
                return bytes;
            }
        }
        let bytes = self
            .registry
            .shapes()
            .iter()
            .map(|s| s.log.size_bytes())
            .sum();
        *last = Some((std::time::Instant::now(), bytes));
        bytes
    }

    /// Remove the stack for good: stop replication, take every shape out of service (parked
    /// requests answer 409), drop the slot and publication so Postgres keeps no WAL for us, and
    /// delete the shape logs. The caller deletes the storage directory.
    pub async fn destroy(&self) -> anyhow::Result<()> {
        // Marked removed first, so woken waiters answer 409 rather than recreating shapes.
        self.ctx.mark_removed();
        for h in self.registry.handles() {
            self.registry.remove(&h, Lifecycle::Gone);
        }
        self.stop().await;
        if let Some(tier) = &self.lifecycle.tier {
            // Archived shapes too: the tenant's whole folder of the bucket.
            if let Err(e) = tier.remove_all().await {
                tracing::warn!(stack = %self.id, error = %e, "deleting the tenant's objects failed");
            }
        }
        let client = self.db.connect().await?;
        // The walsender may take a moment to release the slot after the stream closes.
        drop_slot(&client, &self.slot).await?;
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                shapesync_filter::ident::quote_ident(self.publication.name())
            ))
            .await?;
        Ok(())
    }
}

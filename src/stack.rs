//! A stack: everything shapesync keeps for one source database — its slot and publication, the
//! replication task with its shape log writer, the shape registry and the shape logs on disk.
//! One process can run several stacks (one per tenant), each fully independent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shapesync_storage::{
    FileBudget, FileStore, ReadResult, ShapeLogStore, StoreConfig, StoreError,
};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use crate::metrics::{IntegrityCounters, IntegrityEvent};

use crate::postgres::catalog::{self, CatalogError};
use crate::postgres::connect::SourceDb;
use crate::postgres::publication::Publication;
use crate::replication::stream;
use crate::shape::definition::{ShapeDefinition, ShapeHandle};
use crate::shape::lifecycle::{self, LifecycleConfig};
use crate::shape::registry::Registry;
use crate::shape::visibility::SnapshotInfo;
use crate::shape::writer::{Command, Writer};
use crate::shape::{self, Lifecycle, Shape, ShapeMeta};

/// How a stack is set up.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The tenant's database id.
    pub id: String,
    pub db: SourceDb,
    /// Replication slot and publication names (see [`slot_name`], [`publication_name`]).
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
}

/// Is the stack serving?
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Starting,
    Active,
    /// Replication is down (reconnecting); the text says why.
    Down(String),
    /// Streaming, but the shape logs cannot be written (disk full, I/O error): nothing is
    /// acknowledged, durable data is still served, new shapes are refused with 503 until a
    /// retry of the pending batch succeeds.
    Degraded(String),
}

/// Why a shape could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error("the stack is not ready: {0}")]
    NotReady(String),
    #[error("{0}")]
    Database(String),
    #[error("storage: {0}")]
    Storage(String),
}

pub struct Stack {
    pub id: String,
    db: SourceDb,
    slot: String,
    pub stats: Arc<ReplicationStats>,
    pub registry: Arc<Registry>,
    publication: Publication,
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Sender<Status>,
    /// Latest commit LSN made durable (`global_last_seen_lsn`).
    pub global_lsn: Arc<AtomicU64>,
    /// Connection for catalog lookups and publication changes; reconnected when it breaks.
    admin: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    snapshots: Arc<Semaphore>,
    /// Idle snapshot connections, reused by the next snapshot (at most `max_snapshots`): a
    /// creation storm does not open one Postgres connection per shape.
    snapshot_conns: Arc<std::sync::Mutex<Vec<tokio_postgres::Client>>>,
    max_snapshots: usize,
    /// The database's locale (collation and character class), loaded once: where clauses
    /// consult it for text ordering and case mapping.
    locale: tokio::sync::OnceCell<shapesync_filter::table::TextLocale>,
    shutdown: watch::Sender<bool>,
    /// Set when the tenant is removed.
    removed: std::sync::atomic::AtomicBool,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub lifecycle: LifecycleConfig,
    /// Final manifests of archived shapes read from the bucket (they never change).
    pub archived_manifests: lifecycle::ArchivedManifests,
    /// The lifecycle task (uploads, archiving, bucket deletions), awaited by `stop`.
    lifecycle_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Ends the replication session, which then starts again (setting the publication and
    /// slot up anew): the schema check found them gone or broken.
    restart: Arc<Notify>,
    /// Wakes the schema check at once (a table with shapes streamed without replica identity
    /// FULL).
    pub(crate) check_now: Arc<Notify>,
    /// The database's identity ([`SourceDb::identity`]), once connected.
    identity: std::sync::OnceLock<String>,
    /// Where the schema check keeps what it learnt about partitions.
    partitions_file: PathBuf,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stack({}, {})", self.id, self.db.redacted())
    }
}

/// Replication progress, for health and metrics.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    /// Latest LSN acknowledged to the server.
    pub acked_lsn: AtomicU64,
    /// Latest WAL position the server reported (keepalives).
    pub server_wal_end: AtomicU64,
    /// Unix µs when the last acknowledgement caught up with the server's position.
    pub caught_up_at_micros: AtomicU64,
    /// Flush (fsync batch) latency.
    pub fsync: Arc<crate::metrics::Histogram>,
    /// Sealed change chunks stored compacted, and the bytes of JSON that saved readers.
    pub compacted_chunks: AtomicU64,
    pub compaction_saved_bytes: AtomicU64,
    /// What the integrity checks noticed and repaired.
    pub integrity: Arc<IntegrityCounters>,
}

impl ReplicationStats {
    pub fn new() -> Self {
        ReplicationStats {
            fsync: Arc::new(crate::metrics::Histogram::new(
                crate::metrics::LATENCY_BUCKETS,
            )),
            ..Default::default()
        }
    }

    /// Bytes of WAL the server has that are not acknowledged yet.
    pub fn lag_bytes(&self) -> u64 {
        self.server_wal_end
            .load(Ordering::Relaxed)
            .saturating_sub(self.acked_lsn.load(Ordering::Relaxed))
    }

    /// Seconds since the acknowledged position last caught up with the server (0 when caught up).
    pub fn lag_seconds(&self) -> f64 {
        if self.lag_bytes() == 0 {
            return 0.0;
        }
        let since = self.caught_up_at_micros.load(Ordering::Relaxed);
        if since == 0 {
            return 0.0;
        }
        (now_micros().saturating_sub(since)) as f64 / 1e6
    }

    pub fn acked(&self, lsn: u64) {
        self.acked_lsn.fetch_max(lsn, Ordering::AcqRel);
        if lsn >= self.server_wal_end.load(Ordering::Relaxed) {
            self.caught_up_at_micros
                .store(now_micros(), Ordering::Relaxed);
        }
    }

    pub fn server_at(&self, wal_end: u64) {
        self.server_wal_end.fetch_max(wal_end, Ordering::AcqRel);
        if self.caught_up_at_micros.load(Ordering::Relaxed) == 0 {
            self.caught_up_at_micros
                .store(now_micros(), Ordering::Relaxed);
        }
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The slot of a tenant: `shapesync_slot_<stream id>` for the default tenant, with a hash of
/// the database id appended for the others (slot names are `[a-z0-9_]`, unique per cluster).
pub fn slot_name(stream_id: &str, tenant: Option<&str>) -> String {
    match tenant {
        None => format!("shapesync_slot_{stream_id}"),
        Some(t) => format!("shapesync_slot_{stream_id}_{:016x}", fnv64(t)),
    }
}

/// The publication of a tenant, named like its slot.
pub fn publication_name(stream_id: &str, tenant: Option<&str>) -> String {
    match tenant {
        None => format!("shapesync_pub_{stream_id}"),
        Some(t) => format!("shapesync_pub_{stream_id}_{:016x}", fnv64(t)),
    }
}

fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Check a stream id: 1-40 characters of `[a-z0-9_]`.
pub fn valid_stream_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
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
        let global_lsn = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(ReplicationStats::new());
        let check_now = Arc::new(Notify::new());
        let mut writer = Writer::new(
            Arc::clone(&registry),
            Arc::clone(&global_lsn),
            Arc::clone(&stats.fsync),
        )
        .with_checks(Arc::clone(&stats.integrity), Arc::clone(&check_now));
        let restored = restore_shapes(&store, &registry, &mut writer).await?;
        tracing::info!(stack = %cfg.id, shapes = restored, "shape logs opened");

        let (commands, rx) = mpsc::unbounded_channel();
        let (status, _) = watch::channel(Status::Starting);
        let (shutdown, _) = watch::channel(false);
        let stack = Arc::new(Stack {
            id: cfg.id.clone(),
            db: cfg.db.clone(),
            registry,
            publication: Publication::new(cfg.publication.clone()),
            slot: cfg.slot.clone(),
            stats,
            commands,
            status,
            global_lsn,
            admin: tokio::sync::Mutex::new(None),
            snapshots: Arc::new(Semaphore::new(cfg.max_snapshots.max(1))),
            snapshot_conns: Arc::new(std::sync::Mutex::new(Vec::new())),
            max_snapshots: cfg.max_snapshots.max(1),
            locale: tokio::sync::OnceCell::new(),
            shutdown,
            removed: std::sync::atomic::AtomicBool::new(false),
            task: std::sync::Mutex::new(None),
            lifecycle: cfg.lifecycle.clone(),
            lifecycle_task: std::sync::Mutex::new(None),
            archived_manifests: lifecycle::ArchivedManifests::new(4096),
            restart: Arc::new(Notify::new()),
            check_now,
            identity: std::sync::OnceLock::new(),
            partitions_file: cfg.storage_dir.join("partitions.json"),
        });
        tokio::spawn(crate::schema_watch::run(
            Arc::downgrade(&stack),
            cfg.schema_check,
        ));
        let lifecycle_task = tokio::spawn(lifecycle::run(
            Arc::downgrade(&stack),
            cfg.lifecycle.clone(),
            deletions,
        ));
        *stack
            .lifecycle_task
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(lifecycle_task);
        let task = tokio::spawn(replicate(Arc::clone(&stack), cfg, writer, rx));
        *stack.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(stack)
    }

    /// The stack's publication.
    pub(crate) fn publication(&self) -> &Publication {
        &self.publication
    }

    /// The stack's replication slot.
    pub(crate) fn slot(&self) -> &str {
        &self.slot
    }

    /// End the replication session; the next one sets the publication and slot up anew (and
    /// rotates every shape if either had to be created again).
    pub(crate) fn restart_replication(&self) {
        // Only a session streaming now is ended (no permit is stored for a later one: the
        // schema check asks again if the next session still finds something wrong).
        self.restart.notify_waiters();
    }

    /// The schema check's partition state file (see `schema_watch::WatchState`).
    pub(crate) fn partitions_file(&self) -> PathBuf {
        self.partitions_file.clone()
    }

    /// The database's identity, once it has been reached.
    pub fn identity(&self) -> Option<&str> {
        self.identity.get().map(String::as_str)
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn subscribe_status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Has the stack been stopped (or removed)?
    pub fn is_stopped(&self) -> bool {
        *self.shutdown.borrow() || self.removed.load(Ordering::Acquire)
    }

    /// Resolves when the stack starts shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stop replication after making complete transactions durable and acknowledged.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
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
    }

    pub(crate) async fn admin(&self) -> Result<Arc<tokio_postgres::Client>, ShapeError> {
        let mut admin = self.admin.lock().await;
        if let Some(c) = admin.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        let client = Arc::new(
            self.db
                .connect()
                .await
                .map_err(|e| ShapeError::Database(format!("{e:#}")))?,
        );
        *admin = Some(Arc::clone(&client));
        Ok(client)
    }

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
            Err(e) => return Err(ShapeError::Database(e.to_string())),
        };
        let table = match catalog::load_table_in(&admin, &def.schema, &def.table, locale).await {
            Ok(t) => t,
            Err(e @ CatalogError::NotFound(_)) => {
                return Err(ShapeError::Invalid("table", e.to_string()))
            }
            Err(CatalogError::Db(e)) => return Err(ShapeError::Database(e.to_string())),
        };
        if table.partitioned {
            let foreign = catalog::unreplicated_partitions(&admin, table.oid)
                .await
                .map_err(|e| ShapeError::Database(e.to_string()))?;
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
        let compiled = shape::compile(def, &table).map_err(|(f, m)| ShapeError::Invalid(f, m))?;
        self.publication
            .ensure_table(&admin, &table)
            .await
            .map_err(|e| {
                ShapeError::Database(format!("publishing {}: {e}", table.quoted_name()))
            })?;
        let handle = ShapeHandle::mint(def);
        let meta = ShapeMeta {
            version: 1,
            handle: handle.clone(),
            def: def.clone(),
            table,
        };
        let bytes = serde_json::to_vec(&meta).map_err(|e| ShapeError::Storage(e.to_string()))?;
        let store = Arc::clone(self.registry.store());
        let id = handle.to_string();
        let log = tokio::task::spawn_blocking(move || store.create(&id, &bytes))
            .await
            .map_err(|e| ShapeError::Storage(e.to_string()))?
            .map_err(|e| match e {
                // Disk full or failing: retryable (503 + retry-after), not an internal error.
                StoreError::Io(e) => ShapeError::NotReady(format!("storage not writable: {e}")),
                e => ShapeError::Storage(e.to_string()),
            })?;
        let shape = Shape::new(meta, compiled, log);
        // Route changes to the shape before its snapshot starts (see shape::visibility).
        let (done, added) = oneshot::channel();
        self.commands
            .send(Command::Add {
                shape: Arc::clone(&shape),
                done,
            })
            .map_err(|_| ShapeError::NotReady("replication stopped".into()))?;
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

    fn spawn_snapshot(&self, shape: Arc<Shape>) {
        let db = self.db.clone();
        let commands = self.commands.clone();
        let registry = Arc::clone(&self.registry);
        let permits = Arc::clone(&self.snapshots);
        let pool = Arc::clone(&self.snapshot_conns);
        let max_idle = self.max_snapshots;
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let started = std::time::Instant::now();
            let handle = shape.handle.clone();
            let result = async {
                let idle = {
                    let mut idle = pool.lock().unwrap_or_else(|e| e.into_inner());
                    idle.retain(|c| !c.is_closed());
                    idle.pop()
                };
                let client = match idle {
                    Some(c) => c,
                    None => db.connect().await?,
                };
                let rows = shape::snapshot::run(&client, &shape, |info| {
                    let _ = commands.send(Command::SnapshotStarted {
                        handle: handle.clone(),
                        info,
                    });
                })
                .await?;
                // Back to the pool only after a clean COMMIT (a failed one is dropped).
                let mut idle = pool.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < max_idle {
                    idle.push(client);
                }
                Ok::<_, anyhow::Error>(rows)
            }
            .await;
            match result {
                Ok(rows) => {
                    tracing::info!(handle = %handle, rows, ms = started.elapsed().as_millis() as u64, "snapshot done")
                }
                Err(e) => {
                    tracing::error!(handle = %handle, error = %format!("{e:#}"), "snapshot failed");
                    let _ = commands.send(Command::Remove {
                        handle: handle.clone(),
                    });
                    // A data exception (SQLSTATE class 22, or 0A000 for a NaN or infinity
                    // cast to an integer) comes from evaluating the where clause on some
                    // row: the request was bad, not the service.
                    let data_error = e
                        .chain()
                        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
                        .filter_map(|pg| pg.as_db_error())
                        .find(|db| {
                            let code = db.code().code();
                            code.starts_with("22") || code == "0A000"
                        })
                        .map(|db| db.message().to_string());
                    let state = match data_error {
                        Some(msg) => Lifecycle::Rejected(msg.into()),
                        None => Lifecycle::Failed(format!("{e:#}").into()),
                    };
                    registry.remove(&handle, state);
                }
            }
        });
    }

    /// Take a shape out of service (clients get 409 and refetch).
    pub fn invalidate(&self, handle: &ShapeHandle) {
        let _ = self.commands.send(Command::Remove {
            handle: handle.clone(),
        });
        self.registry.remove(handle, Lifecycle::Gone);
    }

    /// Take a shape out of local service whose sealed chunks were archived to the object
    /// store: its handle keeps serving them from there.
    pub fn archive(&self, handle: &ShapeHandle) {
        let _ = self.commands.send(Command::Remove {
            handle: handle.clone(),
        });
        self.registry.archive(handle);
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
            lifecycle::archive(self, self.lifecycle.tier.as_ref(), &victim, None).await;
        }
    }

    pub fn db(&self) -> &SourceDb {
        &self.db
    }

    /// Total bytes of the stack's shape logs.
    pub fn storage_bytes(&self) -> u64 {
        self.registry
            .shapes()
            .iter()
            .map(|s| s.log.size_bytes())
            .sum()
    }

    /// Remove the stack for good: stop replication, take every shape out of service (parked
    /// requests answer 409), drop the slot and publication so Postgres keeps no WAL for us, and
    /// delete the shape logs. The caller deletes the storage directory.
    pub async fn destroy(&self) -> anyhow::Result<()> {
        // Marked removed first, so woken waiters answer 409 rather than recreating shapes.
        self.removed.store(true, Ordering::Release);
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
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await;
            match r {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "slot still active; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                shapesync_filter::ident::quote_ident(self.publication.name())
            ))
            .await?;
        Ok(())
    }

    pub fn latest_lsn(&self) -> u64 {
        self.global_lsn.load(Ordering::Acquire)
    }
}

/// Resolves once `shutdown` (a [`Stack::shutdown_signal`]) is set, at once if it already is.
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Restore the shapes found on disk; shapes whose snapshot never finished are deleted.
async fn restore_shapes(
    store: &Arc<dyn ShapeLogStore>,
    registry: &Registry,
    writer: &mut Writer,
) -> anyhow::Result<usize> {
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
    for r in rebuilt.into_iter().flatten() {
        match r {
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
    Ok(restored)
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
            let compiled = shape::compile(&m.def, &m.table).ok()?;
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

/// The replication task: connect, stream, and on failure reconnect with backoff. Each
/// session first makes sure the publication and slot exist and can be used: a publication
/// created anew (it was dropped) or a slot that is gone, has lost WAL, or was left behind by a
/// dropped publication means changes were not streamed, so the slot is created again and every
/// shape rotated.
async fn replicate(
    stack: Arc<Stack>,
    cfg: StackConfig,
    mut writer: Writer,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let slot = cfg.slot.clone();
    let mut shutdown = stack.shutdown.subscribe();
    let mut backoff = Duration::from_millis(200);
    // The previous session failed because the slot's history predates the publication.
    let mut slot_unusable = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let attempt = async {
            let admin = stack.admin().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if stack.identity.get().is_none() {
                if let Ok(id) = SourceDb::identity(&admin).await {
                    let _ = stack.identity.set(id);
                }
            }
            let new_publication = stack.publication.create_if_missing(&admin).await?;
            if new_publication {
                stack.publication.reset().await;
                if !stack.registry.is_empty() {
                    tracing::warn!(stack = %stack.id, publication = stack.publication.name(), "the publication was gone: created it again");
                    stack.stats.integrity.note(IntegrityEvent::PublicationRecreated);
                }
            }
            // A slot older than its publication cannot decode the WAL before it.
            let new_slot =
                stream::ensure_slot(&admin, &slot, new_publication || slot_unusable).await?;
            slot_unusable = false;
            if new_slot && !stack.registry.is_empty() {
                tracing::warn!(stack = %stack.id, slot = %slot, "replication slot was recreated: rotating every shape (changes may have been missed)");
                stack.stats.integrity.note(IntegrityEvent::SlotRecreated);
                for h in stack.registry.handles() {
                    stack.invalidate(&h);
                }
            }
            stream::run(
                &cfg.db,
                &slot,
                stack.publication.name(),
                &stack.stats,
                &mut writer,
                &mut commands,
                (&mut shutdown, &stack.restart),
                &stack.status,
            )
            .await
        }
        .await;
        match attempt {
            Ok(stream::End::Shutdown) => break,
            Err(e) => {
                if stack.status() == Status::Active {
                    // The session had been streaming: this is a new failure, not a retry.
                    backoff = Duration::from_millis(200);
                }
                let msg = format!("{e:#}");
                if stream::publication_missing(&msg) {
                    slot_unusable = true;
                }
                tracing::warn!(stack = %stack.id, error = %msg, retry_in_ms = backoff.as_millis() as u64, "replication down");
                stack.status.send_replace(Status::Down(msg));
                writer.reset_after_disconnect();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    stack.status.send_replace(Status::Down("stopped".into()));
}

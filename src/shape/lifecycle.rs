//! Shape lifecycle beyond creation: copying sealed chunks to the object-store tier, archiving
//! idle shapes (local files removed, sealed chunks still served from the bucket), evicting the
//! least recently used shape at the shape cap, and deleting the bucket copy of removed shapes.
//!
//! One task per stack does all object-store work, so for any shape an upload and a deletion
//! never race: a deletion queued by [`super::registry::Registry::remove`] is handled on the
//! next tick, after any upload of that shape that was under way.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shapesync_storage::object_tier::{Manifest, ObjectTier, RemoteChunk};
use shapesync_storage::LogOffset;
use tokio::sync::mpsc;

use super::definition::{ShapeDefinition, ShapeHandle};
use super::{Shape, ShapeMeta};
use crate::postgres::catalog::schema_header;
use crate::stack::ctx::StackCtx;
use crate::stack::status::ReplicationStats;
use shapesync_filter::table::TableInfo;

/// How a stack's shapes are kept.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// Compact sealed change chunks (runs of updates to one key merged; see `compaction`).
    pub compaction: bool,
    /// Where sealed chunks are copied (this tenant's folder of the bucket).
    pub tier: Option<ObjectTier>,
    /// A shape nobody requested for this long is archived: with a tier, its sealed chunks stay
    /// in the bucket and its handle keeps serving them; without one it is simply removed.
    pub local_retention: Option<Duration>,
    /// At most this many shapes per stack: creating one more evicts (archives) the least
    /// recently used one.
    pub max_shapes: Option<usize>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            compaction: true,
            tier: None,
            local_retention: None,
            max_shapes: None,
        }
    }
}

/// How often the lifecycle task looks for new sealed chunks and idle shapes.
const TICK: Duration = Duration::from_millis(200);

/// Bytes of sealed chunks offered to compaction per tick at most (at least one chunk): each
/// is read, merged and, if worth it, written and fsynced on the blocking pool. 4 MiB per 200 ms
/// tick is about a fifth of a core, so a backlog (after a restart, or a burst of sealed chunks)
/// is worked through without starving replication.
const COMPACTION_BYTES_PER_TICK: usize = 4 << 20;

/// A compacted form is stored only if it saves at least a tenth of the chunk's bytes: below
/// that, a second copy on disk costs more than the bytes it saves readers.
const MIN_SAVING_DIVISOR: usize = 10;

/// A sealed chunk of an archived (or foreign) shape, read from the bucket.
#[derive(Debug)]
pub struct ArchivedChunk {
    pub handle: ShapeHandle,
    pub schema_header: String,
    pub chunk: RemoteChunk,
    /// The table as the shape saw it (for checks a caller's rights need).
    pub table: Arc<TableInfo>,
}

/// Final manifests (`archived: true`) by handle. They never change, so a read of an archived
/// shape costs one object read instead of a listing, a manifest read and the chunk read.
/// Bounded: beyond `cap` entries an arbitrary one is dropped.
pub struct ArchivedManifests {
    /// std Mutex: lookups and inserts only, never across `.await`.
    map: std::sync::Mutex<HashMap<ShapeHandle, Arc<Manifest>>>,
    cap: usize,
}

impl ArchivedManifests {
    pub fn new(cap: usize) -> Self {
        ArchivedManifests {
            map: std::sync::Mutex::new(HashMap::new()),
            cap: cap.max(1),
        }
    }

    fn get(&self, handle: &ShapeHandle) -> Option<Arc<Manifest>> {
        self.lock().get(handle).cloned()
    }

    fn put(&self, handle: &ShapeHandle, m: Arc<Manifest>) {
        let mut map = self.lock();
        if map.len() >= self.cap {
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
        map.insert(handle.clone(), m);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ShapeHandle, Arc<Manifest>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The chunk after `after` of shape `handle` if the bucket holds it and the shape has the
/// definition `def`. `None` means "not in the bucket": the caller answers 409.
pub async fn read_archived(
    tier: &ObjectTier,
    cache: &ArchivedManifests,
    handle: &ShapeHandle,
    def: &ShapeDefinition,
    after: LogOffset,
) -> Option<ArchivedChunk> {
    let found = async {
        let manifest = match cache.get(handle) {
            Some(m) => m,
            None => {
                let Some(m) = tier.latest_manifest(handle.as_str()).await? else {
                    return Ok(None);
                };
                let m = Arc::new(m);
                if m.archived {
                    cache.put(handle, Arc::clone(&m));
                }
                m
            }
        };
        let meta: Option<ShapeMeta> = manifest
            .meta()
            .and_then(|m| serde_json::from_slice(&m).ok());
        let Some(meta) = meta.filter(|m| m.def == *def && m.handle == *handle) else {
            return Ok(None);
        };
        let tables: Vec<Arc<shapesync_filter::table::TableInfo>> =
            meta.tables.iter().cloned().map(Arc::new).collect();
        let Ok(compiled) = super::compile(&meta.def, &meta.table, &tables) else {
            return Ok(None);
        };
        let chunk = tier.read(&manifest, after).await?;
        Ok::<_, shapesync_storage::object_tier::TierError>(chunk.map(|chunk| ArchivedChunk {
            handle: handle.clone(),
            schema_header: schema_header(&meta.table, &compiled.selected),
            chunk,
            table: Arc::new(meta.table.clone()),
        }))
    };
    match found.await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(handle = %handle, error = %e, "reading from the object store failed");
            None
        }
    }
}

/// The per-stack lifecycle task; ends when the stack shuts down.
pub async fn run(
    stack: Arc<StackCtx>,
    cfg: LifecycleConfig,
    mut deletions: mpsc::UnboundedReceiver<ShapeHandle>,
    compaction: CompactionWorker,
) {
    let mut uploaded: HashMap<ShapeHandle, Uploads> = HashMap::new();
    let mut shutdown = stack.shutdown_signal();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(TICK) => false,
            // The value, not a change: a stop that came before this task subscribed counts.
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        let registry = Some(Arc::clone(&stack.registry));
        while let Ok(handle) = deletions.try_recv() {
            uploaded.remove(&handle);
            if let Some(tier) = &cfg.tier {
                if let Err(e) = tier.remove(handle.as_str()).await {
                    // Kept as "being deleted": this process never serves it from the bucket.
                    tracing::warn!(handle = %handle, error = %e, "deleting a shape from the object store failed");
                    continue;
                }
            }
            if let Some(registry) = &registry {
                registry.deleted_from_tier(&handle);
            }
        }
        // Deletions queued before a stop (a removed tenant's shapes) are done above.
        if stopping {
            return;
        }
        let shapes = stack.registry.shapes();
        if cfg.compaction {
            // Before uploading: a chunk compacted now is uploaded in its compacted form.
            compact_some(&stack, &compaction, shapes.clone()).await;
        }
        // A set, not a scan of `shapes` per entry: with 10,000 shapes that was 10^8 handle
        // comparisons every tick.
        if !uploaded.is_empty() {
            let live: std::collections::HashSet<&ShapeHandle> =
                shapes.iter().map(|s| &s.handle).collect();
            uploaded.retain(|h, _| live.contains(h));
        }
        for shape in shapes {
            // Files not used for a whole tick are closed (reopened on demand): idle shapes
            // hold no file descriptors.
            shape.log.release_idle_files();
            // Upload state is kept only with a tier (an entry per shape otherwise cost ~400 B
            // of every idle shape's memory for nothing).
            // Uploads come after this tick's compaction, so a chunk compacted in time goes to
            // the bucket in its compacted form. Uploads never wait for compaction: with a
            // backlog beyond the compaction budget some chunks are uploaded as written (both
            // forms are correct for every offset; objects are write-once).
            if let Some(tier) = &cfg.tier {
                let entry = uploaded.entry(shape.handle.clone()).or_default();
                sync_shape(tier, &shape, entry).await;
            }
            if is_idle(&shape, cfg.local_retention) {
                tracing::info!(handle = %shape.handle, "archiving an idle shape");
                let state = uploaded.remove(&shape.handle).map(|u| u.manifest);
                archive(&stack, cfg.tier.as_ref(), &shape, state.flatten()).await;
            }
        }
    }
}

/// Offers up to `COMPACTION_BYTES_PER_TICK` of sealed change chunks to compaction, oldest
/// first per shape, on the compaction worker (chunk reads, JSON merging and the fsync of the
/// result).
async fn compact_some(stack: &StackCtx, worker: &CompactionWorker, shapes: Vec<Arc<Shape>>) {
    let stats = Arc::clone(&stack.stats);
    let done = worker.run(move |scratch| {
        let mut budget = COMPACTION_BYTES_PER_TICK;
        // A subquery shape's updates carry tags and removed tags that merging would lose.
        for shape in shapes.into_iter().filter(|s| s.subq.is_none()) {
            while budget > 0 && shape.is_active() && shape.log.has_compaction_candidate() {
                match compact_next(&shape, &stats, scratch) {
                    Ok(Some(bytes)) => budget = budget.saturating_sub(bytes.max(1)),
                    Ok(None) => break,
                    Err(e) => {
                        // Retried next tick (the chunk is still the candidate). A shape
                        // removed meanwhile is not active any more and skipped.
                        if shape.is_active() {
                            tracing::warn!(handle = %shape.handle, error = %e, "compacting a chunk failed");
                        }
                        break;
                    }
                }
            }
            if budget == 0 {
                break;
            }
        }
    })
    .await;
    if done.is_none() {
        tracing::warn!("the compaction worker is gone");
    }
}

/// What the compaction worker keeps between chunks, so that deciding a chunk allocates nothing
/// in the steady state.
#[derive(Default)]
struct Scratch {
    probe: super::compaction::MergeProbe,
    chunk: Vec<u8>,
}

type CompactionJob = Box<dyn FnOnce(&mut Scratch) + Send>;

/// The process's compaction thread, started once by the server and shared by every stack: its
/// memory (the scratch, and the transient buffers of a full compaction) lives in one allocator
/// arena instead of spreading over the blocking pool's threads, where glibc kept ~10–30 MB per
/// thread that had once compacted a 10 MB chunk. The thread ends when the last handle goes.
#[derive(Clone, Debug)]
pub struct CompactionWorker {
    jobs: Option<std::sync::mpsc::Sender<CompactionJob>>,
}

impl CompactionWorker {
    /// Starts the thread (`jobs: None` if it cannot be started: compaction is then skipped).
    pub fn start() -> CompactionWorker {
        let (tx, rx) = std::sync::mpsc::channel::<CompactionJob>();
        let started = std::thread::Builder::new()
            .name("shapesync-compaction".into())
            .spawn(move || {
                let mut scratch = Scratch::default();
                for job in rx {
                    // A job that panics (a bug) loses its answer, not the worker: every stack
                    // of the process shares it.
                    let run = std::panic::AssertUnwindSafe(|| job(&mut scratch));
                    if std::panic::catch_unwind(run).is_err() {
                        scratch = Scratch::default();
                    }
                }
            });
        if let Err(e) = &started {
            tracing::warn!(error = %e, "the compaction thread could not be started");
        }
        CompactionWorker {
            jobs: started.ok().map(|_| tx),
        }
    }

    /// Runs `job` on the compaction thread and waits for it.
    async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Scratch) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: CompactionJob = Box::new(move |scratch| {
            let _ = tx.send(job(scratch));
        });
        self.jobs.as_ref()?.send(job).ok()?;
        rx.await.ok()
    }
}

/// Compacts the shape's oldest sealed change chunk not offered yet; returns its bytes of JSON
/// (`None`: no chunk to offer).
fn compact_next(
    shape: &Shape,
    stats: &ReplicationStats,
    scratch: &mut Scratch,
) -> Result<Option<usize>, shapesync_storage::StoreError> {
    // A first pass over the chunk read into the scratch buffer answers most chunks (nothing
    // to merge) without building anything.
    let Scratch { probe, chunk } = scratch;
    probe.reset();
    let mut before = 0;
    let visited = shape
        .log
        .visit_compaction_candidate(chunk, &mut |_, json| {
            before += json.len();
            probe.add(json);
        })?;
    if chunk.capacity() > 64 << 20 {
        *chunk = Vec::new(); // a rare huge chunk: do not keep its buffer
    }
    let Some(end) = visited else {
        return Ok(None);
    };
    if !probe.may_merge() {
        shape.log.store_compacted(end, None)?;
        return Ok(Some(before));
    }
    let Some((end, entries)) = shape.log.compaction_candidate()? else {
        return Ok(None);
    };
    let size = |e: &[(LogOffset, bytes::Bytes)]| e.iter().map(|(_, b)| b.len()).sum::<usize>();
    let continues = shape
        .log
        .sealed_chunk_start(end)
        .zip(entries.first())
        .is_some_and(|(start, (first, _))| start.tx() == first.tx());
    let compacted = match super::compaction::compact_chunk(&entries, continues) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(handle = %shape.handle, chunk_end = %end, error = %e, "chunk left uncompacted");
            None
        }
    };
    let worth =
        compacted.filter(|c| before.saturating_sub(size(c)) >= before.div_ceil(MIN_SAVING_DIVISOR));
    shape.log.store_compacted(end, worth.as_deref())?;
    if let Some(c) = &worth {
        let after = size(c);
        stats.compacted_chunks.fetch_add(1, Ordering::Relaxed);
        stats
            .compaction_saved_bytes
            .fetch_add(before.saturating_sub(after) as u64, Ordering::Relaxed);
        tracing::debug!(handle = %shape.handle, chunk_end = %end, entries_before = entries.len(), entries_after = c.len(), bytes_before = before, bytes_after = after, "compacted a chunk");
    }
    Ok(Some(before))
}

/// This task's knowledge of one shape's bucket copy.
#[derive(Default)]
struct Uploads {
    /// The last manifest written or read (`None`: look it up).
    manifest: Option<Manifest>,
    /// What the log held at the last successful sync: (sealed snapshot chunks, latest offset).
    seen: Option<(u64, LogOffset)>,
    /// Consecutive failures, and no new attempt before `retry_at` (exponential backoff, so an
    /// unreachable store is not hammered by every shape every tick).
    failures: u32,
    retry_at: Option<std::time::Instant>,
}

/// Backoff after `failures` consecutive failed syncs: 1 s, 2 s, 4 s … up to 5 minutes.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

/// Upload what is new since the last look (nothing to do if the log has not moved).
async fn sync_shape(tier: &ObjectTier, shape: &Arc<Shape>, entry: &mut Uploads) {
    let p = shape.progress();
    let now = Some((p.sealed_chunks, p.latest));
    let waiting = entry
        .retry_at
        .is_some_and(|t| std::time::Instant::now() < t);
    if !p.snapshot_finished || entry.seen == now || waiting {
        return;
    }
    let meta = match serde_json::to_vec(&shape.meta()) {
        Ok(m) => m,
        Err(_) => return,
    };
    match tier
        .sync(
            shape.handle.as_str(),
            &meta,
            &shape.log,
            &mut entry.manifest,
        )
        .await
    {
        Ok(n) => {
            entry.seen = now;
            entry.failures = 0;
            entry.retry_at = None;
            if n > 0 {
                tracing::debug!(handle = %shape.handle, chunks = n, "uploaded sealed chunks");
            }
        }
        Err(e) => {
            tracing::warn!(handle = %shape.handle, error = %e, "uploading sealed chunks failed; will retry");
            entry.manifest = None; // look the manifest up again next time
            entry.failures += 1;
            entry.retry_at = Some(std::time::Instant::now() + backoff(entry.failures));
        }
    }
}

fn is_idle(shape: &Shape, retention: Option<Duration>) -> bool {
    let Some(retention) = retention else {
        return false;
    };
    let idle_us = super::now_micros().saturating_sub(shape.last_used_micros());
    // A parked long-poll or an open SSE stream is a reader even if no request came lately.
    shape.is_active()
        && !shape.has_waiters()
        && shape.progress().snapshot_finished
        && idle_us >= retention.as_micros() as u64
}

/// Take a shape out of local service. With a tier, its sealed chunks are uploaded and a final
/// manifest written first, so its handle keeps serving them from the bucket (reads past them
/// answer 409); if that fails, or without a tier, the shape is removed outright (409).
pub async fn archive(
    stack: &StackCtx,
    tier: Option<&ObjectTier>,
    shape: &Arc<Shape>,
    mut state: Option<Manifest>,
) {
    let archived = match (tier, serde_json::to_vec(&shape.meta())) {
        (Some(tier), Ok(meta)) => {
            match tier
                .archive(shape.handle.as_str(), &meta, &shape.log, &mut state)
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(handle = %shape.handle, error = %e, "archiving to the object store failed; removing the shape");
                    false
                }
            }
        }
        _ => false,
    };
    if archived {
        stack.archive(&shape.handle);
    } else {
        stack.invalidate(&shape.handle);
    }
}

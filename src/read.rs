//! What a shape request gets (protocol.md §3.2, §4): the shape it names (found, created, or
//! its replacement when the handle is stale; archived chunks from the object store), then a
//! chunk of its log, or a wait for new data (in the request's task, or parked by its
//! connection), or the answer at the end of the wait. The decision only: `serve::shape_api`
//! turns an [`Outcome`] into a response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shapesync_storage::{LogOffset, ReadResult};

use crate::metrics::ActiveGuard;
use crate::serve::params::{RequestOffset, ShapeRequest};
use crate::shape::definition::ShapeHandle;
use crate::shape::lifecycle::{read_archived, ArchivedChunk};
use crate::shape::{Lifecycle, Progress, Shape};
use crate::stack::{ShapeError, Stack};

/// Logs up to this size (snapshot and changes together) are read without the blocking pool.
const INLINE_READ_BYTES: u64 = 256 * 1024;

/// How long a request waits for a snapshot chunk to be written before giving up.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// What decides a request besides the request itself.
pub struct ReadCtx<'a> {
    pub stack: &'a Stack,
    /// How long a live request waits for new data.
    pub long_poll: Duration,
    /// May this request create a shape? `Err(seconds)`: not before then (rate limited).
    pub allow_create: &'a (dyn Fn() -> Result<(), u32> + Sync),
    /// Counts a live request while it waits in its own task.
    pub waiting: &'a (dyn Fn() -> ActiveGuard + Sync),
    /// Does the caller's credential still allow the request? Asked after waiting in the task
    /// (a key revoked meanwhile gets no data).
    pub still_allowed: &'a (dyn Fn() -> bool + Sync),
}

/// How a live request may wait: parked by its connection, and since when it has been waiting
/// (a replayed request keeps its first arrival).
#[derive(Clone, Copy)]
pub struct Waiting {
    pub parkable: bool,
    pub since: Option<Instant>,
}

/// A response decided before it is written.
pub enum Outcome {
    Data {
        shape: Arc<Shape>,
        entries: Vec<bytes::Bytes>,
        end: LogOffset,
        up_to_date: Option<u64>,
        has_data: bool,
        /// The chunk's compacted form (`None`: an empty answer, unique each time).
        compacted: Option<bool>,
    },
    /// The handle is stale: refetch the active shape (None: the database itself is gone).
    MustRefetch(Option<Arc<Shape>>),
    /// A sealed chunk of a shape not held locally, served from the object store.
    Archived(ArchivedChunk),
    /// Live over Server-Sent Events from this offset.
    Sse(Arc<Shape>, LogOffset),
    /// A subset snapshot of the shape.
    Subset(Arc<Shape>),
    /// Nothing new yet: the connection parks the request until the shape's progress moves on
    /// from `observed` or `deadline` passes.
    Park {
        shape: Arc<Shape>,
        observed: Progress,
        deadline: Instant,
    },
}

/// Why a request cannot be answered with data.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A parameter that does not fit: (parameter, message) for a 400.
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// Creating a shape is rate limited: retry after this many seconds.
    #[error("too many new shapes")]
    RateLimited { retry_after: u32 },
    /// The shape's snapshot failed; the next request creates it again.
    #[error("the shape's snapshot failed")]
    SnapshotFailed,
    /// The shape's snapshot has not written its first chunk in time.
    #[error("the shape's snapshot is taking too long")]
    SnapshotSlow,
    /// The shape's log could not be read.
    #[error("reading the shape log")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The caller's credential stopped allowing the request while it waited.
    #[error("the credential is no longer valid")]
    Revoked,
}

/// Decide what the request gets. `subset`: the request asks for a subset snapshot.
pub async fn decide(
    cx: &ReadCtx<'_>,
    req: &ShapeRequest,
    subset: bool,
    wait: Waiting,
) -> Result<Outcome, ReadError> {
    let requested = match req.offset {
        RequestOffset::Now => None,
        RequestOffset::At(o) => Some(o),
    };
    let shape = match (&req.handle, requested) {
        (Some(h), Some(at)) => match find(cx, req, h, at, subset, wait).await? {
            Found::Shape(s) => s,
            Found::Answer(outcome) => return Ok(outcome),
        },
        _ => live_shape(cx, req).await?,
    };
    shape.touch();
    let Some(requested) = requested else {
        // offset=now: the current end, immediately.
        let latest = shape.log.latest_offset();
        return Ok(Outcome::Data {
            up_to_date: Some(cx.stack.latest_lsn().max(latest.tx())),
            shape,
            entries: Vec::new(),
            end: latest,
            has_data: false,
            compacted: None,
        });
    };
    if subset {
        return Ok(Outcome::Subset(shape));
    }
    if req.live_sse {
        return Ok(Outcome::Sse(shape, requested));
    }
    read_or_wait(cx, req, shape, requested, wait).await
}

/// A handle's shape, or the answer when it is not the active shape of the definition.
enum Found {
    Shape(Arc<Shape>),
    Answer(Outcome),
}

async fn find(
    cx: &ReadCtx<'_>,
    req: &ShapeRequest,
    handle: &str,
    at: LogOffset,
    subset: bool,
    wait: Waiting,
) -> Result<Found, ReadError> {
    let stack = cx.stack;
    // Handles are opaque to clients: one that is not of this server's format is a handle of
    // some other server or a stale one, answered like any unknown handle (409 with the live
    // shape), which is how the official client recovers.
    let Ok(handle) = handle.parse::<ShapeHandle>() else {
        return Ok(Found::Answer(Outcome::MustRefetch(Some(
            live_shape(cx, req).await?,
        ))));
    };
    let answer = match stack.registry.get(&handle) {
        Some(s) if s.def == req.def && s.is_active() => return Ok(Found::Shape(s)),
        // Deleted or rotated (perhaps its table was dropped): refetch the replacement.
        Some(s) if s.def == req.def => replacement(cx, req).await?,
        // A parked request whose shape went away while it waited: the same.
        None if wait.since.is_some() => replacement(cx, req).await?,
        // Not held here: archived, or another process's. The object store may hold the sealed
        // chunk asked for (catch-up reads only).
        None if !subset && !req.live_sse && !stack.registry.is_being_deleted(&handle) => {
            let archived = match &stack.lifecycle.tier {
                Some(tier) => {
                    read_archived(tier, &stack.archived_manifests, &handle, &req.def, at).await
                }
                None => None,
            };
            match archived {
                Some(found) => Outcome::Archived(found),
                None => Outcome::MustRefetch(Some(live_shape(cx, req).await?)),
            }
        }
        // Unknown, or another definition's: refetch the active one.
        _ => Outcome::MustRefetch(Some(live_shape(cx, req).await?)),
    };
    Ok(Found::Answer(answer))
}

/// The live shape for the request's definition; creating one is rate limited per client.
async fn live_shape(cx: &ReadCtx<'_>, req: &ShapeRequest) -> Result<Arc<Shape>, ReadError> {
    if let Some(s) = cx.stack.registry.live(&req.def) {
        return Ok(s);
    }
    (cx.allow_create)().map_err(|retry_after| ReadError::RateLimited { retry_after })?;
    Ok(cx.stack.get_or_create(&req.def).await?)
}

/// 409 pointing at the shape that replaces a stale one. When no replacement can be made (the
/// table was dropped or no longer fits the definition), the 409 names none: the client's refetch
/// then gets the 400 saying why.
async fn replacement(cx: &ReadCtx<'_>, req: &ShapeRequest) -> Result<Outcome, ReadError> {
    match live_shape(cx, req).await {
        Ok(shape) => Ok(Outcome::MustRefetch(Some(shape))),
        Err(ReadError::Shape(ShapeError::Invalid(..))) => Ok(Outcome::MustRefetch(None)),
        Err(e) => Err(e),
    }
}

/// Read the chunk after `requested`, or wait until there is one (or the wait ends).
async fn read_or_wait(
    cx: &ReadCtx<'_>,
    req: &ShapeRequest,
    shape: Arc<Shape>,
    requested: LogOffset,
    wait: Waiting,
) -> Result<Outcome, ReadError> {
    let stack = cx.stack;
    let mut progress = shape.subscribe();
    let started = wait.since.unwrap_or_else(Instant::now);
    let long_poll = cx.long_poll;
    let mut shutdown = stack.shutdown_signal();
    loop {
        let observed = progress.borrow_and_update();
        match &observed.state {
            Lifecycle::Active => {}
            Lifecycle::Gone if stack.is_stopped() => return Ok(Outcome::MustRefetch(None)),
            Lifecycle::Gone => return replacement(cx, req).await,
            Lifecycle::Rejected(msg) => {
                return Err(ReadError::Invalid(
                    "where",
                    format!("the where clause fails on the table's rows: {msg}"),
                ));
            }
            Lifecycle::Failed(msg) => {
                tracing::warn!(handle = %shape.handle, error = %msg, "serving a failed shape");
                return Err(ReadError::SnapshotFailed);
            }
        }
        let read = match read(&shape, requested).await {
            Ok(read) => read,
            // Its files were removed under the read (deleted, rotated or archived meanwhile:
            // log files are opened on demand): the shape is gone, not broken.
            Err(_) if !shape.is_active() => continue,
            Err(e) => return Err(e),
        };
        let latest = shape.log.latest_offset();
        let (wait_until, timeout_outcome) = match read {
            ReadResult::NotReady => (started + SNAPSHOT_WAIT, None),
            ReadResult::Chunk {
                entries,
                end,
                compacted,
            } => {
                let head = end >= latest.max(requested) && !requested.is_before_all();
                let out_of_bounds = requested > latest
                    && !requested.is_snapshot()
                    && requested.tx() > stack.latest_lsn();
                if !entries.is_empty() || (!req.live && !out_of_bounds) {
                    let lsn = if req.live {
                        end.tx()
                    } else {
                        stack.latest_lsn().max(end.tx())
                    };
                    return Ok(Outcome::Data {
                        shape,
                        entries,
                        end,
                        up_to_date: head.then_some(lsn),
                        has_data: true,
                        compacted: Some(compacted),
                    });
                }
                if out_of_bounds {
                    if started.elapsed() >= long_poll / 2 {
                        return Err(ReadError::Invalid(
                            "offset",
                            "out of bounds for this shape".into(),
                        ));
                    }
                    (started + long_poll / 2, None)
                } else {
                    // Live and nothing new yet: wait; on timeout answer up-to-date at `end`.
                    (started + long_poll, Some(end))
                }
            }
        };
        if wait.parkable && timeout_outcome.is_some() && wait_until > Instant::now() {
            return Ok(Outcome::Park {
                shape,
                observed,
                deadline: wait_until,
            });
        }
        let _waiting = req.live.then(|| (cx.waiting)());
        let woke = tokio::select! {
            r = tokio::time::timeout_at(wait_until.into(), progress.changed()) => r.is_ok(),
            _ = crate::stack::stopping(&mut shutdown) => false,
        };
        if !(cx.still_allowed)() {
            return Err(ReadError::Revoked);
        }
        if !woke {
            if stack.is_stopped() && !shape.is_active() {
                return Ok(Outcome::MustRefetch(None));
            }
            if let Some(end) = timeout_outcome {
                return Ok(Outcome::Data {
                    shape,
                    entries: Vec::new(),
                    end,
                    up_to_date: Some(stack.latest_lsn().max(end.tx())),
                    has_data: false,
                    compacted: None,
                });
            }
            if started.elapsed() >= SNAPSHOT_WAIT {
                return Err(ReadError::SnapshotSlow);
            }
        }
    }
}

/// The chunk after `after`: a small log is read on this thread (a page-cache read of a few KB
/// takes microseconds; handing it to the blocking pool cost a thread switch each way, most of a
/// cached chunk request's CPU: target P9), a larger one on the blocking pool.
async fn read(shape: &Arc<Shape>, after: LogOffset) -> Result<ReadResult, ReadError> {
    let read = if shape.log.size_bytes() <= INLINE_READ_BYTES {
        shape.log.read(after)
    } else {
        let s = Arc::clone(shape);
        tokio::task::spawn_blocking(move || s.log.read(after))
            .await
            .map_err(|e| ReadError::Storage(Box::new(e)))?
    };
    read.map_err(|e| ReadError::Storage(Box::new(e)))
}

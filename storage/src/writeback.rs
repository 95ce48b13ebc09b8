//! The store's writeback: writes the logs' write-behind tails to their segment files.
//!
//! A group commit makes a batch durable in the commit log alone (one write, one fsync) and
//! publishes it; the shape files get the bytes later, from here. A background thread wakes
//! when a commit queues logs, waits `DELAY` (or until `MAX_BEHIND_BYTES` are waiting) so that
//! the batches of that moment reach each file in one write, and writes every queued log's
//! tail. A checkpoint writes every queued tail
//! itself before its `syncfs` (the commit log is reset after it, so everything it names must be
//! in the files first). A log stays queued until its tail is empty: a failed write is retried
//! by the next pass (the bytes are durable in the commit log and served from memory meanwhile).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::StoreError;
use crate::file_log::FileLog;
use crate::log::ShapeLog;

/// How long the thread lets commits accumulate before a pass: each pass costs one write per
/// touched file (with 10,000 busy shapes, ~10,000 writes), so the fewer the better...
const DELAY: Duration = Duration::from_millis(1000);
/// ... but no more than this many committed bytes wait in memory: past it the pass starts at
/// once.
const MAX_BEHIND_BYTES: u64 = 64 << 20;
/// Pause after a pass that failed (a full or failing disk): retried, not spun on.
const RETRY_DELAY: Duration = Duration::from_secs(1);

pub(crate) struct Writeback {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    passes: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct Queue {
    /// Logs with a tail to write, by address (a log is queued once).
    logs: HashMap<usize, Arc<dyn ShapeLog>>,
    /// Bytes committed since the last pass started.
    bytes: u64,
    stop: bool,
}

fn key(log: &Arc<dyn ShapeLog>) -> usize {
    Arc::as_ptr(log) as *const () as usize
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the tail of every queued log; unqueues those left with none. The first error, if
    /// any (the others are retried the same way).
    fn pass(&self) -> Result<(), StoreError> {
        let logs: Vec<Arc<dyn ShapeLog>> = {
            let mut q = self.queue();
            q.bytes = 0;
            q.logs.values().cloned().collect()
        };
        if logs.is_empty() {
            return Ok(());
        }
        let mut first_error = None;
        for log in &logs {
            if let Some(log) = FileLog::of(log) {
                if let Err(e) = log.changes().write_tail() {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Only after the writes: a log leaves the queue once its bytes are in the file (a
        // checkpoint that does not see it may sync at once).
        self.queue()
            .logs
            .retain(|_, l| FileLog::of(l).is_some_and(|f| f.changes().has_tail()));
        self.passes.fetch_add(1, Ordering::Relaxed);
        match first_error {
            Some(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn run(&self) {
        loop {
            let mut q = self.queue();
            while q.logs.is_empty() && !q.stop {
                q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if !q.stop {
                // Let this moment's commits gather (woken early by a stop, or by enough
                // bytes waiting).
                q = self
                    .wake
                    .wait_timeout_while(q, DELAY, |q| !q.stop && q.bytes < MAX_BEHIND_BYTES)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let stop = q.stop;
            drop(q);
            let failed = self.pass().is_err();
            if stop {
                // The last pass before the store closes (what it could not write is in the
                // commit log, replayed at the next open).
                return;
            }
            if failed {
                let q = self.queue();
                if !q.stop {
                    let _ = self.wake.wait_timeout(q, RETRY_DELAY);
                }
            }
        }
    }
}

impl Writeback {
    pub(crate) fn start() -> Writeback {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            passes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("shapesync-writeback".into())
            .spawn(move || for_thread.run())
            .ok();
        Writeback { shared, thread }
    }

    /// Queues logs that have a tail to write after a commit of `bytes` published them.
    pub(crate) fn queue(&self, logs: impl IntoIterator<Item = Arc<dyn ShapeLog>>, bytes: u64) {
        let mut q = self.shared.queue();
        let before = q.logs.len();
        for log in logs {
            q.logs.entry(key(&log)).or_insert(log);
        }
        let was_below = q.bytes < MAX_BEHIND_BYTES;
        q.bytes += bytes;
        let urgent = was_below && q.bytes >= MAX_BEHIND_BYTES;
        if (q.logs.len() > before || urgent) && self.thread.is_some() {
            self.shared.wake.notify_one();
        }
        drop(q);
        if self.thread.is_none() {
            // No thread (it could not be spawned): written at once instead.
            let _ = self.shared.pass();
        }
    }

    /// Writes every queued tail now (before a checkpoint's sync).
    pub(crate) fn write_all(&self) -> Result<(), StoreError> {
        self.shared.pass()
    }

    /// A log was removed: it is unqueued and its tail dropped, once a write of it in progress
    /// has finished (so nothing of it is written after this returns).
    pub(crate) fn forget(&self, id: &str) {
        let mut gone = Vec::new();
        self.shared.queue().logs.retain(|_, l| {
            let ours = FileLog::of(l).is_some_and(|f| f.id() == id);
            if ours {
                gone.push(Arc::clone(l));
            }
            !ours
        });
        for log in gone {
            if let Some(log) = FileLog::of(&log) {
                log.changes().kill();
            }
        }
    }

    /// Writeback passes done, and passes that failed.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.shared.passes.load(Ordering::Relaxed),
            self.shared.failures.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.shared.queue().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

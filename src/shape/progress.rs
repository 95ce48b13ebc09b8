//! A shape's progress as readers may see it, and how waiters learn that it changed: a value
//! behind a mutex, a version counter and one `Notify`. It does what a `tokio::sync::watch`
//! channel did here in about a quarter of the memory (a watch channel allocates ~400 bytes,
//! eight notifiers among them), which every idle shape pays (target P7).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{Progress, Shape};

/// The cell inside a shape.
pub struct ProgressCell {
    value: Mutex<Progress>,
    version: AtomicU64,
    notify: Notify,
    receivers: AtomicUsize,
}

impl ProgressCell {
    pub fn new(p: Progress) -> Self {
        ProgressCell {
            value: Mutex::new(p),
            version: AtomicU64::new(0),
            notify: Notify::new(),
            receivers: AtomicUsize::new(0),
        }
    }

    pub fn get(&self) -> Progress {
        self.value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Change the value; waiters are woken if `f` says it changed.
    pub fn update(&self, f: impl FnOnce(&mut Progress) -> bool) {
        let changed = {
            let mut v = self
                .value
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let changed = f(&mut v);
            if changed {
                // Under the lock: a reader that saw the new value also sees the new version.
                self.version.fetch_add(1, Ordering::AcqRel);
            }
            changed
        };
        if changed {
            self.notify.notify_waiters();
        }
    }

    pub fn has_receivers(&self) -> bool {
        self.receivers.load(Ordering::Acquire) > 0
    }
}

/// A reader of a shape's progress (it keeps the shape alive).
pub struct ProgressRx {
    shape: Arc<Shape>,
    seen: u64,
}

impl ProgressRx {
    pub fn new(shape: Arc<Shape>) -> Self {
        let cell = &shape.progress;
        cell.receivers.fetch_add(1, Ordering::AcqRel);
        let seen = cell.version.load(Ordering::Acquire);
        ProgressRx { shape, seen }
    }

    /// The current value, marked as seen.
    pub fn borrow_and_update(&mut self) -> Progress {
        let cell = &self.shape.progress;
        let v = cell
            .value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.seen = cell.version.load(Ordering::Acquire);
        v.clone()
    }

    /// The current value, without marking it seen.
    pub fn current(&self) -> Progress {
        self.shape.progress.get()
    }

    /// Wait until the value changed since it was last seen. Never fails (the shape outlives
    /// its readers); the `Result` keeps the shape of `watch::Receiver::changed`.
    pub async fn changed(&mut self) -> Result<(), std::convert::Infallible> {
        let cell = &self.shape.progress;
        loop {
            let notified = cell.notify.notified();
            tokio::pin!(notified);
            // Registered before the version is read: a change after the read wakes us.
            notified.as_mut().enable();
            let v = cell.version.load(Ordering::Acquire);
            if v != self.seen {
                self.seen = v;
                return Ok(());
            }
            notified.await;
        }
    }
}

impl Drop for ProgressRx {
    fn drop(&mut self) {
        self.shape.progress.receivers.fetch_sub(1, Ordering::AcqRel);
    }
}

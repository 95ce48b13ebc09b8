//! The open-file budget: every log file handle a store keeps open between uses is counted
//! against one [`FileBudget`], shared by all the stores of a process, so that the number of
//! shapes never decides how many file descriptors the process needs.
//!
//! A log's handles live in [`CachedFile`] slots that hold only a *weak* reference; the budget
//! holds the strong one, in a ring swept by the CLOCK algorithm (an approximation of least
//! recently used that costs one relaxed atomic store per use). When a newly opened file would
//! take the ring past its limit, the sweep gives every handle used since the last pass a second
//! chance and drops the first one that was not: its descriptor closes as soon as a reader or
//! writer still holding it is done, and the slot opens the file again on its next use. Opening,
//! recovering, committing to or reading from any number of logs therefore keeps at most
//! `limit` cached handles open, plus one per operation in flight.
//!
//! If the process runs out of descriptors anyway (`EMFILE`/`ENFILE`, e.g. because sockets took
//! them), [`CachedFile::get`] sheds half of the cached handles and tries once more.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// An open file handle owned by a [`FileBudget`].
#[derive(Debug)]
pub(crate) struct OpenFile {
    file: File,
    /// Set on every use, cleared by the sweep (CLOCK's reference bit).
    referenced: AtomicBool,
    /// Index in the budget's ring, while it is there (`usize::MAX` once dropped from it).
    slot: AtomicUsize,
}

impl OpenFile {
    fn in_ring(&self) -> bool {
        self.slot.load(Ordering::Relaxed) != usize::MAX
    }
}

impl std::ops::Deref for OpenFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

/// How many log files the stores of a process may keep open at once.
#[derive(Debug)]
pub struct FileBudget {
    limit: usize,
    ring: Mutex<Ring>,
    opened: AtomicU64,
    evicted: AtomicU64,
}

#[derive(Debug, Default)]
struct Ring {
    files: Vec<Arc<OpenFile>>,
    hand: usize,
}

/// Counters of a [`FileBudget`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileBudgetStats {
    /// The most handles kept open between uses.
    pub limit: usize,
    /// Handles kept open now.
    pub open: usize,
    /// Files opened since the start, and handles closed to stay within the limit.
    pub opened: u64,
    pub evicted: u64,
}

impl FileBudget {
    /// A budget of `limit` cached handles (at least 4).
    pub fn new(limit: usize) -> Arc<FileBudget> {
        Arc::new(FileBudget {
            limit: limit.max(4),
            ring: Mutex::new(Ring::default()),
            opened: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    /// Half of the process's current soft `RLIMIT_NOFILE` (the other half is left for
    /// sockets, database connections and transient files), at most 65,536.
    pub fn for_process() -> Arc<FileBudget> {
        FileBudget::new(budget_for_limit(nofile_limit().0))
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn stats(&self) -> FileBudgetStats {
        FileBudgetStats {
            limit: self.limit,
            open: self.ring().files.len(),
            opened: self.opened.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes ownership of a newly opened file and sweeps the ring back within the limit.
    fn admit(&self, file: File) -> Arc<OpenFile> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let mut ring = self.ring();
        // Admitted without its reference bit: a file used once (a commit touching thousands
        // of logs) goes before one used again since the last sweep.
        let open = Arc::new(OpenFile {
            file,
            referenced: AtomicBool::new(false),
            slot: AtomicUsize::new(ring.files.len()),
        });
        ring.files.push(Arc::clone(&open));
        while ring.files.len() > self.limit {
            let hand = ring.hand % ring.files.len();
            if ring.files[hand].referenced.swap(false, Ordering::Relaxed) {
                ring.hand = hand + 1;
            } else {
                remove_at(&mut ring, hand);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        open
    }

    /// Drops `file` from the ring (its slot released it: idle).
    fn release(&self, file: &Arc<OpenFile>) {
        let mut ring = self.ring();
        let at = file.slot.load(Ordering::Relaxed);
        if ring.files.get(at).is_some_and(|f| Arc::ptr_eq(f, file)) {
            remove_at(&mut ring, at);
        }
    }

    /// Closes half of the cached handles (the process ran out of descriptors).
    fn shed(&self) {
        let mut ring = self.ring();
        let keep = ring.files.len() / 2;
        while ring.files.len() > keep {
            let last = ring.files.len() - 1;
            remove_at(&mut ring, last);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        ring.hand = 0;
    }
}

fn remove_at(ring: &mut Ring, at: usize) {
    let gone = ring.files.swap_remove(at);
    gone.slot.store(usize::MAX, Ordering::Relaxed);
    if let Some(moved) = ring.files.get(at) {
        moved.slot.store(at, Ordering::Relaxed);
    }
}

/// The budget for a process whose soft descriptor limit is `soft`: half of it, at least 16
/// and at most 65,536.
pub fn budget_for_limit(soft: u64) -> usize {
    usize::try_from(soft / 2)
        .unwrap_or(usize::MAX)
        .clamp(16, 65_536)
}

/// The process's `RLIMIT_NOFILE`: (soft, hard); `RLIM_INFINITY` reads as `u64::MAX`.
pub fn nofile_limit() -> (u64, u64) {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    (l.current.unwrap_or(u64::MAX), l.maximum.unwrap_or(u64::MAX))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what a server should do at start, so
/// that the budget is not set by a low default). Returns the soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    let mut l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, l);
    }
    nofile_limit().0
}

/// A log's handle on one of its files (or, for the change part, on the newest segment it
/// used), opened on demand through the budget. Holds a weak reference only, plus the "used
/// since the last idle check" bit of [`CachedFile::release_if_unused`].
#[derive(Debug)]
pub(crate) struct CachedFile {
    budget: Arc<FileBudget>,
    /// The key of the cached file (a segment base; 0 where there is one file) and the handle.
    cached: Mutex<Option<(u64, Weak<OpenFile>)>>,
    used: AtomicBool,
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

impl CachedFile {
    /// A slot with nothing open.
    pub(crate) fn closed(budget: &Arc<FileBudget>) -> CachedFile {
        CachedFile {
            budget: Arc::clone(budget),
            cached: Mutex::new(None),
            used: AtomicBool::new(false),
        }
    }

    /// A slot holding `file` (just created or opened), under `key`.
    pub(crate) fn with(budget: &Arc<FileBudget>, key: u64, file: File) -> CachedFile {
        let open = budget.admit(file);
        CachedFile {
            budget: Arc::clone(budget),
            cached: Mutex::new(Some((key, Arc::downgrade(&open)))),
            used: AtomicBool::new(true),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<(u64, Weak<OpenFile>)>> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file under `key`: the cached handle if it is still open, else `open()` (through the
    /// budget). With `cache_if`, a newly opened file replaces the cached one only when
    /// `cache_if(previous key)` holds (segments: only a newer one is kept); without it, always.
    pub(crate) fn get(
        &self,
        key: u64,
        open: impl Fn() -> io::Result<File>,
        cache_if: impl FnOnce(Option<u64>) -> bool,
    ) -> io::Result<Arc<OpenFile>> {
        self.used.store(true, Ordering::Relaxed);
        let mut cached = self.lock();
        if let Some((k, weak)) = cached.as_ref() {
            if *k == key {
                // A handle the sweep dropped may still be alive in another user's hands: it is
                // not counted any more, so it is opened again rather than shared.
                if let Some(file) = weak.upgrade().filter(|f| f.in_ring()) {
                    file.referenced.store(true, Ordering::Relaxed);
                    return Ok(file);
                }
            }
        }
        let file = match open() {
            Err(e) if out_of_descriptors(&e) => {
                self.budget.shed();
                open()?
            }
            other => other?,
        };
        let previous = cached.as_ref().map(|(k, _)| *k);
        let live = cached
            .as_ref()
            .and_then(|(_, w)| w.upgrade())
            .is_some_and(|f| f.in_ring());
        let keep = !live || cache_if(previous);
        if !keep {
            // Not cached (an older segment read now and then): never counted.
            return Ok(Arc::new(OpenFile {
                file,
                referenced: AtomicBool::new(false),
                slot: AtomicUsize::new(usize::MAX),
            }));
        }
        // Lock order: a slot, then the budget's ring (the sweep never locks a slot).
        if let Some(old) = cached.take().and_then(|(_, w)| w.upgrade()) {
            self.budget.release(&old);
        }
        let open = self.budget.admit(file);
        *cached = Some((key, Arc::downgrade(&open)));
        Ok(open)
    }

    /// Closes the cached handle unless it was used since the last call. True if none is open
    /// now.
    pub(crate) fn release_if_unused(&self) -> bool {
        if self.used.swap(false, Ordering::Relaxed) {
            return false;
        }
        let mut cached = self.lock();
        // Used between the swap and the lock: keep it for this round.
        if self.used.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(file) = cached.take().and_then(|(_, w)| w.upgrade()) {
            self.budget.release(&file);
        }
        true
    }

    pub(crate) fn is_open(&self) -> bool {
        self.lock()
            .as_ref()
            .and_then(|(_, w)| w.upgrade())
            .is_some_and(|f| f.in_ring())
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        let cached = self.cached.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = cached.take().and_then(|(_, w)| w.upgrade()) {
            self.budget.release(&file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_tmp(dir: &std::path::Path, n: u64) -> impl Fn() -> io::Result<File> + '_ {
        move || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(format!("f{n}")))
        }
    }

    #[test]
    fn never_keeps_more_than_the_limit_open() {
        let dir = tempfile::tempdir().unwrap();
        let budget = FileBudget::new(8);
        let slots: Vec<CachedFile> = (0..100).map(|_| CachedFile::closed(&budget)).collect();
        for round in 0..3 {
            for (i, slot) in slots.iter().enumerate() {
                let f = slot
                    .get(0, open_tmp(dir.path(), i as u64), |_| true)
                    .unwrap();
                f.write_all_at(&[round as u8], 0).unwrap();
                assert!(budget.stats().open <= 8);
            }
        }
        let s = budget.stats();
        assert_eq!(s.open, 8);
        assert!(s.opened > 280 && s.opened <= 300, "{s:?}");
        assert_eq!(s.evicted, s.opened - 8);
        let open_now = slots.iter().filter(|s| s.is_open()).count();
        assert_eq!(open_now, 8);
        drop(slots);
        assert_eq!(
            budget.stats().open,
            0,
            "dropped slots give their handles back"
        );
    }

    #[test]
    fn a_hot_file_survives_a_stream_of_cold_ones() {
        let dir = tempfile::tempdir().unwrap();
        let budget = FileBudget::new(4);
        let hot = CachedFile::closed(&budget);
        let cold: Vec<CachedFile> = (0..50).map(|_| CachedFile::closed(&budget)).collect();
        hot.get(0, open_tmp(dir.path(), 999), |_| true).unwrap();
        for (i, c) in cold.iter().enumerate() {
            c.get(0, open_tmp(dir.path(), i as u64), |_| true).unwrap();
            hot.get(0, open_tmp(dir.path(), 999), |_| true).unwrap();
        }
        // Opened once: every use set its reference bit, so the sweep always passed it by.
        assert_eq!(budget.stats().opened, 51);
        assert!(hot.is_open());
    }

    #[test]
    fn a_handle_in_use_stays_valid_after_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let budget = FileBudget::new(4);
        let first = CachedFile::closed(&budget);
        let held = first.get(0, open_tmp(dir.path(), 0), |_| true).unwrap();
        let others: Vec<CachedFile> = (1..20).map(|_| CachedFile::closed(&budget)).collect();
        for (i, o) in others.iter().enumerate() {
            o.get(0, open_tmp(dir.path(), i as u64 + 1), |_| true)
                .unwrap();
        }
        assert!(!first.is_open(), "evicted from the cache");
        held.write_all_at(b"still open", 0).unwrap();
        let again = first.get(0, open_tmp(dir.path(), 0), |_| true).unwrap();
        let mut buf = [0u8; 10];
        again.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"still open");
    }

    #[test]
    fn idle_release_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let budget = FileBudget::new(16);
        let slot = CachedFile::closed(&budget);
        slot.get(5, open_tmp(dir.path(), 5), |_| true).unwrap();
        // An older key is read without replacing the cached newer one.
        slot.get(3, open_tmp(dir.path(), 3), |prev| prev < Some(3))
            .unwrap();
        assert_eq!(budget.stats().open, 1);
        assert!(!slot.release_if_unused(), "used since the last check");
        assert!(slot.release_if_unused());
        assert!(!slot.is_open());
        assert_eq!(budget.stats().open, 0);
    }

    #[test]
    fn budget_from_limits() {
        assert_eq!(budget_for_limit(256), 128);
        assert_eq!(budget_for_limit(1024), 512);
        assert_eq!(budget_for_limit(10), 16);
        assert_eq!(budget_for_limit(u64::MAX), 65_536);
    }

    use std::os::unix::fs::FileExt;
}

//! Group durability for shape creation: many threads that each need their writes durable share
//! one `syncfs` of the store's filesystem instead of issuing several fsyncs each (a shape's
//! creation took five: two log files, the meta file, the shape directory and the store
//! directory; on a device that flushes its cache per fsync, 10,000 shapes created at once spent
//! most of their time there).
//!
//! A caller whose writes are done takes a ticket. If no sync is running, it runs one itself,
//! covering every ticket taken before it started; otherwise it waits for the running one to
//! end and then for one that started after its ticket. A failed sync fails every caller it
//! covered (each one reports the error; none of them may assume durability).

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

pub(crate) struct SyncGroup {
    dir: File,
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    /// The next ticket.
    next: u64,
    /// Every ticket below this is durable.
    synced: u64,
    /// A sync is running, covering the tickets below `running_upto`.
    running: bool,
    running_upto: u64,
    /// Tickets below this were covered by a sync that failed (the callers waiting on it get
    /// the error).
    failed_upto: u64,
    failure: Option<(io::ErrorKind, String)>,
}

impl SyncGroup {
    /// Syncs the filesystem holding `dir`.
    pub(crate) fn open(dir: &Path) -> io::Result<SyncGroup> {
        Ok(SyncGroup {
            dir: File::open(dir)?,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once everything this thread wrote before the call is durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let mut st = self.lock();
        let ticket = st.next;
        st.next += 1;
        loop {
            if st.synced > ticket {
                return Ok(());
            }
            if st.failed_upto > ticket && !st.running {
                // Covered by a sync that failed, and no later one succeeded.
                let (kind, msg) = st
                    .failure
                    .clone()
                    .unwrap_or((io::ErrorKind::Other, "sync failed".into()));
                return Err(io::Error::new(kind, msg));
            }
            if !st.running {
                st.running = true;
                st.running_upto = st.next;
                let upto = st.next;
                drop(st);
                let result = rustix::fs::syncfs(&self.dir).map_err(io::Error::from);
                st = self.lock();
                st.running = false;
                match &result {
                    Ok(()) => st.synced = st.synced.max(upto),
                    Err(e) => {
                        st.failed_upto = st.failed_upto.max(upto);
                        st.failure = Some((e.kind(), e.to_string()));
                    }
                }
                self.done.notify_all();
                result?;
                continue;
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_callers_share_syncs_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let group = Arc::new(SyncGroup::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let group = Arc::clone(&group);
                let path = dir.path().join(format!("f{i}"));
                std::thread::spawn(move || {
                    for k in 0..20 {
                        std::fs::write(&path, format!("{k}")).unwrap();
                        group.sync().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = group.lock();
        assert_eq!(st.next, 320);
        assert_eq!(st.synced, 320, "every ticket covered");
        assert!(!st.running);
    }
}

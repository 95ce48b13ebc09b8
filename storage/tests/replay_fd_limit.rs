//! Crash recovery under a low open-file limit: the commit log names more shapes than the
//! process may open files, and their shape files lost the batch (as after a power loss). The
//! replay must write every entry back, holding few files at once, and never skip a shape whose
//! file it could not open. Its own test binary: it lowers this process's `RLIMIT_NOFILE`.

use std::sync::Arc;

#[allow(dead_code)]
#[path = "integration/support.rs"]
mod support;

use shapesync_storage::{FileBudget, FileStore, LogOffset, ShapeLog, ShapeLogStore, StoreConfig};

const LOGS: usize = 400;

fn changes(log: &dyn ShapeLog) -> usize {
    support::entries_after(log, "-1").len()
}

#[test]
fn replay_writes_every_shape_back_within_a_low_descriptor_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let cfg = StoreConfig {
        chunk_bytes_threshold: 1 << 20,
    };
    {
        let store = FileStore::open_with_budget(&dir, cfg, FileBudget::new(16)).expect("open");
        let mut logs = Vec::new();
        for i in 0..LOGS {
            let log = store.create(&format!("s{i}"), b"meta").expect("create");
            log.finish_snapshot(br#"{"end":1}"#).expect("finish");
            logs.push(log);
        }
        for log in &logs {
            log.append_change(LogOffset::new(7, 0), br#"{"change":1}"#)
                .expect("append");
        }
        store.commit(&logs).expect("commit");
        // No checkpoint: the batch lives in the commit log. Simulate its pages lost from every
        // shape file (cut back to the header).
    }
    for i in 0..LOGS {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(format!("s{i}/changes.log")))
            .expect("changes.log");
        f.set_len(18).expect("truncate");
    }
    // From here on the process may open 100 files: far fewer than the shapes to replay into.
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current = Some(100);
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).expect("setrlimit");
    let store = FileStore::open_with_budget(&dir, cfg, FileBudget::new(16))
        .expect("reopen: the replay stays within the limit");
    let opened: Vec<_> = store.open_all().expect("open_all");
    assert_eq!(opened.len(), LOGS);
    let replayed = store.commit_stats().replayed_entries;
    assert_eq!(replayed, LOGS as u64);
    let logs: Vec<Arc<dyn ShapeLog>> = opened.into_iter().map(|(_, _, l)| l).collect();
    for log in &logs {
        assert_eq!(
            changes(&**log),
            2,
            "the snapshot end and the replayed change"
        );
    }
}

//! The open-file budget: a store of many more logs than the budget creates, commits to, reads
//! and reopens all of them while the process never holds more log files open than the budget
//! (counted in `/proc/self/fd`, not only in the budget's own books).

use std::path::Path;
use std::sync::Arc;

use shapesync_storage::{FileBudget, FileStore, LogOffset, ShapeLog, ShapeLogStore, StoreConfig};

use crate::support::entries_after;

/// Descriptors of this process open on files under `dir`.
fn fds_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|target| target.starts_with(dir))
                .count()
        })
        .unwrap_or(0)
}

const LOGS: usize = 300;
const BUDGET: usize = 16;

fn changes_of(log: &dyn ShapeLog) -> usize {
    entries_after(log, "-1").len()
}

#[test]
fn many_logs_stay_within_the_budget() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let cfg = StoreConfig {
        chunk_bytes_threshold: 256,
    };
    let budget = FileBudget::new(BUDGET);
    // Each check allows the budget, the commit log, and one file in use by the operation.
    let allowed = BUDGET + 2;
    {
        let store = FileStore::open_with_budget(&dir, cfg, Arc::clone(&budget)).expect("open");
        let mut logs = Vec::new();
        for i in 0..LOGS {
            let log = store.create(&format!("s{i}"), b"meta").expect("create");
            log.append_snapshot_row(br#"{"row":1}"#).expect("row");
            log.finish_snapshot(br#"{"end":1}"#).expect("finish");
            logs.push(log);
            assert!(
                fds_under(&dir) <= allowed,
                "{} fds after creating {i}",
                fds_under(&dir)
            );
        }
        // Three group commits, each touching every log.
        for tx in 1..=3u64 {
            for log in &logs {
                for op in 0..4 {
                    log.append_change(LogOffset::new(tx, op * 2), br#"{"change":"x"}"#)
                        .expect("append");
                }
            }
            store.commit(&logs).expect("group commit within the budget");
            assert!(
                fds_under(&dir) <= allowed,
                "{} fds after commit {tx}",
                fds_under(&dir)
            );
        }
        for log in &logs {
            assert_eq!(changes_of(&**log), 14, "snapshot row, its end, 12 changes");
        }
        assert!(
            fds_under(&dir) <= allowed,
            "{} fds after reads",
            fds_under(&dir)
        );
        let stats = budget.stats();
        assert!(stats.open <= BUDGET && stats.evicted > 0, "{stats:?}");
    }
    assert_eq!(fds_under(&dir), 0, "a dropped store holds nothing");
    // Reopen (recovery of every log) and read everything again.
    let store = FileStore::open_with_budget(&dir, cfg, Arc::clone(&budget)).expect("reopen");
    let opened = store.open_all().expect("open_all within the budget");
    assert_eq!(opened.len(), LOGS);
    assert!(
        fds_under(&dir) <= allowed,
        "{} fds after open_all",
        fds_under(&dir)
    );
    for (_, _, log) in &opened {
        assert_eq!(changes_of(&**log), 14, "snapshot row, its end, 12 changes");
        assert!(fds_under(&dir) <= allowed);
    }
}

//! Disk full, for real: a store on a small tmpfs. A commit that hits ENOSPC fails without
//! publishing anything, keeps failing while the disk is full, and succeeds unchanged once
//! space returns; nothing is lost or duplicated. Needs root (mount): ignored by default, run by
//! scripts/test.sh where a tmpfs can be mounted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use shapesync_storage::{FileStore, LogOffset, ShapeLog, ShapeLogStore, StoreError};

use crate::support::{cfg, entry, read};

const END: &[u8] = br#"{"headers":{"control":"snapshot-end"}}"#;

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk {
            path: dir.path().to_owned(),
            _dir: dir,
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Fills the filesystem with `filler` until a write fails with ENOSPC.
fn fill_up(filler: &Path) {
    let mut f = fs::File::create(filler).unwrap();
    let block = vec![7u8; 16 << 10];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return,
            Err(e) => panic!("unexpected error filling the disk: {e}"),
        }
    }
}

fn all_changes(log: &dyn ShapeLog) -> Vec<String> {
    let (entries, _) = read(log, "0_inf");
    entries
}

#[test]
#[ignore = "mounts a tmpfs (root): scripts/test.sh runs it where it can, and says so where not"]
fn commit_on_a_full_disk_fails_cleanly_and_recovers_when_space_returns() {
    let disk = SmallDisk::mount("4m").expect("mounting a tmpfs (needs root)");
    let dir = disk.path.join("store");
    let store = FileStore::open(&dir, cfg(1 << 30)).unwrap();
    let logs: Vec<Arc<dyn ShapeLog>> = (0..3)
        .map(|i| store.create(&format!("s{i}"), b"m").unwrap())
        .collect();
    for log in &logs {
        log.finish_snapshot(END).unwrap();
        log.append_change(LogOffset::new(1, 0), &entry(1, 100))
            .unwrap();
    }
    store.commit(&logs).unwrap();
    let filler = disk.path.join("filler");
    fill_up(&filler);
    // 3 × 64 KiB of changes do not fit.
    for (i, log) in logs.iter().enumerate() {
        for op in 0..64 {
            log.append_change(LogOffset::new(2, op), &entry(i * 1000 + op as usize, 1024))
                .unwrap();
        }
    }
    for _ in 0..3 {
        match store.commit(&logs) {
            Err(StoreError::Io(e)) => assert_eq!(e.raw_os_error(), Some(28), "ENOSPC: {e}"),
            other => panic!("expected ENOSPC, got {other:?}"),
        }
        for log in &logs {
            assert_eq!(
                log.latest_offset(),
                LogOffset::new(1, 0),
                "nothing published"
            );
            assert_eq!(all_changes(&**log).len(), 1);
        }
    }
    fs::remove_file(&filler).unwrap();
    store.commit(&logs).unwrap();
    let want = |i: usize| -> Vec<String> {
        std::iter::once(entry(1, 100))
            .chain((0..64).map(|op| entry(i * 1000 + op, 1024)))
            .map(|b| String::from_utf8(b).unwrap())
            .collect()
    };
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(log.latest_offset(), LogOffset::new(2, 63));
        assert_eq!(all_changes(&**log), want(i));
    }
    drop((store, logs));
    let store = FileStore::open(&dir, cfg(1 << 30)).unwrap();
    let reopened = store.open_all().unwrap();
    for (i, (_, _, log)) in reopened.iter().enumerate() {
        assert_eq!(all_changes(&**log), want(i), "exactly once after a restart");
    }
}

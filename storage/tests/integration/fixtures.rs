//! Golden fixtures: store directories written by each format version, checked in under
//! `storage/tests/fixtures/v<N>/`, must keep opening with exactly the same contents.
//!
//! The fixtures were written by `write_fixture` (run with `SHAPESYNC_WRITE_FIXTURES=<dir>`
//! and `--ignored` to regenerate one with the current code); they must never be regenerated
//! for an old version, which is the point of having them.

use std::path::{Path, PathBuf};

use shapesync_storage::{FileStore, LogOffset, ShapeLog, ShapeLogStore, SnapshotState};

use crate::support::{cfg, entries_after, read};

const THRESHOLD: u64 = 64;
const END: &[u8] = br#"{"headers":{"control":"snapshot-end"}}"#;

fn fixture_dir(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(version)
}

fn row(i: usize) -> Vec<u8> {
    format!(r#"{{"key":"\"public\".\"t\"/\"{i}\"","value":{{"id":"{i}"}},"headers":{{"operation":"insert"}}}}"#)
        .into_bytes()
}

fn change(tx: u64, op: u64) -> Vec<u8> {
    format!(r#"{{"key":"\"public\".\"t\"/\"c{tx}\"","value":{{"tx":"{tx}","op":"{op}"}}}}"#)
        .into_bytes()
}

/// The change offsets of shape `a`, flushed in three batches.
const CHANGES: [&[(u64, u64)]; 3] = [
    &[(10, 0), (10, 2)],
    &[(11, 0)],
    &[(12, 0), (12, 2), (12, 4)],
];

/// Writes the fixture store with the current code (format v2): shape `a` (finished snapshot
/// of 4 rows, 6 changes in three group commits), shape `b` (finished empty snapshot, no
/// changes). The commit log is left un-checkpointed and `a/changes.log` is cut back to its
/// header, as after a power cut that lost the unsynced shape file: the changes exist only in
/// `commit.wal`, so opening the fixture exercises the replay.
/// (The v1 fixture was written by the v1 code: the same calls, with `flush` per batch.)
fn write_fixture(dir: &Path) {
    let store = FileStore::open(dir, cfg(THRESHOLD)).unwrap();
    let a = store.create("a", b"meta of a").unwrap();
    for i in 0..4 {
        a.append_snapshot_row(&row(i)).unwrap();
    }
    a.finish_snapshot(END).unwrap();
    for batch in CHANGES {
        for &(tx, op) in batch {
            a.append_change(LogOffset::new(tx, op), &change(tx, op))
                .unwrap();
        }
        store.commit(std::slice::from_ref(&a)).unwrap();
    }
    let b = store.create("b", b"meta of b").unwrap();
    b.finish_snapshot(END).unwrap();
    drop((a, b, store));
    let changes = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("a/changes.log"))
        .unwrap();
    changes.set_len(18).unwrap();
}

/// The changes of the `v2-compacted` fixture: two chunks of three at threshold 170.
const COMPACTED_CHANGES: [(u64, u64); 6] = [(10, 0), (10, 2), (11, 0), (20, 0), (21, 0), (22, 0)];

/// Writes the `v2-compacted` fixture (store format v2 plus a compacted chunk file, chunk
/// object version 2, kind 3): shape `a` with an empty finished snapshot and the changes above
/// (chunks ending at 11_0 and 22_0), the first chunk stored compacted as its 10_2 and 11_0
/// entries, and the store checkpointed.
fn write_compacted_fixture(dir: &Path) {
    let store = FileStore::open(dir, cfg(170)).unwrap();
    let a = store.create("a", b"meta of a").unwrap();
    a.finish_snapshot(END).unwrap();
    for (tx, op) in COMPACTED_CHANGES {
        a.append_change(LogOffset::new(tx, op), &change(tx, op))
            .unwrap();
    }
    store.commit(std::slice::from_ref(&a)).unwrap();
    store.checkpoint().unwrap();
    let (end, entries) = a.compaction_candidate().unwrap().unwrap();
    assert_eq!((end, entries.len()), (LogOffset::new(11, 0), 3));
    a.store_compacted(end, Some(&entries[1..])).unwrap();
}

/// Writes the `v3` fixture (store format 3: change segments with their index files): shape
/// `a` with an empty finished snapshot and 400 changes (`change(tx, op)` for tx 100..500, op 0)
/// in group commits of 10 at threshold 100, so its change part spans several 4 KiB segments;
/// the last 3 batches are left in `commit.wal` only (the segment files cut back to what the
/// checkpoint before them synced, as after a power cut), so opening it also replays them.
fn write_v3_fixture(dir: &Path) {
    let segment_lens = || -> Vec<(std::path::PathBuf, u64)> {
        std::fs::read_dir(dir.join("a"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_str().unwrap().starts_with("changes"))
            .map(|e| (e.path(), e.metadata().unwrap().len()))
            .collect()
    };
    let store = FileStore::open(dir, cfg(100)).unwrap();
    let a = store.create("a", b"meta of a").unwrap();
    a.finish_snapshot(END).unwrap();
    let mut at_checkpoint = Vec::new();
    for batch in 0..40u64 {
        if batch == 37 {
            store.checkpoint().unwrap();
            at_checkpoint = segment_lens();
        }
        for tx in 100 + batch * 10..110 + batch * 10 {
            a.append_change(LogOffset::new(tx, 0), &change(tx, 0))
                .unwrap();
        }
        store.commit(std::slice::from_ref(&a)).unwrap();
    }
    drop((a, store));
    let now = segment_lens();
    assert!(now.len() >= 4, "{now:?}");
    // The power cut: what was written after the checkpoint is lost from the segment files.
    for (path, len) in now {
        let kept = at_checkpoint
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(18, |(_, l)| *l);
        if kept < len {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(kept).unwrap();
        }
    }
}

#[test]
#[ignore = "writes a fixture; run by hand with SHAPESYNC_WRITE_FIXTURES=<dir>"]
fn write_v3_fixture_with_current_code() {
    let dir = std::env::var("SHAPESYNC_WRITE_FIXTURES").expect("SHAPESYNC_WRITE_FIXTURES");
    write_v3_fixture(Path::new(&dir));
}

/// Store format 3 as written by the code that introduced it: the change part read across its
/// segments (finished ones from their index files), the pending batches replayed into the
/// active segment, and writing continues.
#[test]
fn format_v3_fixture_with_segments_reads_exactly() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir("v3"), copy.path());
    assert!(copy.path().join("a/chunks-18.idx").exists());
    let store = FileStore::open(copy.path(), cfg(1 << 20)).unwrap();
    assert!(store.commit_stats().replayed_entries >= 3);
    let all = store.open_all().unwrap();
    let a = &all[0].2;
    let mut want = vec![String::from_utf8(END.to_vec()).unwrap()];
    want.extend((100..500).map(|tx| String::from_utf8(change(tx, 0)).unwrap()));
    assert_eq!(follow(&**a), want);
    assert_eq!(a.latest_offset(), LogOffset::new(499, 0));
    a.append_change(LogOffset::new(500, 0), b"{}").unwrap();
    assert_eq!(a.flush().unwrap(), LogOffset::new(500, 0));
}

#[test]
#[ignore = "writes a fixture; run by hand with SHAPESYNC_WRITE_FIXTURES=<dir>"]
fn write_compacted_fixture_with_current_code() {
    let dir = std::env::var("SHAPESYNC_WRITE_FIXTURES").expect("SHAPESYNC_WRITE_FIXTURES");
    write_compacted_fixture(Path::new(&dir));
}

#[test]
#[ignore = "writes a fixture; run by hand with SHAPESYNC_WRITE_FIXTURES=<dir>"]
fn write_fixture_with_current_code() {
    let dir = std::env::var("SHAPESYNC_WRITE_FIXTURES").expect("SHAPESYNC_WRITE_FIXTURES");
    write_fixture(Path::new(&dir));
}

/// Every entry of a log, following it from `-1` like a client would.
fn follow(log: &dyn ShapeLog) -> Vec<String> {
    entries_after(log, "-1")
}

fn expected_a() -> Vec<String> {
    let mut out: Vec<String> = (0..4).map(|i| String::from_utf8(row(i)).unwrap()).collect();
    out.push(String::from_utf8(END.to_vec()).unwrap());
    for batch in CHANGES {
        for &(tx, op) in batch {
            out.push(String::from_utf8(change(tx, op)).unwrap());
        }
    }
    out
}

/// Opens a copy of fixture `version` and checks its exact contents.
fn check_fixture(version: &str) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(version), copy.path());
    let store = FileStore::open(copy.path(), cfg(1 << 20)).unwrap();
    let wal = std::fs::read(copy.path().join("commit.wal")).unwrap();
    assert_eq!(
        &wal[4..6],
        &3u16.to_le_bytes(),
        "the commit log is now version 3"
    );
    let all = store.open_all().unwrap();
    let ids: Vec<(&str, &[u8])> = all.iter().map(|(i, m, _)| (i.as_str(), &m[..])).collect();
    assert_eq!(ids, [("a", &b"meta of a"[..]), ("b", &b"meta of b"[..])]);
    let (a, b) = (&all[0].2, &all[1].2);
    let done = |sealed_chunks| SnapshotState {
        sealed_chunks,
        finished: true,
    };
    assert_eq!(a.snapshot_state(), done(5), "threshold 64 from the header");
    assert_eq!(a.latest_offset(), LogOffset::new(12, 4));
    assert_eq!(follow(&**a), expected_a());
    let (chunk0, end0) = read(&**a, "-1");
    assert_eq!((chunk0.len(), end0.to_string().as_str()), (1, "0_0"));
    assert_eq!(b.snapshot_state(), done(1));
    assert_eq!(b.latest_offset(), LogOffset::LAST_BEFORE_REAL);
    assert_eq!(follow(&**b), [String::from_utf8(END.to_vec()).unwrap()]);
    // Still writable where it left off.
    a.append_change(LogOffset::new(13, 0), b"{}").unwrap();
    assert_eq!(a.flush().unwrap(), LogOffset::new(13, 0));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn format_v1_fixture_reads_exactly() {
    check_fixture("v1");
}

#[test]
fn format_v2_fixture_with_a_pending_commit_log_reads_exactly() {
    let wal = std::fs::metadata(fixture_dir("v2").join("commit.wal")).unwrap();
    assert!(wal.len() > 18, "the fixture holds un-checkpointed batches");
    check_fixture("v2");
}

/// A compacted chunk file as written by the code that introduced it: read in place of the
/// chunk, flagged, and the rest of the log unchanged.
#[test]
fn format_v2_compacted_chunk_fixture_reads_exactly() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir("v2-compacted"), copy.path());
    assert!(copy.path().join("a/compacted-11_0.chunk").exists());
    let store = FileStore::open(copy.path(), cfg(1 << 20)).unwrap();
    let all = store.open_all().unwrap();
    assert_eq!(all.len(), 1);
    let a = &all[0].2;
    let mut want = vec![String::from_utf8(END.to_vec()).unwrap()];
    for (tx, op) in &COMPACTED_CHANGES[1..] {
        want.push(String::from_utf8(change(*tx, *op)).unwrap());
    }
    assert_eq!(follow(&**a), want);
    for after in ["0_inf", "10_0"] {
        match a.read(after.parse().unwrap()).unwrap() {
            shapesync_storage::ReadResult::Chunk {
                entries,
                end,
                compacted,
            } => assert_eq!(
                (entries.len(), end, compacted),
                (2, LogOffset::new(11, 0), true)
            ),
            other => panic!("{other:?}"),
        }
    }
    let next = a.compaction_candidate().unwrap().map(|c| c.0);
    assert_eq!(next, Some(LogOffset::new(22, 0)));
}

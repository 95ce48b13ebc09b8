//! Group commit through the store's commit log (`commit.wal`): what survives a crash.
//!
//! A crash is simulated by dropping the store and then doing to the files what a power cut
//! may do: shape files lose everything not yet checkpointed (their writes were never
//! fsynced), the commit log keeps its fsynced batches and may have a torn or damaged tail.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use shapesync_storage::{FileStore, LogOffset, ShapeLog, ShapeLogStore};

use crate::support::{cfg, entries_after, entry, read, s};

const END: &[u8] = br#"{"headers":{"control":"snapshot-end"}}"#;
const HEADER: u64 = 18;

fn wal_len(dir: &Path) -> u64 {
    fs::metadata(dir.join("commit.wal")).unwrap().len()
}

fn cut(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Every change entry of a log (after its snapshot).
fn changes(log: &dyn ShapeLog) -> Vec<String> {
    entries_after(log, "0_inf")
}

/// Shapes `s0`, `s1` with finished snapshots and `batches` committed batches of 2 changes
/// each in both; returns the commit log length after each batch.
fn write(dir: &Path, batches: u64) -> Vec<u64> {
    let store = FileStore::open(dir, cfg(100)).unwrap();
    let logs: Vec<Arc<dyn ShapeLog>> = (0..2)
        .map(|i| store.create(&format!("s{i}"), b"m").unwrap())
        .collect();
    for log in &logs {
        log.finish_snapshot(END).unwrap();
    }
    let mut ends = Vec::new();
    for b in 1..=batches {
        for (i, log) in logs.iter().enumerate() {
            for op in [0, 2] {
                let json = entry(b as usize * 100 + i * 10 + op as usize, 40);
                log.append_change(LogOffset::new(b, op), &json).unwrap();
            }
        }
        store.commit(&logs).unwrap();
        ends.push(wal_len(dir));
    }
    assert_eq!(
        store.commit_stats().wal_fsyncs,
        batches,
        "one fsync per batch"
    );
    ends
}

fn expected(shape: usize, batches: u64) -> Vec<String> {
    (1..=batches)
        .flat_map(|b| [0, 2].map(|op| b as usize * 100 + shape * 10 + op))
        .map(|i| String::from_utf8(entry(i, 40)).unwrap())
        .collect()
}

/// The power cut: the shape files lose every change that was not checkpointed.
fn lose_shape_pages(dir: &Path) {
    for i in 0..2 {
        cut(&dir.join(format!("s{i}/changes.log")), HEADER);
    }
}

fn reopen(dir: &Path) -> (FileStore, Vec<Arc<dyn ShapeLog>>) {
    let store = FileStore::open(dir, cfg(1 << 20)).unwrap();
    let logs = store.open_all().unwrap().into_iter().map(|o| o.2).collect();
    (store, logs)
}

#[test]
fn committed_batches_are_replayed_from_the_commit_log() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 3);
    lose_shape_pages(dir.path());
    let (store, logs) = reopen(dir.path());
    assert_eq!(store.commit_stats().replayed_entries, 6);
    assert_eq!(wal_len(dir.path()), HEADER, "reset after the replay");
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(changes(&**log), expected(i, 3));
        assert_eq!(log.latest_offset(), LogOffset::new(3, 2));
    }
    drop((store, logs));
    // Nothing left to replay; the data is in the shape files now.
    let (store, logs) = reopen(dir.path());
    assert_eq!(store.commit_stats().replayed_entries, 0);
    assert_eq!(changes(&*logs[1]), expected(1, 3));
}

#[test]
fn replay_over_intact_shape_files_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 4);
    let (store, logs) = reopen(dir.path());
    assert_eq!(store.commit_stats().replayed_entries, 8);
    assert_eq!(changes(&*logs[0]), expected(0, 4));
    // Keeps working: one more batch, then a crash that loses it in the shape file only.
    logs[0]
        .append_change(LogOffset::new(5, 0), &entry(500, 40))
        .unwrap();
    store.commit(&logs).unwrap();
    drop((store, logs));
    // Records are 8 + 16 + 40 bytes: cut into the one of batch 5.
    cut(&dir.path().join("s0/changes.log"), HEADER + 4 * 2 * 64 + 10);
    let (_, logs) = reopen(dir.path());
    let mut want = expected(0, 4);
    want.push(String::from_utf8(entry(500, 40)).unwrap());
    assert_eq!(changes(&*logs[0]), want);
}

#[test]
fn torn_commit_log_tail_drops_only_the_torn_batch() {
    for cut_at in [1, 5, 9, 30] {
        let dir = tempfile::tempdir().unwrap();
        let ends = write(dir.path(), 3);
        lose_shape_pages(dir.path());
        cut(&dir.path().join("commit.wal"), ends[1] + cut_at);
        let (_, logs) = reopen(dir.path());
        for (i, log) in logs.iter().enumerate() {
            assert_eq!(changes(&**log), expected(i, 2), "cut {cut_at} into batch 3");
        }
    }
}

#[test]
fn damaged_commit_log_batch_ends_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write(dir.path(), 3);
    lose_shape_pages(dir.path());
    let wal = dir.path().join("commit.wal");
    let mut bytes = fs::read(&wal).unwrap();
    bytes[ends[0] as usize + 20] ^= 0x40; // inside batch 2
    fs::write(&wal, bytes).unwrap();
    let (_, logs) = reopen(dir.path());
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(changes(&**log), expected(i, 1));
        assert_eq!(log.latest_offset(), LogOffset::new(1, 2));
    }
    // Writing continues after the recovered point (replication refills 2 and 3).
    logs[0]
        .append_change(LogOffset::new(2, 0), &entry(200, 40))
        .unwrap();
    assert_eq!(logs[0].flush().unwrap(), LogOffset::new(2, 0));
}

#[test]
fn damaged_commit_log_header_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 1);
    let wal = dir.path().join("commit.wal");
    let mut bytes = fs::read(&wal).unwrap();
    bytes[2] ^= 1;
    fs::write(&wal, bytes).unwrap();
    assert!(FileStore::open(dir.path(), cfg(100)).is_err());
}

#[test]
fn checkpoint_makes_shape_files_durable_and_resets_the_log() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 2);
    let store = FileStore::open(dir.path(), cfg(100)).unwrap();
    let logs: Vec<_> = store.open_all().unwrap().into_iter().map(|o| o.2).collect();
    logs[1]
        .append_change(LogOffset::new(3, 0), &entry(300, 40))
        .unwrap();
    store.commit(&logs).unwrap();
    assert!(wal_len(dir.path()) > HEADER);
    store.checkpoint().unwrap();
    assert_eq!(wal_len(dir.path()), HEADER);
    assert_eq!(store.commit_stats().checkpoints, 1);
    drop((store, logs));
    let (store, logs) = reopen(dir.path());
    assert_eq!(store.commit_stats().replayed_entries, 0);
    let mut want = expected(1, 2);
    want.push(String::from_utf8(entry(300, 40)).unwrap());
    assert_eq!(changes(&*logs[1]), want);
}

/// A commit writes only the commit log: the shape files get the bytes behind it. They are
/// readable at once (from memory), the writeback puts them in the file soon after without any
/// checkpoint, and a checkpoint writes whatever is still behind before it resets the log.
#[test]
fn committed_bytes_reach_the_shape_files_behind_the_commit_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path(), cfg(1 << 20)).unwrap();
    let log = store.create("s0", b"m").unwrap();
    log.finish_snapshot(END).unwrap();
    let file = dir.path().join("s0/changes.log");
    let size = || fs::metadata(&file).unwrap().len();
    let mut want = Vec::new();
    for b in 1..=3u64 {
        log.append_change(LogOffset::new(b, 0), &entry(b as usize, 40))
            .unwrap();
        store.commit(&[Arc::clone(&log)]).unwrap();
        want.push(String::from_utf8(entry(b as usize, 40)).unwrap());
        assert_eq!(changes(&*log), want, "readable as soon as committed");
    }
    // The writeback (no checkpoint: the commit log still holds the batches).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() < HEADER + 3 * 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "written behind the commit log"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        size(),
        HEADER + 3 * 64,
        "each record written once, in place"
    );
    assert!(wal_len(dir.path()) > HEADER, "no checkpoint was needed");
    assert!(store.commit_stats().writeback_passes >= 1);
    assert_eq!(changes(&*log), want, "read back from the file");
    // A reader at the offset before the last batch (a woken live request) gets exactly it;
    // one further back gets everything after its offset (file and memory together).
    assert_eq!(read(&*log, "2_0").0, want[2..].to_vec());
    assert_eq!(read(&*log, "1_0").0, want[1..].to_vec());
    // A batch still behind when a checkpoint comes: written before the log is reset. The
    // process then dies without any other write (the writeback thread has nothing left).
    log.append_change(LogOffset::new(4, 0), &entry(4, 40))
        .unwrap();
    store.commit(&[Arc::clone(&log)]).unwrap();
    store.checkpoint().unwrap();
    assert_eq!(wal_len(dir.path()), HEADER);
    assert_eq!(
        size(),
        HEADER + 4 * 64,
        "the checkpoint wrote the tail first"
    );
    std::mem::forget((store, log));
    want.push(String::from_utf8(entry(4, 40)).unwrap());
    let (store, logs) = reopen(dir.path());
    assert_eq!(store.commit_stats().replayed_entries, 0);
    assert_eq!(changes(&*logs[0]), want);
}

/// Pipelined group commit: `prepare_commit` takes what is buffered, appends go on meanwhile,
/// and `run_prepared` makes exactly the prepared part durable and visible. A prepared commit
/// that is dropped unrun gives its changes back in front of the later ones, in order.
#[test]
fn a_prepared_commit_covers_exactly_what_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path(), cfg(200)).unwrap();
    let logs: Vec<Arc<dyn ShapeLog>> = (0..2)
        .map(|i| store.create(&format!("s{i}"), b"m").unwrap())
        .collect();
    for log in &logs {
        log.finish_snapshot(END).unwrap();
    }
    let e = |i: usize| String::from_utf8(entry(i, 40)).unwrap();
    let append = |log: &Arc<dyn ShapeLog>, tx: u64, i: usize| {
        log.append_change(LogOffset::new(tx, 0), &entry(i, 40))
            .unwrap()
    };
    for (k, log) in logs.iter().enumerate() {
        append(log, 1, 10 + k);
        append(log, 2, 20 + k);
    }
    let prepared = store
        .prepare_commit(&logs)
        .unwrap()
        .expect("a file store pipelines");
    assert_eq!(prepared.len(), 2);
    // Appends while it is in flight (chunks seal across both parts: threshold 200).
    for (k, log) in logs.iter().enumerate() {
        append(log, 3, 30 + k);
        append(log, 4, 40 + k);
    }
    assert!(
        changes(&*logs[0]).is_empty(),
        "nothing visible before it runs"
    );
    store.run_prepared(prepared).unwrap();
    assert_eq!(changes(&*logs[0]), vec![e(10), e(20)]);
    assert_eq!(logs[1].latest_offset(), LogOffset::new(2, 0));
    // A second one, dropped unrun (a failure gives back the same way): nothing is lost.
    let dropped = store.prepare_commit(&logs).unwrap().expect("pipelines");
    append(&logs[0], 5, 50);
    drop(dropped);
    append(&logs[0], 6, 60);
    store.commit(&logs).unwrap();
    assert_eq!(
        changes(&*logs[0]),
        vec![e(10), e(20), e(30), e(40), e(50), e(60)]
    );
    assert_eq!(changes(&*logs[1]), vec![e(11), e(21), e(31), e(41)]);
    // The same after a crash that lost every shape-file page (replayed from the commit log).
    std::mem::forget((store, logs));
    for i in 0..2 {
        cut(&dir.path().join(format!("s{i}/changes.log")), HEADER);
    }
    let (_, logs) = reopen(dir.path());
    assert_eq!(
        changes(&*logs[0]),
        vec![e(10), e(20), e(30), e(40), e(50), e(60)]
    );
    assert_eq!(changes(&*logs[1]), vec![e(11), e(21), e(31), e(41)]);
}

#[test]
fn a_removed_and_recreated_id_never_gets_old_batches() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 2);
    {
        let store = FileStore::open(dir.path(), cfg(100)).unwrap();
        let logs: Vec<_> = store.open_all().unwrap().into_iter().map(|o| o.2).collect();
        logs[0]
            .append_change(LogOffset::new(3, 0), &entry(300, 40))
            .unwrap();
        store.commit(&logs).unwrap();
        store.remove("s0").unwrap();
        let again = store.create("s0", b"new").unwrap();
        again.finish_snapshot(END).unwrap();
    }
    let (_, logs) = reopen(dir.path());
    assert_eq!(changes(&*logs[0]), Vec::<String>::new());
    assert_eq!(logs[0].latest_offset(), LogOffset::LAST_BEFORE_REAL);
}

/// A transaction larger than the spill threshold (8 MiB per shape) is held on disk, not in
/// memory: its commit fsyncs the shape's log itself (the commit log stays small), every entry
/// reads back in order, the spill file is gone, and after a reopen the same entries are there.
/// Appended and never committed, it is invisible, and a reopen removes its spill file.
#[test]
fn a_transaction_larger_than_the_spill_threshold_commits_through_the_log_itself() {
    let dir = tempfile::tempdir().unwrap();
    let spill = |id: &str| dir.path().join(id).join("changes.spill.tmp");
    let n = 12_000; // × 1 KB: past the 8 MiB threshold
    let want: Vec<String> = (0..n)
        .map(|i| String::from_utf8(entry(i, 1000)).unwrap())
        .collect();
    {
        let store = FileStore::open(dir.path(), cfg(4 << 20)).unwrap();
        let small = store.create("small", b"m").unwrap();
        let big = store.create("big", b"m").unwrap();
        let open = store.create("open", b"m").unwrap();
        for log in [&small, &big, &open] {
            log.finish_snapshot(END).unwrap();
        }
        let wal_before = wal_len(dir.path());
        for (i, json) in want.iter().enumerate() {
            big.append_change(LogOffset::new(7, i as u64), json.as_bytes())
                .unwrap();
        }
        small
            .append_change(LogOffset::new(7, 0), &entry(1, 40))
            .unwrap();
        assert!(spill("big").exists(), "the large transaction spilled");
        assert_eq!(changes(&*big), Vec::<String>::new(), "nothing visible yet");
        for (i, json) in want.iter().enumerate() {
            open.append_change(LogOffset::new(8, i as u64), json.as_bytes())
                .unwrap();
        }
        store
            .commit(&[Arc::clone(&small), Arc::clone(&big)])
            .unwrap();
        let stats = store.commit_stats();
        assert_eq!((stats.batches, stats.log_fsyncs), (1, 1));
        assert!(
            wal_len(dir.path()) - wal_before < 4096,
            "the large transaction's bytes did not go through the commit log"
        );
        assert!(!spill("big").exists(), "spill file removed once committed");
        assert_eq!(changes(&*big), want);
        assert_eq!(changes(&*small), vec![s(&entry(1, 40))]);
        assert_eq!(changes(&*open), Vec::<String>::new());
        assert!(spill("open").exists());
        // `open` is never committed: dropped like a crash before its commit.
    }
    let store = FileStore::open(dir.path(), cfg(4 << 20)).unwrap();
    let logs: std::collections::HashMap<String, _> = store
        .open_all()
        .unwrap()
        .into_iter()
        .map(|(id, _, log)| (id, log))
        .collect();
    assert_eq!(changes(&*logs["big"]), want);
    assert_eq!(changes(&*logs["open"]), Vec::<String>::new());
    assert!(
        !spill("open").exists(),
        "leftover spill file removed on open"
    );
    // The discarded case: append past the threshold, discard, append again, commit.
    let open = &logs["open"];
    for (i, json) in want.iter().enumerate() {
        open.append_change(LogOffset::new(9, i as u64), json.as_bytes())
            .unwrap();
    }
    open.discard_unflushed();
    assert!(!spill("open").exists());
    open.append_change(LogOffset::new(9, 0), &entry(2, 40))
        .unwrap();
    store.commit(&[Arc::clone(open)]).unwrap();
    assert_eq!(changes(&**open), vec![s(&entry(2, 40))]);
}

/// Idle logs hold no open files: a log's files are closed once unused for a whole sweep
/// (`release_idle_files` called twice with no use in between) and reopened on demand by reads,
/// appends and commits, with nothing lost across the close.
#[test]
fn idle_logs_close_their_files_and_reopen_them_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path(), cfg(100)).unwrap();
    let logs: Vec<Arc<dyn ShapeLog>> = (0..50)
        .map(|i| store.create(&format!("s{i}"), b"m").unwrap())
        .collect();
    for log in &logs {
        log.finish_snapshot(END).unwrap();
        log.append_change(LogOffset::new(1, 0), &entry(1, 40))
            .unwrap();
    }
    store.commit(&logs).unwrap();
    // The committed bytes reach the files behind the commit log; a checkpoint writes them now.
    store.checkpoint().unwrap();
    assert!(logs.iter().all(|l| l.open_files() == 2));
    for log in &logs {
        log.release_idle_files(); // used since creation: kept
    }
    assert!(logs.iter().all(|l| l.open_files() == 2));
    for log in &logs {
        log.release_idle_files(); // unused for a whole round: closed
    }
    assert!(logs.iter().all(|l| l.open_files() == 0));
    // Reads, appends and commits reopen; the data is intact.
    let log = &logs[7];
    assert_eq!(changes(&**log), vec![s(&entry(1, 40))]);
    assert_eq!(log.open_files(), 1, "the change file was read");
    assert_eq!(read(&**log, "-1").0, vec![s(END)]);
    assert_eq!(log.open_files(), 2, "and the snapshot file");
    let other = &logs[8];
    other
        .append_change(LogOffset::new(2, 0), &entry(2, 40))
        .unwrap();
    store.commit(&[Arc::clone(other)]).unwrap();
    assert_eq!(
        changes(&**other),
        vec![s(&entry(1, 40)), s(&entry(2, 40))],
        "readable at once (from memory until written)"
    );
    store.checkpoint().unwrap();
    assert_eq!(
        other.open_files(),
        1,
        "writing the commit opened the change file only"
    );
    drop(logs);
    drop(store);
    let store = FileStore::open(dir.path(), cfg(100)).unwrap();
    let reopened: std::collections::HashMap<String, _> = store
        .open_all()
        .unwrap()
        .into_iter()
        .map(|(id, _, log)| (id, log))
        .collect();
    assert!(
        reopened.values().all(|l| l.open_files() == 0),
        "recovery leaves the files closed"
    );
    assert_eq!(
        changes(&*reopened["s8"]),
        vec![s(&entry(1, 40)), s(&entry(2, 40))]
    );
}

/// The later change segments of a shape directory (`changes-<base>.log`), by base.
fn later_segments(shape: &Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut out: Vec<(u64, std::path::PathBuf)> = fs::read_dir(shape)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let base = name
                .strip_prefix("changes-")?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((base, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// With several change segments (4 KiB each at threshold 100), committed batches are replayed
/// into the segment that holds their position: after a power cut that loses the unsynced
/// active segments (finished ones were fsynced when they were finished), every change is back.
#[test]
fn replay_reaches_the_right_segment() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 80);
    for i in 0..2 {
        let shape = dir.path().join(format!("s{i}"));
        let segments = later_segments(&shape);
        assert!(segments.len() >= 2, "rolled: {segments:?}");
        cut(&segments.last().unwrap().1, HEADER);
    }
    let (store, logs) = reopen(dir.path());
    assert!(store.commit_stats().replayed_entries > 0);
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(changes(&**log), expected(i, 80));
        assert_eq!(log.latest_offset(), LogOffset::new(80, 2));
    }
}

/// A committed batch whose segment cannot be opened fails the store's open: it is never
/// skipped, nor written into another segment.
#[test]
fn replay_into_a_segment_that_cannot_be_opened_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 80);
    let shape = dir.path().join("s0");
    let mut later = later_segments(&shape);
    let (_, active) = later.pop().expect("a later segment");
    let first_len = fs::metadata(shape.join("changes.log")).unwrap().len();
    // The active segment is replaced by something that is not a segment file.
    fs::remove_file(&active).unwrap();
    fs::create_dir(&active).unwrap();
    assert!(FileStore::open(dir.path(), cfg(1 << 20)).is_err());
    assert_eq!(
        fs::metadata(shape.join("changes.log")).unwrap().len(),
        first_len,
        "nothing written into another segment"
    );
    assert!(wal_len(dir.path()) > HEADER, "the commit log is kept");
}

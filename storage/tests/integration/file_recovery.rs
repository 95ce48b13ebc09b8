//! File-store-only behaviour: reopen, crash recovery of torn or damaged tails, directories.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shapesync_storage::{
    FileStore, LogOffset, MemoryStore, ReadResult, ShapeLog, ShapeLogStore, SnapshotState,
    StoreError,
};

use crate::support::{cfg, entry, off, read, s};

const END: &[u8] = br#"{"headers":{"control":"snapshot-end"}}"#;

fn store(dir: &Path, threshold: u64) -> FileStore {
    FileStore::open(dir, cfg(threshold)).unwrap()
}

fn reopen(dir: &Path) -> (String, Vec<u8>, Arc<dyn ShapeLog>) {
    // A different threshold in the config must not change existing logs.
    let mut all = store(dir, 1 << 20).open_all().unwrap();
    assert_eq!(all.len(), 1);
    all.remove(0)
}

fn shape_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("s1").join(name)
}

/// Writes a snapshot of several chunks and changes over several chunks plus a tail.
fn fill(log: &dyn ShapeLog, changes: usize) {
    for i in 0..7 {
        log.append_snapshot_row(&entry(i, 20 + i * 7)).unwrap();
    }
    log.finish_snapshot(END).unwrap();
    for i in 0..changes {
        let o = LogOffset::new(10 + i as u64 / 2, (i as u64 % 2) * 2);
        log.append_change(o, &entry(100 + i, 30 + i % 25)).unwrap();
        if i % 4 == 3 {
            log.flush().unwrap();
        }
    }
    log.flush().unwrap();
}

/// Every read a client could make, from -1 to past the end.
type Reads = Vec<(String, Option<(Vec<String>, LogOffset)>)>;

fn all_reads(log: &dyn ShapeLog) -> Reads {
    let mut offsets = vec!["-1".to_owned(), "0_inf".to_owned(), "99_0".to_owned()];
    offsets.extend((0..6).map(|k| format!("0_{k}")));
    offsets.extend(
        (10..22).flat_map(|tx| [format!("{tx}_0"), format!("{tx}_1"), format!("{tx}_inf")]),
    );
    offsets
        .into_iter()
        .map(|o| {
            let r = match log.read(off(&o)).unwrap() {
                ReadResult::NotReady => None,
                chunk => Some(crate::support::chunk(chunk)),
            };
            (o, r)
        })
        .collect()
}

#[test]
fn reopen_keeps_everything_and_chunk_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new(cfg(100));
    let mem_log = mem.create("s1", b"meta").unwrap();
    fill(&*mem_log, 21);
    let before = {
        let log = store(dir.path(), 100).create("s1", b"meta").unwrap();
        fill(&*log, 21);
        assert_eq!(all_reads(&*log), all_reads(&*mem_log));
        all_reads(&*log)
    };
    let (id, meta, log) = reopen(dir.path());
    assert_eq!((id.as_str(), meta.as_slice()), ("s1", &b"meta"[..]));
    assert_eq!(
        log.snapshot_state(),
        SnapshotState {
            sealed_chunks: 3,
            finished: true
        }
    );
    assert_eq!(all_reads(&*log), before);
    assert_eq!(log.latest_offset(), off("20_0"));
    // Appending after a restart continues the open tail chunk exactly as without restart.
    for (i, o) in ["20_2", "21_0", "21_2", "22_0"].iter().enumerate() {
        log.append_change(off(o), &entry(200 + i, 40)).unwrap();
        mem_log.append_change(off(o), &entry(200 + i, 40)).unwrap();
    }
    log.flush().unwrap();
    mem_log.flush().unwrap();
    assert_eq!(all_reads(&*log), all_reads(&*mem_log));
    let size = log.size_bytes();
    drop(log);
    let (_, _, log) = reopen(dir.path());
    assert_eq!(all_reads(&*log), all_reads(&*mem_log));
    assert_eq!(log.size_bytes(), size);
}

fn three_changes(dir: &Path) -> u64 {
    let log = store(dir, 100).create("s1", b"m").unwrap();
    log.finish_snapshot(END).unwrap();
    log.append_change(off("1_0"), b"{\"n\":1}").unwrap();
    log.append_change(off("2_0"), b"{\"n\":2}").unwrap();
    log.flush().unwrap();
    let len_before_last = fs::metadata(shape_file(dir, "changes.log")).unwrap().len();
    log.append_change(off("3_0"), b"{\"n\":3}").unwrap();
    log.flush().unwrap();
    len_before_last
}

fn check_cut_after_two(dir: &Path, len_before_last: u64) {
    let (_, _, log) = reopen(dir);
    let two = vec!["{\"n\":1}".to_owned(), "{\"n\":2}".to_owned()];
    assert_eq!(read(&*log, "0_inf"), (two, off("2_0")));
    assert_eq!(log.latest_offset(), off("2_0"));
    let len = fs::metadata(shape_file(dir, "changes.log")).unwrap().len();
    assert_eq!(len, len_before_last, "torn record truncated away");
    // The lost offset can be written again, and the log keeps working across restarts.
    log.append_change(off("3_0"), b"{\"n\":33}").unwrap();
    log.flush().unwrap();
    drop(log);
    let (_, _, log) = reopen(dir);
    assert_eq!(
        read(&*log, "2_0"),
        (vec!["{\"n\":33}".to_owned()], off("3_0"))
    );
}

#[test]
fn torn_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let len_before_last = three_changes(dir.path());
    let path = shape_file(dir.path(), "changes.log");
    let len = fs::metadata(&path).unwrap().len();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len_before_last + (len - len_before_last) / 2)
        .unwrap();
    drop(file);
    check_cut_after_two(dir.path(), len_before_last);
}

#[test]
fn checksum_mismatch_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let len_before_last = three_changes(dir.path());
    let path = shape_file(dir.path(), "changes.log");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 2; // inside the last record's JSON payload
    bytes[last] ^= 0x20;
    fs::write(&path, bytes).unwrap();
    check_cut_after_two(dir.path(), len_before_last);
}

#[test]
fn unfinished_snapshot_reports_not_finished() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = store(dir.path(), 100).create("s1", b"m").unwrap();
        for i in 0..5 {
            log.append_snapshot_row(&entry(i, 29)).unwrap(); // 4 rows seal chunk 0
        }
        assert_eq!(log.snapshot_state().sealed_chunks, 1);
    }
    let (_, _, log) = reopen(dir.path());
    assert_eq!(
        log.snapshot_state(),
        SnapshotState {
            sealed_chunks: 1,
            finished: false
        }
    );
    let rows: Vec<String> = (0..4).map(|i| s(&entry(i, 29))).collect();
    assert_eq!(read(&*log, "-1"), (rows, off("0_0")));
    assert_eq!(log.read(off("0_0")).unwrap(), ReadResult::NotReady);
}

#[test]
fn torn_finish_marker_means_not_finished() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = store(dir.path(), 100).create("s1", b"m").unwrap();
        log.append_snapshot_row(&entry(0, 29)).unwrap();
        log.finish_snapshot(END).unwrap();
    }
    let path = shape_file(dir.path(), "snapshot.log");
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let (_, _, log) = reopen(dir.path());
    assert_eq!(
        log.snapshot_state(),
        SnapshotState {
            sealed_chunks: 1,
            finished: false
        }
    );
}

#[test]
fn damaged_header_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), 100).create("s1", b"m").unwrap();
    let path = shape_file(dir.path(), "changes.log");
    let mut bytes = fs::read(&path).unwrap();
    bytes[7] ^= 1; // inside the threshold
    fs::write(&path, bytes).unwrap();
    let err = store(dir.path(), 100).open_all().map(|_| ()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[test]
fn remove_deletes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), 100);
    st.create("s1", b"m").unwrap();
    assert!(dir.path().join("s1").is_dir());
    st.remove("s1").unwrap();
    assert!(!dir.path().join("s1").exists());
    assert!(st.open_all().unwrap().is_empty());
}

#[test]
fn bad_id_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), 100);
    for bad in ["../escape", "a/b", ""] {
        assert!(matches!(st.create(bad, b""), Err(StoreError::InvalidId(_))));
    }
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["commit.wal"], "only the store's commit log");
}

#[test]
fn interrupted_create_and_temp_files_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path(), 100);
    st.create("good", b"m").unwrap();
    // A crash during create: directory and logs exist, meta only as a temp file.
    fs::create_dir(dir.path().join("half")).unwrap();
    fs::write(dir.path().join("half/meta.tmp"), b"partial").unwrap();
    // A damaged meta file is as good as none.
    fs::create_dir(dir.path().join("badmeta")).unwrap();
    fs::write(dir.path().join("badmeta/meta"), b"SSMTxx").unwrap();
    fs::write(dir.path().join("good/meta.tmp"), b"leftover").unwrap();
    fs::write(dir.path().join("stray.tmp"), b"x").unwrap();
    fs::write(dir.path().join("README"), b"not ours").unwrap();
    let all = st.open_all().unwrap();
    assert_eq!(
        all.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    assert!(!dir.path().join("half").exists());
    assert!(!dir.path().join("badmeta").exists());
    assert!(!dir.path().join("good/meta.tmp").exists());
    assert!(!dir.path().join("stray.tmp").exists());
    assert!(dir.path().join("README").exists());
}

/// A compacted chunk is its own file: it survives a reopen (and later candidates start after
/// it); a damaged one is ignored in favour of the original chunk; a leftover `.tmp` of an
/// interrupted write and a file naming no sealed chunk are removed on open.
#[test]
fn compacted_chunks_across_reopen_and_damage() {
    let dir = tempfile::tempdir().unwrap();
    let log = store(dir.path(), 100).create("s1", b"m").unwrap();
    log.finish_snapshot(END).unwrap();
    for (i, o) in ["10_0", "10_2", "20_0", "20_2", "30_0", "30_2", "40_0"]
        .iter()
        .enumerate()
    {
        log.append_change(off(o), &entry(i, 49)).unwrap();
    }
    log.flush().unwrap();
    let (end, _) = log.compaction_candidate().unwrap().unwrap();
    assert_eq!(end, off("10_2"));
    log.store_compacted(end, None).unwrap();
    let (end, entries2) = log.compaction_candidate().unwrap().unwrap();
    assert_eq!(end, off("20_2"));
    let kept = vec![entries2[1].clone()];
    log.store_compacted(end, Some(&kept)).unwrap();
    let want = read(&*log, "20_0");
    assert_eq!(want, (vec![s(&entries2[1].1)], off("20_2")));
    drop(log);
    fs::write(shape_file(dir.path(), "compacted-30_2.chunk.tmp"), b"half").unwrap();
    fs::write(shape_file(dir.path(), "compacted-99_0.chunk"), b"stale").unwrap();

    let (_, _, log) = reopen(dir.path());
    assert!(!shape_file(dir.path(), "compacted-30_2.chunk.tmp").exists());
    assert!(!shape_file(dir.path(), "compacted-99_0.chunk").exists());
    assert_eq!(read(&*log, "20_0"), want, "the compacted form survives");
    assert!(matches!(
        log.read(off("10_2")).unwrap(),
        ReadResult::Chunk {
            compacted: true,
            ..
        }
    ));
    // Chunks before the compacted one are not offered again; later ones are.
    let (next, _) = log.compaction_candidate().unwrap().unwrap();
    assert_eq!(next, off("30_2"));

    // Damage: one flipped byte. The original chunk is served, and stays served.
    let path = shape_file(dir.path(), "compacted-20_2.chunk");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    for _ in 0..2 {
        match log.read(off("20_0")).unwrap() {
            ReadResult::Chunk {
                entries, compacted, ..
            } => assert_eq!((entries.len(), compacted), (1, false)),
            other => panic!("{other:?}"),
        }
        assert_eq!(read(&*log, "10_2").0.len(), 2, "the original chunk");
    }
}

/// Every answer a client can get from the change part: from `0_inf` and from each offset.
fn change_reads(log: &dyn ShapeLog, offsets: &[LogOffset]) -> Vec<(Vec<String>, LogOffset)> {
    std::iter::once(LogOffset::LAST_BEFORE_REAL)
        .chain(offsets.iter().copied())
        .map(|o| read(log, &o.to_string()))
        .collect()
}

fn names(dir: &Path, prefix: &str, suffix: &str) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir.join("s1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .collect();
    out.sort_by_key(|n| n.len());
    out
}

/// The change part rolls over to new segment files (4 KiB at threshold 100); each finished
/// segment's part of the chunk index is written beside it, so opening reads the indexes and
/// scans only the last segment. A missing or damaged index is rebuilt by scanning; a torn tail
/// of the last segment is cut; damage inside a finished segment that must be scanned is an
/// error, never a silent truncation of the segments after it. Reads equal the memory store's
/// throughout, and writing continues (and rolls) after a reopen.
#[test]
fn segments_roll_and_open_from_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new(cfg(100));
    let mem_log = mem.create("s1", b"m").unwrap();
    let log = store(dir.path(), 100).create("s1", b"m").unwrap();
    let mut offsets = Vec::new();
    let append = |logs: [&Arc<dyn ShapeLog>; 2], offsets: &mut Vec<LogOffset>, n: u64| {
        let start = offsets.len() as u64;
        for i in start..start + n {
            let o = LogOffset::new(10 + i / 3, (i % 3) * 2);
            for l in logs {
                l.append_change(o, &entry(i as usize, 30 + i as usize % 25))
                    .unwrap();
                if i % 7 == 6 {
                    l.flush().unwrap();
                }
            }
            offsets.push(o);
        }
        for l in logs {
            l.flush().unwrap();
        }
    };
    for l in [&log, &mem_log] {
        l.finish_snapshot(END).unwrap();
    }
    append([&log, &mem_log], &mut offsets, 600);
    let want = change_reads(&*mem_log, &offsets);
    assert_eq!(change_reads(&*log, &offsets), want);
    let segments = names(dir.path(), "changes-", ".log");
    let indexes = names(dir.path(), "chunks-", ".idx");
    assert!(segments.len() >= 5, "{segments:?}");
    assert_eq!(
        indexes.len(),
        segments.len(),
        "one index per finished segment"
    );
    drop(log);

    let (_, _, log) = reopen(dir.path());
    assert_eq!(
        change_reads(&*log, &offsets),
        want,
        "opened from the indexes"
    );
    drop(log);
    let s1 = dir.path().join("s1");
    fs::remove_file(s1.join(&indexes[0])).unwrap();
    fs::write(s1.join(&indexes[2]), b"SSCI garbage").unwrap();
    let mut bytes = fs::read(s1.join(&indexes[3])).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 1;
    fs::write(s1.join(&indexes[3]), bytes).unwrap();
    let (_, _, log) = reopen(dir.path());
    assert_eq!(
        change_reads(&*log, &offsets),
        want,
        "indexes rebuilt by scanning"
    );
    assert!(
        s1.join(&indexes[0]).exists(),
        "a missing index is written again"
    );
    assert_ne!(
        fs::read(s1.join(&indexes[2])).unwrap(),
        b"SSCI garbage",
        "and a damaged one"
    );

    // Writing continues in the last segment and rolls again, exactly like the memory store.
    append([&log, &mem_log], &mut offsets, 300);
    let want = change_reads(&*mem_log, &offsets);
    assert_eq!(change_reads(&*log, &offsets), want);
    assert!(names(dir.path(), "changes-", ".log").len() > segments.len());
    drop(log);

    // A torn tail of the last segment is cut.
    let last = names(dir.path(), "changes-", ".log").pop().unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(s1.join(&last))
        .unwrap();
    std::io::Write::write_all(&mut f, &[40, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let (_, _, log) = reopen(dir.path());
    assert_eq!(change_reads(&*log, &offsets), want, "torn tail cut");
    drop(log);

    // Damage inside a finished segment: with its index, opening does not even read it (only
    // the last segment is scanned) ...
    let first_later = &names(dir.path(), "changes-", ".log")[0];
    let base: u64 = first_later["changes-".len()..first_later.len() - 4]
        .parse()
        .unwrap();
    let seg = s1.join(first_later);
    let len_before = fs::metadata(&seg).unwrap().len();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[200] ^= 0x40;
    fs::write(&seg, bytes).unwrap();
    let (_, _, log) = reopen(dir.path());
    assert_eq!(log.latest_offset(), *offsets.last().unwrap());
    drop(log);
    // ... and without it: an error, nothing truncated.
    fs::remove_file(s1.join(format!("chunks-{base}.idx"))).unwrap();
    let err = store(dir.path(), 100)
        .open_all()
        .err()
        .expect("damage is reported");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert_eq!(fs::metadata(&seg).unwrap().len(), len_before);
}

/// Once every chunk overlapping a finished segment is stored compacted, the segment's records
/// are given back (the file is cut to its header): reads, reopening and writing go on exactly
/// as in the memory store given the same compactions.
#[test]
fn fully_compacted_segments_give_their_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemoryStore::new(cfg(100));
    let mem_log = mem.create("s1", b"m").unwrap();
    let log = store(dir.path(), 100).create("s1", b"m").unwrap();
    let mut offsets = Vec::new();
    for l in [&log, &mem_log] {
        l.finish_snapshot(END).unwrap();
    }
    for i in 0..400u64 {
        let o = LogOffset::new(10 + i, 0);
        for l in [&log, &mem_log] {
            l.append_change(o, &entry(i as usize, 40)).unwrap();
            if i % 5 == 4 {
                l.flush().unwrap();
            }
        }
        offsets.push(o);
    }
    for l in [&log, &mem_log] {
        l.flush().unwrap();
    }
    let segments = names(dir.path(), "changes-", ".log");
    assert!(segments.len() >= 3, "{segments:?}");
    let s1 = dir.path().join("s1");
    let size = |name: &str| fs::metadata(s1.join(name)).unwrap().len();
    let before: u64 = segments.iter().map(|n| size(n)).sum::<u64>() + size("changes.log");
    let logical = log.size_bytes();
    // Compact every sealed chunk down to its last entry, in both stores.
    while let Some((end, entries)) = log.compaction_candidate().unwrap() {
        let kept = [entries.last().unwrap().clone()];
        log.store_compacted(end, Some(&kept)).unwrap();
        mem_log.store_compacted(end, Some(&kept)).unwrap();
    }
    let want = change_reads(&*mem_log, &offsets);
    assert_eq!(change_reads(&*log, &offsets), want);
    assert_eq!(size("changes.log"), 18, "the first segment is given back");
    let after: u64 = segments.iter().map(|n| size(n)).sum::<u64>() + size("changes.log");
    assert!(after * 3 < before, "{before} bytes → {after}");
    let counted = log.size_bytes();
    assert!(
        counted * 3 < logical,
        "size_bytes counts what is on disk: {counted}"
    );
    drop(log);
    let (_, _, log) = reopen(dir.path());
    assert_eq!(change_reads(&*log, &offsets), want, "after a reopen");
    assert_eq!(log.size_bytes(), counted, "and after a reopen");
    // Writing goes on, and so does compaction.
    for i in 400..500u64 {
        let o = LogOffset::new(10 + i, 0);
        for l in [&log, &mem_log] {
            l.append_change(o, &entry(i as usize, 40)).unwrap();
        }
        offsets.push(o);
    }
    for l in [&log, &mem_log] {
        l.flush().unwrap();
    }
    assert_eq!(
        change_reads(&*log, &offsets),
        change_reads(&*mem_log, &offsets)
    );
}

/// `visit_compaction_candidate` reads a chunk in pieces: entries cut by a piece's end, and an
/// entry larger than a piece, come out whole, the same as `compaction_candidate` gives them.
#[test]
fn visiting_a_large_chunk_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let log = store(dir.path(), 1 << 20).create("s1", b"m").unwrap();
    log.finish_snapshot(END).unwrap();
    for i in 0..1_100u64 {
        let len = if i == 500 {
            300_000
        } else {
            600 + (i as usize * 37) % 900
        };
        log.append_change(LogOffset::new(10 + i, 0), &entry(i as usize, len))
            .unwrap();
        if i % 100 == 99 {
            log.flush().unwrap();
        }
    }
    log.flush().unwrap();
    let (end, want) = log.compaction_candidate().unwrap().expect("a sealed chunk");
    assert!(want.iter().map(|e| e.1.len()).sum::<usize>() > 900_000);
    let mut got = Vec::new();
    let mut scratch = Vec::new();
    let visited = log
        .visit_compaction_candidate(&mut scratch, &mut |o, json| {
            got.push((o, bytes::Bytes::copy_from_slice(json)))
        })
        .unwrap();
    assert_eq!(visited, Some(end));
    assert_eq!(got, want);
    assert!(
        scratch.capacity() < 600_000,
        "read in pieces: {}",
        scratch.capacity()
    );
}

/// A segment is given back only after its index and every compacted file of its chunks read
/// back intact: with one of them damaged, the segment keeps its records (and serves them).
#[test]
fn a_segment_is_not_given_back_while_a_compacted_file_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let log = store(dir.path(), 100).create("s1", b"m").unwrap();
    log.finish_snapshot(END).unwrap();
    let mut offsets = Vec::new();
    for i in 0..200u64 {
        let o = LogOffset::new(10 + i, 0);
        log.append_change(o, &entry(i as usize, 40)).unwrap();
        if i % 5 == 4 {
            log.flush().unwrap();
        }
        offsets.push(o);
    }
    log.flush().unwrap();
    let s1 = dir.path().join("s1");
    let first_len = fs::metadata(s1.join("changes.log")).unwrap().len();
    // Compact the first chunk, damage its file, then compact the rest of the first segment.
    let (end, entries) = log.compaction_candidate().unwrap().unwrap();
    log.store_compacted(end, Some(&entries[entries.len() - 1..]))
        .unwrap();
    let damaged = s1.join(format!("compacted-{end}.chunk"));
    let mut bytes = fs::read(&damaged).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 1;
    fs::write(&damaged, bytes).unwrap();
    while let Some((end, entries)) = log.compaction_candidate().unwrap() {
        log.store_compacted(end, Some(&entries[entries.len() - 1..]))
            .unwrap();
    }
    assert_eq!(
        fs::metadata(s1.join("changes.log")).unwrap().len(),
        first_len,
        "kept: one of its compacted files is damaged"
    );
    // The damaged chunk is served from its records.
    let (entries, chunk_end) = read(&*log, "0_inf");
    assert_eq!(chunk_end, offsets[entries.len() - 1]);
    assert!(
        entries.len() > 1,
        "the original chunk, not its compacted form"
    );
}

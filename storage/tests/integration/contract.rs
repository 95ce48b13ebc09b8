//! The contract of `ShapeLogStore`/`ShapeLog`, written once and run over every
//! implementation by `contract_suite!`.

use std::sync::Arc;

use shapesync_storage::{LogOffset, ReadResult, SealedRead, ShapeLog, SnapshotState, StoreError};

use crate::support::{entry, off, read, s, wait_until, Fixture};

type Entries = Vec<(LogOffset, bytes::Bytes)>;

const END: &[u8] = br#"{"headers":{"control":"snapshot-end"}}"#;

macro_rules! contract_suite {
    ($name:ident, $make:path) => {
        mod $name {
            macro_rules! case {
                ($test:ident) => {
                    #[test]
                    fn $test() {
                        super::$test($make);
                    }
                };
            }
            case!(snapshot_chunking);
            case!(zero_row_snapshot);
            case!(not_ready_before_sealing);
            case!(changes_invisible_before_flush);
            case!(discard_unflushed_returns_to_the_durable_point);
            case!(seek_across_change_chunks);
            case!(offset_not_increasing);
            case!(concurrent_reader_while_writing);
            case!(store_lifecycle);
            case!(read_sealed_only_returns_sealed_chunks);
            case!(group_commit_across_logs);
            case!(compaction_replaces_sealed_chunks);
        }
    };
}

contract_suite!(memory, crate::support::memory);
contract_suite!(file, crate::support::file);

type Make = fn(u64) -> Fixture;

fn new_log(fx: &Fixture) -> Arc<dyn ShapeLog> {
    fx.store.create("shape-1", b"meta").expect("create")
}

fn strings(rows: &[Vec<u8>]) -> Vec<String> {
    rows.iter().map(|r| s(r)).collect()
}

fn snapshot_chunking(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    // 30 bytes per row (29 + 1): three rows make 90, the fourth reaches 120 >= 100 and seals
    // chunk 0 right after itself (one-row overshoot).
    let rows: Vec<Vec<u8>> = (0..4).map(|i| entry(i, 29)).collect();
    for row in &rows[..3] {
        log.append_snapshot_row(row).unwrap();
    }
    assert_eq!(
        log.read(LogOffset::BEFORE_ALL).unwrap(),
        ReadResult::NotReady
    );
    log.append_snapshot_row(&rows[3]).unwrap();
    let state = SnapshotState {
        sealed_chunks: 1,
        finished: false,
    };
    assert_eq!(log.snapshot_state(), state);
    assert_eq!(read(&*log, "-1"), (strings(&rows), off("0_0")));
    // Exactly at the threshold (50 + 50 = 100) seals too; a single big row seals alone.
    let exact = [entry(10, 49), entry(11, 49)];
    log.append_snapshot_row(&exact[0]).unwrap();
    assert_eq!(log.read(off("0_0")).unwrap(), ReadResult::NotReady);
    log.append_snapshot_row(&exact[1]).unwrap();
    let big = entry(12, 150);
    log.append_snapshot_row(&big).unwrap();
    assert_eq!(log.snapshot_state().sealed_chunks, 3);
    assert_eq!(read(&*log, "0_0"), (strings(&exact), off("0_1")));
    assert_eq!(read(&*log, "0_1"), (vec![s(&big)], off("0_2")));
    // The last chunk: two rows plus the snapshot-end message.
    let tail = [entry(13, 20), entry(14, 20)];
    for row in &tail {
        log.append_snapshot_row(row).unwrap();
    }
    assert_eq!(log.read(off("0_2")).unwrap(), ReadResult::NotReady);
    log.finish_snapshot(END).unwrap();
    let state = SnapshotState {
        sealed_chunks: 4,
        finished: true,
    };
    assert_eq!(log.snapshot_state(), state);
    let mut last = strings(&tail);
    last.push(s(END));
    assert_eq!(read(&*log, "0_2"), (last, off("0_3")));
    // Past the end of the snapshot: the change part (empty, latest = 0_inf).
    for after in ["0_3", "0_7", "0_inf"] {
        assert_eq!(read(&*log, after), (vec![], LogOffset::LAST_BEFORE_REAL));
    }
    // Re-reading is stable (ETag determinism).
    assert_eq!(read(&*log, "-1"), (strings(&rows), off("0_0")));
}

fn zero_row_snapshot(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    assert_eq!(
        log.snapshot_state(),
        SnapshotState {
            sealed_chunks: 0,
            finished: false
        }
    );
    assert_eq!(
        log.read(LogOffset::BEFORE_ALL).unwrap(),
        ReadResult::NotReady
    );
    log.finish_snapshot(END).unwrap();
    assert_eq!(
        log.snapshot_state(),
        SnapshotState {
            sealed_chunks: 1,
            finished: true
        }
    );
    assert_eq!(read(&*log, "-1"), (vec![s(END)], off("0_0")));
    assert_eq!(read(&*log, "0_0"), (vec![], off("0_inf")));
    assert_eq!(log.latest_offset(), LogOffset::LAST_BEFORE_REAL);
    assert!(matches!(
        log.finish_snapshot(END),
        Err(StoreError::SnapshotFinished)
    ));
    assert!(matches!(
        log.append_snapshot_row(b"{}"),
        Err(StoreError::SnapshotFinished)
    ));
}

fn not_ready_before_sealing(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    log.append_snapshot_row(&entry(0, 30)).unwrap();
    assert_eq!(
        log.read(LogOffset::BEFORE_ALL).unwrap(),
        ReadResult::NotReady
    );
    assert_eq!(log.read(off("0_0")).unwrap(), ReadResult::NotReady);
    // Changes may arrive while the snapshot is written; they live in the change part.
    log.append_change(off("5_0"), b"{\"c\":1}").unwrap();
    assert_eq!(log.flush().unwrap(), off("5_0"));
    assert_eq!(log.read(off("0_0")).unwrap(), ReadResult::NotReady);
    assert_eq!(
        read(&*log, "0_inf"),
        (vec!["{\"c\":1}".to_owned()], off("5_0"))
    );
}

fn changes_invisible_before_flush(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    log.finish_snapshot(END).unwrap();
    let size0 = log.size_bytes();
    log.append_change(off("1_0"), b"{\"a\":1}").unwrap();
    log.append_change(off("1_2"), b"{\"a\":2}").unwrap();
    assert_eq!(log.latest_offset(), LogOffset::LAST_BEFORE_REAL);
    assert_eq!(read(&*log, "0_inf"), (vec![], off("0_inf")));
    assert_eq!(read(&*log, "0_0"), (vec![], off("0_inf")));
    assert_eq!(log.flush().unwrap(), off("1_2"));
    assert_eq!(log.latest_offset(), off("1_2"));
    let both = vec!["{\"a\":1}".to_owned(), "{\"a\":2}".to_owned()];
    assert_eq!(read(&*log, "0_0"), (both, off("1_2")));
    assert_eq!(
        read(&*log, "1_0"),
        (vec!["{\"a\":2}".to_owned()], off("1_2"))
    );
    assert!(log.size_bytes() > size0);
    // An empty flush changes nothing.
    assert_eq!(log.flush().unwrap(), off("1_2"));
}

fn discard_unflushed_returns_to_the_durable_point(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    log.finish_snapshot(END).unwrap();
    let e: Vec<String> = (0..4).map(|i| s(&entry(i, 49))).collect();
    log.append_change(off("10_0"), e[0].as_bytes()).unwrap();
    log.flush().unwrap();
    // Appended but never flushed: discarded, including the chunk boundary it sealed.
    log.append_change(off("10_2"), e[1].as_bytes()).unwrap();
    log.append_change(off("20_0"), e[2].as_bytes()).unwrap();
    log.discard_unflushed();
    assert_eq!(log.latest_offset(), off("10_0"));
    // The same offsets can be appended again, and chunking continues as if never discarded.
    log.append_change(off("10_2"), e[1].as_bytes()).unwrap();
    log.append_change(off("20_0"), e[2].as_bytes()).unwrap();
    log.append_change(off("30_0"), e[3].as_bytes()).unwrap();
    assert_eq!(log.flush().unwrap(), off("30_0"));
    assert_eq!(
        read(&*log, "0_inf"),
        (vec![e[0].clone(), e[1].clone()], off("10_2"))
    );
    assert_eq!(
        read(&*log, "10_2"),
        (vec![e[2].clone(), e[3].clone()], off("30_0"))
    );
}

fn seek_across_change_chunks(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    log.finish_snapshot(END).unwrap();
    // 50 bytes each: every second entry seals a chunk; a boundary falls inside tx 10.
    let offsets = ["10_0", "10_2", "10_4", "20_0", "20_2", "30_0", "40_0"];
    let e: Vec<String> = (0..offsets.len()).map(|i| s(&entry(i, 49))).collect();
    for (o, json) in offsets.iter().zip(&e) {
        log.append_change(off(o), json.as_bytes()).unwrap();
    }
    assert_eq!(
        log.read(off("20_0")).unwrap(),
        log.read(off("0_inf")).unwrap()
    ); // not flushed
    log.flush().unwrap();
    let cases: &[(&str, &[usize], &str)] = &[
        ("0_0", &[0, 1], "10_2"),
        ("0_inf", &[0, 1], "10_2"),
        ("9_5", &[0, 1], "10_2"),
        ("10_0", &[1], "10_2"),
        ("10_1", &[1], "10_2"),
        ("10_2", &[2, 3], "20_0"),
        ("10_3", &[2, 3], "20_0"),
        ("10_inf", &[3], "20_0"),
        ("19_0", &[3], "20_0"), // fabricated "(tx-1)_op"
        ("20_0", &[4, 5], "30_0"),
        ("29_9", &[5], "30_0"),
        ("30_0", &[6], "40_0"), // open tail chunk: end = latest
        ("35_0", &[6], "40_0"),
        ("40_0", &[], "40_0"), // nothing after: empty, end = latest
        ("99_0", &[], "40_0"),
    ];
    for (after, want, end) in cases {
        let want: Vec<String> = want.iter().map(|&i| e[i].clone()).collect();
        assert_eq!(read(&*log, after), (want, off(end)), "after {after}");
    }
    assert_eq!(read(&*log, "-1"), (vec![s(END)], off("0_0")));
}

fn offset_not_increasing(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    log.append_change(off("5_2"), b"{}").unwrap();
    for bad in ["5_2", "5_0", "4_9", "0_7", "0_inf", "-1"] {
        let err = log.append_change(off(bad), b"{}").unwrap_err();
        assert!(
            matches!(err, StoreError::OffsetNotIncreasing { .. }),
            "{bad}: {err}"
        );
    }
    assert!(matches!(
        log.append_change(off("6_inf"), b"{}"),
        Err(StoreError::InvalidOffset(_))
    ));
    log.flush().unwrap();
    assert!(log.append_change(off("5_2"), b"{}").is_err());
    log.append_change(off("5_4"), b"{}").unwrap();
    log.flush().unwrap();
    assert_eq!(log.latest_offset(), off("5_4"));
    // A fresh log rejects tx 0.
    let other = fx.store.create("other", b"").unwrap();
    assert!(matches!(
        other.append_change(off("0_3"), b"{}"),
        Err(StoreError::OffsetNotIncreasing { .. })
    ));
}

fn concurrent_reader_while_writing(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    let rows: Vec<Vec<u8>> = (0..60).map(|i| entry(i, 20 + i % 50)).collect();
    let changes: Vec<(LogOffset, Vec<u8>)> = (0..300u64)
        .map(|i| {
            (
                LogOffset::new(100 + i / 3, (i % 3) * 2),
                entry(i as usize, 40),
            )
        })
        .collect();
    let final_offset = changes.last().unwrap().0;
    std::thread::scope(|scope| {
        let writer = Arc::clone(&log);
        let (rows_ref, changes_ref) = (&rows, &changes);
        scope.spawn(move || {
            for row in rows_ref {
                writer.append_snapshot_row(row).unwrap();
            }
            // Changes interleave with the snapshot writer's last steps.
            for (i, (o, json)) in changes_ref.iter().enumerate() {
                writer.append_change(*o, json).unwrap();
                if i == 10 {
                    writer.finish_snapshot(END).unwrap();
                }
                if i % 7 == 0 {
                    writer.flush().unwrap();
                }
            }
            writer.flush().unwrap();
        });
        // The reader follows the log like a client: read, continue from `end`.
        let mut got = Vec::new();
        let mut after = LogOffset::BEFORE_ALL;
        wait_until("the reader to reach the final offset", || {
            match log.read(after).unwrap() {
                ReadResult::NotReady => {}
                ReadResult::Chunk { entries, end, .. } => {
                    assert!(end >= after || after.is_before_all());
                    got.extend(entries.iter().map(|b| b.to_vec()));
                    after = end;
                }
            }
            after == final_offset
        });
        let mut want = rows.clone();
        want.push(END.to_vec());
        want.extend(changes.iter().map(|(_, j)| j.clone()));
        assert_eq!(got.len(), want.len());
        assert!(got == want, "reader saw entries out of order or duplicated");
    });
}

fn store_lifecycle(make: Make) {
    let fx = make(100);
    let too_long = "a".repeat(101);
    for bad in ["", "a/b", "..", ".", "a b", "é", too_long.as_str(), "x.tmp"] {
        assert!(
            matches!(fx.store.create(bad, b""), Err(StoreError::InvalidId(_))),
            "{bad:?}"
        );
    }
    let ok = "A-z_09".to_owned() + &"b".repeat(94);
    let log = fx.store.create(&ok, b"m1").unwrap();
    log.finish_snapshot(END).unwrap();
    fx.store.create("second", b"m2").unwrap();
    assert!(matches!(
        fx.store.create("second", b""),
        Err(StoreError::AlreadyExists(_))
    ));
    let all = fx.store.open_all().unwrap();
    let ids: Vec<(&str, &[u8])> = all
        .iter()
        .map(|(i, m, _)| (i.as_str(), m.as_slice()))
        .collect();
    assert_eq!(ids, vec![(ok.as_str(), &b"m1"[..]), ("second", &b"m2"[..])]);
    fx.store.remove("second").unwrap();
    assert!(matches!(
        fx.store.remove("second"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        fx.store.remove("../x"),
        Err(StoreError::InvalidId(_))
    ));
    let all = fx.store.open_all().unwrap();
    assert_eq!(all.len(), 1);
    // The store is usable for a new shape with a removed id.
    fx.store.create("second", b"m3").unwrap();
}

/// `read_sealed` returns exactly the chunk `read` would, whole and with offsets, but only when
/// it is sealed: snapshot chunks once the snapshot is finished, change chunks once their end
/// boundary is durable; never the open tail.
fn read_sealed_only_returns_sealed_chunks(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    log.append_snapshot_row(&entry(0, 99)).unwrap(); // seals 0_0
    assert_eq!(log.snapshot_state().sealed_chunks, 1);
    assert_eq!(
        log.read_sealed(LogOffset::BEFORE_ALL).unwrap(),
        None,
        "unfinished"
    );
    log.finish_snapshot(END).unwrap();
    let Some(SealedRead::Snapshot { k: 0, entries }) = log.read_sealed(off("-1")).unwrap() else {
        panic!("expected snapshot chunk 0");
    };
    assert_eq!(entries, vec![bytes::Bytes::from(entry(0, 99))]);
    let Some(SealedRead::Snapshot { k: 1, entries }) = log.read_sealed(off("0_0")).unwrap() else {
        panic!("expected snapshot chunk 1");
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(log.read_sealed(off("0_1")).unwrap(), None, "no change yet");
    // 50 bytes each: every second entry seals a change chunk.
    for (i, o) in ["10_0", "10_2", "20_0"].iter().enumerate() {
        log.append_change(off(o), &entry(i, 49)).unwrap();
    }
    assert_eq!(log.read_sealed(off("0_1")).unwrap(), None, "not flushed");
    log.flush().unwrap();
    let want = SealedRead::Changes {
        entries: vec![
            (off("10_0"), bytes::Bytes::from(entry(0, 49))),
            (off("10_2"), bytes::Bytes::from(entry(1, 49))),
        ],
        compacted: false,
    };
    assert_eq!(log.read_sealed(off("0_1")).unwrap(), Some(want.clone()));
    assert_eq!(
        log.read_sealed(off("10_0")).unwrap(),
        Some(want),
        "whole chunk"
    );
    assert_eq!(log.read_sealed(off("10_2")).unwrap(), None, "open tail");
    assert_eq!(log.read_sealed(off("20_0")).unwrap(), None, "nothing after");
    log.append_change(off("30_0"), &entry(3, 49)).unwrap();
    log.flush().unwrap();
    assert!(matches!(
        log.read_sealed(off("10_2")).unwrap(),
        Some(SealedRead::Changes { entries, .. }) if entries.len() == 2
    ));
}

/// `commit` makes the buffered changes of several logs visible together, chunking exactly as
/// per-log flushes would; logs with nothing buffered and empty batches are fine.
fn group_commit_across_logs(make: Make) {
    let fx = make(100);
    let logs: Vec<Arc<dyn ShapeLog>> = (0..3)
        .map(|i| fx.store.create(&format!("g{i}"), b"m").unwrap())
        .collect();
    for log in &logs {
        log.finish_snapshot(END).unwrap();
    }
    fx.store.commit(&logs).unwrap();
    fx.store.commit(&[]).unwrap();
    for round in 0..5u64 {
        for (i, log) in logs.iter().enumerate().take(2) {
            for op in 0..3 {
                let json = entry(round as usize * 10 + i, 30 + op as usize);
                log.append_change(LogOffset::new(round + 1, op * 2), &json)
                    .unwrap();
            }
        }
        let before = match round {
            0 => LogOffset::LAST_BEFORE_REAL,
            r => LogOffset::new(r, 4),
        };
        assert_eq!(
            logs[0].latest_offset(),
            before,
            "invisible until the commit"
        );
        fx.store.commit(&logs).unwrap();
        assert_eq!(logs[0].latest_offset(), LogOffset::new(round + 1, 4));
        assert_eq!(logs[1].latest_offset(), LogOffset::new(round + 1, 4));
        assert_eq!(logs[2].latest_offset(), LogOffset::LAST_BEFORE_REAL);
    }
    // Same chunks as a log written with per-log flushes.
    let single = fx.store.create("single", b"m").unwrap();
    single.finish_snapshot(END).unwrap();
    for round in 0..5u64 {
        for op in 0..3 {
            let json = entry(round as usize * 10, 30 + op as usize);
            single
                .append_change(LogOffset::new(round + 1, op * 2), &json)
                .unwrap();
        }
        single.flush().unwrap();
    }
    let mut at = off("0_inf");
    loop {
        let (a, end_a) = read(&*logs[0], &at.to_string());
        let (b, end_b) = read(&*single, &at.to_string());
        assert_eq!((&a, end_a), (&b, end_b));
        if end_a == at {
            break;
        }
        at = end_a;
    }
}

/// Compaction: candidates are the sealed change chunks in order, each offered once; a stored
/// compacted form (a subset of the chunk's offsets keeping its end) replaces the chunk for
/// every read inside it, flagged `compacted`; anything else is refused and changes nothing.
fn compaction_replaces_sealed_chunks(make: Make) {
    let fx = make(100);
    let log = new_log(&fx);
    log.finish_snapshot(END).unwrap();
    assert_eq!(log.compaction_candidate().unwrap(), None);
    // 50 bytes each: every second entry seals a change chunk.
    let offsets = ["10_0", "10_2", "20_0", "20_2", "30_0"];
    for (i, o) in offsets.iter().enumerate() {
        log.append_change(off(o), &entry(i, 49)).unwrap();
    }
    assert_eq!(log.compaction_candidate().unwrap(), None, "not durable yet");
    assert!(!log.has_compaction_candidate());
    log.flush().unwrap();
    assert!(log.has_compaction_candidate());
    let b = |i: usize| bytes::Bytes::from(entry(i, 49));
    let first: Entries = vec![(off("10_0"), b(0)), (off("10_2"), b(1))];
    assert_eq!(
        log.compaction_candidate().unwrap(),
        Some((off("10_2"), first.clone()))
    );
    let mut visited: Entries = Vec::new();
    let mut scratch = Vec::new();
    let end = log
        .visit_compaction_candidate(&mut scratch, &mut |o, json| {
            visited.push((o, bytes::Bytes::copy_from_slice(json)))
        })
        .unwrap();
    assert_eq!((end, visited), (Some(off("10_2")), first), "the same chunk");
    assert_eq!(log.sealed_chunk_start(off("10_2")), Some(off("0_inf")));
    assert_eq!(log.sealed_chunk_start(off("20_2")), Some(off("10_2")));
    assert_eq!(log.sealed_chunk_start(off("30_0")), None, "the open tail");
    log.store_compacted(off("10_2"), None).unwrap();
    let second: Entries = vec![(off("20_0"), b(2)), (off("20_2"), b(3))];
    assert_eq!(
        log.compaction_candidate().unwrap(),
        Some((off("20_2"), second))
    );
    let merged = bytes::Bytes::from_static(br#"{"merged":true}"#);
    let refused: [(&str, Entries); 4] = [
        ("30_0", vec![(off("30_0"), merged.clone())]), // the open tail
        ("20_2", vec![(off("20_0"), merged.clone())]), // drops the end
        (
            "20_2",
            vec![(off("20_1"), b(2)), (off("20_2"), merged.clone())],
        ), // not its offset
        ("20_2", vec![]),
    ];
    for (end, entries) in refused {
        let err = log.store_compacted(off(end), Some(&entries)).unwrap_err();
        assert!(matches!(err, StoreError::InvalidCompaction(_)), "{err}");
    }
    let before = read(&*log, "20_0");
    assert_eq!(before.0.len(), 1, "nothing changed: {before:?}");
    let compacted: Entries = vec![(off("20_2"), merged.clone())];
    log.store_compacted(off("20_2"), Some(&compacted)).unwrap();
    assert_eq!(log.compaction_candidate().unwrap(), None);
    assert!(!log.has_compaction_candidate());
    let again = log.store_compacted(off("20_2"), Some(&compacted));
    assert!(matches!(again, Err(StoreError::InvalidCompaction(_))));
    // At the chunk's start and inside it: the compacted form, flagged.
    for after in ["10_2", "20_0", "15_0"] {
        assert_eq!(
            log.read(off(after)).unwrap(),
            ReadResult::Chunk {
                entries: vec![merged.clone()],
                end: off("20_2"),
                compacted: true,
            },
            "read after {after}"
        );
    }
    // Other chunks as they were.
    match log.read(off("0_inf")).unwrap() {
        ReadResult::Chunk {
            entries,
            end,
            compacted,
        } => assert_eq!((entries.len(), end, compacted), (2, off("10_2"), false)),
        other => panic!("{other:?}"),
    }
    assert_eq!(read(&*log, "20_2"), (vec![s(&entry(4, 49))], off("30_0")));
    assert_eq!(
        log.read_sealed(off("10_2")).unwrap(),
        Some(SealedRead::Changes {
            entries: compacted,
            compacted: true,
        })
    );
}

//! Shape log store figures, each beside its physical anchor measured in the same run
//! (docs/targets.md):
//!
//! - group-commit append throughput (MB/s of change records, records/s) across many shapes,
//!   against raw sequential writes of the same batch sizes with one fdatasync per batch;
//! - fsyncs per committed batch (counted by the store), against the one-per-dirty-shape of a
//!   per-log flush, and records/s of both paths side by side;
//! - read throughput of one change chunk, against a raw positional read of the same bytes;
//! - opening one ~200 MB log from its segments' persisted chunk indexes, against scanning it;
//! - restart (open + recover) with 10,000 shapes on disk (target P11: < 1 s).
//!
//! Run with `cargo bench --bench storage` (`SHAPESYNC_BENCH_DIR` picks the disk, default the
//! temp dir; `SHAPESYNC_BENCH_SHAPES`, default 10,000). Not part of the test command.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use shapesync_storage::{FileStore, LogOffset, ReadResult, ShapeLog, ShapeLogStore, StoreConfig};

const END: &[u8] = br#"{"headers":{"control":"snapshot-end"}}"#;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn json(i: u64, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"key":"\"public\".\"t\"/\"{i}\"","value":{{"v":""#);
    let mut out = head.into_bytes();
    out.resize(len - 3, b'x');
    out.extend_from_slice(b"\"}}");
    out
}

fn mb(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

struct Append {
    mb_s: f64,
    anchor_mb_s: f64,
    records_s: f64,
    fsyncs_per_batch: f64,
    dirty_per_batch: u64,
    batch_bytes: usize,
}

/// `shapes` logs; `reps` rounds of `batches` commits, each appending `per_shape` records to
/// every log, each round followed by the raw-write anchor of the same batch pattern.
fn append(dir: &Path, shapes: usize, per_shape: u64, batches: u64, reps: u64) -> Append {
    let store = FileStore::open(dir, StoreConfig::default()).unwrap();
    let logs: Vec<Arc<dyn ShapeLog>> = (0..shapes)
        .map(|i| store.create(&format!("a{i}"), b"m").unwrap())
        .collect();
    for log in &logs {
        log.finish_snapshot(END).unwrap();
    }
    let record = json(0, 200);
    let framed = (record.len() + 8 + 16) as u64;
    let batch_bytes = (per_shape * shapes as u64 * framed) as usize;
    let mut runs = Vec::new();
    for rep in 0..reps {
        let before = store.commit_stats();
        let started = Instant::now();
        for b in 1..=batches {
            let tx = rep * batches + b;
            for log in &logs {
                for op in 0..per_shape {
                    log.append_change(LogOffset::new(tx, op * 2), &record)
                        .unwrap();
                }
            }
            store.commit(&logs).unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let after = store.commit_stats();
        let records = batches * per_shape * shapes as u64;
        let fsyncs = after.wal_fsyncs + after.checkpoints - before.wal_fsyncs - before.checkpoints;
        runs.push(Append {
            mb_s: mb(records * framed, secs),
            anchor_mb_s: raw_write(dir, batch_bytes, batches),
            records_s: records as f64 / secs,
            fsyncs_per_batch: fsyncs as f64 / batches as f64,
            dirty_per_batch: shapes as u64,
            batch_bytes,
        });
    }
    // The round with the median ratio (the machine is shared and noisy).
    runs.sort_by(|a, b| (a.mb_s / a.anchor_mb_s).total_cmp(&(b.mb_s / b.anchor_mb_s)));
    runs.swap_remove(runs.len() / 2)
}

/// The v1 write path for comparison: the same appends made durable by one `flush` (fsync)
/// per dirty shape. Returns records/s.
fn per_shape_flush(dir: &Path, shapes: usize, per_shape: u64, batches: u64) -> f64 {
    let store = FileStore::open(dir, StoreConfig::default()).unwrap();
    let logs: Vec<Arc<dyn ShapeLog>> = (0..shapes)
        .map(|i| store.create(&format!("f{i}"), b"m").unwrap())
        .collect();
    for log in &logs {
        log.finish_snapshot(END).unwrap();
    }
    let record = json(0, 200);
    let started = Instant::now();
    for b in 1..=batches {
        for log in &logs {
            for op in 0..per_shape {
                log.append_change(LogOffset::new(b, op * 2), &record)
                    .unwrap();
            }
            log.flush().unwrap();
        }
    }
    (batches * per_shape * shapes as u64) as f64 / started.elapsed().as_secs_f64()
}

/// Raw sequential writes of `batch_bytes`, one fdatasync per batch: the disk's limit for the
/// same durability pattern.
fn raw_write(dir: &Path, batch_bytes: usize, batches: u64) -> f64 {
    let path = dir.join("raw.bin");
    let mut f = File::create(&path).unwrap();
    let buf = vec![b'x'; batch_bytes];
    let started = Instant::now();
    for _ in 0..batches {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    fs::remove_file(path).unwrap();
    mb(batch_bytes as u64 * batches, secs)
}

/// One chunk read through the log against one raw `pread` of the same file range.
fn read_chunk(dir: &Path) -> (f64, f64, usize) {
    let store = FileStore::open(dir, StoreConfig::default()).unwrap();
    let log = store.create("r", b"m").unwrap();
    log.finish_snapshot(END).unwrap();
    let record = json(0, 500);
    for i in 0..20_000u64 {
        log.append_change(LogOffset::new(1 + i / 10, (i % 10) * 2), &record)
            .unwrap();
    }
    log.flush().unwrap();
    let reps = 50;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..reps {
        let ReadResult::Chunk { entries, .. } = log.read(LogOffset::LAST_BEFORE_REAL).unwrap()
        else {
            panic!("not ready")
        };
        bytes = entries.iter().map(|e| e.len()).sum::<usize>();
    }
    let ours = mb(bytes as u64 * reps, started.elapsed().as_secs_f64());
    let file = File::open(dir.join("r/changes.log")).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let mut buf = vec![0u8; len];
    let started = Instant::now();
    for _ in 0..reps {
        file.read_exact_at(&mut buf, 0).unwrap();
    }
    let raw = mb(len as u64 * reps, started.elapsed().as_secs_f64());
    (ours, raw, bytes)
}

/// `n` shapes on disk (copies of one real shape directory), then open + recover them all.
fn restart(dir: &Path, n: usize) -> (f64, f64) {
    let template = {
        let store = FileStore::open(dir, StoreConfig::default()).unwrap();
        let log = store.create("t", b"{\"meta\":1}").unwrap();
        for i in 0..5 {
            log.append_snapshot_row(&json(i, 200)).unwrap();
        }
        log.finish_snapshot(END).unwrap();
        for i in 0..20u64 {
            log.append_change(LogOffset::new(10 + i, 0), &json(i, 200))
                .unwrap();
        }
        log.flush().unwrap();
        dir.join("t")
    };
    for i in 0..n {
        let to = dir.join(format!("s{i:05}"));
        fs::create_dir(&to).unwrap();
        for f in ["meta", "snapshot.log", "changes.log"] {
            fs::copy(template.join(f), to.join(f)).unwrap();
        }
    }
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let store = FileStore::open(dir, StoreConfig::default()).unwrap();
            let all = store.open_all().unwrap();
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(all.len(), n + 1);
            secs
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[0], times[1])
}

/// One shape with ~200 MB of change records (default 10 MiB chunks, so 40 MiB segments):
/// open + recover with the finished segments' chunk indexes, and with them removed (every
/// segment scanned, as before store format 3). Best of 3 each, in seconds.
fn large_log_open(dir: &Path) -> (f64, f64, u64) {
    let bytes = {
        let store = FileStore::open(dir, StoreConfig::default()).unwrap();
        let log = store.create("big", b"m").unwrap();
        log.finish_snapshot(END).unwrap();
        let record = json(0, 500);
        for i in 0..400_000u64 {
            log.append_change(LogOffset::new(1 + i, 0), &record)
                .unwrap();
            if i % 10_000 == 9_999 {
                log.flush().unwrap();
            }
        }
        log.flush().unwrap();
        log.size_bytes()
    };
    let best_open = || {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                let store = FileStore::open(dir, StoreConfig::default()).unwrap();
                assert_eq!(store.open_all().unwrap().len(), 1);
                started.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let indexed = best_open();
    let mut removed = 0;
    for entry in fs::read_dir(dir.join("big")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "idx") {
            fs::remove_file(path).unwrap();
            removed += 1;
        }
    }
    assert!(removed >= 3, "the log has several finished segments");
    (indexed, best_open(), bytes)
}

/// Two descriptors per open shape log (until idle logs are closed): raise the soft limit
/// (and the hard one when allowed) so that `shapes` logs can be open; returns how many can.
fn raise_fd_limit(shapes: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let want = (shapes as u64) * 2 + 256;
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    let new = Rlimit {
        current: Some(want.max(cur.current.unwrap_or(0))),
        maximum: Some(hard.max(want)),
    };
    if setrlimit(Resource::Nofile, new).is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(1024);
    shapes.min((limit.saturating_sub(256) / 2) as usize)
}

fn main() {
    let base = std::env::var("SHAPESYNC_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let tmp = |tag: &str| {
        tempfile::Builder::new()
            .prefix(tag)
            .tempdir_in(&base)
            .unwrap()
    };
    let shapes = env_num("SHAPESYNC_BENCH_SHAPES", 10_000) as usize;

    println!("storage bench in {}", base.display());
    println!(
        "{:<58} {:>12} {:>12} {:>8}",
        "figure", "shapesync", "anchor", "ratio"
    );
    for (shapes_per_batch, per_shape, batches) in
        [(1usize, 200u64, 200u64), (100, 2, 200), (1000, 1, 50)]
    {
        let d = tmp("ss-append");
        let a = append(d.path(), shapes_per_batch, per_shape, batches, 3);
        println!(
            "{:<58} {:>12.1} {:>12.1} {:>8.2}",
            format!(
                "append MB/s, {shapes_per_batch} shapes × {per_shape} rec/batch ({} KB)",
                a.batch_bytes / 1000
            ),
            a.mb_s,
            a.anchor_mb_s,
            a.mb_s / a.anchor_mb_s
        );
        println!(
            "{:<58} {:>12.0}",
            format!("  records/s ({batches} batches, median round of 3)"),
            a.records_s
        );
        println!(
            "{:<58} {:>12.2} {:>12} {:>8.3}",
            "  fsyncs per committed batch (vs one per dirty shape)",
            a.fsyncs_per_batch,
            a.dirty_per_batch,
            a.fsyncs_per_batch / a.dirty_per_batch as f64
        );
    }
    let d = tmp("ss-v1");
    let group = append(d.path(), 100, 2, 20, 1).records_s;
    let v1 = per_shape_flush(d.path(), 100, 2, 20);
    println!(
        "{:<58} {:>12.0} {:>12.0} {:>8.1}",
        "records/s, 100 shapes × 2: group commit vs v1 per-shape fsync",
        group,
        v1,
        group / v1
    );
    let d = tmp("ss-read");
    let (ours, raw, bytes) = read_chunk(d.path());
    println!(
        "{:<58} {:>12.0} {:>12.0} {:>8.2}",
        format!(
            "read one change chunk MB/s ({} KB of JSON, page cache)",
            bytes / 1000
        ),
        ours,
        raw,
        ours / raw
    );
    let d = tmp("ss-big");
    let (indexed, scanned, bytes) = large_log_open(d.path());
    println!(
        "{:<58} {:>12.3} {:>12.3} {:>8.2}",
        format!(
            "open one {} MB log: chunk indexes vs scanning all (s)",
            bytes / 1_000_000
        ),
        indexed,
        scanned,
        indexed / scanned
    );
    drop(d);
    let d = tmp("ss-restart");
    let shapes = raise_fd_limit(shapes);
    let (best, median) = restart(d.path(), shapes);
    println!(
        "{:<58} {:>12.3} {:>12} {:>8.2}",
        format!("restart: open + recover {shapes} shapes, best of 3 (s)"),
        best,
        "P11 < 1 s",
        best
    );
    println!("{:<58} {:>12.3}", "  median of 3 (s)", median);
}

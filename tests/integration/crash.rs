//! Crash test: the real server binary under a continuous write load is killed with SIGKILL at
//! random moments and restarted on the same storage directory, several times in a row. A
//! client following the shape across the restarts (same handle, resuming from its offset)
//! must see every committed transaction exactly once and in commit order.
//!
//! Each transaction `k` (committed one after the other by one connection) inserts row `k` and
//! updates row `k / 2`, so the inserts the client sees must be exactly `1, 2, 3, …` and its
//! materialized rows must equal the table at the end (the follower also fails on any
//! duplicate change or inconsistent operation). Chunks are small (4 KiB), so change logs roll
//! over to new segment files and sealed chunks are offered to compaction throughout.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{connect, free_port, fresh_db, pg_rows, Follower, ServerProcess};

const ROUNDS: usize = 4;
/// The load pauses while it is this many transactions ahead of the client, so that a slow
/// (shared, loaded) machine cannot pile up an unbounded backlog: the load stays continuous
/// and the test stays bounded.
const MAX_AHEAD: i64 = 3000;

async fn spawn(url: &str, storage: &Path, stream_id: &str) -> ServerProcess {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shapesync"));
    cmd.args([
        "serve",
        "--insecure",
        "--database-url",
        url,
        "--stream-id",
        stream_id,
    ])
    .arg("--storage-dir")
    .arg(storage)
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .args(["--long-poll-timeout-ms", "1000"])
    // Small chunks: the change log rolls over to new segment files (16 KiB) and sealed
    // chunks are compacted while the process is being killed.
    .args(["--chunk-bytes", "4096"])
    .env("RUST_LOG", "warn");
    ServerProcess::spawn(cmd, port, Duration::from_secs(30)).await
}

/// Polls once and checks that inserts arrive as the next transaction numbers.
async fn poll_checked(f: &mut Follower, next_insert: &mut i64, seen: &AtomicI64) {
    let reply = f.poll().await;
    for m in reply.messages() {
        if m["headers"]["operation"] == "insert" {
            let id: i64 = m["value"]["id"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("id");
            assert_eq!(
                id, *next_insert,
                "transactions out of order, lost or repeated"
            );
            *next_insert += 1;
        }
    }
    seen.store(*next_insert - 1, Ordering::Release);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_and_repeats_nothing() {
    let url = fresh_db("crash").await;
    let stream_id = url.rsplit('/').next().unwrap().to_string();
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE c (id int8 PRIMARY KEY, n int8 NOT NULL)")
        .await
        .unwrap();
    let storage = tempfile::tempdir().unwrap();
    let mut server = spawn(&url, storage.path(), &stream_id).await;
    let mut f = Follower::new(server.client.clone(), "table=c");
    f.sync().await;
    let handle = f.handle.clone().expect("handle");

    // The load: numbered transactions, one after the other, all through the test.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicI64::new(0));
    let seen = Arc::new(AtomicI64::new(0));
    let load = {
        let (url, stop, committed) = (url.clone(), Arc::clone(&stop), Arc::clone(&committed));
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let db = connect(&url).await;
            let mut k: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                if k - seen.load(Ordering::Acquire) > MAX_AHEAD {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                k += 1;
                db.batch_execute(&format!(
                    "BEGIN; INSERT INTO c VALUES ({k}, 0); UPDATE c SET n = {k} WHERE id = {}; COMMIT;",
                    (k / 2).max(1)
                ))
                .await
                .unwrap();
                committed.store(k, Ordering::Release);
            }
        })
    };

    let mut next_insert = 1;
    for round in 0..ROUNDS {
        // Follow for a random while (0.3-2 s), then kill the server at that random moment.
        let run_for = Duration::from_millis(300 + rand::random::<u64>() % 1700);
        let started = Instant::now();
        while started.elapsed() < run_for {
            poll_checked(&mut f, &mut next_insert, &seen).await;
        }
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reaping the server");
        drop(server);
        let at_kill = committed.load(Ordering::Acquire);
        eprintln!(
            "round {round}: killed after {run_for:?}; client at tx {}, committed {at_kill}",
            next_insert - 1
        );
        server = spawn(&url, storage.path(), &stream_id).await;
        f.client = server.client.clone();
        // Resume from the same handle and offset: must not be told to refetch.
        poll_checked(&mut f, &mut next_insert, &seen).await;
        assert_eq!(
            f.handle.as_deref(),
            Some(handle.as_str()),
            "same handle after a crash"
        );
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let total = committed.load(Ordering::Acquire);
    assert!(total > 100, "the load ran ({total} transactions)");
    while next_insert <= total {
        poll_checked(&mut f, &mut next_insert, &seen).await;
    }
    let expected = pg_rows(&db, "SELECT * FROM c ORDER BY id").await;
    f.until_matches(&expected).await;
    assert_eq!(
        next_insert - 1,
        total,
        "every committed transaction exactly once"
    );
    server.child.kill().expect("kill");
    server.child.wait().expect("reap");
    assert!(
        count_files(storage.path(), "changes-") > 0,
        "the change log rolled over to new segments"
    );
}

/// Files under `dir` (recursively) whose name starts with `prefix`.
fn count_files(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        count_files(&path, prefix)
                    } else {
                        usize::from(e.file_name().to_string_lossy().starts_with(prefix))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

//! Restarts and races: acknowledged transactions survive a restart exactly once, handles and
//! offsets stay valid, and writes racing a shape's snapshot appear exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{connect, eventually, fresh_db, pg_rows, Follower, TestServer};

/// The slot's confirmed position, as an LSN number.
async fn confirmed_flush(db: &tokio_postgres::Client, stream_id: &str) -> u64 {
    let slot = format!("shapesync_slot_{stream_id}");
    let row = db
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

async fn current_lsn(db: &tokio_postgres::Client) -> u64 {
    let row = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::text", &[])
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_with_nothing_lost_and_nothing_twice() {
    let url = fresh_db("resume").await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE t (id int4 PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut server = TestServer::start(&url).await;
    let mut f = Follower::new(server.client(), "table=t");
    f.sync().await;
    let handle = f.handle.clone();

    // N transactions, acknowledged by shapesync (the slot's confirmed position passes them).
    for i in 0..20 {
        db.execute("INSERT INTO t VALUES ($1, 'a')", &[&i])
            .await
            .unwrap();
    }
    let after_n = current_lsn(&db).await;
    eventually(
        "the 20 transactions to be acknowledged",
        Duration::from_secs(30),
        || async { confirmed_flush(&db, &server.cfg.stream_id).await >= after_n },
    )
    .await;
    f.until("20 rows", |f| f.rows.len() == 20).await;

    // Stop; write more while shapesync is down; restart on the same storage.
    server.stop().await;
    // A clean stop leaves every commit in the shape files: the commit log is back to its
    // 18-byte header, nothing to replay at the next start.
    let wals: Vec<u64> = walk(&server.storage_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "commit.wal"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert!(!wals.is_empty(), "the store has a commit log");
    assert!(
        wals.iter().all(|&n| n == 18),
        "checkpointed on stop: {wals:?}"
    );
    for i in 0..20 {
        db.execute("UPDATE t SET v = 'b' WHERE id = $1", &[&i])
            .await
            .unwrap();
    }
    db.batch_execute("INSERT INTO t VALUES (100, 'c'); DELETE FROM t WHERE id = 0;")
        .await
        .unwrap();
    server.restart().await;

    // The same handle and offset continue: exactly the rest arrives (the follower fails on any
    // duplicate change or inconsistent operation).
    f.client = server.client();
    let changes_before = f.changes_seen;
    let expected = pg_rows(&db, "SELECT * FROM t ORDER BY id").await;
    f.until_matches(&expected).await;
    assert_eq!(f.handle, handle, "the handle survives the restart");
    assert_eq!(
        f.changes_seen - changes_before,
        22,
        "exactly the 22 later changes"
    );
    let r = f.client.get("table=t&offset=-1").await;
    assert_eq!(r.header("electric-handle").map(str::to_string), handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_the_snapshot_appear_exactly_once() {
    let url = fresh_db("race").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE r (id int4 PRIMARY KEY, n int4 NOT NULL);
         INSERT INTO r SELECT g, 0 FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    let server = TestServer::start(&url).await;

    // Writers insert and update continuously, each in its own transaction, while the shape is
    // created and snapshotted; some transactions stay open across the snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let url = url.clone();
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let db = connect(&url).await;
            let mut i = 0i32;
            while !stop.load(Ordering::Relaxed) {
                let id = 10_000 + w * 100_000 + i;
                db.batch_execute(&format!(
                    "BEGIN; INSERT INTO r VALUES ({id}, 1); UPDATE r SET n = n + 1 WHERE id = {}; SELECT pg_sleep(0.002); COMMIT;",
                    1 + (i % 2000)
                ))
                .await
                .unwrap();
                i += 1;
            }
            i
        }));
    }
    // Let the writers get going, then sync the shape while they write.
    eventually("writers to start", Duration::from_secs(10), || async {
        db.query_one("SELECT count(*) FROM r", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 2050
    })
    .await;
    let mut f = Follower::new(server.client(), "table=r");
    f.sync().await;
    eventually(
        "more writes after the snapshot",
        Duration::from_secs(10),
        || async {
            db.query_one("SELECT count(*) FROM r", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                > 2100 + f.rows.len() as i64
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() > 0);
    }
    let expected = pg_rows(&db, "SELECT * FROM r ORDER BY id").await;
    f.until_matches(&expected).await;
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

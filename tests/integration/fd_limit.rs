//! The server binary under a low open-file limit (set for the child process only, with the
//! shell's `ulimit`): 2,000 shapes under 256 descriptors, one transaction touching all of
//! them, a crash (SIGKILL) and a restart, and another such transaction. Also: the soft limit is
//! raised to the hard one at start, and a second process on the same storage directory exits
//! at once naming the directory and the holder's pid.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;

use crate::support::{connect, free_port, fresh_db, Follower, ServerProcess};

const SHAPES: i32 = 2000;

/// `shapesync serve` run by `sh -c '<ulimit>; exec …'`.
fn command(ulimit: &str, url: &str, storage: &Path, stream_id: &str, port: u16) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{ulimit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_shapesync"))
        .args(["serve", "--insecure", "--database-url", url])
        .args(["--stream-id", stream_id])
        .arg("--storage-dir")
        .arg(storage)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--long-poll-timeout-ms", "1000"])
        .args(["--shape-create-rate", "100000"])
        .env("RUST_LOG", "warn");
    cmd
}

async fn spawn(ulimit: &str, url: &str, storage: &Path, stream_id: &str) -> ServerProcess {
    let port = free_port();
    let cmd = command(ulimit, url, storage, stream_id, port);
    ServerProcess::spawn(cmd, port, Duration::from_secs(60)).await
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Polls every follower until its one row has `v == want` (at most 8 at a time).
async fn all_reach(followers: &mut [Follower], want: i32) {
    let want = want.to_string();
    futures::stream::iter(followers.iter_mut())
        .for_each_concurrent(8, |f| {
            let want = want.clone();
            async move {
                f.until(&format!("v = {want}"), |f| {
                    f.rows
                        .values()
                        .next()
                        .is_some_and(|r| r["v"] == want.as_str())
                })
                .await;
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_shapes_under_256_descriptors() {
    let url = fresh_db("fdlimit").await;
    let db = connect(&url).await;
    db.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t SELECT i, 0 FROM generate_series(1, {SHAPES}) i;"
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("store");
    let stream_id = url.rsplit('/').next().unwrap_or("fdlimit").to_string();
    let ulimit = "ulimit -n 256";
    let server = spawn(ulimit, &url, &storage, &stream_id).await;
    let mut followers: Vec<Follower> = (1..=SHAPES)
        .map(|k| {
            Follower::new(
                server.client.clone(),
                &format!("table=t&where=id%20%3D%20{k}"),
            )
        })
        .collect();
    futures::stream::iter(followers.iter_mut())
        .for_each_concurrent(8, |f| f.sync())
        .await;
    let body = server.client.raw("/metrics").await.body;
    assert_eq!(metric(&body, "shapesync_log_files_budget"), 128);
    assert!(metric(&body, "shapesync_log_files_open") <= 128);

    // One transaction touching every shape.
    db.batch_execute("UPDATE t SET v = v + 1").await.unwrap();
    all_reach(&mut followers, 1).await;
    let body = server.client.raw("/metrics").await.body;
    assert!(metric(&body, "shapesync_log_files_open") <= 128);
    assert!(metric(&body, "shapesync_log_files_evicted_total") > 0);

    // A crash and a restart under the same limit: every shape is opened again, and the next
    // transaction reaches all of them (same handles, same offsets).
    drop(server);
    let server = spawn(ulimit, &url, &storage, &stream_id).await;
    for f in followers.iter_mut() {
        f.client = server.client.clone();
    }
    db.batch_execute("UPDATE t SET v = v + 1").await.unwrap();
    all_reach(&mut followers, 2).await;
    let body = server.client.raw("/metrics").await.body;
    assert!(metric(&body, "shapesync_log_files_open") <= 128);
    assert!(body.contains("shapesync_shapes{database_id=\"default\"} 2000\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_limit_is_raised_and_a_second_process_is_refused() {
    let url = fresh_db("fdsoft").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("store");
    let stream_id = url.rsplit('/').next().unwrap_or("fdsoft").to_string();
    // Soft 256, hard 4096: the server raises the soft limit and sizes its budget on 4096.
    let server = spawn(
        "ulimit -S -n 256 && ulimit -H -n 4096",
        &url,
        &storage,
        &stream_id,
    )
    .await;
    let body = server.client.raw("/metrics").await.body;
    assert_eq!(metric(&body, "shapesync_log_files_budget"), 2048);

    let out = command("true", &url, &storage, &stream_id, free_port())
        .output()
        .expect("running a second shapesync");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = server.child.id();
    assert!(
        err.contains(&storage.display().to_string()) && err.contains(&format!("pid {pid}")),
        "{err}"
    );
}

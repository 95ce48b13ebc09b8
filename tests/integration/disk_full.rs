//! A full disk under the running server (a small tmpfs as its storage directory): writes stop
//! being acknowledged, health reports it, a new shape gets 503 with `retry-after`, existing
//! shapes keep serving what is durable and keep their handle, and everything resumes by itself
//! with nothing lost once space returns. Needs root (mount): ignored by default, run by
//! scripts/test.sh where a tmpfs can be mounted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{connect, eventually, fresh_db, pg_rows, Follower, TestServer};

struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            path: dir.path().to_owned(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn fill_up(filler: &Path) {
    let mut f = std::fs::File::create(filler).unwrap();
    let block = vec![1u8; 16 << 10];
    while f.write_all(&block).is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a tmpfs (root): scripts/test.sh runs it where it can, and says so where not"]
async fn full_disk_degrades_then_recovers_with_nothing_lost() {
    let disk = Tmpfs::mount("16m").expect("mounting a tmpfs (needs root)");
    let url = fresh_db("diskfull").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE d (id int4 PRIMARY KEY, v text); CREATE TABLE other (id int4 PRIMARY KEY);",
    )
    .await
    .unwrap();
    let data = disk.path.join("data");
    let mut server = TestServer::start_with(&url, |cfg| cfg.storage_dir = data).await;
    let mut f = Follower::new(server.client(), "table=d");
    f.sync().await;
    let handle = f.handle.clone();
    db.execute("INSERT INTO d VALUES (1, 'before')", &[])
        .await
        .unwrap();
    f.until("the first row", |f| f.rows.len() == 1).await;

    let filler = disk.path.join("filler");
    fill_up(&filler);
    // Before any change is pending, creating a shape already needs space: 503, not 500.
    let r = server.client().get("table=other&offset=-1").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    for i in 2..12 {
        db.execute("INSERT INTO d VALUES ($1, repeat('x', 65536))", &[&i])
            .await
            .unwrap();
    }
    let client = server.client();
    eventually(
        "health to report the full disk",
        Duration::from_secs(20),
        || async {
            let r = client.raw("/v1/health").await;
            r.status == 202 && r.body.contains("waiting")
        },
    )
    .await;
    // Degraded, not down: replication is connected, the storage is what fails.
    let metrics = client.raw("/metrics").await;
    assert!(
        metrics.body.contains("status=\"degraded\"} 0"),
        "metrics report degraded:\n{}",
        metrics.body
    );
    // A request that needs writing: a new shape.
    let r = client.get("table=other&offset=-1").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    // What is durable is still served, under the same handle.
    let q = format!(
        "table=d&handle={}&offset={}",
        handle.as_deref().unwrap(),
        f.offset
    );
    let r = client.get(&q).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("electric-handle"), handle.as_deref());
    assert!(r
        .messages()
        .iter()
        .all(|m| m["headers"].get("operation").is_none()));

    std::fs::remove_file(&filler).unwrap();
    eventually("health to recover", Duration::from_secs(20), || async {
        client.raw("/v1/health").await.status == 200
    })
    .await;
    let expected = pg_rows(&db, "SELECT * FROM d ORDER BY id").await;
    f.until_matches(&expected).await;
    assert_eq!(f.handle, handle, "the shape survived the full disk");
    assert_eq!(client.get("table=other&offset=-1").await.status, 200);
    server.stop().await;
}

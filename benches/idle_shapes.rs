//! P7 (memory per idle shape, target ≤ 2 KB resident): what N idle shapes cost the process while
//! they are live, and after they are archived to an object store (`--local-retention`).
//!
//! Starts its own Postgres and an in-process shapesync with a filesystem bucket, creates N
//! `id = k` shapes through `GET /v1/shape` (each with its snapshot done), then measures resident
//! memory (`/proc/self/statm`) and open files (`/proc/self/fd`) against the baseline taken before.
//! Nobody requests them afterwards, so after the retention every shape is archived; the same
//! figures are taken again (serving archived chunks from the bucket is covered by
//! `tests/integration/lifecycle.rs`). Resident memory after archiving does not fall back to the baseline even though
//! nothing is held (the allocator keeps freed pages); what is held is shown by the registry size
//! and the open files.
//!
//! Not part of the test command; run with `cargo bench --bench idle_shapes`
//! (`SHAPESYNC_BENCH_SHAPES`, default 1,000). Prints a table.

use std::time::{Duration, Instant};

use futures::StreamExt;
use shapesync::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use shapesync::serve::access::RateLimit;
use shapesync::server::{Config, Server};

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run() {
    let n = std::env::var("SHAPESYNC_BENCH_SHAPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000u64);
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = EmbeddedPostgres::start(&EmbeddedOptions {
        dir: dir.path().join("pg"),
        port: None,
        fast_unsafe: false,
        remove_on_exit: true,
        settings: Vec::new(),
    })
    .expect("postgres");
    let url = pg.url("postgres");
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    db.batch_execute(&format!(
        "CREATE TABLE items (id int8 PRIMARY KEY, name text, value int4);
         INSERT INTO items SELECT g, 'name ' || g, g % 100 FROM generate_series(1, {n}) g;"
    ))
    .await
    .expect("load");

    // Longer than creating them all takes, so every shape is live when measured.
    let retention = Duration::from_secs(60);
    let mut cfg = Config::new(url.clone(), dir.path().join("data"));
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.object_store_url = Some(format!("file://{}/bucket", dir.path().display()));
    cfg.local_retention = Some(retention);
    cfg.access.create_rate = RateLimit {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
    let server = Server::start(cfg).await.expect("server");
    server
        .wait_active(Duration::from_secs(30))
        .await
        .expect("active");
    let stack = server.stack.clone().expect("default stack");
    let base = format!("http://{}/v1/shape", server.addr);
    let http = reqwest::Client::new();
    // Warm up the HTTP paths with one shape, then take the baseline.
    let first = http
        .get(format!("{base}?table=items&where=id%3D0&offset=-1"))
        .send()
        .await
        .expect("warm-up");
    assert!(first.status().is_success());
    let (rss0, fds0, shapes0) = (resident_bytes(), open_files(), stack.registry.len());

    let t = Instant::now();
    let handles: Vec<(u64, String)> = futures::stream::iter(1..=n)
        .map(|k| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http
                    .get(format!("{base}?table=items&where=id%3D{k}&offset=-1"))
                    .send()
                    .await
                    .expect("create");
                assert!(r.status().is_success(), "create {k}: {}", r.status());
                let h = r.headers()["electric-handle"].to_str().expect("handle");
                (k, h.to_string())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    wait_for("every snapshot", Duration::from_secs(600), || {
        stack
            .registry
            .shapes()
            .iter()
            .all(|s| s.progress().snapshot_finished)
    })
    .await;
    let created = t.elapsed();
    let live = stack.registry.len() - shapes0;
    assert_eq!(live as u64, n, "every shape live when measured");
    let (rss1, fds1) = (resident_bytes(), open_files());

    // Nobody asks again: after the retention they are all archived to the bucket.
    wait_for(
        "archiving",
        retention * 4 + Duration::from_secs(600),
        || stack.registry.is_empty(),
    )
    .await;
    let (rss2, fds2) = (resident_bytes(), open_files());

    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / live as f64;
    println!("P7: {live} idle shapes (created with snapshots in {created:.1?})");
    println!("| state | resident bytes / shape | open files / shape | shapes held |");
    println!("|---|---|---|---|");
    println!(
        "| live, idle | {:.0} | {:.2} | {} |",
        per(rss0, rss1),
        (fds1 as f64 - fds0 as f64) / live as f64,
        live
    );
    println!(
        "| archived (after --local-retention) | {:.0} (allocator keeps freed pages) | {:.2} | {} |",
        per(rss0, rss2),
        (fds2 as f64 - fds0 as f64) / live as f64,
        stack.registry.len()
    );
    println!(
        "target P7: <= 2048 bytes resident per idle shape; archived shapes hold no entry and no \
         file ({} shapes archived to the bucket)",
        handles.len()
    );
    server.stop().await;
}

//! End-to-end figures, each side by side with its physical anchor measured in the same run
//! (../shared/targets.md):
//!
//! - P4: initial sync of an N-row shape through `GET /v1/shape` until up to date, against
//!   `COPY (SELECT row_to_json(t)::text FROM t) TO STDOUT` of the same rows.
//! - P5 (one shape): commit → a waiting long-poll client sees the change, against commit →
//!   the raw walsender delivers the commit to a replication client.
//!
//! Starts its own Postgres (fsync on) and an in-process shapesync. Not part of the test
//! command; run with `cargo bench --bench e2e` (`SHAPESYNC_BENCH_ROWS`, default 1,000,000;
//! `SHAPESYNC_BENCH_LATENCY_SAMPLES`, default 200). Prints a table and writes
//! `target/bench-e2e.json`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use shapesync::postgres::connect::SourceDb;
use shapesync::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use shapesync::server::{Config, Server};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

struct Row {
    target: &'static str,
    what: &'static str,
    ours: f64,
    anchor: f64,
    ratio: f64,
    goal: &'static str,
    pass: bool,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Follow `table`'s shape from `-1` until up to date: (offset, handle, rows received). Rows
/// are counted like the anchor counts bytes, without building a JSON tree.
async fn sync(http: &reqwest::Client, base: &str, table: &str) -> (String, String, u64) {
    let (mut offset, mut handle, mut got) = ("-1".to_string(), String::new(), 0u64);
    loop {
        let mut q = format!("{base}?table={table}&offset={offset}");
        if !handle.is_empty() {
            q.push_str(&format!("&handle={handle}"));
        }
        let res = http.get(&q).send().await.expect("get");
        let done = res.headers().contains_key("electric-up-to-date");
        handle = res.headers()["electric-handle"]
            .to_str()
            .expect("h")
            .to_string();
        offset = res.headers()["electric-offset"]
            .to_str()
            .expect("o")
            .to_string();
        let body = res.bytes().await.expect("body");
        got += body.windows(7).filter(|w| w == b"{\"key\":").count() as u64;
        if done {
            return (offset, handle, got);
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists targets; nothing to list here.
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let rows = env_num("SHAPESYNC_BENCH_ROWS", 1_000_000);
    let samples = env_num("SHAPESYNC_BENCH_LATENCY_SAMPLES", 200) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = EmbeddedPostgres::start(&EmbeddedOptions {
        dir: dir.path().join("pg"),
        port: None,
        fast_unsafe: false,
        remove_on_exit: true,
    })
    .expect("postgres");
    let url = pg.url("postgres");
    let db = connect(&url).await;
    db.batch_execute(&format!(
        "CREATE TABLE bench (id int8 PRIMARY KEY, name text, value int4, data jsonb, ts timestamptz);
         INSERT INTO bench SELECT g, 'name ' || g, g % 1000, jsonb_build_object('k', g, 'tag', 'x' || (g % 7)),
                '2026-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, {rows}) g;"
    ))
    .await
    .expect("load");
    db.batch_execute("VACUUM ANALYZE bench")
        .await
        .expect("vacuum");
    let mut results = Vec::new();

    // Anchor P4: Postgres producing the same JSON rows.
    let t = Instant::now();
    let copy = db
        .copy_out("COPY (SELECT row_to_json(t)::text FROM bench t) TO STDOUT")
        .await
        .expect("copy");
    futures::pin_mut!(copy);
    let mut bytes = 0usize;
    while let Some(chunk) = copy.next().await {
        bytes += chunk.expect("copy chunk").len();
    }
    let anchor_rps = rows as f64 / t.elapsed().as_secs_f64();
    eprintln!("anchor: COPY row_to_json {rows} rows, {bytes} bytes, {anchor_rps:.0} rows/s");

    let storage = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::new(url.clone(), storage.path().join("data"));
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.long_poll = Duration::from_secs(5);
    let server = Server::start(cfg).await.expect("server");
    server
        .wait_active(Duration::from_secs(30))
        .await
        .expect("active");
    let base = format!("http://{}/v1/shape", server.addr);
    let http = reqwest::Client::new();

    // P4: initial sync until up to date.
    let t = Instant::now();
    let (_, _, got) = sync(&http, &base, "bench").await;
    assert_eq!(got, rows, "every row arrived");
    let ours_rps = rows as f64 / t.elapsed().as_secs_f64();
    results.push(Row {
        target: "P4",
        what: "initial sync rows/s (client until up-to-date) vs COPY row_to_json",
        ours: ours_rps,
        anchor: anchor_rps,
        ratio: ours_rps / anchor_rps,
        goal: ">= 0.8",
        pass: ours_rps / anchor_rps >= 0.8,
    });

    // P5 (one shape): commit -> waiting client, vs commit -> raw walsender.
    db.batch_execute(
        "CREATE TABLE lat (id int8 PRIMARY KEY, v text);
         CREATE PUBLICATION bench_pub FOR TABLE lat;",
    )
    .await
    .expect("lat table");
    db.batch_execute("SELECT pg_create_logical_replication_slot('bench_slot', 'pgoutput')")
        .await
        .expect("slot");
    let mut anchor_lat = Vec::new();
    {
        let cfg = SourceDb::parse(&url)
            .expect("url")
            .replication_config("bench_slot", "bench_pub");
        let mut repl = ReplicationClient::connect(cfg).await.expect("repl");
        repl.wait_started().await.expect("started");
        for i in 0..samples {
            let t = Instant::now();
            db.execute("INSERT INTO lat VALUES ($1, 'x')", &[&(i as i64)])
                .await
                .expect("insert");
            loop {
                match repl.recv().await.expect("recv") {
                    Some(ReplicationEvent::Commit { .. }) => break,
                    Some(_) => continue,
                    None => panic!("stream ended"),
                }
            }
            anchor_lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let _ = repl.shutdown().await;
    }
    db.batch_execute("SELECT pg_drop_replication_slot('bench_slot')")
        .await
        .expect("drop slot");
    db.batch_execute("DELETE FROM lat").await.expect("cleanup");

    let (mut offset, handle, _) = sync(&http, &base, "lat").await;
    let mut ours_lat = Vec::new();
    for i in 0..samples {
        let q = format!("{base}?table=lat&offset={offset}&handle={handle}&live=true");
        let waiting = tokio::spawn({
            let http = http.clone();
            async move { http.get(&q).send().await.expect("live") }
        });
        // Let the request park before committing (it is parked once the server has it; a
        // short yield is enough on loopback and does not affect the measured interval).
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        db.execute(
            "INSERT INTO lat VALUES ($1, 'y')",
            &[&(1_000_000 + i as i64)],
        )
        .await
        .expect("insert");
        let res = waiting.await.expect("join");
        offset = res.headers()["electric-offset"]
            .to_str()
            .expect("o")
            .to_string();
        let _ = res.bytes().await;
        ours_lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (a50, a99) = (
        percentile(&mut anchor_lat, 0.5),
        percentile(&mut anchor_lat, 0.99),
    );
    let (o50, o99) = (
        percentile(&mut ours_lat, 0.5),
        percentile(&mut ours_lat, 0.99),
    );
    results.push(Row {
        target: "P5",
        what: "commit -> client p50 ms (1 shape) vs walsender",
        ours: o50,
        anchor: a50,
        ratio: o50 / a50,
        goal: "<= anchor + 2 ms",
        pass: o50 <= a50 + 2.0,
    });
    results.push(Row {
        target: "P5",
        what: "commit -> client p99 ms (1 shape) vs walsender",
        ours: o99,
        anchor: a99,
        ratio: o99 / a99,
        goal: "<= anchor + 10 ms",
        pass: o99 <= a99 + 10.0,
    });
    server.stop().await;

    println!("\n| target | figure | shapesync | anchor | ratio | goal | |");
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.3} | {} | {} |",
            r.target,
            r.what,
            r.ours,
            r.anchor,
            r.ratio,
            r.goal,
            if r.pass { "pass" } else { "falls short" }
        );
    }
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({"target": r.target, "figure": r.what, "shapesync": r.ours,
                "anchor": r.anchor, "ratio": r.ratio, "goal": r.goal, "pass": r.pass, "rows": rows})
        })
        .collect();
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-e2e.json");
    let _ = std::fs::write(out, serde_json::to_string_pretty(&json).unwrap_or_default());
    let _ = pg.stop();
}

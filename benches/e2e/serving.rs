//! Instance B (fresh storage, its own slot): initial sync (P4), cached chunks against nginx
//! (P9), a creation storm (P10), parked long-polls (P8) and one big transaction (P12).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::infra::{self, connect, create_shapes, current_lsn, shape_url, sync, Nginx, Shapesync};
use crate::ingest::wait_parked;
use crate::{selected, Line, Report, Sizes};

const STREAM: &str = "b";
const PUBLICATION: &str = "shapesync_pub_b";

pub async fn run(
    url: &str,
    dir: &Path,
    sizes: &Sizes,
    only: &Option<BTreeSet<String>>,
    report: &mut Report,
) {
    let wanted = ["P4", "P8", "P9", "P10", "P12"];
    if !wanted.iter().any(|t| selected(only, t)) {
        return;
    }
    let db = connect(url).await;
    let http = reqwest::Client::new();
    let mut ss = Shapesync::new(url, &dir.join("b"), STREAM);
    ss.spawn();
    ss.wait_active(&http, Duration::from_secs(60)).await;

    if selected(only, "P4") {
        let rows = sizes.sync_rows;
        eprintln!("P4: initial sync of {rows} rows");
        db.batch_execute(&format!(
            "CREATE TABLE p4 (id int8 PRIMARY KEY, name text, value int4, data jsonb, ts timestamptz);
             INSERT INTO p4 SELECT g, 'name ' || g, g % 1000, jsonb_build_object('k', g, 'tag', 'x' || (g % 7)),
                    '2026-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, {rows}) g;"
        ))
        .await
        .expect("load p4");
        db.batch_execute("VACUUM ANALYZE p4").await.expect("vacuum");
        let t = Instant::now();
        let copy = db
            .copy_out("COPY (SELECT row_to_json(t)::text FROM p4 t) TO STDOUT")
            .await
            .expect("copy");
        futures::pin_mut!(copy);
        while let Some(chunk) = copy.next().await {
            chunk.expect("copy chunk");
        }
        let anchor = rows as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (_, got) = sync(&http, &shape_url(&ss.base, "p4", None)).await;
        assert_eq!(got, rows, "every row arrived");
        let ours = rows as f64 / t.elapsed().as_secs_f64();
        report.push(Line {
            target: "P4",
            figure: format!("initial sync of {rows} rows through GET /v1/shape until up-to-date"),
            unit: "rows/s",
            ours,
            anchor: Some(anchor),
            anchor_what: "COPY row_to_json".into(),
            ratio: Some(ours / anchor),
            goal: "≥ 0.8",
            pass: ours / anchor >= 0.8,
        });
        db.batch_execute("DROP TABLE p4").await.expect("drop p4");
    }

    if selected(only, "P9") {
        eprintln!("P9: cached chunk against nginx, {} s each", sizes.wrk_secs);
        db.batch_execute(
            "CREATE TABLE p9 (id int8 PRIMARY KEY, name text, value int4);
             INSERT INTO p9 SELECT g, 'a name of some forty characters, row ' || lpad(g::text, 3, '0'), g
               FROM generate_series(1, 24) g;",
        )
        .await
        .expect("p9");
        let url = format!("{}&offset=-1", shape_url(&ss.base, "p9", None));
        let body = http
            .get(&url)
            .send()
            .await
            .expect("p9 shape")
            .bytes()
            .await
            .expect("body");
        let root = dir.join("nginx-root");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(root.join("chunk.json"), &body).expect("chunk");
        let nginx = Nginx::start(&dir.join("nginx"), &root);
        let static_url = format!("http://127.0.0.1:{}/chunk.json", nginx.port);
        let secs = sizes.wrk_secs;
        let anchor = {
            let u = static_url.clone();
            tokio::task::spawn_blocking(move || infra::wrk(&u, secs, 64))
                .await
                .expect("wrk")
        };
        let ours = {
            let u = url.clone();
            tokio::task::spawn_blocking(move || infra::wrk(&u, secs, 64))
                .await
                .expect("wrk")
        };
        drop(nginx);
        report.push(Line {
            target: "P9",
            figure: format!(
                "same non-live chunk URL ({} B body), wrk 2 threads × 64 connections",
                body.len()
            ),
            unit: "req/s",
            ours,
            anchor: Some(anchor),
            anchor_what: "nginx static file".into(),
            ratio: Some(ours / anchor),
            goal: "≥ 0.7",
            pass: ours / anchor >= 0.7,
        });
    }

    if selected(only, "P10") {
        let c = sizes.creations;
        eprintln!("P10: {c} shapes created concurrently");
        db.batch_execute(
            "CREATE TABLE p10 (id int8 PRIMARY KEY, name text, value int4);
             INSERT INTO p10 SELECT g, 'name ' || g, g % 5000 FROM generate_series(1, 50000) g;
             CREATE INDEX ON p10 (value);",
        )
        .await
        .expect("p10");
        db.batch_execute("VACUUM ANALYZE p10")
            .await
            .expect("vacuum");
        // Publication and replica identity are set up by the first shape of a table.
        sync(&http, &shape_url(&ss.base, "p10", Some("value = -1"))).await;
        let t = Instant::now();
        let created = create_shapes(
            &http,
            &ss.base,
            "p10",
            (0..c).map(|k| format!("value = {k}")).collect(),
            c as usize,
        )
        .await;
        let all = t.elapsed().as_secs_f64();
        let mut lat: Vec<f64> = created.iter().map(|(_, d)| d.as_secs_f64()).collect();
        let p50 = infra::percentile(&mut lat, 0.5);
        report.push(Line {
            target: "P10",
            figure: format!("{c} distinct shapes created at once: until every first response"),
            unit: "s",
            ours: all,
            anchor: None,
            anchor_what: String::new(),
            ratio: None,
            goal: sizes.p10_goal.1,
            pass: all < sizes.p10_goal.0,
        });
        report.note(format!("P10: median first response {p50:.3} s"));
    }

    if selected(only, "P8") {
        let k = sizes.parked;
        eprintln!("P8: {k} parked long-polls");
        db.batch_execute(
            "CREATE TABLE park (id int8 PRIMARY KEY, v text); INSERT INTO park VALUES (1, 'x');",
        )
        .await
        .expect("park");
        let shape = shape_url(&ss.base, "park", None);
        let (pos, _) = sync(&http, &shape).await;
        let path = format!(
            "/v1/shape?table=park&offset={}&handle={}&live=true",
            pos.offset, pos.handle
        );
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss0, _) = ss.rss();
        let addr = format!("127.0.0.1:{}", ss.port);
        let conns: Vec<tokio::net::TcpStream> = futures::stream::iter(0..k)
            .map(|_| {
                let (addr, request) = (addr.clone(), request.clone());
                async move {
                    let mut s = tokio::net::TcpStream::connect(&addr)
                        .await
                        .expect("connect");
                    s.write_all(&request).await.expect("request");
                    s
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        wait_parked(&ss, &http, k).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss1, _) = ss.rss();
        let per = rss1.saturating_sub(rss0) as f64 / k as f64;
        drop(conns);
        report.push(Line {
            target: "P8",
            figure: format!(
                "resident memory per parked long-poll, {k} parked (one connection each)"
            ),
            unit: "bytes",
            ours: per,
            anchor: Some(4096.0),
            anchor_what: String::new(),
            ratio: Some(per / 4096.0),
            goal: "≤ 4,096",
            pass: per <= 4096.0,
        });
    }

    if selected(only, "P12") {
        let n = sizes.big_rows;
        let mb = n as f64 * 1024.0 / 1e6;
        eprintln!("P12: one transaction of {n} rows of ~1 KB ({mb:.0} MB)");
        db.batch_execute("CREATE TABLE big (id int8 PRIMARY KEY, payload text)")
            .await
            .expect("big");
        let shape = shape_url(&ss.base, "big", None);
        let (pos, _) = sync(&http, &shape).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss0, _) = ss.rss();
        infra::create_slot(&db, "bench_big").await;
        // Sample the child's resident memory while the transaction is committed and consumed.
        let pid = ss.pid();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = std::thread::spawn({
            let stop = std::sync::Arc::clone(&stop);
            move || {
                let mut peak = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(infra::status_bytes(pid, "VmRSS:"));
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            }
        });
        db.batch_execute(&format!(
            "INSERT INTO big SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, {n}) g"
        ))
        .await
        .expect("big transaction");
        let committed = Instant::now();
        let end = current_lsn(&db).await;
        let done = ss.wait_acked(&http, end, Duration::from_secs(3600)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().expect("sampler");
        let ours_secs = done.duration_since(committed).as_secs_f64();
        let anchor_secs = infra::recvlogical(url, "bench_big", PUBLICATION, end).await;
        infra::drop_slot(&db, "bench_big").await;
        // No purge: the shape still answers its old position with the same handle.
        let res = http
            .get(format!(
                "{shape}&offset={}&handle={}",
                pos.offset, pos.handle
            ))
            .send()
            .await
            .expect("after big txn");
        let kept = res.status() == 200 && infra::header(&res, "electric-handle") == pos.handle;
        drop(res);
        let growth = peak.saturating_sub(rss0) as f64 / 1e6;
        report.push(Line {
            target: "P12",
            figure: format!("one {mb:.0} MB transaction ({n} rows): peak RSS growth"),
            unit: "MB",
            ours: growth,
            anchor: Some(256.0),
            anchor_what: String::new(),
            ratio: Some(growth / 256.0),
            goal: "< 256 MB, no purge",
            pass: growth < 256.0 && kept,
        });
        let throughput = anchor_secs / ours_secs;
        report.push(Line {
            target: "P12",
            figure: format!("one {mb:.0} MB transaction: throughput, commit → acknowledged"),
            unit: "MB/s",
            ours: mb / ours_secs,
            anchor: Some(mb / anchor_secs),
            anchor_what: "pg_recvlogical".into(),
            ratio: Some(throughput),
            goal: "≥ 0.9",
            pass: throughput >= 0.9,
        });
        report.note(format!(
            "P12: commit → acknowledged in {ours_secs:.1} s ({:.1} MB/s); pg_recvlogical streamed it in {anchor_secs:.1} s ({:.1} MB/s); shape kept its handle: {kept}",
            mb / ours_secs,
            mb / anchor_secs
        ));
    }
    ss.stop();
}

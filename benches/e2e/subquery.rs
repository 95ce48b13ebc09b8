//! Instance C: subquery shapes (Q1–Q3), on their own shapesync with N shapes
//! `project_id IN (SELECT id FROM projects WHERE team_id = k)`, one per team.
//!
//! - Q1: resident memory per idle subquery shape (its dependency included).
//! - Q2: a project added to one team: commit → that team's waiting client has the `move-in`,
//!   against the walsender delivering the same commit.
//! - Q3: a project with k tasks moved into a team: commit → the client has the k rows, against
//!   the same rows read alone from Postgres (plus a per-row allowance for writing them).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::infra::{self, connect, create_shapes, header, live, shape_url, sync, Pos, Shapesync};
use crate::{selected, Line, Report, Sizes};

const STREAM: &str = "c";
const PUBLICATION: &str = "shapesync_pub_c";

fn clause(team: u64) -> String {
    format!("project_id IN (SELECT id FROM projects WHERE team_id = {team})")
}

/// Rows received from `pos` on (long-polling) until `want` have arrived.
async fn receive(http: &reqwest::Client, url: &str, pos: &Pos, want: u64) -> Pos {
    let mut pos = pos.clone();
    let mut got = 0;
    let needle = b"\"is_move_in\":true";
    while got < want {
        let q = format!(
            "{url}&offset={}&handle={}&live=true",
            pos.offset, pos.handle
        );
        let res = http.get(&q).send().await.expect("live");
        assert!(res.status().is_success(), "{q}: {}", res.status());
        pos = Pos {
            handle: header(&res, "electric-handle"),
            offset: header(&res, "electric-offset"),
        };
        let body = res.bytes().await.expect("body");
        got += body.windows(needle.len()).filter(|w| *w == needle).count() as u64;
    }
    pos
}

pub async fn run(
    url: &str,
    dir: &Path,
    sizes: &Sizes,
    only: &Option<BTreeSet<String>>,
    report: &mut Report,
) {
    if !["Q1", "Q2", "Q3"].iter().any(|t| selected(only, t)) {
        return;
    }
    let s = sizes.shapes;
    let db = connect(url).await;
    db.batch_execute(&format!(
        "CREATE TABLE projects (id int PRIMARY KEY, team_id int);
         CREATE INDEX ON projects (team_id);
         CREATE TABLE tasks (id int8 PRIMARY KEY, project_id int, title text);
         CREATE INDEX ON tasks (project_id);
         INSERT INTO projects SELECT g, g FROM generate_series(1, {s}) g;
         INSERT INTO tasks SELECT g, 1 + g % {s}, 'task ' || g FROM generate_series(1, {}) g;",
        2 * s
    ))
    .await
    .expect("tables");
    let http = reqwest::Client::new();
    let mut ss = Shapesync::new(url, &dir.join("c"), STREAM);
    ss.spawn();
    ss.wait_active(&http, Duration::from_secs(60)).await;
    // One shape first: the tables are published before the baseline.
    let first = shape_url(&ss.base, "tasks", Some(&clause(s + 1)));
    sync(&http, &first).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, _) = ss.rss();
    eprintln!("Q1: creating {s} subquery shapes");
    let t = Instant::now();
    create_shapes(&http, &ss.base, "tasks", (1..=s).map(clause).collect(), 32).await;
    eprintln!(
        "  {s} subquery shapes created in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, _) = ss.rss();
    let per = rss1.saturating_sub(rss0) as f64 / s as f64;
    if selected(only, "Q1") {
        report.push(Line {
            target: "Q1",
            figure: format!(
                "resident memory per idle subquery shape (each its own subquery), {s} shapes"
            ),
            unit: "B",
            ours: per,
            anchor: None,
            anchor_what: String::new(),
            ratio: None,
            goal: "≤ 4 KB",
            pass: per <= 4096.0,
        });
    }
    let team = 42.min(s);
    let url42 = shape_url(&ss.base, "tasks", Some(&clause(team)));
    let (mut pos, _) = sync(&http, &url42).await;
    let mut next_project = 10 * s + 1;
    if selected(only, "Q2") {
        let samples = sizes.latency_samples;
        eprintln!("Q2: {samples} samples with {s} subquery shapes");
        let mut anchor =
            crate::ingest::walsender_latencies(&db, url, ("bench_q", PUBLICATION), samples, || {
                next_project += 1;
                format!("INSERT INTO projects VALUES ({next_project}, 0)")
            })
            .await;
        let mut ours = Vec::new();
        for _ in 0..samples {
            let waiting = loop {
                let waiting = tokio::spawn({
                    let (http, u, p) = (http.clone(), url42.clone(), pos.clone());
                    async move { live(&http, &u, &p).await }
                });
                if crate::ingest::parked_or_answered(&ss, &http, &waiting).await {
                    break waiting;
                }
                pos = waiting.await.expect("live");
            };
            next_project += 1;
            let t = Instant::now();
            db.execute(
                &format!("INSERT INTO projects VALUES ({next_project}, {team})"),
                &[],
            )
            .await
            .expect("insert");
            pos = waiting.await.expect("live");
            ours.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let (o, a) = (
            infra::percentile(&mut ours, 0.5),
            infra::percentile(&mut anchor, 0.5),
        );
        report.push(Line {
            target: "Q2",
            figure: format!("project added to a team: commit → its client has the move-in, p50, {s} subquery shapes"),
            unit: "ms",
            ours: o,
            anchor: Some(a),
            anchor_what: "walsender commit → receive".into(),
            ratio: Some(o / a),
            goal: "≤ anchor + 5 ms",
            pass: o <= a + 5.0,
        });
    }
    if selected(only, "Q3") {
        let k = sizes.sync_rows.min(100_000);
        eprintln!("Q3: a move-in of {k} rows");
        next_project += 1;
        let p = next_project;
        db.batch_execute(&format!(
            "INSERT INTO projects VALUES ({p}, 0);
             INSERT INTO tasks SELECT 10000000 + g, {p}, 'moved ' || g FROM generate_series(1, {k}) g;"
        ))
        .await
        .expect("rows to move");
        // Their inserts reach every shape of the table first (a subquery shape's outer changes
        // are tested against each such shape: see the note): measured apart.
        let end = infra::current_lsn(&db).await;
        let t = Instant::now();
        ss.wait_acked(&http, end, Duration::from_secs(1800)).await;
        report.note(format!(
            "Q3: {k} inserts into the outer table took {:.1} s to be acknowledged with {s} subquery shapes on it",
            t.elapsed().as_secs_f64()
        ));
        // The anchor: the same rows read alone (all columns, as the move-in reads them).
        let t = Instant::now();
        let stream = db
            .copy_out(format!("COPY (SELECT id, project_id, title FROM tasks WHERE project_id IN ({p})) TO STDOUT").as_str())
            .await
            .expect("copy");
        futures::pin_mut!(stream);
        while let Some(c) = stream.next().await {
            c.expect("chunk");
        }
        let anchor = t.elapsed().as_secs_f64() * 1000.0;
        let (p42, _) = sync(&http, &url42).await;
        let t = Instant::now();
        db.execute(
            &format!("UPDATE projects SET team_id = {team} WHERE id = {p}"),
            &[],
        )
        .await
        .expect("move");
        receive(&http, &url42, &p42, k).await;
        let ours = t.elapsed().as_secs_f64() * 1000.0;
        // Writing k rows (JSON, log, group commit, HTTP) is allowed 5 µs each.
        let allowance = k as f64 * 0.005;
        report.push(Line {
            target: "Q3",
            figure: format!("move-in of {k} rows: commit → client has them (anchor: the query alone; goal adds 5 µs/row)"),
            unit: "ms",
            ours,
            anchor: Some(anchor),
            anchor_what: "COPY of the same rows".into(),
            ratio: Some(ours / anchor),
            goal: "≤ 1.2 × anchor + 5 µs/row",
            pass: ours <= 1.2 * anchor + allowance,
        });
    }
    ss.stop();
}

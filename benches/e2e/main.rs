//! The end-to-end harness: every target of docs/targets.md (P1–P12), and the subquery targets
//! of benches/README.md (Q1–Q3), measured side by side
//! with its anchor in the same run, on its own Postgres (fsync on) and shapesync started as a
//! child process from the release binary.
//!
//! ```sh
//! bash scripts/bench.sh            # quick mode (< 10 min on 2 cores), builds and installs what it needs
//! bash scripts/bench.sh full       # the sizes of targets.md
//! bash scripts/bench.sh scale      # 100,000 shapes on one node (P1, P2, P7, P10, P11)
//! cargo bench --bench e2e -- quick --only P1,P4   # some targets (needs target/release/shapesync)
//! ```
//!
//! Prints a table (target, figure, shapesync, anchor, ratio, goal, result) and writes it as
//! JSON to `target/bench-e2e.json` (and `target/bench-e2e-<mode>-<commit>.json`) so runs can be
//! compared across commits. Not part of the test command (which only compiles it).

mod infra;
mod ingest;
mod serving;
mod subquery;

use std::collections::BTreeSet;

/// Sizes of one run.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub mode: &'static str,
    /// Rows inserted (and then updated) for P1/P2.
    pub ingest_rows: u64,
    /// `value = k` shapes for P2, P5, P7, P11.
    pub shapes: u64,
    /// Rows of the P4 shape.
    pub sync_rows: u64,
    pub latency_samples: usize,
    /// Shapes (each with a waiting client) one transaction hits (P6).
    pub fanout: u64,
    /// Parked long-polls (P8).
    pub parked: u64,
    /// Concurrent shape creations (P10).
    pub creations: u64,
    pub wrk_secs: u64,
    /// Rows of ~1 KB in the one big transaction (P12).
    pub big_rows: u64,
    /// Goals that depend on the size: P2's ratio to P1, P10's and P11's seconds.
    pub p2_goal: (f64, &'static str),
    pub p10_goal: (f64, &'static str),
    pub p11_goal: (f64, &'static str),
}

impl Sizes {
    fn quick() -> Sizes {
        Sizes {
            mode: "quick",
            ingest_rows: 200_000,
            shapes: 2_000,
            sync_rows: 200_000,
            latency_samples: 100,
            fanout: 1_500,
            parked: 5_000,
            creations: 2_000,
            wrk_secs: 5,
            big_rows: 100_000,
            p2_goal: (0.8, "≥ 0.8"),
            p10_goal: (3.0, "< 3 s"),
            p11_goal: (1.0, "< 1 s"),
        }
    }

    fn full() -> Sizes {
        Sizes {
            mode: "full",
            ingest_rows: 1_000_000,
            shapes: 10_000,
            sync_rows: 1_000_000,
            latency_samples: 200,
            fanout: 1_500,
            parked: 10_000,
            creations: 2_000,
            wrk_secs: 10,
            big_rows: 1_000_000,
            p2_goal: (0.8, "≥ 0.8"),
            p10_goal: (3.0, "< 3 s"),
            p11_goal: (1.0, "< 1 s"),
        }
    }

    /// 100,000 shapes on one node: P7 at 100,000 idle shapes, P11 restarting with them, P10
    /// with 10,000 shapes created at once, P2 routing to 100,000 shapes.
    fn scale() -> Sizes {
        Sizes {
            mode: "scale",
            ingest_rows: 1_000_000,
            shapes: 100_000,
            sync_rows: 1_000,
            latency_samples: 10,
            fanout: 1_500,
            parked: 1_000,
            creations: 10_000,
            wrk_secs: 5,
            big_rows: 1_000,
            p2_goal: (0.7, "≥ 0.7"),
            p10_goal: (10.0, "< 10 s"),
            p11_goal: (3.0, "< 3 s"),
        }
    }
}

/// One line of the result table.
#[derive(Clone, Debug)]
pub struct Line {
    pub target: &'static str,
    pub figure: String,
    pub unit: &'static str,
    pub ours: f64,
    pub anchor: Option<f64>,
    /// What the anchor is (empty for a fixed per-unit goal).
    pub anchor_what: String,
    pub ratio: Option<f64>,
    pub goal: &'static str,
    pub pass: bool,
}

#[derive(Default)]
pub struct Report {
    pub lines: Vec<Line>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn push(&mut self, line: Line) {
        eprintln!(
            "  {} {}: {} {} (anchor {}) {}",
            line.target,
            line.figure,
            fmt(line.ours),
            line.unit,
            line.anchor.map_or("-".into(), fmt),
            if line.pass { "pass" } else { "FALLS SHORT" }
        );
        self.lines.push(line);
    }

    pub fn note(&mut self, note: String) {
        eprintln!("  note: {note}");
        self.notes.push(note);
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    let s = if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    // Thousands separators for readability.
    if a >= 10_000.0 {
        let digits = s.trim_start_matches('-');
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else {
        s
    }
}

pub fn selected(only: &Option<BTreeSet<String>>, target: &str) -> bool {
    only.as_ref().is_none_or(|o| o.contains(target))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` lists targets; nothing to list here.
    }
    let scale = args.iter().any(|a| a == "scale");
    let mut sizes = if scale {
        Sizes::scale()
    } else if args.iter().any(|a| a == "full") {
        Sizes::full()
    } else {
        Sizes::quick()
    };
    let mut only: Option<BTreeSet<String>> = args
        .iter()
        .find_map(|a| a.strip_prefix("--only="))
        .map(|s| s.split(',').map(|t| t.trim().to_uppercase()).collect());
    if scale && only.is_none() {
        only = Some(
            ["P1", "P2", "P7", "P10", "P11"]
                .into_iter()
                .map(String::from)
                .collect(),
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::default();
    // Each parked request holds a socket (in the harness too): their number is capped by this
    // machine's open-file limit (the child inherits it). Shape logs hold files only while used.
    let nofile = infra::nofile_limit();
    let parked_cap = nofile.saturating_sub(3_000);
    if sizes.parked > parked_cap {
        report.note(format!(
            "parked requests capped at {parked_cap} (not {}) by the open-file limit of {nofile}",
            sizes.parked
        ));
        sizes.parked = parked_cap;
    }
    sizes.fanout = sizes.fanout.min(sizes.shapes);
    eprintln!("e2e bench, {sizes:?}");
    let started = std::time::Instant::now();
    rt.block_on(async {
        let dir = tempfile::Builder::new()
            .prefix("shapesync-bench-")
            .tempdir()
            .expect("tempdir");
        let pg = shapesync::postgres::embedded::EmbeddedPostgres::start(
            &shapesync::postgres::embedded::EmbeddedOptions {
                dir: dir.path().join("pg"),
                port: None,
                fast_unsafe: false,
                remove_on_exit: true,
                settings: Vec::new(),
            },
        )
        .expect("postgres");
        let url = pg.url("postgres");
        ingest::run(&url, dir.path(), &sizes, &only, &mut report).await;
        serving::run(&url, dir.path(), &sizes, &only, &mut report).await;
        subquery::run(&url, dir.path(), &sizes, &only, &mut report).await;
        let _ = pg.stop();
    });
    print_and_save(&sizes, &report, started.elapsed().as_secs_f64());
}

fn print_and_save(sizes: &Sizes, report: &Report, secs: f64) {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!(
        "\nshapesync e2e bench, {} mode, commit {commit}, {:.0} s\n",
        sizes.mode, secs
    );
    println!("| target | figure | shapesync | anchor | ratio | goal | result |");
    println!("|---|---|---|---|---|---|---|");
    for l in &report.lines {
        let anchor = match l.anchor {
            Some(a) if l.anchor_what.is_empty() => fmt(a),
            Some(a) => format!("{} ({})", fmt(a), l.anchor_what),
            None => "–".into(),
        };
        println!(
            "| {} | {} ({}) | {} | {} | {} | {} | {} |",
            l.target,
            l.figure,
            l.unit,
            fmt(l.ours),
            anchor,
            l.ratio.map_or("–".into(), |r| format!("{r:.2}")),
            l.goal,
            if l.pass { "pass" } else { "falls short" }
        );
    }
    for n in &report.notes {
        println!("\n- {n}");
    }
    let json = serde_json::json!({
        "mode": sizes.mode,
        "commit": commit,
        "seconds": secs,
        "sizes": format!("{sizes:?}"),
        "notes": report.notes,
        "results": report.lines.iter().map(|l| serde_json::json!({
            "target": l.target, "figure": l.figure, "unit": l.unit, "shapesync": l.ours,
            "anchor": l.anchor, "anchor_what": l.anchor_what, "ratio": l.ratio,
            "goal": l.goal, "pass": l.pass,
        })).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::create_dir_all(&target);
    let _ = std::fs::write(target.join("bench-e2e.json"), &text);
    let _ = std::fs::write(
        target.join(format!("bench-e2e-{}-{commit}.json", sizes.mode)),
        &text,
    );
}

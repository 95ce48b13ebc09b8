//! P3 (docs/targets.md): the cost of one compiled where clause on one change, for several
//! clause kinds, against the target of 0.5 µs per shape per change. Each clause is compiled
//! once (`parse_where`) and evaluated over a batch of pre-decoded rows (Postgres text values,
//! as the replication decoder hands them over) many times; the figure is wall time divided by
//! evaluations. The "read the value" line is the floor: fetching the column bytes and touching
//! them, with no predicate at all.
//!
//! No database needed (the table is built in memory). Run with `cargo bench --bench predicate`
//! (`SHAPESYNC_BENCH_PREDICATE_MS`, default 400 ms per clause). Prints a table and writes
//! `target/bench-predicate.json`. Clauses the engine does not support yet are listed as such.

use std::hint::black_box;
use std::time::{Duration, Instant};

use shapesync_filter::table::{ColumnInfo, TableInfo};
use shapesync_filter::{parse_where, Row};

const TARGET_NS: f64 = 500.0;
const BATCH: usize = 4096;

const CLAUSES: &[(&str, &str)] = &[
    ("simple eq", "n = 42"),
    ("text eq", "name = 'item-42'"),
    ("range AND", "n >= 100 AND n < 5000 AND price > 9.5"),
    ("OR of eqs", "n = 1 OR n = 42 OR flag IS TRUE"),
    ("uuid eq", "owner = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    ("ILIKE", "name ILIKE '%em-4%'"),
    ("IN list", "n IN (1, 5, 42, 99, 512, 1000, 4096, 9999)"),
    ("BETWEEN", "price BETWEEN 10 AND 20.5"),
    ("arithmetic", "n * 2 + 1 > 5000 AND n % 7 = 3"),
    ("$1 param", "n > $1 AND name <> $2"),
    ("ANY array", "42 = ANY(tags)"),
    ("jsonb ->>", "doc ->> 'kind' = 'order'"),
    ("timestamptz", "created > '2026-01-01 00:00+00'"),
];

fn column(name: &str, ty: &str, dims: i32, pk: Option<usize>) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        type_oid: 0,
        type_name: ty.into(),
        dims,
        type_mod: -1,
        not_null: pk.is_some(),
        pk_index: pk,
    }
}

fn table() -> TableInfo {
    let mut t = TableInfo::new(
        16384,
        "public".into(),
        "items".into(),
        vec![
            column("id", "int8", 0, Some(0)),
            column("n", "int4", 0, None),
            column("price", "numeric", 0, None),
            column("name", "text", 0, None),
            column("flag", "bool", 0, None),
            column("owner", "uuid", 0, None),
            column("tags", "int4", 1, None),
            column("doc", "jsonb", 0, None),
            column("created", "timestamptz", 0, None),
        ],
    );
    // The C locale (ILIKE needs a C character classification).
    t.locale = shapesync_filter::table::TextLocale {
        collate: "C".into(),
        ctype: "C".into(),
        provider: "c".into(),
    };
    t
}

/// A decoded change: column values in text form, `None` = NULL.
struct Change(Vec<Option<Vec<u8>>>);

impl Row for Change {
    fn value(&self, column: usize) -> Option<&[u8]> {
        self.0.get(column)?.as_deref()
    }
}

fn changes() -> Vec<Change> {
    (0..BATCH as u64)
        .map(|i| {
            let n = i * 2_654_435_761 % 10_000;
            let text = |s: String| Some(s.into_bytes());
            Change(vec![
                text(i.to_string()),
                if i % 17 == 0 {
                    None
                } else {
                    text(n.to_string())
                },
                text(format!("{}.{:02}", n % 40, i % 100)),
                text(format!("item-{n}")),
                text(if i % 3 == 0 { "t" } else { "f" }.into()),
                text(format!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd38{:04x}", i % 4)),
                text(format!("{{{},{},42}}", n % 50, n % 7)),
                text(format!(
                    "{{\"kind\": \"{}\", \"qty\": {}}}",
                    if i % 4 == 0 { "order" } else { "quote" },
                    n % 13
                )),
                text(format!("2026-0{}-1{} 12:00:00+00", 1 + i % 9, i % 10)),
            ])
        })
        .collect()
}

struct Figure {
    kind: &'static str,
    clause: &'static str,
    ns: Option<f64>,
    matched: f64,
    note: String,
}

/// Evaluate `eval` over the batch until `budget` has passed; ns per row and match fraction.
fn measure(rows: &[Change], budget: Duration, eval: impl Fn(&Change) -> bool) -> (f64, f64) {
    let matched = rows.iter().filter(|r| eval(r)).count();
    let start = Instant::now();
    let mut evals = 0u64;
    while start.elapsed() < budget {
        for r in rows {
            black_box(eval(black_box(r)));
        }
        evals += rows.len() as u64;
    }
    let ns = start.elapsed().as_nanos() as f64 / evals as f64;
    (ns, matched as f64 / rows.len() as f64)
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("SHAPESYNC_BENCH_PREDICATE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400),
    );
    let table = table();
    let rows = changes();
    let params = vec!["100".to_string(), "item-7".to_string()];
    let mut figures = Vec::new();

    let (floor, _) = measure(&rows, budget, |r| {
        r.value(1).is_some_and(|v| v.first() == Some(&b'4'))
    });
    figures.push(Figure {
        kind: "read the value",
        clause: "(floor: no predicate)",
        ns: Some(floor),
        matched: 0.0,
        note: String::new(),
    });
    for (kind, clause) in CLAUSES {
        match parse_where(clause, &table, &params) {
            Ok(wc) => {
                let (ns, matched) = measure(&rows, budget, |r| wc.matches(r));
                figures.push(Figure {
                    kind,
                    clause,
                    ns: Some(ns),
                    matched,
                    note: String::new(),
                });
            }
            Err(e) => figures.push(Figure {
                kind,
                clause,
                ns: None,
                matched: 0.0,
                note: format!("not supported by the engine yet: {e}"),
            }),
        }
    }
    print_table(&figures);
    write_json(&figures);
}

fn print_table(figures: &[Figure]) {
    println!("\nP3: compiled predicate cost per shape per change (target ≤ {TARGET_NS} ns)\n");
    println!("| kind | clause | ns/change | matched | ratio to target | result |");
    println!("|---|---|---|---|---|---|");
    for f in figures {
        match f.ns {
            Some(ns) => println!(
                "| {} | `{}` | {ns:.1} | {:.1}% | {:.3} | {} |",
                f.kind,
                f.clause,
                f.matched * 100.0,
                ns / TARGET_NS,
                if ns <= TARGET_NS { "pass" } else { "FAIL" }
            ),
            None => println!("| {} | `{}` | – | – | – | {} |", f.kind, f.clause, f.note),
        }
    }
}

fn write_json(figures: &[Figure]) {
    let json: Vec<serde_json::Value> = figures
        .iter()
        .map(|f| {
            serde_json::json!({"kind": f.kind, "clause": f.clause, "ns_per_change": f.ns,
                "matched": f.matched, "target_ns": TARGET_NS,
                "ratio": f.ns.map(|ns| ns / TARGET_NS), "note": f.note})
        })
        .collect();
    let out = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/bench-predicate.json"
    );
    let _ = std::fs::write(out, serde_json::to_string_pretty(&json).unwrap_or_default());
}

//! Differential oracle for where clauses: random well-typed clauses over a table holding every
//! supported type and its edge values; for each clause and row, the engine's verdict
//! (`WhereClause::matches` on the row's Postgres text output) must equal Postgres' own
//! (`(<clause>) IS TRUE`), and so must Postgres' verdict on the engine's re-rendered SQL
//! (`WhereClause::sql()`, what the snapshot query runs).
//!
//! Feature groups: clauses using only the groups in [`ENABLED`] must be accepted by the engine
//! (a rejection fails the test); clauses using any other group may be rejected, but if the engine
//! accepts one, its verdicts must still agree. Postgres runtime errors (division by zero,
//! overflow, out of range) are handled per row: the clause is evaluated row by row and rows on
//! which Postgres raises an error are left out of the comparison (the clause is skipped if every
//! row errors). A clause Postgres rejects at analysis (SQLSTATE class 42) is a generator bug and
//! fails the test.
//!
//! Time-budgeted: `SHAPESYNC_ORACLE_SECS` (default 20). Seeded: the seed is printed on failure
//! and `SHAPESYNC_ORACLE_SEED` replays it. A mismatch is shrunk to a minimal clause and printed
//! with the row.

mod clause;
mod data;
pub mod grammar;
mod subquery;

use std::time::{Duration, Instant};

use shapesync::postgres::catalog::load_table;
use shapesync::postgres::connect::DISPLAY_OPTIONS;
use shapesync_filter::table::TableInfo;
use shapesync_filter::{parse_where, Row, WhereClause};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::{connect, fresh_db};
use grammar::{Clause, Gen, Group};

/// The groups the engine claims to support (all of them now); a group not listed here would
/// stay off until the engine claims it.
pub const ENABLED: &[Group] = &[
    Group::Core,
    Group::Logic,
    Group::NullTests,
    Group::Params,
    Group::Distinct,
    Group::InList,
    Group::Between,
    Group::Like,
    Group::Floats,
    Group::ColumnCompare,
    Group::Arithmetic,
    Group::Concat,
    Group::Functions,
    Group::TextOrder,
    Group::ILike,
    Group::AnyAll,
    Group::Arrays,
    Group::Enums,
    Group::Domains,
    Group::Bytea,
    Group::Jsonb,
    Group::DateTime,
    Group::Casts,
];

const ROWS: usize = 60;
const MAX_DEPTH: u32 = 3;

/// A replayable seed: `var` if set, else the clock.
pub fn env_seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        })
}

/// A number from `var`, else `default`.
pub fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: small, seedable, good enough to drive a generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One table row: `id` and every column's text output (`None` = NULL), in table order.
struct TextRow {
    id: i64,
    values: Vec<Option<String>>,
}

impl Row for TextRow {
    fn value(&self, column: usize) -> Option<&[u8]> {
        self.values.get(column)?.as_deref().map(str::as_bytes)
    }
}

/// The rows of `table` in `id` order. The simple query protocol returns each value's text
/// output, exactly what pgoutput and the snapshot deliver (`col::text` would differ: it
/// strips bpchar padding).
async fn read_rows(db: &Client, table: &str) -> Vec<TextRow> {
    let mut rows = Vec::new();
    for m in db
        .simple_query(&format!("SELECT * FROM {table} ORDER BY id"))
        .await
        .expect("read rows")
    {
        if let SimpleQueryMessage::Row(r) = m {
            let values: Vec<Option<String>> =
                (0..r.len()).map(|i| r.get(i).map(str::to_string)).collect();
            let id = values[0]
                .as_deref()
                .and_then(|v| v.parse().ok())
                .expect("id");
            rows.push(TextRow { id, values });
        }
    }
    rows
}

/// Postgres' verdict per row (in `id` order); `None` where evaluating raised an error.
type Verdicts = Vec<Option<bool>>;

#[derive(Default, Debug)]
struct Stats {
    checked_enabled: usize,
    checked_other: usize,
    rejected_other: usize,
    pg_rejected: usize,
    rows_compared: usize,
    rows_pg_error: usize,
}

struct Oracle {
    db: Client,
    table: TableInfo,
    rows: Vec<TextRow>,
    seed: u64,
    enabled: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_clauses_agree_with_postgres() {
    let seed = env_seed("SHAPESYNC_ORACLE_SEED");
    let secs = env_number("SHAPESYNC_ORACLE_SECS", 20);
    let oracle = Oracle::setup(seed).await;
    let mut rng = Rng(seed);
    let mut stats = Stats::default();
    let all = Group::set(Group::ALL);
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        // Mostly clauses the engine must handle; some from the whole grammar.
        let allowed = if rng.below(4) == 0 {
            all
        } else {
            oracle.enabled
        };
        let mut gen = Gen::new(&mut rng, allowed);
        let clause = gen.clause(MAX_DEPTH);
        let (used, params) = (gen.used, gen.params);
        oracle.check(&clause, used, &params, &mut stats).await;
    }
    println!("oracle seed {seed}: {stats:?}");
    assert!(
        stats.checked_enabled >= 50,
        "too few clauses checked in {secs}s (seed {seed}): {stats:?}"
    );
    assert!(stats.rows_compared > stats.rows_pg_error);
}

impl Oracle {
    async fn setup(seed: u64) -> Oracle {
        let url = fresh_db("oracle").await;
        let db = connect(&url).await;
        db.batch_execute(&session_settings())
            .await
            .expect("settings");
        db.batch_execute(data::DDL).await.expect("ddl");
        let mut rng = Rng(seed ^ 0xDA7A);
        for insert in data::inserts(&mut rng, ROWS) {
            db.batch_execute(&insert)
                .await
                .unwrap_or_else(|e| panic!("{insert}: {e}"));
        }
        let table = load_table(&db, "public", "t").await.expect("catalog");
        let rows = read_rows(&db, "t").await;
        assert_eq!(rows.len(), ROWS);
        Oracle {
            db,
            table,
            rows,
            seed,
            enabled: Group::set(ENABLED),
        }
    }

    async fn check(&self, clause: &Clause, used: u32, params: &[String], stats: &mut Stats) {
        let must_accept = used & !self.enabled == 0;
        let pg_sql = clause.render(false);
        let Some(expected) = self.pg_verdicts(&pg_sql).await else {
            stats.pg_rejected += 1;
            return;
        };
        let eng_sql = clause.render(true);
        let wc = match parse_where(&eng_sql, &self.table, params) {
            Ok(wc) => wc,
            Err(e) if must_accept => self.fail(format!(
                "the engine rejected a clause of enabled groups {:?}\n  clause: {eng_sql}\n  params: {params:?}\n  error: {e}",
                Group::names(used)
            )),
            Err(_) => {
                stats.rejected_other += 1;
                return;
            }
        };
        if must_accept {
            stats.checked_enabled += 1;
        } else {
            stats.checked_other += 1;
        }
        stats.rows_pg_error += expected.iter().filter(|v| v.is_none()).count();
        stats.rows_compared += expected.iter().filter(|v| v.is_some()).count();
        if let Some((row, want)) = self.first_disagreement(&wc, &expected) {
            let (min, min_want) = self.shrink(clause, params, row, want).await;
            self.fail(format!(
                "engine and Postgres disagree (groups {:?})\n  clause: {eng_sql}\n  params: {params:?}\n  minimal clause: {}\n  Postgres says {min_want}, the engine says {}\n  row: {}",
                Group::names(used),
                min.render(true),
                !min_want,
                self.describe(row)
            ));
        }
        self.check_rendering(&wc, &pg_sql, &expected).await;
    }

    /// The first row (and Postgres' verdict on it) where the engine says otherwise.
    fn first_disagreement(
        &self,
        wc: &WhereClause,
        expected: &Verdicts,
    ) -> Option<(&TextRow, bool)> {
        self.rows
            .iter()
            .zip(expected)
            .find_map(|(row, want)| want.filter(|w| wc.matches(row) != *w).map(|w| (row, w)))
    }

    /// `WhereClause::sql()` must mean the same to Postgres as the original clause.
    async fn check_rendering(&self, wc: &WhereClause, original: &str, expected: &Verdicts) {
        let rendered = &wc.sql(&self.table);
        let got = match self.pg_verdicts(rendered).await {
            Some(v) => v,
            None => self.fail(format!(
                "Postgres rejects the engine's rendering\n  clause: {original}\n  rendered: {rendered}"
            )),
        };
        for ((row, want), got) in self.rows.iter().zip(expected).zip(&got) {
            if let (Some(w), Some(g)) = (want, got) {
                if w != g {
                    self.fail(format!(
                        "the rendered SQL selects differently\n  clause: {original}\n  rendered: {rendered}\n  original says {w}, rendered says {g}\n  row: {}",
                        self.describe(row)
                    ));
                }
            }
        }
    }

    /// Postgres' verdicts, row by row when the whole-table query raises a runtime error;
    /// `None` when no row can be evaluated.
    async fn pg_verdicts(&self, clause: &str) -> Option<Verdicts> {
        let sql = format!("SELECT ({clause}) IS TRUE FROM t ORDER BY id");
        match self.db.query(sql.as_str(), &[]).await {
            Ok(rows) => return Some(rows.iter().map(|r| Some(r.get(0))).collect()),
            Err(e) => self.runtime_error_or_fail(clause, &e),
        }
        let mut out = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            out.push(self.pg_verdict(clause, row.id).await);
        }
        out.iter().any(Option::is_some).then_some(out)
    }

    async fn pg_verdict(&self, clause: &str, id: i64) -> Option<bool> {
        let sql = format!("SELECT ({clause}) IS TRUE FROM t WHERE id = $1");
        match self.db.query_one(sql.as_str(), &[&id]).await {
            Ok(r) => Some(r.get(0)),
            Err(e) => {
                self.runtime_error_or_fail(clause, &e);
                None
            }
        }
    }

    /// Data exceptions (class 22: division by zero, overflow, out of range…, and 0A000 for a
    /// NaN or infinity cast to an integer) are runtime errors; anything else means the
    /// generator produced an invalid clause.
    fn runtime_error_or_fail(&self, clause: &str, e: &tokio_postgres::Error) {
        let runtime = e.code().is_some_and(|c| {
            c.code().starts_with("22")
                || *c == SqlState::PROGRAM_LIMIT_EXCEEDED
                || *c == SqlState::FEATURE_NOT_SUPPORTED
        });
        if !runtime {
            self.fail(format!(
                "Postgres rejects a generated clause (generator bug)\n  clause: {clause}\n  error: {e:?}"
            ));
        }
    }

    /// Shrink a clause while engine and Postgres still disagree on `row`.
    async fn shrink(
        &self,
        clause: &Clause,
        params: &[String],
        row: &TextRow,
        want: bool,
    ) -> (Clause, bool) {
        let mut best = (clause.clone(), want);
        'outer: loop {
            for cand in best.0.shrinks() {
                let Ok(wc) = parse_where(&cand.render(true), &self.table, params) else {
                    continue;
                };
                let Some(w) = self.pg_verdict(&cand.render(false), row.id).await else {
                    continue;
                };
                if wc.matches(row) != w {
                    best = (cand, w);
                    continue 'outer;
                }
            }
            return best;
        }
    }

    fn describe(&self, row: &TextRow) -> String {
        let cols: Vec<String> = self
            .table
            .columns
            .iter()
            .zip(&row.values)
            .map(|(c, v)| match v {
                Some(v) => format!("{}={v:?}", c.name),
                None => format!("{}=NULL", c.name),
            })
            .collect();
        cols.join(" ")
    }

    fn fail(&self, msg: String) -> ! {
        panic!(
            "{msg}\n  replay: SHAPESYNC_ORACLE_SEED={} cargo test --test integration oracle",
            self.seed
        )
    }
}

/// The server's display settings (`-c k=v` options) as `SET` statements, so values and
/// constants read and parse exactly as the server's own sessions do.
fn session_settings() -> String {
    DISPLAY_OPTIONS
        .split("-c ")
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| format!("SET {k} = '{v}';"))
        .collect()
}

/// The oracle itself can fail: a clause whose engine text differs from its Postgres text is
/// caught, and shrinking keeps only the part responsible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_catches_and_shrinks_a_disagreement() {
    let oracle = Oracle::setup(1).await;
    let atom = |eng: &str, pg: &str| {
        Clause::Atom(grammar::S {
            eng: eng.into(),
            pg: pg.into(),
        })
    };
    let clause = Clause::Or(vec![
        atom("i4 IS NULL", "i4 IS NULL"),
        Clause::And(vec![
            atom("b IS NOT NULL", "b IS NOT NULL"),
            atom("i4 <= 0", "i4 > 0"),
        ]),
    ]);
    let expected = oracle
        .pg_verdicts(&clause.render(false))
        .await
        .expect("verdicts");
    let wc = parse_where(&clause.render(true), &oracle.table, &[]).expect("engine");
    let (row, want) = oracle
        .first_disagreement(&wc, &expected)
        .expect("a disagreement is found");
    let (min, _) = oracle.shrink(&clause, &[], row, want).await;
    assert_eq!(min.render(true), "i4 <= 0");
    let same = atom("i4 > 0", "i4 > 0");
    let wc = parse_where(&same.render(true), &oracle.table, &[]).expect("engine");
    let expected = oracle
        .pg_verdicts(&same.render(false))
        .await
        .expect("verdicts");
    assert!(oracle.first_disagreement(&wc, &expected).is_none());
}

//! The oracle for `IN (SELECT …)`: random clauses mixing the oracle's generated predicates with
//! memberships (`col IN`, `NOT IN`, the row form, nested a level, under AND/OR/NOT) over two
//! tables of the same columns and different rows, `t` (the shape's) and `s`. The engine
//! evaluates each row of `t` against views it builds itself (each subquery's clause evaluated
//! on its table's rows, nested views first), and must agree with Postgres on every row; so
//! must the rendered SQL, and the normal form (`Dnf::includes` of the row's active conditions
//! equals the verdict).
//!
//! Time-budgeted by `SHAPESYNC_ORACLE_SECS` (default 20, halved here), seeded like the main
//! oracle (`SHAPESYNC_ORACLE_SEED` replays).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shapesync::postgres::catalog::load_table;
use shapesync_filter::table::TableInfo;
use shapesync_filter::{parse_where_in, Dnf, Fail, Row, Subquery, View, WhereClause};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::clause::S;
use super::grammar::{Clause, Gen, Group};
use super::{data, read_rows, session_settings, Rng, TextRow, ENABLED, ROWS};
use crate::support::{connect, fresh_db};

/// Columns a membership may compare (the link types the engine keys exactly).
const LINKS: &[&str] = &[
    "i2", "i4", "i8", "num", "f4", "f8", "b", "t", "vc", "bc", "u", "by", "d", "tm", "ts", "tz",
    "iv", "e", "dm",
];

struct Tables {
    t: Arc<TableInfo>,
    s: Arc<TableInfo>,
    t_rows: Vec<TextRow>,
    s_rows: Vec<TextRow>,
}

/// A row with the current results of its clause's subqueries.
struct WithViews<'a> {
    row: &'a TextRow,
    views: &'a [View],
}

impl Row for WithViews<'_> {
    fn value(&self, column: usize) -> Option<&[u8]> {
        self.row.value(column)
    }
    fn membership(&self, dep: usize, values: &[Option<&[u8]>]) -> Result<Option<bool>, Fail> {
        self.views
            .get(dep)
            .map(|v| v.membership(values))
            .ok_or(Fail)
    }
}

impl Tables {
    fn rows(&self, table: &TableInfo) -> &[TextRow] {
        if table.name == "s" {
            &self.s_rows
        } else {
            &self.t_rows
        }
    }

    /// The views of `clause`'s subqueries, built from their tables' rows.
    fn views(&self, clause: &WhereClause) -> Vec<View> {
        clause
            .subqueries()
            .iter()
            .map(|sub| self.view(sub))
            .collect()
    }

    fn view(&self, sub: &Subquery) -> View {
        let nested = sub
            .filter
            .as_ref()
            .map(|f| self.views(f))
            .unwrap_or_default();
        let mut view = View::of(sub);
        for row in self.rows(&sub.table) {
            let r = WithViews {
                row,
                views: &nested,
            };
            if sub.filter.as_ref().is_none_or(|f| f.matches(&r)) {
                let values: Vec<Option<&[u8]>> =
                    sub.columns.iter().map(|c| row.value(*c)).collect();
                view.add(&values);
            }
        }
        view
    }
}

/// Plain predicates from the main oracle's grammar (no `$n`: the parts are generated apart).
fn plain(rng: &mut Rng, depth: u32) -> Clause {
    let allowed = Group::set(ENABLED) & !Group::Params.bit();
    Gen::new(rng, allowed).clause(depth)
}

/// `link IN (SELECT link FROM <inner> [WHERE …])`, maybe negated, maybe a row of two columns,
/// maybe with a membership over the other table in the inner clause.
fn membership(rng: &mut Rng, inner: &str, nest: bool) -> Clause {
    let mut cols = vec![LINKS[rng.below(LINKS.len())]];
    if rng.below(4) == 0 {
        cols.push(LINKS[rng.below(LINKS.len())]);
        cols.dedup();
    }
    let list = cols.join(", ");
    let left = if cols.len() > 1 {
        format!("({list})")
    } else {
        list.clone()
    };
    let other = if inner == "s" { "t" } else { "s" };
    let filter = match rng.below(4) {
        0 => None,
        1 if nest => Some(Clause::And(vec![
            plain(rng, 1),
            membership(rng, other, false),
        ])),
        _ => Some(plain(rng, 2)),
    };
    let not_in = rng.below(4) == 0;
    let text = |engine: bool| {
        let w = filter
            .as_ref()
            .map(|f| format!(" WHERE {}", f.render(engine)))
            .unwrap_or_default();
        let not = if not_in { "NOT " } else { "" };
        format!("{left} {not}IN (SELECT {list} FROM {inner}{w})")
    };
    let atom = Clause::Atom(S {
        eng: text(true),
        pg: text(false),
    });
    if rng.below(3) == 0 {
        Clause::Not(Box::new(atom))
    } else {
        atom
    }
}

/// A clause over `t` with at least one membership.
fn clause(rng: &mut Rng, depth: u32) -> Clause {
    if depth == 0 || rng.below(3) == 0 {
        return membership(rng, "s", true);
    }
    let n = 2 + rng.below(2);
    let mut items: Vec<Clause> = (0..n)
        .map(|_| {
            if rng.below(2) == 0 {
                clause(rng, depth - 1)
            } else {
                plain(rng, 1)
            }
        })
        .collect();
    if !items.iter().any(|c| c.render(true).contains("SELECT")) {
        items[0] = membership(rng, "s", true);
    }
    match rng.below(5) {
        0 | 1 => Clause::And(items),
        2 | 3 => Clause::Or(items),
        _ => Clause::Not(Box::new(Clause::And(items))),
    }
}

fn fail(seed: u64, msg: String) -> ! {
    panic!("{msg}\n  replay: SHAPESYNC_ORACLE_SEED={seed} cargo test --test integration subquery_clauses")
}

/// Postgres' verdict per row of `t` (`None` where it raises a runtime error), row by row when
/// the whole statement fails; `None` when no row can be evaluated.
async fn verdicts(
    db: &Client,
    clause: &str,
    rows: &[TextRow],
    seed: u64,
) -> Option<Vec<Option<bool>>> {
    let runtime = |e: &tokio_postgres::Error| {
        e.code().is_some_and(|c| {
            c.code().starts_with("22")
                || *c == SqlState::PROGRAM_LIMIT_EXCEEDED
                || *c == SqlState::FEATURE_NOT_SUPPORTED
        })
    };
    let sql = format!("SELECT ({clause}) IS TRUE FROM t ORDER BY id");
    match db.query(sql.as_str(), &[]).await {
        Ok(r) => return Some(r.iter().map(|r| Some(r.get(0))).collect()),
        Err(e) if runtime(&e) => {}
        Err(e) => fail(
            seed,
            format!("Postgres rejects a clause\n  clause: {clause}\n  error: {e:?}"),
        ),
    }
    let sql = format!("SELECT ({clause}) IS TRUE FROM t WHERE id = $1");
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(match db.query_one(sql.as_str(), &[&row.id]).await {
            Ok(r) => Some(r.get(0)),
            Err(e) if runtime(&e) => None,
            Err(e) => fail(
                seed,
                format!("Postgres rejects a clause\n  clause: {clause}\n  error: {e:?}"),
            ),
        });
    }
    out.iter().any(Option::is_some).then_some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subquery_clauses_agree_with_postgres() {
    let seed = super::env_seed("SHAPESYNC_ORACLE_SEED");
    let secs = super::env_number("SHAPESYNC_ORACLE_SECS", 20).div_ceil(2);
    let url = fresh_db("oracle_sub").await;
    let db = connect(&url).await;
    db.batch_execute(&session_settings())
        .await
        .expect("settings");
    db.batch_execute(data::DDL).await.expect("ddl");
    let mut rng = Rng(seed ^ 0x5AB);
    for insert in data::inserts(&mut rng, ROWS) {
        db.batch_execute(&insert).await.expect("insert s");
    }
    db.batch_execute("ALTER TABLE t RENAME TO s; CREATE TABLE t (LIKE s INCLUDING ALL);")
        .await
        .expect("second table");
    for insert in data::inserts(&mut rng, ROWS) {
        db.batch_execute(&insert).await.expect("insert t");
    }
    let tables = Tables {
        t: Arc::new(load_table(&db, "public", "t").await.expect("t")),
        s: Arc::new(load_table(&db, "public", "s").await.expect("s")),
        t_rows: read_rows(&db, "t").await,
        s_rows: read_rows(&db, "s").await,
    };
    let source = vec![Arc::clone(&tables.t), Arc::clone(&tables.s)];
    let (mut checked, mut rows_compared, mut skipped) = (0usize, 0usize, 0usize);
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let c = clause(&mut rng, 2);
        let (eng, pg) = (c.render(true), c.render(false));
        let wc = match parse_where_in(&eng, &tables.t, &[], &source) {
            Ok(wc) => wc,
            Err(e)
                if e.message.contains("both positive and negative polarity")
                    || e.message.contains("too complex for DNF") =>
            {
                skipped += 1;
                continue;
            }
            Err(e) => fail(
                seed,
                format!("the engine rejected a subquery clause\n  clause: {eng}\n  error: {e}"),
            ),
        };
        let Some(expected) = verdicts(&db, &pg, &tables.t_rows, seed).await else {
            // Postgres raises an error on every row (in a subquery: for the whole statement).
            skipped += 1;
            continue;
        };
        let views = tables.views(&wc);
        let dnf = Dnf::of(wc.expr()).expect("checked by the parser");
        for (row, want) in tables.t_rows.iter().zip(&expected) {
            let Some(want) = want else { continue };
            let r = WithViews { row, views: &views };
            let got = wc.matches(&r);
            if got != *want {
                fail(seed, format!(
                    "engine and Postgres disagree on row id {}\n  clause: {eng}\n  Postgres says {want}, the engine says {got}",
                    row.id
                ));
            }
            if dnf.includes(&dnf.active_conditions(&r)) != got {
                fail(
                    seed,
                    format!(
                        "the normal form disagrees with the clause on row id {}\n  clause: {eng}",
                        row.id
                    ),
                );
            }
        }
        let rendered = wc.sql(&tables.t);
        // Where both evaluate without an error (Postgres may order the parts of an AND
        // differently, and raise on other rows).
        let got = verdicts(&db, &rendered, &tables.t_rows, seed).await;
        let differs = got.as_ref().map(|got| {
            got.iter()
                .zip(&expected)
                .position(|(g, w)| matches!((g, w), (Some(g), Some(w)) if g != w))
        });
        if let Some(Some(i)) = differs {
            fail(seed, format!(
                "the rendered SQL selects differently on row id {}\n  clause: {pg}\n  rendered: {rendered}",
                tables.t_rows[i].id
            ));
        }
        checked += 1;
        rows_compared += expected.iter().flatten().count();
    }
    println!(
        "subquery oracle seed {seed}: {checked} clauses, {rows_compared} rows, {skipped} skipped"
    );
    assert!(
        checked >= 30,
        "too few subquery clauses checked (seed {seed}): {checked}, {skipped} skipped"
    );
}

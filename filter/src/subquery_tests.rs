//! Subqueries: the forms accepted, the reference's errors for the others, the SQL rendered,
//! three-valued evaluation through views, and the normal form's numbering.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dnf::Dnf;
use crate::num::Fail;
use crate::parse::{parse_where, parse_where_in};
use crate::row::Row;
use crate::subquery::subquery_tables;
use crate::table::{ColumnInfo, TableInfo};
use crate::view::View;
use crate::WhereClause;

fn table(oid: u32, name: &str, cols: &[(&str, &str)]) -> Arc<TableInfo> {
    let columns = cols
        .iter()
        .enumerate()
        .map(|(i, (n, ty))| ColumnInfo {
            name: (*n).into(),
            type_oid: match *ty {
                "int4" => 23,
                "int8" => 20,
                "text" => 25,
                "bool" => 16,
                "jsonb" => 3802,
                "numeric" => 1700,
                _ => 0,
            },
            type_name: (*ty).into(),
            dims: 0,
            type_mod: -1,
            not_null: false,
            pk_index: (i == 0).then_some(0),
        })
        .collect();
    Arc::new(TableInfo::new(oid, "public".into(), name.into(), columns))
}

fn tasks() -> Arc<TableInfo> {
    table(
        1,
        "tasks",
        &[
            ("id", "int4"),
            ("project_id", "int4"),
            ("title", "text"),
            ("owner", "int8"),
            ("doc", "jsonb"),
            ("team_id", "int4"),
        ],
    )
}

fn tables() -> Vec<Arc<TableInfo>> {
    vec![
        table(
            2,
            "projects",
            &[("id", "int4"), ("team_id", "int4"), ("name", "text")],
        ),
        table(
            3,
            "teams",
            &[("id", "int4"), ("org", "text"), ("big", "int8")],
        ),
        table(4, "members", &[("user_id", "int4"), ("team_id", "int4")]),
    ]
}

fn parse(clause: &str, params: &[&str]) -> Result<WhereClause, String> {
    let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
    parse_where_in(clause, &tasks(), &params, &tables()).map_err(|e| e.to_string())
}

fn err(clause: &str) -> String {
    parse(clause, &[]).expect_err(clause)
}

#[test]
fn refused_forms_get_the_reference_texts() {
    let only_in = "only `value IN (SELECT ...)` sublinks are supported right now";
    assert_eq!(
        err("project_id = ANY (SELECT id FROM projects)"),
        format!("At location 11: {only_in}")
    );
    assert_eq!(
        err("EXISTS (SELECT id FROM projects)"),
        format!("At location 0: {only_in}")
    );
    assert_eq!(
        err("project_id = (SELECT id FROM projects)"),
        format!("At location 13: {only_in}")
    );
    assert_eq!(
        err("lower(title) IN (SELECT name FROM projects)"),
        "At location 13: currently, left side of `IN (SELECT ...)` can only be a column reference or a list of column references"
    );
    assert_eq!(
        err("owner IN (SELECT id FROM projects)"),
        "At location 6: left side of `IN (SELECT ...)` has type int8 but subquery returns int4[]"
    );
    assert_eq!(
        err("project_id IN (SELECT id, team_id FROM projects)"),
        "At location 11: left side of `IN (SELECT ...)` has type int4 but subquery returns row of (int4, int4)[]"
    );
    assert_eq!(
        err("(project_id, title) IN (SELECT id, team_id FROM projects)"),
        "At location 20: left side of `IN (SELECT ...)` has type row of (int4, text) but subquery returns row of (int4, int4)[]"
    );
    // Placed in the wrapped statement, as the reference does (15 more).
    assert_eq!(
        err("project_id IN (SELECT * FROM projects)"),
        "At location 37: Expected a plain column reference"
    );
    assert_eq!(
        err("project_id IN (SELECT id + 1 FROM projects)"),
        "At location 37: Expected a plain column reference"
    );
    assert_eq!(
        err("project_id IN (SELECT projects.id FROM projects)"),
        "At location 37: Expected a plain column reference"
    );
    assert_eq!(
        err("project_id IN (SELECT id FROM projects, teams)"),
        "Expected a single table reference"
    );
    assert_eq!(
        err("project_id IN (SELECT id FROM projects JOIN teams ON true)"),
        "Expected a single table reference"
    );
    assert_eq!(
        err("project_id IN (SELECT id FROM (SELECT id FROM projects) p)"),
        "Expected a single table reference"
    );
    for tail in [
        "DISTINCT id FROM projects",
        "id FROM projects GROUP BY id",
        "id FROM projects ORDER BY id",
        "id FROM projects LIMIT 1",
        "id FROM projects OFFSET 1",
        "id FROM projects FOR UPDATE",
    ] {
        assert_eq!(
            err(&format!("project_id IN (SELECT {tail})")),
            "SELECT statement must not contain any clauses",
            "{tail}"
        );
    }
    assert_eq!(
        err("project_id IN (SELECT id FROM projects WHERE tasks.id = 1)"),
        "At location 45: unknown reference tasks.id"
    );
    assert_eq!(
        err("project_id IN (SELECT id FROM projects WHERE title = 'x')"),
        "At location 45: unknown reference title"
    );
    assert_eq!(
        err("project_id IN (SELECT nope FROM projects)"),
        "At location 22: unknown reference nope"
    );
    assert_eq!(
        err("project_id IN (SELECT id FROM nowhere)"),
        "Table \"public\".\"nowhere\" does not exist. If the table name contains capitals or special characters you must quote it."
    );
    assert_eq!(
        err("doc IN (SELECT id FROM projects)"),
        "At location 4: left side of `IN (SELECT ...)` has type jsonb but subquery returns int4[]"
    );
    // Without tables (a caller that does not serve subqueries).
    let e = parse_where("project_id IN (SELECT id FROM projects)", &tasks(), &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "At location 11: subqueries are not supported here"
    );
}

#[test]
fn dnf_limits_get_the_reference_texts() {
    assert_eq!(
        err("project_id IN (SELECT id FROM projects) OR NOT project_id IN (SELECT id FROM projects)"),
        "a subquery dependency cannot be used with both positive and negative polarity in the same filter"
    );
    assert_eq!(
        err("project_id IN (SELECT id FROM projects) AND id IN (1,2,3,4,5,6,7,8,9,10) AND team_id IN (1,2,3,4,5,6,7,8,9,10,11)"),
        "WHERE clause too complex for DNF decomposition (110 disjuncts exceeds limit of 100)"
    );
    // Counted, not expanded: 2^60 disjuncts are refused at once.
    let big: Vec<String> = (0..60)
        .map(|i| format!("(id = {i} OR title = 'x')"))
        .collect();
    let c = parse(&big.join(" AND "), &[]).unwrap();
    assert!(Dnf::of(c.expr())
        .unwrap_err()
        .to_string()
        .contains("1152921504606846976 disjuncts"));
}

#[test]
fn accepted_forms_render_and_share_dependencies() {
    let c = parse(
        "project_id IN (SELECT id FROM projects WHERE team_id = $1)",
        &["7"],
    )
    .unwrap();
    assert_eq!(
        c.sql(&tasks()),
        "(\"project_id\" IN (SELECT \"id\" FROM \"public\".\"projects\" WHERE \"team_id\" = CAST('7' AS int8)))"
    );
    assert_eq!(c.subqueries().len(), 1);

    // Row form, NOT IN, nesting three levels, a repeated subquery shared.
    let c = parse(
        "(id, team_id) IN (SELECT user_id, team_id FROM members) AND project_id NOT IN (SELECT id FROM projects WHERE team_id IN (SELECT id FROM teams WHERE org = $1)) OR (project_id IN (SELECT id FROM projects) AND title = 'x') OR project_id IN (SELECT id FROM projects)",
        &["acme"],
    )
    .unwrap();
    let subs = c.subqueries();
    assert_eq!(subs.len(), 3, "{subs:?}");
    assert_eq!(subs[0].table.name, "members");
    assert_eq!(subs[1].table.name, "projects");
    assert_eq!(
        subs[1].filter.as_ref().unwrap().subqueries()[0].table.name,
        "teams"
    );
    assert_eq!(subs[2].table.name, "projects");
    assert!(subs[2].filter.is_none());
    let sql = c.sql(&tasks());
    assert!(sql.contains("((\"id\", \"team_id\") IN (SELECT \"user_id\", \"team_id\" FROM \"public\".\"members\"))"), "{sql}");
    assert!(sql.contains("(NOT (\"project_id\" IN (SELECT \"id\" FROM \"public\".\"projects\" WHERE (\"team_id\" IN (SELECT \"id\" FROM \"public\".\"teams\" WHERE \"org\" = 'acme')))))"), "{sql}");

    assert_eq!(
        subquery_tables(
            "a IN (SELECT x FROM s.t WHERE y IN (SELECT z FROM u)) OR b IN (SELECT x FROM s.t)"
        )
        .unwrap()
        .iter()
        .map(|t| t.quoted())
        .collect::<Vec<_>>(),
        ["\"s\".\"t\"", "\"public\".\"u\""]
    );
    // Quoted mixed-case names round-trip.
    let t = vec![table(5, "Proj Ects", &[("Id", "int4")])];
    let c = parse_where_in(
        "project_id IN (SELECT \"Id\" FROM \"Proj Ects\")",
        &tasks(),
        &[],
        &t,
    )
    .unwrap();
    assert_eq!(
        c.sql(&tasks()),
        "(\"project_id\" IN (SELECT \"Id\" FROM \"public\".\"Proj Ects\"))"
    );
}

/// A row with views for its clause's subqueries.
struct R<'v> {
    cells: Vec<Option<&'static str>>,
    views: &'v HashMap<usize, View>,
}

impl Row for R<'_> {
    fn value(&self, c: usize) -> Option<&[u8]> {
        self.cells.get(c).copied().flatten().map(str::as_bytes)
    }
    fn membership(&self, dep: usize, values: &[Option<&[u8]>]) -> Result<Option<bool>, Fail> {
        self.views
            .get(&dep)
            .map(|v| v.membership(values))
            .ok_or(Fail)
    }
}

#[test]
fn evaluation_is_three_valued_and_positions_follow_the_reference() {
    let c = parse(
        "project_id IN (SELECT id FROM projects) OR title = 'pinned'",
        &[],
    )
    .unwrap();
    let mut views = HashMap::new();
    let mut v = View::of(&c.subqueries()[0]);
    v.add(&[Some(b"1")]);
    views.insert(0, v);
    let row = |p: Option<&'static str>, t: &'static str| R {
        cells: vec![Some("10"), p, Some(t), None, None, None],
        views: &views,
    };
    let dnf = Dnf::of(c.expr()).unwrap();
    assert_eq!(dnf.disjuncts, vec![vec![0], vec![1]]);
    assert_eq!(dnf.positions_of(0), vec![0]);
    assert!(c.matches(&row(Some("1"), "x")));
    assert!(!c.matches(&row(Some("2"), "x")));
    assert!(c.matches(&row(None, "pinned")));
    assert_eq!(
        dnf.active_conditions(&row(Some("2"), "pinned")),
        vec![false, true]
    );
    assert_eq!(
        dnf.active_conditions(&row(Some("1"), "pinned")),
        vec![true, true]
    );

    // NOT IN with a NULL in the set is never true; a NULL link never matches either way.
    let c = parse("project_id NOT IN (SELECT team_id FROM projects)", &[]).unwrap();
    let mut views = HashMap::new();
    let mut v = View::of(&c.subqueries()[0]);
    v.add(&[Some(b"1")]);
    views.insert(0, v.clone());
    let r = |p: Option<&'static str>, views| R {
        cells: vec![Some("10"), p, None, None, None, None],
        views,
    };
    assert!(c.matches(&r(Some("2"), &views)));
    assert!(!c.matches(&r(Some("1"), &views)));
    assert!(!c.matches(&r(None, &views)));
    let dnf = Dnf::of(c.expr()).unwrap();
    assert!(dnf.negated(0));
    assert_eq!(dnf.active_conditions(&r(Some("2"), &views)), vec![true]);
    assert_eq!(dnf.active_conditions(&r(None, &views)), vec![false]);
    v.add(&[None]);
    let with_null = HashMap::from([(0, v)]);
    assert!(!c.matches(&r(Some("2"), &with_null)));

    // The reference's worked positions: `(a IN S OR b = 1) AND c IN T`.
    let c = parse(
        "(project_id IN (SELECT id FROM projects) OR id = 1) AND team_id IN (SELECT id FROM teams)",
        &[],
    )
    .unwrap();
    let dnf = Dnf::of(c.expr()).unwrap();
    assert_eq!(dnf.disjuncts, vec![vec![0, 1], vec![2, 3]]);
    let deps: Vec<Option<usize>> = dnf.positions.iter().map(|p| p.dep()).collect();
    assert_eq!(deps, vec![Some(0), Some(1), None, Some(1)]);
    // `NOT (x IN S AND y = 1)` gives two negated disjuncts.
    let c = parse(
        "NOT (project_id IN (SELECT id FROM projects) AND id = 1)",
        &[],
    )
    .unwrap();
    let dnf = Dnf::of(c.expr()).unwrap();
    assert_eq!(dnf.disjuncts, vec![vec![0], vec![1]]);
    assert!(dnf.positions.iter().all(|p| p.negated));
    // A row without views never matches a clause with subqueries.
    struct Bare;
    impl Row for Bare {
        fn value(&self, _: usize) -> Option<&[u8]> {
            Some(b"1")
        }
    }
    assert!(!c.matches(&Bare));
}

//! Property test for where-clause safety (issue 7 §7): random and mutated clauses with random
//! parameter values never panic the parser, and every clause the engine accepts renders to SQL
//! that is exactly one boolean expression over the table's own columns (no second statement,
//! no subquery, no FROM, no function the engine did not type) and that the engine reads back to
//! the very same rendering (the snapshot query says what the engine evaluates, nothing more).
//!
//! Seeded (`SHAPESYNC_FUZZ_SEED` replays a run) and sized by `SHAPESYNC_FUZZ_CASES` (default
//! 20,000 inputs, about a second).

use pg_query::protobuf::node::Node as N;

use crate::parse::parse_where;
use crate::table::{ColumnInfo, TableInfo, TextLocale};

fn table() -> TableInfo {
    let cols = [
        ("id", "int8", 0),
        ("i2", "int2", 0),
        ("n", "int4", 0),
        ("num", "numeric", 0),
        ("f4", "float4", 0),
        ("f8", "float8", 0),
        ("b", "bool", 0),
        ("t", "text", 0),
        ("vc", "varchar", 0),
        ("bc", "bpchar", 0),
        ("u", "uuid", 0),
        ("by", "bytea", 0),
        ("d", "date", 0),
        ("ts", "timestamp", 0),
        ("tz", "timestamptz", 0),
        ("iv", "interval", 0),
        ("ia", "int4", 1),
        ("ta", "text", 1),
        ("j", "jsonb", 0),
        ("Weird \"Name\"", "text", 0),
    ];
    let columns = cols
        .iter()
        .enumerate()
        .map(|(i, (name, ty, dims))| ColumnInfo {
            name: (*name).into(),
            type_oid: 0,
            type_name: (*ty).into(),
            dims: *dims,
            type_mod: -1,
            not_null: false,
            pk_index: (i == 0).then_some(0),
        })
        .collect();
    let mut t = TableInfo::new(1, "public".into(), "items".into(), columns);
    t.locale = TextLocale {
        collate: "C".into(),
        ctype: "C".into(),
        provider: "c".into(),
    };
    t
}

const SEEDS: &[&str] = &[
    "id = 5",
    "n IN (1, 2, $1)",
    "t LIKE 'a%' ESCAPE '#' OR vc ILIKE $2",
    "num / 3 > 0.5 AND f8 ^ 2 < 10",
    "lower(t) || 'x' = upper(vc)",
    "coalesce(n, 0) + i2 BETWEEN SYMMETRIC 1 AND 10",
    "ia && '{1,2}' OR 7 = ANY(ia) OR ta @> ARRAY['a']",
    "j ->> 'a' = $1 AND j @> '{\"b\": [1]}' AND j ? 'k'",
    "ts + interval '1 day' > now()",
    "date_trunc('day', tz) AT TIME ZONE 'UTC' = ts",
    "d - 30 < '2020-01-01' AND iv * 2 <> '1 mon'",
    "\"Weird \"\"Name\"\"\" IS DISTINCT FROM 'x'",
    "NOT (b IS NOT TRUE) AND u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    "by = '\\x00ff' OR bc < 'ab'",
    "greatest(n, i2, 3) = least(id, 4) OR nullif(t, '') IS NULL",
    "concat(t, n) LIKE '%1' AND length(bc) = cardinality(ia)",
];

const TOKENS: &[&str] = &[
    " ",
    "'",
    "''",
    "\"",
    ";",
    "--",
    "/*",
    "*/",
    "$1",
    "$2",
    "$$",
    "(",
    ")",
    ",",
    "=",
    "<>",
    "<",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "||",
    "::",
    "::text",
    "::int4[]",
    " AND ",
    " OR ",
    " NOT ",
    " IS NULL",
    " IN ",
    " LIKE ",
    " ESCAPE ",
    "SELECT",
    " FROM pg_user",
    "DROP TABLE t",
    "pg_sleep(1)",
    "(SELECT 1)",
    "E'\\x27'",
    "U&'\\0027'",
    "\\",
    "\0",
    "ä",
    "日",
    "id",
    "t",
    "num",
    "j",
    "ia",
    "NULL",
    "true",
    "1e308",
    "-9223372036854775808",
    "'{1,NULL}'",
    "ARRAY[",
    "]",
    "->",
    "->>",
    "@>",
    "?",
    "interval '1 day'",
    "now()",
    "count(*)",
    "random()",
    " COLLATE \"C\"",
    " AT TIME ZONE 'UTC'",
    "CASE WHEN true THEN 1 END",
    "EXISTS",
    "1e9223372036854775807",
    "'P9223372036854775807Y'::interval",
    "array_length(ia, -9223372036854775808)",
    "9223372036854775807 * 9223372036854775807",
    "'1e-9223372036854775808'",
    "num ^ 64",
    "'99999-12-31'::date + 2147483647",
    "ts - interval '-178000000 years'",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(rng: &mut Rng, s: &str) -> String {
    let mut out = s.to_string();
    for _ in 0..1 + rng.below(3) {
        let at = char_boundary(&out, rng.below(out.len() + 1));
        match rng.below(4) {
            0 => out.insert_str(at, TOKENS[rng.below(TOKENS.len())]),
            1 => {
                let end = char_boundary(&out, (at + rng.below(6)).min(out.len()));
                out.replace_range(at..end.max(at), "");
            }
            2 => {
                let end = char_boundary(&out, (at + rng.below(10)).min(out.len()));
                let piece = out[at..end.max(at)].to_string();
                out.insert_str(at, &piece);
            }
            _ => out = format!("{out}{}", TOKENS[rng.below(TOKENS.len())]),
        }
    }
    out
}

fn input(rng: &mut Rng) -> String {
    if rng.below(4) == 0 {
        (0..1 + rng.below(8))
            .map(|_| TOKENS[rng.below(TOKENS.len())])
            .collect()
    } else {
        let seed = SEEDS[rng.below(SEEDS.len())];
        mutate(rng, seed)
    }
}

/// Panics unless `sql` is one `SELECT 1 WHERE <expr>` with no FROM, subquery or foreign name.
fn assert_contained(sql: &str, columns: &[String]) {
    let wrapped = format!("SELECT 1 WHERE {sql}");
    let parsed = pg_query::parse(&wrapped, pg_query::ParserOptions::DEFAULT)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let stmts = &parsed.protobuf.stmts;
    assert_eq!(stmts.len(), 1, "one statement: {sql}");
    let Some(N::SelectStmt(sel)) = stmts[0].stmt.as_ref().and_then(|s| s.node.as_ref()) else {
        panic!("not a select: {sql}");
    };
    assert!(
        sel.from_clause.is_empty() && sel.with_clause.is_none(),
        "{sql}"
    );
    let tables = parsed.tables();
    assert!(tables.is_empty(), "no table may appear: {sql}: {tables:?}");
    for (node, _, _, _) in parsed.protobuf.nodes() {
        if let pg_query::NodeRef::SubLink(_) = node {
            panic!("subquery in {sql}");
        }
        if let pg_query::NodeRef::ColumnRef(c) = node {
            let name = c
                .fields
                .iter()
                .filter_map(|f| match f.node.as_ref() {
                    Some(N::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .next_back()
                .unwrap_or_default();
            assert!(columns.contains(&name), "unknown column {name} in {sql}");
        }
        if let pg_query::NodeRef::FuncCall(f) = node {
            let name = f
                .funcname
                .iter()
                .filter_map(|n| match n.node.as_ref() {
                    Some(N::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .next_back()
                .unwrap_or_default();
            const KNOWN: &[&str] = &[
                "lower",
                "upper",
                "length",
                "abs",
                "concat",
                "array_length",
                "cardinality",
                "date_trunc",
                "timezone",
                "like_escape",
            ];
            assert!(KNOWN.contains(&name.as_str()), "function {name} in {sql}");
        }
    }
}

#[test]
fn no_input_panics_or_escapes_the_clause() {
    let seed = std::env::var("SHAPESYNC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let cases: usize = std::env::var("SHAPESYNC_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let t = table();
    let columns: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
    let mut rng = Rng(seed);
    let mut accepted = 0;
    for _ in 0..cases {
        let clause = input(&mut rng);
        let params: Vec<String> = (0..rng.below(3))
            .map(|_| {
                [
                    "5",
                    "it's",
                    "a\\b",
                    "{1,2}",
                    "x'); DROP TABLE t; --",
                    "\u{0}",
                    "1e5",
                    "",
                ][rng.below(8)]
                .to_string()
            })
            .collect();
        let result = std::panic::catch_unwind(|| parse_where(&clause, &t, &params));
        let Ok(result) = result else {
            panic!("parse_where panicked (seed {seed}) on {clause:?} with {params:?}");
        };
        let Ok(w) = result else { continue };
        accepted += 1;
        let sql = w.sql(&t);
        assert_contained(&sql, &columns);
        let again = parse_where(&sql, &t, &[]).unwrap_or_else(|e| {
            panic!("rendering does not read back (seed {seed}): {clause:?} → {sql}: {e}")
        });
        assert_eq!(
            again.sql(&t),
            sql,
            "rendering is not stable (seed {seed}) for {clause:?}"
        );
    }
    assert!(
        accepted > cases / 50,
        "too few inputs accepted ({accepted}) to mean anything (seed {seed})"
    );
}

//! Text ordering and case mapping follow the database's collation where the engine claims to
//! (byte order: C, POSIX and C.UTF-8) and are refused with a clear error elsewhere (an ICU
//! collation, case mapping under a UTF-8 character class), checked against Postgres on
//! non-ASCII text.

use shapesync::postgres::catalog::load_table;
use shapesync_filter::{parse_where, Row};
use tokio_postgres::SimpleQueryMessage;

use crate::support::{connect, pg};

struct TextRow(Vec<Option<String>>);

impl Row for TextRow {
    fn value(&self, column: usize) -> Option<&[u8]> {
        self.0.get(column)?.as_deref().map(str::as_bytes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_follows_a_c_utf8_database_and_other_collations_are_refused() {
    let admin = connect(&pg().url("postgres")).await;
    let name = "t_collation_cutf8";
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .expect("drop");
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' \
             LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'"
        ))
        .await
        .expect("create a C.UTF-8 database");
    let db = connect(&pg().url(name)).await;
    let icu = db
        .query_opt(
            "SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'",
            &[],
        )
        .await
        .expect("collations")
        .is_some();
    db.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, s text{});
         INSERT INTO t (id, s) VALUES (1, 'a'), (2, 'Z'), (3, 'ä'), (4, 'Ä'), (5, 'é'), (6, 'z'),
           (7, '日本'), (8, '€'), (9, ''), (10, 'ab'), (11, 'a b'), (12, NULL), (13, 'ﬀ'), (14, '😀');",
        if icu { ", u text COLLATE \"und-x-icu\"" } else { "" }
    ))
    .await
    .expect("table");
    println!(
        "collation test: ICU collations {}",
        if icu { "present" } else { "absent" }
    );
    let table = load_table(&db, "public", "t").await.expect("catalog");
    assert_eq!(table.locale.collate, "C.UTF-8");
    let mut rows = Vec::new();
    for m in db
        .simple_query("SELECT id, s FROM t ORDER BY id")
        .await
        .expect("rows")
    {
        if let SimpleQueryMessage::Row(r) = m {
            let mut values: Vec<Option<String>> =
                vec![r.get(0).map(str::to_string), r.get(1).map(str::to_string)];
            if icu {
                values.push(None);
            }
            rows.push(TextRow(values));
        }
    }
    for clause in [
        "s < 'ä'",
        "s >= 'Z'",
        "s BETWEEN 'a' AND 'é'",
        "greatest(s, 'b') = s",
        "s > '日'",
        "s || 'x' < 'a x'",
        "s < ALL(ARRAY['é', '€'])",
    ] {
        let wc = parse_where(clause, &table, &[]).unwrap_or_else(|e| panic!("{clause}: {e}"));
        let ours: Vec<i32> = rows
            .iter()
            .filter(|r| wc.matches(*r))
            .map(|r| r.0[0].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0))
            .collect();
        let theirs: Vec<i32> = db
            .query(&format!("SELECT id FROM t WHERE {clause} ORDER BY id"), &[])
            .await
            .expect("postgres")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ours, theirs, "{clause}");
    }
    // Case mapping under a UTF-8 character class is Unicode's: refused, not guessed.
    let err = parse_where("lower(s) = 'ä'", &table, &[]).unwrap_err();
    assert!(err.message.contains("C.UTF-8"), "{err}");
    assert_eq!(
        err.kind,
        shapesync_filter::WhereErrorKind::Collation,
        "{err}"
    );
    assert!(parse_where("s ILIKE 'Ä%'", &table, &[]).is_err());
    if icu {
        let err = parse_where("u < 'b'", &table, &[]).unwrap_err();
        assert!(err.message.contains("und-x-icu"), "{err}");
        assert_eq!(
            err.kind,
            shapesync_filter::WhereErrorKind::Collation,
            "{err}"
        );
        // Equality is the same under every deterministic collation.
        parse_where("u = 'b'", &table, &[]).expect("equality under ICU");
    }
}

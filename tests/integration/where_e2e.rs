//! Richer where clauses end to end over HTTP: each shape syncs its snapshot, then a series of
//! writes moves rows in and out of it (updates turn into inserts and deletes at the shape's
//! edge, a primary-key change into a delete and an insert), and the materialized rows must
//! equal Postgres' own answer to the same clause.
//!
//! Cases are tagged with the oracle's feature groups; a case runs when all its groups are in
//! [`ENABLED`] (what the engine claims), so enabling a group there turns its cases on here too.

use serde_json::Value;

use crate::oracle::grammar::Group;
use crate::oracle::ENABLED;
use crate::support::{connect, fresh_db, pg_rows, Follower, TestServer};

struct Case {
    groups: &'static [Group],
    clause: &'static str,
    params: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        groups: &[Group::Core, Group::Logic],
        clause: "n >= 20 AND n < 70",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::Logic, Group::NullTests, Group::Params],
        clause: "flag IS NOT TRUE OR name = $1",
        params: &["ITEM-6"],
    },
    Case {
        groups: &[Group::Core, Group::Logic, Group::NullTests],
        clause: "price > 10.5 AND NOT flag OR n IS NULL",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::InList],
        clause: "n IN (5, 10, 65, 85, 100)",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::Logic, Group::Like, Group::ILike],
        clause: "name LIKE 'item-1%' OR name ILIKE 'ITEM-2_'",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::Logic, Group::Like],
        clause: "name LIKE 'item-1%' OR name NOT LIKE '%-_' ESCAPE '#'",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::Between],
        clause: "price NOT BETWEEN SYMMETRIC 15 AND 5",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::Logic, Group::Arithmetic],
        clause: "n % 10 = 5 AND n * 2 > 30",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::AnyAll],
        clause: "7 = ANY(tags)",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::Jsonb],
        clause: "doc ->> 'kind' = 'order'",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::InList, Group::Params],
        clause: "n IN ($1, $2)",
        params: &["10", "105"],
    },
    Case {
        groups: &[
            Group::Core,
            Group::Logic,
            Group::Functions,
            Group::ColumnCompare,
            Group::Arithmetic,
        ],
        clause: "lower(name) <> name OR price > n / 4.0",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::Logic, Group::Arrays],
        clause: "tags && '{7}' OR tags @> ARRAY[0, 1]",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::Logic, Group::Jsonb],
        clause: "doc @> '{\"kind\": \"order\"}' AND doc ->> 'qty' <> '3'",
        params: &[],
    },
    Case {
        groups: &[Group::Core, Group::Concat, Group::TextOrder],
        clause: "name || '!' > 'item-2'",
        params: &[],
    },
];

const SETUP: &str = "
CREATE TABLE items (id int8 PRIMARY KEY, n int4, name text, price numeric, flag bool,
                    tags int4[], doc jsonb);
INSERT INTO items
SELECT g, g * 5, 'item-' || g, g * 1.25, g % 2 = 0, ARRAY[g % 5, g % 3],
       jsonb_build_object('kind', CASE WHEN g % 3 = 0 THEN 'order' ELSE 'quote' END, 'qty', g)
FROM generate_series(1, 20) g;";

const CHANGES: &str = "
UPDATE items SET n = n + 50 WHERE id % 4 = 0;
UPDATE items SET name = upper(name) WHERE id % 5 = 1;
UPDATE items SET flag = NOT flag WHERE id < 8;
UPDATE items SET tags = tags || 7 WHERE id % 2 = 1;
UPDATE items SET doc = jsonb_set(doc, '{kind}', '\"order\"') WHERE id % 7 = 0;
BEGIN;
UPDATE items SET price = price * 3 WHERE id > 12;
DELETE FROM items WHERE id = 9;
COMMIT;
INSERT INTO items SELECT g, g * 5, 'item-' || g, g, true, '{7}', '{\"kind\": \"order\"}'
FROM generate_series(21, 25) g;
UPDATE items SET id = 100 WHERE id = 2;
UPDATE items SET n = NULL WHERE id = 3;";

const COLUMNS: &str = "id,n,name,price,flag";

fn enabled(case: &Case) -> bool {
    case.groups.iter().all(|g| ENABLED.contains(g))
}

fn query(case: &Case) -> String {
    let mut q = format!("table=items&columns={COLUMNS}&where=");
    q.extend(form_urlencoded::byte_serialize(case.clause.as_bytes()));
    for (i, p) in case.params.iter().enumerate() {
        q.push_str(&format!("&params[{}]=", i + 1));
        q.extend(form_urlencoded::byte_serialize(p.as_bytes()));
    }
    q
}

/// The clause with its parameters inlined as literals, for Postgres.
fn inlined(case: &Case) -> String {
    let mut sql = case.clause.to_string();
    for (i, p) in case.params.iter().enumerate().rev() {
        sql = sql.replace(
            &format!("${}", i + 1),
            &format!("'{}'", p.replace('\'', "''")),
        );
    }
    sql
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_where_clauses_sync_through_http() {
    let url = fresh_db("where_e2e").await;
    let db = connect(&url).await;
    db.batch_execute(SETUP).await.expect("setup");
    let server = TestServer::start(&url).await;

    let cases: Vec<&Case> = CASES.iter().filter(|c| enabled(c)).collect();
    for c in CASES.iter().filter(|c| !enabled(c)) {
        println!(
            "where_e2e: waiting for the engine: {} {:?}",
            c.clause, c.groups
        );
    }
    assert!(cases.len() >= 3, "the supported subset runs");

    let mut followers = Vec::new();
    for case in &cases {
        let mut f = Follower::new(server.client(), &query(case));
        f.sync().await;
        let expected = expected(&db, case).await;
        assert_eq!(
            f.values().len(),
            expected.len(),
            "snapshot of {}",
            case.clause
        );
        f.until_matches(&expected).await;
        followers.push(f);
    }
    db.batch_execute(CHANGES).await.expect("changes");
    for (case, f) in cases.iter().zip(&mut followers) {
        let expected = expected(&db, case).await;
        f.until_matches(&expected).await;
        assert!(
            f.changes_seen > 0,
            "live changes reached the shape of {}",
            case.clause
        );
    }
}

async fn expected(db: &tokio_postgres::Client, case: &Case) -> Vec<serde_json::Map<String, Value>> {
    let sql = format!(
        "SELECT id, n, name, price::text AS price, flag FROM items WHERE {} ORDER BY id",
        inlined(case)
    );
    pg_rows(db, &sql).await
}

/// Through the official client (tests/client/e2e.mjs: random inserts, updates and deletes on
/// `id, name, n int4, flag, score int8, note`, compared with Postgres' answer to the clause).
const CLIENT_CASES: &[Case] = &[
    Case {
        groups: &[Group::Core, Group::Logic, Group::NullTests],
        clause: "(n >= 0 AND score < 500) OR flag IS NOT TRUE",
        params: &[],
    },
    Case {
        groups: &[
            Group::Core,
            Group::Logic,
            Group::Arithmetic,
            Group::Between,
            Group::Like,
            Group::InList,
        ],
        clause: "n % 2 = 0 AND score BETWEEN -500 AND 500 OR name LIKE 'a%' OR score IN (0, 1, -1)",
        params: &[],
    },
    Case {
        groups: &[
            Group::Core,
            Group::Logic,
            Group::Functions,
            Group::ColumnCompare,
            Group::ILike,
        ],
        clause: "name ILIKE 'A%' OR score < n OR coalesce(lower(note), 'x') = 'x'",
        params: &[],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_where_clauses_through_the_official_client() {
    let mut ran = 0;
    for (i, case) in CLIENT_CASES.iter().enumerate() {
        if !enabled(case) {
            println!(
                "where_e2e (client): waiting for the engine: {}",
                case.clause
            );
            continue;
        }
        crate::client_e2e::run_client(&format!("clientrich{i}"), 300, Some(case.clause), false)
            .await;
        ran += 1;
    }
    assert!(ran >= 1, "the supported subset runs");
}

/// A clause that raises an error on some row (here a division by zero) cannot be synced:
/// the shape request is a 400 naming the where clause and Postgres' error, not a 503 to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clause_failing_on_the_data_is_a_400() {
    let url = fresh_db("where_e2e_fail").await;
    let db = connect(&url).await;
    db.batch_execute(SETUP).await.expect("setup");
    let server = TestServer::start(&url).await;
    let client = server.client();
    let mut q = String::from("table=items&offset=-1&where=");
    q.extend(form_urlencoded::byte_serialize(b"100 / (n - 25) > 1"));
    let reply = client.get(&q).await;
    assert_eq!(reply.status, 400, "{:?}", reply.json());
    let msg = reply.json()["errors"]["where"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("division by zero"), "{msg}");
    // Once the data no longer fails, the same shape syncs.
    db.batch_execute("UPDATE items SET n = 26 WHERE n = 25")
        .await
        .expect("fix");
    let reply = client.get(&q).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
}

//! Partitioned tables: shapes on a partitioned table (at any depth) and on its partitions at
//! once, through inserts, updates, deletes, rows moving between partitions and levels,
//! partitions created later (rows stream, no 409), attached with rows of their own (409, then
//! a correct refetch) and detached (409 for the parent's shapes; the partition's own shapes go
//! on). Every follower ends equal to Postgres; the strict ones prove no rotation happened.

use std::time::Duration;

use crate::support::{connect, fresh_db, pg_rows, Follower, TestServer};

const SETUP: &str = "
    CREATE TABLE m (id int8, region text, v int4, note text, PRIMARY KEY (id, region))
        PARTITION BY LIST (region);
    CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
    CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us') PARTITION BY RANGE (id);
    CREATE TABLE m_us_lo PARTITION OF m_us FOR VALUES FROM (MINVALUE) TO (100);
    CREATE TABLE m_us_hi PARTITION OF m_us FOR VALUES FROM (100) TO (MAXVALUE);
    INSERT INTO m SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i, 'n' || i
        FROM generate_series(1, 200) i;
";

/// A shape and the query of what it must hold.
struct Case {
    follower: Follower,
    rows_sql: String,
}

async fn converge(db: &tokio_postgres::Client, cases: &mut [Case]) {
    for c in cases.iter_mut() {
        let want = pg_rows(db, &c.rows_sql).await;
        c.follower.until_matches(&want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_on_partitioned_tables_and_their_partitions() {
    let url = fresh_db("parts").await;
    let db = connect(&url).await;
    db.batch_execute(SETUP).await.unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.schema_check = Duration::from_millis(200);
    })
    .await;
    let client = server.client();
    let case = |q: &str, sql: &str| Case {
        follower: Follower::new(client.clone(), q),
        rows_sql: sql.to_string(),
    };
    let mut cases = vec![
        case("table=m", "SELECT * FROM m ORDER BY id"),
        case(
            "table=m&where=v%20%3E%3D%2050%20AND%20v%20%3C%20150",
            "SELECT * FROM m WHERE v >= 50 AND v < 150 ORDER BY id",
        ),
        case("table=m_us", "SELECT * FROM m_us ORDER BY id"),
        case("table=m_us_hi", "SELECT * FROM m_us_hi ORDER BY id"),
        case("table=m_eu", "SELECT * FROM m_eu ORDER BY id"),
    ];
    for c in cases.iter_mut() {
        c.follower.sync().await;
    }
    converge(&db, &mut cases).await;

    // Changes within and across partitions and levels.
    db.batch_execute(
        "INSERT INTO m VALUES (300, 'eu', 60, 'new eu'), (301, 'us', 61, 'new us hi'),
                              (-5, 'us', 62, 'new us lo');
         UPDATE m SET v = v + 1000 WHERE id IN (60, 61);           -- leave the where shape
         UPDATE m SET v = 100, note = 'moved in' WHERE id = 10;    -- enter it
         UPDATE m SET region = 'us' WHERE id = 4;                  -- eu -> us_lo
         UPDATE m SET region = 'eu' WHERE id = 151;                -- us_hi -> eu
         UPDATE m SET id = 255 WHERE id = 55;                      -- us_lo -> us_hi
         UPDATE m SET id = -7, v = 70 WHERE id = 105;              -- us_hi -> us_lo
         DELETE FROM m WHERE id IN (7, 8, 190);
         BEGIN;
         UPDATE m SET region = 'us' WHERE id = 12;
         UPDATE m SET region = 'eu' WHERE id = 12 AND region = 'us';
         UPDATE m SET note = 'back and forth' WHERE id = 12;
         COMMIT;",
    )
    .await
    .unwrap();
    converge(&db, &mut cases).await;

    // A partition created later: its rows stream as changes; nobody gets a 409 (the strict
    // followers would fail), also after a few schema checks.
    db.batch_execute(
        "CREATE TABLE m_as PARTITION OF m FOR VALUES IN ('as');
         INSERT INTO m VALUES (500, 'as', 77, 'asia');
         UPDATE m SET region = 'as' WHERE id = 2;",
    )
    .await
    .unwrap();
    converge(&db, &mut cases).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    db.batch_execute("UPDATE m SET note = 'after checks' WHERE id IN (500, 2, 3)")
        .await
        .unwrap();
    converge(&db, &mut cases).await;
    let m_as: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'm_as' AND relreplident = 'f'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(m_as, 1, "the new partition got REPLICA IDENTITY FULL");
    for c in &cases {
        assert_eq!(c.follower.rotations, 0);
    }

    // A table with rows of its own attached: the root's shapes rotate and refetch it.
    for c in cases.iter_mut().take(2) {
        c.follower.allow_rotation = true;
    }
    db.batch_execute(
        "CREATE TABLE m_jp (id int8 NOT NULL, region text NOT NULL, v int4, note text,
                            PRIMARY KEY (id, region));
         INSERT INTO m_jp VALUES (900, 'jp', 90, 'was here before');
         ALTER TABLE m ATTACH PARTITION m_jp FOR VALUES IN ('jp');
         INSERT INTO m VALUES (901, 'jp', 91, 'after');",
    )
    .await
    .unwrap();
    converge(&db, &mut cases).await;
    for c in cases.iter().take(2) {
        assert!(c.follower.rotations >= 1, "{}", c.follower.shape_query);
        assert!(c.follower.rows.values().any(|r| r["id"] == "900"));
    }

    // Detached and attached again in one transaction, with rows changed while it was out (not
    // published then): the set of partitions looks the same, its link does not.
    cases[2].follower.allow_rotation = true;
    db.batch_execute(
        "BEGIN;
         ALTER TABLE m_us DETACH PARTITION m_us_lo;
         DELETE FROM m_us_lo WHERE id = 1;
         UPDATE m_us_lo SET note = 'changed while out' WHERE id = 3;
         ALTER TABLE m_us ATTACH PARTITION m_us_lo FOR VALUES FROM (MINVALUE) TO (100);
         COMMIT;",
    )
    .await
    .unwrap();
    converge(&db, &mut cases).await;
    assert!(cases[2].follower.rotations >= 1);
    assert!(!cases[0].follower.rows.values().any(|r| r["id"] == "1"));

    // A partition created after the shapes (accepted: no rotation then) and dropped later:
    // its rows leave without a change.
    db.batch_execute("DROP TABLE m_as").await.unwrap();
    converge(&db, &mut cases).await;
    assert!(!cases[0].follower.rows.values().any(|r| r["id"] == "500"));

    // A partition detached: its rows leave the root (409), its own shape goes on.
    db.batch_execute(
        "ALTER TABLE m DETACH PARTITION m_eu;
         INSERT INTO m_eu VALUES (600, 'eu', 1, 'detached');
         INSERT INTO m VALUES (601, 'us', 1, 'still in m');",
    )
    .await
    .unwrap();
    cases[4].rows_sql = "SELECT * FROM m_eu ORDER BY id".into();
    converge(&db, &mut cases).await;
    assert!(cases[0].follower.rows.values().all(|r| r["region"] != "eu"));
    assert_eq!(cases[4].follower.rotations, 0);
    assert!(cases[4].follower.rows.values().any(|r| r["id"] == "600"));
    let metrics = server.client().raw("/metrics").await.body;
    for event in ["partition_attached", "partition_detached"] {
        let line = metrics
            .lines()
            .find(|l| l.contains(&format!("event=\"{event}\"")))
            .unwrap_or_default();
        assert!(!line.ends_with(" 0"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_on_partitioned_tables_1000_mutations() {
    let mut env = vec![
        ("E2E_PARTITIONED", "1".to_string()),
        ("E2E_MUTATIONS", "1000".to_string()),
        ("E2E_TIMEOUT_MS", "240000".to_string()),
    ];
    env.push(("E2E_WHERE", "flag = true".to_string()));
    crate::client_e2e::run_node_env("e2e.mjs", "clientpart", &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_partitions_are_refused_not_served_stale() {
    let url = fresh_db("partsfdw").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE EXTENSION file_fdw;
         CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
         CREATE TABLE f (id int, region text) PARTITION BY LIST (region);
         CREATE TABLE f_a PARTITION OF f FOR VALUES IN ('a');
         CREATE TABLE g (id int, region text) PARTITION BY LIST (region);
         CREATE TABLE g_a PARTITION OF g FOR VALUES IN ('a');
         INSERT INTO g VALUES (1, 'a');
         CREATE FOREIGN TABLE f_b PARTITION OF f FOR VALUES IN ('b')
             SERVER files OPTIONS (filename '/dev/null');",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.schema_check = Duration::from_millis(200);
    })
    .await;
    let r = server.client().get("table=f&offset=-1").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("f_b"), "{}", r.body);
    // A foreign partition created later under a table with shapes: they rotate, and the
    // refetch is refused with the reason.
    let mut g = Follower::rotating(server.client(), "table=g");
    g.sync().await;
    db.batch_execute(
        "CREATE FOREIGN TABLE g_b PARTITION OF g FOR VALUES IN ('b')
             SERVER files OPTIONS (filename '/dev/null');",
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "not rotated");
        let r = g
            .client
            .get(&format!(
                "table=g&offset={}&handle={}",
                g.offset,
                g.handle.clone().unwrap_or_default()
            ))
            .await;
        // The stale handle gets the 409, or straight away the 400 its refetch would get.
        if r.status == 409 || (r.status == 400 && r.body.contains("g_b")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = server.client().get("table=g&offset=-1").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("g_b"), "{}", r.body);
}

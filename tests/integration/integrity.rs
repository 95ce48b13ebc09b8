//! Changes made behind shapesync's back, and the guards around its own state: a table's replica
//! identity reset (unchanged TOAST values and old rows the stream no longer carries), a table
//! taken out of the publication, the publication's options changed, the publication dropped,
//! the same database added twice under another spelling, and a second server on one storage
//! directory. Each case ends with the followers equal to Postgres (after a 409 and a refetch
//! where rows may have been missed), never silently stale.

use std::time::Duration;

use serde_json::json;

use crate::support::{connect, eventually, fresh_db, pg_rows, request, Follower, TestServer};

/// A counter of `/metrics`: `shapesync_integrity_events_total` for `event`.
async fn integrity_events(server: &TestServer, event: &str) -> u64 {
    let body = server.client().raw("/metrics").await.body;
    body.lines()
        .filter(|l| l.starts_with("shapesync_integrity_events_total{"))
        .filter(|l| l.contains(&format!("event=\"{event}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Text that does not compress (TOASTed out of line): `n` bytes starting with `first`.
fn incompressible(first: char, seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = String::with_capacity(n);
    s.push(first);
    while s.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(char::from(b'a' + (x % 26) as u8));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_reset_behind_our_back() {
    let url = fresh_db("toast").await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, big text, small int)")
        .await
        .unwrap();
    for i in 1..=6 {
        let first = if i % 2 == 0 { 'A' } else { 'B' };
        db.execute(
            "INSERT INTO t VALUES ($1, $2, $1)",
            &[&i, &incompressible(first, i as u64, 4000)],
        )
        .await
        .unwrap();
    }
    let server = TestServer::start_with(&url, |c| {
        c.schema_check = Duration::from_millis(300);
    })
    .await;
    let client = server.client();
    let rows = "SELECT id, big, small FROM t";
    let cases = [
        ("table=t", format!("{rows} ORDER BY id"), false),
        (
            "table=t&where=big%20LIKE%20%27A%25%27",
            format!("{rows} WHERE big LIKE 'A%' ORDER BY id"),
            true,
        ),
        (
            "table=t&where=length(big)%20%3E%201000%20AND%20small%20%3C%20100",
            format!("{rows} WHERE length(big) > 1000 AND small < 100 ORDER BY id"),
            true,
        ),
        ("table=t&replica=full", format!("{rows} ORDER BY id"), true),
    ];
    let mut followers: Vec<Follower> = cases
        .iter()
        .map(|(q, _, _)| Follower::rotating(client.clone(), q))
        .collect();
    for f in followers.iter_mut() {
        f.sync().await;
    }
    // A migration tool resets the identity; then updates that do not touch the TOASTed column,
    // one that makes a row leave a where clause on it, and a delete.
    db.batch_execute(
        "ALTER TABLE t REPLICA IDENTITY DEFAULT;
         UPDATE t SET small = small + 1000 WHERE id = 2;
         UPDATE t SET small = small + 1;
         UPDATE t SET big = 'B' || substr(big, 2) WHERE id = 4;
         DELETE FROM t WHERE id = 6;",
    )
    .await
    .unwrap();
    for (f, (_, sql, _)) in followers.iter_mut().zip(&cases) {
        f.until_matches(&pg_rows(&db, sql).await).await;
    }
    // The identity is repaired by itself and counted.
    eventually(
        "replica identity FULL again",
        Duration::from_secs(20),
        || async {
            let r: String = db
                .query_one(
                    "SELECT relreplident::text FROM pg_class WHERE relname = 't'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            r == "f"
        },
    )
    .await;
    assert!(integrity_events(&server, "replica_identity_repaired").await >= 1);
    assert!(integrity_events(&server, "value_missing").await >= 1);
    // The shape without a where clause needed nothing the stream left out: it was not rotated.
    // Those that evaluate or send the TOASTed column were (never evaluated on a guess).
    for (f, (q, _, may_rotate)) in followers.iter().zip(&cases) {
        if !may_rotate {
            assert_eq!(f.rotations, 0, "{q}");
        }
    }
    assert!(followers[1].rotations >= 1);
    // Once repaired, changes flow without rotations.
    let before: Vec<usize> = followers.iter().map(|f| f.rotations).collect();
    db.batch_execute(
        "UPDATE t SET small = 7 WHERE id = 1;
         UPDATE t SET big = 'A' || substr(big, 2) WHERE id = 3;",
    )
    .await
    .unwrap();
    for (f, (_, sql, _)) in followers.iter_mut().zip(&cases) {
        f.until_matches(&pg_rows(&db, sql).await).await;
    }
    let after: Vec<usize> = followers.iter().map(|f| f.rotations).collect();
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_changed_behind_our_back() {
    let url = fresh_db("pubdrift").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int PRIMARY KEY, v text);
         INSERT INTO a VALUES (1, 'a1'); INSERT INTO b VALUES (1, 'b1');",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.schema_check = Duration::from_millis(300);
    })
    .await;
    let publication = format!("shapesync_pub_{}", server.cfg.stream_id);
    let client = server.client();
    let mut fa = Follower::rotating(client.clone(), "table=a");
    let mut fb = Follower::rotating(client.clone(), "table=b");
    fa.sync().await;
    fb.sync().await;
    let a_rows = "SELECT * FROM a ORDER BY id";
    let b_rows = "SELECT * FROM b ORDER BY id";

    // 1. A table taken out of the publication: its changes stop; it is added back, its shapes
    //    rotate, and the refetch holds what was written meanwhile. The other table's shape is
    //    left alone.
    db.batch_execute(&format!(
        "ALTER PUBLICATION {publication} DROP TABLE a;
         INSERT INTO a VALUES (2, 'missed?');
         UPDATE a SET v = 'changed while out' WHERE id = 1;
         INSERT INTO b VALUES (2, 'b2');"
    ))
    .await
    .unwrap();
    fa.until_matches(&pg_rows(&db, a_rows).await).await;
    fb.until_matches(&pg_rows(&db, b_rows).await).await;
    assert!(fa.rotations >= 1);
    assert_eq!(fb.rotations, 0);
    assert!(integrity_events(&server, "publication_table_readded").await >= 1);
    let back: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'a'",
            &[&publication],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(back, 1);

    // 2. A row filter put on it: removed again (rotation), rows outside the filter arrive.
    db.batch_execute(&format!(
        "ALTER PUBLICATION {publication} SET TABLE a WHERE (id < 0), b;
         INSERT INTO a VALUES (3, 'filtered?');"
    ))
    .await
    .unwrap();
    fa.until_matches(&pg_rows(&db, a_rows).await).await;
    let filters: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             WHERE p.pubname = $1 AND pr.prqual IS NOT NULL",
            &[&publication],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(filters, 0);

    // 3. The operations published narrowed: set back, every shape rotated.
    let rotations = (fa.rotations, fb.rotations);
    db.batch_execute(&format!(
        "ALTER PUBLICATION {publication} SET (publish = 'insert');
         UPDATE b SET v = 'update while not published' WHERE id = 1;
         DELETE FROM a WHERE id = 2;"
    ))
    .await
    .unwrap();
    fa.until_matches(&pg_rows(&db, a_rows).await).await;
    fb.until_matches(&pg_rows(&db, b_rows).await).await;
    assert!(fa.rotations > rotations.0 && fb.rotations > rotations.1);
    assert!(integrity_events(&server, "publication_options_repaired").await >= 1);

    // 4. The publication dropped: created again with a new slot, every shape rotated; changes
    //    from then on stream again.
    let rotations = (fa.rotations, fb.rotations);
    db.batch_execute(&format!(
        "DROP PUBLICATION {publication};
         INSERT INTO a VALUES (4, 'after the drop');
         UPDATE b SET v = 'after the drop' WHERE id = 2;"
    ))
    .await
    .unwrap();
    fa.until_matches(&pg_rows(&db, a_rows).await).await;
    fb.until_matches(&pg_rows(&db, b_rows).await).await;
    assert!(fa.rotations > rotations.0 && fb.rotations > rotations.1);
    db.batch_execute(
        "INSERT INTO a VALUES (5, 'streams again'); UPDATE b SET v = 'again' WHERE id = 1;",
    )
    .await
    .unwrap();
    fa.until_matches(&pg_rows(&db, a_rows).await).await;
    fb.until_matches(&pg_rows(&db, b_rows).await).await;
    assert!(integrity_events(&server, "publication_recreated").await >= 1);
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("shapesync_slot_{}", server.cfg.stream_id)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_database_under_another_url_is_refused() {
    let url = fresh_db("identity").await;
    let server = TestServer::start(&url).await;
    // The test cluster listens on 127.0.0.1; `localhost` is the same server, and so is the
    // URL with its parameters spelled another way.
    let other = url.replacen("127.0.0.1", "localhost", 1);
    assert_ne!(other, url);
    for spelling in [other.clone(), format!("{other}?application_name=x")] {
        let r = request(
            &server,
            reqwest::Method::POST,
            "/v1/admin/database",
            None,
            Some(json!({"database_url": spelling, "database_id": "again"})),
        )
        .await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(r.body.contains("\\\"default\\\""), "{}", r.body);
        crate::openapi::check(&crate::openapi::spec(), "/v1/admin/database", "post", &r);
    }
    // Another database of the same cluster is a different database.
    let url2 = fresh_db("identity2").await;
    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        None,
        Some(json!({"database_url": url2, "database_id": "second"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // And the second one is refused under another spelling too.
    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        None,
        Some(json!({"database_url": url2.replacen("127.0.0.1", "localhost", 1), "database_id": "third"})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("second"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_per_storage_directory() {
    let url = fresh_db("dirlock").await;
    let mut server = TestServer::start(&url).await;
    let mut cfg = server.cfg.clone();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let err = match shapesync::server::Server::start(cfg.clone()).await {
        Ok(_) => panic!("a second server started on the same storage directory"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(&cfg.storage_dir.display().to_string())
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    // The first keeps serving; once it stops, the directory is free again.
    let r = server.client().raw("/v1/health").await;
    assert_eq!(r.status, 200, "{}", r.body);
    server.restart().await;
    let r = server.client().raw("/v1/health").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

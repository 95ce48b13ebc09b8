//! Ready answers (`serve::memo`): a sealed snapshot chunk asked for again is answered before the
//! router, with the same status, headers and body as the router's answer, and only while that
//! answer holds: never for a request whose headers could change it, never after its shape is
//! gone, never past its credential.

use std::time::Duration;

use reqwest::Method;

use crate::authz::{admin, secured};
use crate::support::{connect, fresh_db, request, Reply, TestServer};

async fn hits(server: &TestServer) -> u64 {
    let r = request(
        server,
        Method::GET,
        "/metrics",
        Some(crate::authz::ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("shapesync_response_cache_hits_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no hits counter in\n{}", r.body))
}

/// The headers of an answer, less the ones that differ per request.
fn stable_headers(r: &Reply) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "date"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    h.sort();
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_snapshot_chunk_is_answered_ready_while_its_shape_lives() {
    let url = fresh_db("memo").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id int8 PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.shape_deletion = true;
        c.access.admin_key = Some(crate::authz::ADMIN.into());
    })
    .await;
    let c = server.client();
    let q = "table=items&offset=-1";

    // The first request marks the target seen, the second is kept, the third is answered ready.
    let first = c.get(q).await;
    let second = c.get(q).await;
    assert_eq!(hits(&server).await, 0);
    let third = c.get_with(q, &[("x-request-id", "my-request")]).await;
    assert_eq!(
        hits(&server).await,
        1,
        "the third request is answered ready"
    );
    for r in [&first, &second, &third] {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, first.body);
        assert_eq!(stable_headers(r), stable_headers(&first));
        assert!(r.header("date").is_some());
    }
    assert_eq!(third.header("x-request-id"), Some("my-request"));
    assert_eq!(
        third.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    let handle = first.header("electric-handle").unwrap().to_string();
    let etag = first.header("etag").unwrap().to_string();

    // Headers that change the answer go through the router: a matching If-None-Match is a 304,
    // an Origin is echoed (and keyed: its own answer is kept for it).
    let not_modified = c.get_with(q, &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, 304);
    for _ in 0..3 {
        let o = c.get_with(q, &[("origin", "https://app.example")]).await;
        assert_eq!(o.status, 200);
        assert_eq!(
            o.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(o.body, first.body);
    }
    assert_eq!(hits(&server).await, 2, "the third request with the origin");
    let plain = c.get(q).await;
    assert_eq!(plain.header("access-control-allow-origin"), Some("*"));
    assert_eq!(hits(&server).await, 3);

    // Once the shape is deleted, its kept answer is not given: the next request gets the new
    // shape, with its own handle and the rows as they are now.
    db.batch_execute("DELETE FROM items WHERE id > 10")
        .await
        .unwrap();
    let del = request(
        &server,
        Method::DELETE,
        &format!("/v1/shape?table=items&handle={handle}"),
        None,
        None,
    )
    .await;
    assert_eq!(del.status, 202, "{}", del.body);
    let mut after = c.get(q).await;
    for _ in 0..50 {
        if after.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = c.get(q).await;
    }
    assert_eq!(after.status, 200, "{}", after.body);
    assert_ne!(after.header("electric-handle"), Some(handle.as_str()));
    assert_eq!(
        after.messages().len(),
        11,
        "10 rows and the snapshot's end: {}",
        after.body
    );
    let hits_before = hits(&server).await;
    let again = c.get(q).await;
    assert_eq!(again.body, after.body);
    assert_eq!(hits(&server).await, hits_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_answer_never_outlives_its_credential_or_its_database() {
    let url = fresh_db("memo_auth").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id int8 PRIMARY KEY, name text);
         INSERT INTO items VALUES (1, 'one'), (2, 'two');",
    )
    .await
    .unwrap();
    let server = secured(&url).await;
    let c = server.client();
    let with_secret = "table=items&offset=-1&secret=the-shape-secret";
    for _ in 0..3 {
        assert_eq!(c.get(with_secret).await.status, 200);
    }
    assert_eq!(hits(&server).await, 1);
    // Without the secret, or with another one, the same shape is refused every time.
    for q in [
        "table=items&offset=-1",
        "table=items&offset=-1&secret=wrong",
    ] {
        for _ in 0..3 {
            assert_eq!(c.get(q).await.status, 401, "{q}");
        }
    }
    // A credential header always goes through the router (here an invalid token with no
    // secret: refused).
    for _ in 0..3 {
        let r = c
            .get_with(
                "table=items&offset=-1",
                &[("authorization", "Bearer a.b.c")],
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.body);
    }
    assert_eq!(hits(&server).await, 1);

    // A database added, its shape's answer kept, then the database removed: no answer.
    let other = fresh_db("memo_auth_other").await;
    connect(&other)
        .await
        .batch_execute("CREATE TABLE t (id int8 PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await
        .unwrap();
    let added = admin(
        &server,
        Method::POST,
        "/v1/admin/database",
        Some(serde_json::json!({"database_id": "other", "database_url": other, "secret": "other-secret"})),
    )
    .await;
    assert!(added.status < 300, "{}", added.body);
    let q = "table=t&offset=-1&database_id=other&secret=other-secret";
    let mut ok = 0;
    for _ in 0..100 {
        if c.get(q).await.status == 200 {
            ok += 1;
            if ok == 3 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(hits(&server).await, 2);
    let removed = admin(&server, Method::DELETE, "/v1/admin/database/other", None).await;
    assert!(removed.status < 300, "{}", removed.body);
    assert_eq!(c.get(q).await.status, 401, "the database is gone");
    assert_eq!(hits(&server).await, 2);
}

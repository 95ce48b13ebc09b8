//! Several source databases in one process: the admin API, isolation, removal (slot and
//! publication dropped), restart survival, access control, rate limits, redaction, metrics.

use std::time::Duration;

use serde_json::json;
use shapesync::serve::access::{AccessConfig, RateLimit};

use crate::support::{connect, eventually, fresh_db, request, wait_parked, Follower, TestServer};

/// A database with an `items` table holding `rows`.
async fn db_with_items(tag: &str, rows: &[(i32, &str)]) -> (String, tokio_postgres::Client) {
    let url = fresh_db(tag).await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    for (id, v) in rows {
        db.execute("INSERT INTO items VALUES ($1, $2)", &[id, v])
            .await
            .unwrap();
    }
    (url, db)
}

/// The URL with a password added (trust auth ignores it): it must never be shown.
fn with_password(url: &str) -> String {
    url.replacen("postgres@", "postgres:hunter2@", 1)
}

async fn slot_count(db: &tokio_postgres::Client, like: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE $1",
        &[&like],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_sync_in_isolation_and_removal_frees_the_slot() {
    let (url_a, db_a) = db_with_items("tenant_a", &[(1, "a1")]).await;
    let (url_b, db_b) = db_with_items("tenant_b", &[(1, "b1"), (2, "b2")]).await;
    let server = TestServer::start(&url_a).await;
    let stream = server.cfg.stream_id.clone();

    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        None,
        Some(json!({"database_url": with_password(&url_b), "database_id": "tenant-b"})),
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!("tenant-b")));
    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        None,
        Some(json!({"database_url": url_b, "database_id": "tenant-b"})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (400, json!("Database tenant-b already exists."))
    );
    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        None,
        Some(json!({"database_url": url_b, "database_id": "other"})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()
            .as_str()
            .unwrap()
            .ends_with("is already in use by another tenant."),
        "{}",
        r.body
    );
    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        None,
        Some(json!({"database_id": "x"})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"database_url": ["can't be blank"]}))
    );
    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 400);

    let list = request(
        &server,
        reqwest::Method::GET,
        "/v1/admin/database",
        None,
        None,
    )
    .await;
    assert_eq!(list.status, 200);
    assert!(
        !list.body.contains("hunter2"),
        "credentials leaked: {}",
        list.body
    );
    let listed = list.json();
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["database_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["default", "tenant-b"]);
    let one = request(
        &server,
        reqwest::Method::GET,
        "/v1/admin/database/tenant-b",
        None,
        None,
    )
    .await;
    assert_eq!(one.json()["database_id"], "tenant-b");
    assert!(!one.body.contains("hunter2"));

    // With two tenants a shape request must name one.
    let c = server.client();
    let r = c.get("table=items&offset=-1").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("Database ID was not provided"));
    assert_eq!(
        c.get("table=items&offset=-1&database_id=nope").await.status,
        404
    );

    eventually("tenant-b to stream", Duration::from_secs(30), || async {
        c.raw("/v1/health?database_id=tenant-b").await.status == 200
    })
    .await;
    let mut fa = Follower::new(server.client(), "table=items&database_id=default");
    let mut fb = Follower::new(server.client(), "table=items&database_id=tenant-b");
    fa.sync().await;
    fb.sync().await;
    assert_eq!(fa.rows.len(), 1);
    assert_eq!(fb.rows.len(), 2);
    db_a.execute("INSERT INTO items VALUES (10, 'a10')", &[])
        .await
        .unwrap();
    db_b.execute("INSERT INTO items VALUES (20, 'b20')", &[])
        .await
        .unwrap();
    fa.until("a10", |f| f.rows.len() == 2).await;
    fb.until("b20", |f| f.rows.len() == 3).await;
    assert!(
        fa.rows
            .values()
            .all(|r| r["v"].as_str().unwrap().starts_with('a')),
        "no data of B in A"
    );
    assert!(
        fb.rows
            .values()
            .all(|r| r["v"].as_str().unwrap().starts_with('b')),
        "no data of A in B"
    );

    // Removing B drops its slot and publication; A keeps syncing; B's clients get 404.
    let b_slots = format!("shapesync_slot_{stream}_%");
    assert_eq!(slot_count(&db_a, &b_slots).await, 1);
    let parked = {
        let c = server.client();
        let q = format!(
            "table=items&database_id=tenant-b&offset={}&handle={}&live=true",
            fb.offset,
            fb.handle.clone().unwrap()
        );
        tokio::spawn(async move { c.get(&q).await })
    };
    wait_parked(&server, 1).await;
    let r = request(
        &server,
        reqwest::Method::DELETE,
        "/v1/admin/database/tenant-b",
        None,
        None,
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!("tenant-b")));
    let r = parked.await.unwrap();
    assert_eq!(
        r.status, 409,
        "a live waiter of a removed database must refetch"
    );
    assert_eq!(slot_count(&db_a, &b_slots).await, 0, "the slot is dropped");
    let pubs: i64 = db_b
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'shapesync_pub_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pubs, 0, "the publication is dropped");
    let r = c
        .get(&format!(
            "table=items&database_id=tenant-b&offset={}&handle={}",
            fb.offset,
            fb.handle.clone().unwrap()
        ))
        .await;
    assert_eq!(r.status, 404);
    let r = request(
        &server,
        reqwest::Method::DELETE,
        "/v1/admin/database/tenant-b",
        None,
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (404, json!("Database tenant-b not found."))
    );
    db_a.execute("INSERT INTO items VALUES (11, 'a11')", &[])
        .await
        .unwrap();
    fa.shape_query = "table=items".into(); // one tenant again: database_id is optional
    fa.until("a11", |f| f.rows.len() == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_their_shapes_survive_a_restart() {
    let (url_a, _db_a) = db_with_items("restart_a", &[(1, "a1")]).await;
    let (url_b, db_b) = db_with_items("restart_b", &[(1, "b1")]).await;
    let mut server = TestServer::start(&url_a).await;
    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        None,
        Some(json!({"database_url": url_b})),
    )
    .await;
    assert_eq!(r.status, 200);
    let id = r.json().as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a generated UUID");
    let mut fb = Follower::new(server.client(), &format!("table=items&database_id={id}"));
    eventually("tenant to stream", Duration::from_secs(30), || async {
        server
            .client()
            .raw(&format!("/v1/health?database_id={id}"))
            .await
            .status
            == 200
    })
    .await;
    fb.sync().await;
    let handle = fb.handle.clone();
    let mode = std::fs::metadata(server.storage_dir().join("tenants.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    assert!(
        !std::fs::read_to_string(server.storage_dir().join("tenants.json"))
            .unwrap()
            .is_empty()
    );

    server.restart().await;
    db_b.execute("INSERT INTO items VALUES (2, 'b2')", &[])
        .await
        .unwrap();
    fb.client = server.client();
    fb.until("b2 after restart", |f| f.rows.len() == 2).await;
    assert_eq!(fb.handle, handle, "the tenant's shape kept its handle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_admin_keys_and_rate_limits() {
    let (url, _db) = db_with_items("auth", &[(1, "x")]).await;
    let server = TestServer::start_with(&url, |c| {
        c.access = AccessConfig {
            secret: Some("s3cr3t".into()),
            admin_key: Some("adm1n".into()),
            insecure: false,
            trusted_proxies: vec![],
            admin_rate: RateLimit {
                per_second: 1,
                burst: 3,
            },
            create_rate: RateLimit {
                per_second: 1,
                burst: 2,
            },
            jwt: None,
        };
    })
    .await;
    let c = server.client();
    let r = c.get("table=items&offset=-1").await;
    // No credential: the reference's message, and the code `auth_required`.
    assert_eq!(
        (r.status, &r.json()["message"], &r.json()["error"]["code"]),
        (
            401,
            &json!("Unauthorized - Invalid API secret"),
            &json!("auth_required")
        )
    );
    assert_eq!(
        c.get("table=items&offset=-1&secret=wrong").await.status,
        401
    );
    assert_eq!(
        c.get("table=items&offset=-1&secret=s3cr3t").await.status,
        200
    );
    assert_eq!(
        c.get("table=items&offset=-1&api_secret=s3cr3t")
            .await
            .status,
        200,
        "the deprecated name works"
    );
    let opt = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/shape", server.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        opt.status().as_u16(),
        204,
        "preflight is never authenticated"
    );

    // Shape creation is rate limited per client; serving an existing shape is not.
    let created = c
        .get("table=items&offset=-1&secret=s3cr3t&columns=id")
        .await;
    assert_eq!(created.status, 200);
    let limited = c
        .get("table=items&offset=-1&secret=s3cr3t&where=id%20%3D%201")
        .await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    assert_eq!(limited.json()["error"]["code"], "rate_limited");
    for _ in 0..5 {
        assert_eq!(
            c.get("table=items&offset=-1&secret=s3cr3t").await.status,
            200
        );
    }

    // The admin API: 401 without a key, 403 with a wrong one, then the rate limit.
    let r = request(
        &server,
        reqwest::Method::GET,
        "/v1/admin/database",
        None,
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (401, json!("auth_required"))
    );
    let r = request(
        &server,
        reqwest::Method::GET,
        "/v1/admin/database",
        Some("nope"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (403, json!("auth_invalid"))
    );
    let bearer = reqwest::Client::new()
        .get(format!("{}/v1/admin/database", server.base))
        .header("authorization", "Bearer adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status().as_u16(), 200);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            request(
                &server,
                reqwest::Method::GET,
                "/v1/admin/database",
                Some("adm1n"),
                None,
            )
            .await
            .status,
        );
    }
    assert!(statuses.contains(&429), "admin rate limit: {statuses:?}");
    let metrics = request(&server, reqwest::Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, 401, "metrics need the admin key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_can_have_its_own_secret() {
    let (url_a, _a) = db_with_items("secret_a", &[(1, "a")]).await;
    let (url_b, _b) = db_with_items("secret_b", &[(1, "b")]).await;
    let server = TestServer::start_with(&url_a, |c| {
        c.access.insecure = false;
        c.access.secret = Some("global".into());
        c.access.admin_key = Some("adm".into());
    })
    .await;
    let body = json!({"database_url": url_b, "database_id": "b", "secret": "only-b"});
    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        Some("adm"),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = server.client();
    eventually("b to stream", Duration::from_secs(30), || async {
        c.raw("/v1/health?database_id=b&secret=only-b").await.status == 200
    })
    .await;
    // Its detail needs its own secret (the global one is not b's).
    assert_eq!(c.raw("/v1/health?database_id=b").await.status, 401);
    assert_eq!(
        c.raw("/v1/health?database_id=b&secret=global").await.status,
        401
    );
    assert_eq!(
        c.get("table=items&offset=-1&database_id=b&secret=global")
            .await
            .status,
        401
    );
    assert_eq!(
        c.get("table=items&offset=-1&database_id=b&secret=only-b")
            .await
            .status,
        200
    );
    assert_eq!(
        c.get("table=items&offset=-1&database_id=default&secret=only-b")
            .await
            .status,
        401
    );
    assert_eq!(
        c.get("table=items&offset=-1&database_id=default&secret=global")
            .await
            .status,
        200
    );
    let listed = request(
        &server,
        reqwest::Method::GET,
        "/v1/admin/database",
        Some("adm"),
        None,
    )
    .await;
    assert!(
        !listed.body.contains("only-b"),
        "secrets are never returned"
    );
    let stored = std::fs::read_to_string(server.storage_dir().join("tenants.json")).unwrap();
    assert!(
        stored.contains("only-b"),
        "kept (0600) so the tenant survives a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_open_without_asking() {
    let url = fresh_db("open").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = shapesync::server::Config::new(url, dir.path());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.access.insecure = false;
    let err = shapesync::server::Server::start(cfg)
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("--insecure"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_replication_shapes_and_requests() {
    let (url, db) = db_with_items("metrics", &[(1, "x")]).await;
    let server = TestServer::start(&url).await;
    let mut f = Follower::new(server.client(), "table=items");
    f.sync().await;
    db.execute("INSERT INTO items VALUES (2, 'y')", &[])
        .await
        .unwrap();
    f.until("the insert", |f| f.rows.len() == 2).await;
    let stack = server.server.as_ref().unwrap().stack.clone().unwrap();
    eventually("the ack", Duration::from_secs(10), || async {
        stack.stats.lag_bytes() == 0
    })
    .await;
    let m = server.client().raw("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let body = m.body;
    for needle in [
        "shapesync_http_requests_total{route=\"shape\",status=\"200\"}",
        "shapesync_http_request_duration_seconds_bucket{route=\"shape\",status=\"200\",le=\"+Inf\"}",
        "shapesync_http_requests_active",
        "shapesync_http_requests_parked",
        "shapesync_replication_lag_bytes{database_id=\"default\"} 0",
        "shapesync_replication_lag_seconds{database_id=\"default\"}",
        "shapesync_replication_acked_lsn{database_id=\"default\"}",
        "shapesync_shapes{database_id=\"default\"} 1",
        "shapesync_storage_bytes{database_id=\"default\"}",
        "shapesync_fsync_duration_seconds_count{database_id=\"default\"}",
        "shapesync_database_up{database_id=\"default\",status=\"active\"} 1",
    ] {
        assert!(body.contains(needle), "missing {needle} in\n{body}");
    }
    let acked: f64 = body
        .lines()
        .find(|l| l.starts_with("shapesync_replication_acked_lsn{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(acked > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_down_answers_503_while_the_others_serve() {
    let (url, db) = db_with_items("up", &[(1, "x")]).await;
    let server = TestServer::start(&url).await;
    let closed = shapesync::postgres::embedded::free_port().unwrap();
    let down = json!({"database_url": format!("postgresql://postgres@127.0.0.1:{closed}/nowhere"), "database_id": "down"});
    let r = request(
        &server,
        reqwest::Method::POST,
        "/v1/admin/database",
        None,
        Some(down),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = server.client();
    let h = c.raw("/v1/health?database_id=down").await;
    assert_eq!(h.status, 202);
    assert_ne!(h.json()["status"], "active");
    let r = c.get("table=items&offset=-1&database_id=down").await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let mut f = Follower::new(server.client(), "table=items&database_id=default");
    f.sync().await;
    db.execute("INSERT INTO items VALUES (2, 'y')", &[])
        .await
        .unwrap();
    f.until("the other tenant keeps syncing", |f| f.rows.len() == 2)
        .await;
    let all = c.raw("/v1/health").await;
    assert_eq!(all.json()["databases"]["down"], "waiting");
    assert_eq!(all.json()["databases"]["default"], "active");
}

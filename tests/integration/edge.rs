//! The HTTP edge as an attacker and a new user meet it: every route driven with hostile input
//! (no 5xx for a client's mistake while the database is up), system schemas and NUL bytes,
//! malformed handles (409, not 400), subset errors and caps, `queryable_columns`, the Bearer
//! scheme in any case, health and database ids that disclose nothing without a secret,
//! connection caps, CORS methods of the admin API, and a start that fails fast.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{connect, fresh_db, request, Reply, TestServer};

const TABLE_SQL: &str = "CREATE TABLE t (id int PRIMARY KEY, v text, j jsonb, a int[], n numeric);
     INSERT INTO t SELECT g, CASE WHEN g % 10 = 0 THEN 'x' ELSE g::text END,
       jsonb_build_object('k', g), ARRAY[g, g + 1], g / 3.0 FROM generate_series(1, 200) g";

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Option<Reply> {
    let mut req = http.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let res = req.send().await.ok()?;
    Some(Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap_or_default(),
    })
}

/// Values that break parsers: quoting, NUL, invalid percent-encoding, huge numbers, SQL.
const HOSTILE: &[&str] = &[
    "",
    "'",
    "\"",
    "\"\"",
    "\0",
    "t\0",
    "%",
    "%ff",
    "-1",
    "-2",
    "now",
    "0_0",
    "0_-1",
    "99999999999999999999999_1",
    "1_99999999999999999999999",
    "abc",
    "é∞",
    "NaN",
    "null",
    "[]",
    "{}",
    "{\"1\":",
    "1; DROP TABLE t",
    "$1",
    "$0",
    "a.b.c",
    "pg_catalog.pg_class",
    "information_schema.tables",
    "pg_toast.x",
    "public.t",
    "\"T\"",
    "t",
    "id",
    "id,v",
    "id,,v",
    "\"id\",\"nope\"",
    "true",
    "false",
    "default",
    "full",
    "changes_only",
    "1",
    "0",
    "18446744073709551616",
];

const WHERES: &[&str] = &[
    "id = ",
    "id = $1",
    "id = $2",
    "id > 5",
    "id IN (SELECT 1)",
    "v ~ '('",
    "v::int > 0",
    "1 / (id - id) > 0",
    "v LIKE '\\'",
    "id = ANY('{1,2'::int[])",
    "a @> '{1}'",
    "id > 99999999999999999999999",
    "v COLLATE \"C\" > 'a'",
    "(j->>'k')::int > 3",
    "j @> '{\"k\": 1}'",
    "n / 0 > 1",
    "n::int > 2147483647",
    "id::smallint > 0",
    "sqrt(-1) > 0",
    "v::date > now()",
    "v = E'\\x00'",
    "id = 1; SELECT pg_sleep(10)",
    "pg_sleep(1) IS NULL",
    "(SELECT 1) = 1",
    "repeat('x', 100000000) = v",
    "x",
    "t.id = 1",
    "public.t.id = 1",
    "id = 1 OR",
    "NOT",
    "'a' = 'a' COLLATE \"nope\"",
];

const ORDERS: &[&str] = &[
    "id",
    "v desc nulls first",
    "1",
    "random()",
    "id; drop",
    "nope",
    "",
];

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// A random shape query: some parameters valid, some hostile, some missing.
fn random_query(rng: &mut StdRng) -> String {
    let mut q: Vec<String> = Vec::new();
    let mut add = |rng: &mut StdRng, k: &str, pool: &[&str], p: f64| {
        if rng.random_bool(p) {
            q.push(format!("{k}={}", enc(pick(rng, pool))));
        }
    };
    add(rng, "table", &["t", "t", "t", "public.t"], 0.7);
    add(rng, "table", HOSTILE, 0.3);
    add(rng, "offset", &["-1", "-1", "now", "0_0"], 0.7);
    add(rng, "offset", HOSTILE, 0.3);
    add(rng, "handle", HOSTILE, 0.3);
    add(rng, "live", &["true", "false", ""], 0.2);
    add(rng, "live_sse", &["true", "false"], 0.1);
    add(rng, "cursor", HOSTILE, 0.2);
    add(rng, "where", WHERES, 0.4);
    add(rng, "params[1]", HOSTILE, 0.2);
    add(rng, "params[x]", HOSTILE, 0.05);
    add(rng, "params[3]", HOSTILE, 0.05);
    add(rng, "columns", HOSTILE, 0.2);
    add(rng, "replica", HOSTILE, 0.1);
    add(rng, "log", HOSTILE, 0.1);
    add(rng, "database_id", HOSTILE, 0.1);
    add(rng, "secret", HOSTILE, 0.05);
    add(rng, "queryable_columns", HOSTILE, 0.1);
    add(rng, "subset__where", WHERES, 0.2);
    add(
        rng,
        "subset__params",
        &["{\"1\":\"3\"}", "{\"1\":[1]}", "[]", "{", "{\"2\":1}"],
        0.1,
    );
    add(rng, "subset__limit", HOSTILE, 0.1);
    add(rng, "subset__offset", HOSTILE, 0.1);
    add(rng, "subset__order_by", ORDERS, 0.15);
    add(rng, "subset__where_expr", &["{}"], 0.02);
    q.join("&")
}

/// Query strings no encoder produces: raw `%`, invalid UTF-8, bare separators.
const RAW_QUERIES: &[&str] = &[
    "table=t&offset=%",
    "table=t%ff&offset=-1",
    "table=%00&offset=-1",
    "table=t&offset=-1&where=%ff%fe",
    "table=t&offset=-1&columns=%c3%28",
    "&&&=&=",
    "table&offset",
    "table=t&offset=-1&params%5B1%5D=%ff",
    "table=t&offset=-1&subset__where=id%3E1&subset__params=%ff",
    "table=t&offset=-1&database_id=%ff",
];

const BODIES: &[&str] = &[
    "",
    "{",
    "[]",
    "null",
    "\"x\"",
    "{\"where\": 1}",
    "{\"params\": {\"1\": [1]}}",
    "{\"params\": {\"a\": 1}}",
    "{\"limit\": -1}",
    "{\"limit\": \"1e3\"}",
    "{\"order_by\": \"id\", \"limit\": 18446744073709551616}",
    "{\"order_by\": \"id\", \"offset\": 1.5}",
    "{\"subset\": \"x\"}",
    "{\"subset\": {\"where\": \"1 / (id - id) > 0\"}}",
    "{\"where\": \"v::int > 0\"}",
    "{\"where\": \"id > $1\", \"params\": {\"1\": \"abc\"}}",
    "{\"where_expr\": {}}",
    "{\"where\": \"id > 1\", \"order_by\": \"random()\"}",
];

fn no_5xx(r: &Option<Reply>, what: &str) {
    let Some(r) = r else {
        panic!("{what}: no answer (connection dropped or timed out)");
    };
    assert!(
        r.status < 500,
        "{what}: {} {}",
        r.status,
        r.body.chars().take(400).collect::<String>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_every_route_never_gets_a_5xx() {
    let url = fresh_db("edge_hostile").await;
    let db = connect(&url).await;
    db.batch_execute(TABLE_SQL).await.unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.long_poll = Duration::from_millis(300);
        c.shape_deletion = true;
        c.subset_caps.max_rows = 150;
    })
    .await;
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let seed: u64 = std::env::var("EDGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("hostile input: replay with EDGE_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    use reqwest::Method;
    for i in 0..700 {
        let q = random_query(&mut rng);
        let url = format!("{base}/v1/shape?{q}");
        let method = match i % 7 {
            0..=2 => Method::GET,
            3 => Method::POST,
            4 => Method::DELETE,
            5 => Method::HEAD,
            _ => Method::OPTIONS,
        };
        let body = (method == Method::POST).then(|| pick(&mut rng, BODIES).as_bytes().to_vec());
        let r = send(&http, method.clone(), &url, &[], body).await;
        no_5xx(&r, &format!("seed {seed}: {method} /v1/shape?{q}"));
    }
    for q in RAW_QUERIES {
        for m in [Method::GET, Method::POST, Method::DELETE] {
            let r = send(&http, m.clone(), &format!("{base}/v1/shape?{q}"), &[], None).await;
            no_5xx(&r, &format!("{m} raw {q}"));
        }
    }
    // POST bodies that are not JSON, not UTF-8, or too large.
    for body in [
        vec![0xff, 0xfe, 0x00],
        vec![b'{'; 2 << 20],
        b"{\"where\": \"\xff\"}".to_vec(),
    ] {
        let r = send(
            &http,
            Method::POST,
            &format!("{base}/v1/shape?table=t&offset=-1"),
            &[("content-type", "application/json")],
            Some(body),
        )
        .await;
        no_5xx(&r, "POST odd body");
    }
    // The admin API, health and metrics, with hostile ids and bodies.
    for id in HOSTILE.iter().filter(|id| **id != "default") {
        let id = enc(id);
        for m in [Method::GET, Method::DELETE] {
            let r = send(
                &http,
                m.clone(),
                &format!("{base}/v1/admin/database/{id}"),
                &[],
                None,
            )
            .await;
            no_5xx(&r, &format!("{m} admin {id}"));
        }
        let r = send(
            &http,
            Method::GET,
            &format!("{base}/v1/health?database_id={id}"),
            &[],
            None,
        )
        .await;
        no_5xx(&r, &format!("health {id}"));
    }
    let port = crate::support::pg().port();
    let admin_bodies = [
        json!({}),
        json!({"database_url": ""}),
        json!({"database_url": "not a url"}),
        json!({"database_url": "postgresql://"}),
        json!({"database_url": 5}),
        json!({"database_url": format!("postgresql://postgres@127.0.0.1:{port}/no_such_db")}),
        json!({"database_url": format!("postgresql://no_such_role@127.0.0.1:{port}/postgres")}),
        json!({"database_url": url.clone(), "database_id": "a/b"}),
        json!({"database_url": url.clone(), "database_id": 7}),
        json!({"database_url": url.clone(), "database_use_ipv6": "x"}),
        json!({"database_url": url.clone(), "secret": 1}),
        json!([]),
    ];
    for b in admin_bodies {
        let r = send(
            &http,
            Method::POST,
            &format!("{base}/v1/admin/database"),
            &[("content-type", "application/json")],
            Some(b.to_string().into_bytes()),
        )
        .await;
        no_5xx(&r, &format!("admin add {b}"));
        if b.to_string().contains("no_such") {
            let r = r.unwrap();
            assert_eq!(r.status, 400, "{b}: {}", r.body);
            assert!(
                r.body.contains("does not exist") && r.body.contains("Fix:"),
                "{}",
                r.body
            );
        }
    }
    for (m, path) in [
        (Method::PUT, "/v1/shape?table=t&offset=-1"),
        (Method::PATCH, "/v1/admin/database"),
        (Method::GET, "/v1/nope"),
        (Method::GET, "/metrics?x=%ff"),
        (Method::GET, "/v1/health?%ff"),
    ] {
        let r = send(&http, m.clone(), &format!("{base}{path}"), &[], None).await;
        no_5xx(&r, &format!("{m} {path}"));
    }
    // Still serving, and the table unharmed.
    let r = server
        .client()
        .get("table=t&offset=-1&database_id=default")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let n: i64 = db
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_tables_nul_bytes_and_malformed_handles() {
    let url = fresh_db("edge_names").await;
    let db = connect(&url).await;
    db.batch_execute(TABLE_SQL).await.unwrap();
    let server = TestServer::start(&url).await;
    let c = server.client();
    for table in [
        "pg_catalog.pg_authid",
        "pg_catalog.pg_class",
        "information_schema.tables",
        "pg_toast.pg_toast_1255",
    ] {
        let r = c.get(&format!("table={}&offset=-1", enc(table))).await;
        assert_eq!(r.status, 400, "{table}: {}", r.body);
        let msg = r.json()["errors"]["table"][0].as_str().unwrap().to_string();
        assert!(msg.contains("not a user table"), "{msg}");
    }
    let r = c.get("table=t%00&offset=-1").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("NUL"), "{}", r.body);
    // `pg_class` unqualified is public.pg_class: does not exist.
    let r = c.get("table=pg_class&offset=-1").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("does not exist"), "{}", r.body);

    // A handle of another format is a stale handle: 409 naming the live one.
    let live = c.get("table=t&offset=-1").await;
    let handle = live.header("electric-handle").unwrap().to_string();
    for bad in [
        "test-handle",
        "x",
        "1-2-3",
        "%ff",
        "999999999999999999999-1",
    ] {
        let r = c.get(&format!("table=t&offset=0_0&handle={bad}")).await;
        assert_eq!(r.status, 409, "{bad}: {}", r.body);
        assert_eq!(r.header("electric-handle"), Some(handle.as_str()), "{bad}");
        assert_eq!(r.messages()[0]["headers"]["control"], "must-refetch");
    }
}

async fn subset(server: &TestServer, q: &str) -> Reply {
    server.client().get(&format!("table=t&offset=-1&{q}")).await
}

async fn post_subset(server: &TestServer, body: Value) -> Reply {
    request(
        server,
        reqwest::Method::POST,
        "/v1/shape?table=t&offset=-1",
        None,
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_errors_caps_and_queryable_columns() {
    let url = fresh_db("edge_subset").await;
    let db = connect(&url).await;
    db.batch_execute(TABLE_SQL).await.unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.subset_caps.max_rows = 30;
        c.subset_caps.max_bytes = 12 << 10;
    })
    .await;
    // Postgres refuses the clause on some row: 400 like the same clause on a shape.
    for w in ["1 / (id - id) > 0", "v::int > 0"] {
        let r = subset(&server, &format!("subset__where={}", enc(w))).await;
        assert_eq!(r.status, 400, "{w}: {}", r.body);
        assert!(
            r.json()["errors"]["subset"]["where"][0].is_string(),
            "{}",
            r.body
        );
        let r = post_subset(&server, json!({"where": w})).await;
        assert_eq!(r.status, 400, "POST {w}: {}", r.body);
        let shape = server
            .client()
            .get(&format!("table=t&offset=-1&where={}", enc(w)))
            .await;
        assert_eq!(shape.status, 400, "shape {w}: {}", shape.body);
    }
    // Caps: rows (the table has 200), then bytes; under both, the whole answer.
    let r = subset(&server, "subset__where=id%20%3E%200").await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("--subset-max-rows"), "{}", r.body);
    db.batch_execute(
        "CREATE TABLE wide (id int PRIMARY KEY, v text);
         INSERT INTO wide SELECT g, repeat('y', 3000) FROM generate_series(1, 10) g",
    )
    .await
    .unwrap();
    let r = server
        .client()
        .get("table=wide&offset=-1&subset__where=id%20%3E%200")
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("--subset-max-bytes"), "{}", r.body);
    let r = subset(
        &server,
        "subset__where=id%20%3C%3D%2030&subset__order_by=id",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let data = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 30);
    assert_eq!(data[29]["value"]["id"], "30");
    // queryable_columns limits what the subset may name.
    let r = subset(&server, "queryable_columns=v&subset__where=id%20%3C%203").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("queryable columns"), "{}", r.body);
    let r = subset(
        &server,
        "queryable_columns=v&subset__where=v%20%3D%20'3'&subset__order_by=id&subset__limit=1",
    )
    .await;
    assert_eq!(r.status, 400, "order_by names id: {}", r.body);
    let r = subset(
        &server,
        "queryable_columns=id,v&subset__where=v%20%3D%20'3'&subset__order_by=id&subset__limit=1",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1);
    // Given twice (a proxy adding its own), only the columns in both lists.
    let r = subset(
        &server,
        "queryable_columns=id,v&queryable_columns=v&subset__where=id%20%3C%203",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // A syntax error is reported as such, not as a queryable-columns refusal.
    let r = subset(&server, "queryable_columns=v&subset__where=1%20x%201").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("syntax error"), "{}", r.body);
    // The shape's own columns must be queryable too.
    let r = server
        .client()
        .get("table=t&offset=-1&columns=id,j&queryable_columns=id,v")
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["errors"]["columns"][0].is_string(), "{}", r.body);
    // LIMIT and OFFSET are bigint in Postgres.
    let r = subset(
        &server,
        "subset__where=id%20%3E%200&subset__order_by=id&subset__limit=9223372036854775808",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("limit"), "{}", r.body);
    let r = subset(&server, "queryable_columns=nope&subset__where=id%20%3C%203").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("queryable_columns"), "{}", r.body);

    // A subset on a table dropped a moment ago: a 400, not a 500.
    db.batch_execute("CREATE TABLE gone (id int PRIMARY KEY); INSERT INTO gone VALUES (1)")
        .await
        .unwrap();
    let r = server.client().get("table=gone&offset=-1").await;
    assert_eq!(r.status, 200);
    db.batch_execute("DROP TABLE gone").await.unwrap();
    let r = server
        .client()
        .get("table=gone&offset=-1&subset__where=id%20%3E%200")
        .await;
    assert!(
        r.status == 400 || r.status == 409,
        "{} {}",
        r.status,
        r.body
    );
}

/// A subset larger than memory should hold is spilled and streamed whole; the process does not
/// buffer it (RSS grows far less than the answers' size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_subsets_are_complete_with_bounded_memory() {
    let url = fresh_db("edge_big_subset").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g",
    )
    .await
    .unwrap();
    let server = TestServer::start(&url).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = server.client();
        tasks.push(tokio::spawn(async move {
            c.get("table=t&offset=-1&subset__where=id%20%3E%200&subset__order_by=id")
                .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.len() > 15_000_000, "{}", r.body.len());
        let v = r.json();
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 60_000);
        assert_eq!(data[59_999]["value"]["id"], "60000");
        assert!(v["metadata"]["snapshot_mark"].is_number());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_database_ids_disclose_nothing_without_a_secret() {
    let url = fresh_db("edge_disclose").await;
    let db = connect(&url).await;
    db.batch_execute(TABLE_SQL).await.unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.access.insecure = false;
        c.access.secret = Some("s3cret".into());
        c.access.admin_key = Some("adm1n".into());
    })
    .await;
    let c = server.client();
    let r = c.raw("/v1/health").await;
    assert_eq!(r.json(), json!({"status": "active"}), "overall status only");
    assert!(!r.body.contains("default"));
    // Per-database detail: the admin key, or that database's secret.
    let r = c.raw("/v1/health?database_id=default").await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = c.raw("/v1/health?database_id=nope").await;
    assert_eq!(r.status, 401, "unknown looks like known: {}", r.body);
    let r = c.raw("/v1/health?database_id=default&secret=s3cret").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(
        &server,
        reqwest::Method::GET,
        "/v1/health?database_id=default",
        Some("adm1n"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Shapes: an unknown and a known id answer alike without the secret.
    let known = c.get("table=t&offset=-1&database_id=default").await;
    let unknown = c.get("table=t&offset=-1&database_id=nope").await;
    assert_eq!((known.status, unknown.status), (401, 401));
    assert_eq!(known.body, unknown.body);
    // With the secret, the unknown one is 404.
    let r = c
        .get("table=t&offset=-1&database_id=nope&secret=s3cret")
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // The admin key in any case of the Bearer scheme.
    for auth in [
        "Bearer adm1n",
        "BEARER adm1n",
        "bearer adm1n",
        "bEaReR adm1n",
    ] {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/admin/database", server.base))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{auth}");
    }
    // CORS names the methods each admin route answers.
    let r = request(
        &server,
        reqwest::Method::GET,
        "/v1/admin/database",
        Some("adm1n"),
        None,
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, HEAD, OPTIONS")
    );
    let r = request(
        &server,
        reqwest::Method::GET,
        "/v1/admin/database/default",
        Some("adm1n"),
        None,
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, DELETE, HEAD, OPTIONS")
    );
}

/// Beyond the connection caps, a new connection gets 503 with retry-after and is closed; the
/// counts recover when connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_caps_get_503_and_close() {
    let url = fresh_db("edge_conns").await;
    let db = connect(&url).await;
    db.batch_execute(TABLE_SQL).await.unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.max_connections = Some(8);
        c.max_connections_per_ip = Some(8);
    })
    .await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    extra
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut answer))
        .await
        .expect("the refused connection is closed")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after:"), "{text}");
    drop(idle);
    crate::support::eventually("capacity back", Duration::from_secs(5), || async {
        server.client().try_raw("/metrics").await.is_some_and(|r| {
            r.status == 200
                && r.body.contains("shapesync_http_connections_limit 8\n")
                && r.body.lines().any(|l| {
                    l.strip_prefix("shapesync_http_connections_refused_total ")
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|v| v >= 1)
                })
        })
    })
    .await;
    crate::support::eventually("capacity back", Duration::from_secs(5), || async {
        server
            .client()
            .try_raw("/v1/health")
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
}

/// Mistakes in the database URL stop the start with the reason and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_database_fails_the_start() {
    let url = fresh_db("edge_start").await;
    let db = connect(&url).await;
    db.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edge_norepl') THEN \
         CREATE ROLE edge_norepl LOGIN; END IF; END $$",
    )
    .await
    .unwrap();
    let port = crate::support::pg().port();
    let dbname = url.rsplit('/').next().unwrap().to_string();
    for (bad, reason, fix) in [
        (
            format!("postgresql://edge_nobody@127.0.0.1:{port}/{dbname}"),
            "role \"edge_nobody\" does not exist",
            "CREATE ROLE",
        ),
        (
            format!("postgresql://postgres@127.0.0.1:{port}/edge_no_such_db"),
            "database \"edge_no_such_db\" does not exist",
            "CREATE DATABASE",
        ),
        (
            format!("postgresql://edge_norepl@127.0.0.1:{port}/{dbname}"),
            "may not use replication",
            "WITH REPLICATION",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = shapesync::server::Config::new(bad.clone(), dir.path().join("data"));
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        let started = std::time::Instant::now();
        let err = match shapesync::server::Server::start(cfg).await {
            Ok(_) => panic!("{bad} started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.contains(reason) && err.contains(fix), "{bad}: {err}");
    }
    // An unreachable database is not a mistake: the server starts and retries.
    let dir = tempfile::tempdir().unwrap();
    let closed = crate::support::free_port();
    let mut cfg = shapesync::server::Config::new(
        format!("postgresql://postgres@127.0.0.1:{closed}/postgres"),
        dir.path().join("data"),
    );
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let server = shapesync::server::Server::start(cfg).await.expect("starts");
    server.stop().await;
}

/// The binary: a busy address names itself and the flag, before anything is written to disk;
/// logs written to a file carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_address_and_plain_logs() {
    let bin = env!("CARGO_BIN_EXE_shapesync");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("store");
    let out = std::process::Command::new(bin)
        .args(["serve", "--insecure", "--listen", &addr.to_string()])
        .arg("--storage-dir")
        .arg(&storage)
        .env("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/postgres")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains(&addr.to_string()) && err.contains("--listen"),
        "{err}"
    );
    assert!(!storage.exists(), "nothing written before the bind failed");
    assert!(!err.contains('\u{1b}'));
    // A server that runs (its database unreachable: it starts and retries) logs to a pipe
    // without colour codes.
    let port = crate::support::free_port();
    let mut child = std::process::Command::new(bin)
        .args([
            "serve",
            "--insecure",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--storage-dir")
        .arg(dir.path().join("running"))
        .env("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/postgres")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        logs.contains("127.0.0.1:1"),
        "the retry names host and port: {logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "no ANSI codes when not a terminal: {logs}"
    );
}

/// A database without logical replication (`wal_level = replica`) fails the start with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_logical_replication_fails_the_start() {
    use shapesync::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        dir: dir.path().join("pg"),
        port: None,
        fast_unsafe: true,
        remove_on_exit: true,
        settings: vec![("wal_level".into(), "replica".into())],
    };
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
        .await
        .unwrap()
        .expect("a replica-level cluster");
    let mut cfg = shapesync::server::Config::new(pg.url("postgres"), dir.path().join("data"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let result = shapesync::server::Server::start(cfg).await;
    let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
    let err = match result {
        Ok(_) => panic!("started on a database without logical replication"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("wal_level is \"replica\"") && err.contains("wal_level = logical"),
        "{err}"
    );
}

/// A subset query that runs past its statement timeout is a 400 naming the flag (it would run
/// as long again), and the connection it ran on serves the next subset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_past_its_time_is_refused_and_the_pool_recovers() {
    let url = fresh_db("edge_subset_time").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 400000) g",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| c.subset_caps.timeout_ms = 1).await;
    let r = server
        .client()
        .get("table=t&offset=-1&subset__where=v%20LIKE%20'%25zzzz%25'")
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("--subset-timeout-ms"), "{}", r.body);
    // The pool recovers: a point lookup is answered. It too runs under the 1 ms limit, which a
    // loaded machine can exceed now and then: such a run is the same clear 400, and a retry
    // gets the answer.
    for _ in 0..3 {
        let mut answered = false;
        for _ in 0..20 {
            let r = server
                .client()
                .get("table=t&offset=-1&subset__where=id%20%3D%207")
                .await;
            if r.status == 200 {
                answered = true;
                break;
            }
            assert_eq!(r.status, 400, "{}", r.body);
            assert!(r.body.contains("--subset-timeout-ms"), "{}", r.body);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(answered, "the pool did not recover");
    }
}

/// Past the process-wide spill budget a large subset is refused for now (503, retry-after),
/// and a small one is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subsets_past_the_spill_budget_are_refused_for_now() {
    let url = fresh_db("edge_spill_budget").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 30000) g",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| c.subset_caps.spill_bytes = 2 << 20).await;
    let r = server
        .client()
        .get("table=t&offset=-1&subset__where=id%20%3E%200")
        .await;
    assert_eq!(r.status, 503, "{}", &r.body[..r.body.len().min(300)]);
    assert!(r.header("retry-after").is_some());
    let r = server
        .client()
        .get("table=t&offset=-1&subset__where=id%20%3C%2010")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 9);
}

//! Test harness: one throwaway Postgres 15 cluster per test binary (logical replication, trust
//! auth, free port, run as the `postgres` OS user when we are root, removed when the binary
//! exits), a fresh database per test, the real server on a loopback port, a small protocol
//! client, and a materializer that checks every message against the rows it knows.
//!
//! No sleeps for synchronisation: waits are on conditions with deadlines.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use shapesync::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use shapesync::server::{Config, Server};

static PG: OnceLock<EmbeddedPostgres> = OnceLock::new();
static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The shared cluster of this test binary.
pub fn pg() -> &'static EmbeddedPostgres {
    PG.get_or_init(|| {
        // Server logs in test output, filtered by RUST_LOG (default: warnings).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let dir = std::env::temp_dir().join(format!("shapesync-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        EmbeddedPostgres::start(&EmbeddedOptions {
            dir,
            port: None,
            fast_unsafe: true,
            remove_on_exit: true,
            // Every test's server leaves its slot behind (inactive) when it stops.
            settings: vec![("max_replication_slots".into(), "400".into())],
        })
        .expect("starting the test Postgres")
    })
}

/// A fresh database for one test.
pub async fn fresh_db(tag: &str) -> String {
    let pg = pg();
    let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
    let name = format!("t_{tag}_{n}");
    let admin = connect(&pg.url("postgres")).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .expect("drop database");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    pg.url(&name)
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A shapesync server on a loopback port with its own storage directory.
pub struct TestServer {
    pub server: Option<Server>,
    pub cfg: Config,
    pub base: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start(db_url: &str) -> TestServer {
        Self::start_with(db_url, |_| {}).await
    }

    pub async fn start_with(db_url: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config::new(db_url, dir.path().join("data"));
        cfg.listen = "127.0.0.1:0".parse().expect("addr");
        cfg.long_poll = Duration::from_secs(5);
        // Slots are cluster-wide: name them after the test's database.
        cfg.stream_id = db_url.rsplit('/').next().unwrap_or("default").to_string();
        tweak(&mut cfg);
        let mut s = Self::boot(cfg).await;
        s._dir = Some(dir);
        s
    }

    async fn boot(cfg: Config) -> TestServer {
        let server = Server::start(cfg.clone()).await.expect("server start");
        server
            .wait_active(Duration::from_secs(30))
            .await
            .expect("server active");
        let base = format!("http://{}", server.addr);
        TestServer {
            server: Some(server),
            cfg,
            base,
            _dir: None,
        }
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.cfg.storage_dir.clone()
    }

    /// Graceful stop, then start again on the same storage (a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut cfg = self.cfg.clone();
        cfg.listen = "127.0.0.1:0".parse().expect("addr");
        let fresh = Self::boot(cfg).await;
        self.server = fresh.server;
        self.base = fresh.base;
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    pub fn client(&self) -> ShapeClient {
        ShapeClient {
            base: self.base.clone(),
            http: http(),
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("bad json {e}: {}", self.body))
    }

    pub fn messages(&self) -> Vec<Value> {
        self.json().as_array().cloned().expect("array body")
    }

    pub fn up_to_date(&self) -> bool {
        self.header("electric-up-to-date").is_some()
    }
}

#[derive(Clone)]
pub struct ShapeClient {
    pub base: String,
    http: reqwest::Client,
}

impl ShapeClient {
    pub fn new(base: String) -> Self {
        ShapeClient { base, http: http() }
    }

    /// A GET of `path` that may fail to connect (server not up yet).
    pub async fn try_raw(&self, path: &str) -> Option<Reply> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        Some(Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: res.text().await.ok()?,
        })
    }

    pub async fn get(&self, query: &str) -> Reply {
        self.get_with(query, &[]).await
    }

    pub async fn get_with(&self, query: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.http.get(format!("{}/v1/shape?{query}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.text().await.expect("body");
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn raw(&self, path: &str) -> Reply {
        self.raw_with(path, &[]).await
    }

    /// A GET of `path` with these headers.
    pub async fn raw_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.text().await.expect("body");
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// A client that follows one shape like the official client does, materializing its rows and
/// failing on anything inconsistent (an insert of a present key, an update or delete of an
/// absent one, a repeated or decreasing offset).
#[derive(Clone)]
pub struct Follower {
    pub client: ShapeClient,
    pub shape_query: String,
    pub handle: Option<String>,
    pub offset: String,
    pub cursor: Option<String>,
    pub rows: BTreeMap<String, serde_json::Map<String, Value>>,
    pub up_to_date: bool,
    pub seen: Vec<(String, String)>,
    pub changes_seen: usize,
    /// Accept 409 (must-refetch: start over from `offset=-1`) and 503 (retry), as the official
    /// client does.
    pub allow_rotation: bool,
    /// How many 409s it got.
    pub rotations: usize,
    /// Headers sent with every request (a credential).
    pub headers: Vec<(String, String)>,
}

impl Follower {
    pub fn new(client: ShapeClient, shape_query: &str) -> Self {
        Follower {
            client,
            shape_query: shape_query.to_string(),
            handle: None,
            offset: "-1".into(),
            cursor: None,
            rows: BTreeMap::new(),
            up_to_date: false,
            seen: Vec::new(),
            changes_seen: 0,
            allow_rotation: false,
            rotations: 0,
            headers: Vec::new(),
        }
    }

    /// A follower that refetches on 409 (counted in `rotations`) instead of failing.
    pub fn rotating(client: ShapeClient, shape_query: &str) -> Self {
        let mut f = Follower::new(client, shape_query);
        f.allow_rotation = true;
        f
    }

    fn start_over(&mut self) {
        self.handle = None;
        self.offset = "-1".into();
        self.cursor = None;
        self.rows.clear();
        self.up_to_date = false;
        self.seen.clear();
        self.rotations += 1;
    }

    /// One request (live once up to date); returns the reply.
    pub async fn poll(&mut self) -> Reply {
        let mut q = format!("{}&offset={}", self.shape_query, self.offset);
        if let Some(h) = &self.handle {
            q.push_str(&format!("&handle={h}"));
        }
        if self.up_to_date {
            q.push_str(&format!(
                "&live=true&cursor={}",
                self.cursor.clone().unwrap_or_default()
            ));
        }
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = self.client.get_with(&q, &headers).await;
        if r.status == 409 && self.allow_rotation {
            self.start_over();
            return r;
        }
        if r.status == 503 && self.allow_rotation {
            // Replication restarting: retry as the official client does.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return r;
        }
        assert_eq!(r.status, 200, "GET {q} -> {} {}", r.status, r.body);
        self.handle = r.header("electric-handle").map(str::to_string);
        self.cursor = r.header("electric-cursor").map(str::to_string);
        for m in r.messages() {
            self.apply(&m);
        }
        self.offset = r
            .header("electric-offset")
            .expect("electric-offset")
            .to_string();
        if r.up_to_date() {
            self.up_to_date = true;
        }
        r
    }

    fn apply(&mut self, m: &Value) {
        let headers = &m["headers"];
        if headers.get("control").is_some() {
            return;
        }
        let key = m["key"].as_str().expect("key").to_string();
        let value = m["value"].as_object().cloned().unwrap_or_default();
        let op = headers["operation"].as_str().expect("operation");
        if let (Some(lsn), Some(pos)) = (headers.get("lsn"), headers.get("op_position")) {
            let id = (lsn.as_str().unwrap_or("").to_string(), pos.to_string());
            assert!(!self.seen.contains(&id), "change {id:?} delivered twice");
            self.seen.push(id);
            self.changes_seen += 1;
        }
        match op {
            "insert" => {
                assert!(
                    !self.rows.contains_key(&key),
                    "insert of present key {key}: {m}"
                );
                self.rows.insert(key, value);
            }
            "update" => {
                let row = self
                    .rows
                    .get_mut(&key)
                    .unwrap_or_else(|| panic!("update of absent {key}"));
                for (k, v) in value {
                    row.insert(k, v);
                }
            }
            "delete" => {
                assert!(
                    self.rows.remove(&key).is_some(),
                    "delete of absent key {key}: {m}"
                );
            }
            other => panic!("unknown operation {other}"),
        }
    }

    /// Poll until up to date.
    pub async fn sync(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.up_to_date {
            assert!(Instant::now() < deadline, "not up to date in time");
            self.poll().await;
        }
    }

    /// Keep polling until `cond` holds on the rows (bounded by a deadline).
    pub async fn until(&mut self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.poll().await;
        }
    }

    /// Poll until the rows (ordered by their numeric `id`) equal `expected`; on timeout the
    /// panic shows the differences.
    pub async fn until_matches(&mut self, expected: &[serde_json::Map<String, Value>]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.sorted_by_id();
            if got == expected {
                return;
            }
            if Instant::now() >= deadline {
                let diff: Vec<String> = expected
                    .iter()
                    .filter(|r| !got.contains(r))
                    .map(|r| format!("missing/different: {}", Value::Object(r.clone())))
                    .chain(
                        got.iter()
                            .filter(|r| !expected.contains(r))
                            .map(|r| format!("client has: {}", Value::Object(r.clone()))),
                    )
                    .take(12)
                    .collect();
                panic!("rows differ from Postgres:\n{}", diff.join("\n"));
            }
            self.poll().await;
        }
    }

    fn sorted_by_id(&self) -> Vec<serde_json::Map<String, Value>> {
        let mut got = self.values();
        got.sort_by_key(|r| {
            r.get("id")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<i64>().ok())
        });
        got
    }

    /// Rows as `id → value map` for comparison with Postgres.
    pub fn values(&self) -> Vec<serde_json::Map<String, Value>> {
        self.rows.values().cloned().collect()
    }
}

/// Rows of `query` as JSON objects of text values (what the shape should contain).
pub async fn pg_rows(
    client: &tokio_postgres::Client,
    query: &str,
) -> Vec<serde_json::Map<String, Value>> {
    let sql = format!("SELECT row_to_json(q)::text FROM ({query}) q");
    let rows = client.query(sql.as_str(), &[]).await.expect("query");
    rows.iter()
        .map(|r| {
            let v: String = r.get(0);
            let obj: serde_json::Map<String, Value> = serde_json::from_str(&v).expect("json");
            obj.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Null => Value::Null,
                        Value::String(s) => Value::String(s),
                        Value::Bool(b) => Value::String(if b { "t" } else { "f" }.into()),
                        other => Value::String(other.to_string()),
                    };
                    (k, v)
                })
                .collect()
        })
        .collect()
}

/// Wait until `cond` is true, polling it, bounded by `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// One HTTP request to the server, with an optional admin key and JSON body.
pub async fn request(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", server.base));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.expect("body"),
    }
}

/// Wait until the server reports `n` parked live requests (its own metrics).
pub async fn wait_parked(server: &TestServer, n: usize) {
    let needle = format!("shapesync_http_requests_parked {n}\n");
    eventually("live requests to park", Duration::from_secs(10), || async {
        server.client().raw("/metrics").await.body.contains(&needle)
    })
    .await;
}

/// The shapesync binary run as a process of its own (killed on drop, e.g. when a test fails).
pub struct ServerProcess {
    pub child: std::process::Child,
    pub client: ShapeClient,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Runs `cmd` (a server listening on `port`, its stdout dropped) and waits up to `limit`
    /// for its health to answer 200.
    pub async fn spawn(mut cmd: std::process::Command, port: u16, limit: Duration) -> Self {
        let child = cmd
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawning the shapesync binary");
        let client = ShapeClient::new(format!("http://127.0.0.1:{port}"));
        eventually("the server to be active", limit, || async {
            client
                .try_raw("/v1/health")
                .await
                .is_some_and(|r| r.status == 200)
        })
        .await;
        ServerProcess { child, client }
    }
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

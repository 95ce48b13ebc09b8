//! What the end-to-end harness runs against: its own Postgres, shapesync as a child process
//! (the release binary, so its memory is measured alone), an HTTP client, and the anchors'
//! tools (`pg_recvlogical`, nginx, wrk).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the bench Postgres");
    tokio::spawn(conn);
    c
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The soft limit of open files, which the child inherits.
pub fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        .unwrap_or(1024)
}

/// shapesync as a child process of the release binary.
pub struct Shapesync {
    child: Option<Child>,
    pub port: u16,
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    pub base: String,
}

pub fn shapesync_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SHAPESYNC_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/shapesync");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --bin shapesync` (scripts/bench.sh does)",
        p.display()
    );
    p
}

impl Shapesync {
    /// Settings a production deployment for these sizes would use: creation and admin (the
    /// harness polls /metrics) rates and admission limits raised (the defaults protect small servers), long polls that outlast
    /// the measurements, an open admin API and metrics (`--insecure`, loopback only).
    pub fn new(url: &str, storage: &Path, stream_id: &str) -> Shapesync {
        let port = free_port();
        let args = [
            "serve",
            "--database-url",
            url,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--storage-dir",
            &storage.display().to_string(),
            "--stream-id",
            stream_id,
            "--insecure",
            "--shape-create-rate",
            "1000000",
            "--admin-rate",
            "1000000",
            "--max-initial-requests",
            "20000",
            "--max-existing-requests",
            "60000",
            // P8 parks 10,000 connections: above the default cap (half the open-file limit
            // less a reserve), which the bench raises like the admission limits.
            "--max-connections",
            "60000",
            "--long-poll-timeout-ms",
            "300000",
            "--schema-check-ms",
            "60000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Shapesync {
            child: None,
            port,
            bin: shapesync_bin(),
            args,
            log: storage.with_extension("log"),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("SHAPESYNC_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start shapesync");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Poll `/v1/health` until it answers `active`; the instant it did.
    pub async fn wait_active(&mut self, http: &reqwest::Client, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(res) = http.get(format!("{}/v1/health", self.base)).send().await {
                if res.status() == 200 {
                    if let Ok(body) = res.text().await {
                        if body.contains("\"active\"") {
                            return Instant::now();
                        }
                    }
                }
            }
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                panic!("shapesync exited ({status}); see {}", self.log.display());
            }
            assert!(
                Instant::now() < deadline,
                "shapesync not active after {limit:?}; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Resident and peak resident bytes (`VmRSS`, `VmHWM`).
    pub fn rss(&self) -> (u64, u64) {
        (
            status_bytes(self.pid(), "VmRSS:"),
            status_bytes(self.pid(), "VmHWM:"),
        )
    }

    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// One sample of a metric family (the sum over its label sets).
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> f64 {
        let res = http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics");
        assert_eq!(res.status(), 200, "/metrics");
        let text = res.text().await.expect("metrics body");
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    /// Wait until the acknowledged LSN reaches `lsn` (the end of WAL taken after the last
    /// commit: shapesync acknowledges a commit's end once it is durable, and the server's
    /// position from the next keepalive once nothing is pending); the instant it did.
    pub async fn wait_acked(&self, http: &reqwest::Client, lsn: u64, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if self.metric(http, "shapesync_replication_acked_lsn").await as u64 >= lsn {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "acknowledged LSN did not reach {lsn:X} in {limit:?}"
            );
            // /metrics sums every shape's storage size: poll gently, not to load the server (an
            // error of at most 50 ms on a measurement of several seconds).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Shapesync {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:` …) in bytes; 0 if unknown.
pub fn status_bytes(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A shape's position after a request.
#[derive(Clone, Debug)]
pub struct Pos {
    pub handle: String,
    pub offset: String,
}

pub fn shape_url(base: &str, table: &str, where_: Option<&str>) -> String {
    let mut q = format!("{base}/v1/shape?table={table}");
    if let Some(w) = where_ {
        q.push_str("&where=");
        q.extend(form_urlencoded::byte_serialize(w.as_bytes()));
    }
    q
}

/// Follow a shape from `-1` until up to date: its position and the rows received (counted
/// in the bytes, without building JSON).
pub async fn sync(http: &reqwest::Client, url: &str) -> (Pos, u64) {
    let (mut offset, mut handle, mut got) = ("-1".to_string(), String::new(), 0u64);
    loop {
        let mut q = format!("{url}&offset={offset}");
        if !handle.is_empty() {
            q.push_str(&format!("&handle={handle}"));
        }
        let res = http.get(&q).send().await.expect("shape request");
        assert!(res.status().is_success(), "{q}: {}", res.status());
        let done = res.headers().contains_key("electric-up-to-date");
        handle = header(&res, "electric-handle");
        offset = header(&res, "electric-offset");
        let mut body = res.bytes_stream();
        // The needle may straddle two network chunks: keep the tail of the previous one.
        let needle = b"{\"key\":";
        let mut carry: Vec<u8> = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.expect("body");
            let head = &chunk[..chunk.len().min(needle.len() - 1)];
            carry.extend_from_slice(head);
            got += memchr_count(&carry, needle);
            got += memchr_count(&chunk, needle);
            carry.clear();
            carry.extend_from_slice(&chunk[chunk.len().saturating_sub(needle.len() - 1)..]);
        }
        if done {
            return (Pos { handle, offset }, got);
        }
    }
}

fn memchr_count(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

pub fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// One live long-poll from `pos`: the new position once it answers.
pub async fn live(http: &reqwest::Client, url: &str, pos: &Pos) -> Pos {
    let q = format!(
        "{url}&offset={}&handle={}&live=true",
        pos.offset, pos.handle
    );
    let res = http.get(&q).send().await.expect("live request");
    assert!(res.status().is_success(), "{q}: {}", res.status());
    let next = Pos {
        handle: header(&res, "electric-handle"),
        offset: header(&res, "electric-offset"),
    };
    let _ = res.bytes().await;
    next
}

/// Create `wheres.len()` shapes on `table`, `concurrency` at a time: their positions and the
/// latency of each first response.
pub async fn create_shapes(
    http: &reqwest::Client,
    base: &str,
    table: &str,
    wheres: Vec<String>,
    concurrency: usize,
) -> Vec<(Pos, Duration)> {
    futures::stream::iter(wheres)
        .map(|w| {
            let url = shape_url(base, table, Some(&w));
            let http = http.clone();
            async move {
                let t = Instant::now();
                let res = http
                    .get(format!("{url}&offset=-1"))
                    .send()
                    .await
                    .expect("create shape");
                assert!(res.status().is_success(), "{url}: {}", res.status());
                let pos = Pos {
                    handle: header(&res, "electric-handle"),
                    offset: header(&res, "electric-offset"),
                };
                let _ = res.bytes().await;
                (pos, t.elapsed())
            }
        })
        .buffered(concurrency)
        .collect()
        .await
}

pub async fn current_lsn(db: &tokio_postgres::Client) -> u64 {
    let row = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .expect("lsn");
    row.get::<_, i64>(0) as u64
}

/// A pgoutput slot for an anchor (it starts at the current end of WAL).
pub async fn create_slot(db: &tokio_postgres::Client, slot: &str) {
    db.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await
    .unwrap_or_else(|e| panic!("creating slot {slot}: {e}"));
}

/// Drop a replication slot once its walsender has gone (it exits shortly after its client).
pub async fn drop_slot(db: &tokio_postgres::Client, slot: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match db
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => return,
            Err(e)
                if Instant::now() < deadline
                    && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("dropping slot {slot}: {e}"),
        }
    }
}

pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The anchor of P1/P2/P12: `pg_recvlogical` streaming a slot's pgoutput to /dev/null from
/// the slot's start to `end`. Seconds it took.
pub async fn recvlogical(url: &str, slot: &str, publication: &str, end: u64) -> f64 {
    let (url, slot, publication) = (url.to_string(), slot.to_string(), publication.to_string());
    tokio::task::spawn_blocking(move || recvlogical_blocking(&url, &slot, &publication, end))
        .await
        .expect("pg_recvlogical task")
}

fn recvlogical_blocking(url: &str, slot: &str, publication: &str, end: u64) -> f64 {
    let t = Instant::now();
    // The same Postgres installation as the embedded cluster (PG_BIN or the newest under
    // /usr/lib/postgresql), whatever is on PATH.
    let bin = shapesync::postgres::embedded::find_bin_dir()
        .map(|d| d.join("pg_recvlogical"))
        .unwrap_or_else(|_| PathBuf::from("pg_recvlogical"));
    let out = Command::new(bin)
        .args([
            "-d",
            url,
            "--slot",
            slot,
            "--start",
            "--endpos",
            &lsn_text(end),
            "-o",
            "proto_version=1",
            "-o",
            &format!("publication_names={publication}"),
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .output()
        .expect("pg_recvlogical (PostgreSQL client tools)");
    assert!(
        out.status.success(),
        "pg_recvlogical: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// `wrk` for `secs` seconds against `url`: requests per second.
pub fn wrk(url: &str, secs: u64, connections: u32) -> f64 {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            url,
        ])
        .output()
        .expect("wrk (apt install wrk; scripts/bench.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx"),
        "wrk saw errors against {url}:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output without Requests/sec:\n{text}"))
}

/// nginx serving `root` as static files on a free port, stopped on drop.
pub struct Nginx {
    prefix: PathBuf,
    pub port: u16,
}

impl Nginx {
    pub fn start(prefix: &Path, root: &Path) -> Nginx {
        let port = free_port();
        std::fs::create_dir_all(prefix.join("logs")).expect("nginx dir");
        let conf = format!(
            "worker_processes auto;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nuser root;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;\n\
             types {{ application/json json; }}\n\
             client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp; fastcgi_temp_path {p}/tmp;\n\
             uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;\n\
             server {{ listen 127.0.0.1:{port}; root {r}; }} }}\n",
            p = prefix.display(),
            r = root.display()
        );
        std::fs::write(prefix.join("nginx.conf"), conf).expect("nginx.conf");
        let out = Command::new("nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .output()
            .expect("nginx (apt install nginx; scripts/bench.sh installs it)");
        assert!(
            out.status.success(),
            "nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Nginx {
            prefix: prefix.to_path_buf(),
            port,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(self.prefix.join("nginx.conf"))
            .args(["-s", "stop"])
            .output();
    }
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

//! nginx as a caching CDN (our deploy/nginx.conf) in front of the real server: a repeated chunk
//! request is a cache hit, and N concurrent live clients on one shape cost one origin request per
//! live cycle (request collapsing through the `cursor` URL and `proxy_cache_lock`).

use std::path::Path;
use std::time::Duration;

use crate::support::{connect, eventually, fresh_db, wait_parked, TestServer};

/// Shape requests the origin has answered with `status`, from its own metrics.
async fn origin_requests(server: &TestServer, status: u16) -> u64 {
    let m = server.client().raw("/metrics").await.body;
    let needle = format!("shapesync_http_requests_total{{route=\"shape\",status=\"{status}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// nginx with deploy/nginx.conf, pointed at `origin`, listening on a free port; stopped (with
/// its workers) when dropped.
struct Nginx {
    child: std::process::Child,
    dir: tempfile::TempDir,
    base: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let p = self.dir.path().display().to_string();
        // Fast shutdown through the master, which also stops its workers.
        let _ = std::process::Command::new("nginx")
            .args(["-p", &p, "-c", &format!("{p}/nginx.conf"), "-s", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

async fn start_nginx(origin: &str) -> Nginx {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Installs nginx if needed (and checks the config).
    let ok = std::process::Command::new("bash")
        .arg("scripts/check-deploy.sh")
        .current_dir(repo)
        .status()
        .expect("check-deploy")
        .success();
    assert!(ok, "nginx config check failed");
    let dir = tempfile::tempdir().unwrap();
    let port = shapesync::postgres::embedded::free_port().unwrap();
    let p = dir.path().display().to_string();
    let conf = std::fs::read_to_string(repo.join("deploy/nginx.conf"))
        .unwrap()
        .replace("server shapesync:3000;", &format!("server {origin};"))
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
        .replace("/var/cache/nginx/shapesync", &format!("{p}/cache"))
        .replace(
            "http {",
            &format!(
                "http {{\n access_log {p}/access.log;\n client_body_temp_path {p}/body;\n proxy_temp_path {p}/proxy;\n fastcgi_temp_path {p}/fcgi;\n uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;"
            ),
        );
    let conf =
        format!("pid {p}/nginx.pid;\nerror_log {p}/error.log;\ndaemon off;\nuser root;\n{conf}");
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = std::process::Command::new("nginx")
        .args(["-p", &p, "-c", &format!("{p}/nginx.conf")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("nginx to listen", Duration::from_secs(10), || async {
        http.get(format!("{base}/v1/health")).send().await.is_ok()
    })
    .await;
    Nginx { child, dir, base }
}

/// GET `/v1/shape?<q>` through nginx: status, headers, body.
async fn get_via(
    http: reqwest::Client,
    base: String,
    q: String,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = http
        .get(format!("{base}/v1/shape?{q}"))
        .send()
        .await
        .unwrap();
    let h = r.headers().clone();
    (r.status().as_u16(), h, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_cache_hits_and_live_requests_collapse() {
    let url = fresh_db("cdn").await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE c (id int PRIMARY KEY, v text); INSERT INTO c VALUES (1, 'a')")
        .await
        .unwrap();
    let server = TestServer::start_with(&url, |c| c.long_poll = Duration::from_secs(10)).await;
    let nginx = start_nginx(server.base.trim_start_matches("http://")).await;
    let http = reqwest::Client::new();
    let get = |q: String| get_via(http.clone(), nginx.base.clone(), q);

    // A repeated chunk request is served from the cache.
    let (s1, h1, b1) = get("table=c&offset=-1".into()).await;
    let before = origin_requests(&server, 200).await;
    let (s2, h2, b2) = get("table=c&offset=-1".into()).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(h2["x-cache-status"], "HIT");
    assert_eq!(b1, b2);
    assert_eq!(
        origin_requests(&server, 200).await,
        before,
        "no origin request for a hit"
    );
    let handle = h1["electric-handle"].to_str().unwrap().to_string();
    let (_, h, _) = get(format!("table=c&offset=0_0&handle={handle}")).await;
    let offset = h["electric-offset"].to_str().unwrap().to_string();

    // N clients long-poll the same live URL: the origin sees one request per cycle.
    let n = 12;
    let live = format!("table=c&offset={offset}&handle={handle}&live=true&cursor=1");
    let before = origin_requests(&server, 200).await;
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(tokio::spawn(get(live.clone())));
    }
    wait_parked(&server, 1).await;
    db.execute("INSERT INTO c VALUES (2, 'b')", &[])
        .await
        .unwrap();
    for c in clients {
        let (status, _, body) = c.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            body.contains("\"id\":\"2\""),
            "every client sees the change: {body}"
        );
    }
    assert_eq!(
        origin_requests(&server, 200).await - before,
        1,
        "{n} live clients, one origin request"
    );
}

/// A cached response is served stale only within the origin's `stale-while-revalidate`:
/// past `max-age + stale-while-revalidate` nginx asks the origin again (EXPIRED), never STALE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_responses_never_outlive_what_the_origin_allowed() {
    let url = fresh_db("cdn_stale").await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE c (id int PRIMARY KEY, v text); INSERT INTO c VALUES (1, 'a')")
        .await
        .unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.cache_ages = shapesync::serve::response::CacheAges {
            max_age: 1,
            stale_age: 1,
        }
    })
    .await;
    let nginx = start_nginx(server.base.trim_start_matches("http://")).await;
    let http = reqwest::Client::new();
    let get = |q: String| get_via(http.clone(), nginx.base.clone(), q);
    let (_, h, _) = get("table=c&offset=-1".into()).await;
    let handle = h["electric-handle"].to_str().unwrap().to_string();
    let catch_up = format!("table=c&offset=0_0&handle={handle}");
    let (status, h, _) = get(catch_up.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-cache-status"], "MISS");
    let cc = h["cache-control"].to_str().unwrap().to_string();
    assert!(
        cc.contains("max-age=1") && cc.contains("stale-while-revalidate=1"),
        "{cc}"
    );
    // Past max-age + stale-while-revalidate (2 s), with a margin.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    for _ in 0..2 {
        let (status, h, _) = get(catch_up.clone()).await;
        assert_eq!(status, 200);
        let cache = h["x-cache-status"].to_str().unwrap().to_string();
        assert_ne!(cache, "STALE", "served past what the origin allowed");
        assert!(
            ["EXPIRED", "REVALIDATED", "HIT"].contains(&cache.as_str()),
            "{cache}"
        );
    }
}

//! The HTTP/1.1 server and parked long-polls: many parked requests woken by one commit, timeouts
//! answered after replay with the request's own id, shutdown with requests parked, and the wire
//! rules a server must keep (pipelining, chunked bodies, 100-continue, HTTP/1.0, HEAD, limits).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{connect, fresh_db, wait_parked, Follower, TestServer};

async fn setup(tag: &str, long_poll: Duration) -> (tokio_postgres::Client, TestServer) {
    let url = fresh_db(tag).await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE p (id int PRIMARY KEY, v text); INSERT INTO p VALUES (1, 'a')")
        .await
        .unwrap();
    let server = TestServer::start_with(&url, |c| c.long_poll = long_poll).await;
    (db, server)
}

async fn live_query(server: &TestServer) -> String {
    let mut f = Follower::new(server.client(), "table=p");
    f.sync().await;
    format!(
        "table=p&offset={}&handle={}&live=true",
        f.offset,
        f.handle.unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_commit_wakes_every_parked_request() {
    let (db, server) = setup("park_many", Duration::from_secs(30)).await;
    let q = live_query(&server).await;
    const N: usize = 300;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(N)
        .build()
        .unwrap();
    let mut waiting = Vec::new();
    for i in 0..N {
        let url = format!("{}/v1/shape?{q}&cursor={i}", server.base);
        let http = http.clone();
        waiting.push(tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let offset = r.headers()["electric-offset"].to_str().unwrap().to_string();
            (status, offset, r.text().await.unwrap())
        }));
    }
    wait_parked(&server, N).await;
    db.batch_execute("INSERT INTO p VALUES (2, 'b')")
        .await
        .unwrap();
    let mut offsets = std::collections::HashSet::new();
    for w in waiting {
        let (status, offset, body) = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("woken in time")
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"operation\":\"insert\""), "{body}");
        assert!(body.contains("\"id\":\"2\""), "{body}");
        offsets.insert(offset);
    }
    assert_eq!(offsets.len(), 1, "every client sees the same new offset");
    wait_parked(&server, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_requests_time_out_up_to_date_with_their_request_id() {
    let (_db, server) = setup("park_timeout", Duration::from_millis(1500)).await;
    let q = live_query(&server).await;
    let started = Instant::now();
    let r = server
        .client()
        .get_with(&q, &[("x-request-id", "my-request-42")])
        .await;
    let waited = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.up_to_date(), "{}", r.body);
    assert_eq!(r.header("x-request-id"), Some("my-request-42"));
    assert!(r.header("electric-cursor").is_some());
    assert!(
        waited >= Duration::from_millis(1400),
        "answered only at the long-poll timeout ({waited:?})"
    );
    // Without a client id, one is made up (and kept across the park and replay).
    let r = server.client().get(&q).await;
    let id = r.header("x-request-id").unwrap();
    assert_eq!(id.len(), 32, "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_parked_requests() {
    let (_db, mut server) = setup("park_stop", Duration::from_secs(60)).await;
    let q = live_query(&server).await;
    let parked: Vec<_> = (0..5)
        .map(|i| {
            let c = server.client();
            let q = format!("{q}&cursor={i}");
            tokio::spawn(async move { c.get(&q).await })
        })
        .collect();
    wait_parked(&server, 5).await;
    let started = Instant::now();
    server.stop().await;
    for p in parked {
        let r = p.await.unwrap();
        assert!(
            r.status == 200 || r.status == 409,
            "parked requests answer at shutdown: {} {}",
            r.status,
            r.body
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Send raw bytes, read until the server closes or `expect` responses have arrived.
async fn raw_exchange(addr: &str, bytes: &[u8], responses: usize) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if text.matches("HTTP/1.1 ").count() >= responses && complete(&text, responses) {
            return text;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).to_string(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer in time; got {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

/// Have `n` responses with content-length bodies fully arrived?
fn complete(text: &str, n: usize) -> bool {
    let mut rest = text;
    for _ in 0..n {
        let Some(head_end) = rest.find("\r\n\r\n") else {
            return false;
        };
        let head = rest[..head_end].to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        if rest.len() < body_start + len {
            return false;
        }
        rest = &rest[body_start + len..];
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_follows_http_1_1() {
    let (_db, server) = setup("wire", Duration::from_secs(5)).await;
    let addr = server.base.trim_start_matches("http://").to_string();

    // Pipelining: two requests in one write, two answers in order.
    let text = raw_exchange(
        &addr,
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Request-Id: first\r\n\r\nGET /v1/health HTTP/1.1\r\nHost: x\r\nX-Request-Id: second\r\n\r\n",
        2,
    )
    .await;
    let first = text.find("x-request-id: first").expect(&text);
    let second = text.find("x-request-id: second").expect(&text);
    assert!(first < second, "{text}");
    assert!(text.to_ascii_lowercase().contains("\r\ndate: "), "{text}");

    // A chunked request body with 100-continue (a subset snapshot by POST).
    let handle_text = raw_exchange(
        &addr,
        b"GET /v1/shape?table=p&offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n",
        1,
    )
    .await;
    let handle = handle_text
        .lines()
        .find_map(|l| l.strip_prefix("electric-handle: "))
        .expect(&handle_text)
        .trim()
        .to_string();
    let body = br#"{"where":"id = 1"}"#;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!(
        "POST /v1/shape?table=p&offset=0_0&handle={handle} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).as_bytes())
    .await
    .unwrap();
    let mut cont = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut cont))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    let mut req = format!("{:x};ext=1\r\n", 7).into_bytes();
    req.extend_from_slice(&body[..7]);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(format!("{:x}\r\n", body.len() - 7).as_bytes());
    req.extend_from_slice(&body[7..]);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"v\":\"a\""), "the subset's row: {text}");

    // HTTP/1.0 without keep-alive: answered, then closed.
    let text = raw_exchange(&addr, b"GET /v1/health HTTP/1.0\r\n\r\n", 1).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );

    // HEAD: the GET's headers (with its length), no body.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"HEAD /v1/shape?table=p&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("electric-handle: "), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text}");

    // Garbage, an oversized head, and request smuggling are refused, and the connection closed.
    let text = raw_exchange(&addr, b"NOT HTTP AT ALL\r\n\r\n", 1).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let mut big = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let text = raw_exchange(&addr, &big, 1).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    let text = raw_exchange(
        &addr,
        b"POST /v1/shape?table=p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        1,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
}

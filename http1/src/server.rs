//! Accepting connections: [`serve`] on a TCP listener until shutdown, or an [`Http1`] handle
//! that connections of any [`Transport`] are handed to (the tests' in-memory streams). Either
//! way a connection over the [`Limits`] is answered `503` and closed.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::conn::{connection, resume, stopped, Busy, Ctx, ParkedConn, Transport};
use crate::limits::{refuse, ConnCounts, Limits};
use crate::parking::{Parking, Woken};
use crate::shortcut::Shortcut;

/// A server for connections of type `S`.
pub struct Http1<S> {
    ctx: Arc<Ctx<S>>,
}

impl<S: Transport> Http1<S> {
    /// Requests go to `router`; once `shutdown` turns true, connections finish their request in
    /// progress and close, and parked requests are replayed. Connections are capped by the
    /// default [`Limits`].
    pub fn new(router: Router, shutdown: watch::Receiver<bool>) -> Self {
        Self::with_limits(router, shutdown, Limits::default())
    }

    /// As [`Http1::new`], with connections capped by `limits`.
    pub fn with_limits(router: Router, shutdown: watch::Receiver<bool>, limits: Limits) -> Self {
        Self::with_shortcut(router, shutdown, limits, None)
    }

    /// As [`Http1::with_limits`], with the application's ready answers asked before the router.
    pub fn with_shortcut(
        router: Router,
        shutdown: watch::Receiver<bool>,
        limits: Limits,
        shortcut: Option<Arc<dyn Shortcut>>,
    ) -> Self {
        let ctx = Arc::new_cyclic(|weak: &Weak<Ctx<S>>| {
            let weak = Weak::clone(weak);
            Ctx {
                router,
                parking: Parking::new(move |woken: Woken<ParkedConn<S>>| {
                    if let Some(ctx) = weak.upgrade() {
                        resume(ctx, woken);
                    }
                }),
                shutdown,
                busy: Busy::default(),
                conns: ConnCounts::new(limits),
                shortcut,
            }
        });
        Http1 { ctx }
    }

    /// Serve one connection (on a task of its own); over a cap of the [`Limits`] it is answered
    /// `503 Service Unavailable` and closed instead.
    pub fn connection(&self, stream: S, peer: SocketAddr) {
        match self.ctx.conns.acquire(peer.ip()) {
            Some(slot) => {
                tokio::spawn(connection(Arc::clone(&self.ctx), stream, peer, slot));
            }
            // A flood of refusals must not hold descriptors itself: past a bound, a connection
            // over the caps is closed without an answer.
            None => match self.ctx.conns.refusing() {
                Some(refusing) => {
                    tracing::debug!(%peer, "connection refused: over the connection limits");
                    tokio::spawn(async move {
                        refuse(stream).await;
                        drop(refusing);
                    });
                }
                None => drop(stream),
            },
        }
    }

    /// Connections open now (parked ones included).
    pub fn connections(&self) -> usize {
        self.ctx.conns.total()
    }

    /// Connections open now from `ip`.
    pub fn connections_from(&self, ip: std::net::IpAddr) -> usize {
        self.ctx.conns.count_from(ip)
    }

    /// Requests parked now.
    pub fn parked(&self) -> usize {
        self.ctx.parking.len()
    }

    /// Stop parking (parked requests replay now), then wait up to `limit` for every request in
    /// progress to answer.
    pub async fn drain(&self, limit: Duration) {
        self.ctx.parking.close();
        let _ = tokio::time::timeout(limit, self.ctx.busy.wait_idle()).await;
    }
}

/// Serve `router` on `listener` until `shutdown` turns true; then stop accepting, replay parked
/// requests (they now wait in their own task and see the server stop), close idle connections,
/// and return once every request in progress has answered (at most 30 s later). Connections
/// over `limits` are answered `503` and closed; `shortcut`'s ready answers go before the router.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    shortcut: Option<Arc<dyn Shortcut>>,
) {
    let server: Http1<TcpStream> = Http1::with_shortcut(router, shutdown.clone(), limits, shortcut);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    server.connection(stream, peer);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    server.drain(Duration::from_secs(30)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::Instant;

    use axum::extract::Extension;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use crate::parking::{Change, ParkTicket, Parkable, Parked, Replayed, Waitable};

    /// Waits on a watch channel's value moving on from `observed`.
    struct Ticker {
        rx: watch::Receiver<u64>,
        observed: u64,
    }

    impl Waitable for Ticker {
        fn key(&self) -> u64 {
            7
        }
        fn next_change(&self) -> Option<Change> {
            let mut rx = self.rx.clone();
            if *rx.borrow_and_update() != self.observed {
                return None;
            }
            Some(Box::pin(async move {
                let _ = rx.changed().await;
            }))
        }
    }

    /// `/wait`: parks (when it may) until the ticker moves on or 300 ms pass; replayed, it
    /// answers with the ticker's value and what its ticket carried.
    fn router(ticker: watch::Receiver<u64>) -> Router {
        let reply_ticker = ticker.clone();
        let wait = move |parkable: Option<Extension<Parkable>>,
                         replayed: Option<Extension<Replayed>>| {
            let ticker = ticker.clone();
            async move {
                let now = *ticker.borrow();
                if let Some(Extension(r)) = replayed {
                    let carried = r.take_carry::<&'static str>().unwrap_or("nothing");
                    return format!("woken at {now}, carried {carried}").into_response();
                }
                if parkable.is_none() {
                    return "not parkable".into_response();
                }
                let mut res = axum::response::Response::new(axum::body::Body::empty());
                res.extensions_mut().insert(Parked::new(ParkTicket {
                    wait: Box::new(Ticker {
                        rx: ticker.clone(),
                        observed: now,
                    }),
                    deadline: Instant::now() + Duration::from_millis(300),
                    carry: Some(Box::new("the slot")),
                    reply: None,
                }));
                res
            }
        };
        let wait_reply = move || {
            let ticker = reply_ticker.clone();
            async move {
                let now = *ticker.borrow();
                let mut res = axum::response::Response::new(axum::body::Body::empty());
                res.extensions_mut().insert(Parked::new(ParkTicket {
                    wait: Box::new(Ticker {
                        rx: ticker.clone(),
                        observed: now,
                    }),
                    deadline: Instant::now() + Duration::from_secs(30),
                    carry: None,
                    reply: Some(Box::new(|| {
                        Some(crate::shortcut::Ready {
                            head: bytes::Bytes::from_static(
                                b"HTTP/1.1 200 OK\r\nx-kind: reply\r\n",
                            ),
                            body: bytes::Bytes::from(vec![b'r'; 100_000]),
                        })
                    })),
                }));
                res
            }
        };
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/wait-reply", get(wait_reply))
            .route("/echo", post(|body: bytes::Bytes| async move { body }))
            .route("/wait", get(wait))
    }

    use axum::response::IntoResponse;

    struct Harness {
        server: Http1<DuplexStream>,
        ticker: watch::Sender<u64>,
        _stop: watch::Sender<bool>,
    }

    fn harness() -> Harness {
        harness_with(Limits::default())
    }

    fn harness_with(limits: Limits) -> Harness {
        let (ticker, rx) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        Harness {
            server: Http1::with_limits(router(rx), stop_rx, limits),
            ticker,
            _stop: stop,
        }
    }

    impl Harness {
        fn connect(&self) -> DuplexStream {
            self.connect_from([127, 0, 0, 1].into())
        }

        fn connect_from(&self, ip: IpAddr) -> DuplexStream {
            let (client, server) = tokio::io::duplex(1 << 16);
            self.server.connection(server, SocketAddr::new(ip, 4000));
            client
        }

        /// Wait (up to 5 s) until `n` connections are open.
        async fn until_open(&self, n: usize) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.server.connections() != n {
                assert!(
                    Instant::now() < deadline,
                    "{} connections open, not {n}",
                    self.server.connections()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        async fn until_parked(&self, n: usize) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.server.parked() != n {
                assert!(Instant::now() < deadline, "never {n} parked");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// A refusal for being over a connection cap: 503, told when to retry, closed.
    fn assert_refused_over_cap(out: &str) {
        assert!(
            out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{out}"
        );
        for header in [
            "retry-after: 1\r\n",
            "connection: close\r\n",
            "content-type: application/json\r\n",
        ] {
            assert!(out.contains(header), "{header:?} in {out}");
        }
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let json: serde_json::Value = serde_json::from_str(body).expect(body);
        assert_eq!(json["code"], "connection_limit_exceeded", "{out}");
        assert_eq!(json["message"], "Too many connections", "{out}");
    }

    /// Everything the server writes until it closes the stream (or `limit` passes).
    async fn read_all(c: &mut DuplexStream, limit: Duration) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(limit, c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn exchange(h: &Harness, request: &[u8]) -> String {
        let mut c = h.connect();
        // The server may answer and close before it has read everything (a head too large).
        let _ = c.write_all(request).await;
        read_all(&mut c, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let h = harness();
        let out = exchange(
            &h,
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /hello HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        let statuses: Vec<&str> = out.matches("HTTP/1.1 200 OK").collect();
        assert_eq!(statuses.len(), 3, "{out}");
        let (first, rest) = out.split_once("abc").expect("echo in the middle");
        assert!(first.contains("hello") && rest.contains("hello"), "{out}");
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded() {
        let h = harness();
        let out = exchange(
            &h,
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("abcde"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn hostile_framing_is_refused_and_closed_never_a_panic() {
        let h = harness();
        let cases: [(&[u8], &str); 6] = [
            (
                b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\nbbbb\r\n0\r\n\r\n",
                "413",
            ),
            (
                b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "400",
            ),
            (
                b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
                "400",
            ),
            (
                b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                "400",
            ),
            (b"GET /hello HTTP/1.1\r\nBad Header\r\n\r\n", "400"),
            (b"POST /echo HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", "413"),
        ];
        for (request, status) in cases {
            let out = exchange(&h, request).await;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status}")) && out.contains("connection: close"),
                "{:?} -> {out}",
                String::from_utf8_lossy(request)
            );
        }
        let mut huge = b"GET /hello HTTP/1.1\r\n".to_vec();
        while huge.len() < 70_000 {
            huge.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let out = exchange(&h, &huge).await;
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    }

    #[tokio::test]
    async fn a_parked_request_is_replayed_when_what_it_waits_on_changes() {
        let h = harness();
        let mut c = h.connect();
        c.write_all(b"GET /wait HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.server.parked() == 0 {
            assert!(Instant::now() < deadline, "never parked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        h.ticker.send_replace(1);
        let out = read_all(&mut c, Duration::from_secs(5)).await;
        assert!(out.ends_with("woken at 1, carried the slot"), "{out}");
        assert_eq!(h.server.parked(), 0);
    }

    /// A woken request with its own reply is answered at once, even when the socket takes
    /// only part of it (the rest follows), and its connection goes on.
    #[tokio::test]
    async fn a_woken_request_answers_with_its_reply_and_the_connection_goes_on() {
        let h = harness();
        let (mut c, conn) = tokio::io::duplex(1024);
        h.server
            .connection(conn, SocketAddr::new([127, 0, 0, 1].into(), 4000));
        c.write_all(b"GET /wait-reply HTTP/1.1\r\nx-request-id: r1\r\n\r\n")
            .await
            .unwrap();
        h.until_parked(1).await;
        h.ticker.send_replace(1);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let complete = |got: &[u8]| {
            got.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|at| got.len() >= at + 4 + 100_000)
        };
        while !complete(&got) {
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
                .await
                .expect("the reply arrives")
                .unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nx-kind: reply\r\nx-request-id: r1\r\ncontent-length: 100000\r\n"),
            "{}",
            &text[..200]
        );
        assert!(text.ends_with(&"r".repeat(1000)));
        assert_eq!(h.server.parked(), 0);
        c.write_all(b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let out = read_all(&mut c, Duration::from_secs(5)).await;
        assert!(out.ends_with("hello"), "{out}");
    }

    #[tokio::test]
    async fn a_parked_request_is_replayed_at_its_deadline_and_on_drain() {
        let h = harness();
        let started = Instant::now();
        let out = exchange(&h, b"GET /wait HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(out.ends_with("woken at 0, carried the slot"), "{out}");
        assert!(started.elapsed() >= Duration::from_millis(250));

        let mut c = h.connect();
        c.write_all(b"GET /wait HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        while h.server.parked() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        h.server.drain(Duration::from_secs(1)).await;
        let out = read_all(&mut c, Duration::from_secs(5)).await;
        assert!(out.contains("woken at 0"), "{out}");
    }

    /// What the fuzzer (tests/fuzz.rs) found the server passing on (hyper refuses each), each
    /// followed by a request a lax reading would run: now refused with 400 (never 501) and
    /// closed, and nothing after it runs.
    #[tokio::test]
    async fn framings_the_fuzzer_found_are_refused_and_nothing_after_them_runs() {
        let h = harness();
        let smuggled = "GET /hello HTTP/1.1\r\n\r\n";
        let chunked = "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases = [
            // A signed length (usize's parser takes a `+`).
            format!("POST /echo HTTP/1.1\r\nContent-Length: +23\r\n\r\n{smuggled}"),
            // A list of lengths.
            format!("POST /echo HTTP/1.1\r\nContent-Length: 23, 23\r\n\r\n{smuggled}"),
            // Repeated equal lengths.
            format!("POST /echo HTTP/1.1\r\nContent-Length: 23\r\nContent-Length: 23\r\n\r\n{smuggled}"),
            // Chunked over HTTP/1.0 (RFC 9112 §6.1: the framing is faulty).
            format!("POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n17\r\n{smuggled}\r\n0\r\n\r\n"),
            // Only the first Transfer-Encoding line was looked at: this is `chunked, gzip`.
            format!("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n17\r\n{smuggled}\r\n0\r\n\r\n"),
            // A coding not implemented: was 501, which is no framing answer.
            format!("POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n{smuggled}"),
            format!("POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n17\r\n{smuggled}\r\n0\r\n\r\n"),
            // Whitespace around a chunk size was trimmed (Unicode whitespace too).
            format!("{chunked} 17\r\n{smuggled}\r\n0\r\n\r\n"),
            format!("{chunked}17\u{3000}\r\n{smuggled}\r\n0\r\n\r\n"),
            // Chunk extensions were not looked at: a bare CR or LF, or no name.
            format!("{chunked}17;a\rb\r\n{smuggled}\r\n0\r\n\r\n"),
            format!("{chunked}17;a\nb\r\n{smuggled}\r\n0\r\n\r\n"),
            format!("{chunked}17;\r\n{smuggled}\r\n0\r\n\r\n"),
            // Trailers were not looked at.
            format!("{chunked}0\r\nX : y\r\n\r\n{smuggled}"),
            format!("{chunked}0\r\n X: y\r\n\r\n{smuggled}"),
            format!("{chunked}0\r\nX: a\rb\r\n\r\n{smuggled}"),
            format!("{chunked}0\r\n{smuggled}"),
            // A bare LF in the head.
            format!("POST /echo HTTP/1.1\nContent-Length: 23\r\n\r\n{smuggled}"),
        ];
        for request in cases {
            let out = exchange(&h, request.as_bytes()).await;
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n")
                    && out.contains("connection: close")
                    && out.matches("HTTP/1.1 ").count() == 1
                    && !out.contains("hello"),
                "{request:?} -> {out}"
            );
        }
        assert_eq!(h.server.connections(), 0);
    }

    #[tokio::test]
    async fn chunk_extensions_and_trailers_are_bounded() {
        let h = harness();
        let mut request = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let ext = format!(";x={}", "e".repeat(1000));
        for _ in 0..17 {
            request.extend_from_slice(format!("1{ext}\r\na\r\n").as_bytes());
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let out = exchange(&h, &request).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");

        let mut request =
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        for i in 0..101 {
            request.extend_from_slice(format!("X-T{i}: v\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        let out = exchange(&h, &request).await;
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");

        // Up to the bounds, both are read (and ignored).
        let mut request =
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                .to_vec();
        for _ in 0..15 {
            request.extend_from_slice(format!("1{ext}\r\na\r\n").as_bytes());
        }
        request.extend_from_slice(b"0\r\n");
        for i in 0..100 {
            request.extend_from_slice(format!("X-T{i}: v\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        let out = exchange(&h, &request).await;
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with(&"a".repeat(15)),
            "{out}"
        );
    }

    /// RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored.
    #[tokio::test]
    async fn no_100_continue_for_http_1_0() {
        let h = harness();
        let mut c = h.connect();
        c.write_all(b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(200), c.read(&mut first)).await;
        assert!(early.is_err(), "nothing is written before the body");
        c.write_all(b"abc").await.unwrap();
        let out = read_all(&mut c, Duration::from_secs(5)).await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("abc"),
            "{out}"
        );

        let mut c = h.connect();
        c.write_all(b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut cont = [0u8; 25];
        c.read_exact(&mut cont).await.unwrap();
        assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(b"abc").await.unwrap();
        let out = read_all(&mut c, Duration::from_secs(5)).await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("abc"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_connection_over_the_total_cap_is_refused_until_one_closes() {
        let stats: Arc<crate::limits::ConnStats> = Arc::default();
        let h = harness_with(Limits {
            max_connections: 2,
            max_connections_per_ip: 10,
            per_ip_exempt: None,
            stats: Arc::clone(&stats),
        });
        let first = h.connect_from([10, 0, 0, 1].into());
        let _second = h.connect_from([10, 0, 0, 2].into());
        assert_eq!(h.server.connections(), 2);
        assert_eq!((stats.open(), stats.refused()), (2, 0));

        // Refused without its request being read (and the refusal does not count).
        let mut third = h.connect_from([10, 0, 0, 3].into());
        let out = read_all(&mut third, Duration::from_secs(5)).await;
        assert_refused_over_cap(&out);
        assert_eq!(h.server.connections(), 2);
        // Also when the client sends a request at once.
        let out = exchange(&h, b"GET /hello HTTP/1.1\r\n\r\n").await;
        assert_refused_over_cap(&out);

        assert_eq!(stats.refused(), 2);
        drop(first);
        h.until_open(1).await;
        assert_eq!(stats.open(), 1);
        let out = exchange(&h, b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("hello"),
            "{out}"
        );
        h.until_open(1).await;
    }

    #[tokio::test]
    async fn the_per_ip_cap_counts_each_ip_on_its_own() {
        let h = harness_with(Limits {
            max_connections: 100,
            max_connections_per_ip: 2,
            per_ip_exempt: None,
            stats: Arc::default(),
        });
        let a: IpAddr = [10, 0, 0, 1].into();
        let _a1 = h.connect_from(a);
        let _a2 = h.connect_from(a);
        let mut a3 = h.connect_from(a);
        assert_refused_over_cap(&read_all(&mut a3, Duration::from_secs(5)).await);
        // The same address as IPv4-mapped IPv6 is the same peer.
        let mut mapped = h.connect_from("::ffff:10.0.0.1".parse().unwrap());
        assert_refused_over_cap(&read_all(&mut mapped, Duration::from_secs(5)).await);
        assert_eq!(h.server.connections_from(a), 2);

        // Another address is served.
        let mut b = h.connect_from([10, 0, 0, 2].into());
        b.write_all(b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let out = read_all(&mut b, Duration::from_secs(5)).await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        h.until_open(2).await;
        assert_eq!(h.server.connections_from([10, 0, 0, 2].into()), 0);
    }

    #[tokio::test]
    async fn exempt_peers_pass_the_per_ip_cap_but_count_in_the_total() {
        let proxy: IpAddr = [10, 0, 0, 9].into();
        let h = harness_with(Limits {
            max_connections: 4,
            max_connections_per_ip: 1,
            per_ip_exempt: Some(Arc::new(move |ip| ip == proxy)),
            stats: Arc::default(),
        });
        let _p = [
            h.connect_from(proxy),
            h.connect_from(proxy),
            h.connect_from(proxy),
        ];
        h.until_open(3).await;
        assert_eq!(h.server.connections_from(proxy), 3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let _a1 = h.connect_from(a);
        h.until_open(4).await;
        // The total cap still holds for the exempt peer.
        let mut p4 = h.connect_from(proxy);
        assert_refused_over_cap(&read_all(&mut p4, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_parked_connection_counts_until_its_replay_ends() {
        let h = harness_with(Limits {
            max_connections: 1,
            max_connections_per_ip: 1,
            per_ip_exempt: None,
            stats: Arc::default(),
        });
        let mut c = h.connect();
        c.write_all(b"GET /wait HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        h.until_parked(1).await;
        // The parked connection holds its socket, so it holds its place.
        assert_eq!(h.server.connections(), 1);
        let mut other = h.connect_from([10, 9, 9, 9].into());
        assert_refused_over_cap(&read_all(&mut other, Duration::from_secs(5)).await);

        h.ticker.send_replace(1);
        let out = read_all(&mut c, Duration::from_secs(5)).await;
        assert!(out.ends_with("woken at 1, carried the slot"), "{out}");
        h.until_open(0).await;

        // A parked connection whose client went away is released once its replay fails.
        let mut gone = h.connect();
        gone.write_all(b"GET /wait HTTP/1.1\r\n\r\n").await.unwrap();
        h.until_parked(1).await;
        drop(gone);
        assert_eq!(h.server.connections(), 1);
        // Replayed at its deadline (300 ms): the answer cannot be written, the connection ends.
        h.until_open(0).await;
        assert_eq!(h.server.parked(), 0);
        let out = exchange(&h, b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    }

    /// Over TCP a new connection waits for its first byte (holding no buffer) for the
    /// first-byte timeout, a kept-alive one for the idle timeout; then it is closed without an
    /// answer, and no longer counted.
    #[tokio::test(start_paused = true)]
    async fn an_idle_tcp_connection_is_closed_after_the_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_ticker, rx) = watch::channel(0u64);
        let (_stop, stop_rx) = watch::channel(false);
        let server: Arc<Http1<TcpStream>> = Arc::new(Http1::new(router(rx), stop_rx));
        let acceptor = Arc::clone(&server);
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                acceptor.connection(stream, peer);
            }
        });

        let started = tokio::time::Instant::now();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(
            crate::conn::FIRST_BYTE_TIMEOUT + Duration::from_secs(5),
            idle.read_to_end(&mut out),
        )
        .await
        .expect("closed by the first-byte timeout")
        .unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        let waited = started.elapsed();
        assert!(
            waited >= crate::conn::FIRST_BYTE_TIMEOUT && waited < crate::conn::IDLE_TIMEOUT,
            "{waited:?}"
        );
        while server.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        // After a request, a kept-alive connection waits for the next for the idle timeout.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /hello HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut piece = [0u8; 1024];
        while !got.ends_with(b"hello") {
            let n = kept.read(&mut piece).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&piece[..n]);
        }
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        tokio::time::timeout(
            crate::conn::IDLE_TIMEOUT + Duration::from_secs(5),
            kept.read_to_end(&mut out),
        )
        .await
        .expect("closed by the idle timeout")
        .unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        assert!(
            started.elapsed() >= crate::conn::IDLE_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        while server.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        // A request's head that stops arriving: 408 at the request timeout.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /hello HTTP/1.1\r\nHo").await.unwrap();
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        tokio::time::timeout(
            crate::conn::REQUEST_TIMEOUT + Duration::from_secs(5),
            slow.read_to_end(&mut out),
        )
        .await
        .expect("closed by the request timeout")
        .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(started.elapsed() >= crate::conn::REQUEST_TIMEOUT);
        while server.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Every open connection's task holds its state machine: keep it small (futures awaited
    /// inside it are boxed).
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let h = harness();
        let peer = SocketAddr::new([127, 0, 0, 1].into(), 4000);
        let (_client, stream) = tokio::io::duplex(1024);
        let slot = h.server.ctx.conns.acquire(peer.ip()).unwrap();
        let fresh = crate::conn::connection(Arc::clone(&h.server.ctx), stream, peer, slot);
        let size = std::mem::size_of_val(&fresh);
        assert!(size <= 768, "a connection's future takes {size} bytes");
        drop(fresh);
        let (_client, stream) = tokio::io::duplex(1024);
        let woken = Woken {
            conn: ParkedConn::for_test(
                stream,
                peer,
                h.server.ctx.conns.acquire(peer.ip()).unwrap(),
            ),
            since: Instant::now(),
            carry: None,
            reply: None,
            why: crate::parking::Wake::Changed,
        };
        let replayed = crate::conn::replay(Arc::clone(&h.server.ctx), woken);
        let size = std::mem::size_of_val(&replayed);
        assert!(size <= 768, "a replay's future takes {size} bytes");
        drop(replayed);
        let (_client, stream) = tokio::io::duplex(1024);
        let answered = crate::conn::after_reply(
            Arc::clone(&h.server.ctx),
            ParkedConn::for_test(stream, peer, h.server.ctx.conns.acquire(peer.ip()).unwrap()),
            crate::shortcut::Ready {
                head: bytes::Bytes::new(),
                body: bytes::Bytes::new(),
            },
            Vec::new(),
            Ok(0),
        );
        let size = std::mem::size_of_val(&answered);
        assert!(
            size <= 768,
            "a directly answered connection's future takes {size} bytes"
        );
    }

    /// Answers `GET /ready` (any query) itself; counts what it was asked.
    struct Fixed(std::sync::atomic::AtomicUsize);

    impl Shortcut for Fixed {
        fn answer(
            &self,
            uri: &axum::http::Uri,
            _headers: &axum::http::HeaderMap,
        ) -> Option<crate::shortcut::Ready> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (uri.path() == "/ready").then(|| crate::shortcut::Ready {
                head: bytes::Bytes::from_static(b"HTTP/1.1 200 OK\r\nx-kind: ready\r\n"),
                body: bytes::Bytes::from_static(b"held"),
            })
        }
    }

    #[tokio::test]
    async fn a_ready_answer_is_written_with_the_per_request_headers() {
        let (_ticker, rx) = watch::channel(0u64);
        let (_stop, stop_rx) = watch::channel(false);
        let fixed = Arc::new(Fixed(Default::default()));
        let server: Http1<DuplexStream> = Http1::with_shortcut(
            router(rx),
            stop_rx,
            Limits::default(),
            Some(Arc::clone(&fixed) as Arc<dyn Shortcut>),
        );
        let (mut c, conn) = tokio::io::duplex(1 << 16);
        server.connection(conn, SocketAddr::new([127, 0, 0, 1].into(), 4000));
        // Pipelined: a ready answer, one through the router, a HEAD and a POST (never asked),
        // then a ready one on HTTP/1.0 that closes.
        c.write_all(
            b"GET /ready?x=1 HTTP/1.1\r\nx-request-id: mine\r\n\r\n\
              GET /hello HTTP/1.1\r\n\r\n\
              HEAD /ready HTTP/1.1\r\n\r\n\
              POST /echo HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi\
              GET /ready HTTP/1.0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out))
            .await
            .expect("closed after the HTTP/1.0 request")
            .unwrap();
        let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 5, "{out}");
        let first = answers[0];
        assert!(
            first.starts_with(
                "200 OK\r\nx-kind: ready\r\nx-request-id: mine\r\ncontent-length: 4\r\ndate: "
            ),
            "{first}"
        );
        assert!(first.ends_with("\r\n\r\nheld"), "{first}");
        assert!(answers[1].ends_with("hello"), "{}", answers[1]);
        assert!(
            !answers[2].contains("x-kind"),
            "HEAD goes to the router: {}",
            answers[2]
        );
        assert!(answers[3].ends_with("hi"), "{}", answers[3]);
        let last = answers[4];
        assert!(
            last.contains("x-kind: ready\r\n") && last.contains("connection: close\r\n"),
            "{last}"
        );
        assert!(last.ends_with("held"), "{last}");
        assert_eq!(
            fixed.0.load(std::sync::atomic::Ordering::Relaxed),
            3,
            "asked for the three GETs only"
        );
    }

    /// An in-memory connection idles as a TCP one does: closed by the first-byte timeout when
    /// nothing came, by the idle timeout after an answered request.
    #[tokio::test(start_paused = true)]
    async fn an_idle_in_memory_connection_is_closed_by_the_idle_timeouts() {
        use crate::conn::{FIRST_BYTE_TIMEOUT, IDLE_TIMEOUT};
        let h = harness();
        let started = tokio::time::Instant::now();
        let mut c = h.connect();
        let out = read_all(&mut c, FIRST_BYTE_TIMEOUT * 2).await;
        assert_eq!(out, "");
        assert!(started.elapsed() >= FIRST_BYTE_TIMEOUT);
        assert!(started.elapsed() < FIRST_BYTE_TIMEOUT * 2);
        h.until_open(0).await;

        // After an answered request.
        let mut c = h.connect();
        c.write_all(b"GET /hello HTTP/1.1\r\n\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        let out = read_all(&mut c, IDLE_TIMEOUT * 2).await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("hello"),
            "{out}"
        );
        assert!(started.elapsed() >= IDLE_TIMEOUT);
        assert!(started.elapsed() < IDLE_TIMEOUT * 2);
        h.until_open(0).await;
    }
}

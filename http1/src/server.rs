//! Accepting connections: [`serve`] on a TCP listener until shutdown, or an [`Http1`] handle
//! that connections of any [`Transport`] are handed to (the tests' in-memory streams).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::conn::{connection, replay, stopped, Busy, Ctx, ParkedConn, Transport};
use crate::parking::{Parking, Woken};

/// A server for connections of type `S`.
pub struct Http1<S> {
    ctx: Arc<Ctx<S>>,
}

impl<S: Transport> Http1<S> {
    /// Requests go to `router`; once `shutdown` turns true, connections finish their request in
    /// progress and close, and parked requests are replayed.
    pub fn new(router: Router, shutdown: watch::Receiver<bool>) -> Self {
        let ctx = Arc::new_cyclic(|weak: &Weak<Ctx<S>>| {
            let weak = Weak::clone(weak);
            Ctx {
                router,
                parking: Parking::new(move |woken: Woken<ParkedConn<S>>| {
                    if let Some(ctx) = weak.upgrade() {
                        tokio::spawn(replay(ctx, woken));
                    }
                }),
                shutdown,
                busy: Busy::default(),
            }
        });
        Http1 { ctx }
    }

    /// Serve one connection (on a task of its own).
    pub fn connection(&self, stream: S, peer: SocketAddr) {
        tokio::spawn(connection(Arc::clone(&self.ctx), stream, peer));
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
/// and return once every request in progress has answered (at most 30 s later).
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let server: Http1<TcpStream> = Http1::new(router, shutdown.clone());
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
                }));
                res
            }
        };
        Router::new()
            .route("/hello", get(|| async { "hello" }))
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
        let (ticker, rx) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        Harness {
            server: Http1::new(router(rx), stop_rx),
            ticker,
            _stop: stop,
        }
    }

    impl Harness {
        fn connect(&self) -> DuplexStream {
            let (client, server) = tokio::io::duplex(1 << 16);
            self.server
                .connection(server, SocketAddr::from(([127, 0, 0, 1], 4000)));
            client
        }
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
}

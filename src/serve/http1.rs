//! The HTTP/1.1 server in front of the axum router.
//!
//! Why not hyper's server: hyper keeps an 8 KB read buffer and an 8 KB write buffer per
//! connection and the request's handler future alive while a long-poll waits, ~20 KB per parked
//! request; target P8 is ≤ 4 KB. Here a connection owns no buffer while idle, reads a request
//! into a buffer sized to it, runs it through the router (every route, middleware and handler is
//! the ordinary axum code), and writes the response. A live request with nothing new is answered
//! by its handler with a park ticket instead: the connection then hands its socket and the
//! request's head bytes to [`super::parking`] and its task ends. When the shape moves on or the
//! long-poll times out, the request is replayed on a new task through the router, with its
//! original start time, admission slot and request id.
//!
//! HTTP/1.1 as RFC 9112 asks of a server: keep-alive (1.1 default, 1.0 on request), pipelining,
//! `Content-Length` and chunked request bodies, `Expect: 100-continue`, `HEAD`, responses with a
//! length or chunked (streams such as SSE), `Date`, limits on head and body size (431/413), an
//! idle timeout and a timeout for a request's head to arrive, graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use axum::http::{StatusCode, Uri, Version};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use super::admission::Admitted;
use super::parking::{Parkable, Parked, Parking, Replayed, Woken};

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Largest request body (shape and admin bodies are small; handlers set tighter limits).
const MAX_BODY: usize = 8 << 20;
/// A keep-alive connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Once a request has started, its head (and body) must arrive within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses up to this size are written with their head in one call.
const COALESCE: usize = 16 * 1024;

/// A parked request's connection: the socket and what it takes to replay the request.
pub struct ParkedConn {
    stream: TcpStream,
    peer: SocketAddr,
    head: Bytes,
    request_id: HeaderValue,
}

struct Ctx {
    router: Router,
    parking: Arc<Parking<ParkedConn>>,
    shutdown: watch::Receiver<bool>,
    busy: Busy,
}

/// Requests in progress, for graceful shutdown.
#[derive(Default)]
struct Busy {
    count: AtomicUsize,
    idle: Notify,
}

struct BusyGuard<'a>(&'a Busy);

impl Busy {
    fn enter(&self) -> BusyGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        BusyGuard(self)
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The parked-request registry of a running server, for its metrics.
pub type ParkingRegistry = Arc<Parking<ParkedConn>>;

/// Serve `router` on `listener` until `shutdown` turns true; then stop accepting, replay parked
/// requests (they now wait in their own task and see the stacks stop), close idle connections,
/// and return once every request in progress has answered (at most 30 s later).
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let ctx = Arc::new_cyclic(|weak: &Weak<Ctx>| {
        let weak = Weak::clone(weak);
        Ctx {
            router,
            parking: Parking::new(move |woken: Woken<ParkedConn>| {
                if let Some(ctx) = weak.upgrade() {
                    tokio::spawn(replay(ctx, woken));
                }
            }),
            shutdown: shutdown.clone(),
            busy: Busy::default(),
        }
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(Arc::clone(&ctx), stream, peer, None));
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
    ctx.parking.close();
    let _ = tokio::time::timeout(Duration::from_secs(30), ctx.busy.wait_idle()).await;
}

/// Resolves once the server is shutting down.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A request to run again: its head, request id, when it first arrived, its admission slot.
struct Replay {
    head: Bytes,
    request_id: HeaderValue,
    since: Instant,
    admitted: Option<Admitted>,
}

async fn replay(ctx: Arc<Ctx>, woken: Woken<ParkedConn>) {
    let ParkedConn {
        stream,
        peer,
        head,
        request_id,
    } = woken.conn;
    let replay = Replay {
        head,
        request_id,
        since: woken.since,
        admitted: woken.admitted,
    };
    connection(ctx, stream, peer, Some(replay)).await;
}

/// Why a request could not be read: answered with this status, then the connection closes.
#[derive(Debug)]
struct Reject(StatusCode, &'static str);

/// A parsed request head.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// How the request's body is framed.
enum BodyLength {
    Fixed(usize),
    Chunked,
}

/// Serve requests on one connection until it closes, parks, or the server shuts down.
async fn connection(
    ctx: Arc<Ctx>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut replayed: Option<Replay>,
) {
    let mut buf = BytesMut::new();
    loop {
        let (head_bytes, body, request_id, replay_info) = match replayed.take() {
            Some(r) => (
                r.head,
                Bytes::new(),
                Some(r.request_id),
                Some((r.since, r.admitted)),
            ),
            None => match Box::pin(read_request(&ctx, &mut stream, &mut buf)).await {
                Ok(Some((head, body))) => (head, body, None, None),
                Ok(None) => return,
                Err(Reject(status, why)) => {
                    let _ = write_reject(&mut stream, status, why).await;
                    return;
                }
            },
        };
        let _busy = ctx.busy.enter();
        let head = match parse_head(&head_bytes) {
            Ok((head, _)) => head,
            Err(Reject(status, why)) => {
                let _ = write_reject(&mut stream, status, why).await;
                return;
            }
        };
        let closing = *ctx.shutdown.borrow();
        let keep_alive = !closing && wants_keep_alive(&head);
        let head_only = head.method == Method::HEAD;
        let version = head.version;
        let request_id = request_id.unwrap_or_else(|| client_request_id(&head.headers));
        let parkable = head.method == Method::GET
            && body.is_empty()
            && buf.is_empty()
            && !ctx.parking.is_closed();

        let mut req = Request::new(Body::from(body));
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        req.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), request_id.clone());
        req.extensions_mut().insert(ConnectInfo(peer));
        if parkable {
            req.extensions_mut().insert(Parkable);
        }
        if let Some((since, admitted)) = replay_info {
            req.extensions_mut().insert(Replayed {
                since,
                admitted: Arc::new(Mutex::new(admitted)),
            });
        }
        if buf.is_empty() {
            // Hold no buffer while the handler runs or the connection idles.
            buf = BytesMut::new();
        }
        let since = replay_info_since(&req);
        // Boxed: the connection's own future stays small while it idles between requests.
        let res = match Box::pin(ctx.router.clone().oneshot(req)).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        if let Some(parked) = res.extensions().get::<Parked>().cloned() {
            if let Some(ticket) = parked.take() {
                let conn = ParkedConn {
                    stream,
                    peer,
                    head: Bytes::copy_from_slice(&head_bytes),
                    request_id,
                };
                drop(head_bytes);
                ctx.parking.park(conn, ticket, since);
                return;
            }
        }
        drop(head_bytes);
        match Box::pin(write_response(
            &mut stream,
            res,
            version,
            head_only,
            keep_alive,
        ))
        .await
        {
            Ok(true) => {}
            _ => return,
        }
    }
}

/// When the request first arrived: the replayed start, or now.
fn replay_info_since(req: &Request<Body>) -> Instant {
    req.extensions()
        .get::<Replayed>()
        .map(|r| r.since)
        .unwrap_or_else(Instant::now)
}

/// The client's request id if usable, else a new one.
fn client_request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>()))
                .unwrap_or_else(|_| HeaderValue::from_static("0"))
        })
}

fn wants_keep_alive(head: &Head) -> bool {
    let tokens = |v: &HeaderValue| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let connection: Vec<String> = head
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(tokens)
        .collect();
    if connection.iter().any(|t| t == "close") {
        return false;
    }
    match head.version {
        Version::HTTP_11 => true,
        _ => connection.iter().any(|t| t == "keep-alive"),
    }
}

/// Read the next request (head bytes and decoded body) into `buf`; `None` when the connection
/// closed (or idled out, or the server is shutting down) between requests.
async fn read_request(
    ctx: &Ctx,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<(Bytes, Bytes)>, Reject> {
    let mut shutdown = ctx.shutdown.clone();
    // Between requests: wait for the first byte without holding a buffer.
    if buf.is_empty() {
        if *shutdown.borrow() {
            return Ok(None);
        }
        tokio::select! {
            r = stream.readable() => if r.is_err() { return Ok(None) },
            _ = tokio::time::sleep(IDLE_TIMEOUT) => return Ok(None),
            _ = stopped(&mut shutdown) => return Ok(None),
        }
    }
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let head_len = loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                Ok((_, len)) => break len,
                Err(Reject(StatusCode::CONTINUE, _)) => {}
                Err(e) => return Err(e),
            }
            if buf.len() >= MAX_HEAD {
                return Err(Reject(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                ));
            }
        }
        let started = !buf.is_empty();
        match read_more(stream, buf, deadline).await {
            Ok(0) if !started => return Ok(None),
            Ok(0) => {
                return Err(Reject(
                    StatusCode::BAD_REQUEST,
                    "connection closed mid-request",
                ))
            }
            Ok(_) => {}
            Err(_) if !started => return Ok(None),
            Err(_) => return Err(Reject(StatusCode::REQUEST_TIMEOUT, "request timed out")),
        }
    };
    let (head, _) = parse_head(&buf[..head_len])?;
    let length = body_length(&head.headers)?;
    let head_bytes = buf.split_to(head_len).freeze();
    let needs_body = !matches!(length, BodyLength::Fixed(0));
    if needs_body
        && buf.is_empty()
        && head
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Reject(StatusCode::BAD_REQUEST, "write failed"))?;
    }
    let body = match length {
        BodyLength::Fixed(0) => Bytes::new(),
        BodyLength::Fixed(n) => {
            if n > MAX_BODY {
                return Err(Reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                ));
            }
            while buf.len() < n {
                match read_more(stream, buf, deadline).await {
                    Ok(0) | Err(_) => {
                        return Err(Reject(StatusCode::BAD_REQUEST, "incomplete request body"))
                    }
                    Ok(_) => {}
                }
            }
            buf.split_to(n).freeze()
        }
        BodyLength::Chunked => read_chunked(stream, buf, deadline).await?,
    };
    Ok(Some((head_bytes, body)))
}

/// Read more bytes into `buf` before `deadline`; Ok(0) at end of stream.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> std::io::Result<usize> {
    buf.reserve(4096);
    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
    }
}

/// Decode a chunked body (RFC 9112 §7.1); chunk extensions and trailers are ignored.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Reject> {
    let bad = || Reject(StatusCode::BAD_REQUEST, "malformed chunked body");
    let mut body = BytesMut::new();
    loop {
        let line = read_line(stream, buf, deadline).await?;
        let size_text = line.split(|b| *b == b';').next().unwrap_or(&[]);
        let size_text = std::str::from_utf8(size_text).map_err(|_| bad())?.trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if read_line(stream, buf, deadline).await?.is_empty() {
                    return Ok(body.freeze());
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(Reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ));
        }
        while buf.len() < size + 2 {
            match read_more(stream, buf, deadline).await {
                Ok(0) | Err(_) => return Err(bad()),
                Ok(_) => {}
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(bad());
        }
        buf.advance(size + 2);
    }
}

/// One CRLF-terminated line, without the CRLF.
async fn read_line(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Reject> {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(at).freeze();
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > 4096 {
            return Err(Reject(StatusCode::BAD_REQUEST, "malformed chunked body"));
        }
        match read_more(stream, buf, deadline).await {
            Ok(0) | Err(_) => {
                return Err(Reject(StatusCode::BAD_REQUEST, "incomplete request body"))
            }
            Ok(_) => {}
        }
    }
}

/// Parse a request head; `Reject(CONTINUE)` means incomplete.
fn parse_head(bytes: &[u8]) -> Result<(Head, usize), Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(Reject(StatusCode::CONTINUE, "incomplete")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many headers",
            ))
        }
        Err(_) => return Err(Reject(StatusCode::BAD_REQUEST, "malformed request")),
    };
    let bad = |why| Reject(StatusCode::BAD_REQUEST, why);
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("invalid method"))?;
    let uri: Uri = parsed
        .path
        .unwrap_or("")
        .parse()
        .map_err(|_| bad("invalid request target"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("invalid header"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad("invalid header value"))?;
        map.append(name, value);
    }
    Ok((
        Head {
            method,
            uri,
            version,
            headers: map,
        },
        len,
    ))
}

/// The request body's framing (RFC 9112 §6.3).
fn body_length(headers: &HeaderMap) -> Result<BodyLength, Reject> {
    let bad = |why| Reject(StatusCode::BAD_REQUEST, why);
    if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        let last = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .map(|t| t.trim().to_ascii_lowercase());
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(bad("both transfer-encoding and content-length"));
        }
        return match last.as_deref() {
            Some("chunked") => Ok(BodyLength::Chunked),
            _ => Err(Reject(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported transfer-encoding",
            )),
        };
    }
    let mut length: Option<usize> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v
            .to_str()
            .map_err(|_| bad("invalid content-length"))?
            .split(',')
        {
            let n: usize = part
                .trim()
                .parse()
                .map_err(|_| bad("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    Ok(BodyLength::Fixed(length.unwrap_or(0)))
}

/// The `Date` header value, formatted once per second.
fn date_header() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, Option<HeaderValue>)> =
            const { std::cell::RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        match &c.1 {
            Some(v) if c.0 == secs => v.clone(),
            _ => {
                let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                *c = (secs, Some(v.clone()));
                v
            }
        }
    })
}

/// Write `res`; Ok(true) if the connection stays open for another request.
async fn write_response(
    stream: &mut TcpStream,
    res: Response<Body>,
    version: Version,
    head_only: bool,
    mut keep_alive: bool,
) -> std::io::Result<bool> {
    let (parts, mut body) = res.into_parts();
    let status = parts.status;
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut headers = parts.headers;
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(HeaderName::from_static("keep-alive"));
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        headers.remove(header::CONTENT_LENGTH);
    }
    let exact = axum::body::HttpBody::size_hint(&body).exact();
    let mut chunked = false;
    if !no_body && !headers.contains_key(header::CONTENT_LENGTH) {
        match exact {
            Some(n) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            None if version == Version::HTTP_11 => chunked = true,
            // HTTP/1.0 and no length: the end of the connection ends the body.
            None => keep_alive = false,
        }
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date_header());
    }
    if !keep_alive {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if version == Version::HTTP_10 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }

    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if no_body {
        stream.write_all(&out).await?;
        return Ok(keep_alive);
    }

    // A body of known size goes out with its head; a stream (SSE) gets its head at once.
    let mut pending = Some(out);
    if exact.is_none() {
        if let Some(head) = pending.take() {
            stream.write_all(&head).await?;
        }
    }
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The body failed midway: the response cannot be completed.
            return Ok(false);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let mut framed = pending.take().unwrap_or_default();
        if chunked {
            framed.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if framed.len() + data.len() <= COALESCE {
            framed.extend_from_slice(&data);
            if chunked {
                framed.extend_from_slice(b"\r\n");
            }
            stream.write_all(&framed).await?;
        } else {
            stream.write_all(&framed).await?;
            stream.write_all(&data).await?;
            if chunked {
                stream.write_all(b"\r\n").await?;
            }
        }
    }
    let mut tail = pending.unwrap_or_default();
    if chunked {
        tail.extend_from_slice(b"0\r\n\r\n");
    }
    if !tail.is_empty() {
        stream.write_all(&tail).await?;
    }
    if !keep_alive {
        let _ = stream.shutdown().await;
    }
    Ok(keep_alive)
}

/// Answer a request that could not be read, and close.
async fn write_reject(
    stream: &mut TcpStream,
    status: StatusCode,
    why: &str,
) -> std::io::Result<()> {
    let body = serde_json::json!({ "message": why }).to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\ndate: {}\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        date_header().to_str().unwrap_or(""),
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_and_body_framing() {
        let (head, len) = parse_head(
            b"GET /v1/shape?table=t HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nrest",
        )
        .map_err(|e| e.1)
        .unwrap();
        assert_eq!(len, 59);
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.query(), Some("table=t"));
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert!(wants_keep_alive(&head));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost"),
            Err(Reject(StatusCode::CONTINUE, _))
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(Reject(StatusCode::BAD_REQUEST, _))
        ));
        let (h10, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.1)
            .unwrap();
        assert!(!wants_keep_alive(&h10));
        let (h10ka, _) = parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .map_err(|e| e.1)
            .unwrap();
        assert!(wants_keep_alive(&h10ka));

        let mut h = HeaderMap::new();
        assert!(matches!(body_length(&h), Ok(BodyLength::Fixed(0))));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(matches!(body_length(&h), Ok(BodyLength::Fixed(12))));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert!(body_length(&h).is_err(), "conflicting lengths");
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(matches!(body_length(&h), Ok(BodyLength::Chunked)));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert!(body_length(&h).is_err(), "smuggling guard");
        let mut h = HeaderMap::new();
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert!(body_length(&h).is_err());
    }
}

//! One connection: read a request into a buffer sized to it (none is held while the connection
//! idles), run it through the axum router, write the response; park it when its handler answers
//! with a park ticket, and replay it when woken. Generic over the byte stream ([`Transport`]), so
//! the same code serves TCP and the tests' in-memory streams.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use crate::limits::{ConnCounts, ConnSlot};
use crate::parking::{Parkable, Parked, Parking, Replayed, Wake, Woken};
use crate::request::{
    body_length, chunk_size, client_request_id, parse_head, trailer_line_ok, wants_keep_alive,
    BodyLength, Head, Parsed, Reject, MAX_BODY, MAX_HEAD,
};
use crate::response::{
    one_piece, ready_headers, send_parts, skip, write_now, write_ready, write_reject,
    write_response,
};
use crate::shortcut::Shortcut;

/// A keep-alive connection with no request for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A new connection that sends nothing for this long is closed (it holds a descriptor and a
/// place under the connection caps).
pub(crate) const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(20);
/// Once a request has started, its head (and body) must arrive within this.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A chunk-size or trailer line longer than this is malformed.
const MAX_LINE: usize = 4096;
/// A chunked body's extensions (ignored) may take this many bytes in all.
const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// A chunked body's trailer section (ignored) may take this many bytes, and this many lines.
const MAX_TRAILERS: usize = 16 * 1024;
const MAX_TRAILER_LINES: usize = 100;

/// A byte stream a connection runs on.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Wait until bytes can be read (or the stream ended), then read what is there into `buf`;
    /// Ok(0) at the end of the stream. A connection waiting for its next request holds no
    /// buffer meanwhile: `buf` is empty while this waits, and grows only by what is read.
    fn read_ready(
        &mut self,
        buf: &mut BytesMut,
    ) -> impl Future<Output = std::io::Result<usize>> + Send;
}

impl Transport for tokio::net::TcpStream {
    /// Readiness, then one read through a buffer on the stack: the next request usually arrives
    /// whole in one read, so it costs one `recv` and an allocation of its own size. A read
    /// shorter than asked clears the socket's readiness (tokio's `poll_read` does), so waiting
    /// for the next request costs no extra `recv`. `TcpStream::readable` can report a socket
    /// ready that has nothing to read (a new socket); then this waits again.
    async fn read_ready(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        loop {
            self.readable().await?;
            if let Poll::Ready(r) = read_now(self, buf) {
                return r;
            }
        }
    }
}

/// Read what the socket holds now (up to 8 KiB) into `buf`, through the stack; `Pending` if it
/// holds nothing (the caller then waits for readiness, with its own waker).
fn read_now(
    stream: &mut tokio::net::TcpStream,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    let mut scratch = [0u8; 8192];
    let mut read = tokio::io::ReadBuf::new(&mut scratch);
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::Pin::new(stream).poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) => {
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

impl Transport for tokio::io::DuplexStream {
    /// In-memory streams (tests): an ordinary read.
    async fn read_ready(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        buf.reserve(4096);
        self.read_buf(buf).await
    }
}

/// A parked request's connection: the stream and what it takes to replay the request (and its
/// place in the connection counts: a parked connection still holds its socket).
pub struct ParkedConn<S> {
    stream: S,
    peer: SocketAddr,
    head: Bytes,
    request_id: HeaderValue,
    slot: ConnSlot,
    /// The request's HTTP version and whether it keeps the connection, for a direct reply.
    version: Version,
    keep_alive: bool,
}

#[cfg(test)]
impl<S> ParkedConn<S> {
    pub(crate) fn for_test(stream: S, peer: SocketAddr, slot: ConnSlot) -> Self {
        ParkedConn {
            stream,
            peer,
            head: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            request_id: HeaderValue::from_static("test"),
            slot,
            version: Version::HTTP_11,
            keep_alive: true,
        }
    }
}

pub(crate) struct Ctx<S> {
    pub(crate) router: Router,
    pub(crate) parking: Arc<Parking<ParkedConn<S>>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) busy: Busy,
    pub(crate) conns: Arc<ConnCounts>,
    pub(crate) shortcut: Option<Arc<dyn Shortcut>>,
}

/// Requests in progress, for graceful shutdown.
#[derive(Default)]
pub(crate) struct Busy {
    count: AtomicUsize,
    idle: Notify,
}

pub(crate) struct BusyGuard<'a>(&'a Busy);

impl Busy {
    fn enter(&self) -> BusyGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        BusyGuard(self)
    }

    pub(crate) async fn wait_idle(&self) {
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

/// Resolves once the server is shutting down.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A request to run again: its head, request id, when it first arrived, what it carries.
struct Replay {
    head: Bytes,
    request_id: HeaderValue,
    since: Instant,
    carry: Option<Box<dyn std::any::Any + Send>>,
}

/// Take back a woken request (the registry's `resume`). One whose wait ended because what it
/// waits on changed, and that has its own reply, is answered here and now: the reply is
/// built and written without waiting (a socket takes a short answer at once), so a change
/// that wakes many requests answers them one after the other in the task that saw it, not
/// after a task each has been scheduled; the connection then goes on in a task of its own
/// (writing what the socket did not take, then reading its next request). Any other is
/// replayed through the router in a task.
pub(crate) fn resume<S: Transport>(ctx: Arc<Ctx<S>>, mut woken: Woken<ParkedConn<S>>) {
    if woken.why == Wake::Changed && !*ctx.shutdown.borrow() {
        if let Some(ready) = woken.reply.take().and_then(|reply| reply()) {
            drop(woken.carry.take());
            let mut conn = woken.conn;
            let own = ready_headers(&ready, &conn.request_id, conn.version, conn.keep_alive);
            let (ready, own) = one_piece(ready, own);
            let written = {
                let _busy = ctx.busy.enter();
                write_now(&mut conn.stream, [&ready.head, &own, &ready.body])
            };
            tokio::spawn(after_reply(ctx, conn, ready, own, written));
            return;
        }
    }
    tokio::spawn(replay(ctx, woken));
}

/// A directly answered connection: the rest of its answer, then its next request.
pub(crate) async fn after_reply<S: Transport>(
    ctx: Arc<Ctx<S>>,
    conn: ParkedConn<S>,
    ready: crate::shortcut::Ready,
    own: Vec<u8>,
    written: std::io::Result<usize>,
) {
    let ParkedConn {
        mut stream,
        peer,
        slot,
        keep_alive,
        ..
    } = conn;
    let Ok(written) = written else {
        return;
    };
    let mut parts = [&ready.head[..], &own[..], &ready.body[..]];
    skip(&mut parts, written);
    if parts.iter().any(|p| !p.is_empty()) {
        let _busy = ctx.busy.enter();
        let rest = Box::pin(send_parts(&mut stream, parts));
        if rest.await.is_err() {
            return;
        }
    }
    drop((ready, own));
    if !keep_alive {
        let _ = stream.shutdown().await;
        return;
    }
    let next = Box::pin(run(ctx, stream, peer, slot, None, true));
    next.await;
}

/// Replay a woken request through the router (its wait timed out, the server is stopping, or
/// it has no reply of its own for what changed).
pub(crate) async fn replay<S: Transport>(ctx: Arc<Ctx<S>>, woken: Woken<ParkedConn<S>>) {
    let ParkedConn {
        stream,
        peer,
        head,
        request_id,
        slot,
        ..
    } = woken.conn;
    let replay = Replay {
        head,
        request_id,
        since: woken.since,
        carry: woken.carry,
    };
    let again = Box::pin(run(ctx, stream, peer, slot, Some(replay), true));
    again.await;
}

/// Serve requests on one connection until it closes, parks, or the server shuts down; `slot`
/// counts it as open until then (or, if it parks, until its replay ends).
pub(crate) async fn connection<S: Transport>(
    ctx: Arc<Ctx<S>>,
    stream: S,
    peer: SocketAddr,
    slot: ConnSlot,
) {
    run(ctx, stream, peer, slot, None, false).await;
}

async fn run<S: Transport>(
    ctx: Arc<Ctx<S>>,
    stream: S,
    peer: SocketAddr,
    slot: ConnSlot,
    mut replayed: Option<Replay>,
    served: bool,
) {
    // A replayed connection has served a request already, and so has one whose parked request
    // was answered directly (`served`).
    let idle_limit = if replayed.is_some() || served {
        IDLE_TIMEOUT
    } else {
        FIRST_BYTE_TIMEOUT
    };
    let mut conn = Conn {
        ctx,
        stream,
        peer,
        slot,
        buf: BytesMut::new(),
        idle_limit,
    };
    // What a connection holds while it idles is this loop's state and the wait for the next
    // request's first bytes; a request's own state lives in a box while it is served. (Each
    // future is boxed in a statement of its own, here and in `serve_one`: built inside the
    // `await` expression, its moved-from storage would stay in the state machine.)
    loop {
        if replayed.is_none() && conn.buf.is_empty() {
            let wait = Box::pin(first_bytes(&mut conn));
            if !wait.await {
                return;
            }
        }
        let step = Box::pin(serve_one(conn, replayed.take()));
        match step.await {
            Some(next) => conn = next,
            None => return,
        }
    }
}

/// What outlives a request on a connection.
struct Conn<S> {
    ctx: Arc<Ctx<S>>,
    stream: S,
    peer: SocketAddr,
    slot: ConnSlot,
    /// Bytes read past the last request (pipelining); empty (no allocation) otherwise.
    buf: BytesMut,
    /// How long the connection may wait for its next request.
    idle_limit: Duration,
}

/// Between requests: wait for the next request's first bytes without holding a buffer, and
/// read them into `conn.buf`; false when the connection closed, idled out, or the server is
/// shutting down.
async fn first_bytes<S: Transport>(conn: &mut Conn<S>) -> bool {
    let mut shutdown = conn.ctx.shutdown.clone();
    if *shutdown.borrow() {
        return false;
    }
    // Biased: a request already there is read without arming the idle timer.
    tokio::select! {
        biased;
        r = conn.stream.read_ready(&mut conn.buf) => matches!(r, Ok(n) if n > 0),
        _ = stopped(&mut shutdown) => false,
        _ = tokio::time::sleep(conn.idle_limit) => false,
    }
}

/// Serve one request (the one replayed, or the one whose bytes are in `conn.buf`); the
/// connection back if it stays open for another.
async fn serve_one<S: Transport>(mut conn: Conn<S>, replayed: Option<Replay>) -> Option<Conn<S>> {
    // The head is parsed once as a request arrives; a replay parses its stored bytes.
    let (head, head_bytes, body, request_id, replay_info) = match replayed {
        Some(r) => match parse_head(&r.head) {
            Ok(Parsed::Complete(head, _)) => (
                head,
                r.head,
                Bytes::new(),
                Some(r.request_id),
                Some((r.since, r.carry)),
            ),
            Ok(Parsed::Partial) => return None,
            Err(reject) => {
                refuse(conn.stream, reject).await;
                return None;
            }
        },
        None => {
            let read = Box::pin(read_request(&mut conn.stream, &mut conn.buf));
            match read.await {
                Ok(Some((head, head_bytes, body))) => {
                    conn.idle_limit = IDLE_TIMEOUT;
                    (head, head_bytes, body, None, None)
                }
                Ok(None) => return None,
                Err(reject) => {
                    refuse(conn.stream, reject).await;
                    return None;
                }
            }
        }
    };
    let ctx = Arc::clone(&conn.ctx);
    let _busy = ctx.busy.enter();
    let closing = *ctx.shutdown.borrow();
    let keep_alive = !closing && wants_keep_alive(&head);
    let head_only = head.method == Method::HEAD;
    let version = head.version;
    let request_id = request_id.unwrap_or_else(|| client_request_id(&head.headers));
    let parkable = head.method == Method::GET
        && body.is_empty()
        && conn.buf.is_empty()
        && !ctx.parking.is_closed();
    if conn.buf.is_empty() {
        // Hold no buffer while the request is answered or the connection idles.
        conn.buf = BytesMut::new();
    }

    // A ready answer of the application's, without the router.
    if replay_info.is_none() && head.method == Method::GET && body.is_empty() {
        if let Some(ready) = ctx
            .shortcut
            .as_ref()
            .and_then(|s| s.answer(&head.uri, &head.headers))
        {
            drop(head_bytes);
            let write = Box::pin(write_ready(
                &mut conn.stream,
                ready,
                &request_id,
                version,
                keep_alive,
            ));
            return match write.await {
                Ok(true) => Some(conn),
                _ => None,
            };
        }
    }
    let Head {
        method,
        uri,
        version: req_version,
        headers,
    } = head;
    let mut req = Request::new(Body::from(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = req_version;
    *req.headers_mut() = headers;
    req.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), request_id.clone());
    req.extensions_mut().insert(ConnectInfo(conn.peer));
    if parkable {
        req.extensions_mut().insert(Parkable);
    }
    let since = match replay_info {
        Some((since, carry)) => {
            req.extensions_mut().insert(Replayed::new(since, carry));
            since
        }
        None => Instant::now(),
    };
    let handle = Box::pin(ctx.router.clone().oneshot(req));
    let res = match handle.await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    if let Some(parked) = res.extensions().get::<Parked>().cloned() {
        if let Some(ticket) = parked.take() {
            // A copy sized to the head: the read buffer it was cut from goes.
            let parked = ParkedConn {
                stream: conn.stream,
                peer: conn.peer,
                head: Bytes::copy_from_slice(&head_bytes),
                request_id,
                slot: conn.slot,
                version,
                keep_alive,
            };
            drop(head_bytes);
            ctx.parking.park(parked, ticket, since);
            return None;
        }
    }
    drop(head_bytes);
    let write = Box::pin(write_response(
        &mut conn.stream,
        res,
        version,
        head_only,
        keep_alive,
    ));
    match write.await {
        Ok(true) => Some(conn),
        _ => None,
    }
}

/// Answer a request that could not be read, and close (boxed: rare, and its future would
/// otherwise take room in every connection's state).
async fn refuse<S: Transport>(mut stream: S, reject: Reject) {
    let write = Box::pin(write_reject(&mut stream, reject.status, reject.why));
    let _ = write.await;
}

/// Read the rest of the request whose first bytes are in `buf` (parsed head, its bytes,
/// decoded body); `None` when the connection closed before anything arrived.
async fn read_request<S: Transport>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<(Head, Bytes, Bytes)>, Reject> {
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let (head, head_len) = loop {
        if !buf.is_empty() {
            match parse_head(buf)? {
                Parsed::Complete(head, len) => break (head, len),
                Parsed::Partial => {}
            }
            if buf.len() >= MAX_HEAD {
                return Err(Reject {
                    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    why: "request head too large",
                });
            }
        }
        let started = !buf.is_empty();
        match read_more(stream, buf, deadline).await {
            Ok(0) if !started => return Ok(None),
            Ok(0) => return Err(Reject::bad("connection closed mid-request")),
            Ok(_) => {}
            Err(_) if !started => return Ok(None),
            Err(_) => {
                return Err(Reject {
                    status: StatusCode::REQUEST_TIMEOUT,
                    why: "request timed out",
                })
            }
        }
    };
    let length = body_length(&head)?;
    let head_bytes = buf.split_to(head_len).freeze();
    let needs_body = !matches!(length, BodyLength::Fixed(0));
    // An HTTP/1.0 client's expectation is ignored (RFC 9110 §10.1.1).
    if needs_body
        && buf.is_empty()
        && head.version == Version::HTTP_11
        && head
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Reject::bad("write failed"))?;
    }
    let body = match length {
        BodyLength::Fixed(0) => Bytes::new(),
        BodyLength::Fixed(n) => {
            if n > MAX_BODY {
                return Err(Reject {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    why: "request body too large",
                });
            }
            while buf.len() < n {
                match read_more(stream, buf, deadline).await {
                    Ok(0) | Err(_) => return Err(Reject::bad("incomplete request body")),
                    Ok(_) => {}
                }
            }
            buf.split_to(n).freeze()
        }
        BodyLength::Chunked => read_chunked(stream, buf, deadline).await?,
    };
    Ok(Some((head, head_bytes, body)))
}

/// Read more bytes into `buf` before `deadline`; Ok(0) at end of stream.
async fn read_more<S: Transport>(
    stream: &mut S,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> std::io::Result<usize> {
    buf.reserve(4096);
    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
    }
}

/// Decode a chunked body (RFC 9112 §7.1); chunk extensions and trailers are checked for form,
/// then ignored. Every size is checked before it is added or used to index.
async fn read_chunked<S: Transport>(
    stream: &mut S,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Reject> {
    let too_large = Reject {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        why: "request body too large",
    };
    let mut body = BytesMut::new();
    let mut extensions = 0usize;
    loop {
        let line = read_line(stream, buf, deadline).await?;
        let size = chunk_size(&line)?;
        extensions += line.iter().skip_while(|b| b.is_ascii_hexdigit()).count();
        if extensions > MAX_CHUNK_EXTENSIONS {
            return Err(Reject::bad("chunk extensions too large"));
        }
        if size == 0 {
            // Trailers, up to the empty line.
            let (mut lines, mut bytes) = (0usize, 0usize);
            loop {
                let line = read_line(stream, buf, deadline).await?;
                if line.is_empty() {
                    return Ok(body.freeze());
                }
                if !trailer_line_ok(&line) {
                    return Err(Reject::bad("malformed trailer"));
                }
                lines += 1;
                bytes += line.len() + 2;
                if lines > MAX_TRAILER_LINES || bytes > MAX_TRAILERS {
                    return Err(Reject {
                        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        why: "trailers too large",
                    });
                }
            }
        }
        let total = body.len().checked_add(size).ok_or(too_large)?;
        if total > MAX_BODY {
            return Err(too_large);
        }
        let framed = size.checked_add(2).ok_or(too_large)?;
        while buf.len() < framed {
            match read_more(stream, buf, deadline).await {
                Ok(0) | Err(_) => return Err(Reject::bad("malformed chunked body")),
                Ok(_) => {}
            }
        }
        if buf.get(size..framed) != Some(&b"\r\n"[..]) {
            return Err(Reject::bad("malformed chunked body"));
        }
        body.extend_from_slice(&buf[..size]);
        buf.advance(framed);
    }
}

/// One CRLF-terminated line, without the CRLF.
async fn read_line<S: Transport>(
    stream: &mut S,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Reject> {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(at).freeze();
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > MAX_LINE {
            return Err(Reject::bad("malformed chunked body"));
        }
        match read_more(stream, buf, deadline).await {
            Ok(0) | Err(_) => return Err(Reject::bad("incomplete request body")),
            Ok(_) => {}
        }
    }
}

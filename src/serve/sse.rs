//! Live mode over Server-Sent Events (`live=true&live_sse=true`, protocol.md §4.4): headers
//! once at open; then each message is one `data:` event and every batch ends with an
//! `up-to-date` control carrying the batch's transaction LSN; a `: keep-alive` comment after
//! 21 s of silence; the stream ends after the SSE timeout (60 s by default), when catch-up data
//! was already there (sent, then closed), or when the shape is invalidated (the reconnect then
//! gets 409).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use shapesync_storage::{LogOffset, ReadResult};
use tokio::sync::mpsc;

use super::params::ShapeRequest;
use super::response::{cache_control, CacheKind};
use super::AppState;
use crate::shape::{message, Lifecycle, Shape};
use crate::stack::Stack;

/// Silence after which a keep-alive comment is sent.
const KEEPALIVE: Duration = Duration::from_secs(21);

fn event(out: &mut Vec<u8>, json: &[u8]) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

/// Asked before each batch of a stream: does the caller's credential still allow it?
pub type StillAllowed = Box<dyn Fn() -> bool + Send + Sync>;

/// Open an SSE response for `shape` from `from`. The stream ends as soon as `allowed` says no
/// (a revoked key, a changed role): the reconnect is authenticated again.
pub fn respond(
    app: &AppState,
    stack: Arc<Stack>,
    shape: Arc<Shape>,
    req: &ShapeRequest,
    from: LogOffset,
    allowed: StillAllowed,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let timeout = app.sse_timeout;
    let parked = app.metrics.parked();
    let handle = shape.handle.clone();
    tokio::spawn(async move {
        let _parked = parked;
        stream_events(stack, shape, from, timeout, tx, allowed).await;
    });
    let mut h = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    let cursor = app.next_cursor(req.cursor.as_deref());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert(
        header::CACHE_CONTROL,
        hv(&cache_control(
            CacheKind::LiveSse {
                sse_timeout_secs: timeout.as_secs() as u32,
            },
            app.cache_ages,
        )),
    );
    h.insert("electric-handle", hv(handle.as_str()));
    h.insert("electric-offset", hv(&from.to_string()));
    h.insert("electric-cursor", HeaderValue::from(cursor));
    h.insert("electric-has-data", HeaderValue::from_static("true"));
    let events =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    (StatusCode::OK, h, Body::from_stream(events)).into_response()
}

async fn stream_events(
    stack: Arc<Stack>,
    shape: Arc<Shape>,
    mut from: LogOffset,
    timeout: Duration,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    allowed: StillAllowed,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut progress = shape.subscribe();
    let mut shutdown = stack.shutdown_signal();
    let mut first = true;
    loop {
        let was_first = std::mem::replace(&mut first, false);
        if progress.borrow_and_update().state != Lifecycle::Active {
            return; // invalidated: end; the reconnect gets 409
        }
        if !allowed() {
            return; // the credential no longer allows it: the reconnect learns why
        }
        let read = {
            let s = Arc::clone(&shape);
            match tokio::task::spawn_blocking(move || s.log.read(from)).await {
                Ok(Ok(r)) => r,
                _ => return,
            }
        };
        if let ReadResult::Chunk { entries, end, .. } = read {
            if !entries.is_empty() {
                let latest = shape.log.latest_offset();
                let mut out =
                    Vec::with_capacity(entries.iter().map(|e| e.len() + 8).sum::<usize>() + 96);
                for e in &entries {
                    event(&mut out, e);
                }
                let head = end >= latest;
                if head {
                    event(&mut out, &message::up_to_date(end.tx()));
                }
                if tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return; // the client went away
                }
                from = end;
                if was_first {
                    return; // catch-up data was waiting: sent, then closed (the client goes on)
                }
                if !head {
                    continue;
                }
            }
        }
        // Wait for new data, a keep-alive, the end of the stream or a shutdown.
        let wake = tokio::time::Instant::now() + KEEPALIVE;
        tokio::select! {
            r = progress.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(wake.min(deadline)) => {
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                if tx.send(Ok(Bytes::from_static(b": keep-alive\n\n"))).await.is_err() {
                    return;
                }
            }
            _ = crate::stack::stopping(&mut shutdown) => return,
        }
    }
}

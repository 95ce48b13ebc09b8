//! Answers the application holds ready: asked before a `GET` runs through the router, so a
//! request the application has answered before, and whose answer cannot have changed, costs a
//! lookup and one write instead of routing, middleware and the handler.

use axum::http::{HeaderMap, Uri};
use bytes::Bytes;

/// The application's ready answers (e.g. a cache of immutable responses).
pub trait Shortcut: Send + Sync + 'static {
    /// The ready answer to a `GET` with no body for `uri` with `headers`, or `None` to run the
    /// request through the router. Called on the connection's task: it must not block.
    fn answer(&self, uri: &Uri, headers: &HeaderMap) -> Option<Ready>;
}

/// A response held ready. The server adds, per request, `x-request-id` (the client's, or a new
/// one), `content-length`, `date` and, where the connection needs it, `connection`; `head` must
/// carry none of them.
#[derive(Clone, Debug)]
pub struct Ready {
    /// The status line and the header lines, each ended by CRLF, without the blank line that
    /// ends the head.
    pub head: Bytes,
    pub body: Bytes,
}

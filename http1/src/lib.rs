//! shapesync's HTTP/1.1 server, in front of an axum router.
//!
//! Why not hyper's server: hyper keeps an 8 KB read buffer and an 8 KB write buffer per
//! connection and the request's handler future alive while a long-poll waits, ~20 KB per parked
//! request; shapesync's target is ≤ 4 KB. Here a connection owns no buffer while idle, reads a
//! request into a buffer sized to it, runs it through the router (every route, middleware and
//! handler is ordinary axum code), and writes the response. A live request with nothing new is
//! answered by its handler with a [`ParkTicket`] instead: the connection then hands its stream
//! and the request's head bytes to the [`Parking`] registry and its task ends. When what it
//! waits on changes or its deadline passes, the request is replayed on a new task through the
//! router, with its original start time and what its ticket carried. The server knows nothing of
//! what is waited on (a [`Waitable`]).
//!
//! HTTP/1.1 as RFC 9112 asks of a server: keep-alive (1.1 default, 1.0 on request), pipelining,
//! `Content-Length` and chunked request bodies, `Expect: 100-continue`, `HEAD`, responses with a
//! length or chunked (streams such as SSE), `Date`, limits on head and body size (431/413), a
//! first-byte timeout for new connections (20 s), an idle timeout between requests (120 s), a
//! timeout for a request's head to arrive (30 s), a stall limit on writes to a client that stops
//! reading (30 s without progress), graceful shutdown, and caps on open
//! connections in total and per peer IP ([`Limits`]; over them a connection is answered `503`).
//! Ambiguous framing (RFC 9112 §6.3: `Transfer-Encoding` with `Content-Length` or over HTTP/1.0,
//! a transfer coding other than `chunked`, more than one `Content-Length`, a bare LF in the head,
//! a malformed chunk line or trailer) is answered `400` and the connection closed, so no byte of
//! one request's body can be read as another request.
//!
//! An application may also hold answers ready ([`Shortcut`]): a `GET` it has one for is answered
//! without the router (a cache of immutable responses: target P9).
//!
//! Files: `request` (parsing, pure), `response` (writing), `conn` (one connection, generic over
//! its [`Transport`]), `parking` (the registry of parked requests), `limits` (connection caps),
//! `server` (accepting), `shortcut` (ready answers).

mod conn;
mod limits;
mod parking;
mod request;
mod response;
mod server;
mod shortcut;

pub use conn::{ParkedConn, Transport};
pub use limits::{ConnStats, Exempt, Limits};
pub use parking::{
    Change, ParkTicket, Parkable, Parked, Parking, Replayed, Reply, Waitable, Wake, Woken,
};
pub use request::client_request_id;
pub use server::{serve, Http1};
pub use shortcut::{Ready, Shortcut};

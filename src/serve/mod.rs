//! The HTTP layer (axum): `GET /v1/shape`, `GET /v1/health`, CORS and common headers. Handlers
//! are thin: parsing and response rules are pure functions in `params` and `response`; errors map
//! to HTTP in `error`. No global timeout layer (it would cut off long-polls).

pub mod error;
pub mod params;
pub mod response;
pub mod shape_api;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::stack::{Stack, Status};
use response::CacheAges;

/// Shared state of the HTTP layer.
pub struct AppState {
    /// The source database served (the multi-tenant registry replaces this with a map).
    pub stack: Arc<Stack>,
    pub long_poll: Duration,
    pub cache_ages: CacheAges,
}

impl AppState {
    pub fn stack(&self) -> Arc<Stack> {
        Arc::clone(&self.stack)
    }
}

pub const SERVER: &str = concat!("shapesync/", env!("CARGO_PKG_VERSION"));

const EXPOSE: &str = "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,retry-after";

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { StatusCode::OK }))
        .route(
            "/v1/shape",
            get(shape_api::get_shape)
                .delete(|| async {
                    error_json(
                        StatusCode::METHOD_NOT_ALLOWED,
                        r#"{"message":"DELETE not allowed"}"#,
                    )
                })
                .options(options_shape),
        )
        .route("/v1/health", get(health))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not found") })
        .layer(middleware::from_fn(common_headers))
        .with_state(state)
}

fn error_json(status: StatusCode, body: &'static str) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn health(State(app): State<Arc<AppState>>) -> Response {
    let (status, text) = match app.stack.status() {
        Status::Active => (StatusCode::OK, "active"),
        Status::Starting => (StatusCode::ACCEPTED, "starting"),
        Status::Down(_) => (StatusCode::ACCEPTED, "waiting"),
    };
    let mut res = (status, format!(r#"{{"status":"{text}"}}"#)).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    res
}

/// CORS preflight (protocol.md §1): 204, never authenticated.
async fn options_shape(req: Request) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    let asked = req
        .headers()
        .get("access-control-request-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let allowed: Vec<&str> = ["if-none-match", "traceparent"]
        .into_iter()
        .filter(|n| asked.split(',').any(|a| a.trim() == *n))
        .collect();
    if !allowed.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            h.insert("access-control-allow-headers", v);
        }
    }
    res
}

/// Headers on every response: server, request id (the client's, echoed, or a new one), CORS,
/// and a default cache-control for responses that set none.
async fn common_headers(req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let request_id = req
        .headers()
        .get("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>()))
                .unwrap_or_else(|_| HeaderValue::from_static("0"))
        });
    let shape_path = req.uri().path() == "/v1/shape";
    let is_options = req.method() == Method::OPTIONS;
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert("electric-server", HeaderValue::from_static(SERVER));
    h.insert("x-request-id", request_id);
    h.insert(
        "access-control-allow-origin",
        origin.unwrap_or_else(|| HeaderValue::from_static("*")),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static(if shape_path {
            "GET, POST, HEAD, DELETE, OPTIONS"
        } else {
            "GET, HEAD"
        }),
    );
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(EXPOSE),
    );
    if is_options {
        h.remove(header::CACHE_CONTROL);
    } else if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, private, must-revalidate"),
        );
    }
    res
}

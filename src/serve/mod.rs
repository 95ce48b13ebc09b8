//! The HTTP layer (axum, served by `shapesync-http1`): `GET/DELETE /v1/shape` (`shape_api`,
//! with `sse` for live SSE and `subset_api`), the admin API (`admin_api`), `GET /v1/health`,
//! metrics, CORS and common headers. Handlers are thin: parsing and response rules are pure
//! functions in `params` and `response`; what a shape request gets is decided in
//! [`crate::read`]; errors become responses in `error` and are logged once, by the request
//! middleware here, with the request id. No global timeout layer (it would cut off long-polls).

pub mod access;
pub mod admin_api;
pub mod admin_auth;
pub mod admission;
pub mod authz;
pub mod error;
pub mod memo;
pub mod params;
pub mod response;
pub mod shape_api;
pub mod sse;
pub mod subset_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::{HttpMetrics, TenantSample};
use crate::tenant::{status_word, Tenants};
use access::Access;
use response::CacheAges;

/// Shared state of the HTTP layer.
pub struct AppState {
    pub tenants: Arc<Tenants>,
    pub access: Access,
    pub metrics: HttpMetrics,
    pub long_poll: Duration,
    /// How long an SSE live stream stays open.
    pub sse_timeout: Duration,
    /// `DELETE /v1/shape` enabled.
    pub shape_deletion: bool,
    pub admission: admission::Admission,
    pub cache_ages: CacheAges,
    /// The process's open-file budget for shape logs (metrics).
    pub file_budget: Arc<shapesync_storage::FileBudget>,
    /// How large a subset answer may be.
    pub subset_caps: crate::shape::subset::SubsetCaps,
    /// Spilled subset answers held at once (process-wide).
    pub spill_budget: Arc<crate::shape::spill::SpillBudget>,
    /// Roles, API keys and tokens.
    pub auth: authz::AuthState,
    /// The connection cap and the HTTP server's connection counters.
    pub connections: (usize, Arc<shapesync_http1::ConnStats>),
    /// Ready answers to repeated requests for sealed snapshot chunks.
    pub memo: memo::Memo,
}

impl AppState {
    /// The `electric-cursor` of a live response (protocol.md §5.3), now.
    pub fn next_cursor(&self, client_cursor: Option<&str>) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        response::next_cursor(
            now,
            self.long_poll.as_secs(),
            client_cursor,
            rand::random_range(1..=3600),
        )
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
                .post(shape_api::post_shape)
                .delete(shape_api::delete_shape)
                .options(options_shape),
        )
        .route("/v1/health", get(health))
        .route(
            "/v1/admin/database",
            get(admin_api::list)
                .post(admin_api::add)
                .options(options_admin),
        )
        .route(
            "/v1/admin/database/{database_id}",
            get(admin_api::show)
                .delete(admin_api::remove)
                .options(options_admin),
        )
        .route(
            "/v1/admin/role",
            get(admin_auth::list_roles)
                .post(admin_auth::create_role)
                .options(options_admin),
        )
        .route(
            "/v1/admin/role/{name}",
            get(admin_auth::show_role)
                .put(admin_auth::put_role)
                .delete(admin_auth::delete_role)
                .options(options_admin),
        )
        .route(
            "/v1/admin/api-key",
            get(admin_auth::list_keys)
                .post(admin_auth::create_key)
                .options(options_admin),
        )
        .route(
            "/v1/admin/api-key/{id}",
            get(admin_auth::show_key)
                .delete(admin_auth::delete_key)
                .options(options_admin),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not found") })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .layer(middleware::from_fn(common_headers))
        .with_state(state)
}

/// Count in-flight requests and record each one's latency by route and status.
async fn observe(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let route = if path == "/v1/shape" {
        "shape"
    } else if path == "/v1/health" {
        "health"
    } else if path.starts_with("/v1/admin/") {
        "admin"
    } else if path == "/metrics" {
        "metrics"
    } else {
        "other"
    };
    let _active = app.metrics.active();
    let started = Instant::now();
    let res = next.run(req).await;
    // A parked request is recorded when it is replayed and answers.
    if res.extensions().get::<shapesync_http1::Parked>().is_none() {
        app.metrics
            .record(route, res.status().as_u16(), started.elapsed());
    }
    res
}

/// Prometheus metrics; behind the admin key unless insecure.
async fn metrics(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = app.access.client_ip(peer, &headers);
    if let Err(e) = app.access.check_admin(&headers, ip) {
        return e.into_response();
    }
    let samples: Vec<TenantSample> = app
        .tenants
        .all()
        .iter()
        .map(|t| {
            let st = &t.stack.stats;
            TenantSample {
                database_id: t.record.id.to_string(),
                status: status_word(&t.stack.status()),
                shapes: t.stack.registry.len() as u64,
                storage_bytes: t.stack.storage_bytes(),
                acked_lsn: st.acked_lsn.load().as_u64(),
                server_wal_end: st.server_wal_end.load().as_u64(),
                lag_seconds: st.lag_seconds(),
                fsync: Arc::clone(&st.fsync),
                compacted_chunks: st
                    .compacted_chunks
                    .load(std::sync::atomic::Ordering::Relaxed),
                compaction_saved_bytes: st
                    .compaction_saved_bytes
                    .load(std::sync::atomic::Ordering::Relaxed),
                integrity: Arc::clone(&st.integrity),
            }
        })
        .collect();
    let files = app.file_budget.stats();
    let files = crate::metrics::FileSample {
        budget: files.limit as u64,
        open: files.open as u64,
        evicted: files.evicted,
        connections_limit: app.connections.0 as u64,
        connections_open: app.connections.1.open(),
        connections_refused: app.connections.1.refused(),
    };
    let mut text = crate::metrics::render(&app.metrics, files, &samples);
    crate::metrics::render_auth(
        &mut text,
        &app.auth.denial_counts(),
        &app.auth.change_counts(),
    );
    crate::metrics::render_response_cache(
        &mut text,
        app.memo.hits(),
        app.memo.len() as u64,
        app.memo.bytes() as u64,
    );
    let mut res = text.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `GET /v1/health[?database_id=…]`: one tenant's state, or every tenant's (active only when all
/// are).
async fn health(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.as_deref().unwrap_or("");
    let (id, _) = authz::tenant_and_secret(query);
    // Who may see per-database detail: the admin (every database), or a caller with the
    // named database's secret (that one). Anyone else sees only the overall status.
    let admin = app.access.is_admin(&headers);
    let words: Vec<(String, &'static str)> = match &id {
        Some(_) => {
            let tenant = match app.tenants.resolve(id.as_deref()) {
                Ok(t) if admin => Ok(t),
                _ if admin => Err(error::ApiError::UnknownDatabase(
                    crate::tenant::ResolveError::NotFound.to_string(),
                )),
                _ => authz::authorized_tenant(&app, query),
            };
            match tenant {
                Ok(t) => vec![(t.record.id.to_string(), status_word(&t.stack.status()))],
                Err(e) => return e.into_response(),
            }
        }
        None => app
            .tenants
            .all()
            .iter()
            .map(|t| (t.record.id.to_string(), status_word(&t.stack.status())))
            .collect(),
    };
    let detail = admin || id.is_some();
    let overall = if words.iter().all(|(_, w)| *w == "active") {
        "active"
    } else if words
        .iter()
        .any(|(_, w)| *w == "waiting" || *w == "degraded")
    {
        "waiting"
    } else {
        "starting"
    };
    let status = if overall == "active" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut body = serde_json::json!({"status": overall});
    if detail && words.len() > 1 {
        body["databases"] = words
            .iter()
            .map(|(id, w)| (id.clone(), serde_json::Value::from(*w)))
            .collect();
    }
    let mut res = (status, body.to_string()).into_response();
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

/// The methods a path answers, for `access-control-allow-methods`.
fn allowed_methods(path: &str) -> &'static str {
    match path {
        "/v1/shape" => "GET, POST, HEAD, DELETE, OPTIONS",
        "/v1/admin/database" => "GET, POST, HEAD, OPTIONS",
        p if p.starts_with("/v1/admin/database/") => "GET, DELETE, HEAD, OPTIONS",
        "/v1/admin/role" | "/v1/admin/api-key" => "GET, POST, HEAD, OPTIONS",
        p if p.starts_with("/v1/admin/role/") => "GET, PUT, DELETE, HEAD, OPTIONS",
        p if p.starts_with("/v1/admin/api-key/") => "GET, DELETE, HEAD, OPTIONS",
        _ => "GET, HEAD",
    }
}

/// CORS preflight of the admin API: 204, never authenticated; the key and JSON headers allowed.
async fn options_admin() -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("x-api-key, authorization, content-type"),
    );
    res
}

/// Headers on every response: server, request id (the client's, echoed, or a new one), CORS,
/// and a default cache-control for responses that set none; and the one log line of a failed
/// request's cause.
async fn common_headers(req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let request_id = shapesync_http1::client_request_id(req.headers());
    let is_options = req.method() == Method::OPTIONS;
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let mut res = next.run(req).await;
    // Errors with a cause are logged here, once, with the request id.
    error::log_error(
        &res,
        method.as_str(),
        &path,
        request_id.to_str().unwrap_or(""),
    );
    common_response_headers(res.headers_mut(), origin, request_id, &path, is_options);
    res
}

/// The headers every answer gets but the request id and `cache-control` (see
/// [`common_response_headers`]), wherever they are written.
pub(crate) fn common_headers_to(
    h: &mut impl response::HeaderOut,
    origin: Option<&[u8]>,
    path: &str,
) {
    h.put("electric-server", SERVER.as_bytes());
    h.put("access-control-allow-origin", origin.unwrap_or(b"*"));
    h.put(
        "access-control-allow-methods",
        allowed_methods(path).as_bytes(),
    );
    h.put("access-control-expose-headers", EXPOSE.as_bytes());
}

/// The headers every response gets (see [`common_headers`]); also used by answers held ready
/// (`memo`).
pub(crate) fn common_response_headers(
    h: &mut HeaderMap,
    origin: Option<HeaderValue>,
    request_id: HeaderValue,
    path: &str,
    is_options: bool,
) {
    common_headers_to(h, origin.as_ref().map(HeaderValue::as_bytes), path);
    h.insert("x-request-id", request_id);
    if is_options {
        h.remove(header::CACHE_CONTROL);
    } else if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, private, must-revalidate"),
        );
    }
}

//! `GET /v1/shape`: find or create the shape, seek its log (protocol.md §3.2), hold live
//! requests until durable data arrives or the long-poll times out, and answer with the exact
//! headers of §5.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Extension, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use shapesync_storage::{LogOffset, ReadResult};

use super::error::ApiError;
use super::params::{self, RequestOffset, ShapeRequest};
use super::parking::{ParkTicket, Parkable, Parked, Replayed};
use super::response::{cache_control, etag, if_none_match, CacheKind, Variant};
use super::subset_api::SubsetParts;
use super::AppState;
use crate::shape::definition::ShapeHandle;
use crate::shape::lifecycle::{read_archived, ArchivedChunk};
use crate::shape::message;
use crate::shape::{Lifecycle, Progress, Shape};
use crate::stack::Stack;
use crate::tenant::{ResolveError, Tenant};

/// Logs up to this size (snapshot and changes together) are read without the blocking pool.
const INLINE_READ_BYTES: u64 = 256 * 1024;

/// How long a request waits for a snapshot chunk to be written before answering 503.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

pub async fn get_shape(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    parkable: Option<Extension<Parkable>>,
    replayed: Option<Extension<Replayed>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.as_deref().unwrap_or("");
    let initial = form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "offset" && v == "-1");
    // A replayed parked request keeps the admission slot it parked with.
    let held = replayed.as_ref().and_then(|r| r.take_admitted());
    let admitted = match held {
        Some(a) => a,
        None => match app.admission.enter(initial) {
            Ok(a) => a,
            Err(e) => return e.into_response(),
        },
    };
    let subset = match SubsetParts::from_query(query) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let wait = Waiting {
        parkable: parkable.is_some(),
        since: replayed.map(|r| r.since),
    };
    let res = match serve(&app, &headers, peer, query, subset, wait).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    // A parked request stays admitted: the slot goes with its ticket.
    if let Some(parked) = res.extensions().get::<Parked>() {
        parked.set_admitted(admitted);
    }
    res
}

/// How a live request may wait: parked by its connection (see `parking`), and since when.
#[derive(Clone, Copy)]
struct Waiting {
    parkable: bool,
    since: Option<Instant>,
}

/// `POST /v1/shape`: the shape in the query string, a subset snapshot in the JSON body.
pub async fn post_shape(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    const MAX_BODY: usize = 1 << 20;
    let query = query.as_deref().unwrap_or("");
    let parts = async {
        if body.len() > MAX_BODY {
            return Err(ApiError::Body {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                error: "Request body too large".into(),
            });
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return SubsetParts::from_query(query).map(Option::unwrap_or_default);
        }
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::Body {
                status: StatusCode::BAD_REQUEST,
                error: format!("Invalid JSON in request body: {e}"),
            })?;
        let obj = value.as_object().ok_or(ApiError::Body {
            status: StatusCode::BAD_REQUEST,
            error: "Request body must be a JSON object".into(),
        })?;
        SubsetParts::from_object(obj)
    }
    .await;
    let parts = match parts {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let _admitted = match app.admission.enter(false) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let wait = Waiting {
        parkable: false,
        since: None,
    };
    match serve(&app, &headers, peer, query, Some(parts), wait).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `DELETE /v1/shape` (when enabled): invalidate a shape by definition, handle, or both.
pub async fn delete_shape(State(app): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    if !app.shape_deletion {
        return ApiError::Message {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "DELETE not allowed".into(),
        }
        .into_response();
    }
    let query = query.as_deref().unwrap_or("");
    let result = async {
        let tenant = authorized_tenant(&app, query)?;
        let req = params::parse_delete(query).map_err(ApiError::Invalid)?;
        let registry = &tenant.stack.registry;
        let by_handle = req.handle.as_deref().and_then(|h| h.parse::<ShapeHandle>().ok()).and_then(|h| registry.get(&h));
        let shape = match (&req.def, &req.handle) {
            (Some(def), Some(_)) => match by_handle {
                Some(s) if s.def == *def => s,
                Some(_) => {
                    return Err(ApiError::Message {
                        status: StatusCode::BAD_REQUEST,
                        message: "The specified shape definition and handle do not match. Please ensure the shape definition is correct or omit the shape handle from the request to obtain a new one.".into(),
                    })
                }
                None => return Err(not_found()),
            },
            (Some(def), None) => registry.live(def).ok_or_else(not_found)?,
            (None, _) => by_handle.ok_or_else(not_found)?,
        };
        tenant.stack.invalidate(&shape.handle);
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("electric-has-data", HeaderValue::from_static("true"));
        Ok::<_, ApiError>((StatusCode::ACCEPTED, h).into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

fn not_found() -> ApiError {
    ApiError::Message {
        status: StatusCode::NOT_FOUND,
        message: "No existing shape found".into(),
    }
}

/// The tenant a shape request names (`database_id`), once its secret checks out.
fn authorized_tenant(app: &AppState, query: &str) -> Result<Arc<Tenant>, ApiError> {
    let (database_id, secret) = tenant_and_secret(query);
    let tenant = app
        .tenants
        .resolve(database_id.as_deref())
        .map_err(|e| match e {
            ResolveError::NotProvided => ApiError::message(StatusCode::BAD_REQUEST, e.to_string()),
            ResolveError::NotFound => ApiError::UnknownDatabase(e.to_string()),
        })?;
    app.access
        .check_secret(tenant.record.secret.as_deref(), secret.as_deref())?;
    Ok(tenant)
}

/// The tenant (`database_id`) and secret (`secret`, or the deprecated `api_secret`) of a query.
fn tenant_and_secret(query: &str) -> (Option<String>, Option<String>) {
    let (mut id, mut secret, mut api_secret) = (None, None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "database_id" => id = Some(v.into_owned()),
            "secret" => secret = Some(v.into_owned()),
            "api_secret" => api_secret = Some(v.into_owned()),
            _ => {}
        }
    }
    (id, secret.or(api_secret))
}

/// A response decided before it is written.
enum Outcome {
    Data {
        shape: Arc<Shape>,
        entries: Vec<bytes::Bytes>,
        end: LogOffset,
        up_to_date: Option<u64>,
        has_data: bool,
        /// The chunk's compacted form (`None`: an empty answer, unique each time).
        compacted: Option<bool>,
    },
    /// The handle is stale: refetch the active shape (None: the database itself is gone).
    MustRefetch(Option<Arc<Shape>>),
    /// A sealed chunk of a shape not held locally, served from the object store.
    Archived(ArchivedChunk),
    /// Live over Server-Sent Events from this offset.
    Sse(Arc<Shape>, LogOffset),
    /// A subset snapshot of the shape.
    Subset(Arc<Shape>, SubsetParts),
    /// Nothing new yet: the connection parks the request (see `parking`).
    Park(ParkTicket),
}

async fn serve(
    app: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    query: &str,
    subset: Option<SubsetParts>,
    wait: Waiting,
) -> Result<Response, ApiError> {
    let tenant = match authorized_tenant(app, query) {
        Ok(t) => t,
        // A parked request whose database was removed while it waited: refetch (and learn).
        Err(ApiError::UnknownDatabase(_)) if wait.since.is_some() => {
            let req = params::parse(query).map_err(ApiError::Invalid)?;
            return Ok(must_refetch(&req, None));
        }
        Err(e) => return Err(e),
    };
    let req = params::parse(query).map_err(ApiError::Invalid)?;
    let ip = app.access.client_ip(peer, headers);
    if req.live_sse && subset.is_some() {
        return Err(ApiError::InvalidSubset(
            "live_sse",
            "subset snapshots cannot be live".into(),
        ));
    }
    let outcome = decide(app, &tenant.stack, &req, ip, subset, wait).await?;
    Ok(match outcome {
        Outcome::Park(ticket) => {
            let mut res = Response::new(Body::empty());
            res.extensions_mut().insert(Parked::new(ticket));
            res
        }
        Outcome::MustRefetch(active) => must_refetch(&req, active.as_deref()),
        Outcome::Archived(found) => respond(
            app,
            headers,
            &req,
            (found.handle.as_str(), &found.schema_header),
            found.chunk.entries,
            found.chunk.end,
            None,
            true,
            Some(found.chunk.compacted),
        ),
        Outcome::Subset(shape, parts) => {
            super::subset_api::respond(app, &tenant.stack, shape, parts).await?
        }
        Outcome::Sse(shape, from) => {
            super::sse::respond(app, Arc::clone(&tenant.stack), shape, &req, from)
        }
        Outcome::Data {
            shape,
            entries,
            end,
            up_to_date,
            has_data,
            compacted,
        } => respond(
            app,
            headers,
            &req,
            (shape.handle.as_str(), &shape.schema_header),
            entries,
            end,
            up_to_date,
            has_data,
            compacted,
        ),
    })
}

/// The live shape for the request's definition; creating one is rate limited per client.
async fn live_shape(
    app: &AppState,
    stack: &Stack,
    req: &ShapeRequest,
    ip: IpAddr,
) -> Result<Arc<Shape>, ApiError> {
    if let Some(s) = stack.registry.live(&req.def) {
        return Ok(s);
    }
    app.access.check_create(ip)?;
    Ok(stack.get_or_create(&req.def).await?)
}

/// 409 pointing at the shape that replaces a stale one. When no replacement can be made (the
/// table was dropped or no longer fits the definition), the 409 names none: the client's refetch
/// then gets the 400 saying why.
async fn replacement(
    app: &AppState,
    stack: &Stack,
    req: &ShapeRequest,
    ip: IpAddr,
) -> Result<Outcome, ApiError> {
    match live_shape(app, stack, req, ip).await {
        Ok(shape) => Ok(Outcome::MustRefetch(Some(shape))),
        Err(ApiError::Invalid(_)) => Ok(Outcome::MustRefetch(None)),
        Err(e) => Err(e),
    }
}

async fn decide(
    app: &AppState,
    stack: &Stack,
    req: &ShapeRequest,
    ip: IpAddr,
    subset: Option<SubsetParts>,
    wait: Waiting,
) -> Result<Outcome, ApiError> {
    let requested = match req.offset {
        RequestOffset::Now => None,
        RequestOffset::At(o) => Some(o),
    };
    let shape = match (&req.handle, requested) {
        (Some(h), Some(at)) => {
            let handle: ShapeHandle = h
                .parse()
                .map_err(|()| ApiError::field("handle", "has invalid format"))?;
            match stack.registry.get(&handle) {
                Some(s) if s.def == req.def && s.is_active() => s,
                // Deleted or rotated (perhaps its table was dropped): refetch the replacement.
                Some(s) if s.def == req.def => return replacement(app, stack, req, ip).await,
                // A parked request whose shape went away while it waited: the same.
                None if wait.since.is_some() => return replacement(app, stack, req, ip).await,
                // Not held here: archived, or another process's. The object store may hold
                // the sealed chunk asked for (catch-up reads only).
                None if subset.is_none()
                    && !req.live_sse
                    && stack.lifecycle.tier.is_some()
                    && !stack.registry.is_being_deleted(&handle) =>
                {
                    if let Some(tier) = &stack.lifecycle.tier {
                        if let Some(found) =
                            read_archived(tier, &stack.archived_manifests, &handle, &req.def, at)
                                .await
                        {
                            return Ok(Outcome::Archived(found));
                        }
                    }
                    return Ok(Outcome::MustRefetch(Some(
                        live_shape(app, stack, req, ip).await?,
                    )));
                }
                // Unknown, or another definition's: refetch the active one.
                _ => {
                    return Ok(Outcome::MustRefetch(Some(
                        live_shape(app, stack, req, ip).await?,
                    )))
                }
            }
        }
        _ => live_shape(app, stack, req, ip).await?,
    };
    shape.touch();
    let Some(requested) = requested else {
        // offset=now: the current end, immediately.
        let latest = shape.log.latest_offset();
        return Ok(Outcome::Data {
            up_to_date: Some(stack.latest_lsn().max(latest.tx())),
            shape,
            entries: Vec::new(),
            end: latest,
            has_data: false,
            compacted: None,
        });
    };

    if let Some(parts) = subset {
        return Ok(Outcome::Subset(shape, parts));
    }
    if req.live_sse {
        return Ok(Outcome::Sse(shape, requested));
    }
    let mut progress = shape.subscribe();
    let started = wait.since.unwrap_or_else(Instant::now);
    let long_poll = app.long_poll;
    let mut shutdown = stack.shutdown_signal();
    loop {
        let observed = progress.borrow_and_update();
        match check_state(&observed) {
            Ok(()) => {}
            Err(State2::Gone) if stack.is_stopped() => return Ok(Outcome::MustRefetch(None)),
            Err(State2::Gone) => return replacement(app, stack, req, ip).await,
            Err(State2::Rejected(msg)) => {
                return Err(ApiError::field(
                    "where",
                    format!("the where clause fails on the table's rows: {msg}"),
                ));
            }
            Err(State2::Failed(msg)) => {
                tracing::warn!(handle = %shape.handle, error = %msg, "serving a failed shape");
                return Err(ApiError::Unavailable {
                    message: "Failed to create the shape's snapshot, please retry".into(),
                    retry_after: 10,
                    known: true,
                    cause: None,
                });
            }
        }
        let read = if shape.log.size_bytes() <= INLINE_READ_BYTES {
            // A small log is read on this thread (a page-cache read of a few KB takes
            // microseconds; handing it to the blocking pool cost a thread switch each way,
            // most of a cached chunk request's CPU: target P9).
            shape.log.read(requested)
        } else {
            let s = Arc::clone(&shape);
            tokio::task::spawn_blocking(move || s.log.read(requested))
                .await
                .map_err(ApiError::internal)?
        };
        let read = match read {
            Ok(read) => read,
            // Its files were removed under the read (deleted, rotated or archived meanwhile:
            // log files are opened on demand): the shape is gone, not broken.
            Err(_) if !shape.is_active() => continue,
            Err(e) => return Err(ApiError::internal(e)),
        };
        let latest = shape.log.latest_offset();
        let (wait_until, timeout_outcome) = match read {
            ReadResult::NotReady => (started + SNAPSHOT_WAIT, None),
            ReadResult::Chunk {
                entries,
                end,
                compacted,
            } => {
                let head = end >= latest.max(requested) && !requested.is_before_all();
                let out_of_bounds = requested > latest
                    && !requested.is_snapshot()
                    && requested.tx() > stack.latest_lsn();
                if !entries.is_empty() || (!req.live && !out_of_bounds) {
                    let lsn = if req.live {
                        end.tx()
                    } else {
                        stack.latest_lsn().max(end.tx())
                    };
                    return Ok(Outcome::Data {
                        shape,
                        entries,
                        end,
                        up_to_date: head.then_some(lsn),
                        has_data: true,
                        compacted: Some(compacted),
                    });
                }
                if out_of_bounds {
                    if started.elapsed() >= long_poll / 2 {
                        return Err(ApiError::field("offset", "out of bounds for this shape"));
                    }
                    (started + long_poll / 2, None)
                } else {
                    // Live and nothing new yet: wait; on timeout answer up-to-date at `end`.
                    (started + long_poll, Some(end))
                }
            }
        };
        if wait.parkable && timeout_outcome.is_some() && wait_until > Instant::now() {
            return Ok(Outcome::Park(ParkTicket {
                shape,
                observed,
                deadline: wait_until,
                admitted: None,
                gauge: app.metrics.parked(),
            }));
        }
        let _parked = req.live.then(|| app.metrics.parked());
        let woke = tokio::select! {
            r = tokio::time::timeout_at(wait_until.into(), progress.changed()) => r.is_ok(),
            _ = crate::stack::stopping(&mut shutdown) => false,
        };
        if !woke {
            if stack.is_stopped() && !shape.is_active() {
                return Ok(Outcome::MustRefetch(None));
            }
            if let Some(end) = timeout_outcome {
                return Ok(Outcome::Data {
                    shape,
                    entries: Vec::new(),
                    end,
                    up_to_date: Some(stack.latest_lsn().max(end.tx())),
                    has_data: false,
                    compacted: None,
                });
            }
            if started.elapsed() >= SNAPSHOT_WAIT {
                return Err(ApiError::Unavailable {
                    message: "The shape's snapshot is taking too long, please retry".into(),
                    retry_after: 5,
                    known: true,
                    cause: None,
                });
            }
        }
    }
}

enum State2 {
    Gone,
    Failed(String),
    Rejected(String),
}

fn check_state(p: &Progress) -> Result<(), State2> {
    match &p.state {
        Lifecycle::Active => Ok(()),
        Lifecycle::Gone => Err(State2::Gone),
        Lifecycle::Failed(m) => Err(State2::Failed(m.to_string())),
        Lifecycle::Rejected(m) => Err(State2::Rejected(m.to_string())),
    }
}

#[allow(clippy::too_many_arguments)]
fn respond(
    app: &AppState,
    headers: &HeaderMap,
    req: &ShapeRequest,
    (handle, schema_header): (&str, &str),
    entries: Vec<bytes::Bytes>,
    end: LogOffset,
    up_to_date: Option<u64>,
    has_data: bool,
    compacted: Option<bool>,
) -> Response {
    let end_text = end.to_string();
    let variant = match compacted {
        Some(false) => Variant::Stored,
        Some(true) => Variant::Compacted,
        None => Variant::Unique(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        ),
    };
    let tag = etag(handle, &req.offset_text, &end_text, variant);
    let kind = if req.offset == RequestOffset::At(LogOffset::BEFORE_ALL) {
        CacheKind::Initial
    } else if req.live {
        CacheKind::Live
    } else {
        CacheKind::Catchup
    };
    let mut h = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    h.insert("electric-handle", hv(handle));
    h.insert("electric-offset", hv(&end_text));
    if req.live {
        let cursor = app.next_cursor(req.cursor.as_deref());
        h.insert("electric-cursor", HeaderValue::from(cursor));
    }
    if up_to_date.is_some() {
        h.insert("electric-up-to-date", HeaderValue::from_static(""));
    }
    h.insert(
        "electric-has-data",
        HeaderValue::from_static(if has_data { "true" } else { "false" }),
    );
    h.insert(header::ETAG, hv(&tag));
    h.insert(
        header::CACHE_CONTROL,
        hv(&cache_control(kind, app.cache_ages)),
    );
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if if_none_match(inm, &tag) {
            return (StatusCode::NOT_MODIFIED, h).into_response();
        }
    }
    if !req.live {
        h.insert("electric-schema", hv(schema_header));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let mut body = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum::<usize>() + 96);
    body.push(b'[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    if let Some(lsn) = up_to_date {
        if !entries.is_empty() {
            body.push(b',');
        }
        body.extend_from_slice(&message::up_to_date(lsn));
    }
    body.push(b']');
    (StatusCode::OK, h, Body::from(body)).into_response()
}

/// 409: the handle is stale; point the client at the active one (if the database still exists).
fn must_refetch(req: &ShapeRequest, active: Option<&Shape>) -> Response {
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    match active {
        // The database is gone: no replacement to point at.
        None => {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=1, must-revalidate"),
            );
        }
        Some(active) => {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &req.raw {
                if !matches!(
                    k.as_str(),
                    "offset" | "handle" | "live" | "cursor" | "live_sse" | "experimental_live_sse"
                ) {
                    ser.append_pair(k, v);
                }
            }
            ser.append_pair("handle", active.handle.as_str());
            ser.append_pair("offset", "-1");
            let location = format!("/v1/shape?{}", ser.finish());
            h.insert("electric-handle", hv(active.handle.as_str()));
            h.insert(header::LOCATION, hv(&location));
            h.insert(header::ETAG, hv(&format!("\"{}::\"", active.handle)));
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60, must-revalidate"),
            );
        }
    }
    (
        StatusCode::CONFLICT,
        h,
        r#"[{"headers":{"control":"must-refetch"}}]"#,
    )
        .into_response()
}

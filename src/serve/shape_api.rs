//! `GET /v1/shape`: find or create the shape, seek its log (protocol.md §3.2), hold live
//! requests until durable data arrives or the long-poll times out, and answer with the exact
//! headers of §5.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use shapesync_auth::Verb;
use shapesync_http1::{Change, ParkTicket, Parkable, Parked, Ready, Replayed, Waitable};
use shapesync_storage::LogOffset;

use super::admission::Admitted;
use super::authz;
use super::error::ApiError;
use super::params::{self, RequestOffset, ShapeRequest};
use super::response::{
    cache_control, etag, if_none_match, CacheKind, HeadBytes, HeaderOut, Variant,
};
use super::subset_api::SubsetParts;
use super::AppState;
use crate::metrics::ActiveGuard;
use crate::read::{decide, Outcome, ReadCtx, ReadError, Waiting};
use crate::shape::definition::ShapeHandle;
use crate::shape::message;
use crate::shape::{Progress, Shape};

/// What a parked request carries back to its replay: its admission slot (a parked request
/// stays admitted), and the parked-requests gauge it counts in while it waits.
struct ParkCarry {
    admitted: Admitted,
    _gauge: ActiveGuard,
}

/// A parked request waits on its shape's progress moving on from what its handler read.
struct ShapeWait {
    shape: Arc<Shape>,
    observed: Progress,
}

impl Waitable for ShapeWait {
    fn key(&self) -> u64 {
        // FNV-1a of the handle: requests on one shape share one watcher.
        self.shape
            .handle
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
    }

    fn next_change(&self) -> Option<Change> {
        // Subscribed before the comparison: a change after it wakes the watcher.
        let mut rx = self.shape.subscribe();
        if rx.current() != self.observed {
            return None;
        }
        Some(Box::pin(async move {
            // An error means the shape itself is gone: its waiters replay too (and get 409).
            let _ = rx.changed().await;
        }))
    }
}

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
    // A replayed parked request keeps the admission slot it parked with (its gauge ends).
    let held = replayed
        .as_ref()
        .and_then(|r| r.take_carry::<ParkCarry>())
        .map(|c| c.admitted);
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
        parked.set_carry(Box::new(ParkCarry {
            admitted,
            _gauge: app.metrics.parked(),
        }));
    }
    res
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
pub async fn delete_shape(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !app.shape_deletion {
        return ApiError::Message {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "DELETE not allowed".into(),
        }
        .into_response();
    }
    let query = query.as_deref().unwrap_or("");
    let result = async {
        let (tenant, grant) = authz::authenticate(&app, &headers, query).await?;
        let mut req = params::parse_delete(query).map_err(ApiError::Invalid)?;
        if let authz::Grant::Role(_) = grant {
            // A role deletes only the shape it would read: named by its definition.
            let Some(def) = req.def.as_mut() else {
                return Err(authz::forbidden(
                    "Deleting a shape by handle alone needs full access: name its table (and where clause, columns).",
                ));
            };
            authz::apply_def(&grant, tenant.record.id.as_str(), def, Verb::Delete)?;
        }
        let registry = &tenant.stack.registry;
        let by_handle = req.handle.as_deref().and_then(|h| h.parse::<ShapeHandle>().ok()).and_then(|h| registry.get(&h));
        let shape = match (&req.def, &req.handle) {
            (Some(def), Some(_)) => match by_handle {
                Some(s) if s.def == *def => s,
                // Under a role, another caller's handle is no business of this one.
                Some(_) if matches!(grant, authz::Grant::Role(_)) => return Err(not_found()),
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

async fn serve(
    app: &Arc<AppState>,
    headers: &HeaderMap,
    peer: SocketAddr,
    query: &str,
    subset: Option<SubsetParts>,
    wait: Waiting,
) -> Result<Response, ApiError> {
    let (tenant, grant) = match authz::authenticate(app, headers, query).await {
        Ok(t) => t,
        // A parked request whose database was removed while it waited: refetch (and learn).
        Err(ApiError::UnknownDatabase(_)) if wait.since.is_some() => {
            let req = params::parse(query).map_err(ApiError::Invalid)?;
            return Ok(must_refetch(&req, None));
        }
        Err(e) => return Err(e),
    };
    let mut req = params::parse(query).map_err(ApiError::Invalid)?;
    let verb = if subset.is_some() {
        Verb::Subset
    } else {
        Verb::Read
    };
    let allowed = authz::apply(&grant, tenant.record.id.as_str(), &mut req, verb)
        .map_err(|e| app.auth.denied(e))?;
    if let (Some(allowed), Some(parts)) = (&allowed, &subset) {
        authz::check_subset_columns(
            allowed,
            parts.where_clause.as_deref(),
            parts.order_by.as_deref(),
        )
        .map_err(|e| app.auth.denied(e))?;
    }
    let ip = app.access.client_ip(peer, headers);
    if req.live_sse && subset.is_some() {
        return Err(ApiError::InvalidSubset(
            "live_sse",
            "subset snapshots cannot be live".into(),
        ));
    }
    let allow_create = move || {
        app.access.check_create(ip).map_err(|e| match e {
            ApiError::RateLimited { retry_after } => retry_after,
            _ => 1,
        })
    };
    let waiting = || app.metrics.parked();
    let still_allowed = || match &grant {
        authz::Grant::Full => true,
        authz::Grant::Role(g) => g.still_valid(&app.auth.store),
    };
    let cx = ReadCtx {
        stack: &tenant.stack,
        long_poll: app.long_poll,
        allow_create: &allow_create,
        waiting: &waiting,
        still_allowed: &still_allowed,
    };
    let outcome = decide(&cx, &req, subset.is_some(), wait)
        .await
        .map_err(api_error)?;
    // Under a column allow-list, the client's clause must type on the table seen with those
    // columns only (what a name check cannot promise), and the table's rows must be keyed by
    // allowed columns (a table without a primary key is keyed by all of them).
    if let Some(allowed) = &allowed {
        let table = match &outcome {
            Outcome::Park { shape, .. }
            | Outcome::Data { shape, .. }
            | Outcome::Subset(shape)
            | Outcome::Sse(shape, _) => Some(&shape.table),
            Outcome::Archived(found) => Some(&found.table),
            Outcome::MustRefetch(_) => None,
        };
        if let Some(table) = table {
            authz::check_table(allowed, &req.def, table).map_err(|e| app.auth.denied(e))?;
        }
    }
    let private = matches!(grant, authz::Grant::Role(_));
    let mut res = match outcome {
        Outcome::Park {
            shape,
            observed,
            deadline,
        } => {
            let reply = match req.offset {
                RequestOffset::At(requested) if req.live => {
                    let origin = headers.get(header::ORIGIN).cloned();
                    let inm = headers.get(header::IF_NONE_MATCH).cloned();
                    Some(FastReply {
                        app: Arc::clone(app),
                        stack: Arc::clone(&tenant.stack),
                        shape: Arc::clone(&shape),
                        role: match grant {
                            authz::Grant::Full => None,
                            authz::Grant::Role(g) => Some(Box::new(g)),
                        },
                        requested,
                        offset_text: (req.offset_text != requested.to_string())
                            .then(|| req.offset_text.as_str().into()),
                        cursor: req.cursor.as_deref().map(Into::into),
                        extra: (origin.is_some() || inm.is_some()).then(|| Box::new((origin, inm))),
                    })
                }
                _ => None,
            };
            let mut res = Response::new(Body::empty());
            res.extensions_mut().insert(Parked::new(ParkTicket {
                wait: Box::new(ShapeWait { shape, observed }),
                deadline,
                carry: None,
                reply: reply.map(|r| Box::new(move || r.answer()) as shapesync_http1::Reply),
            }));
            res
        }
        Outcome::MustRefetch(active) => must_refetch(&req, active.as_deref()),
        Outcome::Archived(found) => respond(
            app,
            &Asked::of(&req, headers),
            (found.handle.as_str(), &found.schema_header),
            found.chunk.entries,
            found.chunk.end,
            None,
            true,
            Some(found.chunk.compacted),
        ),
        Outcome::Subset(shape) => {
            let parts = subset.unwrap_or_default();
            super::subset_api::respond(
                app,
                &tenant.stack,
                shape,
                parts,
                req.queryable_columns.as_deref(),
            )
            .await?
        }
        Outcome::Sse(shape, from) => {
            let allowed: super::sse::StillAllowed = match grant {
                authz::Grant::Full => Box::new(|| true),
                authz::Grant::Role(g) => {
                    let store = Arc::clone(&app.auth.store);
                    Box::new(move || g.still_valid(&store))
                }
            };
            super::sse::respond(app, Arc::clone(&tenant.stack), shape, &req, from, allowed)
        }
        Outcome::Data {
            shape,
            entries,
            end,
            up_to_date,
            has_data,
            compacted,
        } => {
            // A sealed snapshot chunk is the same bytes for as long as the shape lives: a
            // repeated request for it may be answered from `memo`.
            let sealed_snapshot = end.is_snapshot()
                && end.op().is_some()
                && up_to_date.is_none()
                && compacted == Some(false)
                && !req.live;
            let mut h = HeaderMap::new();
            let data = Data {
                shape: (shape.handle.as_str(), &shape.schema_header),
                entries,
                end,
                up_to_date,
                has_data,
                compacted,
            };
            let (status, body) = answer(app, &Asked::of(&req, headers), data, private, &mut h);
            match body {
                Some(body) => {
                    if sealed_snapshot && !private {
                        let target = format!("/v1/shape?{query}");
                        app.memo
                            .offer(&target, headers, &shape, &tenant.stack, status, &h, &body);
                    }
                    (status, h, Body::from(body)).into_response()
                }
                None => (status, h).into_response(),
            }
        }
    };
    if private {
        authz::private_cache(res.headers_mut());
    }
    Ok(res)
}

/// What a data answer depends on in the request.
struct Asked<'a> {
    offset_text: &'a str,
    initial: bool,
    live: bool,
    cursor: Option<&'a str>,
    if_none_match: Option<&'a str>,
}

impl<'a> Asked<'a> {
    fn of(req: &'a ShapeRequest, headers: &'a HeaderMap) -> Self {
        Asked {
            offset_text: &req.offset_text,
            initial: req.offset == RequestOffset::At(LogOffset::BEFORE_ALL),
            live: req.live,
            cursor: req.cursor.as_deref(),
            if_none_match: headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok()),
        }
    }
}

/// A parked live request's own answer to the change that woke it: what its replay through
/// the router would answer when new entries are there (the same `respond`, and the headers
/// every response gets), without parsing, authenticating and deciding again. Anything else
/// (no entries, a shape gone or rotated, a credential no longer valid, a stopped database)
/// leaves it to the replay.
///
/// Kept small (it waits with every parked request, target P8): what is rare is boxed, and the
/// request id comes from the connection when it answers.
struct FastReply {
    app: Arc<AppState>,
    stack: Arc<crate::stack::Stack>,
    shape: Arc<Shape>,
    /// The role's grant (None: full access).
    role: Option<Box<authz::RoleGrant>>,
    requested: LogOffset,
    /// The offset as sent, when it is not `requested`'s canonical text.
    offset_text: Option<Box<str>>,
    cursor: Option<Box<str>>,
    /// `origin` and `if-none-match`, when the request had either.
    extra: Option<Box<(Option<HeaderValue>, Option<HeaderValue>)>>,
}

impl FastReply {
    /// The answer, held ready for the connection (which adds the request id); `None` leaves
    /// the request to its replay (as do a 304 and anything but new entries).
    fn answer(self) -> Option<Ready> {
        let started = std::time::Instant::now();
        if let Some(g) = &self.role {
            if !g.still_valid(&self.app.auth.store) {
                return None;
            }
        }
        if self.stack.is_stopped() || !self.shape.is_active() {
            return None;
        }
        let (origin, if_none_match) = match self.extra {
            Some(extra) => *extra,
            None => (None, None),
        };
        if if_none_match.is_some() {
            return None;
        }
        let shapesync_storage::ReadResult::Chunk {
            entries,
            end,
            compacted,
        } = self.shape.log.read(self.requested).ok()?
        else {
            return None;
        };
        if entries.is_empty() {
            return None;
        }
        self.shape.touch();
        let latest = self.shape.log.latest_offset();
        let head = end >= latest.max(self.requested) && !self.requested.is_before_all();
        let canonical;
        let offset_text = match &self.offset_text {
            Some(t) => &**t,
            None => {
                canonical = self.requested.to_string();
                &canonical
            }
        };
        let asked = Asked {
            offset_text,
            initial: false,
            live: true,
            cursor: self.cursor.as_deref(),
            if_none_match: None,
        };
        let mut h = HeadBytes::new(StatusCode::OK);
        let data = Data {
            shape: (self.shape.handle.as_str(), &self.shape.schema_header),
            entries,
            end,
            up_to_date: head.then_some(end.tx()),
            has_data: true,
            compacted: Some(compacted),
        };
        let (status, body) = answer(&self.app, &asked, data, self.role.is_some(), &mut h);
        let body = body.filter(|_| status == StatusCode::OK)?;
        super::common_headers_to(
            &mut h,
            origin.as_ref().map(HeaderValue::as_bytes),
            "/v1/shape",
        );
        self.app
            .metrics
            .record("shape", status.as_u16(), started.elapsed());
        Some(Ready {
            head: h.finish(),
            body,
        })
    }
}

/// A data answer through the router.
#[allow(clippy::too_many_arguments)]
fn respond(
    app: &AppState,
    asked: &Asked<'_>,
    shape: (&str, &str),
    entries: Vec<bytes::Bytes>,
    end: LogOffset,
    up_to_date: Option<u64>,
    has_data: bool,
    compacted: Option<bool>,
) -> Response {
    let mut h = HeaderMap::new();
    let data = Data {
        shape,
        entries,
        end,
        up_to_date,
        has_data,
        compacted,
    };
    match answer(app, asked, data, false, &mut h) {
        (status, Some(body)) => (status, h, Body::from(body)).into_response(),
        (status, None) => (status, h).into_response(),
    }
}

/// What a data answer holds: the shape (handle, schema header), the entries and where they
/// end, and how they end.
struct Data<'a> {
    shape: (&'a str, &'a str),
    entries: Vec<bytes::Bytes>,
    end: LogOffset,
    up_to_date: Option<u64>,
    has_data: bool,
    /// The chunk's compacted form (`None`: an empty answer, unique each time).
    compacted: Option<bool>,
}

/// A data answer: its headers go to `h`; its status and body (none for a 304). `private`:
/// a role's answer (cache directives as [`authz::private_cache`] makes them).
fn answer(
    app: &AppState,
    asked: &Asked<'_>,
    data: Data<'_>,
    private: bool,
    h: &mut impl HeaderOut,
) -> (StatusCode, Option<bytes::Bytes>) {
    let Data {
        shape: (handle, schema_header),
        entries,
        end,
        up_to_date,
        has_data,
        compacted,
    } = data;
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
    let tag = etag(handle, asked.offset_text, &end_text, variant);
    let kind = if asked.initial {
        CacheKind::Initial
    } else if asked.live {
        CacheKind::Live
    } else {
        CacheKind::Catchup
    };
    h.put("electric-handle", handle.as_bytes());
    h.put("electric-offset", end_text.as_bytes());
    if asked.live {
        let cursor = app.next_cursor(asked.cursor);
        h.put("electric-cursor", cursor.to_string().as_bytes());
    }
    if up_to_date.is_some() {
        h.put("electric-up-to-date", b"");
    }
    h.put(
        "electric-has-data",
        if has_data { b"true" } else { b"false" },
    );
    h.put("etag", tag.as_bytes());
    let mut cc = cache_control(kind, app.cache_ages);
    if private {
        if let Some(p) = authz::private_directives(&cc) {
            cc = p.into();
        }
        h.put("vary", authz::PRIVATE_VARY.as_bytes());
    }
    h.put("cache-control", cc.as_bytes());
    if let Some(inm) = asked.if_none_match {
        if if_none_match(inm, &tag) {
            return (StatusCode::NOT_MODIFIED, None);
        }
    }
    if !asked.live {
        h.put("electric-schema", schema_header.as_bytes());
    }
    h.put("content-type", b"application/json; charset=utf-8");
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
    (StatusCode::OK, Some(body.into()))
}

/// The answer to a request that cannot get data.
fn api_error(e: ReadError) -> ApiError {
    match e {
        ReadError::Invalid(field, msg) => ApiError::field(field, msg),
        ReadError::Shape(e) => e.into(),
        ReadError::RateLimited { retry_after } => ApiError::RateLimited { retry_after },
        ReadError::SnapshotFailed => ApiError::Unavailable {
            message: "Failed to create the shape's snapshot, please retry".into(),
            retry_after: 10,
            known: true,
            cause: None,
        },
        ReadError::SnapshotSlow => ApiError::Unavailable {
            message: "The shape's snapshot is taking too long, please retry".into(),
            retry_after: 5,
            known: true,
            cause: None,
        },
        e @ ReadError::Storage(_) => ApiError::internal(e),
        ReadError::Revoked => authz::invalid("The credential is no longer valid."),
    }
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

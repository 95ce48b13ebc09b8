//! The admin API (`/v1/admin/database`): add, list, show and remove the source databases this
//! process serves. Guarded by the admin key and rate limited (see `access`). Answers follow the
//! seed OpenAPI: a JSON string with the database id on success, the reference's messages on
//! failure. Connection strings are never returned: only `user@host:port/db`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::params::FieldErrors;
use super::AppState;
use crate::tenant::{status_word, AdminError, DatabaseId, Tenant, TenantRecord};

/// Request bodies larger than this are refused (413).
const MAX_BODY: usize = 64 * 1024;

pub(super) fn ok_json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::AlreadyExists(_) | AdminError::InUse(_) => ApiError::AdminText {
            status: StatusCode::BAD_REQUEST,
            text: e.to_string(),
        },
        AdminError::SameDatabase(_) => ApiError::AdminText {
            status: StatusCode::CONFLICT,
            text: e.to_string(),
        },
        AdminError::NotFound(_) => ApiError::AdminText {
            status: StatusCode::NOT_FOUND,
            text: e.to_string(),
        },
        AdminError::Invalid(field, msg) => {
            let mut m = FieldErrors::new();
            m.insert(field, vec![msg]);
            ApiError::AdminFields(m)
        }
        AdminError::Internal(why) => ApiError::internal(why),
    }
}

fn guard(app: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
    let ip = app.access.client_ip(peer, headers);
    app.access.check_admin(headers, ip)
}

/// `POST /v1/admin/database` with `{database_url, database_id?, database_use_ipv6?, secret?}`.
pub async fn add(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        guard(&app, &headers, peer)?;
        if body.len() > MAX_BODY {
            return Ok(ok_json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": "Request body too large"}),
            ));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::Message {
                status: StatusCode::BAD_REQUEST,
                message: format!("Invalid JSON in request body: {e}"),
            })?;
        let obj = value.as_object().ok_or(ApiError::Message {
            status: StatusCode::BAD_REQUEST,
            message: "Request body must be a JSON object".into(),
        })?;
        let rec = parse_record(obj)?;
        let id = app.tenants.add(rec).await.map_err(admin_error)?;
        Ok(ok_json(
            StatusCode::OK,
            serde_json::Value::String(id.to_string()),
        ))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| e.into_response())
}

fn parse_record(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<TenantRecord, ApiError> {
    let mut errors = FieldErrors::new();
    let database_url = match obj.get("database_url") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        None | Some(serde_json::Value::Null) => {
            errors.insert("database_url", vec!["can't be blank".into()]);
            None
        }
        Some(serde_json::Value::String(_)) => {
            errors.insert("database_url", vec!["can't be blank".into()]);
            None
        }
        Some(_) => {
            errors.insert("database_url", vec!["is invalid".into()]);
            None
        }
    };
    if let Some(url) = &database_url {
        if let Err(e) = crate::postgres::connect::SourceDb::parse(url) {
            errors.insert("database_url", vec![e.to_string()]);
        }
    }
    let id = match obj.get("database_id") {
        None | Some(serde_json::Value::Null) => Some(DatabaseId::generate()),
        Some(serde_json::Value::String(s)) => match s.parse::<DatabaseId>() {
            Ok(id) => Some(id),
            Err(e) => {
                errors.insert("database_id", vec![e.to_string()]);
                None
            }
        },
        Some(_) => {
            errors.insert("database_id", vec!["is invalid".into()]);
            None
        }
    };
    let use_ipv6 = match obj.get("database_use_ipv6") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => {
            errors.insert("database_use_ipv6", vec!["is invalid".into()]);
            false
        }
    };
    let secret = match obj.get("secret") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            errors.insert("secret", vec!["is invalid".into()]);
            None
        }
    };
    match (database_url, id) {
        (Some(database_url), Some(id)) if errors.is_empty() => Ok(TenantRecord {
            id,
            database_url,
            use_ipv6,
            secret,
            identity: None,
        }),
        _ => Err(ApiError::AdminFields(errors)),
    }
}

/// `DELETE /v1/admin/database/{database_id}`
pub async fn remove(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        guard(&app, &headers, peer)?;
        app.tenants.remove(&id).await.map_err(admin_error)?;
        Ok(ok_json(StatusCode::OK, serde_json::Value::String(id)))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| e.into_response())
}

fn describe(t: &Tenant) -> serde_json::Value {
    let status = t.stack.status();
    serde_json::json!({
        "database_id": t.record.id.to_string(),
        "database": t.stack.db().redacted(),
        "status": status_word(&status),
        "shapes": t.stack.registry.len(),
        "use_ipv6": t.record.use_ipv6,
        "replication_lag_bytes": t.stack.stats.lag_bytes(),
    })
}

/// `GET /v1/admin/database`: every database, credentials redacted.
pub async fn list(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = guard(&app, &headers, peer) {
        return e.into_response();
    }
    let all: Vec<serde_json::Value> = app.tenants.all().iter().map(|t| describe(t)).collect();
    ok_json(StatusCode::OK, serde_json::Value::Array(all))
}

/// `GET /v1/admin/database/{database_id}`
pub async fn show(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = guard(&app, &headers, peer) {
        return e.into_response();
    }
    match app.tenants.resolve(Some(&id)) {
        Ok(t) => ok_json(StatusCode::OK, describe(&t)),
        Err(_) => ApiError::AdminText {
            status: StatusCode::NOT_FOUND,
            text: format!("Database {id} not found."),
        }
        .into_response(),
    }
}

//! The admin API of authorization: roles (`/v1/admin/role`) and API keys
//! (`/v1/admin/api-key`). Guarded like the rest of the admin API (admin key, rate limit).
//! Every change is persisted before it is answered, logged as an audit line (who, what, when)
//! and counted in `/metrics`. A key's plaintext is in the creation answer only; the store keeps
//! its argon2 hash.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use shapesync_auth::{KeyInput, RoleInput, StoreError};

use super::admin_api::ok_json;
use super::error::ApiError;
use super::AppState;

/// Request bodies larger than this are refused (413).
const MAX_BODY: usize = 256 * 1024;

/// The admin guard; the caller as the audit log names it.
fn guard(app: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<String, ApiError> {
    let ip = app.access.client_ip(peer, headers);
    app.access.check_admin(headers, ip)?;
    let who = if app.access.config().admin_key.is_some() {
        "admin key"
    } else {
        "insecure mode"
    };
    Ok(format!("{who} from {ip}"))
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::Body {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error: "Request body too large".into(),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::Message {
        status: StatusCode::BAD_REQUEST,
        message: format!("Invalid JSON in request body: {e}"),
    })
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(_) => ApiError::AdminText {
            status: StatusCode::NOT_FOUND,
            text: e.to_string(),
        },
        StoreError::Conflict(_) => ApiError::AdminText {
            status: StatusCode::CONFLICT,
            text: e.to_string(),
        },
        StoreError::Invalid(fields) => ApiError::AdminFieldsOwned(fields),
        e @ (StoreError::Io(_) | StoreError::Corrupt(_)) => ApiError::internal(e),
    }
}

/// Row filters are checked with Postgres' grammar when a role is written.
fn check_filter(clause: &str) -> Result<(), String> {
    shapesync_filter::row_filter_claims(clause)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    ok_json(status, serde_json::to_value(v).unwrap_or_default())
}

fn answer(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| e.into_response())
}

/// `GET /v1/admin/role`
pub async fn list_roles(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    answer(guard(&app, &headers, peer).map(|_| {
        let roles = app.auth.store.list_roles();
        let roles: Vec<&shapesync_auth::Role> = roles.iter().map(|r| &**r).collect();
        json(StatusCode::OK, &roles)
    }))
}

/// `POST /v1/admin/role`: 201 with the role; 409 if the name is taken.
pub async fn create_role(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    answer(
        async {
            let actor = guard(&app, &headers, peer)?;
            let input: RoleInput = body(&bytes)?;
            let role = app
                .auth
                .store
                .create_role(input, &check_filter)
                .map_err(store_error)?;
            app.auth.audit(&actor, "role", "create", &role.name);
            Ok(json(StatusCode::CREATED, &*role))
        }
        .await,
    )
}

/// `GET /v1/admin/role/{name}`
pub async fn show_role(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    answer(guard(&app, &headers, peer).and_then(|_| {
        let role = app
            .auth
            .store
            .role(&name)
            .ok_or_else(|| ApiError::AdminText {
                status: StatusCode::NOT_FOUND,
                text: format!("Role {name} not found."),
            })?;
        Ok(json(StatusCode::OK, &*role))
    }))
}

/// `PUT /v1/admin/role/{name}`: replace the role's rules (200), or create it (201). Shapes
/// opened under the old rules rotate (409) or end (403) at their next request.
pub async fn put_role(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Response {
    answer(
        async {
            let actor = guard(&app, &headers, peer)?;
            let input: RoleInput = body(&bytes)?;
            let (role, created) = app
                .auth
                .store
                .put_role(&name, input, &check_filter)
                .map_err(store_error)?;
            let (status, action) = if created {
                (StatusCode::CREATED, "create")
            } else {
                (StatusCode::OK, "update")
            };
            app.auth.audit(&actor, "role", action, &role.name);
            Ok(json(status, &*role))
        }
        .await,
    )
}

/// `DELETE /v1/admin/role/{name}`: its keys are revoked with it.
pub async fn delete_role(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    answer(
        async {
            let actor = guard(&app, &headers, peer)?;
            app.auth.store.delete_role(&name).map_err(store_error)?;
            app.auth.audit(&actor, "role", "delete", &name);
            Ok(ok_json(
                StatusCode::OK,
                serde_json::json!({"name": name, "deleted": true}),
            ))
        }
        .await,
    )
}

/// `GET /v1/admin/api-key`: every key, without its secret (prefix, role, expiry, last use).
pub async fn list_keys(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    answer(guard(&app, &headers, peer).map(|_| json(StatusCode::OK, &app.auth.store.list_keys())))
}

/// `GET /v1/admin/api-key/{id}`
pub async fn show_key(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    answer(guard(&app, &headers, peer).and_then(|_| {
        let key = app.auth.store.key(&id).ok_or_else(|| ApiError::AdminText {
            status: StatusCode::NOT_FOUND,
            text: format!("API key {id} not found."),
        })?;
        Ok(json(StatusCode::OK, &key))
    }))
}

/// `POST /v1/admin/api-key`: 201 with the key's plaintext, shown this once.
pub async fn create_key(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    answer(
        async {
            let actor = guard(&app, &headers, peer)?;
            let input: KeyInput = body(&bytes)?;
            let store = Arc::clone(&app.auth.store);
            // Hashing takes tens of milliseconds: off the async workers.
            let (view, key) = tokio::task::spawn_blocking(move || store.create_key(input))
                .await
                .map_err(ApiError::internal)?
                .map_err(store_error)?;
            app.auth.audit(&actor, "api_key", "create", &view.id);
            let mut out = serde_json::to_value(&view).unwrap_or_default();
            out["key"] = serde_json::Value::String(key);
            Ok(ok_json(StatusCode::CREATED, out))
        }
        .await,
    )
}

/// `DELETE /v1/admin/api-key/{id}`: revoked at once, parked requests included (they are
/// authenticated again when they wake).
pub async fn delete_key(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    answer(
        async {
            let actor = guard(&app, &headers, peer)?;
            app.auth.store.delete_key(&id).map_err(store_error)?;
            app.auth.audit(&actor, "api_key", "delete", &id);
            Ok(ok_json(
                StatusCode::OK,
                serde_json::json!({"id": id, "revoked": true}),
            ))
        }
        .await,
    )
}

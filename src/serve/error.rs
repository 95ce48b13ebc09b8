//! Every error a client can get, mapped to its HTTP answer in one place (protocol.md §8).
//! Internal details (database errors, file paths) never reach the client: an error with a cause
//! puts it on the response (a [`Logged`] extension) and the request middleware logs it, once,
//! with the request id ([`log_error`]).

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::params::FieldErrors;
use crate::postgres::permanent_db_error;
use crate::stack::ShapeError;

/// The cause of a 5xx, kept for the log.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum ApiError {
    /// 400 `{"message":"Invalid request","errors":{…}}`
    Invalid(FieldErrors),
    /// 503 with `retry-after`; `cause`, when there is one, is logged.
    Unavailable {
        message: String,
        retry_after: u32,
        known: bool,
        cause: Option<Cause>,
    },
    /// 500; the cause is logged.
    Internal(Cause),
    /// 401 `{"message":"Unauthorized - Invalid API secret"}` (shape API).
    Unauthorized,
    /// 401 for a request without any credential: the reference's body, with the code
    /// `auth_required` in the seeds' form as well.
    AuthRequired,
    /// Credential problems in the seeds' form `{"error":{"code","message"}}`: 401
    /// `auth_required`, 403 `auth_invalid` (wrong, expired or revoked), 403 `forbidden` (valid
    /// but lacking the right).
    Auth {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// 429 `rate_limited` with `retry-after`.
    RateLimited { retry_after: u32 },
    /// 400 `{"message":"Invalid request","errors":{"subset":{field:[msg]}}}`
    InvalidSubset(&'static str, String),
    /// 400/413 problems with a POST body: `{"error": …}`.
    Body { status: StatusCode, error: String },
    /// 503 admission control: `{"code":"concurrent_request_limit_exceeded","message":…}`.
    Overloaded { message: String, retry_after: u32 },
    /// 4xx with `{"message": …}`.
    Message { status: StatusCode, message: String },
    /// 404: the request names a database this server does not serve.
    UnknownDatabase(String),
    /// Admin API answers: a JSON string body (the seed's convention).
    AdminText { status: StatusCode, text: String },
    /// Admin API field errors: `{"field": ["message"]}`.
    AdminFields(FieldErrors),
    /// The same, with field paths built at run time (`access[0].table`).
    AdminFieldsOwned(std::collections::BTreeMap<String, Vec<String>>),
}

impl ApiError {
    pub fn auth(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Auth {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn field(field: &'static str, msg: impl Into<String>) -> Self {
        let mut m = FieldErrors::new();
        m.insert(field, vec![msg.into()]);
        ApiError::Invalid(m)
    }

    /// A 500 caused by `e`.
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(Arc::from(e.into()))
    }

    /// 503: the source database cannot be asked now; `cause` is logged.
    pub fn unreachable(cause: Cause) -> Self {
        ApiError::Unavailable {
            message: "Database is unreachable".into(),
            retry_after: 10,
            known: false,
            cause: Some(cause),
        }
    }

    /// 503: busy for a moment (nothing to log); retry after `retry_after` seconds.
    pub fn busy(message: impl Into<String>, retry_after: u32) -> Self {
        ApiError::Unavailable {
            message: message.into(),
            retry_after,
            known: false,
            cause: None,
        }
    }

    /// 4xx with a message.
    pub fn message(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::Message {
            status,
            message: message.into(),
        }
    }
}

impl From<ShapeError> for ApiError {
    fn from(e: ShapeError) -> Self {
        match e {
            ShapeError::Invalid(field, msg) => ApiError::field(field, msg),
            e @ ShapeError::NotReady(_) => ApiError::Unavailable {
                message: "Stack not ready, please retry".into(),
                retry_after: 5,
                known: false,
                cause: Some(Arc::new(e)),
            },
            // Refused by Postgres for good (e.g. a table it will not publish): a retry would
            // get the same, so it is the request's problem, not an outage.
            e @ ShapeError::Database { .. } => match permanent_db_error(&e) {
                Some(message) => ApiError::field("table", message),
                None => ApiError::unreachable(Arc::new(e)),
            },
            e @ ShapeError::Storage(_) => ApiError::Internal(Arc::new(e)),
        }
    }
}

/// An error's cause, put on its response for [`log_error`].
#[derive(Clone)]
pub struct Logged {
    pub status: StatusCode,
    pub cause: Cause,
}

/// The error and its chain of sources, for a log line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Logs the cause an error response carries (called once per request by the middleware):
/// 500 at `error`, a 503 for a database or storage failure at `warn`, a stack not ready yet
/// at `debug`.
pub fn log_error(res: &Response, method: &str, path: &str, request_id: &str) {
    let Some(logged) = res.extensions().get::<Logged>() else {
        return;
    };
    let error = chain(&*logged.cause);
    let not_ready = matches!(
        logged.cause.downcast_ref::<ShapeError>(),
        Some(ShapeError::NotReady(_))
    );
    if logged.status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(%method, %path, request_id, %error, "internal error");
    } else if not_ready {
        tracing::debug!(%method, %path, request_id, %error, "stack not ready");
    } else {
        tracing::warn!(%method, %path, request_id, status = logged.status.as_u16(), %error, "request failed");
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut res = (status, body.to_string()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("surrogate-control", HeaderValue::from_static("no-store"));
    res
}

fn with_cause(mut res: Response, cause: Option<Cause>) -> Response {
    if let Some(cause) = cause {
        let status = res.status();
        res.extensions_mut().insert(Logged { status, cause });
    }
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Invalid(errors) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"message": "Invalid request", "errors": errors}),
            ),
            ApiError::Unavailable {
                message,
                retry_after,
                known,
                cause,
            } => {
                let mut res = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"message": message}),
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                if known {
                    res.headers_mut().insert(
                        "electric-internal-known-error",
                        HeaderValue::from_static("true"),
                    );
                }
                with_cause(res, cause)
            }
            ApiError::InvalidSubset(field, msg) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"message": "Invalid request", "errors": {"subset": {field: [msg]}}}),
            ),
            ApiError::Body { status, error } => json(status, serde_json::json!({"error": error})),
            ApiError::Unauthorized => json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"message": "Unauthorized - Invalid API secret"}),
            ),
            ApiError::AuthRequired => json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({
                    "message": "Unauthorized - Invalid API secret",
                    "error": {
                        "code": "auth_required",
                        "message": "A credential is required: the secret parameter, or an API key or token in X-API-Key or Authorization: Bearer."
                    }
                }),
            ),
            ApiError::Auth {
                status,
                code,
                message,
            } => json(
                status,
                serde_json::json!({"error": {"code": code, "message": message}}),
            ),
            ApiError::RateLimited { retry_after } => {
                let mut res = json(
                    StatusCode::TOO_MANY_REQUESTS,
                    serde_json::json!({"error": {"code": "rate_limited", "message": "Too many requests, please retry later"}}),
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                res
            }
            ApiError::Overloaded {
                message,
                retry_after,
            } => {
                let mut res = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"code": "concurrent_request_limit_exceeded", "message": message}),
                );
                let h = res.headers_mut();
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                h.insert(
                    "electric-internal-known-error",
                    HeaderValue::from_static("true"),
                );
                res
            }
            ApiError::Message { status, message } => {
                json(status, serde_json::json!({"message": message}))
            }
            ApiError::UnknownDatabase(message) => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"message": message}),
            ),
            ApiError::AdminText { status, text } => json(status, serde_json::Value::String(text)),
            ApiError::AdminFields(errors) => {
                json(StatusCode::BAD_REQUEST, serde_json::json!(errors))
            }
            ApiError::AdminFieldsOwned(errors) => {
                json(StatusCode::BAD_REQUEST, serde_json::json!(errors))
            }
            ApiError::Internal(cause) => with_cause(
                json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"error": "Internal server error"}),
                ),
                Some(cause),
            ),
        }
    }
}

//! Every error a client can get, mapped to its HTTP answer in one place (protocol.md §8).
//! Internal details (database errors, file paths) are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::params::FieldErrors;
use crate::stack::ShapeError;

#[derive(Debug)]
pub enum ApiError {
    /// 400 `{"message":"Invalid request","errors":{…}}`
    Invalid(FieldErrors),
    /// 503 with `retry-after`.
    Unavailable {
        message: String,
        retry_after: u32,
        known: bool,
    },
    /// 500, details logged.
    Internal(String),
    /// 401 `{"message":"Unauthorized - Invalid API secret"}` (shape API).
    Unauthorized,
    /// Admin key problems: 401 `auth_required` / 403 `auth_invalid`.
    Auth {
        status: u16,
        code: &'static str,
        message: &'static str,
    },
    /// 429 `rate_limited` with `retry-after`.
    RateLimited { retry_after: u32 },
    /// 400 `{"message":"Invalid request","errors":{"subset":{field:[msg]}}}`
    InvalidSubset(&'static str, String),
    /// 400/413 problems with a POST body: `{"error": …}`.
    Body { status: u16, error: String },
    /// 503 admission control: `{"code":"concurrent_request_limit_exceeded","message":…}`.
    Overloaded { message: String, retry_after: u32 },
    /// 400/404 with `{"message": …}` (tenant resolution).
    Message { status: u16, message: String },
    /// Admin API answers: a JSON string body (the seed's convention).
    AdminText { status: u16, text: String },
    /// Admin API field errors: `{"field": ["message"]}`.
    AdminFields(FieldErrors),
}

impl ApiError {
    pub fn auth(status: u16, code: &'static str, message: &'static str) -> Self {
        ApiError::Auth {
            status,
            code,
            message,
        }
    }

    pub fn field(field: &'static str, msg: impl Into<String>) -> Self {
        let mut m = FieldErrors::new();
        m.insert(field, vec![msg.into()]);
        ApiError::Invalid(m)
    }
}

impl From<ShapeError> for ApiError {
    fn from(e: ShapeError) -> Self {
        match e {
            ShapeError::Invalid(field, msg) => ApiError::field(field, msg),
            ShapeError::NotReady(why) => {
                tracing::debug!(reason = %why, "stack not ready");
                ApiError::Unavailable {
                    message: "Stack not ready, please retry".into(),
                    retry_after: 5,
                    known: false,
                }
            }
            ShapeError::Database(why) => {
                tracing::warn!(error = %why, "database unavailable");
                ApiError::Unavailable {
                    message: "Database is unreachable".into(),
                    retry_after: 10,
                    known: false,
                }
            }
            ShapeError::Storage(why) => ApiError::Internal(why),
        }
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
                res
            }
            ApiError::InvalidSubset(field, msg) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"message": "Invalid request", "errors": {"subset": {field: [msg]}}}),
            ),
            ApiError::Body { status, error } => json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                serde_json::json!({"error": error}),
            ),
            ApiError::Unauthorized => json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"message": "Unauthorized - Invalid API secret"}),
            ),
            ApiError::Auth {
                status,
                code,
                message,
            } => json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
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
            ApiError::Message { status, message } => json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                serde_json::json!({"message": message}),
            ),
            ApiError::AdminText { status, text } => json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                serde_json::Value::String(text),
            ),
            ApiError::AdminFields(errors) => {
                json(StatusCode::BAD_REQUEST, serde_json::json!(errors))
            }
            ApiError::Internal(why) => {
                tracing::error!(error = %why, "internal error");
                json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"error": "Internal server error"}),
                )
            }
        }
    }
}

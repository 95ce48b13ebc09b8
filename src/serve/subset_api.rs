//! Subset snapshot requests (protocol.md §9): `GET /v1/shape` with `subset__*` parameters, or
//! `POST /v1/shape` with the subset in a JSON body (`{where, params, limit, offset, order_by}`,
//! optionally nested under `"subset"`). The shape is found as for any request (a stale handle
//! gets 409); the answer is the rows plus the snapshot's metadata, never cached.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::AppState;
use crate::postgres::permanent_db_error;
use crate::shape::subset::{Subset, SubsetError};
use crate::shape::Shape;
use crate::stack::pool::PoolBusy;
use crate::stack::Stack;

/// The raw parts of a subset request.
#[derive(Debug, Default)]
pub struct SubsetParts {
    pub where_clause: Option<String>,
    pub params: Vec<String>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
    pub order_by: Option<String>,
    pub structured_only: bool,
}

fn invalid(field: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::InvalidSubset(field, msg.into())
}

/// `{"1": "a", "2": 3}` → `["a", "3"]` (numbered from 1, sequential).
fn params_from(v: &Value) -> Result<Vec<String>, ApiError> {
    let obj = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Object(o) => o,
        _ => {
            return Err(invalid(
                "params",
                "must be an object of numbered parameters",
            ))
        }
    };
    let mut nums: Vec<(usize, String)> = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let n: usize = k
            .parse()
            .map_err(|_| invalid("params", "Parameters can only use numbers as keys"))?;
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(invalid(
                    "params",
                    "parameter values must be strings or numbers",
                ))
            }
        };
        nums.push((n, text));
    }
    nums.sort_unstable_by_key(|(n, _)| *n);
    if nums.iter().enumerate().any(|(i, (n, _))| *n != i + 1) {
        return Err(invalid(
            "params",
            "Parameters must be numbered sequentially, starting from 1",
        ));
    }
    Ok(nums.into_iter().map(|(_, v)| v).collect())
}

fn number(v: Option<&Value>, field: &'static str, min: u64) -> Result<Option<u64>, ApiError> {
    let n = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    match n {
        // Postgres' LIMIT and OFFSET are bigint.
        Some(n) if n >= min && i64::try_from(n).is_ok() => Ok(Some(n)),
        _ => Err(invalid(
            field,
            format!("must be an integer >= {min} and <= {}", i64::MAX),
        )),
    }
}

impl SubsetParts {
    /// From `subset__*` query parameters; None when there are none.
    pub fn from_query(query: &str) -> Result<Option<SubsetParts>, ApiError> {
        let mut obj = Map::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if let Some(name) = k.strip_prefix("subset__") {
                let value = if name == "params" {
                    serde_json::from_str(&v)
                        .map_err(|_| invalid("params", "must be a JSON object"))?
                } else {
                    Value::String(v.into_owned())
                };
                obj.insert(name.to_string(), value);
            }
        }
        if obj.is_empty() {
            return Ok(None);
        }
        Self::from_object(&obj).map(Some)
    }

    /// From a POST body object (flat, or nested under `"subset"`).
    pub fn from_object(obj: &Map<String, Value>) -> Result<SubsetParts, ApiError> {
        let obj = match obj.get("subset") {
            Some(Value::Object(inner)) => inner,
            _ => obj,
        };
        let text = |name: &'static str| -> Result<Option<String>, ApiError> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(name, "must be a string")),
            }
        };
        let where_clause = text("where")?;
        let order_by = text("order_by")?;
        let structured_only = (obj.contains_key("where_expr") && where_clause.is_none())
            || (obj.contains_key("order_by_expr") && order_by.is_none());
        Ok(SubsetParts {
            where_clause,
            params: params_from(obj.get("params").unwrap_or(&Value::Null))?,
            limit: number(obj.get("limit"), "limit", 1)?,
            offset: number(obj.get("offset"), "offset", 0)?,
            order_by,
            structured_only,
        })
    }
}

/// Run the subset on `shape` and answer. `queryable` (the request's `queryable_columns`)
/// limits the columns the subset's where and order_by may name.
pub async fn respond(
    app: &AppState,
    stack: &Arc<Stack>,
    shape: Arc<Shape>,
    parts: SubsetParts,
    queryable: Option<&[String]>,
) -> Result<Response, ApiError> {
    if parts.structured_only {
        return Err(invalid(
            "where",
            "structured expressions (where_expr / order_by_expr) are not supported; send `where` and `order_by` as SQL text",
        ));
    }
    let subset = Subset::new(
        &shape.table,
        parts.where_clause.as_deref(),
        &parts.params,
        parts.order_by.as_deref(),
        parts.limit,
        parts.offset,
        queryable,
    )
    .map_err(|(f, m)| match f {
        "queryable_columns" => ApiError::field("queryable_columns", m),
        f => invalid(f, m),
    })?;
    let conn = stack
        .snapshot_pool
        .get_for_subset(std::time::Duration::from_secs(10))
        .await
        .map_err(|e| match e.downcast_ref::<PoolBusy>() {
            Some(busy) => ApiError::busy(busy.to_string(), 5),
            None => ApiError::unreachable(Arc::from(
                Box::<dyn std::error::Error + Send + Sync>::from(e),
            )),
        })?;
    let body = match subset
        .run(
            conn.client(),
            &shape,
            app.subset_caps,
            &stack.spill_dir,
            &app.spill_budget,
        )
        .await
    {
        Ok(body) => {
            conn.release();
            body
        }
        // Whatever the connection was running is cancelled, and it is closed.
        Err(e) => {
            conn.discard().await;
            return Err(subset_error(e, app.subset_caps.timeout_ms));
        }
    };
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("electric-snapshot", HeaderValue::from_static("true"));
    h.insert("electric-handle", hv(shape.handle.as_str()));
    h.insert(
        "electric-offset",
        hv(&shape.log.latest_offset().to_string()),
    );
    h.insert("electric-schema", hv(&shape.schema_header));
    h.insert("electric-has-data", HeaderValue::from_static("true"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok((StatusCode::OK, h, body).into_response())
}

/// A subset that has no answer, as the answer: caps are 413s naming the flag, Postgres'
/// refusals (a division by zero, a cast that fails on some row, a table dropped a moment ago)
/// are 400s like the same mistake in a shape's where clause, the rest 503 or 500.
fn subset_error(e: SubsetError, timeout_ms: u64) -> ApiError {
    let e = match e {
        e @ SubsetError::TooLarge { .. } => {
            return ApiError::message(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        SubsetError::Busy => return ApiError::busy(SubsetError::Busy.to_string(), 5),
        SubsetError::Failed(e) => e,
    };
    let pg = e
        .chain()
        .find_map(|c| c.downcast_ref::<tokio_postgres::Error>());
    let from_postgres = pg.is_some();
    let code = pg.and_then(|p| p.code()).map(|c| c.code().to_string());
    if code.as_deref() == Some("57014") {
        // The subset's own statement_timeout: the same query would run as long again.
        return invalid(
            "where",
            format!(
                "the subset query ran longer than the server allows ({timeout_ms} ms, \
                 --subset-timeout-ms)"
            ),
        );
    }
    if let Some(message) = permanent_db_error(e.as_ref()) {
        return match code.as_deref() {
            Some("42P01") => ApiError::field("table", message),
            _ => invalid("where", message),
        };
    }
    let cause: Box<dyn std::error::Error + Send + Sync> = e.into();
    match from_postgres {
        true => ApiError::unreachable(Arc::from(cause)),
        false => ApiError::Internal(Arc::from(cause)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_from_query_and_body() {
        let p = SubsetParts::from_query("table=t&subset__where=id%3E%241&subset__params=%7B%221%22%3A%222%22%7D&subset__limit=5&subset__order_by=id")
            .unwrap()
            .unwrap();
        assert_eq!(p.where_clause.as_deref(), Some("id>$1"));
        assert_eq!(p.params, vec!["2"]);
        assert_eq!((p.limit, p.order_by.as_deref()), (Some(5), Some("id")));
        assert!(SubsetParts::from_query("table=t&offset=-1")
            .unwrap()
            .is_none());
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"subset":{"where":"id = $1","params":{"1":7},"offset":0,"order_by":"id"}}"#,
        )
        .unwrap();
        let p = SubsetParts::from_object(&body).unwrap();
        assert_eq!(p.params, vec!["7"]);
        assert_eq!(p.offset, Some(0));
        let bad: Map<String, Value> = serde_json::from_str(r#"{"params":{"2":"x"}}"#).unwrap();
        assert!(SubsetParts::from_object(&bad).is_err());
        let bad: Map<String, Value> = serde_json::from_str(r#"{"limit":0}"#).unwrap();
        assert!(SubsetParts::from_object(&bad).is_err());
    }
}

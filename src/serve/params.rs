//! `GET /v1/shape` query parameters (protocol.md §2), parsed and validated in the reference's
//! order: offset → handle → live → live_sse → table → columns/where/replica/log. Unknown
//! parameters are ignored. Pure: no I/O.

use std::collections::BTreeMap;

use shapesync_storage::LogOffset;

use crate::shape::definition::{LogMode, Replica, ShapeDefinition};
use shapesync_filter::ident::{parse_column_list, parse_relation};

/// Where to read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOffset {
    /// `offset=now`: the current end of the log.
    Now,
    At(LogOffset),
}

/// A validated shape request.
#[derive(Debug, Clone)]
pub struct ShapeRequest {
    pub def: ShapeDefinition,
    pub offset: RequestOffset,
    /// The offset as sent (used in the ETag).
    pub offset_text: String,
    /// Dropped for `offset=-1` and `offset=now`.
    pub handle: Option<String>,
    pub live: bool,
    pub live_sse: bool,
    pub cursor: Option<String>,
    /// `queryable_columns`: the only columns a subset's where and order_by may name (set by
    /// the app's server or proxy; not part of the shape's identity).
    pub queryable_columns: Option<Vec<String>>,
    /// The raw parameters, to rebuild the refetch `location` of a 409.
    pub raw: Vec<(String, String)>,
}

/// Field → messages, as in `{"message":"Invalid request","errors":{…}}`.
pub type FieldErrors = BTreeMap<&'static str, Vec<String>>;

fn error(field: &'static str, msg: impl Into<String>) -> FieldErrors {
    let mut m = FieldErrors::new();
    m.insert(field, vec![msg.into()]);
    m
}

/// `live`-style flags: present with any value but the literal `false` means true.
fn flag(params: &[(String, String)], name: &str) -> Option<bool> {
    last(params, name).map(|v| v != "false")
}

fn last<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Parse a raw query string.
pub fn parse(query: &str) -> Result<ShapeRequest, FieldErrors> {
    let raw: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let params = &raw;

    let offset_text = match last(params, "offset") {
        None | Some("") => return Err(error("offset", "can't be blank")),
        Some(o) => o.to_string(),
    };
    let offset = if offset_text == "now" {
        RequestOffset::Now
    } else {
        RequestOffset::At(
            offset_text
                .parse::<LogOffset>()
                .map_err(|_| error("offset", "has invalid format"))?,
        )
    };
    let initial =
        matches!(offset, RequestOffset::Now) || offset == RequestOffset::At(LogOffset::BEFORE_ALL);
    let handle = if initial {
        None
    } else {
        match last(params, "handle") {
            None | Some("") => return Err(error("handle", "can't be blank when offset != -1")),
            Some(h) => Some(h.to_string()),
        }
    };
    let live = flag(params, "live").unwrap_or(false);
    if live && offset == RequestOffset::At(LogOffset::BEFORE_ALL) {
        return Err(error("live", "can't be true when offset == -1"));
    }
    if live && offset == RequestOffset::Now {
        return Err(error("live", "can't be true when offset is 'now'"));
    }
    let live_sse = flag(params, "live_sse")
        .or_else(|| flag(params, "experimental_live_sse"))
        .unwrap_or(false);
    if live_sse && !live {
        return Err(error("live_sse", "can't be true unless live is also true"));
    }

    let def = definition(params)?;
    let queryable_columns = queryable(params)?;
    if let (Some(allowed), Some(cols)) = (&queryable_columns, &def.columns) {
        let outside: Vec<&str> = cols
            .iter()
            .filter(|c| !allowed.contains(c))
            .map(String::as_str)
            .collect();
        if !outside.is_empty() {
            return Err(error(
                "columns",
                format!(
                    "may only name the queryable columns; not: {}",
                    outside.join(", ")
                ),
            ));
        }
    }
    Ok(ShapeRequest {
        def,
        offset,
        offset_text,
        handle,
        live,
        live_sse,
        cursor: last(params, "cursor").map(str::to_string),
        queryable_columns,
        raw,
    })
}

/// `queryable_columns`; given more than once (a proxy adding its own list), only the columns
/// in every list.
fn queryable(params: &[(String, String)]) -> Result<Option<Vec<String>>, FieldErrors> {
    let mut out: Option<Vec<String>> = None;
    for (_, v) in params.iter().filter(|(k, _)| k == "queryable_columns") {
        let list = parse_column_list(v).map_err(|m| error("queryable_columns", m.to_string()))?;
        out = Some(match out {
            None => list,
            Some(prev) => prev.into_iter().filter(|c| list.contains(c)).collect(),
        });
    }
    Ok(out)
}

/// The shape definition parts of the parameters (`table`, `columns`, `where`, `replica`, `log`,
/// `params[n]`), validated.
fn definition(params: &[(String, String)]) -> Result<ShapeDefinition, FieldErrors> {
    let table = last(params, "table").unwrap_or("");
    let (schema, table) = parse_relation(table).map_err(|m| error("table", m.to_string()))?;
    let columns = match last(params, "columns") {
        None => None,
        Some(c) => Some(parse_column_list(c).map_err(|m| error("columns", m.to_string()))?),
    };
    let where_clause = match last(params, "where").map(str::trim) {
        None | Some("") => None,
        Some(w) => Some(w.to_string()),
    };
    let replica = match last(params, "replica") {
        None | Some("default") => Replica::Default,
        Some("full") => Replica::Full,
        Some(_) => return Err(error("replica", "is invalid")),
    };
    let log = match last(params, "log") {
        None | Some("full") => LogMode::Full,
        Some("changes_only") => LogMode::ChangesOnly,
        Some(_) => return Err(error("log", "is invalid")),
    };
    let values = if params.iter().any(|(k, _)| k.starts_with("params[")) {
        validate_params(params)?
    } else {
        Vec::new()
    };
    Ok(ShapeDefinition {
        schema,
        table,
        where_clause,
        columns,
        replica,
        log,
        params: values,
        row_filter: None,
    })
}

/// A `DELETE /v1/shape` request: a definition, a handle, or both (`offset`, `live` ignored).
#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub def: Option<ShapeDefinition>,
    pub handle: Option<String>,
}

pub fn parse_delete(query: &str) -> Result<DeleteRequest, FieldErrors> {
    let raw: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let handle = last(&raw, "handle")
        .filter(|h| !h.is_empty())
        .map(str::to_string);
    let def = match last(&raw, "table") {
        None | Some("") => None,
        Some(_) => Some(definition(&raw)?),
    };
    if def.is_none() && handle.is_none() {
        return Err(error(
            "handle",
            "can't be blank when shape definition is missing",
        ));
    }
    Ok(DeleteRequest { def, handle })
}

/// `params[n]` keys must be integers numbered 1..N.
/// The values of `params[1]`, `params[2]`, … in order.
fn validate_params(params: &[(String, String)]) -> Result<Vec<String>, FieldErrors> {
    let mut nums: Vec<(usize, String)> = Vec::new();
    for (k, v) in params.iter().filter(|(k, _)| k.starts_with("params[")) {
        let inner = k.strip_prefix("params[").and_then(|r| r.strip_suffix(']'));
        match inner.and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => {
                nums.retain(|(m, _)| *m != n);
                nums.push((n, v.clone()));
            }
            None => return Err(error("params", "Parameters can only use numbers as keys")),
        }
    }
    nums.sort_unstable_by_key(|(n, _)| *n);
    if nums.iter().enumerate().any(|(i, (n, _))| *n != i + 1) {
        return Err(error(
            "params",
            "Parameters must be numbered sequentially, starting from 1",
        ));
    }
    Ok(nums.into_iter().map(|(_, v)| v).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> (String, String) {
        let e = parse(q).unwrap_err();
        let (k, v) = e.into_iter().next().unwrap();
        (k.to_string(), v[0].clone())
    }

    #[test]
    fn validation_order_and_messages() {
        assert_eq!(err("table=t"), ("offset".into(), "can't be blank".into()));
        assert_eq!(
            err("table=t&offset=10"),
            ("offset".into(), "has invalid format".into())
        );
        assert_eq!(
            err("table=t&offset=0_0"),
            ("handle".into(), "can't be blank when offset != -1".into())
        );
        assert_eq!(
            err("table=t&offset=-1&live=true"),
            ("live".into(), "can't be true when offset == -1".into())
        );
        assert_eq!(
            err("table=t&offset=now&live"),
            ("live".into(), "can't be true when offset is 'now'".into())
        );
        assert_eq!(
            err("table=t&offset=0_0&handle=h&live_sse=true"),
            (
                "live_sse".into(),
                "can't be true unless live is also true".into()
            )
        );
        assert_eq!(err("offset=-1"), ("table".into(), "can't be blank".into()));
        assert_eq!(
            err("offset=-1&table=t&replica=all"),
            ("replica".into(), "is invalid".into())
        );
        assert_eq!(
            err("offset=-1&table=t&params[2]=x"),
            (
                "params".into(),
                "Parameters must be numbered sequentially, starting from 1".into()
            )
        );
    }

    #[test]
    fn flags_and_handle_rules() {
        let r = parse("table=t&offset=-1&handle=old&unknown=1").unwrap();
        assert_eq!(r.handle, None, "handle is dropped for offset=-1");
        let r = parse("table=t&offset=0_0&handle=h&live=").unwrap();
        assert!(r.live, "live with an empty value is true");
        let r = parse("table=t&offset=0_0&handle=h&live=false").unwrap();
        assert!(!r.live);
        let r = parse("table=t&offset=0_0&handle=h&live=true&experimental_live_sse=true").unwrap();
        assert!(r.live_sse);
        let r = parse("table=%22My%20T%22&offset=now&columns=id,%22a%2Cb%22").unwrap();
        assert_eq!(r.def.table, "My T");
        assert_eq!(r.def.columns, Some(vec!["id".into(), "a,b".into()]));
        assert_eq!(r.offset, RequestOffset::Now);
    }
}

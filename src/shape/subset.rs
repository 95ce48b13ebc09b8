//! Subset snapshots (protocol.md §9): a slice of a shape's current rows —
//! `WHERE <shape where> AND (<subset where>) ORDER BY … LIMIT … OFFSET …` — read in its own
//! REPEATABLE READ snapshot and returned with that snapshot's metadata, so a client in
//! `log=changes_only` mode can splice the rows into its stream (`requestSnapshot`).
//!
//! The subset where clause goes through the same validation as a shape's; `ORDER BY` is parsed
//! with Postgres' grammar and only plain column references with ASC/DESC and NULLS FIRST/LAST are
//! accepted. The SQL is rendered from the validated parts only.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use futures::StreamExt;

use super::message::write_str;
use super::snapshot::CopyParser;
use super::spill::{Spill, SpillBudget, SpillFull};
use super::Shape;
use shapesync_filter::table::TableInfo;
use shapesync_filter::{parse_order_by, parse_where, WhereClause};

/// A validated subset request.
#[derive(Debug)]
pub struct Subset {
    pub filter: Option<WhereClause>,
    /// Rendered `ORDER BY` items.
    pub order_by: Vec<String>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

impl Subset {
    /// Validate the parts of a subset request against the shape's table. Errors are
    /// (field, message) for `{"errors":{"subset":{field:[message]}}}`.
    pub fn new(
        table: &TableInfo,
        where_clause: Option<&str>,
        params: &[String],
        order_by: Option<&str>,
        limit: Option<u64>,
        offset: Option<u64>,
        queryable: Option<&[String]>,
    ) -> Result<Subset, (&'static str, String)> {
        if (limit.is_some() || offset.is_some()) && order_by.is_none() {
            return Err((
                "order_by",
                "order_by is required when limit or offset is present".into(),
            ));
        }
        if limit == Some(0) {
            return Err(("limit", "must be greater than 0".into()));
        }
        let filter = match where_clause.map(str::trim).filter(|w| !w.is_empty()) {
            Some(w) => Some(parse_where(w, table, params).map_err(|e| ("where", e.to_string()))?),
            None => None,
        };
        let order_text = order_by;
        let order_by = match order_text {
            Some(o) => parse_order_by(o, table).map_err(|e| ("order_by", e.to_string()))?,
            None => Vec::new(),
        };
        // Valid against the table; then it may name only the queryable columns.
        if let Some(allowed) = queryable {
            check_queryable(table, allowed, where_clause, params, order_text)?;
        }
        Ok(Subset {
            filter,
            order_by,
            limit,
            offset,
        })
    }

    /// The COPY statement of this subset of `shape`, with at most `cap` rows (on top of the
    /// request's own limit).
    pub fn copy_sql(&self, shape: &Shape, cap: Option<u64>) -> String {
        let mut sql = format!("COPY ({}", super::snapshot::select_from(shape));
        // The subset's clause is evaluated only on the shape's rows (CASE keeps the order an
        // AND would not): an error it raises can tell nothing about rows outside the shape.
        match (shape.filter.as_ref(), self.filter.as_ref()) {
            (Some(s), Some(w)) => {
                sql.push_str(" WHERE CASE WHEN (");
                sql.push_str(&s.sql(&shape.table));
                sql.push_str(") THEN (");
                sql.push_str(&w.sql(&shape.table));
                sql.push_str(") ELSE false END");
            }
            (Some(w), None) | (None, Some(w)) => {
                sql.push_str(" WHERE (");
                sql.push_str(&w.sql(&shape.table));
                sql.push(')');
            }
            (None, None) => {}
        }
        if !self.order_by.is_empty() {
            sql.push_str(" ORDER BY ");
            sql.push_str(&self.order_by.join(", "));
        }
        let limit = match (self.limit, cap) {
            (Some(l), Some(c)) => Some(l.min(c)),
            (l, c) => l.or(c),
        };
        if let Some(l) = limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        if let Some(o) = self.offset {
            sql.push_str(&format!(" OFFSET {o}"));
        }
        sql.push_str(") TO STDOUT");
        sql
    }

    /// Run it on `client` (which must not be in a transaction): the JSON body
    /// `{"metadata":{…},"data":[…]}`, complete before it is answered (a failure on any row is
    /// an error, not a cut-off body), held in memory up to a threshold and spilled to
    /// `spill_dir` beyond it. More rows or bytes than `caps` allow is [`SubsetError::TooLarge`];
    /// the query asks Postgres for at most one row more than the row cap.
    pub async fn run(
        &self,
        client: &tokio_postgres::Client,
        shape: &Shape,
        caps: SubsetCaps,
        spill_dir: &Path,
        spill_budget: &Arc<SpillBudget>,
    ) -> Result<Body, SubsetError> {
        client
            .batch_execute(&format!(
                // A number: nothing of the request reaches this statement.
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = {}",
                caps.timeout_ms
            ))
            .await?;
        let row = client
            .query_one(
                "SELECT pg_current_snapshot()::text, (pg_current_wal_lsn() - '0/0')::text",
                &[],
            )
            .await?;
        let snap: String = row.get(0);
        let lsn: String = row.get(1);
        let info: super::visibility::SnapshotInfo = snap.parse().map_err(anyhow::Error::msg)?;
        let mark: u32 = rand::random_range(0..i32::MAX as u32);
        let head = metadata(&info, &lsn, mark);
        let mut data = Spill::new(spill_dir, spill_budget);
        let sql = self.copy_sql(shape, Some(caps.max_rows.saturating_add(1)));
        let stream = client.copy_out(sql.as_str()).await?;
        futures::pin_mut!(stream);
        let mut parser = CopyParser::default();
        let ncols =
            shape.table.columns.len() + shape.subq.as_ref().map_or(0, |s| s.dnf.positions.len());
        let mut rows = 0u64;
        while let Some(chunk) = stream.next().await {
            parser.feed(&chunk?, ncols, |cells| {
                if rows > 0 {
                    data.buf.push(b',');
                }
                rows += 1;
                match &shape.subq {
                    Some(subq) => {
                        let (row, truths) = cells.split_at(shape.table.columns.len());
                        let ac: Vec<bool> = truths
                            .iter()
                            .map(|c| *c == super::message::Cell::Text(b"t"))
                            .collect();
                        let tags = subq.tags(&subq.links_of(row));
                        shape.encoder.snapshot_row_with(&mut data.buf, row, |out| {
                            out.extend_from_slice(format!(",\"snapshot_mark\":{mark}").as_bytes());
                            super::subq::write_tag_headers(out, &tags, &ac, None);
                        });
                    }
                    None => shape
                        .encoder
                        .snapshot_row_marked(&mut data.buf, cells, Some(mark)),
                }
            })?;
            if rows > caps.max_rows {
                return Err(SubsetError::TooLarge {
                    flag: "--subset-max-rows",
                    what: "rows",
                    cap: caps.max_rows,
                });
            }
            if data.len() + head.len() as u64 > caps.max_bytes {
                return Err(SubsetError::TooLarge {
                    flag: "--subset-max-bytes",
                    what: "bytes",
                    cap: caps.max_bytes,
                });
            }
            data.settle().await.map_err(|e| match e.get_ref() {
                Some(inner) if inner.is::<SpillFull>() => SubsetError::Busy,
                _ => SubsetError::Failed(e.into()),
            })?;
        }
        parser.finish()?;
        client.batch_execute("COMMIT").await?;
        Ok(data
            .into_body(head, b"]}")
            .await
            .map_err(anyhow::Error::from)?)
    }
}

/// `queryable_columns`: every name must be a column, and the subset's where clause and
/// ORDER BY must parse against the table seen with only those columns.
fn check_queryable(
    table: &TableInfo,
    allowed: &[String],
    where_clause: Option<&str>,
    params: &[String],
    order_by: Option<&str>,
) -> Result<(), (&'static str, String)> {
    super::columns_exist(table, allowed, "queryable_columns")?;
    let seen = table.restricted(allowed);
    let refused = |field: &'static str| {
        (
            field,
            format!(
                "may only reference the queryable columns: {}",
                allowed.join(", ")
            ),
        )
    };
    if let Some(w) = where_clause.map(str::trim).filter(|w| !w.is_empty()) {
        parse_where(w, &seen, params).map_err(|_| refused("where"))?;
    }
    if let Some(o) = order_by {
        parse_order_by(o, &seen).map_err(|_| refused("order_by"))?;
    }
    Ok(())
}

/// `{"metadata":{…},"data":[` of a subset answer.
fn metadata(info: &super::visibility::SnapshotInfo, lsn: &str, mark: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"metadata\":{\"xmin\":");
    write_str(&mut out, info.xmin.to_string().as_bytes());
    out.extend_from_slice(b",\"xmax\":");
    write_str(&mut out, info.xmax.to_string().as_bytes());
    out.extend_from_slice(b",\"xip_list\":[");
    for (i, x) in info.xip.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, x.to_string().as_bytes());
    }
    out.extend_from_slice(b"],\"database_lsn\":");
    write_str(&mut out, lsn.as_bytes());
    out.extend_from_slice(format!(",\"snapshot_mark\":{mark}}},\"data\":[").as_bytes());
    out
}

/// How large a subset answer may be.
#[derive(Debug, Clone, Copy)]
pub struct SubsetCaps {
    pub max_rows: u64,
    pub max_bytes: u64,
    /// Bytes of spilled answers the process holds at once, across subsets.
    pub spill_bytes: u64,
    /// How long one subset query may run in Postgres (its `statement_timeout`).
    pub timeout_ms: u64,
}

impl Default for SubsetCaps {
    fn default() -> Self {
        SubsetCaps {
            max_rows: 1_000_000,
            max_bytes: 256 << 20,
            spill_bytes: 1 << 30,
            timeout_ms: 30_000,
        }
    }
}

/// Why a subset has no answer.
#[derive(Debug, thiserror::Error)]
pub enum SubsetError {
    /// Over a cap: a 413 naming it.
    #[error("the subset has more {what} than the server allows ({cap}, {flag})")]
    TooLarge {
        flag: &'static str,
        what: &'static str,
        cap: u64,
    },
    /// The process holds as many spilled answers as it may: retry shortly (503).
    #[error("too many large subset answers are held at once; retry shortly")]
    Busy,
    /// The query or the spill failed (Postgres' refusal included).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<tokio_postgres::Error> for SubsetError {
    fn from(e: tokio_postgres::Error) -> Self {
        SubsetError::Failed(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapesync_filter::table::ColumnInfo;

    fn table() -> TableInfo {
        let c = |name: &str| ColumnInfo {
            name: name.into(),
            type_oid: 0,
            type_name: "int4".into(),
            dims: 0,
            type_mod: -1,
            not_null: false,
            pk_index: None,
        };
        TableInfo::new(1, "public".into(), "t".into(), vec![c("id"), c("Name")])
    }

    #[test]
    fn order_by_is_validated_and_rendered() {
        let t = table();
        assert_eq!(
            parse_order_by("id desc nulls last, \"Name\"", &t).unwrap(),
            vec!["\"id\" DESC NULLS LAST", "\"Name\""]
        );
        for bad in [
            "nope",
            "id; drop table t",
            "1",
            "lower(id)",
            "id USING <",
            "t.id",
            "",
        ] {
            assert!(parse_order_by(bad, &t).is_err(), "{bad}");
        }
    }

    #[test]
    fn order_by_required_with_limit_or_offset() {
        let t = table();
        let e = Subset::new(&t, None, &[], None, Some(5), None, None).unwrap_err();
        assert_eq!(
            e,
            (
                "order_by",
                "order_by is required when limit or offset is present".into()
            )
        );
        assert!(Subset::new(
            &t,
            Some("id = $1"),
            &["3".into()],
            Some("id"),
            Some(5),
            Some(0),
            None
        )
        .is_ok());
        assert_eq!(
            Subset::new(&t, None, &[], Some("id"), Some(0), None, None)
                .unwrap_err()
                .0,
            "limit"
        );
    }
}

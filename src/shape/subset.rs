//! Subset snapshots (protocol.md §9): a slice of a shape's current rows —
//! `WHERE <shape where> AND (<subset where>) ORDER BY … LIMIT … OFFSET …` — read in its own
//! REPEATABLE READ snapshot and returned with that snapshot's metadata, so a client in
//! `log=changes_only` mode can splice the rows into its stream (`requestSnapshot`).
//!
//! The subset where clause goes through the same validation as a shape's; `ORDER BY` is parsed
//! with Postgres' grammar and only plain column references with ASC/DESC and NULLS FIRST/LAST are
//! accepted. The SQL is rendered from the validated parts only.

use super::message::write_str;
use super::snapshot::CopyParser;
use super::Shape;
use futures::StreamExt;
use shapesync_filter::ident::quote_ident;
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
        let order_by = match order_by {
            Some(o) => parse_order_by(o, table).map_err(|e| ("order_by", e.to_string()))?,
            None => Vec::new(),
        };
        Ok(Subset {
            filter,
            order_by,
            limit,
            offset,
        })
    }

    /// The COPY statement of this subset of `shape`.
    pub fn copy_sql(&self, shape: &Shape) -> String {
        let cols: Vec<String> = shape
            .table
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let mut sql = format!(
            "COPY (SELECT {} FROM {}",
            cols.join(", "),
            shape.table.quoted_name()
        );
        let conds: Vec<String> = [shape.filter.as_ref(), self.filter.as_ref()]
            .into_iter()
            .flatten()
            .map(|w| w.sql(&shape.table))
            .collect();
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(
                &conds
                    .iter()
                    .map(|c| format!("({c})"))
                    .collect::<Vec<_>>()
                    .join(" AND "),
            );
        }
        if !self.order_by.is_empty() {
            sql.push_str(" ORDER BY ");
            sql.push_str(&self.order_by.join(", "));
        }
        if let Some(l) = self.limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        if let Some(o) = self.offset {
            sql.push_str(&format!(" OFFSET {o}"));
        }
        sql.push_str(") TO STDOUT");
        sql
    }

    /// Run it: the JSON body `{"metadata":{…},"data":[…]}`.
    pub async fn run(
        &self,
        client: &tokio_postgres::Client,
        shape: &Shape,
    ) -> anyhow::Result<Vec<u8>> {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
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
        let mut data = Vec::with_capacity(4096);
        let stream = client.copy_out(self.copy_sql(shape).as_str()).await?;
        futures::pin_mut!(stream);
        let mut parser = CopyParser::default();
        let ncols = shape.table.columns.len();
        while let Some(chunk) = stream.next().await {
            parser.feed(&chunk?, ncols, |cells| {
                if data.len() > 1 {
                    data.push(b',');
                }
                if data.is_empty() {
                    data.push(b'[');
                }
                shape
                    .encoder
                    .snapshot_row_marked(&mut data, cells, Some(mark));
            })?;
        }
        parser.finish()?;
        client.batch_execute("COMMIT").await?;
        if data.is_empty() {
            data.push(b'[');
        }
        data.push(b']');
        let mut out = Vec::with_capacity(data.len() + 256);
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
        out.extend_from_slice(format!(",\"snapshot_mark\":{mark}}},\"data\":").as_bytes());
        out.extend_from_slice(&data);
        out.push(b'}');
        Ok(out)
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
        let e = Subset::new(&t, None, &[], None, Some(5), None).unwrap_err();
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
            Some(0)
        )
        .is_ok());
        assert_eq!(
            Subset::new(&t, None, &[], Some("id"), Some(0), None)
                .unwrap_err()
                .0,
            "limit"
        );
    }
}

//! A shape's initial snapshot: in a REPEATABLE READ, READ ONLY transaction whose first statement
//! records `pg_current_snapshot()`, the matching rows are streamed with `COPY … TO STDOUT` (text
//! format: each value is its type's output function, the same text pgoutput sends, bpchar padding
//! included), turned into insert messages and appended to the log chunk by chunk; the snapshot
//! ends with a `snapshot-end` control message. The visibility info goes to the writer first, so
//! that streamed transactions already in the snapshot are dropped.
//!
//! The COPY statement is rendered only from validated parts: quoted catalog identifiers and the
//! where clause as re-rendered by `shapesync_filter` from its validated form.

use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;

use super::definition::LogMode;
use super::message::{self, Cell};
use super::visibility::SnapshotInfo;
use super::Shape;
use shapesync_filter::ident::quote_ident;

/// Rows are handed to the storage thread in batches of about this many bytes.
const BATCH_BYTES: usize = 1 << 20;

/// The COPY statement for a shape's rows.
pub fn copy_sql(shape: &Shape) -> String {
    let mut sql = format!("COPY ({}", select_from(shape));
    if let Some(f) = &shape.filter {
        sql.push_str(" WHERE ");
        sql.push_str(&f.sql(&shape.table));
    }
    sql.push_str(") TO STDOUT");
    sql
}

/// `SELECT <every column>[, <each position's truth>] FROM <table>` of a shape.
pub fn select_from(shape: &Shape) -> String {
    let cols: Vec<String> = shape
        .table
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    format!(
        "SELECT {}{} FROM {}",
        cols.join(", "),
        position_columns(shape),
        shape.table.quoted_name()
    )
}

/// For a subquery shape, `, (<position>) IS TRUE|FALSE` per position of its normal form:
/// each position's truth, computed by Postgres in the query's snapshot (its rows'
/// `active_conditions`). Empty for other shapes.
pub fn position_columns(shape: &Shape) -> String {
    let Some(subq) = &shape.subq else {
        return String::new();
    };
    subq.dnf
        .positions
        .iter()
        .map(|p| {
            let leaf = shapesync_filter::WhereClause::new(p.leaf.clone()).sql(&shape.table);
            format!(", ({leaf}) IS {}", if p.negated { "FALSE" } else { "TRUE" })
        })
        .collect()
}

/// A snapshot row of a subquery shape (the table's columns, then each position's truth): its
/// message with tags and active conditions, reported to the row index.
fn subquery_row(shape: &Shape, subq: &super::subq::Subq, cells: &[Cell<'_>], out: &mut Vec<u8>) {
    let ncols = shape.table.columns.len();
    let (row, truths) = cells.split_at(ncols.min(cells.len()));
    let ac: Vec<bool> = truths.iter().map(|c| *c == Cell::Text(b"t")).collect();
    let links = subq.links_of(row);
    let tags = subq.tags(&links);
    shape.encoder.snapshot_row_with(out, row, |out| {
        super::subq::write_tag_headers(out, &tags, &ac, None)
    });
    let key = shape.encoder.key(row);
    let pk = shape
        .table
        .key
        .iter()
        .map(|&k| row.get(k).and_then(|c| c.bytes()).map(<[u8]>::to_vec))
        .collect();
    subq.index().report(subq, &key, 1, (0, 0), (pk, links, ac));
}

/// Run the snapshot. `started` receives the snapshot's visibility before any row is read.
pub async fn run(
    client: &tokio_postgres::Client,
    shape: &Arc<Shape>,
    started: impl FnOnce(SnapshotInfo),
) -> anyhow::Result<u64> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let row = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await?;
    let snap: String = row.get(0);
    let info: SnapshotInfo = snap.parse().map_err(anyhow::Error::msg)?;
    started(info.clone());

    let mut rows = 0u64;
    if shape.def.log == LogMode::Full {
        let stream = client.copy_out(copy_sql(shape).as_str()).await?;
        futures::pin_mut!(stream);
        let mut parser = CopyParser::default();
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut batch_bytes = 0;
        let ncols =
            shape.table.columns.len() + shape.subq.as_ref().map_or(0, |s| s.dnf.positions.len());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("reading the snapshot")?;
            parser.feed(&chunk, ncols, |cells| {
                let mut out = Vec::with_capacity(128);
                match &shape.subq {
                    Some(subq) => subquery_row(shape, subq, cells, &mut out),
                    None => shape.encoder.snapshot_row(&mut out, cells),
                }
                batch_bytes += out.len();
                batch.push(out);
            })?;
            if batch_bytes >= BATCH_BYTES {
                rows += batch.len() as u64;
                append(shape, std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
        }
        parser.finish()?;
        rows += batch.len() as u64;
        append(shape, batch).await?;
    }
    client.batch_execute("COMMIT").await?;
    if let Some(subq) = &shape.subq {
        subq.index().finish_loading();
    }
    let end = message::snapshot_end(info.xmin, info.xmax, &info.xip);
    let s = Arc::clone(shape);
    tokio::task::spawn_blocking(move || s.log.finish_snapshot(&end))
        .await?
        .context("finishing the snapshot")?;
    shape.publish_log_state();
    Ok(rows)
}

/// Rows of `sql` (a `SELECT`) as owned text values, read with COPY in a REPEATABLE READ
/// transaction, with that transaction's snapshot.
async fn rows_at_snapshot(
    client: &tokio_postgres::Client,
    sql: &str,
    ncols: usize,
    after: Option<u32>,
) -> anyhow::Result<(SnapshotInfo, u64, Vec<super::deps::Values>)> {
    let mut wait = std::time::Duration::from_millis(1);
    let (info, lsn) = loop {
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
        let info: SnapshotInfo = snap.parse().map_err(anyhow::Error::msg)?;
        let lsn: u64 = row.get::<_, String>(1).parse()?;
        // The walsender may send a commit a moment before the committing backend makes it
        // visible: the rows must be read in a snapshot that contains it.
        match after {
            Some(xid) if info.verdict(xid) != super::visibility::Verdict::Skip => {
                client.batch_execute("ROLLBACK").await?;
                anyhow::ensure!(
                    wait < std::time::Duration::from_secs(5),
                    "transaction {xid} did not become visible"
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            _ => break (info, lsn),
        }
    };
    let stream = client
        .copy_out(format!("COPY ({sql}) TO STDOUT").as_str())
        .await?;
    futures::pin_mut!(stream);
    let mut parser = CopyParser::default();
    let mut rows = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading rows")?;
        parser.feed(&chunk, ncols, |cells| {
            rows.push(
                cells
                    .iter()
                    .map(|c| c.bytes().map(<[u8]>::to_vec))
                    .collect(),
            );
        })?;
    }
    parser.finish()?;
    client.batch_execute("COMMIT").await?;
    Ok((info, lsn, rows))
}

/// A subquery shape's rows now (all columns, then each position's truth), with the snapshot.
pub async fn shape_rows(
    client: &tokio_postgres::Client,
    shape: &Shape,
) -> anyhow::Result<(SnapshotInfo, Vec<super::deps::Values>)> {
    let mut sql = select_from(shape);
    if let Some(f) = &shape.filter {
        sql.push_str(" WHERE ");
        sql.push_str(&f.sql(&shape.table));
    }
    let ncols =
        shape.table.columns.len() + shape.subq.as_ref().map_or(0, |s| s.dnf.positions.len());
    let (info, _, rows) = rows_at_snapshot(client, &sql, ncols, None).await?;
    Ok((info, rows))
}

/// A subquery's rows (its selected values), to seed its result; for a subquery with
/// subqueries of its own, every row of its table (all columns), judged by the writer.
pub async fn seed_rows(
    client: &tokio_postgres::Client,
    sub: &shapesync_filter::Subquery,
) -> anyhow::Result<(SnapshotInfo, Vec<super::deps::Values>)> {
    if sub.filter.as_ref().is_some_and(|f| f.has_subqueries()) {
        let cols: Vec<String> = sub
            .table
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let sql = format!(
            "SELECT {} FROM {}",
            cols.join(", "),
            sub.table.quoted_name()
        );
        let (info, _, rows) = rows_at_snapshot(client, &sql, sub.table.columns.len(), None).await?;
        return Ok((info, rows));
    }
    let (info, _, rows) = rows_at_snapshot(client, &sub.sql(), sub.columns.len(), None).await?;
    Ok((info, rows))
}

/// Every subquery of `subs` at any depth, each after its own subqueries, without repeats.
pub fn all_subqueries(
    subs: &[std::sync::Arc<shapesync_filter::Subquery>],
) -> Vec<std::sync::Arc<shapesync_filter::Subquery>> {
    fn walk(
        s: &std::sync::Arc<shapesync_filter::Subquery>,
        out: &mut Vec<std::sync::Arc<shapesync_filter::Subquery>>,
    ) {
        for c in s
            .filter
            .as_ref()
            .map(|f| f.subqueries())
            .unwrap_or_default()
        {
            walk(&c, out);
        }
        if !out.iter().any(|o| o == s) {
            out.push(std::sync::Arc::clone(s));
        }
    }
    let mut out = Vec::new();
    for s in subs {
        walk(s, &mut out);
    }
    out
}

/// The rows of a move-in: the shape's rows (all columns) whose link values at the
/// dependency's positions are among the values that entered (all of them when `broad`), in
/// a snapshot containing the moving transaction, with the WAL position when it was taken.
pub async fn move_in_rows(
    client: &tokio_postgres::Client,
    req: &super::writer::MoveRequest,
) -> anyhow::Result<(SnapshotInfo, u64, Vec<super::deps::Values>)> {
    let shape = &req.shape;
    let Some(subq) = &shape.subq else {
        anyhow::bail!("not a subquery shape");
    };
    let table = &shape.table;
    let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let mut sql = format!("SELECT {} FROM {}", cols.join(", "), table.quoted_name());
    let mut conds = Vec::new();
    if let Some(f) = &shape.filter {
        conds.push(f.sql(table));
    }
    if !req.broad {
        let values: Vec<Vec<Option<String>>> = req
            .values
            .iter()
            .map(|v| {
                v.iter()
                    .map(|c| c.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect()
            })
            .collect();
        let alts: Vec<String> = subq
            .dnf
            .positions_of(req.dep)
            .into_iter()
            .filter_map(|p| subq.dnf.positions[p].link_columns().map(<[usize]>::to_vec))
            .flat_map(|cols| {
                let mut alts = vec![shapesync_filter::values_sql(table, &cols, &values)];
                // `NOT IN` of a row form may now hold for rows with a NULL in their link.
                if req.null_links && cols.len() > 1 {
                    let nulls: Vec<String> = cols
                        .iter()
                        .map(|&c| format!("{} IS NULL", quote_ident(&table.columns[c].name)))
                        .collect();
                    alts.push(format!("({})", nulls.join(" OR ")));
                }
                alts
            })
            .collect();
        conds.push(format!("({})", alts.join(" OR ")));
    }
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    rows_at_snapshot(client, &sql, table.columns.len(), Some(req.xid)).await
}

async fn append(shape: &Arc<Shape>, batch: Vec<Vec<u8>>) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let s = Arc::clone(shape);
    tokio::task::spawn_blocking(move || {
        for row in &batch {
            s.log.append_snapshot_row(row)?;
        }
        Ok::<_, shapesync_storage::StoreError>(())
    })
    .await?
    .context("writing the snapshot")?;
    shape.publish_log_state();
    Ok(())
}

/// Incremental parser of COPY text format: rows end with `\n`, fields are separated by tabs,
/// `\N` is NULL, and backslash escapes (`\n`, `\t`, `\\`, octal, `\xHH`, …) are decoded.
#[derive(Default)]
pub struct CopyParser {
    carry: Vec<u8>,
}

impl CopyParser {
    pub fn feed(
        &mut self,
        data: &[u8],
        ncols: usize,
        mut row: impl FnMut(&[Cell<'_>]),
    ) -> anyhow::Result<()> {
        let mut start = 0;
        let buf: std::borrow::Cow<'_, [u8]> = if self.carry.is_empty() {
            std::borrow::Cow::Borrowed(data)
        } else {
            let mut v = std::mem::take(&mut self.carry);
            v.extend_from_slice(data);
            std::borrow::Cow::Owned(v)
        };
        // Fields are borrowed from the buffer; only fields with escapes are decoded, into
        // `scratch` (reused across rows).
        let mut scratch: Vec<Vec<u8>> = Vec::new();
        let mut spans: Vec<Option<Result<(usize, usize), usize>>> = Vec::with_capacity(ncols);
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line_start = start;
            let line = &buf[start..start + nl];
            start += nl + 1;
            spans.clear();
            let mut used = 0;
            let mut at = 0;
            for field in line.split(|&b| b == b'\t') {
                let span = if field == b"\\N" {
                    None
                } else if field.contains(&b'\\') {
                    if scratch.len() <= used {
                        scratch.push(Vec::new());
                    }
                    unescape_into(field, &mut scratch[used]);
                    used += 1;
                    Some(Err(used - 1))
                } else {
                    Some(Ok((line_start + at, line_start + at + field.len())))
                };
                spans.push(span);
                at += field.len() + 1;
            }
            if spans.len() != ncols {
                anyhow::bail!("COPY row has {} fields, expected {ncols}", spans.len());
            }
            let cells: Vec<Cell<'_>> = spans
                .iter()
                .map(|s| match s {
                    None => Cell::Null,
                    Some(Ok((a, b))) => Cell::Text(&buf[*a..*b]),
                    Some(Err(i)) => Cell::Text(&scratch[*i]),
                })
                .collect();
            row(&cells);
        }
        self.carry = buf[start..].to_vec();
        Ok(())
    }

    pub fn finish(&self) -> anyhow::Result<()> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("COPY data ended in the middle of a row")
        }
    }
}

fn unescape_into(field: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 >= field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let e = field[i + 1];
        i += 2;
        match e {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]], ncols: usize) -> Vec<Vec<Option<Vec<u8>>>> {
        let mut p = CopyParser::default();
        let mut rows = Vec::new();
        for c in chunks {
            p.feed(c, ncols, |cells| {
                rows.push(
                    cells
                        .iter()
                        .map(|c| c.bytes().map(<[u8]>::to_vec))
                        .collect(),
                )
            })
            .unwrap();
        }
        p.finish().unwrap();
        rows
    }

    #[test]
    fn copy_text_format() {
        let rows = parse(&[b"1\ta\\tb\\\\c\t\\N\n2\t\\nx", b"\\101\\x41\tz\n"], 3);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][1].as_deref(), Some(&b"a\tb\\c"[..]));
        assert_eq!(rows[0][2], None);
        assert_eq!(rows[1][1].as_deref(), Some(&b"\nxAA"[..]));
        assert_eq!(rows[1][2].as_deref(), Some(&b"z"[..]));
    }

    #[test]
    fn empty_string_is_not_null() {
        let rows = parse(&[b"1\t\n"], 2);
        assert_eq!(rows[0][1].as_deref(), Some(&b""[..]));
    }

    #[test]
    fn wrong_field_count_is_an_error() {
        let mut p = CopyParser::default();
        assert!(p.feed(b"1\t2\n", 3, |_| {}).is_err());
    }
}

//! `ORDER BY` of subset requests: parsed with Postgres' grammar; only plain column references of
//! the table with `ASC`/`DESC` and `NULLS FIRST`/`LAST` are accepted, rendered from the
//! validated parts only.

use pg_query::protobuf::{node::Node as N, SortByDir, SortByNulls};

use crate::error::{Loc, WhereError, WhereErrorKind};
use crate::ident::quote_ident;
use crate::table::TableInfo;

/// Parse an `ORDER BY` list against the table.
pub fn parse_order_by(text: &str, table: &TableInfo) -> Result<Vec<String>, WhereError> {
    let sql = format!("SELECT 1 ORDER BY {text}");
    let parsed = pg_query::parse(&sql, pg_query::ParserOptions::DEFAULT).map_err(|e| {
        let m = match e {
            pg_query::Error::Parse(m) => m,
            other => other.to_string(),
        };
        WhereError::new(WhereErrorKind::Syntax, Loc::NONE, m)
    })?;
    let stmts = &parsed.protobuf.stmts;
    let Some(N::SelectStmt(select)) = stmts
        .first()
        .filter(|_| stmts.len() == 1)
        .and_then(|s| s.stmt.as_ref())
        .and_then(|s| s.node.as_ref())
    else {
        return Err(WhereError::new(
            WhereErrorKind::Syntax,
            Loc::NONE,
            "invalid order_by",
        ));
    };
    let mut items = Vec::new();
    for item in &select.sort_clause {
        let Some(N::SortBy(sort)) = item.node.as_ref() else {
            return Err(WhereError::new(
                WhereErrorKind::Syntax,
                Loc::NONE,
                "invalid order_by",
            ));
        };
        let Some(N::ColumnRef(r)) = sort.node.as_deref().and_then(|n| n.node.as_ref()) else {
            return Err(WhereError::new(
                WhereErrorKind::Unsupported,
                Loc::NONE,
                "order_by may only name columns",
            ));
        };
        let name = match r.fields.as_slice() {
            [f] => match f.node.as_ref() {
                Some(N::String(s)) => s.sval.clone(),
                _ => {
                    return Err(WhereError::new(
                        WhereErrorKind::Unsupported,
                        Loc::NONE,
                        "order_by may only name columns",
                    ))
                }
            },
            _ => {
                return Err(WhereError::new(
                    WhereErrorKind::Unsupported,
                    Loc::NONE,
                    "order_by may only name columns of the shape's table",
                ))
            }
        };
        if table.column_index(&name).is_none() {
            return Err(WhereError::new(
                WhereErrorKind::UnknownColumn,
                Loc::NONE,
                format!("unknown column {name} in order_by"),
            ));
        }
        let mut out = quote_ident(&name);
        match SortByDir::try_from(sort.sortby_dir) {
            Ok(SortByDir::SortbyDesc) => out.push_str(" DESC"),
            Ok(SortByDir::SortbyAsc) => out.push_str(" ASC"),
            Ok(SortByDir::SortbyUsing) => {
                return Err(WhereError::new(
                    WhereErrorKind::Unsupported,
                    Loc::NONE,
                    "ORDER BY … USING is not supported",
                ))
            }
            _ => {}
        }
        match SortByNulls::try_from(sort.sortby_nulls) {
            Ok(SortByNulls::SortbyNullsFirst) => out.push_str(" NULLS FIRST"),
            Ok(SortByNulls::SortbyNullsLast) => out.push_str(" NULLS LAST"),
            _ => {}
        }
        items.push(out);
    }
    if items.is_empty() {
        return Err(WhereError::new(
            WhereErrorKind::Syntax,
            Loc::NONE,
            "order_by is empty",
        ));
    }
    Ok(items)
}

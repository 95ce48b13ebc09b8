//! `IN (SELECT …)` in where clauses: the forms accepted, their checks and errors (the
//! reference server's texts), and the typed [`Subquery`] an [`Expr::InSubquery`] reads.
//!
//! Accepted: `col IN (SELECT c FROM t [WHERE …])`, the row form `(a, b) IN (SELECT x, y …)`,
//! and their negations (`NOT IN`, `NOT (… IN …)`), anywhere under `AND`/`OR`/`NOT`. The inner
//! select names one table and plain columns only, with no other clause; its where clause is any
//! supported clause over that table (further subqueries included), with the outer `$n`
//! parameters. The left side is a column of the outer table, or a row of them, of exactly the
//! selected columns' types. Nothing is correlated: the inner clause sees the inner table only.

use std::sync::Arc;

use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{SetOperation, SubLink, SubLinkType};

use crate::error::{Loc, WhereError, WhereErrorKind};
use crate::expr::{Expr, Subquery};
use crate::ident::quote_ident;
use crate::source::TableName;
use crate::table::TableInfo;
use crate::ty::Ty;
use crate::typer::{loc, Typer};

/// How deep subqueries may nest (each level is a set the server keeps up to date).
pub const MAX_DEPTH: usize = 16;

impl Subquery {
    /// `SELECT "c", … FROM "schema"."table" [WHERE …]`, rendered from the typed form.
    pub(crate) fn render(&self, out: &mut String) {
        out.push_str("SELECT ");
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&quote_ident(&self.table.columns[*c].name));
        }
        out.push_str(" FROM ");
        out.push_str(&self.table.quoted_name());
        if let Some(f) = &self.filter {
            out.push_str(" WHERE ");
            out.push_str(&f.sql(&self.table));
        }
    }

    /// The select as SQL (what the subquery's rows are read with).
    pub fn sql(&self) -> String {
        let mut out = String::new();
        self.render(&mut out);
        out
    }
}

/// The tables named by the clause's subqueries at any depth, in the order written, without
/// repeats: what a caller loads before typing the clause with them. Only the syntax is checked
/// here; the forms are checked when the clause is typed.
pub fn subquery_tables(clause: &str) -> Result<Vec<TableName>, WhereError> {
    let tree = crate::parse::parse_tree(clause)?;
    tree.where_node()?;
    let mut names: Vec<TableName> = Vec::new();
    for (node, _, _, _) in tree.result.protobuf.nodes() {
        let pg_query::NodeRef::SubLink(s) = node else {
            continue;
        };
        let Some(N::SelectStmt(sel)) = s.subselect.as_deref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        if let [item] = sel.from_clause.as_slice() {
            if let Some(N::RangeVar(r)) = item.node.as_ref() {
                let name = table_name(r);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    Ok(names)
}

fn table_name(r: &pg_query::protobuf::RangeVar) -> TableName {
    TableName {
        schema: if r.schemaname.is_empty() {
            "public".to_string()
        } else {
            r.schemaname.clone()
        },
        name: r.relname.clone(),
    }
}

fn unsupported(at: Loc, message: &str) -> WhereError {
    WhereError::new(WhereErrorKind::Unsupported, at, message)
}

/// How a column's type reads in these errors (the catalog's type name, as the reference
/// prints it: `int4`, `text[]`, `enum mood`).
fn readable(table: &TableInfo, column: usize) -> String {
    let c = &table.columns[column];
    let base = if table.enum_labels(column).is_empty() {
        c.type_name.clone()
    } else {
        format!("enum {}", c.type_name)
    };
    if c.dims > 0 {
        format!("{base}[]")
    } else {
        base
    }
}

fn readable_all(table: &TableInfo, columns: &[usize], row: bool) -> String {
    let names: Vec<String> = columns.iter().map(|c| readable(table, *c)).collect();
    if row {
        format!("row of ({})", names.join(", "))
    } else {
        names.join(", ")
    }
}

/// Can equality of the column's values be decided exactly on their text (see `View`)?
pub(crate) fn keyable(table: &TableInfo, column: usize) -> bool {
    let c = &table.columns[column];
    if c.dims > 0 {
        return false;
    }
    if !table.enum_labels(column).is_empty() {
        return true;
    }
    matches!(
        Ty::of_type(table.eval_type_name(column), 0),
        Some(
            Ty::Int2
                | Ty::Int4
                | Ty::Int8
                | Ty::Numeric
                | Ty::Float4
                | Ty::Float8
                | Ty::Bool
                | Ty::Text
                | Ty::Varchar
                | Ty::Bpchar
                | Ty::Uuid
                | Ty::Bytea
                | Ty::Date
                | Ty::Time
                | Ty::Timestamp
                | Ty::Timestamptz
                | Ty::Interval
        )
    )
}

/// `(cols) IN ((v, …), …)` over `table`'s `columns` for the given values (text form; a row with
/// a NULL is left out: it equals nothing), each constant cast to its column's type (an enum
/// column is compared as its label text). `false` when no row is left.
pub fn values_sql(table: &TableInfo, columns: &[usize], rows: &[Vec<Option<String>>]) -> String {
    use crate::ident::quote_literal;
    let enumish = |c: usize| !table.enum_labels(c).is_empty();
    let left: Vec<String> = columns
        .iter()
        .map(|&c| {
            let q = quote_ident(&table.columns[c].name);
            if enumish(c) {
                format!("{q}::text")
            } else {
                q
            }
        })
        .collect();
    let mut items = Vec::new();
    for row in rows {
        if row.iter().any(Option::is_none) || row.len() != columns.len() {
            continue;
        }
        let vals: Vec<String> = columns
            .iter()
            .zip(row)
            .map(|(&c, v)| {
                let lit = quote_literal(v.as_deref().unwrap_or_default());
                match Ty::of_type(table.eval_type_name(c), 0) {
                    Some(ty) if !enumish(c) => format!("CAST({lit} AS {})", ty.sql()),
                    _ => format!("CAST({lit} AS text)"),
                }
            })
            .collect();
        items.push(if vals.len() > 1 {
            format!("({})", vals.join(", "))
        } else {
            vals.join("")
        });
    }
    if items.is_empty() {
        return "false".into();
    }
    let l = if left.len() > 1 {
        format!("({})", left.join(", "))
    } else {
        left.join("")
    };
    format!("({l} IN ({}))", items.join(", "))
}

impl Typer<'_> {
    /// `left IN (SELECT …)`, checked and typed; the subquery is numbered among the clause's
    /// distinct ones.
    pub(crate) fn sublink(&self, s: &SubLink) -> Result<Expr, WhereError> {
        let at = loc(s.location);
        let only_in = || {
            unsupported(
                at,
                "only `value IN (SELECT ...)` sublinks are supported right now",
            )
        };
        if SubLinkType::try_from(s.sub_link_type) != Ok(SubLinkType::AnySublink)
            || !s.oper_name.is_empty()
        {
            return Err(only_in());
        }
        let Some(tables) = self.tables else {
            return Err(unsupported(at, "subqueries are not supported here"));
        };
        if self.depth >= MAX_DEPTH {
            return Err(unsupported(
                at,
                &format!("subqueries cannot be nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        let Some(N::SelectStmt(sel)) = s.subselect.as_deref().and_then(|n| n.node.as_ref()) else {
            return Err(only_in());
        };
        // The select list: plain, unqualified column names (placed, as the reference does, in
        // the wrapped statement `SELECT 1 WHERE …`).
        let mut names: Vec<(String, Loc)> = Vec::new();
        for t in &sel.target_list {
            let plain = match t.node.as_ref() {
                Some(N::ResTarget(r)) => match r.val.as_deref().and_then(|v| v.node.as_ref()) {
                    Some(N::ColumnRef(c)) if r.indirection.is_empty() => {
                        match c.fields.as_slice() {
                            [f] => match f.node.as_ref() {
                                Some(N::String(name)) => Some((name.sval.clone(), loc(c.location))),
                                _ => None,
                            },
                            _ => None,
                        }
                    }
                    _ => None,
                },
                _ => None,
            };
            match plain {
                Some(p) => names.push(p),
                None => {
                    let raw = match t.node.as_ref() {
                        Some(N::ResTarget(r)) => usize::try_from(r.location).ok(),
                        _ => None,
                    };
                    return Err(unsupported(Loc(raw), "Expected a plain column reference"));
                }
            }
        }
        if names.is_empty() {
            return Err(unsupported(at, "Expected a plain column reference"));
        }
        let range = match sel.from_clause.as_slice() {
            [item] => match item.node.as_ref() {
                Some(N::RangeVar(r)) if r.catalogname.is_empty() && r.inh => Some(r),
                _ => None,
            },
            _ => None,
        };
        let Some(range) = range else {
            return Err(unsupported(Loc::NONE, "Expected a single table reference"));
        };
        let set_op = SetOperation::try_from(sel.op).unwrap_or(SetOperation::Undefined);
        if !sel.distinct_clause.is_empty()
            || !sel.group_clause.is_empty()
            || sel.having_clause.is_some()
            || !sel.window_clause.is_empty()
            || sel.limit_offset.is_some()
            || sel.limit_count.is_some()
            || !sel.sort_clause.is_empty()
            || !sel.locking_clause.is_empty()
            || sel.with_clause.is_some()
            || sel.into_clause.is_some()
            || !sel.values_lists.is_empty()
            || !matches!(set_op, SetOperation::SetopNone | SetOperation::Undefined)
        {
            return Err(unsupported(
                Loc::NONE,
                "SELECT statement must not contain any clauses",
            ));
        }
        let name = table_name(range);
        let Some(table) = tables.table(&name) else {
            return Err(WhereError::new(
                WhereErrorKind::UnknownTable,
                Loc::NONE,
                format!(
                    "Table {} does not exist. If the table name contains capitals or special characters you must quote it.",
                    name.quoted()
                ),
            ));
        };
        let mut columns = Vec::with_capacity(names.len());
        for (n, at) in &names {
            match table.column_index(n) {
                Some(c) => columns.push(c),
                None => {
                    return Err(WhereError::new(
                        WhereErrorKind::UnknownColumn,
                        *at,
                        format!("unknown reference {n}"),
                    ))
                }
            }
        }
        let filter = match sel.where_clause.as_deref() {
            None => None,
            Some(w) => {
                let inner = Typer {
                    table: &table,
                    params: self.params,
                    claims: None,
                    tables: self.tables,
                    depth: self.depth + 1,
                    deps: Default::default(),
                };
                Some(inner.boolean_root(w)?)
            }
        };
        // The left side: a column of the outer table, or a row of them.
        let left_err = || {
            unsupported(
                at,
                "currently, left side of `IN (SELECT ...)` can only be a column reference or a list of column references",
            )
        };
        let test = s.testexpr.as_deref().ok_or_else(left_err)?;
        let (left, row) = match test.node.as_ref() {
            Some(N::RowExpr(r)) => {
                let mut cols = Vec::with_capacity(r.args.len());
                for a in &r.args {
                    match a.node.as_ref() {
                        Some(N::ColumnRef(_)) => match self.column(a)? {
                            Some((c, _)) => cols.push(c),
                            None => return Err(left_err()),
                        },
                        _ => return Err(left_err()),
                    }
                }
                (cols, true)
            }
            Some(N::ColumnRef(_)) => match self.column(test)? {
                Some((c, _)) => (vec![c], false),
                None => return Err(left_err()),
            },
            _ => return Err(left_err()),
        };
        let same_types = left.len() == columns.len()
            && left
                .iter()
                .zip(&columns)
                .all(|(l, r)| self.table.columns[*l].type_oid == table.columns[*r].type_oid);
        // A one-column row on the left is a row, not a value, as for the reference.
        if !same_types || (row && left.len() == 1) {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                format!(
                    "left side of `IN (SELECT ...)` has type {} but subquery returns {}[]",
                    readable_all(self.table, &left, row),
                    readable_all(&table, &columns, columns.len() > 1),
                ),
            ));
        }
        if let Some(&c) = left.iter().find(|&&c| !keyable(self.table, c)) {
            return Err(unsupported(
                at,
                &format!(
                    "`IN (SELECT ...)` is not supported on columns of type {}",
                    readable(self.table, c)
                ),
            ));
        }
        let sub = Subquery {
            table,
            columns,
            filter,
        };
        let mut deps = self.deps.borrow_mut();
        let dep = match deps.iter().position(|d| **d == sub) {
            Some(i) => i,
            None => {
                deps.push(Arc::new(sub));
                deps.len() - 1
            }
        };
        Ok(Expr::InSubquery {
            names: left
                .iter()
                .map(|c| self.table.columns[*c].name.clone())
                .collect(),
            columns: left,
            dep,
            sub: Arc::clone(&deps[dep]),
        })
    }
}

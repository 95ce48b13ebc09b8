//! A compiled where clause: what the rest of the server holds per shape.

use std::sync::Arc;

use crate::eval::eval;
use crate::expr::{Expr, Subquery, WhereClause};
use crate::render::render;
use crate::row::Row;
use crate::terms::{route, Filed, Filing};
use crate::value::Family;

impl WhereClause {
    pub fn new(expr: Expr) -> Self {
        WhereClause {
            expr,
            guarded: false,
        }
    }

    /// `guard AND clause`, where `clause` must never be evaluated on a row `guard` does not
    /// keep (a role's row filter and a client's clause: an error the client's clause raises on
    /// another user's row would tell about that row). Rows match as under `AND`; the SQL is
    /// `CASE WHEN (guard) THEN (clause) ELSE false END`, whose order Postgres keeps (an `AND`'s
    /// it may change by cost).
    pub fn guarded(guard: WhereClause, clause: WhereClause) -> Self {
        WhereClause {
            expr: Expr::And(vec![guard.expr, clause.expr]),
            guarded: true,
        }
    }

    /// The clause as SQL over `table`'s columns, rendered from the validated expression (on
    /// demand: only snapshot and subset queries need it, and idle shapes should not keep it).
    pub fn sql(&self, table: &crate::table::TableInfo) -> String {
        let names: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
        let mut sql = String::new();
        match &self.expr {
            Expr::And(parts) if self.guarded && parts.len() == 2 => {
                sql.push_str("CASE WHEN (");
                render(&parts[0], &names, &mut sql);
                sql.push_str(") THEN (");
                render(&parts[1], &names, &mut sql);
                sql.push_str(") ELSE false END");
            }
            _ => render(&self.expr, &names, &mut sql),
        }
        sql
    }

    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The clause's distinct `IN (SELECT …)` subqueries, numbered as its memberships' `dep`
    /// (in the order first written); nested ones belong to their subquery's own clause.
    pub fn subqueries(&self) -> Vec<Arc<Subquery>> {
        fn walk(e: &Expr, out: &mut Vec<Option<Arc<Subquery>>>) {
            match e {
                Expr::InSubquery { dep, sub, .. } => {
                    if out.len() <= *dep {
                        out.resize(*dep + 1, None);
                    }
                    out[*dep].get_or_insert_with(|| Arc::clone(sub));
                }
                Expr::And(items) | Expr::Or(items) => items.iter().for_each(|i| walk(i, out)),
                Expr::Not(inner) | Expr::BoolTest { expr: inner, .. } => walk(inner, out),
                Expr::IsNull { expr, .. } => {
                    if let crate::expr::Operand::Expr(inner) = expr.as_ref() {
                        walk(inner, out)
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.expr, &mut out);
        out.into_iter().flatten().collect()
    }

    /// Does the clause test membership in a subquery?
    pub fn has_subqueries(&self) -> bool {
        !self.subqueries().is_empty()
    }

    /// The equality every matching row satisfies (the [`Self::route_term`] when it is one):
    /// the column, its family and the constants' [`crate::index_key`]s.
    pub fn eq_term(&self) -> Option<(usize, Family, Vec<Vec<u8>>)> {
        match self.route_term()? {
            Filed {
                column,
                family,
                filing: Filing::Keys(keys),
            } => Some((column, family, keys)),
            _ => None,
        }
    }

    /// A condition every matching row satisfies that the routing index can answer (the
    /// server's): one column equal to one of a few constants, within one of a
    /// few ranges, or (an array) holding one of a few elements. From the whole clause or the
    /// most selective conjunct of a top-level `AND`; an `OR` when all its branches give the
    /// same kind of condition on the same column.
    pub fn route_term(&self) -> Option<Filed> {
        route(&self.expr)
    }

    /// Does the row belong to the shape? (SQL `WHERE`: only TRUE passes; a row on which
    /// Postgres would raise an error does not match.)
    pub fn matches(&self, row: &dyn Row) -> bool {
        eval(&self.expr, row) == Ok(Some(true))
    }
}

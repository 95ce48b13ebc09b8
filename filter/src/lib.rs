//! Shape where clauses: parsed with Postgres' own grammar (`pg_query`, as `SELECT 1 WHERE …`),
//! checked against the table's columns and types, compiled into a predicate over decoded rows,
//! and rendered back to SQL for the snapshot query from the validated form only (user text never
//! reaches SQL as written).
//!
//! Supported: comparisons (`= <> != < <= > >=`) between any two value expressions, `[NOT] IN`
//! lists (with Postgres' common type), `[NOT] BETWEEN [SYMMETRIC]`, `IS [NOT] DISTINCT FROM`,
//! `[NOT] LIKE` / `ILIKE` with `ESCAPE`, `AND`/`OR`/`NOT`, `IS [NOT] NULL`,
//! `IS [NOT] TRUE/FALSE/UNKNOWN`, bare boolean columns and constants; value expressions with
//! arithmetic (`+ - * / % ^`, unary minus), `||`, casts of constants (and widening casts of
//! expressions), and `lower upper length abs coalesce nullif greatest least concat array_length
//! cardinality`; `op ANY/ALL (array)`, arrays with `= <> @> <@ &&` and `||`, `ARRAY[…]`; on
//! int2/int4/int8, numeric (exact, with Postgres' result scales), float4/float8 (NaN highest),
//! boolean, text/varchar/bpchar, uuid, bytea, enum (declared order) and domain (as their base
//! type) columns and arrays of them, with three-valued logic; jsonb with `-> ->> #> #>>`, `@>`,
//! `<@`, `? ?| ?&` and equality (numbers by value, keys in jsonb order); date, time, timestamp,
//! timestamptz and interval with their arithmetic, `date_trunc`, `AT TIME ZONE` / `timezone()`
//! (IANA zones from `chrono-tz`).
//! Text ordering needs a byte-order collation (C, POSIX, C.UTF-8) and case mapping (lower,
//! upper, ILIKE) a C/POSIX character classification: elsewhere they are refused with a 400.
//! `[NOT] IN (SELECT …)` subqueries (`subquery.rs`; [`parse_where_in`]) test membership in a
//! [`View`] the caller keeps for each ([`Row::membership`]); [`Dnf`] numbers the clause's
//! literals as subquery shapes' tags do.
//! `column op constant` comparisons take a fast path ([`Expr::Compare`]); everything else is
//! typed into [`Scalar`] expressions (see `typing.rs`) and evaluated per row.

mod arrays_json;
mod claims;
mod clause;
mod cmp;
mod datetime;
mod dnf;
mod error;
mod eval;
mod expr;
mod functions;
#[cfg(test)]
mod fuzz_tests;
pub mod ident;
mod json;
mod like;
mod num;
mod ops;
mod order_by;
mod parse;
mod pgtext;
mod render;
mod row;
mod scalar;
mod source;
mod subquery;
#[cfg(test)]
mod subquery_tests;
pub mod table;
pub mod terms;
mod ty;
mod typer;
mod typing;
mod value;
mod view;

pub use claims::{
    order_by_columns, parse_where_with, referenced_columns, row_filter_claims, ClaimSource,
};
pub use cmp::CmpOp;
pub use dnf::{Dnf, Position, MAX_DISJUNCTS};
pub use error::{Loc, WhereError, WhereErrorKind};
pub use eval::{array_elements, eval};
pub use expr::{Expr, JsonHasMode, Operand};
pub use expr::{Subquery, WhereClause};
pub use like::{compile_like, like_matches, LikeTok};
pub use num::{Fail, Num};
pub use order_by::parse_order_by;
pub use parse::{parse_where, parse_where_in};
pub use pgtext::V;
pub use row::Row;
pub use scalar::Scalar;
pub use source::{TableName, TableSource};
pub use subquery::{subquery_tables, values_sql};
pub use ty::Ty;
pub use value::{index_key, Family, Literal, OrdKey};
pub use view::{Flip, KeyKind, View};

//! The typed, validated form of a where clause: a boolean [`Expr`] over a table's columns (by
//! position), its operators, and the [`Row`] it is evaluated on.

use std::sync::Arc;

use crate::cmp::CmpOp;
use crate::like::LikeTok;
use crate::ops;
use crate::scalar::Scalar;
use crate::table::TableInfo;
use crate::ty::Ty;
use crate::value::{Family, Literal};

/// A validated, typed boolean expression over a table's columns (by position).
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Const(Option<bool>),
    BoolColumn(usize),
    Compare {
        column: usize,
        family: Family,
        op: CmpOp,
        value: Literal,
    },
    IsNull {
        expr: Box<Operand>,
        negated: bool,
    },
    /// `IS [NOT] TRUE|FALSE|UNKNOWN`: `target` None means UNKNOWN.
    BoolTest {
        expr: Box<Expr>,
        target: Option<bool>,
        negated: bool,
    },
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    /// `text [NOT] LIKE pattern` (characters; a `bpchar` value keeps its padding, as in
    /// Postgres); `fold`: ILIKE, with ASCII case folding of the value (the pattern is folded
    /// already).
    Like {
        arg: Box<Scalar>,
        pattern: Vec<LikeTok>,
        negated: bool,
        fold: bool,
    },
    /// `l op r` between general expressions, both already of type `ty`.
    Cmp {
        op: CmpOp,
        l: Box<Scalar>,
        r: Box<Scalar>,
        ty: Ty,
    },
    /// `expr IS [NOT] NULL` of a general expression.
    ValueIsNull {
        arg: Box<Scalar>,
        negated: bool,
    },
    /// `x op ANY|ALL (arr)`: `x` of type `cmp`, the array's elements of `elem` (converted to
    /// `cmp` for each comparison).
    AnyAll {
        op: CmpOp,
        all: bool,
        x: Box<Scalar>,
        arr: Box<Scalar>,
        elem: Ty,
        cmp: Ty,
    },
    /// `l @> r`, `l <@ r`, `l && r` on arrays with elements of `elem`.
    ArrayOp {
        op: ops::ArrayOp,
        l: Box<Scalar>,
        r: Box<Scalar>,
        elem: Ty,
    },
    /// `l @> r` on jsonb.
    JsonContains {
        l: Box<Scalar>,
        r: Box<Scalar>,
    },
    /// `doc ? key`, `doc ?| keys`, `doc ?& keys` (`any`: `?|`; `all`: `?&`).
    JsonHas {
        doc: Box<Scalar>,
        keys: Box<Scalar>,
        mode: JsonHasMode,
    },
    /// `(columns) IN (SELECT …)`: are the row's `columns` (one, or a row of several) among
    /// the rows of `sub`? `dep` numbers the clause's distinct subqueries in the order they
    /// are written ([`crate::WhereClause::subqueries`]); the answer comes from the row's
    /// [`crate::Row::membership`], with SQL's three-valued logic.
    InSubquery {
        columns: Vec<usize>,
        /// The names of `columns` (the row form's value hash names them).
        names: Vec<String>,
        dep: usize,
        sub: Arc<Subquery>,
    },
    /// `l IS [NOT] DISTINCT FROM r` (`not`: IS NOT DISTINCT FROM), both of type `ty`.
    Distinct {
        l: Box<Scalar>,
        r: Box<Scalar>,
        ty: Ty,
        not: bool,
    },
}

/// The three key-existence operators of jsonb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonHasMode {
    One,
    Any,
    All,
}

impl JsonHasMode {
    pub fn sql(self) -> &'static str {
        match self {
            JsonHasMode::One => "?",
            JsonHasMode::Any => "?|",
            JsonHasMode::All => "?&",
        }
    }
}

/// The operand of `IS NULL`: a column or a boolean expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Column(usize),
    Expr(Expr),
}

/// A compiled where clause (its methods are in `clause.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct WhereClause {
    pub(crate) expr: Expr,
    /// `expr` is `guard AND clause`, to be rendered so that Postgres evaluates `clause` only
    /// on rows `guard` keeps (see [`WhereClause::guarded`]).
    pub(crate) guarded: bool,
}

/// The inner select of an `IN (SELECT …)`: a table, the columns it selects (in select order)
/// and its own where clause.
#[derive(Debug, Clone, PartialEq)]
pub struct Subquery {
    pub table: Arc<TableInfo>,
    pub columns: Vec<usize>,
    pub filter: Option<WhereClause>,
}

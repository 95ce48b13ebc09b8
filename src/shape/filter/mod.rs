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
//! `column op constant` comparisons take a fast path ([`Expr::Compare`]); everything else is
//! typed into [`Scalar`] expressions (see `typing.rs`) and evaluated per row.

mod datetime;
#[cfg(test)]
mod fuzz_tests;
mod json;
mod num;
mod parse;
mod scalar;
mod typing;
mod value;

pub use num::{Fail, Num};
pub use parse::parse_where;
pub use scalar::{Scalar, Ty, V};
pub use value::{index_key, Family, Literal, OrdKey};

use crate::shape::route::{Filed, Filing, Span};

use std::borrow::Cow;
use std::cmp::Ordering;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// The operator with its operands swapped (`1 < x` is `x > 1`).
    fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            other => other,
        }
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::Ne => ord != Ordering::Equal,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Le => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Ge => ord != Ordering::Less,
        }
    }
}

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
        op: scalar::ArrayOp,
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

/// A compiled LIKE pattern element.
#[derive(Debug, Clone, PartialEq)]
pub enum LikeTok {
    Char(char),
    /// `_`: any one character.
    One,
    /// `%`: any run of characters.
    Any,
}

/// Compile a LIKE pattern with its escape character (`None`: no escape, as `ESCAPE ''`).
pub fn compile_like(pattern: &str, escape: Option<char>) -> Result<Vec<LikeTok>, String> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            match chars.next() {
                Some(e) => out.push(LikeTok::Char(e)),
                None => return Err("LIKE pattern must not end with escape character".into()),
            }
        } else if c == '%' {
            if out.last() != Some(&LikeTok::Any) {
                out.push(LikeTok::Any);
            }
        } else if c == '_' {
            out.push(LikeTok::One);
        } else {
            out.push(LikeTok::Char(c));
        }
    }
    Ok(out)
}

/// Does `text` match the compiled pattern? (Wildcard matching with one backtrack point.)
pub fn like_matches(text: &str, pattern: &[LikeTok]) -> bool {
    let t: Vec<char> = text.chars().collect();
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match pattern.get(pi) {
            Some(LikeTok::Any) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(LikeTok::One) => {
                ti += 1;
                pi += 1;
            }
            Some(LikeTok::Char(c)) if *c == t[ti] => {
                ti += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[pi..].iter().all(|p| *p == LikeTok::Any)
}

/// The operand of `IS NULL`: a column or a boolean expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Column(usize),
    Expr(Expr),
}

/// Column values of one row in Postgres text form; `None` is SQL NULL.
pub trait Row {
    fn value(&self, column: usize) -> Option<&[u8]>;
}

/// A compiled where clause.
#[derive(Debug, Clone, PartialEq)]
pub struct WhereClause {
    expr: Expr,
}

impl WhereClause {
    pub fn new(expr: Expr) -> Self {
        WhereClause { expr }
    }

    /// The clause as SQL over `table`'s columns, rendered from the validated expression (on
    /// demand: only snapshot and subset queries need it, and idle shapes should not keep it).
    pub fn sql(&self, table: &crate::postgres::catalog::TableInfo) -> String {
        let names: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
        let mut sql = String::new();
        render(&self.expr, &names, &mut sql);
        sql
    }

    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The equality every matching row satisfies (the [`Self::route_term`] when it is one):
    /// the column, its family and the constants' [`value::index_key`]s.
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

    /// A condition every matching row satisfies that the routing index can answer (see
    /// [`crate::shape::route`]): one column equal to one of a few constants, within one of a
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

/// The family a value of `elem` is keyed in when compared in `cmp` without conversions that
/// could make different keys equal.
fn key_family(elem: Ty, cmp: Ty) -> Option<Family> {
    Some(match (elem, cmp) {
        (e, Ty::Int8) if e.is_int() => Family::Integer,
        (Ty::Numeric, Ty::Numeric) => Family::Numeric,
        (Ty::Text | Ty::Varchar, Ty::Text) => Family::Text { bpchar: false },
        (Ty::Uuid, Ty::Uuid) => Family::Uuid,
        (Ty::Bool, Ty::Bool) => Family::Bool,
        _ => return None,
    })
}

/// The element family of an array type for `@>`, `<@`, `&&` (same element types on both sides).
fn elem_family(elem: Ty) -> Option<Family> {
    match elem {
        e if e.is_int() => Some(Family::Integer),
        Ty::Text | Ty::Varchar => key_family(elem, Ty::Text),
        e => key_family(e, e),
    }
}

/// Index keys of a constant array's non-NULL elements.
fn elem_keys(arr: &Scalar, elem: Ty, family: Family) -> Option<Vec<Vec<u8>>> {
    let Scalar::Const { v: V::Array(a), .. } = arr else {
        return None;
    };
    let mut keys = Vec::with_capacity(a.items.len());
    for item in a.items.iter().filter(|i| !i.is_null()) {
        keys.push(value::index_key(
            family,
            scalar::output(item, elem).as_bytes(),
        )?);
    }
    keys.sort_unstable();
    keys.dedup();
    Some(keys)
}

/// An integer column widened for a comparison is, for equality, the column itself.
fn strip_int_widening(s: &Scalar) -> &Scalar {
    match s {
        Scalar::Conv { arg, to } if to.is_int() && arg.ty().is_int() => arg,
        other => other,
    }
}

/// The smallest byte string above every string starting with `p` (None: there is none).
fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn route(e: &Expr) -> Option<Filed> {
    let filed = |column, family, filing| {
        Some(Filed {
            column,
            family,
            filing,
        })
    };
    match e {
        Expr::Compare {
            column,
            family,
            op,
            value,
        } => {
            if *op == CmpOp::Eq {
                return filed(
                    *column,
                    *family,
                    Filing::Keys(vec![value.index_key(*family)?]),
                );
            }
            if *family == Family::Bool {
                return None;
            }
            let key = value.ord_key(*family)?;
            let span = match op {
                CmpOp::Gt => Span {
                    lo: Some((key, false)),
                    hi: None,
                },
                CmpOp::Ge => Span {
                    lo: Some((key, true)),
                    hi: None,
                },
                CmpOp::Lt => Span {
                    lo: None,
                    hi: Some((key, false)),
                },
                CmpOp::Le => Span {
                    lo: None,
                    hi: Some((key, true)),
                },
                _ => return None,
            };
            filed(*column, *family, Filing::Spans(vec![span]))
        }
        Expr::Like {
            arg,
            pattern,
            negated: false,
            fold: false,
        } => {
            let Scalar::Col {
                idx,
                ty: Ty::Text | Ty::Varchar,
            } = arg.as_ref()
            else {
                return None;
            };
            let family = Family::Text { bpchar: false };
            let mut prefix = String::new();
            for t in pattern {
                match t {
                    LikeTok::Char(c) => prefix.push(*c),
                    _ => break,
                }
            }
            let exact = pattern.iter().all(|t| matches!(t, LikeTok::Char(_)));
            if exact {
                return filed(*idx, family, Filing::Keys(vec![prefix.into_bytes()]));
            }
            if prefix.is_empty() {
                return None;
            }
            let hi = prefix_end(prefix.as_bytes()).map(|b| (OrdKey::Bytes(b), false));
            let lo = Some((OrdKey::Bytes(prefix.into_bytes()), true));
            filed(*idx, family, Filing::Spans(vec![Span { lo, hi }]))
        }
        Expr::AnyAll {
            op: CmpOp::Eq,
            all: false,
            x,
            arr,
            elem,
            cmp,
        } => match (strip_int_widening(x), arr.as_ref()) {
            (Scalar::Col { idx, ty }, Scalar::Const { .. }) => {
                let family = key_family(*ty, *cmp).filter(|_| key_family(*elem, *cmp).is_some())?;
                filed(*idx, family, Filing::Keys(elem_keys(arr, *elem, family)?))
            }
            (Scalar::Const { v, ty }, Scalar::Col { idx, .. }) if !v.is_null() => {
                let family = key_family(*elem, *cmp).filter(|_| key_family(*ty, *cmp).is_some())?;
                let key = value::index_key(family, scalar::output(v, *ty).as_bytes())?;
                filed(*idx, family, Filing::Elems(vec![key]))
            }
            _ => None,
        },
        Expr::ArrayOp { op, l, r, elem } => {
            let family = elem_family(*elem)?;
            let (col, konst, any) = match (op, l.as_ref(), r.as_ref()) {
                (scalar::ArrayOp::Contains, Scalar::Col { idx, .. }, k @ Scalar::Const { .. }) => {
                    (*idx, k, false)
                }
                (
                    scalar::ArrayOp::ContainedBy,
                    k @ Scalar::Const { .. },
                    Scalar::Col { idx, .. },
                ) => (*idx, k, false),
                (scalar::ArrayOp::Overlaps, Scalar::Col { idx, .. }, k @ Scalar::Const { .. })
                | (scalar::ArrayOp::Overlaps, k @ Scalar::Const { .. }, Scalar::Col { idx, .. }) => {
                    (*idx, k, true)
                }
                _ => return None,
            };
            let keys = elem_keys(konst, *elem, family)?;
            if any {
                filed(col, family, Filing::Elems(keys))
            } else {
                // Containing every element means containing the first one.
                let first = keys.into_iter().next()?;
                filed(col, family, Filing::Elems(vec![first]))
            }
        }
        Expr::And(items) => {
            let mut best: Option<Filed> = None;
            let mut spans: Vec<(usize, Family, Span)> = Vec::new();
            for f in items.iter().filter_map(route) {
                match f.filing {
                    Filing::Spans(mut s) if s.len() == 1 => {
                        let span = s.pop()?;
                        match spans
                            .iter_mut()
                            .find(|(c, fam, _)| *c == f.column && *fam == f.family)
                        {
                            Some(slot) => {
                                let prev =
                                    std::mem::replace(&mut slot.2, Span { lo: None, hi: None });
                                slot.2 = prev.intersect(span);
                            }
                            None => spans.push((f.column, f.family, span)),
                        }
                    }
                    _ => best = better(best, Some(f)),
                }
            }
            for (column, family, span) in spans {
                best = better(best, filed(column, family, Filing::Spans(vec![span])));
            }
            best
        }
        Expr::Or(items) => {
            let mut it = items.iter();
            let first = route(it.next()?)?;
            let (column, family) = (first.column, first.family);
            let mut filing = first.filing;
            for e in it {
                let f = route(e)?;
                if f.column != column || f.family != family {
                    return None;
                }
                filing = match (filing, f.filing) {
                    (Filing::Keys(mut a), Filing::Keys(b)) => {
                        a.extend(b);
                        a.sort_unstable();
                        a.dedup();
                        Filing::Keys(a)
                    }
                    (Filing::Elems(mut a), Filing::Elems(b)) => {
                        a.extend(b);
                        a.sort_unstable();
                        a.dedup();
                        Filing::Elems(a)
                    }
                    (Filing::Spans(mut a), Filing::Spans(b)) => {
                        a.extend(b);
                        Filing::Spans(a)
                    }
                    _ => return None,
                };
            }
            filed(column, family, filing)
        }
        _ => None,
    }
}

/// The more selective of two filings: fewest keys, then element keys, then a bounded range,
/// then any range.
fn better(a: Option<Filed>, b: Option<Filed>) -> Option<Filed> {
    fn rank(f: &Filed) -> (u8, usize) {
        match &f.filing {
            Filing::Keys(k) => (0, k.len()),
            Filing::Elems(k) => (1, k.len()),
            Filing::Spans(s) if s.iter().all(Span::bounded) => (2, s.len()),
            Filing::Spans(s) => (3, s.len()),
        }
    }
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(if rank(&b) < rank(&a) { b } else { a }),
    }
}

/// The elements of an array in Postgres text form (`None` = NULL), for the routing index.
pub fn array_elements(text: &str) -> Option<Vec<Option<String>>> {
    scalar::parse_array(text)
        .map(|(items, _)| items.into_iter().map(|i| i.map(Cow::into_owned)).collect())
}

/// AND (`decisive` false) or OR (`decisive` true) in three-valued logic with failures.
fn connective(items: &[Expr], decisive: bool, row: &dyn Row) -> Result<Option<bool>, Fail> {
    let (mut unknown, mut failed) = (false, false);
    for e in items {
        match eval(e, row) {
            Ok(Some(v)) if v == decisive => return Ok(Some(decisive)),
            Ok(Some(_)) => {}
            Ok(None) => unknown = true,
            Err(_) => failed = true,
        }
    }
    if failed {
        return Err(Fail);
    }
    Ok(if unknown { None } else { Some(!decisive) })
}

/// Three-valued evaluation; `Err` where Postgres would raise an error (division by zero,
/// overflow). `AND` is false if any part is false even when another part fails, and `OR` true
/// if any part is true: Postgres may evaluate the parts in any order and stop early, so a
/// failing part only decides the result when nothing else does.
pub fn eval(expr: &Expr, row: &dyn Row) -> Result<Option<bool>, Fail> {
    Ok(match expr {
        Expr::Const(v) => *v,
        Expr::BoolColumn(c) => row.value(*c).and_then(value::parse_bool),
        Expr::Compare {
            column,
            family,
            op,
            value,
        } => match row.value(*column) {
            None => None,
            Some(v) => value::compare(*family, v, value).map(|ord| op.holds(ord)),
        },
        Expr::IsNull { expr, negated } => {
            let is_null = match expr.as_ref() {
                Operand::Column(c) => row.value(*c).is_none(),
                Operand::Expr(e) => eval(e, row)?.is_none(),
            };
            Some(is_null != *negated)
        }
        Expr::BoolTest {
            expr,
            target,
            negated,
        } => {
            let v = eval(expr, row)?;
            Some((v == *target) != *negated)
        }
        // AND stops at FALSE, OR at TRUE; a failure counts only if nothing decided.
        Expr::And(items) => return connective(items, false, row),
        Expr::Or(items) => return connective(items, true, row),
        Expr::Not(e) => eval(e, row)?.map(|b| !b),
        Expr::Like {
            arg,
            pattern,
            negated,
            fold,
        } => match arg.eval(row)? {
            V::Text(t) => {
                let hit = if *fold {
                    like_matches(&t.to_ascii_lowercase(), pattern)
                } else {
                    like_matches(&t, pattern)
                };
                Some(hit != *negated)
            }
            _ => None,
        },
        Expr::Cmp { op, l, r, ty } => {
            let a = l.eval(row)?;
            let b = r.eval(row)?;
            if a.is_null() || b.is_null() {
                None
            } else {
                Some(op.holds(scalar::cmp_values(&a, &b, *ty)))
            }
        }
        Expr::ValueIsNull { arg, negated } => Some(arg.eval(row)?.is_null() != *negated),
        Expr::AnyAll {
            op,
            all,
            x,
            arr,
            elem,
            cmp,
        } => {
            let xv = x.eval(row)?;
            let av = arr.eval(row)?;
            scalar::any_all(*op, *all, &xv, &av, *elem, *cmp)?
        }
        Expr::JsonContains { l, r } => match (l.eval(row)?, r.eval(row)?) {
            (V::Json(a), V::Json(b)) => Some(a.contains(&b)),
            _ => None,
        },
        Expr::JsonHas { doc, keys, mode } => match (doc.eval(row)?, keys.eval(row)?) {
            (V::Json(d), V::Text(k)) => Some(d.has_key(&k)),
            (V::Json(d), V::Array(ks)) => {
                let mut present = ks.items.iter().filter_map(|k| match k {
                    V::Text(k) => Some(d.has_key(k)),
                    _ => None,
                });
                Some(if *mode == JsonHasMode::All {
                    present.all(|p| p)
                } else {
                    present.any(|p| p)
                })
            }
            _ => None,
        },
        Expr::ArrayOp { op, l, r, elem } => match (l.eval(row)?, r.eval(row)?) {
            (V::Array(a), V::Array(b)) => Some(op.holds(&a, &b, *elem)),
            _ => None,
        },
        Expr::Distinct { l, r, ty, not } => {
            let a = l.eval(row)?;
            let b = r.eval(row)?;
            let distinct = match (a.is_null(), b.is_null()) {
                (true, true) => false,
                (true, false) | (false, true) => true,
                _ => scalar::cmp_values(&a, &b, *ty) != Ordering::Equal,
            };
            Some(distinct != *not)
        }
    })
}

fn render(expr: &Expr, names: &[String], out: &mut String) {
    use crate::postgres::identifier::quote_ident;
    match expr {
        Expr::Const(Some(true)) => out.push_str("true"),
        Expr::Const(Some(false)) => out.push_str("false"),
        Expr::Const(None) => out.push_str("NULL::boolean"),
        Expr::BoolColumn(c) => out.push_str(&quote_ident(&names[*c])),
        Expr::Compare {
            column, op, value, ..
        } => {
            out.push_str(&quote_ident(&names[*column]));
            out.push(' ');
            out.push_str(op.sql());
            out.push(' ');
            out.push_str(&value.sql());
        }
        Expr::IsNull { expr, negated } => {
            out.push('(');
            match expr.as_ref() {
                Operand::Column(c) => out.push_str(&quote_ident(&names[*c])),
                Operand::Expr(e) => render(e, names, out),
            }
            out.push_str(if *negated {
                ") IS NOT NULL"
            } else {
                ") IS NULL"
            });
        }
        Expr::BoolTest {
            expr,
            target,
            negated,
        } => {
            out.push('(');
            render(expr, names, out);
            out.push_str(") IS ");
            if *negated {
                out.push_str("NOT ");
            }
            out.push_str(match target {
                Some(true) => "TRUE",
                Some(false) => "FALSE",
                None => "UNKNOWN",
            });
        }
        Expr::And(items) | Expr::Or(items) if items.len() == 1 => render(&items[0], names, out),
        Expr::And(_) | Expr::Or(_) => {
            let sep = if matches!(expr, Expr::And(_)) {
                " AND "
            } else {
                " OR "
            };
            // Nested ANDs in an AND (ORs in an OR) are one list, as Postgres parses them back.
            fn flat<'e>(e: &'e Expr, and: bool, out: &mut Vec<&'e Expr>) {
                match e {
                    Expr::And(items) if and => items.iter().for_each(|i| flat(i, and, out)),
                    Expr::Or(items) if !and => items.iter().for_each(|i| flat(i, and, out)),
                    other => out.push(other),
                }
            }
            let mut parts = Vec::new();
            flat(expr, matches!(expr, Expr::And(_)), &mut parts);
            out.push('(');
            for (i, e) in parts.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                render(e, names, out);
            }
            out.push(')');
        }
        Expr::Like {
            arg,
            pattern,
            negated,
            fold,
        } => {
            // Re-rendered with `\` as the escape character, from the compiled pattern.
            let mut p = String::new();
            for t in pattern {
                match t {
                    LikeTok::Any => p.push('%'),
                    LikeTok::One => p.push('_'),
                    LikeTok::Char(c) => {
                        if matches!(c, '%' | '_' | '\\') {
                            p.push('\\');
                        }
                        p.push(*c);
                    }
                }
            }
            out.push('(');
            arg.render(names, out);
            out.push_str(match (*negated, *fold) {
                (false, false) => " LIKE ",
                (true, false) => " NOT LIKE ",
                (false, true) => " ILIKE ",
                (true, true) => " NOT ILIKE ",
            });
            out.push_str(&crate::postgres::identifier::quote_literal(&p));
            out.push_str(" ESCAPE '\\')");
        }
        Expr::Not(e) => {
            out.push_str("(NOT ");
            render(e, names, out);
            out.push(')');
        }
        Expr::Cmp { op, l, r, .. } => {
            // No parentheses, like `column op constant`: both parse back to the same thing.
            l.render(names, out);
            out.push(' ');
            out.push_str(op.sql());
            out.push(' ');
            r.render(names, out);
        }
        Expr::AnyAll {
            op, all, x, arr, ..
        } => {
            out.push('(');
            x.render(names, out);
            out.push(' ');
            out.push_str(op.sql());
            out.push_str(if *all { " ALL (" } else { " ANY (" });
            arr.render(names, out);
            out.push_str("))");
        }
        Expr::JsonContains { l, r } => scalar::render_binary(l, "@>", r, names, out),
        Expr::JsonHas { doc, keys, mode } => {
            scalar::render_binary(doc, mode.sql(), keys, names, out)
        }
        Expr::ArrayOp { op, l, r, .. } => scalar::render_binary(l, op.sql(), r, names, out),
        Expr::ValueIsNull { arg, negated } => {
            out.push('(');
            arg.render(names, out);
            out.push_str(if *negated {
                ") IS NOT NULL"
            } else {
                ") IS NULL"
            });
        }
        Expr::Distinct { l, r, not, .. } => {
            out.push('(');
            l.render(names, out);
            out.push_str(if *not {
                " IS NOT DISTINCT FROM "
            } else {
                " IS DISTINCT FROM "
            });
            r.render(names, out);
            out.push(')');
        }
    }
}

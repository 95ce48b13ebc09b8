//! Typing of general value expressions (anything beyond `column op constant`): every node gets
//! the type Postgres would give it, and the implicit conversions Postgres would insert are
//! made explicit ([`Scalar::Conv`]), so that evaluation needs no type decisions.
//!
//! The rules follow Postgres' operator and function resolution for the supported types:
//! - a string literal, parameter or NULL is `unknown` and takes its context's type (for `||`,
//!   text);
//! - integers of different widths combine into the wider; integer with numeric gives numeric;
//!   anything with a float gives float8, except float4 with float4 (float4, computed in single
//!   precision); `^` is float8 unless a numeric is involved (then numeric, with a constant
//!   integer exponent);
//! - comparisons: integers as integers, with numeric as numeric, with a float as float8; text
//!   with text as text (a `bpchar` becomes text, losing its trailing spaces) unless both are
//!   `bpchar` (trailing spaces ignored);
//! - `coalesce`, `greatest`, `least` and multi-item `IN` lists use the common type (the widest
//!   in int2 → int4 → int8 → numeric → float4 → float8; for text, the first argument's).
//!
//! Arrays and jsonb are typed in `arrays_json.rs`, function calls in `functions.rs`.

use pg_query::protobuf::{a_const, node::Node as N, AExprKind, FuncCall, MinMaxOp, TypeName};
use pg_query::Node;

use crate::cmp::CmpOp;
use crate::error::{Loc, WhereError, WhereErrorKind};
use crate::expr::Expr;
use crate::like::LikeTok;
use crate::num::Num;
use crate::ops::{ArOp, DtOp};
use crate::pgtext::{parse_value, V};
use crate::scalar::Scalar;
use crate::ty::{wider, Ty};
use crate::typer::{loc, Typer};
use crate::{ops, ty};

/// A value expression before its type is settled.
pub(crate) enum Val {
    Known(Scalar),
    /// A string literal or parameter (`Some(text)`) or an untyped NULL (`None`): Postgres'
    /// `unknown`, typed by its context.
    Unknown(Option<String>),
}

impl Val {
    fn is_null(&self) -> bool {
        matches!(
            self,
            Val::Unknown(None) | Val::Known(Scalar::Const { v: V::Null, .. })
        )
    }

    pub(crate) fn known_ty(&self) -> Option<Ty> {
        match self {
            Val::Known(s) => Some(s.ty()),
            Val::Unknown(_) => None,
        }
    }

    fn is_constant(&self) -> bool {
        matches!(self, Val::Unknown(_) | Val::Known(Scalar::Const { .. }))
    }
}

/// The comparison type of two operand types (see the module doc), if they compare at all.
pub(crate) fn cmp_type(a: Ty, b: Ty) -> Option<Ty> {
    if let (Some(_), Some(_)) = (a.num_rank(), b.num_rank()) {
        return Some(if a.is_float() || b.is_float() {
            Ty::Float8
        } else if a == Ty::Numeric || b == Ty::Numeric {
            Ty::Numeric
        } else {
            Ty::Int8
        });
    }
    if let (Some(_), Some(_)) = (a.dt_rank(), b.dt_rank()) {
        return Some(wider(a, b));
    }
    if a.is_text() && b.is_text() {
        // bpchar's operators win against bpchar and varchar; with text, text's do (text is
        // the preferred string type).
        let bpchar = (a == Ty::Bpchar || b == Ty::Bpchar) && a != Ty::Text && b != Ty::Text;
        return Some(if bpchar { Ty::Bpchar } else { Ty::Text });
    }
    (a == b).then_some(a)
}

/// The common type of several types (Postgres' `select_common_type` for the supported ones).
pub(crate) fn common_type(types: &[Ty]) -> Option<Ty> {
    let first = *types.first()?;
    let mut t = first;
    for &u in &types[1..] {
        if (t.num_rank().is_some() && u.num_rank().is_some())
            || (t.dt_rank().is_some() && u.dt_rank().is_some())
        {
            t = wider(t, u);
        } else if t.is_text() && u.is_text() || t == u {
            // Text-like types convert both ways: the first one stays.
        } else {
            return None;
        }
    }
    Some(t)
}

/// A constant of `ty` from its text (a literal or parameter), with Postgres' input errors.
pub(crate) fn const_of(text: &str, ty: Ty) -> Result<V<'static>, WhereError> {
    if text.contains('\0') {
        return Err(WhereError::new(
            WhereErrorKind::InvalidValue,
            Loc::NONE,
            "invalid NUL character in constant",
        ));
    }
    match parse_value(text, ty) {
        Some(v) => Ok(v.into_static()),
        None if ty.is_int() && text.trim().parse::<i128>().is_ok() => Err(WhereError::new(
            WhereErrorKind::InvalidValue,
            Loc::NONE,
            format!("value \"{text}\" is out of range for type {}", ty.name()),
        )),
        None => Err(WhereError::new(
            WhereErrorKind::InvalidValue,
            Loc::NONE,
            format!("invalid input syntax for type {}: \"{text}\"", ty.name()),
        )),
    }
}

/// The type of a numeric literal: integers that fit are int4 or int8, others numeric.
fn numeric_literal(text: &str) -> Result<Scalar, WhereError> {
    if let Ok(i) = text.parse::<i64>() {
        let ty = if i32::try_from(i).is_ok() {
            Ty::Int4
        } else {
            Ty::Int8
        };
        return Ok(Scalar::Const { v: V::Int(i), ty });
    }
    let n = Num::parse(text).ok_or_else(|| {
        WhereError::new(
            WhereErrorKind::InvalidValue,
            Loc::NONE,
            format!("invalid number {text}"),
        )
    })?;
    Ok(Scalar::Const {
        v: V::Num(n),
        ty: Ty::Numeric,
    })
}

/// Does comparing values of `ty` involve text collation?
/// Postgres' error for an operator that has no version for these operand types.
pub(crate) fn no_operator(at: Loc, l: Ty, op: &str, r: Ty) -> WhereError {
    WhereError::new(
        WhereErrorKind::Type,
        at,
        format!("operator does not exist: {} {op} {}", l.name(), r.name()),
    )
}

pub(crate) fn textual(ty: Ty) -> bool {
    ty.is_text() || ty.elem().is_some_and(Ty::is_text)
}

pub(crate) fn is_ordering(op: CmpOp) -> bool {
    !matches!(op, CmpOp::Eq | CmpOp::Ne)
}

impl Typer<'_> {
    /// Type a value expression.
    pub(crate) fn value(&self, node: &Node) -> Result<Val, WhereError> {
        match node.node.as_ref() {
            Some(N::ColumnRef(r)) => {
                let Some((idx, _)) = self.column(node)? else {
                    return Err(WhereError::new(
                        WhereErrorKind::UnknownColumn,
                        loc(r.location),
                        "invalid column reference",
                    ));
                };
                let c = &self.table.columns[idx];
                let labels = self.table.enum_labels(idx);
                let ty = if labels.is_empty() {
                    Ty::of_type(self.table.eval_type_name(idx), c.dims)
                } else {
                    let ty = ty::enum_type(labels).map_err(|e| {
                        WhereError::new(WhereErrorKind::Unsupported, loc(r.location), e.to_string())
                    })?;
                    Some(ty.array_if(c.dims > 0))
                };
                let ty = ty.ok_or_else(|| {
                    WhereError::new(WhereErrorKind::Unsupported, loc(r.location), format!("columns of type {} are not supported in where clauses yet (column {:?})",
                        c.type_name,
                        c.name
                    ))
                })?;
                Ok(Val::Known(Scalar::Col { idx, ty }))
            }
            Some(N::AConst(c)) => {
                if c.isnull {
                    return Ok(Val::Unknown(None));
                }
                Ok(match &c.val {
                    None => Val::Unknown(None),
                    Some(a_const::Val::Ival(i)) => Val::Known(Scalar::Const {
                        v: V::Int(i64::from(i.ival)),
                        ty: Ty::Int4,
                    }),
                    Some(a_const::Val::Fval(f)) => Val::Known(numeric_literal(&f.fval)?),
                    Some(a_const::Val::Boolval(b)) => Val::Known(Scalar::Const {
                        v: V::Bool(b.boolval),
                        ty: Ty::Bool,
                    }),
                    Some(a_const::Val::Sval(s)) => Val::Unknown(Some(s.sval.clone())),
                    Some(a_const::Val::Bsval(_)) => {
                        return Err(WhereError::new(
                            WhereErrorKind::Unsupported,
                            loc(c.location),
                            "bit strings are not supported",
                        ))
                    }
                })
            }
            Some(N::ParamRef(p)) => match self.param(p)? {
                crate::value::RawConst::Str(s) => Ok(Val::Unknown(Some(s))),
                _ => Err(WhereError::new(
                    WhereErrorKind::Parameter,
                    loc(p.location),
                    "invalid parameter",
                )),
            },
            Some(N::TypeCast(t)) => self.cast(t),
            Some(N::CoalesceExpr(c)) => self
                .call(loc(c.location), "coalesce", &c.args)
                .map(Val::Known),
            Some(N::MinMaxExpr(m)) => {
                let name = if MinMaxOp::try_from(m.op) == Ok(MinMaxOp::IsLeast) {
                    "least"
                } else {
                    "greatest"
                };
                self.call(loc(m.location), name, &m.args).map(Val::Known)
            }
            Some(N::AExpr(a)) => {
                let at = loc(a.location);
                if AExprKind::try_from(a.kind) == Ok(AExprKind::AexprNullif) {
                    let args: Vec<Node> = [a.lexpr.as_deref(), a.rexpr.as_deref()]
                        .into_iter()
                        .flatten()
                        .cloned()
                        .collect();
                    return self.call(at, "nullif", &args).map(Val::Known);
                }
                if AExprKind::try_from(a.kind) != Ok(AExprKind::AexprOp) {
                    return Err(WhereError::new(
                        WhereErrorKind::Type,
                        at,
                        "a boolean expression cannot be used as a value",
                    ));
                }
                let op = match a.name.last().and_then(|n| n.node.as_ref()) {
                    Some(N::String(s)) => s.sval.as_str(),
                    _ => {
                        return Err(WhereError::new(
                            WhereErrorKind::Unsupported,
                            at,
                            "unsupported operator",
                        ))
                    }
                };
                let Some(r) = a.rexpr.as_deref() else {
                    return Err(WhereError::new(
                        WhereErrorKind::Unsupported,
                        at,
                        format!("unsupported operator {op}"),
                    ));
                };
                let Some(l) = a.lexpr.as_deref() else {
                    return self.unary(at, op, r);
                };
                let ar = match op {
                    "+" => ArOp::Add,
                    "-" => ArOp::Sub,
                    "*" => ArOp::Mul,
                    "/" => ArOp::Div,
                    "%" => ArOp::Rem,
                    "^" => ArOp::Pow,
                    "||" => return self.concat(at, l, r).map(Val::Known),
                    "->" | "->>" | "#>" | "#>>" => {
                        return self.json_get(at, op, l, r).map(Val::Known)
                    }
                    other => {
                        return Err(WhereError::new(
                            WhereErrorKind::Type,
                            at,
                            format!("operator {other} cannot be used as a value here"),
                        ))
                    }
                };
                self.arith(at, ar, l, r).map(Val::Known)
            }
            Some(N::FuncCall(f)) => match self.claim(f) {
                Some(value) => value.map(Val::Unknown),
                None => self.func(f).map(Val::Known),
            },
            Some(N::AArrayExpr(a)) => self
                .array_cons(loc(a.location), &a.elements)
                .map(Val::Known),
            Some(N::SubLink(s)) => Err(WhereError::new(
                WhereErrorKind::Unsupported,
                loc(s.location),
                "only `value IN (SELECT ...)` sublinks are supported right now",
            )),
            _ => Err(WhereError::new(
                WhereErrorKind::Unsupported,
                Loc::NONE,
                "unsupported expression in where clause",
            )),
        }
    }

    /// A value settled to a type: an `unknown` becomes a constant of `ty`.
    pub(crate) fn settle(&self, v: Val, ty: Ty) -> Result<Scalar, WhereError> {
        match v {
            Val::Known(s) => Ok(s),
            Val::Unknown(None) => Ok(Scalar::Const { v: V::Null, ty }),
            Val::Unknown(Some(text)) => Ok(Scalar::Const {
                v: const_of(&text, ty)?,
                ty,
            }),
        }
    }

    /// Both operands of a binary operator: an `unknown` takes the other side's type (two
    /// unknowns are text).
    pub(crate) fn pair(&self, a: Val, b: Val) -> Result<(Scalar, Scalar), WhereError> {
        match (a.known_ty(), b.known_ty()) {
            (Some(_), Some(_)) => Ok((self.settle(a, Ty::Text)?, self.settle(b, Ty::Text)?)),
            (Some(t), None) => Ok((self.settle(a, t)?, self.settle(b, t)?)),
            (None, Some(t)) => Ok((self.settle(a, t)?, self.settle(b, t)?)),
            (None, None) => Ok((self.settle(a, Ty::Text)?, self.settle(b, Ty::Text)?)),
        }
    }

    /// `l op r` between any two value expressions.
    pub(crate) fn compare_general(
        &self,
        at: Loc,
        op: CmpOp,
        l: &Node,
        r: &Node,
    ) -> Result<Expr, WhereError> {
        let a = self.value(l)?;
        let b = self.value(r)?;
        self.compare_vals(at, op, a, b)
    }

    fn compare_vals(&self, at: Loc, op: CmpOp, a: Val, b: Val) -> Result<Expr, WhereError> {
        let null = a.is_null() || b.is_null();
        let (l, r) = self.pair(a, b)?;
        let ty =
            cmp_type(l.ty(), r.ty()).ok_or_else(|| no_operator(at, l.ty(), op.sql(), r.ty()))?;
        if textual(ty) {
            self.check_collation(at, &[&l, &r], is_ordering(op))?;
        }
        if ty == Ty::Jsonb && is_ordering(op) {
            return Err(WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                "ordering comparisons on jsonb are not supported (only = and <>)",
            ));
        }
        if null {
            return Ok(Expr::Const(None));
        }
        Ok(Expr::Cmp {
            op,
            l: Box::new(l.conv(ty)),
            r: Box::new(r.conv(ty)),
            ty,
        })
    }

    /// `x [NOT] IN (…)` for a general `x`: with two or more constant items, all compared in
    /// their common type with `x` (as Postgres does); otherwise item by item.
    pub(crate) fn in_general(
        &self,
        at: Loc,
        x: &Node,
        items: &[Node],
        negated: bool,
    ) -> Result<Expr, WhereError> {
        let op = if negated { CmpOp::Ne } else { CmpOp::Eq };
        let vals = items
            .iter()
            .map(|i| self.value(i))
            .collect::<Result<Vec<_>, _>>()?;
        let lhs_ty = self.value(x)?.known_ty();
        let consts: Vec<Ty> = vals
            .iter()
            .filter(|v| v.is_constant())
            .filter_map(Val::known_ty)
            .collect();
        let common = if items.len() > 1 {
            let mut types: Vec<Ty> = lhs_ty.into_iter().collect();
            types.extend(consts);
            if types.is_empty() {
                Some(Ty::Text)
            } else {
                common_type(&types)
            }
        } else {
            None
        };
        let mut terms = Vec::with_capacity(vals.len());
        for v in vals {
            let a = self.value(x)?;
            terms.push(match common {
                Some(ty) if v.is_constant() => {
                    let l = self.settle(a, ty)?.conv(ty);
                    if v.is_null() {
                        Expr::Const(None)
                    } else {
                        let r = self.settle(v, ty)?.conv(ty);
                        let cty = cmp_type(ty, ty).unwrap_or(ty);
                        if cty.is_text() {
                            self.check_collation(at, &[&l, &r], false)?;
                        }
                        Expr::Cmp {
                            op,
                            l: Box::new(l.conv(cty)),
                            r: Box::new(r.conv(cty)),
                            ty: cty,
                        }
                    }
                }
                _ => self.compare_vals(at, op, a, v)?,
            });
        }
        Ok(if negated {
            Expr::And(terms)
        } else {
            Expr::Or(terms)
        })
    }

    /// `l IS [NOT] DISTINCT FROM r` between any two value expressions.
    pub(crate) fn distinct_general(
        &self,
        at: Loc,
        l: &Node,
        r: &Node,
        distinct: bool,
    ) -> Result<Expr, WhereError> {
        let a = self.value(l)?;
        let b = self.value(r)?;
        // With an untyped NULL on one side this is an IS [NOT] NULL test of the other.
        match (&a, &b) {
            (Val::Unknown(None), Val::Unknown(None)) => return Ok(Expr::Const(Some(!distinct))),
            (_, Val::Unknown(None)) | (Val::Unknown(None), _) => {
                let other = if matches!(a, Val::Unknown(None)) {
                    b
                } else {
                    a
                };
                return Ok(Expr::ValueIsNull {
                    arg: Box::new(self.settle(other, Ty::Text)?),
                    negated: distinct,
                });
            }
            _ => {}
        }
        let (l, r) = self.pair(a, b)?;
        let ty = cmp_type(l.ty(), r.ty()).ok_or_else(|| {
            WhereError::new(
                WhereErrorKind::Type,
                at,
                format!(
                    "operator does not exist: {} IS DISTINCT FROM {}",
                    l.ty().name(),
                    r.ty().name()
                ),
            )
        })?;
        if ty.is_text() {
            self.check_collation(at, &[&l, &r], false)?;
        }
        Ok(Expr::Distinct {
            l: Box::new(l.conv(ty)),
            r: Box::new(r.conv(ty)),
            ty,
            not: !distinct,
        })
    }

    /// The text operand of LIKE / ILIKE.
    pub(crate) fn like_arg(&self, at: Loc, node: &Node, fold: bool) -> Result<Scalar, WhereError> {
        let arg = self.settle(self.value(node)?, Ty::Text)?;
        if !arg.ty().is_text() {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                format!(
                    "operator does not exist: {} ~~ text (LIKE needs text)",
                    arg.ty().name()
                ),
            ));
        }
        if fold {
            self.check_fold(at, &arg)?;
        }
        Ok(arg)
    }

    /// `IS [NOT] NULL` of a value expression.
    pub(crate) fn value_is_null(&self, node: &Node, negated: bool) -> Result<Expr, WhereError> {
        let arg = self.settle(self.value(node)?, Ty::Text)?;
        Ok(Expr::ValueIsNull {
            arg: Box::new(arg),
            negated,
        })
    }

    fn unary(&self, at: Loc, op: &str, r: &Node) -> Result<Val, WhereError> {
        let v = self.value(r)?;
        let Val::Known(s) = v else {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                format!("operator is not unique: {op} unknown"),
            ));
        };
        if s.ty().num_rank().is_none() && s.ty() != Ty::Interval {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                format!("operator does not exist: {op} {}", s.ty().name()),
            ));
        }
        match op {
            "+" => Ok(Val::Known(s)),
            "-" => Ok(Val::Known(match s {
                Scalar::Const { v, ty } => {
                    let v = match v {
                        V::Null => V::Null,
                        V::Int(i) if i == ty.int_range().0 => {
                            return Err(WhereError::new(
                                WhereErrorKind::InvalidValue,
                                at,
                                format!("{} out of range", ty.name()),
                            ))
                        }
                        V::Int(i) => V::Int(-i),
                        V::Num(n) => V::Num(n.neg()),
                        V::Float(f) => V::Float(-f),
                        _ => {
                            return Err(WhereError::new(
                                WhereErrorKind::Unsupported,
                                at,
                                "unsupported negation",
                            ))
                        }
                    };
                    Scalar::Const { v, ty }
                }
                other => Scalar::Neg(Box::new(other)),
            })),
            _ => Err(WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                format!("unsupported operator {op}"),
            )),
        }
    }

    fn arith(&self, at: Loc, op: ArOp, l: &Node, r: &Node) -> Result<Scalar, WhereError> {
        let a = self.value(l)?;
        let b = self.value(r)?;
        if a.known_ty().is_none() && b.known_ty().is_none() {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                format!("operator is not unique: unknown {} unknown", op.sql()),
            ));
        }
        let temporal = |t: Option<Ty>| {
            t.is_some_and(|t| t.dt_rank().is_some() || matches!(t, Ty::Time | Ty::Interval))
        };
        if temporal(a.known_ty()) || temporal(b.known_ty()) {
            return self.date_arith(at, op, a, b);
        }
        let (a, b) = self.pair(a, b)?;
        let (ta, tb) = (a.ty(), b.ty());
        if ta.num_rank().is_none() || tb.num_rank().is_none() {
            return Err(no_operator(at, ta, op.sql(), tb));
        }
        let any_float = ta.is_float() || tb.is_float();
        let any_numeric = ta == Ty::Numeric || tb == Ty::Numeric;
        let ty = match op {
            ArOp::Pow if any_float || !any_numeric => Ty::Float8,
            ArOp::Pow => return self.numeric_pow(at, a, b),
            ArOp::Rem if any_float => return Err(no_operator(at, ta, "%", tb)),
            _ if any_float => {
                if ta == Ty::Float4 && tb == Ty::Float4 {
                    Ty::Float4
                } else {
                    Ty::Float8
                }
            }
            _ if any_numeric => Ty::Numeric,
            _ => wider(ta, tb),
        };
        Ok(Scalar::Arith {
            op,
            l: Box::new(a.conv(ty)),
            r: Box::new(b.conv(ty)),
            ty,
        })
    }

    /// Arithmetic with a date, time, timestamp or interval operand.
    fn date_arith(&self, at: Loc, op: ArOp, a: Val, b: Val) -> Result<Scalar, WhereError> {
        // An untyped operand: an interval next to + (and next to an interval), a float next to
        // * and /, otherwise the other operand's type (as Postgres' resolution picks).
        let hint = |known: Ty| match op {
            ArOp::Mul | ArOp::Div => Ty::Float8,
            ArOp::Add => Ty::Interval,
            _ if known == Ty::Interval => Ty::Interval,
            _ => known,
        };
        let (a, b) = match (a.known_ty(), b.known_ty()) {
            (Some(t), None) => (self.settle(a, t)?, self.settle(b, hint(t))?),
            (None, Some(t)) => (self.settle(a, hint(t))?, self.settle(b, t)?),
            _ => (self.settle(a, Ty::Text)?, self.settle(b, Ty::Text)?),
        };
        let (ta, tb) = (a.ty(), b.ty());
        let is_ts = |t: Ty| matches!(t, Ty::Timestamp | Ty::Timestamptz);
        let node = |op: DtOp, l: Scalar, r: Scalar, ty: Ty| Scalar::DateOp {
            op,
            l: Box::new(l),
            r: Box::new(r),
            ty,
        };
        Ok(match (op, ta, tb) {
            (ArOp::Add, Ty::Date, Ty::Int2 | Ty::Int4) => {
                node(DtOp::DateAddDays, a, b.conv(Ty::Int4), Ty::Date)
            }
            (ArOp::Add, Ty::Int2 | Ty::Int4, Ty::Date) => {
                node(DtOp::DateAddDays, b, a.conv(Ty::Int4), Ty::Date)
            }
            (ArOp::Sub, Ty::Date, Ty::Int2 | Ty::Int4) => {
                node(DtOp::DateSubDays, a, b.conv(Ty::Int4), Ty::Date)
            }
            (ArOp::Sub, Ty::Date, Ty::Date) => node(DtOp::DateDiff, a, b, Ty::Int4),
            (ArOp::Add, Ty::Date, Ty::Time) => node(DtOp::DateAddTime, a, b, Ty::Timestamp),
            (ArOp::Add, Ty::Time, Ty::Date) => node(DtOp::DateAddTime, b, a, Ty::Timestamp),
            (ArOp::Add | ArOp::Sub, l, Ty::Interval) if is_ts(l) || l == Ty::Date => {
                let ty = if l == Ty::Date { Ty::Timestamp } else { l };
                let op = if op == ArOp::Add {
                    DtOp::TsAddIv
                } else {
                    DtOp::TsSubIv
                };
                node(op, a.conv(ty), b, ty)
            }
            (ArOp::Add, Ty::Interval, r) if is_ts(r) || r == Ty::Date => {
                let ty = if r == Ty::Date { Ty::Timestamp } else { r };
                node(DtOp::TsAddIv, b.conv(ty), a, ty)
            }
            (ArOp::Sub, l, r)
                if (is_ts(l) || is_ts(r)) && l.dt_rank().is_some() && r.dt_rank().is_some() =>
            {
                let ty = wider(l, r);
                node(DtOp::TsDiff, a.conv(ty), b.conv(ty), Ty::Interval)
            }
            (ArOp::Add, Ty::Interval, Ty::Interval) => node(DtOp::IvAdd, a, b, Ty::Interval),
            (ArOp::Sub, Ty::Interval, Ty::Interval) => node(DtOp::IvSub, a, b, Ty::Interval),
            (ArOp::Mul, Ty::Interval, n) if n.num_rank().is_some() => {
                node(DtOp::IvMul, a, b.conv(Ty::Float8), Ty::Interval)
            }
            (ArOp::Mul, n, Ty::Interval) if n.num_rank().is_some() => {
                node(DtOp::IvMul, b, a.conv(Ty::Float8), Ty::Interval)
            }
            (ArOp::Div, Ty::Interval, n) if n.num_rank().is_some() => {
                node(DtOp::IvDiv, a, b.conv(Ty::Float8), Ty::Interval)
            }
            _ => return Err(no_operator(at, ta, op.sql(), tb)),
        })
    }

    /// `numeric ^ n`: supported for a constant integer exponent from 0 to 64.
    fn numeric_pow(&self, at: Loc, base: Scalar, exp: Scalar) -> Result<Scalar, WhereError> {
        let exp = exp.conv(Ty::Numeric);
        let n = match &exp {
            Scalar::Const { v: V::Null, .. } => {
                return Ok(Scalar::Const {
                    v: V::Null,
                    ty: Ty::Numeric,
                })
            }
            Scalar::Const { v: V::Num(n), .. } => (0..=64u32)
                .find(|k| n.cmp_total(&Num::from_i64(i64::from(*k))) == std::cmp::Ordering::Equal),
            _ => None,
        };
        let n = n.ok_or_else(|| {
            WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                "numeric ^ is supported with a constant integer exponent from 0 to 64",
            )
        })?;
        Ok(Scalar::PowN {
            base: Box::new(base.conv(Ty::Numeric)),
            n,
        })
    }

    /// `a || b` on text (unknown operands are text), or with an array on either side.
    fn concat(&self, at: Loc, l: &Node, r: &Node) -> Result<Scalar, WhereError> {
        let (a, b) = (self.value(l)?, self.value(r)?);
        let is_array = |v: &Val| v.known_ty().is_some_and(|t| t.elem().is_some());
        if is_array(&a) || is_array(&b) {
            return self.array_concat(at, a, b);
        }
        let a = self.settle(a, Ty::Text)?;
        let b = self.settle(b, Ty::Text)?;
        if !a.ty().is_text() || !b.ty().is_text() {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                format!(
                    "|| is supported between text values (here {} || {})",
                    a.ty().name(),
                    b.ty().name()
                ),
            ));
        }
        Ok(Scalar::Concat(
            Box::new(a.conv(Ty::Text)),
            Box::new(b.conv(Ty::Text)),
        ))
    }

    /// `expr::type` / `CAST(expr AS type)`.
    fn cast(&self, t: &pg_query::protobuf::TypeCast) -> Result<Val, WhereError> {
        let at = loc(t.location);
        let arg = t.arg.as_deref().ok_or_else(|| {
            WhereError::new(WhereErrorKind::Syntax, Loc::NONE, "cast without operand")
        })?;
        let to = cast_type(t.type_name.as_ref()).ok_or_else(|| {
            WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                "this cast is not supported in where clauses yet",
            )
        })?;
        match self.value(arg)? {
            Val::Unknown(None) => Ok(Val::Known(Scalar::Const { v: V::Null, ty: to })),
            Val::Unknown(Some(text)) => Ok(Val::Known(Scalar::Const {
                v: const_of(&text, to).map_err(|e| e.at(at))?,
                ty: to,
            })),
            Val::Known(Scalar::Const { v, ty }) => Ok(Val::Known(Scalar::Const {
                v: explicit_cast(v, ty, to).map_err(|e| e.at(at))?,
                ty: to,
            })),
            Val::Known(s) => {
                let from = s.ty();
                let widening = match (from.num_rank(), to.num_rank()) {
                    (Some(x), Some(y)) => y >= x,
                    _ => match (from.dt_rank(), to.dt_rank()) {
                        // date → timestamp → timestamptz, and timestamptz → timestamp (the
                        // same instant in the session's UTC).
                        (Some(x), Some(y)) => y >= x || (x == 2 && y == 1),
                        _ => from.is_text() && to.is_text() || from == to,
                    },
                };
                if widening {
                    return Ok(Val::Known(s.conv(to)));
                }
                if !ty::explicit_cast_ok(from, to) {
                    return Err(WhereError::new(
                        WhereErrorKind::Unsupported,
                        at,
                        format!(
                            "casting an expression of type {} to {} is not supported",
                            from.name(),
                            to.name()
                        ),
                    ));
                }
                Ok(Val::Known(Scalar::Conv {
                    arg: Box::new(s),
                    to,
                }))
            }
        }
    }

    fn func(&self, f: &FuncCall) -> Result<Scalar, WhereError> {
        let at = loc(f.location);
        if f.agg_star || f.agg_distinct || f.over.is_some() || f.agg_filter.is_some() {
            return Err(WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                "aggregate and window functions are not allowed in where clauses",
            ));
        }
        let parts = crate::typer::func_name(f);
        let name = match parts.as_slice() {
            [n] | ["pg_catalog", n] => *n,
            _ => {
                return Err(WhereError::new(
                    WhereErrorKind::UnknownFunction,
                    at,
                    format!("unknown function {}", parts.join(".")),
                ))
            }
        };
        self.call(at, name, &f.args)
    }

    /// Text comparison needs one collation; ordering needs a byte-order one (C, POSIX, or a
    /// database default of C / POSIX / C.UTF-8).
    pub(crate) fn check_collation(
        &self,
        at: Loc,
        scalars: &[&Scalar],
        ordering: bool,
    ) -> Result<(), WhereError> {
        let mut cols = Vec::new();
        for s in scalars {
            s.columns(&mut cols);
        }
        let mut found: Option<&str> = None;
        for (idx, ty) in cols {
            if !ty.is_text() && !matches!(ty, Ty::Array(e) if e.is_text()) {
                continue;
            }
            let c = self.collation(idx);
            match found {
                Some(f) if f != c => {
                    return Err(WhereError::new(WhereErrorKind::Collation, at, format!("could not determine which collation to use for string comparison (columns with collations {f:?} and {c:?})")))
                }
                _ => found = Some(c),
            }
        }
        if !ordering {
            return Ok(());
        }
        let c = found.unwrap_or("default");
        let ok = match c {
            "C" | "POSIX" | "ucs_basic" => true,
            "default" => self.table.locale.byte_order(),
            _ => false,
        };
        if ok {
            return Ok(());
        }
        let name = if c == "default" {
            format!("the database's {:?}", self.table.locale.collate)
        } else {
            format!("{c:?}")
        };
        Err(WhereError::new(WhereErrorKind::Collation, at, format!("ordering comparisons on text are supported only under a byte-order collation (C, POSIX, C.UTF-8); the collation here is {name}")))
    }

    /// Case mapping (lower, upper, ILIKE) is supported where it is ASCII-only (C, POSIX).
    pub(crate) fn check_fold(&self, at: Loc, s: &Scalar) -> Result<(), WhereError> {
        let mut cols = Vec::new();
        s.columns(&mut cols);
        let mut collations: Vec<&str> = cols
            .iter()
            .filter(|(_, ty)| ty.is_text())
            .map(|(i, _)| self.collation(*i))
            .collect();
        if collations.is_empty() {
            collations.push("default");
        }
        for c in collations {
            let ok = match c {
                "C" | "POSIX" => true,
                "default" => self.table.locale.ascii_case(),
                _ => false,
            };
            if !ok {
                return Err(WhereError::new(WhereErrorKind::Collation, at, format!("case-insensitive matching and lower/upper are supported only where the character classification is C or POSIX (here: {:?})",
                    if c == "default" { self.table.locale.ctype.as_str() } else { c }
                )));
            }
        }
        Ok(())
    }

    fn collation(&self, idx: usize) -> &str {
        match self.table.collations.get(idx).map(String::as_str) {
            None | Some("") | Some("default") => "default",
            Some(c) => c,
        }
    }
}

/// ASCII case folding of a compiled LIKE pattern (for ILIKE under a C character class).
pub(crate) fn fold_pattern(p: Vec<LikeTok>) -> Vec<LikeTok> {
    p.into_iter()
        .map(|t| match t {
            LikeTok::Char(c) => LikeTok::Char(c.to_ascii_lowercase()),
            other => other,
        })
        .collect()
}

/// The type named by a cast (no type modifiers).
pub(crate) fn cast_type(t: Option<&TypeName>) -> Option<Ty> {
    let t = t?;
    if !t.typmods.is_empty() {
        return None;
    }
    let name = match t.names.last()?.node.as_ref()? {
        N::String(s) => s.sval.as_str(),
        _ => return None,
    };
    Ty::of_type(name, i32::from(!t.array_bounds.is_empty()))
}

/// An explicit cast of a constant.
fn explicit_cast(v: V<'static>, from: Ty, to: Ty) -> Result<V<'static>, WhereError> {
    if from == to || matches!(v, V::Null) {
        return Ok(v);
    }
    // Text input keeps Postgres' input error messages; everything else is the evaluator's own
    // conversion, so a cast of a constant means what the same cast of a column means.
    if let V::Text(s) = &v {
        if !to.is_text() {
            return const_of(s, to);
        }
    }
    if !ty::explicit_cast_ok(from, to) {
        return Err(WhereError::new(
            WhereErrorKind::Type,
            Loc::NONE,
            format!("cannot cast type {} to {}", from.name(), to.name()),
        ));
    }
    ops::convert(v, from, to).map(V::into_static).map_err(|_| {
        WhereError::new(
            WhereErrorKind::InvalidValue,
            Loc::NONE,
            format!("{} out of range", to.name()),
        )
    })
}

//! General value expressions of where clauses: columns, constants, arithmetic, `||`, function
//! calls and the implicit conversions Postgres inserts between them, typed as Postgres types
//! them and evaluated with its semantics (integer widths and overflow, exact `numeric` scales,
//! float4 arithmetic in single precision, `bpchar` trimming when it becomes `text`).
//!
//! The plain `column op constant` comparisons that most shapes use never come here: they have
//! their own faster path ([`crate::Expr::Compare`]). Everything else (comparisons between
//! expressions, `IS NULL` of an expression, `LIKE`/`ILIKE` of an expression) evaluates a
//! [`Scalar`] to a [`V`] per row.
//!
//! A row on which Postgres would raise an error (division by zero, integer overflow, a float
//! result out of range) evaluates to [`Fail`]; the clause treats it as not matching (Postgres
//! would have failed the whole snapshot query instead).
//!
//! Around this file: `ty.rs` (the types), `pgtext.rs` (values and their text form), `ops.rs`
//! (operators and conversions on values); typing a parse tree into a [`Scalar`] is `typing.rs`
//! and `functions.rs`.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::datetime::{self as dt};
use crate::ident::quote_ident;
use crate::num::Fail;
use crate::ops::{arith, array_cat, cmp_values, convert, date_op, negate, ArOp, CatKind, DtOp};
use crate::pgtext::{const_sql, output, parse_value, Arr, V};
use crate::row::Row;
use crate::ty::Ty;

/// Is `field` a unit `date_trunc` knows?
pub fn date_trunc_field_ok(field: &str) -> bool {
    dt::trunc(field, 0).is_some()
}

/// Is `zone` a time zone `timezone()` knows?
pub fn zone_ok(zone: &str) -> bool {
    dt::Zone::parse_posix(zone).is_some()
}

/// Supported functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// ASCII case mapping (the database's character classification is C).
    Lower,
    Upper,
    /// Characters; of a `bpchar`, without its trailing spaces.
    Length,
    Abs,
    Coalesce,
    /// `nullif(a, b)`: the comparison `a = b` is made in `cmp`.
    Nullif {
        cmp: Ty,
    },
    Greatest,
    Least,
    /// `concat(...)`: each argument's text output, NULLs skipped.
    Concat,
    ArrayLength,
    Cardinality,
    /// `date_trunc(field, ts)` with a constant field (args: the field, the timestamp).
    DateTrunc,
    /// `timezone(zone, ts)` / `ts AT TIME ZONE zone` with a constant zone (args: the zone,
    /// the value): timestamp → timestamptz or timestamptz → timestamp.
    Timezone,
}

impl Func {
    fn sql(self) -> &'static str {
        match self {
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::Length => "length",
            Func::Abs => "abs",
            Func::Coalesce => "coalesce",
            Func::Nullif { .. } => "nullif",
            Func::Greatest => "greatest",
            Func::Least => "least",
            Func::Concat => "concat",
            Func::ArrayLength => "array_length",
            Func::Cardinality => "cardinality",
            Func::DateTrunc => "date_trunc",
            Func::Timezone => "timezone",
        }
    }
}

/// A typed value expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Col {
        idx: usize,
        ty: Ty,
    },
    Const {
        v: V<'static>,
        ty: Ty,
    },
    /// An implicit conversion Postgres inserts (int → numeric, numeric → float8, bpchar → text…).
    Conv {
        arg: Box<Scalar>,
        to: Ty,
    },
    Neg(Box<Scalar>),
    Arith {
        op: ArOp,
        l: Box<Scalar>,
        r: Box<Scalar>,
        ty: Ty,
    },
    /// `numeric ^ n` with a constant integer exponent.
    PowN {
        base: Box<Scalar>,
        n: u32,
    },
    /// `text || text`.
    Concat(Box<Scalar>, Box<Scalar>),
    /// Date/time arithmetic (operands already of the types `op` takes).
    DateOp {
        op: DtOp,
        l: Box<Scalar>,
        r: Box<Scalar>,
        ty: Ty,
    },
    /// `json -> key`, `->> key`, `#> path`, `#>> path` (`text`: the `>>` forms); the key is
    /// text (object field), an integer (array element) or a text array (path).
    JsonGet {
        arg: Box<Scalar>,
        key: Box<Scalar>,
        text: bool,
    },
    /// `ARRAY[a, b, …]` of type `ty` (items already of its element type).
    ArrayCons {
        items: Vec<Scalar>,
        ty: Ty,
    },
    /// `array || element`, `element || array`, `array || array` of type `ty`.
    ArrayCat {
        kind: CatKind,
        l: Box<Scalar>,
        r: Box<Scalar>,
        ty: Ty,
    },
    Func {
        f: Func,
        args: Vec<Scalar>,
        ty: Ty,
    },
}

impl Scalar {
    pub fn ty(&self) -> Ty {
        match self {
            Scalar::Col { ty, .. } | Scalar::Const { ty, .. } => *ty,
            Scalar::Conv { to, .. } => *to,
            Scalar::Neg(a) => a.ty(),
            Scalar::Arith { ty, .. } | Scalar::Func { ty, .. } => *ty,
            Scalar::PowN { .. } => Ty::Numeric,
            Scalar::Concat(..) => Ty::Text,
            Scalar::JsonGet { text: true, .. } => Ty::Text,
            Scalar::JsonGet { text: false, .. } => Ty::Jsonb,
            Scalar::ArrayCons { ty, .. } | Scalar::ArrayCat { ty, .. } => *ty,
            Scalar::DateOp { ty, .. } => *ty,
        }
    }

    /// `self` converted to `to` (no node when it already has that type).
    pub fn conv(self, to: Ty) -> Scalar {
        if self.ty() == to {
            return self;
        }
        if let Scalar::Const { v, ty } = &self {
            if let Ok(v) = convert(v.clone(), *ty, to) {
                return Scalar::Const {
                    v: v.into_static(),
                    ty: to,
                };
            }
        }
        Scalar::Conv {
            arg: Box::new(self),
            to,
        }
    }

    /// The columns the expression reads.
    pub fn columns(&self, out: &mut Vec<(usize, Ty)>) {
        match self {
            Scalar::Col { idx, ty } => out.push((*idx, *ty)),
            Scalar::Const { .. } => {}
            Scalar::Conv { arg, .. } | Scalar::Neg(arg) | Scalar::PowN { base: arg, .. } => {
                arg.columns(out)
            }
            Scalar::Arith { l, r, .. }
            | Scalar::Concat(l, r)
            | Scalar::ArrayCat { l, r, .. }
            | Scalar::DateOp { l, r, .. }
            | Scalar::JsonGet { arg: l, key: r, .. } => {
                l.columns(out);
                r.columns(out);
            }
            Scalar::Func { args, .. } | Scalar::ArrayCons { items: args, .. } => {
                args.iter().for_each(|a| a.columns(out))
            }
        }
    }

    /// Evaluate on a row.
    pub fn eval<'r>(&'r self, row: &'r dyn Row) -> Result<V<'r>, Fail> {
        match self {
            Scalar::Col { idx, ty } => match row.value(*idx) {
                None => Ok(V::Null),
                Some(bytes) => {
                    let text = std::str::from_utf8(bytes).map_err(|_| Fail)?;
                    parse_value(text, *ty).ok_or(Fail)
                }
            },
            Scalar::Const { v, .. } => Ok(v.clone()),
            Scalar::Conv { arg, to } => convert(arg.eval(row)?, arg.ty(), *to),
            Scalar::Neg(arg) => negate(arg.eval(row)?, arg.ty()),
            Scalar::Arith { op, l, r, ty } => {
                let a = l.eval(row)?;
                if a.is_null() {
                    // Postgres still evaluates the right side (its errors count); so do we.
                    r.eval(row)?;
                    return Ok(V::Null);
                }
                let b = r.eval(row)?;
                if b.is_null() {
                    return Ok(V::Null);
                }
                arith(*op, a, b, *ty)
            }
            Scalar::PowN { base, n } => match base.eval(row)? {
                V::Num(x) => Ok(V::Num(x.pow_int(*n))),
                V::Null => Ok(V::Null),
                _ => Err(Fail),
            },
            Scalar::Concat(l, r) => {
                let a = l.eval(row)?;
                let b = r.eval(row)?;
                match (a, b) {
                    (V::Text(x), V::Text(y)) => Ok(V::Text(Cow::Owned(format!("{x}{y}")))),
                    _ => Ok(V::Null),
                }
            }
            Scalar::Func { f, args, ty } => call(*f, args, *ty, row),
            Scalar::ArrayCons { items, .. } => {
                let items = items
                    .iter()
                    .map(|i| i.eval(row))
                    .collect::<Result<Vec<_>, _>>()?;
                let dims = if items.is_empty() {
                    vec![]
                } else {
                    vec![items.len()]
                };
                Ok(V::Array(Box::new(Arr { items, dims })))
            }
            Scalar::ArrayCat { kind, l, r, .. } => {
                let a = l.eval(row)?;
                let b = r.eval(row)?;
                Ok(array_cat(*kind, a, b))
            }
            Scalar::DateOp { op, l, r, .. } => {
                let a = l.eval(row)?;
                let b = r.eval(row)?;
                if a.is_null() || b.is_null() {
                    return Ok(V::Null);
                }
                date_op(*op, a, b)
            }
            Scalar::JsonGet { arg, key, text } => {
                let doc = arg.eval(row)?;
                let key = key.eval(row)?;
                let V::Json(doc) = doc else {
                    return Ok(V::Null);
                };
                let found = match &key {
                    V::Text(k) => doc.get_key(k),
                    V::Int(i) => doc.get_index(*i),
                    V::Array(path) => {
                        let steps: Vec<Option<String>> = path
                            .items
                            .iter()
                            .map(|s| match s {
                                V::Text(t) => Some(t.to_string()),
                                _ => None,
                            })
                            .collect();
                        doc.get_path(&steps)
                    }
                    _ => None,
                };
                Ok(match (found, text) {
                    (None, _) => V::Null,
                    (Some(j), true) => match j.as_text() {
                        Some(t) => V::Text(Cow::Owned(t)),
                        None => V::Null,
                    },
                    (Some(j), false) => V::Json(Box::new(j.clone())),
                })
            }
        }
    }

    /// SQL for the snapshot query. Conversions are rendered as explicit casts, so the snapshot
    /// computes in exactly the types evaluation uses.
    pub fn render(&self, names: &[String], out: &mut String) {
        match self {
            Scalar::Col { idx, .. } => out.push_str(&quote_ident(&names[*idx])),
            Scalar::Const { v, ty } => out.push_str(&const_sql(v, *ty)),
            Scalar::Conv { arg, to } => {
                out.push_str("CAST(");
                arg.render(names, out);
                out.push_str(" AS ");
                out.push_str(&to.sql());
                out.push(')');
            }
            Scalar::Neg(arg) => {
                out.push_str("(- ");
                arg.render(names, out);
                out.push(')');
            }
            Scalar::Arith { op, l, r, .. } => render_binary(l, op.sql(), r, names, out),
            Scalar::PowN { base, n } => {
                out.push('(');
                base.render(names, out);
                out.push_str(&format!(" ^ CAST('{n}' AS numeric))"));
            }
            Scalar::Concat(l, r) | Scalar::ArrayCat { l, r, .. } => {
                render_binary(l, "||", r, names, out)
            }
            Scalar::ArrayCons { items, ty } => {
                out.push_str("CAST(ARRAY[");
                for (i, a) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    a.render(names, out);
                }
                out.push_str("] AS ");
                out.push_str(&ty.sql());
                out.push(')');
            }
            Scalar::DateOp { op, l, r, .. } => render_binary(l, op.sql(), r, names, out),
            Scalar::JsonGet { arg, key, text } => {
                let op = match (key.ty().elem().is_some(), *text) {
                    (false, false) => "->",
                    (false, true) => "->>",
                    (true, false) => "#>",
                    (true, true) => "#>>",
                };
                render_binary(arg, op, key, names, out)
            }
            Scalar::Func { f, args, .. } => {
                out.push_str(f.sql());
                out.push('(');
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    a.render(names, out);
                }
                out.push(')');
            }
        }
    }
}

/// `(l op r)` as SQL.
pub fn render_binary(l: &Scalar, op: &str, r: &Scalar, names: &[String], out: &mut String) {
    out.push('(');
    l.render(names, out);
    out.push(' ');
    out.push_str(op);
    out.push(' ');
    r.render(names, out);
    out.push(')');
}

fn call<'r>(f: Func, args: &'r [Scalar], ty: Ty, row: &'r dyn Row) -> Result<V<'r>, Fail> {
    let arg = |i: usize| -> Result<V<'r>, Fail> { args.get(i).ok_or(Fail)?.eval(row) };
    Ok(match f {
        Func::Lower | Func::Upper => match arg(0)? {
            V::Text(t) => V::Text(Cow::Owned(if f == Func::Lower {
                t.to_ascii_lowercase()
            } else {
                t.to_ascii_uppercase()
            })),
            _ => V::Null,
        },
        Func::Length => match arg(0)? {
            V::Text(t) => {
                let t = if args[0].ty() == Ty::Bpchar {
                    t.trim_end_matches(' ')
                } else {
                    &t
                };
                V::Int(t.chars().count() as i64)
            }
            _ => V::Null,
        },
        Func::Abs => match arg(0)? {
            V::Int(i) => {
                let (lo, _) = ty.int_range();
                if i == lo {
                    return Err(Fail);
                }
                V::Int(i.abs())
            }
            V::Num(n) => V::Num(n.abs()),
            V::Float(x) => V::Float(x.abs()),
            _ => V::Null,
        },
        Func::Coalesce => {
            for a in args {
                let v = a.eval(row)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            V::Null
        }
        Func::Nullif { cmp } => {
            let a = arg(0)?;
            let b = arg(1)?;
            if a.is_null() || b.is_null() {
                return Ok(a);
            }
            let ca = convert(a.clone(), args[0].ty(), cmp)?;
            let cb = convert(b, args[1].ty(), cmp)?;
            if cmp_values(&ca, &cb, cmp) == Ordering::Equal {
                V::Null
            } else {
                a
            }
        }
        Func::Greatest | Func::Least => {
            let mut best: Option<V<'r>> = None;
            for a in args {
                let v = a.eval(row)?;
                if v.is_null() {
                    continue;
                }
                best = Some(match best {
                    None => v,
                    Some(b) => {
                        let o = cmp_values(&v, &b, ty);
                        let take = if f == Func::Greatest {
                            o == Ordering::Greater
                        } else {
                            o == Ordering::Less
                        };
                        if take {
                            v
                        } else {
                            b
                        }
                    }
                });
            }
            best.unwrap_or(V::Null)
        }
        Func::Concat => {
            let mut s = String::new();
            for a in args {
                let v = a.eval(row)?;
                if !v.is_null() {
                    s.push_str(&output(&v, a.ty()));
                }
            }
            V::Text(Cow::Owned(s))
        }
        Func::ArrayLength => match (arg(0)?, arg(1)?) {
            (V::Array(a), V::Int(d)) => {
                match usize::try_from(d.saturating_sub(1))
                    .ok()
                    .and_then(|d| a.dims.get(d))
                {
                    Some(n) => V::Int(*n as i64),
                    None => V::Null,
                }
            }
            _ => V::Null,
        },
        Func::Cardinality => match arg(0)? {
            V::Array(a) => V::Int(a.items.len() as i64),
            _ => V::Null,
        },
        Func::DateTrunc => match (arg(0)?, arg(1)?) {
            (V::Text(field), V::Ts(t)) => V::Ts(dt::trunc(&field, t).flatten().ok_or(Fail)?),
            _ => V::Null,
        },
        Func::Timezone => match (arg(0)?, arg(1)?) {
            (V::Text(zone), V::Ts(t)) => {
                let zone = dt::Zone::parse_posix(&zone).ok_or(Fail)?;
                V::Ts(
                    if ty == Ty::Timestamptz {
                        zone.utc_of(t)
                    } else {
                        zone.local_of(t)
                    }
                    .ok_or(Fail)?,
                )
            }
            _ => V::Null,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_arithmetic_keeps_width_and_overflows_like_postgres() {
        assert_eq!(
            arith(ArOp::Add, V::Int(32767), V::Int(1), Ty::Int2),
            Err(Fail)
        );
        assert_eq!(
            arith(ArOp::Add, V::Int(32767), V::Int(1), Ty::Int4),
            Ok(V::Int(32768))
        );
        assert_eq!(
            arith(ArOp::Div, V::Int(-7), V::Int(2), Ty::Int4),
            Ok(V::Int(-3))
        );
        assert_eq!(
            arith(ArOp::Rem, V::Int(-7), V::Int(2), Ty::Int4),
            Ok(V::Int(-1))
        );
        assert_eq!(
            arith(ArOp::Rem, V::Int(i64::MIN), V::Int(-1), Ty::Int8),
            Ok(V::Int(0))
        );
        assert_eq!(
            arith(ArOp::Div, V::Int(i64::MIN), V::Int(-1), Ty::Int8),
            Err(Fail)
        );
        assert_eq!(arith(ArOp::Div, V::Int(1), V::Int(0), Ty::Int8), Err(Fail));
    }
}

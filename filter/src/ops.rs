//! Operators on values with Postgres' semantics: conversions between types, arithmetic
//! (integer overflow, exact numeric scales, float4 in single precision), date/time arithmetic,
//! ordering, array concatenation, `op ANY/ALL` and the array containment operators. A result
//! Postgres would raise an error for is [`Fail`].

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::datetime::{self as dt};
use crate::num::{Fail, Num};
use crate::pgtext::{g_format, output, parse_value, Arr, V};
use crate::ty::Ty;
use crate::value::float_cmp;

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    /// `^` on float8.
    Pow,
}

impl ArOp {
    pub fn sql(self) -> &'static str {
        match self {
            ArOp::Add => "+",
            ArOp::Sub => "-",
            ArOp::Mul => "*",
            ArOp::Div => "/",
            ArOp::Rem => "%",
            ArOp::Pow => "^",
        }
    }
}

/// Date/time operators, by operand types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtOp {
    /// date ± integer → date
    DateAddDays,
    DateSubDays,
    /// date − date → integer
    DateDiff,
    /// date + time → timestamp
    DateAddTime,
    /// timestamp[tz] ± interval
    TsAddIv,
    TsSubIv,
    /// timestamp[tz] − timestamp[tz] → interval
    TsDiff,
    IvAdd,
    IvSub,
    /// interval × / float8
    IvMul,
    IvDiv,
}

impl DtOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            DtOp::DateAddDays | DtOp::DateAddTime | DtOp::TsAddIv | DtOp::IvAdd => "+",
            DtOp::DateSubDays | DtOp::DateDiff | DtOp::TsSubIv | DtOp::TsDiff | DtOp::IvSub => "-",
            DtOp::IvMul => "*",
            DtOp::IvDiv => "/",
        }
    }
}

pub(crate) fn date_op<'a>(op: DtOp, a: V<'a>, b: V<'a>) -> Result<V<'a>, Fail> {
    Ok(match (op, a, b) {
        (DtOp::DateAddDays, V::Date(d), V::Int(n)) => V::Date(dt::date_add_days(d, n).ok_or(Fail)?),
        (DtOp::DateSubDays, V::Date(d), V::Int(n)) => {
            V::Date(dt::date_add_days(d, n.checked_neg().ok_or(Fail)?).ok_or(Fail)?)
        }
        (DtOp::DateDiff, V::Date(x), V::Date(y)) => {
            if [x, y]
                .iter()
                .any(|d| *d == dt::DATE_NEG_INF || *d == dt::DATE_POS_INF)
            {
                return Err(Fail);
            }
            V::Int(i64::from(x) - i64::from(y))
        }
        (DtOp::DateAddTime, V::Date(d), V::Time(t)) => {
            let ts = dt::date_to_ts(d).ok_or(Fail)?;
            if ts == dt::TS_NEG_INF || ts == dt::TS_POS_INF {
                V::Ts(ts)
            } else {
                V::Ts(dt::valid_ts(ts.checked_add(t).ok_or(Fail)?).ok_or(Fail)?)
            }
        }
        (DtOp::TsAddIv, V::Ts(t), V::Interval(i)) => V::Ts(dt::ts_add(t, &i).ok_or(Fail)?),
        (DtOp::TsSubIv, V::Ts(t), V::Interval(i)) => {
            V::Ts(dt::ts_add(t, &i.neg().ok_or(Fail)?).ok_or(Fail)?)
        }
        (DtOp::TsDiff, V::Ts(x), V::Ts(y)) => V::Interval(dt::ts_diff(x, y).ok_or(Fail)?),
        (DtOp::IvAdd, V::Interval(x), V::Interval(y)) => V::Interval(x.add(&y).ok_or(Fail)?),
        (DtOp::IvSub, V::Interval(x), V::Interval(y)) => {
            V::Interval(x.add(&y.neg().ok_or(Fail)?).ok_or(Fail)?)
        }
        (DtOp::IvMul, V::Interval(x), V::Float(f)) => V::Interval(x.mul(f).ok_or(Fail)?),
        (DtOp::IvDiv, V::Interval(x), V::Float(f)) => {
            if f == 0.0 {
                return Err(Fail);
            }
            V::Interval(x.mul(1.0 / f).ok_or(Fail)?)
        }
        _ => return Err(Fail),
    })
}

/// The three meanings of `||` with arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatKind {
    Append,
    Prepend,
    Cat,
}

/// Convert a value between types: Postgres' implicit casts, and the explicit ones
/// [`explicit_cast_ok`] admits (rounding numbers to integers, float to numeric, anything to
/// and from text, timestamps to dates).
pub fn convert<'a>(v: V<'a>, from: Ty, to: Ty) -> Result<V<'a>, Fail> {
    if from == to || v.is_null() {
        return Ok(v);
    }
    if to.is_text() && !from.is_text() {
        // The type's text output (booleans as `true` / `false`, as `bool::text` gives).
        let text = match &v {
            V::Bool(b) => if *b { "true" } else { "false" }.to_string(),
            V::Float(_) => return Err(Fail),
            other => output(other, from).into_owned(),
        };
        return Ok(V::Text(Cow::Owned(text)));
    }
    if from.is_text() && !to.is_text() {
        let V::Text(t) = &v else {
            return Err(Fail);
        };
        return parse_value(t, to).map(V::into_static).ok_or(Fail);
    }
    Ok(match (v, to) {
        (V::Num(n), Ty::Int2 | Ty::Int4 | Ty::Int8) => {
            let i: i64 = match n.round(0) {
                r @ Num::Fin { .. } => r.to_string().parse().map_err(|_| Fail)?,
                _ => return Err(Fail),
            };
            return convert(V::Int(i), Ty::Int8, to);
        }
        (V::Float(f), Ty::Int2 | Ty::Int4 | Ty::Int8) => {
            let r = f.round_ties_even();
            // [-2^63, 2^63), as FLOAT8_FITS_IN_INT64.
            if !r.is_finite()
                || !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&r)
            {
                return Err(Fail);
            }
            return convert(V::Int(r as i64), Ty::Int8, to);
        }
        (V::Float(f), Ty::Numeric) => V::Num(if f.is_nan() {
            Num::NaN
        } else if f.is_infinite() {
            if f > 0.0 {
                Num::PosInf
            } else {
                Num::NegInf
            }
        } else {
            Num::parse(&g_format(f, if from == Ty::Float4 { 6 } else { 15 })).ok_or(Fail)?
        }),
        (V::Ts(t), Ty::Date) => V::Date(match t {
            dt::TS_NEG_INF => dt::DATE_NEG_INF,
            dt::TS_POS_INF => dt::DATE_POS_INF,
            t => dt::valid_date(t.div_euclid(dt::DAY)).ok_or(Fail)?,
        }),
        (V::Int(i), Ty::Int2 | Ty::Int4 | Ty::Int8) => {
            let (lo, hi) = to.int_range();
            if i < lo || i > hi {
                return Err(Fail);
            }
            V::Int(i)
        }
        (V::Int(i), Ty::Numeric) => V::Num(Num::from_i64(i)),
        (V::Int(i), Ty::Float4) => V::Float(f64::from(i as f32)),
        (V::Int(i), Ty::Float8) => V::Float(i as f64),
        (V::Num(n), Ty::Float8) => V::Float(n.to_f64()),
        (V::Num(n), Ty::Float4) => V::Float(f64::from(n.to_f32()?)),
        (V::Float(f), Ty::Float8) => V::Float(f),
        (V::Float(f), Ty::Float4) => {
            let g = f as f32;
            if (g.is_infinite() && f.is_finite()) || (g == 0.0 && f != 0.0) {
                return Err(Fail);
            }
            V::Float(f64::from(g))
        }
        (V::Text(t), Ty::Text | Ty::Varchar) if from == Ty::Bpchar => match t {
            Cow::Borrowed(s) => V::Text(Cow::Borrowed(s.trim_end_matches(' '))),
            Cow::Owned(s) => V::Text(Cow::Owned(s.trim_end_matches(' ').to_string())),
        },
        (V::Text(t), Ty::Text | Ty::Varchar | Ty::Bpchar) => V::Text(t),
        (V::Date(d), Ty::Timestamp | Ty::Timestamptz) => V::Ts(dt::date_to_ts(d).ok_or(Fail)?),
        // Sessions run in UTC: a timestamp and its timestamptz are the same instant.
        (V::Ts(t), Ty::Timestamp | Ty::Timestamptz) => V::Ts(t),
        _ => return Err(Fail),
    })
}

pub(crate) fn negate(v: V<'_>, ty: Ty) -> Result<V<'_>, Fail> {
    Ok(match v {
        V::Null => V::Null,
        V::Int(i) => {
            let (lo, _) = ty.int_range();
            if i == lo {
                return Err(Fail);
            }
            V::Int(-i)
        }
        V::Num(n) => V::Num(n.neg()),
        V::Float(f) => V::Float(-f),
        V::Interval(i) => V::Interval(i.neg().ok_or(Fail)?),
        _ => return Err(Fail),
    })
}

pub(crate) fn int_result(v: i128, ty: Ty) -> Result<V<'static>, Fail> {
    let (lo, hi) = ty.int_range();
    if v < i128::from(lo) || v > i128::from(hi) {
        return Err(Fail);
    }
    Ok(V::Int(v as i64))
}

/// Float arithmetic with Postgres' overflow and underflow errors (in single precision for
/// float4).
pub(crate) fn float_op(op: ArOp, a: f64, b: f64, f4: bool) -> Result<f64, Fail> {
    let r = if f4 {
        let (x, y) = (a as f32, b as f32);
        f64::from(match op {
            ArOp::Add => x + y,
            ArOp::Sub => x - y,
            ArOp::Mul => x * y,
            ArOp::Div => {
                if y == 0.0 && !x.is_nan() {
                    return Err(Fail);
                }
                x / y
            }
            _ => return Err(Fail),
        })
    } else {
        match op {
            ArOp::Add => a + b,
            ArOp::Sub => a - b,
            ArOp::Mul => a * b,
            ArOp::Div => {
                if b == 0.0 && !a.is_nan() {
                    return Err(Fail);
                }
                a / b
            }
            ArOp::Pow => return float_pow(a, b),
            ArOp::Rem => return Err(Fail),
        }
    };
    let overflow = r.is_infinite() && a.is_finite() && b.is_finite();
    let underflow = match op {
        ArOp::Mul => r == 0.0 && a != 0.0 && b != 0.0,
        ArOp::Div => r == 0.0 && a != 0.0 && b.is_finite(),
        _ => false,
    };
    if overflow || underflow {
        return Err(Fail);
    }
    Ok(r)
}

/// `float8 ^ float8` as Postgres' `dpow`.
pub(crate) fn float_pow(a: f64, b: f64) -> Result<f64, Fail> {
    if a.is_nan() {
        return Ok(if b == 0.0 { 1.0 } else { f64::NAN });
    }
    if b.is_nan() {
        return Ok(if a == 1.0 { 1.0 } else { f64::NAN });
    }
    if a == 0.0 && b < 0.0 {
        return Err(Fail);
    }
    if a < 0.0 && b.floor() != b {
        return Err(Fail);
    }
    let r = a.powf(b);
    if (r.is_infinite() && a.is_finite() && b.is_finite())
        || (r == 0.0 && a != 0.0 && b.is_finite() && a.is_finite())
    {
        return Err(Fail);
    }
    Ok(r)
}

pub(crate) fn arith<'a>(op: ArOp, a: V<'a>, b: V<'a>, ty: Ty) -> Result<V<'a>, Fail> {
    match (a, b) {
        (V::Int(x), V::Int(y)) => {
            let (x, y) = (i128::from(x), i128::from(y));
            let r = match op {
                ArOp::Add => x + y,
                ArOp::Sub => x - y,
                ArOp::Mul => x * y,
                ArOp::Div => {
                    if y == 0 {
                        return Err(Fail);
                    }
                    x / y
                }
                ArOp::Rem => {
                    if y == 0 {
                        return Err(Fail);
                    }
                    x % y
                }
                ArOp::Pow => return Err(Fail),
            };
            int_result(r, ty)
        }
        (V::Num(x), V::Num(y)) => Ok(V::Num(match op {
            ArOp::Add => x.add(&y),
            ArOp::Sub => x.sub(&y),
            ArOp::Mul => x.mul(&y),
            ArOp::Div => x.div(&y)?,
            ArOp::Rem => x.rem(&y)?,
            ArOp::Pow => return Err(Fail),
        })),
        (V::Float(x), V::Float(y)) => Ok(V::Float(float_op(op, x, y, ty == Ty::Float4)?)),
        _ => Err(Fail),
    }
}

/// Compare two non-NULL values of the same type `ty`.
pub fn cmp_values(a: &V<'_>, b: &V<'_>, ty: Ty) -> Ordering {
    match (a, b) {
        (V::Int(x), V::Int(y)) => x.cmp(y),
        (V::Num(x), V::Num(y)) => x.cmp_total(y),
        (V::Float(x), V::Float(y)) => float_cmp(*x, *y),
        (V::Bool(x), V::Bool(y)) => x.cmp(y),
        (V::Uuid(x), V::Uuid(y)) => x.cmp(y),
        (V::Bytes(x), V::Bytes(y)) => x.cmp(y),
        (V::Enum(x), V::Enum(y)) => x.cmp(y),
        (V::Date(x), V::Date(y)) => x.cmp(y),
        (V::Time(x), V::Time(y)) => x.cmp(y),
        (V::Ts(x), V::Ts(y)) => x.cmp(y),
        (V::Interval(x), V::Interval(y)) => x.span().cmp(&y.span()),
        // jsonb compares for equality only (ordering is refused when typing).
        (V::Json(x), V::Json(y)) => {
            if x.equals(y) {
                Ordering::Equal
            } else {
                Ordering::Less
            }
        }
        (V::Text(x), V::Text(y)) => {
            if ty == Ty::Bpchar {
                x.trim_end_matches(' ').cmp(y.trim_end_matches(' '))
            } else {
                x.as_bytes().cmp(y.as_bytes())
            }
        }
        (V::Array(x), V::Array(y)) => {
            // Postgres: element by element (NULL above every value), then the element count,
            // then the dimensions.
            let elem = match ty {
                Ty::Array(e) => *e,
                t => t,
            };
            for (p, q) in x.items.iter().zip(&y.items) {
                let o = match (p, q) {
                    (V::Null, V::Null) => Ordering::Equal,
                    (V::Null, _) => Ordering::Greater,
                    (_, V::Null) => Ordering::Less,
                    (p, q) => cmp_values(p, q, elem),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.items
                .len()
                .cmp(&y.items.len())
                .then_with(|| x.dims.len().cmp(&y.dims.len()))
                .then_with(|| x.dims.cmp(&y.dims))
        }
        _ => Ordering::Equal,
    }
}

/// One-dimensional array concatenation, as `array_append` / `array_prepend` / `array_cat`:
/// a NULL array counts as empty for append and prepend and is skipped by cat.
pub(crate) fn array_cat<'a>(kind: CatKind, a: V<'a>, b: V<'a>) -> V<'a> {
    let items = |v: V<'a>| -> Option<Vec<V<'a>>> {
        match v {
            V::Array(arr) => Some(arr.items),
            _ => None,
        }
    };
    let out = match kind {
        CatKind::Append => {
            let mut x = items(a).unwrap_or_default();
            x.push(b);
            x
        }
        CatKind::Prepend => {
            let mut x = vec![a];
            x.extend(items(b).unwrap_or_default());
            x
        }
        CatKind::Cat => match (items(a), items(b)) {
            (None, None) => return V::Null,
            (Some(x), None) | (None, Some(x)) => x,
            (Some(mut x), Some(y)) => {
                x.extend(y);
                x
            }
        },
    };
    let dims = if out.is_empty() {
        vec![]
    } else {
        vec![out.len()]
    };
    V::Array(Box::new(Arr { items: out, dims }))
}

/// `x op ANY|ALL (array)`: ANY is true if some element satisfies `op`, ALL if every one does;
/// NULL when that depends on NULL elements; an empty array gives false (ANY) / true (ALL)
/// whatever `x` is. Elements are converted from `elem` to the comparison type `cmp`.
pub fn any_all(
    op: crate::cmp::CmpOp,
    all: bool,
    x: &V<'_>,
    arr: &V<'_>,
    elem: Ty,
    cmp: Ty,
) -> Result<Option<bool>, Fail> {
    let V::Array(a) = arr else {
        return Ok(None);
    };
    if a.items.is_empty() {
        return Ok(Some(all));
    }
    if x.is_null() {
        return Ok(None);
    }
    let mut saw_null = false;
    for item in &a.items {
        if item.is_null() {
            saw_null = true;
            continue;
        }
        let item = convert(item.clone(), elem, cmp)?;
        let hit = op.holds(cmp_values(x, &item, cmp));
        if hit != all {
            return Ok(Some(hit));
        }
    }
    Ok(if saw_null { None } else { Some(all) })
}

/// Array containment and overlap (`@>`, `<@`, `&&`), elements compared with `=` of `elem`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayOp {
    Contains,
    ContainedBy,
    Overlaps,
}

impl ArrayOp {
    pub fn sql(self) -> &'static str {
        match self {
            ArrayOp::Contains => "@>",
            ArrayOp::ContainedBy => "<@",
            ArrayOp::Overlaps => "&&",
        }
    }

    /// Postgres' `arraycontained` / `arrayoverlap`: NULL elements never match anything.
    pub fn holds(self, a: &Arr<'_>, b: &Arr<'_>, elem: Ty) -> bool {
        let eq = |x: &V<'_>, y: &V<'_>| {
            !x.is_null() && !y.is_null() && cmp_values(x, y, elem) == Ordering::Equal
        };
        let within = |small: &Arr<'_>, big: &Arr<'_>| {
            small
                .items
                .iter()
                .all(|x| big.items.iter().any(|y| eq(x, y)))
        };
        match self {
            ArrayOp::Contains => within(b, a),
            ArrayOp::ContainedBy => within(a, b),
            ArrayOp::Overlaps => a.items.iter().any(|x| b.items.iter().any(|y| eq(x, y))),
        }
    }
}

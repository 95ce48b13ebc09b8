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

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::datetime::{self as dt, Interval};
use crate::ident::{quote_ident, quote_literal};
use crate::json::Json;
use crate::num::{Fail, Num};
use crate::row::Row;
use crate::value::{canonical_uuid, float_cmp, float_text, parse_bool, parse_float, uuid_bytes};

/// A Postgres type as the expression engine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Int2,
    Int4,
    Int8,
    Numeric,
    Float4,
    Float8,
    Bool,
    /// text, name.
    Text,
    /// `character varying`: text, except that it meets `bpchar` on bpchar's terms.
    Varchar,
    /// `character(n)`: trailing spaces are insignificant in comparisons and are removed when
    /// the value becomes `text`.
    Bpchar,
    Uuid,
    Bytea,
    Jsonb,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    /// An enum type, by its labels in declared order (interned: see `enums.rs`).
    Enum(&'static [String]),
    /// A one-dimensional (or multi-dimensional) array of the element type.
    Array(&'static Ty),
}

impl Ty {
    /// The type of a catalog type name (`dims > 0`: an array of it).
    pub fn of_type(type_name: &str, dims: i32) -> Option<Ty> {
        let base = Ty::scalar(type_name)?;
        Some(base.array_if(dims > 0))
    }

    /// An array of `self` when `array`.
    pub fn array_if(self, array: bool) -> Ty {
        if array {
            Ty::Array(self.as_static())
        } else {
            self
        }
    }

    /// A scalar type by its catalog or SQL name.
    pub fn scalar(name: &str) -> Option<Ty> {
        Some(match name {
            "int2" | "smallint" => Ty::Int2,
            "int4" | "integer" | "int" => Ty::Int4,
            "int8" | "bigint" => Ty::Int8,
            "numeric" | "decimal" => Ty::Numeric,
            "float4" | "real" => Ty::Float4,
            "float8" | "double precision" => Ty::Float8,
            "bool" | "boolean" => Ty::Bool,
            "text" | "name" => Ty::Text,
            "varchar" => Ty::Varchar,
            "bpchar" | "char" => Ty::Bpchar,
            "uuid" => Ty::Uuid,
            "bytea" => Ty::Bytea,
            "jsonb" => Ty::Jsonb,
            "date" => Ty::Date,
            "time" => Ty::Time,
            "timestamp" => Ty::Timestamp,
            "timestamptz" => Ty::Timestamptz,
            "interval" => Ty::Interval,
            _ => return None,
        })
    }

    /// The type as a `'static` reference (for [`Ty::Array`]); enum types from their interner.
    pub fn as_static(self) -> &'static Ty {
        if let Ty::Enum(labels) = self {
            return crate::enums::as_static(labels);
        }
        match self {
            Ty::Int2 => &Ty::Int2,
            Ty::Int4 => &Ty::Int4,
            Ty::Int8 => &Ty::Int8,
            Ty::Numeric => &Ty::Numeric,
            Ty::Float4 => &Ty::Float4,
            Ty::Float8 => &Ty::Float8,
            Ty::Bool => &Ty::Bool,
            Ty::Text => &Ty::Text,
            Ty::Varchar => &Ty::Varchar,
            Ty::Bpchar => &Ty::Bpchar,
            Ty::Uuid => &Ty::Uuid,
            Ty::Bytea => &Ty::Bytea,
            Ty::Jsonb => &Ty::Jsonb,
            Ty::Date => &Ty::Date,
            Ty::Time => &Ty::Time,
            Ty::Timestamp => &Ty::Timestamp,
            Ty::Timestamptz => &Ty::Timestamptz,
            Ty::Interval => &Ty::Interval,
            Ty::Enum(_) => &Ty::Text,
            Ty::Array(e) => e,
        }
    }

    /// The element type of an array type.
    pub fn elem(self) -> Option<Ty> {
        match self {
            Ty::Array(e) => Some(*e),
            _ => None,
        }
    }

    /// Position in Postgres' chain of implicit numeric casts (int2 → … → float8).
    pub fn num_rank(self) -> Option<u8> {
        Some(match self {
            Ty::Int2 => 0,
            Ty::Int4 => 1,
            Ty::Int8 => 2,
            Ty::Numeric => 3,
            Ty::Float4 => 4,
            Ty::Float8 => 5,
            _ => return None,
        })
    }

    pub fn is_int(self) -> bool {
        matches!(self, Ty::Int2 | Ty::Int4 | Ty::Int8)
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::Float4 | Ty::Float8)
    }

    pub fn is_text(self) -> bool {
        matches!(self, Ty::Text | Ty::Varchar | Ty::Bpchar)
    }

    /// Position in the implicit cast chain date → timestamp → timestamptz.
    pub fn dt_rank(self) -> Option<u8> {
        Some(match self {
            Ty::Date => 0,
            Ty::Timestamp => 1,
            Ty::Timestamptz => 2,
            _ => return None,
        })
    }

    /// The name used in rendered SQL casts.
    pub fn sql(self) -> String {
        match self {
            Ty::Int2 => "int2".into(),
            Ty::Int4 => "int4".into(),
            Ty::Int8 => "int8".into(),
            Ty::Numeric => "numeric".into(),
            Ty::Float4 => "float4".into(),
            Ty::Float8 => "float8".into(),
            Ty::Bool => "boolean".into(),
            Ty::Text => "text".into(),
            Ty::Varchar => "varchar".into(),
            Ty::Bpchar => "bpchar".into(),
            Ty::Uuid => "uuid".into(),
            Ty::Bytea => "bytea".into(),
            Ty::Jsonb => "jsonb".into(),
            Ty::Date => "date".into(),
            Ty::Time => "time".into(),
            Ty::Timestamp => "timestamp".into(),
            Ty::Timestamptz => "timestamptz".into(),
            Ty::Interval => "interval".into(),
            // Rendered as text: constants of an enum type are compared with a column of
            // that type, where Postgres converts them itself.
            Ty::Enum(_) => "text".into(),
            Ty::Array(e) => format!("{}[]", e.sql()),
        }
    }

    /// The name used in error messages (Postgres' own spelling).
    pub fn name(self) -> String {
        match self {
            Ty::Int2 => "smallint".into(),
            Ty::Int4 => "integer".into(),
            Ty::Int8 => "bigint".into(),
            Ty::Numeric => "numeric".into(),
            Ty::Float4 => "real".into(),
            Ty::Float8 => "double precision".into(),
            Ty::Bool => "boolean".into(),
            Ty::Text => "text".into(),
            Ty::Varchar => "character varying".into(),
            Ty::Bpchar => "character".into(),
            Ty::Uuid => "uuid".into(),
            Ty::Bytea => "bytea".into(),
            Ty::Jsonb => "jsonb".into(),
            Ty::Date => "date".into(),
            Ty::Time => "time without time zone".into(),
            Ty::Timestamp => "timestamp without time zone".into(),
            Ty::Timestamptz => "timestamp with time zone".into(),
            Ty::Interval => "interval".into(),
            Ty::Enum(_) => "enum".into(),
            Ty::Array(e) => format!("{}[]", e.name()),
        }
    }

    pub fn int_range(self) -> (i64, i64) {
        match self {
            Ty::Int2 => (i16::MIN.into(), i16::MAX.into()),
            Ty::Int4 => (i32::MIN.into(), i32::MAX.into()),
            _ => (i64::MIN, i64::MAX),
        }
    }
}

/// The wider of two types in Postgres' implicit numeric (or date/timestamp) cast chain.
pub fn wider(a: Ty, b: Ty) -> Ty {
    match (a.num_rank(), b.num_rank()) {
        (Some(x), Some(y)) if y > x => b,
        (Some(_), Some(_)) => a,
        _ => match (a.dt_rank(), b.dt_rank()) {
            (Some(x), Some(y)) if y > x => b,
            _ => a,
        },
    }
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Num(Num),
    /// float8, or a float4 widened (exactly) to f64.
    Float(f64),
    Text(Cow<'a, str>),
    Uuid([u8; 16]),
    Bytes(Vec<u8>),
    /// An enum value by its position in the declared order.
    Enum(u32),
    Json(Box<Json>),
    /// Days since 2000-01-01 (±infinity at the ends).
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// timestamp or timestamptz (UTC): microseconds since 2000-01-01.
    Ts(i64),
    Interval(Interval),
    Array(Box<Arr<'a>>),
}

/// An array value: its elements in storage order and its dimensions (empty for `{}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Arr<'a> {
    pub items: Vec<V<'a>>,
    pub dims: Vec<usize>,
}

impl V<'_> {
    pub fn is_null(&self) -> bool {
        matches!(self, V::Null)
    }

    pub fn into_static(self) -> V<'static> {
        match self {
            V::Null => V::Null,
            V::Bool(b) => V::Bool(b),
            V::Int(i) => V::Int(i),
            V::Num(n) => V::Num(n),
            V::Float(f) => V::Float(f),
            V::Text(t) => V::Text(Cow::Owned(t.into_owned())),
            V::Uuid(u) => V::Uuid(u),
            V::Bytes(b) => V::Bytes(b),
            V::Enum(e) => V::Enum(e),
            V::Json(j) => V::Json(j),
            V::Date(d) => V::Date(d),
            V::Time(t) => V::Time(t),
            V::Ts(t) => V::Ts(t),
            V::Interval(i) => V::Interval(i),
            V::Array(a) => V::Array(Box::new(Arr {
                items: a.items.into_iter().map(V::into_static).collect(),
                dims: a.dims,
            })),
        }
    }
}

/// Parse a value in Postgres text form as `ty` (row values and constants).
pub fn parse_value(text: &str, ty: Ty) -> Option<V<'_>> {
    Some(match ty {
        Ty::Int2 | Ty::Int4 | Ty::Int8 => {
            let v: i64 = text.trim().parse().ok()?;
            let (lo, hi) = ty.int_range();
            if v < lo || v > hi {
                return None;
            }
            V::Int(v)
        }
        Ty::Numeric => V::Num(Num::parse(text)?),
        Ty::Float4 => V::Float(parse_float(text, true)?),
        Ty::Float8 => V::Float(parse_float(text, false)?),
        Ty::Bool => V::Bool(parse_bool(text.as_bytes())?),
        Ty::Text | Ty::Varchar | Ty::Bpchar => V::Text(Cow::Borrowed(text)),
        Ty::Uuid => V::Uuid(uuid_bytes(text)?),
        Ty::Bytea => V::Bytes(parse_bytea(text)?),
        Ty::Jsonb => V::Json(Box::new(Json::parse(text)?)),
        Ty::Date => V::Date(dt::parse_date(text)?),
        Ty::Time => V::Time(dt::parse_time(text)?),
        Ty::Timestamp => V::Ts(dt::parse_timestamp(text, false)?),
        Ty::Timestamptz => V::Ts(dt::parse_timestamp(text, true)?),
        Ty::Interval => V::Interval(dt::parse_interval(text)?),
        Ty::Enum(labels) => V::Enum(labels.iter().position(|l| l == text)? as u32),
        Ty::Array(elem) => {
            let (items, dims) = parse_array(text)?;
            let items = items
                .into_iter()
                .map(|i| match i {
                    None => Some(V::Null),
                    Some(Cow::Borrowed(s)) => parse_value(s, *elem),
                    Some(Cow::Owned(s)) => parse_value(&s, *elem).map(V::into_static),
                })
                .collect::<Option<Vec<_>>>()?;
            V::Array(Box::new(Arr { items, dims }))
        }
    })
}

/// Postgres `bytea` input: hex (`\x00ff`, whitespace between digit pairs allowed) or the
/// escape format (bytes as characters, `\\` for a backslash, `\ooo` octal).
pub fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        let digits: Vec<u8> = hex
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| (b as char).to_digit(16).map(|d| d as u8))
            .collect::<Option<_>>()?;
        if !digits.len().is_multiple_of(2) {
            return None;
        }
        return Some(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect());
    }
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = b.get(i + 1..i + 4)?;
            if !oct.iter().all(|d| (b'0'..=b'7').contains(d)) || oct[0] > b'3' {
                return None;
            }
            out.push((oct[0] - b'0') << 6 | (oct[1] - b'0') << 3 | (oct[2] - b'0'));
            i += 4;
        }
    }
    Some(out)
}

/// Array elements in text form (`None` = NULL).
pub type ArrayItems<'a> = Vec<Option<Cow<'a, str>>>;

/// Postgres array text (`{1,NULL,"a b"}`, nested braces for more dimensions, an optional
/// `[lo:hi]=` prefix): the elements flattened (`None` = NULL) and the length of each dimension.
/// Elements without escapes borrow from the text.
pub fn parse_array(text: &str) -> Option<(ArrayItems<'_>, Vec<usize>)> {
    let mut s = text.trim();
    if s.starts_with('[') {
        s = s[s.find('=')? + 1..].trim_start();
    }
    let b = s.as_bytes();
    let mut items = Vec::new();
    let mut dims: Vec<usize> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            b'{' => {
                depth += 1;
                if counts.len() < depth {
                    counts.push(0);
                }
                counts[depth - 1] = 0;
                i += 1;
            }
            b'}' => {
                if depth == 0 {
                    return None;
                }
                let n = counts[depth - 1];
                if dims.len() < depth {
                    dims.resize(depth, 0);
                }
                dims[depth - 1] = n;
                depth -= 1;
                if depth > 0 {
                    counts[depth - 1] += 1;
                }
                i += 1;
            }
            b',' | b' ' | b'\t' | b'\n' => i += 1,
            b'"' => {
                i += 1;
                let start = i;
                let mut escaped = false;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
                }
                if i >= b.len() {
                    return None;
                }
                let raw = &s[start..i];
                i += 1;
                items.push(Some(if escaped {
                    Cow::Owned(unescape(raw))
                } else {
                    Cow::Borrowed(raw)
                }));
                *counts.get_mut(depth.checked_sub(1)?)? += 1;
            }
            _ => {
                let start = i;
                let mut escaped = false;
                while i < b.len() && !matches!(b[i], b',' | b'}') {
                    if b[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
                }
                let raw = s.get(start..i.min(b.len()))?.trim();
                items.push(if !escaped && raw.eq_ignore_ascii_case("NULL") {
                    None
                } else if escaped {
                    Some(Cow::Owned(unescape(raw)))
                } else {
                    Some(Cow::Borrowed(raw))
                });
                *counts.get_mut(depth.checked_sub(1)?)? += 1;
            }
        }
    }
    if depth != 0 {
        return None;
    }
    if items.is_empty() {
        dims.clear();
    }
    Some((items, dims))
}

/// An array element with its backslash escapes removed.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

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

/// Is `field` a unit `date_trunc` knows?
pub fn date_trunc_field_ok(field: &str) -> bool {
    dt::trunc(field, 0).is_some()
}

/// Is `zone` a time zone `timezone()` knows?
pub fn zone_ok(zone: &str) -> bool {
    dt::Zone::parse_posix(zone).is_some()
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
    fn sql(self) -> &'static str {
        match self {
            DtOp::DateAddDays | DtOp::DateAddTime | DtOp::TsAddIv | DtOp::IvAdd => "+",
            DtOp::DateSubDays | DtOp::DateDiff | DtOp::TsSubIv | DtOp::TsDiff | DtOp::IvSub => "-",
            DtOp::IvMul => "*",
            DtOp::IvDiv => "/",
        }
    }
}

fn date_op<'a>(op: DtOp, a: V<'a>, b: V<'a>) -> Result<V<'a>, Fail> {
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

/// A constant as SQL: its text form cast to its type.
pub fn const_sql(v: &V<'_>, ty: Ty) -> String {
    match v {
        V::Null => format!("CAST(NULL AS {})", ty.sql()),
        V::Bool(b) => if *b { "true" } else { "false" }.to_string(),
        // An enum constant stays an untyped literal: Postgres types it from its context
        // (the enum column it meets), as it did in the clause.
        _ if matches!(ty, Ty::Enum(_)) || matches!(ty.elem(), Some(Ty::Enum(_))) => {
            quote_literal(&output(v, ty))
        }
        _ => format!("CAST({} AS {})", quote_literal(&output(v, ty)), ty.sql()),
    }
}

/// A value's text output (what Postgres' output function prints; floats in a form that reads
/// back to the same value).
pub fn output<'a>(v: &'a V<'a>, ty: Ty) -> Cow<'a, str> {
    match v {
        V::Null => Cow::Borrowed(""),
        V::Bool(b) => Cow::Borrowed(if *b { "t" } else { "f" }),
        V::Int(i) => Cow::Owned(i.to_string()),
        V::Num(n) => Cow::Owned(n.to_string()),
        V::Float(f) => Cow::Owned(float_text(*f)),
        V::Text(t) => Cow::Borrowed(t),
        V::Uuid(u) => {
            let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
            Cow::Owned(canonical_uuid(&hex).unwrap_or(hex))
        }
        V::Bytes(b) => {
            let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
            Cow::Owned(format!("\\x{hex}"))
        }
        V::Json(j) => Cow::Owned(j.to_string()),
        V::Date(d) => Cow::Owned(dt::format_date(*d)),
        V::Time(t) => Cow::Owned(dt::format_time(*t)),
        V::Ts(t) => Cow::Owned(dt::format_timestamp(*t, ty == Ty::Timestamptz)),
        V::Interval(i) => Cow::Owned(i.input_text()),
        V::Enum(e) => match ty {
            Ty::Enum(labels) => Cow::Borrowed(labels.get(*e as usize).map_or("", String::as_str)),
            _ => Cow::Owned(e.to_string()),
        },
        V::Array(a) => {
            let elem = match ty {
                Ty::Array(e) => *e,
                other => other,
            };
            let mut s = String::from("{");
            for (i, item) in a.items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                match item {
                    V::Null => s.push_str("NULL"),
                    other => {
                        let t = output(other, elem);
                        let quote = t.is_empty()
                            || t.eq_ignore_ascii_case("null")
                            || t.chars()
                                .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\' | ' '));
                        if quote {
                            s.push('"');
                            for c in t.chars() {
                                if matches!(c, '"' | '\\') {
                                    s.push('\\');
                                }
                                s.push(c);
                            }
                            s.push('"');
                        } else {
                            s.push_str(&t);
                        }
                    }
                }
            }
            s.push('}');
            Cow::Owned(s)
        }
    }
}

/// Can `CAST(x AS to)` of a value of `from` be evaluated (beyond Postgres' implicit casts)?
pub fn explicit_cast_ok(from: Ty, to: Ty) -> bool {
    let text_out = |t: Ty| {
        t.num_rank().is_some() && !t.is_float()
            || matches!(
                t,
                Ty::Bool
                    | Ty::Uuid
                    | Ty::Date
                    | Ty::Time
                    | Ty::Timestamp
                    | Ty::Timestamptz
                    | Ty::Jsonb
                    | Ty::Enum(_)
            )
            || t.is_text()
    };
    let text_in = |t: Ty| {
        t.num_rank().is_some()
            || matches!(
                t,
                Ty::Bool
                    | Ty::Uuid
                    | Ty::Bytea
                    | Ty::Date
                    | Ty::Time
                    | Ty::Timestamp
                    | Ty::Timestamptz
                    | Ty::Interval
                    | Ty::Jsonb
            )
            || t.is_text()
    };
    (from.num_rank().is_some() && to.num_rank().is_some())
        || (to.is_text() && text_out(from))
        || (from.is_text() && text_in(to))
        || (from.dt_rank().is_some() && to.dt_rank().is_some())
}

/// `%g` with `digits` significant digits (how Postgres turns a float into numeric).
fn g_format(v: f64, digits: usize) -> String {
    let s = format!("{:.*e}", digits.saturating_sub(1), v);
    match s.split_once('e') {
        Some((mant, exp)) => {
            let mant = if mant.contains('.') {
                mant.trim_end_matches('0').trim_end_matches('.')
            } else {
                mant
            };
            format!("{mant}e{exp}")
        }
        None => s,
    }
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

fn negate(v: V<'_>, ty: Ty) -> Result<V<'_>, Fail> {
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

fn int_result(v: i128, ty: Ty) -> Result<V<'static>, Fail> {
    let (lo, hi) = ty.int_range();
    if v < i128::from(lo) || v > i128::from(hi) {
        return Err(Fail);
    }
    Ok(V::Int(v as i64))
}

/// Float arithmetic with Postgres' overflow and underflow errors (in single precision for
/// float4).
fn float_op(op: ArOp, a: f64, b: f64, f4: bool) -> Result<f64, Fail> {
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
fn float_pow(a: f64, b: f64) -> Result<f64, Fail> {
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

fn arith<'a>(op: ArOp, a: V<'a>, b: V<'a>, ty: Ty) -> Result<V<'a>, Fail> {
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
fn array_cat<'a>(kind: CatKind, a: V<'a>, b: V<'a>) -> V<'a> {
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
    fn arrays_parse_like_postgres_prints_them() {
        let (items, dims) = parse_array(r#"{1,NULL,3}"#).unwrap();
        let items: Vec<Option<String>> = items
            .into_iter()
            .map(|i| i.map(|c| c.into_owned()))
            .collect();
        assert_eq!(items, vec![Some("1".into()), None, Some("3".into())]);
        assert_eq!(dims, vec![3]);
        let (items, dims) = parse_array(r#"{"a b","it's","",NULL,"\"q\""}"#).unwrap();
        let items: Vec<Option<String>> = items
            .into_iter()
            .map(|i| i.map(|c| c.into_owned()))
            .collect();
        assert_eq!(
            items,
            vec![
                Some("a b".into()),
                Some("it's".into()),
                Some(String::new()),
                None,
                Some("\"q\"".into())
            ]
        );
        assert_eq!(dims, vec![5]);
        assert!(parse_array("{}").unwrap().0.is_empty());
        assert_eq!(parse_array("{{1,2},{3,4},{5,6}}").unwrap().1, vec![3, 2]);
        assert_eq!(parse_array("[0:1]={7,8}").unwrap().1, vec![2]);
        assert!(parse_array("{1,2").is_none());
    }

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

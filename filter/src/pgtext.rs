//! Values ([`V`]) and their text form: parsing a column's text (as pgoutput and the snapshot
//! send it) into a value of its type, and printing a value the way Postgres' output functions
//! do (for `||`, `concat`, casts to text, constants rendered back to SQL).

use std::borrow::Cow;

use crate::datetime::{self as dt, Interval};
use crate::ident::quote_literal;
use crate::json::Json;
use crate::num::Num;
use crate::ty::Ty;
use crate::value::{canonical_uuid, float_text, parse_bool, parse_float, uuid_bytes};

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
pub(crate) fn unescape(raw: &str) -> String {
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

/// `%g` with `digits` significant digits (how Postgres turns a float into numeric).
pub(crate) fn g_format(v: f64, digits: usize) -> String {
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
}

//! Typed constants and comparisons on Postgres text-form values (pure).
//!
//! Numbers are compared exactly as decimals (never through floats), `bpchar` ignores trailing
//! spaces as Postgres does, uuids compare in canonical form.

use std::cmp::Ordering;

use crate::error::{Loc, WhereError, WhereErrorKind};
use crate::ident::quote_literal;

/// How values of a column type compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Integer,
    Numeric,
    Bool,
    /// text, varchar, name; `bpchar` ignores trailing spaces.
    Text {
        bpchar: bool,
    },
    Uuid,
    /// float4 (`f4`) or float8: compared as float8 (a float4 value or constant is widened), with
    /// Postgres' order: NaN above everything and equal to itself, -0 = 0.
    Float {
        f4: bool,
    },
}

impl Family {
    /// The family of a catalog type name (scalars only).
    pub fn of_type(type_name: &str) -> Option<Family> {
        Some(match type_name {
            "int2" | "int4" | "int8" | "smallint" | "integer" | "bigint" | "int" => Family::Integer,
            "numeric" | "decimal" => Family::Numeric,
            "bool" | "boolean" => Family::Bool,
            "text" | "varchar" | "name" => Family::Text { bpchar: false },
            "bpchar" | "char" => Family::Text { bpchar: true },
            "uuid" => Family::Uuid,
            "float4" | "real" => Family::Float { f4: true },
            "float8" | "double precision" => Family::Float { f4: false },
            _ => return None,
        })
    }

    fn is_number(self) -> bool {
        matches!(
            self,
            Family::Integer | Family::Numeric | Family::Float { .. }
        )
    }

    fn sql_type(self) -> &'static str {
        match self {
            Family::Integer => "int8",
            Family::Numeric => "numeric",
            Family::Bool => "boolean",
            Family::Text { bpchar: false } => "text",
            Family::Text { bpchar: true } => "bpchar",
            Family::Uuid => "uuid",
            Family::Float { .. } => "float8",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Integer => "integer",
            Family::Numeric => "numeric",
            Family::Bool => "boolean",
            Family::Text { .. } => "text",
            Family::Uuid => "uuid",
            Family::Float { f4: true } => "real",
            Family::Float { f4: false } => "double precision",
        }
    }
}

/// A constant as written in the clause, before it is typed.
#[derive(Debug, Clone, PartialEq)]
pub enum RawConst {
    Integer(String),
    Float(String),
    Bool(bool),
    /// A string literal: its type comes from context (Postgres' `unknown`).
    Str(String),
}

/// A typed constant: its normalized text for comparisons, and the SQL it renders to.
#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    norm: String,
    /// How it renders: `None` a plain quoted literal (an untyped text constant), else cast to
    /// this family's type (booleans as `true` / `false`). Rendered on demand: the text is
    /// only needed for a snapshot query, and every idle shape would keep it (target P7).
    sql_as: Option<Family>,
    /// The constant parsed once, so evaluation only parses the row's value (target P3).
    parsed: Parsed,
}

/// A constant in the form its family compares in.
#[derive(Debug, Clone, PartialEq)]
enum Parsed {
    /// An integer constant (fast path against integer text; its exact decimal is made when a
    /// row's value is not an integer).
    Int(i128),
    Dec(Decimal),
    Float(f64),
    Uuid([u8; 16]),
    Other,
}

impl Literal {
    /// Type `raw` for a comparison with a column of `family`; `cast` is an explicit cast's family.
    pub fn typed(
        raw: &RawConst,
        family: Family,
        cast: Option<Family>,
    ) -> Result<Literal, WhereError> {
        let target = target_family(raw, family, cast)?;
        let text = literal_text(raw, target, cast)?;
        let norm = normalize(&text, target, family)?;
        let parsed = fast_form(&norm, target)?;
        let sql_as = match target {
            Family::Text { .. } if cast.is_none() => None,
            t => Some(t),
        };
        Ok(Literal {
            norm,
            sql_as,
            parsed,
        })
    }

    pub fn sql(&self) -> String {
        match self.sql_as {
            // A bpchar constant renders without its trailing spaces: the same value to bpchar.
            None => quote_literal(&self.norm),
            Some(Family::Bool) => if self.norm == "t" { "true" } else { "false" }.to_string(),
            Some(t) => format!("CAST({} AS {})", quote_literal(&self.norm), t.sql_type()),
        }
    }

    /// The constant's [`OrdKey`] for a column of `family`.
    pub fn ord_key(&self, family: Family) -> Option<OrdKey> {
        let family = match family {
            Family::Float { .. } => Family::Float { f4: false },
            f => f,
        };
        OrdKey::of(family, self.norm.as_bytes())
    }

    /// The constant's [`index_key`] for a column of `family`.
    pub fn index_key(&self, family: Family) -> Option<Vec<u8>> {
        // A float constant is kept as the float8 it compares as (already widened).
        let family = match family {
            Family::Float { .. } => Family::Float { f4: false },
            f => f,
        };
        index_key(family, self.norm.as_bytes())
    }
}

/// A value in an order that agrees with its family's comparison operators, for the routing
/// index's ranges: integers and numerics as exact decimals, floats in Postgres' order (NaN
/// highest), text as bytes (ordering comparisons on text are only accepted under byte-order
/// collations), `bpchar` without trailing spaces, uuids and booleans as bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum OrdKey {
    Int(i128),
    Num(crate::num::Num),
    Float(f64),
    Bytes(Vec<u8>),
}

impl OrdKey {
    /// The key of a value in Postgres text form (`None` if it does not parse).
    pub fn of(family: Family, value: &[u8]) -> Option<OrdKey> {
        let v = std::str::from_utf8(value).ok()?;
        Some(match family {
            Family::Integer | Family::Numeric => match v.trim().parse::<i128>() {
                Ok(i) => OrdKey::Int(i),
                Err(_) => OrdKey::Num(crate::num::Num::parse(v)?),
            },
            Family::Float { f4 } => OrdKey::Float(parse_float(v, f4)?),
            Family::Text { bpchar } => {
                let v = if bpchar { v.trim_end_matches(' ') } else { v };
                OrdKey::Bytes(v.as_bytes().to_vec())
            }
            Family::Uuid => OrdKey::Bytes(uuid_bytes(v)?.to_vec()),
            Family::Bool => OrdKey::Bytes(vec![u8::from(parse_bool(value)?)]),
        })
    }

    pub fn order(&self, other: &OrdKey) -> Ordering {
        use crate::num::Num;
        let num = |k: &OrdKey| match k {
            OrdKey::Int(i) => Num::parse(&i.to_string()),
            OrdKey::Num(n) => Some(n.clone()),
            _ => None,
        };
        match (self, other) {
            (OrdKey::Int(a), OrdKey::Int(b)) => a.cmp(b),
            (OrdKey::Float(a), OrdKey::Float(b)) => float_cmp(*a, *b),
            (OrdKey::Bytes(a), OrdKey::Bytes(b)) => a.cmp(b),
            (a, b) => match (num(a), num(b)) {
                (Some(x), Some(y)) => x.cmp_total(&y),
                _ => Ordering::Equal,
            },
        }
    }
}

/// A hashable key of a value (Postgres text form) such that, for a column of `family`, two
/// values have equal keys exactly when `=` holds between them: numbers as normalized decimals
/// (`1.50` = `1.5`, `NaN` = `NaN`), `bpchar` without trailing spaces, uuids in canonical form.
/// The routing index looks shapes up by it. `None` if the value does not parse.
pub fn index_key(family: Family, value: &[u8]) -> Option<Vec<u8>> {
    let v = std::str::from_utf8(value).ok()?;
    Some(match family {
        Family::Integer | Family::Numeric => match Decimal::parse(v.trim())? {
            Decimal::Finite { neg, digits, exp } => {
                let mut key = Vec::with_capacity(digits.len() + 10);
                key.push(if neg { b'-' } else { b'+' });
                key.extend_from_slice(&digits);
                key.push(b'e');
                key.extend_from_slice(exp.to_string().as_bytes());
                key
            }
            Decimal::NegInf => b"-inf".to_vec(),
            Decimal::PosInf => b"+inf".to_vec(),
            Decimal::NaN => b"nan".to_vec(),
        },
        Family::Bool => vec![u8::from(parse_bool(value)?)],
        Family::Text { bpchar } => {
            let v = if bpchar { v.trim_end_matches(' ') } else { v };
            v.as_bytes().to_vec()
        }
        Family::Uuid => canonical_uuid(v)?.into_bytes(),
        Family::Float { f4 } => {
            let f = parse_float(v, f4)?;
            let f = if f == 0.0 { 0.0 } else { f };
            if f.is_nan() {
                b"nan".to_vec()
            } else {
                f.to_bits().to_be_bytes().to_vec()
            }
        }
    })
}

impl Family {
    /// A float family of the column's width when `untyped` (a string constant), else float8.
    fn with_width(self, untyped: bool, column_f4: bool) -> Family {
        match self {
            Family::Float { .. } => Family::Float {
                f4: untyped && column_f4,
            },
            other => other,
        }
    }
}

/// Postgres float input (`NaN`, `Infinity`, `inf`, exponents), as float4 widened or float8.
pub(crate) fn parse_float(s: &str, f4: bool) -> Option<f64> {
    let t = s.trim();
    let special = match t.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "infinity" | "+infinity" | "inf" | "+inf" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    };
    if let Some(v) = special {
        return Some(v);
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
    {
        return None;
    }
    if f4 {
        let v: f32 = t.parse().ok()?;
        // Postgres rejects float4 input out of range (it does not round to infinity).
        if v.is_infinite() {
            return None;
        }
        Some(f64::from(v))
    } else {
        let v: f64 = t.parse().ok()?;
        if v.is_infinite() {
            return None;
        }
        Some(v)
    }
}

/// A float8 as text that parses back to the same value (Rust prints the shortest such form).
pub(crate) fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "Infinity".into()
    } else if v == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        format!("{v:e}")
    }
}

/// Postgres float8 order: NaN is above everything and equal to itself; -0 = 0.
pub(crate) fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compare a column value (Postgres text output) with a typed constant; None if the value does
/// not parse (which cannot happen for values Postgres produced).
pub fn compare(family: Family, value: &[u8], lit: &Literal) -> Option<Ordering> {
    let v = std::str::from_utf8(value).ok()?;
    match (family, &lit.parsed) {
        (Family::Float { f4 }, Parsed::Float(l)) => Some(float_cmp(parse_float(v, f4)?, *l)),
        (Family::Integer | Family::Numeric, Parsed::Int(l)) => match v.parse::<i128>() {
            Ok(i) => Some(i.cmp(l)),
            Err(_) => Some(Decimal::parse(v)?.cmp_total(&Decimal::parse(&l.to_string())?)),
        },
        (Family::Integer | Family::Numeric, Parsed::Dec(dec)) => {
            Some(Decimal::parse(v)?.cmp_total(dec))
        }
        (Family::Uuid, Parsed::Uuid(l)) => Some(uuid_bytes(v)?.cmp(l)),
        _ => compare_text(family, v, lit),
    }
}

/// The 16 bytes of a uuid in the input forms accepted here (hyphens anywhere, braces).
pub(crate) fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    let s = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(s);
    let mut out = [0u8; 16];
    let mut n = 0;
    for c in s.bytes().filter(|c| *c != b'-') {
        let d = (c as char).to_digit(16)? as u8;
        if n >= 32 {
            return None;
        }
        out[n / 2] |= if n % 2 == 0 { d << 4 } else { d };
        n += 1;
    }
    (n == 32).then_some(out)
}

/// The comparison from the constant's text (families without a parsed form).
fn compare_text(family: Family, v: &str, lit: &Literal) -> Option<Ordering> {
    match family {
        Family::Float { f4 } => Some(float_cmp(
            parse_float(v, f4)?,
            parse_float(&lit.norm, false)?,
        )),
        Family::Integer | Family::Numeric => {
            Some(Decimal::parse(v)?.cmp_total(&Decimal::parse(&lit.norm)?))
        }
        Family::Bool => Some(parse_bool(v.as_bytes())?.cmp(&(lit.norm == "t"))),
        Family::Text { bpchar } => {
            let v = if bpchar { v.trim_end_matches(' ') } else { v };
            Some(v.as_bytes().cmp(lit.norm.as_bytes()))
        }
        Family::Uuid => Some(canonical_uuid(v)?.cmp(&lit.norm)),
    }
}

/// Postgres boolean input: t/true/yes/on/1 and f/false/no/off/0 (case-insensitive, unique
/// prefixes of the words accepted, surrounding spaces ignored).
pub fn parse_bool(v: &[u8]) -> Option<bool> {
    let s = std::str::from_utf8(v).ok()?.trim().to_ascii_lowercase();
    if s.is_empty() {
        return None;
    }
    let prefix_of = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || s == "on" || s == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || s == "0" {
        Some(false)
    } else {
        None
    }
}

pub(crate) fn canonical_uuid(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// An exact decimal: sign, significant digits and the decimal exponent, or a special value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decimal {
    NegInf,
    /// value = 0.d1d2d3… × 10^exp; `digits` has no leading or trailing zeros; zero is empty.
    Finite {
        neg: bool,
        digits: Vec<u8>,
        exp: i64,
    },
    PosInf,
    NaN,
}

impl Decimal {
    fn parse(s: &str) -> Option<Decimal> {
        match s.to_ascii_lowercase().as_str() {
            "nan" => return Some(Decimal::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Some(Decimal::PosInf),
            "-infinity" | "-inf" => return Some(Decimal::NegInf),
            _ => {}
        }
        let (neg, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (mantissa, exp10) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.find('.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
        let lead = all.iter().take_while(|b| **b == b'0').count();
        let digits: Vec<u8> = all[lead..].to_vec();
        let trail = digits.iter().rev().take_while(|b| **b == b'0').count();
        let digits = digits[..digits.len() - trail].to_vec();
        let exp = (int.len() as i64 - lead as i64).checked_add(exp10)?;
        Some(Decimal::Finite {
            neg: neg && !digits.is_empty(),
            exp: if digits.is_empty() { 0 } else { exp },
            digits,
        })
    }

    /// Postgres numeric order: -Infinity < finite < Infinity < NaN (NaN equals NaN).
    fn cmp_total(&self, other: &Decimal) -> Ordering {
        let rank = |d: &Decimal| match d {
            Decimal::NegInf => 0,
            Decimal::Finite { .. } => 1,
            Decimal::PosInf => 2,
            Decimal::NaN => 3,
        };
        match (self, other) {
            (
                Decimal::Finite {
                    neg: n1,
                    digits: d1,
                    exp: e1,
                },
                Decimal::Finite {
                    neg: n2,
                    digits: d2,
                    exp: e2,
                },
            ) => {
                let sign = |neg: bool, d: &Vec<u8>| {
                    if d.is_empty() {
                        0
                    } else if neg {
                        -1
                    } else {
                        1
                    }
                };
                let (s1, s2) = (sign(*n1, d1), sign(*n2, d2));
                if s1 != s2 || s1 == 0 {
                    return s1.cmp(&s2);
                }
                let magnitude = e1.cmp(e2).then_with(|| d1.cmp(d2));
                if s1 < 0 {
                    magnitude.reverse()
                } else {
                    magnitude
                }
            }
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

/// The family a constant is compared in against a column of `family`. A constant has its own
/// type (integer and decimal literals are int/numeric, `true` is boolean) unless it is a string
/// literal, which takes the type it is compared with (Postgres' unknown); an explicit cast
/// decides over both. Against a float column every number is compared as float8; an untyped
/// string takes the column's own width, an explicit cast its width.
fn target_family(
    raw: &RawConst,
    family: Family,
    cast: Option<Family>,
) -> Result<Family, WhereError> {
    let natural = match raw {
        RawConst::Integer(_) => Some(Family::Integer),
        RawConst::Float(_) => Some(Family::Numeric),
        RawConst::Bool(_) => Some(Family::Bool),
        RawConst::Str(_) => None,
    };
    let target = cast.or(natural).unwrap_or(family);
    if matches!(target, Family::Float { .. }) && !matches!(family, Family::Float { .. }) {
        return Err(WhereError::new(
            WhereErrorKind::Unsupported,
            Loc::NONE,
            format!(
                "comparing a {} column with a floating-point value is not supported yet",
                family.name()
            ),
        ));
    }
    let target = match (family, target) {
        (Family::Float { f4 }, Family::Integer | Family::Numeric) => Family::Float { f4: false }
            .with_width(cast.is_none() && matches!(raw, RawConst::Str(_)), f4),
        (_, t) => t,
    };
    let comparable = target == family
        || (target.is_number() && family.is_number())
        || matches!((target, family), (Family::Text { .. }, Family::Text { .. }));
    if !comparable {
        return Err(WhereError::new(
            WhereErrorKind::Type,
            Loc::NONE,
            format!(
                "cannot compare a {} column with a {} value",
                family.name(),
                target.name()
            ),
        ));
    }
    Ok(target)
}

/// The constant's text, as it would be input to `target`.
fn literal_text(
    raw: &RawConst,
    target: Family,
    cast: Option<Family>,
) -> Result<String, WhereError> {
    let text = match (raw, target) {
        (RawConst::Integer(s) | RawConst::Float(s), t) if t.is_number() => s.clone(),
        (RawConst::Integer(s) | RawConst::Float(s), Family::Text { .. }) if cast.is_some() => {
            s.clone()
        }
        (RawConst::Bool(b), Family::Bool) => if *b { "t" } else { "f" }.to_string(),
        (RawConst::Str(s), _) => s.clone(),
        (_, t) => {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                Loc::NONE,
                format!("cannot compare a {} column with this constant", t.name()),
            ))
        }
    };
    if text.contains('\0') {
        return Err(WhereError::new(
            WhereErrorKind::InvalidValue,
            Loc::NONE,
            "invalid NUL character in constant",
        ));
    }
    Ok(text)
}

/// The constant's canonical text in `target` (what Postgres' input and output functions make
/// of it), or Postgres' invalid-input error. Compared with a bpchar column, trailing spaces go.
fn normalize(text: &str, target: Family, family: Family) -> Result<String, WhereError> {
    let invalid = |ty: &str| {
        WhereError::new(
            WhereErrorKind::InvalidValue,
            Loc::NONE,
            format!("invalid input syntax for type {ty}: {text:?}"),
        )
    };
    Ok(match target {
        Family::Integer => {
            let t = text.trim();
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("integer"));
            }
            t.to_string()
        }
        Family::Numeric => {
            Decimal::parse(text.trim()).ok_or_else(|| invalid("numeric"))?;
            text.trim().to_string()
        }
        Family::Bool => match parse_bool(text.as_bytes()) {
            Some(true) => "t".to_string(),
            Some(false) => "f".to_string(),
            None => return Err(invalid("boolean")),
        },
        Family::Text { bpchar } => {
            if bpchar || matches!(family, Family::Text { bpchar: true }) {
                text.trim_end_matches(' ').to_string()
            } else {
                text.to_string()
            }
        }
        Family::Uuid => canonical_uuid(text).ok_or_else(|| invalid("uuid"))?,
        Family::Float { f4 } => {
            float_text(parse_float(text, f4).ok_or_else(|| invalid(target.name()))?)
        }
    })
}

/// The form a row's values are compared with on the fast path.
fn fast_form(norm: &str, target: Family) -> Result<Parsed, WhereError> {
    let invalid = |what: &str| WhereError::new(WhereErrorKind::InvalidValue, Loc::NONE, what);
    Ok(match target {
        Family::Integer | Family::Numeric => {
            let dec = Decimal::parse(norm.trim()).ok_or_else(|| invalid("invalid number"))?;
            match norm.trim().parse::<i128>() {
                Ok(i) => Parsed::Int(i),
                Err(_) => Parsed::Dec(dec),
            }
        }
        Family::Float { .. } => {
            Parsed::Float(parse_float(norm, false).ok_or_else(|| invalid("invalid float"))?)
        }
        Family::Uuid => Parsed::Uuid(uuid_bytes(norm).ok_or_else(|| invalid("invalid uuid"))?),
        _ => Parsed::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec_cmp(a: &str, b: &str) -> Ordering {
        Decimal::parse(a)
            .unwrap()
            .cmp_total(&Decimal::parse(b).unwrap())
    }

    #[test]
    fn decimals_compare_exactly() {
        assert_eq!(dec_cmp("1.0", "1.00"), Ordering::Equal);
        assert_eq!(dec_cmp("0.1", "0.10000000000000000001"), Ordering::Less);
        assert_eq!(dec_cmp("-2", "-10"), Ordering::Greater);
        assert_eq!(dec_cmp("100", "99.999"), Ordering::Greater);
        assert_eq!(dec_cmp("0", "-0.0"), Ordering::Equal);
        assert_eq!(dec_cmp("1e3", "1000"), Ordering::Equal);
        assert_eq!(dec_cmp("NaN", "Infinity"), Ordering::Greater);
        assert_eq!(dec_cmp("-Infinity", "-1e100"), Ordering::Less);
        assert_eq!(dec_cmp("NaN", "NaN"), Ordering::Equal);
        assert_eq!(
            dec_cmp("9007199254740993", "9007199254740992"),
            Ordering::Greater
        );
        assert!(Decimal::parse("1.2.3").is_none());
        assert!(Decimal::parse(".").is_none());
        assert!(Decimal::parse("").is_none());
    }

    #[test]
    fn booleans() {
        for t in ["t", "true", "TRUE", "yes", "y", "on", "1", " t "] {
            assert_eq!(parse_bool(t.as_bytes()), Some(true), "{t}");
        }
        for f in ["f", "false", "no", "n", "off", "0"] {
            assert_eq!(parse_bool(f.as_bytes()), Some(false), "{f}");
        }
        for bad in ["", "o", "maybe", "2"] {
            assert_eq!(parse_bool(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn typed_literals() {
        let l = Literal::typed(&RawConst::Str("5".into()), Family::Integer, None).unwrap();
        assert_eq!(compare(Family::Integer, b"5", &l), Some(Ordering::Equal));
        assert!(Literal::typed(&RawConst::Str("5.5".into()), Family::Integer, None).is_err());
        let l = Literal::typed(&RawConst::Float("5.5".into()), Family::Integer, None).unwrap();
        assert_eq!(compare(Family::Integer, b"5", &l), Some(Ordering::Less));
        let l = Literal::typed(
            &RawConst::Str("ab ".into()),
            Family::Text { bpchar: true },
            None,
        )
        .unwrap();
        assert_eq!(
            compare(Family::Text { bpchar: true }, b"ab   ", &l),
            Some(Ordering::Equal)
        );
        let l = Literal::typed(
            &RawConst::Str("it's".into()),
            Family::Text { bpchar: false },
            None,
        )
        .unwrap();
        assert_eq!(l.sql(), "'it''s'");
        let u = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11";
        let l = Literal::typed(&RawConst::Str(u.into()), Family::Uuid, None).unwrap();
        assert_eq!(
            compare(Family::Uuid, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", &l),
            Some(Ordering::Equal)
        );
        assert!(Literal::typed(
            &RawConst::Integer("1".into()),
            Family::Text { bpchar: false },
            None
        )
        .is_err());
        assert!(Literal::typed(&RawConst::Bool(true), Family::Integer, None).is_err());
    }
}

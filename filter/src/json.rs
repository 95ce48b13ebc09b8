//! `jsonb` values as where clauses see them: parsed from Postgres' text form (or a constant's
//! JSON), numbers as exact [`Num`]s, object keys in jsonb's order (shorter keys first, then by
//! bytes; a repeated key keeps its last value), with Postgres' equality, containment (`@>`),
//! key existence (`?`) and text output (what `->>` returns for a container).

use std::cmp::Ordering;

use crate::num::Num;

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// A number as written (valid JSON number syntax); compared and printed as the `numeric`
    /// it denotes, parsed only then (most lookups never look at most numbers).
    Num(Box<str>),
    Str(String),
    Array(Vec<Json>),
    /// Keys unique, in jsonb order.
    Object(Vec<(String, Json)>),
}

/// jsonb's key order: by length, then bytes.
fn key_cmp(a: &str, b: &str) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

impl Json {
    /// Parse JSON text (Postgres' jsonb input rules: `\u0000` is refused).
    pub fn parse(text: &str) -> Option<Json> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
            depth: 0,
        };
        let v = p.value()?;
        p.ws();
        (p.i == p.s.len()).then_some(v)
    }

    /// `->` with a key.
    pub fn get_key(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(pairs) => pairs
                .binary_search_by(|(k, _)| key_cmp(k, key))
                .ok()
                .map(|i| &pairs[i].1),
            _ => None,
        }
    }

    /// `->` with an index (negative: from the end). Like Postgres (which stores a top-level
    /// scalar as a one-element array), a scalar answers index 0 and -1 with itself.
    pub fn get_index(&self, i: i64) -> Option<&Json> {
        let one = std::slice::from_ref(self);
        let items: &[Json] = match self {
            Json::Array(items) => items,
            Json::Object(_) => return None,
            _ => one,
        };
        let n = items.len() as i64;
        let i = if i < 0 { n + i } else { i };
        usize::try_from(i).ok().and_then(|i| items.get(i))
    }

    /// `#>` with a path: keys for objects, integers for arrays.
    pub fn get_path(&self, path: &[Option<String>]) -> Option<&Json> {
        let mut cur = self;
        for step in path {
            let step = step.as_deref()?;
            cur = match cur {
                Json::Object(_) => cur.get_key(step)?,
                Json::Array(items) => {
                    let i: i64 = step.trim().parse().ok()?;
                    let n = items.len() as i64;
                    items.get(usize::try_from(if i < 0 { n + i } else { i }).ok()?)?
                }
                _ => return None,
            };
        }
        Some(cur)
    }

    /// What `->>` returns: a string unquoted, JSON null as SQL NULL, anything else as text.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Json::Null => None,
            Json::Str(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    /// jsonb equality (numbers by value, objects by their key sets).
    pub fn equals(&self, other: &Json) -> bool {
        match (self, other) {
            (Json::Num(a), Json::Num(b)) => match (Num::parse(a), Num::parse(b)) {
                (Some(x), Some(y)) => x.cmp_total(&y) == Ordering::Equal,
                _ => a == b,
            },
            (Json::Array(a), Json::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.equals(y))
            }
            (Json::Object(a), Json::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((k1, v1), (k2, v2))| k1 == k2 && v1.equals(v2))
            }
            (a, b) => a == b,
        }
    }

    /// `self @> other` (Postgres' `JsonbDeepContains`; at the top level an array contains a
    /// scalar that is one of its elements).
    pub fn contains(&self, other: &Json) -> bool {
        match (self, other) {
            (Json::Array(_), b) if !matches!(b, Json::Array(_) | Json::Object(_)) => {
                self.contains_inner(&Json::Array(vec![b.clone()]))
            }
            _ => self.contains_inner(other),
        }
    }

    fn contains_inner(&self, other: &Json) -> bool {
        match (self, other) {
            (Json::Object(a), Json::Object(b)) => b.iter().all(|(k, v)| {
                let Some(mine) = self.get_key(k) else {
                    return false;
                };
                let _ = a;
                match (mine, v) {
                    (Json::Object(_), Json::Object(_)) | (Json::Array(_), Json::Array(_)) => {
                        mine.contains_inner(v)
                    }
                    _ => mine.equals(v),
                }
            }),
            (Json::Array(a), Json::Array(b)) => b.iter().all(|v| match v {
                Json::Object(_) | Json::Array(_) => a.iter().any(|x| {
                    std::mem::discriminant(x) == std::mem::discriminant(v) && x.contains_inner(v)
                }),
                scalar => a.iter().any(|x| x.equals(scalar)),
            }),
            (Json::Object(_), _) | (_, Json::Object(_)) => false,
            (Json::Array(_), _) | (_, Json::Array(_)) => false,
            (a, b) => a.equals(b),
        }
    }

    /// `?`: a top-level object key, a string element of a top-level array, or the string
    /// itself.
    pub fn has_key(&self, key: &str) -> bool {
        match self {
            Json::Object(_) => self.get_key(key).is_some(),
            Json::Array(items) => items.iter().any(|i| matches!(i, Json::Str(s) if s == key)),
            Json::Str(s) => s == key,
            _ => false,
        }
    }
}

/// jsonb's text output: `{"a": 1, "b": [1, 2]}`.
impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Json::Num(n) => match Num::parse(n) {
                Some(v) => write!(f, "{v}"),
                None => f.write_str(n),
            },
            Json::Str(s) => write_str(f, s),
            Json::Array(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Json::Object(pairs) => {
                f.write_str("{")?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_str(f, k)?;
                    write!(f, ": {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

fn write_str(f: &mut std::fmt::Formatter<'_>, s: &str) -> std::fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\u{8}' => f.write_str("\\b")?,
            '\u{c}' => f.write_str("\\f")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Json> {
        self.ws();
        self.depth += 1;
        if self.depth > 512 {
            return None;
        }
        let v = match *self.s.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut pairs: Vec<(String, Json)> = Vec::new();
                if !self.eat(b'}') {
                    loop {
                        self.ws();
                        let k = self.string()?;
                        if !self.eat(b':') {
                            return None;
                        }
                        let v = self.value()?;
                        match pairs.binary_search_by(|(x, _)| key_cmp(x, &k)) {
                            Ok(i) => pairs[i].1 = v,
                            Err(i) => pairs.insert(i, (k, v)),
                        }
                        if self.eat(b'}') {
                            break;
                        }
                        if !self.eat(b',') {
                            return None;
                        }
                    }
                }
                Json::Object(pairs)
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if !self.eat(b']') {
                    loop {
                        items.push(self.value()?);
                        if self.eat(b']') {
                            break;
                        }
                        if !self.eat(b',') {
                            return None;
                        }
                    }
                }
                Json::Array(items)
            }
            b'"' => Json::Str(self.string()?),
            b't' => self.word("true", Json::Bool(true))?,
            b'f' => self.word("false", Json::Bool(false))?,
            b'n' => self.word("null", Json::Null)?,
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                // JSON number grammar: no leading '+', no bare '.', no leading zeros.
                let digits = text.strip_prefix('-').unwrap_or(text);
                let first = digits.as_bytes().first()?;
                if !first.is_ascii_digit()
                    || (digits.len() > 1
                        && digits.starts_with('0')
                        && digits.as_bytes()[1].is_ascii_digit())
                {
                    return None;
                }
                // digits [. digits] [e [+-] digits], checked without building the number.
                let b = digits.as_bytes();
                let mut i = b.iter().take_while(|c| c.is_ascii_digit()).count();
                if b.get(i) == Some(&b'.') {
                    let frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                    if frac == 0 {
                        return None;
                    }
                    i += 1 + frac;
                }
                if matches!(b.get(i), Some(b'e' | b'E')) {
                    i += 1;
                    if matches!(b.get(i), Some(b'+' | b'-')) {
                        i += 1;
                    }
                    let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                    if exp == 0 {
                        return None;
                    }
                    i += exp;
                }
                if i != b.len() {
                    return None;
                }
                Json::Num(text.into())
            }
        };
        self.depth -= 1;
        Some(v)
    }

    fn word(&mut self, w: &str, v: Json) -> Option<Json> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Some(v)
        } else {
            None
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
        self.i += 4;
        u32::from_str_radix(h, 16).ok()
    }

    fn string(&mut self) -> Option<String> {
        if self.s.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        // Fast path: no escape before the closing quote.
        let rest = &self.s[self.i..];
        if let Some(end) = rest
            .iter()
            .position(|b| *b == b'"' || *b == b'\\' || *b < 0x20)
        {
            if rest[end] == b'"' {
                let text = std::str::from_utf8(&rest[..end]).ok()?.to_string();
                self.i += end + 1;
                return Some(text);
            }
        }
        let mut out: Vec<u8> = Vec::new();
        loop {
            let b = *self.s.get(self.i)?;
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return None;
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            }
                            if cp == 0 {
                                return None;
                            }
                            let c = char::from_u32(cp)?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return None,
                    }
                }
                b if b < 0x20 => return None,
                b => out.push(b),
            }
        }
        String::from_utf8(out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Json {
        Json::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints_like_jsonb() {
        assert_eq!(
            j(r#"{"b":[1,2], "a": 1.50, "a": "x"}"#).to_string(),
            r#"{"a": "x", "b": [1, 2]}"#
        );
        assert_eq!(j(r#"{"aa":1,"b":2}"#).to_string(), r#"{"b": 2, "aa": 1}"#);
        assert_eq!(j(r#""\u00c4\n""#), Json::Str("Ä\n".into()));
        assert!(Json::parse("01").is_none() && Json::parse("[1,]").is_none());
        assert!(Json::parse(r#""\u0000""#).is_none());
    }

    #[test]
    fn containment_and_keys_follow_postgres() {
        assert!(j(r#"{"a": 1, "b": [1, 2]}"#).contains(&j(r#"{"b": [1]}"#)));
        assert!(j(r#"[1, "a", null]"#).contains(&j("1")));
        assert!(!j("1").contains(&j("[1]")));
        assert!(j("{}").contains(&j("{}")));
        assert!(!j("[]").contains(&j("{}")));
        assert!(j(r#"{"a": 1.50}"#).contains(&j(r#"{"a": 1.5}"#)));
        assert!(j(r#"["a"]"#).has_key("a") && j(r#""a""#).has_key("a"));
        assert!(!j(r#"{"x": {"a": 1}}"#).has_key("a"));
        assert_eq!(
            j(r#"{"a": {"x": 1}}"#).get_path(&[Some("a".into()), Some("x".into())]),
            Some(&j("1"))
        );
        assert_eq!(j("[1, 2]").get_index(-1), Some(&j("2")));
    }
}

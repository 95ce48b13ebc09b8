//! Table patterns: which tables a rule covers, written as Postgres would name them.
//!
//! `public.items` is one table, `public.*` every table of schema `public`, `*` any table; a bare
//! `items` means `public.items`. Identifiers follow Postgres: unquoted ones are folded to lower
//! case (ASCII letters only, as Postgres does in UTF-8 databases), double-quoted ones are taken as
//! written with `""` standing for one quote. The text form prints the normalized pattern, quoting
//! only the identifiers that need it, so that parsing it again gives the same pattern.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest identifier Postgres keeps (`NAMEDATALEN - 1` bytes); longer names are
/// truncated by Postgres, so a longer pattern could never match a real table.
pub(crate) const MAX_IDENTIFIER_BYTES: usize = 63;

/// The tables a [`Rule`](super::Rule) covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TablePattern {
    /// One table (`public.items`, or `items` for short).
    Exact {
        /// The table's schema, normalized (unquoted names lower-cased).
        schema: String,
        /// The table's name, normalized.
        table: String,
    },
    /// Every table of one schema (`public.*`).
    Schema(String),
    /// Any table (`*`).
    Any,
}

impl TablePattern {
    /// Does this pattern cover table `schema.table` (names as Postgres stores them)?
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        match self {
            TablePattern::Exact {
                schema: s,
                table: t,
            } => s == schema && t == table,
            TablePattern::Schema(s) => s == schema,
            TablePattern::Any => true,
        }
    }

    /// How specific the pattern is: 0 for one table, 1 for a schema, 2 for any table. Lower
    /// wins when several rules cover a table.
    pub(crate) fn breadth(&self) -> u8 {
        match self {
            TablePattern::Exact { .. } => 0,
            TablePattern::Schema(_) => 1,
            TablePattern::Any => 2,
        }
    }
}

/// Why a table pattern could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid table pattern {input:?}: {reason}")]
pub struct PatternError {
    input: String,
    reason: String,
}

impl FromStr for TablePattern {
    type Err = PatternError;

    fn from_str(input: &str) -> Result<Self, PatternError> {
        parse(input).map_err(|reason| PatternError {
            input: input.to_owned(),
            reason,
        })
    }
}

/// One dot-separated part of a pattern.
#[derive(Debug, PartialEq)]
enum Part {
    Name(String),
    Star,
}

fn parse(input: &str) -> Result<TablePattern, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("it is empty".into());
    }
    if text.contains('\0') {
        return Err("it contains a NUL byte".into());
    }
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let (part, after) = parse_part(rest)?;
        parts.push(part);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => break,
            None => {
                return Err(format!(
                    "unexpected {:?}",
                    after.chars().next().unwrap_or(' ')
                ))
            }
        }
    }
    let mut parts = parts.into_iter();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Part::Star), None, None) => Ok(TablePattern::Any),
        (Some(Part::Name(table)), None, None) => Ok(TablePattern::Exact {
            schema: "public".into(),
            table,
        }),
        (Some(Part::Name(schema)), Some(Part::Name(table)), None) => {
            Ok(TablePattern::Exact { schema, table })
        }
        (Some(Part::Name(schema)), Some(Part::Star), None) => Ok(TablePattern::Schema(schema)),
        (Some(Part::Star), Some(_), None) => {
            Err("a schema cannot be `*`; write `*` alone for any table".into())
        }
        _ => Err("expected `table`, `schema.table`, `schema.*` or `*`".into()),
    }
}

/// Parses one part at the start of `s`: `*`, a quoted or an unquoted identifier. Returns the
/// part and the text after it.
fn parse_part(s: &str) -> Result<(Part, &str), String> {
    if let Some(rest) = s.strip_prefix('*') {
        return Ok((Part::Star, rest));
    }
    let (name, rest) = match s.strip_prefix('"') {
        Some(quoted) => parse_quoted(quoted)?,
        None => parse_unquoted(s)?,
    };
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "identifier {name:?} is longer than Postgres' {MAX_IDENTIFIER_BYTES} bytes"
        ));
    }
    Ok((Part::Name(name), rest))
}

/// A quoted identifier whose opening quote has been consumed.
fn parse_quoted(s: &str) -> Result<(String, &str), String> {
    let mut name = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            name.push(c);
            continue;
        }
        if s[i + 1..].starts_with('"') {
            name.push('"');
            chars.next();
            continue;
        }
        if name.is_empty() {
            return Err("a quoted identifier is empty".into());
        }
        return Ok((name, &s[i + 1..]));
    }
    Err("a quoted identifier is not closed".into())
}

/// An unquoted identifier, by Postgres' lexer rules: an ASCII letter, `_` or any non-ASCII
/// character, then those or ASCII digits or `$`; folded to lower case (ASCII letters only).
fn parse_unquoted(s: &str) -> Result<(String, &str), String> {
    let starts = |c: char| c.is_ascii_alphabetic() || c == '_' || !c.is_ascii();
    let end = s
        .char_indices()
        .find(|&(i, c)| !(starts(c) || (i > 0 && (c.is_ascii_digit() || c == '$'))))
        .map_or(s.len(), |(i, _)| i);
    if end == 0 {
        return Err(match s.chars().next() {
            None => "a name is missing".into(),
            Some(c) => format!("unexpected {c:?} where a name should start"),
        });
    }
    Ok((s[..end].to_ascii_lowercase(), &s[end..]))
}

/// Writes `name` bare when parsing it unquoted gives it back, else quoted.
fn write_identifier(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    let bare = matches!(parse_unquoted(name), Ok((n, rest)) if n == name && rest.is_empty());
    if bare {
        f.write_str(name)
    } else {
        write!(f, "\"{}\"", name.replace('"', "\"\""))
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TablePattern::Exact { schema, table } => {
                write_identifier(f, schema)?;
                f.write_str(".")?;
                write_identifier(f, table)
            }
            TablePattern::Schema(schema) => {
                write_identifier(f, schema)?;
                f.write_str(".*")
            }
            TablePattern::Any => f.write_str("*"),
        }
    }
}

impl Serialize for TablePattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TablePattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(schema: &str, table: &str) -> TablePattern {
        TablePattern::Exact {
            schema: schema.into(),
            table: table.into(),
        }
    }

    fn parse_ok(s: &str) -> TablePattern {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn parse_err(s: &str) -> String {
        match s.parse::<TablePattern>() {
            Ok(p) => panic!("{s:?} parsed as {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(parse_ok("public.items"), exact("public", "items"));
        assert_eq!(parse_ok("items"), exact("public", "items"));
        assert_eq!(parse_ok("public.*"), TablePattern::Schema("public".into()));
        assert_eq!(parse_ok("*"), TablePattern::Any);
        assert_eq!(parse_ok("  sales.Orders "), exact("sales", "orders"));
        assert_eq!(parse_ok("a_1.t$2"), exact("a_1", "t$2"));
        assert_eq!(parse_ok("Ünïcode.TÄBLE"), exact("Ünïcode", "tÄble"));
    }

    #[test]
    fn quoted_identifiers_keep_case_and_escape_quotes() {
        assert_eq!(
            parse_ok(r#""My Schema"."My Table""#),
            exact("My Schema", "My Table")
        );
        assert_eq!(parse_ok(r#""s".*"#), TablePattern::Schema("s".into()));
        assert_eq!(parse_ok(r#""a""b".c"#), exact("a\"b", "c"));
        assert_eq!(parse_ok(r#""x.y""#), exact("public", "x.y"));
        assert_eq!(parse_ok(r#""*""#), exact("public", "*"));
    }

    #[test]
    fn rejects_malformed_patterns() {
        assert!(parse_err("").contains("empty"));
        assert!(parse_err("a.b.c").contains("expected"));
        assert!(parse_err(r#""""#).contains("quoted identifier is empty"));
        assert!(parse_err(r#""abc"#).contains("not closed"));
        assert!(parse_err("a\0b").contains("NUL"));
        assert!(parse_err("*.items").contains("schema cannot be `*`"));
        assert!(parse_err("public.").contains("name is missing"));
        assert!(parse_err(".items").contains("unexpected '.'"));
        assert!(parse_err("pub lic").contains("unexpected ' '"));
        assert!(parse_err("1abc").contains("unexpected '1'"));
        assert!(parse_err("a.*.b").contains("expected"));
        assert!(parse_err("**").contains("unexpected '*'"));
        assert!(parse_err(&"x".repeat(64)).contains("63 bytes"));
        parse_ok(&"x".repeat(63));
    }

    #[test]
    fn text_form_round_trips() {
        for (input, shown) in [
            ("public.items", "public.items"),
            ("Items", "public.items"),
            ("s.*", "s.*"),
            ("*", "*"),
            (r#""My Schema"."My Table""#, r#""My Schema"."My Table""#),
            (r#""a""b"."1x""#, r#""a""b"."1x""#),
            (r#""lower".t"#, "lower.t"),
            (r#""*""#, r#"public."*""#),
        ] {
            let p = parse_ok(input);
            assert_eq!(p.to_string(), shown, "{input}");
            assert_eq!(parse_ok(shown), p, "{shown}");
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<TablePattern>(&json).unwrap(), p);
        }
        assert!(serde_json::from_str::<TablePattern>(r#""a.b.c""#).is_err());
    }

    #[test]
    fn matching() {
        assert!(exact("public", "items").matches("public", "items"));
        assert!(!exact("public", "items").matches("public", "Items"));
        assert!(!exact("public", "items").matches("other", "items"));
        assert!(TablePattern::Schema("s".into()).matches("s", "anything"));
        assert!(!TablePattern::Schema("s".into()).matches("t", "anything"));
        assert!(TablePattern::Any.matches("x", "y"));
    }
}

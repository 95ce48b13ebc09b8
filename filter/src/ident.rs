//! Postgres identifier rules for user input (pure): the `table` and `columns` parameters, and
//! quoting identifiers and literals when SQL is rendered from validated input.
//!
//! Unquoted parts are folded to lower case, quoted parts keep their case and use `""` for a
//! quote; names are at most 63 bytes (NAMEDATALEN - 1).

const MAX_IDENT: usize = 63;

/// A table or column name that does not follow Postgres' identifier rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentError(pub String);

impl std::fmt::Display for IdentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentError {}

/// Split `s` into identifier parts on unquoted `sep`, applying the folding rules.
fn split_idents(s: &str, sep: char) -> Result<Vec<String>, IdentError> {
    if s.contains('\0') {
        // Postgres text cannot hold NUL: no identifier contains one.
        return Err(IdentError("Invalid identifier: contains a NUL byte".into()));
    }
    let mut parts = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        // One identifier.
        let mut ident = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        ident.push('"');
                    } else {
                        closed = true;
                        break;
                    }
                } else {
                    ident.push(c);
                }
            }
            if !closed {
                return Err(IdentError("Unterminated quoted identifier".into()));
            }
            if ident.is_empty() {
                return Err(IdentError(
                    "Invalid zero-length delimited identifier".into(),
                ));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == sep {
                    break;
                }
                if c == '"' {
                    return Err(IdentError(format!(
                        "Invalid identifier: unexpected quote in {s:?}"
                    )));
                }
                ident.push(c.to_ascii_lowercase());
                chars.next();
            }
            let trimmed = ident.trim();
            if trimmed.is_empty() {
                return Err(IdentError("Invalid zero-length identifier".into()));
            }
            ident = trimmed.to_string();
        }
        if ident.len() > MAX_IDENT {
            return Err(IdentError(format!(
                "Identifier {ident:?} is longer than {MAX_IDENT} characters"
            )));
        }
        parts.push(ident);
        match chars.next() {
            None => return Ok(parts),
            Some(c) if c == sep => continue,
            Some(c) => {
                return Err(IdentError(format!(
                    "Invalid identifier: unexpected {c:?} in {s:?}"
                )))
            }
        }
    }
}

/// Parse a `table` parameter into (schema, name); the schema defaults to `public`.
pub fn parse_relation(s: &str) -> Result<(String, String), IdentError> {
    if s.is_empty() {
        return Err(IdentError("can't be blank".into()));
    }
    let parts = split_idents(s, '.')?;
    match parts.len() {
        1 => Ok((
            "public".to_string(),
            parts.into_iter().next().unwrap_or_default(),
        )),
        2 => {
            let mut it = parts.into_iter();
            let schema = it.next().unwrap_or_default();
            let name = it.next().unwrap_or_default();
            if is_system_schema(&schema) {
                return Err(IdentError(format!(
                    "Table {}.{} is not a user table: system schemas (pg_catalog, \
                     information_schema, pg_toast, pg_*) cannot be synced",
                    quote_ident(&schema),
                    quote_ident(&name)
                )));
            }
            Ok((schema, name))
        }
        _ => Err(IdentError(format!(
            "Invalid table name {s:?}: expected at most one unquoted '.' (schema.table)"
        ))),
    }
}

/// Postgres' own schemas: `pg_` is reserved for them, and `information_schema` holds views.
pub fn is_system_schema(schema: &str) -> bool {
    schema.starts_with("pg_") || schema == "information_schema"
}

/// Parse a `columns` parameter: comma-separated, possibly quoted identifiers.
pub fn parse_column_list(s: &str) -> Result<Vec<String>, IdentError> {
    if s.trim().is_empty() {
        return Err(IdentError("Invalid zero-length identifier".into()));
    }
    split_idents(s, ',')
}

/// Quote an identifier for SQL: always double-quoted, `"` doubled.
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quote a string literal for SQL with `standard_conforming_strings = on` (which every
/// shapesync session sets): single-quoted, `'` doubled. NUL bytes cannot occur in Postgres
/// text and are rejected by the caller's validation before rendering.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations() {
        assert_eq!(
            parse_relation("items").unwrap(),
            ("public".into(), "items".into())
        );
        assert_eq!(
            parse_relation("Items").unwrap(),
            ("public".into(), "items".into())
        );
        assert_eq!(
            parse_relation("\"My Schema\".\"My Tbl\"").unwrap(),
            ("My Schema".into(), "My Tbl".into())
        );
        assert_eq!(
            parse_relation("s.\"a.b\"").unwrap(),
            ("s".into(), "a.b".into())
        );
        assert_eq!(
            parse_relation("\"a\"\"b\"").unwrap(),
            ("public".into(), "a\"b".into())
        );
        assert!(parse_relation("a.b.c").is_err());
        for system in [
            "pg_catalog.pg_authid",
            "PG_CATALOG.pg_class",
            "information_schema.tables",
            "pg_toast.pg_toast_1",
            "pg_temp_3.t",
        ] {
            let e = parse_relation(system).unwrap_err().to_string();
            assert!(e.contains("is not a user table"), "{system}: {e}");
        }
        assert!(parse_relation("\"pg\".t").is_ok());
        assert!(parse_relation("t\0")
            .unwrap_err()
            .to_string()
            .contains("NUL"));
        assert!(parse_column_list("a,\0b").is_err());
        assert_eq!(
            parse_relation("\"\"").unwrap_err().to_string(),
            "Invalid zero-length delimited identifier"
        );
        assert_eq!(
            parse_relation("").unwrap_err().to_string(),
            "can't be blank"
        );
        assert!(parse_relation(&"x".repeat(64)).is_err());
        assert!(parse_relation("\"abc").is_err());
        assert!(parse_relation("a\"b").is_err());
    }

    #[test]
    fn columns() {
        assert_eq!(parse_column_list("id,Name").unwrap(), vec!["id", "name"]);
        assert_eq!(
            parse_column_list("\"has,comma\",\"has\"\"quote\"").unwrap(),
            vec!["has,comma", "has\"quote"]
        );
        assert!(parse_column_list("").is_err());
        assert!(parse_column_list("a,,b").is_err());
        assert!(parse_column_list("a,\"\"").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "'a\\b'");
    }
}

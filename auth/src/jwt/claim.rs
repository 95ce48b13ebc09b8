//! How a token claim becomes the text of a typed constant in a row filter: `claim('tenant')`
//! is replaced by a constant whose text is [`claim_sql_text`] of the claim, which Postgres'
//! input function for the column's type then reads.

use serde_json::Value;

/// The text of claim `value` as a constant: a string is itself, a number its JSON text, a
/// boolean `true`/`false`, null `None` (SQL NULL), an object its compact JSON (for jsonb), and
/// an array a Postgres array literal (`{…}`) with every string double-quoted (`\` and `"`
/// escaped by a backslash), nulls as `NULL`, numbers and booleans bare, and nested arrays as
/// nested literals. Fails for arrays Postgres cannot represent: holding objects, mixing arrays
/// and scalars, or with sub-arrays of different shapes.
pub fn claim_sql_text(value: &Value) -> Result<Option<String>, String> {
    Ok(match value {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Object(_) => Some(value.to_string()),
        Value::Array(items) => {
            shape(items)?;
            let mut out = String::new();
            write_array(&mut out, items);
            Some(out)
        }
    })
}

/// The dimensions of a JSON array as a Postgres array, if it has some.
fn shape(items: &[Value]) -> Result<Vec<usize>, String> {
    let arrays = items.iter().filter(|v| v.is_array()).count();
    if arrays == 0 {
        if items.iter().any(Value::is_object) {
            return Err(
                "an array claim may only hold strings, numbers, booleans, nulls and \
                        arrays"
                    .into(),
            );
        }
        return Ok(vec![items.len()]);
    }
    if arrays != items.len() {
        return Err("an array claim cannot mix arrays with other values".into());
    }
    let mut inner: Option<Vec<usize>> = None;
    for item in items {
        let dims = shape(item.as_array().map_or(&[][..], Vec::as_slice))?;
        match &inner {
            Some(first) if *first != dims => {
                return Err(
                    "the arrays nested in an array claim must all have the same shape".into(),
                );
            }
            Some(_) => {}
            None => inner = Some(dims),
        }
    }
    let mut dims = vec![items.len()];
    dims.extend(inner.unwrap_or_default());
    Ok(dims)
}

fn write_array(out: &mut String, items: &[Value]) {
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::String(s) => {
                out.push('"');
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            Value::Array(inner) => write_array(out, inner),
            // Refused by `shape` before writing.
            Value::Object(_) => out.push_str("NULL"),
        }
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn text(value: Value) -> Option<String> {
        claim_sql_text(&value).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(text(json!("acme")), Some("acme".into()));
        assert_eq!(
            text(json!("it's \"quoted\"")),
            Some("it's \"quoted\"".into())
        );
        assert_eq!(text(json!("")), Some(String::new()));
        assert_eq!(text(json!(42)), Some("42".into()));
        assert_eq!(text(json!(-7)), Some("-7".into()));
        assert_eq!(text(json!(1.5)), Some("1.5".into()));
        assert_eq!(
            text(json!(18446744073709551615u64)),
            Some("18446744073709551615".into())
        );
        assert_eq!(text(json!(true)), Some("true".into()));
        assert_eq!(text(json!(false)), Some("false".into()));
        assert_eq!(text(json!(null)), None);
    }

    #[test]
    fn objects_become_compact_json() {
        assert_eq!(
            text(json!({"b": [1, "x"], "a": {"c": null}})),
            Some(r#"{"a":{"c":null},"b":[1,"x"]}"#.into())
        );
    }

    #[test]
    fn arrays_become_postgres_array_literals() {
        assert_eq!(text(json!([])), Some("{}".into()));
        assert_eq!(text(json!(["a", "b"])), Some(r#"{"a","b"}"#.into()));
        assert_eq!(text(json!([1, 2.5, -3])), Some("{1,2.5,-3}".into()));
        assert_eq!(
            text(json!([true, false, null])),
            Some("{true,false,NULL}".into())
        );
        assert_eq!(text(json!(["x", null, 1])), Some(r#"{"x",NULL,1}"#.into()));
        assert_eq!(
            text(json!([
                "a\"b", "c\\d", "e,f", "{g}", "NULL", "null", " sp ", ""
            ])),
            Some(r#"{"a\"b","c\\d","e,f","{g}","NULL","null"," sp ",""}"#.into())
        );
        assert_eq!(text(json!([[1, 2], [3, 4]])), Some("{{1,2},{3,4}}".into()));
        assert_eq!(
            text(json!([[["a"], ["b"]], [["c"], [null]]])),
            Some(r#"{{{"a"},{"b"}},{{"c"},{NULL}}}"#.into())
        );
    }

    #[test]
    fn arrays_postgres_cannot_hold_are_refused() {
        let err = |v: Value| claim_sql_text(&v).unwrap_err();
        assert!(err(json!([{"a": 1}])).contains("may only hold"));
        assert!(err(json!([1, [2]])).contains("cannot mix"));
        assert!(err(json!([[1, 2], [3]])).contains("same shape"));
        assert!(err(json!([[[1]], [2]])).contains("same shape"));
        assert!(err(json!([[{"a": 1}]])).contains("may only hold"));
    }
}

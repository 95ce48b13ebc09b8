//! Validation of a [`RoleInput`]: every problem is reported, under the path of its field.

use std::collections::HashSet;

use super::model::{RoleInput, Rule};
use super::pattern::MAX_IDENTIFIER_BYTES;
use crate::field::{self, FieldErrors};

/// The most rules one role may have.
pub const MAX_RULES: usize = 256;
/// The longest row filter, in bytes.
pub const MAX_ROW_FILTER_BYTES: usize = 8 * 1024;
/// The longest role name, in characters.
pub const MAX_ROLE_NAME_CHARS: usize = 64;
/// The longest database id, in characters.
pub const MAX_DATABASE_ID_CHARS: usize = 64;
/// The longest role description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;

/// Checks a role name: 1 to 64 characters of `[A-Za-z0-9_.-]`.
pub fn check_role_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_ROLE_NAME_CHARS {
        return Err(format!(
            "must be 1 to {MAX_ROLE_NAME_CHARS} characters long"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("may only contain letters, digits, `_`, `.` and `-`".into());
    }
    Ok(())
}

impl RoleInput {
    /// Checks everything about the input, reporting each problem under its field's path
    /// (`"name"`, `"access[0].table"`, `"access[1].row_filter"`, ...). `check_filter` judges a
    /// row filter's SQL (the server parses it with Postgres' grammar) and returns the message to
    /// show when it is not acceptable. A missing `name` is not an error here: whether it is
    /// required depends on the operation.
    pub fn validate(
        &self,
        check_filter: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        if let Some(name) = &self.name {
            if let Err(message) = check_role_name(name) {
                field::push(&mut errors, "name", message);
            }
        }
        if let Some(description) = &self.description {
            if description.chars().count() > MAX_DESCRIPTION_CHARS {
                let message = format!("must be at most {MAX_DESCRIPTION_CHARS} characters long");
                field::push(&mut errors, "description", message);
            }
        }
        if self.access.len() > MAX_RULES {
            let message = format!("a role has at most {MAX_RULES} rules");
            field::push(&mut errors, "access", message);
        }
        for (i, rule) in self.access.iter().enumerate() {
            validate_rule(rule, &format!("access[{i}]"), check_filter, &mut errors);
        }
        report_shadowed_rules(&self.access, &mut errors);
        field::into_result(errors)
    }
}

fn validate_rule(
    rule: &Rule,
    at: &str,
    check_filter: &dyn Fn(&str) -> Result<(), String>,
    errors: &mut FieldErrors,
) {
    let id = &rule.database_id;
    if id.is_empty() || id.chars().count() > MAX_DATABASE_ID_CHARS {
        let message = format!("must be 1 to {MAX_DATABASE_ID_CHARS} characters long");
        field::push(errors, format!("{at}.database_id"), message);
    } else if field::has_control(id) {
        field::push(
            errors,
            format!("{at}.database_id"),
            "must not contain control characters",
        );
    }
    if let Some(columns) = &rule.columns {
        validate_columns(columns, &format!("{at}.columns"), errors);
    }
    if let Some(filter) = &rule.row_filter {
        let field = format!("{at}.row_filter");
        if filter.trim().is_empty() {
            field::push(
                errors,
                field,
                "must not be empty; leave it out to allow every row",
            );
        } else if filter.len() > MAX_ROW_FILTER_BYTES {
            field::push(
                errors,
                field,
                format!("must be at most {MAX_ROW_FILTER_BYTES} bytes"),
            );
        } else if let Err(message) = check_filter(filter) {
            field::push(errors, field, message);
        }
    }
    if rule.verbs.is_empty() {
        field::push(errors, format!("{at}.verbs"), "must list at least one verb");
    }
    let mut seen = HashSet::new();
    for verb in &rule.verbs {
        if !seen.insert(verb) {
            field::push(errors, format!("{at}.verbs"), format!("lists {verb} twice"));
        }
    }
}

fn validate_columns(columns: &[String], field: &str, errors: &mut FieldErrors) {
    if columns.is_empty() {
        field::push(
            errors,
            field,
            "must list at least one column; leave it out for all columns",
        );
    }
    let mut seen = HashSet::new();
    for name in columns {
        if name.is_empty() {
            field::push(errors, field, "a column name is empty");
        } else if name.contains('\0') {
            field::push(
                errors,
                field,
                format!("column name {name:?} contains a NUL byte"),
            );
        } else if name.len() > MAX_IDENTIFIER_BYTES {
            let message =
                format!("column name {name:?} is longer than {MAX_IDENTIFIER_BYTES} bytes");
            field::push(errors, field, message);
        } else if !seen.insert(name) {
            field::push(errors, field, format!("column {name:?} is listed twice"));
        }
    }
}

/// Two rules with the same database and table pattern: only the first would ever apply, which
/// is surely not what the author meant.
fn report_shadowed_rules(rules: &[Rule], errors: &mut FieldErrors) {
    for (i, rule) in rules.iter().enumerate() {
        let first = rules[..i]
            .iter()
            .position(|r| r.database_id == rule.database_id && r.table == rule.table);
        if let Some(j) = first {
            let message = format!(
                "access[{j}] already covers {} in database {:?}; only one rule applies to a table",
                rule.table, rule.database_id
            );
            field::push(errors, format!("access[{i}].table"), message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_all(_: &str) -> Result<(), String> {
        Ok(())
    }

    fn reject_drop(sql: &str) -> Result<(), String> {
        if sql.contains("DROP") {
            Err("syntax error at or near \"DROP\"".into())
        } else {
            Ok(())
        }
    }

    fn input(json: serde_json::Value) -> RoleInput {
        serde_json::from_value(json).unwrap()
    }

    fn errors(json: serde_json::Value) -> FieldErrors {
        input(json).validate(&reject_drop).unwrap_err()
    }

    #[test]
    fn a_good_role_passes() {
        let role = input(serde_json::json!({
            "name": "reader.v2-x_1",
            "description": "reads things",
            "access": [
                {"database_id": "db", "table": "public.items", "columns": ["id", "Name"],
                 "row_filter": "owner = claim('sub')", "verbs": ["read", "subset"]},
                {"database_id": "db", "table": "public.*"},
                {"database_id": "other", "table": "public.items"},
            ]
        }));
        assert_eq!(role.validate(&accept_all), Ok(()));
        assert_eq!(
            input(serde_json::json!({"access": []})).validate(&accept_all),
            Ok(())
        );
    }

    #[test]
    fn names_are_checked() {
        let e = errors(serde_json::json!({"name": "", "access": []}));
        assert_eq!(e["name"], ["must be 1 to 64 characters long"]);
        let e = errors(serde_json::json!({"name": "a".repeat(65), "access": []}));
        assert_eq!(e["name"], ["must be 1 to 64 characters long"]);
        let e = errors(serde_json::json!({"name": "no spaces", "access": []}));
        assert_eq!(
            e["name"],
            ["may only contain letters, digits, `_`, `.` and `-`"]
        );
        assert!(check_role_name(&"a".repeat(64)).is_ok());
        assert!(check_role_name("é").is_err());
    }

    #[test]
    fn every_rule_problem_is_reported_under_its_path() {
        let e = errors(serde_json::json!({
            "name": "ok",
            "description": "x".repeat(1025),
            "access": [
                {"database_id": "", "table": "t", "columns": [], "row_filter": "  ", "verbs": []},
                {"database_id": "d\u{7}", "table": "t", "columns": ["a", "", "a", "b\u{0}"],
                 "row_filter": "x; DROP TABLE t", "verbs": ["read", "read"]},
                {"database_id": "d\u{7}", "table": "public.t", "row_filter": "x".repeat(8193)},
            ]
        }));
        let expected: FieldErrors = [
            ("description", vec!["must be at most 1024 characters long"]),
            (
                "access[0].database_id",
                vec!["must be 1 to 64 characters long"],
            ),
            (
                "access[0].columns",
                vec!["must list at least one column; leave it out for all columns"],
            ),
            (
                "access[0].row_filter",
                vec!["must not be empty; leave it out to allow every row"],
            ),
            ("access[0].verbs", vec!["must list at least one verb"]),
            (
                "access[1].database_id",
                vec!["must not contain control characters"],
            ),
            (
                "access[1].columns",
                vec![
                    "a column name is empty",
                    "column \"a\" is listed twice",
                    "column name \"b\\0\" contains a NUL byte",
                ],
            ),
            (
                "access[1].row_filter",
                vec!["syntax error at or near \"DROP\""],
            ),
            ("access[1].verbs", vec!["lists read twice"]),
            (
                "access[2].database_id",
                vec!["must not contain control characters"],
            ),
            ("access[2].row_filter", vec!["must be at most 8192 bytes"]),
            (
                "access[2].table",
                vec![
                    "access[1] already covers public.t in database \"d\\u{7}\"; \
                     only one rule applies to a table",
                ],
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(e, expected);
    }

    #[test]
    fn too_many_rules() {
        let rules: Vec<_> = (0..=MAX_RULES)
            .map(|i| serde_json::json!({"database_id": "db", "table": format!("t{i}")}))
            .collect();
        let e = errors(serde_json::json!({"access": rules}));
        assert_eq!(e["access"], ["a role has at most 256 rules"]);
        assert_eq!(e.len(), 1);
    }
}

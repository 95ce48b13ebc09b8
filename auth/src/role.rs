//! Roles: named sets of access rules. A rule grants verbs on the tables of one database that a
//! [`TablePattern`] covers, optionally narrowed to some columns and to the rows a filter keeps.
//!
//! Exactly one rule applies to a table: the most specific one of its database (an exact table
//! before a `schema.*` pattern before `*`, the first listed among equals). Rules never add up,
//! so a broad rule can never widen what a specific rule allows: `public.*` with all columns and
//! `public.secrets` with two columns means two columns of `public.secrets`.

mod pattern;
mod validate;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use pattern::{PatternError, TablePattern};
pub use validate::{
    check_role_name, MAX_DATABASE_ID_CHARS, MAX_DESCRIPTION_CHARS, MAX_ROLE_NAME_CHARS,
    MAX_ROW_FILTER_BYTES, MAX_RULES,
};

/// What a rule allows on its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Sync a shape of the table.
    Read,
    /// Run subset (paged, one-off) queries against the table.
    Subset,
    /// Delete shapes of the table.
    Delete,
}

impl Verb {
    /// The verb as written in JSON: `read`, `subset` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Read => "read",
            Verb::Subset => "subset",
            Verb::Delete => "delete",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One access rule of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The database (tenant) the rule is about.
    pub database_id: String,
    /// The tables it covers.
    pub table: TablePattern,
    /// The only columns it exposes (exact, case-sensitive names); `None` means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// A where clause every row must satisfy, which may use `claim('name')` for a claim of the
    /// caller's token; `None` means every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_filter: Option<String>,
    /// What it allows; `["read"]` when absent.
    #[serde(default = "default_verbs")]
    pub verbs: Vec<Verb>,
}

fn default_verbs() -> Vec<Verb> {
    vec![Verb::Read]
}

impl Rule {
    /// Does the rule allow `verb`?
    pub fn allows(&self, verb: Verb) -> bool {
        self.verbs.contains(&verb)
    }

    /// Does the rule expose column `name`?
    pub fn allows_column(&self, name: &str) -> bool {
        self.columns
            .as_ref()
            .is_none_or(|cols| cols.iter().any(|c| c == name))
    }
}

/// A named set of rules, as stored and as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// 1 to 64 characters of `[A-Za-z0-9_.-]`; what a key is bound to and a token's `role`
    /// claim names.
    pub name: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The rules, in the order given.
    pub access: Vec<Rule>,
    /// When the role was created.
    pub created_at: DateTime<Utc>,
    /// When its rules last changed.
    pub updated_at: DateTime<Utc>,
}

impl Role {
    /// The one rule that applies to table `schema.table` of database `database_id`: an exact
    /// table match wins over a `schema.*` pattern, which wins over `*`; among equals the first
    /// listed. `None` means the role grants nothing on that table.
    pub fn rule_for(&self, database_id: &str, schema: &str, table: &str) -> Option<&Rule> {
        self.access
            .iter()
            .filter(|r| r.database_id == database_id && r.table.matches(schema, table))
            .min_by_key(|r| r.table.breadth())
    }

    /// Does any rule concern database `database_id`?
    pub fn allows_database(&self, database_id: &str) -> bool {
        self.access.iter().any(|r| r.database_id == database_id)
    }

    /// The database of every rule, when they all name the same one (a request without a
    /// `database_id` means it).
    pub fn only_database(&self) -> Option<String> {
        let first = &self.access.first()?.database_id;
        self.access
            .iter()
            .all(|r| r.database_id == *first)
            .then(|| first.clone())
    }
}

/// A role as the admin API receives it (create or replace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleInput {
    /// Required to create a role; when replacing one it may be left out, and must equal the
    /// name in the path when given.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
    /// The rules.
    pub access: Vec<Rule>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(db: &str, table: &str, verbs: &[Verb]) -> Rule {
        Rule {
            database_id: db.into(),
            table: table.parse().unwrap(),
            columns: None,
            row_filter: None,
            verbs: verbs.to_vec(),
        }
    }

    fn role(access: Vec<Rule>) -> Role {
        let now = Utc::now();
        Role {
            name: "r".into(),
            description: None,
            access,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn most_specific_rule_wins_then_first_listed() {
        let r = role(vec![
            rule("db", "*", &[Verb::Read, Verb::Subset, Verb::Delete]),
            rule("db", "public.*", &[Verb::Read, Verb::Subset]),
            rule("db", "public.items", &[Verb::Read]),
            rule("db", "public.items", &[Verb::Delete]),
            rule("db", "other.*", &[Verb::Subset]),
            rule("db", "other.*", &[Verb::Delete]),
            rule("db2", "public.orders", &[Verb::Delete]),
        ]);
        assert_eq!(
            r.rule_for("db", "public", "items").unwrap().verbs,
            [Verb::Read]
        );
        assert_eq!(
            r.rule_for("db", "public", "orders").unwrap().verbs,
            [Verb::Read, Verb::Subset]
        );
        assert_eq!(
            r.rule_for("db", "other", "x").unwrap().verbs,
            [Verb::Subset]
        );
        assert_eq!(r.rule_for("db", "third", "x").unwrap().verbs.len(), 3);
        assert_eq!(
            r.rule_for("db2", "public", "orders").unwrap().verbs,
            [Verb::Delete]
        );
        assert!(r.rule_for("db2", "public", "items").is_none());
        assert!(r.rule_for("db3", "public", "items").is_none());
        assert!(r.allows_database("db2"));
        assert!(!r.allows_database("db3"));
    }

    #[test]
    fn a_broad_rule_never_widens_a_specific_one() {
        let mut narrow = rule("db", "public.secrets", &[Verb::Read]);
        narrow.columns = Some(vec!["id".into()]);
        let r = role(vec![
            rule("db", "public.*", &[Verb::Read, Verb::Delete]),
            narrow,
        ]);
        let applied = r.rule_for("db", "public", "secrets").unwrap();
        assert!(applied.allows_column("id"));
        assert!(!applied.allows_column("payload"));
        assert!(!applied.allows(Verb::Delete));
        assert!(r
            .rule_for("db", "public", "items")
            .unwrap()
            .allows_column("payload"));
    }

    #[test]
    fn rule_serde_defaults_and_round_trip() {
        let r: Rule = serde_json::from_str(r#"{"database_id":"db","table":"Items"}"#).unwrap();
        assert_eq!(r.verbs, [Verb::Read]);
        assert_eq!(r.table.to_string(), "public.items");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"database_id":"db","table":"public.items","verbs":["read"]})
        );

        let full = r#"{"database_id":"db","table":"s.*","columns":["a","B"],
            "row_filter":"owner = claim('sub')","verbs":["read","subset","delete"]}"#;
        let r: Rule = serde_json::from_str(full).unwrap();
        assert_eq!(
            serde_json::from_value::<Rule>(serde_json::to_value(&r).unwrap()).unwrap(),
            r
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let e = serde_json::from_str::<Rule>(r#"{"database_id":"db","table":"t","colums":[]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `colums`"), "{e}");
        let e =
            serde_json::from_str::<Rule>(r#"{"database_id":"db","table":"t","verbs":["write"]}"#)
                .unwrap_err();
        assert!(e.to_string().contains("unknown variant `write`"), "{e}");
        let e =
            serde_json::from_str::<Rule>(r#"{"database_id":"db","table":"a.b.c"}"#).unwrap_err();
        assert!(e.to_string().contains("invalid table pattern"), "{e}");
        let e = serde_json::from_str::<RoleInput>(r#"{"access":[],"extra":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
        let now = Utc::now();
        let role = Role {
            name: "r".into(),
            description: Some("d".into()),
            access: vec![rule("db", "*", &[Verb::Read])],
            created_at: now,
            updated_at: now,
        };
        let mut json = serde_json::to_value(&role).unwrap();
        assert_eq!(serde_json::from_value::<Role>(json.clone()).unwrap(), role);
        json["surprise"] = true.into();
        assert!(serde_json::from_value::<Role>(json).is_err());
    }
}

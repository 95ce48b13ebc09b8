//! The role types: verbs, rules, roles and what the admin API receives.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::pattern::TablePattern;

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

//! Roles: named sets of access rules. A rule grants verbs on the tables of one database that a
//! [`TablePattern`] covers, optionally narrowed to some columns and to the rows a filter keeps.
//!
//! Exactly one rule applies to a table: the most specific one of its database (an exact table
//! before a `schema.*` pattern before `*`, the first listed among equals). Rules never add up,
//! so a broad rule can never widen what a specific rule allows: `public.*` with all columns and
//! `public.secrets` with two columns means two columns of `public.secrets`.

mod model;
mod pattern;
mod validate;

pub use model::*;
pub use pattern::{PatternError, TablePattern};
pub use validate::{
    check_role_name, MAX_DATABASE_ID_CHARS, MAX_DESCRIPTION_CHARS, MAX_ROLE_NAME_CHARS,
    MAX_ROW_FILTER_BYTES, MAX_RULES,
};

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

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

//! `claim('<name>')` in a role's row filter, and what authorization needs to know about a
//! clause before it is typed against a table: the claims a filter uses and the columns a
//! client's clause names.
//!
//! A claim is bound as a typed constant when the filter is typed ([`parse_where_with`]): its
//! value is text typed by its context, exactly like a `$n` parameter, so no claim value is ever
//! spliced into SQL. `claim()` exists only in row filters: in a client's clause it is refused.

use pg_query::protobuf::node::Node as N;

use crate::error::{WhereError, WhereErrorKind};
use crate::expr::WhereClause;
use crate::table::TableInfo;
pub use crate::typer::ClaimSource;
use crate::typer::{claim_call, loc, Typer};

/// Parse and type-check a role's row filter against `table`, with `claim(...)` bound from
/// `claims` (the filter has no `$n` parameters of its own).
pub fn parse_where_with(
    clause: &str,
    table: &TableInfo,
    claims: &dyn ClaimSource,
) -> Result<WhereClause, WhereError> {
    let tree = crate::parse::parse_tree(clause)?;
    let mut cx = Typer::new(table, &[]);
    cx.claims = Some(claims);
    cx.boolean_root(tree.where_node()?)
}

/// Check a row filter's syntax (one boolean expression in Postgres' grammar, `claim()` calls
/// well formed) without a table; the claim names it uses, in order, without repeats. Typing
/// against a table happens when a shape uses it.
pub fn row_filter_claims(clause: &str) -> Result<Vec<String>, WhereError> {
    let tree = crate::parse::parse_tree(clause)?;
    tree.where_node()?;
    let mut names: Vec<String> = Vec::new();
    // The tree walk of `nodes()` does not enter every node (array constructors, for one): the
    // calls are found in the token stream, and the parse tree checks their form where it sees
    // them. A call it does not see is typed later with the same rules (`claim_call`).
    for (node, _, _, _) in tree.result.protobuf.nodes() {
        match node {
            pg_query::NodeRef::FuncCall(f) => {
                if let Some(name) = claim_call(f) {
                    name?;
                }
            }
            pg_query::NodeRef::SubLink(s) => {
                return Err(WhereError::new(
                    WhereErrorKind::Unsupported,
                    loc(s.location),
                    "subqueries are not supported",
                ))
            }
            _ => {}
        }
    }
    let wrapped = format!("{}{clause}", crate::typer::PREFIX);
    let tokens = pg_query::scan(&wrapped)
        .map_err(|e| {
            WhereError::new(
                WhereErrorKind::Syntax,
                crate::error::Loc::NONE,
                e.to_string(),
            )
        })?
        .tokens;
    let text = |t: &pg_query::protobuf::ScanToken| -> &str {
        wrapped.get(t.start as usize..t.end as usize).unwrap_or("")
    };
    for (i, t) in tokens.iter().enumerate() {
        if !text(t).eq_ignore_ascii_case("claim") {
            continue;
        }
        let next = |k: usize| tokens.get(i + k).map(text);
        if next(1) != Some("(") {
            continue;
        }
        let malformed = || {
            WhereError::new(
                WhereErrorKind::Syntax,
                loc(t.start),
                "claim() takes one string constant: the claim's name, e.g. claim('sub')",
            )
        };
        let name = match (next(2), next(3)) {
            (Some(lit), Some(")")) if lit.starts_with('\'') && lit.len() > 2 => {
                lit[1..lit.len() - 1].replace("''", "'")
            }
            _ => return Err(malformed()),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Every column name a clause refers to (the last part of each column reference: a superset
/// of the columns typing resolves), in order, without repeats. For checking a client's clause
/// against a column allow-list before any table is at hand.
pub fn referenced_columns(clause: &str) -> Result<Vec<String>, WhereError> {
    let tree = crate::parse::parse_tree(clause)?;
    Ok(column_names(&tree.result))
}

/// Every column name an `ORDER BY` list refers to, like [`referenced_columns`].
pub fn order_by_columns(order_by: &str) -> Result<Vec<String>, WhereError> {
    let sql = format!("SELECT 1 ORDER BY {order_by}");
    let parsed = pg_query::parse(&sql, pg_query::ParserOptions::DEFAULT).map_err(|e| {
        WhereError::new(
            WhereErrorKind::Syntax,
            crate::error::Loc::NONE,
            e.to_string(),
        )
    })?;
    Ok(column_names(&parsed))
}

fn column_names(parsed: &pg_query::ParseResult) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (node, _, _, _) in parsed.protobuf.nodes() {
        if let pg_query::NodeRef::ColumnRef(c) = node {
            let last = c.fields.last().and_then(|f| match f.node.as_ref() {
                Some(N::String(s)) => Some(s.sval.clone()),
                _ => None,
            });
            match last {
                Some(name) => {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                // `t.*`: refused by typing anyway; name it so no allow-list lets it through.
                None => names.push("*".into()),
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::TableInfo;
    use std::collections::BTreeMap;

    struct Claims(BTreeMap<&'static str, Option<&'static str>>);

    impl ClaimSource for Claims {
        fn claim(&self, name: &str) -> Result<Option<String>, String> {
            match self.0.get(name) {
                Some(v) => Ok(v.map(str::to_string)),
                None => Err(format!("the credential has no claim {name:?}")),
            }
        }
    }

    fn table() -> TableInfo {
        let c = |name: &str, ty: &str| crate::table::ColumnInfo {
            name: name.into(),
            type_oid: 0,
            type_name: ty.into(),
            dims: 0,
            type_mod: -1,
            not_null: false,
            pk_index: (name == "id").then_some(0),
        };
        TableInfo::new(
            1,
            "public".into(),
            "items".into(),
            vec![
                c("id", "int8"),
                c("owner", "text"),
                c("org", "int4"),
                c("open", "bool"),
            ],
        )
    }

    fn claims() -> Claims {
        Claims(BTreeMap::from([
            ("sub", Some("alice")),
            ("orgs", Some("{1,2,3}")),
            ("org", Some("2")),
            ("admin", Some("true")),
            ("none", None),
        ]))
    }

    #[test]
    fn claims_bind_as_typed_constants() {
        let t = table();
        let c = claims();
        for (clause, sql) in [
            ("owner = claim('sub')", "\"owner\" = 'alice'"),
            ("org = claim('org')", "\"org\" = CAST('2' AS int8)"),
            (
                "org = ANY(claim('orgs')::int[])",
                "(CAST(\"org\" AS int8) = ANY (CAST('{1,2,3}' AS int4[])))",
            ),
            ("claim('admin')::boolean OR open", "(true OR \"open\")"),
            // A NULL claim compares as NULL: no row passes.
            ("owner = claim('none')", "NULL::boolean"),
        ] {
            let w = parse_where_with(clause, &t, &c).unwrap_or_else(|e| panic!("{clause}: {e}"));
            assert_eq!(w.sql(&t), sql, "{clause}");
        }
    }

    #[test]
    fn claim_values_never_become_sql() {
        let t = table();
        let hostile = Claims(BTreeMap::from([("sub", Some("x') OR (1=1"))]));
        let w = parse_where_with("owner = claim('sub')", &t, &hostile).unwrap();
        assert_eq!(w.sql(&t), "\"owner\" = 'x'') OR (1=1'");
        let bad_int = Claims(BTreeMap::from([("org", Some("1 OR true"))]));
        assert!(parse_where_with("org = claim('org')", &t, &bad_int).is_err());
    }

    #[test]
    fn missing_claims_and_client_use_are_errors() {
        let t = table();
        let e = parse_where_with("owner = claim('email')", &t, &claims()).unwrap_err();
        assert!(e.message.contains("email"), "{e}");
        let e = crate::parse_where("owner = claim('sub')", &t, &[]).unwrap_err();
        assert!(e.message.contains("row filter"), "{e}");
        for bad in [
            "claim()",
            "claim('a', 'b')",
            "claim(owner)",
            "claim('')",
            "claim(NULL)",
        ] {
            let clause = format!("owner = {bad}");
            assert!(row_filter_claims(&clause).is_err(), "{clause}");
            assert!(
                parse_where_with(&clause, &t, &claims()).is_err(),
                "{clause}"
            );
        }
    }

    #[test]
    fn claim_names_and_columns() {
        assert_eq!(
            row_filter_claims(
                "owner = claim('sub') OR org = ANY(claim('orgs')::int[]) OR owner = claim('sub')"
            )
            .unwrap(),
            vec!["sub".to_string(), "orgs".to_string()]
        );
        assert!(row_filter_claims("owner IN (SELECT 1)").is_err());
        // Inside an array constructor, which the tree walk does not enter.
        assert_eq!(
            row_filter_claims("owner = ANY(ARRAY[claim('a'), claim('b')])").unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(row_filter_claims("owner = ANY(ARRAY[claim(owner)])").is_err());
        assert!(row_filter_claims("1=1) OR (1=1").is_err());
        assert_eq!(
            referenced_columns("a = 1 AND items.b > 2 OR public.items.a IS NULL OR lower(c) = 'x'")
                .unwrap(),
            vec!["a".to_string(), "b".to_string(), "c".to_string()]
        );
        assert_eq!(
            referenced_columns("items.* IS NULL").unwrap(),
            vec!["*".to_string()]
        );
    }
}

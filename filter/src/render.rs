//! Rendering a typed where clause back to SQL, from the validated form only: constants as
//! `CAST('<canonical text>' AS <type>)`, every implicit conversion as an explicit `CAST`.

use crate::expr::{Expr, Operand};
use crate::like::LikeTok;
use crate::scalar;

pub(crate) fn render(expr: &Expr, names: &[String], out: &mut String) {
    use crate::ident::quote_ident;
    match expr {
        Expr::Const(Some(true)) => out.push_str("true"),
        Expr::Const(Some(false)) => out.push_str("false"),
        Expr::Const(None) => out.push_str("NULL::boolean"),
        Expr::BoolColumn(c) => out.push_str(&quote_ident(&names[*c])),
        Expr::Compare {
            column, op, value, ..
        } => {
            out.push_str(&quote_ident(&names[*column]));
            out.push(' ');
            out.push_str(op.sql());
            out.push(' ');
            out.push_str(&value.sql());
        }
        Expr::IsNull { expr, negated } => {
            out.push('(');
            match expr.as_ref() {
                Operand::Column(c) => out.push_str(&quote_ident(&names[*c])),
                Operand::Expr(e) => render(e, names, out),
            }
            out.push_str(if *negated {
                ") IS NOT NULL"
            } else {
                ") IS NULL"
            });
        }
        Expr::BoolTest {
            expr,
            target,
            negated,
        } => {
            out.push('(');
            render(expr, names, out);
            out.push_str(") IS ");
            if *negated {
                out.push_str("NOT ");
            }
            out.push_str(match target {
                Some(true) => "TRUE",
                Some(false) => "FALSE",
                None => "UNKNOWN",
            });
        }
        Expr::And(items) | Expr::Or(items) if items.len() == 1 => render(&items[0], names, out),
        Expr::And(_) => render_list(expr, true, names, out),
        Expr::Or(_) => render_list(expr, false, names, out),
        Expr::Like {
            arg,
            pattern,
            negated,
            fold,
        } => {
            out.push('(');
            arg.render(names, out);
            out.push_str(match (*negated, *fold) {
                (false, false) => " LIKE ",
                (true, false) => " NOT LIKE ",
                (false, true) => " ILIKE ",
                (true, true) => " NOT ILIKE ",
            });
            out.push_str(&crate::ident::quote_literal(&like_pattern(pattern)));
            out.push_str(" ESCAPE '\\')");
        }
        Expr::Not(e) => {
            out.push_str("(NOT ");
            render(e, names, out);
            out.push(')');
        }
        Expr::Cmp { op, l, r, .. } => {
            // No parentheses, like `column op constant`: both parse back to the same thing.
            l.render(names, out);
            out.push(' ');
            out.push_str(op.sql());
            out.push(' ');
            r.render(names, out);
        }
        Expr::AnyAll {
            op, all, x, arr, ..
        } => {
            out.push('(');
            x.render(names, out);
            out.push(' ');
            out.push_str(op.sql());
            out.push_str(if *all { " ALL (" } else { " ANY (" });
            arr.render(names, out);
            out.push_str("))");
        }
        Expr::JsonContains { l, r } => scalar::render_binary(l, "@>", r, names, out),
        Expr::JsonHas { doc, keys, mode } => {
            scalar::render_binary(doc, mode.sql(), keys, names, out)
        }
        Expr::ArrayOp { op, l, r, .. } => scalar::render_binary(l, op.sql(), r, names, out),
        Expr::ValueIsNull { arg, negated } => {
            out.push('(');
            arg.render(names, out);
            out.push_str(if *negated {
                ") IS NOT NULL"
            } else {
                ") IS NULL"
            });
        }
        Expr::InSubquery { columns, sub, .. } => {
            out.push('(');
            if columns.len() > 1 {
                out.push('(');
            }
            for (i, c) in columns.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&quote_ident(&names[*c]));
            }
            if columns.len() > 1 {
                out.push(')');
            }
            out.push_str(" IN (");
            sub.render(out);
            out.push_str("))");
        }
        Expr::Distinct { l, r, not, .. } => {
            out.push('(');
            l.render(names, out);
            out.push_str(if *not {
                " IS NOT DISTINCT FROM "
            } else {
                " IS DISTINCT FROM "
            });
            r.render(names, out);
            out.push(')');
        }
    }
}

/// An `AND` (`and`) or `OR` list in parentheses. Nested ANDs in an AND (ORs in an OR) are one
/// list, as Postgres parses them back.
fn render_list(expr: &Expr, and: bool, names: &[String], out: &mut String) {
    fn flat<'e>(e: &'e Expr, and: bool, out: &mut Vec<&'e Expr>) {
        match e {
            Expr::And(items) if and => items.iter().for_each(|i| flat(i, and, out)),
            Expr::Or(items) if !and => items.iter().for_each(|i| flat(i, and, out)),
            other => out.push(other),
        }
    }
    let mut parts = Vec::new();
    flat(expr, and, &mut parts);
    out.push('(');
    for (i, e) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push_str(if and { " AND " } else { " OR " });
        }
        render(e, names, out);
    }
    out.push(')');
}

/// A compiled LIKE pattern as text with `\\` as the escape character.
fn like_pattern(pattern: &[LikeTok]) -> String {
    let mut p = String::new();
    for t in pattern {
        match t {
            LikeTok::Any => p.push('%'),
            LikeTok::One => p.push('_'),
            LikeTok::Char(c) => {
                if matches!(c, '%' | '_' | '\\') {
                    p.push('\\');
                }
                p.push(*c);
            }
        }
    }
    p
}

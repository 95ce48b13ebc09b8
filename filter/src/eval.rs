//! Evaluating a typed where clause on one row, in Postgres' three-valued logic.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::expr::JsonHasMode;
use crate::expr::{Expr, Operand};
use crate::like::like_matches;
use crate::num::Fail;
use crate::ops;
use crate::pgtext;
use crate::pgtext::V;
use crate::row::Row;
use crate::value;

/// The elements of an array in Postgres text form (`None` = NULL), for the routing index.
pub fn array_elements(text: &str) -> Option<Vec<Option<String>>> {
    pgtext::parse_array(text)
        .map(|(items, _)| items.into_iter().map(|i| i.map(Cow::into_owned)).collect())
}

/// AND (`decisive` false) or OR (`decisive` true) in three-valued logic with failures.
fn connective(items: &[Expr], decisive: bool, row: &dyn Row) -> Result<Option<bool>, Fail> {
    let (mut unknown, mut failed) = (false, false);
    for e in items {
        match eval(e, row) {
            Ok(Some(v)) if v == decisive => return Ok(Some(decisive)),
            Ok(Some(_)) => {}
            Ok(None) => unknown = true,
            Err(_) => failed = true,
        }
    }
    if failed {
        return Err(Fail);
    }
    Ok(if unknown { None } else { Some(!decisive) })
}

/// Three-valued evaluation; `Err` where Postgres would raise an error (division by zero,
/// overflow). `AND` is false if any part is false even when another part fails, and `OR` true
/// if any part is true: Postgres may evaluate the parts in any order and stop early, so a
/// failing part only decides the result when nothing else does.
pub fn eval(expr: &Expr, row: &dyn Row) -> Result<Option<bool>, Fail> {
    Ok(match expr {
        Expr::Const(v) => *v,
        Expr::BoolColumn(c) => row.value(*c).and_then(value::parse_bool),
        Expr::Compare {
            column,
            family,
            op,
            value,
        } => match row.value(*column) {
            None => None,
            Some(v) => value::compare(*family, v, value).map(|ord| op.holds(ord)),
        },
        Expr::IsNull { expr, negated } => {
            let is_null = match expr.as_ref() {
                Operand::Column(c) => row.value(*c).is_none(),
                Operand::Expr(e) => eval(e, row)?.is_none(),
            };
            Some(is_null != *negated)
        }
        Expr::BoolTest {
            expr,
            target,
            negated,
        } => {
            let v = eval(expr, row)?;
            Some((v == *target) != *negated)
        }
        // AND stops at FALSE, OR at TRUE; a failure counts only if nothing decided.
        Expr::And(items) => return connective(items, false, row),
        Expr::Or(items) => return connective(items, true, row),
        Expr::Not(e) => eval(e, row)?.map(|b| !b),
        Expr::Like {
            arg,
            pattern,
            negated,
            fold,
        } => match arg.eval(row)? {
            V::Text(t) => {
                let hit = if *fold {
                    like_matches(&t.to_ascii_lowercase(), pattern)
                } else {
                    like_matches(&t, pattern)
                };
                Some(hit != *negated)
            }
            _ => None,
        },
        Expr::Cmp { op, l, r, ty } => {
            let a = l.eval(row)?;
            let b = r.eval(row)?;
            if a.is_null() || b.is_null() {
                None
            } else {
                Some(op.holds(ops::cmp_values(&a, &b, *ty)))
            }
        }
        Expr::ValueIsNull { arg, negated } => Some(arg.eval(row)?.is_null() != *negated),
        Expr::AnyAll {
            op,
            all,
            x,
            arr,
            elem,
            cmp,
        } => {
            let xv = x.eval(row)?;
            let av = arr.eval(row)?;
            ops::any_all(*op, *all, &xv, &av, *elem, *cmp)?
        }
        Expr::JsonContains { l, r } => match (l.eval(row)?, r.eval(row)?) {
            (V::Json(a), V::Json(b)) => Some(a.contains(&b)),
            _ => None,
        },
        Expr::JsonHas { doc, keys, mode } => match (doc.eval(row)?, keys.eval(row)?) {
            (V::Json(d), V::Text(k)) => Some(d.has_key(&k)),
            (V::Json(d), V::Array(ks)) => {
                let mut present = ks.items.iter().filter_map(|k| match k {
                    V::Text(k) => Some(d.has_key(k)),
                    _ => None,
                });
                Some(if *mode == JsonHasMode::All {
                    present.all(|p| p)
                } else {
                    present.any(|p| p)
                })
            }
            _ => None,
        },
        Expr::ArrayOp { op, l, r, elem } => match (l.eval(row)?, r.eval(row)?) {
            (V::Array(a), V::Array(b)) => Some(op.holds(&a, &b, *elem)),
            _ => None,
        },
        Expr::InSubquery { columns, dep, .. } => {
            let values: Vec<Option<&[u8]>> = columns.iter().map(|c| row.value(*c)).collect();
            return row.membership(*dep, &values);
        }
        Expr::Distinct { l, r, ty, not } => {
            let a = l.eval(row)?;
            let b = r.eval(row)?;
            let distinct = match (a.is_null(), b.is_null()) {
                (true, true) => false,
                (true, false) | (false, true) => true,
                _ => ops::cmp_values(&a, &b, *ty) != Ordering::Equal,
            };
            Some(distinct != *not)
        }
    })
}

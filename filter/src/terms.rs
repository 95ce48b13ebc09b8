//! Routing terms: the condition on one column that a where clause implies and an index can
//! answer (equality to a few constants, a few ranges, array elements), derived from the typed
//! expression. The routing index itself is the server's; it files shapes under these terms.

use std::cmp::Ordering;

use crate::cmp::CmpOp;
use crate::expr::Expr;
use crate::like::LikeTok;
use crate::ops;
use crate::pgtext;
use crate::pgtext::V;
use crate::scalar::Scalar;
use crate::ty::Ty;
use crate::value::{self, Family, Literal, OrdKey};

/// A range of values (`None`: unbounded); the flag says whether the bound is included.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub lo: Option<(OrdKey, bool)>,
    pub hi: Option<(OrdKey, bool)>,
}

impl Span {
    pub fn contains(&self, v: &OrdKey) -> bool {
        let lo_ok = match &self.lo {
            None => true,
            Some((b, incl)) => match v.order(b) {
                Ordering::Greater => true,
                Ordering::Equal => *incl,
                Ordering::Less => false,
            },
        };
        lo_ok
            && match &self.hi {
                None => true,
                Some((b, incl)) => match v.order(b) {
                    Ordering::Less => true,
                    Ordering::Equal => *incl,
                    Ordering::Greater => false,
                },
            }
    }

    /// Both ranges at once (the tighter bound on each side).
    pub fn intersect(self, other: Span) -> Span {
        let tighter = |a: Option<(OrdKey, bool)>, b: Option<(OrdKey, bool)>, low: bool| match (a, b)
        {
            (None, x) | (x, None) => x,
            (Some(x), Some(y)) => {
                let o = x.0.order(&y.0);
                let pick_x = match o {
                    Ordering::Equal => !x.1,
                    Ordering::Greater => low,
                    Ordering::Less => !low,
                };
                Some(if pick_x { x } else { y })
            }
        };
        Span {
            lo: tighter(self.lo, other.lo, true),
            hi: tighter(self.hi, other.hi, false),
        }
    }

    pub fn bounded(&self) -> bool {
        self.lo.is_some() && self.hi.is_some()
    }
}

/// How a shape is filed for one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Filing {
    /// The column equals one of these keys ([`crate::index_key`]).
    Keys(Vec<Vec<u8>>),
    /// The column is within one of these ranges.
    Spans(Vec<Span>),
    /// The (array) column has an element equal to one of these keys.
    Elems(Vec<Vec<u8>>),
}

/// Where a shape is filed: a column, the family its values compare in, and the condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Filed {
    pub column: usize,
    pub family: Family,
    pub filing: Filing,
}

/// Where a shape is filed (from its clause's `route_term`); `None`: scanned.
pub type Term = Option<Filed>;

/// The family a value of `elem` is keyed in when compared in `cmp` without conversions that
/// could make different keys equal.
fn key_family(elem: Ty, cmp: Ty) -> Option<Family> {
    Some(match (elem, cmp) {
        (e, Ty::Int8) if e.is_int() => Family::Integer,
        (Ty::Numeric, Ty::Numeric) => Family::Numeric,
        (Ty::Text | Ty::Varchar, Ty::Text) => Family::Text { bpchar: false },
        (Ty::Uuid, Ty::Uuid) => Family::Uuid,
        (Ty::Bool, Ty::Bool) => Family::Bool,
        _ => return None,
    })
}

/// The element family of an array type for `@>`, `<@`, `&&` (same element types on both sides).
fn elem_family(elem: Ty) -> Option<Family> {
    match elem {
        e if e.is_int() => Some(Family::Integer),
        Ty::Text | Ty::Varchar => key_family(elem, Ty::Text),
        e => key_family(e, e),
    }
}

/// Index keys of a constant array's non-NULL elements.
fn elem_keys(arr: &Scalar, elem: Ty, family: Family) -> Option<Vec<Vec<u8>>> {
    let Scalar::Const { v: V::Array(a), .. } = arr else {
        return None;
    };
    let mut keys = Vec::with_capacity(a.items.len());
    for item in a.items.iter().filter(|i| !i.is_null()) {
        keys.push(value::index_key(
            family,
            pgtext::output(item, elem).as_bytes(),
        )?);
    }
    keys.sort_unstable();
    keys.dedup();
    Some(keys)
}

/// An integer column widened for a comparison is, for equality, the column itself.
fn strip_int_widening(s: &Scalar) -> &Scalar {
    match s {
        Scalar::Conv { arg, to } if to.is_int() && arg.ty().is_int() => arg,
        other => other,
    }
}

/// The smallest byte string above every string starting with `p` (None: there is none).
fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The routing term a typed where clause implies (`None`: the shape is scanned).
pub(crate) fn route(e: &Expr) -> Option<Filed> {
    match e {
        Expr::Compare {
            column,
            family,
            op,
            value,
        } => compare_term(*column, *family, *op, value),
        Expr::Like {
            arg,
            pattern,
            negated: false,
            fold: false,
        } => like_term(arg, pattern),
        Expr::AnyAll {
            op: CmpOp::Eq,
            all: false,
            x,
            arr,
            elem,
            cmp,
        } => any_term(x, arr, *elem, *cmp),
        Expr::ArrayOp { op, l, r, elem } => array_term(*op, l, r, *elem),
        Expr::And(items) => and_term(items),
        Expr::Or(items) => or_term(items),
        _ => None,
    }
}

fn filed(column: usize, family: Family, filing: Filing) -> Option<Filed> {
    Some(Filed {
        column,
        family,
        filing,
    })
}

/// `column op constant`: a key for `=`, a half-open range for an ordering.
fn compare_term(column: usize, family: Family, op: CmpOp, value: &Literal) -> Option<Filed> {
    if op == CmpOp::Eq {
        return filed(column, family, Filing::Keys(vec![value.index_key(family)?]));
    }
    if family == Family::Bool {
        return None;
    }
    let key = value.ord_key(family)?;
    let span = match op {
        CmpOp::Gt => Span {
            lo: Some((key, false)),
            hi: None,
        },
        CmpOp::Ge => Span {
            lo: Some((key, true)),
            hi: None,
        },
        CmpOp::Lt => Span {
            lo: None,
            hi: Some((key, false)),
        },
        CmpOp::Le => Span {
            lo: None,
            hi: Some((key, true)),
        },
        _ => return None,
    };
    filed(column, family, Filing::Spans(vec![span]))
}

/// `text_column LIKE 'prefix%…'` (case-sensitive): the literal prefix as a range, or as a key
/// when the pattern has no wildcard.
fn like_term(arg: &Scalar, pattern: &[LikeTok]) -> Option<Filed> {
    let Scalar::Col {
        idx,
        ty: Ty::Text | Ty::Varchar,
    } = arg
    else {
        return None;
    };
    let family = Family::Text { bpchar: false };
    let mut prefix = String::new();
    for t in pattern {
        match t {
            LikeTok::Char(c) => prefix.push(*c),
            _ => break,
        }
    }
    let exact = pattern.iter().all(|t| matches!(t, LikeTok::Char(_)));
    if exact {
        return filed(*idx, family, Filing::Keys(vec![prefix.into_bytes()]));
    }
    if prefix.is_empty() {
        return None;
    }
    let hi = prefix_end(prefix.as_bytes()).map(|b| (OrdKey::Bytes(b), false));
    let lo = Some((OrdKey::Bytes(prefix.into_bytes()), true));
    filed(*idx, family, Filing::Spans(vec![Span { lo, hi }]))
}

/// `column = ANY(constant array)` (keys) and `constant = ANY(array_column)` (elements), when
/// both sides key in the same family.
fn any_term(x: &Scalar, arr: &Scalar, elem: Ty, cmp: Ty) -> Option<Filed> {
    match (strip_int_widening(x), arr) {
        (Scalar::Col { idx, ty }, Scalar::Const { .. }) => {
            let family = key_family(*ty, cmp).filter(|_| key_family(elem, cmp).is_some())?;
            filed(*idx, family, Filing::Keys(elem_keys(arr, elem, family)?))
        }
        (Scalar::Const { v, ty }, Scalar::Col { idx, .. }) if !v.is_null() => {
            let family = key_family(elem, cmp).filter(|_| key_family(*ty, cmp).is_some())?;
            let key = value::index_key(family, pgtext::output(v, *ty).as_bytes())?;
            filed(*idx, family, Filing::Elems(vec![key]))
        }
        _ => None,
    }
}

/// `array_column @> constant`, `constant <@ array_column` (one element is enough to route
/// by) and `&&` either way (any of the elements).
fn array_term(op: ops::ArrayOp, l: &Scalar, r: &Scalar, elem: Ty) -> Option<Filed> {
    use ops::ArrayOp::{ContainedBy, Contains, Overlaps};
    let family = elem_family(elem)?;
    let (col, konst, any) = match (op, l, r) {
        (Contains, Scalar::Col { idx, .. }, k @ Scalar::Const { .. })
        | (ContainedBy, k @ Scalar::Const { .. }, Scalar::Col { idx, .. }) => (*idx, k, false),
        (Overlaps, Scalar::Col { idx, .. }, k @ Scalar::Const { .. })
        | (Overlaps, k @ Scalar::Const { .. }, Scalar::Col { idx, .. }) => (*idx, k, true),
        _ => return None,
    };
    let keys = elem_keys(konst, elem, family)?;
    if any {
        filed(col, family, Filing::Elems(keys))
    } else {
        // Containing every element means containing the first one.
        let first = keys.into_iter().next()?;
        filed(col, family, Filing::Elems(vec![first]))
    }
}

/// A conjunction: ranges on one column intersect; of everything else the most selective term.
fn and_term(items: &[Expr]) -> Option<Filed> {
    let mut best: Option<Filed> = None;
    let mut spans: Vec<(usize, Family, Span)> = Vec::new();
    for f in items.iter().filter_map(route) {
        match f.filing {
            Filing::Spans(mut s) if s.len() == 1 => {
                let span = s.pop()?;
                match spans
                    .iter_mut()
                    .find(|(c, fam, _)| *c == f.column && *fam == f.family)
                {
                    Some(slot) => {
                        let prev = std::mem::replace(&mut slot.2, Span { lo: None, hi: None });
                        slot.2 = prev.intersect(span);
                    }
                    None => spans.push((f.column, f.family, span)),
                }
            }
            _ => best = better(best, Some(f)),
        }
    }
    for (column, family, span) in spans {
        best = better(best, filed(column, family, Filing::Spans(vec![span])));
    }
    best
}

/// A disjunction routes only when every branch routes on the same column, family and kind of
/// filing: their union.
fn or_term(items: &[Expr]) -> Option<Filed> {
    let mut it = items.iter();
    let first = route(it.next()?)?;
    let (column, family) = (first.column, first.family);
    let mut filing = first.filing;
    for e in it {
        let f = route(e)?;
        if f.column != column || f.family != family {
            return None;
        }
        filing = match (filing, f.filing) {
            (Filing::Keys(a), Filing::Keys(b)) => Filing::Keys(union(a, b)),
            (Filing::Elems(a), Filing::Elems(b)) => Filing::Elems(union(a, b)),
            (Filing::Spans(mut a), Filing::Spans(b)) => {
                a.extend(b);
                Filing::Spans(a)
            }
            _ => return None,
        };
    }
    filed(column, family, filing)
}

fn union(mut a: Vec<Vec<u8>>, b: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    a.extend(b);
    a.sort_unstable();
    a.dedup();
    a
}

/// The more selective of two filings: fewest keys, then element keys, then a bounded range,
/// then any range.
fn better(a: Option<Filed>, b: Option<Filed>) -> Option<Filed> {
    fn rank(f: &Filed) -> (u8, usize) {
        match &f.filing {
            Filing::Keys(k) => (0, k.len()),
            Filing::Elems(k) => (1, k.len()),
            Filing::Spans(s) if s.iter().all(Span::bounded) => (2, s.len()),
            Filing::Spans(s) => (3, s.len()),
        }
    }
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(if rank(&b) < rank(&a) { b } else { a }),
    }
}

//! Typing of arrays and jsonb in value expressions: `ARRAY[…]` constructors, `||` with an
//! array, `op ANY/ALL (array)`, the array operators `@> <@ &&`, and jsonb's `-> ->> #> #>>`,
//! `? ?| ?&`, with the types and implicit conversions Postgres would give them.

use pg_query::Node;

use crate::cmp::CmpOp;
use crate::error::{Loc, WhereError, WhereErrorKind};
use crate::expr::{Expr, JsonHasMode};
use crate::ops::{ArrayOp, CatKind};
use crate::pgtext::{self, V};
use crate::scalar::Scalar;
use crate::ty::{wider, Ty};
use crate::typer::Typer;
use crate::typing::{cmp_type, common_type, is_ordering, no_operator, textual, Val};

impl Typer<'_> {
    /// `ARRAY[…]`: the elements' common type (text if all are untyped).
    pub(crate) fn array_cons(&self, at: Loc, elements: &[Node]) -> Result<Scalar, WhereError> {
        let vals = elements
            .iter()
            .map(|e| self.value(e))
            .collect::<Result<Vec<_>, _>>()?;
        if vals.is_empty() {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                "cannot determine type of empty array",
            ));
        }
        let known: Vec<Ty> = vals.iter().filter_map(Val::known_ty).collect();
        let elem = if known.is_empty() {
            Ty::Text
        } else {
            common_type(&known).ok_or_else(|| {
                WhereError::new(
                    WhereErrorKind::Unsupported,
                    at,
                    "ARRAY elements of these types cannot be matched",
                )
            })?
        };
        if elem.elem().is_some() {
            return Err(WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                "multidimensional ARRAY[] is not supported",
            ));
        }
        let items = vals
            .into_iter()
            .map(|v| self.settle(v, elem).map(|s| s.conv(elem)))
            .collect::<Result<Vec<_>, _>>()?;
        let ty = elem.array_if(true);
        // All constant: one array constant (rendered as such, and indexable).
        if items.iter().all(|i| matches!(i, Scalar::Const { .. })) {
            let values = items
                .into_iter()
                .map(|i| match i {
                    Scalar::Const { v, .. } => v,
                    _ => V::Null,
                })
                .collect::<Vec<_>>();
            let dims = vec![values.len()];
            return Ok(Scalar::Const {
                v: V::Array(Box::new(pgtext::Arr {
                    items: values,
                    dims,
                })),
                ty,
            });
        }
        Ok(Scalar::ArrayCons { items, ty })
    }

    /// `a || b` with an array on either side: append, prepend or concatenate (an untyped
    /// operand is read as the array's type, as Postgres reads it).
    pub(crate) fn array_concat(&self, at: Loc, a: Val, b: Val) -> Result<Scalar, WhereError> {
        let (ta, tb) = (a.known_ty(), b.known_ty());
        let arr = ta
            .filter(|t| t.elem().is_some())
            .or(tb.filter(|t| t.elem().is_some()))
            .ok_or_else(|| WhereError::new(WhereErrorKind::Type, at, "|| needs an array"))?;
        let elem = arr.elem().unwrap_or(Ty::Text);
        let a = self.settle(a, arr)?;
        let b = self.settle(b, arr)?;
        let fits = |s: &Scalar| {
            let t = s.ty();
            t == elem || (t.is_int() && elem.is_int() && wider(t, elem) == elem)
        };
        let (kind, l, r) = match (a.ty().elem(), b.ty().elem()) {
            (Some(_), Some(_)) if a.ty() == b.ty() => (CatKind::Cat, a, b),
            (Some(_), None) if fits(&b) => (CatKind::Append, a, b.conv(elem)),
            (None, Some(_)) if fits(&a) => (CatKind::Prepend, a.conv(elem), b),
            _ => {
                return Err(WhereError::new(
                    WhereErrorKind::Unsupported,
                    at,
                    format!(
                        "|| between {} and {} is not supported",
                        a.ty().name(),
                        b.ty().name()
                    ),
                ))
            }
        };
        Ok(Scalar::ArrayCat {
            kind,
            l: Box::new(l),
            r: Box::new(r),
            ty: arr,
        })
    }

    /// `x op ANY|ALL (array)`.
    pub(crate) fn any_all(
        &self,
        at: Loc,
        op: CmpOp,
        l: &Node,
        r: &Node,
        all: bool,
    ) -> Result<Expr, WhereError> {
        let x = self.value(l)?;
        let arr = self.value(r)?;
        let (x, arr) = match (x.known_ty(), arr.known_ty()) {
            (Some(t), None) => {
                if t.elem().is_some() {
                    return Err(WhereError::new(
                        WhereErrorKind::Unsupported,
                        at,
                        "arrays of arrays are not supported",
                    ));
                }
                (self.settle(x, t)?, self.settle(arr, t.array_if(true))?)
            }
            (None, Some(t)) => (
                self.settle(x, t.elem().unwrap_or(Ty::Text))?,
                self.settle(arr, t)?,
            ),
            _ => (
                self.settle(x, Ty::Text)?,
                self.settle(arr, Ty::Text.array_if(true))?,
            ),
        };
        let elem = arr.ty().elem().ok_or_else(|| {
            WhereError::new(
                WhereErrorKind::Type,
                at,
                "op ANY/ALL (array) requires an array on the right side",
            )
        })?;
        let cmp = cmp_type(x.ty(), elem).ok_or_else(|| no_operator(at, x.ty(), op.sql(), elem))?;
        if textual(cmp) {
            self.check_collation(at, &[&x, &arr], is_ordering(op))?;
        }
        Ok(Expr::AnyAll {
            op,
            all,
            x: Box::new(x.conv(cmp)),
            arr: Box::new(arr),
            elem,
            cmp,
        })
    }

    /// `json -> key` and friends.
    pub(crate) fn json_get(
        &self,
        at: Loc,
        op: &str,
        l: &Node,
        r: &Node,
    ) -> Result<Scalar, WhereError> {
        let doc = self.settle(self.value(l)?, Ty::Jsonb)?;
        if doc.ty() != Ty::Jsonb {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                format!(
                    "operator does not exist: {} {op} (only jsonb is supported)",
                    doc.ty().name()
                ),
            ));
        }
        let path = op.starts_with('#');
        let key = self.value(r)?;
        let key = if path {
            self.settle(key, Ty::Text.array_if(true))?
        } else {
            self.settle(key, Ty::Text)?
        };
        let ok = if path {
            key.ty().elem().is_some_and(Ty::is_text)
        } else {
            key.ty().is_text() || matches!(key.ty(), Ty::Int2 | Ty::Int4)
        };
        if !ok {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                format!("operator does not exist: jsonb {op} {}", key.ty().name()),
            ));
        }
        let key = if key.ty().is_int() {
            key.conv(Ty::Int4)
        } else if path {
            key
        } else {
            key.conv(Ty::Text)
        };
        Ok(Scalar::JsonGet {
            arg: Box::new(doc),
            key: Box::new(key),
            text: op.ends_with(">>"),
        })
    }

    /// `doc ? key`, `doc ?| keys`, `doc ?& keys`.
    pub(crate) fn json_has(
        &self,
        at: Loc,
        mode: JsonHasMode,
        l: &Node,
        r: &Node,
    ) -> Result<Expr, WhereError> {
        let doc = self.settle(self.value(l)?, Ty::Jsonb)?;
        let keys = if mode == JsonHasMode::One {
            self.settle(self.value(r)?, Ty::Text)?
        } else {
            self.settle(self.value(r)?, Ty::Text.array_if(true))?
        };
        let ok = doc.ty() == Ty::Jsonb
            && if mode == JsonHasMode::One {
                keys.ty().is_text()
            } else {
                keys.ty().elem().is_some_and(Ty::is_text)
            };
        if !ok {
            return Err(no_operator(at, doc.ty(), mode.sql(), keys.ty()));
        }
        let keys = if mode == JsonHasMode::One {
            keys.conv(Ty::Text)
        } else {
            keys
        };
        Ok(Expr::JsonHas {
            doc: Box::new(doc),
            keys: Box::new(keys),
            mode,
        })
    }

    /// `@>`, `<@`, `&&` between arrays of the same type; `@>` / `<@` between jsonb values.
    pub(crate) fn array_op(
        &self,
        at: Loc,
        op: ArrayOp,
        l: &Node,
        r: &Node,
    ) -> Result<Expr, WhereError> {
        let (a, b) = self.pair(self.value(l)?, self.value(r)?)?;
        if a.ty() == Ty::Jsonb && b.ty() == Ty::Jsonb && op != ArrayOp::Overlaps {
            let (l, r) = if op == ArrayOp::Contains {
                (a, b)
            } else {
                (b, a)
            };
            return Ok(Expr::JsonContains {
                l: Box::new(l),
                r: Box::new(r),
            });
        }
        let elem = match (a.ty().elem(), b.ty().elem()) {
            (Some(e), Some(f)) if e == f => e,
            _ => return Err(no_operator(at, a.ty(), op.sql(), b.ty())),
        };
        if textual(elem) {
            self.check_collation(at, &[&a, &b], false)?;
        }
        Ok(Expr::ArrayOp {
            op,
            l: Box::new(a),
            r: Box::new(b),
            elem,
        })
    }
}

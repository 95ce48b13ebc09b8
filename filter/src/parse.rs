//! From where-clause text to a typed [`Expr`]: Postgres' grammar via `pg_query`, then a walk over
//! the parse tree that accepts only the supported node kinds and types every column and constant.
//!
//! Error positions follow the reference server: syntax errors report the parser's 0-based byte
//! position in the wrapped text `SELECT 1 WHERE <clause>` (so `1 x 1` gives "At location 17");
//! validation errors report the position within the clause itself.

use pg_query::protobuf::{a_const, node::Node as N, AExprKind, BoolExprType, BoolTestType};
use pg_query::protobuf::{NullTestType, TypeName};
use pg_query::Node;

use crate::cmp::CmpOp;
use crate::error::{Loc, WhereError, WhereErrorKind};
use crate::expr::WhereClause;
use crate::expr::{Expr, JsonHasMode, Operand};
use crate::ops::ArrayOp;
use crate::scalar::Scalar;
use crate::source::TableSource;
use crate::table::TableInfo;
use crate::ty::Ty;
use crate::typer::{loc, Typer, PREFIX};
use crate::value::{Family, Literal, RawConst};

/// Parse and type-check `clause` against `table`; `$n` takes `params[n - 1]`, typed by its
/// context like a string literal.
pub fn parse_where(
    clause: &str,
    table: &TableInfo,
    params: &[String],
) -> Result<WhereClause, WhereError> {
    let tree = parse_tree(clause)?;
    Typer::new(table, params).boolean_root(tree.where_node()?)
}

/// [`parse_where`] for a clause that may hold `IN (SELECT …)` subqueries, over the tables in
/// `tables` (those [`crate::subquery_tables`] names).
pub fn parse_where_in(
    clause: &str,
    table: &TableInfo,
    params: &[String],
    tables: &dyn TableSource,
) -> Result<WhereClause, WhereError> {
    let tree = parse_tree(clause)?;
    let mut cx = Typer::new(table, params);
    cx.tables = Some(tables);
    let clause = cx.boolean_root(tree.where_node()?)?;
    if clause.has_subqueries() {
        crate::dnf::Dnf::of(clause.expr())?;
    }
    Ok(clause)
}

/// A clause parsed with Postgres' grammar (wrapped as `SELECT 1 WHERE …`), not yet typed.
pub(crate) struct Tree {
    pub(crate) result: pg_query::ParseResult,
}

/// Parse `clause` with Postgres' grammar: one statement, or the syntax error where it fails.
pub(crate) fn parse_tree(clause: &str) -> Result<Tree, WhereError> {
    let wrapped = format!("{PREFIX}{clause}");
    let parsed = match pg_query::parse(&wrapped, pg_query::ParserOptions::DEFAULT) {
        Ok(p) => p,
        Err(pg_query::Error::Parse(msg)) => {
            let at = Loc(syntax_error_location(&wrapped));
            return Err(WhereError::new(WhereErrorKind::Syntax, at, msg));
        }
        Err(e) => {
            return Err(WhereError::new(
                WhereErrorKind::Syntax,
                Loc::NONE,
                e.to_string(),
            ))
        }
    };
    if parsed.protobuf.stmts.len() != 1 {
        return Err(WhereError::new(
            WhereErrorKind::Syntax,
            Loc::NONE,
            "unescaped \";\" causing statement split",
        ));
    }
    Ok(Tree { result: parsed })
}

impl Tree {
    /// The clause's expression: the statement must be nothing but `SELECT 1 WHERE <clause>`.
    pub(crate) fn where_node(&self) -> Result<&Node, WhereError> {
        let stmts = &self.result.protobuf.stmts;
        let Some(N::SelectStmt(select)) = stmts[0].stmt.as_ref().and_then(|s| s.node.as_ref())
        else {
            return Err(WhereError::new(
                WhereErrorKind::Syntax,
                Loc::NONE,
                "invalid where clause",
            ));
        };
        if !select.from_clause.is_empty()
            || !select.group_clause.is_empty()
            || select.having_clause.is_some()
            || !select.sort_clause.is_empty()
            || select.limit_count.is_some()
            || select.limit_offset.is_some()
            || !select.window_clause.is_empty()
            || select.target_list.len() != 1
        {
            return Err(WhereError::new(
                WhereErrorKind::Syntax,
                Loc::NONE,
                "the where clause must be a single boolean expression",
            ));
        }
        select.where_clause.as_deref().ok_or_else(|| {
            WhereError::new(
                WhereErrorKind::Syntax,
                Loc::NONE,
                "the where clause is empty",
            )
        })
    }
}

/// Position of the token where the grammar failed: the first token whose prefix no longer parses
/// as the start of a valid statement. Only runs on the error path.
fn syntax_error_location(wrapped: &str) -> Option<usize> {
    let tokens = pg_query::scan(wrapped).ok()?.tokens;
    for t in tokens.iter().take(512) {
        let end = t.end as usize;
        match pg_query::parse(&wrapped[..end], pg_query::ParserOptions::DEFAULT) {
            Ok(_) => continue,
            Err(pg_query::Error::Parse(m)) if m.contains("at end of input") => continue,
            Err(_) => return Some(t.start as usize),
        }
    }
    Some(wrapped.len())
}

impl Typer<'_> {
    /// Type the root of a clause.
    pub(crate) fn boolean_root(&self, node: &Node) -> Result<WhereClause, WhereError> {
        self.boolean(node).map(WhereClause::new)
    }

    fn boolean(&self, node: &Node) -> Result<Expr, WhereError> {
        match node.node.as_ref() {
            Some(N::BoolExpr(b)) => {
                let args = b
                    .args
                    .iter()
                    .map(|a| self.boolean(a))
                    .collect::<Result<Vec<_>, _>>()?;
                match BoolExprType::try_from(b.boolop) {
                    Ok(BoolExprType::AndExpr) => Ok(Expr::And(args)),
                    Ok(BoolExprType::OrExpr) => Ok(Expr::Or(args)),
                    Ok(BoolExprType::NotExpr) if args.len() == 1 => Ok(Expr::Not(Box::new(
                        args.into_iter().next().unwrap_or(Expr::Const(None)),
                    ))),
                    _ => Err(WhereError::new(
                        WhereErrorKind::Unsupported,
                        loc(b.location),
                        "unsupported boolean expression",
                    )),
                }
            }
            Some(N::AExpr(a)) => self.comparison(a),
            Some(N::NullTest(t)) => {
                let arg = t.arg.as_deref().ok_or_else(|| {
                    WhereError::new(WhereErrorKind::Syntax, Loc::NONE, "IS NULL without operand")
                })?;
                let negated = NullTestType::try_from(t.nulltesttype) == Ok(NullTestType::IsNotNull);
                let operand = match self.column(arg)? {
                    Some((c, _)) => Operand::Column(c),
                    None => match self.boolean(arg) {
                        Ok(e) => Operand::Expr(e),
                        // Not a boolean: the NULL test of a value expression.
                        Err(_) => return self.value_is_null(arg, negated),
                    },
                };
                Ok(Expr::IsNull {
                    expr: Box::new(operand),
                    negated,
                })
            }
            Some(N::BooleanTest(t)) => {
                let arg = t.arg.as_deref().ok_or_else(|| {
                    WhereError::new(WhereErrorKind::Syntax, Loc::NONE, "IS TRUE without operand")
                })?;
                let expr = Box::new(self.boolean(arg)?);
                let (target, negated) = match BoolTestType::try_from(t.booltesttype) {
                    Ok(BoolTestType::IsTrue) => (Some(true), false),
                    Ok(BoolTestType::IsNotTrue) => (Some(true), true),
                    Ok(BoolTestType::IsFalse) => (Some(false), false),
                    Ok(BoolTestType::IsNotFalse) => (Some(false), true),
                    Ok(BoolTestType::IsUnknown) => (None, false),
                    _ => (None, true),
                };
                Ok(Expr::BoolTest {
                    expr,
                    target,
                    negated,
                })
            }
            Some(N::ColumnRef(r)) => match self.column(node)? {
                Some((c, Some(Family::Bool))) => Ok(Expr::BoolColumn(c)),
                _ => Err(WhereError::new(
                    WhereErrorKind::Type,
                    loc(r.location),
                    "WHERE clause must return a boolean",
                )),
            },
            Some(N::AConst(_)) | Some(N::TypeCast(_)) => match self.constant(node)? {
                (raw, None | Some(Family::Bool)) if raw_is_null(&raw) => Ok(Expr::Const(None)),
                (RawConst::Bool(b), _) => Ok(Expr::Const(Some(b))),
                (RawConst::Str(s), Some(Family::Bool)) => {
                    match crate::value::parse_bool(s.as_bytes()) {
                        Some(b) => Ok(Expr::Const(Some(b))),
                        None => Err(WhereError::new(
                            WhereErrorKind::InvalidValue,
                            Loc::NONE,
                            format!("invalid input syntax for type boolean: {s:?}"),
                        )),
                    }
                }
                _ => Err(WhereError::new(
                    WhereErrorKind::Type,
                    Loc::NONE,
                    "WHERE clause must return a boolean",
                )),
            },
            Some(N::SubLink(s)) => self.sublink(s),
            Some(N::FuncCall(f)) => match self.claim(f) {
                Some(value) => match value? {
                    None => Ok(Expr::Const(None)),
                    Some(s) => match crate::value::parse_bool(s.as_bytes()) {
                        Some(b) => Ok(Expr::Const(Some(b))),
                        None => Err(WhereError::new(
                            WhereErrorKind::InvalidValue,
                            loc(f.location),
                            format!("invalid input syntax for type boolean: {s:?}"),
                        )),
                    },
                },
                None => Err(WhereError::new(
                    WhereErrorKind::Unsupported,
                    loc(f.location),
                    "function calls are not supported in where clauses yet",
                )),
            },
            Some(N::ParamRef(p)) => match self.param(p)? {
                RawConst::Str(s) => match crate::value::parse_bool(s.as_bytes()) {
                    Some(b) => Ok(Expr::Const(Some(b))),
                    None => Err(WhereError::new(
                        WhereErrorKind::InvalidValue,
                        Loc::NONE,
                        format!("invalid input syntax for type boolean: {s:?}"),
                    )),
                },
                _ => Err(WhereError::new(
                    WhereErrorKind::Type,
                    Loc::NONE,
                    "WHERE clause must return a boolean",
                )),
            },
            _ => Err(WhereError::new(
                WhereErrorKind::Unsupported,
                Loc::NONE,
                "unsupported expression in where clause",
            )),
        }
    }

    fn comparison(&self, a: &pg_query::protobuf::AExpr) -> Result<Expr, WhereError> {
        let at = loc(a.location);
        let kind = AExprKind::try_from(a.kind);
        match kind {
            Ok(AExprKind::AexprOp) => {}
            Ok(AExprKind::AexprIn) => return self.in_list(at, a),
            Ok(
                AExprKind::AexprBetween
                | AExprKind::AexprNotBetween
                | AExprKind::AexprBetweenSym
                | AExprKind::AexprNotBetweenSym,
            ) => return self.between(at, a, kind.unwrap_or(AExprKind::AexprBetween)),
            Ok(AExprKind::AexprDistinct | AExprKind::AexprNotDistinct) => {
                return self.distinct(at, a, kind == Ok(AExprKind::AexprDistinct))
            }
            Ok(AExprKind::AexprOpAny | AExprKind::AexprOpAll) => {
                let (Some(l), Some(r)) = (a.lexpr.as_deref(), a.rexpr.as_deref()) else {
                    return Err(WhereError::new(
                        WhereErrorKind::Type,
                        at,
                        "ANY/ALL needs two operands",
                    ));
                };
                let op = match a.name.last().and_then(|n| n.node.as_ref()) {
                    Some(N::String(s)) => cmp_op(&s.sval),
                    _ => None,
                }
                .ok_or_else(|| {
                    WhereError::new(
                        WhereErrorKind::Unsupported,
                        at,
                        "unsupported operator with ANY/ALL",
                    )
                })?;
                return self.any_all(at, op, l, r, kind == Ok(AExprKind::AexprOpAll));
            }
            Ok(AExprKind::AexprLike) => return self.like(at, a, false),
            Ok(AExprKind::AexprIlike) => return self.like(at, a, true),
            _ => {
                return Err(WhereError::new(
                    WhereErrorKind::Unsupported,
                    at,
                    "this operator is not supported in where clauses yet",
                ))
            }
        }
        let op_name = match a.name.last().and_then(|n| n.node.as_ref()) {
            Some(N::String(s)) => s.sval.as_str(),
            _ => {
                return Err(WhereError::new(
                    WhereErrorKind::Unsupported,
                    at,
                    "unsupported operator",
                ))
            }
        };
        let (l, r) = match (a.lexpr.as_deref(), a.rexpr.as_deref()) {
            (Some(l), Some(r)) => (l, r),
            _ => {
                return Err(WhereError::new(
                    WhereErrorKind::Unsupported,
                    at,
                    format!("unsupported unary operator {op_name}"),
                ))
            }
        };
        let array_op = match op_name {
            "@>" => Some(ArrayOp::Contains),
            "<@" => Some(ArrayOp::ContainedBy),
            "&&" => Some(ArrayOp::Overlaps),
            _ => None,
        };
        if let Some(op) = array_op {
            return self.array_op(at, op, l, r);
        }
        let has = match op_name {
            "?" => Some(JsonHasMode::One),
            "?|" => Some(JsonHasMode::Any),
            "?&" => Some(JsonHasMode::All),
            _ => None,
        };
        if let Some(mode) = has {
            return self.json_has(at, mode, l, r);
        }
        let op = cmp_op(op_name).ok_or_else(|| {
            WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                format!("unsupported operator {op_name}"),
            )
        })?;
        self.compare(at, op, l, r)
    }

    /// `x [NOT] IN (c1, c2, …)`: exactly `x = c1 OR x = c2 …` (`x <> c1 AND …` for NOT IN),
    /// which is how Postgres defines it, NULLs included.
    fn in_list(&self, at: Loc, a: &pg_query::protobuf::AExpr) -> Result<Expr, WhereError> {
        let negated = matches!(
            a.name.last().and_then(|n| n.node.as_ref()),
            Some(N::String(s)) if s.sval == "<>"
        );
        let (Some(l), Some(N::List(items))) = (
            a.lexpr.as_deref(),
            a.rexpr.as_deref().and_then(|r| r.node.as_ref()),
        ) else {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                "IN needs a list of values",
            ));
        };
        let plain =
            matches!(self.column(l)?, Some((_, Some(_)))) && items.items.iter().all(is_const_node);
        if !plain {
            return self.in_general(at, l, &items.items, negated);
        }
        let op = if negated { CmpOp::Ne } else { CmpOp::Eq };
        // With two or more items Postgres gives the column and the items one common type. For a
        // float4 column that is float8 if any item is float8, else float4: every uncast item is
        // read as that type. (One item is a plain `=`; other columns compare the same either way.)
        let float4_column = matches!(self.column(l)?, Some((_, Some(Family::Float { f4: true }))));
        let common = (items.items.len() > 1 && float4_column).then(|| {
            let any_f8 = items.items.iter().any(|item| {
                matches!(
                    self.constant(item),
                    Ok((_, Some(Family::Float { f4: false })))
                )
            });
            Family::Float { f4: !any_f8 }
        });
        let terms = items
            .items
            .iter()
            .map(|item| self.compare_typed(at, op, l, item, common))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(if negated {
            Expr::And(terms)
        } else {
            Expr::Or(terms)
        })
    }

    /// `x [NOT] BETWEEN [SYMMETRIC] a AND b`, rewritten as Postgres' parser rewrites it:
    /// `x >= a AND x <= b`; NOT: `x < a OR x > b`; SYMMETRIC: either order of the bounds.
    fn between(
        &self,
        at: Loc,
        a: &pg_query::protobuf::AExpr,
        kind: AExprKind,
    ) -> Result<Expr, WhereError> {
        let (Some(x), Some(N::List(bounds))) = (
            a.lexpr.as_deref(),
            a.rexpr.as_deref().and_then(|r| r.node.as_ref()),
        ) else {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                "BETWEEN needs two bounds",
            ));
        };
        let [lo, hi] = bounds.items.as_slice() else {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                "BETWEEN needs two bounds",
            ));
        };
        let inside = |lo: &Node, hi: &Node| -> Result<Expr, WhereError> {
            Ok(Expr::And(vec![
                self.compare(at, CmpOp::Ge, x, lo)?,
                self.compare(at, CmpOp::Le, x, hi)?,
            ]))
        };
        let outside = |lo: &Node, hi: &Node| -> Result<Expr, WhereError> {
            Ok(Expr::Or(vec![
                self.compare(at, CmpOp::Lt, x, lo)?,
                self.compare(at, CmpOp::Gt, x, hi)?,
            ]))
        };
        Ok(match kind {
            AExprKind::AexprNotBetween => outside(lo, hi)?,
            AExprKind::AexprBetweenSym => Expr::Or(vec![inside(lo, hi)?, inside(hi, lo)?]),
            AExprKind::AexprNotBetweenSym => Expr::And(vec![outside(lo, hi)?, outside(hi, lo)?]),
            _ => inside(lo, hi)?,
        })
    }

    /// `x IS [NOT] DISTINCT FROM c`: equality where NULL is a value. With a non-NULL constant:
    /// `x IS NULL OR x <> c` (NOT: `x IS NOT NULL AND x = c`); with NULL: `x IS [NOT] NULL`.
    fn distinct(
        &self,
        at: Loc,
        a: &pg_query::protobuf::AExpr,
        distinct: bool,
    ) -> Result<Expr, WhereError> {
        let (Some(l), Some(r)) = (a.lexpr.as_deref(), a.rexpr.as_deref()) else {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                "IS DISTINCT FROM needs two operands",
            ));
        };
        let (col_node, konst) = match (self.column(l)?, self.column(r)?) {
            (Some((_, Some(_))), None) if is_const_node(r) => (l, r),
            (None, Some((_, Some(_)))) if is_const_node(l) => (r, l),
            _ => return self.distinct_general(at, l, r, distinct),
        };
        let Some((col, _)) = self.column(col_node)? else {
            return Err(WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                "IS DISTINCT FROM needs a column",
            ));
        };
        let is_null = |negated| Expr::IsNull {
            expr: Box::new(Operand::Column(col)),
            negated,
        };
        let (raw, _) = self.constant(konst)?;
        if raw_is_null(&raw) {
            return Ok(is_null(distinct));
        }
        Ok(if distinct {
            Expr::Or(vec![
                is_null(false),
                self.compare(at, CmpOp::Ne, col_node, konst)?,
            ])
        } else {
            Expr::And(vec![
                is_null(true),
                self.compare(at, CmpOp::Eq, col_node, konst)?,
            ])
        })
    }

    /// `text [NOT] LIKE|ILIKE 'pattern' [ESCAPE 'c']` (the default escape is `\`); `fold`:
    /// ILIKE.
    fn like(&self, at: Loc, a: &pg_query::protobuf::AExpr, fold: bool) -> Result<Expr, WhereError> {
        let negated = matches!(
            a.name.last().and_then(|n| n.node.as_ref()),
            Some(N::String(s)) if s.sval == "!~~" || s.sval == "!~~*"
        );
        let (Some(l), Some(r)) = (a.lexpr.as_deref(), a.rexpr.as_deref()) else {
            return Err(WhereError::new(
                WhereErrorKind::Type,
                at,
                "LIKE needs two operands",
            ));
        };
        let arg = self.like_arg(at, l, fold)?;
        let text = |node: &Node| -> Result<Option<String>, WhereError> {
            match self.constant(node)? {
                (raw, _) if raw_is_null(&raw) => Ok(None),
                (RawConst::Str(s), _) if s.contains('\0') => Err(WhereError::new(
                    WhereErrorKind::InvalidValue,
                    at,
                    "invalid NUL character in constant",
                )),
                (RawConst::Str(s), None | Some(Family::Text { .. })) => Ok(Some(s)),
                _ => Err(WhereError::new(
                    WhereErrorKind::Type,
                    at,
                    "a LIKE pattern must be a string",
                )),
            }
        };
        // `x LIKE p ESCAPE e` arrives as `x ~~ like_escape(p, e)`.
        let (pattern, escape) = match r.node.as_ref() {
            Some(N::FuncCall(f))
                if f.args.len() == 2
                    && matches!(
                        f.funcname.last().and_then(|n| n.node.as_ref()),
                        Some(N::String(s)) if s.sval == "like_escape"
                    ) =>
            {
                (text(&f.args[0])?, text(&f.args[1])?)
            }
            _ => (text(r)?, Some("\\".to_string())),
        };
        let (Some(pattern), Some(escape)) = (pattern, escape) else {
            return Ok(Expr::Const(None));
        };
        let mut esc = escape.chars();
        let escape = match (esc.next(), esc.next()) {
            (None, _) => None,
            (Some(c), None) => Some(c),
            _ => {
                return Err(WhereError::new(
                    WhereErrorKind::InvalidValue,
                    at,
                    "invalid escape string: it must be one character",
                ))
            }
        };
        let mut pattern = crate::like::compile_like(&pattern, escape).map_err(|e| e.at(at))?;
        if fold {
            pattern = crate::typing::fold_pattern(pattern);
        }
        Ok(Expr::Like {
            arg: Box::new(arg),
            pattern,
            negated,
            fold,
        })
    }

    /// `l op r` with a column on one side and a constant on the other.
    fn compare(&self, at: Loc, op: CmpOp, l: &Node, r: &Node) -> Result<Expr, WhereError> {
        self.compare_typed(at, op, l, r, None)
    }

    /// [`Self::compare`]; with `common`, an uncast constant is read as that type (as after
    /// Postgres' common-type resolution of an IN list).
    fn compare_typed(
        &self,
        at: Loc,
        op: CmpOp,
        l: &Node,
        r: &Node,
        common: Option<Family>,
    ) -> Result<Expr, WhereError> {
        // `column op constant` has a fast path; everything else is a general comparison.
        let fast = match (self.column(l)?, self.column(r)?) {
            (Some(c @ (_, Some(_))), None) if is_const_node(r) => Some((c, r, op)),
            (None, Some(c @ (_, Some(_)))) if is_const_node(l) => Some((c, l, op.flipped())),
            _ => None,
        };
        let Some((column, konst, fast_op)) = fast else {
            return self.compare_general(at, op, l, r);
        };
        match self.compare_fast(at, fast_op, column, konst, common) {
            Ok(e) => Ok(e),
            // A constant the fast path does not type (e.g. a float against an integer
            // column) may still be a valid general comparison.
            Err(e) => self.compare_general(at, op, l, r).map_err(|_| e),
        }
    }

    fn compare_fast(
        &self,
        at: Loc,
        op: CmpOp,
        column: (usize, Option<Family>),
        konst: &Node,
        common: Option<Family>,
    ) -> Result<Expr, WhereError> {
        let (col, family) = column;
        let name = &self.table.columns[col].name;
        let family = family.ok_or_else(|| {
            WhereError::new(
                WhereErrorKind::Unsupported,
                at,
                format!(
                    "columns of type {} are not supported in where clauses yet (column {name:?})",
                    self.table.columns[col].type_name
                ),
            )
        })?;
        if matches!(family, Family::Text { .. }) {
            let ty = if matches!(family, Family::Text { bpchar: true }) {
                Ty::Bpchar
            } else {
                Ty::Text
            };
            self.check_collation(
                at,
                &[&Scalar::Col { idx: col, ty }],
                !matches!(op, CmpOp::Eq | CmpOp::Ne),
            )?;
        }
        let (raw, cast) = self.constant(konst)?;
        if raw_is_null(&raw) {
            return Ok(Expr::Const(None));
        }
        let cast = cast.or(common);
        let value = Literal::typed(&raw, family, cast).map_err(|e| e.at(at))?;
        Ok(Expr::Compare {
            column: col,
            family,
            op,
            value,
        })
    }

    /// If `node` is a column reference: its index and comparison family (None: unsupported type).
    /// A cast of a column to its own type counts as the column.
    pub(crate) fn column(
        &self,
        node: &Node,
    ) -> Result<Option<(usize, Option<Family>)>, WhereError> {
        if let Some(N::TypeCast(t)) = node.node.as_ref() {
            let Some(arg) = t.arg.as_deref() else {
                return Ok(None);
            };
            let Some(col) = self.column(arg)? else {
                return Ok(None);
            };
            let c = &self.table.columns[col.0];
            let own = Ty::of_type(self.table.eval_type_name(col.0), c.dims);
            let cast = crate::typing::cast_type(t.type_name.as_ref());
            return Ok(
                (own.is_some() && own == cast && self.table.enum_labels(col.0).is_empty())
                    .then_some(col),
            );
        }
        let Some(N::ColumnRef(r)) = node.node.as_ref() else {
            return Ok(None);
        };
        let mut parts = Vec::new();
        for f in &r.fields {
            match f.node.as_ref() {
                Some(N::String(s)) => parts.push(s.sval.clone()),
                _ => {
                    return Err(WhereError::new(
                        WhereErrorKind::UnknownColumn,
                        loc(r.location),
                        "invalid column reference",
                    ))
                }
            }
        }
        let name = match parts.as_slice() {
            [c] => c,
            [t, c] if *t == self.table.name => c,
            [s, t, c] if *s == self.table.schema && *t == self.table.name => c,
            _ => {
                return Err(WhereError::new(
                    WhereErrorKind::UnknownColumn,
                    loc(r.location),
                    format!("unknown reference {}", parts.join(".")),
                ))
            }
        };
        let Some(idx) = self.table.column_index(name) else {
            return Err(WhereError::new(
                WhereErrorKind::UnknownColumn,
                loc(r.location),
                format!("unknown reference {name}"),
            ));
        };
        let c = &self.table.columns[idx];
        let family = if c.dims > 0 {
            None
        } else {
            Family::of_type(self.table.eval_type_name(idx))
        };
        Ok(Some((idx, family)))
    }

    /// The value of `$n`.
    pub(crate) fn param(&self, p: &pg_query::protobuf::ParamRef) -> Result<RawConst, WhereError> {
        let n = usize::try_from(p.number).unwrap_or(0);
        match n.checked_sub(1).and_then(|i| self.params.get(i)) {
            Some(v) => Ok(RawConst::Str(v.clone())),
            None => Err(WhereError::new(
                WhereErrorKind::Parameter,
                loc(p.location),
                format!(
                    "parameter ${} has no value (params[{}])",
                    p.number, p.number
                ),
            )),
        }
    }

    /// A constant, possibly under one cast: the raw value and the cast's family.
    fn constant(&self, node: &Node) -> Result<(RawConst, Option<Family>), WhereError> {
        match node.node.as_ref() {
            Some(N::ParamRef(p)) => Ok((self.param(p)?, None)),
            Some(N::FuncCall(f)) if crate::typer::claim_call(f).is_some() => {
                match self.claim(f).unwrap_or(Ok(None))? {
                    Some(s) => Ok((RawConst::Str(s), None)),
                    None => Ok((RawConst::Str(NULL_MARK.to_string()), None)),
                }
            }
            Some(N::AConst(c)) => {
                let raw = match &c.val {
                    None => RawConst::Str(NULL_MARK.to_string()),
                    Some(a_const::Val::Ival(i)) => RawConst::Integer(i.ival.to_string()),
                    Some(a_const::Val::Fval(f)) => RawConst::Float(f.fval.clone()),
                    Some(a_const::Val::Boolval(b)) => RawConst::Bool(b.boolval),
                    Some(a_const::Val::Sval(s)) => RawConst::Str(s.sval.clone()),
                    Some(a_const::Val::Bsval(_)) => {
                        return Err(WhereError::new(
                            WhereErrorKind::Unsupported,
                            loc(c.location),
                            "bit strings are not supported",
                        ))
                    }
                };
                Ok((
                    if c.isnull {
                        RawConst::Str(NULL_MARK.to_string())
                    } else {
                        raw
                    },
                    None,
                ))
            }
            Some(N::TypeCast(t)) => {
                let arg = t.arg.as_deref().ok_or_else(|| {
                    WhereError::new(WhereErrorKind::Syntax, Loc::NONE, "cast without operand")
                })?;
                let (raw, inner) = self.constant(arg)?;
                if inner.is_some() {
                    return Err(WhereError::new(
                        WhereErrorKind::Unsupported,
                        loc(t.location),
                        "nested casts are not supported yet",
                    ));
                }
                let family = cast_family(t.type_name.as_ref()).ok_or_else(|| {
                    WhereError::new(
                        WhereErrorKind::Unsupported,
                        loc(t.location),
                        "this cast is not supported in where clauses yet",
                    )
                })?;
                Ok((raw, Some(family)))
            }
            Some(N::AExpr(a)) if a.lexpr.is_none() => {
                // Unary minus (or plus) on a numeric constant.
                let sign = match a.name.last().and_then(|n| n.node.as_ref()) {
                    Some(N::String(s)) if s.sval == "-" => Some(true),
                    Some(N::String(s)) if s.sval == "+" => Some(false),
                    _ => None,
                };
                match (sign, a.rexpr.as_deref().map(|r| self.constant(r))) {
                    (
                        Some(false),
                        Some(Ok((raw @ (RawConst::Integer(_) | RawConst::Float(_)), None))),
                    ) => Ok((raw, None)),
                    (Some(true), Some(Ok((RawConst::Integer(s), None)))) => {
                        Ok((RawConst::Integer(negate(&s)), None))
                    }
                    (Some(true), Some(Ok((RawConst::Float(s), None)))) => {
                        Ok((RawConst::Float(negate(&s)), None))
                    }
                    _ => Err(WhereError::new(
                        WhereErrorKind::Unsupported,
                        loc(a.location),
                        "unsupported expression",
                    )),
                }
            }
            Some(N::ColumnRef(r)) => Err(WhereError::new(
                WhereErrorKind::Unsupported,
                loc(r.location),
                "comparing two columns is not supported yet",
            )),
            _ => Err(WhereError::new(
                WhereErrorKind::Unsupported,
                Loc::NONE,
                "only constants can be compared with a column so far",
            )),
        }
    }
}

fn cmp_op(name: &str) -> Option<CmpOp> {
    Some(match name {
        "=" => CmpOp::Eq,
        "<>" | "!=" => CmpOp::Ne,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        ">" => CmpOp::Gt,
        ">=" => CmpOp::Ge,
        _ => return None,
    })
}

/// Is `node` a constant (a literal or parameter, possibly negated or cast)?
fn is_const_node(node: &Node) -> bool {
    match node.node.as_ref() {
        Some(N::AConst(_) | N::ParamRef(_)) => true,
        Some(N::FuncCall(f)) => crate::typer::claim_call(f).is_some(),
        Some(N::TypeCast(t)) => t.arg.as_deref().is_some_and(is_const_node),
        Some(N::AExpr(a)) => {
            a.lexpr.is_none()
                && matches!(a.name.last().and_then(|n| n.node.as_ref()), Some(N::String(s)) if s.sval == "-" || s.sval == "+")
                && a.rexpr.as_deref().is_some_and(is_const_node)
        }
        _ => false,
    }
}

/// Marks an SQL NULL constant (a string no literal can produce: it holds a NUL).
const NULL_MARK: &str = "\0NULL";

fn raw_is_null(raw: &RawConst) -> bool {
    matches!(raw, RawConst::Str(s) if s == NULL_MARK)
}

fn negate(s: &str) -> String {
    match s.strip_prefix('-') {
        Some(rest) => rest.to_string(),
        None => format!("-{s}"),
    }
}

fn cast_family(t: Option<&TypeName>) -> Option<Family> {
    let t = t?;
    if !t.typmods.is_empty() || !t.array_bounds.is_empty() {
        return None;
    }
    let name = match t.names.last()?.node.as_ref()? {
        N::String(s) => s.sval.as_str(),
        _ => return None,
    };
    Family::of_type(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;
    use crate::table::ColumnInfo;

    fn table() -> TableInfo {
        let c = |name: &str, ty: &str, pk: Option<usize>| ColumnInfo {
            name: name.into(),
            type_oid: 0,
            type_name: ty.into(),
            dims: 0,
            type_mod: -1,
            not_null: false,
            pk_index: pk,
        };
        TableInfo::new(
            1,
            "public".into(),
            "items".into(),
            vec![
                c("id", "int8", Some(0)),
                c("name", "text", None),
                c("flag", "bool", None),
                c("price", "numeric", None),
                c("Mixed Case", "int4", None),
            ],
        )
    }

    struct R(Vec<Option<&'static str>>);
    impl Row for R {
        fn value(&self, c: usize) -> Option<&[u8]> {
            self.0[c].map(str::as_bytes)
        }
    }

    fn row(id: &'static str, name: Option<&'static str>, flag: Option<&'static str>) -> R {
        R(vec![Some(id), name, flag, Some("1.50"), Some("7")])
    }

    #[test]
    fn syntax_errors_match_the_reference() {
        let e = parse_where("1 x 1", &table(), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "At location 17: syntax error at or near \"x\""
        );
        assert_eq!((e.kind, e.position), (WhereErrorKind::Syntax, Some(17)));
        assert!(parse_where("id = 1; DROP TABLE items", &table(), &[]).is_err());
    }

    #[test]
    fn evaluates_with_three_valued_logic() {
        let t = table();
        let w = parse_where("id = 5 AND (name = 'a' OR flag)", &t, &[]).unwrap();
        assert!(w.matches(&row("5", Some("a"), None)));
        assert!(w.matches(&row("5", Some("b"), Some("t"))));
        assert!(!w.matches(&row("5", None, None)));
        assert!(!w.matches(&row("6", Some("a"), Some("t"))));
        let w = parse_where("NOT (name = 'a')", &t, &[]).unwrap();
        assert!(
            !w.matches(&row("1", None, None)),
            "NOT NULL is NULL, not true"
        );
        let w = parse_where("name IS NULL", &t, &[]).unwrap();
        assert!(w.matches(&row("1", None, None)));
        let w = parse_where("(name = 'a') IS NOT TRUE", &t, &[]).unwrap();
        assert!(w.matches(&row("1", None, None)));
        let w = parse_where(
            "price >= 1.5 and 2 > price and \"Mixed Case\" = '7'",
            &t,
            &[],
        )
        .unwrap();
        assert!(w.matches(&row("1", None, None)));
        let w = parse_where("id > -3", &t, &[]).unwrap();
        assert!(w.matches(&row("-2", None, None)));
        let w = parse_where("id = NULL", &t, &[]).unwrap();
        assert!(!w.matches(&row("1", None, None)));
    }

    #[test]
    fn renders_safe_sql() {
        let t = table();
        let w = parse_where("name = 'x'' OR 1=1 --' AND id <> '3'::int", &t, &[]).unwrap();
        assert_eq!(
            w.sql(&t),
            "(\"name\" = 'x'' OR 1=1 --' AND \"id\" <> CAST('3' AS int8))"
        );
    }

    #[test]
    fn rejects_what_it_cannot_evaluate() {
        let t = table();
        for bad in [
            "nope = 1",
            "id",
            "name < 'a'",
            "id = 'abc'",
            "name = 1",
            "now() > 1",
            "id IN (SELECT 1)",
            "id = $2",
            "id + name = 1",
            "lower(id) = 'a'",
            "random() > 0.5",
            "count(*) > 1",
            "SELECT 1",
        ] {
            assert!(parse_where(bad, &t, &[]).is_err(), "{bad}");
        }
        let w = parse_where("id = $1 AND name = $2", &t, &["5".into(), "it's".into()]).unwrap();
        assert!(w.matches(&R(vec![
            Some("5"),
            Some("it's"),
            None,
            Some("1"),
            Some("1")
        ])));
        assert!(
            w.sql(&t).contains("'it''s'"),
            "params are rendered as escaped literals"
        );
        assert!(
            parse_where("id = $1", &t, &["x".into()]).is_err(),
            "typed by context"
        );
        let e = parse_where("nope = 1", &t, &[]).unwrap_err();
        assert_eq!(e.to_string(), "At location 0: unknown reference nope");
        assert_eq!(
            (e.kind, e.position),
            (WhereErrorKind::UnknownColumn, Some(0))
        );
        let e = parse_where("id = 1 AND name IN (SELECT 1)", &t, &[]).unwrap_err();
        assert_eq!(e.kind, WhereErrorKind::Unsupported);
        assert_eq!(e.position, Some(16));
        let e = parse_where("id = $2", &t, &["1".into()]).unwrap_err();
        assert_eq!(e.kind, WhereErrorKind::Parameter, "{e}");
    }

    #[test]
    fn routing_terms_cover_in_lists_ors_and_any() {
        let t = table();
        let keys = |clause: &str| {
            parse_where(clause, &t, &[])
                .unwrap()
                .eq_term()
                .map(|(c, _, k)| (c, k.len()))
        };
        assert_eq!(keys("id = 3"), Some((0, 1)));
        assert_eq!(keys("id IN (3, 5, 5.0)"), Some((0, 2)), "5 = 5.0: one key");
        assert_eq!(keys("id = 3 OR id = 5"), Some((0, 2)));
        assert_eq!(keys("id = ANY('{3,5,NULL}')"), Some((0, 2)));
        assert_eq!(keys("id IN (3, 5) AND name = 'x'"), Some((1, 1)));
        assert_eq!(keys("id = 3 OR name = 'x'"), None);
        assert_eq!(keys("id NOT IN (3)"), None);
        assert_eq!(keys("id > 3"), None);
    }

    #[test]
    fn in_between_and_distinct_follow_postgres() {
        let t = table();
        let m = |clause: &str, r: &R| parse_where(clause, &t, &[]).unwrap().matches(r);
        let one = row("1", Some("a"), Some("t"));
        let nul = row("1", None, None);
        assert!(m("id IN (3, 1)", &one));
        assert!(!m("id NOT IN (3, 1)", &one));
        assert!(
            !m("id NOT IN (3, NULL)", &one),
            "NULL in NOT IN is never true"
        );
        assert!(m("id IN (1, NULL)", &one));
        assert!(m("price BETWEEN 1.5 AND 2", &one));
        assert!(!m("price BETWEEN 2 AND 1", &one));
        assert!(m("price BETWEEN SYMMETRIC 2 AND 1", &one));
        assert!(m("price NOT BETWEEN 2 AND 3", &one));
        assert!(!m("price NOT BETWEEN SYMMETRIC 2 AND 1", &one));
        assert!(m("name IS DISTINCT FROM 'b'", &one));
        assert!(
            m("name IS DISTINCT FROM 'b'", &nul),
            "NULL is distinct from a value"
        );
        assert!(!m("name IS NOT DISTINCT FROM 'b'", &nul));
        assert!(m("name IS NOT DISTINCT FROM NULL", &nul));
        assert!(m("'a' IS NOT DISTINCT FROM name", &one));
        // The snapshot SQL keeps the meaning (re-rendered, never the user's text).
        let w = parse_where("id NOT IN (3, 4)", &t, &[]).unwrap();
        assert_eq!(
            w.sql(&t),
            r#"("id" <> CAST('3' AS int8) AND "id" <> CAST('4' AS int8))"#
        );
        assert!(m("name LIKE 'a'", &one));
        assert!(m("name LIKE '_'", &one));
        assert!(m("name LIKE '%%'", &one));
        assert!(!m("name NOT LIKE 'a%'", &one));
        assert!(!m("name LIKE 'A'", &one), "case-sensitive");
        assert!(!m("name LIKE 'a'", &nul) && !m("name NOT LIKE 'a'", &nul));
        let pct = R(vec![Some("1"), Some("50%_x"), None, None, None]);
        assert!(m(r"name LIKE '50\%\_x'", &pct));
        assert!(m("name LIKE '50#%#_%' ESCAPE '#'", &pct));
        assert!(!m("name LIKE '5_' ESCAPE ''", &pct));
        assert!(
            parse_where(r"name LIKE 'a\'", &t, &[]).is_err(),
            "trailing escape"
        );
        assert!(parse_where("name ILIKE 'a'", &t, &[]).is_err());
        let w = parse_where("name LIKE '1#%%' ESCAPE '#'", &t, &[]).unwrap();
        assert_eq!(w.sql(&t), r#"("name" LIKE '1\%%' ESCAPE '\')"#);
        assert!(parse_where("name BETWEEN 'a' AND 'b'", &t, &[])
            .unwrap_err()
            .to_string()
            .contains("ordering comparisons on text"));
    }
}

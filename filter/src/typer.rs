//! The typing context of one where clause (its table, `$n` parameters and claims), shared by the
//! boolean structure (`parse.rs`) and the value expressions (`typing.rs`) it is walked with.

use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::FuncCall;

use std::cell::RefCell;
use std::sync::Arc;

use crate::error::{Loc, WhereError, WhereErrorKind};
use crate::expr::Subquery;
use crate::source::TableSource;
use crate::table::TableInfo;

/// What every clause is wrapped in to be parsed as a statement.
pub(crate) const PREFIX: &str = "SELECT 1 WHERE ";

pub(crate) struct Typer<'a> {
    pub(crate) table: &'a TableInfo,
    pub(crate) params: &'a [String],
    /// Where `claim(...)` values come from: only a role's row filter has them.
    pub(crate) claims: Option<&'a dyn ClaimSource>,
    /// The tables subqueries may read (`None`: subqueries are refused).
    pub(crate) tables: Option<&'a dyn TableSource>,
    /// How many subqueries this clause is nested in.
    pub(crate) depth: usize,
    /// The clause's distinct subqueries so far, in the order written.
    pub(crate) deps: RefCell<Vec<Arc<Subquery>>>,
}

impl<'a> Typer<'a> {
    pub(crate) fn new(table: &'a TableInfo, params: &'a [String]) -> Self {
        Typer {
            table,
            params,
            claims: None,
            tables: None,
            depth: 0,
            deps: RefCell::new(Vec::new()),
        }
    }
}

/// A `pg_query` location in the wrapped statement, as a place in the clause.
pub(crate) fn loc(l: i32) -> Loc {
    match usize::try_from(l) {
        Ok(l) => Loc(Some(l.saturating_sub(PREFIX.len()))),
        Err(_) => Loc::NONE,
    }
}

/// Where the values of `claim('<name>')` come from (a caller's verified token).
pub trait ClaimSource {
    /// The claim's value as constant text (`None`: SQL NULL), or why it cannot be had (the
    /// caller has no such claim, or its value has no SQL form).
    fn claim(&self, name: &str) -> Result<Option<String>, String>;
}

/// The parts of a called function's name (`["lower"]`, `["pg_catalog", "lower"]`).
pub(crate) fn func_name(f: &FuncCall) -> Vec<&str> {
    f.funcname
        .iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(N::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// The claim name of `f` when it is a call of `claim`: `Some(Ok(name))` for `claim('<name>')`,
/// `Some(Err)` for a malformed call, `None` for any other function.
pub(crate) fn claim_call(f: &FuncCall) -> Option<Result<String, WhereError>> {
    if func_name(f).as_slice() != ["claim"] {
        return None;
    }
    let malformed = || {
        WhereError::new(
            WhereErrorKind::Syntax,
            loc(f.location),
            "claim() takes one string constant: the claim's name, e.g. claim('sub')",
        )
    };
    if f.args.len() != 1
        || f.agg_star
        || f.agg_distinct
        || f.over.is_some()
        || f.agg_filter.is_some()
        || !f.agg_order.is_empty()
        || f.func_variadic
    {
        return Some(Err(malformed()));
    }
    match f.args[0].node.as_ref() {
        Some(N::AConst(c)) if !c.isnull => match &c.val {
            Some(pg_query::protobuf::a_const::Val::Sval(s)) if !s.sval.is_empty() => {
                Some(Ok(s.sval.clone()))
            }
            _ => Some(Err(malformed())),
        },
        _ => Some(Err(malformed())),
    }
}

impl Typer<'_> {
    /// The value of a `claim(...)` call: `None` when `f` is another function.
    pub(crate) fn claim(&self, f: &FuncCall) -> Option<Result<Option<String>, WhereError>> {
        let name = match claim_call(f)? {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let Some(source) = self.claims else {
            return Some(Err(WhereError::new(
                WhereErrorKind::Unsupported,
                loc(f.location),
                "claim() can only be used in a role's row filter",
            )));
        };
        Some(
            source
                .claim(&name)
                .map_err(|m| WhereError::new(WhereErrorKind::Parameter, loc(f.location), m)),
        )
    }
}

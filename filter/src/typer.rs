//! The typing context of one where clause (its table, `$n` parameters and claims), shared by the
//! boolean structure (`parse.rs`) and the value expressions (`typing.rs`) it is walked with.

use crate::error::Loc;
use crate::table::TableInfo;

/// What every clause is wrapped in to be parsed as a statement.
pub(crate) const PREFIX: &str = "SELECT 1 WHERE ";

pub(crate) struct Typer<'a> {
    pub(crate) table: &'a TableInfo,
    pub(crate) params: &'a [String],
    /// Where `claim(...)` values come from: only a role's row filter has them.
    pub(crate) claims: Option<&'a dyn crate::claims::ClaimSource>,
}

/// A `pg_query` location in the wrapped statement, as a place in the clause.
pub(crate) fn loc(l: i32) -> Loc {
    match usize::try_from(l) {
        Ok(l) => Loc(Some(l.saturating_sub(PREFIX.len()))),
        Err(_) => Loc::NONE,
    }
}

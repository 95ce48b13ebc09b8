//! What a where clause is evaluated on: one row's column values in Postgres text form, and
//! the current results of the clause's subqueries.

use crate::num::Fail;

/// Column values of one row in Postgres text form; `None` is SQL NULL.
pub trait Row {
    fn value(&self, column: usize) -> Option<&[u8]>;

    /// `values IN (SELECT …)` for the clause's subquery `dep` (the row's values of the
    /// membership's left side, in Postgres text form), in three-valued logic: see
    /// [`crate::View::membership`]. A row that knows no subquery results fails, so a clause
    /// with subqueries never matches without them.
    fn membership(&self, dep: usize, values: &[Option<&[u8]>]) -> Result<Option<bool>, Fail> {
        let _ = (dep, values);
        Err(Fail)
    }
}

//! What a where clause is evaluated on: one row's column values in Postgres text form.

/// Column values of one row in Postgres text form; `None` is SQL NULL.
pub trait Row {
    fn value(&self, column: usize) -> Option<&[u8]>;
}

//! Where the tables that subqueries name are described: loaded by the caller (the catalog)
//! before a clause with subqueries is typed.

use std::sync::Arc;

use crate::ident::quote_ident;
use crate::table::TableInfo;

/// A table named in a subquery's `FROM`: its schema (`public` when none is written) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// `"schema"."name"`, as error messages name a table.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Where the tables named by subqueries are described (loaded by the caller beforehand, see
/// [`subquery_tables`]).
pub trait TableSource {
    fn table(&self, name: &TableName) -> Option<Arc<TableInfo>>;
}

impl TableSource for [Arc<TableInfo>] {
    fn table(&self, name: &TableName) -> Option<Arc<TableInfo>> {
        self.iter()
            .find(|t| t.schema == name.schema && t.name == name.name)
            .cloned()
    }
}

impl TableSource for Vec<Arc<TableInfo>> {
    fn table(&self, name: &TableName) -> Option<Arc<TableInfo>> {
        self.as_slice().table(name)
    }
}

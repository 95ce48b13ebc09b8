//! The table model where clauses are checked against and shapes are described by: columns in
//! the order pgoutput sends them (attnum order, without dropped and generated columns), their
//! types, type modifiers, collations, enum labels and domain base types, the primary key, and a
//! partitioned table's leaf partitions. Pure data: it is read from the catalog elsewhere.

use serde::{Deserialize, Serialize};

use crate::ident::quote_ident;

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: u32,
    /// `pg_type.typname`; for arrays the element type's name.
    pub type_name: String,
    /// Array dimensions (`attndims`, at least 1 for arrays); 0 for scalars.
    pub dims: i32,
    pub type_mod: i32,
    pub not_null: bool,
    /// Position in the primary key, 0-based.
    pub pk_index: Option<usize>,
}

/// A table as a shape sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    /// Indexes into `columns` of the key columns: the primary key in key order, or (no primary
    /// key) every column sorted by name, as the reference does.
    pub key: Vec<usize>,
    pub has_pk: bool,
    /// How the database compares and case-maps text, for where clauses (empty when unknown,
    /// e.g. in metadata written before it was recorded).
    #[serde(default)]
    pub locale: TextLocale,
    /// Per column (in `columns` order): its collation's name, `default` for the database's,
    /// empty for a type without collation. Kept apart from `columns` so that schema-change
    /// detection is not affected by it.
    #[serde(default)]
    pub collations: Vec<String>,
    /// Per column: the base type's name when the column's type is a domain, else empty.
    #[serde(default)]
    pub base_types: Vec<String>,
    /// Per column: the labels of its enum type (or of its array's or domain's enum element
    /// type) in declared order, else empty.
    #[serde(default)]
    pub enum_labels: Vec<Vec<String>>,
    /// A partitioned table (`relkind 'p'`): its changes arrive as those of its partitions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partitioned: bool,
    /// A partitioned table's leaf partitions (ascending oids) when the description was read:
    /// the schema check compares them with the catalog to notice partitions attached, detached
    /// or both since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaves: Vec<Leaf>,
}

/// A leaf partition of a partitioned table, and how it is attached.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Leaf {
    pub oid: u32,
    /// The transaction ids (`xmin`) of the `pg_inherits` links from the leaf up to the
    /// partitioned table, joined by `.`: detaching and attaching again (at any level) changes
    /// it, even when the set of leaves looks the same.
    pub link: String,
}

/// The database's default collation and character classification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextLocale {
    /// `pg_database.datcollate`.
    pub collate: String,
    /// `pg_database.datctype`.
    pub ctype: String,
    /// `pg_database.datlocprovider`: `c` (libc), `i` (ICU); empty before Postgres 15.
    pub provider: String,
}

impl TextLocale {
    /// Does the database's default collation order text by its bytes (C, POSIX, C.UTF-8)?
    pub fn byte_order(&self) -> bool {
        self.provider != "i"
            && matches!(self.collate.as_str(), "C" | "POSIX" | "C.UTF-8" | "C.utf8")
    }

    /// Does the database's default character classification map case in ASCII only (C, POSIX)?
    pub fn ascii_case(&self) -> bool {
        self.provider != "i" && matches!(self.ctype.as_str(), "C" | "POSIX")
    }
}

impl TableInfo {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The same table seen with only the columns named in `keep` (which must exist): a where
    /// clause or ORDER BY parsed against it can name no other column.
    pub fn restricted(&self, keep: &[String]) -> TableInfo {
        let kept: Vec<usize> = (0..self.columns.len())
            .filter(|&i| keep.iter().any(|k| *k == self.columns[i].name))
            .collect();
        let pick = |v: &Vec<String>| -> Vec<String> {
            kept.iter().filter_map(|&i| v.get(i).cloned()).collect()
        };
        TableInfo {
            columns: kept.iter().map(|&i| self.columns[i].clone()).collect(),
            key: self
                .key
                .iter()
                .filter_map(|k| kept.iter().position(|i| i == k))
                .collect(),
            collations: pick(&self.collations),
            base_types: pick(&self.base_types),
            enum_labels: kept
                .iter()
                .filter_map(|&i| self.enum_labels.get(i).cloned())
                .collect(),
            ..self.clone()
        }
    }

    /// The type name where clauses evaluate a column as: a domain's base type, else its own.
    pub fn eval_type_name(&self, column: usize) -> &str {
        match self.base_types.get(column) {
            Some(b) if !b.is_empty() => b,
            _ => &self.columns[column].type_name,
        }
    }

    /// The enum labels of a column's type in declared order (empty if it is not an enum).
    pub fn enum_labels(&self, column: usize) -> &[String] {
        self.enum_labels
            .get(column)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// `"schema"."table"` for SQL.
    pub fn quoted_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl TableInfo {
    pub fn new(oid: u32, schema: String, name: String, columns: Vec<ColumnInfo>) -> Self {
        let mut pk: Vec<(usize, usize)> = columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.pk_index.map(|p| (p, i)))
            .collect();
        pk.sort_unstable();
        let has_pk = !pk.is_empty();
        let key = if has_pk {
            pk.into_iter().map(|(_, i)| i).collect()
        } else {
            let mut all: Vec<usize> = (0..columns.len()).collect();
            all.sort_by(|a, b| columns[*a].name.cmp(&columns[*b].name));
            all
        };
        TableInfo {
            oid,
            schema,
            name,
            columns,
            key,
            has_pk,
            locale: TextLocale::default(),
            collations: Vec::new(),
            base_types: Vec::new(),
            enum_labels: Vec::new(),
            partitioned: false,
            leaves: Vec::new(),
        }
    }
}

//! The Postgres types the expression engine knows ([`Ty`]): their names, the implicit
//! conversions between them (Postgres' type categories and preferred types), and which
//! explicit casts are evaluated. Enum types carry their label lists, interned in a bounded
//! process-wide table (see [`enum_type`]).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// A Postgres type as the expression engine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Int2,
    Int4,
    Int8,
    Numeric,
    Float4,
    Float8,
    Bool,
    /// text, name.
    Text,
    /// `character varying`: text, except that it meets `bpchar` on bpchar's terms.
    Varchar,
    /// `character(n)`: trailing spaces are insignificant in comparisons and are removed when
    /// the value becomes `text`.
    Bpchar,
    Uuid,
    Bytea,
    Jsonb,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    /// An enum type, by its labels in declared order (interned for the life of the process, in a bounded table).
    Enum(&'static [String]),
    /// A one-dimensional (or multi-dimensional) array of the element type.
    Array(&'static Ty),
}

impl Ty {
    /// The type of a catalog type name (`dims > 0`: an array of it).
    pub fn of_type(type_name: &str, dims: i32) -> Option<Ty> {
        let base = Ty::scalar(type_name)?;
        Some(base.array_if(dims > 0))
    }

    /// An array of `self` when `array`.
    pub fn array_if(self, array: bool) -> Ty {
        if array {
            Ty::Array(self.as_static())
        } else {
            self
        }
    }

    /// A scalar type by its catalog or SQL name.
    pub fn scalar(name: &str) -> Option<Ty> {
        Some(match name {
            "int2" | "smallint" => Ty::Int2,
            "int4" | "integer" | "int" => Ty::Int4,
            "int8" | "bigint" => Ty::Int8,
            "numeric" | "decimal" => Ty::Numeric,
            "float4" | "real" => Ty::Float4,
            "float8" | "double precision" => Ty::Float8,
            "bool" | "boolean" => Ty::Bool,
            "text" | "name" => Ty::Text,
            "varchar" => Ty::Varchar,
            "bpchar" | "char" => Ty::Bpchar,
            "uuid" => Ty::Uuid,
            "bytea" => Ty::Bytea,
            "jsonb" => Ty::Jsonb,
            "date" => Ty::Date,
            "time" => Ty::Time,
            "timestamp" => Ty::Timestamp,
            "timestamptz" => Ty::Timestamptz,
            "interval" => Ty::Interval,
            _ => return None,
        })
    }

    /// The type as a `'static` reference (for [`Ty::Array`]); enum types from their interner.
    pub fn as_static(self) -> &'static Ty {
        if let Ty::Enum(labels) = self {
            return enum_static(labels);
        }
        match self {
            Ty::Int2 => &Ty::Int2,
            Ty::Int4 => &Ty::Int4,
            Ty::Int8 => &Ty::Int8,
            Ty::Numeric => &Ty::Numeric,
            Ty::Float4 => &Ty::Float4,
            Ty::Float8 => &Ty::Float8,
            Ty::Bool => &Ty::Bool,
            Ty::Text => &Ty::Text,
            Ty::Varchar => &Ty::Varchar,
            Ty::Bpchar => &Ty::Bpchar,
            Ty::Uuid => &Ty::Uuid,
            Ty::Bytea => &Ty::Bytea,
            Ty::Jsonb => &Ty::Jsonb,
            Ty::Date => &Ty::Date,
            Ty::Time => &Ty::Time,
            Ty::Timestamp => &Ty::Timestamp,
            Ty::Timestamptz => &Ty::Timestamptz,
            Ty::Interval => &Ty::Interval,
            Ty::Enum(_) => &Ty::Text,
            Ty::Array(e) => e,
        }
    }

    /// The element type of an array type.
    pub fn elem(self) -> Option<Ty> {
        match self {
            Ty::Array(e) => Some(*e),
            _ => None,
        }
    }

    /// Position in Postgres' chain of implicit numeric casts (int2 → … → float8).
    pub fn num_rank(self) -> Option<u8> {
        Some(match self {
            Ty::Int2 => 0,
            Ty::Int4 => 1,
            Ty::Int8 => 2,
            Ty::Numeric => 3,
            Ty::Float4 => 4,
            Ty::Float8 => 5,
            _ => return None,
        })
    }

    pub fn is_int(self) -> bool {
        matches!(self, Ty::Int2 | Ty::Int4 | Ty::Int8)
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::Float4 | Ty::Float8)
    }

    pub fn is_text(self) -> bool {
        matches!(self, Ty::Text | Ty::Varchar | Ty::Bpchar)
    }

    /// Position in the implicit cast chain date → timestamp → timestamptz.
    pub fn dt_rank(self) -> Option<u8> {
        Some(match self {
            Ty::Date => 0,
            Ty::Timestamp => 1,
            Ty::Timestamptz => 2,
            _ => return None,
        })
    }

    /// The name used in rendered SQL casts.
    pub fn sql(self) -> String {
        match self {
            Ty::Int2 => "int2".into(),
            Ty::Int4 => "int4".into(),
            Ty::Int8 => "int8".into(),
            Ty::Numeric => "numeric".into(),
            Ty::Float4 => "float4".into(),
            Ty::Float8 => "float8".into(),
            Ty::Bool => "boolean".into(),
            Ty::Text => "text".into(),
            Ty::Varchar => "varchar".into(),
            Ty::Bpchar => "bpchar".into(),
            Ty::Uuid => "uuid".into(),
            Ty::Bytea => "bytea".into(),
            Ty::Jsonb => "jsonb".into(),
            Ty::Date => "date".into(),
            Ty::Time => "time".into(),
            Ty::Timestamp => "timestamp".into(),
            Ty::Timestamptz => "timestamptz".into(),
            Ty::Interval => "interval".into(),
            // Rendered as text: constants of an enum type are compared with a column of
            // that type, where Postgres converts them itself.
            Ty::Enum(_) => "text".into(),
            Ty::Array(e) => format!("{}[]", e.sql()),
        }
    }

    /// The name used in error messages (Postgres' own spelling).
    pub fn name(self) -> String {
        match self {
            Ty::Int2 => "smallint".into(),
            Ty::Int4 => "integer".into(),
            Ty::Int8 => "bigint".into(),
            Ty::Numeric => "numeric".into(),
            Ty::Float4 => "real".into(),
            Ty::Float8 => "double precision".into(),
            Ty::Bool => "boolean".into(),
            Ty::Text => "text".into(),
            Ty::Varchar => "character varying".into(),
            Ty::Bpchar => "character".into(),
            Ty::Uuid => "uuid".into(),
            Ty::Bytea => "bytea".into(),
            Ty::Jsonb => "jsonb".into(),
            Ty::Date => "date".into(),
            Ty::Time => "time without time zone".into(),
            Ty::Timestamp => "timestamp without time zone".into(),
            Ty::Timestamptz => "timestamp with time zone".into(),
            Ty::Interval => "interval".into(),
            Ty::Enum(_) => "enum".into(),
            Ty::Array(e) => format!("{}[]", e.name()),
        }
    }

    pub fn int_range(self) -> (i64, i64) {
        match self {
            Ty::Int2 => (i16::MIN.into(), i16::MAX.into()),
            Ty::Int4 => (i32::MIN.into(), i32::MAX.into()),
            _ => (i64::MIN, i64::MAX),
        }
    }
}

/// The wider of two types in Postgres' implicit numeric (or date/timestamp) cast chain.
pub fn wider(a: Ty, b: Ty) -> Ty {
    match (a.num_rank(), b.num_rank()) {
        (Some(x), Some(y)) if y > x => b,
        (Some(_), Some(_)) => a,
        _ => match (a.dt_rank(), b.dt_rank()) {
            (Some(x), Some(y)) if y > x => b,
            _ => a,
        },
    }
}

/// Can `CAST(x AS to)` of a value of `from` be evaluated (beyond Postgres' implicit casts)?
pub fn explicit_cast_ok(from: Ty, to: Ty) -> bool {
    let text_out = |t: Ty| {
        t.num_rank().is_some() && !t.is_float()
            || matches!(
                t,
                Ty::Bool
                    | Ty::Uuid
                    | Ty::Date
                    | Ty::Time
                    | Ty::Timestamp
                    | Ty::Timestamptz
                    | Ty::Jsonb
                    | Ty::Enum(_)
            )
            || t.is_text()
    };
    let text_in = |t: Ty| {
        t.num_rank().is_some()
            || matches!(
                t,
                Ty::Bool
                    | Ty::Uuid
                    | Ty::Bytea
                    | Ty::Date
                    | Ty::Time
                    | Ty::Timestamp
                    | Ty::Timestamptz
                    | Ty::Interval
                    | Ty::Jsonb
            )
            || t.is_text()
    };
    (from.num_rank().is_some() && to.num_rank().is_some())
        || (to.is_text() && text_out(from))
        || (from.is_text() && text_in(to))
        || (from.dt_rank().is_some() && to.dt_rank().is_some())
}

// Enum types: their label lists, interned for the life of
// the process so that `Ty` stays `Copy` (an enum type is `Ty::Enum(&'static [String])`, an
// array of one `Ty::Array(&'static Ty)`).
//
// Interning leaks by design: an entry is made once per distinct label list ever typed (a
// handful per database; a new one only when an enum type gains a label) and lives until the
// process exits. It is bounded so that no sequence of catalog changes can grow it without
// limit: past `MAX_LISTS` lists or `MAX_BYTES` of labels, a where clause on a new enum
// type is refused with an error (existing shapes keep working) until the process restarts.

/// The most distinct label lists interned at once.
pub const MAX_LISTS: usize = 4096;
/// The most label bytes interned at once.
pub const MAX_BYTES: usize = 16 << 20;

/// The interner is full (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many distinct enum types for one process ({MAX_LISTS} label lists or {} MiB of labels); restart the server to reset",
            MAX_BYTES >> 20
        )
    }
}

impl std::error::Error for Full {}

#[derive(Default)]
struct Table {
    /// Each list with its `Ty::Enum` (for [`Ty::as_static`]).
    lists: HashMap<&'static [String], &'static Ty>,
    bytes: usize,
}

fn table() -> std::sync::MutexGuard<'static, Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The enum type with these labels (in declared order).
pub fn enum_type(labels: &[String]) -> Result<Ty, Full> {
    Ok(*interned(labels)?)
}

/// The `'static` `Ty::Enum` of these labels, made on first sight.
fn interned(labels: &[String]) -> Result<&'static Ty, Full> {
    table().intern(labels, MAX_LISTS, MAX_BYTES)
}

impl Table {
    fn intern(
        &mut self,
        labels: &[String],
        max_lists: usize,
        max_bytes: usize,
    ) -> Result<&'static Ty, Full> {
        if let Some(ty) = self.lists.get(labels) {
            return Ok(ty);
        }
        let bytes: usize = labels.iter().map(|l| l.len() + size_of::<String>()).sum();
        if self.lists.len() >= max_lists || self.bytes + bytes > max_bytes {
            return Err(Full);
        }
        let list: &'static [String] = Box::leak(labels.to_vec().into_boxed_slice());
        let ty: &'static Ty = Box::leak(Box::new(Ty::Enum(list)));
        self.lists.insert(list, ty);
        self.bytes += bytes;
        Ok(ty)
    }
}

/// The `'static` form of an enum type (which [`enum_type`] made, so it is in the table).
pub(crate) fn enum_static(labels: &'static [String]) -> &'static Ty {
    if let Some(ty) = table().lists.get(labels) {
        return ty;
    }
    // Only `enum_type` makes enum types, so this is not reached; were it reached, one small
    // allocation is the right answer rather than a panic.
    Box::leak(Box::new(Ty::Enum(labels)))
}

/// How many label lists are interned, and their bytes.
#[cfg(test)]
fn interned_size() -> (usize, usize) {
    let t = table();
    (t.lists.len(), t.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_list() {
        let a = vec!["enums_test_a".to_string(), "b".to_string()];
        let before = interned_size().0;
        let t1 = enum_type(&a).unwrap();
        let t2 = enum_type(&a.clone()).unwrap();
        assert_eq!(t1, t2);
        let Ty::Enum(l1) = t1 else { panic!() };
        let Ty::Enum(l2) = t2 else { panic!() };
        assert!(std::ptr::eq(l1, l2));
        assert!(std::ptr::eq(t1.as_static(), t2.as_static()));
        assert!(interned_size().0 <= before + 1);
    }

    #[test]
    fn bounded() {
        let list = |s: &str| vec![s.to_string()];
        let mut t = Table::default();
        let a = t.intern(&list("a"), 2, 1 << 20).unwrap();
        t.intern(&list("b"), 2, 1 << 20).unwrap();
        // Full by count: a new list is refused, a known one still resolves.
        assert_eq!(t.intern(&list("c"), 2, 1 << 20), Err(Full));
        assert!(std::ptr::eq(t.intern(&list("a"), 2, 1 << 20).unwrap(), a));
        // Full by bytes.
        let mut t = Table::default();
        let per = size_of::<String>() + 10;
        t.intern(&list(&"x".repeat(10)), 100, 2 * per).unwrap();
        t.intern(&list(&"y".repeat(10)), 100, 2 * per).unwrap();
        assert_eq!(t.intern(&list("z"), 100, 2 * per), Err(Full));
        assert_eq!(t.bytes, 2 * per);
    }
}

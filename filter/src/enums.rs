//! Enum types as the expression engine sees them: their label lists, interned for the life of
//! the process so that [`Ty`] stays `Copy` (an enum type is `Ty::Enum(&'static [String])`, an
//! array of one `Ty::Array(&'static Ty)`).
//!
//! Interning leaks by design: an entry is made once per distinct label list ever typed (a
//! handful per database; a new one only when an enum type gains a label) and lives until the
//! process exits. It is bounded so that no sequence of catalog changes can grow it without
//! limit: past [`MAX_LISTS`] lists or [`MAX_BYTES`] of labels, a where clause on a new enum
//! type is refused with an error (existing shapes keep working) until the process restarts.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::scalar::Ty;

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
pub(crate) fn as_static(labels: &'static [String]) -> &'static Ty {
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

//! The routing index of one table: which shapes a change can touch, without testing them all.
//!
//! A shape whose where clause implies `column = one of a few constants` (`=`, `IN`, an `OR` of
//! equalities on one column, `= ANY ('{…}')`, alone or as a conjunct of a top-level `AND`; see
//! [`super::filter::WhereClause::eq_term`]) is filed under that column and each constant's
//! key; every other shape is in `scan` and tested on every change. A change is
//! routed on each of its rows (the new row, and for updates and deletes the full old row): for
//! each indexed column, the shapes filed under the row's key for that column. A shape filed
//! under a key can only match a row with that key, so a shape the index leaves out matches
//! neither row and would emit nothing: routing never changes what a shape receives, only how
//! many shapes are tested. Lookup cost depends on the number of indexed columns, not shapes.

use std::collections::HashMap;

use super::filter::{index_key, Family};
use super::message::Cell;

/// Shapes of one table, by the equality they require.
#[derive(Debug, Default)]
pub struct TableRoutes {
    /// Shapes without an indexable equality.
    scan: Vec<usize>,
    /// Per column: its family, and the shapes requiring each key.
    eq: HashMap<usize, (Family, KeyedShapes)>,
    len: usize,
}

/// Shapes by the key they require.
type KeyedShapes = HashMap<Vec<u8>, Vec<usize>>;

/// Where a shape is filed (from its clause's `eq_term`): a column, its family, and the keys.
pub type Term = Option<(usize, Family, Vec<Vec<u8>>)>;

impl TableRoutes {
    pub fn add(&mut self, idx: usize, term: Term) {
        self.len += 1;
        match term {
            None => self.scan.push(idx),
            Some((column, family, keys)) => {
                let by_key = &mut self
                    .eq
                    .entry(column)
                    .or_insert_with(|| (family, HashMap::new()))
                    .1;
                for key in keys {
                    by_key.entry(key).or_default().push(idx);
                }
            }
        }
    }

    pub fn remove(&mut self, idx: usize, term: &Term) {
        let removed = match term {
            None => remove_from(&mut self.scan, idx),
            Some((column, _, wanted)) => {
                let Some((_, keys)) = self.eq.get_mut(column) else {
                    return;
                };
                let mut removed = false;
                for key in wanted {
                    let Some(list) = keys.get_mut(key) else {
                        continue;
                    };
                    removed |= remove_from(list, idx);
                    if list.is_empty() {
                        keys.remove(key);
                    }
                }
                if keys.is_empty() {
                    self.eq.remove(column);
                }
                removed
            }
        };
        if removed {
            self.len -= 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every shape of the table (possibly with repeats).
    pub fn all(&self, out: &mut Vec<usize>) {
        out.extend_from_slice(&self.scan);
        for (_, keys) in self.eq.values() {
            for list in keys.values() {
                out.extend_from_slice(list);
            }
        }
    }

    /// The shapes a change with these rows may touch (possibly with repeats). A row's column
    /// that is missing or unknown (an unchanged TOAST value nobody could fill in) routes to
    /// every shape filed under that column; a NULL routes to none of them (`=` is never true).
    pub fn candidates(&self, rows: &[&[Cell<'_>]], out: &mut Vec<usize>) {
        out.extend_from_slice(&self.scan);
        for (column, (family, keys)) in &self.eq {
            for row in rows {
                match row.get(*column) {
                    Some(Cell::Null) => {}
                    Some(Cell::Text(v)) => {
                        if let Some(list) = index_key(*family, v).and_then(|k| keys.get(&k)) {
                            out.extend_from_slice(list);
                        }
                    }
                    Some(Cell::Unknown) | None => {
                        for list in keys.values() {
                            out.extend_from_slice(list);
                        }
                    }
                }
            }
        }
    }
}

fn remove_from(list: &mut Vec<usize>, idx: usize) -> bool {
    match list.iter().position(|&i| i == idx) {
        Some(p) => {
            list.swap_remove(p);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(f: Family, v: &str) -> Vec<u8> {
        index_key(f, v.as_bytes()).unwrap()
    }

    fn routed(r: &TableRoutes, rows: &[&[Cell<'_>]]) -> Vec<usize> {
        let mut out = Vec::new();
        r.candidates(rows, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn routes_by_equality_and_scans_the_rest() {
        let int = Family::Integer;
        let text = Family::Text { bpchar: false };
        let mut r = TableRoutes::default();
        r.add(0, Some((1, int, vec![key(int, "7")])));
        r.add(1, Some((1, int, vec![key(int, "8")])));
        r.add(2, Some((2, text, vec![key(text, "a")])));
        r.add(3, None);
        r.add(4, Some((1, int, vec![key(int, "7.0")])));
        let row = [Cell::Text(b"1"), Cell::Text(b"7"), Cell::Text(b"b")];
        assert_eq!(routed(&r, &[&row]), vec![0, 3, 4], "7 = 7.0 exactly");
        let old = [Cell::Text(b"1"), Cell::Text(b"8"), Cell::Text(b"a")];
        assert_eq!(routed(&r, &[&row, &old]), vec![0, 1, 2, 3, 4]);
        let nulls = [Cell::Text(b"1"), Cell::Null, Cell::Null];
        assert_eq!(routed(&r, &[&nulls]), vec![3], "NULL never equals");
        let unknown = [Cell::Text(b"1"), Cell::Unknown, Cell::Text(b"zz")];
        assert_eq!(
            routed(&r, &[&unknown]),
            vec![0, 1, 3, 4],
            "unknown: all of its column"
        );
        let mut all = Vec::new();
        r.all(&mut all);
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);

        r.remove(0, &Some((1, int, vec![key(int, "7")])));
        r.remove(3, &None);
        assert_eq!(routed(&r, &[&row]), vec![4]);
        r.remove(4, &Some((1, int, vec![key(int, "7")])));
        r.remove(1, &Some((1, int, vec![key(int, "8")])));
        r.remove(2, &Some((2, text, vec![key(text, "a")])));
        assert!(r.is_empty());
        assert!(r.eq.is_empty(), "empty maps are dropped");
    }

    #[test]
    fn a_shape_filed_under_several_keys_is_found_by_each_and_removed_from_all() {
        let int = Family::Integer;
        let mut r = TableRoutes::default();
        let term = Some((1, int, vec![key(int, "3"), key(int, "5")]));
        r.add(0, term.clone());
        r.add(1, Some((1, int, vec![key(int, "5")])));
        let row = |v: &'static [u8]| [Cell::Text(b"1"), Cell::Text(v)];
        assert_eq!(routed(&r, &[&row(b"3")]), vec![0]);
        assert_eq!(routed(&r, &[&row(b"5")]), vec![0, 1]);
        assert_eq!(routed(&r, &[&row(b"4")]), Vec::<usize>::new());
        r.remove(0, &term);
        assert_eq!(routed(&r, &[&row(b"3")]), Vec::<usize>::new());
        assert_eq!(routed(&r, &[&row(b"5")]), vec![1]);
    }

    #[test]
    fn keys_follow_postgres_equality() {
        let num = Family::Numeric;
        assert_eq!(key(num, "1.50"), key(num, "1.5"));
        assert_eq!(key(num, "-0.0"), key(num, "0"));
        assert_eq!(key(num, "NaN"), key(num, "nan"));
        assert_ne!(key(num, "1.5"), key(num, "15"));
        assert_eq!(key(Family::Integer, "007"), key(Family::Integer, "7"));
        let bp = Family::Text { bpchar: true };
        assert_eq!(key(bp, "ab  "), key(bp, "ab"));
        let text = Family::Text { bpchar: false };
        assert_ne!(key(text, "ab "), key(text, "ab"));
        assert_eq!(
            key(Family::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
            key(Family::Uuid, "{a0eebc999c0b4ef8bb6d6bb9bd380a11}")
        );
        assert_eq!(key(Family::Bool, "yes"), key(Family::Bool, "t"));
    }
}

//! The current result of a subquery as a set for `IN (SELECT …)`: each distinct value (or row
//! of values) with the number of rows holding it, keyed so that values equal in SQL have one
//! key (`1.50` = `1.5`, `-0` = `0`, `'a '` = `'a'` for `bpchar`, timestamps by instant,
//! intervals by span), and membership answered in SQL's three-valued logic.

use std::collections::HashMap;

use crate::datetime;
use crate::expr::Subquery;
use crate::table::TableInfo;
use crate::ty::Ty;
use crate::value::{index_key, Family};

/// How one column's values are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Family(Family),
    Date,
    Time,
    Timestamp {
        zone: bool,
    },
    Interval,
    /// The text itself (types whose output is one text per value: bytea, enums).
    Text,
}

impl KeyKind {
    /// The kind for a column of `table`.
    pub fn of(table: &TableInfo, column: usize) -> KeyKind {
        let c = &table.columns[column];
        if c.dims > 0 || !table.enum_labels(column).is_empty() {
            return KeyKind::Text;
        }
        let name = table.eval_type_name(column);
        if let Some(f) = Family::of_type(name) {
            return KeyKind::Family(f);
        }
        match Ty::of_type(name, 0) {
            Some(Ty::Date) => KeyKind::Date,
            Some(Ty::Time) => KeyKind::Time,
            Some(Ty::Timestamp) => KeyKind::Timestamp { zone: false },
            Some(Ty::Timestamptz) => KeyKind::Timestamp { zone: true },
            Some(Ty::Interval) => KeyKind::Interval,
            _ => KeyKind::Text,
        }
    }

    /// The key of a value in Postgres text form. A text that does not parse as its type (it
    /// cannot come from Postgres) keys as itself.
    pub fn key(self, text: &[u8]) -> Vec<u8> {
        let parsed = match self {
            KeyKind::Family(f) => index_key(f, text),
            KeyKind::Date => std::str::from_utf8(text)
                .ok()
                .and_then(datetime::parse_date)
                .map(|d| d.to_be_bytes().to_vec()),
            KeyKind::Time => std::str::from_utf8(text)
                .ok()
                .and_then(datetime::parse_time)
                .map(|t| t.to_be_bytes().to_vec()),
            KeyKind::Timestamp { zone } => std::str::from_utf8(text)
                .ok()
                .and_then(|s| datetime::parse_timestamp(s, zone))
                .map(|t| t.to_be_bytes().to_vec()),
            KeyKind::Interval => std::str::from_utf8(text)
                .ok()
                .and_then(datetime::parse_interval)
                .map(|i| i.span().to_be_bytes().to_vec()),
            KeyKind::Text => None,
        };
        parsed.unwrap_or_else(|| text.to_vec())
    }
}

/// A subquery's rows as a multiset of keyed values.
#[derive(Debug, Clone, Default)]
pub struct View {
    kinds: Vec<KeyKind>,
    /// Rows without NULL: the concatenated column keys (each length-prefixed) → rows.
    counts: HashMap<Vec<u8>, u32>,
    /// Rows with a NULL in some column (only a row form can have a NULL and non-NULLs):
    /// per-column keys → rows.
    with_null: HashMap<Vec<Option<Vec<u8>>>, u32>,
}

/// A change of a value's presence in a [`View`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    /// The first row holding the value arrived.
    In,
    /// The last row holding it left.
    Out,
    /// Its count changed, its presence did not.
    None,
}

impl View {
    /// An empty view with one key kind per selected column.
    pub fn new(kinds: Vec<KeyKind>) -> View {
        View {
            kinds,
            ..View::default()
        }
    }

    /// An empty view for the rows of `sub`.
    pub fn of(sub: &Subquery) -> View {
        View::new(
            sub.columns
                .iter()
                .map(|c| KeyKind::of(&sub.table, *c))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.with_null.is_empty()
    }

    /// The keys of the values held without NULL (each column's key, length-prefixed, as
    /// [`View::key_of`] makes them).
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.counts.keys().map(Vec::as_slice)
    }

    /// The key of values (none if one is NULL).
    pub fn key_of(&self, values: &[Option<&[u8]>]) -> Option<Vec<u8>> {
        Self::joined(&self.keys_for(values))
    }

    /// Distinct values held.
    pub fn len(&self) -> usize {
        self.counts.len() + self.with_null.len()
    }

    fn keys_for(&self, values: &[Option<&[u8]>]) -> Vec<Option<Vec<u8>>> {
        values
            .iter()
            .zip(&self.kinds)
            .map(|(v, k)| v.map(|v| k.key(v)))
            .collect()
    }

    fn joined(keys: &[Option<Vec<u8>>]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for k in keys {
            let k = k.as_ref()?;
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
        }
        Some(out)
    }

    fn split(joined: &[u8]) -> Vec<&[u8]> {
        let mut parts = Vec::new();
        let mut rest = joined;
        while rest.len() >= 4 {
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let end = (4 + n).min(rest.len());
            parts.push(&rest[4..end]);
            rest = &rest[end..];
        }
        parts
    }

    /// One more row holding `values` (text form, one per selected column).
    pub fn add(&mut self, values: &[Option<&[u8]>]) -> Flip {
        let keys = self.keys_for(values);
        let count = match Self::joined(&keys) {
            Some(k) => self.counts.entry(k).or_insert(0),
            None => self.with_null.entry(keys).or_insert(0),
        };
        *count += 1;
        if *count == 1 {
            Flip::In
        } else {
            Flip::None
        }
    }

    /// One row holding `values` fewer (a row that was added).
    pub fn remove(&mut self, values: &[Option<&[u8]>]) -> Flip {
        let keys = self.keys_for(values);
        let gone = match Self::joined(&keys) {
            Some(k) => match self.counts.get_mut(&k) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    self.counts.remove(&k);
                    true
                }
                None => return Flip::None,
            },
            None => match self.with_null.get_mut(&keys) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    self.with_null.remove(&keys);
                    true
                }
                None => return Flip::None,
            },
        };
        if gone {
            Flip::Out
        } else {
            Flip::None
        }
    }

    /// Does the view hold `values` (a value without NULL)?
    pub fn contains(&self, values: &[Option<&[u8]>]) -> bool {
        let keys = self.keys_for(values);
        match Self::joined(&keys) {
            Some(k) => self.counts.contains_key(&k),
            None => self.with_null.contains_key(&keys),
        }
    }

    /// `values IN (<the view's rows>)` in SQL: TRUE if a row equals `values`; else NULL if some
    /// row is equal as far as known (a NULL on either side where the others are equal); else
    /// FALSE (always FALSE for an empty view).
    pub fn membership(&self, values: &[Option<&[u8]>]) -> Option<bool> {
        let keys = self.keys_for(values);
        if let Some(k) = Self::joined(&keys) {
            if self.counts.contains_key(&k) {
                return Some(true);
            }
        } else if self.is_empty() {
            return Some(false);
        } else if keys.len() == 1 {
            return None;
        }
        // Unknown if any row could equal `values`: no column where both sides are known and
        // differ.
        let could = |row: &[Option<&[u8]>]| {
            keys.iter().zip(row).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => a.as_slice() == *b,
                _ => true,
            })
        };
        let left_null = keys.iter().any(Option::is_none);
        if left_null {
            for k in self.counts.keys() {
                let row: Vec<Option<&[u8]>> = Self::split(k).into_iter().map(Some).collect();
                if could(&row) {
                    return None;
                }
            }
        }
        for k in self.with_null.keys() {
            let row: Vec<Option<&[u8]>> = k.iter().map(|c| c.as_deref()).collect();
            if could(&row) {
                return None;
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Option<&[u8]> {
        Some(s.as_bytes())
    }

    #[test]
    fn keys_follow_sql_equality() {
        let mut v = View::new(vec![KeyKind::Family(Family::Numeric)]);
        assert_eq!(v.add(&[b("1.50")]), Flip::In);
        assert_eq!(v.add(&[b("1.5")]), Flip::None);
        assert_eq!(v.membership(&[b("1.500")]), Some(true));
        assert_eq!(v.remove(&[b("1.5")]), Flip::None);
        assert_eq!(v.remove(&[b("1.50")]), Flip::Out);
        assert!(v.is_empty());
        let ts = KeyKind::Timestamp { zone: true };
        assert_eq!(
            ts.key(b"2024-01-01 00:00:00+00"),
            ts.key(b"2024-01-01 01:00:00+01")
        );
        let iv = KeyKind::Interval;
        assert_eq!(iv.key(b"1 day"), iv.key(b"24:00:00"));
        let bp = KeyKind::Family(Family::Text { bpchar: true });
        assert_eq!(bp.key(b"a  "), bp.key(b"a"));
    }

    #[test]
    fn membership_is_three_valued() {
        let int = KeyKind::Family(Family::Integer);
        let mut v = View::new(vec![int]);
        assert_eq!(
            v.membership(&[None]),
            Some(false),
            "NULL IN (empty) is false"
        );
        v.add(&[b("1")]);
        assert_eq!(v.membership(&[b("1")]), Some(true));
        assert_eq!(v.membership(&[b("2")]), Some(false));
        assert_eq!(v.membership(&[None]), None);
        v.add(&[None]);
        assert_eq!(v.membership(&[b("1")]), Some(true));
        assert_eq!(v.membership(&[b("2")]), None, "2 IN (1, NULL) is NULL");

        let mut r = View::new(vec![int, int]);
        r.add(&[b("1"), b("2")]);
        assert_eq!(r.membership(&[b("1"), b("2")]), Some(true));
        assert_eq!(r.membership(&[b("1"), None]), None);
        assert_eq!(r.membership(&[b("3"), None]), Some(false));
        r.add(&[b("5"), None]);
        assert_eq!(r.membership(&[b("5"), b("6")]), None);
        assert_eq!(r.membership(&[b("6"), b("6")]), Some(false));
        assert_eq!(r.membership(&[None, None]), None);
    }
}

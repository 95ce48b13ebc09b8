//! The routing index of one table: which shapes a change can touch, without testing them all.
//!
//! A shape's where clause may imply a condition on one column that an index can answer (see
//! [`shapesync_filter::WhereClause::route_term`]):
//! - `column = one of a few constants` (`=`, `IN`, an `OR` of equalities, `= ANY ('{…}')`,
//!   `LIKE` without wildcards): filed under each constant's key in a hash map;
//! - `column` within one of a few ranges (`<`, `<=`, `>`, `>=`, `BETWEEN`, their `AND`s and
//!   `OR`s, `LIKE 'prefix%'`): filed in an interval tree;
//! - an array `column` containing one of a few elements (`c = ANY(column)`, `column @> …`,
//!   `column && …`): filed under each element's key.
//!
//! Alone or as one conjunct of a top-level `AND` (the most selective one). Every other shape is
//! in `scan` and tested on every change. A change is routed on each of its rows (the new row,
//! and for updates and deletes the full old row). A shape filed under a condition can only
//! match a row satisfying it, so a shape the index leaves out matches neither row and would
//! emit nothing: routing never changes what a shape receives, only how many shapes are
//! tested. Lookup cost depends on the number of indexed columns and matching shapes, not on
//! the number of shapes.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::message::Cell;
use shapesync_filter::terms::{Filed, Filing, Span, Term};
use shapesync_filter::{index_key, Family, OrdKey};

/// Shapes of one table, by the condition they require.
#[derive(Debug, Default)]
pub struct TableRoutes {
    /// Shapes without an indexable condition.
    scan: Vec<usize>,
    /// Per column: its family, and the shapes requiring each key.
    eq: HashMap<usize, (Family, KeyedShapes)>,
    /// Per array column: its element family, and the shapes requiring each element.
    elems: HashMap<usize, (Family, KeyedShapes)>,
    /// Per column: the shapes requiring a range.
    spans: HashMap<usize, Spans>,
    len: usize,
}

/// Shapes by the key they require.
type KeyedShapes = HashMap<Vec<u8>, Vec<usize>>;

/// The ranges filed for one column: an interval tree of them as they were at its last build,
/// and the ranges added since (looked at one by one). The tree is rebuilt once enough changed
/// (a quarter of the ranges, at least 32), so a creation storm costs O(log n) per shape
/// amortized, not a rebuild per change. Ranges removed since the build may still come out of
/// the tree: extra candidates, which their where clause then rejects.
#[derive(Debug)]
struct Spans {
    family: Family,
    entries: Vec<(Span, usize)>,
    tree: Option<Box<Tree>>,
    pending: Vec<(Span, usize)>,
    stale: usize,
}

impl TableRoutes {
    pub fn add(&mut self, idx: usize, term: Term) {
        self.len += 1;
        let Some(Filed {
            column,
            family,
            filing,
        }) = term
        else {
            self.scan.push(idx);
            return;
        };
        match filing {
            Filing::Keys(keys) => file_keys(&mut self.eq, idx, column, family, keys),
            Filing::Elems(keys) => file_keys(&mut self.elems, idx, column, family, keys),
            Filing::Spans(spans) => {
                let s = self.spans.entry(column).or_insert_with(|| Spans {
                    family,
                    entries: Vec::new(),
                    tree: None,
                    pending: Vec::new(),
                    stale: 0,
                });
                for span in spans {
                    s.entries.push((span.clone(), idx));
                    s.pending.push((span, idx));
                }
            }
        }
    }

    pub fn remove(&mut self, idx: usize, term: &Term) {
        let removed = match term {
            None => remove_from(&mut self.scan, idx),
            Some(Filed { column, filing, .. }) => match filing {
                Filing::Keys(keys) => unfile_keys(&mut self.eq, idx, *column, keys),
                Filing::Elems(keys) => unfile_keys(&mut self.elems, idx, *column, keys),
                Filing::Spans(_) => match self.spans.get_mut(column) {
                    None => false,
                    Some(s) => {
                        let before = s.entries.len();
                        s.entries.retain(|(_, i)| *i != idx);
                        s.pending.retain(|(_, i)| *i != idx);
                        let removed = s.entries.len() != before;
                        s.stale += before - s.entries.len();
                        if s.entries.is_empty() {
                            self.spans.remove(column);
                        }
                        removed
                    }
                },
            },
        };
        if removed {
            self.len -= 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rebuild the interval trees whose ranges changed enough (before routing; routing is
    /// correct either way, only slower with many ranges pending).
    pub fn prepare(&mut self) {
        for s in self.spans.values_mut() {
            if s.pending.len() + s.stale > (s.entries.len() / 4).max(32) {
                s.tree = Tree::build(s.entries.clone());
                s.pending.clear();
                s.stale = 0;
            }
        }
    }

    /// Every shape of the table (possibly with repeats).
    pub fn all(&self, out: &mut Vec<usize>) {
        out.extend_from_slice(&self.scan);
        for (_, keys) in self.eq.values().chain(self.elems.values()) {
            for list in keys.values() {
                out.extend_from_slice(list);
            }
        }
        for s in self.spans.values() {
            out.extend(s.entries.iter().map(|(_, i)| *i));
        }
    }

    /// The shapes a change with these rows may touch (possibly with repeats). A row's column
    /// that is missing or unknown (an unchanged TOAST value nobody could fill in) routes to
    /// every shape filed under that column; a NULL routes to none of them (no condition holds
    /// on NULL).
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
                        keys.values().for_each(|l| out.extend_from_slice(l));
                    }
                }
            }
        }
        for (column, (family, keys)) in &self.elems {
            for row in rows {
                match row.get(*column) {
                    Some(Cell::Null) => {}
                    Some(Cell::Text(v)) => {
                        let elements = std::str::from_utf8(v)
                            .ok()
                            .and_then(shapesync_filter::array_elements);
                        match elements {
                            Some(items) => {
                                for e in items.into_iter().flatten() {
                                    if let Some(list) =
                                        index_key(*family, e.as_bytes()).and_then(|k| keys.get(&k))
                                    {
                                        out.extend_from_slice(list);
                                    }
                                }
                            }
                            None => keys.values().for_each(|l| out.extend_from_slice(l)),
                        }
                    }
                    Some(Cell::Unknown) | None => {
                        keys.values().for_each(|l| out.extend_from_slice(l));
                    }
                }
            }
        }
        for (column, s) in &self.spans {
            for row in rows {
                match row.get(*column) {
                    Some(Cell::Null) => {}
                    Some(Cell::Text(v)) => match OrdKey::of(s.family, v) {
                        Some(key) => {
                            if let Some(tree) = &s.tree {
                                tree.stab(&key, out);
                            }
                            out.extend(
                                s.pending
                                    .iter()
                                    .filter(|(span, _)| span.contains(&key))
                                    .map(|(_, i)| *i),
                            );
                        }
                        None => out.extend(s.entries.iter().map(|(_, i)| *i)),
                    },
                    Some(Cell::Unknown) | None => out.extend(s.entries.iter().map(|(_, i)| *i)),
                }
            }
        }
    }
}

fn file_keys(
    map: &mut HashMap<usize, (Family, KeyedShapes)>,
    idx: usize,
    column: usize,
    family: Family,
    keys: Vec<Vec<u8>>,
) {
    let by_key = &mut map
        .entry(column)
        .or_insert_with(|| (family, HashMap::new()))
        .1;
    for key in keys {
        by_key.entry(key).or_default().push(idx);
    }
}

fn unfile_keys(
    map: &mut HashMap<usize, (Family, KeyedShapes)>,
    idx: usize,
    column: usize,
    wanted: &[Vec<u8>],
) -> bool {
    let Some((_, keys)) = map.get_mut(&column) else {
        return false;
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
        map.remove(&column);
    }
    // A shape filed under no key at all (a condition nothing satisfies) is counted too.
    removed || wanted.is_empty()
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

/// A centered interval tree: the ranges containing the node's center, sorted by lower and by
/// upper bound, and subtrees for the ranges wholly below and wholly above it. A lookup visits
/// one node per level and only the ranges it reports (plus one per node).
#[derive(Debug)]
struct Tree {
    center: OrdKey,
    by_lo: Vec<(Span, usize)>,
    by_hi: Vec<(Span, usize)>,
    below: Option<Box<Tree>>,
    above: Option<Box<Tree>>,
}

fn lo_cmp(a: &Option<(OrdKey, bool)>, b: &Option<(OrdKey, bool)>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, _) => Ordering::Less,
        (_, None) => Ordering::Greater,
        (Some(x), Some(y)) => x.0.order(&y.0),
    }
}

fn hi_cmp(a: &Option<(OrdKey, bool)>, b: &Option<(OrdKey, bool)>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, _) => Ordering::Greater,
        (_, None) => Ordering::Less,
        (Some(x), Some(y)) => x.0.order(&y.0),
    }
}

impl Tree {
    fn build(entries: Vec<(Span, usize)>) -> Option<Box<Tree>> {
        if entries.is_empty() {
            return None;
        }
        let mut points: Vec<&OrdKey> = entries
            .iter()
            .flat_map(|(s, _)| s.lo.iter().chain(s.hi.iter()).map(|b| &b.0))
            .collect();
        if points.is_empty() {
            // Only unbounded ranges: they all contain everything; any center will do.
            let center = OrdKey::Int(0);
            return Some(Box::new(Tree {
                center,
                by_lo: entries.clone(),
                by_hi: entries,
                below: None,
                above: None,
            }));
        }
        points.sort_by(|a, b| a.order(b));
        let center = points[points.len() / 2].clone();
        let (mut below, mut above, mut here) = (Vec::new(), Vec::new(), Vec::new());
        let n = entries.len();
        for (span, idx) in entries {
            let wholly_below = match &span.hi {
                Some((h, incl)) => match h.order(&center) {
                    Ordering::Less => true,
                    Ordering::Equal => !incl,
                    Ordering::Greater => false,
                },
                None => false,
            };
            let wholly_above = match &span.lo {
                Some((l, incl)) => match l.order(&center) {
                    Ordering::Greater => true,
                    Ordering::Equal => !incl,
                    Ordering::Less => false,
                },
                None => false,
            };
            if wholly_below {
                below.push((span, idx));
            } else if wholly_above {
                above.push((span, idx));
            } else {
                here.push((span, idx));
            }
        }
        // No split (e.g. only empty ranges on one side of their own bound): keep them all
        // here, where every lookup checks each range fully.
        if below.len() == n {
            here = std::mem::take(&mut below);
        } else if above.len() == n {
            here = std::mem::take(&mut above);
        }
        let mut by_lo = here.clone();
        by_lo.sort_by(|a, b| lo_cmp(&a.0.lo, &b.0.lo));
        let mut by_hi = here;
        by_hi.sort_by(|a, b| hi_cmp(&b.0.hi, &a.0.hi));
        Some(Box::new(Tree {
            center,
            by_lo,
            by_hi,
            below: Tree::build(below),
            above: Tree::build(above),
        }))
    }

    /// Every shape whose range contains `v`.
    fn stab(&self, v: &OrdKey, out: &mut Vec<usize>) {
        match v.order(&self.center) {
            Ordering::Less => {
                // Ranges here reach the center, above `v`: only their lower bounds matter.
                for (span, idx) in &self.by_lo {
                    if let Some((l, _)) = &span.lo {
                        if l.order(v) == Ordering::Greater {
                            break;
                        }
                    }
                    if span.contains(v) {
                        out.push(*idx);
                    }
                }
                if let Some(b) = &self.below {
                    b.stab(v, out);
                }
            }
            Ordering::Greater => {
                for (span, idx) in &self.by_hi {
                    if let Some((h, _)) = &span.hi {
                        if h.order(v) == Ordering::Less {
                            break;
                        }
                    }
                    if span.contains(v) {
                        out.push(*idx);
                    }
                }
                if let Some(a) = &self.above {
                    a.stab(v, out);
                }
            }
            Ordering::Equal => {
                for (span, idx) in &self.by_lo {
                    if span.contains(v) {
                        out.push(*idx);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(f: Family, v: &str) -> Vec<u8> {
        index_key(f, v.as_bytes()).unwrap()
    }

    fn keys(column: usize, family: Family, values: &[&str]) -> Term {
        Some(Filed {
            column,
            family,
            filing: Filing::Keys(values.iter().map(|v| key(family, v)).collect()),
        })
    }

    fn bound(v: i64, incl: bool) -> Option<(OrdKey, bool)> {
        Some((OrdKey::Int(i128::from(v)), incl))
    }

    #[test]
    fn ranges_route_through_the_interval_tree_exactly() {
        let int = Family::Integer;
        // Shape k requires 10k <= n < 10k + 10 (k < 300), plus some open and unbounded ones.
        let mut spans: Vec<Span> = (0..300)
            .map(|k| Span {
                lo: bound(10 * k, true),
                hi: bound(10 * k + 10, false),
            })
            .collect();
        spans.push(Span {
            lo: None,
            hi: bound(5, true),
        });
        spans.push(Span {
            lo: bound(2990, false),
            hi: None,
        });
        spans.push(Span {
            lo: bound(100, false),
            hi: bound(100, true),
        });
        let mut r = TableRoutes::default();
        for (i, s) in spans.iter().enumerate() {
            r.add(
                i,
                Some(Filed {
                    column: 1,
                    family: int,
                    filing: Filing::Spans(vec![s.clone()]),
                }),
            );
        }
        for prepared in [false, true] {
            if prepared {
                r.prepare();
            }
            for v in [-7i64, 0, 5, 6, 99, 100, 101, 2989, 2990, 2991, 5000] {
                let text = v.to_string();
                let row = [Cell::Text(b"1"), Cell::Text(text.as_bytes())];
                let want: Vec<usize> = spans
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.contains(&OrdKey::Int(i128::from(v))))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(routed(&r, &[&row]), want, "n = {v} (prepared: {prepared})");
            }
        }
        let row = [Cell::Text(b"1"), Cell::Null];
        assert!(routed(&r, &[&row]).is_empty());
        for (i, s) in spans.iter().enumerate() {
            r.remove(
                i,
                &Some(Filed {
                    column: 1,
                    family: int,
                    filing: Filing::Spans(vec![s.clone()]),
                }),
            );
        }
        assert!(r.is_empty());
    }

    #[test]
    fn array_elements_route_by_key() {
        let int = Family::Integer;
        let mut r = TableRoutes::default();
        let elems = |v: &[&str]| {
            Some(Filed {
                column: 1,
                family: int,
                filing: Filing::Elems(v.iter().map(|x| key(int, x)).collect()),
            })
        };
        r.add(0, elems(&["7"]));
        r.add(1, elems(&["3", "4"]));
        let row = |v: &'static [u8]| [Cell::Text(b"1"), Cell::Text(v)];
        assert_eq!(routed(&r, &[&row(b"{1,7,NULL}")]), vec![0]);
        assert_eq!(routed(&r, &[&row(b"{4,7}")]), vec![0, 1]);
        assert_eq!(routed(&r, &[&row(b"{}")]), Vec::<usize>::new());
        r.remove(0, &elems(&["7"]));
        r.remove(1, &elems(&["3", "4"]));
        assert!(r.is_empty());
    }

    /// The routing invariant over real clauses: every shape whose clause matches a row is
    /// among the row's candidates (whatever the index filed it under).
    #[test]
    fn routing_never_drops_a_matching_shape() {
        use shapesync_filter::table::{ColumnInfo, TableInfo, TextLocale};
        use shapesync_filter::{parse_where, Row};
        let col = |name: &str, ty: &str, dims: i32| ColumnInfo {
            name: name.into(),
            type_oid: 0,
            type_name: ty.into(),
            dims,
            type_mod: -1,
            not_null: false,
            pk_index: None,
        };
        let mut table = TableInfo::new(
            1,
            "public".into(),
            "t".into(),
            vec![
                col("id", "int8", 0),
                col("n", "int4", 0),
                col("x", "numeric", 0),
                col("f", "float4", 0),
                col("s", "text", 0),
                col("a", "int4", 1),
                col("ta", "text", 1),
            ],
        );
        table.locale = TextLocale {
            collate: "C".into(),
            ctype: "C".into(),
            provider: "c".into(),
        };
        let clauses = [
            "n = 5",
            "n IN (1, 2, 3)",
            "n > 3",
            "n >= 3 AND n < 7",
            "n BETWEEN 2 AND 4",
            "n NOT BETWEEN 2 AND 4",
            "n < 2 OR n > 8",
            "x > 1.5 AND x <= 2.50",
            "x < 0",
            "f > 0.1",
            "f <= 1.5 AND id = 3",
            "s LIKE 'ab%'",
            "s LIKE 'abc'",
            "s LIKE '%b'",
            "s > 'b' AND s < 'c'",
            "s >= 'ab' OR s = 'zz'",
            "7 = ANY(a)",
            "a @> '{1,2}'",
            "a && '{3,9}'",
            "'{1}' <@ a",
            "ta @> ARRAY['x']",
            "n = ANY('{4,5}')",
            "n > 3 AND (s LIKE 'a%' OR s LIKE 'b%')",
            "n = 5 OR s = 'x'",
            "n <> 5",
            "x = 'NaN'",
            "f > 'NaN'",
            "f >= 'NaN'",
            "s LIKE 'a\\%b%'",
            "n > 2147483647",
        ];
        let shapes: Vec<_> = clauses
            .iter()
            .map(|c| parse_where(c, &table, &[]).unwrap_or_else(|e| panic!("{c}: {e}")))
            .collect();
        let mut routes = TableRoutes::default();
        let mut filed = 0;
        for (i, w) in shapes.iter().enumerate() {
            let term = w.route_term();
            filed += usize::from(term.is_some());
            routes.add(i, term);
        }
        let unfiled: Vec<&str> = clauses
            .iter()
            .zip(&shapes)
            .filter(|(_, w)| w.route_term().is_none())
            .map(|(c, _)| *c)
            .collect();
        assert!(
            filed >= clauses.len() - 4,
            "most clauses are indexed: not {unfiled:?}"
        );
        routes.prepare();
        struct R<'a>(&'a [Option<&'a str>]);
        impl Row for R<'_> {
            fn value(&self, c: usize) -> Option<&[u8]> {
                self.0[c].map(str::as_bytes)
            }
        }
        let ns = ["1", "2", "3", "4", "5", "7", "8", "9", "-1", "2147483647"];
        let xs = ["0", "1.5", "1.50", "2.5", "-3", "NaN", "Infinity"];
        let fs = ["0.1", "1.5", "-0", "NaN", "Infinity", "0.100000001"];
        let ss = [
            "ab", "abc", "a%bc", "b", "ba", "c", "zz", "x", "", "ab\u{ff}",
        ];
        let arrs = ["{}", "{1,2,3}", "{7}", "{NULL,9}", "{1}"];
        let tas = ["{}", "{x,y}", "{NULL}"];
        let mut checked = 0;
        for k in 0..400usize {
            let pick = |opts: &[&'static str], salt: usize| -> Option<&'static str> {
                let h = k.wrapping_mul(2654435761).wrapping_add(salt * 97) % (opts.len() + 1);
                opts.get(h).copied()
            };
            let values = [
                Some("1"),
                pick(&ns, 1),
                pick(&xs, 2),
                pick(&fs, 3),
                pick(&ss, 4),
                pick(&arrs, 5),
                pick(&tas, 6),
            ];
            let cells: Vec<Cell<'_>> = values
                .iter()
                .map(|v| match v {
                    Some(t) => Cell::Text(t.as_bytes()),
                    None => Cell::Null,
                })
                .collect();
            let mut cands = Vec::new();
            routes.candidates(&[&cells], &mut cands);
            for (i, w) in shapes.iter().enumerate() {
                if w.matches(&R(&values)) {
                    checked += 1;
                    assert!(
                        cands.contains(&i),
                        "{} matches {values:?} but was not routed",
                        clauses[i]
                    );
                }
            }
        }
        assert!(
            checked > 200,
            "enough matches to mean something ({checked})"
        );
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
        r.add(0, keys(1, int, &["7"]));
        r.add(1, keys(1, int, &["8"]));
        r.add(2, keys(2, text, &["a"]));
        r.add(3, None);
        r.add(4, keys(1, int, &["7.0"]));
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

        r.remove(0, &keys(1, int, &["7"]));
        r.remove(3, &None);
        assert_eq!(routed(&r, &[&row]), vec![4]);
        r.remove(4, &keys(1, int, &["7"]));
        r.remove(1, &keys(1, int, &["8"]));
        r.remove(2, &keys(2, text, &["a"]));
        assert!(r.is_empty());
        assert!(r.eq.is_empty(), "empty maps are dropped");
    }

    #[test]
    fn a_shape_filed_under_several_keys_is_found_by_each_and_removed_from_all() {
        let int = Family::Integer;
        let mut r = TableRoutes::default();
        let term = keys(1, int, &["3", "5"]);
        r.add(0, term.clone());
        r.add(1, keys(1, int, &["5"]));
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

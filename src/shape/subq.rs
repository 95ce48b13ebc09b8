//! Shapes whose where clause tests membership in subqueries (`col IN (SELECT …)`): what such a
//! shape keeps beyond its log, and the wire elements it adds (ARCHITECTURE.md, "Subqueries").
//!
//! A subquery shape knows which rows its clients hold: the **row index** (each present row's
//! key, primary key values, link values per membership position and active conditions). It is
//! filled by the snapshot and kept by every message the shape writes, so that when a value
//! leaves a subquery's result the rows it takes away are found (explicit deletes, then the
//! `move-out` event), and when one enters, rows already held are not sent again. Counts rather
//! than flags make it independent of the order in which the snapshot task and the writer
//! report rows: a row is present while its count is positive; each report carries a version
//! (its log offset; snapshot rows 0), and the newest one's values are kept.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use shapesync_filter::{Dnf, KeyKind, Subquery};

use super::message::{write_str, Cell};

/// The link values of each position (`None`: not a membership position).
pub type Links = Vec<Option<Vec<Option<Vec<u8>>>>>;

/// What a subquery shape keeps.
pub struct Subq {
    pub dnf: Dnf,
    /// The clause's subqueries, in its numbering (`dep`).
    pub deps: Vec<Arc<Subquery>>,
    /// Salt of the value hashes: the shape's handle (hashes change with the handle).
    pub salt: String,
    /// Per position, the key kinds of its link values (empty for other positions).
    kinds: Vec<Vec<KeyKind>>,
    index: Mutex<RowIndex>,
    /// A move-in's rows are not spliced yet: readers are not shown the log past it.
    pub holding: AtomicBool,
}

/// One present (or reported) row.
#[derive(Debug, Clone)]
pub struct Entry {
    pub count: i32,
    pub version: (u64, u64),
    /// The values of the table's key columns (table key order).
    pub pk: Vec<Option<Vec<u8>>>,
    pub links: Links,
    pub ac: Vec<bool>,
}

/// The rows a shape's clients hold.
#[derive(Debug, Default)]
pub struct RowIndex {
    rows: HashMap<Vec<u8>, Entry>,
    /// (position, link key) → keys of present rows with those link values.
    by_link: HashMap<(usize, Vec<u8>), HashSet<Vec<u8>>>,
    /// position → keys of present rows with a NULL in their link values there.
    null_links: HashMap<usize, HashSet<Vec<u8>>>,
    /// The snapshot is entirely reported: absence now means absence.
    pub loaded: bool,
}

/// The key of link values (none for a NULL: it is never equal to anything).
pub fn link_key(kinds: &[KeyKind], values: &[Option<&[u8]>]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for (v, k) in values.iter().zip(kinds) {
        let key = k.key((*v)?);
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(&key);
    }
    Some(out)
}

fn borrowed(values: &[Option<Vec<u8>>]) -> Vec<Option<&[u8]>> {
    values.iter().map(|v| v.as_deref()).collect()
}

impl Subq {
    pub fn new(dnf: Dnf, deps: Vec<Arc<Subquery>>, salt: String, loaded: bool) -> Subq {
        let kinds = dnf
            .positions
            .iter()
            .map(|p| match &p.leaf {
                shapesync_filter::Expr::InSubquery { sub, .. } => sub
                    .columns
                    .iter()
                    .map(|c| KeyKind::of(&sub.table, *c))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        Subq {
            dnf,
            deps,
            salt,
            kinds,
            index: Mutex::new(RowIndex {
                loaded,
                ..RowIndex::default()
            }),
            holding: AtomicBool::new(false),
        }
    }

    pub fn index(&self) -> MutexGuard<'_, RowIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// The link values of a row, per position.
    pub fn links_of(&self, row: &[Cell<'_>]) -> Links {
        self.dnf
            .positions
            .iter()
            .map(|p| {
                p.link_columns().map(|cols| {
                    cols.iter()
                        .map(|&c| row.get(c).and_then(|v| v.bytes()).map(<[u8]>::to_vec))
                        .collect()
                })
            })
            .collect()
    }

    /// The tags of a row with these link values.
    pub fn tags(&self, links: &Links) -> Vec<String> {
        let b: Vec<Option<Vec<Option<&[u8]>>>> = links
            .iter()
            .map(|l| l.as_ref().map(|v| borrowed(v)))
            .collect();
        self.dnf.tags(&self.salt, &b)
    }

    /// The value hash of `values` at `position`.
    pub fn hash(&self, position: usize, values: &[Option<Vec<u8>>]) -> String {
        self.dnf.value_hash(&self.salt, position, &borrowed(values))
    }

    /// The link key of `values` at `position`.
    pub fn key_at(&self, position: usize, values: &[Option<Vec<u8>>]) -> Option<Vec<u8>> {
        link_key(&self.kinds[position], &borrowed(values))
    }
}

impl RowIndex {
    fn unlink(&mut self, kinds: &[Vec<KeyKind>], key: &[u8], links: &Links) {
        for (p, l) in links.iter().enumerate() {
            let Some(l) = l else { continue };
            match link_key(&kinds[p], &borrowed(l)) {
                Some(k) => {
                    if let Some(set) = self.by_link.get_mut(&(p, k.clone())) {
                        set.remove(key);
                        if set.is_empty() {
                            self.by_link.remove(&(p, k));
                        }
                    }
                }
                None => {
                    if let Some(set) = self.null_links.get_mut(&p) {
                        set.remove(key);
                    }
                }
            }
        }
    }

    fn link(&mut self, kinds: &[Vec<KeyKind>], key: &[u8], links: &Links) {
        for (p, l) in links.iter().enumerate() {
            let Some(l) = l else { continue };
            match link_key(&kinds[p], &borrowed(l)) {
                Some(k) => {
                    self.by_link.entry((p, k)).or_default().insert(key.to_vec());
                }
                None => {
                    self.null_links.entry(p).or_default().insert(key.to_vec());
                }
            }
        }
    }

    /// A row reported present (`delta` +1: snapshot row, insert, move-in row), absent (-1:
    /// delete) or changed (0: update), at `version`.
    pub fn report(
        &mut self,
        subq: &Subq,
        key: &[u8],
        delta: i32,
        version: (u64, u64),
        entry: (Vec<Option<Vec<u8>>>, Links, Vec<bool>),
    ) {
        let (pk, links, ac) = entry;
        let e = self.rows.entry(key.to_vec()).or_insert_with(|| Entry {
            count: 0,
            version: (0, 0),
            pk: Vec::new(),
            links: Vec::new(),
            ac: Vec::new(),
        });
        let was = e.count > 0;
        let old_links = std::mem::take(&mut e.links);
        e.count += delta;
        let newer = version >= e.version || e.pk.is_empty();
        if newer {
            e.version = version;
            e.pk = pk;
            e.links = links;
            e.ac = ac;
        } else {
            e.links = old_links.clone();
        }
        let now = e.count > 0;
        let new_links = e.links.clone();
        let drop_entry = !now && self.loaded;
        if was {
            self.unlink(&subq.kinds, key, &old_links);
        }
        if now {
            self.link(&subq.kinds, key, &new_links);
        }
        if drop_entry {
            self.rows.remove(key);
        }
    }

    /// The snapshot is entirely reported: rows not present are forgotten.
    pub fn finish_loading(&mut self) {
        self.loaded = true;
        self.rows.retain(|_, e| e.count > 0);
    }

    pub fn present(&self, key: &[u8]) -> Option<&Entry> {
        self.rows.get(key).filter(|e| e.count > 0)
    }

    /// Keys of present rows whose link values at `position` have key `link`.
    pub fn with_link(&self, position: usize, link: &[u8]) -> Vec<Vec<u8>> {
        self.by_link
            .get(&(position, link.to_vec()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Keys of present rows with a NULL in their link values at `position`.
    pub fn with_null_link(&self, position: usize) -> Vec<Vec<u8>> {
        self.null_links
            .get(&position)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Keys of every present row.
    pub fn all(&self) -> Vec<Vec<u8>> {
        self.rows
            .iter()
            .filter(|(_, e)| e.count > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// New active conditions of a present row.
    pub fn set_ac(&mut self, key: &[u8], ac: Vec<bool>) {
        if let Some(e) = self.rows.get_mut(key) {
            e.ac = ac;
        }
    }

    /// A present row leaves (a move-out's delete).
    pub fn take(&mut self, subq: &Subq, key: &[u8]) -> Option<Entry> {
        let e = self.rows.remove(key)?;
        self.unlink(&subq.kinds, key, &e.links);
        Some(e)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// `,"tags":[…],"active_conditions":[…]` and, for an update, `,"removed_tags":[…]`.
pub fn write_tag_headers(
    out: &mut Vec<u8>,
    tags: &[String],
    ac: &[bool],
    removed: Option<&[String]>,
) {
    let list = |out: &mut Vec<u8>, items: &[String]| {
        out.push(b'[');
        for (i, t) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, t.as_bytes());
        }
        out.push(b']');
    };
    out.extend_from_slice(b",\"tags\":");
    list(out, tags);
    if let Some(r) = removed {
        out.extend_from_slice(b",\"removed_tags\":");
        list(out, r);
    }
    out.extend_from_slice(b",\"active_conditions\":[");
    for (i, a) in ac.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(if *a { b"true" } else { b"false" });
    }
    out.push(b']');
}

/// `{"headers":{"event":"move-in"|"move-out","patterns":[{"pos":p,"value":"…"},…],"txids":[…]}}`
pub fn event(kind: &str, patterns: &[(usize, String)], xids: &[u32]) -> Vec<u8> {
    let mut out = format!("{{\"headers\":{{\"event\":\"{kind}\",\"patterns\":[").into_bytes();
    for (i, (pos, value)) in patterns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"pos\":{pos},\"value\":").as_bytes());
        write_str(&mut out, value.as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"txids\":[");
    let xids: Vec<String> = xids.iter().map(u32::to_string).collect();
    out.extend_from_slice(xids.join(",").as_bytes());
    out.extend_from_slice(b"]}}");
    out
}

/// Tags no longer carried: those of `old` not in `new`.
pub fn removed(old: &[String], new: &[String]) -> Vec<String> {
    old.iter().filter(|t| !new.contains(t)).cloned().collect()
}

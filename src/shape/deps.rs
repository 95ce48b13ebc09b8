//! The results of subqueries, kept by the writer for every subquery some shape's where clause
//! uses (one per distinct subquery, shared by its shapes): a [`View`] of the selected values of
//! the inner table's matching rows, seeded by a query and kept by the stream, and the net
//! changes of its values in the open transaction (the moves of its shapes).

use std::collections::HashMap;
use std::sync::Arc;

use shapesync_filter::{KeyKind, Subquery, View};
use tokio::sync::watch;

use super::visibility::SnapshotInfo;
use crate::lsn::Lsn;

/// Owned text values of a row's selected columns (`None` = NULL).
pub type Values = Vec<Option<Vec<u8>>>;

/// Where a dependency stands, for creations waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepStatus {
    Seeding,
    Ready,
    Failed(String),
}

/// One change to a dependency's rows, kept until its seed's visibility is known (and, in
/// a transaction, until its commit).
pub enum DepOp {
    Add(Values),
    Remove(Values),
    /// A nested dependency's row changed (all columns; `None`: absent): judged at commit,
    /// with its own subqueries' results as they are then.
    Row {
        old: Option<Values>,
        new: Option<Values>,
    },
}

/// A dependency whose clause holds subqueries of its own: it keeps every row of its table
/// (all columns), so that when a value of an inner result moves, the rows it decides are
/// judged again.
#[derive(Default)]
pub struct Nested {
    /// The dependency ids of its clause's subqueries (clause numbering).
    pub children: Vec<usize>,
    /// Row key → (all column values, whether it is in the result).
    pub rows: HashMap<Vec<u8>, (Values, bool)>,
    /// (clause dependency, link key) → keys of rows with that link value.
    pub by_link: HashMap<(usize, Vec<u8>), std::collections::HashSet<Vec<u8>>>,
    /// Each membership of its clause: (clause dependency, link columns, their key kinds).
    pub links: Vec<(usize, Vec<usize>, Vec<KeyKind>)>,
    /// Values that moved in its subqueries' results in the open transaction.
    pub child_moves: Vec<(usize, Vec<Values>)>,
}

pub enum DepPhase {
    /// The seed query has not reported its snapshot: changes are kept with their xids.
    Seeding(Vec<(u32, DepOp)>),
    /// Transactions the seed already contains are skipped.
    Filtering(SnapshotInfo),
    Live,
}

/// A subquery's current result.
pub struct Dep {
    /// Its SQL (how equal subqueries are found).
    pub key: String,
    pub sub: Arc<Subquery>,
    pub view: View,
    kinds: Vec<KeyKind>,
    pub phase: DepPhase,
    /// Sinks of the shapes using it.
    pub users: Vec<usize>,
    pub status: watch::Sender<DepStatus>,
    /// The transaction seen last, and whether it is skipped.
    pub txn_lsn: Lsn,
    pub txn_skip: bool,
    /// Values changed in the open transaction: their presence before it.
    pub before: HashMap<Vec<u8>, (Values, bool)>,
    /// The view was empty when the open transaction began.
    pub was_empty: bool,
    /// The open transaction's changes, applied at its commit: every change of a transaction
    /// is judged with the results as they were before it (a value in and out again inside
    /// one transaction then moves nothing, and judged nothing either).
    pub txn_ops: Vec<DepOp>,
    /// A dependency with subqueries of its own.
    pub nested: Option<Nested>,
    /// 0 for a dependency without subqueries, else one more than its deepest subquery's:
    /// a transaction's changes are settled deepest first.
    pub depth: usize,
    /// Dependencies whose clauses use this one.
    pub parents: Vec<usize>,
    /// Settled in the open transaction already (its moves computed).
    pub settled: bool,
}

/// The net change of a dependency in one transaction.
#[derive(Debug, Default)]
pub struct Moves {
    /// Values that entered the result, and those that left it.
    pub entered: Vec<Values>,
    pub left: Vec<Values>,
    /// The result went from empty to not empty or back (`x NOT IN` of a NULL changes).
    pub emptiness_changed: bool,
}

impl Moves {
    pub fn is_empty(&self) -> bool {
        self.entered.is_empty() && self.left.is_empty() && !self.emptiness_changed
    }
}

fn borrowed(v: &Values) -> Vec<Option<&[u8]>> {
    v.iter().map(|c| c.as_deref()).collect()
}

impl Dep {
    pub fn new(key: String, sub: Arc<Subquery>) -> Dep {
        let kinds = sub
            .columns
            .iter()
            .map(|c| KeyKind::of(&sub.table, *c))
            .collect();
        Dep {
            key,
            view: View::of(&sub),
            sub,
            kinds,
            phase: DepPhase::Seeding(Vec::new()),
            users: Vec::new(),
            status: watch::channel(DepStatus::Seeding).0,
            txn_lsn: Lsn::ZERO,
            txn_skip: false,
            before: HashMap::new(),
            was_empty: true,
            txn_ops: Vec::new(),
            nested: None,
            depth: 0,
            parents: Vec::new(),
            settled: false,
        }
    }

    /// A key for values, NULLs included (to net a transaction's changes).
    fn values_key(&self, v: &Values) -> Vec<u8> {
        let mut out = Vec::new();
        for (c, k) in v.iter().zip(&self.kinds) {
            match c {
                None => out.push(0),
                Some(b) => {
                    let key = k.key(b);
                    out.push(1);
                    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
                    out.extend_from_slice(&key);
                }
            }
        }
        out
    }

    /// Apply a change to the view, noting what it changes for the open transaction.
    pub fn apply(&mut self, op: DepOp) {
        let (values, add) = match op {
            DepOp::Add(v) => (v, true),
            DepOp::Remove(v) => (v, false),
            // Judged by the writer (it needs the inner results).
            DepOp::Row { .. } => return,
        };
        let key = self.values_key(&values);
        if !self.before.contains_key(&key) {
            let present = self.view.contains(&borrowed(&values));
            self.before.insert(key, (values.clone(), present));
        }
        if add {
            self.view.add(&borrowed(&values));
        } else {
            self.view.remove(&borrowed(&values));
        }
    }

    /// Start of a transaction (the first change of it this dependency sees).
    pub fn begin(&mut self) {
        self.before.clear();
        self.txn_ops.clear();
        self.was_empty = self.view.is_empty();
    }

    /// The commit of the open transaction: its changes are applied; what they changed, net
    /// (a value in and out again did not move).
    pub fn moves(&mut self) -> Moves {
        if self.nested.is_none() {
            for op in std::mem::take(&mut self.txn_ops) {
                self.apply(op);
            }
        }
        // Taken, not drained: an idle dependency keeps no capacity.
        let before = std::mem::take(&mut self.before);
        let mut m = Moves {
            emptiness_changed: self.was_empty != self.view.is_empty(),
            ..Moves::default()
        };
        for (_, (values, before)) in before {
            let now = self.view.contains(&borrowed(&values));
            match (before, now) {
                (false, true) => m.entered.push(values),
                (true, false) => m.left.push(values),
                _ => {}
            }
        }
        self.was_empty = self.view.is_empty();
        m
    }
}

//! The shape log writer: takes the decoded replication stream of one source database, routes each
//! change to the shapes of its table, converts it per shape (where clause moves in and out,
//! column projection, replica mode, primary-key changes), appends it to the shape logs, and makes
//! batches of transactions durable together before their LSN may be acknowledged.
//!
//! Invariants:
//! - A change's offset is `<commit LSN>_<op>` with `op` = 2 × its position in the transaction
//!   (+1 for the insert half of a primary-key change), so a transaction replayed after a restart
//!   produces the same offsets; anything at or before a shape's last offset is a replay and is
//!   skipped. Nothing is duplicated, nothing is lost.
//! - The acknowledged LSN never passes data that is not durable in every shape log, and never
//!   passes changes held in memory for a shape whose snapshot has not started yet.
//! - A shape's changes are held back until its snapshot's visibility is known, then each
//!   transaction already contained in the snapshot is dropped (see [`super::visibility`]).
//! - The `last` header goes on a shape's last change of each transaction: the latest change per
//!   shape is held until the next one or the commit.

use std::collections::HashMap;
use std::sync::Arc;

use shapesync_storage::{LogOffset, ShapeLog};
use tokio::sync::oneshot;

use super::definition::Replica;
use super::definition::ShapeHandle;
use super::deps::{Dep, DepOp, DepPhase, DepStatus, Moves, Values};
use super::message::{close, Cell, ChangeHeaders, Op};
use super::registry::Registry;
use super::route::TableRoutes;
use super::visibility::{SnapshotInfo, Verdict};
use super::{Lifecycle, Shape};
use crate::lsn::{AtomicLsn, Lsn};
use crate::metrics::{IntegrityCounters, IntegrityEvent};
use crate::replication::pgoutput::{OldTuple, Relation, ReplicaIdentity, TupleData, Value};
use shapesync_filter::table::TableInfo;
use shapesync_filter::terms::Term;
use shapesync_filter::{Subquery, View};
use tokio::sync::{mpsc, watch};

/// A buffered record standing for a move of one of the shape's subqueries in a transaction
/// seen before its snapshot started: unless the snapshot contains that transaction, the shape
/// is rotated.
const MOVED: &[u8] = b"\0moved";

/// Requests to the writer from the rest of the stack. They are handled between transactions.
pub enum Command {
    /// Start routing changes to a new shape (held in memory until `SnapshotStarted`); `done`
    /// fires once every transaction the writer handles from now on reaches the shape, with
    /// false if the shape was refused (it describes its table otherwise than a newer shape:
    /// the table changed while it was created).
    Add {
        shape: Arc<Shape>,
        done: oneshot::Sender<bool>,
    },
    SnapshotStarted {
        handle: ShapeHandle,
        info: SnapshotInfo,
    },
    Remove {
        handle: ShapeHandle,
    },
    /// Keep a subquery's result from now on (a shape about to be created uses it). `done`
    /// gets its id, its status, and whether the caller must seed it (`DepSeeded`).
    AddDep {
        sub: Arc<Subquery>,
        done: oneshot::Sender<(usize, watch::Receiver<DepStatus>, bool)>,
    },
    /// A subquery's rows as of a snapshot.
    DepSeeded {
        id: usize,
        info: SnapshotInfo,
        rows: Vec<Values>,
    },
    /// Seeding a subquery's result failed.
    DepFailed {
        id: usize,
        error: String,
    },
    /// A move-in query's rows (all columns) with its snapshot and the WAL position then, or
    /// why it failed.
    MoveIn {
        handle: ShapeHandle,
        seq: u64,
        result: Result<(SnapshotInfo, u64, Vec<Values>), String>,
    },
}

/// Rows of a shape's table to query because values entered one of its subqueries' results
/// (or, `broad`, because a `NOT IN` may hold for any row now).
pub struct MoveRequest {
    pub shape: Arc<Shape>,
    pub seq: u64,
    /// The clause's dependency number.
    pub dep: usize,
    pub values: Vec<Values>,
    pub broad: bool,
    /// Rows with a NULL in a row form's link are asked for too (`NOT IN`).
    pub null_links: bool,
    /// The transaction that moved the values: the rows are read in a snapshot containing it.
    pub xid: u32,
}

/// A move-in not spliced yet: the keys changed since it was asked for, with their
/// transactions, and its rows once they arrive.
struct Pending {
    seq: u64,
    touched: Vec<(u32, Vec<u8>)>,
    rows: Option<(SnapshotInfo, u64, Vec<Values>)>,
}

/// Sinks by value key.
type Filed = HashMap<Vec<u8>, Vec<usize>>;

/// Subquery shapes of one table filed by link value: per link column, its key kind and
/// value key → sinks.
#[derive(Default)]
struct MemberRoutes {
    by_column: Vec<(usize, shapesync_filter::KeyKind, Filed)>,
}

impl MemberRoutes {
    fn column(
        &mut self,
        column: usize,
        kind: shapesync_filter::KeyKind,
    ) -> &mut HashMap<Vec<u8>, Vec<usize>> {
        let at = match self.by_column.iter().position(|(c, _, _)| *c == column) {
            Some(i) => i,
            None => {
                self.by_column.push((column, kind, HashMap::new()));
                self.by_column.len() - 1
            }
        };
        &mut self.by_column[at].2
    }

    fn file(&mut self, column: usize, kind: shapesync_filter::KeyKind, key: Vec<u8>, idx: usize) {
        let v = self.column(column, kind).entry(key).or_default();
        if !v.contains(&idx) {
            v.push(idx);
        }
    }

    fn unfile(&mut self, column: usize, key: &[u8], idx: usize) {
        if let Some((_, _, map)) = self.by_column.iter_mut().find(|(c, _, _)| *c == column) {
            if let Some(v) = map.get_mut(key) {
                v.retain(|&i| i != idx);
                if v.is_empty() {
                    map.remove(key);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.by_column.iter().all(|(_, _, m)| m.is_empty())
    }

    /// Sinks filed under the link values of `rows`.
    fn candidates(&self, rows: &[&[Cell<'_>]], out: &mut Vec<usize>) {
        for (column, kind, map) in &self.by_column {
            for r in rows {
                if let Some(Cell::Text(b)) = r.get(*column) {
                    let key = kind.key(b);
                    let mut joined = Vec::with_capacity(key.len() + 4);
                    joined.extend_from_slice(&(key.len() as u32).to_be_bytes());
                    joined.extend_from_slice(&key);
                    if let Some(v) = map.get(&joined) {
                        out.extend_from_slice(v);
                    }
                }
            }
        }
    }

    fn all(&self, out: &mut Vec<usize>) {
        for (_, _, map) in &self.by_column {
            for v in map.values() {
                out.extend_from_slice(v);
            }
        }
    }
}

/// A subquery shape whose rows all hold a value of one subquery's result in one column (its
/// clause is one conjunction with a positive one-column membership): (clause dependency,
/// column). Such a shape needs only the changes of rows with those values.
fn member_route(shape: &Shape) -> Option<(usize, usize)> {
    let subq = shape.subq.as_ref()?;
    let [only] = subq.dnf.disjuncts.as_slice() else {
        return None;
    };
    only.iter().find_map(|&p| {
        let pos = &subq.dnf.positions[p];
        match (pos.dep(), pos.link_columns()) {
            (Some(k), Some([c])) if !pos.negated => Some((k, *c)),
            _ => None,
        }
    })
}

/// The kind of a row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

enum Phase {
    /// Snapshot visibility unknown yet: records kept in memory with their transaction ids. An
    /// empty record marks a change that lacked a value the shape needed: the shape is rotated
    /// unless the snapshot turns out to contain that transaction.
    Buffering(Vec<(u32, LogOffset, Vec<u8>)>),
    Filtering(SnapshotInfo),
    Live,
}

struct Sink {
    shape: Arc<Shape>,
    phase: Phase,
    /// Latest offset appended (durable or not); anything at or before it is a replay.
    last: LogOffset,
    /// The shape's latest change in the open transaction, not yet closed.
    held: Option<(LogOffset, Vec<u8>)>,
    /// Commit LSN of the transaction this sink last saw, and whether it skips it.
    txn_lsn: Lsn,
    txn_skip: bool,
    dirty: bool,
    /// Listed in `Writer::touched` / `Writer::dirty` (flags, so a transaction fanning out to
    /// thousands of shapes stays linear).
    in_touched: bool,
    in_dirty: bool,
    /// The last change routed to this shape (dedup). Where the routing index files it is not
    /// kept: it is derived again from the where clause when the shape leaves (an idle shape
    /// then holds one copy of its keys, in the index: target P7).
    seen: u64,
    /// A subquery shape: the dependency ids of its clause's subqueries (clause numbering).
    deps: Vec<usize>,
    /// Filed by the values of one of its subqueries' results (see `member_route`): (clause
    /// dependency, link column).
    member: Option<(usize, usize)>,
    /// Its move-ins waiting for their rows.
    pending: Vec<Pending>,
    /// Row index reports of buffered changes, applied with them when the snapshot starts.
    reports: Vec<(u32, Report)>,
}

/// A shape's messages for one change, with their offsets.
type Records = Vec<(LogOffset, Vec<u8>)>;

/// A change to a subquery shape's row index: key, count delta, version, (pk, links, ac).
type Report = (
    Vec<u8>,
    i32,
    (u64, u64),
    (Vec<Option<Vec<u8>>>, super::subq::Links, Vec<bool>),
);

struct Txn {
    lsn: Lsn,
    xid: u32,
    next_op: u64,
}

pub struct Writer {
    registry: Arc<Registry>,
    sinks: Vec<Option<Sink>>,
    free: Vec<usize>,
    by_handle: HashMap<ShapeHandle, usize>,
    by_table: HashMap<u32, std::collections::BTreeSet<usize>>,
    /// The routing index per table (see [`super::route`]).
    routes: HashMap<u32, TableRoutes>,
    /// Partitions: the partitioned ancestors of a relation, nearest first, as the catalog
    /// gave them when its Relation message arrived. A change of a partition also belongs to
    /// the shapes of every ancestor (pgoutput sends it under the partition's own relation id).
    lineages: HashMap<u32, Arc<[u32]>>,
    /// (partition, ancestor) → for each ancestor column, the partition column holding it
    /// (partitions have the parent's columns, maybe in another order). Built on first use.
    ancestor_maps: HashMap<(u32, u32), Arc<[Option<usize>]>>,
    /// Counts shapes taken out of service because a change lacked a value they needed.
    integrity: Arc<IntegrityCounters>,
    /// Woken when a relation with shapes arrives without `REPLICA IDENTITY FULL`, so that the
    /// schema check repairs it at once.
    identity_alert: Arc<tokio::sync::Notify>,
    /// Candidates of the change being routed (reused), and its number.
    candidates: Vec<usize>,
    change_no: u64,
    txn: Option<Txn>,
    touched: Vec<usize>,
    dirty: Vec<usize>,
    /// Commit LSN and end LSN of the latest transaction handled.
    last_commit: Option<(Lsn, Lsn)>,
    txns_since_flush: usize,
    /// Bytes of change records appended since the last flush started.
    bytes_since_flush: usize,
    /// Latest commit LSN made durable, shared with the HTTP side (`global_last_seen_lsn`).
    global_lsn: Arc<AtomicLsn>,
    /// Flush batch latency.
    fsync: Arc<crate::metrics::Histogram>,
    /// Subqueries' results (ids are never reused), by SQL and by table.
    deps: Vec<Option<Dep>>,
    dep_by_key: HashMap<String, usize>,
    deps_by_table: HashMap<u32, Vec<usize>>,
    /// The routing index of each table's dependencies (by their clauses' terms, as shapes
    /// are filed): a change reaches only the subqueries whose result it can change.
    dep_routes: HashMap<u32, TableRoutes>,
    /// Candidates of the change being routed to dependencies (reused).
    dep_candidates: Vec<usize>,
    /// Dependencies changed in the open transaction.
    deps_in_txn: Vec<usize>,
    /// Subquery shapes filed by the values of a subquery's result, per table: a change is
    /// routed to those whose result holds its row's link value (old or new).
    member_routes: HashMap<u32, MemberRoutes>,
    /// Where move-in queries are sent (the stack runs them).
    move_requests: Option<mpsc::UnboundedSender<MoveRequest>>,
    move_seq: u64,
    /// Move-ins whose rows arrived, waiting for the stream to pass their snapshot.
    arrived: Vec<(ShapeHandle, u64)>,
    /// How far the stream is known to have gone (commits handled, idle keepalives).
    wal_pos: u64,
    /// Write a delete for each row a move-out takes away, before the event.
    move_out_deletes: bool,
}

impl Writer {
    pub fn new(
        registry: Arc<Registry>,
        global_lsn: Arc<AtomicLsn>,
        fsync: Arc<crate::metrics::Histogram>,
    ) -> Self {
        Writer {
            registry,
            sinks: Vec::new(),
            free: Vec::new(),
            by_handle: HashMap::new(),
            by_table: HashMap::new(),
            routes: HashMap::new(),
            lineages: HashMap::new(),
            ancestor_maps: HashMap::new(),
            integrity: Arc::default(),
            identity_alert: Arc::default(),
            candidates: Vec::new(),
            change_no: 0,
            txn: None,
            touched: Vec::new(),
            dirty: Vec::new(),
            last_commit: None,
            txns_since_flush: 0,
            bytes_since_flush: 0,
            global_lsn,
            fsync,
            deps: Vec::new(),
            dep_by_key: HashMap::new(),
            deps_by_table: HashMap::new(),
            dep_routes: HashMap::new(),
            dep_candidates: Vec::new(),
            deps_in_txn: Vec::new(),
            member_routes: HashMap::new(),
            move_requests: None,
            move_seq: 0,
            arrived: Vec::new(),
            wal_pos: 0,
            move_out_deletes: true,
        }
    }

    /// Whether subquery shapes write deletes before move-out events (the official client
    /// ignores the events; off, the log is the reference's byte for byte in kind).
    pub fn with_move_out_deletes(mut self, on: bool) -> Self {
        self.move_out_deletes = on;
        self
    }

    /// Where move-in queries go (without it, a shape whose subquery gains values is rotated).
    pub fn with_move_requests(mut self, tx: mpsc::UnboundedSender<MoveRequest>) -> Self {
        self.move_requests = Some(tx);
        self
    }

    /// Where shapes rotated for a missing value are counted, and what to wake when a relation
    /// with shapes streams without `REPLICA IDENTITY FULL`.
    pub fn with_checks(
        mut self,
        integrity: Arc<IntegrityCounters>,
        identity_alert: Arc<tokio::sync::Notify>,
    ) -> Self {
        self.integrity = integrity;
        self.identity_alert = identity_alert;
        self
    }

    /// Route to a shape restored from disk (its snapshot is complete).
    pub fn restore(&mut self, shape: Arc<Shape>, snapshot: Option<SnapshotInfo>) {
        let last = shape.log.latest_offset();
        // Once a real change is stored, every later transaction committed after the snapshot.
        let phase = match snapshot {
            Some(info) if last.is_snapshot() => Phase::Filtering(info),
            _ => Phase::Live,
        };
        self.add_sink(shape, phase, last);
    }

    /// Route to a subquery shape restored from disk and brought to `info`'s snapshot (its
    /// dependencies kept already): transactions that snapshot contains are skipped.
    pub fn restore_reconciled(&mut self, shape: Arc<Shape>, info: SnapshotInfo) -> bool {
        let last = shape.log.latest_offset();
        self.add_sink(shape, Phase::Filtering(info), last)
    }

    /// Routes changes to `shape` from now on; false (and the shape taken out of the registry)
    /// if a newer shape describes the table otherwise.
    fn add_sink(&mut self, shape: Arc<Shape>, phase: Phase, last: LogOffset) -> bool {
        let oid = shape.table.oid;
        let handle = shape.handle.clone();
        let term = shape.filter.as_ref().and_then(|f| f.route_term());
        // Every shape of a table describes it the same way (column names and order): of two
        // that differ, the older one was read before the table changed, and is stale.
        // The sinks of a table always share one layout (a shape that differs is either stale
        // or makes all of them stale), so one stands for all: the scan below runs only when a
        // table changed, and adding N shapes of a table stays O(N), not O(N²) (a restart with
        // 100,000 shapes spent minutes here).
        let differs = self
            .by_table
            .get(&oid)
            .and_then(|v| v.iter().find_map(|&i| self.sinks[i].as_ref()))
            .is_some_and(|s| {
                !Arc::ptr_eq(&s.shape.table, &shape.table)
                    && !same_layout(&s.shape.table, &shape.table)
            });
        let minted = |h: &ShapeHandle| h.minted_micros().unwrap_or(0);
        let mut stale: Vec<ShapeHandle> = Vec::new();
        for s in self
            .by_table
            .get(&oid)
            .filter(|_| differs)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.sinks[i].as_ref())
            .filter(|s| !same_layout(&s.shape.table, &shape.table))
        {
            if minted(&s.shape.handle) > minted(&shape.handle) {
                stale = vec![shape.handle.clone()];
                break;
            }
            stale.push(s.shape.handle.clone());
        }
        if stale.first() == Some(&shape.handle) {
            self.registry.remove(&shape.handle, Lifecycle::Gone);
            return false;
        }
        for h in stale {
            self.invalidate(&h, "table schema changed");
        }
        // A subquery shape uses the results kept for its subqueries (ready before it is added).
        let mut deps = Vec::new();
        if let Some(subq) = &shape.subq {
            for sub in &subq.deps {
                match self.dep_by_key.get(&sub.sql()) {
                    Some(&id)
                        if self.deps[id]
                            .as_ref()
                            .is_some_and(|d| !matches!(d.phase, DepPhase::Seeding(_))) =>
                    {
                        deps.push(id)
                    }
                    _ => {
                        self.registry.remove(&shape.handle, Lifecycle::Gone);
                        return false;
                    }
                }
            }
        }
        let member = member_route(&shape).filter(|&(k, _)| k < deps.len());
        let sink = Sink {
            shape,
            phase,
            last,
            held: None,
            txn_lsn: Lsn::ZERO,
            txn_skip: false,
            dirty: false,
            in_touched: false,
            in_dirty: false,
            seen: 0,
            deps: deps.clone(),
            member,
            pending: Vec::new(),
            reports: Vec::new(),
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.sinks[i] = Some(sink);
                i
            }
            None => {
                self.sinks.push(Some(sink));
                self.sinks.len() - 1
            }
        };
        self.by_handle.insert(handle, idx);
        for &id in &deps {
            if let Some(d) = self.deps[id].as_mut() {
                d.users.push(idx);
            }
        }
        self.by_table.entry(oid).or_default().insert(idx);
        // A partitioned table's column maps are rebuilt from this shape's description.
        self.ancestor_maps.retain(|&(_, anc), _| anc != oid);
        match member {
            Some((k, column)) => {
                let kind = self.sinks[idx]
                    .as_ref()
                    .map(|s| shapesync_filter::KeyKind::of(&s.shape.table, column));
                let keys: Vec<Vec<u8>> = self.deps[deps[k]]
                    .as_ref()
                    .map(|d| d.view.keys().map(<[u8]>::to_vec).collect())
                    .unwrap_or_default();
                if let Some(kind) = kind {
                    let routes = self.member_routes.entry(oid).or_default();
                    // An empty result files nothing yet: the column is known all the same.
                    routes.column(column, kind);
                    for key in keys {
                        routes.file(column, kind, key, idx);
                    }
                }
            }
            None => self.routes.entry(oid).or_default().add(idx, term),
        }
        true
    }

    fn drop_sink(&mut self, handle: &ShapeHandle) -> Option<Arc<Shape>> {
        let idx = self.by_handle.remove(handle)?;
        let sink = self.sinks[idx].take()?;
        let oid = sink.shape.table.oid;
        // O(log N): invalidating all the shapes of a table (dropped, say) stays O(N log N).
        if let Some(v) = self.by_table.get_mut(&oid) {
            v.remove(&idx);
        }
        match sink.member {
            Some((k, column)) => {
                let keys: Vec<Vec<u8>> = sink
                    .deps
                    .get(k)
                    .and_then(|&id| self.deps[id].as_ref())
                    .map(|d| d.view.keys().map(<[u8]>::to_vec).collect())
                    .unwrap_or_default();
                if let Some(r) = self.member_routes.get_mut(&oid) {
                    for key in keys {
                        r.unfile(column, &key, idx);
                    }
                    if r.is_empty() && self.by_table.get(&oid).is_none_or(|v| v.is_empty()) {
                        self.member_routes.remove(&oid);
                    }
                }
            }
            None => {
                if let Some(r) = self.routes.get_mut(&oid) {
                    let term: Term = sink.shape.filter.as_ref().and_then(|f| f.route_term());
                    r.remove(idx, &term);
                    if r.is_empty() {
                        self.routes.remove(&oid);
                    }
                }
            }
        }
        // Only a sink listed there is looked for (its flags say so).
        if sink.in_touched {
            self.touched.retain(|&i| i != idx);
        }
        if sink.in_dirty {
            self.dirty.retain(|&i| i != idx);
        }
        self.free.push(idx);
        self.ancestor_maps.retain(|&(_, anc), _| anc != oid);
        for &id in &sink.deps {
            let unused = self.deps[id].as_mut().is_some_and(|d| {
                d.users.retain(|&u| u != idx);
                d.users.is_empty() && d.parents.is_empty()
            });
            if unused {
                self.drop_dep(id);
            }
        }
        Some(sink.shape)
    }

    /// Stop keeping a subquery's result.
    fn drop_dep(&mut self, id: usize) {
        let Some(dep) = self.deps[id].take() else {
            return;
        };
        // Its subqueries are kept while a shape or another subquery uses them.
        for c in dep.nested.iter().flat_map(|n| n.children.iter().copied()) {
            let orphan = self.deps[c].as_mut().is_some_and(|d| {
                d.parents.retain(|&p| p != id);
                d.parents.is_empty() && d.users.is_empty()
            });
            if orphan {
                self.drop_dep(c);
            }
        }
        self.dep_by_key.remove(&dep.key);
        let oid = dep.sub.table.oid;
        if let Some(v) = self.deps_by_table.get_mut(&oid) {
            v.retain(|&d| d != id);
            if v.is_empty() {
                self.deps_by_table.remove(&oid);
            }
        }
        if let Some(r) = self.dep_routes.get_mut(&oid) {
            let term: Term = dep.sub.filter.as_ref().and_then(|f| f.route_term());
            r.remove(id, &term);
            if r.is_empty() {
                self.dep_routes.remove(&oid);
            }
        }
    }

    /// A subquery's result can no longer be trusted: its shapes are rotated.
    fn invalidate_dep(&mut self, id: usize, why: &str) {
        let Some(dep) = self.deps[id].as_ref() else {
            return;
        };
        // The subqueries that use this one are wrong as well.
        for p in dep.parents.clone() {
            self.invalidate_dep(p, why);
        }
        let Some(dep) = self.deps[id].as_ref() else {
            return;
        };
        tracing::info!(subquery = %dep.key, reason = why, "subquery result invalidated");
        let _ = dep.status.send(DepStatus::Failed(why.to_string()));
        let handles: Vec<ShapeHandle> = dep
            .users
            .iter()
            .filter_map(|&i| self.sinks[i].as_ref())
            .map(|s| s.shape.handle.clone())
            .collect();
        for h in handles {
            self.invalidate(&h, why);
        }
        self.drop_dep(id);
    }

    /// Take a shape out of service (its log can no longer be trusted or its table changed).
    fn invalidate(&mut self, handle: &ShapeHandle, why: &str) {
        tracing::info!(handle = %handle, reason = why, "shape invalidated");
        self.drop_sink(handle);
        self.registry.remove(handle, Lifecycle::Gone);
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    pub fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Add { shape, done } => {
                let last = shape.log.latest_offset();
                let added = self.add_sink(shape, Phase::Buffering(Vec::new()), last);
                let _ = done.send(added);
            }
            Command::SnapshotStarted { handle, info } => self.snapshot_started(&handle, info),
            Command::Remove { handle } => {
                self.drop_sink(&handle);
            }
            Command::AddDep { sub, done } => {
                let key = sub.sql();
                if let Some(&id) = self.dep_by_key.get(&key) {
                    if let Some(d) = self.deps[id].as_ref() {
                        let _ = done.send((id, d.status.subscribe(), false));
                        return;
                    }
                }
                let id = self.deps.len();
                let oid = sub.table.oid;
                // A clause with subqueries of its own: those are kept already (made ready
                // first); this one keeps every row of its table.
                let inner = sub
                    .filter
                    .as_ref()
                    .map(|f| f.subqueries())
                    .unwrap_or_default();
                let children: Option<Vec<usize>> = inner
                    .iter()
                    .map(|c| self.dep_by_key.get(&c.sql()).copied())
                    .collect();
                let mut dep = Dep::new(key.clone(), Arc::clone(&sub));
                let rx = dep.status.subscribe();
                let term = if inner.is_empty() {
                    sub.filter.as_ref().and_then(|f| f.route_term())
                } else {
                    None
                };
                match children {
                    Some(children) if !inner.is_empty() => {
                        dep.depth = 1 + children
                            .iter()
                            .filter_map(|&c| self.deps[c].as_ref().map(|d| d.depth))
                            .max()
                            .unwrap_or(0);
                        for &c in &children {
                            if let Some(d) = self.deps[c].as_mut() {
                                d.parents.push(id);
                            }
                        }
                        dep.nested = Some(super::deps::Nested {
                            links: sub.filter.as_ref().map(memberships).unwrap_or_default(),
                            children,
                            ..Default::default()
                        });
                    }
                    Some(_) => {}
                    None => {
                        let _ = dep
                            .status
                            .send(DepStatus::Failed("an inner subquery is not kept".into()));
                    }
                }
                self.deps.push(Some(dep));
                self.dep_by_key.insert(key, id);
                self.deps_by_table.entry(oid).or_default().push(id);
                self.dep_routes.entry(oid).or_default().add(id, term);
                let _ = done.send((id, rx, true));
            }
            Command::DepSeeded { id, info, rows } => self.dep_seeded(id, info, rows),
            Command::DepFailed { id, error } => {
                if let Some(d) = self.deps[id].as_ref() {
                    let _ = d.status.send(DepStatus::Failed(error));
                }
                if self.deps[id].as_ref().is_some_and(|d| d.users.is_empty()) {
                    self.drop_dep(id);
                }
            }
            Command::MoveIn {
                handle,
                seq,
                result,
            } => match result {
                Err(e) => self.splice(&handle, seq, Err(e)),
                Ok(rows) => {
                    let found = self
                        .by_handle
                        .get(&handle)
                        .and_then(|&i| self.sinks[i].as_mut())
                        .and_then(|s| s.pending.iter_mut().find(|p| p.seq == seq));
                    if let Some(p) = found {
                        p.rows = Some(rows);
                        self.arrived.push((handle, seq));
                        self.try_splices(None);
                    }
                }
            },
        }
    }

    /// A subquery's seed rows arrived: its result is built, the changes kept meanwhile that the
    /// seed does not contain are applied, and shapes may use it.
    fn dep_seeded(&mut self, id: usize, info: SnapshotInfo, rows: Vec<Values>) {
        let Some(dep) = self.deps[id].as_mut() else {
            return;
        };
        let DepPhase::Seeding(kept) = std::mem::replace(&mut dep.phase, DepPhase::Live) else {
            return;
        };
        dep.view = View::of(&dep.sub);
        let nested = dep.nested.is_some();
        if !nested {
            for r in &rows {
                let v: Vec<Option<&[u8]>> = r.iter().map(|c| c.as_deref()).collect();
                dep.view.add(&v);
            }
        }
        let mut phase = DepPhase::Filtering(info.clone());
        if nested {
            // Whole rows: each judged with the inner results.
            let Some(mut d) = self.deps[id].take() else {
                return;
            };
            for r in rows {
                self.nested_row(
                    &mut d,
                    DepOp::Row {
                        old: None,
                        new: Some(r),
                    },
                );
            }
            for (xid, op) in kept {
                if seed_lacks(&mut phase, xid) {
                    self.nested_row(&mut d, op);
                }
            }
            d.before.clear();
            d.was_empty = d.view.is_empty();
            d.txn_lsn = Lsn::ZERO;
            d.phase = phase;
            let _ = d.status.send(DepStatus::Ready);
            self.deps[id] = Some(d);
            return;
        }
        let Some(dep) = self.deps[id].as_mut() else {
            return;
        };
        for (xid, op) in kept {
            if seed_lacks(&mut phase, xid) {
                dep.apply(op);
            }
        }
        dep.before.clear();
        dep.was_empty = dep.view.is_empty();
        // The open transaction (if any) is seen afresh by the next change.
        dep.txn_lsn = Lsn::ZERO;
        dep.phase = phase;
        let _ = dep.status.send(DepStatus::Ready);
    }

    fn snapshot_started(&mut self, handle: &ShapeHandle, info: SnapshotInfo) {
        let Some(&idx) = self.by_handle.get(handle) else {
            return;
        };
        let Some(sink) = self.sinks[idx].as_mut() else {
            return;
        };
        let Phase::Buffering(buffer) = std::mem::replace(&mut sink.phase, Phase::Live) else {
            return;
        };
        let mut phase = Phase::Filtering(info.clone());
        let mut result = Ok(());
        let mut unknowable = false;
        let mut moved = false;
        // Row index reports of the transactions taken (the snapshot holds the others).
        let reports = std::mem::take(&mut sink.reports);
        if let Some(subq) = &sink.shape.subq {
            let mut index = subq.index();
            for (xid, (key, delta, version, entry)) in reports {
                if info.verdict(xid) != Verdict::Skip {
                    index.report(subq, &key, delta, version, entry);
                }
            }
        }
        for (xid, offset, json) in buffer {
            let take = match &phase {
                Phase::Filtering(info) => match info.verdict(xid) {
                    Verdict::Skip => false,
                    Verdict::Apply => true,
                    Verdict::ApplyAndStopFiltering => {
                        phase = Phase::Live;
                        true
                    }
                },
                _ => true,
            };
            if take && json == MOVED {
                moved = true;
            } else if take && json.is_empty() {
                unknowable = true;
            } else if take && result.is_ok() {
                result = sink.shape.log.append_change(offset, &json);
                sink.dirty = true;
            }
        }
        sink.phase = phase;
        if sink.dirty && !sink.in_dirty {
            sink.in_dirty = true;
            self.dirty.push(idx);
        }
        if let Err(e) = result {
            self.invalidate(handle, &format!("append failed: {e}"));
        } else if moved {
            self.invalidate(
                handle,
                "a subquery's result changed while the shape was created",
            );
        } else if unknowable {
            self.integrity.note(IntegrityEvent::ValueMissing);
            self.invalidate(handle, "change lacks values (replica identity not FULL)");
        }
    }

    pub fn begin(&mut self, lsn: Lsn, xid: u32) {
        self.try_splices(Some(xid));
        self.txn = Some(Txn {
            lsn,
            xid,
            next_op: 0,
        });
    }

    /// A Relation message: shapes whose table no longer has the columns they were built on are
    /// invalidated (their clients refetch under the new schema). `ancestors`: the relation's
    /// partitioned ancestors, nearest first, from the catalog (`None`: the relation is gone
    /// from the catalog; the ancestors are then those whose shapes listed it as a partition).
    pub fn relation(&mut self, rel: &Relation, ancestors: Option<&[u32]>) {
        let mut stale: Vec<ShapeHandle> = Vec::new();
        if let Some(idxs) = self.by_table.get(&rel.oid) {
            stale.extend(
                idxs.iter()
                    .filter_map(|&i| self.sinks[i].as_ref())
                    .filter(|s| {
                        let t = &s.shape.table;
                        t.name != rel.name
                            || t.schema != relation_schema(rel)
                            || t.columns.len() != rel.columns.len()
                            || t.columns
                                .iter()
                                .zip(&rel.columns)
                                .any(|(c, r)| c.name != r.name || c.type_oid != r.type_oid)
                    })
                    .map(|s| s.shape.handle.clone()),
            );
        }
        let ancestors: Vec<u32> = match ancestors {
            Some(a) => a.to_vec(),
            None => {
                let mut a: Vec<u32> = self
                    .by_table
                    .iter()
                    .filter(|(_, idxs)| {
                        idxs.iter()
                            .filter_map(|&i| self.sinks[i].as_ref())
                            .any(|s| s.shape.table.leaves.iter().any(|l| l.oid == rel.oid))
                    })
                    .map(|(&oid, _)| oid)
                    .collect();
                a.sort_unstable();
                a
            }
        };
        self.ancestor_maps.retain(|&(leaf, _), _| leaf != rel.oid);
        for &anc in &ancestors {
            // A partition has its parent's columns (names and types, in any order): shapes of
            // an ancestor described otherwise are stale.
            let Some(idxs) = self.by_table.get(&anc) else {
                continue;
            };
            stale.extend(
                idxs.iter()
                    .filter_map(|&i| self.sinks[i].as_ref())
                    .filter(|s| !same_columns(&s.shape.table, rel))
                    .map(|s| s.shape.handle.clone()),
            );
        }
        let has_shapes = std::iter::once(&rel.oid)
            .chain(&ancestors)
            .any(|t| self.by_table.get(t).is_some_and(|v| !v.is_empty()));
        if has_shapes && rel.replica_identity != ReplicaIdentity::Full {
            tracing::warn!(
                table = %format!("{}.{}", relation_schema(rel), rel.name),
                identity = ?rel.replica_identity,
                "a table with shapes streams without REPLICA IDENTITY FULL; repairing it"
            );
            self.identity_alert.notify_one();
        }
        if ancestors.is_empty() {
            self.lineages.remove(&rel.oid);
        } else {
            self.lineages.insert(rel.oid, ancestors.into());
        }
        for h in stale {
            self.invalidate(&h, "table schema changed");
        }
        // A subquery whose table no longer has the columns it was built on.
        let stale_deps: Vec<usize> = self
            .deps_by_table
            .get(&rel.oid)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&id| {
                self.deps[id].as_ref().is_some_and(|d| {
                    let t = &d.sub.table;
                    t.columns.len() != rel.columns.len()
                        || t.columns
                            .iter()
                            .zip(&rel.columns)
                            .any(|(c, r)| c.name != r.name || c.type_oid != r.type_oid)
                })
            })
            .collect();
        for id in stale_deps {
            self.invalidate_dep(id, "a subquery's table changed");
        }
    }

    /// TRUNCATE: the shapes on those tables are invalidated (clients refetch).
    pub fn truncate(&mut self, oids: &[u32]) {
        let mut handles = Vec::new();
        let mut tables: Vec<u32> = oids.to_vec();
        for oid in oids {
            if let Some(ancestors) = self.lineages.get(oid) {
                tables.extend(ancestors.iter().copied());
            }
        }
        tables.sort_unstable();
        tables.dedup();
        for oid in &tables {
            if let Some(idxs) = self.by_table.get(oid) {
                handles.extend(
                    idxs.iter()
                        .filter_map(|&i| self.sinks[i].as_ref())
                        .map(|s| s.shape.handle.clone()),
                );
            }
        }
        for h in handles {
            self.invalidate(&h, "table truncated");
        }
        // A subquery over a truncated table: its shapes are rotated.
        let deps: Vec<usize> = tables
            .iter()
            .filter_map(|oid| self.deps_by_table.get(oid))
            .flatten()
            .copied()
            .collect();
        for id in deps {
            self.invalidate_dep(id, "a subquery's table was truncated");
        }
    }

    /// A row change inside the open transaction: routed to the shapes of its relation, and
    /// (a partition) to those of each partitioned ancestor, in the ancestor's column order.
    pub fn change(
        &mut self,
        rel: &Relation,
        kind: ChangeKind,
        old: Option<&OldTuple>,
        new: Option<&TupleData>,
    ) {
        let Some(txn) = self.txn.as_mut() else { return };
        let op = txn.next_op;
        txn.next_op += 2;
        let (lsn, xid) = (txn.lsn.as_u64(), txn.xid);
        let at = (lsn, op, xid);
        if let Some(routes) = self.dep_routes.get_mut(&rel.oid) {
            let row = ChangeRow::decode(rel, kind, old, new, None);
            routes.prepare();
            let mut ids = std::mem::take(&mut self.dep_candidates);
            ids.clear();
            if kind != ChangeKind::Insert && !row.old_full {
                routes.all(&mut ids);
            } else {
                routes.candidates(&row.rows(), &mut ids);
            }
            ids.sort_unstable();
            ids.dedup();
            for &id in &ids {
                self.dep_change(id, kind, &row, lsn, xid);
            }
            self.dep_candidates = ids;
        }
        if self.routes.contains_key(&rel.oid) || self.member_routes.contains_key(&rel.oid) {
            let row = ChangeRow::decode(rel, kind, old, new, None);
            self.route(rel.oid, kind, &row, at);
        }
        let Some(ancestors) = self.lineages.get(&rel.oid).cloned() else {
            return;
        };
        for &anc in ancestors.iter() {
            if !self.routes.contains_key(&anc) && !self.member_routes.contains_key(&anc) {
                continue;
            }
            let Some(map) = self.ancestor_map(rel, anc) else {
                continue;
            };
            let row = ChangeRow::decode(rel, kind, old, new, Some(&map));
            self.route(anc, kind, &row, at);
        }
    }

    /// A change of a table a subquery reads: its result gains the new row's selected values
    /// if the row matches, and loses the old row's if it matched.
    fn dep_change(&mut self, id: usize, kind: ChangeKind, row: &ChangeRow<'_>, lsn: u64, xid: u32) {
        let Some(dep) = self.deps[id].as_mut() else {
            return;
        };
        if dep.txn_lsn.as_u64() != lsn {
            dep.txn_lsn = Lsn(lsn);
            dep.txn_skip = !seed_lacks(&mut dep.phase, xid);
            if !dep.txn_skip {
                dep.begin();
                if !matches!(dep.phase, DepPhase::Seeding(_)) {
                    self.deps_in_txn.push(id);
                }
            }
        }
        if dep.txn_skip {
            return;
        }
        // A nested dependency keeps whole rows, judged at commit.
        if dep.nested.is_some() {
            let whole = |cells: Option<&[Cell<'_>]>| -> Result<Option<Values>, ()> {
                let Some(cells) = cells else { return Ok(None) };
                cells
                    .iter()
                    .map(|c| match c {
                        Cell::Text(b) => Ok(Some(b.to_vec())),
                        Cell::Null => Ok(None),
                        Cell::Unknown => Err(()),
                    })
                    .collect::<Result<Values, ()>>()
                    .map(Some)
            };
            let old = match kind {
                ChangeKind::Insert => Ok(None),
                _ => whole(row.old.as_deref())
                    .and_then(|o| o.ok_or(()))
                    .map(Some),
            };
            let new = match kind {
                ChangeKind::Delete => Ok(None),
                _ => whole(row.new.as_deref()),
            };
            let (Ok(old), Ok(new)) = (old, new) else {
                self.invalidate_dep(id, "a change of a subquery's table lacks values");
                return;
            };
            let op = DepOp::Row { old, new };
            match &mut dep.phase {
                DepPhase::Seeding(kept) => kept.push((xid, op)),
                _ => dep.txn_ops.push(op),
            }
            return;
        }
        // The row's selected values if it matches; Err if that depends on a value the stream
        // did not carry.
        let selected = |cells: &[Cell<'_>]| -> Result<Option<Values>, ()> {
            let r = CellRow {
                cells,
                read_unknown: std::cell::Cell::new(false),
                views: &[],
            };
            let matched = dep.sub.filter.as_ref().is_none_or(|f| f.matches(&r));
            if r.read_unknown.get() {
                return Err(());
            }
            if !matched {
                return Ok(None);
            }
            dep.sub
                .columns
                .iter()
                .map(|&c| match cells.get(c) {
                    Some(Cell::Text(b)) => Ok(Some(b.to_vec())),
                    Some(Cell::Null) => Ok(None),
                    _ => Err(()),
                })
                .collect::<Result<Values, ()>>()
                .map(Some)
        };
        let old = match (kind, row.old.as_deref()) {
            (ChangeKind::Insert, _) => Ok(None),
            (_, Some(o)) => selected(o),
            (_, None) => Err(()),
        };
        let new = match (kind, row.new.as_deref()) {
            (ChangeKind::Delete, _) => Ok(None),
            (_, Some(n)) => selected(n),
            (_, None) => Err(()),
        };
        let (Ok(old), Ok(new)) = (old, new) else {
            self.invalidate_dep(id, "a change of a subquery's table lacks values");
            return;
        };
        let ops = old
            .map(DepOp::Remove)
            .into_iter()
            .chain(new.map(DepOp::Add));
        match &mut dep.phase {
            DepPhase::Seeding(kept) => kept.extend(ops.map(|op| (xid, op))),
            _ => dep.txn_ops.extend(ops),
        }
    }

    /// Shapes filed by dependency `id`'s values follow its moves.
    fn refile(&mut self, id: usize, m: &Moves) {
        let Some(dep) = self.deps[id].as_ref() else {
            return;
        };
        let key = |v: &Values| {
            let b: Vec<Option<&[u8]>> = v.iter().map(|c| c.as_deref()).collect();
            dep.view.key_of(&b)
        };
        let entered: Vec<Vec<u8>> = m.entered.iter().filter_map(key).collect();
        let left: Vec<Vec<u8>> = m.left.iter().filter_map(key).collect();
        for &sidx in &dep.users {
            let Some(sink) = self.sinks[sidx].as_ref() else {
                continue;
            };
            let Some((k, column)) = sink.member else {
                continue;
            };
            if sink.deps.get(k) != Some(&id) {
                continue;
            }
            let oid = sink.shape.table.oid;
            let kind = shapesync_filter::KeyKind::of(&sink.shape.table, column);
            let routes = self.member_routes.entry(oid).or_default();
            for key in &entered {
                routes.file(column, kind, key.clone(), sidx);
            }
            for key in &left {
                routes.unfile(column, key, sidx);
            }
        }
    }

    /// A nested dependency at its transaction's commit: its table's changed rows are judged
    /// with its subqueries' results as they are now, and so are its rows whose link values
    /// moved in those results.
    fn settle_nested(&mut self, id: usize) {
        let Some(mut dep) = self.deps[id].take() else {
            return;
        };
        for op in std::mem::take(&mut dep.txn_ops) {
            self.nested_row(&mut dep, op);
        }
        let moved = dep
            .nested
            .as_mut()
            .map(|n| std::mem::take(&mut n.child_moves))
            .unwrap_or_default();
        for (k, values) in moved {
            let keys: Vec<Vec<u8>> = {
                let Some(n) = dep.nested.as_ref() else { break };
                let mut keys = Vec::new();
                for (lk, _, kinds) in n.links.iter().filter(|(c, _, _)| *c == k) {
                    for v in &values {
                        let b: Vec<Option<&[u8]>> = v.iter().map(|c| c.as_deref()).collect();
                        if let Some(key) = super::subq::link_key(kinds, &b) {
                            if let Some(rows) = n.by_link.get(&(*lk, key)) {
                                keys.extend(rows.iter().cloned());
                            }
                        }
                    }
                }
                keys
            };
            for key in keys {
                let row = dep
                    .nested
                    .as_ref()
                    .and_then(|n| n.rows.get(&key))
                    .map(|(v, _)| v.clone());
                if let Some(row) = row {
                    // Judged again: out with its old verdict, in with the new one.
                    self.nested_row(
                        &mut dep,
                        DepOp::Row {
                            old: Some(row.clone()),
                            new: Some(row),
                        },
                    );
                }
            }
        }
        self.deps[id] = Some(dep);
    }

    /// One row of a nested dependency's table changed (or is judged again).
    fn nested_row(&self, dep: &mut Dep, op: DepOp) {
        let DepOp::Row { old, new } = op else {
            dep.apply(op);
            return;
        };
        let table = Arc::clone(&dep.sub.table);
        let key_of = |v: &Values| -> Vec<u8> {
            let mut k = Vec::new();
            for &i in &table.key {
                match v.get(i).and_then(Option::as_ref) {
                    Some(b) => {
                        k.push(1);
                        k.extend_from_slice(&(b.len() as u32).to_be_bytes());
                        k.extend_from_slice(b);
                    }
                    None => k.push(0),
                }
            }
            k
        };
        let projection = |v: &Values| -> Values {
            dep.sub
                .columns
                .iter()
                .map(|&c| v.get(c).cloned().flatten())
                .collect()
        };
        let Some(children) = dep.nested.as_ref().map(|n| n.children.clone()) else {
            return;
        };
        let views = Self::views_of(&self.deps, &children);
        let judge = |v: &Values| -> bool {
            let cells: Vec<Cell<'_>> = v
                .iter()
                .map(|c| match c {
                    Some(b) => Cell::Text(b),
                    None => Cell::Null,
                })
                .collect();
            let r = CellRow {
                cells: &cells,
                read_unknown: std::cell::Cell::new(false),
                views: &views,
            };
            dep.sub.filter.as_ref().is_none_or(|f| f.matches(&r))
        };
        let mut ops = Vec::new();
        if let Some(old) = &old {
            let key = key_of(old);
            if let Some(n) = dep.nested.as_mut() {
                if let Some((row, was_in)) = n.rows.remove(&key) {
                    for (lk, cols, kinds) in &n.links {
                        let b: Vec<Option<&[u8]>> = cols
                            .iter()
                            .map(|&c| row.get(c).and_then(|x| x.as_deref()))
                            .collect();
                        if let Some(l) = super::subq::link_key(kinds, &b) {
                            if let Some(set) = n.by_link.get_mut(&(*lk, l.clone())) {
                                set.remove(&key);
                                if set.is_empty() {
                                    n.by_link.remove(&(*lk, l));
                                }
                            }
                        }
                    }
                    if was_in {
                        ops.push(DepOp::Remove(projection(&row)));
                    }
                }
            }
        }
        if let Some(new) = new {
            let key = key_of(&new);
            let is_in = judge(&new);
            if is_in {
                ops.push(DepOp::Add(projection(&new)));
            }
            if let Some(n) = dep.nested.as_mut() {
                for (lk, cols, kinds) in &n.links {
                    let b: Vec<Option<&[u8]>> = cols
                        .iter()
                        .map(|&c| new.get(c).and_then(|x| x.as_deref()))
                        .collect();
                    if let Some(l) = super::subq::link_key(kinds, &b) {
                        n.by_link.entry((*lk, l)).or_default().insert(key.clone());
                    }
                }
                n.rows.insert(key, (new, is_in));
            }
        }
        for op in ops {
            dep.apply(op);
        }
    }

    /// The results of a sink's subqueries, in its clause's numbering.
    fn views_of<'d>(deps: &'d [Option<Dep>], ids: &[usize]) -> Vec<&'d View> {
        ids.iter()
            .filter_map(|&id| deps.get(id).and_then(Option::as_ref).map(|d| &d.view))
            .collect()
    }

    /// The end of a transaction that changed dependency `id`'s result: each of its shapes
    /// that sees the transaction writes the move (rows that leave, the events; a move-in's
    /// rows are queried and spliced in when they arrive).
    fn apply_moves(&mut self, id: usize, m: &Moves, lsn: Lsn, xid: u32, op: &mut u64) {
        let users = match self.deps[id].as_ref() {
            Some(d) => d.users.clone(),
            None => return,
        };
        let mut rotate: Vec<(ShapeHandle, &str)> = Vec::new();
        let mut requests = Vec::new();
        for sidx in users {
            let Some(sink) = self.sinks[sidx].as_mut() else {
                continue;
            };
            let skip = if sink.txn_lsn == lsn {
                sink.txn_skip
            } else {
                match &sink.phase {
                    Phase::Filtering(info) => info.verdict(xid) == Verdict::Skip,
                    _ => false,
                }
            };
            if skip {
                continue;
            }
            let Some(subq) = sink.shape.subq.clone() else {
                continue;
            };
            if let Phase::Buffering(buf) = &mut sink.phase {
                buf.push((xid, LogOffset::new(lsn.as_u64(), *op), MOVED.to_vec()));
                continue;
            }
            if !subq.index().loaded {
                rotate.push((
                    sink.shape.handle.clone(),
                    "a subquery's result changed before the shape's snapshot was loaded",
                ));
                continue;
            }
            let Some(k) = sink.deps.iter().position(|&d| d == id) else {
                continue;
            };
            let negated = subq.dnf.negated(k);
            let positions = subq.dnf.positions_of(k);
            let has_null = |v: &Values| v.iter().any(Option::is_none);
            // `x IN (…)` never holds through a NULL (a NULL entering or leaving changes nothing
            // for it); for `NOT IN`, a NULL entering or leaving, or the result becoming empty
            // or not, may change the verdict of any row.
            let broad =
                negated && (m.entered.iter().chain(&m.left).any(has_null) || m.emptiness_changed);
            let (gain, lose) = if negated {
                (&m.left, &m.entered)
            } else {
                (&m.entered, &m.left)
            };
            let gain: Vec<&Values> = gain.iter().filter(|v| !has_null(v)).collect();
            let lose: Vec<&Values> = lose.iter().filter(|v| !has_null(v)).collect();
            let views = Self::views_of(&self.deps, &sink.deps);
            let mut deletes: Vec<(super::subq::Entry, Vec<bool>)> = Vec::new();
            {
                let mut index = subq.index();
                let mut keys: Vec<Vec<u8>> = if broad {
                    index.all()
                } else {
                    let mut keys = Vec::new();
                    // A row form with a NULL in its link: `NOT IN` may change for it with any
                    // value that moves (it compares equal as far as known to some row).
                    if negated {
                        for &p in &positions {
                            keys.extend(index.with_null_link(p));
                        }
                    }
                    for v in lose.iter().chain(gain.iter()) {
                        for &p in &positions {
                            if let Some(lk) = subq.key_at(p, v) {
                                keys.extend(index.with_link(p, &lk));
                            }
                        }
                    }
                    keys
                };
                keys.sort_unstable();
                keys.dedup();
                for key in keys {
                    let Some(entry) = index.present(&key).cloned() else {
                        continue;
                    };
                    let mut ac = entry.ac.clone();
                    for &p in &positions {
                        let Some(Some(link)) = entry.links.get(p) else {
                            continue;
                        };
                        let values: Vec<Option<&[u8]>> =
                            link.iter().map(|c| c.as_deref()).collect();
                        let member = views.get(k).map(|v| v.membership(&values));
                        let pos = &subq.dnf.positions[p];
                        if let Some(slot) = ac.get_mut(p) {
                            *slot = if pos.negated {
                                member == Some(Some(false))
                            } else {
                                member == Some(Some(true))
                            };
                        }
                    }
                    if subq.dnf.includes(&ac) {
                        index.set_ac(&key, ac);
                    } else {
                        index.take(&subq, &key);
                        deletes.push((entry, ac));
                    }
                }
            }
            let xids = [xid];
            let mut out: Vec<Vec<u8>> = Vec::new();
            let e = &sink.shape.encoder;
            for (entry, ac) in deletes.into_iter().filter(|_| self.move_out_deletes) {
                let mut cells = vec![Cell::Null; sink.shape.table.columns.len()];
                for (i, &k) in sink.shape.table.key.iter().enumerate() {
                    if let Some(Some(v)) = entry.pk.get(i) {
                        cells[k] = Cell::Text(v);
                    }
                }
                let mut json = Vec::with_capacity(192);
                e.delete_open(&mut json, &cells, &xids);
                super::subq::write_tag_headers(&mut json, &subq.tags(&entry.links), &ac, None);
                close(&mut json, false);
                out.push(json);
            }
            let patterns = |values: &[&Values]| -> Vec<(usize, String)> {
                let mut out = Vec::new();
                for &p in &positions {
                    for v in values {
                        out.push((p, subq.hash(p, v)));
                    }
                }
                out
            };
            if !lose.is_empty() {
                out.push(super::subq::event("move-out", &patterns(&lose), &xids));
            }
            if !gain.is_empty() {
                out.push(super::subq::event("move-in", &patterns(&gain), &xids));
            }
            if !gain.is_empty() || broad {
                match &self.move_requests {
                    Some(tx) => {
                        self.move_seq += 1;
                        let seq = self.move_seq;
                        sink.pending.push(Pending {
                            seq,
                            touched: Vec::new(),
                            rows: None,
                        });
                        subq.holding
                            .store(true, std::sync::atomic::Ordering::Release);
                        requests.push((
                            tx.clone(),
                            MoveRequest {
                                shape: Arc::clone(&sink.shape),
                                seq,
                                dep: k,
                                values: gain.iter().map(|v| (*v).clone()).collect(),
                                broad,
                                null_links: negated,
                                xid,
                            },
                        ));
                    }
                    None => {
                        rotate.push((sink.shape.handle.clone(), "a subquery gained values"));
                        continue;
                    }
                }
            }
            let mut failed = None;
            for json in out {
                let offset = LogOffset::new(lsn.as_u64(), *op);
                *op += 1;
                self.bytes_since_flush += json.len();
                if let Err(err) = emit(sink, offset, json, xid) {
                    failed = Some(err);
                    break;
                }
            }
            if let Some(err) = failed {
                rotate.push((sink.shape.handle.clone(), "append failed"));
                tracing::warn!(error = %err, "appending a move failed");
                continue;
            }
            if sink.dirty && !sink.in_dirty {
                sink.in_dirty = true;
                self.dirty.push(sidx);
            }
        }
        for (tx, req) in requests {
            let handle = req.shape.handle.clone();
            let seq = req.seq;
            if tx.send(req).is_err() {
                // The query runner is gone (shutting down): nothing will splice it.
                self.splice(&handle, seq, Err("move-in queries stopped".into()));
            }
        }
        for (h, why) in rotate {
            self.invalidate(&h, why);
        }
    }

    /// A move-in's rows arrived: those not held already, not changed since by a transaction
    /// the query did not see, and in the shape under the current results, are written as
    /// `is_move_in` inserts, closed by a `snapshot-end` of the query's snapshot.
    /// Splice the move-ins whose rows arrived once the stream has passed their snapshot: at
    /// the first transaction their snapshot does not contain (`next`), or once the stream's
    /// position is past the WAL position taken with it. Until then the transactions the
    /// snapshot contains are applied to the shape as they stream.
    fn try_splices(&mut self, next: Option<u32>) {
        if self.arrived.is_empty() {
            return;
        }
        let mut due = Vec::new();
        self.arrived.retain(|(handle, seq)| {
            let rows = self
                .by_handle
                .get(handle)
                .and_then(|&i| self.sinks[i].as_ref())
                .and_then(|s| s.pending.iter().find(|p| p.seq == *seq))
                .and_then(|p| p.rows.as_ref());
            let Some((info, lsn, _)) = rows else {
                return false;
            };
            let passed =
                self.wal_pos >= *lsn || next.is_some_and(|x| info.verdict(x) != Verdict::Skip);
            if passed {
                due.push((handle.clone(), *seq));
            }
            !passed
        });
        for (handle, seq) in due {
            self.splice(&handle, seq, Ok(()));
        }
    }

    /// A keepalive outside a transaction: the stream has passed `wal_end`.
    pub fn wal_seen(&mut self, wal_end: Lsn) {
        if self.txn.is_none() {
            self.wal_pos = self.wal_pos.max(wal_end.as_u64());
            self.try_splices(None);
        }
    }

    fn splice(&mut self, handle: &ShapeHandle, seq: u64, result: Result<(), String>) {
        let Some(&idx) = self.by_handle.get(handle) else {
            return;
        };
        let Some(sink) = self.sinks[idx].as_mut() else {
            return;
        };
        let Some(at) = sink.pending.iter().position(|p| p.seq == seq) else {
            return;
        };
        let pending = sink.pending.remove(at);
        let Some(subq) = sink.shape.subq.clone() else {
            return;
        };
        let (info, rows) = match result.and_then(|()| {
            pending
                .rows
                .map(|(info, _, rows)| (info, rows))
                .ok_or_else(|| "no rows".to_string())
        }) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(handle = %handle, error = %e, "a move-in query failed");
                self.invalidate(handle, "a move-in query failed");
                return;
            }
        };
        let views = Self::views_of(&self.deps, &sink.deps);
        let e = Arc::clone(&sink.shape.encoder);
        let mut out: Vec<(Vec<u8>, Report)> = Vec::new();
        {
            let index = subq.index();
            for values in &rows {
                let cells: Vec<Cell<'_>> = values
                    .iter()
                    .map(|v| match v {
                        Some(b) => Cell::Text(b),
                        None => Cell::Null,
                    })
                    .collect();
                let key = e.key(&cells);
                if index.present(&key).is_some()
                    || pending
                        .touched
                        .iter()
                        .any(|(x, k)| *k == key && info.verdict(*x) != Verdict::Skip)
                {
                    continue;
                }
                let r = CellRow {
                    cells: &cells,
                    read_unknown: std::cell::Cell::new(false),
                    views: &views,
                };
                let ac = subq.dnf.active_conditions(&r);
                if !subq.dnf.includes(&ac) {
                    continue;
                }
                let links = subq.links_of(&cells);
                let mut json = Vec::with_capacity(256);
                e.insert_open(&mut json, &cells);
                json.extend_from_slice(b",\"is_move_in\":true");
                super::subq::write_tag_headers(&mut json, &subq.tags(&links), &ac, None);
                close(&mut json, false);
                let pk = pk_of(&sink.shape.table, &cells);
                out.push((json, (key, 1, (0, 0), (pk, links, ac))));
            }
        }
        let last = sink.last;
        let (tx, mut op) = match last.op() {
            Some(o) if !last.is_snapshot() => (last.tx(), o + 1),
            _ => (self.last_commit.map_or(0, |c| c.0.as_u64()), 0),
        };
        let any = !out.is_empty();
        let mut failed = false;
        for (json, (key, delta, _, entry)) in out {
            let offset = LogOffset::new(tx, op);
            op += 1;
            self.bytes_since_flush += json.len();
            if emit(sink, offset, json, 0).is_err() {
                failed = true;
                break;
            }
            subq.index()
                .report(&subq, &key, delta, (offset.tx(), op), entry);
        }
        if any && !failed {
            let end = super::message::snapshot_end(info.xmin, info.xmax, &info.xip);
            failed = emit(sink, LogOffset::new(tx, op), end, 0).is_err();
        }
        if failed {
            self.invalidate(handle, "append failed");
            return;
        }
        if sink.pending.is_empty() {
            subq.holding
                .store(false, std::sync::atomic::Ordering::Release);
        }
        // Made durable and shown by the next flush.
        sink.dirty = true;
        if !sink.in_dirty {
            sink.in_dirty = true;
            self.dirty.push(idx);
        }
        self.txns_since_flush += 1;
    }

    /// For each column of `anc` (as its shapes describe it), the column of partition `rel`
    /// holding it. Shapes of `anc` whose description does not fit the partition are stale:
    /// they are invalidated, and `None` is returned if none is left.
    fn ancestor_map(&mut self, rel: &Relation, anc: u32) -> Option<Arc<[Option<usize>]>> {
        if let Some(m) = self.ancestor_maps.get(&(rel.oid, anc)) {
            return Some(Arc::clone(m));
        }
        let idxs = self.by_table.get(&anc)?;
        let mut stale = Vec::new();
        let mut table = None;
        for s in idxs.iter().filter_map(|&i| self.sinks[i].as_ref()) {
            if same_columns(&s.shape.table, rel) {
                table.get_or_insert_with(|| Arc::clone(&s.shape.table));
            } else {
                stale.push(s.shape.handle.clone());
            }
        }
        for h in stale {
            self.invalidate(&h, "table schema changed");
        }
        let table = table?;
        let map: Arc<[Option<usize>]> = table
            .columns
            .iter()
            .map(|c| rel.columns.iter().position(|r| r.name == c.name))
            .collect();
        self.ancestor_maps.insert((rel.oid, anc), Arc::clone(&map));
        Some(map)
    }

    /// Route one change (its cells in `oid`'s column order) to the shapes of table `oid`.
    fn route(
        &mut self,
        oid: u32,
        kind: ChangeKind,
        row: &ChangeRow<'_>,
        (lsn, op, xid): (u64, u64, u32),
    ) {
        if let Some(routes) = self.routes.get_mut(&oid) {
            routes.prepare();
        }
        let routes = self.routes.get(&oid);
        let members = self.member_routes.get(&oid);
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        if kind != ChangeKind::Insert && !row.old_full {
            // The old row is not known whole (replica identity not FULL): a shape it left
            // cannot be found through the index; every shape of the table is a candidate.
            if let Some(r) = routes {
                r.all(&mut candidates);
            }
            if let Some(m) = members {
                m.all(&mut candidates);
            }
        } else {
            let rows = row.rows();
            if let Some(r) = routes {
                r.candidates(&rows, &mut candidates);
            }
            if let Some(m) = members {
                m.candidates(&rows, &mut candidates);
            }
        }
        self.change_no += 1;
        let change_no = self.change_no;
        let mut failed = Vec::new();
        let mut unknowable = Vec::new();
        for &idx in &candidates {
            let Some(sink) = self.sinks[idx].as_mut() else {
                continue;
            };
            if sink.seen == change_no {
                continue;
            }
            sink.seen = change_no;
            if sink.txn_lsn.as_u64() != lsn {
                sink.txn_lsn = Lsn(lsn);
                sink.txn_skip = match &sink.phase {
                    Phase::Filtering(info) => match info.verdict(xid) {
                        Verdict::Skip => true,
                        Verdict::Apply => false,
                        Verdict::ApplyAndStopFiltering => {
                            sink.phase = Phase::Live;
                            false
                        }
                    },
                    _ => false,
                };
            }
            if sink.txn_skip {
                continue;
            }
            let shape = Arc::clone(&sink.shape);
            let converted = match &shape.subq {
                None => convert(&shape, kind, row, lsn, op, xid),
                Some(subq) => {
                    // Keys changed while a move-in waits for its rows (see `splice`).
                    if !sink.pending.is_empty() {
                        let e = &shape.encoder;
                        for r in row.new.iter().chain(row.old.iter()) {
                            if e.key_known(r) {
                                let k = e.key(r);
                                for p in &mut sink.pending {
                                    p.touched.push((xid, k.clone()));
                                }
                            }
                        }
                    }
                    let views = Self::views_of(&self.deps, &sink.deps);
                    let buffering = matches!(sink.phase, Phase::Buffering(_));
                    convert_subq(&shape, subq, &views, kind, row, (lsn, op, xid)).map(
                        |(records, reports)| {
                            if buffering {
                                sink.reports.extend(reports.into_iter().map(|r| (xid, r)));
                            } else {
                                let mut index = subq.index();
                                for (key, delta, version, entry) in reports {
                                    index.report(subq, &key, delta, version, entry);
                                }
                            }
                            records
                        },
                    )
                }
            };
            let Some(records) = converted else {
                match &mut sink.phase {
                    // The snapshot may already contain this transaction: decided when its
                    // visibility is known.
                    Phase::Buffering(buf) => buf.push((xid, LogOffset::new(lsn, op), Vec::new())),
                    _ => unknowable.push(shape.handle.clone()),
                }
                continue;
            };
            if records.is_empty() {
                continue;
            }
            if !sink.in_touched {
                sink.in_touched = true;
                self.touched.push(idx);
            }
            for (offset, json) in records {
                self.bytes_since_flush += json.len();
                if let Err(e) = hold(sink, offset, json, xid) {
                    failed.push((shape.handle.clone(), e.to_string()));
                    break;
                }
            }
            if sink.dirty && !sink.in_dirty {
                sink.in_dirty = true;
                self.dirty.push(idx);
            }
        }
        self.candidates = candidates;
        for (h, e) in failed {
            self.invalidate(&h, &format!("append failed: {e}"));
        }
        for h in unknowable {
            self.integrity.note(IntegrityEvent::ValueMissing);
            tracing::warn!(
                handle = %h,
                table_oid = oid,
                "a change lacks values the shape needs (its table's replica identity is not FULL): \
                 the shape is rotated (clients get 409 and refetch)"
            );
            self.invalidate(&h, "change lacks values (replica identity not FULL)");
        }
    }

    /// End of the open transaction: close each touched shape's last change.
    pub fn commit(&mut self, end_lsn: Lsn) {
        let Some(txn) = self.txn.take() else { return };
        let mut failed = Vec::new();
        for idx in std::mem::take(&mut self.touched) {
            let Some(sink) = self.sinks[idx].as_mut() else {
                continue;
            };
            sink.in_touched = false;
            if let Some((offset, mut json)) = sink.held.take() {
                close(&mut json, true);
                if let Err(e) = emit(sink, offset, json, txn.xid) {
                    failed.push((sink.shape.handle.clone(), e.to_string()));
                }
                if sink.dirty && !sink.in_dirty {
                    sink.in_dirty = true;
                    self.dirty.push(idx);
                }
            }
        }
        for (h, e) in failed {
            self.invalidate(&h, &format!("append failed: {e}"));
        }
        // Subqueries whose results the transaction changed, deepest first: their shapes
        // move, and so do the results of the subqueries that use them.
        let mut op = txn.next_op;
        let mut todo = std::mem::take(&mut self.deps_in_txn);
        let mut settled = Vec::new();
        loop {
            todo.retain(|&id| self.deps[id].as_ref().is_some_and(|d| !d.settled));
            todo.sort_unstable_by_key(|&id| self.deps[id].as_ref().map_or(0, |d| d.depth));
            todo.dedup();
            if todo.is_empty() {
                break;
            }
            let id = todo.remove(0);
            if self.deps[id].as_ref().is_some_and(|d| d.nested.is_some()) {
                self.settle_nested(id);
            }
            let Some(dep) = self.deps[id].as_mut() else {
                continue;
            };
            dep.settled = true;
            settled.push(id);
            let moves = dep.moves();
            if moves.is_empty() {
                continue;
            }
            let parents = dep.parents.clone();
            for p in parents {
                let lsn = txn.lsn;
                if let Some(pd) = self.deps[p].as_mut() {
                    if pd.txn_lsn != lsn {
                        pd.txn_lsn = lsn;
                        pd.txn_skip = false;
                        pd.begin();
                    }
                    if let Some(n) = pd.nested.as_mut() {
                        let values: Vec<Values> =
                            moves.entered.iter().chain(&moves.left).cloned().collect();
                        if let Some(k) = n.children.iter().position(|&c| c == id) {
                            n.child_moves.push((k, values));
                        }
                    }
                    todo.push(p);
                }
            }
            self.refile(id, &moves);
            self.apply_moves(id, &moves, txn.lsn, txn.xid, &mut op);
        }
        for id in settled {
            if let Some(d) = self.deps[id].as_mut() {
                d.settled = false;
            }
        }
        self.last_commit = Some((txn.lsn, end_lsn));
        self.wal_pos = self.wal_pos.max(end_lsn.as_u64());
        self.txns_since_flush += 1;
        self.try_splices(None);
    }

    /// Transactions handled since the last flush.
    pub fn unflushed_transactions(&self) -> usize {
        self.txns_since_flush
    }

    /// Shape logs with changes appended since the last flush started.
    pub fn unflushed_logs(&self) -> usize {
        self.dirty.len()
    }

    /// Bytes of change records appended since the last flush started (a batch is cut by size
    /// too: a small commit lands sooner and overlaps the next one's ingest better).
    pub fn unflushed_bytes(&self) -> usize {
        self.bytes_since_flush
    }

    fn buffering(&self) -> bool {
        self.sinks
            .iter()
            .flatten()
            .any(|s| matches!(s.phase, Phase::Buffering(_)))
    }

    /// Make every appended change durable with one group commit of the store (one fsync for
    /// all shapes), then wake readers, and return the LSN that may now be acknowledged, if
    /// any. Readers are woken only after the commit, so they never see data that is not
    /// durable. On a storage error (disk full, I/O error) nothing is published or
    /// acknowledged and every change stays buffered: the caller retries the same batch
    /// later (no shape is lost to a full disk).
    pub async fn flush(&mut self) -> Result<Option<Lsn>, shapesync_storage::StoreError> {
        let shapes: Vec<Arc<Shape>> = self
            .dirty
            .iter()
            .filter_map(|&i| self.sinks[i].as_ref().map(|s| Arc::clone(&s.shape)))
            .collect();
        if !shapes.is_empty() {
            let logs: Vec<Arc<dyn ShapeLog>> = shapes.iter().map(|s| Arc::clone(&s.log)).collect();
            let store = Arc::clone(self.registry.store());
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || store.commit(&logs))
                .await
                .map_err(|e| std::io::Error::other(format!("commit task failed: {e}")))??;
            self.fsync.observe_duration(started.elapsed());
            for i in std::mem::take(&mut self.dirty) {
                if let Some(sink) = self.sinks[i].as_mut() {
                    sink.dirty = false;
                    sink.in_dirty = false;
                }
            }
            for shape in &shapes {
                shape.publish_log_state();
            }
        }
        self.txns_since_flush = 0;
        self.bytes_since_flush = 0;
        let Some((lsn, end)) = self.last_commit else {
            return Ok(None);
        };
        self.global_lsn.advance(lsn);
        if self.buffering() {
            return Ok(None);
        }
        Ok(Some(end))
    }

    /// Starts a group commit of every change appended so far that runs while the stream goes
    /// on: the dirty logs' changes are taken (`ShapeLogStore::prepare_commit`) and made
    /// durable on a blocking thread; changes appended meanwhile belong to the next commit.
    /// Complete it with [`Writer::finish_flush`] before the next flush, a command, or a reset.
    /// `None`: nothing to take, or the store cannot split this commit (a log holding a
    /// transaction too large for memory): use [`Writer::flush`].
    pub fn start_flush(&mut self) -> Result<Option<InFlight>, shapesync_storage::StoreError> {
        if self.dirty.is_empty() {
            return Ok(None);
        }
        let sinks: Vec<(usize, Arc<Shape>)> = self
            .dirty
            .iter()
            .filter_map(|&i| self.sinks[i].as_ref().map(|s| (i, Arc::clone(&s.shape))))
            .collect();
        let logs: Vec<Arc<dyn ShapeLog>> = sinks.iter().map(|(_, s)| Arc::clone(&s.log)).collect();
        let store = Arc::clone(self.registry.store());
        let Some(prepared) = store.prepare_commit(&logs)? else {
            return Ok(None);
        };
        for i in std::mem::take(&mut self.dirty) {
            if let Some(sink) = self.sinks[i].as_mut() {
                sink.dirty = false;
                sink.in_dirty = false;
            }
        }
        self.txns_since_flush = 0;
        self.bytes_since_flush = 0;
        let started = std::time::Instant::now();
        Ok(Some(InFlight {
            task: tokio::task::spawn_blocking(move || store.run_prepared(prepared)),
            sinks,
            commit: self.last_commit,
            started,
        }))
    }

    /// Completes a commit started by [`Writer::start_flush`], given its task's outcome: wakes
    /// the readers of its shapes and returns the LSN that may now be acknowledged (the last
    /// transaction it covered), as [`Writer::flush`] does. On a storage error its changes are
    /// back in their logs, which are dirty again: a [`Writer::flush`] retries them.
    pub fn finish_flush(
        &mut self,
        flight: InFlight,
        outcome: Result<Result<(), shapesync_storage::StoreError>, tokio::task::JoinError>,
    ) -> Result<Option<Lsn>, shapesync_storage::StoreError> {
        let outcome = outcome
            .map_err(|e| std::io::Error::other(format!("commit task failed: {e}")))
            .map_err(shapesync_storage::StoreError::from)
            .and_then(|r| r);
        if let Err(e) = outcome {
            for (i, shape) in &flight.sinks {
                if let Some(sink) = self.sinks[*i].as_mut() {
                    if Arc::ptr_eq(&sink.shape, shape) && !sink.in_dirty {
                        sink.dirty = true;
                        sink.in_dirty = true;
                        self.dirty.push(*i);
                    }
                }
            }
            self.txns_since_flush = self.txns_since_flush.max(1);
            return Err(e);
        }
        self.fsync.observe_duration(flight.started.elapsed());
        for (_, shape) in &flight.sinks {
            shape.publish_log_state();
        }
        let Some((lsn, end)) = flight.commit else {
            return Ok(None);
        };
        self.global_lsn.advance(lsn);
        if self.buffering() {
            return Ok(None);
        }
        Ok(Some(end))
    }

    /// A keepalive with nothing pending: the server's position may be acknowledged so an idle
    /// database does not keep WAL for us.
    pub fn idle_ack(&self, wal_end: Lsn) -> Option<Lsn> {
        let idle = self.txn.is_none() && self.dirty.is_empty() && self.txns_since_flush == 0;
        (idle && !self.buffering()).then_some(wal_end)
    }

    /// The replication connection broke: forget the open transaction (it will be replayed) and
    /// drop every appended but unflushed change (the slot re-sends them).
    pub fn reset_after_disconnect(&mut self) {
        self.txn = None;
        // A dependency's changes of the dropped transaction were not applied yet (they are at
        // its commit); the slot sends the transaction again.
        for id in std::mem::take(&mut self.deps_in_txn) {
            if let Some(d) = self.deps[id].as_mut() {
                d.txn_ops.clear();
                d.before.clear();
                d.txn_lsn = Lsn::ZERO;
            }
        }
        self.touched.clear();
        self.txns_since_flush = 0;
        self.bytes_since_flush = 0;
        for sink in self.sinks.iter_mut().flatten() {
            sink.held = None;
            sink.txn_lsn = Lsn::ZERO;
            sink.shape.log.discard_unflushed();
            sink.last = sink.shape.log.latest_offset();
            sink.dirty = false;
            sink.in_touched = false;
            sink.in_dirty = false;
            if let Phase::Buffering(buf) = &mut sink.phase {
                buf.clear();
            }
        }
        self.dirty.clear();
    }
}

/// A group commit in flight (see [`Writer::start_flush`]).
pub struct InFlight {
    /// The blocking commit; await it, then hand its outcome to [`Writer::finish_flush`].
    pub task: tokio::task::JoinHandle<Result<(), shapesync_storage::StoreError>>,
    /// The sinks whose changes it holds.
    sinks: Vec<(usize, Arc<Shape>)>,
    /// The last transaction it covers: (commit LSN, end LSN).
    commit: Option<(Lsn, Lsn)>,
    started: std::time::Instant,
}

fn relation_schema(rel: &Relation) -> &str {
    if rel.namespace.is_empty() {
        "pg_catalog"
    } else {
        &rel.namespace
    }
}

/// One change's rows as cells in a table's column order. A value the stream did not carry is
/// [`Cell::Unknown`]: an unchanged TOAST value that no full old row fills in, and, without a
/// full old row, every old column outside the replica identity.
struct ChangeRow<'a> {
    new: Option<Vec<Cell<'a>>>,
    old: Option<Vec<Cell<'a>>>,
    /// The old row is known whole (replica identity FULL).
    old_full: bool,
}

impl<'a> ChangeRow<'a> {
    /// Its rows (new, then old) that the routing indexes look up.
    fn rows(&self) -> Vec<&[Cell<'a>]> {
        self.new
            .iter()
            .chain(self.old.iter())
            .map(|r| &r[..])
            .collect()
    }

    /// `map`: for a partition's change seen by an ancestor, the partition column of each
    /// ancestor column.
    fn decode(
        rel: &Relation,
        kind: ChangeKind,
        old: Option<&'a OldTuple>,
        new: Option<&'a TupleData>,
        map: Option<&[Option<usize>]>,
    ) -> ChangeRow<'a> {
        let old_full = matches!(old, Some(OldTuple::Full(_)));
        // In the relation's own column order first.
        let old_cells: Option<Vec<Cell<'a>>> = match old {
            Some(OldTuple::Full(t)) => Some(cells(t, None)),
            // Only the replica identity's columns are meaningful (others are sent as nulls).
            Some(OldTuple::Key(t)) => Some(
                cells(t, None)
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if is_identity(rel, i) {
                            c
                        } else {
                            Cell::Unknown
                        }
                    })
                    .collect(),
            ),
            None => None,
        };
        let new_cells = new.map(|t| cells(t, old_cells.as_deref().filter(|_| old_full)));
        // An update without an old row: the replica identity did not change, the rest is
        // unknown.
        let old_cells = match (old_cells, &new_cells) {
            (None, Some(n)) if kind == ChangeKind::Update => Some(
                n.iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        if is_identity(rel, i) {
                            c
                        } else {
                            Cell::Unknown
                        }
                    })
                    .collect(),
            ),
            (o, _) => o,
        };
        let remap = |r: Vec<Cell<'a>>| -> Vec<Cell<'a>> {
            match map {
                None => r,
                Some(m) => m
                    .iter()
                    .map(|j| j.and_then(|j| r.get(j).copied()).unwrap_or(Cell::Unknown))
                    .collect(),
            }
        };
        ChangeRow {
            new: new_cells.map(remap),
            old: old_cells.map(remap),
            old_full,
        }
    }
}

/// Do two descriptions of a table have the same columns in the same order?
fn same_layout(a: &TableInfo, b: &TableInfo) -> bool {
    a.columns.len() == b.columns.len()
        && a.columns
            .iter()
            .zip(&b.columns)
            .all(|(x, y)| x.name == y.name && x.type_oid == y.type_oid)
}

/// Is column `i` of the relation part of its replica identity (all columns under FULL)?
fn is_identity(rel: &Relation, i: usize) -> bool {
    rel.columns.get(i).is_some_and(|c| c.is_key)
}

/// Does the shape's table have exactly the relation's columns (names and types), in any
/// order? (What a partition and its parent share.)
fn same_columns(table: &TableInfo, rel: &Relation) -> bool {
    table.columns.len() == rel.columns.len()
        && table.columns.iter().all(|c| {
            rel.columns
                .iter()
                .any(|r| r.name == c.name && r.type_oid == c.type_oid)
        })
}

/// Cells of a streamed tuple; unchanged TOAST values are taken from the full old row.
fn cells<'a>(t: &'a TupleData, old: Option<&[Cell<'a>]>) -> Vec<Cell<'a>> {
    t.0.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Null => Cell::Null,
            Value::Text(b) | Value::Binary(b) => Cell::Text(&b[..]),
            Value::UnchangedToast => match old.and_then(|o| o.get(i)) {
                Some(c @ Cell::Text(_)) => *c,
                _ => Cell::Unknown,
            },
        })
        .collect()
}

/// A row for the where clause; it notes whether the evaluation read a value the stream did
/// not carry.
struct CellRow<'a, 'b> {
    cells: &'b [Cell<'a>],
    read_unknown: std::cell::Cell<bool>,
    /// The results of the clause's subqueries (clause numbering).
    views: &'b [&'b View],
}

impl shapesync_filter::Row for CellRow<'_, '_> {
    fn value(&self, column: usize) -> Option<&[u8]> {
        let cell = self.cells.get(column).copied();
        if cell == Some(Cell::Unknown) {
            self.read_unknown.set(true);
        }
        cell.and_then(|c| c.bytes())
    }

    fn membership(
        &self,
        dep: usize,
        values: &[Option<&[u8]>],
    ) -> Result<Option<bool>, shapesync_filter::Fail> {
        self.views
            .get(dep)
            .map(|v| v.membership(values))
            .ok_or(shapesync_filter::Fail)
    }
}

/// Does the row belong to the shape? `None` when the answer depends on a value the stream did
/// not carry. (Whatever the evaluation did not read cannot change its result.)
fn verdict(shape: &Shape, row: &[Cell<'_>]) -> Option<bool> {
    let Some(f) = &shape.filter else {
        return Some(true);
    };
    let r = CellRow {
        cells: row,
        read_unknown: std::cell::Cell::new(false),
        views: &[],
    };
    let matched = f.matches(&r);
    (!r.read_unknown.get()).then_some(matched)
}

/// Convert one change into the shape's open messages (0, 1 or 2 of them); `None` when the
/// change lacks a value the shape needs to decide or to write them (the shape must then be
/// rotated: guessing would make it differ from Postgres).
fn convert(
    shape: &Shape,
    kind: ChangeKind,
    row: &ChangeRow<'_>,
    lsn: u64,
    op: u64,
    xid: u32,
) -> Option<Vec<(LogOffset, Vec<u8>)>> {
    let e = &shape.encoder;
    let full_replica = shape.def.replica == Replica::Full;
    let h = |op_position: u64| ChangeHeaders {
        lsn,
        op_position,
        xid,
        key_change: None,
    };
    let one = |op_kind: Op, o: Option<&[Cell<'_>]>, n: Option<&[Cell<'_>]>| {
        let mut out = Vec::with_capacity(256);
        e.change(&mut out, op_kind, o, n, &h(op));
        vec![(LogOffset::new(lsn, op), out)]
    };
    // What each message needs: an insert the whole selected row; a delete the key (and, for
    // replica=full, the whole old row); an update the key (replica=full: both whole rows).
    let insertable = |n: &[Cell<'_>]| e.selected_known(n);
    let deletable = |o: &[Cell<'_>]| e.key_known(o) && (!full_replica || row.old_full);
    let new = row.new.as_deref();
    let old = row.old.as_deref();
    Some(match kind {
        ChangeKind::Insert => {
            let n = new?;
            if !verdict(shape, n)? {
                return Some(Vec::new());
            }
            if !insertable(n) {
                return None;
            }
            one(Op::Insert, None, Some(n))
        }
        ChangeKind::Delete => {
            let o = old?;
            if !verdict(shape, o)? {
                return Some(Vec::new());
            }
            if !deletable(o) {
                return None;
            }
            one(Op::Delete, Some(o), None)
        }
        ChangeKind::Update => {
            let (n, o) = (new?, old?);
            let new_in = verdict(shape, n)?;
            let old_in = verdict(shape, o)?;
            match (old_in, new_in) {
                (true, true) if !e.key_known(o) || !e.key_known(n) => return None,
                (true, true) if !e.same_key(o, n) => {
                    if !deletable(o) || !insertable(n) {
                        return None;
                    }
                    let (old_key, new_key) = (e.key(o), e.key(n));
                    let mut del = Vec::with_capacity(256);
                    let mut hd = h(op);
                    hd.key_change = Some(("key_change_to", &new_key));
                    e.change(&mut del, Op::Delete, Some(o), None, &hd);
                    let mut ins = Vec::with_capacity(256);
                    let mut hi = h(op + 1);
                    hi.key_change = Some(("key_change_from", &old_key));
                    e.change(&mut ins, Op::Insert, None, Some(n), &hi);
                    vec![
                        (LogOffset::new(lsn, op), del),
                        (LogOffset::new(lsn, op + 1), ins),
                    ]
                }
                (true, true) if full_replica && (!row.old_full || !insertable(n)) => return None,
                (true, true) if row.old_full && !e.selected_changed(o, n) => Vec::new(),
                // Without the whole old row every known column of the new one is sent (an
                // unknown one is an unchanged TOAST value: the client keeps what it has).
                (true, true) => one(Op::Update, Some(o), Some(n)),
                (true, false) if deletable(o) => one(Op::Delete, Some(o), None),
                (false, true) if insertable(n) => one(Op::Insert, None, Some(n)),
                (false, false) => Vec::new(),
                _ => return None,
            }
        }
    })
}

/// The tags sent for a present row (none if absent).
fn present_tags(
    index: &super::subq::RowIndex,
    subq: &super::subq::Subq,
    key: &[u8],
) -> Vec<String> {
    index
        .present(key)
        .map(|en| subq.tags(&en.links))
        .unwrap_or_default()
}

/// Does a change kept while a dependency was seeded apply (the seed's snapshot does not
/// contain its transaction)? The first transaction past the snapshot ends the filtering.
fn seed_lacks(phase: &mut DepPhase, xid: u32) -> bool {
    let verdict = match phase {
        DepPhase::Filtering(info) => info.verdict(xid),
        _ => return true,
    };
    match verdict {
        Verdict::Skip => false,
        Verdict::Apply => true,
        Verdict::ApplyAndStopFiltering => {
            *phase = DepPhase::Live;
            true
        }
    }
}

/// Each membership of a clause: (its dependency, the link columns, their key kinds).
fn memberships(
    clause: &shapesync_filter::WhereClause,
) -> Vec<(usize, Vec<usize>, Vec<shapesync_filter::KeyKind>)> {
    fn walk(
        e: &shapesync_filter::Expr,
        out: &mut Vec<(usize, Vec<usize>, Vec<shapesync_filter::KeyKind>)>,
    ) {
        use shapesync_filter::Expr;
        match e {
            Expr::InSubquery {
                columns, dep, sub, ..
            } => {
                let kinds = sub
                    .columns
                    .iter()
                    .map(|&c| shapesync_filter::KeyKind::of(&sub.table, c))
                    .collect();
                if !out.iter().any(|(d, c, _)| d == dep && c == columns) {
                    out.push((*dep, columns.clone(), kinds));
                }
            }
            Expr::And(items) | Expr::Or(items) => items.iter().for_each(|i| walk(i, out)),
            Expr::Not(inner) | Expr::BoolTest { expr: inner, .. } => walk(inner, out),
            Expr::IsNull { expr, .. } => {
                if let shapesync_filter::Operand::Expr(inner) = expr.as_ref() {
                    walk(inner, out)
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(clause.expr(), &mut out);
    out
}

/// The values of a row's key columns (table key order).
fn pk_of(table: &TableInfo, row: &[Cell<'_>]) -> Vec<Option<Vec<u8>>> {
    table
        .key
        .iter()
        .map(|&k| row.get(k).and_then(|c| c.bytes()).map(<[u8]>::to_vec))
        .collect()
}

/// [`convert`] for a subquery shape: rows are judged with the current results of its
/// subqueries, messages carry `tags`, `active_conditions` and (updates) `removed_tags`, and
/// each message is reported to the row index. Once the snapshot is loaded, whether the old row
/// is held comes from the index (a row can be in the shape's result without being held yet:
/// a move-in's rows not spliced); before, from the old row's verdict, as for any shape.
fn convert_subq(
    shape: &Shape,
    subq: &super::subq::Subq,
    views: &[&View],
    kind: ChangeKind,
    row: &ChangeRow<'_>,
    (lsn, op, xid): (u64, u64, u32),
) -> Option<(Records, Vec<Report>)> {
    use super::subq::{removed, write_tag_headers};
    let e = &shape.encoder;
    let full_replica = shape.def.replica == Replica::Full;
    // (in the shape, active conditions); None when that depends on an unknown value.
    let judge = |cells: &[Cell<'_>]| -> Option<(bool, Vec<bool>)> {
        let r = CellRow {
            cells,
            read_unknown: std::cell::Cell::new(false),
            views,
        };
        let ac = subq.dnf.active_conditions(&r);
        (!r.read_unknown.get()).then(|| (subq.dnf.includes(&ac), ac))
    };
    // Whether the old row is held, and its tags and conditions as sent.
    let held = |cells: &[Cell<'_>]| -> Option<Option<(Vec<String>, Vec<bool>)>> {
        let index = subq.index();
        if index.loaded {
            if !e.key_known(cells) {
                return None;
            }
            return Some(
                index
                    .present(&e.key(cells))
                    .map(|en| (subq.tags(&en.links), en.ac.clone())),
            );
        }
        drop(index);
        let (was_in, ac) = judge(cells)?;
        Some(was_in.then(|| (subq.tags(&subq.links_of(cells)), ac)))
    };
    let h = |op_position: u64| ChangeHeaders {
        lsn,
        op_position,
        xid,
        key_change: None,
    };
    let insertable = |n: &[Cell<'_>]| e.selected_known(n);
    let deletable = |o: &[Cell<'_>]| e.key_known(o) && (!full_replica || row.old_full);
    let entry =
        |cells: &[Cell<'_>], ac: Vec<bool>| (pk_of(&shape.table, cells), subq.links_of(cells), ac);
    let mut records = Vec::new();
    let mut reports: Vec<Report> = Vec::new();
    let insert = |records: &mut Vec<(LogOffset, Vec<u8>)>,
                  reports: &mut Vec<Report>,
                  n: &[Cell<'_>],
                  ac: Vec<bool>,
                  at: u64,
                  key_change: Option<(&'static str, &[u8])>| {
        let links = subq.links_of(n);
        let mut out = Vec::with_capacity(320);
        let mut hd = h(at);
        hd.key_change = key_change;
        e.change(&mut out, Op::Insert, None, Some(n), &hd);
        write_tag_headers(&mut out, &subq.tags(&links), &ac, None);
        records.push((LogOffset::new(lsn, at), out));
        reports.push((e.key(n), 1, (lsn, at), entry(n, ac)));
    };
    let delete = |records: &mut Vec<(LogOffset, Vec<u8>)>,
                  reports: &mut Vec<Report>,
                  o: &[Cell<'_>],
                  sent: (Vec<String>, Vec<bool>),
                  at: u64,
                  key_change: Option<(&'static str, &[u8])>| {
        let mut out = Vec::with_capacity(256);
        let mut hd = h(at);
        hd.key_change = key_change;
        e.change(&mut out, Op::Delete, Some(o), None, &hd);
        write_tag_headers(&mut out, &sent.0, &sent.1, None);
        records.push((LogOffset::new(lsn, at), out));
        reports.push((
            e.key(o),
            -1,
            (lsn, at),
            (Vec::new(), Vec::new(), Vec::new()),
        ));
    };
    match kind {
        ChangeKind::Insert => {
            let n = row.new.as_deref()?;
            let (is_in, ac) = judge(n)?;
            if !insertable(n) || !e.key_known(n) {
                return if is_in {
                    None
                } else {
                    Some((records, reports))
                };
            }
            // Held already: a move-in read the row in a snapshot that contained this insert
            // (the stream brings it after the splice); the client is given this version.
            let present = {
                let index = subq.index();
                if index.loaded {
                    index
                        .present(&e.key(n))
                        .map(|en| (subq.tags(&en.links), en.ac.clone()))
                } else {
                    None
                }
            };
            match (present, is_in) {
                (None, true) => insert(&mut records, &mut reports, n, ac, op, None),
                (None, false) => {}
                (Some(_), true) => {
                    let links = subq.links_of(n);
                    let mut out = Vec::with_capacity(320);
                    e.change(&mut out, Op::Update, None, Some(n), &h(op));
                    let tags = subq.tags(&links);
                    let sent = present_tags(&subq.index(), subq, &e.key(n));
                    write_tag_headers(&mut out, &tags, &ac, Some(&removed(&sent, &tags)));
                    records.push((LogOffset::new(lsn, op), out));
                    reports.push((e.key(n), 0, (lsn, op), entry(n, ac)));
                }
                (Some(sent), false) => delete(&mut records, &mut reports, n, sent, op, None),
            }
        }
        ChangeKind::Delete => {
            let o = row.old.as_deref()?;
            if let Some(sent) = held(o)? {
                if !deletable(o) {
                    return None;
                }
                delete(&mut records, &mut reports, o, sent, op, None);
            }
        }
        ChangeKind::Update => {
            let (n, o) = (row.new.as_deref()?, row.old.as_deref()?);
            let (new_in, ac) = judge(n)?;
            match (held(o)?, new_in) {
                (Some(sent), true) => {
                    if !e.key_known(o) || !e.key_known(n) {
                        return None;
                    }
                    if !e.same_key(o, n) {
                        if !deletable(o) || !insertable(n) {
                            return None;
                        }
                        let (old_key, new_key) = (e.key(o), e.key(n));
                        delete(
                            &mut records,
                            &mut reports,
                            o,
                            sent,
                            op,
                            Some(("key_change_to", &new_key)),
                        );
                        insert(
                            &mut records,
                            &mut reports,
                            n,
                            ac,
                            op + 1,
                            Some(("key_change_from", &old_key)),
                        );
                    } else {
                        if full_replica && (!row.old_full || !insertable(n)) {
                            return None;
                        }
                        let links = subq.links_of(n);
                        let tags = subq.tags(&links);
                        let gone = removed(&sent.0, &tags);
                        // Nothing the client holds changed: no message.
                        if row.old_full
                            && !e.selected_changed(o, n)
                            && gone.is_empty()
                            && sent.1 == ac
                        {
                            return Some((records, reports));
                        }
                        let mut out = Vec::with_capacity(320);
                        e.change(&mut out, Op::Update, Some(o), Some(n), &h(op));
                        write_tag_headers(&mut out, &tags, &ac, Some(&gone));
                        records.push((LogOffset::new(lsn, op), out));
                        reports.push((e.key(n), 0, (lsn, op), entry(n, ac)));
                    }
                }
                (Some(sent), false) => {
                    if !deletable(o) {
                        return None;
                    }
                    delete(&mut records, &mut reports, o, sent, op, None);
                }
                (None, true) => {
                    if !insertable(n) || !e.key_known(n) {
                        return None;
                    }
                    insert(&mut records, &mut reports, n, ac, op, None);
                }
                (None, false) => {}
            }
        }
    }
    Some((records, reports))
}

/// Hold `json` as the shape's latest change, emitting the previously held one (not last).
fn hold(
    sink: &mut Sink,
    offset: LogOffset,
    json: Vec<u8>,
    xid: u32,
) -> Result<(), shapesync_storage::StoreError> {
    if let Some((prev_offset, mut prev)) = sink.held.replace((offset, json)) {
        close(&mut prev, false);
        emit(sink, prev_offset, prev, xid)?;
    }
    Ok(())
}

fn emit(
    sink: &mut Sink,
    offset: LogOffset,
    json: Vec<u8>,
    xid: u32,
) -> Result<(), shapesync_storage::StoreError> {
    if offset <= sink.last {
        return Ok(()); // replayed after a restart: already in the log
    }
    match &mut sink.phase {
        Phase::Buffering(buf) => buf.push((xid, offset, json)),
        _ => {
            sink.shape.log.append_change(offset, &json)?;
            sink.dirty = true;
        }
    }
    sink.last = offset;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{RelationColumn, ReplicaIdentity};
    use crate::shape::definition::{LogMode, ShapeDefinition};
    use crate::shape::registry::Registry;
    use crate::shape::ShapeMeta;
    use bytes::Bytes;
    use shapesync_filter::table::ColumnInfo;
    use shapesync_storage::{MemoryStore, ShapeLogStore};

    /// `t (id int4 PRIMARY KEY, big text, small int4)`; `key`: which columns the relation
    /// message flags as its replica identity; `order`: the relation's column order (a
    /// partition may differ from its parent).
    fn relation(identity: ReplicaIdentity, key: &[&str], order: &[&str]) -> Relation {
        let ty = |n: &str| if n == "big" { 25 } else { 23 };
        Relation {
            oid: 7,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: identity,
            columns: order
                .iter()
                .map(|n| RelationColumn {
                    is_key: key.contains(n),
                    name: (*n).into(),
                    type_oid: ty(n),
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn table() -> TableInfo {
        let c = |name: &str, ty: &str, oid: u32, pk: Option<usize>| ColumnInfo {
            name: name.into(),
            type_oid: oid,
            type_name: ty.into(),
            dims: 0,
            type_mod: -1,
            not_null: pk.is_some(),
            pk_index: pk,
        };
        TableInfo::new(
            7,
            "public".into(),
            "t".into(),
            vec![
                c("id", "int4", 23, Some(0)),
                c("big", "text", 25, None),
                c("small", "int4", 23, None),
            ],
        )
    }

    fn shape(where_clause: Option<&str>, replica: Replica) -> Arc<Shape> {
        let def = ShapeDefinition {
            schema: "public".into(),
            table: "t".into(),
            where_clause: where_clause.map(str::to_string),
            columns: None,
            replica,
            log: LogMode::Full,
            params: Vec::new(),
            row_filter: None,
        };
        let compiled = crate::shape::compile(&def, &table(), &[]).expect("compiles");
        let store = MemoryStore::new(Default::default());
        let log = store.create("s", b"m").expect("log");
        let meta = ShapeMeta {
            version: 1,
            handle: ShapeHandle::mint(&def),
            def,
            table: table(),
            tables: Vec::new(),
        };
        Shape::new(meta, compiled, log)
    }

    fn text(v: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn tuple(vals: Vec<Value>) -> TupleData {
        TupleData(vals)
    }

    fn messages(out: Option<Vec<(LogOffset, Vec<u8>)>>) -> Option<Vec<serde_json::Value>> {
        out.map(|v| {
            v.into_iter()
                .map(|(_, mut json)| {
                    close(&mut json, true);
                    serde_json::from_slice(&json).expect("json")
                })
                .collect()
        })
    }

    #[test]
    fn old_rows_without_full_identity_know_only_their_identity() {
        let rel = relation(ReplicaIdentity::Default, &["id"], &["id", "big", "small"]);
        // An update that kept its key: no old tuple.
        let new = tuple(vec![text("1"), Value::UnchangedToast, text("5")]);
        let row = ChangeRow::decode(&rel, ChangeKind::Update, None, Some(&new), None);
        assert!(!row.old_full);
        assert_eq!(
            row.old.as_deref(),
            Some(&[Cell::Text(b"1"), Cell::Unknown, Cell::Unknown][..])
        );
        assert_eq!(
            row.new.as_deref(),
            Some(&[Cell::Text(b"1"), Cell::Unknown, Cell::Text(b"5")][..])
        );
        // A delete with a key tuple: the other columns come as nulls and are unknown.
        let old = OldTuple::Key(tuple(vec![text("1"), Value::Null, Value::Null]));
        let row = ChangeRow::decode(&rel, ChangeKind::Delete, Some(&old), None, None);
        assert_eq!(
            row.old.as_deref(),
            Some(&[Cell::Text(b"1"), Cell::Unknown, Cell::Unknown][..])
        );
        // A full old row fills the new row's unchanged TOAST values.
        let full = relation(
            ReplicaIdentity::Full,
            &["id", "big", "small"],
            &["id", "big", "small"],
        );
        let old = OldTuple::Full(tuple(vec![text("1"), text("AAA"), text("4")]));
        let row = ChangeRow::decode(&full, ChangeKind::Update, Some(&old), Some(&new), None);
        assert!(row.old_full);
        assert_eq!(row.new.as_deref().map(|r| r[1]), Some(Cell::Text(b"AAA")));
    }

    #[test]
    fn a_partition_change_is_put_in_its_parents_column_order() {
        // The partition has its columns in another order than the parent.
        let rel = relation(
            ReplicaIdentity::Full,
            &["small", "id", "big"],
            &["small", "id", "big"],
        );
        let t = table();
        let map: Vec<Option<usize>> = t
            .columns
            .iter()
            .map(|c| rel.columns.iter().position(|r| r.name == c.name))
            .collect();
        assert!(same_columns(&t, &rel));
        let new = tuple(vec![text("9"), text("1"), text("x")]);
        let row = ChangeRow::decode(&rel, ChangeKind::Insert, None, Some(&new), Some(&map));
        assert_eq!(
            row.new.as_deref(),
            Some(&[Cell::Text(b"1"), Cell::Text(b"x"), Cell::Text(b"9")][..])
        );
        let other = relation(ReplicaIdentity::Full, &[], &["small", "id"]);
        assert!(!same_columns(&t, &other));
    }

    #[test]
    fn a_shape_that_needs_a_missing_value_is_never_guessed() {
        let rel = relation(ReplicaIdentity::Default, &["id"], &["id", "big", "small"]);
        let new = tuple(vec![text("1"), Value::UnchangedToast, text("5")]);
        let update = ChangeRow::decode(&rel, ChangeKind::Update, None, Some(&new), None);
        let convert_with =
            |s: &Shape, row: &ChangeRow<'_>, kind| messages(convert(s, kind, row, 10, 0, 3));

        // Without a where clause nothing is missing: an update with the known columns (the
        // unchanged TOAST value is left out; the client keeps it).
        let all = shape(None, Replica::Default);
        let m = convert_with(&all, &update, ChangeKind::Update).expect("decided");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["headers"]["operation"], "update");
        assert_eq!(m[0]["value"], serde_json::json!({"id": "1", "small": "5"}));

        // A clause on the TOASTed column, or on a column whose old value is unknown: rotate.
        for w in [
            "big LIKE 'A%'",
            "small > 3",
            "length(big) > 1000 OR small = 5",
        ] {
            let s = shape(Some(w), Replica::Default);
            assert_eq!(convert_with(&s, &update, ChangeKind::Update), None, "{w}");
        }
        // A clause on the key only is decided (old key = new key).
        let s = shape(Some("id = 1"), Replica::Default);
        assert!(convert_with(&s, &update, ChangeKind::Update).is_some());
        let s = shape(Some("id = 2"), Replica::Default);
        assert_eq!(
            convert_with(&s, &update, ChangeKind::Update),
            Some(Vec::new())
        );
        // replica=full needs the whole old row.
        let s = shape(None, Replica::Full);
        assert_eq!(convert_with(&s, &update, ChangeKind::Update), None);

        // A delete with only its key: decided where the clause reads the key only.
        let old = OldTuple::Key(tuple(vec![text("1"), Value::Null, Value::Null]));
        let delete = ChangeRow::decode(&rel, ChangeKind::Delete, Some(&old), None, None);
        let m = convert_with(&all, &delete, ChangeKind::Delete).expect("decided");
        assert_eq!(m[0]["headers"]["operation"], "delete");
        let s = shape(Some("small > 3"), Replica::Default);
        assert_eq!(convert_with(&s, &delete, ChangeKind::Delete), None);

        // With the full old row everything is known: a row leaving the clause is a delete.
        let full = relation(
            ReplicaIdentity::Full,
            &["id", "big", "small"],
            &["id", "big", "small"],
        );
        let old = OldTuple::Full(tuple(vec![text("1"), text("AAA"), text("4")]));
        let new = tuple(vec![text("1"), text("BBB"), text("4")]);
        let row = ChangeRow::decode(&full, ChangeKind::Update, Some(&old), Some(&new), None);
        let s = shape(Some("big LIKE 'A%'"), Replica::Default);
        let m = convert_with(&s, &row, ChangeKind::Update).expect("decided");
        assert_eq!(m[0]["headers"]["operation"], "delete");
        // An evaluation that does not read the unknown value is exact: the OR is true on the
        // known column whatever `big` holds.
        let s = shape(Some("small = 5 OR big LIKE 'A%'"), Replica::Default);
        let new = tuple(vec![text("1"), Value::UnchangedToast, text("5")]);
        let old = OldTuple::Key(tuple(vec![text("1"), Value::Null, Value::Null]));
        let insert_like = ChangeRow::decode(&rel, ChangeKind::Update, Some(&old), Some(&new), None);
        assert_eq!(
            insert_like.new.as_deref().map(|r| verdict(&s, r)),
            Some(Some(true))
        );
    }

    // The writer driven as the stream drives it, over the in-memory store.

    use crate::lsn::{AtomicLsn, Lsn};
    use crate::shape::visibility::SnapshotInfo;
    use shapesync_storage::ReadResult;

    struct Rig {
        writer: Writer,
        registry: Arc<Registry>,
        rel: Relation,
    }

    fn rig() -> Rig {
        let store: Arc<dyn ShapeLogStore> = Arc::new(MemoryStore::new(Default::default()));
        let registry = Arc::new(Registry::new(store));
        let writer = Writer::new(
            Arc::clone(&registry),
            Arc::new(AtomicLsn::default()),
            Arc::new(crate::metrics::Histogram::default()),
        );
        let all = ["id", "big", "small"];
        Rig {
            writer,
            registry,
            rel: relation(ReplicaIdentity::Full, &all, &all),
        }
    }

    impl Rig {
        /// A shape on `t` with its snapshot written and finished.
        fn shape(&self, where_clause: Option<&str>) -> Arc<Shape> {
            let def = ShapeDefinition {
                schema: "public".into(),
                table: "t".into(),
                where_clause: where_clause.map(str::to_string),
                columns: None,
                replica: Replica::Default,
                log: LogMode::Full,
                params: Vec::new(),
                row_filter: None,
            };
            let compiled = crate::shape::compile(&def, &table(), &[]).expect("compiles");
            let handle = ShapeHandle::mint(&def);
            let log = self
                .registry
                .store()
                .create(handle.as_str(), b"m")
                .expect("log");
            log.finish_snapshot(br#"{"headers":{"control":"snapshot-end"}}"#)
                .expect("snapshot");
            let meta = ShapeMeta {
                version: 1,
                handle,
                def,
                table: table(),
                tables: Vec::new(),
            };
            let shape = Shape::new(meta, compiled, log);
            self.registry.insert(&shape);
            shape
        }

        /// A live shape (snapshot done, every later transaction applies).
        fn live(&mut self, where_clause: Option<&str>) -> Arc<Shape> {
            let shape = self.shape(where_clause);
            self.writer.restore(Arc::clone(&shape), None);
            shape
        }

        /// One transaction inserting `ids` (small = id), committed at `lsn`.
        fn insert_txn(&mut self, lsn: u64, xid: u32, ids: &[u32]) {
            self.writer.begin(Lsn(lsn), xid);
            for id in ids {
                let new = tuple(vec![
                    text(&id.to_string()),
                    text("b"),
                    text(&id.to_string()),
                ]);
                let rel = self.rel.clone();
                self.writer
                    .change(&rel, ChangeKind::Insert, None, Some(&new));
            }
            self.writer.commit(Lsn(lsn + 1));
        }
    }

    /// Every change entry of the shape's log: (offset, operation, id).
    fn log_changes(shape: &Shape) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut after = LogOffset::LAST_BEFORE_REAL;
        loop {
            let ReadResult::Chunk { entries, end, .. } = shape.log.read(after).expect("read")
            else {
                panic!("not ready");
            };
            for e in &entries {
                let m: serde_json::Value = serde_json::from_slice(e).expect("json");
                out.push((
                    format!(
                        "{}_{}",
                        m["headers"]["lsn"].as_str().unwrap_or(""),
                        m["headers"]["op_position"]
                    ),
                    m["headers"]["operation"].as_str().unwrap_or("").to_string(),
                    m["value"]["id"].as_str().unwrap_or("").to_string(),
                ));
            }
            if entries.is_empty() || end == after {
                return out;
            }
            after = end;
        }
    }

    #[tokio::test]
    async fn changes_are_held_until_the_snapshot_and_never_acknowledged_before() {
        let mut r = rig();
        let shape = r.shape(None);
        let (done, added) = oneshot::channel();
        r.writer.command(Command::Add {
            shape: Arc::clone(&shape),
            done,
        });
        assert_eq!(added.await, Ok(true));
        r.insert_txn(100, 10, &[1]); // committed before the snapshot: in it
        r.insert_txn(200, 20, &[2]); // running when the snapshot was taken: not in it
        r.insert_txn(300, 30, &[3]); // after the snapshot
        assert_eq!(
            r.writer.flush().await.expect("flush"),
            None,
            "held for the snapshot"
        );
        assert_eq!(r.writer.idle_ack(Lsn(400)), None);
        assert!(log_changes(&shape).is_empty());
        r.writer.command(Command::SnapshotStarted {
            handle: shape.handle.clone(),
            info: SnapshotInfo {
                xmin: 20,
                xmax: 25,
                xip: vec![20],
            },
        });
        assert_eq!(r.writer.flush().await.expect("flush"), Some(Lsn(301)));
        let ids: Vec<String> = log_changes(&shape).into_iter().map(|c| c.2).collect();
        assert_eq!(ids, ["2", "3"]);
        assert_eq!(
            r.writer.idle_ack(Lsn(400)),
            Some(Lsn(400)),
            "nothing pending"
        );
    }

    #[tokio::test]
    async fn a_replay_after_a_disconnect_delivers_each_change_once() {
        let mut r = rig();
        let shape = r.live(None);
        r.insert_txn(100, 10, &[1, 2]);
        assert_eq!(r.writer.flush().await.expect("flush"), Some(Lsn(101)));
        // Appended, not yet durable, then the connection breaks mid-transaction.
        r.insert_txn(200, 20, &[3]);
        r.writer.begin(Lsn(300), 30);
        r.writer.reset_after_disconnect();
        // The slot sends everything after the acknowledged position again (and, as it may,
        // the acknowledged transaction too).
        r.insert_txn(100, 10, &[1, 2]);
        r.insert_txn(200, 20, &[3]);
        r.insert_txn(300, 30, &[4]);
        assert_eq!(r.writer.flush().await.expect("flush"), Some(Lsn(301)));
        let changes = log_changes(&shape);
        let ids: Vec<&str> = changes.iter().map(|c| c.2.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3", "4"], "{changes:?}");
    }

    #[tokio::test]
    async fn nothing_is_acknowledged_while_a_change_waits_to_be_flushed() {
        let mut r = rig();
        let _shape = r.live(None);
        r.insert_txn(100, 10, &[1]);
        assert_eq!(
            r.writer.idle_ack(Lsn(150)),
            None,
            "a transaction is not durable yet"
        );
        r.writer.begin(Lsn(120), 12);
        assert_eq!(r.writer.idle_ack(Lsn(150)), None, "inside a transaction");
        r.writer.commit(Lsn(121));
        assert_eq!(r.writer.flush().await.expect("flush"), Some(Lsn(121)));
        assert_eq!(r.writer.idle_ack(Lsn(150)), Some(Lsn(150)));
    }

    #[tokio::test]
    async fn truncate_and_a_changed_relation_take_shapes_out_of_service() {
        let mut r = rig();
        let a = r.live(Some("small > 0"));
        let b = r.live(None);
        r.writer.begin(Lsn(100), 10);
        r.writer.truncate(&[7]);
        r.writer.commit(Lsn(101));
        assert!(!a.is_active() && !b.is_active());
        let c = r.live(None);
        let mut changed = r.rel.clone();
        changed.columns.pop();
        r.writer.relation(&changed, Some(&[]));
        assert!(!c.is_active(), "its table lost a column");
        let d = r.live(None);
        r.writer.relation(&r.rel.clone(), Some(&[]));
        assert!(d.is_active(), "same columns: untouched");
    }

    #[tokio::test]
    async fn a_partition_change_reaches_its_parent_shapes_in_the_parent_column_order() {
        let mut r = rig();
        // The parent (oid 7) is `t`; partition 8 has the same columns in another order.
        let parent = r.live(Some("small = 5"));
        let partition = Relation {
            oid: 8,
            name: "t_p".into(),
            ..relation(
                ReplicaIdentity::Full,
                &["small", "id", "big"],
                &["small", "id", "big"],
            )
        };
        r.writer.relation(&partition, Some(&[7]));
        r.writer.begin(Lsn(100), 10);
        let row = |id: &str, small: &str| tuple(vec![text(small), text(id), text("x")]);
        r.writer
            .change(&partition, ChangeKind::Insert, None, Some(&row("1", "5")));
        r.writer
            .change(&partition, ChangeKind::Insert, None, Some(&row("2", "6")));
        r.writer.commit(Lsn(101));
        r.writer.flush().await.expect("flush");
        let changes = log_changes(&parent);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            (changes[0].1.as_str(), changes[0].2.as_str()),
            ("insert", "1")
        );
    }
}

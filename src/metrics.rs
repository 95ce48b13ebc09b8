//! Prometheus metrics of one server instance, rendered as text exposition format 0.0.4. Nothing
//! here is global: several servers run in one test process, so each keeps its own
//! [`HttpMetrics`] (request counts and latency histograms by route and status, in-flight and
//! parked-request gauges) and hands per-tenant figures ([`TenantSample`]) to [`render`] at scrape
//! time. Recording is lock-free (atomics; a `DashMap` shard lock only the first time a
//! route/status pair is seen), and rendering is a pure function of what it is given.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

/// Upper bounds (seconds) of latency histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A fixed-bucket histogram of seconds, lock-free: one atomic per bucket, the sum in
/// nanoseconds (integer adds stay exact and need no compare-and-swap loop) and the count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; one more slot than `bounds`, for `+Inf`.
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// A histogram read at one moment: cumulative bucket counts (the last is `+Inf`) and the sum.
struct HistogramSnapshot {
    cumulative: Vec<u64>,
    sum_seconds: f64,
}

impl HistogramSnapshot {
    /// `_count`, taken from the buckets so that it always equals the `+Inf` bucket.
    fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// `buckets` are upper bounds in seconds, finite and ascending; `+Inf` is implicit.
    pub fn new(buckets: &'static [f64]) -> Self {
        debug_assert!(
            buckets.iter().all(|b| b.is_finite()) && buckets.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must be finite and strictly ascending"
        );
        Histogram {
            bounds: buckets,
            buckets: (0..=buckets.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Negative values count in the first bucket and add nothing to the sum; NaN counts in `+Inf`.
    pub fn observe(&self, seconds: f64) {
        let nanos = (seconds * 1e9).round() as u64; // saturating cast: NaN and negatives give 0
        self.add(seconds, nanos);
    }

    pub fn observe_duration(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.add(d.as_secs_f64(), nanos);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn add(&self, seconds: f64, nanos: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let cumulative = self
            .buckets
            .iter()
            .scan(0u64, |acc, b| {
                *acc += b.load(Ordering::Relaxed);
                Some(*acc)
            })
            .collect();
        let sum_seconds = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        HistogramSnapshot {
            cumulative,
            sum_seconds,
        }
    }
}

/// Counts one in-flight (or parked) request while alive; dropping it decrements the gauge. It
/// owns an `Arc` of the gauge, so it is `'static + Send` and can live in a handler's future.
#[derive(Debug)]
#[must_use = "the gauge is decremented as soon as the guard is dropped"]
pub struct ActiveGuard(Arc<AtomicI64>);

impl ActiveGuard {
    fn enter(gauge: &Arc<AtomicI64>) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(gauge))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// HTTP metrics of one server instance.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Latency per (route, status); its count doubles as the request counter, so the two agree.
    requests: DashMap<(&'static str, u16), Histogram>,
    /// Gauges behind an `Arc` so that guards can outlive a borrow of `self`.
    active: Arc<AtomicI64>,
    parked: Arc<AtomicI64>,
}

impl HttpMetrics {
    /// Record a finished request; `route` is a small fixed label ("shape", "health", ...).
    pub fn record(&self, route: &'static str, status: u16, d: Duration) {
        let key = (route, status);
        if let Some(h) = self.requests.get(&key) {
            h.observe_duration(d);
            return;
        }
        self.requests.entry(key).or_default().observe_duration(d);
    }

    /// Counts an in-flight request until the guard drops.
    pub fn active(&self) -> ActiveGuard {
        ActiveGuard::enter(&self.active)
    }

    /// Counts a parked long-poll request (waiting for data) until the guard drops.
    pub fn parked(&self) -> ActiveGuard {
        ActiveGuard::enter(&self.parked)
    }

    pub fn active_count(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn parked_count(&self) -> i64 {
        self.parked.load(Ordering::Relaxed)
    }

    /// Every (route, status) series, sorted, each read once.
    fn snapshot(&self) -> Vec<((&'static str, u16), HistogramSnapshot)> {
        let mut all: Vec<_> = self
            .requests
            .iter()
            .map(|e| (*e.key(), e.value().snapshot()))
            .collect();
        all.sort_by_key(|(k, _)| *k);
        all
    }
}

/// What the integrity checks noticed and did (see `schema_watch` and the writer): each a
/// counter per database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityEvent {
    /// A table or partition with shapes had lost `REPLICA IDENTITY FULL`: set back.
    ReplicaIdentityRepaired,
    /// A table with shapes was no longer (or only filtered) in the publication: added back,
    /// its shapes rotated.
    PublicationTableReadded,
    /// The publication's options (operations published, `publish_via_partition_root`) had
    /// been changed: set back, every shape rotated.
    PublicationOptionsRepaired,
    /// The publication was gone: created again, every shape rotated.
    PublicationRecreated,
    /// The replication slot was gone or had lost WAL: created again, every shape rotated.
    SlotRecreated,
    /// A partition with rows of its own was attached under a table with shapes: rotated.
    PartitionAttached,
    /// A partition was detached or dropped under a table with shapes: rotated.
    PartitionDetached,
    /// A change lacked a value a shape needed (replica identity not FULL): the shape rotated.
    ValueMissing,
}

impl IntegrityEvent {
    pub const ALL: [IntegrityEvent; 8] = [
        IntegrityEvent::ReplicaIdentityRepaired,
        IntegrityEvent::PublicationTableReadded,
        IntegrityEvent::PublicationOptionsRepaired,
        IntegrityEvent::PublicationRecreated,
        IntegrityEvent::SlotRecreated,
        IntegrityEvent::PartitionAttached,
        IntegrityEvent::PartitionDetached,
        IntegrityEvent::ValueMissing,
    ];

    pub fn label(self) -> &'static str {
        match self {
            IntegrityEvent::ReplicaIdentityRepaired => "replica_identity_repaired",
            IntegrityEvent::PublicationTableReadded => "publication_table_readded",
            IntegrityEvent::PublicationOptionsRepaired => "publication_options_repaired",
            IntegrityEvent::PublicationRecreated => "publication_recreated",
            IntegrityEvent::SlotRecreated => "slot_recreated",
            IntegrityEvent::PartitionAttached => "partition_attached",
            IntegrityEvent::PartitionDetached => "partition_detached",
            IntegrityEvent::ValueMissing => "value_missing",
        }
    }
}

/// Counters of [`IntegrityEvent`]s of one database.
#[derive(Debug, Default)]
pub struct IntegrityCounters([AtomicU64; 8]);

impl IntegrityCounters {
    pub fn note(&self, e: IntegrityEvent) {
        self.add(e, 1);
    }

    pub fn add(&self, e: IntegrityEvent, n: u64) {
        self.0[e as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, e: IntegrityEvent) -> u64 {
        self.0[e as usize].load(Ordering::Relaxed)
    }
}

/// The process's descriptors: shape-log files (see `shapesync_storage::FileBudget`) and HTTP
/// connections (see `shapesync_http1::Limits`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSample {
    pub budget: u64,
    pub open: u64,
    pub evicted: u64,
    pub connections_limit: u64,
    pub connections_open: u64,
    pub connections_refused: u64,
}

/// One tenant's figures, gathered by the caller at scrape time.
#[derive(Debug, Clone)]
pub struct TenantSample {
    pub database_id: String,
    /// "active" | "starting" | "waiting" | "degraded" (storage not writable).
    pub status: &'static str,
    pub shapes: u64,
    pub storage_bytes: u64,
    pub acked_lsn: u64,
    /// Latest WAL position the server reported to us.
    pub server_wal_end: u64,
    pub lag_seconds: f64,
    /// Flush (fsync batch) latency of that tenant.
    pub fsync: Arc<Histogram>,
    /// Sealed change chunks stored compacted, and the JSON bytes that saved.
    pub compacted_chunks: u64,
    pub compaction_saved_bytes: u64,
    /// Integrity checks' events.
    pub integrity: Arc<IntegrityCounters>,
}

impl TenantSample {
    /// WAL the server has that we have not acknowledged (never negative).
    pub fn lag_bytes(&self) -> u64 {
        self.server_wal_end.saturating_sub(self.acked_lsn)
    }
}

/// A sample value: integers print exactly (an LSN does not fit an f64's mantissa), floats in
/// Prometheus spelling (`+Inf`, `-Inf`, `NaN`).
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Uint(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Escape a label value: backslash, double quote and newline.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `a="x",b="y"` with escaped values (no braces).
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}{k}=\"{}\"", escape(v));
    }
    out
}

/// The `# HELP` and `# TYPE` lines of one family (help texts are constants without `\` or newline).
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line; `labels` is already escaped and may be empty.
fn sample(out: &mut String, name: &str, labels: &str, value: Value) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// `name_bucket{labels,le=...}` for every bound and `+Inf`, then `name_sum` and `name_count`.
fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot, bounds: &[f64]) {
    let sep = if labels.is_empty() { "" } else { "," };
    let bucket = format!("{name}_bucket");
    for (i, n) in h.cumulative.iter().enumerate() {
        let le = bounds
            .get(i)
            .map_or(Value::Float(f64::INFINITY), |b| Value::Float(*b));
        sample(
            out,
            &bucket,
            &format!("{labels}{sep}le=\"{le}\""),
            Value::Uint(*n),
        );
    }
    sample(
        out,
        &format!("{name}_sum"),
        labels,
        Value::Float(h.sum_seconds),
    );
    sample(
        out,
        &format!("{name}_count"),
        labels,
        Value::Uint(h.count()),
    );
}

fn render_http(out: &mut String, http: &HttpMetrics) {
    let series = http.snapshot();
    let label =
        |(route, status): (&str, u16)| labels(&[("route", route), ("status", &status.to_string())]);
    let name = "shapesync_http_requests_total";
    header(
        out,
        name,
        "counter",
        "HTTP requests finished, by route and status.",
    );
    for (key, h) in &series {
        sample(out, name, &label(*key), Value::Uint(h.count()));
    }
    let name = "shapesync_http_request_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "HTTP request latency, by route and status.",
    );
    for (key, h) in &series {
        histogram(out, name, &label(*key), h, LATENCY_BUCKETS);
    }
    let name = "shapesync_http_requests_active";
    header(out, name, "gauge", "Requests being served.");
    sample(out, name, "", Value::Int(http.active_count()));
    let name = "shapesync_http_requests_parked";
    header(
        out,
        name,
        "gauge",
        "Long-poll requests parked, waiting for new data.",
    );
    sample(out, name, "", Value::Int(http.parked_count()));
}

/// A per-tenant gauge family: name, help, value.
type TenantGauge = (&'static str, &'static str, fn(&TenantSample) -> Value);

const TENANT_GAUGES: &[TenantGauge] = &[
    (
        "shapesync_replication_lag_bytes",
        "WAL the server has that is not acknowledged yet.",
        |t| Value::Uint(t.lag_bytes()),
    ),
    (
        "shapesync_replication_lag_seconds",
        "Seconds since the acknowledged position last caught up with the server.",
        |t| Value::Float(t.lag_seconds),
    ),
    (
        "shapesync_replication_acked_lsn",
        "Latest LSN acknowledged to the replication slot.",
        |t| Value::Uint(t.acked_lsn),
    ),
    ("shapesync_shapes", "Live shapes.", |t| {
        Value::Uint(t.shapes)
    }),
    ("shapesync_storage_bytes", "Bytes of shape logs.", |t| {
        Value::Uint(t.storage_bytes)
    }),
];

const TENANT_COUNTERS: &[TenantGauge] = &[
    (
        "shapesync_compacted_chunks_total",
        "Sealed change chunks stored compacted.",
        |t| Value::Uint(t.compacted_chunks),
    ),
    (
        "shapesync_compaction_saved_bytes_total",
        "Bytes of JSON that compaction removed from sealed chunks.",
        |t| Value::Uint(t.compaction_saved_bytes),
    ),
];

fn render_tenants(out: &mut String, tenants: &[TenantSample]) {
    let mut tenants: Vec<&TenantSample> = tenants.iter().collect();
    tenants.sort_by(|a, b| a.database_id.cmp(&b.database_id));
    let families = TENANT_GAUGES
        .iter()
        .map(|f| (f, "gauge"))
        .chain(TENANT_COUNTERS.iter().map(|f| (f, "counter")));
    for ((name, help, value), kind) in families {
        header(out, name, kind, help);
        for t in &tenants {
            sample(
                out,
                name,
                &labels(&[("database_id", &t.database_id)]),
                value(t),
            );
        }
    }
    let name = "shapesync_database_up";
    header(
        out,
        name,
        "gauge",
        "1 when the database's replication is active, else 0.",
    );
    for t in &tenants {
        let up = Value::Uint(u64::from(t.status == "active"));
        sample(
            out,
            name,
            &labels(&[("database_id", &t.database_id), ("status", t.status)]),
            up,
        );
    }
    let name = "shapesync_integrity_events_total";
    header(
        out,
        name,
        "counter",
        "Problems noticed with the replication setup or a change, and repairs made (see README, Guarantees).",
    );
    for t in &tenants {
        for e in IntegrityEvent::ALL {
            sample(
                out,
                name,
                &labels(&[("database_id", &t.database_id), ("event", e.label())]),
                Value::Uint(t.integrity.get(e)),
            );
        }
    }
    let name = "shapesync_fsync_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Latency of a group commit (one fsync of the store commit log for all touched shapes).",
    );
    for t in &tenants {
        let l = labels(&[("database_id", &t.database_id)]);
        histogram(out, name, &l, &t.fsync.snapshot(), t.fsync.bounds);
    }
}

/// Everything, as Prometheus text (format 0.0.4): HTTP families first, then per-tenant ones
/// (tenants sorted by id). Every family prints its `# HELP` and `# TYPE` even without samples.
pub fn render(http: &HttpMetrics, files: FileSample, tenants: &[TenantSample]) -> String {
    let mut out = String::with_capacity(4096);
    render_http(&mut out, http);
    render_files(&mut out, files);
    render_tenants(&mut out, tenants);
    out
}

/// The ready answers to repeated requests (`serve::memo`): answers given, held, bytes held.
pub fn render_response_cache(out: &mut String, hits: u64, entries: u64, bytes: u64) {
    let name = "shapesync_response_cache_hits_total";
    header(
        out,
        name,
        "counter",
        "Shape requests answered from the ready answers (sealed snapshot chunks asked for again).",
    );
    sample(out, name, "", Value::Uint(hits));
    for (name, help, v) in [
        (
            "shapesync_response_cache_entries",
            "Ready answers held now.",
            entries,
        ),
        (
            "shapesync_response_cache_bytes",
            "Bytes of ready answers held now (--response-cache-mb caps them).",
            bytes,
        ),
    ] {
        header(out, name, "gauge", help);
        sample(out, name, "", Value::Uint(v));
    }
}

/// Authorization counters: refused credentials by code, admin changes to roles and keys.
pub fn render_auth(
    out: &mut String,
    denials: &[(&'static str, u64)],
    changes: &[((&'static str, &'static str), u64)],
) {
    let name = "shapesync_auth_denied_total";
    header(
        out,
        name,
        "counter",
        "Shape requests refused for their credential, by code (auth_required, auth_invalid, forbidden).",
    );
    for (code, n) in denials {
        sample(out, name, &labels(&[("code", code)]), Value::Uint(*n));
    }
    let name = "shapesync_admin_changes_total";
    header(
        out,
        name,
        "counter",
        "Admin changes to roles and API keys, by object and action.",
    );
    for ((object, action), n) in changes {
        sample(
            out,
            name,
            &labels(&[("object", object), ("action", action)]),
            Value::Uint(*n),
        );
    }
}

fn render_files(out: &mut String, files: FileSample) {
    let gauges = [
        (
            "shapesync_log_files_budget",
            "Shape log files that may be kept open at once (from RLIMIT_NOFILE).",
            files.budget,
        ),
        (
            "shapesync_log_files_open",
            "Shape log files kept open now.",
            files.open,
        ),
        (
            "shapesync_http_connections_limit",
            "HTTP connections allowed at once (--max-connections).",
            files.connections_limit,
        ),
        (
            "shapesync_http_connections_open",
            "HTTP connections open now, parked long-polls included.",
            files.connections_open,
        ),
    ];
    for (name, help, v) in gauges {
        header(out, name, "gauge", help);
        sample(out, name, "", Value::Uint(v));
    }
    let name = "shapesync_log_files_evicted_total";
    header(
        out,
        name,
        "counter",
        "Shape log files closed to stay within the budget.",
    );
    sample(out, name, "", Value::Uint(files.evicted));
    let name = "shapesync_http_connections_refused_total";
    header(
        out,
        name,
        "counter",
        "HTTP connections refused (503, then closed) over --max-connections or --max-connections-per-ip.",
    );
    sample(out, name, "", Value::Uint(files.connections_refused));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn tenant(id: &str, acked_lsn: u64, server_wal_end: u64) -> TenantSample {
        let fsync = Arc::new(Histogram::default());
        fsync.observe(0.002);
        TenantSample {
            database_id: id.into(),
            status: "active",
            shapes: 3,
            storage_bytes: 10,
            acked_lsn,
            server_wal_end,
            lag_seconds: 0.25,
            fsync,
            compacted_chunks: 2,
            compaction_saved_bytes: 70,
            integrity: Arc::new(IntegrityCounters::default()),
        }
    }

    /// The value of the line that starts with `prefix` (a name with its labels, then a space).
    fn value_of(text: &str, prefix: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
            .map(str::to_string)
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_equals_count() {
        static BOUNDS: &[f64] = &[0.1, 1.0];
        let h = Histogram::new(BOUNDS);
        h.observe(0.05);
        h.observe(0.1); // on a bound: counts in that bucket (le is inclusive)
        h.observe(0.5);
        h.observe(5.0);
        h.observe_duration(Duration::from_millis(400));
        let mut out = String::new();
        histogram(&mut out, "x", "a=\"b\"", &h.snapshot(), BOUNDS);
        assert_eq!(
            value_of(&out, "x_bucket{a=\"b\",le=\"0.1\"}").as_deref(),
            Some("2"),
            "{out}"
        );
        assert_eq!(
            value_of(&out, "x_bucket{a=\"b\",le=\"1\"}").as_deref(),
            Some("4")
        );
        assert_eq!(
            value_of(&out, "x_bucket{a=\"b\",le=\"+Inf\"}").as_deref(),
            Some("5")
        );
        assert_eq!(value_of(&out, "x_count{a=\"b\"}").as_deref(), Some("5"));
        let sum: f64 = value_of(&out, "x_sum{a=\"b\"}").unwrap().parse().unwrap();
        assert!((sum - 6.05).abs() < 1e-9, "sum {sum}");
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn odd_observations_do_not_corrupt_the_sum() {
        let h = Histogram::default();
        h.observe(-1.0);
        h.observe(f64::NAN);
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1, "negative in the first bucket");
        assert_eq!(s.count(), 2, "NaN in +Inf");
        assert_eq!(s.sum_seconds, 0.0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(labels(&[("k", "v\""), ("l", "w")]), r#"k="v\"",l="w""#);
        let text = render(
            &HttpMetrics::default(),
            FileSample::default(),
            &[tenant("a\\\"\nb", 1, 1)],
        );
        assert!(
            text.contains(r#"shapesync_shapes{database_id="a\\\"\nb"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn records_requests_by_route_and_status() {
        let http = HttpMetrics::default();
        http.record("shape", 200, Duration::from_millis(3));
        http.record("shape", 200, Duration::from_millis(4));
        http.record("health", 503, Duration::from_millis(1));
        let text = render(&http, FileSample::default(), &[]);
        assert!(text.contains("shapesync_http_requests_total{route=\"shape\",status=\"200\"} 2\n"));
        assert!(text.contains("shapesync_http_requests_total{route=\"health\",status=\"503\"} 1\n"));
        let inf = "shapesync_http_request_duration_seconds_bucket{route=\"shape\",status=\"200\",le=\"+Inf\"}";
        assert_eq!(value_of(&text, inf).as_deref(), Some("2"));
        let first = "shapesync_http_request_duration_seconds_bucket{route=\"shape\",status=\"200\",le=\"0.0025\"}";
        assert_eq!(value_of(&text, first).as_deref(), Some("0"));
        let health = text.find("route=\"health\"").unwrap();
        assert!(
            health < text.find("route=\"shape\"").unwrap(),
            "series sorted"
        );
    }

    #[test]
    fn guards_count_while_alive() {
        fn is_static_send<T: Send + 'static>(_: &T) {}
        let http = HttpMetrics::default();
        {
            let a = http.active();
            let _b = http.active();
            let _p = http.parked();
            is_static_send(&a);
            assert_eq!((http.active_count(), http.parked_count()), (2, 1));
            let text = render(&http, FileSample::default(), &[]);
            assert!(text.contains("shapesync_http_requests_active 2\n"));
            assert!(text.contains("shapesync_http_requests_parked 1\n"));
            drop(a);
            assert_eq!(http.active_count(), 1);
        }
        assert_eq!((http.active_count(), http.parked_count()), (0, 0));
    }

    #[test]
    fn lag_bytes_saturate_and_up_follows_status() {
        let mut waiting = tenant("w", 100, 90);
        waiting.status = "waiting";
        let text = render(
            &HttpMetrics::default(),
            FileSample::default(),
            &[tenant("a", 90, 100), waiting],
        );
        let lag = |id: &str| {
            value_of(
                &text,
                &format!("shapesync_replication_lag_bytes{{database_id=\"{id}\"}}"),
            )
        };
        assert_eq!(lag("a").as_deref(), Some("10"));
        assert_eq!(
            lag("w").as_deref(),
            Some("0"),
            "ahead of the server: 0, not a wrap"
        );
        assert!(text.contains("shapesync_database_up{database_id=\"a\",status=\"active\"} 1\n"));
        assert!(text.contains("shapesync_database_up{database_id=\"w\",status=\"waiting\"} 0\n"));
        assert!(text.contains("shapesync_replication_lag_seconds{database_id=\"a\"} 0.25\n"));
        assert!(text.contains("shapesync_fsync_duration_seconds_count{database_id=\"a\"} 1\n"));
    }

    #[test]
    fn lsns_print_exactly_and_floats_in_prometheus_spelling() {
        let mut t = tenant("a", u64::MAX - 1, u64::MAX);
        t.lag_seconds = f64::INFINITY;
        let text = render(&HttpMetrics::default(), FileSample::default(), &[t]);
        let acked = value_of(&text, "shapesync_replication_acked_lsn{database_id=\"a\"}");
        assert_eq!(acked, Some((u64::MAX - 1).to_string()));
        assert!(text.contains("shapesync_replication_lag_seconds{database_id=\"a\"} +Inf\n"));
    }

    type Labels = Vec<(String, String)>;

    fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    }

    /// A sample line split into name, label pairs (unescaped) and value; `None` if malformed.
    fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
        let name_end = line.find(['{', ' '])?;
        let (name, mut rest) = line.split_at(name_end);
        if !valid_name(name) {
            return None;
        }
        let mut pairs = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            rest = body;
            while !rest.starts_with('}') {
                let (key, after) = rest.split_once("=\"")?;
                if !valid_name(key) {
                    return None;
                }
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next()? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            _ => return None,
                        },
                        (_, c) => value.push(c),
                    }
                };
                pairs.push((key.to_string(), value));
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            rest = &rest[1..];
        }
        let value = rest.strip_prefix(' ')?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().ok()?,
        };
        Some((name.to_string(), pairs, value))
    }

    /// Checks the whole exposition and returns each family's type.
    fn check_exposition(text: &str) -> HashMap<String, String> {
        let mut helps: HashMap<String, usize> = HashMap::new();
        let mut types: HashMap<String, String> = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                *helps.entry(name).or_default() += 1;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(helps.get(name), Some(&1), "HELP before TYPE of {name}");
                let old = types.insert(name.to_string(), kind.to_string());
                assert!(old.is_none(), "second TYPE for {name}");
            } else {
                let (name, _, _) =
                    parse_sample(line).unwrap_or_else(|| panic!("bad line {line:?}"));
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or(name.as_str());
                assert!(types.contains_key(family), "sample before its TYPE: {line}");
            }
        }
        assert!(helps.values().all(|n| *n == 1), "{helps:?}");
        assert_eq!(helps.len(), types.len());
        types
    }

    #[test]
    fn exposition_is_well_formed() {
        let http = HttpMetrics::default();
        http.record("shape", 200, Duration::from_millis(3));
        http.record("admin", 401, Duration::from_secs(100));
        let odd = "we\"ird\\id\nx";
        let text = render(
            &http,
            FileSample::default(),
            &[tenant(odd, 5, 9), tenant("b", 1, 1)],
        );
        let types = check_exposition(&text);
        assert_eq!(types.len(), 20);
        assert_eq!(types["shapesync_http_requests_total"], "counter");
        assert_eq!(types["shapesync_integrity_events_total"], "counter");
        assert!(text.contains(
            "shapesync_integrity_events_total{database_id=\"b\",event=\"value_missing\"} 0\n"
        ));
        assert_eq!(types["shapesync_log_files_open"], "gauge");
        assert_eq!(types["shapesync_compacted_chunks_total"], "counter");
        assert!(text.contains("shapesync_compaction_saved_bytes_total{database_id=\"b\"} 70\n"));
        assert_eq!(types["shapesync_fsync_duration_seconds"], "histogram");
        let ids: Vec<String> = text
            .lines()
            .filter_map(parse_sample)
            .filter(|(n, _, _)| n == "shapesync_shapes")
            .map(|(_, l, _)| l[0].1.clone())
            .collect();
        assert_eq!(ids, ["b", odd], "sorted by id, escaping round-trips");
    }

    #[test]
    fn empty_families_still_print_help_and_type() {
        let text = render(&HttpMetrics::default(), FileSample::default(), &[]);
        let types = check_exposition(&text);
        assert_eq!(types.len(), 20);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "shapesync_http_requests_active 0",
                "shapesync_http_requests_parked 0",
                "shapesync_log_files_budget 0",
                "shapesync_log_files_open 0",
                "shapesync_http_connections_limit 0",
                "shapesync_http_connections_open 0",
                "shapesync_log_files_evicted_total 0",
                "shapesync_http_connections_refused_total 0",
            ]
        );
        assert_eq!(
            text,
            render(&HttpMetrics::default(), FileSample::default(), &[]),
            "stable"
        );
    }

    #[test]
    fn the_parser_rejects_malformed_lines() {
        for bad in [
            "x{a=\"b\"} nope",
            "x{a=\"b} 1",
            "1x 2",
            "x{a=\"\\q\"} 1",
            "x",
        ] {
            assert!(parse_sample(bad).is_none(), "{bad}");
        }
        let (_, l, v) = parse_sample("x{a=\"q\\\"\",b=\"\"} -Inf").unwrap();
        assert_eq!(
            (l[0].1.as_str(), l[1].1.as_str(), v),
            ("q\"", "", f64::NEG_INFINITY)
        );
    }
}

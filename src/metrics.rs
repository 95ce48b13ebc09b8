//! Prometheus metrics (text exposition format 0.0.4) of one server instance, kept in its own
//! state rather than a global recorder (several servers can run in one process): request
//! counters and latency histograms by route and status, in-flight and parked request gauges,
//! and per-tenant replication figures gathered at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

/// Upper bounds (seconds) of latency histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A fixed-bucket histogram, lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (non-cumulative) counts; the last slot is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// `name_bucket{labels,le=…}`, `name_sum{labels}`, `name_count{labels}`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => format!("{b}"),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Decrements its gauge when dropped.
#[derive(Debug)]
pub struct ActiveGuard(Arc<AtomicI64>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// HTTP metrics of one server.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: DashMap<(&'static str, u16), Arc<Histogram>>,
    active: Arc<AtomicI64>,
    parked: Arc<AtomicI64>,
}

impl HttpMetrics {
    pub fn record(&self, route: &'static str, status: u16, d: Duration) {
        let h = self.requests.entry((route, status)).or_default().clone();
        h.observe_duration(d);
    }

    pub fn active(&self) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(&self.active))
    }

    pub fn parked(&self) -> ActiveGuard {
        self.parked.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(&self.parked))
    }

    pub fn active_count(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn parked_count(&self) -> i64 {
        self.parked.load(Ordering::Relaxed)
    }
}

/// One tenant's figures, gathered by the caller at scrape time.
#[derive(Debug, Clone)]
pub struct TenantSample {
    pub database_id: String,
    pub status: &'static str,
    pub shapes: u64,
    pub storage_bytes: u64,
    pub acked_lsn: u64,
    pub server_wal_end: u64,
    pub lag_seconds: f64,
    pub fsync: Arc<Histogram>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Everything, as Prometheus text.
pub fn render(http: &HttpMetrics, tenants: &[TenantSample]) -> String {
    let mut out = String::with_capacity(4096);
    let mut requests: Vec<((&'static str, u16), Arc<Histogram>)> = http
        .requests
        .iter()
        .map(|e| (*e.key(), Arc::clone(e.value())))
        .collect();
    requests.sort_by_key(|(k, _)| *k);

    family(
        &mut out,
        "shapesync_http_requests_total",
        "counter",
        "HTTP requests by route and status.",
    );
    for ((route, status), h) in &requests {
        let _ = writeln!(
            out,
            "shapesync_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {}",
            h.count()
        );
    }
    family(
        &mut out,
        "shapesync_http_request_duration_seconds",
        "histogram",
        "HTTP request latency by route and status.",
    );
    for ((route, status), h) in &requests {
        h.render(
            &mut out,
            "shapesync_http_request_duration_seconds",
            &format!("route=\"{route}\",status=\"{status}\""),
        );
    }
    family(
        &mut out,
        "shapesync_http_requests_active",
        "gauge",
        "Requests being served.",
    );
    let _ = writeln!(
        out,
        "shapesync_http_requests_active {}",
        http.active_count()
    );
    family(
        &mut out,
        "shapesync_http_requests_parked",
        "gauge",
        "Live requests waiting for new data.",
    );
    let _ = writeln!(
        out,
        "shapesync_http_requests_parked {}",
        http.parked_count()
    );

    type Gauge = (
        &'static str,
        &'static str,
        &'static str,
        fn(&TenantSample) -> f64,
    );
    let per_tenant: [Gauge; 6] = [
        (
            "shapesync_replication_lag_bytes",
            "gauge",
            "WAL the server has that is not acknowledged yet.",
            |t| t.server_wal_end.saturating_sub(t.acked_lsn) as f64,
        ),
        (
            "shapesync_replication_lag_seconds",
            "gauge",
            "Seconds since the acknowledged position last caught up with the server.",
            |t| t.lag_seconds,
        ),
        (
            "shapesync_replication_acked_lsn",
            "gauge",
            "Latest LSN acknowledged to the replication slot.",
            |t| t.acked_lsn as f64,
        ),
        ("shapesync_shapes", "gauge", "Live shapes.", |t| {
            t.shapes as f64
        }),
        (
            "shapesync_storage_bytes",
            "gauge",
            "Bytes of shape logs.",
            |t| t.storage_bytes as f64,
        ),
        (
            "shapesync_database_up",
            "gauge",
            "1 when the database's replication is streaming.",
            |t| if t.status == "active" { 1.0 } else { 0.0 },
        ),
    ];
    for (name, kind, help, value) in per_tenant {
        family(&mut out, name, kind, help);
        for t in tenants {
            let id = escape(&t.database_id);
            let labels = if name == "shapesync_database_up" {
                format!("database_id=\"{id}\",status=\"{}\"", t.status)
            } else {
                format!("database_id=\"{id}\"")
            };
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(t));
        }
    }
    family(
        &mut out,
        "shapesync_fsync_duration_seconds",
        "histogram",
        "Latency of a flush batch (fsync of every touched shape log).",
    );
    for t in tenants {
        t.fsync.render(
            &mut out,
            "shapesync_fsync_duration_seconds",
            &format!("database_id=\"{}\"", escape(&t.database_id)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> TenantSample {
        let fsync = Arc::new(Histogram::default());
        fsync.observe(0.002);
        TenantSample {
            database_id: id.into(),
            status: "active",
            shapes: 3,
            storage_bytes: 10,
            acked_lsn: 100,
            server_wal_end: 90,
            lag_seconds: 0.0,
            fsync,
        }
    }

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 2\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{a=\"b\"} 3\n"));
        assert!(out.contains("x_sum{a=\"b\"} 5.55"));
    }

    #[test]
    fn renders_well_formed_families() {
        let http = HttpMetrics::default();
        http.record("shape", 200, Duration::from_millis(3));
        http.record("shape", 200, Duration::from_millis(4));
        {
            let _a = http.active();
            let _p = http.parked();
            assert_eq!((http.active_count(), http.parked_count()), (1, 1));
        }
        assert_eq!((http.active_count(), http.parked_count()), (0, 0));
        let text = render(&http, &[sample("a\"b"), sample("c")]);
        assert!(text.contains("shapesync_http_requests_total{route=\"shape\",status=\"200\"} 2\n"));
        assert!(
            text.contains("shapesync_replication_lag_bytes{database_id=\"c\"} 0\n"),
            "saturating"
        );
        assert!(text.contains("database_id=\"a\\\"b\""), "escaped label");
        let mut helps = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                *helps
                    .entry(rest.split(' ').next().unwrap().to_string())
                    .or_insert(0) += 1;
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (_, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        }
        assert!(helps.values().all(|n| *n == 1));
        assert_eq!(helps.len(), 11);
    }
}

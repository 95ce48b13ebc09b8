//! What a stack reports and how it fails: its status, its replication figures (for health and
//! metrics), and why a shape could not be served. A leaf: every other part of a stack, and its
//! workers, may use it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::lsn::{AtomicLsn, Lsn};
use crate::metrics::IntegrityCounters;

/// Is the stack serving?
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Starting,
    Active,
    /// Replication is down (reconnecting); the text says why.
    Down(String),
    /// Streaming, but the shape logs cannot be written (disk full, I/O error): nothing is
    /// acknowledged, durable data is still served, new shapes are refused with 503 until a
    /// retry of the pending batch succeeds.
    Degraded(String),
}

/// Why a shape could not be served. Database and storage failures keep their source.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    /// The definition does not fit the table: (query parameter, message) for a 400.
    #[error("{1}")]
    Invalid(&'static str, String),
    /// Replication is not streaming yet (or stopped): retry later.
    #[error("the stack is not ready: {0}")]
    NotReady(String),
    /// The source database could not be asked (connection, catalog or publication).
    #[error("{context}")]
    Database {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The shape logs could not be written or read.
    #[error("storage")]
    Storage(#[from] shapesync_storage::StoreError),
}

impl ShapeError {
    /// A database failure with what was being done.
    pub fn database(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ShapeError::Database {
            context,
            source: source.into(),
        }
    }
}

/// Replication progress, for health and metrics.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    /// Latest LSN acknowledged to the server.
    pub acked_lsn: AtomicLsn,
    /// Latest WAL position the server reported (keepalives).
    pub server_wal_end: AtomicLsn,
    /// Unix µs when the last acknowledgement caught up with the server's position.
    pub caught_up_at_micros: AtomicU64,
    /// Flush (fsync batch) latency.
    pub fsync: Arc<crate::metrics::Histogram>,
    /// Sealed change chunks stored compacted, and the bytes of JSON that saved readers.
    pub compacted_chunks: AtomicU64,
    pub compaction_saved_bytes: AtomicU64,
    /// What the integrity checks noticed and repaired.
    pub integrity: Arc<IntegrityCounters>,
}

impl ReplicationStats {
    pub fn new() -> Self {
        ReplicationStats {
            fsync: Arc::new(crate::metrics::Histogram::new(
                crate::metrics::LATENCY_BUCKETS,
            )),
            ..Default::default()
        }
    }

    /// Bytes of WAL the server has that are not acknowledged yet.
    pub fn lag_bytes(&self) -> u64 {
        self.server_wal_end
            .load()
            .bytes_since(self.acked_lsn.load())
    }

    /// Seconds since the acknowledged position last caught up with the server (0 when caught up).
    pub fn lag_seconds(&self) -> f64 {
        if self.lag_bytes() == 0 {
            return 0.0;
        }
        let since = self.caught_up_at_micros.load(Ordering::Relaxed);
        if since == 0 {
            return 0.0;
        }
        (now_micros().saturating_sub(since)) as f64 / 1e6
    }

    pub fn acked(&self, lsn: Lsn) {
        self.acked_lsn.advance(lsn);
        if lsn >= self.server_wal_end.load() {
            self.caught_up_at_micros
                .store(now_micros(), Ordering::Relaxed);
        }
    }

    pub fn server_at(&self, wal_end: Lsn) {
        self.server_wal_end.advance(wal_end);
        if self.caught_up_at_micros.load(Ordering::Relaxed) == 0 {
            self.caught_up_at_micros
                .store(now_micros(), Ordering::Relaxed);
        }
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Resolves once `shutdown` (a stack's shutdown signal) is set, at once if it already is.
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

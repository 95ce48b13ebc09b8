//! Caps on open connections, in total and per peer IP address. A connection holds a
//! [`ConnSlot`] from the moment it is accepted until its stream is dropped: while it reads,
//! while its request runs, while it is parked (a parked long-poll still holds its socket) and
//! while it is replayed. A connection over a cap is answered `503` at once, without reading its
//! request, and closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::response::date_header;

/// Which peer addresses the per-address cap does not apply to (e.g. trusted proxies, whose
/// connections carry many clients).
pub type Exempt = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Counters of the connections a server holds and refuses (for metrics).
#[derive(Debug, Default)]
pub struct ConnStats {
    open: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl ConnStats {
    /// Connections open now (parked ones included).
    pub fn open(&self) -> u64 {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connections refused over a cap since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Caps on open connections (parked long-polls included).
#[derive(Clone)]
pub struct Limits {
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections from one peer IP address (an IPv4-mapped IPv6 address counts as its
    /// IPv4 address).
    pub max_connections_per_ip: usize,
    /// Peers exempt from `max_connections_per_ip` (they still count towards the total).
    pub per_ip_exempt: Option<Exempt>,
    /// Where the server counts what it holds and refuses.
    pub stats: Arc<ConnStats>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("per_ip_exempt", &self.per_ip_exempt.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            per_ip_exempt: None,
            stats: Arc::default(),
        }
    }
}

/// What a refused client is told to wait before it tries again.
const RETRY_AFTER_SECS: u64 = 1;
/// A refused connection is closed at most this long after it was accepted.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this much of a refused connection's request is read (and dropped), so that closing
/// it does not reset the connection before the client has read the answer.
const REFUSE_DRAIN: usize = 16 * 1024;

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Refusals (503 then close) in progress at most; past it, a refused connection is closed at
/// once.
const MAX_REFUSING: usize = 256;

/// Open connections, against their [`Limits`].
pub(crate) struct ConnCounts {
    limits: Limits,
    counts: Mutex<Counts>,
    refusing: Arc<std::sync::atomic::AtomicUsize>,
}

/// One refusal in progress, counted until dropped.
pub(crate) struct Refusing(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnCounts {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(ConnCounts {
            limits,
            counts: Mutex::new(Counts::default()),
            refusing: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// A place for one more refusal in progress, if there is one.
    pub(crate) fn refusing(&self) -> Option<Refusing> {
        use std::sync::atomic::Ordering;
        self.refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_REFUSING).then_some(n + 1)
            })
            .ok()
            .map(|_| Refusing(Arc::clone(&self.refusing)))
    }

    /// A slot for a new connection from `ip`, or `None` if that would pass a cap.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let ip = ip.to_canonical();
        let mut counts = lock(&self.counts);
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        let exempt = || self.limits.per_ip_exempt.as_ref().is_some_and(|e| e(ip));
        if counts.total >= self.limits.max_connections
            || (from_ip >= self.limits.max_connections_per_ip && !exempt())
        {
            self.limits
                .stats
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        counts.total += 1;
        self.limits
            .stats
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counts.per_ip.insert(ip, from_ip + 1);
        Some(ConnSlot {
            counts: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub(crate) fn total(&self) -> usize {
        lock(&self.counts).total
    }

    /// Connections open now from `ip`.
    pub(crate) fn count_from(&self, ip: IpAddr) -> usize {
        let counts = lock(&self.counts);
        counts.per_ip.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

/// One open connection, counted until this is dropped (with the connection's stream).
pub(crate) struct ConnSlot {
    counts: Arc<ConnCounts>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts.counts);
        counts.total = counts.total.saturating_sub(1);
        self.counts
            .limits
            .stats
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Answer a connection over a cap with `503` and close it, within [`REFUSE_TIMEOUT`]: the answer
/// is written before anything is read, then at most [`REFUSE_DRAIN`] bytes of what the client
/// sent are read and dropped (closing a socket with unread input would reset it, and the
/// client could lose the answer).
pub(crate) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let answer = async {
        let body = r#"{"message":"Too many connections","code":"connection_limit_exceeded"}"#;
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\ndate: {}\r\n\r\n{body}",
            body.len(),
            date_header().to_str().unwrap_or(""),
        );
        stream.write_all(head.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut drained = 0;
        while drained < REFUSE_DRAIN {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, answer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_in_progress_are_bounded() {
        let counts = ConnCounts::new(Limits::default());
        let held: Vec<Refusing> = (0..MAX_REFUSING)
            .filter_map(|_| counts.refusing())
            .collect();
        assert_eq!(held.len(), MAX_REFUSING);
        assert!(
            counts.refusing().is_none(),
            "past the bound: closed at once"
        );
        drop(held);
        assert!(counts.refusing().is_some(), "places come back");
    }
}

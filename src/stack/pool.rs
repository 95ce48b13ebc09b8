//! Snapshot connections: at most `max` snapshots (initial shape snapshots and subset queries)
//! talk to the source database at once, and their connections are reused, so a creation storm
//! or a burst of subsets does not open one Postgres connection each.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::postgres::connect::SourceDb;

pub struct SnapshotPool {
    db: SourceDb,
    permits: Arc<Semaphore>,
    /// Subsets may hold at most half of the permits: a burst of heavy subsets cannot starve
    /// the initial snapshots of new shapes.
    subset_permits: Arc<Semaphore>,
    /// Move-in queries of subquery shapes likewise hold at most half: a storm of moves cannot
    /// starve new shapes either.
    move_permits: Arc<Semaphore>,
    idle: Mutex<Vec<tokio_postgres::Client>>,
    max: usize,
}

/// A connection of the pool, held with its permit. [`PooledConn::release`] gives it back after
/// a clean end of transaction; [`PooledConn::discard`] cancels what it was running and closes
/// it (a query abandoned mid-COPY would otherwise run on in Postgres until it ends).
pub struct PooledConn {
    client: tokio_postgres::Client,
    pool: Arc<SnapshotPool>,
    _permit: OwnedSemaphorePermit,
    _subset_permit: Option<OwnedSemaphorePermit>,
}

/// No connection for a subset within the wait: the pool is busy (503, retry).
#[derive(Debug, thiserror::Error)]
#[error("every snapshot connection is busy; retry shortly")]
pub struct PoolBusy;

impl SnapshotPool {
    pub fn new(db: SourceDb, max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(SnapshotPool {
            db,
            permits: Arc::new(Semaphore::new(max)),
            subset_permits: Arc::new(Semaphore::new((max / 2).max(1))),
            move_permits: Arc::new(Semaphore::new((max / 2).max(1))),
            idle: Mutex::new(Vec::new()),
            max,
        })
    }

    /// Wait for a permit, then an idle connection or a new one.
    pub async fn get(self: &Arc<Self>) -> anyhow::Result<PooledConn> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| anyhow::anyhow!("the snapshot pool is closed"))?;
        self.connection(permit, None).await
    }

    /// A connection for a subset: within the subsets' share of the permits, waiting at most
    /// `wait` for one ([`PoolBusy`] after that).
    pub async fn get_for_subset(
        self: &Arc<Self>,
        wait: std::time::Duration,
    ) -> anyhow::Result<PooledConn> {
        let permits = async {
            let share = Arc::clone(&self.subset_permits).acquire_owned().await?;
            let permit = Arc::clone(&self.permits).acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>((share, permit))
        };
        let (share, permit) = tokio::time::timeout(wait, permits)
            .await
            .map_err(|_| PoolBusy)?
            .map_err(|_| anyhow::anyhow!("the snapshot pool is closed"))?;
        self.connection(permit, Some(share)).await
    }

    /// A connection for a move-in query: within the move-ins' share of the permits.
    pub async fn get_for_moves(self: &Arc<Self>) -> anyhow::Result<PooledConn> {
        let closed = |_| anyhow::anyhow!("the snapshot pool is closed");
        let share = Arc::clone(&self.move_permits)
            .acquire_owned()
            .await
            .map_err(closed)?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(closed)?;
        self.connection(permit, Some(share)).await
    }

    async fn connection(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        share: Option<OwnedSemaphorePermit>,
    ) -> anyhow::Result<PooledConn> {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match idle {
            Some(c) => c,
            None => self.db.connect().await?,
        };
        Ok(PooledConn {
            client,
            pool: Arc::clone(self),
            _permit: permit,
            _subset_permit: share,
        })
    }
}

impl PooledConn {
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// Cancel whatever the connection is running, then close it (the permit is held until
    /// the cancel request has been sent).
    pub async fn discard(self) {
        let cancel = self.client.cancel_token();
        drop(self.client);
        if let Err(e) = cancel.cancel_query(tokio_postgres::NoTls).await {
            tracing::debug!(error = %e, "cancelling an abandoned snapshot query");
        }
    }

    /// Back to the pool: call only once the connection's transaction has ended cleanly.
    pub fn release(self) {
        if self.client.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.pool.max {
            idle.push(self.client);
        }
    }
}

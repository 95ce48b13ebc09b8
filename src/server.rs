//! A running shapesync: the HTTP listener plus the stack it serves, started and stopped as one.
//! Used by the binary and by the integration tests (which run it in-process on a loopback port).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::postgres::connect::SourceDb;
use crate::serve::response::CacheAges;
use crate::serve::{router, AppState};
use crate::stack::{Stack, StackConfig};

/// Everything a server needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub listen: SocketAddr,
    pub storage_dir: PathBuf,
    pub stream_id: String,
    pub long_poll: Duration,
    pub chunk_bytes: u64,
    pub cache_ages: CacheAges,
    pub max_snapshots: usize,
}

impl Config {
    /// Defaults for everything but the database and storage directory.
    pub fn new(database_url: impl Into<String>, storage_dir: impl Into<PathBuf>) -> Self {
        Config {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            storage_dir: storage_dir.into(),
            stream_id: "default".into(),
            long_poll: Duration::from_secs(20),
            chunk_bytes: 10 * 1024 * 1024,
            cache_ages: CacheAges::default(),
            max_snapshots: 20,
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub stack: Arc<Stack>,
    stop_http: watch::Sender<bool>,
    http: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(cfg: Config) -> anyhow::Result<Server> {
        let db = SourceDb::parse(&cfg.database_url)?;
        tracing::info!(database = %db.redacted(), storage = %cfg.storage_dir.display(), "starting");
        let stack = Stack::start(StackConfig {
            id: "default".into(),
            db,
            stream_id: cfg.stream_id.clone(),
            storage_dir: cfg.storage_dir.clone(),
            chunk_bytes: cfg.chunk_bytes,
            max_snapshots: cfg.max_snapshots,
        })
        .await?;
        let state = Arc::new(AppState {
            stack: Arc::clone(&stack),
            long_poll: cfg.long_poll,
            cache_ages: cfg.cache_ages,
        });
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let (stop_http, mut stop_rx) = watch::channel(false);
        let app = router(state);
        let http = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "http server failed");
            }
        });
        tracing::info!(%addr, "listening");
        Ok(Server {
            addr,
            stack,
            stop_http,
            http,
        })
    }

    /// Wait until replication is streaming (health `active`), up to `limit`.
    pub async fn wait_active(&self, limit: Duration) -> anyhow::Result<()> {
        let mut status = self.stack.subscribe_status();
        tokio::time::timeout(
            limit,
            status.wait_for(|s| *s == crate::stack::Status::Active),
        )
        .await
        .map_err(|_| anyhow::anyhow!("not active after {limit:?}: {:?}", self.stack.status()))??;
        Ok(())
    }

    /// Graceful stop: parked long-polls answer, complete transactions are made durable and
    /// acknowledged, the replication connection closes.
    pub async fn stop(self) {
        let _ = self.stop_http.send(true);
        self.stack.stop().await;
        let _ = self.http.await;
    }
}

//! A running shapesync: the HTTP listener plus the stack it serves, started and stopped as one.
//! Used by the binary and by the integration tests (which run it in-process on a loopback port).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::postgres::preflight::{self, Preflight};
use crate::serve::access::{Access, AccessConfig};
use crate::serve::response::CacheAges;
use crate::serve::{router, AppState};
use crate::stack::{self, Stack};
use crate::tenant::{DatabaseId, TenantBase, TenantRecord, Tenants, DEFAULT_TENANT};

/// Everything a server needs.
#[derive(Clone)]
pub struct Config {
    /// The default tenant's database (more can be added through the admin API).
    pub database_url: Option<String>,
    pub listen: SocketAddr,
    pub storage_dir: PathBuf,
    pub stream_id: String,
    pub long_poll: Duration,
    pub sse_timeout: Duration,
    /// Enable `DELETE /v1/shape`.
    pub shape_deletion: bool,
    /// Concurrent initial (`offset=-1`) and other shape requests admitted.
    pub max_initial_requests: usize,
    pub max_existing_requests: usize,
    pub chunk_bytes: u64,
    pub cache_ages: CacheAges,
    pub max_snapshots: usize,
    /// How often tables with shapes are checked for drops, renames and column changes.
    pub schema_check: Duration,
    pub access: AccessConfig,
    /// Object-store tier for sealed chunks: `s3://bucket/prefix`, `file:///dir` or `memory://`.
    pub object_store_url: Option<String>,
    /// Archive shapes nobody requested for this long (see `shape::lifecycle`).
    pub local_retention: Option<Duration>,
    /// Shape cap per database; the least recently used shape is evicted beyond it.
    pub max_shapes: Option<usize>,
    /// Compact sealed change chunks (on by default).
    pub compaction: bool,
    /// Subquery shapes write a delete for each row a move-out takes away, before the event
    /// (on by default: the official client ignores move-out events).
    pub subquery_move_out_deletes: bool,
    /// How large a subset answer may be.
    pub subset_caps: crate::shape::subset::SubsetCaps,
    /// Memory for ready answers to repeated requests (`serve::memo`); 0: none.
    pub response_cache_bytes: usize,
    /// Open connections allowed in total (parked long-polls included); by default what the
    /// open-file limit leaves after the shape logs' budget and a reserve.
    pub max_connections: Option<usize>,
    /// Open connections allowed from one client address (trusted proxies and loopback are
    /// exempt); by default an eighth of the total, at most 1,000.
    pub max_connections_per_ip: Option<usize>,
}

impl std::fmt::Debug for Config {
    // The database URL holds credentials: only its redacted form is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field(
                "database",
                &self.database_url.as_deref().map(|u| {
                    crate::postgres::connect::SourceDb::parse(u)
                        .map(|d| d.redacted())
                        .unwrap_or_default()
                }),
            )
            .field("listen", &self.listen)
            .field("storage_dir", &self.storage_dir)
            .field("stream_id", &self.stream_id)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults for everything but the database and storage directory.
    pub fn new(database_url: impl Into<String>, storage_dir: impl Into<PathBuf>) -> Self {
        Config {
            database_url: Some(database_url.into()),
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            storage_dir: storage_dir.into(),
            stream_id: "default".into(),
            long_poll: Duration::from_secs(20),
            sse_timeout: Duration::from_secs(60),
            shape_deletion: false,
            max_initial_requests: 300,
            max_existing_requests: 10_000,
            chunk_bytes: 10 * 1024 * 1024,
            cache_ages: CacheAges::default(),
            max_snapshots: 20,
            schema_check: Duration::from_secs(5),
            access: AccessConfig::insecure(),
            object_store_url: None,
            local_retention: None,
            max_shapes: None,
            compaction: true,
            subquery_move_out_deletes: true,
            subset_caps: crate::shape::subset::SubsetCaps::default(),
            response_cache_bytes: 64 << 20,
            max_connections: None,
            max_connections_per_ip: None,
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub tenants: Arc<Tenants>,
    /// The default tenant's stack, if there is one.
    pub stack: Option<Arc<Stack>>,
    stop_http: watch::Sender<bool>,
    http: tokio::task::JoinHandle<()>,
    /// One writer per storage directory: held until the server has stopped.
    lock: shapesync_storage::DirLock,
}

/// Connections allowed when no cap is given: half the open-file limit is the shape logs'
/// budget; of the other half, 256 descriptors stay for Postgres connections, spill files and
/// the rest.
fn connections_for_limit(soft: u64) -> usize {
    usize::try_from((soft / 2).saturating_sub(256))
        .unwrap_or(usize::MAX)
        .clamp(16, 1_000_000)
}

/// The settings a start needs, checked before anything is written.
pub fn check_settings(stream_id: &str, access: &AccessConfig) -> anyhow::Result<()> {
    if !stack::valid_stream_id(stream_id) {
        anyhow::bail!("stream id must be 1-40 characters of [a-z0-9_]: {stream_id:?}");
    }
    if !access.insecure && access.admin_key.is_none() {
        anyhow::bail!(
            "set an admin key (--admin-key) and a shape API secret (--secret) or roles and API \
             keys, or run with --insecure to serve without them"
        );
    }
    if let Some(key) = &access.jwt {
        key.verifier()
            .map_err(|e| anyhow::anyhow!("--jwt-secret / --jwt-public-key: {e}"))?;
    }
    Ok(())
}

/// Bind the HTTP address; the error names it and the flag that sets it.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} (--listen / SHAPESYNC_LISTEN): {e}")
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Server {
    /// Bind `cfg.listen` and start.
    pub async fn start(cfg: Config) -> anyhow::Result<Server> {
        let listener = bind(cfg.listen)?;
        Server::start_on(cfg, listener).await
    }

    /// Start serving on `listener` (bound before anything was written to disk). A database
    /// given in `cfg` that cannot work as configured (credentials, names, `wal_level`,
    /// replication privilege) fails the start with the reason and the fix.
    pub async fn start_on(cfg: Config, listener: std::net::TcpListener) -> anyhow::Result<Server> {
        check_settings(&cfg.stream_id, &cfg.access)?;
        let access = &cfg.access;
        if access.insecure {
            tracing::warn!("running in insecure mode: no secret is required for shapes and the admin API is open");
        }
        if let Some(url) = &cfg.database_url {
            let db = crate::postgres::connect::SourceDb::parse(url)?;
            if let Preflight::Unreachable(e) = preflight::check(&db).await? {
                tracing::warn!(database = %db.redacted(), error = %format!("{e:#}"), "the database is not reachable yet: starting anyway and retrying");
            }
        }
        tracing::info!(storage = %cfg.storage_dir.display(), "starting");
        let lock = shapesync_storage::DirLock::acquire(&cfg.storage_dir)?;
        let auth_store = Arc::new(
            shapesync_auth::AuthStore::open(&cfg.storage_dir.join("auth.json"))
                .map_err(|e| anyhow::anyhow!("roles and API keys (auth.json): {e}"))?,
        );
        let jwt = match &access.jwt {
            Some(k) => Some(k.verifier()?),
            None => None,
        };
        // Shape logs are opened and closed within a budget of descriptors, whatever the number
        // of shapes; the budget comes from the limit, raised to the hard limit first.
        let soft = shapesync_storage::raise_nofile_limit();
        let file_budget =
            shapesync_storage::FileBudget::new(shapesync_storage::budget_for_limit(soft));
        let max_connections = cfg
            .max_connections
            .unwrap_or_else(|| connections_for_limit(soft));
        let limits = shapesync_http1::Limits {
            max_connections,
            // One address may not take every connection.
            max_connections_per_ip: cfg
                .max_connections_per_ip
                .unwrap_or((max_connections / 8).clamp(16, 1_000)),
            // A trusted proxy's connections carry many clients, and so do a local proxy's (a
            // loopback peer): only the total caps them.
            per_ip_exempt: Some({
                let proxies = cfg.access.trusted_proxies.clone();
                Arc::new(move |ip: std::net::IpAddr| {
                    let ip = ip.to_canonical();
                    ip.is_loopback() || proxies.iter().any(|n| n.contains(ip))
                }) as shapesync_http1::Exempt
            }),
            stats: Arc::default(),
        };
        tracing::info!(
            nofile_limit = soft,
            open_log_files = file_budget.limit(),
            max_connections = limits.max_connections,
            max_connections_per_ip = limits.max_connections_per_ip,
            "open-file budget"
        );
        let default = cfg.database_url.as_ref().map(|url| TenantRecord {
            id: DEFAULT_TENANT
                .parse::<DatabaseId>()
                .unwrap_or_else(|_| DatabaseId::generate()),
            database_url: url.clone(),
            use_ipv6: false,
            secret: None,
            identity: None,
        });
        let tenants = Tenants::start(
            TenantBase {
                storage_dir: cfg.storage_dir.clone(),
                stream_id: cfg.stream_id.clone(),
                chunk_bytes: cfg.chunk_bytes,
                max_snapshots: cfg.max_snapshots,
                schema_check: cfg.schema_check,
                file_budget: Arc::clone(&file_budget),
                compaction: crate::shape::lifecycle::CompactionWorker::start(),
                subquery_move_out_deletes: cfg.subquery_move_out_deletes,
                lifecycle: crate::shape::lifecycle::LifecycleConfig {
                    tier: match &cfg.object_store_url {
                        Some(url) => {
                            Some(shapesync_storage::object_tier::ObjectTier::from_url(url)?)
                        }
                        None => None,
                    },
                    local_retention: cfg.local_retention,
                    max_shapes: cfg.max_shapes,
                    compaction: cfg.compaction,
                },
            },
            default,
        )
        .await?;
        let stack = tenants
            .resolve(Some(DEFAULT_TENANT))
            .ok()
            .map(|t| Arc::clone(&t.stack));
        let state = Arc::new(AppState {
            tenants: Arc::clone(&tenants),
            access: Access::new(cfg.access.clone()),
            metrics: crate::metrics::HttpMetrics::default(),
            long_poll: cfg.long_poll,
            sse_timeout: cfg.sse_timeout,
            shape_deletion: cfg.shape_deletion,
            admission: crate::serve::admission::Admission::new(
                cfg.max_initial_requests,
                cfg.max_existing_requests,
            ),
            cache_ages: cfg.cache_ages,
            file_budget,
            subset_caps: cfg.subset_caps,
            spill_budget: crate::shape::spill::SpillBudget::new(cfg.subset_caps.spill_bytes),
            connections: (limits.max_connections, Arc::clone(&limits.stats)),
            auth: crate::serve::authz::AuthState::new(auth_store, jwt),
            memo: crate::serve::memo::Memo::new(cfg.response_cache_bytes),
        });
        // Forget idle rate-limit keys now and then, for as long as the server lives.
        let housekeeping = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                match housekeeping.upgrade() {
                    Some(state) => {
                        state.access.housekeeping();
                        // Keys' last use, written now and then rather than on every request.
                        if let Err(e) = state.auth.store.flush() {
                            tracing::warn!(error = %e, "writing API keys' last use");
                        }
                    }
                    None => break,
                }
            }
        });
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let (stop_http, stop_rx) = watch::channel(false);
        let app = router(Arc::clone(&state));
        let shortcut: Arc<dyn shapesync_http1::Shortcut> =
            Arc::new(crate::serve::memo::Shortcut(state));
        let http = tokio::spawn(async move {
            shapesync_http1::serve(listener, app, stop_rx, limits, Some(shortcut)).await;
        });
        tracing::info!(%addr, "listening");
        Ok(Server {
            addr,
            tenants,
            stack,
            stop_http,
            http,
            lock,
        })
    }

    /// Wait until every tenant's replication is streaming (health `active`), up to `limit`.
    pub async fn wait_active(&self, limit: Duration) -> anyhow::Result<()> {
        for t in self.tenants.all() {
            let mut status = t.stack.subscribe_status();
            tokio::time::timeout(
                limit,
                status.wait_for(|s| *s == crate::stack::Status::Active),
            )
            .await
            .map_err(|_| anyhow::anyhow!("not active after {limit:?}: {:?}", t.stack.status()))??;
        }
        Ok(())
    }

    /// Graceful stop: parked long-polls answer, complete transactions are made durable and
    /// acknowledged, the replication connection closes.
    pub async fn stop(self) {
        self.stop_http.send_replace(true);
        self.tenants.stop_all().await;
        let _ = self.http.await;
        drop(self.lock);
    }
}

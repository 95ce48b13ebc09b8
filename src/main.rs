//! The `shapesync` command.

use std::io::IsTerminal;

/// jemalloc: freed memory goes back to the system, and allocation is cheaper on the request
/// and ingest paths.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use shapesync::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use shapesync::serve::access::{AccessConfig, JwtKey, RateLimit};
use shapesync::serve::response::CacheAges;
use shapesync::server::{Config, Server};

#[derive(Parser)]
#[command(
    name = "shapesync",
    version,
    about = "Postgres shape sync engine (ElectricSQL HTTP protocol)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve shapes over HTTP.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Parser)]
struct ServeArgs {
    /// Source database URL (postgresql://user:pass@host:port/db). Without one, a throwaway
    /// local Postgres with logical replication is started under <storage-dir>/postgres.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// HTTP listen address.
    #[arg(long, env = "SHAPESYNC_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Where shape logs (and the embedded Postgres, if used) live.
    #[arg(long, env = "SHAPESYNC_STORAGE_DIR", default_value = "./.shapesync")]
    storage_dir: PathBuf,
    /// Names the replication slot and publication: shapesync_slot_<id>, shapesync_pub_<id>.
    #[arg(long, env = "SHAPESYNC_STREAM_ID", default_value = "default")]
    stream_id: String,
    /// How long a live request waits for new data, in milliseconds.
    #[arg(long, env = "SHAPESYNC_LONG_POLL_TIMEOUT_MS", default_value_t = 20_000)]
    long_poll_timeout_ms: u64,
    /// How long an SSE live stream stays open, in milliseconds.
    #[arg(long, env = "SHAPESYNC_SSE_TIMEOUT_MS", default_value_t = 60_000)]
    sse_timeout_ms: u64,
    /// Allow DELETE /v1/shape (invalidates a shape; its clients refetch).
    #[arg(long, env = "SHAPESYNC_ENABLE_SHAPE_DELETION")]
    enable_shape_deletion: bool,
    /// Concurrent initial (offset=-1) shape requests admitted; more answer 503.
    #[arg(long, env = "SHAPESYNC_MAX_INITIAL_REQUESTS", default_value_t = 300)]
    max_initial_requests: usize,
    /// Concurrent other shape requests (catch-up and live) admitted; more answer 503.
    #[arg(
        long,
        env = "SHAPESYNC_MAX_EXISTING_REQUESTS",
        default_value_t = 10_000
    )]
    max_existing_requests: usize,
    /// Bytes of JSON per shape log chunk (a cacheable response).
    #[arg(long, env = "SHAPESYNC_CHUNK_BYTES", default_value_t = 10 * 1024 * 1024)]
    chunk_bytes: u64,
    /// How often tables with shapes are checked for drops, renames and column changes, in ms.
    #[arg(long, env = "SHAPESYNC_SCHEMA_CHECK_MS", default_value_t = 5_000)]
    schema_check_ms: u64,
    /// max-age of non-live responses, in seconds.
    #[arg(long, env = "SHAPESYNC_CACHE_MAX_AGE", default_value_t = 60)]
    cache_max_age: u32,
    /// stale-while-revalidate of non-live responses, in seconds.
    #[arg(long, env = "SHAPESYNC_CACHE_STALE_AGE", default_value_t = 300)]
    cache_stale_age: u32,
    /// Port of the embedded Postgres (only without --database-url).
    #[arg(long, env = "SHAPESYNC_EMBEDDED_PG_PORT", default_value_t = 54329)]
    embedded_pg_port: u16,
    /// Log format.
    #[arg(long, env = "SHAPESYNC_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Secret every shape request must carry as `secret=` (or `api_secret=`).
    #[arg(long, env = "SHAPESYNC_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Key for the admin API and /metrics (`X-API-Key` or `Authorization: Bearer`).
    #[arg(long, env = "SHAPESYNC_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Verify `Authorization: Bearer <JWT>` with HS256 and this secret (32 bytes or more); the
    /// token's `role` claim names a role of the admin API.
    #[arg(long, env = "SHAPESYNC_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Verify JWTs with RS256 or ES256 and the public key in this PEM file.
    #[arg(long, env = "SHAPESYNC_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<std::path::PathBuf>,
    /// Serve without a secret and with an open admin API (local development only).
    #[arg(long, env = "SHAPESYNC_INSECURE")]
    insecure: bool,
    /// Proxies whose X-Forwarded-For is trusted (comma-separated addresses or CIDRs).
    #[arg(long, env = "SHAPESYNC_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<shapesync::serve::access::IpNet>,
    /// Admin API requests per second per key or client IP (burst twice that).
    #[arg(long, env = "SHAPESYNC_ADMIN_RATE", default_value_t = 10)]
    admin_rate: u32,
    /// New shapes per second per client IP (burst twice that).
    #[arg(long, env = "SHAPESYNC_SHAPE_CREATE_RATE", default_value_t = 100)]
    shape_create_rate: u32,
    /// Copy sealed chunks to an object store and serve them from there once local copies are
    /// gone: `s3://bucket/prefix` (credentials, region and endpoint from the AWS_* variables,
    /// e.g. AWS_ENDPOINT_URL, AWS_ALLOW_HTTP=true), `file:///dir` or `memory://`.
    #[arg(long, env = "SHAPESYNC_OBJECT_STORE_URL")]
    object_store_url: Option<String>,
    /// Archive a shape nobody requested for this many seconds: its local files are removed
    /// and (with an object store) its sealed chunks keep being served from the bucket.
    #[arg(long, env = "SHAPESYNC_LOCAL_RETENTION_SECS")]
    local_retention: Option<u64>,
    /// At most this many shapes per database; creating one more evicts the least recently
    /// used (clients holding its handle get 409 past what the object store holds).
    #[arg(long, env = "SHAPESYNC_MAX_SHAPES")]
    max_shapes: Option<usize>,
    /// Compact sealed change chunks: runs of updates to one row are merged into one update, so
    /// clients reading old chunks get each row's net change (every offset stays valid).
    #[arg(long, env = "SHAPESYNC_COMPACTION", default_value_t = true, action = clap::ArgAction::Set)]
    compaction: bool,
    /// Subquery shapes write a delete for every row a move-out takes away, just before the
    /// `move-out` event, so clients that ignore move events (the official client's `Shape`)
    /// converge; off, move-outs are the event alone, as the reference server writes them.
    #[arg(long, env = "SHAPESYNC_SUBQUERY_MOVE_OUT_DELETES", default_value_t = true, action = clap::ArgAction::Set)]
    subquery_move_out_deletes: bool,
    /// Memory for ready answers to repeated requests for sealed snapshot chunks, in MiB (0:
    /// none): the second identical request for one and every later one is answered without
    /// routing, authentication or a log read.
    #[arg(long, env = "SHAPESYNC_RESPONSE_CACHE_MB", default_value_t = 64)]
    response_cache_mb: usize,
    /// Rows a subset snapshot may return; a larger one answers 413.
    #[arg(long, env = "SHAPESYNC_SUBSET_MAX_ROWS", default_value_t = 1_000_000)]
    subset_max_rows: u64,
    /// Bytes of JSON a subset snapshot may return; a larger one answers 413. Answers above
    /// 1 MiB are spilled to a temporary file in the storage directory while they are built.
    #[arg(long, env = "SHAPESYNC_SUBSET_MAX_BYTES", default_value_t = 256 << 20)]
    subset_max_bytes: u64,
    /// Bytes of spilled subset answers (in the storage directory) held at once across all
    /// subsets; past it, a large subset answers 503 with retry-after.
    #[arg(long, env = "SHAPESYNC_SUBSET_SPILL_BYTES", default_value_t = 1 << 30)]
    subset_spill_bytes: u64,
    /// How long one subset query may run in Postgres, in ms (its statement_timeout); a longer
    /// one answers 400 naming this flag.
    #[arg(long, env = "SHAPESYNC_SUBSET_TIMEOUT_MS", default_value_t = 30_000)]
    subset_timeout_ms: u64,
    /// Open HTTP connections allowed (parked long-polls included); more are answered 503 and
    /// closed. Default: what the open-file limit leaves after the shape logs' share.
    #[arg(long, env = "SHAPESYNC_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Open HTTP connections allowed from one client address (trusted proxies and loopback
    /// exempt); more are answered 503 and closed. Default: an eighth of --max-connections,
    /// at most 1,000.
    #[arg(long, env = "SHAPESYNC_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: logs redirected to a file or a collector stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let access = AccessConfig {
        secret: args.secret.clone(),
        admin_key: args.admin_key.clone(),
        insecure: args.insecure,
        trusted_proxies: args.trusted_proxies.clone(),
        admin_rate: RateLimit {
            per_second: args.admin_rate,
            burst: args.admin_rate.saturating_mul(2),
        },
        create_rate: RateLimit {
            per_second: args.shape_create_rate,
            burst: args.shape_create_rate.saturating_mul(2),
        },
        jwt: match (&args.jwt_secret, &args.jwt_public_key) {
            (Some(_), Some(_)) => {
                anyhow::bail!("give either --jwt-secret or --jwt-public-key, not both")
            }
            (Some(s), None) => Some(JwtKey::Secret(s.clone())),
            (None, Some(path)) => Some(JwtKey::PublicKeyPem(std::fs::read(path).with_context(
                || {
                    format!(
                        "reading the JWT public key {} (--jwt-public-key)",
                        path.display()
                    )
                },
            )?)),
            (None, None) => None,
        },
    };
    // Before anything is written to disk: settings, then the address (a mistake or a busy
    // address fails the start with nothing left behind).
    shapesync::server::check_settings(&args.stream_id, &access)?;
    let listener = shapesync::server::bind(args.listen)?;
    std::fs::create_dir_all(&args.storage_dir)
        .with_context(|| format!("creating {}", args.storage_dir.display()))?;
    // Before anything else uses the directory (the embedded Postgres lives in it too).
    let _lock = shapesync_storage::DirLock::acquire(&args.storage_dir)?;
    let mut embedded = None;
    let database_url = match args.database_url {
        Some(url) => url,
        None => {
            let dir = args.storage_dir.join("postgres");
            tracing::info!(dir = %dir.display(), port = args.embedded_pg_port, "no --database-url: starting a local Postgres");
            let opts = EmbeddedOptions {
                dir,
                port: Some(args.embedded_pg_port),
                fast_unsafe: false,
                remove_on_exit: false,
                settings: Vec::new(),
            };
            let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts)).await??;
            let url = pg.url("postgres");
            embedded = Some(pg);
            url
        }
    };
    let mut cfg = Config::new(database_url, args.storage_dir.join("data"));
    cfg.access = access;
    cfg.listen = args.listen;
    cfg.object_store_url = args.object_store_url;
    cfg.local_retention = args.local_retention.map(Duration::from_secs);
    cfg.max_shapes = args.max_shapes;
    cfg.compaction = args.compaction;
    cfg.subquery_move_out_deletes = args.subquery_move_out_deletes;
    cfg.max_connections = args.max_connections;
    cfg.max_connections_per_ip = args.max_connections_per_ip;
    cfg.response_cache_bytes = args.response_cache_mb.saturating_mul(1 << 20);
    cfg.subset_caps = shapesync::shape::subset::SubsetCaps {
        max_rows: args.subset_max_rows,
        max_bytes: args.subset_max_bytes,
        spill_bytes: args.subset_spill_bytes,
        timeout_ms: args.subset_timeout_ms.max(1),
    };
    cfg.stream_id = args.stream_id;
    cfg.long_poll = Duration::from_millis(args.long_poll_timeout_ms);
    cfg.chunk_bytes = args.chunk_bytes;
    cfg.schema_check = Duration::from_millis(args.schema_check_ms.max(100));
    cfg.sse_timeout = Duration::from_millis(args.sse_timeout_ms);
    cfg.shape_deletion = args.enable_shape_deletion;
    cfg.max_initial_requests = args.max_initial_requests;
    cfg.max_existing_requests = args.max_existing_requests;
    cfg.cache_ages = CacheAges {
        max_age: args.cache_max_age,
        stale_age: args.cache_stale_age,
    };
    let server = match Server::start_on(cfg, listener).await {
        Ok(s) => s,
        Err(e) => {
            // Leave no embedded Postgres running behind a failed start.
            if let Some(pg) = embedded {
                let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
            }
            return Err(e);
        }
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.stop().await;
    if let Some(pg) = embedded {
        tokio::task::spawn_blocking(move || pg.stop()).await??;
    }
    Ok(())
}

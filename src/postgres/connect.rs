//! Connection settings for a source database: one URL gives both the query connections
//! (tokio-postgres) and the replication connection (pgwire-replication), with the display
//! settings of protocol.md §6.1 applied to both so that snapshot values and streamed values have
//! the same text form.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

/// Session settings that fix how values print (protocol.md §6.1).
pub const DISPLAY_OPTIONS: &str = "-c DateStyle=ISO,DMY -c TimeZone=UTC -c extra_float_digits=1 \
     -c IntervalStyle=iso_8601 -c bytea_output=hex -c standard_conforming_strings=on";

/// A parsed source database URL.
#[derive(Clone)]
pub struct SourceDb {
    config: tokio_postgres::Config,
    host: String,
    /// Address the replication connection dials (the host, or its IPv6 address when preferred).
    dial: String,
    port: u16,
    user: String,
    password: String,
    dbname: String,
}

impl std::fmt::Debug for SourceDb {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceDb({})", self.redacted())
    }
}

impl SourceDb {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| anyhow::Error::new(e).context("invalid database URL"))?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .map(str::to_string)
            .unwrap_or_else(|| "postgres".to_string());
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let dbname = config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        if dbname.is_empty() {
            bail!("invalid database URL: no database name");
        }
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            bail!(
                "invalid database URL: sslmode=require is not supported (shapesync connects \
                 without TLS); use sslmode=prefer or disable, or a TLS-terminating proxy"
            );
        }
        config.options(DISPLAY_OPTIONS);
        config.application_name("shapesync");
        config.connect_timeout(Duration::from_secs(10));
        Ok(SourceDb {
            config,
            dial: host.clone(),
            host,
            port,
            user,
            password,
            dbname,
        })
    }

    /// With `yes`, connect over IPv6: a host name is resolved and its first IPv6 address used
    /// (`database_use_ipv6` of the admin API). Literal addresses and sockets are kept.
    pub async fn prefer_ipv6(mut self, yes: bool) -> Self {
        if !yes || self.host.starts_with('/') || self.host.parse::<std::net::IpAddr>().is_ok() {
            return self;
        }
        if let Ok(mut addrs) = tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            if let Some(v6) = addrs.find(|a| a.is_ipv6()) {
                self.config.hostaddr(v6.ip());
                self.dial = v6.ip().to_string();
            }
        }
        self
    }

    /// `user@host:port/db`, for logs: never includes the password.
    pub fn redacted(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// What the database *is*, whatever the URL's spelling (host name or address, socket,
    /// port alias): `<system identifier>/<database oid>`.
    pub async fn identity(client: &tokio_postgres::Client) -> anyhow::Result<String> {
        let row = client
            .query_one(
                "SELECT (SELECT system_identifier::text FROM pg_control_system()) || '/' || \
                   (SELECT oid::text FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .context("reading the database's identity")?;
        Ok(row.get(0))
    }

    /// Open a query connection; its driver task runs in the background until the client drops.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = self
            .config
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.redacted()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// Replication connection settings for `slot` and `publication`.
    pub fn replication_config(
        &self,
        slot: &str,
        publication: &str,
    ) -> pgwire_replication::ReplicationConfig {
        pgwire_replication::ReplicationConfig::new(
            self.dial.clone(),
            self.user.clone(),
            self.password.clone(),
            self.dbname.clone(),
            slot,
            publication,
        )
        .with_port(self.port)
        .with_tls(pgwire_replication::TlsConfig::disabled())
        .with_status_interval(Duration::from_millis(200))
        .with_wakeup_interval(Duration::from_secs(5))
        .with_options(DISPLAY_OPTIONS)
        .with_application_name("shapesync-replication")
    }
}

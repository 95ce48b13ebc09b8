//! Tenants: the source databases one process serves, each with its own [`Stack`] (slot,
//! publication, shape registry, storage directory). Added and removed at run time through the
//! admin API; durable in `<storage>/tenants.json` (owner-only permissions, written atomically)
//! and restored on restart. A database given on the command line is the `default` tenant and is
//! not written to the file.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::postgres::connect::SourceDb;
use crate::stack::{self, Stack, StackConfig, Status};

/// A tenant's id: 1-64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseId(String);

pub const DEFAULT_TENANT: &str = "default";

impl DatabaseId {
    /// A random id in UUID v4 form.
    pub fn generate() -> Self {
        let b: [u8; 16] = rand::random();
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let v = format!(
            "{}-{}-4{}-{:x}{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            8 + (b[8] & 0x3),
            &h[17..20],
            &h[20..32]
        );
        DatabaseId(v)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A database id that is not 1-64 characters of letters, digits, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1-64 characters of letters, digits, '_' and '-'")]
pub struct InvalidDatabaseId;

impl FromStr for DatabaseId {
    type Err = InvalidDatabaseId;

    fn from_str(s: &str) -> Result<Self, InvalidDatabaseId> {
        if s.is_empty()
            || s.len() > 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(InvalidDatabaseId);
        }
        Ok(DatabaseId(s.to_string()))
    }
}

impl TryFrom<String> for DatabaseId {
    type Error = InvalidDatabaseId;
    fn try_from(s: String) -> Result<Self, InvalidDatabaseId> {
        s.parse()
    }
}

impl From<DatabaseId> for String {
    fn from(d: DatabaseId) -> String {
        d.0
    }
}

/// What is stored for a tenant. The URL holds credentials: never logged or returned.
#[derive(Clone, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: DatabaseId,
    pub database_url: String,
    #[serde(default)]
    pub use_ipv6: bool,
    /// Shape API secret of this tenant (overrides the global one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The database's identity (system identifier and database oid) when it was added, so that
    /// the same database is not added twice under another spelling of its URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl fmt::Debug for TenantRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantRecord")
            .field("id", &self.id)
            .field(
                "database",
                &SourceDb::parse(&self.database_url)
                    .map(|d| d.redacted())
                    .ok(),
            )
            .finish_non_exhaustive()
    }
}

/// Settings shared by every tenant's stack.
#[derive(Debug, Clone)]
pub struct TenantBase {
    pub storage_dir: PathBuf,
    pub stream_id: String,
    pub chunk_bytes: u64,
    pub max_snapshots: usize,
    pub schema_check: std::time::Duration,
    /// The tier is the whole bucket; each tenant gets its folder `<database id>/`.
    pub lifecycle: crate::shape::lifecycle::LifecycleConfig,
    /// The process's open-file budget (see `shapesync_storage::FileBudget`).
    pub file_budget: Arc<shapesync_storage::FileBudget>,
    /// The process's compaction thread.
    pub compaction: crate::shape::lifecycle::CompactionWorker,
    /// Deletes before move-out events (see `server::Config`).
    pub subquery_move_out_deletes: bool,
}

pub struct Tenant {
    pub record: TenantRecord,
    pub stack: Arc<Stack>,
}

/// Why a request names no usable tenant.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResolveError {
    #[error("Database ID was not provided and there are multiple databases. Please specify a database ID using the `database_id` query parameter.")]
    NotProvided,
    #[error("Database not found")]
    NotFound,
}

/// Admin API failures (their texts are the reference's).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("Database {0} already exists.")]
    AlreadyExists(String),
    #[error("The database {0} is already in use by another tenant.")]
    InUse(String),
    #[error("This database is already served as database_id {0:?} (under another URL).")]
    SameDatabase(String),
    #[error("Database {0} not found.")]
    NotFound(String),
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error("{0}")]
    Internal(String),
}

pub struct Tenants {
    tenants: std::sync::RwLock<BTreeMap<DatabaseId, Arc<Tenant>>>,
    base: TenantBase,
    file: PathBuf,
    /// Serialises add/remove and the file writes they make.
    changes: tokio::sync::Mutex<()>,
}

/// The (host, port, database) a URL points at, to refuse two tenants on one database.
fn target(db: &SourceDb) -> String {
    db.redacted()
        .split_once('@')
        .map(|(_, t)| t.to_ascii_lowercase())
        .unwrap_or_default()
}

impl Tenants {
    /// Start every tenant: the default one (from the command line) and those in the file.
    pub async fn start(
        base: TenantBase,
        default: Option<TenantRecord>,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&base.storage_dir)?;
        let file = base.storage_dir.join("tenants.json");
        let mut records: Vec<TenantRecord> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::Error::new(e).context(format!("{} is corrupt", file.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        records.retain(|r| r.id.as_str() != DEFAULT_TENANT);
        let tenants = Arc::new(Tenants {
            tenants: std::sync::RwLock::new(BTreeMap::new()),
            base,
            file,
            changes: tokio::sync::Mutex::new(()),
        });
        for rec in default.into_iter().chain(records) {
            let t = tenants.start_tenant(rec).await?;
            tenants.write_map().insert(t.record.id.clone(), t);
        }
        Ok(tenants)
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<DatabaseId, Arc<Tenant>>> {
        self.tenants.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<DatabaseId, Arc<Tenant>>> {
        self.tenants.write().unwrap_or_else(|e| e.into_inner())
    }

    async fn start_tenant(&self, rec: TenantRecord) -> anyhow::Result<Arc<Tenant>> {
        let db = SourceDb::parse(&rec.database_url)?
            .prefer_ipv6(rec.use_ipv6)
            .await;
        let is_default = rec.id.as_str() == DEFAULT_TENANT;
        let suffix = (!is_default).then_some(rec.id.as_str());
        let storage_dir = if is_default {
            self.base.storage_dir.clone()
        } else {
            self.base.storage_dir.join("tenants").join(rec.id.as_str())
        };
        let stack = Stack::start(StackConfig {
            id: rec.id.to_string(),
            db,
            slot: stack::slot_name(&self.base.stream_id, suffix),
            publication: stack::publication_name(&self.base.stream_id, suffix),
            storage_dir,
            chunk_bytes: self.base.chunk_bytes,
            max_snapshots: self.base.max_snapshots,
            schema_check: self.base.schema_check,
            file_budget: Arc::clone(&self.base.file_budget),
            compaction: self.base.compaction.clone(),
            subquery_move_out_deletes: self.base.subquery_move_out_deletes,
            lifecycle: crate::shape::lifecycle::LifecycleConfig {
                tier: self
                    .base
                    .lifecycle
                    .tier
                    .as_ref()
                    .map(|t| t.child(rec.id.as_str())),
                ..self.base.lifecycle.clone()
            },
        })
        .await?;
        Ok(Arc::new(Tenant { record: rec, stack }))
    }

    /// The tenant a request names (`database_id`), or the only one.
    pub fn resolve(&self, id: Option<&str>) -> Result<Arc<Tenant>, ResolveError> {
        let map = self.read_map();
        match id.filter(|s| !s.is_empty()) {
            Some(id) => {
                let id: DatabaseId = id.parse().map_err(|_| ResolveError::NotFound)?;
                map.get(&id).cloned().ok_or(ResolveError::NotFound)
            }
            None if map.len() == 1 => {
                Ok(map.values().next().cloned().ok_or(ResolveError::NotFound)?)
            }
            None if map.is_empty() => Err(ResolveError::NotFound),
            None => Err(ResolveError::NotProvided),
        }
    }

    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.read_map().values().cloned().collect()
    }

    /// Add a tenant and start its stack.
    pub async fn add(&self, mut rec: TenantRecord) -> Result<DatabaseId, AdminError> {
        let _serial = self.changes.lock().await;
        let db = SourceDb::parse(&rec.database_url)
            .map_err(|e| AdminError::Invalid("database_url", e.to_string()))?;
        {
            let map = self.read_map();
            if map.contains_key(&rec.id) {
                return Err(AdminError::AlreadyExists(rec.id.to_string()));
            }
            let wanted = target(&db);
            if map.values().any(|t| {
                SourceDb::parse(&t.record.database_url)
                    .map(|d| target(&d) == wanted)
                    .unwrap_or(false)
            }) {
                return Err(AdminError::InUse(wanted));
            }
        }
        // A mistake in the URL (credentials, names, wal_level, privilege) is refused now
        // rather than retried for ever; an unreachable database is added and retried.
        let probe = db.clone().prefer_ipv6(rec.use_ipv6).await;
        if let Err(m) = crate::postgres::preflight::check(&probe).await {
            return Err(AdminError::Invalid("database_url", m.to_string()));
        }
        // The same database under another spelling (an address for a host name, a socket,
        // another alias) would get a second slot: compare what the databases are. A copy of a
        // served database (a restored backup, a clone, a branch) has the same identity but is
        // another server: it does not hold the served tenant's slot. A database that cannot
        // be reached now is added as before (its replication retries).
        if let Some((client, identity)) = database_identity(&db, rec.use_ipv6).await {
            let candidates: Vec<Arc<Tenant>> = self
                .read_map()
                .values()
                .filter(|t| {
                    t.stack.identity().or(t.record.identity.as_deref()) == Some(identity.as_str())
                })
                .cloned()
                .collect();
            for t in candidates {
                // Same database unless the served one has its slot and this one does not (when
                // that cannot be told, e.g. the slot is not created yet, it is taken as the
                // same one).
                let slot_on_new = has_slot(&client, &t.stack.slot).await.unwrap_or(true);
                let slot_on_served = match t.stack.admin().await {
                    Ok(served) => has_slot(&served, &t.stack.slot).await.unwrap_or(false),
                    Err(_) => false,
                };
                if slot_on_new || !slot_on_served {
                    return Err(AdminError::SameDatabase(t.record.id.to_string()));
                }
            }
            rec.identity = Some(identity);
        }
        let t = self
            .start_tenant(rec)
            .await
            .map_err(|e| AdminError::Internal(format!("{e:#}")))?;
        let id = t.record.id.clone();
        self.write_map().insert(id.clone(), t);
        if let Err(e) = self.persist() {
            let t = self.write_map().remove(&id);
            if let Some(t) = t {
                t.stack.stop().await;
            }
            return Err(AdminError::Internal(format!("saving tenants: {e}")));
        }
        tracing::info!(database_id = %id, database = %db.redacted(), "tenant added");
        Ok(id)
    }

    /// Remove a tenant: stop its stack, drop its slot and publication, delete its shape logs.
    pub async fn remove(&self, id: &str) -> Result<(), AdminError> {
        let _serial = self.changes.lock().await;
        let key: DatabaseId = id
            .parse()
            .map_err(|_| AdminError::NotFound(id.to_string()))?;
        let t = self
            .write_map()
            .remove(&key)
            .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
        self.persist()
            .map_err(|e| AdminError::Internal(format!("saving tenants: {e}")))?;
        if let Err(e) = t.stack.destroy().await {
            tracing::warn!(database_id = %key, error = %format!("{e:#}"), "could not drop the slot or publication");
        }
        if key.as_str() != DEFAULT_TENANT {
            let dir = self.base.storage_dir.join("tenants").join(key.as_str());
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        tracing::info!(database_id = %key, "tenant removed");
        Ok(())
    }

    /// Write the admin-added tenants: temp file (0600) + fsync + rename.
    fn persist(&self) -> std::io::Result<()> {
        let records: Vec<TenantRecord> = self
            .read_map()
            .values()
            .filter(|t| t.record.id.as_str() != DEFAULT_TENANT)
            .map(|t| t.record.clone())
            .collect();
        let bytes = serde_json::to_vec_pretty(&records)?;
        let tmp = self.file.with_extension("json.tmp");
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.file)?;
        if let Some(dir) = self.file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub async fn stop_all(&self) {
        for t in self.all() {
            t.stack.stop().await;
        }
    }
}

/// Does the database `client` is connected to hold replication slot `slot`?
async fn has_slot(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots \
             WHERE slot_name = $1 AND database = current_database())",
            &[&slot],
        )
        .await?
        .get(0))
}

/// A connection to the database `db` names and its identity, or `None` if it cannot be
/// reached in 10 s.
async fn database_identity(
    db: &SourceDb,
    use_ipv6: bool,
) -> Option<(tokio_postgres::Client, String)> {
    let db = db.clone().prefer_ipv6(use_ipv6).await;
    let work = async {
        let client = db.connect().await.ok()?;
        let identity = SourceDb::identity(&client).await.ok()?;
        Some((client, identity))
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), work)
        .await
        .ok()
        .flatten()
}

/// Health word of a stack status.
pub fn status_word(s: &Status) -> &'static str {
    match s {
        Status::Active => "active",
        Status::Starting => "starting",
        Status::Down(_) => "waiting",
        Status::Degraded(_) => "degraded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_bad_input() {
        let g = DatabaseId::generate();
        assert_eq!(g.as_str().len(), 36);
        assert_eq!(g.to_string().parse::<DatabaseId>(), Ok(g.clone()));
        assert_ne!(DatabaseId::generate(), g);
        for bad in ["", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(bad.parse::<DatabaseId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn records_never_print_credentials() {
        let r = TenantRecord {
            id: "t1".parse().unwrap(),
            database_url: "postgresql://u:hunter2@db.example:5432/app".into(),
            use_ipv6: false,
            secret: Some("s3cret".into()),
            identity: None,
        };
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("db.example:5432/app"));
    }

    #[test]
    fn slot_names_are_distinct_per_tenant() {
        assert_eq!(stack::slot_name("default", None), "shapesync_slot_default");
        let a = stack::slot_name("default", Some("a"));
        let b = stack::slot_name("default", Some("b"));
        assert_ne!(a, b);
        assert!(
            a.len() <= 63
                && a.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        );
    }
}

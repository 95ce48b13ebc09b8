//! The stack's publication: created empty at start, tables added on the first shape that needs
//! them, each with `REPLICA IDENTITY FULL` so updates and deletes carry the whole old row (needed
//! to tell when a row leaves a shape).
//!
//! A transaction that wrote rows of a table *before* the table joined the publication, and commits
//! after, is decoded with the old publication membership and its changes are not streamed. A
//! snapshot taken before such a writer commits would miss its rows too, so after adding a table we
//! wait until every transaction that was running at that moment has ended
//! ([`wait_for_running_writers`]); the snapshot then sees their rows.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use shapesync_filter::ident::quote_ident;
use shapesync_filter::table::TableInfo;

/// Tracks which tables are known to be published with full replica identity.
#[derive(Debug)]
pub struct Publication {
    name: String,
    /// Table oids already checked. A tokio mutex: held across the ALTER statements so two
    /// shapes on a new table do not alter it twice.
    ready: tokio::sync::Mutex<HashSet<u32>>,
}

impl Publication {
    pub fn new(name: String) -> Self {
        Publication {
            name,
            ready: tokio::sync::Mutex::new(HashSet::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Create the publication if it does not exist. Returns true if it was created now.
    pub async fn create_if_missing(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<bool, tokio_postgres::Error> {
        let sql = format!("CREATE PUBLICATION {}", quote_ident(&self.name));
        match client.batch_execute(&sql).await {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Make sure `table` is in the publication with REPLICA IDENTITY FULL.
    pub async fn ensure_table(
        &self,
        client: &tokio_postgres::Client,
        table: &TableInfo,
    ) -> Result<(), tokio_postgres::Error> {
        let mut ready = self.ready.lock().await;
        if ready.contains(&table.oid) {
            return Ok(());
        }
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr \
                   JOIN pg_publication p ON p.oid = pr.prpubid \
                   WHERE p.pubname = $1 AND pr.prrelid = $2)",
                &[&self.name, &table.oid],
            )
            .await?;
        let published: bool = row.get(0);
        let mut altered = false;
        // The table itself and, for a partitioned table, each of its partitions: a partition's
        // changes are decoded with its own replica identity.
        for name in not_full(client, table.oid).await? {
            set_identity_full(client, &name, "5s").await?;
            altered = true;
        }
        if !published {
            let sql = format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(&self.name),
                table.quoted_name()
            );
            match client.batch_execute(&sql).await {
                Ok(()) => altered = true,
                Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
                Err(e) => return Err(e),
            }
        }
        if altered {
            wait_for_running_writers(client, Duration::from_secs(30)).await?;
        }
        ready.insert(table.oid);
        Ok(())
    }

    /// Forget every table (the publication was created anew).
    pub async fn reset(&self) {
        self.ready.lock().await.clear();
    }

    /// Forget a table (dropped, truncated or changed), so the next shape checks it again.
    pub async fn forget(&self, oid: u32) {
        self.ready.lock().await.remove(&oid);
    }
}

/// The quoted names of the tables among `oid` and its partitions (any depth) whose replica
/// identity is not FULL.
pub async fn not_full(
    client: &tokio_postgres::Client,
    oid: u32,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relreplident <> 'f' AND c.relkind IN ('r', 'p') AND (c.oid = $1 OR c.oid IN \
               (SELECT relid FROM pg_partition_tree($1::oid::regclass))) \
             ORDER BY c.oid",
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `ALTER TABLE <name> REPLICA IDENTITY FULL` (`name` quoted by the server) waiting at most
/// `lock_timeout` for its exclusive lock, so that the application's queries never queue
/// behind it for long; the setting ends with the statement's transaction.
pub async fn set_identity_full(
    client: &tokio_postgres::Client,
    name: &str,
    lock_timeout: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "SELECT set_config('lock_timeout', '{lock_timeout}', true);\
             ALTER TABLE {name} REPLICA IDENTITY FULL"
        ))
        .await
}

/// Wait until every transaction running now has ended: until the oldest running transaction id
/// (snapshot xmin) passes the current snapshot's xmax. Gives up after `limit` with a warning
/// (a transaction left open for that long is an application bug we cannot fix).
pub async fn wait_for_running_writers(
    client: &tokio_postgres::Client,
    limit: Duration,
) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .await?;
    let target: String = row.get(0);
    let target: u64 = target.parse().unwrap_or(0);
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        let row = client
            .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
            .await?;
        let xmin: String = row.get(0);
        if xmin.parse::<u64>().unwrap_or(u64::MAX) >= target {
            return Ok(());
        }
        if Instant::now() > deadline {
            tracing::warn!(
                "a transaction has been running for more than {limit:?}; \
                 starting the snapshot anyway (its earlier writes may be missed)"
            );
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

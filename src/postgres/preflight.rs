//! The source database's checks at start: a mistake that retrying cannot fix (a wrong
//! password, an unknown role or database, `wal_level` not `logical`, a role without the
//! replication privilege) stops the server at once with the reason and the fix, instead of a
//! server that retries for ever while every shape says "Stack not ready". A database that is
//! merely unreachable (refused, timed out) is not a mistake: the server starts and keeps
//! retrying.

use super::connect::SourceDb;

/// Why the database cannot be used as it is configured.
#[derive(Debug, thiserror::Error)]
#[error("the database {database} cannot be used: {reason}. Fix: {fix}")]
pub struct Misconfigured {
    pub database: String,
    pub reason: String,
    pub fix: String,
}

/// What the first look at the database found.
#[derive(Debug)]
pub enum Preflight {
    Ready,
    /// Not reachable now (the server starts and retries).
    Unreachable(anyhow::Error),
}

/// Connect once and check what logical replication needs.
pub async fn check(db: &SourceDb) -> Result<Preflight, Misconfigured> {
    let fail = |reason: String, fix: String| Misconfigured {
        database: db.redacted(),
        reason,
        fix,
    };
    let client = match db.connect().await {
        Ok(c) => c,
        Err(e) => {
            let Some((code, message)) = db_error(&e) else {
                return Ok(Preflight::Unreachable(e));
            };
            let fix = match code.as_str() {
                "28P01" => "check the password in the database URL".to_string(),
                "28000" if message.contains("does not exist") => format!(
                    "check the user name in the database URL, or create the role: \
                     CREATE ROLE \"{}\" WITH LOGIN REPLICATION PASSWORD '…'",
                    db.user()
                ),
                "28000" => "allow this user and address in the server's pg_hba.conf".into(),
                "3D000" => format!(
                    "check the database name in the URL, or create it: CREATE DATABASE \"{}\"",
                    db.dbname()
                ),
                // Too many connections, starting up, shutting down: retry.
                c if c.starts_with("53") || c.starts_with("57") || c.starts_with("08") => {
                    return Ok(Preflight::Unreachable(e))
                }
                _ => "check the database URL and the server's settings".into(),
            };
            return Err(fail(message, fix));
        }
    };
    let probe = async {
        let wal: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
        let replication: bool = client
            .query_one(
                // RDS and Aurora grant replication through the rds_replication role.
                "SELECT rolreplication OR rolsuper OR coalesce((SELECT pg_has_role(current_user, \
                 oid, 'member') FROM pg_roles WHERE rolname = 'rds_replication'), false) \
                 FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?
            .get(0);
        Ok::<_, tokio_postgres::Error>((wal, replication))
    };
    let (wal, replication) = match probe.await {
        Ok(found) => found,
        Err(e) => return Ok(Preflight::Unreachable(e.into())),
    };
    if wal != "logical" {
        return Err(fail(
            format!("wal_level is {wal:?}, logical replication needs \"logical\""),
            "ALTER SYSTEM SET wal_level = logical; then restart Postgres (or start it with \
             -c wal_level=logical)"
                .into(),
        ));
    }
    if !replication {
        return Err(fail(
            format!("the role {:?} may not use replication", db.user()),
            format!("ALTER ROLE \"{}\" WITH REPLICATION", db.user()),
        ));
    }
    Ok(Preflight::Ready)
}

/// The SQLSTATE and message of the Postgres error in `e`'s chain.
fn db_error(e: &anyhow::Error) -> Option<(String, String)> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .find_map(|pg| pg.as_db_error())
        .map(|db| (db.code().code().to_string(), db.message().to_string()))
}

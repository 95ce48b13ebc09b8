//! Talking to a source Postgres outside the replication stream: connection settings, the
//! catalog (table and column metadata), the publication, and the throwaway embedded cluster.

pub mod catalog;
pub mod connect;
pub mod embedded;
pub mod preflight;
pub mod publication;

/// The Postgres error in `e`'s chain, when Postgres refused the statement for a reason that
/// retrying will not change (bad data, a missing or unusable object, no privilege): its
/// message, for a 400. Connection failures, lock timeouts, cancellations, resource shortages
/// and internal errors are transient (None: a 503 with retry-after).
pub fn permanent_db_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(db) = err
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
        {
            return (!sqlstate_transient(db.code().code())).then(|| db.message().to_string());
        }
        next = err.source();
    }
    None
}

/// SQLSTATE classes that a retry may clear.
fn sqlstate_transient(code: &str) -> bool {
    // 28 (authentication) and 3D (no such database) after the start mean credentials or the
    // database changed under a running server: an outage, not the request's mistake.
    const CLASSES: [&str; 10] = ["08", "25", "28", "3D", "40", "53", "57", "58", "F0", "XX"];
    // 55P03 lock not available, 55006 object in use.
    CLASSES.iter().any(|c| code.starts_with(c)) || code == "55P03" || code == "55006"
}

#[cfg(test)]
mod tests {
    #[test]
    fn transient_sqlstates() {
        for c in [
            "08006", "40001", "40P01", "53300", "57014", "57P01", "XX000", "55P03",
        ] {
            assert!(super::sqlstate_transient(c), "{c}");
        }
        for c in [
            "22012", "22P02", "42501", "42P01", "42703", "0A000", "55000",
        ] {
            assert!(!super::sqlstate_transient(c), "{c}");
        }
    }
}

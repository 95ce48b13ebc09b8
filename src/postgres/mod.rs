//! Talking to a source Postgres outside the replication stream: connection settings, the
//! catalog (table and column metadata), the publication, and the throwaway embedded cluster.

pub mod catalog;
pub mod connect;
pub mod embedded;
pub mod publication;

//! The replication consumer: one logical replication slot per source database, streamed with
//! pgwire-replication, decoded by our own pgoutput decoder, and fed to the shape log writer.

pub mod pgoutput;
pub mod stream;

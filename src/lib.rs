//! shapesync: a Postgres logical-replication shape sync engine speaking the ElectricSQL HTTP
//! protocol.
//!
//! # Layout (dependencies point down this list)
//!
//! - [`serve`]: the HTTP layer (axum) — `GET /v1/shape`, health, CORS; request parsing and
//!   response rules are pure functions, errors map to HTTP in one place.
//! - [`stack`]: one source database — slot, publication, replication task, shape registry,
//!   shape logs; creates shapes and runs their snapshots.
//! - [`shape`]: shape definitions and handles, where clauses ([`shape::filter`]), message JSON
//!   ([`shape::message`]), snapshot/stream reconciliation ([`shape::visibility`]), the initial
//!   snapshot ([`shape::snapshot`]) and the shape log writer ([`shape::writer`]).
//! - [`replication`]: the replication stream and our pgoutput decoder
//!   ([`replication::pgoutput`], pure).
//! - [`postgres`]: connection settings, catalog, identifiers, publication, embedded cluster.
//! - `shapesync-storage` (the `storage/` crate): the append-only shape log store.
//!
//! See ARCHITECTURE.md for the data flow and its invariants.

pub mod lsn;
pub mod metrics;
pub mod postgres;
pub mod read;
pub mod replication;
pub mod schema_watch;
pub mod serve;
pub mod server;
pub mod shape;
pub mod stack;
pub mod tenant;

pub use shapesync_storage as storage;

//! shapesync: a Postgres logical-replication shape sync engine speaking the ElectricSQL HTTP
//! protocol.
//!
//! # Layout (dependencies point down this list)
//!
//! - [`server`]: the process: tenants, the HTTP listener, the compaction worker, shutdown.
//! - [`serve`]: the HTTP layer — `GET/DELETE /v1/shape`, SSE, the admin API, health,
//!   metrics; request parsing and response rules are pure functions, errors become responses in
//!   one place (`serve::error`) and are logged once by the request middleware. It turns a
//!   [`read`] outcome into a response and parks long-polls on `shapesync-http1`.
//! - [`read`]: the read decision for one request (which shape, which offset, serve now, wait
//!   or must-refetch), with typed errors and no HTTP in it.
//! - [`tenant`]: the databases this process serves, and their persisted list.
//! - [`stack`]: one source database — slot, publication, replication supervisor, shape
//!   registry and logs; creates and restores shapes. Its workers ([`schema_watch`], shape
//!   lifecycle) hold the narrow [`stack::StackCtx`].
//! - [`shape`]: shape definitions and handles, message JSON ([`shape::message`]),
//!   snapshot/stream reconciliation ([`shape::visibility`]), the initial snapshot
//!   ([`shape::snapshot`]), the routing index ([`shape::route`]) and the shape log writer
//!   ([`shape::writer`]).
//! - [`replication`]: the replication stream and our pgoutput decoder
//!   ([`replication::pgoutput`], pure).
//! - [`postgres`]: connection settings, catalog queries, publication, embedded cluster.
//! - [`lsn`], [`metrics`]: leaves.
//!
//! Crates of the workspace underneath: `shapesync-filter` (`filter/`: where clauses, the table
//! model, identifiers, routing terms; pure), `shapesync-http1` (`http1/`: the HTTP/1.1 server
//! and parking), `shapesync-storage` (`storage/`: the append-only shape log store).
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

//! All integration tests, compiled as one binary so they share one Postgres cluster.

mod authz;
mod cdn;
mod client_e2e;
mod collation;
mod compaction;
mod crash;
mod deployment;
mod disk_full;
mod edge;
mod fd_limit;
mod http1;
mod http_sync;
mod integrity;
mod lifecycle;
mod openapi;
mod oracle;
mod partitions;
mod pgoutput_live;
mod response_cache;
mod resume;
mod sse;
mod structure;
mod subqueries;
mod support;
mod tenants;
mod where_e2e;

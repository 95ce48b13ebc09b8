//! All integration tests of shapesync-storage, compiled as one binary.

mod commit_recovery;
mod contract;
mod disk_full;
mod file_budget;
mod file_recovery;
mod fixtures;
mod object_tier;
mod offsets;
mod support;

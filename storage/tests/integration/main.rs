//! All integration tests of shapesync-storage, compiled as one binary.

mod commit_recovery;
mod contract;
mod disk_full;
mod file_recovery;
mod fixtures;
mod offsets;
mod support;

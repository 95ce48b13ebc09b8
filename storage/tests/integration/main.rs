//! All integration tests of shapesync-storage, compiled as one binary.

mod contract;
mod file_recovery;
mod fixtures;
mod offsets;
mod support;

#!/usr/bin/env bash
# The whole test suite: setup, formatting and lint checks, unit tests, and the integration
# tests (which start their own PostgreSQL 15 cluster, shapesync servers on loopback ports, and
# the official @electric-sql/client in Node). Benchmarks are compiled, not run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads=4

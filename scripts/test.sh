#!/usr/bin/env bash
# The whole test suite: setup, formatting and lint checks (rustfmt; clippy with warnings as
# errors), a build of every target (benches included, not run), unit tests, the integration
# tests (which start their own PostgreSQL 15 cluster, shapesync servers on loopback ports, and the
# official @electric-sql/client in Node), and the disk-full tests where a tmpfs can be mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked -- --test-threads=4 2>&1 | tee "$log"
# The disk-full tests mount a small tmpfs (root only). They are ignored in the run above and run
# here where a mount works; elsewhere this says that they did not run.
probe=$(mktemp -d)
if mount -t tmpfs -o size=1m tmpfs "$probe" 2>/dev/null; then
  umount "$probe"
  cargo test -p shapesync-storage --test integration --locked -- --ignored --exact \
    disk_full::commit_on_a_full_disk_fails_cleanly_and_recovers_when_space_returns 2>&1 | tee -a "$log"
  cargo test -p shapesync --test integration --locked -- --ignored --exact \
    disk_full::full_disk_degrades_then_recovers_with_nothing_lost 2>&1 | tee -a "$log"
else
  echo "disk-full tests: NOT RUN (cannot mount a tmpfs here; they need root)" | tee -a "$log"
fi
rmdir "$probe"
# One closing line with the totals of every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) g += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d ignored\n", p, f, g }' "$log"

#!/usr/bin/env bash
# Runs the benchmarks and prints the targets table (docs/targets.md, P1–P12):
#   bash scripts/bench.sh          quick mode: smaller sizes, under 10 minutes on 2 cores
#   bash scripts/bench.sh full     the sizes of targets.md (1M rows, 10k shapes, a 1 GB transaction)
#   bash scripts/bench.sh scale    100,000 shapes on one node (P1, P2, P7, P10, P11)
# Extra arguments go to the end-to-end harness, e.g. `bash scripts/bench.sh quick --only=P4,P9`.
# Installs what it needs (the build and test setup, nginx and wrk), builds the release binary,
# runs the end-to-end harness (benches/e2e) and the criterion micro benchmarks (benches/micro).
# The table is also written as JSON to target/bench-e2e.json (and target/bench-e2e-<mode>-<commit>.json).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-quick}
case "$mode" in
  quick | full | scale) shift $(($# > 0 ? 1 : 0)) ;;
  *) echo "usage: bash scripts/bench.sh [quick|full|scale] [--only=P1,P4,...]" >&2; exit 2 ;;
esac
bash scripts/setup.sh
command -v wrk >/dev/null 2>&1 || bash scripts/apt-install.sh wrk
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo build --release --locked --bin shapesync
if [ "$mode" = full ]; then
  cargo bench --locked --bench micro
elif [ "$mode" = scale ]; then
  : # the end-to-end harness only
else
  cargo bench --locked --bench micro -- --quick
fi
cargo bench --locked --bench e2e -- "$mode" "$@"

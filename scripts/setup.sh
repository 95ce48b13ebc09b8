#!/usr/bin/env bash
# Installs what building and testing shapesync needs on a fresh Debian machine with Rust and
# PostgreSQL 15 binaries: libclang (pg_query's bindgen), the Node packages of the client tests,
# and schemathesis (the OpenAPI contract check) in a Python venv under target/tools.
# Idempotent: skips what is already there. Runs apt only as root (or via sudo when available).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -e /usr/lib/llvm-14/lib/libclang-14.so.1 ] || [ -e /usr/lib/x86_64-linux-gnu/libclang-14.so.1 ] || need_apt+=(libclang1-14)
[ -d /usr/lib/llvm-14/lib/clang ] || need_apt+=(libclang-common-14-dev)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need_apt+=(postgresql); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -d tests/client/node_modules/@electric-sql/client ]; then
  echo "setup: installing the client test packages (npm ci)"
  (cd tests/client && npm ci --no-audit --no-fund --loglevel=error)
fi

# Schemathesis (PyPI), which checks the running server against openapi/shapesync.yaml.
SCHEMATHESIS_VERSION=4.32.5
venv=target/tools/schemathesis
if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "setup: installing schemathesis $SCHEMATHESIS_VERSION (pip, into $venv)"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

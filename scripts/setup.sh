#!/usr/bin/env bash
# Installs what building and testing shapesync needs on a fresh Debian machine with Rust and
# PostgreSQL 15 binaries: libclang (pg_query's bindgen) and the Node packages of the client tests.
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

# The object-store integration test runs a real S3-compatible server: moto's (PyPI), in a venv
# under target/ so nothing is installed system-wide. python3-venv provides ensurepip.
S3_VENV=target/s3-venv
if [ ! -x "$S3_VENV/bin/moto_server" ]; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "setup: installing python3-venv"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "setup: installing moto[server] into $S3_VENV"
  rm -rf "$S3_VENV"
  python3 -m venv "$S3_VENV"
  "$S3_VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi

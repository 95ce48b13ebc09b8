#!/usr/bin/env bash
# Installs what shapesync needs on a fresh Debian machine with Rust and PostgreSQL 15 binaries.
#   bash scripts/setup.sh run    building and running: libclang (pg_query's bindgen) and make
#                                (jemalloc's build) only
#   bash scripts/setup.sh [test] also what the tests need: nginx (the CDN stand-in), the Node
#                                packages of the client tests, and schemathesis and moto (the
#                                OpenAPI contract check, the S3 stand-in) in Python venvs under target/
# Idempotent: skips what is already there. Runs apt only as root (or via sudo when available).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-test}"
case "$mode" in run|test) ;; *) echo "usage: $0 [run|test]" >&2; exit 2 ;; esac

need_apt=()
[ -e /usr/lib/llvm-14/lib/libclang-14.so.1 ] || [ -e /usr/lib/x86_64-linux-gnu/libclang-14.so.1 ] || need_apt+=(libclang1-14)
[ -d /usr/lib/llvm-14/lib/clang ] || need_apt+=(libclang-common-14-dev)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need_apt+=(postgresql); fi
# make: the jemalloc allocator is built from its C sources (configure, make).
command -v make >/dev/null 2>&1 || need_apt+=(make)
# nginx: the CDN stand-in of the caching tests and the deploy config check. Installed here, once,
# so tests running in parallel never race for the dpkg lock.
if [ "$mode" = test ]; then
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
fi
[ ${#need_apt[@]} -eq 0 ] || bash scripts/apt-install.sh "${need_apt[@]}"
[ "$mode" = test ] || exit 0

if [ ! -d tests/client/node_modules/@electric-sql/client ]; then
  echo "setup: installing the client test packages (npm ci)"
  (cd tests/client && npm ci --no-audit --no-fund --loglevel=error)
fi

# Python tools from PyPI, each in its own venv under target/ (nothing installed system-wide):
# schemathesis, which checks the running server against openapi/shapesync.yaml, and moto's S3
# server for the object-store integration test. python3-venv provides ensurepip.
pip_tool() { # venv, executable, pip requirement, version the executable must report (or "")
  local venv=$1 exe=$2 req=$3 version=$4
  if [ -x "$venv/bin/$exe" ] && { [ -z "$version" ] || "$venv/bin/$exe" --version 2>/dev/null | grep -q "$version"; }; then
    return
  fi
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    bash scripts/apt-install.sh python3-venv
  fi
  echo "setup: installing $req (pip, into $venv)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$req"
}
pip_tool target/tools/schemathesis schemathesis "schemathesis==4.32.5" 4.32.5
pip_tool target/s3-venv moto_server "moto[server]==5.2.5" ""

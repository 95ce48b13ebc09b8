#!/usr/bin/env bash
# Checks the deployment configs: deploy/nginx.conf must pass `nginx -t` (installs nginx from
# apt if it is missing, without starting it). The compose file itself is checked by the
# integration tests (tests/integration/deployment.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

conf=${1:-deploy/nginx.conf}   # optional argument: another config to check (same rewrites)
[ -f "$conf" ] || { echo "check-deploy: $conf not found" >&2; exit 1; }

if ! command -v nginx >/dev/null 2>&1; then
  bash "$(dirname "$0")/apt-install.sh" nginx
  command -v nginx >/dev/null 2>&1 || { echo "check-deploy: nginx still missing" >&2; exit 1; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/cache" "$tmp/logs"
# The compose service name does not resolve here: point the upstream at loopback, and keep
# every path inside the temporary prefix.
sed -e 's/shapesync:3000/127.0.0.1:3000/g' \
    -e "s#/var/cache/nginx/shapesync#$tmp/cache#" \
    "$conf" > "$tmp/nginx.conf"
sed -i "1i pid $tmp/nginx.pid;\nerror_log $tmp/logs/error.log;" "$tmp/nginx.conf"
sed -i "s#^http {#http {\n    access_log $tmp/logs/access.log;\n    client_body_temp_path $tmp/body;\n    proxy_temp_path $tmp/proxy;\n    fastcgi_temp_path $tmp/fastcgi;\n    uwsgi_temp_path $tmp/uwsgi;\n    scgi_temp_path $tmp/scgi;#" "$tmp/nginx.conf"
nginx -t -q -p "$tmp" -c "$tmp/nginx.conf"
echo "check-deploy: nginx config ok"

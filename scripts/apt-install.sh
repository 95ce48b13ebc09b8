#!/usr/bin/env bash
# Installs Debian packages for the project's scripts: `bash scripts/apt-install.sh pkg...`.
# Runs apt as root (or via sudo), one install at a time (a lock file, so scripts and tests
# running in parallel never race for dpkg's lock), and keeps packages from starting system
# services (a temporary policy-rc.d: nginx must not take port 80).
set -euo pipefail
[ $# -gt 0 ] || exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
exec 9>"${TMPDIR:-/tmp}/shapesync-apt.lock"
flock 9
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0
echo "apt-install: installing ${missing[*]}"
policy_created=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  policy_created=1
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null

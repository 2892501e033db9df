#!/usr/bin/env bash
# Make Prometheus and promtool available (Debian's prometheus package ships both), for the
# monitoring tests: promtool checks the alerting rules, a real Prometheus scrapes the service.
# Exit status: 0 when both answer --version, 1 otherwise.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi
SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo -n)
echo "prometheus: installing Debian's prometheus package (prometheus, promtool)"
"${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends prometheus >/dev/null
prometheus --version >/dev/null 2>&1 && promtool --version >/dev/null 2>&1

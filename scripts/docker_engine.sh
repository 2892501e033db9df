#!/usr/bin/env bash
# Make a Docker engine answer on this machine, or say why it can't.
#
# Reuses an engine that already answers. Otherwise installs Debian's docker.io (and
# debootstrap, which scripts/offline_base.sh needs) if missing, starts dockerd in the
# background with no bridge network and no iptables rules (containers use --network host),
# waits for `docker info` and leaves the engine running for later commands.
# Exit status: 0 when `docker info` answers, 1 otherwise.
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/tmp/dockerd.pid}

answers() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null && answers; then
    echo "docker engine: already running"
    exit 0
fi

SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo -n)

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "docker engine: installing ${missing[*]} from Debian"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
command -v dockerd >/dev/null || { echo "docker engine: dockerd not installed" >&2; exit 1; }

if [ -s /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    # Another caller started dockerd a moment ago: wait for it instead of starting a second.
    echo "docker engine: dockerd $(cat /var/run/docker.pid) is starting; waiting for it"
    cp /var/run/docker.pid "$DOCKERD_PIDFILE"
else
    echo "docker engine: starting dockerd (log: $DOCKERD_LOG)"
    # setsid: its own session, so it outlives this script and the caller's process group.
    "${SUDO[@]}" setsid dockerd --bridge=none --iptables=false >"$DOCKERD_LOG" 2>&1 </dev/null &
    echo $! >"$DOCKERD_PIDFILE"
fi
for _ in $(seq 1 60); do
    if answers; then
        echo "docker engine: ready (dockerd pid $(cat "$DOCKERD_PIDFILE"); stop: kill -TERM PID)"
        exit 0
    fi
    sleep 0.5
done
echo "docker engine: dockerd did not answer within 30 s; last log lines:" >&2
tail -n 20 "$DOCKERD_LOG" >&2 || true
exit 1

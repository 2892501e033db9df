#!/usr/bin/env bash
# `make bench`: install wrk if missing, then run the benchmark (benchmarks/bench.py).
#   bash benchmarks/run.sh [--smoke] [bench.py options]     (or BENCH_SMOKE=1, FILE_ROWS=N)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    echo "wrk not found: installing Debian's package" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    # Other jobs may hold the dpkg lock: wait for it instead of failing.
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
    $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq wrk >/dev/null
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }

export BENTOML_HOME="${BENTOML_HOME:-$PWD/.bentoml}"
export BENTOML_DO_NOT_TRACK="${BENTOML_DO_NOT_TRACK:-true}"
# exec: Ctrl-C and SIGTERM reach the bench directly, which stops its servers.
exec .venv/bin/python -m benchmarks.bench "$@"

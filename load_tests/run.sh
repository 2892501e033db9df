#!/usr/bin/env bash
# Headless Locust run against the service; writes CSV, HTML, PNG charts and the target table
# into reports/load/<timestamp>-<mode>[-step]/. Exit code = Locust's (non-zero on a missed target).
#
#   load_tests/run.sh serve [LOCUST ARGS...]   start `bentoml serve` on a free port (or use HOST)
#   load_tests/run.sh image [LOCUST ARGS...]   the container of `make run-image` (HOST or PORT)
#
# Environment: HOST, PORT, GRPC_TARGET (host:port of gRPC, for GrpcUser), RUN_TIME (30s; 90s for SHAPE=step), SHAPE (steady|step|overload),
# LOCUST_PROCESSES (N local Locust worker processes), LOCUST_USER_CLASSES (MixedUser), REPORT_DIR,
# and any LOCUST_* option, e.g. LOCUST_USERS=50 or LOCUST_P95_MS=5 (targets: see targets.py).
set -euo pipefail

MODE="${1:-}"
shift || true
case "$MODE" in
  serve | image) ;;
  *) echo "usage: $0 serve|image [locust args...]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
export BENTOML_HOME="${BENTOML_HOME:-$ROOT/.bentoml}"
export BENTOML_DO_NOT_TRACK="${BENTOML_DO_NOT_TRACK:-true}"
SHAPE="${SHAPE:-steady}"

free_port() {
  "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The venv's Python, not curl: a fresh machine may have no curl.
ready() {
  "$BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/readyz", timeout=3)' \
    "$1" > /dev/null 2>&1
}

# --- what to run -------------------------------------------------------------------------------
LOCUSTFILES="load_tests/locustfile.py"
case "$SHAPE" in
  steady) RUN_TIME="${RUN_TIME:-30s}" ;;
  step) RUN_TIME="${RUN_TIME:-90s}"; LOCUSTFILES+=",load_tests/step_ramp.py" ;;
  # The shape ends the run itself (overload, then calm); RUN_TIME only bounds it.
  overload)
    # One service worker unless told otherwise: one Locust process overloads it several times.
    export WORKERS="${WORKERS:-1}"
    RUN_TIME="${RUN_TIME:-60s}"; LOCUSTFILES+=",load_tests/overload.py"
    export LOCUST_USER_CLASSES="${LOCUST_USER_CLASSES:-OverloadUser}" ;;
  *) echo "SHAPE must be steady, step or overload, got '$SHAPE'" >&2; exit 2 ;;
esac
export LOCUST_USER_CLASSES="${LOCUST_USER_CLASSES:-MixedUser}"

STAMP="$(date +%Y%m%d-%H%M%S)"
SUFFIX="$MODE$([[ "$SHAPE" != steady ]] && echo "-$SHAPE" || true)"
REPORT_DIR="${REPORT_DIR:-$ROOT/reports/load/$STAMP-$SUFFIX}"
mkdir -p "$REPORT_DIR"

# --- the service under test --------------------------------------------------------------------
SERVER_PID=""
SERVER_CHILDREN=""
stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  # The arbiter stops its circus workers on SIGTERM; anything it leaves behind we kill.
  SERVER_CHILDREN="$("$BIN/python" -c "import psutil, sys
try: print(' '.join(str(c.pid) for c in psutil.Process($SERVER_PID).children(recursive=True)))
except psutil.NoSuchProcess: pass" || true)"
  kill -TERM "$SERVER_PID" 2> /dev/null || true
  for _ in $(seq 100); do kill -0 "$SERVER_PID" 2> /dev/null || break; sleep 0.2; done
  kill -KILL "$SERVER_PID" 2> /dev/null || true
  wait "$SERVER_PID" 2> /dev/null || true
  for pid in $SERVER_CHILDREN; do kill -KILL "$pid" 2> /dev/null || true; done
  SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

if [[ -n "${HOST:-}" ]]; then
  TARGET="$HOST"
elif [[ "$MODE" == image ]]; then
  TARGET="http://127.0.0.1:${PORT:-3000}"
else
  port="$(free_port)"
  TARGET="http://127.0.0.1:$port"
  echo "Starting bentoml serve on $TARGET (log: $REPORT_DIR/server.log)"
  # A BentoML home of its own around the project's models: `bentoml serve` empties its home's
  # prometheus_multiproc_dir at start, which would wipe a running `make serve`'s /metrics.
  mkdir -p "$REPORT_DIR/bentoml-home"
  ln -sfn "$(cd "$BENTOML_HOME/models" && pwd)" "$REPORT_DIR/bentoml-home/models"
  # gRPC on a free port of its own too (GrpcUser), never the default one of a `make serve`.
  grpc_port="$(free_port)"
  export GRPC_TARGET="${GRPC_TARGET:-127.0.0.1:$grpc_port}"
  GRPC_PORT="$grpc_port" GRPC_HOST=127.0.0.1 BENTOML_HOME="$REPORT_DIR/bentoml-home" \
    "$BIN/bentoml" serve service:OnnxServing \
    --host 127.0.0.1 --port "$port" > "$REPORT_DIR/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 120); do
    ready "$TARGET" && break
    kill -0 "$SERVER_PID" 2> /dev/null || { echo "bentoml serve exited; see $REPORT_DIR/server.log" >&2; exit 1; }
    sleep 0.5
  done
fi

# Load goes to this machine only, unless the caller says otherwise.
if [[ ! "$TARGET" =~ ^https?://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?/?$ && -z "${ALLOW_REMOTE:-}" ]]; then
  echo "HOST=$TARGET is not a loopback address; set ALLOW_REMOTE=1 to load-test it anyway." >&2
  exit 2
fi
if ! ready "$TARGET"; then
  if [[ "$MODE" == image ]]; then
    echo "No service answers $TARGET/readyz. Start the container first: make run-image" \
      "(PORT=${PORT:-3000}), or point HOST at it." >&2
  else
    echo "No service answers $TARGET/readyz." >&2
  fi
  exit 1
fi

# --- Locust ------------------------------------------------------------------------------------
DISTRIBUTED=()
if [[ -n "${LOCUST_PROCESSES:-}" && "${LOCUST_PROCESSES}" != 0 ]]; then
  # Locust's own --processes: a master and N forked workers on this machine, over loopback
  # on a free port. (WORKERS is the service's.)
  master_port="$(free_port)"
  DISTRIBUTED=(--master-bind-host 127.0.0.1 --master-bind-port "$master_port"
    --master-host 127.0.0.1 --master-port "$master_port")
fi

echo "Locust: $LOCUST_USER_CLASSES, shape $SHAPE, run time $RUN_TIME, target $TARGET" \
  "${LOCUST_PROCESSES:+, $LOCUST_PROCESSES worker processes}; reports: $REPORT_DIR"
set +e
"$BIN/locust" --config load_tests/locust.conf -f "$LOCUSTFILES" -H "$TARGET" \
  --run-time "$RUN_TIME" --csv "$REPORT_DIR/locust" --csv-full-history \
  --html "$REPORT_DIR/report.html" "${DISTRIBUTED[@]}" "$@"
rc=$?
set -e

"$BIN/python" load_tests/charts.py "$REPORT_DIR/locust_stats_history.csv" --out "$REPORT_DIR" ||
  echo "warning: charts were not drawn" >&2
echo "Reports: $REPORT_DIR (locust exit code $rc)"
exit "$rc"

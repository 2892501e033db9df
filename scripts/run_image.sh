#!/usr/bin/env bash
# `make run-image`: run the newest image (onnx-serving:latest, or IMAGE=...) in the background
# as container onnx-serving-service (replacing an earlier one) with --network host on $PORT
# (default 3000), bound to $BIND_HOST (default 127.0.0.1); wait for /readyz and say how to call
# and stop it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${PORT:-3000}
IMAGE=${IMAGE:-onnx-serving:latest}
NAME=onnx-serving-service
TIMEOUT=${READY_TIMEOUT:-60}

bash "$ROOT/scripts/docker_engine.sh" >&2
docker image inspect "$IMAGE" >/dev/null 2>&1 || {
    echo "run_image: no image $IMAGE; build it first: make image (or make image OFFLINE=1)" >&2
    exit 1
}
docker rm -f "$NAME" >/dev/null 2>&1 || true

args=()
# BENTOML_PORT: the image's HEALTHCHECK probes the same port the server listens on.
[ "$PORT" = 3000 ] || args=(serve --port "$PORT")
start=$(date +%s.%N)
docker run -d --name "$NAME" --network host \
    -e "BENTOML_PORT=$PORT" -e "BENTOML_HOST=${BIND_HOST:-127.0.0.1}" "$IMAGE" "${args[@]}" >/dev/null
url=http://127.0.0.1:$PORT
# The venv's Python, not curl: a fresh machine may have no curl.
ready() { "$ROOT/.venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" >/dev/null 2>&1; }
until ready "$url/readyz"; do
    if [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" != true ]; then
        echo "run_image: the container exited; its log:" >&2
        docker logs --tail 40 "$NAME" >&2
        exit 1
    fi
    if (($(date +%s) - ${start%.*} > TIMEOUT)); then
        echo "run_image: /readyz not 200 after ${TIMEOUT} s; log:" >&2
        docker logs --tail 40 "$NAME" >&2
        exit 1
    fi
    sleep 0.1
done
ready=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
cat <<MSG
$IMAGE ($(docker image inspect -f '{{index .Config.Labels "onnx-serving.bento"}}' "$IMAGE")) is ready on $url after ${ready} s (container $NAME).
Call it:
  curl -s -X POST $url/predict -H 'Content-Type: application/json' -d '{"x": [1.0, 2.0, 3.5]}'
  curl -s $url/metadata
Logs:  docker logs -f $NAME
Stop:  docker stop $NAME && docker rm $NAME
MSG

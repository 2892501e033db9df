#!/usr/bin/env bash
# CycloneDX JSON SBOM of the Python packages inside an image, made offline:
#
#   bash scripts/sbom.sh IMAGE OUT.json
#
# Runs the project venv's cyclonedx-py (the dev extra) inside IMAGE with no network, over the
# image's own venv (/app/.venv), with validation against the CycloneDX schema on. Called by
# scripts/build_image.sh for every image it builds; `make sbom` for any other.
set -euo pipefail
IMAGE=${1:?usage: sbom.sh IMAGE OUT.json}
OUT=${2:?usage: sbom.sh IMAGE OUT.json}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SITE=$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$(dirname "$OUT")"
# The tool's own packages go on sys.path inside Python, not through PYTHONPATH: the tool
# would pass that on to the environment it lists and report itself as part of the image.
docker run --rm --network none --entrypoint python3 -v "$SITE:/cdx:ro" "$IMAGE" -c '
import runpy, sys
sys.path.insert(0, "/cdx")
sys.argv = ["cyclonedx-py", "environment", "--output-reproducible", "/app/.venv"]
runpy.run_module("cyclonedx_py", run_name="__main__")' >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "sbom: $OUT ($(grep -c '"purl"' "$OUT") packages)" >&2

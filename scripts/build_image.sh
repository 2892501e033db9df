#!/usr/bin/env bash
# `make image`: build the bento and containerize it with `bentoml containerize`.
#
#   bash scripts/build_image.sh            # base python:3.11-slim (needs a registry)
#   OFFLINE=1 bash scripts/build_image.sh  # base built from Debian's packages, no registry
#   FORCE=1 ...                            # rebuild even if the image tag already exists
#
# Tags: onnx-serving:<project version>-<content hash> (immutable) and onnx-serving:latest.
# The content hash covers every file the bento takes, the effective bentofile, the
# Dockerfile template, the model tag and SHA-256, the base image and the git revision the
# image is labelled with: different code, model, base or commit never share a tag, and
# rebuilding the same commit reuses the image.
# Beside each image: dist/images/<name>-<version>.sbom.cdx.json (scripts/sbom.sh).
# The last line printed is the immutable image reference.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export BENTOML_HOME=${BENTOML_HOME:-$ROOT/.bentoml}
export BENTOML_DO_NOT_TRACK=${BENTOML_DO_NOT_TRACK:-true}
PY=$ROOT/.venv/bin/python
BENTOML=$ROOT/.venv/bin/bentoml
log() { echo "build_image: $*" >&2; }
started=$SECONDS

bash scripts/docker_engine.sh >&2

# bentoml containerize sets DOCKER_BUILDKIT=1 unless the caller chose; a docker client
# without the buildx plugin then refuses to build. Use the classic builder in that case.
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/build-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
BENTOFILE=bentofile.yaml
BASE_ID=python:3.11-slim
BASE=""
if [ "${OFFLINE:-0}" = 1 ]; then
    BASE=$(bash scripts/offline_base.sh | tail -n 1)
    BASE_ID=$(docker image inspect -f '{{.Id}}' "$BASE")
    log "offline: base image $BASE"
fi
# A signed model (model.sig beside its files) gets an image that can verify it: the lock
# with the `signing` extra (onnx_serving/model/signing.py, docs/signing.md).
SIGNED=$("$PY" - <<'PY'
import os

import bentoml
import yaml

from onnx_serving.config import settings

with open("bentofile.yaml") as f:
    refs = set(yaml.safe_load(f)["models"]) | {settings().model_ref}
print(int(any(os.path.isfile(bentoml.models.get(r).path_of("model.sig")) for r in refs)))
PY
)
if [ -n "$BASE" ] || [ "$SIGNED" = 1 ]; then
    # Same recipe, another base or lock: a derived bentofile, built with `bentoml build -f`
    # (paths in it, like dockerfile_template, stay relative to the build context).
    BENTOFILE=$WORK/bentofile.yaml
    "$PY" - "$BASE" "$SIGNED" "$BENTOFILE" <<'PY'
import sys

import yaml

base, signed, out = sys.argv[1:]
with open("bentofile.yaml") as f:
    config = yaml.safe_load(f)
if base:
    config["docker"]["base_image"] = base
if signed == "1":
    config["python"]["requirements_txt"] = "requirements-signing.lock"
with open(out, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
PY
    [ "$SIGNED" = 1 ] && log "signed model: the image gets the verifier (requirements-signing.lock)"
fi

GIT_REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$GIT_REVISION" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    GIT_REVISION="$GIT_REVISION-dirty"
fi

# Project version, model tag + SHA-256 and a hash of everything that goes into the image,
# its labels included: an image is only reused when every label it carries is still true.
eval "$("$PY" - "$BENTOFILE" "$BASE_ID" "$GIT_REVISION" <<'PY'
import hashlib
import os
import shlex
import sys
import tomllib

import bentoml
from bentoml._internal.bento.build_config import BentoBuildConfig, BentoPathSpec

from onnx_serving.config import settings

bentofile, base_id, git_revision = sys.argv[1:]
config = BentoBuildConfig.from_file(bentofile)
specs = BentoPathSpec(config.include, config.exclude, ".")
digest = hashlib.sha256()
# The files `bentoml build` copies (same walk and same include/exclude rules).
for root, dirs, files in os.walk("."):
    dirs[:] = sorted(d for d in dirs if d not in (".git", ".venv", ".bentoml"))
    for name in sorted(files):
        path = os.path.relpath(os.path.join(root, name), ".")
        if specs.includes(path):
            digest.update(path.encode() + b"\0" + open(path, "rb").read() + b"\0")
# The lock the image installs from (python.requirements_txt) is outside `include`.
for path in (bentofile, config.docker.dockerfile_template, config.python.requirements_txt):
    digest.update(open(path, "rb").read() + b"\0")
refs = {m.tag for m in config.models} | {settings().model_ref}
models = sorted({str(bentoml.models.get(ref).tag) for ref in refs})
for tag in models:
    stored = bentoml.models.get(tag)
    sha = stored.info.metadata["sha256"]
    # Its signature too: signing a model (or signing it anew) makes another image.
    bundle = stored.path_of("model.sig")
    signed = hashlib.sha256(open(bundle, "rb").read()).hexdigest() if os.path.isfile(bundle) else ""
    digest.update(f"{tag}={sha}={signed}\0".encode())
digest.update(base_id.encode() + b"\0" + git_revision.encode())
with open("pyproject.toml", "rb") as f:
    project_version = tomllib.load(f)["project"]["version"]
model = str(bentoml.models.get(settings().model_ref).tag)
values = {
    "PROJECT_VERSION": project_version,
    "MODEL_TAG": model,
    "MODEL_SHA256": bentoml.models.get(model).info.metadata["sha256"],
    "BENTO_VERSION": f"{project_version}-{digest.hexdigest()[:12]}",
}
for key, value in values.items():
    print(f"{key}={shlex.quote(value)}")
PY
)"
NAME=onnx-serving
IMAGE=$NAME:$BENTO_VERSION
# Shipped beside each image: the CycloneDX SBOM of its Python packages.
SBOM=$ROOT/dist/images/$NAME-$BENTO_VERSION.sbom.cdx.json

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists (same code, model, base and git revision): reusing it; FORCE=1 rebuilds"
    docker tag "$IMAGE" "$NAME:latest"
    [ -f "$SBOM" ] || bash scripts/sbom.sh "$IMAGE" "$SBOM"
    echo "$IMAGE"
    exit 0
fi

if "$BENTOML" get "$IMAGE" >/dev/null 2>&1; then
    log "bento $IMAGE exists: reusing it"
else
    log "bentoml build $IMAGE"
    "$BENTOML" build -f "$BENTOFILE" --version "$BENTO_VERSION" \
        --label "project_version=$PROJECT_VERSION" --label "model_tag=$MODEL_TAG" \
        --label "model_sha256=$MODEL_SHA256" --label "git_revision=$GIT_REVISION" \
        "$ROOT" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; exit 1; }
fi

log "bentoml containerize $IMAGE (DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-default})"
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# cd: work-around for bentoml/BentoML#5566 (containerize with a dockerfile_template must
# run from a directory that contains BentoML's temporary build context).
(
    cd "${TMPDIR:-/tmp}"
    "$BENTOML" containerize "$IMAGE" -t "$IMAGE" -t "$NAME:latest" --opt network=host \
        --opt "label=org.opencontainers.image.title=$NAME" \
        --opt "label=org.opencontainers.image.description=ONNX model service (BentoML)" \
        --opt "label=org.opencontainers.image.version=$PROJECT_VERSION" \
        --opt "label=org.opencontainers.image.revision=$GIT_REVISION" \
        --opt "label=org.opencontainers.image.created=$created" \
        --opt "label=onnx-serving.bento=$IMAGE" \
        --opt "label=onnx-serving.model.tag=$MODEL_TAG" \
        --opt "label=onnx-serving.model.sha256=$MODEL_SHA256"
) >"$WORK/containerize.log" 2>&1 || {
    tail -n 60 "$WORK/containerize.log" >&2
    [ "${OFFLINE:-0}" = 1 ] || log "no registry reachable for python:3.11-slim? try: make image OFFLINE=1"
    exit 1
}

bash scripts/sbom.sh "$IMAGE" "$SBOM"
size=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')
log "built $IMAGE and $NAME:latest ($size) in $((SECONDS - started)) s"
log "run it: make run-image   or   docker run --rm -p 3000:3000 $IMAGE"
echo "$IMAGE"

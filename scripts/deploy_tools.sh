#!/usr/bin/env bash
# The tools the deployment tests use, from Debian's packages when missing: docker-compose
# (validates deploy/compose.yaml) and HAProxy (the load balancer in front of two replicas).
# kubectl with kustomize v5 must be on PATH already (Debian's kubernetes-client is 1.20, whose
# kustomize is too old for deploy/k8s); scripts/kustomize.sh says so if it is not.
set -euo pipefail
missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v haproxy >/dev/null || missing+=(haproxy)
if ((${#missing[@]})); then
    echo "deploy_tools: installing ${missing[*]} from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

#!/usr/bin/env bash
# Java 17+ for PySpark (the `spark` extra, tests/test_spark.py): Debian's
# openjdk-17-jre-headless, installed only if `java -version` does not already report 17 or later.
set -euo pipefail

java_major() {
    command -v java >/dev/null || { echo 0; return; }
    # `openjdk version "17.0.15" 2025-04-15` (or "1.8.0_392" for Java 8) -> 17 (or 1)
    java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -n 1
}

if [ "$(java_major)" -ge 17 ] 2>/dev/null; then
    exit 0
fi
echo "Java 17+ not found: installing Debian's openjdk-17-jre-headless" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Other jobs may hold the dpkg lock: wait for it instead of failing.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    openjdk-17-jre-headless >/dev/null
major="$(java_major)"
[ "${major:-0}" -ge 17 ] || { echo "java -version still reports ${major:-nothing}" >&2; exit 1; }

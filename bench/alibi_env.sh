#!/usr/bin/env bash
# Create (idempotently) a Python venv holding alibi-detect 0.13.0 and torch for the detection
# benchmark (bench/detection.py drives bench/detection_worker.py inside it). alibi-detect 0.13
# pins numpy < 2 and embmon needs numpy >= 2, so alibi-detect lives in its own interpreter.
#
# MMDDrift needs a backend: torch (backend="pytorch"). torch==2.13.0 is a CPU wheel for
# Python 3.11; if it cannot be installed the venv is left with alibi-detect alone, the worker
# then runs KSDrift only and says so in its result.
#
# usage: bash bench/alibi_env.sh [VENV_PATH]      (default: .cache/alibi-venv)
# env:   PYTHON=python3.11  interpreter used to create the venv (default python3)
#        ALIBI_ENV_FORCE=1  recreate even if the venv looks complete
#
# Prints the venv's python path on stdout as its last line, so callers can do
#   AD_PY=$(bash bench/alibi_env.sh | tail -n1)
set -euo pipefail

VENV=${1:-.cache/alibi-venv}
PYTHON=${PYTHON:-python3}

CORE=("alibi-detect==0.13.0")
TORCH=("torch==2.13.0")

check_core() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md
from alibi_detect.cd import KSDrift, MMDDrift  # noqa: F401

assert md.version("alibi-detect") == "0.13.0"
EOF
}

check_torch() {
    "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md
import torch  # noqa: F401
from alibi_detect.cd.pytorch.mmd import MMDDriftTorch  # noqa: F401

assert md.version("torch").split("+")[0] == "2.13.0"
EOF
}

mkdir -p "$(dirname "$VENV")"
# Serialise concurrent callers on the same path.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
fi

if [ "${ALIBI_ENV_FORCE:-0}" = "1" ] || ! check_core; then
    echo "creating alibi-detect venv at $VENV" >&2
    "$PYTHON" -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${CORE[@]}" >&2
    if ! check_core; then
        echo "alibi-detect venv at $VENV failed its import check" >&2
        exit 1
    fi
fi
if ! check_torch; then
    echo "installing ${TORCH[*]} into $VENV (MMDDrift's pytorch backend)" >&2
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TORCH[@]}" >&2 \
        || ! check_torch; then
        echo "torch could not be installed: MMDDrift will be skipped (KSDrift only)" >&2
    fi
fi
echo "alibi-detect venv ready: $VENV" >&2

cd "$VENV" && echo "$(pwd -P)/bin/python"

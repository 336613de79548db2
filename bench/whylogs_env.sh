#!/usr/bin/env bash
# Create (idempotently) a Python venv holding whylogs 1.6.4 for the reference
# fixtures (tests/fixtures/make_whylogs_fixtures.py) and the whylogs-vs-embmon
# benchmark. whylogs 1.6.4 needs numpy < 2, embmon needs numpy >= 2, so whylogs
# lives in its own interpreter.
#
# usage: bash bench/whylogs_env.sh [VENV_PATH]      (default: .cache/whylogs-venv)
# env:   PYTHON=python3.11  interpreter used to create the venv (default python3)
#        WHYLOGS_ENV_FORCE=1  recreate even if the venv looks complete
#
# Prints the venv's python path on stdout as its last line, so callers can do
#   WL_PY=$(bash bench/whylogs_env.sh | tail -n1)
set -euo pipefail

VENV=${1:-.cache/whylogs-venv}
PYTHON=${PYTHON:-python3}

# whylogs[embeddings] = numpy + scikit-learn. scikit-learn >= 1.5 is required
# for the fixtures: its PCA(svd_solver="auto") resolves to the exact
# "covariance_eigh" solver on load_digits (older releases picked the
# unseeded, approximate "randomized" solver).
SPECS=("whylogs[embeddings]==1.6.4" "numpy>=1.23.2,<2" "scikit-learn>=1.5,<2")

check() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md
import sklearn.metrics.pairwise  # noqa: F401
import numpy
from whylogs.experimental.extras.embedding_metric import EmbeddingMetric  # noqa: F401
from whylogs.experimental.preprocess.embeddings.selectors import PCACentroidsSelector  # noqa: F401

assert md.version("whylogs") == "1.6.4"
assert int(numpy.__version__.split(".")[0]) < 2
v = tuple(int(x) for x in md.version("scikit-learn").split(".")[:2])
assert (1, 5) <= v < (2, 0)
EOF
}

mkdir -p "$(dirname "$VENV")"
# Serialise concurrent callers (CI job + benchmark) on the same path.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
fi

if [ "${WHYLOGS_ENV_FORCE:-0}" != "1" ] && check; then
    echo "whylogs venv ready: $VENV" >&2
else
    echo "creating whylogs venv at $VENV" >&2
    "$PYTHON" -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${SPECS[@]}" >&2
    if ! check; then
        echo "whylogs venv at $VENV failed its import check" >&2
        exit 1
    fi
    echo "whylogs venv ready: $VENV" >&2
fi

cd "$VENV" && echo "$(pwd -P)/bin/python"

"""Shared helpers of the benchmarks: synthetic embeddings, a real reference, timing, memory.

Every benchmark draws its vectors from the same seeded mixture: ``centroids`` clusters in
``dim`` dimensions, unit-norm-ish, so cosine distances spread like real sentence embeddings'.
The reference is built by ``sketches.reference.build_reference`` (``pca-centroids`` on
labelled rows, a few calibration rounds, which only affect thresholds, not update speed).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from sketches.batch import EventBatch
from sketches.errors import EmbmonError
from sketches.reference import Reference, build_reference

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
PACKAGES = ("agent", "sketches", "exporters", "demo")
"""embmon's packages: what ``--code REV`` exports and what a dirty work tree is checked for."""
F32 = npt.NDArray[np.float32]
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, where the benchmarks' event time starts


def mixture(
    n: int, dim: int, centroids: int, seed: int = 0, centres_seed: int = 1234
) -> tuple[F32, npt.NDArray[np.str_]]:
    """``n`` vectors from a mixture of ``centroids`` Gaussian clusters, and their cluster names."""
    centres = np.random.default_rng(centres_seed + 7919 * dim + centroids).normal(
        size=(centroids, dim)
    )
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, centroids, n)
    x = centres[which] + rng.normal(scale=0.6 / np.sqrt(dim), size=(n, dim))
    names = np.array([f"c{i:03d}" for i in range(centroids)])
    return x.astype(np.float32), names[which]


def reference_dir(dim: int, centroids: int, *, rows: int | None = None) -> Path:
    """A real reference (``pca-centroids``, cosine, 20 PCA components), built once, cached."""
    rows = rows or max(40 * centroids, 4000)
    path = CACHE / f"reference-d{dim}-c{centroids}-r{rows}"
    with contextlib.suppress(EmbmonError):  # not built yet, or by an older embmon: build it
        Reference.load(path)
        return path
    x, y = mixture(rows, dim, centroids, seed=1)
    ref = build_reference(
        EventBatch.from_vectors(x),
        y,
        method="pca-centroids",
        components=20,
        distance="cosine",
        rounds=20,
        sizes=(10, 100, 1000),
    )
    ref.save(path)
    return path


def make_reference(dim: int, centroids: int, *, rows: int | None = None) -> Reference:
    return Reference.load(reference_dir(dim, centroids, rows=rows))


def event_json(vector: F32, timestamp: float, *, b64: bool, event_id: int) -> bytes:
    """One event as the agent reads it: ``embedding_b64`` (base64 of little-endian float32) or
    ``embedding`` as a JSON list, written as a numpy producer with orjson writes float32s
    (shortest digits that read back to the same float32, ~10 characters a number)."""
    event: dict[str, Any] = {"event_id": f"e{event_id}", "timestamp": timestamp}
    if b64:
        event["embedding_b64"] = base64.b64encode(vector.astype("<f4").tobytes()).decode()
    else:
        event["embedding"] = vector.astype(np.float32)
    return orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)


def best_rate(run: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Run ``run`` (which returns the items it processed) ``repeats`` times; best items/s."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        items = run()
        rates.append(items / (time.perf_counter() - start))
    return max(rates), rates


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's current resident set size (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def emit(name: str, result: dict[str, Any], out: str | None) -> None:
    """Write the raw result as JSON to ``out`` (``--json PATH``), for run_all and the record."""
    payload = {"benchmark": name, "python": sys.version.split()[0], **result}
    if out:
        Path(out).write_text(json.dumps(payload, indent=2))
        print(f"raw result: {out}")


def fmt(value: float) -> str:
    """A rate or size with thousands separators and sensible precision."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def side_python(script: str, venv: str, given: str | None = None, **env: str) -> str:
    """A peer's own interpreter: ``bench/<script>`` makes ``.cache/<venv>`` (idempotent) and
    prints its python last; ``given`` skips that."""
    if given:
        return given
    out = subprocess.run(
        ["bash", str(ROOT / "bench" / script), str(ROOT / ".cache" / venv)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    return out.stdout.strip().splitlines()[-1]


def git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], capture_output=True, text=True, cwd=ROOT, check=True)
    return done.stdout.strip()


def git_commit(rev: str) -> str:
    return git("rev-parse", "--verify", f"{rev}^{{commit}}")


def export_code(commit: str) -> Path:
    """embmon's packages as committed (``git archive``), once, under .cache/bench/code/."""
    out = CACHE / "code" / commit
    if not (out / "sketches").is_dir():
        staging = out.with_name(f"{commit}.partial")
        staging.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", commit, *PACKAGES], capture_output=True, cwd=ROOT, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(staging)], input=archive.stdout, check=True)
        staging.rename(out)
    return out

"""Helpers shared by the tests of ``sketches/``: exact references, digits splits, profiling."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sketches.batch import EventBatch
from sketches.drift import DriftResult
from sketches.profile import WindowProfile
from sketches.quantiles import QuantileSketch
from sketches.reference import Reference

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Rows = npt.NDArray[np.intp]


def exclusive_quantiles(values: npt.ArrayLike, ranks: Sequence[float]) -> F64:
    """The quantile rule of an exact KLL sketch (and of whylogs): ``sorted[min(floor(q·n), n−1)]``.

    >>> exclusive_quantiles([3.0, 1.0, 2.0, 4.0], [0.0, 0.5, 0.75, 1.0]).tolist()
    [1.0, 3.0, 4.0, 4.0]
    """
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    n = ordered.size
    return np.array([ordered[min(math.floor(q * n), n - 1)] for q in ranks], dtype=np.float64)


def exact_cdf(values: npt.ArrayLike, points: npt.ArrayLike) -> F64:
    """Fraction of ``values`` that are ``<= point``, for each point."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    where = np.searchsorted(ordered, np.asarray(points, dtype=np.float64), side="right")
    return where / ordered.size


def max_rank_error(sketch: QuantileSketch, column: int, values: npt.ArrayLike) -> float:
    """Largest |sketch CDF − exact CDF| over every distinct value of the data."""
    data = np.asarray(values, dtype=np.float32).astype(np.float64)
    points = np.unique(data)
    estimated = sketch.cdf(column, points)
    return float(np.max(np.abs(estimated - exact_cdf(data, points))))


def assert_column_matches(sketch: QuantileSketch, column: int, values: npt.ArrayLike) -> None:
    """A KLL column summarises ``values``: exactly while it holds them all, else within the
    sketch's own a-priori normalised rank error (``sketch.rank_error``)."""
    data = np.asarray(values, dtype=np.float32).astype(np.float64)
    assert sketch.count == data.size
    if data.size == 0:
        assert sketch.column(column).is_empty()
        return
    retained, _ = sketch.sorted_view(column)
    if data.size <= sketch.k:
        assert np.array_equal(retained, np.sort(data)), "an exact-mode sketch lost values"
    error = max_rank_error(sketch, column, data)
    assert error <= sketch.rank_error, (
        f"rank error {error:.5f} exceeds the sketch's bound {sketch.rank_error:.5f} "
        f"(n={data.size}, k={sketch.k})"
    )


@dataclass(frozen=True)
class Digits:
    """``load_digits`` as float32 embeddings with str labels, split build / test (stratified)."""

    x: F32
    y: npt.NDArray[np.str_]
    build: Rows  # rows a reference may be built from
    test: Rows  # rows no reference ever sees: stand-ins for production traffic


CHAT = Path(__file__).resolve().parent / "data" / "chat_e5.npz"


class Chat:
    """``tests/data/chat_e5.npz``: chat lines (``bench/text_embeddings.py``), their e5
    embeddings, language and topic (the corpus file); the English lines split once, 60 % to
    build references, 40 % (``test``) the only English any window draws from."""

    def __init__(self, path: Path = CHAT) -> None:
        with np.load(path) as f:
            self.x: F32 = np.ascontiguousarray(f["embeddings"], dtype=np.float32)
            self.language: npt.NDArray[np.str_] = f["language"]
            self.topic: npt.NDArray[np.str_] = f["source"]
            self.sentences: npt.NDArray[np.str_] = f["sentences"]
        english = np.flatnonzero(self.language == "en")
        shuffled = np.random.default_rng(0).permutation(english)
        held_out = round(0.4 * english.size)
        self.test: Rows = np.sort(shuffled[:held_out])
        self.build: Rows = np.sort(shuffled[held_out:])

    def pool(self, language: str) -> Rows:
        return np.flatnonzero(self.language == language)


@functools.cache
def chat() -> Chat:
    return Chat()


@functools.cache
def digits(test_size: float = 0.35, seed: int = 0) -> Digits:
    data = load_digits()
    x = np.ascontiguousarray(data.data, dtype=np.float32)
    y = data.target.astype(str)
    build, test = train_test_split(
        np.arange(y.size), test_size=test_size, stratify=y, random_state=seed
    )
    return Digits(x, y, np.sort(build), np.sort(test))


def profile_window(
    reference: Reference, vectors: npt.ArrayLike, *, timestamp: float = 0.0, batch: int = 64
) -> WindowProfile:
    """A window's profile built as the agent does: small batches profiled, then merged."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    window = reference.new_profile()
    for start in range(0, matrix.shape[0], batch):
        part = reference.new_profile()
        part.update(EventBatch.from_vectors(matrix[start : start + batch], timestamp))
        window = window.merge(part)
    return window


def drifted(results: Mapping[str, DriftResult]) -> set[str]:
    return {metric for metric, result in results.items() if result.drifted}


def describe(results: Mapping[str, DriftResult]) -> str:
    """``metric=score/threshold`` for every metric, ``*`` marking the drifted ones."""
    parts = []
    for metric, r in sorted(results.items()):
        threshold = "none" if r.threshold is None else f"{r.threshold:.3f}"
        parts.append(f"{metric}={r.score:.3f}/{threshold}{'*' if r.drifted else ''}")
    return " ".join(parts)

"""Mergeable quantile sketches (KLL), one per column, and the distribution statistics on them.

Error bound: each column is an Apache DataSketches KLL sketch; with ``k=200`` a rank (CDF value)
read from it is within ``normalized_rank_error`` = 1.33 % of the exact rank with 99 %
confidence (``kll_floats_sketch.get_normalized_rank_error(k, False)``). Below ``k`` items per
column the sketch keeps every value and is exact.

>>> import numpy as np
>>> s = QuantileSketch(columns=2)
>>> s.update(np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]]))
>>> s.count, float(s.quantiles(1, [0.5])[0])
(3, 20.0)
>>> t = QuantileSketch.from_bytes(s.to_bytes())
>>> t.merge(s).count
6
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import datasketches as ds
import numpy as np
import numpy.typing as npt

from .errors import IncompatibleSketchError
from .serial import pack, reading, unpack

__all__ = ["QuantileSketch", "hellinger_on_sketches", "ks_on_sketches"]

FloatArray = npt.NDArray[np.float64]
DEFAULT_K = 200


class QuantileSketch:
    """``columns`` independent KLL float sketches updated together from a matrix."""

    __slots__ = ("_k", "_sketches", "_views")

    def __init__(self, columns: int, k: int = DEFAULT_K) -> None:
        if columns < 1:
            raise ValueError("a QuantileSketch needs at least one column")
        self._k = k
        self._sketches = [ds.kll_floats_sketch(k) for _ in range(columns)]
        self._views: dict[int, tuple[FloatArray, FloatArray]] = {}  # sorted views, until update

    @property
    def columns(self) -> int:
        return len(self._sketches)

    @property
    def k(self) -> int:
        return self._k

    @property
    def count(self) -> int:
        """Values seen per column (every column sees the same rows)."""
        return int(self._sketches[0].n)

    @property
    def rank_error(self) -> float:
        """A-priori normalised rank error at 99 % confidence for this ``k``."""
        return float(ds.kll_floats_sketch.get_normalized_rank_error(self._k, False))

    def update(self, values: npt.ArrayLike) -> None:
        """Add rows: a vector for a one-column sketch, else an ``(n, columns)`` matrix."""
        matrix = np.asarray(values, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[:, None]
        if matrix.shape[1] != self.columns:
            raise ValueError(f"expected {self.columns} columns, got {matrix.shape[1]}")
        if matrix.shape[0] == 0:
            return
        self._views.clear()
        for column, sketch in enumerate(self._sketches):
            sketch.update(np.ascontiguousarray(matrix[:, column]))

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """A new sketch summarising both inputs; neither input changes."""
        if other.columns != self.columns or other.k != self.k:
            raise IncompatibleSketchError(
                f"cannot merge a {other.columns}-column k={other.k} quantile sketch into a "
                f"{self.columns}-column k={self.k} one"
            )
        merged = QuantileSketch.from_bytes(self.to_bytes())
        for mine, theirs in zip(merged._sketches, other._sketches, strict=True):
            mine.merge(theirs)
        return merged

    def column(self, index: int) -> ds.kll_floats_sketch:
        return self._sketches[index]

    def quantiles(self, column: int, ranks: Sequence[float]) -> FloatArray:
        """Values at the given normalised ranks; NaN for an empty sketch."""
        sketch = self._sketches[column]
        if sketch.is_empty():
            return np.full(len(ranks), np.nan)
        return np.asarray(sketch.get_quantiles(list(ranks)), dtype=np.float64)

    def cdf(self, column: int, points: npt.ArrayLike) -> FloatArray:
        """Estimated fraction of values ``<= x`` for sorted ascending ``points``."""
        sketch = self._sketches[column]
        pts = np.asarray(points, dtype=np.float32)
        if sketch.is_empty():
            raise ValueError("the CDF of an empty sketch is undefined")
        if pts.size == 0:
            return np.zeros(0)
        return np.asarray(sketch.get_cdf(pts.tolist(), True), dtype=np.float64)[:-1]

    def sorted_view(self, column: int) -> tuple[FloatArray, FloatArray]:
        """The retained values, sorted, with the sketch's CDF (fraction ``<=``) at each."""
        cached = self._views.get(column)
        if cached is not None:
            return cached
        sketch = self._sketches[column]
        flat = chain.from_iterable(sketch)
        pairs = np.fromiter(flat, dtype=np.float64, count=2 * sketch.num_retained).reshape(-1, 2)
        order = np.argsort(pairs[:, 0], kind="stable")
        values, weights = pairs[order, 0], pairs[order, 1]
        cumulative = np.cumsum(weights)
        view = (values, cumulative / cumulative[-1] if cumulative.size else cumulative)
        self._views[column] = view
        return view

    def to_bytes(self) -> bytes:
        return pack(
            "quantiles",
            {"k": self._k, "columns": self.columns},
            [bytes(s.serialize()) for s in self._sketches],
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantileSketch:
        with reading("quantiles"):
            header, blobs = unpack(data, "quantiles")
            sketch = cls(int(header["columns"]), int(header["k"]))
            sketch._sketches = [ds.kll_floats_sketch.deserialize(b) for b in blobs]
            return sketch

    def __eq__(self, other: object) -> bool:
        # by content: a KLL query sorts a level in place, which changes the bytes, not the data
        if not isinstance(other, QuantileSketch) or (self.k, self.columns, self.count) != (
            other.k,
            other.columns,
            other.count,
        ):
            return False
        for column in range(self.columns):
            mine, theirs = self.sorted_view(column), other.sorted_view(column)
            if not (np.array_equal(mine[0], theirs[0]) and np.array_equal(mine[1], theirs[1])):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"QuantileSketch(columns={self.columns}, k={self._k}, count={self.count})"


def ks_on_sketches(a: QuantileSketch, b: QuantileSketch, column: int = 0) -> float:
    """Two-sample Kolmogorov–Smirnov statistic D between the same column of two sketches.

    D = max |F_a(x) − F_b(x)| over every retained value of both sketches (where the step CDFs
    change), read from the sketches' sorted views. Exact when both sketches still hold all
    their values; otherwise within the sum of the two rank errors. (``datasketches.ks_test``
    only returns a very conservative bool.)
    """
    values_a, cdf_a = a.sorted_view(column)
    values_b, cdf_b = b.sorted_view(column)
    if values_a.size == 0 or values_b.size == 0:
        raise ValueError("the KS statistic of an empty sketch is undefined")
    points = np.concatenate((values_a, values_b))
    return float(np.max(np.abs(_step(values_a, cdf_a, points) - _step(values_b, cdf_b, points))))


def _step(values: FloatArray, cdf: FloatArray, points: FloatArray) -> FloatArray:
    """A step CDF given by sorted ``values``/``cdf``, evaluated at ``points``."""
    index = np.searchsorted(values, points, side="right") - 1
    return np.where(index >= 0, cdf[np.maximum(index, 0)], 0.0)


def hellinger_on_sketches(
    a: QuantileSketch, reference: QuantileSketch, column: int = 0, bins: int = 20
) -> float:
    """Hellinger distance between two distributions binned at the reference's quantiles.

    The bin edges are the reference's ``1/bins`` quantiles, so each bin holds about the same
    reference mass; values outside the reference range fall in the two open end bins.
    """
    edges = np.unique(reference.quantiles(column, np.linspace(0, 1, bins + 1)[1:-1].tolist()))
    p = np.diff(np.concatenate(([0.0], a.cdf(column, edges), [1.0])))
    q = np.diff(np.concatenate(([0.0], reference.cdf(column, edges), [1.0])))
    return _hellinger(p, q)


def _hellinger(p: FloatArray, q: FloatArray) -> float:
    bc = float(np.sum(np.sqrt(np.clip(p, 0, None) * np.clip(q, 0, None))))
    return float(np.sqrt(max(0.0, 1.0 - bc)))

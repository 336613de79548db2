"""Drift thresholds calibrated from held-out reference rows, for every window size.

The promise: a window drawn from the reference distribution is flagged ``drifted`` (by any
metric) with probability at most ``alpha``, whatever its event count. The method:

1. Rows held out from everything else stand in for clean production traffic: not in the
   reference profile, and scored by a PCA and centroids that never saw them (fitted without
   them, or cross-fitted without their fold: see :mod:`sketches.reference`). Rows scored by a
   fit that saw them sit closer to the subspace and centroids than new data does, so
   calibrating on them would alarm on clean data.
2. For each window size ``n`` of a geometric grid (10 … 10,000 by default) draw ``rounds``
   clean windows (four times as many up to 100 events) by a two-stage bootstrap: first
   resample the held-out rows (a plausible other draw of "the reference distribution"), then
   draw ``n`` rows from that resample. The first stage makes thresholds cover the held-out
   set's own sampling error, which dominates for large windows; a plain bootstrap would be
   too tight there.
3. Build each window's profile with the same sketches the live agent uses and score it against
   the reference profile with every metric but ``sample_mmd``. That one's null is drawn
   apart, as a permutation test's (:func:`sketches.mmd.split_null`: random splits of the
   reference and held-out rows into a pseudo-reference and a window of distinct rows),
   because bootstrap windows repeat rows, which a kernel statistic sees and a fresh window
   does not have.
4. Family-wise level, split in two (a weighted Bonferroni): ``sample_mmd``, the one test of
   the whole joint distribution, gets ``MMD_SHARE`` of ``alpha`` (its threshold is the upper
   ``MMD_SHARE * alpha``-quantile of ``4 * rounds`` null scores, so that quantile lies
   between several of them); the other metrics share the rest jointly: the largest
   per-metric tail probability ``beta`` such that the share of bootstrap windows in which
   *any* of them exceeds its upper ``beta``-quantile stays within it. Correlated metrics thus
   get looser thresholds than Bonferroni's. On the detection benchmark
   (``bench/detection.py``) half of alpha for the kernel test caught more windows of a new
   language and of an unseen class than one level for every metric did, and the class-mix
   shift that only ``closest_centroid`` sees still kept up with alibi-detect's MMD.
5. Across sizes thresholds are made non-increasing in ``n`` (a running maximum from the
   largest size down, which only ever raises a threshold), interpolated linearly in ``log n``
   between grid sizes, and held at the largest size's value beyond it (conservative: null
   scores shrink with ``n``). Windows smaller than the smallest size are not judged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .batch import EventBatch
from .blas import one_blas_thread
from .drift import CategoricalStatistic, drift_scores
from .geometry import EmbeddingFeatures
from .mmd import split_null
from .profile import WindowProfile
from .sample import row_keys
from .text import TextFeatures, text_features

__all__ = ["DEFAULT_SIZES", "Calibration", "calibrate"]

DEFAULT_SIZES = (10, 30, 100, 300, 1000, 3000, 10000)
MMD_SHARE = 0.5  # of alpha, for sample_mmd; the other metrics share the rest (step 4 above)


@dataclass(frozen=True)
class Calibration:
    """Thresholds per metric on a grid of window sizes, and how they were obtained."""

    alpha: float
    sizes: tuple[int, ...]
    thresholds: dict[str, tuple[float, ...]]
    rounds: int
    rows: int

    def threshold(self, metric: str, sample_size: int) -> float | None:
        """The threshold for a window of ``sample_size``; None if too small or uncalibrated.

        >>> c = Calibration(0.01, (10, 100), {"m": (0.5, 0.1)}, 100, 50)
        >>> c.threshold("m", 5), c.threshold("m", 10), round(c.threshold("m", 31), 3)
        (None, 0.5, 0.303)
        >>> c.threshold("m", 10_000)
        0.1
        """
        values = self.thresholds.get(metric)
        if values is None or sample_size < self.sizes[0]:
            return None
        logs = np.log(np.asarray(self.sizes, dtype=np.float64))
        return float(np.interp(math.log(sample_size), logs, np.asarray(values)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "sizes": list(self.sizes),
            "thresholds": {k: list(v) for k, v in self.thresholds.items()},
            "rounds": self.rounds,
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(
            alpha=float(data["alpha"]),
            sizes=tuple(int(s) for s in data["sizes"]),
            thresholds={k: tuple(float(x) for x in v) for k, v in data["thresholds"].items()},
            rounds=int(data["rounds"]),
            rows=int(data["rows"]),
        )


class _RowSampler:
    """Draws windows of held-out rows as ready-to-sketch features (text as id slices)."""

    def __init__(self, features: EmbeddingFeatures, batch: EventBatch) -> None:
        self.features = features
        self.keys = row_keys(batch.embeddings)
        self.text: TextFeatures | None = None
        if batch.tokens is not None:
            self.text = text_features(batch.tokens)
            has_doc = np.array([t is not None for t in batch.tokens])
            lengths = np.zeros(len(batch), dtype=np.int64)
            lengths[has_doc] = self.text.doc_lengths
            self._has_doc = has_doc
            self._lengths = lengths
            self._starts = np.cumsum(lengths) - lengths
        self._predictions = _column(batch.predictions)
        self._targets = _column(batch.targets)

    def profile(
        self, rows: npt.NDArray[np.intp], empty: Callable[[], WindowProfile]
    ) -> WindowProfile:
        profile = empty()
        profile.update_features(
            self.features.take(rows),
            self.keys[rows],
            text=self._text(rows),
            predictions=None if self._predictions is None else self._predictions[rows].tolist(),
            targets=None if self._targets is None else self._targets[rows].tolist(),
        )
        return profile

    def _text(self, rows: npt.NDArray[np.intp]) -> TextFeatures | None:
        if self.text is None:
            return None
        docs = rows[self._has_doc[rows]]
        lengths = self._lengths[docs]
        shift = np.repeat(self._starts[docs] - (np.cumsum(lengths) - lengths), lengths)
        positions = np.arange(int(lengths.sum()), dtype=np.int64) + shift
        return TextFeatures(lengths, self.text.term_ids[positions], self.text.vocab)


def _rounds_at(size: int, rounds: int) -> int:
    """Four times the rounds for windows of up to 100 events.

    Small windows are cheap to simulate, and their statistics are coarse (few distinct values),
    so their tail quantiles need more bootstrap windows to hold alpha out of sample.
    """
    return rounds * 4 if size <= 100 else rounds


def _column(values: Sequence[str | None] | None) -> npt.NDArray[np.object_] | None:
    return None if values is None else np.asarray(values, dtype=object)


def _family_thresholds(scores: npt.NDArray[np.float64], alpha: float) -> npt.NDArray[np.float64]:
    """Per-metric upper quantiles at the largest level keeping the any-metric rate <= alpha."""
    metrics = scores.shape[1]

    def at(beta: float) -> tuple[npt.NDArray[np.float64], float]:
        q = np.quantile(scores, 1.0 - beta, axis=0, method="higher")
        return q, float(np.mean(np.any(scores > q, axis=1)))

    low, high = alpha / metrics, alpha
    best, rate = at(low)
    if at(high)[1] <= alpha:
        return at(high)[0]
    for _ in range(20):
        mid = 0.5 * (low + high)
        q, rate = at(mid)
        if rate <= alpha:
            low, best = mid, q
        else:
            high = mid
    return best


def calibrate(
    empty: Callable[[], WindowProfile],
    reference_profile: WindowProfile,
    features: EmbeddingFeatures,
    batch: EventBatch,
    *,
    alpha: float = 0.01,
    statistic: CategoricalStatistic = "hellinger",
    sizes: Sequence[int] = DEFAULT_SIZES,
    rounds: int = 300,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Thresholds for every metric the held-out rows allow, on a grid of window sizes.

    ``empty`` makes a fresh profile bound to the reference; ``features`` and ``batch`` are
    the held-out rows (their embedding features, as a space that never saw them computes
    them, and their tokens / predictions / targets).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    sampler = _RowSampler(features, batch)
    rows = len(features)
    sample_rows = features.sample_rows()
    capacity = empty().sample.capacity
    table: dict[str, list[float]] = {}
    for step, size in enumerate(sizes):
        matrix: list[list[float]] = []
        names: list[str] = []
        for _ in range(_rounds_at(size, rounds)):
            population = rng.integers(rows, size=rows)
            window = population[rng.integers(rows, size=size)]
            with one_blas_thread():  # small products: a BLAS thread hand-off costs more
                profile = sampler.profile(window, empty)
                scores = drift_scores(profile, reference_profile, statistic, sample=False)
            names = names or sorted(scores)
            matrix.append([scores[name].score for name in names])
        null = None
        if len(reference_profile.sample):
            null = split_null(
                reference_profile.sample,
                sample_rows,
                sampler.keys,
                min(size, capacity),
                4 * rounds,
                rng,
            )
        share = 0.0 if null is None else alpha * MMD_SHARE
        level = _family_thresholds(np.asarray(matrix), alpha - share)
        for name, value in zip(names, level.tolist(), strict=True):
            table.setdefault(name, []).append(value)
        if null is not None:
            mmd = float(np.quantile(null, 1.0 - share, method="higher"))
            table.setdefault("sample_mmd", []).append(mmd)
        if progress is not None:
            progress(step + 1, len(sizes))
    thresholds = {
        name: tuple(np.maximum.accumulate(np.asarray(values)[::-1])[::-1].tolist())
        for name, values in table.items()
    }
    return Calibration(alpha, tuple(sizes), thresholds, rounds, rows)

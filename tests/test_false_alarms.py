"""Calibrated thresholds keep their promise: clean windows are flagged at most ``alpha`` of the time.

The reference is built (at alpha = 0.05) from the build split of ``load_digits``: its PCA and
centroids are fitted on every build row, and its profile and thresholds come from the same
rows scored out of fold (cross-fitting), the case where calibrating on fitted rows would alarm
on clean data. Clean windows are drawn from the test split, rows ``build_reference`` never
saw, and a window counts as a false alarm when *any* metric fires. The assertion is a one-sided binomial test of the
observed count against ``alpha`` at p = 0.001, so a correct calibration fails it about once in
a thousand runs, while a rate of twice ``alpha`` is caught almost surely.

Small windows (30 events) are drawn without replacement from the test pool. Large windows
(3,000 events) are larger than the whole pool (629 rows), so they are drawn with replacement:
those windows are independent given the pool, and the test then checks the rate a user whose
production traffic looked like this pool would see.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import binomtest

from sketches.batch import EventBatch
from sketches.calibration import Calibration
from sketches.drift import evaluate
from sketches.geometry import Distance
from sketches.reference import Reference, build_reference
from tests.sketch_helpers import digits, drifted

ALPHA = 0.05
P_VALUE = 0.001
SIZES = (10, 30, 100, 300, 1000, 3000)
WINDOWS = {30: 1000, 3000: 400}  # window size: number of clean windows judged


@dataclass(frozen=True)
class Rate:
    size: int
    windows: int
    alarms: int
    by_metric: dict[str, int]

    @property
    def rate(self) -> float:
        return self.alarms / self.windows

    def __str__(self) -> str:
        return (
            f"n={self.size}: {self.alarms}/{self.windows} = {self.rate:.3f} clean windows "
            f"flagged (alpha {ALPHA}); by metric {dict(sorted(self.by_metric.items()))}"
        )


@functools.cache
def _reference(distance: Distance) -> Reference:
    d = digits()
    return build_reference(
        EventBatch.from_vectors(d.x[d.build]),
        d.y[d.build],
        distance=distance,
        alpha=ALPHA,
        sizes=SIZES,
        seed=0,
    )


@pytest.fixture(scope="module", params=["cosine", "euclidean"])
def reference(request: pytest.FixtureRequest) -> Reference:
    return _reference(request.param)


def _false_alarms(reference: Reference, size: int, windows: int, seed: int) -> Rate:
    d = digits()
    rng = np.random.default_rng(seed)
    alarms, by_metric = 0, Counter[str]()
    for _ in range(windows):
        rows = rng.choice(d.test, size, replace=size > d.test.size)
        window = reference.new_profile()
        window.update(EventBatch.from_vectors(d.x[rows]))
        fired = drifted(evaluate(window, reference))
        alarms += bool(fired)
        by_metric.update(fired)
    return Rate(size, windows, alarms, dict(by_metric))


@pytest.mark.parametrize("size", sorted(WINDOWS))
def test_clean_windows_are_flagged_at_most_alpha_of_the_time(
    reference: Reference, size: int
) -> None:
    assert reference.calibration.alpha == ALPHA
    assert reference.info["rows"]["fit"] == digits().build.size  # fitted on every build row
    assert reference.threshold("closest_centroid", size) is not None
    rate = _false_alarms(reference, size, WINDOWS[size], seed=size)
    p = binomtest(rate.alarms, rate.windows, ALPHA, alternative="greater").pvalue
    assert p > P_VALUE, f"{reference.distance}: {rate}; binomial p = {p:.2g}"


def test_the_smallest_windows_are_flagged_at_most_alpha_of_the_time() -> None:
    reference = _reference("cosine")
    rate = _false_alarms(reference, 10, 2000, seed=10)
    p = binomtest(rate.alarms, rate.windows, ALPHA, alternative="greater").pvalue
    assert p > P_VALUE, f"{reference.distance}: {rate}; binomial p = {p:.2g}"


def test_the_test_would_catch_a_miscalibrated_reference(reference: Reference) -> None:
    """The same check fails when every threshold is halved: the test can fail."""
    thresholds = {m: tuple(v / 2 for v in vs) for m, vs in reference.calibration.thresholds.items()}
    halved = Reference(
        reference.space,
        reference.profile,
        Calibration(
            ALPHA,
            reference.calibration.sizes,
            thresholds,
            reference.calibration.rounds,
            reference.calibration.rows,
        ),
        reference.statistic,
        reference.method,
    )
    rate = _false_alarms(halved, 30, WINDOWS[30], seed=30)
    p = binomtest(rate.alarms, rate.windows, ALPHA, alternative="greater").pvalue
    assert p <= P_VALUE, f"halved thresholds still pass: {rate}"

"""Golden drift tests on real data: seeded daily windows of ``load_digits``, exact days flagged.

References are built from the build split only; every window is drawn from the test split
(rows no reference has seen), except the "new cluster" days, which inject a digit the
reference was built without. Each day's profile is built as the agent builds it, from small
batches merged together, and judged with ``sketches.drift.evaluate``.

Margins (score / threshold, measured with half of alpha for sample_mmd, every reference row
in its baseline, and the other half of alpha for the rest; 30 stream seeds x 8 days per
scenario, both distances for the class mix): clean days reach at most 0.83 of any threshold;
the metrics asserted on shifted days exceed theirs by at least 1.7x (closest_centroid on the
class mix by 4.7x, out_of_range on noise and scaling by 9.6x). The unseen class (d), over 12
seeds: clean days at most 0.62 of any threshold, sample_mmd at least 2.1x its own on shifted
days. Low-level noise (e), over 10 seeds: clean days at most 0.82, pca_residual at least 1.16x
its threshold on shifted days; in windows of 100 (f), over 12 seeds: out_of_range at least
7.0x, and 1 of 60 clean days flagged (sample_mmd at 1.11x), as alpha allows (the test's own
stream reaches at most 0.79). KLL compaction is randomised, so the exact scores vary a little
from run to run; the margins keep the verdicts fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from sketches.batch import EventBatch
from sketches.drift import DriftResult, evaluate
from sketches.geometry import Distance
from sketches.reference import Reference, build_reference
from tests.sketch_helpers import describe, digits, drifted, profile_window

DAYS, EVENTS = 8, 300
T0, DAY = 1_790_000_000.0, 86_400.0  # 2026-09-21T00:00Z, one window per day
BUILD: dict[str, Any] = {"alpha": 0.01, "rounds": 200, "sizes": (10, 30, 100, 300, 1000), "seed": 0}
F32 = npt.NDArray[np.float32]
Day = Callable[[np.random.Generator, int], F32]
Verdicts = list[dict[str, DriftResult]]


def _build(distance: Distance, without: str | None = None) -> Reference:
    d = digits()
    rows = d.build if without is None else d.build[d.y[d.build] != without]
    return build_reference(
        EventBatch.from_vectors(d.x[rows]), d.y[rows], distance=distance, **BUILD
    )


@pytest.fixture(scope="module")
def cosine() -> Reference:
    return _build("cosine")


@pytest.fixture(scope="module")
def euclidean() -> Reference:
    return _build("euclidean")


@pytest.fixture(scope="module")
def without_2() -> Reference:
    """A cosine reference that never saw the digit 2."""
    return _build("cosine", without="2")


def _stream(reference: Reference, day: Day, seed: int) -> Verdicts:
    rng = np.random.default_rng(seed)
    verdicts = []
    for i in range(DAYS):
        window = profile_window(reference, day(rng, i), timestamp=T0 + i * DAY)
        assert window.count == EVENTS
        verdicts.append(evaluate(window, reference))
    return verdicts


def _flagged(verdicts: Verdicts) -> list[int]:
    return [i for i, results in enumerate(verdicts) if drifted(results)]


def _report(verdicts: Verdicts) -> str:
    return "\n".join(f"day {i}: {describe(results)}" for i, results in enumerate(verdicts))


def _clean(rng: np.random.Generator) -> F32:
    d = digits()
    return np.asarray(d.x[rng.choice(d.test, EVENTS, replace=False)], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# (a) class mix: from day 4 on, only the digits 0, 1 and 2 arrive


def _class_mix(rng: np.random.Generator, day: int) -> F32:
    if day < 4:
        return _clean(rng)
    d = digits()
    low = d.test[np.isin(d.y[d.test], ["0", "1", "2"])]  # ~190 rows: drawn with replacement
    return np.asarray(d.x[rng.choice(low, EVENTS, replace=True)], dtype=np.float32)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_a_class_mix_shift_is_flagged_from_its_first_day(
    distance: str, request: pytest.FixtureRequest
) -> None:
    reference: Reference = request.getfixturevalue(distance)
    verdicts = _stream(reference, _class_mix, seed=7)
    report = _report(verdicts)
    assert _flagged(verdicts) == [4, 5, 6, 7], report
    for day in (4, 5, 6, 7):
        assert verdicts[day]["closest_centroid"].drifted, report
        # the record names its cause: the three digits that now take every event
        parts = verdicts[day]["closest_centroid"].contributors
        assert {part for part, _ in parts} == {"0", "1", "2"}, parts
        assert all(value > 0.15 for _, value in parts), parts
    for day in (0, 1, 2, 3):
        assert all(r.threshold is not None for r in verdicts[day].values()), report


# ---------------------------------------------------------------------------------------------
# (b) corrupted traffic: from day 5 on, 40 % of the events are broken


def _corrupt(kind: str, apply: bool = True) -> Day:
    """Days 5-7 break 40 % of the events (``apply=False``: the same draws, left intact)."""

    def day(rng: np.random.Generator, i: int) -> F32:
        x = _clean(rng).copy()
        if i < 5:
            return x
        hit = rng.random(EVENTS) < 0.4
        if not apply:
            return x
        if kind == "noise":  # heavy pixel noise (pixels are 0..16)
            x[hit] += rng.normal(0.0, 8.0, size=(int(hit.sum()), x.shape[1])).astype(np.float32)
        elif kind == "scaled":  # a broken transform: the vector times ten
            x[hit] *= 10.0
        else:  # "zeroed": the top half of the image lost
            x[np.ix_(hit, np.arange(32))] = 0.0
        return x

    return day


CORRUPTIONS = {
    # kind: metrics that must fire on every corrupted day
    "noise": {"centroid_distance", "pca_residual", "out_of_range"},
    "scaled": {"pca_residual", "centroid_shift", "out_of_range"},
    "zeroed": {"centroid_distance", "pca_residual", "centroid_shift"},
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_traffic_is_flagged_on_exactly_the_corrupted_days(
    kind: str, cosine: Reference
) -> None:
    verdicts = _stream(cosine, _corrupt(kind), seed=11)
    report = _report(verdicts)
    assert _flagged(verdicts) == [5, 6, 7], report
    for day in (5, 6, 7):
        assert CORRUPTIONS[kind] <= drifted(verdicts[day]), report


def test_scaling_is_invisible_to_the_cosine_metrics(cosine: Reference) -> None:
    """x10 leaves every cosine distance as it was: only the geometry metrics can see it."""
    scaled = _stream(cosine, _corrupt("scaled"), seed=11)
    plain = _stream(cosine, _corrupt("scaled", apply=False), seed=11)
    bound = 2 * cosine.profile.distances.rank_error
    for day in range(DAYS):
        s, p = scaled[day], plain[day]
        assert s["closest_centroid"].score == pytest.approx(p["closest_centroid"].score, abs=1e-12)
        assert abs(s["centroid_distance"].score - p["centroid_distance"].score) <= bound
        assert not s["closest_centroid"].drifted and not s["centroid_distance"].drifted


# ---------------------------------------------------------------------------------------------
# (c) a new cluster: from day 5 on, 40 % of the events are a digit the reference never saw


def _new_cluster(rng: np.random.Generator, day: int) -> F32:
    d = digits()
    others = d.test[d.y[d.test] != "2"]
    if day < 5:
        return np.asarray(d.x[rng.choice(others, EVENTS, replace=False)], dtype=np.float32)
    new = int(0.4 * EVENTS)
    twos = np.flatnonzero(d.y == "2")  # every 2 is new to this reference
    rows = np.concatenate(
        [rng.choice(others, EVENTS - new, replace=False), rng.choice(twos, new, replace=False)]
    )
    return np.asarray(d.x[rng.permutation(rows)], dtype=np.float32)


def test_a_new_cluster_is_flagged_by_the_residual(without_2: Reference) -> None:
    assert "2" not in without_2.labels
    verdicts = _stream(without_2, _new_cluster, seed=5)
    report = _report(verdicts)
    assert _flagged(verdicts) == [5, 6, 7], report
    for day in (5, 6, 7):
        assert verdicts[day]["pca_residual"].drifted, report


# ---------------------------------------------------------------------------------------------
# (d) an unseen class near existing centroids: from day 5 on, 20 % of the events are 9s, which
# the reference never saw and which land mostly on the 3-centroid, inside the PCA subspace


UNSEEN_EVENTS = 400


@pytest.fixture(scope="module")
def without_9() -> Reference:
    return _build("cosine", without="9")


def _unseen_nines(rng: np.random.Generator, day: int) -> F32:
    d = digits()
    others = d.test[d.y[d.test] != "9"]
    new = int(0.2 * UNSEEN_EVENTS) if day >= 5 else 0
    nines = np.flatnonzero(d.y == "9")  # every 9 is new to this reference
    rows = np.concatenate(
        [
            rng.choice(others, UNSEEN_EVENTS - new, replace=False),
            rng.choice(nines, new, replace=False),
        ]
    )
    return np.asarray(d.x[rng.permutation(rows)], dtype=np.float32)


def test_an_unseen_class_near_existing_centroids_is_flagged_by_the_sample(
    without_9: Reference,
) -> None:
    rng = np.random.default_rng(3)
    verdicts = [
        evaluate(
            profile_window(without_9, _unseen_nines(rng, i), timestamp=T0 + i * DAY), without_9
        )
        for i in range(DAYS)
    ]
    report = _report(verdicts)
    assert _flagged(verdicts) == [5, 6, 7], report
    for day in (5, 6, 7):
        assert verdicts[day]["sample_mmd"].drifted, report


# ---------------------------------------------------------------------------------------------
# (e) low-level noise: from day 5 on, half the events carry Gaussian pixel noise of std 1 (on a
# 0..16 scale), in windows of 1,000 (test rows drawn with replacement)

NOISY_EVENTS = 1000


def _low_noise(rng: np.random.Generator, day: int, events: int = NOISY_EVENTS) -> F32:
    d = digits()
    x = np.asarray(d.x[rng.choice(d.test, events, replace=True)], dtype=np.float32)
    if day >= 5:
        hit = rng.random(events) < 0.5
        noise = rng.normal(0.0, 1.0, size=(int(hit.sum()), x.shape[1]))
        x[hit] += noise.astype(np.float32)
    return x


def test_low_level_noise_on_half_the_window_is_flagged_by_the_residual(cosine: Reference) -> None:
    rng = np.random.default_rng(13)
    verdicts = [
        evaluate(profile_window(cosine, _low_noise(rng, i), timestamp=T0 + i * DAY), cosine)
        for i in range(DAYS)
    ]
    report = _report(verdicts)
    assert _flagged(verdicts) == [5, 6, 7], report
    for day in (5, 6, 7):
        assert verdicts[day]["pca_residual"].drifted, report


SMALL_NOISY_EVENTS = 100


def test_low_level_noise_in_windows_of_100_is_flagged_out_of_range(cosine: Reference) -> None:
    """The same noise, 100 events a day: too few for the residual, but every noisy event has
    some pixel below 0 or above the most ink training ever had there."""
    rng = np.random.default_rng(17)
    verdicts = [
        evaluate(
            profile_window(cosine, _low_noise(rng, i, SMALL_NOISY_EVENTS), timestamp=T0 + i * DAY),
            cosine,
        )
        for i in range(DAYS)
    ]
    report = _report(verdicts)
    assert _flagged(verdicts) == [5, 6, 7], report
    for day in (5, 6, 7):
        assert verdicts[day]["out_of_range"].drifted, report
        assert verdicts[day]["out_of_range"].contributors, report


# ---------------------------------------------------------------------------------------------
# windows too small or empty


def test_a_window_too_small_to_judge_is_not_drifted(cosine: Reference) -> None:
    d = digits()
    results = evaluate(profile_window(cosine, d.x[d.test[:5]]), cosine)
    assert set(results) == {"closest_centroid"}
    entry = results["closest_centroid"]
    assert (entry.threshold, entry.drifted) == (None, False)
    assert entry.to_dict()["reason"] == "insufficient_events"
    # the smallest calibrated size is judged
    judged = evaluate(profile_window(cosine, d.x[d.test[:10]]), cosine)
    assert all(r.threshold is not None for r in judged.values())
    assert set(judged) == {
        "closest_centroid",
        "centroid_distance",
        "pca_residual",
        "centroid_shift",
        "sample_mmd",
        "out_of_range",
    }


def test_an_empty_window_is_not_drifted(cosine: Reference) -> None:
    results = evaluate(cosine.new_profile(), cosine)
    assert results == {"closest_centroid": DriftResult("hellinger", 0.0, None, False)}

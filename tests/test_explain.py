"""Drift records name their causes: each metric's top contributors, against the exact truth.

``sketches.explain.contributors`` reads the two profiles; here every ranking is checked against
numbers computed directly from the events (numpy, and scipy's two-sample KS), a merged window
is explained as the one-pass window is, and the parts reach ``windows.jsonl`` (and back) and
the ``embmon_drift_contributor`` gauge. The golden class-mix test names its three digits, and
the end-to-end alerting test reads them in the delivered alert's description.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import ks_2samp

from exporters.prometheus import window_families
from exporters.records import SegmentKey, WindowRecord
from sketches.batch import EventBatch
from sketches.drift import evaluate
from sketches.explain import contributors
from sketches.geometry import EmbeddingSpace
from sketches.profile import WindowProfile
from sketches.reference import Reference, build_reference

F32 = np.float32
rng = np.random.default_rng(0)
CENTRES = rng.normal(0, 4, (4, 12)).astype(F32)
SPACE = EmbeddingSpace(
    CENTRES, ("a", "b", "c", "d"), "euclidean", np.zeros(12, F32), np.eye(12, dtype=F32)[:4]
)


def _rows(mix: list[int], seed: int, shift: np.ndarray | None = None) -> np.ndarray:
    r = np.random.default_rng(seed)
    rows = np.vstack([CENTRES[c] + r.normal(0, 1, (n, 12)) for c, n in enumerate(mix)])
    if shift is not None:
        rows[: mix[0]] += shift
    return rows.astype(F32)


def _profile(rows: np.ndarray, predictions: list[str] | None = None) -> WindowProfile:
    profile = WindowProfile.empty(SPACE, "v")
    profile.update(EventBatch(rows, np.zeros(len(rows)), predictions=predictions))
    return profile


def test_closest_centroid_parts_are_the_share_changes() -> None:
    reference, window = _profile(_rows([50, 50, 50, 50], 1)), _profile(_rows([20, 80, 50, 50], 2))
    closest_w = np.bincount(SPACE.features(_rows([20, 80, 50, 50], 2)).closest, minlength=4)
    closest_r = np.bincount(SPACE.features(_rows([50, 50, 50, 50], 1)).closest, minlength=4)
    truth = dict(
        zip("abcd", closest_w / closest_w.sum() - closest_r / closest_r.sum(), strict=True)
    )
    parts = contributors("closest_centroid", window, reference)
    moved = [k for k in sorted(truth, key=lambda k: -abs(truth[k])) if truth[k] != 0]
    assert [p for p, _ in parts] == moved[:3]  # a part that did not move is not named
    for part, value in parts:
        assert value == pytest.approx(truth[part], abs=1e-12)


def test_centroid_distance_parts_are_each_centroids_ks() -> None:
    ref_rows, win_rows = _rows([40] * 4, 3), _rows([40] * 4, 4, shift=np.full(12, 1.5, F32))
    parts = dict(contributors("centroid_distance", _profile(win_rows), _profile(ref_rows), 4))
    d_ref, d_win = SPACE.features(ref_rows).distances, SPACE.features(win_rows).distances
    for column, label in enumerate(SPACE.labels):  # under 200 rows: the sketches are exact
        truth = ks_2samp(d_win[:, column], d_ref[:, column]).statistic
        assert parts[label] == pytest.approx(truth, abs=1e-9)


def test_centroid_shift_parts_share_the_squared_shift() -> None:
    shift = np.zeros(12, F32)
    shift[:2] = 3.0  # only centroid a's events move, inside the subspace
    reference = _profile(_rows([60] * 4, 5))
    window = _profile(_rows([60] * 4, 6, shift=shift))
    parts = contributors("centroid_shift", window, reference, 4)
    assert parts[0][0] == "a" and parts[0][1] > 0.9
    assert sum(v for _, v in parts) == pytest.approx(1.0)


def test_prediction_and_term_parts_are_share_changes() -> None:
    rows = _rows([25] * 4, 7)
    reference = _profile(rows, ["x"] * 50 + ["y"] * 50)
    window = _profile(rows, ["x"] * 90 + ["y"] * 10)
    assert contributors("prediction", window, reference) == (("x", 0.4), ("y", -0.4))
    for metric in ("pca_residual", "sample_mmd", "doc_length", "term_length"):
        assert contributors(metric, window, reference) == ()


def test_out_of_range_parts_are_each_coordinates_share_change() -> None:
    training = _rows([50] * 4, 12)
    low, high = training.min(axis=0), training.max(axis=0)
    space = dataclasses.replace(SPACE, low=low, high=high)
    clean, broken = _rows([50] * 4, 13), _rows([50] * 4, 14)
    broken[:80, 7] = 1e3  # a transform broke coordinate 7 of 40 % of the events
    reference, window = WindowProfile.empty(space, "v"), WindowProfile.empty(space, "v")
    reference.update(EventBatch.from_vectors(clean))
    window.update(EventBatch.from_vectors(broken))
    outside_r, outside_w = ((x < low) | (x > high) for x in (clean, broken))
    truth = outside_w.mean(axis=0) - outside_r.mean(axis=0)
    parts = contributors("out_of_range", window, reference)
    assert parts[0][0] == "dim 7" and truth[7] > 0.39
    for part, value in parts:
        assert value == pytest.approx(truth[int(part.removeprefix("dim "))], abs=1e-12)
    assert window.ranges.share() == pytest.approx(outside_w.any(axis=1).mean(), abs=1e-12)


def test_a_merged_window_is_explained_as_the_one_pass_window() -> None:
    rows = _rows([10, 70, 30, 40], 8)
    reference = _profile(_rows([50] * 4, 9))
    whole = _profile(rows)
    merged = _profile(rows[:60]).merge(_profile(rows[60:]))
    for metric in ("closest_centroid", "centroid_shift"):
        got, want = contributors(metric, merged, reference), contributors(metric, whole, reference)
        assert [p for p, _ in got] == [p for p, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-9)


@pytest.fixture(scope="module")
def reference() -> Reference:
    return build_reference(
        EventBatch.from_vectors(_rows([300] * 4, 10)),
        None,
        method="manual",
        centroids=CENTRES,
        centroid_labels=list("abcd"),
        distance="euclidean",
        components=4,
        rounds=100,
        sizes=(30, 300),
    )


def test_parts_reach_the_window_record_and_the_gauge(reference: Reference) -> None:
    window = reference.new_profile()
    window.update(EventBatch.from_vectors(_rows([200, 20, 20, 20], 11)))
    results = evaluate(window, reference)
    assert results["closest_centroid"].drifted
    assert results["closest_centroid"].contributors[0][0] == "a"
    record = WindowRecord.from_profile("m", SegmentKey(), 0, 60, window, results)
    line = record.to_json()
    parts = line["drift"]["closest_centroid"]["contributors"]
    assert parts[0]["part"] == "a" and parts[0]["value"] > 0.4
    assert WindowRecord.from_json(line) == record
    (family,) = [
        f
        for f in window_families([(("m", ""), record)], 10)
        if f.name == "embmon_drift_contributor"
    ]
    shown = {
        (s.labels["metric"], s.labels["rank"]): (s.labels["part"], s.value) for s in family.samples
    }
    assert shown[("closest_centroid", "1")] == ("a", pytest.approx(parts[0]["value"]))
    assert len(shown) <= 3 * len(results)  # at most 3 parts a metric: a bounded series count

"""The coordinate sample beyond the conformance suite, and the MMD metric computed on it.

The suite (tests/test_sketch_conformance.py) checks the sample against its exact truth under
splits, merges and round trips. Here: merges of samples of different capacities, the sample's
uniformity, the MMD's behaviour (about 0 for clean windows, large for a moved one, blind to
repeated rows), and profiles written before the sample existed.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kstest

from sketches.batch import EventBatch
from sketches.drift import drift_scores
from sketches.geometry import EmbeddingSpace
from sketches.mmd import sample_mmd
from sketches.profile import WindowProfile
from sketches.sample import CoordinateSample, row_keys
from sketches.serial import pack, unpack

F32 = np.float32


def _sample(rows: np.ndarray, capacity: int = 512) -> CoordinateSample:
    sample = CoordinateSample(rows.shape[1], capacity)
    sample.update(row_keys(rows), rows.astype(F32))
    return sample


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    capacities=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    cut=st.integers(0, 300),
)
def test_merging_samples_of_other_capacities_gives_the_smaller_capacitys_sample(
    seed: int, n: int, capacities: tuple[int, int], cut: int
) -> None:
    rows = np.random.default_rng(seed).integers(-4, 5, size=(n, 3)).astype(F32)
    a, b = _sample(rows[:cut], capacities[0]), _sample(rows[cut:], capacities[1])
    whole = _sample(rows, min(capacities))
    assert a.merge(b) == whole == b.merge(a)
    assert len(whole) <= min(capacities)
    assert CoordinateSample.from_bytes(whole.to_bytes()) == whole


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), capacity=st.integers(1, 30))
def test_a_row_whose_coordinates_differ_in_the_last_bits_merges_in_any_order(
    seed: int, n: int, capacity: int
) -> None:
    """The same embedding projected in batches of other shapes can get coordinates a few ulps
    apart under the same priority: merge keeps the smallest, so its order does not matter."""
    rng = np.random.default_rng(seed)
    coords = rng.normal(size=(n, 2)).astype(F32)
    keys = row_keys(rng.integers(0, 5, size=(n, 1)))  # few distinct keys: most rows repeat one
    parts = []
    for _ in range(3):
        nudged = np.nextafter(coords, np.float32(np.inf)) if rng.random() < 0.5 else coords
        part = CoordinateSample(2, capacity)
        part.update(keys, nudged)
        parts.append(part)
    a, b, c = parts
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c)) == c.merge(a).merge(b)


def test_the_sample_of_a_large_window_is_uniform() -> None:
    """Rows are kept by the hash of their bytes: for distinct rows that is a uniform sample, so
    the kept rows' values follow the window's distribution (KS test at p = 0.001)."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=(20_000, 1)).astype(F32)
    sample = _sample(values, capacity=1000)
    assert len(sample) == 1000
    assert kstest(sample.coords[:, 0], "norm").pvalue > 0.001


def test_mmd_is_about_zero_for_the_same_distribution_and_large_for_a_moved_one() -> None:
    rng = np.random.default_rng(0)
    reference = _sample(rng.normal(size=(500, 5)), 1024)
    clean = [sample_mmd(_sample(rng.normal(size=(300, 5))), reference) for _ in range(20)]
    moved = sample_mmd(_sample(rng.normal(size=(300, 5)) + np.array([0.5, 0, 0, 0, 0])), reference)
    assert max(abs(v) for v in clean) < 0.01
    assert moved > 3 * max(clean)


def test_mmd_reads_a_windows_distinct_rows() -> None:
    """A window scores as its distinct rows, however unevenly they repeat: repeats (a window
    drawn from a small pool, popular requests) would widen its spread beyond the null, which
    is drawn over distinct rows (sketches.mmd.split_null)."""
    rng = np.random.default_rng(1)
    reference = _sample(rng.normal(size=(400, 4)), 1024)
    window = rng.normal(size=(200, 4))
    repeats = np.vstack([window, window[:50], window[:10], window[:10]])
    once, uneven = _sample(window), _sample(repeats)
    assert sorted(set(uneven.counts.tolist())) == [1, 2, 4]
    assert sample_mmd(uneven, reference) == pytest.approx(sample_mmd(once, reference), abs=1e-6)


def test_the_reference_terms_are_computed_once_and_dropped_when_it_changes() -> None:
    rng = np.random.default_rng(2)
    reference = _sample(rng.normal(size=(100, 2)))
    window = _sample(rng.normal(size=(50, 2)))
    first = sample_mmd(window, reference)
    assert "mmd" in reference.memo
    assert sample_mmd(window, reference) == first
    reference.update(row_keys(window.coords), window.coords)
    assert "mmd" not in reference.memo


_SPACE = EmbeddingSpace(
    np.eye(3, dtype=F32), ("a", "b", "c"), "cosine", np.zeros(3, F32), np.eye(3, dtype=F32)[:2]
)


def _without_sample(profile: WindowProfile) -> bytes:
    """The bytes an embmon from before the sample wrote: the first seven blobs (the sample
    and the range counts came later, in that order)."""
    header, blobs = unpack(profile.to_bytes(), "window_profile")
    return pack("window_profile", header, blobs[:7])


def test_a_profile_written_before_the_sample_reads_and_is_scored_without_it() -> None:
    rng = np.random.default_rng(4)
    reference = WindowProfile.empty(_SPACE, "v")
    reference.update(EventBatch.from_vectors(rng.normal(size=(200, 3))))
    window = WindowProfile.empty(_SPACE, "v")
    window.update(EventBatch.from_vectors(rng.normal(size=(50, 3))))
    assert "sample_mmd" in drift_scores(window, reference)
    old = WindowProfile.from_bytes(_without_sample(window))
    assert old.count == 50 and len(old.sample) == 0
    assert "sample_mmd" not in drift_scores(old, reference)
    assert "sample_mmd" not in drift_scores(
        window, WindowProfile.from_bytes(_without_sample(reference))
    )
    assert old.merge(window).sample == window.sample

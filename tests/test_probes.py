"""Residual probes: the sample's view off the PCA subspace, and the null its MMD is judged by.

A built reference's coordinate sample holds each event's PCA coordinates and a few fixed random
projections of its residual (:func:`sketches.geometry.residual_probes`), so that distances
between sample rows estimate distances between the embeddings (Johnson-Lindenstrauss). Here:
the probes read the residual only and keep its length; the live profile computes them only for
rows that can enter its sample, and gets exactly the sample of computing them all; references
save and load them; and ``sample_mmd``'s calibrated threshold (from
:func:`sketches.mmd.split_null`) holds its false-alarm rate on fresh windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from sketches.batch import EventBatch
from sketches.drift import evaluate
from sketches.geometry import DEFAULT_PROBES, EmbeddingSpace, fit_pca, residual_probes
from sketches.profile import WindowProfile
from sketches.reference import Reference, build_reference
from sketches.sample import row_keys

F32 = np.float32


def _space(dim: int = 64, components: int = 8, probes: int = 32, seed: int = 0) -> EmbeddingSpace:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, dim)).astype(F32) * np.linspace(3, 0.5, dim).astype(F32)
    mean, basis = fit_pca(x, components)
    centroids = rng.normal(size=(5, dim)).astype(F32)
    return EmbeddingSpace(
        centroids, tuple("abcde"), "cosine", mean, basis, residual_probes(basis, probes)
    )


def test_probes_read_only_the_residual_and_keep_its_length() -> None:
    space = _space(dim=384, components=20, probes=64)
    assert space.probes is not None
    assert np.abs(space.probes @ space.components.T).max() < 1e-5
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 384)).astype(F32)
    f = space.features(x)
    ratio = np.einsum("ij,ij->i", f.probed, f.probed) / f.residual**2
    assert abs(ratio.mean() - 1.0) < 0.03  # E |r P^T|^2 = |r|^2
    assert ratio.std() == pytest.approx(np.sqrt(2 / 64), rel=0.25)  # chi-square with 64 dof
    inside = (f.coords @ space.components + space.mean)[:5]  # rows on the subspace: no probe
    assert np.abs(space.features(inside).probed).max() < 1e-3


def test_sample_row_distances_estimate_the_embeddings_distances() -> None:
    space = _space(dim=384, components=20, probes=64)
    x = np.random.default_rng(2).normal(size=(400, 384)).astype(F32)
    rows = space.features(x).sample_rows()
    a, b = np.arange(0, 400, 2), np.arange(1, 400, 2)
    ratio = ((rows[a] - rows[b]) ** 2).sum(1) / ((x[a] - x[b]) ** 2).sum(1)
    assert abs(np.median(ratio) - 1.0) < 0.1


def test_the_live_profile_probes_only_entering_rows_and_keeps_the_same_sample() -> None:
    """Probes are computed for rows that can still enter the (full) sample; the sample must be
    exactly the one of computing every row's probes (keys, counts, and rows to BLAS precision)."""
    space = _space()
    x = np.random.default_rng(3).normal(size=(3000, 64)).astype(F32)
    x[100:120] = x[0]  # repeats of a row: equal priorities must still add to its count
    live = WindowProfile.empty(space, "v", sample_capacity=16)
    for batch in np.array_split(x, 60):
        live.update(EventBatch.from_vectors(batch))
    eager = WindowProfile.empty(space, "v", sample_capacity=16)
    eager.update_features(space.features(x), row_keys(x))
    assert np.array_equal(live.sample.keys, eager.sample.keys)
    assert np.array_equal(live.sample.counts, eager.sample.counts)
    np.testing.assert_allclose(live.sample.coords, eager.sample.coords, rtol=1e-5, atol=1e-5)
    assert live.sample.components == space.n_components + space.n_probes


@pytest.fixture(scope="module")
def gaussian_reference() -> Reference:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1600, 48)).astype(F32) * np.linspace(2, 0.2, 48).astype(F32)
    batch = EventBatch.from_vectors(x)
    return build_reference(
        batch, None, method="pca-kmeans", clusters=4, components=6, rounds=200, sizes=(30, 300)
    )


def test_a_reference_saves_and_loads_its_probes(gaussian_reference: Reference, tmp_path) -> None:
    loaded = Reference.load(gaussian_reference.save(tmp_path / "ref"))
    assert loaded.space.probes is not None
    assert np.array_equal(loaded.space.probes, gaussian_reference.space.probes)
    assert loaded.version == gaussian_reference.version
    assert loaded.profile.sample.components == 6 + DEFAULT_PROBES


def test_sample_mmd_holds_its_false_alarm_rate_on_fresh_windows(
    gaussian_reference: Reference,
) -> None:
    """Fresh windows from the reference distribution (rows no build saw): ``sample_mmd``
    alone, at its calibrated family-wise share of alpha = 0.01, flags at most a few of 200."""
    rng = np.random.default_rng(5)
    scale = np.linspace(2, 0.2, 48).astype(F32)
    flagged = {30: 0, 300: 0}
    for n in flagged:
        for _ in range(200):
            profile = gaussian_reference.new_profile()
            profile.update(EventBatch.from_vectors(rng.normal(size=(n, 48)).astype(F32) * scale))
            flagged[n] += evaluate(profile, gaussian_reference)["sample_mmd"].drifted
    assert max(flagged.values()) <= 6, flagged  # P(Binomial(200, 0.01) > 6) < 0.5 %


def test_sample_mmd_sees_a_shift_that_only_turns_the_residual(
    gaussian_reference: Reference,
) -> None:
    """The residual's direction changes, its length does not: half of each window has its
    off-subspace part rotated onto the residual's first axes. No statistic of the subspace or
    of the residual's length can see it; the probes do."""
    rng = np.random.default_rng(6)
    scale = np.linspace(2, 0.2, 48).astype(F32)
    space = gaussian_reference.space
    hits = 0
    for _ in range(10):
        x = rng.normal(size=(300, 48)).astype(F32) * scale
        f = space.features(x)
        off = (x - space.mean) - f.coords @ space.components
        target = space.probes[:3] / np.linalg.norm(space.probes[:3], axis=1, keepdims=True)
        turned = np.abs(rng.normal(size=(150, 3))).astype(F32) @ target
        turned *= (np.linalg.norm(off[:150], axis=1) / np.linalg.norm(turned, axis=1))[:, None]
        x[:150] += turned - off[:150]
        profile = gaussian_reference.new_profile()
        profile.update(EventBatch.from_vectors(x))
        results = evaluate(profile, gaussian_reference)
        assert not results["pca_residual"].drifted  # the residual's length did not move
        hits += results["sample_mmd"].drifted
    assert hits == 10

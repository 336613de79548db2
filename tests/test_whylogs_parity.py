"""Parity with whylogs 1.6.4 (reference selection and EmbeddingMetric) on ``load_digits``.

The expected numbers are the fixtures in ``tests/fixtures`` (see its README for what each key
means and how they were produced). What is compared is what a user gets: the reference that
``embmon reference build`` writes for the fixtures' input (``load_digits`` saved as ``.npy``,
integer labels), read back with ``Reference.load``. Its centroids are checked against
whylogs' selectors, and its space (centroids, labels, PCA) is the one the EmbeddingMetric
tests profile with. Tolerances follow the README: embmon computes in float32, so values agree
to float32 precision and, the fixtures' margins being far wider than that (9.8e-4 cosine,
0.32 euclidean), every closest label agrees exactly.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
from sklearn.datasets import load_digits

from agent.cli import main as embmon
from sketches.batch import EventBatch
from sketches.geometry import Distance, EmbeddingSpace
from sketches.profile import WindowProfile
from sketches.reference import Reference

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EPS32 = float(np.finfo(np.float32).eps)
# float32 rounding of centroid values up to 16 (half an ulp is 9.5e-7) plus the README's
# float32-vs-float64 PCA difference (4e-6)
CENTROID_ATOL = 1e-5
WHYLOGS_RANKS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
WHYLOGS_KEYS = ("q_01", "q_05", "q_10", "q_25", "median", "q_75", "q_90", "q_95", "q_99")


@functools.cache
def _digits() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    data = load_digits()
    return data.data, data.target


@functools.cache
def _npz(name: str) -> dict[str, Any]:
    with np.load(FIXTURES / name, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


@functools.cache
def _metric_json() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        (FIXTURES / "whylogs_embedding_metric_digits.json").read_text(encoding="utf-8")
    )
    return result


def _build(root: Path, *flags: str) -> Reference:
    """``embmon reference build`` on digits saved as a user saves them (float64 ``.npy``,
    int64 labels), read back from disk. Few calibration rounds: thresholds are not compared."""
    x, y = _digits()
    np.save(root / "digits.npy", x)
    np.save(root / "labels.npy", y)
    args = ["reference", "build", "--input", str(root / "digits.npy"), "--rounds", "2"]
    args += ["--labels", str(root / "labels.npy"), "--out", str(root / "ref"), *flags]
    assert embmon(args) == 0
    return Reference.load(root / "ref")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The default build: ``--method pca-centroids --components 20``, as whylogs' selector."""
    return _build(tmp_path_factory.mktemp("whylogs-parity"), "--method", "pca-centroids")


def _space(built: Reference, distance: Distance) -> EmbeddingSpace:
    """whylogs' EmbeddingConfig on the built reference: its centroids, labels "0".."9"."""
    return EmbeddingSpace(
        built.space.centroids, built.labels, distance, built.space.mean, built.space.components
    )


def _profile(built: Reference, distance: Distance, rows: int) -> WindowProfile:
    x, _ = _digits()
    profile = WindowProfile.empty(_space(built, distance), "whylogs-parity")
    profile.update(EventBatch.from_vectors(x[:rows]))
    return profile


# ---------------------------------------------------------------------------------------------
# reference selection


def test_the_fixtures_are_the_ones_the_readme_describes() -> None:
    pca = _npz("whylogs_pca_centroids_digits.npz")
    assert str(pca["whylogs_version"]) == "1.6.4"
    assert (int(pca["n_samples"]), int(pca["n_features"]), int(pca["pca_n_components"])) == (
        1797,
        64,
        20,
    )
    assert str(pca["pca_svd_solver_resolved"]) == "covariance_eigh"
    # README closed form: each class mean projected onto the affine 20-d PCA subspace
    x, y = _digits()
    mu = x.mean(axis=0)
    v = np.linalg.svd(x - mu, full_matrices=False)[2][:20]
    closed = np.stack([mu + (x[y == label].mean(axis=0) - mu) @ v.T @ v for label in range(10)])
    assert np.allclose(closed, pca["pca_centroids"], rtol=0, atol=1e-9)


def test_the_built_reference_has_whylogs_pca_centroids(built: Reference) -> None:
    # PCACentroidsSelector(n_components=20).calculate_references(X, y) on all 1797 rows
    pca = _npz("whylogs_pca_centroids_digits.npz")
    assert built.method == "pca-centroids"
    assert built.info["rows"]["fit"] == int(pca["n_samples"])
    assert built.labels == tuple(str(label) for label in pca["pca_labels"].tolist())
    assert built.space.n_components == int(pca["pca_n_components"])
    assert built.space.centroids.dtype == np.float32
    assert np.abs(built.space.centroids - pca["pca_centroids"]).max() <= CENTROID_ATOL
    assert np.abs(built.space.centroids - pca["pca_centroids_float32"]).max() <= CENTROID_ATOL
    assert np.abs(built.space.mean - pca["pca_mean"]).max() <= CENTROID_ATOL


def _closed_form(x: npt.NDArray[np.float64], y: npt.NDArray[Any], label: object) -> Any:
    """The README's closed form of a PCACentroidsSelector centroid (20 components)."""
    mu = x.mean(axis=0)
    v = np.linalg.svd(x - mu, full_matrices=False)[2][:20]
    return mu + (x[y == label].mean(axis=0) - mu) @ v.T @ v


def _write_labels(root: Path, form: str, labels: npt.NDArray[np.int64]) -> list[str]:
    """Integer labels in one of the forms the CLI reads; the flags that point at them."""
    x, _ = _digits()
    if form == "npy":
        np.save(root / "labels.npy", labels)
        return ["--input", str(root / "digits.npy"), "--labels", str(root / "labels.npy")]
    if form == "txt":
        (root / "labels.txt").write_text("".join(f"{v}\n" for v in labels.tolist()))
        return ["--input", str(root / "digits.npy"), "--labels", str(root / "labels.txt")]
    events = (
        orjson.dumps({"embedding": row.tolist(), "target": int(label)})
        for row, label in zip(x, labels, strict=True)
    )
    (root / "events.jsonl").write_bytes(b"\n".join(events) + b"\n")
    return ["--input", str(root / "events.jsonl")]


@pytest.mark.parametrize("form", ["npy", "txt", "jsonl"])
def test_integer_labels_keep_numeric_order_through_the_cli(form: str, tmp_path: Path) -> None:
    # PCACentroidsSelector: labels = sorted(np.unique(y)), numeric for int labels: 2 < 10
    x, y = _digits()
    y11 = y.copy()
    y11[:150] = 10
    np.save(tmp_path / "digits.npy", x)
    flags = _write_labels(tmp_path, form, y11)
    assert (
        embmon(["reference", "build", *flags, "--rounds", "2", "--out", str(tmp_path / "r")]) == 0
    )
    ref = Reference.load(tmp_path / "r")
    assert ref.labels == tuple(str(label) for label in sorted(np.unique(y11)))
    assert ref.labels == tuple(str(label) for label in range(11))
    for i in (2, 10):  # each name names its own label's centroid
        expected = _closed_form(x, y11, i)
        assert np.abs(ref.space.centroids[i] - expected).max() <= CENTROID_ATOL


def _inertia(x: npt.NDArray[np.float64], centroids: npt.ArrayLike) -> float:
    c = np.asarray(centroids, dtype=np.float64)
    squared = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
    return float(squared.min(axis=1).sum())


@pytest.mark.parametrize("method", ["kmeans", "pca-kmeans"])
def test_kmeans_references_reach_whylogs_inertia(method: str, tmp_path: Path) -> None:
    # README: KMeans centroids depend on the RNG stream; compare inertia, never rows.
    # whylogs clusters raw vectors: embmon does so for the euclidean distance.
    pca = _npz("whylogs_pca_centroids_digits.npz")
    flags = ["--method", method, "--clusters", "10", "--distance", "euclidean"]
    ref = _build(tmp_path, *flags)
    assert ref.labels == tuple(f"cluster-{i}" for i in range(10))
    x, _ = _digits()
    key = {"kmeans": "kmeans_centroids", "pca-kmeans": "pcakmeans_centroids"}[method]
    expected = _inertia(x, pca[key])
    assert _inertia(x, ref.space.centroids) == pytest.approx(expected, rel=0.01)


# ---------------------------------------------------------------------------------------------
# EmbeddingMetric: distances, closest, per-label distributions


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_distances_and_closest_equal_whylogs_on_the_first_200_rows(
    built: Reference, distance: Distance
) -> None:
    fixture = _npz("whylogs_embedding_metric_digits_distances.npz")
    assert fixture["labels"].tolist() == list(built.labels)
    x, _ = _digits()
    features = _space(built, distance).features(x[:200].astype(np.float32))
    expected = fixture[f"{distance}_distances"]
    got = features.distances.astype(np.float64)
    if distance == "cosine":
        # distances in [0, 2]: float32 dot products over 64 terms, a few ulps of 1
        assert np.abs(got - expected).max() <= 64 * EPS32
    else:
        # float32 dot-product expansion: relative error of a few float32 ulps
        assert np.max(np.abs(got - expected) / expected) <= 64 * EPS32
    assert features.closest.tolist() == fixture[f"{distance}_closest"].tolist()


@pytest.mark.parametrize(
    "run", ["cosine_first200", "euclidean_first200", "cosine_all1797", "euclidean_all1797"]
)
def test_closest_counts_equal_whylogs(built: Reference, run: str) -> None:
    expected = _metric_json()["runs"][run]
    profile = _profile(built, expected["distance"], expected["n_rows"])
    assert profile.count == expected["closest_counts_n"]
    assert profile.closest.counts() == {k: v for k, v in expected["closest_counts"].items() if v}


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_per_label_distance_distributions_equal_whylogs(
    built: Reference, distance: Distance
) -> None:
    run = _metric_json()["runs"][f"{distance}_first200"]
    assert run["exact_quantiles"] is True
    profile = _profile(built, distance, 200)
    quantiles = profile.distance_quantiles(WHYLOGS_RANKS)
    x, _ = _digits()
    distances = _space(built, distance).features(x[:200].astype(np.float32)).distances
    rtol = 64 * EPS32
    for i, label in enumerate(profile.centroid_labels):
        expected = run["per_label"][label]
        column = distances[:, i].astype(np.float64)
        assert expected["n"] == profile.distances.count == 200
        assert column.mean() == pytest.approx(expected["mean"], rel=rtol)
        assert column.std(ddof=1) == pytest.approx(expected["stddev"], rel=rtol)
        assert column.min() == pytest.approx(expected["min"], rel=rtol, abs=rtol)
        assert column.max() == pytest.approx(expected["max"], rel=rtol)
        # whylogs' exact-mode rule sorted[min(floor(q·n), n−1)] is the one embmon's read-out uses
        wanted = [expected[key] for key in WHYLOGS_KEYS]
        assert quantiles[label] == pytest.approx(wanted, rel=rtol, abs=rtol)


def test_a_zero_vector_is_at_cosine_distance_one_and_closest_to_label_0(built: Reference) -> None:
    edge = _metric_json()["edge_cases"]["zero_vector_cosine"]
    space = _space(built, "cosine")
    features = space.features(np.zeros((1, 64), dtype=np.float32))
    assert features.distances.tolist() == [[edge["distance_to_every_reference"]] * 10]
    assert space.labels[int(features.closest[0])] == edge["closest"]


def test_a_zero_vector_is_closest_to_the_smallest_centroid_in_euclidean(built: Reference) -> None:
    expected = _metric_json()["edge_cases"]["zero_vector_euclidean_closest"]
    space = _space(built, "euclidean")
    features = space.features(np.zeros((1, 64), dtype=np.float32))
    assert space.labels[int(features.closest[0])] == expected
    norms = np.linalg.norm(space.centroids.astype(np.float64), axis=1)
    assert features.distances[0] == pytest.approx(norms, rel=64 * EPS32)


def test_a_row_with_nan_is_counted_invalid_where_whylogs_raises(built: Reference) -> None:
    # whylogs: ValueError("Input contains NaN.") and nothing counted. embmon, by design
    # (STYLE: bad rows are counted, not raised), counts the row as invalid and keeps the rest.
    assert _metric_json()["edge_cases"]["row_with_nan"].startswith("ValueError")
    x, _ = _digits()
    rows = x[:3].astype(np.float32)
    rows[1, 5] = math.nan
    profile = WindowProfile.empty(_space(built, "cosine"), "v")
    profile.update(EventBatch.from_vectors(rows))
    assert (profile.count, profile.invalid, profile.closest.total) == (2, 1, 2)

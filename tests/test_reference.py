"""Building, saving and loading references (``sketches.reference``) on ``load_digits``.

These tests check the mechanics (methods, persistence, versioning, errors), so the
calibration is kept small (few rounds, two window sizes); calibration quality is the subject
of test_false_alarms.py and test_drift_golden.py.
"""

from __future__ import annotations

import functools
import io
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from sketches.batch import EventBatch
from sketches.drift import evaluate
from sketches.errors import EmbmonError, FormatError, ReferenceError_
from sketches.geometry import Distance, SpaceFit, cross_fitted_features
from sketches.profile import WindowProfile
from sketches.reference import METHODS, Method, Reference, build_reference
from sketches.sample import REFERENCE_CAPACITY
from tests.sketch_helpers import digits

QUICK: dict[str, Any] = {"rounds": 30, "sizes": (10, 100), "alpha": 0.05}
DISTANCES: tuple[Distance, ...] = ("cosine", "euclidean")


def _manual_centroids() -> tuple[npt.NDArray[np.float32], list[str]]:
    d = digits()
    names = ["zero", "one", "two"]
    rows = [d.x[d.y == str(i)].mean(axis=0) for i in range(3)]
    return np.stack(rows).astype(np.float32), names


@functools.cache
def _built(method: Method, distance: Distance) -> Reference:
    d = digits()
    extra: dict[str, Any] = {}
    if method == "manual":
        extra["centroids"], extra["centroid_labels"] = _manual_centroids()
    return build_reference(
        EventBatch.from_vectors(d.x),
        d.y,
        method=method,
        distance=distance,
        clusters=10,
        **QUICK,
        **extra,
    )


BUILDS = pytest.mark.parametrize(
    ("method", "distance"), [(m, dist) for m in METHODS for dist in DISTANCES]
)


@BUILDS
def test_build_with_each_method_and_distance(method: Method, distance: Distance) -> None:
    ref = _built(method, distance)
    d = digits()
    expected_labels = {
        "pca-centroids": tuple(str(i) for i in range(10)),
        "kmeans": tuple(f"cluster-{i}" for i in range(10)),
        "pca-kmeans": tuple(f"cluster-{i}" for i in range(10)),
        "manual": ("zero", "one", "two"),
    }[method]
    assert ref.labels == expected_labels
    assert (ref.dim, ref.distance, ref.method, ref.statistic) == (64, distance, method, "hellinger")
    assert ref.space.centroids.shape == (len(expected_labels), 64)
    assert np.isfinite(ref.space.centroids).all()
    assert ref.space.n_components == 20
    components = ref.space.components.astype(np.float64)
    assert np.allclose(components @ components.T, np.eye(20), atol=1e-5)
    assert ref.version.startswith("sha256:") and len(ref.version) == len("sha256:") + 32
    rows = ref.info["rows"]
    # fitted on every row; every row scored out of fold, then profile or holdout
    assert rows["fit"] == rows["profile"] + rows["holdout"] == d.x.shape[0]
    assert rows["folds"] == 5
    assert ref.profile.count == rows["profile"]
    # the kernel test's baseline holds every row, held-out ones too (distinct rows, one each)
    assert len(ref.profile.sample) == len(np.unique(d.x, axis=0)) <= REFERENCE_CAPACITY
    assert ref.profile.reference_version == ref.version
    assert ref.calibration.sizes == (10, 100)
    assert ref.calibration.rows == rows["holdout"]
    assert set(ref.calibration.thresholds) == {
        "closest_centroid",
        "centroid_distance",
        "pca_residual",
        "centroid_shift",
        "sample_mmd",
        "out_of_range",
    }
    # the training range is the span of the rows the space was fitted on
    assert np.array_equal(ref.space.low, d.x.min(axis=0))
    assert np.array_equal(ref.space.high, d.x.max(axis=0))
    assert ref.classification_f1 is None  # no predictions/targets given


@pytest.mark.parametrize("distance", DISTANCES)
def test_pca_centroids_lie_in_the_reference_subspace(distance: Distance) -> None:
    space = _built("pca-centroids", distance).space
    features = space.features(space.centroids)
    norms = np.linalg.norm(space.centroids - space.mean, axis=1)
    # the residual is sqrt(|x − mean|² − |coords|²) in float32: near zero its rounding is
    # about sqrt(d · eps32) · |x − mean|, not eps32 · |x − mean|
    bound = np.sqrt(2 * 4 * 64 * float(np.finfo(np.float32).eps)) * norms
    assert np.all(features.residual <= bound)


def test_manual_centroids_are_kept_as_given() -> None:
    centroids, names = _manual_centroids()
    ref = _built("manual", "cosine")
    assert np.array_equal(ref.space.centroids, centroids)
    assert list(ref.labels) == names


def test_kmeans_on_cosine_clusters_directions() -> None:
    # cosine k-means runs on unit vectors: the centroids have (about) unit norm
    norms = np.linalg.norm(_built("kmeans", "cosine").space.centroids, axis=1)
    assert np.allclose(norms, 1.0, atol=0.15)
    assert np.linalg.norm(_built("kmeans", "euclidean").space.centroids, axis=1).min() > 10


@BUILDS
def test_save_and_load_round_trip(method: Method, distance: Distance, tmp_path: Path) -> None:
    ref = _built(method, distance)
    ref.save(tmp_path / "ref")
    assert {p.name for p in (tmp_path / "ref").iterdir()} == {
        "reference.json",
        "arrays.npz",
        "profile.bin",
    }
    back = Reference.load(tmp_path / "ref")
    assert back.version == ref.version
    assert back.calibration == ref.calibration
    assert back.profile.to_bytes() == ref.profile.to_bytes()
    assert (back.method, back.statistic, back.labels, back.distance, back.dim) == (
        ref.method,
        ref.statistic,
        ref.labels,
        ref.distance,
        ref.dim,
    )
    for name in ("centroids", "mean", "components"):
        assert np.array_equal(getattr(back.space, name), getattr(ref.space, name))
    assert back.info == ref.info
    # the loaded reference judges a window exactly as the original does
    d = digits()
    window = back.new_profile()
    window.update(EventBatch.from_vectors(d.x[d.test[:150]]))
    assert evaluate(window, back) == evaluate(window, ref)


def _small_build(seed: int = 0, **overrides: Any) -> Reference:
    """Every sketch exact (profile rows and window sizes under k = 200): deterministic."""
    d = digits()
    rows = d.build[:360]
    kwargs: dict[str, Any] = {**QUICK, "sizes": (10, 30, 100), "seed": seed, **overrides}
    return build_reference(EventBatch.from_vectors(d.x[rows]), d.y[rows], **kwargs)


def test_the_version_is_deterministic_for_a_seed_when_sketches_are_exact() -> None:
    first, second = _small_build(), _small_build()
    assert first.profile.count <= 200
    assert first.version == second.version
    assert first.calibration == second.calibration


def test_the_version_changes_with_the_seed_and_the_settings() -> None:
    versions = {
        _small_build().version,
        _small_build(seed=1).version,
        _small_build(alpha=0.01).version,
        _small_build(distance="euclidean").version,
        _small_build(statistic="psi").version,
    }
    assert len(versions) == 5


def test_a_full_build_is_reproducible_up_to_kll_compaction() -> None:
    """DataSketches KLL compaction draws from an unseeded generator (by design,
    apache/datasketches-cpp#361), so beyond k = 200 values per sketch two builds may differ in
    their quantile sketches, hence thresholds and version. What a seed fixes is exact."""
    d = digits()
    a, b = (
        build_reference(EventBatch.from_vectors(d.x), d.y, rounds=30, sizes=(10, 300))
        for _ in range(2)
    )
    assert a.labels == b.labels
    np.testing.assert_array_equal(a.space.centroids, b.space.centroids)
    np.testing.assert_array_equal(a.space.components, b.space.components)
    assert a.profile.count == b.profile.count
    assert a.profile.closest == b.profile.closest
    assert a.profile.shift == b.profile.shift
    assert a.calibration.thresholds.keys() == b.calibration.thresholds.keys()
    for metric, values in a.calibration.thresholds.items():
        # the exact statistics agree; the KLL-based ones within a few rank errors
        np.testing.assert_allclose(values, b.calibration.thresholds[metric], rtol=0.25, atol=0.02)


# ---------------------------------------------------------------------------------------------
# cross-fitting: fitted on every row, profiled and calibrated as if the rows were new


def _folds(rows: int, folds: int = 5) -> npt.NDArray[np.intp]:
    return np.random.default_rng(1).permutation(rows) % folds


def test_cross_fitted_rows_sit_where_fresh_rows_do_not_where_fitted_rows_do() -> None:
    """The pitfall of DESIGN.md, measured: scored by the space fitted on them, the build rows
    sit closer to the PCA subspace than fresh rows; scored out of fold, they sit as far."""
    d = digits()
    x, y = d.x[d.build], d.y[d.build]
    recipe = SpaceFit("pca-centroids", tuple(str(i) for i in range(10)))
    space = recipe.fit(x, y)
    fitted = float(space.features(x).residual.mean())
    fresh = float(space.features(d.x[d.test]).residual.mean())
    crossed = cross_fitted_features(recipe, space, x, y, _folds(len(x)))
    out_of_fold = float(crossed.residual.mean())
    assert fitted < fresh - 0.2  # 10.92 vs 11.26
    assert abs(out_of_fold - fresh) < 0.5 * (fresh - fitted)  # 11.30
    assert fitted < out_of_fold


@pytest.mark.parametrize(
    ("method", "distance"),
    [("pca-centroids", "cosine"), ("kmeans", "cosine"), ("pca-kmeans", "euclidean")],
)
def test_fold_centroids_keep_the_names_of_the_final_ones(
    method: Method, distance: Distance
) -> None:
    """Cluster i of every fold is cluster i of the final space (k-means starts from it), so
    out-of-fold closest centroids mostly agree with the final space's (about 98 % here)."""
    d = digits()
    x = d.x[d.build]
    labels = d.y[d.build] if method == "pca-centroids" else None
    names = tuple(str(i) if labels is not None else f"cluster-{i}" for i in range(10))
    recipe = SpaceFit(method, names, distance=distance)
    space = recipe.fit(x, labels)
    crossed = cross_fitted_features(recipe, space, x, labels, _folds(len(x)))
    assert np.mean(crossed.closest == space.features(x).closest) > 0.95
    # coordinates come back in the final basis: close to the final space's own
    own = space.features(x).coords
    assert np.median(np.linalg.norm(crossed.coords - own, axis=1)) < 0.1 * np.median(
        np.linalg.norm(own, axis=1)
    )


def test_the_reference_profile_is_scored_out_of_fold() -> None:
    """Exact sketches (under k = 200 rows): the profile's residuals are the larger
    out-of-fold ones, not those of the final space, which saw every row."""
    ref = _small_build()
    d = digits()
    rows = d.build[:360]
    values, _ = ref.profile.residual.sorted_view(0)
    assert ref.profile.count <= 200 and values.size == ref.profile.count  # every value kept
    fitted = float(ref.space.features(d.x[rows]).residual.mean())
    recipe = SpaceFit("pca-centroids", ref.labels)
    crossed = cross_fitted_features(recipe, ref.space, d.x[rows], d.y[rows], _folds(rows.size))
    assert float(values.mean()) > 0.5 * (fitted + float(crossed.residual.mean()))


def test_rows_are_all_fitted_and_split_into_profile_and_holdout_halves() -> None:
    ref = _small_build()
    rows = ref.info["rows"]
    assert (rows["fit"], rows["profile"] + rows["holdout"], rows["folds"]) == (360, 360, 5)
    assert abs(rows["profile"] - rows["holdout"]) <= 10  # half each, rounded per label
    assert ref.calibration.rows == rows["holdout"]


def test_separate_fit_rows_are_not_cross_fitted() -> None:
    d = digits()
    fit, rows = d.build[:600], d.build[600:]
    ref = build_reference(
        EventBatch.from_vectors(d.x[rows]),
        d.y[rows],
        fit_rows=EventBatch.from_vectors(d.x[fit]),
        fit_labels=d.y[fit],
        **QUICK,
    )
    assert ref.info["rows"]["fit"] == 600 and ref.info["rows"]["folds"] == 0
    assert ref.info["rows"]["profile"] + ref.info["rows"]["holdout"] == rows.size
    assert ref.profile.count == ref.info["rows"]["profile"]


# ---------------------------------------------------------------------------------------------
# label order


@pytest.mark.parametrize("form", ["int", "numpy", "str"])
def test_integer_labels_keep_numeric_order(form: str) -> None:
    d = digits()
    rows = d.build[:360]
    numbers = d.y[rows].astype(np.int64)
    numbers[:30] = 10
    labels: Any = {
        "int": numbers.tolist(),
        "numpy": numbers,
        "str": numbers.astype(str),
    }[form]
    ref = build_reference(EventBatch.from_vectors(d.x[rows]), labels, **QUICK)
    assert ref.labels == tuple(str(i) for i in range(11))
    ten = ref.space.centroids[10] - ref.space.mean
    own = d.x[rows][numbers == 10].mean(axis=0) - ref.space.mean
    # the centroid named "10" is label 10's mean projected onto the subspace
    assert np.allclose(ten, own @ ref.space.components.T @ ref.space.components, atol=1e-3)


def test_mixed_labels_put_numbers_first_in_numeric_order_then_names() -> None:
    d = digits()
    rows = d.build[:360]
    names = np.array(["cat", "-1", "10", "2.5", "Dog", "2", "0", "b", "100", "1e1"])
    ref = build_reference(EventBatch.from_vectors(d.x[rows]), names[d.y[rows].astype(int)], **QUICK)
    assert ref.labels == ("-1", "0", "2", "2.5", "10", "1e1", "100", "Dog", "b", "cat")


# ---------------------------------------------------------------------------------------------
# tampering and broken files


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return _built("pca-centroids", "cosine").save(tmp_path / "ref")


def _rewrite_npz(path: Path, **changes: npt.NDArray[Any]) -> None:
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays.update(changes)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def test_a_changed_centroid_fails_to_load(saved: Path) -> None:
    with np.load(saved / "arrays.npz") as archive:
        centroids = archive["centroids"].copy()
    centroids[3, 17] += 0.5
    _rewrite_npz(saved / "arrays.npz", centroids=centroids)
    with pytest.raises(FormatError, match="corrupt"):
        Reference.load(saved)


def test_changed_pca_components_fail_to_load(saved: Path) -> None:
    with np.load(saved / "arrays.npz") as archive:
        components = archive["components"][::-1].copy()  # same subspace, another order
    _rewrite_npz(saved / "arrays.npz", components=components)
    with pytest.raises(FormatError, match="corrupt"):
        Reference.load(saved)


def test_a_changed_profile_fails_to_load(saved: Path) -> None:
    profile = WindowProfile.from_bytes((saved / "profile.bin").read_bytes())
    profile.count += 1
    (saved / "profile.bin").write_bytes(profile.to_bytes())
    with pytest.raises(FormatError, match="corrupt"):
        Reference.load(saved)


def test_a_profile_of_other_traffic_fails_to_load(saved: Path) -> None:
    ref = _built("pca-centroids", "cosine")
    d = digits()
    other = WindowProfile.empty(ref.space, ref.version)
    other.update(EventBatch.from_vectors(d.x[d.test[:300]]))
    (saved / "profile.bin").write_bytes(other.to_bytes())
    with pytest.raises(FormatError, match="corrupt"):
        Reference.load(saved)


def test_changed_thresholds_fail_to_load(saved: Path) -> None:
    meta = orjson.loads((saved / "reference.json").read_bytes())
    meta["calibration"]["thresholds"]["closest_centroid"][0] *= 2
    (saved / "reference.json").write_bytes(orjson.dumps(meta))
    with pytest.raises(FormatError, match="corrupt"):
        Reference.load(saved)


def test_another_format_fails_to_load(saved: Path) -> None:
    meta = orjson.loads((saved / "reference.json").read_bytes())
    meta["format"] = "embmon-reference/99"
    (saved / "reference.json").write_bytes(orjson.dumps(meta))
    with pytest.raises(FormatError, match="embmon-reference/1"):
        Reference.load(saved)


@pytest.mark.parametrize("name", ["reference.json", "arrays.npz", "profile.bin"])
def test_a_missing_file_is_a_reference_error(saved: Path, name: str) -> None:
    (saved / name).unlink()
    with pytest.raises(ReferenceError_, match="embmon reference build"):
        Reference.load(saved)


def test_a_missing_directory_is_a_reference_error(tmp_path: Path) -> None:
    with pytest.raises(ReferenceError_, match="cannot read a reference"):
        Reference.load(tmp_path / "nowhere")


def test_a_truncated_profile_fails_to_load(saved: Path) -> None:
    raw = (saved / "profile.bin").read_bytes()
    (saved / "profile.bin").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError):
        Reference.load(saved)


def test_a_tampered_version_inside_profile_bin_fails_to_load(saved: Path) -> None:
    ref = _built("pca-centroids", "cosine")
    raw = (saved / "profile.bin").read_bytes()
    forged = "sha256:" + "0" * 32
    (saved / "profile.bin").write_bytes(raw.replace(ref.version.encode(), forged.encode()))
    with pytest.raises(FormatError):
        loaded = Reference.load(saved)
        assert loaded.version == ref.version, f"loaded as {loaded.version}"


def test_flipped_bytes_in_arrays_npz_raise_an_embmon_error(saved: Path, tmp_path: Path) -> None:
    raw = (saved / "arrays.npz").read_bytes()
    original = _built("pca-centroids", "cosine")
    leaks: dict[str, int] = {}
    for position in range(0, len(raw), 29):
        target = tmp_path / f"flip{position}"
        shutil.copytree(saved, target)
        flipped = bytearray(raw)
        flipped[position] ^= 0x55
        (target / "arrays.npz").write_bytes(bytes(flipped))
        try:
            loaded = Reference.load(target)
        except EmbmonError:
            continue
        except Exception as exc:  # what leaks is the finding
            leaks[type(exc).__name__] = leaks.get(type(exc).__name__, 0) + 1
            continue
        # a flip in zip metadata may be harmless, but then the content must be unchanged
        assert np.array_equal(loaded.space.centroids, original.space.centroids)
    assert leaks == {}, f"corrupted arrays.npz raised {leaks}"


def test_a_reference_saved_after_reading_its_profile_loads(tmp_path: Path) -> None:
    ref = _small_build(seed=5)
    ref.profile.distance_quantiles((0.5,))
    ref.save(tmp_path / "ref")
    assert Reference.load(tmp_path / "ref").version == ref.version


# ---------------------------------------------------------------------------------------------
# references with text, predictions and targets


def _with_columns(rows: npt.NDArray[np.intp]) -> EventBatch:
    """Digits as events that also carry tokens, predictions (some wrong) and targets."""
    d = digits()
    rng = np.random.default_rng(3)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    tokens = [
        [words[int(label)], "digit", *rng.choice(["ink", "pen", "scan"], 2).tolist()]
        for label in d.y[rows]
    ]
    targets = [str(label) for label in d.y[rows]]
    predictions = [t if rng.random() < 0.8 else str(rng.integers(10)) for t in targets]
    return EventBatch(
        d.x[rows], np.zeros(rows.size), tokens=tokens, predictions=predictions, targets=targets
    )


@functools.cache
def _built_with_columns() -> Reference:
    d = digits()
    return build_reference(_with_columns(d.build), d.y[d.build], **QUICK)


def test_a_reference_with_text_and_predictions_round_trips(tmp_path: Path) -> None:
    ref = _built_with_columns()
    assert ref.classification_f1 is not None and 0.6 < ref.classification_f1 < 0.95
    assert ref.profile.text.documents == ref.profile.count
    assert {"doc_length", "term_length", "frequent_terms", "prediction"} <= set(
        ref.calibration.thresholds
    )
    ref.save(tmp_path / "ref")
    back = Reference.load(tmp_path / "ref")
    assert back.version == ref.version
    assert back.classification_f1 == ref.classification_f1
    meta = orjson.loads((tmp_path / "ref" / "reference.json").read_bytes())
    assert meta["classification_f1"] == ref.classification_f1
    d = digits()
    window = back.new_profile()
    window.update(_with_columns(d.test[:200]))
    results = evaluate(window, back)
    assert {"frequent_terms", "prediction", "doc_length"} <= set(results)
    assert results == evaluate(window, ref)


def test_a_loaded_reference_with_text_can_be_saved_again(tmp_path: Path) -> None:
    _built_with_columns().save(tmp_path / "one")
    Reference.load(tmp_path / "one").save(tmp_path / "two")
    assert Reference.load(tmp_path / "two").version == _built_with_columns().version


def test_numpy_string_predictions_can_be_serialised() -> None:
    d = digits()
    labels = d.y[:50]  # numpy str_ values, as list(array) gives them
    profile = WindowProfile.empty(_built("pca-centroids", "cosine").space, "v")
    profile.update(EventBatch(d.x[:50], np.zeros(50), predictions=list(labels)))
    assert WindowProfile.from_bytes(profile.to_bytes()).predictions == profile.predictions


# ---------------------------------------------------------------------------------------------
# what cannot be built


def _batch(rows: int) -> EventBatch:
    return EventBatch.from_vectors(digits().x[:rows])


def test_too_few_rows_is_a_clear_reference_error() -> None:
    with pytest.raises(ReferenceError_, match=r"30 rows are too few.*at least 20"):
        build_reference(_batch(30), digits().y[:30], **QUICK)


def test_pca_centroids_without_labels_is_a_clear_reference_error() -> None:
    with pytest.raises(ReferenceError_, match="pca-centroids needs labels"):
        build_reference(_batch(300), None, method="pca-centroids", **QUICK)


def test_labels_that_do_not_match_the_rows_are_a_reference_error() -> None:
    with pytest.raises(ReferenceError_, match="300 vectors but 299 labels"):
        build_reference(_batch(300), digits().y[:299], **QUICK)


def test_manual_without_centroids_is_a_clear_reference_error() -> None:
    with pytest.raises(ReferenceError_, match="manual needs a centroids matrix"):
        build_reference(_batch(300), None, method="manual", **QUICK)


def test_an_unknown_method_is_a_reference_error() -> None:
    with pytest.raises(ReferenceError_, match="unknown method 'tsne'"):
        build_reference(_batch(300), digits().y[:300], method=cast(Method, "tsne"), **QUICK)


def test_non_finite_vectors_are_a_reference_error() -> None:
    batch = EventBatch.from_vectors(np.where(np.eye(300, 64) > 0, np.nan, digits().x[:300]))
    with pytest.raises(ReferenceError_, match="NaN or Inf"):
        build_reference(batch, digits().y[:300], **QUICK)


def test_more_clusters_than_rows_is_a_reference_error() -> None:
    with pytest.raises(ReferenceError_, match="cannot find 500 clusters"):
        build_reference(_batch(300), None, method="kmeans", clusters=500, **QUICK)


def test_too_few_folds_and_empty_shares_are_reference_errors() -> None:
    with pytest.raises(ReferenceError_, match="at least 2 folds"):
        build_reference(_batch(300), digits().y[:300], folds=1, **QUICK)
    with pytest.raises(ReferenceError_, match="must both be positive"):
        build_reference(_batch(300), digits().y[:300], holdout=0.0, **QUICK)


def test_a_label_with_a_single_row_is_a_clear_reference_error() -> None:
    labels = digits().y[:300].copy()
    labels[7] = "lonely"
    with pytest.raises(ReferenceError_, match=r"label 'lonely'.*at least 2 rows"):
        build_reference(_batch(300), labels, **QUICK)


def test_unlabelled_kmeans_builds() -> None:
    ref = build_reference(_batch(300), None, method="kmeans", clusters=4, **QUICK)
    assert ref.labels == ("cluster-0", "cluster-1", "cluster-2", "cluster-3")

"""Every statistic of ``sketches/`` against an independent scipy / numpy / scikit-learn value.

Sketches are fed fewer than ``k = 200`` values where a statistic should be exact, so exact
equality (to float rounding) is expected there; beyond ``k`` the KLL bound applies.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import euclidean, jensenshannon
from scipy.special import rel_entr
from scipy.stats import ks_2samp
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)
from sklearn.metrics.pairwise import cosine_distances, euclidean_distances

from sketches.batch import EventBatch
from sketches.calibration import Calibration, calibrate
from sketches.counts import ConfusionMatrix
from sketches.drift import CategoricalStatistic, drift_scores, hellinger, jensen_shannon, psi
from sketches.geometry import Distance, EmbeddingSpace
from sketches.profile import WindowProfile
from sketches.quantiles import QuantileSketch, hellinger_on_sketches, ks_on_sketches
from sketches.shift import CentroidSums
from sketches.text import TextSketch
from tests.sketch_helpers import exact_cdf, exclusive_quantiles

SETTINGS = settings(max_examples=50, deadline=None)
EPS32 = float(np.finfo(np.float32).eps)
F64 = npt.NDArray[np.float64]


def _ks(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """scipy's two-sample KS statistic D (the p-value method does not change D)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # p-values of tiny samples
        return float(ks_2samp(a, b, method="asymp").statistic)


def _sketch(values: npt.ArrayLike) -> QuantileSketch:
    sketch = QuantileSketch(1)
    sketch.update(np.asarray(values, dtype=np.float64))
    return sketch


def _f32(values: npt.ArrayLike) -> F64:
    """What a KLL float sketch stores: the values rounded to float32."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


# small samples with ties, as exact-mode sketches see them
_SAMPLE = st.one_of(
    st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=199),
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=199),
)

# ---------------------------------------------------------------------------------------------
# quantile sketches


@SETTINGS
@given(values=_SAMPLE, ranks=st.lists(st.floats(0, 1), min_size=1, max_size=10))
def test_exact_mode_quantiles_and_cdf_match_numpy(values: list[float], ranks: list[float]) -> None:
    sketch = _sketch(values)
    assert np.array_equal(sketch.quantiles(0, ranks), exclusive_quantiles(_f32(values), ranks))
    points = np.unique(_f32(values))
    assert np.allclose(sketch.cdf(0, points), exact_cdf(_f32(values), points), rtol=0, atol=1e-12)


def test_quantiles_of_an_empty_sketch_are_nan_and_its_cdf_raises() -> None:
    assert np.isnan(QuantileSketch(1).quantiles(0, [0.5])).all()
    with pytest.raises(ValueError, match="empty"):
        QuantileSketch(1).cdf(0, [0.0])
    with pytest.raises(ValueError, match="empty"):
        ks_on_sketches(QuantileSketch(1), _sketch([1.0]))


@SETTINGS
@given(a=_SAMPLE, b=_SAMPLE)
def test_ks_on_exact_sketches_equals_scipy(a: list[float], b: list[float]) -> None:
    expected = _ks(_f32(a), _f32(b))
    assert ks_on_sketches(_sketch(a), _sketch(b)) == pytest.approx(expected, abs=1e-12)
    assert ks_on_sketches(_sketch(b), _sketch(a)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("sizes", [(5_000, 3_000), (250, 20_000)])
def test_ks_on_estimating_sketches_is_within_the_two_rank_errors(
    shift: float, sizes: tuple[int, int]
) -> None:
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=sizes[0]), rng.normal(shift, 1.0, size=sizes[1])
    sa, sb = _sketch(a), _sketch(b)
    exact = _ks(_f32(a), _f32(b))
    assert abs(ks_on_sketches(sa, sb) - exact) <= sa.rank_error + sb.rank_error


def test_ks_reads_every_column() -> None:
    sketch_a, sketch_b = QuantileSketch(2), QuantileSketch(2)
    sketch_a.update(np.array([[0.0, 0.0], [1.0, 5.0], [2.0, 9.0]]))
    sketch_b.update(np.array([[0.0, 7.0], [1.0, 8.0], [2.0, 9.0]]))
    assert ks_on_sketches(sketch_a, sketch_b, 0) == 0.0
    assert ks_on_sketches(sketch_a, sketch_b, 1) == pytest.approx(
        _ks([0.0, 5.0, 9.0], [7.0, 8.0, 9.0])
    )


def _hellinger_numpy(window: F64, reference: F64, bins: int) -> float:
    ranks = np.linspace(0, 1, bins + 1)[1:-1]
    edges = np.unique(exclusive_quantiles(reference, ranks.tolist()))
    p = np.diff(np.concatenate(([0.0], exact_cdf(window, edges), [1.0])))
    q = np.diff(np.concatenate(([0.0], exact_cdf(reference, edges), [1.0])))
    # Hellinger = Euclidean distance of the square roots / sqrt 2
    return float(euclidean(np.sqrt(p), np.sqrt(q)) / math.sqrt(2))


@SETTINGS
@given(a=_SAMPLE, b=_SAMPLE, bins=st.integers(2, 30))
def test_hellinger_on_exact_sketches_equals_numpy(
    a: list[float], b: list[float], bins: int
) -> None:
    got = hellinger_on_sketches(_sketch(a), _sketch(b), bins=bins)
    expected = _hellinger_numpy(_f32(a), _f32(b), bins)
    # compared squared: H = sqrt(1 − BC) turns a 1e-16 rounding of BC into 1e-8 near H = 0
    assert got**2 == pytest.approx(expected**2, abs=1e-12)
    assert 0.0 <= got <= 1.0


# ---------------------------------------------------------------------------------------------
# categorical statistics

_MIX = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.floats(0, 1e6), min_size=1
).filter(lambda d: sum(d.values()) > 0)


def _aligned(p: dict[str, float], q: dict[str, float]) -> tuple[F64, F64]:
    keys = sorted(set(p) | set(q))
    a = np.array([p.get(k, 0.0) for k in keys])
    b = np.array([q.get(k, 0.0) for k in keys])
    return a / a.sum(), b / b.sum()


@SETTINGS
@given(p=_MIX, q=_MIX)
def test_hellinger_equals_the_scaled_euclidean_distance_of_square_roots(
    p: dict[str, float], q: dict[str, float]
) -> None:
    a, b = _aligned(p, q)
    expected = euclidean(np.sqrt(a), np.sqrt(b)) / math.sqrt(2)
    assert hellinger(p, q) == pytest.approx(expected, abs=1e-7)
    assert hellinger(p, q) == pytest.approx(hellinger(q, p), abs=1e-12)


@SETTINGS
@given(p=_MIX, q=_MIX)
def test_psi_equals_the_symmetrised_kl_with_floored_cells(
    p: dict[str, float], q: dict[str, float]
) -> None:
    a, b = _aligned(p, q)
    a, b = np.maximum(a, 1e-4), np.maximum(b, 1e-4)
    expected = float(np.sum(rel_entr(a, b)) + np.sum(rel_entr(b, a)))
    assert psi(p, q) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert psi(p, q) >= 0


@SETTINGS
@given(p=_MIX, q=_MIX)
def test_jensen_shannon_equals_scipy_base_2(p: dict[str, float], q: dict[str, float]) -> None:
    a, b = _aligned(p, q)
    expected = float(jensenshannon(a, b, base=2))
    assert jensen_shannon(p, q) == pytest.approx(expected, abs=1e-7)
    assert 0.0 <= jensen_shannon(p, q) <= 1.0


@pytest.mark.parametrize(
    ("p", "q", "h", "js"),
    [
        ({"a": 1}, {"a": 5}, 0.0, 0.0),  # same mix, any scale
        ({"a": 1}, {"b": 1}, 1.0, 1.0),  # disjoint
        ({"a": 1, "b": 1}, {"a": 1, "b": 0}, math.sqrt(1 - math.sqrt(0.5)), None),
    ],
)
def test_categorical_statistics_at_known_points(
    p: dict[str, float], q: dict[str, float], h: float, js: float | None
) -> None:
    assert hellinger(p, q) == pytest.approx(h, abs=1e-7)
    if js is not None:
        assert jensen_shannon(p, q) == pytest.approx(js, abs=1e-7)


def test_psi_of_disjoint_mixes_is_finite() -> None:
    value = psi({"a": 1}, {"b": 1})
    assert value == pytest.approx(2 * (1 - 1e-4) * math.log(1 / 1e-4))


# ---------------------------------------------------------------------------------------------
# confusion matrix

_PAIRS = st.lists(
    st.tuples(st.none() | st.sampled_from("abcd"), st.none() | st.sampled_from("abcde")),
    max_size=120,
)


@SETTINGS
@given(pairs=_PAIRS)
def test_confusion_matrix_equals_sklearn(pairs: list[tuple[str | None, str | None]]) -> None:
    matrix = ConfusionMatrix()
    matrix.update([t for t, _ in pairs], [p for _, p in pairs])
    complete = [(t, p) for t, p in pairs if t is not None and p is not None]
    if not complete:
        assert (matrix.total, matrix.accuracy(), matrix.f1_macro()) == (0, 0.0, 0.0)
        assert (matrix.precision_macro(), matrix.recall_macro(), matrix.per_class()) == (
            0.0,
            0.0,
            {},
        )
        return
    y_true = [t for t, _ in complete]
    y_pred = [p for _, p in complete]
    labels = sorted(set(y_true) | set(y_pred))
    macro: dict[str, Any] = {"labels": labels, "average": "macro", "zero_division": 0}
    assert matrix.classes() == labels
    assert matrix.total == len(complete)
    assert matrix.accuracy() == pytest.approx(accuracy_score(y_true, y_pred))
    assert matrix.precision_macro() == pytest.approx(precision_score(y_true, y_pred, **macro))
    assert matrix.recall_macro() == pytest.approx(recall_score(y_true, y_pred, **macro))
    assert matrix.f1_macro() == pytest.approx(f1_score(y_true, y_pred, **macro))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    rows = matrix.per_class()
    for i, label in enumerate(labels):
        assert rows[label]["precision"] == pytest.approx(precision[i])
        assert rows[label]["recall"] == pytest.approx(recall[i])
        assert rows[label]["f1"] == pytest.approx(f1[i])
        assert rows[label]["support"] == support[i]


# ---------------------------------------------------------------------------------------------
# centroid sums


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 400), offset=st.floats(-50, 50))
def test_centroid_sums_means_and_spread_equal_numpy(seed: int, n: int, offset: float) -> None:
    rng = np.random.default_rng(seed)
    closest = rng.integers(0, 4, size=n)
    coords = (rng.normal(size=(n, 3)) * rng.uniform(0.1, 5) + offset + closest[:, None]).astype(
        np.float32
    )
    sums = CentroidSums(4, 3)
    half = n // 2
    sums.update(closest[:half], coords[:half])
    sums.update(closest[half:], coords[half:])
    wide = coords.astype(np.float64)
    means = np.full((4, 3), np.nan)
    within = 0.0
    for c in range(4):
        rows = wide[closest == c]
        if rows.size:
            means[c] = rows.mean(axis=0)
            within += float(np.sum((rows - means[c]) ** 2))
    assert np.allclose(sums.means(), means, rtol=1e-12, atol=1e-12, equal_nan=True)
    # the spread comes from sum-of-squares (squares taken in float32): exact up to float32
    # rounding relative to the squared norms involved
    scale = float(np.sum(wide**2)) / n
    expected = math.sqrt(within / n)
    assert sums.spread() ** 2 == pytest.approx(expected**2, abs=16 * EPS32 * scale)


def test_centroid_sums_of_nothing() -> None:
    empty = CentroidSums(2, 3)
    assert math.isnan(empty.spread())
    assert np.isnan(empty.means()).all()


# ---------------------------------------------------------------------------------------------
# embedding space features


def _space(distance: Distance, seed: int = 3) -> EmbeddingSpace:
    rng = np.random.default_rng(seed)
    dim, k = 16, 4
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return EmbeddingSpace(
        centroids=rng.normal(2.0, 3.0, size=(5, dim)).astype(np.float32),
        labels=("v", "w", "x", "y", "z"),
        distance=distance,
        mean=rng.normal(1.0, 1.0, size=dim).astype(np.float32),
        components=basis[:k].astype(np.float32),
    )


def _vectors(space: EmbeddingSpace, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 4.0, size=(300, space.dim))
    in_subspace = space.mean + rng.normal(size=space.n_components) @ space.components
    specials = np.vstack(
        [np.zeros(space.dim), space.centroids[2], 1000 * space.centroids[1], in_subspace]
    )
    return np.vstack([x, specials]).astype(np.float32)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_features_match_sklearn_and_a_numpy_projection(distance: Distance, seed: int) -> None:
    space = _space(distance)
    x = _vectors(space, seed)
    features = space.features(x)
    xd = x.astype(np.float64)
    cd = space.centroids.astype(np.float64)
    d = space.dim
    # float32 dot products of d terms: relative error <= d * eps32 of the norms involved
    tolerance = 4 * d * EPS32
    if distance == "cosine":
        expected = cosine_distances(xd, cd)
        assert np.all(np.abs(features.distances - expected) <= tolerance)
        assert np.all(features.distances[x.shape[0] - 4] == 1.0)  # zero vector
    else:
        expected = euclidean_distances(xd, cd)
        scale = np.sum(xd**2, axis=1)[:, None] + np.sum(cd**2, axis=1)[None, :]
        assert np.all(
            np.abs(features.distances.astype(np.float64) ** 2 - expected**2) <= tolerance * scale
        )
    # the closest centroid is sklearn's argmin wherever the top two are apart by more than the
    # rounding can move them
    ordered = np.sort(expected, axis=1)
    margin = np.abs(ordered[:, 1] - ordered[:, 0])
    clear = margin > 2 * tolerance * (1 if distance == "cosine" else ordered[:, 1] + 1)
    assert clear.mean() > 0.9
    assert np.array_equal(features.closest[clear], np.argmin(expected, axis=1)[clear])
    # PCA coordinates and the residual off the subspace, against a float64 projection
    centred = xd - space.mean.astype(np.float64)
    v = space.components.astype(np.float64)
    coords = centred @ v.T
    residual = np.linalg.norm(centred - coords @ v, axis=1)
    norms = np.linalg.norm(centred, axis=1)
    assert np.all(np.abs(features.coords - coords) <= tolerance * norms[:, None])
    assert np.all(
        np.abs(features.residual.astype(np.float64) ** 2 - residual**2) <= 2 * tolerance * norms**2
    )
    assert features.residual[-1] <= math.sqrt(2 * tolerance) * norms[-1]  # in the subspace


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_every_part_of_a_profile_sees_the_same_events(distance: Distance) -> None:
    space = _space(distance)
    x = np.ones((3, space.dim), dtype=np.float32)
    x[1, 0] = 1e20  # finite, but its squared norm is not representable in float32
    profile = WindowProfile.empty(space, "v")
    profile.update(EventBatch.from_vectors(x))
    seen = {profile.distances.column(i).n for i in range(len(space.labels))}
    assert seen == {profile.count} == {profile.residual.count} == {profile.closest.total}
    assert profile.count + profile.invalid == 3
    assert np.isfinite(profile.shift.sums).all() and np.isfinite(profile.shift.squares).all()


def test_a_zero_vector_is_at_cosine_distance_one_and_closest_to_the_first_label() -> None:
    space = _space("cosine")
    features = space.features(np.zeros((1, space.dim), dtype=np.float32))
    assert features.distances.tolist() == [[1.0] * 5]
    assert features.closest.tolist() == [0]


def test_features_reject_the_wrong_dimension() -> None:
    with pytest.raises(ValueError, match="dimension 16"):
        _space("cosine").features(np.zeros((2, 3), dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# text

_TOKEN = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=5)
_DOCS = st.lists(
    st.none() | st.lists(_TOKEN | st.sampled_from(["de", "la"]), max_size=10), max_size=40
)


@SETTINGS
@given(docs=_DOCS)
def test_text_sketch_readouts_equal_counter_and_numpy(docs: list[list[str] | None]) -> None:
    sketch = TextSketch()
    sketch.update(docs[: len(docs) // 2])
    sketch.update(docs[len(docs) // 2 :])
    present = [doc for doc in docs if doc is not None]
    tokens = [token for doc in present for token in doc]
    counts = Counter(tokens)
    assert sketch.documents == len(present)
    assert sketch.terms.total_weight == len(tokens)
    assert sketch.terms.top(10) == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert round(sketch.distinct.estimate()) == len(counts)
    ranks = [0.0, 0.25, 0.5, 0.9, 1.0]
    if present:
        lengths = [len(doc) for doc in present]
        assert (
            sketch.doc_length.quantiles(0, ranks).tolist()
            == exclusive_quantiles(lengths, ranks).tolist()
        )
    if tokens:
        term_lengths = [len(token) for token in tokens]
        assert (
            sketch.term_length.quantiles(0, ranks).tolist()
            == exclusive_quantiles(term_lengths, ranks).tolist()
        )


def test_text_sketch_counts_tokens_ending_in_nul_as_themselves() -> None:
    sketch = TextSketch()
    sketch.update([["a", "a\x00"]])
    assert dict(sketch.terms.top(5)) == {"a": 1, "a\x00": 1}
    assert sketch.term_length.quantiles(0, [1.0]).tolist() == [2.0]


def test_text_sketch_counts_the_empty_token_as_a_distinct_term() -> None:
    sketch = TextSketch()
    sketch.update([["", "a"]])
    assert dict(sketch.terms.top(5)) == {"": 1, "a": 1}
    assert round(sketch.distinct.estimate()) == 2


# ---------------------------------------------------------------------------------------------
# drift scores: every metric of drift_scores against scipy / numpy on the raw features

_TEXT_SPACE = _space("cosine", seed=5)


def _events(seed: int, n: int, shift: float) -> EventBatch:
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0 + shift, 4.0, size=(n, _TEXT_SPACE.dim)).astype(np.float32)
    vocab = ["de", "la", "the", "of", "el", "und", "y", "to", "a", "b", "c"]
    p = np.linspace(1, 2 + 3 * shift, len(vocab))
    tokens: list[list[str] | None] = [
        None
        if rng.random() < 0.1
        else [str(t) for t in rng.choice(vocab, int(rng.integers(0, 9)), p=p / p.sum())]
        for _ in range(n)
    ]
    predictions = [
        str(v) for v in rng.choice(list("xyz"), n, p=[0.5, 0.3 + shift / 10, 0.2 - shift / 10])
    ]
    return EventBatch(x, np.zeros(n), tokens=tokens, predictions=predictions)


def _profile(batch: EventBatch) -> WindowProfile:
    profile = WindowProfile.empty(_TEXT_SPACE, "v")
    profile.update(batch)
    return profile


@pytest.mark.parametrize("statistic", ["hellinger", "psi", "jensen_shannon"])
@pytest.mark.parametrize(("seed", "shift"), [(0, 0.0), (1, 0.5), (2, 1.5)])
def test_drift_scores_equal_scipy_and_numpy_on_exact_profiles(
    statistic: CategoricalStatistic, seed: int, shift: float
) -> None:
    window_batch, reference_batch = _events(seed, 150, shift), _events(seed + 100, 180, 0.0)
    scores = drift_scores(_profile(window_batch), _profile(reference_batch), statistic)
    wf = _TEXT_SPACE.features(window_batch.embeddings)
    rf = _TEXT_SPACE.features(reference_batch.embeddings)
    categorical = {"hellinger": hellinger, "psi": psi, "jensen_shannon": jensen_shannon}[statistic]
    labels = _TEXT_SPACE.labels

    def mix(closest: npt.NDArray[np.intp]) -> dict[str, float]:
        counts = np.bincount(closest, minlength=len(labels))
        return {label: float(c) for label, c in zip(labels, counts, strict=True) if c}

    assert scores["closest_centroid"].score == pytest.approx(
        categorical(mix(wf.closest), mix(rf.closest)), abs=1e-12
    )
    assert scores["centroid_distance"].score == pytest.approx(
        max(_ks(wf.distances[:, c], rf.distances[:, c]) for c in range(5)),
        abs=1e-12,
    )
    assert scores["pca_residual"].score == pytest.approx(_ks(wf.residual, rf.residual), abs=1e-12)
    # centroid shift: event-weighted RMS of (window − reference) per-centroid mean coordinates,
    # over the reference's RMS within-centroid spread
    wc, rc = wf.coords.astype(np.float64), rf.coords.astype(np.float64)
    rms = 0.0
    for c in range(5):
        mine, theirs = wc[wf.closest == c], rc[rf.closest == c]
        if mine.size:
            ref_mean = theirs.mean(axis=0) if theirs.size else np.zeros(wc.shape[1])
            rms += mine.shape[0] / wc.shape[0] * float(np.sum((mine.mean(axis=0) - ref_mean) ** 2))
    spread = math.sqrt(
        sum(
            float(np.sum((rc[rf.closest == c] - rc[rf.closest == c].mean(axis=0)) ** 2))
            for c in range(5)
            if np.any(rf.closest == c)
        )
        / rc.shape[0]
    )
    assert scores["centroid_shift"].score == pytest.approx(math.sqrt(rms) / spread, rel=1e-4)
    # text
    w_docs = [d for d in window_batch.tokens or [] if d is not None]
    r_docs = [d for d in reference_batch.tokens or [] if d is not None]
    assert scores["doc_length"].score == pytest.approx(
        _ks([len(d) for d in w_docs], [len(d) for d in r_docs]), abs=1e-12
    )
    w_terms = Counter(t for d in w_docs for t in d)
    r_terms = Counter(t for d in r_docs for t in d)
    # hundreds of terms: the term-length sketches estimate, within their two rank errors
    bound = 2 * QuantileSketch(1).rank_error
    exact_ks = _ks([len(t) for t in w_terms.elements()], [len(t) for t in r_terms.elements()])
    assert abs(scores["term_length"].score - exact_ks) <= bound
    # fewer than 50 terms on each side: the top-50 keys are all terms, "other" is empty
    assert scores["frequent_terms"].score == pytest.approx(
        categorical({**w_terms, "\x00other": 0}, {**r_terms, "\x00other": 0}), abs=1e-12
    )
    assert scores["prediction"].score == pytest.approx(
        categorical(
            Counter(p for p in window_batch.predictions or [] if p is not None),
            Counter(p for p in reference_batch.predictions or [] if p is not None),
        ),
        abs=1e-12,
    )
    assert {
        s.sample_size
        for k, s in scores.items()
        if k not in ("doc_length", "term_length", "frequent_terms")
    } == {150}
    assert scores["doc_length"].sample_size == len(w_docs)


def test_an_empty_window_scores_nothing() -> None:
    reference = _profile(_events(0, 50, 0.0))
    assert drift_scores(WindowProfile.empty(_TEXT_SPACE, "v"), reference) == {}


# ---------------------------------------------------------------------------------------------
# calibration thresholds


def test_threshold_interpolates_linearly_in_log_n() -> None:
    calibration = Calibration(0.01, (10, 100, 1000), {"m": (0.9, 0.5, 0.2)}, 100, 400)
    assert calibration.threshold("m", 9) is None
    assert calibration.threshold("unknown", 100) is None
    for n, expected in [(10, 0.9), (100, 0.5), (1000, 0.2), (5000, 0.2), (10**7, 0.2)]:
        assert calibration.threshold("m", n) == pytest.approx(expected)
    # halfway in log between 10 and 100 is sqrt(1000) ~ 31.6
    assert calibration.threshold("m", 31) == pytest.approx(0.9 - 0.4 * math.log10(31 / 10))
    assert calibration.threshold("m", 316) == pytest.approx(0.5 - 0.3 * math.log10(3.16))


@SETTINGS
@given(
    steps=st.lists(st.floats(0, 1), min_size=1, max_size=6),
    start=st.integers(1, 50),
    sizes_a=st.integers(1, 100_000),
    sizes_b=st.integers(1, 100_000),
)
def test_thresholds_never_increase_with_the_window_size(
    steps: list[float], start: int, sizes_a: int, sizes_b: int
) -> None:
    sizes = tuple(start * 3**i for i in range(len(steps)))
    values = tuple(np.cumsum(steps)[::-1].tolist())  # non-increasing, as calibrate makes them
    calibration = Calibration(0.05, sizes, {"m": values}, 10, 10)
    small, large = sorted((sizes_a, sizes_b))
    t_small, t_large = calibration.threshold("m", small), calibration.threshold("m", large)
    if t_small is None:
        assert small < sizes[0]
        return
    assert t_large is not None
    assert t_large <= t_small + 1e-12
    assert min(values) - 1e-12 <= t_large <= max(values) + 1e-12


def test_calibration_round_trips_through_a_dict() -> None:
    calibration = Calibration(0.05, (10, 30), {"a": (0.3, 0.2), "b": (1.0, 1.0)}, 7, 99)
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_calibrate_gives_non_increasing_thresholds_for_every_metric() -> None:
    space = _space("euclidean", seed=9)
    rng = np.random.default_rng(4)
    reference = WindowProfile.empty(space, "")
    reference.update(EventBatch.from_vectors(rng.normal(2.0, 4.0, size=(400, space.dim))))
    held = EventBatch.from_vectors(rng.normal(2.0, 4.0, size=(300, space.dim)))
    sizes = (10, 30, 100, 300)
    calibration = calibrate(
        lambda: WindowProfile.empty(space, ""),
        reference,
        space.features(held.embeddings),
        held,
        alpha=0.05,
        sizes=sizes,
        rounds=60,
        seed=1,
    )
    assert calibration.sizes == sizes
    assert (calibration.rounds, calibration.rows, calibration.alpha) == (60, 300, 0.05)
    assert set(calibration.thresholds) == {
        "closest_centroid",
        "centroid_distance",
        "pca_residual",
        "centroid_shift",
        "sample_mmd",
    }
    for metric, values in calibration.thresholds.items():
        assert len(values) == len(sizes)
        assert all(a >= b for a, b in itertools.pairwise(values)), (metric, values)
        assert all(v > 0 for v in values), (metric, values)


def test_calibrate_rejects_an_alpha_outside_zero_one() -> None:
    space = _space("cosine")
    batch = EventBatch.from_vectors(np.ones((5, space.dim)))
    with pytest.raises(ValueError, match="alpha"):
        calibrate(
            lambda: WindowProfile.empty(space, ""),
            WindowProfile.empty(space, ""),
            space.features(batch.embeddings),
            batch,
            alpha=1.0,
        )

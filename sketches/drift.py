"""Drift statistics of a window profile against the reference profile.

Each metric compares one part of a window's profile with the same part of the reference's:

- ``closest_centroid`` — Hellinger (or PSI / Jensen–Shannon) between closest-centroid mixes;
- ``centroid_distance`` — the largest two-sample KS statistic over the per-centroid distance
  distributions;
- ``pca_residual`` — KS statistic on the residual off the reference PCA subspace;
- ``centroid_shift`` — how far the window's own centroids moved from the reference's, in the
  PCA subspace: the event-weighted RMS shift divided by the reference's RMS within-centroid
  spread;
- ``sample_mmd`` — the unbiased squared maximum mean discrepancy (Gaussian kernel, median
  bandwidth) between the two profiles' samples of PCA coordinates and residual probes
  (:mod:`sketches.mmd`): a test on the joint distribution, for shifts that move few marginals
  or leave the subspace;
- ``out_of_range`` — the share of events with a coordinate outside the span the training rows
  cover (:mod:`sketches.ranges`): a broken transform, noise where training was constant;
- ``doc_length``, ``term_length`` (KS), ``frequent_terms`` (categorical statistic over the top
  terms of both sides plus an "other" bucket) when both sides carry text;
- ``prediction`` (categorical statistic on the predicted classes) when both carry predictions.

A score means nothing without its threshold: thresholds come from :mod:`sketches.calibration`
and depend on the window's event count.

>>> round(hellinger({"a": 1, "b": 1}, {"a": 1, "b": 0}), 4)
0.5412
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from .explain import Contributor, contributors
from .mmd import sample_mmd
from .profile import WindowProfile
from .quantiles import QuantileSketch, ks_on_sketches
from .text import COMPARED_TERMS

__all__ = [
    "CategoricalStatistic",
    "DriftResult",
    "Score",
    "categorical_score",
    "drift_scores",
    "evaluate",
    "hellinger",
    "jensen_shannon",
    "psi",
]

CategoricalStatistic = Literal["hellinger", "psi", "jensen_shannon"]
_PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class Score:
    """A metric's value for one window and the sample size its threshold depends on."""

    statistic: str
    score: float
    sample_size: int


@dataclass(frozen=True)
class DriftResult:
    """``drifted`` is ``score > threshold``; no threshold means the window was too small.
    ``contributors`` are the metric's parts that moved most (:mod:`sketches.explain`)."""

    statistic: str
    score: float
    threshold: float | None
    drifted: bool
    contributors: tuple[Contributor, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "statistic": self.statistic,
            "score": self.score,
            "threshold": self.threshold,
            "drifted": self.drifted,
        }
        if self.threshold is None:
            out["reason"] = "insufficient_events"
        if self.contributors:
            out["contributors"] = [{"part": p, "value": v} for p, v in self.contributors]
        return out


class CalibratedReference(Protocol):
    """What :func:`evaluate` needs of a reference (``sketches.reference.Reference`` is one)."""

    @property
    def profile(self) -> WindowProfile: ...

    @property
    def statistic(self) -> CategoricalStatistic: ...

    def threshold(self, metric: str, sample_size: int) -> float | None: ...


def _aligned(p: Mapping[str, float], q: Mapping[str, float]) -> tuple[npt.NDArray[np.float64], ...]:
    keys = sorted(set(p) | set(q))
    a = np.array([p.get(k, 0.0) for k in keys], dtype=np.float64)
    b = np.array([q.get(k, 0.0) for k in keys], dtype=np.float64)
    return a / a.sum(), b / b.sum()


def hellinger(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Hellinger distance in [0, 1] between two (unnormalised) categorical distributions."""
    a, b = _aligned(p, q)
    return float(np.sqrt(max(0.0, 1.0 - float(np.sum(np.sqrt(a * b))))))


def psi(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Population stability index; empty cells are floored at 1e-4 to keep it finite."""
    a, b = _aligned(p, q)
    a, b = np.maximum(a, _PSI_FLOOR), np.maximum(b, _PSI_FLOOR)
    return float(np.sum((a - b) * np.log(a / b)))


def jensen_shannon(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen–Shannon distance (square root of the divergence, base 2) in [0, 1]."""
    a, b = _aligned(p, q)
    m = 0.5 * (a + b)

    def kl(x: npt.NDArray[np.float64]) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return float(np.sqrt(max(0.0, 0.5 * kl(a) + 0.5 * kl(b))))


_CATEGORICAL = {"hellinger": hellinger, "psi": psi, "jensen_shannon": jensen_shannon}


def categorical_score(
    statistic: CategoricalStatistic, p: Mapping[str, float], q: Mapping[str, float]
) -> float:
    return _CATEGORICAL[statistic](p, q)


def _max_ks(a: QuantileSketch, b: QuantileSketch) -> float:
    return max(ks_on_sketches(a, b, column) for column in range(a.columns))


def _term_mix(profile: WindowProfile, keys: set[str]) -> dict[str, float]:
    terms = profile.text.terms
    mix = {key: float(terms.estimate(key)) for key in keys}
    mix["\x00other"] = max(0.0, terms.total_weight - sum(mix.values()))
    return mix


def _centroid_shift(window: WindowProfile, reference: WindowProfile) -> float:
    present = window.shift.counts > 0
    if not present.any():
        return 0.0
    ref_means = reference.shift.means()
    diff = window.shift.means()[present] - np.nan_to_num(ref_means[present])
    weights = window.shift.counts[present] / window.count
    rms = float(np.sqrt(np.sum(weights * np.einsum("ij,ij->i", diff, diff))))
    spread = reference.shift.spread()
    return rms / spread if spread > 0 else rms


def drift_scores(
    window: WindowProfile,
    reference: WindowProfile,
    statistic: CategoricalStatistic = "hellinger",
    *,
    sample: bool = True,
) -> dict[str, Score]:
    """Every metric the two profiles allow; an empty window scores nothing. ``sample=False``
    leaves out ``sample_mmd`` (the calibration draws its null apart)."""
    if window.count == 0:
        return {}
    n = window.count
    scores = {
        "closest_centroid": Score(
            statistic,
            categorical_score(statistic, window.closest.counts(), reference.closest.counts()),
            n,
        ),
        "centroid_distance": Score("ks", _max_ks(window.distances, reference.distances), n),
        "pca_residual": Score("ks", ks_on_sketches(window.residual, reference.residual), n),
        "centroid_shift": Score("mean_shift", _centroid_shift(window, reference), n),
    }
    if sample and len(window.sample) and len(reference.sample):  # older profiles have none
        scores["sample_mmd"] = Score("mmd", sample_mmd(window.sample, reference.sample), n)
    if window.ranges.dims and reference.ranges.dims:  # nor a range
        scores["out_of_range"] = Score("share", window.ranges.share(), n)
    docs = window.text.documents
    if docs and reference.text.documents:
        wt, rt = window.text, reference.text
        scores["doc_length"] = Score("ks", ks_on_sketches(wt.doc_length, rt.doc_length), docs)
        if wt.terms.total_weight and rt.terms.total_weight:
            scores["term_length"] = Score(
                "ks", ks_on_sketches(wt.term_length, rt.term_length), docs
            )
            keys = {t for t, _ in wt.terms.top(COMPARED_TERMS)}
            keys |= {t for t, _ in rt.terms.top(COMPARED_TERMS)}
            score = categorical_score(
                statistic, _term_mix(window, keys), _term_mix(reference, keys)
            )
            scores["frequent_terms"] = Score(statistic, score, docs)
    predicted = window.predictions.total
    if predicted and reference.predictions.total:
        score = categorical_score(
            statistic, window.predictions.counts(), reference.predictions.counts()
        )
        scores["prediction"] = Score(statistic, score, predicted)
    return scores


def evaluate(window: WindowProfile, reference: CalibratedReference) -> dict[str, DriftResult]:
    """Score a closed window against its reference, judge each metric by its threshold, and
    name each judged metric's top contributors."""
    results = {}
    for metric, s in drift_scores(window, reference.profile, reference.statistic).items():
        threshold = reference.threshold(metric, s.sample_size)
        if threshold is None and metric != "closest_centroid":
            continue
        drifted = threshold is not None and s.score > threshold
        parts = contributors(metric, window, reference.profile) if threshold is not None else ()
        results[metric] = DriftResult(s.statistic, s.score, threshold, drifted, parts)
    results.setdefault("closest_centroid", DriftResult(reference.statistic, 0.0, None, False))
    return results

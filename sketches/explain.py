"""Which parts of a window moved most, per drift metric: what a drift record names as its cause.

A score says *that* a window moved; whoever is paged needs *where*. :func:`contributors` ranks
the parts of each metric that has parts, largest first:

- ``closest_centroid``: the centroids whose share of events changed most (window share minus
  reference share: positive means the window sends more events there);
- ``centroid_distance``: the centroids whose distance distribution moved most (each one's KS
  statistic; the metric's score is the largest);
- ``centroid_shift``: the centroids whose own mean moved most, as each one's share of the
  squared shift (the parts of a window sum to 1);
- ``prediction`` and ``frequent_terms``: the predicted classes or terms whose share changed
  most (signed, like ``closest_centroid``);
- ``out_of_range``: the embedding coordinates (``dim 0`` is the first) most often outside the
  training range, as the window's share of events outside minus the reference's.

The other metrics judge one whole distribution (``pca_residual``, ``sample_mmd``,
``doc_length``, ``term_length``) and have no parts. Everything is read from the two mergeable
profiles, so a merged window (many collectors) is explained exactly as a single one.

>>> import numpy as np
>>> from sketches.batch import EventBatch
>>> from sketches.geometry import EmbeddingSpace
>>> from sketches.profile import WindowProfile
>>> space = EmbeddingSpace(np.eye(2, dtype=np.float32), ("x", "y"), "cosine",
...                        np.zeros(2, np.float32), np.eye(2, dtype=np.float32))
>>> def profile(rows):
...     p = WindowProfile.empty(space, "v")
...     p.update(EventBatch.from_vectors(rows))
...     return p
>>> reference = profile([[1, 0], [0, 1]] * 50)
>>> window = profile([[1, 0]] * 90 + [[0, 1]] * 10)
>>> [(part, round(v, 2)) for part, v in contributors("closest_centroid", window, reference)]
[('x', 0.4), ('y', -0.4)]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .profile import WindowProfile
from .quantiles import ks_on_sketches
from .text import COMPARED_TERMS

__all__ = ["LIMIT", "Contributor", "contributors"]

LIMIT = 3  # parts named per metric: enough to act on, few enough for a gauge and an alert
Contributor = tuple[str, float]  # (part, value)


def contributors(
    metric: str, window: WindowProfile, reference: WindowProfile, limit: int = LIMIT
) -> tuple[Contributor, ...]:
    """The ``limit`` parts of ``metric`` that moved most; () for a metric without parts."""
    if window.count == 0:
        return ()
    if metric == "closest_centroid":
        return _top(_share_change(window.closest.counts(), reference.closest.counts()), limit)
    if metric == "centroid_distance":
        return _top(_distance_ks(window, reference), limit)
    if metric == "centroid_shift":
        return _top(_shift_shares(window, reference), limit)
    if metric == "prediction":
        return _top(
            _share_change(window.predictions.counts(), reference.predictions.counts()), limit
        )
    if metric == "frequent_terms":
        return _top(_term_change(window, reference), limit)
    if metric == "out_of_range":
        return _top(_range_change(window, reference), limit)
    return ()


def _top(values: Mapping[str, float], limit: int) -> tuple[Contributor, ...]:
    """Largest by size first; ties by name, so a record is the same in every process."""
    ranked = sorted(values.items(), key=lambda item: (-abs(item[1]), item[0]))
    return tuple((part, float(value)) for part, value in ranked[:limit] if value != 0)


def _share_change(window: Mapping[str, int], reference: Mapping[str, int]) -> dict[str, float]:
    w_total, r_total = sum(window.values()), sum(reference.values())
    if not w_total or not r_total:
        return {}
    return {
        key: window.get(key, 0) / w_total - reference.get(key, 0) / r_total
        for key in set(window) | set(reference)
    }


def _distance_ks(window: WindowProfile, reference: WindowProfile) -> dict[str, float]:
    if reference.distances.count == 0:
        return {}
    return {
        label: ks_on_sketches(window.distances, reference.distances, column)
        for column, label in enumerate(window.centroid_labels)
    }


def _shift_shares(window: WindowProfile, reference: WindowProfile) -> dict[str, float]:
    """Each present centroid's event-weighted squared mean shift, as a share of the total."""
    present = window.shift.counts > 0
    diff = window.shift.means()[present] - np.nan_to_num(reference.shift.means()[present])
    parts = window.shift.counts[present] * np.einsum("ij,ij->i", diff, diff)
    total = float(parts.sum())
    if total <= 0:
        return {}
    labels = np.asarray(window.centroid_labels, dtype=object)[present]
    return {str(label): float(part) / total for label, part in zip(labels, parts, strict=True)}


def _term_change(window: WindowProfile, reference: WindowProfile) -> dict[str, float]:
    """Share changes of the top terms of both sides, as ``frequent_terms`` compares them."""
    w, r = window.text.terms, reference.text.terms
    if not w.total_weight or not r.total_weight:
        return {}
    keys = {t for t, _ in w.top(COMPARED_TERMS)} | {t for t, _ in r.top(COMPARED_TERMS)}
    return {
        key: float(w.estimate(key)) / w.total_weight - float(r.estimate(key)) / r.total_weight
        for key in keys
    }


def _range_change(window: WindowProfile, reference: WindowProfile) -> dict[str, float]:
    """Per coordinate, the window's share of events outside the range minus the reference's."""
    w, r = window.ranges, reference.ranges
    if not w.rows or not r.rows or w.dims != r.dims:
        return {}
    change = w.per_coordinate / w.rows - r.per_coordinate / r.rows
    moved = np.flatnonzero(change)
    return {f"dim {j}": float(change[j]) for j in moved}

"""The rows of a reference build: checked, labelled, split, and the recipe that scores them.

:func:`sketches.reference.build_reference` fits the space on *all* the training rows given,
but the profile and the thresholds must not come from rows scored by a fit that saw them:
such rows sit closer to the subspace and to the centroids than fresh traffic does, and
thresholds calibrated on them alarm on clean windows. So the rows are cross-fitted: they are
dealt into ``folds`` folds (stratified by label, :func:`split_rows`), and each fold is scored
by the same recipe (:func:`space_recipe`) fitted on the other folds only (k-means started
from the final centroids, so cluster ``i`` keeps its meaning; coordinates mapped into the
final PCA basis: :func:`sketches.geometry.cross_fitted_features`). Every row thus gets the
features a new row would get from a space fit on (K-1)/K of the rows; that space is only
slightly worse than the final one (the gap shrinks like 1/K; on digits, 5 folds leave about a
tenth of the fitted-row bias). Those out-of-fold rows are then split once more (stratified):
the ``profile`` part makes the reference profile, and the ``holdout`` part, used for nothing
else, calibrates the thresholds against it, so the calibration also sees the profile's own
sampling error. Each part is about half the rows (``profile_share : holdout``), not a quarter.

Numeric labels (``0, 1, ..., 10``, as numbers or digit strings) are ordered as numbers, like
whylogs' selector; other labels follow them in string order (:func:`label_order`). Names are
always strings (:func:`label_names`).

>>> y = np.repeat(["b", "a"], [6, 4])
>>> split = split_rows(10, y, holdout=0.5, folds=2, seed=0)
>>> len(split.profile), len(split.holdout), np.bincount(split.folds).tolist()
(5, 5, [5, 5])
>>> [label_order(y[split.folds == fold]) for fold in (0, 1)]
[('a', 'b'), ('a', 'b')]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ReferenceError_
from .geometry import DEFAULT_PROBES, METHODS, Distance, Method, SpaceFit

__all__ = [
    "Split",
    "check_shares",
    "check_sizes",
    "finite_vectors",
    "label_names",
    "label_order",
    "space_recipe",
    "split_rows",
]

F32 = npt.NDArray[np.float32]


def finite_vectors(vectors: npt.ArrayLike) -> F32:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ReferenceError_("reference vectors contain NaN or Inf; clean them first")
    return x


def label_names(
    labels: Sequence[Any] | npt.NDArray[Any] | None, rows: int
) -> npt.NDArray[np.str_] | None:
    """Labels as names (strings: ``3``, ``np.int64(3)`` and ``"3"`` are all ``"3"``)."""
    if labels is None:
        return None
    y = np.asarray([str(v) for v in labels])
    if y.shape[0] != rows:
        raise ReferenceError_(f"{rows} vectors but {y.shape[0]} labels")
    return y


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _label_key(name: str) -> tuple[int, Decimal, str]:
    """Numbers first, by value (exactly, as decimals), then the other names as strings."""
    if _NUMBER.fullmatch(name):
        return 0, Decimal(name), name
    return 1, Decimal(0), name


def label_order(labels: npt.NDArray[np.str_]) -> tuple[str, ...]:
    """The distinct labels in centroid order: numeric labels in numeric order (``2 < 10``).

    Labels read from ``.npy``/``.txt``/JSON arrive as strings; sorting those as strings would
    put ``10`` before ``2``, unlike whylogs' selector on the same integer labels.

    >>> label_order(np.array(["10", "2", "b", "0", "a", "-1.5"]))
    ('-1.5', '0', '2', '10', 'a', 'b')
    """
    return tuple(sorted((str(v) for v in np.unique(labels)), key=_label_key))


@dataclass(frozen=True)
class Split:
    """Which rows make the profile, which calibrate, and the cross-fitting fold of each row."""

    profile: npt.NDArray[np.intp]
    holdout: npt.NDArray[np.intp]
    folds: npt.NDArray[np.intp]


def _groups(rows: int, labels: npt.NDArray[np.str_] | None) -> list[npt.NDArray[np.intp]]:
    if labels is None:
        return [np.arange(rows)]
    return [np.flatnonzero(labels == name) for name in label_order(labels)]


def split_rows(
    rows: int, labels: npt.NDArray[np.str_] | None, holdout: float, folds: int, seed: int
) -> Split:
    """Stratified (by label, if any) profile / holdout rows, and folds dealt round-robin.

    Each label's rows are shuffled once; the first ``holdout`` share of them calibrates, the
    rest profile, and consecutive rows go to consecutive folds (continuing across labels), so
    every fold holds every label and both parts spread evenly over the folds.
    """
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(rows, dtype=np.intp)
    prof, hold = [], []
    dealt = 0
    for group in _groups(rows, labels):
        order = rng.permutation(group)
        fold_of[order] = (dealt + np.arange(order.size)) % folds
        dealt += order.size
        n_hold = round(order.size * holdout)
        hold.append(order[:n_hold])
        prof.append(order[n_hold:])
    return Split(np.concatenate(prof), np.concatenate(hold), fold_of)


def space_recipe(
    method: Method,
    labels: npt.NDArray[np.str_] | None,
    *,
    components: int,
    clusters: int,
    distance: Distance,
    seed: int,
    centroids: npt.ArrayLike | None,
    centroid_labels: Sequence[str] | None,
    probes: int = DEFAULT_PROBES,
) -> SpaceFit:
    """The fitting recipe of ``method``, checked before anything is fitted."""
    if probes < 0:
        raise ReferenceError_(f"residual probes must be 0 or more, got {probes}")
    if method == "pca-centroids":
        if labels is None:
            raise ReferenceError_(
                "pca-centroids needs labels (--labels, or a label field of the events)"
            )
        return SpaceFit(method, label_order(labels), components, distance, seed, probes=probes)
    if method == "manual":
        if centroids is None:
            raise ReferenceError_("method manual needs a centroids matrix (--centroids FILE.npy)")
        given = np.asarray(centroids, dtype=np.float32)
        names = tuple(centroid_labels or [f"centroid-{i}" for i in range(given.shape[0])])
        return SpaceFit(method, names, components, distance, seed, given, probes)
    if method in ("kmeans", "pca-kmeans"):
        names = tuple(f"cluster-{i}" for i in range(clusters))
        return SpaceFit(method, names, components, distance, seed, probes=probes)
    raise ReferenceError_(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def check_shares(holdout: float, profile_share: float, folds: int | None) -> None:
    """``folds`` is None when nothing is cross-fitted (the fit has its own rows)."""
    if holdout <= 0 or profile_share <= 0:
        raise ReferenceError_(
            f"holdout and profile_share must both be positive, got {holdout} and {profile_share}"
        )
    if folds is not None and folds < 2:
        raise ReferenceError_(f"cross-fitting needs at least 2 folds, got {folds}")


def check_sizes(total: int, fit: int, split: Split) -> None:
    if min(fit, len(split.profile), len(split.holdout)) < 20:
        raise ReferenceError_(
            f"{total} rows are too few: the fit, profile and holdout parts need at least 20 each"
            f" (got {fit}/{len(split.profile)}/{len(split.holdout)})"
        )

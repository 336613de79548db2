"""The reference embedding space: centroids, a PCA subspace, and per-event features in it.

Every event's embedding becomes a few numbers that sketches can summarise: its distance to
each reference centroid (cosine or euclidean, one matrix product), the closest centroid, its
coordinates in the reference PCA subspace, and its residual: the euclidean norm of the part of
``x - mean`` that the subspace does not explain (multivariate drift shows up here first when a
new kind of input arrives). A few fixed random *probes* of that residual (directions
orthogonal to the subspace) keep where it points, not only how long it is: a new language in
sentence embeddings moves mostly off the subspace of the reference's own variation (on e5 chat
embeddings, 85 % of the gap between Portuguese and English lies there), and the coordinate
sample (:mod:`sketches.sample`) needs those directions to see it. The span of each
coordinate over the fitted rows (its min and max) marks which events left the training range
(:mod:`sketches.ranges`).

A :class:`SpaceFit` is the recipe of a space (method, components, distance); fitting it is
the only place scikit-learn is imported, so loading a saved reference never imports it.
:func:`cross_fitted_features` refits the recipe without each fold of the rows, to score rows
the way a space that never saw them would.

>>> import numpy as np
>>> space = EmbeddingSpace(
...     centroids=np.eye(2, dtype=np.float32), labels=("x", "y"), distance="cosine",
...     mean=np.zeros(2, np.float32), components=np.array([[1.0, 0.0]], np.float32))
>>> f = space.features(np.array([[2.0, 0.0], [0.0, 3.0]], np.float32))
>>> f.closest.tolist(), f.distances.round(3).tolist(), f.residual.tolist()
([0, 1], [[0.0, 1.0], [1.0, 0.0]], [0.0, 3.0])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .errors import ReferenceError_
from .ranges import outside_range

__all__ = [
    "DEFAULT_PROBES",
    "METHODS",
    "Distance",
    "EmbeddingFeatures",
    "EmbeddingSpace",
    "Method",
    "SpaceFit",
    "class_centroids",
    "cross_fitted_features",
    "fit_pca",
    "kmeans_centroids",
    "residual_probes",
]

Distance = Literal["cosine", "euclidean"]
Method = Literal["pca-centroids", "kmeans", "pca-kmeans", "manual"]
METHODS: tuple[Method, ...] = ("pca-centroids", "kmeans", "pca-kmeans", "manual")
F32 = npt.NDArray[np.float32]
DEFAULT_PROBES = 128


@dataclass(frozen=True)
class EmbeddingFeatures:
    """Per-event numbers derived from embeddings; rows align with the input matrix."""

    distances: F32  # (n, centroids)
    closest: npt.NDArray[np.intp]  # (n,)
    coords: F32  # (n, components): coordinates in the reference PCA subspace
    residual: F32  # (n,): norm of the part off that subspace
    probed: F32  # (n, probes): that part along the space's residual probes
    outside: npt.NDArray[np.bool_]  # (n, d), or (n, 0) without a range: out of the training range

    def __len__(self) -> int:
        return int(self.closest.shape[0])

    def take(self, rows: npt.NDArray[np.intp]) -> EmbeddingFeatures:
        return EmbeddingFeatures(
            self.distances[rows],
            self.closest[rows],
            self.coords[rows],
            self.residual[rows],
            self.probed[rows],
            self.outside[rows],
        )

    def sample_rows(self) -> F32:
        """What the coordinate sample keeps of each event: coordinates, then probes."""
        if self.probed.shape[1] == 0:
            return self.coords
        return np.hstack([self.coords, self.probed])


@dataclass(frozen=True)
class EmbeddingSpace:
    """Centroids (with names), the distance to them, the PCA subspace of the reference, the
    residual probes and the training range per coordinate (neither in references built before
    they existed)."""

    centroids: F32  # (C, d)
    labels: tuple[str, ...]
    distance: Distance
    mean: F32  # (d,)
    components: F32  # (k, d), orthonormal rows
    probes: F32 | None = None  # (p, d), rows orthogonal to the components
    low: F32 | None = None  # (d,): each coordinate's minimum over the fitted rows
    high: F32 | None = None  # (d,): and its maximum

    def __post_init__(self) -> None:
        if self.centroids.ndim != 2 or len(self.labels) != self.centroids.shape[0]:
            raise ReferenceError_("centroids must be a (C, d) matrix with one label per row")
        if self.components.shape[1] != self.dim or self.mean.shape != (self.dim,):
            raise ReferenceError_("PCA mean/components do not match the centroid dimension")
        if self.probes is not None and (self.probes.ndim != 2 or self.probes.shape[1] != self.dim):
            raise ReferenceError_("residual probes do not match the centroid dimension")
        if (self.low is None) != (self.high is None) or any(
            bound is not None and bound.shape != (self.dim,) for bound in (self.low, self.high)
        ):
            raise ReferenceError_("the training range needs a low and a high bound per dimension")
        if self.distance not in ("cosine", "euclidean"):
            raise ReferenceError_(f"unknown distance {self.distance!r}; use cosine or euclidean")

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_probes(self) -> int:
        return 0 if self.probes is None else int(self.probes.shape[0])

    @property
    def range_dims(self) -> int:
        """Coordinates whose training range is checked: all of them, or 0 without a range."""
        return 0 if self.low is None else self.dim

    @functools.cached_property
    def _basis(self) -> F32:
        """Components then probes: one matrix product gives both (frozen, so computed once)."""
        if self.probes is None:
            return self.components
        return np.ascontiguousarray(np.vstack([self.components, self.probes]), dtype=np.float32)

    def features(
        self, vectors: F32, probe_rows: npt.NDArray[np.intp] | None = None
    ) -> EmbeddingFeatures:
        """Distances, closest centroid, PCA coordinates, residual, probes and out-of-range
        coordinates of each row.

        ``probe_rows`` limits the probes to those rows (the others' are 0): only rows that
        can enter a full coordinate sample need them, a few per thousand events.

        A NaN or infinity in a row makes its residual non-finite (without warnings), so a
        caller can test the residuals instead of the whole matrix.
        """
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dimension {self.dim}, got shape {x.shape}")
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            dots = x @ self.centroids.T
            row_sq = np.einsum("ij,ij->i", x, x)
            if self.distance == "cosine":
                norms = np.sqrt(row_sq)[:, None] * np.linalg.norm(self.centroids, axis=1)[None, :]
                cos = np.where(norms > 0, dots / norms, 0.0)
                distances = (1.0 - np.clip(cos, -1.0, 1.0)).astype(np.float32)
            else:
                centroid_sq = np.einsum("ij,ij->i", self.centroids, self.centroids)
                squared = row_sq[:, None] + centroid_sq[None, :] - 2.0 * dots
                distances = np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)
            centred = x - self.mean
            if probe_rows is None:
                projected = (centred @ self._basis.T).astype(np.float32)
                coords, probed = np.hsplit(projected, [self.n_components])
            else:
                coords = (centred @ self.components.T).astype(np.float32)
                probed = np.zeros((x.shape[0], self.n_probes), dtype=np.float32)
                if self.probes is not None and len(probe_rows):
                    probed[probe_rows] = centred[probe_rows] @ self.probes.T
            off = np.einsum("ij,ij->i", centred, centred) - np.einsum("ij,ij->i", coords, coords)
            residual = np.sqrt(np.maximum(off, 0.0)).astype(np.float32)
            if self.low is None or self.high is None:
                outside = np.zeros((x.shape[0], 0), dtype=np.bool_)
            else:
                outside = outside_range(x, self.low, self.high)
        closest = np.argmin(distances, axis=1).astype(np.intp)
        return EmbeddingFeatures(distances, closest, coords, residual, probed, outside)


def residual_probes(components: F32, count: int, seed: int = 0) -> F32 | None:
    """``count`` fixed random directions orthogonal to ``components``, scaled so that a
    residual's probes keep its length on average (``E |r P^T|^2 = |r|^2``).

    Gaussian rows of variance ``1 / count`` (a Johnson-Lindenstrauss projection), with their
    part inside the subspace removed, so a row's probes read its residual only. Distances
    between sample rows (coordinates, then probes) then estimate distances between the
    embeddings themselves, as a kernel test on the raw vectors would see them.

    >>> v = np.eye(4, dtype=np.float32)[:1]
    >>> p = residual_probes(v, 3)
    >>> p.shape, bool(np.abs(p @ v.T).max() < 1e-6)
    ((3, 4), True)
    """
    if count <= 0:
        return None
    dim = components.shape[1]
    raw = np.random.default_rng([seed, dim]).standard_normal((count, dim)) / np.sqrt(count)
    basis = components.astype(np.float64)
    probes: F32 = (raw - (raw @ basis.T) @ basis).astype(np.float32)
    return probes


def fit_pca(vectors: F32, n_components: int, seed: int = 0) -> tuple[F32, F32]:
    """Mean and orthonormal components of a PCA fitted on ``vectors`` (k capped by the data).

    scikit-learn's default solver, as whylogs' selectors use it: for digits-like shapes
    (``n >= 10 d``, ``d <= 1000``) that is the exact ``covariance_eigh``, so the subspace is
    the one whylogs finds.
    """
    from sklearn.decomposition import PCA  # here: loading scikit-learn takes seconds

    k = max(1, min(n_components, vectors.shape[0] - 1, vectors.shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit(vectors)
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


def class_centroids(
    vectors: F32, labels: npt.NDArray[np.str_], names: Sequence[str], mean: F32, components: F32
) -> F32:
    """Each label's mean projected onto the affine PCA subspace, one row per name, in order.

    This is what whylogs' ``PCACentroidsSelector`` computes (class means of the PCA
    coordinates, mapped back), in its closed form ``mean + (m - mean) V^T V``. Sums run in
    float64 so that float32 embeddings give whylogs' centroids to float32 precision.
    """
    mu = mean.astype(np.float64)
    basis = components.astype(np.float64)
    means = []
    for name in names:
        members = vectors[labels == name]
        if members.shape[0] == 0:
            raise ReferenceError_(
                f"no rows of label {name!r} to fit its centroid on; give every label at least "
                "2 rows (cross-fitting fits each centroid without one fold of the rows)"
            )
        means.append(members.mean(axis=0, dtype=np.float64))
    return (mu + ((np.stack(means) - mu) @ basis.T) @ basis).astype(np.float32)


def kmeans_centroids(
    vectors: npt.NDArray[np.floating[Any]],
    clusters: int,
    seed: int = 0,
    init: npt.NDArray[np.floating[Any]] | None = None,
) -> F32:
    """K-means centroids of ``vectors``: k-means++ with restarts, or Lloyd from ``init``.

    Starting from given centroids keeps cluster ``i`` the same cluster: cross-fitting starts
    each fold from the centroids fitted on all rows, so fold and final centroids line up.
    """
    from sklearn.cluster import KMeans

    if clusters < 1 or clusters > vectors.shape[0]:
        raise ReferenceError_(f"cannot find {clusters} clusters in {vectors.shape[0]} rows")
    if init is None:
        model = KMeans(n_clusters=clusters, n_init=4, random_state=seed)
    else:
        model = KMeans(
            n_clusters=clusters, init=init.astype(vectors.dtype), n_init=1, random_state=seed
        )
    return np.asarray(model.fit(vectors).cluster_centers_, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class SpaceFit:
    """How to fit an embedding space on rows: the recipe that cross-fitting repeats per fold.

    ``names`` are the centroid names in order: the labels (``pca-centroids``, whose centroid
    ``i`` is the mean of label ``names[i]``), the manual centroids' names, or cluster names.

    >>> rng = np.random.default_rng(0)
    >>> x = np.vstack([rng.normal(m, 1, (40, 6)) for m in (0, 4)]).astype(np.float32)
    >>> y = np.repeat(["a", "b"], 40)
    >>> recipe = SpaceFit("pca-centroids", ("a", "b"), components=2, distance="euclidean")
    >>> space = recipe.fit(x, y)
    >>> crossed = cross_fitted_features(recipe, space, x, y, np.arange(80) % 5)
    >>> bool(crossed.residual.mean() > space.features(x).residual.mean())  # rows look new
    True
    >>> bool((crossed.closest == space.features(x).closest).all())
    True
    """

    method: Method
    names: tuple[str, ...]
    components: int = 20
    distance: Distance = "cosine"
    seed: int = 0
    centroids: F32 | None = None  # the given centroids of ``manual``
    probes: int = DEFAULT_PROBES

    def fit(
        self,
        vectors: F32,
        labels: npt.NDArray[np.str_] | None,
        like: EmbeddingSpace | None = None,
    ) -> EmbeddingSpace:
        """The space fitted on ``vectors``; ``like`` (a space of the same recipe) aligns the
        k-means clusters with its own, so centroid ``i`` keeps its name."""
        mean, components = fit_pca(vectors, self.components, self.seed)
        centroids = self._centroids(vectors, labels, mean, components, like)
        probes = residual_probes(components, self.probes, self.seed)
        low, high = vectors.min(axis=0), vectors.max(axis=0)
        return EmbeddingSpace(
            centroids, self.names, self.distance, mean, components, probes, low, high
        )

    def _centroids(
        self,
        x: F32,
        labels: npt.NDArray[np.str_] | None,
        mean: F32,
        components: F32,
        like: EmbeddingSpace | None,
    ) -> F32:
        if self.method == "pca-centroids":
            if labels is None:
                raise ReferenceError_("pca-centroids needs one label per row")
            return class_centroids(x, labels, self.names, mean, components)
        if self.method == "manual":
            if self.centroids is None:
                raise ReferenceError_("method manual needs a centroids matrix")
            return np.asarray(self.centroids, dtype=np.float32)
        clusters = len(self.names)
        if self.method not in ("kmeans", "pca-kmeans"):
            raise ReferenceError_(
                f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        if self.method == "kmeans":
            data = _unit_rows(x) if self.distance == "cosine" else x
            return kmeans_centroids(
                data, clusters, self.seed, None if like is None else like.centroids
            )
        coords = ((x - mean) @ components.T).astype(np.float32)
        start = (
            None if like is None else ((like.centroids - mean) @ components.T).astype(np.float32)
        )
        centres = kmeans_centroids(coords, clusters, self.seed, start)
        return (mean + centres @ components).astype(np.float32)


def cross_fitted_features(
    recipe: SpaceFit,
    space: EmbeddingSpace,
    vectors: F32,
    labels: npt.NDArray[np.str_] | None,
    folds: npt.NDArray[np.intp],
) -> EmbeddingFeatures:
    """Every row's features as a space fitted without the row's fold sees them.

    ``space`` is the recipe fitted on all rows. For each fold the recipe is fitted again on the
    other folds and scores the fold's rows: distances, closest centroid and residual as a new
    row would get them (not the smaller ones of a row the fit has seen), and the coordinates
    of its projection expressed in ``space``'s basis, so that they sum with live windows'.
    The probes are the fold space's own (the same random directions, made orthogonal to the
    fold's subspace): they read the residual a new row leaves, as the residual norm does.
    So is the range: a row is checked against the span of the other folds' rows.
    """
    n = vectors.shape[0]
    distances = np.empty((n, len(space.labels)), dtype=np.float32)
    closest = np.empty(n, dtype=np.intp)
    coords = np.empty((n, space.n_components), dtype=np.float32)
    residual = np.empty(n, dtype=np.float32)
    probed = np.empty((n, space.n_probes), dtype=np.float32)
    outside = np.empty((n, space.range_dims), dtype=np.bool_)
    for fold in np.unique(folds):
        out = folds == fold
        fold_space = recipe.fit(vectors[~out], None if labels is None else labels[~out], like=space)
        seen = fold_space.features(vectors[out])
        distances[out], closest[out], residual[out] = seen.distances, seen.closest, seen.residual
        coords[out], probed[out] = _in_basis(seen.coords, fold_space, space), seen.probed
        outside[out] = seen.outside
    return EmbeddingFeatures(distances, closest, coords, residual, probed, outside)


def _in_basis(coords: F32, source: EmbeddingSpace, target: EmbeddingSpace) -> F32:
    """Coordinates in ``source``'s subspace re-expressed in ``target``'s (the point
    ``source.mean + coords @ source.components``, projected onto ``target``)."""
    rotation = source.components @ target.components.T
    offset = (source.mean - target.mean) @ target.components.T
    return (coords @ rotation + offset).astype(np.float32)


def _unit_rows(x: F32) -> F32:
    """Rows scaled to unit length (zero rows stay zero): cosine k-means clusters directions."""
    norms: F32 = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return (x / norms).astype(np.float32)

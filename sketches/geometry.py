"""The reference embedding space: centroids, a PCA subspace, and per-event features in it.

Every event's embedding becomes a few numbers that sketches can summarise: its distance to
each reference centroid (cosine or euclidean, one matrix product), the closest centroid, its
coordinates in the reference PCA subspace, and its residual: the euclidean norm of the part of
``x - mean`` that the subspace does not explain (multivariate drift shows up here first when a
new kind of input arrives).

>>> import numpy as np
>>> space = EmbeddingSpace(
...     centroids=np.eye(2, dtype=np.float32), labels=("x", "y"), distance="cosine",
...     mean=np.zeros(2, np.float32), components=np.array([[1.0, 0.0]], np.float32))
>>> f = space.features(np.array([[2.0, 0.0], [0.0, 3.0]], np.float32))
>>> f.closest.tolist(), f.distances.round(3).tolist(), f.residual.tolist()
([0, 1], [[0.0, 1.0], [1.0, 0.0]], [0.0, 3.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .errors import ReferenceError_

__all__ = [
    "Distance",
    "EmbeddingFeatures",
    "EmbeddingSpace",
    "fit_pca",
    "kmeans_centroids",
    "pca_centroids",
]

Distance = Literal["cosine", "euclidean"]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbeddingFeatures:
    """Per-event numbers derived from embeddings; rows align with the input matrix."""

    distances: F32  # (n, centroids)
    closest: npt.NDArray[np.intp]  # (n,)
    coords: F32  # (n, components): coordinates in the reference PCA subspace
    residual: F32  # (n,): norm of the part off that subspace

    def __len__(self) -> int:
        return int(self.closest.shape[0])

    def take(self, rows: npt.NDArray[np.intp]) -> EmbeddingFeatures:
        return EmbeddingFeatures(
            self.distances[rows], self.closest[rows], self.coords[rows], self.residual[rows]
        )


@dataclass(frozen=True)
class EmbeddingSpace:
    """Centroids (with names), the distance to them, and the PCA subspace of the reference."""

    centroids: F32  # (C, d)
    labels: tuple[str, ...]
    distance: Distance
    mean: F32  # (d,)
    components: F32  # (k, d), orthonormal rows

    def __post_init__(self) -> None:
        if self.centroids.ndim != 2 or len(self.labels) != self.centroids.shape[0]:
            raise ReferenceError_("centroids must be a (C, d) matrix with one label per row")
        if self.components.shape[1] != self.dim or self.mean.shape != (self.dim,):
            raise ReferenceError_("PCA mean/components do not match the centroid dimension")
        if self.distance not in ("cosine", "euclidean"):
            raise ReferenceError_(f"unknown distance {self.distance!r}; use cosine or euclidean")

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def features(self, vectors: F32) -> EmbeddingFeatures:
        """Distances, closest centroid, PCA coordinates and residual of each row, vectorised.

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
            coords = (centred @ self.components.T).astype(np.float32)
            off = np.einsum("ij,ij->i", centred, centred) - np.einsum("ij,ij->i", coords, coords)
            residual = np.sqrt(np.maximum(off, 0.0)).astype(np.float32)
        closest = np.argmin(distances, axis=1).astype(np.intp)
        return EmbeddingFeatures(distances, closest, coords, residual)


def fit_pca(vectors: F32, n_components: int, seed: int = 0) -> tuple[F32, F32]:
    """Mean and orthonormal components of a PCA fitted on ``vectors`` (k capped by the data)."""
    from sklearn.decomposition import PCA  # here: loading scikit-learn takes seconds

    k = max(1, min(n_components, vectors.shape[0] - 1, vectors.shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit(vectors)
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


def pca_centroids(
    vectors: npt.ArrayLike, labels: npt.ArrayLike, n_components: int = 20
) -> tuple[F32, list[str]]:
    """Per-label means in PCA space mapped back to the embedding space.

    The same centroids as whylogs' ``PCACentroidsSelector(n_components).calculate_references``:
    fit a PCA on all rows, average each label's PCA coordinates, ``inverse_transform`` the
    means. Labels come back sorted (``np.unique`` order).
    """
    from sklearn.decomposition import PCA

    x = np.asarray(vectors)
    y = np.asarray(labels)
    if x.shape[0] != y.shape[0]:
        raise ReferenceError_(f"{x.shape[0]} vectors but {y.shape[0]} labels")
    pca = PCA(n_components=min(n_components, *x.shape))
    projected = pca.fit_transform(x)
    names = np.unique(y)
    means = np.stack([projected[y == name].mean(axis=0) for name in names])
    return pca.inverse_transform(means).astype(np.float32), [str(n) for n in names]


def kmeans_centroids(vectors: npt.NDArray[np.floating[Any]], clusters: int, seed: int = 0) -> F32:
    """K-means centroids (k-means++ init, several restarts) of ``vectors``."""
    from sklearn.cluster import KMeans

    if clusters < 1 or clusters > vectors.shape[0]:
        raise ReferenceError_(f"cannot find {clusters} clusters in {vectors.shape[0]} rows")
    model = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(vectors)
    return np.asarray(model.cluster_centers_, dtype=np.float32)

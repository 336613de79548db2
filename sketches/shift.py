"""Per-centroid running sums in the reference PCA subspace: the window's own centroids.

For every reference centroid ``c`` it keeps the number of events whose closest centroid is
``c``, the sum of their PCA coordinates and the sum of their squared norms, so a window's own
centroid (``sums[c] / counts[c]``) and spread can be compared with the reference's. Exact up to
float64 rounding; merge adds.

>>> import numpy as np
>>> s = CentroidSums(centroids=2, components=1)
>>> s.update(np.array([0, 0, 1]), np.array([[1.0], [3.0], [5.0]], np.float32))
>>> s.means().tolist()
[[2.0], [5.0]]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .errors import IncompatibleSketchError
from .serial import pack, reading, unpack

__all__ = ["CentroidSums"]


class CentroidSums:
    __slots__ = ("counts", "squares", "sums")

    def __init__(self, centroids: int, components: int) -> None:
        self.counts = np.zeros(centroids, dtype=np.int64)
        self.sums = np.zeros((centroids, components), dtype=np.float64)
        self.squares = np.zeros(centroids, dtype=np.float64)

    def update(self, closest: npt.NDArray[np.intp], coords: npt.NDArray[np.float32]) -> None:
        c = self.counts.shape[0]
        self.counts += np.bincount(closest, minlength=c)
        for component in range(self.sums.shape[1]):
            self.sums[:, component] += np.bincount(
                closest, weights=coords[:, component], minlength=c
            )
        self.squares += np.bincount(
            closest, weights=np.einsum("ij,ij->i", coords, coords).astype(np.float64), minlength=c
        )

    def merge(self, other: CentroidSums) -> CentroidSums:
        if other.sums.shape != self.sums.shape:
            raise IncompatibleSketchError("centroid sums differ in centroids or components")
        merged = CentroidSums(*self.sums.shape)
        merged.counts = self.counts + other.counts
        merged.sums = self.sums + other.sums
        merged.squares = self.squares + other.squares
        return merged

    def means(self) -> npt.NDArray[np.float64]:
        """Mean PCA coordinates per centroid (NaN rows where no event was closest)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts[:, None]

    def spread(self) -> float:
        """Root mean squared distance of events to their own centroid's mean."""
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        present = self.counts > 0
        within = (
            self.squares[present]
            - np.einsum("ij,ij->i", self.sums[present], self.sums[present]) / self.counts[present]
        )
        return float(np.sqrt(max(0.0, float(within.sum())) / total))

    def to_bytes(self) -> bytes:
        c, k = self.sums.shape
        blobs = [self.counts.tobytes(), self.sums.tobytes(), self.squares.tobytes()]
        return pack("centroid_sums", {"centroids": c, "components": k}, blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> CentroidSums:
        with reading("centroid_sums"):
            header, (counts, sums, squares) = unpack(data, "centroid_sums")
            c, k = int(header["centroids"]), int(header["components"])
            sketch = cls(c, k)
            sketch.counts = np.frombuffer(counts, dtype=np.int64).copy()
            sketch.sums = np.frombuffer(sums, dtype=np.float64).reshape(c, k).copy()
            sketch.squares = np.frombuffer(squares, dtype=np.float64).copy()
            return sketch

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CentroidSums) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

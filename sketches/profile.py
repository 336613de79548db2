"""WindowProfile: everything embmon keeps about one (model, segment, window), mergeable.

A profile is bound to one reference (its version travels with the bytes): distances of each
event to each reference centroid (one KLL per centroid), the closest centroid (exact counts),
the window's own centroids in the reference PCA subspace (exact sums), the residual off that
subspace (KLL), a bounded uniform sample of the events' PCA coordinates and residual probes
(bottom-k on a hash of each row, :mod:`sketches.sample`), the events outside the training
range (:mod:`sketches.ranges`), text statistics, the confusion matrix and the prediction mix.
Merging the profiles of a split stream gives the profile of the whole stream: exactly for
counts, sums and the sample (up to the last bits of coordinates BLAS computed in batches of
other shapes), within the KLL / frequent-items bounds for quantiles and term counts.

>>> import numpy as np
>>> from sketches.batch import EventBatch
>>> from sketches.geometry import EmbeddingSpace
>>> space = EmbeddingSpace(np.eye(2, dtype=np.float32), ("x", "y"), "cosine",
...                        np.zeros(2, np.float32), np.eye(2, dtype=np.float32))
>>> p = WindowProfile.empty(space, "v1")
>>> p.update(EventBatch.from_vectors([[1, 0], [0, 1], [1, 0.1]]))
>>> p.count, p.closest.counts()
(3, {'x': 2, 'y': 1})
>>> WindowProfile.from_bytes(p.to_bytes()).merge(p).count
6
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .batch import EventBatch
from .counts import CategoryCounts, ConfusionMatrix
from .errors import IncompatibleSketchError
from .geometry import EmbeddingFeatures, EmbeddingSpace
from .quantiles import QuantileSketch
from .ranges import RangeCounts
from .sample import DEFAULT_CAPACITY, CoordinateSample, row_keys
from .serial import pack, reading, unpack
from .shift import CentroidSums
from .text import TextFeatures, TextSketch, text_features

__all__ = ["WindowProfile"]


class WindowProfile:
    """The mergeable summary of one window of events against one reference."""

    __slots__ = (
        "_space",
        "centroid_labels",
        "closest",
        "confusion",
        "count",
        "distances",
        "invalid",
        "predictions",
        "ranges",
        "reference_version",
        "residual",
        "sample",
        "shift",
        "text",
    )

    def __init__(
        self,
        centroid_labels: tuple[str, ...],
        components: int,
        reference_version: str,
        sample_capacity: int = DEFAULT_CAPACITY,
        probes: int = 0,
        range_dims: int = 0,
    ):
        self._space: EmbeddingSpace | None = None
        self.centroid_labels = centroid_labels
        self.reference_version = reference_version
        self.count = 0
        self.invalid = 0
        self.distances = QuantileSketch(len(centroid_labels))
        self.closest = CategoryCounts()
        self.shift = CentroidSums(len(centroid_labels), components)
        self.residual = QuantileSketch(1)
        self.sample = CoordinateSample(components + probes, sample_capacity)
        self.ranges = RangeCounts(range_dims)
        self.text = TextSketch()
        self.confusion = ConfusionMatrix()
        self.predictions = CategoryCounts()

    @classmethod
    def empty(
        cls, space: EmbeddingSpace, reference_version: str, sample_capacity: int = DEFAULT_CAPACITY
    ) -> WindowProfile:
        """The identity for ``merge``, able to ``update`` from raw embeddings of ``space``."""
        profile = cls(
            space.labels,
            space.n_components,
            reference_version,
            sample_capacity,
            space.n_probes,
            space.range_dims,
        )
        profile._space = space
        return profile

    @property
    def space(self) -> EmbeddingSpace | None:
        """The reference space this profile can ``update`` from (None when read from bytes)."""
        return self._space

    def update(self, batch: EventBatch) -> None:
        """Add a batch of events. Rows whose features are not finite are counted as invalid."""
        if self._space is None:
            raise IncompatibleSketchError(
                "this profile was read from bytes; create one with WindowProfile.empty(space, "
                "version) to add events, then merge"
            )
        if len(batch) == 0:
            return
        keys = row_keys(batch.embeddings)
        probe_rows = np.flatnonzero(self.sample.entering(keys))  # the rest cannot be sampled
        features = self._space.features(batch.embeddings, probe_rows)
        if not np.isfinite(features.residual).all():  # the cheap test; exact one if it fails
            # NaN/Inf inputs, and finite ones so large that their squares overflow float32
            finite = (
                np.isfinite(features.residual)
                & np.isfinite(features.distances).all(axis=1)
                & np.isfinite(features.coords).all(axis=1)
                & np.isfinite(features.probed).all(axis=1)
            )
            if not finite.all():
                self.invalid += int((~finite).sum())
                rows = np.flatnonzero(finite)
                batch, features, keys = batch.take(rows), features.take(rows), keys[rows]
        if len(batch) == 0:
            return
        self.update_features(
            features,
            keys,
            text=None if batch.tokens is None else text_features(batch.tokens),
            predictions=batch.predictions,
            targets=batch.targets,
        )

    def update_features(
        self,
        features: EmbeddingFeatures,
        keys: npt.NDArray[np.uint64],
        *,
        text: TextFeatures | None = None,
        predictions: Sequence[str | None] | None = None,
        targets: Sequence[str | None] | None = None,
    ) -> None:
        """Add precomputed per-event features, their rows' sample priorities
        (:func:`sketches.sample.row_keys` of the embeddings) and the events' other columns.

        Calibration samples thousands of windows from the same rows; computing the features
        once and sampling them is what makes that affordable.
        """
        n = len(features)
        self.count += n
        self.distances.update(features.distances)
        labels = self.centroid_labels
        self.closest.update_counts(labels, np.bincount(features.closest, minlength=len(labels)))
        self.shift.update(features.closest, features.coords)
        self.residual.update(features.residual)
        self.sample.update(keys, features.sample_rows())
        self.ranges.update(features.outside)
        if text is not None:
            self.text.update_features(text)
        if predictions is not None:
            self.predictions.update(p for p in predictions if p is not None)
            if targets is not None:
                self.confusion.update(targets, predictions)

    def merge(self, other: WindowProfile) -> WindowProfile:
        """A new profile of both windows' events; neither input changes."""
        if other.reference_version != self.reference_version:
            raise IncompatibleSketchError(
                f"cannot merge profiles of different references ({self.reference_version} vs "
                f"{other.reference_version}); re-profile one side against the other's reference"
            )
        merged = WindowProfile(
            self.centroid_labels, self.shift.sums.shape[1], self.reference_version
        )
        merged._space = self._space or other._space
        merged.count = self.count + other.count
        merged.invalid = self.invalid + other.invalid
        merged.distances = self.distances.merge(other.distances)
        merged.closest = self.closest.merge(other.closest)
        merged.shift = self.shift.merge(other.shift)
        merged.residual = self.residual.merge(other.residual)
        merged.sample = self.sample.merge(other.sample)
        merged.ranges = self.ranges.merge(other.ranges)
        merged.text = self.text.merge(other.text)
        merged.confusion = self.confusion.merge(other.confusion)
        merged.predictions = self.predictions.merge(other.predictions)
        return merged

    def distance_quantiles(self, ranks: tuple[float, ...]) -> dict[str, npt.NDArray[np.float64]]:
        """Per centroid, the distance values at ``ranks`` (empty dict for an empty window)."""
        if self.count == 0:
            return {}
        return {
            label: self.distances.quantiles(i, ranks)
            for i, label in enumerate(self.centroid_labels)
        }

    def to_bytes(self) -> bytes:
        header = {
            "labels": list(self.centroid_labels),
            "components": int(self.shift.sums.shape[1]),
            "reference": self.reference_version,
            "count": self.count,
            "invalid": self.invalid,
        }
        parts = [
            self.distances.to_bytes(),
            self.closest.to_bytes(),
            self.shift.to_bytes(),
            self.residual.to_bytes(),
            self.text.to_bytes(),
            self.confusion.to_bytes(),
            self.predictions.to_bytes(),
            self.sample.to_bytes(),
            self.ranges.to_bytes(),
        ]
        return pack("window_profile", header, parts)

    @classmethod
    def from_bytes(cls, data: bytes, space: EmbeddingSpace | None = None) -> WindowProfile:
        """Read a profile; pass the reference's space to be able to ``update`` it further."""
        with reading("window_profile"):
            header, blobs = unpack(data, "window_profile")
            distances, closest, shift, residual, text, confusion, predictions, *rest = blobs
            profile = cls(
                tuple(header["labels"]), int(header["components"]), str(header["reference"])
            )
            profile._space = space
            profile.count = int(header["count"])
            profile.invalid = int(header["invalid"])
            profile.distances = QuantileSketch.from_bytes(distances)
            profile.closest = CategoryCounts.from_bytes(closest)
            profile.shift = CentroidSums.from_bytes(shift)
            profile.residual = QuantileSketch.from_bytes(residual)
            profile.text = TextSketch.from_bytes(text)
            profile.confusion = ConfusionMatrix.from_bytes(confusion)
            profile.predictions = CategoryCounts.from_bytes(predictions)
            # profiles written before the sample or the range existed lack them: empty ones
            if len(rest) > 2:
                raise ValueError(f"{len(blobs)} parts, at most 9 expected")
            if rest:
                profile.sample = CoordinateSample.from_bytes(rest[0])
            if len(rest) == 2:
                profile.ranges = RangeCounts.from_bytes(rest[1])
            return profile

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WindowProfile) and all(
            getattr(self, name) == getattr(other, name)
            for name in WindowProfile.__slots__
            if name != "_space"
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WindowProfile(count={self.count}, reference={self.reference_version!r})"

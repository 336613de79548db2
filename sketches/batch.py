"""Columnar batch of decoded inference events: the unit every sketch's ``update`` takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["EventBatch"]

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EventBatch:
    """Events of one (model, segment) already decoded and validated.

    Rows are aligned: row ``i`` of ``embeddings`` is the event with ``timestamps[i]``,
    ``tokens[i]``, ``predictions[i]`` and ``targets[i]``. Optional columns are ``None``
    when no event of the batch carries them; inside a column a missing value is ``None``.

    >>> import numpy as np
    >>> b = EventBatch(np.zeros((2, 3), np.float32), np.array([0.0, 1.0]), predictions=["a", None])
    >>> len(b), b.dim
    (2, 3)
    >>> len(b.take(np.array([1])))
    1
    """

    embeddings: FloatMatrix
    timestamps: npt.NDArray[np.float64]
    tokens: Sequence[Sequence[str] | None] | None = None
    predictions: Sequence[str | None] | None = None
    targets: Sequence[str | None] | None = None

    def __post_init__(self) -> None:
        n = self.embeddings.shape[0]
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be a 2-d matrix, got shape {self.embeddings.shape}")
        if self.timestamps.shape != (n,):
            raise ValueError(f"timestamps must have shape ({n},), got {self.timestamps.shape}")
        for name in ("tokens", "predictions", "targets"):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise ValueError(f"{name} has {len(column)} values for {n} embeddings")

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def take(self, rows: npt.NDArray[np.intp]) -> EventBatch:
        """The sub-batch of the given row indices (in that order)."""
        picked = rows.tolist()
        return EventBatch(
            embeddings=self.embeddings[rows],
            timestamps=self.timestamps[rows],
            tokens=None if self.tokens is None else [self.tokens[i] for i in picked],
            predictions=None if self.predictions is None else [self.predictions[i] for i in picked],
            targets=None if self.targets is None else [self.targets[i] for i in picked],
        )

    @classmethod
    def from_vectors(cls, vectors: npt.ArrayLike, timestamp: float = 0.0) -> EventBatch:
        """A batch of bare vectors sharing one timestamp (tests, references, benchmarks)."""
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        return cls(matrix, np.full(matrix.shape[0], timestamp, dtype=np.float64))

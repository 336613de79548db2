"""Feeding a window profile one event at a time, as a service does per request.

A ``WindowProfile.update`` call has a fixed cost of some 40 numpy calls, the same for 1 row as
for 5,000, so a per-request path that updates a profile with each event spends almost all of
its time on that overhead. ``BufferedProfile`` copies each event into a preallocated block and
hands full blocks to the profile: the per-event cost becomes a row copy. Every read
(``profile``) flushes first, so what is read always includes every event added.

>>> import numpy as np
>>> from sketches.geometry import EmbeddingSpace
>>> from sketches.profile import WindowProfile
>>> space = EmbeddingSpace(np.eye(2, dtype=np.float32), ("x", "y"), "cosine",
...                        np.zeros(2, np.float32), np.eye(2, dtype=np.float32))
>>> buffered = BufferedProfile(WindowProfile.empty(space, "v1"), block=2)
>>> for v in ([1, 0], [0, 1], [1, 0.1]):
...     buffered.add(np.array(v, np.float32), prediction="a")
>>> buffered.profile.count, buffered.profile.closest.counts()
(3, {'x': 2, 'y': 1})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from .batch import EventBatch
from .errors import IncompatibleSketchError
from .profile import WindowProfile

__all__ = ["BufferedProfile"]

_T = TypeVar("_T")


class BufferedProfile:
    """A :class:`WindowProfile` that takes single events and updates in blocks of ``block``."""

    __slots__ = ("_n", "_predictions", "_profile", "_rows", "_targets", "_times", "_tokens")

    def __init__(self, profile: WindowProfile, block: int = 512) -> None:
        if profile.space is None:
            raise IncompatibleSketchError(
                "buffer a profile made by WindowProfile.empty(space, ...)"
            )
        if block < 1:
            raise ValueError(f"block must be at least 1, got {block}")
        self._profile = profile
        self._rows = np.empty((block, profile.space.dim), dtype=np.float32)
        self._times = np.zeros(block, dtype=np.float64)
        self._tokens: list[Sequence[str] | None] = []
        self._predictions: list[str | None] = []
        self._targets: list[str | None] = []
        self._n = 0

    def add(
        self,
        embedding: npt.ArrayLike,
        *,
        timestamp: float = 0.0,
        tokens: Sequence[str] | None = None,
        prediction: str | None = None,
        target: str | None = None,
    ) -> None:
        """Add one event (its embedding must have the reference's dimension)."""
        n = self._n
        self._rows[n] = embedding
        self._times[n] = timestamp
        self._tokens.append(tokens)
        self._predictions.append(prediction)
        self._targets.append(target)
        self._n = n + 1
        if self._n == self._rows.shape[0]:
            self._flush()

    @property
    def profile(self) -> WindowProfile:
        """The profile of every event added so far."""
        self._flush()
        return self._profile

    def _flush(self) -> None:
        n = self._n
        if n == 0:
            return
        batch = EventBatch(
            self._rows[:n].copy(),
            self._times[:n].copy(),
            tokens=_column(self._tokens),
            predictions=_column(self._predictions),
            targets=_column(self._targets),
        )
        self._n = 0
        self._tokens, self._predictions, self._targets = [], [], []
        self._profile.update(batch)


def _column(values: list[_T]) -> list[_T] | None:
    """``None`` for a column no event of the block carries (the batch convention)."""
    return values if any(v is not None for v in values) else None

"""The keys and values of windowing: a window's key, a closed window, the outcome of an add.

Also what the window store needs of a batch and of a profile, as protocols, so the store can be
tested with tiny stand-ins and never depends on the sketches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from exporters.records import SegmentKey

__all__ = ["AddResult", "B", "Batch", "ClosedWindow", "P", "Profile", "WindowKey"]


class Batch(Protocol):
    """Decoded rows of one (model, segment): ``sketches.batch.EventBatch`` is one."""

    @property
    def timestamps(self) -> npt.NDArray[np.float64]: ...

    def __len__(self) -> int: ...

    def take(self, rows: npt.NDArray[np.intp]) -> Self: ...


class Profile(Protocol):
    """What the store needs of a window profile: ``sketches.profile.WindowProfile`` is one.

    ``update`` changes the profile in place; ``merge`` is pure.
    """

    @property
    def count(self) -> int: ...

    def update(self, batch: Any) -> object: ...

    def merge(self, other: Self) -> Self: ...


P = TypeVar("P", bound=Profile)
B = TypeVar("B", bound=Batch)


class WindowKey(NamedTuple):
    """A window of one model and segment; ``start`` in epoch seconds."""

    model: str
    segment: SegmentKey
    start: int

    @classmethod
    def of(cls, model: str, segment: SegmentKey, start: datetime) -> WindowKey:
        """The key of the window of ``model`` and ``segment`` starting at ``start``."""
        if start.tzinfo is None:
            raise ValueError(f"window start {start!r} must be timezone-aware (UTC)")
        return cls(model, segment, math.floor(start.timestamp()))


@dataclass(frozen=True)
class ClosedWindow(Generic[P]):
    """A closed window, its final profile (merged over partitions), and the smallest offset
    of its events in each partition (what its commit must not pass until it is persisted)."""

    key: WindowKey
    end: int
    profile: P
    min_offsets: Mapping[tuple[str, int], int] = field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )

    @property
    def start_time(self) -> datetime:
        return datetime.fromtimestamp(self.key.start, UTC)

    @property
    def end_time(self) -> datetime:
        return datetime.fromtimestamp(self.end, UTC)

    @property
    def events(self) -> int:
        return self.profile.count


@dataclass(frozen=True)
class AddResult:
    """How the rows of one ``add`` were accounted for: ``added + late + skipped + refused +
    again`` is the rows given, and ``folded`` is part of ``added``.

    ``again`` counts rows this store had already counted (read again after a revocation of
    its own); they are routed like any row but counted only there. Of the others: ``added``
    to windows (``folded`` of them under ``other``, see ``agent.window_caps``), ``late``,
    ``skipped`` (re-reads of persisted windows) or ``refused`` (no room for another window).
    """

    added: int = 0
    late: int = 0
    skipped: int = 0
    refused: int = 0
    folded: int = 0
    again: int = 0

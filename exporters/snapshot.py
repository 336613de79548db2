"""What the agent has counted and closed at one instant, as plain data.

:mod:`agent.accounting` makes a :class:`Snapshot`; :mod:`exporters.prometheus` renders it. Kept
apart from the exporter so that what only counts (``embmon replay``, the accounting) does not
load ``prometheus_client``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .records import WindowRecord

__all__ = ["DeadLetterCounts", "ProfileCounts", "Snapshot"]


@dataclass(frozen=True)
class DeadLetterCounts:
    """What became of the rejected records meant for the dead-letter topic (``agent.dead_letters``).

    Every record handed over is in exactly one of: ``sent`` (acknowledged by the broker),
    ``dropped_rate`` (over the rate, never sent), ``dropped_undeliverable`` (the producer gave up
    on it) or ``pending`` (in flight).
    """

    sent: int = 0
    dropped_rate: int = 0
    dropped_undeliverable: int = 0
    pending: int = 0


@dataclass(frozen=True)
class ProfileCounts:
    """Partial window profiles of the scaled layout (``embmon run --role collector|evaluator``).

    A collector counts ``published`` (partial profiles it published to the profiles topic); an
    evaluator counts ``merged`` (partials merged into their windows), ``duplicate`` (partials
    dropped as already merged: a collector published one again after a crash or a refused
    commit), ``late`` (partials of windows already emitted complete: dropped, their events
    counted late) and ``pending`` (partials received, waiting for their seal or for a gap before
    them). A side that is None is not this member's: its metric families are not exported.
    """

    published: int | None = None
    merged: int | None = None
    duplicate: int | None = None
    late: int | None = None
    pending: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """What the agent has counted and closed at one instant (``agent.accounting`` makes it)."""

    version: str
    reference_version: str
    reference_f1: float | None
    window_seconds: float
    lateness_seconds: float
    events: Mapping[str, int]
    rejected: Mapping[str, int]
    replayed: int
    windows_closed: Mapping[str, int]
    latest: tuple[WindowRecord, ...]
    lag: Mapping[tuple[str, int], int]
    open_windows: int
    watermark: float | None
    folded: int = 0
    persist_errors: int = 0
    held_windows: int = 0
    dead_letters: DeadLetterCounts | None = None
    """None when there is no dead-letter topic (a replay, or ``dead_letter_topic`` unset)."""
    profiles: ProfileCounts | None = None
    """None but in the scaled layout's collectors and evaluators (see :class:`ProfileCounts`)."""
    partitions_owned: int | None = None
    """Partitions this member holds; None until the agent first says (a replay never does)."""

"""Bounds on what the open windows hold: models, segments per model, and windows.

Hostile or broken traffic (a new model name per request, a segment keyed by user id, events
spread over thousands of windows) must not grow the agent's memory without bound. The caps
hold in the window state itself, not only in the exported labels:

* a model beyond ``max_models`` distinct models with open windows is windowed as ``other``;
* per model, a segment beyond ``max_segments`` is windowed with every value set to ``other``;
* an event that would open a window beyond ``max_windows`` open ones is refused.

Folded events stay counted and monitored (in the ``other`` windows); refused ones are
rejected under ``too_many_windows``. A model or segment leaves the count when its last
window closes, so the caps bound what is open at once, first come, first served.

>>> keys = OpenKeys(Caps(max_models=1, max_segments=1, max_windows=10))
>>> none = SegmentKey()
>>> keys.admit("a", none)
('a', SegmentKey(pairs=()), False)
>>> keys.opened(WindowKey("a", none, 0))
>>> keys.admit("b", none)
('other', SegmentKey(pairs=()), True)
>>> keys.admit("a", SegmentKey.of({"user": "u1"}))
('a', SegmentKey(pairs=(('user', 'other'),)), True)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from agent.window_types import WindowKey
from exporters.records import SegmentKey

__all__ = ["OTHER", "Caps", "OpenKeys"]

OTHER = "other"
"""The model name, and segment value, that folded events are windowed under (as in labels)."""


@dataclass(frozen=True)
class Caps:
    """Limits on the open window state (see the module docstring); each must be >= 1."""

    max_models: int = 50
    max_segments: int = 50
    max_windows: int = 5000

    def __post_init__(self) -> None:
        for name in ("max_models", "max_segments", "max_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class OpenKeys:
    """The keys of the open windows (each held by one or more partitions), under ``caps``."""

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self._holders: Counter[WindowKey] = Counter()
        self._segments: dict[str, Counter[SegmentKey]] = {}

    def __len__(self) -> int:
        return len(self._holders)

    def __contains__(self, key: object) -> bool:
        return key in self._holders

    def admit(self, model: str, segment: SegmentKey) -> tuple[str, SegmentKey, bool]:
        """The (model, segment) to window events of ``model``/``segment`` under, and whether
        that is a fold."""
        folded = False
        if model not in self._segments and len(self._segments) >= self.caps.max_models:
            model, folded = OTHER, True
        segments = self._segments.get(model, Counter())
        if segment not in segments and len(segments) >= self.caps.max_segments:
            segment, folded = SegmentKey(tuple((k, OTHER) for k, _ in segment.pairs)), True
        return model, segment, folded

    def has_room(self) -> bool:
        """Whether one more window may open."""
        return len(self._holders) < self.caps.max_windows

    def opened(self, key: WindowKey) -> None:
        """One more partition holds a window of ``key``."""
        self._holders[key] += 1
        if self._holders[key] == 1:
            self._segments.setdefault(key.model, Counter())[key.segment] += 1

    def closed(self, key: WindowKey) -> None:
        """One partition's window of ``key`` closed or was dropped."""
        self._holders[key] -= 1
        if self._holders[key] > 0:
            return
        del self._holders[key]
        segments = self._segments[key.model]
        segments[key.segment] -= 1
        if segments[key.segment] == 0:
            del segments[key.segment]
            if not segments:
                del self._segments[key.model]

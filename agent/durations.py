"""Durations as users write them: ``30s``, ``5m``, ``1h``, ``1d``, ``7d``."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["parse_duration"]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(text: str) -> timedelta:
    """A duration from ``<number><unit>``, unit one of ms, s, m, h, d, w; ``"0"`` is zero.

    >>> parse_duration("30s"), parse_duration("5m"), parse_duration("7d")
    (datetime.timedelta(seconds=30), datetime.timedelta(seconds=300), datetime.timedelta(days=7))
    >>> parse_duration("1.5h")
    datetime.timedelta(seconds=5400)
    """
    if text.strip() == "0":
        return timedelta(0)
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"cannot read duration {text!r}: write a number and a unit, "
            "e.g. 30s, 5m, 1h, 1d, 7d (units: ms, s, m, h, d, w)"
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])

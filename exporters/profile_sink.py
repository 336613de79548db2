"""Closed window profiles kept as bytes, for later merging, re-evaluation or backfill.

Layout: ``DIR/profiles/<model>/<segment or _>/<window start>.bin``; each file is written to a
temporary name, fsynced and renamed, so a file that exists is complete.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sketches.profile import WindowProfile

from .records import format_time

__all__ = ["ProfileSink"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,-]")


def _safe(part: str) -> str:
    return _UNSAFE.sub("_", part) or "_"


class ProfileSink:
    def __init__(self, directory: str | Path) -> None:
        self.root = Path(directory) / "profiles"

    def path_for(self, model: str, segment: str, start: float) -> Path:
        """Where the profile of (model, segment label, window start) lives."""
        name = format_time(start).replace(":", "")
        return self.root / _safe(model) / _safe(segment) / f"{name}.bin"

    def write(self, model: str, segment: str, start: float, profile: WindowProfile) -> Path:
        path = self.path_for(model, segment, start)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(profile.to_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return path

    def read(self, model: str, segment: str, start: float) -> WindowProfile:
        return WindowProfile.from_bytes(self.path_for(model, segment, start).read_bytes())

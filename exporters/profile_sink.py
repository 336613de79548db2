"""Closed window profiles kept as bytes, for later merging, re-evaluation or backfill.

Layout: ``DIR/profiles/<model>/<segment or _>/<window start>.bin``. Each name part is a
readable slug of the name (at most 48 safe characters) plus a hash of the exact name, so names
never collide (``a/b`` and ``a_b`` differ), never leave ``profiles/`` (``..`` is a slug like
any other) and stay short whatever the name. Each file is written to a temporary name,
fsynced and renamed, so a file that exists is complete.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from sketches.profile import WindowProfile

from .records import SegmentKey, format_time

__all__ = ["ProfileSink", "safe_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_=,-]+")
_SLUG_CHARS = 48


def safe_name(name: str) -> str:
    """A file-name part for ``name``: a slug, ``~``, and 10 hex digits of its hash.

    >>> safe_name("news"), safe_name("a/b") != safe_name("a_b"), safe_name("..")[:3]
    ('news~757878ea4b', True, '_~7')
    """
    slug = _UNSAFE.sub("_", name)[:_SLUG_CHARS] or "_"
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()
    return f"{slug}~{digest}"


class ProfileSink:
    """Writes and reads the profiles of closed windows under ``DIR/profiles``."""

    def __init__(self, directory: str | Path) -> None:
        self.root = Path(directory) / "profiles"

    def path_for(self, model: str, segment: SegmentKey, start: float) -> Path:
        """Where the profile of (model, segment, window start) lives."""
        name = format_time(start).replace(":", "")
        return self.root / safe_name(model) / safe_name(segment.label) / f"{name}.bin"

    def write(self, model: str, segment: SegmentKey, start: float, profile: WindowProfile) -> Path:
        path = self.path_for(model, segment, start)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(profile.to_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return path

    def read(self, model: str, segment: SegmentKey, start: float) -> WindowProfile:
        return WindowProfile.from_bytes(self.path_for(model, segment, start).read_bytes())

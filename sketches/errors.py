"""The one small error hierarchy of embmon; messages say what was wrong and what to do."""

from __future__ import annotations

__all__ = [
    "EmbmonError",
    "FormatError",
    "IncompatibleSketchError",
    "ReferenceError_",
]


class EmbmonError(Exception):
    """Base class of every error embmon raises on purpose."""


class IncompatibleSketchError(EmbmonError, ValueError):
    """Two sketches or profiles cannot be merged (different parameters or reference)."""


class FormatError(EmbmonError, ValueError):
    """Bytes or files are not in a format (or format version) this embmon can read."""


class ReferenceError_(EmbmonError, ValueError):
    """A reference cannot be built or loaded from what was given."""

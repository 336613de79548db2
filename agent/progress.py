"""Progress on stderr for steps that take more than a moment.

On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints at most one line per
``every`` seconds, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``update(done)`` as work advances, ``finish()`` at the end.

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress("reading", total=4, stream=out, every=0)
    >>> p.update(2); p.finish()
    >>> "reading" in out.getvalue() and "100%" in out.getvalue()
    True
    """

    def __init__(
        self,
        label: str,
        total: float | None = None,
        unit: str = "",
        stream: TextIO | None = None,
        every: float = 5.0,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.every = every
        self._start = time.monotonic()
        self._last = -float("inf")
        self._done = 0.0
        self._tty = self.stream.isatty()
        self._drawn: tuple[float, str] | None = None

    def update(self, done: float, note: str = "") -> None:
        self._done = done
        now = time.monotonic()
        if now - self._last < (0.1 if self._tty else self.every):
            return
        self._last = now
        self._draw(note)

    def finish(self, note: str = "") -> None:
        if self.total is not None:
            self._done = self.total
        if self._tty or self._drawn != (self._done, note):
            self._draw(note)
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, note: str) -> None:
        elapsed = time.monotonic() - self._start
        if self.total:
            share = min(1.0, self._done / self.total)
            bar = "#" * int(share * 24)
            text = f"{self.label} [{bar:<24}] {share:4.0%}"
        else:
            text = f"{self.label} {self._done:,.0f}{self.unit}"
        text += f" {elapsed:5.1f}s {note}".rstrip()
        self._drawn = (self._done, note)
        self.stream.write(("\r" + text) if self._tty else text + "\n")
        self.stream.flush()

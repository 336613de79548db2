"""``windows.jsonl``: the output log of closed windows, and its readers.

A key (model, segment, window start) may have several lines: an evaluator of the scaled layout
emits a window it could not complete in its grace period as a partial record, then emits it
again when the missing part arrives. :func:`read_windows` gives every line (what was emitted,
when); :func:`latest_windows` gives the last record of each key (what a window now shows), which
is what every display reads.

Appends are one ``write`` of whole lines followed by ``fsync``. After a crash the file may end
in a torn line; opening the log cuts it off, so every line in the file is a whole record. The
log is an output only: which windows are persisted is the agent's own state
(``agent.ledger``), never read back from here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from .records import SegmentKey, WindowRecord

__all__ = ["WindowsLog", "append_lines", "last_per_key", "latest_windows", "read_windows"]


def read_windows(path: str | Path) -> Iterator[WindowRecord]:
    """Every complete record of a windows.jsonl file, in file order (a torn last line is ignored)."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n") and line.strip():
                yield WindowRecord.from_json(orjson.loads(line))


def latest_windows(path: str | Path) -> list[WindowRecord]:
    """The last record of each key (model, segment, window start) of a windows.jsonl file.

    See :func:`last_per_key` for the order.
    """
    return last_per_key(read_windows(path))


def last_per_key(records: Iterable[WindowRecord]) -> list[WindowRecord]:
    """The last of each key's records, the keys in the order of their first appearance.

    Last, because a key's later record supersedes its earlier ones (a partial window
    re-evaluated with its missing part, or with more of it). First appearance, because that is
    the order windows were first emitted: a re-evaluation replaces its window where it stood
    rather than moving it to the end, so the order does not depend on how many times a window
    was re-evaluated nor on when its missing part arrived, and a log with one line per key
    comes out exactly as :func:`read_windows` gives it.

    >>> from sketches.drift import DriftResult
    >>> def rec(start: int, events: int, complete: bool) -> WindowRecord:
    ...     drift = {"closest_centroid": DriftResult("hellinger", 0.1, 0.2, False)}
    ...     return WindowRecord("m", SegmentKey(), start, start + 60, events, drift, {}, {}, "r",
    ...                         complete=complete)
    >>> log = [rec(0, 5, False), rec(60, 9, True), rec(0, 8, True)]
    >>> [(r.start, r.events, r.complete) for r in last_per_key(log)]
    [(0, 8, True), (60, 9, True)]
    """
    latest: dict[tuple[str, SegmentKey, int], WindowRecord] = {}
    for record in records:
        latest[record.key] = record  # a dict keeps a key where it was first inserted
    return list(latest.values())


class WindowsLog:
    """Append-only, crash-safe ``windows.jsonl`` in an output directory."""

    def __init__(self, directory: str | Path, filename: str = "windows.jsonl") -> None:
        self.path = Path(directory) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
                os.fsync(handle.fileno())

    def append(self, records: Iterable[WindowRecord]) -> None:
        """Persist records durably (one write, then fsync)."""
        append_lines(self.path, (orjson.dumps(r.to_json()) for r in records))


def append_lines(path: Path, lines: Iterable[bytes]) -> None:
    """Append whole lines in one ``write``, then fsync: after a crash, at most a torn last line;
    after an error, nothing."""
    payload = b"".join(line + b"\n" for line in lines)
    if not payload:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            # A short write (a full disk) must not leave a torn line for the next append to
            # run into: cut back to where this one started, then let the caller retry.
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)

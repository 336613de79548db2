"""``windows.jsonl``: the output log of closed windows, and its one reader.

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

from .records import WindowRecord

__all__ = ["WindowsLog", "append_lines", "read_windows"]


def read_windows(path: str | Path) -> Iterator[WindowRecord]:
    """Every complete record of a windows.jsonl file, in file order (a torn last line is ignored)."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n") and line.strip():
                yield WindowRecord.from_json(orjson.loads(line))


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

"""``windows.jsonl``: append closed windows durably, and read back which windows are closed.

Appends are one ``write`` of whole lines followed by ``fsync``, and happen before the Kafka
offsets they cover are committed. After a crash the file may end in a torn line; opening the
log cuts it off, so every line in the file is a window that was fully persisted. The set of
window keys in the file is the agent's ledger: re-read events of those windows are already
counted and must not be added again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from .records import parse_time, segment_label

__all__ = ["WindowsLog", "read_records", "record_key"]


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a windows.jsonl file (a torn last line is ignored)."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n") and line.strip():
                yield orjson.loads(line)


def record_key(record: dict[str, Any]) -> tuple[str, str, int]:
    """(model, segment label, window start in epoch seconds): the ledger key of a record."""
    segment = tuple((str(k), str(v)) for k, v in record.get("segment", {}).items())
    start = parse_time(str(record["window_start"]))
    return str(record["model"]), segment_label(segment), int(start)


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

    def closed_keys(self) -> set[tuple[str, str, int]]:
        """Keys of every window already persisted here."""
        if not self.path.exists():
            return set()
        return {record_key(record) for record in read_records(self.path)}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Persist records durably (one write, then fsync) before anything acknowledges them."""
        payload = b"".join(
            orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in records
        )
        if not payload:
            return
        with open(self.path, "ab") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

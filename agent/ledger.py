"""The agent's own record of which windows it has persisted: ``OUT/state/ledger.jsonl``.

Re-read events of a window in the ledger are already counted and must not be added again
(``agent.windows`` says why this keeps counts exact across crashes). The ledger is state, not
output: ``windows.jsonl`` is never read back to decide what was counted, so a run into a fresh
``--out`` starts fresh and a re-run into a used one says so (:func:`prepare_out`).

A window is persisted in this order: its profile file, its ledger line, its ``windows.jsonl``
line; offsets are committed after all three. A crash between the ledger and the log leaves a
window that the ledger has and the log lacks: :meth:`WindowLedger.missing_from` finds it, and
the pipeline writes its record again from the saved profile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import orjson

from exporters.records import SegmentKey
from exporters.windows_log import append_lines, read_windows
from sketches.errors import EmbmonError

from .windows import WindowKey

__all__ = ["OutputInUseError", "WindowLedger", "prepare_out"]

_STATE = "state"
_OUTPUTS = ("windows.jsonl", "profiles", _STATE)


class OutputInUseError(EmbmonError):
    """``--out`` already holds an earlier run's windows and no flag says what to do."""


class WindowLedger:
    """Append-only, fsynced keys of persisted windows; a torn last line is not a key."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / _STATE / "ledger.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def keys(self) -> list[WindowKey]:
        """Every persisted window, in the order persisted."""
        if not self.path.exists():
            return []
        keys = []
        with open(self.path, "rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    entry = orjson.loads(line)
                    keys.append(
                        WindowKey(entry["model"], SegmentKey.of(entry["segment"]), entry["start"])
                    )
        return keys

    def append(self, keys: Iterable[WindowKey]) -> None:
        append_lines(
            self.path,
            (
                orjson.dumps({"model": k.model, "segment": k.segment.as_dict(), "start": k.start})
                for k in keys
            ),
        )

    def missing_from(self, log: str | Path) -> list[WindowKey]:
        """Persisted windows whose record a crash kept out of the ``windows.jsonl`` at ``log``
        (a partial record of the window does not count: the ledger holds final windows)."""
        keys = self.keys()
        if not keys:
            return []
        logged = set()
        if Path(log).exists():
            logged = {WindowKey(*r.key) for r in read_windows(log) if r.complete}
        return [key for key in keys if key not in logged]


def prepare_out(out_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Make ``out_dir`` ready for a run; refuse to mix a new run into an earlier one's output.

    ``overwrite`` removes the earlier run's windows, profiles and state; ``resume`` keeps them
    and continues (windows already persisted are not emitted again).
    """
    if overwrite and resume:
        raise EmbmonError("--overwrite and --resume exclude each other: choose one")
    out = Path(out_dir)
    used = [name for name in _OUTPUTS if (out / name).exists()]
    if used and overwrite:
        for name in used:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    elif used and not resume:
        raise OutputInUseError(
            f"{out} already holds the output of an earlier run ({', '.join(used)}): pass "
            "--overwrite to replace it, or --resume to continue that run"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out

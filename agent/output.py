"""Where closed windows go: the profile file, the ledger line, the ``windows.jsonl`` record.

Both the single process (``agent.pipeline``) and the evaluator (``agent.evaluator``) persist
through this, in this order (``agent.ledger`` says why), so their outputs cannot differ in
kind. A *partial* window (the evaluator's, past its grace period) gets its profile file and its
record but no ledger line: it is not final, a later record of it supersedes it. A window that
fails to persist is handed back, for the caller to hold and try again after ``retry_every_s``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from exporters.profile_sink import ProfileSink
from exporters.records import WindowRecord
from exporters.windows_log import WindowsLog
from sketches.drift import evaluate
from sketches.profile import WindowProfile
from sketches.reference import Reference

from .accounting import Accounting
from .ledger import WindowLedger
from .window_types import ClosedWindow, WindowKey

__all__ = ["WindowOutput"]

log = logging.getLogger("embmon")
_LOGGED = 5


class WindowOutput:
    """Persists closed windows under ``out_dir`` and evaluates their drift on the way."""

    def __init__(
        self,
        out_dir: str | Path,
        reference: Reference,
        accounting: Accounting,
        *,
        window_seconds: int,
        retry_every_s: float = 5.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reference = reference
        self.accounting = accounting
        self.log = WindowsLog(out_dir)
        self.sink = ProfileSink(out_dir)
        self.ledger = WindowLedger(out_dir)
        self._window_seconds = window_seconds
        self._retry_every = retry_every_s
        self._timer = timer
        self._retry_at = float("-inf")
        self._logged: Counter[str] = Counter()
        self._log_behind = not self.recover()

    def catch_up(self) -> None:
        """Write the records a failed append left out, if any (call once per turn)."""
        if self._log_behind:
            self._log_behind = not self.recover()

    @property
    def retry_due(self) -> bool:
        """Windows that failed may be tried again now."""
        return self._timer() >= self._retry_at

    def persist(
        self, windows: Sequence[ClosedWindow[WindowProfile]], *, complete: bool = True
    ) -> tuple[list[WindowRecord], list[ClosedWindow[WindowProfile]]]:
        """Profile files, then ledger lines (complete windows only), then log records.

        Returns the records written and the windows that failed (to hold and retry).
        """
        written: list[ClosedWindow[WindowProfile]] = []
        failed: list[ClosedWindow[WindowProfile]] = []
        for window in windows:
            key = window.key
            try:
                self.sink.write(key.model, key.segment, key.start, window.profile)
            except OSError as exc:
                self._failed(f"window {key.model} {key.start}", exc)
                failed.append(window)
            else:
                written.append(window)
        if complete:
            try:
                self.ledger.append(window.key for window in written)
            except OSError as exc:
                self._failed(f"ledger ({len(written)} windows)", exc)
                failed += written
                written = []
        records = [self.record(w.key, w.end, w.profile, complete=complete) for w in written]
        try:
            self.log.append(records)
        except OSError as exc:
            # The windows are persisted (their profiles and ledger lines are); the log is
            # written again from them by the next call.
            self._failed(f"windows.jsonl ({len(records)} records)", exc)
            self._log_behind = True
        return records, failed

    def record(
        self, key: WindowKey, end: int, profile: WindowProfile, *, complete: bool = True
    ) -> WindowRecord:
        """The window's record: its read-outs and its drift, judged against the reference."""
        drift = evaluate(profile, self.reference)
        return WindowRecord.from_profile(
            key.model, key.segment, key.start, end, profile, drift, complete=complete
        )

    def recover(self) -> bool:
        """Write the records of windows persisted just before a crash (or a failed append)
        cut off their log line; False if that failed too."""
        missing = self.ledger.missing_from(self.log.path)
        if missing:
            log.warning("writing %d window record(s) missing from windows.jsonl", len(missing))
        try:
            self.log.append(
                self.record(key, key.start + self._window_seconds, self.sink.read(*key))
                for key in missing
            )
        except OSError as exc:
            self._failed(f"windows.jsonl ({len(missing)} records)", exc)
            return False
        return True

    def _failed(self, what: str, exc: OSError) -> None:
        self.accounting.count(persist_errors=1)
        self._retry_at = self._timer() + self._retry_every
        if self._logged["persist"] < _LOGGED:
            self._logged["persist"] += 1
            log.warning(
                "could not persist %s, trying again in %.0f s: %s", what, self._retry_every, exc
            )

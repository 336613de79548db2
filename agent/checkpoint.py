"""The commit metadata that turns a Kafka offset into a checkpoint of closed windows.

Each committed offset carries ``{"v":1,"closed_through":T}``: every window ending at or before
``T`` (epoch seconds) was closed and persisted before the commit, so a consumer that resumes
from the offset can skip re-read events of those windows. Brokers may drop the metadata (Tansu
0.6 answers OffsetFetch without it) and other tools may write their own; both read as "no
``T``", which is safe because the ledger of persisted windows still catches every re-read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sketches.errors import FormatError

__all__ = ["Checkpoint"]

_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A committed offset and the end of the newest window closed when it was committed.

    >>> c = Checkpoint(42, 1_700_000_000)
    >>> c.metadata()
    '{"v":1,"closed_through":1700000000}'
    >>> Checkpoint.parse(42, c.metadata()) == c
    True
    >>> Checkpoint.parse(7, None)
    Checkpoint(offset=7, closed_through=None)
    """

    offset: int
    closed_through: int | None = None

    def metadata(self) -> str:
        """The metadata string to commit with the offset."""
        return json.dumps(
            {"v": _VERSION, "closed_through": self.closed_through}, separators=(",", ":")
        )

    @classmethod
    def parse(cls, offset: int, metadata: str | None) -> Checkpoint:
        """Read committed metadata; absent or foreign metadata gives ``closed_through=None``."""
        if not metadata:
            return cls(offset)
        try:
            decoded = json.loads(metadata)
        except ValueError:
            return cls(offset)
        if not isinstance(decoded, dict) or "v" not in decoded:
            return cls(offset)
        if decoded["v"] != _VERSION:
            raise FormatError(
                f"committed offset metadata has version {decoded['v']!r}, this embmon reads "
                f"version {_VERSION}: upgrade embmon, or use a new --group-id"
            )
        through = decoded.get("closed_through")
        if through is not None and (isinstance(through, bool) or not isinstance(through, int)):
            raise FormatError(
                f"committed offset metadata has closed_through={through!r}; expected epoch "
                "seconds as an integer or null"
            )
        return cls(offset, through)

    @classmethod
    def from_committed(cls, committed: tuple[int, str | None] | None) -> Checkpoint | None:
        """The checkpoint of ``KafkaSource.committed(tp)``'s answer (``None``: never committed)."""
        return None if committed is None else cls.parse(*committed)

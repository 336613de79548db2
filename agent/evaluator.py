"""``--role evaluator``: the profiles topic in, merged and judged windows out.

The driver (``agent.driver``) runs this over a consumer of the profiles topic exactly as it runs
the single process's pipeline over the inference topic: each assigned profiles partition is a
shard (``agent.merging``), each turn closes what is due and persists it through the same
``agent.output`` (``windows.jsonl``, profiles, ledger), and the driver commits only below what
the shards still need. Several evaluators share the profiles partitions (and so the models)
through their consumer group; one that restarts, or takes a partition over, re-reads it from
the committed offset and builds the same windows again.

A bounded run (``--until-end``) ends once every input partition is accounted for up to the end
offsets seen at start (or a collector stopped at its own end), nothing is waiting, and every
window is emitted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from exporters.records import WindowRecord
from sketches.errors import FormatError
from sketches.profile import WindowProfile
from sketches.reference import Reference

from .accounting import Accounting
from .checkpoint import Checkpoint
from .decode import DecodedBatch, RecordLike
from .merging import Applied, Shard
from .output import WindowOutput
from .partials import decode, shard_of
from .source import Partition
from .window_types import ClosedWindow

__all__ = ["Evaluator"]

log = logging.getLogger("embmon")
_LOGGED = 5


class Shards:
    """The shards of the assigned profiles partitions: the driver's window store here."""

    def __init__(self, factory: Callable[[Partition, bool], Shard]) -> None:
        self._factory = factory
        self.shards: dict[Partition, Shard] = {}

    @property
    def partitions(self) -> frozenset[Partition]:
        return frozenset(self.shards)

    @property
    def open_windows(self) -> int:
        return sum(shard.open_windows for shard in self.shards.values())

    def assign(self, partition: Partition, checkpoint: Checkpoint | None) -> None:
        self.shards[partition] = self._factory(partition, checkpoint is not None)

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """Forget revoked shards: their next owner rebuilds them from the committed offset."""
        for partition in partitions:
            self.shards.pop(partition, None)

    def advance(self, partition: Partition, position: int, *, caught_up: bool) -> None:
        self.shards[partition].position = position

    def commit_offsets(self) -> dict[Partition, Checkpoint]:
        offsets = {p: shard.commit_offset() for p, shard in self.shards.items()}
        return {p: Checkpoint(o) for p, o in offsets.items() if o is not None}

    def paused_partitions(self) -> frozenset[Partition]:
        return frozenset()


class Evaluator:
    """Merges partial profiles per window, judges drift, persists; the driver's pipeline."""

    def __init__(
        self,
        reference: Reference,
        *,
        topics: Sequence[str],
        window: timedelta,
        out_dir: str | Path,
        shards: Callable[[], int],
        lateness: timedelta = timedelta(0),
        grace: timedelta = timedelta(minutes=2),
        ends: Callable[[], Mapping[Partition, int]] | None = None,
        accounting: Accounting | None = None,
        on_close: Callable[[WindowRecord], None] | None = None,
        retry_every_s: float = 5.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reference = reference
        self.accounting = accounting or Accounting()
        self.accounting.window_seconds = window.total_seconds()
        self.accounting.lateness_seconds = lateness.total_seconds()
        self.accounting.reference_version = reference.version
        self.accounting.reference_f1 = reference.classification_f1
        self.accounting.count_profiles(merged=0, duplicate=0, late=0)  # series from zero
        self.on_close = on_close
        self.output = WindowOutput(
            out_dir,
            reference,
            self.accounting,
            window_seconds=int(window.total_seconds()),
            retry_every_s=retry_every_s,
            timer=timer,
        )
        persisted = set(self.output.ledger.keys())
        self._shards = shards
        self._shard_count: int | None = None
        self._ends = ends
        self._end_offsets: Mapping[Partition, int] | None = None
        self._held: list[tuple[ClosedWindow[WindowProfile], bool]] = []
        self._logged = 0
        self.behind = False
        self.store = Shards(
            lambda partition, resumed: Shard(
                topics=topics,
                window_seconds=int(window.total_seconds()),
                lateness_s=lateness.total_seconds(),
                read=lambda data: WindowProfile.from_bytes(data, reference.space),
                persisted=persisted,
                counts_rejects=lambda source: self._counts_rejects(source, partition[1]),
                grace_s=grace.total_seconds(),
                resumed=resumed,
                timer=timer,
            )
        )

    def _counts_rejects(self, source: Partition, shard: int) -> bool:
        """One shard counts an input partition's rejects: the one its name hashes to."""
        if self._shard_count is None:
            self._shard_count = self._shards()
        return shard_of(f"{source[0]}/{source[1]}", self._shard_count) == shard

    def ingest(self, partition: Partition, records: Sequence[RecordLike]) -> DecodedBatch:
        """Apply one profiles partition's records to its shard."""
        shard = self.store.shards[partition]
        applied = Applied()
        bad = 0
        for record in records:
            try:
                message = decode(record.value or b"")
            except FormatError as exc:
                bad += 1
                if self._logged < _LOGGED:
                    self._logged += 1
                    log.warning(
                        "skipped record %s/%s offset %s of the profiles topic: %s",
                        *partition,
                        record.offset,
                        exc,
                    )
                continue
            applied.add(shard.add(record.offset, message))
        self._count(applied, bad=bad)
        return DecodedBatch((), ())

    def close(self, everything: bool = False) -> list[WindowRecord]:
        """Emit what is due in every shard (everything, complete, at the end of a bounded run)."""
        self.output.catch_up()
        complete: list[ClosedWindow[WindowProfile]] = []
        partial: list[ClosedWindow[WindowProfile]] = []
        applied = Applied()
        if self._held and self.output.retry_due:
            held, self._held = self._held, []
            complete += [w for w, whole in held if whole]
            partial += [w for w, whole in held if not whole]
        for shard in self.store.shards.values():
            done, due, counts = shard.due(everything=everything)
            complete += done
            partial += due
            applied.add(counts)
        self._count(applied)
        records: list[WindowRecord] = []
        for windows, whole in ((complete, True), (partial, False)):
            if windows:
                written, failed = self.output.persist(windows, complete=whole)
                records += written
                self._held += [(w, whole) for w in failed]
        self.accounting.closed(
            records, open_windows=self.store.open_windows, watermark=None, held=len(self._held)
        )
        self.accounting.set_profiles_pending(
            sum(shard.pending for shard in self.store.shards.values())
        )
        self.accounting.set_partitions_owned(len(self.store.shards))
        if self.on_close is not None:
            for record in records:
                self.on_close(record)
        return records

    def _count(self, applied: Applied, *, bad: int = 0) -> None:
        rejected = Counter(applied.rejected)
        rejected["late"] += sum(applied.late.values())
        rejected["bad_profile"] += bad
        self.accounting.count(events=+applied.events, rejected=+rejected)
        self.accounting.count_profiles(
            merged=applied.merged, duplicate=applied.duplicate, late=sum(applied.late.values())
        )

    def finished(self) -> bool:
        """Under ``--until-end``: every input partition accounted for up to its end offset."""
        if self._ends is None or not self.store.shards:
            return False
        if self._end_offsets is None:
            self._end_offsets = dict(self._ends())
        return all(shard.covered(self._end_offsets) for shard in self.store.shards.values())

    @property
    def done(self) -> bool:
        """Every window is emitted and persisted."""
        return not self.store.open_windows and not self._held

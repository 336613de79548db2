"""Coverage-guided fuzzing of decode and window updates, with atheris (libFuzzer).

    python tests/fuzz_decode_atheris.py -runs=20000 [-max_total_time=20] [CORPUS_DIR ...]

One input is a whole scenario: a 4-byte header picks the decoder and window settings
(:class:`Setup`), and the rest, split at ``\\x1e``, are the records (a tag byte for partition,
record timestamp and tombstone, then the value). Each scenario is decoded poll by poll, routed
into a :class:`WindowStore` of real ``sketches`` profiles and closed; :func:`check` raises
:class:`Violation` on any broken invariant, so libFuzzer reports it as a crash. Without a
corpus directory the run starts from seeds written to a temporary one (good and bad events of
every reason), so mutations start from JSON rather than from nothing.

``tests/test_fuzz.py`` imports :func:`check`, :func:`parse_input` and the seeds for its
hypothesis tests, and runs this script for a bounded number of runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # instrument the code under test, not numpy or the harness
    import atheris

    _instrumenting: contextlib.AbstractContextManager[object] = atheris.instrument_imports(
        include=["agent", "sketches", "exporters"]
    )
else:
    _instrumenting = contextlib.nullcontext()

with _instrumenting:
    import numpy as np
    import numpy.typing as npt

    from agent.checkpoint import Checkpoint
    from agent.decode import REJECT_REASONS, DecodedBatch, Decoder
    from agent.fields import FieldMap
    from agent.source import RawRecord
    from agent.values import MAX_NAME_CHARS
    from agent.window_caps import Caps
    from agent.windows import ClosedWindow, WindowKey, WindowStore
    from exporters.profile_sink import ProfileSink
    from exporters.records import SegmentKey, format_time
    from sketches.batch import EventBatch
    from sketches.profile import WindowProfile
    from sketches.reference import Reference, build_reference

DIM = 4
NOW = 1_790_000_000.0  # the fuzzed decoder's clock: 2026-09-21
MAX_EPOCH_SECONDS = 1e11  # the decoder's range of epoch seconds (year 5138)
SEP = b"\x1e"
MAX_RECORDS = 64
PARTITIONS = (("events", 0), ("events", 1))
WINDOWS = (1, 60, 3600, 86_400, 7 * 86_400)
RECORD_MS: tuple[int | None, ...] = (
    int(NOW * 1000),
    None,
    -1,
    0,
    2**63 - 1,
    int((NOW + 7200) * 1000),
    10**14,
    int((NOW - 1e9) * 1000),
)
FIELD_MAPS = (
    FieldMap(),
    FieldMap.from_mapping(
        {"embedding": "payload.vector", "timestamp": "meta.ts", "segment": "ctx.seg"}
    ),
)
SEGMENT_KEYS: tuple[tuple[str, ...], ...] = ((), ("region",), ("region", "tier"))
MAX_EVENT_BYTES = (1 << 20, 256, 64, 4096)


class Violation(AssertionError):
    """An invariant of decode or of the window store does not hold for this input."""


CAPS: tuple[Caps | None, ...] = (
    None,
    Caps(max_models=1, max_segments=1, max_windows=2),
    Caps(max_models=2, max_segments=2, max_windows=5),
    Caps(max_windows=3),
)


@dataclass(frozen=True)
class Setup:
    """Decoder and window settings of one scenario (what the configuration would give)."""

    window_s: int = 60
    lateness_s: int = 0
    max_event_bytes: int = 1 << 20
    fields: FieldMap = field(default_factory=FieldMap)
    segment_keys: tuple[str, ...] = ("region",)
    max_future_s: float | None = 3600.0
    chunk: int = 3
    checkpoint_through: int | None = None  # closed_through of a committed checkpoint
    persisted_start: int | None = None  # a window of ("default", no segment) in the ledger
    caps: Caps | None = None
    close_limit: int | None = None  # windows closed per close_ready call
    revoke_at: int | None = None  # after this poll, partition 1 is revoked and assigned again

    @classmethod
    def from_bytes(cls, head: bytes) -> Setup:
        """The setup a 4-byte header picks; every header picks a valid one."""
        h = head.ljust(4, b"\0")
        window = WINDOWS[h[0] % len(WINDOWS)]
        near = int(NOW) // window * window
        return cls(
            window_s=window,
            lateness_s=window * ((h[0] >> 3) % 3),
            max_event_bytes=MAX_EVENT_BYTES[h[1] % len(MAX_EVENT_BYTES)],
            fields=FIELD_MAPS[(h[1] >> 2) % len(FIELD_MAPS)],
            segment_keys=SEGMENT_KEYS[(h[1] >> 3) % len(SEGMENT_KEYS)],
            max_future_s=None if h[1] >> 7 else 3600.0,
            chunk=1 + h[2] % 8,
            checkpoint_through=near - window * (h[2] >> 4) if h[2] & 8 else None,
            persisted_start=near - window * (h[3] % 4) if h[3] & 4 else None,
            caps=CAPS[(h[3] >> 3) % len(CAPS)],
            close_limit=None if h[0] >> 6 == 0 else h[0] >> 6,
            revoke_at=(h[3] >> 5) or None,
        )


def parse_input(data: bytes) -> tuple[Setup, list[RawRecord]]:
    """A scenario from fuzzer bytes: the setup, then the records in partition offset order."""
    setup = Setup.from_bytes(data[:4])
    offsets = [0] * len(PARTITIONS)
    records = []
    for chunk in data[4:].split(SEP)[:MAX_RECORDS] if len(data) > 4 else []:
        tag = chunk[0] if chunk else 0
        partition = tag & 1
        value = None if tag >> 4 == 0xF else chunk[1:]
        records.append(
            RawRecord(value, RECORD_MS[(tag >> 1) & 7], partition, offsets[partition], "events")
        )
        offsets[partition] += 1
    return setup, records


def encode_input(setup_head: bytes, records: Sequence[tuple[int, bytes | None]]) -> bytes:
    """The fuzzer input of ``(tag, value)`` records (seeds; the inverse of parse_input)."""
    parts = [bytes([tag]) + (b"" if value is None else value) for tag, value in records]
    return setup_head.ljust(4, b"\0")[:4] + SEP.join(parts)


@functools.cache
def reference() -> Reference:
    """A small real reference of dimension ``DIM`` (three clusters), built once per process."""
    rng = np.random.default_rng(0)
    labels = np.array([str(i % 3) for i in range(300)])
    x = rng.normal(size=(300, DIM)).astype(np.float32)
    x[:, 0] += 3.0 * (np.arange(300) % 3)
    return build_reference(
        EventBatch.from_vectors(x), labels, components=2, rounds=30, sizes=(10, 100), alpha=0.05
    )


def real_profile(key: WindowKey) -> WindowProfile:
    return reference().new_profile()


@dataclass(frozen=True)
class Rows:
    """The batch the store routes: decoded events plus the id (partition, offset) of each row,
    so the fuzzer can tell which events each closed window holds."""

    batch: EventBatch
    ids: npt.NDArray[np.int64]

    @property
    def timestamps(self) -> npt.NDArray[np.float64]:
        return self.batch.timestamps

    def __len__(self) -> int:
        return len(self.batch)

    def take(self, rows: npt.NDArray[np.intp]) -> Rows:
        return Rows(self.batch.take(rows), self.ids[rows])


@dataclass
class Tracked:
    """A real profile (or none) and the ids of the rows it was updated with."""

    profile: WindowProfile | None
    ids: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def events(self) -> int:
        """Events the real profile holds; rows it could not use count apart (``invalid``)."""
        p = self.profile
        return len(self.ids) if p is None else p.count + p.invalid

    def update(self, rows: Rows) -> None:
        if self.profile is not None:
            self.profile.update(rows.batch)
        self.ids.extend(rows.ids.tolist())

    def merge(self, other: Tracked) -> Tracked:
        merged = None
        if self.profile is not None and other.profile is not None:
            merged = self.profile.merge(other.profile)
        return Tracked(merged, self.ids + other.ids)


def tracked_real(key: WindowKey) -> Tracked:
    return Tracked(real_profile(key))


def tracked_ids(key: WindowKey) -> Tracked:
    """Ids only, no sketches: for the scenarios that test windowing, not profiles."""
    return Tracked(None)


def _id(partition: int, offset: int) -> int:
    return partition << 32 | offset


@dataclass
class Tally:
    """What one scenario did: records, rejects by reason, and where accepted events went."""

    records: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    added: int = 0
    late: int = 0
    skipped: int = 0
    refused: int = 0
    again: int = 0
    windows: int = 0
    in_windows: int = 0


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise Violation(what)


def check(
    records: Sequence[RawRecord],
    setup: Setup,
    factory: Callable[[WindowKey], Tracked] = tracked_real,
) -> Tally:
    """Decode ``records`` poll by poll, window them and close everything; check every rule.

    Every record is accepted or rejected under a reason of ``REJECT_REASONS`` with a short
    detail, and the same again when it is re-read; accepted events are finite, within the time
    range and the future horizon, with usable names; and every accepted event is counted once:
    added to exactly one closed window, or late, skipped or refused (``too_many_windows``),
    also when its partition is revoked and read again from its committed offset. Raises
    :class:`Violation` (or whatever escapes the code under test).
    """
    decoder = Decoder(
        DIM,
        setup.fields,
        segment_keys=setup.segment_keys,
        max_event_bytes=setup.max_event_bytes,
        clock=lambda: NOW,
        max_future_s=setup.max_future_s,
    )
    persisted = (
        [WindowKey("default", SegmentKey(), setup.persisted_start)]
        if setup.persisted_start is not None
        else []
    )
    store: WindowStore[Tracked, Rows] = WindowStore(
        window=timedelta(seconds=setup.window_s),
        factory=factory,
        lateness=timedelta(seconds=setup.lateness_s),
        persisted=persisted,
        caps=setup.caps,
        timer=lambda: 0.0,  # a revoked partition holds the watermark until it is back
    )
    start = None if setup.checkpoint_through is None else Checkpoint(0, setup.checkpoint_through)
    for p in PARTITIONS:
        store.assign(p, start)
    tally = Tally(records=len(records))
    decided: dict[int, str] = {}  # record id -> "accepted" or its reject reason
    closed: list[ClosedWindow[Tracked]] = []
    logs = {p: [r for r in records if r.partition == p[1]] for p in PARTITIONS}
    cursor = dict.fromkeys(PARTITIONS, 0)
    poll = 0
    while any(cursor[p] < len(log) for p, log in logs.items()):
        for p, log in logs.items():
            chunk = log[cursor[p] : cursor[p] + setup.chunk]
            if not chunk:
                continue
            decoded = decoder.decode(chunk)
            _check_decoded(chunk, decoded, setup)
            outcome = {_id(p[1], r.offset): r.reason for r in decoded.rejects}
            outcome.update({_id(p[1], o): "accepted" for g in decoded.groups for o in g.offsets})
            for rid, what in outcome.items():
                _require(
                    decided.setdefault(rid, what) == what, f"re-read decoded otherwise: {what}"
                )
            groups = [
                (g.model, g.segment, Rows(g.batch, (p[1] << 32) | g.offsets), g.offsets)
                for g in decoded.groups
            ]
            for g, r in zip(decoded.groups, store.add_groups(p, groups), strict=True):
                parts = r.added + r.late + r.skipped + r.refused + r.again
                _require(parts == len(g.batch), f"rows lost: {r} of {len(g.batch)}")
                _require(0 <= r.folded <= r.added, f"folded rows not added: {r}")
                tally.added += r.added
                tally.late += r.late
                tally.skipped += r.skipped
                tally.refused += r.refused
                tally.again += r.again
            cursor[p] += len(chunk)
            store.advance(p, cursor[p], caught_up=cursor[p] == len(log))
        closed += store.close_ready(setup.close_limit)
        store.paused_partitions()
        committed = store.commit_offsets()
        poll += 1
        if poll == setup.revoke_at and PARTITIONS[1] in committed:
            store.revoke([PARTITIONS[1]])
            store.assign(PARTITIONS[1], committed[PARTITIONS[1]])
            cursor[PARTITIONS[1]] = committed[PARTITIONS[1]].offset
    closed += store.close_all()
    _check_closed(closed, setup, persisted)
    tally.accepted = sum(1 for what in decided.values() if what == "accepted")
    tally.rejected = Counter(what for what in decided.values() if what != "accepted")
    ids = [i for w in closed for i in w.profile.ids]
    tally.windows = len(closed)
    tally.in_windows = len(ids)
    _require(len(decided) == tally.records, f"records never decoded: {tally}")
    _require(len(ids) == len(set(ids)), f"an event counted in two windows: {tally}")
    _require(
        tally.added + tally.late + tally.skipped + tally.refused == tally.accepted,
        f"accepted events not counted exactly once: {tally}",
    )
    _require(tally.in_windows == tally.added, f"closed windows do not hold the added: {tally}")
    _require(store.open_windows == 0, "windows left open after close_all")
    return tally


def _check_decoded(chunk: Sequence[RawRecord], out: DecodedBatch, setup: Setup) -> None:
    _require(out.events + len(out.rejects) == len(chunk), "decode lost or invented records")
    seen = sorted(
        [o for g in out.groups for o in g.offsets.tolist()] + [r.offset for r in out.rejects]
    )
    _require(seen == sorted(r.offset for r in chunk), "a record decoded twice or not at all")
    by_offset = {r.offset: r for r in chunk}
    for reject in out.rejects:
        _require(reject.reason in REJECT_REASONS, f"undocumented reason {reject.reason!r}")
        _require(0 < len(reject.detail) <= 80, f"detail of {len(reject.detail)} chars")
        _require(reject.value == by_offset[reject.offset].value, "a reject lost its bytes")
    horizon = math.inf if not setup.max_future_s else NOW + setup.max_future_s
    for g in out.groups:
        batch = g.batch
        _require(batch.embeddings.dtype == np.float32, "embeddings are not float32")
        _require(batch.embeddings.shape == (len(batch), DIM), "embeddings of the wrong shape")
        _require(bool(np.isfinite(batch.embeddings).all()), "a non-finite embedding accepted")
        times = batch.timestamps
        _require(bool(np.isfinite(times).all()), "a non-finite timestamp accepted")
        _require(bool((times >= 0).all() and (times < MAX_EPOCH_SECONDS).all()), "time range")
        _require(bool((times <= horizon).all()), "a timestamp beyond max_future accepted")
        names = [g.model, *(v for _, v in g.segment.pairs)]
        for column in (batch.predictions, batch.targets):
            names += [v for v in column or () if v is not None]
        _require(g.model != "", "an empty model name")
        for name in names:
            _require(len(name) <= MAX_NAME_CHARS and name.isprintable(), "an unusable name")
        _require({k for k, _ in g.segment.pairs} <= set(setup.segment_keys), "unkept segment key")
        _require(g.partitions.tolist() == [chunk[0].partition] * len(batch), "wrong partition")
        for tokens in batch.tokens or ():
            _require(tokens is None or all(isinstance(t, str) for t in tokens), "bad tokens")


def _check_closed(
    closed: Sequence[ClosedWindow[Tracked]], setup: Setup, persisted: Sequence[WindowKey]
) -> None:
    keys = [w.key for w in closed]
    _require(len(keys) == len(set(keys)), "a window closed twice")
    _require(not set(keys) & set(persisted), "a persisted window closed again")
    starts = [w.key.start for w in closed]
    _require(all(a <= b for a, b in pairwise(starts)), "windows not closed in time order")
    _require(not sink_paths_collide(closed), "two windows share a profile file")
    for w in closed:
        _require(w.key.start % setup.window_s == 0, f"unaligned window {w.key.start}")
        _require(w.end == w.key.start + setup.window_s, "window of the wrong size")
        format_time(w.key.start), format_time(w.end)  # every window can be written
        _require(w.profile.count > 0, "an empty window closed")
        _require(w.profile.events == w.profile.count, "the profile lost or invented events")


def sink_paths_collide(closed: Sequence[ClosedWindow[Any]]) -> bool:
    """Whether two distinct closed windows would be written to the same profile file."""
    sink = ProfileSink("/nonexistent")
    paths = [sink.path_for(w.key.model, w.key.segment, w.key.start) for w in closed]
    return len(set(paths)) != len(paths)


def _event(**fields: object) -> bytes:
    base: dict[str, object] = {"timestamp": NOW, "embedding": [1.0, 0.5, 0.0, -2.0]}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def seeds() -> list[bytes]:
    """Starting inputs: good events, each kind of bad one, and mixes over both partitions."""
    good = [
        _event(),
        _event(timestamp=NOW - 86_400, model="news", segment={"region": "eu", "tier": 1}),
        _event(text="Hola mundo, ¿qué tal?", prediction="a", target="b", event_id="e1"),
        _event(tokens=["a", "b"], timestamp="2026-09-21T00:00:00+02:00"),
        _event(embedding=None, embedding_b64="AACAPwAAAD8AAAAAAAAAwA=="),
        _event(embedding=[0, 0, 0, 0]),
        _event(embedding=[5e-324, 1e-45, -0.0, 1e30]),
        _event(timestamp=None),
        json.dumps({"payload": {"vector": [1, 2, 3, 4]}, "meta": {"ts": NOW}}).encode(),
    ]
    bad = [
        b'{"embedding": [1, 2,',
        b"\xff\xfe",
        b"[1, 2, 3, 4]",
        _event(embedding=[1.0, 2.0]),
        _event(embedding=[1.0, float("nan"), 0.0, 0.0]),
        _event(embedding=[1.0, "2", None, True]),
        _event(timestamp=32_503_680_000),
        _event(timestamp="3000-01-01T00:00:00Z"),
        _event(timestamp=NOW * 1000),
        _event(timestamp=-1e300),
        _event(model="m" * 200),
        _event(segment={"region": "a\nb"}),
        b'{"embedding": [0, 0, 0, 0], "model": "\\ud800"}',
        b"[" * 1100 + b"]" * 1100,
        _event(text="x" * 5000),
    ]
    inputs = []
    heads = (b"\x01\x00\x00\x00", b"\x0a\x08\x13\x05", b"\x02\x84\x2a\x04", b"\x41\x10\x21\x48")
    for head in heads:
        inputs.append(encode_input(head, [(2 * i % 16, v) for i, v in enumerate(good)]))
        inputs.append(encode_input(head, [(i % 16, v) for i, v in enumerate(good + bad)]))
        inputs += [
            encode_input(head, [(0, good[0]), (i % 16, v), (1, good[1])]) for i, v in enumerate(bad)
        ]
    inputs.append(encode_input(b"\x01\x00\x00\x00", [(0xF0, None), (0, good[0])]))
    return inputs


def test_one_input(data: bytes) -> None:
    """The libFuzzer entry point: any input is a scenario; a broken rule raises."""
    setup, records = parse_input(data)
    check(records, setup)


def main(argv: list[str]) -> None:
    """Run libFuzzer over ``argv``; seeds a temporary corpus when no directory is given."""
    args = list(argv)
    with tempfile.TemporaryDirectory(prefix="embmon-fuzz-") as tmp:
        if not any(Path(a).is_dir() for a in args[1:] if not a.startswith("-")):
            corpus = Path(tmp, "corpus")
            corpus.mkdir()
            for i, seed in enumerate(seeds()):
                (corpus / f"seed-{i:03d}").write_bytes(seed)
            args.append(str(corpus))
        reference()  # built before fuzzing: its cost is not a slow unit
        atheris.Setup(args, test_one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

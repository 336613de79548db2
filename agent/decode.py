"""Decode raw records (Kafka or files) into columnar batches, one per (model, segment).

A whole poll of records is decoded at once so the vectors become one float32 matrix per
encoding in a single numpy call; Python bytecode runs per record (JSON parse, a few lookups),
never per number. A bad record never raises and never disturbs its neighbours: it becomes a
``Reject`` with a reason from ``REJECT_REASONS`` (the values of the
``embmon_events_rejected_total{reason}`` label) and keeps its bytes for a dead-letter topic.
A reject's detail names the field, the type or size of what was found and the rule it broke,
never the content: details are logged and sent in dead-letter headers, and an event's fields
may hold personal data.
"""

from __future__ import annotations

import binascii
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from agent.event_reader import EventFields, EventReader
from agent.fields import FieldMap, get_path
from agent.values import (
    NUMBER_TYPES,
    REJECT_REASONS,
    Bad,
    RejectReason,
    bounded,
    kind,
    label,
    loads,
    name,
    not_numbers,
    tokenize,
    wrong_dimension,
)
from exporters.records import SegmentKey
from sketches.batch import EventBatch, FloatMatrix

__all__ = [
    "REJECT_REASONS",
    "DecodedBatch",
    "DecodedGroup",
    "Decoder",
    "RecordLike",
    "Reject",
    "RejectReason",
    "tokenize",
]

_Pairs = tuple[tuple[str, str], ...]
"""The kept segment keys of one event as ``((key, value), ...)``, before canonical ordering."""

# Epoch seconds from 1970 up to ~5138: a value past the end is almost always milliseconds.
# Every time in the range can be written as a date (``exporters.records.format_time``).
_MAX_EPOCH_SECONDS = 1e11
_T = TypeVar("_T")
_Vector = list[object] | bytes | npt.NDArray[np.float64]
"""One event's vector as read: a JSON list, float32 bytes, or numbers the compiled reader parsed."""


class RecordLike(Protocol):
    """What decode reads from a record; kafka-python's ``ConsumerRecord`` fits as it is."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass(frozen=True)
class Reject:
    """A record that could not be decoded: why, where, and its bytes for a dead-letter path."""

    reason: RejectReason
    detail: str
    partition: int
    offset: int
    event_id: str | None = None
    value: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DecodedGroup:
    """The good events of one (model, segment), in input order, with where each came from.

    ``partitions[i]`` and ``offsets[i]`` locate row ``i`` of ``batch`` in its source, so the
    runtime can route rows into windows and know which offsets a closed window covers.
    """

    model: str
    segment: SegmentKey
    batch: EventBatch
    partitions: npt.NDArray[np.int32]
    offsets: npt.NDArray[np.int64]


@dataclass(frozen=True)
class DecodedBatch:
    """The outcome of decoding one batch of records: groups of good events, and rejects."""

    groups: tuple[DecodedGroup, ...]
    rejects: tuple[Reject, ...]

    @property
    def events(self) -> int:
        """Number of good events over all groups."""
        return sum(len(g.batch) for g in self.groups)

    @property
    def reject_counts(self) -> Counter[str]:
        """Rejected records per reason (only reasons that occurred)."""
        return Counter(r.reason for r in self.rejects)


class _Row(NamedTuple):
    position: int
    record: RecordLike
    event_id: str | None
    timestamp: float
    model: str
    segment: _Pairs
    vector: _Vector
    tokens: list[str] | None
    prediction: str | None
    target: str | None


class Decoder:
    """Decodes batches of raw records against a reference of dimension ``dim``.

    Built once from the reference and the configuration; ``decode`` keeps no state between
    calls, so one decoder serves every poll of the live agent and every chunk of a replay.

    An event stamped more than ``max_future_s`` seconds ahead of ``clock()`` (read once per
    ``decode``) is rejected as ``future_timestamp``: one such event would advance its
    partition's watermark and make every later event of that partition late. ``None`` or 0
    turns the check off (a replay of recorded traffic that a clock has nothing to say about).

    >>> from agent.source import RawRecord
    >>> dec = Decoder(dim=2, segment_keys=["region"])
    >>> out = dec.decode([
    ...     RawRecord(b'{"embedding": [1, 2], "segment": {"region": "eu", "user": "x"}}', 5000),
    ...     RawRecord(b'{"embedding": [1, 2, 3]}', 5000, offset=1),
    ... ])
    >>> [(g.model, g.segment.label, g.batch.timestamps.tolist()) for g in out.groups]
    [('default', 'region=eu', [5.0])]
    >>> out.rejects[0].reason, out.rejects[0].detail, out.rejects[0].offset
    ('wrong_dimension', 'embedding has 3 values, the reference has 2', 1)
    """

    def __init__(
        self,
        dim: int,
        fields: FieldMap | None = None,
        *,
        segment_keys: Sequence[str] = (),
        default_model: str = "default",
        max_event_bytes: int = 1 << 20,
        clock: Callable[[], float] = time.time,
        max_future_s: float | None = 3600.0,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        if len(set(segment_keys)) != len(segment_keys):
            raise ValueError(f"segment_keys must be distinct, got {list(segment_keys)}")
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be positive, got {max_event_bytes}")
        if max_future_s is not None and not 0.0 <= max_future_s < math.inf:
            raise ValueError(f"max_future_s must be >= 0 and finite, got {max_future_s}")
        self.dim = dim
        self.fields = fields if fields is not None else FieldMap()
        self.segment_keys = tuple(segment_keys)
        self.default_model = default_model
        self.max_event_bytes = max_event_bytes
        self.clock = clock
        self.max_future_s = max_future_s or None
        self._paths = [self.fields.path(f) for f in EventFields._fields]
        self._reader = EventReader(self.fields, self.segment_keys)

    def decode(self, records: Iterable[RecordLike]) -> DecodedBatch:
        """Decode ``records``; never raises for bad records, which come back as rejects."""
        rows: list[_Row] = []
        rejects: list[tuple[int, Reject]] = []
        horizon = math.inf if self.max_future_s is None else self.clock() + self.max_future_s
        for index, record in enumerate(records):
            try:
                rows.append(self._parse(index, record, horizon))
            except Bad as bad:
                rejects.append((index, _reject(bad.reason, bad.detail, record, bad.event_id)))
        matrix, non_finite = self._matrix(rows)
        for pos, detail in non_finite.items():
            row = rows[pos]
            rejects.append((row.position, _reject("non_finite", detail, row.record, row.event_id)))
        rejects.sort(key=lambda pair: pair[0])  # non-finite rows come last; restore input order
        keep = [pos for pos in range(len(rows)) if pos not in non_finite]
        return DecodedBatch(self._group(rows, keep, matrix), tuple(r for _, r in rejects))

    def _parse(self, index: int, record: RecordLike, horizon: float) -> _Row:
        raw = record.value
        if raw is None:
            raise Bad("invalid_json", "record has no value (a tombstone?)")
        if len(raw) > self.max_event_bytes:
            raise Bad("oversized", f"{len(raw)} bytes > max_event_bytes {self.max_event_bytes}")
        v = self._reader.read(raw) or self._read_exactly(raw)
        f = self.fields
        event_id = label(f.event_id, v.event_id)
        try:
            # Checked in this order (the first problem found is the reject reason); the row
            # is built positionally, which costs a fraction of a keyword call per record.
            vector = self._vector(v.embedding, v.embedding_b64)
            timestamp = self._timestamp(v.timestamp, record.timestamp, horizon)
            model = self._model(v.model)
            segment = self._segment(v.segment)
            tokens = self._tokens(v.tokens, v.text)
            prediction = name(f.prediction, v.prediction)
            target = name(f.target, v.target)
        except Bad as bad:
            bad.event_id = event_id
            raise
        return _Row(
            index, record, event_id, timestamp, model, segment, vector, tokens, prediction, target
        )

    def _read_exactly(self, raw: bytes) -> EventFields:
        """The fields as orjson (and ``json`` for what it refuses) reads them: every record the
        compiled reader passes on comes here, and any reject of the JSON itself is found here."""
        obj = loads(raw)
        if not isinstance(obj, dict):
            raise Bad("not_object", f"event is {kind(obj)}, not an object")
        values = [get_path(obj, path) for path in self._paths]
        if not self.segment_keys:
            values[-1] = None
        return EventFields(*values)

    def _vector(self, vec: object, b64: object) -> _Vector:
        f, dim = self.fields, self.dim
        if isinstance(vec, np.ndarray):  # parsed by the compiled reader: numbers only
            if len(vec) != dim:
                raise wrong_dimension(len(vec), dim)
            return vec
        if vec is not None:
            if not isinstance(vec, list):
                raise Bad("wrong_type", f"{f.embedding} must be an array, not {kind(vec)}")
            if len(vec) != dim:
                raise wrong_dimension(len(vec), dim)
            # Exact element types (numpy would read "1", true and null as numbers), checked by a
            # loop that runs in C: map and set, no Python bytecode per element.
            if not NUMBER_TYPES.issuperset(map(type, vec)):
                raise not_numbers(vec)
            return vec
        if b64 is None:
            raise Bad("missing_embedding", f"no {f.embedding!r} nor {f.embedding_b64!r}")
        if isinstance(b64, bytes):  # decoded by the compiled reader, as strictly
            data = b64
        elif not isinstance(b64, str):
            raise Bad("wrong_type", f"{f.embedding_b64} must be a string, not {kind(b64)}")
        else:
            try:  # base64.b64decode(b64, validate=True) without its Python wrapper
                data = binascii.a2b_base64(b64, strict_mode=True)
            except ValueError:
                raise Bad("wrong_type", f"{f.embedding_b64} is not valid base64") from None
        if len(data) % 4:
            raise Bad("wrong_type", f"{f.embedding_b64} is {len(data)} bytes, not float32s")
        if len(data) != 4 * dim:
            raise wrong_dimension(len(data) // 4, dim)
        return data

    def _timestamp(self, value: object, record_ms: int | None, horizon: float) -> float:
        """Epoch seconds of the event, from its field or else from its record."""
        path = self.fields.timestamp
        if value is None:
            if record_ms is None or record_ms < 0:
                raise Bad("bad_timestamp", "event has no timestamp and the record carries none")
            path = "the record's timestamp"
            seconds = record_ms / 1000.0
            if seconds >= _MAX_EPOCH_SECONDS:  # no date can be written for it
                raise Bad("bad_timestamp", f"{path} is past year 5138")
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise Bad(
                    "bad_timestamp", f"{path} is a string of {len(value)} chars, not ISO 8601"
                ) from None
            seconds = parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp()
            if not 0.0 <= seconds < _MAX_EPOCH_SECONDS:
                raise Bad("bad_timestamp", f"{path} is an ISO 8601 date before 1970 or after 5138")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
            if not 0.0 <= seconds < _MAX_EPOCH_SECONDS:
                raise Bad("bad_timestamp", f"{path} is {_out_of_range(seconds)}, not epoch seconds")
        else:
            raise Bad("bad_timestamp", f"{path} must be a number or string, not {kind(value)}")
        if seconds > horizon:
            raise Bad(
                "future_timestamp",
                f"{path} is more than {self.max_future_s:g} s ahead of the clock (max_future)",
            )
        return seconds

    def _model(self, value: object) -> str:
        if value is None:
            return self.default_model
        if not isinstance(value, str) or not value:
            raise Bad("wrong_type", f"{self.fields.model} must be a non-empty string")
        return bounded(self.fields.model, value)

    def _segment(self, value: object) -> _Pairs:
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise Bad("wrong_type", f"{self.fields.segment} must be an object, not {kind(value)}")
        kept = (
            (key, name(f"{self.fields.segment}.{key}", value.get(key))) for key in self.segment_keys
        )
        return tuple((key, text) for key, text in kept if text is not None)

    def _tokens(self, tokens: object, text: object) -> list[str] | None:
        if tokens is not None:
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise Bad("wrong_type", f"{self.fields.tokens} must be an array of strings")
            return tokens
        if text is None:
            return None
        if not isinstance(text, str):
            raise Bad("wrong_type", f"{self.fields.text} must be a string, not {kind(text)}")
        return tokenize(text)

    def _matrix(self, rows: list[_Row]) -> tuple[FloatMatrix, dict[int, str]]:
        """All vectors as one float32 matrix, plus the rows holding NaN or infinity and where."""
        lists: list[int] = []
        vectors: list[list[object] | npt.NDArray[np.float64]] = []
        blobs: list[int] = []
        data: list[bytes] = []
        for pos, row in enumerate(rows):
            if isinstance(row.vector, bytes):
                blobs.append(pos)
                data.append(row.vector)
            else:
                lists.append(pos)
                vectors.append(row.vector)
        if not lists:  # every vector came as float32 bytes (the usual case): nothing to place
            floats = np.frombuffer(b"".join(data), dtype="<f4").reshape(len(rows), self.dim)
            out = floats.astype(np.float32, copy=False)
        else:
            out = np.empty((len(rows), self.dim), dtype=np.float32)
            with np.errstate(over="ignore"):  # float32 overflow becomes inf, reported below
                out[lists] = np.array(vectors, dtype=np.float32)
            if blobs:
                floats = np.frombuffer(b"".join(data), dtype="<f4")
                out[blobs] = floats.reshape(len(blobs), self.dim)
        non_finite: dict[int, str] = {}
        for pos in np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist():
            col = int(np.flatnonzero(~np.isfinite(out[pos]))[0])
            non_finite[pos] = f"embedding[{col}] is {out[pos, col]} as float32"
        return out, non_finite

    def _group(
        self, rows: list[_Row], keep: list[int], matrix: FloatMatrix
    ) -> tuple[DecodedGroup, ...]:
        members: dict[tuple[str, _Pairs], list[int]] = {}
        for pos in keep:
            members.setdefault((rows[pos].model, rows[pos].segment), []).append(pos)
        groups = []
        for (model, segment), picked in members.items():
            sel = [rows[p] for p in picked]
            whole = len(picked) == len(matrix)  # one group of every row (one model, no segment)
            batch = EventBatch(
                embeddings=matrix if whole else matrix[np.asarray(picked, dtype=np.intp)],
                timestamps=np.array([r.timestamp for r in sel], dtype=np.float64),
                tokens=_column([r.tokens for r in sel]),
                predictions=_column([r.prediction for r in sel]),
                targets=_column([r.target for r in sel]),
            )
            partitions = np.array([r.record.partition for r in sel], dtype=np.int32)
            offsets = np.array([r.record.offset for r in sel], dtype=np.int64)
            groups.append(DecodedGroup(model, SegmentKey(segment), batch, partitions, offsets))
        return tuple(groups)


def _out_of_range(seconds: float) -> str:
    """What an out-of-range number is, by its shape alone (the value is not shown)."""
    if math.isnan(seconds) or math.isinf(seconds):
        return "not a finite number"
    if seconds < 0:
        return "a negative number"
    return "a number past year 5138 (milliseconds?)"


def _column(values: list[_T | None]) -> list[_T | None] | None:
    """A batch column, or ``None`` when no event of the group carries the field."""
    return None if all(v is None for v in values) else values


def _reject(reason: RejectReason, detail: str, record: RecordLike, event_id: str | None) -> Reject:
    return Reject(reason, detail, record.partition, record.offset, event_id, record.value)

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
from functools import partial
from itertools import repeat
from typing import NamedTuple, Protocol, TypeVar, cast

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
_A = TypeVar("_A", bound=npt.NDArray[np.generic])
_BYTES = frozenset({bytes})
_INT = frozenset({int})
_NONE = frozenset({type(None)})
_TEXT = frozenset({str, type(None)})
_ARRAY = frozenset({np.ndarray})
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


class _Columns(NamedTuple):
    """The rows of a poll's good events as columns: ``_Row`` transposed."""

    positions: Sequence[int]
    records: Sequence[RecordLike]
    event_ids: Sequence[str | None]
    timestamps: Sequence[float] | npt.NDArray[np.float64]
    models: Sequence[str]
    segments: Sequence[_Pairs]
    vectors: Sequence[_Vector]
    tokens: Sequence[list[str] | None]
    predictions: Sequence[str | None]
    targets: Sequence[str | None]


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
        records = list(records)
        horizon = math.inf if self.max_future_s is None else self.clock() + self.max_future_s
        columns = self._all_good(records, horizon)
        rejects: list[tuple[int, Reject]] = []
        if columns is None:
            columns, rejects = self._each(records, horizon)
        matrix, non_finite = self._matrix(columns.vectors)
        for pos, detail in non_finite.items():
            record, event_id = columns.records[pos], columns.event_ids[pos]
            rejects.append(
                (columns.positions[pos], _reject("non_finite", detail, record, event_id))
            )
        rejects.sort(key=lambda pair: pair[0])  # non-finite rows come last; restore input order
        keep = [pos for pos in range(len(columns.records)) if pos not in non_finite]
        return DecodedBatch(self._group(columns, keep, matrix), tuple(r for _, r in rejects))

    def _each(
        self, records: list[RecordLike], horizon: float
    ) -> tuple[_Columns, list[tuple[int, Reject]]]:
        """Every record on its own: the good ones' rows, and each bad one's first problem."""
        rows: list[_Row] = []
        rejects: list[tuple[int, Reject]] = []
        for index, record in enumerate(records):
            try:
                rows.append(self._parse(index, record, horizon))
            except Bad as bad:
                rejects.append((index, _reject(bad.reason, bad.detail, record, bad.event_id)))
        columns = [list(column) for column in zip(*rows, strict=True)] or [[]] * len(_Row._fields)
        return _Columns(*columns), rejects

    def _all_good(self, records: list[RecordLike], horizon: float) -> _Columns | None:
        """The poll's rows, read and checked field by field over all records at once (a few C
        loops per field, instead of Python calls per record); None as soon as one record fails
        a check or is one the compiled reader does not vouch for. Then ``_each`` decodes the
        poll, finding each reject's reason, so what comes out is the same either way: rows
        only pass here if every check passed, and the checks below are the per-record ones
        (or, for the common shapes, the same rule over a whole column)."""
        values = list(map(_value, records))
        if not _BYTES.issuperset(map(type, values)):
            return None  # a tombstone, or a value of another type
        raws = cast(list[bytes], values)
        if max(map(len, raws), default=0) > self.max_event_bytes:
            return None
        read = self._reader.read_columns(raws)
        if read is None:
            return None
        event_id, timestamp, model, vector, b64, text, tokens, prediction, target, segment = read
        f = self.fields
        try:
            return _Columns(
                range(len(records)),
                records,
                _labels(f.event_id, event_id),
                self._timestamps(timestamp, records, horizon),
                self._models(model),
                _each_or(segment, self._segment, ()),
                self._vectors(vector, b64),
                self._all_tokens(tokens, text),
                _each_or(prediction, partial(name, f.prediction), None),
                _each_or(target, partial(name, f.target), None),
            )
        except Bad:
            return None

    def _timestamps(
        self, values: list[object], records: list[RecordLike], horizon: float
    ) -> list[float] | npt.NDArray[np.float64]:
        """``_timestamp`` of each event; numbers, or none at all, checked as one array."""
        if NUMBER_TYPES.issuperset(map(type, values)):
            seconds = np.array(values, dtype=np.float64)
        elif _absent(values):
            stamps = list(map(_stamp, records))
            if not _INT.issuperset(map(type, stamps)):
                return list(map(self._timestamp, values, stamps, repeat(horizon)))
            if min(cast(list[int], stamps), default=0) < 0:
                raise Bad("bad_timestamp", "a record without a timestamp")
            seconds = np.array(stamps, dtype=np.float64) / 1000.0
        else:
            return list(map(self._timestamp, values, map(_stamp, records), repeat(horizon)))
        if not ((seconds >= 0.0) & (seconds < _MAX_EPOCH_SECONDS) & (seconds <= horizon)).all():
            raise Bad("bad_timestamp", "out of range")  # which, and why: _each finds out
        return seconds

    def _models(self, values: list[object]) -> list[str]:
        if _absent(values):
            return [self.default_model] * len(values)
        return list(map(self._model, values))

    def _vectors(self, vectors: list[object], b64s: list[object]) -> Sequence[_Vector]:
        """``_vector`` of each event; float32 bytes of the right size, or arrays of the right
        length, checked as a whole column."""
        if _absent(vectors) and _BYTES.issuperset(map(type, b64s)):
            blobs = cast(list[bytes], b64s)
            if set(map(len, blobs)) <= {4 * self.dim}:
                return blobs
        elif _ARRAY.issuperset(map(type, vectors)):
            arrays = cast(list[npt.NDArray[np.float64]], vectors)
            if set(map(len, arrays)) <= {self.dim}:
                return arrays
        return list(map(self._vector, vectors, b64s))

    def _all_tokens(self, tokens: list[object], texts: list[object]) -> list[list[str] | None]:
        if _absent(tokens) and _absent(texts):
            return [None] * len(tokens)
        return list(map(self._tokens, tokens, texts))

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

    def _matrix(self, column: Sequence[_Vector]) -> tuple[FloatMatrix, dict[int, str]]:
        """All vectors as one float32 matrix, plus the rows holding NaN or infinity and where."""
        lists: list[int] = []
        vectors: list[list[object] | npt.NDArray[np.float64]] = []
        blobs: list[int] = []
        data: list[bytes] = []
        if _BYTES.issuperset(map(type, column)):
            data = column  # type: ignore[assignment]
        else:
            for pos, vector in enumerate(column):
                if isinstance(vector, bytes):
                    blobs.append(pos)
                    data.append(vector)
                else:
                    lists.append(pos)
                    vectors.append(vector)
        if not lists:  # every vector came as float32 bytes (the usual case): nothing to place
            floats = np.frombuffer(b"".join(data), dtype="<f4").reshape(len(column), self.dim)
            out = floats.astype(np.float32, copy=False)
        else:
            out = np.empty((len(column), self.dim), dtype=np.float32)
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
        self, columns: _Columns, keep: list[int], matrix: FloatMatrix
    ) -> tuple[DecodedGroup, ...]:
        keys = list(zip(columns.models, columns.segments, strict=True))
        if len(keep) == len(keys) and len(set(keys)) <= 1:  # the usual poll: one group, all rows
            members = {keys[0]: keep} if keys else {}
        else:
            members = {}
            for pos in keep:
                members.setdefault(keys[pos], []).append(pos)
        timestamps = np.asarray(columns.timestamps, dtype=np.float64)
        partitions = np.fromiter(map(_partition, columns.records), np.int32, len(keys))
        offsets = np.fromiter(map(_offset, columns.records), np.int64, len(keys))
        groups = []
        for (model, segment), picked in members.items():
            whole = len(picked) == len(matrix)  # one group of every row (one model, no segment)
            rows = None if whole else np.asarray(picked, dtype=np.intp)
            batch = EventBatch(
                embeddings=_rows(matrix, rows),
                timestamps=_rows(timestamps, rows),
                tokens=_column(columns.tokens, picked, whole),
                predictions=_column(columns.predictions, picked, whole),
                targets=_column(columns.targets, picked, whole),
            )
            located = _rows(partitions, rows), _rows(offsets, rows)
            groups.append(DecodedGroup(model, SegmentKey(segment), batch, *located))
        return tuple(groups)


def _out_of_range(seconds: float) -> str:
    """What an out-of-range number is, by its shape alone (the value is not shown)."""
    if math.isnan(seconds) or math.isinf(seconds):
        return "not a finite number"
    if seconds < 0:
        return "a negative number"
    return "a number past year 5138 (milliseconds?)"


def _column(values: Sequence[_T | None], picked: list[int], whole: bool) -> list[_T | None] | None:
    """A group's batch column, or ``None`` when no event of the group carries the field."""
    column = list(values) if whole else [values[p] for p in picked]
    return None if _absent(column) else column


def _absent(values: Iterable[object]) -> bool:
    """No value but None (a C loop; ``list.count(None)`` would compare arrays to None)."""
    return _NONE.issuperset(map(type, values))


def _rows(array: _A, rows: npt.NDArray[np.intp] | None) -> _A:
    """The given rows of ``array``; all of it (itself) for None."""
    return array if rows is None else cast(_A, array[rows])


def _labels(path: str, values: list[object]) -> list[str | None]:
    """:func:`label` of each value; strings and nulls, as they are, without a call each."""
    if _TEXT.issuperset(map(type, values)):
        return cast(list[str | None], values)
    return list(map(label, repeat(path), values))


def _each_or(values: list[object], check: Callable[[object], _T], empty: _T) -> list[_T]:
    """``check`` of each value, or ``empty`` for all when no event carries the field."""
    if _absent(values):
        return [empty] * len(values)
    return list(map(check, values))


def _value(record: RecordLike) -> bytes | None:
    return record.value


def _stamp(record: RecordLike) -> int | None:
    return record.timestamp


def _partition(record: RecordLike) -> int:
    return record.partition


def _offset(record: RecordLike) -> int:
    return record.offset


def _reject(reason: RejectReason, detail: str, record: RecordLike, event_id: str | None) -> Reject:
    return Reject(reason, detail, record.partition, record.offset, event_id, record.value)

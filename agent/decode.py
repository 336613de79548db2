"""Decode raw records (Kafka or files) into columnar batches, one per (model, segment).

A whole poll of records is decoded at once so the vectors become one float32 matrix per
encoding in a single numpy call. The records are read and checked a field at a time over the
whole poll, the common shapes (float32 bytes, numeric times, absent fields) in a few C loops
per field; a record that fails a check is decoded again on its own, which finds its reason.
Python bytecode never runs per number. A bad record never raises and never disturbs its
neighbours: it becomes a ``Reject`` with a reason from ``REJECT_REASONS`` (the values of the
``embmon_events_rejected_total{reason}`` label) and keeps its bytes for a dead-letter topic.
A reject's detail names the field, the type or size of what was found and the rule it broke,
never the content: details are logged and sent in dead-letter headers, and an event's fields
may hold personal data.
"""

from __future__ import annotations

import binascii
import math
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import compress, repeat
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple, Protocol, TypeVar, cast

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
        columns, rejects = self._rows(records, horizon)
        matrix, non_finite = self._matrix(columns.vectors)
        for pos, detail in non_finite.items():
            record, event_id = columns.records[pos], columns.event_ids[pos]
            rejects.append(
                (columns.positions[pos], _reject("non_finite", detail, record, event_id))
            )
        rejects.sort(key=lambda pair: pair[0])  # non-finite rows come last; restore input order
        keep = [pos for pos in range(len(columns.records)) if pos not in non_finite]
        return DecodedBatch(self._group(columns, keep, matrix), tuple(r for _, r in rejects))

    def _rows(
        self, records: list[RecordLike], horizon: float
    ) -> tuple[_Columns, list[tuple[int, Reject]]]:
        """The good records' rows (as columns, in input order) and the bad ones' rejects.

        Records the compiled reader vouches for and that pass every check are read and
        checked at once (``_at_once``); only the others are decoded one by one (``_each``),
        which finds each reject's reason, so the rows and rejects are those of ``_each``
        alone.
        """
        fast, read = self._at_once(records, horizon)
        if len(fast.positions) == len(records):
            return fast, []
        done = set(fast.positions)
        rest = [i for i in range(len(records)) if i not in done]
        rows, rejects = self._each(records, rest, horizon, read)
        slow = _transposed(rows)
        if not fast.positions:
            return slow, rejects
        cuts = list(map(partial(bisect_left, fast.positions), slow.positions))
        return _Columns(*map(partial(_merged, cuts), fast, slow)), rejects

    def _each(
        self,
        records: list[RecordLike],
        indices: list[int],
        horizon: float,
        read: Mapping[int, EventFields | None],
    ) -> tuple[list[_Row], list[tuple[int, Reject]]]:
        """The given records one by one: the good ones' rows, each bad one's first problem.
        ``read`` holds what the compiled reader already made of some (None: refused)."""
        rows: list[_Row] = []
        rejects: list[tuple[int, Reject]] = []
        for index in indices:
            record = records[index]
            try:
                if index in read:  # a value of the right size: the reader's, or the exact read
                    v = read[index] or self._read_exactly(cast(bytes, record.value))
                    rows.append(self._row(index, record, v, horizon))
                else:
                    rows.append(self._parse(index, record, horizon))
            except Bad as bad:
                rejects.append((index, _reject(bad.reason, bad.detail, record, bad.event_id)))
        return rows, rejects

    def _at_once(
        self, records: list[RecordLike], horizon: float
    ) -> tuple[_Columns, dict[int, EventFields | None]]:
        """The rows of the records that pass every check, each field read and checked over all
        records at once: a few C loops per field instead of Python calls per record. The checks
        are the per-record ones, or for the common shapes the same rule over a whole column;
        a record that fails one, or that the reader does not vouch for, is left out, and what
        the reader made of it kept, so that ``_each`` need not read it again."""
        sized, values = self._sized(records)
        read_at, read = self._reader.read_columns(values)
        positions, refused = sized, dict[int, EventFields | None]()
        if len(read_at) < len(sized):
            positions = list(map(sized.__getitem__, read_at))
            refused = dict.fromkeys(set(sized) - set(positions))
        if len(positions) < len(records):
            records = list(map(records.__getitem__, positions))
        event_id, timestamp, model, vector, b64, text, tokens, prediction, target, segment = (
            read or [[]] * len(EventFields._fields)
        )
        f, bad = self.fields, set[int]()
        columns: list[Any] = [  # None in the rows that failed a check, which are then left out
            positions,
            records,
            _labels(f.event_id, event_id, bad),
            self._timestamps(timestamp, records, horizon, bad),
            _checked_or(self._model, bad, self.default_model, model),
            _checked_or(self._segment, bad, (), segment),
            self._vectors(vector, b64, bad),
            _checked_or(self._tokens, bad, None, tokens, text),
            _checked_or(partial(name, f.prediction), bad, None, prediction),
            _checked_or(partial(name, f.target), bad, None, target),
        ]
        if bad:
            keep = [row not in bad for row in range(len(records))]
            columns = [_kept(keep, column) for column in columns]
            refused.update((positions[row], _fields_of(read, row)) for row in bad)
        return _Columns(*columns), refused

    def _sized(self, records: list[RecordLike]) -> tuple[list[int], list[bytes]]:
        """The records with a value (no tombstone) of at most ``max_event_bytes``: where, what."""
        values = list(map(_value, records))
        positions = list(range(len(records)))
        if _BYTES.issuperset(map(type, values)):
            raws = cast(list[bytes], values)
            if max(map(len, raws), default=0) <= self.max_event_bytes:
                return positions, raws
        keep = [type(v) is bytes and len(v) <= self.max_event_bytes for v in values]
        return list(compress(positions, keep)), cast(list[bytes], list(compress(values, keep)))

    def _timestamps(
        self, values: list[object], records: list[RecordLike], horizon: float, bad: set[int]
    ) -> list[float | None] | npt.NDArray[np.float64]:
        """``_timestamp`` of each event; numbers, or none at all, checked as one array."""
        if NUMBER_TYPES.issuperset(map(type, values)):
            seconds = np.array(values, dtype=np.float64)
        else:
            stamps = list(map(_stamp, records))
            if not (_absent(values) and _INT.issuperset(map(type, stamps))):
                return _checked(self._timestamp, bad, values, stamps, repeat(horizon))
            seconds = np.array(stamps, dtype=np.float64) / 1000.0  # the records' own times
        ok = (seconds >= 0.0) & (seconds < _MAX_EPOCH_SECONDS) & (seconds <= horizon)
        bad.update(np.flatnonzero(~ok).tolist())  # which, and why: _each finds out
        return seconds

    def _vectors(
        self, vectors: list[object], b64s: list[object], bad: set[int]
    ) -> Sequence[_Vector | None]:
        """``_vector`` of each event; float32 bytes (or arrays) of the right size: those
        sizes checked as one array."""
        if _absent(vectors) and _BYTES.issuperset(map(type, b64s)):
            blobs = cast(list[bytes], b64s)
            bad.update(_other_sizes(blobs, 4 * self.dim))
            return blobs
        if _ARRAY.issuperset(map(type, vectors)):
            arrays = cast(list[npt.NDArray[np.float64]], vectors)
            bad.update(_other_sizes(arrays, self.dim))
            return arrays
        return _checked(self._vector, bad, vectors, b64s)

    def _parse(self, index: int, record: RecordLike, horizon: float) -> _Row:
        raw = record.value
        if raw is None:
            raise Bad("invalid_json", "record has no value (a tombstone?)")
        if len(raw) > self.max_event_bytes:
            raise Bad("oversized", f"{len(raw)} bytes > max_event_bytes {self.max_event_bytes}")
        return self._row(index, record, self._reader.read(raw) or self._read_exactly(raw), horizon)

    def _row(self, index: int, record: RecordLike, v: EventFields, horizon: float) -> _Row:
        """The checks of each field of a read event, in order: the first failed is the reason."""
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


def _labels(path: str, values: list[object], bad: set[int]) -> list[str | None]:
    """:func:`label` of each value; strings and nulls, as they are, without a call each."""
    if _TEXT.issuperset(map(type, values)):
        return cast(list[str | None], values)
    return _checked(partial(label, path), bad, values)


def _checked_or(
    check: Callable[..., _T], bad: set[int], empty: _T, *columns: list[object]
) -> list[_T | None]:
    """``_checked``, or ``empty`` for every row when no event carries the field(s)."""
    if all(map(_absent, columns)):
        return [empty] * len(columns[0])
    return _checked(check, bad, *columns)


def _checked(
    check: Callable[..., _T], bad: set[int], *columns: Iterable[object]
) -> list[_T | None]:
    """``check`` of each row of ``columns``; None, and the row added to ``bad``, where it
    raises :class:`Bad`."""
    out: list[_T | None] = []
    for row, args in enumerate(zip(*columns, strict=False)):  # a column may be a repeat()
        try:
            out.append(check(*args))
        except Bad:
            out.append(None)
            bad.add(row)
    return out


def _other_sizes(values: Sequence[Sized], size: int) -> list[int]:
    """Where ``values`` are not of length ``size``."""
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    return np.flatnonzero(lengths != size).tolist()


def _kept(keep: list[bool], column: Any) -> Any:
    """The rows of a column (a list, or the timestamps' array) that ``keep`` marks True."""
    if isinstance(column, np.ndarray):
        return column[np.asarray(keep, dtype=bool)]
    return list(compress(column, keep))


def _transposed(rows: list[_Row]) -> _Columns:
    """Rows as columns: the shape of what ``_at_once`` gives."""
    if not rows:
        return _Columns(*([] for _ in _Row._fields))
    return _Columns(*map(list, zip(*rows, strict=True)))


def _fields_of(columns: list[list[object]], row: int) -> EventFields:
    """One row of the reader's columns, as ``EventFields`` (the inner loop in C)."""
    return tuple.__new__(EventFields, map(itemgetter(row), columns))


def _merged(cuts: list[int], fast: Any, slow: Sequence[object]) -> Any:
    """One column of the rows read at once with ``slow``'s rows put in, each before the row
    of ``fast`` at its cut: a slice per slow row, however many rows there are."""
    if isinstance(fast, np.ndarray):
        return np.insert(fast, cuts, np.asarray(slow, dtype=fast.dtype))
    out: list[object] = []
    start = 0
    for cut, value in zip(cuts, slow, strict=True):
        out += fast[start:cut]
        out.append(value)
        start = cut
    out += fast[start:]
    return out


# A record's fields read in C (a Python function each would cost a call per record).
_value: Callable[[RecordLike], bytes | None] = attrgetter("value")
_stamp: Callable[[RecordLike], int | None] = attrgetter("timestamp")
_partition: Callable[[RecordLike], int] = attrgetter("partition")
_offset: Callable[[RecordLike], int] = attrgetter("offset")


def _reject(reason: RejectReason, detail: str, record: RecordLike, event_id: str | None) -> Reject:
    return Reject(reason, detail, record.partition, record.offset, event_id, record.value)

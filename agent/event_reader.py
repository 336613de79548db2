"""Read an event's fields in compiled code, and leave every doubtful record to the exact path.

``agent.decode`` checks each field in Python after ``orjson`` has built the whole event, which
costs ~20 µs for a JSON list of 384 numbers (a Python float each) and ~5 µs for a 2 KB base64
string. Most records are good, so this reader tries the common case first:

- ``msgspec`` decodes the event against a typed schema built from the field map, skipping
  every field embmon does not read and decoding ``embedding_b64`` to bytes in C;
- ``pysimdjson`` turns the ``embedding`` array into one float64 buffer, no Python float per
  element.

It promises only this: when it returns fields, they are the values ``orjson`` plus
:func:`agent.fields.get_path` would give (what the checks in ``agent.decode`` then see), with
the same numbers once a vector is float32 (of a segment object, the kept keys' values). Whenever the two could differ (a type the schema
does not take, text that is not UTF-8, a number out of range, a nested array, an integer
``orjson`` would not read as one) it returns ``None`` and the record takes the exact path,
which finds the reject reason. tests/test_event_reader.py holds it to that, record by record.

>>> reader = EventReader(FieldMap())
>>> fields = reader.read(b'{"embedding": [1, 2.5], "model": "news", "extra": {"x": 1}}')
>>> fields.embedding.tolist(), fields.model, fields.timestamp
([1.0, 2.5], 'news', None)
>>> reader.read(b'{"embedding": [1, "2"]}') is None  # a string among the numbers
True
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
import simdjson

from agent.fields import FieldMap

__all__ = ["EventFields", "EventReader"]

_INT = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""Integers orjson surely reads as ``int`` (the exact path reads some wider ones as floats)."""
_LABEL = str | _INT | bool | None

_TYPES: dict[str, Any] = {
    "event_id": _LABEL,
    "timestamp": _INT | float | str | None,
    "model": str | None,
    "embedding": msgspec.Raw,  # absent: None; JSON null: Raw(b"null")
    "embedding_b64": bytes | None,
    "text": str | None,
    "tokens": list[str] | None,
    "prediction": _LABEL,
    "target": _LABEL,
    "segment": dict[str, Any] | None,
}
_EMBEDDING = 3  # EventFields.embedding
_SEGMENT = 9  # EventFields.segment


class EventFields(NamedTuple):
    """The raw value of each field, ``None`` when absent (as :func:`get_path` gives it).

    ``embedding`` is a float64 array when the compiled reader parsed it, else the JSON list;
    ``embedding_b64`` is the decoded bytes when the compiled reader decoded it, else the string.
    """

    event_id: object
    timestamp: object
    model: object
    embedding: object
    embedding_b64: object
    text: object
    tokens: object
    prediction: object
    target: object
    segment: object


class EventReader:
    """Compiled reads of well-formed events against one field map.

    With ``segment_keys`` empty the segment field is not read at all (the exact path ignores
    it then). A field map whose paths overlap (one the prefix of another, or two the same)
    cannot be one schema; then ``read`` always returns ``None``.
    """

    def __init__(self, fields: FieldMap, segment_keys: Sequence[str] = ()) -> None:
        self.segment_keys = tuple(segment_keys)
        names = EventFields._fields
        paths = {n: fields.path(n) for n in names if n != "segment" or self.segment_keys}
        self._decoder: msgspec.json.Decoder[Any] | None = None
        self._getters: list[Callable[[Any], object]] | None = None
        self._columns: list[Callable[[Any], object] | None] = []
        if _overlap(list(paths.values())):
            return
        root, attributes = _schema("Event", paths, prefix=())
        self._decoder = msgspec.json.Decoder(root)
        if any(len(chain) > 1 for chain in attributes.values()):
            self._getters = [_getter(attributes[n]) if n in paths else _absent for n in names]
        self._columns = [_getter(attributes[n]) if n in paths else None for n in names]
        self._padding = (None,) * (len(names) - len(paths))  # no segment read: None
        self._parser = simdjson.Parser()

    def read(self, raw: bytes) -> EventFields | None:
        """The event's fields, or ``None``: then only the exact path may judge the record."""
        if self._decoder is None:
            return None
        if not raw.isascii() and not _utf8(raw):
            return None
        try:
            event = self._decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        if self._getters is None:  # a flat schema holds the fields in EventFields' order
            values: Sequence[object] = msgspec.structs.astuple(event) + self._padding
        else:
            values = [get(event) for get in self._getters]
        embedding = values[_EMBEDDING]
        if embedding is not None:
            vector = self._numbers(embedding)  # type: ignore[arg-type]
            if vector is None:
                return None
            values = [*values[:_EMBEDDING], vector, *values[_EMBEDDING + 1 :]]
        if not self._segment_ok(values[_SEGMENT]):
            return None
        return tuple.__new__(EventFields, values)

    def read_columns(self, raws: Sequence[bytes]) -> tuple[list[int], list[list[object]]]:
        """What ``read`` gives, as one list per field (in ``EventFields``' order), of the
        records it vouches for, and where those are in ``raws``; the others need the exact path.

        For a poll of good events this is a few C loops (``map``) per field instead of a
        Python call per record: most of the reading of a chunk is then msgspec's own.
        """
        if self._decoder is None:
            return [], []
        positions, values = list(range(len(raws))), list(raws)
        if not all(map(bytes.isascii, values)):
            positions, values = _kept(list(map(_utf8, values)), positions, values)
        events = _decoded(self._decoder, values)
        if any(map(operator.is_, events, itertools.repeat(None))):
            positions, events = _kept(
                list(map(operator.is_not, events, itertools.repeat(None))), positions, events
            )
        absent: list[object] = [None] * len(events)  # shared: the columns are only read
        columns = [absent if get is None else list(map(get, events)) for get in self._columns]
        found = columns[_EMBEDDING]
        if any(map(operator.is_not, found, itertools.repeat(None))):
            columns[_EMBEDDING] = list(map(self._numbers_or_none, found))
            ok = list(map(_same_absence, columns[_EMBEDDING], found))
            positions, *columns = _kept(ok, positions, *columns)
        if self.segment_keys:
            ok = list(map(self._segment_ok, columns[_SEGMENT]))
            positions, *columns = _kept(ok, positions, *columns)
        return positions, columns

    def _numbers_or_none(self, raw: Any) -> npt.NDArray[np.float64] | None:
        return None if raw is None else self._numbers(raw)

    def _segment_ok(self, segment: object) -> bool:
        """False for a segment holding, under a kept key, a value orjson could read otherwise:
        an integer past 64 bits (a float to orjson), or an array or object, which may hold one
        (the decoder rejects those anyway)."""
        return not isinstance(segment, dict) or all(
            map(_scalar_as_orjson_reads_it, map(segment.get, self.segment_keys))
        )

    def _numbers(self, raw: msgspec.Raw) -> npt.NDArray[np.float64] | None:
        """A flat JSON array of numbers as float64, or None: not that (JSON null included)."""
        data = bytes(memoryview(raw))
        if data[:1] != b"[" or data.find(b"[", 1) >= 0:  # simdjson flattens nested arrays
            return None
        doc: Any = None
        try:
            doc = self._parser.parse(data)
            return np.frombuffer(doc.as_buffer(of_type="d"), dtype=np.float64)
        except (TypeError, ValueError, RuntimeError):  # a non-number, or one out of range
            return None
        finally:
            del doc  # the parser is reused only once no document of it is alive


def _absent(event: Any) -> None:
    return None


def _kept(keep: list[bool], *columns: list[Any]) -> list[list[Any]]:
    """``columns`` without the rows ``keep`` marks False (itself, when it marks none)."""
    if all(keep):
        return list(columns)
    return [list(itertools.compress(column, keep)) for column in columns]


def _same_absence(vector: object, raw: object) -> bool:
    """A vector read from every array found: False where ``_numbers`` refused one."""
    return (vector is None) == (raw is None)


def _decoded(decoder: msgspec.json.Decoder[Any], raws: list[bytes]) -> list[Any]:
    """msgspec's event of each of ``raws``, None where it refuses one. ``list.extend`` keeps
    what ``map`` gave before it raised, and ``map`` goes on after the refused one."""
    events: list[Any] = []
    remaining = iter(raws)
    while len(events) < len(raws):
        try:
            events.extend(map(decoder.decode, remaining))
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            events.append(None)
    return events


def _scalar_as_orjson_reads_it(value: object) -> bool:
    if type(value) is int:
        return -(2**63) <= value < 2**63
    return not isinstance(value, list | dict)


def _utf8(raw: bytes) -> bool:
    """msgspec does not check the text of the fields it skips; orjson does."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _overlap(paths: list[tuple[str, ...]]) -> bool:
    ordered = sorted(paths)
    return any(b[: len(a)] == a for a, b in itertools.pairwise(ordered))


def _schema(
    name: str, paths: dict[str, tuple[str, ...]], prefix: tuple[str, ...]
) -> tuple[type, dict[str, tuple[str, ...]]]:
    """A msgspec Struct for the fields under ``prefix``, and each field's attribute chain.

    Nested objects become nested Structs. Attribute names are ``f0``, ``f1``… renamed to the
    JSON keys, so any key is allowed.
    """
    children: dict[str, dict[str, tuple[str, ...]]] = {}
    leaves: dict[str, str] = {}
    for field, path in paths.items():
        rest = path[len(prefix) :]
        if len(rest) == 1:
            leaves[rest[0]] = field
        else:
            children.setdefault(rest[0], {})[field] = path
    members: list[tuple[str, Any, Any]] = []
    rename: dict[str, str] = {}
    attributes: dict[str, tuple[str, ...]] = {}
    for key, field in leaves.items():
        attr = _attribute(rename, members, key)
        members.append((attr, _TYPES[field], None))
        attributes[field] = (attr,)
    for key, sub in children.items():
        attr = _attribute(rename, members, key)
        nested, chains = _schema(f"{name}_{attr}", sub, (*prefix, key))
        members.append((attr, nested | None, None))
        attributes.update({field: (attr, *chain) for field, chain in chains.items()})
    return msgspec.defstruct(name, members, rename=rename), attributes


def _attribute(rename: dict[str, str], members: list[tuple[str, Any, Any]], key: str) -> str:
    attr = f"f{len(members)}"
    rename[attr] = key
    return attr


def _getter(chain: tuple[str, ...]) -> Callable[[Any], object]:
    """Reads an attribute chain of a decoded Struct; an absent step gives None."""
    if len(chain) == 1:
        return operator.attrgetter(chain[0])

    def get(event: Any) -> object:
        for attr in chain:
            if event is None:
                return None
            event = getattr(event, attr)
        return event

    return get

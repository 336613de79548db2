"""Events from files, handed over exactly as the Kafka source hands over records.

:class:`FileSource` is a file as a one-partition :class:`agent.source.Source`, so ``embmon
replay`` runs the live agent's driver, decoder and windows over it: a backtest, a backfill and
the live agent can never disagree. Files are read in chunks, so memory stays bounded however
large the file is. Each record's offset is its position in the file (0-based line of a
JSON-lines file, row of a Parquet file), its partition is 0, its topic ``file:<name>``.
"""

from __future__ import annotations

import base64
import gzip
import importlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from itertools import compress, repeat
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from agent.decode import Decoder
from agent.fields import FieldMap, get_path
from agent.source import ChunkSource, Poll, RawRecord
from sketches.batch import EventBatch
from sketches.errors import FormatError

__all__ = ["SUFFIXES", "FileSource", "LoadedEvents", "iter_file_records", "load_events"]

SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".parquet")
_BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20
"""Bytes read at a time from a JSON-lines file (1 MiB: faster here than 256 KiB or 4 MiB)."""

PathLike = str | os.PathLike[str]
_T = TypeVar("_T")
_Block = tuple[Sequence[int], list[bytes]]
"""Consecutive events of a file: their offsets (line or row numbers) and their bytes."""


def iter_file_records(
    path: PathLike,
    *,
    chunk_size: int = 10_000,
    record_timestamp_ms: int | None = None,
    topic: str = "",
) -> Iterator[list[RawRecord]]:
    """Chunks of at most ``chunk_size`` records of a ``.jsonl[.gz]`` or ``.parquet`` file.

    A file has no per-record timestamp as Kafka does, so events without one of their own get
    ``record_timestamp_ms``, by default the file's modification time (when it was written,
    the nearest thing to Kafka's append time). Blank lines are skipped; a Parquet row becomes
    the JSON object of its columns (structs become nested objects, list columns arrays,
    binary columns base64 strings, timestamps ISO 8601).

    The path is checked now, not on the first ``next``, so a wrong path fails at once.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> _ = p.write_text('{"embedding": [1, 2]}\\n\\n{"embedding": [3, 4]}\\n')
    >>> [[(r.value, r.offset) for r in chunk] for chunk in iter_file_records(p, chunk_size=1)]
    [[(b'{"embedding": [1, 2]}', 0)], [(b'{"embedding": [3, 4]}', 2)]]
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    p = Path(path)
    if _suffix(p) == ".parquet":
        values = _parquet_values(_pyarrow_parquet(), p, chunk_size)
    else:
        values = _jsonl_values(p)
    mtime_ms = int(p.stat().st_mtime * 1000)  # a missing file fails here, not on first next()
    stamp = mtime_ms if record_timestamp_ms is None else record_timestamp_ms
    return _chunks(values, stamp, chunk_size, topic)


class FileSource(ChunkSource):
    """A file of events as a source of one partition, read ``chunk_size`` records per poll.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> _ = p.write_text('{"embedding": [1, 2]}\\n{"embedding": [3, 4]}\\n')
    >>> source = FileSource(p, chunk_size=1)
    >>> source.partition, [r.offset for r in source.poll(0).records], source.bytes_read
    (('file:events.jsonl', 0), [0], 22)
    """

    def __init__(self, path: PathLike, *, chunk_size: int = 10_000) -> None:
        p = Path(path)
        topic = f"file:{p.name}"
        super().__init__(iter_file_records(p, chunk_size=chunk_size, topic=topic), (topic, 0))
        self.size = p.stat().st_size
        self.bytes_read = 0

    def poll(self, timeout_ms: int) -> Poll:
        poll = super().poll(timeout_ms)
        self.bytes_read += sum(len(r.value or b"") + 1 for r in poll.records)
        return poll


@dataclass(frozen=True)
class LoadedEvents:
    """All good events of a file, in file order, as the reference builder wants them.

    ``labels`` come from the target field, or from ``label_field`` when ``load_events`` names
    one; optional columns are ``None`` when no event carries them.
    """

    embeddings: npt.NDArray[np.float32]
    labels: list[str | None] | None
    tokens: list[Sequence[str] | None] | None
    predictions: list[str | None] | None
    rejects: Counter[str]

    def batch(self) -> EventBatch:
        """The events as one batch (labels as targets), e.g. for ``build_reference``."""
        return EventBatch(
            self.embeddings,
            np.zeros(self.embeddings.shape[0]),
            tokens=self.tokens,
            predictions=self.predictions,
            targets=self.labels,
        )


def load_events(
    path: PathLike,
    *,
    fields: FieldMap | None = None,
    label_field: str | None = None,
    dim: int | None = None,
    chunk_size: int = 10_000,
    max_event_bytes: int = 1 << 20,
) -> LoadedEvents:
    """Decode every event of a file (``embmon reference build --input events.jsonl``).

    ``dim`` defaults to the length of the first embedding in the file; events of any model
    and segment are kept. Events without a timestamp are fine here (time plays no part in a
    reference), bad events are counted in ``rejects``; a file without one good event raises.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "ref.jsonl"
    >>> _ = p.write_text('{"embedding": [1, 2], "topic": "a"}\\n{"embedding": [1]}\\n')
    >>> ev = load_events(p, label_field="topic")
    >>> ev.embeddings.tolist(), ev.labels, dict(ev.rejects)
    ([[1.0, 2.0]], ['a'], {'wrong_dimension': 1})
    """
    fm = fields or FieldMap()
    if label_field is not None:
        fm = replace(fm, target=label_field)
    width = dim if dim is not None else _first_dim(path, fm, chunk_size)
    decoder = Decoder(width, fm, max_event_bytes=max_event_bytes)
    batches: list[EventBatch] = []
    offsets: list[npt.NDArray[np.int64]] = []
    rejects: Counter[str] = Counter()
    for chunk in iter_file_records(path, chunk_size=chunk_size, record_timestamp_ms=0):
        decoded = decoder.decode(chunk)
        rejects.update(decoded.reject_counts)
        for group in decoded.groups:
            batches.append(group.batch)
            offsets.append(group.offsets)
    if not batches:
        raise FormatError(f"{path}: no valid event (rejected: {dict(rejects)})")
    order = np.argsort(np.concatenate(offsets), kind="stable")
    return LoadedEvents(
        embeddings=np.concatenate([b.embeddings for b in batches])[order],
        labels=_merged([b.targets for b in batches], batches, order),
        tokens=_merged([b.tokens for b in batches], batches, order),
        predictions=_merged([b.predictions for b in batches], batches, order),
        rejects=rejects,
    )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise FormatError(f"cannot read {path}: expected a file ending in {', '.join(SUFFIXES)}")


def _pyarrow_parquet() -> ModuleType:
    try:
        return importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise FormatError(
            "reading .parquet files needs pyarrow, which is not installed: "
            "pip install 'embmon[parquet]'"
        ) from exc


def _jsonl_values(path: Path) -> Iterator[_Block]:
    gz = path.name.lower().endswith(".gz")
    with gzip.open(path, "rb") if gz else path.open("rb") as file:
        first = 0
        for lines in _lines(file.read):
            if first == 0:
                lines[0] = lines[0].removeprefix(_BOM)
            yield _non_blank(first, lines)
            first += len(lines)


def _lines(read: Callable[[int], bytes]) -> Iterator[list[bytes]]:
    """The lines of a file (its ``read``) without their b"\\n", a block's worth at a time.

    One ``split`` per block makes each line in one copy; reading line by line costs a Python
    object and a copy more per line. A line longer than a block is joined from its parts.
    """
    parts: list[bytes] = []  # the line the last block ended inside
    while block := read(_BLOCK):
        lines = block.split(b"\n")
        if len(lines) == 1:
            parts.append(block)
            continue
        if parts:
            lines[0] = b"".join([*parts, lines[0]])
        parts = [lines.pop()]
        yield lines
    last = b"".join(parts)
    if last:  # no line end after the last line
        yield [last]


def _non_blank(first: int, lines: list[bytes]) -> _Block:
    """The lines numbered from ``first``, ``\\r`` stripped from their ends, blank ones left out.

    ``rstrip`` and ``strip`` give the line itself back when there is nothing to strip, so a
    clean block costs no copy here, and ``map`` and ``compress`` loop in C.
    """
    values = list(map(bytes.rstrip, lines, repeat(b"\r")))
    numbers = range(first, first + len(values))
    if all(map(bytes.strip, values)):
        return numbers, values
    keep = list(map(bytes.strip, values))
    return list(compress(numbers, keep)), list(compress(values, keep))


def _parquet_values(pq: ModuleType, path: Path, chunk_size: int) -> Iterator[_Block]:
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
        values = [orjson.dumps(event, default=_json_default) for event in batch.to_pylist()]
        yield range(row, row + len(values)), values
        row += len(values)


def _json_default(value: object) -> object:
    """Parquet values orjson does not know: bytes (e.g. float32 vectors), decimals, the rest."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def _chunks(
    blocks: Iterator[_Block], stamp: int, size: int, topic: str
) -> Iterator[list[RawRecord]]:
    """Records of ``size`` (the last: fewer) from blocks of any length."""
    pending: list[RawRecord] = []
    for numbers, values in blocks:
        pending += _records(values, stamp, numbers, topic)
        start = 0
        while len(pending) - start >= size:
            yield pending[start : start + size]
            start += size
        del pending[:start]
    if pending:
        yield pending


def _records(
    values: list[bytes], stamp: int, offsets: Sequence[int], topic: str
) -> Iterator[RawRecord]:
    """``RawRecord(value, stamp, 0, offset, topic)`` each, built as ``RawRecord._make`` builds
    one (``tuple.__new__``) in a loop that runs in C: no Python call per record."""
    fields = zip(values, repeat(stamp), repeat(0), offsets, repeat(topic))
    return map(tuple.__new__, repeat(RawRecord), fields)


def _first_dim(path: PathLike, fields: FieldMap, chunk_size: int) -> int:
    """Length of the first embedding in the file: the dimension every other must match."""
    vector, b64 = fields.path("embedding"), fields.path("embedding_b64")
    for chunk in iter_file_records(path, chunk_size=chunk_size, record_timestamp_ms=0):
        for record in chunk:
            try:
                event = orjson.loads(record.value or b"")
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            found = get_path(event, vector)
            if isinstance(found, list) and found:
                return len(found)
            encoded = get_path(event, b64)
            if isinstance(encoded, str):
                try:
                    size = len(base64.b64decode(encoded, validate=True))
                except ValueError:
                    continue
                if size and size % 4 == 0:
                    return size // 4
    raise FormatError(
        f"{path}: no event carries {fields.embedding!r} or {fields.embedding_b64!r}, "
        "so the embedding dimension is unknown"
    )


def _merged(
    columns: list[Sequence[_T | None] | None],
    batches: list[EventBatch],
    order: npt.NDArray[np.intp],
) -> list[_T | None] | None:
    """One optional column over all batches, reordered to file order."""
    if all(c is None for c in columns):
        return None
    flat: list[_T | None] = []
    for column, batch in zip(columns, batches, strict=True):
        flat.extend(column if column is not None else [None] * len(batch))
    return [flat[i] for i in order.tolist()]

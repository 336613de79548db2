"""Versioned binary envelope shared by every sketch's ``to_bytes`` / ``from_bytes``.

Layout: ``b"EMBM"``, format version (u8), kind (u8 length + ascii), header (u32 length +
orjson object), then blobs (u32 count, then u32 length + bytes each). Little-endian. The kind
tag means a profile's bytes can never be read back as, say, a quantile sketch.

>>> kind, header, blobs = "demo", {"k": 1}, [b"abc", b""]
>>> unpack(pack(kind, header, blobs), kind)
({'k': 1}, [b'abc', b''])
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from .errors import FormatError

__all__ = ["FORMAT_VERSION", "pack", "reading", "unpack"]

MAGIC = b"EMBM"
FORMAT_VERSION = 1
_U32 = struct.Struct("<I")


def pack(kind: str, header: dict[str, Any], blobs: list[bytes]) -> bytes:
    """Serialise a header (JSON-able) and binary blobs under a kind tag."""
    tag = kind.encode("ascii")
    head = orjson.dumps(header)
    parts = [MAGIC, bytes([FORMAT_VERSION, len(tag)]), tag, _U32.pack(len(head)), head]
    parts.append(_U32.pack(len(blobs)))
    for blob in blobs:
        parts.append(_U32.pack(len(blob)))
        parts.append(blob)
    return b"".join(parts)


def unpack(data: bytes, kind: str) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of :func:`pack`; raises :class:`FormatError` on anything unexpected."""
    view = memoryview(data)
    try:
        if bytes(view[:4]) != MAGIC:
            raise FormatError("not embmon sketch bytes (bad magic); was it written by embmon?")
        version, tag_len = view[4], view[5]
        if version != FORMAT_VERSION:
            raise FormatError(
                f"sketch format version {version} is not supported (this embmon reads "
                f"{FORMAT_VERSION}); upgrade embmon or rebuild the profile"
            )
        pos = 6 + tag_len
        found = bytes(view[6:pos]).decode("ascii")
        if found != kind:
            raise FormatError(f"expected a serialised {kind!r}, found {found!r}")
        pos, head = _read_blob(view, pos)
        header = orjson.loads(head)
        (count,) = _U32.unpack_from(view, pos)
        pos += 4
        blobs = []
        for _ in range(count):
            pos, blob = _read_blob(view, pos)
            blobs.append(blob)
    except (struct.error, IndexError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise FormatError(f"truncated or corrupt {kind!r} bytes: {exc}") from exc
    if pos != len(view):
        raise FormatError(f"{len(view) - pos} trailing bytes after a serialised {kind!r}")
    if not isinstance(header, dict):
        raise FormatError(f"corrupt {kind!r} header")
    return header, blobs


def _read_blob(view: memoryview, pos: int) -> tuple[int, bytes]:
    (length,) = _U32.unpack_from(view, pos)
    start = pos + 4
    end = start + length
    if end > len(view):
        raise IndexError("blob runs past the end")
    return end, bytes(view[start:end])


@contextmanager
def reading(kind: str) -> Iterator[None]:
    """Turn any failure to interpret a serialised ``kind`` into a :class:`FormatError`.

    ``from_bytes`` of every sketch runs under it, so corrupt bytes (not only truncated ones)
    raise one documented error instead of whatever the underlying parser happens to raise.
    """
    try:
        yield
    except FormatError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, struct.error) as exc:
        raise FormatError(f"corrupt {kind!r} bytes: {exc}") from exc
